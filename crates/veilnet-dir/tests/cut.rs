//! The cut: relays and weights are taken from the records published
//! before it, so that directories that hold the same records by then agree
//! whatever came after.
#![allow(clippy::unwrap_used)]

mod common;

use common::{desc, key, sign, NOW};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use veilnet_dir::{Cut, Directory, MeasureParams, Observation, Report, VerifiedReport};

/// Hourly slots, a 5-minute margin.
const CUT: Cut = Cut::PUBLIC;

fn id(k: &Keypair) -> PeerId {
    k.public().to_peer_id()
}

fn slot_start() -> u64 {
    NOW - NOW % CUT.every_secs
}

fn relay(n: u32, published: u64) -> veilnet_dir::SignedDescriptor {
    let k = key(n);
    let mut d = desc(&k, &format!("198.51.{n}.1:9001"));
    d.published = published;
    sign(&d, &k)
}

fn directory() -> Directory {
    let mut dir = Directory::new(id(&key(1000)));
    dir.set_cut(CUT);
    dir
}

#[test]
fn a_relay_published_after_the_cut_is_held_and_weighs_from_the_next_slot() {
    let mut dir = directory();
    let cut = slot_start() - CUT.margin_secs;
    let early = relay(1, cut);
    let late = relay(2, cut + 1);
    dir.insert(&early, NOW).unwrap();
    dir.insert(&late, NOW).unwrap();
    assert_eq!(dir.cut(), cut);
    assert!(dir.weights().get(&id(&key(1))) > 0, "published by the cut");
    assert!(dir.holds(&late.digest()) && dir.keys().iter().any(|k| k.1 == late.digest()));
    assert_eq!(dir.weights().get(&id(&key(2))), 0, "after the cut");
    // Still the same slot: still out.
    dir.tick(slot_start() + CUT.every_secs - 1);
    assert_eq!(dir.weights().get(&id(&key(2))), 0);
    // The next slot's cut passes it.
    dir.tick(slot_start() + CUT.every_secs);
    assert!(dir.weights().get(&id(&key(2))) > 0, "in the next slot");
}

/// Two directories that hold the same records published by the cut agree
/// on every weight, whatever else each holds and whenever it came.
#[test]
fn directories_with_the_same_records_by_the_cut_agree_whatever_came_after() {
    let cut = slot_start() - CUT.margin_secs;
    let mut a = directory();
    let mut b = directory();
    for n in 0..5 {
        a.insert(&relay(n, cut - 100 * u64::from(n)), NOW - 600)
            .unwrap();
    }
    // The other got them later, in the other order, and more besides.
    for n in (0..5).rev() {
        b.insert(&relay(n, cut - 100 * u64::from(n)), NOW).unwrap();
    }
    for n in 5..8 {
        b.insert(&relay(n, cut + 60 * u64::from(n)), NOW).unwrap();
    }
    a.tick(NOW);
    assert_eq!(*a.weights(), *b.weights());
    assert_ne!(a.len(), b.len());
    // Without the cut, what came after shows.
    a.set_cut(Cut::IMMEDIATE);
    b.set_cut(Cut::IMMEDIATE);
    assert_ne!(*a.weights(), *b.weights());
}

/// A republication dated at the cut keeps the relay in the view, for a
/// directory that held its earlier descriptor and for one that did not;
/// one dated later keeps it in the view of a directory that held the
/// earlier one (it was in the view, and an update does not take it out
/// mid-slot).
#[test]
fn a_republication_dated_at_the_cut_stays_in_the_view() {
    let cut = slot_start() - CUT.margin_secs;
    let k = key(1);
    let mut dir = directory();
    dir.insert(&relay(1, cut - 7200), NOW).unwrap();
    let mut d = desc(&k, "198.51.1.1:9001");
    d.seq = 2;
    d.published = cut;
    dir.insert(&sign(&d, &k), NOW).unwrap();
    assert!(dir.weights().get(&id(&k)) > 0);
    let mut fresh = directory();
    fresh.insert(&sign(&d, &k), NOW).unwrap();
    assert!(fresh.weights().get(&id(&k)) > 0, "dated at the cut");
    d.seq = 3;
    d.published = NOW;
    d.bandwidth = 2_000_000;
    dir.insert(&sign(&d, &k), NOW).unwrap();
    assert_eq!(dir.weights().get(&id(&k)), 2_000_000, "in, as updated");
    // A relay new since the cut stays out through its updates.
    let n = key(2);
    let mut e = desc(&n, "198.51.2.1:9001");
    e.published = cut + 1;
    dir.insert(&sign(&e, &n), NOW).unwrap();
    e.seq = 2;
    e.published = cut + 2;
    dir.insert(&sign(&e, &n), NOW).unwrap();
    assert_eq!(dir.weights().get(&id(&n)), 0);
    dir.tick(slot_start() + CUT.every_secs);
    assert!(dir.weights().get(&id(&n)) > 0, "the next slot");
}

/// A full directory makes room by what every record says, not by the cut:
/// a measured relay held back for the next slot is not the one evicted.
#[test]
fn a_relay_held_back_for_the_next_slot_is_not_evicted_for_it() {
    let cut = slot_start() - CUT.margin_secs;
    let mut dir = directory();
    dir.set_max_nodes(3);
    // Two in the view, one after the cut; all weigh by what they advertise.
    dir.insert(&relay(1, cut - 10), NOW).unwrap();
    dir.insert(&relay(2, cut + 10), NOW).unwrap();
    // A client's descriptor (not a relay) is the one to go.
    let c = key(3);
    let mut d = desc(&c, "198.51.3.1:9001");
    d.roles.relay = false;
    d.roles.exit = false;
    d.published = cut - 10;
    dir.insert(&sign(&d, &c), NOW).unwrap();
    dir.insert(&relay(4, cut - 5), NOW).unwrap();
    assert!(dir.get(&id(&key(2))).is_some(), "held back, kept");
    assert!(dir.get(&id(&c)).is_none(), "the weightless one went");
}

const PARAMS: MeasureParams = MeasureParams {
    period_secs: 3600,
    measurers_per_target: 3,
    window_epochs: 4,
    min_measurers: 2,
    ramp_secs: 0,
    required: true,
    max_rate: 20_000_000,
};

fn report(measurer: &Keypair, published: u64, target: PeerId) -> VerifiedReport {
    let r = Report {
        measurer: id(measurer),
        published,
        observations: vec![Observation {
            target,
            bandwidth: 2_000_000,
            reached: true,
            since: NOW - 100_000,
        }],
    };
    VerifiedReport::decode(&r.sign(measurer).unwrap()).unwrap()
}

/// A directory at the cut with measurements on, listing relays `key(0..4)`
/// published well before it; and the cut.
fn measured() -> (Directory, u64) {
    let cut = slot_start() - CUT.margin_secs;
    let mut dir = directory();
    dir.use_measurements(Some(PARAMS));
    for n in 0..4 {
        dir.insert(&relay(n, cut - 7200), NOW).unwrap();
    }
    (dir, cut)
}

/// Reports count from the cut that passes them, in path weights; what a
/// measurer schedules by ([`Directory::latest_weights`]) has them at once.
#[test]
fn reports_published_after_the_cut_weigh_from_the_next_slot() {
    let (mut dir, cut) = measured();
    let target = id(&key(0));
    dir.insert_report(report(&key(1), cut - 10, target), NOW)
        .unwrap();
    dir.insert_report(report(&key(2), cut + 10, target), NOW)
        .unwrap();
    assert_eq!(dir.weights().get(&target), 0, "one report by the cut");
    assert_eq!(dir.latest_weights().get(&target), 1_000_000, "both held");
    dir.tick(slot_start() + CUT.every_secs);
    assert_eq!(dir.weights().get(&target), 1_000_000, "next slot");
}

/// A report that replaces one in the view changes the weights at once,
/// whatever its date: the weights are those of the reports held.
#[test]
fn a_report_replacing_one_in_the_view_is_weighed_at_once() {
    let (mut dir, cut) = measured();
    let target = id(&key(0));
    dir.insert_report(report(&key(1), cut - 20, target), NOW)
        .unwrap();
    dir.insert_report(report(&key(2), cut - 10, target), NOW)
        .unwrap();
    assert_eq!(dir.weights().get(&target), 1_000_000);
    // Measurer 2's later report for the same period (it measured one more
    // relay), dated after the cut: it replaces the one that counted, and
    // does not count itself yet.
    let mut later = report(&key(2), cut + 10, target).report;
    let mut more = later.observations[0];
    more.target = id(&key(3));
    later.observations.push(more);
    let later = VerifiedReport::decode(&later.sign(&key(2)).unwrap()).unwrap();
    dir.insert_report(later, NOW).unwrap();
    assert_eq!(dir.weights().get(&target), 0);
}
