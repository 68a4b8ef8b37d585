//! The endpoint loop, one task per connection, one task per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h3::server::{RequestResolver, RequestStream};
use http::Response;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::FrontdoorError;
use crate::pipeline::limits::{self, Admit};
use crate::pipeline::{self, BodyError, Call, Pipeline, ReplyBody, RequestBody, Target};
use crate::tls::{self, CertFiles};

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
pub(super) type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// How long the endpoint may take to tell peers it closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bounds on how long a draining connection lingers after its last response.
const LINGER_MIN: Duration = Duration::from_millis(25);
const LINGER_MAX: Duration = Duration::from_secs(1);

/// State shared by every connection of one front door.
pub(crate) struct Shared {
    /// The edge's request pipeline (the invocation side of every request).
    pub(super) p: Arc<Pipeline>,
    /// Connections accepted and not yet closed.
    open: AtomicUsize,
    /// Handshakes in progress.
    handshaking: AtomicUsize,
}

pub(crate) fn bind(
    p: Arc<Pipeline>,
    addr: SocketAddr,
    cert: &CertFiles,
) -> Result<(quinn::Endpoint, Arc<Shared>), FrontdoorError> {
    let settings = p.settings.clone();
    let cluster = p.cx.dispatch.as_ref().map(|d| &d.mesh.cluster);
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
    let shared = Arc::new(Shared {
        p,
        open: AtomicUsize::new(0),
        handshaking: AtomicUsize::new(0),
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
    let span = tracing::info_span!("frontdoor", edge = %shared.p.edge_name, addr = ?addr);
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
                shared.p.settings.max_connections as usize,
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
        shared.p.token.cancel();
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

/// A handshake still to complete on a connection already in use (0-RTT):
/// quinn's report of it, and the handshake's place in the count.
type Pending = (std::pin::Pin<Box<quinn::ZeroRttAccepted>>, Counted);

/// Accepts a connection: the handshake completed, or (with 0-RTT) the
/// connection usable at once with its handshake pending. `None` if it failed.
async fn accept(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
) -> Option<(quinn::Connection, Option<Pending>)> {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "connection failed");
            return None;
        }
    };
    let counted = Counted::new(shared.clone(), Which::Handshaking);
    let connecting = if shared.p.settings.enable_0rtt {
        match connecting.into_0rtt() {
            Ok((conn, done)) => return Some((conn, Some((Box::pin(done), counted)))),
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    let c = connecting.await;
    drop(counted);
    match c {
        Ok(c) => Some((c, None)),
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            None
        }
    }
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, _open: Counted) {
    let remote = incoming.remote_address();
    let span = tracing::debug_span!("conn", %remote);
    async move {
        // With 0-RTT the connection is used before the handshake completes;
        // `handshake` then holds the future that resolves when it does.
        let Some((conn, handshake)) = accept(&shared, incoming).await else {
            return;
        };
        let mut h3c: H3Conn = match h3::server::builder()
            .max_field_section_size(u64::from(shared.p.settings.max_header_bytes))
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
        accept_requests(&shared, &conn, &mut h3c, handshake, &requests).await;
        finish(&shared, &conn, requests).await;
        // Dropping the h3 connection closes it with H3_NO_ERROR.
        drop(h3c);
    }
    .instrument(span)
    .await
}

/// Takes the connection's requests until it ends, fails its handshake or
/// the front door drains (then GOAWAY: requests already accepted still
/// complete).
async fn accept_requests(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    h3c: &mut H3Conn,
    mut handshake: Option<Pending>,
    requests: &TaskTracker,
) {
    // Made once: re-made per request it would re-register with the token.
    let cancelled = shared.p.token.cancelled();
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
                if let Err(e) = h3c.shutdown(0).await {
                    tracing::debug!(error = %e, "goaway failed");
                }
                return;
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
                return;
            }
            Next::Request(Ok(Some(resolver))) => {
                let early = handshake.is_some();
                spawn_request(shared, conn, requests, resolver, early);
            }
            Next::Request(Ok(None)) => return,
            Next::Request(Err(e)) => {
                tracing::debug!(error = %e, "connection ended");
                return;
            }
        }
    }
}

/// Starts a task for one request of `conn`.
///
/// 0-RTT soundness: a replayed ClientHello with its early data can never
/// complete the handshake (the attacker lacks the resumption secret for
/// the client Finished). So a request accepted after this connection's
/// handshake completed is not a replay; one accepted before (`early`) may
/// be, and only idempotent functions may run from it (others get 425 and
/// the client retries after the handshake).
fn spawn_request(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    requests: &TaskTracker,
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    early: bool,
) {
    // An authenticated cluster peer (its certificate chained to the
    // cluster CA in the handshake); known only once the handshake completed.
    let peer = if early {
        None
    } else {
        shared
            .p
            .cx
            .dispatch
            .as_ref()
            .and_then(|d| d.mesh.cluster.peer_edge(conn))
    };
    // Boxed: the request future is over 2 KiB, and spawning copies a
    // future several times on its way into the task.
    let remote = conn.remote_address();
    requests.spawn(Box::pin(request(
        shared.clone(),
        conn.clone(),
        resolver,
        early,
        peer,
        remote,
    )));
}

/// Waits for the connection's requests; when the front door is shutting
/// down, lingers a little so that the last responses arrive.
async fn finish(shared: &Shared, conn: &quinn::Connection, requests: TaskTracker) {
    requests.close();
    requests.wait().await;
    if shared.p.token.is_cancelled() {
        // Closing discards stream data not yet acknowledged, and quinn
        // does not say when a finished stream is acknowledged: give the
        // last responses a few round trips (or until the client closes).
        let linger = (conn.rtt() * 4).clamp(LINGER_MIN, LINGER_MAX);
        let _ = tokio::time::timeout(linger, conn.closed()).await;
    }
}

/// What woke the connection loop.
enum Next<T> {
    Cancelled,
    /// The handshake of a 0-RTT-capable connection completed, or the
    /// connection was lost before it did (quinn's `ZeroRttAccepted`).
    Handshake(bool),
    Request(T),
}

/// Handles one request stream: the HTTP/3 adapter of the pipeline. Reads
/// the head, parses it once into a [`Call`], lets the pipeline answer and
/// sends what it answered. Never panics on its input.
///
/// Never calls `stop_sending` on the stream: h3-quinn 0.0.10 unwraps the
/// inner stream there, which is absent while a read is in flight (a panic
/// seen after a partly read body). Dropping the stream after the response
/// stops the peer's sending instead (quinn sends STOP_SENDING on drop).
async fn request(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    early: bool,
    peer: Option<String>,
    remote: SocketAddr,
) {
    let started = Instant::now();
    let read_deadline = started + shared.p.settings.body_read_timeout;
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
    let call = Call::parse(
        req,
        peer,
        early,
        Some(remote),
        started,
        &shared.p.settings,
        shared.p.cx.topology(),
    );
    let name = match &call.target {
        Target::Invoke(n) | Target::Url(n) => n.as_str(),
        _ => "",
    };
    let span = tracing::debug_span!("invoke", r#fn = %name, req = %call.id, edge = %shared.p.edge_name, peer = ?call.peer);
    async {
        // Boxed: the request task's future stays small, so spawning it
        // does not copy kilobytes of state.
        let result = Box::pin(pipeline::serve(&shared.p, &call, &mut stream)).await;
        pipeline::record_invocation(&shared.p, &call, &result);
        let sent = match result {
            Ok(resp) => send(&mut stream, &conn, resp.0, resp.1).await,
            Err(problem) => {
                tracing::debug!(status = problem.status().as_u16(), detail = %problem.detail, "problem");
                let (head, body) = pipeline::problem_response(&shared.p.edge_name, &call.id, &problem);
                send(&mut stream, &conn, head, body).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "response not delivered");
        }
    }
    .instrument(span)
    .await
}

impl RequestBody for Stream {
    async fn read(&mut self, max: u64, deadline: Instant) -> Result<Bytes, BodyError> {
        read_body(self, max, deadline).await
    }
}

/// Reads the request body, never holding more than `max` bytes.
async fn read_body(stream: &mut Stream, max: u64, deadline: Instant) -> Result<Bytes, BodyError> {
    // The first chunk is kept as it came (for quinn's `Bytes` no copy): most
    // bodies arrive in one. Later chunks are gathered into one buffer.
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Stream(Box::new(e))),
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

/// Sends a response. A stream that fails after its head is reset
/// (RESET_STREAM with `H3_INTERNAL_ERROR`), so the client can tell a cut
/// body from a complete one. A client that goes away stops the function
/// (dropping the body does): a closed connection at once, even while the
/// function is quiet; a STOP_SENDING at the next `send_data` (h3 0.0.8
/// has no way to wait for it).
async fn send(
    stream: &mut Stream,
    conn: &quinn::Connection,
    head: Response<()>,
    mut body: ReplyBody,
) -> Result<(), h3::error::StreamError> {
    stream.send_response(head).await?;
    loop {
        let chunk = if body.is_stream() {
            tokio::select! {
                biased;
                c = body.next() => c,
                _ = conn.closed() => {
                    tracing::debug!("client connection closed mid-stream");
                    return Ok(());
                }
            }
        } else {
            body.next().await
        };
        let Some(chunk) = chunk else { break };
        match chunk {
            Ok(b) => stream.send_data(b).await?,
            Err(e) => {
                tracing::debug!(error = %e, "stream aborted; resetting it");
                stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    stream.finish().await
}
