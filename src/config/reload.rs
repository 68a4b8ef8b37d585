//! What a live topology reload may change. Pure: compares two validated
//! topologies and lists every difference that only a restart can apply.
//!
//! Applied live: functions (added, changed, removed), `[[route]]`,
//! `[[event]]`, `[routing]`, `[dns]` ttl/answers/load_threshold/serial,
//! `default_location`, and each edge's `location` and `addresses`.
//! Everything that owns a socket, a certificate, a process-wide resource
//! or an edge's identity needs a restart (drain, then restart: no
//! downtime for clients, docs/operations.md).

use super::model::Topology;

/// Every difference between `old` and `new` that a live reload cannot
/// apply, as one message each (empty: the reload can be applied live).
pub fn restart_required(old: &Topology, new: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |what: &str, changed: bool| {
        if changed {
            out.push(format!("{what} changed"));
        }
    };
    differs("zone", old.zone != new.zone);
    differs("geo_db (the path)", old.geo_db != new.geo_db);
    differs("state_dir", old.state_dir != new.state_dir);
    differs(
        "admin_token_file",
        old.admin_token_file != new.admin_token_file,
    );
    differs("[quic]", old.quic != new.quic);
    differs("[tls]", old.tls != new.tls);
    differs("[mesh]", old.mesh != new.mesh);
    differs("[executors]", old.executors != new.executors);
    differs(
        "dns.udp_sockets",
        old.dns.udp_sockets != new.dns.udp_sockets,
    );
    differs("dns.rate_limit", old.dns.rate_limit != new.dns.rate_limit);
    let names = |t: &Topology| t.edges.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let (was, now) = (names(old), names(new));
    if was != now {
        out.push(format!(
            "the edges changed (were [{}], now [{}]); adding, removing or reordering edges needs a restart of every node",
            was.join(", "),
            now.join(", ")
        ));
        return out;
    }
    for (a, b) in old.edges.iter().zip(&new.edges) {
        let e = &a.name;
        differs(
            &format!("edge {e}: dns_listen"),
            a.dns_listen != b.dns_listen,
        );
        differs(
            &format!("edge {e}: quic_listen"),
            a.quic_listen != b.quic_listen,
        );
        differs(
            &format!("edge {e}: admin_listen"),
            a.admin_listen != b.admin_listen,
        );
        differs(&format!("edge {e}: capacity"), a.capacity != b.capacity);
        differs(
            &format!("edge {e}: cache_bytes"),
            a.cache_bytes != b.cache_bytes,
        );
    }
    out
}

/// Names of functions added, changed and removed from `old` to `new`.
pub fn function_changes(old: &Topology, new: &Topology) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for f in &new.functions {
        match old.functions.iter().find(|o| o.name == f.name) {
            None => added.push(f.name.clone()),
            Some(o) if o != f => changed.push(f.name.clone()),
            Some(_) => {}
        }
    }
    let removed = old
        .functions
        .iter()
        .filter(|o| !new.functions.iter().any(|f| f.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    (added, changed, removed)
}
