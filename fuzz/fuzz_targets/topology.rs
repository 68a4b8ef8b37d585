//! Bytes → a topology file's text → `config::parse` (TOML, then every
//! validation rule) as if the file were `edge-config/fuzz.toml`, so that
//! relative paths (geo database, programs, mesh certificates) resolve
//! against the repository's `edge-config/` and valid inputs can pass.
//! Validation only checks that files exist; nothing is written.
//!
//! Checks: no panic; an error list is never empty, every error has a
//! message and a place that lies inside the text (1-based line and
//! column, or 0:0 for problems without a place); an accepted topology
//! keeps the invariants the rest of the crate relies on (docs/
//! ARCHITECTURE.md, `config`): names are DNS labels and unique, hosted
//! edges exist, listeners do not clash, route and event steps name
//! functions or routes, no static route expands into itself, the zone is
//! absolute.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use fnroute::config::Topology;
use libfuzzer_sys::fuzz_target;

fn file() -> &'static std::path::PathBuf {
    static F: OnceLock<std::path::PathBuf> = OnceLock::new();
    F.get_or_init(|| common::edge_config().join("fuzz.toml"))
}

fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check(t: &Topology) {
    assert!(
        t.zone.ends_with('.') && t.zone.len() > 1,
        "zone {:?}",
        t.zone
    );
    assert!(!t.edges.is_empty(), "no edges");
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for e in &t.edges {
        assert!(common::is_label(&e.name), "edge {:?}", e.name);
        assert!(names.insert(e.name.as_str()), "duplicate edge {:?}", e.name);
        assert!(!e.addresses.is_empty());
        assert!(e.capacity > 0);
        for l in [
            Some(e.dns_listen),
            Some(e.quic_listen),
            Some(e.admin_listen),
            e.doq_listen,
        ]
        .into_iter()
        .flatten()
        {
            for &(o, ref who) in &listeners {
                assert!(!clashes(o, l), "{l} clashes with {who} {o}");
            }
            listeners.push((l, e.name.clone()));
        }
    }
    let mut fnames = HashSet::new();
    for f in &t.functions {
        assert!(common::is_label(&f.name), "function {:?}", f.name);
        assert!(
            fnames.insert(f.name.as_str()),
            "duplicate function {:?}",
            f.name
        );
        assert!(!f.edges.is_empty());
        for &id in &f.edges {
            assert!(id < t.edges.len(), "function {} on edge {id}", f.name);
        }
        assert!(f.concurrency_max > 0 && f.concurrency_min <= f.concurrency_max);
        assert!(!f.executor.command.is_empty());
        assert!(t.function(&f.name).is_some());
    }
    let r = &t.routing;
    let known = |s: &str| t.function(s).is_some() || r.routes.contains_key(s);
    for (name, steps) in &r.routes {
        assert!(common::is_label(name), "route {name:?}");
        assert!(
            t.function(name).is_none(),
            "route {name:?} is also a function"
        );
        assert!(!steps.is_empty() && steps.len() <= r.bounds.max_stack_depth as usize);
        assert!(
            steps.iter().all(|s| known(s)),
            "route {name:?}: unknown step"
        );
        assert!(
            fnroute::config::static_cycle(&r.routes, name).is_none(),
            "route {name:?} expands into itself"
        );
    }
    for (kind, entry) in &r.events {
        assert!(!kind.is_empty() && kind.len() <= 63);
        assert!(
            !entry.is_empty() && entry.iter().all(|s| known(s)),
            "event {kind:?}"
        );
    }
    let b = r.bounds;
    assert!(b.max_steps >= 1 && b.max_expansions >= 1 && b.max_hops >= 1 && b.max_stack_depth >= 1);
}

fuzz_target!(|data: &[u8]| {
    // The file is read with `read_to_string`: not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match fnroute::config::parse(file(), text) {
        Ok(t) => check(&t),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an empty error list");
            let lines = text.split('\n').count();
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                if e.line == 0 {
                    assert_eq!(e.column, 0);
                } else {
                    assert!(e.line <= lines, "line {} of {lines}: {e:?}", e.line);
                    assert!(e.column >= 1);
                    let line = text.split('\n').nth(e.line - 1).unwrap_or_default();
                    assert!(
                        e.column <= line.chars().count() + 1,
                        "column {} on a line of {} chars: {e:?}",
                        e.column,
                        line.chars().count()
                    );
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
});
