use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::{self, static_cycle};

const BASE: &str = r#"
zone = "fn.test."
geo_db = "geo/sample.mmdb"
default_location = { lat = 0.0, lon = 0.0 }

[routing]
max_steps = 6
max_expansions = 3
max_stack_depth = 5

[[edge]]
name = "a"
location = { lat = 0.0, lon = 0.0 }
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"

[[function]]
name = "gate"
executor = { kind = "command", command = ["cat"] }
gatekeeper = true
idempotent = true

[[function]]
name = "log"
executor = { kind = "command", command = ["cat"] }

[[function]]
name = "process"
executor = { kind = "command", command = ["cat"] }
idempotent = true

[[route]]
name = "edit"
steps = ["gate", "process"]

[[route]]
name = "all"
steps = ["edit", "log"]

[[event]]
type = "document"
entry = ["all"]
"#;

fn topo() -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.toml");
    config::parse(&path, BASE).unwrap_or_else(|e| panic!("{e}"))
}

fn steps(s: &Stack) -> Vec<&str> {
    s.steps().collect()
}

#[test]
fn header_round_trip_and_parse_errors() {
    let s = Stack::parse("Edit log,process", 8).expect("parses");
    assert_eq!(steps(&s), ["edit", "log", "process"]);
    assert_eq!(s.to_header(), "edit log process");
    assert_eq!(s.peek(), Some("edit"));
    assert_eq!(Stack::parse("  ", 8), Err(RouteError::Empty));
    assert_eq!(
        Stack::parse("a b_c", 8),
        Err(RouteError::BadName("b_c".into()))
    );
    assert_eq!(
        Stack::parse("a b c", 2),
        Err(RouteError::TooDeep { depth: 3, max: 2 })
    );
}

#[test]
fn static_routes_expand_until_a_function_is_next() {
    let t = topo();
    let mut s = Stack::parse("all", 8).expect("parses");
    let mut p = Progress::default();
    let f = next_function(&t, &mut s, &mut p)
        .expect("ok")
        .expect("a function");
    assert_eq!(f.name, "gate");
    assert_eq!(steps(&s), ["gate", "process", "log"]);
    assert_eq!(p.expansions, 2, "all -> edit log, edit -> gate process");
    // A gatekeeper's push takes its place.
    s.pop();
    s.expand(&mut p, &t.routing.bounds, "gate", &["log".into()])
        .expect("within bounds");
    assert_eq!(steps(&s), ["log", "process", "log"]);
    assert_eq!(p.expansions, 3);
    // The fourth expansion is over max_expansions = 3.
    let err = s
        .expand(&mut p, &t.routing.bounds, "gate", &[])
        .expect_err("over the bound");
    assert!(matches!(err, RouteError::ExpansionLimit { max: 3, .. }));
    let mut empty = Stack::default();
    assert!(next_function(&t, &mut empty, &mut p).expect("ok").is_none());
    let mut unknown = Stack::parse("nope", 8).expect("parses");
    assert_eq!(
        next_function(&t, &mut unknown, &mut p).map(|f| f.map(|f| f.name.clone())),
        Err(RouteError::UnknownStep("nope".into()))
    );
}

#[test]
fn depth_and_step_bounds() {
    let t = topo();
    let b = t.routing.bounds;
    let mut s = Stack::parse("log log", 8).expect("parses");
    let mut p = Progress::default();
    let four: Vec<String> = vec!["log".into(); 4];
    assert_eq!(
        s.expand(&mut p, &b, "gate", &four),
        Err(RouteError::TooDeep { depth: 6, max: 5 })
    );
    for _ in 0..6 {
        p.begin_step(&b, "log").expect("within max_steps");
    }
    assert!(matches!(
        p.begin_step(&b, "log"),
        Err(RouteError::StepLimit { max: 6, .. })
    ));
}

#[test]
fn progress_header() {
    let p = Progress {
        steps: 3,
        expansions: 1,
    };
    assert_eq!(Progress::parse(&p.to_header()), Some(p));
    assert_eq!(Progress::parse("steps=x"), None);
    assert_eq!(Progress::parse("steps=1;other=2"), None);
}

#[test]
fn envelopes() {
    let t = topo();
    let e = parse_envelope(
        &t,
        "gate",
        br#"{"push": ["LOG", "edit"], "event": {"a": 1}}"#,
    )
    .expect("valid");
    assert_eq!(e.push, ["log", "edit"]);
    assert_eq!(e.event, Some(serde_json::json!({"a": 1})));
    let e = parse_envelope(&t, "gate", br#"{"push": []}"#).expect("valid");
    assert!(e.push.is_empty() && e.event.is_none());
    for bad in [
        &b"not json"[..],
        br#"{"event": 1}"#,
        br#"{"push": ["nope"]}"#,
        br#"{"push": ["a b"]}"#,
        br#"{"push": [], "extra": 1}"#,
    ] {
        let err = parse_envelope(&t, "gate", bad).expect_err("invalid");
        assert!(
            matches!(&err, RouteError::BadEnvelope { step, .. } if step == "gate"),
            "{err}"
        );
    }
}

#[test]
fn retryable_only_when_every_step_is_idempotent() {
    let t = topo();
    let s = |h: &str| Stack::parse(h, 8).expect("parses");
    assert!(retryable(&t, &s("process gate")));
    assert!(retryable(&t, &s("edit")), "edit = gate process");
    assert!(!retryable(&t, &s("process log")));
    assert!(!retryable(&t, &s("all")), "all contains log");
}

#[test]
fn static_cycles_are_found() {
    let mut routes = BTreeMap::new();
    routes.insert("a".to_string(), vec!["x".to_string(), "b".to_string()]);
    routes.insert("b".to_string(), vec!["c".to_string()]);
    routes.insert("c".to_string(), vec!["a".to_string()]);
    routes.insert("d".to_string(), vec!["a".to_string()]);
    assert_eq!(
        static_cycle(&routes, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    // d reaches a cycle but is not on it.
    assert_eq!(static_cycle(&routes, "d"), None);
    routes.insert("self".to_string(), vec!["self".to_string()]);
    assert_eq!(
        static_cycle(&routes, "self"),
        Some(vec!["self".into(), "self".into()])
    );
}

#[test]
fn validation_rejects_clashes_cycles_and_unknown_steps() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.toml");
    let text = format!(
        "{BASE}\n[[route]]\nname = \"log\"\nsteps = [\"process\"]\n\n[[route]]\nname = \"loop\"\nsteps = [\"loop2\"]\n\n[[route]]\nname = \"loop2\"\nsteps = [\"loop\"]\n\n[[event]]\ntype = \"bad/type\"\nentry = [\"missing\"]\n"
    );
    let err = config::parse(&path, &text)
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("clashes with the function"), "{err}");
    assert!(err.contains("expands into itself"), "{err}");
    assert!(err.contains("unknown step \"missing\""), "{err}");
    assert!(err.contains("cannot be a URL path segment"), "{err}");
    assert!(
        err.contains("topology.toml:"),
        "errors name file and line: {err}"
    );
}

#[test]
fn traceparent() {
    let t = Trace::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
    assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(t.span_id, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(
        t.header(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let c = t.child(7);
    assert_eq!(c.trace_id, t.trace_id);
    assert_eq!(
        c.header(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000007-01"
    );
    for bad in [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
    ] {
        assert_eq!(Trace::parse(bad), None, "{bad}");
    }
    assert_eq!(
        Trace::root(0, 0).header(),
        format!("00-{:032x}-{:016x}-01", 1, 1)
    );
}

#[test]
fn paths_join() {
    let ours = vec![path_entry("classify", "fra")];
    assert_eq!(
        join_path(&ours, Some("log@nyc, process@sin")),
        "classify@fra, log@nyc, process@sin"
    );
    assert_eq!(join_path(&[], Some("log@nyc")), "log@nyc");
    assert_eq!(join_path(&ours, None), "classify@fra");
}
