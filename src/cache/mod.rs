//! The per-edge response cache: answers repeated invocations of cacheable
//! functions locally, as a CDN answers repeated requests for one object.
//!
//! `cache` owns the store (moka, bounded by bytes, per-entry expiry), the
//! keys ([`CacheKey`], [`function_version`]), the freshness policy (pure:
//! [`Lifetime::freshness`] takes `now`), request coalescing, background
//! refresh (stale-while-revalidate), stale-if-error, negative caching and
//! purge. It is generic over the cached value ([`Cacheable`]) and the error
//! ([`CacheableError`]): it knows nothing of QUIC, HTTP, executors or other
//! edges. The front door builds a key, calls [`Cache::fetch`] with a closure
//! that dispatches, and turns [`Fetched::status`] and [`Fetched::age`] into
//! the `fnroute-cache` and `age` headers. See `docs/cache.md`.

mod key;
mod policy;
#[cfg(test)]
mod tests;

pub use key::CacheKey;
pub use policy::{
    command_directive, command_directive_line, lambda_directive, lambda_directive_value, Directive,
    Freshness, Lifetime, COMMAND_DIRECTIVE_PREFIX,
};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::Expiry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

use crate::config::CachePolicy;

/// A value the cache can store: cheap to clone (share bytes, e.g.
/// `bytes::Bytes`), with a size and its own cache directive.
pub trait Cacheable: Clone + Send + Sync + 'static {
    /// Bytes this value accounts for: body plus headers.
    fn weight(&self) -> u32;
    /// What the response says about its own caching (see
    /// [`lambda_directive`] and [`command_directive`]).
    fn directive(&self) -> Directive;
}

/// An error coalesced waiters can share. Shared with the waiters of one
/// flight always; stored only under negative caching and only when
/// [`CacheableError::negative_cacheable`] says so.
pub trait CacheableError: Clone + Send + Sync + 'static {
    /// True for a deterministic answer of the function itself (it ran and
    /// reported an error); false for transient trouble (overload, timeout,
    /// unreachable edges), which must never be cached.
    fn negative_cacheable(&self) -> bool;
}

/// Where an answer came from; the value of the `fnroute-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// A fresh stored entry.
    Hit,
    /// This request ran the function.
    Miss,
    /// A stored entry past its TTL: within stale-while-revalidate (a
    /// background refresh runs) or served instead of an error
    /// (stale-if-error).
    Stale,
    /// An identical request was already running; this one shared its result.
    Coalesced,
    /// The function is not cacheable; the cache was not consulted.
    Bypass,
}

impl CacheStatus {
    /// The header value: `hit`, `miss`, `stale`, `coalesced` or `bypass`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Coalesced => "coalesced",
            Self::Bypass => "bypass",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`Cache::fetch`].
#[derive(Debug, Clone)]
pub struct Fetched<V, E> {
    pub result: Result<V, E>,
    pub status: CacheStatus,
    /// Time since the answer was produced (zero for a fresh run); the `age`
    /// header is its whole seconds.
    pub age: Duration,
}

impl<V, E> Fetched<V, E> {
    /// The `age` header value: whole seconds since the answer was produced.
    pub(crate) fn age_secs(&self) -> u64 {
        self.age.as_secs()
    }
}

/// Cache failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The store refused a purge predicate (it was built without
    /// invalidation closures); a bug, not an operator error.
    #[error("purge of function {function:?} failed: {reason}")]
    Purge { function: String, reason: String },
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Stale answers (stale-while-revalidate and stale-if-error).
    pub(crate) stale: u64,
    pub coalesced: u64,
    pub bypass: u64,
    /// Background refreshes started (stale-while-revalidate).
    pub refreshes: u64,
    /// Entries dropped to stay within the byte bound.
    pub evictions: u64,
    /// Entries dropped past their TTL and stale windows.
    pub(crate) expirations: u64,
    /// Bytes stored now (as weighed), and entries stored now. Both lag by
    /// the store's pending maintenance.
    pub bytes: u64,
    pub entries: u64,
}

/// The per-edge response cache. Cloning shares it.
pub struct Cache<V, E> {
    inner: Arc<Inner<V, E>>,
}

impl<V, E> std::fmt::Debug for Cache<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl<V, E> Clone for Cache<V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V: Cacheable, E: CacheableError> Cache<V, E> {
    /// A cache holding at most `max_bytes` (keys, values and a fixed
    /// per-entry overhead). Background refreshes go to `tokio::spawn`.
    pub fn new(max_bytes: u64) -> Self {
        Self::build(max_bytes, None)
    }

    /// Like [`Cache::new`], with background refreshes tracked by `tracker`
    /// (the node's `TaskTracker`, so shutdown waits for them).
    pub fn with_tracker(max_bytes: u64, tracker: TaskTracker) -> Self {
        Self::build(max_bytes, Some(tracker))
    }

    fn build(max_bytes: u64, tracker: Option<TaskTracker>) -> Self {
        let counters = Arc::new(Counters::default());
        let listener = Arc::clone(&counters);
        let store = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry<V, E>>| entry.weight)
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .eviction_listener(move |_key, _entry, cause| match cause {
                RemovalCause::Size => {
                    listener.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener.expirations.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        Self {
            inner: Arc::new(Inner {
                store,
                flights: Mutex::new(HashMap::new()),
                counters,
                max_bytes,
                purges: AtomicU64::new(0),
                tracker,
            }),
        }
    }

    /// Answers one invocation from the cache or by calling `run` (which
    /// dispatches it), following `policy`:
    ///
    /// - no policy: `run`, status `Bypass`;
    /// - a fresh entry: its value (or cached error), `Hit`;
    /// - within stale-while-revalidate: the entry at once, `Stale`, while one
    ///   background task runs `run` and stores the new result (never two
    ///   refreshes of one key at a time);
    /// - otherwise, if an identical request is running, its result,
    ///   `Coalesced`; else `run`, `Miss`. A result is stored as its
    ///   [`Directive`] allows (never longer than `policy.ttl`);
    /// - when `run` fails and an entry is within stale-if-error, that entry,
    ///   `Stale`, instead of the error.
    ///
    /// Errors are shared with the waiters of the same flight, and stored
    /// only under negative caching. If the caller running `run` is dropped,
    /// one waiter runs its own `run` instead. Cancel safe.
    pub async fn fetch<F, Fut>(
        &self,
        key: CacheKey,
        policy: Option<&CachePolicy>,
        run: F,
    ) -> Fetched<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let inner = &self.inner;
        let Some(policy) = policy else {
            inner.counters.bypass.fetch_add(1, Ordering::Relaxed);
            return Fetched {
                result: run().await,
                status: CacheStatus::Bypass,
                age: Duration::ZERO,
            };
        };
        loop {
            let now = Instant::now();
            let found = inner.store.get(&key).await;
            let freshness = found.as_ref().map(|e| e.life.freshness(now));
            if let (Some(entry), Some(f @ (Freshness::Fresh | Freshness::Revalidate))) =
                (&found, freshness)
            {
                return inner.stored(entry, f == Freshness::Fresh, now, key, policy, run);
            }
            // Kept to answer in place of an error (stale-if-error).
            let fallback =
                found.filter(|e| freshness == Some(Freshness::ErrorOnly) && e.result.is_ok());
            let rx = match inner.join_or_lead(&key) {
                Role::Lead(flight) => {
                    let fetched = inner.lead(flight, policy, run, fallback).await;
                    inner.count(fetched.status);
                    return fetched;
                }
                Role::Wait(rx) => rx,
            };
            let fetched = match wait(rx).await {
                Some(Landed::Value { value, stored }) => Fetched {
                    result: Ok(value),
                    status: CacheStatus::Coalesced,
                    age: Instant::now().saturating_duration_since(stored),
                },
                Some(Landed::Error(error)) => stale_or(fallback, error, CacheStatus::Coalesced),
                // The response said "do not store": it is not shared
                // either. Run this request on its own.
                Some(Landed::Private) => match run().await {
                    Ok(v) => Fetched {
                        result: Ok(v),
                        status: CacheStatus::Miss,
                        age: Duration::ZERO,
                    },
                    Err(error) => stale_or(fallback, error, CacheStatus::Miss),
                },
                // The leader was dropped before it landed: try again (this
                // request may lead now).
                None => continue,
            };
            inner.count(fetched.status);
            return fetched;
        }
    }

    /// Drops every entry of one function (all versions, all payloads).
    /// Results in flight when the purge happens are returned to their
    /// callers but not stored.
    pub fn purge_function(&self, name: &str) -> Result<(), CacheError> {
        let name = name.to_ascii_lowercase();
        self.inner.purges.fetch_add(1, Ordering::AcqRel);
        let target = name.clone();
        self.inner
            .store
            .invalidate_entries_if(move |k, _| k.function() == target)
            .map(|_| ())
            .map_err(|e| CacheError::Purge {
                function: name,
                reason: e.to_string(),
            })
    }

    /// Drops every entry.
    pub fn purge_all(&self) {
        self.inner.purges.fetch_add(1, Ordering::AcqRel);
        self.inner.store.invalidate_all();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            bypass: c.bypass.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
            bytes: self.inner.store.weighted_size(),
            entries: self.inner.store.entry_count(),
        }
    }

    /// Runs the store's pending maintenance (evictions, expirations,
    /// purges) now; tests call it before reading `stats`.
    pub async fn run_pending_tasks(&self) {
        self.inner.store.run_pending_tasks().await;
    }
}

/// Bytes each entry costs beyond its key and value in the byte bound: the
/// `Entry`, its `Arc` and moka's per-entry bookkeeping, roughly. An entry
/// weighs `key.weight() + ENTRY_OVERHEAD + value.weight()`.
pub const ENTRY_OVERHEAD: usize = 160;

impl Cacheable for Bytes {
    fn weight(&self) -> u32 {
        u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    fn directive(&self) -> Directive {
        Directive::Default
    }
}

struct Inner<V, E> {
    store: moka::future::Cache<CacheKey, Arc<Entry<V, E>>>,
    flights: Mutex<Flights<V, E>>,
    counters: Arc<Counters>,
    max_bytes: u64,
    /// Bumped by every purge: a flight that started before a purge does not
    /// store its result.
    purges: AtomicU64,
    tracker: Option<TaskTracker>,
}

/// Runs in flight by key: each waiter clones the receiver of the leader's
/// outcome.
type Flights<V, E> = HashMap<CacheKey, watch::Receiver<Option<Landed<V, E>>>>;

struct Entry<V, E> {
    /// `Err` only under negative caching.
    result: Result<V, E>,
    life: Lifetime,
    weight: u32,
}

/// What a flight's leader hands its waiters.
#[derive(Clone)]
enum Landed<V, E> {
    Value {
        value: V,
        stored: Instant,
    },
    Error(E),
    /// The response forbade storing; waiters run their own.
    Private,
}

enum Role<V, E> {
    Lead(Flight<V, E>),
    Wait(watch::Receiver<Option<Landed<V, E>>>),
}

/// The leader's registration in `flights`; dropping it unregisters (so a
/// cancelled leader frees its waiters to retry).
struct Flight<V, E> {
    inner: Arc<Inner<V, E>>,
    key: CacheKey,
    tx: watch::Sender<Option<Landed<V, E>>>,
    landed: bool,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    coalesced: AtomicU64,
    bypass: AtomicU64,
    refreshes: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// moka drops an entry once it can no longer be used at all (its TTL plus
/// the longest stale window); freshness itself is decided by
/// [`Lifetime::freshness`] on tokio's clock, so paused-clock tests work.
struct EntryExpiry;

impl<V, E> Expiry<CacheKey, Arc<Entry<V, E>>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry<V, E>>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.life.usable_for())
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry<V, E>>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.life.usable_for())
    }
}

impl<V: Cacheable, E: CacheableError> Inner<V, E> {
    fn flights(&self) -> MutexGuard<'_, Flights<V, E>> {
        // Nothing panics while holding the lock; recover anyway.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join_or_lead(self: &Arc<Self>, key: &CacheKey) -> Role<V, E> {
        let mut flights = self.flights();
        if let Some(rx) = flights.get(key) {
            return Role::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), rx);
        Role::Lead(Flight {
            inner: Arc::clone(self),
            key: key.clone(),
            tx,
            landed: false,
        })
    }

    /// The answer from a stored entry: a hit, or a stale answer that
    /// starts a background refresh (stale-while-revalidate).
    fn stored<F, Fut>(
        self: &Arc<Self>,
        entry: &Entry<V, E>,
        fresh: bool,
        now: Instant,
        key: CacheKey,
        policy: &CachePolicy,
        run: F,
    ) -> Fetched<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let status = if fresh {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            CacheStatus::Hit
        } else {
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
            self.refresh(key, policy.clone(), run);
            CacheStatus::Stale
        };
        Fetched {
            result: entry.result.clone(),
            status,
            age: entry.life.age(now),
        }
    }

    /// Starts a background refresh of `key` unless a run of it is in
    /// flight already.
    fn refresh<F, Fut>(self: &Arc<Self>, key: CacheKey, policy: CachePolicy, run: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let Role::Lead(flight) = self.join_or_lead(&key) else {
            return;
        };
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(self);
        let span = tracing::debug_span!("cache_refresh", function = %key.function());
        let task = async move {
            let fetched = inner.lead(flight, &policy, run, None).await;
            if let Err(error) = &fetched.result {
                debug!(
                    negative_cacheable = error.negative_cacheable(),
                    "background refresh failed; stale entry kept"
                );
            }
        }
        .instrument(span);
        match &self.tracker {
            Some(t) => drop(t.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Runs `run` as the flight's leader, stores what may be stored, lands
    /// the flight and says what to answer.
    async fn lead<F, Fut>(
        &self,
        flight: Flight<V, E>,
        policy: &CachePolicy,
        run: F,
        fallback: Option<Arc<Entry<V, E>>>,
    ) -> Fetched<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let key = flight.key.clone();
        let flight = match self.landed_meanwhile(flight).await {
            Ok(hit) => return hit,
            Err(flight) => flight,
        };
        let purges = self.purges.load(Ordering::Acquire);
        let result = run().await;
        let now = Instant::now();
        match result {
            Ok(value) => {
                match value.directive().effective_ttl(policy.ttl) {
                    Some(ttl) => {
                        let life = Lifetime {
                            stored: now,
                            ttl,
                            stale_while_revalidate: policy.stale_while_revalidate,
                            stale_if_error: policy.stale_if_error,
                        };
                        let weight = value.weight();
                        self.store_entry(&key, Ok(value.clone()), weight, life, purges)
                            .await;
                        flight.land(Landed::Value {
                            value: value.clone(),
                            stored: now,
                        });
                    }
                    None => flight.land(Landed::Private),
                }
                Fetched {
                    result: Ok(value),
                    status: CacheStatus::Miss,
                    age: Duration::ZERO,
                }
            }
            Err(error) => {
                if let (Some(ttl), true) = (policy.negative_ttl, error.negative_cacheable()) {
                    let life = Lifetime {
                        stored: now,
                        ttl,
                        stale_while_revalidate: Duration::ZERO,
                        stale_if_error: Duration::ZERO,
                    };
                    self.store_entry(&key, Err(error.clone()), 0, life, purges)
                        .await;
                }
                flight.land(Landed::Error(error.clone()));
                stale_or(fallback, error, CacheStatus::Miss)
            }
        }
    }

    /// Another flight may have landed between the leader's lookup and its
    /// registration: a fresh entry now is answered (and landed for the
    /// waiters) without running. `contains_key` first, because it does not
    /// count as a read for TinyLFU's popularity estimate: a plain miss must
    /// count once, not twice.
    /// The flight comes back (`Err`) when it is still this leader's to run.
    async fn landed_meanwhile(&self, flight: Flight<V, E>) -> Result<Fetched<V, E>, Flight<V, E>> {
        let now = Instant::now();
        if !self.store.contains_key(&flight.key) {
            return Err(flight);
        }
        let Some(e) = self.store.get(&flight.key).await else {
            return Err(flight);
        };
        if e.life.freshness(now) != Freshness::Fresh {
            return Err(flight);
        }
        flight.land(match &e.result {
            Ok(value) => Landed::Value {
                value: value.clone(),
                stored: e.life.stored,
            },
            Err(error) => Landed::Error(error.clone()),
        });
        Ok(Fetched {
            result: e.result.clone(),
            status: CacheStatus::Hit,
            age: e.life.age(now),
        })
    }

    async fn store_entry(
        &self,
        key: &CacheKey,
        result: Result<V, E>,
        value_weight: u32,
        life: Lifetime,
        purges_at_start: u64,
    ) {
        let weight = key
            .weight()
            .saturating_add(ENTRY_OVERHEAD)
            .saturating_add(value_weight as usize);
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        if u64::from(weight) > self.max_bytes {
            debug!(
                weight,
                max = self.max_bytes,
                "entry larger than the cache; not stored"
            );
            return;
        }
        if self.purges.load(Ordering::Acquire) != purges_at_start {
            debug!("purged while running; result not stored");
            return;
        }
        let entry = Arc::new(Entry {
            result,
            life,
            weight,
        });
        self.store.insert(key.clone(), entry).await;
    }

    fn count(&self, status: CacheStatus) {
        let c = &self.counters;
        let counter = match status {
            CacheStatus::Hit => &c.hits,
            CacheStatus::Miss => &c.misses,
            CacheStatus::Stale => &c.stale,
            CacheStatus::Coalesced => &c.coalesced,
            CacheStatus::Bypass => &c.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl<V, E> Flight<V, E> {
    fn unregister(&self) {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.remove(&self.key);
    }

    /// Unregisters, then hands the outcome to the waiters. Requests that
    /// arrive after this find the stored entry (it was inserted first).
    fn land(mut self, landed: Landed<V, E>) {
        self.unregister();
        self.tx.send_replace(Some(landed));
        self.landed = true;
    }
}

impl<V, E> Drop for Flight<V, E> {
    fn drop(&mut self) {
        if !self.landed {
            self.unregister();
        }
    }
}

/// Waits for a flight to land; `None` if its leader was dropped first.
async fn wait<V: Clone, E: Clone>(
    mut rx: watch::Receiver<Option<Landed<V, E>>>,
) -> Option<Landed<V, E>> {
    match rx.wait_for(Option::is_some).await {
        Ok(landed) => landed.clone(),
        Err(_) => None,
    }
}

/// The stale-if-error answer, if `fallback` is still within its windows.
/// The stale fallback if it may still be served, else `error`.
fn stale_or<V: Clone, E: Clone>(
    fallback: Option<Arc<Entry<V, E>>>,
    error: E,
    status: CacheStatus,
) -> Fetched<V, E> {
    serve_stale(fallback, Instant::now()).unwrap_or(Fetched {
        result: Err(error),
        status,
        age: Duration::ZERO,
    })
}

fn serve_stale<V: Clone, E: Clone>(
    fallback: Option<Arc<Entry<V, E>>>,
    now: Instant,
) -> Option<Fetched<V, E>> {
    let entry = fallback?;
    if entry.life.freshness(now) == Freshness::Expired {
        return None;
    }
    Some(Fetched {
        result: entry.result.clone(),
        status: CacheStatus::Stale,
        age: entry.life.age(now),
    })
}
