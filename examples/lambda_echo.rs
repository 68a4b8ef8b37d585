//! A test function on AWS's Rust `lambda_runtime` crate, the real runtime
//! client fnroute's Lambda Runtime API server must interoperate with.
//!
//! The event is echoed back, except:
//! - `{"error": "SomeType", "message": "..."}` fails with that error type;
//! - `{"sleep_ms": N, ...}` sleeps N ms first (deadline tests);
//! - `{"exit": N}` exits the process with code N mid-invocation (crash tests).

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let payload = event.payload;
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
        std::process::exit(i32::try_from(code).unwrap_or(1));
    }
    if let Some(kind) = payload.get("error").and_then(Value::as_str) {
        let message = payload
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("requested error");
        return Err(Diagnostic {
            error_type: kind.to_string(),
            error_message: message.to_string(),
        });
    }
    Ok(payload)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(handler)).await
}
