//! Shared test harness: a one-edge fleet on loopback with its own
//! temporary state directory, and an HTTP/3 client for it.

use std::net::SocketAddr;
use std::sync::Arc;

use fnroute::config::Topology;
use fnroute::mesh::transport::{Client, Connection, Trust};
use fnroute::node::Fleet;

/// Functions every test topology has (all on edge `fra` unless noted).
const FUNCTIONS: &str = r#"
[[function]]
name = "upper"
edges = ["fra"]
executor = { kind = "command", command = ["tr", "a-z", "A-Z"] }
timeout_ms = 3000

[[function]]
name = "resize"
edges = ["fra"]
executor = { kind = "command", command = ["cat"] }
timeout_ms = 3000
idempotent = true

[[function]]
name = "fail"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "echo boom >&2; exit 3"] }
timeout_ms = 3000

[[function]]
name = "hang"
edges = ["fra"]
executor = { kind = "command", command = ["sleep", "30"] }
timeout_ms = 300

[[function]]
name = "slow"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "sleep 0.5; cat"] }
timeout_ms = 3000

[[function]]
name = "cached"
edges = ["fra"]
executor = { kind = "command", command = ["cat"] }
cache = { ttl_s = 30, vary = ["accept-language"] }

[[function]]
name = "nostore"
edges = ["fra"]
executor = { kind = "command", command = ["sh", "-c", "echo 'fnroute-cache-control: no-store' >&2; cat"] }
cache = { ttl_s = 30 }

[[function]]
name = "elsewhere"
edges = ["nyc"]
executor = { kind = "command", command = ["cat"] }
"#;

/// Knobs of a test edge.
pub(crate) struct Opts {
    /// Lines of the `[quic]` table.
    pub(crate) quic: &'static str,
    /// Lines of the `[tcp]` table.
    pub(crate) tcp: &'static str,
    /// `capacity` of the served edge.
    pub(crate) capacity: u32,
    /// More `[[function]]` tables; `functions/…` names the repository's
    /// `edge-config/functions/` (linked beside the topology file).
    pub(crate) functions: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            quic: "",
            tcp: "",
            capacity: 16,
            functions: String::new(),
        }
    }
}

/// A running edge `fra` (nyc exists in the topology but is not served).
pub(crate) struct TestEdge {
    pub(crate) fleet: Option<Fleet>,
    pub(crate) addr: SocketAddr,
    /// fra's HTTPS-over-TCP listener (`tcp_listen`).
    pub(crate) tcp: SocketAddr,
    pub(crate) topology: Arc<Topology>,
    pub(crate) dir: tempfile::TempDir,
}

/// Writes the topology into a fresh temporary directory, rewrites every
/// listener to 127.0.0.1 port 0 and starts edge `fra`.
pub(crate) async fn start(opts: Opts) -> TestEdge {
    // `FNROUTE_LOG=debug cargo test ...` shows the server's logs.
    if let Ok(filter) = std::env::var("FNROUTE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let geo = concat!(env!("CARGO_MANIFEST_DIR"), "/geo/sample.mmdb");
    let toml = format!(
        r#"
zone = "fn.test."
geo_db = "{geo}"
default_location = {{ lat = 50.11, lon = 8.68 }}
state_dir = "{state}"

[quic]
{quic}

[tcp]
{tcp}

[[edge]]
name = "fra"
location = {{ lat = 50.11, lon = 8.68 }}
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
capacity = {capacity}

[[edge]]
name = "nyc"
location = {{ lat = 40.71, lon = -74.01 }}
addresses = ["127.0.0.2"]
dns_listen = "127.0.0.2:0"
quic_listen = "127.0.0.2:0"
admin_listen = "127.0.0.2:0"
capacity = 16
{FUNCTIONS}
{extra}"#,
        state = dir.path().join("state").display(),
        quic = opts.quic,
        tcp = opts.tcp,
        capacity = opts.capacity,
        extra = opts.functions,
    );
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/edge-config/functions"),
        dir.path().join("functions"),
    )
    .expect("link functions/");
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, &toml).expect("write topology");
    // Port 0 everywhere: the kernel picks free ports when the fleet binds.
    let topology = Arc::new(fnroute::config::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let fleet = Fleet::start(topology.clone(), &[0])
        .await
        .expect("fleet starts");
    let addr = fleet.quic_addrs[0];
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let tcp = fleet.tcp_addrs[0].expect("fra has tcp_listen");
    TestEdge {
        fleet: Some(fleet),
        addr,
        tcp,
        topology,
        dir,
    }
}

impl TestEdge {
    /// The generated development certificate.
    pub(crate) fn cert(&self) -> std::path::PathBuf {
        self.topology.state_dir.join("dev-cert.pem")
    }

    /// A client that trusts this edge's development certificate.
    pub(crate) fn client(&self) -> Client {
        Client::new(
            &Trust::Ca(self.cert()),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("client")
    }

    /// A new connection, SNI `upper.fn.test` (covered by `*.fn.test`).
    pub(crate) async fn connect(&self, client: &Client) -> Connection {
        client
            .connect(self.addr, "upper.fn.test")
            .await
            .expect("connect")
    }

    pub(crate) async fn shutdown(&mut self) {
        if let Some(f) = self.fleet.take() {
            f.shutdown(std::time::Duration::from_secs(5)).await;
        }
    }
}
