//! Geo lookups against the shipped sample database, fallback and reload.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fnroute::geo::{GeoDb, Location};

const DEFAULT: Location = Location {
    lat: 50.11,
    lon: 8.68,
};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geo/sample.mmdb")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (address, lat, lon, country, continent, prefix length)
fn check(db: &GeoDb, addr: &str, lat: f64, lon: f64, country: &str, continent: &str, prefix: u8) {
    let a = db.lookup(ip(addr));
    assert!(a.known, "{addr} is in the sample database");
    assert!(
        (a.location.lat - lat).abs() < 1e-9 && (a.location.lon - lon).abs() < 1e-9,
        "{addr}: {a:?}"
    );
    assert_eq!(a.country_str(), Some(country), "{addr}");
    assert_eq!(a.continent_str(), Some(continent), "{addr}");
    assert_eq!(a.prefix_len, prefix, "{addr}");
}

#[test]
fn sample_prefixes() {
    let db = GeoDb::open(&sample(), DEFAULT).unwrap();
    check(&db, "198.51.100.7", 48.86, 2.35, "FR", "EU", 24);
    check(&db, "198.51.100.255", 48.86, 2.35, "FR", "EU", 24);
    check(&db, "192.0.2.1", 42.36, -71.06, "US", "NA", 24);
    check(&db, "203.0.113.9", -6.21, 106.85, "ID", "AS", 24);
    check(&db, "2001:db8::1", 35.68, 139.69, "JP", "AS", 32);
    check(&db, "2001:db8:ffff::1", 35.68, 139.69, "JP", "AS", 32);
    // A wider and a narrower network than /24.
    let a = db.lookup(ip("198.18.200.1"));
    assert!(a.known && a.prefix_len == 16, "{a:?}");
    let a = db.lookup(ip("198.19.128.9"));
    assert!(a.known && a.prefix_len == 28, "{a:?}");
}

#[test]
fn ipv4_mapped_addresses_are_looked_up_as_ipv4() {
    let db = GeoDb::open(&sample(), DEFAULT).unwrap();
    check(&db, "::ffff:198.51.100.7", 48.86, 2.35, "FR", "EU", 24);
}

#[test]
fn unknown_addresses_fall_back_to_the_default() {
    let db = GeoDb::open(&sample(), DEFAULT).unwrap();
    for addr in ["127.0.0.1", "::1", "100.64.0.1", "fd00:6::1", "8.8.8.8"] {
        let a = db.lookup(ip(addr));
        assert!(!a.known, "{addr}");
        assert_eq!(a.location, DEFAULT, "{addr}");
        assert_eq!(a.country, None);
    }
}

#[test]
fn describe_gives_the_whole_record() {
    let db = GeoDb::open(&sample(), DEFAULT).unwrap();
    let v = db.describe(ip("192.0.2.1")).unwrap();
    assert_eq!(
        v.pointer("/city/names/en").and_then(|c| c.as_str()),
        Some("Boston")
    );
    assert!(db.describe(ip("127.0.0.1")).is_none());
}

#[test]
fn open_rejects_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mmdb");
    std::fs::write(&bad, b"not a maxmind database").unwrap();
    let err = GeoDb::open(&bad, DEFAULT).unwrap_err().to_string();
    assert!(err.contains("is not a valid MaxMind DB"), "{err}");
    // Truncated: the metadata survives but the tree does not.
    let bytes = std::fs::read(sample()).unwrap();
    let mut cut = bytes[..200].to_vec();
    cut.extend_from_slice(&bytes[bytes.len() - 600..]);
    std::fs::write(&bad, cut).unwrap();
    assert!(GeoDb::open(&bad, DEFAULT).is_err());
}

#[test]
fn reload_keeps_the_old_database_when_the_new_one_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("geo.mmdb");
    std::fs::copy(sample(), &path).unwrap();
    let db = GeoDb::open(&path, DEFAULT).unwrap();
    assert_eq!(db.generation(), 1);

    // Replace atomically with garbage, as a broken download would.
    let tmp = dir.path().join("geo.tmp");
    std::fs::write(&tmp, vec![0xAB; 4096]).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(db.reload().is_err());
    assert!(db.reload_if_changed().is_err());
    assert!(
        !db.reload_if_changed().unwrap(),
        "a rejected file is not retried until it changes"
    );
    assert_eq!(db.generation(), 1);
    check(&db, "198.51.100.7", 48.86, 2.35, "FR", "EU", 24);

    // A good file again is picked up.
    std::fs::copy(sample(), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(db.reload_if_changed().unwrap());
    assert_eq!(db.generation(), 2);
    check(&db, "203.0.113.9", -6.21, 106.85, "ID", "AS", 24);
}

#[tokio::test]
async fn watch_reloads_when_the_file_changes_and_lookups_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("geo.mmdb");
    std::fs::copy(sample(), &path).unwrap();
    let db = Arc::new(GeoDb::open(&path, DEFAULT).unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(db.clone().watch(Duration::from_millis(20), token.clone()));

    // Lookups keep answering from another thread while the file changes.
    let reader = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while db.generation() < 2 && n < 50_000_000 {
                assert!(db.lookup(ip("192.0.2.1")).known);
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tmp = dir.path().join("geo.tmp");
    // Same content in a new file: the stamp (mtime, size) is what changes.
    let bytes = std::fs::read(sample()).unwrap();
    std::fs::write(&tmp, &bytes).unwrap();
    // Make sure the stamp differs even on coarse mtime clocks.
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while db.generation() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(db.generation(), 2);
    assert!(reader.join().unwrap() > 0);
    token.cancel();
    watcher.await.unwrap();
}
