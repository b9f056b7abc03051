//! Measurement records that arrived before their measurer's descriptor.
//!
//! Reconciliation hands records over oldest first, so a joining node gets
//! days-old reports long before the descriptors their measurers
//! republished an hour ago. A report counts only once its measurer is
//! listed; refusing it and fetching it again later would make every
//! joiner pay for a message of reports twice. [`Awaiting`] keeps such
//! records, unverified and bounded in count, bytes and time, until the
//! measurer's descriptor arrives ([`Awaiting::take`]); whatever does not
//! fit is dropped oldest first and fetched again later, as before.

use std::collections::{BTreeMap, HashMap, VecDeque};

use libp2p::PeerId;

use crate::descriptor::DescriptorDigest;

/// At most this many records wait (two full reconciliation messages of
/// reports).
pub const MAX_AWAITING: usize = 4096;
/// At most this many bytes of them.
pub const MAX_AWAITING_BYTES: usize = 4 * 1024 * 1024;
/// A record waits at most this long (seconds); a measurer whose
/// descriptor has not come by then is probably gone.
pub const AWAITING_SECS: u64 = 300;

/// Records (measurement reports and fork proofs) of measurers not listed
/// yet, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Awaiting {
    /// By digest: the measurer and the arrival time (to tell an entry in
    /// `order` from a later one of the same digest).
    by_digest: BTreeMap<DescriptorDigest, (PeerId, u64)>,
    /// By measurer: how many wait.
    per_measurer: HashMap<PeerId, usize>,
    /// In arrival order.
    order: VecDeque<Waiting>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Waiting {
    measurer: PeerId,
    digest: DescriptorDigest,
    raw: Vec<u8>,
    at: u64,
}

impl Awaiting {
    /// Keeps `raw` (digest `digest`, claiming measurer `measurer`) until
    /// the measurer is listed, dropping the oldest records to make room
    /// and any that waited [`AWAITING_SECS`]. A record larger than
    /// [`MAX_AWAITING_BYTES`] is not kept.
    pub fn hold(&mut self, measurer: PeerId, digest: DescriptorDigest, raw: Vec<u8>, now: u64) {
        self.expire(now);
        if raw.len() > MAX_AWAITING_BYTES || self.by_digest.contains_key(&digest) {
            return;
        }
        while self.order.len() >= MAX_AWAITING || self.bytes + raw.len() > MAX_AWAITING_BYTES {
            if !self.drop_oldest() {
                break;
            }
        }
        self.bytes += raw.len();
        self.by_digest.insert(digest, (measurer, now));
        *self.per_measurer.entry(measurer).or_default() += 1;
        self.order.push_back(Waiting {
            measurer,
            digest,
            raw,
            at: now,
        });
    }

    /// The records waiting for `measurer`, in arrival order, taken out.
    pub fn take(&mut self, measurer: &PeerId, now: u64) -> Vec<(DescriptorDigest, Vec<u8>)> {
        self.expire(now);
        if self.per_measurer.remove(measurer).is_none() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.order.len());
        for w in self.order.drain(..) {
            if w.measurer == *measurer {
                self.bytes -= w.raw.len();
                self.by_digest.remove(&w.digest);
                taken.push((w.digest, w.raw));
            } else {
                kept.push_back(w);
            }
        }
        self.order = kept;
        taken
    }

    /// Whether a record with this digest waits.
    pub fn contains(&self, digest: &DescriptorDigest) -> bool {
        self.by_digest.contains_key(digest)
    }

    /// Whether a record whose digest begins with `prefix` waits.
    pub fn contains_prefix(&self, prefix: &[u8]) -> bool {
        self.by_digest
            .range(crate::directory::prefix_range(prefix))
            .next()
            .is_some()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes of the records waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn expire(&mut self, now: u64) {
        while self.order.front().is_some_and(|w| {
            now.saturating_sub(w.at) >= AWAITING_SECS || w.at > now + AWAITING_SECS
        }) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) -> bool {
        let Some(w) = self.order.pop_front() else {
            return false;
        };
        self.bytes -= w.raw.len();
        self.by_digest.remove(&w.digest);
        if let Some(n) = self.per_measurer.get_mut(&w.measurer) {
            *n -= 1;
            if *n == 0 {
                self.per_measurer.remove(&w.measurer);
            }
        }
        true
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
        let (a, b) = (peer(), peer());
        let mut w = Awaiting::default();
        w.hold(a, [1; 32], vec![1; 10], 100);
        w.hold(b, [2; 32], vec![2; 10], 100);
        w.hold(a, [3; 32], vec![3; 10], 101);
        w.hold(a, [3; 32], vec![3; 10], 101);
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
        let a = peer();
        let mut w = Awaiting::default();
        for i in 0..MAX_AWAITING + 10 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            w.hold(a, d, vec![0; 100], 1000);
        }
        assert_eq!(w.len(), MAX_AWAITING);
        assert!(!w.contains(&[0; 32]));
        // Bytes are bounded as well as count.
        let big = vec![0; MAX_AWAITING_BYTES / 2 + 1];
        w.hold(a, [0xff; 32], big.clone(), 1000);
        w.hold(a, [0xfe; 32], big, 1000);
        assert!(w.bytes() <= MAX_AWAITING_BYTES, "{}", w.bytes());
        assert!(w.contains(&[0xfe; 32]) && !w.contains(&[0xff; 32]));
        w.hold(a, [0xfd; 32], vec![0; MAX_AWAITING_BYTES + 1], 1000);
        assert!(!w.contains(&[0xfd; 32]));
        // After AWAITING_SECS everything has gone.
        assert!(w.take(&peer(), 1000 + AWAITING_SECS).is_empty());
        assert!(w.is_empty() && w.bytes() == 0);
        assert!(w.take(&a, 1000 + AWAITING_SECS).is_empty());
    }
}
