//! The front doors of the client API, two adapters of one request
//! pipeline: HTTP/3 on each edge's `quic_listen` (`server`: quinn + h3,
//! rustls on ring, ALPN h3) and HTTPS over TCP on `tcp_listen` (`tcp`:
//! hyper, HTTP/1.1 and HTTP/2 by ALPN).
//!
//! `frontdoor` owns the listeners, TLS material and connection limits;
//! everything after the transport (admission, limits, problems, cache,
//! execution) is `pipeline`'s. It never imports `dns` and knows nothing of
//! processes.
//!
//! Invariants: every invocation response carries `fnroute-edge`; no
//! request body is buffered beyond `quic.max_payload_bytes`; in-flight
//! invocations are bounded by the edge's `capacity` (semaphore, bounded
//! wait, then 503); network input never panics.

mod server;
mod tcp;

pub(crate) use tcp::TcpDoor;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::pipeline::{EdgeContext, Pipeline};

use crate::tls;

/// Why the front door could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrontdoorError {
    /// Certificate or key missing, unreadable or invalid.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The UDP socket could not be created or bound.
    #[error("binding quic listener {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A configured value quinn does not accept.
    #[error("quic configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// The bound, not yet serving, front doors of one edge: HTTP/3 on
/// `quic_listen` and, when configured, HTTPS over TCP on `tcp_listen`,
/// both adapters of one request pipeline (one admission semaphore, one
/// cache, one set of limits).
pub(crate) struct FrontDoors {
    quic: FrontDoor,
    tcp: Option<TcpDoor>,
}

impl FrontDoors {
    /// Loads or generates the certificate and binds the edge's listeners.
    /// Must run inside a tokio runtime.
    pub(crate) fn bind(cx: EdgeContext) -> Result<Self, FrontdoorError> {
        let topology = cx.topology();
        let edge = topology
            .edges
            .get(cx.edge)
            .ok_or_else(|| FrontdoorError::Config(format!("no edge {}", cx.edge)))?;
        let (quic_addr, tcp_addr) = (edge.quic_listen, edge.tcp_listen);
        let cert = tls::cert_files(&topology)?;
        let pipeline = Arc::new(Pipeline::new(cx)?);
        let quic = FrontDoor::bind(pipeline.clone(), quic_addr, &cert)?;
        let tcp = match tcp_addr {
            Some(addr) => Some(TcpDoor::bind(
                pipeline,
                addr,
                &cert,
                Some(quic.local_addr.port()),
            )?),
            None => None,
        };
        Ok(Self { quic, tcp })
    }

    /// The bound HTTP/3 address (the real port when `quic_listen` has port 0).
    pub(crate) fn quic_addr(&self) -> SocketAddr {
        self.quic.local_addr
    }

    /// The bound HTTPS-over-TCP address, when the edge has one.
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(TcpDoor::local_addr)
    }

    /// Serves until `token` is cancelled, then drains both doors.
    pub(crate) async fn serve(self, token: CancellationToken) {
        let quic = self.quic.serve(token.clone());
        match self.tcp {
            Some(tcp) => {
                tokio::join!(quic, tcp.serve(token));
            }
            None => quic.await,
        }
    }
}

/// A bound HTTP/3 front door.
struct FrontDoor {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<server::Shared>,
}

impl FrontDoor {
    /// Creates the UDP socket with the configured buffer sizes and binds
    /// the QUIC endpoint on `addr`.
    fn bind(
        pipeline: Arc<Pipeline>,
        addr: SocketAddr,
        cert: &tls::CertFiles,
    ) -> Result<Self, FrontdoorError> {
        let (endpoint, shared) = server::bind(pipeline, addr, cert)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| FrontdoorError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            local_addr,
            shared,
        })
    }

    /// Serves until `token` is cancelled, then sends GOAWAY on every
    /// connection, lets in-flight requests finish (each is bounded by its
    /// function's deadline) and closes the endpoint.
    async fn serve(self, token: CancellationToken) {
        server::serve(self.endpoint, self.shared, token).await
    }
}
