//! A consumer that never reads its events must not stall the node.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use libp2p::identity::Keypair;
use tokio::time::timeout;
use veilnet_discovery::{spawn, DiscoveryConfig, DiscoveryEvent, RecordProvider};

fn config(bootstrap: Vec<libp2p::Multiaddr>) -> DiscoveryConfig {
    let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = bootstrap;
    cfg.exchange_interval = Duration::from_millis(5);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_event_channel_does_not_block_the_swarm() {
    timeout(Duration::from_secs(30), async {
        let provider_a: RecordProvider = Arc::new(|| vec![b"a".to_vec()]);
        // `_events_a` is never read.
        let (a, _events_a) = spawn(config(vec![]), provider_a).await.unwrap();
        let addr_a = a.listen_addrs().await[0]
            .clone()
            .with_p2p(a.local_peer_id())
            .unwrap();

        let provider_b: RecordProvider = Arc::new(|| vec![b"b".to_vec()]);
        let (b, mut events_b) = spawn(config(vec![addr_a]), provider_b).await.unwrap();
        let from_a = Arc::new(AtomicUsize::new(0));
        let counter = from_a.clone();
        let collector = tokio::spawn(async move {
            while let Some(ev) = events_b.recv().await {
                if matches!(ev, DiscoveryEvent::Records { .. }) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        // Every exchange also yields a Records event at A, so once B has seen
        // 600 exchanges A's 256-slot channel has long been full.
        timeout(Duration::from_secs(20), async {
            while from_a.load(Ordering::Relaxed) < 600 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("A keeps answering with a full event channel");
        // A still serves commands promptly.
        let peers = timeout(Duration::from_secs(1), a.connected_peers())
            .await
            .unwrap();
        assert_eq!(peers.len(), 1);

        a.shutdown().await;
        b.shutdown().await;
        timeout(Duration::from_secs(5), collector)
            .await
            .unwrap()
            .unwrap();
    })
    .await
    .expect("test finished in time");
}
