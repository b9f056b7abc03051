//! Path selection: which relays a new circuit goes through, and the
//! persistent set of guards used as first hops.
//!
//! All choices are bandwidth-weighted random draws from the caller's RNG;
//! nothing here reads the clock or touches the network.

use std::net::IpAddr;

use libp2p::PeerId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use veilnet_cell::{TargetAddr, MAX_HOPS};

use crate::descriptor::Descriptor;
use crate::directory::Directory;

/// Fewest hops a path may have.
pub const MIN_HOPS: usize = 1;
/// Lower clamp of a node's selection weight (bytes/s): 1 KB/s.
pub const MIN_WEIGHT: u64 = 1_000;
/// Upper clamp of a node's selection weight (bytes/s): 10 GB/s.
pub const MAX_WEIGHT: u64 = 10_000_000_000;
/// Most guards a [`GuardSet`] keeps.
pub const MAX_GUARDS: usize = 16;
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
    /// Preferred first hops; see [`select_path`].
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

/// Whether any link address of `a` shares a /16 (IPv4) or /32 (IPv6) with
/// any link address of `b`. Loopback addresses never count.
pub fn share_subnet(a: &Descriptor, b: &Descriptor) -> bool {
    a.link_addrs.iter().any(|la| {
        subnet(la.ip()).is_some_and(|sa| {
            b.link_addrs
                .iter()
                .any(|lb| subnet(lb.ip()).is_some_and(|sb| sa == sb))
        })
    })
}

/// Whether `a` and `b` may be on the same path: different peers, not the
/// same family, no shared /16 (or /32).
pub fn compatible(a: &Descriptor, b: &Descriptor) -> bool {
    a.peer_id != b.peer_id && !same_family(a, b) && !share_subnet(a, b)
}

/// Bandwidth-weighted random choice; `None` if `cands` is empty.
fn pick<'a>(cands: &[&'a Descriptor], rng: &mut impl Rng) -> Option<&'a Descriptor> {
    let total: u64 = cands
        .iter()
        .map(|d| weight(d))
        .fold(0u64, u64::saturating_add);
    if total == 0 {
        return None;
    }
    let mut x = rng.gen_range(0..total);
    for d in cands {
        let w = weight(d);
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
/// * the exit (last hop) is chosen first, among exit nodes whose policy
///   allows the target ([`allows_target`]);
/// * the first hop comes from `req.guards` (those in the directory and
///   usable); only if no guard is usable, or no usable guard can be combined
///   with any suitable exit, is any relay used;
/// * then the middle hops;
/// * every choice is bandwidth-weighted ([`weight`]);
/// * no two hops share an IPv4 /16 or IPv6 /32 of any link address, except
///   loopback (127.0.0.0/8, ::1), which is exempt so that local test networks
///   work; no two hops are in the same (mutually declared) family.
///
/// The returned path is ordered first hop to exit. A greedy choice can paint
/// itself into a corner, so selection restarts a few times before reporting
/// [`PathError::NotEnoughRelays`].
pub fn select_path(
    dir: &Directory,
    req: &PathRequest,
    rng: &mut impl Rng,
) -> Result<Vec<Descriptor>, PathError> {
    if !(MIN_HOPS..=MAX_HOPS).contains(&req.hops) {
        return Err(PathError::BadHopCount { hops: req.hops });
    }
    let own = dir.own();
    let usable: Vec<&Descriptor> = dir
        .iter()
        .filter(|d| is_usable_relay(d) && d.peer_id != own && !req.exclude.contains(&d.peer_id))
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
    let guards: Vec<&Descriptor> = usable
        .iter()
        .copied()
        .filter(|d| req.guards.contains(&d.peer_id))
        .collect();
    let phases: &[bool] = if guards.is_empty() || req.hops == 1 {
        &[false]
    } else {
        &[true, false]
    };
    for &use_guards in phases {
        for _ in 0..ATTEMPTS {
            if let Some(path) = try_build(
                req.hops,
                &usable,
                &exits,
                use_guards.then_some(&guards),
                rng,
            ) {
                return Ok(path.into_iter().cloned().collect());
            }
        }
    }
    Err(not_enough)
}

fn try_build<'a>(
    hops: usize,
    usable: &[&'a Descriptor],
    exits: &[&'a Descriptor],
    guards: Option<&Vec<&'a Descriptor>>,
    rng: &mut impl Rng,
) -> Option<Vec<&'a Descriptor>> {
    let exit = pick(exits, rng)?;
    if hops == 1 {
        return Some(vec![exit]);
    }
    let mut chosen = vec![exit];
    let first_pool: Vec<&Descriptor> = guards
        .map(|g| g.as_slice())
        .unwrap_or(usable)
        .iter()
        .copied()
        .filter(|d| fits(d, &chosen))
        .collect();
    chosen.push(pick(&first_pool, rng)?);
    for _ in 2..hops {
        let pool: Vec<&Descriptor> = usable
            .iter()
            .copied()
            .filter(|d| fits(d, &chosen))
            .collect();
        chosen.push(pick(&pool, rng)?);
    }
    // chosen = [exit, first, middles...]; want [first, middles..., exit].
    chosen.rotate_left(1);
    Some(chosen)
}

/// A small persistent set of first hops ("guards").
///
/// Using the same few first hops for a long time limits how many relays
/// ever see the client's address. Serialises as
/// `{"target_size": n, "guards": [peer ids]}` so it can be saved to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GuardSetRepr")]
pub struct GuardSet {
    target_size: usize,
    guards: Vec<PeerId>,
}

#[derive(Deserialize)]
struct GuardSetRepr {
    target_size: usize,
    guards: Vec<PeerId>,
}

impl From<GuardSetRepr> for GuardSet {
    fn from(r: GuardSetRepr) -> Self {
        GuardSet::from_peers(r.guards, r.target_size)
    }
}

impl GuardSet {
    /// An empty set that [`refresh`](Self::refresh) fills up to
    /// `target_size` guards (at most [`MAX_GUARDS`]).
    pub fn new(target_size: usize) -> Self {
        GuardSet {
            target_size: target_size.min(MAX_GUARDS),
            guards: Vec::new(),
        }
    }

    /// A set restored from saved peers (duplicates dropped, cut to
    /// `target_size`, itself at most [`MAX_GUARDS`]).
    pub fn from_peers(peers: Vec<PeerId>, target_size: usize) -> Self {
        let mut set = GuardSet::new(target_size);
        for p in peers {
            if set.guards.len() >= set.target_size {
                break;
            }
            if !set.guards.contains(&p) {
                set.guards.push(p);
            }
        }
        set
    }

    /// Drop guards that are no longer usable relays in `dir` (or are
    /// excluded, or are the directory's own peer), then fill up to the
    /// target size with bandwidth-weighted picks. Returns whether the set
    /// changed.
    pub fn refresh(&mut self, dir: &Directory, exclude: &[PeerId], rng: &mut impl Rng) -> bool {
        let own = dir.own();
        let ok = |p: &PeerId| {
            *p != own && !exclude.contains(p) && dir.get(p).is_some_and(is_usable_relay)
        };
        let before = self.guards.clone();
        self.guards.retain(|p| ok(p));
        if self.guards.len() < self.target_size {
            let mut cands: Vec<&Descriptor> = dir
                .iter()
                .filter(|d| ok(&d.peer_id) && !self.guards.contains(&d.peer_id))
                .collect();
            while self.guards.len() < self.target_size {
                let Some(d) = pick(&cands, rng) else { break };
                let id = d.peer_id;
                self.guards.push(id);
                cands.retain(|c| c.peer_id != id);
            }
        }
        self.guards != before
    }

    /// The current guards, oldest first.
    pub fn guards(&self) -> &[PeerId] {
        &self.guards
    }

    /// How many guards the set aims to hold.
    pub fn target_size(&self) -> usize {
        self.target_size
    }
}
