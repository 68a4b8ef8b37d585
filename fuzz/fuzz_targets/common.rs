#![allow(dead_code)]
//! Shared by the targets: the topologies they run against, loaded once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fnroute::config::Topology;

/// `edge-config/` of the repository.
pub fn edge_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-config")
}

/// `edge-config/routing-demo.toml`: events, a static route, two
/// gatekeepers and the routing bounds (max_stack_depth 32).
pub fn routing_demo() -> &'static Arc<Topology> {
    static T: OnceLock<Arc<Topology>> = OnceLock::new();
    T.get_or_init(|| {
        Arc::new(
            fnroute::config::load(&edge_config().join("routing-demo.toml"))
                .expect("edge-config/routing-demo.toml is a valid topology"),
        )
    })
}

/// The rule step, function, edge and route names follow (RFC 1123 host
/// label), written out here so the harness does not call the code it
/// checks.
pub fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}
