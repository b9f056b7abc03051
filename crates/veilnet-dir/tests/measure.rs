//! Measurement reports: the wire format and its signature, what a
//! directory keeps, and how observations become weights.
#![allow(clippy::unwrap_used)]

mod common;

use common::{desc, key, sign, NOW};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use veilnet_dir::measure::{
    assigned, ReportInserted, ASSIGNMENT_SLACK_PERCENT, MAX_OBSERVATIONS, RAMP_FLOOR_PERCENT,
};
use veilnet_dir::{
    Directory, MeasureParams, Observation, Report, ReportError, ReportFork, VerifiedReport,
    MAX_CLOCK_SKEW,
};
use veilnet_error::{ErrorKind, HasKind};

/// Short periods, everyone measured by everyone in small networks, usable
/// after 2 measurers, no ramp.
const PARAMS: MeasureParams = MeasureParams {
    period_secs: 60,
    measurers_per_target: 3,
    window_epochs: 4,
    min_measurers: 2,
    ramp_secs: 0,
    required: true,
    max_rate: 20_000_000,
};

fn obs(target: PeerId, bandwidth: u64) -> Observation {
    Observation {
        target,
        bandwidth,
        reached: bandwidth > 0,
        since: NOW - 1000,
    }
}

fn report(measurer: &Keypair, published: u64, observations: Vec<Observation>) -> VerifiedReport {
    let r = Report {
        measurer: measurer.public().to_peer_id(),
        published,
        observations,
    };
    VerifiedReport::decode(&r.sign(measurer).unwrap()).unwrap()
}

/// A directory (of the node `key(1000)`) listing relays `key(0..n)`, each
/// in its own /24 and advertising `advertised`, with measurements on.
fn network(n: u32, advertised: u64) -> (Directory, Vec<Keypair>) {
    let mut dir = Directory::new(key(1000).public().to_peer_id());
    dir.use_measurements(Some(PARAMS));
    let keys: Vec<Keypair> = (0..n).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        let mut d = desc(k, &format!("198.51.{}.1:9001", i));
        d.bandwidth = advertised;
        dir.insert(&sign(&d, k), NOW).unwrap();
    }
    (dir, keys)
}

fn id(k: &Keypair) -> PeerId {
    k.public().to_peer_id()
}

/// The fixed test vector: measurer key = 32 bytes of 0x02, one
/// observation of the relay with key 0x01.
const VECTOR_RECORD: &str = concat!(
    "4d02",                                                             // tag, format
    "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394", // measurer key
    "000000006553f100",                                                 // published
    "01",                                                               // one observation
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c", // target key
    "000f4240",                                                         // 1,000,000 B/s
    "6553ed18",                                                         // since NOW - 1000
    "01",                                                               // reached
);

#[test]
fn a_report_names_ed25519_relays_and_carries_32_bit_figures() {
    let (m, t) = (key(1), key(2));
    let sign = |o: Observation| {
        Report {
            measurer: id(&m),
            published: NOW,
            observations: vec![o],
        }
        .sign(&m)
    };
    let bad = |r: Result<Vec<u8>, ReportError>| match r {
        Err(ReportError::BadContents { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    let fast = Observation {
        bandwidth: veilnet_dir::measure::MAX_REPORTED_RATE,
        ..obs(id(&t), 1)
    };
    let v = VerifiedReport::decode(&sign(fast).unwrap()).unwrap();
    assert_eq!(v.report.observations, [fast]);
    assert_eq!(
        bad(sign(Observation {
            bandwidth: fast.bandwidth + 1,
            ..fast
        })),
        "bandwidth above 4 GiB/s"
    );
    assert!(bad(sign(Observation {
        since: u64::from(u32::MAX) + 1,
        ..fast
    }))
    .contains("2106"));
    // A peer id that is not an ed25519 identity (a SHA-256 multihash).
    let mut hashed = vec![0x12, 0x20];
    hashed.extend_from_slice(&[7; 32]);
    let other = PeerId::from_bytes(&hashed).unwrap();
    assert!(bad(sign(obs(other, 1))).contains("ed25519"));
    // Format 1 (length-prefixed peer ids, 64-bit figures) is refused
    // plainly.
    let mut old = sign(obs(id(&t), 1)).unwrap();
    old[1] = 1;
    let e = VerifiedReport::decode(&old).unwrap_err();
    assert!(e.to_string().contains("format 1, expected 2"), "{e}");
    assert_eq!(e.kind(), ErrorKind::PeerMisbehaved);
}

/// A report record signed by `m` over hand-made bytes (one observation of
/// the raw key `target`).
fn hand_signed(m: &Keypair, target: [u8; 32]) -> Vec<u8> {
    let mut body = vec![b'M', 2];
    body.extend_from_slice(&m.public().try_into_ed25519().unwrap().to_bytes());
    body.extend_from_slice(&NOW.to_be_bytes());
    body.push(1);
    body.extend_from_slice(&target);
    body.extend_from_slice(&1000u32.to_be_bytes());
    body.extend_from_slice(&((NOW - 1000) as u32).to_be_bytes());
    body.push(1);
    let mut msg = veilnet_dir::measure::REPORT_CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    body.extend_from_slice(&m.sign(&msg).unwrap());
    body
}

#[test]
fn a_target_key_has_one_encoding() {
    let m = key(1);
    let good = key(2).public().try_into_ed25519().unwrap().to_bytes();
    let v = VerifiedReport::decode(&hand_signed(&m, good)).unwrap();
    assert_eq!(v.report.observations[0].target, id(&key(2)));
    // y = p, y = p + 1 (the encodings of y = 0 and y = 1 beyond the prime),
    // and x = 0 with its sign set: points ed25519 decoders take, each
    // another peer id for a point with a canonical name.
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p1 = p;
    p1[0] = 0xee;
    let mut minus_zero = [0; 32];
    minus_zero[0] = 1;
    minus_zero[31] = 0x80;
    for raw in [p, p1, minus_zero] {
        let e = VerifiedReport::decode(&hand_signed(&m, raw)).unwrap_err();
        assert!(e.to_string().contains("canonical"), "{e}");
        assert_eq!(e.kind(), ErrorKind::PeerMisbehaved);
    }
    // The canonical y = 1 (the identity, x = 0 without a sign) is not
    // refused for its encoding.
    let mut one = [0; 32];
    one[0] = 1;
    if let Err(e) = VerifiedReport::decode(&hand_signed(&m, one)) {
        assert!(!e.to_string().contains("canonical"), "{e}");
    }
}

#[test]
fn test_vector() {
    let measurer = Keypair::ed25519_from_bytes([2u8; 32]).unwrap();
    let target = Keypair::ed25519_from_bytes([1u8; 32]).unwrap();
    let r = Report {
        measurer: id(&measurer),
        published: NOW,
        observations: vec![obs(id(&target), 1_000_000)],
    };
    let record = r.sign(&measurer).unwrap();
    let (body, sig) = record.split_at(record.len() - 64);
    assert_eq!(hex::encode(body), VECTOR_RECORD);
    // ed25519 is deterministic: the same key signs the same bytes alike.
    let mut msg = veilnet_dir::measure::REPORT_CONTEXT.to_vec();
    msg.extend_from_slice(body);
    assert!(measurer.public().verify(&msg, sig));
    assert_eq!(sig, measurer.sign(&msg).unwrap());
    let v = VerifiedReport::decode(&record).unwrap();
    assert_eq!(v.report, r);
    assert!(veilnet_dir::is_report(&record));
    assert!(!veilnet_dir::is_report(
        &sign(&desc(&target, "198.51.100.1:1"), &target).to_bytes()
    ));
}

#[test]
fn every_changed_byte_and_every_truncation_is_refused() {
    let (m, t) = (key(1), key(2));
    let record = Report {
        measurer: id(&m),
        published: NOW,
        observations: vec![obs(id(&t), 5_000), obs(id(&key(3)), 0)],
    }
    .sign(&m)
    .unwrap();
    for i in 0..record.len() {
        let mut bad = record.clone();
        bad[i] ^= 0x01;
        let e = VerifiedReport::decode(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerMisbehaved, "byte {i}: {e}");
    }
    for len in 0..record.len() {
        assert!(
            VerifiedReport::decode(&record[..len]).is_err(),
            "length {len}"
        );
    }
    let mut longer = record.clone();
    longer.push(0);
    assert!(VerifiedReport::decode(&longer).is_err());
}

#[test]
fn a_report_that_breaks_the_rules_cannot_be_signed() {
    let m = key(1);
    let twice = Report {
        measurer: id(&m),
        published: NOW,
        observations: vec![obs(id(&key(2)), 1), obs(id(&key(2)), 1)],
    };
    assert!(matches!(
        twice.sign(&m),
        Err(ReportError::BadContents { .. })
    ));
    let itself = Report {
        observations: vec![obs(id(&m), 1)],
        ..twice.clone()
    };
    assert!(itself.sign(&m).is_err());
    let unreached_bandwidth = Report {
        observations: vec![Observation {
            reached: false,
            ..obs(id(&key(2)), 7)
        }],
        ..twice.clone()
    };
    assert!(unreached_bandwidth.sign(&m).is_err());
    let too_many = Report {
        observations: (0..=MAX_OBSERVATIONS as u32)
            .map(|i| obs(id(&key(10 + i)), 1))
            .collect(),
        ..twice.clone()
    };
    assert!(too_many.sign(&m).is_err());
    let wrong_key = Report {
        observations: vec![],
        ..twice
    };
    assert!(wrong_key.sign(&key(9)).is_err());
}

#[test]
fn an_unmeasured_relay_is_unusable_and_a_measured_one_weighs_what_was_measured() {
    let (mut dir, keys) = network(4, 1_000_000_000);
    let w = dir.weights();
    assert!(
        keys.iter().all(|k| w.get(&id(k)) == 0),
        "nobody measured yet"
    );
    // Relay 0 is measured by 1, 2 and 3 (in a network this small every
    // measurer is assigned every relay).
    for (m, bw) in [(1, 2_000_000), (2, 1_000_000), (3, 900_000)] {
        let r = report(&keys[m], NOW, vec![obs(id(&keys[0]), bw)]);
        assert_eq!(dir.insert_report(r, NOW).unwrap(), ReportInserted::New);
    }
    let w = dir.weights();
    // The median of three (the upper half's median), capped by the 1 GB/s
    // it advertises.
    assert_eq!(w.get(&id(&keys[0])), 1_000_000);
    let m = w.measured(&id(&keys[0])).unwrap();
    assert!(m.reachable);
    assert_eq!((m.reached_by, m.observed_by), (3, 3));
    assert_eq!(w.get(&id(&keys[1])), 0, "relay 1 is still unmeasured");
    // A relay measured above what it advertises weighs what it advertises.
    let (mut dir, keys) = network(3, 50_000);
    for m in [1, 2] {
        dir.insert_report(
            report(&keys[m], NOW, vec![obs(id(&keys[0]), 9_000_000)]),
            NOW,
        )
        .unwrap();
    }
    assert_eq!(dir.weights().get(&id(&keys[0])), 50_000);
}

#[test]
fn no_figure_counts_above_the_networks_measurement_rate() {
    let (mut dir, keys) = network(4, 10_000_000_000);
    let target = id(&keys[0]);
    for m in &keys[1..=3] {
        dir.insert_report(report(m, NOW, vec![obs(target, 4_000_000_000)]), NOW)
            .unwrap();
    }
    // Every measurer says 4 GB/s; none can have measured above 20 MB/s.
    assert_eq!(dir.weights().get(&target), PARAMS.max_rate);
}

#[test]
fn one_measurer_cannot_move_the_median_far_and_one_is_not_enough() {
    let (mut dir, keys) = network(6, 10_000_000_000);
    let target = id(&keys[0]);
    dir.insert_report(report(&keys[5], NOW, vec![obs(target, 4_000_000_000)]), NOW)
        .unwrap();
    assert_eq!(
        dir.weights().get(&target),
        0,
        "one measurer is below min_measurers"
    );
    for m in &keys[1..=4] {
        dir.insert_report(report(m, NOW, vec![obs(target, 1_000_000)]), NOW)
            .unwrap();
    }
    assert_eq!(dir.weights().get(&target), 1_000_000);
}

#[test]
fn a_relay_that_most_measurers_failed_to_reach_in_the_latest_period_is_unusable() {
    let (mut dir, keys) = network(4, 1_000_000);
    let target = id(&keys[0]);
    for m in &keys[1..=3] {
        dir.insert_report(report(m, NOW, vec![obs(target, 500_000)]), NOW)
            .unwrap();
    }
    assert!(dir.weights().get(&target) > 0);
    // Next period: one measurer says it failed: one word is not enough.
    let later = NOW + PARAMS.period_secs;
    dir.insert_report(report(&keys[3], later, vec![obs(target, 0)]), later)
        .unwrap();
    assert!(dir.weights().get(&target) > 0, "one failure is not enough");
    // Two of them fail to reach it (min_measurers, and more than reached).
    for m in [1, 2] {
        dir.insert_report(report(&keys[m], later, vec![obs(target, 0)]), later)
            .unwrap();
    }
    let w = dir.weights();
    assert_eq!(w.get(&target), 0);
    assert!(!w.measured(&target).unwrap().reachable);
    // Reports are kept a window before the window (to decide who measures
    // in it), then age out with their periods.
    let kept = later + u64::from(2 * PARAMS.window_epochs - 2) * PARAMS.period_secs;
    dir.expire(kept);
    assert!(!dir.measurements().unwrap().is_empty());
    dir.expire(kept + PARAMS.period_secs);
    assert!(dir.measurements().unwrap().is_empty());
}

#[test]
fn unassigned_observations_do_not_count() {
    // 60 relays, 3 measurers per relay: most measurers are not assigned a
    // given relay in a given period, and their observations are ignored.
    let (mut dir, keys) = network(60, 1_000_000);
    let epoch = PARAMS.epoch(NOW);
    let target = id(&keys[0]);
    let (assigned_m, unassigned): (Vec<usize>, Vec<usize>) = (1..60).partition(|&m| {
        assigned(
            epoch,
            &id(&keys[m]),
            &target,
            60,
            PARAMS.measurers_per_target,
            ASSIGNMENT_SLACK_PERCENT,
        )
    });
    assert!(unassigned.len() >= 40, "{} unassigned", unassigned.len());
    for &m in &unassigned {
        dir.insert_report(report(&keys[m], NOW, vec![obs(target, 9_000_000)]), NOW)
            .unwrap();
    }
    let w = dir.weights();
    assert!(w.measured(&target).is_none());
    assert_eq!(w.get(&target), 0);
    for &m in &assigned_m {
        dir.insert_report(report(&keys[m], NOW, vec![obs(target, 700_000)]), NOW)
            .unwrap();
    }
    assert!(assigned_m.len() >= 2, "{} assigned", assigned_m.len());
    assert_eq!(dir.weights().get(&target), 700_000);
}

#[test]
fn reconciliation_hands_over_descriptors_before_reports() {
    // Reports a few periods old and descriptors republished since: by time
    // alone the reports would sort first, and a joining node would receive
    // them before the descriptors of their measurers.
    let (mut dir, keys) = network(3, 1_000_000);
    let old = report(&keys[1], NOW - 3 * 60, vec![obs(id(&keys[0]), 1_000)]);
    let older = report(&keys[2], NOW - 5 * 60, vec![obs(id(&keys[0]), 2_000)]);
    dir.insert_report(old.clone(), NOW).unwrap();
    dir.insert_report(older.clone(), NOW).unwrap();
    let order: Vec<bool> = dir
        .keys()
        .iter()
        .map(|k| k.1 == old.digest || k.1 == older.digest)
        .collect();
    assert_eq!(order, [false, false, false, true, true]);
    // Each class by the time its records carry.
    let keys = dir.keys();
    assert_eq!((keys[3].1, keys[4].1), (older.digest, old.digest));
    assert_eq!(keys[3].0, veilnet_dir::REPORT_ORDER | (NOW - 5 * 60));
    assert_eq!(keys[0].0, NOW);
}

#[test]
fn the_directory_keeps_one_report_per_measurer_and_period_from_listed_relays() {
    let (mut dir, keys) = network(3, 1_000_000);
    let stranger = key(77);
    let e = dir
        .insert_report(report(&stranger, NOW, vec![obs(id(&keys[0]), 1)]), NOW)
        .unwrap_err();
    assert!(matches!(e, ReportError::UnknownMeasurer(_)));
    assert_eq!(e.kind(), ErrorKind::Transient);
    let first = report(&keys[1], NOW, vec![obs(id(&keys[0]), 1_000)]);
    let second = report(
        &keys[1],
        NOW + 5,
        vec![obs(id(&keys[0]), 1_000), obs(id(&keys[2]), 2_000)],
    );
    let (d1, d2) = (first.digest, second.digest);
    dir.insert_report(first.clone(), NOW + 5).unwrap();
    assert_eq!(
        dir.insert_report(first.clone(), NOW + 5).unwrap(),
        ReportInserted::Unchanged
    );
    assert_eq!(
        dir.insert_report(second.clone(), NOW + 5).unwrap(),
        ReportInserted::Updated
    );
    assert!(dir.holds(&d2) && !dir.holds(&d1));
    assert!(matches!(
        dir.insert_report(first, NOW + 5),
        Err(ReportError::Superseded(_))
    ));
    assert!(dir.keys().iter().any(|k| k.1 == d2));
    assert_eq!(dir.record(&d2).unwrap(), second.record);
    let future = report(&keys[1], NOW + MAX_CLOCK_SKEW + 100, vec![]);
    assert!(matches!(
        dir.insert_report(future, NOW),
        Err(ReportError::OutOfWindow { .. })
    ));
    let old = report(&keys[2], NOW - 10 * PARAMS.period_secs, vec![]);
    assert!(matches!(
        dir.insert_report(old, NOW),
        Err(ReportError::OutOfWindow { .. })
    ));
    let mut off = Directory::new(id(&key(1000)));
    assert!(matches!(
        off.insert_report(report(&keys[1], NOW, vec![]), NOW),
        Err(ReportError::Disabled)
    ));
}

/// Relays 0..4, each measured by the other three at `NOW`.
fn measured_network() -> (Directory, Vec<Keypair>) {
    let (mut dir, keys) = network(4, 1_000_000);
    for m in 0..4 {
        let seen = (0..4)
            .filter(|&t| t != m)
            .map(|t| obs(id(&keys[t]), 500_000))
            .collect();
        dir.insert_report(report(&keys[m], NOW, seen), NOW).unwrap();
    }
    (dir, keys)
}

#[test]
fn a_measurer_that_forks_a_report_is_kept_as_evidence_and_weighs_nothing() {
    let (dir, keys) = measured_network();
    let liar = id(&keys[1]);
    assert_eq!(dir.weights().get(&liar), 500_000);
    assert_eq!(
        dir.weights().measured(&id(&keys[0])).unwrap().observed_by,
        3
    );
    // Two reports of one period, each observing a relay the other does
    // not: nodes keeping whichever came first would disagree.
    let epoch_start = PARAMS.epoch(NOW) * PARAMS.period_secs;
    let a = report(
        &keys[1],
        NOW + 1,
        vec![
            obs(id(&keys[0]), 100),
            obs(id(&keys[2]), 100),
            obs(id(&keys[3]), 100),
            obs(id(&key(50)), 1),
        ],
    );
    let b = report(
        &keys[1],
        NOW + 2,
        vec![
            obs(id(&keys[0]), 9_000_000),
            obs(id(&keys[2]), 1),
            obs(id(&keys[3]), 1),
            obs(id(&key(51)), 1),
        ],
    );
    let mut views = Vec::new();
    for (first, second) in [(&a, &b), (&b, &a)] {
        let mut d = dir.clone();
        assert_eq!(
            d.insert_report(first.clone(), NOW + 2).unwrap(),
            ReportInserted::Updated
        );
        assert_eq!(
            d.insert_report(second.clone(), NOW + 2).unwrap(),
            ReportInserted::Forked
        );
        assert_eq!(
            d.insert_report(second.clone(), NOW + 2).unwrap(),
            ReportInserted::Unchanged
        );
        let forks: Vec<ReportFork> = d.measurements().unwrap().forks().cloned().collect();
        assert_eq!(forks.len(), 1);
        let f = &forks[0];
        assert_eq!((f.measurer, f.epoch), (liar, PARAMS.epoch(NOW)));
        // Both are held, and the proof lasts as long as the period's
        // reports are kept.
        assert!(d.holds(&a.digest) && d.holds(&b.digest));
        assert_eq!(d.record(&a.digest).unwrap(), a.record);
        assert_eq!(d.record(&b.digest).unwrap(), b.record);
        // The proof goes on as one record, in place of the two.
        assert!(d.keys().iter().any(|k| k.1 == f.digest));
        assert!(!d.keys().iter().any(|k| k.1 == a.digest || k.1 == b.digest));
        assert_eq!(d.record(&f.digest).unwrap(), f.record);
        assert_eq!(
            ReportFork::decode(&f.record, &PARAMS, NOW + 2)
                .unwrap()
                .digest,
            f.digest
        );
        assert_eq!(
            f.expires,
            epoch_start + (2 * (PARAMS.window_epochs as u64 - 1) + 1) * PARAMS.period_secs
        );
        // The liar weighs nothing and its word no longer counts.
        let w = d.weights();
        assert_eq!(w.get(&liar), 0);
        assert!(!w.measurers().contains(&liar));
        assert_eq!(w.measured(&id(&keys[0])).unwrap().observed_by, 2);
        assert_eq!(w.get(&id(&keys[0])), 500_000);
        // Any later report of it is refused while the proof lasts.
        let more = report(
            &keys[1],
            NOW + PARAMS.period_secs,
            vec![obs(id(&keys[0]), 1)],
        );
        let e = d.insert_report(more, NOW + PARAMS.period_secs).unwrap_err();
        assert!(
            matches!(e, ReportError::Forked { fork_epoch, .. } if fork_epoch == f.epoch),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Refused);
        views.push((forks, d.keys()));
    }
    assert_eq!(
        views[0], views[1],
        "whichever came first, nodes keep the same"
    );
    // When the period's reports leave the window, so does the proof.
    let mut d = dir.clone();
    d.insert_report(a.clone(), NOW + 2).unwrap();
    d.insert_report(b.clone(), NOW + 2).unwrap();
    let expires = d.measurements().unwrap().forks().next().unwrap().expires;
    d.expire(expires - 1);
    assert_eq!(d.measurements().unwrap().forks().count(), 1);
    d.expire(expires);
    assert_eq!(d.measurements().unwrap().forks().count(), 0);
    assert!(!d.holds(&a.digest) && !d.holds(&b.digest));
}

#[test]
fn a_report_that_covers_a_fork_does_not_hide_it() {
    let (dir, keys) = measured_network();
    let liar = id(&keys[1]);
    let base = || {
        vec![
            obs(id(&keys[0]), 500_000),
            obs(id(&keys[2]), 500_000),
            obs(id(&keys[3]), 500_000),
        ]
    };
    let with = |extra: &[u32]| {
        let mut v = base();
        v.extend(extra.iter().map(|&i| obs(id(&key(60 + i)), 1)));
        v
    };
    let x1 = report(&keys[1], NOW + 1, with(&[0]));
    let x2 = report(&keys[1], NOW + 2, with(&[1]));
    // A later report that extends both.
    let z = report(&keys[1], NOW + 3, with(&[0, 1, 2]));
    let mut a = dir.clone();
    a.insert_report(x1.clone(), NOW + 3).unwrap();
    assert_eq!(
        a.insert_report(x2.clone(), NOW + 3).unwrap(),
        ReportInserted::Forked
    );
    // A node that took the covering report first refuses the two as older
    // versions and finds nothing...
    let mut b = dir.clone();
    b.insert_report(z.clone(), NOW + 3).unwrap();
    for x in [&x1, &x2] {
        assert!(matches!(
            b.insert_report(x.clone(), NOW + 3),
            Err(ReportError::Superseded(_))
        ));
    }
    assert_eq!(b.weights().get(&liar), 500_000);
    // ...until the proof reaches it: one record it checks on its own.
    let proof = a
        .measurements()
        .unwrap()
        .forks()
        .next()
        .unwrap()
        .record
        .clone();
    let f = ReportFork::decode(&proof, &PARAMS, NOW + 3).unwrap();
    assert_eq!(
        b.insert_report_fork(f.clone(), NOW + 3).unwrap(),
        ReportInserted::Forked
    );
    assert_eq!(
        b.insert_report_fork(f, NOW + 3).unwrap(),
        ReportInserted::Unchanged
    );
    assert_eq!(b.weights().get(&liar), 0);
    assert_eq!(a.keys(), b.keys(), "both hold the same records");
    assert!(matches!(
        a.insert_report(z, NOW + 3),
        Err(ReportError::Forked { .. })
    ));
    // Of two proofs against one measurer, every node keeps the lower.
    let x3 = report(&keys[1], NOW + 4, with(&[3]));
    let mut c = dir.clone();
    c.insert_report(x1.clone(), NOW + 4).unwrap();
    c.insert_report(x3, NOW + 4).unwrap();
    let other = c.measurements().unwrap().forks().next().unwrap().clone();
    let ours = a.measurements().unwrap().forks().next().unwrap().clone();
    let (low, high) = if ours.digest < other.digest {
        (ours, other)
    } else {
        (other, ours)
    };
    for mut d in [a.clone(), c.clone()] {
        let _ = d.insert_report_fork(low.clone(), NOW + 4);
        assert!(matches!(
            d.insert_report_fork(high.clone(), NOW + 4),
            Err(ReportError::Superseded(_))
        ));
        assert_eq!(
            d.measurements().unwrap().forks().next().unwrap().digest,
            low.digest
        );
    }
}

#[test]
fn a_fork_proof_that_proves_nothing_is_refused() {
    let (_, keys) = measured_network();
    let t = |i: u32| obs(id(&key(60 + i)), 1);
    let encode = |a: &VerifiedReport, b: &VerifiedReport| {
        let mut out = vec![
            veilnet_dir::measure::FORK_TAG,
            veilnet_dir::measure::FORK_FORMAT,
        ];
        for r in [a, b] {
            out.extend_from_slice(&(r.record.len() as u16).to_be_bytes());
            out.extend_from_slice(&r.record);
        }
        out
    };
    let ordered = |a: VerifiedReport, b: VerifiedReport| {
        if a.digest < b.digest {
            (a, b)
        } else {
            (b, a)
        }
    };
    let (x, y) = ordered(
        report(&keys[1], NOW, vec![t(0)]),
        report(&keys[1], NOW + 1, vec![t(1)]),
    );
    let good = encode(&x, &y);
    assert!(ReportFork::decode(&good, &PARAMS, NOW).is_ok());
    let (c1, c2) = ordered(
        report(&keys[1], NOW, vec![t(0)]),
        report(&keys[1], NOW + 1, vec![t(0), t(1)]),
    );
    let (m1, m2) = ordered(
        report(&keys[1], NOW, vec![t(0)]),
        report(&keys[2], NOW + 1, vec![t(1)]),
    );
    let (p1, p2) = ordered(
        report(&keys[1], NOW, vec![t(0)]),
        report(&keys[1], NOW + 3 * PARAMS.period_secs, vec![t(1)]),
    );
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("out of order", encode(&y, &x)),
        ("one extends the other", encode(&c1, &c2)),
        ("two measurers", encode(&m1, &m2)),
        ("two periods", encode(&p1, &p2)),
        ("the same report twice", encode(&x, &x)),
        ("a byte after the end", trailing),
    ];
    for (what, bytes) in cases {
        assert!(
            ReportFork::decode(&bytes, &PARAMS, NOW).is_err(),
            "{what} accepted"
        );
    }
    for len in 0..good.len() {
        assert!(
            ReportFork::decode(&good[..len], &PARAMS, NOW).is_err(),
            "cut at {len}"
        );
    }
    // A changed byte breaks a signature or the framing.
    for at in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        assert!(
            ReportFork::decode(&bad, &PARAMS, NOW).is_err(),
            "byte {at} changed"
        );
    }
}

#[test]
fn only_reports_off_one_chain_are_a_fork() {
    let (dir, keys) = measured_network();
    let t = |i: u32| obs(id(&key(60 + i)), 1);
    let held = || {
        vec![
            obs(id(&keys[0]), 500_000),
            obs(id(&keys[2]), 500_000),
            obs(id(&keys[3]), 500_000),
        ]
    };
    let with = |extra: Vec<Observation>| {
        let mut v = held();
        v.extend(extra);
        v
    };
    let cases = [
        // A later report that extends the held one replaces it.
        (
            "extends",
            report(&keys[1], NOW + 5, with(vec![t(0)])),
            Ok(ReportInserted::Updated),
        ),
        // The held one again, or an earlier one of its chain: superseded.
        (
            "earlier of the chain",
            report(&keys[1], NOW - 5, vec![obs(id(&keys[0]), 500_000)]),
            Err(()),
        ),
        // The same relays with other figures: a fork.
        (
            "same relays, other figures",
            report(
                &keys[1],
                NOW + 5,
                vec![
                    obs(id(&keys[0]), 1),
                    obs(id(&keys[2]), 1),
                    obs(id(&keys[3]), 1),
                ],
            ),
            Ok(ReportInserted::Forked),
        ),
        // More relays, dated before the held one: a fork (nodes holding
        // either would refuse the other).
        (
            "extends, dated earlier",
            report(&keys[1], NOW - 5, with(vec![t(1)])),
            Ok(ReportInserted::Forked),
        ),
        // Drops one it observed: a fork.
        (
            "drops one",
            report(
                &keys[1],
                NOW + 5,
                vec![
                    obs(id(&keys[0]), 500_000),
                    obs(id(&keys[2]), 500_000),
                    t(2),
                    t(3),
                ],
            ),
            Ok(ReportInserted::Forked),
        ),
    ];
    for (what, r, expected) in cases {
        let mut d = dir.clone();
        let got = d.insert_report(r, NOW + 5);
        match expected {
            Ok(e) => assert_eq!(got.as_ref().ok(), Some(&e), "{what}: {got:?}"),
            Err(()) => assert!(
                matches!(got, Err(ReportError::Superseded(_))),
                "{what}: {got:?}"
            ),
        }
    }
}

#[test]
fn a_newcomer_ramps_up_from_the_floor() {
    let params = MeasureParams {
        ramp_secs: 1000,
        period_secs: 1000,
        ..PARAMS
    };
    let mut dir = Directory::new(id(&key(1000)));
    dir.use_measurements(Some(params));
    let keys: Vec<Keypair> = (0..3).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        let mut d = desc(k, &format!("198.51.{i}.1:9001"));
        d.bandwidth = 10_000_000;
        dir.insert(&sign(&d, k), NOW).unwrap();
    }
    let target = id(&keys[0]);
    for m in [1, 2] {
        let o = Observation {
            since: NOW,
            ..obs(target, 1_000_000)
        };
        dir.insert_report(report(&keys[m], NOW, vec![o]), NOW)
            .unwrap();
    }
    assert_eq!(
        dir.weights().get(&target),
        1_000_000 * RAMP_FLOOR_PERCENT / 100
    );
    dir.expire(NOW + 500);
    assert_eq!(dir.weights().get(&target), 500_000);
    dir.expire(NOW + 2000);
    assert_eq!(dir.weights().get(&target), 1_000_000);
}

#[test]
fn a_full_directory_makes_room_by_dropping_weightless_relays_first() {
    let (mut dir, keys) = network(5, 1_000_000);
    dir.set_max_nodes(5);
    let id_of = |i: usize| id(&keys[i]);
    // 0 and 1 measured and reachable; 2 measured unreachable; 3 and 4
    // never measured (4 published later than 3).
    for m in [2, 3] {
        let r = report(
            &keys[m],
            NOW,
            vec![obs(id_of(0), 1_000_000), obs(id_of(1), 1_000_000)],
        );
        dir.insert_report(r, NOW).unwrap();
    }
    for m in [0, 1] {
        let r = report(
            &keys[m],
            NOW,
            vec![
                obs(id_of(2), 0),
                obs(id_of(if m == 0 { 1 } else { 0 }), 1_000_000),
            ],
        );
        dir.insert_report(r, NOW).unwrap();
    }
    let w = dir.weights();
    assert!(w.get(&id_of(0)) > 0 && w.get(&id_of(1)) > 0);
    assert!(!w.measured(&id_of(2)).unwrap().reachable);
    let newcomer = |n: u32, published: u64| {
        let k = key(100 + n);
        let mut d = desc(&k, &format!("203.0.{n}.1:9001"));
        d.published = published;
        (id(&k), sign(&d, &k))
    };
    // The unreachable relay goes first, then an unmeasured one published
    // before the newcomers (3 or 4: the lower peer id of the two).
    let (a, sa) = newcomer(1, NOW + 1);
    dir.insert(&sa, NOW + 1).unwrap();
    assert!(dir.get(&id_of(2)).is_none() && dir.get(&a).is_some());
    let (b, sb) = newcomer(2, NOW + 2);
    dir.insert(&sb, NOW + 2).unwrap();
    let gone = if id_of(3) < id_of(4) { 3 } else { 4 };
    assert!(dir.get(&id_of(gone)).is_none(), "relay {gone} dropped");
    assert!(dir.get(&id_of(7 - gone)).is_some() && dir.get(&a).is_some() && dir.get(&b).is_some());
    assert_eq!(dir.len(), 5);
    // What was dropped is not fetched straight back.
    let mut dropped = desc(&keys[gone], &format!("198.51.{gone}.1:9001"));
    dropped.bandwidth = 1_000_000;
    assert!(dir.knows(&sign(&dropped, &keys[gone]).digest()));

    // With every listed relay weighted, the newcomer is the one refused.
    let (mut full, keys) = network(3, 1_000_000);
    for m in 0..3 {
        let others = (0..3)
            .filter(|&t| t != m)
            .map(|t| obs(id(&keys[t]), 1_000_000));
        full.insert_report(report(&keys[m], NOW, others.collect()), NOW)
            .unwrap();
    }
    assert!((0..3).all(|i| full.weights().get(&id(&keys[i])) > 0));
    full.set_max_nodes(3);
    let (_, sc) = newcomer(3, NOW + 3);
    assert!(matches!(
        full.insert(&sc, NOW + 3),
        Err(veilnet_dir::DescriptorError::DirectoryFull { .. })
    ));
}

/// Keys with descriptors at addresses they do not hold (never reached
/// there) vouch for each other and slander the honest relays: as long as
/// they are fewer than the honest measurers they do not become measurers,
/// so they neither give themselves weight nor move an honest relay's.
#[test]
fn descriptors_nobody_reached_do_not_measure() {
    const HONEST: u32 = 24;
    const FAKE: u32 = 16;
    const HONEST_RATE: u64 = 5_000_000;
    let mut dir = Directory::new(key(1000).public().to_peer_id());
    dir.use_measurements(Some(PARAMS));
    let keys: Vec<Keypair> = (0..HONEST + FAKE).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        let mut d = desc(k, &format!("198.51.{}.1:9001", i));
        d.bandwidth = 1_000_000_000;
        dir.insert(&sign(&d, k), NOW).unwrap();
    }
    let fake = |i: usize| i >= HONEST as usize;
    let n = keys.len();
    let epoch = PARAMS.epoch(NOW);
    let now = (epoch + 2) * PARAMS.period_secs + 1;
    // Two periods of reports, each measurer's assigned targets as the
    // measurers see them at first (every relay counted).
    for e in [epoch, epoch + 1] {
        let published = e * PARAMS.period_secs + 1;
        for (m, mk) in keys.iter().enumerate() {
            let observations: Vec<Observation> = keys
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    // The fakes report all the verifiers' slack lets them.
                    let slack = if fake(m) {
                        ASSIGNMENT_SLACK_PERCENT
                    } else {
                        100
                    };
                    assigned(e, &id(mk), &id(t), n, PARAMS.measurers_per_target, slack)
                })
                .map(|(t, tk)| {
                    let bandwidth = match (fake(m), fake(t)) {
                        (false, false) => HONEST_RATE,
                        (false, true) => 0,
                        // Fakes say they reached each other at full speed
                        // and the honest relays at a crawl.
                        (true, true) => 1_000_000_000,
                        (true, false) => 10_000,
                    };
                    obs(id(tk), bandwidth)
                })
                .take(MAX_OBSERVATIONS)
                .collect();
            dir.insert_report(report(mk, published, observations), now)
                .unwrap();
        }
    }
    dir.expire(now);
    let w = dir.weights();
    let measurers = w.measurers();
    assert!(
        keys.iter()
            .enumerate()
            .all(|(i, k)| !fake(i) || !measurers.contains(&id(k))),
        "a fake key measures"
    );
    assert!(
        measurers.len() > HONEST as usize / 2,
        "{} measurers",
        measurers.len()
    );
    let mut weighted = 0;
    for (i, k) in keys.iter().enumerate() {
        let got = w.get(&id(k));
        if fake(i) {
            assert_eq!(got, 0, "fake {i} carries weight");
        } else if got > 0 {
            assert_eq!(got, HONEST_RATE, "honest relay {i} moved by the fakes");
            weighted += 1;
        }
    }
    assert!(weighted >= HONEST / 2, "{weighted} honest relays weighted");
}

/// With a reweigh interval, a burst of reports costs one recomputation:
/// the weights follow at the next report after the interval, or at the
/// next expiry, and every report is held (and offered) at once.
#[test]
fn reports_weigh_in_at_most_once_per_reweigh_interval() {
    let (mut dir, keys) = network(6, 1_000_000_000);
    dir.set_reweigh_secs(10);
    let target = id(&keys[0]);
    // Recomputed now (the interval counts from the last recomputation).
    dir.expire(NOW);
    assert_eq!(dir.weights().get(&target), 0);
    let first = report(&keys[1], NOW, vec![obs(target, 2_000_000)]);
    let second = report(&keys[2], NOW, vec![obs(target, 2_000_000)]);
    let d2 = second.digest;
    dir.insert_report(first, NOW).unwrap();
    dir.insert_report(second, NOW + 1).unwrap();
    assert!(dir.holds(&d2) && dir.keys().iter().any(|k| k.1 == d2));
    assert_eq!(dir.weights().get(&target), 0, "not yet recomputed");
    dir.insert_report(
        report(&keys[3], NOW + 10, vec![obs(target, 2_000_000)]),
        NOW + 10,
    )
    .unwrap();
    assert_eq!(dir.weights().get(&target), 2_000_000);
    // A later burst waits for the expiry.
    let other = id(&keys[1]);
    for m in [4, 5] {
        dir.insert_report(
            report(&keys[m], NOW + 11, vec![obs(other, 3_000_000)]),
            NOW + 11,
        )
        .unwrap();
    }
    assert_eq!(dir.weights().get(&other), 0, "not yet recomputed");
    dir.expire(NOW + 12);
    assert_eq!(dir.weights().get(&other), 3_000_000);
}

/// A directory that holds reports of fewer than half its relays is not
/// settled: too little is known to choose long-lived guards by it.
#[test]
fn weights_settle_once_most_relays_have_reported() {
    let (mut dir, keys) = network(4, 1_000_000);
    assert!(!dir.weights().settled(), "no reports");
    dir.insert_report(report(&keys[1], NOW, vec![obs(id(&keys[0]), 1_000)]), NOW)
        .unwrap();
    assert!(!dir.weights().settled(), "one of four");
    dir.insert_report(report(&keys[2], NOW, vec![obs(id(&keys[0]), 1_000)]), NOW)
        .unwrap();
    assert!(dir.weights().settled(), "two of four");
    let mut off = Directory::new(id(&key(1000)));
    off.insert(&sign(&desc(&keys[0], "198.51.0.1:9001"), &keys[0]), NOW)
        .unwrap();
    assert!(off.weights().settled(), "without measurements");
}

/// A relay over its /24's cap is no candidate measurer, yet it is listed,
/// may report, and may be another report's target: its report is held and
/// does not count, and weighing does not trip over it.
#[test]
fn a_report_by_a_relay_over_its_address_cap_is_held_and_does_not_count() {
    let (mut dir, keys) = network(4, 1_000_000);
    // Three more relays in one /24: one of them is over the cap.
    let crowd: Vec<Keypair> = (50..53).map(key).collect();
    for (i, k) in crowd.iter().enumerate() {
        let d = desc(k, &format!("203.0.113.{}:9001", i + 1));
        dir.insert(&sign(&d, k), NOW).unwrap();
    }
    // Equal weights: the cap keeps the lowest peer ids.
    let capped = crowd.iter().max_by_key(|k| id(k)).unwrap();
    // It is observed by the candidates, and reports on relay 0 itself.
    for m in &keys[1..] {
        dir.insert_report(report(m, NOW, vec![obs(id(capped), 5_000)]), NOW)
            .unwrap();
    }
    dir.insert_report(report(capped, NOW, vec![obs(id(&keys[0]), 9_000_000)]), NOW)
        .unwrap();
    let w = dir.weights();
    assert!(!w.measurers().contains(&id(capped)));
    assert!(
        w.measured(&id(&keys[0])).is_none(),
        "its word does not count"
    );
}

/// A peer id that ends in the same 8 bytes as `p`'s (a SHA-256 multihash
/// of chosen bytes: a report may name any peer id).
fn lookalike(p: &PeerId, salt: u8) -> PeerId {
    // An ed25519 key (a valid point, whose secret nobody knows) that ends
    // in the same 8 bytes as `p`'s, as its peer id does.
    let own = p.to_bytes();
    for i in 0..=u8::MAX {
        let mut raw = [0u8; 32];
        raw[0] = salt;
        raw[1] = i;
        raw[24..].copy_from_slice(&own[own.len() - 8..]);
        if let Ok(key) = libp2p::identity::ed25519::PublicKey::try_from_bytes(&raw) {
            let id = libp2p::identity::PublicKey::from(key).to_peer_id();
            assert_eq!(
                id.to_bytes()[id.to_bytes().len() - 8..],
                own[own.len() - 8..]
            );
            return id;
        }
    }
    panic!("no point found")
}

/// Found by the `measure_assess` fuzz target: the assessment numbered
/// peers by the last 8 bytes of their ids, so an observation of an id made
/// to share them with a relay counted for that relay. Measurers could
/// vouch for relays they were not assigned (the assignment was drawn for
/// the lookalike, which can be ground) and for themselves.
#[test]
fn an_observation_of_a_lookalike_peer_id_does_not_count_for_the_relay() {
    let (mut dir, keys) = network(4, 1_000_000);
    let relay = id(&keys[0]);
    let fake = lookalike(&relay, 1);
    assert_ne!(fake, relay);
    for m in &keys[1..=2] {
        dir.insert_report(report(m, NOW, vec![obs(fake, 5_000_000)]), NOW)
            .unwrap();
    }
    // Relay 3 vouches for itself under a lookalike.
    let me = id(&keys[3]);
    dir.insert_report(
        report(&keys[3], NOW, vec![obs(lookalike(&me, 2), 5_000_000)]),
        NOW,
    )
    .unwrap();
    let w = dir.weights();
    assert!(w.measured(&relay).is_none(), "nobody observed relay 0");
    assert_eq!(w.get(&relay), 0);
    assert!(w.measured(&me).is_none(), "nor relay 3");
    // The lookalike is measured as what it is: a peer nobody lists.
    assert_eq!(w.measured(&fake).map(|m| m.reached_by), Some(2));
    assert_eq!(w.get(&fake), 0);
    // A genuine observation next to them still counts.
    dir.insert_report(
        report(
            &keys[3],
            NOW,
            vec![obs(lookalike(&me, 2), 5_000_000), obs(relay, 1_000)],
        ),
        NOW,
    )
    .unwrap();
    let m = *dir.weights().measured(&relay).unwrap();
    assert_eq!((m.reached_by, m.observed_by), (1, 1));
}
