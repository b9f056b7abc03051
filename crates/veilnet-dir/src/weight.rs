//! How much of the network's traffic each relay is offered: its selection
//! weight, the same on every node with the same directory.
//!
//! Without measurements the weight is the relay's advertised bandwidth (clamped, see
//! [`path::weight`](crate::path::weight)), with one rule that costs an
//! attacker real resources: **address caps**. At most
//! [`MAX_WEIGHTED_PER_PREFIX`] relays per IPv4 /24 and per IPv6 /48 carry
//! weight (Tor's `AuthDirMaxServersPerAddr` idea, over prefixes, since one
//! machine can hold a whole /24 or /48 more easily than one address); the
//! others weigh 0 and are never chosen. Which relays keep their weight is
//! decided the same way everywhere: the heaviest, then the lowest peer id.
//! Only the address clients dial counts (the first link address), so a
//! relay cannot put its weight against prefixes by listing addresses it
//! never uses. A relay whose dialled address is private, loopback or
//! otherwise special weighs 0, except in a directory that allows private
//! relays (test networks on one host or one LAN), where such addresses are
//! not capped either. With measurements on ([`crate::measure`]), a relay
//! weighs its peer-measured bandwidth capped by its advertised one, and
//! nothing until independent measurers have reached it; the caps then rank
//! a prefix's relays by that weight. Nobody checks that a relay owns the
//! address it lists beyond reaching it there.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use libp2p::PeerId;

use crate::descriptor::Descriptor;
use crate::measure::{Measured, Measurements};
use crate::path::{is_usable_relay, weight, MAX_WEIGHT, MIN_WEIGHT};

/// Most relays of one IPv4 /24 or IPv6 /48 that carry weight.
pub const MAX_WEIGHTED_PER_PREFIX: usize = 2;

/// The prefix an address counts against, `None` for loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u16; 3]),
}

fn prefix(ip: IpAddr) -> Prefix {
    match veilnet_policy::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Prefix::V4([o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Prefix::V6([s[0], s[1], s[2]])
        }
    }
}

/// How an address counts: capped by its prefix, exempt (a private address
/// where private relays are allowed), or weightless.
enum Counts {
    Capped(Prefix),
    Exempt,
    Nothing,
}

fn counts(ip: IpAddr, allow_private: bool) -> Counts {
    match (veilnet_policy::is_private_or_special(ip), allow_private) {
        (false, _) => Counts::Capped(prefix(ip)),
        (true, true) => Counts::Exempt,
        (true, false) => Counts::Nothing,
    }
}

/// The selection weight of every usable relay of a directory, and what the
/// measurements say about each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weights {
    by_peer: HashMap<PeerId, u64>,
    measured: HashMap<PeerId, Measured>,
    measurers: HashSet<PeerId>,
    /// With measurements on: fewer than half the relays counted by address
    /// have a report in the window yet.
    unsettled: bool,
}

/// Each relay's weight by `weigh`, 0 for those over the address caps
/// (ranked by the same weight).
fn capped_weights(
    relays: &[&Descriptor],
    allow_private: bool,
    weigh: impl Fn(&Descriptor) -> u64,
) -> HashMap<PeerId, u64> {
    let capped = over_caps(relays, allow_private, &weigh);
    relays
        .iter()
        .map(|d| {
            let w = if capped.contains(&d.peer_id) {
                0
            } else {
                weigh(d)
            };
            (d.peer_id, w)
        })
        .collect()
}

/// The relays of `relays` that weigh nothing by address: over their
/// prefix's cap (the heaviest by `weigh` keep their place, then the lowest
/// peer id), or at a private address where those are not allowed.
fn over_caps(
    relays: &[&Descriptor],
    allow_private: bool,
    weigh: impl Fn(&Descriptor) -> u64,
) -> HashSet<PeerId> {
    let mut by_prefix: HashMap<Prefix, Vec<(u64, PeerId)>> = HashMap::new();
    let mut capped: HashSet<PeerId> = HashSet::new();
    for d in relays {
        let Some(dialled) = d.link_addrs.first() else {
            continue;
        };
        match counts(dialled.ip(), allow_private) {
            Counts::Capped(p) => by_prefix.entry(p).or_default().push((weigh(d), d.peer_id)),
            Counts::Exempt => {}
            Counts::Nothing => {
                capped.insert(d.peer_id);
            }
        }
    }
    for members in by_prefix.values_mut() {
        if members.len() <= MAX_WEIGHTED_PER_PREFIX {
            continue;
        }
        members.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        capped.extend(members[MAX_WEIGHTED_PER_PREFIX..].iter().map(|(_, p)| *p));
    }
    capped
}

impl Weights {
    /// The weights of the usable relays among `descriptors`;
    /// `allow_private`: private and loopback relays count (test networks).
    /// With `measurements` (and the time), a relay weighs what they say
    /// ([`crate::measure`]): nothing until it is reachable, then its
    /// measured bandwidth capped by its advertised one, ramped up from when
    /// it was first measured. The measurers counted are the relays that
    /// carry weight by address (the caps ranked by advertised bandwidth)
    /// and earned their place: most of those that tried reached them in an
    /// earlier period ([`Measurements::assess`]).
    pub fn of<'a>(
        descriptors: impl Iterator<Item = &'a Descriptor>,
        allow_private: bool,
        measurements: Option<(&Measurements, u64)>,
    ) -> Self {
        let relays: Vec<&Descriptor> = descriptors.filter(|d| is_usable_relay(d)).collect();
        let Some((m, now)) = measurements else {
            return Weights {
                by_peer: capped_weights(&relays, allow_private, weight),
                ..Weights::default()
            };
        };
        // A measurer that forked a report weighs nothing and measures
        // nothing while the proof lasts.
        let relays: Vec<&Descriptor> = relays
            .into_iter()
            .filter(|d| !m.forked(&d.peer_id))
            .collect();
        let by_address = over_caps(&relays, allow_private, weight);
        let candidates: HashSet<PeerId> = relays
            .iter()
            .map(|d| d.peer_id)
            .filter(|p| !by_address.contains(p))
            .collect();
        let assessed = m.assess(&candidates, now);
        let settled = assessed.settled;
        let (measurers, measured) = (assessed.measurers, assessed.measured);
        let ramp = m.params().ramp_secs;
        let required = m.params().required;
        let base = |d: &Descriptor| -> u64 {
            if !required {
                return weight(d);
            }
            match measured.get(&d.peer_id) {
                Some(x) if x.reachable => {
                    let w = weight(d).min(x.bandwidth.clamp(MIN_WEIGHT, MAX_WEIGHT));
                    let w = u128::from(w) * u128::from(x.ramp_percent(now, ramp)) / 100;
                    (w as u64).max(MIN_WEIGHT)
                }
                _ => 0,
            }
        };
        let by_peer = capped_weights(&relays, allow_private, base);
        Weights {
            by_peer,
            measured,
            measurers,
            unsettled: !settled,
        }
    }

    /// What the measurements say about `peer`, if any measurer counted
    /// observed it.
    pub fn measured(&self, peer: &PeerId) -> Option<&Measured> {
        self.measured.get(peer)
    }

    /// Whether enough is known to choose long-lived guards: without
    /// measurements always; with them, once at least half the relays
    /// counted by address have a report in the window.
    pub fn settled(&self) -> bool {
        !self.unsettled
    }

    /// The relays whose observations count (with measurements on).
    pub fn measurers(&self) -> &HashSet<PeerId> {
        &self.measurers
    }

    /// The weight of `peer`: 0 for a relay over its prefix's cap, or one
    /// that is not a usable relay of the directory.
    pub fn get(&self, peer: &PeerId) -> u64 {
        self.by_peer.get(peer).copied().unwrap_or(0)
    }
}
