//! Bytes → the `fnroute-route` header (`Stack::parse`, client and peer
//! depth bounds), then the route runner's pure steps on the routing demo
//! topology (`check_known`, `retryable`, `next_function` with its bounds);
//! and the same bytes as the edge-to-edge `fnroute-route-progress`
//! (`Progress::parse`) and `traceparent` (`Trace::parse`) headers.
//!
//! Checks: no panic; a parsed stack is non-empty, within its depth bound,
//! made of lower-case labels, and re-serialises (`to_header`) to a header
//! that parses back to the same stack; parse errors say something; the
//! runner never exceeds max_steps / max_expansions / max_stack_depth;
//! progress and trace headers round-trip.
#![no_main]

#[path = "common.rs"]
mod common;

use fnroute::route::{self, Progress, RouteError, Stack, Trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header values reach the parsers through `to_str`: visible ASCII
    // and spaces/tabs only. Lossy conversion keeps the other bytes
    // useful as separators rather than discarding the input.
    let text = String::from_utf8_lossy(data);
    let topo = common::routing_demo();
    let bounds = topo.routing.bounds;

    // A client's stack is bounded by max_stack_depth; a peer's is not.
    for depth in [bounds.max_stack_depth, 3, u32::MAX] {
        match Stack::parse(&text, depth) {
            Ok(stack) => {
                assert!(!stack.is_empty(), "parsed an empty stack");
                assert!(stack.len() <= depth as usize, "{} > {depth}", stack.len());
                for s in stack.steps() {
                    assert!(common::is_label(s), "step {s:?} is not a label");
                    assert!(
                        !s.bytes().any(|b| b.is_ascii_uppercase()),
                        "{s:?} not lower case"
                    );
                }
                let header = stack.to_header();
                let again = Stack::parse(&header, depth).expect("to_header parses back");
                assert_eq!(again, stack, "round trip through {header:?}");
                assert_eq!(stack.peek(), stack.steps().next());
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                match e {
                    RouteError::Empty | RouteError::BadName(_) | RouteError::TooDeep { .. } => {}
                    other => panic!("Stack::parse returned {other:?}"),
                }
            }
        }
    }

    // What the front door does next with a client's stack.
    if let Ok(mut stack) = Stack::parse(&text, bounds.max_stack_depth) {
        if route::check_known(topo, stack.steps()).is_ok() {
            let _ = route::retryable(topo, &stack);
            let mut progress = Progress::default();
            // Each round executes one function (or fails): at most
            // max_steps + 1 rounds.
            for _ in 0..=bounds.max_steps {
                match route::next_function(topo, &mut stack, &mut progress) {
                    Ok(Some(f)) => {
                        assert_eq!(stack.peek(), Some(f.name.as_str()));
                        if progress.begin_step(&bounds, &f.name).is_err() {
                            break;
                        }
                        stack.pop();
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
                assert!(progress.steps <= bounds.max_steps);
                assert!(progress.expansions <= bounds.max_expansions);
                assert!(stack.len() <= bounds.max_stack_depth as usize);
            }
        }
    }

    // The progress header.
    if let Some(p) = Progress::parse(&text) {
        assert_eq!(Progress::parse(&p.to_header()), Some(p));
    }

    // The trace context header.
    if let Some(t) = Trace::parse(&text) {
        assert!(t.trace_id != 0 && t.span_id != 0);
        assert_eq!(Trace::parse(&t.header()), Some(t), "traceparent round trip");
        let c = t.child(1);
        assert_eq!(c.trace_id, t.trace_id);
    }
});
