//! A simulated node's directory: per relay, the index of the descriptor it
//! holds (or only remembers the sequence number of), and per measurer and
//! period its measurement report, with the replacement rules of the real
//! [`Directory`](veilnet_dir::Directory); and the
//! [`RecordStore`] the real reconciliation code runs against.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, OnceLock};

use veilnet_dir::{record_key, supersedes, REFUSED_REMEMBERED, REPLACED_REMEMBERED};
use veilnet_discovery::sync::{self, Fingerprint, LIST_THRESHOLD};
use veilnet_discovery::{RecordDigest, RecordKey, RecordStore};

use crate::records::{
    Cached, DigestHasher, RecordId, Records, MAX_RANGE_FINGERPRINTS, REPORT_SLOT,
};

/// No record for this relay.
const NONE: u32 = u32::MAX;
/// Flag on a slot: the record is gone (expired) but its sequence number is
/// remembered, as the real directory's `SeqMark`s are.
const MARK: u32 = 1 << 31;

/// A random 128-bit tag of a record or relay index, for set hashes.
pub(crate) fn tag(i: u32, salt: u64) -> u128 {
    let mut x = u64::from(i) ^ salt;
    let mut mix = || {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (u128::from(mix()) << 64) | u128::from(mix())
}

/// What a record offered to a view did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Stored: the relay's first, or a newer one (the old one is returned).
    Stored(Option<RecordId>),
    /// Already held.
    Held,
    /// Refused: older than what is held or remembered, or too old.
    Refused,
    /// A report whose measurer's descriptor is not held: refused and not
    /// remembered (the descriptor may come), as the directory does.
    Unlisted,
}

/// One node's view of the directory.
#[derive(Debug, Default)]
pub struct View {
    /// By relay index: the descriptor held, `MARK | record` for a
    /// remembered one, or `NONE`.
    slots: Vec<u32>,
    /// The same by report slot ([`crate::records::Record::slot`] without
    /// [`REPORT_SLOT`]): measurement reports.
    report_slots: Vec<u32>,
    /// Records held.
    len: u32,
    /// Of them, descriptors.
    descriptors: u32,
    /// XOR of the tags of the records held: equal sets, equal hashes.
    records_hash: u128,
    /// XOR of the tags of the relays with a descriptor held.
    relays_hash: u128,
    /// Refused records, so they are not fetched again (the real
    /// directory remembers the last [`REFUSED_REMEMBERED`]; this forgets
    /// all of them at once when full).
    refused: HashSet<RecordId, BuildHasherDefault<DigestHasher>>,
    /// Records replaced by later ones, likewise (the directory remembers
    /// the last [`REPLACED_REMEMBERED`], apart from the refused).
    replaced: HashSet<RecordId, BuildHasherDefault<DigestHasher>>,
    /// Records asked for and not yet received, with when (µs): not asked
    /// for again from another peer until [`ASK_TIMEOUT_US`] has passed.
    asked: HashMap<RecordId, u64, BuildHasherDefault<DigestHasher>>,
    /// Reports that came before their measurer's descriptor, oldest first,
    /// with when (unix seconds): they wait for it as in the directory's
    /// [`Awaiting`](veilnet_dir::measure::Awaiting) (bounded by count
    /// and time; reports are small enough that its byte bound does not
    /// bind first), known meanwhile so not fetched again.
    awaiting: std::collections::VecDeque<(RecordId, u64)>,
    awaiting_set: HashSet<RecordId, BuildHasherDefault<DigestHasher>>,
    /// The same by measurer (relay index), so a descriptor stored finds its
    /// reports without a scan.
    awaiting_by_relay: HashMap<u32, Vec<RecordId>>,
    /// The sorted keys, built when reconciliation first asks after a
    /// change.
    cache: OnceLock<Arc<Cached>>,
    /// The keys built last, and the changes since (record removed,
    /// record added): the next build patches them instead of sorting.
    base: Option<Arc<Cached>>,
    since: Vec<(u32, u32)>,
}

/// Most changes a build patches in; beyond, it sorts afresh.
const MAX_PATCH: usize = 512;

/// How long a record asked for is not asked for again: the node's
/// request timeout (`REQUEST_TIMEOUT` in veilnet-discovery's node.rs).
pub const ASK_TIMEOUT_US: u64 = 10_000_000;

impl View {
    fn slot(&self, slot: u32) -> u32 {
        let (table, i) = if slot & REPORT_SLOT == 0 {
            (&self.slots, slot)
        } else {
            (&self.report_slots, slot & !REPORT_SLOT)
        };
        table.get(i as usize).copied().unwrap_or(NONE)
    }

    fn set_slot(&mut self, slot: u32, v: u32) {
        let (table, i) = if slot & REPORT_SLOT == 0 {
            (&mut self.slots, slot as usize)
        } else {
            (&mut self.report_slots, (slot & !REPORT_SLOT) as usize)
        };
        if i >= table.len() {
            table.resize(i + 1, NONE);
        }
        let live = |s: u32| if s & MARK == 0 { s } else { NONE };
        let change = (live(table[i]), live(v));
        table[i] = v;
        self.cache = OnceLock::new();
        if self.base.is_some() {
            if self.since.len() >= MAX_PATCH {
                self.base = None;
                self.since.clear();
            } else {
                self.since.push(change);
            }
        }
    }

    /// Keeps the keys built for the last exchange step as the base of
    /// the next build.
    pub fn settle(&mut self) {
        if let Some(c) = self.cache.get() {
            self.base = Some(c.clone());
            self.since.clear();
        }
    }

    /// The record held in `slot` (a relay's index for its descriptor), if
    /// any.
    pub fn held(&self, slot: u32) -> Option<RecordId> {
        let s = self.slot(slot);
        (s != NONE && s & MARK == 0).then_some(s)
    }

    /// Whether the view holds exactly this record.
    pub fn holds(&self, records: &Records, id: RecordId) -> bool {
        self.held(records.get(id).slot) == Some(id)
    }

    /// Records held (descriptors and reports).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Descriptors held.
    pub fn descriptors_held(&self) -> usize {
        self.descriptors as usize
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A hash of the records held (equal for equal sets).
    pub fn records_hash(&self) -> u128 {
        self.records_hash
    }

    /// A hash of the relays a descriptor is held for (equal for equal
    /// sets).
    pub fn relays_hash(&self) -> u128 {
        self.relays_hash
    }

    /// The records held: descriptors in relay order, then reports.
    pub fn records(&self) -> impl Iterator<Item = RecordId> + '_ {
        self.descriptors().chain(
            self.report_slots
                .iter()
                .copied()
                .filter(|&s| s != NONE && s & MARK == 0),
        )
    }

    /// The descriptors held, in relay order.
    pub fn descriptors(&self) -> impl Iterator<Item = RecordId> + '_ {
        self.slots
            .iter()
            .copied()
            .filter(|&s| s != NONE && s & MARK == 0)
    }

    /// Offers a record received at `now_unix`, with the real directory's
    /// rules: a relay's first record is stored; a record that
    /// [`supersedes`] the held or remembered one replaces it; anything else,
    /// and anything past `MAX_DESCRIPTOR_AGE`, is refused and remembered as
    /// refused.
    pub fn offer(&mut self, records: &Records, id: RecordId, now_unix: u64) -> Offer {
        if !self.asked.is_empty() {
            self.asked.remove(&id);
        }
        let rec = records.get(id);
        let s = self.slot(rec.slot);
        if s == id {
            return Offer::Held;
        }
        if rec.is_report() && self.held(rec.relay).is_none() {
            return Offer::Unlisted;
        }
        let newer = s == NONE || {
            let old = records.get(s & !MARK);
            supersedes(old.seq, &old.digest, rec.seq, &rec.digest)
        };
        if !newer || rec.too_old(now_unix) {
            remember(&mut self.refused, REFUSED_REMEMBERED, id);
            return Offer::Refused;
        }
        let old = (s != NONE && s & MARK == 0).then_some(s);
        match old {
            Some(o) => {
                self.records_hash ^= tag(o, 0);
                // As the directory: a replaced record is known, never
                // fetched back.
                remember(&mut self.replaced, REPLACED_REMEMBERED, o);
            }
            None => {
                if !rec.is_report() {
                    self.relays_hash ^= tag(rec.relay, 1);
                    self.descriptors += 1;
                }
                self.len += 1;
            }
        }
        self.records_hash ^= tag(id, 0);
        self.set_slot(rec.slot, id);
        Offer::Stored(old)
    }

    /// Drops the record held in `slot` (it expired), remembering its
    /// sequence number. Returns it.
    pub fn expire(&mut self, slot: u32) -> Option<RecordId> {
        let id = self.held(slot)?;
        self.records_hash ^= tag(id, 0);
        if slot & REPORT_SLOT == 0 {
            self.relays_hash ^= tag(slot, 1);
            self.descriptors -= 1;
        }
        self.len -= 1;
        self.set_slot(slot, id | MARK);
        Some(id)
    }

    /// Drops the reports held of measurer `relay` (its descriptor
    /// expired: the directory keeps reports of listed measurers only),
    /// `kept` slots of them; returns them.
    pub fn drop_reports(&mut self, relay: u32, kept: u32) -> Vec<RecordId> {
        (0..kept)
            .filter_map(|k| self.expire(REPORT_SLOT | (relay * kept + k)))
            .collect()
    }

    /// Drops held record `id` (it expired), and with a descriptor its
    /// measurer's reports (`kept` slots of them, when reports are
    /// simulated: the directory keeps reports of listed measurers only).
    /// Returns every record dropped.
    pub fn expire_record(
        &mut self,
        records: &Records,
        id: RecordId,
        kept: Option<u32>,
    ) -> Vec<RecordId> {
        let r = records.get(id);
        let mut gone: Vec<RecordId> = self.expire(r.slot).into_iter().collect();
        if let (false, Some(kept)) = (r.is_report(), kept) {
            gone.extend(self.drop_reports(r.relay, kept));
        }
        gone
    }

    /// When the record was asked for, if it is awaited.
    pub fn asked_at(&self, id: RecordId) -> Option<u64> {
        self.asked.get(&id).copied()
    }

    /// Keeps report `id` (its measurer not held) until the measurer's
    /// descriptor comes, within the directory's bounds.
    pub fn hold_awaiting(&mut self, records: &Records, id: RecordId, now_unix: u64) {
        use veilnet_dir::measure::MAX_AWAITING;
        self.expire_awaiting(records, now_unix);
        if !self.awaiting_set.insert(id) {
            return;
        }
        if self.awaiting_set.len() > MAX_AWAITING {
            self.drop_oldest_awaiting(records);
        }
        self.awaiting.push_back((id, now_unix));
        self.awaiting_by_relay
            .entry(records.get(id).relay)
            .or_default()
            .push(id);
    }

    /// Drops the oldest report still waiting (entries taken already are
    /// skipped: the queue is cleaned lazily).
    fn drop_oldest_awaiting(&mut self, records: &Records) {
        while let Some((id, _)) = self.awaiting.pop_front() {
            if self.awaiting_set.remove(&id) {
                let relay = records.get(id).relay;
                if let Some(list) = self.awaiting_by_relay.get_mut(&relay) {
                    list.retain(|&x| x != id);
                    if list.is_empty() {
                        self.awaiting_by_relay.remove(&relay);
                    }
                }
                return;
            }
        }
    }

    fn expire_awaiting(&mut self, records: &Records, now_unix: u64) {
        use veilnet_dir::measure::AWAITING_SECS;
        while let Some(&(id, at)) = self.awaiting.front() {
            if !self.awaiting_set.contains(&id) {
                self.awaiting.pop_front();
                continue;
            }
            if now_unix.saturating_sub(at) < AWAITING_SECS {
                break;
            }
            self.drop_oldest_awaiting(records);
        }
    }

    /// The reports that waited for measurer `relay`'s descriptor, taken
    /// out.
    pub fn take_awaiting(&mut self, records: &Records, relay: u32, now_unix: u64) -> Vec<RecordId> {
        self.expire_awaiting(records, now_unix);
        let Some(taken) = self.awaiting_by_relay.remove(&relay) else {
            return Vec::new();
        };
        for id in &taken {
            self.awaiting_set.remove(id);
        }
        if self.awaiting.len() > 2 * self.awaiting_set.len() + 64 {
            let set = &self.awaiting_set;
            self.awaiting.retain(|(id, _)| set.contains(id));
        }
        taken
    }

    /// Notes that `want` was just asked for (at `now_us`).
    pub fn note_asked(&mut self, records: &Records, want: &[RecordDigest], now_us: u64) {
        if self.asked.len() > 4096 {
            self.asked.retain(|_, at| *at + ASK_TIMEOUT_US > now_us);
        }
        for d in want {
            if let Some(&(id, _)) = records.by_digest.get(d) {
                self.asked.insert(id, now_us);
            }
        }
    }

    /// Forgets the built keys (they are rebuilt on the next exchange):
    /// frees their memory when the node will not reconcile for a while.
    pub fn drop_cache(&mut self) {
        self.cache = OnceLock::new();
        self.base = None;
        self.since.clear();
    }

    /// The sorted keys of the records held ([`record_key`]): the base patched with the changes since,
    /// or sorted afresh.
    fn build(&self, records: &Records) -> Vec<RecordKey> {
        let digest = |id: u32| {
            let r = records.get(id);
            record_key(r.is_report(), r.published, r.digest)
        };
        let Some(base) = &self.base else {
            let mut d: Vec<RecordKey> = self.records().map(digest).collect();
            d.sort_unstable();
            return d;
        };
        // Net changes: a record added and removed again cancels out.
        let mut net: Vec<(u32, i32)> = Vec::with_capacity(2 * self.since.len());
        for &(removed, added) in &self.since {
            if removed != NONE {
                net.push((removed, -1));
            }
            if added != NONE {
                net.push((added, 1));
            }
        }
        net.sort_unstable_by_key(|&(id, _)| id);
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < net.len() {
            let id = net[i].0;
            let mut sum = 0;
            while i < net.len() && net[i].0 == id {
                sum += net[i].1;
                i += 1;
            }
            match sum.cmp(&0) {
                std::cmp::Ordering::Less => gone.push(digest(id)),
                std::cmp::Ordering::Greater => new.push(digest(id)),
                std::cmp::Ordering::Equal => {}
            }
        }
        gone.sort_unstable();
        new.sort_unstable();
        let old: &[RecordKey] = &base.keys;
        let mut out = Vec::with_capacity(old.len() + new.len());
        let (mut g, mut a) = (0, 0);
        for d in old {
            while g < gone.len() && gone[g] < *d {
                g += 1;
            }
            if g < gone.len() && gone[g] == *d {
                continue;
            }
            while a < new.len() && new[a] < *d {
                out.push(new[a]);
                a += 1;
            }
            out.push(*d);
        }
        out.extend_from_slice(&new[a..]);
        out
    }

    fn cached(&self, records: &Records) -> Arc<Cached> {
        self.cache
            .get_or_init(|| {
                let mut interned = records
                    .interned
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(c) = interned.get(&self.records_hash).and_then(|w| w.upgrade()) {
                    return c;
                }
                let digests = self.build(records);
                #[cfg(debug_assertions)]
                {
                    let mut full: Vec<RecordKey> = self
                        .records()
                        .map(|id| {
                            let r = records.get(id);
                            record_key(r.is_report(), r.published, r.digest)
                        })
                        .collect();
                    full.sort_unstable();
                    assert!(full == digests, "patched digests equal sorted ones");
                }
                let c = Arc::new(Cached {
                    fingerprint: OnceLock::new(),
                    ranges: Mutex::new(HashMap::new()),
                    keys: digests.into(),
                });
                if interned.len() > 4096 {
                    interned.retain(|_, w| w.strong_count() > 0);
                }
                interned.insert(self.records_hash, Arc::downgrade(&c));
                c
            })
            .clone()
    }
}

/// A view as the real reconciliation code sees it. Records handed out are
/// logged in order in `served`, so the simulator knows which records a
/// message carries without hashing their bytes again.
pub struct Store<'a> {
    view: &'a View,
    records: &'a Records,
    /// Now (µs), and whether records asked for from another peer within
    /// [`ASK_TIMEOUT_US`] count as known.
    asked_until: Option<u64>,
    /// Ids of the records [`RecordStore::record`] returned, in order.
    pub served: Mutex<Vec<RecordId>>,
}

impl<'a> Store<'a> {
    /// The store of `view`.
    pub fn new(view: &'a View, records: &'a Records) -> Self {
        Store {
            view,
            records,
            asked_until: None,
            served: Mutex::new(Vec::new()),
        }
    }

    /// The store of `view` at `now_us`, leaving out of what it wants the
    /// records already asked for from another peer.
    pub fn dedup(view: &'a View, records: &'a Records, now_us: u64) -> Self {
        Store {
            asked_until: Some(now_us),
            ..Store::new(view, records)
        }
    }

    /// The ids logged by `record`.
    pub fn into_served(self) -> Vec<RecordId> {
        self.served
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RecordStore for Store<'_> {
    fn keys(&self) -> Arc<[RecordKey]> {
        self.view.cached(self.records).keys.clone()
    }

    fn record(&self, digest: &RecordDigest) -> Option<Vec<u8>> {
        let &(id, slot) = self.records.by_digest.get(digest)?;
        if self.view.held(slot) != Some(id) {
            return None;
        }
        self.served
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(id);
        Some(self.records.get(id).bytes.clone())
    }

    fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest> {
        digests
            .iter()
            .filter(|d| match self.records.by_digest.get(*d) {
                // Nobody in a run makes up digests; the real node would ask.
                None => true,
                Some(&(id, slot)) => {
                    self.view.held(slot) != Some(id)
                        && (self.view.refused.is_empty() || !self.view.refused.contains(&id))
                        && (self.view.replaced.is_empty() || !self.view.replaced.contains(&id))
                        && (self.view.awaiting_set.is_empty()
                            || !self.view.awaiting_set.contains(&id))
                        && self.asked_until.is_none_or(|now| {
                            self.view
                                .asked
                                .get(&id)
                                .is_none_or(|at| at + ASK_TIMEOUT_US <= now)
                        })
                }
            })
            .copied()
            .collect()
    }

    fn fingerprint_of(&self, range: &[RecordKey]) -> Fingerprint {
        if let Some(c) = self.view.cache.get() {
            if range.len() == c.keys.len() && std::ptr::eq(range.as_ptr(), c.keys.as_ptr()) {
                return *c.fingerprint.get_or_init(|| sync::fingerprint(range));
            }
            // A run of the shared digests (reconciliation splits the set
            // it read): its index, found from the addresses.
            let size = std::mem::size_of::<RecordKey>();
            let start = (range.as_ptr() as usize)
                .checked_sub(c.keys.as_ptr() as usize)
                .map_or(usize::MAX, |bytes| bytes / size);
            let inside = start < c.keys.len()
                && range.len() <= c.keys.len() - start
                && std::ptr::eq(range.as_ptr(), c.keys[start..].as_ptr());
            if inside && range.len() > LIST_THRESHOLD {
                let key = (start as u32, range.len() as u32);
                let mut memo = c.ranges.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(fp) = memo.get(&key) {
                    return *fp;
                }
                let fp = sync::fingerprint(range);
                if memo.len() >= MAX_RANGE_FINGERPRINTS {
                    memo.clear();
                }
                memo.insert(key, fp);
                return fp;
            }
        }
        sync::fingerprint(range)
    }
}

/// Adds `id` to `set`, which holds about the last `max` (the directory
/// forgets the oldest first; this forgets all at once when full).
fn remember(
    set: &mut HashSet<RecordId, BuildHasherDefault<DigestHasher>>,
    max: usize,
    id: RecordId,
) {
    if set.len() >= max {
        set.clear();
    }
    set.insert(id);
}
