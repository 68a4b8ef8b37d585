use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config;

const TOPO: &str = r#"
zone = "fn.test."
geo_db = "Cargo.toml"
default_location = { lat = 50.11, lon = 8.68 }
[[edge]]
name = "fra"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.11"]
dns_listen = "127.0.0.11:5300"
quic_listen = "127.0.0.11:4433"
[[edge]]
name = "nyc"
location = { lat = 40.71, lon = -74.01 }
addresses = ["127.0.0.12"]
dns_listen = "127.0.0.12:5300"
quic_listen = "127.0.0.12:4433"
[[edge]]
name = "sin"
location = { lat = 1.35, lon = 103.82 }
addresses = ["127.0.0.13"]
dns_listen = "127.0.0.13:5300"
quic_listen = "127.0.0.13:4433"
[[function]]
name = "echo"
executor = { kind = "command", command = ["cat"] }
[[function]]
name = "resize"
edges = ["nyc", "sin"]
executor = { kind = "command", command = ["cat"] }
"#;

fn view() -> View {
    let topo = config::parse(std::path::Path::new("topo.toml"), TOPO).expect("valid topology");
    View::from_topology(Arc::new(topo), 1)
}

const PARIS: Location = Location {
    lat: 48.86,
    lon: 2.35,
};
const JAKARTA: Location = Location {
    lat: -6.21,
    lon: 106.85,
};

fn names(view: &View, r: &Ranking) -> Vec<String> {
    r.candidates
        .iter()
        .map(|c| format!("{}:{}", view.topology.edges[c.edge].name, c.class.as_str()))
        .collect()
}

fn check(view: &View, function: &str, at: Location, expected: &[&str]) {
    let r = rank_function(view, function, at);
    assert_eq!(names(view, &r), expected);
}

#[test]
fn nearest_first() {
    let v = view();
    check(
        &v,
        "echo",
        PARIS,
        &["fra:preferred", "nyc:preferred", "sin:preferred"],
    );
    check(
        &v,
        "echo",
        JAKARTA,
        &["sin:preferred", "fra:preferred", "nyc:preferred"],
    );
    check(
        &v,
        "ECHO",
        JAKARTA,
        &["sin:preferred", "fra:preferred", "nyc:preferred"],
    );
}

#[test]
fn only_hosting_edges() {
    check(
        &view(),
        "resize",
        PARIS,
        &["nyc:preferred", "sin:preferred"],
    );
    assert!(rank_function(&view(), "nope", PARIS).candidates.is_empty());
}

#[test]
fn spill_over_and_health() {
    let v = view().with_edge(
        0,
        EdgeState {
            healthy: true,
            draining: false,
            load: 0.9,
        },
    );
    check(
        &v,
        "echo",
        PARIS,
        &["nyc:preferred", "sin:preferred", "fra:over-threshold"],
    );
    let v = v.with_edge(
        1,
        EdgeState {
            healthy: false,
            draining: false,
            load: 0.0,
        },
    );
    check(
        &v,
        "echo",
        PARIS,
        &["sin:preferred", "fra:over-threshold", "nyc:unhealthy"],
    );
    let v = v.with_edge(
        2,
        EdgeState {
            healthy: true,
            draining: true,
            load: 0.0,
        },
    );
    check(
        &v,
        "echo",
        PARIS,
        &["fra:over-threshold", "sin:draining", "nyc:unhealthy"],
    );
    let v = v.with_edge(
        0,
        EdgeState {
            healthy: true,
            draining: false,
            load: 1.0,
        },
    );
    check(
        &v,
        "echo",
        PARIS,
        &["fra:saturated", "sin:draining", "nyc:unhealthy"],
    );
    assert!(!rank_function(&v, "echo", PARIS).fallback);
}

#[test]
fn all_unhealthy_still_answers() {
    let down = EdgeState {
        healthy: false,
        draining: false,
        load: 0.0,
    };
    let v = view()
        .with_edge(0, down.clone())
        .with_edge(1, down.clone())
        .with_edge(2, down);
    let r = rank_function(&v, "echo", PARIS);
    assert!(r.fallback);
    assert_eq!(names(&v, &r)[0], "fra:unhealthy");
    assert_eq!(v.generation, 4);
}

proptest! {
    #[test]
    fn never_worse_class_first(
        states in proptest::collection::vec((any::<bool>(), any::<bool>(), 0.0f64..1.5), 3),
        lat in -90.0f64..90.0, lon in -180.0f64..180.0,
    ) {
        let mut v = view();
        for (i, (h, d, l)) in states.iter().enumerate() {
            v = v.with_edge(i, EdgeState { healthy: *h, draining: *d, load: *l });
        }
        let at = Location { lat, lon };
        let r = rank_function(&v, "echo", at);
        prop_assert_eq!(r.candidates.len(), 3);
        // Sorted by class, and within a class by distance.
        for w in r.candidates.windows(2) {
            prop_assert!(w[0].class < w[1].class
                || (w[0].class == w[1].class && w[0].distance_km <= w[1].distance_km));
        }
        // A saturated edge is never first while a preferred one exists.
        if r.candidates.iter().any(|c| c.class == Class::Preferred) {
            prop_assert_eq!(r.candidates[0].class, Class::Preferred);
        }
        // Deterministic.
        prop_assert_eq!(&r, &rank_function(&v, "echo", at));
    }
}

// ---- Spreading of displaced clients (`rank_client`) ----

/// Paris with four near edges of different capacity and one far one.
/// From Paris: par 0 km, lhr 344, ams 430, fra 479, nyc 5837.
const EUROPE: &str = r#"
zone = "fn.test."
geo_db = "Cargo.toml"
default_location = { lat = 48.86, lon = 2.35 }
[[edge]]
name = "par"
location = { lat = 48.86, lon = 2.35 }
addresses = ["127.0.0.21"]
dns_listen = "127.0.0.21:5300"
quic_listen = "127.0.0.21:4433"
capacity = 256
[[edge]]
name = "lhr"
location = { lat = 51.51, lon = -0.13 }
addresses = ["127.0.0.22"]
dns_listen = "127.0.0.22:5300"
quic_listen = "127.0.0.22:4433"
capacity = 100
[[edge]]
name = "ams"
location = { lat = 52.37, lon = 4.90 }
addresses = ["127.0.0.23"]
dns_listen = "127.0.0.23:5300"
quic_listen = "127.0.0.23:4433"
capacity = 300
[[edge]]
name = "fra"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.24"]
dns_listen = "127.0.0.24:5300"
quic_listen = "127.0.0.24:4433"
capacity = 600
[[edge]]
name = "nyc"
location = { lat = 40.71, lon = -74.01 }
addresses = ["127.0.0.25"]
dns_listen = "127.0.0.25:5300"
quic_listen = "127.0.0.25:4433"
capacity = 1000
[[function]]
name = "echo"
executor = { kind = "command", command = ["cat"] }
"#;

const PAR: usize = 0;
const LHR: usize = 1;
const AMS: usize = 2;
const FRA: usize = 3;
const NYC: usize = 4;

fn europe() -> View {
    let topo = config::parse(std::path::Path::new("europe.toml"), EUROPE).expect("valid topology");
    View::from_topology(Arc::new(topo), 1)
}

fn all(v: &View) -> Vec<usize> {
    (0..v.topology.edges.len()).collect()
}

const DOWN: EdgeState = EdgeState {
    healthy: false,
    draining: false,
    load: 0.0,
};

/// How many of `networks` client networks get each edge first.
fn split(v: &View, at: Location, networks: impl Iterator<Item = std::net::IpAddr>) -> [u32; 5] {
    let mut n = [0u32; 5];
    for addr in networks {
        let r = rank_client(v, &all(v), at, client_draw(addr));
        n[r.candidates[0].edge] += 1;
    }
    n
}

fn v4_networks(count: u32) -> impl Iterator<Item = std::net::IpAddr> {
    // Distinct /24s (the low byte varies too, and must not matter).
    (0..count).map(|i| std::net::Ipv4Addr::from((i << 8) | (i % 251)).into())
}

fn v6_networks(count: u128) -> impl Iterator<Item = std::net::IpAddr> {
    // Distinct /56s inside 2001:db8::/32.
    (0..count)
        .map(|i| std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 72) | (i * 7919)).into())
}

/// Asserts that `got` splits like `weights` within `tolerance` (a share
/// of the total, e.g. 0.02 = two percentage points).
fn assert_split(got: [u32; 5], weights: [u32; 5], tolerance: f64) {
    let total: u32 = got.iter().sum();
    let wsum: u32 = weights.iter().sum();
    for i in 0..5 {
        let share = f64::from(got[i]) / f64::from(total);
        let want = f64::from(weights[i]) / f64::from(wsum);
        assert!(
            (share - want).abs() <= tolerance,
            "edge {i}: {share:.4} of the clients, want {want:.4} ± {tolerance} ({got:?})"
        );
        if weights[i] == 0 {
            assert_eq!(got[i], 0, "edge {i} is outside the window: {got:?}");
        }
    }
}

#[test]
fn displaced_load_splits_by_capacity_over_near_equal_edges() {
    let v = europe().with_edge(PAR, DOWN);
    let r = rank_function(&v, "echo", PARIS);
    assert!(displaced(&r));
    assert_eq!(near_equal(&r.candidates), 3, "lhr, ams, fra; not nyc");
    // lhr : ams : fra = 100 : 300 : 600; nyc (far) and par (down) get none.
    let want = [0, 100, 300, 600, 0];
    assert_split(split(&v, PARIS, v4_networks(20_000)), want, 0.015);
    assert_split(split(&v, PARIS, v6_networks(20_000)), want, 0.015);
    // Without spreading every displaced client would get lhr alone.
    assert_eq!(r.candidates[0].edge, LHR);
}

#[test]
fn a_class_change_moves_an_edge_out_of_the_window() {
    // par over its threshold displaces its clients as well; ams over its
    // threshold leaves the window (it ranks after every preferred edge).
    let hot = EdgeState {
        healthy: true,
        draining: false,
        load: 0.9,
    };
    let v = europe().with_edge(PAR, hot.clone()).with_edge(AMS, hot);
    let r = rank_client(&v, &all(&v), PARIS, 0);
    assert_eq!(r.spread, 2, "lhr and fra");
    assert_split(
        split(&v, PARIS, v4_networks(10_000)),
        [0, 100, 0, 600, 0],
        0.015,
    );
    // The ranking after the drawn edge: the rest in rank order.
    let names: Vec<usize> = r.candidates.iter().map(|c| c.edge).collect();
    assert!(names == [LHR, FRA, NYC, PAR, AMS] || names == [FRA, LHR, NYC, PAR, AMS]);
}

#[test]
fn clients_whose_nearest_edge_is_viable_are_not_spread() {
    // Healthy fleet: everyone's answer is exactly rank's.
    let v = europe();
    for addr in v4_networks(500) {
        let r = rank_client(&v, &all(&v), PARIS, client_draw(addr));
        assert_eq!(r, rank(&v, &all(&v), PARIS));
        assert_eq!((r.spread, r.drawn()), (0, false));
        assert_eq!(r.candidates[0].edge, PAR);
    }
    // par down: a client in New York is not displaced (nyc is its nearest).
    let v = v.with_edge(PAR, DOWN);
    let ny = Location {
        lat: 40.71,
        lon: -74.01,
    };
    for addr in v4_networks(500) {
        let r = rank_client(&v, &all(&v), ny, client_draw(addr));
        assert_eq!(r, rank(&v, &all(&v), ny));
        assert_eq!(r.candidates[0].edge, NYC);
    }
}

#[test]
fn fallback_and_a_lone_survivor_are_not_drawn() {
    // Nothing viable: the nearest is served as before, no spreading.
    let mut v = europe();
    for e in 0..5 {
        v = v.with_edge(e, DOWN);
    }
    let r = rank_client(&v, &all(&v), PARIS, u64::MAX);
    assert!(r.fallback);
    assert_eq!((r.spread, r.candidates[0].edge), (0, PAR));
    // In the three-edge fleet, a Paris client displaced from fra has one
    // near-equal survivor (nyc 5840 km; sin 10700 km is not near-equal):
    // displaced, but the answer does not depend on the draw.
    let v = view().with_edge(0, DOWN);
    for draw in [0, 1 << 63, u64::MAX] {
        let r = rank_client(&v, &[0, 1, 2], PARIS, draw);
        assert_eq!((r.spread, r.drawn()), (1, false));
        assert_eq!(names(&v, &r)[0], "nyc:preferred");
    }
}

#[test]
fn the_draw_is_per_client_network_and_pinned() {
    use std::net::IpAddr;
    let ip = |s: &str| s.parse::<IpAddr>().expect("address");
    // One /24 (IPv4, also written IPv4-mapped) and one /56: one draw.
    let d = client_draw(ip("198.51.100.7"));
    for other in ["198.51.100.0", "198.51.100.255", "::ffff:198.51.100.99"] {
        assert_eq!(client_draw(ip(other)), d, "{other}");
    }
    assert_ne!(client_draw(ip("198.51.101.7")), d);
    let d6 = client_draw(ip("2001:db8:0:ab00::1"));
    assert_eq!(client_draw(ip("2001:db8:0:abff:ffff::")), d6);
    assert_ne!(client_draw(ip("2001:db8:0:ac00::1")), d6);
    assert_eq!(
        client_network(ip("::ffff:198.51.100.99")),
        (ip("198.51.100.0"), 24)
    );
    assert_eq!(
        client_network(ip("2001:db8:0:abcd::1")),
        (ip("2001:db8:0:ab00::"), 56)
    );
    // Pinned: every edge and every version must draw the same for a
    // network, or edges would answer one client differently.
    assert_eq!(d, PINNED_DRAW_V4);
    assert_eq!(d6, PINNED_DRAW_V6);
}

// splitmix64 finalizer twice (family mixed in), computed independently.
const PINNED_DRAW_V4: u64 = 0xe220_3750_8898_a41b;
const PINNED_DRAW_V6: u64 = 0xe9dd_34dc_8479_4b11;

proptest! {
    #[test]
    fn spreading_only_reorders_the_window_of_displaced_clients(
        states in proptest::collection::vec((any::<bool>(), any::<bool>(), 0.0f64..1.5), 5),
        lat in -90.0f64..90.0, lon in -180.0f64..180.0,
        draw in any::<u64>(),
    ) {
        let mut v = europe();
        for (i, (h, d, l)) in states.iter().enumerate() {
            v = v.with_edge(i, EdgeState { healthy: *h, draining: *d, load: *l });
        }
        let at = Location { lat, lon };
        let plain = rank(&v, &all(&v), at);
        let r = rank_client(&v, &all(&v), at, draw);
        // Deterministic.
        prop_assert_eq!(&r, &rank_client(&v, &all(&v), at, draw));
        prop_assert_eq!(r.fallback, plain.fallback);
        if !displaced(&plain) {
            // Not displaced: exactly rank's answer.
            prop_assert_eq!(&r, &plain);
        } else {
            let window = near_equal(&plain.candidates);
            prop_assert_eq!(r.spread, window);
            prop_assert!(window >= 1);
            // The first comes from the window: same class as the best
            // viable one, and near-equal in distance.
            let first = r.candidates[0];
            prop_assert!(plain.candidates[..window].contains(&first));
            prop_assert_eq!(first.class, plain.candidates[0].class);
            prop_assert!(first.distance_km
                <= plain.candidates[0].distance_km * NEAR_FACTOR + NEAR_MARGIN_KM);
            // The rest keep rank order.
            let rest: Vec<Candidate> =
                plain.candidates.iter().filter(|c| c.edge != first.edge).copied().collect();
            prop_assert_eq!(&r.candidates[1..], &rest[..]);
        }
    }
}
