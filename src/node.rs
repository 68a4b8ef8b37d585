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
use crate::exec::Executors;
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
    /// This edge's executor pools (worker processes).
    pub exec: Arc<Executors>,
    /// Counters of this edge's DNS front door (exported at scrape time).
    pub dns_stats: Arc<crate::dns::DnsStats>,
    /// This edge's response cache (cheap to clone; shared by the front
    /// door and the admin purge endpoint).
    pub cache: crate::frontdoor::cached::ResponseCache,
    /// Forwarding to peers (None without a `[mesh]` in the topology).
    pub dispatch: Option<Arc<crate::dispatch::Dispatcher>>,
}

impl EdgeContext {
    /// The state of one edge: a fresh static view and started executor
    /// pools (call inside a tokio runtime).
    pub fn new(topology: Arc<Topology>, geo: Arc<GeoDb>, edge: EdgeId) -> anyhow::Result<Self> {
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
            dns_stats: Arc::new(crate::dns::DnsStats::new(
                topology.functions.len(),
                topology.edges.len(),
            )),
            cache: crate::frontdoor::cached::ResponseCache::new(
                topology.edges.get(edge).map_or(64 << 20, |e| e.cache_bytes),
            ),
            topology,
            geo,
        })
    }

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
    /// The bound admin address of each edge (same order as `edges`).
    pub admin: Vec<SocketAddr>,
    /// Bound HTTP/3 front door address of each edge, in `edges` order.
    pub quic_addrs: Vec<SocketAddr>,
    /// Bound DNS address (UDP and TCP) of each edge, in `edges` order.
    pub dns_addrs: Vec<SocketAddr>,
    token: CancellationToken,
    tasks: TaskTracker,
    /// The admin listeners stop last, so `/healthz` says "draining" while
    /// the other tasks finish.
    admin_token: CancellationToken,
    admin_tasks: TaskTracker,
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
        tasks.spawn(reload_on_sighup(geo.clone(), token.child_token()));
        tasks.spawn(crate::admin::metrics_upkeep(
            Duration::from_secs(5),
            token.child_token(),
        ));
        let admin_token = CancellationToken::new();
        let admin_tasks = TaskTracker::new();
        let mut admin = Vec::new();
        let mut contexts = Vec::new();
        let mut quic_addrs = Vec::new();
        let mut dns_addrs = Vec::new();
        for &edge in edges {
            let cx = EdgeContext::new(topology.clone(), geo.clone(), edge)?;
            let info = topology
                .edges
                .get(edge)
                .context("edge index out of range")?;
            let bound = crate::admin::AdminServer::bind(
                cx.clone(),
                crate::admin::AdminLimits::default(),
                None,
            )
            .await;
            let server = match bound {
                Ok(s) => s,
                Err(e) => {
                    // Stop what already started before reporting.
                    token.cancel();
                    admin_token.cancel();
                    return Err(e.into());
                }
            };
            let admin_addr = server.local_addr().context("admin listener address")?;
            admin_tasks.spawn(server.run(admin_token.clone()));
            admin.push(admin_addr);
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
                admin = %admin_addr,
                functions = ?hosted,
                "edge started"
            );
            let dns = crate::dns::bind(&cx)
                .await
                .with_context(|| format!("starting the DNS front door of edge {}", info.name))?;
            dns_addrs.push(dns.local_addr());
            tasks.spawn(dns.serve(token.child_token()));
            let frontdoor = crate::frontdoor::FrontDoor::bind(cx.clone())
                .with_context(|| format!("edge {}: http/3 front door", info.name))?;
            quic_addrs.push(frontdoor.local_addr());
            tasks.spawn(frontdoor.serve(token.child_token()));
            if let Some(d) = &cx.dispatch {
                use crate::mesh::ViewSource;
                let prober = Arc::new(crate::mesh::probe::Prober::new(
                    d.mesh.clone(),
                    cx.exec.clone(),
                    topology.edges.len(),
                ));
                tasks.spawn(prober.run(cx.view.clone(), token.child_token()));
            }
            contexts.push(cx);
        }
        // Edges sharing this process reach each other at their bound
        // addresses (which differ from the topology's when it says port 0).
        for cx in &contexts {
            if let Some(d) = &cx.dispatch {
                for (other, addr) in contexts.iter().zip(&quic_addrs) {
                    d.mesh.set_peer_addr(other.edge, *addr);
                }
            }
        }
        Ok(Self {
            topology,
            geo,
            edges: contexts,
            admin,
            quic_addrs,
            dns_addrs,
            token,
            tasks,
            admin_token,
            admin_tasks,
        })
    }

    /// A token cancelled when the fleet shuts down.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops accepting work, lets in-flight work finish within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        for cx in &self.edges {
            cx.view.update(|v| {
                let mut state = v.edges.get(cx.edge).cloned().unwrap_or_default();
                state.draining = true;
                v.with_edge(cx.edge, state)
            });
        }
        // With a mesh, keep serving while peers' probes see "draining" (so
        // they stop forwarding here and their DNS stops handing this edge
        // out), then stop taking work.
        let announce = self
            .edges
            .iter()
            .filter_map(|cx| cx.dispatch.as_ref())
            .map(|d| {
                let every = d.mesh.settings.probe_interval;
                every * 2 + crate::mesh::probe::probe_timeout(every)
            })
            .max();
        if let Some(wait) = announce {
            tracing::info!(?wait, "draining: telling peers before stopping");
            tokio::time::sleep(wait.min(grace)).await;
        }
        self.token.cancel();
        self.tasks.close();
        // Executors drain alongside the listeners: in-flight invocations
        // finish (within `grace`), then their workers are killed.
        let drains: Vec<_> = self
            .edges
            .iter()
            .map(|cx| {
                let exec = cx.exec.clone();
                tokio::spawn(async move { exec.drain(grace).await })
            })
            .collect();
        let all = async {
            self.tasks.wait().await;
            for d in drains {
                let _ = d.await;
            }
        };
        if tokio::time::timeout(grace + crate::exec::KILL_GRACE, all)
            .await
            .is_err()
        {
            tracing::warn!(?grace, "grace period expired; stopping remaining tasks");
        }
        self.admin_token.cancel();
        self.admin_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.admin_tasks.wait()).await;
    }
}

/// SIGHUP re-reads the geo database (a corrupt file is rejected and the
/// database in use kept).
async fn reload_on_sighup(geo: Arc<GeoDb>, token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload by replacing the file");
            return;
        }
    };
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading the geo database");
        if let Err(error) = geo.reload() {
            tracing::error!(%error, "new geo database rejected; keeping the old one");
        }
    }
}
