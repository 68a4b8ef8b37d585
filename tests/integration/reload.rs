//! Live topology reload: functions added, changed and removed without
//! dropping in-flight invocations or DNS service; invalid files and
//! restart-only changes rejected whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::frontdoor::client::resolve;
use fnroute::node::Fleet;

use super::mesh::{client, ports, quic, write_topology, Ports, IPS};

const BEFORE: &str = r#"
[[function]]
name = "stay"
edges = ["fra"]
executor = { kind = "command", command = ["cat"] }

[[function]]
name = "change"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "echo v1"] }
cache = { ttl_s = 300 }

[[function]]
name = "gone"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "sleep 1; echo finished"] }
"#;

const AFTER: &str = r#"
[[function]]
name = "stay"
edges = ["fra"]
executor = { kind = "command", command = ["cat"] }

[[function]]
name = "change"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "echo v2"] }
cache = { ttl_s = 300 }

[[function]]
name = "fresh"
edges = ["fra", "nyc"]
executor = { kind = "command", command = ["sh", "-c", "echo new"] }

[[route]]
name = "both"
steps = ["change", "stay"]
"#;

fn dns(p: &Ports) -> std::net::SocketAddr {
    std::net::SocketAddr::new(IPS[0].parse().unwrap(), p.dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_change_live_without_dropping_work() {
    let dir = tempfile::tempdir().unwrap();
    let (p, path, fleet) = {
        let mut last = String::new();
        let mut started = None;
        for _ in 0..3 {
            let p = ports();
            let path = write_topology(dir.path(), &p, "");
            let base = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, base.clone() + BEFORE).unwrap();
            let topo = fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            match Fleet::start(Arc::new(topo), &[0, 1, 2]).await {
                Ok(f) => {
                    started = Some((p, path, f));
                    break;
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        started.unwrap_or_else(|| panic!("fleet did not start: {last}"))
    };
    let base = std::fs::read_to_string(&path).unwrap().replace(BEFORE, "");
    let c = client();
    let fra = c.connect(quic(0, &p), "localhost").await.unwrap();
    let r = fra.invoke("change", Bytes::from_static(b"")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"v1\n"[..]));
    assert!(resolve(dns(&p), "gone.fn.test.", Duration::from_secs(2))
        .await
        .is_ok());
    assert!(resolve(dns(&p), "fresh.fn.test.", Duration::from_secs(2))
        .await
        .is_err());

    // An invocation of `gone` is running when the reload removes it.
    let conn = c.connect(quic(0, &p), "localhost").await.unwrap();
    let running = tokio::spawn(async move { conn.invoke("gone", Bytes::from_static(b"")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, base.clone() + AFTER).unwrap();
    let generation = fleet.edges[0].view.load().generation;
    let report = fleet.reloader.reload().await;
    assert!(report.applied, "{report:?}");
    assert_eq!(report.added, ["fresh"]);
    assert_eq!(report.changed, ["change"]);
    assert_eq!(report.removed, ["gone"]);
    assert!(fleet.edges[0].view.load().generation > generation);

    let done = running.await.unwrap().unwrap();
    assert_eq!(
        (done.status, &done.body[..]),
        (200, &b"finished\n"[..]),
        "in-flight work is not dropped"
    );
    let r = fra.invoke("gone", Bytes::from_static(b"")).await.unwrap();
    assert_eq!(r.status, 404);
    let r = fra.invoke("change", Bytes::from_static(b"")).await.unwrap();
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"v2\n"[..]),
        "the changed definition runs, not the cached v1"
    );
    let r = fra.invoke("fresh", Bytes::from_static(b"")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"new\n"[..]));
    // Forwarded from sin by its (reloaded) view to fra or nyc.
    let sin = c.connect(quic(2, &p), "localhost").await.unwrap();
    let r = sin.invoke("fresh", Bytes::from_static(b"")).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The new static route.
    let mut req = fnroute::frontdoor::client::Request::invoke("x", Bytes::from_static(b""));
    req.path = "/route".into();
    let r = fra.send(req.header("fnroute-route", "both")).await.unwrap();
    assert_eq!(r.header("fnroute-path"), Some("change@fra, stay@fra"));
    // DNS answers from the new topology.
    assert!(resolve(dns(&p), "fresh.fn.test.", Duration::from_secs(2))
        .await
        .is_ok());
    assert!(resolve(dns(&p), "gone.fn.test.", Duration::from_secs(2))
        .await
        .is_err());
    assert!(resolve(dns(&p), "stay.fn.test.", Duration::from_secs(2))
        .await
        .is_ok());

    // Invalid: rejected whole, every error reported, the running one kept.
    std::fs::write(
        &path,
        base.clone() + AFTER + "\n[[function]]\nname = \"bad\"\nedges = [\"nowhere\"]\nexecutor = { kind = \"command\", command = [\"cat\"] }\n",
    )
    .unwrap();
    let report = fleet.reloader.reload().await;
    assert!(!report.applied);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("unknown edge \"nowhere\"")),
        "{:?}",
        report.errors
    );
    let r = fra.invoke("fresh", Bytes::from_static(b"")).await.unwrap();
    assert_eq!(r.status, 200);
    // Restart-only: a listener or capacity change is refused, with why.
    std::fs::write(
        &path,
        (base.clone() + AFTER).replacen("capacity = 64", "capacity = 65", 1),
    )
    .unwrap();
    let report = fleet.reloader.reload().await;
    assert!(!report.applied);
    assert!(
        report.errors.iter().any(|e| e.contains("capacity")),
        "{:?}",
        report.errors
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}
