//! Lambda *function URL* events (payload format version 2.0), for
//! functions with `interface = "http"`: an HTTP request becomes the JSON
//! event Lambda would pass to the function behind a function URL, and the
//! function's result becomes the HTTP response, with the defaults Lambda
//! applies. Existing Lambda web code (Rust `lambda_http`, Mangum,
//! serverless-http, aws-lambda-web-adapter) then runs unmodified.
//!
//! Pure and transport-neutral: no I/O, nothing here knows which front door
//! the request came through.
//!
//! Formats, from AWS's "Invoking Lambda function URLs"
//! (<https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html>,
//! sections "Request payload format" and "Response payload format"), which
//! follow API Gateway's payload format 2.0
//! (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html>).
//! Where the documents are silent, the choice made and its source are
//! noted where it is made.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::Serialize;
use serde_json::Value;

/// What [`event`] needs to know of one request.
#[derive(Debug, Clone)]
pub(crate) struct UrlRequest<'a> {
    pub(crate) method: &'a Method,
    /// The request target: `rawPath` and `rawQueryString` come from it as
    /// received (still percent-encoded).
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    /// The whole request body.
    pub(crate) body: &'a [u8],
    /// The client's address (`requestContext.http.sourceIp` and
    /// `x-forwarded-for`); `""` in the event when unknown.
    pub(crate) source_ip: Option<IpAddr>,
    /// `"HTTP/1.1"`, `"HTTP/2.0"` or `"HTTP/3.0"`.
    pub(crate) protocol: &'a str,
    /// The host the client asked for, without a port
    /// (`requestContext.domainName`; its first label is `domainPrefix`).
    pub(crate) domain_name: &'a str,
    /// `requestContext.requestId`.
    pub(crate) request_id: &'a str,
    /// `requestContext.accountId`: Lambda sends `"anonymous"` for URLs
    /// without IAM auth.
    pub(crate) account_id: &'a str,
    /// `requestContext.apiId`: Lambda sends the URL id; the function's
    /// name is a fitting stand-in.
    pub(crate) api_id: &'a str,
    /// When the request arrived (`requestContext.time`, `timeEpoch`).
    pub(crate) time: SystemTime,
}

/// The event JSON for `req`.
///
/// - `rawPath` is the path as received; `requestContext.http.path` is the
///   same string (AWS documents both as "the request path").
/// - `rawQueryString` is the query as received, without `?` (`""` when
///   there is none).
/// - `queryStringParameters`: each `&`-separated pair percent-decoded
///   (`+` as a space, as in HTML forms), repeated keys' values joined
///   with `,`; left out when the query is empty.
/// - `headers`: names in lower case, repeated headers joined with `,`.
///   `cookie` headers are not among them: their `;`-separated pairs make
///   up `cookies`. Hop-by-hop headers (`connection`, `keep-alive`,
///   `proxy-connection`, `te`, `trailer`, `transfer-encoding`, `upgrade`)
///   are dropped, `content-length` is the body's length, `host` is added
///   from the URI or `domain_name` when absent (HTTP/2 and HTTP/3 carry
///   it as `:authority`), and `x-forwarded-for`, `x-forwarded-proto`
///   and `x-forwarded-port` are set by the edge, replacing the client's,
///   as Lambda does.
/// - `body` is the body as text when its content type is textual (see
///   [`is_text_content_type`]) and it is valid UTF-8, otherwise base64
///   with `isBase64Encoded: true`; left out when the body is empty.
/// - `routeKey`, `requestContext.routeKey` and `requestContext.stage` are
///   `"$default"`, as Lambda sets them.
pub(crate) fn event(req: &UrlRequest<'_>) -> Vec<u8> {
    let (headers, cookies) = event_headers(req);
    let raw_query = req.uri.query().unwrap_or("");
    let (body, is_base64) = event_body(req.headers, req.body);
    let since_epoch = req.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let source_ip = req.source_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let ev = Event {
        version: "2.0",
        route_key: "$default",
        raw_path: req.uri.path(),
        raw_query_string: raw_query,
        cookies,
        headers,
        query_string_parameters: query_parameters(raw_query),
        request_context: RequestContext {
            account_id: req.account_id,
            api_id: req.api_id,
            domain_name: req.domain_name,
            domain_prefix: req.domain_name.split('.').next().unwrap_or_default(),
            http: HttpDescription {
                method: req.method.as_str(),
                path: req.uri.path(),
                protocol: req.protocol,
                source_ip,
                user_agent: req
                    .headers
                    .get(header::USER_AGENT)
                    .map(lossy)
                    .unwrap_or_default(),
            },
            request_id: req.request_id,
            route_key: "$default",
            stage: "$default",
            time: clf_time(since_epoch.as_secs()),
            time_epoch: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
        },
        body,
        is_base64_encoded: is_base64,
    };
    // Serializing borrowed strings and maps of strings cannot fail.
    serde_json::to_vec(&ev).unwrap_or_default()
}

/// The event, in the field order of AWS's example.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    version: &'static str,
    route_key: &'static str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<Cow<'a, str>>,
    headers: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<String, String>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'a str,
    api_id: &'a str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpDescription<'a>,
    request_id: &'a str,
    route_key: &'static str,
    stage: &'static str,
    time: String,
    time_epoch: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpDescription<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    source_ip: String,
    user_agent: Cow<'a, str>,
}

/// Request headers that describe one connection, not the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers the edge sets itself, replacing the client's copies (`host`
/// is kept as sent, and added only when missing).
const EDGE_SET: [&str; 4] = [
    "content-length",
    "x-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-proto",
];

fn event_headers<'a>(req: &UrlRequest<'a>) -> (BTreeMap<&'a str, String>, Vec<Cow<'a, str>>) {
    let mut out = BTreeMap::new();
    let mut cookies = Vec::new();
    for name in req.headers.keys() {
        let key = name.as_str();
        if name == header::COOKIE {
            for value in req.headers.get_all(name) {
                match lossy(value) {
                    Cow::Borrowed(s) => cookies.extend(cookie_pairs(s).map(Cow::Borrowed)),
                    Cow::Owned(s) => {
                        cookies.extend(cookie_pairs(&s).map(|c| Cow::Owned(c.to_string())))
                    }
                }
            }
            continue;
        }
        if HOP_BY_HOP.contains(&key) || EDGE_SET.contains(&key) {
            continue;
        }
        let mut joined = String::new();
        for (i, value) in req.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push(',');
            }
            joined.push_str(&lossy(value));
        }
        out.insert(key, joined);
    }
    if !out.contains_key("host") {
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(req.domain_name);
        out.insert("host", host.to_string());
    }
    if !req.body.is_empty() {
        out.insert("content-length", req.body.len().to_string());
    }
    if let Some(ip) = req.source_ip {
        out.insert("x-forwarded-for", ip.to_string());
    }
    let scheme = req.uri.scheme_str().unwrap_or("https");
    let port = req
        .uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    out.insert("x-forwarded-proto", scheme.to_string());
    out.insert("x-forwarded-port", port.to_string());
    (out, cookies)
}

/// The `name=value` pairs of one `cookie` header.
fn cookie_pairs(s: &str) -> impl Iterator<Item = &str> {
    s.split(';').map(str::trim).filter(|c| !c.is_empty())
}

/// A header value as text: UTF-8 as is, other bytes (obs-text) replaced
/// with U+FFFD, so that the event is valid JSON and every value still
/// parses as a `HeaderValue` on the function's side.
fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// The body field and `isBase64Encoded`.
fn event_body(headers: &HeaderMap, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let textual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_text_content_type);
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(text.to_string()), false),
        _ => (Some(STANDARD.encode(body)), true),
    }
}

/// Whether Lambda passes a body of this content type as text.
///
/// AWS documents only that "if the content type of the request is
/// binary, the body is base64-encoded" (urls-invocation.html). AWS's own
/// introduction of function URLs (AWS Summit Japan 2022, "リクエストイベント
/// フォーマット") says a body is base64-encoded unless the content type is
/// `application/json` or `text/*`; LocalStack's function URL emulation
/// treats any type containing `text`, `json` or `xml` as text; and
/// `application/x-www-form-urlencoded` bodies do arrive base64-encoded
/// (e.g. LeanerCloud/CUDly#1483). So: text for `text/*`, `application/json`,
/// `application/xml` and any `+json` or `+xml` type; everything else,
/// including a missing content type, is base64. Every adapter named in
/// the module doc decodes base64 bodies, so erring towards base64 is safe.
pub(crate) fn is_text_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("text")
        || (kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype == "xml"))
        || subtype.ends_with("+json")
        || subtype.ends_with("+xml")
}

/// `queryStringParameters`: keys and values percent-decoded, repeated
/// keys' values joined with `,` in the order they came (AWS's example:
/// `parameter1=value1&parameter1=value2` → `"parameter1": "value1,value2"`).
fn query_parameters(raw: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k), form_decode(v));
        match out.get_mut(&k) {
            Some(existing) => {
                existing.push(',');
                existing.push_str(&v);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding of one name or value:
/// `+` is a space, `%XX` a byte; a `%` without two hex digits stays as
/// it is; bytes that are not UTF-8 become U+FFFD.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds since the epoch in Lambda's `time` format,
/// `12/Mar/2020:19:03:58 +0000` (UTC).
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`): year, month 1–12, day 1–31.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The HTTP response a function's result stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why a function's result is not a response (the caller answers 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlResponseError {
    #[error("the function's result is not JSON ({0})")]
    NotJson(String),
    #[error("statusCode {0} is not a whole number from 200 to 599")]
    Status(String),
    #[error("`headers` is not a JSON object of header names to strings")]
    Headers,
    #[error("response header name {0:?} is not a valid HTTP header name")]
    HeaderName(String),
    #[error("response header {0:?} is not a string, number or boolean")]
    HeaderType(String),
    #[error("response header {0:?} has a value with a line break or another control character")]
    HeaderValue(String),
    #[error("`cookies` is not an array of strings")]
    Cookies,
    #[error("cookie {0} of `cookies` has a line break or another control character")]
    CookieValue(usize),
    #[error("`body` is not a string (serialize it, e.g. JSON.stringify or json.dumps)")]
    Body,
    #[error("`isBase64Encoded` is not true or false")]
    Base64Flag,
    #[error("`body` is marked isBase64Encoded but is not base64 ({0})")]
    Base64(String),
}

/// Response headers a function may not set: they describe the connection
/// or the framing, which the front door decides (`content-length` is
/// recomputed from the body). Dropped without an error: `connection`,
/// `keep-alive`, `proxy-connection`, `te`, `trailer`, `transfer-encoding`,
/// `upgrade`, `content-length`.
pub(crate) const DROPPED_RESPONSE_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Base64 as Lambda functions write it: standard alphabet, padding
/// optional.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HTTP response for a function's result (the bytes it returned).
///
/// Per AWS ("Response payload format", urls-invocation.html):
///
/// - A JSON object with a `statusCode` is a structured response:
///   `statusCode` (a whole number, 200–599 here: 1xx is not a final
///   response), `headers` (an object; string, number and boolean values
///   are taken as text), `cookies` (each becomes a `set-cookie` header),
///   `body` (a string, absent or null for none) and `isBase64Encoded`
///   (whether `body` is base64 of the bytes to send). Other fields,
///   including `multiValueHeaders` (not part of format 2.0; `lambda_http`
///   sends it empty), are ignored. Without a `content-type` header the
///   response gets `application/json`: AWS does not document this, but
///   LocalStack's emulation sets it and clients report it from real
///   function URLs (block65/rest-client v9.2.0).
/// - Any other valid JSON (an object without `statusCode`, a string, a
///   number, an array, `null`): "Lambda infers the response format":
///   status 200, `content-type: application/json`, and the body is the
///   function's response itself. A bare string therefore keeps its
///   quotes: `"Hello, world!"` is sent as the 15 bytes `"Hello, world!"`,
///   as in AWS's "Example output for a string response".
/// - A result that is not JSON, or a structured response with a bad
///   status, header, cookie or body, is an error, never a panic.
///
/// [`DROPPED_RESPONSE_HEADERS`] are dropped.
pub(crate) fn response(result: &[u8]) -> Result<UrlResponse, UrlResponseError> {
    let value: Value =
        serde_json::from_slice(result).map_err(|e| UrlResponseError::NotJson(e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Ok(inferred(result));
    };
    let Some(status) = obj.get("statusCode") else {
        return Ok(inferred(result));
    };
    let status = status_code(status)?;
    let mut headers = response_headers(obj.get("headers"), false)?;
    response_cookies(obj.get("cookies"), &mut headers)?;
    let body = response_body(obj.get("body"), obj.get("isBase64Encoded"))?;
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(UrlResponse {
        status,
        headers,
        body,
    })
}

/// The delimiter after a streamed response's prelude: eight NUL bytes.
pub(crate) const PRELUDE_DELIMITER: [u8; 8] = [0; 8];
/// The longest prelude read before its delimiter must have come.
pub(crate) const MAX_PRELUDE: usize = 64 * 1024;
/// The content type of a streamed response that starts with a prelude.
pub(crate) const PRELUDE_CONTENT_TYPE: &str = "application/vnd.awslambda.http-integration-response";

/// A streamed function URL response's prelude (Lambda's
/// `MetadataPrelude`: `statusCode`, `headers`, `cookies`): its status and
/// headers. Header values may also be arrays (several values), as
/// `lambda_runtime` writes them; the content type defaults to
/// `application/octet-stream`.
pub(crate) fn prelude(json: &[u8]) -> Result<(StatusCode, HeaderMap), UrlResponseError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| UrlResponseError::NotJson(e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Err(UrlResponseError::NotJson(
            "the prelude is not a JSON object".into(),
        ));
    };
    let status = match obj.get("statusCode") {
        None | Some(Value::Null) => StatusCode::OK,
        Some(s) => status_code(s)?,
    };
    let mut headers = response_headers(obj.get("headers"), true)?;
    response_cookies(obj.get("cookies"), &mut headers)?;
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok((status, headers))
}

/// A prelude for a head, as executors that know the head write it.
pub(crate) fn prelude_bytes(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        map.insert(name.as_str().to_string(), v);
    }
    let mut out = serde_json::to_vec(&serde_json::json!({
        "statusCode": status.as_u16(),
        "headers": map,
    }))
    .unwrap_or_default();
    out.extend_from_slice(&PRELUDE_DELIMITER);
    out
}

/// A function URL result (JSON) for a head and a whole body: headers
/// with several values joined by `, `, `set-cookie` as `cookies`, the
/// body in base64.
pub(crate) fn result_json(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut map = serde_json::Map::new();
    let mut cookies = Vec::new();
    for name in headers.keys() {
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if name == header::SET_COOKIE {
            cookies.extend(values.map(Value::String));
        } else {
            let joined: Vec<String> = values.collect();
            map.insert(name.as_str().to_string(), Value::String(joined.join(", ")));
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "statusCode": status.as_u16(),
        "headers": map,
        "cookies": cookies,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true,
    }))
    .unwrap_or_default()
}

/// Where the prelude's delimiter ends in `buf`, searching from `from`.
pub(crate) fn prelude_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(PRELUDE_DELIMITER.len() - 1);
    buf.get(start..)?
        .windows(PRELUDE_DELIMITER.len())
        .position(|w| w == PRELUDE_DELIMITER)
        .map(|i| start + i + PRELUDE_DELIMITER.len())
}

/// The result's `headers` object (strings, numbers or booleans; with
/// `arrays`, also arrays of them), less [`DROPPED_RESPONSE_HEADERS`].
fn response_headers(headers: Option<&Value>, arrays: bool) -> Result<HeaderMap, UrlResponseError> {
    let mut out = HeaderMap::new();
    let map = match headers {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(UrlResponseError::Headers),
    };
    for (name, value) in map {
        let values = match value {
            Value::Array(items) if arrays => items.as_slice(),
            v => std::slice::from_ref(v),
        };
        for value in values {
            let text = match value {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                Value::Number(n) => Cow::Owned(n.to_string()),
                Value::Bool(b) => Cow::Owned(b.to_string()),
                Value::Null => continue,
                _ => return Err(UrlResponseError::HeaderType(name.clone())),
            };
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UrlResponseError::HeaderName(name.clone()))?;
            if DROPPED_RESPONSE_HEADERS.contains(&header_name.as_str()) {
                continue;
            }
            let header_value = HeaderValue::from_str(&text)
                .map_err(|_| UrlResponseError::HeaderValue(name.clone()))?;
            out.append(header_name, header_value);
        }
    }
    Ok(out)
}

/// The result's `cookies`, one `set-cookie` each.
fn response_cookies(
    cookies: Option<&Value>,
    headers: &mut HeaderMap,
) -> Result<(), UrlResponseError> {
    let cookies = match cookies {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(cookies)) => cookies,
        Some(_) => return Err(UrlResponseError::Cookies),
    };
    for (i, cookie) in cookies.iter().enumerate() {
        let Value::String(cookie) = cookie else {
            return Err(UrlResponseError::Cookies);
        };
        let value = HeaderValue::from_str(cookie).map_err(|_| UrlResponseError::CookieValue(i))?;
        headers.append(header::SET_COOKIE, value);
    }
    Ok(())
}

/// The result's `body`, base64-decoded when `isBase64Encoded` says so.
fn response_body(body: Option<&Value>, base64: Option<&Value>) -> Result<Bytes, UrlResponseError> {
    let base64 = match base64 {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(UrlResponseError::Base64Flag),
    };
    match body {
        None | Some(Value::Null) => Ok(Bytes::new()),
        Some(Value::String(s)) if base64 => BASE64_LENIENT
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(|e| UrlResponseError::Base64(e.to_string())),
        Some(Value::String(s)) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        Some(_) => Err(UrlResponseError::Body),
    }
}

/// The response Lambda infers for valid JSON without a `statusCode`.
fn inferred(result: &[u8]) -> UrlResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    UrlResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::copy_from_slice(result),
    }
}

fn status_code(value: &Value) -> Result<StatusCode, UrlResponseError> {
    let code = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=1000.0).contains(f))
                .map(|f| f as u64)
        }),
        _ => None,
    };
    code.filter(|c| (200..=599).contains(c))
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| UrlResponseError::Status(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;
    use std::time::Duration;

    /// The parts of `aws_lambda_events::apigw::ApiGatewayV2httpRequest`
    /// (aws-lambda-rust-runtime, lambda-events/src/event/apigw/mod.rs at
    /// 4c4e5fac, the type `lambda_http` tries for function URL events in
    /// lambda-http/src/deserializer.rs) whose absence or type would make
    /// deserialization fail, with the same types:
    /// - `requestContext` and `requestContext.http.method` are required
    ///   (no `#[serde(default)]`); the method goes through `Method::from_str`;
    /// - `headers` values must parse as `HeaderValue`s and names as
    ///   `HeaderName`s (custom_serde/headers.rs), `cookies` is
    ///   `Option<Vec<String>>`, `queryStringParameters` a map of strings,
    ///   `isBase64Encoded` a plain `bool` (null is an error),
    ///   `requestContext.timeEpoch` an `i64`, the rest `Option<String>`.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct V2Request {
        version: Option<String>,
        route_key: Option<String>,
        raw_path: Option<String>,
        raw_query_string: Option<String>,
        cookies: Option<Vec<String>>,
        #[serde(default)]
        headers: HashMap<String, String>,
        #[serde(default)]
        query_string_parameters: HashMap<String, String>,
        request_context: V2Context,
        body: Option<String>,
        #[serde(default)]
        is_base64_encoded: bool,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct V2Context {
        route_key: Option<String>,
        account_id: Option<String>,
        stage: Option<String>,
        request_id: Option<String>,
        #[serde(rename = "apiId")]
        apiid: Option<String>,
        domain_name: Option<String>,
        domain_prefix: Option<String>,
        time: Option<String>,
        #[serde(default)]
        time_epoch: i64,
        http: V2Http,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct V2Http {
        method: String,
        path: Option<String>,
        protocol: Option<String>,
        source_ip: Option<String>,
        user_agent: Option<String>,
    }

    struct Req {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Req {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        Req {
            method: method.parse().unwrap(),
            uri: uri.parse().unwrap(),
            headers: map,
            body: body.to_vec(),
        }
    }

    fn ev(r: &Req) -> Value {
        let url = UrlRequest {
            method: &r.method,
            uri: &r.uri,
            headers: &r.headers,
            body: &r.body,
            source_ip: Some("203.0.113.7".parse().unwrap()),
            protocol: "HTTP/3.0",
            domain_name: "resize.fn.example.com",
            request_id: "0123456789abcdef",
            account_id: "anonymous",
            api_id: "resize",
            time: UNIX_EPOCH + Duration::from_millis(1_583_348_638_390),
        };
        let bytes = event(&url);
        // Every event has the shape lambda_http needs, and is not taken
        // for an API Gateway v1 event (which requires top-level
        // `httpMethod`; lambda_http tries v1 first).
        let shape: V2Request = serde_json::from_slice(&bytes).unwrap();
        shape.request_context.http.method.parse::<Method>().unwrap();
        for (k, v) in &shape.headers {
            HeaderName::from_bytes(k.as_bytes()).unwrap();
            HeaderValue::from_str(v).unwrap();
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(value.get("httpMethod").is_none());
        value
    }

    #[test]
    fn event_matches_aws_example() {
        // AWS's request payload example, as an HTTP request.
        let r = req(
            "POST",
            "https://resize.fn.example.com/my/path?parameter1=value1&parameter1=value2&parameter2=value",
            &[
                ("header1", b"value1"),
                ("header2", b"value1"),
                ("header2", b"value2"),
                ("cookie", b"cookie1=a; cookie2=b"),
                ("user-agent", b"agent"),
                ("content-type", b"text/plain"),
            ],
            b"Hello from client!",
        );
        let v = ev(&r);
        let want = serde_json::json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/my/path",
            "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
            "cookies": ["cookie1=a", "cookie2=b"],
            "headers": {
                "header1": "value1",
                "header2": "value1,value2",
                "user-agent": "agent",
                "content-type": "text/plain",
                "content-length": "18",
                "host": "resize.fn.example.com",
                "x-forwarded-for": "203.0.113.7",
                "x-forwarded-proto": "https",
                "x-forwarded-port": "443"
            },
            "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "resize",
                "domainName": "resize.fn.example.com",
                "domainPrefix": "resize",
                "http": {
                    "method": "POST",
                    "path": "/my/path",
                    "protocol": "HTTP/3.0",
                    "sourceIp": "203.0.113.7",
                    "userAgent": "agent"
                },
                "requestId": "0123456789abcdef",
                "routeKey": "$default",
                "stage": "$default",
                "time": "04/Mar/2020:19:03:58 +0000",
                "timeEpoch": 1_583_348_638_390_u64
            },
            "body": "Hello from client!",
            "isBase64Encoded": false
        });
        assert_eq!(v, want);
    }

    #[test]
    fn minimal_event_omits_optional_fields() {
        let r = req("GET", "/", &[], b"");
        let v = ev(&r);
        for absent in ["cookies", "queryStringParameters", "body"] {
            assert!(v.get(absent).is_none(), "{absent}: {v}");
        }
        assert_eq!(v["rawQueryString"], "");
        assert_eq!(v["isBase64Encoded"], false);
        assert_eq!(v["headers"]["host"], "resize.fn.example.com");
        assert!(v["headers"].get("content-length").is_none());
        assert_eq!(v["requestContext"]["http"]["userAgent"], "");
    }

    #[test]
    fn headers_edge_owned_and_hop_by_hop() {
        let r = req(
            "PUT",
            "http://resize.fn.example.com:8443/x",
            &[
                ("connection", b"keep-alive"),
                ("transfer-encoding", b"chunked"),
                ("upgrade", b"h2c"),
                ("te", b"trailers"),
                ("content-length", b"999"),
                ("x-forwarded-for", b"10.0.0.1"),
                ("x-forwarded-proto", b"http"),
                ("host", b"Resize.FN.example.com:8443"),
                ("x-latin1", b"caf\xe9"),
            ],
            b"abc",
        );
        let h = ev(&r)["headers"].clone();
        for gone in ["connection", "transfer-encoding", "upgrade", "te"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["content-length"], "3");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert_eq!(h["host"], "Resize.FN.example.com:8443");
        assert_eq!(h["x-latin1"], "caf\u{fffd}");
    }

    #[test]
    fn cookies_from_every_cookie_header() {
        let r = req(
            "GET",
            "/",
            &[("cookie", b"a=1;b=2"), ("cookie", b" c=3 ; ;d=4")],
            b"",
        );
        let v = ev(&r);
        assert_eq!(
            v["cookies"],
            serde_json::json!(["a=1", "b=2", "c=3", "d=4"])
        );
        assert!(v["headers"].get("cookie").is_none());
    }

    #[test]
    fn query_parameters_decoded() {
        let cases: &[(&str, Value)] = &[
            ("a=1&b=2", serde_json::json!({"a": "1", "b": "2"})),
            ("a=1&a=2&a=3", serde_json::json!({"a": "1,2,3"})),
            ("q=hello+world%21", serde_json::json!({"q": "hello world!"})),
            ("k=a%2Cb", serde_json::json!({"k": "a,b"})),
            ("na%C3%AFve=%E2%9C%93", serde_json::json!({"naïve": "✓"})),
            ("flag&x=", serde_json::json!({"flag": "", "x": ""})),
            ("a=1&&b=2&", serde_json::json!({"a": "1", "b": "2"})),
            ("bad=%zz%4", serde_json::json!({"bad": "%zz%4"})),
            ("bin=%ff", serde_json::json!({"bin": "\u{fffd}"})),
            ("eq=a=b", serde_json::json!({"eq": "a=b"})),
        ];
        for (query, want) in cases {
            let r = req("GET", &format!("/p?{query}"), &[], b"");
            let v = ev(&r);
            assert_eq!(v["rawQueryString"], *query);
            assert_eq!(v["queryStringParameters"], *want, "{query}");
        }
    }

    #[test]
    fn body_text_or_base64() {
        let cases: &[(Option<&str>, &[u8], &str, bool)] = &[
            (Some("application/json"), b"{\"a\":1}", "{\"a\":1}", false),
            (Some("Application/JSON; charset=utf-8"), b"[]", "[]", false),
            (Some("text/html"), "héllo".as_bytes(), "héllo", false),
            (Some("application/vnd.api+json"), b"{}", "{}", false),
            (Some("application/xml"), b"<a/>", "<a/>", false),
            (Some("image/svg+xml"), b"<svg/>", "<svg/>", false),
            (Some("application/octet-stream"), b"abc", "YWJj", true),
            (
                Some("application/x-www-form-urlencoded"),
                b"a=1",
                "YT0x",
                true,
            ),
            (
                Some("multipart/form-data; boundary=x"),
                b"abc",
                "YWJj",
                true,
            ),
            (None, b"abc", "YWJj", true),
            (Some("text/plain"), b"\xff\xfe", "//4=", true),
            (Some("garbage"), b"abc", "YWJj", true),
        ];
        for (ct, body, want, b64) in cases {
            let headers: Vec<(&str, &[u8])> =
                ct.iter().map(|c| ("content-type", c.as_bytes())).collect();
            let v = ev(&req("POST", "/", &headers, body));
            assert_eq!(v["body"], *want, "{ct:?}");
            assert_eq!(v["isBase64Encoded"], *b64, "{ct:?}");
        }
    }

    #[test]
    fn times() {
        let cases = [
            (0, "01/Jan/1970:00:00:00 +0000"),
            (951_782_400, "29/Feb/2000:00:00:00 +0000"),
            (1_583_348_638, "04/Mar/2020:19:03:58 +0000"),
            (1_631_055_022, "07/Sep/2021:22:50:22 +0000"),
            (4_102_444_799, "31/Dec/2099:23:59:59 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(clf_time(secs), want, "{secs}");
        }
    }

    /// A result, the status, headers and body it stands for.
    type StructuredCase = (
        &'static str,
        u16,
        &'static [(&'static str, &'static str)],
        &'static [u8],
    );
    /// A bad result and a check of its error.
    type ErrorCase = (&'static [u8], fn(&UrlResponseError) -> bool);

    fn ok(result: &str) -> UrlResponse {
        response(result.as_bytes()).unwrap()
    }

    #[test]
    fn inferred_responses() {
        // AWS: valid JSON without statusCode → 200, application/json, the
        // function's response as the body (a string keeps its quotes).
        for result in [
            "\"Hello, world!\"",
            "{\n  \"message\": \"Hello, world!\"\n}",
            "{\"body\": \"x\", \"headers\": {\"a\": \"b\"}}",
            "[1,2]",
            "42",
            "null",
            "true",
        ] {
            let r = ok(result);
            assert_eq!(r.status, StatusCode::OK, "{result}");
            assert_eq!(r.headers.len(), 1, "{result}");
            assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
            assert_eq!(r.body, result.as_bytes(), "{result}");
        }
        assert_eq!(ok("\"Hello, world!\"").body.len(), 15);
    }

    #[test]
    fn structured_responses() {
        // AWS's custom response and cookies examples.
        let r = ok(r#"{
            "statusCode": 201,
            "headers": {"Content-Type": "application/json", "My-Custom-Header": "Custom Value"},
            "body": "{ \"message\": \"Hello, world!\" }",
            "cookies": ["Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT", "Cookie_2=Value2; Max-Age=78000"],
            "isBase64Encoded": false
        }"#);
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["my-custom-header"], "Custom Value");
        let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(
            cookies,
            [
                "Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT",
                "Cookie_2=Value2; Max-Age=78000"
            ]
        );
        assert_eq!(r.body, "{ \"message\": \"Hello, world!\" }");

        let cases: &[StructuredCase] = &[
            // No body, no headers: empty body, the default content type.
            (
                r#"{"statusCode": 204}"#,
                204,
                &[("content-type", "application/json")],
                b"",
            ),
            (
                r#"{"statusCode": 302, "headers": {"location": "/x"}, "body": null}"#,
                302,
                &[("location", "/x"), ("content-type", "application/json")],
                b"",
            ),
            // Base64 bodies, padded or not.
            (
                r#"{"statusCode": 200, "headers": {"content-type": "image/png"}, "body": "iVBORw==", "isBase64Encoded": true}"#,
                200,
                &[("content-type", "image/png")],
                b"\x89PNG",
            ),
            (
                r#"{"statusCode": 200, "headers": {"content-type": "a/b"}, "body": "YWJj", "isBase64Encoded": true}"#,
                200,
                &[("content-type", "a/b")],
                b"abc",
            ),
            (
                r#"{"statusCode": 200, "headers": {"content-type": "a/b"}, "body": "YQ", "isBase64Encoded": true}"#,
                200,
                &[("content-type", "a/b")],
                b"a",
            ),
            // Scalars as header values; null headers skipped; hop-by-hop
            // and framing headers dropped.
            (
                r#"{"statusCode": 200.0, "headers": {"content-type": "text/plain", "x-n": 5, "x-b": true, "x-null": null,
                    "Connection": "close", "transfer-encoding": "chunked", "content-length": "99", "upgrade": "h2c",
                    "keep-alive": "1", "te": "x", "trailer": "y", "proxy-connection": "z"},
                    "body": "hi", "multiValueHeaders": {"x-mv": ["1"]}, "extra": 1}"#,
                200,
                &[
                    ("content-type", "text/plain"),
                    ("x-n", "5"),
                    ("x-b", "true"),
                ],
                b"hi",
            ),
            // lambda_http's own output for a text response.
            (
                r#"{"statusCode":200,"headers":{"content-type":"text/html"},"multiValueHeaders":{},"body":"<p>hi</p>","isBase64Encoded":false,"cookies":[]}"#,
                200,
                &[("content-type", "text/html")],
                b"<p>hi</p>",
            ),
            // Headers whose names differ only in case both stay.
            (
                r#"{"statusCode": 500, "headers": {"X-A": "1", "x-a": "2", "content-type": "t/t"}}"#,
                500,
                &[("x-a", "1"), ("x-a", "2"), ("content-type", "t/t")],
                b"",
            ),
        ];
        for (result, status, headers, body) in cases {
            let r = ok(result);
            assert_eq!(r.status.as_u16(), *status, "{result}");
            assert_eq!(r.body, *body, "{result}");
            let mut got: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let mut want: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{result}");
        }
    }

    #[test]
    fn bad_results_are_errors() {
        use UrlResponseError as E;
        let cases: &[ErrorCase] = &[
            (b"", |e| matches!(e, E::NotJson(_))),
            (b"Hello", |e| matches!(e, E::NotJson(_))),
            (b"{\"statusCode\": 200", |e| matches!(e, E::NotJson(_))),
            (b"\xff", |e| matches!(e, E::NotJson(_))),
            (br#"{"statusCode": "200"}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 99}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 101}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 600}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": -1}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 200.5}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 1e300}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": null}"#, |e| matches!(e, E::Status(_))),
            (br#"{"statusCode": 200, "headers": []}"#, |e| {
                *e == E::Headers
            }),
            (
                br#"{"statusCode": 200, "headers": {"bad name": "x"}}"#,
                |e| matches!(e, E::HeaderName(_)),
            ),
            (br#"{"statusCode": 200, "headers": {"": "x"}}"#, |e| {
                matches!(e, E::HeaderName(_))
            }),
            (
                br#"{"statusCode": 200, "headers": {"x": "a\r\nb: c"}}"#,
                |e| matches!(e, E::HeaderValue(_)),
            ),
            (br#"{"statusCode": 200, "headers": {"x": ["a"]}}"#, |e| {
                matches!(e, E::HeaderType(_))
            }),
            (br#"{"statusCode": 200, "cookies": "a=b"}"#, |e| {
                *e == E::Cookies
            }),
            (br#"{"statusCode": 200, "cookies": [1]}"#, |e| {
                *e == E::Cookies
            }),
            (
                br#"{"statusCode": 200, "cookies": ["ok=1", "a=\n"]}"#,
                |e| *e == E::CookieValue(1),
            ),
            (br#"{"statusCode": 200, "body": {"a": 1}}"#, |e| {
                *e == E::Body
            }),
            (br#"{"statusCode": 200, "body": 5}"#, |e| *e == E::Body),
            (br#"{"statusCode": 200, "isBase64Encoded": "true"}"#, |e| {
                *e == E::Base64Flag
            }),
            (
                br#"{"statusCode": 200, "body": "not base64!", "isBase64Encoded": true}"#,
                |e| matches!(e, E::Base64(_)),
            ),
        ];
        for (result, check) in cases {
            let err = response(result).unwrap_err();
            assert!(check(&err), "{}: {err:?}", String::from_utf8_lossy(result));
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn text_content_types() {
        for (ct, text) in [
            ("text/plain", true),
            ("TEXT/CSV; charset=utf-8", true),
            ("application/json", true),
            ("application/problem+json", true),
            ("application/atom+xml", true),
            ("application/xml", true),
            ("application/javascript", false),
            ("application/x-www-form-urlencoded", false),
            ("application/octet-stream", false),
            ("image/png", false),
            ("json", false),
            ("", false),
        ] {
            assert_eq!(is_text_content_type(ct), text, "{ct}");
        }
    }
}

/// Function results and client requests are input from outside: whatever
/// they hold, conversion answers or errors, never panics.
#[cfg(test)]
mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_as_a_result(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = response(&bytes);
        }

        #[test]
        fn structured_results_with_any_fields(
            status in any::<i64>(),
            name in ".{0,20}",
            value in ".{0,40}",
            cookie in ".{0,40}",
            body in ".{0,60}",
            base64 in any::<bool>(),
        ) {
            let result = serde_json::json!({
                "statusCode": status,
                "headers": { name: value },
                "cookies": [cookie],
                "body": body,
                "isBase64Encoded": base64,
            });
            let bytes = serde_json::to_vec(&result).unwrap_or_default();
            if let Ok(r) = response(&bytes) {
                prop_assert!((200..=599).contains(&r.status.as_u16()));
            }
        }

        #[test]
        fn any_request_makes_an_event(
            path in "/[ -~]{0,40}",
            header in "[ -~]{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let Ok(uri) = path.parse::<Uri>() else { return Ok(()) };
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&header) {
                headers.insert(header::COOKIE, v.clone());
                headers.insert(header::CONTENT_TYPE, v);
            }
            let req = UrlRequest {
                method: &Method::POST,
                uri: &uri,
                headers: &headers,
                body: &body,
                source_ip: None,
                protocol: "HTTP/2.0",
                domain_name: "web.fn.test",
                request_id: "r",
                account_id: "anonymous",
                api_id: "web",
                time: std::time::SystemTime::now(),
            };
            let event = event(&req);
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&event).is_ok());
        }
    }
}
