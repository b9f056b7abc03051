//! The links a relay keeps: with nothing to exchange for an hour, the
//! links relays chose stay open (announcements need them).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::TestNode;
use tokio::time::timeout;

/// No reconciliation round within a test.
const HOUR: Duration = Duration::from_secs(3600);
/// The idle timeout in these tests (60 s in a real node).
const IDLE: Duration = Duration::from_secs(1);

fn idle_soon(cfg: &mut veilnet_discovery::DiscoveryConfig) {
    cfg.target_peers = 1;
    cfg.idle_timeout = IDLE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_keep_the_links_they_chose_with_nothing_to_send() {
    timeout(Duration::from_secs(60), async {
        // A chain: each relay dials the one before (its only link of its
        // own) and is dialed by the next.
        let nodes = TestNode::chain(3, HOUR, false, idle_soon).await;
        // The first exchanges ran (the links are up).
        timeout(Duration::from_secs(10), async {
            while !(1..3).all(|i| nodes[i].knows(format!("own-{}", i - 1).as_bytes())) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("first exchanges");
        // Many idle timeouts later, with nothing exchanged since.
        tokio::time::sleep(IDLE * 6).await;
        for i in 1..3 {
            let peers: Vec<_> = nodes[i].handle.connected_peers().await;
            assert!(
                peers.iter().any(|(p, _)| *p == nodes[i - 1].peer_id),
                "relay {i} lost the link it chose: {peers:?}"
            );
        }
        for n in nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test finished in time");
}
