//! The admin listener: one HTTP/1.1 server per served edge, on the edge's
//! `admin_listen` (loopback by default), for operators and their tools.
//!
//! Routes: `GET /metrics` (Prometheus text 0.0.4), `GET /status` (JSON, see
//! `status`), `GET /` (the status page: a world map and a table, refreshing
//! itself), `GET /healthz` (200, or 503 while draining) and the
//! authenticated `POST /reload`.
//!
//! `admin` reads the edge's `EdgeContext` (topology, geo database, view)
//! and the metrics handle; it never changes routing state except through
//! the geo database's own reload. Every request is answered from memory
//! without waiting on peers. Invariants: input never panics the server;
//! connections are bounded (`AdminLimits::max_connections`), headers must
//! arrive within `header_read_timeout`, request bodies are capped and read
//! within `body_timeout`; mutating endpoints answer 403 unless a token is
//! configured and 401 unless it is presented.

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::EdgeId;
use crate::dns::DnsHandle;
use crate::pipeline::EdgeContext;
pub use status::{PoolStats, PoolStatus, Status};

/// Environment variable holding the admin token when the topology has no
/// `admin_token_file`.
pub const TOKEN_ENV: &str = "FNROUTE_ADMIN_TOKEN";

const LAND: &str = include_str!("worldmap.path");
const PAGE: &str = include_str!("page.html");

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("cannot bind the admin listener of edge {edge} on {addr}: {source}")]
    Bind {
        edge: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The token file named by `admin_token_file` could not be read.
    #[error("cannot read admin token file {path}: {source}")]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("admin token file {path} is empty")]
    EmptyToken { path: std::path::PathBuf },
}

/// Limits against slow or greedy clients.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also bounds idle
    /// keep-alive connections).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body.
    pub body_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// A bound, not yet running admin listener.
pub struct AdminServer {
    listener: TcpListener,
    state: Arc<State>,
    limits: AdminLimits,
}

struct State {
    cx: EdgeContext,
    /// The edge's DNS front door (for its counters), if it has one here.
    dns: Option<DnsHandle>,
    started: Instant,
    /// The bearer token of mutating endpoints; `None` disables them.
    token: Option<String>,
    pools: Option<Arc<dyn PoolStats>>,
}

impl AdminServer {
    /// Binds `cx`'s `admin_listen` and reads the admin token (topology
    /// `admin_token_file`, else `FNROUTE_ADMIN_TOKEN`). Installs the
    /// metrics recorder if nobody did yet.
    pub async fn bind(
        cx: EdgeContext,
        dns: Option<DnsHandle>,
        limits: AdminLimits,
        pools: Option<Arc<dyn PoolStats>>,
    ) -> Result<Self, AdminError> {
        crate::metrics::install();
        let token = load_token(&cx)?;
        let addr = cx
            .topology()
            .edges
            .get(cx.edge)
            .map(|e| e.admin_listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind {
                edge: cx.name().to_string(),
                addr,
                source,
            })?;
        if !addr.ip().is_loopback() {
            // Plain HTTP, and /status and /metrics need no token.
            tracing::warn!(edge = cx.name(), %addr, "admin listener is not on loopback: keep it on a management network");
        }
        Ok(Self {
            listener,
            state: Arc::new(State {
                // Live pool numbers come from the edge's executors unless a
                // caller (a test) supplies its own source.
                pools: pools.or_else(|| Some(cx.exec.clone() as Arc<dyn PoolStats>)),
                cx,
                dns,
                started: Instant::now(),
                token,
            }),
            limits,
        })
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `token` is cancelled, then lets open connections finish
    /// their current request.
    pub async fn run(self, token: CancellationToken) {
        let Self {
            listener,
            state,
            limits,
        } = self;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, edge = state.cx.name(), "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin listener full; closing connection");
                drop(stream);
                continue;
            };
            let state = state.clone();
            let token = token.clone();
            conns.spawn(async move {
                let _permit = permit;
                serve_connection(stream, peer, state, limits, token).await;
            });
        }
        conns.close();
        conns.wait().await;
    }
}

/// Upkeep of the metrics recorder (drains histogram samples) every
/// `every`, until `token` is cancelled.
pub(crate) async fn metrics_upkeep(every: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => crate::metrics::upkeep(),
        }
    }
}

/// The status document of `cx` now.
pub(crate) fn status_of(
    cx: &EdgeContext,
    uptime: Duration,
    pools: Option<&dyn PoolStats>,
) -> status::Status {
    let view = cx.view.load();
    // The prober's last round trip to each peer (none without a mesh).
    let topology = cx.topology();
    let rtt: Vec<Option<Duration>> = match &cx.dispatch {
        Some(d) => (0..topology.edges.len())
            .map(|i| {
                if i == cx.edge {
                    None
                } else {
                    d.mesh.with_stats(i, |s| s.last_rtt).flatten()
                }
            })
            .collect(),
        None => Vec::new(),
    };
    status::build(&topology, &view, cx.edge, uptime.as_secs_f64(), pools, &rtt)
}

/// The status page for a status document (self-contained HTML).
pub(crate) fn render_page(s: &status::Status) -> String {
    // `<` only occurs inside JSON strings, where \u003c means the same.
    let json = serde_json::to_string(s)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    PAGE.replace("{{LAND}}", LAND.trim())
        .replace("{{NODE}}", &html_escape(&s.node.name))
        .replace("{{STATUS}}", &json)
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    limits: AdminLimits,
    token: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, limits).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(16 * 1024)
        .max_headers(64);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(error) = res {
                tracing::debug!(%error, %peer, "admin connection ended");
            }
        }
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            // The current request (if any) may finish; bounded.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    limits: AdminLimits,
) -> Response<Full<Bytes>> {
    let span = tracing::debug_span!(
        "admin",
        edge = state.cx.name(),
        method = %req.method(),
        path = req.uri().path()
    );
    async move {
        let path = req.uri().path();
        let method = req.method().clone();
        let res = match (path, &method) {
            ("/metrics", &Method::GET | &Method::HEAD) => metrics_response(state),
            ("/status", &Method::GET | &Method::HEAD) => json_response(
                StatusCode::OK,
                &status_of(&state.cx, state.started.elapsed(), state.pools.as_deref()),
            ),
            ("/", &Method::GET | &Method::HEAD) => {
                let s = status_of(&state.cx, state.started.elapsed(), state.pools.as_deref());
                response(StatusCode::OK, "text/html; charset=utf-8", render_page(&s))
            }
            ("/healthz", &Method::GET | &Method::HEAD) => {
                if draining(&state.cx) {
                    response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
                } else {
                    response(StatusCode::OK, "text/plain", "ok\n")
                }
            }
            ("/reload", &Method::POST) => reload(state, req, limits).await,
            ("/cache", &Method::DELETE) => purge(state, &req, None),
            (p, &Method::DELETE) if p.starts_with("/cache/") => {
                let name = p.trim_start_matches("/cache/").to_string();
                purge(state, &req, Some(&name))
            }
            ("/metrics" | "/status" | "/" | "/healthz", _) => {
                let mut r = problem(StatusCode::METHOD_NOT_ALLOWED, "use GET", None);
                r.headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
                r
            }
            ("/reload", _) => {
                let mut r = problem(StatusCode::METHOD_NOT_ALLOWED, "use POST", None);
                r.headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
                r
            }
            _ => problem(
                StatusCode::NOT_FOUND,
                "no such admin endpoint",
                Some("GET /, /status, /metrics, /healthz; POST /reload; DELETE /cache, /cache/{function}"),
            ),
        };
        tracing::debug!(status = res.status().as_u16(), "admin request");
        if method == Method::HEAD {
            let (parts, _) = res.into_parts();
            return Response::from_parts(parts, Full::new(Bytes::new()));
        }
        res
    }
    .instrument(span)
    .await
}

/// `DELETE /cache` (everything) or `DELETE /cache/{function}`: drops the
/// response cache's entries at once (memory is reclaimed lazily).
fn purge(state: &State, req: &Request<Incoming>, function: Option<&str>) -> Response<Full<Bytes>> {
    if let Err(r) = authorize(state, req) {
        return *r;
    }
    let edge = state.cx.name();
    match function {
        None => {
            state.cx.cache.purge_all();
            tracing::info!(edge, "cache purged");
            json_response(StatusCode::OK, &json!({ "edge": edge, "purged": "all" }))
        }
        Some(name) => match state.cx.topology().function(name) {
            None => problem(
                StatusCode::NOT_FOUND,
                &format!("unknown function {name:?}"),
                Some("DELETE /cache/{function} with a function of the topology, or DELETE /cache"),
            ),
            Some(f) => match state.cx.cache.purge_function(&f.name) {
                Ok(()) => {
                    tracing::info!(edge, function = %f.name, "cache purged");
                    json_response(StatusCode::OK, &json!({ "edge": edge, "purged": f.name }))
                }
                Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            },
        },
    }
}

/// Pool gauges, pool events and metering totals of one edge's executors.
fn export_executors(edge: &str, exec: &crate::exec::Executors) {
    use crate::metrics::PoolEvent;
    for f in exec.stats() {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        crate::metrics::pool_size(edge, &f.function, n(f.workers), n(f.busy), n(f.queued));
        for (event, n) in [
            (PoolEvent::ColdStart, f.cold_starts),
            (PoolEvent::Crash, f.crashes),
            (PoolEvent::Kill, f.kills),
        ] {
            if n > 0 {
                crate::metrics::pool_events_total(edge, &f.function, event, n);
            }
        }
    }
    for m in exec.metering().into_iter().filter(|m| m.invocations > 0) {
        crate::metrics::meter_totals(edge, &m.function, m.invocations, m.billed_ms, m.mb_ms);
    }
    if let Some(dropped) = exec.metering_log_dropped() {
        crate::metrics::metering_log_dropped(edge, dropped);
    }
}

impl PoolStats for crate::exec::Executors {
    fn pool(&self, _edge: EdgeId, function: &str) -> Option<PoolStatus> {
        let n = |v: usize| Some(u32::try_from(v).unwrap_or(u32::MAX));
        self.stats()
            .into_iter()
            .find(|f| f.function == function)
            .map(|f| PoolStatus {
                workers: n(f.workers),
                busy: n(f.busy),
                queued: n(f.queued),
            })
    }
}

fn metrics_response(state: &State) -> Response<Full<Bytes>> {
    let Some(handle) = crate::metrics::handle() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
            None,
        );
    };
    // Gauges that mirror the view are refreshed at scrape time.
    let view = state.cx.view.load();
    let me = state.cx.name();
    let me = me.as_str();
    for (i, e) in view.topology.edges.iter().enumerate() {
        let s = view.edges.get(i).cloned().unwrap_or_default();
        crate::metrics::peer_state(me, &e.name, s.healthy, s.load);
    }
    let draining = view.edges.get(state.cx.edge).is_some_and(|s| s.draining);
    crate::metrics::edge_state(me, view.generation, draining);
    // Counters the request paths keep as plain atomics are copied in now.
    if let Some(dns) = &state.dns {
        dns.stats.load().export(me, &state.cx.topology());
    }
    export_executors(me, &state.cx.exec);
    let c = state.cx.cache.stats();
    crate::metrics::cache_totals(me, c.hits, c.misses, c.stale, c.coalesced);
    crate::metrics::cache_bytes(me, c.bytes);
    crate::metrics::cache_evictions_total(me, "size", c.evictions);
    crate::metrics::cache_evictions_total(me, "expired", c.expirations);
    response(
        StatusCode::OK,
        crate::metrics::CONTENT_TYPE,
        handle.render(),
    )
}

/// Checks the bearer token of a mutating request; the error is the
/// response to send.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), Box<Response<Full<Bytes>>>> {
    let Some(expected) = state.token.as_deref() else {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "mutating admin endpoints are disabled: no admin token is configured",
            Some("set admin_token_file in the topology (a file holding one secret line) or the FNROUTE_ADMIN_TOKEN environment variable, then call with Authorization: Bearer <token>"),
        )));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes())) {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token",
            Some("send Authorization: Bearer <token>"),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"fnroute-admin\""),
        );
        return Err(Box::new(r));
    }
    Ok(())
}

async fn reload(
    state: &State,
    req: Request<Incoming>,
    limits: AdminLimits,
) -> Response<Full<Bytes>> {
    if let Err(r) = authorize(state, &req) {
        return *r;
    }
    // The body is not used; read it (bounded) so keep-alive works.
    let body = Limited::new(req.into_body(), limits.max_body_bytes);
    match tokio::time::timeout(limits.body_timeout, body.collect()).await {
        Err(_) => {
            return problem(StatusCode::REQUEST_TIMEOUT, "request body too slow", None);
        }
        Ok(Err(_)) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or broken",
                Some("POST /reload takes no body"),
            );
        }
        Ok(Ok(_)) => {}
    }
    let Some(reloader) = state.cx.reloader.get().and_then(std::sync::Weak::upgrade) else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no reloader",
            Some("this admin listener does not belong to a running fleet"),
        );
    };
    let report = reloader.reload().await;
    let ok = report.applied && report.geo_error.is_none();
    let code = if report.applied {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body = json!({
        "ok": ok,
        "applied": report.applied,
        "topology": {
            "ok": report.applied,
            "file": report.file,
            "errors": report.errors,
            "added": report.added,
            "changed": report.changed,
            "removed": report.removed,
            "edges_added": report.edges_added,
            "edges_removed": report.edges_removed,
        },
        "geo": {
            "ok": report.geo_error.is_none(),
            "path": state.cx.geo.path(),
            "generation": report.geo_generation,
            "error": report.geo_error,
        },
        "generations": report.generations.iter().map(|(e, g)| json!({"edge": e, "generation": g})).collect::<Vec<_>>(),
    });
    json_response(code, &body)
}

fn draining(cx: &EdgeContext) -> bool {
    cx.view
        .load()
        .edges
        .get(cx.edge)
        .is_some_and(|s| s.draining)
}

fn load_token(cx: &EdgeContext) -> Result<Option<String>, AdminError> {
    if let Some(path) = &cx.topology().admin_token_file {
        let text = std::fs::read_to_string(path).map_err(|source| AdminError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let t = text.trim();
        if t.is_empty() {
            return Err(AdminError::EmptyToken { path: path.clone() });
        }
        return Ok(Some(t.to_string()));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn response(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_response(code: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => response(code, "application/json", body),
        Err(error) => {
            tracing::error!(%error, "cannot encode admin JSON");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "cannot encode JSON\n",
            )
        }
    }
}

/// An RFC 9457 problem document.
fn problem(code: StatusCode, detail: &str, fix: Option<&str>) -> Response<Full<Bytes>> {
    let mut body = json!({
        "type": "about:blank",
        "title": code.canonical_reason().unwrap_or("error"),
        "status": code.as_u16(),
        "detail": detail,
    });
    if let (Some(fix), Some(obj)) = (fix, body.as_object_mut()) {
        obj.insert("fix".into(), json!(fix));
    }
    let mut r = json_response(code, &body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn land_outline_is_small_and_well_formed() {
        assert!(LAND.len() < 60 * 1024, "{} bytes", LAND.len());
        assert!(LAND.starts_with('M'));
        assert!(LAND
            .trim()
            .bytes()
            .all(|b| b.is_ascii_digit() || b" -Mlz".contains(&b)));
    }
}
