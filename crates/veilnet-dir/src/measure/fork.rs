//! Proof that a measurer forked a period's report: two reports it signed
//! for one period, neither of which extends the other.
//!
//! An honest measurer's reports of a period form one chain: each later one
//! is published no earlier and observes every relay the one before did,
//! and one more ([`extends`]). Nodes keep the latest of the chain, so they
//! all end with the same report. Two reports off one chain would split
//! them, each keeping the one it saw first; so, as with a relay's two
//! descriptors of one sequence number ([`crate::Equivocation`]), every node
//! that sees both keeps both and passes both on, and while the proof lasts
//! the measurer's reports do not count and the relay weighs nothing. The
//! end is set by the period, not by when a node saw the pair: the proof
//! lasts as long as the period's reports are kept
//! ([`MeasureParams::first_kept`]), the same on every node.

use libp2p::PeerId;

use super::{MeasureParams, Report, MAX_WINDOW_EPOCHS};
use crate::descriptor::DescriptorDigest;

/// Most forks a directory keeps; beyond, the one that ends first is
/// dropped (each needs a listed relay, so this is reached only by a
/// directory's worth of them).
pub const MAX_FORKS: usize = crate::MAX_NODES;

/// Whether `later` may replace `earlier` as a measurer's report of one
/// period: published no earlier, observing every relay `earlier` did, and
/// more.
pub fn extends(later: &Report, earlier: &Report) -> bool {
    later.published >= earlier.published
        && later.observations.len() > earlier.observations.len()
        && earlier
            .observations
            .iter()
            .all(|e| later.observations.iter().any(|o| o.target == e.target))
}

/// Two reports a measurer signed for one period, neither extending the
/// other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFork {
    /// The measurer.
    pub measurer: PeerId,
    /// The period both are for.
    pub epoch: u64,
    /// Both reports as signed, the one with the lower digest first.
    pub records: [Vec<u8>; 2],
    /// Their digests, in the same order.
    pub digests: [DescriptorDigest; 2],
    /// Their `published`, in the same order.
    pub published: [u64; 2],
    /// When this node saw the second (unix seconds).
    pub detected: u64,
    /// When the proof, and the measurer's exclusion, end (unix seconds):
    /// when its period leaves the reports kept.
    pub expires: u64,
}

impl ReportFork {
    /// The proof made of two reports (record, digest, report) of one
    /// measurer and period.
    pub(crate) fn of(
        params: &MeasureParams,
        a: (&[u8], DescriptorDigest, &Report),
        b: (&[u8], DescriptorDigest, &Report),
        now: u64,
    ) -> Self {
        let (first, second) = if a.1 < b.1 { (a, b) } else { (b, a) };
        let epoch = params.epoch(first.2.published);
        let kept = 2 * (u64::from(params.window_epochs.clamp(1, MAX_WINDOW_EPOCHS)) - 1);
        ReportFork {
            measurer: first.2.measurer,
            epoch,
            records: [first.0.to_vec(), second.0.to_vec()],
            digests: [first.1, second.1],
            published: [first.2.published, second.2.published],
            detected: now,
            expires: epoch
                .saturating_add(kept + 1)
                .saturating_mul(params.period_secs.max(1)),
        }
    }

    /// Whether the proof has run out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }
}
