//! What a live topology reload may change. Pure: compares two validated
//! topologies and lists every difference that only a restart can apply.
//!
//! Applied live: functions (added, changed, removed), edges (added,
//! removed, and each edge's `location` and `addresses`), `[[route]]`,
//! `[[event]]`, `[routing]`, `[dns]` ttl/answers/load_threshold/serial and
//! `default_location`.
//! Everything that owns a socket, a certificate, a process-wide resource
//! or an edge's identity needs a restart (drain, then restart: no
//! downtime for clients, docs/operations.md).

use super::model::{Function, Topology};

/// Every difference between `old` and `new` that a live reload cannot
/// apply, as one message each (empty: the reload can be applied live).
pub(crate) fn restart_required(old: &Topology, new: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |what: &str, changed: bool| {
        if changed {
            out.push(format!("{what} changed"));
        }
    };
    differs("zone", old.zone != new.zone);
    differs("geo_db (the path)", old.geo_db != new.geo_db);
    differs("state_dir", old.state_dir != new.state_dir);
    differs(
        "admin_token_file",
        old.admin_token_file != new.admin_token_file,
    );
    differs("[quic]", old.quic != new.quic);
    differs("[tcp]", old.tcp != new.tcp);
    differs("[tls]", old.tls != new.tls);
    differs("[mesh]", old.mesh != new.mesh);
    differs("[executors]", old.executors != new.executors);
    differs(
        "dns.udp_sockets",
        old.dns.udp_sockets != new.dns.udp_sockets,
    );
    differs("dns.rate_limit", old.dns.rate_limit != new.dns.rate_limit);
    // Edges present before and after keep their sockets and size.
    for a in old.edges.iter().filter(|e| !e.retired) {
        let Some(b) = new.edges.iter().find(|b| b.name == a.name) else {
            continue;
        };
        let e = &a.name;
        differs(
            &format!("edge {e}: dns_listen"),
            a.dns_listen != b.dns_listen,
        );
        differs(
            &format!("edge {e}: quic_listen"),
            a.quic_listen != b.quic_listen,
        );
        differs(
            &format!("edge {e}: admin_listen"),
            a.admin_listen != b.admin_listen,
        );
        differs(
            &format!("edge {e}: doq_listen"),
            a.doq_listen != b.doq_listen,
        );
        differs(
            &format!("edge {e}: tcp_listen"),
            a.tcp_listen != b.tcp_listen,
        );
        differs(&format!("edge {e}: capacity"), a.capacity != b.capacity);
        differs(
            &format!("edge {e}: cache_bytes"),
            a.cache_bytes != b.cache_bytes,
        );
    }
    out
}

/// `new` rearranged so that every edge keeps its `EdgeId` from `old`: an
/// edge of `old` missing from `new` stays in its slot as `retired`, edges
/// new to the fleet are appended, and every function's `edges` are
/// re-indexed. Running state indexed by `EdgeId` (the view, peer
/// connections and statistics, DNS counters) then stays valid.
pub(crate) fn align(old: &Topology, mut new: Topology) -> Topology {
    let fresh = std::mem::take(&mut new.edges);
    let mut edges: Vec<_> = old
        .edges
        .iter()
        .map(|o| match fresh.iter().find(|e| e.name == o.name) {
            Some(e) => e.clone(),
            None => {
                let mut gone = o.clone();
                gone.retired = true;
                gone
            }
        })
        .collect();
    for e in &fresh {
        if !edges.iter().any(|o| o.name == e.name) {
            edges.push(e.clone());
        }
    }
    for f in &mut new.functions {
        f.edges = f
            .edges
            .iter()
            .filter_map(|&i| fresh.get(i))
            .filter_map(|e| edges.iter().position(|o| o.name == e.name))
            .collect();
    }
    new.edges = edges;
    new
}

/// Whether two definitions of a function run the same way (placement,
/// `edges`, aside: moving a function keeps its warm pool and its cache).
pub(crate) fn same_definition(a: &Function, b: &Function) -> bool {
    a.name == b.name
        && a.executor == b.executor
        && a.memory_mb == b.memory_mb
        && a.timeout == b.timeout
        && a.concurrency_min == b.concurrency_min
        && a.concurrency_max == b.concurrency_max
        && a.cache == b.cache
        && a.idempotent == b.idempotent
        && a.gatekeeper == b.gatekeeper
        && a.allow_outbound == b.allow_outbound
        && a.streaming == b.streaming
}

/// Names of functions added, changed (in definition, not placement) and
/// removed from `old` to `new`.
pub(crate) fn function_changes(
    old: &Topology,
    new: &Topology,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for f in &new.functions {
        match old.functions.iter().find(|o| o.name == f.name) {
            None => added.push(f.name.to_string()),
            Some(o) if !same_definition(o, f) => changed.push(f.name.to_string()),
            Some(_) => {}
        }
    }
    let removed = old
        .functions
        .iter()
        .filter(|o| !new.functions.iter().any(|f| f.name == o.name))
        .map(|o| o.name.to_string())
        .collect();
    (added, changed, removed)
}

/// What one reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Whether the new topology is in effect.
    pub applied: bool,
    pub(crate) file: std::path::PathBuf,
    /// Validation errors, or what only a restart can change.
    pub errors: Vec<String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Edges that joined / left the fleet.
    pub edges_added: Vec<String>,
    pub edges_removed: Vec<String>,
    /// The geo database's generation after the reload, if it reloaded.
    pub(crate) geo_generation: Option<u64>,
    /// Why the geo database was not reloaded (the old one stays).
    pub(crate) geo_error: Option<String>,
    /// The view generation of each edge after the reload.
    pub(crate) generations: Vec<(String, u64)>,
}

/// Something that re-reads the topology (and geo database) and applies
/// it: the admin listener's `POST /reload` calls it without knowing what
/// runs the edges (`node::Reloader` does).
#[async_trait::async_trait]
pub(crate) trait Reload: Send + Sync {
    async fn reload(&self) -> ReloadReport;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(edges: &[&str], functions: &str) -> Topology {
        let mut text = String::from(
            "zone = \"fn.test.\"\ngeo_db = \"geo/sample.mmdb\"\ndefault_location = { lat = 0.0, lon = 0.0 }\n",
        );
        for e in edges {
            // Addresses by name, so reordering keeps an edge's sockets.
            let i = u32::from(e.as_bytes()[0] - b'a');
            text += &format!(
                "[[edge]]\nname = \"{e}\"\nlocation = {{ lat = 0.0, lon = {i}.0 }}\naddresses = [\"127.0.0.{ip}\"]\ndns_listen = \"127.0.0.{ip}:53\"\nquic_listen = \"127.0.0.{ip}:443\"\n",
                ip = 10 + i
            );
        }
        text += functions;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.toml");
        crate::config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"))
    }

    const F: &str = "[[function]]\nname = \"f\"\nedges = [\"c\", \"b\"]\nexecutor = { kind = \"command\", command = [\"cat\"] }\n";

    #[test]
    fn align_keeps_edge_ids_retires_and_appends() {
        let old = topo(&["a", "b", "c"], F);
        // b leaves, d joins, the file lists them in another order.
        let new = topo(&["d", "c", "a"], &F.replace("\"c\", \"b\"", "\"d\", \"c\""));
        assert!(restart_required(&old, &new).is_empty());
        let aligned = align(&old, new);
        let names: Vec<(&str, bool)> = aligned
            .edges
            .iter()
            .map(|e| (e.name.as_str(), e.retired))
            .collect();
        assert_eq!(
            names,
            [("a", false), ("b", true), ("c", false), ("d", false)]
        );
        let f = aligned.function("f").unwrap();
        assert_eq!(f.edges, [3, 2], "re-indexed: d, c");
        // Moving a function is no definition change.
        let (added, changed, removed) = function_changes(&old, &aligned);
        assert!(added.is_empty() && changed.is_empty() && removed.is_empty());
    }

    #[test]
    fn sockets_and_sizes_of_kept_edges_need_a_restart() {
        let old = topo(&["a", "b"], F.replace("\"c\", \"b\"", "\"b\"").as_str());
        let mut new = old.clone();
        new.edges[1].quic_listen = "127.0.0.11:444".parse().unwrap();
        new.edges[0].capacity += 1;
        new.quic.max_connections += 1;
        let why = restart_required(&old, &new);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why.iter().any(|w| w.contains("edge b: quic_listen")));
        assert!(why.iter().any(|w| w.contains("edge a: capacity")));
        assert!(why.iter().any(|w| w.contains("[quic]")));
        // Location and addresses are live.
        let mut moved = old.clone();
        moved.edges[0].location.lat = 10.0;
        moved.edges[0].addresses.push("::1".parse().unwrap());
        assert!(restart_required(&old, &moved).is_empty());
    }
}
