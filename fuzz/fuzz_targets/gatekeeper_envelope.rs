//! Bytes → a gatekeeper's output (`route::parse_envelope`) on the routing
//! demo topology, then what the route runner does with it
//! (`frontdoor::routed` `apply`): expand the stack in the gatekeeper's
//! place under the bounds, and serialise a new event.
//!
//! Checks: no panic; an accepted envelope pushes only lower-case labels
//! that name functions or routes of the topology; a rejected one names
//! the gatekeeper and says why; the expansion respects max_expansions and
//! max_stack_depth; the event serialises, and its JSON text parses back to
//! the same value (numbers compared as f64 within 1 ulp-ish: serde_json's
//! default float parsing is not always correctly rounded).
#![no_main]

#[path = "common.rs"]
mod common;

use fnroute::route::{self, Progress, RouteError, Stack};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x).abs() < 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let topo = common::routing_demo();
    let bounds = topo.routing.bounds;
    // `classify` is the demo's entry gatekeeper.
    match route::parse_envelope(topo, "classify", data) {
        Ok(env) => {
            for s in &env.push {
                assert!(common::is_label(s), "pushed {s:?}");
                assert_eq!(*s, s.to_ascii_lowercase());
                assert!(
                    topo.function(s).is_some() || topo.routing.routes.contains_key(s),
                    "pushed unknown step {s:?}"
                );
            }
            // The runner: the gatekeeper was popped from a stack with the
            // rest of the route under it.
            let mut stack = Stack::new(["log".to_string(), "process".to_string()]);
            let mut progress = Progress {
                steps: 1,
                expansions: 0,
            };
            match stack.expand(&mut progress, &bounds, "classify", &env.push) {
                Ok(()) => {
                    assert_eq!(stack.len(), 2 + env.push.len());
                    assert!(stack.len() <= bounds.max_stack_depth as usize);
                    assert!(stack
                        .steps()
                        .take(env.push.len())
                        .eq(env.push.iter().map(String::as_str)));
                    assert_eq!(progress.expansions, 1);
                }
                Err(RouteError::TooDeep { depth, max }) => {
                    assert!(depth > max as usize);
                    assert_eq!(stack.len(), 2, "a failed expansion leaves the stack");
                }
                Err(e) => panic!("expand: {e:?}"),
            }
            if let Some(event) = &env.event {
                let bytes = serde_json::to_vec(event).expect("an event serialises");
                let back: Value = serde_json::from_slice(&bytes).expect("and parses back");
                assert!(same(event, &back), "event round trip {event:?} -> {back:?}");
            }
        }
        Err(RouteError::BadEnvelope { step, why }) => {
            assert_eq!(step, "classify");
            assert!(!why.is_empty());
        }
        Err(e) => panic!("parse_envelope returned {e:?}"),
    }
});
