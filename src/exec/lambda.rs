//! `kind = "lambda"`: a pool of worker processes speaking the AWS Lambda
//! Runtime API (2018-06-01) to a loopback server of ours.
//!
//! Each worker gets its own listener on 127.0.0.1 (one port per worker):
//! the port identifies the worker, so a worker can only take and answer
//! its own invocations and nothing has to trust request headers. Workers
//! pull: `GET …/invocation/next` parks the worker in the pool's idle list
//! until an invocation is handed to it (a long poll). All pool state sits
//! behind one mutex, never held across an await.
//!
//! Each worker has a supervisor task that owns the process: it kills the
//! process group at the invocation's deadline (`Timeout`), notices exits
//! (`Crashed` for the in-flight invocation, replacement with backoff),
//! retires the worker after `keep_warm` idle (down to `concurrency_min`),
//! and kills everything when the executors stop.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::{oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Function, Topology};
use crate::pipeline::body::{self, BodyStream};

use super::policy::{self, Route};
use super::process::{self, Group};
use super::{
    ExecError, FunctionStats, Invocation, Meter, Output, Timing, KILL_GRACE, MAX_RESULT_BYTES,
    RETRY_AFTER,
};

/// Largest error report or init error body read from a worker.
const MAX_ERROR_BYTES: usize = 256 * 1024;
/// Longest error message passed on to callers.
const MAX_ERROR_MESSAGE: usize = 4096;
/// Connections one worker may hold open to its Runtime API listener.
const MAX_CONNS_PER_WORKER: usize = 8;

/// The workers of one function on one edge.
#[derive(Debug)]
pub(crate) struct LambdaPool {
    f: Function,
    name: Arc<str>,
    edge: String,
    arn: String,
    keep_warm: Duration,
    queue_cap: usize,
    queue_timeout: Duration,
    meter: Arc<Meter>,
    stop: CancellationToken,
    tasks: TaskTracker,
    next_worker: AtomicU64,
    next_job: AtomicU64,
    state: Mutex<State>,
}

impl LambdaPool {
    /// Creates the pool and starts its `concurrency_min` workers.
    pub(crate) fn start(
        f: Function,
        topology: &Topology,
        edge: &str,
        meter: Arc<Meter>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        let min = f.concurrency_min as usize;
        let pool = Arc::new(Self {
            name: Arc::from(f.name.as_str()),
            arn: format!("arn:aws:lambda:{edge}:000000000000:function:{}", f.name),
            edge: edge.to_string(),
            keep_warm: topology.executors.keep_warm,
            queue_cap: topology.executors.queue as usize,
            queue_timeout: topology.executors.queue_timeout,
            meter,
            stop,
            tasks,
            next_worker: AtomicU64::new(1),
            next_job: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            f,
        });
        pool.lock().reserved = min;
        for _ in 0..min {
            pool.spawn_worker();
        }
        pool
    }

    /// Runs one invocation on a worker of this pool.
    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Output, ExecError> {
        let now = Instant::now();
        // The caller's deadline; the function's own timeout starts when a
        // worker takes the event (a cold start does not eat into it).
        let deadline = inv.deadline;
        if deadline <= now {
            return Err(ExecError::Timeout(Duration::ZERO));
        }
        let seq = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let job = Job {
            seq,
            data: JobData {
                request_id: inv.request_id,
                payload: inv.payload,
                deadline,
                trace: inv.trace,
            },
            reply: tx,
            enqueued: now,
        };
        let spawns = {
            let mut st = self.lock();
            self.admit(&mut st, job, now)?
        };
        // A caller that goes away leaves no job behind in the queue.
        let _unqueue = Unqueue { pool: self, seq };
        for _ in 0..spawns {
            self.spawn_worker();
        }
        let outcome = self.wait(seq, &mut rx, now, deadline).await?;
        let mut reply = outcome.result?;
        let mut content_type = reply.content_type.take();
        let stream = match reply.stream.take() {
            Some(s) => Some(self.streamed(s, &mut content_type, deadline).await?),
            None => None,
        };
        // A worker may stream though its function is not `streaming`:
        // then the result is buffered, as Lambda buffers it.
        let (body, stream) = match stream {
            Some(s) if self.f.streaming.is_none() => (self.buffered(s, deadline).await?, None),
            s => (reply.body, s),
        };
        Ok(Output {
            body,
            stream,
            content_type,
            cache_control: None,
            timing: Timing {
                queued: outcome.queued,
                run: outcome.run,
                cold_start: outcome.init.is_some(),
                init: outcome.init.unwrap_or_default(),
            },
        })
    }

    /// A streamed response as the pipeline takes it. With Lambda's
    /// function URL prelude (its content type says so): an `http`
    /// function's stream keeps it (the front door makes it the head); an
    /// event function's loses it, and its `content-type` becomes the
    /// response's. Without one, an `http` function gets a prelude made of
    /// the POST's content type.
    async fn streamed(
        &self,
        mut s: BodyStream,
        content_type: &mut Option<String>,
        deadline: Instant,
    ) -> Result<BodyStream, ExecError> {
        use crate::pipeline::function_url::{self, PRELUDE_CONTENT_TYPE};
        let has_prelude = content_type
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(PRELUDE_CONTENT_TYPE));
        let http = self.f.interface == crate::config::Interface::Http;
        if !has_prelude {
            if http {
                let mut h = http::HeaderMap::new();
                if let Some(v) = content_type
                    .as_deref()
                    .and_then(|c| http::HeaderValue::from_str(c).ok())
                {
                    h.insert(http::header::CONTENT_TYPE, v);
                }
                s.unread(Bytes::from(function_url::prelude_bytes(StatusCode::OK, &h)));
            }
            return Ok(s);
        }
        if http {
            return Ok(s);
        }
        let malformed = |m: String| ExecError::Function {
            error_type: "Function.ResponseMalformed".into(),
            message: m,
        };
        let json = match timeout_at(deadline, s.read_prelude()).await {
            Ok(Ok(j)) => j,
            Ok(Err(e)) => return Err(malformed(e.to_string())),
            Err(_) => return Err(ExecError::Timeout(self.f.timeout)),
        };
        let (_, headers) = function_url::prelude(&json).map_err(|e| malformed(e.to_string()))?;
        *content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(s)
    }

    /// A streamed response read whole (up to the buffered limit). An
    /// `http` function's prelude and body become the function URL result
    /// they describe.
    async fn buffered(&self, mut s: BodyStream, deadline: Instant) -> Result<Bytes, ExecError> {
        use crate::pipeline::function_url;
        let failed = |e: crate::pipeline::body::StreamError| match e {
            crate::pipeline::body::StreamError::Function {
                error_type,
                message,
            } => ExecError::Function {
                error_type,
                message,
            },
            crate::pipeline::body::StreamError::TooLarge(_) => ExecError::Function {
                error_type: "Function.ResponseSizeTooLarge".into(),
                message: format!("response is larger than {MAX_RESULT_BYTES} bytes"),
            },
            e => ExecError::Crashed(e.to_string()),
        };
        let read = async {
            if self.f.interface != crate::config::Interface::Http {
                return s.collect(MAX_RESULT_BYTES).await.map_err(failed);
            }
            let json = s.read_prelude().await.map_err(|e| ExecError::Function {
                error_type: "Function.ResponseMalformed".into(),
                message: e.to_string(),
            })?;
            let body = s.collect(MAX_RESULT_BYTES).await.map_err(failed)?;
            let (status, headers) =
                function_url::prelude(&json).map_err(|e| ExecError::Function {
                    error_type: "Function.ResponseMalformed".into(),
                    message: e.to_string(),
                })?;
            Ok(Bytes::from(function_url::result_json(
                status, &headers, &body,
            )))
        };
        match timeout_at(deadline, read).await {
            Ok(r) => r,
            Err(_) => Err(ExecError::Timeout(self.f.timeout)),
        }
    }

    /// Waits for job `seq`'s outcome. Waiting past `queue_timeout` is
    /// saturation unless a worker is on its way (a slow cold start is not
    /// a full pool); a job a worker took gets until the deadline and
    /// [`KILL_GRACE`].
    async fn wait(
        &self,
        seq: u64,
        rx: &mut oneshot::Receiver<Outcome>,
        now: Instant,
        deadline: Instant,
    ) -> Result<Outcome, ExecError> {
        let mut limit = (now + self.queue_timeout).min(deadline);
        let outcome = loop {
            tokio::select! {
                r = &mut *rx => break r,
                () = sleep_until(limit) => {
                    let at_deadline = limit >= deadline;
                    match self.queue_expired(seq, at_deadline) {
                        Expiry::Removed if at_deadline => {
                            return Err(ExecError::Timeout(deadline - now))
                        }
                        Expiry::Removed => return Err(self.saturated()),
                        Expiry::Starting => limit = deadline,
                        Expiry::Taken => match timeout_at(deadline + KILL_GRACE, &mut *rx).await {
                            Ok(r) => break r,
                            Err(_) => return Err(ExecError::Timeout(deadline - now)),
                        },
                    }
                }
            }
        };
        outcome
            .map_err(|_| ExecError::Crashed("the worker went away without answering".to_string()))
    }

    pub(crate) fn stats(&self) -> FunctionStats {
        let st = self.lock();
        let mut s = st.stats.clone();
        s.function = self.f.name.to_string();
        s.workers = st.slots.len() + st.reserved;
        s.starting = st.reserved
            + st.slots
                .values()
                .filter(|w| w.phase == Phase::Starting)
                .count();
        s.idle = st.idle.len();
        s.busy = st.slots.values().filter(|w| w.current.is_some()).count();
        s.queued = st.queue.len();
        s
    }

    /// Invocations running plus queued (one lock, no allocation).
    pub(crate) fn backlog(&self) -> usize {
        let st = self.lock();
        st.slots.values().filter(|w| w.current.is_some()).count() + st.queue.len()
    }

    /// Refuses new invocations; queued and running ones go on.
    pub(crate) fn set_draining(&self) {
        self.lock().draining = true;
    }

    /// Fails every queued invocation with `ShuttingDown` (after drain).
    pub(crate) fn fail_queued(&self) {
        let jobs: Vec<Job> = self.lock().queue.drain(..).collect();
        for job in jobs {
            let _ = job.reply.send(Outcome::unrun(ExecError::ShuttingDown));
        }
    }

    // ---- admission and dispatch (under the pool lock) ----

    /// Hands `job` to an idle worker or queues it; returns how many workers
    /// to start.
    fn admit(&self, st: &mut State, job: Job, now: Instant) -> Result<usize, ExecError> {
        if st.draining {
            return Err(ExecError::ShuttingDown);
        }
        st.stats.invocations += 1;
        // Most recently idle first: hot workers stay hot, others age out.
        while let Some(w) = st.idle.pop() {
            let Some(slot) = st.slots.get_mut(&w.worker) else {
                continue;
            };
            if w.tx.is_closed() {
                // Its `next` request went away; it will ask again.
                slot.phase = Phase::Returning;
                continue;
            }
            let data = assign(slot, job, now, self.f.timeout, &mut st.stats);
            slot.wake.notify_one();
            // If the receiver vanished just now, the job stays the
            // worker's current one and is re-delivered on its next `next`
            // (or fails with the worker).
            let _ = w.tx.send(data);
            return Ok(0);
        }
        if st.queue.len() >= self.queue_cap {
            st.stats.saturated += 1;
            return Err(self.saturated());
        }
        st.queue.push_back(job);
        Ok(self.plan_spawns(st, now))
    }

    /// Reserves and returns how many workers to start for the queue and the
    /// pool's floor.
    fn plan_spawns(&self, st: &mut State, now: Instant) -> usize {
        if self.stop.is_cancelled() {
            return 0;
        }
        // While draining, admitted invocations still get workers, but the
        // floor is no longer kept.
        let min = if st.draining {
            0
        } else {
            self.f.concurrency_min as usize
        };
        let coming = st.reserved
            + st.slots
                .values()
                .filter(|w| matches!(w.phase, Phase::Starting | Phase::Returning))
                .count();
        let workers = st.reserved + st.slots.len();
        let backing_off = st.backoff_until.is_some_and(|t| t > now);
        let n = policy::workers_to_start(
            st.queue.len(),
            coming,
            workers,
            min,
            self.f.concurrency_max as usize,
            backing_off,
        );
        st.reserved += n;
        n
    }

    /// Removes a still-queued job; false if a worker already took it.
    fn unqueue(&self, seq: u64) -> bool {
        let mut st = self.lock();
        match st.queue.iter().position(|j| j.seq == seq) {
            Some(i) => {
                st.queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// The queue wait of job `seq` ran out: remove it, unless a worker
    /// already took it or (before the deadline) a worker is starting.
    fn queue_expired(&self, seq: u64, at_deadline: bool) -> Expiry {
        let mut st = self.lock();
        let Some(i) = st.queue.iter().position(|j| j.seq == seq) else {
            return Expiry::Taken;
        };
        let starting = st.reserved > 0 || st.slots.values().any(|w| w.phase == Phase::Starting);
        if !at_deadline && starting {
            return Expiry::Starting;
        }
        st.queue.remove(i);
        if !at_deadline {
            st.stats.saturated += 1;
        }
        Expiry::Removed
    }

    fn saturated(&self) -> ExecError {
        ExecError::Saturated {
            function: self.f.name.to_string(),
            retry_after: RETRY_AFTER,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- workers ----

    /// Starts one worker whose slot was reserved by `plan_spawns`.
    fn spawn_worker(self: &Arc<Self>) {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let spawned = Instant::now();
        let started = bind_loopback().and_then(|listener| {
            let port = listener.local_addr()?.port();
            let env = self.worker_env(id, port);
            let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
            let proc = Group::spawn(&self.f, &env, false)?;
            Ok((listener, proc))
        });
        let (listener, mut proc) = match started {
            Ok(x) => x,
            Err(error) => {
                tracing::error!(function = %self.name, edge = %self.edge, %error, "cannot start worker");
                let failed: Vec<Job> = {
                    let mut st = self.lock();
                    st.reserved = st.reserved.saturating_sub(1);
                    if st.slots.is_empty() && st.reserved == 0 {
                        st.queue.drain(..).collect()
                    } else {
                        Vec::new()
                    }
                };
                for job in failed {
                    let _ = job.reply.send(Outcome::unrun(ExecError::Internal(format!(
                        "cannot start a worker for {}: {error}",
                        self.name
                    ))));
                }
                return;
            }
        };
        let wake = Arc::new(Notify::new());
        {
            let mut st = self.lock();
            st.reserved = st.reserved.saturating_sub(1);
            st.stats.spawned += 1;
            st.slots.insert(
                id,
                Slot {
                    spawned,
                    ready: None,
                    phase: Phase::Starting,
                    current: None,
                    idle_since: spawned,
                    wake: wake.clone(),
                    init_failed: false,
                    served: 0,
                    last_request: "-".to_string(),
                    cancelled: false,
                },
            );
        }
        tracing::debug!(function = %self.name, worker = id, pid = ?proc.child.id(), "worker started");
        for (stream, which) in [
            (proc.child.stdout.take().map(Stream::Out), "stdout"),
            (proc.child.stderr.take().map(Stream::Err), "stderr"),
        ] {
            if let Some(stream) = stream {
                let pool = self.clone();
                self.tasks.spawn(async move {
                    let name = pool.name.clone();
                    let req = || pool.current_request(id);
                    match stream {
                        Stream::Out(s) => process::forward_lines(s, name, which, req, None).await,
                        Stream::Err(s) => process::forward_lines(s, name, which, req, None).await,
                    }
                });
            }
        }
        let server = tokio::spawn(serve(listener, self.clone(), id));
        self.tasks
            .spawn(self.clone().supervise(id, proc, server, wake));
    }

    fn worker_env(&self, id: u64, port: u16) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}")),
            ("AWS_LAMBDA_FUNCTION_NAME", self.f.name.to_string()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.f.memory_mb.to_string(),
            ),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/fnroute/{}/{}", self.edge, self.f.name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("{}/worker-{id}", self.edge),
            ),
            ("AWS_REGION", self.edge.clone()),
            ("AWS_DEFAULT_REGION", self.edge.clone()),
            (
                "LAMBDA_TASK_ROOT",
                self.f.executor.workdir.to_string_lossy().into_owned(),
            ),
        ];
        if let Some(h) = &self.f.executor.handler {
            env.push(("_HANDLER", h.clone()));
        }
        env
    }

    /// The request a worker's output line belongs to: the latest one
    /// handed to it (best effort: a line read late may be attributed to
    /// the next invocation).
    fn current_request(&self, worker: u64) -> String {
        self.lock()
            .slots
            .get(&worker)
            .map(|s| s.last_request.clone())
            .unwrap_or_else(|| "-".to_string())
    }

    /// Owns one worker process until it exits, misses a deadline, retires
    /// or the executors stop; then cleans up and replaces it if needed.
    async fn supervise(
        self: Arc<Self>,
        id: u64,
        mut proc: Group,
        server: JoinHandle<()>,
        wake: Arc<Notify>,
    ) {
        let exit = self.watch(id, &mut proc, &wake).await;
        server.abort();
        let status = match exit {
            Exit::Died(status) => {
                proc.sweep();
                status
            }
            _ => proc.kill_and_reap().await,
        };
        let now = Instant::now();
        let status = status.map_or_else(|| "unknown status".to_string(), |s| s.to_string());
        let settled = self.settle(id, exit, now);
        self.log_exit(id, exit, &status);
        if let Some(r) = settled.running {
            let error = match exit {
                Exit::Died(_) => ExecError::Crashed(format!(
                    "worker of {} exited ({status}) during request {}",
                    self.name, r.data.request_id
                )),
                Exit::Deadline => ExecError::Timeout(now.saturating_duration_since(r.enqueued)),
                Exit::Cancelled => ExecError::Internal("stream cancelled".into()),
                Exit::Retired | Exit::Stopped => ExecError::ShuttingDown,
            };
            self.finish(r, Err(error), now);
        }
        if let Some(job) = settled.failed_init {
            let _ = job.reply.send(Outcome::unrun(ExecError::Crashed(format!(
                "worker of {} exited ({status}) before asking for work",
                self.name
            ))));
        }
        for _ in 0..settled.spawns {
            self.spawn_worker();
        }
        if let Some(delay) = settled.backoff {
            self.respawn_after(delay);
        }
    }

    /// Waits until worker `id` must go: it died, passed its job's
    /// deadline, idled past `keep_warm`, or the pool stops.
    async fn watch(&self, id: u64, proc: &mut Group, wake: &Notify) -> Exit {
        loop {
            let (deadline, idle_at) = {
                let st = self.lock();
                let Some(slot) = st.slots.get(&id) else {
                    return Exit::Stopped;
                };
                (
                    slot.current.as_ref().map(|r| r.data.deadline),
                    (slot.phase == Phase::Idle).then(|| slot.idle_since + self.keep_warm),
                )
            };
            let far = Instant::now() + Duration::from_secs(86_400);
            let notified = wake.notified();
            tokio::select! {
                status = proc.child.wait() => return Exit::Died(status.ok()),
                () = self.stop.cancelled() => return Exit::Stopped,
                () = notified => {
                    if self.lock().slots.get(&id).is_some_and(|s| s.cancelled) {
                        return Exit::Cancelled;
                    }
                }
                () = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    if self.past_deadline(id, Instant::now()) {
                        return Exit::Deadline;
                    }
                }
                () = sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if self.try_retire(id, Instant::now()) {
                        return Exit::Retired;
                    }
                }
            }
        }
    }

    /// The pool's state after worker `id` went: its slot removed, crash
    /// counts and backoff, the job it was running, the invocation that
    /// waited for a worker that never became ready, and what to start.
    fn settle(&self, id: u64, exit: Exit, now: Instant) -> Settled {
        let mut st = self.lock();
        let slot = st.slots.remove(&id);
        st.idle.retain(|w| w.worker != id);
        let never_ready = slot
            .as_ref()
            .is_some_and(|s| s.ready.is_none() && !s.init_failed);
        let running = slot.and_then(|s| s.current);
        let mut failed_init = None;
        let mut backoff = None;
        match exit {
            Exit::Died(_) => {
                st.stats.crashes += 1;
                st.consecutive_crashes = st.consecutive_crashes.saturating_add(1);
                if never_ready {
                    // The invocation that waited for this worker learns why.
                    failed_init = take_queued(&mut st.queue);
                }
                let delay = policy::crash_backoff(st.consecutive_crashes);
                if !delay.is_zero() {
                    st.backoff_until = Some(now + delay);
                    backoff = Some(delay);
                }
            }
            Exit::Deadline | Exit::Cancelled => st.stats.kills += 1,
            Exit::Retired | Exit::Stopped => {}
        }
        let spawns = self.plan_spawns(&mut st, now);
        Settled {
            running,
            failed_init,
            spawns,
            backoff,
        }
    }

    fn log_exit(&self, id: u64, exit: Exit, status: &str) {
        match exit {
            Exit::Died(_) => {
                tracing::warn!(function = %self.name, worker = id, %status, "worker exited")
            }
            Exit::Deadline => {
                tracing::warn!(function = %self.name, worker = id, "worker killed at deadline")
            }
            Exit::Cancelled => {
                tracing::info!(function = %self.name, worker = id, "worker stopped: its stream's client went away")
            }
            Exit::Retired => {
                tracing::debug!(function = %self.name, worker = id, "idle worker retired")
            }
            Exit::Stopped => tracing::debug!(function = %self.name, worker = id, "worker stopped"),
        }
    }

    /// Starts the workers the pool needs once a crash backoff is over.
    fn respawn_after(self: &Arc<Self>, delay: Duration) {
        let pool = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = pool.stop.cancelled() => return,
            }
            let n = {
                let mut st = pool.lock();
                st.backoff_until = None;
                pool.plan_spawns(&mut st, Instant::now())
            };
            for _ in 0..n {
                pool.spawn_worker();
            }
        });
    }

    /// Meters a finished invocation and answers its caller (who may have
    /// gone: the run is billed anyway).
    fn finish(&self, r: Running, result: Result<Reply, ExecError>, now: Instant) {
        let run = now.saturating_duration_since(r.dispatched);
        self.meter
            .record(&self.f, &r.data.request_id, run, result.is_ok());
        if let Some(reply) = r.reply {
            let _ = reply.send(Outcome {
                result,
                queued: r.dispatched.saturating_duration_since(r.enqueued),
                run,
                init: r.init,
            });
        }
    }

    /// A worker began a streamed response for `rid`: its caller gets the
    /// stream now; the invocation stays on the worker (and under its
    /// deadline) until [`LambdaPool::end_stream`].
    fn begin_stream(&self, worker: u64, rid: &str, reply: Reply) -> StatusCode {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(slot) = st.slots.get_mut(&worker) else {
            return StatusCode::GONE;
        };
        let Some(r) = slot
            .current
            .as_mut()
            .filter(|r| r.data.request_id == rid && r.reply.is_some())
        else {
            return StatusCode::BAD_REQUEST;
        };
        if let Some(tx) = r.reply.take() {
            let _ = tx.send(Outcome {
                result: Ok(reply),
                queued: r.dispatched.saturating_duration_since(r.enqueued),
                run: now.saturating_duration_since(r.dispatched),
                init: r.init,
            });
        }
        StatusCode::ACCEPTED
    }

    /// The streamed response of `rid` ended (`ok`: cleanly): the worker is
    /// done with it, as if it had answered (its caller has the stream
    /// already; this meters the whole run).
    fn end_stream(&self, worker: u64, rid: &str, ok: bool) -> StatusCode {
        let result = if ok {
            Ok(Reply::default())
        } else {
            Err(ExecError::Internal("stream aborted".into()))
        };
        self.respond(worker, rid, result)
    }

    /// The client of `rid`'s stream went away: the worker is stopped (and
    /// replaced), which is the only way to stop a Lambda runtime mid-call.
    fn cancel_stream(&self, worker: u64, rid: &str) {
        let mut st = self.lock();
        if let Some(slot) = st.slots.get_mut(&worker) {
            if slot
                .current
                .as_ref()
                .is_some_and(|r| r.data.request_id == rid)
            {
                slot.cancelled = true;
                slot.wake.notify_one();
            }
        }
    }

    fn past_deadline(&self, id: u64, now: Instant) -> bool {
        self.lock()
            .slots
            .get(&id)
            .and_then(|s| s.current.as_ref())
            .is_some_and(|r| r.data.deadline <= now)
    }

    /// Takes an idle worker out of service if it idled past keep-warm and
    /// the pool is above its floor.
    fn try_retire(&self, id: u64, now: Instant) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        let workers = st.slots.len() + st.reserved;
        let Some(slot) = st.slots.get_mut(&id) else {
            return false;
        };
        if slot.phase != Phase::Idle || slot.idle_since + self.keep_warm > now {
            return false;
        }
        if workers <= self.f.concurrency_min as usize {
            slot.idle_since = now;
            return false;
        }
        let Some(i) = st.idle.iter().position(|w| w.worker == id) else {
            return false;
        };
        st.idle.swap_remove(i);
        slot.phase = Phase::Retiring;
        st.stats.retired += 1;
        true
    }

    // ---- Runtime API handlers ----

    /// `GET …/invocation/next`: the worker's next event (long poll).
    async fn next(&self, worker: u64) -> Response<Full<Bytes>> {
        let now = Instant::now();
        let step = {
            let mut guard = self.lock();
            let st = &mut *guard;
            match st.slots.get_mut(&worker) {
                None => Next::Gone,
                Some(slot) => {
                    if slot.ready.is_none() {
                        slot.ready = Some(now);
                    }
                    if let Some(r) = &slot.current {
                        // Asked again without answering: it never got the event.
                        Next::Now(self.event_response(&r.data))
                    } else {
                        slot.phase = Phase::Idle;
                        slot.idle_since = now;
                        slot.wake.notify_one();
                        if let Some(job) = take_queued(&mut st.queue) {
                            let data = assign(slot, job, now, self.f.timeout, &mut st.stats);
                            Next::Now(self.event_response(&data))
                        } else {
                            let (tx, rx) = oneshot::channel();
                            st.idle.push(Waiter { worker, tx });
                            Next::Wait(rx)
                        }
                    }
                }
            }
        };
        match step {
            Next::Now(r) => r,
            Next::Wait(rx) => match rx.await {
                Ok(data) => self.event_response(&data),
                // Retired or stopping: the supervisor kills this worker.
                Err(_) => std::future::pending().await,
            },
            Next::Gone => std::future::pending().await,
        }
    }

    fn event_response(&self, data: &JobData) -> Response<Full<Bytes>> {
        let remaining = data.deadline.saturating_duration_since(Instant::now());
        let deadline_ms = (SystemTime::now() + remaining)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut b = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("lambda-runtime-aws-request-id", data.request_id.as_str())
            .header("lambda-runtime-deadline-ms", deadline_ms.to_string())
            .header("lambda-runtime-invoked-function-arn", self.arn.as_str());
        if let Some(t) = &data.trace {
            b = b.header("lambda-runtime-trace-id", t.as_str());
        }
        b.body(Full::new(data.payload.clone()))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "bad invocation headers"))
    }

    /// A worker answered request `rid` (result or function error).
    fn respond(&self, worker: u64, rid: &str, result: Result<Reply, ExecError>) -> StatusCode {
        let now = Instant::now();
        let running = {
            let mut st = self.lock();
            let Some(slot) = st.slots.get_mut(&worker) else {
                return StatusCode::GONE;
            };
            if slot
                .current
                .as_ref()
                .is_none_or(|r| r.data.request_id != rid)
            {
                return StatusCode::BAD_REQUEST;
            }
            let running = slot.current.take();
            slot.phase = Phase::Returning;
            slot.wake.notify_one();
            st.consecutive_crashes = 0;
            running
        };
        if let Some(r) = running {
            self.finish(r, result, now);
        }
        StatusCode::ACCEPTED
    }

    /// `POST …/init/error`: the worker could not initialise; the invocation
    /// that waits longest gets the error.
    fn init_error(&self, worker: u64, error_type: String, message: String) {
        tracing::warn!(function = %self.name, worker, %error_type, %message, "worker init error");
        let job = {
            let mut st = self.lock();
            st.stats.init_errors += 1;
            if let Some(slot) = st.slots.get_mut(&worker) {
                slot.init_failed = true;
            }
            take_queued(&mut st.queue)
        };
        if let Some(job) = job {
            let _ = job.reply.send(Outcome::unrun(ExecError::Function {
                error_type,
                message,
            }));
        }
    }
}

// ---- state ----

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Job>,
    /// Workers parked in `next`, most recently idle last.
    idle: Vec<Waiter>,
    slots: HashMap<u64, Slot>,
    /// Workers decided on but not yet spawned.
    reserved: usize,
    draining: bool,
    consecutive_crashes: u32,
    backoff_until: Option<Instant>,
    stats: FunctionStats,
}

#[derive(Debug)]
struct Slot {
    spawned: Instant,
    /// First `next`.
    ready: Option<Instant>,
    phase: Phase,
    current: Option<Running>,
    idle_since: Instant,
    /// Wakes the supervisor when deadlines or idleness change.
    wake: Arc<Notify>,
    init_failed: bool,
    /// Invocations handed to this worker.
    served: u64,
    /// The latest invocation handed to it (tags its log lines).
    last_request: String,
    /// The client of its streamed response went away: stop it.
    cancelled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Spawned, has not asked for work yet.
    Starting,
    /// Parked in `next`.
    Idle,
    /// Running an invocation.
    Busy,
    /// Answered; its next `next` is on the way.
    Returning,
    /// Being stopped after idling.
    Retiring,
}

#[derive(Debug)]
struct Job {
    seq: u64,
    data: JobData,
    reply: oneshot::Sender<Outcome>,
    enqueued: Instant,
}

#[derive(Debug, Clone)]
struct JobData {
    request_id: String,
    payload: Bytes,
    deadline: Instant,
    trace: Option<String>,
}

#[derive(Debug)]
struct Waiter {
    worker: u64,
    tx: oneshot::Sender<JobData>,
}

/// An invocation a worker is running.
#[derive(Debug)]
struct Running {
    data: JobData,
    /// Taken when the result is handed over (at its end, or at its first
    /// byte for a streamed response).
    reply: Option<oneshot::Sender<Outcome>>,
    enqueued: Instant,
    dispatched: Instant,
    /// Cold start: the worker's init time.
    init: Option<Duration>,
}

#[derive(Debug)]
struct Outcome {
    result: Result<Reply, ExecError>,
    queued: Duration,
    run: Duration,
    init: Option<Duration>,
}

impl Outcome {
    fn unrun(error: ExecError) -> Self {
        Self {
            result: Err(error),
            queued: Duration::ZERO,
            run: Duration::ZERO,
            init: None,
        }
    }
}

#[derive(Debug, Default)]
struct Reply {
    body: Bytes,
    content_type: Option<String>,
    /// A streamed response, from its first byte.
    stream: Option<BodyStream>,
}

/// What became of a pool when one of its workers went.
struct Settled {
    /// The job the worker was running.
    running: Option<Running>,
    /// The invocation that waited for a worker that never became ready.
    failed_init: Option<Job>,
    /// Workers to start now.
    spawns: usize,
    /// A crash backoff, after which workers are started again.
    backoff: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum Exit {
    Died(Option<std::process::ExitStatus>),
    Deadline,
    /// The client of its stream went away.
    Cancelled,
    Retired,
    Stopped,
}

enum Expiry {
    Removed,
    Starting,
    Taken,
}

/// Removes a job from the queue when its caller stops waiting.
struct Unqueue<'a> {
    pool: &'a LambdaPool,
    seq: u64,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        self.pool.unqueue(self.seq);
    }
}

enum Next {
    Now(Response<Full<Bytes>>),
    Wait(oneshot::Receiver<JobData>),
    Gone,
}

enum Stream {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

/// Makes `job` the worker's current invocation.
///
/// It is a cold start when it is the worker's first invocation and it
/// arrived before the worker was ready (it waited for the worker to start).
/// The run's deadline is the caller's, or `timeout` from now if earlier.
fn assign(
    slot: &mut Slot,
    mut job: Job,
    now: Instant,
    timeout: Duration,
    stats: &mut FunctionStats,
) -> JobData {
    job.data.deadline = job.data.deadline.min(now + timeout);
    slot.last_request.clone_from(&job.data.request_id);
    let ready = slot.ready.unwrap_or(now);
    let init = (slot.served == 0 && job.enqueued < ready)
        .then(|| ready.saturating_duration_since(slot.spawned));
    slot.served += 1;
    if let Some(d) = init {
        stats.cold_starts += 1;
        stats.cold_start_total += d;
        stats.last_cold_start = Some(d);
    }
    slot.phase = Phase::Busy;
    slot.current = Some(Running {
        data: job.data.clone(),
        reply: Some(job.reply),
        enqueued: job.enqueued,
        dispatched: now,
        init,
    });
    job.data
}

/// The oldest queued job whose caller still waits.
fn take_queued(queue: &mut VecDeque<Job>) -> Option<Job> {
    while let Some(job) = queue.pop_front() {
        if !job.reply.is_closed() {
            return Some(job);
        }
    }
    None
}

fn bind_loopback() -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

// ---- the Runtime API server of one worker ----

/// Serves one worker's Runtime API until aborted by its supervisor
/// (aborting drops every connection task with it).
async fn serve(listener: tokio::net::TcpListener, pool: Arc<LambdaPool>, worker: u64) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::debug!(%error, "runtime api accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if conns.len() >= MAX_CONNS_PER_WORKER {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        let svc = hyper::service::service_fn(move |req| {
            let pool = pool.clone();
            async move { Ok::<_, Infallible>(handle(&pool, worker, req).await) }
        });
        conns.spawn(async move {
            if !peer_allowed(&stream, peer) {
                return;
            }
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(%error, "runtime api connection ended");
            }
        });
    }
}

/// Whether `peer` may use this Runtime API: its socket must belong to the
/// user the workers run as, ours (see `peer`). Where socket diagnostics are not
/// available at all, nothing can be checked and the connection is served.
fn peer_allowed(stream: &tokio::net::TcpStream, peer: std::net::SocketAddr) -> bool {
    let Ok(local) = stream.local_addr() else {
        return false;
    };
    // Inline, not on the blocking pool: one netlink request and its answer
    // (microseconds; a thread hop would cost more than the lookup).
    match super::peer::owner(peer, local) {
        // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
        super::peer::Owner::Uid(uid) if uid == unsafe { libc::geteuid() } => true,
        super::peer::Owner::Unavailable => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "socket diagnostics (netlink) unavailable: Runtime API connections are not checked for their user"
                )
            });
            true
        }
        other => {
            tracing::warn!(%peer, owner = ?other, "runtime api connection from another user refused");
            false
        }
    }
}

async fn handle(pool: &LambdaPool, worker: u64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    let path = head.uri.path();
    if let Route::Response(rid) = policy::route(&head.method, path) {
        let streaming = head
            .headers
            .get("lambda-runtime-function-response-mode")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
        if streaming {
            return status(stream_response(pool, worker, rid, &head.headers, body).await);
        }
    }
    // How much body the request may carry: none is read for `next` and
    // unknown paths.
    let limit = match policy::route(&head.method, path) {
        Route::Next | Route::Unknown => None,
        Route::Response(_) => Some(MAX_RESULT_BYTES),
        Route::Error(_) | Route::InitError => Some(MAX_ERROR_BYTES),
    };
    let body = match limit {
        None => Bytes::new(),
        Some(limit) => match read_body(body, limit).await {
            Ok(body) => body,
            Err(e) => return body_failed(pool, worker, &head.method, path, e),
        },
    };
    match parse_runtime_request(&head.method, path, &head.headers, &body) {
        RuntimeRequest::Next => pool.next(worker).await,
        RuntimeRequest::Response {
            request_id,
            content_type,
        } => {
            let content_type = content_type.map(str::to_string);
            status(pool.respond(
                worker,
                request_id,
                Ok(Reply {
                    body,
                    content_type,
                    stream: None,
                }),
            ))
        }
        RuntimeRequest::Error {
            request_id,
            error_type,
            message,
        } => status(pool.respond(
            worker,
            request_id,
            Err(ExecError::Function {
                error_type,
                message,
            }),
        )),
        RuntimeRequest::InitError {
            error_type,
            message,
        } => {
            pool.init_error(worker, error_type, message);
            status(StatusCode::ACCEPTED)
        }
        RuntimeRequest::Unknown => plain(StatusCode::NOT_FOUND, "unknown runtime api path"),
    }
}

/// `POST …/response` in streaming mode (`Lambda-Runtime-Function-Response-Mode:
/// streaming`, chunked): the caller gets the stream at once, and each
/// chunk as the worker sends it (hyper reads the socket only as fast as
/// the stream is taken: a slow client slows the function). The end is
/// the end of the chunked body; an error after the first byte is the
/// trailers `Lambda-Runtime-Function-Error-Type` and `-Body` (base64), as
/// AWS specifies. `lambda_runtime` (Rust, 1.x) sends the same two lines
/// as a DATA chunk instead of trailers; from a runtime whose user agent
/// says `aws-lambda-rust/`, a chunk that is exactly those lines is taken
/// as the error too, or its client would see a complete body.
async fn stream_response(
    pool: &LambdaPool,
    worker: u64,
    rid: &str,
    headers: &http::HeaderMap,
    mut body: Incoming,
) -> StatusCode {
    use crate::pipeline::body::StreamError;
    let (tx, rx) = body::channel();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rust_runtime = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.starts_with("aws-lambda-rust/"));
    let reply = Reply {
        body: Bytes::new(),
        content_type,
        stream: Some(rx),
    };
    let code = pool.begin_stream(worker, rid, reply);
    if code != StatusCode::ACCEPTED {
        return code;
    }
    let end = loop {
        let frame = tokio::select! {
            biased;
            () = tx.closed() => break None,
            f = body.frame() => f,
        };
        match frame {
            None => break Some(Ok(())),
            Some(Err(e)) => {
                break Some(Err(StreamError::Crashed(format!(
                    "reading the worker's stream: {e}"
                ))))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if rust_runtime {
                        if let Some(e) = in_body_error(&data) {
                            break Some(Err(e));
                        }
                    }
                    if tx.send(data).await.is_err() {
                        break None;
                    }
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        if let Some(e) = trailer_error(t) {
                            break Some(Err(e));
                        }
                    }
                }
            },
        }
    };
    match end {
        Some(Ok(())) => {
            tx.end().await;
            pool.end_stream(worker, rid, true)
        }
        Some(Err(e)) => {
            tracing::info!(function = %pool.name, req = %rid, error = %e, "function failed mid-stream");
            tx.abort(e).await;
            pool.end_stream(worker, rid, false)
        }
        None => {
            pool.cancel_stream(worker, rid);
            StatusCode::GONE
        }
    }
}

/// A mid-stream error in the trailers AWS specifies.
fn trailer_error(t: &http::HeaderMap) -> Option<crate::pipeline::body::StreamError> {
    let error_type = t
        .get("lambda-runtime-function-error-type")?
        .to_str()
        .unwrap_or("Unhandled")
        .to_string();
    let body = t
        .get("lambda-runtime-function-error-body")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    Some(stream_error(error_type, body))
}

/// `lambda_runtime`'s in-body form of the same error: a chunk that is
/// exactly `Lambda-Runtime-Function-Error-Type: T\r\nLambda-Runtime-Function-Error-Body: B64\r\n`.
fn in_body_error(data: &[u8]) -> Option<crate::pipeline::body::StreamError> {
    let text = std::str::from_utf8(data).ok()?;
    let rest = text.strip_prefix("Lambda-Runtime-Function-Error-Type: ")?;
    let (error_type, rest) = rest.split_once("\r\n")?;
    let b64 = rest
        .strip_prefix("Lambda-Runtime-Function-Error-Body: ")?
        .strip_suffix("\r\n")?;
    if error_type.contains('\r') || error_type.contains('\n') || b64.contains('\n') {
        return None;
    }
    Some(stream_error(error_type.to_string(), b64.as_bytes()))
}

/// The error of a stream: its message is the base64 body, decoded (the
/// `errorMessage` of a JSON error document, as Node's runtime sends).
fn stream_error(error_type: String, b64: &[u8]) -> crate::pipeline::body::StreamError {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim_ascii())
        .unwrap_or_else(|_| b64.to_vec());
    let (_, mut message) = parse_error(&decoded, None);
    if message.is_empty() {
        message = String::from_utf8_lossy(&decoded).into_owned();
    }
    crate::pipeline::body::StreamError::Function {
        error_type,
        message,
    }
}

/// The body of a request could not be read (or was over its limit): a
/// result that is too large fails the invocation.
fn body_failed(
    pool: &LambdaPool,
    worker: u64,
    method: &http::Method,
    path: &str,
    e: BodyError,
) -> Response<Full<Bytes>> {
    match (policy::route(method, path), e) {
        (Route::Response(rid), BodyError::TooLarge) => {
            let error = ExecError::Function {
                error_type: "Function.ResponseSizeTooLarge".to_string(),
                message: format!("response is larger than {MAX_RESULT_BYTES} bytes"),
            };
            pool.respond(worker, rid, Err(error));
            plain(StatusCode::PAYLOAD_TOO_LARGE, "response too large")
        }
        (Route::Response(_), BodyError::Read) => plain(StatusCode::BAD_REQUEST, "cannot read body"),
        _ => plain(StatusCode::BAD_REQUEST, "cannot read error body"),
    }
}

/// A worker's request to the Runtime API (2018-06-01), parsed without I/O
/// by [`parse_runtime_request`]; the server acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeRequest<'a> {
    /// `GET …/invocation/next`: the worker waits for an invocation.
    Next,
    /// `POST …/invocation/{request_id}/response`: the body is the result,
    /// passed on as sent.
    Response {
        request_id: &'a str,
        content_type: Option<&'a str>,
    },
    /// `POST …/invocation/{request_id}/error`: the function failed.
    Error {
        request_id: &'a str,
        error_type: String,
        message: String,
    },
    /// `POST …/init/error`: the worker could not initialise.
    InitError { error_type: String, message: String },
    /// Any other method or path (404).
    Unknown,
}

/// Parses what a worker sent: method and path (the route), the headers the
/// route reads (`content-type` of a result,
/// `lambda-runtime-function-error-type` of an error) and the body of an
/// error report (`{errorType, errorMessage}`, leniently: anything else
/// is the message). Never fails: anything unrecognised is `Unknown`. The
/// caller reads the body first, at most [`MAX_RESULT_BYTES`] for a
/// result and 256 KiB for an error report.
pub fn parse_runtime_request<'a>(
    method: &http::Method,
    path: &'a str,
    headers: &'a http::HeaderMap,
    body: &[u8],
) -> RuntimeRequest<'a> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let error_type = || header("lambda-runtime-function-error-type").map(str::to_string);
    match policy::route(method, path) {
        Route::Next => RuntimeRequest::Next,
        Route::Response(request_id) => RuntimeRequest::Response {
            request_id,
            content_type: header(http::header::CONTENT_TYPE.as_str()),
        },
        Route::Error(request_id) => {
            let (error_type, message) = parse_error(body, error_type());
            RuntimeRequest::Error {
                request_id,
                error_type,
                message,
            }
        }
        Route::InitError => {
            let (error_type, message) = parse_error(body, error_type());
            RuntimeRequest::InitError {
                error_type,
                message,
            }
        }
        Route::Unknown => RuntimeRequest::Unknown,
    }
}

enum BodyError {
    TooLarge,
    Read,
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Read),
    }
}

/// `{errorType, errorMessage, stackTrace}` from a worker; lenient, since
/// runtimes differ: the body's type wins over the header's, and an empty
/// type counts as none.
fn parse_error(body: &[u8], header: Option<String>) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
        #[serde(rename = "errorMessage")]
        error_message: Option<String>,
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let error_type = parsed
        .as_ref()
        .and_then(|b| b.error_type.clone())
        .filter(|t| !t.is_empty())
        .or(header.filter(|t| !t.is_empty()))
        .unwrap_or_else(|| "Unhandled".to_string());
    let mut message = parsed
        .and_then(|b| b.error_message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    (error_type, message)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let text = match code {
        StatusCode::ACCEPTED => r#"{"status":"OK"}"#,
        StatusCode::BAD_REQUEST => {
            r#"{"errorType":"InvalidRequestID","errorMessage":"no such invocation in flight on this worker"}"#
        }
        StatusCode::GONE => {
            r#"{"errorType":"WorkerGone","errorMessage":"this worker is being stopped"}"#
        }
        _ => "{}",
    };
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}

fn plain(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_requests() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert(
            "lambda-runtime-function-error-type",
            "Runtime.X".parse().unwrap(),
        );
        let (g, p) = (http::Method::GET, http::Method::POST);
        let parse = |m, path, body: &[u8]| parse_runtime_request(m, path, &h, body);
        assert_eq!(
            parse(&g, "/2018-06-01/runtime/invocation/next", b""),
            RuntimeRequest::Next
        );
        assert_eq!(
            parse(&p, "/2018-06-01/runtime/invocation/r1/response", b"x"),
            RuntimeRequest::Response {
                request_id: "r1",
                content_type: Some("text/plain")
            }
        );
        assert_eq!(
            parse(&p, "/2018-06-01/runtime/invocation/r1/error", b"oops"),
            RuntimeRequest::Error {
                request_id: "r1",
                error_type: "Runtime.X".into(),
                message: "oops".into()
            }
        );
        assert_eq!(
            parse(
                &p,
                "/2018-06-01/runtime/init/error",
                br#"{"errorType":"ImportError","errorMessage":"no module"}"#
            ),
            RuntimeRequest::InitError {
                error_type: "ImportError".into(),
                message: "no module".into()
            }
        );
        assert_eq!(
            parse(&g, "/2018-06-01/runtime/init/error", b""),
            RuntimeRequest::Unknown
        );
    }

    #[test]
    fn error_bodies() {
        let (t, m) = parse_error(
            br#"{"errorType":"ValueError","errorMessage":"bad","stackTrace":[]}"#,
            Some("Unhandled".into()),
        );
        assert_eq!((t.as_str(), m.as_str()), ("ValueError", "bad"));
        let (t, m) = parse_error(b"not json", Some("Runtime.Oops".into()));
        assert_eq!((t.as_str(), m.as_str()), ("Runtime.Oops", "not json"));
        let (t, _) = parse_error(b"{}", None);
        assert_eq!(t, "Unhandled");
        // An empty type header is no type (found by fuzz/runtime_api).
        let (t, m) = parse_error(b"boom", Some(String::new()));
        assert_eq!((t.as_str(), m.as_str()), ("Unhandled", "boom"));
        let (t, _) = parse_error(br#"{"errorType":""}"#, Some(String::new()));
        assert_eq!(t, "Unhandled");
        let long = format!(
            r#"{{"errorType":"X","errorMessage":"{}"}}"#,
            "é".repeat(5000)
        );
        let (_, m) = parse_error(long.as_bytes(), None);
        assert!(m.len() <= MAX_ERROR_MESSAGE);
    }
}
