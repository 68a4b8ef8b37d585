//! Where an invocation runs: locally, or on the best peer.
//!
//! The pure building blocks take `now` and do no I/O: peak-EWMA and
//! power-of-two choices (`mesh::balance`), the retry budget (`budget`) and
//! passive outlier ejection (`mesh::eject`; both kept per peer by the mesh). `Dispatcher` combines them with the
//! live view and the mesh's pooled peer connections: candidate choice,
//! forwarding with hop count and remaining deadline, retries of idempotent
//! functions on another edge, and ejection of failing peers.

pub(crate) mod budget;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::{EdgeId, Function};
use crate::exec::Executors;
use crate::mesh::balance;
use crate::mesh::eject::EjectionPolicy;
use crate::mesh::transport::{ClientError, Reply, Request};
use crate::mesh::{LiveView, Mesh};
use crate::placement::{self, Class};
use budget::RetryBudget;

use crate::headers::{DEADLINE_HEADER, HOP_HEADER, REQUEST_ID_HEADER, TRACE_HEADER};

/// Why an invocation could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    #[error("no healthy edge hosts function {0:?}")]
    NoEdge(crate::config::FunctionName),
    #[error("hop limit of {0} reached")]
    HopLimit(u32),
    #[error("deadline passed while forwarding")]
    Deadline,
    #[error("forwarding to {peer} failed: {cause}")]
    Failed {
        peer: String,
        #[source]
        cause: AttemptError,
    },
}

/// Why one forwarding attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("peer is ejected")]
    Ejected,
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("peer answered 503")]
    Unavailable,
    /// The mesh transport's error (shared: an attempt's error is kept as
    /// the last one while other peers are tried).
    #[error(transparent)]
    Transport(Arc<ClientError>),
}

impl AttemptError {
    /// Whether the request may have reached the peer (so only an
    /// idempotent function may be sent again elsewhere).
    pub(crate) fn maybe_sent(&self) -> bool {
        match self {
            AttemptError::Ejected | AttemptError::ConnectTimeout | AttemptError::Closed => false,
            AttemptError::Timeout | AttemptError::Unavailable => true,
            AttemptError::Transport(e) => !matches!(**e, ClientError::Connect { .. }),
        }
    }
}

/// One invocation to forward.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub(crate) function: crate::config::FunctionName,
    pub(crate) payload: Bytes,
    pub(crate) deadline: Instant,
    /// Hops this request has made so far (0 from a client).
    pub(crate) hops: u32,
    pub(crate) request_id: String,
    pub(crate) trace: Option<String>,
    /// Edges never to forward to (e.g. the one this request came from).
    pub(crate) exclude: Vec<EdgeId>,
    /// Set when the rest of a route travels on (`POST /route`) rather
    /// than one function (`POST /fn/{name}`).
    pub(crate) route: Option<RouteCarry>,
}

/// What a forwarded route carries besides the event.
#[derive(Debug, Clone)]
pub(crate) struct RouteCarry {
    /// The remaining stack, next step (the forwarded function) first.
    pub(crate) stack: String,
    /// `fnroute-route-progress` (steps and expansions used so far).
    pub(crate) progress: String,
    /// The route's hop bound (`routing.max_hops`), instead of the mesh's.
    pub(crate) max_hops: u32,
    /// Whether the remainder may be retried on another edge after it may
    /// have reached a peer (every step idempotent).
    pub(crate) retryable: bool,
    pub(crate) content_type: Option<String>,
}

/// Local-or-forward decisions and forwarding with retries for one edge.
pub(crate) struct Dispatcher {
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) view: Arc<LiveView>,
    budget: Mutex<RetryBudget>,
    policy: EjectionPolicy,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("mesh", &self.mesh)
            .finish()
    }
}

/// Orders ranked candidates (best first): the first is chosen by power of
/// two choices over `cost` among those near-equal to the best
/// (`placement::near_equal`: same class, distance within 1.25 × best +
/// 300 km); the rest keep their rank order. Pure: randomness comes in as
/// `r1`, `r2`.
pub(crate) fn order(
    mut list: Vec<placement::Candidate>,
    cost: impl Fn(EdgeId) -> f64,
    r1: u64,
    r2: u64,
) -> Vec<EdgeId> {
    if !list.is_empty() {
        let near = placement::near_equal(&list);
        let pick = balance::p2c(near, r1, r2, |i| {
            list.get(i).map(|c| cost(c.edge)).unwrap_or(f64::MAX)
        });
        if let Some(pick) = pick {
            let chosen = list.remove(pick);
            list.insert(0, chosen);
        }
    }
    list.into_iter().map(|c| c.edge).collect()
}

/// How one forward attempt ended.
enum Attempt {
    Done(Reply),
    /// Failed before the request could have reached the peer.
    NotSent(AttemptError),
    /// Failed after it may have reached the peer (reset, timeout, 503).
    MaybeSent(AttemptError, Option<Reply>),
}

/// The request to a peer: `POST /fn/{function}`, or `POST /route` with the
/// rest of the stack, with the internal headers (hop count plus one, the
/// `remaining_ms` of the deadline, request id, trace context).
fn peer_request(fwd: &Forward, remaining_ms: u128) -> Request {
    let mut req = Request::invoke(&fwd.function, fwd.payload.clone());
    if let Some(r) = &fwd.route {
        req.path = "/route".to_string();
        req = req
            .header(crate::headers::ROUTE_HEADER, &r.stack)
            .header(crate::headers::PROGRESS_HEADER, &r.progress);
        if let Some(ct) = &r.content_type {
            req = req.header("content-type", ct);
        }
    }
    req = req
        .header(HOP_HEADER, &(fwd.hops + 1).to_string())
        .header(DEADLINE_HEADER, &remaining_ms.to_string())
        .header(REQUEST_ID_HEADER, &fwd.request_id);
    if let Some(t) = &fwd.trace {
        req = req.header(TRACE_HEADER, t);
    }
    req
}

/// What the forwarding attempts so far left: the last error, and the last
/// answer a peer gave (a 503 is a better answer than an error).
#[derive(Default)]
struct Tries {
    last: Option<DispatchError>,
    reply: Option<Reply>,
}

impl Tries {
    /// Takes one attempt's outcome: the final result when there is one (a
    /// reply, or a failure that must not be retried), else `None`.
    fn record(
        &mut self,
        peer: &str,
        outcome: Attempt,
        idempotent: bool,
    ) -> Option<Result<Reply, DispatchError>> {
        match outcome {
            Attempt::Done(reply) => Some(Ok(reply)),
            Attempt::NotSent(cause) => {
                tracing::debug!(peer, error = %cause, "forward not sent; trying the next edge");
                self.last = Some(DispatchError::Failed {
                    peer: peer.to_string(),
                    cause,
                });
                None
            }
            Attempt::MaybeSent(cause, reply) => {
                tracing::debug!(peer, error = %cause, idempotent, "forward failed");
                let err = DispatchError::Failed {
                    peer: peer.to_string(),
                    cause,
                };
                if !idempotent {
                    return Some(reply.ok_or(err));
                }
                if reply.is_some() {
                    self.reply = reply;
                }
                self.last = Some(err);
                None
            }
        }
    }

    /// The answer when no more attempts are made: the last reply, else the
    /// last error, else `otherwise`.
    fn finish(self, otherwise: DispatchError) -> Result<Reply, DispatchError> {
        match (self.reply, self.last) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(otherwise),
        }
    }
}

impl Dispatcher {
    pub(crate) fn new(mesh: Arc<Mesh>, view: Arc<LiveView>) -> Self {
        let policy = EjectionPolicy {
            threshold: mesh.settings.eject_after,
            ..EjectionPolicy::default()
        };
        Self {
            mesh,
            view,
            budget: Mutex::new(RetryBudget::default()),
            policy,
        }
    }

    pub(crate) fn max_hops(&self) -> u32 {
        self.mesh.settings.max_hops
    }

    /// Whether the local pool of `f` is full (running plus queued at the
    /// concurrency limit plus the queue), so new work should go elsewhere.
    pub(crate) fn saturated(exec: &Executors, f: &Function, queue: u32) -> bool {
        exec.backlog(&f.name)
            .is_some_and(|n| n >= (f.concurrency_max + queue) as usize)
    }

    /// Healthy, non-draining, non-ejected peers hosting `f`, best first:
    /// ranked from this edge's location by class and distance, the first
    /// picked by P2C over peak-EWMA among near-equal candidates.
    pub(crate) fn candidates(&self, f: &Function, exclude: &[EdgeId], now: Instant) -> Vec<EdgeId> {
        let view = self.view.load();
        let Some(here) = view.topology.edges.get(self.mesh.edge).map(|e| e.location) else {
            return Vec::new();
        };
        let ranking = placement::rank(&view, &f.edges, here);
        let list: Vec<placement::Candidate> = ranking
            .candidates
            .into_iter()
            .filter(|c| {
                c.edge != self.mesh.edge
                    && !exclude.contains(&c.edge)
                    && c.class < Class::Draining
                    && !self
                        .mesh
                        .with_stats(c.edge, |s| s.outlier.is_ejected(now))
                        .unwrap_or(true)
            })
            .collect();
        let cost = |edge: EdgeId| {
            self.mesh
                .with_stats(edge, |s| s.ewma.cost())
                .unwrap_or(f64::MAX)
        };
        order(list, cost, rand::random(), rand::random())
    }

    /// Forwards `fwd` to the best peer; idempotent functions are retried
    /// on the next candidate after a connection failure, reset, timeout
    /// or 503, within the retry budget. Non-idempotent ones are retried
    /// only when the request cannot have reached the peer.
    pub(crate) async fn forward(
        &self,
        f: &Function,
        mut fwd: Forward,
    ) -> Result<Reply, DispatchError> {
        let max_hops = fwd.route.as_ref().map_or(self.max_hops(), |r| r.max_hops);
        if fwd.hops >= max_hops {
            return Err(DispatchError::HopLimit(max_hops));
        }
        let idempotent = fwd.route.as_ref().map_or(f.idempotent, |r| r.retryable);
        self.budget().deposit(Instant::now());
        let no_edge = || DispatchError::NoEdge(f.name.clone());
        let mut tries = Tries::default();
        let mut first = true;
        loop {
            let now = Instant::now();
            if now >= fwd.deadline {
                return tries.finish(DispatchError::Deadline);
            }
            let Some(peer) = self.candidates(f, &fwd.exclude, now).first().copied() else {
                return tries.finish(no_edge());
            };
            if !first && !self.budget().try_withdraw(now) {
                tracing::debug!(function = %f.name, "retry budget exhausted");
                return tries.finish(no_edge());
            }
            first = false;
            fwd.exclude.push(peer);
            // Leave time for a retry elsewhere when one is allowed and
            // another candidate exists.
            let more = idempotent && !self.candidates(f, &fwd.exclude, now).is_empty();
            let remaining = fwd.deadline.saturating_duration_since(now);
            let attempt_deadline = if more {
                now + remaining / 2
            } else {
                fwd.deadline
            };
            let outcome = self.attempt(peer, &fwd, attempt_deadline).await;
            if let Some(done) = tries.record(&self.mesh.peer_name(peer), outcome, idempotent) {
                return done;
            }
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIMULATION ONLY: the emulated WAN round trip to `peer`
    /// (`mesh.simulated_rtt_ms_per_1000km`; zero when off).
    pub(crate) fn simulated_rtt(&self, peer: EdgeId) -> Duration {
        let per_1000km = self.mesh.settings.simulated_rtt_ms_per_1000km;
        if per_1000km <= 0.0 {
            return Duration::ZERO;
        }
        let view = self.view.load();
        let edges = &view.topology.edges;
        match (edges.get(self.mesh.edge), edges.get(peer)) {
            (Some(a), Some(b)) => {
                Duration::from_secs_f64(a.location.distance_km(&b.location) * per_1000km / 1e6)
            }
            _ => Duration::ZERO,
        }
    }

    async fn attempt(&self, peer: EdgeId, fwd: &Forward, deadline: Instant) -> Attempt {
        let mesh = &self.mesh;
        let now = Instant::now();
        // After an ejection's backoff, exactly one request probes the peer.
        if !mesh
            .with_stats(peer, |s| s.outlier.admit(now))
            .unwrap_or(false)
        {
            return Attempt::NotSent(AttemptError::Ejected);
        }
        mesh.with_stats(peer, |s| s.ewma.start());
        let started = Instant::now();
        let outcome = self.send(peer, fwd, deadline).await;
        let took = started.elapsed();
        let jitter: f64 = rand::random();
        let policy = self.policy;
        let name = mesh.peer_name(peer).to_string();
        mesh.with_stats(peer, |s| {
            s.ewma.finish();
            match &outcome {
                Attempt::Done(r) if r.status == 429 || r.status == 503 => {
                    // Load, not failure: neither ejects nor restores.
                    s.ewma.observe(took, Instant::now());
                }
                Attempt::Done(_) => {
                    s.ewma.observe(took, Instant::now());
                    s.outlier.success();
                }
                Attempt::MaybeSent(_, Some(_)) => {}
                Attempt::NotSent(_) | Attempt::MaybeSent(_, None) => {
                    s.ewma.observe(took.max(Duration::from_secs(1)), Instant::now());
                    if let Some(backoff) = s.outlier.failure(policy, now, jitter) {
                        tracing::warn!(peer = %name, ?backoff, "peer ejected after consecutive forward failures");
                    }
                }
            }
        });
        outcome
    }

    async fn send(&self, peer: EdgeId, fwd: &Forward, deadline: Instant) -> Attempt {
        let conn = match tokio::time::timeout_at(deadline, self.mesh.connection(peer)).await {
            Err(_) => return Attempt::NotSent(AttemptError::ConnectTimeout),
            Ok(Err(e)) => return Attempt::NotSent(AttemptError::Transport(Arc::new(e))),
            Ok(Ok(c)) => c,
        };
        if conn.quic().close_reason().is_some() {
            self.mesh.drop_connection(peer, &conn);
            return Attempt::NotSent(AttemptError::Closed);
        }
        // SIMULATION ONLY: half the emulated round trip on the way there,
        // half on the way back (the deadline still applies).
        let half_rtt = self.simulated_rtt(peer) / 2;
        if !half_rtt.is_zero() {
            tokio::time::sleep(half_rtt.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let req = peer_request(fwd, remaining);
        let sent = tokio::time::timeout_at(deadline, conn.send_streaming(req)).await;
        if !half_rtt.is_zero() && sent.as_ref().is_ok_and(|r| r.is_ok()) {
            tokio::time::sleep(half_rtt.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        match sent {
            Err(_) => Attempt::MaybeSent(AttemptError::Timeout, None),
            Ok(Err(e)) => {
                if conn.quic().close_reason().is_some() {
                    self.mesh.drop_connection(peer, &conn);
                }
                // Opening the stream failed: nothing reached the peer.
                let e = AttemptError::Transport(Arc::new(e));
                if e.maybe_sent() {
                    Attempt::MaybeSent(e, None)
                } else {
                    Attempt::NotSent(e)
                }
            }
            Ok(Ok(r)) if r.status == 503 => Attempt::MaybeSent(AttemptError::Unavailable, Some(r)),
            Ok(Ok(r)) => Attempt::Done(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Candidate, Class};

    fn cand(edge: EdgeId, km: f64, class: Class) -> Candidate {
        Candidate {
            edge,
            distance_km: km,
            load: 0.0,
            class,
        }
    }

    #[test]
    fn p2c_only_among_near_equal_candidates() {
        // 1 and 2 are near-equal (1000 vs 1100 km); 3 is far; 4 is loaded.
        let list = vec![
            cand(1, 1000.0, Class::Preferred),
            cand(2, 1100.0, Class::Preferred),
            cand(3, 9000.0, Class::Preferred),
            cand(4, 500.0, Class::OverThreshold),
        ];
        let cost = |e: EdgeId| if e == 2 { 1.0 } else { 10.0 };
        for r1 in 0..8 {
            for r2 in 0..8 {
                let o = order(list.clone(), cost, r1, r2);
                assert_eq!(o.len(), 4);
                assert_eq!(o[0], 2, "the cheaper of the near pair wins");
                assert_eq!(&o[1..], &[1, 3, 4], "the rest keep rank order");
            }
        }
        // A far cheap candidate never jumps ahead of a near one.
        let cost = |e: EdgeId| if e == 3 { 0.001 } else { 10.0 };
        let o = order(
            list[..1].iter().chain(&list[2..3]).copied().collect(),
            cost,
            1,
            2,
        );
        assert_eq!(o, [1, 3]);
        assert!(order(Vec::new(), cost, 0, 0).is_empty());
    }
}
