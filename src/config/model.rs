//! Validated topology: what the rest of fnroute reads. Every value here has
//! passed validation, so consumers never re-check names, ranges or paths.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::geo::Location;

/// One fleet: zone, edges and functions, as loaded from one TOML file.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The file this topology was read from.
    pub(crate) source: PathBuf,
    /// The zone, lower case, fully qualified (ends with a dot).
    pub zone: String,
    pub geo_db: PathBuf,
    pub default_location: Location,
    /// Where generated state (development certificates) lives.
    pub state_dir: PathBuf,
    /// Bearer token file for the admin listener's mutating endpoints.
    pub admin_token_file: Option<PathBuf>,
    pub dns: DnsSettings,
    pub quic: QuicSettings,
    pub tcp: TcpSettings,
    pub tls: Option<TlsFiles>,
    pub(crate) executors: ExecutorSettings,
    /// The edge mesh (cluster PKI, probing, forwarding); None: every edge
    /// stands alone (no probing, no forwarding).
    pub mesh: Option<MeshSettings>,
    pub edges: Vec<Edge>,
    pub functions: Vec<Function>,
    /// Function source routing: bounds, static routes, event types.
    pub routing: Routing,
    /// Lower-case function name -> index in `functions`, built with the
    /// topology (a lookup per request, not a scan).
    pub(crate) function_index: std::collections::HashMap<FunctionName, usize>,
}

/// `[routing]`, `[[route]]` and `[[event]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub bounds: RouteBounds,
    /// Rough step name -> the steps it expands to (first runs first).
    pub routes: BTreeMap<String, Vec<String>>,
    /// Event type -> its entry steps.
    pub events: BTreeMap<String, Vec<String>>,
}

/// Limits on one routed event, each enforced with a problem response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteBounds {
    /// Steps executed (functions run) over the whole route.
    pub max_steps: u32,
    /// Expansions (static routes and gatekeeper pushes) over the whole route.
    pub max_expansions: u32,
    /// Edge-to-edge forwards over the whole route.
    pub max_hops: u32,
    /// Steps on the stack at any time.
    pub max_stack_depth: u32,
    /// Deadline of a routed event unless the client asks for less.
    pub(crate) timeout: Duration,
}

impl Default for RouteBounds {
    fn default() -> Self {
        Self {
            max_steps: 64,
            max_expansions: 16,
            max_hops: 8,
            max_stack_depth: 32,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    pub ttl: u32,
    pub(crate) answers: usize,
    /// Share of `capacity` above which an edge spills over to the next.
    pub(crate) load_threshold: f64,
    pub serial: u32,
    pub rate_limit: Option<RateLimit>,
    pub udp_sockets: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub responses_per_second: f64,
    pub burst: f64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub slip: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuicSettings {
    pub(crate) max_payload_bytes: u64,
    pub(crate) max_connections: u32,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: u32,
    pub(crate) body_read_timeout: Duration,
    pub(crate) enable_0rtt: bool,
    pub(crate) udp_buffer_bytes: u32,
}

/// `[tcp]`: limits of the HTTPS-over-TCP front door.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpSettings {
    /// Open connections at once; more are closed on accept.
    pub(crate) max_connections: u32,
    /// HTTP/2 streams at once per connection.
    pub(crate) max_concurrent_streams: u32,
    /// Header fields per request (HTTP/1.1; HTTP/2 bounds their bytes).
    pub(crate) max_headers: u32,
    /// A client must have sent a request's whole head within this.
    pub(crate) header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub(crate) idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[mesh]`: the cluster CA, per-edge certificates and probing knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSettings {
    /// PEM file of the cluster CA.
    pub(crate) ca: PathBuf,
    /// Folder holding `<edge>.pem` and `<edge>-key.pem` per edge.
    pub(crate) cert_dir: PathBuf,
    pub probe_interval: Duration,
    /// Consecutive failed probes before a peer is down.
    pub(crate) fall: u32,
    /// Consecutive good probes before a down peer is up again.
    pub(crate) rise: u32,
    /// Most edges an invocation may be forwarded through.
    pub(crate) max_hops: u32,
    /// Consecutive failed forwards before a peer is ejected.
    pub(crate) eject_after: u32,
    /// SIMULATION ONLY (0 = off): each forward waits a round trip of this
    /// many ms per 1000 km of great-circle distance between the edges.
    pub simulated_rtt_ms_per_1000km: f64,
}

impl MeshSettings {
    /// The certificate chain file of `edge`.
    pub(crate) fn cert_file(&self, edge: &str) -> PathBuf {
        self.cert_dir.join(format!("{edge}.pem"))
    }

    /// The private key file of `edge`.
    pub(crate) fn key_file(&self, edge: &str) -> PathBuf {
        self.cert_dir.join(format!("{edge}-key.pem"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutorSettings {
    pub(crate) keep_warm: Duration,
    pub(crate) queue: u32,
    pub(crate) queue_timeout: Duration,
    /// One JSON line per metered invocation is appended here (for billing
    /// pipelines); `None` = off.
    pub(crate) metering_log: Option<PathBuf>,
}

/// Index of an edge in `Topology::edges`.
pub(crate) type EdgeId = usize;

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub name: String,
    pub(crate) location: Location,
    pub addresses: Vec<IpAddr>,
    pub dns_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// DNS over QUIC (RFC 9250, ALPN `doq`) for the same zone, with the
    /// front door's certificate; `None` = off.
    pub doq_listen: Option<SocketAddr>,
    /// HTTPS over TCP (HTTP/1.1 and HTTP/2 by ALPN), the same API as
    /// `quic_listen`; `None` = off. May share `quic_listen`'s port.
    pub tcp_listen: Option<SocketAddr>,
    pub capacity: u32,
    /// Byte bound of the edge's response cache.
    pub cache_bytes: u64,
    /// Removed by a live reload. A running process keeps the slot so that
    /// `EdgeId`s never move; nothing hosts on, answers with, forwards to
    /// or probes a retired edge. Never set by loading a file.
    pub retired: bool,
}

/// A function's name: a DNS label in lower case, made once (when the
/// topology is validated, or when a request names a function the topology
/// does not have). Cloning shares it: a request passes its function's name
/// to the cache key, the invocation, the metering record and a forward
/// without copying it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(std::sync::Arc<str>);

impl FunctionName {
    /// `name` in lower case (names are case-insensitive everywhere).
    pub fn new(name: &str) -> Self {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Self(name.to_ascii_lowercase().into())
        } else {
            Self(name.into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for FunctionName {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl std::ops::Deref for FunctionName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for FunctionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for FunctionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for FunctionName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for FunctionName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl serde::Serialize for FunctionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// `[[function]] interface`: what a function receives and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    /// The request body is the event; the result is the response body.
    #[default]
    Event,
    /// A Lambda function URL event (payload format 2.0) in, and
    /// `{statusCode, headers, cookies, body, isBase64Encoded}` out.
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// A DNS label, lower case.
    pub name: FunctionName,
    /// The edges hosting it, in topology order.
    pub edges: Vec<EdgeId>,
    pub executor: Executor,
    pub(crate) memory_mb: u32,
    pub(crate) timeout: Duration,
    pub concurrency_min: u32,
    pub concurrency_max: u32,
    pub cache: Option<CachePolicy>,
    pub idempotent: bool,
    /// Output is a routing envelope (`{"push": [...], "event": ...}`).
    pub(crate) gatekeeper: bool,
    /// What the function receives and returns.
    pub interface: Interface,
    /// CORS of its function URL: preflights answered at the edge.
    pub(crate) cors: Option<std::sync::Arc<super::cors::CorsPolicy>>,
    /// `bundle`: the folder shipped with the function (also its working
    /// directory, `executor.workdir`).
    pub bundle: Option<PathBuf>,
    /// `allow_outbound` (wasm): `host:port`s, lower case, that its outgoing
    /// HTTP requests may reach; empty: none.
    pub(crate) allow_outbound: Vec<String>,
    /// `streaming = true`: its responses stream (with these limits).
    pub(crate) streaming: Option<StreamSettings>,
    /// `config::function_version` of this definition, computed once when
    /// the topology is loaded (a SHA-256 over the definition: too dear to
    /// redo on every cached request). Part of every cache key.
    pub(crate) cache_version: u64,
}

/// The limits of a streaming function's responses (besides `timeout_ms`,
/// which covers the whole stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamSettings {
    /// `stream_idle_ms`: the longest gap between two chunks.
    pub(crate) idle: Duration,
    /// `max_stream_bytes`: the most bytes of one response.
    pub(crate) max_bytes: u64,
}

impl StreamSettings {
    /// 30 s between chunks (SSE keep-alives are usually 15 s).
    pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(30);
    /// 200 MiB, as AWS Lambda's streamed responses.
    pub(crate) const DEFAULT_MAX_BYTES: u64 = 200 * 1024 * 1024;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutorKind {
    /// Worker processes speaking the AWS Lambda Runtime API.
    Lambda,
    /// One process per invocation: event on stdin, result on stdout.
    Command,
    /// A `wasi:http/proxy` component, a fresh instance per invocation,
    /// in-process on Wasmtime.
    Wasm,
}

/// A `wasm` executor's component file, checked and hashed when the
/// topology is loaded: a reload that changes its bytes changes the
/// function's definition (a new pool, a new cache version); one that keeps
/// them keeps both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Absolute path of the `.wasm` file.
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Executor {
    pub(crate) kind: ExecutorKind,
    /// argv; `command[0]` is resolved (absolute path). Empty for `wasm`.
    pub command: Vec<String>,
    /// The component of a `wasm` executor.
    pub component: Option<Component>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) handler: Option<String>,
    /// Working directory of the process: the function's `bundle`, else
    /// the topology file's folder.
    pub(crate) workdir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub vary: Vec<String>,
    /// Cache function errors this long (negative caching); `None`: never.
    pub negative_ttl: Option<Duration>,
}

impl Topology {
    pub fn edge_id(&self, name: &str) -> Option<EdgeId> {
        self.edges.iter().position(|e| e.name == name)
    }

    /// The function named `name` (any case).
    pub fn function(&self, name: &str) -> Option<&Function> {
        let hit = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.function_index.get(name.to_ascii_lowercase().as_str())
        } else {
            self.function_index.get(name)
        };
        // The index is built with the topology, which nothing changes
        // after validation.
        hit.and_then(|&i| self.functions.get(i))
    }

    pub(crate) fn index_functions(
        functions: &[Function],
    ) -> std::collections::HashMap<FunctionName, usize> {
        functions
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect()
    }
}

impl Function {
    pub(crate) fn hosted_on(&self, edge: EdgeId) -> bool {
        self.edges.contains(&edge)
    }
}
