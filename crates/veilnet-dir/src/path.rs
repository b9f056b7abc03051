//! Path selection: which relays a new circuit goes through.
//!
//! The first hop is always one of the guards the caller offers (the circuit
//! manager's guard state decides which relays are guards and in what order);
//! there is no fallback to another relay. The other hops are
//! bandwidth-weighted random draws from the caller's RNG; nothing here reads
//! the clock or touches the network.

use std::net::IpAddr;

use libp2p::PeerId;
use rand::Rng;
use veilnet_cell::{TargetAddr, MAX_HOPS};

use crate::descriptor::Descriptor;
use crate::directory::Directory;
use crate::weight::Weights;

/// Fewest hops a path may have.
pub const MIN_HOPS: usize = 1;
/// Lower clamp of a node's selection weight (bytes/s): 1 KB/s.
pub const MIN_WEIGHT: u64 = 1_000;
/// Upper clamp of a node's selection weight (bytes/s): 10 GB/s.
pub const MAX_WEIGHT: u64 = 10_000_000_000;
/// Random restarts before giving up on a path that may exist.
const ATTEMPTS: usize = 16;

/// A request for a path.
#[derive(Debug, Clone, Copy)]
pub struct PathRequest<'a> {
    /// Number of hops, [`MIN_HOPS`]`..=`[`MAX_HOPS`]. With one hop, that hop
    /// is the exit.
    pub hops: usize,
    /// What the exit must be willing to connect to: an address its policy
    /// allows, or a name on a port its policy may allow (the exit resolves
    /// it); `None` for no particular target (a pre-built circuit): any exit.
    pub exit_target: Option<&'a TargetAddr>,
    /// Peers never to choose (the directory's own peer is always excluded).
    pub exclude: &'a [PeerId],
    /// The only relays the first hop may be, in order of preference: the
    /// first one that is a usable relay of the directory and can start a
    /// path to a suitable exit is the first hop (see [`select_path`]). Empty
    /// or all unusable: [`PathError::NoUsableGuard`].
    pub guards: &'a [PeerId],
}

/// Why no path was selected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `hops` is outside `1..=5`.
    #[error("bad hop count {hops} (must be {MIN_HOPS}..={MAX_HOPS})")]
    BadHopCount {
        /// Requested hops.
        hops: usize,
    },
    /// No usable exit node's policy allows the target. (The target itself is
    /// deliberately not in the message: it is user data.)
    #[error("no usable exit node allows the requested target")]
    NoExitForTarget,
    /// Not enough usable relays that satisfy the diversity rules.
    #[error("not enough usable relays for a {needed}-hop path ({have} usable relays; hops must differ in /16 and family)")]
    NotEnoughRelays {
        /// Hops requested.
        needed: usize,
        /// Usable relays in the directory (relay role, a link address, not excluded).
        have: usize,
    },
    /// None of the guards offered is a usable relay of the directory (or
    /// they are all excluded). The first hop is always a guard: no other
    /// relay is used instead.
    #[error("no usable guard for the first hop ({offered} guards offered, none is a usable relay in the directory); the first hop is never a non-guard")]
    NoUsableGuard {
        /// How many guards the request offered.
        offered: usize,
    },
}

/// A node's selection weight: its advertised bandwidth clamped to
/// [`MIN_WEIGHT`]`..=`[`MAX_WEIGHT`].
pub fn weight(d: &Descriptor) -> u64 {
    d.bandwidth.clamp(MIN_WEIGHT, MAX_WEIGHT)
}

/// Whether a node can carry circuits at all: relay role and a link address.
pub fn is_usable_relay(d: &Descriptor) -> bool {
    d.roles.relay && !d.link_addrs.is_empty()
}

/// Whether `d` is an exit node whose policy allows `target` (any target if
/// `None`). A name is resolved by the exit, so only its port is checked.
pub fn allows_target(d: &Descriptor, target: Option<&TargetAddr>) -> bool {
    d.roles.exit
        && match target {
            Some(TargetAddr::Ip(sa)) => d.exit_policy.allows(sa.ip(), sa.port()),
            Some(TargetAddr::Domain(_, port)) => d.exit_policy.may_allow_port(*port),
            None => true,
        }
}

/// Whether `a` and `b` declare each other as family (both directions).
pub fn same_family(a: &Descriptor, b: &Descriptor) -> bool {
    a.family.contains(&b.peer_id) && b.family.contains(&a.peer_id)
}

#[derive(PartialEq, Eq)]
enum Subnet {
    V4([u8; 2]),
    V6([u16; 2]),
}

/// The /16 (IPv4) or /32 (IPv6) of an address; `None` for loopback, which is
/// exempt from the diversity rule so local test networks work.
fn subnet(ip: IpAddr) -> Option<Subnet> {
    match veilnet_policy::canonical_ip(ip) {
        ip if ip.is_loopback() => None,
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(Subnet::V4([o[0], o[1]]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(Subnet::V6([s[0], s[1]]))
        }
    }
}

/// Whether the link addresses clients dial (the first of each) share a
/// /16 (IPv4) or /32 (IPv6). Loopback addresses never count. The other
/// addresses a relay lists are its own claims: nobody dials or verifies
/// them (measurers reach the first), so they neither let a relay keep
/// itself off paths with others nor put it on paths it should not share.
pub fn share_subnet(a: &Descriptor, b: &Descriptor) -> bool {
    let dialled = |d: &Descriptor| d.link_addrs.first().and_then(|a| subnet(a.ip()));
    matches!((dialled(a), dialled(b)), (Some(sa), Some(sb)) if sa == sb)
}

/// Whether `a` and `b` may be on the same path: different peers, not the
/// same family, no shared /16 (or /32).
pub fn compatible(a: &Descriptor, b: &Descriptor) -> bool {
    a.peer_id != b.peer_id && !same_family(a, b) && !share_subnet(a, b)
}

/// Weighted random choice by `weights`; `None` if no candidate weighs
/// anything.
fn pick<'a>(
    cands: &[&'a Descriptor],
    weights: &Weights,
    rng: &mut impl Rng,
) -> Option<&'a Descriptor> {
    let total: u64 = cands
        .iter()
        .map(|d| weights.get(&d.peer_id))
        .fold(0u64, u64::saturating_add);
    if total == 0 {
        return None;
    }
    let mut x = rng.gen_range(0..total);
    for d in cands {
        let w = weights.get(&d.peer_id);
        if x < w {
            return Some(d);
        }
        x -= w;
    }
    cands.last().copied()
}

fn fits(d: &Descriptor, chosen: &[&Descriptor]) -> bool {
    chosen.iter().all(|c| compatible(d, c))
}

/// Pick a path for `req` from `dir`.
///
/// Rules:
/// * only nodes with the relay role and at least one link address; never the
///   directory's own peer, never a peer in `req.exclude`, no duplicates;
/// * the first hop is the first guard of `req.guards`, in order, that is
///   usable and with which a whole path can be built (an exit compatible
///   with it, then middles); never any other relay: no usable guard is
///   [`PathError::NoUsableGuard`]. With one hop, that hop is both the guard
///   and the exit;
/// * then the exit, among exit nodes whose policy allows the target
///   ([`allows_target`]) and that may share a path with the guard;
/// * then the middle hops;
/// * the exit and middle choices are weighted by the directory's
///   [`Weights`] (the advertised bandwidth, [`weight`], with at most
///   [`MAX_WEIGHTED_PER_PREFIX`](crate::MAX_WEIGHTED_PER_PREFIX) relays per
///   IPv4 /24 or IPv6 /48 carrying any); a relay that weighs nothing is
///   never chosen, as guard or otherwise;
/// * no two hops' dialled link addresses (the first they list, the one
///   measurers reach) share an IPv4 /16 or IPv6 /32, except
///   loopback (127.0.0.0/8, ::1), which is exempt so that local test networks
///   work; no two hops are in the same (mutually declared) family.
///
/// The returned path is ordered first hop to exit. A greedy choice can paint
/// itself into a corner, so selection restarts a few times per guard before
/// trying the next guard, and finally reports [`PathError::NotEnoughRelays`].
pub fn select_path(
    dir: &Directory,
    req: &PathRequest,
    rng: &mut impl Rng,
) -> Result<Vec<Descriptor>, PathError> {
    if !(MIN_HOPS..=MAX_HOPS).contains(&req.hops) {
        return Err(PathError::BadHopCount { hops: req.hops });
    }
    let own = dir.own();
    let weights = dir.weights();
    // A relay over its address cap weighs nothing and is never chosen,
    // not even as a guard.
    let usable: Vec<&Descriptor> = dir
        .iter()
        .filter(|d| {
            is_usable_relay(d)
                && d.peer_id != own
                && !req.exclude.contains(&d.peer_id)
                && weights.get(&d.peer_id) > 0
        })
        .collect();
    let exits: Vec<&Descriptor> = usable
        .iter()
        .copied()
        .filter(|d| allows_target(d, req.exit_target))
        .collect();
    if exits.is_empty() {
        return Err(PathError::NoExitForTarget);
    }
    let not_enough = PathError::NotEnoughRelays {
        needed: req.hops,
        have: usable.len(),
    };
    if usable.len() < req.hops {
        return Err(not_enough);
    }
    // The guards in the caller's order, each once.
    let mut guards: Vec<&Descriptor> = Vec::new();
    for g in req.guards {
        if let Some(d) = usable.iter().find(|d| d.peer_id == *g) {
            if !guards.iter().any(|c| c.peer_id == *g) {
                guards.push(d);
            }
        }
    }
    if guards.is_empty() {
        return Err(PathError::NoUsableGuard {
            offered: req.guards.len(),
        });
    }
    for guard in guards {
        if req.hops == 1 {
            if allows_target(guard, req.exit_target) {
                return Ok(vec![guard.clone()]);
            }
            continue;
        }
        for _ in 0..ATTEMPTS {
            if let Some(path) = try_build(req.hops, guard, &usable, &exits, &weights, rng) {
                return Ok(path.into_iter().cloned().collect());
            }
        }
    }
    Err(not_enough)
}

fn try_build<'a>(
    hops: usize,
    guard: &'a Descriptor,
    usable: &[&'a Descriptor],
    exits: &[&'a Descriptor],
    weights: &Weights,
    rng: &mut impl Rng,
) -> Option<Vec<&'a Descriptor>> {
    let mut chosen = vec![guard];
    let exit_pool: Vec<&Descriptor> = exits.iter().copied().filter(|d| fits(d, &chosen)).collect();
    let exit = pick(&exit_pool, weights, rng)?;
    chosen.push(exit);
    for _ in 2..hops {
        let pool: Vec<&Descriptor> = usable
            .iter()
            .copied()
            .filter(|d| fits(d, &chosen))
            .collect();
        chosen.push(pick(&pool, weights, rng)?);
    }
    // chosen = [guard, exit, middles...]; want [guard, middles..., exit].
    chosen[1..].rotate_left(1);
    Some(chosen)
}
