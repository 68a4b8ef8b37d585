//! TLS for every listener (HTTP/3 front door, DNS over QUIC, the mesh):
//! the topology's PEM certificate and key, or a self-signed development
//! certificate generated once into the state directory and reused on later
//! starts; and (`pki`) the cluster CA that authenticates edges to each
//! other. A leaf: it depends on `config` only.
//!
//! rustls always runs on the `ring` provider (never aws-lc-rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Topology;

pub mod pki;

/// Certificate or key missing, unreadable or invalid (the message names
/// the file and what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TlsError(String);

impl TlsError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// File name of the generated development certificate in `state_dir`.
pub(crate) const DEV_CERT: &str = "dev-cert.pem";
/// File name of the generated development key in `state_dir`.
pub(crate) const DEV_KEY: &str = "dev-key.pem";

/// Where the certificate and key of a topology live: the configured files,
/// or the development pair in the state directory (generated if missing).
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The certificate files for `topology`, generating the development pair
/// when no `[tls]` is configured and none exists yet.
pub(crate) fn cert_files(topology: &Topology) -> Result<CertFiles, TlsError> {
    if let Some(tls) = &topology.tls {
        return Ok(CertFiles {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        });
    }
    let cert = topology.state_dir.join(DEV_CERT);
    let key = topology.state_dir.join(DEV_KEY);
    dev_pair(topology, &cert, &key)?;
    Ok(CertFiles { cert, key })
}

/// Subject alternative names of the development certificate: loopback
/// names, every edge's addresses and listen IPs, `*.<zone>` and each
/// function's `<name>.<zone>`.
pub(crate) fn dev_cert_names(topology: &Topology) -> Vec<String> {
    let zone = topology.zone.trim_end_matches('.');
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !zone.is_empty() {
        names.push(zone.to_string());
        names.push(format!("*.{zone}"));
        for f in &topology.functions {
            names.push(format!("{}.{zone}", f.name));
        }
    }
    for e in &topology.edges {
        names.extend(e.addresses.iter().map(|a| a.to_string()));
        let doq = e.doq_listen.map(|a| a.ip());
        for ip in [Some(e.quic_listen.ip()), Some(e.dns_listen.ip()), doq]
            .into_iter()
            .flatten()
        {
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The rustls server configuration (TLS 1.3, ALPN h3; early data allowed
/// at the TLS level when `enable_0rtt`, gated per function above it).
/// With a `[mesh]`, mutual TLS when the topology has a `[mesh]`:
/// client certificates are optional and, when given, must chain to the
/// cluster CA; peers asking for this edge's name get its cluster
/// certificate.
/// The certificate chain and private key of `files` (at least one
/// certificate).
fn load_pair(
    files: &CertFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("reading {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "no certificate in {}",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("reading {}: {e}", files.key.display())))?;
    Ok((certs, key))
}

pub(crate) fn server_config_with(
    files: &CertFiles,
    enable_0rtt: bool,
    cluster: Option<&crate::tls::pki::Cluster>,
) -> Result<rustls::ServerConfig, TlsError> {
    let (certs, key) = load_pair(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?;
    let mut tls = match cluster {
        None => builder
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?,
        Some(cluster) => {
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError(format!("{}: {e}", files.key.display())))?;
            let public = Arc::new(rustls::sign::CertifiedKey::new(certs, signing));
            let verifier = cluster
                .client_verifier()
                .map_err(|e| TlsError(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cluster.resolver(public))
        }
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // QUIC allows only 0 or u32::MAX here.
    tls.max_early_data_size = if enable_0rtt { u32::MAX } else { 0 };
    Ok(tls)
}

/// The rustls configuration of the HTTPS-over-TCP front door: the same
/// certificate as the QUIC listener, ALPN `h2` then `http/1.1`, TLS 1.3
/// and 1.2 (TCP clients still include TLS 1.2-only ones), no client
/// certificates (the mesh stays on QUIC) and no early data.
pub(crate) fn web_server_config(files: &CertFiles) -> Result<rustls::ServerConfig, TlsError> {
    let (certs, key) = load_pair(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// The rustls configuration of DNS over QUIC (RFC 9250): the same
/// certificate as the front door, TLS 1.3, ALPN `doq`, no client
/// certificates and no early data.
pub(crate) fn doq_server_config(files: &CertFiles) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = server_config_with(files, false, None)?;
    tls.alpn_protocols = vec![b"doq".to_vec()];
    Ok(tls)
}

/// How long a process waits for another one generating the pair, and the
/// age after which a lock is taken to be left by a crashed process.
const DEV_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reuses the development pair, or generates it. Several edge processes
/// may share one state directory and start at once: an exclusive lock file
/// (`create_new`) makes exactly one generate while the others wait, so no
/// process can end up with one process's certificate and another's key.
fn dev_pair(topology: &Topology, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let io = |what: &str, e: std::io::Error| TlsError(format!("{what}: {e}"));
    std::fs::create_dir_all(&topology.state_dir).map_err(|e| {
        io(
            &format!("creating state directory {}", topology.state_dir.display()),
            e,
        )
    })?;
    let lock = topology.state_dir.join("dev-cert.lock");
    let started = std::time::Instant::now();
    loop {
        if cert.is_file() && key.is_file() && !lock.exists() {
            tracing::info!(cert = %cert.display(), "reusing development certificate");
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let made = if cert.is_file() && key.is_file() {
                    Ok(())
                } else {
                    generate_dev_cert(topology, cert, key)
                };
                let _ = std::fs::remove_file(&lock);
                made?;
                tracing::info!(cert = %cert.display(), "generated development certificate (trust it with `fnroute invoke --ca`)");
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > DEV_LOCK_WAIT);
                if stale {
                    tracing::warn!(lock = %lock.display(), "removing a stale development certificate lock");
                    let _ = std::fs::remove_file(&lock);
                } else if started.elapsed() > DEV_LOCK_WAIT * 2 {
                    return Err(TlsError(format!(
                        "waited too long for {} (another process generating the development certificate); remove it if no fnroute is starting",
                        lock.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(io(&format!("creating {}", lock.display()), e)),
        }
    }
}

fn generate_dev_cert(topology: &Topology, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(format!("development certificate: {e}"));
    std::fs::create_dir_all(&topology.state_dir).map_err(|e| {
        TlsError(format!(
            "creating state directory {}: {e}",
            topology.state_dir.display()
        ))
    })?;
    let mut params =
        rcgen::CertificateParams::new(dev_cert_names(topology)).map_err(|e| err(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fnroute development certificate");
    let pair = rcgen::KeyPair::generate().map_err(|e| err(&e))?;
    let c = params.self_signed(&pair).map_err(|e| err(&e))?;
    // Temporary files renamed into place: never a half-written file.
    let (key_tmp, cert_tmp) = (
        key.with_extension("pem.tmp"),
        cert.with_extension("pem.tmp"),
    );
    write_private(&key_tmp, pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_tmp, c.pem())
        .map_err(|e| TlsError(format!("writing {}: {e}", cert_tmp.display())))?;
    for (from, to) in [(&key_tmp, key), (&cert_tmp, cert)] {
        std::fs::rename(from, to).map_err(|e| {
            TlsError(format!(
                "renaming {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })?;
    }
    Ok(())
}

/// Writes the key readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError(format!("writing {}: {e}", path.display())))?;
    f.write_all(data)
        .map_err(|e| TlsError(format!("writing {}: {e}", path.display())))
}
