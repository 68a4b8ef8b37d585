//! What one edge's request pipeline works with: its live view (and
//! topology), geo database, executor pools, response cache and, with a
//! mesh, the dispatcher. Built by `node`, handed to the front doors and
//! the admin listener; nothing here imports them.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::task::TaskTracker;

use crate::config::reload::Reload;
use crate::config::{EdgeId, Topology};
use crate::exec::Executors;
use crate::geo::GeoDb;
use crate::mesh::LiveView;

/// State shared by every task serving one edge.
#[derive(Debug, Clone)]
pub struct EdgeContext {
    pub edge: EdgeId,
    pub(crate) geo: Arc<GeoDb>,
    pub view: Arc<LiveView>,
    /// This edge's executor pools (worker processes).
    pub exec: Arc<Executors>,
    /// The process's reloader (shared by every edge of a `Fleet`; weak,
    /// as the reloader holds the contexts). Unset outside a `Fleet`.
    pub(crate) reloader: Arc<std::sync::OnceLock<std::sync::Weak<dyn Reload>>>,
    /// This edge's response cache (cheap to clone; shared by the front
    /// door and the admin purge endpoint).
    pub cache: super::cached::ResponseCache,
    /// Forwarding to peers (None without a `[mesh]` in the topology).
    pub(crate) dispatch: Option<Arc<crate::dispatch::Dispatcher>>,
}

impl EdgeContext {
    /// The state of one edge: a fresh static view and started executor
    /// pools (call inside a tokio runtime).
    pub fn new(topology: Arc<Topology>, geo: Arc<GeoDb>, edge: EdgeId) -> anyhow::Result<Self> {
        Self::tracked(topology, geo, edge, TaskTracker::new())
    }

    /// Like [`EdgeContext::new`], with the response cache's background
    /// refreshes spawned on `tasks` (a `Fleet` waits for them on shutdown).
    pub(crate) fn tracked(
        topology: Arc<Topology>,
        geo: Arc<GeoDb>,
        edge: EdgeId,
        tasks: TaskTracker,
    ) -> anyhow::Result<Self> {
        let view = Arc::new(LiveView::new(topology.clone()));
        let dispatch = match &topology.mesh {
            Some(m) => {
                let mesh = crate::mesh::Mesh::new(&topology, m, edge)
                    .with_context(|| format!("starting the mesh of edge {edge}"))?;
                Some(Arc::new(crate::dispatch::Dispatcher::new(
                    Arc::new(mesh),
                    view.clone(),
                )))
            }
            None => None,
        };
        Ok(Self {
            edge,
            dispatch,
            view,
            exec: Executors::start(topology.clone(), edge)
                .with_context(|| format!("starting executors of edge {edge}"))?,
            reloader: Arc::new(std::sync::OnceLock::new()),
            cache: super::cached::ResponseCache::with_tracker(
                topology.edges.get(edge).map_or(64 << 20, |e| e.cache_bytes),
                tasks,
            ),
            geo,
        })
    }

    /// The current topology: the one in the live view, so every reader
    /// sees a reload at the same moment (it is swapped with the view).
    pub fn topology(&self) -> Arc<Topology> {
        self.view.load().topology.clone()
    }

    /// This edge's name (reloads never rename or move the local edge).
    pub(crate) fn name(&self) -> String {
        self.view
            .load()
            .topology
            .edges
            .get(self.edge)
            .map_or_else(|| "?".to_string(), |e| e.name.clone())
    }
}
