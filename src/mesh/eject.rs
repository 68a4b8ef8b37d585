//! Passive health (outlier ejection): a peer that fails `threshold`
//! consecutive forwarded requests is ejected for a backoff that grows with
//! each ejection (base × times ejected, capped, with jitter, as Envoy
//! does), then gets a single probe request: success restores it, failure
//! ejects it again for longer.
//!
//! A 429/503 from a peer is load, not failure and not success: callers do
//! not record it here.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectionPolicy {
    pub(crate) threshold: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            threshold: 7,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Ejected {
        until: Instant,
    },
    /// One request is out to test the peer.
    Probing,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Outlier {
    state: State,
    consecutive_failures: u32,
    times_ejected: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            state: State::Active,
            consecutive_failures: 0,
            times_ejected: 0,
        }
    }
}

impl Outlier {
    /// May a request go to this peer now? An ejected peer whose backoff has
    /// ended admits exactly one probe request.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        match self.state {
            State::Active => true,
            State::Probing => false,
            State::Ejected { until } if now >= until => {
                self.state = State::Probing;
                true
            }
            State::Ejected { .. } => false,
        }
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        match self.state {
            State::Active => false,
            State::Probing => true,
            State::Ejected { until } => now < until,
        }
    }

    pub(crate) fn success(&mut self) {
        self.consecutive_failures = 0;
        if self.state == State::Probing {
            self.state = State::Active;
        }
    }

    /// Records a failure; `jitter` in 0..1 spreads re-probes of many edges.
    /// Returns the ejection time if this failure ejected the peer.
    pub(crate) fn failure(
        &mut self,
        p: EjectionPolicy,
        now: Instant,
        jitter: f64,
    ) -> Option<Duration> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let eject = match self.state {
            State::Probing => true,
            State::Active => self.consecutive_failures >= p.threshold.max(1),
            State::Ejected { .. } => false,
        };
        if !eject {
            return None;
        }
        self.times_ejected = self.times_ejected.saturating_add(1);
        let backoff = p
            .base
            .saturating_mul(self.times_ejected)
            .min(p.max.max(p.base));
        let backoff = backoff.mul_f64(1.0 + 0.1 * jitter.clamp(0.0, 1.0));
        self.state = State::Ejected {
            until: now + backoff,
        };
        Some(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eject_probe_restore() {
        let p = EjectionPolicy {
            threshold: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
        };
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.failure(p, t0, 0.0), None);
        assert_eq!(o.failure(p, t0, 0.0), None);
        assert_eq!(o.failure(p, t0, 0.0), Some(Duration::from_secs(10)));
        assert!(!o.admit(t0 + Duration::from_secs(9)));
        // One probe after the backoff, not two.
        assert!(o.admit(t0 + Duration::from_secs(10)));
        assert!(!o.admit(t0 + Duration::from_secs(10)));
        // The probe fails: ejected again, for longer.
        assert_eq!(o.failure(p, t0, 0.0), Some(Duration::from_secs(20)));
        assert!(o.admit(t0 + Duration::from_secs(20)));
        assert_eq!(
            o.failure(p, t0, 0.0),
            Some(Duration::from_secs(25)),
            "capped"
        );
        assert!(o.admit(t0 + Duration::from_secs(25)));
        o.success();
        assert!(o.admit(t0 + Duration::from_secs(25)));
        assert!(!o.is_ejected(t0 + Duration::from_secs(25)));
    }
}
