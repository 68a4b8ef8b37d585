//! One process running one or more edges of a topology: the supervisor
//! that owns the shared state and every long-running task.
//!
//! Each edge has its own `LiveView` (in `--all` mode the edges are separate
//! nodes that merely share a process and the geo database). Tasks receive
//! a `CancellationToken`; shutdown cancels it and waits for the tasks
//! within a bounded grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EdgeId, Topology};
use crate::geo::GeoDb;
use crate::mesh::LiveView;

/// How often the geo database file is checked for changes.
pub const GEO_POLL: Duration = Duration::from_secs(5);

/// State shared by every task serving one edge.
#[derive(Debug, Clone)]
pub struct EdgeContext {
    pub edge: EdgeId,
    pub topology: Arc<Topology>,
    pub geo: Arc<GeoDb>,
    pub view: Arc<LiveView>,
    pub exec: Arc<crate::exec::Executors>,
}

impl EdgeContext {
    pub fn name(&self) -> &str {
        self.topology
            .edges
            .get(self.edge)
            .map(|e| e.name.as_str())
            .unwrap_or("?")
    }
}

/// The running edges of this process.
pub struct Fleet {
    pub topology: Arc<Topology>,
    pub geo: Arc<GeoDb>,
    pub edges: Vec<EdgeContext>,
    /// Bound HTTP/3 front door address of each edge, in `edges` order.
    pub quic_addrs: Vec<SocketAddr>,
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Fleet {
    /// Opens the geo database and starts every listener of `edges`.
    pub async fn start(topology: Arc<Topology>, edges: &[EdgeId]) -> anyhow::Result<Self> {
        let geo = Arc::new(
            GeoDb::open(&topology.geo_db, topology.default_location)
                .with_context(|| format!("opening geo database {}", topology.geo_db.display()))?,
        );
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(geo.clone().watch(GEO_POLL, token.child_token()));
        let mut contexts = Vec::new();
        let mut quic_addrs = Vec::new();
        for &edge in edges {
            let cx = EdgeContext {
                edge,
                topology: topology.clone(),
                geo: geo.clone(),
                view: Arc::new(LiveView::new(topology.clone())),
                exec: Arc::new(crate::exec::Executors::new(topology.clone(), edge)),
            };
            let info = topology
                .edges
                .get(edge)
                .context("edge index out of range")?;
            let hosted: Vec<&str> = topology
                .functions
                .iter()
                .filter(|f| f.hosted_on(edge))
                .map(|f| f.name.as_str())
                .collect();
            tracing::info!(
                edge = %info.name,
                dns = %info.dns_listen,
                quic = %info.quic_listen,
                admin = %info.admin_listen,
                functions = ?hosted,
                "edge started"
            );
            let frontdoor = crate::frontdoor::FrontDoor::bind(cx.clone())
                .with_context(|| format!("edge {}: http/3 front door", info.name))?;
            quic_addrs.push(frontdoor.local_addr());
            tasks.spawn(frontdoor.serve(token.child_token()));
            contexts.push(cx);
        }
        Ok(Self {
            topology,
            geo,
            edges: contexts,
            quic_addrs,
            token,
            tasks,
        })
    }

    /// A token cancelled when the fleet shuts down.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops accepting work, lets in-flight work finish within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.token.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "grace period expired; stopping remaining tasks");
        }
    }
}
