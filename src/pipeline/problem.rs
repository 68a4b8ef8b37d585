//! RFC 9457 problem details: every error the client API returns, with a
//! stable `type` URI per kind. `Problem::from_exec` is the one place
//! executor errors become HTTP statuses.

use std::time::Duration;

use http::StatusCode;

use crate::exec::ExecError;

/// Base of every problem `type` URI.
pub(crate) const PROBLEM_BASE: &str = "https://fnroute.dev/problems/";

/// The kinds of problem the front door reports; each has a stable type URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    UnknownFunction,
    PayloadTooLarge,
    FunctionSaturated,
    EdgeSaturated,
    ShuttingDown,
    FunctionError,
    FunctionCrashed,
    DeadlineExceeded,
    TooEarly,
    MethodNotAllowed,
    NotFound,
    BadRequest,
    BodyTimeout,
    Internal,
    /// Only authenticated cluster peers may use this resource.
    Forbidden,
    /// The forwarding hop limit was reached.
    HopLimit,
    /// No healthy edge can run the function.
    NoEdge,
    /// Forwarding to a peer edge failed.
    ForwardFailed,
    /// A route names a step that is no function and no route.
    UnknownStep,
    /// `POST /event/{type}` for a type the topology does not define.
    UnknownEvent,
    /// A route executed `routing.max_steps` steps.
    StepLimit,
    /// A route expanded `routing.max_expansions` times.
    ExpansionLimit,
    /// A route's stack grew over `routing.max_stack_depth`.
    StackDepth,
    /// A gatekeeper's output is not a routing envelope.
    GatekeeperOutput,
    /// An HTTP function's result is not a function URL response.
    FunctionResponse,
}

impl ProblemKind {
    pub(crate) fn slug(self) -> &'static str {
        match self {
            Self::UnknownFunction => "unknown-function",
            Self::PayloadTooLarge => "payload-too-large",
            Self::FunctionSaturated => "function-saturated",
            Self::EdgeSaturated => "edge-saturated",
            Self::ShuttingDown => "shutting-down",
            Self::FunctionError => "function-error",
            Self::FunctionCrashed => "function-crashed",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::TooEarly => "too-early",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::NotFound => "not-found",
            Self::BadRequest => "bad-request",
            Self::BodyTimeout => "body-read-timeout",
            Self::Internal => "internal",
            Self::Forbidden => "forbidden",
            Self::HopLimit => "hop-limit",
            Self::NoEdge => "no-healthy-edge",
            Self::ForwardFailed => "forward-failed",
            Self::UnknownStep => "unknown-step",
            Self::UnknownEvent => "unknown-event-type",
            Self::StepLimit => "route-step-limit",
            Self::ExpansionLimit => "route-expansion-limit",
            Self::StackDepth => "route-stack-depth",
            Self::GatekeeperOutput => "gatekeeper-output",
            Self::FunctionResponse => "function-response",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::UnknownFunction | Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::FunctionSaturated => StatusCode::TOO_MANY_REQUESTS,
            Self::EdgeSaturated | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::FunctionError | Self::FunctionCrashed => StatusCode::BAD_GATEWAY,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::TooEarly => StatusCode::TOO_EARLY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::HopLimit => StatusCode::LOOP_DETECTED,
            Self::NoEdge => StatusCode::SERVICE_UNAVAILABLE,
            Self::ForwardFailed => StatusCode::BAD_GATEWAY,
            Self::UnknownStep => StatusCode::BAD_REQUEST,
            Self::UnknownEvent => StatusCode::NOT_FOUND,
            Self::StepLimit | Self::ExpansionLimit | Self::StackDepth => StatusCode::LOOP_DETECTED,
            Self::GatekeeperOutput | Self::FunctionResponse => StatusCode::BAD_GATEWAY,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::UnknownFunction => "unknown function",
            Self::PayloadTooLarge => "payload too large",
            Self::FunctionSaturated => "function saturated",
            Self::EdgeSaturated => "edge saturated",
            Self::ShuttingDown => "edge shutting down",
            Self::FunctionError => "function error",
            Self::FunctionCrashed => "function crashed",
            Self::DeadlineExceeded => "deadline exceeded",
            Self::TooEarly => "too early",
            Self::MethodNotAllowed => "method not allowed",
            Self::NotFound => "not found",
            Self::BadRequest => "bad request",
            Self::BodyTimeout => "request body too slow",
            Self::Internal => "internal error",
            Self::Forbidden => "forbidden",
            Self::HopLimit => "hop limit reached",
            Self::NoEdge => "no healthy edge",
            Self::ForwardFailed => "forwarding failed",
            Self::UnknownStep => "unknown route step",
            Self::UnknownEvent => "unknown event type",
            Self::StepLimit => "route step limit reached",
            Self::ExpansionLimit => "route expansion limit reached",
            Self::StackDepth => "route stack too deep",
            Self::GatekeeperOutput => "bad gatekeeper output",
            Self::FunctionResponse => "bad function response",
        }
    }
}

/// One problem+json response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub(crate) kind: ProblemKind,
    pub(crate) detail: String,
    pub(crate) function: Option<String>,
    /// The function's error type (`errorType`) for function errors.
    pub(crate) error_type: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    /// Where on a route it happened (routed events only; boxed so that
    /// `Result<_, Problem>` stays small).
    pub(crate) route: Option<Box<RouteAt>>,
}

/// The step and path of a problem on a route.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteAt {
    /// The route step that failed.
    pub(crate) step: Option<String>,
    /// The path taken so far, `step@edge, ...`.
    pub(crate) path: Option<String>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            function: None,
            error_type: None,
            retry_after: None,
            route: None,
        }
    }

    /// Names the route step this problem happened at.
    pub(crate) fn step(mut self, step: &str) -> Self {
        self.route.get_or_insert_with(Box::default).step = Some(step.to_string());
        self
    }

    /// The path taken so far, if this problem is on a route.
    pub(crate) fn route_path(&self) -> Option<&str> {
        self.route.as_ref().and_then(|r| r.path.as_deref())
    }

    /// Sets the path taken so far.
    pub(crate) fn path(mut self, path: String) -> Self {
        self.route.get_or_insert_with(Box::default).path = Some(path);
        self
    }

    pub(crate) fn function(mut self, name: &str) -> Self {
        self.function = Some(name.to_string());
        self
    }

    pub(crate) fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// Classifies an executor error (the front door's single mapping).
    /// The problem for an invocation that could not be forwarded (the
    /// caller adds the function or step).
    pub(crate) fn from_dispatch(e: &crate::dispatch::DispatchError) -> Self {
        use crate::dispatch::DispatchError;
        let kind = match e {
            DispatchError::NoEdge(_) => ProblemKind::NoEdge,
            DispatchError::HopLimit(_) => ProblemKind::HopLimit,
            DispatchError::Deadline => ProblemKind::DeadlineExceeded,
            DispatchError::Failed { .. } => ProblemKind::ForwardFailed,
        };
        let p = Problem::new(kind, e.to_string());
        if kind == ProblemKind::NoEdge {
            p.retry_after(Duration::from_secs(1))
        } else {
            p
        }
    }

    pub(crate) fn from_exec(function: &str, e: &ExecError) -> Self {
        let p = match e {
            ExecError::UnknownFunction(_) => Self::new(ProblemKind::UnknownFunction, e.to_string()),
            ExecError::Saturated { retry_after, .. } => {
                Self::new(ProblemKind::FunctionSaturated, e.to_string()).retry_after(*retry_after)
            }
            ExecError::Function { error_type, .. } => {
                let mut p = Self::new(ProblemKind::FunctionError, e.to_string());
                p.error_type = Some(error_type.clone());
                p
            }
            ExecError::Crashed(_) => Self::new(ProblemKind::FunctionCrashed, e.to_string()),
            ExecError::Timeout(_) => Self::new(ProblemKind::DeadlineExceeded, e.to_string()),
            ExecError::ShuttingDown => Self::new(ProblemKind::ShuttingDown, e.to_string())
                .retry_after(Duration::from_secs(1)),
            ExecError::Internal(_) => Self::new(ProblemKind::Internal, e.to_string()),
        };
        p.function(function)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The `type` URI.
    pub(crate) fn type_uri(&self) -> String {
        format!("{PROBLEM_BASE}{}", self.kind.slug())
    }

    /// `retry-after` in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1))
    }

    /// The JSON body.
    pub(crate) fn to_json(&self, edge: &str) -> Vec<u8> {
        let mut v = serde_json::json!({
            "type": self.type_uri(),
            "title": self.kind.title(),
            "status": self.status().as_u16(),
            "detail": self.detail,
            "edge": edge,
        });
        if let Some(f) = &self.function {
            v["function"] = f.clone().into();
        }
        if let Some(t) = &self.error_type {
            v["errorType"] = t.clone().into();
        }
        if let Some(r) = &self.route {
            if let Some(s) = &r.step {
                v["step"] = s.clone().into();
            }
            if let Some(p) = &r.path {
                v["path"] = p.clone().into();
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_errors_map_to_stable_statuses() {
        let check = |e: ExecError, status: u16, slug: &str| {
            let p = Problem::from_exec("f", &e);
            assert_eq!(p.status().as_u16(), status, "{e}");
            assert_eq!(p.type_uri(), format!("{PROBLEM_BASE}{slug}"));
        };
        check(
            ExecError::UnknownFunction("f".into()),
            404,
            "unknown-function",
        );
        check(
            ExecError::Saturated {
                function: "f".into(),
                retry_after: Duration::from_millis(1500),
            },
            429,
            "function-saturated",
        );
        check(
            ExecError::Function {
                error_type: "E".into(),
                message: "m".into(),
            },
            502,
            "function-error",
        );
        check(ExecError::Crashed("x".into()), 502, "function-crashed");
        check(
            ExecError::Timeout(Duration::from_secs(1)),
            504,
            "deadline-exceeded",
        );
        check(ExecError::ShuttingDown, 503, "shutting-down");
        check(ExecError::Internal("x".into()), 500, "internal");
    }

    #[test]
    fn json_carries_rfc9457_members_and_extensions() {
        let p = Problem::from_exec(
            "resize",
            &ExecError::Function {
                error_type: "ValueError".into(),
                message: "bad".into(),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&p.to_json("nyc")).expect("json");
        assert_eq!(v["status"], 502);
        assert_eq!(v["function"], "resize");
        assert_eq!(v["edge"], "nyc");
        assert_eq!(v["errorType"], "ValueError");
        assert_eq!(v["title"], "function error");
        assert!(v["detail"].as_str().is_some_and(|d| d.contains("bad")));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let p = Problem::new(ProblemKind::EdgeSaturated, "x");
        assert_eq!(p.retry_after_secs(), None);
        let p = p.retry_after(Duration::from_millis(1));
        assert_eq!(p.retry_after_secs(), Some(1));
        let p = p.retry_after(Duration::from_millis(2001));
        assert_eq!(p.retry_after_secs(), Some(3));
    }
}
