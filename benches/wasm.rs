//! Instantiate-and-run of a trivial wasi:http component
//! (`tests/wasm/hello.wat`: a 200 with a 16-byte body) through
//! `Executors::invoke`: admission, a fresh instance from the pooling
//! allocator, the request in, `handle`, the response body read whole.
//!
//! Two measurements of the same call in one run:
//! - criterion (`wasm/instantiate_and_run`): mean and median with
//!   confidence intervals;
//! - a timed loop of `SAMPLES` calls after a warm-up: p50, p90, p99, p99.9
//!   and max (criterion reports no tail percentiles).
//!
//! Run pinned to one core: `taskset -c 1 cargo bench --bench wasm`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use fnroute::config;
use fnroute::exec::{Executors, Invocation};
use tokio::time::Instant;

const SAMPLES: usize = 20_000;

fn executors(dir: &std::path::Path) -> Arc<Executors> {
    let wasm = dir.join("hello.wasm");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wasm/hello.wat");
    std::fs::write(&wasm, wat::parse_file(&src).expect("hello.wat")).expect("write");
    let text = format!(
        r#"zone = "fn.test."
geo_db = "{root}/geo/sample.mmdb"
default_location = {{ lat = 50.11, lon = 8.68 }}
state_dir = "{state}"
[[edge]]
name = "bench"
location = {{ lat = 50.11, lon = 8.68 }}
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:5300"
quic_listen = "127.0.0.1:4433"
[[function]]
name = "tiny"
executor = {{ kind = "wasm", component = "{wasm}" }}
memory_mb = 32
timeout_ms = 5000
concurrency = {{ min = 0, max = 64 }}
"#,
        root = env!("CARGO_MANIFEST_DIR"),
        state = dir.join("state").display(),
        wasm = wasm.display(),
    );
    let topo = config::parse(&dir.join("bench.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    fnroute::exec::prepare(&topo, None).expect("the component compiles");
    Executors::start(Arc::new(topo), 0).expect("executors")
}

fn invocation() -> Invocation {
    Invocation {
        function: "tiny".into(),
        payload: Bytes::from_static(b"{}"),
        deadline: Instant::now() + Duration::from_secs(5),
        request_id: "bench".into(),
        trace: None,
    }
}

async fn once(exec: &Executors) {
    let out = exec.invoke(invocation()).await.expect("invoke");
    assert_eq!(&out.body[..], b"hello from wasm\n");
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let exec = rt.block_on(async { executors(dir.path()) });

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("wasm/instantiate_and_run", |b| {
        b.iter(|| rt.block_on(once(&exec)));
    });

    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    rt.block_on(async {
        for _ in 0..2_000 {
            once(&exec).await;
        }
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = std::time::Instant::now();
            once(&exec).await;
            samples.push(t.elapsed());
        }
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e6
        };
        println!(
            "wasm/instantiate_and_run timed loop: n={SAMPLES} p50={:.1}us p90={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us",
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999),
            at(1.0)
        );
        let stats = exec.stats();
        if let Some(s) = stats.iter().find(|s| s.function == "tiny") {
            let mean = s.cold_start_mean().unwrap_or_default();
            println!(
                "instances: {} made, mean instantiation {:.1}us (Timing::init)",
                s.cold_starts,
                mean.as_secs_f64() * 1e6
            );
        }
    });
}
