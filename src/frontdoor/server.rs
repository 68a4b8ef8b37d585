//! The endpoint loop, one task per connection, one task per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h3::server::{RequestResolver, RequestStream};
use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::limits::{self, Admit, Route};
use super::problem::{Problem, ProblemKind};
use super::{FrontdoorError, EDGE_HEADER};
use crate::cache::{CacheKey, CacheStatus};
use crate::config::QuicSettings;
use crate::exec::Invocation;
use crate::tls::{self, CertFiles};

use super::cached::CachedReply;
use crate::node::EdgeContext;

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
pub(super) type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// How long the endpoint may take to tell peers it closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bounds on how long a draining connection lingers after its last response.
const LINGER_MIN: Duration = Duration::from_millis(25);
const LINGER_MAX: Duration = Duration::from_secs(1);

/// State shared by every connection of one front door.
pub(crate) struct Shared {
    pub(super) cx: EdgeContext,
    pub(super) edge_name: String,
    /// `edge_name` as the value of the `fnroute-edge` header.
    edge_value: HeaderValue,
    pub(super) settings: QuicSettings,
    /// In-flight invocations on this edge (`edge.capacity` permits).
    admission: Semaphore,
    /// Connections accepted and not yet closed.
    open: AtomicUsize,
    /// Handshakes in progress.
    handshaking: AtomicUsize,
    /// Cancelled when the front door shuts down.
    token: CancellationToken,
}

pub(crate) fn bind(
    cx: EdgeContext,
    addr: SocketAddr,
    cert: &CertFiles,
) -> Result<(quinn::Endpoint, Arc<Shared>), FrontdoorError> {
    let topo = cx.topology();
    let settings = topo.quic.clone();
    let edge = topo
        .edges
        .get(cx.edge)
        .ok_or_else(|| FrontdoorError::Config(format!("no edge {}", cx.edge)))?;
    let edge_name = edge.name.clone();
    let capacity = edge.capacity as usize;

    let cluster = cx.dispatch.as_ref().map(|d| &d.mesh.cluster);
    let tls = tls::server_config_with(cert, settings.enable_0rtt, cluster)?;
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| FrontdoorError::Tls(tls::TlsError::new(e.to_string())))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(settings.max_streams_per_connection.into())
        // h3 needs three (control, QPACK encoder and decoder); leave room for grease.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(settings.idle_timeout)
                .map_err(|e| FrontdoorError::Config(format!("quic.idle_timeout_ms: {e}")))?,
        ));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    server.transport_config(Arc::new(transport));
    server.max_incoming((settings.max_connections as usize).clamp(16, 1 << 16));

    let socket = udp_socket(addr, settings.udp_buffer_bytes)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| FrontdoorError::Config("no async runtime for the quic endpoint".into()))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| FrontdoorError::Bind { addr, source })?;
    let edge_value = HeaderValue::from_str(&edge_name)
        .map_err(|e| FrontdoorError::Config(format!("edge name {edge_name:?}: {e}")))?;
    let shared = Arc::new(Shared {
        cx,
        edge_name,
        edge_value,
        settings,
        admission: Semaphore::new(capacity),
        open: AtomicUsize::new(0),
        handshaking: AtomicUsize::new(0),
        token: CancellationToken::new(),
    });
    Ok((endpoint, shared))
}

/// A UDP socket with explicit receive and send buffers (the quinn default
/// of the kernel's 208 KiB drops datagrams under load).
fn udp_socket(addr: SocketAddr, buffer: u32) -> Result<std::net::UdpSocket, FrontdoorError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| FrontdoorError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if let Err(e) = socket.set_recv_buffer_size(buffer as usize) {
        tracing::warn!(%addr, buffer, error = %e, "cannot set SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer as usize) {
        tracing::warn!(%addr, buffer, error = %e, "cannot set SO_SNDBUF");
    }
    socket.bind(&addr.into()).map_err(err)?;
    tracing::debug!(
        %addr,
        requested = buffer,
        rcvbuf = socket.recv_buffer_size().unwrap_or(0),
        sndbuf = socket.send_buffer_size().unwrap_or(0),
        "quic socket buffers (the kernel caps them at net.core.[rw]mem_max)"
    );
    Ok(socket.into())
}

pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    token: CancellationToken,
) {
    let addr = endpoint.local_addr().ok();
    let span = tracing::info_span!("frontdoor", edge = %shared.edge_name, addr = ?addr);
    async {
        tracing::info!("http/3 front door listening");
        let conns = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                biased;
                _ = token.cancelled() => break,
                i = endpoint.accept() => i,
            };
            let Some(incoming) = incoming else { break };
            let admit = limits::admit_connection(
                shared.open.load(Ordering::Relaxed),
                shared.handshaking.load(Ordering::Relaxed),
                shared.settings.max_connections as usize,
                incoming.remote_address_validated(),
                incoming.may_retry(),
            );
            match admit {
                Admit::Refuse => {
                    tracing::debug!(remote = %incoming.remote_address(), "connection refused: max_connections");
                    incoming.refuse();
                }
                Admit::Retry => {
                    tracing::trace!(remote = %incoming.remote_address(), "stateless retry");
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                }
                Admit::Accept => {
                    let guard = Counted::new(shared.clone(), Which::Open);
                    conns.spawn(connection(shared.clone(), incoming, guard));
                }
            }
        }
        // Stop taking connections, then drain: every connection sends
        // GOAWAY and waits for its in-flight requests.
        tracing::info!(open = shared.open.load(Ordering::Relaxed), "front door draining");
        endpoint.set_server_config(None);
        shared.token.cancel();
        conns.close();
        conns.wait().await;
        endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        tracing::info!("front door closed");
    }
    .instrument(span)
    .await
}

/// Decrements a counter of `Shared` when dropped.
struct Counted {
    shared: Arc<Shared>,
    which: Which,
}

#[derive(Clone, Copy)]
enum Which {
    Open,
    Handshaking,
}

impl Counted {
    fn new(shared: Arc<Shared>, which: Which) -> Self {
        shared.counter(which).fetch_add(1, Ordering::Relaxed);
        Self { shared, which }
    }
}

impl Shared {
    fn counter(&self, which: Which) -> &AtomicUsize {
        match which {
            Which::Open => &self.open,
            Which::Handshaking => &self.handshaking,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared
            .counter(self.which)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, _open: Counted) {
    let remote = incoming.remote_address();
    let span = tracing::debug_span!("conn", %remote);
    async move {
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed");
                return;
            }
        };
        let counted = Counted::new(shared.clone(), Which::Handshaking);
        // `confirmed` is None when the connection is only used after the
        // handshake; with 0-RTT it turns true once the handshake completes.
        // With 0-RTT the connection is used before the handshake completes;
        // `handshake` then holds the future that resolves when it does.
        let (conn, mut handshake) = if shared.settings.enable_0rtt {
            match connecting.into_0rtt() {
                Ok((conn, done)) => (conn, Some((Box::pin(done), counted))),
                Err(connecting) => match connecting.await {
                    Ok(c) => (c, None),
                    Err(e) => {
                        tracing::debug!(error = %e, "handshake failed");
                        return;
                    }
                },
            }
        } else {
            let c = connecting.await;
            drop(counted);
            match c {
                Ok(c) => (c, None),
                Err(e) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
            }
        };
        let mut h3c: H3Conn = match h3::server::builder()
            .max_field_section_size(u64::from(shared.settings.max_header_bytes))
            .build(h3_quinn::Connection::new(conn.clone()))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "h3 setup failed");
                return;
            }
        };
        let requests = TaskTracker::new();
        // Made once: re-made per request it would re-register with the token.
        let cancelled = shared.token.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Biased: a handshake completion already processed by quinn is
            // seen before a request that arrived after it.
            let next = tokio::select! {
                biased;
                _ = &mut cancelled => Next::Cancelled,
                ok = async {
                    match handshake.as_mut() {
                        Some((done, _)) => done.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if handshake.is_some() => Next::Handshake(ok),
                r = h3c.accept() => Next::Request(r),
            };
            match next {
                Next::Cancelled => {
                    // GOAWAY: requests already accepted still complete.
                    if let Err(e) = h3c.shutdown(0).await {
                        tracing::debug!(error = %e, "goaway failed");
                    }
                    break;
                }
                // quinn reports whether 0-RTT was accepted (false also for a
                // plain handshake) or false when the connection died first;
                // the latter leaves a close reason, set before the report.
                Next::Handshake(zero_rtt) if zero_rtt || conn.close_reason().is_none() => {
                    handshake = None
                }
                Next::Handshake(_) => {
                    // The connection failed before its handshake completed:
                    // whatever is still queued may be replayed early data.
                    tracing::debug!("connection lost before the handshake completed");
                    break;
                }
                Next::Request(Ok(Some(resolver))) => {
                    // 0-RTT soundness: a replayed ClientHello with its early
                    // data can never complete the handshake (the attacker
                    // lacks the resumption secret for the client Finished).
                    // So a request accepted after this connection's handshake
                    // completed is not a replay; one accepted before may be,
                    // and only idempotent functions may run from it (others
                    // get 425 and the client retries after the handshake).
                    let early = handshake.is_some();
                    // An authenticated cluster peer (its certificate chained
                    // to the cluster CA in the handshake); known only once
                    // the handshake completed.
                    let peer = if early {
                        None
                    } else {
                        shared
                            .cx
                            .dispatch
                            .as_ref()
                            .and_then(|d| d.mesh.cluster.peer_edge(&conn))
                    };
                    // Boxed: the request future is over 2 KiB, and spawning
                    // copies a future several times on its way into the task.
                    requests.spawn(Box::pin(request(shared.clone(), resolver, early, peer)));
                }
                Next::Request(Ok(None)) => break,
                Next::Request(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended");
                    break;
                }
            }
        }
        requests.close();
        requests.wait().await;
        if shared.token.is_cancelled() {
            // Closing discards stream data not yet acknowledged, and quinn
            // does not say when a finished stream is acknowledged: give the
            // last responses a few round trips (or until the client closes).
            let linger = (conn.rtt() * 4).clamp(LINGER_MIN, LINGER_MAX);
            let _ = tokio::time::timeout(linger, conn.closed()).await;
        }
        // Dropping the h3 connection closes it with H3_NO_ERROR.
        drop(h3c);
    }
    .instrument(span)
    .await
}

/// What woke the connection loop.
enum Next<T> {
    Cancelled,
    /// The handshake of a 0-RTT-capable connection completed, or the
    /// connection was lost before it did (quinn's `ZeroRttAccepted`).
    Handshake(bool),
    Request(T),
}

/// Handles one request stream; never panics on its input.
///
/// Never calls `stop_sending` on the stream: h3-quinn 0.0.10 unwraps the
/// inner stream there, which is absent while a read is in flight (a panic
/// seen after a partly read body). Dropping the stream after the response
/// stops the peer's sending instead (quinn sends STOP_SENDING on drop).
async fn request(
    shared: Arc<Shared>,
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    early: bool,
    peer: Option<String>,
) {
    let started = Instant::now();
    let read_deadline = started + shared.settings.body_read_timeout;
    let (req, mut stream) =
        match tokio::time::timeout_at(read_deadline, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "bad request headers");
                return;
            }
            Err(_) => {
                tracing::debug!("request headers not received in time");
                return;
            }
        };
    // Internal headers count only from authenticated peers.
    let id = peer
        .as_ref()
        .and_then(|_| req.headers().get(crate::dispatch::REQUEST_ID_HEADER))
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_string)
        .unwrap_or_else(request_id);
    // Names are case-insensitive; most already arrive in lower case.
    let name: std::borrow::Cow<'_, str> = match limits::route(req.method(), req.uri().path()) {
        Route::Invoke(n) if n.bytes().any(|b| b.is_ascii_uppercase()) => {
            n.to_ascii_lowercase().into()
        }
        Route::Invoke(n) => n.into(),
        _ => "".into(),
    };
    let span = tracing::debug_span!("invoke", r#fn = %name, req = %id, edge = %shared.edge_name, peer = ?peer);
    async {
        let route = limits::route(req.method(), req.uri().path());
        let result = if req.uri().path() == "/health" {
            health(&shared, &req, &mut stream, peer.as_deref())
        } else if matches!(route, Route::Event(_) | Route::Stack) {
            // Boxed, like `handle` below: the request task's future stays
            // small, so spawning it does not copy kilobytes of state.
            Box::pin(super::routed::handle(&shared, &req, &mut stream, &id, early, started, read_deadline, peer.as_deref())).await
        } else {
            Box::pin(handle(&shared, &req, &mut stream, &name, &id, early, started, read_deadline, peer.as_deref())).await
        };
        if let Route::Invoke(_) = route {
            // Only names from the topology become label values.
            let topo = shared.cx.topology();
            let known = topo.function(&name).map_or("other", |f| f.name.as_str());
            record_invocation(&shared.edge_name, known, &result, started);
        }
        let sent = match result {
            Ok(resp) => send(&mut stream, resp.0, resp.1).await,
            Err(problem) => {
                tracing::debug!(status = problem.status().as_u16(), detail = %problem.detail, "problem");
                let (head, body) = problem_response(&shared.edge_name, &id, &problem);
                send(&mut stream, head, body).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "response not delivered");
        }
    }
    .instrument(span)
    .await
}

pub(super) type Reply = (Response<()>, Bytes);

#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Arc<Shared>,
    req: &http::Request<()>,
    stream: &mut Stream,
    name: &str,
    id: &str,
    early: bool,
    started: Instant,
    read_deadline: Instant,
    peer: Option<&str>,
) -> Result<Reply, Problem> {
    let edge = &shared.edge_name;
    match limits::route(req.method(), req.uri().path()) {
        Route::Invoke(_) => {}
        Route::Event(_) | Route::Stack => {
            return Err(Problem::new(
                ProblemKind::Internal,
                "routed request reached the invoke handler",
            ));
        }
        Route::MethodNotAllowed => {
            return Err(Problem::new(
                ProblemKind::MethodNotAllowed,
                format!("method {} is not allowed; use POST", req.method()),
            ));
        }
        Route::NotFound => {
            return Err(Problem::new(
                ProblemKind::NotFound,
                format!(
                    "no resource at {:?}; invoke functions with POST /fn/{{name}}, events with POST /event/{{type}} or POST /route",
                    req.uri().path()
                ),
            ));
        }
    }
    let local = shared.cx.exec.function(name);
    let dispatch = shared.cx.dispatch.as_deref();
    // With a mesh, functions hosted elsewhere are forwarded.
    let topo = shared.cx.topology();
    let local = local.as_deref();
    let function = local.or_else(|| dispatch.and(topo.function(name)));
    let Some(function) = function else {
        let detail = if shared.cx.topology().function(name).is_some() {
            format!("function {name:?} is not hosted on edge {edge:?}")
        } else {
            format!("unknown function {name:?}")
        };
        return Err(Problem::new(ProblemKind::UnknownFunction, detail).function(name));
    };
    if early && !function.idempotent {
        return Err(Problem::new(
            ProblemKind::TooEarly,
            format!("function {name:?} is not idempotent; retry after the handshake"),
        )
        .function(name));
    }
    let timeout = limits::invocation_timeout(
        function.timeout,
        req.headers()
            .get(limits::TIMEOUT_HEADER)
            .map(|v| v.as_bytes()),
    )
    .map_err(|d| Problem::new(ProblemKind::BadRequest, d).function(name))?;
    // A forwarding peer passes the time its caller has left.
    let internal = |h: &str| {
        peer.and_then(|_| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let timeout = match internal(crate::dispatch::DEADLINE_HEADER) {
        Some(ms) => timeout.min(Duration::from_millis(ms.max(1))),
        None => timeout,
    };
    let hops = internal(crate::dispatch::HOP_HEADER)
        .map(|h| u32::try_from(h).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let max = shared.settings.max_payload_bytes;
    let too_large = |n: u64| {
        Problem::new(
            ProblemKind::PayloadTooLarge,
            format!("payload of {n} bytes is over the limit of {max} bytes"),
        )
        .function(name)
    };
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len = len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                Problem::new(ProblemKind::BadRequest, "bad content-length").function(name)
            })?;
        if len > max {
            return Err(too_large(len));
        }
    }
    let payload = read_body(stream, max, read_deadline)
        .await
        .map_err(|e| body_problem(e, &shared.settings).function(name))?;

    let deadline = Instant::now() + timeout;
    let trace = peer
        .and_then(|_| req.headers().get(crate::dispatch::TRACE_HEADER))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let exclude: Vec<usize> = peer
        .and_then(|p| shared.cx.topology().edge_id(p))
        .into_iter()
        .collect();
    let forward = |payload: Bytes| crate::dispatch::Forward {
        function: function.name.clone(),
        payload,
        deadline,
        hops,
        request_id: id.to_string(),
        trace: trace.clone(),
        exclude: exclude.clone(),
        route: None,
    };
    // Local when hosted here and the pool has room (or the hop limit
    // leaves no choice); otherwise the best peer.
    let run_local = match (local, dispatch) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(f), Some(d)) => {
            hops >= d.max_hops()
                || !crate::dispatch::Dispatcher::saturated(
                    &shared.cx.exec,
                    f,
                    shared.cx.topology().executors.queue,
                )
        }
    };
    if !run_local {
        if let Some(d) = dispatch {
            return forwarded(d, function, forward(payload), id).await;
        }
    }
    let inv = Invocation {
        function: function.name.clone(),
        payload: payload.clone(),
        deadline,
        request_id: id.to_string(),
        trace: trace.clone(),
    };
    // The cache is consulted before admission and execution: a hit never
    // touches an executor. Only functions with a cache policy get a key.
    let key = function.cache.as_ref().map(|_| {
        CacheKey::for_request(function, &inv.payload, |h| {
            req.headers().get(h).and_then(|v| v.to_str().ok())
        })
    });
    let run = {
        let shared = shared.clone();
        let kind = function.executor.kind;
        move || execute(shared, inv, kind, timeout, started)
    };
    let (result, status, age) = match key {
        Some(key) => {
            let f = shared
                .cx
                .cache
                .fetch(key, function.cache.as_ref(), run)
                .await;
            let age = f.age_secs();
            (f.result, Some(f.status), age)
        }
        None => (run().await, None, 0),
    };
    let reply = match (result, dispatch) {
        // Spill-over: the pool filled up meanwhile; try a peer.
        (Err(p), Some(d)) if p.kind == ProblemKind::FunctionSaturated && hops < d.max_hops() => {
            return forwarded(d, function, forward(payload), id).await;
        }
        (r, _) => r?,
    };
    let timing = match status {
        Some(s @ (CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Coalesced)) => {
            HeaderValue::try_from(cache_timing(s, started.elapsed()))
                .map_err(|e| Problem::new(ProblemKind::Internal, format!("server-timing: {e}")))?
        }
        _ => reply.timing.clone(),
    };
    tracing::debug!(
        bytes = reply.body.len(),
        ?timing,
        cache = status.map(CacheStatus::as_str),
        "invoked"
    );
    // Built in place rather than with `Response::builder()`, whose `Result`
    // chaining moves the whole head once per header: this is the path of
    // every local answer and cache hit.
    let mut head = Response::new(());
    let h = head.headers_mut();
    h.reserve(8);
    h.insert(super::EDGE, shared.edge_value.clone());
    if let Some(v) = id_value(id) {
        h.insert(super::REQUEST_ID, v);
    }
    h.insert(header::CONTENT_TYPE, reply.content_type.clone());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
    h.insert(super::SERVER_TIMING, timing);
    if let Some(s) = status.filter(|s| *s != CacheStatus::Bypass) {
        h.insert(super::CACHE, HeaderValue::from_static(s.as_str()));
        if s != CacheStatus::Miss {
            // `age: 0` is a single byte on the wire (QPACK static table).
            let age = match age {
                0 => HeaderValue::from_static("0"),
                n => HeaderValue::from(n),
            };
            h.insert(header::AGE, age);
        }
    }
    Ok((head, reply.body))
}

/// `server-timing` of an answer from the cache, e.g.
/// `cache;desc=hit, total;dur=0.012` (milliseconds, three decimals, from
/// integer microseconds: float formatting was visible on the hit path).
fn cache_timing(s: CacheStatus, elapsed: Duration) -> String {
    use std::fmt::Write;
    let us = elapsed.as_micros();
    let mut t = String::with_capacity(48);
    let _ = write!(
        t,
        "cache;desc={}, total;dur={}.{:03}",
        s.as_str(),
        us / 1000,
        us % 1000
    );
    t
}

/// Admission and execution of one invocation (what a cache miss runs).
pub(super) async fn execute(
    shared: Arc<Shared>,
    inv: Invocation,
    kind: crate::config::ExecutorKind,
    timeout: Duration,
    started: Instant,
) -> Result<CachedReply, Problem> {
    let name = inv.function.clone();
    let edge = &shared.edge_name;
    // Edge admission: a slot among `capacity`, after a short bounded wait.
    if shared.token.is_cancelled() {
        return Err(Problem::new(
            ProblemKind::ShuttingDown,
            format!("edge {edge:?} is shutting down"),
        )
        .function(&name)
        .retry_after(Duration::from_secs(1)));
    }
    let admitted = Instant::now();
    let _permit =
        match tokio::time::timeout(limits::ADMISSION_WAIT, shared.admission.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Problem::new(
                    ProblemKind::EdgeSaturated,
                    format!("edge {edge:?} is at its capacity of in-flight invocations"),
                )
                .function(&name)
                .retry_after(Duration::from_secs(1)))
            }
        };
    let admission_wait = admitted.elapsed();
    let deadline = inv.deadline;
    // The executor enforces the deadline; the slack only guards against
    // an executor that does not.
    let ran = Instant::now();
    let out = match tokio::time::timeout_at(
        deadline + Duration::from_millis(500),
        shared.cx.exec.invoke(inv),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(crate::exec::ExecError::Timeout(timeout)),
    }
    .map_err(|e| Problem::from_exec(&name, &e))?;
    if let Some(d) = shared.cx.dispatch.as_deref() {
        d.mesh.record_latency(&name, ran.elapsed());
    }
    let content_type = out
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or_else(|| HeaderValue::from_static(limits::sniff_content_type(&out.body)));
    let timing = limits::server_timing(
        admission_wait + out.timing.queued,
        out.timing.run,
        started.elapsed(),
        out.timing.cold_start,
    );
    // Digits, letters and `;=,.` only: always a valid header value.
    let timing = HeaderValue::try_from(timing)
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("server-timing: {e}")))?;
    let directive = CachedReply::directive_of(kind, &out.body, out.cache_control.as_deref());
    Ok(CachedReply {
        body: out.body,
        content_type,
        timing,
        directive,
    })
}

/// Forwards to a peer and relays its answer (status, body, content type,
/// retry-after and the `fnroute-edge` of the edge that ran it).
async fn forwarded(
    d: &crate::dispatch::Dispatcher,
    function: &crate::config::Function,
    fwd: crate::dispatch::Forward,
    id: &str,
) -> Result<Reply, Problem> {
    use crate::dispatch::DispatchError;
    let name = function.name.as_str();
    let reply = d.forward(function, fwd).await.map_err(|e| {
        let kind = match &e {
            DispatchError::NoEdge(_) => ProblemKind::NoEdge,
            DispatchError::HopLimit(_) => ProblemKind::HopLimit,
            DispatchError::Deadline => ProblemKind::DeadlineExceeded,
            DispatchError::Failed { .. } => ProblemKind::ForwardFailed,
        };
        let p = Problem::new(kind, e.to_string()).function(name);
        if kind == ProblemKind::NoEdge {
            p.retry_after(Duration::from_secs(1))
        } else {
            p
        }
    })?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let ran_on = reply.header(EDGE_HEADER).unwrap_or("?").to_string();
    let mut b = base_response(status, &ran_on, id).header(header::CONTENT_LENGTH, reply.body.len());
    for h in [header::CONTENT_TYPE, header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = reply.headers.get(&h) {
            b = b.header(h, v.clone());
        }
    }
    for h in ["server-timing", crate::route::PATH_HEADER] {
        if let Some(v) = reply.headers.get(h) {
            b = b.header(h, v.clone());
        }
    }
    let head = b
        .body(())
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    Ok((head, reply.body))
}

/// Counts one `POST /fn/{name}` by outcome ("ok", "error" for a relayed
/// error, or the problem's slug) and path (run here or forwarded).
fn record_invocation(
    edge: &str,
    function: &str,
    result: &Result<Reply, Problem>,
    started: Instant,
) {
    use crate::metrics::Path;
    let (outcome, path) = match result {
        Ok((head, _)) => {
            let outcome = if head.status().is_success() {
                "ok"
            } else {
                "error"
            };
            let ran_on = head
                .headers()
                .get(EDGE_HEADER)
                .and_then(|v| v.to_str().ok());
            let path = if ran_on.is_some_and(|e| e != edge) {
                Path::Forwarded
            } else {
                Path::Local
            };
            (outcome, path)
        }
        Err(p) => (p.kind.slug(), Path::Local),
    };
    crate::metrics::invocation(edge, function, outcome, path, started.elapsed());
}

/// `GET /health`: this edge's load and state, for authenticated cluster
/// peers only.
fn health(
    shared: &Shared,
    req: &http::Request<()>,
    stream: &mut Stream,
    peer: Option<&str>,
) -> Result<Reply, Problem> {
    // No stop_sending: see `request` (h3-quinn); dropping the stream does it.
    let _ = stream;
    let Some(d) = shared.cx.dispatch.as_deref().filter(|_| peer.is_some()) else {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            "/health is only for cluster peers with a certificate from the cluster CA",
        ));
    };
    if req.method() != http::Method::GET {
        return Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("method {} is not allowed; use GET", req.method()),
        ));
    }
    let report = d.mesh.report(shared.cx.exec.as_ref(), &shared.cx.view);
    let body = Bytes::from(
        serde_json::to_vec(&report)
            .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?,
    );
    let head = base_response(StatusCode::OK, &shared.edge_name, "")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(())
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    Ok((head, body))
}

/// The problem for a body that could not be read.
pub(super) fn body_problem(e: BodyError, settings: &QuicSettings) -> Problem {
    match e {
        BodyError::TooLarge(n) => Problem::new(
            ProblemKind::PayloadTooLarge,
            format!(
                "payload of {n} bytes is over the limit of {} bytes",
                settings.max_payload_bytes
            ),
        ),
        BodyError::Timeout => Problem::new(
            ProblemKind::BodyTimeout,
            format!(
                "request body not received within {} ms",
                settings.body_read_timeout.as_millis()
            ),
        ),
        BodyError::Stream(e) => Problem::new(ProblemKind::BadRequest, format!("reading body: {e}")),
    }
}

pub(super) enum BodyError {
    TooLarge(u64),
    Timeout,
    Stream(h3::error::StreamError),
}

/// Reads the request body, never holding more than `max` bytes.
pub(super) async fn read_body(
    stream: &mut Stream,
    max: u64,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    // The first chunk is kept as it came (for quinn's `Bytes` no copy): most
    // bodies arrive in one. Later chunks are gathered into one buffer.
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Stream(e)),
            Ok(Ok(None)) if body.is_empty() => return Ok(first.unwrap_or_default()),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(c))) => c,
        };
        let held = first.as_ref().map_or(0, Bytes::len) + body.len();
        let n = held as u64 + chunk.remaining() as u64;
        if n > max {
            return Err(BodyError::TooLarge(n));
        }
        let mut chunk = chunk;
        if held == 0 {
            first = Some(chunk.copy_to_bytes(chunk.remaining()));
            continue;
        }
        if let Some(f) = first.take() {
            body.reserve(n as usize);
            body.extend_from_slice(&f);
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            let len = c.len();
            body.extend_from_slice(c);
            chunk.advance(len);
        }
    }
}

pub(super) fn base_response(status: StatusCode, edge: &str, id: &str) -> http::response::Builder {
    let mut b = Response::builder().status(status);
    if let Ok(v) = HeaderValue::from_str(edge) {
        b = b.header(super::EDGE, v);
    }
    if let Some(v) = id_value(id) {
        b = b.header(super::REQUEST_ID, v);
    }
    b
}

/// The `fnroute-request-id` value (none for an id that is not a valid one).
fn id_value(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(id).ok()
}

fn problem_response(edge: &str, id: &str, p: &Problem) -> Reply {
    let body = Bytes::from(p.to_json(edge));
    let mut b = base_response(p.status(), edge, id)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(s) = p.retry_after_secs() {
        b = b.header(header::RETRY_AFTER, s);
    }
    if p.kind == ProblemKind::MethodNotAllowed {
        b = b.header(header::ALLOW, "POST");
    }
    if let Some(v) = p.route_path().and_then(|v| HeaderValue::from_str(v).ok()) {
        b = b.header(crate::route::PATH_HEADER, v);
    }
    let head = b.body(()).unwrap_or_else(|_| {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    (head, body)
}

async fn send(
    stream: &mut Stream,
    head: Response<()>,
    body: Bytes,
) -> Result<(), h3::error::StreamError> {
    stream.send_response(head).await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await
}

/// 16 hex digits, unique enough to find one request in the logs.
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    (0..16)
        .rev()
        .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
        .collect()
}
