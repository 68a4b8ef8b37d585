//! Cache keys: function name, version of its definition, SHA-256 of the
//! payload and the values of the configured vary headers.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{ExecutorKind, Function};

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
    /// [`function_version`] the topology keeps in `Function::cache_version`
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
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The version of the function's definition the key was made for.
    pub fn version(&self) -> u64 {
        self.version
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

/// A stable version of everything in a function's definition that can
/// change its results: name, executor (kind, command, env, handler, working
/// directory), memory, timeout and cache policy. Equal definitions give
/// equal versions in every process and on every edge (SHA-256 of a
/// length-prefixed encoding, first 8 bytes); any change gives another
/// version, so a reloaded config never serves results of the old one.
///
/// Placement fields (`edges`, concurrency, `idempotent`) do not change
/// results and are left out, so moving a function between edges or
/// resizing its pool keeps its cache. Files the command reads (the script
/// itself) are not hashed: after editing a script in place, purge.
pub fn function_version(f: &Function) -> u64 {
    // Destructured so that a new field in `Function` fails to compile here
    // until someone decides whether it changes results.
    let Function {
        name,
        edges: _,
        executor,
        memory_mb,
        timeout,
        concurrency_min: _,
        concurrency_max: _,
        cache,
        idempotent: _,
        gatekeeper,
        // The digest itself (what this computes).
        cache_version: _,
    } = f;
    let mut h = Sha256::new();
    field(&mut h, b"fnroute-function-v1");
    field(&mut h, name.as_bytes());
    field(
        &mut h,
        match executor.kind {
            ExecutorKind::Lambda => b"lambda",
            ExecutorKind::Command => b"command",
        },
    );
    field(&mut h, &(executor.command.len() as u64).to_le_bytes());
    for arg in &executor.command {
        field(&mut h, arg.as_bytes());
    }
    field(&mut h, &(executor.env.len() as u64).to_le_bytes());
    for (k, v) in &executor.env {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    match &executor.handler {
        Some(handler) => {
            field(&mut h, b"handler");
            field(&mut h, handler.as_bytes());
        }
        None => field(&mut h, b"no-handler"),
    }
    field(&mut h, executor.workdir.as_os_str().as_encoded_bytes());
    field(&mut h, &memory_mb.to_le_bytes());
    field(&mut h, &timeout.as_nanos().to_le_bytes());
    match cache {
        Some(c) => {
            field(&mut h, b"cache");
            field(&mut h, &c.ttl.as_nanos().to_le_bytes());
            field(&mut h, &c.stale_while_revalidate.as_nanos().to_le_bytes());
            field(&mut h, &c.stale_if_error.as_nanos().to_le_bytes());
            field(
                &mut h,
                &c.negative_ttl.map_or(0, |d| d.as_nanos()).to_le_bytes(),
            );
            field(&mut h, &(c.vary.len() as u64).to_le_bytes());
            for v in &c.vary {
                field(&mut h, v.as_bytes());
            }
        }
        None => field(&mut h, b"no-cache"),
    }
    // Only when set, so versions of existing functions do not move.
    if *gatekeeper {
        field(&mut h, b"gatekeeper");
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// One length-prefixed field, so that ("ab", "c") and ("a", "bc") differ.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}
