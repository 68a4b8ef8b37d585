//! The request pipeline, the same for every transport.
//!
//! A front door's adapter (HTTP/3 in `frontdoor::server`, HTTPS over TCP
//! in `frontdoor::tcp`) turns what its transport received into one
//! [`Call`], parsed once, and hands it with a [`RequestBody`] to [`serve`], which answers
//! with a [`Reply`] or a [`Problem`] for the adapter to send. A call holds
//! one topology snapshot from start to end: a reload in the middle of a
//! request never mixes two topologies.
//!
//! `POST /fn/{name}` flows through named stages, each a small function:
//! [`resolve`] (which function, hosted here or not) → [`admit`] (early
//! data, deadline, declared size) → [`read_payload`] → [`run_here`] (local
//! or forward) → [`run_cached`] (the response cache in front of
//! [`execute`]: edge admission and the executor) → [`respond`]. Routed
//! events (`POST /event/{type}`, `POST /route`, in `routed`) take the same
//! call and the same stages for each step.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::headers::EDGE_HEADER;
pub(crate) use body::ReplyBody;
use cached::CachedReply;
use limits::Route;

pub(crate) mod body;
pub mod cached;
mod context;
pub(crate) mod function_url;
pub(crate) mod limits;
pub mod problem;
mod routed;
mod url;

use crate::cache::{CacheKey, CacheStatus};
use crate::config::{Function, FunctionName, Interface, QuicSettings, Topology};
use crate::dispatch::{Dispatcher, Forward};
use crate::exec::Invocation;
pub use context::EdgeContext;
pub(crate) use problem::{Problem, ProblemKind};

/// One edge's pipeline, shared by its front doors: the edge's services,
/// its admission slots (`capacity`) and the request limits.
pub(crate) struct Pipeline {
    pub(crate) cx: EdgeContext,
    pub(crate) edge_name: String,
    /// `edge_name` as the value of the `fnroute-edge` header.
    pub(crate) edge_value: HeaderValue,
    /// Payload limit and body read timeout (from `[quic]`).
    pub(crate) settings: QuicSettings,
    /// In-flight invocations on this edge (`edge.capacity` permits); a
    /// stream keeps its permit until it ends.
    pub(crate) admission: Arc<Semaphore>,
    /// Cancelled when the edge stops taking work.
    pub(crate) token: CancellationToken,
}

/// Why a pipeline could not be made for an edge.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    #[error("edge {0} is not in the topology")]
    NoEdge(crate::config::EdgeId),
    #[error("edge name {0:?} is not a valid header value")]
    EdgeName(String),
}

impl Pipeline {
    /// The pipeline of `cx`'s edge, with `capacity` admission slots.
    pub(crate) fn new(cx: EdgeContext) -> Result<Self, PipelineError> {
        let topo = cx.topology();
        let edge = topo
            .edges
            .get(cx.edge)
            .ok_or(PipelineError::NoEdge(cx.edge))?;
        let edge_name = edge.name.clone();
        let edge_value = HeaderValue::from_str(&edge_name)
            .map_err(|_| PipelineError::EdgeName(edge_name.clone()))?;
        Ok(Self {
            admission: Arc::new(Semaphore::new(edge.capacity as usize)),
            edge_name,
            edge_value,
            settings: topo.quic.clone(),
            token: CancellationToken::new(),
            cx,
        })
    }
}

/// A response head and its body (whole, or a stream).
pub(crate) type Reply = (Response<()>, ReplyBody);

/// What a request asks for, from its method and path (decided once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `POST /fn/{name}`: the topology's own name when it has the function
    /// (shared, not copied), else the requested name in lower case.
    Invoke(FunctionName),
    /// `POST /event/{type}`; the type in lower case.
    Event(String),
    /// `POST /route` (the steps in the `fnroute-route` header).
    Stack,
    /// `GET /health`, for cluster peers.
    Health,
    /// A request to a function's URL (`<function>.<zone>`): any method
    /// and path, decided by the function's interface (`url`).
    Url(FunctionName),
    MethodNotAllowed,
    NotFound,
}

/// Internal headers: read only from authenticated cluster peers, never
/// from clients (a client's copies are ignored).
#[derive(Debug, Clone, Default)]
pub(crate) struct Internal {
    /// Edges this request has already crossed.
    pub(crate) hops: u32,
    /// What the forwarding edge's caller had left, in milliseconds.
    pub(crate) deadline_ms: Option<u64>,
    /// The W3C `traceparent` the peer passed on.
    pub(crate) trace: Option<String>,
    /// A routed event's progress (`fnroute-route-progress`).
    pub(crate) progress: Option<String>,
}

impl Target {
    /// What a request head asks for: a function URL by its host (not
    /// from peers, which use the API paths whatever name they connected
    /// with), else the method and path.
    fn of(parts: &http::request::Parts, from_peer: bool, topology: &Topology) -> Self {
        let path = parts.uri.path();
        // An HTTP function's URL is all its own; an event function's
        // leaves the API paths to the API.
        let url = (!from_peer)
            .then(|| url_function(topology, parts))
            .flatten()
            .filter(|f| f.interface == Interface::Http || !limits::is_api_path(path));
        if path == "/health" {
            return Target::Health;
        }
        if let Some(f) = url {
            return Target::Url(f.name.clone());
        }
        match limits::route(&parts.method, path) {
            Route::Invoke(n) => Target::Invoke(match topology.function(n) {
                Some(f) => f.name.clone(),
                None => FunctionName::new(n),
            }),
            Route::Event(t) => Target::Event(t.to_ascii_lowercase()),
            Route::Stack => Target::Stack,
            Route::MethodNotAllowed => Target::MethodNotAllowed,
            Route::NotFound => Target::NotFound,
        }
    }
}

impl Internal {
    /// The internal headers and the request id: a peer's (when valid), or
    /// none and a new id for anyone else.
    fn of(headers: &HeaderMap, from_peer: bool) -> (Self, String) {
        let text = |h: &str| {
            from_peer
                .then(|| headers.get(h))
                .flatten()
                .and_then(|v| v.to_str().ok())
        };
        let number = |h: &str| text(h).and_then(|v| v.trim().parse::<u64>().ok());
        let internal = Internal {
            hops: number(crate::headers::HOP_HEADER)
                .map(|h| u32::try_from(h).unwrap_or(u32::MAX))
                .unwrap_or(0),
            deadline_ms: number(crate::headers::DEADLINE_HEADER),
            trace: text(crate::headers::TRACE_HEADER).map(str::to_string),
            progress: text(crate::headers::PROGRESS_HEADER).map(str::to_string),
        };
        let id = text(crate::headers::REQUEST_ID_HEADER)
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .map(str::to_string)
            .unwrap_or_else(request_id);
        (internal, id)
    }
}

/// One request, parsed once from whatever transport carried it.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) target: Target,
    pub(crate) method: Method,
    /// The request's URI (its path is what `target` was decided from).
    pub(crate) uri: http::Uri,
    /// The client's headers (for the timeout, content length and type,
    /// the cache's vary headers, the route and its mode).
    pub(crate) headers: HeaderMap,
    /// `fnroute-request-id`: a peer's, or a new one.
    pub(crate) id: String,
    /// The authenticated cluster peer that sent it, if any.
    pub(crate) peer: Option<String>,
    pub(crate) internal: Internal,
    /// Arrived as TLS early data (0-RTT): it may be a replay.
    pub(crate) early: bool,
    /// The client's address, as the transport saw it.
    pub(crate) remote: Option<std::net::SocketAddr>,
    /// The HTTP version it arrived with.
    pub(crate) version: http::Version,
    pub(crate) started: Instant,
    /// When the whole body must have arrived.
    pub(crate) read_deadline: Instant,
    /// The topology this request is served with, from start to end.
    pub(crate) topology: Arc<Topology>,
}

impl Call {
    /// Parses a request head: target, request id and, from peers only,
    /// the internal headers.
    pub(crate) fn parse(
        req: http::Request<()>,
        peer: Option<String>,
        early: bool,
        remote: Option<std::net::SocketAddr>,
        started: Instant,
        settings: &QuicSettings,
        topology: Arc<Topology>,
    ) -> Self {
        let (parts, ()) = req.into_parts();
        let target = Target::of(&parts, peer.is_some(), &topology);
        let (internal, id) = Internal::of(&parts.headers, peer.is_some());
        Self {
            target,
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            id,
            peer,
            internal,
            early,
            remote,
            version: parts.version,
            started,
            read_deadline: started + settings.body_read_timeout,
            topology,
        }
    }

    /// A client header as text (`None` when absent or not visible ASCII).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The invocation timeout: the function's (or route's) bound, shortened
    /// by the client's `fnroute-timeout-ms` and a forwarding peer's
    /// remaining deadline.
    pub(crate) fn timeout(&self, bound: Duration) -> Result<Duration, Problem> {
        let t = limits::invocation_timeout(
            bound,
            self.headers
                .get(limits::TIMEOUT_HEADER)
                .map(|v| v.as_bytes()),
        )
        .map_err(|d| Problem::new(ProblemKind::BadRequest, d))?;
        Ok(match self.internal.deadline_ms {
            Some(ms) => t.min(Duration::from_millis(ms.max(1))),
            None => t,
        })
    }
}

/// The function whose URL `<function>.<zone>` the request was sent to
/// (`:authority`, else `Host`; any port, any case, a trailing dot or not),
/// if the topology has it.
fn url_function<'t>(topology: &'t Topology, parts: &http::request::Parts) -> Option<&'t Function> {
    let host = match parts.uri.host() {
        Some(h) => h,
        None => parts.headers.get(header::HOST)?.to_str().ok()?,
    };
    // `Host` may carry a port; an IPv6 literal never names a function.
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host);
    let zone = topology.zone.strip_suffix('.').unwrap_or(&topology.zone);
    let (label, rest) = host.split_once('.')?;
    if !rest.eq_ignore_ascii_case(zone) {
        return None;
    }
    topology.function(label)
}

/// The body of a request, however its transport delivers it.
pub(crate) trait RequestBody: Send {
    /// The whole body, never holding more than `max` bytes, by `deadline`.
    fn read(
        &mut self,
        max: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Bytes, BodyError>> + Send;
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("body not received in time")]
    Timeout,
    #[error("reading body")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Answers one call.
pub(crate) async fn serve<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    body: &mut B,
) -> Result<Reply, Problem> {
    match &call.target {
        Target::Invoke(name) => invoke(shared, call, name, body).await,
        Target::Event(_) | Target::Stack => routed::handle(shared, call, body).await,
        Target::Health => health(shared, call),
        Target::MethodNotAllowed => Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("method {} is not allowed; use POST", call.method),
        )),
        Target::Url(name) => url::handle(shared, call, name, body).await,
        Target::NotFound => Err(Problem::new(
            ProblemKind::NotFound,
            format!(
                "no resource at {:?}; invoke functions with POST /fn/{{name}}, events with POST /event/{{type}} or POST /route",
                call.uri.path()
            ),
        )),
    }
}

/// `POST /fn/{name}`: the stages, in order.
async fn invoke<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    name: &str,
    body: &mut B,
) -> Result<Reply, Problem> {
    let target = resolve(shared, call, name)?;
    invoke_resolved(shared, call, target, body).await
}

/// `POST /fn/{name}` (or an event function's URL) once resolved.
async fn invoke_resolved<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    target: Resolved<'_>,
    body: &mut B,
) -> Result<Reply, Problem> {
    let function = target.function();
    let (timeout, payload) = admit_and_read(shared, call, function, body).await?;
    let deadline = Instant::now() + timeout;
    let dispatch = shared.cx.dispatch.as_deref();
    match dispatch {
        Some(d) if !run_here(shared, call, &target, d) => {
            return forward(shared, d, call, function, payload, deadline).await;
        }
        _ => {}
    }
    let (result, status, age) = run_cached(
        shared,
        call,
        function,
        payload.clone(),
        deadline,
        timeout,
        call.internal.trace.clone(),
    )
    .await;
    let reply = match (result, dispatch) {
        // Spill-over: the pool filled up meanwhile; try a peer.
        (Err(p), Some(d))
            if p.kind == ProblemKind::FunctionSaturated && call.internal.hops < d.max_hops() =>
        {
            return forward(shared, d, call, function, payload, deadline).await;
        }
        (r, _) => r?,
    };
    respond(shared, call, reply, status, age)
}

/// Where a function of this topology can run, as seen from this edge.
pub(crate) enum Resolved<'a> {
    /// In a pool here (its definition as the pool has it).
    Here(Arc<Function>),
    /// Only elsewhere, reachable over the mesh.
    Elsewhere(&'a Function),
}

impl Resolved<'_> {
    pub(crate) fn function(&self) -> &Function {
        match self {
            Resolved::Here(f) => f,
            Resolved::Elsewhere(f) => f,
        }
    }
}

/// Stage 1: which function, and whether this edge hosts it (404 if it is
/// unknown, or hosted elsewhere with no mesh to forward over).
fn resolve<'a>(shared: &Pipeline, call: &'a Call, name: &str) -> Result<Resolved<'a>, Problem> {
    if let Some(f) = shared.cx.exec.function(name) {
        return Ok(Resolved::Here(f));
    }
    match (call.topology.function(name), shared.cx.dispatch.is_some()) {
        (Some(f), true) => Ok(Resolved::Elsewhere(f)),
        (Some(_), false) => Err(Problem::new(
            ProblemKind::UnknownFunction,
            format!(
                "function {name:?} is not hosted on edge {:?}",
                shared.edge_name
            ),
        )
        .function(name)),
        (None, _) => Err(Problem::new(
            ProblemKind::UnknownFunction,
            format!("unknown function {name:?}"),
        )
        .function(name)),
    }
}

/// Stage 2: may this request run at all, and for how long? Early data
/// only for idempotent functions (425 otherwise), a valid timeout, and a
/// declared size within the limit (413 before any of the body is read).
fn admit(shared: &Pipeline, call: &Call, f: &Function) -> Result<Duration, Problem> {
    let name = f.name.as_str();
    if call.early && !f.idempotent {
        return Err(Problem::new(
            ProblemKind::TooEarly,
            format!("function {name:?} is not idempotent; retry after the handshake"),
        )
        .function(name));
    }
    let timeout = call.timeout(f.timeout).map_err(|p| p.function(name))?;
    check_length(shared, call).map_err(|p| p.function(name))?;
    Ok(timeout)
}

/// Stages 2 and 3 together: admitted, then the whole body; returns the
/// invocation timeout and the payload.
pub(crate) async fn admit_and_read<B: RequestBody>(
    shared: &Pipeline,
    call: &Call,
    function: &Function,
    body: &mut B,
) -> Result<(Duration, Bytes), Problem> {
    let timeout = admit(shared, call, function)?;
    let payload = read_payload(shared, call, body)
        .await
        .map_err(|p| p.function(&function.name))?;
    Ok((timeout, payload))
}

/// A declared `content-length` over the payload limit is refused before
/// the body is read.
pub(crate) fn check_length(shared: &Pipeline, call: &Call) -> Result<(), Problem> {
    let Some(len) = call.headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let len = len
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Problem::new(ProblemKind::BadRequest, "bad content-length"))?;
    let max = shared.settings.max_payload_bytes;
    if len > max {
        return Err(Problem::new(
            ProblemKind::PayloadTooLarge,
            format!("payload of {len} bytes is over the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// Stage 3: the whole body, within the payload limit and the read deadline.
pub(crate) async fn read_payload<B: RequestBody>(
    shared: &Pipeline,
    call: &Call,
    body: &mut B,
) -> Result<Bytes, Problem> {
    body.read(shared.settings.max_payload_bytes, call.read_deadline)
        .await
        .map_err(|e| body_problem(e, &shared.settings))
}

/// Stage 4: run here when hosted here and the pool has room (or the hop
/// limit leaves no choice); otherwise on the best peer.
fn run_here(shared: &Pipeline, call: &Call, target: &Resolved<'_>, d: &Dispatcher) -> bool {
    match target {
        Resolved::Elsewhere(_) => false,
        Resolved::Here(f) => {
            call.internal.hops >= d.max_hops()
                || !Dispatcher::saturated(&shared.cx.exec, f, call.topology.executors.queue)
        }
    }
}

/// Stage 4, elsewhere: forwards to a peer and relays its answer (status,
/// body, content type, retry-after and the `fnroute-edge` of the edge that
/// ran it).
async fn forward(
    shared: &Pipeline,
    d: &Dispatcher,
    call: &Call,
    function: &Function,
    payload: Bytes,
    deadline: Instant,
) -> Result<Reply, Problem> {
    let name = function.name.as_str();
    let fwd = Forward {
        function: function.name.clone(),
        payload,
        deadline,
        hops: call.internal.hops,
        request_id: call.id.clone(),
        trace: call.internal.trace.clone(),
        exclude: call
            .peer
            .as_deref()
            .and_then(|p| call.topology.edge_id(p))
            .into_iter()
            .collect(),
        route: None,
    };
    let reply = d
        .forward(function, fwd)
        .await
        .map_err(|e| Problem::from_dispatch(&e).function(name))?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let ran_on = reply.header(EDGE_HEADER).unwrap_or("?").to_string();
    let mut b = base_response(status, &ran_on, &call.id);
    if reply.stream.is_none() {
        b = b.header(header::CONTENT_LENGTH, reply.body.len());
    }
    for h in [header::CONTENT_TYPE, header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = reply.headers.get(&h) {
            b = b.header(h, v.clone());
        }
    }
    for h in [
        crate::headers::SERVER_TIMING.as_str(),
        crate::headers::PATH_HEADER,
    ] {
        if let Some(v) = reply.headers.get(h) {
            b = b.header(h, v.clone());
        }
    }
    let head = b
        .body(())
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    let body = match reply.stream {
        Some(mut s) => {
            // Counted here too: this edge sends it on to its own client.
            s.count_as(body::StreamLabels {
                edge: shared.edge_name.clone(),
                function: name.to_string(),
                request_id: call.id.clone(),
            });
            ReplyBody::Stream(s)
        }
        None => ReplyBody::full(reply.body),
    };
    Ok((head, body))
}

/// Stage 5: the response cache in front of [`execute`]. Only functions
/// with a cache policy get a key; a hit never touches an executor. Returns
/// the result, how the cache answered and the entry's age in seconds.
pub(crate) async fn run_cached(
    shared: &Arc<Pipeline>,
    call: &Call,
    function: &Function,
    payload: Bytes,
    deadline: Instant,
    timeout: Duration,
    trace: Option<String>,
) -> (Result<CachedReply, Problem>, Option<CacheStatus>, u64) {
    // An HTTP function's raw invocation (its event, e.g. from a peer's
    // function URL) is never cached here: the event is unique per request;
    // its URL's responses are cached by `url`.
    let key = function
        .cache
        .as_ref()
        .filter(|_| function.interface == Interface::Event)
        .map(|_| CacheKey::for_request(function, &payload, |h| call.header(h)));
    let inv = Invocation {
        function: function.name.clone(),
        payload,
        deadline,
        request_id: call.id.clone(),
        trace,
    };
    let run = {
        let shared = shared.clone();
        let kind = function.executor.kind;
        let streaming = function.streaming;
        let started = call.started;
        move || execute(shared, inv, kind, streaming, timeout, started)
    };
    through_cache(shared, key, function, run).await
}

/// `run` through the edge's cache under `key` (a hit never runs it), or
/// directly without one. Returns the result, how the cache answered and
/// the entry's age in seconds.
pub(crate) async fn through_cache<F, Fut>(
    shared: &Pipeline,
    key: Option<CacheKey>,
    function: &Function,
    run: F,
) -> (Result<CachedReply, Problem>, Option<CacheStatus>, u64)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<CachedReply, Problem>> + Send + 'static,
{
    match key {
        Some(key) if function.streaming.is_some() => {
            cached::through_cache_streaming(shared, key, function, run).await
        }
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
    }
}

/// Edge admission: a slot among the edge's `capacity`, after a short
/// bounded wait (503 with `retry-after` otherwise, as when shutting down).
async fn admission(
    shared: &Pipeline,
    name: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
    let edge = &shared.edge_name;
    if shared.token.is_cancelled() {
        return Err(Problem::new(
            ProblemKind::ShuttingDown,
            format!("edge {edge:?} is shutting down"),
        )
        .function(name)
        .retry_after(Duration::from_secs(1)));
    }
    match tokio::time::timeout(
        limits::ADMISSION_WAIT,
        shared.admission.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(p)) => Ok(p),
        _ => Err(Problem::new(
            ProblemKind::EdgeSaturated,
            format!("edge {edge:?} is at its capacity of in-flight invocations"),
        )
        .function(name)
        .retry_after(Duration::from_secs(1))),
    }
}

/// Stage 6: edge admission and the executor (what a cache miss runs).
pub(crate) async fn execute(
    shared: Arc<Pipeline>,
    inv: Invocation,
    kind: crate::config::ExecutorKind,
    streaming: Option<crate::config::StreamSettings>,
    timeout: Duration,
    started: Instant,
) -> Result<CachedReply, Problem> {
    let name = inv.function.clone();
    let admitted = Instant::now();
    let permit = admission(&shared, &name).await?;
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
    let mut out = out;
    // A stream holds its edge admission slot until it ends; its limits
    // hold whatever its producer does.
    let live = out.stream.take().map(|mut s| {
        s.hold(permit);
        let settings = streaming.unwrap_or(crate::config::StreamSettings {
            idle: crate::config::StreamSettings::DEFAULT_IDLE,
            max_bytes: crate::config::StreamSettings::DEFAULT_MAX_BYTES,
        });
        s.limit(body::StreamLimits {
            deadline,
            timeout,
            idle: settings.idle,
            max_bytes: settings.max_bytes,
        });
        cached::Live::new(s)
    });
    crate::metrics::pool_queue_wait(&shared.edge_name, &name, out.timing.queued);
    if let Some(d) = shared.cx.dispatch.as_deref() {
        d.mesh.record_latency(&name, ran.elapsed());
    }
    // A stream's type is what its function said, else binary: its first
    // bytes say too little to sniff.
    let content_type = out
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or_else(|| match live {
            Some(_) => HeaderValue::from_static("application/octet-stream"),
            None => HeaderValue::from_static(limits::sniff_content_type(&out.body)),
        });
    let timing = limits::server_timing(
        admission_wait + out.timing.queued,
        out.timing.run,
        started.elapsed(),
        out.timing.cold_start.then_some(out.timing.init),
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
        http: None,
        live,
    })
}

/// Stage 7: the head of a local answer or cache hit.
///
/// Built in place rather than with `Response::builder()`, whose `Result`
/// chaining moves the whole head once per header: this is the path of
/// every local answer and cache hit.
fn respond(
    shared: &Pipeline,
    call: &Call,
    mut reply: CachedReply,
    status: Option<CacheStatus>,
    age: u64,
) -> Result<Reply, Problem> {
    let timing = match status {
        Some(s @ (CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Coalesced)) => {
            HeaderValue::try_from(cache_timing(s, call.started.elapsed()))
                .map_err(|e| Problem::new(ProblemKind::Internal, format!("server-timing: {e}")))?
        }
        _ => reply.timing.clone(),
    };
    let mut body = reply.take_body();
    tracing::debug!(
        bytes = body.len(),
        stream = body.is_stream(),
        ?timing,
        cache = status.map(CacheStatus::as_str),
        "invoked"
    );
    if let ReplyBody::Stream(s) = &mut body {
        let function = match &call.target {
            Target::Invoke(n) | Target::Url(n) => n.as_str(),
            _ => "other",
        };
        s.count_as(body::StreamLabels {
            edge: shared.edge_name.clone(),
            function: call
                .topology
                .function(function)
                .map_or("other", |f| f.name.as_str())
                .to_string(),
            request_id: call.id.clone(),
        });
    }
    let mut head = Response::new(());
    if let Some(http) = &reply.http {
        *head.status_mut() = http.status;
        head.headers_mut().clone_from(&http.headers);
    }
    let h = head.headers_mut();
    h.reserve(8);
    h.insert(crate::headers::EDGE, shared.edge_value.clone());
    if let Some(v) = id_value(&call.id) {
        h.insert(crate::headers::REQUEST_ID, v);
    }
    h.insert(header::CONTENT_TYPE, reply.content_type.clone());
    if let Some(n) = body.len() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    h.insert(crate::headers::SERVER_TIMING, timing);
    if let Some(s) = status.filter(|s| *s != CacheStatus::Bypass) {
        h.insert(crate::headers::CACHE, HeaderValue::from_static(s.as_str()));
        if s != CacheStatus::Miss {
            // `age: 0` is a single byte on the wire (QPACK static table).
            let age = match age {
                0 => HeaderValue::from_static("0"),
                n => HeaderValue::from(n),
            };
            h.insert(header::AGE, age);
        }
    }
    Ok((head, body))
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

/// `GET /health`: this edge's load and state, for authenticated cluster
/// peers only.
fn health(shared: &Pipeline, call: &Call) -> Result<Reply, Problem> {
    let Some(d) = shared
        .cx
        .dispatch
        .as_deref()
        .filter(|_| call.peer.is_some())
    else {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            "/health is only for cluster peers with a certificate from the cluster CA",
        ));
    };
    if call.method != Method::GET {
        return Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("method {} is not allowed; use GET", call.method),
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
    Ok((head, body.into()))
}

/// Counts one `POST /fn/{name}` by outcome ("ok", "error" for a relayed
/// error, or the problem's slug) and path (run here or forwarded). Only
/// names from the topology become label values.
pub(crate) fn record_invocation(shared: &Pipeline, call: &Call, result: &Result<Reply, Problem>) {
    use crate::metrics::Path;
    let (Target::Invoke(name) | Target::Url(name)) = &call.target else {
        return;
    };
    let edge = shared.edge_name.as_str();
    let function = call
        .topology
        .function(name)
        .map_or("other", |f| f.name.as_str());
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
    crate::metrics::invocation(edge, function, outcome, path, call.started.elapsed());
}

/// The problem for a body that could not be read.
pub(crate) fn body_problem(e: BodyError, settings: &QuicSettings) -> Problem {
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

pub(crate) fn base_response(status: StatusCode, edge: &str, id: &str) -> http::response::Builder {
    let mut b = Response::builder().status(status);
    if let Ok(v) = HeaderValue::from_str(edge) {
        b = b.header(crate::headers::EDGE, v);
    }
    if let Some(v) = id_value(id) {
        b = b.header(crate::headers::REQUEST_ID, v);
    }
    b
}

/// The `fnroute-request-id` value (none for an id that is not a valid one).
fn id_value(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(id).ok()
}

/// A problem as a response: problem+json, with `retry-after`, `allow` and
/// the route's path where they apply.
pub(crate) fn problem_response(edge: &str, id: &str, p: &Problem) -> Reply {
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
        b = b.header(crate::headers::PATH_HEADER, v);
    }
    let head = b.body(()).unwrap_or_else(|_| {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    (head, body.into())
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
