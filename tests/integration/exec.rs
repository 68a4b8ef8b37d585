//! Executors driven in-process with real worker processes: the stdlib
//! Python client, AWS's Rust `lambda_runtime` (examples/lambda_echo.rs) and
//! Python `awslambdaric` (venv from .ci/deps-exec.sh), plus crash, hang,
//! saturation, scaling, drain, command functions and metering.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::config::{self, Topology};
use fnroute::exec::{ExecError, Executors, FunctionStats, Invocation, Output};
use serde_json::{json, Value};
use tokio::time::Instant;

const EXECUTORS: &str = "keep_warm_ms = 60000\nqueue = 8\nqueue_timeout_ms = 2000";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A one-edge topology "local" (capacity 16) with `functions`, read as if
/// from edge-config/ (so `functions/…` paths resolve there).
fn topology(executors: &str, functions: &str) -> Arc<Topology> {
    let text = format!(
        r#"zone = "fn.test."
geo_db = "../geo/sample.mmdb"
default_location = {{ lat = 50.11, lon = 8.68 }}

[executors]
{executors}

[[edge]]
name = "local"
location = {{ lat = 50.11, lon = 8.68 }}
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
capacity = 16

{functions}
"#
    );
    let path = root().join("edge-config/exec-test.toml");
    Arc::new(config::parse(&path, &text).unwrap_or_else(|e| panic!("test topology: {e}")))
}

fn start(executors: &str, functions: &str) -> Arc<Executors> {
    if std::env::var_os("FNROUTE_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    Executors::start(topology(executors, functions), 0).expect("executors start")
}

fn inv(function: &str, payload: Value, timeout: Duration) -> Invocation {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    Invocation {
        function: function.into(),
        payload: Bytes::from(payload.to_string()),
        deadline: Instant::now() + timeout,
        request_id: format!("req-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
        trace: None,
    }
}

async fn call(ex: &Executors, function: &str, payload: Value) -> Result<Output, ExecError> {
    ex.invoke(inv(function, payload, Duration::from_secs(10)))
        .await
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.body)
        .unwrap_or_else(|e| panic!("not json ({e}): {:?}", String::from_utf8_lossy(&out.body)))
}

fn stats(ex: &Executors, function: &str) -> FunctionStats {
    ex.stats()
        .into_iter()
        .find(|s| s.function == function)
        .unwrap_or_else(|| panic!("no stats for {function}"))
}

fn lambda(name: &str, command: &str, extra: &str) -> String {
    format!(
        "[[function]]\nname = \"{name}\"\nexecutor = {{ kind = \"lambda\", command = {command} }}\n{extra}\n"
    )
}

/// The Rust `lambda_runtime` example binary, next to this test binary.
fn rust_example() -> String {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let p = dir.join("examples").join("lambda_echo");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --example lambda_echo` \
         (a plain `cargo test` builds examples; a `--test integration` filter alone does not)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// The awslambdaric venv; fails naming the script that creates it.
fn require_awslambdaric() {
    let py = root().join("target/venv-exec/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import awslambdaric"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "awslambdaric is not installed in {}: run .ci/deps-exec.sh",
        py.display()
    );
}

/// The command a user writes for an awslambdaric function: the venv's own
/// `bin/python` (a symlink to the base interpreter), by absolute path, no
/// wrapper.
fn ric_command(handler: &str) -> String {
    let py = root().join("target/venv-exec/bin/python");
    format!(
        r#"[{:?}, "-m", "awslambdaric", {handler:?}]"#,
        py.to_string_lossy()
    )
}

fn alive(pid: i32) -> bool {
    // A zombie (state Z) is as good as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    // Limits are generous (×4): CI machines are small and loaded, and a
    // condition that holds ends the wait at once anyway.
    let until = Instant::now() + limit * 4;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn function_error(r: Result<Output, ExecError>) -> (String, String) {
    match r {
        Err(ExecError::Function {
            error_type,
            message,
        }) => (error_type, message),
        other => panic!("expected a function error, got {other:?}"),
    }
}

// ---- the stdlib Python client (edge-config/functions/lambda_runtime.py) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdlib_python_round_trip_errors_and_warm_reuse() {
    let ex = start(
        EXECUTORS,
        &(lambda("echo", r#"["python3", "functions/echo.py"]"#, "")
            + &lambda("hello", r#"["python3", "functions/hello.py"]"#, "")),
    );
    let event = json!({"a": 1, "b": ["x", "ü"]});
    let first = call(&ex, "echo", event.clone()).await.expect("echo");
    assert_eq!(json_of(&first), event);
    assert!(first.timing.cold_start, "first invocation starts a worker");
    assert!(first.timing.init > Duration::ZERO);
    let second = call(&ex, "ECHO", json!("again")).await.expect("echo again");
    assert_eq!(json_of(&second), json!("again"));
    assert!(
        !second.timing.cold_start,
        "second invocation reuses the warm worker"
    );
    let s = stats(&ex, "echo");
    assert_eq!(
        (s.workers, s.spawned, s.cold_starts, s.invocations),
        (1, 1, 1, 2)
    );

    let (kind, message) = function_error(call(&ex, "hello", json!({"name": ""})).await);
    assert_eq!(kind, "ValueError");
    assert!(message.contains("must not be empty"), "{message}");
    let ok = call(&ex, "hello", json!({"name": "edge"}))
        .await
        .expect("hello");
    assert_eq!(json_of(&ok)["greeting"], "hello, edge");
    assert_eq!(json_of(&ok)["function"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sees_the_lambda_environment() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"], handler = "probe.handler", env = { PROBE_SETTING = "on", FNROUTE_ADDRESS_SPACE_MB = "2048" }"#,
            "memory_mb = 256\ntimeout_ms = 10000",
        ),
    );
    let mut i = inv("probe", json!({"whoami": true}), Duration::from_secs(5));
    i.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let rid = i.request_id.clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let out = json_of(&ex.invoke(i).await.expect("whoami"));
    let env = &out["env"];
    let api = env["AWS_LAMBDA_RUNTIME_API"].as_str().expect("runtime api");
    assert!(api.starts_with("127.0.0.1:"), "{api}");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "probe");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_REGION"], "local");
    assert_eq!(env["AWS_DEFAULT_REGION"], "local");
    assert_eq!(env["_HANDLER"], "probe.handler");
    assert_eq!(env["PROBE_SETTING"], "on");
    assert_eq!(
        env["FNROUTE_ADDRESS_SPACE_MB"],
        Value::Null,
        "the knob is not passed on"
    );
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"].as_str().is_some());
    let cwd = PathBuf::from(out["cwd"].as_str().expect("cwd"));
    assert_eq!(
        cwd.canonicalize().ok(),
        root().join("edge-config").canonicalize().ok()
    );
    assert_eq!(
        env["LAMBDA_TASK_ROOT"].as_str().map(PathBuf::from),
        Some(root().join("edge-config"))
    );
    assert_eq!(out["request_id"], rid.as_str());
    assert_eq!(
        out["arn"],
        "arn:aws:lambda:local:000000000000:function:probe"
    );
    assert_eq!(
        out["trace"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let deadline = out["deadline_ms"].as_i64().expect("deadline");
    assert!(
        (now_ms + 4000..=now_ms + 6000).contains(&deadline),
        "deadline {deadline} not ~5 s after {now_ms}"
    );
}

/// Sends `GET /nope` to `api` from `python3` run as `uid` (None: ours) and
/// returns the first bytes of the reply (empty: the connection was closed
/// without one), or None when this process may not switch users.
fn runtime_api_reply(api: &str, uid: Option<u32>) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let (host, port) = api.split_once(':').expect("host:port");
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{host}', {port}), timeout=3)\n\
         s.sendall(b'GET /nope HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         try:\n    d = s.recv(12)\n\
         except OSError:\n    d = b''\n\
         print(d.decode('latin-1'), end='')\n"
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).current_dir("/");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    match cmd.output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(e) => panic!("python3: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_refuses_other_users() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"], handler = "probe.handler""#,
            "timeout_ms = 10000",
        ),
    );
    let out = json_of(
        &ex.invoke(inv(
            "probe",
            json!({"whoami": true}),
            Duration::from_secs(5),
        ))
        .await
        .expect("whoami"),
    );
    let api = out["env"]["AWS_LAMBDA_RUNTIME_API"]
        .as_str()
        .expect("runtime api")
        .to_string();
    // Our own user is served (an unknown path: nothing is taken).
    let ours = tokio::task::spawn_blocking({
        let api = api.clone();
        move || runtime_api_reply(&api, None)
    })
    .await
    .unwrap();
    assert_eq!(ours.as_deref(), Some("HTTP/1.1 404"));
    // Another user (nobody) is refused: the connection closes unanswered.
    let theirs = tokio::task::spawn_blocking(move || runtime_api_reply(&api, Some(65534)))
        .await
        .unwrap();
    let reply = theirs.unwrap_or_else(|| {
        panic!(
            "prerequisite missing: this test runs a client as user nobody (uid 65534), which \
             needs root; run the tests as root (CI and tests/run.sh on the project's machines do)"
        )
    });
    assert_eq!(reply, "", "another user got an answer");
    // The worker still serves invocations.
    ex.invoke(inv(
        "probe",
        json!({"whoami": true}),
        Duration::from_secs(5),
    ))
    .await
    .expect("still serving");
}

// ---- deadlines, crashes, hangs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_kills_the_worker_and_the_pool_recovers() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "timeout_ms = 600",
        ),
    );
    let warm = json_of(
        &call(&ex, "probe", json!({"whoami": true}))
            .await
            .expect("warm up"),
    );
    let pid = warm["pid"].as_i64().expect("pid") as i32;
    let t0 = Instant::now();
    // The caller allows 10 s, the function's timeout_ms is 600.
    let r = call(&ex, "probe", json!({"sleep_ms": 5000})).await;
    let took = t0.elapsed();
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    // Far below the 5 s sleep: the function's timeout, not the caller's, ended it.
    assert!(took < Duration::from_millis(4000), "took {took:?}");
    eventually("the worker to die", Duration::from_secs(2), || !alive(pid)).await;
    assert_eq!(stats(&ex, "probe").kills, 1);
    let after = json_of(
        &call(&ex, "probe", json!({"whoami": true}))
            .await
            .expect("recovered"),
    );
    assert_ne!(after["pid"], warm["pid"], "a new worker");
    // The caller's own deadline applies too.
    let r = ex
        .invoke(inv(
            "probe",
            json!({"sleep_ms": 5000}),
            Duration::from_millis(300),
        ))
        .await;
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_fails_the_invocation_and_the_worker_is_replaced() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "concurrency = { min = 1, max = 2 }",
        ),
    );
    eventually("the min worker", Duration::from_secs(5), || {
        stats(&ex, "probe").idle == 1
    })
    .await;
    let t0 = Instant::now();
    let r = call(&ex, "probe", json!({"exit": 7})).await;
    match &r {
        Err(ExecError::Crashed(m)) => assert!(m.contains("7"), "{m}"),
        other => panic!("expected Crashed, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "crash answered without hanging (the match above shows it was not a timeout)"
    );
    // concurrency min = 1: a replacement starts without any invocation.
    eventually("a replacement worker", Duration::from_secs(5), || {
        stats(&ex, "probe").idle == 1
    })
    .await;
    let s = stats(&ex, "probe");
    assert_eq!((s.crashes, s.spawned), (1, 2));
    assert_eq!(
        json_of(&call(&ex, "probe", json!("ok")).await.expect("after crash")),
        json!("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_worker_fails_fast_and_backs_off() {
    let ex = start(
        "keep_warm_ms = 60000\nqueue = 8\nqueue_timeout_ms = 5000",
        &lambda(
            "broken",
            r#"["python3", "../tests/functions/probe.py"], env = { PROBE_EXIT_ON_START = "3" }"#,
            "",
        ),
    );
    let mut last = Duration::ZERO;
    for _ in 0..4 {
        let t0 = Instant::now();
        let r = call(&ex, "broken", json!({})).await;
        last = t0.elapsed();
        assert!(
            matches!(&r, Err(ExecError::Crashed(m)) if m.contains("before asking for work")),
            "{r:?}"
        );
    }
    // After the third crash in a row the replacement waits 100 ms.
    assert!(last >= Duration::from_millis(100), "no backoff: {last:?}");
    let s = stats(&ex, "broken");
    assert_eq!((s.crashes, s.spawned, s.workers), (4, 4, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_is_killed_with_its_process_group() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "timeout_ms = 800",
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("child.pid");
    let r = call(&ex, "probe", json!({"child_pid_file": pid_file})).await;
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    let child: i32 = std::fs::read_to_string(&pid_file)
        .expect("child pid written")
        .trim()
        .parse()
        .expect("pid");
    eventually("the worker's child to die", Duration::from_secs(2), || {
        !alive(child)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_capped() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "memory_mb = 64",
        ),
    );
    let small = json_of(
        &call(&ex, "probe", json!({"alloc_mb": 16}))
            .await
            .expect("16 MiB fits"),
    );
    assert_eq!(small["allocated"], 16 * 1024 * 1024);
    let (kind, _) = function_error(call(&ex, "probe", json!({"alloc_mb": 1024})).await);
    assert_eq!(kind, "MemoryError");
}

// ---- admission, scaling, drain ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_then_recovery() {
    let ex = start(
        "keep_warm_ms = 60000\nqueue = 1\nqueue_timeout_ms = 300",
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "concurrency = { min = 1, max = 1 }",
        ),
    );
    eventually("the min worker", Duration::from_secs(5), || {
        stats(&ex, "probe").idle == 1
    })
    .await;
    let busy = {
        let ex = ex.clone();
        tokio::spawn(async move { call(&ex, "probe", json!({"sleep_ms": 1000})).await })
    };
    eventually("the worker to be busy", Duration::from_secs(2), || {
        stats(&ex, "probe").busy == 1
    })
    .await;
    // One may queue; it gives up after queue_timeout_ms.
    let queued = {
        let ex = ex.clone();
        tokio::spawn(async move { call(&ex, "probe", json!("queued")).await })
    };
    eventually("one queued", Duration::from_secs(2), || {
        stats(&ex, "probe").queued == 1
    })
    .await;
    let t0 = Instant::now();
    let full = call(&ex, "probe", json!("rejected")).await;
    assert!(matches!(full, Err(ExecError::Saturated { .. })), "{full:?}");
    // Far below the 5 s queue timeout: refused at once, not after waiting.
    assert!(t0.elapsed() < Duration::from_millis(1000), "fails fast");
    let q = queued.await.expect("join");
    assert!(
        matches!(q, Err(ExecError::Saturated { .. })),
        "queue timeout: {q:?}"
    );
    assert!(busy.await.expect("join").is_ok());
    assert_eq!(
        json_of(&call(&ex, "probe", json!("back")).await.expect("recovered")),
        json!("back")
    );
    assert_eq!(stats(&ex, "probe").saturated, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_under_concurrency_and_down_when_idle() {
    let ex = start(
        "keep_warm_ms = 400\nqueue = 16\nqueue_timeout_ms = 5000",
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "concurrency = { min = 0, max = 3 }",
        ),
    );
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let ex = ex.clone();
            tokio::spawn(async move {
                call(&ex, "probe", json!({"sleep_ms": 400, "whoami": true})).await
            })
        })
        .collect();
    let mut peak = 0;
    let mut pids = std::collections::HashSet::new();
    for c in calls {
        while !c.is_finished() {
            peak = peak.max(stats(&ex, "probe").workers);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = c.await.expect("join").expect("invocation");
        pids.insert(json_of(&out)["pid"].as_i64().expect("pid"));
    }
    assert_eq!(peak, 3, "grew to concurrency max");
    assert_eq!(pids.len(), 3, "three workers served six invocations");
    // Parallelism is shown by the three workers above, not by timing
    // (the machine is shared): serially the six calls would take 2.4 s.
    let s = stats(&ex, "probe");
    assert_eq!((s.spawned, s.cold_starts), (3, 3));
    eventually("idle workers to retire", Duration::from_secs(3), || {
        stats(&ex, "probe").workers == 0
    })
    .await;
    assert_eq!(stats(&ex, "probe").retired, 3);
    for pid in pids {
        eventually("retired worker to exit", Duration::from_secs(2), || {
            !alive(pid as i32)
        })
        .await;
    }
    // Scale from zero again.
    let out = call(&ex, "probe", json!("again")).await.expect("from zero");
    assert!(out.timing.cold_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_then_kills_workers() {
    let ex = start(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "concurrency = { min = 3, max = 3 }",
        ),
    );
    eventually("min workers", Duration::from_secs(5), || {
        stats(&ex, "probe").idle == 3
    })
    .await;
    let running: Vec<_> = (0..2)
        .map(|_| {
            let ex = ex.clone();
            tokio::spawn(async move {
                call(&ex, "probe", json!({"sleep_ms": 500, "whoami": true})).await
            })
        })
        .collect();
    eventually("two busy", Duration::from_secs(2), || {
        stats(&ex, "probe").busy == 2
    })
    .await;
    assert!(ex.load() > 0.0);
    let drain = {
        let ex = ex.clone();
        tokio::spawn(async move { ex.drain(Duration::from_secs(5)).await })
    };
    eventually("draining", Duration::from_secs(1), || ex.is_draining()).await;
    let refused = call(&ex, "probe", json!("late")).await;
    assert!(
        matches!(refused, Err(ExecError::ShuttingDown)),
        "{refused:?}"
    );
    let mut pids = Vec::new();
    for r in running {
        let out = r
            .await
            .expect("join")
            .expect("in-flight invocation completes");
        pids.push(json_of(&out)["pid"].as_i64().expect("pid") as i32);
    }
    drain.await.expect("drain");
    assert_eq!(stats(&ex, "probe").workers, 0);
    assert_eq!(ex.load(), 0.0);
    for pid in pids {
        assert!(!alive(pid), "worker {pid} killed after drain");
    }
}

// ---- AWS's runtime clients ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_lambda_runtime_round_trip_error_and_deadline() {
    let bin = rust_example();
    let ex = start(
        EXECUTORS,
        &lambda(
            "rust",
            &format!("[{bin:?}]"),
            "timeout_ms = 700\nmemory_mb = 128",
        ),
    );
    let event = json!({"hello": "rust", "n": [1, 2, 3]});
    let out = call(&ex, "rust", event.clone()).await.expect("rust echo");
    assert_eq!(json_of(&out), event);
    assert!(out.timing.cold_start);
    let (kind, message) = function_error(
        call(
            &ex,
            "rust",
            json!({"error": "Custom.Failure", "message": "nope"}),
        )
        .await,
    );
    assert_eq!(
        (kind.as_str(), message.as_str()),
        ("Custom.Failure", "nope")
    );
    let warm = call(&ex, "rust", json!("warm")).await.expect("warm");
    assert!(!warm.timing.cold_start);
    let r = call(&ex, "rust", json!({"sleep_ms": 3000})).await;
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    assert_eq!(
        json_of(&call(&ex, "rust", json!(42)).await.expect("after kill")),
        json!(42)
    );
    let s = stats(&ex, "rust");
    assert_eq!((s.kills, s.spawned), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awslambdaric_round_trip_error_and_deadline() {
    require_awslambdaric();
    let ex = start(
        EXECUTORS,
        &lambda(
            "ric",
            &ric_command("functions/ric_echo.handler"),
            "timeout_ms = 1500\nmemory_mb = 128",
        ),
    );
    let event = json!({"hello": "ric", "list": [true, null]});
    let out = call(&ex, "ric", event.clone()).await.expect("ric echo");
    assert_eq!(json_of(&out), event);
    let (kind, message) =
        function_error(call(&ex, "ric", json!({"error": "BadThing", "message": "nope"})).await);
    assert_eq!((kind.as_str(), message.as_str()), ("BadThing", "nope"));
    let r = call(&ex, "ric", json!({"sleep_ms": 5000})).await;
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    assert_eq!(
        json_of(&call(&ex, "ric", json!("back")).await.expect("after kill")),
        json!("back")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awslambdaric_init_error_reaches_the_caller() {
    require_awslambdaric();
    let ex = start(
        EXECUTORS,
        &lambda("ric", &ric_command("functions/no_such_module.handler"), ""),
    );
    let (kind, message) = function_error(call(&ex, "ric", json!({})).await);
    assert_eq!(kind, "Runtime.ImportModuleError", "{message}");
    assert!(message.contains("no_such_module"), "{message}");
    assert_eq!(stats(&ex, "ric").init_errors, 1);
}

// ---- command functions ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_functions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("hang.pid");
    let functions = format!(
        r#"[[function]]
name = "upper"
executor = {{ kind = "command", command = ["functions/upper.sh"] }}

[[function]]
name = "fail"
executor = {{ kind = "command", command = ["../tests/functions/fail.sh"] }}

[[function]]
name = "hang"
executor = {{ kind = "command", command = ["../tests/functions/hang.sh"], env = {{ HANG_PID_FILE = {:?} }} }}
timeout_ms = 500
"#,
        pid_file.to_string_lossy()
    );
    let ex = start(EXECUTORS, &functions);
    let out = ex
        .invoke(Invocation {
            payload: Bytes::from_static(b"hello edge"),
            ..inv("upper", json!(null), Duration::from_secs(5))
        })
        .await
        .expect("upper");
    assert_eq!(&out.body[..], b"HELLO EDGE");
    let (kind, message) = function_error(call(&ex, "fail", json!("x")).await);
    assert_eq!(kind, "CommandFailed");
    assert!(
        message.contains("something went wrong: bad input"),
        "{message}"
    );
    assert!(message.contains('3'), "{message}");
    let t0 = Instant::now();
    let r = call(&ex, "hang", json!("x")).await;
    assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    // The 500 ms timeout ended it, not the 300 s sleep (slack for a loaded machine).
    assert!(t0.elapsed() < Duration::from_millis(5000));
    let child: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    eventually("the command's child to die", Duration::from_secs(2), || {
        !alive(child)
    })
    .await;
    assert_eq!(stats(&ex, "hang").kills, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_concurrency_is_bounded() {
    let ex = start(
        "keep_warm_ms = 60000\nqueue = 1\nqueue_timeout_ms = 5000",
        r#"[[function]]
name = "slow"
executor = { kind = "command", command = ["sh", "-c", "sleep 0.4; cat"] }
concurrency = { min = 0, max = 1 }
"#,
    );
    let a = {
        let ex = ex.clone();
        tokio::spawn(async move { call(&ex, "slow", json!("a")).await })
    };
    eventually("one running", Duration::from_secs(2), || {
        stats(&ex, "slow").busy == 1
    })
    .await;
    let b = {
        let ex = ex.clone();
        tokio::spawn(async move { call(&ex, "slow", json!("b")).await })
    };
    eventually("one waiting", Duration::from_secs(2), || {
        stats(&ex, "slow").queued == 1
    })
    .await;
    let c = call(&ex, "slow", json!("c")).await;
    assert!(matches!(c, Err(ExecError::Saturated { .. })), "{c:?}");
    assert_eq!(json_of(&a.await.expect("join").expect("a")), json!("a"));
    assert_eq!(json_of(&b.await.expect("join").expect("b")), json!("b"));
}

// ---- metering and lookup ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_and_unknown_functions() {
    let ex = start(
        EXECUTORS,
        &(lambda(
            "echo",
            r#"["python3", "functions/echo.py"]"#,
            "memory_mb = 512",
        ) + &lambda("hello", r#"["python3", "functions/hello.py"]"#, "")),
    );
    for i in 0..3 {
        call(&ex, "echo", json!(i)).await.expect("echo");
    }
    let _ = call(&ex, "hello", json!({"name": ""})).await;
    let m = ex.metering();
    let echo = m
        .iter()
        .find(|t| t.function == "echo")
        .expect("echo totals");
    assert_eq!((echo.invocations, echo.errors, echo.memory_mb), (3, 0, 512));
    assert_eq!(echo.edge, "local");
    assert!(echo.billed_ms >= 3);
    assert!(u128::from(echo.billed_ms) * 1_000_000 >= echo.duration.as_nanos());
    assert_eq!(echo.mb_ms, 512 * u128::from(echo.billed_ms));
    assert!((echo.gb_seconds - echo.billed_ms as f64 * 0.5 / 1000.0).abs() < 1e-9);
    let hello = m
        .iter()
        .find(|t| t.function == "hello")
        .expect("hello totals");
    assert_eq!((hello.invocations, hello.errors), (1, 1));
    let r = call(&ex, "nope", json!({})).await;
    assert!(
        matches!(r, Err(ExecError::UnknownFunction(ref n)) if n == "nope"),
        "{r:?}"
    );
    assert!(ex.function("echo").is_some());
    assert!(ex.function("nope").is_none());
}

// ---- worker output goes to the edge log ----

#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// A current-thread runtime so the thread-local subscriber sees the log
/// forwarding tasks.
#[test]
fn worker_output_is_logged_with_function_and_request_id() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("fnroute::function=info")
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ex = start(
            EXECUTORS,
            &lambda("probe", r#"["python3", "../tests/functions/probe.py"]"#, ""),
        );
        let mut i = inv(
            "probe",
            json!({"print": "marker-7d3f"}),
            Duration::from_secs(10),
        );
        i.request_id = "req-logged-1".into();
        ex.invoke(i).await.expect("print");
        eventually("both lines in the log", Duration::from_secs(2), || {
            capture.text().matches("marker-7d3f").count() >= 2
        })
        .await;
        ex.drain(Duration::from_secs(1)).await;
    });
    let log = capture.text();
    for stream in ["stdout", "stderr"] {
        let line = log
            .lines()
            .find(|l| l.contains("marker-7d3f") && l.contains(stream))
            .unwrap_or_else(|| panic!("no {stream} line in {log}"));
        assert!(line.contains("function=probe"), "{line}");
        assert!(line.contains("req=req-logged-1"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_shutdown_drains_the_edge_executors() {
    let topo = topology(
        EXECUTORS,
        &lambda(
            "probe",
            r#"["python3", "../tests/functions/probe.py"]"#,
            "concurrency = { min = 1, max = 2 }",
        ),
    );
    let fleet = fnroute::node::Fleet::start(topo, &[0])
        .await
        .expect("fleet");
    let ex = fleet.edges[0].exec.clone();
    eventually("the min worker", Duration::from_secs(5), || {
        stats(&ex, "probe").idle == 1
    })
    .await;
    let running = {
        let ex = ex.clone();
        tokio::spawn(
            async move { call(&ex, "probe", json!({"sleep_ms": 400, "whoami": true})).await },
        )
    };
    eventually("busy", Duration::from_secs(2), || {
        stats(&ex, "probe").busy == 1
    })
    .await;
    fleet.shutdown(Duration::from_secs(5)).await;
    let out = running
        .await
        .expect("join")
        .expect("in-flight invocation finished");
    let pid = json_of(&out)["pid"].as_i64().expect("pid") as i32;
    assert!(ex.is_draining());
    assert_eq!(stats(&ex, "probe").workers, 0);
    assert!(!alive(pid), "worker killed by shutdown");
    let r = call(&ex, "probe", json!("late")).await;
    assert!(matches!(r, Err(ExecError::ShuttingDown)), "{r:?}");
}

/// `[executors] metering_log`: one JSON line per invocation, for billing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_log_has_one_json_line_per_invocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("metering.jsonl");
    let ex = start(
        &format!("{EXECUTORS}\nmetering_log = {:?}", log.display().to_string()),
        "[[function]]\nname = \"up\"\nexecutor = { kind = \"command\", command = [\"tr\", \"a-z\", \"A-Z\"] }\nmemory_mb = 64\n\n[[function]]\nname = \"bad\"\nexecutor = { kind = \"command\", command = [\"false\"] }\n",
    );
    let a = inv("up", json!("x"), Duration::from_secs(10));
    let rid = a.request_id.clone();
    ex.invoke(a).await.expect("up runs");
    assert!(call(&ex, "bad", json!(null)).await.is_err());
    ex.drain(Duration::from_secs(5)).await;
    let mut lines = Vec::new();
    eventually("two metering lines", Duration::from_secs(2), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .collect();
        lines.len() == 2
    })
    .await;
    let up = lines
        .iter()
        .find(|l| l["function"] == "up")
        .expect("up metered");
    assert_eq!(up["edge"], "local");
    assert_eq!(up["request_id"], rid.as_str());
    assert_eq!(up["memory_mb"], 64);
    assert_eq!(up["outcome"], "ok");
    assert!(up["billed_ms"].as_u64().expect("billed") >= 1);
    assert!(up["start_unix_ms"].as_u64().expect("start") > 1_700_000_000_000);
    let bad = lines
        .iter()
        .find(|l| l["function"] == "bad")
        .expect("bad metered");
    assert_eq!(bad["outcome"], "error");
    // Nothing dropped (exported as fnroute_metering_log_dropped_total).
    assert_eq!(ex.metering_log_dropped(), Some(0));
}
