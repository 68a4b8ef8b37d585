//! Test topologies, edited as TOML text and validated exactly as
//! `fnroute serve` validates a file (`fnroute::config::parse`), never by
//! changing a validated `Topology` afterwards. Shared with the benches
//! (`#[path]`), hence no dependency on the rest of the test crate.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fnroute::config::Topology;
use toml::{Table, Value};

/// A topology file's text, parsed as TOML, to be edited and then validated.
pub(crate) struct TopoEdit {
    /// Where the file is: relative paths in it are resolved from here.
    path: PathBuf,
    doc: Table,
}

impl TopoEdit {
    /// The file at `path` (relative to the repository root when relative).
    pub(crate) fn open(path: impl AsRef<Path>) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::from_text(&path, &text)
    }

    /// `text` as if it were the file at `path`.
    pub(crate) fn from_text(path: &Path, text: &str) -> Self {
        let doc = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self {
            path: path.to_path_buf(),
            doc,
        }
    }

    /// Sets a key by its dotted path from the top (`"dns.udp_sockets"`),
    /// creating tables on the way.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut t = &mut self.doc;
        for p in parts {
            t = t
                .entry(p)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {p} is not a table"));
        }
        t.insert(last.to_string(), value.into());
        self
    }

    /// Whether the top level has `key` (e.g. a `[mesh]` table).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.doc.contains_key(key)
    }

    /// Edits every `[[edge]]` table.
    pub(crate) fn edges(&mut self, mut f: impl FnMut(usize, &mut Table)) -> &mut Self {
        let edges = self
            .doc
            .get_mut("edge")
            .and_then(Value::as_array_mut)
            .expect("[[edge]] tables");
        for (i, e) in edges.iter_mut().enumerate() {
            f(i, e.as_table_mut().expect("an edge table"));
        }
        self
    }

    /// Edits the `[[edge]]` named `name`.
    pub(crate) fn edge(&mut self, name: &str, mut f: impl FnMut(&mut Table)) -> &mut Self {
        let mut found = false;
        self.edges(|_, e| {
            if e.get("name").and_then(Value::as_str) == Some(name) {
                found = true;
                f(e);
            }
        });
        assert!(found, "no edge {name:?}");
        self
    }

    /// Every listener of every edge on its own address with these ports
    /// (0: the kernel picks one when it binds); `tcp_listen`, where there
    /// is one, shares the QUIC port number as the shipped files do.
    pub(crate) fn ports(&mut self, dns: u16, quic: u16, admin: u16) -> &mut Self {
        self.edges(|_, e| {
            for (key, port) in [
                ("dns_listen", dns),
                ("quic_listen", quic),
                ("tcp_listen", quic),
                ("admin_listen", admin),
            ] {
                if let Some(Value::String(addr)) = e.get_mut(key) {
                    let ip = addr.rsplit_once(':').map_or(addr.as_str(), |(ip, _)| ip);
                    *addr = format!("{ip}:{port}");
                }
            }
        })
    }

    /// Appends TOML text (e.g. more `[[function]]` tables).
    pub(crate) fn append(&mut self, text: &str) -> &mut Self {
        let mut full = self.text();
        full.push('\n');
        full.push_str(text);
        *self = Self::from_text(&self.path, &full);
        self
    }

    /// The edited text.
    pub(crate) fn text(&self) -> String {
        toml::to_string(&self.doc).expect("a TOML table serialises")
    }

    /// Validated as `fnroute serve` would validate the file.
    pub(crate) fn load(&self) -> Topology {
        fnroute::config::parse(&self.path, &self.text()).unwrap_or_else(|e| panic!("{e}"))
    }
}
