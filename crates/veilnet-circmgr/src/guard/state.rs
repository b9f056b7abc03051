//! The guard state machine (after Tor's guard specification, proposal 271,
//! without its directory authorities): which relays are this client's
//! guards, in what order they are tried, when one is retried and when one is
//! replaced.
//!
//! Sans-IO: no clock (every call takes `now`, unix seconds), no network, no
//! files. The circuit manager feeds it the usable relays of the directory
//! and what happened to each circuit, and asks it for the first hops to try.
//!
//! * **Sample**: up to [`MAX_SAMPLE`] relays drawn bandwidth-weighted from
//!   the usable relays, kept in the order they were drawn. Each remembers
//!   when it was added (set back by a random part of a tenth of the
//!   lifetime, as Tor does, so the file does not date the draw), when it was
//!   confirmed, since when it is unlisted or unreachable, when it was last
//!   tried, and its path-bias counts.
//! * **Usable** guards: listed in the directory now and not flagged by path
//!   bias. New relays are sampled while fewer than
//!   [`GuardParams::sample_target`] guards are usable (room permitting).
//! * **Order**: confirmed guards (those a circuit was built through) in the
//!   order they were confirmed, then the other sampled guards in sample
//!   order. The **primary** guards are the first [`GuardParams::primaries`]
//!   usable guards of that order.
//! * **First hops**: the usable guards in that order, without those that are
//!   unreachable and not yet due for a retry. A circuit uses the first one it
//!   can; if every primary is unreachable, the next confirmed or sampled
//!   guards, which are still guards. Never any other relay.
//! * **Replacement**: a guard leaves the sample only once it has been
//!   unlisted, or unreachable (while other guards could be reached), for
//!   [`GuardParams::replace_after`], or its lifetime is over.

use libp2p::PeerId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::path_bias::{PathBias, PathBiasParams, Verdict};

/// Most guards the sample holds, usable or not.
pub const MAX_SAMPLE: usize = 64;
/// Usable guards the sample aims for, by default (Tor's
/// `guard-min-filtered-sample-size`).
pub const DEFAULT_SAMPLE_TARGET: usize = 20;
/// Primary guards, by default (Tor's `guard-n-primary-guards`).
pub const DEFAULT_PRIMARIES: usize = 3;
/// One day in seconds.
pub const DAY: u64 = 24 * 60 * 60;
/// How long a guard may be unlisted or unreachable before it is replaced, by
/// default: Tor's `guard-remove-unlisted-guards-after-days`.
pub const DEFAULT_REPLACE_AFTER: u64 = 20 * DAY;
/// How long a sampled guard is kept at most, by default (Tor's
/// `guard-lifetime-days`).
pub const DEFAULT_LIFETIME: u64 = 120 * DAY;
/// How long a confirmed guard is kept at least after its confirmation, by
/// default (Tor's `guard-confirmed-min-lifetime-days`).
pub const DEFAULT_CONFIRMED_LIFETIME: u64 = 60 * DAY;
/// Counter-only changes are worth a save at most this often (seconds).
pub const SAVE_COUNTERS_EVERY: u64 = 60;

/// The guard rules' knobs (the policy the state machine carries out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardParams {
    /// Primary guards: circuits use the first reachable one, in order
    /// (`1..=MAX_SAMPLE`).
    pub primaries: usize,
    /// Usable guards to keep in the sample (at least `primaries`).
    pub sample_target: usize,
    /// Seconds a guard may be unlisted, or unreachable, before it is removed
    /// from the sample.
    pub replace_after: u64,
    /// Seconds after it was added that a guard is removed (unless confirmed
    /// recently, see `confirmed_lifetime`).
    pub lifetime: u64,
    /// Seconds a confirmed guard is kept at least after its confirmation.
    pub confirmed_lifetime: u64,
    /// When path bias flags a guard.
    pub path_bias: PathBiasParams,
}

impl Default for GuardParams {
    fn default() -> Self {
        Self {
            primaries: DEFAULT_PRIMARIES,
            sample_target: DEFAULT_SAMPLE_TARGET,
            replace_after: DEFAULT_REPLACE_AFTER,
            lifetime: DEFAULT_LIFETIME,
            confirmed_lifetime: DEFAULT_CONFIRMED_LIFETIME,
            path_bias: PathBiasParams::default(),
        }
    }
}

impl GuardParams {
    fn clamped_primaries(&self) -> usize {
        self.primaries.clamp(1, MAX_SAMPLE)
    }

    fn clamped_sample_target(&self) -> usize {
        self.sample_target
            .clamp(self.clamped_primaries(), MAX_SAMPLE)
    }
}

/// A usable relay of the directory, as the sampler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// Its peer id.
    pub peer: PeerId,
    /// Its selection weight (`veilnet_dir::Directory::weights`).
    pub weight: u64,
}

/// One sampled guard, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// The relay.
    pub peer: PeerId,
    /// When it was sampled (set back by up to a tenth of the lifetime).
    pub added_on: u64,
    /// When a circuit was first built through it.
    #[serde(default)]
    pub confirmed_on: Option<u64>,
    /// Since when the directory has not listed it as a usable relay.
    #[serde(default)]
    pub unlisted_since: Option<u64>,
    /// Since when connecting to it fails (cleared by the next success).
    #[serde(default)]
    pub unreachable_since: Option<u64>,
    /// When a link to it was last attempted.
    #[serde(default)]
    pub last_tried: Option<u64>,
    /// Its circuit counts.
    #[serde(default)]
    pub path_bias: PathBias,
    /// Flagged by path bias: never a first hop again.
    #[serde(default)]
    pub flagged: bool,
}

impl Guard {
    fn new(peer: PeerId, added_on: u64) -> Self {
        Self {
            peer,
            added_on,
            confirmed_on: None,
            unlisted_since: None,
            unreachable_since: None,
            last_tried: None,
            path_bias: PathBias::default(),
            flagged: false,
        }
    }

    fn usable(&self) -> bool {
        self.unlisted_since.is_none() && !self.flagged
    }
}

/// What one guard looks like from outside (for the control API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardView {
    /// The relay.
    pub peer: PeerId,
    /// One of the primary guards now.
    pub primary: bool,
    /// A circuit has been built through it.
    pub confirmed: bool,
    /// The directory lists it as a usable relay.
    pub listed: bool,
    /// Not known to be unreachable.
    pub reachable: bool,
    /// Since when it is unreachable (unix seconds).
    pub unreachable_since: Option<u64>,
    /// Circuits attempted through it (path-bias count, scaled).
    pub attempts: u32,
    /// Of those, circuits built.
    pub successes: u32,
    /// Flagged by path bias: not used as a first hop.
    pub flagged: bool,
}

/// What a reported circuit outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The guard's path-bias verdict before the report.
    pub before: Verdict,
    /// And after it.
    pub after: Verdict,
    /// The guard was flagged by this report.
    pub newly_flagged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Clean,
    Counters,
    State,
}

/// The guard state: the sample, the confirmed order and what is known about
/// each guard.
#[derive(Debug, Clone)]
pub struct GuardState {
    sampled: Vec<Guard>,
    /// Confirmed guards, in the order they were confirmed; each is in
    /// `sampled` with `confirmed_on` set.
    confirmed: Vec<PeerId>,
    /// When a link to any guard last opened: the client was online.
    last_guard_reached: Option<u64>,
    dirty: Dirty,
    last_saved: Option<u64>,
}

impl PartialEq for GuardState {
    fn eq(&self, other: &Self) -> bool {
        self.sampled == other.sampled
            && self.confirmed == other.confirmed
            && self.last_guard_reached == other.last_guard_reached
    }
}

/// The state as saved in `guards.json` (version 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedGuards {
    /// Format version: [`SavedGuards::VERSION`].
    pub version: u32,
    /// The sample, in sample order.
    pub sampled: Vec<Guard>,
    /// The confirmed guards, in confirmation order.
    #[serde(default)]
    pub confirmed: Vec<PeerId>,
    /// When a link to any guard last opened.
    #[serde(default)]
    pub last_guard_reached: Option<u64>,
}

impl SavedGuards {
    /// The format version this code writes and reads.
    pub const VERSION: u32 = 1;
}

/// The retry interval of an unreachable guard (seconds), from how long it
/// has been unreachable: Tor's schedule (guard-spec, "When a guard fails").
/// Primary guards: 10 minutes for the first 6 hours, then 90 minutes for 4
/// days, then 4 hours for 3 days, then 9 hours. Others: 1, 4, 18 and 36
/// hours over the same periods.
pub fn retry_interval(primary: bool, unreachable_for: u64) -> u64 {
    const H: u64 = 60 * 60;
    let step = match unreachable_for {
        t if t < 6 * H => 0,
        t if t < 6 * H + 4 * DAY => 1,
        t if t < 6 * H + 7 * DAY => 2,
        _ => 3,
    };
    if primary {
        [10 * 60, 90 * 60, 4 * H, 9 * H][step]
    } else {
        [H, 4 * H, 18 * H, 36 * H][step]
    }
}

/// Bandwidth-weighted choice of an index; `None` if `cands` is empty.
fn pick(cands: &[Relay], rng: &mut impl Rng) -> Option<usize> {
    let total = cands
        .iter()
        .map(|r| r.weight.max(1))
        .fold(0u64, u64::saturating_add);
    if total == 0 {
        return None;
    }
    let mut x = rng.gen_range(0..total);
    for (i, r) in cands.iter().enumerate() {
        let w = r.weight.max(1);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    cands.len().checked_sub(1)
}

impl Default for GuardState {
    fn default() -> Self {
        Self::new()
    }
}

impl GuardState {
    /// An empty state: the first [`update`](Self::update) samples guards.
    pub fn new() -> Self {
        Self {
            sampled: Vec::new(),
            confirmed: Vec::new(),
            last_guard_reached: None,
            dirty: Dirty::Clean,
            last_saved: None,
        }
    }

    /// The guards of the old format (a list of peer ids), kept in their order
    /// as sampled, unconfirmed guards added `now`.
    pub fn from_peers(peers: &[PeerId], now: u64) -> Self {
        let mut s = Self::new();
        for p in peers {
            if s.sampled.len() < MAX_SAMPLE && !s.sampled.iter().any(|g| g.peer == *p) {
                s.sampled.push(Guard::new(*p, now));
            }
        }
        s.dirty = Dirty::State;
        s
    }

    /// The state a saved file describes, made consistent: duplicates and
    /// guards beyond [`MAX_SAMPLE`] dropped, the confirmed order limited to
    /// sampled guards (a sampled guard marked confirmed but missing from
    /// the order goes at its end), counts sanitised. Never fails: whatever
    /// parsed is usable.
    pub fn from_saved(saved: SavedGuards) -> Self {
        let mut s = Self::new();
        for mut g in saved.sampled {
            if s.sampled.len() >= MAX_SAMPLE {
                break;
            }
            if s.sampled.iter().any(|h| h.peer == g.peer) {
                continue;
            }
            g.path_bias = g.path_bias.sanitized();
            s.sampled.push(g);
        }
        for p in saved.confirmed {
            let known = s.sampled.iter_mut().find(|g| g.peer == p);
            if let Some(g) = known {
                if !s.confirmed.contains(&p) {
                    g.confirmed_on.get_or_insert(g.added_on);
                    s.confirmed.push(p);
                }
            }
        }
        for g in &s.sampled {
            if g.confirmed_on.is_some() && !s.confirmed.contains(&g.peer) {
                s.confirmed.push(g.peer);
            }
        }
        s.last_guard_reached = saved.last_guard_reached;
        s
    }

    /// The state to save.
    pub fn to_saved(&self) -> SavedGuards {
        SavedGuards {
            version: SavedGuards::VERSION,
            sampled: self.sampled.clone(),
            confirmed: self.confirmed.clone(),
            last_guard_reached: self.last_guard_reached,
        }
    }

    /// The sampled guards, in sample order.
    pub fn sampled(&self) -> &[Guard] {
        &self.sampled
    }

    fn get_mut(&mut self, peer: &PeerId) -> Option<&mut Guard> {
        self.sampled.iter_mut().find(|g| g.peer == *peer)
    }

    fn get(&self, peer: &PeerId) -> Option<&Guard> {
        self.sampled.iter().find(|g| g.peer == *peer)
    }

    fn mark(&mut self, d: Dirty) {
        self.dirty = self.dirty.max(d);
    }

    /// Every sampled guard in guard order: confirmed ones in confirmation
    /// order, then the others in sample order.
    fn ordered(&self) -> impl Iterator<Item = &Guard> {
        self.confirmed
            .iter()
            .filter_map(|p| self.get(p))
            .chain(self.sampled.iter().filter(|g| g.confirmed_on.is_none()))
    }

    /// The primary guards, in order.
    pub fn primaries(&self, params: &GuardParams) -> Vec<PeerId> {
        self.ordered()
            .filter(|g| g.usable())
            .take(params.clamped_primaries())
            .map(|g| g.peer)
            .collect()
    }

    /// Brings the state up to date with the directory: `relays` are the
    /// directory's usable relays (relay role, a link address, not our own
    /// node) now. Marks guards listed or unlisted, removes those whose time
    /// is up, and samples new guards while fewer than
    /// [`GuardParams::sample_target`] are usable.
    pub fn update(&mut self, relays: &[Relay], params: &GuardParams, now: u64, rng: &mut impl Rng) {
        for g in &mut self.sampled {
            let listed = relays.iter().any(|r| r.peer == g.peer);
            match (listed, g.unlisted_since) {
                (true, Some(_)) => {
                    g.unlisted_since = None;
                    self.dirty = self.dirty.max(Dirty::State);
                }
                (false, None) => {
                    g.unlisted_since = Some(now);
                    self.dirty = self.dirty.max(Dirty::State);
                }
                _ => {}
            }
        }
        self.remove_expired(params, now);
        self.sample(relays, params, now, rng);
    }

    fn expired(&self, g: &Guard, params: &GuardParams, now: u64) -> bool {
        let over =
            |since: Option<u64>, span: u64| since.is_some_and(|t| now.saturating_sub(t) >= span);
        let unlisted = over(g.unlisted_since, params.replace_after);
        // Unreachable counts only while we could reach other guards: a
        // client that was offline does not lose its guards for it.
        let unreachable = g.unreachable_since.is_some_and(|t| {
            now.saturating_sub(t) >= params.replace_after
                && self
                    .last_guard_reached
                    .is_some_and(|r| r >= t.saturating_add(params.replace_after))
        });
        let old = now.saturating_sub(g.added_on) >= params.lifetime
            && g.confirmed_on
                .is_none_or(|c| now.saturating_sub(c) >= params.confirmed_lifetime);
        unlisted || unreachable || old
    }

    fn remove_expired(&mut self, params: &GuardParams, now: u64) {
        let gone: Vec<PeerId> = self
            .sampled
            .iter()
            .filter(|g| self.expired(g, params, now))
            .map(|g| g.peer)
            .collect();
        if gone.is_empty() {
            return;
        }
        self.sampled.retain(|g| !gone.contains(&g.peer));
        self.confirmed.retain(|p| !gone.contains(p));
        self.mark(Dirty::State);
    }

    fn sample(&mut self, relays: &[Relay], params: &GuardParams, now: u64, rng: &mut impl Rng) {
        let mut cands: Vec<Relay> = relays
            .iter()
            .filter(|r| self.get(&r.peer).is_none())
            .copied()
            .collect();
        let target = params.clamped_sample_target();
        loop {
            let usable = self.sampled.iter().filter(|g| g.usable()).count();
            if usable >= target || cands.is_empty() {
                return;
            }
            if self.sampled.len() >= MAX_SAMPLE {
                // A full sample with fewer usable guards than primaries
                // (all unlisted: a test network restarted with fresh
                // identities) must not leave the client without first hops
                // until guards expire: make room by dropping the guard
                // unlisted the longest (never a flagged one, which would then
                // be sampled again). The one exception to `replace_after`.
                if usable >= params.clamped_primaries() || !self.evict_one() {
                    return;
                }
            }
            let Some(i) = pick(&cands, rng) else { return };
            let r = cands.swap_remove(i);
            let back = rng.gen_range(0..=params.lifetime / 10);
            self.sampled
                .push(Guard::new(r.peer, now.saturating_sub(back)));
            self.mark(Dirty::State);
        }
    }

    fn evict_one(&mut self) -> bool {
        let victim = self
            .sampled
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.flagged && g.unlisted_since.is_some())
            .min_by_key(|(_, g)| g.unlisted_since)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                let g = self.sampled.remove(i);
                self.confirmed.retain(|p| *p != g.peer);
                true
            }
            None => false,
        }
    }

    fn may_try(&self, g: &Guard, primary: bool, now: u64) -> bool {
        match g.unreachable_since {
            None => true,
            Some(since) => {
                let wait = retry_interval(primary, now.saturating_sub(since));
                g.last_tried.is_none_or(|t| now.saturating_sub(t) >= wait)
            }
        }
    }

    /// The guards a circuit may start at now, in the order to try them:
    /// usable guards in guard order (primaries first), without those that
    /// are unreachable and not due for a retry. If that leaves none but some
    /// are usable, all usable guards in order: when every guard seems down,
    /// the network probably is, and waiting hours for the retry schedule
    /// helps nobody. Only ever sampled guards.
    pub fn first_hops(&self, params: &GuardParams, now: u64) -> Vec<PeerId> {
        let n = params.clamped_primaries();
        let usable: Vec<&Guard> = self.ordered().filter(|g| g.usable()).collect();
        let due: Vec<PeerId> = usable
            .iter()
            .enumerate()
            .filter(|(i, g)| self.may_try(g, *i < n, now))
            .map(|(_, g)| g.peer)
            .collect();
        if due.is_empty() {
            usable.iter().map(|g| g.peer).collect()
        } else {
            due
        }
    }

    /// Sampled guards whose link we could not open and have not opened
    /// since. We saw that ourselves, so, as Tor marks a relay it cannot
    /// reach as down, a path avoids them as middle or exit: a circuit
    /// through them would fail at the hop before, and count against a guard
    /// that did nothing wrong.
    pub fn unreachable(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.sampled
            .iter()
            .filter(|g| g.unreachable_since.is_some())
            .map(|g| g.peer)
    }

    /// A link to `peer` opened (`reached`) or could not be opened. Returns
    /// whether its reachability changed.
    pub fn note_link(&mut self, peer: &PeerId, reached: bool, now: u64) -> bool {
        if reached {
            self.last_guard_reached = Some(now);
        }
        let Some(g) = self.get_mut(peer) else {
            return false;
        };
        g.last_tried = Some(now);
        let changed = match (reached, g.unreachable_since) {
            (true, Some(_)) => {
                g.unreachable_since = None;
                true
            }
            (false, None) => {
                g.unreachable_since = Some(now);
                true
            }
            _ => false,
        };
        self.mark(if changed {
            Dirty::State
        } else {
            Dirty::Counters
        });
        changed
    }

    /// A circuit whose first hop was `peer` was built (`built`) or failed
    /// after its link was open, for a reason that is not ours. Counts it for
    /// path bias, confirms the guard on its first built circuit and flags it
    /// when its counts say so. `None` if `peer` is not a sampled guard.
    pub fn note_circuit(
        &mut self,
        peer: &PeerId,
        built: bool,
        params: &GuardParams,
        now: u64,
    ) -> Option<Outcome> {
        let g = self.get_mut(peer)?;
        let before = g.path_bias.verdict(&params.path_bias);
        g.path_bias.record(built);
        let after = g.path_bias.verdict(&params.path_bias);
        let newly_flagged = after == Verdict::Flag && !g.flagged;
        let mut dirty = Dirty::Counters;
        if newly_flagged {
            g.flagged = true;
            dirty = Dirty::State;
        }
        if built && g.confirmed_on.is_none() {
            g.confirmed_on = Some(now);
            self.confirmed.push(*peer);
            dirty = Dirty::State;
        }
        self.mark(dirty);
        Some(Outcome {
            before,
            after,
            newly_flagged,
        })
    }

    /// Whether the state should be saved now: at once after a change of the
    /// sample, the order, a guard's reachability or flag; after counter
    /// changes only, at most every [`SAVE_COUNTERS_EVERY`] seconds, unless
    /// `force` (a final save). Returning `true` counts as saved.
    pub fn take_save(&mut self, now: u64, force: bool) -> bool {
        let due = match self.dirty {
            Dirty::Clean => false,
            Dirty::State => true,
            Dirty::Counters => {
                force
                    || self
                        .last_saved
                        .is_none_or(|t| now.saturating_sub(t) >= SAVE_COUNTERS_EVERY)
            }
        };
        if due {
            self.dirty = Dirty::Clean;
            self.last_saved = Some(now);
        }
        due
    }

    /// Every sampled guard in guard order, for display.
    pub fn views(&self, params: &GuardParams) -> Vec<GuardView> {
        let primaries = self.primaries(params);
        self.ordered()
            .map(|g| GuardView {
                peer: g.peer,
                primary: primaries.contains(&g.peer),
                confirmed: g.confirmed_on.is_some(),
                listed: g.unlisted_since.is_none(),
                reachable: g.unreachable_since.is_none(),
                unreachable_since: g.unreachable_since,
                attempts: g.path_bias.attempts,
                successes: g.path_bias.successes,
                flagged: g.flagged,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const T0: u64 = 1_800_000_000;
    const MIN: u64 = 60;

    fn relays(n: usize) -> Vec<Relay> {
        (0..n)
            .map(|i| Relay {
                peer: PeerId::random(),
                weight: 1_000_000 * (1 + i as u64 % 3),
            })
            .collect()
    }

    fn params() -> GuardParams {
        GuardParams {
            path_bias: PathBiasParams { min_circuits: 10 },
            ..GuardParams::default()
        }
    }

    fn sampled_state(rs: &[Relay], rng: &mut StdRng) -> GuardState {
        let mut s = GuardState::new();
        s.update(rs, &params(), T0, rng);
        s
    }

    fn round_trip(s: &GuardState) -> GuardState {
        let json = serde_json::to_string(&s.to_saved()).unwrap();
        GuardState::from_saved(serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn samples_bounded_weighted_guards_and_picks_primaries_in_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = params();
        // a small network: every relay sampled, three primaries
        let rs = relays(8);
        let s = sampled_state(&rs, &mut rng);
        assert_eq!(s.sampled().len(), 8);
        let prim = s.primaries(&p);
        assert_eq!(prim.len(), 3);
        assert_eq!(prim, s.first_hops(&p, T0)[..3]);
        // primaries are the first sampled guards while none is confirmed
        let first3: Vec<PeerId> = s.sampled()[..3].iter().map(|g| g.peer).collect();
        assert_eq!(prim, first3);
        // added_on is set back by at most a tenth of the lifetime
        for g in s.sampled() {
            assert!(g.added_on <= T0 && T0 - g.added_on <= p.lifetime / 10);
        }
        // a large network: the sample stops at its target
        let rs = relays(500);
        let s = sampled_state(&rs, &mut rng);
        assert_eq!(s.sampled().len(), DEFAULT_SAMPLE_TARGET);
        let mut again = s.clone();
        again.update(&rs, &p, T0 + MIN, &mut rng);
        assert_eq!(again.sampled(), s.sampled(), "a full sample is stable");
    }

    #[test]
    fn primary_order_survives_a_restart_and_confirmation_reorders() {
        let mut rng = StdRng::seed_from_u64(2);
        let p = params();
        let rs = relays(10);
        let mut s = sampled_state(&rs, &mut rng);
        let order: Vec<PeerId> = s.sampled().iter().map(|g| g.peer).collect();
        // the 5th sampled guard is confirmed first: it becomes the first primary
        s.note_circuit(&order[4], true, &p, T0 + 1).unwrap();
        s.note_circuit(&order[1], true, &p, T0 + 2).unwrap();
        assert_eq!(s.primaries(&p), [order[4], order[1], order[0]]);
        let back = round_trip(&s);
        assert_eq!(back, s);
        assert_eq!(back.primaries(&p), s.primaries(&p));
        assert_eq!(back.first_hops(&p, T0 + 3), s.first_hops(&p, T0 + 3));
        // and an update after the restart keeps them
        let mut back = back;
        back.update(&rs, &p, T0 + 4, &mut rng);
        assert_eq!(back.primaries(&p), [order[4], order[1], order[0]]);
    }

    #[test]
    fn unreachable_primary_gives_way_to_the_next_then_is_retried_and_back() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = params();
        let rs = relays(6);
        let mut s = sampled_state(&rs, &mut rng);
        let prim = s.primaries(&p);
        assert!(s.note_link(&prim[0], false, T0));
        let hops = s.first_hops(&p, T0 + 1);
        assert_eq!(hops[0], prim[1]);
        assert!(!hops.contains(&prim[0]));
        // still a primary: replaced only after `replace_after`
        assert_eq!(s.primaries(&p), prim);
        // the second one fails too: the third, then the non-primaries
        s.note_link(&prim[1], false, T0 + 1);
        s.note_link(&prim[2], false, T0 + 1);
        let hops = s.first_hops(&p, T0 + 2);
        assert_eq!(hops.len(), 3);
        assert!(hops.iter().all(|h| !prim.contains(h)));
        // primaries are retried after 10 minutes, in order
        assert!(!s.first_hops(&p, T0 + 10 * MIN - 1).contains(&prim[0]));
        assert_eq!(s.first_hops(&p, T0 + 10 * MIN)[0], prim[0]);
        assert!(s.note_link(&prim[0], true, T0 + 10 * MIN));
        assert_eq!(s.first_hops(&p, T0 + 10 * MIN + 1)[0], prim[0]);
        assert!(s.views(&p)[0].reachable);
    }

    #[test]
    fn all_guards_unreachable_retries_all_in_order_never_another_relay() {
        let mut rng = StdRng::seed_from_u64(4);
        let p = params();
        let rs = relays(4);
        let mut s = sampled_state(&rs, &mut rng);
        let order: Vec<PeerId> = s.sampled().iter().map(|g| g.peer).collect();
        for g in &order {
            s.note_link(g, false, T0);
        }
        assert_eq!(s.first_hops(&p, T0 + 1), order);
    }

    #[test]
    fn unlisted_guard_is_kept_until_replace_after_then_replaced() {
        let mut rng = StdRng::seed_from_u64(5);
        let p = params();
        let mut rs = relays(30);
        let mut s = sampled_state(&rs, &mut rng);
        let prim = s.primaries(&p);
        // the first primary leaves the directory
        let gone = prim[0];
        let pos = rs.iter().position(|r| r.peer == gone).unwrap();
        let gone_relay = rs.remove(pos);
        s.update(&rs, &p, T0 + 1, &mut rng);
        assert!(s.sampled().iter().any(|g| g.peer == gone), "still sampled");
        assert!(!s.first_hops(&p, T0 + 1).contains(&gone));
        assert_eq!(s.primaries(&p)[..2], prim[1..]);
        // listed again before the time is up: primary again, in its place
        rs.push(gone_relay);
        s.update(&rs, &p, T0 + p.replace_after - 1, &mut rng);
        assert_eq!(s.primaries(&p), prim);
        // gone for good: kept until `replace_after`, then replaced
        rs.retain(|r| r.peer != gone);
        let t1 = T0 + p.replace_after;
        s.update(&rs, &p, t1, &mut rng);
        s.update(&rs, &p, t1 + p.replace_after - 1, &mut rng);
        assert!(s.sampled().iter().any(|g| g.peer == gone));
        s.update(&rs, &p, t1 + p.replace_after, &mut rng);
        assert!(!s.sampled().iter().any(|g| g.peer == gone));
        assert_eq!(s.primaries(&p).len(), 3);
        assert_eq!(s.primaries(&p)[..2], prim[1..]);
    }

    #[test]
    fn unreachable_guard_is_replaced_only_after_replace_after_while_online() {
        let mut rng = StdRng::seed_from_u64(6);
        let p = params();
        let rs = relays(8);
        let mut s = sampled_state(&rs, &mut rng);
        let prim = s.primaries(&p);
        s.note_link(&prim[0], false, T0);
        // offline: nothing reached for longer than `replace_after`: kept
        s.update(&rs, &p, T0 + 2 * p.replace_after, &mut rng);
        assert_eq!(s.primaries(&p), prim);
        // online: another guard was reached after the time was up
        s.note_link(&prim[1], true, T0 + p.replace_after - 1);
        s.update(&rs, &p, T0 + p.replace_after, &mut rng);
        assert_eq!(s.primaries(&p), prim, "reached before the time was up");
        s.note_link(&prim[1], true, T0 + p.replace_after);
        s.update(&rs, &p, T0 + p.replace_after, &mut rng);
        // replaced: the network being small, it is sampled again, last
        assert_eq!(s.primaries(&p)[..2], prim[1..]);
        assert_eq!(s.sampled().last().unwrap().peer, prim[0]);
        assert_eq!(s.sampled().last().unwrap().unreachable_since, None);
    }

    #[test]
    fn lifetime_ends_but_recent_confirmation_extends_it() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = params();
        let rs = relays(8);
        let mut s = sampled_state(&rs, &mut rng);
        let a = s.sampled()[0].peer;
        let b = s.sampled()[1].peer;
        let late = T0 + p.lifetime - p.confirmed_lifetime / 2;
        s.note_circuit(&b, true, &p, late);
        s.update(&rs, &p, T0 + p.lifetime, &mut rng);
        // a's lifetime is over: removed (and, the network being small,
        // sampled again as a new guard)
        let fresh = |s: &GuardState, peer: PeerId, now: u64| {
            s.sampled()
                .iter()
                .all(|g| g.peer != peer || g.added_on >= now - p.lifetime / 10)
        };
        assert!(fresh(&s, a, T0 + p.lifetime), "a's lifetime is over");
        assert!(
            s.sampled().iter().any(|g| g.peer == b),
            "b was confirmed lately"
        );
        s.update(&rs, &p, late + p.confirmed_lifetime, &mut rng);
        assert!(fresh(&s, b, late + p.confirmed_lifetime));
    }

    #[test]
    fn a_fresh_network_is_sampled_when_no_guard_is_usable() {
        // Test networks restart with fresh identities: a full sample of
        // guards that are all gone must not leave the client without first
        // hops until they expire.
        let mut rng = StdRng::seed_from_u64(8);
        let p = params();
        let old = relays(200);
        let mut s = GuardState::new();
        for chunk in old.chunks(20) {
            s.update(chunk, &p, T0, &mut rng);
        }
        assert_eq!(s.sampled().len(), MAX_SAMPLE);
        let fresh = relays(5);
        s.update(&fresh, &p, T0 + 1, &mut rng);
        assert!(s.sampled().len() <= MAX_SAMPLE);
        let hops = s.first_hops(&p, T0 + 1);
        assert_eq!(hops.len(), p.primaries);
        assert!(hops.iter().all(|h| fresh.iter().any(|r| r.peer == *h)));
        assert_eq!(
            s.sampled().len(),
            MAX_SAMPLE,
            "room made only for the primaries"
        );
    }

    #[test]
    fn a_guard_that_fails_every_circuit_is_flagged_and_never_chosen_again() {
        let mut rng = StdRng::seed_from_u64(9);
        let p = params();
        let rs = relays(8);
        let mut s = sampled_state(&rs, &mut rng);
        let prim = s.primaries(&p);
        let bad = prim[0];
        let min = p.path_bias.min_circuits;
        for i in 0..min - 1 {
            let o = s.note_circuit(&bad, false, &p, T0 + u64::from(i)).unwrap();
            assert!(!o.newly_flagged);
            assert_eq!(s.first_hops(&p, T0 + 100)[0], bad, "not before the minimum");
        }
        let o = s.note_circuit(&bad, false, &p, T0 + 100).unwrap();
        assert!(o.newly_flagged && o.after == Verdict::Flag);
        // the others build their circuits
        for _ in 0..2 * min {
            let o = s.note_circuit(&prim[1], true, &p, T0 + 100).unwrap();
            assert!(!o.newly_flagged);
        }
        let view = s.views(&p).into_iter().find(|v| v.peer == bad).unwrap();
        assert!(view.flagged && !view.primary);
        assert_eq!((view.attempts, view.successes), (min, 0));
        let ok = s.views(&p).into_iter().find(|v| v.peer == prim[1]).unwrap();
        assert!(!ok.flagged && ok.primary);
        // never chosen again, not even when every other guard is down, or
        // after a restart or a directory update
        let mut s = round_trip(&s);
        for t in 0..50 {
            s.update(&rs, &p, T0 + 200 + t, &mut rng);
            assert!(!s.first_hops(&p, T0 + 200 + t).contains(&bad));
            assert!(!s.primaries(&p).contains(&bad));
        }
        for r in &rs {
            if r.peer != bad {
                s.note_link(&r.peer, false, T0 + 300);
            }
        }
        let hops = s.first_hops(&p, T0 + 301);
        assert!(!hops.is_empty() && !hops.contains(&bad));
        assert!(
            s.sampled().iter().any(|g| g.peer == bad),
            "kept, so not sampled again"
        );
    }

    #[test]
    fn guards_doing_well_or_without_enough_circuits_are_not_flagged() {
        let p = params();
        let mut rng = StdRng::seed_from_u64(10);
        let rs = relays(4);
        let mut s = sampled_state(&rs, &mut rng);
        let g = s.primaries(&p)[0];
        // 60% built: a notice, not a flag
        for i in 0..100 {
            let o = s.note_circuit(&g, i % 5 < 3, &p, T0).unwrap();
            assert!(!o.newly_flagged);
        }
        assert_eq!(s.first_hops(&p, T0)[0], g);
        assert_eq!(
            s.sampled()[0].path_bias.verdict(&p.path_bias),
            Verdict::Notice
        );
    }

    /// Property: whatever happens (relays coming and going, links and
    /// circuits failing), first hops are usable sampled guards, flagged
    /// guards never among them, and the sample stays bounded.
    #[test]
    fn first_hops_are_always_usable_sampled_guards() {
        let mut rng = StdRng::seed_from_u64(11);
        let p = params();
        let pool = relays(120);
        let mut s = GuardState::new();
        let mut now = T0;
        for _ in 0..3000 {
            now += rng.gen_range(0..3 * DAY);
            let listed: Vec<Relay> = pool.iter().filter(|_| rng.gen_bool(0.6)).copied().collect();
            s.update(&listed, &p, now, &mut rng);
            assert!(s.sampled().len() <= MAX_SAMPLE);
            let hops = s.first_hops(&p, now);
            for h in &hops {
                let g = s.sampled().iter().find(|g| g.peer == *h).unwrap();
                assert!(!g.flagged && listed.iter().any(|r| r.peer == *h));
            }
            if !listed.is_empty() {
                assert!(!hops.is_empty(), "a listed relay is always sampled");
            }
            if let Some(h) = hops.first() {
                if rng.gen_bool(0.2) {
                    s.note_link(h, false, now);
                } else {
                    s.note_link(h, true, now);
                    s.note_circuit(h, rng.gen_bool(0.5), &p, now);
                }
            }
            let prim = s.primaries(&p);
            assert!(
                prim.len() <= p.primaries
                    && prim.iter().all(|x| hops.contains(x)
                        || s.sampled()
                            .iter()
                            .any(|g| g.peer == *x && g.unreachable_since.is_some()))
            );
        }
    }

    #[test]
    fn saves_are_immediate_for_state_and_bounded_for_counters() {
        let mut rng = StdRng::seed_from_u64(12);
        let p = params();
        let rs = relays(5);
        let mut s = sampled_state(&rs, &mut rng);
        assert!(s.take_save(T0, false), "sampling is a change");
        assert!(!s.take_save(T0, false));
        let g = s.primaries(&p)[0];
        s.note_circuit(&g, true, &p, T0); // confirmation: state
        assert!(s.take_save(T0, false));
        s.note_circuit(&g, true, &p, T0 + 1); // counters only
        assert!(!s.take_save(T0 + 1, false));
        assert!(s.take_save(T0 + SAVE_COUNTERS_EVERY, false));
        s.note_circuit(&g, true, &p, T0 + SAVE_COUNTERS_EVERY + 1);
        assert!(s.take_save(T0 + SAVE_COUNTERS_EVERY + 2, true), "forced");
        assert!(s.note_link(&g, false, T0 + SAVE_COUNTERS_EVERY + 3));
        assert!(
            s.take_save(T0 + SAVE_COUNTERS_EVERY + 3, false),
            "reachability: state"
        );
    }

    #[test]
    fn retry_schedule_is_tors() {
        let h = 3600;
        assert_eq!(retry_interval(true, 0), 10 * MIN);
        assert_eq!(retry_interval(true, 6 * h), 90 * MIN);
        assert_eq!(retry_interval(true, 6 * h + 4 * DAY), 4 * h);
        assert_eq!(retry_interval(true, 30 * DAY), 9 * h);
        assert_eq!(retry_interval(false, 0), h);
        assert_eq!(retry_interval(false, 30 * DAY), 36 * h);
    }

    #[test]
    fn inconsistent_saved_state_is_made_consistent() {
        let a = PeerId::random();
        let b = PeerId::random();
        let stranger = PeerId::random();
        let mut ga = Guard::new(a, T0);
        ga.path_bias = PathBias {
            attempts: 5,
            successes: 50,
        };
        let mut gb = Guard::new(b, T0);
        gb.confirmed_on = Some(T0);
        let mut sampled = vec![ga.clone(), ga, gb];
        sampled.extend((0..100).map(|_| Guard::new(PeerId::random(), T0)));
        let s = GuardState::from_saved(SavedGuards {
            version: 1,
            sampled,
            confirmed: vec![stranger, a, a],
            last_guard_reached: None,
        });
        assert_eq!(s.sampled().len(), MAX_SAMPLE);
        assert_eq!(s.sampled()[1].peer, b, "duplicate dropped");
        assert_eq!(s.sampled()[0].path_bias.successes, 5);
        assert_eq!(s.confirmed, [a, b]);
        assert_eq!(s.primaries(&params())[..2], [a, b]);
    }
}
