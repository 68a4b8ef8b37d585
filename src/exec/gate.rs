//! Admission of the executors that start something per invocation
//! (`command` processes, `wasm` instances): at most `concurrency.max` at
//! once, then the edge's queue (`[executors] queue`, `queue_timeout_ms`),
//! then `Saturated`. Also their counters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::config::{Function, FunctionName, Topology};

use super::{ExecError, FunctionStats, RETRY_AFTER};

#[derive(Debug)]
pub(crate) struct Gate {
    name: FunctionName,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: Arc<AtomicUsize>,
    queue_cap: usize,
    queue_timeout: Duration,
    stats: Mutex<FunctionStats>,
}

/// One admitted invocation: its permit, counted as running until dropped.
pub(crate) struct Admitted {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub(crate) fn new(f: &Function, topology: &Topology) -> Self {
        Self {
            name: f.name.clone(),
            permits: Arc::new(Semaphore::new(f.concurrency_max.max(1) as usize)),
            waiting: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            queue_cap: topology.executors.queue as usize,
            queue_timeout: topology.executors.queue_timeout,
            stats: Mutex::new(FunctionStats::default()),
        }
    }

    /// Counts the invocation and waits for a free slot, in the queue if
    /// none is free: `Saturated` when the queue is full or the wait passes
    /// `queue_timeout`, `Timeout` when it reaches `deadline` first.
    pub(crate) async fn enter(
        &self,
        now: Instant,
        deadline: Instant,
    ) -> Result<Admitted, ExecError> {
        self.bump(|s| s.invocations += 1);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_cap {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.saturated());
                }
                let limit = (now + self.queue_timeout).min(deadline);
                let got = timeout_at(limit, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(ExecError::ShuttingDown),
                    Err(_) if limit >= deadline => return Err(ExecError::Timeout(deadline - now)),
                    Err(_) => return Err(self.saturated()),
                }
            }
        };
        self.running.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted {
            _permit: permit,
            running: self.running.clone(),
        })
    }

    fn saturated(&self) -> ExecError {
        self.bump(|s| s.saturated += 1);
        ExecError::Saturated {
            function: self.name.to_string(),
            retry_after: RETRY_AFTER,
        }
    }

    /// The counters, with running and waiting as they are now.
    pub(crate) fn stats(&self) -> FunctionStats {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.function = self.name.to_string();
        let running = self.running.load(Ordering::Relaxed);
        s.workers = running;
        s.busy = running;
        s.queued = self.waiting.load(Ordering::Relaxed);
        s
    }

    /// Invocations running plus waiting (no lock, no allocation).
    pub(crate) fn backlog(&self) -> usize {
        self.running.load(Ordering::Relaxed) + self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(&self, f: impl FnOnce(&mut FunctionStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }
}
