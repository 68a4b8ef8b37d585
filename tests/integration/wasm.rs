//! `kind = "wasm"`: wasi:http components run in-process, over HTTP/3 and
//! HTTPS over TCP, with real components: the hand-written fixtures of
//! `tests/wasm/` (component text, made binary here by the `wat` crate) and
//! the Python example `edge-config/functions/hello-wasm`, built by
//! componentize-py through the project's own `build-wasm.sh`
//! (`.ci/deps-wasm.sh` runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::harness::{start, Opts, TestEdge};
use crate::web::curl;

/// `tests/wasm/<name>.wat` as a binary component in a folder shared by the
/// tests of this run; its absolute path.
pub(crate) fn fixture(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let out = dir.path().join(format!("{name}.wasm"));
    if !out.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/wasm")
            .join(format!("{name}.wat"));
        let bytes = wat::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, bytes).expect("write fixture");
        std::fs::rename(&tmp, &out).expect("rename fixture");
    }
    out
}

/// A `[[function]]` running `component` (an absolute path, or one relative
/// to the test topology, e.g. `functions/hello-wasm/hello.wasm`).
fn wasm_fn(name: &str, component: &Path, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\nedges = [\"fra\"]\nexecutor = {{ kind = \"wasm\", component = \"{}\" }}\n{extra}\n",
        component.display()
    )
}

/// The example component, built by the project's script (a no-op when it
/// is up to date).
pub(crate) fn python_example() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("edge-config/functions/build-wasm.sh"))
        .output()
        .expect("build-wasm.sh runs");
    assert!(
        out.status.success(),
        "edge-config/functions/build-wasm.sh failed (is componentize-py installed? .ci/deps-wasm.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("edge-config/functions/hello-wasm/hello.wasm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_answers_over_http3_and_tcp_with_a_fresh_instance() {
    let mut edge = start(Opts {
        functions: wasm_fn("tiny", &fixture("hello"), "")
            + &wasm_fn("echo-wasm", &fixture("echo"), ""),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    for _ in 0..3 {
        let r = conn
            .invoke("tiny", Bytes::from_static(b"{}"))
            .await
            .expect("invoke");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(&r.body[..], b"hello from wasm\n");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        // Every call instantiates: `cold` carries the instantiation time.
        let timing = r.header("server-timing").expect("server-timing");
        assert!(timing.contains("cold;dur="), "{timing}");
    }
    // The event is the request body.
    let r = conn
        .invoke("echo-wasm", Bytes::from_static(b"an event"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"an event");
    for proto in ["--http1.1", "--http2"] {
        let r = curl(
            &edge,
            proto,
            "fra.fn.test",
            "/fn/echo-wasm",
            &["--data-binary", "over tcp"],
        );
        assert_eq!(r.status, 200, "{proto}");
        assert_eq!(r.body, b"over tcp", "{proto}");
    }
    edge.shutdown().await;
}

/// Invokes `name` over HTTP/3 and returns status and problem JSON.
async fn problem(edge: &TestEdge, name: &str) -> (u16, serde_json::Value, Duration) {
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let t = Instant::now();
    let r = conn
        .invoke(name, Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    let took = t.elapsed();
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&r.body)));
    (r.status, v, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_loops_memory_bombs_and_huge_or_endless_bodies_are_contained() {
    let mut edge = start(Opts {
        functions: wasm_fn("tiny", &fixture("hello"), "")
            + &wasm_fn("trap", &fixture("trap"), "")
            + &wasm_fn("spin", &fixture("loop"), "timeout_ms = 400")
            + &wasm_fn("bomb", &fixture("bomb"), "memory_mb = 32")
            + &wasm_fn("huge", &fixture("big"), "")
            + &wasm_fn("stall", &fixture("stall"), "timeout_ms = 400"),
        ..Opts::default()
    })
    .await;

    let (status, v, _) = problem(&edge, "trap").await;
    assert_eq!(status, 502, "{v}");
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("wasm trap"), "{detail}");
    assert!(detail.contains("unreachable"), "{detail}");

    // An infinite loop: 504 at its deadline, the instance gone, again.
    for _ in 0..2 {
        let (status, v, took) = problem(&edge, "spin").await;
        assert_eq!(status, 504, "{v}");
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    // A memory bomb: refused at memory_mb, named in the error.
    let (status, v, _) = problem(&edge, "bomb").await;
    assert_eq!(status, 502, "{v}");
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("memory limit of 32 MB"), "{detail}");

    // 8 MiB is more than the 6 MiB a result may be.
    let (status, v, _) = problem(&edge, "huge").await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["errorType"], "ResponseSizeTooLarge", "{v}");

    // Headers and a first chunk, then nothing: 504, never a short 200.
    let (status, v, took) = problem(&edge, "stall").await;
    assert_eq!(status, 504, "{v}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The edge is unaffected: the next call is fine and nothing is left
    // running.
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let r = conn
        .invoke("tiny", Bytes::from_static(b"{}"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{r:?}");
    let fleet = edge.fleet.as_ref().expect("fleet");
    let admin = fleet.admin[0];
    let s: serde_json::Value =
        serde_json::from_slice(&crate::admin::get(admin, "/status").await.body).expect("status");
    let functions = s["functions"].as_array().expect("functions");
    let spin = functions
        .iter()
        .find(|f| f["name"] == "spin")
        .expect("spin in /status");
    assert_eq!(spin["executor"], "wasm", "{spin}");
    assert_eq!(spin["pools"]["fra"]["busy"], 0, "{spin}");
    // Both loops were killed at their deadline and metered, like a Lambda
    // worker's.
    let metrics = crate::admin::get(admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = |name: &str, labels: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        line(
            "fnroute_pool_events_total",
            &["function=\"spin\"", "event=\"kill\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        line("fnroute_metering_invocations_total", &["function=\"spin\""]),
        Some(2.0),
        "{text}"
    );
    edge.shutdown().await;
}

/// `fnroute` with `args`, its exit code and stderr.
fn fnroute(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args(args)
        .output()
        .expect("fnroute runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A one-edge topology file in `dir` with one wasm function.
fn topology_with(dir: &Path, component: &Path) -> PathBuf {
    let geo = concat!(env!("CARGO_MANIFEST_DIR"), "/geo/sample.mmdb");
    let text = format!(
        r#"zone = "fn.test."
geo_db = "{geo}"
default_location = {{ lat = 50.11, lon = 8.68 }}
state_dir = "{state}"

[[edge]]
name = "solo"
location = {{ lat = 50.11, lon = 8.68 }}
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[function]]
name = "w"
executor = {{ kind = "wasm", component = "{component}" }}
"#,
        state = dir.join("state").display(),
        component = component.display(),
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).expect("write topology");
    path
}

#[test]
fn bad_components_are_refused_before_any_port_is_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not a component at all: the file's line and what to give instead.
    let core = fixture("not-a-component");
    let path = topology_with(dir.path(), &core);
    let (code, err) = fnroute(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("topology.toml:"), "{err}");
    assert!(
        err.contains("a core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(err.contains("wasi:http/proxy"), "{err}");
    // A component of another world: found when it is compiled, by check
    // and by serve, which exits 64 without binding.
    let other = fixture("noexport");
    let path = topology_with(dir.path(), &other);
    for args in [
        vec!["check", path.to_str().expect("utf-8")],
        vec!["serve", "--config", path.to_str().expect("utf-8")],
    ] {
        let (code, err) = fnroute(&args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(err.contains("incoming-handler"), "{args:?}: {err}");
        assert!(err.contains("noexport.wasm"), "{args:?}: {err}");
        assert!(!err.contains("edge started"), "{args:?}: {err}");
    }
}

#[test]
fn components_compile_once_per_content_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = topology_with(dir.path(), &fixture("hello"));
    let path = path.to_str().expect("utf-8");
    let (code, err) = fnroute(&["check", path]);
    assert_eq!(code, Some(0), "{err}");
    let cache = dir.path().join("state/wasm-cache");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("the cache folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("cwasm"));
    let before = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    std::thread::sleep(Duration::from_millis(20));
    // The same bytes again: loaded, not compiled (the artifact untouched).
    let (code, err) = fnroute(&["check", path]);
    assert_eq!(code, Some(0), "{err}");
    let after = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);
    assert_eq!(std::fs::read_dir(&cache).expect("cache").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_serves_its_url_with_only_the_topology_env() {
    let app = python_example();
    // An upstream on loopback for the outgoing requests.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream")
                    .await;
            });
        }
    });
    let mut edge = start(Opts {
        functions: wasm_fn(
            "py",
            &app,
            "interface = \"http\"\nmemory_mb = 128\ntimeout_ms = 5000",
        )
        .replace(
            "kind = \"wasm\",",
            "kind = \"wasm\", env = { FN_GREETING = \"hi\" },",
        ) + &wasm_fn(
            "pyout",
            &app,
            &format!(
                "interface = \"http\"\nmemory_mb = 128\ntimeout_ms = 5000\nallow_outbound = [\"127.0.0.1:{}\"]",
                up.port()
            ),
        ),
        ..Opts::default()
    })
    .await;
    let r = curl(&edge, "--http2", "py.fn.test", "/hello?x=1", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["hello"], "wasm", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["path"], "/hello?x=1", "{v}");

    // The environment is the topology's `env`, nothing of the edge's.
    let r = curl(&edge, "--http1.1", "py.fn.test", "/env", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"FN_GREETING": "hi"}));

    // The client's request, body and content type included.
    let r = curl(
        &edge,
        "--http1.1",
        "py.fn.test",
        "/echo",
        &[
            "-H",
            "content-type: text/x-test",
            "--data-binary",
            "echo me",
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"echo me");
    assert_eq!(r.header("content-type"), Some("text/x-test"));

    // A Python MemoryError at memory_mb that the function handles itself.
    let r = curl(&edge, "--http1.1", "py.fn.test", "/bomb", &[]);
    assert_eq!(r.status, 507, "{}", String::from_utf8_lossy(&r.body));

    // An escaping exception: a 502 naming the trap and the traceback.
    let r = curl(&edge, "--http1.1", "py.fn.test", "/raise", &[]);
    assert_eq!(r.status, 502);
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("wasm trap"), "{detail}");
    assert!(detail.contains("RuntimeError"), "{detail}");

    // Outgoing HTTP: refused unless allow_outbound lists the destination.
    let target = format!("/outbound?url=http://127.0.0.1:{}/", up.port());
    let r = curl(&edge, "--http1.1", "py.fn.test", &target, &[]);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("HttpRequestDenied"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = curl(&edge, "--http1.1", "pyout.fn.test", &target, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"upstream");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_drops_its_instance() {
    let mut edge = start(Opts {
        functions: wasm_fn(
            "spin",
            &fixture("loop"),
            "timeout_ms = 30000\nconcurrency = { max = 1 }",
        ),
        ..Opts::default()
    })
    .await;
    let admin = edge.fleet.as_ref().expect("fleet").admin[0];
    let busy = || async {
        let s: serde_json::Value =
            serde_json::from_slice(&crate::admin::get(admin, "/status").await.body)
                .expect("status");
        s["functions"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == "spin"))
            .map(|f| f["pools"]["fra"]["busy"].clone())
            .unwrap_or_default()
    };
    for proto in ["--http1.1", "--http2"] {
        // curl gives up after half a second, 29.5 s before the deadline.
        let out = Command::new("curl")
            .args(["-sk", proto, "--max-time", "0.5", "--data", "x"])
            .arg(format!("https://127.0.0.1:{}/fn/spin", edge.tcp.port()))
            .output()
            .expect("curl runs");
        assert_eq!(out.status.code(), Some(28), "{proto}: curl timed out");
        let until = Instant::now() + Duration::from_secs(5);
        while busy().await != 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            busy().await,
            0,
            "{proto}: the instance is gone, its slot free"
        );
    }
    // The one slot is free: the next call is admitted (not refused as
    // saturated) and loops.
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        conn.invoke("spin", Bytes::from_static(b"x")),
    )
    .await;
    assert!(r.is_err(), "answered after {:?}: {r:?}", t.elapsed());
    edge.shutdown().await;
}
