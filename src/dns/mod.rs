//! The DNS front door: an authoritative server for the topology's zone that
//! answers `<function>.<zone>` with the best edges for the asking client.
//!
//! `dns` owns the wire format of its answers, the UDP and TCP listeners of
//! one edge, the per-worker decision cache and response rate limiting. It
//! reads the edge's `LiveView` (lock-free, per query) and the geo database,
//! and asks `placement::rank_client` for the decision; it never waits on
//! the network and knows nothing of QUIC, dispatch or executors.
//!
//! Every transport goes through one function, [`Responder::respond`]
//! (query bytes + client address → response bytes), which the fuzz target
//! and the benches call too:
//! - UDP: our own receive loop, one OS thread per `SO_REUSEPORT` socket
//!   (`[dns].udp_sockets`, 0 = one per core, at least two), batching with
//!   `recvmmsg`/`sendmmsg`, a decision cache per thread. hickory-server's
//!   UDP loop spawns a task per datagram and decodes every query into
//!   allocated `Message` parts; at 200k+ queries per second per core that
//!   is the whole budget, so the hot path is ours (see `wire`).
//! - TCP: hickory-server's `Server` (connection handling, framing, idle
//!   timeouts) with a `RequestHandler` that calls the same function.
//!
//! Names: `<zone>` SOA and NS (NS names `ns-<edge>.<zone>`, with their
//! A/AAAA), `<function>.<zone>` A, AAAA, HTTPS (RFC 9460) and TXT (the
//! explanation of the decision, for operators: `dig TXT resize.fn.test`).

mod answer;
mod decide;
mod rrl;
mod udp;
pub(crate) mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hickory_server::proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio_util::sync::CancellationToken;

use crate::config::{EdgeId, Topology};
use crate::geo::GeoDb;
use crate::mesh::LiveView;

pub(crate) use rrl::{RateLimiter, Verdict};

/// Idle TCP connections are closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How the query arrived: decides the largest response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// 512 bytes, or the client's EDNS payload size (at most 1400, RFC 9715).
    Udp,
    /// 65535 bytes.
    Tcp,
}

/// Query types counted separately; everything else is "other".
const QTYPES: [(u16, &str); 6] = [
    (wire::TYPE_A, "A"),
    (wire::TYPE_AAAA, "AAAA"),
    (wire::TYPE_HTTPS, "HTTPS"),
    (wire::TYPE_TXT, "TXT"),
    (wire::TYPE_SOA, "SOA"),
    (wire::TYPE_NS, "NS"),
];
/// Response codes counted separately; everything else is "other".
const RCODES: [(u16, &str); 6] = [
    (wire::RCODE_NOERROR, "NOERROR"),
    (wire::RCODE_FORMERR, "FORMERR"),
    (wire::RCODE_NXDOMAIN, "NXDOMAIN"),
    (wire::RCODE_NOTIMP, "NOTIMP"),
    (wire::RCODE_REFUSED, "REFUSED"),
    (wire::RCODE_BADVERS, "BADVERS"),
];
const OTHER: usize = 6;

/// Counters of one edge's DNS front door. The query path only bumps
/// relaxed atomics; `export` copies them into the metrics recorder when
/// the admin listener is scraped, so metrics cost nothing per query.
#[derive(Debug)]
pub struct DnsStats {
    fallback: AtomicU64,
    /// `[qtype][rcode]`, with index `OTHER` for the rest.
    queries: [[AtomicU64; OTHER + 1]; OTHER + 1],
    /// `[function * edges + edge]`: answers whose best edge was `edge`.
    answers: Vec<AtomicU64>,
    edges: usize,
}

impl DnsStats {
    /// Counters for a topology with `functions` functions and `edges` edges.
    pub(crate) fn new(functions: usize, edges: usize) -> Self {
        Self {
            fallback: AtomicU64::new(0),
            queries: Default::default(),
            answers: (0..functions * edges).map(|_| AtomicU64::new(0)).collect(),
            edges,
        }
    }

    /// The counters for `new` after a reload from `old` (same edges):
    /// every count carried over, answers re-indexed by function name, so
    /// the exported counters stay monotonic.
    pub(crate) fn carried(&self, old: &Topology, new: &Topology) -> Self {
        let next = Self::new(new.functions.len(), new.edges.len());
        next.fallback.store(self.fallback(), Ordering::Relaxed);
        for (row, old_row) in next.queries.iter().zip(&self.queries) {
            for (c, o) in row.iter().zip(old_row) {
                c.store(o.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        for (fo, f) in old.functions.iter().enumerate() {
            let Some(fi) = new.functions.iter().position(|n| n.name == f.name) else {
                continue;
            };
            for e in 0..self.edges.min(next.edges) {
                if let (Some(o), Some(n)) = (
                    self.answers.get(fo * self.edges + e),
                    next.answers.get(fi * next.edges + e),
                ) {
                    n.store(o.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
        next
    }

    /// Answers served although every candidate was unhealthy or draining.
    pub fn fallback(&self) -> u64 {
        self.fallback.load(Ordering::Relaxed)
    }

    fn count_fallback(&self) {
        self.fallback.fetch_add(1, Ordering::Relaxed);
    }

    fn count_query(&self, qtype: u16, rcode: u16) {
        let t = QTYPES.iter().position(|q| q.0 == qtype).unwrap_or(OTHER);
        let r = RCODES.iter().position(|c| c.0 == rcode).unwrap_or(OTHER);
        self.queries[t][r].fetch_add(1, Ordering::Relaxed);
    }

    fn count_answer(&self, function: usize, edge: EdgeId) {
        if let Some(c) = self.answers.get(function * self.edges + edge) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Copies the counters into the metrics recorder as edge `edge`.
    pub(crate) fn export(&self, edge: &str, topology: &Topology) {
        for (t, row) in self.queries.iter().enumerate() {
            for (r, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let qtype = QTYPES.get(t).map_or("other", |q| q.1);
                    let rcode = RCODES.get(r).map_or("other", |c| c.1);
                    crate::metrics::dns_queries_total(edge, qtype, rcode, n);
                }
            }
        }
        for (i, n) in self.answers.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            let (f, e) = (i / self.edges.max(1), i % self.edges.max(1));
            if let (true, Some(f), Some(e)) =
                (n > 0, topology.functions.get(f), topology.edges.get(e))
            {
                crate::metrics::dns_answers_total(edge, &f.name, &e.name, n);
            }
        }
        crate::metrics::dns_fallback_total(edge, self.fallback());
    }
}

/// What every worker of one edge's DNS front door shares. Built once from
/// the topology; only the view and the geo database change under it.
#[derive(Debug)]
pub struct DnsState {
    edge: EdgeId,
    topology: Arc<Topology>,
    geo: Arc<GeoDb>,
    view: Arc<LiveView>,
    /// The zone in wire format, lower case.
    zone_wire: Vec<u8>,
    zone_labels: usize,
    /// Lower-case function label → index in `topology.functions`.
    functions: HashMap<Vec<u8>, usize>,
    /// `ns-<edge>` label → edge.
    ns_names: HashMap<Vec<u8>, EdgeId>,
    /// `ns-<edge>` per edge.
    ns_labels: Vec<Vec<u8>>,
    v4: Vec<Vec<Ipv4Addr>>,
    v6: Vec<Vec<Ipv6Addr>>,
    /// Shared with the state a reload replaces, so buckets carry over.
    rate_limit: Option<Arc<RateLimiter>>,
    pub stats: Arc<DnsStats>,
    epoch: tokio::time::Instant,
}

impl DnsState {
    /// The state of `h`'s edge, for its current topology.
    pub(crate) fn for_edge(h: &DnsHandle) -> Self {
        let topology = h.view.load().topology.clone();
        let mut s = Self::new(h.edge, topology, h.geo.clone(), h.view.clone());
        s.stats = h.stats.load_full();
        s
    }

    /// The state of `h`'s edge after a topology reload: tables rebuilt
    /// from the new topology, the rate limiter (and its buckets) kept.
    pub(crate) fn reloaded(h: &DnsHandle, old: &DnsState) -> Self {
        let mut s = Self::for_edge(h);
        if s.rate_limit.is_some() {
            s.rate_limit = old.rate_limit.clone();
        }
        s
    }

    /// The state of `edge` of `topology`, reading `view` and `geo`.
    pub fn new(
        edge: EdgeId,
        topology: Arc<Topology>,
        geo: Arc<GeoDb>,
        view: Arc<LiveView>,
    ) -> Self {
        let t = &topology;
        let zone_wire = wire::name_from_text(&t.zone);
        let functions = t
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.to_ascii_lowercase().into_bytes(), i))
            .collect();
        let ns_labels: Vec<Vec<u8>> = t
            .edges
            .iter()
            .map(|e| format!("ns-{}", e.name.to_ascii_lowercase()).into_bytes())
            .collect();
        let ns_names = ns_labels
            .iter()
            .enumerate()
            .filter(|(i, _)| t.edges.get(*i).is_some_and(|e| !e.retired))
            .map(|(i, l)| (l.clone(), i))
            .collect();
        let v4 = t
            .edges
            .iter()
            .map(|e| {
                e.addresses
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect()
            })
            .collect();
        let v6 = t
            .edges
            .iter()
            .map(|e| {
                e.addresses
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V6(v6) => Some(*v6),
                        IpAddr::V4(_) => None,
                    })
                    .collect()
            })
            .collect();
        let stats = Arc::new(DnsStats::new(t.functions.len(), t.edges.len()));
        Self {
            edge,
            zone_labels: t.zone.trim_end_matches('.').split('.').count(),
            rate_limit: t.dns.rate_limit.map(|r| Arc::new(RateLimiter::new(r))),
            topology,
            geo,
            view,
            zone_wire,
            functions,
            ns_names,
            ns_labels,
            v4,
            v6,
            stats,
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The rate limiter's verdict for a UDP response to `client` now.
    pub(crate) fn rate_limit(&self, client: IpAddr) -> Verdict {
        match &self.rate_limit {
            None => Verdict::Send,
            Some(l) => l.check(client, self.epoch.elapsed().as_millis() as u64),
        }
    }

    /// Responses withheld by rate limiting so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limit.as_ref().map_or(0, |r| r.limited())
    }
}

/// The current state of one edge's DNS front door; a topology reload
/// stores a rebuilt one, which every worker picks up at its next query.
pub(crate) type DnsCell = Arc<ArcSwap<DnsState>>;

/// One worker's answering machine: the shared state and a private
/// decision cache.
pub struct Responder {
    cell: DnsCell,
    state: Arc<DnsState>,
    cache: decide::DecisionCache,
}

impl Responder {
    pub fn new(state: Arc<DnsState>) -> Self {
        Self::with_cell(Arc::new(ArcSwap::new(state)))
    }

    /// A responder following `cell` (reloads included).
    pub(crate) fn with_cell(cell: DnsCell) -> Self {
        Self {
            state: cell.load_full(),
            cell,
            cache: decide::DecisionCache::default(),
        }
    }

    pub(crate) fn state(&self) -> &Arc<DnsState> {
        &self.state
    }

    /// Picks up a reloaded state (and drops decisions made under the old
    /// one). One atomic load when nothing changed.
    pub(crate) fn refresh(&mut self) {
        let current = self.cell.load();
        if !Arc::ptr_eq(&current, &self.state) {
            self.state = Arc::clone(&current);
            self.cache = decide::DecisionCache::default();
        }
    }

    /// Writes the response to the query `packet` from `client` into `out`.
    /// Returns false when nothing is to be sent (shorter than a header, or
    /// a response). Never panics on any input.
    pub fn respond(
        &mut self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.refresh();
        answer::respond(
            &self.state,
            Some(&mut self.cache),
            packet,
            client,
            transport,
            out,
        )
    }
}

/// The response to one query, without a decision cache.
pub fn answer(
    state: &DnsState,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    answer::respond(state, None, packet, client, transport, &mut out).then_some(out)
}

/// The bound, not yet serving, sockets of one edge's DNS front door.
pub struct BoundDns {
    state: Arc<DnsState>,
    cell: DnsCell,
    udp: Vec<std::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
    addr: SocketAddr,
    doq: Option<Doq>,
}

/// DNS over QUIC (RFC 9250) on `doq_listen`: hickory-server's DoQ listener
/// (quinn, ALPN `doq`) with the front door's certificate, answering
/// through the same handler as TCP.
struct Doq {
    socket: tokio::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
}

impl BoundDns {
    /// The address UDP and TCP listen on (with the real port when the
    /// topology asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DNS-over-QUIC address, when `doq_listen` is configured.
    pub fn doq_addr(&self) -> Option<SocketAddr> {
        self.doq.as_ref().map(|d| d.addr)
    }

    pub fn state(&self) -> &Arc<DnsState> {
        &self.state
    }

    /// Serves until `token` is cancelled, then stops the workers.
    pub async fn serve(self, token: CancellationToken) {
        let name = self.state.topology.edges[self.state.edge].name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (i, sock) in self.udp.into_iter().enumerate() {
            let responder = Responder::with_cell(self.cell.clone());
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dns-udp-{name}-{i}"))
                .spawn(move || udp::worker(sock, responder, &stop));
            match spawned {
                Ok(h) => workers.push(h),
                Err(error) => {
                    tracing::error!(%error, edge = %name, "cannot start a DNS UDP worker")
                }
            }
        }
        let mut server = Server::new(TcpHandler {
            cell: self.cell.clone(),
        });
        server.register_listener(self.tcp, TCP_IDLE, 64);
        if let Some(doq) = self.doq {
            let addr = doq.addr;
            match server.register_quic_listener_and_tls_config(doq.socket, TCP_IDLE, doq.tls) {
                Ok(()) => tracing::info!(edge = %name, %addr, "dns over quic serving"),
                Err(error) => tracing::error!(%error, edge = %name, %addr, "dns over quic failed"),
            }
        }
        tracing::info!(edge = %name, addr = %self.addr, udp_workers = workers.len(), "dns serving");
        token.cancelled().await;
        stop.store(true, Ordering::Relaxed);
        if let Err(error) = server.shutdown_gracefully().await {
            tracing::warn!(%error, edge = %name, "dns tcp shutdown");
        }
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        tracing::info!(edge = %name, "dns stopped");
    }
}

/// What the DNS front door of one edge takes from the edge: the live view
/// (with its topology), the geo database, the counters, and the cell a
/// reload stores rebuilt state into. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DnsHandle {
    pub(crate) edge: EdgeId,
    pub(crate) geo: Arc<GeoDb>,
    pub(crate) view: Arc<LiveView>,
    /// Counters (exported at scrape time; replaced, with the query counters
    /// carried over, when a reload changes the functions or edges).
    pub(crate) stats: Arc<ArcSwap<DnsStats>>,
    /// The serving state, once bound.
    cell: Arc<std::sync::OnceLock<DnsCell>>,
}

impl DnsHandle {
    pub(crate) fn new(edge: EdgeId, geo: Arc<GeoDb>, view: Arc<LiveView>) -> Self {
        let t = view.load().topology.clone();
        Self {
            edge,
            geo,
            view,
            stats: Arc::new(ArcSwap::from_pointee(DnsStats::new(
                t.functions.len(),
                t.edges.len(),
            ))),
            cell: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Applies a topology the live view already holds: counters carried
    /// from `old` to `new`, answer tables rebuilt (rate limiter kept).
    pub(crate) fn reload(&self, old: &Topology, new: &Topology) {
        self.stats
            .store(Arc::new(self.stats.load().carried(old, new)));
        if let Some(cell) = self.cell.get() {
            cell.store(Arc::new(DnsState::reloaded(self, &cell.load())));
        }
    }
}

/// Binds the edge's `dns_listen` for UDP and TCP. Port 0 picks a free port
/// shared by both. Errors name the address.
pub(crate) async fn bind(h: &DnsHandle) -> anyhow::Result<BoundDns> {
    let bound = bind_state(Arc::new(DnsState::for_edge(h))).await?;
    // The cell a topology reload stores into (first bind wins).
    let _ = h.cell.set(bound.cell.clone());
    Ok(bound)
}

/// Binds the `dns_listen` of `state`'s edge (see [`bind`]).
pub async fn bind_state(state: Arc<DnsState>) -> anyhow::Result<BoundDns> {
    let edge = state
        .topology
        .edges
        .get(state.edge)
        .context("edge index out of range")?;
    let want = edge.dns_listen;
    let doq = match edge.doq_listen {
        Some(addr) => Some(bind_doq(&state.topology, addr).await?),
        None => None,
    };
    let sockets = match state.topology.dns.udp_sockets {
        0 => default_udp_sockets(),
        n => n,
    };
    let mut last_error = None;
    // With port 0 the TCP port is free but the same UDP port may not be:
    // try a few ports.
    for _ in 0..if want.port() == 0 { 8 } else { 1 } {
        let tcp = tokio::net::TcpListener::bind(want)
            .await
            .with_context(|| format!("binding DNS TCP on {want}"))?;
        let addr = tcp
            .local_addr()
            .with_context(|| format!("DNS TCP socket on {want}"))?;
        match udp::bind(addr, sockets) {
            Ok(udp) => {
                return Ok(BoundDns {
                    cell: Arc::new(ArcSwap::new(state.clone())),
                    state,
                    udp,
                    tcp,
                    addr,
                    doq,
                })
            }
            Err(e) => last_error = Some((addr, e)),
        }
    }
    let (addr, e) = last_error.context("no UDP bind attempted")?;
    Err(anyhow::Error::new(e).context(format!("binding DNS UDP on {addr}")))
}

/// Binds `doq_listen` and makes its TLS configuration (the front door's
/// certificate, ALPN `doq`).
async fn bind_doq(topology: &Topology, want: SocketAddr) -> anyhow::Result<Doq> {
    let files = crate::tls::cert_files(topology)
        .with_context(|| format!("certificate for DNS over QUIC on {want}"))?;
    let tls = crate::tls::doq_server_config(&files)
        .with_context(|| format!("TLS for DNS over QUIC on {want}"))?;
    let socket = tokio::net::UdpSocket::bind(want)
        .await
        .with_context(|| format!("binding DNS over QUIC on {want}"))?;
    let addr = socket
        .local_addr()
        .with_context(|| format!("DNS over QUIC socket on {want}"))?;
    Ok(Doq {
        socket,
        tls: Arc::new(tls),
        addr,
    })
}

/// `[dns].udp_sockets = 0`: one socket (and thread) per core this process
/// may run on, and at least two. Two threads on one core outrun one: while
/// one waits in the kernel the other answers, and each empties its socket
/// and sleeps often, so the scheduler runs it as soon as a query arrives
/// (one always-busy thread is time-sliced like a batch job when the core
/// is shared; measured with dnsperf: ~75k vs ~135k queries per second on
/// one shared core, see docs/performance.md). gdnsd defaults to two UDP
/// threads as well.
fn default_udp_sockets() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// hickory-server's TCP front end, answering through `answer::respond`.
struct TcpHandler {
    cell: DnsCell,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let silent = ResponseInfo::from(Header {
            metadata: Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query),
            counts: HeaderCounts::default(),
        });
        let Some(bytes) = answer(
            &self.cell.load(),
            request.as_slice(),
            request.src().ip(),
            Transport::Tcp,
        ) else {
            return silent;
        };
        // Our bytes back into hickory's types: hickory frames and writes
        // them (and checks they decode).
        let msg = match Message::from_vec(&bytes) {
            Ok(m) => m,
            Err(error) => {
                tracing::error!(%error, "dns response does not decode");
                return silent;
            }
        };
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = msg.edns.as_ref() {
            builder.edns(edns);
        }
        let response = builder.build(
            msg.metadata,
            msg.answers.iter(),
            msg.authorities.iter(),
            std::iter::empty(),
            msg.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "dns tcp send failed");
                silent
            }
        }
    }
}
