//! The fleet control plane: a topology deployed once and applied by every
//! edge, on NATS JetStream (an existing distributed engine: key-value and
//! object store, clusters and leaf nodes), not a home-made one. Without
//! `--control` nothing here runs and the TOML file is the whole story.
//!
//! JetStream layout (docs/operations.md):
//! - key-value bucket `fnroute` (history 64): key `topology` holds the
//!   current [`Revision`] (the topology's TOML with artifact references
//!   rewritten to `sha256:<hex>`, signed with Ed25519); its KV revision
//!   number is the fleet's revision. Key `edge.<name>` holds each edge's
//!   [`EdgeReport`].
//! - object-store bucket `fnroute-artifacts`: artifacts by content,
//!   named `sha256-<hex>` (the geo database, each function's `bundle` as
//!   one tar archive).
//!
//! Layers: `cli` → `control` → `config` (validation of what is deployed
//! and of what an edge materialises); `control` never touches a running
//! edge except through `node::Reloader` (the live-reload path).

mod agent;
mod deploy;
mod sign;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use serde::{Deserialize, Serialize};

pub(crate) use agent::Agent;
pub(crate) use deploy::{deploy, rollback, status, Status};
pub(crate) use sign::keygen;

/// Key-value bucket of topologies and edge reports.
pub(crate) const BUCKET: &str = "fnroute";
/// Object-store bucket of artifacts.
pub(crate) const ARTIFACTS: &str = "fnroute-artifacts";
/// The key of the current topology revision.
pub(crate) const TOPOLOGY_KEY: &str = "topology";
/// Revisions kept for rollback (NATS's most).
const HISTORY: i64 = 64;
/// How long one control-plane request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the control plane (`--control`, `--control-creds`,
/// `--control-tls-ca`).
#[derive(Debug, Clone)]
pub(crate) struct ControlOpts {
    /// `nats://HOST:PORT[,…]` (user and password may be in the URL).
    pub(crate) urls: String,
    pub(crate) creds: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
}

/// Why a control-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("connecting to the control plane at {urls}: {message}")]
    Connect { urls: String, message: String },
    #[error("control plane: {0}")]
    Nats(String),
    #[error("{0}")]
    Config(String),
    #[error("another deploy won: the topology is at revision {0} now; run the deploy again")]
    Conflict(u64),
    #[error("no topology has been deployed yet")]
    Empty,
    #[error("revision {0} does not exist (or is older than the {HISTORY} kept)")]
    NoRevision(u64),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("signature: {0}")]
    Signature(String),
    /// An artifact that is not what its reference says (never used).
    #[error("artifact {name}: {message}")]
    Artifact { name: String, message: String },
    /// An artifact that could not be downloaded now (tried again).
    #[error("downloading artifact {name}: {message}")]
    Fetch { name: String, message: String },
}

impl ControlError {
    /// Whether trying the same thing again later may work (the control
    /// plane away or busy), as opposed to a revision that is wrong.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Nats(_) | Self::Fetch { .. } | Self::Empty
        )
    }

    fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
    fn file(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// One deployed topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Revision {
    /// 1.
    pub(crate) format: u32,
    /// The topology's TOML; artifacts referenced as `sha256:<hex>`.
    pub(crate) topology: String,
    /// Every artifact it references, by reference.
    pub(crate) artifacts: BTreeMap<String, Artifact>,
    pub(crate) deployed_at_ms: u64,
    pub(crate) deployed_by: String,
    /// Ed25519 over `sign::message(topology)`, base64; `None`: unsigned.
    pub(crate) signature: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Artifact {
    pub(crate) kind: ArtifactKind,
    pub(crate) size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ArtifactKind {
    /// The geo database (`geo_db`).
    Geo,
    /// A function's `bundle`, as a tar archive.
    Bundle,
    /// A wasm function's `executor.component` (outside a bundle).
    Component,
}

/// What an edge says about the revisions it was given (`edge.<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EdgeReport {
    pub(crate) edge: String,
    /// The revision it serves (`None`: none yet).
    pub(crate) revision: Option<u64>,
    /// When it began serving that revision (Unix ms).
    pub(crate) since_ms: u64,
    /// The newest revision it refused, and why.
    pub(crate) refused: Option<Refusal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Refusal {
    pub(crate) revision: u64,
    pub(crate) why: String,
    pub(crate) at_ms: u64,
}

/// Connects to the control plane.
pub(crate) async fn connect(o: &ControlOpts) -> Result<async_nats::Client, ControlError> {
    let mut opts = async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .name("fnroute");
    if let Some(creds) = &o.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| ControlError::file(creds, e))?;
    }
    if let Some(ca) = &o.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let (urls, user) = split_credentials(&o.urls);
    if let Some((user, pass)) = user {
        opts = opts.user_and_password(user, pass);
    }
    opts.connect(urls.as_str())
        .await
        .map_err(|e| ControlError::Connect {
            urls: urls.clone(),
            message: e.to_string(),
        })
}

/// The server list without credentials (so that no password reaches a
/// log or an error message), and the `user:password@` of the first URL
/// that has one.
fn split_credentials(urls: &str) -> (String, Option<(String, String)>) {
    let mut creds = None;
    let plain: Vec<String> = urls
        .split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = u.split_once("://").unwrap_or(("nats", u));
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    if creds.is_none() {
                        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                        creds = Some((user.to_string(), pass.to_string()));
                    }
                    format!("{scheme}://{host}")
                }
                None => format!("{scheme}://{rest}"),
            }
        })
        .collect();
    (plain.join(","), creds)
}

/// The two buckets, created on first use.
pub(crate) async fn buckets(
    client: async_nats::Client,
) -> Result<(kv::Store, object_store::ObjectStore), ControlError> {
    let js = jetstream::new(client);
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.to_string(),
                description: "fnroute topology revisions and edge reports".to_string(),
                history: HISTORY,
                ..Default::default()
            })
            .await
            .map_err(ControlError::nats)?,
    };
    let objects = match js.get_object_store(ARTIFACTS).await {
        Ok(o) => o,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: ARTIFACTS.to_string(),
                description: Some("fnroute artifacts by SHA-256".to_string()),
                ..Default::default()
            })
            .await
            .map_err(ControlError::nats)?,
    };
    Ok((store, objects))
}

/// The object name of an artifact reference (`sha256:<hex>`).
fn object_name(reference: &str) -> String {
    reference.replacen(':', "-", 1)
}

/// Whether a topology value is an artifact reference.
fn is_reference(v: &str) -> bool {
    v.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls() {
        let (urls, creds) = split_credentials("nats://u:p@a:4222, tls://b:4223");
        assert_eq!(urls, "nats://a:4222,tls://b:4223");
        assert_eq!(creds, Some(("u".into(), "p".into())));
        let (urls, creds) = split_credentials("127.0.0.1:4222");
        assert_eq!(urls, "nats://127.0.0.1:4222");
        assert_eq!(creds, None);
        assert!(is_reference(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_reference("sha256:abc"));
        assert!(!is_reference("geo/sample.mmdb"));
    }

    #[test]
    fn only_a_wrong_revision_is_refused_for_good() {
        let fetch = ControlError::Fetch {
            name: "sha256-x".into(),
            message: "maximum consumers limit reached".into(),
        };
        assert!(fetch.is_transient());
        assert!(ControlError::Nats("timed out".into()).is_transient());
        let tampered = ControlError::Artifact {
            name: "sha256-x".into(),
            message: "tampered".into(),
        };
        assert!(!tampered.is_transient());
        assert!(!ControlError::Signature("not signed".into()).is_transient());
        assert!(!ControlError::Config("bad".into()).is_transient());
    }
}
