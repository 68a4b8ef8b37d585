//! Serde shapes of the topology TOML: the operator-facing contract.
//!
//! Every table denies unknown keys, so a typo is an error rather than a
//! silently ignored setting. Fields that validation talks about are
//! `Spanned`, so messages can point at the file, line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    pub(crate) zone: Spanned<String>,
    pub(crate) geo_db: Spanned<String>,
    pub(crate) default_location: Spanned<RawLocation>,
    #[serde(default)]
    pub(crate) state_dir: Option<Spanned<String>>,
    /// File holding the bearer token of the admin listener's mutating
    /// endpoints (`POST /reload`).
    #[serde(default)]
    pub(crate) admin_token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) dns: RawDns,
    #[serde(default)]
    pub(crate) quic: RawQuic,
    #[serde(default)]
    pub(crate) tcp: RawTcp,
    #[serde(default)]
    pub(crate) tls: Option<RawTls>,
    #[serde(default)]
    pub(crate) executors: RawExecutors,
    #[serde(default)]
    pub(crate) mesh: Option<RawMesh>,
    #[serde(default)]
    pub(crate) edge: Vec<Spanned<RawEdge>>,
    #[serde(default)]
    pub(crate) function: Vec<Spanned<RawFunction>>,
    /// Bounds of function source routing.
    #[serde(default)]
    pub(crate) routing: RawRouting,
    /// Static expansions of rough steps.
    #[serde(default)]
    pub(crate) route: Vec<Spanned<RawRoute>>,
    /// Event types and their entry steps.
    #[serde(default)]
    pub(crate) event: Vec<Spanned<RawEvent>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouting {
    pub(crate) max_steps: Option<Spanned<u32>>,
    pub(crate) max_expansions: Option<Spanned<u32>>,
    pub(crate) max_hops: Option<Spanned<u32>>,
    pub(crate) max_stack_depth: Option<Spanned<u32>>,
    pub(crate) timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Spanned<String>,
    pub(crate) steps: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvent {
    #[serde(rename = "type")]
    pub(crate) kind: Spanned<String>,
    pub(crate) entry: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocation {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub(crate) ttl: Option<Spanned<u32>>,
    pub(crate) answers: Option<Spanned<u32>>,
    /// Share of an edge's capacity above which it spills over to the next.
    pub(crate) load_threshold: Option<Spanned<f64>>,
    /// SOA serial; defaults to the config's modification time.
    pub(crate) serial: Option<u32>,
    pub(crate) rate_limit: Option<Spanned<RawRateLimit>>,
    /// UDP sockets (SO_REUSEPORT) per DNS listener.
    pub(crate) udp_sockets: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) responses_per_second: f64,
    pub(crate) burst: Option<f64>,
    pub(crate) ipv4_prefix: Option<u8>,
    pub(crate) ipv6_prefix: Option<u8>,
    /// Every n-th dropped response is sent truncated instead ("slip").
    pub(crate) slip: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuic {
    pub(crate) max_payload_bytes: Option<Spanned<u64>>,
    pub(crate) max_connections: Option<u32>,
    pub(crate) max_streams_per_connection: Option<u32>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_header_bytes: Option<u32>,
    pub(crate) body_read_timeout_ms: Option<u64>,
    pub(crate) enable_0rtt: Option<bool>,
    pub(crate) udp_buffer_bytes: Option<u32>,
}

/// `[tcp]`: limits of the HTTPS-over-TCP front door (`tcp_listen`). The
/// payload limit, body read timeout and header bytes are `[quic]`'s: one
/// request pipeline, one set of request limits.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcp {
    pub(crate) max_connections: Option<Spanned<u32>>,
    pub(crate) max_concurrent_streams: Option<Spanned<u32>>,
    pub(crate) max_headers: Option<Spanned<u32>>,
    pub(crate) header_read_timeout_ms: Option<Spanned<u64>>,
    pub(crate) idle_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMesh {
    pub(crate) ca: Spanned<String>,
    pub(crate) cert_dir: Spanned<String>,
    pub(crate) probe_interval_ms: Option<Spanned<u64>>,
    pub(crate) fall: Option<Spanned<u32>>,
    pub(crate) rise: Option<Spanned<u32>>,
    pub(crate) max_hops: Option<Spanned<u32>>,
    pub(crate) eject_after: Option<Spanned<u32>>,
    /// SIMULATION ONLY: delay every forward by a round trip of this many
    /// milliseconds per 1000 km between the two edges (WAN emulation for
    /// `--all` runs and benchmarks on loopback).
    pub(crate) simulated_rtt_ms_per_1000km: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecutors {
    /// How long an idle worker is kept warm before it is stopped.
    pub(crate) keep_warm_ms: Option<u64>,
    /// Invocations that may wait for a worker, per function and edge.
    pub(crate) queue: Option<u32>,
    /// How long an invocation may wait in the queue before 503.
    pub(crate) queue_timeout_ms: Option<u64>,
    /// A file that gets one JSON line per metered invocation.
    pub(crate) metering_log: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEdge {
    pub(crate) name: Spanned<String>,
    pub(crate) location: Spanned<RawLocation>,
    pub(crate) addresses: Spanned<Vec<Spanned<String>>>,
    pub(crate) dns_listen: Spanned<String>,
    pub(crate) quic_listen: Spanned<String>,
    pub(crate) admin_listen: Option<Spanned<String>>,
    /// DNS over QUIC (RFC 9250); off when absent.
    pub(crate) doq_listen: Option<Spanned<String>>,
    /// HTTPS over TCP (HTTP/1.1 and HTTP/2); off when absent.
    pub(crate) tcp_listen: Option<Spanned<String>>,
    pub(crate) capacity: Option<Spanned<u32>>,
    /// Bytes of the edge's response cache (entries, keys and headers).
    pub(crate) cache_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    pub(crate) name: Spanned<String>,
    pub(crate) edges: Option<Vec<Spanned<String>>>,
    pub(crate) executor: Spanned<RawExecutor>,
    pub(crate) memory_mb: Option<Spanned<u32>>,
    pub(crate) timeout_ms: Option<Spanned<u64>>,
    pub(crate) concurrency: Option<Spanned<RawConcurrency>>,
    pub(crate) cache: Option<Spanned<RawCache>>,
    #[serde(default)]
    pub(crate) idempotent: bool,
    /// Its output is a routing envelope: steps to push in its place.
    #[serde(default)]
    pub(crate) gatekeeper: bool,
    /// `"event"` (default) or `"http"` (function URL events and results).
    pub(crate) interface: Option<Spanned<String>>,
    /// CORS of its function URL.
    pub(crate) cors: Option<Spanned<super::cors::CorsPolicy>>,
    /// A folder (relative to the file) that is the function's working
    /// directory and travels with it through the control plane.
    pub(crate) bundle: Option<Spanned<String>>,
    /// `wasm` only: the `host:port`s its outgoing HTTP requests may reach.
    pub(crate) allow_outbound: Option<Spanned<Vec<Spanned<String>>>>,
    /// Stream the response as the function produces it.
    pub(crate) streaming: Option<Spanned<bool>>,
    /// Streaming only: the longest gap between chunks, in milliseconds.
    pub(crate) stream_idle_ms: Option<Spanned<u64>>,
    /// Streaming only: the most bytes one response may stream.
    pub(crate) max_stream_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecutor {
    pub(crate) kind: Spanned<String>,
    /// argv of `lambda` and `command` executors.
    pub(crate) command: Option<Spanned<Vec<String>>>,
    /// The `wasi:http` component of a `wasm` executor (relative to the file).
    pub(crate) component: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// `_HANDLER` for Lambda runtimes that need one.
    pub(crate) handler: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    pub(crate) min: Option<u32>,
    pub(crate) max: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub(crate) ttl_s: u64,
    pub(crate) stale_while_revalidate_s: Option<u64>,
    pub(crate) stale_if_error_s: Option<u64>,
    /// Cache function errors this long (negative caching; off if absent).
    pub(crate) negative_ttl_s: Option<u64>,
    #[serde(default)]
    pub(crate) vary: Vec<String>,
}
