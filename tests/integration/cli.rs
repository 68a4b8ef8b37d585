//! The binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `edge-config/local.toml` with every listener on an ephemeral port and
/// absolute paths, so the test cannot clash with a running edge.
fn local_on_ephemeral_ports(dir: &std::path::Path) -> PathBuf {
    let cfg = repo().join("edge-config");
    let text = std::fs::read_to_string(cfg.join("local.toml"))
        .unwrap()
        .replace(":5300\"", ":0\"")
        .replace(":4433\"", ":0\"")
        .replace(":9180\"", ":0\"")
        .replace("\"../geo/", &format!("\"{}/../geo/", cfg.display()))
        .replace("\"functions/", &format!("\"{}/functions/", cfg.display()));
    let path = dir.join("local.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serve_starts_logs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_on_ephemeral_ports(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--grace", "5s", "--log-format", "json"])
        .env("FNROUTE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut started = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("json log line {line:?}: {e}"));
        if v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("edge started") {
            started = Some(v);
            break;
        }
    }
    let started = started.expect("the edge logs that it started");
    assert_eq!(
        started.pointer("/fields/edge").and_then(|e| e.as_str()),
        Some("local")
    );

    let t0 = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "fnroute did not stop within its grace"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
}

#[test]
fn serve_rejects_bad_config_and_unknown_node() {
    let bin = env!("CARGO_BIN_EXE_fnroute");
    let out = Command::new(bin)
        .args([
            "serve",
            "--config",
            "edge-config/three-edges.toml",
            "--node",
            "ams",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown edge \"ams\"") && err.contains("fra, nyc, sin"),
        "{err}"
    );

    let out = Command::new(bin)
        .args(["serve", "--config", "/no/such.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read topology file"));
}

#[test]
fn geo_lookup_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args([
            "geo",
            "lookup",
            "203.0.113.9",
            "--config",
            "edge-config/three-edges.toml",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("-6.2100, 106.8500") && s.contains("Jakarta"),
        "{s}"
    );
    let nearest = s.lines().find(|l| l.starts_with("nearest")).unwrap();
    assert!(nearest.contains("sin"), "{s}");

    let out = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args(["geo", "lookup", "127.0.0.1"])
        .current_dir(repo())
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("unknown; default 50.1100, 8.6800"), "{s}");
}

/// `fnroute invoke` against a test edge: `args` after `invoke`, trusting
/// the edge's development certificate, zone `fn.test`.
async fn invoke(edge: &crate::harness::TestEdge, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .arg("invoke")
        .args(args)
        .args(["--zone", "fn.test", "--ca"])
        .arg(edge.cert())
        // Nothing from the repository's edge-config is read.
        .current_dir(dir.path())
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `-v` lines other than the protocol and the peer (`< 200 from ADDR`) and
/// the headers that differ between two requests.
fn same_part(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("* protocol:") && !l.contains(" from "))
        .filter(|l| {
            ![
                "< fnroute-request-id:",
                "< date:",
                "< alt-svc:",
                "< server-timing:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_over_tcp_is_invoke_over_http3() {
    let mut edge = crate::harness::start(crate::harness::Opts::default()).await;
    let h3 = format!("127.0.0.1:{}", edge.addr.port());
    let tcp = format!("127.0.0.1:{}", edge.tcp.port());

    // The same body and exit status; -v names the protocol each time.
    let base = ["upper", "--data", "shout", "-v", "--edge"];
    let over_h3 = invoke(&edge, &[&base[..], &[h3.as_str()]].concat()).await;
    let over_h2 = invoke(&edge, &[&base[..], &[tcp.as_str(), "--tcp"]].concat()).await;
    let over_h1 = invoke(&edge, &[&base[..], &[tcp.as_str(), "--http1.1"]].concat()).await;
    for (out, protocol) in [(&over_h3, "h3"), (&over_h2, "h2"), (&over_h1, "http/1.1")] {
        let err = text(&out.stderr);
        assert!(out.status.success(), "{protocol}: {err}");
        assert_eq!(text(&out.stdout), "SHOUT", "{protocol}: {err}");
        assert!(
            err.lines().any(|l| l == format!("* protocol: {protocol}")),
            "{err}"
        );
        assert!(err.contains("< 200 from 127.0.0.1:"), "{err}");
        assert!(err.contains("< fnroute-edge: fra"), "{err}");
    }
    // The same response headers over every protocol (bar per-request ones).
    assert_eq!(
        same_part(&text(&over_h2.stderr)),
        same_part(&text(&over_h3.stderr))
    );
    assert_eq!(
        same_part(&text(&over_h1.stderr)),
        same_part(&text(&over_h3.stderr))
    );

    // A problem: the same message and exit status 1.
    let h3_err = invoke(&edge, &["nosuch", "--data", "x", "--edge", &h3]).await;
    let tcp_err = invoke(&edge, &["nosuch", "--data", "x", "--edge", &tcp, "--tcp"]).await;
    assert_eq!(h3_err.status.code(), Some(1), "{}", text(&h3_err.stderr));
    assert_eq!(tcp_err.status.code(), Some(1), "{}", text(&tcp_err.stderr));
    assert!(
        text(&tcp_err.stderr).starts_with("fnroute: 404 "),
        "{}",
        text(&tcp_err.stderr)
    );
    assert_eq!(text(&tcp_err.stderr), text(&h3_err.stderr));

    // --route and --timeout-ms travel as headers, the event from stdin.
    let routed = |edge_addr: &str, extra: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fnroute"));
        cmd.args(["invoke", "--route", "upper resize", "--timeout-ms", "2000"])
            .args(["--edge", edge_addr, "--zone", "fn.test", "--ca"])
            .arg(edge.cert())
            .args(["-", extra].iter().filter(|a| !a.is_empty()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut outs = Vec::new();
    for (addr, extra) in [
        (h3.as_str(), ""),
        (tcp.as_str(), "--tcp"),
        (tcp.as_str(), "--http1.1"),
    ] {
        let mut child = routed(addr, extra).spawn().unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"routed").await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{extra}: {}", text(&out.stderr));
        outs.push(text(&out.stdout));
    }
    assert_eq!(outs[0], "ROUTED");
    assert_eq!(outs[1], outs[0]);
    assert_eq!(outs[2], outs[0]);
    edge.shutdown().await;
}

/// A listener of this test: `serve` runs on every accepted connection.
async fn test_listener<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_over_tcp_fails_clearly() {
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut edge = crate::harness::start(crate::harness::Opts::default()).await;
    let check = |out: &std::process::Output, wants: &[&str]| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{err}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(!err.contains("panicked"), "{err}");
        for w in wants {
            assert!(err.contains(w), "wanted {w:?} in {err}");
        }
    };

    // Refused: a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = invoke(&edge, &["upper", "--tcp", "--edge", &closed.to_string()]).await;
    check(
        &out,
        &[
            &format!("fnroute: connecting to {closed} over TCP"),
            "refused",
            "tcp_listen",
        ],
    );

    // Not TLS at all: an SSH server's greeting.
    let ssh = test_listener(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let out = invoke(&edge, &["upper", "--tcp", "--edge", &ssh.to_string()]).await;
    check(&out, &["TLS handshake with", "upper.fn.test", "tcp_listen"]);

    // TLS, but a certificate for another name (*.fn.test is not other.test).
    let tcp = edge.tcp.to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args([
            "invoke",
            "upper",
            "--tcp",
            "--edge",
            &tcp,
            "--zone",
            "other.test",
            "--ca",
        ])
        .arg(edge.cert())
        .output()
        .await
        .unwrap();
    check(
        &out,
        &[
            "TLS handshake with",
            "upper.other.test",
            "certificate",
            "--ca",
        ],
    );

    // TLS with the edge's own certificate, then no HTTP: over h2 and http/1.1.
    let tls = {
        let state = &edge.topology.state_dir;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(state.join("dev-cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(state.join("dev-key.pem")).unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(c))
    };
    let babbler = test_listener(move |s| {
        let tls = tls.clone();
        async move {
            if let Ok(mut s) = tls.accept(s).await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    let out = invoke(&edge, &["upper", "--tcp", "--edge", &babbler.to_string()]).await;
    check(
        &out,
        &[
            &format!("fnroute: {babbler} did not answer over h2:"),
            "tcp_listen",
        ],
    );
    let out = invoke(
        &edge,
        &["upper", "--http1.1", "--edge", &babbler.to_string()],
    )
    .await;
    check(
        &out,
        &[
            &format!("fnroute: {babbler} did not answer over http/1.1:"),
            "tcp_listen",
        ],
    );
    edge.shutdown().await;
}
