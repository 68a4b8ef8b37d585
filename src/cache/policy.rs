//! Pure cache policy: what a response says about its own caching, and how
//! fresh a stored entry is at a given `now`. No I/O, no clock, no tokio
//! tasks: everything here takes its inputs as arguments.

use std::time::Duration;

use tokio::time::Instant;

/// What one response says about caching itself. Parsed from a
/// `cache-control`-style value; it can shorten or forbid caching, never
/// lengthen it past the function's configured TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Directive {
    /// Nothing said: the configured TTL applies.
    #[default]
    Default,
    /// Do not store this response (`no-store`, `no-cache`, `private`).
    NoStore,
    /// Store for at most this long (`s-maxage=N` or else `max-age=N`).
    MaxAge(Duration),
}

impl Directive {
    /// Parses a `cache-control`-style value: comma-separated tokens, case
    /// insensitive, unknown or malformed tokens ignored (never fails).
    ///
    /// `no-store`, `no-cache` (fnroute cannot revalidate, so it means "do
    /// not store") and `private` (fnroute is a shared cache) win over any
    /// age; `s-maxage` wins over `max-age`.
    pub fn parse(value: &str) -> Self {
        let mut max_age = None;
        let mut s_maxage = None;
        for token in value.split(',') {
            let token = token.trim();
            let (name, arg) = match token.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("no-store")
                || name.eq_ignore_ascii_case("no-cache")
                || name.eq_ignore_ascii_case("private")
            {
                return Self::NoStore;
            }
            let slot = if name.eq_ignore_ascii_case("max-age") {
                &mut max_age
            } else if name.eq_ignore_ascii_case("s-maxage") {
                &mut s_maxage
            } else {
                continue;
            };
            if let Some(secs) = arg.and_then(parse_seconds) {
                // The first occurrence of a directive counts (RFC 9111 4.2.1
                // says such a response is stale; being conservative, we keep
                // the first and the min below never lengthens anything).
                slot.get_or_insert(secs);
            }
        }
        match s_maxage.or(max_age) {
            Some(secs) => Self::MaxAge(Duration::from_secs(secs)),
            None => Self::Default,
        }
    }

    /// How long a response with this directive may be served as fresh under
    /// a configured `ttl`; `None` means "do not store".
    pub(crate) fn effective_ttl(self, ttl: Duration) -> Option<Duration> {
        let t = match self {
            Self::Default => ttl,
            Self::NoStore => return None,
            Self::MaxAge(age) => age.min(ttl),
        };
        (!t.is_zero()).then_some(t)
    }
}

/// A delta-seconds value (RFC 9111 1.2.2): digits only; too large a number
/// saturates.
fn parse_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// The cache directive of a Lambda (API Gateway proxy style) result:
/// `{"statusCode":200,"headers":{"cache-control":"max-age=5"},"body":"…"}`.
///
/// - `headers` names are matched case-insensitively; the first
///   `cache-control` whose value is a string is parsed with
///   [`Directive::parse`]; `multiValueHeaders` is read the same way (its
///   values joined with `,`) when `headers` has none.
/// - A `statusCode` outside 200..=299 means `NoStore` (a failure the
///   function reports in its result is not served to other clients).
/// - Anything else (not JSON, not an object, no headers) is `Default`: a
///   plain result is cached for the configured TTL.
pub fn lambda_directive(result: &[u8]) -> Directive {
    // Cheap pre-check: a result that cannot be an API-Gateway-style object
    // is not parsed at all.
    let first = result.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Directive::Default;
    }
    match serde_json::from_slice::<serde_json::Value>(result) {
        Ok(v) => lambda_directive_value(&v),
        Err(_) => Directive::Default,
    }
}

/// [`lambda_directive`] on an already parsed result (the front door parses
/// it anyway to take `statusCode`, `headers` and `body` apart).
pub fn lambda_directive_value(result: &serde_json::Value) -> Directive {
    let Some(obj) = result.as_object() else {
        return Directive::Default;
    };
    if let Some(code) = obj.get("statusCode") {
        match code.as_u64() {
            Some(200..=299) => {}
            _ => return Directive::NoStore,
        }
    }
    let single = obj
        .get("headers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, v)| k.eq_ignore_ascii_case("cache-control") && v.is_string())
                .and_then(|(_, v)| v.as_str())
        });
    if let Some(value) = single {
        return Directive::parse(value);
    }
    let multi = obj
        .get("multiValueHeaders")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
                .and_then(|(_, v)| v.as_array())
        });
    match multi {
        Some(values) => {
            let joined: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
            Directive::parse(&joined.join(","))
        }
        None => Directive::Default,
    }
}

/// The prefix a `command` function prints on a line of its stderr to give
/// its result a cache directive: `fnroute-cache-control: max-age=5`.
pub const COMMAND_DIRECTIVE_PREFIX: &str = "fnroute-cache-control:";

/// The cache directive a `command` function printed on stderr: the last
/// line that starts with [`COMMAND_DIRECTIVE_PREFIX`] (case-insensitive,
/// leading whitespace allowed) counts; no such line means `Default`.
/// Lines that are not UTF-8 are skipped.
pub fn command_directive(stderr: &[u8]) -> Directive {
    stderr
        .split(|b| *b == b'\n')
        .rev()
        .find_map(command_directive_line)
        .unwrap_or_default()
}

/// One stderr line of a `command` function: its directive if it is a
/// `fnroute-cache-control:` line, else `None`. For executors that read
/// stderr line by line (keep the last `Some`).
pub fn command_directive_line(line: &[u8]) -> Option<Directive> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let n = COMMAND_DIRECTIVE_PREFIX.len();
    let prefix = line.get(..n)?;
    if !prefix.eq_ignore_ascii_case(COMMAND_DIRECTIVE_PREFIX) {
        return None;
    }
    Some(Directive::parse(line.get(n..)?))
}

/// Where a stored entry stands at some `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Younger than its TTL: serve it.
    Fresh,
    /// Past its TTL, within stale-while-revalidate: serve it and refresh
    /// it in the background.
    Revalidate,
    /// Past its TTL and any stale-while-revalidate window, within
    /// stale-if-error: run the function; serve this only if it fails.
    ErrorOnly,
    /// Past every window: as if absent.
    Expired,
}

/// The timeline of one stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// When the response was produced.
    pub(crate) stored: Instant,
    /// Fresh for this long after `stored` (already clamped to the policy).
    pub(crate) ttl: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

impl Lifetime {
    /// The entry's state at `now`. Pure; a `now` before `stored` counts as
    /// age zero.
    pub(crate) fn freshness(&self, now: Instant) -> Freshness {
        let age = self.age(now);
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl.saturating_add(self.stale_while_revalidate) {
            Freshness::Revalidate
        } else if age < self.ttl.saturating_add(self.stale_if_error) {
            Freshness::ErrorOnly
        } else {
            Freshness::Expired
        }
    }

    /// Time since the response was produced (for the `age` header).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored)
    }

    /// How long after `stored` the entry can still be used at all: the TTL
    /// plus the longest stale window. The store drops it after that.
    pub(crate) fn usable_for(&self) -> Duration {
        self.ttl
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }
}
