//! Health hysteresis for one peer: down after `fall` consecutive failures,
//! up again after `rise` consecutive successes. Pure: callers pass the
//! probe outcomes in; no clock, no I/O.

/// Thresholds (HAProxy's `fall`/`rise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hysteresis {
    pub(crate) fall: u32,
    pub(crate) rise: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { fall: 3, rise: 2 }
    }
}

/// What the prober believes about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerHealth {
    up: bool,
    fails: u32,
    oks: u32,
}

impl Default for PeerHealth {
    /// Before the first probe a peer counts as up, so a fresh edge answers
    /// sensibly at once.
    fn default() -> Self {
        Self {
            up: true,
            fails: 0,
            oks: 0,
        }
    }
}

impl PeerHealth {
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe outcome; returns the new state if it changed.
    pub(crate) fn record(&mut self, ok: bool, h: Hysteresis) -> Option<bool> {
        if ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            if !self.up && self.oks >= h.rise.max(1) {
                self.up = true;
                return Some(true);
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if self.up && self.fails >= h.fall.max(1) {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a string of outcomes ('+' ok, '-' fail) and returns the state
    /// after each as '^' up or 'v' down.
    fn run(outcomes: &str, h: Hysteresis) -> String {
        let mut p = PeerHealth::default();
        outcomes
            .chars()
            .map(|c| {
                p.record(c == '+', h);
                if p.is_up() {
                    '^'
                } else {
                    'v'
                }
            })
            .collect()
    }

    #[test]
    fn fall_and_rise() {
        let h = Hysteresis { fall: 3, rise: 2 };
        assert_eq!(run("--+---++", h), "^^^^^vv^");
        assert_eq!(run("---+-++", h), "^^vvvv^");
        assert_eq!(run("+-+-+-", h), "^^^^^^", "flapping never trips");
    }
}
