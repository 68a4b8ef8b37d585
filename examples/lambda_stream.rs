//! A streaming function on AWS's Rust `lambda_runtime` crate, unmodified
//! (its `StreamResponse`): fnroute's Runtime API must take its chunked
//! `…/response` in streaming mode, its prelude and its mid-stream errors.
//!
//! Each chunk is one line with the time it was written (ns since the
//! epoch). The event says how:
//! - `{"chunks": N, "every_ms": M}`: N lines, M ms apart (default 5, 100);
//! - `"fail_after": K`: after K lines the stream yields an error;
//! - `"pid_file": "PATH"`: the process writes its pid there first.
//!
//! A function URL event (it has `requestContext`) gets server-sent events
//! with status 201, `content-type: text/event-stream` and a cookie, set in
//! the stream's prelude.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lambda_runtime::{service_fn, Error, LambdaEvent, MetadataPrelude, StreamResponse};
use serde_json::Value;

type Lines = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Error>> + Send>>;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn handler(event: LambdaEvent<Value>) -> Result<StreamResponse<Lines>, Error> {
    let e = event.payload;
    if let Some(path) = e.get("pid_file").and_then(Value::as_str) {
        std::fs::write(path, std::process::id().to_string())?;
    }
    let url = e.get("requestContext").is_some();
    let n = e.get("chunks").and_then(Value::as_u64).unwrap_or(5);
    let every = Duration::from_millis(e.get("every_ms").and_then(Value::as_u64).unwrap_or(100));
    let fail_after = e.get("fail_after").and_then(Value::as_u64);
    let lines = futures_util::stream::unfold(0u64, move |i| async move {
        if i == n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        if fail_after == Some(i) {
            return Some((Err(Error::from("the stream broke on purpose")), n));
        }
        let line = if url {
            format!("data: {}\n\n", now_ns())
        } else {
            format!("{}\n", now_ns())
        };
        Some((Ok(Bytes::from(line)), i + 1))
    });
    let mut prelude = MetadataPrelude::default();
    if url {
        prelude.status_code = http::StatusCode::CREATED;
        prelude.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        prelude.cookies.push("session=streamed; Path=/".into());
    }
    Ok(StreamResponse {
        metadata_prelude: prelude,
        stream: Box::pin(lines),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
