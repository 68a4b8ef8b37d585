//! The version of a function's definition: what makes a cached result of
//! one definition unusable for another. Computed once per topology load
//! (`Function::cache_version`); the cache keys results by it.

use sha2::{Digest, Sha256};

use super::{ExecutorKind, Function, Interface};

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
pub(crate) fn function_version(f: &Function) -> u64 {
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
        interface,
        // Decided at the edge; the function's results do not depend on it.
        cors: _,
        // Its path is `executor.workdir`; its contents are not hashed here.
        bundle: _,
        // Where its requests may go, not what it answers.
        allow_outbound: _,
        // How the bytes travel, not what they are.
        streaming: _,
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
            ExecutorKind::Wasm => b"wasm",
        },
    );
    // Only when set, so versions of existing functions do not move.
    if let Some(c) = &executor.component {
        field(&mut h, b"component");
        field(&mut h, &c.sha256);
    }
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
    if *interface == Interface::Http {
        field(&mut h, b"interface-http");
    }
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
