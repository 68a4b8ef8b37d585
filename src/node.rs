//! One process running one or more edges of a topology: the supervisor
//! that owns the shared state and every long-running task.
//!
//! Each edge has its own `LiveView` (in `--all` mode the edges are separate
//! nodes that merely share a process and the geo database). Tasks receive
//! a `CancellationToken`; shutdown cancels it and waits for the tasks
//! within a bounded grace period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::reload::Reload;
use crate::config::{EdgeId, Topology};
use crate::dns::DnsHandle;
use crate::exec::Executors;
use crate::geo::GeoDb;
use crate::pipeline::EdgeContext;

/// How often the geo database file is checked for changes.
pub(crate) const GEO_POLL: Duration = Duration::from_secs(5);

/// The running edges of this process.
pub struct Fleet {
    /// The topology the fleet started with (`EdgeContext::topology` is
    /// the current one after reloads).
    pub topology: Arc<Topology>,
    pub geo: Arc<GeoDb>,
    /// Reloads the topology (and the geo database) of every edge here.
    pub reloader: Arc<Reloader>,
    pub edges: Vec<EdgeContext>,
    /// The bound admin address of each edge (same order as `edges`).
    pub admin: Vec<SocketAddr>,
    /// Bound HTTP/3 front door address of each edge, in `edges` order.
    pub quic_addrs: Vec<SocketAddr>,
    /// Bound HTTPS-over-TCP address of each edge that has `tcp_listen`.
    pub tcp_addrs: Vec<Option<SocketAddr>>,
    /// Bound DNS address (UDP and TCP) of each edge, in `edges` order.
    pub dns_addrs: Vec<SocketAddr>,
    token: CancellationToken,
    tasks: TaskTracker,
    /// The admin listeners stop last, so `/healthz` says "draining" while
    /// the other tasks finish.
    admin_token: CancellationToken,
    admin_tasks: TaskTracker,
}

impl crate::mesh::LocalLoad for Executors {
    fn is_draining(&self) -> bool {
        Executors::is_draining(self)
    }
    fn load(&self) -> f64 {
        Executors::load(self)
    }
    fn functions(&self) -> Vec<crate::mesh::FunctionLoad> {
        self.stats()
            .into_iter()
            .map(|s| crate::mesh::FunctionLoad {
                capacity: self.function(&s.function).map_or(0, |f| f.concurrency_max),
                in_flight: s.busy + s.starting,
                queued: s.queued,
                latency_ms: None,
                function: s.function,
            })
            .collect()
    }
}

/// One edge's state and bound listeners, nothing running yet.
struct BoundEdge {
    cx: EdgeContext,
    /// This edge's DNS front door: its counters, and the state a reload
    /// rebuilds.
    dns_handle: DnsHandle,
    admin: crate::admin::AdminServer,
    admin_addr: SocketAddr,
    dns: crate::dns::BoundDns,
    frontdoor: crate::frontdoor::FrontDoors,
}

impl BoundEdge {
    /// Makes `edge`'s state (starting its executors, whose background
    /// work, cache refreshes included, `tasks` tracks) and binds its
    /// listeners. On error the executors started here are stopped and
    /// whatever was bound is dropped (closed).
    async fn bind(
        topology: &Arc<Topology>,
        geo: &Arc<GeoDb>,
        edge: EdgeId,
        reloader: &Arc<std::sync::OnceLock<std::sync::Weak<dyn Reload>>>,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Self> {
        let mut cx = EdgeContext::tracked(topology.clone(), geo.clone(), edge, tasks.clone())?;
        cx.reloader = reloader.clone();
        let dns_handle = DnsHandle::new(edge, geo.clone(), cx.view.clone());
        match Self::listen(cx.clone(), &dns_handle).await {
            Ok((admin, admin_addr, dns, frontdoor)) => Ok(Self {
                cx,
                dns_handle,
                admin,
                admin_addr,
                dns,
                frontdoor,
            }),
            Err(e) => {
                cx.exec.drain(Duration::ZERO).await;
                Err(e)
            }
        }
    }

    async fn listen(
        cx: EdgeContext,
        dns_handle: &DnsHandle,
    ) -> anyhow::Result<(
        crate::admin::AdminServer,
        SocketAddr,
        crate::dns::BoundDns,
        crate::frontdoor::FrontDoors,
    )> {
        let name = cx.name();
        let admin = crate::admin::AdminServer::bind(
            cx.clone(),
            Some(dns_handle.clone()),
            crate::admin::AdminLimits::default(),
            None,
        )
        .await?;
        let admin_addr = admin.local_addr().context("admin listener address")?;
        let dns = crate::dns::bind(dns_handle)
            .await
            .with_context(|| format!("starting the DNS front door of edge {name}"))?;
        let frontdoor = crate::frontdoor::FrontDoors::bind(cx)
            .with_context(|| format!("edge {name}: front doors (http/3, https)"))?;
        Ok((admin, admin_addr, dns, frontdoor))
    }
}

impl Fleet {
    /// Opens the geo database and starts every listener of `edges`.
    ///
    /// Start is total: every edge's state is made and every listener bound
    /// first, with nothing running yet; only then are the tasks spawned,
    /// all under the fleet's tokens and trackers. An error on the way
    /// (a port in use, a bad certificate) stops the executors already
    /// started and drops every bound socket before it is returned, so a
    /// failed start leaves nothing behind.
    pub async fn start(topology: Arc<Topology>, edges: &[EdgeId]) -> anyhow::Result<Self> {
        // Components compile (or load from the disk cache) before any port
        // is bound: a bad one fails the start, not the first request.
        prepare_wasm(&topology, edges).await?;
        let geo = Arc::new(
            GeoDb::open(&topology.geo_db, topology.default_location)
                .with_context(|| format!("opening geo database {}", topology.geo_db.display()))?,
        );
        let tasks = TaskTracker::new();
        let reloader = Arc::new(Reloader::new(topology.source.clone(), geo.clone()));
        let weak = Arc::new(std::sync::OnceLock::new());
        let _ = weak.set(Arc::downgrade(&reloader) as std::sync::Weak<dyn Reload>);
        let mut bound: Vec<BoundEdge> = Vec::with_capacity(edges.len());
        for &edge in edges {
            match BoundEdge::bind(&topology, &geo, edge, &weak, &tasks).await {
                Ok(b) => bound.push(b),
                Err(e) => {
                    for b in &bound {
                        b.cx.exec.drain(Duration::ZERO).await;
                    }
                    return Err(e);
                }
            }
        }

        // Everything is bound: from here on nothing fails.
        let token = CancellationToken::new();
        let admin_token = CancellationToken::new();
        let admin_tasks = TaskTracker::new();
        tasks.spawn(geo.clone().watch(GEO_POLL, token.child_token()));
        tasks.spawn(crate::admin::metrics_upkeep(
            Duration::from_secs(5),
            token.child_token(),
        ));
        let mut admin = Vec::new();
        let mut contexts = Vec::new();
        let mut dns_handles = Vec::new();
        let mut quic_addrs = Vec::new();
        let mut tcp_addrs = Vec::new();
        let mut dns_addrs = Vec::new();
        for b in bound {
            admin.push(b.admin_addr);
            dns_addrs.push(b.dns.local_addr());
            quic_addrs.push(b.frontdoor.quic_addr());
            tcp_addrs.push(b.frontdoor.tcp_addr());
            admin_tasks.spawn(b.admin.run(admin_token.clone()));
            tasks.spawn(b.dns.serve(token.child_token()));
            tasks.spawn(b.frontdoor.serve(token.child_token()));
            if let Some(d) = &b.cx.dispatch {
                use crate::mesh::ViewSource;
                let prober = Arc::new(crate::mesh::probe::Prober::new(
                    d.mesh.clone(),
                    b.cx.exec.clone(),
                    topology.edges.len(),
                ));
                tasks.spawn(prober.run(b.cx.view.clone(), token.child_token()));
            }
            contexts.push(b.cx);
            dns_handles.push(b.dns_handle);
        }
        let _ = reloader
            .contexts
            .set(contexts.iter().cloned().zip(dns_handles).collect());
        tasks.spawn(reload_on_sighup(reloader.clone(), token.child_token()));
        // Edges sharing this process reach each other at their bound
        // addresses (which differ from the topology's when it says port 0).
        for cx in &contexts {
            if let Some(d) = &cx.dispatch {
                for (other, addr) in contexts.iter().zip(&quic_addrs) {
                    d.mesh.set_peer_addr(other.edge, *addr);
                }
            }
        }
        // Said once everything answers, reloads included (a reload before
        // the contexts are set would be refused as "still starting").
        let bound_addrs = dns_addrs
            .iter()
            .zip(&quic_addrs)
            .zip(&admin)
            .zip(&tcp_addrs);
        for (cx, (((dns, quic), admin), tcp)) in contexts.iter().zip(bound_addrs) {
            let hosted: Vec<&str> = topology
                .functions
                .iter()
                .filter(|f| f.hosted_on(cx.edge))
                .map(|f| f.name.as_str())
                .collect();
            tracing::info!(
                edge = %cx.name(),
                %dns,
                %quic,
                tcp = %tcp.map_or_else(|| "off".to_string(), |a| a.to_string()),
                %admin,
                functions = ?hosted,
                "edge started"
            );
        }
        Ok(Self {
            topology,
            geo,
            reloader,
            edges: contexts,
            admin,
            quic_addrs,
            tcp_addrs,
            dns_addrs,
            token,
            tasks,
            admin_token,
            admin_tasks,
        })
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

/// SIGHUP re-reads the geo database and the topology (a corrupt database
/// or an invalid topology is rejected and the one in use kept).
async fn reload_on_sighup(reloader: Arc<Reloader>, token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload with POST /reload");
            return;
        }
    };
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading the geo database and the topology");
        let _ = reloader.reload().await;
    }
}

pub(crate) use crate::config::reload::ReloadReport;

/// Re-reads the topology file and applies it to every edge of this
/// process, live: validated first and rejected whole (with every error
/// logged) if invalid or if it changes something only a restart can
/// (`config::reload::restart_required`); otherwise the new topology is
/// published in each edge's view (read by DNS, dispatch, the front door
/// and admin at their next request), executor pools are reconciled
/// (new ones start; replaced and removed ones finish what they took, then
/// stop), the DNS state is rebuilt, and cached results of changed and
/// removed functions are purged (their keys carry the old definition's
/// version anyway). Reloads are serialised.
pub struct Reloader {
    source: PathBuf,
    geo: Arc<GeoDb>,
    /// Each edge served here, with its DNS front door.
    contexts: std::sync::OnceLock<Vec<(EdgeContext, DnsHandle)>>,
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish()
    }
}

#[async_trait::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> ReloadReport {
        Reloader::reload(self).await
    }
}

impl Reloader {
    fn new(source: PathBuf, geo: Arc<GeoDb>) -> Self {
        Self {
            source,
            geo,
            contexts: std::sync::OnceLock::new(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads the geo database and the topology file.
    pub async fn reload(&self) -> ReloadReport {
        let _serial = self.lock.lock().await;
        let geo = self.geo.clone();
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let g = geo
                .reload()
                .map(|()| geo.generation())
                .map_err(|e| e.to_string());
            (g, crate::config::load(&source))
        })
        .await;
        let mut report = ReloadReport {
            file: self.source.clone(),
            ..ReloadReport::default()
        };
        let (geo, topo) = match loaded {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("reload task failed: {e}"));
                return report;
            }
        };
        if let Err(error) = &geo {
            tracing::error!(%error, "new geo database rejected; keeping the old one");
        }
        match geo {
            Ok(g) => report.geo_generation = Some(g),
            Err(e) => report.geo_error = Some(e),
        }
        let new = match topo {
            Ok(t) => Arc::new(t),
            Err(errors) => {
                tracing::error!(file = %self.source.display(), "topology reload rejected, keeping the running one:\n{errors}");
                report.errors = errors.0.iter().map(|e| e.to_string()).collect();
                return report;
            }
        };
        let Some(contexts) = self.contexts.get() else {
            report.errors.push("the edges are still starting".into());
            return report;
        };
        let Some(old) = contexts.first().map(|(cx, _)| cx.topology()) else {
            return report;
        };
        let mut refused = crate::config::reload::restart_required(&old, &new);
        for (cx, _) in contexts {
            let name = cx.name();
            if !new.edges.iter().any(|e| e.name == name) {
                refused.push(format!(
                    "edge {name} is served by this process and was removed: drain and stop this node instead (docs/operations.md)"
                ));
            }
        }
        if !refused.is_empty() {
            tracing::error!(file = %self.source.display(), "topology reload rejected (needs a restart), keeping the running one: {}", refused.join("; "));
            report.errors = refused;
            return report;
        }
        let ours: Vec<EdgeId> = contexts
            .iter()
            .filter_map(|(cx, _)| new.edge_id(&cx.name()))
            .collect();
        if let Err(e) = prepare_wasm(&new, &ours).await {
            tracing::error!(file = %self.source.display(), "topology reload rejected, keeping the running one: {e:#}");
            report.errors = match e.downcast::<crate::exec::PrepareError>() {
                Ok(p) => p.0,
                Err(e) => vec![format!("{e:#}")],
            };
            return report;
        }
        // Old edges keep their EdgeId; removed ones stay as retired slots.
        let new = Arc::new(crate::config::reload::align(&old, (*new).clone()));
        let edges_added: Vec<String> = new
            .edges
            .iter()
            .filter(|e| !e.retired && !old.edges.iter().any(|o| o.name == e.name && !o.retired))
            .map(|e| e.name.clone())
            .collect();
        let edges_removed: Vec<String> = new
            .edges
            .iter()
            .filter(|e| e.retired && old.edges.iter().any(|o| o.name == e.name && !o.retired))
            .map(|e| e.name.clone())
            .collect();
        if !edges_added.is_empty() || !edges_removed.is_empty() {
            tracing::info!(added = ?edges_added, removed = ?edges_removed, "edges changed");
        }
        report.edges_added = edges_added;
        report.edges_removed = edges_removed;
        let (added, changed, removed) = crate::config::reload::function_changes(&old, &new);
        for (cx, dns) in contexts {
            apply(cx, &new, &changed, &removed);
            dns.reload(&old, &new);
            report
                .generations
                .push((cx.name(), cx.view.load().generation));
        }
        tracing::info!(
            file = %self.source.display(),
            ?added,
            ?changed,
            ?removed,
            "topology reloaded"
        );
        report.applied = true;
        report.added = added;
        report.changed = changed;
        report.removed = removed;
        report
    }
}

/// `exec::prepare` for the wasm functions of `edges`, off the async
/// workers (the first compile of a component is CPU-heavy).
async fn prepare_wasm(topology: &Arc<Topology>, edges: &[EdgeId]) -> anyhow::Result<()> {
    let t = topology.clone();
    let edges = edges.to_vec();
    tokio::task::spawn_blocking(move || crate::exec::prepare(&t, Some(&edges)))
        .await
        .map_err(|e| anyhow::anyhow!("preparing wasm components: {e}"))??;
    Ok(())
}

/// Applies a validated, live-applicable, `align`ed topology to one edge.
fn apply(cx: &EdgeContext, new: &Arc<Topology>, changed: &[String], removed: &[String]) {
    // The view first: DNS, dispatch, the front door and admin read the
    // topology from it. Same edges, so health states carry over by index.
    cx.view.update(|v| {
        let mut next = crate::placement::View::from_topology(new.clone(), v.generation);
        for (i, state) in next.edges.iter_mut().enumerate() {
            if new.edges.get(i).is_some_and(|e| e.retired) {
                state.healthy = false;
                state.draining = true;
            } else if let Some(was) = v.edges.get(i) {
                *state = was.clone();
            }
        }
        next
    });
    if let Some(d) = &cx.dispatch {
        d.mesh.sync(new);
    }
    let pools = cx.exec.reconcile(new.clone());
    tracing::info!(edge = %cx.name(), added = ?pools.added, changed = ?pools.changed, removed = ?pools.removed, "executor pools reconciled");
    for f in changed.iter().chain(removed) {
        let _ = cx.cache.purge_function(f);
    }
}
