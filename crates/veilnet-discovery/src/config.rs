//! Configuration of a discovery node.

use std::{sync::Arc, time::Duration};

use libp2p::{identity::Keypair, Multiaddr, PeerId};

use crate::sync::{digest, RecordDigest, RecordKey, RecordStore};

/// A closure returning every record is a store, for tests and small tools
/// only: each call hashes every record, so it is no store for a network of
/// any size. It cannot tell the time a record carries: every key's is 0.
impl<F: Fn() -> Vec<Vec<u8>> + Send + Sync> RecordStore for F {
    fn keys(&self) -> Arc<[RecordKey]> {
        let mut d: Vec<RecordKey> = self().iter().map(|r| (0, digest(r))).collect();
        d.sort_unstable();
        d.dedup();
        d.into()
    }

    fn record(&self, wanted: &RecordDigest) -> Option<Vec<u8>> {
        self().into_iter().find(|r| digest(r) == *wanted)
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

/// The store a discovery node reconciles.
pub type RecordProvider = Arc<dyn RecordStore>;

/// When a client reconciles: twice in each slot of `every` (aligned to
/// unix time, like the directory's cut), once at a random moment in the
/// first half of the window from `from` to `to` after the slot's start,
/// with the relay it has been connected to longest, and once in the second
/// half with the next (a relay may lack a record for a while; two seldom
/// lack the same one, and the second fetch costs little: it finds little
/// left to reconcile). A client that fetches after the cut and before the
/// next slot begins has, through that slot, the records every relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSlots {
    /// Length of a slot (non-zero).
    pub every: Duration,
    /// Start of the window in a slot.
    pub from: Duration,
    /// End of the window in a slot (at least `from`, at most `every`).
    pub to: Duration,
}

impl FetchSlots {
    /// Slots of `every_secs` with the window `(from, to)` (seconds into
    /// each): what `veilnet_dir::Cut::fetch_window` gives, as the node and
    /// the simulator build it.
    pub fn new(every_secs: u64, (from, to): (u64, u64)) -> Self {
        FetchSlots {
            every: Duration::from_secs(every_secs),
            from: Duration::from_secs(from),
            to: Duration::from_secs(to),
        }
    }

    /// How long from `now` (since the unix epoch) until the next fetch, and
    /// which of the client's relays (0: the one connected longest, 1: the
    /// next) it is with; `pick` is a number in `[0, 1)`: where in its half
    /// of the window the fetch falls. A half already begun has had its
    /// fetch (or the client started in it and fetched on connecting); a
    /// fetch less than a second away is skipped for the next.
    pub fn next(&self, now: Duration, pick: f64) -> (Duration, usize) {
        let every = self.every.as_secs_f64().max(1.0);
        let now = now.as_secs_f64();
        let from = self.from.as_secs_f64();
        let to = self.to.as_secs_f64().max(from);
        let mid = (from + to) / 2.0;
        let pick = pick.clamp(0.0, 1.0);
        let start = (now / every).floor() * every;
        let moments = [
            (from + (mid - from) * pick, 0),
            (mid + (to - mid) * pick, 1),
        ];
        // A half's moment counts only if its half has not begun (the first
        // half's also while we are before it), so that each half gets one
        // fetch however `pick` is drawn from call to call.
        let halves = [(from, moments[0]), (mid, moments[1])];
        for slot in [start, start + every] {
            for (begins, (at, rank)) in halves {
                if now < slot + begins && slot + at >= now + 1.0 {
                    return (Duration::from_secs_f64(slot + at - now), rank);
                }
            }
        }
        // Unreachable with `to <= every`; the next slot's first moment.
        (
            Duration::from_secs_f64((start + 2.0 * every + moments[0].0 - now).max(0.0)),
            0,
        )
    }
}

/// Configuration of a discovery node. Build one with [`DiscoveryConfig::new`]
/// and adjust the public fields.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The node's libp2p identity.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/0`. Default: none.
    pub listen: Vec<Multiaddr>,
    /// Take part as a client only (a node with no relay role): listen on
    /// nothing (`listen` must be empty), run Kademlia in client mode (never
    /// added to other nodes' routing tables), and open reconciliation
    /// exchanges without answering any, so peers neither list this node
    /// nor reconcile with it. Default: false.
    pub client_only: bool,
    /// Bootstrap peers; each address must end with `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers remembered from a previous run.
    pub known_peers: Vec<(PeerId, Multiaddr)>,
    /// A client's fetch relays from a previous run
    /// ([`DiscoveryHandle::fetch_relays`](crate::DiscoveryHandle::fetch_relays)):
    /// with fetch slots it takes them back (its first three) and dials them
    /// at start instead of its bootstrap and known peers, which it turns to
    /// only when they fail, as Tor's clients keep their directory guards.
    /// Ignored by a relay and by a client without fetch slots. Default:
    /// none.
    pub fetch_relays: Vec<(PeerId, Multiaddr)>,
    /// How many connections this node opens itself (it accepts more, up
    /// to [`MAX_ESTABLISHED`](crate::MAX_ESTABLISHED)). Default 8.
    pub target_peers: usize,
    /// Time between two gossip rounds. Must be non-zero. Default 2 s.
    pub exchange_interval: Duration,
    /// How long a connection with nothing keeping it open stays before it
    /// is closed. The links a relay keeps for announcements
    /// (`push::Kept`) do not close for this. Default 60 s.
    pub idle_timeout: Duration,
    /// Records accepted within this window are announced together, in one
    /// message per peer: each announcement costs a stream and two messages
    /// (about 370 bytes with framing) whatever it carries, more than a
    /// descriptor, so a relay that announced each record alone would spend
    /// most of its traffic on announcements. Longer windows save bytes and
    /// slow the spread (by about the window per hop). Must be non-zero.
    /// Default 1 s.
    pub announce_every: Duration,
    /// A client's reconciliation times, in place of `exchange_interval`
    /// (clients only; `None`, the default: every `exchange_interval`).
    pub client_fetch: Option<FetchSlots>,
    /// Maximum number of records per message, sent or accepted. Default 2048.
    pub max_records: usize,
    /// Maximum length of one record in bytes; larger records are dropped
    /// with a debug log. Default 16 KiB.
    pub max_record_len: usize,
}

impl DiscoveryConfig {
    /// Default time between gossip rounds.
    pub const DEFAULT_EXCHANGE_INTERVAL: Duration = Duration::from_secs(2);
    /// Default idle connection timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default announcement window ([`DiscoveryConfig::announce_every`]).
    pub const DEFAULT_ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
    /// Default number of connections a node opens itself.
    pub const DEFAULT_TARGET_PEERS: usize = 8;
    /// Default maximum number of records per message.
    pub const DEFAULT_MAX_RECORDS: usize = 2048;
    /// Default maximum record length.
    pub const DEFAULT_MAX_RECORD_LEN: usize = 16 * 1024;

    /// A configuration with the given identity, no listen address, no
    /// bootstrap or known peers and default limits.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            client_only: false,
            bootstrap: Vec::new(),
            known_peers: Vec::new(),
            fetch_relays: Vec::new(),
            target_peers: Self::DEFAULT_TARGET_PEERS,
            exchange_interval: Self::DEFAULT_EXCHANGE_INTERVAL,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            announce_every: Self::DEFAULT_ANNOUNCE_EVERY,
            client_fetch: None,
            max_records: Self::DEFAULT_MAX_RECORDS,
            max_record_len: Self::DEFAULT_MAX_RECORD_LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_fetches_twice_in_the_window_before_the_next_slot() {
        let slots = FetchSlots {
            every: Duration::from_secs(3600),
            from: Duration::from_secs(3360),
            to: Duration::from_secs(3570),
        };
        let at = |now: u64, pick: f64| {
            let (d, rank) = slots.next(Duration::from_secs(now), pick);
            (d.as_secs(), rank)
        };
        // Early in a slot: this slot's first fetch, with the oldest relay.
        assert_eq!(at(7200, 0.0), (3360, 0));
        assert_eq!(at(7200, 1.0), (3465, 0));
        // In the first half (after its fetch, whatever is drawn now): the
        // second half's, with the next relay.
        assert_eq!(at(7200 + 3400, 0.0), (65, 1));
        assert_eq!(at(7200 + 3400, 1.0), (170, 1));
        // In the second half: the next slot's first.
        assert_eq!(at(7200 + 3500, 1.0), (3600 - 3500 + 3465, 0));
        // Past the window: the next slot's first.
        assert_eq!(at(7200 + 3575, 0.0), (3600 - 3575 + 3360, 0));
    }
}
