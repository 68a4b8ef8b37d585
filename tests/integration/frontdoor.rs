//! HTTP/3 front door over real QUIC on loopback, driven by fnroute's own
//! h3 client (and the `fnroute invoke` binary).

use std::time::Duration;

use bytes::Bytes;
use fnroute::mesh::transport::Request;
use tokio::time::Instant;

use crate::harness::{start, Opts};

fn problem_type(v: &serde_json::Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_command_functions_with_edge_and_timing_headers() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;

    let r = conn
        .invoke("upper", Bytes::from_static(b"hello"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"HELLO");
    assert_eq!(r.header("fnroute-edge"), Some("fra"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let id = r.header("fnroute-request-id").expect("request id");
    assert_eq!(id.len(), 16, "{id}");
    let timing = r.header("server-timing").expect("server-timing");
    for part in ["queue;dur=", "run;dur=", "total;dur=", "cold"] {
        assert!(timing.contains(part), "{timing}");
    }

    // A JSON result is labelled as such; names are case-insensitive.
    let r = conn
        .invoke("Resize", Bytes::from_static(br#"{"w": 10}"#))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], br#"{"w": 10}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_ne!(r.header("fnroute-request-id"), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_not_hosted_functions_are_404_problems() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    for (name, detail) in [
        ("nope", "unknown function \"nope\""),
        ("elsewhere", "not hosted on edge \"fra\""),
    ] {
        let r = conn
            .invoke(name, Bytes::from_static(b"x"))
            .await
            .expect("invoke");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("fnroute-edge"), Some("fra"));
        let p = r.problem().expect("problem+json");
        assert_eq!(
            problem_type(&p),
            "https://fnroute.dev/problems/unknown-function"
        );
        assert_eq!(p["status"], 404);
        assert_eq!(p["function"], name);
        assert_eq!(p["edge"], "fra");
        assert!(p["detail"].as_str().unwrap_or("").contains(detail), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limit_413_by_content_length_and_while_streaming() {
    let edge = start(Opts {
        quic: "max_payload_bytes = 1024",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;

    // At the limit: fine.
    let r = conn
        .invoke("resize", Bytes::from(vec![b'a'; 1024]))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1024);

    // Declared too large: refused before the body is read.
    let r = conn
        .invoke("resize", Bytes::from(vec![b'a'; 5000]))
        .await
        .expect("invoke");
    assert_eq!(r.status, 413);
    let p = r.problem().expect("problem");
    assert_eq!(
        problem_type(&p),
        "https://fnroute.dev/problems/payload-too-large"
    );

    // No content-length: counted while streaming.
    let mut req = Request::invoke("resize", Bytes::new());
    req.content_length = None;
    req.chunks = (0..4).map(|_| Bytes::from(vec![b'b'; 512])).collect();
    let r = conn.send(req).await.expect("send");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("fnroute-edge"), Some("fra"));

    // The connection still works afterwards.
    let r = conn
        .invoke("upper", Bytes::from_static(b"ok"))
        .await
        .expect("invoke");
    assert_eq!(&r.body[..], b"OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_paths() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;

    let mut req = Request::invoke("upper", Bytes::new());
    req.method = http::Method::GET;
    req.content_length = None;
    req.chunks.clear();
    let r = conn.send(req).await.expect("send");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/method-not-allowed"
    );

    let mut req = Request::invoke("upper", Bytes::from_static(b"x"));
    req.path = "/functions/upper".into();
    let r = conn.send(req).await.expect("send");
    assert_eq!(r.status, 404);
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/not-found"
    );

    let r = conn
        .send(
            Request::invoke("upper", Bytes::from_static(b"x")).header("fnroute-timeout-ms", "soon"),
        )
        .await
        .expect("send");
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_function_is_502_with_its_error() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let r = conn
        .invoke("fail", Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 502);
    let p = r.problem().expect("problem");
    assert_eq!(
        problem_type(&p),
        "https://fnroute.dev/problems/function-error"
    );
    assert_eq!(p["errorType"], "CommandFailed");
    assert!(p["detail"].as_str().unwrap_or("").contains("boom"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_504_and_clients_may_shorten_them() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;

    let t = Instant::now();
    let r = conn.invoke("hang", Bytes::new()).await.expect("invoke");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/deadline-exceeded"
    );

    // `slow` sleeps 500 ms; with 100 ms allowed it times out.
    let t = Instant::now();
    let r = conn
        .send(Request::invoke("slow", Bytes::from_static(b"x")).header("fnroute-timeout-ms", "100"))
        .await
        .expect("send");
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() < Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_capacity_gives_503_with_retry_after_then_recovers() {
    let edge = start(Opts {
        capacity: 1,
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = std::sync::Arc::new(edge.connect(&client).await);

    let c = conn.clone();
    let slow = tokio::spawn(async move { c.invoke("slow", Bytes::from_static(b"first")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = conn
        .invoke("upper", Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/edge-saturated"
    );

    let first = slow.await.expect("join").expect("invoke");
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], b"first");
    let r = conn
        .invoke("upper", Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_connection_are_capped() {
    let edge = start(Opts {
        quic: "max_streams_per_connection = 2",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = std::sync::Arc::new(edge.connect(&client).await);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let c = conn.clone();
        slow.push(tokio::spawn(async move {
            c.invoke("slow", Bytes::from_static(b"s")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third stream on the same connection waits for credit...
    let t = Instant::now();
    let r = conn
        .invoke("resize", Bytes::from_static(b"third"))
        .await
        .expect("invoke");
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited >= Duration::from_millis(300),
        "third stream did not wait: {waited:?}"
    );
    // ...while another connection is not affected.
    let other = edge.connect(&client).await;
    let t = Instant::now();
    let c = conn.clone();
    let more = tokio::spawn(async move {
        let a = c.invoke("slow", Bytes::from_static(b"s"));
        let b = c.invoke("slow", Bytes::from_static(b"s"));
        tokio::join!(a, b)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = other
        .invoke("resize", Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    for s in slow {
        assert_eq!(s.await.expect("join").expect("invoke").status, 200);
    }
    let (a, b) = more.await.expect("join");
    assert_eq!(a.expect("a").status, 200);
    assert_eq!(b.expect("b").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let edge = start(Opts {
        quic: "max_connections = 1",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let first = edge.connect(&client).await;
    assert_eq!(
        first
            .invoke("upper", Bytes::from_static(b"a"))
            .await
            .expect("invoke")
            .status,
        200
    );

    let second = client.connect(edge.addr, "upper.fn.test").await;
    let err = second.err().expect("second connection refused");
    assert!(err.to_string().contains("refused"), "{err}");

    // Once the first is closed the budget is free again.
    first.quic().close(0u32.into(), b"bye");
    drop(first);
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(c) = client.connect(edge.addr, "upper.fn.test").await {
            ok = c
                .invoke("upper", Bytes::from_static(b"b"))
                .await
                .expect("invoke")
                .status
                == 200;
            break;
        }
    }
    assert!(ok, "a new connection is accepted after the first closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_time_out_with_408() {
    let edge = start(Opts {
        quic: "body_read_timeout_ms = 200",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let mut req = Request::invoke("resize", Bytes::new());
    req.content_length = None;
    req.chunks = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    req.chunk_delay = Some(Duration::from_millis(600));
    let r = conn.send(req).await.expect("send");
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/body-read-timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let mut edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = std::sync::Arc::new(edge.connect(&client).await);
    let c = conn.clone();
    let inflight =
        tokio::spawn(async move { c.invoke("slow", Bytes::from_static(b"drained")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Instant::now();
    edge.shutdown().await;
    let r = inflight
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"drained");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The endpoint is closed: no new connections.
    let again = tokio::time::timeout(
        Duration::from_secs(1),
        client.connect(edge.addr, "upper.fn.test"),
    )
    .await;
    assert!(!matches!(again, Ok(Ok(_))), "connected after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_only_for_idempotent_functions() {
    let edge = start(Opts {
        quic: "enable_0rtt = true",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    // A first full handshake gives the client a session ticket.
    let first = edge.connect(&client).await;
    assert_eq!(
        first
            .invoke("resize", Bytes::from_static(b"x"))
            .await
            .expect("invoke")
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Through a relay that holds back the client's handshake completion,
    // so the server surely sees the early request before the handshake.
    let relay = handshake_delaying_relay(edge.addr, Duration::from_millis(200)).await;
    let (conn, zero_rtt) = client
        .connect_0rtt(relay, "upper.fn.test")
        .await
        .expect("connect");
    assert!(zero_rtt, "client resumed with 0-RTT");
    let r = conn
        .invoke("upper", Bytes::from_static(b"early"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 425, "{r:?}");
    assert_eq!(
        problem_type(&r.problem().expect("problem")),
        "https://fnroute.dev/problems/too-early"
    );
    // After the handshake the same request is fine.
    let r = conn
        .invoke("upper", Bytes::from_static(b"late"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"LATE");

    // An idempotent function runs from early data.
    let relay = handshake_delaying_relay(edge.addr, Duration::from_millis(200)).await;
    let (conn, zero_rtt) = client
        .connect_0rtt(relay, "upper.fn.test")
        .await
        .expect("connect");
    assert!(zero_rtt);
    let r = conn
        .invoke("resize", Bytes::from_static(b"early"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_early_data_when_0rtt_is_off() {
    let edge = start(Opts::default()).await;
    let client = edge.client();
    let first = edge.connect(&client).await;
    assert_eq!(
        first
            .invoke("upper", Bytes::from_static(b"x"))
            .await
            .expect("invoke")
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The server's tickets do not allow early data, so the client cannot
    // even try 0-RTT: the request waits for the handshake and runs.
    let (conn, zero_rtt) = client
        .connect_0rtt(edge.addr, "upper.fn.test")
        .await
        .expect("connect");
    assert!(!zero_rtt, "0-RTT offered although quic.enable_0rtt is off");
    let r = conn
        .invoke("upper", Bytes::from_static(b"x"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fnroute_invoke_cli_end_to_end() {
    let edge = start(Opts::default()).await;
    let bin = env!("CARGO_BIN_EXE_fnroute");
    let addr = edge.addr.to_string();
    let cert = edge.cert();
    let cert = cert.to_str().expect("utf-8 path");

    let out = tokio::process::Command::new(bin)
        .args([
            "invoke",
            "upper",
            "--data",
            "hello cli",
            "--edge",
            &addr,
            "--ca",
            cert,
        ])
        .output()
        .await
        .expect("run fnroute invoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..], b"HELLO CLI");

    // stdin with `-`, and --insecure.
    let mut child = tokio::process::Command::new(bin)
        .args(["invoke", "resize", "-", "--edge", &addr, "--insecure"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from stdin").await.expect("write");
    }
    let out = child.wait_with_output().await.expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..], b"from stdin");

    // Errors: problem detail on stderr, non-zero exit, nothing on stdout.
    let out = tokio::process::Command::new(bin)
        .args([
            "invoke", "nope", "--data", "x", "--edge", &addr, "--ca", cert,
        ])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains("unknown function \"nope\""),
        "{err}"
    );

    // A certificate that is not the server's is refused.
    let other = edge.dir.path().join("other.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["upper.fn.test".to_string()]).expect("cert");
    std::fs::write(&other, ck.cert.pem()).expect("write");
    let out = tokio::process::Command::new(bin)
        .args(["invoke", "upper", "--data", "x", "--edge", &addr, "--ca"])
        .arg(&other)
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

/// A stand-in for the fnroute DNS front door: answers every A query with
/// 127.0.0.1 and every HTTPS query with `alpn=h3 port=<port>`.
async fn fake_dns(port: u16) -> std::net::SocketAddr {
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::rdata::svcb::{Alpn, SvcParamKey, SvcParamValue, SVCB};
    use hickory_proto::rr::rdata::{A, HTTPS};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            for query in &q.queries {
                r.add_query(query.clone());
                let name = query.name().clone();
                let data = match query.query_type {
                    RecordType::A => RData::A(A("127.0.0.1".parse().expect("ip"))),
                    RecordType::HTTPS => RData::HTTPS(HTTPS(SVCB::new(
                        1,
                        Name::root(),
                        vec![
                            (
                                SvcParamKey::Alpn,
                                SvcParamValue::Alpn(Alpn(vec!["h3".into()])),
                            ),
                            (SvcParamKey::Port, SvcParamValue::Port(port)),
                        ],
                    ))),
                    _ => continue,
                };
                r.add_answer(Record::from_rdata(name, 20, data));
            }
            if let Ok(wire) = r.to_vec() {
                let _ = sock.send_to(&wire, from).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fnroute_invoke_resolves_through_dns_with_the_https_port() {
    let edge = start(Opts::default()).await;
    let dns = fake_dns(edge.addr.port()).await;

    let r = fnroute::mesh::transport::resolve(dns, "upper.fn.test.", Duration::from_secs(2))
        .await
        .expect("resolve");
    assert_eq!(r.addr, edge.addr.ip());
    assert_eq!(r.port, Some(edge.addr.port()));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args([
            "invoke",
            "upper",
            "--data",
            "via dns",
            "--resolve",
            &dns.to_string(),
            "--zone",
            "fn.test",
        ])
        .arg("--ca")
        .arg(edge.cert())
        .output()
        .await
        .expect("run fnroute invoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..], b"VIA DNS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_certificate_is_reused_on_restart() {
    let mut edge = start(Opts::default()).await;
    let pem = std::fs::read(edge.cert()).expect("dev cert written");
    assert!(edge.topology.state_dir.join("dev-key.pem").is_file());
    edge.shutdown().await;

    // Same topology and state directory: the same certificate is served.
    let fleet = fnroute::node::Fleet::start(edge.topology.clone(), &[0])
        .await
        .expect("restart");
    assert_eq!(std::fs::read(edge.cert()).expect("cert"), pem);
    let client = edge.client();
    let conn = client
        .connect(fleet.quic_addrs[0], "resize.fn.test")
        .await
        .expect("the old certificate is still trusted");
    let r = conn
        .invoke("resize", Bytes::from_static(b"again"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificate_is_used_instead_of_a_generated_one() {
    let edge = start(Opts::default()).await;
    let dir = edge.dir.path();
    let ck = rcgen::generate_simple_self_signed(vec!["*.fn.test".to_string()]).expect("cert");
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
    let topo = crate::topo::TopoEdit::open(dir.join("topology.toml"))
        .set("tls.cert", cert.display().to_string())
        .set("tls.key", key.display().to_string())
        .set("state_dir", dir.join("other-state").display().to_string())
        .load();
    let fleet = fnroute::node::Fleet::start(std::sync::Arc::new(topo), &[0])
        .await
        .expect("start");
    assert!(
        !dir.join("other-state/dev-cert.pem").exists(),
        "no dev cert generated"
    );

    let client = fnroute::mesh::transport::Client::new(
        &fnroute::mesh::transport::Trust::Ca(cert),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("client");
    let conn = client
        .connect(fleet.quic_addrs[0], "upper.fn.test")
        .await
        .expect("configured certificate served");
    let r = conn
        .invoke("upper", Bytes::from_static(b"tls"))
        .await
        .expect("invoke");
    assert_eq!(&r.body[..], b"TLS");
    // The generated development certificate of the other edge is not it.
    assert!(edge
        .client()
        .connect(fleet.quic_addrs[0], "upper.fn.test")
        .await
        .is_err());
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_limit_is_advertised_and_enforced() {
    let edge = start(Opts {
        quic: "max_header_bytes = 1024",
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    // After one exchange the client has the server's SETTINGS, including
    // SETTINGS_MAX_FIELD_SECTION_SIZE, and h3 refuses to send more. (A
    // client that sends anyway gets 431 from the h3 layer, before fnroute's
    // handler; that path races with SETTINGS and is not asserted here.)
    let r = conn
        .invoke("upper", Bytes::from_static(b"a"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200);
    let big = "v".repeat(4000);
    let err = conn
        .send(Request::invoke("upper", Bytes::from_static(b"x")).header("x-big", &big))
        .await
        .expect_err("header section over the advertised limit");
    assert!(err.to_string().contains("max size: 1024"), "{err}");
    // The connection survives.
    let r = conn
        .invoke("upper", Bytes::from_static(b"ok"))
        .await
        .expect("invoke");
    assert_eq!(&r.body[..], b"OK");
}

/// A UDP relay on loopback in front of `server` that forwards the client's
/// Initial and 0-RTT packets at once but holds every datagram carrying a
/// Handshake or 1-RTT packet for `delay` (in order): the server receives
/// 0-RTT requests well before the client's Finished.
async fn handshake_delaying_relay(
    server: std::net::SocketAddr,
    delay: Duration,
) -> std::net::SocketAddr {
    use std::sync::Arc;
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let back = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let client = Arc::new(std::sync::Mutex::new(None::<std::net::SocketAddr>));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
    {
        let back = back.clone();
        tokio::spawn(async move {
            while let Some((at, d)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = back.send(&d).await;
            }
        });
    }
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().expect("lock");
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut held = false;
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            *client.lock().expect("lock") = Some(from);
            let d = buf[..n].to_vec();
            // Once one datagram is held, later ones queue behind it.
            held |= carries_handshake_or_1rtt(&d);
            let at = if held {
                Instant::now() + delay
            } else {
                Instant::now()
            };
            if tx.send((at, d)).await.is_err() {
                break;
            }
        }
    });
    addr
}

/// Walks the coalesced QUIC v1 packets of a datagram (RFC 9000 17.2).
fn carries_handshake_or_1rtt(d: &[u8]) -> bool {
    fn varint(b: &[u8], i: &mut usize) -> Option<usize> {
        let first = *b.get(*i)?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for k in 1..len {
            v = (v << 8) | u64::from(*b.get(*i + k)?);
        }
        *i += len;
        usize::try_from(v).ok()
    }
    let mut i = 0;
    while i < d.len() {
        let first = d[i];
        if first & 0x80 == 0 {
            return true; // short header: 1-RTT
        }
        let ty = (first >> 4) & 0x03;
        if ty == 2 {
            return true; // Handshake
        }
        let mut j = i + 5;
        let Some(&dcid) = d.get(j) else { return false };
        j += 1 + dcid as usize;
        let Some(&scid) = d.get(j) else { return false };
        j += 1 + scid as usize;
        if ty == 0 {
            let Some(token) = varint(d, &mut j) else {
                return false;
            };
            j += token;
        }
        let Some(len) = varint(d, &mut j) else {
            return false;
        };
        i = j + len;
    }
    false
}

/// A Lambda function run by a virtualenv's interpreter, configured exactly
/// as a user writes it: the venv's `bin/python` (a symlink to the base
/// interpreter) by absolute path, `-m awslambdaric`, the handler. Running
/// the resolved link instead would start Python without the venv
/// ("No module named awslambdaric", 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venv_awslambdaric_function_answers_200() {
    let py = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv-exec/bin/python");
    let meta =
        std::fs::symlink_metadata(py).unwrap_or_else(|e| panic!("{py}: {e}: run .ci/deps-exec.sh"));
    assert!(
        meta.file_type().is_symlink(),
        "{py} should be the venv's symlink"
    );
    let mut edge = start(Opts {
        functions: format!(
            r#"
[[function]]
name = "venv"
edges = ["fra"]
executor = {{ kind = "lambda", command = ["{py}", "-m", "awslambdaric", "functions/ric_echo.handler"] }}
timeout_ms = 10000
"#
        ),
        ..Opts::default()
    })
    .await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let r = conn
        .invoke("venv", Bytes::from_static(br#"{"from":"venv"}"#))
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{r:?}");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(body, serde_json::json!({"from": "venv"}));
    edge.shutdown().await;
}
