//! Metrics and metering: the one place where metric names are spelled.
//!
//! `metrics` owns the process-wide recorder (the `metrics` facade with the
//! Prometheus exporter's recorder only: no HTTP listener, no push gateway,
//! no TLS) and a tiny helper per event. Other modules call the helpers,
//! e.g. `crate::metrics::dns_query(edge, "A", "NOERROR")`, never the
//! `metrics::counter!` macros with names of their own, so names, label sets
//! and buckets stay consistent and documented (docs/operations.md lists
//! them). Every series carries an `edge` label: several edges can share one
//! process (`--all`).
//!
//! Label values are `&'static str` for enumerations (qtype, rcode,
//! outcome, …) and interned names for edges, functions and peers. The
//! interner only ever holds names from the validated topology; it is
//! bounded (`MAX_NAMES`), and a caller that passes anything else (never do
//! this with network input) gets the label value `other`. Recording one
//! event costs a registry lookup and one small allocation for the label
//! list (the facade's `Key`); see docs/performance.md.
//!
//! Why this crate pair: `metrics` is a facade any module (and any library)
//! can record into, and `metrics-exporter-prometheus` with default features
//! off is only a recorder plus a text renderer (no hyper server, no push
//! gateway, no rustls or aws-lc; `cargo tree -p metrics-exporter-prometheus`
//! shows metrics-util, quanta, evmap, indexmap, base64). `prometheus-client`
//! is smaller still but renders OpenMetrics rather than text 0.0.4 and
//! needs its typed metric families registered and passed to every module.
//!
//! Before `install()` runs, the helpers are no-ops (the facade's default).
//! This module knows nothing of sockets, DNS or executors.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Content type of `PrometheusHandle::render` output (text format 0.0.4).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most distinct edge, function and peer names the label interner keeps.
pub(crate) const MAX_NAMES: usize = 4096;

// ---- names: the only place they are spelled ------------------------------

pub const DNS_QUERIES: &str = "fnroute_dns_queries_total";
pub const DNS_ANSWERS: &str = "fnroute_dns_answers_total";
pub const DNS_FALLBACK: &str = "fnroute_dns_fallback_answers_total";
pub const INVOCATIONS: &str = "fnroute_invocations_total";
pub const INVOCATION_DURATION: &str = "fnroute_invocation_duration_seconds";
pub const CACHE_REQUESTS: &str = "fnroute_cache_requests_total";
pub const CACHE_BYTES: &str = "fnroute_cache_bytes";
pub const CACHE_EVICTIONS: &str = "fnroute_cache_evictions_total";
pub const POOL_WORKERS: &str = "fnroute_pool_workers";
pub const POOL_BUSY: &str = "fnroute_pool_busy_workers";
pub const POOL_QUEUED: &str = "fnroute_pool_queued_invocations";
pub const POOL_EVENTS: &str = "fnroute_pool_events_total";
pub const POOL_QUEUE_WAIT: &str = "fnroute_pool_queue_wait_seconds";
pub const PEER_UP: &str = "fnroute_peer_up";
pub const PEER_LOAD: &str = "fnroute_peer_load_ratio";
pub const PEER_RTT: &str = "fnroute_peer_rtt_seconds";
pub const VIEW_GENERATION: &str = "fnroute_view_generation";
pub const DRAINING: &str = "fnroute_draining";
pub const BUILD_INFO: &str = "fnroute_build_info";
pub const ROUTES: &str = "fnroute_routes_total";
pub(crate) const ROUTE_DURATION: &str = "fnroute_route_duration_seconds";
pub const ROUTE_STEPS: &str = "fnroute_route_steps_total";
pub const METERING_INVOCATIONS: &str = "fnroute_metering_invocations_total";
pub const METERING_BILLED_MS: &str = "fnroute_metering_billed_milliseconds_total";
pub const METERING_MB_MS: &str = "fnroute_metering_memory_mb_milliseconds_total";
pub(crate) const METERING_LOG_DROPPED: &str = "fnroute_metering_log_dropped_total";
pub(crate) const TCP_REFUSED: &str = "fnroute_tcp_connections_refused_total";
pub(crate) const CONTROL_REVISION: &str = "fnroute_control_revision";
pub(crate) const CONTROL_REFUSED: &str = "fnroute_control_revisions_refused_total";
pub const STREAM_ENDS: &str = "fnroute_stream_ends_total";
pub const STREAM_BYTES: &str = "fnroute_stream_bytes_total";

/// Upper bounds (seconds) of the invocation latency buckets: 1 ms to 30 s.
pub(crate) const INVOCATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of the queue-wait buckets: 100 µs to 5 s.
pub(crate) const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

// ---- label enumerations ---------------------------------------------------

/// Where an invocation ran, seen from the edge that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// On this edge's own pool.
    Local,
    /// Forwarded to a peer edge.
    Forwarded,
}

impl Path {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Forwarded => "forwarded",
        }
    }
}

/// What the cache said for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    /// Served stale (stale-while-revalidate or stale-if-error).
    Stale,
    /// Waited for an identical in-flight miss instead of running again.
    Coalesced,
}

impl CacheResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Coalesced => "coalesced",
        }
    }
}

/// Worker lifecycle events of an executor pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEvent {
    /// A worker was started to serve an invocation (no warm one was free).
    ColdStart,
    /// A worker exited on its own (crash, init error).
    Crash,
    /// A worker was killed (deadline, memory, shutdown).
    Kill,
}

impl PoolEvent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ColdStart => "cold_start",
            Self::Crash => "crash",
            Self::Kill => "kill",
        }
    }
}

// ---- the recorder ---------------------------------------------------------

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle). If another recorder was installed first, the handle renders
/// only what reaches ours (nothing) and a warning is logged.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (INVOCATION_DURATION, INVOCATION_BUCKETS),
            (ROUTE_DURATION, INVOCATION_BUCKETS),
            (POOL_QUEUE_WAIT, QUEUE_WAIT_BUCKETS),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(error) = ::metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// The handle, if `install` ran.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get()
}

/// Drains histogram samples into their buckets; call every few seconds
/// (rendering does it too) so samples do not pile up between scrapes.
pub(crate) fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}

/// Billed duration: whole milliseconds, rounded up, at least 1 ms (the
/// pricing model of the essay and of AWS Lambda).
pub(crate) fn billed_ms(duration: Duration) -> u64 {
    let nanos = duration.as_nanos();
    let ms = nanos.div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

// ---- control plane -----------------------------------------------------------

/// The control-plane revision `edge` serves.
pub(crate) fn control_revision(edge: &str, revision: u64) {
    ::metrics::gauge!(CONTROL_REVISION, "edge" => name(edge)).set(revision as f64);
}

/// A revision `edge` refused (bad signature or artifact, invalid topology).
pub(crate) fn control_refused(edge: &str) {
    ::metrics::counter!(CONTROL_REFUSED, "edge" => name(edge)).increment(1);
}

// ---- HTTPS over TCP ---------------------------------------------------------

/// A TCP connection closed on accept because `tcp.max_connections` were open.
/// One streamed response ended (`end`: complete, client_gone,
/// function_error, crashed, timeout, idle, too_large, upstream_reset, lost,
/// shutting_down) after `bytes` bytes.
pub(crate) fn stream_end(edge: &str, function: &str, end: &'static str, bytes: u64) {
    let (e, f) = (name(edge), name(function));
    ::metrics::counter!(STREAM_ENDS, "edge" => e, "function" => f, "end" => end).increment(1);
    ::metrics::counter!(STREAM_BYTES, "edge" => e, "function" => f).increment(bytes);
}

pub(crate) fn tcp_refused(edge: &str) {
    ::metrics::counter!(TCP_REFUSED, "edge" => name(edge)).increment(1);
}

// ---- DNS -------------------------------------------------------------------

/// One DNS query answered by `edge` (`qtype` e.g. "A", `rcode` e.g. "NOERROR").
pub fn dns_query(edge: &str, qtype: &'static str, rcode: &'static str) {
    ::metrics::counter!(DNS_QUERIES, "edge" => name(edge), "qtype" => qtype, "rcode" => rcode)
        .increment(1);
}

/// Sets the DNS query counter to `n` (the DNS front door keeps its own
/// atomics on the query path and exports them at scrape time).
pub(crate) fn dns_queries_total(edge: &str, qtype: &'static str, rcode: &'static str, n: u64) {
    ::metrics::counter!(DNS_QUERIES, "edge" => name(edge), "qtype" => qtype, "rcode" => rcode)
        .absolute(n);
}

/// Sets the answers-by-edge counter to `n` (see `dns_queries_total`).
pub(crate) fn dns_answers_total(edge: &str, function: &str, answered: &str, n: u64) {
    ::metrics::counter!(DNS_ANSWERS, "edge" => name(edge), "function" => name(function), "answer_edge" => name(answered))
        .absolute(n);
}

/// Sets the fallback counter of `edge` to `n` (all functions together).
pub(crate) fn dns_fallback_total(edge: &str, n: u64) {
    ::metrics::counter!(DNS_FALLBACK, "edge" => name(edge), "function" => "all").absolute(n);
}

/// `edge` answered a query for `function` with `answered`, the edge whose
/// addresses it handed out (first = best when several are listed).
pub fn dns_answer(edge: &str, function: &str, answered: &str) {
    ::metrics::counter!(DNS_ANSWERS, "edge" => name(edge), "function" => name(function), "answer_edge" => name(answered))
        .increment(1);
}

/// No healthy, non-draining edge was left: the best one was served anyway.
pub fn dns_fallback(edge: &str, function: &str) {
    ::metrics::counter!(DNS_FALLBACK, "edge" => name(edge), "function" => name(function))
        .increment(1);
}

// ---- invocations and metering ----------------------------------------------

/// One finished invocation accepted by `edge`: counts it by `outcome` (e.g.
/// "ok", "function_error", "timeout", "overloaded") and `path`, and records
/// its latency.
pub fn invocation(
    edge: &str,
    function: &str,
    outcome: &'static str,
    path: Path,
    duration: Duration,
) {
    let (e, f) = (name(edge), name(function));
    let (counter, histogram) = invocation_handles(e, f, outcome, path);
    counter.increment(1);
    histogram.record(duration.as_secs_f64());
}

/// Handles of one (edge, function, outcome, path) series.
type InvocationHandles = (::metrics::Counter, ::metrics::Histogram);

/// The handles of an invocation series, cached: this runs on every
/// `POST /fn`, and building the facade's key (a label list allocation plus
/// a registry lookup) for two series costs ~0.5 µs (`cargo bench --bench
/// metrics`), a cached handle an atomic add. Keys are interned topology
/// names, static outcome strings and the path, so the map is bounded.
/// Before `install` the facade hands out no-op handles: those are not
/// cached.
fn invocation_handles(
    e: &'static str,
    f: &'static str,
    outcome: &'static str,
    path: Path,
) -> InvocationHandles {
    type Key = (usize, usize, usize, usize, Path);
    static CACHE: OnceLock<RwLock<std::collections::HashMap<Key, InvocationHandles>>> =
        OnceLock::new();
    // Interned and static strings: their address and length identify them.
    let key: Key = (
        e.as_ptr() as usize,
        f.as_ptr() as usize,
        outcome.as_ptr() as usize,
        outcome.len(),
        path,
    );
    let build = || {
        (
            ::metrics::counter!(INVOCATIONS, "edge" => e, "function" => f, "outcome" => outcome, "path" => path.as_str()),
            ::metrics::histogram!(INVOCATION_DURATION, "edge" => e, "function" => f, "path" => path.as_str()),
        )
    };
    if HANDLE.get().is_none() {
        return build();
    }
    let cache = CACHE.get_or_init(|| RwLock::new(std::collections::HashMap::new()));
    if let Some(h) = cache.read().ok().and_then(|m| m.get(&key).cloned()) {
        return h;
    }
    let h = build();
    if let Ok(mut m) = cache.write() {
        m.insert(key, h.clone());
    }
    h
}

/// One routed event finished at the edge that accepted it from a client
/// (`entry`: "event" or "route"), by outcome ("ok" or a problem slug).
pub(crate) fn route(edge: &str, outcome: &'static str, duration: Duration) {
    let e = name(edge);
    ::metrics::counter!(ROUTES, "edge" => e, "outcome" => outcome).increment(1);
    ::metrics::histogram!(ROUTE_DURATION, "edge" => e).record(duration.as_secs_f64());
}

/// One route step handled by `edge`: run here, or handed on to a peer.
pub(crate) fn route_step(edge: &str, step: &str, path: Path) {
    ::metrics::counter!(ROUTE_STEPS, "edge" => name(edge), "step" => name(step), "path" => path.as_str())
        .increment(1);
}

/// Metering of one invocation that ran on `edge`'s own pool: invocations,
/// billed milliseconds and memory × billed time (MB·ms; GB-seconds are
/// this / 1024 / 1000). Returns the billed milliseconds.
pub fn meter(edge: &str, function: &str, duration: Duration, memory_mb: u32) -> u64 {
    let billed = billed_ms(duration);
    let (e, f) = (name(edge), name(function));
    ::metrics::counter!(METERING_INVOCATIONS, "edge" => e, "function" => f).increment(1);
    ::metrics::counter!(METERING_BILLED_MS, "edge" => e, "function" => f).increment(billed);
    ::metrics::counter!(METERING_MB_MS, "edge" => e, "function" => f)
        .increment(billed.saturating_mul(u64::from(memory_mb)));
    billed
}

/// Sets the metering counters of one function on `edge` from the
/// executors' running totals (exported at scrape time).
pub(crate) fn meter_totals(
    edge: &str,
    function: &str,
    invocations: u64,
    billed_ms: u64,
    mb_ms: u128,
) {
    let (e, f) = (name(edge), name(function));
    ::metrics::counter!(METERING_INVOCATIONS, "edge" => e, "function" => f).absolute(invocations);
    ::metrics::counter!(METERING_BILLED_MS, "edge" => e, "function" => f).absolute(billed_ms);
    ::metrics::counter!(METERING_MB_MS, "edge" => e, "function" => f)
        .absolute(u64::try_from(mb_ms).unwrap_or(u64::MAX));
}

/// Sets the count of metering log lines `edge` dropped (scrape time).
pub(crate) fn metering_log_dropped(edge: &str, dropped: u64) {
    ::metrics::counter!(METERING_LOG_DROPPED, "edge" => name(edge)).absolute(dropped);
}

// ---- cache -----------------------------------------------------------------

pub fn cache_request(edge: &str, function: &str, result: CacheResult) {
    ::metrics::counter!(CACHE_REQUESTS, "edge" => name(edge), "function" => name(function), "result" => result.as_str())
        .increment(1);
}

/// Sets `edge`'s cache counters from the cache's own totals (exported at
/// scrape time; the cache keeps atomics, not per-function series, so the
/// `function` label is "all").
pub(crate) fn cache_totals(edge: &str, hits: u64, misses: u64, stale: u64, coalesced: u64) {
    let e = name(edge);
    for (result, n) in [
        (CacheResult::Hit, hits),
        (CacheResult::Miss, misses),
        (CacheResult::Stale, stale),
        (CacheResult::Coalesced, coalesced),
    ] {
        ::metrics::counter!(CACHE_REQUESTS, "edge" => e, "function" => "all", "result" => result.as_str())
            .absolute(n);
    }
}

/// Sets `edge`'s eviction counter for `cause` to `n`.
pub(crate) fn cache_evictions_total(edge: &str, cause: &'static str, n: u64) {
    ::metrics::counter!(CACHE_EVICTIONS, "edge" => name(edge), "cause" => cause).absolute(n);
}

/// Bytes currently held by `edge`'s cache.
pub fn cache_bytes(edge: &str, bytes: u64) {
    ::metrics::gauge!(CACHE_BYTES, "edge" => name(edge)).set(bytes as f64);
}

/// `n` entries evicted (`cause`: "size", "expired", "purged", "replaced").
pub fn cache_evictions(edge: &str, cause: &'static str, n: u64) {
    ::metrics::counter!(CACHE_EVICTIONS, "edge" => name(edge), "cause" => cause).increment(n);
}

// ---- executor pools ----------------------------------------------------------

/// The current size of one function's pool on `edge`.
pub fn pool_size(edge: &str, function: &str, workers: u32, busy: u32, queued: u32) {
    let (e, f) = (name(edge), name(function));
    ::metrics::gauge!(POOL_WORKERS, "edge" => e, "function" => f).set(f64::from(workers));
    ::metrics::gauge!(POOL_BUSY, "edge" => e, "function" => f).set(f64::from(busy));
    ::metrics::gauge!(POOL_QUEUED, "edge" => e, "function" => f).set(f64::from(queued));
}

pub fn pool_event(edge: &str, function: &str, event: PoolEvent) {
    ::metrics::counter!(POOL_EVENTS, "edge" => name(edge), "function" => name(function), "event" => event.as_str())
        .increment(1);
}

/// Sets a pool event counter to `n` (from the executors' own totals).
pub(crate) fn pool_events_total(edge: &str, function: &str, event: PoolEvent, n: u64) {
    ::metrics::counter!(POOL_EVENTS, "edge" => name(edge), "function" => name(function), "event" => event.as_str())
        .absolute(n);
}

/// How long an invocation waited for a free worker.
pub fn pool_queue_wait(edge: &str, function: &str, waited: Duration) {
    ::metrics::histogram!(POOL_QUEUE_WAIT, "edge" => name(edge), "function" => name(function))
        .record(waited.as_secs_f64());
}

// ---- the fleet as this edge sees it ------------------------------------------

/// Health and load of `peer` in `edge`'s view (set from the `LiveView` by
/// the admin listener at every scrape).
pub fn peer_state(edge: &str, peer: &str, up: bool, load: f64) {
    let (e, p) = (name(edge), name(peer));
    ::metrics::gauge!(PEER_UP, "edge" => e, "peer" => p).set(if up { 1.0 } else { 0.0 });
    ::metrics::gauge!(PEER_LOAD, "edge" => e, "peer" => p).set(load);
}

/// Smoothed round-trip time from `edge` to `peer` (set by the mesh prober).
pub fn peer_rtt(edge: &str, peer: &str, rtt: Duration) {
    ::metrics::gauge!(PEER_RTT, "edge" => name(edge), "peer" => name(peer)).set(rtt.as_secs_f64());
}

/// This edge's view generation and draining flag, and the build info.
pub(crate) fn edge_state(edge: &str, generation: u64, draining: bool) {
    let e = name(edge);
    ::metrics::gauge!(VIEW_GENERATION, "edge" => e).set(generation as f64);
    ::metrics::gauge!(DRAINING, "edge" => e).set(if draining { 1.0 } else { 0.0 });
    ::metrics::gauge!(BUILD_INFO, "edge" => e, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

// ---- helpers -------------------------------------------------------------------

/// Every metric family with its help text and unit, for HELP lines.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(DNS_QUERIES, "DNS queries answered, by qtype and rcode");
    describe_gauge!(
        CONTROL_REVISION,
        "The control-plane topology revision the edge serves"
    );
    describe_counter!(
        CONTROL_REFUSED,
        "Control-plane revisions the edge refused (signature, artifact hash, validation)"
    );
    describe_counter!(
        TCP_REFUSED,
        "HTTPS-over-TCP connections closed on accept: tcp.max_connections were open"
    );
    describe_counter!(
        DNS_ANSWERS,
        "DNS answers handed out, by function and answered address"
    );
    describe_counter!(
        DNS_FALLBACK,
        "DNS answers served from an unhealthy or draining edge because nothing else was left"
    );
    describe_counter!(
        INVOCATIONS,
        "Invocations accepted, by function, outcome and path (local or forwarded)"
    );
    describe_counter!(
        STREAM_ENDS,
        "Streamed responses by how they ended (complete, client_gone, function_error, crashed, timeout, idle, too_large, upstream_reset, lost, shutting_down)"
    );
    describe_counter!(
        STREAM_BYTES,
        "Bytes of streamed responses this edge passed on"
    );
    describe_counter!(
        ROUTES,
        "Routed events (POST /event, POST /route) finished at their entry edge, by outcome"
    );
    describe_histogram!(
        ROUTE_DURATION,
        Unit::Seconds,
        "End-to-end latency of routed events at their entry edge"
    );
    describe_counter!(
        ROUTE_STEPS,
        "Route steps seen by this edge: run here (local) or handed to a peer (forwarded)"
    );
    describe_histogram!(
        INVOCATION_DURATION,
        Unit::Seconds,
        "Invocation latency as the accepting edge saw it"
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Cache lookups by result (hit, miss, stale, coalesced)"
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held by the response cache");
    describe_counter!(CACHE_EVICTIONS, "Cache entries evicted, by cause");
    describe_gauge!(POOL_WORKERS, "Worker processes of a function's pool");
    describe_gauge!(POOL_BUSY, "Workers running an invocation");
    describe_gauge!(POOL_QUEUED, "Invocations waiting for a worker");
    describe_counter!(
        POOL_EVENTS,
        "Worker lifecycle events (cold_start, crash, kill)"
    );
    describe_histogram!(
        POOL_QUEUE_WAIT,
        Unit::Seconds,
        "Time invocations waited for a free worker"
    );
    describe_gauge!(
        PEER_UP,
        "1 when the peer edge is healthy in this edge's view"
    );
    describe_gauge!(
        PEER_LOAD,
        "Peer load as a share of its capacity, in this edge's view"
    );
    describe_gauge!(
        PEER_RTT,
        Unit::Seconds,
        "Smoothed round-trip time to the peer edge"
    );
    describe_gauge!(
        VIEW_GENERATION,
        "Generation of this edge's view of the fleet"
    );
    describe_gauge!(DRAINING, "1 while this edge is draining");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
    describe_counter!(
        METERING_INVOCATIONS,
        "Metered invocations that ran on this edge"
    );
    describe_counter!(
        METERING_BILLED_MS,
        "Billed milliseconds (rounded up per invocation)"
    );
    describe_counter!(
        METERING_MB_MS,
        "Memory size times billed time, MB*ms (GB-seconds = value / 1024 / 1000)"
    );
    describe_counter!(
        METERING_LOG_DROPPED,
        "Metering log lines dropped because the writer fell behind (the disk stalled)"
    );
}

/// The interned label value for an edge, function or peer name.
fn name(s: &str) -> &'static str {
    static NAMES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| RwLock::new(HashSet::new()));
    if let Ok(set) = names.read() {
        if let Some(&n) = set.get(s) {
            return n;
        }
    }
    let Ok(mut set) = names.write() else {
        return "other";
    };
    if let Some(&n) = set.get(s) {
        return n;
    }
    if set.len() >= MAX_NAMES {
        return "other";
    }
    // Bounded by MAX_NAMES: topology names only, interned for the life of
    // the process so label values need no allocation per event.
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billed_ms_rounds_up_to_whole_milliseconds() {
        for (d, want) in [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_micros(1001), 2),
            (Duration::from_millis(250), 250),
            (Duration::from_secs(3), 3000),
        ] {
            assert_eq!(billed_ms(d), want, "{d:?}");
        }
    }

    #[test]
    fn names_are_interned_once() {
        let a = name("fra-test-intern");
        let b = name(&String::from("fra-test-intern"));
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn rendered_families_carry_edge_labels() {
        let h = install();
        dns_query("unit-edge", "A", "NOERROR");
        meter("unit-edge", "echo", Duration::from_millis(10), 128);
        invocation(
            "unit-edge",
            "echo",
            "ok",
            Path::Local,
            Duration::from_millis(3),
        );
        let text = h.render();
        assert!(
            text.contains(
                r#"fnroute_dns_queries_total{edge="unit-edge",qtype="A",rcode="NOERROR"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"fnroute_metering_memory_mb_milliseconds_total{edge="unit-edge",function="echo"} 1280"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fnroute_invocation_duration_seconds_bucket{edge="unit-edge",function="echo",path="local",le="0.005"} 1"#),
            "{text}"
        );
    }
}
