//! How many bytes of answers a node gives to reconciliation requests: a
//! token bucket per peer and one for all peers together (sans-IO: the
//! caller passes the time).
//!
//! A request costs its sender little and can ask for much: an empty list
//! that asks for ours back is 46 bytes and draws every digest we hold (up
//! to 4096 of them, 131 KB), a want of 4096 digests draws as many records.
//! A fingerprint of the whole range is smaller still and makes us hash
//! every key we hold, so answers are charged for the keys they read too
//! ([`sync::answer_cost`](crate::sync::answer_cost)). A whole directory is
//! what a joining relay must fetch once, so the per-peer burst is one; after it, a peer gets [`PER_PEER_RATE`] on average,
//! far above what reconciliation between nodes that agree needs, and all
//! peers together [`TOTAL_RATE`]. A request whose least cost does not fit
//! is refused before any work, and one whose answer does not fit is
//! refused after: the request fails at the peer (an empty answer would
//! read as "we agree"), which then tries elsewhere. A peer's bucket
//! outlives its connection until it has refilled, so reconnecting does not
//! refill it (a new identity does: the total bucket bounds that).
//!
//! The node keys the buckets by the asker's network (`NetGroup`: a /16,
//! or the peer itself on loopback), so identities made in one network
//! share one bucket, and a link the node chose is not refused by the total
//! (it is charged to it): strangers that drain the total still leave the
//! relay's own links their answers.

use std::collections::HashMap;
use std::hash::Hash;

use tokio::time::Instant;

/// Bytes one peer may draw at once: a whole directory and its digests.
pub const PER_PEER_BURST: u64 = 8 * 1024 * 1024;
/// Bytes per second one peer may draw on average after its burst.
pub const PER_PEER_RATE: u64 = 32 * 1024;
/// Bytes all peers together may draw at once.
pub const TOTAL_BURST: u64 = 32 * 1024 * 1024;
/// Bytes per second all peers together may draw on average.
pub const TOTAL_RATE: u64 = 512 * 1024;
/// Per-peer buckets kept before full ones are dropped (a bucket that is
/// not full belongs to a peer that drew in the last few minutes; there can
/// be more of them than connections, and full ones are dropped first).
const MAX_PEER_BUCKETS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: u64, burst: u64, now: Instant) {
        let us = now.saturating_duration_since(self.at).as_micros();
        let add = (us.saturating_mul(u128::from(rate)) / 1_000_000).min(u128::from(burst));
        self.tokens = self
            .tokens
            .saturating_add(u64::try_from(add).unwrap_or(u64::MAX))
            .min(burst);
        self.at = now;
    }
}

/// The answer budget (see the module docs).
#[derive(Debug)]
pub(crate) struct AnswerBudget<P> {
    peers: HashMap<P, Bucket>,
    total: Option<Bucket>,
}

impl<P> Default for AnswerBudget<P> {
    fn default() -> Self {
        AnswerBudget {
            peers: HashMap::new(),
            total: None,
        }
    }
}

impl<P: Copy + Eq + Hash> AnswerBudget<P> {
    /// Whether `peer`'s bucket and the total one both hold `bytes` now
    /// (only `peer`'s for a link of `ours`).
    pub(crate) fn allows(&mut self, peer: P, bytes: usize, now: Instant, ours: bool) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let (mine, total) = self.refilled(peer, now);
        mine.tokens >= bytes && (ours || total.tokens >= bytes)
    }

    /// Takes `bytes` from `peer`'s bucket and the total one if both hold
    /// them (for `ours`, if `peer`'s does; the total gives what it has);
    /// false (and nothing taken) otherwise.
    pub(crate) fn take(&mut self, peer: P, bytes: usize, now: Instant, ours: bool) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let (mine, total) = self.refilled(peer, now);
        if mine.tokens < bytes || (!ours && total.tokens < bytes) {
            return false;
        }
        mine.tokens -= bytes;
        total.tokens = total.tokens.saturating_sub(bytes);
        true
    }

    /// Both buckets, refilled to `now`. Buckets of peers that have
    /// refilled entirely say nothing and are dropped when there are many.
    fn refilled(&mut self, peer: P, now: Instant) -> (&mut Bucket, &mut Bucket) {
        if self.peers.len() >= MAX_PEER_BUCKETS {
            self.peers.retain(|_, b| {
                b.refill(PER_PEER_RATE, PER_PEER_BURST, now);
                b.tokens < PER_PEER_BURST
            });
            // Still as many (identities made to drain it): the total
            // bucket is what bounds them.
            if self.peers.len() >= MAX_PEER_BUCKETS {
                self.peers.clear();
            }
        }
        let total = self
            .total
            .get_or_insert_with(|| Bucket::full(TOTAL_BURST, now));
        total.refill(TOTAL_RATE, TOTAL_BURST, now);
        let mine = self
            .peers
            .entry(peer)
            .or_insert_with(|| Bucket::full(PER_PEER_BURST, now));
        mine.refill(PER_PEER_RATE, PER_PEER_BURST, now);
        (mine, total)
    }

    /// Peers with a bucket.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_all_peers_the_total() {
        let t0 = Instant::now();
        let mut b = AnswerBudget::default();
        let mb = 1024 * 1024;
        for _ in 0..8 {
            assert!(b.take(1u32, mb, t0, false));
        }
        assert!(!b.take(1, 1, t0, false), "the burst is spent");
        // one second later: one second's worth
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.take(1, PER_PEER_RATE as usize, t1, false));
        assert!(!b.take(1, 1, t1, false));
        // other peers have their own buckets, up to the total
        let mut got = 0;
        for peer in 2..100u32 {
            if b.take(peer, 4 * mb, t1, false) {
                got += 4 * mb;
            }
        }
        assert!(got as u64 <= TOTAL_BURST, "{got}");
        assert!(got as u64 >= TOTAL_BURST - 8 * mb as u64 - 4 * mb as u64);
        // the total refills at its own rate
        let t2 = t1 + Duration::from_secs(2);
        assert!(!b.take(3, 4 * mb, t2, false));
        assert!(b.take(
            3,
            (2 * PER_PEER_RATE) as usize,
            t2 + Duration::from_secs(2),
            false
        ));
        assert!(!b.allows(1, 1024 * 1024, t2, false));
        assert_eq!(b.len(), 99);
    }

    #[test]
    fn strangers_that_drain_the_total_leave_our_own_links_their_answers() {
        let t0 = Instant::now();
        let mut b = AnswerBudget::default();
        let mb = 1024 * 1024;
        for peer in 1..=4u32 {
            assert!(b.take(peer, 8 * mb, t0, false));
        }
        assert!(!b.allows(5, mb, t0, false), "the total is spent");
        // A link we chose still draws on its own bucket, and only on that.
        assert!(b.allows(6, mb, t0, true));
        assert!(b.take(6, 8 * mb, t0, true));
        assert!(!b.take(6, 1, t0, true));
    }
}
