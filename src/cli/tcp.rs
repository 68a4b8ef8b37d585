//! `fnroute invoke --tcp`: the client API over HTTPS on TCP (the edge's
//! `tcp_listen`), HTTP/2 or HTTP/1.1 as ALPN chooses, with hyper 1's
//! client connection API on tokio-rustls. The same request as over HTTP/3
//! (path, headers, body, SNI and authority: the function's DNS name) and
//! the same [`Reply`], so the caller prints either alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::mesh::transport::{ClientError, Reply, Request, Trust};

/// TCP connect, TLS handshake and HTTP/2 preface, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the response without `--timeout-ms`: an edge
/// answers within the function's deadline, which is at most 15 minutes.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15 * 60 + 30);
/// Added to `--timeout-ms` for the response wait (queueing, forwarding).
const RESPONSE_MARGIN: Duration = Duration::from_secs(30);
/// HTTP/2 pings while waiting: a dead peer is noticed within these.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Which HTTP versions to offer in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// `h2`, then `http/1.1`.
    Any,
    /// `http/1.1` only (`--http1.1`).
    Http1,
}

/// Why an invoke over TCP failed; [`TcpError::exit_code`] says how to exit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TcpError {
    /// The trust options (the CA file) are unusable.
    #[error("reading {path}: {message}")]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("tls configuration: {0}")]
    Config(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// Nothing reached the server (refused, unreachable, no answer).
    #[error("connecting to {addr} over TCP: {message}\n  fix: is the edge's tcp_listen at {addr}? (--edge HOST:PORT)")]
    Connect { addr: SocketAddr, message: String },
    /// Connected, but no TLS session with a certificate we trust.
    #[error("TLS handshake with {addr} as {server_name} failed: {message}{hint}")]
    Tls {
        addr: SocketAddr,
        server_name: String,
        message: String,
        hint: &'static str,
    },
    /// TLS worked, HTTP did not (not an HTTP server, or it broke off).
    #[error("{addr} did not answer over {protocol}: {message}\n  fix: is this an edge's HTTPS listener (tcp_listen)?")]
    Http {
        addr: SocketAddr,
        protocol: &'static str,
        message: String,
    },
    #[error("bad request: {0}")]
    Request(String),
}

impl TcpError {
    /// sysexits: 64 for unusable options, 69 when the edge could not be
    /// reached or did not answer in HTTP (as over HTTP/3).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Ca { .. } | Self::Config(_) | Self::ServerName(_) | Self::Request(_) => {
                super::EX_USAGE
            }
            Self::Connect { .. } | Self::Tls { .. } | Self::Http { .. } => super::EX_UNAVAILABLE,
        }
    }
}

/// Sends `req` to `addr` over HTTPS on TCP, presenting `server_name` as
/// SNI and as the authority (`:authority`, or `Host` on HTTP/1.1), and
/// reads the whole response. Returns it with the protocol ALPN chose
/// (`h2` or `http/1.1`).
pub(crate) async fn send(
    trust: &Trust,
    offer: Offer,
    addr: SocketAddr,
    server_name: &str,
    req: Request,
    timeout_ms: Option<u64>,
) -> Result<(Reply, &'static str), TcpError> {
    let tls = client_config(trust, offer)?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TcpError::ServerName(server_name.to_string()))?;
    let connect_err = |message: String| TcpError::Connect { addr, message };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls_err = |message: String, hint: &'static str| TcpError::Tls {
        addr,
        server_name: server_name.to_string(),
        message,
        hint,
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            tls_err(
                format!("no handshake within {CONNECT_TIMEOUT:?}"),
                NOT_TLS_HINT,
            )
        })?
        .map_err(|e| {
            let hint = if is_certificate_error(&e) {
                CERT_HINT
            } else {
                NOT_TLS_HINT
            };
            tls_err(e.to_string(), hint)
        })?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let protocol = if h2 { "h2" } else { "http/1.1" };
    let http_err = |message: String| TcpError::Http {
        addr,
        protocol,
        message,
    };
    let head = request_head(&req, server_name, h2)?;
    let body = Full::new(concat(req.chunks));
    let request = head.map(|()| body);
    let wait = timeout_ms
        .map(|ms| Duration::from_millis(ms) + RESPONSE_MARGIN)
        .unwrap_or(RESPONSE_TIMEOUT);
    let exchange = async {
        if h2 {
            send_h2(stream, request).await
        } else {
            send_http1(stream, request).await
        }
    };
    let reply = tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| http_err(format!("no response within {wait:?}")))?
        .map_err(http_err)?;
    Ok((reply, protocol))
}

const NOT_TLS_HINT: &str =
    "\n  fix: is this an edge's HTTPS listener (tcp_listen)? without --tcp, invoke speaks HTTP/3 (quic_listen)";
const CERT_HINT: &str =
    "\n  fix: trust the edge's certificate with --ca FILE (e.g. state/dev-cert.pem), or --insecure for development";

/// Whether the handshake failed on the server's certificate (trust or
/// name) rather than on the transport or the protocol.
fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

/// The request head: absolute URI on HTTP/2 (hyper sends `:scheme` and
/// `:authority` from it), origin form plus `Host` on HTTP/1.1.
fn request_head(req: &Request, authority: &str, h2: bool) -> Result<http::Request<()>, TcpError> {
    let uri = if h2 {
        format!("https://{authority}{}", req.path)
    } else {
        req.path.clone()
    };
    let mut b = http::Request::builder().method(req.method.clone()).uri(uri);
    if h2 {
        b = b.version(http::Version::HTTP_2);
    } else {
        b = b
            .version(http::Version::HTTP_11)
            .header(http::header::HOST, authority);
    }
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if let Some(len) = req.content_length {
        b = b.header(http::header::CONTENT_LENGTH, len);
    }
    b.body(()).map_err(|e| TcpError::Request(e.to_string()))
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match <[Bytes; 1]>::try_from(chunks) {
        Ok([one]) => one,
        Err(chunks) => chunks.concat().into(),
    }
}

type Io = TokioIo<TlsStream<TcpStream>>;

async fn send_h2(
    stream: TlsStream<TcpStream>,
    req: http::Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        b.handshake::<Io, Full<Bytes>>(TokioIo::new(stream)),
    );
    let (mut sender, conn) = handshake
        .await
        .map_err(|_| format!("no HTTP/2 handshake within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| chain(&e))?;
    let driver = tokio::spawn(conn);
    let result = exchange(sender.send_request(req)).await;
    drop(sender);
    finish(driver, result).await
}

async fn send_http1(
    stream: TlsStream<TcpStream>,
    req: http::Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<Io, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| chain(&e))?;
    let driver = tokio::spawn(conn);
    let result = exchange(async {
        sender.ready().await?;
        sender.send_request(req).await
    })
    .await;
    drop(sender);
    finish(driver, result).await
}

/// The response of `send`, read to the end.
async fn exchange(
    send: impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
) -> Result<Reply, hyper::Error> {
    let resp = send.await?;
    let (parts, body) = resp.into_parts();
    // No length: a streamed answer, printed as it arrives.
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        return Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::new(),
            stream: Some(relay(body)),
        });
    }
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        stream: None,
    })
}

/// A response body from hyper as a stream: it ends cleanly only at the
/// body's own end (the last chunk, or HTTP/2's END_STREAM); a connection
/// closed before it or a reset is an abort.
fn relay(mut body: hyper::body::Incoming) -> crate::pipeline::body::BodyStream {
    use crate::pipeline::body::{self, StreamError};
    let (tx, rx) = body::channel();
    tokio::spawn(async move {
        loop {
            match body.frame().await {
                None => return tx.end().await,
                Some(Err(e)) => return tx.abort(StreamError::Upstream(chain(&e))).await,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        if tx.send(data).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

/// Lets the connection close cleanly (GOAWAY, or the end of the stream);
/// on failure, prefers the connection's own error, which says more
/// (a protocol error) than the request's (the connection closed).
async fn finish(
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    result: Result<Reply, hyper::Error>,
) -> Result<Reply, String> {
    // A stream's connection stays up while the stream is read.
    if result.as_ref().is_ok_and(Reply::is_streaming) {
        drop(driver);
        return result.map_err(|e| chain(&e));
    }
    let wait = Duration::from_millis(if result.is_ok() { 500 } else { 100 });
    let conn = tokio::time::timeout(wait, driver).await;
    match result {
        Ok(reply) => Ok(reply),
        Err(e) => match conn {
            Ok(Ok(Err(conn_err))) => Err(chain(&conn_err)),
            _ => Err(chain(&e)),
        },
    }
}

/// An error with its causes: "a: b: c" (hyper's own message is terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cause = c.source();
    }
    s
}

/// The rustls client configuration: the ring provider and trust as the
/// HTTP/3 client builds them (`mesh::transport::Client::new`), TLS 1.3 or
/// 1.2 (the TCP front door accepts both), ALPN for HTTP over TCP.
fn client_config(trust: &Trust, offer: Offer) -> Result<rustls::ClientConfig, TcpError> {
    let alpn = match offer {
        Offer::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Offer::Http1 => vec![b"http/1.1".to_vec()],
    };
    // TLS 1.3 or 1.2: the TCP front door accepts both.
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    crate::mesh::transport::client_tls(trust, &versions, alpn).map_err(|e| match e {
        ClientError::Ca { path, message } => TcpError::Ca { path, message },
        other => TcpError::Config(other.to_string()),
    })
}
