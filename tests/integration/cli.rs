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
