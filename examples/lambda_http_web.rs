//! A web function on AWS's Rust `lambda_http` crate, the real Lambda web
//! adapter that fnroute's `interface = "http"` must interoperate with.
//!
//! It is a Lambda Runtime API client like `lambda_echo`, but its events are
//! Lambda *function URL* requests (payload format 2.0, the API Gateway HTTP
//! API v2 shape) and its results are `{statusCode, headers, cookies, body,
//! isBase64Encoded}` objects that fnroute turns into the HTTP response.
//! `lambda_http` is built with only its `apigw_http` feature, so an event that
//! is not a v2.0 HTTP event fails to deserialize (an invocation error).
//!
//! Routes:
//! - `GET /`: an HTML page for the browser CORS test. `GET /?api=URL` (URL a
//!   function's base URL ending in `/`) runs a
//!   script that `fetch`es `POST URLecho?from=page` with `content-type:
//!   application/json` (so the browser sends a preflight `OPTIONS` first) and
//!   writes the answer into `<pre id="result">`; `document.title` becomes
//!   `done` or `failed: ...`, which `chromium --headless --dump-dom` shows.
//!   The test serves the page from one function host and passes another
//!   function host (the same binary) as `api`, so the fetch is cross-origin.
//! - `GET /hello?name=X`: `text/plain` `hello X` with `set-cookie`
//!   (a function URL result's `cookies`), `x-fn: lambda_http`,
//!   `cache-control: public, max-age=60` and an `etag`; a matching
//!   `if-none-match` gets `304` with no body.
//! - `GET /bytes?n=N`: N bytes `0, 1, 2, ...` (mod 256, default 256) as
//!   `application/octet-stream`, which `lambda_http` returns base64-encoded
//!   (`isBase64Encoded: true`).
//! - `POST /echo`: JSON `{method, path, query, headers, body, bodyBase64}`
//!   with the query parameters (name to list of values), the `content-type`,
//!   `user-agent`, `origin` and `cookie` headers it saw (null when absent)
//!   and the body: text when it is UTF-8, else base64 with `bodyBase64: true`.
//!   It answers CORS: `access-control-allow-origin` echoes the `origin`
//!   (or `*`), and `OPTIONS /echo` is a preflight answer (204).
//! - anything else: `404` text.
//!
//! What `lambda_http` 1.3 needs of an event (seen with this binary): only
//! `requestContext.http.method` is required (and routing wants `rawPath`,
//! `rawQueryString`); a `requestContext.stage` other than `$default` is
//! prefixed to the path; the `host` header, else `requestContext.domainName`,
//! must be a valid host name or `lambda_http` panics (an invocation error).
//! Its result always has `multiValueHeaders: {}` and `cookies` (the
//! `set-cookie` headers), and keeps only the first value of any other
//! repeated header.
//!
//! Tests point a topology's `[[function]] interface = "http"` at the built
//! binary (`target/.../examples/lambda_http_web`, built by a plain `cargo
//! test`), as the exec tests do with `lambda_echo`.

use std::collections::BTreeMap;

use lambda_http::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::{service_fn, Body, Error, Request, RequestExt, Response};
use serde_json::{json, Value};

async fn handler(req: Request) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/") => page(),
        (&Method::GET, "/hello") => hello(&req),
        (&Method::GET, "/bytes") => bytes(&req),
        (&Method::POST, "/echo") => with_cors(&req, echo(&req, &path)),
        (&Method::OPTIONS, "/echo") => preflight(&req),
        (m, p) => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(format!("not found: {m} {p}\n"))),
    };
    Ok(resp?)
}

fn page() -> Result<Response<Body>, lambda_http::http::Error> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(PAGE))
}

fn hello(req: &Request) -> Result<Response<Body>, lambda_http::http::Error> {
    let query = req.query_string_parameters();
    let name = query.first("name").unwrap_or("world");
    let text = format!("hello {name}");
    let etag = format!("\"{:016x}\"", fnv1a(text.as_bytes()));
    // A cookie value may not hold spaces, commas, semicolons, quotes...
    let cookie_value: String = name.chars().map(cookie_safe).collect();
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let builder = Response::builder()
        .header("x-fn", "lambda_http")
        .header(header::CACHE_CONTROL, "public, max-age=60")
        .header(header::ETAG, &etag);
    if not_modified {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::Empty);
    }
    builder
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(
            header::SET_COOKIE,
            format!("last_name={cookie_value}; Path=/; Max-Age=3600; SameSite=Lax"),
        )
        .body(Body::from(text))
}

fn bytes(req: &Request) -> Result<Response<Body>, lambda_http::http::Error> {
    let n = req
        .query_string_parameters()
        .first("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(256)
        .min(1 << 20);
    let data: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::Binary(data))
}

fn echo(req: &Request, path: &str) -> Result<Response<Body>, lambda_http::http::Error> {
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.query_string_parameters().iter() {
        query.entry(k.to_string()).or_default().push(v.to_string());
    }
    let seen = |name: &str| -> Value {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            Value::Null
        } else {
            Value::from(values.join(", "))
        }
    };
    let raw: &[u8] = match req.body() {
        Body::Text(s) => s.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    };
    let (body, base64) = match std::str::from_utf8(raw) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (base64_encode(raw), true),
    };
    let out = json!({
        "method": req.method().as_str(),
        "path": path,
        "query": query,
        "headers": {
            "content-type": seen("content-type"),
            "user-agent": seen("user-agent"),
            "origin": seen("origin"),
            "cookie": seen("cookie"),
        },
        "body": body,
        "bodyBase64": base64,
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(out.to_string()))
}

fn allow_origin(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"))
}

fn with_cors(
    req: &Request,
    resp: Result<Response<Body>, lambda_http::http::Error>,
) -> Result<Response<Body>, lambda_http::http::Error> {
    let mut resp = resp?;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        allow_origin(req.headers()),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(resp)
}

fn preflight(req: &Request) -> Result<Response<Body>, lambda_http::http::Error> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            allow_origin(req.headers()),
        )
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS")
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type")
        .header(header::ACCESS_CONTROL_MAX_AGE, "60")
        .header(header::VARY, "origin")
        .body(Body::Empty)
}

fn cookie_safe(c: char) -> char {
    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
        c
    } else {
        '_'
    }
}

/// 64-bit FNV-1a, for a stable etag without another dependency.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Standard base64 with padding.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const PAGE: &str = r##"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>loading</title>
</head>
<body>
<h1>fnroute lambda_http page</h1>
<p>Posts JSON to <code id="api"></code>echo and shows the answer.</p>
<pre id="result">pending</pre>
<script>
(async () => {
  const result = document.getElementById("result");
  const fail = (msg) => {
    result.textContent = msg;
    document.title = "failed: " + msg;
  };
  const api = new URLSearchParams(location.search).get("api");
  if (!api) {
    fail("no ?api= given");
    return;
  }
  document.getElementById("api").textContent = api;
  try {
    const url = new URL("echo?from=page", api);
    const resp = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ hello: "from the page", page: location.origin }),
    });
    const text = await resp.text();
    if (!resp.ok) {
      fail("HTTP " + resp.status + ": " + text);
      return;
    }
    result.textContent = text;
    document.title = "done";
  } catch (e) {
    fail(String(e && e.message ? e.message : e));
  }
})();
</script>
</body>
</html>
"##;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(handler)).await
}
