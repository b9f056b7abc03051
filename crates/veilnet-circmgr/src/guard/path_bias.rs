//! Path-bias accounting (after Tor proposal 209): per guard, how many
//! circuits were attempted through it and how many were built. A guard that
//! kills the circuits it cannot deanonymise (so that the client retries until
//! it picks a colluding exit) shows up as a guard whose circuits fail far
//! more often than a guard's should.
//!
//! Mechanism only: counters and the verdict they give. What to do about a
//! verdict (log it, stop using the guard) is the guard state's.

use serde::{Deserialize, Serialize};

/// Below this share of circuits built (percent), a guard is worth a notice.
pub const NOTICE_BELOW_PERCENT: u32 = 70;
/// Below this share, a warning.
pub const WARN_BELOW_PERCENT: u32 = 50;
/// Below this share, the guard is flagged and no longer used as a first hop
/// (Tor's `pb_extremepct`).
pub const FLAG_BELOW_PERCENT: u32 = 30;
/// Circuits attempted through a guard before any verdict, by default. Tor
/// uses 150 (`pb_mincircs`); a small network, or a client that builds few
/// circuits, would never get there, and a guard that fails most of 20
/// circuits is already far outside what an honest guard does on a working
/// network.
pub const DEFAULT_MIN_CIRCUITS: u32 = 20;
/// Once this many attempts are counted, both counts are halved, so that old
/// history fades and the counters stay bounded (Tor's `pb_scalecircs`).
pub const SCALE_AT: u32 = 300;

/// When a guard's counts give a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathBiasParams {
    /// Attempts needed before any verdict (at least 1; at most half of
    /// [`SCALE_AT`], so that scaling never takes a guard below it again).
    pub min_circuits: u32,
}

impl Default for PathBiasParams {
    fn default() -> Self {
        Self {
            min_circuits: DEFAULT_MIN_CIRCUITS,
        }
    }
}

impl PathBiasParams {
    fn min(&self) -> u32 {
        self.min_circuits.clamp(1, SCALE_AT / 2)
    }
}

/// What a guard's counts say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fewer attempts than [`PathBiasParams::min_circuits`]: nothing yet.
    TooFew,
    /// At least [`NOTICE_BELOW_PERCENT`] of circuits built.
    Fine,
    /// Below [`NOTICE_BELOW_PERCENT`].
    Notice,
    /// Below [`WARN_BELOW_PERCENT`].
    Warn,
    /// Below [`FLAG_BELOW_PERCENT`]: stop using this guard.
    Flag,
}

/// A guard's circuit counts. Both saturate; `successes <= attempts` always
/// holds (a saved file that says otherwise is corrected on load).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathBias {
    /// Circuits whose build started through this guard (its link was open
    /// and CREATE was sent) and did not fail for a local reason.
    pub attempts: u32,
    /// Of those, circuits built to the last hop.
    pub successes: u32,
}

impl PathBias {
    /// Counts one attempt, built or not; scales both counts down once
    /// [`SCALE_AT`] attempts are reached.
    pub fn record(&mut self, built: bool) {
        self.attempts = self.attempts.saturating_add(1);
        if built {
            self.successes = self.successes.saturating_add(1);
        }
        self.successes = self.successes.min(self.attempts);
        if self.attempts >= SCALE_AT {
            self.attempts /= 2;
            self.successes /= 2;
        }
    }

    /// The verdict of these counts.
    pub fn verdict(&self, params: &PathBiasParams) -> Verdict {
        if self.attempts < params.min() {
            return Verdict::TooFew;
        }
        let percent = u64::from(self.successes.min(self.attempts)) * 100 / u64::from(self.attempts);
        match percent {
            p if p < u64::from(FLAG_BELOW_PERCENT) => Verdict::Flag,
            p if p < u64::from(WARN_BELOW_PERCENT) => Verdict::Warn,
            p if p < u64::from(NOTICE_BELOW_PERCENT) => Verdict::Notice,
            _ => Verdict::Fine,
        }
    }

    /// The counts with `successes` clamped to `attempts` and both scaled as
    /// [`record`](Self::record) would have (for counts read from disk).
    pub(crate) fn sanitized(self) -> Self {
        let mut c = Self {
            attempts: self.attempts,
            successes: self.successes.min(self.attempts),
        };
        while c.attempts >= SCALE_AT {
            c.attempts /= 2;
            c.successes /= 2;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds_after_the_minimum() {
        let p = PathBiasParams { min_circuits: 10 };
        let counts = |attempts, successes| PathBias {
            attempts,
            successes,
        };
        assert_eq!(counts(9, 0).verdict(&p), Verdict::TooFew);
        assert_eq!(counts(10, 0).verdict(&p), Verdict::Flag);
        assert_eq!(counts(10, 2).verdict(&p), Verdict::Flag);
        assert_eq!(counts(10, 3).verdict(&p), Verdict::Warn);
        assert_eq!(counts(10, 5).verdict(&p), Verdict::Notice);
        assert_eq!(counts(10, 7).verdict(&p), Verdict::Fine);
        assert_eq!(counts(10, 10).verdict(&p), Verdict::Fine);
        // a minimum of 0 still needs one attempt; a huge one is capped
        assert_eq!(
            counts(0, 0).verdict(&PathBiasParams { min_circuits: 0 }),
            Verdict::TooFew
        );
        let huge = PathBiasParams {
            min_circuits: u32::MAX,
        };
        assert_eq!(counts(SCALE_AT / 2, 0).verdict(&huge), Verdict::Flag);
    }

    #[test]
    fn counts_scale_and_stay_consistent() {
        let mut c = PathBias::default();
        for i in 0..10_000u32 {
            c.record(i % 4 != 0);
            assert!(c.successes <= c.attempts && c.attempts < SCALE_AT);
        }
        // the rate survives scaling: 75%
        let rate = c.successes * 100 / c.attempts;
        assert!((70..=80).contains(&rate), "{rate}");
        let bad = PathBias {
            attempts: u32::MAX,
            successes: u32::MAX,
        }
        .sanitized();
        assert!(bad.attempts < SCALE_AT && bad.successes <= bad.attempts);
        let bad = PathBias {
            attempts: 3,
            successes: 9,
        }
        .sanitized();
        assert_eq!(bad.successes, 3);
    }
}
