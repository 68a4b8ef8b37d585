//! Local executors: the worker processes that run functions on this edge.
//!
//! `exec` owns processes (start, scale, restart, kill) and the loopback
//! Lambda Runtime API server they talk to. It knows nothing of QUIC, DNS or
//! other edges: callers hand it an `Invocation` and get bytes or an
//! `ExecError` back.
//!
//! FIXME(issue 4): this first cut runs every function as a one-shot
//! process per invocation (`command` semantics); Lambda worker pools with
//! the Runtime API replace it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::config::{EdgeId, Function, Topology};

/// One request to run a function.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Function name (lower case, as in the topology).
    pub function: String,
    pub payload: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    pub request_id: String,
    /// W3C traceparent, passed to the function as its trace id.
    pub trace: Option<String>,
}

/// A function's successful result.
#[derive(Debug, Clone)]
pub struct Output {
    pub body: Bytes,
    /// Content type the function set, if any.
    pub content_type: Option<String>,
    pub timing: Timing,
}

/// Where the time of one invocation went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Waiting for a worker.
    pub queued: Duration,
    /// From handing the event to the worker until its result.
    pub run: Duration,
    /// A new worker had to be started for this invocation.
    pub cold_start: bool,
}

/// Why an invocation did not produce a result. `Clone` so coalesced
/// waiters can share one error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// No function of that name is hosted on this edge.
    #[error("function {0:?} is not hosted on this edge")]
    UnknownFunction(String),
    /// The pool and its queue are full; retry after the given time.
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

/// The executors of one edge.
#[derive(Debug)]
pub struct Executors {
    edge: EdgeId,
    topology: Arc<Topology>,
}

impl Executors {
    pub fn new(topology: Arc<Topology>, edge: EdgeId) -> Self {
        Self { edge, topology }
    }

    /// The function if this edge hosts it.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.topology
            .function(name)
            .filter(|f| f.hosted_on(self.edge))
    }

    /// Runs one invocation to completion or failure.
    pub async fn invoke(&self, inv: Invocation) -> Result<Output, ExecError> {
        let f = self
            .function(&inv.function)
            .ok_or_else(|| ExecError::UnknownFunction(inv.function.clone()))?;
        let started = Instant::now();
        let deadline = inv.deadline.min(started + f.timeout);
        let (prog, args) = f
            .executor
            .command
            .split_first()
            .ok_or_else(|| ExecError::Internal("empty command".into()))?;
        let mut child = tokio::process::Command::new(prog)
            .args(args)
            .current_dir(&f.executor.workdir)
            .envs(&f.executor.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ExecError::Internal(format!("cannot start {prog}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let payload = inv.payload.clone();
            tokio::spawn(async move {
                let _ = stdin.write_all(&payload).await;
            });
        }
        let out = tokio::time::timeout_at(deadline, child.wait_with_output())
            .await
            .map_err(|_| ExecError::Timeout(deadline - started))?
            .map_err(|e| ExecError::Internal(e.to_string()))?;
        if !out.status.success() {
            let tail = String::from_utf8_lossy(&out.stderr);
            let tail: String = tail
                .chars()
                .rev()
                .take(512)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(ExecError::Function {
                error_type: "CommandFailed".into(),
                message: format!("{}: {}", out.status, tail.trim()),
            });
        }
        Ok(Output {
            body: Bytes::from(out.stdout),
            content_type: None,
            timing: Timing {
                queued: Duration::ZERO,
                run: started.elapsed(),
                cold_start: true,
            },
        })
    }
}
