//! Function URLs: requests to `<function>.<zone>` (the name DNS resolves
//! is the name HTTP routes). The function's CORS policy answers
//! preflights at the edge and decorates its answers; an event function
//! takes `POST /` (its body is the event); an HTTP function gets the whole
//! request as a Lambda function URL event and answers with a status,
//! headers and a body. `GET`/`HEAD` answers of HTTP functions with a
//! `cache` policy are cached by the policy and the response's own
//! `cache-control` and `vary`, and `if-none-match` is answered at the edge
//! (docs/cache.md).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use tokio::time::Instant;

use super::body::BodyStream;
use super::cached::{CachedReply, HttpHead, Live};
use super::function_url::{self, UrlRequest};
use super::ReplyBody;
use super::{
    execute, forward, resolve, respond, run_here, Call, Pipeline, Problem, ProblemKind, Reply,
    RequestBody, Resolved,
};
use crate::cache::{CacheKey, Directive};
use crate::config::cors::Preflight;
use crate::config::{Function, FunctionName, Interface};
use crate::exec::Invocation;

/// A request to `name`'s URL.
pub(crate) async fn handle<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    name: &FunctionName,
    body: &mut B,
) -> Result<Reply, Problem> {
    let target = resolve(shared, call, name)?;
    let f = target.function();
    let (cors, interface) = (f.cors.clone(), f.interface);
    if let Some(p) = cors
        .as_ref()
        .and_then(|c| c.preflight(&call.method, &call.headers))
    {
        return preflight(shared, call, p);
    }
    let mut reply = match interface {
        Interface::Event => event(shared, call, target, body).await?,
        Interface::Http => http(shared, call, target, body).await?,
    };
    if let Some(c) = &cors {
        c.decorate(&call.headers, reply.0.headers_mut());
    }
    Ok(reply)
}

/// A CORS preflight, answered without running the function.
fn preflight(shared: &Pipeline, call: &Call, p: Preflight) -> Result<Reply, Problem> {
    if let Some(why) = &p.refused {
        tracing::debug!(?why, "cors preflight refused");
    }
    let mut head = super::base_response(p.status, &shared.edge_name, &call.id)
        .header(header::CONTENT_LENGTH, 0)
        .body(())
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    head.headers_mut().extend(p.headers);
    Ok((head, Bytes::new().into()))
}

/// An event function's URL: `POST /` runs it with the body as its event.
async fn event<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    target: Resolved<'_>,
    body: &mut B,
) -> Result<Reply, Problem> {
    let name = target.function().name.clone();
    match (&call.method, call.uri.path()) {
        (&Method::POST, "/") => super::invoke_resolved(shared, call, target, body).await,
        (&Method::POST, path) => Err(Problem::new(
            ProblemKind::NotFound,
            format!("the URL of function {name:?} takes POST / (its event as the body); no resource at {path:?}"),
        )
        .function(&name)),
        (m, _) => Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("method {m} is not allowed; function {name:?} takes POST / with its event"),
        )
        .function(&name)),
    }
}

/// An HTTP function: the request as a function URL event, the result as
/// the response; cached for `GET`/`HEAD` when the function has a policy.
async fn http<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    target: Resolved<'_>,
    body: &mut B,
) -> Result<Reply, Problem> {
    let function = target.function();
    let (timeout, payload) = super::admit_and_read(shared, call, function, body).await?;
    let event = Bytes::from(function_url::event(&url_request(
        call,
        &function.name,
        &payload,
    )));
    let deadline = Instant::now() + timeout;
    let dispatch = shared.cx.dispatch.as_deref();
    let local = match &target {
        Resolved::Here(f) => dispatch
            .is_none_or(|d| run_here(shared, call, &target, d))
            .then(|| f.clone()),
        Resolved::Elsewhere(_) => None,
    };
    match (local, dispatch) {
        (Some(f), _) => run_local(shared, call, f, event, deadline, timeout).await,
        (None, Some(d)) => forwarded(shared, call, d, function, event, deadline).await,
        // `resolve` lets a function hosted elsewhere through only with a mesh.
        (None, None) => Err(Problem::new(
            ProblemKind::Internal,
            "no mesh to forward over",
        )),
    }
}

/// Runs an HTTP function here: through the cache for `GET`/`HEAD` (they
/// share an entry, keyed by path and query) when it has a policy.
async fn run_local(
    shared: &Arc<Pipeline>,
    call: &Call,
    function: Arc<Function>,
    event: Bytes,
    deadline: Instant,
    timeout: std::time::Duration,
) -> Result<Reply, Problem> {
    let inv = Invocation {
        function: function.name.clone(),
        payload: event,
        deadline,
        request_id: call.id.clone(),
        trace: call.internal.trace.clone(),
    };
    let cacheable = matches!(call.method, Method::GET | Method::HEAD) && function.cache.is_some();
    let key = cacheable.then(|| {
        CacheKey::for_request(&function, request_target(call).as_bytes(), |h| {
            call.header(h)
        })
    });
    let run = {
        let shared = shared.clone();
        let function = function.clone();
        let started = call.started;
        move || async move {
            let mut raw = execute(
                shared,
                inv,
                function.executor.kind,
                function.streaming,
                timeout,
                started,
            )
            .await?;
            match raw.live.take().and_then(|l| l.take()) {
                Some(s) => to_stream_reply(&function, s, raw.timing).await,
                None => to_reply(&function, raw.body, raw.timing),
            }
        }
    };
    let (result, status, age) = super::through_cache(shared, key, &function, run).await;
    let r = respond(shared, call, result?, status, age)?;
    Ok(finish(call, r))
}

/// Runs an HTTP function on a peer: the peer runs the event as a plain
/// invocation and returns the function's result, which becomes the
/// response here (a peer's problem is relayed as it is).
async fn forwarded(
    shared: &Pipeline,
    call: &Call,
    d: &crate::dispatch::Dispatcher,
    function: &Function,
    event: Bytes,
    deadline: Instant,
) -> Result<Reply, Problem> {
    let (head, raw) = forward(shared, d, call, function, event, deadline).await?;
    if head.status() != StatusCode::OK {
        return Ok((head, raw));
    }
    let timing = head
        .headers()
        .get(crate::headers::SERVER_TIMING)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let reply = match raw {
        // The peer streams the function's prelude and body as it ran them.
        ReplyBody::Stream(s) => to_stream_reply(function, s, timing).await?,
        ReplyBody::Full(b) => to_reply(function, b.unwrap_or_default(), timing)?,
    };
    let mut r = respond(shared, call, reply, None, 0)?;
    // The edge that ran it, as for any forwarded answer.
    if let Some(edge) = head.headers().get(crate::headers::EDGE) {
        r.0.headers_mut().insert(crate::headers::EDGE, edge.clone());
    }
    Ok(finish(call, r))
}

/// What the event is made of.
fn url_request<'a>(call: &'a Call, name: &'a FunctionName, body: &'a [u8]) -> UrlRequest<'a> {
    let host = call
        .uri
        .host()
        .or_else(|| call.header("host"))
        .unwrap_or("");
    let domain_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    UrlRequest {
        method: &call.method,
        uri: &call.uri,
        headers: &call.headers,
        body,
        source_ip: call.remote.map(|a| a.ip()),
        protocol: match call.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        domain_name,
        request_id: &call.id,
        account_id: "anonymous",
        api_id: name.as_str(),
        time: SystemTime::now(),
    }
}

/// The path and query the cache keys a `GET`/`HEAD` by.
fn request_target(call: &Call) -> &str {
    call.uri
        .path_and_query()
        .map_or_else(|| call.uri.path(), |p| p.as_str())
}

/// A function URL result as the response it describes, with what it says
/// about caching: its own `cache-control`, never stored with `set-cookie`,
/// a `vary` beyond the policy's, or a status a shared cache would not
/// reuse.
fn to_reply(function: &Function, raw: Bytes, timing: HeaderValue) -> Result<CachedReply, Problem> {
    let r = function_url::response(&raw).map_err(|e| {
        Problem::new(
            ProblemKind::FunctionResponse,
            format!("the result is not a function URL response: {e}"),
        )
        .function(&function.name)
    })?;
    let mut headers = r.headers;
    let content_type = headers
        .remove(header::CONTENT_TYPE)
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let directive = directive(function, r.status, &headers);
    Ok(CachedReply {
        body: r.body,
        content_type,
        timing,
        directive,
        http: Some(Arc::new(HttpHead {
            status: r.status,
            headers,
        })),
        live: None,
    })
}

/// A streamed function URL response: its prelude (status, headers,
/// cookies) is the head; the rest of the stream is the body.
async fn to_stream_reply(
    function: &Function,
    mut s: BodyStream,
    timing: HeaderValue,
) -> Result<CachedReply, Problem> {
    let bad = |detail: String| {
        Problem::new(
            ProblemKind::FunctionResponse,
            format!("the streamed result has no valid prelude: {detail}"),
        )
        .function(&function.name)
    };
    let json = s.read_prelude().await.map_err(|e| bad(e.to_string()))?;
    let (status, mut headers) = function_url::prelude(&json).map_err(|e| bad(e.to_string()))?;
    let content_type = headers
        .remove(header::CONTENT_TYPE)
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let directive = directive(function, status, &headers);
    Ok(CachedReply {
        body: Bytes::new(),
        content_type,
        timing,
        directive,
        http: Some(Arc::new(HttpHead { status, headers })),
        live: Some(Live::new(s)),
    })
}

/// Statuses a shared cache may reuse without explicit freshness
/// (RFC 9111 §4.2.2, heuristically cacheable), less the ones fnroute
/// does not produce from functions.
const CACHEABLE: [u16; 8] = [200, 203, 204, 300, 301, 404, 410, 501];

fn directive(function: &Function, status: StatusCode, headers: &http::HeaderMap) -> Directive {
    if !CACHEABLE.contains(&status.as_u16()) || headers.contains_key(header::SET_COOKIE) {
        return Directive::NoStore;
    }
    let allowed: &[String] = function.cache.as_ref().map_or(&[], |c| &c.vary);
    for v in headers.get_all(header::VARY) {
        let Ok(v) = v.to_str() else {
            return Directive::NoStore;
        };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" || !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return Directive::NoStore;
            }
        }
    }
    let values: Vec<&str> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        Directive::Default
    } else {
        Directive::parse(&values.join(","))
    }
}

/// Conditional requests and `HEAD`: `if-none-match` matching the answer's
/// `etag` becomes 304 (RFC 9110 §13.1.2, weak comparison); a `HEAD`
/// answer keeps its headers and drops its body.
fn finish(call: &Call, (mut head, body): Reply) -> Reply {
    if head.status() == StatusCode::OK && not_modified(call, &head) {
        *head.status_mut() = StatusCode::NOT_MODIFIED;
        let h = head.headers_mut();
        h.remove(header::CONTENT_TYPE);
        h.remove(header::CONTENT_LENGTH);
        return (head, Bytes::new().into());
    }
    if call.method == Method::HEAD {
        // A stream's body is dropped too, which stops its function.
        return (head, Bytes::new().into());
    }
    (head, body)
}

fn not_modified(call: &Call, head: &Response<()>) -> bool {
    if !matches!(call.method, Method::GET | Method::HEAD) {
        return false;
    }
    let Some(etag) = head
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let etag = weak(etag);
    call.headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || weak(t) == etag)
}
