//! The edge mesh on loopback (127.0.0.11-13): forwarding, spill-over,
//! failover and partition with real processes, and mTLS on the internal
//! surface. Timing asserts are generous bounds, never tight values.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnroute::config::Topology;
use fnroute::mesh::transport::{resolve, Client, Request, Trust};
use fnroute::node::Fleet;

use crate::topo::TopoEdit;

pub(crate) const IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
pub(crate) const NAMES: [&str; 3] = ["fra", "nyc", "sin"];

pub(crate) fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A port free for UDP and TCP on all three edge addresses (checked, then
/// released; tests pick fresh ones so they do not collide).
pub(crate) fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(s) = UdpSocket::bind((IPS[0], 0)) else {
            continue;
        };
        let port = s.local_addr().unwrap().port();
        let ok = IPS.iter().all(|ip| {
            let ip: IpAddr = ip.parse().unwrap();
            (ip == IpAddr::from([127, 0, 0, 11]) || UdpSocket::bind((ip, port)).is_ok())
                && TcpListener::bind((ip, port)).is_ok()
        });
        drop(s);
        if ok {
            return port;
        }
    }
    panic!("no free port on 127.0.0.11-13");
}

/// Ports of one test: dns, quic, admin (the same on every edge address).
pub(crate) struct Ports {
    pub(crate) dns: u16,
    pub(crate) quic: u16,
    pub(crate) admin: u16,
}

pub(crate) fn ports() -> Ports {
    loop {
        let p = Ports {
            dns: free_port(),
            quic: free_port(),
            admin: free_port(),
        };
        if p.dns != p.quic && p.quic != p.admin && p.dns != p.admin {
            return p;
        }
    }
}

/// What every in-process test fleet changes in its topology: fresh ports,
/// its own state directory, one DNS socket and probes every 100 ms.
pub(crate) fn test_fleet(t: &mut TopoEdit, dir: &Path, p: &Ports) -> Topology {
    t.ports(p.dns, p.quic, p.admin)
        .set("state_dir", dir.join("state").display().to_string())
        .set("dns.udp_sockets", 1);
    if t.has("mesh") {
        t.set("mesh.probe_interval_ms", 100);
    }
    t.load()
}

pub(crate) fn quic(edge: usize, p: &Ports) -> SocketAddr {
    SocketAddr::new(IPS[edge].parse().unwrap(), p.quic)
}

fn dns(edge: usize, p: &Ports) -> SocketAddr {
    SocketAddr::new(IPS[edge].parse().unwrap(), p.dns)
}

pub(crate) fn client() -> Client {
    Client::new(&Trust::Insecure, "127.0.0.1:0".parse().unwrap()).expect("client")
}

/// `edge-config/three-edges.toml` as shipped, on fresh ports, probing
/// every 100 ms, with its state in `dir`.
fn three_edges(dir: &Path, p: &Ports) -> Topology {
    test_fleet(&mut TopoEdit::open("edge-config/three-edges.toml"), dir, p)
}

/// `three_edges` served in this process, on fresh ports (retried when a
/// port was taken between the check and the bind).
async fn start_three(dir: &Path) -> (Ports, Arc<Topology>, Fleet) {
    let mut last = String::new();
    for _ in 0..3 {
        let p = ports();
        let t = Arc::new(three_edges(dir, &p));
        match Fleet::start(t.clone(), &[0, 1, 2]).await {
            Ok(f) => return (p, t, f),
            Err(e) => last = format!("{e:#}"),
        }
    }
    panic!("fleet did not start: {last}");
}

/// A topology file for real processes: command functions only, absolute
/// paths, probing every 100 ms (fall 3, rise 2).
pub(crate) fn write_topology(dir: &Path, p: &Ports, extra: &str) -> PathBuf {
    let edges: String = (0..3)
        .map(|i| {
            let loc = [
                "50.11, lon = 8.68",
                "40.71, lon = -74.01",
                "1.35, lon = 103.82",
            ][i];
            format!(
                r#"
[[edge]]
name = "{name}"
location = {{ lat = {loc} }}
addresses = ["{ip}"]
dns_listen = "{ip}:{dns}"
quic_listen = "{ip}:{quic}"
admin_listen = "{ip}:{admin}"
capacity = 64
"#,
                name = NAMES[i],
                ip = IPS[i],
                dns = p.dns,
                quic = p.quic,
                admin = p.admin,
            )
        })
        .collect();
    let toml = format!(
        r#"
zone = "fn.test."
geo_db = "{geo}"
default_location = {{ lat = 50.11, lon = 8.68 }}
state_dir = "{state}"

[dns]
ttl = 1
answers = 1
udp_sockets = 1

[mesh]
ca = "{certs}/ca.pem"
cert_dir = "{certs}"
probe_interval_ms = 100
fall = 3
rise = 2
{extra}
{edges}

[[function]]
name = "resize"
edges = ["nyc", "sin"]
executor = {{ kind = "command", command = ["cat"] }}
timeout_ms = 3000
idempotent = true
"#,
        geo = repo("geo/sample.mmdb").display(),
        state = dir.join("state").display(),
        certs = repo("edge-config/dev-certs").display(),
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Edge processes, killed (SIGKILL) when dropped.
pub(crate) struct Procs {
    config: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Procs {
    pub(crate) fn start(config: PathBuf, dir: &Path) -> Self {
        let mut p = Self {
            config,
            dir: dir.to_path_buf(),
            children: vec![None, None, None],
        };
        for i in 0..3 {
            p.spawn(i);
        }
        p
    }

    pub(crate) fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", NAMES[i])))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fnroute"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--node", NAMES[i], "--grace", "2s"])
            .env("FNROUTE_LOG", "warn,fnroute=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fnroute serve");
        self.children[i] = Some(child);
    }

    /// The first edge whose process has exited, if any.
    fn exited(&mut self) -> Option<usize> {
        (0..3).find(|&i| {
            self.children[i]
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        })
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.children[i].as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: signalling our own child process by its pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// The process id of edge `i`, while it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    pub(crate) fn logs(&self) -> String {
        NAMES
            .iter()
            .map(|n| {
                let s =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                format!(
                    "--- {n} ---\n{}",
                    s.lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..3 {
            if let Some(c) = self.children[i].as_mut() {
                // A stopped process must be continued to die promptly.
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
            }
            self.kill(i);
        }
    }
}

/// Invokes `function` on `edge` with a fresh connection; (status, edge).
pub(crate) async fn invoke_once(
    c: &Client,
    edge: SocketAddr,
    function: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let conn = c
        .connect(edge, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    let r = conn
        .invoke(function, Bytes::from(body.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    Ok((r.status, r.header("fnroute-edge").unwrap_or("").to_string()))
}

/// Waits until every edge answers and `resize` through fra succeeds.
pub(crate) async fn wait_ready(p: &Ports, procs: &mut Procs) -> Result<(), String> {
    let c = client();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = procs.exited() {
            return Err(format!("{} exited", NAMES[i]));
        }
        let mut ok = true;
        for i in 0..3 {
            if c.connect(quic(i, p), "localhost").await.is_err() {
                ok = false;
            }
        }
        if ok
            && matches!(
                invoke_once(&c, quic(0, p), "resize", "x").await,
                Ok((200, _))
            )
        {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err("edges did not start within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three edge processes on fresh ports, ready to serve. Ports are checked
/// free and then released, so another test may grab one meanwhile: a
/// process that exits at start (port taken) means new ports and a retry.
pub(crate) async fn start_procs(dir: &Path, extra: &str, functions: &str) -> (Ports, Procs) {
    let mut last = String::new();
    for _ in 0..3 {
        let p = ports();
        let path = write_topology(dir, &p, extra);
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + functions).unwrap();
        let mut procs = Procs::start(path, dir);
        match wait_ready(&p, &mut procs).await {
            Ok(()) => return (p, procs),
            Err(e) => last = format!("{e}\n{}", procs.logs()),
        }
    }
    panic!("edges did not start: {last}");
}

/// The A answer of fra's DNS for `resize.fn.test` (None on no answer).
async fn dns_answer(p: &Ports) -> Option<IpAddr> {
    resolve(dns(0, p), "resize.fn.test.", Duration::from_millis(500))
        .await
        .ok()
        .map(|r| r.addr)
}

async fn wait_dns(
    p: &Ports,
    want: impl Fn(Option<IpAddr>) -> bool,
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if want(dns_answer(p).await) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_the_only_host_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _t, fleet) = start_three(dir.path()).await;
    let c = client();
    // hello is hosted on sin only; invoked on fra it runs on sin.
    let (status, edge) = invoke_once(&c, quic(0, &p), "hello", r#"{"name":"mesh"}"#)
        .await
        .expect("invoke");
    assert_eq!((status, edge.as_str()), (200, "sin"));
    // Hosted locally: runs locally.
    let (status, edge) = invoke_once(&c, quic(0, &p), "upper", "abc")
        .await
        .expect("invoke");
    assert_eq!((status, edge.as_str()), (200, "fra"));
    // Over HTTPS on TCP (curl, HTTP/2) the same: fra forwards over the
    // QUIC mesh and relays sin's answer.
    let tcp = fleet.tcp_addrs[0].expect("fra's tcp_listen");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-k",
            "-D",
            "-",
            "--data-binary",
            r#"{"name":"tcp"}"#,
        ])
        .arg("--resolve")
        .arg(format!("fra.fn.test:{}:{}", tcp.port(), tcp.ip()))
        .arg(format!("https://fra.fn.test:{}/fn/hello", tcp.port()))
        .output()
        .expect("curl runs (.ci/deps-web.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("fnroute-edge: sin"), "{text}");
    assert!(text.contains("tcp"), "{text}");
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_function_is_forwarded_to_the_edge_that_hosts_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let mut edit = TopoEdit::open("edge-config/three-edges.toml");
    edit.append(&format!(
        "\n[[function]]\nname = \"tiny\"\nedges = [\"sin\"]\nexecutor = {{ kind = \"wasm\", component = \"{}\" }}\n",
        crate::wasm::fixture("hello").display()
    ));
    let t = Arc::new(test_fleet(&mut edit, dir.path(), &p));
    let fleet = Fleet::start(t, &[0, 1, 2]).await.expect("fleet starts");
    let c = client();
    // Only sin instantiates it; fra forwards over the mesh.
    let (status, edge) = invoke_once(&c, quic(0, &p), "tiny", "{}")
        .await
        .expect("invoke");
    assert_eq!((status, edge.as_str()), (200, "sin"));
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_guards_health_and_internal_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (p, t, fleet) = start_three(dir.path()).await;
    let anon = client();
    let conn = anon
        .connect(quic(0, &p), "localhost")
        .await
        .expect("connect");
    let health = Request {
        method: http::Method::GET,
        path: "/health".into(),
        headers: Vec::new(),
        chunks: Vec::new(),
        content_length: None,
        chunk_delay: None,
    };
    let r = conn.send(health.clone()).await.expect("health");
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // A forged hop count at the limit is ignored: the request is forwarded.
    let r = conn
        .send(Request::invoke("hello", Bytes::from_static(b"{}")).header("fnroute-hop", "3"))
        .await
        .expect("invoke");
    assert_eq!((r.status, r.header("fnroute-edge")), (200, Some("sin")));

    // Positive control: a cluster peer (nyc's certificate) reads /health
    // and its hop count is honoured.
    let mesh = t.mesh.as_ref().unwrap();
    let cluster = fnroute::tls::pki::Cluster::load(&t, mesh, 1).expect("cluster");
    let peer = Client::with_config(
        cluster.client_config(Duration::from_secs(5)).unwrap(),
        "127.0.0.12:0".parse().unwrap(),
    )
    .unwrap();
    let pc = peer
        .connect(quic(0, &p), "fra")
        .await
        .expect("peer connect");
    let r = pc.send(health).await.expect("health");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["edge"], "fra");
    assert_eq!(doc["draining"], false);
    assert!(doc["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["function"] == "upper"));
    let r = pc
        .send(Request::invoke("hello", Bytes::from_static(b"{}")).header("fnroute-hop", "3"))
        .await
        .expect("invoke");
    assert_eq!(r.status, 508, "hop limit from a peer: {:?}", r.body);
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_pool_spills_over_to_the_next_edge() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let path = write_topology(dir.path(), &p, "\n[executors]\nqueue = 0\n");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap()
            + r#"
[[function]]
name = "slow"
edges = ["fra", "nyc"]
executor = { kind = "command", command = ["sh", "-c", "sleep 1; cat"] }
timeout_ms = 5000
concurrency = { min = 0, max = 1 }
idempotent = true
"#,
    )
    .unwrap();
    let mut t = fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    if let Some(m) = &mut t.mesh {
        m.probe_interval = Duration::from_millis(100);
    }
    let fleet = Fleet::start(Arc::new(t), &[0, 1, 2]).await.expect("fleet");
    let c = Arc::new(client());
    let mut runs = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let addr = quic(0, &p);
        runs.push(tokio::spawn(async move {
            invoke_once(&c, addr, "slow", "x").await
        }));
        // The first takes fra's only worker.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut edges = Vec::new();
    for r in runs {
        let (status, edge) = r.await.unwrap().expect("invoke");
        assert_eq!(status, 200);
        edges.push(edge);
    }
    edges.sort();
    assert_eq!(
        edges,
        ["fra", "nyc"],
        "one ran on fra, the other spilled to nyc"
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}

/// Drives idempotent invocations through fra until `stop`; counts.
struct Driver {
    ok: Arc<AtomicU64>,
    /// Slowest invocation so far (µs).
    slowest: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn drive(p: &Ports, workers: usize, limit: Duration) -> Driver {
    let ok = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = quic(0, p);
    let tasks = (0..workers)
        .map(|_| {
            let (ok, errors, stop) = (ok.clone(), errors.clone(), stop.clone());
            let slowest = slowest.clone();
            tokio::spawn(async move {
                let c = client();
                let conn = c.connect(addr, "localhost").await.expect("connect fra");
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = conn.invoke("resize", Bytes::from_static(b"payload")).await;
                    let took = t0.elapsed();
                    slowest.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status == 200 && took < limit => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => errors.lock().unwrap().push(format!(
                            "status {} after {took:?}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => errors.lock().unwrap().push(format!("{e} after {took:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    Driver {
        ok,
        slowest,
        errors,
        stop,
        tasks,
    }
}

impl Driver {
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        eprintln!(
            "driver: slowest invocation {:?}",
            Duration::from_micros(self.slowest.load(Ordering::Relaxed))
        );
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

const NYC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 12));

/// How long a dead or stopped edge may stay in DNS answers with the
/// processes' probing (interval 100 ms, fall 3): (fall + 1) x interval.
const DNS_DROP_BOUND: Duration = Duration::from_millis(400);

#[test]
fn the_drop_bound_is_the_probers() {
    assert_eq!(
        fnroute::mesh::probe::detection_bound(Duration::from_millis(100), 3),
        DNS_DROP_BOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_with_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, mut procs) = start_procs(dir.path(), "", "").await;
    // From Frankfurt, resize (nyc, sin) is answered with nyc.
    assert!(
        wait_dns(&p, |a| a == Some(NYC), Duration::from_secs(10))
            .await
            .is_some(),
        "fra's dns hands out nyc while it is up\n{}",
        procs.logs()
    );
    let driver = drive(&p, 4, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    procs.kill(1);
    let gone = wait_dns(
        &p,
        |a| a.is_some() && a != Some(NYC),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, errors) = driver.finish().await;
    assert!(
        errors.is_empty(),
        "failed invocations: {errors:#?}\n{}",
        procs.logs()
    );
    assert!(ok > 20, "only {ok} invocations");
    // Bound: (fall + 1) x interval = 400 ms (`detection_bound`; this test
    // runs in phase with fra's prober, so it sees about the worst case),
    // asserted with 3x slack for a loaded machine: still well below the
    // 1.5 s of the old 500 ms probe timeout floor.
    let bound = DNS_DROP_BOUND;
    let gone = gone.unwrap_or_else(|| panic!("dns kept answering the dead edge\n{}", procs.logs()));
    assert!(
        gone < bound * 3,
        "dns dropped nyc after {gone:?} (bound {bound:?})\n{}",
        procs.logs()
    );
    eprintln!(
        "failover: {ok} invocations, 0 failed; dns stopped answering nyc {gone:?} after SIGKILL (bound {bound:?})"
    );
    procs.spawn(1);
    let back = Instant::now();
    assert!(
        wait_dns(&p, |a| a == Some(NYC), Duration::from_secs(20))
            .await
            .is_some(),
        "nyc came back but dns does not hand it out\n{}",
        procs.logs()
    );
    eprintln!(
        "failover: nyc back in dns {:?} after restart",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_peer_is_marked_down_and_nothing_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let (p, procs) = start_procs(dir.path(), "", "").await;
    assert!(wait_dns(&p, |a| a == Some(NYC), Duration::from_secs(10))
        .await
        .is_some());
    procs.signal(1, libc::SIGSTOP);
    // No request waits past its deadline (3 s) plus slack.
    let driver = drive(&p, 2, Duration::from_secs(3) + Duration::from_millis(1500));
    let gone = wait_dns(
        &p,
        |a| a.is_some() && a != Some(NYC),
        Duration::from_secs(10),
    )
    .await;
    // Once nyc is down, requests go straight to sin.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, errors) = driver.finish().await;
    procs.signal(1, libc::SIGCONT);
    let gone = gone.unwrap_or_else(|| panic!("stopped peer never marked down\n{}", procs.logs()));
    assert!(
        gone < DNS_DROP_BOUND * 3,
        "dns dropped the stopped nyc after {gone:?} (bound {DNS_DROP_BOUND:?})\n{}",
        procs.logs()
    );
    eprintln!("partition: dns stopped answering nyc {gone:?} after SIGSTOP");
    assert!(errors.is_empty(), "{errors:#?}\n{}", procs.logs());
    assert!(ok > 5, "only {ok} invocations");
    assert!(
        wait_dns(&p, |a| a == Some(NYC), Duration::from_secs(20))
            .await
            .is_some(),
        "continued peer not back in dns\n{}",
        procs.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_reports_draining_to_peers_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let t = Arc::new(three_edges(dir.path(), &p));
    // Two processes' worth of edges in one test: fra and sin; nyc alone.
    let a = Fleet::start(t.clone(), &[0, 2]).await.expect("fra, sin");
    let b = Fleet::start(t.clone(), &[1]).await.expect("nyc");
    let view = a.edges[0].view.clone();
    // Both sides probe each other; fra sees nyc up and not draining.
    let until = Instant::now() + Duration::from_secs(10);
    while view.load().edges[1].draining || !view.load().edges[1].healthy {
        assert!(Instant::now() < until, "nyc never seen up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = tokio::spawn(b.shutdown(Duration::from_secs(2)));
    // fra learns "draining" from nyc's /health while nyc still answers:
    // healthy and draining at once (not merely down).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = view.load();
        if v.edges[1].draining && v.edges[1].healthy {
            break;
        }
        assert!(Instant::now() < until, "fra never saw nyc draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing is forwarded to a draining edge: resize goes to sin.
    let (status, edge) = invoke_once(&client(), quic(0, &p), "resize", "x")
        .await
        .expect("invoke");
    assert_eq!((status, edge.as_str()), (200, "sin"));
    stopping.await.unwrap();
    a.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn missing_cluster_certificates_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let path = write_topology(dir.path(), &p, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/ca.pem\"", "/nope.pem\"");
    std::fs::write(&path, text).unwrap();
    let e = fnroute::config::load(&path).expect_err("missing ca");
    let s = e.to_string();
    assert!(
        s.contains("mesh.ca") && s.contains("fnroute cert dev"),
        "{s}"
    );
    // Knobs out of range are errors too, named by key.
    let bad = std::fs::read_to_string(&path)
        .unwrap()
        .replace("probe_interval_ms = 100", "probe_interval_ms = 5")
        .replace("fall = 3", "fall = 0");
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, bad).unwrap();
    let s = fnroute::config::load(&bad_path)
        .expect_err("bad knobs")
        .to_string();
    assert!(
        s.contains("mesh.probe_interval_ms") && s.contains("mesh.fall"),
        "{s}"
    );
    // `fnroute cert dev` creates what is missing, and then it loads.
    let out = dir.path().join("certs");
    let text = std::fs::read_to_string(&path).unwrap();
    let certs = repo("edge-config/dev-certs").display().to_string();
    let text = text
        .replace(
            &format!("{certs}/nope.pem"),
            &format!("{}/ca.pem", out.display()),
        )
        .replace(
            &format!("cert_dir = \"{certs}\""),
            &format!("cert_dir = \"{}\"", out.display()),
        );
    std::fs::write(&path, text).unwrap();
    assert!(fnroute::config::load(&path).is_err(), "certs not there yet");
    let st = Command::new(env!("CARGO_BIN_EXE_fnroute"))
        .args(["cert", "dev", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    for f in ["ca.pem", "fra.pem", "fra-key.pem", "nyc.pem", "sin-key.pem"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let t = fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // The edge name is recoverable from its certificate.
    let pem = std::fs::read(out.join("nyc.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let names: Vec<String> = t.edges.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        fnroute::tls::pki::peer_name(&der, &names).as_deref(),
        Some("nyc")
    );
}

/// Measurement, not a check (docs/performance.md "Edge mesh"): forwarded
/// vs local invocation latency against a running three-edge fleet,
/// `target/release/fnroute serve --config edge-config/three-edges.toml --all`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_invocation_is_not_retried_once_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (p, mut procs) = start_procs(
        dir.path(),
        "",
        r#"
[[function]]
name = "charge"
edges = ["nyc", "sin"]
executor = { kind = "command", command = ["sh", "-c", "sleep 1; cat"] }
timeout_ms = 3000
"#,
    )
    .await;
    let c = client();
    let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
    // Reaches nyc (fra's nearest host), which dies while running it.
    let call = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = conn.invoke("charge", Bytes::from_static(b"once")).await;
        (r, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    procs.kill(1);
    let (r, took) = call.await.unwrap();
    let r = r.expect("fra answers");
    assert_eq!(r.status, 502, "{r:?}\n{}", procs.logs());
    assert_eq!(r.header("fnroute-edge"), Some("fra"), "not re-run on sin");
    let problem = r.problem().expect("problem+json");
    assert_eq!(
        problem["type"],
        "https://fnroute.dev/problems/forward-failed"
    );
    assert!(
        took < Duration::from_secs(5),
        "bounded by the deadline: {took:?}"
    );
}

/// Streams through a forwarding edge: sin runs the functions, the client
/// talks to fra. Server-sent events arrive as sin's function writes them
/// (the relay holds a bounded buffer, never the whole body); a function
/// URL's prelude crosses the hop as the head; an abort on sin is an abort
/// at fra; a client that leaves fra stops the process on sin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_the_mesh_as_they_are_written() {
    use crate::stream::{example, Arrivals};
    use fnroute::mesh::transport::Request;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sin.pid");
    let p = ports();
    let mut edit = TopoEdit::open("edge-config/three-edges.toml");
    let sse = "for i in 1 2 3 4 5; do printf 'data: %s\\n\\n' $(date +%s%N); sleep 0.1; done";
    let broken = "echo first; sleep 0.1; exit 2";
    let forever = format!(
        "echo $$ > {}; while true; do echo tick; sleep 0.05; done",
        pid_file.display()
    );
    for (name, script) in [
        ("sse", sse),
        ("broken", broken),
        ("forever", forever.as_str()),
    ] {
        edit.append(&format!(
            "\n[[function]]\nname = \"{name}\"\nedges = [\"sin\"]\nstreaming = true\nexecutor = {{ kind = \"command\", command = [\"sh\", \"-c\", {script:?}] }}\n"
        ));
    }
    edit.append(&format!(
        "\n[[function]]\nname = \"lsse\"\nedges = [\"sin\"]\nstreaming = true\ninterface = \"http\"\nexecutor = {{ kind = \"lambda\", command = [{:?}] }}\n",
        example("lambda_stream")
    ));
    let t = Arc::new(test_fleet(&mut edit, dir.path(), &p));
    let fleet = Fleet::start(t, &[0, 1, 2]).await.expect("fleet starts");
    let c = client();
    let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
    let mut r = conn
        .send_streaming(Request::invoke("sse", Bytes::from_static(b"x")))
        .await
        .expect("invoke");
    assert_eq!((r.status, r.header("fnroute-edge")), (200, Some("sin")));
    assert!(r.is_streaming(), "{:?}", r.headers);
    let mut a = Arrivals::default();
    while let Some(chunk) = r.chunk().await {
        a.push(&chunk.expect("a clean end"));
    }
    a.check(5, Duration::from_millis(60), "through fra");
    // The function URL of a streaming Lambda function on sin, asked at fra.
    let url = c
        .connect(quic(0, &p), "lsse.fn.test")
        .await
        .expect("connect");
    let mut req = Request::invoke("ignored", Bytes::new());
    req.method = http::Method::GET;
    req.path = "/events".into();
    req.content_length = None;
    req.chunks.clear();
    let mut r = url.send_streaming(req).await.expect("url");
    assert_eq!(r.status, 201, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("set-cookie"), Some("session=streamed; Path=/"));
    assert_eq!(r.header("fnroute-edge"), Some("sin"));
    let mut a = Arrivals::default();
    while let Some(chunk) = r.chunk().await {
        a.push(&chunk.expect("a clean end"));
    }
    a.check(5, Duration::from_millis(60), "url through fra");
    // An abort on sin is an abort at fra.
    let mut r = conn
        .send_streaming(Request::invoke("broken", Bytes::from_static(b"x")))
        .await
        .expect("invoke");
    let (_, end) = crate::stream::to_end(&mut r).await;
    assert!(end.expect("an abort").is_err());
    // The client leaves fra: the process on sin stops.
    let mut r = conn
        .send_streaming(Request::invoke("forever", Bytes::from_static(b"x")))
        .await
        .expect("invoke");
    for _ in 0..3 {
        r.chunk().await.expect("a chunk").expect("data");
    }
    let pid = crate::stream::pid_in(&pid_file).await;
    drop(r);
    assert!(
        crate::stream::gone(pid).await,
        "the command on sin runs on after the client left fra"
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}
