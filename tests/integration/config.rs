//! Topology validation: every rule has a bad file and a checked message.

use std::path::PathBuf;

use fnroute::config::{self, ConfigError};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A valid topology header; `{GEO}` is the sample database.
const HEAD: &str = r#"zone = "fn.test."
geo_db = "{GEO}"
default_location = { lat = 50.11, lon = 8.68 }
"#;

const EDGES: &str = r#"
[[edge]]
name = "fra"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.11"]
dns_listen = "127.0.0.11:5300"
quic_listen = "127.0.0.11:4433"
admin_listen = "127.0.0.11:9180"

[[edge]]
name = "nyc"
location = { lat = 40.71, lon = -74.01 }
addresses = ["127.0.0.12"]
dns_listen = "127.0.0.12:5300"
quic_listen = "127.0.0.12:4433"
admin_listen = "127.0.0.12:9180"
"#;

const ECHO: &str = r#"
[[function]]
name = "echo"
executor = { kind = "command", command = ["cat"] }
"#;

fn topo(text: &str) -> String {
    text.replace(
        "{GEO}",
        &repo().join("geo/sample.mmdb").display().to_string(),
    )
}

/// Writes `text` to a temporary file and validates it.
fn load(
    text: &str,
) -> (
    tempfile::TempDir,
    PathBuf,
    Result<config::Topology, Vec<ConfigError>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, topo(text)).unwrap();
    let r = config::load(&path).map_err(|e| e.0);
    (dir, path, r)
}

/// Validates `text` expecting exactly the errors whose rendered form
/// contains each of `expected` (in order), and returns them.
fn check_errors(text: &str, expected: &[&str]) -> Vec<ConfigError> {
    let (_dir, path, r) = load(text);
    let errors = r
        .err()
        .unwrap_or_else(|| panic!("expected errors {expected:?}"));
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), expected.len(), "{rendered:#?}");
    for (got, want) in rendered.iter().zip(expected) {
        assert!(got.contains(want), "{got:?} does not contain {want:?}");
        assert!(
            got.starts_with(&path.display().to_string()),
            "{got:?} names the file"
        );
        assert!(got.contains("fix:"), "{got:?} says what to fix");
    }
    errors
}

#[test]
fn valid_minimal_topology() {
    let (_d, _p, r) = load(&format!("{HEAD}{EDGES}{ECHO}"));
    let t = r.unwrap();
    assert_eq!(t.zone, "fn.test.");
    assert_eq!(t.edges.len(), 2);
    assert_eq!(
        t.functions[0].edges,
        vec![0, 1],
        "omitted edges = every edge"
    );
    assert_eq!(t.dns.ttl, 20);
}

#[test]
fn unknown_edge_names_file_line_column_and_edge() {
    let text = format!(
        "{HEAD}{EDGES}\n[[function]]\nname = \"resize\"\nedges = [\"nyc\", \"fra2\"]\nexecutor = {{ kind = \"command\", command = [\"cat\"] }}\n"
    );
    let errors = check_errors(
        &text,
        &["function.resize.edges: unknown edge \"fra2\" (known: fra, nyc)"],
    );
    let e = &errors[0];
    // The `edges = [...]` line, at the column of "fra2".
    let line = topo(&text)
        .lines()
        .position(|l| l.starts_with("edges"))
        .unwrap()
        + 1;
    assert_eq!((e.line, e.column), (line, 17));
    assert!(e.to_string().contains(&format!(":{line}:17:")));
}

#[test]
fn duplicate_edge_names() {
    let dup = EDGES.replace("name = \"nyc\"", "name = \"FRA\"");
    check_errors(
        &format!("{HEAD}{dup}{ECHO}"),
        &["duplicate edge name \"fra\" (first defined on line"],
    );
}

#[test]
fn duplicate_function_names() {
    check_errors(
        &format!("{HEAD}{EDGES}{ECHO}{}", ECHO.replace("echo", "Echo")),
        &["duplicate function name \"echo\""],
    );
}

#[test]
fn coordinates_out_of_range() {
    let bad = EDGES.replace("lat = 40.71", "lat = 140.71");
    let head = HEAD.replace("lon = 8.68", "lon = 208.68");
    check_errors(
        &format!("{head}{bad}{ECHO}"),
        &[
            "default_location.lon: longitude 208.68 is out of range",
            "edge.nyc.location.lat: latitude 140.71 is out of range",
        ],
    );
}

#[test]
fn listen_address_clashes() {
    let bad = EDGES.replace(
        "quic_listen = \"127.0.0.12:4433\"",
        "quic_listen = \"127.0.0.11:5300\"",
    );
    check_errors(
        &format!("{HEAD}{bad}{ECHO}"),
        &["edge.nyc.quic_listen: listen address 127.0.0.11:5300 clashes with edge.fra.dns_listen"],
    );
    let wildcard = EDGES.replace(
        "admin_listen = \"127.0.0.12:9180\"",
        "admin_listen = \"0.0.0.0:9180\"",
    );
    check_errors(
        &format!("{HEAD}{wildcard}{ECHO}"),
        &["edge.nyc.admin_listen: listen address 0.0.0.0:9180 clashes with edge.fra.admin_listen"],
    );
    // tcp_listen may share the QUIC port (UDP and TCP are separate), not
    // a TCP one.
    let shared = EDGES.replace(
        "quic_listen = \"127.0.0.12:4433\"",
        "quic_listen = \"127.0.0.12:4433\"\ntcp_listen = \"127.0.0.12:4433\"",
    );
    let (_dir, _, t) = load(&format!("{HEAD}{shared}{ECHO}"));
    let t = t.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        t.edges[1].tcp_listen,
        Some("127.0.0.12:4433".parse().unwrap())
    );
    let clash = EDGES.replace(
        "quic_listen = \"127.0.0.12:4433\"",
        "quic_listen = \"127.0.0.12:4433\"\ntcp_listen = \"127.0.0.12:9180\"",
    );
    check_errors(
        &format!("{HEAD}{clash}{ECHO}"),
        &["edge.nyc.tcp_listen: listen address 127.0.0.12:9180 clashes with edge.nyc.admin_listen"],
    );
}

#[test]
fn zone_must_be_a_dns_name() {
    let head = HEAD.replace("fn.test.", "fn..test");
    check_errors(
        &format!("{head}{EDGES}{ECHO}"),
        &["zone: zone \"fn..test\" is not a valid DNS name"],
    );
    let head = HEAD.replace("fn.test.", "fn_x.test.");
    check_errors(&format!("{head}{EDGES}{ECHO}"), &["not a valid DNS name"]);
}

#[test]
fn function_names_are_dns_labels() {
    check_errors(
        &format!("{HEAD}{EDGES}{}", ECHO.replace("echo", "edit_front.end")),
        &["function name \"edit_front.end\" is not a valid DNS label"],
    );
    check_errors(
        &format!("{HEAD}{EDGES}{}", ECHO.replace("echo", "-echo")),
        &["is not a valid DNS label"],
    );
}

#[test]
fn missing_geo_database() {
    let text = format!("{HEAD}{EDGES}{ECHO}").replace("{GEO}", "no/such.mmdb");
    let errors = check_errors(&text, &["geo_db: geo database"]);
    assert!(errors[0].message.contains("no/such.mmdb"));
    assert_eq!(errors[0].line, 2);
}

#[test]
fn executor_command_not_found() {
    check_errors(
        &format!(
            "{HEAD}{EDGES}{}",
            ECHO.replace("\"cat\"", "\"no-such-program-xyz\"")
        ),
        &["executor.command: program \"no-such-program-xyz\" cannot be found"],
    );
    check_errors(
        &format!(
            "{HEAD}{EDGES}{}",
            ECHO.replace("\"cat\"", "\"functions/nope.sh\"")
        ),
        &["program \"functions/nope.sh\" cannot be found"],
    );
}

#[test]
fn wasm_executors_need_a_component_file_and_host_port_destinations() {
    let wasm = |exec: &str, extra: &str| {
        format!("{HEAD}{EDGES}\n[[function]]\nname = \"w\"\nexecutor = {{ {exec} }}\n{extra}\n")
    };
    check_errors(
        &wasm("kind = \"wasm\"", ""),
        &["executor.component: a wasm executor needs a component"],
    );
    check_errors(
        &wasm("kind = \"wasm\", component = \"nope.wasm\"", ""),
        &["cannot read component"],
    );
    check_errors(
        &wasm(
            "kind = \"wasm\", command = [\"cat\"], component = \"x.wasm\"",
            "",
        ),
        &[
            "a wasm executor runs a component, not a command",
            "cannot read component",
        ],
    );
    check_errors(
        &wasm(
            "kind = \"command\", command = [\"cat\"], component = \"x.wasm\"",
            "allow_outbound = [\"example.com:443\"]",
        ),
        &[
            "component is for kind = \"wasm\"",
            "allow_outbound applies to wasm functions only",
        ],
    );
    check_errors(&wasm("kind = \"lambda\"", ""), &["needs a command"]);
    // The file's bytes decide: a core module, or not WebAssembly at all.
    let (dir, _, _) = load(HEAD);
    for (bytes, why) in [
        (
            &b"\0asm\x01\0\0\0"[..],
            "a core WebAssembly module, not a component",
        ),
        (&b"#!/bin/sh\n"[..], "not WebAssembly"),
    ] {
        let file = dir.path().join("f.wasm");
        std::fs::write(&file, bytes).unwrap();
        check_errors(
            &wasm(
                &format!("kind = \"wasm\", component = \"{}\"", file.display()),
                "allow_outbound = [\"api.example.com:443\", \"nope\", \"h:0\"]",
            ),
            &[why, "\"nope\" is not host:port", "\"h:0\" is not host:port"],
        );
    }
}

#[test]
fn every_error_is_reported() {
    let edges = EDGES
        .replace("lat = 40.71", "lat = 99.0")
        .replace("name = \"nyc\"", "name = \"fra\"");
    let funcs = format!(
        "{ECHO}{}\n[[function]]\nname = \"x\"\nedges = [\"ams\"]\nexecutor = {{ kind = \"wasmer\", command = [\"cat\"] }}\n",
        ECHO.replace("\"cat\"", "\"nope-xyz\"")
    );
    let head = HEAD.replace("fn.test.", "bad..zone");
    let errors = check_errors(
        &format!("{head}{edges}{funcs}"),
        &[
            "not a valid DNS name",
            "duplicate edge name",
            "latitude 99 is out of range",
            "duplicate function name",
            "cannot be found",
            "unknown edge \"ams\"",
            "unknown executor kind \"wasmer\"",
        ],
    );
    // In file order.
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn ranges_are_checked() {
    let f = ECHO.to_string()
        + "memory_mb = 1\ntimeout_ms = 0\nconcurrency = { min = 5, max = 2 }\ncache = { ttl_s = 0 }\n";
    check_errors(
        &format!("{HEAD}{EDGES}{f}"),
        &[
            "memory_mb = 1 is out of range",
            "timeout_ms = 0",
            "min = 5, max = 2",
            "ttl_s = 0",
        ],
    );
    let d = "[dns]\nttl = 999999\nanswers = 0\nload_threshold = 1.5\n";
    check_errors(
        &format!("{HEAD}{d}{EDGES}{ECHO}"),
        &["ttl 999999", "answers = 0", "load_threshold 1.5"],
    );
}

#[test]
fn syntax_errors_have_a_place() {
    let errors = check_errors(&format!("{HEAD}{EDGES}[[function]\n"), &["topology.toml:"]);
    assert!(errors[0].line > 10);
}

/// Every shipped topology validates, and an unknown key injected into
/// each is rejected with its place.
#[test]
fn shipped_topologies_validate_and_reject_unknown_keys() {
    let dir = repo().join("edge-config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        let t = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.edges.is_empty() && !t.functions.is_empty());

        let text = std::fs::read_to_string(&path).unwrap();
        for (needle, key) in [("[[edge]]", "colour"), ("[[function]]", "memroy_mb")] {
            let injected = text.replacen(needle, &format!("{needle}\n{key} = 1"), 1);
            let err = config::parse(&path, &injected).unwrap_err();
            let s = err.to_string();
            assert!(s.contains(&format!("unknown field `{key}`")), "{s}");
            assert!(s.contains("fix:"), "{s}");
        }
    }
    assert!(n >= 2, "edge-config has local.toml and three-edges.toml");
}

#[test]
fn three_edges_contract() {
    let t = config::load(&repo().join("edge-config/three-edges.toml")).unwrap();
    let names: Vec<&str> = t.edges.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["fra", "nyc", "sin"]);
    for (e, ip) in t
        .edges
        .iter()
        .zip(["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    {
        assert_eq!(e.dns_listen.to_string(), format!("{ip}:5300"));
        assert_eq!(e.quic_listen.to_string(), format!("{ip}:4433"));
        assert_eq!(e.admin_listen.to_string(), format!("{ip}:9180"));
        assert_eq!(e.addresses[0].to_string(), ip);
    }
    let echo = t.function("echo").unwrap();
    assert_eq!(echo.edges, vec![0, 1, 2]);
    let resize = t.function("resize").unwrap();
    assert_eq!(resize.edges, vec![1, 2]);
    assert!(resize.idempotent);
}

/// `fnroute check` through the real binary.
#[test]
fn check_command() {
    let bin = env!("CARGO_BIN_EXE_fnroute");
    let ok = std::process::Command::new(bin)
        .args(["check", "edge-config/three-edges.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("3 edge(s)") && out.contains("resize") && out.contains("on nyc,sin"),
        "{out}"
    );

    let (_d, path, _) = load(&format!(
        "{HEAD}{EDGES}\n[[function]]\nname = \"resize\"\nedges = [\"fra2\"]\nexecutor = {{ kind = \"command\", command = [\"cat\"] }}\n"
    ));
    let bad = std::process::Command::new(bin)
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(&format!("{}:", path.display())) && err.contains("\"fra2\""),
        "{err}"
    );
}

#[test]
fn streaming_keys_are_checked() {
    let f = |extra: &str| {
        format!(
            "{HEAD}{EDGES}\n[[function]]\nname = \"s\"\nexecutor = {{ kind = \"command\", command = [\"cat\"] }}\n{extra}\n"
        )
    };
    check_errors(
        &f("stream_idle_ms = 100\nmax_stream_bytes = 10"),
        &[
            "stream_idle_ms applies to streaming functions only",
            "max_stream_bytes applies to streaming functions only",
        ],
    );
    check_errors(
        &f("streaming = true\ngatekeeper = true"),
        &["a gatekeeper cannot stream"],
    );
    check_errors(
        &f("streaming = true\nstream_idle_ms = 0\nmax_stream_bytes = 0"),
        &[
            "stream_idle_ms = 0 is out of range",
            "max_stream_bytes = 0 streams nothing",
        ],
    );
    let (_dir, _, t) = load(&f(
        "streaming = true\nstream_idle_ms = 1500\nmax_stream_bytes = 4096",
    ));
    let t = t.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(t.function("s").is_some());
}
