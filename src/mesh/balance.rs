//! Latency-aware choice between near-equal peers: peak-EWMA cost with
//! power-of-two-choices (as Linkerd and Finagle do).
//!
//! Pure state machines: every method takes `now`.

use std::time::Duration;

use tokio::time::Instant;

/// Peak-EWMA round-trip estimate of one peer. A sample above the estimate
/// replaces it at once (peak sensitivity); lower samples decay it towards
/// themselves with time constant `decay`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    rtt_ns: f64,
    stamp: Instant,
    decay: Duration,
    /// Requests in flight to this peer.
    pending: u32,
}

/// Linkerd's default decay.
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);

impl PeakEwma {
    /// Starts at `initial` (e.g. the probe RTT, or a default before any).
    pub(crate) fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            rtt_ns: initial.as_nanos() as f64,
            stamp: now,
            decay,
            pending: 0,
        }
    }

    /// Records one observed round trip.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        if sample > self.rtt_ns {
            self.rtt_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-elapsed / self.decay.as_secs_f64().max(1e-9)).exp();
            self.rtt_ns = self.rtt_ns * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    pub(crate) fn start(&mut self) {
        self.pending = self.pending.saturating_add(1);
    }

    pub(crate) fn finish(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// The estimate in nanoseconds.
    #[cfg(test)]
    fn rtt_ns(&self) -> f64 {
        self.rtt_ns
    }

    /// Cost used for the choice: RTT × (in flight + 1).
    pub(crate) fn cost(&self) -> f64 {
        self.rtt_ns * f64::from(self.pending + 1)
    }
}

/// Power of two choices: of two distinct candidates drawn from `n` with
/// the random numbers `r1`, `r2`, the index with the lower cost. `None`
/// when `n` is 0.
pub(crate) fn p2c(n: usize, r1: u64, r2: u64, cost: impl Fn(usize) -> f64) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = (r1 % n as u64) as usize;
            // The second draw skips `a` so the two are distinct.
            let mut b = (r2 % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_then_decay() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(10), DEFAULT_DECAY, t0);
        e.observe(Duration::from_millis(50), t0);
        assert_eq!(e.rtt_ns(), 50e6, "peaks are taken at once");
        e.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
        let expected = 50e6 * (-1.0f64).exp() + 10e6 * (1.0 - (-1.0f64).exp());
        assert!((e.rtt_ns() - expected).abs() < 1.0);
        e.start();
        e.start();
        assert!((e.cost() - 3.0 * e.rtt_ns()).abs() < 1e-6);
        e.finish();
        e.finish();
        e.finish();
        assert_eq!(e.cost(), e.rtt_ns());
    }

    #[test]
    fn p2c_picks_the_cheaper_of_two_distinct() {
        let costs = [5.0, 1.0, 9.0];
        assert_eq!(p2c(0, 1, 2, |i| costs[i]), None);
        assert_eq!(p2c(1, 7, 7, |i| costs[i]), Some(0));
        // a = 0, b = skip(0) -> 1
        assert_eq!(p2c(3, 0, 0, |i| costs[i]), Some(1));
        // a = 2, b = 1
        assert_eq!(p2c(3, 2, 1, |i| costs[i]), Some(1));
        for r1 in 0..20 {
            for r2 in 0..20 {
                let i = p2c(3, r1, r2, |i| costs[i]).unwrap();
                assert_ne!(i, 2, "the most expensive never wins a pair");
            }
        }
    }
}
