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
