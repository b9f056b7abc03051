//! Multi-node gossip tests on loopback.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_records() {
    timeout(Duration::from_secs(20), async {
        let start = Instant::now();
        let a = TestNode::start(b"record-a".to_vec(), vec![], Duration::from_secs(2), false).await;
        let b = TestNode::start(
            b"record-b".to_vec(),
            vec![a.addr.clone()],
            Duration::from_secs(2),
            false,
        )
        .await;
        timeout(Duration::from_secs(10), async {
            while !(a.knows(b"record-b") && b.knows(b"record-a")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("both records exchanged within 10 s");
        println!("two nodes exchanged records in {:?}", start.elapsed());

        let peers = a.handle.connected_peers().await;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].0, b.peer_id);
        // exchange_now works and the node keeps running.
        b.handle.exchange_now().await;
        let b_handle = b.handle.clone();
        a.stop().await;
        b.stop().await;
        // A stopped node answers with empty results rather than hanging.
        assert!(b_handle.listen_addrs().await.is_empty());
        assert!(b_handle.connected_peers().await.is_empty());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_converge_fast_interval() {
    thirty_nodes_converge(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_converge_default_interval() {
    thirty_nodes_converge(veilnet_discovery::DiscoveryConfig::DEFAULT_EXCHANGE_INTERVAL).await;
}

/// 30 nodes bootstrap only from node 0; every node must know >= 95% of the
/// 30 records within 30 s.
async fn thirty_nodes_converge(interval: Duration) {
    const N: usize = 30;
    timeout(Duration::from_secs(60), async {
        let start = Instant::now();
        let mut nodes = Vec::with_capacity(N);
        nodes.push(TestNode::start(b"node-0".to_vec(), vec![], interval, true).await);
        let boot = nodes[0].addr.clone();
        for i in 1..N {
            let rec = format!("node-{i}").into_bytes();
            nodes.push(TestNode::start(rec, vec![boot.clone()], interval, true).await);
        }
        println!("[{interval:?}] {N} nodes started in {:?}", start.elapsed());

        let need = (N * 95).div_ceil(100);
        let mut t95 = None;
        let deadline = start + Duration::from_secs(30);
        loop {
            let counts: Vec<usize> = nodes.iter().map(TestNode::known_count).collect();
            let min = counts.iter().copied().min().unwrap_or(0);
            if t95.is_none() && min >= need {
                t95 = Some(start.elapsed());
                println!(
                    "[{interval:?}] every node knows >= 95% ({need}/{N}) after {:?}",
                    start.elapsed()
                );
            }
            if min == N {
                println!(
                    "[{interval:?}] every node knows 100% after {:?}",
                    start.elapsed()
                );
                break;
            }
            if Instant::now() > deadline {
                assert!(t95.is_some(), "not converged within 30 s: {counts:?}");
                println!("not 100% within 30 s: {counts:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The random walk should have meshed the network beyond node 0.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut degrees = Vec::with_capacity(N);
        for n in &nodes {
            degrees.push(n.handle.connected_peers().await.len());
        }
        let min_deg = degrees.iter().copied().min().unwrap_or(0);
        println!(
            "[{interval:?}] connected peers per node after {:?}: min {min_deg}, all {degrees:?}",
            start.elapsed()
        );
        assert!(
            min_deg >= 2,
            "nodes found peers beyond the bootstrap node: {degrees:?}"
        );

        for n in nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test finished in time");
}
