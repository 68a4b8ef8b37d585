//! The operator's side: `fnroute deploy`, `control status`, `control
//! rollback`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use toml::{Table, Value};

use super::sign::SigningKey;
use super::{
    buckets, connect, now_ms, object_name, sha256_hex, Artifact, ArtifactKind, ControlError,
    ControlOpts, EdgeReport, Revision, TOPOLOGY_KEY,
};

/// `fnroute deploy`: validates `file` as `fnroute check` does, uploads the
/// artifacts edges need, rewrites their references to content hashes,
/// signs the result and writes it as the next revision, compare-and-set on
/// the current one. Returns the new revision.
pub(crate) async fn deploy(
    o: &ControlOpts,
    file: &Path,
    key: Option<&Path>,
) -> Result<u64, ControlError> {
    crate::config::load(file).map_err(|e| ControlError::Config(e.to_string()))?;
    let key = key.map(SigningKey::load).transpose()?;
    let text = std::fs::read_to_string(file).map_err(|e| ControlError::file(file, e))?;
    let mut doc: Table = text.parse().map_err(|e| ControlError::file(file, e))?;
    let base = crate::config::base_dir(file);
    let artifacts = collect_artifacts(&mut doc, &base)?;
    absolute_paths(&mut doc, &base);
    let topology = toml::to_string(&doc).map_err(|e| ControlError::file(file, e))?;
    let (store, objects) = buckets(connect(o).await?).await?;
    let mut manifest = BTreeMap::new();
    for (reference, (kind, bytes)) in artifacts {
        let name = object_name(&reference);
        if objects.info(&name).await.is_err() {
            objects
                .put(name.as_str(), &mut bytes.as_ref())
                .await
                .map_err(|e| ControlError::Artifact {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
        }
        manifest.insert(
            reference,
            Artifact {
                kind,
                size: bytes.len() as u64,
            },
        );
    }
    let revision = Revision {
        format: 1,
        signature: key.as_ref().map(|k| k.sign(&topology)),
        topology,
        artifacts: manifest,
        deployed_at_ms: now_ms(),
        deployed_by: hostname(),
    };
    let value = Bytes::from(serde_json::to_vec(&revision).map_err(ControlError::nats)?);
    let current = store
        .entry(TOPOLOGY_KEY)
        .await
        .map_err(ControlError::nats)?;
    let written = match &current {
        Some(e) => store
            .update(TOPOLOGY_KEY, value, e.revision)
            .await
            .map_err(|e| e.to_string()),
        None => store
            .create(TOPOLOGY_KEY, value)
            .await
            .map_err(|e| e.to_string()),
    };
    match written {
        Ok(r) => Ok(r),
        Err(_) => {
            // Lost the compare-and-set: say which revision won.
            let now = store
                .entry(TOPOLOGY_KEY)
                .await
                .map_err(ControlError::nats)?
                .map_or(0, |e| e.revision);
            Err(ControlError::Conflict(now))
        }
    }
}

/// The artifacts `doc` references, read from disk and hashed; their
/// references in `doc` become `sha256:<hex>`.
fn collect_artifacts(
    doc: &mut Table,
    base: &Path,
) -> Result<BTreeMap<String, (ArtifactKind, Vec<u8>)>, ControlError> {
    let mut out = BTreeMap::new();
    if let Some(Value::String(geo)) = doc.get_mut("geo_db") {
        let path = base.join(&*geo);
        let bytes = std::fs::read(&path).map_err(|e| ControlError::file(&path, e))?;
        let reference = format!("sha256:{}", sha256_hex(&bytes));
        *geo = reference.clone();
        out.insert(reference, (ArtifactKind::Geo, bytes));
    }
    if let Some(Value::Array(functions)) = doc.get_mut("function") {
        for f in functions.iter_mut().filter_map(Value::as_table_mut) {
            if let Some(Value::String(bundle)) = f.get_mut("bundle") {
                let dir = base.join(&*bundle);
                let bytes = archive(&dir)?;
                let reference = format!("sha256:{}", sha256_hex(&bytes));
                *bundle = reference.clone();
                out.insert(reference, (ArtifactKind::Bundle, bytes));
                // A component inside the bundle travels with it.
                continue;
            }
            let component = f
                .get_mut("executor")
                .and_then(Value::as_table_mut)
                .and_then(|e| e.get_mut("component"));
            if let Some(Value::String(c)) = component {
                let path = base.join(&*c);
                let bytes = std::fs::read(&path).map_err(|e| ControlError::file(&path, e))?;
                let reference = format!("sha256:{}", sha256_hex(&bytes));
                *c = reference.clone();
                out.insert(reference, (ArtifactKind::Component, bytes));
            }
        }
    }
    Ok(out)
}

/// `dir` as a tar archive, reproducibly: entries sorted, owner 0, mode
/// and size kept, times zero; the same files give the same hash.
fn archive(dir: &Path) -> Result<Vec<u8>, ControlError> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut tar = tar::Builder::new(Vec::new());
    for rel in files {
        let path = dir.join(&rel);
        let meta = std::fs::metadata(&path).map_err(|e| ControlError::file(&path, e))?;
        let data = std::fs::read(&path).map_err(|e| ControlError::file(&path, e))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        use std::os::unix::fs::PermissionsExt;
        h.set_mode(meta.permissions().mode() & 0o777);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, &rel, data.as_slice())
            .map_err(|e| ControlError::file(&path, e))?;
    }
    tar.into_inner().map_err(|e| ControlError::file(dir, e))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ControlError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ControlError::file(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ControlError::file(dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| ControlError::file(&path, e))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    Ok(())
}

/// Paths that stay the edge's own (certificates, keys, the admin token,
/// the metering log, programs outside a bundle) made absolute, so that
/// they mean the same on an edge as next to the deployed file. Secrets
/// never travel through the control plane.
fn absolute_paths(doc: &mut Table, base: &Path) {
    let abs = |v: &mut Value| {
        if let Value::String(s) = v {
            if !super::is_reference(s) && Path::new(s.as_str()).is_relative() {
                *s = base.join(&*s).to_string_lossy().into_owned();
            }
        }
    };
    for (table, keys) in [
        ("tls", &["cert", "key"][..]),
        ("mesh", &["ca", "cert_dir"][..]),
        ("executors", &["metering_log"][..]),
    ] {
        if let Some(Value::Table(t)) = doc.get_mut(table) {
            for k in keys {
                if let Some(v) = t.get_mut(*k) {
                    abs(v);
                }
            }
        }
    }
    if let Some(v) = doc.get_mut("admin_token_file") {
        abs(v);
    }
    if let Some(Value::Array(functions)) = doc.get_mut("function") {
        for f in functions.iter_mut().filter_map(Value::as_table_mut) {
            if f.contains_key("bundle") {
                continue;
            }
            let program = f
                .get_mut("executor")
                .and_then(Value::as_table_mut)
                .and_then(|e| e.get_mut("command"))
                .and_then(Value::as_array_mut)
                .and_then(|c| c.first_mut());
            if let Some(v) = program {
                if v.as_str().is_some_and(|p| p.contains('/')) {
                    abs(v);
                }
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// What `fnroute control status` prints.
#[derive(Debug)]
pub(crate) struct Status {
    /// The current revision, and when it was deployed (Unix ms).
    pub(crate) current: Option<(u64, u64)>,
    pub(crate) edges: Vec<EdgeReport>,
}

/// The current revision and every edge's report.
pub(crate) async fn status(o: &ControlOpts) -> Result<Status, ControlError> {
    let (store, _) = buckets(connect(o).await?).await?;
    let current = match store
        .entry(TOPOLOGY_KEY)
        .await
        .map_err(ControlError::nats)?
    {
        Some(e) => {
            let r: Revision = serde_json::from_slice(&e.value).map_err(ControlError::nats)?;
            Some((e.revision, r.deployed_at_ms))
        }
        None => None,
    };
    let mut keys = store.keys().await.map_err(ControlError::nats)?;
    let mut edges = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(ControlError::nats)?;
        if !k.starts_with("edge.") {
            continue;
        }
        if let Some(v) = store.get(&k).await.map_err(ControlError::nats)? {
            if let Ok(r) = serde_json::from_slice::<EdgeReport>(&v) {
                edges.push(r);
            }
        }
    }
    edges.sort_by(|a, b| a.edge.cmp(&b.edge));
    Ok(Status { current, edges })
}

/// `fnroute control rollback REVISION`: that revision's topology (as it
/// was signed) written again as the newest, compare-and-set.
pub(crate) async fn rollback(o: &ControlOpts, revision: u64) -> Result<u64, ControlError> {
    let (store, _) = buckets(connect(o).await?).await?;
    let old = store
        .entry_for_revision(TOPOLOGY_KEY, revision)
        .await
        .map_err(ControlError::nats)?
        .filter(|e| e.key == TOPOLOGY_KEY && !e.value.is_empty())
        .ok_or(ControlError::NoRevision(revision))?;
    let current = store
        .entry(TOPOLOGY_KEY)
        .await
        .map_err(ControlError::nats)?
        .ok_or(ControlError::Empty)?;
    store
        .update(TOPOLOGY_KEY, old.value, current.revision)
        .await
        .map_err(|_| ControlError::Conflict(current.revision))
}
