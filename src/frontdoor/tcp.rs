//! The HTTPS-over-TCP front door: HTTP/1.1 and HTTP/2 chosen by ALPN
//! (hyper 1 on tokio-rustls), the second adapter of the request pipeline.
//! The same `Call`, stages, problems, cache and forwarding as HTTP/3; only
//! the transport differs. Edge-to-edge traffic stays on the QUIC mesh, so
//! nothing arriving here is a cluster peer.
//!
//! Limits (`[tcp]`, plus `[quic]`'s request limits): connections beyond
//! `max_connections` are closed on accept; a TLS handshake and each request
//! head must arrive within `header_read_timeout`; HTTP/1.1 heads are bounded
//! in bytes (`quic.max_header_bytes`) and fields (`max_headers`); HTTP/2
//! streams per connection by `max_concurrent_streams`, header lists by
//! `quic.max_header_bytes`, and streams reset by the client before they are
//! served (CVE-2023-44487, "rapid reset") by h2's pending-reset bound, after
//! which the connection is closed with GOAWAY.
//!
//! Request smuggling: hyper answers differing `content-length` values and
//! a `transfer-encoding` whose last coding is not `chunked` (or any on
//! HTTP/1.0) with 400 and closes the connection. A request with both
//! `content-length` and `transfer-encoding: chunked` is read as chunked
//! and the connection is closed after its response (RFC 9112 §6.3 allows
//! this or a 400; hyper drops the length before the request reaches us, so
//! we cannot choose the 400): nothing after that body is read as a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::FrontdoorError;
use crate::config::TcpSettings;
use crate::pipeline::body::BodyStream;
use crate::pipeline::{self, BodyError, Call, Pipeline, ReplyBody, RequestBody, Target};
use crate::tls::{self, CertFiles};

/// How long in-flight requests may finish once the door drains.
const DRAIN: Duration = Duration::from_secs(5);
/// Streams an HTTP/2 client may reset before they are served, at once,
/// before the connection is closed (h2's default is 20).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server itself may have to reset on one connection (a
/// client provoking errors) before the connection is closed.
const MAX_LOCAL_RESETS: usize = 256;

/// A bound, not yet serving, HTTPS-over-TCP front door of one edge.
pub(crate) struct TcpDoor {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

/// What every connection of the door uses.
struct Shared {
    p: Arc<Pipeline>,
    acceptor: TlsAcceptor,
    settings: TcpSettings,
    /// `Alt-Svc` of every response: where this edge speaks HTTP/3.
    alt_svc: Option<HeaderValue>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
}

impl TcpDoor {
    /// Binds `addr` with the front door's certificate; `quic_port` is
    /// advertised in `Alt-Svc` when the edge serves HTTP/3.
    pub(crate) fn bind(
        p: Arc<Pipeline>,
        addr: SocketAddr,
        cert: &CertFiles,
        quic_port: Option<u16>,
    ) -> Result<Self, FrontdoorError> {
        let topology = p.cx.topology();
        let settings = topology.tcp.clone();
        let tls = tls::web_server_config(cert)?;
        let listener = listen(addr)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| FrontdoorError::Bind { addr, source })?;
        let alt_svc = quic_port
            .and_then(|port| HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400")).ok());
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                connections: Arc::new(Semaphore::new(settings.max_connections as usize)),
                acceptor: TlsAcceptor::from(Arc::new(tls)),
                settings,
                alt_svc,
                p,
            }),
        })
    }

    /// The bound address (the real port when `tcp_listen` has port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `token` is cancelled, then closes idle connections,
    /// lets requests in flight finish (bounded) and returns.
    pub(crate) async fn serve(self, token: CancellationToken) {
        let shared = self.shared;
        let span = tracing::info_span!("tcp_frontdoor", edge = %shared.p.edge_name, addr = %self.local_addr);
        async move {
            tracing::info!("https (http/1.1, http/2) front door listening");
            let conns = TaskTracker::new();
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = token.cancelled() => break,
                    a = self.listener.accept() => a,
                };
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                    tracing::debug!(%remote, "connection refused: tcp.max_connections");
                    crate::metrics::tcp_refused(&shared.p.edge_name);
                    continue;
                };
                let shared = shared.clone();
                let token = token.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    connection(shared, stream, remote, token).await;
                });
            }
            drop(self.listener);
            conns.close();
            conns.wait().await;
            tracing::info!("https front door closed");
        }
        .instrument(span)
        .await
    }
}

/// A listening TCP socket on `addr` (`SO_REUSEADDR`, so that a restart
/// does not wait out TIME_WAIT).
fn listen(addr: SocketAddr) -> Result<TcpListener, FrontdoorError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| FrontdoorError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// One connection: the TLS handshake (within the header read timeout),
/// then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    token: CancellationToken,
) {
    let span = tracing::debug_span!("tcp_conn", %remote);
    async move {
        let Some(tls) = handshake(&shared, stream).await else {
            return;
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let svc = {
            let shared = shared.clone();
            hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(request(&shared, req, remote, h2).await) }
            })
        };
        let io = TokioIo::new(tls);
        let s = &shared.settings;
        let header_bytes = shared.p.settings.max_header_bytes;
        let result = if h2 {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(s.max_concurrent_streams)
                .max_header_list_size(header_bytes)
                .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
                .max_local_error_reset_streams(MAX_LOCAL_RESETS)
                .keep_alive_interval(s.idle_timeout / 2)
                .keep_alive_timeout(s.header_read_timeout);
            let conn = b.serve_connection(io, svc);
            drive(conn, &token, |c| c.graceful_shutdown()).await
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(s.header_read_timeout)
                // hyper's minimum buffer is 8 KiB.
                .max_buf_size((header_bytes as usize).max(8192))
                .max_headers(s.max_headers as usize)
                .keep_alive(true);
            let conn = b.serve_connection(io, svc);
            drive(conn, &token, |c| c.graceful_shutdown()).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended");
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake, within the header read timeout.
async fn handshake(
    shared: &Shared,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let accept = shared.acceptor.accept(stream);
    match tokio::time::timeout(shared.settings.header_read_timeout, accept).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("tls handshake not completed in time");
            None
        }
    }
}

/// Runs a connection until it ends; when the door drains, asks it to
/// finish gracefully (GOAWAY, or `connection: close` after the current
/// request) and gives it [`DRAIN`] to do so.
async fn drive<C>(
    conn: C,
    token: &CancellationToken,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            shutdown(conn.as_mut());
            match tokio::time::timeout(DRAIN, conn).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    }
}

/// One request: parsed once into a [`Call`], answered by the pipeline.
async fn request(
    shared: &Shared,
    req: Request<Incoming>,
    remote: SocketAddr,
    h2: bool,
) -> Response<ReplyBody> {
    let started = Instant::now();
    let p = &shared.p;
    let (parts, body) = req.into_parts();
    let call = Call::parse(
        Request::from_parts(parts, ()),
        None,
        false,
        Some(remote),
        started,
        &p.settings,
        p.cx.topology(),
    );
    let name = match &call.target {
        Target::Invoke(n) | Target::Url(n) => n.as_str(),
        _ => "",
    };
    let proto = if h2 { "h2" } else { "http/1.1" };
    let span = tracing::debug_span!("invoke", r#fn = %name, req = %call.id, edge = %p.edge_name, %remote, proto);
    async {
        let mut body = TcpBody(body);
        let result = Box::pin(pipeline::serve(p, &call, &mut body)).await;
        pipeline::record_invocation(p, &call, &result);
        // Answered before the body was read (unknown function, 405, …):
        // take the rest of a small body first, so that HTTP/2 need not
        // reset a stream the client is still sending (clients such as
        // curl 7.88 report that reset as an error).
        body.drain(DRAIN_BODY_BYTES, Instant::now() + DRAIN_BODY_WAIT)
            .await;
        let (head, body) = match result {
            Ok(r) => r,
            Err(problem) => {
                tracing::debug!(status = problem.status().as_u16(), detail = %problem.detail, "problem");
                pipeline::problem_response(&p.edge_name, &call.id, &problem)
            }
        };
        let (head, body) = match body {
            // HTTP/1.0 has no chunked encoding: a stream's end would be the
            // connection's close, which an abort looks like too. Such a
            // client gets the whole body (up to the buffered limit) or a
            // problem, never a cut body that looks complete.
            ReplyBody::Stream(s) if call.version == http::Version::HTTP_10 => {
                whole_for_http10(p, &call, head, s).await
            }
            b => (head, b),
        };
        let mut resp = head.map(|()| body);
        if let Some(v) = &shared.alt_svc {
            resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
        }
        resp
    }
    .instrument(span)
    .await
}

/// A stream collected for an HTTP/1.0 client.
async fn whole_for_http10(
    p: &Pipeline,
    call: &Call,
    mut head: Response<()>,
    mut s: BodyStream,
) -> (Response<()>, ReplyBody) {
    match s.collect(crate::exec::MAX_RESULT_BYTES).await {
        Ok(b) => {
            head.headers_mut()
                .insert(http::header::CONTENT_LENGTH, b.len().into());
            (head, ReplyBody::full(b))
        }
        Err(e) => {
            let problem = pipeline::Problem::new(
                pipeline::ProblemKind::FunctionResponse,
                format!("the streamed response could not be buffered for HTTP/1.0: {e}; use HTTP/1.1 or later"),
            );
            pipeline::problem_response(&p.edge_name, &call.id, &problem)
        }
    }
}

/// What is left of a request body answered without reading it is read
/// and dropped up to this many bytes …
const DRAIN_BODY_BYTES: u64 = 64 * 1024;
/// … for at most this long.
const DRAIN_BODY_WAIT: Duration = Duration::from_millis(500);

/// A request body from hyper.
struct TcpBody(Incoming);

impl TcpBody {
    /// Reads and drops the rest of the body if it is small and arrives
    /// soon; otherwise leaves it (hyper then resets the stream or closes
    /// the connection, as it must).
    async fn drain(&mut self, max: u64, deadline: Instant) {
        use hyper::body::Body;
        if self.0.is_end_stream() || self.0.size_hint().lower() > max {
            return;
        }
        let mut seen = 0u64;
        while seen <= max {
            match tokio::time::timeout_at(deadline, self.0.frame()).await {
                Ok(Some(Ok(f))) => {
                    seen += f.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => return,
            }
        }
    }
}

impl RequestBody for TcpBody {
    async fn read(&mut self, max: u64, deadline: Instant) -> Result<Bytes, BodyError> {
        // A declared length over the limit is refused before any byte is read.
        if let Some(n) = hyper::body::Body::size_hint(&self.0).upper() {
            if n > max {
                return Err(BodyError::TooLarge(n));
            }
        }
        let mut first: Option<Bytes> = None;
        let mut body = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.0.frame()).await {
                Err(_) => return Err(BodyError::Timeout),
                Ok(None) if body.is_empty() => return Ok(first.unwrap_or_default()),
                Ok(None) => return Ok(body.freeze()),
                Ok(Some(Err(e))) => return Err(BodyError::Stream(Box::new(e))),
                Ok(Some(Ok(f))) => f,
            };
            // Trailers carry nothing the pipeline reads.
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let held = first.as_ref().map_or(0, Bytes::len) + body.len();
            let n = held as u64 + chunk.len() as u64;
            if n > max {
                return Err(BodyError::TooLarge(n));
            }
            if held == 0 {
                first = Some(chunk);
                continue;
            }
            if let Some(f) = first.take() {
                body.reserve(n as usize);
                body.extend_from_slice(&f);
            }
            body.extend_from_slice(&chunk);
        }
    }
}
