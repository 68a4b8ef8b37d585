//! Static routes (`[routing] routes`): checks made when a topology loads.

use std::collections::BTreeMap;

/// A cycle of static routes through `start` (`start -> a -> start`), if
/// any: such a route would expand forever.
pub fn static_cycle(routes: &BTreeMap<String, Vec<String>>, start: &str) -> Option<Vec<String>> {
    fn dfs(
        routes: &BTreeMap<String, Vec<String>>,
        start: &str,
        at: &str,
        trail: &mut Vec<String>,
    ) -> bool {
        let Some(steps) = routes.get(at) else {
            return false;
        };
        for s in steps {
            if s == start {
                trail.push(s.clone());
                return true;
            }
            if trail.iter().any(|t| t == s) {
                continue;
            }
            trail.push(s.clone());
            if dfs(routes, start, s, trail) {
                return true;
            }
            trail.pop();
        }
        false
    }
    let mut trail = vec![start.to_string()];
    dfs(routes, start, start, &mut trail).then_some(trail)
}
