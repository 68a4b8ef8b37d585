//! Function source routing across the three loopback edges: the shipped
//! document demo (`edge-config/routing-demo.toml`), static and gatekeeper
//! expansion, every bound, a step's edge dying mid-chain, and trace
//! context along the route.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::mesh::transport::{Connection, Reply, Request};
use fnroute::node::Fleet;

use super::mesh::{client, ports, quic, start_procs, test_fleet, write_topology, Ports};
use crate::topo::TopoEdit;

fn event(kind: &str, body: &str) -> Request {
    let mut r = Request::invoke("unused", Bytes::from(body.to_string()));
    r.path = format!("/event/{kind}");
    r
}

fn route(stack: &str, body: &str) -> Request {
    let mut r = Request::invoke("unused", Bytes::from(body.to_string()));
    r.path = "/route".into();
    r.header("fnroute-route", stack)
}

/// `topology` served in this process on fresh ports (retried when a port
/// was taken between the check and the bind), probing every 100 ms.
async fn start(dir: &Path, load: impl Fn(&Ports) -> TopoEdit) -> (Ports, Fleet) {
    let mut last = String::new();
    for _ in 0..3 {
        let p = ports();
        let t = test_fleet(&mut load(&p), dir, &p);
        match Fleet::start(Arc::new(t), &[0, 1, 2]).await {
            Ok(f) => return (p, f),
            Err(e) => last = format!("{e:#}"),
        }
    }
    panic!("fleet did not start: {last}");
}

async fn connect(p: &Ports, edge: usize) -> Connection {
    client()
        .connect(quic(edge, p), "localhost")
        .await
        .expect("connect")
}

fn problem(r: &Reply) -> serde_json::Value {
    r.problem()
        .unwrap_or_else(|| panic!("problem+json expected: {} {:?}", r.status, r.body))
}

fn slug(r: &Reply) -> String {
    problem(r)["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("https://fnroute.dev/problems/")
        .to_string()
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_demo_runs_hop_by_hop_and_returns_along_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (p, fleet) = start(dir.path(), |_| {
        TopoEdit::open("edge-config/routing-demo.toml")
    })
    .await;
    let fra = connect(&p, 0).await;
    let doc = r#"{"text": "hello  world", "edits": [{"find": "world", "replace": "edge"}]}"#;
    let r = fra
        .send(event("document", doc).header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("fnroute-path"),
        Some("classify@fra, edit-front-end@fra, edit-validate@fra, edit-apply@fra, log@nyc, process@sin")
    );
    assert_eq!(
        r.header("fnroute-edge"),
        Some("sin"),
        "the last step ran on sin"
    );
    let v = json(&r);
    assert_eq!(v["text"], "hello edge");
    assert_eq!(v["stats"]["words"], 2);
    // The same event over HTTPS on TCP (curl, HTTP/1.1) takes the same path.
    let tcp = fleet.tcp_addrs[0].expect("fra's tcp_listen");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http1.1", "-k", "-D", "-", "--data-binary", doc])
        .arg("--resolve")
        .arg(format!("fra.fn.test:{}:{}", tcp.port(), tcp.ip()))
        .arg(format!("https://fra.fn.test:{}/event/document", tcp.port()))
        .output()
        .expect("curl runs (.ci/deps-web.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("fnroute-path: classify@fra, edit-front-end@fra, edit-validate@fra, edit-apply@fra, log@nyc, process@sin"),
        "{text}"
    );
    assert!(text.contains("hello edge"), "{text}");
    let trail: Vec<&str> = v["trail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        trail,
        [
            "classify",
            "edit-front-end",
            "edit-validate",
            "edit-apply",
            "log",
            "process"
        ]
    );
    // One trace across three edges: every step saw the trace id the
    // response names, each with a span of its own. A client's traceparent
    // is an internal header (mesh issue) and does not seed it.
    let tp = r.header("traceparent").expect("traceparent");
    let trace_id = tp.split('-').nth(1).unwrap().to_string();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, "11111111111111111111111111111111");
    let mut spans = std::collections::HashSet::new();
    for s in v["trail"].as_array().unwrap() {
        let t = s["trace"].as_str().unwrap();
        assert_eq!(t.split('-').nth(1), Some(trace_id.as_str()), "{t} vs {tp}");
        assert!(spans.insert(t.split('-').nth(2).unwrap().to_string()));
    }

    // Entering far away: the edit steps share a remote edge (fra).
    let sin = connect(&p, 2).await;
    let r = sin.send(event("document", doc)).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("fnroute-path"),
        Some("classify@sin, edit-front-end@fra, edit-validate@fra, edit-apply@fra, log@nyc, process@sin")
    );
    // Orchestrated from sin: the same steps, the result comes back the same.
    let r2 = sin
        .send(event("document", doc).header("fnroute-route-mode", "orchestrated"))
        .await
        .unwrap();
    assert_eq!(r2.status, 200, "{:?}", r2.body);
    assert_eq!(r2.header("fnroute-path"), r.header("fnroute-path"));
    assert_eq!(json(&r2)["text"], "hello edge");

    // The gatekeeper decides: a read-only document skips `edit`.
    let r = fra
        .send(event(
            "document",
            r#"{"text": "keep  me", "readonly": true}"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        r.header("fnroute-path"),
        Some("classify@fra, log@nyc, process@sin")
    );
    assert_eq!(json(&r)["text"], "keep  me");

    // Static expansion (edit -> edit-front-end) then gatekeeper expansion.
    let r = fra.send(route("edit", doc)).await.unwrap();
    assert_eq!(
        r.header("fnroute-path"),
        Some("edit-front-end@fra, edit-validate@fra, edit-apply@fra")
    );
    // Concrete steps only: no expansion, entered at nyc.
    let nyc = connect(&p, 1).await;
    let r = nyc
        .send(route("edit-validate, edit-apply process", doc))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("fnroute-path"),
        Some("edit-validate@fra, edit-apply@fra, process@sin")
    );

    // A failing step: the error names the step, the edge and the path.
    let r = nyc
        .send(event("document", r#"{"text": "  "}"#))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    let pr = problem(&r);
    assert_eq!(pr["step"], "edit-validate");
    assert_eq!(pr["edge"], "fra");
    assert_eq!(pr["errorType"], "ValueError");
    assert_eq!(
        r.header("fnroute-path"),
        Some("classify@nyc, edit-front-end@fra"),
        "the path up to the failing step"
    );

    // Unknown event types and steps.
    let r = fra.send(event("invoice", "{}")).await.unwrap();
    assert_eq!((r.status, slug(&r).as_str()), (404, "unknown-event-type"));
    let r = fra.send(route("edit nope process", doc)).await.unwrap();
    assert_eq!((r.status, slug(&r).as_str()), (400, "unknown-step"));
    assert_eq!(problem(&r)["step"], "nope");

    // The command line: `fnroute invoke --event` and `--route`.
    let edge = quic(0, &p).to_string();
    let out = tokio::task::spawn_blocking(move || {
        let run = |extra: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_fnroute"))
                .args([
                    "invoke",
                    "--edge",
                    &edge,
                    "--insecure",
                    "-v",
                    "--data",
                    r#"{"text": "a  b"}"#,
                ])
                .args(extra)
                .output()
                .unwrap()
        };
        (
            run(&["--event", "document"]),
            run(&["--route", "edit-validate nope"]),
        )
    })
    .await
    .unwrap();
    let (ok, bad) = out;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(
        stderr.contains("fnroute-path: classify@fra, edit-front-end@fra"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["text"], "a b");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown step \"nope\""));
    fleet.shutdown(Duration::from_secs(2)).await;
}

/// Command-function steps for the bounds: `runaway` pushes itself,
/// `ping` (fra) and `pong` (nyc) push each other, `deep` pushes 40 steps,
/// `slow` sleeps 300 ms, `count` appends to a file, `broken` prints no
/// envelope.
fn bounds_functions(dir: &Path) -> String {
    let gate = |name: &str, edges: &str, out: &str| {
        format!(
            "[[function]]\nname = \"{name}\"\nedges = [{edges}]\ngatekeeper = true\nexecutor = {{ kind = \"command\", command = [\"printf\", \"%s\", '{out}'] }}\n\n"
        )
    };
    let deep: Vec<String> = (0..40).map(|_| "\"step\"".to_string()).collect();
    let mut s = String::from(
        "\n[routing]\nmax_steps = 20\nmax_expansions = 16\nmax_hops = 8\nmax_stack_depth = 32\n\n",
    );
    s += &gate(
        "runaway",
        "\"fra\", \"nyc\", \"sin\"",
        r#"{"push": ["runaway"]}"#,
    );
    s += &gate("ping", "\"fra\"", r#"{"push": ["pong"]}"#);
    s += &gate("pong", "\"nyc\"", r#"{"push": ["ping"]}"#);
    s += &gate(
        "deep",
        "\"fra\"",
        &format!(r#"{{"push": [{}]}}"#, deep.join(", ")),
    );
    s += &gate("broken", "\"fra\"", "not an envelope");
    s += &format!(
        r#"[[function]]
name = "step"
executor = {{ kind = "command", command = ["cat"] }}
concurrency = {{ max = 16 }}

[[function]]
name = "slow"
edges = ["fra"]
executor = {{ kind = "command", command = ["sh", "-c", "sleep 0.3; cat"] }}

[[function]]
name = "count"
edges = ["fra"]
executor = {{ kind = "command", command = ["sh", "-c", "echo ran >> '{}'; cat"] }}
"#,
        dir.join("count.txt").display()
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_stops_a_route_with_a_clear_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (p, fleet) = start(dir.path(), |p| {
        let path = write_topology(&d, p, "");
        let text = std::fs::read_to_string(&path).unwrap() + &bounds_functions(&d);
        TopoEdit::from_text(&path, &text)
    })
    .await;
    let fra = connect(&p, 0).await;

    // A gatekeeper that keeps pushing itself: max_expansions.
    let r = fra.send(route("runaway", "x")).await.unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (508, "route-expansion-limit"),
        "{:?}",
        r.body
    );
    assert_eq!(problem(&r)["step"], "runaway");
    // 17 runs: the 17th push is the one over the bound.
    assert_eq!(
        r.header("fnroute-path").map(|p| p.split(", ").count()),
        Some(17)
    );

    // Two gatekeepers on two edges pushing each other: every push is a
    // hop, so max_hops (8) ends it before max_expansions (16).
    let r = fra.send(route("ping", "x")).await.unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (508, "hop-limit"),
        "{:?}",
        r.body
    );
    let path = r.header("fnroute-path").unwrap().to_string();
    assert!(path.starts_with("ping@fra, pong@nyc, ping@fra"), "{path}");
    assert_eq!(path.split(", ").count(), 9, "{path}");

    // Over-deep stacks: from a gatekeeper (508) and from a client (400).
    let r = fra.send(route("deep", "x")).await.unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (508, "route-stack-depth"),
        "{:?}",
        r.body
    );
    let forty = vec!["step"; 40].join(" ");
    let r = fra.send(route(&forty, "x")).await.unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(problem(&r)["detail"]
        .as_str()
        .unwrap()
        .contains("max_stack_depth"));

    // max_steps = 20: the 21st step does not run.
    let many = vec!["step"; 21].join(" ");
    let r = fra.send(route(&many, "x")).await.unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (508, "route-step-limit"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.header("fnroute-path").map(|p| p.split(", ").count()),
        Some(20)
    );
    let twenty = vec!["step"; 20].join(" ");
    let r = fra.send(route(&twenty, "payload")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"payload");

    // A deadline too short for the chain: 504 naming the step it hit.
    let r = fra
        .send(route("slow slow slow slow", "x").header("fnroute-timeout-ms", "700"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (504, "deadline-exceeded"),
        "{:?}",
        r.body
    );
    assert_eq!(problem(&r)["step"], "slow");
    let ran = r
        .header("fnroute-path")
        .unwrap_or("")
        .split(", ")
        .filter(|s| !s.is_empty())
        .count();
    assert!((1..=2).contains(&ran), "{:?}", r.header("fnroute-path"));

    // A gatekeeper without an envelope.
    let r = fra.send(route("broken step", "x")).await.unwrap();
    assert_eq!(
        (r.status, slug(&r).as_str()),
        (502, "gatekeeper-output"),
        "{:?}",
        r.body
    );
    assert_eq!(problem(&r)["step"], "broken");

    // A client route naming an unknown step is rejected before anything runs.
    let r = fra.send(route("count nope", "x")).await.unwrap();
    assert_eq!((r.status, slug(&r).as_str()), (400, "unknown-step"));
    assert!(
        !d.join("count.txt").exists(),
        "count ran before the route was checked"
    );
    let r = fra.send(route("count", "x")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(d.join("count.txt").exists());
    fleet.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_edge_dying_mid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (p, mut procs) = start_procs(
        dir.path(),
        "",
        r#"
[[function]]
name = "first"
edges = ["fra"]
executor = { kind = "command", command = ["cat"] }
idempotent = true

[[function]]
name = "again"
edges = ["nyc", "sin"]
executor = { kind = "command", command = ["sh", "-c", "sleep 1; cat"] }
idempotent = true

[[function]]
name = "once"
edges = ["nyc", "sin"]
executor = { kind = "command", command = ["sh", "-c", "sleep 1; cat"] }
"#,
    )
    .await;
    let c = client();
    // Idempotent: nyc (nearest to fra) dies while running `again`; fra
    // hands the rest of the route to sin.
    let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
    let call = tokio::spawn(async move {
        conn.send(route("first again", "x").header("fnroute-timeout-ms", "4000"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    procs.kill(1);
    let r = call.await.unwrap().expect("fra answers");
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, procs.logs());
    assert_eq!(r.header("fnroute-path"), Some("first@fra, again@sin"));

    // Not idempotent: a clear error naming the step, never re-run on sin.
    procs.spawn(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
        let r = conn.send(route("once", "warm")).await.unwrap();
        if r.header("fnroute-path") == Some("once@nyc") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "nyc did not come back\n{}",
            procs.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conn = c.connect(quic(0, &p), "localhost").await.expect("connect");
    let call = tokio::spawn(async move {
        conn.send(route("first once", "x").header("fnroute-timeout-ms", "4000"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    procs.kill(1);
    let r = call.await.unwrap().expect("fra answers");
    assert_eq!(r.status, 502, "{:?}\n{}", r.body, procs.logs());
    let pr = problem(&r);
    assert_eq!(pr["type"], "https://fnroute.dev/problems/forward-failed");
    assert_eq!(pr["step"], "once");
    assert_eq!(pr["edge"], "fra");
    assert!(pr["detail"].as_str().unwrap().contains("nyc"), "{pr}");
    assert_eq!(r.header("fnroute-path"), Some("first@fra"));
}
