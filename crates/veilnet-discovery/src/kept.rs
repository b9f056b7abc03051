//! Which links a relay keeps open with nothing to send on them.
//!
//! The announcements of the next hour need open links: without them a
//! link closes a minute after its last exchange and is dialed, secured,
//! identified and reconciled again. A relay keeps the links it chose (at
//! most its `target_peers`, dialed by its own walks and bootstrap, never
//! the dials a Kademlia query makes on its own) and a few that other
//! relays chose to it. The second kind is where a Sybil would sit: any
//! key can dial anyone. So places for inbound links are shared out by
//! network: when they are full, a link from a network that holds fewer of
//! them takes the place of the newest link from the network that holds
//! the most (the eviction rule of Bitcoin's inbound slots, without its
//! other protections). An attacker with addresses in `k` /16 networks
//! keeps at most about `k` of them once honest relays from other networks
//! have dialed. One of each announcement's peers and one of each
//! reconciliation round's is on a link the relay chose, which no one else
//! can place ([`choose_with_own`]).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use rand::{seq::SliceRandom, Rng};

/// Whether any of a candidate's addresses is in a network that `ours`
/// (the networks of the links we chose) holds already; addresses counted
/// per peer (loopback, private) never are.
pub(crate) fn network_taken<'a>(
    candidate: impl IntoIterator<Item = &'a Multiaddr>,
    ours: impl IntoIterator<Item = &'a NetGroup>,
) -> bool {
    let ours: HashSet<&NetGroup> = ours.into_iter().collect();
    candidate
        .into_iter()
        .filter_map(NetGroup::network)
        .any(|g| ours.contains(&g))
}

/// `n` of `peers` at random, `own_n` of them (as many as `peers` has) peers
/// that `own` says we chose: an attacker holding every inbound place
/// still cannot take a whole announcement or reconciliation round. The
/// node asks for one: links point from young relays to old, and more on
/// our own would leave relays that joined lately hearing little (in the
/// simulator, 10,000 nodes for 6 h, convergence p99 62 s with none of six
/// announcements on own links, 65 s with one, 108 with two, 177 with
/// three).
pub fn choose_with_own<T: Copy + PartialEq, R: Rng + ?Sized>(
    peers: &[T],
    own: impl Fn(&T) -> bool,
    own_n: usize,
    n: usize,
    rng: &mut R,
) -> Vec<T> {
    let ours: Vec<T> = peers.iter().filter(|p| own(p)).copied().collect();
    let mut chosen: Vec<T> = ours.choose_multiple(rng, own_n.min(n)).copied().collect();
    let rest: Vec<T> = peers
        .iter()
        .copied()
        .filter(|p| !chosen.contains(p))
        .collect();
    chosen.extend(rest.choose_multiple(rng, n - chosen.len()).copied());
    chosen
}

/// Of the links other relays chose to us, the share each announcement goes
/// to (numerator and denominator): every relay hears each record from
/// about this share of the relays it chose, whatever else they are
/// linked to.
pub const INBOUND_SHARE: (usize, usize) = (5, 8);
/// Links we chose that each announcement goes to: an attacker holding
/// every inbound place takes the inbound share, and each relay still
/// passes each record on to two relays it chose, so the announcements
/// still spread as a tree, not a chain (session 14's review).
pub const OWN_ANNOUNCE: usize = 2;
/// Fewest peers an announcement goes to: a relay nobody has chosen yet (a
/// joiner) still passes on what it learns and publishes, and in a small
/// network (a test network's few relays) every relay hears of every record
/// at once, as the six announcements drawn from all links did before.
pub const MIN_ANNOUNCE: usize = 6;

/// Whom an announcement goes to, of `peers`: [`INBOUND_SHARE`] of the
/// links others chose to us (`inbound`), at random, [`OWN_ANNOUNCE`] links
/// we chose (`own`), and others at random up to [`MIN_ANNOUNCE`] in all.
///
/// Why inbound: links point from young relays to old ones, so a relay that
/// joined lately is linked mostly to old relays with many links. With
/// announcements on a few links drawn from all, it hears of a record from
/// few of them, often none, and waits for a reconciliation round (which
/// leaves records of the current slot to announcements); in the simulator
/// at steady state (1,000 nodes, hours 36 to 42), a record reached 99 % of
/// relays in 277 s (p99) that way. Here each relay hears of each record
/// from about five of the eight relays it chose: what it hears does not
/// depend on strangers that link to it, and an attacker holding every
/// inbound place still cannot take a whole announcement (two go on links
/// we chose). The average announcement goes to about 7 peers (5 of 8
/// inbound links, and two own; 6 before); a relay that many chose sends
/// more (at most 10 of its 16 inbound places).
pub fn announcement_peers<T: Copy + PartialEq, R: Rng + ?Sized>(
    peers: &[T],
    own: impl Fn(&T) -> bool,
    inbound: impl Fn(&T) -> bool,
    rng: &mut R,
) -> Vec<T> {
    let theirs: Vec<T> = peers.iter().filter(|p| inbound(p)).copied().collect();
    let (num, den) = INBOUND_SHARE;
    let k = (theirs.len() * num).div_ceil(den);
    let mut chosen: Vec<T> = theirs.choose_multiple(rng, k).copied().collect();
    let ours: Vec<T> = peers
        .iter()
        .filter(|p| own(p) && !chosen.contains(p))
        .copied()
        .collect();
    chosen.extend(ours.choose_multiple(rng, OWN_ANNOUNCE).copied());
    if chosen.len() < MIN_ANNOUNCE {
        let rest: Vec<T> = peers
            .iter()
            .copied()
            .filter(|p| !chosen.contains(p))
            .collect();
        let missing = MIN_ANNOUNCE - chosen.len();
        chosen.extend(rest.choose_multiple(rng, missing).copied());
    }
    chosen
}

/// The network an address is counted in: its IPv4 /16 or IPv6 /32, or, for
/// an address on loopback, in a private range or without an IP, the peer
/// itself (a test network on one machine has one address for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NetGroup {
    V4([u8; 2]),
    V6([u8; 4]),
    Peer(PeerId),
}

impl NetGroup {
    pub(crate) fn of(addr: &Multiaddr, peer: PeerId) -> NetGroup {
        NetGroup::network(addr).unwrap_or(NetGroup::Peer(peer))
    }

    /// The network of a public address; `None` for one counted per peer.
    pub(crate) fn network(addr: &Multiaddr) -> Option<NetGroup> {
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        });
        match ip {
            Some(IpAddr::V4(ip))
                if !(ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_unspecified()) =>
            {
                let o = ip.octets();
                Some(NetGroup::V4([o[0], o[1]]))
            }
            Some(IpAddr::V6(ip))
                if !(ip.is_loopback()
                    || ip.is_unspecified()
                    // fc00::/7 (unique local) and fe80::/10 (link local)
                    || (ip.segments()[0] & 0xfe00) == 0xfc00
                    || (ip.segments()[0] & 0xffc0) == 0xfe80) =>
            {
                let o = ip.octets();
                Some(NetGroup::V6([o[0], o[1], o[2], o[3]]))
            }
            _ => None,
        }
    }
}

/// What [`Kept::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admit {
    /// Whether the link is kept.
    pub kept: bool,
    /// A link no longer kept to make room for it.
    pub evicted: Option<PeerId>,
}

/// The links a relay keeps open ([module docs](self)).
#[derive(Debug)]
pub(crate) struct Kept {
    own: HashSet<PeerId>,
    own_cap: usize,
    /// Inbound links kept: their network and when (an admission count).
    inbound: HashMap<PeerId, (NetGroup, u64)>,
    inbound_cap: usize,
    admitted: u64,
}

impl Kept {
    pub(crate) fn new(own_cap: usize, inbound_cap: usize) -> Self {
        Kept {
            own: HashSet::new(),
            own_cap,
            inbound: HashMap::new(),
            inbound_cap,
            admitted: 0,
        }
    }

    /// Decides for a relay that takes announcements whether to keep its
    /// link: one we `chose` (up to the cap of those) or one it chose to us
    /// (from network `group`). Asking again changes nothing, except that a
    /// link we chose that was kept as inbound moves to our own.
    pub(crate) fn admit(&mut self, peer: PeerId, chose: bool, group: NetGroup) -> Admit {
        let kept = |kept| Admit {
            kept,
            evicted: None,
        };
        if self.own.contains(&peer) {
            return kept(true);
        }
        if chose && self.own.len() < self.own_cap {
            self.inbound.remove(&peer);
            self.own.insert(peer);
            return kept(true);
        }
        if self.inbound.contains_key(&peer) {
            return kept(true);
        }
        self.admitted += 1;
        if self.inbound.len() < self.inbound_cap {
            self.inbound.insert(peer, (group, self.admitted));
            return kept(true);
        }
        // Full: the network holding the most places gives up its newest,
        // if it holds at least two more than the newcomer's.
        let mut count: HashMap<NetGroup, usize> = HashMap::new();
        for (g, _) in self.inbound.values() {
            *count.entry(*g).or_default() += 1;
        }
        let theirs = count.get(&group).copied().unwrap_or(0);
        let Some((&most, &n)) = count.iter().max_by_key(|(_, n)| **n) else {
            return kept(false);
        };
        if n < theirs + 2 {
            return kept(false);
        }
        let newest = self
            .inbound
            .iter()
            .filter(|(_, (g, _))| *g == most)
            .max_by_key(|(_, (_, at))| *at)
            .map(|(p, _)| *p);
        let Some(out) = newest else {
            return kept(false);
        };
        self.inbound.remove(&out);
        self.inbound.insert(peer, (group, self.admitted));
        Admit {
            kept: true,
            evicted: Some(out),
        }
    }

    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.own.contains(peer) || self.inbound.contains_key(peer)
    }

    /// Whether the link to `peer` is one we chose and keep.
    pub(crate) fn is_own(&self, peer: &PeerId) -> bool {
        self.own.contains(peer)
    }

    /// Every kept link.
    pub(crate) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.own.iter().chain(self.inbound.keys()).copied()
    }

    /// The link to `peer` is gone: its place is free.
    pub(crate) fn remove(&mut self, peer: &PeerId) {
        self.own.remove(peer);
        self.inbound.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4000").parse().unwrap()
    }

    fn group(ip: &str) -> NetGroup {
        NetGroup::of(&at(ip), PeerId::random())
    }

    #[test]
    fn networks_are_counted_by_16_and_loopback_by_peer() {
        assert_eq!(group("203.0.113.5"), group("203.0.7.9"));
        assert_ne!(group("203.0.113.5"), group("203.1.113.5"));
        // Loopback and private addresses: each peer its own.
        assert_ne!(group("127.0.0.1"), group("127.0.0.1"));
        assert_ne!(group("10.0.0.1"), group("10.0.0.2"));
        let p = PeerId::random();
        let v6: Multiaddr = "/ip6/2001:db8:1:2::1/tcp/1".parse().unwrap();
        let v6b: Multiaddr = "/ip6/2001:db8:ffff::9/tcp/1".parse().unwrap();
        assert_eq!(NetGroup::of(&v6, p), NetGroup::of(&v6b, PeerId::random()));
        let lo6: Multiaddr = "/ip6/::1/tcp/1".parse().unwrap();
        assert_eq!(NetGroup::of(&lo6, p), NetGroup::Peer(p));
    }

    #[test]
    fn a_relay_keeps_the_links_it_chose_and_a_few_that_others_chose() {
        let mut kept = Kept::new(3, 2);
        let own: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let theirs: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let g = |p: &PeerId| NetGroup::Peer(*p);
        // The links we chose, up to the cap of them; a fourth dialed link
        // (a Kademlia query's, say) is an inbound candidate like any other.
        assert!(own[..3].iter().all(|p| kept.admit(*p, true, g(p)).kept));
        assert!(own[..3].iter().all(|p| kept.is_own(p)));
        assert!(kept.admit(own[3], true, g(&own[3])).kept);
        assert!(!kept.is_own(&own[3]));
        kept.remove(&own[3]);
        // Of those others chose, the cap's worth.
        assert!(kept.admit(theirs[0], false, g(&theirs[0])).kept);
        assert!(kept.admit(theirs[1], false, g(&theirs[1])).kept);
        let third = kept.admit(theirs[2], false, g(&theirs[2]));
        assert_eq!(
            third,
            Admit {
                kept: false,
                evicted: None
            },
            "over the cap, all networks distinct"
        );
        assert!(
            kept.admit(theirs[1], false, g(&theirs[1])).kept,
            "asking again changes nothing"
        );
        assert!(!kept.contains(&theirs[2]));
        // A place freed by a closed link goes to the next.
        kept.remove(&theirs[0]);
        assert!(kept.admit(theirs[2], false, g(&theirs[2])).kept);
        kept.remove(&own[0]);
        assert!(!kept.contains(&own[0]));
        assert_eq!(kept.peers().count(), 4);
    }

    #[test]
    fn sybils_in_one_network_give_their_places_to_other_networks() {
        let mut kept = Kept::new(8, 4);
        let sybil_net = group("198.51.100.1");
        let sybils: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for s in &sybils {
            assert!(kept.admit(*s, false, sybil_net).kept);
        }
        // Honest relays from other networks each take the newest Sybil's
        // place until the Sybils' network holds no more than the others
        // could displace.
        let mut evicted = Vec::new();
        for i in 0..4u8 {
            let honest = PeerId::random();
            let a = kept.admit(honest, false, group(&format!("203.{i}.0.1")));
            if let Some(out) = a.evicted {
                assert!(a.kept);
                evicted.push(out);
            }
        }
        assert_eq!(
            evicted,
            vec![sybils[3], sybils[2], sybils[1]],
            "newest first"
        );
        assert_eq!(sybils.iter().filter(|s| kept.contains(s)).count(), 1);
        // Another Sybil from the same network cannot come back in.
        let again = kept.admit(PeerId::random(), false, sybil_net);
        assert!(!again.kept);
        // Nor can one from a network that already holds a place push out
        // another network's only one.
        let a = kept.admit(PeerId::random(), false, group("203.0.9.9"));
        assert_eq!(
            a,
            Admit {
                kept: false,
                evicted: None
            }
        );
    }

    #[test]
    fn a_network_holds_one_link_of_our_choosing() {
        let a = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let ours: Vec<NetGroup> = [a("/ip4/203.0.113.7/tcp/1"), a("/ip6/2001:db8:1::1/tcp/1")]
            .iter()
            .filter_map(NetGroup::network)
            .collect();
        assert!(network_taken(&[a("/ip4/203.0.9.9/tcp/2")], &ours));
        assert!(network_taken(&[a("/ip6/2001:db8:ffff::2/tcp/2")], &ours));
        assert!(!network_taken(&[a("/ip4/198.51.100.1/tcp/2")], &ours));
        // Any of its addresses: a private one listed first hides nothing.
        assert!(network_taken(
            &[a("/ip4/10.0.0.1/tcp/2"), a("/ip4/203.0.1.1/tcp/2")],
            &ours
        ));
        // Loopback and private addresses are each their own.
        assert!(!network_taken(&[a("/ip4/127.0.0.1/tcp/2")], &ours));
        assert!(!network_taken(&[a("/ip4/10.0.0.1/tcp/2")], &ours));
    }

    #[test]
    fn every_choice_of_peers_holds_one_we_chose_when_there_is_one() {
        let rng = &mut rand::thread_rng();
        let peers: Vec<u32> = (0..24).collect();
        let own = |p: &u32| *p == 17;
        for _ in 0..200 {
            let picked = choose_with_own(&peers, own, 1, 3, rng);
            assert_eq!(picked.len(), 3);
            assert!(picked.contains(&17), "{picked:?}");
            let mut distinct = picked.clone();
            distinct.dedup();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3);
        }
        // No own peer: any three; fewer peers than asked: all of them.
        assert_eq!(choose_with_own(&peers, |_| false, 1, 3, rng).len(), 3);
        let mut two = choose_with_own(&peers[..2], own, 1, 6, rng);
        two.sort_unstable();
        assert_eq!(two, vec![0, 1]);
        assert!(choose_with_own(&peers, own, 1, 0, rng).is_empty());
    }

    #[test]
    fn an_announcement_goes_to_most_of_those_that_chose_us_and_two_we_chose() {
        use rand::SeedableRng;
        let rng = &mut rand::rngs::StdRng::seed_from_u64(7);
        // 0..8: links we chose; 8..24: links others chose to us; 24..36:
        // connections neither kept.
        let peers: Vec<u32> = (0..36).collect();
        let own = |p: &u32| *p < 8;
        let inbound = |p: &u32| (8..24).contains(p);
        let mut heard = [0u32; 36];
        for _ in 0..800 {
            let picked = announcement_peers(&peers, own, inbound, rng);
            // 10 of the 16 inbound (5 of 8, rounded up) and two of ours.
            assert_eq!(picked.iter().filter(|p| inbound(p)).count(), 10);
            assert_eq!(picked.iter().filter(|p| own(p)).count(), OWN_ANNOUNCE);
            assert_eq!(picked.len(), 12, "{picked:?}");
            let mut sorted = picked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), picked.len(), "no peer twice");
            for p in picked {
                heard[p as usize] += 1;
            }
        }
        // Each that chose us hears of about 5 in 8 announcements.
        for (p, n) in heard.iter().enumerate().take(24).skip(8) {
            assert!((400..600).contains(n), "{p}: {n}");
        }
        // A joiner nobody chose yet still announces to six.
        let joiner = announcement_peers(&peers[..8], own, inbound, rng);
        assert_eq!(joiner.len(), MIN_ANNOUNCE);
        assert!(joiner.iter().all(own));
        let alone = announcement_peers(&peers[24..], own, inbound, rng);
        assert_eq!(alone.len(), MIN_ANNOUNCE);
        assert!(announcement_peers(&peers[..0], own, inbound, rng).is_empty());
        // A small network: everyone hears of everything.
        let few = [0u32, 8, 9, 25];
        let mut p = announcement_peers(&few, own, inbound, rng);
        p.sort_unstable();
        assert_eq!(p, few);
    }
}
