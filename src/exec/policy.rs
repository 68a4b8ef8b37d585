//! Pure decisions of the executors: scaling, crash backoff, metering
//! arithmetic, memory limits and Runtime API routes. No IO, no clock (the
//! callers pass durations and counts in), so everything here is unit-tested
//! directly.

use std::time::Duration;

/// First retry delay after a second consecutive crash.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest delay between replacements of a crash-looping worker.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Address space granted on top of `memory_mb` (see [`address_space_limit`]).
pub(crate) const ADDRESS_SPACE_HEADROOM_MB: u64 = 256;
/// Function env key that overrides the address-space limit: a number of
/// MiB, or `off`. fnroute consumes it; the worker does not see it.
pub(crate) const ADDRESS_SPACE_KNOB: &str = "FNROUTE_ADDRESS_SPACE_MB";

/// How long to wait before replacing a worker after `consecutive` crashes
/// in a row: the first replacement is immediate, then 50 ms, 100 ms, …
/// doubling up to [`BACKOFF_MAX`].
pub(crate) fn crash_backoff(consecutive: u32) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    let shift = (consecutive - 2).min(16);
    BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// How many workers to start now. `queued` invocations wait; `coming`
/// workers will pick one up soon (starting, or just answered and about to
/// ask for the next); `workers` exist (including starting ones); `max` is
/// the pool's cap; `min` its floor.
pub(crate) fn workers_to_start(
    queued: usize,
    coming: usize,
    workers: usize,
    min: usize,
    max: usize,
    backing_off: bool,
) -> usize {
    if backing_off {
        return 0;
    }
    let for_queue = queued.saturating_sub(coming);
    let for_floor = min.saturating_sub(workers);
    for_queue.max(for_floor).min(max.saturating_sub(workers))
}

/// Billed duration: rounded up to the next whole millisecond, at least 1.
pub(crate) fn billed_ms(run: Duration) -> u64 {
    let ms = run.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Memory-time in MiB·ms (exact integer; GB-seconds derive from it).
pub(crate) fn mb_ms(memory_mb: u32, billed_ms: u64) -> u128 {
    u128::from(memory_mb) * u128::from(billed_ms)
}

/// GB-seconds as AWS bills them (1 GB = 1024 MB).
pub(crate) fn gb_seconds(mb_ms: u128) -> f64 {
    mb_ms as f64 / (1024.0 * 1000.0)
}

/// The RLIMIT_AS (bytes) for a worker of a function with `memory_mb`,
/// or `None` for no limit.
///
/// RLIMIT_AS caps virtual address space, not resident memory: interpreters
/// and runtimes map code, thread stacks and malloc arenas they never touch.
/// So the limit is `memory_mb` plus a fixed [`ADDRESS_SPACE_HEADROOM_MB`]
/// (enough for CPython, Node-less shells and Rust runtimes at the sizes we
/// test). Runtimes that reserve huge regions up front (the JVM's heap and
/// class space, Go's arenas on some versions) need the knob: `knob` is the
/// function's `FNROUTE_ADDRESS_SPACE_MB` env value, a number of MiB or
/// `off`.
pub(crate) fn address_space_limit(
    memory_mb: u32,
    knob: Option<&str>,
) -> Result<Option<u64>, String> {
    const MIB: u64 = 1024 * 1024;
    match knob.map(str::trim) {
        None => Ok(Some(
            (u64::from(memory_mb) + ADDRESS_SPACE_HEADROOM_MB) * MIB,
        )),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(mb) if mb >= u64::from(memory_mb) => Ok(Some(mb.saturating_mul(MIB))),
            Ok(mb) => Err(format!(
                "{ADDRESS_SPACE_KNOB} = {mb} is below memory_mb = {memory_mb}"
            )),
            Err(_) => Err(format!(
                "{ADDRESS_SPACE_KNOB} = {v:?} is neither a number of MiB nor \"off\""
            )),
        },
    }
}

/// A request on the Lambda Runtime API (2018-06-01).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Next,
    Response(&'a str),
    Error(&'a str),
    InitError,
    Unknown,
}

/// Routes a method and path of the Runtime API. Never fails: anything else
/// is `Unknown`.
pub(crate) fn route<'a>(method: &http::Method, path: &'a str) -> Route<'a> {
    const BASE: &str = "/2018-06-01/runtime/";
    let Some(rest) = path.strip_prefix(BASE) else {
        return Route::Unknown;
    };
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    match rest {
        "invocation/next" if get => Route::Next,
        "init/error" if post => Route::InitError,
        _ => {
            let Some(inv) = rest.strip_prefix("invocation/") else {
                return Route::Unknown;
            };
            match inv.split_once('/') {
                Some((id, "response")) if post && !id.is_empty() => Route::Response(id),
                Some((id, "error")) if post && !id.is_empty() => Route::Error(id),
                _ => Route::Unknown,
            }
        }
    }
}

/// Keeps the last `cap` bytes of a stream (the tail of stderr).
#[derive(Debug, Default)]
pub(crate) struct Tail {
    buf: std::collections::VecDeque<u8>,
    cap: usize,
    /// The value of the last `fnroute-cache-control:` line seen.
    cache_control: Option<String>,
}

/// The stderr line prefix by which a `command` function sets the caching of
/// its result (docs/cache.md).
pub(crate) const CACHE_CONTROL_LINE: &str = "fnroute-cache-control:";

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            // Grows with what is written: most invocations write nothing.
            buf: std::collections::VecDeque::new(),
            cap,
            cache_control: None,
        }
    }

    /// The value of the last `fnroute-cache-control:` line pushed.
    pub(crate) fn cache_control(&self) -> Option<&str> {
        self.cache_control.as_deref()
    }

    /// Adds one line (or chunk) of output.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if let Ok(line) = std::str::from_utf8(bytes) {
            let line = line.trim();
            if let Some(head) = line.get(..CACHE_CONTROL_LINE.len()) {
                if head.eq_ignore_ascii_case(CACHE_CONTROL_LINE) {
                    self.cache_control = Some(line[CACHE_CONTROL_LINE.len()..].trim().to_string());
                }
            }
        }
        let skip = bytes.len().saturating_sub(self.cap);
        for &b in &bytes[skip..] {
            if self.buf.len() == self.cap {
                self.buf.pop_front();
            }
            self.buf.push_back(b);
        }
    }

    pub(crate) fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn tail_keeps_the_last_cache_control_line() {
        let mut t = Tail::new(16);
        t.push(b"starting\n");
        assert_eq!(t.cache_control(), None);
        t.push(b"FNROUTE-Cache-Control: max-age=5\n");
        t.push(b"fnroute-cache-control:  no-store \n");
        t.push(b"done\n");
        assert_eq!(t.cache_control(), Some("no-store"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(crash_backoff(0), Duration::ZERO);
        assert_eq!(crash_backoff(1), Duration::ZERO);
        assert_eq!(crash_backoff(2), Duration::from_millis(50));
        assert_eq!(crash_backoff(3), Duration::from_millis(100));
        assert_eq!(crash_backoff(4), Duration::from_millis(200));
        assert_eq!(crash_backoff(10), BACKOFF_MAX);
        assert_eq!(crash_backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn scaling() {
        // (queued, coming, workers, min, max, backing_off) -> start
        let check = |q, c, w, min, max, b, want| {
            assert_eq!(
                workers_to_start(q, c, w, min, max, b),
                want,
                "{q} {c} {w} {min} {max} {b}"
            );
        };
        check(0, 0, 0, 0, 4, false, 0);
        check(1, 0, 0, 0, 4, false, 1);
        check(3, 1, 1, 0, 4, false, 2);
        check(10, 0, 2, 0, 4, false, 2);
        check(1, 1, 1, 0, 4, false, 0);
        check(0, 0, 0, 2, 4, false, 2);
        check(5, 0, 0, 0, 4, true, 0);
        check(5, 0, 4, 0, 4, false, 0);
    }

    #[test]
    fn metering_arithmetic() {
        assert_eq!(billed_ms(Duration::ZERO), 1);
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::from_millis(5)), 5);
        assert_eq!(billed_ms(Duration::from_micros(5_001)), 6);
        let m = mb_ms(1024, 1000);
        assert!((gb_seconds(m) - 1.0).abs() < 1e-12);
        assert!((gb_seconds(mb_ms(128, 100)) - 0.0125).abs() < 1e-12);
    }

    #[test]
    fn address_space() {
        let mib = 1024 * 1024;
        assert_eq!(address_space_limit(128, None), Ok(Some((128 + 256) * mib)));
        assert_eq!(address_space_limit(128, Some("off")), Ok(None));
        assert_eq!(address_space_limit(128, Some("4096")), Ok(Some(4096 * mib)));
        assert!(address_space_limit(128, Some("64")).is_err());
        assert!(address_space_limit(128, Some("lots")).is_err());
    }

    #[test]
    fn routes() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(
            route(&g, "/2018-06-01/runtime/invocation/next"),
            Route::Next
        );
        assert_eq!(
            route(&p, "/2018-06-01/runtime/invocation/next"),
            Route::Unknown
        );
        assert_eq!(
            route(&p, "/2018-06-01/runtime/invocation/abc/response"),
            Route::Response("abc")
        );
        assert_eq!(
            route(&p, "/2018-06-01/runtime/invocation/abc/error"),
            Route::Error("abc")
        );
        assert_eq!(
            route(&p, "/2018-06-01/runtime/invocation//error"),
            Route::Unknown
        );
        assert_eq!(
            route(&p, "/2018-06-01/runtime/init/error"),
            Route::InitError
        );
        assert_eq!(route(&g, "/2018-06-01/runtime/init/error"), Route::Unknown);
        assert_eq!(route(&g, "/"), Route::Unknown);
        assert_eq!(
            route(&p, "/2018-06-01/runtime/invocation/a/b/response"),
            Route::Unknown
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(5);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "world");
        let mut t = Tail::new(100);
        t.push(b"  short\n");
        assert_eq!(t.text(), "short");
    }
}
