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

    pub(crate) async fn invoke(&self, inv: Invocation) -> Result<Output, ExecError> {
        let now = Instant::now();
        let deadline = inv.deadline;
        if deadline <= now {
            return Err(ExecError::Timeout(Duration::ZERO));
        }
        let admitted = self.gate.enter(now, deadline).await?;
        let started = Instant::now();
        let deadline = deadline.min(started + self.f.timeout);
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

    async fn run(
        &self,
        request_id: &str,
        trace: Option<&str>,
        payload: Bytes,
        deadline: Instant,
        started: Instant,
    ) -> Result<(Bytes, Option<String>), ExecError> {
        // TRACEPARENT: the W3C trace context as an environment variable
        // (the OpenTelemetry convention for processes).
        let env = [
            ("FNROUTE_FUNCTION", self.f.name.to_string()),
            ("FNROUTE_REQUEST_ID", request_id.to_string()),
            ("TRACEPARENT", trace.unwrap_or_default().to_string()),
        ];
        let mut group =
            Group::spawn(&self.f, &env, true).map_err(|e| ExecError::Internal(e.to_string()))?;
        self.gate.bump(|s| s.spawned += 1);
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
