//! Executor timings on real worker processes (a timed loop, not criterion:
//! each sample is a process start or a round trip through the loopback
//! Lambda Runtime API, so the interesting figures are percentiles).
//!
//! - cold start of the Rust `lambda_runtime` worker (examples/lambda_echo):
//!   spawn to its first `GET …/invocation/next`, as `Timing::init` reports;
//! - warm invocation: `Executors::invoke` round trip on a warm worker
//!   (queue, Runtime API `next` + `response`, result), for the Rust worker
//!   and the stdlib Python worker.
//!
//! Run: `cargo build --release --example lambda_echo && cargo bench --bench exec`
//! (FNROUTE_LAMBDA_ECHO overrides the example's path).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::config;
use fnroute::exec::{Executors, Invocation};
use tokio::time::Instant;

const COLD_SAMPLES: usize = 40;
const WARM_SAMPLES: usize = 3000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

fn example() -> String {
    if let Some(p) = std::env::var_os("FNROUTE_LAMBDA_ECHO") {
        return p.to_string_lossy().into_owned();
    }
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join("examples/lambda_echo");
    assert!(
        p.exists(),
        "{} is missing: cargo build --release --example lambda_echo",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn executors(command: &str) -> Arc<Executors> {
    let text = format!(
        r#"zone = "fn.test."
geo_db = "../geo/sample.mmdb"
default_location = {{ lat = 50.11, lon = 8.68 }}
[executors]
keep_warm_ms = 600000
[[edge]]
name = "bench"
location = {{ lat = 50.11, lon = 8.68 }}
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:5300"
quic_listen = "127.0.0.1:4433"
[[function]]
name = "f"
executor = {{ kind = "lambda", command = {command} }}
memory_mb = 128
timeout_ms = 5000
concurrency = {{ min = 0, max = 1 }}
"#
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("edge-config/bench.toml");
    let topo = config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    Executors::start(Arc::new(topo), 0).expect("executors")
}

fn invocation(i: usize) -> Invocation {
    Invocation {
        function: "f".into(),
        payload: Bytes::from_static(br#"{"hello":"bench"}"#),
        deadline: Instant::now() + Duration::from_secs(5),
        request_id: format!("bench-{i}"),
        trace: None,
    }
}

async fn run() {
    let bin = example();
    let rust = format!("[{bin:?}]");

    let mut cold = Vec::with_capacity(COLD_SAMPLES);
    let mut cold_total = Vec::with_capacity(COLD_SAMPLES);
    for i in 0..COLD_SAMPLES {
        let ex = executors(&rust);
        let t0 = Instant::now();
        let out = ex.invoke(invocation(i)).await.expect("cold invocation");
        cold_total.push(t0.elapsed());
        assert!(out.timing.cold_start);
        cold.push(out.timing.init);
        ex.drain(Duration::from_secs(1)).await;
    }
    report(
        "rust lambda_runtime cold start (spawn -> first next)",
        &mut cold,
    );
    report(
        "rust lambda_runtime cold invocation (invoke -> result)",
        &mut cold_total,
    );

    for (label, command) in [
        ("rust lambda_runtime", rust.clone()),
        (
            "python stdlib client",
            r#"["python3", "functions/echo.py"]"#.to_string(),
        ),
    ] {
        let ex = executors(&command);
        ex.invoke(invocation(0)).await.expect("warm up");
        let mut warm = Vec::with_capacity(WARM_SAMPLES);
        let mut run = Vec::with_capacity(WARM_SAMPLES);
        let t0 = Instant::now();
        for i in 0..WARM_SAMPLES {
            let s = Instant::now();
            let out = ex.invoke(invocation(i)).await.expect("warm invocation");
            warm.push(s.elapsed());
            run.push(out.timing.run);
            assert!(!out.timing.cold_start);
        }
        let rate = WARM_SAMPLES as f64 / t0.elapsed().as_secs_f64();
        report(
            &format!("{label} warm invoke round trip ({rate:.0}/s sequential)"),
            &mut warm,
        );
        report(
            &format!("{label} warm worker time (event handed out -> result)"),
            &mut run,
        );
        let workers = ex.stats()[0].spawned;
        assert_eq!(workers, 1, "one worker served the warm loop");
        ex.drain(Duration::from_secs(1)).await;
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} min={:?} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        samples[0],
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1]
    );
}
