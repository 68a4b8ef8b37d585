//! Placement decision over large fleets: `placement::rank` for one function
//! hosted on every edge (50, 500, 1,000 edges), with a healthy idle fleet
//! and with a tenth of it unhealthy and a tenth over its load threshold.
//!
//! `cargo bench --bench placement`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fnroute::geo::Location;
use fnroute::placement::{self, EdgeState, View};

/// A topology of `n` edges spread over the globe (deterministic), one
/// function on every edge.
fn fleet(n: usize) -> fnroute::config::Topology {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut t = format!(
        "zone = \"fn.test.\"\ngeo_db = \"{}\"\ndefault_location = {{ lat = 50.11, lon = 8.68 }}\n",
        root.join("geo/sample.mmdb").display()
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..n {
        let (lat, lon) = (next() * 140.0 - 70.0, next() * 360.0 - 180.0);
        let ip = format!("127.{}.{}.1", 1 + i / 250, i % 250);
        t.push_str(&format!(
            "[[edge]]\nname = \"e{i}\"\nlocation = {{ lat = {lat:.3}, lon = {lon:.3} }}\naddresses = [\"{ip}\"]\n\
             dns_listen = \"{ip}:5300\"\nquic_listen = \"{ip}:4433\"\nadmin_listen = \"{ip}:9180\"\n"
        ));
    }
    t.push_str("[[function]]\nname = \"everywhere\"\nexecutor = { kind = \"command\", command = [\"cat\"] }\n");
    fnroute::config::parse(&root.join("bench-fleet.toml"), &t).expect("generated fleet validates")
}

fn bench(c: &mut Criterion) {
    let paris = Location {
        lat: 48.86,
        lon: 2.35,
    };
    let mut g = c.benchmark_group("placement/rank");
    for n in [50, 500, 1000] {
        let topology = Arc::new(fleet(n));
        let hosts = topology.functions[0].edges.clone();
        let idle = View::from_topology(topology.clone(), 1);
        g.bench_with_input(BenchmarkId::new("idle", n), &n, |b, _| {
            b.iter(|| placement::rank(black_box(&idle), black_box(&hosts), black_box(paris)))
        });
        let mut mixed = idle.clone();
        for (i, e) in mixed.edges.iter_mut().enumerate() {
            match i % 10 {
                0 => e.healthy = false,
                1 => e.load = 0.9,
                _ => e.load = (i % 7) as f64 / 10.0,
            }
        }
        g.bench_with_input(BenchmarkId::new("mixed", n), &n, |b, _| {
            b.iter(|| placement::rank(black_box(&mixed), black_box(&hosts), black_box(paris)))
        });
        let _ = EdgeState::default();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
