//! Retry budget: retries may add at most `ratio` of recent requests plus a
//! small floor, so retries cannot multiply an overload (Linkerd's
//! ServiceProfile budget: ratio 0.2, 10 retries/s, ttl 10 s).
//!
//! Pure: every method takes `now`. Time is cut into one-second buckets over
//! the last `ttl`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    ttl: Duration,
    /// (bucket start, requests, retries), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_sec: f64, ttl: Duration) -> Self {
        Self {
            ratio,
            min_per_sec,
            ttl: ttl.max(Duration::from_secs(1)),
            buckets: VecDeque::new(),
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut (Instant, u64, u64) {
        while self
            .buckets
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.0) >= self.ttl)
        {
            self.buckets.pop_front();
        }
        let fresh = self
            .buckets
            .back()
            .is_none_or(|b| now.saturating_duration_since(b.0) >= Duration::from_secs(1));
        if fresh {
            self.buckets.push_back((now, 0, 0));
        }
        self.buckets.back_mut().expect("a bucket was just ensured")
    }

    /// Counts one original request.
    pub(crate) fn deposit(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Takes one retry from the budget if there is room.
    pub(crate) fn try_withdraw(&mut self, now: Instant) -> bool {
        self.bucket(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .fold((0, 0), |(q, r), b| (q + b.1, r + b.2));
        let allowed = self.min_per_sec * self.ttl.as_secs_f64() + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            self.bucket(now).2 += 1;
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10.0, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_then_ratio() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        // Floor: 1/s over 10 s = 10 retries with no traffic.
        let granted = (0..50).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 10);
        // 100 requests add 20 more.
        for _ in 0..100 {
            b.deposit(t0);
        }
        let granted = (0..50).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 20);
        // After the window everything has expired.
        let later = t0 + Duration::from_secs(11);
        let granted = (0..50).filter(|_| b.try_withdraw(later)).count();
        assert_eq!(granted, 10);
    }
}
