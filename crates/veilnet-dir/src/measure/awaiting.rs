//! Measurement records that arrived before their measurer's descriptor.
//!
//! A report counts only once its measurer is listed. Reconciliation hands
//! descriptors over before reports ([`crate::record_key`]), but a report
//! can still come first: announced by a peer that has the measurer's new
//! descriptor while ours is on its way, or sent by a peer out of order.
//! Refusing it and fetching it again later would cost it twice.
//! [`Awaiting`] keeps such records, unverified and bounded in count,
//! bytes, time, per measurer and per sending peer, until the measurer's
//! descriptor arrives ([`Awaiting::take`]); whatever does not fit is
//! dropped oldest first and fetched again later.

use std::collections::{BTreeMap, HashMap, VecDeque};

use libp2p::PeerId;

use crate::descriptor::DescriptorDigest;

/// At most this many records wait (two full reconciliation messages of
/// reports).
pub const MAX_AWAITING: usize = 4096;
/// At most this many bytes of them.
pub const MAX_AWAITING_BYTES: usize = 4 * 1024 * 1024;
/// At most this many of one measurer (it has one report a period kept, 7
/// periods, and may have extended some): one made-up measurer cannot take
/// every place.
pub const MAX_AWAITING_PER_MEASURER: usize = 32;
/// At most this many sent by one peer: one neighbour's junk (records
/// naming made-up measurers) cannot push out everyone else's.
pub const MAX_AWAITING_PER_SENDER: usize = MAX_AWAITING / 4;
/// A record waits at most this long (seconds); a measurer whose
/// descriptor has not come by then is probably gone.
pub const AWAITING_SECS: u64 = 300;

/// Records (measurement reports and fork proofs) of measurers not listed
/// yet, oldest first.
#[derive(Clone, Default)]
pub struct Awaiting {
    /// By digest (so a short id finds them).
    entries: BTreeMap<DescriptorDigest, Waiting>,
    /// By measurer: the digests waiting for it.
    per_measurer: HashMap<PeerId, Vec<DescriptorDigest>>,
    /// By the peer that sent them: how many wait.
    per_sender: HashMap<PeerId, usize>,
    /// Arrival order, with the arrival time; an entry no longer in
    /// `entries` (taken) is skipped, and the queue is compacted when such
    /// entries make up half of it.
    order: VecDeque<(DescriptorDigest, u64)>,
    bytes: usize,
}

#[derive(Clone)]
struct Waiting {
    measurer: PeerId,
    sender: PeerId,
    raw: Vec<u8>,
    at: u64,
}

/// Unverified bytes a peer sent are not worth printing.
impl std::fmt::Debug for Awaiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Awaiting")
            .field("records", &self.entries.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Awaiting {
    /// Keeps `raw` (digest `digest`, claiming measurer `measurer`, sent by
    /// `sender`) until the measurer is listed, dropping the oldest records
    /// to make room and any that waited [`AWAITING_SECS`]. Returns whether
    /// it waits: not if it is larger than `max_len` (what a record of its
    /// kind can be), or its measurer has [`MAX_AWAITING_PER_MEASURER`] or
    /// its sender [`MAX_AWAITING_PER_SENDER`] waiting.
    pub fn hold(
        &mut self,
        measurer: PeerId,
        sender: PeerId,
        digest: DescriptorDigest,
        raw: Vec<u8>,
        max_len: usize,
        now: u64,
    ) -> bool {
        self.expire(now);
        if self.entries.contains_key(&digest) {
            return true;
        }
        if raw.len() > max_len.min(MAX_AWAITING_BYTES)
            || self
                .per_measurer
                .get(&measurer)
                .is_some_and(|d| d.len() >= MAX_AWAITING_PER_MEASURER)
            || self
                .per_sender
                .get(&sender)
                .is_some_and(|&n| n >= MAX_AWAITING_PER_SENDER)
        {
            return false;
        }
        while self.entries.len() >= MAX_AWAITING || self.bytes + raw.len() > MAX_AWAITING_BYTES {
            if !self.drop_oldest() {
                break;
            }
        }
        self.bytes += raw.len();
        self.per_measurer.entry(measurer).or_default().push(digest);
        *self.per_sender.entry(sender).or_default() += 1;
        self.order.push_back((digest, now));
        self.entries.insert(
            digest,
            Waiting {
                measurer,
                sender,
                raw,
                at: now,
            },
        );
        true
    }

    /// The records waiting for `measurer`, in arrival order, taken out.
    pub fn take(&mut self, measurer: &PeerId, now: u64) -> Vec<(DescriptorDigest, Vec<u8>)> {
        self.expire(now);
        let Some(digests) = self.per_measurer.remove(measurer) else {
            return Vec::new();
        };
        let taken: Vec<_> = digests
            .into_iter()
            .filter_map(|d| {
                let w = self.entries.remove(&d)?;
                self.bytes -= w.raw.len();
                self.sent_one_less(&w.sender);
                Some((d, w.raw))
            })
            .collect();
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(d, at)| entries.get(d).is_some_and(|w| w.at == *at));
        }
        taken
    }

    /// Whether a record with this digest waits.
    pub fn contains(&self, digest: &DescriptorDigest) -> bool {
        self.entries.contains_key(digest)
    }

    /// Whether a record whose digest begins with `prefix` waits.
    pub fn contains_prefix(&self, prefix: &[u8]) -> bool {
        self.entries
            .range(crate::directory::prefix_range(prefix))
            .next()
            .is_some()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the records waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the records that waited [`AWAITING_SECS`] at `now` (or arrived
    /// that much ahead of it: the clock went back).
    pub fn expire(&mut self, now: u64) {
        while let Some(&(d, at)) = self.order.front() {
            if self.entries.get(&d).is_none_or(|w| w.at != at) {
                // Taken already.
                self.order.pop_front();
                continue;
            }
            if now.saturating_sub(at) < AWAITING_SECS && at <= now.saturating_add(AWAITING_SECS) {
                break;
            }
            self.drop_oldest();
        }
    }

    fn sent_one_less(&mut self, sender: &PeerId) {
        if let Some(n) = self.per_sender.get_mut(sender) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(sender);
            }
        }
    }

    /// Drops the oldest record still waiting (and any taken ones before
    /// it); false if none waits.
    fn drop_oldest(&mut self) -> bool {
        while let Some((d, at)) = self.order.pop_front() {
            if self.entries.get(&d).is_none_or(|w| w.at != at) {
                continue;
            }
            let Some(w) = self.entries.remove(&d) else {
                continue;
            };
            self.bytes -= w.raw.len();
            self.sent_one_less(&w.sender);
            if let Some(list) = self.per_measurer.get_mut(&w.measurer) {
                list.retain(|x| *x != d);
                if list.is_empty() {
                    self.per_measurer.remove(&w.measurer);
                }
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn records_wait_for_their_measurer_and_are_taken_once() {
        let (a, b, from) = (peer(), peer(), peer());
        let mut w = Awaiting::default();
        assert!(w.hold(a, from, [1; 32], vec![1; 10], 64, 100));
        assert!(w.hold(b, from, [2; 32], vec![2; 10], 64, 100));
        assert!(w.hold(a, from, [3; 32], vec![3; 10], 64, 101));
        assert!(w.hold(a, from, [3; 32], vec![3; 10], 64, 101));
        assert!(
            !w.hold(a, from, [4; 32], vec![4; 65], 64, 101),
            "larger than its kind"
        );
        assert_eq!(w.len(), 3);
        assert!(w.contains(&[3; 32]) && w.contains_prefix(&[2; 4]));
        let got = w.take(&a, 102);
        assert_eq!(got, vec![([1; 32], vec![1; 10]), ([3; 32], vec![3; 10])]);
        assert!(w.take(&a, 102).is_empty());
        assert!(!w.contains(&[1; 32]) && w.contains(&[2; 32]));
        assert_eq!((w.len(), w.bytes()), (1, 10));
    }

    #[test]
    fn the_oldest_go_first_when_full_and_nothing_waits_forever() {
        let (a, from) = (peer(), peer());
        let mut w = Awaiting::default();
        // One measurer gets MAX_AWAITING_PER_MEASURER places.
        for i in 0..MAX_AWAITING_PER_MEASURER + 1 {
            let mut d = [0xa0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let held = w.hold(a, from, d, vec![0; 100], 200, 1000);
            assert_eq!(held, i < MAX_AWAITING_PER_MEASURER);
        }
        assert_eq!(w.len(), MAX_AWAITING_PER_MEASURER);
        w.take(&a, 1000);
        for i in 0..MAX_AWAITING + 10 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert!(w.hold(peer(), peer(), d, vec![0; 100], 200, 1000));
        }
        assert_eq!(w.len(), MAX_AWAITING);
        assert!(!w.contains(&[0; 32]));
        // Bytes are bounded as well as count.
        let big = vec![0; MAX_AWAITING_BYTES / 2 + 1];
        w.hold(a, from, [0xff; 32], big.clone(), usize::MAX, 1000);
        w.hold(a, from, [0xfe; 32], big, usize::MAX, 1000);
        assert!(w.bytes() <= MAX_AWAITING_BYTES, "{}", w.bytes());
        assert!(w.contains(&[0xfe; 32]) && !w.contains(&[0xff; 32]));
        assert!(!w.hold(
            a,
            from,
            [0xfd; 32],
            vec![0; MAX_AWAITING_BYTES + 1],
            usize::MAX,
            1000
        ));
        assert!(!w.contains(&[0xfd; 32]));
        // After AWAITING_SECS everything has gone.
        w.expire(1000 + AWAITING_SECS);
        assert!(w.is_empty() && w.bytes() == 0);
        assert!(w.take(&a, 1000 + AWAITING_SECS).is_empty());
    }

    #[test]
    fn one_sender_gets_a_quarter_of_the_places() {
        let (flooder, honest) = (peer(), peer());
        let mut w = Awaiting::default();
        let digest = |tag: u8, i: usize| {
            let mut d = [tag; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            d
        };
        // Junk naming made-up measurers, all from one peer.
        let held = (0..MAX_AWAITING)
            .filter(|&i| w.hold(peer(), flooder, digest(1, i), vec![0; 100], 200, 1000))
            .count();
        assert_eq!(held, MAX_AWAITING_PER_SENDER);
        // Another peer's records still wait, and push none of them out.
        let honest_measurer = peer();
        assert!(w.hold(
            honest_measurer,
            honest,
            digest(2, 0),
            vec![0; 100],
            200,
            1000
        ));
        assert_eq!(w.len(), MAX_AWAITING_PER_SENDER + 1);
        // Taken or expired records free their sender's places.
        assert_eq!(w.take(&honest_measurer, 1000).len(), 1);
        w.expire(1000 + AWAITING_SECS);
        assert!(w.is_empty());
        assert!(w.hold(peer(), flooder, digest(3, 0), vec![0; 100], 200, 2000));
    }
}
