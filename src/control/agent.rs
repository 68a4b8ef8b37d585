//! The edge's side: take the topology from the control plane, verify it
//! (signature, artifact hashes, validation), apply it through the
//! live-reload path, report in `edge.<name>`; keep the last good topology
//! and its artifacts under the state directory and serve from them when
//! the control plane is away (fail-static).
//!
//! Files, under `<state-dir>/control/`: `current.toml` (the topology this
//! edge serves, with local paths), `applied.json` (its revision),
//! `geo.mmdb` (the geo database, at a path that never changes so that a
//! new one is a live reload), `artifacts/sha256-<hex>` (verified
//! artifacts; a bundle is unpacked in `sha256-<hex>.d/`), and
//! `incoming/` (downloads in progress: nothing there is ever used).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, object_store};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use toml::{Table, Value};
use tracing::Instrument;

use super::sign::TrustKey;
use super::{
    buckets, connect, is_reference, now_ms, object_name, sha256_hex, ArtifactKind, ControlError,
    ControlOpts, EdgeReport, Refusal, Revision, ARTIFACTS, TOPOLOGY_KEY,
};
use crate::config::reload::Reload;

/// Pause between attempts to reach the control plane.
const RETRY: Duration = Duration::from_secs(1);

/// One edge's control-plane agent.
pub(crate) struct Agent {
    opts: ControlOpts,
    node: String,
    state_dir: PathBuf,
    trust: Option<TrustKey>,
}

impl Agent {
    /// An agent for edge `node`, its state in `state_dir`, trusting
    /// revisions signed by the key in `trust` (all, unsigned ones too,
    /// without one).
    pub(crate) fn new(
        opts: ControlOpts,
        node: String,
        state_dir: PathBuf,
        trust: Option<&Path>,
    ) -> Result<Self, ControlError> {
        let trust = trust.map(TrustKey::load).transpose()?;
        let state_dir =
            std::path::absolute(&state_dir).map_err(|e| ControlError::file(&state_dir, e))?;
        for d in ["artifacts", "incoming"] {
            let p = state_dir.join("control").join(d);
            std::fs::create_dir_all(&p).map_err(|e| ControlError::file(&p, e))?;
        }
        Ok(Self {
            opts,
            node,
            state_dir,
            trust,
        })
    }

    /// The control plane's buckets, and the artifacts' chunk stream.
    async fn connect(&self) -> Result<(kv::Store, Artifacts), ControlError> {
        let client = connect(&self.opts).await?;
        let (store, objects) = buckets(client.clone()).await?;
        let chunks = async_nats::jetstream::new(client)
            .get_stream(format!("OBJ_{ARTIFACTS}"))
            .await
            .map_err(ControlError::nats)?;
        Ok((store, Artifacts { objects, chunks }))
    }

    fn dir(&self) -> PathBuf {
        self.state_dir.join("control")
    }

    /// The topology file this edge serves.
    pub(crate) fn current(&self) -> PathBuf {
        self.dir().join("current.toml")
    }

    /// The last good revision kept here, if any.
    pub(crate) fn last_good(&self) -> Option<u64> {
        if !self.current().is_file() {
            return None;
        }
        let text = std::fs::read_to_string(self.dir().join("applied.json")).ok()?;
        serde_json::from_str::<EdgeReport>(&text).ok()?.revision
    }

    /// Waits for the control plane and a revision this edge accepts, and
    /// makes it the current topology; returns its revision.
    pub(crate) async fn first(&self, token: &CancellationToken) -> Result<u64, ControlError> {
        loop {
            match self.try_first().await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!(error = %e, "no topology from the control plane yet; retrying")
                }
            }
            tokio::select! {
                () = token.cancelled() => return Err(ControlError::Empty),
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn try_first(&self) -> Result<u64, ControlError> {
        let (store, objects) = self.connect().await?;
        let entry = store
            .entry(TOPOLOGY_KEY)
            .await
            .map_err(ControlError::nats)?
            .ok_or(ControlError::Empty)?;
        match self.install(&objects, &entry.value).await {
            Ok(()) => {
                self.applied(&store, entry.revision).await;
                Ok(entry.revision)
            }
            Err(e) => {
                if !e.is_transient() {
                    self.refused(&store, entry.revision, &e).await;
                }
                Err(e)
            }
        }
    }

    /// Applies every newer revision through `reloader`, for as long as
    /// the edge runs; after losing the control plane, keeps serving and
    /// catches up when it returns.
    pub(crate) async fn run<R: Reload + ?Sized>(
        self,
        reloader: Arc<R>,
        mut applied: u64,
        token: CancellationToken,
    ) {
        crate::metrics::control_revision(&self.node, applied);
        let mut failures = 0u32;
        loop {
            let before = applied;
            tokio::select! {
                () = token.cancelled() => return,
                r = self.watch(reloader.as_ref(), &mut applied) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "serving revision {applied}; trying the control plane again");
                    }
                }
            }
            failures = if applied > before {
                0
            } else {
                failures.saturating_add(1)
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(backoff(failures)) => {}
            }
        }
    }

    async fn watch<R: Reload + ?Sized>(
        &self,
        reloader: &R,
        applied: &mut u64,
    ) -> Result<(), ControlError> {
        let (store, objects) = self.connect().await?;
        self.applied(&store, *applied).await;
        let mut updates = store
            .watch_with_history(TOPOLOGY_KEY)
            .await
            .map_err(ControlError::nats)?;
        while let Some(entry) = updates.next().await {
            let entry = entry.map_err(ControlError::nats)?;
            if entry.revision <= *applied || entry.operation != kv::Operation::Put {
                continue;
            }
            let span = tracing::info_span!("control", edge = %self.node, revision = entry.revision);
            let applying = self
                .apply(&objects, &entry.value, reloader)
                .instrument(span);
            match applying.await {
                Ok(()) => {
                    tracing::info!(revision = entry.revision, "revision applied");
                    *applied = entry.revision;
                    crate::metrics::control_revision(&self.node, entry.revision);
                    self.applied(&store, entry.revision).await;
                }
                // Not the revision's fault (an artifact download failed,
                // the server is busy): the watch starts again after a
                // pause and the revision is tried again.
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::error!(revision = entry.revision, error = %e, "revision refused; serving the previous one");
                    crate::metrics::control_refused(&self.node);
                    self.refused(&store, entry.revision, &e).await;
                }
            }
        }
        Err(ControlError::Nats("the watch ended".into()))
    }

    /// Verifies, fetches and installs `value` as the current topology,
    /// then applies it live; on a refusal the previous files come back.
    async fn apply<R: Reload + ?Sized>(
        &self,
        objects: &Artifacts,
        value: &[u8],
        reloader: &R,
    ) -> Result<(), ControlError> {
        let current = self.current();
        let geo = self.dir().join("geo.mmdb");
        let old_text = std::fs::read(&current).ok();
        let old_geo = self.dir().join("geo.previous");
        if geo.is_file() {
            std::fs::copy(&geo, &old_geo).map_err(|e| ControlError::file(&old_geo, e))?;
        }
        self.install(objects, value).await?;
        let report = reloader.reload().await;
        if report.errors.is_empty() {
            return Ok(());
        }
        if let Some(t) = old_text {
            let _ = write_atomic(&current, &t);
        }
        if old_geo.is_file() {
            let _ = std::fs::rename(&old_geo, &geo);
        }
        Err(ControlError::Config(report.errors.join("; ")))
    }

    /// Verifies `value` (signature, artifact hashes) and writes its
    /// topology, validated as `fnroute check` validates a file, as the
    /// current one (with the geo database in its fixed place).
    async fn install(&self, objects: &Artifacts, value: &[u8]) -> Result<(), ControlError> {
        let rev: Revision = serde_json::from_slice(value)
            .map_err(|e| ControlError::Config(format!("not a revision: {e}")))?;
        if let Some(trust) = &self.trust {
            trust.verify(&rev.topology, rev.signature.as_deref())?;
        }
        let mut doc: Table = rev
            .topology
            .parse()
            .map_err(|e| ControlError::Config(format!("topology: {e}")))?;
        let geo_artifact = match doc.get("geo_db").and_then(Value::as_str) {
            Some(r) if is_reference(r) => Some(self.fetch(objects, r, ArtifactKind::Geo).await?),
            _ => None,
        };
        let mut bundles = Vec::new();
        if let Some(Value::Array(functions)) = doc.get("function") {
            for r in functions
                .iter()
                .filter_map(|f| f.get("bundle").and_then(Value::as_str))
                .filter(|r| is_reference(r))
            {
                bundles.push((
                    r.to_string(),
                    self.fetch(objects, r, ArtifactKind::Bundle).await?,
                ));
            }
        }
        if let Some(Value::Array(functions)) = doc.get("function") {
            for r in functions
                .iter()
                .filter(|f| f.get("bundle").is_none())
                .filter_map(|f| f.get("executor")?.get("component")?.as_str())
                .filter(|r| is_reference(r))
            {
                bundles.push((
                    r.to_string(),
                    self.fetch(objects, r, ArtifactKind::Component).await?,
                ));
            }
        }
        self.localise(&mut doc, &bundles);
        // Validated with the artifact itself as the geo database, then
        // installed with the geo database in its fixed place.
        if let Some(g) = &geo_artifact {
            doc.insert(
                "geo_db".into(),
                Value::String(g.to_string_lossy().into_owned()),
            );
        }
        let candidate = self.dir().join("candidate.toml");
        let text = toml::to_string(&doc).map_err(|e| ControlError::Config(e.to_string()))?;
        write_atomic(&candidate, text.as_bytes())?;
        crate::config::load(&candidate).map_err(|e| ControlError::Config(e.to_string()))?;
        let geo = self.dir().join("geo.mmdb");
        if let Some(g) = &geo_artifact {
            let bytes = std::fs::read(g).map_err(|e| ControlError::file(g, e))?;
            write_atomic(&geo, &bytes)?;
            doc.insert(
                "geo_db".into(),
                Value::String(geo.to_string_lossy().into_owned()),
            );
        }
        let text = toml::to_string(&doc).map_err(|e| ControlError::Config(e.to_string()))?;
        write_atomic(&self.current(), text.as_bytes())
    }

    /// The edge's own settings in `doc`: its state directory and the
    /// local paths of the artifacts (bundles and components).
    fn localise(&self, doc: &mut Table, artifacts: &[(String, PathBuf)]) {
        doc.insert(
            "state_dir".into(),
            Value::String(self.state_dir.to_string_lossy().into_owned()),
        );
        let local = |v: &mut Value| {
            if let Value::String(r) = v {
                if let Some((_, path)) = artifacts.iter().find(|(a, _)| a == r) {
                    *r = path.to_string_lossy().into_owned();
                }
            }
        };
        if let Some(Value::Array(functions)) = doc.get_mut("function") {
            for f in functions.iter_mut().filter_map(Value::as_table_mut) {
                if let Some(b) = f.get_mut("bundle") {
                    local(b);
                }
                let component = f
                    .get_mut("executor")
                    .and_then(Value::as_table_mut)
                    .and_then(|e| e.get_mut("component"));
                if let Some(c) = component {
                    local(c);
                }
            }
        }
    }

    /// The local path of artifact `reference`: downloaded into
    /// `incoming/`, its SHA-256 checked, then moved into `artifacts/`
    /// (a bundle unpacked first). Artifacts already there are reused.
    async fn fetch(
        &self,
        objects: &Artifacts,
        reference: &str,
        kind: ArtifactKind,
    ) -> Result<PathBuf, ControlError> {
        let name = object_name(reference);
        let done = match kind {
            ArtifactKind::Geo | ArtifactKind::Component => self.dir().join("artifacts").join(&name),
            ArtifactKind::Bundle => self.dir().join("artifacts").join(format!("{name}.d")),
        };
        if done.exists() {
            return Ok(done);
        }
        let fetch_err = |message: String| ControlError::Fetch {
            name: name.clone(),
            message,
        };
        let bytes = objects.download(&name).await.map_err(fetch_err)?;
        let got = format!("sha256:{}", sha256_hex(&bytes));
        if got != reference {
            return Err(ControlError::Artifact {
                name: name.clone(),
                message: format!("its content hashes to {got}: tampered or corrupt, not used"),
            });
        }
        let incoming = self
            .dir()
            .join("incoming")
            .join(format!("{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&incoming);
        let _ = std::fs::remove_file(&incoming);
        match kind {
            ArtifactKind::Geo | ArtifactKind::Component => {
                std::fs::write(&incoming, &bytes).map_err(|e| ControlError::file(&incoming, e))?
            }
            ArtifactKind::Bundle => tar::Archive::new(bytes.as_slice())
                .unpack(&incoming)
                .map_err(|e| ControlError::file(&incoming, e))?,
        }
        std::fs::rename(&incoming, &done).map_err(|e| ControlError::file(&done, e))?;
        Ok(done)
    }

    async fn applied(&self, store: &kv::Store, revision: u64) {
        let report = EdgeReport {
            edge: self.node.clone(),
            revision: Some(revision),
            since_ms: now_ms(),
            refused: self
                .read_report()
                .and_then(|r| r.refused)
                .filter(|r| r.revision > revision),
        };
        self.write_report(store, &report).await;
    }

    async fn refused(&self, store: &kv::Store, revision: u64, why: &ControlError) {
        let mut report = self.read_report().unwrap_or_else(|| EdgeReport {
            edge: self.node.clone(),
            ..EdgeReport::default()
        });
        report.refused = Some(Refusal {
            revision,
            why: why.to_string(),
            at_ms: now_ms(),
        });
        self.write_report(store, &report).await;
    }

    fn read_report(&self) -> Option<EdgeReport> {
        let text = std::fs::read_to_string(self.dir().join("applied.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Kept in the state directory (what `last_good` reads) and put in
    /// `edge.<name>` (best effort: the control plane may be away).
    async fn write_report(&self, store: &kv::Store, report: &EdgeReport) {
        let Ok(json) = serde_json::to_vec(report) else {
            return;
        };
        if let Err(e) = write_atomic(&self.dir().join("applied.json"), &json) {
            tracing::warn!(error = %e, "cannot keep the applied revision");
        }
        let key = format!("edge.{}", self.node);
        if let Err(e) = store.put(key, json.into()).await {
            tracing::warn!(error = %e, "cannot report to the control plane");
        }
    }
}

/// The artifact store, read without consumers.
struct Artifacts {
    objects: object_store::ObjectStore,
    /// The object store's stream (`OBJ_fnroute-artifacts`).
    chunks: async_nats::jetstream::stream::Stream,
}

impl Artifacts {
    /// Object `name`'s bytes, chunk by chunk with direct gets: unlike
    /// `ObjectStore::get`, which creates a consumer per download that the
    /// server keeps for 30 s (and nats-server caps a stream at 1,000
    /// consumers, so a fleet could fetch only ~1,000 artifacts per 30 s),
    /// this leaves nothing behind on the server.
    async fn download(&self, name: &str) -> Result<Vec<u8>, String> {
        let info = self.objects.info(name).await.map_err(|e| e.to_string())?;
        let subject = format!("$O.{ARTIFACTS}.C.{}", info.nuid);
        let mut bytes = Vec::with_capacity(info.size);
        let mut next = None;
        for _ in 0..info.chunks {
            let m = self
                .chunks
                .direct_get_next_for_subject(subject.as_str(), next)
                .await
                .map_err(|e| e.to_string())?;
            bytes.extend_from_slice(&m.payload);
            next = Some(m.sequence + 1);
        }
        if bytes.len() != info.size {
            return Err(format!("{} of {} bytes arrived", bytes.len(), info.size));
        }
        Ok(bytes)
    }
}

/// The pause before trying the control plane again after `failures`
/// failures in a row: 1 s doubling to 30 s, plus up to half of it at
/// random so that a fleet does not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = RETRY
        .saturating_mul(1u32 << failures.min(5))
        .min(Duration::from_secs(30));
    base + base.mul_f64(rand::random::<f64>() / 2.0)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ControlError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ControlError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ControlError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        for (failures, base) in [(0, 1), (1, 2), (3, 8), (5, 30), (40, 30)] {
            let d = backoff(failures);
            let base = Duration::from_secs(base);
            assert!(d >= base && d <= base + base / 2, "{failures}: {d:?}");
        }
    }
}
