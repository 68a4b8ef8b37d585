//! `fnroute serve --control`, `fnroute deploy` and `fnroute control`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::{EX_SOFTWARE, EX_USAGE};
use crate::control::{self, ControlError, ControlOpts};

/// sysexits.h EX_UNAVAILABLE: the control plane could not be reached.
const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h EX_TEMPFAIL: lost a race (another deploy won); try again.
const EX_TEMPFAIL: u8 = 75;

/// How to reach the control plane (operators' commands).
#[derive(clap::Args, Debug)]
pub(crate) struct Conn {
    /// NATS servers, `nats://HOST:PORT[,…]` (user:password@ allowed).
    #[arg(long)]
    control: String,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long)]
    control_creds: Option<PathBuf>,
    /// CA of the NATS servers' TLS certificates (TLS required then).
    #[arg(long)]
    control_tls_ca: Option<PathBuf>,
}

impl Conn {
    fn opts(&self) -> ControlOpts {
        ControlOpts {
            urls: self.control.clone(),
            creds: self.control_creds.clone(),
            tls_ca: self.control_tls_ca.clone(),
        }
    }
}

/// `serve`'s control-plane flags (without `--control`, none applies).
#[derive(clap::Args, Debug)]
pub(crate) struct ServeControl {
    /// Take the topology and artifacts from this control plane
    /// (`nats://HOST:PORT[,…]`) instead of a file; needs --node.
    #[arg(long, requires = "node", conflicts_with_all = ["config", "all"])]
    control: Option<String>,
    /// NATS credentials file.
    #[arg(long, requires = "control")]
    control_creds: Option<PathBuf>,
    /// CA of the NATS servers' TLS certificates.
    #[arg(long, requires = "control")]
    control_tls_ca: Option<PathBuf>,
    /// Public key (`fnroute control keygen`'s FILE.pub) revisions must be
    /// signed with; without it, every revision is accepted.
    #[arg(long, requires = "control")]
    control_trust: Option<PathBuf>,
    /// Where the last good topology and its artifacts are kept (served
    /// from there when the control plane is away).
    #[arg(long, requires = "control", default_value = "state")]
    state_dir: PathBuf,
}

impl ServeControl {
    pub(crate) fn opts(&self) -> Option<ControlOpts> {
        self.control.as_ref().map(|urls| ControlOpts {
            urls: urls.clone(),
            creds: self.control_creds.clone(),
            tls_ca: self.control_tls_ca.clone(),
        })
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum ControlCommand {
    /// Every edge, the revision it serves and since when, and what it refused.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Make an earlier revision the current one again.
    Rollback {
        #[command(flatten)]
        conn: Conn,
        /// The revision to go back to.
        revision: u64,
    },
    /// An Ed25519 key pair: the private key in FILE, the public one in FILE.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fnroute: cannot start the runtime: {e}");
            ExitCode::from(EX_SOFTWARE)
        })
}

fn fail(e: &ControlError) -> ExitCode {
    eprintln!("fnroute: {e}");
    ExitCode::from(match e {
        ControlError::Connect { .. } | ControlError::Nats(_) => EX_UNAVAILABLE,
        ControlError::Conflict(_) => EX_TEMPFAIL,
        ControlError::Config(_) | ControlError::File { .. } | ControlError::Signature(_) => {
            EX_USAGE
        }
        ControlError::Fetch { .. } => EX_UNAVAILABLE,
        ControlError::Empty | ControlError::NoRevision(_) | ControlError::Artifact { .. } => 1,
    })
}

/// `fnroute deploy`.
pub(crate) fn deploy(conn: &Conn, topology: &Path, key: Option<&Path>) -> ExitCode {
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    if key.is_none() {
        eprintln!("fnroute: warning: unsigned deploy (--key): edges started with --control-trust refuse it");
    }
    match rt.block_on(control::deploy(&conn.opts(), topology, key)) {
        Ok(revision) => {
            println!("revision {revision}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `fnroute control …`.
pub(crate) fn command(c: ControlCommand) -> ExitCode {
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    match c {
        ControlCommand::Keygen { out } => match control::keygen(&out) {
            Ok(public) => {
                println!(
                    "private key {}\npublic key {}",
                    out.display(),
                    public.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        ControlCommand::Rollback { conn, revision } => {
            match rt.block_on(control::rollback(&conn.opts(), revision)) {
                Ok(r) => {
                    println!("revision {r} (the topology of revision {revision})");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        ControlCommand::Status { conn } => match rt.block_on(control::status(&conn.opts())) {
            Ok(s) => {
                print_status(&s);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}

fn print_status(s: &control::Status) {
    let current = s.current.map(|(r, _)| r);
    match s.current {
        Some((r, at)) => println!("current revision {r} (deployed at {at} ms since the epoch)"),
        None => println!("no topology deployed"),
    }
    println!(
        "{:<16} {:>9} {:>15}  state",
        "edge", "revision", "since (ms)"
    );
    for e in &s.edges {
        let state = match (e.revision, current) {
            (Some(a), Some(c)) if a == c => "current".to_string(),
            (Some(a), Some(c)) if a < c => format!("behind ({} revisions)", c - a),
            (None, _) => "nothing applied".to_string(),
            _ => "ahead".to_string(),
        };
        println!(
            "{:<16} {:>9} {:>15}  {state}",
            e.edge,
            e.revision
                .map_or_else(|| "-".to_string(), |r| r.to_string()),
            e.since_ms
        );
        if let Some(r) = &e.refused {
            println!("{:<16} refused revision {}: {}", "", r.revision, r.why);
        }
    }
}

/// `fnroute serve --control … --node NAME`: the last good topology kept
/// in the state directory (or, the first time, the control plane's),
/// then every newer revision applied live.
pub(crate) fn serve(
    opts: ControlOpts,
    c: &ServeControl,
    node: Option<String>,
    grace: Duration,
) -> ExitCode {
    let Some(node) = node.map(|n| n.to_ascii_lowercase()) else {
        eprintln!("fnroute: --control needs --node NAME");
        return ExitCode::from(EX_USAGE);
    };
    let agent = match control::Agent::new(
        opts,
        node.clone(),
        c.state_dir.clone(),
        c.control_trust.as_deref(),
    ) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let result = rt.block_on(async move {
        // Handlers first: a SIGTERM during start-up must still stop it.
        let stop = crate::shutdown::signal();
        tokio::pin!(stop);
        let token = tokio_util::sync::CancellationToken::new();
        let revision = match agent.last_good() {
            Some(r) => {
                tracing::info!(
                    revision = r,
                    "serving the last good topology; catching up with the control plane"
                );
                r
            }
            None => {
                tracing::info!("waiting for a topology from the control plane");
                tokio::select! {
                    r = agent.first(&token) => r?,
                    () = &mut stop => return anyhow::Ok(()),
                }
            }
        };
        let path = agent.current();
        let topo = crate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(edge) = topo.edge_id(&node) else {
            anyhow::bail!("edge {node:?} is not in the deployed topology");
        };
        let fleet = crate::node::Fleet::start(Arc::new(topo), &[edge]).await?;
        let watcher = tokio::spawn(agent.run(fleet.reloader.clone(), revision, token.clone()));
        stop.await;
        token.cancel();
        let _ = watcher.await;
        tracing::info!(?grace, "shutting down");
        fleet.shutdown(grace).await;
        anyhow::Ok(())
    });
    super::served(result)
}
