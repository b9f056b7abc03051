//! Path selection and guard sets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};

use common::{desc, key, sign, NOW};
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use veilnet_cell::TargetAddr;
use veilnet_dir::path::{share_subnet, weight, MAX_WEIGHT, MIN_WEIGHT};
use veilnet_dir::{select_path, Descriptor, Directory, GuardSet, PathError, PathRequest, Roles};
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

fn req(hops: usize, target: Option<&TargetAddr>) -> PathRequest<'_> {
    PathRequest {
        hops,
        exit_target: target,
        exclude: &[],
        guards: &[],
    }
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
        let path = select_path(&dir, &req(3, None), &mut rng).unwrap();
        assert_valid(&path, 3);
    }
    for hops in 1..=5 {
        let path = select_path(&dir, &req(hops, None), &mut rng).unwrap();
        assert_valid(&path, hops);
    }
}

#[test]
fn bad_hop_counts() {
    let (dir, _) = spread(10);
    let mut rng = StdRng::seed_from_u64(1);
    for hops in [0, 6, 100] {
        assert_eq!(
            select_path(&dir, &req(hops, None), &mut rng),
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
        let path = select_path(&dir, &req(3, Some(&target80)), &mut rng).unwrap();
        assert_valid(&path, 3);
        assert_eq!(path[2].peer_id, ids_[2], "only node 3 exits to :80");
        let path = select_path(&dir, &req(3, Some(&domain(80))), &mut rng).unwrap();
        assert_eq!(path[2].peer_id, ids_[2]);
        let path = select_path(&dir, &req(3, Some(&domain(443))), &mut rng).unwrap();
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
            select_path(&dir, &req(3, Some(&target)), &mut rng),
            Err(PathError::NoExitForTarget)
        );
    }
    assert!(select_path(&dir, &req(3, Some(&domain(81))), &mut rng).is_ok());
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
        let path = select_path(&dir, &req(1, None), &mut rng).unwrap();
        assert_eq!(ids(&path), vec![ids_[0]]);
    }
}

#[test]
fn subnet_diversity() {
    // 9 nodes in only three /16s: a 3-hop path must take one from each.
    let addrs = [
        "10.1.0.1:1",
        "10.1.5.1:1",
        "10.1.200.9:1",
        "10.2.0.1:1",
        "10.2.3.4:1",
        "10.2.99.1:1",
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
        let path = select_path(&dir, &req(3, None), &mut rng).unwrap();
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
        select_path(&dir, &req(4, None), &mut rng),
        Err(PathError::NotEnoughRelays { needed: 4, have: 9 })
    );
}

#[test]
fn subnet_rule_checks_every_link_addr_and_mapped() {
    let two_addrs = |d: &mut Descriptor| d.link_addrs.push("7.7.1.1:1".parse().unwrap());
    let mapped = |d: &mut Descriptor| d.link_addrs = vec!["[::ffff:7.7.9.9]:1".parse().unwrap()];
    let (dir, _) = dir_of(vec![
        (1, "1.1.0.1:1", &two_addrs),
        (2, "7.7.0.1:1", &nothing),
        (3, "3.3.0.1:1", &mapped),
    ]);
    let all: Vec<&Descriptor> = dir.iter().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(share_subnet(a, b), "all three share 7.7/16");
        }
    }
    let mut rng = StdRng::seed_from_u64(5);
    assert!(matches!(
        select_path(&dir, &req(2, None), &mut rng),
        Err(PathError::NotEnoughRelays { .. })
    ));
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
    let mut rng = StdRng::seed_from_u64(6);
    for _ in 0..50 {
        let path = select_path(&dir, &req(5, None), &mut rng).unwrap();
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
        let path = select_path(&dir, &req(3, None), &mut rng).unwrap();
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
        select_path(&dir, &req(4, None), &mut rng),
        Err(PathError::NotEnoughRelays { .. })
    ));
}

#[test]
fn guards_used_as_first_hop() {
    let (dir, all) = spread(20);
    let guards = [all[3], all[7]];
    let mut rng = StdRng::seed_from_u64(8);
    let mut used = HashSet::new();
    for _ in 0..300 {
        let r = PathRequest {
            hops: 3,
            exit_target: None,
            exclude: &[],
            guards: &guards,
        };
        let path = select_path(&dir, &r, &mut rng).unwrap();
        assert_valid(&path, 3);
        assert!(guards.contains(&path[0].peer_id));
        used.insert(path[0].peer_id);
    }
    assert_eq!(used.len(), 2);
    // guards missing from the directory: fall back to any relay
    let gone = [key(5000).public().to_peer_id()];
    let r = PathRequest {
        hops: 3,
        exit_target: None,
        exclude: &[],
        guards: &gone,
    };
    assert_valid(&select_path(&dir, &r, &mut rng).unwrap(), 3);
    // an excluded guard is not used
    let r = PathRequest {
        hops: 3,
        exit_target: None,
        exclude: &[all[3]],
        guards: &guards,
    };
    for _ in 0..100 {
        assert_eq!(select_path(&dir, &r, &mut rng).unwrap()[0].peer_id, all[7]);
    }
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
        guards: &[],
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
        select_path(&empty, &req(3, None), &mut rng),
        Err(PathError::NoExitForTarget)
    );
    let (dir, _) = spread(2);
    let err = select_path(&dir, &req(3, None), &mut rng).unwrap_err();
    assert_eq!(err, PathError::NotEnoughRelays { needed: 3, have: 2 });
    assert!(err.to_string().contains('3') && err.to_string().contains('2'));
    assert!(select_path(&dir, &req(2, None), &mut rng).is_ok());
}

#[test]
fn bandwidth_weighting() {
    // exits with bandwidth 1:2:7 (x 1 MB/s), all in distinct /16s.
    let bw = |b: u64| move |d: &mut Descriptor| d.bandwidth = b * 1_000_000;
    let (b1, b2, b7) = (bw(1), bw(2), bw(7));
    let (dir, ids_) = dir_of(vec![
        (1, "1.1.0.1:1", &b1),
        (2, "2.2.0.1:1", &b2),
        (3, "3.3.0.1:1", &b7),
    ]);
    let mut rng = StdRng::seed_from_u64(11);
    let mut counts: HashMap<PeerId, u32> = HashMap::new();
    let draws = 5000;
    for _ in 0..draws {
        let path = select_path(&dir, &req(1, None), &mut rng).unwrap();
        *counts.entry(path[0].peer_id).or_default() += 1;
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
    let (dir, ids_) = dir_of(vec![(1, "1.1.0.1:1", &zero), (2, "2.2.0.1:1", &huge)]);
    let mut rng = StdRng::seed_from_u64(12);
    // P(pick zero) = 1e3 / (1e10 + 1e3) ~ 1e-7; just check no overflow/panic
    for _ in 0..1000 {
        let p = select_path(&dir, &req(1, None), &mut rng).unwrap();
        assert_eq!(p[0].peer_id, ids_[1]);
    }
    // in a 2-hop path both must be used
    let p = select_path(&dir, &req(2, None), &mut rng).unwrap();
    assert_eq!(p.len(), 2);
}

#[test]
fn seeded_selection_is_reproducible() {
    let (dir, _) = spread(30);
    let run = || {
        let mut rng = StdRng::seed_from_u64(13);
        (0..20)
            .map(|_| ids(&select_path(&dir, &req(3, None), &mut rng).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn guard_set_refresh() {
    let (mut dir, all) = spread(10);
    let mut rng = StdRng::seed_from_u64(14);
    let mut gs = GuardSet::new(3);
    assert!(gs.guards().is_empty());
    assert!(gs.refresh(&dir, &[], &mut rng));
    assert_eq!(gs.guards().len(), 3);
    let first: Vec<PeerId> = gs.guards().to_vec();
    // nothing changed: same guards
    assert!(!gs.refresh(&dir, &[], &mut rng));
    assert_eq!(gs.guards(), &first[..]);
    // a guard leaves the directory: dropped and replaced, others kept
    dir.remove(&first[1]);
    assert!(gs.refresh(&dir, &[], &mut rng));
    assert_eq!(gs.guards().len(), 3);
    assert_eq!(gs.guards()[0], first[0]);
    assert_eq!(gs.guards()[1], first[2]);
    assert!(!gs.guards().contains(&first[1]));
    // excluded peers are dropped and never picked
    let excl = [gs.guards()[0]];
    assert!(gs.refresh(&dir, &excl, &mut rng));
    assert!(!gs.guards().contains(&excl[0]));
    // not enough relays: fill what is there
    let mut big = GuardSet::new(50);
    assert_eq!(big.target_size(), veilnet_dir::path::MAX_GUARDS);
    big.refresh(&dir, &[], &mut rng);
    assert_eq!(big.guards().len(), 9);
    let set: HashSet<_> = big.guards().iter().collect();
    assert_eq!(set.len(), 9, "no duplicate guards");
    assert!(all
        .iter()
        .filter(|p| dir.get(p).is_some())
        .all(|p| set.contains(p)));
}

#[test]
fn guard_set_drops_non_relays_and_persists() {
    let (dir, all) = spread(5);
    let k = key(1);
    let mut d = desc(&k, "20.1.0.1:9001");
    d.roles.relay = false;
    d.seq = 2;
    let mut dir2 = dir.clone();
    dir2.insert(&sign(&d, &k), NOW).unwrap();
    let gone = key(777).public().to_peer_id();
    let mut gs = GuardSet::from_peers(vec![all[1], all[1], gone, all[2]], 2);
    assert_eq!(gs.guards(), &[all[1], gone]);
    let mut rng = StdRng::seed_from_u64(15);
    assert!(gs.refresh(&dir2, &[], &mut rng));
    assert_eq!(gs.guards().len(), 2);
    assert!(!gs.guards().contains(&gone));
    assert!(!gs.guards().contains(&all[1]), "lost relay role");
    // persistence
    let json = serde_json::to_string(&gs).unwrap();
    let back: GuardSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, gs);
    let huge = format!(
        r#"{{"target_size":1000,"guards":[{}]}}"#,
        vec![format!("\"{}\"", all[0]); 40].join(",")
    );
    let back: GuardSet = serde_json::from_str(&huge).unwrap();
    assert_eq!(back.guards(), &[all[0]]);
}
