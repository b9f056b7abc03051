//! Peer measurement in a real test network: a relay that lies about its
//! bandwidth is weighed by what it carries, and one nobody can reach is
//! never used.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use veilnet_circmgr::Isolation;
use veilnet_config::MeasureConfig;
use veilnet_control::{get_json, NodeView};
use veilnet_testnet::{Testnet, TestnetOptions};

const RELAYS: usize = 8;
/// The liar: advertises 1 GB/s, donates 1 MB/s.
const LIAR: usize = 4;
const LIAR_RATE: u64 = 1_000_000;
/// Advertises a link address where nothing listens.
const DEAD: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_liar_is_measured_at_its_cap_and_an_unreachable_relay_is_never_used() {
    common::init();
    let measure = MeasureConfig::test_network();
    let opts = TestnetOptions {
        nodes: RELAYS,
        exits: 2,
        socks: None,
        control: Some("127.0.0.1:0".parse().unwrap()),
        measure: Some(measure.clone()),
        relay_config: Some(Arc::new(|i, c: &mut veilnet_config::Config| {
            if i == LIAR {
                c.node.bandwidth = 1_000_000_000;
                c.node.bandwidth_rate = LIAR_RATE;
                c.node.bandwidth_burst = LIAR_RATE;
            }
            if i == DEAD {
                c.node.advertise = vec!["127.0.0.1:1".parse().unwrap()];
            }
        })),
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    let liar = net.relays[LIAR].peer_id.to_string();
    let dead = net.relays[DEAD].peer_id.to_string();
    let control = net.client.control_addr().unwrap();
    let run = async {
        net.wait_ready(Duration::from_secs(60)).await.unwrap();
        let started = Instant::now();
        // Every reachable relay measured by at least 2 measurers, the liar
        // within 2x of its cap and the others clearly faster, in the
        // client's view, through its control API, within 2 minutes.
        let nodes = loop {
            let nodes: Vec<NodeView> = get_json(control, "/v1/nodes").await.unwrap();
            let measured = |n: &NodeView| n.reachable == Some(true) && n.measured_by >= 2;
            // A measurement that shared a relay with another shows less
            // than the relay has; later measurements replace it.
            let fast = |n: &NodeView| {
                if n.peer_id == liar {
                    n.measured_bandwidth
                        .is_some_and(|m| (LIAR_RATE / 2..=LIAR_RATE * 2).contains(&m))
                } else {
                    n.weight >= 2 * LIAR_RATE
                }
            };
            let done = nodes
                .iter()
                .filter(|n| n.peer_id != dead)
                .all(|n| measured(n) && fast(n))
                && nodes.len() == RELAYS;
            if done {
                break nodes;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "not measured within 2 minutes: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!(
            "every reachable relay measured {:.1}s after the network was ready",
            started.elapsed().as_secs_f64()
        );
        for n in &nodes {
            eprintln!(
                "{} advertised {} measured {:?} by {} weight {}{}",
                &n.peer_id[n.peer_id.len() - 6..],
                n.advertised_bandwidth,
                n.measured_bandwidth,
                n.measured_by,
                n.weight,
                if n.peer_id == liar {
                    " (the liar)"
                } else if n.peer_id == dead {
                    " (unreachable)"
                } else {
                    ""
                }
            );
        }
        // What each measurer last reported of the liar (shown on failure).
        {
            let dir = net.client.directory.lock().unwrap();
            let m = dir.measurements().unwrap();
            for r in &net.relays {
                for rep in m.reports_of(&r.peer_id) {
                    for o in &rep.observations {
                        if o.target == net.relays[LIAR].peer_id {
                            eprintln!(
                                "measurer {} at {}: the liar at {} B/s (reached: {})",
                                r.peer_id, rep.published, o.bandwidth, o.reached
                            );
                        }
                    }
                }
            }
        }
        let l = nodes.iter().find(|n| n.peer_id == liar).unwrap();
        assert_eq!(l.advertised_bandwidth, 1_000_000_000);
        let measured = l.measured_bandwidth.unwrap();
        assert!(
            (LIAR_RATE / 2..=LIAR_RATE * 2).contains(&measured),
            "the liar capped at {LIAR_RATE} B/s measured at {measured}"
        );
        // No ramp in a test network: the weight is the measured figure.
        assert_eq!(l.weight, measured);
        let honest_min = nodes
            .iter()
            .filter(|n| n.peer_id != liar && n.peer_id != dead)
            .map(|n| n.weight)
            .min()
            .unwrap();
        assert!(
            honest_min >= 2 * LIAR_RATE,
            "an uncapped relay weighs {honest_min}, not clearly more than the liar"
        );
        let d = nodes.iter().find(|n| n.peer_id == dead).unwrap();
        assert_eq!(d.weight, 0, "{d:#?}");
        assert_ne!(d.reachable, Some(true));
        assert_eq!(d.measured_bandwidth, None);
        // Circuits never go through the unreachable relay.
        for _ in 0..20 {
            let c = net
                .client
                .circuits
                .build(None, Isolation::NONE)
                .await
                .unwrap();
            assert!(!c.hops().contains(&net.relays[DEAD].peer_id));
        }
        // The measurers' traffic is counted apart.
        let measured_bytes: u64 = net
            .relays
            .iter()
            .map(|r| {
                r.measure_stats
                    .bytes
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        assert!(measured_bytes > 0);
        eprintln!("measurement traffic: {measured_bytes} bytes");
    };
    tokio::time::timeout(Duration::from_secs(200), run)
        .await
        .expect("the test finishes in time");
    net.shutdown().await;
    common::assert_no_task_panics();
}
