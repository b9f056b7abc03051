//! The records a node has asked for and not yet received: one set for all
//! peers, so a record several peers announce is fetched from one of them.
//!
//! Sans-IO: every call takes the current time; the node ticks
//! [`Wants::expire`] and sends the plain `want` requests it returns.
//!
//! A digest is asked of one peer at a time. Other peers that offer it while
//! that request is out are remembered (a few per digest) and asked in turn
//! if the first has not delivered within [`WANT_TIMEOUT`] or goes away.
//! Everything is bounded: asks per peer ([`MAX_ASKED_PER_PEER`]), digests in
//! all ([`MAX_WANTS`]), offerers remembered per digest
//! ([`MAX_OFFERERS`]); what does not fit is not asked for now (a later
//! announcement or anti-entropy brings it), so a hostile announcer can hold
//! at most its share for [`WANT_TIMEOUT`] at a time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::{RecordDigest, MAX_DIGESTS};

/// How long the peer asked for a record has to deliver it before another
/// peer that offered it is asked (the request timeout of one exchange).
pub(crate) const WANT_TIMEOUT: Duration = Duration::from_secs(10);
/// Digests asked of one peer and not delivered, at most: two messages'
/// worth of wants.
pub(crate) const MAX_ASKED_PER_PEER: usize = 2 * MAX_DIGESTS;
/// Digests awaited in all, at most (about 100 bytes each with their
/// offerers).
pub(crate) const MAX_WANTS: usize = 4 * MAX_DIGESTS;
/// Peers remembered per digest besides the one asked.
pub(crate) const MAX_OFFERERS: usize = 3;

/// How much of the set one claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Digests asked of the peer, at most, after the claim.
    pub(crate) per_peer: usize,
    /// Digests awaited in all, at most, after the claim.
    pub(crate) total: usize,
    /// Whether a peer that let a want time out in the last
    /// [`LATE_MEMORY`] may be asked first.
    pub(crate) late_peers: bool,
    /// Whether the peer is on a link we chose: as an offerer it takes the
    /// place of one that is not when the [`MAX_OFFERERS`] are full, and is
    /// asked before them (strangers who announce first cannot fill them).
    pub(crate) own: bool,
}

impl Budget {
    /// This budget for a peer on a link we chose (or not).
    pub(crate) fn on_own(self, own: bool) -> Budget {
        Budget { own, ..self }
    }

    /// Reconciliation, which we start: the whole set.
    pub(crate) const RECONCILE: Budget = Budget {
        per_peer: MAX_ASKED_PER_PEER,
        total: MAX_WANTS,
        late_peers: true,
        own: false,
    };
    /// An announcement, which any peer may send unasked: a small share
    /// per peer and half the set in all, so announcers (Sybils among them)
    /// that never deliver cannot crowd out reconciliation.
    /// A peer that announced and then did not deliver is not asked first
    /// again for a while: what it announces that nobody is asked for is
    /// not asked of it (another announcer, or reconciliation, brings it);
    /// for what another peer is asked, it is remembered as an offerer
    /// behind it. So one that gets its want in first delays a record once.
    pub(crate) const ANNOUNCED: Budget = Budget {
        per_peer: MAX_ANNOUNCED_PER_PEER,
        total: MAX_WANTS / 2,
        late_peers: false,
        own: false,
    };
    /// An exchange a peer started, whose list shows records we lack: any
    /// identity may send one unasked, listing digests that exist nowhere,
    /// so it gets a quarter of the set in all and a small share per peer
    /// (what it holds back comes in our own rounds). With announcements'
    /// half, the exchanges we start keep at least a quarter of the set
    /// whatever strangers send.
    pub(crate) const ANSWERED: Budget = Budget {
        per_peer: MAX_DIGESTS / 4,
        total: MAX_WANTS / 4,
        late_peers: false,
        own: false,
    };
}

/// Digests asked of one peer because it announced them, at most (an
/// announcement batch is a few dozen records).
pub(crate) const MAX_ANNOUNCED_PER_PEER: usize = 512;
/// How long a peer that let a want time out is not asked first because of
/// its announcements.
pub(crate) const LATE_MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Want<P> {
    /// The peer asked, and when.
    asked: P,
    at: Instant,
    /// Others that offered it since, to ask in turn.
    offerers: Vec<(P, bool)>,
}

/// The global set of records asked for (see the module docs).
#[derive(Debug)]
pub(crate) struct Wants<P> {
    wants: HashMap<RecordDigest, Want<P>>,
    asked_of: HashMap<P, usize>,
    /// When each peer last let a want time out (within [`LATE_MEMORY`]).
    late: HashMap<P, Instant>,
}

impl<P> Default for Wants<P> {
    fn default() -> Self {
        Wants {
            wants: HashMap::new(),
            asked_of: HashMap::new(),
            late: HashMap::new(),
        }
    }
}

impl<P: Copy + Eq + Hash> Wants<P> {
    /// [`claim_within`](Self::claim_within) the budget of exchanges we
    /// start.
    #[cfg(test)]
    pub(crate) fn claim(&mut self, peer: P, want: &mut Vec<RecordDigest>, now: Instant) {
        self.claim_within(peer, want, now, Budget::RECONCILE);
    }

    /// `want` is what we would ask `peer` for; keeps in it only the digests
    /// nobody is being asked for (and that fit `budget`), and notes them as
    /// asked of `peer`. For the others, `peer` is remembered as an offerer
    /// to ask later if the peer asked does not deliver.
    pub(crate) fn claim_within(
        &mut self,
        peer: P,
        want: &mut Vec<RecordDigest>,
        now: Instant,
        budget: Budget,
    ) {
        let late = !budget.late_peers
            && self
                .late
                .get(&peer)
                .is_some_and(|t| now.saturating_duration_since(*t) < LATE_MEMORY);
        want.retain(|d| {
            if let Some(w) = self.wants.get_mut(d) {
                if w.asked != peer && !w.offerers.iter().any(|(p, _)| *p == peer) {
                    if w.offerers.len() < MAX_OFFERERS {
                        w.offerers.push((peer, budget.own));
                    } else if budget.own {
                        if let Some(o) = w.offerers.iter_mut().rev().find(|(_, own)| !own) {
                            *o = (peer, true);
                        }
                    }
                    // Ours are asked first, in the order they came.
                    w.offerers.sort_by_key(|(_, own)| !own);
                }
                // Asking the same peer twice (a repeated announcement, the
                // next round of an exchange) is harmless; anyone else waits.
                return w.asked == peer;
            }
            if late {
                return false;
            }
            let asked = self.asked_of.get(&peer).copied().unwrap_or(0);
            if asked >= budget.per_peer.min(MAX_ASKED_PER_PEER)
                || self.wants.len() >= budget.total.min(MAX_WANTS)
            {
                return false;
            }
            self.wants.insert(
                *d,
                Want {
                    asked: peer,
                    at: now,
                    offerers: Vec::new(),
                },
            );
            *self.asked_of.entry(peer).or_default() += 1;
            true
        });
    }

    /// A record with this digest arrived: true if we asked anyone for it
    /// (the node takes it then), and it is no longer awaited.
    pub(crate) fn delivered(&mut self, digest: &RecordDigest) -> bool {
        match self.wants.remove(digest) {
            Some(w) => {
                self.forget_ask(w.asked);
                true
            }
            None => false,
        }
    }

    /// Moves every digest whose peer has not delivered within
    /// [`WANT_TIMEOUT`] to its next offerer (dropping it if none is left);
    /// returns what to ask of whom, one list per peer.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(P, Vec<RecordDigest>)> {
        let late: Vec<RecordDigest> = self
            .wants
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.at) >= WANT_TIMEOUT)
            .map(|(d, w)| {
                self.late.insert(w.asked, now);
                *d
            })
            .collect();
        self.late
            .retain(|_, t| now.saturating_duration_since(*t) < LATE_MEMORY);
        self.reassign(late, now)
    }

    /// `peer` went away: what it was asked for goes to the next offerer at
    /// once, and it is no longer an offerer of anything. Returns what to ask
    /// of whom, as [`expire`](Self::expire) does.
    /// It stays late if it was (a reconnection does not clear that).
    pub(crate) fn peer_gone(&mut self, peer: P, now: Instant) -> Vec<(P, Vec<RecordDigest>)> {
        let mut mine = Vec::new();
        for (d, w) in &mut self.wants {
            w.offerers.retain(|(p, _)| *p != peer);
            if w.asked == peer {
                mine.push(*d);
            }
        }
        self.reassign(mine, now)
    }

    /// A request to `peer` failed (refused, or its stream broke): what it
    /// was asked for goes to the next offerer at once. Unlike
    /// [`peer_gone`](Self::peer_gone) it stays an offerer of the rest, and
    /// unlike a timeout it is not marked late.
    pub(crate) fn refused(&mut self, peer: P, now: Instant) -> Vec<(P, Vec<RecordDigest>)> {
        let mine: Vec<RecordDigest> = self
            .wants
            .iter()
            .filter(|(_, w)| w.asked == peer)
            .map(|(d, _)| *d)
            .collect();
        self.reassign(mine, now)
    }

    fn reassign(
        &mut self,
        digests: Vec<RecordDigest>,
        now: Instant,
    ) -> Vec<(P, Vec<RecordDigest>)> {
        let mut asks: HashMap<P, Vec<RecordDigest>> = HashMap::new();
        for d in digests {
            let Some(mut w) = self.wants.remove(&d) else {
                continue;
            };
            self.forget_ask(w.asked);
            // The first offerer with room is asked; the rest wait behind it.
            while !w.offerers.is_empty() {
                let (next, _) = w.offerers.remove(0);
                if self.asked_of.get(&next).copied().unwrap_or(0) < MAX_ASKED_PER_PEER {
                    *self.asked_of.entry(next).or_default() += 1;
                    asks.entry(next).or_default().push(d);
                    w.asked = next;
                    w.at = now;
                    self.wants.insert(d, w);
                    break;
                }
            }
        }
        let mut asks: Vec<(P, Vec<RecordDigest>)> = asks.into_iter().collect();
        for (_, ds) in &mut asks {
            ds.sort_unstable();
            ds.truncate(MAX_DIGESTS);
        }
        asks
    }

    fn forget_ask(&mut self, peer: P) {
        if let Some(n) = self.asked_of.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.asked_of.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sync::{self, RecordKey, RecordStore, SyncLimits, SyncMessage};

    const LIMITS: SyncLimits = SyncLimits {
        max_records: 2048,
        max_record_len: 4096,
        max_message_bytes: 4 * 1024 * 1024,
    };

    /// A store of byte records.
    #[derive(Default)]
    struct Set(Vec<Vec<u8>>);

    impl RecordStore for Set {
        fn keys(&self) -> Arc<[RecordKey]> {
            let mut d: Vec<_> = self.0.iter().map(|r| (0, sync::digest(r))).collect();
            d.sort_unstable();
            d.into()
        }
        fn record(&self, digest: &RecordDigest) -> Option<Vec<u8>> {
            self.0.iter().find(|r| sync::digest(r) == *digest).cloned()
        }
        fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest> {
            let held = self.keys();
            digests
                .iter()
                .filter(|d| held.binary_search(&(0, **d)).is_err())
                .copied()
                .collect()
        }
    }

    /// The `i`-th made-up digest that `peer` offers.
    fn digest(peer: u32, i: u32) -> RecordDigest {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&peer.to_be_bytes());
        d[4..8].copy_from_slice(&i.to_be_bytes());
        d
    }

    fn record(i: u8) -> Vec<u8> {
        vec![i; 300]
    }

    /// What `me` asks for after `from`'s announcement of `records`, with the
    /// wants filtered as the node filters them.
    fn on_announce(
        me: &Set,
        wants: &mut Wants<u32>,
        from: u32,
        records: &[Vec<u8>],
        now: Instant,
    ) -> SyncMessage {
        let digests: Vec<_> = records.iter().map(|r| sync::digest(r)).collect();
        let mut answer = sync::process(me, &sync::announce(&digests), &LIMITS);
        wants.claim(from, &mut answer.want, now);
        answer
    }

    #[test]
    fn two_announcers_of_one_record_cost_one_fetch() {
        let (me, mut wants, t0) = (Set::default(), Wants::default(), Instant::now());
        let first = on_announce(&me, &mut wants, 1, &[record(1)], t0);
        assert_eq!(first.want, vec![sync::digest(&record(1))]);
        // The second announcer is not asked while the first may answer.
        let second = on_announce(
            &me,
            &mut wants,
            2,
            &[record(1)],
            t0 + Duration::from_secs(1),
        );
        assert!(second.is_empty(), "{second:?}");
        // The first delivers: nothing is left to ask anyone.
        assert!(wants.delivered(&sync::digest(&record(1))));
        assert!(wants.expire(t0 + WANT_TIMEOUT * 3).is_empty());
        assert_eq!(wants.wants.len(), 0);
        // An unasked record is not taken.
        assert!(!wants.delivered(&sync::digest(&record(2))));
    }

    #[test]
    fn a_peer_that_never_answers_is_replaced_by_the_next_offerer_after_the_timeout() {
        let (me, mut wants, t0) = (Set::default(), Wants::default(), Instant::now());
        let offered = [record(1), record(2)];
        on_announce(&me, &mut wants, 1, &offered, t0);
        on_announce(
            &me,
            &mut wants,
            2,
            &offered,
            t0 + Duration::from_millis(500),
        );
        on_announce(
            &me,
            &mut wants,
            3,
            &offered[..1],
            t0 + Duration::from_millis(700),
        );
        // Before the timeout peer 1 is still the one asked.
        assert!(wants
            .expire(t0 + WANT_TIMEOUT - Duration::from_millis(1))
            .is_empty());
        // After it, peer 2 (the first other offerer) is asked for both, in
        // one message, and answers it as a plain want.
        let asks = wants.expire(t0 + WANT_TIMEOUT);
        assert_eq!(asks.len(), 1, "{asks:?}");
        let (peer, digests) = &asks[0];
        assert_eq!(*peer, 2);
        let mut expected: Vec<_> = offered.iter().map(|r| sync::digest(r)).collect();
        expected.sort_unstable();
        assert_eq!(*digests, expected);
        let peer_two = Set(offered.to_vec());
        let ask = SyncMessage {
            want: digests.clone(),
            ..SyncMessage::default()
        };
        let answer = sync::process(&peer_two, &ask, &LIMITS);
        assert_eq!(answer.records.len(), 2);
        // Peer 2 never answers either: only record 1 had a third offerer.
        let asks = wants.expire(t0 + WANT_TIMEOUT * 2);
        assert_eq!(asks, vec![(3, vec![sync::digest(&record(1))])]);
        assert_eq!(wants.wants.len(), 1);
        // Peer 3 goes away with nobody left to ask: the want is dropped.
        assert!(wants.peer_gone(3, t0 + WANT_TIMEOUT * 2).is_empty());
        assert_eq!(wants.wants.len(), 0);
    }

    #[test]
    fn a_peer_that_leaves_is_replaced_at_once() {
        let (me, mut wants, t0) = (Set::default(), Wants::default(), Instant::now());
        on_announce(&me, &mut wants, 1, &[record(1)], t0);
        on_announce(&me, &mut wants, 2, &[record(1)], t0);
        assert_eq!(
            wants.peer_gone(1, t0),
            vec![(2, vec![sync::digest(&record(1))])]
        );
    }

    #[test]
    fn announcers_that_never_deliver_leave_reconciliation_half_the_set() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        // One announcer gets its small share, however much it announces.
        let mut want: Vec<_> = (0..MAX_DIGESTS as u32).map(|i| digest(1, i)).collect();
        wants.claim_within(1, &mut want, t0, Budget::ANNOUNCED);
        assert_eq!(want.len(), MAX_ANNOUNCED_PER_PEER);
        // Fifty Sybil announcers: half the set at most.
        for peer in 2..52u32 {
            let mut want: Vec<_> = (0..MAX_DIGESTS as u32).map(|i| digest(peer, i)).collect();
            wants.claim_within(peer, &mut want, t0, Budget::ANNOUNCED);
        }
        assert_eq!(wants.wants.len(), MAX_WANTS / 2);
        // Reconciliation with an honest peer still gets its full share.
        let mut want: Vec<_> = (0..MAX_ASKED_PER_PEER as u32)
            .map(|i| digest(999, i))
            .collect();
        wants.claim(999, &mut want, t0);
        assert_eq!(want.len(), MAX_ASKED_PER_PEER);
    }

    #[test]
    fn strangers_that_never_deliver_leave_our_own_exchanges_their_share() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        let many = |peer: u32| -> Vec<RecordDigest> {
            (0..MAX_DIGESTS as u32).map(|i| digest(peer, i)).collect()
        };
        // Exchanges strangers start, listing digests nobody has: a small
        // share each, a quarter of the set in all.
        let mut want = many(1);
        wants.claim_within(1, &mut want, t0, Budget::ANSWERED);
        assert_eq!(want.len(), MAX_DIGESTS / 4);
        for peer in 2..40 {
            wants.claim_within(peer, &mut many(peer), t0, Budget::ANSWERED);
        }
        assert_eq!(wants.wants.len(), MAX_WANTS / 4);
        // Announcers fill the set to half, no more.
        for peer in 100..140 {
            wants.claim_within(peer, &mut many(peer), t0, Budget::ANNOUNCED);
        }
        assert_eq!(wants.wants.len(), MAX_WANTS / 2);
        // An exchange of ours still gets a whole peer's share.
        let mut want = many(999);
        want.extend(many(998));
        wants.claim(999, &mut want, t0);
        assert_eq!(want.len(), MAX_ASKED_PER_PEER);
    }

    #[test]
    fn strangers_announcing_first_do_not_keep_our_own_links_from_offering() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        let d = [7u8; 32];
        // Four strangers announce it first: one asked, three offerers.
        for peer in 1..=4u32 {
            wants.claim_within(peer, &mut vec![d], t0, Budget::ANNOUNCED);
        }
        // A link we chose offers it too: it takes a stranger's place, and
        // is asked next when the first stranger does not deliver.
        let mut want = vec![d];
        wants.claim_within(9, &mut want, t0, Budget::ANNOUNCED.on_own(true));
        assert!(want.is_empty(), "someone is asked already");
        assert_eq!(wants.expire(t0 + WANT_TIMEOUT), vec![(9, vec![d])]);
    }

    #[test]
    fn a_late_peer_stays_late_when_it_reconnects() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        let mut want = vec![[1; 32]];
        wants.claim_within(1u32, &mut want, t0, Budget::ANNOUNCED);
        let t1 = t0 + WANT_TIMEOUT;
        wants.expire(t1);
        wants.peer_gone(1, t1);
        let mut want = vec![[2; 32]];
        wants.claim_within(1, &mut want, t1, Budget::ANNOUNCED);
        assert!(want.is_empty());
        let mut want = vec![[2; 32]];
        wants.claim_within(1, &mut want, t1, Budget::ANSWERED);
        assert!(want.is_empty());
    }

    #[test]
    fn an_announcer_that_did_not_deliver_is_not_asked_first_for_a_while() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut want = vec![a];
        wants.claim_within(1u32, &mut want, t0, Budget::ANNOUNCED);
        assert_eq!(want, vec![a]);
        // Peer 1 never delivers; nobody else offered it.
        let t1 = t0 + WANT_TIMEOUT;
        assert!(wants.expire(t1).is_empty());
        // (A refused request is not lateness: peer 3 stays askable.)
        let mut want = vec![[9; 32]];
        wants.claim(3, &mut want, t0);
        let mut offer = vec![[9; 32]];
        wants.claim(4, &mut offer, t0);
        assert_eq!(wants.refused(3, t0), vec![(4, vec![[9; 32]])]);
        let mut want = vec![[8; 32]];
        wants.claim_within(3, &mut want, t0, Budget::ANNOUNCED);
        assert_eq!(want.len(), 1, "not late");
        // Its next announcement is not asked of it...
        let mut want = vec![b];
        wants.claim_within(1, &mut want, t1, Budget::ANNOUNCED);
        assert!(want.is_empty());
        // ...but of the next announcer...
        let mut want = vec![b];
        wants.claim_within(2, &mut want, t1, Budget::ANNOUNCED);
        assert_eq!(want, vec![b]);
        // ...and reconciliation still asks it, and after a while it is asked
        // first again.
        let mut want = vec![[3; 32]];
        wants.claim(1, &mut want, t1);
        assert_eq!(want.len(), 1);
        assert!(wants.delivered(&[3; 32]) && wants.delivered(&b));
        let t2 = t1 + LATE_MEMORY;
        wants.expire(t2);
        let mut want = vec![[4; 32]];
        wants.claim_within(1, &mut want, t2, Budget::ANNOUNCED);
        assert_eq!(want.len(), 1);
    }

    #[test]
    fn a_hostile_announcer_cannot_grow_the_set() {
        let mut wants = Wants::default();
        let t0 = Instant::now();
        let digest = |i: u32| {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d
        };
        // One announcer: at most its share, however often it announces.
        for batch in 0..10u32 {
            let mut want: Vec<_> = (0..MAX_DIGESTS as u32)
                .map(|i| digest(batch * MAX_DIGESTS as u32 + i))
                .collect();
            wants.claim(1, &mut want, t0);
        }
        assert_eq!(wants.wants.len(), MAX_ASKED_PER_PEER);
        // Many announcers: at most the total.
        for peer in 2..20u32 {
            let mut want: Vec<_> = (0..MAX_ASKED_PER_PEER as u32)
                .map(|i| digest(peer << 20 | i))
                .collect();
            wants.claim(peer, &mut want, t0);
        }
        assert_eq!(wants.wants.len(), MAX_WANTS);
        // Offerers per digest are bounded too: everybody offers digest 0.
        for peer in 100..200u32 {
            let mut want = vec![digest(0)];
            wants.claim(peer, &mut want, t0);
            assert!(want.is_empty());
        }
        assert!(wants
            .wants
            .values()
            .all(|w| w.offerers.len() <= MAX_OFFERERS));
        // And it all lapses: the per-peer counts follow the reassignments.
        let mut t = t0;
        for _ in 0..=MAX_OFFERERS + 1 {
            t += WANT_TIMEOUT;
            wants.expire(t);
        }
        assert_eq!(wants.wants.len(), 0);
        assert!(wants.asked_of.is_empty());
    }
}
