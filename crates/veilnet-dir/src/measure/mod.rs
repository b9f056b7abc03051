//! Peer-measured bandwidth and reachability (sans-IO).
//!
//! Relays measure each other and publish what they saw as signed
//! [`Report`]s, one per measurer and period, reconciled like descriptors.
//! Who measures whom is not the measurer's choice: in period `e`, measurer
//! `m` is assigned relay `t` when a hash of `(e, t, m)` falls below
//! `k / (n - 1)` (`k` = [`MeasureParams::measurers_per_target`], `n` the
//! eligible measurers), so each relay gets about `k` measurers per period,
//! drawn afresh each period, and a Sybil's measurers are assigned to the
//! honest and the Sybil relays alike. Every node checks the assignment of
//! each observation it counts (with the threshold widened by
//! [`ASSIGNMENT_SLACK_PERCENT`], since views differ a little) and ignores
//! the rest.
//!
//! What a node concludes, per relay ([`Measured`], from the latest
//! observation of each measurer over the last
//! [`MeasureParams::window_epochs`] periods):
//!
//! * **reachable** when at least [`MeasureParams::min_measurers`] distinct
//!   measurers reached it, unless in the latest period it was observed at
//!   least that many failed to and they outnumber those that reached it;
//! * **bandwidth**: the median of what those that reached it measured,
//!   each figure clamped to [`MeasureParams::max_rate`] (no honest
//!   measurement goes faster), so raising it above every honest figure
//!   takes more than half its measurers, and even then it is at most
//!   `max_rate`;
//! * **since**: the `min_measurers`-th most recent of their claims of when
//!   they first reached it (each measurer's own), so dating it earlier
//!   takes that many liars; its weight ramps up from [`RAMP_FLOOR_PERCENT`]
//!   to the full figure over [`MeasureParams::ramp_secs`] from then.
//!
//! The weight ([`crate::weight`]) is the measured figure capped by the
//! advertised one, times the ramp; a relay that is not reachable weighs 0.

mod awaiting;
mod fork;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::PeerId;
use sha2::{Digest as _, Sha256};

pub use awaiting::{
    Awaiting, AWAITING_SECS, MAX_AWAITING, MAX_AWAITING_BYTES, MAX_AWAITING_PER_SENDER,
};
pub use fork::{extends, is_fork, ReportFork, FORK_FORMAT, FORK_TAG, MAX_FORKS, MAX_FORK_BYTES};
pub use report::{
    claimed_measurer, is_report, Observation, Report, ReportError, VerifiedReport,
    MAX_OBSERVATIONS, MAX_REPORTED_RATE, MAX_REPORT_BYTES, REPORT_CONTEXT, REPORT_FORMAT,
    REPORT_TAG,
};

use crate::descriptor::{DescriptorDigest, MAX_CLOCK_SKEW};

/// How much wider than the measurers' own threshold the assignment check
/// of a counted observation is, in percent: measurers and verifiers count
/// the eligible measurers in slightly different views. Kept small, since a
/// dishonest measurer reports everything the wider threshold lets it (an
/// attacker's measurers make this much more of the observations than
/// their number).
pub const ASSIGNMENT_SLACK_PERCENT: u32 = 125;
/// A relay first measured just now gets this percentage of its measured
/// weight; the rest comes over [`MeasureParams::ramp_secs`].
pub const RAMP_FLOOR_PERCENT: u64 = 10;
/// Rounds of [`Measurements::assess`]: each takes the word of the keys the
/// round before found mostly unreached away.
const EARN_ROUNDS: usize = 4;
/// Most periods a directory keeps reports for.
pub const MAX_WINDOW_EPOCHS: u32 = 8;

/// The network-wide measurement parameters: every node of one network must
/// use the same period length (it decides the assignment), and should use
/// the same of the rest (they decide who is usable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureParams {
    /// Length of a measurement period, seconds.
    pub period_secs: u64,
    /// Measurers assigned to each relay per period.
    pub measurers_per_target: u32,
    /// Periods whose reports count (at most [`MAX_WINDOW_EPOCHS`]).
    pub window_epochs: u32,
    /// Distinct measurers that must have reached a relay before it is
    /// usable.
    pub min_measurers: u32,
    /// How long a newcomer's weight takes to ramp up to its measured
    /// figure, seconds (0: at once).
    pub ramp_secs: u64,
    /// Whether weights follow the measurements (a relay nobody reached
    /// weighs 0). Off: reports are kept and shown, weights are the
    /// advertised bandwidths (private test networks).
    pub required: bool,
    /// The fastest a measurement transfers (bytes/s): honest figures are
    /// never above it, so every figure counted is clamped to it.
    pub max_rate: u64,
}

impl MeasureParams {
    /// The public network's: each relay measured by 3 relays every 12 h,
    /// reports kept for 2 days, usable after 3 measurers reached it, full
    /// weight after 3 days (Tor gives new relays little traffic for days).
    pub const PUBLIC: MeasureParams = MeasureParams {
        period_secs: 12 * 60 * 60,
        measurers_per_target: 3,
        window_epochs: 4,
        min_measurers: 3,
        ramp_secs: 3 * 24 * 60 * 60,
        required: true,
        max_rate: 20_000_000,
    };

    /// The period `unix` falls in.
    pub fn epoch(&self, unix: u64) -> u64 {
        unix / self.period_secs.max(1)
    }

    fn window(&self) -> u64 {
        u64::from(self.window_epochs.clamp(1, MAX_WINDOW_EPOCHS))
    }

    /// The oldest period whose reports count at `now`.
    pub fn first_epoch(&self, now: u64) -> u64 {
        self.epoch(now).saturating_sub(self.window() - 1)
    }

    /// The oldest period whose reports are kept at `now`: a window before
    /// the window, from which the measurers counted in the window's own
    /// periods are decided ([`Measurements::assess`]).
    pub fn first_kept(&self, now: u64) -> u64 {
        self.epoch(now).saturating_sub(2 * (self.window() - 1))
    }
}

/// Whether `measurer` is assigned `target` in period `epoch` when there are
/// `eligible` measurers, with the threshold at `percent` of the nominal
/// `k / (eligible - 1)` (measurers schedule with 100, verifiers check with
/// [`ASSIGNMENT_SLACK_PERCENT`]).
pub fn assigned(
    epoch: u64,
    measurer: &PeerId,
    target: &PeerId,
    eligible: usize,
    k: u32,
    percent: u32,
) -> bool {
    measurer != target && below(draw(epoch, measurer, target), eligible, k, percent)
}

/// The pseudo-random draw that decides whether `measurer` measures
/// `target` in `epoch` (the first 8 bytes of a SHA-256).
fn draw(epoch: u64, measurer: &PeerId, target: &PeerId) -> u64 {
    let mut h = Sha256::new();
    h.update(b"veilnet measurement assignment v1\0");
    h.update(epoch.to_be_bytes());
    h.update(target.to_bytes());
    h.update(measurer.to_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// Whether `draw` falls under the threshold of [`assigned`].
fn below(draw: u64, eligible: usize, k: u32, percent: u32) -> bool {
    // The target does not measure itself: n - 1 candidates.
    let candidates = eligible.saturating_sub(1).max(1) as u128 * 100;
    let num = u128::from(k) * u128::from(percent);
    // draw / 2^64 < num / candidates
    num >= candidates || u128::from(draw) * candidates < num << 64
}

/// What a node concludes about one relay from the reports it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The bandwidth the measurers that reached it saw (bytes/s): the
    /// median of their figures, each clamped to the network's `max_rate`.
    pub bandwidth: u64,
    /// Whether it counts as reachable (see the module docs).
    pub reachable: bool,
    /// The `min_measurers`-th most recent of the measurers' "first
    /// reached" claims (unix seconds).
    pub since: u64,
    /// Distinct measurers whose latest observation reached it.
    pub reached_by: usize,
    /// Distinct measurers whose latest observation counts.
    pub observed_by: usize,
}

impl Measured {
    /// The share of its measured weight a relay gets at `now`, in percent:
    /// [`RAMP_FLOOR_PERCENT`] when first measured, 100 after `ramp_secs`.
    pub fn ramp_percent(&self, now: u64, ramp_secs: u64) -> u64 {
        if ramp_secs == 0 {
            return 100;
        }
        let age = now.saturating_sub(self.since);
        let grown = (u128::from(age) * 100 / u128::from(ramp_secs)).min(100) as u64;
        grown.max(RAMP_FLOOR_PERCENT)
    }
}

#[derive(Debug, Clone)]
struct Stored {
    report: Report,
    record: Vec<u8>,
    digest: DescriptorDigest,
    /// Each observation's assignment [`draw`] (`None` for one of the
    /// measurer itself), computed once when the report is stored.
    draws: Vec<Option<u64>>,
}

/// The reports a directory holds: per measurer, the latest of each period
/// in the window, and the proofs of measurers that forked a period's
/// report ([`ReportFork`]). Bounded by the directory: only listed relays'
/// reports are taken, at most [`MAX_WINDOW_EPOCHS`] each, and at most
/// [`MAX_FORKS`] proofs.
#[derive(Debug, Clone)]
pub struct Measurements {
    params: MeasureParams,
    reports: BTreeMap<PeerId, BTreeMap<u64, Stored>>,
    digests: BTreeMap<DescriptorDigest, (PeerId, u64)>,
    forks: BTreeMap<PeerId, ReportFork>,
    /// The digests of the forks' proofs and of the reports in them.
    fork_digests: BTreeMap<DescriptorDigest, PeerId>,
}

/// What [`Measurements::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportInserted {
    /// A report for a period of this measurer we had none for.
    New,
    /// A later report replaced the one held for its period.
    Updated,
    /// Exactly the report held.
    Unchanged,
    /// It and the report held for its period do not extend one another:
    /// both are kept as a [`ReportFork`], and the measurer's reports no
    /// longer count.
    Forked,
}

impl Measurements {
    /// An empty store for a network with `params`.
    pub fn new(params: MeasureParams) -> Self {
        Self {
            params,
            reports: BTreeMap::new(),
            digests: BTreeMap::new(),
            forks: BTreeMap::new(),
            fork_digests: BTreeMap::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &MeasureParams {
        &self.params
    }

    /// The earliest `published` of the reports held that are published
    /// after `cut`, if any.
    pub fn earliest_after(&self, cut: u64) -> Option<u64> {
        self.reports
            .values()
            .flat_map(|per| per.values())
            .map(|s| s.report.published)
            .filter(|&p| p > cut)
            .min()
    }

    /// Whether the report with this digest is held (one of a fork's too).
    pub fn holds(&self, digest: &DescriptorDigest) -> bool {
        self.digests.contains_key(digest) || self.fork_digests.contains_key(digest)
    }

    /// Whether a held report's digest begins with `prefix`.
    pub fn holds_prefix(&self, prefix: &[u8]) -> bool {
        let range = crate::directory::prefix_range(prefix);
        self.digests.range(range.clone()).next().is_some()
            || self.fork_digests.range(range).next().is_some()
    }

    /// The record of the held report (or fork proof) with this digest.
    pub fn record(&self, digest: &DescriptorDigest) -> Option<&[u8]> {
        if let Some(m) = self.fork_digests.get(digest) {
            let f = self.forks.get(m)?;
            if f.digest == *digest {
                return Some(&f.record);
            }
            let i = f.digests.iter().position(|d| d == digest)?;
            return Some(&f.records[i]);
        }
        let (m, e) = self.digests.get(digest)?;
        Some(&self.reports.get(m)?.get(e)?.record)
    }

    /// The [`RecordKey`](crate::RecordKey)s of every held report and fork
    /// proof (so proofs are passed on), of its `published` (a proof's: the
    /// later report's) and digest ([`record_key`](crate::record_key)).
    pub fn keys(&self) -> impl Iterator<Item = crate::RecordKey> + '_ {
        self.reports
            .values()
            .flat_map(|per| per.values())
            .map(|s| crate::record_key(true, s.report.published, s.digest))
            .chain(
                self.forks
                    .values()
                    .map(|f| crate::record_key(true, f.published[0].max(f.published[1]), f.digest)),
            )
    }

    /// Number of held reports and fork proofs.
    pub fn len(&self) -> usize {
        self.digests.len() + self.forks.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The measurers that forked a report, with the proof, in peer id
    /// order.
    pub fn forks(&self) -> impl Iterator<Item = &ReportFork> {
        self.forks.values()
    }

    /// Whether `measurer` forked a report whose proof still lasts.
    pub fn forked(&self, measurer: &PeerId) -> bool {
        self.forks.contains_key(measurer)
    }

    /// The held reports of `measurer`, oldest period first.
    pub fn reports_of(&self, measurer: &PeerId) -> impl Iterator<Item = &Report> {
        self.reports
            .get(measurer)
            .into_iter()
            .flat_map(|r| r.values().map(|s| &s.report))
    }

    /// Stores a verified report at `now`. The caller has checked that the
    /// measurer is a relay it lists. Refused: a report signed more than
    /// [`MAX_CLOCK_SKEW`] ahead of `now` or for a period before the window
    /// ([`ReportError::OutOfWindow`]), one that the report held for its
    /// period extends (an earlier one of its chain:
    /// [`ReportError::Superseded`]), and any of a measurer whose fork's
    /// proof lasts ([`ReportError::Forked`]). One that neither extends the
    /// held one nor is extended by it is kept with it as a [`ReportFork`].
    pub fn insert(&mut self, v: VerifiedReport, now: u64) -> Result<ReportInserted, ReportError> {
        let p = self.params;
        let measurer = v.report.measurer;
        let epoch = p.epoch(v.report.published);
        // At most the next period ahead, whatever the skew allows: a
        // measurer's reports for periods to come would otherwise push its
        // kept ones out.
        let (first, last) = (
            p.first_kept(now),
            p.epoch(now.saturating_add(MAX_CLOCK_SKEW))
                .min(p.epoch(now) + 1),
        );
        if v.report.published > now.saturating_add(MAX_CLOCK_SKEW) || epoch < first {
            return Err(ReportError::OutOfWindow {
                measurer,
                epoch,
                first,
                last,
            });
        }
        if let Some(f) = self.forks.get(&measurer) {
            if f.digests.contains(&v.digest) {
                return Ok(ReportInserted::Unchanged);
            }
            return Err(ReportError::Forked {
                measurer,
                epoch,
                fork_epoch: f.epoch,
            });
        }
        let per = self.reports.entry(measurer).or_default();
        let mut result = ReportInserted::New;
        if let Some(held) = per.get(&epoch) {
            if held.digest == v.digest {
                return Ok(ReportInserted::Unchanged);
            }
            // A measurer republishes its period's report as it measures
            // more: each later report keeps every relay the one before
            // observed and adds one, so a measurer has at most
            // MAX_OBSERVATIONS reports a period to pass around.
            if extends(&held.report, &v.report) {
                return Err(ReportError::Superseded(measurer));
            }
            if !extends(&v.report, &held.report) {
                let fork = ReportFork::of(
                    &p,
                    (&held.record, held.digest, &held.report),
                    (&v.record, v.digest, &v.report),
                    now,
                );
                self.keep_fork(fork);
                return Ok(ReportInserted::Forked);
            }
            self.digests.remove(&held.digest);
            result = ReportInserted::Updated;
        }
        let per = self.reports.entry(measurer).or_default();
        self.digests.insert(v.digest, (measurer, epoch));
        let draws = v
            .report
            .observations
            .iter()
            .map(|o| (o.target != measurer).then(|| draw(epoch, &measurer, &o.target)))
            .collect();
        per.insert(
            epoch,
            Stored {
                report: v.report,
                record: v.record,
                digest: v.digest,
                draws,
            },
        );
        // Only the window's periods are kept.
        while per.len() > 2 * MAX_WINDOW_EPOCHS as usize {
            if let Some((_, old)) = per.pop_first() {
                self.digests.remove(&old.digest);
            }
        }
        Ok(result)
    }

    /// Drops reports of periods before the window at `now`, those of
    /// measurers `keep` refuses (no longer listed), and forks whose proof
    /// has run out; returns whether any went.
    pub fn expire(&mut self, now: u64, keep: impl Fn(&PeerId) -> bool) -> bool {
        let first = self.params.first_kept(now);
        let before = self.len();
        let fork_digests = &mut self.fork_digests;
        self.forks.retain(|_, f| {
            let lasts = !f.expired(now);
            if !lasts {
                for d in f.digests.iter().chain([&f.digest]) {
                    fork_digests.remove(d);
                }
            }
            lasts
        });
        let digests = &mut self.digests;
        self.reports.retain(|m, per| {
            let listed = keep(m);
            per.retain(|e, s| {
                let k = listed && *e >= first;
                if !k {
                    digests.remove(&s.digest);
                }
                k
            });
            !per.is_empty()
        });
        self.len() != before
    }

    /// Keeps `fork` in place of its measurer's reports, which no longer
    /// count; beyond [`MAX_FORKS`], the proof that ends first goes.
    fn keep_fork(&mut self, fork: ReportFork) {
        if let Some(per) = self.reports.remove(&fork.measurer) {
            for s in per.values() {
                self.digests.remove(&s.digest);
            }
        }
        // A lower proof against the same measurer takes its place; only a
        // new measurer's may push another out.
        if let Some(old) = self.forks.remove(&fork.measurer) {
            self.forget_fork(&old);
        }
        if self.forks.len() >= MAX_FORKS {
            let first = self
                .forks
                .values()
                .min_by_key(|f| (f.expires, f.measurer))
                .map(|f| f.measurer);
            if let Some(old) = first.and_then(|m| self.forks.remove(&m)) {
                self.forget_fork(&old);
            }
        }
        for d in fork.digests.into_iter().chain([fork.digest]) {
            self.fork_digests.insert(d, fork.measurer);
        }
        self.forks.insert(fork.measurer, fork);
    }

    fn forget_fork(&mut self, f: &ReportFork) {
        for d in f.digests.iter().chain([&f.digest]) {
            self.fork_digests.remove(d);
        }
    }

    /// Stores a fork proof ([`ReportFork::decode`]) at `now`; the caller
    /// has checked that the measurer is a relay it lists. Refused: one of a
    /// period outside the window ([`ReportError::OutOfWindow`]), and one
    /// with a higher digest than the proof held against the measurer
    /// ([`ReportError::Superseded`]: every node keeps the lowest, so all
    /// keep the same).
    pub fn insert_fork(
        &mut self,
        fork: ReportFork,
        now: u64,
    ) -> Result<ReportInserted, ReportError> {
        let p = self.params;
        let (first, last) = (
            p.first_kept(now),
            p.epoch(now.saturating_add(MAX_CLOCK_SKEW))
                .min(p.epoch(now) + 1),
        );
        if fork.epoch < first || fork.epoch > last {
            return Err(ReportError::OutOfWindow {
                measurer: fork.measurer,
                epoch: fork.epoch,
                first,
                last,
            });
        }
        if let Some(held) = self.forks.get(&fork.measurer) {
            if held.digest == fork.digest {
                return Ok(ReportInserted::Unchanged);
            }
            if held.digest < fork.digest {
                return Err(ReportError::Superseded(fork.measurer));
            }
        }
        self.keep_fork(fork);
        Ok(ReportInserted::Forked)
    }

    /// The measurers whose reports count at `now` among `candidates`
    /// (the relays that carry weight by address), and what their reports
    /// say about each relay observed.
    ///
    /// **Who counts.** A candidate earns its place in a period when, over
    /// the window of periods before it (reports are kept for a window
    /// before the window, [`MeasureParams::first_kept`]), most of its
    /// observers reached it and at least `min_measurers` did. An observer
    /// is a measurer that counted in the period of its observation, and
    /// whose word still counts: it loses it when most of its own observers
    /// found nobody at its address (decided over [`EARN_ROUNDS`] rounds,
    /// afresh each round, so a relay slandered by keys that lose their
    /// word gets its own back). A descriptor that lists an address its
    /// owner does not hold is never reached there, so it does not measure:
    /// to measure, a key has to be reached first, and to outvote the
    /// honest measurers such keys would have to outnumber them. In the
    /// oldest period kept, and whenever no more than `min_measurers`
    /// relays would count (a new network, or reports not yet fetched),
    /// every candidate counts, as no measurement could start otherwise.
    ///
    /// **What they say.** Only observations by measurers counted now and
    /// in the observation's period count, each checked for its assignment
    /// ([`assigned`] with [`ASSIGNMENT_SLACK_PERCENT`]) over the number of
    /// measurers counted in its period: the number the measurers drew
    /// with. The latest observation of each measurer counts.
    ///
    /// Reports published after `now` do not count: a directory assesses at
    /// its cut ([`crate::Cut`]) with the reports every node has by then.
    ///
    /// Work: one pass to number the peers and flatten the kept reports,
    /// then passes over plain integers (bounded by the reports kept: at
    /// most `2 × window` periods of 16 observations per listed measurer).
    pub fn assess(&self, candidates: &HashSet<PeerId>, now: u64) -> Assessment {
        let p = self.params;
        let flat = Flat::of(self, candidates, now);
        let cands = flat.candidates;
        let min = p.min_measurers.max(1) as usize;
        let periods = flat.periods;
        // counted[e][m]: measurer m (a candidate index) counted in period
        // first + e.
        let mut counted: Vec<Vec<bool>> = vec![vec![true; cands]; periods];
        // sizes[e]: how many counted in period e (what its assignment was
        // drawn over), kept beside `counted`.
        let mut sizes: Vec<usize> = vec![cands; periods];
        for e in 1..periods {
            let from = e.saturating_sub(p.window() as usize);
            let seen = flat.latest(from..e, &counted, &sizes, |_| true);
            counted[e] = earned_by(&seen, cands, min);
            sizes[e] = counted[e].iter().filter(|x| **x).count();
        }
        let now_counted = counted.last().cloned().unwrap_or_default();
        let window_from = periods.saturating_sub(p.window() as usize);
        let seen = flat.latest(window_from..periods, &counted, &sizes, |m| {
            now_counted.get(m as usize).copied().unwrap_or(false)
        });
        // Grouped by target (seen is sorted by target, then measurer).
        let mut measured = HashMap::new();
        let mut at = 0;
        while at < seen.len() {
            let t = seen[at].target;
            let end = at + seen[at..].iter().take_while(|s| s.target == t).count();
            let obs: Vec<(u64, Observation)> = seen[at..end]
                .iter()
                .map(|s| (s.epoch, flat.obs[s.obs].o))
                .collect();
            measured.insert(flat.peers[t as usize], conclude(&p, obs.iter(), now));
            at = end;
        }
        // Settled once most candidates have a report in the window: a
        // node that has fetched only some (a fresh start, or a peer that
        // served it only some) would otherwise weigh those most.
        let window = p.first_epoch(now)..=p.epoch(now);
        let reporting = self
            .reports
            .iter()
            .filter(|(m, per)| {
                candidates.contains(m)
                    && per
                        .range(window.clone())
                        .any(|(_, s)| s.report.published <= now)
            })
            .count();
        Assessment {
            settled: cands > 0 && 2 * reporting >= cands,
            measurers: (0..cands)
                .filter(|&m| now_counted.get(m).copied().unwrap_or(false))
                .map(|m| flat.peers[m])
                .collect(),
            measured,
        }
    }

    /// The measurers counted at `now` among `candidates` (see
    /// [`Measurements::assess`]).
    pub fn earned(&self, candidates: &HashSet<PeerId>, now: u64) -> HashSet<PeerId> {
        self.assess(candidates, now).measurers
    }
}

/// What [`Measurements::assess`] concludes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Whether at least half the candidates have a report in the window:
    /// until then a node knows too little to choose long-lived guards.
    pub settled: bool,
    /// The measurers counted now.
    pub measurers: HashSet<PeerId>,
    /// What their reports say about each relay they observed.
    pub measured: HashMap<PeerId, Measured>,
}

/// One observation of the kept reports, its peers numbered.
struct FlatObs {
    /// Period, from the oldest kept (0).
    period: usize,
    epoch: u64,
    measurer: u32,
    target: u32,
    draw: u64,
    o: Observation,
}

/// The latest counted observation of a measurer of a target.
#[derive(Clone, Copy)]
struct Seen {
    target: u32,
    measurer: u32,
    epoch: u64,
    reached: bool,
    /// Index into [`Flat::obs`].
    obs: usize,
}

/// The kept reports of candidate measurers, flattened for one assessment:
/// peers numbered (candidates first, `0..candidates`), observations in
/// period order.
struct Flat {
    peers: Vec<PeerId>,
    candidates: usize,
    periods: usize,
    k: u32,
    obs: Vec<FlatObs>,
}

impl Flat {
    fn of(m: &Measurements, candidates: &HashSet<PeerId>, now: u64) -> Flat {
        let p = m.params;
        let first = p.first_kept(now);
        let current = p.epoch(now);
        // Sorted, so that every node numbers them alike (and ties in
        // grouping fall the same way).
        let mut peers: Vec<PeerId> = candidates.iter().copied().collect();
        peers.sort_unstable();
        let mut ix: HashMap<u64, u32> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (peer_key(p), i as u32))
            .collect();
        let n_candidates = peers.len();
        // Targets whose hashing key another peer numbered already has: a
        // report may name any peer id, and a SHA-256 one can end in any
        // bytes, so one made to share a relay's would count as the relay.
        let mut lookalikes: HashMap<PeerId, u32> = HashMap::new();
        let mut obs = Vec::new();
        for (measurer, per) in &m.reports {
            // Only candidates measure (indices below `n_candidates`; a
            // listed relay over its address cap may also be a target).
            let Some(mi) = ix
                .get(&peer_key(measurer))
                .copied()
                .filter(|&i| (i as usize) < n_candidates && peers[i as usize] == *measurer)
            else {
                continue;
            };
            // Reports of a period still to come (a clock ahead of ours)
            // wait for it.
            for (&epoch, stored) in per.range(first..=current) {
                // Published after `now` (a directory's cut): counts later.
                if stored.report.published > now {
                    continue;
                }
                for (o, d) in stored.report.observations.iter().zip(&stored.draws) {
                    let Some(draw) = *d else {
                        continue;
                    };
                    let next = peers.len() as u32;
                    let mut ti = *ix.entry(peer_key(&o.target)).or_insert_with(|| {
                        peers.push(o.target);
                        next
                    });
                    if peers[ti as usize] != o.target {
                        ti = *lookalikes.entry(o.target).or_insert_with(|| {
                            peers.push(o.target);
                            next
                        });
                    }
                    obs.push(FlatObs {
                        period: (epoch - first) as usize,
                        epoch,
                        measurer: mi,
                        target: ti,
                        draw,
                        o: *o,
                    });
                }
            }
        }
        obs.sort_unstable_by_key(|f| f.period);
        Flat {
            peers,
            candidates: n_candidates,
            periods: (current - first + 1) as usize,
            k: p.measurers_per_target,
            obs,
        }
    }

    /// Per (target, measurer), sorted so: the latest observation in
    /// `periods` by a measurer that counted in its period (and that `keep`
    /// keeps) and was assigned the target among those counted then.
    fn latest(
        &self,
        periods: std::ops::Range<usize>,
        counted: &[Vec<bool>],
        sizes: &[usize],
        keep: impl Fn(u32) -> bool,
    ) -> Vec<Seen> {
        let mut seen: Vec<Seen> = self
            .obs
            .iter()
            .enumerate()
            .filter(|(_, f)| periods.contains(&f.period))
            .filter(|(_, f)| counted[f.period][f.measurer as usize] && keep(f.measurer))
            .filter(|(_, f)| below(f.draw, sizes[f.period], self.k, ASSIGNMENT_SLACK_PERCENT))
            .map(|(i, f)| Seen {
                target: f.target,
                measurer: f.measurer,
                epoch: f.epoch,
                reached: f.o.reached,
                obs: i,
            })
            .collect();
        // Periods ascend within each pair after a stable sort: keep the
        // last of each run.
        seen.sort_by_key(|s| (s.target, s.measurer));
        let mut out: Vec<Seen> = Vec::with_capacity(seen.len());
        for s in seen {
            match out.last_mut() {
                Some(l) if l.target == s.target && l.measurer == s.measurer => *l = s,
                _ => out.push(s),
            }
        }
        out
    }
}

/// A peer's number for hashing: the last 8 bytes of its multihash digest
/// (of an ed25519 key, the key's own last bytes). Hashing a `PeerId`
/// itself encodes it afresh each time, which dominated an assessment; two
/// ed25519 keys that share these bytes would take 2^64 tries to make, but
/// a report may name any peer id, so [`Flat::of`] checks the peer behind
/// each number.
fn peer_key(p: &PeerId) -> u64 {
    let d = p.as_ref().digest();
    let mut b = [0u8; 8];
    let n = d.len().min(8);
    b[8 - n..].copy_from_slice(&d[d.len() - n..]);
    u64::from_be_bytes(b)
}

/// Which candidates (`0..candidates`) earned their place by `seen` (see
/// [`Measurements::assess`]).
fn earned_by(seen: &[Seen], candidates: usize, min: usize) -> Vec<bool> {
    let mut rejected = vec![false; candidates];
    let mut earned = vec![false; candidates];
    for _ in 0..EARN_ROUNDS {
        let mut tally = vec![(0usize, 0usize); candidates];
        for s in seen {
            let (t, m) = (s.target as usize, s.measurer as usize);
            if t >= candidates || rejected[m] {
                continue;
            }
            if s.reached {
                tally[t].0 += 1;
            } else {
                tally[t].1 += 1;
            }
        }
        earned = tally.iter().map(|(r, f)| *r >= min && r > f).collect();
        let next: Vec<bool> = tally.iter().map(|(r, f)| f > r).collect();
        if next == rejected {
            break;
        }
        rejected = next;
    }
    if earned.iter().filter(|x| **x).count() > min {
        earned
    } else {
        vec![true; candidates]
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    // The lower median: with two measurers, the smaller figure.
    v[(v.len() - 1) / 2]
}

/// The `n`th most recent of `claims` (`n` from 1), or the oldest if there
/// are fewer: to date a relay's first measurement earlier than the truth,
/// `n` measurers must lie.
fn nth_most_recent(mut claims: Vec<u64>, n: usize) -> u64 {
    if claims.is_empty() {
        return 0;
    }
    claims.sort_unstable_by(|a, b| b.cmp(a));
    claims[n.clamp(1, claims.len()) - 1]
}

fn conclude<'a>(
    p: &MeasureParams,
    obs: impl Iterator<Item = &'a (u64, Observation)>,
    now: u64,
) -> Measured {
    let obs: Vec<&(u64, Observation)> = obs.collect();
    let min = p.min_measurers.max(1) as usize;
    let last = obs.iter().map(|(e, _)| *e).max().unwrap_or(0);
    let (mut ok_last, mut failed_last) = (0usize, 0usize);
    for (e, o) in &obs {
        if *e == last {
            if o.reached {
                ok_last += 1;
            } else {
                failed_last += 1;
            }
        }
    }
    let reached: Vec<&Observation> = obs.iter().map(|(_, o)| o).filter(|o| o.reached).collect();
    // Knocked out only by as many failures in one period as it takes
    // reaches to be usable, and more failures than reaches then: one
    // measurer's word does not take a relay out.
    let failed = failed_last >= min && failed_last > ok_last;
    // And most of those that tried reached it: a key that only its own
    // kind vouches for is not usable while they are fewer than the
    // measurers that found nobody there.
    let reachable = reached.len() >= min && !failed && 2 * reached.len() > obs.len();
    Measured {
        bandwidth: median(
            reached
                .iter()
                .map(|o| o.bandwidth.min(p.max_rate))
                .collect(),
        ),
        reachable,
        since: nth_most_recent(reached.iter().map(|o| o.since.min(now)).collect(), min),
        reached_by: reached.len(),
        observed_by: obs.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_gives_each_relay_about_k_measurers() {
        let peers: Vec<PeerId> = (0..200).map(|_| PeerId::random()).collect();
        let k = 3;
        let mut total = 0;
        for epoch in 0..5 {
            for t in &peers {
                total += peers
                    .iter()
                    .filter(|m| assigned(epoch, m, t, peers.len(), k, 100))
                    .count();
            }
        }
        let per_target = total as f64 / (5.0 * peers.len() as f64);
        assert!(
            (2.5..3.5).contains(&per_target),
            "{per_target} measurers per relay and period"
        );
        // Small networks: everyone measures everyone else.
        assert!(assigned(0, &peers[0], &peers[1], 3, 3, 100));
        assert!(!assigned(0, &peers[0], &peers[0], 3, 3, 100));
        // What a measurer schedules, a verifier accepts.
        for t in &peers[..20] {
            for m in &peers {
                if assigned(7, m, t, 200, 3, 100) {
                    assert!(assigned(7, m, t, 200, 3, ASSIGNMENT_SLACK_PERCENT));
                }
            }
        }
    }

    #[test]
    fn a_first_measured_date_needs_min_measurers_to_move_earlier() {
        assert_eq!(nth_most_recent(vec![], 2), 0);
        assert_eq!(nth_most_recent(vec![1, 500, 600], 2), 500);
        assert_eq!(nth_most_recent(vec![1, 500], 3), 1);
        assert_eq!(nth_most_recent(vec![1, 2, 900], 1), 900);
    }

    #[test]
    fn the_median_is_the_lower_one() {
        assert_eq!(median(vec![]), 0);
        assert_eq!(median(vec![5]), 5);
        assert_eq!(median(vec![9, 5]), 5);
        assert_eq!(median(vec![9, 1, 5]), 5);
        assert_eq!(median(vec![3, 1, 2, 9]), 2);
        // Liars above need more than half.
        assert_eq!(median(vec![1, 2, 3, u64::MAX, u64::MAX]), 3);
    }

    #[test]
    fn the_ramp_grows_from_the_floor_to_full() {
        let m = Measured {
            bandwidth: 1,
            reachable: true,
            since: 1000,
            reached_by: 3,
            observed_by: 3,
        };
        assert_eq!(m.ramp_percent(1000, 100), RAMP_FLOOR_PERCENT);
        assert_eq!(m.ramp_percent(1050, 100), 50);
        assert_eq!(m.ramp_percent(5000, 100), 100);
        assert_eq!(m.ramp_percent(1000, 0), 100);
    }
}
