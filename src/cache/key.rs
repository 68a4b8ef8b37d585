//! Cache keys: function name, version of its definition, SHA-256 of the
//! payload and the values of the configured vary headers.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::Function;

/// Identifies one cacheable result. Two invocations with equal keys are
/// interchangeable: same function, same definition, same payload bytes,
/// same values of the vary headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    function: Arc<str>,
    version: u64,
    payload: [u8; 32],
    vary: Box<[Option<Box<str>>]>,
}

impl CacheKey {
    /// A key from its parts. `vary` are the values of the policy's vary
    /// headers, in policy order (`None` for an absent header; absent and
    /// empty are different keys). Values are trimmed of surrounding
    /// whitespace; a header sent several times should be joined with `", "`
    /// by the caller, as HTTP does.
    pub fn new<'a>(
        function: &str,
        version: u64,
        payload: &[u8],
        vary: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        Self {
            function: Arc::from(function),
            version,
            payload: Sha256::digest(payload).into(),
            vary: vary
                .into_iter()
                .map(|v| v.map(|v| Box::from(v.trim())))
                .collect(),
        }
    }

    /// The key of one request to `function`, whose version is the
    /// [`crate::config::function_version`] the topology keeps in `Function::cache_version`
    /// (computed once per config load); `header(name)` returns a request
    /// header's value by its lower-case name. A function without a cache
    /// policy varies on nothing.
    pub fn for_request<'a>(
        function: &Function,
        payload: &[u8],
        mut header: impl FnMut(&str) -> Option<&'a str>,
    ) -> Self {
        let names: &[String] = function.cache.as_ref().map_or(&[], |c| &c.vary);
        Self::new(
            &function.name,
            function.cache_version,
            payload,
            names.iter().map(|n| header(n)),
        )
    }

    /// The function this key belongs to.
    pub(crate) fn function(&self) -> &str {
        &self.function
    }

    /// Bytes the key accounts for in the cache's byte bound.
    pub fn weight(&self) -> usize {
        self.function.len()
            + std::mem::size_of::<u64>()
            + self.payload.len()
            + self
                .vary
                .iter()
                .map(|v| {
                    std::mem::size_of::<Option<Box<str>>>() + v.as_ref().map_or(0, |s| s.len())
                })
                .sum::<usize>()
    }
}
