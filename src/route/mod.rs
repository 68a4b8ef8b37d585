//! Function source routing, the pure part: route stacks and their wire
//! form, static and gatekeeper expansion, the bounds, the path taken and
//! W3C trace context. No I/O and no clock: the front door's runner
//! (`frontdoor::routed`) drives it, and it is unit-tested on its own.
//!
//! A stack is an ordered list of steps; the first runs next. A step names
//! a function, or a rough step: a `[[route]]` of the topology (expanded in
//! place by its `steps`), or a gatekeeper function (run; its output is an
//! [`Envelope`] whose `push` takes its place). Every expansion counts
//! against `max_expansions`, every executed function against `max_steps`,
//! and the stack may never hold more than `max_stack_depth` steps.

use serde::Deserialize;

use crate::config::{is_dns_label, Function, RouteBounds, Topology};

pub(crate) use crate::headers::{MODE_HEADER, PATH_HEADER, ROUTE_HEADER};

/// Why a route cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the route is empty; give at least one step")]
    Empty,
    #[error("{0:?} is not a valid step name (a DNS label)")]
    BadName(String),
    #[error("unknown step {0:?}: no function or route has that name")]
    UnknownStep(String),
    #[error("the route stack would hold {depth} steps, over routing.max_stack_depth = {max}")]
    TooDeep { depth: usize, max: u32 },
    #[error("routing.max_steps = {max} steps executed; stopped before step {next:?}")]
    StepLimit { max: u32, next: String },
    #[error("routing.max_expansions = {max} reached expanding {step:?} (a gatekeeper or route that keeps expanding)")]
    ExpansionLimit { max: u32, step: String },
    #[error("gatekeeper {step:?} returned no routing envelope: {why}")]
    BadEnvelope { step: String, why: String },
}

/// What a route has used of its bounds; travels between edges in
/// [`crate::headers::PROGRESS_HEADER`] as `steps=N;expansions=M`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub steps: u32,
    pub expansions: u32,
}

impl Progress {
    pub fn to_header(self) -> String {
        format!("steps={};expansions={}", self.steps, self.expansions)
    }

    /// Parses the header; `None` when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let mut p = Self::default();
        for part in s.split(';') {
            let (k, v) = part.trim().split_once('=')?;
            let v: u32 = v.trim().parse().ok()?;
            match k.trim() {
                "steps" => p.steps = v,
                "expansions" => p.expansions = v,
                _ => return None,
            }
        }
        Some(p)
    }

    /// Counts one executed step, or fails when `max_steps` are used up.
    pub fn begin_step(&mut self, bounds: &RouteBounds, step: &str) -> Result<(), RouteError> {
        if self.steps >= bounds.max_steps {
            return Err(RouteError::StepLimit {
                max: bounds.max_steps,
                next: step.to_string(),
            });
        }
        self.steps += 1;
        Ok(())
    }
}

/// A route stack. Stored reversed (the next step last) so that popping
/// and pushing in place are cheap; the wire order is next step first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    rev: Vec<String>,
}

impl Stack {
    /// A stack from steps in run order (first runs next).
    pub fn new<I: IntoIterator<Item = String>>(steps: I) -> Self {
        let mut rev: Vec<String> = steps.into_iter().collect();
        rev.reverse();
        Self { rev }
    }

    /// Parses a route header: names separated by spaces or commas, each a
    /// DNS label (case-insensitive), at most `max_depth` of them.
    pub fn parse(header: &str, max_depth: u32) -> Result<Self, RouteError> {
        let mut steps = Vec::new();
        for name in header
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
        {
            let name = name.to_ascii_lowercase();
            if !is_dns_label(&name) {
                return Err(RouteError::BadName(name));
            }
            steps.push(name);
            if steps.len() > max_depth as usize {
                return Err(RouteError::TooDeep {
                    depth: steps.len(),
                    max: max_depth,
                });
            }
        }
        if steps.is_empty() {
            return Err(RouteError::Empty);
        }
        Ok(Self::new(steps))
    }

    /// The wire form: next step first, separated by spaces.
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        for s in self.rev.iter().rev() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        out
    }

    /// Steps left.
    pub fn len(&self) -> usize {
        self.rev.len()
    }

    /// No steps left.
    pub fn is_empty(&self) -> bool {
        self.rev.is_empty()
    }

    /// The next step.
    pub fn peek(&self) -> Option<&str> {
        self.rev.last().map(String::as_str)
    }

    pub fn pop(&mut self) -> Option<String> {
        self.rev.pop()
    }

    /// Puts a step back on top.
    pub(crate) fn push(&mut self, step: String) {
        self.rev.push(step);
    }

    /// The steps in run order.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.rev.iter().rev().map(String::as_str)
    }

    /// Expands a popped rough step `step` into `steps` (the first runs
    /// next), counting one expansion against the bounds.
    pub fn expand(
        &mut self,
        progress: &mut Progress,
        bounds: &RouteBounds,
        step: &str,
        steps: &[String],
    ) -> Result<(), RouteError> {
        if progress.expansions >= bounds.max_expansions {
            return Err(RouteError::ExpansionLimit {
                max: bounds.max_expansions,
                step: step.to_string(),
            });
        }
        progress.expansions += 1;
        let depth = self.rev.len() + steps.len();
        if depth > bounds.max_stack_depth as usize {
            return Err(RouteError::TooDeep {
                depth,
                max: bounds.max_stack_depth,
            });
        }
        self.rev.extend(steps.iter().rev().cloned());
        Ok(())
    }
}

/// Checks that every step names a function or a route of `topo`.
pub fn check_known<'a>(
    topo: &Topology,
    steps: impl IntoIterator<Item = &'a str>,
) -> Result<(), RouteError> {
    for s in steps {
        if topo.function(s).is_none() && !topo.routing.routes.contains_key(s) {
            return Err(RouteError::UnknownStep(s.to_string()));
        }
    }
    Ok(())
}

/// Expands static routes on top of the stack until a function is next,
/// and returns that function (still on the stack), or `None` when the
/// stack is empty (the route is done).
pub fn next_function<'t>(
    topo: &'t Topology,
    stack: &mut Stack,
    progress: &mut Progress,
) -> Result<Option<&'t Function>, RouteError> {
    let bounds = topo.routing.bounds;
    loop {
        let Some(top) = stack.peek() else {
            return Ok(None);
        };
        if let Some(f) = topo.function(top) {
            return Ok(Some(f));
        }
        let Some(steps) = topo.routing.routes.get(top) else {
            return Err(RouteError::UnknownStep(top.to_string()));
        };
        let step = stack.pop().unwrap_or_default();
        stack.expand(progress, &bounds, &step, steps)?;
    }
}

/// A gatekeeper's output: the steps to push in its place (first runs
/// next; may be empty) and, optionally, what the event becomes (any JSON
/// value, passed on as its JSON text; absent = the event is unchanged).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub push: Vec<String>,
    #[serde(default)]
    pub event: Option<serde_json::Value>,
}

/// Parses gatekeeper `step`'s output as an [`Envelope`]; step names are
/// lower-cased and must name functions or routes of `topo`.
pub fn parse_envelope(topo: &Topology, step: &str, body: &[u8]) -> Result<Envelope, RouteError> {
    let bad = |why: String| RouteError::BadEnvelope {
        step: step.to_string(),
        why,
    };
    let mut env: Envelope = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "{e}; expected {{\"push\": [\"step\", ...], \"event\": ...}}"
        ))
    })?;
    for s in &mut env.push {
        *s = s.to_ascii_lowercase();
        if !is_dns_label(s) {
            return Err(bad(format!("{s:?} is not a valid step name")));
        }
    }
    check_known(topo, env.push.iter().map(String::as_str)).map_err(|e| bad(e.to_string()))?;
    Ok(env)
}

/// Whether the rest of a route may be handed to another edge again after
/// the first attempt may have reached a peer: only when every function
/// it names (through static routes too) is idempotent. A gatekeeper's
/// own `idempotent` flag stands for the steps it may push, which cannot
/// be known in advance (docs/routing.md).
pub fn retryable(topo: &Topology, stack: &Stack) -> bool {
    fn all(topo: &Topology, step: &str, depth: u32) -> bool {
        if depth > 64 {
            return false;
        }
        if let Some(f) = topo.function(step) {
            return f.idempotent;
        }
        match topo.routing.routes.get(step) {
            Some(steps) => steps.iter().all(|s| all(topo, s, depth + 1)),
            None => false,
        }
    }
    stack.steps().all(|s| all(topo, s, 0))
}

/// One entry of the path: `step@edge`.
pub(crate) fn path_entry(step: &str, edge: &str) -> String {
    format!("{step}@{edge}")
}

/// Joins this edge's part of the path with what came back from later
/// edges (`fnroute-path` of the relayed reply).
pub(crate) fn join_path(ours: &[String], theirs: Option<&str>) -> String {
    let mut out = ours.join(", ");
    if let Some(t) = theirs.map(str::trim).filter(|t| !t.is_empty()) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(t);
    }
    out
}

/// W3C trace context (`traceparent`, version 00): the trace id stays the
/// same along the whole route; every edge and every step gets a span id
/// of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: u128,
    pub span_id: u64,
    pub(crate) flags: u8,
}

impl Trace {
    /// A new root (sampled) from random ids; zero ids are invalid in W3C
    /// trace context, so they are replaced by 1.
    pub(crate) fn root(trace_id: u128, span_id: u64) -> Self {
        Self {
            trace_id: trace_id.max(1),
            span_id: span_id.max(1),
            flags: 1,
        }
    }

    /// The same trace with a new span id.
    pub fn child(self, span_id: u64) -> Self {
        Self {
            span_id: span_id.max(1),
            ..self
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` when invalid
    /// (including the all-zero ids the spec forbids).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (v, t, p, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if v != "00" || parts.next().is_some() || !hex(t, 32) || !hex(p, 16) || !hex(f, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(t, 16).ok()?;
        let span_id = u64::from_str_radix(p, 16).ok()?;
        let flags = u8::from_str_radix(f, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

#[cfg(test)]
mod tests;
