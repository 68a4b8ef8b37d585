//! Response rate limiting per client prefix (token buckets), so the server
//! cannot be used as a traffic amplifier. Applies to UDP only: a TCP client
//! has proven its address.
//!
//! Buckets live in a fixed table of atomics indexed by a hash of the
//! prefix (no allocation, no locks, bounded memory under a spoofed flood;
//! two prefixes that collide share a bucket, which only limits harder).
//! The clock is passed in (milliseconds), so the limiter is a pure state
//! machine that tests drive by hand.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::RateLimit;

use super::decide::{mask, to_bits};

const BUCKETS: usize = 1 << 16;
/// Tokens are counted in thousandths.
const MILLI: f64 = 1000.0;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Send,
    /// Over the limit: send nothing.
    Drop,
    /// Over the limit, but every `slip`-th dropped response goes out as an
    /// empty truncated answer so a real client behind the prefix retries
    /// over TCP.
    Slip,
}

pub(crate) struct RateLimiter {
    cfg: RateLimit,
    /// Per bucket: high 32 bits the last refill (ms, wrapping), low 32 bits
    /// the deficit below a full bucket in thousandths of a token (so an
    /// all-zero bucket is full).
    buckets: Box<[AtomicU64]>,
    drops: AtomicU64,
}

impl RateLimiter {
    pub(crate) fn new(cfg: RateLimit) -> Self {
        Self {
            cfg,
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            drops: AtomicU64::new(0),
        }
    }

    /// Takes one token from `client`'s prefix bucket at time `now_ms`.
    pub(crate) fn check(&self, client: IpAddr, now_ms: u64) -> Verdict {
        let (bits, a) = to_bits(client);
        let prefix = if bits == 32 {
            self.cfg.ipv4_prefix
        } else {
            self.cfg.ipv6_prefix
        };
        let key = mask(a, prefix, bits) ^ (u128::from(bits) << 120);
        let slot = &self.buckets[bucket_index(key)];
        let capacity = (self.cfg.burst * MILLI).min(f64::from(u32::MAX)) as u64;
        let now = now_ms as u32;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let last = (cur >> 32) as u32;
            let deficit = cur & 0xffff_ffff;
            let elapsed = now.wrapping_sub(last);
            // A clock that seems to run backwards refills nothing.
            let elapsed = if elapsed > u32::MAX / 2 { 0 } else { elapsed };
            let refill = (f64::from(elapsed) * self.cfg.responses_per_second) as u64;
            let deficit = deficit.saturating_sub(refill);
            let (next_deficit, ok) = if deficit + 1000 <= capacity {
                (deficit + 1000, true)
            } else {
                (deficit, false)
            };
            let next = (u64::from(now) << 32) | next_deficit;
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) if ok => return Verdict::Send,
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        let n = self.drops.fetch_add(1, Ordering::Relaxed) + 1;
        if self.cfg.slip > 0 && n.is_multiple_of(u64::from(self.cfg.slip)) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Responses dropped or slipped so far.
    pub(crate) fn limited(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("cfg", &self.cfg)
            .field("limited", &self.limited())
            .finish()
    }
}

fn bucket_index(key: u128) -> usize {
    let h =
        ((key as u64) ^ ((key >> 64) as u64).rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as usize & (BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: f64, slip: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            responses_per_second: rps,
            burst,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip,
        })
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(10.0, 5.0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap(); // same /24
        let t = 1_000;
        for _ in 0..5 {
            assert_eq!(l.check(a, t), Verdict::Send);
        }
        assert_eq!(l.check(b, t), Verdict::Drop);
        // 10 per second: one token back after 100 ms.
        assert_eq!(l.check(a, t + 50), Verdict::Drop);
        assert_eq!(l.check(a, t + 150), Verdict::Send);
        assert_eq!(l.check(a, t + 150), Verdict::Drop);
        // Another prefix has its own bucket.
        let c: IpAddr = "192.0.3.1".parse().unwrap();
        assert_eq!(l.check(c, t), Verdict::Send);
        assert_eq!(l.limited(), 3);
    }

    #[test]
    fn slips_every_nth() {
        let l = limiter(1.0, 1.0, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(l.check(a, 5), Verdict::Send);
        assert_eq!(l.check(a, 5), Verdict::Drop);
        assert_eq!(l.check(a, 5), Verdict::Slip);
        assert_eq!(l.check(a, 5), Verdict::Drop);
        assert_eq!(l.check(a, 5), Verdict::Slip);
    }
}
