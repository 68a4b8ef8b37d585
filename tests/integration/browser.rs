//! A real browser against function URLs: Debian's chromium, headless,
//! driven over the DevTools protocol (`--remote-debugging-pipe`, so no
//! websocket client is needed). A page an HTTP function serves at its
//! function URL calls a second function across origins with `fetch`
//! (CORS, answered at the edge), and a second browser run in the same
//! profile loads the page again over HTTP/3, found through `Alt-Svc`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::{start, Opts};

/// A port no test listens on: see `--origin-to-force-quic-on` below.
const UNUSED_PORT: u16 = 9;

/// `page` serves the example's HTML page at `https://page.fn.test:<tcp>/`;
/// its script POSTs JSON to `api` (another origin, so the browser sends a
/// preflight first). `api`'s CORS policy allows exactly the page's
/// origin, and the edge's policy takes precedence over the example's own
/// CORS headers (which allow any origin), so a page on `other` is
/// refused. The second run in the same profile finds the `Alt-Svc` the
/// first one stored and navigates over HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_url_page_fetches_across_origins_then_loads_over_http3_in_chromium() {
    let chromium = which("chromium").unwrap_or_else(|| {
        panic!("chromium is not installed: run .ci/deps-ops.sh (installs Debian's chromium)")
    });
    let started = Instant::now();
    let bin = lambda_http_example();
    let lambda = |name: &str, extra: &str| {
        format!(
            "[[function]]\nname = \"{name}\"\nedges = [\"fra\"]\ninterface = \"http\"\n\
             executor = {{ kind = \"lambda\", command = [{bin:?}] }}\n{extra}\n"
        )
    };
    // The page's origin holds the TCP port, known only once the edge is
    // up: start with a placeholder origin, then put the real one in the
    // topology file and reload (a live reload keeps the listeners).
    let placeholder = format!("https://page.fn.test:{UNUSED_PORT}");
    let cors = format!(
        "cors = {{ allow_origins = [\"{placeholder}\"], allow_methods = [\"POST\"], \
         allow_headers = [\"content-type\"], max_age_s = 60 }}"
    );
    let functions = [
        lambda("page", ""),
        lambda("api", &cors),
        lambda("other", ""),
    ]
    .concat();
    let mut edge = start(Opts {
        functions,
        ..Opts::default()
    })
    .await;
    let port = edge.tcp.port();
    let page_origin = format!("https://page.fn.test:{port}");
    let topology = edge.dir.path().join("topology.toml");
    let text = std::fs::read_to_string(&topology).unwrap();
    assert!(text.contains(&placeholder));
    std::fs::write(&topology, text.replace(&placeholder, &page_origin)).unwrap();
    let report = edge.fleet.as_ref().unwrap().reloader.reload().await;
    // (`changed` stays empty for a change of `cors` alone; the page's
    // fetch shows that the new policy is in effect.)
    assert!(report.applied && report.errors.is_empty(), "{report:?}");

    let spki = spki_sha256_base64(&edge.cert());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shots = [
        out_dir.join("function-url-page-tcp.png"),
        out_dir.join("function-url-page-h3.png"),
    ];
    for shot in &shots {
        let _ = std::fs::remove_file(shot);
    }
    let profile = edge.dir.path().join("chromium-profile");
    let api = format!("https://api.fn.test:{port}/");
    let page_url = format!("{page_origin}/?api={api}");
    let other_url = format!("https://other.fn.test:{port}/?api={api}");

    let (first, refused, second) = tokio::task::spawn_blocking({
        let (profile, shots, page_url) = (profile.clone(), shots.clone(), page_url.clone());
        move || {
            // First run: nothing known about the edge, so TCP; the
            // responses' Alt-Svc is stored in the profile.
            let mut b = Browser::launch(&chromium, &profile, &spki);
            let first = b.load(&page_url);
            b.screenshot(&shots[0]);
            let refused = b.load(&other_url);
            b.close();
            // Second run, same profile: Alt-Svc was persisted at exit.
            assert_alt_svc_stored(&profile, &format!("https://page.fn.test:{port}"));
            let mut b = Browser::launch(&chromium, &profile, &spki);
            let second = b.load(&page_url);
            b.screenshot(&shots[1]);
            b.close();
            (first, refused, second)
        }
    })
    .await
    .unwrap();

    for (load, want) in [(&first, "h2 or http/1.1"), (&second, "h3")] {
        assert_eq!(load.title, "done", "{want} load: {load:?}");
        let echo: Value =
            serde_json::from_str(&load.result).unwrap_or_else(|e| panic!("{e}: {load:?}"));
        assert_eq!(echo["method"], "POST", "{load:?}");
        assert_eq!(echo["path"], "/echo", "{load:?}");
        assert_eq!(echo["query"]["from"], json!(["page"]), "{load:?}");
        assert_eq!(echo["headers"]["origin"], page_origin.as_str(), "{load:?}");
        let body: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["hello"], "from the page", "{load:?}");
        assert_eq!(body["page"], page_origin.as_str(), "{load:?}");
    }
    assert!(
        ["h2", "http/1.1"].contains(&first.protocol.as_str()),
        "the first load must go over TCP (nothing may force QUIC): {first:?}"
    );
    assert_eq!(
        second.protocol, "h3",
        "the second load must use HTTP/3 after Alt-Svc: {second:?}"
    );
    // The edge's policy refuses an origin it does not list, although the
    // function itself would answer any origin.
    assert!(
        refused.title.starts_with("failed:"),
        "a page on another origin must not get through: {refused:?}"
    );

    for shot in &shots {
        let png = std::fs::read(shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}: {} bytes",
            shot.display(),
            png.len()
        );
        println!("screenshot: {}", shot.display());
    }
    println!(
        "navigations: {} then {}; took {:.1} s",
        first.protocol,
        second.protocol,
        started.elapsed().as_secs_f64()
    );
    edge.shutdown().await;
}

/// The profile's `Network Persistent State` (written when chromium
/// exits) holds an HTTP/3 alternative for `origin`, not marked broken
/// (as it is when the QUIC handshake failed).
fn assert_alt_svc_stored(profile: &Path, origin: &str) {
    let text = std::fs::read_to_string(profile.join("Default/Network Persistent State"))
        .unwrap_or_default();
    let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let props = &state["net"]["http_server_properties"];
    let stored = props["servers"].as_array().is_some_and(|servers| {
        servers.iter().any(|s| {
            s["server"] == origin
                && s["alternative_service"]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a["advertised_alpns"] == json!(["h3"])))
        })
    });
    let host = origin.trim_start_matches("https://").split(':').next();
    let broken = props["broken_alternative_services"]
        .as_array()
        .is_some_and(|b| b.iter().any(|a| a["host"].as_str() == host));
    assert!(
        stored && !broken,
        "the first run did not store a working Alt-Svc for {origin}:\n{text}"
    );
}

/// What the page showed once its script finished.
#[derive(Debug)]
struct Loaded {
    title: String,
    /// `<pre id="result">`: the echo, or the error.
    result: String,
    /// `performance.getEntriesByType("navigation")[0].nextHopProtocol`.
    protocol: String,
}

/// One headless chromium, spoken to over `--remote-debugging-pipe`
/// (DevTools protocol messages, each ended by a NUL byte, read by
/// chromium on fd 3 and written on fd 4), with one page attached.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    stderr: PathBuf,
    /// Dropped when the browser is closed; else kills it after a minute.
    watchdog: Option<mpsc::Sender<()>>,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path, spki: &str) -> Self {
        std::fs::create_dir_all(profile).unwrap();
        let stderr = profile.with_extension("stderr.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .unwrap();
        let mut child = Command::new("sh")
            // The pipe ends std gives the child as stdin and stdout become
            // fds 3 and 4, where --remote-debugging-pipe expects them.
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,800",
                "--remote-debugging-pipe",
                // The zone's names are the edge on loopback; nothing else
                // resolves, so the test never leaves the machine.
                "--host-resolver-rules=MAP *.fn.test 127.0.0.1, MAP * ~NOTFOUND",
            ])
            // Also where Alt-Svc is persisted between the two runs, and
            // required for the SPKI list to be honoured.
            .arg(format!("--user-data-dir={}", profile.display()))
            // Trust the edge's development certificate (over TCP and QUIC)
            // by its key, without touching any trust store.
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
            // Chromium's QUIC refuses a certificate that does not chain to
            // a root it ships (ERR_QUIC_CERT_ROOT_NOT_KNOWN, seen as
            // "TLS handshake failure 46: certificate unknown"), even with
            // the SPKI list, unless the host name is in
            // origins_to_force_quic_on, the only switch feeding its
            // hostnames_to_allow_unknown_roots. Only the host names are
            // taken from it; forcing QUIC is per host *and port*, and
            // nothing listens on UNUSED_PORT, so the origins under test
            // still go over TCP until Alt-Svc says otherwise (the first
            // load asserts TCP).
            .arg(format!(
                "--origin-to-force-quic-on=page.fn.test:{UNUSED_PORT},\
                 api.fn.test:{UNUSED_PORT},other.fn.test:{UNUSED_PORT}"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let pid = child.id();
        std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(60)) == Err(mpsc::RecvTimeoutError::Timeout) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        let mut b = Browser {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()),
            child,
            next_id: 0,
            session: String::new(),
            stderr,
            watchdog: Some(tx),
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a command (to the attached page once there is one) and
    /// returns its result, skipping events.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log()))
    }

    /// [`Browser::call`], with the protocol's error as `Err`.
    fn send(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        if let Err(e) = self.to.write_all(&bytes).and_then(|()| self.to.flush()) {
            panic!("{method}: {e}\n{}", self.log());
        }
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            if n == 0 {
                panic!("chromium went away during {method}\n{}", self.log());
            }
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == json!(id) {
                return if v["error"].is_null() {
                    Ok(v["result"].clone())
                } else {
                    Err(v["error"].clone())
                };
            }
        }
    }

    /// Navigates to `url` and waits until the page's script has set the
    /// title to `done` or `failed: …`.
    fn load(&mut self, url: &str) -> Loaded {
        let nav = self.call("Page.navigate", json!({ "url": url }));
        assert!(nav["errorText"].is_null(), "{url}: {nav}");
        let probe = r#"JSON.stringify({
            href: location.href,
            title: document.title,
            result: (document.getElementById("result") || {}).textContent || "",
            protocol: (performance.getEntriesByType("navigation")[0] || {}).nextHopProtocol || ""
        })"#;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // (An error here, say while the new document replaces the
            // old, just means not yet.)
            let r = self
                .send(
                    "Runtime.evaluate",
                    json!({ "expression": probe, "returnByValue": true }),
                )
                .unwrap_or(Value::Null);
            let seen: Value = r["result"]["value"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            let title = seen["title"].as_str().unwrap_or("");
            if seen["href"] == url && (title == "done" || title.starts_with("failed")) {
                let s = |k: &str| seen[k].as_str().unwrap_or("").to_string();
                return Loaded {
                    title: s("title"),
                    result: s("result"),
                    protocol: s("protocol"),
                };
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not finish: {seen}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Closes the browser the orderly way, so that it writes the
    /// profile's network state (Alt-Svc) on the way out.
    fn close(mut self) {
        self.session.clear();
        self.next_id += 1;
        let msg = json!({ "id": self.next_id, "method": "Browser.close", "params": {} });
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        let _ = self.to.flush();
        let status = self.child.wait().unwrap();
        self.watchdog.take();
        assert!(status.success(), "chromium: {status}\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Browser {
    /// A test that failed half-way leaves no browser behind (a no-op once
    /// [`Browser::close`] has reaped it).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `--ignore-certificate-errors-spki-list` takes: the base64 SHA-256
/// of the certificate's DER SubjectPublicKeyInfo.
fn spki_sha256_base64(pem: &Path) -> String {
    let der = CertificateDer::from_pem_file(pem).unwrap();
    let cert = webpki::EndEntityCert::try_from(&der).unwrap();
    let spki = cert.subject_public_key_info();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki.as_ref()))
}

/// The `lambda_http` example (examples/lambda_http_web.rs) next to this
/// test binary.
fn lambda_http_example() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let p = dir.join("examples").join("lambda_http_web");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --example lambda_http_web`",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
