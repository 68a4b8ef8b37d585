//! The HTTP/3 client of the client API, used by `fnroute invoke` and the
//! tests, and a minimal DNS lookup through a fnroute DNS front door.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls: {0}")]
    Tls(#[source] BoxError),
    #[error("reading {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("quic endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
    /// The connection could not be made (nothing reached the server).
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("http/3: {0}")]
    H3(#[source] BoxError),
    #[error("bad request: {0}")]
    Request(String),
    #[error("dns: {0}")]
    Dns(String),
}

/// The error underneath (quinn's, h3's, rustls's): kept for `source()`;
/// each variant's message already includes it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which server certificates to trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates (CA or self-signed leaf) from a PEM file.
    Ca(PathBuf),
    /// No verification of the chain (development only); the handshake
    /// signature is still checked.
    Insecure,
}

/// An HTTP/3 client: one QUIC endpoint, any number of connections.
pub struct Client {
    endpoint: quinn::Endpoint,
}

impl Client {
    /// A client bound to an ephemeral port on `bind` (e.g. 127.0.0.1:0),
    /// with TLS session resumption and early data enabled so `connect_0rtt`
    /// can send 0-RTT requests to a server it has met before.
    pub fn new(trust: &Trust, bind: SocketAddr) -> Result<Self, ClientError> {
        let mut tls = client_tls(trust, &[&rustls::version::TLS13], vec![b"h3".to_vec()])?;
        tls.enable_early_data = true;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Tls(Box::new(e)))?;
        let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Endpoint)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        Ok(Self { endpoint })
    }

    /// A client with a ready-made QUIC client configuration (the mesh uses
    /// this for mutual TLS between edges).
    pub fn with_config(config: quinn::ClientConfig, bind: SocketAddr) -> Result<Self, ClientError> {
        let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Endpoint)?;
        endpoint.set_default_client_config(config);
        Ok(Self { endpoint })
    }

    /// Connects (full handshake) to `addr`, presenting `server_name` as SNI.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, ClientError> {
        let err = |e: BoxError| ClientError::Connect { addr, source: e };
        let conn = self
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| err(Box::new(e)))?
            .await
            .map_err(|e| err(Box::new(e)))?;
        Connection::new(conn, server_name).await
    }

    /// Connects with 0-RTT when this client holds a session ticket from an
    /// earlier connection to the server; the bool says whether the
    /// connection started in 0-RTT. Requests sent before the handshake
    /// completes go out as early data.
    pub async fn connect_0rtt(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(Connection, bool), ClientError> {
        let err = |e: BoxError| ClientError::Connect { addr, source: e };
        let connecting = self
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| err(Box::new(e)))?;
        match connecting.into_0rtt() {
            Ok((conn, _accepted)) => Ok((Connection::new(conn, server_name).await?, true)),
            Err(connecting) => {
                let conn = connecting.await.map_err(|e| err(Box::new(e)))?;
                Ok((Connection::new(conn, server_name).await?, false))
            }
        }
    }

    /// Closes every connection of this client and waits (briefly) until
    /// the peers have been told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// One HTTP/3 connection; cheap to share, requests may run concurrently.
pub struct Connection {
    quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    authority: String,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A request; `Request::invoke` builds the usual `POST /fn/{name}`.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Body, sent as one DATA frame per chunk.
    pub chunks: Vec<Bytes>,
    /// Sets `content-length` (None: none is sent).
    pub content_length: Option<u64>,
    /// Pause between chunks (tests of slow clients).
    pub chunk_delay: Option<Duration>,
}

impl Request {
    pub fn invoke(function: &str, payload: Bytes) -> Self {
        Self {
            method: http::Method::POST,
            path: format!("/fn/{function}"),
            headers: Vec::new(),
            content_length: Some(payload.len() as u64),
            chunks: vec![payload],
            chunk_delay: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A response: whole, or (from [`Connection::send_streaming`]) a head
/// whose body streams.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The whole body (empty when it streams).
    pub body: Bytes,
    /// The body as it arrives, when the peer streams it.
    pub(crate) stream: Option<crate::pipeline::body::BodyStream>,
}

impl Reply {
    /// Whether the body streams (read it with [`Reply::chunk`]).
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// The next chunk of a streamed body as it arrives: `None` once the
    /// sender finished it, `Err` if it was cut (reset) or lost. A whole
    /// body comes as one chunk.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self.stream.as_mut() {
            Some(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
            None => Some(Ok(std::mem::take(&mut self.body)))
                .filter(|r| r.as_ref().is_ok_and(|b| !b.is_empty())),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem+json body, if this is one.
    pub fn problem(&self) -> Option<serde_json::Value> {
        if self.header("content-type") != Some("application/problem+json") {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }
}

impl Connection {
    async fn new(quic: quinn::Connection, server_name: &str) -> Result<Self, ClientError> {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| ClientError::H3(Box::new(e)))?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            quic,
            send,
            authority: server_name.to_string(),
            driver,
        })
    }

    /// The QUIC connection underneath.
    pub fn quic(&self) -> &quinn::Connection {
        &self.quic
    }

    /// `POST /fn/{function}` with `payload`.
    pub async fn invoke(&self, function: &str, payload: Bytes) -> Result<Reply, ClientError> {
        self.send(Request::invoke(function, payload)).await
    }

    /// Sends a request and reads the whole response. If the server stops
    /// reading the body early (it answered already), the response is still
    /// read, as RFC 9114 section 4.1 asks.
    pub async fn send(&self, req: Request) -> Result<Reply, ClientError> {
        self.exchange(req, false).await
    }

    /// Sends a request and returns at the response's head. A response
    /// without `content-length` (a streamed one: every whole answer of an
    /// edge carries one) comes with its body as a stream, relayed through
    /// a bounded channel as it arrives (the relay never holds more than
    /// the channel and QUIC's receive window); any other is read whole.
    /// The stream ends cleanly only if the peer finished it; a reset is
    /// an abort. Dropping the stream stops the peer (STOP_SENDING).
    pub async fn send_streaming(&self, req: Request) -> Result<Reply, ClientError> {
        self.exchange(req, true).await
    }

    async fn exchange(&self, req: Request, streaming: bool) -> Result<Reply, ClientError> {
        let uri = format!("https://{}{}", self.authority, req.path);
        let mut b = http::Request::builder().method(req.method).uri(uri);
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        if let Some(len) = req.content_length {
            b = b.header(http::header::CONTENT_LENGTH, len);
        }
        let head = b
            .body(())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let mut sender = self.send.clone();
        let mut stream = sender
            .send_request(head)
            .await
            .map_err(|e| ClientError::H3(Box::new(e)))?;
        let sent: Result<(), h3::error::StreamError> = async {
            for (i, c) in req.chunks.into_iter().enumerate() {
                if i > 0 {
                    if let Some(d) = req.chunk_delay {
                        tokio::time::sleep(d).await;
                    }
                }
                stream.send_data(c).await?;
            }
            stream.finish().await
        }
        .await;
        let resp = match stream.recv_response().await {
            Ok(r) => r,
            Err(e) => {
                let e: BoxError = match sent {
                    Err(s) => format!("{s}; then {e}").into(),
                    Ok(()) => Box::new(e),
                };
                return Err(ClientError::H3(e));
            }
        };
        if streaming && !resp.headers().contains_key(http::header::CONTENT_LENGTH) {
            return Ok(Reply {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: Bytes::new(),
                stream: Some(relay(stream)),
            });
        }
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream
            .recv_data()
            .await
            .map_err(|e| ClientError::H3(Box::new(e)))?
        {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                let n = c.len();
                body.extend_from_slice(c);
                chunk.advance(n);
            }
        }
        Ok(Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: body.freeze(),
            stream: None,
        })
    }
}

/// Relays a response body from a peer's stream into a [`BodyStream`].
fn relay(
    mut stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> crate::pipeline::body::BodyStream {
    use crate::pipeline::body::{self, StreamError};
    let (tx, rx) = body::channel();
    tokio::spawn(async move {
        loop {
            let r = tokio::select! {
                biased;
                // Dropping the stream sends STOP_SENDING: the peer stops.
                () = tx.closed() => return,
                r = stream.recv_data() => r,
            };
            match r {
                Ok(Some(mut chunk)) => {
                    let b = chunk.copy_to_bytes(chunk.remaining());
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return tx.end().await,
                Err(e) => return tx.abort(StreamError::Upstream(e.to_string())).await,
            }
        }
    });
    rx
}

/// The answer of `resolve`: an address and, from an HTTPS record, a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// A rustls client configuration on the one crypto stack (ring): trust in
/// the CA file, or (`Insecure`) any chain with verified handshake
/// signatures; the given protocol versions and ALPN. Shared by the HTTP/3
/// client here and `fnroute invoke --tcp`.
pub(crate) fn client_tls(
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(Box::new(e)))?;
    let mut tls = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        Trust::Ca(path) => {
            let ca_err = |message: String| ClientError::Ca {
                path: path.clone(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?;
            for c in certs {
                roots
                    .add(c.map_err(|e| ca_err(e.to_string()))?)
                    .map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = alpn;
    Ok(tls)
}

/// Asks the DNS server at `server` (UDP) for `fqdn`'s A record and its
/// HTTPS record (for a port). Fails when there is no A answer.
pub async fn resolve(
    server: SocketAddr,
    fqdn: &str,
    timeout: Duration,
) -> Result<Resolved, ClientError> {
    use hickory_proto::rr::{Name, RData, RecordType};
    let name =
        Name::from_ascii(fqdn).map_err(|e| ClientError::Dns(format!("bad name {fqdn:?}: {e}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| ClientError::Dns(e.to_string()))?;
    let a = query(&sock, server, &name, RecordType::A, timeout).await?;
    let addr = a
        .iter()
        .find_map(|r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .ok_or_else(|| ClientError::Dns(format!("no A record for {fqdn} at {server}")))?;
    // The HTTPS record is optional; a server without it still resolves.
    let port = query(&sock, server, &name, RecordType::HTTPS, timeout)
        .await
        .ok()
        .and_then(|rs| {
            rs.iter().find_map(|r| match r {
                RData::HTTPS(h) => h.svc_params.iter().find_map(|(_, v)| match v {
                    hickory_proto::rr::rdata::svcb::SvcParamValue::Port(p) => Some(*p),
                    _ => None,
                }),
                _ => None,
            })
        });
    Ok(Resolved { addr, port })
}

async fn query(
    sock: &tokio::net::UdpSocket,
    server: SocketAddr,
    name: &hickory_proto::rr::Name,
    rtype: hickory_proto::rr::RecordType,
    timeout: Duration,
) -> Result<Vec<hickory_proto::rr::RData>, ClientError> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let id = rand::random::<u16>();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(name.clone(), rtype));
    let wire = msg.to_vec().map_err(|e| ClientError::Dns(e.to_string()))?;
    sock.send_to(&wire, server)
        .await
        .map_err(|e| ClientError::Dns(format!("sending to {server}: {e}")))?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .map_err(|_| ClientError::Dns(format!("no answer from {server} within {timeout:?}")))?
            .map_err(|e| ClientError::Dns(e.to_string()))?;
        if from != server {
            continue;
        }
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id != id {
            continue;
        }
        return Ok(reply.answers.into_iter().map(|r| r.data).collect());
    }
}

/// `Trust::Insecure`: accepts any chain but verifies handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
