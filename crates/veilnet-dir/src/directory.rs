//! The verified local directory: every descriptor in it passed
//! [`SignedDescriptor::verify`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::cut::Cut;
use crate::descriptor::{
    is_too_old, Descriptor, DescriptorDigest, DescriptorError, SignedDescriptor, Verified,
    MAX_DESCRIPTOR_AGE,
};
use crate::evidence::Equivocation;
use crate::measure::{
    Awaiting, MeasureParams, Measurements, ReportError, ReportInserted, VerifiedReport,
};
use crate::weight::Weights;

/// Most nodes a [`Directory`] holds. A network of 10,000 nodes (5,000
/// relays, the rest clients) at 5 % churn an hour holds about 11,750
/// relay descriptors at steady state: the live relays and those that left
/// in the last day and a half, whose descriptors have not expired
/// (`veilnet-sim`'s `descriptors_held_max`); twice 10,000 leaves room for
/// that network and its departed relays, where 10,000 made every node
/// evict a different few.
pub const MAX_NODES: usize = 20_000;
/// Relays whose highest sequence number a [`Directory`] remembers after
/// their descriptor is gone (expired or removed); the least recently
/// updated are forgotten first.
pub const MAX_SEQ_MARKS: usize = 2 * MAX_NODES;
/// File name of the persisted [`SeqMarks`] in a node's data directory.
pub const SEQ_MARKS_FILE: &str = "seen-seqs.json";
/// Largest [`SEQ_MARKS_FILE`] read.
pub const MAX_SEQ_MARKS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The highest descriptor a directory has accepted from one relay: its
/// sequence number and digest, and when (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqMark {
    /// The relay.
    pub peer: PeerId,
    /// Its highest accepted sequence number.
    pub seq: u64,
    /// The digest of the descriptor that had it.
    #[serde(with = "crate::descriptor::hex_array")]
    pub digest: DescriptorDigest,
    /// When it was accepted.
    pub at: u64,
}

/// What a node keeps of its directory across restarts: the sequence
/// numbers it has seen, so that a relay's old descriptor cannot come back
/// after its successor expired, or after the node restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqMarks {
    /// Format version, 1.
    pub version: u32,
    /// The marks.
    pub marks: Vec<SeqMark>,
}

/// Where a stored record (a descriptor, a measurement report or a fork
/// proof) sits in reconciliation ([`record_key`]): its class, the
/// `published` it carries, then its digest (see `veilnet-discovery`'s
/// `sync`, whose `RecordKey` this is).
pub type RecordKey = (u64, DescriptorDigest);

/// Added to the order of measurement reports and fork proofs: they sort
/// after every descriptor. A record's `published` is below it (unix
/// seconds; the directory refuses times far from its clock).
pub const REPORT_ORDER: u64 = 1 << 62;

/// The [`RecordKey`] of a record: descriptors first, then reports and
/// fork proofs (`report`), each class by the `published` it carries, then
/// by digest. Ordered by time, the records that changed since two nodes
/// last agreed lie together. Descriptors come first because
/// reconciliation hands records over in key order and a report counts
/// only once its measurer's descriptor is held: a node that joins a large
/// network receives the descriptors before the tens of thousands of
/// reports that need them, instead of reports days old ahead of
/// descriptors republished lately, which overflowed what a node keeps
/// waiting ([`measure::Awaiting`](crate::measure::Awaiting)) and were
/// fetched again and again (the simulator at 6,000 nodes: 104 million
/// reports carried in 1.5 h).
pub fn record_key(report: bool, published: u64, digest: DescriptorDigest) -> RecordKey {
    let time = published.min(REPORT_ORDER - 1);
    (if report { REPORT_ORDER | time } else { time }, digest)
}

/// The spans of the key space ([`record_key`]) that hold the records
/// published at or after `since`: those of descriptors and those of
/// reports and fork proofs (see `veilnet-discovery`'s `sync::open_spans`).
pub fn spans_since(since: u64) -> [(RecordKey, Option<RecordKey>); 2] {
    [
        (
            record_key(false, since, [0; 32]),
            Some(record_key(true, 0, [0; 32])),
        ),
        (record_key(true, since, [0; 32]), None),
    ]
}

/// Digests of descriptors a [`Directory`] replaced with a later one that it
/// remembers, apart from the refused (so a peer that gets junk refused
/// cannot flush them): about a day of a 10,000-relay network's
/// republications. A peer that still holds a replaced descriptor offers it
/// until it learns of the new one; remembered, it is not fetched back.
pub const REPLACED_REMEMBERED: usize = 16_384;

/// Digests of refused descriptors a [`Directory`] remembers, so that a
/// peer offering the same bad descriptor again costs a lookup, not a
/// signature check, and reconciliation never asks for it again.
pub const REFUSED_REMEMBERED: usize = 4096;

/// Whether a relay's descriptor (`new_seq`, `new_digest`) replaces the
/// mark remembered for it (`old_seq`, `old_digest`): a higher seq does, and
/// so does the same seq with a lower digest, so every node keeps the same
/// mark whichever arrived first. (Two stored descriptors with the same seq
/// are an [`Equivocation`] instead: the directory keeps both.) The same
/// descriptor does not supersede itself.
pub fn supersedes(
    old_seq: u64,
    old_digest: &DescriptorDigest,
    new_seq: u64,
    new_digest: &DescriptorDigest,
) -> bool {
    new_seq > old_seq || (new_seq == old_seq && new_digest < old_digest)
}

/// What [`Directory::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inserted {
    /// First descriptor for this peer.
    New,
    /// Replaced an older descriptor (lower `seq`).
    Updated,
    /// Exactly the stored descriptor (same seq, same bytes); nothing changed.
    Unchanged,
    /// Another descriptor of the relay with the same seq and other bytes:
    /// both are kept as an [`Equivocation`] and the relay is no longer
    /// listed.
    Equivocated,
}

#[derive(Debug, Clone)]
struct Entry {
    desc: Descriptor,
    signed: SignedDescriptor,
    digest: DescriptorDigest,
    /// The earliest `published` of the relay's descriptors this directory
    /// has held in a row: the relay is in the view of a cut at or after it
    /// (a later update does not take it out mid-slot).
    since: u64,
}

impl From<Verified> for Entry {
    fn from(v: Verified) -> Self {
        Entry {
            since: v.desc.published,
            desc: v.desc,
            signed: v.signed,
            digest: v.digest,
        }
    }
}

/// What [`Directory::hold_awaiting`] did with a measurement record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// It waits for its measurer's descriptor.
    Waits,
    /// Its measurer is listed: nothing kept, store the record now.
    Listed,
    /// Not kept (larger than a record of its kind can be, or its measurer
    /// or the peer that sent it has all its places): refused, not
    /// remembered, as before waiting existed.
    NotKept,
}

/// A bounded store of verified descriptors, one per peer, keyed by peer id.
///
/// Iteration is in peer id order, so path selection with a seeded RNG is
/// reproducible.
#[derive(Debug, Clone)]
pub struct Directory {
    own: PeerId,
    nodes: BTreeMap<PeerId, Entry>,
    /// The digests of the stored descriptors' signed forms, and of both
    /// descriptors of each equivocation.
    /// By digest, ordered so that a short id (a digest's first bytes,
    /// as announcements name records) finds its descriptors.
    digests: BTreeMap<DescriptorDigest, PeerId>,
    /// Relays that equivocated, with the proof; they are not in `nodes`.
    evidence: BTreeMap<PeerId, Equivocation>,
    /// Recently refused digests.
    refused: RecentDigests,
    /// Measurement records of measurers not listed yet.
    awaiting: Awaiting,
    /// Digests of descriptors recently replaced by later ones.
    replaced: RecentDigests,
    /// The highest descriptor accepted per relay, kept after it is gone.
    seqs: HashMap<PeerId, SeqMark>,
    /// Whether `seqs` changed since [`Directory::seq_marks`].
    seqs_dirty: bool,
    /// The sorted record keys, built on first use after a change.
    sorted: OnceLock<Arc<[RecordKey]>>,
    /// The relays' selection weights at the cut, built on first use after
    /// a change.
    weights: OnceLock<Arc<Weights>>,
    /// The weights of every record held at the latest time, built on first
    /// use after a change.
    latest: OnceLock<Arc<Weights>>,
    /// Which records the weights count ([`Cut`]).
    cut: Cut,
    /// The earliest `published` of the records held that were after the
    /// cut when they came (`u64::MAX`: none): when a later cut passes it,
    /// the weights are taken again.
    pending: u64,
    /// Reports came in that the weights do not have yet (held back by
    /// [`Directory::set_reweigh_secs`]).
    unweighed: bool,
    /// Whether relays at private and loopback addresses carry weight.
    allow_private: bool,
    /// The measurement reports, if this directory weighs relays by them.
    measure: Option<Measurements>,
    /// The latest time it was told (by an insert or an expiry): what the
    /// weights are computed at.
    clock: u64,
    /// Most nodes held: [`MAX_NODES`] unless lowered.
    max_nodes: usize,
    /// Least time between two recomputations of the weights for new
    /// reports alone ([`Directory::set_reweigh_secs`]).
    reweigh_secs: u64,
    /// The clock when the weights were last dropped for recomputation.
    weighed_at: u64,
}

impl Directory {
    /// An empty directory for the node `own`. Path selection never picks
    /// `own`, and `own`'s descriptor is stored even when the directory is
    /// full.
    pub fn new(own: PeerId) -> Self {
        Directory {
            own,
            nodes: BTreeMap::new(),
            digests: BTreeMap::new(),
            evidence: BTreeMap::new(),
            refused: RecentDigests::new(REFUSED_REMEMBERED),
            awaiting: Awaiting::default(),
            replaced: RecentDigests::new(REPLACED_REMEMBERED),
            sorted: OnceLock::new(),
            weights: OnceLock::new(),
            latest: OnceLock::new(),
            cut: Cut::IMMEDIATE,
            pending: u64::MAX,
            unweighed: false,
            allow_private: false,
            measure: None,
            clock: 0,
            max_nodes: MAX_NODES,
            reweigh_secs: 0,
            weighed_at: 0,
            seqs: HashMap::new(),
            seqs_dirty: false,
        }
    }

    /// The highest descriptor of `peer` accepted, kept after it is gone
    /// (and across restarts, with [`Directory::restore_seq_marks`]).
    pub fn seq_mark(&self, peer: &PeerId) -> Option<SeqMark> {
        self.seqs.get(peer).copied()
    }

    /// The local node's peer id.
    pub fn own(&self) -> PeerId {
        self.own
    }

    /// Whether the directory holds the descriptor whose signed form has
    /// this digest: a repeat that needs no parsing and no signature check.
    pub fn holds(&self, digest: &DescriptorDigest) -> bool {
        self.digests.contains_key(digest) || self.measure.as_ref().is_some_and(|m| m.holds(digest))
    }

    /// Whether a descriptor needs no fetching or checking: held, refused
    /// recently ([`note_refused`](Self::note_refused)), or replaced by a
    /// later one recently ([`REPLACED_REMEMBERED`]).
    pub fn knows(&self, digest: &DescriptorDigest) -> bool {
        self.holds(digest)
            || self.refused.contains(digest)
            || self.replaced.contains(digest)
            || self.awaiting.contains(digest)
    }

    /// [`knows`](Self::knows) of any record whose digest begins with
    /// `prefix` (a short id, as announcements name records): true if one
    /// is held, refused or replaced.
    pub fn knows_prefix(&self, prefix: &[u8]) -> bool {
        self.digests.range(prefix_range(prefix)).next().is_some()
            || self
                .measure
                .as_ref()
                .is_some_and(|m| m.holds_prefix(prefix))
            || self.refused.contains_prefix(prefix)
            || self.replaced.contains_prefix(prefix)
            || self.awaiting.contains_prefix(prefix)
    }

    /// Whether reports of `measurer` count here: it is a relay this
    /// directory lists.
    pub fn lists_measurer(&self, measurer: &PeerId) -> bool {
        self.nodes.get(measurer).is_some_and(|e| e.desc.roles.relay)
    }

    /// Keeps a measurement record (report or fork proof, digest `digest`)
    /// whose claimed measurer is not listed until it is, within
    /// [`Awaiting`]'s bounds; meanwhile it counts as known, so it is not
    /// fetched again. [`Awaited::Listed`], keeping nothing, if the
    /// measurer is listed after all (it arrived meanwhile: store the
    /// record now). `from` is the peer that sent it (each gets at most
    /// [`MAX_AWAITING_PER_SENDER`](crate::measure::MAX_AWAITING_PER_SENDER)
    /// places).
    pub fn hold_awaiting(
        &mut self,
        measurer: PeerId,
        from: PeerId,
        digest: DescriptorDigest,
        raw: Vec<u8>,
        now: u64,
    ) -> Awaited {
        if self.lists_measurer(&measurer) {
            return Awaited::Listed;
        }
        let max_len = if crate::measure::is_fork(&raw) {
            crate::measure::MAX_FORK_BYTES
        } else {
            crate::measure::MAX_REPORT_BYTES
        };
        if self
            .awaiting
            .hold(measurer, from, digest, raw, max_len, now)
        {
            Awaited::Waits
        } else {
            Awaited::NotKept
        }
    }

    /// The records that waited for `measurer`'s descriptor (now stored),
    /// taken out to be checked and stored.
    pub fn take_awaiting(
        &mut self,
        measurer: &PeerId,
        now: u64,
    ) -> Vec<(DescriptorDigest, Vec<u8>)> {
        self.awaiting.take(measurer, now)
    }

    /// The records waiting for their measurer's descriptor.
    pub fn awaiting(&self) -> &Awaiting {
        &self.awaiting
    }

    /// Remembers (among the last [`REFUSED_REMEMBERED`]) that the
    /// descriptor with this digest was refused for good.
    pub fn note_refused(&mut self, digest: DescriptorDigest) {
        self.refused.insert(digest);
    }

    /// The [`RecordKey`]s of every stored record (descriptors and
    /// measurement reports), sorted as reconciliation orders them
    /// ([`record_key`]). Kept until the next change,
    /// so repeated calls cost a reference count.
    pub fn keys(&self) -> Arc<[RecordKey]> {
        self.sorted
            .get_or_init(|| {
                let mut keys: Vec<RecordKey> = self
                    .digests
                    .iter()
                    .map(|(d, peer)| record_key(false, self.published_of(d, peer), *d))
                    .collect();
                if let Some(m) = &self.measure {
                    keys.extend(m.keys());
                }
                keys.sort_unstable();
                keys.into()
            })
            .clone()
    }

    /// The `published` of the stored descriptor `digest` of `peer`: the
    /// listed one's, or for an equivocation's two, the later one's (what
    /// the evidence keeps; the same on every node that holds both).
    fn published_of(&self, digest: &DescriptorDigest, peer: &PeerId) -> u64 {
        match self.nodes.get(peer) {
            Some(e) if e.digest == *digest => e.desc.published,
            _ => self
                .evidence
                .get(peer)
                .map_or(0, |ev| ev.expires.saturating_sub(MAX_DESCRIPTOR_AGE)),
        }
    }

    /// Records the highest descriptor of a relay, forgetting the least
    /// recently updated marks of relays not in the directory beyond
    /// [`MAX_SEQ_MARKS`].
    fn mark(&mut self, mark: SeqMark) {
        self.seqs.insert(mark.peer, mark);
        self.seqs_dirty = true;
        if self.seqs.len() > MAX_SEQ_MARKS {
            let mut by_age: Vec<(u64, PeerId)> =
                self.seqs.values().map(|m| (m.at, m.peer)).collect();
            by_age.sort_unstable();
            // A tenth at once, so the sort is not paid on every insert.
            let excess = self.seqs.len() - MAX_SEQ_MARKS + MAX_SEQ_MARKS / 10;
            for (_, peer) in by_age.into_iter().take(excess) {
                if !self.nodes.contains_key(&peer) {
                    self.seqs.remove(&peer);
                }
            }
        }
    }

    /// The marks to persist, if they changed since the last call.
    pub fn seq_marks(&mut self) -> Option<SeqMarks> {
        if !std::mem::take(&mut self.seqs_dirty) {
            return None;
        }
        Some(SeqMarks {
            version: 1,
            marks: self.seqs.values().copied().collect(),
        })
    }

    /// Restores persisted marks (a higher mark already held wins); returns
    /// how many were taken. Another version is refused; beyond
    /// [`MAX_SEQ_MARKS`] the most recent are kept.
    pub fn restore_seq_marks(&mut self, mut marks: SeqMarks) -> Result<usize, DescriptorError> {
        if marks.version != 1 {
            return Err(DescriptorError::Malformed {
                reason: format!("sequence marks of version {}, expected 1", marks.version),
            });
        }
        marks
            .marks
            .sort_unstable_by_key(|m| std::cmp::Reverse(m.at));
        let mut taken = 0;
        for m in marks.marks.into_iter().take(MAX_SEQ_MARKS) {
            let keep = self
                .seqs
                .get(&m.peer)
                .is_none_or(|have| supersedes(have.seq, &have.digest, m.seq, &m.digest));
            if keep && (self.seqs.len() < MAX_SEQ_MARKS || self.seqs.contains_key(&m.peer)) {
                self.seqs.insert(m.peer, m);
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Forgets the sorted digests and the weights after a change.
    fn changed(&mut self) {
        self.sorted = OnceLock::new();
        self.reweigh();
    }

    fn reweigh(&mut self) {
        self.weights = OnceLock::new();
        self.latest = OnceLock::new();
        self.weighed_at = self.clock;
        self.unweighed = false;
    }

    /// A record published after the cut came: it counts from the slot
    /// whose cut passes `published`.
    fn held_back(&mut self, published: u64) {
        self.sorted = OnceLock::new();
        self.latest = OnceLock::new();
        self.pending = self.pending.min(published);
    }

    /// Weighs relays from the records published by the cut ([`Cut`]) of
    /// the directory's latest time, instead of every record held (the
    /// default, [`Cut::IMMEDIATE`], is every record published by then).
    pub fn set_cut(&mut self, cut: Cut) {
        self.cut = cut;
        self.pending = 0;
        self.tick(self.clock);
        self.reweigh();
    }

    /// The slots and margin the weights are taken at.
    pub fn cut_params(&self) -> Cut {
        self.cut
    }

    /// The cut the weights are computed at: records published at or before
    /// it count.
    pub fn cut(&self) -> u64 {
        self.cut.at(self.clock)
    }

    /// Tells the directory the time. When the cut moves past a record
    /// held back, the weights are taken again at the new cut; with
    /// measurements on they are also taken again when the cut moves and
    /// the reweigh interval has passed (a newcomer's ramp grows with
    /// time).
    pub fn tick(&mut self, now: u64) {
        let before = self.cut();
        self.clock = self.clock.max(now);
        let cut = self.cut();
        if cut == before {
            return;
        }
        let crossed = self.pending <= cut;
        let ramp = self.measure.is_some()
            && self.clock >= self.weighed_at.saturating_add(self.reweigh_secs);
        if crossed {
            let descriptors = self.nodes.values().map(|e| e.since);
            let reports = self.measure.as_ref().and_then(|m| m.earliest_after(cut));
            self.pending = descriptors
                .filter(|&p| p > cut)
                .chain(reports)
                .min()
                .unwrap_or(u64::MAX);
        }
        if crossed || ramp {
            self.weights = OnceLock::new();
            self.weighed_at = self.clock;
            self.unweighed = false;
        }
    }

    /// New reports change the weights at most once every `secs` of the
    /// directory's clock (0, the default: at once); later ones wait for
    /// the next change of a descriptor, expiry or report after that.
    /// Weighing every relay costs tens of milliseconds at thousands of
    /// relays, and reports arrive by the thousand after each period.
    pub fn set_reweigh_secs(&mut self, secs: u64) {
        self.reweigh_secs = secs;
    }

    /// Every usable relay's selection weight ([`Weights`]) for paths:
    /// of the relays in the view of the cut ([`Directory::cut`]: the
    /// earliest of their descriptors held in a row was published by it;
    /// each weighs by its latest), with measurements if they are on, from
    /// the reports published by then; kept until the next change, expiry
    /// or slot.
    pub fn weights(&self) -> Arc<Weights> {
        self.weights
            .get_or_init(|| {
                let cut = self.cut();
                let m = self.measure.as_ref().map(|m| (m, cut));
                let listed = self
                    .nodes
                    .values()
                    .filter(|e| e.since <= cut)
                    .map(|e| &e.desc);
                Arc::new(Weights::of(listed, self.allow_private, m))
            })
            .clone()
    }

    /// The weights from every record held, at the directory's latest time:
    /// what a measurer schedules by (who counts as a measurer this period)
    /// rather than what paths use; kept until the next change or expiry.
    pub fn latest_weights(&self) -> Arc<Weights> {
        self.latest
            .get_or_init(|| {
                let m = self.measure.as_ref().map(|m| (m, self.clock));
                Arc::new(Weights::of(self.iter(), self.allow_private, m))
            })
            .clone()
    }

    /// Weighs relays by peer measurements ([`crate::measure`]) with
    /// `params`, or (`None`, the default) by their advertised bandwidth
    /// alone, every relay usable. Turning them on starts with no reports:
    /// no relay is usable until measurers have reached it.
    pub fn use_measurements(&mut self, params: Option<MeasureParams>) {
        self.measure = params.map(Measurements::new);
        self.awaiting = Awaiting::default();
        self.changed();
    }

    /// The measurement reports held, if measurements are on.
    pub fn measurements(&self) -> Option<&Measurements> {
        self.measure.as_ref()
    }

    /// The reports, at `now`, to store one of `measurer` in: refused if
    /// measurements are off or it is not a relay this directory lists.
    fn measurements_of(
        &mut self,
        measurer: &PeerId,
        now: u64,
    ) -> Result<&mut Measurements, ReportError> {
        if self.measure.is_none() {
            return Err(ReportError::Disabled);
        }
        if !self.lists_measurer(measurer) {
            return Err(ReportError::UnknownMeasurer(*measurer));
        }
        self.tick(now);
        self.measure.as_mut().ok_or(ReportError::Disabled)
    }

    /// Stores a verified measurement report ([`Measurements::insert`]): its
    /// measurer must be a relay this directory lists.
    pub fn insert_report(
        &mut self,
        report: VerifiedReport,
        now: u64,
    ) -> Result<ReportInserted, ReportError> {
        let published = report.report.published;
        let done = self
            .measurements_of(&report.report.measurer, now)?
            .insert(report, now)?;
        if done == ReportInserted::Forked {
            // The measurer leaves the view at once, as a relay that
            // equivocated does.
            self.changed();
        } else if done != ReportInserted::Unchanged {
            if published > self.cut() && done == ReportInserted::New {
                // It counts from the slot whose cut passes it; only what
                // a measurer schedules by can change now. (One that
                // replaced a report changes the view at once: the report
                // it replaced counted.)
                self.held_back(published);
            } else if self.clock >= self.weighed_at.saturating_add(self.reweigh_secs) {
                self.changed();
            } else {
                // The report is held (and offered) at once; it weighs in
                // with the next recomputation.
                self.sorted = OnceLock::new();
                self.unweighed = true;
            }
        }
        Ok(done)
    }

    /// Stores a checked fork proof ([`crate::measure::ReportFork::decode`],
    /// [`Measurements::insert_fork`]): its measurer must be a relay this
    /// directory lists. The measurer leaves the view at once.
    pub fn insert_report_fork(
        &mut self,
        fork: crate::measure::ReportFork,
        now: u64,
    ) -> Result<ReportInserted, ReportError> {
        let done = self
            .measurements_of(&fork.measurer, now)?
            .insert_fork(fork, now)?;
        if done == ReportInserted::Forked {
            self.changed();
        }
        Ok(done)
    }

    /// The record with this digest, a descriptor's or a report's, as it
    /// travels.
    pub fn record(&self, digest: &DescriptorDigest) -> Option<Vec<u8>> {
        if let Some(sd) = self.signed_by_digest(digest) {
            return Some(sd.to_bytes());
        }
        self.measure
            .as_ref()
            .and_then(|m| m.record(digest))
            .map(<[u8]>::to_vec)
    }

    /// Lets relays at private, loopback and other special addresses carry
    /// weight, uncapped: for test networks on one host or one LAN only
    /// (`danger_allow_private_links`). Off by default: such relays weigh 0.
    /// Whether relays at private and loopback addresses carry weight (and
    /// may be measured).
    pub fn allows_private_relays(&self) -> bool {
        self.allow_private
    }

    /// See [`allows_private_relays`](Self::allows_private_relays).
    pub fn allow_private_relays(&mut self, allow: bool) {
        self.allow_private = allow;
        self.changed();
    }

    /// The stored descriptor whose signed form has this digest (listed,
    /// or one of an equivocation's two).
    pub fn signed_by_digest(&self, digest: &DescriptorDigest) -> Option<&SignedDescriptor> {
        let peer = self.digests.get(digest)?;
        if let Some(e) = self.nodes.get(peer).filter(|e| e.digest == *digest) {
            return Some(&e.signed);
        }
        let ev = self.evidence.get(peer)?;
        ev.digests
            .iter()
            .position(|d| d == digest)
            .map(|i| &ev.descriptors[i])
    }

    /// The relays that equivocated, with the proof, in peer id order.
    pub fn equivocations(&self) -> impl Iterator<Item = &Equivocation> {
        self.evidence.values()
    }

    /// Verify `signed` at time `now` and store it: a descriptor the
    /// directory already holds is [`Inserted::Unchanged`] without being
    /// checked again; any other goes through [`SignedDescriptor::verify`]
    /// and [`insert_verified`](Self::insert_verified). Verifying here holds
    /// `&mut self`: a caller behind a lock verifies first with
    /// [`SignedDescriptor::verify_into`] instead.
    pub fn insert(
        &mut self,
        signed: &SignedDescriptor,
        now: u64,
    ) -> Result<Inserted, DescriptorError> {
        if self.holds(&signed.digest()) {
            return Ok(Inserted::Unchanged);
        }
        self.insert_verified(signed.clone().verify_into(now)?, now)
    }

    /// Store a verified descriptor.
    ///
    /// The same signed bytes as the stored one are [`Inserted::Unchanged`];
    /// a higher seq replaces it ([`Inserted::Updated`]); the same seq with
    /// other bytes is proof that the relay equivocated: both are kept as an
    /// [`Equivocation`], the relay leaves the listing, and until the
    /// evidence expires any other descriptor of it is
    /// [`DescriptorError::Equivocated`] ([`Inserted::Equivocated`]); a lower
    /// seq is [`DescriptorError::Replayed`]. When the
    /// directory is full, stale entries are dropped first, then one node
    /// that carries no weight (`evict_weightless`: unreachable, over its
    /// address cap, unmeasured, not a relay); if every node carries weight
    /// the descriptor is refused with [`DescriptorError::DirectoryFull`]. `now` is the time the descriptor
    /// was verified at, or later.
    pub fn insert_verified(
        &mut self,
        verified: Verified,
        now: u64,
    ) -> Result<Inserted, DescriptorError> {
        let peer = verified.desc.peer_id;
        self.tick(now);
        if let Some(ev) = self.evidence.get(&peer) {
            if ev.digests.contains(&verified.digest) {
                return Ok(Inserted::Unchanged);
            }
            return Err(DescriptorError::Equivocated { peer, seq: ev.seq });
        }
        // A relay's descriptor that is gone still leaves its mark: nothing
        // older (or, at the same seq, nothing with a higher digest) comes
        // back in its place.
        if !self.nodes.contains_key(&peer) {
            if let Some(mark) = self.seqs.get(&peer) {
                let seq = verified.desc.seq;
                let older = verified.digest != mark.digest
                    && !supersedes(mark.seq, &mark.digest, seq, &verified.digest);
                if older {
                    return Err(DescriptorError::Replayed {
                        peer,
                        seq,
                        have: mark.seq,
                    });
                }
            }
        }
        let mark = SeqMark {
            peer,
            seq: verified.desc.seq,
            digest: verified.digest,
            at: now,
        };
        if let Some(old) = self.nodes.get_mut(&peer) {
            if old.digest == verified.digest {
                return Ok(Inserted::Unchanged);
            }
            // Two descriptors with the same seq: the relay equivocated.
            // Every node that sees both keeps both, whichever came first.
            if verified.desc.seq == old.desc.seq {
                let held = (&old.signed, &old.digest, old.desc.published);
                if let Some(ev) = Equivocation::of(held, &verified, now) {
                    self.nodes.remove(&peer);
                    self.digests.insert(verified.digest, peer);
                    self.mark(SeqMark {
                        digest: ev.digests[0],
                        ..mark
                    });
                    self.evidence.insert(peer, ev);
                    self.changed();
                    return Ok(Inserted::Equivocated);
                }
            }
            if verified.desc.seq < old.desc.seq {
                return Err(DescriptorError::Replayed {
                    peer,
                    seq: verified.desc.seq,
                    have: old.desc.seq,
                });
            }
            self.digests.remove(&old.digest);
            // A replaced descriptor is never worth fetching back: a peer
            // that still holds it offers it until it learns of this one.
            self.replaced.insert(old.digest);
            self.digests.insert(verified.digest, peer);
            let since = old.since.min(verified.desc.published);
            *old = verified.into();
            old.since = since;
            if since > self.cut() {
                // Still not in the view: it counts from the cut that
                // passes `since`.
                self.held_back(since);
            } else {
                self.changed();
            }
            self.mark(mark);
            return Ok(Inserted::Updated);
        }
        // Evidence takes the place of the relay's entry, so it counts.
        if self.nodes.len() + self.evidence.len() >= self.max_nodes && peer != self.own {
            self.expire(now);
            if self.nodes.len() + self.evidence.len() >= self.max_nodes && !self.evict_weightless()
            {
                return Err(DescriptorError::DirectoryFull {
                    peer,
                    max: self.max_nodes,
                });
            }
        }
        self.digests.insert(verified.digest, peer);
        let published = verified.desc.published;
        let after_cut = published > self.cut();
        self.nodes.insert(peer, verified.into());
        if after_cut {
            // Not in the view until a cut passes it.
            self.held_back(published);
        } else {
            self.changed();
        }
        self.mark(mark);
        Ok(Inserted::New)
    }

    /// Makes room in a full directory: drops one listed node that carries
    /// no weight, the least useful first: a relay measurers found
    /// unreachable, then one over its address prefix's cap, then one not
    /// measured yet (with measurements on), then a node that is not a
    /// relay; within each, the one published longest ago. Our own
    /// descriptor stays. Its digest is remembered as refused, so that
    /// reconciliation does not fetch it straight back. Returns whether a
    /// node went; `false` when every node carries weight (then the
    /// newcomer is the one refused).
    fn evict_weightless(&mut self) -> bool {
        // By every record held, not the cut: a relay held back for the
        // next slot weighs nothing at the cut, and must not be evicted for
        // it (which relays those are depends on when each node got them).
        let weights = self.latest_weights();
        let class = |d: &Descriptor| -> Option<u8> {
            if d.peer_id == self.own || weights.get(&d.peer_id) > 0 {
                return None;
            }
            if !d.roles.relay {
                return Some(3);
            }
            Some(match weights.measured(&d.peer_id) {
                Some(m) if !m.reachable && m.observed_by > m.reached_by => 0,
                Some(m) if m.reachable => 1,
                _ if self.measure.is_none() => 1,
                _ => 2,
            })
        };
        let victim = self
            .nodes
            .values()
            .filter_map(|e| class(&e.desc).map(|c| (c, e.desc.published, e.desc.peer_id)))
            .min();
        let Some((_, _, peer)) = victim else {
            return false;
        };
        if let Some(e) = self.nodes.remove(&peer) {
            self.digests.remove(&e.digest);
            self.refused.insert(e.digest);
        }
        self.changed();
        true
    }

    /// Lowers the most nodes this directory holds (tests of a full
    /// directory; at most [`MAX_NODES`]).
    pub fn set_max_nodes(&mut self, max: usize) {
        self.max_nodes = max.clamp(1, MAX_NODES);
    }

    /// Remove descriptors that are too old or whose onion key has expired at
    /// `now`; returns the removed peers.
    /// With measurements on, also drops reports of periods past the
    /// window and of measurers no longer listed, and recomputes the
    /// weights if anything went or reports held back by the reweigh
    /// interval are waiting (a newcomer's ramp grows with the cut:
    /// [`Directory::tick`]).
    pub fn expire(&mut self, now: u64) -> Vec<PeerId> {
        self.tick(now);
        self.awaiting.expire(now);
        let mut removed = Vec::new();
        let digests = &mut self.digests;
        self.nodes.retain(|peer, e| {
            let stale = is_too_old(e.desc.published, now) || e.desc.onion_key_expires <= now;
            if stale {
                removed.push(*peer);
                digests.remove(&e.digest);
            }
            !stale
        });
        let before = self.evidence.len();
        self.evidence.retain(|_, ev| {
            let keep = !ev.expired(now);
            if !keep {
                for d in &ev.digests {
                    digests.remove(d);
                }
            }
            keep
        });
        let nodes = &self.nodes;
        let reports_gone = self
            .measure
            .as_mut()
            .is_some_and(|m| m.expire(now, |p| nodes.contains_key(p)));
        if !removed.is_empty() || self.evidence.len() != before || reports_gone {
            self.changed();
        } else if self.unweighed {
            self.reweigh();
        }
        removed
    }

    /// Remove one peer's descriptor; returns it if it was present.
    pub fn remove(&mut self, peer: &PeerId) -> Option<Descriptor> {
        let e = self.nodes.remove(peer)?;
        self.digests.remove(&e.digest);
        self.changed();
        Some(e.desc)
    }

    /// The verified descriptor of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&Descriptor> {
        self.nodes.get(peer).map(|e| &e.desc)
    }

    /// The signed form of `peer`'s descriptor, to pass on to others.
    pub fn signed(&self, peer: &PeerId) -> Option<&SignedDescriptor> {
        self.nodes.get(peer).map(|e| &e.signed)
    }

    /// All descriptors, in peer id order.
    pub fn iter(&self) -> impl Iterator<Item = &Descriptor> {
        self.nodes.values().map(|e| &e.desc)
    }

    /// Copies of all signed descriptors, in peer id order.
    pub fn all_signed(&self) -> Vec<SignedDescriptor> {
        self.nodes.values().map(|e| e.signed.clone()).collect()
    }

    /// Number of stored descriptors.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A bounded set of digests; the oldest is forgotten first.
/// The digests that begin with `prefix` (at most 32 bytes of it count).
pub(crate) fn prefix_range(prefix: &[u8]) -> std::ops::RangeInclusive<DescriptorDigest> {
    let n = prefix.len().min(32);
    let (mut lo, mut hi) = ([0u8; 32], [0xffu8; 32]);
    lo[..n].copy_from_slice(&prefix[..n]);
    hi[..n].copy_from_slice(&prefix[..n]);
    lo..=hi
}

#[derive(Debug, Clone)]
struct RecentDigests {
    set: BTreeSet<DescriptorDigest>,
    order: VecDeque<DescriptorDigest>,
    max: usize,
}

impl RecentDigests {
    fn new(max: usize) -> Self {
        Self {
            set: BTreeSet::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn contains(&self, d: &DescriptorDigest) -> bool {
        self.set.contains(d)
    }

    fn contains_prefix(&self, prefix: &[u8]) -> bool {
        self.set.range(prefix_range(prefix)).next().is_some()
    }

    fn insert(&mut self, d: DescriptorDigest) {
        if self.max == 0 || !self.set.insert(d) {
            return;
        }
        self.order.push_back(d);
        if self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_seq_or_at_the_same_seq_a_lower_digest_supersedes() {
        let (lo, hi) = ([1u8; 32], [2u8; 32]);
        assert!(supersedes(5, &lo, 6, &hi));
        assert!(!supersedes(6, &hi, 5, &lo));
        assert!(supersedes(5, &hi, 5, &lo));
        assert!(!supersedes(5, &lo, 5, &hi));
        assert!(!supersedes(5, &lo, 5, &lo));
    }

    #[test]
    fn recent_digests_forget_the_oldest_first() {
        let mut r = RecentDigests::new(2);
        r.insert([1; 32]);
        r.insert([2; 32]);
        r.insert([1; 32]);
        assert!(r.contains(&[1; 32]) && r.contains(&[2; 32]));
        r.insert([3; 32]);
        assert!(!r.contains(&[1; 32]));
        assert!(r.contains(&[2; 32]) && r.contains(&[3; 32]));
    }
}
