//! Admission decisions for the QUIC endpoint and request parsing helpers.
//! Pure: no IO, no clock; the server passes in the counters it keeps.

use std::time::Duration;

/// Handshakes in progress above which unvalidated clients must first
/// prove their address with a stateless retry.
pub(crate) const RETRY_HANDSHAKES: usize = 64;

/// How long an invocation may wait for an edge admission slot before it
/// gets 503: short and bounded, never an unbounded queue.
pub(crate) const ADMISSION_WAIT: Duration = Duration::from_millis(50);

pub(crate) use crate::headers::TIMEOUT_HEADER;

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    /// Stateless retry: the client must echo a token from its address.
    Retry,
    Refuse,
}

/// Decides on a connection attempt given the connections open (accepted,
/// not yet closed), handshakes in progress and the configured maximum.
/// Retry kicks in under load (many handshakes, or three quarters of the
/// connection budget used) for clients whose address is not validated.
pub(crate) fn admit_connection(
    open: usize,
    handshaking: usize,
    max_connections: usize,
    validated: bool,
    may_retry: bool,
) -> Admit {
    if open >= max_connections {
        return Admit::Refuse;
    }
    let loaded = handshaking >= RETRY_HANDSHAKES || open >= max_connections - max_connections / 4;
    if loaded && !validated && may_retry {
        Admit::Retry
    } else {
        Admit::Accept
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `POST /fn/{name}`: one function (a one-step route).
    Invoke(&'a str),
    /// `POST /event/{type}`: an event entering by its type's entry steps.
    Event(&'a str),
    /// `POST /route`: an explicit stack in the `fnroute-route` header.
    Stack,
    MethodNotAllowed,
    NotFound,
}
/// Paths of the client API (`/fn/…`, `/event/…`, `/route`, `/health`):
/// they keep their meaning on every host, function URLs included, so a
/// client that resolved `<function>.<zone>` may still `POST /fn/<name>`.
pub(crate) fn is_api_path(path: &str) -> bool {
    path.starts_with("/fn/") || path.starts_with("/event/") || path == "/route" || path == "/health"
}

/// Maps method and path to a route: `POST /fn/{name}`,
/// `POST /event/{type}` and `POST /route`.
pub(crate) fn route<'a>(method: &http::Method, path: &'a str) -> Route<'a> {
    let found = if path == "/route" {
        Route::Stack
    } else if let Some(name) = path.strip_prefix("/fn/") {
        if name.is_empty() || name.contains('/') {
            return Route::NotFound;
        }
        Route::Invoke(name)
    } else if let Some(kind) = path.strip_prefix("/event/") {
        if kind.is_empty() || kind.contains('/') {
            return Route::NotFound;
        }
        Route::Event(kind)
    } else {
        return Route::NotFound;
    };
    if method != http::Method::POST {
        return Route::MethodNotAllowed;
    }
    found
}

/// The deadline of one invocation: the function's timeout, shortened by
/// the client's `fnroute-timeout-ms` if given. `Err` for a header that is
/// not a positive whole number of milliseconds.
pub(crate) fn invocation_timeout(
    function: Duration,
    header: Option<&[u8]>,
) -> Result<Duration, String> {
    let Some(raw) = header else {
        return Ok(function);
    };
    let ms = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .ok_or_else(|| {
            format!(
                "{TIMEOUT_HEADER} {:?} is not a positive number of milliseconds",
                String::from_utf8_lossy(raw)
            )
        })?;
    Ok(function.min(Duration::from_millis(ms)))
}

/// The content type of a result the function did not label: JSON when the
/// body is a JSON object or array, else bytes.
pub(crate) fn sniff_content_type(body: &[u8]) -> &'static str {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{') | Some(b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// `server-timing` value: queue, run and total in milliseconds, and
/// `cold` when a new worker (or wasm instance) started for this
/// invocation, with its start-up time (a worker's spawn to its first
/// `next`; an instance's instantiation).
pub(crate) fn server_timing(
    queue: Duration,
    run: Duration,
    total: Duration,
    cold: Option<Duration>,
) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut s = format!(
        "queue;dur={:.3}, run;dur={:.3}, total;dur={:.3}",
        ms(queue),
        ms(run),
        ms(total)
    );
    match cold {
        // A command's process start is not measured apart from its run.
        Some(init) if init.is_zero() => s.push_str(", cold"),
        Some(init) => s.push_str(&format!(", cold;dur={:.3}", ms(init))),
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission() {
        use Admit::*;
        let check = |open, hs, max, validated, may_retry, want| {
            assert_eq!(
                admit_connection(open, hs, max, validated, may_retry),
                want,
                "open {open} handshaking {hs} max {max} validated {validated}"
            );
        };
        check(0, 0, 100, false, true, Accept);
        check(100, 0, 100, true, true, Refuse);
        check(150, 0, 100, false, true, Refuse);
        check(75, 0, 100, false, true, Retry);
        check(75, 0, 100, true, true, Accept);
        check(75, 0, 100, false, false, Accept);
        check(1, RETRY_HANDSHAKES, 100, false, true, Retry);
        check(0, 0, 1, false, true, Accept);
        check(1, 0, 1, false, true, Refuse);
        check(0, 0, 0, true, true, Refuse);
    }

    #[test]
    fn routes() {
        let post = http::Method::POST;
        assert_eq!(route(&post, "/fn/resize"), Route::Invoke("resize"));
        assert_eq!(
            route(&http::Method::GET, "/fn/resize"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(&post, "/fn/"), Route::NotFound);
        assert_eq!(route(&post, "/fn/a/b"), Route::NotFound);
        assert_eq!(route(&post, "/"), Route::NotFound);
        assert_eq!(route(&post, "/function/x"), Route::NotFound);
        assert_eq!(route(&post, "/event/document"), Route::Event("document"));
        assert_eq!(route(&post, "/event/"), Route::NotFound);
        assert_eq!(route(&post, "/route"), Route::Stack);
        assert_eq!(route(&post, "/route/x"), Route::NotFound);
        assert_eq!(route(&http::Method::GET, "/route"), Route::MethodNotAllowed);
    }

    #[test]
    fn timeouts() {
        let f = Duration::from_secs(3);
        assert_eq!(invocation_timeout(f, None), Ok(f));
        assert_eq!(
            invocation_timeout(f, Some(b"250")),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(invocation_timeout(f, Some(b"999999")), Ok(f));
        assert!(invocation_timeout(f, Some(b"0")).is_err());
        assert!(invocation_timeout(f, Some(b"-5")).is_err());
        assert!(invocation_timeout(f, Some(b"\xff")).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(sniff_content_type(b" {\"a\":1}"), "application/json");
        assert_eq!(sniff_content_type(b"[1,2]"), "application/json");
        assert_eq!(sniff_content_type(b"{not json"), "application/octet-stream");
        assert_eq!(sniff_content_type(b"42"), "application/octet-stream");
        assert_eq!(sniff_content_type(b""), "application/octet-stream");
    }

    #[test]
    fn timing_header() {
        let t = server_timing(
            Duration::from_micros(10),
            Duration::from_millis(2),
            Duration::from_millis(3),
            Some(Duration::ZERO),
        );
        assert_eq!(t, "queue;dur=0.010, run;dur=2.000, total;dur=3.000, cold");
        let t = server_timing(
            Duration::ZERO,
            Duration::from_millis(2),
            Duration::from_millis(3),
            Some(Duration::from_micros(45)),
        );
        assert_eq!(
            t,
            "queue;dur=0.000, run;dur=2.000, total;dur=3.000, cold;dur=0.045"
        );
        let t = server_timing(Duration::ZERO, Duration::ZERO, Duration::ZERO, None);
        assert_eq!(t, "queue;dur=0.000, run;dur=0.000, total;dur=0.000");
    }
}
