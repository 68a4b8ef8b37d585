//! Live topology reload: functions added, changed and removed without
//! dropping in-flight invocations or DNS service; invalid files and
//! restart-only changes rejected whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::mesh::transport::resolve;
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
    let mut req = fnroute::mesh::transport::Request::invoke("x", Bytes::from_static(b""));
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

/// One edge's TOML on `ip`, same ports for every edge.
fn edge_toml(name: &str, ip: &str, loc: &str, p: &Ports) -> String {
    format!(
        "\n[[edge]]\nname = \"{name}\"\nlocation = {{ {loc} }}\naddresses = [\"{ip}\"]\ndns_listen = \"{ip}:{d}\"\nquic_listen = \"{ip}:{q}\"\nadmin_listen = \"{ip}:{a}\"\ncapacity = 64\n",
        d = p.dns,
        q = p.quic,
        a = p.admin
    )
}

fn fleet_toml(dir: &std::path::Path, edges: &str, functions: &str) -> String {
    format!(
        "zone = \"fn.test.\"\ngeo_db = {geo:?}\ndefault_location = {{ lat = 50.11, lon = 8.68 }}\nstate_dir = {state:?}\n\n[dns]\nudp_sockets = 1\n\n[mesh]\nca = {ca:?}\ncert_dir = {certs:?}\nprobe_interval_ms = 100\n{edges}\n{functions}",
        geo = super::mesh::repo("geo/sample.mmdb").display().to_string(),
        state = dir.join("state").display().to_string(),
        ca = dir.join("certs/ca.pem").display().to_string(),
        certs = dir.join("certs").display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_join_and_leave_live() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = ports();
    let fra = edge_toml("fra", "127.0.0.11", "lat = 50.11, lon = 8.68", &p);
    let nyc = edge_toml("nyc", "127.0.0.12", "lat = 40.71, lon = -74.01", &p);
    let sin = edge_toml("sin", "127.0.0.13", "lat = 1.35, lon = 103.82", &p);
    // Configured only: nothing serves it in this test.
    let lon = edge_toml("lon", "127.0.0.14", "lat = 51.51, lon = -0.13", &p);
    // A development CA and certificates for all four edges.
    let all = d.join("all.toml");
    std::fs::write(&all, fleet_toml(d, &(fra.clone() + &nyc + &sin + &lon), "")).unwrap();
    let topo = fnroute::config::load_without_mesh_files(&all).unwrap_or_else(|e| panic!("{e}"));
    fnroute::tls::pki::generate_dev(&topo, &d.join("certs")).unwrap();

    let path = d.join("topology.toml");
    let cat = "executor = { kind = \"command\", command = [\"cat\"] }\n";
    std::fs::write(
        &path,
        fleet_toml(
            d,
            &(fra.clone() + &nyc + &sin),
            &format!("[[function]]\nname = \"far\"\nedges = [\"sin\"]\n{cat}\n[[function]]\nname = \"here\"\nedges = [\"fra\"]\n{cat}"),
        ),
    )
    .unwrap();
    let topo = fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // This process serves fra and nyc; sin is a (dead) remote peer.
    let fleet = Fleet::start(Arc::new(topo), &[0, 1]).await.unwrap();
    assert!(resolve(dns(&p), "ns-sin.fn.test.", Duration::from_secs(2))
        .await
        .is_ok());
    assert!(resolve(dns(&p), "ns-lon.fn.test.", Duration::from_secs(2))
        .await
        .is_err());

    // sin leaves, lon joins (appended after it in the file's order),
    // `far` moves to nyc and lon.
    std::fs::write(
        &path,
        fleet_toml(
            d,
            &(lon.clone() + &fra + &nyc),
            &format!("[[function]]\nname = \"far\"\nedges = [\"lon\", \"nyc\"]\n{cat}\n[[function]]\nname = \"here\"\nedges = [\"fra\"]\n{cat}"),
        ),
    )
    .unwrap();
    let report = fleet.reloader.reload().await;
    assert!(report.applied, "{report:?}");
    assert_eq!(report.edges_added, ["lon"]);
    assert_eq!(report.edges_removed, ["sin"]);
    assert!(
        report.changed.is_empty(),
        "a move is no definition change: {report:?}"
    );
    // EdgeIds kept: fra 0, nyc 1, sin 2 (retired), lon 3.
    let t = fleet.edges[0].topology();
    let names: Vec<(&str, bool)> = t
        .edges
        .iter()
        .map(|e| (e.name.as_str(), e.retired))
        .collect();
    assert_eq!(
        names,
        [
            ("fra", false),
            ("nyc", false),
            ("sin", true),
            ("lon", false)
        ]
    );
    assert_eq!(t.function("far").unwrap().edges, [3, 1]);

    // fra forwards `far` to nyc (lon is not running: probed down).
    let c = client();
    let conn = c.connect(quic(0, &p), "localhost").await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = conn.invoke("far", Bytes::from_static(b"x")).await.unwrap();
        if r.status == 200 {
            assert_eq!(r.header("fnroute-edge"), Some("nyc"));
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DNS: the zone's name servers follow the fleet.
    assert!(resolve(dns(&p), "ns-sin.fn.test.", Duration::from_secs(2))
        .await
        .is_err());
    assert_eq!(
        resolve(dns(&p), "ns-lon.fn.test.", Duration::from_secs(2))
            .await
            .unwrap()
            .addr,
        "127.0.0.14".parse::<std::net::IpAddr>().unwrap()
    );
    // Removing an edge this process serves is refused.
    std::fs::write(
        &path,
        fleet_toml(
            d,
            &(lon + &nyc),
            &format!("[[function]]\nname = \"far\"\nedges = [\"nyc\"]\n{cat}"),
        ),
    )
    .unwrap();
    let report = fleet.reloader.reload().await;
    assert!(!report.applied);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("edge fra is served by this process")),
        "{:?}",
        report.errors
    );
    fleet.shutdown(Duration::from_secs(2)).await;
}
