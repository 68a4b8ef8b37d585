//! The live view every edge keeps of the fleet.
//!
//! `mesh` owns the current `placement::View` and swaps it atomically; DNS
//! and dispatch read it without locks. Until active probing lands, the view
//! holds the static topology (every edge up and idle); updates go through
//! `LiveView::update`, which always publishes a new generation.

pub mod health;

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::config::Topology;
use crate::placement::View;

/// The current view, shared by every task of one edge node.
#[derive(Debug)]
pub struct LiveView {
    current: ArcSwap<View>,
}

impl LiveView {
    pub fn new(topology: Arc<Topology>) -> Self {
        Self {
            current: ArcSwap::from_pointee(View::from_topology(topology, 1)),
        }
    }

    /// The current snapshot (lock-free; hold it only briefly).
    pub fn load(&self) -> Guard<Arc<View>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<View> {
        self.current.load_full()
    }

    /// Publishes a new snapshot built from the current one; the generation
    /// is always one more than the one it replaces.
    pub fn update(&self, f: impl Fn(&View) -> View) {
        self.current.rcu(|cur| {
            let mut next = f(cur);
            next.generation = cur.generation + 1;
            Arc::new(next)
        });
    }
}
