//! The HTTPS-over-TCP front door (`tcp_listen`) with clients we did not
//! write (curl over HTTP/1.1 and HTTP/2) and hostile ones written here:
//! request smuggling, slow heads, too many headers or connections, and an
//! HTTP/2 rapid-reset flood, all against the real listener.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{start, Opts, TestEdge};

/// What curl saw: status, lower-case headers, body, HTTP version.
pub(crate) struct Curl {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    version: String,
}

impl Curl {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Runs curl against `edge`'s TCP listener as `host`, trusting the edge's
/// development certificate. `args` are curl's (method, data, headers).
pub(crate) fn curl(edge: &TestEdge, proto: &str, host: &str, path: &str, args: &[&str]) -> Curl {
    let port = edge.tcp.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", proto, "--max-time", "10", "--cacert"])
        .arg(edge.cert())
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_version}"])
        .args(args)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl runs (.ci/deps-web.sh installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_curl(
        &head,
        &body,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn parse_curl(head: &Path, body: &Path, version: String) -> Curl {
    let head = std::fs::read_to_string(head).expect("headers");
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status in {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curl {
        status,
        headers,
        body: std::fs::read(body).unwrap_or_default(),
        version,
    }
}

const PROTOS: [(&str, &str); 2] = [("--http1.1", "1.1"), ("--http2", "2")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_invokes_over_http1_and_http2_like_http3() {
    let mut edge = start(Opts::default()).await;
    for (flag, version) in PROTOS {
        let r = curl(
            &edge,
            flag,
            "fra.fn.test",
            "/fn/upper",
            &["--data-binary", "hello tcp"],
        );
        assert_eq!(r.version, version, "{flag}");
        assert_eq!(r.status, 200, "{flag}");
        assert_eq!(r.body, b"HELLO TCP", "{flag}");
        assert_eq!(r.header("fnroute-edge"), Some("fra"), "{flag}");
        assert!(r.header("fnroute-request-id").is_some(), "{flag}");
        assert!(r.header("server-timing").is_some(), "{flag}");
        let alt = format!("h3=\":{}\"; ma=86400", edge.addr.port());
        assert_eq!(r.header("alt-svc"), Some(alt.as_str()), "{flag}");
    }
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_are_the_same_over_tcp() {
    let mut edge = start(Opts {
        quic: "max_payload_bytes = 1024",
        ..Opts::default()
    })
    .await;
    for (flag, _) in PROTOS {
        let r = curl(
            &edge,
            flag,
            "fra.fn.test",
            "/fn/nope",
            &["--data-binary", "x"],
        );
        assert_eq!(r.status, 404, "{flag}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            r.json()["type"]
                .as_str()
                .unwrap_or("")
                .ends_with("/unknown-function"),
            "{flag}"
        );

        let r = curl(&edge, flag, "fra.fn.test", "/fn/upper", &[]);
        assert_eq!(r.status, 405, "{flag}: GET");
        assert_eq!(r.header("allow"), Some("POST"), "{flag}");

        if flag == "--http1.1" {
            // Over HTTP/2 the 413 comes with RST_STREAM(NO_ERROR) for the
            // body still on its way (RFC 9113 §8.1), which curl 7.88
            // reports as a failure; HTTP/2 is checked below with h2.
            let big = "x".repeat(4096);
            let r = curl(
                &edge,
                flag,
                "fra.fn.test",
                "/fn/upper",
                &["--data-binary", &big],
            );
            assert_eq!(r.status, 413, "{flag}");
            assert!(
                r.json()["type"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/payload-too-large"),
                "{flag}"
            );
        }

        let r = curl(
            &edge,
            flag,
            "fra.fn.test",
            "/fn/fail",
            &["--data-binary", "x"],
        );
        assert_eq!(r.status, 502, "{flag}");
        assert_eq!(r.header("fnroute-edge"), Some("fra"), "{flag}");
    }
    // HTTP/2: a declared 7 MB body is refused before any of it is sent.
    let tls = tls_alpn(&edge, &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::post("https://fra.fn.test/fn/upper")
        .header("content-length", "7000000")
        .body(())
        .expect("request");
    let (resp, _body) = send.send_request(req, false).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("answered before the body")
        .expect("response");
    assert_eq!(resp.status(), 413);
    edge.shutdown().await;
}

/// One cache for every transport: a miss over HTTP/1.1 is a hit over
/// HTTP/2 and over HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_http3_share_the_edge_cache() {
    let mut edge = start(Opts::default()).await;
    let body = "cache me over tcp";
    let r = curl(
        &edge,
        "--http1.1",
        "fra.fn.test",
        "/fn/cached",
        &["--data-binary", body],
    );
    assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("miss")));
    let r = curl(
        &edge,
        "--http2",
        "fra.fn.test",
        "/fn/cached",
        &["--data-binary", body],
    );
    assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("hit")));
    assert_eq!(r.body, body.as_bytes());
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let r = conn
        .send(fnroute::mesh::transport::Request::invoke(
            "cached",
            bytes::Bytes::from(body),
        ))
        .await
        .expect("h3");
    assert_eq!(r.header("fnroute-cache"), Some("hit"));
    edge.shutdown().await;
}

/// A TLS connection to `edge`'s TCP listener, offering only HTTP/1.1.
async fn tls(edge: &TestEdge) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_alpn(edge, &[b"http/1.1"]).await
}

pub(crate) async fn tls_alpn(
    edge: &TestEdge,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(edge.cert()).expect("cert") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(edge.tcp).await.expect("connect");
    connector
        .connect(ServerName::try_from("fra.fn.test").expect("name"), tcp)
        .await
        .expect("tls handshake")
}

/// Everything the server sends until it closes (or `limit` passes).
async fn read_all<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Request smuggling: two different lengths, or a coding that is not
/// chunked last, get 400 and the connection closed; a body framed two ways
/// (`content-length` and chunked) is read as chunked and the connection is
/// closed after the one answer. Either way nothing after the first body is
/// read as a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_one_answer_and_a_closed_connection() {
    let mut edge = start(Opts::default()).await;
    let mut s = tls(&edge).await;
    s.write_all(b"POST /fn/upper HTTP/1.1\r\nhost: fra.fn.test\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /fn/upper HTTP/1.1\r\nhost: fra.fn.test\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let (reply, closed) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(
        reply.ends_with("ABC"),
        "the chunked body, not the length: {reply:?}"
    );
    assert!(reply.contains("connection: close"), "{reply:?}");
    assert_eq!(
        reply.matches("HTTP/1.1").count(),
        1,
        "one answer only: {reply:?}"
    );
    assert!(closed, "connection closed");
    let attempts = [
        "POST /fn/upper HTTP/1.1\r\nhost: fra.fn.test\r\ncontent-length: 3\r\ncontent-length: 40\r\n\r\nabcPOST /fn/upper HTTP/1.1\r\n\r\n",
        "POST /fn/upper HTTP/1.1\r\nhost: fra.fn.test\r\ntransfer-encoding: gzip, chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST /fn/upper HTTP/1.0\r\nhost: fra.fn.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for a in attempts {
        let mut s = tls(&edge).await;
        s.write_all(a.as_bytes()).await.expect("write");
        let (reply, closed) = read_all(&mut s, Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{a:?} -> {reply:?}");
        assert_eq!(
            reply.matches("HTTP/1.1").count(),
            1,
            "one answer only: {reply:?}"
        );
        assert!(closed, "connection closed after {a:?}");
    }
    edge.shutdown().await;
}

/// A client that sends its request head too slowly is cut off at the
/// header read deadline; the edge keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_off_at_the_header_deadline() {
    let mut edge = start(Opts {
        tcp: "header_read_timeout_ms = 300",
        ..Opts::default()
    })
    .await;
    let mut s = tls(&edge).await;
    let started = std::time::Instant::now();
    s.write_all(b"POST /fn/upper HTTP/1.1\r\nhost: fra.fn.t")
        .await
        .expect("write");
    let (reply, closed) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "closed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
    // A TLS handshake that never starts is cut off too.
    let mut raw = TcpStream::connect(edge.tcp).await.expect("connect");
    let (_, closed) = read_all(&mut raw, Duration::from_secs(5)).await;
    assert!(closed, "an idle handshake is closed");
    still_serves(&edge, "--http1.1");
    edge.shutdown().await;
}

/// More header fields than `tcp.max_headers`, or more header bytes than
/// `quic.max_header_bytes`: 431, and the edge goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused() {
    let mut edge = start(Opts {
        tcp: "max_headers = 20",
        ..Opts::default()
    })
    .await;
    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long = format!("x-long: {}\r\n", "a".repeat(64 * 1024));
    for extra in [many, long] {
        let mut s = tls(&edge).await;
        let req = format!(
            "POST /fn/upper HTTP/1.1\r\nhost: fra.fn.test\r\ncontent-length: 1\r\n{extra}\r\nx"
        );
        let _ = s.write_all(req.as_bytes()).await;
        let (reply, _) = read_all(&mut s, Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    }
    still_serves(&edge, "--http2");
    edge.shutdown().await;
}

/// Beyond `tcp.max_connections` a connection is closed on accept; when
/// one closes, a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let mut edge = start(Opts {
        tcp: "max_connections = 2",
        ..Opts::default()
    })
    .await;
    let a = tls(&edge).await;
    let b = tls(&edge).await;
    let mut c = TcpStream::connect(edge.tcp).await.expect("connect");
    let (_, closed) = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(closed, "the third connection is closed");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&edge, "--http1.1");
    edge.shutdown().await;
}

/// CVE-2023-44487: a client opening streams and resetting them at once
/// gets GOAWAY once more than 20 resets are pending (a stream the edge
/// already took before its reset arrived does not count, so not every
/// connection is cut: on this machine 19 or 20 of 20 are), and the edge's
/// memory does not grow with the number of resets; other clients are
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_flood_is_cut_off() {
    let mut edge = start(Opts::default()).await;
    let rss_before = rss_kib();
    let mut cut_off = 0;
    for _ in 0..20 {
        let tls = tls_alpn(&edge, &[b"h2"]).await;
        let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        let driver = tokio::spawn(conn);
        let mut sent = 0;
        for _ in 0..10_000 {
            let req = http::Request::post("https://fra.fn.test/fn/slow")
                .body(())
                .expect("request");
            let Ok(ready) = send.clone().ready().await else {
                break;
            };
            send = ready;
            match send.send_request(req, false) {
                Ok((resp, mut body)) => {
                    // Reset at once: RST_STREAM(CANCEL).
                    body.send_reset(h2::Reason::CANCEL);
                    drop(resp);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
        if ended.is_ok() && sent < 10_000 {
            cut_off += 1;
        }
    }
    assert!(cut_off > 0, "no flooding connection was closed by the edge");
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "memory grew by {grown} KiB");
    still_serves(&edge, "--http2");
    edge.shutdown().await;
}

/// The edge still answers over TCP (`proto`: curl's `--http1.1` or
/// `--http2`).
fn still_serves(edge: &TestEdge, proto: &str) {
    let r = curl(
        edge,
        proto,
        "fra.fn.test",
        "/fn/upper",
        &["--data-binary", "ok"],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"OK"[..]));
}

/// This process's resident memory (the edge runs in it).
fn rss_kib() -> u64 {
    crate::stream::rss_of(std::process::id())
}

/// Function URLs: a request to `<function>.<zone>` goes to that function
/// over TCP and over HTTP/3, any case, any port; an event function takes
/// `POST /` (405 for other methods, 404 for other paths), and the API
/// paths keep their meaning on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_urls_route_by_host_over_tcp_and_http3() {
    let mut edge = start(Opts::default()).await;
    for (flag, _) in PROTOS {
        let r = curl(
            &edge,
            flag,
            "upper.fn.test",
            "/",
            &["--data-binary", "by url"],
        );
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"BY URL"[..]),
            "{flag}"
        );
        let r = curl(
            &edge,
            flag,
            "UPPER.Fn.Test",
            "/",
            &["--data-binary", "case"],
        );
        assert_eq!((r.status, r.body.as_slice()), (200, &b"CASE"[..]), "{flag}");
        let r = curl(&edge, flag, "upper.fn.test", "/", &[]);
        assert_eq!(r.status, 405, "{flag}: GET /");
        assert_eq!(r.header("allow"), Some("POST"), "{flag}");
        let r = curl(
            &edge,
            flag,
            "upper.fn.test",
            "/elsewhere",
            &["--data-binary", "x"],
        );
        assert_eq!(r.status, 404, "{flag}");
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(detail.contains("takes POST /"), "{flag}: {detail}");
        // The API paths on a function's host: resize runs, not upper.
        let r = curl(
            &edge,
            flag,
            "upper.fn.test",
            "/fn/resize",
            &["--data-binary", "keep"],
        );
        assert_eq!((r.status, r.body.as_slice()), (200, &b"keep"[..]), "{flag}");
        // Not a function under the zone: the path decides.
        let r = curl(&edge, flag, "fra.fn.test", "/", &["--data-binary", "x"]);
        assert_eq!(r.status, 404, "{flag}");
    }
    let client = edge.client();
    let conn = edge.connect(&client).await; // :authority upper.fn.test
    let mut req =
        fnroute::mesh::transport::Request::invoke("ignored", bytes::Bytes::from("h3 url"));
    req.path = "/".into();
    let r = conn.send(req).await.expect("h3");
    assert_eq!((r.status, &r.body[..]), (200, &b"H3 URL"[..]));
    edge.shutdown().await;
}

/// The `lambda_http` example (examples/lambda_http_web.rs), built by
/// `cargo test` next to this test binary.
fn lambda_http_example() -> String {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let p = dir.join("examples").join("lambda_http_web");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --example lambda_http_web` \
         (a plain `cargo test` builds examples; a `--test integration` filter alone does not)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A command HTTP function printing `result` (a function URL response)
/// and counting its runs in `count`.
fn http_command(name: &str, result: &str, count: &Path, extra: &str) -> String {
    let script = format!(
        "cat >/dev/null; echo run >> '{}'; printf '%s' '{}'",
        count.display(),
        result.replace('\'', "'\\''")
    );
    format!(
        "[[function]]\nname = \"{name}\"\nedges = [\"fra\"]\ninterface = \"http\"\n\
         executor = {{ kind = \"command\", command = [\"sh\", \"-c\", {script:?}] }}\n{extra}\n"
    )
}

fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |s| s.lines().count())
}

/// AWS's `lambda_http`, unmodified, behind a function URL over HTTP/1.1,
/// HTTP/2 and HTTP/3: routes, query strings, JSON and binary bodies,
/// status codes, headers and cookies come through as the function set them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_http_functions_answer_at_their_url() {
    let bin = lambda_http_example();
    let mut edge = start(Opts {
        functions: format!(
            "[[function]]\nname = \"web\"\nedges = [\"fra\"]\ninterface = \"http\"\n\
             executor = {{ kind = \"lambda\", command = [{bin:?}] }}\n"
        ),
        ..Opts::default()
    })
    .await;
    for (flag, _) in PROTOS {
        let r = curl(&edge, flag, "web.fn.test", "/hello?name=Ada", &[]);
        assert_eq!(r.status, 200, "{flag}");
        assert_eq!(r.body, b"hello Ada", "{flag}");
        assert_eq!(r.header("x-fn"), Some("lambda_http"), "{flag}");
        assert!(
            r.header("set-cookie")
                .is_some_and(|c| c.starts_with("last_name=Ada")),
            "{flag}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{flag}"
        );
        assert_eq!(r.header("fnroute-edge"), Some("fra"), "{flag}");

        let r = curl(
            &edge,
            flag,
            "web.fn.test",
            "/echo?a=1&a=2&b=x%20y",
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"k":"v"}"#,
            ],
        );
        assert_eq!(r.status, 200, "{flag}");
        let v = r.json();
        assert_eq!(v["method"], "POST", "{flag}");
        assert_eq!(v["path"], "/echo", "{flag}");
        assert_eq!(v["query"]["a"], serde_json::json!(["1", "2"]), "{flag}");
        assert_eq!(v["query"]["b"], serde_json::json!(["x y"]), "{flag}");
        assert_eq!(v["body"], r#"{"k":"v"}"#, "{flag}");

        let r = curl(&edge, flag, "web.fn.test", "/bytes?n=5", &[]);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &[0u8, 1, 2, 3, 4][..]),
            "{flag}"
        );
        let r = curl(&edge, flag, "web.fn.test", "/nope", &[]);
        assert_eq!(r.status, 404, "{flag}");
        assert!(
            String::from_utf8_lossy(&r.body).starts_with("not found: GET /nope"),
            "{flag}"
        );
    }
    let client = edge.client();
    let conn = client
        .connect(edge.addr, "web.fn.test")
        .await
        .expect("connect");
    let mut req = fnroute::mesh::transport::Request::invoke("ignored", bytes::Bytes::new());
    req.method = http::Method::GET;
    req.path = "/hello?name=h3".into();
    let r = conn.send(req).await.expect("h3");
    assert_eq!((r.status, &r.body[..]), (200, &b"hello h3"[..]));
    edge.shutdown().await;
}

/// CDN caching of an HTTP function's GET/HEAD answers: by the policy and
/// the response's own cache-control, vary and set-cookie; if-none-match
/// answered at the edge; other methods always run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_function_answers_are_cached_like_a_cdn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = |n: &str| dir.path().join(n);
    let ok = r#"{"statusCode":200,"headers":{"content-type":"text/plain","etag":"\"v1\"","cache-control":"public, max-age=60","vary":"accept-language"},"body":"cached page"}"#;
    let cookie = r#"{"statusCode":200,"headers":{"content-type":"text/plain"},"cookies":["s=1"],"body":"personal"}"#;
    let no_store = r#"{"statusCode":200,"headers":{"cache-control":"no-store"},"body":"fresh"}"#;
    let private =
        r#"{"statusCode":200,"headers":{"cache-control":"private, max-age=60"},"body":"mine"}"#;
    let vary_ua = r#"{"statusCode":200,"headers":{"vary":"user-agent"},"body":"by agent"}"#;
    let cache = "cache = { ttl_s = 60, vary = [\"accept-language\"] }";
    let functions = [
        http_command("page", ok, &count("page"), cache),
        http_command("cookie", cookie, &count("cookie"), cache),
        http_command("dontstore", no_store, &count("dontstore"), cache),
        http_command("private", private, &count("private"), cache),
        http_command("varyua", vary_ua, &count("varyua"), cache),
    ]
    .concat();
    let mut edge = start(Opts {
        functions,
        ..Opts::default()
    })
    .await;
    let r = curl(&edge, "--http2", "page.fn.test", "/a?x=1", &[]);
    assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("miss")));
    let r = curl(&edge, "--http1.1", "page.fn.test", "/a?x=1", &[]);
    assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("hit")));
    assert_eq!(r.body, b"cached page");
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("vary"), Some("accept-language"));
    assert_eq!(runs(&count("page")), 1);
    // Another query, another language: other entries.
    let _ = curl(&edge, "--http2", "page.fn.test", "/a?x=2", &[]);
    let _ = curl(
        &edge,
        "--http2",
        "page.fn.test",
        "/a?x=1",
        &["-H", "accept-language: de"],
    );
    assert_eq!(runs(&count("page")), 3);
    // HEAD shares GET's entry and has no body.
    let r = curl(&edge, "--http1.1", "page.fn.test", "/a?x=1", &["-I"]);
    assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("hit")));
    assert_eq!(r.header("content-length"), Some("11"));
    // (curl -I writes the head where the body would go.)
    assert!(!String::from_utf8_lossy(&r.body).contains("cached page"));
    // If-None-Match with the entry's etag: 304 from the edge.
    for inm in ["\"v1\"", "W/\"v1\"", "\"x\", \"v1\"", "*"] {
        let r = curl(
            &edge,
            "--http2",
            "page.fn.test",
            "/a?x=1",
            &["-H", &format!("if-none-match: {inm}")],
        );
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty(), "{inm}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{inm}");
    }
    let r = curl(
        &edge,
        "--http2",
        "page.fn.test",
        "/a?x=1",
        &["-H", "if-none-match: \"v2\""],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"cached page"[..]));
    assert_eq!(
        runs(&count("page")),
        3,
        "conditional requests answered from the cache"
    );
    // POST always runs.
    let r = curl(
        &edge,
        "--http2",
        "page.fn.test",
        "/a?x=1",
        &["--data-binary", "x"],
    );
    assert_eq!((r.status, r.header("fnroute-cache")), (200, None));
    assert_eq!(runs(&count("page")), 4);
    // Never stored: set-cookie, no-store, private, a vary beyond the policy.
    for name in ["cookie", "dontstore", "private", "varyua"] {
        for _ in 0..2 {
            let r = curl(&edge, "--http2", &format!("{name}.fn.test"), "/", &[]);
            assert_eq!(r.status, 200, "{name}");
        }
        assert_eq!(runs(&count(name)), 2, "{name} runs every time");
    }
    edge.shutdown().await;
}

/// CORS at the edge: a preflight is answered without running the
/// function (204 with the policy's headers, or 403 for an origin not
/// allowed); actual answers carry the policy's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = dir.path().join("api");
    let result = r#"{"statusCode":200,"headers":{"content-type":"application/json"},"body":"{\"ok\":true}"}"#;
    let cors = "cors = { allow_origins = [\"https://page.fn.test:8443\"], allow_methods = [\"POST\", \"PUT\"], allow_headers = [\"content-type\"], expose_headers = [\"fnroute-edge\"], max_age_s = 600 }";
    let mut edge = start(Opts {
        functions: http_command("api", result, &count, cors),
        ..Opts::default()
    })
    .await;
    for (flag, _) in PROTOS {
        let r = curl(
            &edge,
            flag,
            "api.fn.test",
            "/items",
            &[
                "-X",
                "OPTIONS",
                "-H",
                "origin: https://page.fn.test:8443",
                "-H",
                "access-control-request-method: PUT",
                "-H",
                "access-control-request-headers: content-type",
            ],
        );
        assert_eq!(r.status, 204, "{flag}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://page.fn.test:8443"),
            "{flag}"
        );
        assert!(
            r.header("access-control-allow-methods")
                .is_some_and(|m| m.contains("PUT")),
            "{flag}"
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"), "{flag}");
        let r = curl(
            &edge,
            flag,
            "api.fn.test",
            "/items",
            &[
                "-X",
                "OPTIONS",
                "-H",
                "origin: https://evil.example",
                "-H",
                "access-control-request-method: PUT",
            ],
        );
        assert_eq!(r.status, 403, "{flag}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{flag}");
        let r = curl(
            &edge,
            flag,
            "api.fn.test",
            "/items",
            &[
                "-H",
                "origin: https://page.fn.test:8443",
                "-H",
                "content-type: application/json",
                "--data-binary",
                "{}",
            ],
        );
        assert_eq!(r.status, 200, "{flag}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://page.fn.test:8443"),
            "{flag}"
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("fnroute-edge"),
            "{flag}"
        );
    }
    assert_eq!(runs(&count), 2, "only the actual requests ran the function");
    edge.shutdown().await;
}

/// A result that is not a function URL response: 502 with its own
/// problem type, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_function_results_are_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let functions = [
        http_command("notjson", "<html>", &dir.path().join("a"), ""),
        http_command(
            "badstatus",
            r#"{"statusCode":99,"body":"x"}"#,
            &dir.path().join("b"),
            "",
        ),
    ]
    .concat();
    let mut edge = start(Opts {
        functions,
        ..Opts::default()
    })
    .await;
    for name in ["notjson", "badstatus"] {
        let r = curl(&edge, "--http2", &format!("{name}.fn.test"), "/", &[]);
        assert_eq!(r.status, 502, "{name}");
        assert!(
            r.json()["type"]
                .as_str()
                .unwrap_or("")
                .ends_with("/function-response"),
            "{name}"
        );
    }
    // A bare JSON result is Lambda's default: 200 application/json.
    edge.shutdown().await;
}

/// `tcp.max_concurrent_streams` and the header list bound are what the
/// edge announces in its HTTP/2 SETTINGS, as nghttp (nghttp2's client)
/// reads them off the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_announce_the_limits() {
    let mut edge = start(Opts {
        tcp: "max_concurrent_streams = 7",
        ..Opts::default()
    })
    .await;
    let out = Command::new("nghttp")
        .args(["-nv", "--no-verify-peer"])
        .arg(format!("https://127.0.0.1:{}/fn/upper", edge.tcp.port()))
        .output()
        .expect("nghttp runs (.ci/deps-web.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let settings = text
        .split("recv SETTINGS frame")
        .nth(1)
        .unwrap_or_else(|| panic!("no SETTINGS from the edge: {text}"));
    assert!(
        settings.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{settings}"
    );
    assert!(
        settings.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):16384"),
        "{settings}"
    );
    edge.shutdown().await;
}
