//! How many circuits an attacker's relays would see both ends of: a real
//! [`Directory`] built from the majority view at the end of a run, and
//! circuits drawn from it with the real [`select_path`], each client's guards
//! drawn by weight as the circuit manager's sampler draws them.
//!
//! The weights are whatever [`Directory::weights`] says: with measurements
//! on (the default, `--measure true`), the peer-measured bandwidth capped
//! by the advertised one, with at most two relays per IPv4 /24 or IPv6 /48
//! carrying any. [`selection_weight`] is the one seam through which this
//! module reads them, and `select_path` reads the same weights, so a
//! change there changes the figure here with no change in the simulator.
//!
//! Measurements are modelled at the end of the run, not simulated through
//! the network: for each period of the window, every measurer the
//! directory counts makes the real assignment ([`assigned`]) and signs a
//! real report ([`Report::sign`]) that the directory verifies and stores.
//! An honest measurer's figure for a relay is the lowest of the relay's
//! real bandwidth, its own and the network's `max_rate`, times a
//! contention factor drawn from 0.5..1. The attacker's measurers report its relays at
//! what they advertise and every honest relay they are assigned as
//! unreached, and they report everything the verifiers' wider threshold
//! ([`ASSIGNMENT_SLACK_PERCENT`]) lets them. With `--fake-measurers F` the
//! attacker also lists F keys at addresses it does not hold, one per /24
//! of its own: they measure as its relays do, and honest measurers find
//! nobody at their addresses. Report gossip is not in the byte figures.

use std::collections::HashSet;

use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use veilnet_dir::measure::{assigned, ASSIGNMENT_SLACK_PERCENT};
use veilnet_dir::path::is_usable_relay;
use veilnet_dir::{
    select_path, Descriptor, Directory, MeasureParams, Observation, PathRequest, Report,
    SignedDescriptor, VerifiedReport, Weights,
};

use crate::net::Sim;
use crate::records::{Relay, EPOCH_UNIX};
use crate::SimError;

/// Guards per client: veilnet-config's default `num_guards`.
pub const GUARDS_PER_CLIENT: usize = 3;
/// Hops per circuit.
pub const HOPS: usize = 3;

/// The public network's measurement parameters, with every relay measured
/// long enough ago that no ramp applies (the attacker's relays too: the
/// worst case).
const PARAMS: MeasureParams = MeasureParams::PUBLIC;

/// Fills `dir` with the reports of the last window of periods before
/// `now` (see the module docs).
fn measure(
    dir: &mut Directory,
    sim: &Sim,
    fakes: &[Relay],
    now: u64,
    rng: &mut StdRng,
) -> Result<(), SimError> {
    use rand::Rng;
    dir.use_measurements(Some(PARAMS));
    // Everyone who could measure: the relays that carry weight by address
    // (what the directory counts before any report).
    let candidates: Vec<PeerId> = {
        let w = dir.weights();
        let mut m: Vec<PeerId> = w.measurers().iter().copied().collect();
        m.sort();
        m
    };
    let by_peer: std::collections::HashMap<PeerId, &Relay> = sim
        .relays
        .iter()
        .chain(fakes)
        .map(|r| (r.peer_id(), r))
        .collect();
    let targets: Vec<PeerId> = dir
        .iter()
        .filter(|d| is_usable_relay(d))
        .map(|d| d.peer_id)
        .collect();
    let last = PARAMS.epoch(now);
    let since = now.saturating_sub(PARAMS.ramp_secs * 2);
    for epoch in PARAMS.first_kept(now)..=last {
        let published = (epoch * PARAMS.period_secs + 1).min(now);
        // Who counts in this period is decided by the reports of the
        // periods before it, as a node decides it at the period's start
        // (with the reports kept then);
        // an honest relay that does not count does not measure, the
        // attacker's keys always do.
        let counted = {
            let start = (epoch * PARAMS.period_secs).max(1);
            let all: HashSet<PeerId> = candidates.iter().copied().collect();
            dir.measurements()
                .ok_or_else(|| SimError::Setup("measurements are off".into()))?
                .earned(&all, start)
        };
        let n = counted.len();
        for m in &candidates {
            let Some(relay) = by_peer.get(m) else {
                continue;
            };
            if !relay.sybil && !counted.contains(m) {
                continue;
            }
            let slack = if relay.sybil {
                ASSIGNMENT_SLACK_PERCENT
            } else {
                100
            };
            let mut observations = Vec::new();
            for t in &targets {
                if !assigned(epoch, m, t, n, PARAMS.measurers_per_target, slack) {
                    continue;
                }
                let Some(target) = by_peer.get(t) else {
                    continue;
                };
                let o = if relay.sybil {
                    if target.sybil {
                        Observation {
                            target: *t,
                            bandwidth: target
                                .template
                                .bandwidth
                                .min(veilnet_dir::measure::MAX_REPORTED_RATE),
                            reached: true,
                            since: 0,
                        }
                    } else {
                        Observation {
                            target: *t,
                            bandwidth: 0,
                            reached: false,
                            since: 0,
                        }
                    }
                } else if target.real_bandwidth == 0 {
                    // A fake: nobody answers at its address.
                    Observation {
                        target: *t,
                        bandwidth: 0,
                        reached: false,
                        since: 0,
                    }
                } else {
                    let top = target
                        .real_bandwidth
                        .min(relay.real_bandwidth)
                        .min(PARAMS.max_rate);
                    Observation {
                        target: *t,
                        bandwidth: ((top as f64) * rng.gen_range(0.5..1.0)) as u64,
                        reached: true,
                        since,
                    }
                };
                observations.push(o);
                if observations.len() == veilnet_dir::measure::MAX_OBSERVATIONS {
                    break;
                }
            }
            let report = Report {
                measurer: *m,
                published,
                observations,
            };
            let record = report
                .sign(&relay.keypair)
                .map_err(|e| SimError::Setup(format!("signing a report: {e}")))?;
            let v = VerifiedReport::decode(&record)
                .map_err(|e| SimError::Setup(format!("a report: {e}")))?;
            dir.insert_report(v, now)
                .map_err(|e| SimError::Setup(format!("storing a report: {e}")))?;
        }
    }
    Ok(())
}

/// Adds `--fake-measurers` descriptors to `dir`: the attacker's keys, each
/// listing an address in a /24 no other relay is in (so the address caps
/// do not hold them back), advertising what its relays advertise, and
/// answering nowhere (real bandwidth 0).
fn add_fakes(
    dir: &mut Directory,
    sim: &Sim,
    now: u64,
    rng: &mut StdRng,
) -> Result<Vec<Relay>, SimError> {
    use rand::Rng;
    let mut used: HashSet<[u8; 3]> = dir
        .iter()
        .filter_map(|d| d.link_addrs.first())
        .filter_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                Some([o[0], o[1], o[2]])
            }
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let advertised = match sim.cfg.sybil_advertised {
        0 => veilnet_dir::path::MAX_WEIGHT,
        a => a,
    };
    let mut fakes = Vec::with_capacity(sim.cfg.fake_measurers);
    while fakes.len() < sim.cfg.fake_measurers {
        // 11-99: public unicast first octets only.
        let net = [rng.gen_range(11..=99), rng.gen(), rng.gen()];
        if !used.insert(net) {
            continue;
        }
        let ip = std::net::Ipv4Addr::new(net[0], net[1], net[2], 1);
        let mut fake = Relay::new(rng, ip, advertised, 0, true, true, u32::MAX)?;
        let signed = fake.sign_new(now, now * 1000, now)?;
        let verified = signed
            .verify_into(now)
            .map_err(|e| SimError::Setup(format!("a fake descriptor: {e}")))?;
        dir.insert_verified(verified, now)
            .map_err(|e| SimError::Setup(format!("storing a fake descriptor: {e}")))?;
        fakes.push(fake);
    }
    Ok(fakes)
}

/// The selection weight path selection gives a relay (the seam:
/// [`Directory::weights`]).
pub fn selection_weight(weights: &Weights, d: &Descriptor) -> u64 {
    weights.get(&d.peer_id)
}

/// A client's guards: `n` relays drawn by weight without replacement, as
/// the circuit manager's sampler draws them (its first draws are its
/// primary guards, which `select_path` tries in order).
fn draw_guards(
    usable: &[&Descriptor],
    weights: &Weights,
    n: usize,
    rng: &mut StdRng,
) -> Vec<PeerId> {
    use rand::Rng;
    let mut cands: Vec<(&Descriptor, u64)> = usable
        .iter()
        .map(|d| (*d, selection_weight(weights, d)))
        .filter(|(_, w)| *w > 0)
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n && !cands.is_empty() {
        let total: u64 = cands.iter().map(|(_, w)| *w).fold(0, u64::saturating_add);
        let mut x = rng.gen_range(0..total.max(1));
        let mut at = cands.len() - 1;
        for (i, (_, w)) in cands.iter().enumerate() {
            if x < *w {
                at = i;
                break;
            }
            x -= w;
        }
        out.push(cands.swap_remove(at).0.peer_id);
    }
    out
}

/// The Sybil figures of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SybilReport {
    /// Attacker relays in the directory circuits were drawn from.
    pub sybils_in_directory: usize,
    /// Usable relays in that directory.
    pub relays_in_directory: usize,
    /// Descriptors the attacker added at addresses it does not hold
    /// (`--fake-measurers`; counted among its relays below).
    pub fake_measurers: usize,
    /// How many of them the directory counted as measurers.
    pub fake_measurers_counted: usize,
    /// Measurers the directory counted in all (0 without measurement).
    pub measurers_counted: usize,
    /// Time the directory took to compute every relay's weight once from
    /// the descriptors and reports it holds (ms; what a node spends each
    /// time a new record changes them).
    pub weights_ms: f64,
    /// Circuits drawn.
    pub circuits: usize,
    /// Circuits path selection could not build.
    pub circuits_failed: usize,
    /// Fraction of circuits whose first hop and exit are both the
    /// attacker's.
    pub sybil_circuit_fraction: f64,
    /// Fraction whose first hop is the attacker's.
    pub sybil_guard_fraction: f64,
    /// Fraction whose exit is the attacker's.
    pub sybil_exit_fraction: f64,
    /// The attacker's fair share of such circuits by real bandwidth:
    /// (its share of all relays' real bandwidth) × (its share of exits'),
    /// which is (F / (1 + F))² when every relay is an exit.
    pub sybil_fair_share: f64,
    /// The attacker's share of the selection weight of all usable relays.
    pub sybil_weight_share: f64,
}

/// Draws the circuits of the Sybil figure, if the run had attacker relays.
pub fn circuits(sim: &Sim) -> Result<Option<SybilReport>, SimError> {
    if sim.cfg.sybils == 0 {
        return Ok(None);
    }
    let Some(majority) = sim.majority_node() else {
        return Err(SimError::Setup("no live node at the end".into()));
    };
    let now = EPOCH_UNIX + sim.now / crate::net::SEC;
    // Any identity not in the directory: path selection only leaves out
    // the directory's own peer.
    let own = PeerId::from_public_key(
        &libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32])
            .map_err(|e| SimError::Setup(e.to_string()))?
            .public(),
    );
    let mut dir = Directory::new(own);
    let view = &sim.nodes[majority as usize].view;
    for id in view.descriptors() {
        let rec = sim.records.get(id);
        let verified = SignedDescriptor::from_bytes(&rec.bytes)
            .and_then(|s| s.verify_into(now))
            .map_err(|e| SimError::Setup(format!("a held descriptor: {e}")))?;
        dir.insert_verified(verified, now)
            .map_err(|e| SimError::Setup(format!("storing a held descriptor: {e}")))?;
    }
    let mut rng = StdRng::seed_from_u64(sim.cfg.seed ^ 0x5eed_c1c5);
    let fakes = add_fakes(&mut dir, sim, now, &mut rng)?;
    if sim.cfg.measure {
        measure(&mut dir, sim, &fakes, now, &mut rng)?;
    }
    let mut sybils: HashSet<PeerId> = sim.sybil_peers();
    sybils.extend(fakes.iter().map(Relay::peer_id));
    let timer = std::time::Instant::now();
    let weights = dir.weights();
    let weights_ms = timer.elapsed().as_secs_f64() * 1000.0;
    let fakes_measuring = fakes
        .iter()
        .filter(|f| weights.measurers().contains(&f.peer_id()))
        .count();
    let usable: Vec<&Descriptor> = dir.iter().filter(|d| is_usable_relay(d)).collect();
    let total_weight: f64 = usable
        .iter()
        .map(|d| selection_weight(&weights, d) as f64)
        .sum();
    let sybil_weight: f64 = usable
        .iter()
        .filter(|d| sybils.contains(&d.peer_id))
        .map(|d| selection_weight(&weights, d) as f64)
        .sum();

    // Fair share by real bandwidth, over the relays in the directory.
    let in_dir: HashSet<PeerId> = usable.iter().map(|d| d.peer_id).collect();
    let (mut real_all, mut real_sybil, mut real_exits) = (0.0, 0.0, 0.0);
    for r in sim.relays.iter().filter(|r| in_dir.contains(&r.peer_id())) {
        let bw = r.real_bandwidth as f64;
        real_all += bw;
        if r.template.roles.exit {
            real_exits += bw;
        }
        if r.sybil {
            real_sybil += bw;
        }
    }
    let fair = if real_all > 0.0 && real_exits > 0.0 {
        (real_sybil / real_all) * (real_sybil / real_exits)
    } else {
        0.0
    };

    let n = sim.cfg.circuits;
    let (mut both, mut guard, mut exit, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut guards = Vec::new();
    for i in 0..n {
        // Every `circuits_per_client` circuits come from a new client with
        // its own guards.
        if i % sim.cfg.circuits_per_client == 0 {
            guards = draw_guards(&usable, &weights, GUARDS_PER_CLIENT, &mut rng);
        }
        let req = PathRequest {
            hops: HOPS,
            exit_target: None,
            exclude: &[],
            guards: &guards,
        };
        match select_path(&dir, &req, &mut rng) {
            Ok(path) => {
                let first = sybils.contains(&path[0].peer_id);
                let last = path.last().is_some_and(|d| sybils.contains(&d.peer_id));
                guard += usize::from(first);
                exit += usize::from(last);
                both += usize::from(first && last);
            }
            Err(_) => failed += 1,
        }
    }
    let built = (n - failed).max(1) as f64;
    Ok(Some(SybilReport {
        sybils_in_directory: usable
            .iter()
            .filter(|d| sybils.contains(&d.peer_id))
            .count(),
        relays_in_directory: usable.len(),
        fake_measurers: fakes.len(),
        fake_measurers_counted: fakes_measuring,
        measurers_counted: weights.measurers().len(),
        weights_ms,
        circuits: n,
        circuits_failed: failed,
        sybil_circuit_fraction: both as f64 / built,
        sybil_guard_fraction: guard as f64 / built,
        sybil_exit_fraction: exit as f64 / built,
        sybil_fair_share: fair,
        sybil_weight_share: if total_weight > 0.0 {
            sybil_weight / total_weight
        } else {
            0.0
        },
    }))
}
