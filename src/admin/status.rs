//! The `GET /status` document: what one edge knows about itself and the
//! fleet. Built from the topology, the current `View` and the prober's
//! last round trips by a pure function; fields without a source (RTT to
//! this edge itself, to a peer never probed successfully, or without a
//! mesh; pool sizes until executors report them) are `null`, never
//! invented.
//!
//! The same types deserialize the document in `fnroute status`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{EdgeId, ExecutorKind, Topology};
use crate::placement::{classify, Class, View};

/// The whole `/status` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The edge answering.
    pub node: NodeStatus,
    pub zone: String,
    /// The answering edge's view of the fleet.
    pub view: ViewStatus,
    /// Every edge of the topology, in topology order.
    pub edges: Vec<EdgeStatus>,
    /// Every function of the topology, in topology order.
    pub functions: Vec<FunctionStatus>,
    /// With `--control`: the revision this edge serves, since when, and
    /// the newest one it refused and why (`<state_dir>/control/applied.json`,
    /// which the control-plane agent keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    pub version: String,
    pub(crate) uptime_s: f64,
    pub draining: bool,
    pub(crate) health: Health,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewStatus {
    pub generation: u64,
    /// Share of capacity above which an edge spills over to the next.
    pub(crate) load_threshold: f64,
}

/// Health of an edge as the status page colours it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Healthy, below the load threshold (green).
    Healthy,
    /// Healthy but above the load threshold (amber).
    OverThreshold,
    /// Healthy but at or above capacity (amber).
    Saturated,
    /// Finishing in-flight work, taking nothing new (amber).
    Draining,
    /// Failed its health checks (red).
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::OverThreshold => "over-threshold",
            Self::Saturated => "saturated",
            Self::Draining => "draining",
            Self::Down => "down",
        }
    }
}

impl From<Class> for Health {
    fn from(c: Class) -> Self {
        match c {
            Class::Preferred => Self::Healthy,
            Class::OverThreshold => Self::OverThreshold,
            Class::Saturated => Self::Saturated,
            Class::Draining => Self::Draining,
            Class::Unhealthy => Self::Down,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeStatus {
    pub name: String,
    /// True for the edge answering this request.
    #[serde(rename = "self")]
    pub is_self: bool,
    pub location: LatLon,
    pub addresses: Vec<String>,
    pub capacity: u32,
    pub health: Health,
    pub(crate) healthy: bool,
    pub(crate) draining: bool,
    /// In-flight invocations as a share of capacity.
    pub(crate) load: f64,
    /// Round trip of this edge's last successful probe of that edge
    /// (`GET /health` over the pooled mesh connection), in milliseconds.
    /// Null for this edge itself, without a mesh, and until a probe
    /// succeeds; kept while the peer is down (`health` says so).
    pub rtt_ms: Option<f64>,
    /// Functions hosted there.
    pub functions: Vec<String>,
}

/// Coordinates in degrees.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionStatus {
    pub name: String,
    pub(crate) executor: String,
    pub(crate) memory_mb: u32,
    pub(crate) timeout_ms: u64,
    pub(crate) concurrency_min: u32,
    pub concurrency_max: u32,
    /// The edges hosting it.
    pub edges: Vec<String>,
    /// Pool of this function on each edge this process serves, keyed by
    /// edge name; empty when none of them hosts it.
    pub pools: std::collections::BTreeMap<String, PoolStatus>,
}

/// Live numbers of one pool; null until the executor reports them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStatus {
    pub workers: Option<u32>,
    pub busy: Option<u32>,
    pub queued: Option<u32>,
}

/// Where live pool numbers come from (the executors, once they expose
/// them). `None` means unknown.
pub trait PoolStats: Send + Sync {
    fn pool(&self, edge: EdgeId, function: &str) -> Option<PoolStatus>;
}

/// Builds the document for `edge`. Pure: the caller reads the clock, the
/// view, the pools and `rtt`, the last measured round trip to each edge
/// indexed by `EdgeId` (empty without a mesh; `edge`'s own slot is
/// ignored).
/// The control-plane agent's report for this edge, if it runs under one.
fn control_report(topology: &Topology) -> Option<serde_json::Value> {
    let path = topology.state_dir.join("control").join("applied.json");
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn build(
    topology: &Topology,
    view: &View,
    edge: EdgeId,
    uptime_s: f64,
    pool_stats: Option<&dyn PoolStats>,
    rtt: &[Option<Duration>],
) -> Status {
    let edge_name = |i: EdgeId| {
        topology
            .edges
            .get(i)
            .map(|e| e.name.clone())
            .unwrap_or_else(|| "?".into())
    };
    let state_of = |i: EdgeId| view.edges.get(i).cloned().unwrap_or_default();
    let me = state_of(edge);
    let edges = topology
        .edges
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.retired)
        .map(|(i, e)| {
            let s = state_of(i);
            EdgeStatus {
                name: e.name.clone(),
                is_self: i == edge,
                location: LatLon {
                    lat: e.location.lat,
                    lon: e.location.lon,
                },
                addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                capacity: e.capacity,
                health: classify(&s, view.load_threshold).into(),
                healthy: s.healthy,
                draining: s.draining,
                load: s.load,
                rtt_ms: rtt
                    .get(i)
                    .copied()
                    .flatten()
                    .filter(|_| i != edge)
                    .map(|d| d.as_micros() as f64 / 1000.0),
                functions: topology
                    .functions
                    .iter()
                    .filter(|f| f.hosted_on(i))
                    .map(|f| f.name.to_string())
                    .collect(),
            }
        })
        .collect();
    let functions = topology
        .functions
        .iter()
        .map(|f| {
            let mut pools = std::collections::BTreeMap::new();
            if f.hosted_on(edge) {
                let p = pool_stats
                    .and_then(|p| p.pool(edge, &f.name))
                    .unwrap_or_default();
                pools.insert(edge_name(edge), p);
            }
            FunctionStatus {
                name: f.name.to_string(),
                executor: match f.executor.kind {
                    ExecutorKind::Lambda => "lambda",
                    ExecutorKind::Command => "command",
                    ExecutorKind::Wasm => "wasm",
                }
                .into(),
                memory_mb: f.memory_mb,
                timeout_ms: u64::try_from(f.timeout.as_millis()).unwrap_or(u64::MAX),
                concurrency_min: f.concurrency_min,
                concurrency_max: f.concurrency_max,
                edges: f.edges.iter().map(|&i| edge_name(i)).collect(),
                pools,
            }
        })
        .collect();
    Status {
        node: NodeStatus {
            name: edge_name(edge),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s,
            draining: me.draining,
            health: classify(&me, view.load_threshold).into(),
        },
        zone: topology.zone.clone(),
        view: ViewStatus {
            generation: view.generation,
            load_threshold: view.load_threshold,
        },
        edges,
        functions,
        control: control_report(topology),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn rtt_is_reported_for_measured_peers_only() {
        let text = r#"
zone = "fn.test."
geo_db = "Cargo.toml"
default_location = { lat = 50.11, lon = 8.68 }
[[edge]]
name = "fra"
location = { lat = 50.11, lon = 8.68 }
addresses = ["127.0.0.11"]
dns_listen = "127.0.0.11:5300"
quic_listen = "127.0.0.11:4433"
[[edge]]
name = "nyc"
location = { lat = 40.71, lon = -74.01 }
addresses = ["127.0.0.12"]
dns_listen = "127.0.0.12:5300"
quic_listen = "127.0.0.12:4433"
[[edge]]
name = "sin"
location = { lat = 1.35, lon = 103.82 }
addresses = ["127.0.0.13"]
dns_listen = "127.0.0.13:5300"
quic_listen = "127.0.0.13:4433"
[[function]]
name = "echo"
executor = { kind = "command", command = ["cat"] }
"#;
        let topo = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        let view = View::from_topology(Arc::new(topo), 1);
        let rtt = |s: &Status| s.edges.iter().map(|e| e.rtt_ms).collect::<Vec<_>>();
        // Self is null even with a value in its slot; a never-probed peer
        // is null; a measured one is in ms (µs precision).
        let measured = [
            Some(Duration::from_millis(3)),
            Some(Duration::from_micros(38_250)),
            None,
        ];
        let s = build(&view.topology, &view, 0, 1.0, None, &measured);
        assert_eq!(rtt(&s), [None, Some(38.25), None]);
        let s = build(&view.topology, &view, 2, 1.0, None, &measured);
        assert_eq!(rtt(&s), [Some(3.0), Some(38.25), None]);
        // No mesh: nothing measured.
        let s = build(&view.topology, &view, 1, 1.0, None, &[]);
        assert_eq!(rtt(&s), [None, None, None]);
    }
}
