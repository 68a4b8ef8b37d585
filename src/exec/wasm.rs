//! `kind = "wasm"`: `wasi:http/proxy` components run in-process on
//! Wasmtime, a fresh instance per invocation.
//!
//! - One [`Engine`] per process, on the pooling allocator (instance slots
//!   and copy-on-write memory images are reused, so an instantiation is
//!   microseconds), with epoch interruption: a thread ticks the epoch every
//!   [`EPOCH_TICK`], every running instance yields to tokio at each tick
//!   and fails with [`DeadlineExceeded`] once its deadline has passed.
//! - Components are compiled once per content hash (`prepare`, before any
//!   port is bound and before a reload is applied) and the compiled
//!   artifact is kept on disk under `state_dir/wasm-cache/`: a restart or a
//!   reload with the same bytes compiles nothing.
//! - Each invocation gets a new `Store` with the function's limits: linear
//!   memory capped at `memory_mb` (`memory.grow` fails beyond it, as the
//!   spec says; the failure is remembered so the error can say so), no
//!   filesystem (no preopens), no sockets, the environment of the
//!   topology's `env` only, stdout and stderr to the log line by line, and
//!   outgoing HTTP only to the function's `allow_outbound`.
//! - The request reaches the guest as a `wasi:http` incoming request: for
//!   an `event` function a `POST /` whose body is the event; for an `http`
//!   function the client's request, rebuilt from the function URL event the
//!   pipeline made of it (so one representation crosses the cache, the
//!   mesh and the executors). The guest's response becomes the result.
//!
//! Invariants: the guest runs in its own task, owned by the invocation (a
//! caller that goes away drops the instance); every invocation ends by its
//! deadline whatever the guest does, host calls included (a wall-clock
//! bound around the whole call and its body, besides the epochs); a
//! response body is read up to [`MAX_RESULT_BYTES`] and no further.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::config::{Function, FunctionName, Interface, Topology};
use crate::pipeline::body::BodyStream;

use super::gate::Gate;
use super::policy::Tail;
use super::{ExecError, FunctionStats, Invocation, Meter, Output, Timing, MAX_RESULT_BYTES};

/// How often the epoch advances: the granularity of deadlines inside
/// guest code and of its yields to the other tasks of its thread.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Resources (requests, bodies, streams, fields) one instance may hold.
const MAX_RESOURCES: usize = 10_000;
/// Bytes of one line of guest output that reach the log.
const LOG_LINE: usize = 4096;
/// Bytes of each pooled linear memory reset in place rather than unmapped.
const KEEP_RESIDENT: usize = 2 << 20;
/// Bytes of a failed guest's stderr kept for its error message.
const STDERR_TAIL: usize = 512;

// ---------------------------------------------------------------- runtime

/// The process's engine, its linker and the components compiled so far
/// (by content hash; an entry is dropped by nothing: a process compiles
/// few distinct components).
struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    compiled: Mutex<HashMap<[u8; 32], Arc<ProxyPre<Host>>>>,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| Runtime::new().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

impl Runtime {
    fn new() -> anyhow::Result<Self> {
        let engine = match Engine::new(&config(true)) {
            Ok(e) => e,
            // The pool reserves address space up front (a memory slot per
            // instance); where that is refused (a `ulimit -v`), fresh
            // mappings per instance are slower but work.
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "wasm: the pooling allocator is unavailable; instances use on-demand memory");
                Engine::new(&config(false))?
            }
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            })?;
        let mut linker: Linker<Host> = Linker::new(&engine);
        // The whole WASI 0.2 set, not only the proxy world: guests made by
        // componentize-py and jco import wasi:cli/environment,
        // wasi:filesystem and friends. Nothing is granted through them:
        // no preopened folder, sockets off, `env` only.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
        })
    }
}

fn config(pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16));
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        // A componentize-py guest holds 14 core instances and one memory:
        // room for a few hundred such instances at once. Unused slots are
        // address space, not memory.
        pool.total_component_instances(1000)
            .total_core_instances(8000)
            .total_memories(1000)
            .total_tables(4000)
            .total_stacks(1000)
            .max_unused_warm_slots(64)
            // A freed slot's memory is reset in place (only its dirty
            // pages, found with PAGEMAP_SCAN on Linux 6.7+, else the low
            // bytes) instead of being unmapped and faulted in again by
            // the next instance: the first profile of instantiate-and-run
            // spent most of its time in page faults and madvise. Bounds
            // what stays resident: warm slots x these sizes.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// Why components could not be made ready (one line per function).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct PrepareError(pub Vec<String>);

/// Compiles (or loads from `state_dir/wasm-cache`) the component of every
/// `wasm` function that `edges` host (`None`: every function), and checks
/// that each is a `wasi:http/proxy` component whose imports this host
/// provides. CPU-heavy the first time: call it off the async workers.
pub fn prepare(topology: &Topology, edges: Option<&[usize]>) -> Result<(), PrepareError> {
    let wanted: Vec<&Function> = topology
        .functions
        .iter()
        .filter(|f| f.executor.component.is_some())
        .filter(|f| edges.is_none_or(|ids| ids.iter().any(|&e| f.hosted_on(e))))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let rt = runtime().map_err(|e| PrepareError(vec![format!("wasm runtime: {e}")]))?;
    let cache = topology.state_dir.join("wasm-cache");
    let mut errors = Vec::new();
    for f in wanted {
        let Some(c) = &f.executor.component else {
            continue;
        };
        if let Err(why) = rt.prepare(&c.path, &c.sha256, &cache) {
            errors.push(format!(
                "function {}: component {}: {why}",
                f.name,
                c.path.display()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PrepareError(errors))
    }
}

impl Runtime {
    fn prepare(&self, path: &Path, sha256: &[u8; 32], cache: &Path) -> Result<(), String> {
        if self.lookup(sha256).is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (component, from_cache) = self.load(path, sha256, cache)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{e:#}"))?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            format!("{e:#} (a wasi:http/proxy component exports wasi:http/incoming-handler)")
        })?;
        tracing::info!(
            component = %path.display(),
            from_cache,
            took_ms = started.elapsed().as_millis() as u64,
            "wasm component ready"
        );
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*sha256, Arc::new(pre));
        Ok(())
    }

    fn lookup(&self, sha256: &[u8; 32]) -> Option<Arc<ProxyPre<Host>>> {
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned()
    }

    /// The component at `path`, from the disk cache if it was compiled
    /// before by this engine's configuration, else compiled and cached.
    fn load(
        &self,
        path: &Path,
        sha256: &[u8; 32],
        cache: &Path,
    ) -> Result<(Component, bool), String> {
        let wasm = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        if Sha256::digest(&wasm).as_slice() != sha256 {
            return Err("it changed since the topology was loaded; reload again".into());
        }
        let cached = cache.join(format!("{}.cwasm", hex(&self.cache_key(sha256))));
        if cached.is_file() {
            // SAFETY: `deserialize_file` trusts its input to be a
            // compiled artifact of this engine. Only this function writes
            // into the cache folder (mode 0700), by a rename after a whole
            // write, under a name that includes the engine's compatibility
            // hash; Wasmtime also checks the artifact's header and version.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok((c, true)),
                Err(error) => {
                    tracing::warn!(file = %cached.display(), error = %format!("{error:#}"), "wasm: unusable cached artifact; compiling again");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let component = Component::new(&self.engine, &wasm).map_err(|e| format!("{e:#}"))?;
        if let Err(error) = store_artifact(cache, &cached, &component) {
            tracing::warn!(folder = %cache.display(), %error, "wasm: cannot cache the compiled component; it will be compiled again next start");
        }
        Ok((component, false))
    }

    /// SHA-256 of the component's hash and everything about this engine
    /// that a compiled artifact depends on (Wasmtime's version, target,
    /// Cranelift settings, enabled features).
    fn cache_key(&self, sha256: &[u8; 32]) -> [u8; 32] {
        struct ShaHasher(Sha256);
        impl std::hash::Hasher for ShaHasher {
            fn write(&mut self, b: &[u8]) {
                self.0.update(b);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let mut h = ShaHasher(Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(sha256);
        h.0.finalize().into()
    }
}

fn store_artifact(cache: &Path, file: &Path, component: &Component) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- the pool

/// One wasm function on this edge: its component, ready to instantiate,
/// and the bound on instances at once (`concurrency.max`) with the edge's
/// queue in front of it.
pub(crate) struct WasmPool {
    f: Function,
    pre: Result<Arc<ProxyPre<Host>>, String>,
    /// `Host` of the event requests: `<function>.<zone>`.
    authority: String,
    env: Arc<[(String, String)]>,
    allow: Arc<[String]>,
    gate: Gate,
    meter: Arc<Meter>,
    stop: CancellationToken,
}

impl std::fmt::Debug for WasmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPool")
            .field("function", &self.f.name)
            .field("ready", &self.pre.is_ok())
            .finish_non_exhaustive()
    }
}

impl WasmPool {
    pub(crate) fn new(
        f: Function,
        topology: &Topology,
        meter: Arc<Meter>,
        stop: CancellationToken,
    ) -> Self {
        // `prepare` ran for this topology before its pools were made; a
        // component missing here is reported by every invocation.
        let pre = match &f.executor.component {
            None => Err("no component".to_string()),
            Some(c) => runtime().and_then(|rt| {
                rt.lookup(&c.sha256)
                    .ok_or_else(|| format!("component {} was not prepared", c.path.display()))
            }),
        };
        Self {
            authority: format!("{}.{}", f.name, topology.zone.trim_end_matches('.')),
            env: f
                .executor
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            allow: f.allow_outbound.iter().cloned().collect(),
            gate: Gate::new(&f, topology),
            meter,
            stop,
            pre,
            f,
        }
    }

    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Output, ExecError> {
        let now = Instant::now();
        if inv.deadline <= now {
            return Err(ExecError::Timeout(Duration::ZERO));
        }
        let pre = self.pre.clone().map_err(ExecError::Internal)?;
        let admitted = self.gate.enter(now, inv.deadline).await?;
        let started = Instant::now();
        let deadline = inv.deadline.min(started + self.f.timeout);
        let result = tokio::select! {
            r = self.run(&pre, &inv, deadline) => r,
            () = self.stop.cancelled() => Err(ExecError::ShuttingDown),
        };
        let (result, stream) = match result {
            Ok((Ran::Streaming(s), init)) => {
                let reply = Reply {
                    body: Bytes::new(),
                    content_type: s.content_type.clone(),
                    cache_control: None,
                };
                (
                    Ok((reply, init)),
                    Some(self.pump(*s, admitted, inv.request_id.clone(), started)),
                )
            }
            Ok((Ran::Whole(r), init)) => {
                drop(admitted);
                (Ok((r, init)), None)
            }
            Err(e) => {
                drop(admitted);
                (Err(e), None)
            }
        };
        let run = started.elapsed();
        // A stream is metered by its pump, at its end.
        if stream.is_none()
            && !matches!(
                result,
                Err(ExecError::Internal(_) | ExecError::ShuttingDown)
            )
        {
            self.meter
                .record(&self.f, &inv.request_id, run, result.is_ok());
        }
        match &result {
            Err(ExecError::Timeout(_)) => self.bump(|s| s.kills += 1),
            Err(ExecError::Crashed(_)) => self.bump(|s| s.crashes += 1),
            _ => {}
        }
        let (reply, init) = result?;
        self.bump(|s| {
            s.cold_starts += 1;
            s.spawned += 1;
            s.cold_start_total += init;
            s.last_cold_start = Some(init);
        });
        Ok(Output {
            body: reply.body,
            stream,
            content_type: reply.content_type,
            cache_control: reply.cache_control,
            timing: Timing {
                queued: started.saturating_duration_since(now),
                run,
                // Every invocation is a fresh instance: `cold` is its
                // instantiation time.
                cold_start: true,
                init,
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

    fn bump(&self, f: impl FnOnce(&mut FunctionStats)) {
        self.gate.bump(f);
    }

    /// Pumps a streaming guest's outgoing body into a stream. The task
    /// owns the instance: the stream ends only after the guest's call has
    /// returned cleanly (a trap after the last frame is an abort); a
    /// dropped stream drops the instance and frees its slot.
    fn pump(
        self: &Arc<Self>,
        s: Streaming,
        admitted: super::gate::Admitted,
        request_id: String,
        started: Instant,
    ) -> BodyStream {
        use crate::pipeline::body::{self, StreamError};
        let (tx, rx) = body::channel();
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let _admitted = admitted;
            let Streaming {
                prelude,
                mut body,
                guest,
                stderr,
                deadline,
                ..
            } = s;
            let end = async {
                if let Some(p) = prelude {
                    tx.send(p).await.ok()?;
                }
                loop {
                    let frame = tokio::select! {
                        biased;
                        () = tx.closed() => return None,
                        () = pool.stop.cancelled() => return Some(Err(StreamError::ShuttingDown)),
                        f = timeout_at(deadline, body.frame()) => f,
                    };
                    match frame {
                        Err(_) => return Some(Err(StreamError::Timeout(pool.f.timeout))),
                        Ok(None) => return Some(Ok(())),
                        Ok(Some(Err(e))) => {
                            return Some(Err(StreamError::Crashed(format!(
                                "the response body failed: {e}"
                            ))))
                        }
                        Ok(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                tx.send(data).await.ok()?;
                            }
                        }
                    }
                }
            }
            .await;
            let result = match end {
                // The client went away: dropping `guest` drops the instance.
                None => Err(ExecError::Internal("stream cancelled".into())),
                Some(Err(e)) => {
                    tx.abort(e.clone()).await;
                    Err(ExecError::Crashed(e.to_string()))
                }
                Some(Ok(())) => match guest.finish(deadline).await {
                    GuestEnd::Done(Ok(())) => {
                        tx.end().await;
                        Ok(())
                    }
                    other => {
                        let e = pool.failure(other, &stderr, started);
                        tx.abort(match &e {
                            ExecError::Timeout(_) => StreamError::Timeout(pool.f.timeout),
                            e => StreamError::Crashed(e.to_string()),
                        })
                        .await;
                        Err(e)
                    }
                },
            };
            pool.meter
                .record(&pool.f, &request_id, started.elapsed(), result.is_ok());
            match &result {
                Err(ExecError::Timeout(_)) => pool.bump(|s| s.kills += 1),
                Err(ExecError::Crashed(_)) => pool.bump(|s| s.crashes += 1),
                _ => {}
            }
        });
        rx
    }

    /// One instance: made, handed the request, its response read whole
    /// (or, for a streaming function, handed on as it is written).
    /// Returns the reply and the instantiation time.
    async fn run(
        &self,
        pre: &Arc<ProxyPre<Host>>,
        inv: &Invocation,
        deadline: Instant,
    ) -> Result<(Ran, Duration), ExecError> {
        let started = Instant::now();
        let request = match self.f.interface {
            Interface::Event => event_request(&self.authority, inv),
            Interface::Http => url_request(&self.authority, &inv.payload)?,
        };
        let stderr = Arc::new(Mutex::new(Tail::new(STDERR_TAIL)));
        let mut store = self.store(pre.engine(), deadline, &inv.request_id, &stderr);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let internal = |e: wasmtime::Error| ExecError::Internal(format!("{e:#}"));
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(internal)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(internal)?;
        let pre = pre.clone();
        let (init_tx, init_rx) = tokio::sync::oneshot::channel();
        // The guest runs in its own task: it writes the body after
        // `response-outparam.set`, while this task reads it (awaiting the
        // call first would deadlock on a body larger than the host's
        // buffer). Dropping `guest` (this invocation ends or its caller
        // goes away) aborts the task and drops the instance.
        let guest = AbortOnDrop(tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                let _ = init_tx.send(t.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            }
            .await;
            (r, store.data().limits.refused)
        }));
        let head = match timeout_at(deadline, rx).await {
            Err(_) => return Err(ExecError::Timeout(started.elapsed())),
            Ok(Ok(Ok(resp))) => resp,
            Ok(Ok(Err(code))) => {
                return Err(ExecError::Crashed(format!(
                    "the component answered with error {:?}",
                    code
                )))
            }
            // The store went away before a response was set: the call's
            // own outcome says why.
            Ok(Err(_)) => return Err(self.failure(guest.finish(deadline).await, &stderr, started)),
        };
        let init = init_rx.await.unwrap_or_default();
        let (parts, body) = head.into_parts();
        let streams = self.f.streaming.is_some()
            && (parts.status.is_success() || self.f.interface == Interface::Http);
        if streams {
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // An `http` function's head travels as the stream's prelude,
            // as a Lambda function's does.
            let prelude = (self.f.interface == Interface::Http).then(|| {
                Bytes::from(crate::pipeline::function_url::prelude_bytes(
                    parts.status,
                    &parts.headers,
                ))
            });
            let s = Streaming {
                prelude,
                content_type,
                body,
                guest,
                stderr,
                deadline,
            };
            return Ok((Ran::Streaming(Box::new(s)), init));
        }
        let body = match timeout_at(deadline, collect(body, MAX_RESULT_BYTES)).await {
            Err(_) => return Err(ExecError::Timeout(started.elapsed())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(b)) => b,
        };
        // A guest that traps mid-body ends its body cleanly (the host maps
        // the dropped finish channel to end of stream): its outcome decides
        // whether the body is whole.
        match guest.finish(deadline).await {
            GuestEnd::Done(Ok(())) => {}
            other => return Err(self.failure(other, &stderr, started)),
        }
        let reply = match self.f.interface {
            Interface::Event => event_reply(parts, body)?,
            Interface::Http => url_reply(parts, body),
        };
        Ok((Ran::Whole(reply), init))
    }

    fn store(
        &self,
        engine: &Engine,
        deadline: Instant,
        request_id: &str,
        stderr: &Arc<Mutex<Tail>>,
    ) -> Store<Host> {
        // One allocation for the id, shared by both streams.
        let request_id: Arc<str> = request_id.into();
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(LogStream::new(&self.f.name, "stdout", &request_id, None))
            .stderr(LogStream::new(
                &self.f.name,
                "stderr",
                &request_id,
                Some(stderr.clone()),
            ));
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let bytes = (self.f.memory_mb as usize) << 20;
        let host = Host {
            table,
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: Outbound {
                allow: self.allow.clone(),
                deadline,
            },
            limits: Limits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(bytes)
                    .instances(64)
                    .build(),
                refused: false,
            },
        };
        let mut store = Store::new(engine, host);
        store.limiter(|h| &mut h.limits);
        let until = deadline.into_std();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= until {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// The error of an invocation whose guest ended without a whole
    /// response, with the end of what it wrote to stderr.
    fn failure(&self, end: GuestEnd, stderr: &Mutex<Tail>, started: Instant) -> ExecError {
        let tail = stderr.lock().unwrap_or_else(|e| e.into_inner()).text();
        let with_tail = |m: String| {
            if tail.is_empty() {
                m
            } else {
                format!("{m}; stderr: {tail}")
            }
        };
        match end {
            GuestEnd::TimedOut => ExecError::Timeout(started.elapsed()),
            GuestEnd::Panicked(e) => ExecError::Internal(format!("the wasm task failed: {e}")),
            GuestEnd::Done(Ok(())) => ExecError::Crashed(with_tail(
                "the component returned without setting a response".into(),
            )),
            GuestEnd::Done(Err((e, refused))) => {
                if e.downcast_ref::<DeadlineExceeded>().is_some() {
                    return ExecError::Timeout(started.elapsed());
                }
                tracing::debug!(function = %self.f.name, error = ?e, "wasm guest failed");
                if refused {
                    return ExecError::Crashed(format!(
                        "memory limit of {} MB (memory_mb) exceeded: {}",
                        self.f.memory_mb,
                        trap_message(&e)
                    ));
                }
                ExecError::Crashed(with_tail(trap_message(&e)))
            }
        }
    }
}

/// The trap itself (`wasm trap: …`), without the backtrace Wasmtime adds
/// as the outer context.
fn trap_message(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => e.root_cause().to_string(),
    }
}

/// The guest task, aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<(wasmtime::Result<()>, bool)>);

enum GuestEnd {
    /// The call returned; on error, whether a memory grow was refused.
    Done(Result<(), (wasmtime::Error, bool)>),
    TimedOut,
    Panicked(String),
}

impl AbortOnDrop {
    /// Waits for the guest's call to return, until `deadline`.
    async fn finish(mut self, deadline: Instant) -> GuestEnd {
        match timeout_at(deadline, &mut self.0).await {
            Err(_) => GuestEnd::TimedOut,
            Ok(Err(e)) => GuestEnd::Panicked(e.to_string()),
            Ok(Ok((Ok(()), _))) => GuestEnd::Done(Ok(())),
            Ok(Ok((Err(e), refused))) => GuestEnd::Done(Err((e, refused))),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The epoch callback's error once an invocation's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// Reads a response body whole, up to `max` bytes.
async fn collect(mut body: HyperOutgoingBody, max: usize) -> Result<Bytes, ExecError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ExecError::Crashed(format!("the response body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ExecError::Function {
                    error_type: "ResponseSizeTooLarge".into(),
                    message: format!("the response body is larger than {max} bytes"),
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

// ---------------------------------------------------------------- requests and replies

/// What `run` made of an instance's response.
enum Ran {
    Whole(Reply),
    Streaming(Box<Streaming>),
}

/// A streaming guest after its head: its body still being written.
struct Streaming {
    /// An `http` function's head, as a prelude.
    prelude: Option<Bytes>,
    content_type: Option<String>,
    body: HyperOutgoingBody,
    guest: AbortOnDrop,
    stderr: Arc<Mutex<Tail>>,
    deadline: Instant,
}

/// What an invocation answers with, before timing is added.
struct Reply {
    body: Bytes,
    content_type: Option<String>,
    cache_control: Option<String>,
}

/// An `event` function's request: `POST /`, the event as the body.
fn event_request(authority: &str, inv: &Invocation) -> http::Request<Full<Bytes>> {
    let json = inv
        .payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{authority}/"))
        .header(http::header::HOST, authority)
        .header(
            http::header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/octet-stream"
            },
        )
        .header("x-fnroute-request-id", inv.request_id.as_str());
    if let Some(t) = &inv.trace {
        b = b.header("traceparent", t.as_str());
    }
    // Every part is a valid header value (ids are sanitized, the authority
    // is a DNS name); fall back to a bare request rather than fail.
    b.body(Full::new(inv.payload.clone())).unwrap_or_else(|_| {
        let mut r = http::Request::new(Full::new(inv.payload.clone()));
        *r.method_mut() = http::Method::POST;
        r
    })
}

/// An `event` function's result: a 2xx response's body; any other status
/// is the function's error.
fn event_reply(parts: http::response::Parts, body: Bytes) -> Result<Reply, ExecError> {
    let header = |name: http::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if !parts.status.is_success() {
        let mut message = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        if message.is_empty() {
            message = parts.status.to_string();
        }
        return Err(ExecError::Function {
            error_type: format!("HTTP {}", parts.status.as_u16()),
            message,
        });
    }
    Ok(Reply {
        content_type: header(http::header::CONTENT_TYPE),
        cache_control: header(http::header::CACHE_CONTROL),
        body,
    })
}

/// The fields of a function URL event (payload format 2.0) that make the
/// request an `http` function receives.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UrlEvent {
    #[serde(default)]
    raw_path: String,
    #[serde(default)]
    raw_query_string: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cookies: Vec<String>,
    request_context: UrlContext,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

#[derive(serde::Deserialize)]
struct UrlContext {
    http: UrlHttp,
}

#[derive(serde::Deserialize)]
struct UrlHttp {
    method: String,
}

/// An `http` function's request, rebuilt from the function URL event.
fn url_request(authority: &str, event: &[u8]) -> Result<http::Request<Full<Bytes>>, ExecError> {
    let bad = |what: String| ExecError::Internal(format!("function URL event: {what}"));
    let e: UrlEvent = serde_json::from_slice(event).map_err(|e| bad(e.to_string()))?;
    let body = match e.body {
        None => Bytes::new(),
        Some(b) if e.is_base64_encoded => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|e| bad(format!("body: {e}")))?,
        Some(b) => Bytes::from(b),
    };
    let path = if e.raw_path.starts_with('/') {
        e.raw_path
    } else {
        format!("/{}", e.raw_path)
    };
    let host = e
        .headers
        .get("host")
        .cloned()
        .unwrap_or_else(|| authority.to_string());
    let uri = if e.raw_query_string.is_empty() {
        format!("http://{host}{path}")
    } else {
        format!("http://{host}{path}?{}", e.raw_query_string)
    };
    let mut req = http::Request::builder()
        .method(e.request_context.http.method.as_str())
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| bad(e.to_string()))?;
    let headers = req.headers_mut();
    for (k, v) in &e.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    if !e.cookies.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&e.cookies.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
    Ok(req)
}

/// An `http` function's result: its response as the function URL result
/// document (`statusCode`, `headers`, `cookies`, `body`,
/// `isBase64Encoded`) that the pipeline turns into the HTTP response.
fn url_reply(parts: http::response::Parts, body: Bytes) -> Reply {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (k, v) in &parts.headers {
        let Ok(v) = v.to_str() else { continue };
        if k == http::header::SET_COOKIE {
            cookies.push(serde_json::Value::from(v));
            continue;
        }
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(s)) => {
                s.push_str(", ");
                s.push_str(v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), v.into());
            }
        }
    }
    let (text, base64) = match std::str::from_utf8(&body) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body),
            true,
        ),
    };
    let doc = serde_json::json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "cookies": cookies,
        "body": text,
        "isBase64Encoded": base64,
    });
    Reply {
        body: Bytes::from(doc.to_string()),
        content_type: Some("application/json".into()),
        cache_control: None,
    }
}

// ---------------------------------------------------------------- the host side of one store

pub(crate) struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Outbound,
    limits: Limits,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// `StoreLimits` that remembers a refused memory grow, so that the error
/// of a guest that then fails can name the limit.
struct Limits {
    inner: StoreLimits,
    refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            self.refused = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Outgoing HTTP of one instance: refused unless its `host:port` is in
/// the function's `allow_outbound`; bounded by the invocation's deadline.
struct Outbound {
    allow: Arc<[String]>,
    deadline: Instant,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let tls = request.uri().scheme_str() != Some("http");
        let target = request.uri().authority().map(|a| {
            let port = a.port_u16().unwrap_or(if tls { 443 } else { 80 });
            (a.host().to_ascii_lowercase(), port)
        });
        let allowed = target
            .as_ref()
            .filter(|(h, p)| self.allow.iter().any(|a| *a == format!("{h}:{p}")))
            .cloned();
        let deadline = self.deadline;
        Box::new(async move {
            let Some((host, port)) = allowed else {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            };
            timeout_at(deadline, send(request, host, port, tls))
                .await
                .map_err(|_| wasmtime_wasi_http::Error::ConnectionTimeout)?
        })
    }
}

/// Sends one allowed request over HTTP/1.1 (TLS with the system's roots
/// for `https`, on rustls with ring).
async fn send(
    mut request: http::Request<WasiBody>,
    host: String,
    port: u16,
    tls: bool,
) -> SendResult {
    use wasmtime_wasi_http::Error;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
            _ => Error::Connect(e),
        })?;
    let io: Box<dyn IoStream> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let connector =
            tokio_rustls::TlsConnector::from(outbound_tls().ok_or(Error::TlsProtocolError)?);
        Box::new(connector.connect(name, tcp).await.map_err(Error::Tls)?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(Error::Hyper)?;
    // Origin form on the wire: the scheme and authority travel in `Host`.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *request.uri_mut() = path;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(conn.await.map_err(Error::Hyper));
    });
    let response = sender.send_request(request).await.map_err(Error::Hyper)?;
    let io = async move { done_rx.await.unwrap_or(Ok(())) };
    Ok((
        response.map(|b| b.map_err(Error::Hyper).boxed_unsync()),
        Box::new(io),
    ))
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

/// The client configuration of outgoing HTTPS: the system's roots, ring.
/// `None` if it cannot be made (then outgoing HTTPS fails, nothing else).
fn outbound_tls() -> Option<Arc<rustls::ClientConfig>> {
    static TLS: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
    })
    .clone()
}

// ---------------------------------------------------------------- guest output

/// A guest's stdout or stderr: each line to the log (`fnroute::function`),
/// cut at [`LOG_LINE`] bytes.
struct LogStream {
    function: FunctionName,
    stream: &'static str,
    request_id: Arc<str>,
    /// Where stderr's last lines are kept for an error message.
    tail: Option<Arc<Mutex<Tail>>>,
}

impl LogStream {
    fn new(
        function: &FunctionName,
        stream: &'static str,
        request_id: &Arc<str>,
        tail: Option<Arc<Mutex<Tail>>>,
    ) -> Self {
        Self {
            function: function.clone(),
            stream,
            request_id: request_id.clone(),
            tail,
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            function: self.function.clone(),
            stream: self.stream,
            request_id: self.request_id.clone(),
            tail: self.tail.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    function: FunctionName,
    stream: &'static str,
    request_id: Arc<str>,
    tail: Option<Arc<Mutex<Tail>>>,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "fnroute::function", function = %self.function, stream = self.stream, req = %self.request_id, "{}", text.trim_end());
        if let Some(t) = &self.tail {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.push(&self.line);
            t.push(b"\n");
        }
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < LOG_LINE {
                self.line.push(b);
            }
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.emit();
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
