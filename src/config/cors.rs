//! CORS for a function's HTTP interface: a function's `cors` policy,
//! evaluated at the edge. Preflights are answered without running the
//! function ([`CorsPolicy::preflight`]); actual responses get the
//! policy's headers ([`CorsPolicy::decorate`]).
//!
//! The settings and their meaning follow Lambda function URLs' CORS
//! configuration (<https://docs.aws.amazon.com/lambda/latest/api/API_Cors.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/urls-configuration.html#urls-cors>):
//! `*` allows every origin, method or header; the configured headers take
//! precedence over CORS headers the function sets itself. What a browser
//! checks is the Fetch standard's CORS protocol
//! (<https://fetch.spec.whatwg.org/#http-cors-protocol>): origins are
//! compared whole, methods byte for byte, header names case-insensitively;
//! a `*` in `Access-Control-Allow-Origin` or `-Expose-Headers` means
//! nothing to a request with credentials.
//!
//! Pure: no I/O.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// A function's CORS policy (`[[function]] cors = { … }`). Plain data:
/// check it once with [`CorsPolicy::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CorsPolicy {
    /// Origins allowed to call, as `scheme://host[:port]`, or `*` for all
    /// (not with `allow_credentials`). Compared ASCII case-insensitively.
    pub(crate) allow_origins: Vec<String>,
    /// Methods a preflight may ask for, or `*` for any. GET, HEAD and
    /// POST are always allowed (browsers never check them).
    pub(crate) allow_methods: Vec<String>,
    /// Request headers a preflight may ask for, or `*` for any header
    /// except `authorization`, which must be listed by name (as in
    /// Fetch).
    pub(crate) allow_headers: Vec<String>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    pub(crate) expose_headers: Vec<String>,
    /// Whether requests may carry cookies or other credentials
    /// (`Access-Control-Allow-Credentials: true`).
    pub(crate) allow_credentials: bool,
    /// How long a browser may cache a preflight's answer
    /// (`Access-Control-Max-Age`, at most 86400); not sent when unset,
    /// and browsers then cache for 5 seconds.
    pub(crate) max_age_s: Option<u32>,
}

/// The edge's answer to a CORS preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preflight {
    /// 204 when allowed, 403 when refused.
    pub(crate) status: StatusCode,
    /// The CORS headers (none of the `Access-Control-Allow-*` ones when
    /// refused) and `Vary`.
    pub(crate) headers: HeaderMap,
    /// Why the preflight was refused, for logs; `None` when allowed.
    pub(crate) refused: Option<Refusal>,
}

/// Why a preflight was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The origin is not in `allow_origins`.
    Origin(String),
    /// The requested method is not in `allow_methods`.
    Method(String),
    /// A requested header is not in `allow_headers`.
    Header(String),
}

/// One problem with a [`CorsPolicy`], naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CorsProblem {
    #[error("allow_origins is empty, so no origin is allowed: list origins such as \"https://app.example.com\", or \"*\"")]
    NoOrigins,
    #[error("allow_origins entry {0:?} is not an origin: write scheme://host[:port], without a path or trailing slash, e.g. \"https://app.example.com\"")]
    BadOrigin(String),
    #[error("allow_origins entry \"null\" would let any sandboxed page or local file call the function: list real origins")]
    NullOrigin,
    #[error("allow_credentials = true cannot be combined with allow_origins = [\"*\"] (browsers refuse it): list the origins")]
    CredentialsWithAnyOrigin,
    #[error("expose_headers = [\"*\"] exposes nothing to requests with credentials: list the header names")]
    CredentialsWithAnyExposed,
    #[error("allow_methods entry {0:?} is not an HTTP method name")]
    BadMethod(String),
    #[error("allow_methods entry {0:?} will not match: browsers send {1}, and methods are compared case-sensitively")]
    LowercaseMethod(String, String),
    #[error("{key} entry {name:?} is not an HTTP header name")]
    BadHeader { key: &'static str, name: String },
    #[error("max_age_s = {0} is over 86400 (a day), the most Lambda allows and Firefox honours")]
    MaxAge(u32),
}

impl CorsProblem {
    /// The policy key the problem is about.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::NoOrigins | Self::BadOrigin(_) | Self::NullOrigin => "allow_origins",
            Self::CredentialsWithAnyOrigin | Self::CredentialsWithAnyExposed => "allow_credentials",
            Self::BadMethod(_) | Self::LowercaseMethod(..) => "allow_methods",
            Self::BadHeader { key, .. } => key,
            Self::MaxAge(_) => "max_age_s",
        }
    }
}

/// The most `max_age_s` may be.
const MAX_AGE_LIMIT: u32 = 86_400;

/// Methods Fetch normalizes to upper case before sending them.
const NORMALIZED_METHODS: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];

/// Methods a browser sends without asking first (CORS-safelisted).
const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

fn is_wildcard(list: &[String]) -> bool {
    list.iter().any(|s| s == "*")
}

impl CorsPolicy {
    /// Every problem with the policy (all of them, not just the first).
    pub(crate) fn validate(&self) -> Result<(), Vec<CorsProblem>> {
        let mut problems = Vec::new();
        if self.allow_origins.is_empty() {
            problems.push(CorsProblem::NoOrigins);
        }
        for origin in &self.allow_origins {
            if origin == "*" {
                continue;
            }
            if origin.eq_ignore_ascii_case("null") {
                problems.push(CorsProblem::NullOrigin);
            } else if !is_origin(origin) {
                problems.push(CorsProblem::BadOrigin(origin.clone()));
            }
        }
        if self.allow_credentials && is_wildcard(&self.allow_origins) {
            problems.push(CorsProblem::CredentialsWithAnyOrigin);
        }
        if self.allow_credentials && is_wildcard(&self.expose_headers) {
            problems.push(CorsProblem::CredentialsWithAnyExposed);
        }
        for method in &self.allow_methods {
            if method == "*" {
                continue;
            }
            if Method::from_bytes(method.as_bytes()).is_err() {
                problems.push(CorsProblem::BadMethod(method.clone()));
            } else if let Some(upper) = NORMALIZED_METHODS
                .iter()
                .chain(["PATCH"].iter())
                .find(|m| m.eq_ignore_ascii_case(method) && *m != method)
            {
                problems.push(CorsProblem::LowercaseMethod(
                    method.clone(),
                    (*upper).to_string(),
                ));
            }
        }
        for (key, list) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for name in list {
                if name != "*" && HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push(CorsProblem::BadHeader {
                        key,
                        name: name.clone(),
                    });
                }
            }
        }
        if let Some(age) = self.max_age_s.filter(|a| *a > MAX_AGE_LIMIT) {
            problems.push(CorsProblem::MaxAge(age));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Whether `origin` may call. `*` does not count with credentials
    /// (an invalid policy fails closed).
    fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| {
            if o == "*" {
                !self.allow_credentials
            } else {
                o.eq_ignore_ascii_case(origin)
            }
        })
    }

    /// Whether `Access-Control-Allow-Origin` is `*` (the same for every
    /// origin, so responses need no `Vary: Origin`).
    fn any_origin(&self) -> bool {
        !self.allow_credentials && is_wildcard(&self.allow_origins)
    }

    /// The answer to a CORS preflight, or `None` when the request is not
    /// one (a preflight is an `OPTIONS` request with `Origin` and
    /// `Access-Control-Request-Method`; other `OPTIONS` requests go to
    /// the function).
    ///
    /// Allowed: 204 with `Access-Control-Allow-Origin` (`*`, or the
    /// origin), `-Allow-Credentials: true` when the policy allows
    /// credentials, `-Allow-Methods` (the configured list, or the
    /// requested method for `*`), `-Allow-Headers` (the configured list,
    /// or the requested headers for `*`), `-Max-Age` when set. Refused
    /// (origin, method or a header not allowed): 403 without any of
    /// those, so the browser fails the request. Both carry
    /// `Vary: Origin, Access-Control-Request-Method,
    /// Access-Control-Request-Headers`.
    pub(crate) fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Preflight> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let requested_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut out = HeaderMap::new();
        out.insert(header::VARY, VARY_PREFLIGHT);
        let refuse = |out, why| {
            Some(Preflight {
                status: StatusCode::FORBIDDEN,
                headers: out,
                refused: Some(why),
            })
        };

        let origin_text = String::from_utf8_lossy(origin.as_bytes());
        if !self.origin_allowed(&origin_text) {
            return refuse(out, Refusal::Origin(origin_text.into_owned()));
        }
        let requested_method = String::from_utf8_lossy(requested_method.as_bytes());
        let method_ok = SAFELISTED_METHODS.contains(&&*requested_method)
            || is_wildcard(&self.allow_methods)
            || self.allow_methods.iter().any(|m| *m == requested_method);
        if !method_ok {
            return refuse(out, Refusal::Method(requested_method.into_owned()));
        }
        let requested_headers = requested_header_names(headers);
        let any_header = is_wildcard(&self.allow_headers);
        for name in &requested_headers {
            let listed = self
                .allow_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name));
            if !(listed || (any_header && name != "authorization")) {
                return refuse(out, Refusal::Header(name.clone()));
            }
        }

        self.allow_origin_headers(origin, &mut out);
        let methods = if is_wildcard(&self.allow_methods) {
            requested_method.into_owned()
        } else {
            self.allow_methods.join(", ")
        };
        insert_list(&mut out, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
        let allowed_headers = if any_header {
            requested_headers.join(", ")
        } else {
            self.allow_headers.join(", ")
        };
        insert_list(
            &mut out,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &allowed_headers,
        );
        if let Some(age) = self.max_age_s {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
        }
        Some(Preflight {
            status: StatusCode::NO_CONTENT,
            headers: out,
            refused: None,
        })
    }

    /// Adds the policy's headers to an actual (non-preflight) response.
    ///
    /// The policy takes precedence over the function: its own
    /// `Access-Control-Allow-Origin`, `-Allow-Credentials` and
    /// `-Expose-Headers` are removed first. Then, when the request's
    /// `Origin` is allowed: `Access-Control-Allow-Origin` (`*`, or the
    /// origin echoed), `-Allow-Credentials: true` when the policy allows
    /// credentials, and `-Expose-Headers` when the policy lists any.
    /// `Vary: Origin` is added (to whatever `Vary` the function set)
    /// whenever the answer depends on the origin, i.e. unless the policy
    /// allows every origin without credentials, even for requests without
    /// `Origin`, so that caches keep the variants apart.
    pub(crate) fn decorate(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        response_headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        response_headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        response_headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
        if !self.any_origin() {
            add_vary_origin(response_headers);
        }
        let Some(origin) = request_headers.get(header::ORIGIN) else {
            return;
        };
        if !self.origin_allowed(&String::from_utf8_lossy(origin.as_bytes())) {
            return;
        }
        self.allow_origin_headers(origin, response_headers);
        insert_list(
            response_headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &self.expose_headers.join(", "),
        );
    }

    /// `Access-Control-Allow-Origin` and `-Allow-Credentials` for an
    /// allowed `origin`.
    fn allow_origin_headers(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        if self.any_origin() {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// Sets `name` to `list` unless it is empty (or, from an invalid policy,
/// not a header value).
fn insert_list(out: &mut HeaderMap, name: HeaderName, list: &str) {
    if list.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(list) {
        out.insert(name, value);
    }
}

/// The header names of `Access-Control-Request-Headers`, lower-cased.
fn requested_header_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Adds `Origin` to `Vary` unless it is there already or `Vary` is `*`.
fn add_vary_origin(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Whether `s` is a serialized origin: `scheme://host[:port]`, with no
/// user info, path, query or fragment.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() {
        return false;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => ("v6", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !host.starts_with('.')
        && !host.ends_with('.');
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], methods: &[&str], headers: &[&str], creds: bool) -> CorsPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        CorsPolicy {
            allow_origins: v(origins),
            allow_methods: v(methods),
            allow_headers: v(headers),
            expose_headers: v(&["x-request-id", "etag"]),
            allow_credentials: creds,
            max_age_s: Some(600),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    const APP: &str = "https://app.example.com";

    #[test]
    fn not_preflights() {
        let p = policy(&["*"], &["*"], &["*"], false);
        let cases: &[(Method, &[(&str, &str)])] = &[
            (
                Method::GET,
                &[("origin", APP), ("access-control-request-method", "PUT")],
            ),
            (Method::OPTIONS, &[("origin", APP)]),
            (Method::OPTIONS, &[("access-control-request-method", "PUT")]),
            (Method::OPTIONS, &[]),
        ];
        for (method, h) in cases {
            assert_eq!(p.preflight(method, &headers(h)), None, "{method} {h:?}");
        }
    }

    #[test]
    fn preflights() {
        struct Case {
            policy: CorsPolicy,
            origin: &'static str,
            method: &'static str,
            request_headers: Option<&'static str>,
            refused: Option<Refusal>,
            allow_origin: Option<&'static str>,
            allow_methods: Option<&'static str>,
            allow_headers: Option<&'static str>,
            credentials: bool,
        }
        let listed = policy(
            &["https://app.example.com", "http://localhost:3000"],
            &["PUT", "DELETE"],
            &["Content-Type", "X-Api-Key"],
            false,
        );
        let creds = policy(&[APP], &["*"], &["*"], true);
        let any = policy(&["*"], &["*"], &["*"], false);
        let cases = [
            Case {
                policy: listed.clone(),
                origin: APP,
                method: "PUT",
                request_headers: Some("content-type, x-api-key"),
                refused: None,
                allow_origin: Some(APP),
                allow_methods: Some("PUT, DELETE"),
                allow_headers: Some("Content-Type, X-Api-Key"),
                credentials: false,
            },
            // Origins compare case-insensitively; the origin is echoed.
            Case {
                policy: listed.clone(),
                origin: "HTTP://LOCALHOST:3000",
                method: "DELETE",
                request_headers: None,
                refused: None,
                allow_origin: Some("HTTP://LOCALHOST:3000"),
                allow_methods: Some("PUT, DELETE"),
                allow_headers: Some("Content-Type, X-Api-Key"),
                credentials: false,
            },
            // Safelisted methods pass even when not listed.
            Case {
                policy: listed.clone(),
                origin: APP,
                method: "POST",
                request_headers: Some("X-API-KEY"),
                refused: None,
                allow_origin: Some(APP),
                allow_methods: Some("PUT, DELETE"),
                allow_headers: Some("Content-Type, X-Api-Key"),
                credentials: false,
            },
            Case {
                policy: listed.clone(),
                origin: "https://evil.example.com",
                method: "PUT",
                request_headers: None,
                refused: Some(Refusal::Origin("https://evil.example.com".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            // A different port or scheme is a different origin.
            Case {
                policy: listed.clone(),
                origin: "http://localhost:3001",
                method: "PUT",
                request_headers: None,
                refused: Some(Refusal::Origin("http://localhost:3001".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            Case {
                policy: listed.clone(),
                origin: APP,
                method: "PATCH",
                request_headers: None,
                refused: Some(Refusal::Method("PATCH".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            // Methods compare case-sensitively (Fetch).
            Case {
                policy: listed.clone(),
                origin: APP,
                method: "put",
                request_headers: None,
                refused: Some(Refusal::Method("put".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            Case {
                policy: listed.clone(),
                origin: APP,
                method: "PUT",
                request_headers: Some("content-type,x-other"),
                refused: Some(Refusal::Header("x-other".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            // Wildcards: "*" origin, requested method and headers echoed.
            Case {
                policy: any.clone(),
                origin: "https://anyone.example",
                method: "PATCH",
                request_headers: Some("x-a, x-b"),
                refused: None,
                allow_origin: Some("*"),
                allow_methods: Some("PATCH"),
                allow_headers: Some("x-a, x-b"),
                credentials: false,
            },
            // "*" never covers authorization.
            Case {
                policy: any.clone(),
                origin: "https://anyone.example",
                method: "GET",
                request_headers: Some("authorization"),
                refused: Some(Refusal::Header("authorization".into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
            // With credentials: origin echoed, wildcards echo the request.
            Case {
                policy: creds.clone(),
                origin: APP,
                method: "DELETE",
                request_headers: Some("x-csrf"),
                refused: None,
                allow_origin: Some(APP),
                allow_methods: Some("DELETE"),
                allow_headers: Some("x-csrf"),
                credentials: true,
            },
            // An invalid policy ("*" with credentials) fails closed.
            Case {
                policy: policy(&["*"], &["*"], &[], true),
                origin: APP,
                method: "GET",
                request_headers: None,
                refused: Some(Refusal::Origin(APP.into())),
                allow_origin: None,
                allow_methods: None,
                allow_headers: None,
                credentials: false,
            },
        ];
        for c in cases {
            let mut h = vec![
                ("origin", c.origin),
                ("access-control-request-method", c.method),
            ];
            if let Some(rh) = c.request_headers {
                h.push(("access-control-request-headers", rh));
            }
            let label = format!("{} {} {:?}", c.origin, c.method, c.request_headers);
            let p = c.policy.preflight(&Method::OPTIONS, &headers(&h)).unwrap();
            assert_eq!(p.refused, c.refused, "{label}");
            let want_status = if c.refused.is_some() { 403 } else { 204 };
            assert_eq!(p.status.as_u16(), want_status, "{label}");
            assert_eq!(
                get(&p.headers, "vary"),
                Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
                "{label}"
            );
            assert_eq!(
                get(&p.headers, "access-control-allow-origin"),
                c.allow_origin,
                "{label}"
            );
            assert_eq!(
                get(&p.headers, "access-control-allow-methods"),
                c.allow_methods,
                "{label}"
            );
            assert_eq!(
                get(&p.headers, "access-control-allow-headers"),
                c.allow_headers,
                "{label}"
            );
            assert_eq!(
                get(&p.headers, "access-control-allow-credentials"),
                c.credentials.then_some("true"),
                "{label}"
            );
            let age = c.refused.is_none().then_some("600");
            assert_eq!(get(&p.headers, "access-control-max-age"), age, "{label}");
            assert!(get(&p.headers, "access-control-expose-headers").is_none());
        }
    }

    #[test]
    fn preflight_without_max_age_or_lists() {
        let p = CorsPolicy {
            allow_origins: vec![APP.into()],
            ..CorsPolicy::default()
        };
        let got = p
            .preflight(
                &Method::OPTIONS,
                &headers(&[("origin", APP), ("access-control-request-method", "GET")]),
            )
            .unwrap();
        assert_eq!(got.status, StatusCode::NO_CONTENT);
        assert_eq!(get(&got.headers, "access-control-allow-origin"), Some(APP));
        for absent in [
            "access-control-allow-methods",
            "access-control-allow-headers",
            "access-control-max-age",
            "access-control-allow-credentials",
        ] {
            assert!(got.headers.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn decorate_actual_responses() {
        struct Case {
            policy: CorsPolicy,
            origin: Option<&'static str>,
            function_headers: &'static [(&'static str, &'static str)],
            want: &'static [(&'static str, &'static str)],
        }
        let listed = policy(&[APP], &["PUT"], &[], false);
        let creds = policy(&[APP], &[], &[], true);
        let any = policy(&["*"], &[], &[], false);
        let cases = [
            Case {
                policy: listed.clone(),
                origin: Some(APP),
                function_headers: &[("content-type", "text/plain")],
                want: &[
                    ("content-type", "text/plain"),
                    ("vary", "Origin"),
                    ("access-control-allow-origin", APP),
                    ("access-control-expose-headers", "x-request-id, etag"),
                ],
            },
            // Not allowed: only Vary; the function's own CORS headers go.
            Case {
                policy: listed.clone(),
                origin: Some("https://evil.example.com"),
                function_headers: &[
                    ("access-control-allow-origin", "*"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "secret"),
                ],
                want: &[("vary", "Origin")],
            },
            // No Origin: still Vary, nothing else.
            Case {
                policy: listed.clone(),
                origin: None,
                function_headers: &[("vary", "Accept-Encoding")],
                want: &[("vary", "Accept-Encoding"), ("vary", "Origin")],
            },
            // Vary already covers Origin, or is "*".
            Case {
                policy: listed.clone(),
                origin: None,
                function_headers: &[("vary", "accept, ORIGIN")],
                want: &[("vary", "accept, ORIGIN")],
            },
            Case {
                policy: listed.clone(),
                origin: None,
                function_headers: &[("vary", "*")],
                want: &[("vary", "*")],
            },
            // Credentials: origin echoed with Allow-Credentials, replacing
            // the function's.
            Case {
                policy: creds,
                origin: Some(APP),
                function_headers: &[("access-control-allow-origin", "https://other.example")],
                want: &[
                    ("vary", "Origin"),
                    ("access-control-allow-origin", APP),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-request-id, etag"),
                ],
            },
            // Any origin without credentials: "*", no Vary.
            Case {
                policy: any.clone(),
                origin: Some("https://anyone.example"),
                function_headers: &[],
                want: &[
                    ("access-control-allow-origin", "*"),
                    ("access-control-expose-headers", "x-request-id, etag"),
                ],
            },
            Case {
                policy: any,
                origin: None,
                function_headers: &[],
                want: &[],
            },
        ];
        for c in cases {
            let req = headers(&c.origin.map(|o| vec![("origin", o)]).unwrap_or_default());
            let mut resp = headers(c.function_headers);
            c.policy.decorate(&req, &mut resp);
            let got: Vec<(String, String)> = resp
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            let mut want: Vec<(String, String)> = c
                .want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            want.sort();
            assert_eq!(got_sorted, want, "{:?} {:?}", c.origin, c.function_headers);
        }
    }

    #[test]
    fn validation() {
        let ok = [
            policy(&["*"], &["*"], &["*"], false),
            policy(
                &[
                    APP,
                    "http://localhost:3000",
                    "http://[::1]:8080",
                    "chrome-extension://abc",
                ],
                &["GET", "PATCH", "PURGE"],
                &["x-api-key", "Content-Type"],
                true,
            ),
            CorsPolicy {
                allow_origins: vec!["https://a.example".into()],
                ..CorsPolicy::default()
            },
        ];
        for p in ok {
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
        let base = || policy(&[APP], &["GET"], &["x-a"], false);
        let cases: Vec<(CorsPolicy, Vec<CorsProblem>)> = vec![
            (CorsPolicy::default(), vec![CorsProblem::NoOrigins]),
            (
                CorsPolicy {
                    allow_origins: vec![
                        "https://app.example.com/".into(),
                        "app.example.com".into(),
                        "https://app.example.com/path".into(),
                        "https://user@app.example.com".into(),
                        "https://app.example.com:99999".into(),
                        "https://".into(),
                        "https://[zz]".into(),
                        "null".into(),
                    ],
                    ..base()
                },
                vec![
                    CorsProblem::BadOrigin("https://app.example.com/".into()),
                    CorsProblem::BadOrigin("app.example.com".into()),
                    CorsProblem::BadOrigin("https://app.example.com/path".into()),
                    CorsProblem::BadOrigin("https://user@app.example.com".into()),
                    CorsProblem::BadOrigin("https://app.example.com:99999".into()),
                    CorsProblem::BadOrigin("https://".into()),
                    CorsProblem::BadOrigin("https://[zz]".into()),
                    CorsProblem::NullOrigin,
                ],
            ),
            (
                CorsPolicy {
                    allow_origins: vec!["*".into()],
                    expose_headers: vec!["*".into()],
                    allow_credentials: true,
                    ..base()
                },
                vec![
                    CorsProblem::CredentialsWithAnyOrigin,
                    CorsProblem::CredentialsWithAnyExposed,
                ],
            ),
            (
                CorsPolicy {
                    allow_methods: vec!["get".into(), "Patch".into(), "GE T".into(), "".into()],
                    ..base()
                },
                vec![
                    CorsProblem::LowercaseMethod("get".into(), "GET".into()),
                    CorsProblem::LowercaseMethod("Patch".into(), "PATCH".into()),
                    CorsProblem::BadMethod("GE T".into()),
                    CorsProblem::BadMethod("".into()),
                ],
            ),
            (
                CorsPolicy {
                    allow_headers: vec!["x ok".into()],
                    expose_headers: vec!["a:b".into(), "".into()],
                    max_age_s: Some(86_401),
                    ..base()
                },
                vec![
                    CorsProblem::BadHeader {
                        key: "allow_headers",
                        name: "x ok".into(),
                    },
                    CorsProblem::BadHeader {
                        key: "expose_headers",
                        name: "a:b".into(),
                    },
                    CorsProblem::BadHeader {
                        key: "expose_headers",
                        name: "".into(),
                    },
                    CorsProblem::MaxAge(86_401),
                ],
            ),
        ];
        for (p, want) in cases {
            let got = p.validate().unwrap_err();
            assert_eq!(got, want, "{p:?}");
            for problem in &got {
                assert!(!problem.key().is_empty());
                assert!(!problem.to_string().is_empty());
            }
        }
        assert_eq!(CorsProblem::MaxAge(1).key(), "max_age_s");
        assert_eq!(
            CorsProblem::BadHeader {
                key: "expose_headers",
                name: String::new()
            }
            .key(),
            "expose_headers"
        );
    }

    #[test]
    fn deserializes_from_toml() {
        let p: CorsPolicy = toml::from_str(
            r#"
            allow_origins = ["https://app.example.com"]
            allow_methods = ["PUT"]
            allow_headers = ["content-type"]
            expose_headers = ["etag"]
            allow_credentials = true
            max_age_s = 300
            "#,
        )
        .unwrap();
        assert_eq!(p.max_age_s, Some(300));
        assert!(p.allow_credentials);
        assert!(toml::from_str::<CorsPolicy>("allow_origin = []").is_err());
    }
}

/// Request headers are input from outside: preflight and decoration never
/// panic, whatever the origin and requested method and headers hold.
#[cfg(test)]
mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_preflight(origin in "[ -~]{0,40}", method in "[ -~]{0,20}", asked in "[ -~]{0,60}") {
            let policy = CorsPolicy {
                allow_origins: vec!["https://a.example".into()],
                allow_methods: vec!["PUT".into()],
                allow_headers: vec!["content-type".into()],
                expose_headers: vec!["x-a".into()],
                allow_credentials: true,
                max_age_s: Some(60),
            };
            let mut h = HeaderMap::new();
            for (name, value) in [
                (header::ORIGIN, &origin),
                (header::ACCESS_CONTROL_REQUEST_METHOD, &method),
                (header::ACCESS_CONTROL_REQUEST_HEADERS, &asked),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.insert(name, v);
                }
            }
            let _ = policy.preflight(&Method::OPTIONS, &h);
            let mut out = HeaderMap::new();
            policy.decorate(&h, &mut out);
        }
    }
}
