//! Fuzz the assessment of many stored measurement reports: who counts as
//! a measurer, and what their reports conclude (`Measurements::assess`,
//! and `Directory::weights` with measurements on).
//!
//! A remote measurer controls everything in its reports (targets,
//! observations, periods, publication times), and a panic while weighing
//! would stop every node's path selection, so the input is read as a
//! small network and a script run against it:
//!
//! * header: the measurement parameters (period, window, `k`,
//!   `min_measurers`, ramp, `required`, `max_rate`), whether private
//!   relays are allowed, and up to 8 relays (fixed ed25519 keys, each with
//!   an address variant: its own /24, a shared /24 or /48 over the address
//!   cap, a private address, or not a relay);
//! * then operations: sign a report (measurer, publication time, up to 17
//!   observations of listed relays, unlisted keys, the measurer itself,
//!   arbitrary peer ids, or peer ids made to share a relay's hashing key)
//!   and insert it at the clock, both into the directory and into a bare
//!   `Measurements`; move the clock (back too); expire; remove or re-list a
//!   relay; weigh; assess with a fuzz-chosen candidate set (non-candidate
//!   measurers and targets, unknown peers, empty sets).
//!
//! Checks: no panic; the measurers counted are candidates; a settled
//! assessment has candidates; every relay concluded about is the target,
//! named exactly, of a report held of a measurer counted now, and is
//! observed by no more of them than name it (`reached_by <= observed_by`);
//! the same candidates given in another order assess alike (at the end); weights are
//! zero for peers the directory does not list as relays.
//!
//! Signing dominated the run time (instrumented curve25519), so
//! descriptors are signed and verified once and cached, and at most one
//! report per input is signed (when a header bit says so; its encoding is
//! not decoded again: `measure_report` fuzzes the decoder). The others are
//! stored as a `VerifiedReport` made by hand, with a record unique to the
//! report, if they keep the rules `Report::sign` checks; each signed one
//! checks that the two agree on those rules.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use libp2p_identity::{Keypair, PeerId};
use veilnet_dir::descriptor::Verified;
use veilnet_dir::measure::{Assessment, Measurements, MAX_OBSERVATIONS};
use veilnet_dir::{
    digest, Descriptor, Directory, MeasureParams, Observation, Report, ReportError, Roles,
    VerifiedReport,
};

const NOW: u64 = 1_700_000_000;
/// Keys in the pool; the first `n` (from the input) are listed.
const KEYS: usize = 10;
/// At most this many operations per input, so one input stays fast.
const MAX_OPS: usize = 32;

fn keys() -> &'static [(Keypair, PeerId)] {
    static KEYS_: OnceLock<Vec<(Keypair, PeerId)>> = OnceLock::new();
    KEYS_.get_or_init(|| {
        (0..KEYS as u8)
            .map(|i| {
                let mut seed = [0x5au8; 32];
                seed[0] = i;
                let k = Keypair::ed25519_from_bytes(seed).expect("32-byte ed25519 secret");
                let p = k.public().to_peer_id();
                (k, p)
            })
            .collect()
    })
}

/// The input, read front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_be_bytes(b)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn params(i: &mut Input) -> MeasureParams {
    let b = i.u8();
    MeasureParams {
        period_secs: [60, 1, 0, 3600, 20, 43_200, 7, 600][usize::from(b & 7)],
        // 0 and above MAX_WINDOW_EPOCHS are clamped by the code.
        window_epochs: u32::from(i.u8() % 11),
        measurers_per_target: [3, 1, 0, 2, 9, 50, 3, u32::MAX][usize::from((b >> 3) & 7)],
        min_measurers: u32::from(i.u8() % 5),
        ramp_secs: [0, 100, 3 * 24 * 3600, u64::MAX][usize::from((b >> 6) & 3)],
        required: i.u8() & 1 == 0,
        max_rate: [20_000_000, 1, 0, u64::MAX][usize::from(i.u8() & 3)],
    }
}

/// How relay `i` is listed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    /// Its own /24.
    Own,
    /// 203.0.113.0/24, shared by every relay of this variant.
    SharedV4,
    /// 2001:db8::/48, shared.
    SharedV6,
    /// 10.0.0.0/8: weightless unless private relays are allowed.
    Private,
    /// Listed, but not a relay (its reports are refused).
    NotRelay,
}

fn variant(b: u8) -> Variant {
    match b % 8 {
        0..=3 => Variant::Own,
        4 => Variant::SharedV4,
        5 => Variant::SharedV6,
        6 => Variant::Private,
        _ => Variant::NotRelay,
    }
}

/// Relay `i`'s verified descriptor as `v` with bandwidth choice `bw`,
/// signed and verified once per combination.
fn descriptor(i: usize, v: Variant, bw: u8) -> Verified {
    type Cache = Mutex<HashMap<(usize, Variant, u8), Verified>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry((i, v, bw))
        .or_insert_with(|| {
            let (key, peer) = &keys()[i];
            let n = i as u8 + 1;
            let addr: SocketAddr = match v {
                Variant::Own | Variant::NotRelay => ([198, 51, n, 1], 9001).into(),
                Variant::SharedV4 => ([203, 0, 113, n], 9001).into(),
                Variant::SharedV6 => (
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n.into()),
                    9001,
                )
                    .into(),
                Variant::Private => ([10, 0, 0, n], 9001).into(),
            };
            let d = Descriptor {
                peer_id: *peer,
                identity_key: key.public().encode_protobuf(),
                link_addrs: vec![addr],
                p2p_addrs: vec![],
                onion_key: [0x11; 32],
                onion_key_expires: u64::MAX,
                link_key: [0x24; 32],
                roles: Roles {
                    relay: v != Variant::NotRelay,
                    exit: i.is_multiple_of(2),
                },
                exit_policy: veilnet_policy::ExitPolicy::reject_all(),
                bandwidth: [1_000_000, 1, 50_000_000_000, 20_000_000][usize::from(bw % 4)],
                region: "ZZ".into(),
                family: vec![],
                version: "veilnet/fuzz".into(),
                seq: 1,
                published: NOW,
            };
            d.sign(key)
                .expect("a valid descriptor signs")
                .verify_into(NOW)
                .expect("and verifies")
        })
        .clone()
}

/// A peer id whose multihash is SHA-256 with the given digest (not the
/// id of any key: reports may name any peer id).
fn sha256_peer(d: [u8; 32]) -> PeerId {
    let mut b = vec![0x12, 0x20];
    b.extend_from_slice(&d);
    PeerId::from_bytes(&b).expect("a SHA-256 multihash is a peer id")
}

/// A report target: a pool key (listed or not), an arbitrary peer id, or
/// one that ends in the same 8 bytes as a pool key's (the assessment
/// numbers peers by those).
fn target(i: &mut Input) -> PeerId {
    let b = i.u8();
    let k = usize::from(b >> 2) % KEYS;
    match b & 3 {
        0 | 1 => keys()[k].1,
        2 => {
            let mut d = [0u8; 32];
            d[0] = i.u8();
            d[31] = i.u8();
            sha256_peer(d)
        }
        _ => {
            let own = keys()[k].1.to_bytes();
            let mut d = [0u8; 32];
            d[..2].copy_from_slice(&i.u16().to_be_bytes());
            d[24..].copy_from_slice(&own[own.len() - 8..]);
            sha256_peer(d)
        }
    }
}

fn observation(i: &mut Input, now: u64) -> Observation {
    let b = i.u8();
    let reached = b & 1 == 1;
    let bandwidth = if !reached {
        // Mostly 0 (the rule), sometimes not (the report cannot be signed).
        u64::from(b & 0x80 == 0x80 && b & 0x40 == 0x40)
    } else {
        match (b >> 1) & 3 {
            0 => u64::from(i.u16()) * 1000,
            1 => u64::MAX,
            2 => 0,
            _ => i.u64(),
        }
    };
    let since = match (b >> 3) & 3 {
        0 => now.saturating_sub(u64::from(i.u16())),
        1 => u64::MAX,
        2 => 0,
        _ => now.wrapping_add(u64::from(i.u16())),
    };
    Observation {
        target: target(i),
        bandwidth,
        reached,
        since,
    }
}

/// A publication time relative to `now`: mostly within a few periods
/// either side, sometimes anywhere.
fn published(i: &mut Input, now: u64, p: &MeasureParams) -> u64 {
    let b = i.u8();
    let period = p.period_secs.max(1);
    let into = u64::from(i.u16()) % period;
    let periods = u64::from(b & 0x0f);
    match b >> 6 {
        0 => now.saturating_sub(into),
        1 => p
            .epoch(now)
            .saturating_sub(periods)
            .saturating_mul(period)
            .saturating_add(into),
        2 => now.saturating_add(u64::from(i.u16()) % 600),
        _ => i.u64(),
    }
}

/// Whether `Report::sign` would sign `r` (its content rules), without
/// the cost of a signature.
fn signable(r: &Report) -> bool {
    let mut seen = HashSet::new();
    r.observations.len() <= MAX_OBSERVATIONS
        && r.observations.iter().all(|o| {
            seen.insert(o.target)
                && o.target != r.measurer
                && (o.reached || o.bandwidth == 0)
                // Format 2: targets are ed25519 identities (the pool's keys
                // are canonical), figures fit 32 bits.
                && ed25519_id(&o.target)
                && o.bandwidth <= u64::from(u32::MAX)
                && o.since <= u64::from(u32::MAX)
        })
}

/// Whether `p` is the peer id of an ed25519 key (an identity multihash of
/// its protobuf encoding).
fn ed25519_id(p: &PeerId) -> bool {
    let hash = p.as_ref();
    hash.code() == 0
        && libp2p_identity::PublicKey::try_decode_protobuf(hash.digest())
            .is_ok_and(|k| k.try_into_ed25519().is_ok())
}

/// A record unique to `r` (so its digest is), standing in for a signed
/// one.
fn unsigned_record(r: &Report) -> Vec<u8> {
    let mut out = b"unsigned".to_vec();
    out.extend_from_slice(&r.measurer.to_bytes());
    out.extend_from_slice(&r.published.to_be_bytes());
    for o in &r.observations {
        let t = o.target.to_bytes();
        out.push(t.len() as u8);
        out.extend_from_slice(&t);
        out.extend_from_slice(&o.bandwidth.to_be_bytes());
        out.extend_from_slice(&o.since.to_be_bytes());
        out.push(u8::from(o.reached));
    }
    out
}

fn candidates(i: &mut Input, listed: &[PeerId]) -> HashSet<PeerId> {
    let mask = i.u16();
    let mut c: HashSet<PeerId> = (0..KEYS)
        .filter(|k| mask & (1 << k) != 0)
        .map(|k| keys()[k].1)
        .collect();
    if mask & (1 << 12) != 0 {
        c.extend(listed.iter().copied());
    }
    if mask & (1 << 13) != 0 {
        c.insert(sha256_peer([mask as u8; 32]));
    }
    if mask & (1 << 14) != 0 {
        c.clear();
    }
    c
}

/// The checks on one assessment of `m` (see the header).
fn check_assessment(
    m: &Measurements,
    cands: &HashSet<PeerId>,
    now: u64,
    reorder: bool,
) -> Assessment {
    let a = m.assess(cands, now);
    assert!(
        a.measurers.is_subset(cands),
        "a measurer that is no candidate"
    );
    assert!(
        !a.settled || !cands.is_empty(),
        "settled without candidates"
    );
    let p = m.params();
    let kept = p.first_kept(now)..=p.epoch(now);
    for (peer, x) in &a.measured {
        assert!(x.reached_by <= x.observed_by);
        // Measurers counted now that hold a kept report naming `peer`.
        let naming = a
            .measurers
            .iter()
            .filter(|mm| **mm != *peer)
            .filter(|mm| {
                m.reports_of(mm).any(|r| {
                    kept.contains(&p.epoch(r.published))
                        && r.observations.iter().any(|o| o.target == *peer)
                })
            })
            .count();
        assert!(
            x.observed_by <= naming,
            "{peer} observed by {} measurers, named by {naming}",
            x.observed_by
        );
    }
    if reorder {
        // Another set with the same members (another iteration order).
        let mut members: Vec<PeerId> = cands.iter().copied().collect();
        members.reverse();
        let again: HashSet<PeerId> = members.into_iter().collect();
        assert_eq!(
            m.assess(&again, now),
            a,
            "the order of the candidates matters"
        );
    }
    a
}

fn check_weights(dir: &Directory) {
    let w = dir.weights();
    let relays: HashSet<PeerId> = dir
        .iter()
        .filter(|d| d.roles.relay)
        .map(|d| d.peer_id)
        .collect();
    for (_, p) in keys() {
        if !relays.contains(p) {
            assert_eq!(w.get(p), 0, "an unlisted peer weighs");
        }
        let _ = (w.measured(p), w.settled());
    }
    assert!(
        w.measurers().is_subset(&relays),
        "a measurer the directory does not list"
    );
}

fn check(data: &[u8]) {
    let mut i = Input(data);
    let p = params(&mut i);
    let flags = i.u8();
    let n = usize::from(flags & 7) + 1;
    let mut dir = Directory::new(keys()[KEYS - 1].1);
    dir.use_measurements(Some(p));
    dir.allow_private_relays(flags & 8 != 0);
    if flags & 16 != 0 {
        dir.set_reweigh_secs(u64::from(i.u8()));
    }
    let mut listed: Vec<PeerId> = Vec::new();
    let mut variants = Vec::new();
    for k in 0..n {
        let (v, bw) = (variant(i.u8()), i.u8());
        variants.push((v, bw));
        if dir.insert_verified(descriptor(k, v, bw), NOW).is_ok() {
            listed.push(keys()[k].1);
        }
    }
    // At most one report per input is signed, if the header says so.
    let mut sign_one = flags & 32 != 0;
    let mut bare = Measurements::new(p);
    let mut now = NOW;
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        match i.u8() % 8 {
            op @ 0..=2 => {
                let m = usize::from(i.u8()) % KEYS;
                let (key, peer) = &keys()[m];
                let published = published(&mut i, now, &p);
                let count = usize::from(i.u8() % 18);
                let observations = (0..count).map(|_| observation(&mut i, now)).collect();
                let report = Report {
                    measurer: *peer,
                    published,
                    observations,
                };
                let record = if op == 0 && std::mem::take(&mut sign_one) {
                    let signed = report.sign(key);
                    assert_eq!(
                        signed.is_ok(),
                        signable(&report),
                        "signable() disagrees with Report::sign: {signed:?}"
                    );
                    match signed {
                        Ok(r) => r,
                        Err(ReportError::BadContents { .. }) => continue,
                        Err(e) => panic!("signing failed: {e}"),
                    }
                } else if signable(&report) {
                    unsigned_record(&report)
                } else {
                    continue;
                };
                let v = VerifiedReport {
                    digest: digest(&record),
                    report,
                    record,
                };
                let _ = bare.insert(v.clone(), now);
                let _ = dir.insert_report(v, now);
            }
            3 => {
                // Mostly forward, up to ~16 periods; sometimes back.
                let step = u64::from(i.u16()) * p.period_secs.max(1) / 4096;
                now = if step % 8 == 7 {
                    now.saturating_sub(step)
                } else {
                    now.saturating_add(step)
                };
            }
            4 => {
                let gone = dir.expire(now);
                bare.expire(now, |m| !gone.contains(m) && dir.get(m).is_some());
            }
            5 => {
                let k = usize::from(i.u8()) % n;
                if i.u8() & 1 == 0 {
                    dir.remove(&keys()[k].1);
                } else {
                    let (v, bw) = variants[k];
                    let _ = dir.insert_verified(descriptor(k, v, bw), now);
                }
            }
            6 => check_weights(&dir),
            _ => {
                let at = now.saturating_add(u64::from(i.u8())).saturating_sub(128);
                check_assessment(&bare, &candidates(&mut i, &listed), at, false);
                if let Some(m) = dir.measurements() {
                    check_assessment(m, &candidates(&mut i, &listed), at, false);
                }
            }
        }
    }
    check_weights(&dir);
    check_assessment(&bare, &HashSet::new(), now, true);
    let all: HashSet<PeerId> = keys().iter().map(|(_, p)| *p).collect();
    check_assessment(&bare, &all, now, true);
    let listed: HashSet<PeerId> = listed.into_iter().collect();
    check_assessment(&bare, &listed, now, true);
}

fuzz_target!(|data: &[u8]| check(data));
