//! Command-line interface: `serve`, `check`, `status`, `invoke`, `geo lookup`.
//!
//! Each subcommand loads and validates the topology through `config`
//! before doing anything else; bad configuration exits with 64 (EX_USAGE)
//! before any port is bound.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Topology};
use crate::geo::GeoDb;
use crate::placement;

mod control;
mod tcp;

/// sysexits.h EX_USAGE: bad configuration or arguments.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_SOFTWARE: a runtime failure.
const EX_SOFTWARE: u8 = 70;

#[derive(Parser, Debug)]
#[command(
    name = "fnroute",
    version,
    about = "Edge function router: reach stateless functions by name"
)]
pub(crate) struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run edge nodes of a topology.
    Serve {
        /// Topology file (default: the embedded edge-config/local.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The edge to run (default: the only edge, or the first one).
        #[arg(long, conflicts_with = "all")]
        node: Option<String>,
        /// Run every edge of the topology in this process.
        #[arg(long)]
        all: bool,
        /// How long in-flight work may take to finish on shutdown.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
        #[command(flatten)]
        control: control::ServeControl,
    },
    /// Deploy a topology through the control plane: validated, its
    /// artifacts uploaded, signed, written as the next revision.
    Deploy {
        #[command(flatten)]
        conn: control::Conn,
        /// The topology file.
        #[arg(long)]
        topology: PathBuf,
        /// Private key to sign the revision with (`fnroute control keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// The control plane: status, rollback, keys.
    Control {
        #[command(subcommand)]
        command: control::ControlCommand,
    },
    /// Validate a topology and print a summary.
    Check {
        /// Topology file.
        file: PathBuf,
    },
    /// Invoke a function over HTTP/3, or HTTPS over TCP with --tcp
    /// (optionally resolving it through a fnroute DNS front door first).
    Invoke(InvokeArgs),
    /// Ask a running edge's admin listener for its view of the fleet.
    Status {
        /// The admin listener (host:port).
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: String,
        /// Print the JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Geo database tools.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// Cluster certificates for mutual TLS between edges.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CertCommand {
    /// Create a development cluster CA and one certificate per edge
    /// (`ca.pem`, `<edge>.pem`, `<edge>-key.pem`); not for production.
    Dev {
        /// Topology file.
        #[arg(long)]
        config: PathBuf,
        /// Output folder (default: the topology's `[mesh] cert_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct InvokeArgs {
    /// Function name (not with --event or --route).
    #[arg(required_unless_present_any = ["event", "route"])]
    pub(crate) name: Option<String>,
    /// `-`: read the event from stdin.
    #[arg(value_name = "-", conflicts_with_all = ["data", "data_file"])]
    pub(crate) stdin: Option<String>,
    /// The event, as text.
    #[arg(long, conflicts_with = "data_file")]
    pub(crate) data: Option<String>,
    /// Read the event from a file (`-` for stdin).
    #[arg(long)]
    pub(crate) data_file: Option<PathBuf>,
    /// Edge to send it to, HOST:PORT (ignored with --resolve).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub(crate) edge: String,
    /// Ask this fnroute DNS server (IP or IP:PORT, UDP) for NAME.<zone> first.
    #[arg(long)]
    pub(crate) resolve: Option<String>,
    /// Zone of the function names (default: the embedded topology's).
    #[arg(long)]
    pub(crate) zone: Option<String>,
    /// Trust this PEM certificate or CA (default: the embedded topology's
    /// certificate or its generated development certificate).
    #[arg(long, conflicts_with = "insecure")]
    pub(crate) ca: Option<PathBuf>,
    /// Do not verify the server certificate (development only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Shorten the function's deadline (milliseconds).
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Send an event of this type (`POST /event/TYPE`) instead of invoking
    /// one function: it runs through the type's route (docs/routing.md).
    #[arg(long, conflicts_with = "route")]
    pub(crate) event: Option<String>,
    /// Send the event along this explicit route stack (`POST /route`),
    /// e.g. "edit log process".
    #[arg(long)]
    pub(crate) route: Option<String>,
    /// With --event or --route: the entry edge calls every step itself
    /// (`fnroute-route-mode: orchestrated`) instead of source routing.
    #[arg(long)]
    pub(crate) orchestrated: bool,
    /// Send it over HTTPS on TCP (the edge's tcp_listen; HTTP/2, or
    /// HTTP/1.1 if the server offers only that) instead of HTTP/3. With
    /// --resolve: the port of the HTTPS record (an edge serving both on one
    /// port advertises alpn h3,h2).
    #[arg(long)]
    pub(crate) tcp: bool,
    /// Over TCP with HTTP/1.1 only (implies --tcp).
    #[arg(long = "http1.1")]
    pub(crate) http1_1: bool,
    /// Print the protocol used (h3, h2, http/1.1), the status and the
    /// response headers to stderr.
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum GeoCommand {
    /// What the database says about an address, and the nearest edge.
    Lookup {
        /// IPv4 or IPv6 address.
        addr: IpAddr,
        /// Database file (default: the topology's geo_db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Topology file (default: the embedded edge-config/local.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    }
}

/// The embedded default topology: `edge-config/local.toml` in the current
/// directory if there is one, else the one next to the sources this binary
/// was built from.
pub(crate) fn default_topology_path() -> PathBuf {
    let here = PathBuf::from(config::DEFAULT_TOPOLOGY);
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(config::DEFAULT_TOPOLOGY)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Status { admin, json } => status(&admin, json),
        Command::Invoke(args) => invoke(args),
        Command::Geo {
            command: GeoCommand::Lookup { addr, db, config },
        } => geo_lookup(addr, db, config),
        Command::Serve {
            config,
            node,
            all,
            grace,
            control: c,
        } => match c.opts() {
            Some(opts) => control::serve(opts, &c, node, grace),
            None => serve(config, node, all, grace),
        },
        Command::Deploy {
            conn,
            topology,
            key,
        } => control::deploy(&conn, &topology, key.as_deref()),
        Command::Control { command } => control::command(command),
        Command::Cert {
            command: CertCommand::Dev { config, out },
        } => cert_dev(&config, out),
    }
}

/// `fnroute cert dev`: writes a development cluster CA and edge certificates.
fn cert_dev(config: &Path, out: Option<PathBuf>) -> ExitCode {
    let topo = match config::load_without_mesh_files(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(out) = out.or_else(|| topo.mesh.as_ref().map(|m| m.cert_dir.clone())) else {
        eprintln!(
            "fnroute: {} has no [mesh] cert_dir; pass --out DIR",
            config.display()
        );
        return ExitCode::FAILURE;
    };
    match crate::tls::pki::generate_dev(&topo, &out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fnroute: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `FNROUTE_LOG` (or `RUST_LOG`) filter, default `warn,fnroute=info`.
pub(crate) fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FNROUTE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn,fnroute=info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("fnroute: bad log filter {filter:?} ({e}); using the default");
        EnvFilter::new("warn,fnroute=info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

fn load(path: &Path) -> Result<Topology, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EX_USAGE)
    })
}

fn check(file: &Path) -> ExitCode {
    let topo = match load(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // Every component compiles (into the state dir's cache) and targets
    // wasi:http/proxy, as `serve` will require.
    if let Err(e) = crate::exec::prepare(&topo, None) {
        eprintln!("{}: {e}", topo.source.display());
        return ExitCode::from(EX_USAGE);
    }
    print!("{}", summary(&topo));
    ExitCode::SUCCESS
}

/// A readable summary of a valid topology (`fnroute check`).
pub(crate) fn summary(t: &Topology) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", t.source.display());
    let _ = writeln!(s, "zone {}  geo_db {}", t.zone, t.geo_db.display());
    let _ = writeln!(
        s,
        "dns ttl {}s, {} answer(s), spill-over above {:.0}% load",
        t.dns.ttl,
        t.dns.answers,
        t.dns.load_threshold * 100.0
    );
    let _ = writeln!(s, "\n{} edge(s):", t.edges.len());
    for e in &t.edges {
        let addrs: Vec<String> = e.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "  {:<10} ({:>7.2}, {:>7.2})  addresses {}  dns {}  quic {}  admin {}  capacity {}",
            e.name,
            e.location.lat,
            e.location.lon,
            addrs.join(","),
            e.dns_listen,
            e.quic_listen,
            e.admin_listen,
            e.capacity
        );
    }
    let _ = writeln!(s, "\n{} function(s):", t.functions.len());
    for f in &t.functions {
        let edges: Vec<&str> = f
            .edges
            .iter()
            .filter_map(|&i| t.edges.get(i).map(|e| e.name.as_str()))
            .collect();
        let mut extra = Vec::new();
        if f.idempotent {
            extra.push("idempotent".to_string());
        }
        if f.gatekeeper {
            extra.push("gatekeeper".to_string());
        }
        if let Some(c) = &f.cache {
            extra.push(format!("cache {}s", c.ttl.as_secs()));
        }
        if let Some(st) = &f.streaming {
            extra.push(format!(
                "streaming (idle {} ms, max {} bytes)",
                st.idle.as_millis(),
                st.max_bytes
            ));
        }
        let _ = writeln!(
            s,
            "  {:<16} {:?} on {}  memory {} MB  timeout {} ms  workers {}..{}{}{}",
            f.name,
            f.executor.kind,
            edges.join(","),
            f.memory_mb,
            f.timeout.as_millis(),
            f.concurrency_min,
            f.concurrency_max,
            if extra.is_empty() { "" } else { "  " },
            extra.join(", ")
        );
    }
    let r = &t.routing;
    if !r.routes.is_empty() || !r.events.is_empty() {
        let _ = writeln!(
            s,
            "\nrouting: max {} steps, {} expansions, {} hops, stack depth {}, timeout {} ms",
            r.bounds.max_steps,
            r.bounds.max_expansions,
            r.bounds.max_hops,
            r.bounds.max_stack_depth,
            r.bounds.timeout.as_millis()
        );
        for (name, steps) in &r.routes {
            let _ = writeln!(s, "  route {name:<16} -> {}", steps.join(" "));
        }
        for (kind, entry) in &r.events {
            let _ = writeln!(s, "  event {kind:<16} enters at {}", entry.join(" "));
        }
    }
    s
}

fn geo_lookup(addr: IpAddr, db: Option<PathBuf>, config_path: Option<PathBuf>) -> ExitCode {
    let path = config_path.unwrap_or_else(default_topology_path);
    let topo = match load(&path) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let db_path = db.unwrap_or_else(|| topo.geo_db.clone());
    let geo = match GeoDb::open(&db_path, topo.default_location) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("fnroute: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let a = geo.lookup(addr);
    println!("address    {addr}");
    println!("database   {}", db_path.display());
    if a.known {
        println!("location   {:.4}, {:.4}", a.location.lat, a.location.lon);
    } else {
        println!(
            "location   unknown; default {:.4}, {:.4}",
            a.location.lat, a.location.lon
        );
    }
    println!("country    {}", a.country_str().unwrap_or("-"));
    println!("continent  {}", a.continent_str().unwrap_or("-"));
    println!("network    /{}", a.prefix_len);
    if let Some(city) = geo
        .describe(addr)
        .and_then(|v| v.pointer("/city/names/en").cloned())
    {
        println!("city       {}", city.as_str().unwrap_or("-"));
    }
    let all: Vec<usize> = (0..topo.edges.len()).collect();
    let view = placement::View::from_topology(Arc::new(topo), 0);
    let ranking = placement::rank(&view, &all, a.location);
    for (i, c) in ranking.candidates.iter().enumerate() {
        let name = view
            .topology
            .edges
            .get(c.edge)
            .map(|e| e.name.as_str())
            .unwrap_or("?");
        println!(
            "{}  {:<10} {:>8.0} km",
            if i == 0 { "nearest" } else { "       " },
            name,
            c.distance_km
        );
    }
    ExitCode::SUCCESS
}

fn serve(
    config_path: Option<PathBuf>,
    node: Option<String>,
    all: bool,
    grace: Duration,
) -> ExitCode {
    let path = config_path.unwrap_or_else(default_topology_path);
    let topo = match load(&path) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let edges: Vec<usize> = if all {
        (0..topo.edges.len()).collect()
    } else {
        match node {
            Some(name) => match topo.edge_id(&name.to_ascii_lowercase()) {
                Some(id) => vec![id],
                None => {
                    let known: Vec<&str> = topo.edges.iter().map(|e| e.name.as_str()).collect();
                    eprintln!(
                        "fnroute: unknown edge {name:?} in {} (known: {})",
                        path.display(),
                        known.join(", ")
                    );
                    return ExitCode::from(EX_USAGE);
                }
            },
            None => vec![0],
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fnroute: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    tracing::info!(config = %path.display(), "fnroute starting");
    let result = runtime.block_on(async move {
        // Handlers first: a SIGTERM during start-up must still drain.
        let stop = crate::shutdown::signal();
        let fleet = crate::node::Fleet::start(Arc::new(topo), &edges).await?;
        stop.await;
        tracing::info!(?grace, "shutting down");
        fleet.shutdown(grace).await;
        anyhow::Ok(())
    });
    served(result)
}

/// The exit code of a `serve` run: 0, or 70 with the error logged and
/// printed.
fn served(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A component that cannot run is bad configuration, found before
        // any port was bound.
        Err(e) if e.downcast_ref::<crate::exec::PrepareError>().is_some() => {
            tracing::error!("{e:#}");
            eprintln!("fnroute: {e:#}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fnroute: {e:#}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

/// `fnroute status`: fetches `/status` from an admin listener and prints it.
fn status(admin: &str, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fnroute: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let body = match runtime.block_on(fetch_status(admin)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "fnroute: cannot get /status from the admin listener at {admin}: {e}\n  fix: is fnroute serving there? pass the edge's admin_listen with --admin HOST:PORT"
            );
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<crate::admin::Status>(&body) {
        Ok(s) => {
            print!("{}", status_table(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "fnroute: {admin} answered /status with a document this version cannot read: {e}"
            );
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

/// GET /status over plain HTTP/1.0 (the server closes after the response,
/// so the body is everything after the headers). Bounded in time and size.
async fn fetch_status(admin: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: u64 = 8 * 1024 * 1024;
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET /status HTTP/1.0\r\nHost: {admin}\r\nAccept: application/json\r\nUser-Agent: fnroute/{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(LIMIT)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no answer within 5 s".to_string())??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("not an HTTP response")?;
    if code != "200" {
        return Err(format!("HTTP status {code}"));
    }
    Ok(buf[split + 4..].to_vec())
}

/// The readable form of a status document (`fnroute status`).
pub(crate) fn status_table(s: &crate::admin::Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let up = s.node.uptime_s.max(0.0) as u64;
    let _ = writeln!(
        out,
        "edge {}  fnroute {}  up {}h{:02}m{:02}s  {}{}  zone {}  view generation {}",
        s.node.name,
        s.node.version,
        up / 3600,
        up % 3600 / 60,
        up % 60,
        s.node.health.as_str(),
        if s.node.draining { " (draining)" } else { "" },
        s.zone,
        s.view.generation
    );
    if let Some(c) = &s.control {
        let _ = writeln!(
            out,
            "control plane: serving revision {} since {} ms{}",
            c["revision"],
            c["since_ms"],
            match c["refused"].as_object() {
                Some(r) => format!(
                    "; refused revision {}: {}",
                    r.get("revision").unwrap_or(&serde_json::Value::Null),
                    r.get("why").and_then(|w| w.as_str()).unwrap_or("")
                ),
                None => String::new(),
            }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<15} {:>5} {:>9} {:>17}  {:<24} FUNCTIONS",
        "EDGE", "HEALTH", "LOAD", "RTT", "LOCATION", "ADDRESSES"
    );
    for e in &s.edges {
        let rtt = e
            .rtt_ms
            .map(|r| format!("{r:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<12} {:<15} {:>4.0}% {:>9} {:>17}  {:<24} {}",
            format!("{}{}", e.name, if e.is_self { " *" } else { "" }),
            e.health.as_str(),
            e.load * 100.0,
            rtt,
            format!("{:.2}, {:.2}", e.location.lat, e.location.lon),
            e.addresses.join(","),
            e.functions.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:<8} {:>7}  {:<20} POOL ON {} (workers/busy/queued, min..max)",
        "FUNCTION", "EXECUTOR", "MEMORY", "EDGES", s.node.name
    );
    let n = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for f in &s.functions {
        let pool = match f.pools.get(&s.node.name) {
            Some(p) => format!(
                "{}/{}/{}  {}..{}",
                n(p.workers),
                n(p.busy),
                n(p.queued),
                f.concurrency_min,
                f.concurrency_max
            ),
            None => "not hosted here".into(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>4} MB  {:<20} {}",
            f.name,
            f.executor,
            f.memory_mb,
            f.edges.join(","),
            pool
        );
    }
    let _ = writeln!(out, "\n* = the edge answering; - = not measured yet");
    out
}

/// sysexits.h EX_UNAVAILABLE: the edge or DNS server could not be reached.
const EX_UNAVAILABLE: u8 = 69;

/// Writes a successful answer's body to stdout as it arrives (each chunk
/// flushed); a stream cut by the edge (a reset, a connection closed
/// before the end) is reported and fails the command.
async fn print_body(reply: &mut crate::mesh::transport::Reply) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout();
    let mut n = 0usize;
    while let Some(chunk) = reply.chunk().await {
        match chunk {
            Ok(c) => {
                n += c.len();
                let mut lock = out.lock();
                if lock.write_all(&c).and_then(|_| lock.flush()).is_err() {
                    // stdout closed (e.g. `| head`): stop reading.
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                let _ = out.flush();
                eprintln!("fnroute: stream aborted after {n} bytes: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `fnroute invoke`: prints the result body to stdout; errors (the
/// problem+json detail) go to stderr with exit status 1 for an HTTP error
/// and 69 when the edge could not be reached.
fn invoke(mut args: InvokeArgs) -> ExitCode {
    use std::io::Read;
    let routed = args.event.is_some() || args.route.is_some();
    if routed {
        // `fnroute invoke --event T -`: the dash lands in NAME.
        match args.name.take() {
            Some(dash) if dash == "-" && args.stdin.is_none() => args.stdin = Some(dash),
            Some(other) => {
                eprintln!("fnroute: give a function NAME or --event/--route, not both ({other:?})");
                return ExitCode::from(EX_USAGE);
            }
            None => {}
        }
    }
    let payload = match (&args.stdin, &args.data, &args.data_file) {
        (Some(dash), _, _) if dash != "-" => {
            eprintln!("fnroute: unexpected argument {dash:?} (use - for stdin)");
            return ExitCode::from(EX_USAGE);
        }
        (Some(_), _, _) => read_stdin(),
        (_, Some(d), _) => Ok(d.clone().into_bytes()),
        (_, _, Some(p)) if p.as_os_str() == "-" => read_stdin(),
        (_, _, Some(p)) => std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display())),
        _ => Ok(Vec::new()),
    };
    fn read_stdin() -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map(|_| v)
            .map_err(|e| format!("reading stdin: {e}"))
    }
    let payload = match payload {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fnroute: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // The zone and default trust come from the embedded topology unless given.
    let topo = if args.zone.is_none() || (args.ca.is_none() && !args.insecure) {
        match load(&default_topology_path()) {
            Ok(t) => Some(t),
            Err(code) => return code,
        }
    } else {
        None
    };
    let zone = args
        .zone
        .clone()
        .or_else(|| topo.as_ref().map(|t| t.zone.clone()))
        .unwrap_or_default();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let trust = if args.insecure {
        crate::mesh::transport::Trust::Insecure
    } else if let Some(ca) = &args.ca {
        crate::mesh::transport::Trust::Ca(ca.clone())
    } else {
        let t = topo.as_ref().map(|t| match &t.tls {
            Some(tls) => tls.cert.clone(),
            None => t.state_dir.join(crate::tls::DEV_CERT),
        });
        match t {
            Some(p) if p.is_file() => crate::mesh::transport::Trust::Ca(p),
            _ => {
                eprintln!("fnroute: no certificate to trust: give --ca FILE (e.g. state/dev-cert.pem) or --insecure");
                return ExitCode::from(EX_USAGE);
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fnroute: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    // With --event/--route, --resolve looks up the first step's name (the
    // event type's entry is not known to the client).
    let name = args
        .name
        .clone()
        .or_else(|| {
            args.route
                .as_deref()
                .and_then(|r| r.split([' ', ',']).find(|s| !s.is_empty()))
                .map(str::to_string)
        })
        .unwrap_or_default()
        .to_ascii_lowercase();
    if name.is_empty() && args.resolve.is_some() {
        eprintln!("fnroute: --resolve needs a function NAME or --route (an event type is no DNS name); use --edge");
        return ExitCode::from(EX_USAGE);
    }
    let fqdn = if name.is_empty() {
        // TLS server name for --event without a function: the zone.
        if zone.is_empty() {
            "localhost".to_string()
        } else {
            zone.clone()
        }
    } else if zone.is_empty() {
        name.clone()
    } else {
        format!("{name}.{zone}")
    };
    let result = runtime.block_on(async {
        use crate::mesh::transport::{self as client, Client, Request};
        let addr: std::net::SocketAddr = match &args.resolve {
            Some(server) => {
                let server: std::net::SocketAddr = server
                    .parse()
                    .or_else(|_| server.parse::<IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| {
                        (
                            EX_USAGE,
                            format!("--resolve {server:?}: not an IP or IP:PORT"),
                        )
                    })?;
                let r = client::resolve(server, &format!("{fqdn}."), Duration::from_secs(3))
                    .await
                    .map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
                (r.addr, r.port.unwrap_or(4433)).into()
            }
            None => tokio::net::lookup_host(&args.edge)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| (EX_USAGE, format!("--edge {:?}: not a HOST:PORT", args.edge)))?,
        };
        let mut req = Request::invoke(&name, bytes::Bytes::from(payload));
        if let Some(t) = &args.event {
            req.path = format!("/event/{t}");
        } else if let Some(r) = &args.route {
            req.path = "/route".to_string();
            req = req.header(crate::headers::ROUTE_HEADER, r);
        }
        if routed && args.orchestrated {
            req = req.header(crate::route::MODE_HEADER, "orchestrated");
        }
        if let Some(ms) = args.timeout_ms {
            req = req.header(crate::headers::TIMEOUT_HEADER, &ms.to_string());
        }
        if args.tcp || args.http1_1 {
            let offer = if args.http1_1 {
                tcp::Offer::Http1
            } else {
                tcp::Offer::Any
            };
            let (reply, protocol) = tcp::send(&trust, offer, addr, &fqdn, req, args.timeout_ms)
                .await
                .map_err(|e| (e.exit_code(), e.to_string()))?;
            return Ok((addr, protocol, reply, None));
        }
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let client = Client::new(&trust, bind).map_err(|e| (EX_USAGE, e.to_string()))?;
        let conn = client
            .connect(addr, &fqdn)
            .await
            .map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
        // A streamed answer is printed as it arrives (below), over this
        // connection: it stays open until then.
        let reply = conn
            .send_streaming(req)
            .await
            .map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
        Ok::<_, (u8, String)>((addr, "h3", reply, Some((conn, client))))
    });
    match result {
        Ok((addr, protocol, mut reply, keep)) => {
            if args.verbose {
                eprintln!("* protocol: {protocol}");
                eprintln!("< {} from {addr}", reply.status);
                for (k, v) in &reply.headers {
                    eprintln!("< {k}: {}", v.to_str().unwrap_or("?"));
                }
            }
            let code = runtime.block_on(async {
                let code = if (200..300).contains(&reply.status) {
                    Some(print_body(&mut reply).await)
                } else {
                    if reply.is_streaming() {
                        let mut whole = Vec::new();
                        while let Some(Ok(c)) = reply.chunk().await {
                            whole.extend_from_slice(&c);
                        }
                        reply.body = whole.into();
                    }
                    None
                };
                if let Some((conn, client)) = keep {
                    conn.quic().close(0u32.into(), b"done");
                    client.close().await;
                }
                code
            });
            if let Some(code) = code {
                return code;
            }
            match reply.problem() {
                Some(p) => eprintln!(
                    "fnroute: {} {}: {}",
                    reply.status,
                    p["title"].as_str().unwrap_or("error"),
                    p["detail"].as_str().unwrap_or("")
                ),
                None => eprintln!(
                    "fnroute: {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                ),
            }
            ExitCode::from(1)
        }
        Err((code, message)) => {
            eprintln!("fnroute: {message}");
            ExitCode::from(code)
        }
    }
}
