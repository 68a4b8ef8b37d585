//! Bytes → one request a worker sends to the loopback Lambda Runtime API:
//! method, path, the two headers the server reads and the body, through
//! `exec::parse_runtime_request` (the function the server's `handle`
//! calls once the body is read).
//!
//! Input layout: byte 0 picks the method and which headers are set;
//! then `path \n error-type \n content-type \n body`. A path is built
//! from a Runtime API prefix (also picked by byte 0) and the fuzzed text
//! so the interesting routes are reached.
//!
//! Checks: no panic; a routed request rebuilds to exactly the path it came
//! from; request ids are non-empty and contain no '/'; an error has a
//! non-empty type and a message of at most 4096 bytes that is a prefix of
//! the body's `errorMessage` (or of the body itself); the body's
//! non-empty `errorType` wins over the header's (an empty one is none).
#![no_main]

use fnroute::exec::{parse_runtime_request, RuntimeRequest};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

/// `lambda::MAX_ERROR_MESSAGE`.
const MAX_ERROR_MESSAGE: usize = 4096;
const BASE: &str = "/2018-06-01/runtime/";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let method = match sel & 3 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::HEAD,
    };
    let mut parts = rest.splitn(4, |&b| b == b'\n');
    let raw_path = parts.next().unwrap_or_default();
    let error_type = parts.next().unwrap_or_default();
    let content_type = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    // Paths reach the server through hyper's URI parser: keep only what a
    // URI path may hold.
    let tail: String = String::from_utf8_lossy(raw_path)
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#'))
        .collect();
    let prefix = match (sel >> 2) & 3 {
        0 => "",
        1 => BASE,
        2 => "/2018-06-01/runtime/invocation/",
        _ => "/2018-06-01/runtime/init/",
    };
    let path = format!("{prefix}{tail}");

    let mut headers = HeaderMap::new();
    if sel & 0x10 != 0 {
        if let Ok(v) = HeaderValue::from_bytes(error_type) {
            headers.insert("lambda-runtime-function-error-type", v);
        }
    }
    if sel & 0x20 != 0 {
        if let Ok(v) = HeaderValue::from_bytes(content_type) {
            headers.insert(http::header::CONTENT_TYPE, v);
        }
    }
    let header_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok());

    // The report format: a JSON object (or array) of optional strings,
    // as serde reads it; anything else is no report.
    #[derive(serde::Deserialize)]
    struct Report {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
        #[serde(rename = "errorMessage")]
        error_message: Option<String>,
    }
    let body_error = || match serde_json::from_slice::<Report>(body) {
        Ok(r) => (r.error_type, r.error_message),
        Err(_) => (None, None),
    };
    let check_error = |error_type: &str, message: &str| {
        assert!(!error_type.is_empty(), "empty error type");
        assert!(
            message.len() <= MAX_ERROR_MESSAGE,
            "message of {} bytes",
            message.len()
        );
        let (bt, bm) = body_error();
        match bt.filter(|t| !t.is_empty()) {
            Some(t) => assert_eq!(error_type, t, "the body's type wins"),
            None => match header_type.filter(|h| !h.is_empty()) {
                Some(h) => assert_eq!(error_type, h),
                None => assert_eq!(error_type, "Unhandled"),
            },
        }
        let full = bm.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        assert!(
            full.starts_with(message),
            "message is not a prefix of what was sent"
        );
        if full.len() <= MAX_ERROR_MESSAGE {
            assert_eq!(message, full);
        }
    };

    match parse_runtime_request(&method, &path, &headers, body) {
        RuntimeRequest::Next => {
            assert_eq!(method, Method::GET);
            assert_eq!(path, "/2018-06-01/runtime/invocation/next");
        }
        RuntimeRequest::Response {
            request_id,
            content_type,
        } => {
            assert_eq!(method, Method::POST);
            assert!(!request_id.is_empty() && !request_id.contains('/'));
            assert_eq!(path, format!("{BASE}invocation/{request_id}/response"));
            assert_eq!(
                content_type,
                headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
            );
        }
        RuntimeRequest::Error {
            request_id,
            error_type,
            message,
        } => {
            assert_eq!(method, Method::POST);
            assert!(!request_id.is_empty() && !request_id.contains('/'));
            assert_eq!(path, format!("{BASE}invocation/{request_id}/error"));
            check_error(&error_type, &message);
        }
        RuntimeRequest::InitError {
            error_type,
            message,
        } => {
            assert_eq!(method, Method::POST);
            assert_eq!(path, "/2018-06-01/runtime/init/error");
            check_error(&error_type, &message);
        }
        RuntimeRequest::Unknown => {}
    }
});
