//! Path selection.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};

use common::{desc, key, sign, NOW};
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use veilnet_cell::TargetAddr;
use veilnet_dir::path::{share_subnet, weight, MAX_WEIGHT, MIN_WEIGHT};
use veilnet_dir::{select_path, Descriptor, Directory, PathError, PathRequest, Roles};
use veilnet_policy::ExitPolicy;

fn own() -> PeerId {
    key(9999).public().to_peer_id()
}

/// Build a directory from (key number, link addr, tweak) triples.
type Tweak<'a> = &'a dyn Fn(&mut Descriptor);

fn dir_of(nodes: Vec<(u32, &str, Tweak)>) -> (Directory, Vec<PeerId>) {
    let mut dir = Directory::new(own());
    let mut ids = Vec::new();
    for (n, link, tweak) in nodes {
        let k = key(n);
        let mut d = desc(&k, link);
        tweak(&mut d);
        dir.insert(&sign(&d, &k), NOW).unwrap();
        ids.push(d.peer_id);
    }
    (dir, ids)
}

fn nothing(_: &mut Descriptor) {}

/// `n` plain relay+exit nodes, each in its own /16.
fn spread(n: u32) -> (Directory, Vec<PeerId>) {
    let links: Vec<String> = (0..n)
        .map(|i| format!("{}.{}.0.1:9001", 20 + i / 200, i % 200))
        .collect();
    let nodes = (0..n)
        .map(|i| {
            (
                i,
                links[i as usize].as_str(),
                &nothing as &dyn Fn(&mut Descriptor),
            )
        })
        .collect();
    dir_of(nodes)
}

/// A path for `hops` and `target` with every relay of `dir` offered as a
/// guard, in a random order: the first hop is always the first usable guard
/// offered, so this makes it a uniformly random relay, and the tests below
/// check the rules for the other hops and for the whole path.
fn any_guard(
    dir: &Directory,
    hops: usize,
    target: Option<&TargetAddr>,
    rng: &mut StdRng,
) -> Result<Vec<Descriptor>, PathError> {
    let mut guards: Vec<PeerId> = dir.iter().map(|d| d.peer_id).collect();
    guards.shuffle(rng);
    let req = PathRequest {
        hops,
        exit_target: target,
        exclude: &[],
        guards: &guards,
    };
    select_path(dir, &req, rng)
}

fn ids(path: &[Descriptor]) -> Vec<PeerId> {
    path.iter().map(|d| d.peer_id).collect()
}

fn assert_valid(path: &[Descriptor], hops: usize) {
    assert_eq!(path.len(), hops);
    let set: HashSet<_> = ids(path).into_iter().collect();
    assert_eq!(set.len(), hops, "duplicate hop");
    for (i, a) in path.iter().enumerate() {
        for b in &path[i + 1..] {
            assert!(!share_subnet(a, b), "hops share a subnet");
        }
    }
}

#[test]
fn three_distinct_hops() {
    let (dir, _) = spread(10);
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let path = any_guard(&dir, 3, None, &mut rng).unwrap();
        assert_valid(&path, 3);
    }
    for hops in 1..=5 {
        let path = any_guard(&dir, hops, None, &mut rng).unwrap();
        assert_valid(&path, hops);
    }
}

#[test]
fn bad_hop_counts() {
    let (dir, _) = spread(10);
    let mut rng = StdRng::seed_from_u64(1);
    for hops in [0, 6, 100] {
        assert_eq!(
            any_guard(&dir, hops, None, &mut rng),
            Err(PathError::BadHopCount { hops })
        );
    }
}

#[test]
fn exit_policy_respected() {
    let no80 = |d: &mut Descriptor| {
        d.exit_policy = ExitPolicy::parse_rules(&["reject *:80", "accept *:*"]).unwrap()
    };
    let only80 = |d: &mut Descriptor| {
        d.exit_policy = ExitPolicy::parse_rules(&["accept *:80", "reject *:*"]).unwrap()
    };
    let non_exit = |d: &mut Descriptor| {
        d.roles.exit = false;
        d.exit_policy = ExitPolicy::default_exit(); // the role decides, not only the policy
    };
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &no80),
        (2, "2.2.0.1:1", &no80),
        (3, "3.3.0.1:1", &only80),
        (4, "4.4.0.1:1", &non_exit),
        (5, "5.5.0.1:1", &non_exit),
        (6, "6.6.0.1:1", &no80),
    ]);
    let mut rng = StdRng::seed_from_u64(2);
    let target80 = TargetAddr::Ip("93.184.216.34:80".parse().unwrap());
    let domain = |port| TargetAddr::Domain("example.com".into(), port);
    for _ in 0..300 {
        let path = any_guard(&dir, 3, Some(&target80), &mut rng).unwrap();
        assert_valid(&path, 3);
        assert_eq!(path[2].peer_id, ids_[2], "only node 3 exits to :80");
        let path = any_guard(&dir, 3, Some(&domain(80)), &mut rng).unwrap();
        assert_eq!(path[2].peer_id, ids_[2]);
        let path = any_guard(&dir, 3, Some(&domain(443)), &mut rng).unwrap();
        assert!([ids_[0], ids_[1], ids_[5]].contains(&path[2].peer_id));
    }
    // no exit for this target: only nodes that reject port 80
    let (dir, _) = dir_of(vec![
        (1, "1.1.0.1:1", &no80),
        (2, "2.2.0.1:1", &no80),
        (4, "4.4.0.1:1", &non_exit),
        (6, "6.6.0.1:1", &no80),
    ]);
    for target in [target80.clone(), domain(80)] {
        assert_eq!(
            any_guard(&dir, 3, Some(&target), &mut rng),
            Err(PathError::NoExitForTarget)
        );
    }
    assert!(any_guard(&dir, 3, Some(&domain(81)), &mut rng).is_ok());
    // ... and the error message does not leak the target
    assert!(!PathError::NoExitForTarget.to_string().contains("10.0.0.1"));
}

#[test]
fn one_hop_is_the_exit() {
    let non_exit = |d: &mut Descriptor| d.roles.exit = false;
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &nothing),
        (2, "2.2.0.1:1", &non_exit),
        (3, "3.3.0.1:1", &non_exit),
    ]);
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..50 {
        let path = any_guard(&dir, 1, None, &mut rng).unwrap();
        assert_eq!(ids(&path), vec![ids_[0]]);
    }
}

#[test]
fn subnet_diversity() {
    // 9 nodes in only three /16s: a 3-hop path must take one from each.
    let addrs = [
        "31.1.0.1:1",
        "31.1.5.1:1",
        "31.1.200.9:1",
        "31.2.0.1:1",
        "31.2.3.4:1",
        "31.2.99.1:1",
        "[2001:db8:1::1]:1",
        "[2001:db8:ffff::1]:1",
        "[2001:db8::2]:1",
    ];
    let nodes = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u32, *a, &nothing as &dyn Fn(&mut Descriptor)))
        .collect();
    let (dir, _) = dir_of(nodes);
    let mut rng = StdRng::seed_from_u64(4);
    for _ in 0..300 {
        let path = any_guard(&dir, 3, None, &mut rng).unwrap();
        assert_valid(&path, 3);
        let groups: HashSet<String> = path
            .iter()
            .map(|d| match d.link_addrs[0].ip() {
                std::net::IpAddr::V4(v4) => format!("{:?}", &v4.octets()[..2]),
                std::net::IpAddr::V6(_) => "2001:db8::/32".to_string(),
            })
            .collect();
        assert_eq!(groups.len(), 3, "one hop per subnet");
    }
    // four hops cannot be built from three subnets
    assert_eq!(
        any_guard(&dir, 4, None, &mut rng),
        Err(PathError::NotEnoughRelays { needed: 4, have: 9 })
    );
}

#[test]
fn subnet_rule_counts_the_dialled_address_and_sees_through_mapped_ones() {
    // Relay 1 lists a second address in 7.7/16: a claim nobody dials or
    // verifies, so it does not keep relay 1 off paths with relay 2.
    let second = |d: &mut Descriptor| d.link_addrs.push("7.7.1.1:1".parse().unwrap());
    let mapped = |d: &mut Descriptor| d.link_addrs = vec!["[::ffff:7.7.9.9]:1".parse().unwrap()];
    let (dir, ids) = dir_of(vec![
        (1, "1.1.0.1:1", &second),
        (2, "7.7.0.1:1", &nothing),
        (3, "3.3.0.1:1", &mapped),
    ]);
    let [one, two, three] = [0, 1, 2].map(|i| dir.get(&ids[i]).unwrap());
    assert!(!share_subnet(one, two), "only the dialled address counts");
    assert!(!share_subnet(one, three));
    assert!(
        share_subnet(two, three),
        "a v4-mapped address is its IPv4 address"
    );
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..50 {
        let path = any_guard(&dir, 2, None, &mut rng).unwrap();
        let ids: HashSet<_> = path.iter().map(|d| d.peer_id).collect();
        assert!(
            !(ids.contains(&two.peer_id) && ids.contains(&three.peer_id)),
            "2 and 3 share 7.7/16"
        );
    }
}

#[test]
fn loopback_exempt_from_subnet_rule() {
    let (dir, _) = dir_of(vec![
        (1, "127.0.0.1:9001", &nothing),
        (2, "127.0.0.1:9002", &nothing),
        (3, "127.0.0.1:9003", &nothing),
        (4, "[::1]:9004", &nothing),
        (5, "[::1]:9005", &nothing),
    ]);
    // Loopback relays carry weight only where private relays are allowed
    // (test networks).
    let mut dir = dir;
    dir.allow_private_relays(true);
    let mut rng = StdRng::seed_from_u64(6);
    for _ in 0..50 {
        let path = any_guard(&dir, 5, None, &mut rng).unwrap();
        assert_valid(&path, 5);
    }
}

#[test]
fn family_rule_needs_mutual_declaration() {
    let p = |n: u32| key(n).public().to_peer_id();
    let fam12 = move |d: &mut Descriptor| {
        let me = d.peer_id;
        d.family = [p(1), p(2)].into_iter().filter(|x| *x != me).collect();
    };
    let claims3 = move |d: &mut Descriptor| d.family = vec![p(3)];
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &fam12),
        (2, "2.2.0.1:1", &fam12),
        (3, "3.3.0.1:1", &nothing), // does not list 4 back
        (4, "4.4.0.1:1", &claims3),
    ]);
    let mut rng = StdRng::seed_from_u64(7);
    let mut saw_3_and_4 = false;
    for _ in 0..500 {
        let path = any_guard(&dir, 3, None, &mut rng).unwrap();
        let set: HashSet<PeerId> = ids(&path).into_iter().collect();
        assert!(
            !(set.contains(&ids_[0]) && set.contains(&ids_[1])),
            "1 and 2 are one family"
        );
        saw_3_and_4 |= set.contains(&ids_[2]) && set.contains(&ids_[3]);
    }
    assert!(saw_3_and_4, "one-sided family claims do not count");
    // with a 4-hop path, 1 and 2 can never both fit
    assert!(matches!(
        any_guard(&dir, 4, None, &mut rng),
        Err(PathError::NotEnoughRelays { .. })
    ));
}

#[test]
fn first_hop_is_the_first_usable_guard_and_never_another_relay() {
    let (dir, all) = spread(20);
    let mut rng = StdRng::seed_from_u64(8);
    fn r<'a>(guards: &'a [PeerId], exclude: &'a [PeerId]) -> PathRequest<'a> {
        PathRequest {
            hops: 3,
            exit_target: None,
            exclude,
            guards,
        }
    }
    // the guards in order: always the first one that works
    let guards = [all[3], all[7]];
    for _ in 0..300 {
        let path = select_path(&dir, &r(&guards, &[]), &mut rng).unwrap();
        assert_valid(&path, 3);
        assert_eq!(path[0].peer_id, all[3]);
    }
    // a guard missing from the directory is skipped, not replaced by any relay
    let gone = key(5000).public().to_peer_id();
    for _ in 0..100 {
        let path = select_path(&dir, &r(&[gone, all[7]], &[]), &mut rng).unwrap();
        assert_eq!(path[0].peer_id, all[7]);
    }
    // an excluded guard is not used
    for _ in 0..100 {
        let path = select_path(&dir, &r(&guards, &[all[3]]), &mut rng).unwrap();
        assert_eq!(path[0].peer_id, all[7]);
    }
    // no usable guard: an error, never a non-guard first hop
    for (offered, exclude) in [(&[gone][..], &[][..]), (&[], &[]), (&guards, &guards)] {
        let err = select_path(&dir, &r(offered, exclude), &mut rng).unwrap_err();
        assert_eq!(
            err,
            PathError::NoUsableGuard {
                offered: offered.len()
            }
        );
        assert!(err.to_string().contains("guard"), "{err}");
    }
}

#[test]
fn a_guard_that_cannot_start_a_path_gives_way_to_the_next_guard() {
    let only80 = |d: &mut Descriptor| {
        d.exit_policy = ExitPolicy::parse_rules(&["accept *:80", "reject *:*"]).unwrap()
    };
    let no80 = |d: &mut Descriptor| {
        d.exit_policy = ExitPolicy::parse_rules(&["reject *:80", "accept *:*"]).unwrap()
    };
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &only80),
        (2, "2.2.0.1:1", &no80),
        (3, "3.3.0.1:1", &no80),
        (4, "4.4.0.1:1", &no80),
    ]);
    let target80 = TargetAddr::Ip("93.184.216.34:80".parse().unwrap());
    let mut rng = StdRng::seed_from_u64(16);
    // node 1 is the only exit to :80, so it cannot also be the guard
    let guards = [ids_[0], ids_[1]];
    for _ in 0..100 {
        let r = PathRequest {
            hops: 3,
            exit_target: Some(&target80),
            exclude: &[],
            guards: &guards,
        };
        let path = select_path(&dir, &r, &mut rng).unwrap();
        assert_eq!(path[0].peer_id, ids_[1]);
        assert_eq!(path[2].peer_id, ids_[0]);
    }
    // with one hop, the hop is a guard that is also a suitable exit
    let r = PathRequest {
        hops: 1,
        exit_target: Some(&target80),
        exclude: &[],
        guards: &[ids_[1], ids_[0]],
    };
    assert_eq!(ids(&select_path(&dir, &r, &mut rng).unwrap()), [ids_[0]]);
    let r = PathRequest {
        guards: &[ids_[1], ids_[2]],
        ..r
    };
    assert!(matches!(
        select_path(&dir, &r, &mut rng),
        Err(PathError::NotEnoughRelays { .. })
    ));
}

/// Property: over many random directories (roles, shared subnets, families,
/// unusable nodes) and random guard lists (some not in the directory), the
/// first hop of every path is an offered guard, and when no offered guard is
/// usable the answer is `NoUsableGuard`, never a path.
#[test]
fn no_random_directory_gives_a_non_guard_first_hop() {
    let mut rng = StdRng::seed_from_u64(17);
    let mut paths = 0;
    let mut refused = 0;
    for round in 0..400u32 {
        let n = rng.gen_range(3..14u32);
        let mut dir = Directory::new(own());
        let mut peers = Vec::new();
        for i in 0..n {
            let k = key(round * 100 + i);
            // few /16s, so the subnet rule bites
            let mut d = desc(&k, &format!("30.{}.0.{}:1", rng.gen_range(0..5), i + 1));
            d.roles.exit = rng.gen_bool(0.5);
            d.roles.relay = rng.gen_bool(0.9);
            if rng.gen_bool(0.1) {
                d.link_addrs.clear();
            }
            d.bandwidth = rng.gen_range(0..5_000_000);
            dir.insert(&sign(&d, &k), NOW).unwrap();
            peers.push(d.peer_id);
        }
        let mut guards: Vec<PeerId> = peers
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.3))
            .collect();
        if rng.gen_bool(0.3) {
            guards.push(key(round * 100 + 99).public().to_peer_id());
        }
        guards.shuffle(&mut rng);
        let hops = rng.gen_range(1..=5);
        let req = PathRequest {
            hops,
            exit_target: None,
            exclude: &[],
            guards: &guards,
        };
        // Usable: a relay with a link address that weighs something (at
        // most two per /24 do).
        let usable_guard = guards.iter().any(|g| {
            dir.get(g)
                .is_some_and(|d| d.roles.relay && !d.link_addrs.is_empty())
                && dir.weights().get(g) > 0
        });
        match select_path(&dir, &req, &mut rng) {
            Ok(path) => {
                assert!(guards.contains(&path[0].peer_id), "round {round}");
                assert_valid(&path, hops);
                paths += 1;
            }
            Err(PathError::NoUsableGuard { .. }) => {
                assert!(!usable_guard, "round {round}");
                refused += 1;
            }
            Err(_) => {}
        }
        if !usable_guard {
            assert!(select_path(&dir, &req, &mut rng).is_err(), "round {round}");
        }
    }
    assert!(
        paths > 50 && refused > 20,
        "{paths} paths, {refused} refused"
    );
}

#[test]
fn unusable_nodes_and_exclusions_never_chosen() {
    let no_relay = |d: &mut Descriptor| {
        d.roles = Roles {
            relay: false,
            exit: true,
        }
    };
    let no_link = |d: &mut Descriptor| d.link_addrs.clear();
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &nothing),
        (2, "2.2.0.1:1", &nothing),
        (3, "3.3.0.1:1", &nothing),
        (4, "4.4.0.1:1", &nothing),
        (5, "5.5.0.1:1", &no_relay),
        (6, "6.6.0.1:1", &no_link),
        (9999, "9.9.0.1:1", &nothing), // the directory's own node
    ]);
    let excluded = [ids_[0]];
    let r = PathRequest {
        hops: 3,
        exit_target: None,
        exclude: &excluded,
        guards: &ids_,
    };
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..300 {
        let path = select_path(&dir, &r, &mut rng).unwrap();
        for d in &path {
            assert!([ids_[1], ids_[2], ids_[3]].contains(&d.peer_id));
        }
    }
    let r = PathRequest { hops: 4, ..r };
    assert_eq!(
        select_path(&dir, &r, &mut rng),
        Err(PathError::NotEnoughRelays { needed: 4, have: 3 })
    );
}

#[test]
fn errors_when_not_enough_nodes() {
    let mut rng = StdRng::seed_from_u64(10);
    let empty = Directory::new(own());
    assert_eq!(
        any_guard(&empty, 3, None, &mut rng),
        Err(PathError::NoExitForTarget)
    );
    let (dir, _) = spread(2);
    let err = any_guard(&dir, 3, None, &mut rng).unwrap_err();
    assert_eq!(err, PathError::NotEnoughRelays { needed: 3, have: 2 });
    assert!(err.to_string().contains('3') && err.to_string().contains('2'));
    assert!(any_guard(&dir, 2, None, &mut rng).is_ok());
}

#[test]
fn bandwidth_weighting() {
    // exits with bandwidth 1:2:7 (x 1 MB/s), all in distinct /16s.
    let bw = |b: u64| move |d: &mut Descriptor| d.bandwidth = b * 1_000_000;
    let (b1, b2, b7) = (bw(1), bw(2), bw(7));
    let non_exit = |d: &mut Descriptor| d.roles.exit = false;
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &b1),
        (2, "2.2.0.1:1", &b2),
        (3, "3.3.0.1:1", &b7),
        (4, "4.4.0.1:1", &non_exit),
    ]);
    let mut rng = StdRng::seed_from_u64(11);
    let mut counts: HashMap<PeerId, u32> = HashMap::new();
    let draws = 5000;
    // the first hop is the guard (the guard state weights guards when it
    // samples them); the exit is weighted here
    let r = PathRequest {
        hops: 2,
        exit_target: None,
        exclude: &[],
        guards: &ids_[3..],
    };
    for _ in 0..draws {
        let path = select_path(&dir, &r, &mut rng).unwrap();
        *counts.entry(path[1].peer_id).or_default() += 1;
    }
    let frac = |i: usize| f64::from(counts[&ids_[i]]) / f64::from(draws);
    assert!((frac(0) - 0.1).abs() < 0.03, "{}", frac(0));
    assert!((frac(1) - 0.2).abs() < 0.03, "{}", frac(1));
    assert!((frac(2) - 0.7).abs() < 0.03, "{}", frac(2));
}

#[test]
fn weight_clamped() {
    let k = key(1);
    let mut d = desc(&k, "1.1.1.1:1");
    d.bandwidth = 0;
    assert_eq!(weight(&d), MIN_WEIGHT);
    d.bandwidth = u64::MAX;
    assert_eq!(weight(&d), MAX_WEIGHT);
    d.bandwidth = 123_456;
    assert_eq!(weight(&d), 123_456);

    // a huge advertised bandwidth is capped: a 0-bandwidth node still gets picked
    let zero = |d: &mut Descriptor| d.bandwidth = 0;
    let huge = |d: &mut Descriptor| d.bandwidth = u64::MAX;
    let non_exit = |d: &mut Descriptor| d.roles.exit = false;
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &zero),
        (2, "2.2.0.1:1", &huge),
        (3, "3.3.0.1:1", &non_exit),
    ]);
    let mut rng = StdRng::seed_from_u64(12);
    // P(pick zero) = 1e3 / (1e10 + 1e3) ~ 1e-7; just check no overflow/panic
    let r = PathRequest {
        hops: 2,
        exit_target: None,
        exclude: &[],
        guards: &ids_[2..],
    };
    for _ in 0..1000 {
        let p = select_path(&dir, &r, &mut rng).unwrap();
        assert_eq!(p[1].peer_id, ids_[1]);
    }
    // in a 2-hop path both must be used
    let p = any_guard(&dir, 2, None, &mut rng).unwrap();
    assert_eq!(p.len(), 2);
}

#[test]
fn seeded_selection_is_reproducible() {
    let (dir, _) = spread(30);
    let run = || {
        let mut rng = StdRng::seed_from_u64(13);
        (0..20)
            .map(|_| ids(&any_guard(&dir, 3, None, &mut rng).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn at_most_two_relays_per_ipv4_24_or_ipv6_48_carry_weight() {
    // Six relays in one /24, four in one /48, and six elsewhere, each in
    // its own /16. In the crowded prefixes the two heaviest keep their
    // weight; the rest weigh nothing and are never chosen.
    let bw = |b: u64| move |d: &mut Descriptor| d.bandwidth = b;
    let crowded: Vec<(u32, String, u64)> = (0..6)
        .map(|i| {
            (
                100 + i,
                format!("198.51.100.{}:9001", 10 + i),
                1_000_000 * (u64::from(i) + 1),
            )
        })
        .chain((0..4).map(|i| {
            (
                200 + i,
                format!("[2001:db8:7:{i:x}::1]:9001"),
                1_000_000 * (u64::from(i) + 1),
            )
        }))
        .collect();
    type OwnedTweak = Box<dyn Fn(&mut Descriptor)>;
    let tweaks: Vec<OwnedTweak> = crowded
        .iter()
        .map(|(_, _, b)| Box::new(bw(*b)) as OwnedTweak)
        .collect();
    let mut nodes: Vec<(u32, &str, Tweak)> = crowded
        .iter()
        .zip(&tweaks)
        .map(|((n, link, _), t)| (*n, link.as_str(), t.as_ref() as Tweak))
        .collect();
    let spread_links: Vec<String> = (0..6).map(|i| format!("{}.1.0.1:9001", 30 + i)).collect();
    for (i, l) in spread_links.iter().enumerate() {
        nodes.push((300 + i as u32, l.as_str(), &nothing));
    }
    let (dir, ids) = dir_of(nodes);
    let w = dir.weights();
    // The /24: relays 4 and 5 (6 and 5 MB/s) keep theirs.
    for (i, id) in ids[..6].iter().enumerate() {
        let kept = i >= 4;
        assert_eq!(w.get(id) > 0, kept, "relay {i} of the /24");
    }
    // The /48: relays 2 and 3.
    for (i, id) in ids[6..10].iter().enumerate() {
        assert_eq!(w.get(id) > 0, i >= 2, "relay {i} of the /48");
    }
    for id in &ids[10..] {
        assert!(w.get(id) > 0);
    }
    let capped: HashSet<PeerId> = ids[..4].iter().chain(&ids[6..8]).copied().collect();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let path = any_guard(&dir, 3, None, &mut rng).unwrap();
        assert!(
            path.iter().all(|d| !capped.contains(&d.peer_id)),
            "a relay over its prefix's cap was chosen"
        );
    }
    // Offered only capped guards, there is no path: they are not usable.
    let req = PathRequest {
        hops: 3,
        exit_target: None,
        exclude: &[],
        guards: &ids[..4],
    };
    assert!(matches!(
        select_path(&dir, &req, &mut rng),
        Err(PathError::NoUsableGuard { .. })
    ));
}

#[test]
fn private_relays_weigh_nothing_unless_allowed_and_then_are_not_capped() {
    let links: Vec<String> = (0..8)
        .map(|i| format!("127.0.0.1:{}", 9000 + i))
        .chain((0..4).map(|i| format!("10.0.0.{}:9001", i + 1)))
        .chain(["[fc00::1]:9001".into(), "[::ffff:192.168.1.1]:9001".into()])
        .collect();
    let nodes = (0..links.len() as u32)
        .map(|i| (i, links[i as usize].as_str(), &nothing as Tweak))
        .collect();
    let (mut dir, ids) = dir_of(nodes);
    let w = dir.weights();
    assert!(
        ids.iter().all(|id| w.get(id) == 0),
        "private relays weigh 0"
    );
    let mut rng = StdRng::seed_from_u64(3);
    assert!(any_guard(&dir, 3, None, &mut rng).is_err());
    // A test network on one host or one LAN allows them, uncapped.
    dir.allow_private_relays(true);
    let w = dir.weights();
    assert!(ids.iter().all(|id| w.get(id) > 0));
    assert_valid(&any_guard(&dir, 3, None, &mut rng).unwrap(), 3);
}

#[test]
fn only_the_dialled_address_counts_against_a_prefix() {
    // Three heavy relays dial addresses of their own but also list an
    // address in a /24 where two light relays live: the light ones keep
    // their weight.
    let heavy = |d: &mut Descriptor| {
        d.bandwidth = 5_000_000_000;
        d.link_addrs.push("198.51.100.99:9001".parse().unwrap());
    };
    let (dir, ids) = dir_of(vec![
        (1, "198.51.100.1:9001", &nothing),
        (2, "198.51.100.2:9001", &nothing),
        (3, "40.0.0.1:9001", &heavy),
        (4, "41.0.0.1:9001", &heavy),
        (5, "42.0.0.1:9001", &heavy),
    ]);
    let w = dir.weights();
    assert!(ids.iter().all(|id| w.get(id) > 0));
}
