//! Local executors: the worker processes that run functions on this edge.
//!
//! `exec` owns processes (start, scale, restart, kill) and the loopback
//! Lambda Runtime API they talk to. It knows nothing of QUIC, DNS or other
//! edges: callers hand it an `Invocation` and get bytes or an `ExecError`
//! back.
//!
//! - `lambda`: a pool of long-lived workers per function. Every worker gets
//!   its own Runtime API listener on 127.0.0.1 (the port identifies the
//!   worker, so `next` needs no routing and a worker can only answer its
//!   own invocation). Workers pull invocations (`next` long-polls); the
//!   pool grows while invocations queue, shrinks after `keep_warm` idle,
//!   replaces crashed workers with backoff and kills workers past the
//!   deadline.
//! - `command`: one process per invocation, event on stdin, result on
//!   stdout.
//! - `policy`: the pure decisions (scaling, backoff, metering, limits).
//!
//! Invariants: every admitted invocation ends with an answer (result or
//! error) by its deadline plus [`KILL_GRACE`], whatever its worker does;
//! queues and worker counts are bounded by the topology; every process is
//! started in its own process group and the group is killed when the
//! worker is done with.

mod command;
mod gate;
mod lambda;
mod peer;
mod policy;
mod process;
mod wasm;

pub use lambda::{parse_runtime_request, RuntimeRequest};
pub use wasm::{prepare, PrepareError};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{EdgeId, ExecutorKind, Function, Topology};

/// How long after an invocation's deadline its caller gives up waiting for
/// the worker to be killed and answers `Timeout` itself.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);
/// `retry-after` suggested when a pool is saturated.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Largest result a function may return (AWS Lambda's synchronous limit).
pub(crate) const MAX_RESULT_BYTES: usize = 6 * 1024 * 1024;

/// One request to run a function.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Function name (lower case, as in the topology).
    pub function: crate::config::FunctionName,
    pub payload: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    pub request_id: String,
    /// W3C traceparent, passed to the function as its trace id.
    pub trace: Option<String>,
}

/// A function's successful result.
#[derive(Debug)]
pub struct Output {
    /// The whole result (empty when it streams).
    pub body: Bytes,
    /// A streaming function's result, from its first byte on
    /// (`streaming = true`); its end or abort comes through the stream.
    pub(crate) stream: Option<crate::pipeline::body::BodyStream>,
    /// Content type the function set, if any.
    pub(crate) content_type: Option<String>,
    /// A `cache-control`-style value for this one result, when the function
    /// gave one out of band (a `command` function's stderr line
    /// `fnroute-cache-control: …`; see docs/cache.md). `lambda` results carry
    /// theirs in the result itself.
    pub cache_control: Option<String>,
    pub timing: Timing,
}

/// Where the time of one invocation went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Waiting for a worker (including a cold start).
    pub(crate) queued: Duration,
    /// From handing the event to the worker until its result.
    pub run: Duration,
    /// A new worker had to be started for this invocation.
    pub cold_start: bool,
    /// For a cold start: from spawning the worker to its first `next`.
    pub init: Duration,
}

/// Why an invocation did not produce a result. `Clone` so coalesced
/// waiters can share one error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// No function of that name is hosted on this edge.
    #[error("function {0:?} is not hosted on this edge")]
    UnknownFunction(String),
    /// The pool and its queue are full (or the queue wait timed out);
    /// retry after the given time.
    #[error("function {function:?} is saturated")]
    Saturated {
        function: String,
        retry_after: Duration,
    },
    /// The function ran and reported an error.
    #[error("function error {error_type}: {message}")]
    Function { error_type: String, message: String },
    /// The worker died during the invocation.
    #[error("worker crashed: {0}")]
    Crashed(String),
    /// The deadline passed; the worker was killed.
    #[error("deadline exceeded after {0:?}")]
    Timeout(Duration),
    /// The edge is shutting down and takes no new work.
    #[error("edge is shutting down")]
    ShuttingDown,
    /// Something on this edge failed (spawning, I/O).
    #[error("executor failure: {0}")]
    Internal(String),
}

/// A snapshot of one function's pool on this edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionStats {
    pub function: String,
    /// Live worker processes (lambda), or running processes (command).
    pub workers: usize,
    /// Workers started but not yet asking for work.
    pub(crate) starting: usize,
    /// Workers waiting in `next`.
    pub idle: usize,
    /// Workers running an invocation.
    pub busy: usize,
    /// Invocations waiting for a worker.
    pub queued: usize,
    /// Invocations admitted so far.
    pub invocations: u64,
    /// Invocations that waited for a new worker.
    pub cold_starts: u64,
    /// Sum of cold-start init times (spawn to first `next`).
    pub(crate) cold_start_total: Duration,
    /// The latest cold-start init time.
    pub(crate) last_cold_start: Option<Duration>,
    /// Workers that exited on their own (crashed).
    pub crashes: u64,
    /// Workers (or commands) killed at a deadline.
    pub kills: u64,
    /// Reports on `/runtime/init/error`.
    pub init_errors: u64,
    /// Invocations refused or dropped from the queue as saturated.
    pub saturated: u64,
    /// Workers started in total.
    pub spawned: u64,
    /// Workers stopped after idling past keep-warm.
    pub retired: u64,
}

impl FunctionStats {
    /// Mean cold-start time (a worker's spawn to its first `next`; a wasm
    /// instance's instantiation), if there was one.
    pub fn cold_start_mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.cold_starts).ok().filter(|&n| n > 0)?;
        Some(self.cold_start_total / n)
    }
}

/// One metered invocation (emitted to the log as `fnroute::metering`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MeterRecord {
    pub(crate) function: crate::config::FunctionName,
    pub(crate) edge: String,
    pub(crate) duration: Duration,
    /// `duration` rounded up to a whole millisecond (at least 1).
    pub(crate) billed_ms: u64,
    pub(crate) memory_mb: u32,
    pub(crate) gb_seconds: f64,
    /// Whether the function answered with a result.
    pub(crate) ok: bool,
}

/// Running metering totals of one function on this edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeterTotals {
    pub function: String,
    pub edge: String,
    pub memory_mb: u32,
    pub invocations: u64,
    pub errors: u64,
    pub duration: Duration,
    pub billed_ms: u64,
    /// Exact memory-time in MiB·ms; `gb_seconds` derives from it.
    pub mb_ms: u128,
    pub gb_seconds: f64,
}

/// The executors of one edge.
#[derive(Debug)]
pub struct Executors {
    edge: EdgeId,
    edge_name: String,
    capacity: u32,
    /// Function name -> its pool; replaced whole by `reconcile` (a live
    /// topology reload), read lock-free by every invocation.
    pools: ArcSwap<BTreeMap<crate::config::FunctionName, Arc<PoolEntry>>>,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
    meter: Arc<Meter>,
    /// Cancelled when the workers must go (drain done or dropped); every
    /// pool's own token is a child of it.
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// One function's pool with the definition it runs and its own stop token
/// (cancelled when a reload replaced or removed it and it drained).
#[derive(Debug)]
struct PoolEntry {
    /// Swapped when a reload only moves the function between edges.
    function: ArcSwap<Function>,
    pool: Pool,
    stop: CancellationToken,
    /// Invocations inside this pool (for draining a replaced pool).
    in_flight: Arc<AtomicUsize>,
}

#[derive(Debug)]
enum Pool {
    Lambda(Arc<lambda::LambdaPool>),
    Command(Arc<command::CommandPool>),
    Wasm(Arc<wasm::WasmPool>),
}

/// What a reload did to the pools of one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    pub(crate) added: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) removed: Vec<String>,
}

impl Executors {
    /// Builds the pools of every function hosted on `edge` and starts their
    /// `concurrency_min` workers. Must run inside a tokio runtime.
    pub fn start(topology: Arc<Topology>, edge: EdgeId) -> anyhow::Result<Arc<Self>> {
        let info = topology
            .edges
            .get(edge)
            .with_context(|| format!("edge index {edge} out of range"))?;
        let edge_name = info.name.clone();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let log = match &topology.executors.metering_log {
            None => None,
            Some(path) => Some(start_metering_log(path, &tasks, stop.clone())?),
        };
        let meter = Arc::new(Meter::new(edge_name.clone(), log));
        let exec = Arc::new(Self {
            edge,
            edge_name,
            capacity: info.capacity.max(1),
            pools: ArcSwap::from_pointee(BTreeMap::new()),
            draining: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            meter,
            stop,
            tasks,
        });
        let pools = topology
            .functions
            .iter()
            .filter(|f| f.hosted_on(edge))
            .map(|f| (f.name.clone(), exec.new_pool(f, &topology)))
            .collect();
        exec.pools.store(Arc::new(pools));
        Ok(exec)
    }

    fn new_pool(&self, f: &Function, topology: &Topology) -> Arc<PoolEntry> {
        let stop = self.stop.child_token();
        let pool = match f.executor.kind {
            ExecutorKind::Lambda => Pool::Lambda(lambda::LambdaPool::start(
                f.clone(),
                topology,
                &self.edge_name,
                self.meter.clone(),
                stop.clone(),
                self.tasks.clone(),
            )),
            ExecutorKind::Command => Pool::Command(Arc::new(command::CommandPool::new(
                f.clone(),
                topology,
                self.meter.clone(),
                stop.clone(),
            ))),
            ExecutorKind::Wasm => Pool::Wasm(Arc::new(wasm::WasmPool::new(
                f.clone(),
                topology,
                self.meter.clone(),
                stop.clone(),
            ))),
        };
        Arc::new(PoolEntry {
            function: ArcSwap::from_pointee(f.clone()),
            pool,
            stop,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Applies a reloaded topology: pools of new functions start, pools of
    /// changed functions are replaced (the old one finishes what it took,
    /// then its workers stop), pools of functions no longer hosted here
    /// drain and stop. Unchanged functions keep their warm pools.
    /// In-flight invocations are never dropped: each holds its pool.
    pub(crate) fn reconcile(self: &Arc<Self>, topology: Arc<Topology>) -> Reconciled {
        let old = self.pools.load_full();
        let mut next = BTreeMap::new();
        let mut done = Reconciled::default();
        let mut retired = Vec::new();
        for f in topology.functions.iter().filter(|f| f.hosted_on(self.edge)) {
            match old.get(&f.name) {
                Some(e) if **e.function.load() == *f => {
                    next.insert(f.name.clone(), e.clone());
                }
                // Only its placement moved: keep the warm pool.
                Some(e) if crate::config::reload::same_definition(&e.function.load(), f) => {
                    e.function.store(Arc::new(f.clone()));
                    next.insert(f.name.clone(), e.clone());
                }
                Some(e) => {
                    done.changed.push(f.name.to_string());
                    retired.push(e.clone());
                    next.insert(f.name.clone(), self.new_pool(f, &topology));
                }
                None => {
                    done.added.push(f.name.to_string());
                    next.insert(f.name.clone(), self.new_pool(f, &topology));
                }
            }
        }
        for (name, e) in old.iter() {
            if !next.contains_key(name) {
                done.removed.push(name.to_string());
                retired.push(e.clone());
            }
        }
        self.pools.store(Arc::new(next));
        for e in retired {
            let edge = self.edge_name.clone();
            // Bounded by the function's own timeout plus the kill grace:
            // nothing it admitted can run longer.
            let function = e.function.load_full();
            let grace = function.timeout + KILL_GRACE;
            self.tasks.spawn(async move {
                if let Pool::Lambda(p) = &e.pool {
                    p.set_draining();
                }
                let until = Instant::now() + grace;
                while e.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                e.stop.cancel();
                if let Pool::Lambda(p) = &e.pool {
                    p.fail_queued();
                }
                tracing::info!(%edge, function = %function.name, "retired pool drained and stopped");
            });
        }
        done
    }

    /// The function if this edge hosts it.
    pub fn function(&self, name: &str) -> Option<Arc<Function>> {
        let pools = self.pools.load();
        match pools.get(name) {
            Some(e) => Some(e.function.load_full()),
            None => pools
                .values()
                .find(|e| e.function.load().name.eq_ignore_ascii_case(name))
                .map(|e| e.function.load_full()),
        }
    }

    /// Runs one invocation to completion or failure. Never waits past the
    /// invocation's deadline (bounded by the function's timeout) plus
    /// [`KILL_GRACE`].
    pub async fn invoke(&self, mut inv: Invocation) -> Result<Output, ExecError> {
        sanitize(&mut inv);
        if self.draining.load(Ordering::Acquire) {
            return Err(ExecError::ShuttingDown);
        }
        // Lower case already: a `FunctionName`.
        let name = inv.function.clone();
        let entry = self
            .pools
            .load()
            .get(name.as_str())
            .cloned()
            .ok_or_else(|| ExecError::UnknownFunction(inv.function.to_string()))?;
        let guard = InFlight::enter(&self.in_flight);
        let pool_guard = InFlight::enter(&entry.in_flight);
        let span = tracing::debug_span!("invoke", function = %name, req = %inv.request_id, edge = %self.edge_name);
        let result = match &entry.pool {
            Pool::Lambda(p) => p.invoke(inv).instrument(span).await,
            Pool::Command(p) => p.invoke(inv).instrument(span).await,
            Pool::Wasm(p) => p.invoke(inv).instrument(span).await,
        };
        match result {
            Err(error) => {
                tracing::debug!(function = %name, %error, "invocation failed");
                Err(error)
            }
            Ok(mut out) => {
                // A stream is in flight until it ends: a drain waits for it.
                if let Some(s) = out.stream.as_mut() {
                    s.hold((guard, pool_guard));
                }
                Ok(out)
            }
        }
    }

    /// Running plus queued invocations of `function`'s pool, if it has one
    /// here: what `stats` says of it, without visiting every pool.
    pub(crate) fn backlog(&self, function: &str) -> Option<usize> {
        self.pools.load().get(function).map(|e| match &e.pool {
            Pool::Lambda(p) => p.backlog(),
            Pool::Command(p) => p.backlog(),
            Pool::Wasm(p) => p.backlog(),
        })
    }

    /// Per-function pool counters, in function-name order.
    pub fn stats(&self) -> Vec<FunctionStats> {
        self.pools
            .load()
            .values()
            .map(|e| match &e.pool {
                Pool::Lambda(p) => p.stats(),
                Pool::Command(p) => p.stats(),
                Pool::Wasm(p) => p.stats(),
            })
            .collect()
    }

    /// Invocations in flight (queued or running) as a share of the edge's
    /// capacity: 0.0 idle, 1.0 at capacity (may exceed 1.0).
    pub fn load(&self) -> f64 {
        self.in_flight.load(Ordering::Relaxed) as f64 / f64::from(self.capacity)
    }

    /// Metering totals per function, in function-name order.
    pub fn metering(&self) -> Vec<MeterTotals> {
        self.meter.totals()
    }

    /// Metering log lines dropped because the writer fell behind (`None`
    /// without a metering log).
    pub fn metering_log_dropped(&self) -> Option<u64> {
        self.meter
            .log
            .as_ref()
            .map(|_| self.meter.log_dropped.load(Ordering::Relaxed))
    }

    /// Whether `drain` has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking invocations (`ShuttingDown`), lets those admitted
    /// (queued or running) finish within `grace`, then kills every worker
    /// (anything still running fails with `ShuttingDown`).
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        let pools = self.pools.load_full();
        for e in pools.values() {
            if let Pool::Lambda(p) = &e.pool {
                p.set_draining();
            }
        }
        let until = Instant::now() + grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = self.in_flight.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(edge = %self.edge_name, ?grace, left, "drain grace expired; killing workers");
        }
        self.stop.cancel();
        for e in pools.values() {
            if let Pool::Lambda(p) = &e.pool {
                p.fail_queued();
            }
        }
        self.tasks.close();
        if tokio::time::timeout(KILL_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(edge = %self.edge_name, "workers still stopping after drain");
        }
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Request ids and trace ids become Runtime API header values: anything
/// that is not short visible ASCII is replaced (ids) or dropped (traces).
fn sanitize(inv: &mut Invocation) {
    fn ok(s: &str) -> bool {
        !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic())
    }
    if !ok(&inv.request_id) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        inv.request_id = format!("fnroute-{}", SEQ.fetch_add(1, Ordering::Relaxed));
    }
    if inv.trace.as_deref().is_some_and(|t| !ok(t)) {
        inv.trace = None;
    }
}

/// Counts an admitted invocation until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Running metering totals of an edge.
/// Opens (appends to) the metering log and starts its writer task.
fn start_metering_log(
    path: &std::path::Path,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<tokio::sync::mpsc::Sender<String>> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the metering log {}", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(METERING_LOG_QUEUE);
    let path = path.to_path_buf();
    tasks.spawn(async move {
        let mut out = std::io::BufWriter::new(file);
        loop {
            let line = tokio::select! {
                l = rx.recv() => l,
                () = stop.cancelled() => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(line) = line else { break };
            // Whatever else is waiting goes out in the same write.
            let mut batch = vec![line];
            while let Ok(l) = rx.try_recv() {
                batch.push(l);
            }
            // The file is written off the async workers.
            let Ok((back, written)) = tokio::task::spawn_blocking(move || {
                let r = batch
                    .iter()
                    .try_for_each(|l| writeln!(out, "{l}"))
                    .and_then(|()| out.flush());
                (out, r)
            })
            .await
            else {
                break;
            };
            out = back;
            if let Err(error) = written {
                tracing::error!(%error, path = %path.display(), "metering log write failed");
            }
        }
    });
    Ok(tx)
}

#[derive(Debug)]
struct Meter {
    edge: String,
    totals: Mutex<BTreeMap<crate::config::FunctionName, MeterTotals>>,
    /// Lines for the metering log's writer task (bounded: a slow disk
    /// drops lines, counted, rather than slowing invocations).
    log: Option<tokio::sync::mpsc::Sender<String>>,
    log_dropped: std::sync::atomic::AtomicU64,
}

/// Lines the metering log may have waiting for the disk.
const METERING_LOG_QUEUE: usize = 4096;

impl Meter {
    fn new(edge: String, log: Option<tokio::sync::mpsc::Sender<String>>) -> Self {
        Self {
            edge,
            totals: Mutex::new(BTreeMap::new()),
            log,
            log_dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Meters one invocation that ran for `run` on a worker.
    fn record(&self, f: &Function, request_id: &str, run: Duration, ok: bool) -> MeterRecord {
        let billed_ms = policy::billed_ms(run);
        let mb_ms = policy::mb_ms(f.memory_mb, billed_ms);
        let rec = MeterRecord {
            function: f.name.clone(),
            edge: self.edge.clone(),
            duration: run,
            billed_ms,
            memory_mb: f.memory_mb,
            gb_seconds: policy::gb_seconds(mb_ms),
            ok,
        };
        tracing::debug!(
            target: "fnroute::metering",
            function = %rec.function,
            edge = %rec.edge,
            duration_us = u64::try_from(run.as_micros()).unwrap_or(u64::MAX),
            billed_ms,
            memory_mb = rec.memory_mb,
            gb_seconds = rec.gb_seconds,
            ok,
            "metered"
        );
        if let Some(log) = &self.log {
            let start = std::time::SystemTime::now()
                .checked_sub(run)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            let line = serde_json::json!({
                "function": rec.function,
                "edge": rec.edge,
                "request_id": request_id,
                "start_unix_ms": u64::try_from(start.as_millis()).unwrap_or(u64::MAX),
                "duration_ms": run.as_secs_f64() * 1000.0,
                "billed_ms": billed_ms,
                "memory_mb": rec.memory_mb,
                "gb_seconds": rec.gb_seconds,
                "outcome": if ok { "ok" } else { "error" },
            });
            if log.try_send(line.to_string()).is_err() {
                self.log_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let t = totals.entry(f.name.clone()).or_insert_with(|| MeterTotals {
            function: f.name.to_string(),
            edge: self.edge.clone(),
            memory_mb: f.memory_mb,
            ..MeterTotals::default()
        });
        t.invocations += 1;
        if !ok {
            t.errors += 1;
        }
        t.duration += run;
        t.billed_ms += billed_ms;
        t.mb_ms += mb_ms;
        t.gb_seconds = policy::gb_seconds(t.mb_ms);
        rec
    }

    fn totals(&self) -> Vec<MeterTotals> {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
