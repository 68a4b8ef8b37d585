//! Where clients and edges are: MaxMind-format database lookups and
//! great-circle distance.
//!
//! `geo` owns the database file (loading, verifying, hot reload) and knows
//! nothing of DNS, QUIC or placement. The lookup hot path does not allocate:
//! it decodes borrowed fields only, and the reader is read through
//! `arc-swap` without locks.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use maxminddb::Reader;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Mean Earth radius (IUGG), kilometres.
pub(crate) const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on Earth, degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

impl Location {
    /// Great-circle distance in kilometres (haversine formula).
    pub(crate) fn distance_km(&self, other: &Self) -> f64 {
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dla = la2 - la1;
        let dlo = (other.lon - self.lon).to_radians();
        let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
    }
}

/// What the database says about one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoAnswer {
    /// The database's coordinates, or the topology's default location.
    pub location: Location,
    /// True when the database had coordinates for the address.
    pub known: bool,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: Option<[u8; 2]>,
    /// Two-letter continent code (EU, NA, AS, …).
    pub(crate) continent: Option<[u8; 2]>,
    /// Prefix length (in the address's own family) of the database network
    /// that decided: the most specific network holding the address, with
    /// or without data.
    pub prefix_len: u8,
}

impl GeoAnswer {
    pub fn country_str(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
    pub fn continent_str(&self) -> Option<&str> {
        self.continent
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
}

/// Errors opening or reloading a database.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read.
    #[error("cannot read geo database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid MaxMind DB.
    #[error("geo database {path} is not a valid MaxMind DB: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A MaxMind DB that can be swapped while lookups go on.
pub struct GeoDb {
    path: PathBuf,
    reader: ArcSwap<Reader<Vec<u8>>>,
    default: Location,
    /// Bumped on every successful reload (answers may change).
    generation: AtomicU64,
    stamp: Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("generation", &self.generation())
            .finish()
    }
}

// Borrowed views of the GeoIP2-City / DB-IP City record: decoding them does
// not allocate (unknown keys are skipped by the decoder).
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(default)]
    location: Option<RecLocation>,
    #[serde(borrow, default)]
    country: Option<RecCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<RecCode<'a>>,
}

#[derive(Deserialize, Default)]
struct RecLocation {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Deserialize, Default)]
struct RecCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

fn code2(s: Option<&str>) -> Option<[u8; 2]> {
    let b = s?.as_bytes();
    (b.len() == 2).then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
}

impl GeoDb {
    /// Opens and verifies a database; `default` is used for unknown clients.
    pub fn open(path: &Path, default: Location) -> Result<Self, GeoError> {
        let (reader, stamp) = read_verified(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: ArcSwap::from_pointee(reader),
            default,
            generation: AtomicU64::new(1),
            stamp: Mutex::new(Some(stamp)),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Starts at 1 and grows by one with every successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Looks up an address. Never fails: anything the database does not
    /// know (or cannot decode) falls back to the default location.
    pub fn lookup(&self, ip: IpAddr) -> GeoAnswer {
        let ip = canonical(ip);
        let reader = self.reader.load();
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let mut answer = GeoAnswer {
            location: self.default,
            known: false,
            country: None,
            continent: None,
            prefix_len: full,
        };
        let Ok(result) = reader.lookup(ip) else {
            return answer;
        };
        if let Ok(net) = result.network() {
            // An IPv4 address in a database without an IPv4 subtree reports
            // an IPv6 network; clamp to the address family.
            answer.prefix_len = net.prefix().min(full);
        }
        if let Ok(Some(rec)) = result.decode::<Record<'_>>() {
            if let Some(RecLocation {
                latitude: Some(lat),
                longitude: Some(lon),
            }) = rec.location
            {
                if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
                    answer.location = Location { lat, lon };
                    answer.known = true;
                }
            }
            answer.country = rec.country.and_then(|c| code2(c.iso_code));
            answer.continent = rec.continent.and_then(|c| code2(c.code));
        }
        answer
    }

    /// A human-readable description of the database's record for `ip`
    /// (allocates; for the CLI and the admin API, not the hot path).
    pub fn describe(&self, ip: IpAddr) -> Option<serde_json::Value> {
        let reader = self.reader.load();
        let result = reader.lookup(canonical(ip)).ok()?;
        result.decode::<serde_json::Value>().ok().flatten()
    }

    /// Re-reads the file. A file that does not verify is rejected and the
    /// database in use is kept.
    pub fn reload(&self) -> Result<(), GeoError> {
        let (reader, stamp) = read_verified(&self.path)?;
        self.reader.store(Arc::new(reader));
        if let Ok(mut s) = self.stamp.lock() {
            *s = Some(stamp);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(path = %self.path.display(), generation = self.generation(), "geo database reloaded");
        Ok(())
    }

    /// Reloads when the file's modification time or size changed since the
    /// last load. Returns whether a new database is in use.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let now = stamp_of(&self.path).ok();
        let old = self.stamp.lock().ok().and_then(|s| *s);
        if now.is_none() || now == old {
            return Ok(false);
        }
        match self.reload() {
            Ok(()) => Ok(true),
            Err(e) => {
                // Remember the bad file so we do not retry (and log) every poll.
                if let Ok(mut s) = self.stamp.lock() {
                    *s = now;
                }
                Err(e)
            }
        }
    }

    /// Polls the file every `every` and reloads it when it changes, until
    /// `token` is cancelled.
    pub async fn watch(self: Arc<Self>, every: Duration, token: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.reload_if_changed() {
                tracing::error!(%error, "new geo database rejected; keeping the old one");
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are looked up as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn stamp_of(path: &Path) -> std::io::Result<FileStamp> {
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

fn read_verified(path: &Path) -> Result<(Reader<Vec<u8>>, FileStamp), GeoError> {
    let io = |source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stamp = stamp_of(path).map_err(io)?;
    let bytes = std::fs::read(path).map_err(io)?;
    let invalid = |reason: String| GeoError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let reader = Reader::from_source(bytes).map_err(|e| invalid(e.to_string()))?;
    reader.verify().map_err(|e| invalid(e.to_string()))?;
    Ok((reader, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let fra = Location {
            lat: 50.11,
            lon: 8.68,
        };
        let nyc = Location {
            lat: 40.71,
            lon: -74.01,
        };
        let d = fra.distance_km(&nyc);
        assert!((6150.0..6250.0).contains(&d), "{d}");
        assert_eq!(fra.distance_km(&fra), 0.0);
        let a = Location {
            lat: 0.0,
            lon: 179.9,
        };
        let b = Location {
            lat: 0.0,
            lon: -179.9,
        };
        assert!(a.distance_km(&b) < 25.0);
    }

    #[test]
    fn mapped_v6_is_v4() {
        let ip: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(canonical(ip).is_ipv4());
    }
}
