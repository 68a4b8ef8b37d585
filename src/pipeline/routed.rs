//! Routed events: `POST /event/{type}` and `POST /route` (function source
//! routing, docs/routing.md). This edge runs the consecutive steps it
//! hosts and can take, then hands the event and the rest of the stack to
//! the best edge for the next step (`POST /route` over the mesh) and
//! relays the reply back, putting its own part of the path in front. The
//! pure rules (stack, expansion, bounds, envelope, trace context) live in
//! `crate::route`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::body::BodyStream;
use super::limits;
use super::problem::{Problem, ProblemKind};
use super::ReplyBody;
use super::{self as pipeline, base_response, Call, Pipeline, Reply, RequestBody, Target};
use crate::config::{Function, Topology};
use crate::dispatch::{DispatchError, Dispatcher, Forward, RouteCarry};
use crate::headers::EDGE_HEADER;
use crate::metrics::Path as MetricPath;
use crate::route::{self, Progress, RouteError, Stack, Trace, MODE_HEADER, PATH_HEADER};

/// One routed event on this edge.
struct Run<'a> {
    shared: &'a Arc<Pipeline>,
    call: &'a Call,
    /// The call's topology snapshot.
    topo: &'a Topology,
    id: &'a str,
    stack: Stack,
    progress: Progress,
    hops: u32,
    deadline: Instant,
    /// This edge's span of the route's trace.
    trace: Trace,
    orchestrated: bool,
    event: Bytes,
    content_type: HeaderValue,
    /// `step@edge` of every step this edge ran (or, orchestrated, had run).
    path: Vec<String>,
    /// The edge that ran the last step.
    last_edge: String,
    /// When this edge took the request.
    started: Instant,
    /// The last step's streamed output, which is the answer.
    stream: Option<BodyStream>,
}

/// Handles `POST /event/{type}` and `POST /route` (from clients and, with
/// the internal headers honoured, from authenticated peers).
pub(super) async fn handle<B: RequestBody>(
    shared: &Arc<Pipeline>,
    call: &Call,
    body: &mut B,
) -> Result<Reply, Problem> {
    let topo = call.topology.as_ref();
    let bounds = topo.routing.bounds;
    let stack = stack_of(call)?;
    if call.early && !route::retryable(topo, &stack) {
        return Err(Problem::new(
            ProblemKind::TooEarly,
            "the route has steps that are not idempotent; retry after the handshake",
        ));
    }
    let progress = match call.internal.progress.as_deref() {
        Some(p) => Progress::parse(p).ok_or_else(|| {
            Problem::new(ProblemKind::BadRequest, "malformed route progress header")
        })?,
        None => Progress::default(),
    };
    let hops = call.internal.hops;
    let timeout = call.timeout(bounds.timeout)?;
    let trace = match call.internal.trace.as_deref().and_then(Trace::parse) {
        Some(t) => t.child(rand::random()),
        None => Trace::root(rand::random(), rand::random()),
    };
    let orchestrated = orchestrated(call)?;
    pipeline::check_length(shared, call)?;
    let event = pipeline::read_payload(shared, call, body).await?;
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(limits::sniff_content_type(&event)));
    tracing::debug!(stack = %stack.to_header(), hops, ?progress, trace = %trace.trace_id_hex(), orchestrated, "route");
    let run = Run {
        shared,
        call,
        topo,
        id: &call.id,
        stack,
        progress,
        hops,
        deadline: Instant::now() + timeout,
        trace,
        orchestrated,
        event,
        content_type,
        path: Vec::new(),
        last_edge: shared.edge_name.clone(),
        started: call.started,
        stream: None,
    };
    let result = run.go().await;
    if call.peer.is_none() {
        let outcome = match &result {
            Ok((head, _)) if head.status().is_success() => "ok",
            Ok(_) => "error",
            Err(p) => p.kind.slug(),
        };
        crate::metrics::route(&shared.edge_name, outcome, call.started.elapsed());
    }
    result
}

/// The route's stack: an event type's entry steps, or a client's (or
/// peer's) `fnroute-route` header, every step known before anything runs.
fn stack_of(call: &Call) -> Result<Stack, Problem> {
    let topo = call.topology.as_ref();
    match &call.target {
        Target::Event(kind) => {
            let entry = topo.routing.events.get(kind).ok_or_else(|| {
                Problem::new(
                    ProblemKind::UnknownEvent,
                    format!("unknown event type {kind:?}; the topology's [[event]] tables define the types"),
                )
            })?;
            Ok(Stack::new(entry.iter().cloned()))
        }
        Target::Stack => {
            let raw = call.header(route::ROUTE_HEADER).ok_or_else(|| {
                Problem::new(
                    ProblemKind::BadRequest,
                    format!(
                        "POST /route needs a {} header with the steps, e.g. \"edit log process\"",
                        route::ROUTE_HEADER
                    ),
                )
            })?;
            // Clients' stacks are bounded by max_stack_depth; a peer's
            // stack was checked where it grew.
            let depth = if call.peer.is_some() {
                u32::MAX
            } else {
                topo.routing.bounds.max_stack_depth
            };
            let stack = Stack::parse(raw, depth).map_err(|e| client_route_problem(&e))?;
            route::check_known(topo, stack.steps()).map_err(|e| client_route_problem(&e))?;
            Ok(stack)
        }
        _ => Err(Problem::new(
            ProblemKind::Internal,
            "a request that is not a routed event reached the route handler",
        )),
    }
}

/// `fnroute-route-mode`: source routing (the default) or orchestrated
/// (clients only: a peer's hop is always source-routed).
fn orchestrated(call: &Call) -> Result<bool, Problem> {
    match call.header(MODE_HEADER).map(str::trim) {
        None | Some("source") => Ok(false),
        Some("orchestrated") => Ok(call.peer.is_none()),
        Some(other) => Err(Problem::new(
            ProblemKind::BadRequest,
            format!("{MODE_HEADER}: {other:?} is neither \"source\" nor \"orchestrated\""),
        )),
    }
}

/// Problems with a client's stack: 400, before anything runs.
fn client_route_problem(e: &RouteError) -> Problem {
    let kind = match e {
        RouteError::UnknownStep(_) => ProblemKind::UnknownStep,
        _ => ProblemKind::BadRequest,
    };
    let p = Problem::new(kind, e.to_string());
    match e {
        RouteError::UnknownStep(s) | RouteError::BadName(s) => p.step(s),
        _ => p,
    }
}

impl Run<'_> {
    fn edge(&self) -> &str {
        &self.shared.edge_name
    }

    fn path_so_far(&self) -> String {
        route::join_path(&self.path, None)
    }

    /// A problem of this edge, naming the step and the path so far.
    fn fail(&self, p: Problem, step: Option<&str>) -> Problem {
        let p = p.path(self.path_so_far());
        match step {
            Some(s) => p.step(s).function(s),
            None => p,
        }
    }

    fn route_error(&self, e: RouteError) -> Problem {
        let (kind, step) = match &e {
            RouteError::StepLimit { next, .. } => (ProblemKind::StepLimit, Some(next.clone())),
            RouteError::ExpansionLimit { step, .. } => {
                (ProblemKind::ExpansionLimit, Some(step.clone()))
            }
            RouteError::TooDeep { .. } => (ProblemKind::StackDepth, None),
            RouteError::BadEnvelope { step, .. } => {
                (ProblemKind::GatekeeperOutput, Some(step.clone()))
            }
            RouteError::UnknownStep(s) | RouteError::BadName(s) => {
                (ProblemKind::UnknownStep, Some(s.clone()))
            }
            RouteError::Empty => (ProblemKind::BadRequest, None),
        };
        let detail = format!("{e} (on edge {:?})", self.edge());
        self.fail(Problem::new(kind, detail), step.as_deref())
    }

    /// Runs the steps this edge takes, then hands the rest on (or answers
    /// when the stack is empty).
    async fn go(mut self) -> Result<Reply, Problem> {
        let topo = self.topo;
        // A step whose local pool was full: hand it to a peer instead.
        let mut elsewhere = false;
        loop {
            let f = match route::next_function(topo, &mut self.stack, &mut self.progress) {
                Ok(Some(f)) => f,
                Ok(None) => return self.done(),
                Err(e) => return Err(self.route_error(e)),
            };
            if Instant::now() >= self.deadline {
                let detail = format!(
                    "the route's deadline passed before step {:?} on edge {:?}",
                    f.name,
                    self.edge()
                );
                let p = Problem::new(ProblemKind::DeadlineExceeded, detail);
                return Err(self.fail(p, Some(&f.name)));
            }
            let here = self.runs_here(f, elsewhere);
            elsewhere = false;
            if !here {
                match self.step_elsewhere(f).await? {
                    Some(reply) => return Ok(reply),
                    None => continue,
                }
            }
            elsewhere = self.step_here(f).await?;
        }
    }

    /// Whether step `f` runs on this edge: hosted here, and (with a mesh)
    /// its pool has room or the hop limit leaves no choice.
    fn runs_here(&self, f: &Function, spilled: bool) -> bool {
        let cx = &self.shared.cx;
        if cx.exec.function(&f.name).is_none() {
            return false;
        }
        match cx.dispatch {
            None => true,
            Some(_) => {
                self.hops >= self.topo.routing.bounds.max_hops
                    || !(spilled || Dispatcher::saturated(&cx.exec, f, self.topo.executors.queue))
            }
        }
    }

    /// Step `f` on another edge: orchestrated, one call and the route goes
    /// on here (`None`); source routed, the rest of the route goes with it
    /// and its answer is the answer.
    async fn step_elsewhere(&mut self, f: &Function) -> Result<Option<Reply>, Problem> {
        let step = f.name.as_str();
        let Some(d) = self.shared.cx.dispatch.as_deref() else {
            let detail = format!(
                "step {step:?} is not hosted on edge {:?} and this edge has no mesh to forward it",
                self.edge()
            );
            return Err(self.fail(Problem::new(ProblemKind::NoEdge, detail), Some(step)));
        };
        crate::metrics::route_step(self.edge(), step, MetricPath::Forwarded);
        if !self.orchestrated {
            return self.hand_on(d, f).await.map(Some);
        }
        self.stack.pop();
        let bounds = self.topo.routing.bounds;
        if let Err(e) = self.progress.begin_step(&bounds, step) {
            return Err(self.route_error(e));
        }
        let reply = self.call_remote(d, f).await?;
        if reply.status != 200 {
            return self.relay(reply).map(Some);
        }
        let ran_on = reply.header(EDGE_HEADER).unwrap_or("?").to_string();
        let ct = reply
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        self.path.push(route::path_entry(step, &ran_on));
        self.last_edge = ran_on;
        let body = self.output(f, reply.stream, reply.body).await?;
        self.apply(f, body, ct)?;
        Ok(None)
    }

    /// Step `f` on this edge. `Ok(true)`: the pool filled up meanwhile and
    /// the step is back on the stack for a peer (spill-over).
    async fn step_here(&mut self, f: &Function) -> Result<bool, Problem> {
        let step = f.name.as_str();
        let bounds = self.topo.routing.bounds;
        self.stack.pop();
        if let Err(e) = self.progress.begin_step(&bounds, step) {
            return Err(self.route_error(e));
        }
        crate::metrics::route_step(self.edge(), step, MetricPath::Local);
        match self.run_local(f).await {
            Ok(mut out) => {
                self.path.push(route::path_entry(step, self.edge()));
                self.last_edge = self.edge().to_string();
                let live = out.live.take().and_then(|l| l.take());
                let body = self.output(f, live, out.body).await?;
                self.apply(f, body, out.content_type)?;
                Ok(false)
            }
            Err(p)
                if p.kind == ProblemKind::FunctionSaturated
                    && self.shared.cx.dispatch.is_some()
                    && f.edges.len() > 1
                    && self.hops < bounds.max_hops =>
            {
                self.stack.push(step.to_string());
                self.progress.steps -= 1;
                Ok(true)
            }
            Err(p) => {
                let detail = format!(
                    "step {step:?} failed on edge {:?}: {}",
                    self.edge(),
                    p.detail
                );
                Err(self.fail(Problem { detail, ..p }, Some(step)))
            }
        }
    }

    /// Runs one step on this edge's pool, through the cache when the
    /// function has a cache policy (the pipeline's cache and execute
    /// stages, with the step's event and deadline).
    async fn run_local(&self, f: &Function) -> Result<super::cached::CachedReply, Problem> {
        let deadline = self.deadline.min(Instant::now() + f.timeout);
        pipeline::run_cached(
            self.shared,
            self.call,
            f,
            self.event.clone(),
            deadline,
            f.timeout,
            Some(self.trace.child(rand::random()).header()),
        )
        .await
        .0
    }

    /// A step's output: a stream stays one when the step was the last (it
    /// is the answer, sent as it arrives); any other step's stream is read
    /// whole, as it becomes the next step's event.
    async fn output(
        &mut self,
        f: &Function,
        stream: Option<BodyStream>,
        body: Bytes,
    ) -> Result<Bytes, Problem> {
        match stream {
            None => Ok(body),
            Some(mut s) if self.stack.is_empty() && !f.gatekeeper => {
                s.count_as(super::body::StreamLabels {
                    edge: self.shared.edge_name.clone(),
                    function: f.name.to_string(),
                    request_id: self.id.to_string(),
                });
                self.stream = Some(s);
                Ok(Bytes::new())
            }
            Some(mut s) => s.collect(crate::exec::MAX_RESULT_BYTES).await.map_err(|e| {
                let p = Problem::new(
                    ProblemKind::FunctionError,
                    format!(
                        "step {:?} streamed an output that cannot be the next event: {e}",
                        f.name
                    ),
                );
                self.fail(p, Some(&f.name))
            }),
        }
    }

    /// What a step's output does to the route: a gatekeeper's envelope
    /// replaces it by the steps it pushes (and may set the event); any
    /// other function's output is the next step's event.
    fn apply(
        &mut self,
        f: &Function,
        body: Bytes,
        content_type: HeaderValue,
    ) -> Result<(), Problem> {
        if !f.gatekeeper {
            self.event = body;
            self.content_type = content_type;
            return Ok(());
        }
        let topo = self.topo;
        let env = route::parse_envelope(topo, &f.name, &body).map_err(|e| self.route_error(e))?;
        self.stack
            .expand(&mut self.progress, &topo.routing.bounds, &f.name, &env.push)
            .map_err(|e| self.route_error(e))?;
        if let Some(event) = env.event {
            let bytes = serde_json::to_vec(&event).map_err(|e| {
                self.fail(
                    Problem::new(ProblemKind::Internal, e.to_string()),
                    Some(&f.name),
                )
            })?;
            self.event = Bytes::from(bytes);
            self.content_type = HeaderValue::from_static("application/json");
        }
        Ok(())
    }

    fn forward_for(&self, f: &Function, carry: Option<RouteCarry>) -> Forward {
        Forward {
            function: f.name.clone(),
            payload: self.event.clone(),
            deadline: self.deadline,
            hops: self.hops,
            request_id: self.id.to_string(),
            trace: Some(self.trace.child(rand::random()).header()),
            exclude: Vec::new(),
            route: carry,
        }
    }

    fn dispatch_problem(&self, step: &str, e: DispatchError) -> Problem {
        let detail = format!(
            "step {step:?} could not be handed on from edge {:?}: {e}",
            self.edge()
        );
        self.fail(
            Problem {
                detail,
                ..Problem::from_dispatch(&e)
            },
            Some(step),
        )
    }

    /// Source routing: the event and the whole remaining stack (the next
    /// step first) go to the best edge for the next step.
    async fn hand_on(&self, d: &Dispatcher, f: &Function) -> Result<Reply, Problem> {
        let topo = self.topo;
        let carry = RouteCarry {
            stack: self.stack.to_header(),
            progress: self.progress.to_header(),
            max_hops: topo.routing.bounds.max_hops,
            retryable: route::retryable(topo, &self.stack),
            content_type: self.content_type.to_str().ok().map(str::to_string),
        };
        let mut reply = d
            .forward(f, self.forward_for(f, Some(carry)))
            .await
            .map_err(|e| self.dispatch_problem(&f.name, e))?;
        if let Some(s) = reply.stream.as_mut() {
            s.count_as(super::body::StreamLabels {
                edge: self.edge().to_string(),
                function: f.name.to_string(),
                request_id: self.id.to_string(),
            });
        }
        self.relay(reply)
    }

    /// Orchestrated: one step on a peer (`POST /fn/{step}`); the route
    /// goes on here.
    async fn call_remote(
        &self,
        d: &Dispatcher,
        f: &Function,
    ) -> Result<crate::mesh::transport::Reply, Problem> {
        d.forward(f, self.forward_for(f, None))
            .await
            .map_err(|e| self.dispatch_problem(&f.name, e))
    }

    /// Relays a later edge's reply: its status, body and headers, with
    /// this edge's path in front of the path it reports.
    fn relay(&self, reply: crate::mesh::transport::Reply) -> Result<Reply, Problem> {
        let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let ran_on = reply.header(EDGE_HEADER).unwrap_or("?").to_string();
        let path = route::join_path(&self.path, reply.header(PATH_HEADER));
        let mut b = base_response(status, &ran_on, self.id)
            .header(crate::headers::TRACE_HEADER, self.trace.header());
        if reply.stream.is_none() {
            b = b.header(header::CONTENT_LENGTH, reply.body.len());
        }
        if let Ok(v) = HeaderValue::from_str(&path) {
            b = b.header(PATH_HEADER, v);
        }
        for h in [header::CONTENT_TYPE, header::RETRY_AFTER] {
            if let Some(v) = reply.headers.get(&h) {
                b = b.header(h, v.clone());
            }
        }
        b = b.header(crate::headers::SERVER_TIMING, self.total());
        let head = b
            .body(())
            .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
        let body = match reply.stream {
            Some(s) => ReplyBody::Stream(s),
            None => ReplyBody::full(reply.body),
        };
        Ok((head, body))
    }

    /// The stack is empty: the event is the result.
    /// `server-timing` of the whole route as this edge saw it.
    fn total(&self) -> String {
        format!(
            "total;dur={:.3}",
            self.started.elapsed().as_secs_f64() * 1000.0
        )
    }

    fn done(self) -> Result<Reply, Problem> {
        let mut b = base_response(StatusCode::OK, &self.last_edge, self.id)
            .header(header::CONTENT_TYPE, self.content_type.clone());
        if self.stream.is_none() {
            b = b.header(header::CONTENT_LENGTH, self.event.len());
        }
        let mut b = b
            .header(crate::headers::TRACE_HEADER, self.trace.header())
            .header(crate::headers::SERVER_TIMING, self.total());
        if let Ok(v) = HeaderValue::from_str(&self.path_so_far()) {
            b = b.header(PATH_HEADER, v);
        }
        let head = b
            .body(())
            .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
        let body = match self.stream {
            Some(s) => ReplyBody::Stream(s),
            None => ReplyBody::full(self.event),
        };
        Ok((head, body))
    }
}
