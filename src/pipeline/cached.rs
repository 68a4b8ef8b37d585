//! The response cache in front of execution: what the front door stores
//! (`CachedReply`), and how a problem is shared between coalesced waiters.
//!
//! The cache itself (`crate::cache`) is generic and knows nothing of HTTP or
//! executors; this module binds it to the front door's types. A lookup
//! happens before admission and execution, so a hit never touches an
//! executor (or, with the mesh, a peer).

use bytes::Bytes;
use http::HeaderValue;

use crate::cache::{self, Cache, Cacheable, CacheableError, Directive};
use crate::config::ExecutorKind;

use super::body::{BodyStream, ReplyBody};
use super::problem::{Problem, ProblemKind};

/// One edge's response cache.
pub(crate) type ResponseCache = Cache<CachedReply, Problem>;

/// A successful result as the front door sends it, with what the function
/// said about caching it.
#[derive(Debug, Clone)]
pub struct CachedReply {
    pub body: Bytes,
    pub content_type: HeaderValue,
    /// `server-timing` of the run that produced it (a header value: a
    /// hit clones the entry, and cloning this shares its bytes).
    pub timing: HeaderValue,
    pub directive: Directive,
    /// An HTTP function's own status and headers (`None`: 200, and the
    /// body and content type are all there is).
    pub http: Option<std::sync::Arc<HttpHead>>,
    /// A streaming function's body on its way (then `body` is empty):
    /// taken once, by whoever answers. Never in a stored entry.
    pub(crate) live: Option<Live>,
}

/// A streamed body inside a [`CachedReply`], which must be `Clone` for the
/// cache: the first [`Live::take`] gets it.
#[derive(Debug, Clone)]
pub(crate) struct Live(std::sync::Arc<std::sync::Mutex<Option<BodyStream>>>);

impl Live {
    pub(crate) fn new(s: BodyStream) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(s))))
    }

    pub(crate) fn take(&self) -> Option<BodyStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl CachedReply {
    /// A whole result with no HTTP head of its own.
    pub fn new(
        body: Bytes,
        content_type: HeaderValue,
        timing: HeaderValue,
        directive: Directive,
    ) -> Self {
        Self {
            body,
            content_type,
            timing,
            directive,
            http: None,
            live: None,
        }
    }

    /// The body to send: the stream if there is one, else the whole body.
    pub(crate) fn take_body(&mut self) -> ReplyBody {
        match self.live.take().and_then(|l| l.take()) {
            Some(s) => ReplyBody::Stream(s),
            None => ReplyBody::full(std::mem::take(&mut self.body)),
        }
    }
}

/// The status and headers an HTTP function answered with (its
/// `content-type` is [`CachedReply::content_type`]).
#[derive(Debug)]
pub struct HttpHead {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
}

impl CachedReply {
    /// The directive of a result: `lambda` results say it in an
    /// API-Gateway-style `headers` object, `command` functions on a stderr
    /// line (docs/cache.md).
    pub(crate) fn directive_of(
        kind: ExecutorKind,
        body: &[u8],
        cache_control: Option<&str>,
    ) -> Directive {
        match (kind, cache_control) {
            (_, Some(value)) => Directive::parse(value),
            (ExecutorKind::Lambda, None) => cache::lambda_directive(body),
            (ExecutorKind::Command | ExecutorKind::Wasm, None) => Directive::Default,
        }
    }
}

impl Cacheable for CachedReply {
    fn weight(&self) -> u32 {
        let head = self.http.as_ref().map_or(0, |h| {
            h.headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>()
        });
        let n = self.body.len() + self.content_type.len() + self.timing.len() + head;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn directive(&self) -> Directive {
        self.directive
    }
}

impl CacheableError for Problem {
    /// Only the function's own error is deterministic; overload, timeouts
    /// and crashes are never cached.
    fn negative_cacheable(&self) -> bool {
        self.kind == ProblemKind::FunctionError
    }
}

/// Largest streamed response the cache keeps (the buffered-result limit;
/// the store also refuses anything larger than the whole cache).
const MAX_STREAM_ENTRY: usize = crate::exec::MAX_RESULT_BYTES;

/// The cache in front of a streaming function.
///
/// The leader streams to its client as the function produces, through a
/// tee that keeps a copy; the entry is stored when the stream has ended
/// cleanly (and if it fits in [`MAX_STREAM_ENTRY`] and its directive
/// allows). Coalesced waiters get the whole response then, as a hit
/// would: they do not see it as it arrives (docs/cache.md). A stream cut
/// by an error, a limit or its client is neither stored nor shared:
/// waiters run their own invocation.
///
/// The flight runs in its own task, so that the tee outlives this call's
/// return at the first byte; the stream's consumer paces it.
pub(crate) async fn through_cache_streaming<F, Fut>(
    shared: &super::Pipeline,
    key: cache::CacheKey,
    function: &crate::config::Function,
    run: F,
) -> (
    Result<CachedReply, Problem>,
    Option<cache::CacheStatus>,
    u64,
)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<CachedReply, Problem>> + Send + 'static,
{
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<CachedReply>();
    let tee = move || async move {
        let mut reply = run().await?;
        let Some(mut upstream) = reply.live.take().and_then(|l| l.take()) else {
            return Ok(reply);
        };
        let (tx, rx) = super::body::channel();
        let mut head = reply.clone();
        head.live = Some(Live::new(rx));
        if head_tx.send(head).is_err() {
            reply.directive = Directive::NoStore;
            return Ok(reply);
        }
        let mut copy = bytes::BytesMut::new();
        let mut storable = true;
        loop {
            match upstream.next().await {
                Some(Ok(b)) => {
                    if storable && copy.len() + b.len() <= MAX_STREAM_ENTRY {
                        copy.extend_from_slice(&b);
                    } else if storable {
                        storable = false;
                        copy = bytes::BytesMut::new();
                    }
                    if tx.send(b).await.is_err() {
                        storable = false;
                        break;
                    }
                }
                None => {
                    tx.end().await;
                    break;
                }
                Some(Err(e)) => {
                    tx.abort(e).await;
                    storable = false;
                    break;
                }
            }
        }
        reply.body = copy.freeze();
        if !storable {
            reply.directive = Directive::NoStore;
        }
        Ok(reply)
    };
    let cache = shared.cx.cache.clone();
    let policy = function.cache.clone();
    let fetch = tokio::spawn(async move { cache.fetch(key, policy.as_ref(), tee).await });
    let from = |f: Result<cache::Fetched<CachedReply, Problem>, tokio::task::JoinError>| match f {
        Ok(f) => {
            let age = f.age_secs();
            (f.result, Some(f.status), age)
        }
        Err(e) => (
            Err(Problem::new(
                ProblemKind::Internal,
                format!("cache flight: {e}"),
            )),
            None,
            0,
        ),
    };
    tokio::pin!(fetch);
    tokio::pin!(head_rx);
    tokio::select! {
        biased;
        f = &mut fetch => from(f),
        head = &mut head_rx => match head {
            Ok(reply) => (Ok(reply), Some(cache::CacheStatus::Miss), 0),
            Err(_) => from(fetch.await),
        },
    }
}
