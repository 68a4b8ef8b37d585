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
