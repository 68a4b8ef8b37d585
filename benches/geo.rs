//! Geo lookup and nearest-edge choice: the per-query work of the DNS front
//! door before any caching.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use fnroute::geo::GeoDb;
use fnroute::{config, placement};

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let topo = config::load(&root.join("edge-config/three-edges.toml")).expect("valid topology");
    let db = GeoDb::open(&topo.geo_db, topo.default_location).expect("sample database");
    let view = placement::View::from_topology(Arc::new(topo), 1);
    let addrs: Vec<IpAddr> = [
        "198.51.100.7",
        "192.0.2.1",
        "203.0.113.9",
        "2001:db8::1",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect();

    let mut g = c.benchmark_group("geo");
    g.bench_function("lookup", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            black_box(db.lookup(black_box(addrs[i])))
        })
    });
    g.bench_function("lookup+nearest_edge", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            let at = db.lookup(black_box(addrs[i])).location;
            black_box(
                placement::rank_function(&view, "echo", at)
                    .best()
                    .map(|c| c.edge),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
