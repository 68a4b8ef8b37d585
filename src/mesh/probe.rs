//! The active prober: every `probe_interval` this edge asks every peer for
//! `GET /health` over the pooled mTLS QUIC connection, records the round
//! trip, runs the fall/rise hysteresis and publishes a new view.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{HealthReport, LiveView, LocalLoad, Mesh, ViewSource};
use crate::mesh::transport::Request;
use crate::placement::EdgeState;

/// All-pairs active probing (O(n²) over the fleet; see
/// docs/ARCHITECTURE.md for the gossip source that replaces it at scale).
pub(crate) struct Prober {
    mesh: Arc<Mesh>,
    exec: Arc<dyn LocalLoad>,
    /// What the last round observed per edge (starts as the static view:
    /// all up, idle).
    seen: Mutex<Vec<EdgeState>>,
}

impl Prober {
    pub(crate) fn new(mesh: Arc<Mesh>, exec: Arc<dyn LocalLoad>, edges: usize) -> Self {
        Self {
            mesh,
            exec,
            seen: Mutex::new(vec![EdgeState::default(); edges]),
        }
    }
}

/// Shortest probe timeout: below this a busy machine's scheduling jitter
/// alone would fail probes.
pub(crate) const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(50);
/// Longest probe timeout: a peer that cannot answer `/health` (from
/// memory) within this is not serving well, whatever the interval.
pub(crate) const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// How long one probe may take: the interval, clamped to
/// `PROBE_TIMEOUT_MIN..=PROBE_TIMEOUT_MAX`.
///
/// A round waits for all its probes, so with a timeout of one interval an
/// unanswered probe (a dead or stopped peer: no ICMP reaches quinn, every
/// probe fails by its timeout) is recorded as a failure when the next tick
/// is due, and the next round starts on time. Hence the detection bound
/// (docs/performance.md "Failover"): a peer that dies at t is marked down,
/// and leaves DNS answers, by
/// `t + fall × max(interval, timeout) + timeout`, which is
/// `t + (fall + 1) × interval` for intervals from 50 ms to 5 s: up to one
/// interval until the first probe that can fail (the previous one may have
/// just succeeded), `fall` failed probes one interval apart, the last one
/// failing at its timeout. See `detection_bound`.
pub(crate) fn probe_timeout(interval: Duration) -> Duration {
    interval.clamp(PROBE_TIMEOUT_MIN, PROBE_TIMEOUT_MAX)
}

/// The longest time from a peer's death to its leaving the view (and DNS
/// answers) with this `interval` and `fall`; see `probe_timeout`.
pub fn detection_bound(interval: Duration, fall: u32) -> Duration {
    let timeout = probe_timeout(interval);
    interval.max(timeout) * fall + timeout
}

#[async_trait::async_trait]
impl ViewSource for Prober {
    async fn run(self: Arc<Self>, view: Arc<LiveView>, token: CancellationToken) {
        let span = tracing::info_span!("prober", edge = %self.mesh.edge_name);
        async move {
            let interval = self.mesh.settings.probe_interval;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut probes = tokio::task::JoinSet::new();
                for peer in self.mesh.peer_ids() {
                    let mesh = self.mesh.clone();
                    probes.spawn(async move { (peer, probe(&mesh, peer, interval).await) });
                }
                let mut results = Vec::new();
                while let Some(r) = probes.join_next().await {
                    if let Ok(r) = r {
                        results.push(r);
                    }
                }
                for (peer, result) in results {
                    self.mesh.record_probe(peer, result);
                }
                self.publish(&view);
            }
        }
        .instrument(span)
        .await
    }
}

impl Prober {
    /// Publishes the view: peers from their probe state, this edge from
    /// its executors (draining is sticky once set).
    fn publish(&self, view: &LiveView) {
        let me = self.mesh.edge;
        let current = view.snapshot();
        let observed: Vec<EdgeState> = (0..current.edges.len())
            .map(|id| {
                if current.topology.edges.get(id).is_some_and(|e| e.retired) {
                    // Removed by a reload: never a candidate again.
                    EdgeState {
                        healthy: false,
                        draining: true,
                        load: 0.0,
                    }
                } else if id == me {
                    EdgeState {
                        healthy: true,
                        draining: self.exec.is_draining(),
                        load: self.exec.load(),
                    }
                } else {
                    self.mesh.peer_state(id).unwrap_or_default()
                }
            })
            .collect();
        // Publish only what changed since the last observation, so other
        // writers of the view (shutdown's draining flag, operators) are not
        // overwritten by an unchanged probe result; no change, no new
        // generation.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<usize> = (0..observed.len())
            .filter(|&id| seen.get(id) != observed.get(id))
            .collect();
        *seen = observed.clone();
        drop(seen);
        if changed.is_empty() {
            return;
        }
        view.update(|v| {
            let mut next = v.clone();
            for &id in &changed {
                let (Some(state), Some(obs)) = (next.edges.get_mut(id), observed.get(id)) else {
                    continue;
                };
                if id == me {
                    state.load = obs.load;
                    state.draining |= obs.draining;
                } else {
                    *state = obs.clone();
                }
            }
            next
        });
        let v = view.load();
        crate::metrics::edge_state(
            &self.mesh.edge_name,
            v.generation,
            v.edges.get(me).is_some_and(|s| s.draining),
        );
    }
}

/// Why a probe of a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connecting: {0}")]
    Connect(#[source] crate::mesh::transport::ClientError),
    #[error("sending: {0}")]
    Send(#[source] crate::mesh::transport::ClientError),
    #[error("no health answer within {0:?}")]
    NoAnswer(Duration),
    #[error("health answered {0}")]
    Status(u16),
    #[error("bad health document: {0}")]
    Document(#[source] serde_json::Error),
}

/// One probe: `GET /health`, bounded by `probe_timeout`.
async fn probe(
    mesh: &Mesh,
    peer: usize,
    interval: Duration,
) -> Result<(HealthReport, Duration), ProbeError> {
    let limit = probe_timeout(interval);
    let deadline = Instant::now() + limit;
    let conn = tokio::time::timeout_at(deadline, mesh.connection(peer))
        .await
        .map_err(|_| ProbeError::ConnectTimeout(limit))?
        .map_err(ProbeError::Connect)?;
    let req = Request {
        method: http::Method::GET,
        path: "/health".into(),
        headers: Vec::new(),
        chunks: Vec::new(),
        content_length: None,
        chunk_delay: None,
    };
    let started = Instant::now();
    let reply = match tokio::time::timeout_at(deadline, conn.send(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            mesh.drop_connection(peer, &conn);
            return Err(ProbeError::Send(e));
        }
        Err(_) => return Err(ProbeError::NoAnswer(limit)),
    };
    let rtt = started.elapsed();
    if reply.status != 200 {
        return Err(ProbeError::Status(reply.status));
    }
    let report: HealthReport = serde_json::from_slice(&reply.body).map_err(ProbeError::Document)?;
    Ok((report, rtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_the_interval_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(probe_timeout(ms(100)), ms(100));
        assert_eq!(probe_timeout(ms(1000)), ms(1000));
        assert_eq!(probe_timeout(ms(10)), ms(50));
        assert_eq!(probe_timeout(ms(60_000)), ms(5000));
        // (fall + 1) x interval in the usual range.
        assert_eq!(detection_bound(ms(100), 3), ms(400));
        assert_eq!(detection_bound(ms(1000), 3), ms(4000));
        // Outside it: rounds take the timeout, or the timeout is capped.
        assert_eq!(detection_bound(ms(10), 3), ms(200));
        assert_eq!(detection_bound(ms(60_000), 3), ms(185_000));
    }
}
