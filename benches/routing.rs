//! Function source routing (docs/routing.md), the three edges of
//! `edge-config/routing-demo.toml` in this process on fresh ports, one run:
//!
//! - `routing_wan`: the demo chain (`POST /event/document`), source routed
//!   vs orchestrated from the entry edge, entering at fra and at sin, with
//!   WAN distance emulated by `mesh.simulated_rtt_ms_per_1000km = 10`
//!   (SIMULATION ONLY: a sleep of the great-circle round trip per forward;
//!   fra–nyc 62 ms, fra–sin 103 ms, nyc–sin 153 ms). Also four steps that
//!   share one remote edge (nyc), both ways.
//! - `routing_overhead` (no emulated delay): a one-function invocation, a
//!   one-step route, a four-step route on this edge, and one and four steps
//!   on a remote edge, to derive the per-local-step and per-hop costs.
//!
//! Steps are the Python `echo` Lambda worker (warm) and the demo's own
//! Python workers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use fnroute::config::Topology;
use fnroute::mesh::transport::{Client, Connection, Request, Trust};
use fnroute::node::Fleet;

#[path = "../tests/integration/topo.rs"]
mod topo;
use topo::TopoEdit;

const DOC: &str = r#"{"text": "hello  world", "edits": [{"find": "world", "replace": "edge"}]}"#;

/// The demo topology plus `echo` (fra) and `echo-nyc` (nyc): Python echo
/// workers, at most 4 each, kept warm.
fn topology(state: &Path, rtt_per_1000km: f64) -> Topology {
    let mut t = TopoEdit::open("edge-config/routing-demo.toml");
    t.ports(0, 0, 0)
        .set("state_dir", state.display().to_string())
        .set("mesh.simulated_rtt_ms_per_1000km", rtt_per_1000km)
        .append(
            r#"
[[function]]
name = "echo"
edges = ["fra"]
executor = { kind = "lambda", command = ["python3", "functions/echo.py"] }
idempotent = true
concurrency = { min = 1, max = 4 }

[[function]]
name = "echo-nyc"
edges = ["nyc"]
executor = { kind = "lambda", command = ["python3", "functions/echo.py"] }
idempotent = true
concurrency = { min = 1, max = 4 }
"#,
        );
    t.load()
}

fn event(kind: &str) -> Request {
    let mut r = Request::invoke("unused", Bytes::from_static(DOC.as_bytes()));
    r.path = format!("/event/{kind}");
    r
}

fn route(stack: &str) -> Request {
    let mut r = Request::invoke("unused", Bytes::from_static(DOC.as_bytes()));
    r.path = "/route".into();
    r.header("fnroute-route", stack)
}

async fn send(conn: &Connection, req: Request, path: &str) {
    let r = conn.send(req).await.expect("send");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("fnroute-path"), Some(path), "unexpected path");
}

struct Running {
    fleet: Fleet,
    client: Client,
    fra: Connection,
    sin: Connection,
    _state: tempfile::TempDir,
}

fn start(rt: &tokio::runtime::Runtime, rtt: f64) -> Running {
    let state = tempfile::tempdir().expect("tempdir");
    let topo = topology(state.path(), rtt);
    rt.block_on(async {
        let fleet = Fleet::start(Arc::new(topo), &[0, 1, 2])
            .await
            .expect("fleet");
        let client =
            Client::new(&Trust::Insecure, "127.0.0.1:0".parse().expect("addr")).expect("client");
        let fra = client
            .connect(fleet.quic_addrs[0], "localhost")
            .await
            .expect("fra");
        let sin = client
            .connect(fleet.quic_addrs[2], "localhost")
            .await
            .expect("sin");
        Running {
            fleet,
            client,
            fra,
            sin,
            _state: state,
        }
    })
}

fn stop(rt: &tokio::runtime::Runtime, r: Running) {
    rt.block_on(async {
        drop((r.fra, r.sin));
        r.client.close().await;
        r.fleet.shutdown(Duration::from_secs(5)).await;
    });
}

const FROM_FRA: &str =
    "classify@fra, edit-front-end@fra, edit-validate@fra, edit-apply@fra, log@nyc, process@sin";
const FROM_SIN: &str =
    "classify@sin, edit-front-end@fra, edit-validate@fra, edit-apply@fra, log@nyc, process@sin";
const NYC4: &str = "echo-nyc@nyc, echo-nyc@nyc, echo-nyc@nyc, echo-nyc@nyc";

/// Name, entry connection, request, expected path.
type Case<'a> = (&'a str, &'a Connection, fn() -> Request, &'a str);

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // WAN emulated: source routed vs orchestrated.
    let wan = start(&rt, 10.0);
    let cases: [Case<'_>; 3] = [
        ("demo_from_fra", &wan.fra, || event("document"), FROM_FRA),
        ("demo_from_sin", &wan.sin, || event("document"), FROM_SIN),
        (
            "four_steps_on_nyc_from_fra",
            &wan.fra,
            || route("echo-nyc echo-nyc echo-nyc echo-nyc"),
            NYC4,
        ),
    ];
    rt.block_on(async {
        for (_, conn, req, path) in &cases {
            for mode in ["source", "orchestrated"] {
                for _ in 0..3 {
                    send(conn, req().header("fnroute-route-mode", mode), path).await;
                }
            }
        }
    });
    let mut g = c.benchmark_group("routing_wan");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, conn, req, path) in &cases {
        for mode in ["source", "orchestrated"] {
            g.bench_function(format!("{name}/{mode}"), |b| {
                b.iter(|| rt.block_on(send(conn, req().header("fnroute-route-mode", mode), path)))
            });
        }
    }
    g.finish();
    stop(&rt, wan);

    // Loopback, no emulated delay: the cost of a step and of a hop.
    let lo = start(&rt, 0.0);
    let fra = &lo.fra;
    rt.block_on(async {
        for _ in 0..20 {
            send(fra, route("echo-nyc echo"), "echo-nyc@nyc, echo@fra").await;
        }
    });
    let mut g = c.benchmark_group("routing_overhead");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("fn_echo_local", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = fra
                    .invoke("echo", Bytes::from_static(DOC.as_bytes()))
                    .await
                    .expect("invoke");
                assert_eq!(r.status, 200);
            })
        })
    });
    let local4 = "echo@fra, echo@fra, echo@fra, echo@fra";
    for (name, stack, path) in [
        ("route_1_local", "echo", "echo@fra"),
        ("route_4_local", "echo echo echo echo", local4),
        ("route_1_remote", "echo-nyc", "echo-nyc@nyc"),
        (
            "route_4_remote",
            "echo-nyc echo-nyc echo-nyc echo-nyc",
            NYC4,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(send(fra, route(stack), path)))
        });
    }
    g.finish();
    stop(&rt, lo);
}

criterion_group!(benches, bench);
criterion_main!(benches);
