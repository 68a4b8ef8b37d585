//! The topology: one TOML file describing a fleet of edges and the functions
//! they host.
//!
//! Loading has two stages: `raw` (serde, unknown keys rejected, spans kept)
//! and `validate` (every rule checked, every problem reported with file,
//! line, column and what to fix), producing the `model` types the rest of
//! the crate reads. This module knows nothing of sockets, tokio or DNS
//! wire formats; it only reads the topology file and checks that the files
//! it names exist.

pub(crate) mod cors;
mod model;
mod raw;
pub(crate) mod reload;
mod routes;
mod validate;
mod version;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use routes::static_cycle;
pub(crate) use validate::{base_dir, is_dns_label};
pub(crate) use version::function_version;

/// The embedded default topology, relative to the crate root.
pub(crate) const DEFAULT_TOPOLOGY: &str = "edge-config/local.toml";

/// One problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) file: PathBuf,
    /// 1-based line and column; 0 when the problem has no place in the file.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `function.resize.edges`.
    pub key: String,
    pub message: String,
    /// What the operator should change.
    pub fix: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)?;
        } else {
            write!(f, ": {}: {}", self.key, self.message)?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every problem found in one topology file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        write!(
            f,
            "\n{} error{} in {}",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" },
            self.0
                .first()
                .map(|e| e.file.display().to_string())
                .unwrap_or_default()
        )
    }
}

/// Reads and validates a topology file.
pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read topology file: {e}"),
            fix: Some("pass an existing TOML file with --config".into()),
        }])
    })?;
    parse(path, &text)
}

/// Validates topology text as if it had been read from `path` (relative
/// paths inside it are resolved against `path`'s folder).
/// Like `load`, but does not require the `[mesh]` certificate files to
/// exist (for the command that creates them).
pub fn load_without_mesh_files(path: &Path) -> Result<Topology, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read topology file: {e}"),
            fix: Some("pass an existing TOML file with --config".into()),
        }])
    })?;
    validate::validate_with(path, &text, false)
}

pub fn parse(path: &Path, text: &str) -> Result<Topology, ConfigErrors> {
    validate::validate(path, text)
}
