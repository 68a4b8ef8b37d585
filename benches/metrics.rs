//! Cost of recording metrics on the hot paths, and of a scrape.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fnroute::metrics as m;
use fnroute::{config, placement};

fn bench(c: &mut Criterion) {
    let handle = m::install();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("dns_query", |b| {
        b.iter(|| m::dns_query(black_box("fra"), "A", "NOERROR"))
    });
    g.bench_function("invocation (counter + histogram)", |b| {
        b.iter(|| {
            m::invocation(
                black_box("fra"),
                black_box("echo"),
                "ok",
                m::Path::Local,
                Duration::from_micros(900),
            )
        })
    });
    // The same two series through the facade's key path every time (what
    // `invocation` did before it cached handles), side by side.
    g.bench_function("invocation uncached (facade keys)", |b| {
        b.iter(|| {
            let (e, f) = (black_box("fra"), black_box("echo"));
            ::metrics::counter!(m::INVOCATIONS, "edge" => e, "function" => f, "outcome" => "ok", "path" => "local")
                .increment(1);
            ::metrics::histogram!(m::INVOCATION_DURATION, "edge" => e, "function" => f, "path" => "local")
                .record(0.0009);
        })
    });
    g.bench_function("meter (3 counters)", |b| {
        b.iter(|| {
            m::meter(
                black_box("fra"),
                black_box("echo"),
                Duration::from_millis(3),
                128,
            )
        })
    });
    // A fleet-sized registry: 3 edges x 20 functions of every family.
    let names: Vec<String> = (0..20).map(|i| format!("fn{i}")).collect();
    for edge in ["fra", "nyc", "sin"] {
        for f in &names {
            m::invocation(edge, f, "ok", m::Path::Local, Duration::from_millis(2));
            m::invocation(edge, f, "ok", m::Path::Forwarded, Duration::from_millis(20));
            m::meter(edge, f, Duration::from_millis(2), 128);
            m::cache_request(edge, f, m::CacheResult::Hit);
            m::pool_size(edge, f, 2, 1, 0);
            m::pool_queue_wait(edge, f, Duration::from_micros(200));
        }
    }
    let text = handle.render();
    println!(
        "render: {} bytes, {} sample lines",
        text.len(),
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    );
    g.bench_function("render (3 edges x 20 functions)", |b| {
        b.iter(|| black_box(handle.render()))
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let topo = config::load(&root.join("edge-config/three-edges.toml")).expect("valid topology");
    let view = placement::View::from_topology(Arc::new(topo), 1);
    g.bench_function("status document (3 edges, build + JSON)", |b| {
        b.iter(|| {
            let s = fnroute::admin::status::build(&view.topology, &view, 0, 1.0, None, &[]);
            black_box(serde_json::to_vec(&s).expect("json"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
