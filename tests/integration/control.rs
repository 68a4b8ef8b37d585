//! The fleet control plane against a real nats-server with JetStream
//! (the NATS project's 2.15 release; `.ci/deps-control.sh`) and three real `fnroute serve
//! --control` processes: deploy once and every edge serves it, rollback,
//! concurrent deploys, tampered revisions and artifacts refused, and an
//! edge started with NATS down serving from its state directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnroute::mesh::transport::Request;

use super::mesh::{client, ports, quic, write_topology, Ports, IPS, NAMES};

/// GET /metrics from an admin listener.
async fn admin_metrics(admin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A nats-server with JetStream on a free loopback port, its store in `dir`.
struct Nats {
    child: Child,
    url: String,
    dir: PathBuf,
    port: u16,
}

impl Nats {
    fn start(dir: &Path, port: Option<u16>) -> Self {
        Self::start_with(dir, port, &[])
    }

    fn start_with(dir: &Path, port: Option<u16>, extra: &[String]) -> Self {
        let dir = dir.to_path_buf();
        let ports_dir = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-js", "-p"])
            .arg(port.map_or_else(|| "-1".to_string(), |p| p.to_string()))
            .arg("-sd")
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (.ci/deps-control.sh installs it)");
        let started = Instant::now();
        let url = loop {
            let found = std::fs::read_dir(&ports_dir)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .and_then(|e| std::fs::read_to_string(e.path()).ok())
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_string));
            if let Some(u) = found {
                break u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Self {
            child,
            url,
            dir,
            port,
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.stop();
        *self = Self::start(&self.dir.clone(), Some(self.port));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fnroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fnroute"))
}

/// Runs `cmd`, which must exit 0 (else the test fails with its stderr),
/// and returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("fnroute runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The topology of `write_topology` plus a command function `ver` and a
/// function `app` whose code is a bundle, both answering `version`.
fn topology(dir: &Path, p: &Ports, version: &str) -> PathBuf {
    let bundle = dir.join("app");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("run.sh"),
        format!("cat >/dev/null; echo bundle-{version}\n"),
    )
    .unwrap();
    let extra = format!(
        r#"
[[function]]
name = "ver"
executor = {{ kind = "command", command = ["sh", "-c", "cat >/dev/null; echo {version}"] }}

[[function]]
name = "app"
bundle = "app"
executor = {{ kind = "command", command = ["sh", "run.sh"] }}

[[function]]
name = "hw"
executor = {{ kind = "wasm", component = "hello.wasm" }}
"#
    );
    // A wasm component outside a bundle: shipped as its own artifact.
    std::fs::copy(crate::wasm::fixture("hello"), dir.join("hello.wasm")).unwrap();
    let path = write_topology(dir, p, "");
    let text = std::fs::read_to_string(&path).unwrap() + &extra;
    std::fs::write(&path, text).unwrap();
    path
}

fn deploy_command(nats: &Nats, file: &Path, key: &Path) -> Command {
    let mut c = fnroute();
    c.args(["deploy", "--control", &nats.url, "--topology"])
        .arg(file)
        .arg("--key")
        .arg(key);
    c
}

fn deploy(nats: &Nats, file: &Path, key: &Path) -> std::process::Output {
    deploy_command(nats, file, key)
        .output()
        .expect("fnroute deploy")
}

fn revision(out: &std::process::Output) -> u64 {
    assert!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("revision ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

/// The three edges as `fnroute serve --control` processes.
struct Edges {
    children: Vec<Option<Child>>,
    dir: PathBuf,
    url: String,
    trust: PathBuf,
}

impl Edges {
    fn start(dir: &Path, nats: &Nats, trust: &Path) -> Self {
        let mut e = Self {
            children: vec![None, None, None],
            dir: dir.to_path_buf(),
            url: nats.url.clone(),
            trust: trust.to_path_buf(),
        };
        for i in 0..3 {
            e.spawn(i);
        }
        e
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("{}.log", NAMES[i]))).unwrap();
        let child = fnroute()
            .args([
                "serve",
                "--control",
                &self.url,
                "--node",
                NAMES[i],
                "--control-trust",
            ])
            .arg(&self.trust)
            .arg("--state-dir")
            .arg(self.dir.join(format!("state-{}", NAMES[i])))
            .arg("--grace")
            .arg("1s")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fnroute serve");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Edges {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// What `function` answers on edge `i` (None: not reachable yet).
async fn answer(p: &Ports, i: usize, function: &str) -> Option<String> {
    let c = client();
    let conn = tokio::time::timeout(Duration::from_secs(2), c.connect(quic(i, p), "localhost"))
        .await
        .ok()?
        .ok()?;
    let r = conn
        .send(Request::invoke(function, Bytes::from_static(b"x")))
        .await
        .ok()?;
    (r.status == 200).then(|| String::from_utf8_lossy(&r.body).trim().to_string())
}

/// Waits until every edge answers `want` for `function`; returns how long.
async fn until_all(p: &Ports, function: &str, want: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for i in 0..3 {
            if answer(p, i, function).await.as_deref() != Some(want) {
                all = false;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not every edge answers {function} = {want:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(nats: &Nats) -> String {
    run_ok(fnroute().args(["control", "status", "--control", &nats.url]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_once_and_every_edge_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut nats = Nats::start(&d.join("nats"), None);
    let key = d.join("fleet.key");
    run_ok(fnroute().args(["control", "keygen", "--out"]).arg(&key));
    let trust = d.join("fleet.key.pub");
    let p = ports();

    // v1, then three edges that know nothing but the control plane.
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let r1 = revision(&deploy(&nats, &topology(&src, &p, "v1"), &key));
    let mut edges = Edges::start(d, &nats, &trust);
    until_all(&p, "ver", "v1", Duration::from_secs(30)).await;
    until_all(&p, "app", "bundle-v1", Duration::from_secs(5)).await;
    until_all(&p, "hw", "hello from wasm", Duration::from_secs(5)).await;

    // v2: new code in the bundle and the command, applied live.
    let r2 = revision(&deploy(&nats, &topology(&src, &p, "v2"), &key));
    assert!(r2 > r1);
    until_all(&p, "ver", "v2", Duration::from_secs(10)).await;
    until_all(&p, "app", "bundle-v2", Duration::from_secs(5)).await;
    let s = status(&nats);
    assert!(s.contains(&format!("current revision {r2}")), "{s}");
    let current = s.lines().filter(|l| l.ends_with("  current")).count();
    assert_eq!(current, 3, "{s}");

    // Rollback: v1's topology again, as the newest revision.
    run_ok(fnroute().args([
        "control",
        "rollback",
        "--control",
        &nats.url,
        &r1.to_string(),
    ]));
    until_all(&p, "ver", "v1", Duration::from_secs(10)).await;
    until_all(&p, "app", "bundle-v1", Duration::from_secs(5)).await;

    // Two deploys at once: one wins, the other says so.
    let f3 = topology(&src, &p, "v3");
    let a = deploy_command(&nats, &f3, &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = deploy_command(&nats, &f3, &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let won = [&a, &b].iter().filter(|o| o.status.success()).count();
    let lost: Vec<_> = [&a, &b]
        .into_iter()
        .filter(|o| !o.status.success())
        .collect();
    // Both may succeed one after the other; never both from one base.
    if won == 1 {
        let err = String::from_utf8_lossy(&lost[0].stderr);
        assert!(err.contains("another deploy won"), "{err}");
        assert_eq!(lost[0].status.code(), Some(75));
    } else {
        assert_eq!(won, 2, "a deploy failed for another reason: {a:?} {b:?}");
    }
    until_all(&p, "ver", "v3", Duration::from_secs(10)).await;

    // A tampered revision (the topology changed after signing) is refused
    // and reported; the edges keep serving v3.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("fnroute").await.unwrap();
    let entry = kv.entry("topology").await.unwrap().unwrap();
    let mut rev: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    let tampered = rev["topology"]
        .as_str()
        .unwrap()
        .replace("echo v3", "echo pwned");
    rev["topology"] = tampered.into();
    let bad = kv
        .update(
            "topology",
            serde_json::to_vec(&rev).unwrap().into(),
            entry.revision,
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let s = status(&nats);
        if s.matches(&format!("refused revision {bad}: signature"))
            .count()
            == 3
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        assert_eq!(answer(&p, i, "ver").await.as_deref(), Some("v3"));
    }
    // The refusal on the edge's own status page and metrics too.
    let admin = format!("{}:{}", IPS[0], p.admin);
    let out = fnroute()
        .args(["status", "--admin", &admin, "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["control"]["refused"]["revision"], bad, "{doc}");
    let out = fnroute()
        .args(["status", "--admin", &admin])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("refused revision {bad}: signature")),
        "{table}"
    );
    let metrics = admin_metrics(&admin).await;
    assert!(
        metrics.contains("fnroute_control_revisions_refused_total{edge=\"fra\"} 1"),
        "{metrics}"
    );

    // NATS goes away: a deploy fails clearly (nothing half-written), and
    // an edge started while NATS is down serves what it had.
    nats.stop();
    let down = deploy(&nats, &topology(&src, &p, "lost"), &key);
    assert_eq!(
        down.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    edges.kill(1);
    edges.spawn(1);
    let started = Instant::now();
    while answer(&p, 1, "ver").await.as_deref() != Some("v3") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nyc did not come back from its state directory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // NATS back: a new deploy reaches every edge, nyc included.
    nats.restart();
    let r4 = revision(&deploy(&nats, &topology(&src, &p, "v4"), &key));
    until_all(&p, "ver", "v4", Duration::from_secs(20)).await;

    // A tampered artifact: v4's bundle replaced in the object store. An
    // edge that has to download it (sin, its state directory wiped)
    // refuses the revision, reports why and serves nothing it cannot
    // verify.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("fnroute").await.unwrap();
    let rev: serde_json::Value =
        serde_json::from_slice(&kv.get("topology").await.unwrap().unwrap()).unwrap();
    let bundle = rev["artifacts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, a)| a["kind"] == "bundle")
        .map(|(r, _)| r.replacen(':', "-", 1))
        .unwrap();
    // Edges download artifacts with direct gets: no consumer is left on
    // the artifact stream (nats-server caps a stream at 1,000, and a
    // download's consumer would linger for 30 s).
    let mut stream = js.get_stream("OBJ_fnroute-artifacts").await.unwrap();
    let consumers = stream.info().await.unwrap().state.consumer_count;
    assert_eq!(consumers, 0, "consumers left on the artifact stream");
    let objects = js.get_object_store("fnroute-artifacts").await.unwrap();
    objects
        .put(bundle.as_str(), &mut &b"not the bundle"[..])
        .await
        .unwrap();
    edges.kill(2);
    std::fs::remove_dir_all(d.join("state-sin")).unwrap();
    edges.spawn(2);
    let started = Instant::now();
    loop {
        let s = status(&nats);
        if s.contains(&format!("refused revision {r4}: artifact {bundle}")) {
            assert!(s.contains("tampered or corrupt"), "{s}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer(&p, 2, "ver").await,
        None,
        "sin serves nothing unverified"
    );
    // The verified geo database was kept; the tampered bundle never was.
    let artifacts = d.join("state-sin/control/artifacts");
    assert!(!artifacts.join(format!("{bundle}.d")).exists());
    assert!(!d.join("state-sin/control/current.toml").exists());
}

/// NATS with a user and password, over TLS only: deploy and status connect
/// with the credentials in the URL and `--control-tls-ca`; a wrong password
/// or no CA is a clear error (exit 69), not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_user_password_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (cert, key) = (d.join("nats.pem"), d.join("nats-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let extra: Vec<String> = [
        "--user",
        "deployer",
        "--pass",
        "s3cret",
        "--tls",
        "--tlscert",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        cert.display().to_string(),
        "--tlskey".into(),
        key.display().to_string(),
    ])
    .collect();
    let nats = Nats::start_with(&d.join("nats"), None, &extra);
    let port = nats.port;
    let p = ports();
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = topology(&src, &p, "v1");
    let run = |url: String, ca: bool| {
        let mut c = fnroute();
        c.args(["deploy", "--control", &url, "--topology"])
            .arg(&file);
        if ca {
            c.arg("--control-tls-ca").arg(&cert);
        }
        c.output().unwrap()
    };
    let ok = run(format!("nats://deployer:s3cret@127.0.0.1:{port}"), true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = run(format!("nats://deployer:wrong@127.0.0.1:{port}"), true);
    assert_eq!(
        wrong.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("connecting to the control plane"));
    let no_ca = run(format!("nats://deployer:s3cret@127.0.0.1:{port}"), false);
    assert_eq!(
        no_ca.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );
    let stdout = run_ok(
        fnroute()
            .args(["control", "status", "--control"])
            .arg(format!("nats://deployer:s3cret@127.0.0.1:{port}"))
            .arg("--control-tls-ca")
            .arg(&cert),
    );
    assert!(stdout.contains("current revision"), "{stdout}");
}
