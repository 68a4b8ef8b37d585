//! The live view every edge keeps of the fleet.
//!
//! `mesh` owns the current `placement::View` and swaps it atomically; DNS
//! and dispatch read it without locks. Without `[mesh]` in the topology the
//! view holds the static topology (every edge up and idle). With it, each
//! edge has a `Mesh`: its cluster identity (`pki`), one pooled mTLS HTTP/3
//! connection per peer, and per-peer health, RTT and ejection state; the
//! `probe::Prober` (a `ViewSource`) probes every peer's `GET /health` and
//! publishes a new generation when something changed.

/// Peer latency (peak EWMA) and the power-of-two-choices pick.
pub(crate) mod balance;
/// Outlier detection and ejection of failing peers.
pub(crate) mod eject;
pub(crate) mod health;

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
    pub(crate) fn snapshot(&self) -> Arc<View> {
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

pub mod probe;
/// The HTTP/3 client edges use to reach each other (and `fnroute invoke`).
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{EdgeId, MeshSettings};
use crate::placement::EdgeState;
use crate::tls::pki;
use balance::{PeakEwma, DEFAULT_DECAY};
use eject::Outlier;
use health::{Hysteresis, PeerHealth};
use transport::{Client, ClientError, Connection};

/// Where the live view's peer state comes from. Today: all-pairs active
/// probing (`probe::Prober`); at hundreds of edges, a gossip source
/// (docs/ARCHITECTURE.md) implements the same trait.
#[async_trait::async_trait]
pub(crate) trait ViewSource: Send + Sync {
    /// Publishes peer state into `view` until `token` is cancelled.
    async fn run(
        self: std::sync::Arc<Self>,
        view: std::sync::Arc<LiveView>,
        token: CancellationToken,
    );
}

/// Why the mesh of an edge could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeshError {
    #[error("cluster pki: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("mesh client: {0}")]
    Client(#[from] ClientError),
}

/// `GET /health` of an edge, answered to authenticated peers only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HealthReport {
    pub(crate) edge: String,
    pub(crate) draining: bool,
    /// In-flight invocations as a share of the edge's capacity.
    pub(crate) load: f64,
    pub(crate) functions: Vec<FunctionLoad>,
}

/// The load of one function's pool on the reporting edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FunctionLoad {
    pub(crate) function: String,
    pub(crate) in_flight: usize,
    pub(crate) queued: usize,
    pub(crate) capacity: u32,
    /// Recent (EWMA) local run latency in milliseconds, if any ran.
    pub(crate) latency_ms: Option<f64>,
}

/// What this edge knows about one peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerStats {
    pub(crate) health: PeerHealth,
    /// Probe and forward round trips (peak-EWMA, with pending forwards).
    pub(crate) ewma: PeakEwma,
    /// Passive ejection from forwarded request outcomes.
    pub(crate) outlier: Outlier,
    pub(crate) last_report: Option<HealthReport>,
    pub(crate) last_rtt: Option<Duration>,
}

struct Peer {
    name: String,
    /// Removed from the topology by a live reload: never probed again.
    retired: std::sync::atomic::AtomicBool,
    /// The configured `quic_listen`, or the bound address when the peer
    /// runs in this process (`set_peer_addr`).
    addr: Mutex<SocketAddr>,
    conn: tokio::sync::Mutex<Option<std::sync::Arc<Connection>>>,
    stats: Mutex<PeerStats>,
}

/// The mesh side of one edge: cluster identity, the pooled mTLS
/// connections to every peer and what is known about each peer.
pub(crate) struct Mesh {
    pub(crate) edge: EdgeId,
    pub(crate) edge_name: String,
    pub(crate) settings: MeshSettings,
    pub(crate) cluster: pki::Cluster,
    client: Client,
    /// Indexed by `EdgeId`; this edge's own slot is never used. Grows when
    /// a live reload adds edges (`sync`); slots are never removed.
    peers: ArcSwap<Vec<Arc<Peer>>>,
    /// Recent local run latency per function (ms, EWMA).
    latency: Mutex<HashMap<String, f64>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("edge", &self.edge_name)
            .finish()
    }
}

fn new_peer(e: &crate::config::Edge) -> Peer {
    Peer {
        name: e.name.clone(),
        retired: std::sync::atomic::AtomicBool::new(e.retired),
        addr: Mutex::new(e.quic_listen),
        conn: tokio::sync::Mutex::new(None),
        stats: Mutex::new(PeerStats {
            health: PeerHealth::default(),
            ewma: PeakEwma::new(DEFAULT_RTT, DEFAULT_DECAY, Instant::now()),
            outlier: Outlier::default(),
            last_report: None,
            last_rtt: None,
        }),
    }
}

/// Initial RTT estimate of a peer before any probe (linkerd's default).
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// What an edge says about its own load in health answers. The executors
/// implement it (in `node`, which sees both layers): the mesh reports the
/// numbers without depending on the layer above it.
pub(crate) trait LocalLoad: Send + Sync {
    /// Shutting down: peers should stop sending work.
    fn is_draining(&self) -> bool;
    /// In-flight invocations over capacity (0.0 idle, 1.0 full).
    fn load(&self) -> f64;
    /// Each function's use of its pool, `latency_ms` left `None` (the mesh
    /// fills it in from what it recorded).
    fn functions(&self) -> Vec<FunctionLoad>;
}

impl Mesh {
    /// Loads the cluster material and binds the mesh client on the edge's
    /// QUIC listen IP (call inside a tokio runtime).
    pub(crate) fn new(
        topology: &crate::config::Topology,
        settings: &MeshSettings,
        edge: EdgeId,
    ) -> Result<Self, MeshError> {
        let cluster = pki::Cluster::load(topology, settings, edge)?;
        let idle = (settings.probe_interval * settings.fall * 2).max(Duration::from_secs(1));
        let config = cluster.client_config(idle)?;
        let ip = topology
            .edges
            .get(edge)
            .map(|e| e.quic_listen.ip())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let client = Client::with_config(config, SocketAddr::new(ip, 0))?;
        let peers = topology
            .edges
            .iter()
            .map(|e| Arc::new(new_peer(e)))
            .collect();
        Ok(Self {
            edge,
            edge_name: cluster.edge_name.clone(),
            settings: settings.clone(),
            cluster,
            client,
            peers: ArcSwap::from_pointee(peers),
            latency: Mutex::new(HashMap::new()),
        })
    }

    /// Every peer edge (all edges but this one and retired ones).
    pub(crate) fn peer_ids(&self) -> Vec<EdgeId> {
        let peers = self.peers.load();
        (0..peers.len())
            .filter(|&i| {
                i != self.edge
                    && peers
                        .get(i)
                        .is_some_and(|p| !p.retired.load(std::sync::atomic::Ordering::Relaxed))
            })
            .collect()
    }

    fn peer(&self, peer: EdgeId) -> Option<Arc<Peer>> {
        self.peers.load().get(peer).cloned()
    }

    pub(crate) fn peer_name(&self, peer: EdgeId) -> String {
        self.peer(peer)
            .map_or_else(|| "?".to_string(), |p| p.name.clone())
    }

    /// Follows a live reload (an `config::reload::align`ed topology: old
    /// edges keep their slots): new edges get a peer slot, retired ones
    /// are no longer probed and lose their pooled connection, and the
    /// cluster accepts the new edge names.
    pub(crate) fn sync(&self, topology: &crate::config::Topology) {
        use std::sync::atomic::Ordering;
        let old = self.peers.load_full();
        let mut next: Vec<Arc<Peer>> = Vec::with_capacity(topology.edges.len());
        for (i, e) in topology.edges.iter().enumerate() {
            let p = match old.get(i).filter(|p| p.name == e.name) {
                Some(p) => p.clone(),
                None => Arc::new(new_peer(e)),
            };
            let was = p.retired.swap(e.retired, Ordering::Relaxed);
            if e.retired && !was {
                if let Ok(mut slot) = p.conn.try_lock() {
                    *slot = None;
                }
            }
            next.push(p);
        }
        self.peers.store(Arc::new(next));
        self.cluster.set_names(topology);
    }

    fn hysteresis(&self) -> Hysteresis {
        Hysteresis {
            fall: self.settings.fall,
            rise: self.settings.rise,
        }
    }

    /// The pooled connection to `peer`, connecting if there is none or it
    /// closed. Not bounded in time here: callers wrap it in their deadline.
    pub(crate) async fn connection(
        &self,
        peer: EdgeId,
    ) -> Result<std::sync::Arc<Connection>, ClientError> {
        let p = self
            .peer(peer)
            .filter(|_| peer != self.edge)
            .ok_or_else(|| ClientError::Request(format!("no peer edge {peer}")))?;
        let mut slot = p.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.quic().close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let addr = *p.addr.lock().unwrap_or_else(|e| e.into_inner());
        let c = std::sync::Arc::new(self.client.connect(addr, &p.name).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Where `peer` really listens, when it runs in this process (a
    /// configured port 0 is only known after binding).
    pub(crate) fn set_peer_addr(&self, peer: EdgeId, addr: SocketAddr) {
        if let Some(p) = self.peer(peer) {
            *p.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr;
        }
    }

    /// Forgets `conn` if it is still the pooled connection of `peer`.
    pub(crate) fn drop_connection(&self, peer: EdgeId, conn: &std::sync::Arc<Connection>) {
        if let Some(p) = self.peer(peer) {
            if let Ok(mut slot) = p.conn.try_lock() {
                if slot
                    .as_ref()
                    .is_some_and(|c| std::sync::Arc::ptr_eq(c, conn))
                {
                    *slot = None;
                }
            }
        }
    }

    /// Runs `f` on the stats of `peer`.
    pub(crate) fn with_stats<T>(
        &self,
        peer: EdgeId,
        f: impl FnOnce(&mut PeerStats) -> T,
    ) -> Option<T> {
        let p = self.peer(peer)?;
        let mut s = p.stats.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut s))
    }

    /// Records one probe outcome of `peer`.
    pub(crate) fn record_probe(
        &self,
        peer: EdgeId,
        result: Result<(HealthReport, Duration), probe::ProbeError>,
    ) {
        let h = self.hysteresis();
        let name = self.peer_name(peer);
        let now = Instant::now();
        let changed = self.with_stats(peer, |s| match result {
            Ok((report, rtt)) => {
                s.ewma.observe(rtt, now);
                s.last_rtt = Some(rtt);
                crate::metrics::peer_rtt(&self.edge_name, &name, rtt);
                s.last_report = Some(report);
                s.health.record(true, h)
            }
            Err(error) => {
                tracing::debug!(peer = %name, %error, "probe failed");
                s.health.record(false, h)
            }
        });
        if let Some(Some(up)) = changed {
            if up {
                tracing::info!(peer = %name, "peer up");
            } else {
                tracing::warn!(peer = %name, "peer down");
            }
        }
        if let Some(state) = self.peer_state(peer) {
            crate::metrics::peer_state(&self.edge_name, &name, state.healthy, state.load);
        }
    }

    /// The view state of `peer` from its probes (up until proven down).
    pub(crate) fn peer_state(&self, peer: EdgeId) -> Option<EdgeState> {
        self.with_stats(peer, |s| EdgeState {
            healthy: s.health.is_up(),
            draining: s.last_report.as_ref().is_some_and(|r| r.draining),
            load: s.last_report.as_ref().map(|r| r.load).unwrap_or(0.0),
        })
    }

    /// Records the run latency of a local invocation.
    pub(crate) fn record_latency(&self, function: &str, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut m = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        // Allocates only for a function's first call.
        match m.get_mut(function) {
            Some(e) => *e = *e * 0.8 + ms * 0.2,
            None => {
                m.insert(function.to_string(), ms);
            }
        }
    }

    /// This edge's health document.
    pub(crate) fn report(&self, exec: &dyn LocalLoad, view: &LiveView) -> HealthReport {
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let draining =
            exec.is_draining() || view.load().edges.get(self.edge).is_some_and(|s| s.draining);
        let mut functions = exec.functions();
        for f in &mut functions {
            f.latency_ms = latency.get(&f.function).copied();
        }
        HealthReport {
            edge: self.edge_name.clone(),
            draining,
            load: exec.load(),
            functions,
        }
    }
}
