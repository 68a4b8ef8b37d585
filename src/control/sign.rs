//! Revision signatures: Ed25519 on ring (the one crypto stack). The
//! private key is PKCS#8 in PEM; the public key file holds one line,
//! `fnroute-ed25519 <base64 of the 32-byte key>`.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

use super::ControlError;

const PUBLIC_PREFIX: &str = "fnroute-ed25519 ";
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What is signed: the topology text behind a domain prefix (artifact
/// references in the text bind the artifacts by hash).
fn message(topology: &str) -> Vec<u8> {
    let mut m = b"fnroute-topology-v1\n".to_vec();
    m.extend_from_slice(topology.as_bytes());
    m
}

/// `fnroute control keygen --out FILE`: the private key in `FILE`
/// (mode 0600, never overwritten), the public key in `FILE.pub`.
pub(crate) fn keygen(out: &Path) -> Result<PathBuf, ControlError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| ControlError::Signature("cannot generate a key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| ControlError::Signature("cannot read the generated key".into()))?;
    let body = B64.encode(pkcs8.as_ref());
    let mut pem = format!("{PEM_BEGIN}\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| ControlError::file(out, e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| ControlError::file(out, e))?;
    let public = out.with_file_name(format!(
        "{}.pub",
        out.file_name()
            .map_or_else(|| "key".into(), |n| n.to_string_lossy())
    ));
    let line = format!(
        "{PUBLIC_PREFIX}{}\n",
        B64.encode(pair.public_key().as_ref())
    );
    std::fs::write(&public, line).map_err(|e| ControlError::file(&public, e))?;
    Ok(public)
}

/// A private signing key (from `keygen`).
pub(crate) struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub(crate) fn load(path: &Path) -> Result<Self, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|e| ControlError::file(path, e))?;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = B64
            .decode(body.trim())
            .map_err(|e| ControlError::file(path, format!("not a PEM private key: {e}")))?;
        Ed25519KeyPair::from_pkcs8(&der)
            .map(Self)
            .map_err(|e| ControlError::file(path, format!("not an Ed25519 PKCS#8 key: {e}")))
    }

    /// The signature of `topology`, base64.
    pub(crate) fn sign(&self, topology: &str) -> String {
        B64.encode(self.0.sign(&message(topology)).as_ref())
    }
}

/// The public key edges trust (`--control-trust FILE`).
#[derive(Clone)]
pub(crate) struct TrustKey(Vec<u8>);

impl TrustKey {
    pub(crate) fn load(path: &Path) -> Result<Self, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|e| ControlError::file(path, e))?;
        let b64 = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(|| {
            ControlError::file(path, "not a public key from `fnroute control keygen`")
        })?;
        let key = B64
            .decode(b64.trim())
            .map_err(|e| ControlError::file(path, e))?;
        if key.len() != 32 {
            return Err(ControlError::file(
                path,
                "an Ed25519 public key has 32 bytes",
            ));
        }
        Ok(Self(key))
    }

    /// Checks `signature` (base64) over `topology`.
    pub(crate) fn verify(
        &self,
        topology: &str,
        signature: Option<&str>,
    ) -> Result<(), ControlError> {
        let sig = signature
            .ok_or_else(|| ControlError::Signature("the revision is not signed".into()))?;
        let sig = B64
            .decode(sig)
            .map_err(|e| ControlError::Signature(format!("not base64: {e}")))?;
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&message(topology), &sig)
            .map_err(|_| ControlError::Signature("not signed by the trusted key".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_their_key_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        let a_pub = keygen(&a).unwrap();
        let b_pub = keygen(&b).unwrap();
        assert!(keygen(&a).is_err(), "never overwrites a key");
        let sig = SigningKey::load(&a).unwrap().sign("zone = \"x.\"\n");
        let trust_a = TrustKey::load(&a_pub).unwrap();
        let trust_b = TrustKey::load(&b_pub).unwrap();
        assert!(trust_a.verify("zone = \"x.\"\n", Some(&sig)).is_ok());
        assert!(trust_a.verify("zone = \"y.\"\n", Some(&sig)).is_err());
        assert!(trust_b.verify("zone = \"x.\"\n", Some(&sig)).is_err());
        assert!(trust_a.verify("zone = \"x.\"\n", None).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
