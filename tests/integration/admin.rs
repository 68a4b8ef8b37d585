//! The admin listener as operators and their tools use it: a fleet of
//! `three-edges.toml` in this process, every listener on 127.0.0.x port 0,
//! spoken to over real loopback sockets (and by a real headless browser).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fnroute::admin::{AdminLimits, AdminServer, Status};
use fnroute::node::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `three-edges.toml` with every listener on port 0 and absolute paths,
/// plus `extra` lines at the top.
fn three_edges(dir: &Path, extra: &str) -> PathBuf {
    let cfg = repo().join("edge-config");
    let text = std::fs::read_to_string(cfg.join("three-edges.toml"))
        .unwrap()
        .replace(":5300\"", ":0\"")
        .replace(":4433\"", ":0\"")
        .replace(":9180\"", ":0\"")
        .replace("\"../geo/", &format!("\"{}/../geo/", cfg.display()))
        .replace("\"functions/", &format!("\"{}/functions/", cfg.display()))
        .replace("\"dev-certs/", &format!("\"{}/dev-certs/", cfg.display()));
    let path = dir.join("three-edges.toml");
    std::fs::write(&path, format!("{extra}\n{text}")).unwrap();
    path
}

async fn start(path: &Path) -> Fleet {
    let topo = fnroute::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let all: Vec<usize> = (0..topo.edges.len()).collect();
    Fleet::start(Arc::new(topo), &all).await.unwrap()
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    head: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.0 request (the server closes after answering).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} for {method} {path}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_every_edge_and_function() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;
    assert_eq!(fleet.admin.len(), 3);
    for (i, &addr) in fleet.admin.iter().enumerate() {
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let r = get(addr, "/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        let s: Status = serde_json::from_slice(&r.body).unwrap();
        let me = ["fra", "nyc", "sin"][i];
        assert_eq!(s.node.name, me);
        assert_eq!(s.node.version, env!("CARGO_PKG_VERSION"));
        assert!(!s.node.draining);
        assert_eq!(s.zone, "fn.test.");
        assert_eq!(s.view.generation, 1);
        let names: Vec<&str> = s.edges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["fra", "nyc", "sin"]);
        for e in &s.edges {
            assert_eq!(e.is_self, e.name == me);
            // No RTT to itself; a peer's only once a probe succeeded.
            if e.is_self {
                assert_eq!(e.rtt_ms, None);
            }
            assert_eq!(e.health.as_str(), "healthy");
        }
        let sin = &s.edges[2];
        assert_eq!((sin.location.lat, sin.location.lon), (1.35, 103.82));
        assert_eq!(sin.addresses, ["127.0.0.13"]);
        assert_eq!(sin.functions, ["echo", "resize", "hello"]);
        let hello = s.functions.iter().find(|f| f.name == "hello").unwrap();
        assert_eq!(hello.edges, ["sin"]);
        assert_eq!(hello.concurrency_max, 4);
        // A pool entry only where this edge hosts the function, with the
        // executors' live numbers (scale to zero: no worker before the
        // first invocation).
        if me == "sin" {
            let p = hello.pools.get("sin").expect("sin hosts hello");
            assert_eq!((p.workers, p.busy, p.queued), (Some(0), Some(0), Some(0)));
        } else {
            assert!(hello.pools.is_empty(), "{:?}", hello.pools);
        }
        // The raw JSON has explicit nulls (clients can rely on the keys).
        let v = r.json();
        assert!(v.pointer(&format!("/edges/{i}/rtt_ms")).unwrap().is_null());
    }
    // The prober (every second) measures each peer's round trip: every
    // edge reports it for its peers, in ms (loopback: well under 1 s).
    let until = std::time::Instant::now() + Duration::from_secs(15);
    for (i, &addr) in fleet.admin.iter().enumerate() {
        loop {
            let s: Status = serde_json::from_slice(&get(addr, "/status").await.body).unwrap();
            let peers: Vec<Option<f64>> = s
                .edges
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, e)| e.rtt_ms)
                .collect();
            if peers.iter().all(Option::is_some) {
                for rtt in peers.into_iter().flatten() {
                    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt} ms");
                }
                assert_eq!(s.edges[i].rtt_ms, None, "no RTT to itself");
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "edge {i}: peers' RTT never measured: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_draining_and_errors_are_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;
    let nyc = fleet.admin[1];
    let r = get(nyc, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

    let cx = &fleet.edges[1];
    cx.view.update(|v| {
        let mut s = v.edges[cx.edge].clone();
        s.draining = true;
        v.with_edge(cx.edge, s)
    });
    let r = get(nyc, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (503, "draining\n"));
    let s: Status = serde_json::from_slice(&get(nyc, "/status").await.body).unwrap();
    assert!(s.node.draining);
    assert_eq!(s.edges[1].health.as_str(), "draining");
    // fra's own view is separate and unchanged.
    assert_eq!(get(fleet.admin[0], "/healthz").await.status, 200);

    let r = get(nyc, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.head.contains("application/problem+json"), "{}", r.head);
    assert_eq!(r.json()["status"], 404);
    let r = http(nyc, "DELETE", "/status", &[], b"").await;
    assert_eq!(r.status, 405);
    assert!(
        r.head.to_ascii_lowercase().contains("allow: get, head"),
        "{}",
        r.head
    );
    let r = http(nyc, "HEAD", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_parses_with_edge_labels() {
    use fnroute::metrics as m;
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;
    // What the front doors, cache, executors and mesh will report.
    m::dns_query("fra", "A", "NOERROR");
    m::dns_query("fra", "A", "NOERROR");
    m::dns_query("fra", "AAAA", "NXDOMAIN");
    m::dns_answer("fra", "echo", "fra");
    m::dns_fallback("sin", "hello");
    m::invocation(
        "fra",
        "echo",
        "ok",
        m::Path::Local,
        Duration::from_millis(4),
    );
    m::invocation(
        "fra",
        "resize",
        "ok",
        m::Path::Forwarded,
        Duration::from_millis(80),
    );
    m::cache_request("nyc", "resize", m::CacheResult::Hit);
    m::cache_request("nyc", "resize", m::CacheResult::Coalesced);
    m::cache_bytes("nyc", 4096);
    m::cache_evictions("nyc", "size", 2);
    m::pool_size("sin", "hello", 2, 1, 0);
    m::pool_event("sin", "hello", m::PoolEvent::ColdStart);
    m::pool_queue_wait("sin", "hello", Duration::from_micros(300));
    // A peer no fleet has: the real probers of this and other tests keep
    // writing the real peers' gauges (a probe that times out under load
    // sets one to 0), so exact values are checked on this one.
    m::peer_state("fra", "ghost", true, 0.25);
    m::peer_rtt("fra", "ghost", Duration::from_millis(38));
    let billed = m::meter("fra", "echo", Duration::from_micros(2_500), 128);
    assert_eq!(billed, 3);

    let r = get(fleet.admin[0], "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/plain; version=0.0.4"), "{}", r.head);
    let text = r.text();
    // Every sample line is `name{labels} value` with a float value (the
    // parser below skips lines it cannot read, so check that first).
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let families: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        m::DNS_QUERIES,
        m::DNS_ANSWERS,
        m::DNS_FALLBACK,
        m::INVOCATIONS,
        m::INVOCATION_DURATION,
        m::CACHE_REQUESTS,
        m::CACHE_BYTES,
        m::CACHE_EVICTIONS,
        m::POOL_WORKERS,
        m::POOL_BUSY,
        m::POOL_QUEUED,
        m::POOL_EVENTS,
        m::POOL_QUEUE_WAIT,
        m::PEER_UP,
        m::PEER_LOAD,
        m::PEER_RTT,
        m::VIEW_GENERATION,
        m::DRAINING,
        m::BUILD_INFO,
        m::METERING_INVOCATIONS,
        m::METERING_BILLED_MS,
        m::METERING_MB_MS,
    ] {
        assert!(families.contains(family), "{family} missing from\n{text}");
        assert!(scrape.docs.contains_key(family), "{family} has no HELP");
    }
    for s in &scrape.samples {
        assert!(
            s.labels.get("edge").is_some(),
            "{} has no edge label",
            s.metric
        );
    }
    let find = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value;
    assert!(matches!(
        find(m::DNS_QUERIES, &[("edge", "fra"), ("qtype", "A"), ("rcode", "NOERROR")]),
        Value::Counter(n) if n >= 2.0
    ));
    assert!(matches!(
        find(m::INVOCATIONS, &[("edge", "fra"), ("function", "resize"), ("path", "forwarded"), ("outcome", "ok")]),
        Value::Counter(n) if n >= 1.0
    ));
    match find(
        m::INVOCATION_DURATION,
        &[("edge", "fra"), ("function", "echo"), ("path", "local")],
    ) {
        Value::Histogram(buckets) => {
            let le5ms = buckets.iter().find(|b| b.less_than == 0.005).unwrap();
            let le1ms = buckets.iter().find(|b| b.less_than == 0.001).unwrap();
            assert!(le5ms.count >= 1.0 && le1ms.count == 0.0, "{buckets:?}");
        }
        other => panic!("histogram expected, got {other:?}"),
    }
    assert!(
        matches!(find(m::PEER_UP, &[("edge", "fra"), ("peer", "ghost")]), Value::Gauge(v) if v == 1.0)
    );
    assert!(
        matches!(find(m::PEER_LOAD, &[("edge", "fra"), ("peer", "ghost")]), Value::Gauge(v) if v == 0.25)
    );
    assert!(
        matches!(find(m::PEER_RTT, &[("edge", "fra"), ("peer", "ghost")]), Value::Gauge(v) if (v - 0.038).abs() < 1e-9)
    );
    // The fleet's own probers export their peers too (value: whatever the
    // last probe saw).
    assert!(matches!(
        find(m::PEER_UP, &[("edge", "fra"), ("peer", "sin")]),
        Value::Gauge(v) if v == 0.0 || v == 1.0
    ));
    assert!(
        matches!(find(m::POOL_WORKERS, &[("edge", "sin"), ("function", "hello")]), Value::Gauge(v) if v == 2.0)
    );
    assert!(
        matches!(find(m::METERING_MB_MS, &[("edge", "fra"), ("function", "echo")]), Value::Counter(v) if v >= 384.0)
    );
    assert!(
        matches!(find(m::BUILD_INFO, &[("edge", "fra"), ("version", env!("CARGO_PKG_VERSION"))]), Value::Gauge(v) if v == 1.0)
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}

/// Real traffic, not direct calls: a DNS query and an invocation on `fra`
/// show up in its scrape (the DNS front door and the executors keep their
/// own counters and export them when scraped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_dns_queries_and_invocations() {
    use fnroute::metrics as m;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use prometheus_parse::Value;
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;

    let mut msg = Message::query();
    msg.add_query(Query::query(
        Name::from_ascii("echo.fn.test.").unwrap(),
        RecordType::A,
    ));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..3 {
        sock.send_to(&msg.to_vec().unwrap(), fleet.dns_addrs[0])
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("a DNS answer")
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.answers.len(), 1);
    }
    let inv = fnroute::exec::Invocation {
        function: "upper".into(),
        payload: bytes::Bytes::from_static(b"metered"),
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
        request_id: "metrics-test".into(),
        trace: None,
    };
    let out = fleet.edges[0]
        .exec
        .invoke(inv)
        .await
        .expect("upper runs on fra");
    assert_eq!(&out.body[..], b"METERED");
    // Through the front door: one local, one forwarded, one routed.
    let client = fnroute::mesh::transport::Client::new(
        &fnroute::mesh::transport::Trust::Insecure,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let conn = client
        .connect(fleet.quic_addrs[0], "localhost")
        .await
        .unwrap();
    let r = conn
        .invoke("upper", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = conn
        .invoke("resize", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!((r.status, r.header("fnroute-edge")), (200, Some("nyc")));
    let mut req = fnroute::mesh::transport::Request::invoke("x", bytes::Bytes::from_static(b"x"));
    req.path = "/route".into();
    let r = conn
        .send(req.header("fnroute-route", "upper"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let text = get(fleet.admin[0], "/metrics").await.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    // The front door's local runs (the invocation and the route's step)
    // record how long they waited for a worker.
    let waits = scrape.samples.iter().find_map(|s| match &s.value {
        Value::Histogram(buckets)
            if s.metric == m::POOL_QUEUE_WAIT
                && s.labels.get("edge") == Some("fra")
                && s.labels.get("function") == Some("upper") =>
        {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max).into()
        }
        _ => None,
    });
    assert!(waits.is_some_and(|n: f64| n >= 2.0), "{waits:?} in\n{text}");
    let value = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
    };
    // Other tests in this process also run edges named fra: at least ours.
    assert!(
        value(
            m::DNS_QUERIES,
            &[("edge", "fra"), ("qtype", "A"), ("rcode", "NOERROR")]
        ) >= 3.0
    );
    // 127.0.0.1 is unknown to the database: the default location, Frankfurt.
    assert!(
        value(
            m::DNS_ANSWERS,
            &[
                ("edge", "fra"),
                ("function", "echo"),
                ("answer_edge", "fra")
            ]
        ) >= 3.0
    );
    assert!(
        value(
            m::METERING_INVOCATIONS,
            &[("edge", "fra"), ("function", "upper")]
        ) >= 1.0
    );
    assert!(value(m::METERING_MB_MS, &[("edge", "fra"), ("function", "upper")]) >= 64.0);
    let _ = value(m::POOL_WORKERS, &[("edge", "fra"), ("function", "upper")]);
    assert!(
        value(
            m::INVOCATIONS,
            &[
                ("edge", "fra"),
                ("function", "upper"),
                ("outcome", "ok"),
                ("path", "local")
            ]
        ) >= 1.0
    );
    assert!(
        value(
            m::INVOCATIONS,
            &[
                ("edge", "fra"),
                ("function", "resize"),
                ("outcome", "ok"),
                ("path", "forwarded")
            ]
        ) >= 1.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == m::INVOCATION_DURATION
                && s.labels.get("function") == Some("resize")
                && matches!(s.value, Value::Histogram(_))),
        "latency histogram of forwarded invocations:\n{text}"
    );
    assert!(value(m::ROUTES, &[("edge", "fra"), ("outcome", "ok")]) >= 1.0);
    assert!(
        value(
            m::ROUTE_STEPS,
            &[("edge", "fra"), ("step", "upper"), ("path", "local")]
        ) >= 1.0
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_purge_needs_a_token_and_drops_entries() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let path = three_edges(
        dir.path(),
        &format!("admin_token_file = {:?}", token_file.display().to_string()),
    );
    let fleet = start(&path).await;
    let nyc = fleet.admin[1];
    // resize (cacheable, hosted on nyc) gets one entry through the cache.
    let cache = fleet.edges[1].cache.clone();
    let key =
        || fnroute::cache::CacheKey::new("resize", 1, b"x", std::iter::empty::<Option<&str>>());
    let policy = fleet.topology.function("resize").unwrap().cache.clone();
    let put = cache
        .fetch(key(), policy.as_ref(), || async {
            Ok(fnroute::pipeline::cached::CachedReply::new(
                bytes::Bytes::from_static(b"x"),
                http::HeaderValue::from_static("text/plain"),
                http::HeaderValue::from_static(""),
                fnroute::cache::Directive::Default,
            ))
        })
        .await;
    assert_eq!(put.status, fnroute::cache::CacheStatus::Miss);

    assert_eq!(http(nyc, "DELETE", "/cache", &[], b"").await.status, 401);
    let auth = [("Authorization", "Bearer s3cret-token")];
    let r = http(nyc, "DELETE", "/cache/nope", &auth, b"").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = http(nyc, "DELETE", "/cache/RESIZE", &auth, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], "resize");
    let again = cache
        .fetch(key(), policy.as_ref(), || async {
            Err(fnroute::pipeline::problem::Problem::new(
                fnroute::pipeline::problem::ProblemKind::Internal,
                "must run: the entry was purged",
            ))
        })
        .await;
    assert_eq!(again.status, fnroute::cache::CacheStatus::Miss);
    assert!(again.result.is_err());
    let r = http(nyc, "DELETE", "/cache", &auth, b"").await;
    assert_eq!((r.status, r.json()["purged"].as_str()), (200, Some("all")));
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_a_token_and_reports_validation() {
    let dir = tempfile::tempdir().unwrap();
    // Without a token configured, mutating endpoints are off and say how
    // to turn them on.
    // The real binary with FNROUTE_ADMIN_TOKEN removed, whatever the test
    // runner's environment holds, so this is checked every run.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let (_child, _logs, admin) = serve_nyc(&three_edges(&plain, ""), None);
    let r = http(admin, "POST", "/reload", &[], b"").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let fix = r.json()["fix"].as_str().unwrap().to_string();
    assert!(
        fix.contains("admin_token_file") && fix.contains("FNROUTE_ADMIN_TOKEN"),
        "{fix}"
    );
    drop(_child);

    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let path = three_edges(
        dir.path(),
        &format!("admin_token_file = {:?}", token_file.display().to_string()),
    );
    let fleet = start(&path).await;
    let fra = fleet.admin[0];
    let r = http(fra, "POST", "/reload", &[], b"").await;
    assert_eq!(r.status, 401);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.head
    );
    let r = http(
        fra,
        "POST",
        "/reload",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        fra,
        "GET",
        "/reload",
        &[("Authorization", "Bearer s3cret-token")],
        b"",
    )
    .await;
    assert_eq!(r.status, 405);

    let auth = [("Authorization", "Bearer s3cret-token")];
    let generation = fleet.geo.generation();
    let r = http(fra, "POST", "/reload", &auth, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["geo"]["ok"], true);
    assert_eq!(v["topology"]["ok"], true);
    assert_eq!(v["applied"], true, "{v}");
    assert_eq!(fleet.geo.generation(), generation + 1);

    // A broken topology on disk is reported, not applied.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("capacity = 256", "capacity = 0")).unwrap();
    let r = http(fra, "POST", "/reload", &auth, b"").await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ok"], false);
    let errors = v["topology"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].as_str().unwrap().contains("capacity 0"),
        "{errors:?}"
    );
    // Still serving the topology it started with.
    let s: Status = serde_json::from_slice(&get(fra, "/status").await.body).unwrap();
    assert_eq!(s.edges[0].capacity, 256);

    // Bodies are capped.
    let big = vec![b'x'; 100 * 1024];
    let r = http(fra, "POST", "/reload", &auth, &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_clients_are_cut_off_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let topo = fnroute::config::load(&three_edges(dir.path(), "")).unwrap();
    let topo = Arc::new(topo);
    let geo = Arc::new(fnroute::geo::GeoDb::open(&topo.geo_db, topo.default_location).unwrap());
    let cx = fnroute::pipeline::EdgeContext::new(topo, geo, 0).unwrap();
    let limits = AdminLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let server = AdminServer::bind(cx, None, limits, None).await.unwrap();
    let addr = server.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(token.clone()));

    // A client that connects and says nothing is closed too.
    let t0 = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "silent client still connected after 5 s");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // Half a request, then silence: closed after the header timeout.
    let t0 = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow client still connected after 5 s");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Garbage gets a 400 or a closed connection, and the server lives on.
    for junk in [
        &b"\x00\x01\x02\xff\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        &[b'A'; 20_000][..],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("closed within 5 s");
        let reply = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || reply.starts_with("HTTP/1.1 4") || reply.starts_with("HTTP/1.1 5"),
            "{reply}"
        );
    }

    // More clients than permits: the extra ones are closed, the rest served.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    drop(idle);
    // Idle ones time out or close; then the server answers again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "/healthz").await.status, 200);

    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fnroute_status_prints_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;
    let addr = fleet.admin[2];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fnroute"))
            .args(["status", "--admin", &addr.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("edge sin  fnroute "), "{stdout}");
    assert!(stdout.contains("view generation 1"), "{stdout}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{stdout}"))
            .to_string()
    };
    let sin = row("sin *");
    assert!(
        sin.contains("healthy")
            && sin.contains("1.35, 103.82")
            && sin.contains("echo, resize, hello"),
        "{sin}"
    );
    assert!(row("fra ").contains("echo, upper"));
    assert!(row("hello ").contains("0/0/0  0..4"), "{stdout}");
    assert!(row("upper ").contains("not hosted here"), "{stdout}");
    fleet.shutdown(Duration::from_secs(2)).await;

    // Nothing listening: a clear error and exit 70.
    let out = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args(["status", "--admin", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot get /status") && stderr.contains("--admin"),
        "{stderr}"
    );
}

/// The status page in a real browser: Debian's chromium, headless, loads
/// it, runs its script, and must show one circle per edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_draws_every_edge_in_chromium() {
    let chromium = which("chromium").unwrap_or_else(|| {
        panic!("chromium is not installed: run .ci/deps-ops.sh (installs Debian's chromium)")
    });
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&three_edges(dir.path(), "")).await;
    // Make the page show every colour: nyc over its threshold, sin down.
    for cx in &fleet.edges {
        if cx.edge == 0 {
            cx.view.update(|v| {
                let mut v = v.clone();
                v.edges[1].load = 0.9;
                v.edges[2].healthy = false;
                v
            });
        }
    }
    let url = format!("http://{}/", fleet.admin[0]);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = dir.path().join("chromium-profile");
    let run = |extra: Vec<String>| {
        let chromium = chromium.clone();
        let profile = profile.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(chromium);
            cmd.args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url);
            cmd.output().unwrap()
        })
    };
    let dom = run(vec!["--dump-dom".into()]).await.unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for (edge, health, colour) in [
        ("fra", "healthy", "#2e9d4f"),
        ("nyc", "over-threshold", "#e0a100"),
        ("sin", "down", "#d63a2f"),
    ] {
        let circle = dom
            .split("<circle")
            .find(|c| c.contains(&format!("id=\"edge-{edge}\"")))
            .unwrap_or_else(|| panic!("no circle for {edge} in the rendered DOM:\n{dom}"));
        assert!(
            circle.contains(&format!("class=\"edge {health}")),
            "{circle}"
        );
        assert!(circle.contains(&format!("fill=\"{colour}\"")), "{circle}");
        assert!(
            dom.contains(&format!("id=\"row-{edge}\"")),
            "no table row for {edge}"
        );
    }
    // Load sets the radius: nyc at 90 % is larger than idle fra.
    let radius = |edge: &str| -> f64 {
        let c = dom
            .split("<circle")
            .find(|c| c.contains(&format!("id=\"edge-{edge}\"")))
            .unwrap();
        c.split("r=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(radius("nyc") > radius("fra") + 5.0);
    assert!(dom.contains("class=\"land\""));
    // The page refreshed itself from /status at least once (every 2 s).
    assert!(
        dom.contains("data-refreshes=\""),
        "the page never refreshed:\n{dom}"
    );

    let out = run(vec![
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,800".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("status page screenshot: {}", shot.display());
    fleet.shutdown(Duration::from_secs(2)).await;
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The systemd unit parses and names an existing program (the binary under
/// test stands in for /usr/local/bin/fnroute), and keeps its hardening.
#[test]
fn systemd_unit_verifies() {
    let analyze = which("systemd-analyze").unwrap_or_else(|| {
        panic!("systemd-analyze is not installed: run .ci/deps-ops.sh (installs Debian's systemd)")
    });
    let unit = std::fs::read_to_string(repo().join("edge-config/deploy/fnroute.service")).unwrap();
    for directive in [
        "User=fnroute",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=fnroute",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(directive)),
            "{directive} missing"
        );
    }
    // The stop timeout must exceed the drain grace passed to serve.
    let grace: u64 = unit
        .split("--grace ")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .expect("ExecStart passes --grace Ns");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|s| s.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} must exceed --grace {grace}s"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("fnroute.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/fnroute", env!("CARGO_BIN_EXE_fnroute")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fnroute.service"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}

#[test]
fn missing_admin_token_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_edges(dir.path(), "admin_token_file = \"no-such.token\"");
    let errors = fnroute::config::load(&path).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!((e.key.as_str(), e.line), ("admin_token_file", 1));
    assert!(
        e.message.contains("admin token file") && e.message.contains("no-such.token"),
        "{e}"
    );
    assert!(
        e.fix
            .as_deref()
            .unwrap_or("")
            .contains("remove admin_token_file"),
        "{e}"
    );
}

/// The real binary serving edge `nyc` of `path`, with `FNROUTE_ADMIN_TOKEN`
/// set to `token` or removed (whatever the test runner's environment
/// holds): the process, its log lines, and its admin address.
fn serve_nyc(
    path: &Path,
    token: Option<&str>,
) -> (KillOnDrop, std::sync::mpsc::Receiver<String>, SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fnroute"));
    cmd.args([
        "serve",
        "--node",
        "nyc",
        "--grace",
        "2s",
        "--log-format",
        "json",
        "--config",
    ])
    .arg(path)
    .env("FNROUTE_LOG", "info")
    .stderr(std::process::Stdio::piped());
    match token {
        Some(t) => cmd.env(fnroute::admin::TOKEN_ENV, t),
        None => cmd.env_remove(fnroute::admin::TOKEN_ENV),
    };
    // Killed if the test fails half-way, so no server outlives it.
    let mut child = KillOnDrop(Some(cmd.spawn().unwrap()));
    let stderr = child.get().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let admin: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve logs that the edge started");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("edge started") {
            break v
                .pointer("/fields/admin")
                .unwrap()
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    (child, rx, admin)
}

/// The real binary, its token from the environment, reloaded over HTTP,
/// then stopped with SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_the_admin_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_edges(dir.path(), "");
    let (mut child, rx, admin) = serve_nyc(&path, Some("from-the-env"));
    let r = http(
        admin,
        "POST",
        "/reload",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        admin,
        "POST",
        "/reload",
        &[("Authorization", "Bearer from-the-env")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["geo"]["ok"], true);
    let s: Status = serde_json::from_slice(&get(admin, "/status").await.body).unwrap();
    assert_eq!(s.node.name, "nyc");
    // SIGHUP reloads the topology too (and says so).
    while rx.try_recv().is_ok() {}
    let hup = Command::new("kill")
        .args(["-HUP", &child.get().id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve logs the reload after SIGHUP");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("topology reloaded") {
            break;
        }
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.get().id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut child = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The reader thread ends at EOF, now that the process is gone.
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_in_use_fails_start_naming_it() {
    let taken = tokio::net::TcpListener::bind("127.0.0.12:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = three_edges(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "admin_listen = \"127.0.0.12:0\"",
        &format!("admin_listen = \"{addr}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let topo = fnroute::config::load(&path).unwrap();
    let err = match Fleet::start(Arc::new(topo), &[0, 1, 2]).await {
        Ok(_) => panic!("started although {addr} is taken"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&addr.to_string()) && err.contains("nyc"),
        "{err}"
    );
    assert!(err.contains("admin listener"), "{err}");
}

/// A start that fails on the last edge leaves nothing of the others:
/// their listeners are closed (the ports bind again) and their warm
/// workers are stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_nothing_running() {
    // fra's listeners on ports we know (free now), sin's QUIC port taken.
    let free_tcp = |ip: &str| {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let fra_dns = free_tcp("127.0.0.11");
    let fra_admin = free_tcp("127.0.0.11");
    let taken = std::net::UdpSocket::bind("127.0.0.13:0").unwrap();
    let sin_quic = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let warm = format!(
        "[[function]]\nname = \"warm\"\nedges = [\"fra\"]\n\
         executor = {{ kind = \"lambda\", command = [\"sh\", \"-c\", \"echo $$ > {}; exec python3 functions/echo.py\"] }}\n\
         concurrency = {{ min = 1, max = 1 }}\n",
        pid_file.display()
    );
    let path = three_edges(dir.path(), "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen(
            "dns_listen = \"127.0.0.11:0\"",
            &format!("dns_listen = \"{fra_dns}\""),
            1,
        )
        .replacen(
            "admin_listen = \"127.0.0.11:0\"",
            &format!("admin_listen = \"{fra_admin}\""),
            1,
        )
        .replacen(
            "quic_listen = \"127.0.0.13:0\"",
            &format!("quic_listen = \"{sin_quic}\""),
            1,
        )
        + &warm;
    std::fs::write(&path, text).unwrap();
    let topo = fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let err = match Fleet::start(Arc::new(topo), &[0, 1, 2]).await {
        Ok(_) => panic!("started although {sin_quic} is taken"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("sin"), "{err}");
    // fra's DNS (UDP and TCP) and admin ports are free again.
    for _ in 0..50 {
        let freed = std::net::UdpSocket::bind(fra_dns).is_ok()
            && std::net::TcpListener::bind(fra_dns).is_ok()
            && std::net::TcpListener::bind(fra_admin).is_ok();
        if freed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        std::net::UdpSocket::bind(fra_dns).is_ok(),
        "fra's DNS UDP socket is still bound"
    );
    assert!(
        std::net::TcpListener::bind(fra_dns).is_ok(),
        "fra's DNS TCP listener is still bound"
    );
    assert!(
        std::net::TcpListener::bind(fra_admin).is_ok(),
        "fra's admin listener is still bound"
    );
    // A warm worker that had started is stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let pid = pid.trim().to_string();
        let mut gone = false;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting to be reaped.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "fra's warm worker {pid} outlived the failed start");
    }
}

struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
