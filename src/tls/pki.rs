//! Cluster PKI: a CA per cluster and one certificate per edge, used for
//! mutual TLS between edges.
//!
//! An edge certificate names its edge as a DNS subject alternative name
//! (plus the edge's listen IPs); the name of an authenticated peer is
//! recovered by checking which topology edge name its certificate is valid
//! for. rustls runs on `ring`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{EdgeId, MeshSettings, Topology};

/// Why cluster certificates could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Generate(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// Subject alternative names of an edge's certificate: its name, then its
/// addresses and listen IPs.
pub(crate) fn edge_cert_names(topology: &Topology, edge: EdgeId) -> Vec<String> {
    let Some(e) = topology.edges.get(edge) else {
        return Vec::new();
    };
    let mut names = vec![e.name.clone()];
    names.extend(e.addresses.iter().map(|a| a.to_string()));
    for ip in [e.quic_listen.ip(), e.dns_listen.ip(), e.admin_listen.ip()] {
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Creates a cluster CA (`ca.pem`, `ca-key.pem`) and `<edge>.pem` /
/// `<edge>-key.pem` for every edge of `topology` in `out`; returns the
/// files written. Development use: keys are written unencrypted (0600).
pub fn generate_dev(topology: &Topology, out: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let gen = |e: rcgen::Error| PkiError::Generate(e.to_string());
    std::fs::create_dir_all(out).map_err(|source| PkiError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fnroute development cluster CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(gen)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;
    let mut written = Vec::new();
    let ca_file = out.join("ca.pem");
    write(&ca_file, ca_cert.pem().as_bytes(), false)?;
    written.push(ca_file);
    let ca_key_file = out.join("ca-key.pem");
    write(&ca_key_file, ca_key.serialize_pem().as_bytes(), true)?;
    written.push(ca_key_file);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for (id, e) in topology.edges.iter().enumerate() {
        let mut params =
            rcgen::CertificateParams::new(edge_cert_names(topology, id)).map_err(gen)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, e.name.clone());
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen)?;
        let cert_file = out.join(format!("{}.pem", e.name));
        write(&cert_file, cert.pem().as_bytes(), false)?;
        written.push(cert_file);
        let key_file = out.join(format!("{}-key.pem", e.name));
        write(&key_file, key.serialize_pem().as_bytes(), true)?;
        written.push(key_file);
    }
    Ok(written)
}

fn write(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

/// The cluster material one edge uses: the CA and its own certificate.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// This edge's name (also the SNI peers use to reach it).
    pub(crate) edge_name: String,
    roots: Arc<rustls::RootCertStore>,
    identity: Arc<CertifiedKey>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// Names of every (not retired) edge of the topology, for
    /// `peer_edge`; replaced by a live reload (`set_names`).
    names: Arc<arc_swap::ArcSwap<Vec<String>>>,
}

impl Cluster {
    /// Loads the CA and `edge`'s certificate and key named by `mesh`.
    pub fn load(topology: &Topology, mesh: &MeshSettings, edge: EdgeId) -> Result<Self, PkiError> {
        let edge_name = topology
            .edges
            .get(edge)
            .map(|e| e.name.clone())
            .ok_or_else(|| PkiError::Tls(format!("no edge {edge}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(&mesh.ca)? {
            roots.add(c).map_err(|e| PkiError::Read {
                path: mesh.ca.clone(),
                message: e.to_string(),
            })?;
        }
        let cert_file = mesh.cert_file(&edge_name);
        let key_file = mesh.key_file(&edge_name);
        let chain = read_certs(&cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| PkiError::Read {
            path: key_file.clone(),
            message: e.to_string(),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| PkiError::Read {
                path: key_file,
                message: e.to_string(),
            })?;
        let identity = Arc::new(CertifiedKey::new(chain.clone(), signing));
        Ok(Self {
            edge_name,
            roots: Arc::new(roots),
            identity,
            chain,
            key: Arc::new(key),
            names: Arc::new(arc_swap::ArcSwap::from_pointee(live_names(topology))),
        })
    }

    /// Takes the edge names of a reloaded topology.
    pub(crate) fn set_names(&self, topology: &Topology) {
        self.names.store(Arc::new(live_names(topology)));
    }

    /// The client-certificate verifier of the front door: clients with a
    /// certificate must chain to the cluster CA; clients without one are
    /// accepted (as unauthenticated clients).
    pub(crate) fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))
    }

    /// A certificate resolver presenting this edge's cluster certificate
    /// to clients asking for the edge's name (SNI), and `public` to all
    /// others.
    pub(crate) fn resolver(&self, public: Arc<CertifiedKey>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(BySni {
            mesh_name: self.edge_name.clone(),
            mesh: self.identity.clone(),
            public,
        })
    }

    /// The QUIC client configuration edges use to reach each other: trust
    /// only the cluster CA, present this edge's certificate, ALPN h3.
    pub fn client_config(
        &self,
        idle: std::time::Duration,
    ) -> Result<quinn::ClientConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        if let Ok(t) = quinn::IdleTimeout::try_from(idle) {
            transport.max_idle_timeout(Some(t));
        }
        cfg.transport_config(Arc::new(transport));
        Ok(cfg)
    }

    /// The edge an authenticated connection belongs to: the chain was
    /// verified against the cluster CA during the handshake; this finds the
    /// topology edge name the end-entity certificate is valid for.
    pub(crate) fn peer_edge(&self, conn: &quinn::Connection) -> Option<String> {
        let identity = conn.peer_identity()?;
        let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
        peer_name(certs.first()?, &self.names.load())
    }
}

fn live_names(topology: &Topology) -> Vec<String> {
    topology
        .edges
        .iter()
        .filter(|e| !e.retired)
        .map(|e| e.name.clone())
        .collect()
}

/// Which of `names` the certificate is valid for (as a DNS name).
pub fn peer_name(cert: &CertificateDer<'_>, names: &[String]) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    names
        .iter()
        .find(|n| {
            ServerName::try_from(n.as_str())
                .is_ok_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
        })
        .cloned()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let err = |message: String| PkiError::Read {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

#[derive(Debug)]
struct BySni {
    mesh_name: String,
    mesh: Arc<CertifiedKey>,
    public: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .server_name()
            .is_some_and(|n| n.eq_ignore_ascii_case(&self.mesh_name))
        {
            Some(self.mesh.clone())
        } else {
            Some(self.public.clone())
        }
    }
}
