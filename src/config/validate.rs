//! Turns raw TOML into a validated `Topology`, collecting every problem.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::{ConfigError, ConfigErrors};
use crate::geo::Location;

/// Defaults, named so docs and code agree.
pub(crate) const DEFAULT_TTL: u32 = 20;
pub(crate) const DEFAULT_CAPACITY: u32 = 256;
pub(crate) const DEFAULT_MEMORY_MB: u32 = 128;
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 3000;
pub(crate) const DEFAULT_CONCURRENCY_MAX: u32 = 8;
pub(crate) const DEFAULT_LOAD_THRESHOLD: f64 = 0.8;
pub(crate) const DEFAULT_MAX_PAYLOAD: u64 = 6 * 1024 * 1024;
pub(crate) const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
pub(crate) const MIN_CACHE_BYTES: u64 = 1024 * 1024;
pub(crate) const MAX_CACHE_BYTES: u64 = 1 << 40;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<Option<String>>,
    ) {
        let (line, column) = span.map(|s| line_col(self.text, s.start)).unwrap_or((0, 0));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// Resolves a path relative to the topology file's folder.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir(self.file).join(p)
        }
    }
}

pub(crate) fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

pub(super) fn validate(file: &Path, text: &str) -> Result<Topology, ConfigErrors> {
    validate_with(file, text, true)
}

/// `check_mesh_files` false skips the existence checks of the cluster CA
/// and edge certificates (for `fnroute cert dev`, which creates them).
pub(super) fn validate_with(
    file: &Path,
    text: &str,
    check_mesh_files: bool,
) -> Result<Topology, ConfigErrors> {
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    let raw: RawTopology = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let fix = if e.message().contains("unknown field") {
                Some("remove or correct the key; docs/configuration.md lists every key".into())
            } else {
                Some("correct the TOML syntax or value type at that place".into())
            };
            cx.err(e.span(), "", e.message().trim().to_string(), fix);
            return Err(ConfigErrors(cx.errors));
        }
    };

    let zone = check_zone(&mut cx, &raw.zone);
    let geo_db = cx.resolve(raw.geo_db.get_ref());
    if !geo_db.is_file() {
        cx.err(
            Some(raw.geo_db.span()),
            "geo_db",
            format!("geo database {} does not exist", geo_db.display()),
            Some(
                "point geo_db at a MaxMind-format .mmdb file (relative paths are relative to the topology file); see docs/geo.md"
                    .into(),
            ),
        );
    }
    let default_location = check_location(&mut cx, &raw.default_location, "default_location");
    let state_dir = match &raw.state_dir {
        Some(s) => cx.resolve(s.get_ref()),
        None => base_dir(file).join("../state"),
    };
    let admin_token_file = raw.admin_token_file.as_ref().map(|t| {
        let p = cx.resolve(t.get_ref());
        if !p.is_file() {
            cx.err(
                Some(t.span()),
                "admin_token_file",
                format!("admin token file {} does not exist", p.display()),
                Some(
                    "create a file holding one secret token line, or remove admin_token_file"
                        .into(),
                ),
            );
        }
        p
    });

    let dns = check_dns(&mut cx, &raw.dns);
    let quic = check_quic(&mut cx, &raw.quic);
    let tcp = check_tcp(&mut cx, &raw.tcp);
    let tls = raw.tls.as_ref().map(|t| {
        let cert = cx.resolve(t.cert.get_ref());
        let key = cx.resolve(t.key.get_ref());
        for (what, p, span) in [("cert", &cert, t.cert.span()), ("key", &key, t.key.span())] {
            if !p.is_file() {
                cx.err(
                    Some(span),
                    format!("tls.{what}"),
                    format!("{} does not exist", p.display()),
                    Some(format!(
                        "give a PEM {what} file, or remove [tls] to use a generated development certificate"
                    )),
                );
            }
        }
        TlsFiles { cert, key }
    });
    let executors = ExecutorSettings {
        keep_warm: Duration::from_millis(raw.executors.keep_warm_ms.unwrap_or(60_000)),
        queue: raw.executors.queue.unwrap_or(64),
        queue_timeout: Duration::from_millis(raw.executors.queue_timeout_ms.unwrap_or(1_000)),
        metering_log: raw.executors.metering_log.as_deref().map(|p| cx.resolve(p)),
    };

    let edges = check_edges(&mut cx, &raw.edge);
    let functions = check_functions(&mut cx, &raw.function, &edges);
    let mesh = raw
        .mesh
        .as_ref()
        .map(|m| check_mesh(&mut cx, m, &edges, check_mesh_files));
    let routing = check_routing(&mut cx, &raw, &raw.function, &functions);

    if cx.errors.is_empty() {
        let function_index = Topology::index_functions(&functions);
        Ok(Topology {
            function_index,
            source: file.to_path_buf(),
            zone,
            geo_db,
            default_location,
            state_dir,
            admin_token_file,
            dns,
            quic,
            tcp,
            tls,
            executors,
            mesh,
            edges,
            functions,
            routing,
        })
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

fn check_mesh(cx: &mut Ctx<'_>, m: &RawMesh, edges: &[Edge], check_files: bool) -> MeshSettings {
    let fix_certs = || {
        Some(
            "create the cluster CA and edge certificates with `fnroute cert dev --config <this file>`"
                .to_string(),
        )
    };
    let ca = cx.resolve(m.ca.get_ref());
    let cert_dir = cx.resolve(m.cert_dir.get_ref());
    let mut positive = |v: &Option<Spanned<u32>>, key: &str, default: u32| match v {
        Some(s) if *s.get_ref() == 0 => {
            cx.err(
                Some(s.span()),
                format!("mesh.{key}"),
                "must be at least 1",
                Some(format!("set mesh.{key} to 1 or more (default {default})")),
            );
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    };
    let fall = positive(&m.fall, "fall", 3);
    let rise = positive(&m.rise, "rise", 2);
    let max_hops = positive(&m.max_hops, "max_hops", 3);
    let eject_after = positive(&m.eject_after, "eject_after", 7);
    let probe_interval = match &m.probe_interval_ms {
        Some(s) if !(10..=60_000).contains(s.get_ref()) => {
            cx.err(
                Some(s.span()),
                "mesh.probe_interval_ms",
                format!("{} ms is outside 10..=60000", s.get_ref()),
                Some("probe peers every 10 ms to 60 s (default 1000)".into()),
            );
            Duration::from_secs(1)
        }
        Some(s) => Duration::from_millis(*s.get_ref()),
        None => Duration::from_secs(1),
    };
    let simulated_rtt_ms_per_1000km = match &m.simulated_rtt_ms_per_1000km {
        Some(s) if !(0.0..=1000.0).contains(s.get_ref()) => {
            cx.err(
                Some(s.span()),
                "mesh.simulated_rtt_ms_per_1000km",
                format!("{} is outside 0..=1000", s.get_ref()),
                Some("use 0 (off) or a round trip per 1000 km such as 10 (light in fibre); simulation only".into()),
            );
            0.0
        }
        Some(s) => *s.get_ref(),
        None => 0.0,
    };
    let settings = MeshSettings {
        ca,
        cert_dir,
        probe_interval,
        fall,
        rise,
        max_hops,
        eject_after,
        simulated_rtt_ms_per_1000km,
    };
    if check_files {
        if !settings.ca.is_file() {
            cx.err(
                Some(m.ca.span()),
                "mesh.ca",
                format!("cluster CA {} does not exist", settings.ca.display()),
                fix_certs(),
            );
        }
        if !settings.cert_dir.is_dir() {
            cx.err(
                Some(m.cert_dir.span()),
                "mesh.cert_dir",
                format!("{} is not a directory", settings.cert_dir.display()),
                fix_certs(),
            );
        } else {
            for e in edges {
                for p in [settings.cert_file(&e.name), settings.key_file(&e.name)] {
                    if !p.is_file() {
                        cx.err(
                            Some(m.cert_dir.span()),
                            "mesh.cert_dir",
                            format!("{} (edge {}) does not exist", p.display(), e.name),
                            fix_certs(),
                        );
                    }
                }
            }
        }
    }
    settings
}

/// `[routing]` bounds, `[[route]]` static expansions and `[[event]]`
/// types: names are DNS labels that clash with no function, every step
/// names a known function or route, static routes do not expand into
/// themselves.
fn check_routing(
    cx: &mut Ctx<'_>,
    raw: &RawTopology,
    raw_functions: &[Spanned<RawFunction>],
    functions: &[Function],
) -> Routing {
    let r = &raw.routing;
    let d = RouteBounds::default();
    let mut bound = |v: &Option<Spanned<u32>>, key: &str, default: u32, max: u32| match v {
        Some(s) if !(1..=max).contains(s.get_ref()) => {
            cx.err(
                Some(s.span()),
                format!("routing.{key}"),
                format!("{} is outside 1..={max}", s.get_ref()),
                Some(format!(
                    "set routing.{key} to 1..={max} (default {default})"
                )),
            );
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    };
    let bounds = RouteBounds {
        max_steps: bound(&r.max_steps, "max_steps", d.max_steps, 10_000),
        max_expansions: bound(
            &r.max_expansions,
            "max_expansions",
            d.max_expansions,
            10_000,
        ),
        max_hops: bound(&r.max_hops, "max_hops", d.max_hops, 255),
        max_stack_depth: bound(
            &r.max_stack_depth,
            "max_stack_depth",
            d.max_stack_depth,
            1024,
        ),
        timeout: match &r.timeout_ms {
            Some(s) if !(1..=3_600_000).contains(s.get_ref()) => {
                cx.err(
                    Some(s.span()),
                    "routing.timeout_ms",
                    format!("{} ms is outside 1..=3600000", s.get_ref()),
                    Some("give a routed event's deadline in ms (default 30000)".into()),
                );
                d.timeout
            }
            Some(s) => Duration::from_millis(*s.get_ref()),
            None => d.timeout,
        },
    };
    let is_function = |n: &str| functions.iter().any(|f| f.name == n);
    let route_names: Vec<String> = raw
        .route
        .iter()
        .map(|r| r.get_ref().name.get_ref().to_ascii_lowercase())
        .collect();
    let known = |n: &str| is_function(n) || route_names.iter().any(|r| r == n);
    let known_list = || {
        let mut all: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        all.extend(route_names.iter().map(String::as_str));
        all.join(", ")
    };
    let check_steps = |cx: &mut Ctx<'_>, key: &str, steps: &Spanned<Vec<Spanned<String>>>| {
        if steps.get_ref().is_empty() {
            cx.err(
                Some(steps.span()),
                key.to_string(),
                "the step list is empty",
                Some("list at least one function or route name".to_string()),
            );
        }
        if steps.get_ref().len() > bounds.max_stack_depth as usize {
            cx.err(
                Some(steps.span()),
                key.to_string(),
                format!(
                    "{} steps exceed routing.max_stack_depth = {}",
                    steps.get_ref().len(),
                    bounds.max_stack_depth
                ),
                Some("shorten the list or raise routing.max_stack_depth".to_string()),
            );
        }
        let mut out = Vec::new();
        for s in steps.get_ref() {
            let n = s.get_ref().to_ascii_lowercase();
            if !known(&n) {
                cx.err(
                    Some(s.span()),
                    key.to_string(),
                    format!("unknown step {:?} (known: {})", s.get_ref(), known_list()),
                    Some("name a [[function]] or a [[route]]".to_string()),
                );
            }
            out.push(n);
        }
        out
    };
    let mut routes = BTreeMap::new();
    for sr in &raw.route {
        let rr = sr.get_ref();
        let name = rr.name.get_ref().to_ascii_lowercase();
        let key = format!("route.{name}");
        if !is_dns_label(&name) {
            cx.err(
                Some(rr.name.span()),
                format!("{key}.name"),
                format!(
                    "route name {:?} is not a valid DNS label",
                    rr.name.get_ref()
                ),
                Some("use letters, digits and hyphens (1 to 63 characters)".into()),
            );
        }
        if let Some(f) = raw_functions
            .iter()
            .find(|f| f.get_ref().name.get_ref().eq_ignore_ascii_case(&name))
        {
            let line = line_col(cx.text, f.get_ref().name.span().start).0;
            cx.err(
                Some(rr.name.span()),
                format!("{key}.name"),
                format!("route {name:?} clashes with the function of the same name on line {line}"),
                Some("rename the route or the function: a step name must mean one thing".into()),
            );
        }
        let steps = check_steps(cx, &format!("{key}.steps"), &rr.steps);
        if routes.insert(name.clone(), steps).is_some() {
            cx.err(
                Some(rr.name.span()),
                format!("{key}.name"),
                format!("duplicate route name {name:?}"),
                Some("give every [[route]] a unique name".into()),
            );
        }
    }
    // A static route that expands (through other routes) into itself can
    // never finish.
    for sr in &raw.route {
        let name = sr.get_ref().name.get_ref().to_ascii_lowercase();
        if let Some(cycle) = super::static_cycle(&routes, &name) {
            cx.err(
                Some(sr.get_ref().name.span()),
                format!("route.{name}.steps"),
                format!("route {name:?} expands into itself: {}", cycle.join(" -> ")),
                Some(
                    "break the cycle; use a gatekeeper function for data-dependent repetition"
                        .into(),
                ),
            );
        }
    }
    let mut events = BTreeMap::new();
    for se in &raw.event {
        let e = se.get_ref();
        let kind = e.kind.get_ref().to_ascii_lowercase();
        let key = format!("event.{kind}");
        if kind.is_empty()
            || kind.len() > 63
            || !kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            cx.err(
                Some(e.kind.span()),
                format!("{key}.type"),
                format!(
                    "event type {:?} cannot be a URL path segment",
                    e.kind.get_ref()
                ),
                Some(
                    "use 1 to 63 letters, digits, '-', '_' or '.'; clients post to /event/<type>"
                        .into(),
                ),
            );
        }
        let entry = check_steps(cx, &format!("{key}.entry"), &e.entry);
        if events.insert(kind.clone(), entry).is_some() {
            cx.err(
                Some(e.kind.span()),
                format!("{key}.type"),
                format!("duplicate event type {kind:?}"),
                Some("give every [[event]] a unique type".into()),
            );
        }
    }
    Routing {
        bounds,
        routes,
        events,
    }
}

fn check_zone(cx: &mut Ctx<'_>, zone: &Spanned<String>) -> String {
    let mut z = zone.get_ref().trim().to_ascii_lowercase();
    if !z.ends_with('.') {
        z.push('.');
    }
    let labels: Vec<&str> = z.trim_end_matches('.').split('.').collect();
    let bad = z == "."
        || z.len() > 254
        || labels
            .iter()
            .any(|l| !(is_dns_label(l) || l.strip_prefix('_').is_some_and(is_dns_label)));
    if bad {
        cx.err(
            Some(zone.span()),
            "zone",
            format!("zone {:?} is not a valid DNS name", zone.get_ref()),
            Some(
                "use dot-separated labels of letters, digits and hyphens, e.g. \"fn.example.com.\""
                    .into(),
            ),
        );
    }
    z
}

/// A DNS label of letters, digits and hyphens, 1 to 63 long, not starting
/// or ending with a hyphen (RFC 1035 / RFC 1123 host names).
pub(crate) fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn check_location(cx: &mut Ctx<'_>, loc: &Spanned<RawLocation>, key: &str) -> Location {
    let l = *loc.get_ref();
    if !(-90.0..=90.0).contains(&l.lat) || !l.lat.is_finite() {
        cx.err(
            Some(loc.span()),
            format!("{key}.lat"),
            format!("latitude {} is out of range", l.lat),
            Some("latitude must be between -90 and 90 degrees".into()),
        );
    }
    if !(-180.0..=180.0).contains(&l.lon) || !l.lon.is_finite() {
        cx.err(
            Some(loc.span()),
            format!("{key}.lon"),
            format!("longitude {} is out of range", l.lon),
            Some("longitude must be between -180 and 180 degrees".into()),
        );
    }
    Location {
        lat: l.lat,
        lon: l.lon,
    }
}

fn check_dns(cx: &mut Ctx<'_>, d: &RawDns) -> DnsSettings {
    let ttl = d.ttl.as_ref().map(|t| *t.get_ref()).unwrap_or(DEFAULT_TTL);
    if let Some(t) = &d.ttl {
        if *t.get_ref() > 86_400 {
            cx.err(
                Some(t.span()),
                "dns.ttl",
                format!("ttl {} is longer than a day", t.get_ref()),
                Some("use a short TTL (tens of seconds) so failover is quick".into()),
            );
        }
    }
    let answers = d.answers.as_ref().map(|a| *a.get_ref()).unwrap_or(1);
    if let Some(a) = &d.answers {
        if *a.get_ref() == 0 || *a.get_ref() > 16 {
            cx.err(
                Some(a.span()),
                "dns.answers",
                format!("answers = {} is out of range", a.get_ref()),
                Some("list between 1 and 16 edges per answer".into()),
            );
        }
    }
    let load_threshold = d
        .load_threshold
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(DEFAULT_LOAD_THRESHOLD);
    if let Some(t) = &d.load_threshold {
        if !(0.0..=1.0).contains(t.get_ref()) || *t.get_ref() == 0.0 {
            cx.err(
                Some(t.span()),
                "dns.load_threshold",
                format!("load_threshold {} is out of range", t.get_ref()),
                Some("give a share of capacity greater than 0 and at most 1, e.g. 0.8".into()),
            );
        }
    }
    let rate_limit = d.rate_limit.as_ref().map(|r| {
        let raw = *r.get_ref();
        let rl = RateLimit {
            responses_per_second: raw.responses_per_second,
            burst: raw.burst.unwrap_or(raw.responses_per_second * 2.0),
            ipv4_prefix: raw.ipv4_prefix.unwrap_or(24),
            ipv6_prefix: raw.ipv6_prefix.unwrap_or(56),
            slip: raw.slip.unwrap_or(2),
        };
        if rl.responses_per_second.is_nan()
            || rl.responses_per_second <= 0.0
            || rl.burst.is_nan()
            || rl.burst < 1.0
            || rl.ipv4_prefix > 32
            || rl.ipv6_prefix > 128
        {
            cx.err(
                Some(r.span()),
                "dns.rate_limit",
                "rate limit values are out of range".to_string(),
                Some(
                    "responses_per_second > 0, burst >= 1, ipv4_prefix <= 32, ipv6_prefix <= 128"
                        .into(),
                ),
            );
        }
        rl
    });
    let udp_sockets = d.udp_sockets.as_ref().map(|s| *s.get_ref()).unwrap_or(0);
    if let Some(s) = &d.udp_sockets {
        if *s.get_ref() > 64 {
            cx.err(
                Some(s.span()),
                "dns.udp_sockets",
                format!("udp_sockets = {} is too many", s.get_ref()),
                Some("use 0 (one per core, at least two) up to 64".into()),
            );
        }
    }
    DnsSettings {
        ttl,
        answers: answers as usize,
        load_threshold,
        serial: d.serial.unwrap_or(1),
        rate_limit,
        udp_sockets: udp_sockets as usize,
    }
}

/// `[tcp]`, each bound checked with the key to fix.
fn check_tcp(cx: &mut Ctx<'_>, t: &RawTcp) -> TcpSettings {
    let mut bounded = |v: &Option<Spanned<u32>>, key: &str, default: u32, max: u32| -> u32 {
        match v {
            None => default,
            Some(s) if (1..=max).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                cx.err(
                    Some(s.span()),
                    format!("tcp.{key}"),
                    format!("tcp.{key} = {} is out of range", s.get_ref()),
                    Some(format!("give 1 to {max}; the default is {default}")),
                );
                default
            }
        }
    };
    let max_connections = bounded(&t.max_connections, "max_connections", 10_000, 1 << 20);
    let max_concurrent_streams = bounded(
        &t.max_concurrent_streams,
        "max_concurrent_streams",
        100,
        10_000,
    );
    let max_headers = bounded(&t.max_headers, "max_headers", 100, 10_000);
    let mut millis = |v: &Option<Spanned<u64>>, key: &str, default: u64| -> Duration {
        match v {
            None => Duration::from_millis(default),
            Some(s) if (1..=3_600_000).contains(s.get_ref()) => Duration::from_millis(*s.get_ref()),
            Some(s) => {
                cx.err(
                    Some(s.span()),
                    format!("tcp.{key}"),
                    format!("tcp.{key} = {} is out of range", s.get_ref()),
                    Some(format!(
                        "give 1 to 3600000 (an hour); the default is {default}"
                    )),
                );
                Duration::from_millis(default)
            }
        }
    };
    TcpSettings {
        max_connections,
        max_concurrent_streams,
        max_headers,
        header_read_timeout: millis(&t.header_read_timeout_ms, "header_read_timeout_ms", 10_000),
        idle_timeout: millis(&t.idle_timeout_ms, "idle_timeout_ms", 30_000),
    }
}

fn check_quic(cx: &mut Ctx<'_>, q: &RawQuic) -> QuicSettings {
    let max_payload_bytes = q
        .max_payload_bytes
        .as_ref()
        .map(|m| *m.get_ref())
        .unwrap_or(DEFAULT_MAX_PAYLOAD);
    if let Some(m) = &q.max_payload_bytes {
        if *m.get_ref() == 0 || *m.get_ref() > 1 << 30 {
            cx.err(
                Some(m.span()),
                "quic.max_payload_bytes",
                format!("max_payload_bytes = {} is out of range", m.get_ref()),
                Some("use 1 byte up to 1 GiB (default 6 MiB)".into()),
            );
        }
    }
    QuicSettings {
        max_payload_bytes,
        max_connections: q.max_connections.unwrap_or(10_000),
        max_streams_per_connection: q.max_streams_per_connection.unwrap_or(256),
        idle_timeout: Duration::from_millis(q.idle_timeout_ms.unwrap_or(30_000)),
        max_header_bytes: q.max_header_bytes.unwrap_or(16 * 1024),
        body_read_timeout: Duration::from_millis(q.body_read_timeout_ms.unwrap_or(10_000)),
        enable_0rtt: q.enable_0rtt.unwrap_or(false),
        udp_buffer_bytes: q.udp_buffer_bytes.unwrap_or(4 * 1024 * 1024),
    }
}

fn parse_listen(cx: &mut Ctx<'_>, s: &Spanned<String>, key: String) -> SocketAddr {
    match s.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            cx.err(
                Some(s.span()),
                key,
                format!("{:?} is not an address with a port", s.get_ref()),
                Some("write IP:PORT, e.g. \"127.0.0.1:5300\" or \"[::1]:5300\"".into()),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}

fn check_edges(cx: &mut Ctx<'_>, raw: &[Spanned<RawEdge>]) -> Vec<Edge> {
    let mut edges = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // (address, what, span) for the clash check.
    // Address, key, span, and the transports it binds (UDP, TCP).
    let mut listeners: Vec<(SocketAddr, String, Range<usize>, u8)> = Vec::new();
    if raw.is_empty() {
        cx.err(
            None,
            "edge",
            "the topology has no [[edge]]",
            Some("add at least one [[edge]] table".to_string()),
        );
    }
    for (i, se) in raw.iter().enumerate() {
        let e = se.get_ref();
        let name = e.name.get_ref().to_ascii_lowercase();
        let key = format!("edge.{name}");
        if !is_dns_label(&name) {
            cx.err(
                Some(e.name.span()),
                format!("{key}.name"),
                format!("edge name {:?} is not a valid DNS label", e.name.get_ref()),
                Some("use letters, digits and hyphens (1 to 63), e.g. \"fra\"".into()),
            );
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            let first_line = raw
                .get(first)
                .map(|f| line_col(cx.text, f.get_ref().name.span().start).0)
                .unwrap_or(0);
            cx.err(
                Some(e.name.span()),
                format!("{key}.name"),
                format!("duplicate edge name {name:?} (first defined on line {first_line})"),
                Some("give every [[edge]] a unique name".into()),
            );
        }
        let location = check_location(cx, &e.location, &format!("{key}.location"));
        let mut addresses = Vec::new();
        for a in e.addresses.get_ref() {
            match a.get_ref().parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => cx.err(
                    Some(a.span()),
                    format!("{key}.addresses"),
                    format!("{:?} is not an IP address", a.get_ref()),
                    Some("list IPv4 or IPv6 addresses without ports".into()),
                ),
            }
        }
        if e.addresses.get_ref().is_empty() {
            cx.err(
                Some(e.addresses.span()),
                format!("{key}.addresses"),
                "an edge needs at least one address for DNS to hand out",
                Some("add the edge's public IPv4 and/or IPv6 address".to_string()),
            );
        }
        let dns_listen = parse_listen(cx, &e.dns_listen, format!("{key}.dns_listen"));
        let quic_listen = parse_listen(cx, &e.quic_listen, format!("{key}.quic_listen"));
        listeners.push((
            dns_listen,
            format!("{key}.dns_listen"),
            e.dns_listen.span(),
            UDP | TCP,
        ));
        listeners.push((
            quic_listen,
            format!("{key}.quic_listen"),
            e.quic_listen.span(),
            UDP,
        ));
        let admin_listen = match &e.admin_listen {
            Some(a) => {
                let addr = parse_listen(cx, a, format!("{key}.admin_listen"));
                listeners.push((addr, format!("{key}.admin_listen"), a.span(), TCP));
                addr
            }
            // Loopback by default, on an ephemeral port: admin is opt-in.
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let doq_listen = e.doq_listen.as_ref().map(|a| {
            let addr = parse_listen(cx, a, format!("{key}.doq_listen"));
            listeners.push((addr, format!("{key}.doq_listen"), a.span(), UDP));
            addr
        });
        let tcp_listen = e.tcp_listen.as_ref().map(|a| {
            let addr = parse_listen(cx, a, format!("{key}.tcp_listen"));
            listeners.push((addr, format!("{key}.tcp_listen"), a.span(), TCP));
            addr
        });
        let capacity = e
            .capacity
            .as_ref()
            .map(|c| *c.get_ref())
            .unwrap_or(DEFAULT_CAPACITY);
        if let Some(c) = &e.capacity {
            if *c.get_ref() == 0 {
                cx.err(
                    Some(c.span()),
                    format!("{key}.capacity"),
                    "capacity 0 means the edge can run nothing",
                    Some(
                        "give the number of concurrent invocations the edge accepts, e.g. 256"
                            .to_string(),
                    ),
                );
            }
        }
        let cache_bytes = e
            .cache_bytes
            .as_ref()
            .map(|c| *c.get_ref())
            .unwrap_or(DEFAULT_CACHE_BYTES);
        if let Some(c) = &e.cache_bytes {
            if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(c.get_ref()) {
                cx.err(
                    Some(c.span()),
                    format!("{key}.cache_bytes"),
                    format!("cache_bytes = {} is out of range", c.get_ref()),
                    Some(format!(
                        "give between {MIN_CACHE_BYTES} (1 MiB) and {MAX_CACHE_BYTES} (1 TiB); the default is {DEFAULT_CACHE_BYTES} (64 MiB)"
                    )),
                );
            }
        }
        edges.push(Edge {
            name,
            location,
            addresses,
            dns_listen,
            quic_listen,
            admin_listen,
            doq_listen,
            tcp_listen,
            capacity,
            cache_bytes,
            retired: false,
        });
    }
    for i in 0..listeners.len() {
        for j in 0..i {
            let (a, ka, _, pa) = &listeners[j];
            let (b, kb, span, pb) = &listeners[i];
            // UDP and TCP ports are separate: `tcp_listen` may share
            // `quic_listen`'s port (as HTTPS and HTTP/3 usually do).
            if a.port() != 0 && pa & pb != 0 && clashes(*a, *b) {
                cx.err(
                    Some(span.clone()),
                    kb.clone(),
                    format!("listen address {b} clashes with {ka} ({a})"),
                    Some("give every listener its own address or port".into()),
                );
            }
        }
    }
    edges
}

const UDP: u8 = 1;
const TCP: u8 = 2;

/// Two listeners clash when they would bind the same port on overlapping
/// addresses (the same IP, or a wildcard of the same family).
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn check_functions(
    cx: &mut Ctx<'_>,
    raw: &[Spanned<RawFunction>],
    edges: &[Edge],
) -> Vec<Function> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let edge_names: Vec<&str> = edges.iter().map(|e| e.name.as_str()).collect();
    for (i, sf) in raw.iter().enumerate() {
        let f = sf.get_ref();
        let name = f.name.get_ref().to_ascii_lowercase();
        let key = format!("function.{name}");
        if !is_dns_label(&name) {
            cx.err(
                Some(f.name.span()),
                format!("{key}.name"),
                format!("function name {:?} is not a valid DNS label", f.name.get_ref()),
                Some("use letters, digits and hyphens (1 to 63 characters, no leading or trailing hyphen); clients reach it as <name>.<zone>".into()),
            );
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            let first_line = raw
                .get(first)
                .map(|f| line_col(cx.text, f.get_ref().name.span().start).0)
                .unwrap_or(0);
            cx.err(
                Some(f.name.span()),
                format!("{key}.name"),
                format!("duplicate function name {name:?} (first defined on line {first_line})"),
                Some("give every [[function]] a unique name (names are case-insensitive)".into()),
            );
        }
        let hosted: Vec<EdgeId> = match &f.edges {
            None => (0..edges.len()).collect(),
            Some(list) => {
                if list.is_empty() {
                    cx.err(
                        Some(f.name.span()),
                        format!("{key}.edges"),
                        "edges = [] hosts the function nowhere",
                        Some(
                            "list at least one edge, or omit `edges` to host it on every edge"
                                .to_string(),
                        ),
                    );
                }
                let mut ids = Vec::new();
                for e in list {
                    let en = e.get_ref().to_ascii_lowercase();
                    match edge_names.iter().position(|n| *n == en) {
                        Some(id) if ids.contains(&id) => cx.err(
                            Some(e.span()),
                            format!("{key}.edges"),
                            format!("edge {en:?} is listed twice"),
                            Some("list each edge once".to_string()),
                        ),
                        Some(id) => ids.push(id),
                        None => cx.err(
                            Some(e.span()),
                            format!("{key}.edges"),
                            format!(
                                "unknown edge {:?} (known: {})",
                                e.get_ref(),
                                edge_names.join(", ")
                            ),
                            Some(format!(
                                "add an [[edge]] named {:?} or correct the name",
                                e.get_ref()
                            )),
                        ),
                    }
                }
                ids
            }
        };
        let bundle = check_bundle(cx, f, &key);
        let executor = check_executor(cx, &f.executor, &key, bundle.as_deref());
        let memory_mb = f
            .memory_mb
            .as_ref()
            .map(|m| *m.get_ref())
            .unwrap_or(DEFAULT_MEMORY_MB);
        if let Some(m) = &f.memory_mb {
            if !(16..=65_536).contains(m.get_ref()) {
                cx.err(
                    Some(m.span()),
                    format!("{key}.memory_mb"),
                    format!("memory_mb = {} is out of range", m.get_ref()),
                    Some("give between 16 and 65536 MB".into()),
                );
            }
        }
        let timeout_ms = f
            .timeout_ms
            .as_ref()
            .map(|t| *t.get_ref())
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        if let Some(t) = &f.timeout_ms {
            if *t.get_ref() == 0 || *t.get_ref() > 15 * 60 * 1000 {
                cx.err(
                    Some(t.span()),
                    format!("{key}.timeout_ms"),
                    format!("timeout_ms = {} is out of range", t.get_ref()),
                    Some("give between 1 ms and 15 minutes (900000)".into()),
                );
            }
        }
        let (cmin, cmax) = match &f.concurrency {
            None => (0, DEFAULT_CONCURRENCY_MAX),
            Some(c) => {
                let raw = *c.get_ref();
                let max = raw.max.unwrap_or(DEFAULT_CONCURRENCY_MAX);
                let min = raw.min.unwrap_or(0);
                if max == 0 || min > max || max > 4096 {
                    cx.err(
                        Some(c.span()),
                        format!("{key}.concurrency"),
                        format!("concurrency min = {min}, max = {max} is not a valid range"),
                        Some("use 0 <= min <= max, 1 <= max <= 4096".into()),
                    );
                }
                (min, max)
            }
        };
        let cache = f.cache.as_ref().map(|c| {
            let r = c.get_ref();
            if r.ttl_s == 0 {
                cx.err(
                    Some(c.span()),
                    format!("{key}.cache.ttl_s"),
                    "ttl_s = 0 caches nothing",
                    Some(
                        "remove `cache` to make the function uncacheable, or give ttl_s >= 1"
                            .to_string(),
                    ),
                );
            }
            if r.negative_ttl_s == Some(0) {
                cx.err(
                    Some(c.span()),
                    format!("{key}.cache.negative_ttl_s"),
                    "negative_ttl_s = 0 caches no error",
                    Some(
                        "remove negative_ttl_s to never cache errors, or give it >= 1".to_string(),
                    ),
                );
            }
            CachePolicy {
                ttl: Duration::from_secs(r.ttl_s),
                stale_while_revalidate: Duration::from_secs(
                    r.stale_while_revalidate_s.unwrap_or(0),
                ),
                stale_if_error: Duration::from_secs(r.stale_if_error_s.unwrap_or(0)),
                vary: r.vary.iter().map(|v| v.to_ascii_lowercase()).collect(),
                negative_ttl: r.negative_ttl_s.map(Duration::from_secs),
            }
        });
        let mut function = Function {
            name: FunctionName::new(&name),
            edges: hosted,
            executor,
            memory_mb,
            timeout: Duration::from_millis(timeout_ms),
            concurrency_min: cmin,
            concurrency_max: cmax,
            cache,
            idempotent: f.idempotent,
            gatekeeper: f.gatekeeper,
            interface: check_interface(cx, f, &key),
            cors: check_cors(cx, f, &key),
            bundle,
            allow_outbound: check_outbound(cx, f, &key),
            streaming: check_streaming(cx, f, &key),
            cache_version: 0,
        };
        function.cache_version = super::function_version(&function);
        out.push(function);
    }
    out
}

/// `streaming`, `stream_idle_ms` and `max_stream_bytes`.
fn check_streaming(cx: &mut Ctx<'_>, f: &RawFunction, key: &str) -> Option<StreamSettings> {
    let on = f.streaming.as_ref().is_some_and(|s| *s.get_ref());
    if !on {
        for (field, span) in [
            (
                "stream_idle_ms",
                f.stream_idle_ms.as_ref().map(|s| s.span()),
            ),
            (
                "max_stream_bytes",
                f.max_stream_bytes.as_ref().map(|s| s.span()),
            ),
        ] {
            if let Some(span) = span {
                cx.err(
                    Some(span),
                    format!("{key}.{field}"),
                    format!("{field} applies to streaming functions only"),
                    Some("add `streaming = true`, or remove it".into()),
                );
            }
        }
        return None;
    }
    if f.gatekeeper {
        if let Some(s) = &f.streaming {
            cx.err(
                Some(s.span()),
                format!("{key}.streaming"),
                "a gatekeeper cannot stream: its whole output is the route it pushes",
                Some("remove `streaming = true` or `gatekeeper = true`".into()),
            );
        }
    }
    let idle = match &f.stream_idle_ms {
        Some(ms) if !(1..=900_000).contains(ms.get_ref()) => {
            cx.err(
                Some(ms.span()),
                format!("{key}.stream_idle_ms"),
                format!("stream_idle_ms = {} is out of range", ms.get_ref()),
                Some("give between 1 ms and 15 minutes (900000)".into()),
            );
            StreamSettings::DEFAULT_IDLE
        }
        Some(ms) => Duration::from_millis(*ms.get_ref()),
        None => StreamSettings::DEFAULT_IDLE,
    };
    let max_bytes = match &f.max_stream_bytes {
        Some(b) if *b.get_ref() == 0 => {
            cx.err(
                Some(b.span()),
                format!("{key}.max_stream_bytes"),
                "max_stream_bytes = 0 streams nothing",
                Some("give a size in bytes, e.g. 209715200 (200 MiB, the default)".into()),
            );
            StreamSettings::DEFAULT_MAX_BYTES
        }
        Some(b) => *b.get_ref(),
        None => StreamSettings::DEFAULT_MAX_BYTES,
    };
    Some(StreamSettings { idle, max_bytes })
}

/// `allow_outbound`: `host:port` items, for wasm functions only.
fn check_outbound(cx: &mut Ctx<'_>, f: &RawFunction, key: &str) -> Vec<String> {
    let Some(list) = &f.allow_outbound else {
        return Vec::new();
    };
    if f.executor.get_ref().kind.get_ref() != "wasm" {
        cx.err(
            Some(list.span()),
            format!("{key}.allow_outbound"),
            "allow_outbound applies to wasm functions only",
            Some("remove it: processes of lambda and command functions use the host's network as they are".into()),
        );
    }
    let mut out = Vec::new();
    for item in list.get_ref() {
        let v = item.get_ref().to_ascii_lowercase();
        let ok = v.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if ok {
            out.push(v);
        } else {
            cx.err(
                Some(item.span()),
                format!("{key}.allow_outbound"),
                format!("{:?} is not host:port", item.get_ref()),
                Some("give each destination as host:port, e.g. \"api.example.com:443\" or \"127.0.0.1:8080\"".into()),
            );
        }
    }
    out
}

fn check_interface(cx: &mut Ctx<'_>, f: &RawFunction, key: &str) -> Interface {
    let Some(i) = &f.interface else {
        return Interface::Event;
    };
    match i.get_ref().as_str() {
        "event" => Interface::Event,
        "http" => {
            if f.gatekeeper {
                cx.err(
                    Some(i.span()),
                    format!("{key}.interface"),
                    "a gatekeeper's output is a routing envelope, not an HTTP response",
                    Some("drop interface = \"http\" or gatekeeper = true".into()),
                );
            }
            Interface::Http
        }
        other => {
            cx.err(
                Some(i.span()),
                format!("{key}.interface"),
                format!("unknown interface {other:?}"),
                Some("use \"event\" (the body is the event) or \"http\" (Lambda function URL events)".into()),
            );
            Interface::Event
        }
    }
}

fn check_cors(
    cx: &mut Ctx<'_>,
    f: &RawFunction,
    key: &str,
) -> Option<std::sync::Arc<super::cors::CorsPolicy>> {
    let c = f.cors.as_ref()?;
    if let Err(problems) = c.get_ref().validate() {
        for p in problems {
            cx.err(
                Some(c.span()),
                format!("{key}.cors.{}", p.key()),
                p.to_string(),
                None,
            );
        }
        return None;
    }
    Some(std::sync::Arc::new(c.get_ref().clone()))
}

/// `bundle`: an existing folder (relative to the file), made absolute.
fn check_bundle(cx: &mut Ctx<'_>, f: &RawFunction, key: &str) -> Option<PathBuf> {
    let b = f.bundle.as_ref()?;
    let dir = absolute(&base_dir(cx.file).join(b.get_ref()));
    if !dir.is_dir() {
        cx.err(
            Some(b.span()),
            format!("{key}.bundle"),
            format!("bundle {} is not a folder", dir.display()),
            Some(
                "give the folder holding the function's code, relative to the topology file".into(),
            ),
        );
    }
    Some(dir)
}

fn check_executor(
    cx: &mut Ctx<'_>,
    e: &Spanned<RawExecutor>,
    key: &str,
    bundle: Option<&Path>,
) -> Executor {
    let r = e.get_ref();
    let kind = match r.kind.get_ref().as_str() {
        "lambda" => ExecutorKind::Lambda,
        "command" => ExecutorKind::Command,
        "wasm" => ExecutorKind::Wasm,
        other => {
            cx.err(
                Some(r.kind.span()),
                format!("{key}.executor.kind"),
                format!("unknown executor kind {other:?}"),
                Some("use \"lambda\" (AWS Lambda Runtime API workers), \"command\" (one process per invocation) or \"wasm\" (a wasi:http component)".into()),
            );
            ExecutorKind::Command
        }
    };
    // Absolute (workers run with it as their current directory, so a
    // relative program path must not depend on it) but not canonical.
    let workdir = bundle.map_or_else(|| absolute(&base_dir(cx.file)), Path::to_path_buf);
    let (command, component) = if kind == ExecutorKind::Wasm {
        (Vec::new(), check_wasm_executor(cx, e, key, &workdir))
    } else {
        (check_command(cx, e, key, &workdir), None)
    };
    Executor {
        kind,
        command,
        component,
        env: r.env.clone(),
        handler: r.handler.clone(),
        workdir,
    }
}

/// `command` of a `lambda` or `command` executor: present, and its program
/// found (and made absolute).
fn check_command(
    cx: &mut Ctx<'_>,
    e: &Spanned<RawExecutor>,
    key: &str,
    workdir: &Path,
) -> Vec<String> {
    let r = e.get_ref();
    if let Some(c) = &r.component {
        cx.err(
            Some(c.span()),
            format!("{key}.executor.component"),
            format!(
                "component is for kind = \"wasm\", not {:?}",
                r.kind.get_ref()
            ),
            Some("remove `component`, or set kind = \"wasm\"".into()),
        );
    }
    let Some(spanned) = &r.command else {
        cx.err(
            Some(e.span()),
            format!("{key}.executor.command"),
            format!("a {:?} executor needs a command", r.kind.get_ref()),
            Some("give the program and its arguments, e.g. command = [\"python3\", \"functions/echo.py\"]".into()),
        );
        return Vec::new();
    };
    let mut command = spanned.get_ref().clone();
    match command.first() {
        None => cx.err(
            Some(spanned.span()),
            format!("{key}.executor.command"),
            "the command is empty",
            Some("give the program and its arguments, e.g. [\"python3\", \"functions/echo.py\"]".to_string()),
        ),
        Some(prog) => match find_program(prog, workdir) {
            Some(p) => command[0] = p.to_string_lossy().into_owned(),
            None => cx.err(
                Some(spanned.span()),
                format!("{key}.executor.command"),
                format!("program {prog:?} cannot be found"),
                Some(if prog.contains('/') {
                    "check the path (relative paths are relative to the bundle, or else to the topology file) and that it is executable".to_string()
                } else {
                    "install it or give its full path; it is not on PATH".to_string()
                }),
            ),
        },
    }
    command
}

/// `component` of a `wasm` executor: a readable file that is a WebAssembly
/// component (not a core module), hashed. Whether it targets the
/// `wasi:http/proxy` world is checked when it is compiled, before any port
/// is bound (`exec::prepare`).
fn check_wasm_executor(
    cx: &mut Ctx<'_>,
    e: &Spanned<RawExecutor>,
    key: &str,
    workdir: &Path,
) -> Option<Component> {
    let r = e.get_ref();
    if let Some(c) = &r.command {
        cx.err(
            Some(c.span()),
            format!("{key}.executor.command"),
            "a wasm executor runs a component, not a command",
            Some("remove `command` and give component = \"PATH.wasm\"".into()),
        );
    }
    if r.handler.is_some() {
        cx.err(
            Some(e.span()),
            format!("{key}.executor.handler"),
            "`handler` is for lambda executors",
            Some("remove `handler`".into()),
        );
    }
    let Some(c) = &r.component else {
        cx.err(
            Some(e.span()),
            format!("{key}.executor.component"),
            "a wasm executor needs a component",
            Some("give component = \"PATH.wasm\" (a wasi:http/proxy component, relative to the bundle or else the topology file)".into()),
        );
        return None;
    };
    let path = absolute(&workdir.join(c.get_ref()));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(error) => {
            cx.err(
                Some(c.span()),
                format!("{key}.executor.component"),
                format!("cannot read component {}: {error}", path.display()),
                Some("check the path (relative to the bundle, or else to the topology file); build the component first (e.g. edge-config/functions/build-wasm.sh)".into()),
            );
            return None;
        }
    };
    if let Err(why) = wasm_kind(&bytes) {
        cx.err(
            Some(c.span()),
            format!("{key}.executor.component"),
            format!("{} is {why}", path.display()),
            Some("give a wasi:http/proxy component (componentize-py, jco componentize, cargo's wasm32-wasip2 target, or wasm-tools component new)".into()),
        );
        return None;
    }
    use sha2::Digest as _;
    let sha256 = sha2::Sha256::digest(&bytes).into();
    Some(Component { path, sha256 })
}

/// Whether `bytes` begin like a WebAssembly component (magic, then the
/// component encoding's version and layer), and what they are if not.
fn wasm_kind(bytes: &[u8]) -> Result<(), &'static str> {
    match bytes {
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(()),
        [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00, ..] => {
            Err("a core WebAssembly module, not a component")
        }
        [0x00, b'a', b's', b'm', ..] => Err("WebAssembly of an unknown encoding"),
        _ => Err("not WebAssembly (no \\0asm header)"),
    }
}

/// Finds an executable: a path (relative to `base`) if it has a slash,
/// else the first match on `PATH`.
///
/// The path is made absolute but never resolved through symlinks: a
/// program is run by the path the operator wrote. A virtualenv's
/// `bin/python` is a symlink to the base interpreter, and Python finds the
/// venv (its `pyvenv.cfg`) from the path it was started by; resolving the
/// link would run the base interpreter without the venv's packages.
pub(crate) fn find_program(prog: &str, base: &Path) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = if Path::new(prog).is_absolute() {
            PathBuf::from(prog)
        } else {
            absolute(&base.join(prog))
        };
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| is_executable(p))
}

/// `p` made absolute against the current directory, lexically: symlinks
/// are kept (see `find_program`).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_keep_the_path_the_operator_wrote() {
        // A venv's bin/python is a symlink; resolving it would lose the venv.
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real-python");
        std::fs::write(&real, "#!/bin/sh\n").expect("write");
        let mut perm = std::fs::metadata(&real).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&real, perm).expect("chmod");
        std::fs::create_dir(dir.path().join("venv")).expect("mkdir");
        let link = dir.path().join("venv/python");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(
            find_program(&link.to_string_lossy(), dir.path()),
            Some(link.clone())
        );
        assert_eq!(find_program("venv/python", dir.path()), Some(link));
        // A relative base is made absolute (workers run in another directory).
        let rel = find_program("sh", Path::new(".")).expect("sh on PATH");
        assert!(rel.is_absolute(), "{rel:?}");
        let found = find_program("./Cargo.toml", Path::new("."));
        assert_eq!(found, None, "not executable");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn labels() {
        for ok in ["a", "echo", "edit-front-end", "x1"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn clash_rules() {
        let a: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let c: SocketAddr = "127.0.0.2:53".parse().unwrap();
        assert!(clashes(a, a));
        assert!(clashes(a, b));
        assert!(!clashes(a, c));
    }
}
