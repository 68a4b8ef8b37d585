//! Streaming responses (`streaming = true`) end to end: bytes reach the
//! client as the function writes them, over HTTP/3 (fnroute's client),
//! HTTP/2 (the `h2` crate) and HTTP/1.1 (curl); a failure after the first
//! byte is an abort each client can tell from an end; a client that goes
//! away stops the function and frees its slot.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fnroute::mesh::transport::Request;

use crate::harness::{start, Opts, TestEdge};

/// A streaming command function on fra.
pub(crate) fn stream_fn(name: &str, script: &str, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\nedges = [\"fra\"]\nstreaming = true\n{extra}\nexecutor = {{ kind = \"command\", command = [\"sh\", \"-c\", {script:?}] }}\n"
    )
}

/// Five lines, 100 ms apart, each the time it was written (ns since the
/// epoch).
pub(crate) const TICKS: &str = "for i in 1 2 3 4 5; do date +%s%N; sleep 0.1; done";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Lines of `TICKS` as they arrived: (written, arrived), in ns.
#[derive(Default)]
pub(crate) struct Arrivals {
    pending: Vec<u8>,
    pub(crate) lines: Vec<(u128, u128)>,
}

impl Arrivals {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let at = now_ns();
        self.pending.extend_from_slice(chunk);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim().trim_start_matches("data:").trim();
            if text.is_empty() {
                continue;
            }
            let written: u128 = text
                .parse()
                .unwrap_or_else(|_| panic!("a timestamp line: {text:?}"));
            self.lines.push((written, at));
        }
    }

    /// Each line arrived within `lag` of being written, and they arrived
    /// spread out as they were written (not all at the end).
    pub(crate) fn check(&self, n: usize, lag: Duration, what: &str) {
        assert_eq!(self.lines.len(), n, "{what}: lines {:?}", self.lines);
        for (w, a) in &self.lines {
            let late = a.saturating_sub(*w);
            assert!(
                late < lag.as_nanos(),
                "{what}: a line arrived {} ms after it was written",
                late / 1_000_000
            );
        }
        let first = self.lines[0].1;
        let last = self.lines[n - 1].1;
        let spread = (n as u128 - 1) * 80_000_000;
        assert!(
            last - first >= spread,
            "{what}: lines arrived within {} ms of each other: buffered",
            (last - first) / 1_000_000
        );
    }
}

/// curl over TCP reading as it goes (`-N`); returns the arrivals, exit
/// code and stderr.
fn curl_stream(edge: &TestEdge, proto: &str, path: &str) -> (Arrivals, Option<i32>, String) {
    let port = edge.tcp.port();
    let mut child = Command::new("curl")
        .args(["-sS", "-N", proto, "--max-time", "10", "--cacert"])
        .arg(edge.cert())
        .arg("--resolve")
        .arg(format!("fra.fn.test:{port}:127.0.0.1"))
        .args(["--data-binary", "x"])
        .arg(format!("https://fra.fn.test:{port}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs (.ci/deps-web.sh installs it)");
    let arrivals = read_arrivals(&mut BufReader::new(child.stdout.take().expect("stdout")));
    let status = child.wait_with_output().expect("curl exits");
    (
        arrivals,
        status.status.code(),
        String::from_utf8_lossy(&status.stderr).into_owned(),
    )
}

/// `curl -N --http2 -D -` of `https://{host}:{port}{path}` on fra's TCP
/// listener, its stdout piped: the head first, then the body as it comes.
fn curl_url(edge: &TestEdge, host: &str, path: &str) -> std::process::Child {
    let port = edge.tcp.port();
    Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--http2",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(edge.cert())
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl")
}

/// The response head `curl -D -` printed, lower case.
fn read_head(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            return head;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
}

/// The rest of a child's output, as it arrives.
fn read_arrivals(out: &mut BufReader<std::process::ChildStdout>) -> Arrivals {
    let mut a = Arrivals::default();
    let mut line = Vec::new();
    while out.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        a.push(&line);
        line.clear();
    }
    a
}

/// `POST /fn/{name}` over `conn`, the answer read as it arrives.
async fn invoke_stream(
    conn: &fnroute::mesh::transport::Connection,
    name: &str,
    payload: &'static [u8],
) -> fnroute::mesh::transport::Reply {
    conn.send_streaming(Request::invoke(name, Bytes::from_static(payload)))
        .await
        .expect("invoke")
}

/// A streamed reply read to its end: the bytes, then `None` for a clean
/// end or the abort.
pub(crate) async fn to_end(
    r: &mut fnroute::mesh::transport::Reply,
) -> (Vec<u8>, Option<Result<Bytes, String>>) {
    let mut got = Vec::new();
    loop {
        match r.chunk().await {
            Some(Ok(c)) => got.extend_from_slice(&c),
            other => return (got, other),
        }
    }
}

/// The same over HTTP/2.
async fn h2_to_end(body: &mut h2::RecvStream) -> (Vec<u8>, Option<Result<Bytes, h2::Error>>) {
    let mut got = Vec::new();
    loop {
        match body.data().await {
            Some(Ok(c)) => {
                let _ = body.flow_control().release_capacity(c.len());
                got.extend_from_slice(&c);
            }
            other => return (got, other),
        }
    }
}

/// An h2 request to fra's TCP listener: the response and its body.
async fn h2_post(edge: &TestEdge, path: &str) -> (http::response::Parts, h2::RecvStream) {
    h2_post_with(edge, path, Bytes::from_static(b"x")).await
}

async fn h2_post_with(
    edge: &TestEdge,
    path: &str,
    payload: Bytes,
) -> (http::response::Parts, h2::RecvStream) {
    let tls = crate::web::tls_alpn(edge, &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::post(format!("https://fra.fn.test{path}"))
        .body(())
        .expect("request");
    let (resp, mut body) = send.send_request(req, false).expect("send");
    body.send_data(payload, true).expect("body");
    let resp = resp.await.expect("response");
    resp.into_parts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_streams_its_lines_as_it_writes_them_over_every_protocol() {
    let mut edge = start(Opts {
        functions: stream_fn("ticks", TICKS, ""),
        ..Opts::default()
    })
    .await;
    let lag = Duration::from_millis(60);
    // HTTP/3.
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let mut r = invoke_stream(&conn, "ticks", b"x").await;
    assert_eq!(r.status, 200);
    assert!(r.is_streaming(), "no content-length: {:?}", r.headers);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let mut a = Arrivals::default();
    while let Some(c) = r.chunk().await {
        a.push(&c.expect("a clean stream"));
    }
    a.check(5, lag, "h3");
    // HTTP/2: DATA frames as they come.
    let (head, mut body) = h2_post(&edge, "/fn/ticks").await;
    assert_eq!(head.status, 200);
    assert!(head.headers.get("content-length").is_none());
    let mut a = Arrivals::default();
    while let Some(c) = body.data().await {
        let c = c.expect("a clean stream");
        let _ = body.flow_control().release_capacity(c.len());
        a.push(&c);
    }
    a.check(5, lag, "h2");
    // HTTP/1.1: chunked.
    let (a, code, err) = curl_stream(&edge, "--http1.1", "/fn/ticks");
    assert_eq!(code, Some(0), "{err}");
    a.check(5, lag, "h1");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_first_byte_aborts_the_stream_on_every_protocol() {
    let mut edge = start(Opts {
        functions: stream_fn("breaks", "echo first; sleep 0.2; echo second; exit 3", ""),
        ..Opts::default()
    })
    .await;
    // HTTP/3: the stream is reset after what was written.
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let mut r = invoke_stream(&conn, "breaks", b"x").await;
    assert_eq!(r.status, 200);
    let (got, end) = to_end(&mut r).await;
    // RESET_STREAM may discard what was written but not yet delivered.
    assert!(got.starts_with(b"first\n"), "{got:?}");
    assert!(b"first\nsecond\n".starts_with(&got), "{got:?}");
    let e = end.expect("an abort, not an end").expect_err("an abort");
    assert!(
        e.contains("reset") || e.contains("H3_INTERNAL_ERROR") || e.contains("0x102"),
        "{e}"
    );
    // HTTP/2: RST_STREAM(INTERNAL_ERROR).
    let (head, mut body) = h2_post(&edge, "/fn/breaks").await;
    assert_eq!(head.status, 200);
    let (got, end) = h2_to_end(&mut body).await;
    assert!(got.starts_with(b"first\n"), "{got:?}");
    assert!(b"first\nsecond\n".starts_with(&got), "{got:?}");
    let e = end.expect("an abort").expect_err("an abort");
    assert_eq!(e.reason(), Some(h2::Reason::INTERNAL_ERROR), "{e}");
    // HTTP/1.1: the connection closes without the last chunk; curl says
    // so (exit 18, "transfer closed with outstanding read data").
    let port = edge.tcp.port();
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "10", "--cacert"])
        .arg(edge.cert())
        .arg("--resolve")
        .arg(format!("fra.fn.test:{port}:127.0.0.1"))
        .args(["--data-binary", "x"])
        .arg(format!("https://fra.fn.test:{port}/fn/breaks"))
        .output()
        .expect("curl");
    // hyper closes at once: what it still buffered may be lost too.
    assert!(out.stdout.starts_with(b"first\n"), "{:?}", out.stdout);
    assert!(b"first\nsecond\n".starts_with(&out.stdout));
    assert_ne!(out.status.code(), Some(0), "curl must see a cut body");
    assert_eq!(
        out.status.code(),
        Some(18),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Counted, by how they ended.
    let admin = edge.fleet.as_ref().expect("fleet").admin[0];
    let metrics = crate::admin::get(admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let aborted = text
        .lines()
        .find(|l| {
            l.starts_with("fnroute_stream_ends_total")
                && l.contains("function=\"breaks\"")
                && l.contains("end=\"function_error\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(aborted, Some(3.0), "{text}");
    edge.shutdown().await;
}

/// The pid in `file` once it is there.
pub(crate) async fn pid_in(file: &std::path::Path) -> u32 {
    for _ in 0..100 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pid in {}", file.display());
}

/// Waits until process `pid` is gone (or a zombie).
pub(crate) async fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.is_empty() || status.contains("State:\tZ") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_stops_the_function_and_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h3_pid = dir.path().join("h3.pid");
    let h2_pid = dir.path().join("h2.pid");
    let forever = |file: &std::path::Path| {
        format!(
            "echo $$ > {}; while true; do echo tick; sleep 0.05; done",
            file.display()
        )
    };
    let mut edge = start(Opts {
        functions: stream_fn("forever-h3", &forever(&h3_pid), "concurrency = { max = 1 }")
            + &stream_fn("forever-h2", &forever(&h2_pid), "concurrency = { max = 1 }"),
        ..Opts::default()
    })
    .await;
    let exec = edge.fleet.as_ref().expect("fleet").edges[0].exec.clone();
    let busy = |name: &str| {
        exec.stats()
            .into_iter()
            .find(|s| s.function == name)
            .map(|s| s.busy)
            .unwrap_or(99)
    };
    // HTTP/3: three chunks, then the client drops the response.
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let mut r = invoke_stream(&conn, "forever-h3", b"x").await;
    for _ in 0..3 {
        r.chunk().await.expect("a chunk").expect("data");
    }
    assert_eq!(busy("forever-h3"), 1);
    let pid = pid_in(&h3_pid).await;
    drop(r);
    assert!(gone(pid).await, "the command runs on after its client left");
    for _ in 0..50 {
        if busy("forever-h3") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(busy("forever-h3"), 0, "the slot is freed");
    // HTTP/2: the client resets its stream.
    let (head, mut body) = h2_post(&edge, "/fn/forever-h2").await;
    assert_eq!(head.status, 200);
    for _ in 0..3 {
        body.data().await.expect("a chunk").expect("data");
    }
    let pid = pid_in(&h2_pid).await;
    drop(body);
    assert!(
        gone(pid).await,
        "the command runs on after its h2 client left"
    );
    // The slot is free: another call runs at once (concurrency 1).
    let mut r = invoke_stream(&conn, "forever-h3", b"x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.chunk().await.expect("a chunk").expect("data");
    drop(r);
    edge.shutdown().await;
}

/// An example built by `cargo test` next to this test binary.
pub(crate) fn example(name: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let p = dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --example {name}` \
         (a plain `cargo test` builds examples; a `--test integration` filter alone does not)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// The `lambda_runtime` streaming example as a function on fra.
fn lambda_stream_fn(name: &str, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\nedges = [\"fra\"]\nstreaming = true\n{extra}\nexecutor = {{ kind = \"lambda\", command = [{:?}] }}\n",
        example("lambda_stream")
    )
}

fn stats(edge: &TestEdge, name: &str) -> fnroute::exec::FunctionStats {
    edge.fleet.as_ref().expect("fleet").edges[0]
        .exec
        .stats()
        .into_iter()
        .find(|s| s.function == name)
        .expect("a pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_lambda_runtime_function_streams_over_every_protocol() {
    let mut edge = start(Opts {
        functions: lambda_stream_fn("lstream", "concurrency = { min = 1, max = 2 }"),
        ..Opts::default()
    })
    .await;
    let lag = Duration::from_millis(60);
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let event = Bytes::from_static(br#"{"chunks": 5, "every_ms": 100}"#);
    let mut r = conn
        .send_streaming(Request::invoke("lstream", event.clone()))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.is_streaming());
    // lambda_runtime's prelude says application/octet-stream; it is not
    // part of the body.
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let mut a = Arrivals::default();
    while let Some(c) = r.chunk().await {
        a.push(&c.expect("a clean stream"));
    }
    a.check(5, lag, "h3");
    let (head, mut body) = h2_post_with(&edge, "/fn/lstream", event.clone()).await;
    assert_eq!(head.status, 200);
    let mut a = Arrivals::default();
    while let Some(c) = body.data().await {
        let c = c.expect("a clean stream");
        let _ = body.flow_control().release_capacity(c.len());
        a.push(&c);
    }
    a.check(5, lag, "h2");
    // A mid-stream error (lambda_runtime sends it inside the body): an
    // abort after the lines before it, not a complete body.
    // (Reset streams may lose what was not yet delivered, even the head.)
    let sent = conn
        .send_streaming(Request::invoke(
            "lstream",
            Bytes::from_static(br#"{"chunks": 5, "every_ms": 100, "fail_after": 2}"#),
        ))
        .await;
    if let Ok(mut r) = sent {
        let mut a = Arrivals::default();
        let (got, end) = to_end(&mut r).await;
        a.push(&got);
        assert!(a.lines.len() <= 2, "{:?}", a.lines);
        assert!(end.expect("an abort").is_err());
    }
    assert_eq!(stats(&edge, "lstream").crashes, 0);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_stream_whose_client_leaves_stops_its_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("worker.pid");
    let mut edge = start(Opts {
        functions: lambda_stream_fn("lleave", "concurrency = { max = 1 }"),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let event = format!(
        r#"{{"chunks": 1000, "every_ms": 20, "pid_file": {:?}}}"#,
        pid_file.display().to_string()
    );
    let mut r = conn
        .send_streaming(Request::invoke("lleave", Bytes::from(event)))
        .await
        .expect("invoke");
    for _ in 0..3 {
        r.chunk().await.expect("a chunk").expect("data");
    }
    let pid = pid_in(&pid_file).await;
    drop(r);
    assert!(gone(pid).await, "the worker runs on after its client left");
    // Replaced, and not counted as a crash: the next call runs.
    let mut r = invoke_stream(&conn, "lleave", br#"{"chunks": 2, "every_ms": 1}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut n = 0;
    while let Some(c) = r.chunk().await {
        c.expect("clean");
        n += 1;
    }
    assert!(n >= 1);
    let s = stats(&edge, "lleave");
    assert_eq!((s.crashes, s.kills), (0, 1), "{s:?}");
    edge.shutdown().await;
}

/// A function URL served by a streaming `lambda_runtime` function: its
/// prelude is the response head (status, content type, cookie), and the
/// events arrive as they are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_function_url_takes_its_head_from_the_prelude() {
    let mut edge = start(Opts {
        functions: lambda_stream_fn("sse", "interface = \"http\""),
        ..Opts::default()
    })
    .await;
    let mut child = curl_url(&edge, "sse.fn.test", "/events");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let head = read_head(&mut out);
    assert!(head.starts_with("http/2 201"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("set-cookie: session=streamed; path=/"),
        "{head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    let a = read_arrivals(&mut out);
    assert!(child.wait().expect("curl").success());
    a.check(5, Duration::from_millis(60), "sse");
    edge.shutdown().await;
}

/// A custom runtime that streams as AWS specifies, with real trailers
/// (tests/functions/stream_trailers.py): its end and its mid-stream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_reporting_an_error_in_trailers_aborts_the_stream() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/functions/stream_trailers.py"
    );
    let mut edge = start(Opts {
        functions: format!(
            "\n[[function]]\nname = \"trailers\"\nedges = [\"fra\"]\nstreaming = true\nexecutor = {{ kind = \"lambda\", command = [\"python3\", {script:?}] }}\n"
        ),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    // A clean end: every line, then the end; the POST's type is the
    // response's.
    let mut r = invoke_stream(&conn, "trailers", br#"{"lines": 3}"#).await;
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let mut got = Vec::new();
    while let Some(c) = r.chunk().await {
        got.extend_from_slice(&c.expect("a clean end"));
    }
    assert_eq!(got, b"line 0\nline 1\nline 2\n");
    // The error trailers: an abort, over HTTP/2 too.
    let mut r = invoke_stream(
        &conn,
        "trailers",
        br#"{"lines": 2, "error": "Stream.Broke"}"#,
    )
    .await;
    let (_, end) = to_end(&mut r).await;
    assert!(end.expect("an abort").is_err());
    let (_, mut body) = h2_post_with(
        &edge,
        "/fn/trailers",
        Bytes::from_static(br#"{"lines": 2, "error": "Stream.Broke"}"#),
    )
    .await;
    let (_, end) = h2_to_end(&mut body).await;
    let e = end.expect("an abort").expect_err("an abort");
    assert_eq!(e.reason(), Some(h2::Reason::INTERNAL_ERROR));
    assert_eq!(stats(&edge, "trailers").crashes, 0);
    edge.shutdown().await;
}

/// A wasm component's outgoing body streams as it writes it (the Python
/// example's `/ticks`), a trap after the first byte aborts, and a client
/// that leaves drops the instance and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_component_streams_its_outgoing_body() {
    let component = crate::wasm::python_example();
    let mut edge = start(Opts {
        functions: format!(
            "\n[[function]]\nname = \"pyticks\"\nedges = [\"fra\"]\ninterface = \"http\"\nstreaming = true\nconcurrency = {{ max = 1 }}\nexecutor = {{ kind = \"wasm\", component = {:?} }}\n",
            component.display().to_string()
        ),
        ..Opts::default()
    })
    .await;
    let curl = |path: &str| curl_url(&edge, "pyticks.fn.test", path);
    let mut child = curl("/ticks");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let head = read_head(&mut out);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let a = read_arrivals(&mut out);
    assert!(child.wait().expect("curl").success());
    a.check(5, Duration::from_millis(60), "wasm");
    // A trap after two events: curl sees the stream reset (HTTP/2
    // RST_STREAM, curl's exit 92), not a complete body.
    let child = curl("/ticks-raise");
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data: "), "{text}");
    assert_eq!(
        out.status.code(),
        Some(92),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that leaves after the first chunk of a body that never
    // ends: the instance is dropped, its slot freed.
    let mut child = curl("/stall");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    read_head(&mut out);
    let mut first = String::new();
    out.read_line(&mut first).expect("a first chunk");
    assert_eq!(first, "first chunk\n");
    assert_eq!(stats(&edge, "pyticks").busy, 1);
    let _ = child.kill();
    let _ = child.wait();
    let mut busy = 1;
    for _ in 0..100 {
        busy = stats(&edge, "pyticks").busy;
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(busy, 0, "the instance outlived its client");
    edge.shutdown().await;
}

/// Chunks of a streamed reply with the time each arrived.
async fn timed_chunks(
    r: &mut fnroute::mesh::transport::Reply,
) -> (Vec<u8>, Vec<std::time::Instant>) {
    let mut body = Vec::new();
    let mut at = Vec::new();
    while let Some(c) = r.chunk().await {
        body.extend_from_slice(&c.expect("a clean end"));
        at.push(std::time::Instant::now());
    }
    (body, at)
}

/// The last step of a route streams; a streaming step in the middle is
/// read whole, as it is the next step's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_step_of_a_route_streams() {
    let lines = "while read l; do echo \"$l\"; sleep 0.1; done";
    let mut edge = start(Opts {
        functions: stream_fn("lines", lines, ""),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let route = |stack: &str| {
        let mut r = Request::invoke("unused", Bytes::from_static(b"a\nb\nc\n"));
        r.path = "/route".into();
        r.header("fnroute-route", stack)
    };
    let mut r = conn
        .send_streaming(route("upper,lines"))
        .await
        .expect("route");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.is_streaming());
    let (body, at) = timed_chunks(&mut r).await;
    assert_eq!(body, b"A\nB\nC\n");
    let spread = at[at.len() - 1].duration_since(at[0]);
    assert!(
        at.len() >= 3 && spread >= Duration::from_millis(150),
        "{at:?}"
    );
    let r = conn
        .send_streaming(route("lines,upper"))
        .await
        .expect("route");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!r.is_streaming(), "the last step does not stream");
    assert_eq!(r.header("content-length"), Some("6"));
    assert_eq!(&r.body[..], b"A\nB\nC\n");
    edge.shutdown().await;
}

/// A cacheable streaming function: the first request streams and the
/// complete response is stored; the next is a whole hit. A request that
/// comes while the first streams waits and gets the whole response
/// (`coalesced`). Cut or oversized streams are not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_cached_once_complete() {
    let cache = "cache = { ttl_s = 60 }";
    let mut edge = start(Opts {
        functions: stream_fn("cticks", TICKS, cache)
            + &stream_fn("cbreaks", "echo first; sleep 0.1; exit 3", cache)
            + &stream_fn("chuge", "head -c 7340032 /dev/zero", cache),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let call = |name: &'static str| Request::invoke(name, Bytes::from_static(b"same"));
    let mut first = conn.send_streaming(call("cticks")).await.expect("invoke");
    assert_eq!(first.header("fnroute-cache"), Some("miss"));
    assert!(first.is_streaming());
    // A second identical request while the first streams.
    let waiter = {
        let conn2 = edge.connect(&client).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn2.send_streaming(call("cticks")).await.expect("invoke")
        })
    };
    let (body, _) = timed_chunks(&mut first).await;
    let mut waited = waiter.await.expect("waiter");
    assert_eq!(waited.header("fnroute-cache"), Some("coalesced"));
    assert!(!waited.is_streaming());
    assert_eq!(waited.chunk().await.expect("a body").expect("whole"), body);
    let mut hit = conn.send_streaming(call("cticks")).await.expect("invoke");
    assert_eq!(hit.header("fnroute-cache"), Some("hit"));
    assert_eq!(
        hit.header("content-length").map(str::to_string),
        Some(body.len().to_string())
    );
    assert_eq!(hit.chunk().await.expect("a body").expect("whole"), body);
    // Neither an aborted stream nor one over the entry limit is stored.
    for name in ["cbreaks", "chuge"] {
        for _ in 0..2 {
            let mut r = conn.send_streaming(call(name)).await.expect("invoke");
            assert_eq!(r.header("fnroute-cache"), Some("miss"), "{name}");
            while let Some(Ok(_)) = r.chunk().await {}
        }
    }
    edge.shutdown().await;
}

/// `fnroute invoke` prints each chunk as it arrives (over HTTP/3, and with
/// `--tcp` and `--http1.1`), and an abort mid-stream fails it with a
/// message after what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fnroute_invoke_prints_chunks_as_they_arrive() {
    let mut edge = start(Opts {
        functions: stream_fn("ticks", TICKS, "")
            + &stream_fn("breaks", "echo first; sleep 0.2; echo second; exit 3", ""),
        ..Opts::default()
    })
    .await;
    let h3 = edge.addr.to_string();
    let tcp = edge.tcp.to_string();
    let cert = edge.cert();
    for (addr, extra) in [
        (h3.as_str(), ""),
        (tcp.as_str(), "--tcp"),
        (tcp.as_str(), "--http1.1"),
    ] {
        let (a, ok) = {
            let (addr, extra, cert) = (addr.to_string(), extra.to_string(), cert.clone());
            tokio::task::spawn_blocking(move || {
                let mut child = Command::new(env!("CARGO_BIN_EXE_fnroute"))
                    .args([
                        "invoke", "ticks", "--edge", &addr, "--zone", "fn.test", "--ca",
                    ])
                    .arg(&cert)
                    .args([extra.as_str()].iter().filter(|a| !a.is_empty()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("fnroute");
                let a = read_arrivals(&mut BufReader::new(child.stdout.take().expect("stdout")));
                (a, child.wait().expect("exit").success())
            })
            .await
            .expect("join")
        };
        assert!(ok, "{extra}");
        a.check(
            5,
            Duration::from_millis(60),
            &format!("fnroute invoke {extra}"),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_fnroute"))
            .args([
                "invoke",
                "breaks",
                "--edge",
                if extra.is_empty() { &h3 } else { &tcp },
            ])
            .args(["--zone", "fn.test", "--ca"])
            .arg(&cert)
            .args([extra].iter().filter(|a| !a.is_empty()))
            .output()
            .expect("fnroute");
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("first\n"),
            "{extra}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("stream aborted after"), "{extra}: {err}");
    }
    edge.shutdown().await;
}

/// VmRSS of process `pid`, in KiB.
pub(crate) fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// 1 GiB streamed from a function on sin, through fra, to a client that
/// reads at about 128 MiB/s: neither edge's resident memory grows by
/// 32 MiB (the producer waits for the client; nothing holds the body).
/// Real `fnroute serve` processes, so their memory is theirs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_to_a_slow_reader_keeps_memory_flat() {
    use crate::mesh::{client, quic, start_procs};
    const GIB: u64 = 1 << 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let functions = format!(
        "\n[[function]]\nname = \"zeros\"\nedges = [\"sin\"]\nstreaming = true\nmax_stream_bytes = {}\ntimeout_ms = 900000\nexecutor = {{ kind = \"command\", command = [\"sh\", \"-c\", \"head -c $(cat) /dev/zero\"] }}\n",
        2 * GIB
    );
    let (p, procs) = start_procs(dir.path(), "", &functions).await;
    let c = client();
    let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
    let pull = |n: u64| {
        let conn = &conn;
        async move {
            let mut r = conn
                .send_streaming(Request::invoke("zeros", Bytes::from(n.to_string())))
                .await
                .expect("invoke");
            assert_eq!((r.status, r.header("fnroute-edge")), (200, Some("sin")));
            let started = std::time::Instant::now();
            let mut got = 0u64;
            while let Some(chunk) = r.chunk().await {
                got += chunk.expect("a clean end").len() as u64;
                // About 128 MiB/s.
                let due = Duration::from_secs_f64(got as f64 / (128.0 * 1048576.0));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            got
        }
    };
    // Warm both edges (connections, buffers, allocator) first.
    let warm = tokio::time::timeout(Duration::from_secs(60), pull(64 << 20)).await;
    assert_eq!(warm.ok(), Some(64 << 20), "{}", procs.logs());
    let (fra, sin) = (
        procs.pid(0).expect("fra runs"),
        procs.pid(2).expect("sin runs"),
    );
    let base = (rss_of(fra), rss_of(sin));
    let peak = std::sync::Arc::new(std::sync::Mutex::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut p = peak.lock().expect("peak");
                p.0 = p.0.max(rss_of(fra));
                p.1 = p.1.max(rss_of(sin));
            }
        })
    };
    let t = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(120), pull(GIB)).await;
    assert_eq!(got.ok(), Some(GIB), "{}", procs.logs());
    eprintln!("1 GiB in {:?}", t.elapsed());
    sampler.abort();
    let peak = *peak.lock().expect("peak");
    let growth = ((peak.0 - base.0) / 1024, (peak.1 - base.1) / 1024);
    eprintln!(
        "RSS KiB fra {} -> {} (+{} MiB), sin {} -> {} (+{} MiB)",
        base.0, peak.0, growth.0, base.1, peak.1, growth.1
    );
    assert!(
        growth.0 < 32 && growth.1 < 32,
        "RSS grew by {growth:?} MiB (fra, sin)"
    );
}

/// The limits of a stream each end it with an abort and stop the
/// function: the gap between chunks (`stream_idle_ms`), its size
/// (`max_stream_bytes`) and its whole duration (`timeout_ms`). An HTTP/1.0
/// client, which cannot tell a cut body from an end, gets the stream
/// buffered with a `content-length`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_a_stream_and_http10_gets_it_whole() {
    let mut edge = start(Opts {
        functions: stream_fn("gap", "echo a; sleep 1; echo b", "stream_idle_ms = 200")
            + &stream_fn(
                "big",
                "head -c 1000000 /dev/zero",
                "max_stream_bytes = 100000",
            )
            + &stream_fn(
                "long",
                "while true; do echo x; sleep 0.05; done",
                "timeout_ms = 400",
            )
            + &stream_fn("ticks", TICKS, ""),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    for (name, within) in [("gap", 900), ("big", 900), ("long", 900)] {
        let t = std::time::Instant::now();
        let sent = conn
            .send_streaming(Request::invoke(name, Bytes::from_static(b"x")))
            .await;
        let end = match sent {
            Ok(mut r) => loop {
                match r.chunk().await {
                    Some(Ok(_)) => {}
                    other => break other,
                }
            },
            // Reset before the head arrived: an abort too.
            Err(e) => Some(Err(e.to_string())),
        };
        assert!(matches!(end, Some(Err(_))), "{name}: {end:?}");
        assert!(
            t.elapsed() < Duration::from_millis(within),
            "{name}: ended after {:?}",
            t.elapsed()
        );
    }
    let admin = edge.fleet.as_ref().expect("fleet").admin[0];
    let metrics = crate::admin::get(admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for (name, end) in [("gap", "idle"), ("big", "too_large"), ("long", "timeout")] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("fnroute_stream_ends_total")
                    && l.contains(&format!("function=\"{name}\""))
                    && l.contains(&format!("end=\"{end}\""))),
            "{name} {end}: {text}"
        );
    }
    // HTTP/1.0 (without ALPN, which offers only h2 and http/1.1): whole,
    // with its length.
    let r = crate::web::curl(
        &edge,
        "--http1.0",
        "fra.fn.test",
        "/fn/ticks",
        &["--no-alpn", "--data-binary", "x"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length").map(str::to_string),
        Some(r.body.len().to_string())
    );
    assert_eq!(r.body.iter().filter(|b| **b == b'\n').count(), 5);
    edge.shutdown().await;
}

/// A worker that streams for a function that is not `streaming`: its
/// response is buffered as Lambda buffers it, the prelude stripped (it
/// used to end up inside the result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_worker_of_a_buffered_function_is_buffered() {
    let mut edge = start(Opts {
        functions: format!(
            "\n[[function]]\nname = \"lbuf\"\nedges = [\"fra\"]\nexecutor = {{ kind = \"lambda\", command = [{:?}] }}\n",
            example("lambda_stream")
        ),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let r = invoke_stream(&conn, "lbuf", br#"{"chunks": 3, "every_ms": 10}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!r.is_streaming());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(text.lines().count(), 3, "{text:?}");
    assert!(
        text.lines().all(|l| l.parse::<u128>().is_ok()),
        "no prelude, no NULs: {text:?}"
    );
    edge.shutdown().await;
}

/// An HTTP/3 client whose connection closes while the function is quiet
/// (nothing to send, so nothing fails a write): the function is stopped
/// at once, not at its next chunk or `stream_idle_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_stops_a_quiet_function() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("quiet.pid");
    let script = format!(
        "echo $$ > {}; echo first; sleep 30; echo never",
        pid_file.display()
    );
    let mut edge = start(Opts {
        functions: stream_fn(
            "quiet",
            &script,
            "stream_idle_ms = 60000\ntimeout_ms = 60000",
        ),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let mut r = invoke_stream(&conn, "quiet", b"x").await;
    assert_eq!(
        &r.chunk().await.expect("a chunk").expect("data")[..],
        b"first\n"
    );
    let pid = pid_in(&pid_file).await;
    conn.quic().close(0u32.into(), b"bye");
    drop(r);
    assert!(
        gone(pid).await,
        "the quiet command outlived its client's connection"
    );
    edge.shutdown().await;
}
