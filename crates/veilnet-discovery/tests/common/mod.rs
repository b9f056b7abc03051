//! Helpers shared by the integration tests: a discovery node whose provider
//! returns its own record plus everything it has received.

#![allow(dead_code)]

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::{identity::Keypair, Multiaddr, PeerId};
use veilnet_discovery::sync;
use veilnet_discovery::{spawn, DiscoveryConfig, DiscoveryEvent, DiscoveryHandle, RecordProvider};

pub struct TestNode {
    pub handle: DiscoveryHandle,
    pub peer_id: PeerId,
    pub known: Arc<Mutex<HashSet<Vec<u8>>>>,
    pub addr: Multiaddr,
    collector: tokio::task::JoinHandle<()>,
}

impl TestNode {
    /// Starts a node on 127.0.0.1 whose provider returns `own` plus every
    /// record received so far (if `relay`), or only `own`.
    pub async fn start(
        own: Vec<u8>,
        bootstrap: Vec<Multiaddr>,
        interval: Duration,
        relay: bool,
    ) -> TestNode {
        Self::start_with(own, bootstrap, interval, relay, false, |_| {}).await
    }

    /// As [`TestNode::start`]; with `announcing`, a node also announces
    /// every record it receives for the first time, as the real node does
    /// once it has accepted one; `tweak` changes the config last.
    pub async fn start_with(
        own: Vec<u8>,
        bootstrap: Vec<Multiaddr>,
        interval: Duration,
        relay: bool,
        announcing: bool,
        tweak: impl FnOnce(&mut DiscoveryConfig),
    ) -> TestNode {
        let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.bootstrap = bootstrap;
        cfg.exchange_interval = interval;
        tweak(&mut cfg);
        let known = Arc::new(Mutex::new(HashSet::from([own.clone()])));
        let provider: RecordProvider = if relay {
            let k = known.clone();
            Arc::new(move || k.lock().unwrap().iter().cloned().collect())
        } else {
            Arc::new(move || vec![own.clone()])
        };
        let (handle, mut events) = spawn(cfg, provider).await.unwrap();
        let k = known.clone();
        let h = handle.clone();
        let collector = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let DiscoveryEvent::Records { records, .. } = ev {
                    let new: Vec<_> = {
                        let mut k = k.lock().unwrap();
                        records
                            .into_iter()
                            .filter(|r| k.insert(r.clone()))
                            .collect()
                    };
                    if announcing && !new.is_empty() {
                        h.announce(new.iter().map(|r| sync::digest(r)).collect())
                            .await;
                    }
                }
            }
        });
        let peer_id = handle.local_peer_id();
        let listen = handle.listen_addrs().await;
        assert!(!listen.is_empty(), "spawn returns once listening");
        let addr = listen[0].clone().with_p2p(peer_id).unwrap();
        TestNode {
            handle,
            peer_id,
            known,
            addr,
            collector,
        }
    }

    /// `n` relays in a chain, each bootstrapped from the one before (its
    /// only link of its own) and holding `own-{i}` as its own record;
    /// `announcing` and `tweak` as for [`TestNode::start_with`].
    pub async fn chain(
        n: usize,
        interval: Duration,
        announcing: bool,
        tweak: impl Fn(&mut DiscoveryConfig),
    ) -> Vec<TestNode> {
        let mut nodes: Vec<TestNode> = Vec::new();
        for i in 0..n {
            let boot = nodes
                .last()
                .map(|n| vec![n.addr.clone()])
                .unwrap_or_default();
            let own = format!("own-{i}").into_bytes();
            let node = Self::start_with(own, boot, interval, true, announcing, |c| tweak(c)).await;
            nodes.push(node);
        }
        nodes
    }

    /// Takes `record` as its own and announces it.
    pub async fn publish(&self, record: &[u8]) {
        self.known.lock().unwrap().insert(record.to_vec());
        self.handle.announce(vec![sync::digest(record)]).await;
    }

    pub fn knows(&self, record: &[u8]) -> bool {
        self.known.lock().unwrap().contains(record)
    }

    pub fn known_count(&self) -> usize {
        self.known.lock().unwrap().len()
    }

    pub async fn stop(self) {
        self.handle.shutdown().await;
        // The event channel closes with the node, which ends the collector.
        tokio::time::timeout(Duration::from_secs(5), self.collector)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A bare libp2p swarm on TCP with Noise and yamux, as a test's own peer.
pub fn swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| behaviour(key))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Identify as a veilnet node does, so a victim takes the peer for one.
pub fn veilnet_identify(key: &Keypair) -> libp2p::identify::Behaviour {
    libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
        veilnet_discovery::IDENTIFY_PROTOCOL.to_owned(),
        key.public(),
    ))
}
