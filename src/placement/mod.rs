//! Pure ranking of edges for a function and a client location.
//!
//! `placement` knows nothing of tokio, quinn or hickory: it reads a `View`
//! (an immutable snapshot of every edge's health and load) and returns a
//! `Ranking`. It does no I/O, reads no clock and cannot fail: an empty
//! ranking is a value. DNS answers and dispatch both use it.
//!
//! `rank` orders candidates by class, then distance. `rank_client` adds
//! spreading for displaced clients (see [`rank_client`]): when a client's
//! nearest hosting edge is demoted (down, draining, over its threshold),
//! its load is split by capacity over the near-equal survivors instead of
//! all landing on the single next-nearest one.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{EdgeId, Topology};
use crate::geo::Location;

/// The state of one edge as the local node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeState {
    pub healthy: bool,
    pub draining: bool,
    /// In-flight invocations as a share of capacity (0 = idle, 1 = full).
    pub load: f64,
}

impl Default for EdgeState {
    fn default() -> Self {
        // Before the first probe a peer counts as up.
        Self {
            healthy: true,
            draining: false,
            load: 0.0,
        }
    }
}

/// An immutable snapshot of the fleet. A new one is built for every change
/// and swapped in atomically; `generation` grows with every snapshot.
#[derive(Debug, Clone)]
pub struct View {
    pub generation: u64,
    pub topology: Arc<Topology>,
    /// Indexed by `EdgeId`.
    pub edges: Vec<EdgeState>,
    /// Share of capacity above which an edge spills over to the next.
    pub(crate) load_threshold: f64,
}

impl View {
    /// The static view of a topology: every edge healthy and idle.
    pub fn from_topology(topology: Arc<Topology>, generation: u64) -> Self {
        let edges = vec![EdgeState::default(); topology.edges.len()];
        let load_threshold = topology.dns.load_threshold;
        Self {
            generation,
            topology,
            edges,
            load_threshold,
        }
    }

    /// A copy with one edge's state replaced and the generation bumped.
    pub fn with_edge(&self, edge: EdgeId, state: EdgeState) -> Self {
        let mut v = self.clone();
        if let Some(s) = v.edges.get_mut(edge) {
            *s = state;
        }
        v.generation += 1;
        v
    }
}

/// Why a candidate sits where it does; the order of the variants is the
/// order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Class {
    /// Healthy, not draining, below the load threshold.
    Preferred,
    /// Healthy but above the load threshold: spills over to the next.
    OverThreshold,
    /// Healthy but at or above capacity: used only if nothing else is left.
    Saturated,
    /// Draining: finishing in-flight work, takes nothing new if avoidable.
    Draining,
    /// Failed its health checks.
    Unhealthy,
}

impl Class {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Preferred => "preferred",
            Self::OverThreshold => "over-threshold",
            Self::Saturated => "saturated",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One edge able to run the function, as ranked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub edge: EdgeId,
    pub(crate) distance_km: f64,
    pub(crate) load: f64,
    pub(crate) class: Class,
}

/// Candidates best first. `fallback` is true when no candidate is healthy
/// and not draining: the best one is served anyway (serve something rather
/// than nothing), and callers count it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) fallback: bool,
    /// How many candidates the first one was drawn from by capacity
    /// (`rank_client`: the near-equal window of a displaced client, in
    /// rank order once the drawn one is moved to the front). 0 when the
    /// client is not displaced (always from `rank`): the first is simply
    /// the best.
    pub(crate) spread: usize,
}

impl Ranking {
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// True when the first candidate depends on the client's draw (its
    /// network), not only on its location: it was drawn among two or more.
    pub(crate) fn drawn(&self) -> bool {
        self.spread >= 2
    }

    /// The first `n` edges.
    pub(crate) fn top(&self, n: usize) -> impl Iterator<Item = EdgeId> + '_ {
        self.candidates.iter().take(n).map(|c| c.edge)
    }
}

/// Classifies one edge state.
pub(crate) fn classify(state: &EdgeState, threshold: f64) -> Class {
    if !state.healthy {
        Class::Unhealthy
    } else if state.draining {
        Class::Draining
    } else if state.load >= 1.0 {
        Class::Saturated
    } else if state.load > threshold {
        Class::OverThreshold
    } else {
        Class::Preferred
    }
}

/// Ranks the edges hosting `hosts` (a function's edge list) for a client at
/// `at`: by class, then great-circle distance, then edge id (ties break
/// deterministically).
pub fn rank(view: &View, hosts: &[EdgeId], at: Location) -> Ranking {
    let mut candidates: Vec<Candidate> = hosts
        .iter()
        .filter_map(|&edge| {
            let state = view.edges.get(edge)?;
            let info = view.topology.edges.get(edge)?;
            Some(Candidate {
                edge,
                distance_km: at.distance_km(&info.location),
                load: state.load,
                class: classify(state, view.load_threshold),
            })
        })
        .collect();
    candidates.sort_by(|a, b| {
        a.class
            .cmp(&b.class)
            .then(a.distance_km.total_cmp(&b.distance_km))
            .then(a.edge.cmp(&b.edge))
    });
    let fallback = candidates
        .first()
        .is_some_and(|c| c.class >= Class::Draining);
    Ranking {
        candidates,
        fallback,
        spread: 0,
    }
}

/// A candidate is *near-equal* to the best one (the first of a ranking)
/// when it has the best one's class and lies within
/// `NEAR_FACTOR` × the best one's distance + `NEAR_MARGIN_KM`.
///
/// The factor bounds what a client pays for being sent to a near-equal
/// edge instead of the best: about 25 % more distance (RTT grows roughly
/// with distance). The margin makes short distances near-equal whatever
/// their ratio: geolocation is often only good to a few hundred km, and
/// 100 km against 350 km is the same metro-scale latency. DNS spreading
/// (`rank_client`) and dispatch's power of two choices use this one rule.
pub(crate) const NEAR_FACTOR: f64 = 1.25;
/// See [`NEAR_FACTOR`].
pub(crate) const NEAR_MARGIN_KM: f64 = 300.0;

/// How many leading candidates of `ranked` (best first, as `rank` orders
/// them) are near-equal to the first (see [`NEAR_FACTOR`]); 0 when empty.
pub(crate) fn near_equal(ranked: &[Candidate]) -> usize {
    let Some(best) = ranked.first() else {
        return 0;
    };
    let limit = best.distance_km * NEAR_FACTOR + NEAR_MARGIN_KM;
    ranked
        .iter()
        .take_while(|c| c.class == best.class && c.distance_km <= limit)
        .count()
}

/// The client network an IPv4 client is spread by: /24, the source prefix
/// RFC 7871 recommends resolvers send (and the RRL default).
pub(crate) const SPREAD_PREFIX_V4: u8 = 24;
/// The client network an IPv6 client is spread by: /56 (as for IPv4).
pub(crate) const SPREAD_PREFIX_V6: u8 = 56;

/// The client network of `addr` that spreading draws for: the address
/// (IPv4-mapped IPv6 as IPv4) masked to `SPREAD_PREFIX_V4`/`_V6`, and that
/// prefix length. Every address in it gets the same draw.
pub(crate) fn client_network(addr: IpAddr) -> (IpAddr, u8) {
    match addr.to_canonical() {
        IpAddr::V4(a) => (
            IpAddr::V4((u32::from(a) & !(u32::MAX >> SPREAD_PREFIX_V4)).into()),
            SPREAD_PREFIX_V4,
        ),
        IpAddr::V6(a) => (
            IpAddr::V6((u128::from(a) & !(u128::MAX >> SPREAD_PREFIX_V6)).into()),
            SPREAD_PREFIX_V6,
        ),
    }
}

/// The draw of the client at `addr`: a fixed, unseeded 64-bit hash
/// (splitmix64's finalizer, twice, with the address family mixed in) of
/// its [`client_network`]. The same network always gets the same draw, on
/// every edge and in every version built from this code, so every edge's
/// DNS gives a client network the same answer for the same view, and a
/// resolver can cache it under the ECS scope.
pub(crate) fn client_draw(addr: IpAddr) -> u64 {
    let (net, _) = client_network(addr);
    let (key, family) = match net {
        IpAddr::V4(a) => (u64::from(u32::from(a)), 4),
        IpAddr::V6(a) => ((u128::from(a) >> 64) as u64, 6),
    };
    mix(mix(key) ^ family)
}

/// splitmix64's output function: a bijection on u64 with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// True when the client of `ranked` (from `rank`) is *displaced*: its
/// nearest hosting edge (by distance, then edge id) is not the best
/// candidate, because its class is worse (unhealthy, draining, saturated
/// or over the load threshold) than the best one's. Never in a fallback
/// ranking (nothing viable: the nearest is served, as without spreading).
pub(crate) fn displaced(ranked: &Ranking) -> bool {
    let Some(best) = ranked.candidates.first() else {
        return false;
    };
    let nearest = ranked.candidates.iter().min_by(|a, b| {
        a.distance_km
            .total_cmp(&b.distance_km)
            .then(a.edge.cmp(&b.edge))
    });
    !ranked.fallback && nearest.is_some_and(|n| n.edge != best.edge)
}

/// `rank` for one client, with *spreading*: the ranking is `rank`'s, except
/// for a displaced client (see [`displaced`]), whose first candidate is
/// drawn among the near-equal ones (see [`near_equal`]: same class as the
/// best viable candidate, within 1.25 × its distance + 300 km) with
/// probability proportional to their `Edge::capacity`, using `draw`
/// (callers pass [`client_draw`] of the client's address) as the random
/// number. The drawn candidate moves to the front; the others keep rank
/// order. `Ranking::spread` says how many it was drawn from.
///
/// Why this rule:
/// - Only displaced clients move. A client whose nearest edge is viable
///   gets exactly `rank`'s answer; spreading is a failover behaviour, not
///   load balancing in the normal case.
/// - Near-equal rather than "the next k": a window relative to the best
///   viable distance follows the geometry. In a dense region a failed
///   edge's clients split over the several survivors around it; in a
///   sparse one (a three-edge fleet) they keep the single nearest survivor
///   rather than being sent across the world. A lone survivor is still
///   protected by the load threshold (it drops a class when hot) and by
///   dispatch's spill-over.
/// - Capacity, not spare capacity (capacity × (1 − load)): the answer must
///   be stable for a view that only differs in load, or client networks
///   would flip between edges on every probe round, and load reports lag
///   (probe interval plus DNS TTL), so load-weighted draws would chase
///   their own effect. Load still acts through the class: an edge over its
///   threshold leaves the window.
/// - The draw is integer arithmetic (`draw × total / 2⁶⁴` against
///   cumulative weights): exact proportions, no float, the same on every
///   platform.
pub(crate) fn rank_client(view: &View, hosts: &[EdgeId], at: Location, draw: u64) -> Ranking {
    let mut ranking = rank(view, hosts, at);
    if !displaced(&ranking) {
        return ranking;
    }
    let window = near_equal(&ranking.candidates);
    ranking.spread = window;
    let weight = |c: &Candidate| {
        view.topology
            .edges
            .get(c.edge)
            .map_or(0, |e| u64::from(e.capacity))
    };
    let total: u64 = ranking.candidates[..window].iter().map(weight).sum();
    if window < 2 || total == 0 {
        return ranking;
    }
    // Uniform in [0, total) for a uniform draw.
    let target = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
    let mut below = 0;
    let pick = ranking.candidates[..window]
        .iter()
        .position(|c| {
            below += weight(c);
            target < below
        })
        .unwrap_or(0);
    let chosen = ranking.candidates.remove(pick);
    ranking.candidates.insert(0, chosen);
    ranking
}

/// Ranks the edges hosting the function named `function` (case-insensitive).
/// An unknown function ranks nothing.
pub fn rank_function(view: &View, function: &str, at: Location) -> Ranking {
    match view.topology.function(function) {
        Some(f) => rank(view, &f.edges, at),
        None => Ranking::default(),
    }
}

#[cfg(test)]
mod tests;
