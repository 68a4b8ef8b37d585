//! Pure ranking of edges for a function and a client location.
//!
//! `placement` knows nothing of tokio, quinn or hickory: it reads a `View`
//! (an immutable snapshot of every edge's health and load) and returns a
//! `Ranking`. It does no I/O, reads no clock and cannot fail: an empty
//! ranking is a value. DNS answers and dispatch both use it.

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
    pub load_threshold: f64,
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
pub enum Class {
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
    pub fn as_str(self) -> &'static str {
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
    pub distance_km: f64,
    pub load: f64,
    pub class: Class,
}

/// Candidates best first. `fallback` is true when no candidate is healthy
/// and not draining: the best one is served anyway (serve something rather
/// than nothing), and callers count it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    pub candidates: Vec<Candidate>,
    pub fallback: bool,
}

impl Ranking {
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// The first `n` edges.
    pub fn top(&self, n: usize) -> impl Iterator<Item = EdgeId> + '_ {
        self.candidates.iter().take(n).map(|c| c.edge)
    }
}

/// Classifies one edge state.
pub fn classify(state: &EdgeState, threshold: f64) -> Class {
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
    }
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
