//! The response cache under real tokio: hit, miss, expiry, vary,
//! coalescing, stale-while-revalidate, stale-if-error, purge, byte bound,
//! config-reload invalidation and the function-side directives.
//!
//! Most tests run on a paused clock (`start_paused`): the cache decides
//! freshness on tokio's clock, so advancing it moves entries through their
//! windows deterministically. The coalescing test also runs once on a
//! multi-threaded runtime with real time.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnroute::cache::{Cache, CacheKey, CacheStatus, Cacheable, CacheableError, Directive, Fetched};
use fnroute::config::{self, CachePolicy, Function};
use tokio::time::{advance, sleep};

/// A response with an optional `cache-control` of its own.
#[derive(Debug, Clone, PartialEq)]
struct Resp {
    body: Bytes,
    cache_control: Option<&'static str>,
}

impl Cacheable for Resp {
    fn weight(&self) -> u32 {
        u32::try_from(self.body.len()).unwrap()
    }

    fn directive(&self) -> Directive {
        self.cache_control.map(Directive::parse).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Fail {
    message: String,
    /// The function's own answer (may be negative-cached), not a transient
    /// failure.
    deterministic: bool,
}

impl CacheableError for Fail {
    fn negative_cacheable(&self) -> bool {
        self.deterministic
    }
}

type TestCache = Cache<Resp, Fail>;

const MIB: u64 = 1024 * 1024;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn policy(ttl: u64, swr: u64, sie: u64) -> CachePolicy {
    CachePolicy {
        ttl: secs(ttl),
        stale_while_revalidate: secs(swr),
        stale_if_error: secs(sie),
        vary: Vec::new(),
        negative_ttl: None,
    }
}

fn key(function: &str, payload: &str) -> CacheKey {
    CacheKey::new(function, 1, payload.as_bytes(), [])
}

/// A function that counts its runs and answers `"<tag><n>"` (n = run
/// number, from 1), after `delay`.
#[derive(Clone)]
struct Counted {
    runs: Arc<AtomicUsize>,
    delay: Duration,
}

impl Counted {
    fn new(delay: Duration) -> Self {
        Self {
            runs: Arc::new(AtomicUsize::new(0)),
            delay,
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn ok(
        &self,
        tag: &'static str,
        cache_control: Option<&'static str>,
    ) -> impl FnOnce()
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, Fail>> + Send>>
           + Send
           + 'static {
        let runs = Arc::clone(&self.runs);
        let delay = self.delay;
        move || {
            Box::pin(async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                sleep(delay).await;
                Ok(Resp {
                    body: Bytes::from(format!("{tag}{n}")),
                    cache_control,
                })
            })
        }
    }

    fn fail(
        &self,
        deterministic: bool,
    ) -> impl FnOnce()
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, Fail>> + Send>>
           + Send
           + 'static {
        let runs = Arc::clone(&self.runs);
        let delay = self.delay;
        move || {
            Box::pin(async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                sleep(delay).await;
                Err(Fail {
                    message: format!("failure {n}"),
                    deterministic,
                })
            })
        }
    }
}

fn body(f: &Fetched<Resp, Fail>) -> String {
    match &f.result {
        Ok(r) => String::from_utf8_lossy(&r.body).into_owned(),
        Err(e) => format!("error: {}", e.message),
    }
}

#[tokio::test(start_paused = true)]
async fn miss_then_hit_with_growing_age() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(30, 0, 0);

    let first = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (first.status, body(&first)),
        (CacheStatus::Miss, "v1".into())
    );
    assert_eq!(first.age, Duration::ZERO);

    advance(secs(7)).await;
    let second = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (second.status, body(&second)),
        (CacheStatus::Hit, "v1".into())
    );
    assert_eq!(second.age, secs(7));
    assert_eq!(f.runs(), 1, "a hit must not run the function");

    // Another payload is another key.
    let other = cache.fetch(key("f", "b"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (other.status, body(&other)),
        (CacheStatus::Miss, "v2".into())
    );

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_their_ttl() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(10, 0, 0);

    cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    advance(Duration::from_millis(9_999)).await;
    let hit = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!(hit.status, CacheStatus::Hit);

    advance(Duration::from_millis(1)).await;
    let expired = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (expired.status, body(&expired)),
        (CacheStatus::Miss, "v2".into())
    );
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn functions_without_a_policy_bypass_the_cache() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    for n in 1..=3 {
        let r = cache.fetch(key("f", "a"), None, f.ok("v", None)).await;
        assert_eq!((r.status, body(&r)), (CacheStatus::Bypass, format!("v{n}")));
    }
    assert_eq!(cache.stats().bypass, 3);
}

const TOPOLOGY: &str = r#"
zone = "fn.test."
geo_db = "geo/sample.mmdb"
default_location = { lat = 0.0, lon = 0.0 }

[[edge]]
name = "a"
location = { lat = 0.0, lon = 0.0 }
addresses = ["127.0.0.1"]
dns_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"

[[function]]
name = "greet"
executor = { kind = "command", command = ["cat"] }
cache = { ttl_s = 30, vary = ["Accept-Language", "x-tenant"] }
"#;

fn function(text: &str) -> Function {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-test.toml");
    let topology = config::parse(&path, text).unwrap();
    topology.functions.into_iter().next().unwrap()
}

#[tokio::test(start_paused = true)]
async fn vary_headers_split_entries() {
    let cache = TestCache::new(16 * MIB);
    let greet = function(TOPOLOGY);
    let p = greet.cache.clone().unwrap();
    assert_eq!(
        p.vary,
        ["accept-language", "x-tenant"],
        "names are lower-cased"
    );
    let f = Counted::new(Duration::ZERO);
    let key_for = |lang: Option<&'static str>, tenant: Option<&'static str>| {
        CacheKey::for_request(&greet, b"hi", |name| match name {
            "accept-language" => lang,
            "x-tenant" => tenant,
            other => panic!("asked for header {other:?}, which is not in vary"),
        })
    };

    let cases = [
        (Some("en"), Some("t1"), CacheStatus::Miss, "v1"),
        (Some("fr"), Some("t1"), CacheStatus::Miss, "v2"),
        (Some("en"), Some("t1"), CacheStatus::Hit, "v1"),
        (Some("en"), Some("t2"), CacheStatus::Miss, "v3"),
        (Some("en"), None, CacheStatus::Miss, "v4"),
        (Some(" en "), None, CacheStatus::Hit, "v4"),
        (Some("fr"), Some("t1"), CacheStatus::Hit, "v2"),
    ];
    for (lang, tenant, status, expected) in cases {
        let r = cache
            .fetch(key_for(lang, tenant), Some(&p), f.ok("v", None))
            .await;
        assert_eq!(
            (r.status, body(&r).as_str()),
            (status, expected),
            "{lang:?} {tenant:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_changed_definition_is_another_key() {
    let cache = TestCache::new(16 * MIB);
    let old = function(TOPOLOGY);
    let new = function(&TOPOLOGY.replace("command = [\"cat\"]", "command = [\"cat\", \"-u\"]"));
    let same = function(TOPOLOGY);
    let p = old.cache.clone().unwrap();
    let f = Counted::new(Duration::ZERO);
    let key_of = |func: &Function| CacheKey::for_request(func, b"x", |_| Some("en"));
    let a = cache.fetch(key_of(&old), Some(&p), f.ok("v", None)).await;
    let b = cache.fetch(key_of(&same), Some(&p), f.ok("v", None)).await;
    let c = cache.fetch(key_of(&new), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        [a.status, b.status, c.status],
        [CacheStatus::Miss, CacheStatus::Hit, CacheStatus::Miss]
    );
    assert_eq!(body(&c), "v2", "the reloaded definition ran again");
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_misses_run_once() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(1));
    let p = policy(30, 0, 0);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, run, p) = (cache.clone(), f.ok("v", None), p.clone());
        tasks.push(tokio::spawn(async move {
            cache.fetch(key("f", "same"), Some(&p), run).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(body(&r), "v1");
        statuses.push(r.status);
    }
    assert_eq!(
        f.runs(),
        1,
        "exactly one execution for 50 identical requests"
    );
    let misses = statuses.iter().filter(|s| **s == CacheStatus::Miss).count();
    let coalesced = statuses
        .iter()
        .filter(|s| **s == CacheStatus::Coalesced)
        .count();
    assert_eq!((misses, coalesced), (1, 49));
    assert_eq!(cache.stats().coalesced, 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_misses_run_once_on_threads() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::from_millis(200));
    let p = policy(30, 0, 0);
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, run, p, start) = (cache.clone(), f.ok("v", None), p.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            cache.fetch(key("f", "same"), Some(&p), run).await
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(body(&r), "v1");
        assert!(
            matches!(
                r.status,
                CacheStatus::Miss | CacheStatus::Coalesced | CacheStatus::Hit
            ),
            "{:?}",
            r.status
        );
        misses += usize::from(r.status == CacheStatus::Miss);
    }
    assert_eq!(
        f.runs(),
        1,
        "exactly one execution for 50 identical requests"
    );
    assert_eq!(misses, 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_error_reaches_every_waiter_and_is_not_cached() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(1));
    let p = policy(30, 0, 0);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, run, p) = (cache.clone(), f.fail(true), p.clone());
        tasks.push(tokio::spawn(async move {
            cache.fetch(key("f", "x"), Some(&p), run).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(body(&r), "error: failure 1");
    }
    assert_eq!(f.runs(), 1);
    // Not stored: the next request runs again.
    let again = cache.fetch(key("f", "x"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (again.status, body(&again)),
        (CacheStatus::Miss, "v2".into())
    );
}

#[tokio::test(start_paused = true)]
async fn negative_caching_stores_only_deterministic_errors() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = CachePolicy {
        negative_ttl: Some(secs(5)),
        ..policy(30, 0, 60)
    };

    // A transient failure is never stored.
    let r = cache.fetch(key("f", "t"), Some(&p), f.fail(false)).await;
    assert_eq!(r.status, CacheStatus::Miss);
    let r = cache.fetch(key("f", "t"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "v2".into()));

    // The function's own error is, for negative_ttl.
    let r = cache.fetch(key("f", "d"), Some(&p), f.fail(true)).await;
    assert_eq!(
        (r.status, body(&r)),
        (CacheStatus::Miss, "error: failure 3".into())
    );
    advance(secs(4)).await;
    let r = cache.fetch(key("f", "d"), Some(&p), f.ok("v", None)).await;
    assert_eq!(
        (r.status, body(&r)),
        (CacheStatus::Hit, "error: failure 3".into())
    );
    advance(secs(1)).await;
    let r = cache.fetch(key("f", "d"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "v4".into()));
    assert_eq!(f.runs(), 4);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(2));
    let p = policy(10, 30, 0);

    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "v1".into()));
    advance(secs(15)).await;

    // Past the TTL, within SWR: stale at once, several times, while one
    // refresh (2 s) runs in the background.
    for _ in 0..5 {
        let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
        assert_eq!((r.status, body(&r)), (CacheStatus::Stale, "v1".into()));
        assert!(r.age >= secs(15), "{:?}", r.age);
    }
    sleep(secs(3)).await;
    assert_eq!(f.runs(), 2, "exactly one background refresh");
    assert_eq!(cache.stats().refreshes, 1);

    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Hit, "v2".into()));
    assert!(r.age <= secs(1), "the refreshed entry is new: {:?}", r.age);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_stale_entry() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(10, 30, 0);
    cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    advance(secs(11)).await;
    let r = cache.fetch(key("f", "a"), Some(&p), f.fail(false)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Stale, "v1".into()));
    sleep(secs(1)).await;
    assert_eq!(f.runs(), 2, "the refresh ran (and failed)");
    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Stale, "v1".into()));
    sleep(secs(1)).await;
    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Hit, "v3".into()));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_stale_until_the_window_ends() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(10, 0, 60);

    cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    advance(secs(20)).await;
    // Past the TTL: the function runs; it fails; the stale entry answers.
    let r = cache.fetch(key("f", "a"), Some(&p), f.fail(false)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Stale, "v1".into()));
    assert_eq!(r.age, secs(20));
    assert_eq!(f.runs(), 2, "stale-if-error still runs the function first");

    // Waiters of a failing flight get the stale entry too.
    let slow = Counted::new(secs(1));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (cache, run, p) = (cache.clone(), slow.fail(false), p.clone());
        tasks.push(tokio::spawn(async move {
            cache.fetch(key("f", "a"), Some(&p), run).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, body(&r)), (CacheStatus::Stale, "v1".into()));
    }
    assert_eq!(slow.runs(), 1);

    // After TTL + stale_if_error (70 s) the error shows.
    advance(secs(50)).await;
    let r = cache.fetch(key("f", "a"), Some(&p), f.fail(false)).await;
    assert_eq!(
        (r.status, body(&r)),
        (CacheStatus::Miss, "error: failure 3".into())
    );
}

#[tokio::test(start_paused = true)]
async fn purge_one_function_or_all() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(30, 0, 0);
    for (func, payload) in [("f1", "a"), ("f1", "b"), ("f2", "a")] {
        cache
            .fetch(key(func, payload), Some(&p), f.ok("v", None))
            .await;
    }
    cache.purge_function("F1").unwrap();
    let statuses = async |cache: &TestCache| {
        let mut out = Vec::new();
        for (func, payload) in [("f1", "a"), ("f1", "b"), ("f2", "a")] {
            let r = cache
                .fetch(key(func, payload), Some(&p), f.ok("v", None))
                .await;
            out.push(r.status);
        }
        out
    };
    use CacheStatus::{Hit, Miss};
    assert_eq!(statuses(&cache).await, [Miss, Miss, Hit]);
    assert_eq!(statuses(&cache).await, [Hit, Hit, Hit]);
    cache.purge_all();
    assert_eq!(statuses(&cache).await, [Miss, Miss, Miss]);
    cache.run_pending_tasks().await;
    assert_eq!(cache.stats().entries, 3);
}

#[tokio::test(start_paused = true)]
async fn a_result_in_flight_during_a_purge_is_not_stored() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(1));
    let p = policy(30, 0, 0);
    let task = {
        let (cache, run, p) = (cache.clone(), f.ok("v", None), p.clone());
        tokio::spawn(async move { cache.fetch(key("f", "a"), Some(&p), run).await })
    };
    sleep(Duration::from_millis(500)).await;
    cache.purge_function("f").unwrap();
    let r = task.await.unwrap();
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "v1".into()));
    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "v2".into()));
}

#[tokio::test]
async fn the_byte_bound_holds() {
    let cache = TestCache::new(MIB);
    let p = policy(300, 0, 0);
    let value = Bytes::from(vec![b'x'; 32 * 1024]);
    for i in 0..100 {
        let v = value.clone();
        cache
            .fetch(key("f", &i.to_string()), Some(&p), move || async move {
                Ok(Resp {
                    body: v,
                    cache_control: None,
                })
            })
            .await;
    }
    cache.run_pending_tasks().await;
    let stats = cache.stats();
    assert!(stats.bytes <= MIB, "weighted size {} > {MIB}", stats.bytes);
    assert!(
        stats.bytes >= MIB / 2,
        "the cache holds something: {stats:?}"
    );
    assert!(stats.entries < 100, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
    assert_eq!(stats.misses, 100);

    // A value larger than the whole cache is served but never stored.
    let big = Bytes::from(vec![b'y'; 2 * MIB as usize]);
    for expected in [CacheStatus::Miss, CacheStatus::Miss] {
        let v = big.clone();
        let r = cache
            .fetch(key("f", "big"), Some(&p), move || async move {
                Ok(Resp {
                    body: v,
                    cache_control: None,
                })
            })
            .await;
        assert_eq!(r.status, expected);
        assert_eq!(r.result.unwrap().body.len(), 2 * MIB as usize);
    }
    cache.run_pending_tasks().await;
    assert!(cache.stats().bytes <= MIB);
}

#[tokio::test(start_paused = true)]
async fn a_response_can_forbid_or_shorten_caching_but_not_lengthen_it() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(Duration::ZERO);
    let p = policy(30, 0, 0);

    // no-store: every request runs.
    for n in 1..=2 {
        let r = cache
            .fetch(key("f", "nostore"), Some(&p), f.ok("v", Some("no-store")))
            .await;
        assert_eq!((r.status, body(&r)), (CacheStatus::Miss, format!("v{n}")));
    }

    // max-age=5 under ttl 30: fresh for 5 s only.
    cache
        .fetch(key("f", "short"), Some(&p), f.ok("v", Some("max-age=5")))
        .await;
    advance(secs(4)).await;
    let r = cache
        .fetch(key("f", "short"), Some(&p), f.ok("v", None))
        .await;
    assert_eq!(r.status, CacheStatus::Hit);
    advance(secs(1)).await;
    let r = cache
        .fetch(key("f", "short"), Some(&p), f.ok("v", None))
        .await;
    assert_eq!(r.status, CacheStatus::Miss);

    // max-age=3600 under ttl 30: clamped to 30 s.
    cache
        .fetch(key("f", "long"), Some(&p), f.ok("v", Some("max-age=3600")))
        .await;
    advance(secs(29)).await;
    let r = cache
        .fetch(key("f", "long"), Some(&p), f.ok("v", None))
        .await;
    assert_eq!(r.status, CacheStatus::Hit);
    advance(secs(1)).await;
    let r = cache
        .fetch(key("f", "long"), Some(&p), f.ok("v", None))
        .await;
    assert_eq!(r.status, CacheStatus::Miss);
}

#[tokio::test(start_paused = true)]
async fn waiters_of_a_no_store_response_run_their_own() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(1));
    let p = policy(30, 0, 0);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (cache, run, p) = (cache.clone(), f.ok("v", Some("no-store")), p.clone());
        tasks.push(tokio::spawn(async move {
            cache.fetch(key("f", "private"), Some(&p), run).await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, CacheStatus::Miss);
        bodies.push(body(&r));
    }
    bodies.sort();
    assert_eq!(bodies, ["v1", "v2", "v3"], "nobody got another's response");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let cache = TestCache::new(16 * MIB);
    let f = Counted::new(secs(10));
    let p = policy(30, 0, 0);
    let leader = {
        let (cache, run, p) = (cache.clone(), f.ok("leader", None), p.clone());
        tokio::spawn(async move { cache.fetch(key("f", "a"), Some(&p), run).await })
    };
    sleep(Duration::from_millis(10)).await;
    let waiter = {
        let (cache, run, p) = (cache.clone(), f.ok("waiter", None), p.clone());
        tokio::spawn(async move { cache.fetch(key("f", "a"), Some(&p), run).await })
    };
    sleep(Duration::from_millis(10)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let r = waiter.await.unwrap();
    assert_eq!((r.status, body(&r)), (CacheStatus::Miss, "waiter2".into()));
    let r = cache
        .fetch(key("f", "a"), Some(&p), f.ok("late", None))
        .await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Hit, "waiter2".into()));
}

#[test]
fn config_cache_bytes_and_negative_ttl() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-test.toml");
    let t = config::parse(&path, TOPOLOGY).unwrap();
    assert_eq!(t.edges[0].cache_bytes, 64 * MIB, "default");
    assert_eq!(t.functions[0].cache.as_ref().unwrap().negative_ttl, None);

    let text = TOPOLOGY
        .replace(
            "quic_listen = \"127.0.0.1:0\"",
            "quic_listen = \"127.0.0.1:0\"\ncache_bytes = 2097152",
        )
        .replace("ttl_s = 30,", "ttl_s = 30, negative_ttl_s = 3,");
    let t = config::parse(&path, &text).unwrap();
    assert_eq!(t.edges[0].cache_bytes, 2 * MIB);
    assert_eq!(
        t.functions[0].cache.as_ref().unwrap().negative_ttl,
        Some(secs(3))
    );

    let text = TOPOLOGY
        .replace(
            "quic_listen = \"127.0.0.1:0\"",
            "quic_listen = \"127.0.0.1:0\"\ncache_bytes = 1000",
        )
        .replace("ttl_s = 30,", "ttl_s = 30, negative_ttl_s = 0,");
    let errors = config::parse(&path, &text).unwrap_err().0;
    let messages: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
    assert_eq!(
        messages,
        [
            "edge.a.cache_bytes: cache_bytes = 1000 is out of range",
            "function.greet.cache.negative_ttl_s: negative_ttl_s = 0 caches no error",
        ]
    );
    assert!(errors[0].line > 0 && errors[0].fix.as_deref().unwrap().contains("1 MiB"));
}

#[tokio::test(start_paused = true)]
async fn background_refreshes_are_tracked_for_shutdown() {
    let tracker = tokio_util::task::TaskTracker::new();
    let cache = TestCache::with_tracker(16 * MIB, tracker.clone());
    let f = Counted::new(secs(5));
    let p = policy(10, 30, 0);
    cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    advance(secs(11)).await;
    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!(r.status, CacheStatus::Stale);
    assert_eq!(tracker.len(), 1, "the refresh runs under the tracker");
    tracker.close();
    let started = tokio::time::Instant::now();
    tracker.wait().await;
    assert_eq!(
        started.elapsed(),
        secs(5),
        "shutdown waited for the refresh"
    );
    assert_eq!(f.runs(), 2);
    let r = cache.fetch(key("f", "a"), Some(&p), f.ok("v", None)).await;
    assert_eq!((r.status, body(&r)), (CacheStatus::Hit, "v2".into()));
}
