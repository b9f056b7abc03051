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
//!
//! The proof travels as one record of its own, so that a node that never
//! saw the two reports (one that took a later report extending both first,
//! and so refuses either as an older version) still checks it and finds
//! the same:
//!
//! ```text
//! tag u8 = b'F' | format u8 = 1 | len u16 | report | len u16 | report
//! ```
//!
//! the two report records (as [`super::VerifiedReport`] reads them), the
//! one with the lower digest first, of one measurer and one period, neither
//! extending the other. One measurer has at most one proof held: of two,
//! the one with the lower digest, so every node ends with the same.

use libp2p::PeerId;

use super::{
    MeasureParams, Report, ReportError, VerifiedReport, MAX_REPORT_BYTES, MAX_WINDOW_EPOCHS,
};
use crate::descriptor::{digest, DescriptorDigest};
use crate::reader::Reader;

/// First byte of a proof record.
pub const FORK_TAG: u8 = b'F';
/// The proof format [`ReportFork::of`] writes.
pub const FORK_FORMAT: u8 = 1;
/// Largest proof record.
pub const MAX_FORK_BYTES: usize = 2 + 2 * (2 + MAX_REPORT_BYTES);

/// Whether `record` is a fork proof.
pub fn is_fork(record: &[u8]) -> bool {
    record.first() == Some(&FORK_TAG)
}

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
    /// The proof as it travels (see the module docs).
    pub record: Vec<u8>,
    /// Its digest.
    pub digest: DescriptorDigest,
    /// When this node saw the second (unix seconds).
    pub detected: u64,
    /// When the proof, and the measurer's exclusion, end (unix seconds):
    /// when its period leaves the reports kept.
    pub expires: u64,
}

impl ReportFork {
    /// The proof made of two verified reports of one measurer and period
    /// that do not extend each other (the caller has checked).
    pub(crate) fn of(
        params: &MeasureParams,
        a: (&[u8], DescriptorDigest, &Report),
        b: (&[u8], DescriptorDigest, &Report),
        now: u64,
    ) -> Self {
        let (first, second) = if a.1 < b.1 { (a, b) } else { (b, a) };
        let epoch = params.epoch(first.2.published);
        let kept = 2 * (u64::from(params.window_epochs.clamp(1, MAX_WINDOW_EPOCHS)) - 1);
        let mut record = vec![FORK_TAG, FORK_FORMAT];
        for r in [first.0, second.0] {
            // A report is at most MAX_REPORT_BYTES, far below 2^16.
            record.extend_from_slice(&(r.len() as u16).to_be_bytes());
            record.extend_from_slice(r);
        }
        ReportFork {
            measurer: first.2.measurer,
            epoch,
            records: [first.0.to_vec(), second.0.to_vec()],
            digests: [first.1, second.1],
            published: [first.2.published, second.2.published],
            digest: digest(&record),
            record,
            detected: now,
            expires: epoch
                .saturating_add(kept + 1)
                .saturating_mul(params.period_secs.max(1)),
        }
    }

    /// Reads and checks a proof record (both signatures, the order, one
    /// measurer, neither report extending the other) and makes the proof
    /// for a network with `params`: both must be of one period. Needs no
    /// directory: call it without holding a lock.
    pub fn decode(record: &[u8], params: &MeasureParams, now: u64) -> Result<Self, ReportError> {
        let bad = |reason: String| ReportError::Malformed(format!("fork proof: {reason}"));
        if record.len() > MAX_FORK_BYTES {
            return Err(bad(format!(
                "{} bytes, more than {MAX_FORK_BYTES}",
                record.len()
            )));
        }
        let r = &mut Reader(record);
        if r.u8("tag")? != FORK_TAG {
            return Err(bad("not a fork proof".into()));
        }
        let format = r.u8("format")?;
        if format != FORK_FORMAT {
            return Err(bad(format!("format {format}, expected {FORK_FORMAT}")));
        }
        let mut reports = Vec::with_capacity(2);
        for _ in 0..2 {
            let len = usize::from(r.u16("report length")?);
            reports.push(VerifiedReport::decode(r.take(len, "report")?)?);
        }
        if !r.0.is_empty() {
            return Err(bad(format!("{} bytes after the reports", r.0.len())));
        }
        let (a, b) = (&reports[0], &reports[1]);
        if a.digest >= b.digest {
            return Err(bad("reports not in digest order".into()));
        }
        if a.report.measurer != b.report.measurer {
            return Err(bad("reports of two measurers".into()));
        }
        if params.epoch(a.report.published) != params.epoch(b.report.published) {
            return Err(bad("reports of two periods".into()));
        }
        if extends(&a.report, &b.report) || extends(&b.report, &a.report) {
            return Err(bad("one report extends the other".into()));
        }
        Ok(Self::of(
            params,
            (&a.record, a.digest, &a.report),
            (&b.record, b.digest, &b.report),
            now,
        ))
    }

    /// The measurer a proof record names (the first report's key), before
    /// any check.
    pub fn claimed_measurer(record: &[u8]) -> Option<PeerId> {
        super::claimed_measurer(record.get(4..)?)
    }

    /// Whether the proof has run out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }
}
