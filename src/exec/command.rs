//! `kind = "command"`: one process per invocation. The event goes to
//! stdin, stdout is the result, a non-zero exit is a function error carrying
//! the tail of stderr, and the process group is killed at the deadline.
//! Concurrency is bounded by `concurrency_max` (a semaphore) and the wait
//! for a permit by the edge's queue size and queue timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{Function, Topology};

use super::gate::Gate;
use super::policy::Tail;
use super::process::{self, Group};
use super::{ExecError, FunctionStats, Invocation, Meter, Output, Timing, MAX_RESULT_BYTES};

/// Bytes of stderr kept for the error message.
const STDERR_TAIL: usize = 2048;

#[derive(Debug)]
pub(crate) struct CommandPool {
    f: Function,
    name: Arc<str>,
    gate: Gate,
    meter: Arc<Meter>,
    stop: CancellationToken,
}

impl CommandPool {
    pub(crate) fn new(
        f: Function,
        topology: &Topology,
        meter: Arc<Meter>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            name: Arc::from(f.name.as_str()),
            gate: Gate::new(&f, topology),
            meter,
            stop,
            f,
        }
    }

    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Output, ExecError> {
        let now = Instant::now();
        let deadline = inv.deadline;
        if deadline <= now {
            return Err(ExecError::Timeout(Duration::ZERO));
        }
        let admitted = self.gate.enter(now, deadline).await?;
        let started = Instant::now();
        let deadline = deadline.min(started + self.f.timeout);
        if self.f.streaming.is_some() {
            return self.stream(inv, admitted, now, started, deadline).await;
        }
        let result = self
            .run(
                &inv.request_id,
                inv.trace.as_deref(),
                inv.payload,
                deadline,
                started,
            )
            .await;
        drop(admitted);
        let run = started.elapsed();
        if !matches!(result, Err(ExecError::Internal(_))) {
            self.meter
                .record(&self.f, &inv.request_id, run, result.is_ok());
        }
        let (body, cache_control) = result?;
        Ok(Output {
            body,
            stream: None,
            content_type: None,
            cache_control,
            timing: Timing {
                queued: started.saturating_duration_since(now),
                run,
                cold_start: true,
                init: Duration::ZERO,
            },
        })
    }

    pub(crate) fn stats(&self) -> FunctionStats {
        self.gate.stats()
    }

    /// Invocations running plus waiting (no lock, no allocation).
    pub(crate) fn backlog(&self) -> usize {
        self.gate.backlog()
    }

    /// A streaming command: its stdout goes out as it is written. Returns
    /// at the first byte (or at a clean exit without output); from then on
    /// a task owns the process and pumps its output into the stream. The
    /// exit status decides the stream's end: 0 ends it, anything else
    /// aborts it (the client never sees a failed command's output as a
    /// complete body).
    async fn stream(
        self: &Arc<Self>,
        inv: Invocation,
        admitted: super::gate::Admitted,
        now: Instant,
        started: Instant,
        deadline: Instant,
    ) -> Result<Output, ExecError> {
        use crate::pipeline::body::{self, StreamError};
        let mut group = self.spawn(&inv.request_id, inv.trace.as_deref())?;
        let stdin = group.child.stdin.take();
        let Some(mut stdout) = group.child.stdout.take() else {
            return Err(ExecError::Internal("no stdout pipe".into()));
        };
        let stderr = group.child.stderr.take();
        let payload = inv.payload;
        // Its own task: a command may write before it reads all its input.
        tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&payload).await;
            }
        });
        let errors = {
            let name = self.name.clone();
            let rid = inv.request_id.clone();
            tokio::spawn(async move {
                let mut tail = Tail::new(STDERR_TAIL);
                if let Some(stderr) = stderr {
                    process::forward_lines(stderr, name, "stderr", || rid.clone(), Some(&mut tail))
                        .await;
                }
                tail
            })
        };
        let mut buf = bytes::BytesMut::with_capacity(body::CHUNK);
        // Until the first byte, failures are the invocation's.
        let first = tokio::select! {
            r = timeout_at(deadline, stdout.read_buf(&mut buf)) => r.ok(),
            () = self.stop.cancelled() => None,
        };
        let first = match first {
            None => {
                group.kill_and_reap().await;
                errors.abort();
                if self.stop.is_cancelled() {
                    return Err(ExecError::ShuttingDown);
                }
                self.gate.bump(|s| s.kills += 1);
                self.meter
                    .record(&self.f, &inv.request_id, started.elapsed(), false);
                return Err(ExecError::Timeout(started.elapsed()));
            }
            Some(Ok(0)) | Some(Err(_)) => None,
            Some(Ok(_)) => Some(buf.split().freeze()),
        };
        let timing = |run| Timing {
            queued: started.saturating_duration_since(now),
            run,
            cold_start: true,
            init: Duration::ZERO,
        };
        let Some(first) = first else {
            // No output at all: the exit status is the whole answer.
            let status = timeout_at(deadline, group.child.wait()).await;
            group.sweep();
            let tail = errors.await.unwrap_or_else(|_| Tail::new(STDERR_TAIL));
            let result = match status {
                Ok(status) => self.outcome(Vec::new(), &tail, status),
                Err(_) => {
                    group.kill_and_reap().await;
                    self.gate.bump(|s| s.kills += 1);
                    Err(ExecError::Timeout(started.elapsed()))
                }
            };
            let run = started.elapsed();
            self.meter
                .record(&self.f, &inv.request_id, run, result.is_ok());
            let (body, cache_control) = result?;
            return Ok(Output {
                body,
                stream: None,
                content_type: None,
                cache_control,
                timing: timing(run),
            });
        };
        let (tx, rx) = body::channel();
        let run = started.elapsed();
        let pool = Arc::clone(self);
        let rid = inv.request_id;
        tokio::spawn(async move {
            let _admitted = admitted;
            let mut next = Some(first);
            let end = loop {
                if let Some(b) = next.take() {
                    if tx.send(b).await.is_err() {
                        break None;
                    }
                }
                tokio::select! {
                    biased;
                    () = tx.closed() => break None,
                    () = pool.stop.cancelled() => break Some(Err(StreamError::ShuttingDown)),
                    () = tokio::time::sleep_until(deadline) => {
                        break Some(Err(StreamError::Timeout(pool.f.timeout)))
                    }
                    r = stdout.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => break Some(Ok(())),
                        Ok(_) => next = Some(buf.split().freeze()),
                    },
                }
                if buf.capacity() < 4096 {
                    buf.reserve(body::CHUNK);
                }
            };
            let ok = match end {
                // The client went away: the command is stopped.
                None => {
                    group.kill_and_reap().await;
                    pool.gate.bump(|s| s.kills += 1);
                    errors.abort();
                    tracing::debug!(req = %rid, "stream cancelled; command killed");
                    false
                }
                Some(Err(e)) => {
                    group.kill_and_reap().await;
                    pool.gate.bump(|s| s.kills += 1);
                    errors.abort();
                    tx.abort(e).await;
                    false
                }
                Some(Ok(())) => {
                    let status = timeout_at(deadline, group.child.wait()).await;
                    group.sweep();
                    match status {
                        Ok(Ok(s)) if s.success() => {
                            tx.end().await;
                            true
                        }
                        Ok(status) => {
                            let tail = errors.await.unwrap_or_else(|_| Tail::new(STDERR_TAIL));
                            let message = match status {
                                Ok(s) => format!("{s}: {}", tail.text()),
                                Err(e) => format!("waiting for the command: {e}"),
                            };
                            tx.abort(StreamError::Function {
                                error_type: "CommandFailed".into(),
                                message,
                            })
                            .await;
                            false
                        }
                        Err(_) => {
                            group.kill_and_reap().await;
                            pool.gate.bump(|s| s.kills += 1);
                            tx.abort(StreamError::Timeout(pool.f.timeout)).await;
                            false
                        }
                    }
                }
            };
            pool.meter.record(&pool.f, &rid, started.elapsed(), ok);
        });
        Ok(Output {
            body: Bytes::new(),
            stream: Some(rx),
            content_type: None,
            cache_control: None,
            timing: timing(run),
        })
    }

    /// The command's process group for one invocation, counted.
    fn spawn(&self, request_id: &str, trace: Option<&str>) -> Result<Group, ExecError> {
        // TRACEPARENT: the W3C trace context as an environment variable
        // (the OpenTelemetry convention for processes).
        let env = [
            ("FNROUTE_FUNCTION", self.f.name.to_string()),
            ("FNROUTE_REQUEST_ID", request_id.to_string()),
            ("TRACEPARENT", trace.unwrap_or_default().to_string()),
        ];
        let group =
            Group::spawn(&self.f, &env, true).map_err(|e| ExecError::Internal(e.to_string()))?;
        self.gate.bump(|s| s.spawned += 1);
        Ok(group)
    }

    async fn run(
        &self,
        request_id: &str,
        trace: Option<&str>,
        payload: Bytes,
        deadline: Instant,
        started: Instant,
    ) -> Result<(Bytes, Option<String>), ExecError> {
        let mut group = self.spawn(request_id, trace)?;
        let stdin = group.child.stdin.take();
        let stdout = group.child.stdout.take();
        let stderr = group.child.stderr.take();
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A command may exit without reading its input.
                let _ = stdin.write_all(&payload).await;
            }
        };
        let read = async move {
            let mut out = Vec::new();
            if let Some(stdout) = stdout {
                let limit = u64::try_from(MAX_RESULT_BYTES).unwrap_or(u64::MAX) + 1;
                let _ = stdout.take(limit).read_to_end(&mut out).await;
            }
            out
        };
        let name = self.name.clone();
        let rid = request_id.to_string();
        let errors = async move {
            let mut tail = Tail::new(STDERR_TAIL);
            if let Some(stderr) = stderr {
                process::forward_lines(stderr, name, "stderr", || rid.clone(), Some(&mut tail))
                    .await;
            }
            tail
        };
        let wait = async {
            let status = group.child.wait().await;
            // Stragglers in the group die with the command.
            group.sweep();
            status
        };
        let done = tokio::select! {
            r = timeout_at(deadline, async { tokio::join!(write, read, errors, wait) }) => r.ok(),
            () = self.stop.cancelled() => None,
        };
        let Some(((), out, tail, status)) = done else {
            group.kill_and_reap().await;
            if self.stop.is_cancelled() {
                return Err(ExecError::ShuttingDown);
            }
            self.gate.bump(|s| s.kills += 1);
            return Err(ExecError::Timeout(started.elapsed()));
        };
        self.outcome(out, &tail, status)
    }

    /// A finished command's result: its output, unless it was too large or
    /// the command failed (then its stderr's tail is the message).
    fn outcome(
        &self,
        out: Vec<u8>,
        tail: &Tail,
        status: std::io::Result<std::process::ExitStatus>,
    ) -> Result<(Bytes, Option<String>), ExecError> {
        let status =
            status.map_err(|e| ExecError::Internal(format!("waiting for {}: {e}", self.name)))?;
        if out.len() > MAX_RESULT_BYTES {
            return Err(ExecError::Function {
                error_type: "Function.ResponseSizeTooLarge".to_string(),
                message: format!("output is larger than {MAX_RESULT_BYTES} bytes"),
            });
        }
        if !status.success() {
            return Err(ExecError::Function {
                error_type: "CommandFailed".to_string(),
                message: format!("{status}: {}", tail.text()),
            });
        }
        Ok((Bytes::from(out), tail.cache_control().map(str::to_string)))
    }
}
