//! The QUIC / HTTP/3 front door: the client API `POST /fn/{name}` on each
//! edge's `quic_listen` (quinn + h3, rustls on ring, ALPN h3).
//!
//! `frontdoor` owns the QUIC endpoint, TLS material, connection and
//! request limits, edge-level admission and the mapping of executor errors
//! to RFC 9457 problem+json. It never imports `dns`; it hands invocations
//! to `exec` and knows nothing of processes.
//!
//! Invariants: every invocation response carries `fnroute-edge`; no
//! request body is buffered beyond `quic.max_payload_bytes`; in-flight
//! invocations are bounded by the edge's `capacity` (semaphore, bounded
//! wait, then 503); network input never panics.

mod server;

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

/// A bound, not yet serving, HTTP/3 front door of one edge.
pub(crate) struct FrontDoor {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<server::Shared>,
}

impl FrontDoor {
    /// Binds the edge's `quic_listen` (see `bind_to`).
    pub(crate) fn bind(cx: EdgeContext) -> Result<Self, FrontdoorError> {
        let addr = cx
            .topology()
            .edges
            .get(cx.edge)
            .map(|e| e.quic_listen)
            .ok_or_else(|| FrontdoorError::Config(format!("no edge {}", cx.edge)))?;
        Self::bind_to(cx, addr)
    }

    /// Loads or generates the certificate, creates the UDP socket with the
    /// configured buffer sizes and binds the QUIC endpoint on `addr`. Must
    /// run inside a tokio runtime.
    pub(crate) fn bind_to(cx: EdgeContext, addr: SocketAddr) -> Result<Self, FrontdoorError> {
        let cert = tls::cert_files(&cx.topology())?;
        let pipeline = Arc::new(Pipeline::new(cx)?);
        let (endpoint, shared) = server::bind(pipeline, addr, &cert)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| FrontdoorError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            local_addr,
            shared,
        })
    }

    /// The bound address (the real port when `quic_listen` has port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `token` is cancelled, then sends GOAWAY on every
    /// connection, lets in-flight requests finish (each is bounded by its
    /// function's deadline) and closes the endpoint.
    pub(crate) async fn serve(self, token: CancellationToken) {
        server::serve(self.endpoint, self.shared, token).await
    }
}
