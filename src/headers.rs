//! Every HTTP header name fnroute reads or writes, defined once. A leaf
//! module: the front doors, the pipeline, dispatch and routing all take
//! their names from here.

use http::HeaderName;

/// Response header naming the edge that handled (or ran) the request.
pub(crate) const EDGE_HEADER: &str = "fnroute-edge";
/// Whether the response cache answered: `hit`, `miss`, `stale` or
/// `coalesced` (only for functions with a cache policy).
pub(crate) const CACHE_HEADER: &str = "fnroute-cache";
/// The request id, on every response; from a peer, also on requests.
pub(crate) const REQUEST_ID_HEADER: &str = "fnroute-request-id";
/// Request header a client may use to shorten the function's deadline.
pub(crate) const TIMEOUT_HEADER: &str = "fnroute-timeout-ms";

// Internal headers: honoured only from authenticated cluster peers and
// never taken from clients.
/// Edges a forwarded request has crossed.
pub(crate) const HOP_HEADER: &str = "fnroute-hop";
/// What the forwarding edge's caller had left, in milliseconds.
pub(crate) const DEADLINE_HEADER: &str = "fnroute-deadline-ms";
/// W3C trace context.
pub(crate) const TRACE_HEADER: &str = "traceparent";

/// Request header with an explicit route stack (`POST /route`), and the
/// remaining stack on edge-to-edge forwards: step names separated by
/// spaces (or commas), next step first, e.g. `edit log process`.
pub(crate) const ROUTE_HEADER: &str = "fnroute-route";
/// Edge-to-edge only: what the route has used of its bounds so far.
pub(crate) const PROGRESS_HEADER: &str = "fnroute-route-progress";
/// Response header: the path taken, `step@edge` per executed step.
pub(crate) const PATH_HEADER: &str = "fnroute-path";
/// Request header choosing `source` (default) or `orchestrated` routing
/// (the entry edge calls every step itself; for comparison benchmarks).
pub(crate) const MODE_HEADER: &str = "fnroute-route-mode";

// The same names as `HeaderName`s: built at compile time, so a response
// neither parses nor allocates them (`&str` names do both, every time).
pub(crate) const EDGE: HeaderName = HeaderName::from_static(EDGE_HEADER);
pub(crate) const CACHE: HeaderName = HeaderName::from_static(CACHE_HEADER);
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
pub(crate) const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
