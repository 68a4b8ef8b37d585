//! Pure unit tests: directives, the function-side conventions, freshness
//! and keys. The cache's behaviour under tokio is tested in
//! `tests/integration/cache.rs`.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn directive_parse_table() {
    use Directive::*;
    let cases: &[(&str, Directive)] = &[
        ("", Default),
        ("public", Default),
        ("no-store", NoStore),
        ("No-Store", NoStore),
        ("no-cache", NoStore),
        ("private, max-age=60", NoStore),
        ("max-age=5", MaxAge(secs(5))),
        ("MAX-AGE = 5", MaxAge(secs(5))),
        ("max-age=\"7\"", MaxAge(secs(7))),
        ("public, max-age=5, must-revalidate", MaxAge(secs(5))),
        ("max-age=60, s-maxage=3", MaxAge(secs(3))),
        ("s-maxage=3, max-age=60", MaxAge(secs(3))),
        ("max-age=0", MaxAge(secs(0))),
        ("max-age=5, max-age=9", MaxAge(secs(5))),
        ("max-age=-1", Default),
        ("max-age=abc", Default),
        ("max-age=", Default),
        ("max-age", Default),
        ("max-age=99999999999999999999999", MaxAge(secs(u64::MAX))),
        ("max-age=5, no-store", NoStore),
        (",,, ,", Default),
    ];
    for (input, expected) in cases {
        assert_eq!(Directive::parse(input), *expected, "{input:?}");
    }
}

#[test]
fn directive_never_lengthens_the_ttl() {
    let ttl = secs(30);
    assert_eq!(Directive::Default.effective_ttl(ttl), Some(ttl));
    assert_eq!(Directive::NoStore.effective_ttl(ttl), None);
    assert_eq!(Directive::MaxAge(secs(5)).effective_ttl(ttl), Some(secs(5)));
    assert_eq!(Directive::MaxAge(secs(3600)).effective_ttl(ttl), Some(ttl));
    assert_eq!(Directive::MaxAge(secs(0)).effective_ttl(ttl), None);
}

#[test]
fn lambda_convention() {
    let cases: &[(&str, Directive)] = &[
        (
            r#"{"statusCode":200,"headers":{"cache-control":"max-age=5"},"body":"x"}"#,
            Directive::MaxAge(secs(5)),
        ),
        (
            r#"{"statusCode":200,"headers":{"Cache-Control":"no-store"},"body":"x"}"#,
            Directive::NoStore,
        ),
        (
            r#"{"statusCode":200,"multiValueHeaders":{"cache-control":["public","max-age=4"]}}"#,
            Directive::MaxAge(secs(4)),
        ),
        (r#"{"statusCode":500,"body":"boom"}"#, Directive::NoStore),
        (r#"{"statusCode":"200"}"#, Directive::NoStore),
        (r#"{"statusCode":204}"#, Directive::Default),
        (r#"{"headers":{"cache-control":7}}"#, Directive::Default),
        (r#"{"hello":"world"}"#, Directive::Default),
        (r#"  "just a string""#, Directive::Default),
        ("[1,2,3]", Directive::Default),
        ("{not json", Directive::Default),
        ("", Directive::Default),
    ];
    for (input, expected) in cases {
        assert_eq!(lambda_directive(input.as_bytes()), *expected, "{input}");
    }
}

#[test]
fn command_convention() {
    let cases: &[(&[u8], Directive)] = &[
        (b"", Directive::Default),
        (b"some log line\n", Directive::Default),
        (
            b"fnroute-cache-control: max-age=5\n",
            Directive::MaxAge(secs(5)),
        ),
        (b"FNROUTE-Cache-Control:no-store", Directive::NoStore),
        (
            b"  fnroute-cache-control: max-age=9\r\nlog\nfnroute-cache-control: max-age=2\n",
            Directive::MaxAge(secs(2)),
        ),
        (
            b"\xff\xfe\nfnroute-cache-control: max-age=3",
            Directive::MaxAge(secs(3)),
        ),
        (b"x fnroute-cache-control: max-age=3", Directive::Default),
        ("fnroute-cache-contr\u{e9}".as_bytes(), Directive::Default),
    ];
    for (input, expected) in cases {
        assert_eq!(
            command_directive(input),
            *expected,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn command_convention_line_by_line() {
    assert_eq!(
        command_directive_line(b"fnroute-cache-control: max-age=5\n"),
        Some(Directive::MaxAge(secs(5)))
    );
    assert_eq!(
        command_directive_line(b"fnroute-cache-control:"),
        Some(Directive::Default)
    );
    assert_eq!(command_directive_line(b"hello"), None);
    assert_eq!(command_directive_line(b""), None);
}

#[test]
fn freshness_timeline() {
    let t0 = Instant::now();
    let life = Lifetime {
        stored: t0,
        ttl: secs(10),
        stale_while_revalidate: secs(5),
        stale_if_error: secs(20),
    };
    let at = |s: u64| life.freshness(t0 + secs(s));
    assert_eq!(at(0), Freshness::Fresh);
    assert_eq!(at(9), Freshness::Fresh);
    assert_eq!(at(10), Freshness::Revalidate);
    assert_eq!(at(14), Freshness::Revalidate);
    assert_eq!(at(15), Freshness::ErrorOnly);
    assert_eq!(at(29), Freshness::ErrorOnly);
    assert_eq!(at(30), Freshness::Expired);
    assert_eq!(life.usable_for(), secs(30));
    assert_eq!(life.age(t0 + secs(12)), secs(12));
    // A clock read before `stored` is age zero, not a panic.
    let later = Lifetime {
        stored: t0 + secs(5),
        ..life
    };
    assert_eq!(later.age(t0), Duration::ZERO);
    assert_eq!(later.freshness(t0), Freshness::Fresh);
}

#[test]
fn swr_longer_than_sie() {
    let t0 = Instant::now();
    let life = Lifetime {
        stored: t0,
        ttl: secs(1),
        stale_while_revalidate: secs(10),
        stale_if_error: secs(2),
    };
    assert_eq!(life.freshness(t0 + secs(5)), Freshness::Revalidate);
    assert_eq!(life.freshness(t0 + secs(11)), Freshness::Expired);
    assert_eq!(life.usable_for(), secs(11));
}

#[test]
fn keys_differ_by_every_part() {
    let base = CacheKey::new("echo", 1, b"payload", [Some("en")]);
    assert_eq!(base, CacheKey::new("echo", 1, b"payload", [Some(" en ")]));
    for other in [
        CacheKey::new("upper", 1, b"payload", [Some("en")]),
        CacheKey::new("echo", 2, b"payload", [Some("en")]),
        CacheKey::new("echo", 1, b"payload2", [Some("en")]),
        CacheKey::new("echo", 1, b"payload", [Some("fr")]),
        CacheKey::new("echo", 1, b"payload", [Some("")]),
        CacheKey::new("echo", 1, b"payload", [None]),
        CacheKey::new("echo", 1, b"payload", []),
    ] {
        assert_ne!(base, other, "{other:?}");
    }
    assert!(base.weight() >= 4 + 8 + 32 + 2);
}

#[test]
fn cache_status_header_values() {
    let all = [
        (CacheStatus::Hit, "hit"),
        (CacheStatus::Miss, "miss"),
        (CacheStatus::Stale, "stale"),
        (CacheStatus::Coalesced, "coalesced"),
        (CacheStatus::Bypass, "bypass"),
    ];
    for (status, text) in all {
        assert_eq!(status.to_string(), text);
    }
}

mod version {
    use std::path::Path;

    use crate::config::function_version;
    use crate::config::{self, Function};

    const TOPOLOGY: &str = r#"
zone = "fn.test."
geo_db = "geo/sample.mmdb"
default_location = { lat = 0.0, lon = 0.0 }

[[edge]]
name = "a"
location = { lat = 0.0, lon = 0.0 }
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"

[[function]]
name = "f"
executor = { kind = "command", command = ["cat"], env = { A = "1" } }
cache = { ttl_s = 30, vary = ["accept-language"] }
"#;

    fn load(text: &str) -> Function {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.toml");
        let t = config::parse(&path, text).unwrap();
        t.functions.into_iter().next().unwrap()
    }

    #[test]
    fn stable_for_equal_definitions() {
        let a = load(TOPOLOGY);
        let b = load(TOPOLOGY);
        assert_eq!(function_version(&a), function_version(&b));
    }

    #[test]
    fn changes_with_every_result_affecting_field() {
        let base = function_version(&load(TOPOLOGY));
        let edits: &[(&str, &str)] = &[
            ("command = [\"cat\"]", "command = [\"cat\", \"-u\"]"),
            ("A = \"1\"", "A = \"2\""),
            ("ttl_s = 30", "ttl_s = 31"),
            ("vary = [\"accept-language\"]", "vary = []"),
            ("ttl_s = 30,", "ttl_s = 30, stale_if_error_s = 5,"),
            ("ttl_s = 30,", "ttl_s = 30, negative_ttl_s = 5,"),
            ("cache = {", "memory_mb = 256\ncache = {"),
            ("cache = {", "timeout_ms = 100\ncache = {"),
            ("kind = \"command\"", "kind = \"lambda\""),
        ];
        for (from, to) in edits {
            let text = TOPOLOGY.replacen(from, to, 1);
            assert_ne!(text, TOPOLOGY, "edit {from:?} did not apply");
            assert_ne!(function_version(&load(&text)), base, "{from} -> {to}");
        }
        // Placement-only changes keep the version (and so the cache).
        let moved = TOPOLOGY.replacen("cache = {", "idempotent = true\ncache = {", 1);
        assert_eq!(function_version(&load(&moved)), base);
    }
}

mod never_panics {
    use std::time::Duration;

    use proptest::prelude::*;

    use crate::cache::{command_directive, lambda_directive, Directive};

    proptest! {
        #[test]
        fn directive_parse_never_lengthens(value in ".{0,80}", ttl_s in 1u64..100_000) {
            let ttl = Duration::from_secs(ttl_s);
            if let Some(t) = Directive::parse(&value).effective_ttl(ttl) {
                prop_assert!(t <= ttl && !t.is_zero());
            }
        }

        #[test]
        fn directive_tokens_in_any_order(age in 0u64..1_000_000, junk in "[a-z=, \"-]{0,20}") {
            let d = Directive::parse(&format!("{junk}, max-age={age}, {junk}"));
            prop_assert!(matches!(d, Directive::MaxAge(_) | Directive::NoStore), "{d:?}");
        }

        #[test]
        fn conventions_accept_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = command_directive(&bytes);
            let _ = lambda_directive(&bytes);
        }

        #[test]
        fn lambda_json_with_any_header_value(value in ".{0,40}", code in 0u64..1000) {
            let result = serde_json::json!({
                "statusCode": code,
                "headers": { "Cache-Control": value },
                "body": "x",
            });
            let d = lambda_directive(result.to_string().as_bytes());
            if !(200..300).contains(&code) {
                prop_assert_eq!(d, Directive::NoStore);
            } else {
                prop_assert_eq!(d, Directive::parse(&value));
            }
        }
    }
}
