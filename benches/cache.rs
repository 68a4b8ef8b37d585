//! Response cache benchmarks.
//!
//! 1. Hit ratio and bytes under a Zipf key load (100k keys, s = 1.0, 1M
//!    requests, variable value sizes) with a cache of 10% of the key
//!    space's bytes: `fnroute::cache::Cache` (moka, TinyLFU admission)
//!    side by side with a plain byte-bounded LRU (`lru` crate) weighing
//!    entries the same way. Printed as a table before the timings.
//! 2. Criterion timings: `Cache::fetch` on a hot key (the hit path), and
//!    building a key (SHA-256 of a 1 KiB payload).
//!
//! `cargo bench --bench cache`; `FNROUTE_ZIPF_REQUESTS=N` changes the
//! simulated request count. Under `cargo bench -- --test` (smoke test) the
//! simulation runs 20k requests.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use fnroute::cache::{Cache, CacheKey, Cacheable, CacheableError, Directive};
use fnroute::config::CachePolicy;
use rand::{Rng, SeedableRng};

#[derive(Clone)]
struct Resp(Bytes);

impl Cacheable for Resp {
    fn weight(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
    fn directive(&self) -> Directive {
        Directive::Default
    }
}

#[derive(Clone, Debug)]
struct NoError;

impl CacheableError for NoError {
    fn negative_cacheable(&self) -> bool {
        false
    }
}

const KEYS: usize = 100_000;
const ZIPF_S: f64 = 1.0;
const SEED: u64 = 0x5eed_cafe;

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(3600),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        vary: Vec::new(),
        negative_ttl: None,
    }
}

/// Inverse-CDF Zipf sampler over ranks 0..n (rank 0 most popular).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// One simulated key: its cache key, value and weight in the byte bound.
struct Item {
    key: CacheKey,
    value: Resp,
    weight: u64,
}

fn items() -> Vec<Item> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 1);
    // Values share one buffer: the simulation weighs bytes, it need not
    // hold 200 MB of them.
    let buffer = Bytes::from(vec![b'x'; 3584]);
    (0..KEYS)
        .map(|i| {
            // 512 B to 3.5 KiB, mean 2 KiB.
            let size = rng.random_range(512..3584usize);
            let key = CacheKey::new("zipf", 1, &(i as u64).to_le_bytes(), []);
            let weight = (key.weight() + fnroute::cache::ENTRY_OVERHEAD + size) as u64;
            Item {
                key,
                value: Resp(buffer.slice(..size)),
                weight,
            }
        })
        .collect()
}

struct SimResult {
    name: &'static str,
    hit_ratio: f64,
    bytes: u64,
    entries: u64,
    elapsed: Duration,
}

fn simulate_moka(items: &[Item], trace: &[u32], cap: u64) -> SimResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache: Cache<Resp, NoError> = Cache::new(cap);
        let p = policy();
        let start = Instant::now();
        for &i in trace {
            let item = &items[i as usize];
            let value = item.value.clone();
            let r = cache
                .fetch(item.key.clone(), Some(&p), move || {
                    std::future::ready(Ok(value))
                })
                .await;
            black_box(r);
        }
        let elapsed = start.elapsed();
        cache.run_pending_tasks().await;
        let s = cache.stats();
        SimResult {
            name: "fnroute cache (moka, TinyLFU)",
            hit_ratio: s.hits as f64 / trace.len() as f64,
            bytes: s.bytes,
            entries: s.entries,
            elapsed,
        }
    })
}

/// moka alone (same weights, no expiry, no coalescing): what the layer on
/// top costs, and moka's own hit ratio.
fn simulate_raw_moka(items: &[Item], trace: &[u32], cap: u64) -> SimResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache: moka::future::Cache<u32, (Resp, u32)> = moka::future::Cache::builder()
            .max_capacity(cap)
            .weigher(|_k: &u32, v: &(Resp, u32)| v.1)
            .build();
        let mut hits = 0u64;
        let start = Instant::now();
        for &i in trace {
            if cache.get(&i).await.is_some() {
                hits += 1;
            } else {
                let item = &items[i as usize];
                let weight = u32::try_from(item.weight).unwrap();
                cache.insert(i, (item.value.clone(), weight)).await;
            }
        }
        let elapsed = start.elapsed();
        cache.run_pending_tasks().await;
        SimResult {
            name: "moka alone (get + insert)",
            hit_ratio: hits as f64 / trace.len() as f64,
            bytes: cache.weighted_size(),
            entries: cache.entry_count(),
            elapsed,
        }
    })
}

fn simulate_lru(items: &[Item], trace: &[u32], cap: u64) -> SimResult {
    let mut lru: lru::LruCache<u32, u64> = lru::LruCache::unbounded();
    let mut bytes = 0u64;
    let mut hits = 0u64;
    let start = Instant::now();
    for &i in trace {
        if lru.get(&i).is_some() {
            hits += 1;
            continue;
        }
        let w = items[i as usize].weight;
        if w > cap {
            continue;
        }
        lru.put(i, w);
        bytes += w;
        while bytes > cap {
            match lru.pop_lru() {
                Some((_, old)) => bytes -= old,
                None => break,
            }
        }
    }
    SimResult {
        name: "LRU (lru crate, byte-bounded)",
        hit_ratio: hits as f64 / trace.len() as f64,
        bytes,
        entries: lru.len() as u64,
        elapsed: start.elapsed(),
    }
}

fn zipf_table(requests: usize) {
    let items = items();
    let total: u64 = items.iter().map(|i| i.weight).sum();
    let cap = total / 10;
    let zipf = Zipf::new(KEYS, ZIPF_S);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let trace: Vec<u32> = (0..requests)
        .map(|_| zipf.sample(&mut rng) as u32)
        .collect();
    // The best any cache of this size could do without knowing the future
    // beyond popularity: keep the most popular keys that fit.
    let mut by_rank = 0u64;
    let mut fit = 0usize;
    for item in &items {
        if by_rank + item.weight > cap {
            break;
        }
        by_rank += item.weight;
        fit += 1;
    }
    let ideal = trace.iter().filter(|&&i| (i as usize) < fit).count() as f64 / requests as f64;

    println!();
    println!(
        "zipf hit ratio: {KEYS} keys, s = {ZIPF_S}, {requests} requests, values 512..3584 B, \
         cache = 10% of {total} B = {cap} B"
    );
    println!("| cache | hit ratio | bytes held | entries | time for {requests} requests |");
    println!("|---|---|---|---|---|");
    for r in [
        simulate_moka(&items, &trace, cap),
        simulate_raw_moka(&items, &trace, cap),
        simulate_lru(&items, &trace, cap),
    ] {
        println!(
            "| {} | {:.2}% | {} | {} | {:.2?} |",
            r.name,
            r.hit_ratio * 100.0,
            r.bytes,
            r.entries,
            r.elapsed
        );
    }
    println!(
        "| static top-{fit} keys (popularity oracle) | {:.2}% | {by_rank} | {fit} | - |",
        ideal * 100.0
    );
    println!();
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache: Cache<Resp, NoError> = Cache::new(64 * 1024 * 1024);
    let p = policy();
    let key = CacheKey::new("echo", 1, b"hello world", [Some("en")]);
    let value = Resp(Bytes::from(vec![b'x'; 1024]));
    rt.block_on(async {
        let v = value.clone();
        cache
            .fetch(key.clone(), Some(&p), move || std::future::ready(Ok(v)))
            .await;
    });

    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fetch_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v = value.clone();
                    let r = cache
                        .fetch(key.clone(), Some(&p), move || std::future::ready(Ok(v)))
                        .await;
                    black_box(r);
                }
                start.elapsed()
            })
        })
    });
    let payload = vec![b'p'; 1024];
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("key_1KiB_payload", |b| {
        b.iter(|| CacheKey::new("echo", 1, black_box(&payload), [Some("en")]))
    });
    g.finish();
}

criterion_group!(benches, hit_path);

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let requests = std::env::var("FNROUTE_ZIPF_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    zipf_table(requests);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
