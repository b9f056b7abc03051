//! A client-only discovery node: it listens nowhere, learns the relays'
//! records, and gives nothing of its own away.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::TestNode;
use libp2p::identity::Keypair;
use tokio::time::timeout;
use veilnet_discovery::{spawn, DiscoveryConfig, DiscoveryError, DiscoveryEvent, RecordProvider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_listens_nowhere_and_still_learns_the_relays() {
    timeout(Duration::from_secs(30), async {
        let a = TestNode::start(
            b"relay-a".to_vec(),
            vec![],
            Duration::from_millis(200),
            true,
        )
        .await;
        let b = TestNode::start(
            b"relay-b".to_vec(),
            vec![a.addr.clone()],
            Duration::from_millis(200),
            true,
        )
        .await;

        // A listen address is a configuration error for a client.
        let mut bad = DiscoveryConfig::new(Keypair::generate_ed25519());
        bad.client_only = true;
        bad.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let nothing: RecordProvider = Arc::new(Vec::new);
        assert!(matches!(
            spawn(bad, nothing).await,
            Err(DiscoveryError::InvalidConfig(_))
        ));

        let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
        cfg.client_only = true;
        cfg.bootstrap = vec![a.addr.clone()];
        cfg.exchange_interval = Duration::from_millis(200);
        let known = Arc::new(Mutex::new(HashSet::<Vec<u8>>::new()));
        let k = known.clone();
        let provider: RecordProvider =
            Arc::new(move || k.lock().unwrap().iter().cloned().collect());
        let (client, mut events) = spawn(cfg, provider).await.unwrap();
        assert!(client.listen_addrs().await.is_empty());
        let k = known.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let DiscoveryEvent::Records { records, .. } = ev {
                    k.lock().unwrap().extend(records);
                }
            }
        });
        // It learns both relays' records: b's through a, or from b directly
        // once the walk finds it.
        timeout(Duration::from_secs(15), async {
            loop {
                {
                    let k = known.lock().unwrap();
                    if k.contains(&b"relay-a"[..]) && k.contains(&b"relay-b"[..]) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the client learns every relay's record");
        // It reached them by dialing: it has no address of its own to give.
        let peers = a.handle.connected_peers().await;
        assert!(peers.iter().any(|(p, _)| *p == client.local_peer_id()));
        client.shutdown().await;
        b.stop().await;
        a.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// A client started before its bootstrap relay (or while the network is
/// down) keeps trying, and learns the relay's record once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_bootstrap_relay_reaches_it_later() {
    timeout(Duration::from_secs(30), async {
        // A free port for the relay that is not there yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let relay_key = Keypair::generate_ed25519();
        let relay_id = relay_key.public().to_peer_id();
        let listen: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();

        let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
        cfg.client_only = true;
        cfg.bootstrap = vec![listen.clone().with_p2p(relay_id).unwrap()];
        cfg.exchange_interval = Duration::from_millis(200);
        let known = Arc::new(Mutex::new(HashSet::<Vec<u8>>::new()));
        let nothing: RecordProvider = Arc::new(Vec::new);
        let (client, mut events) = spawn(cfg, nothing).await.unwrap();
        let k = known.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let DiscoveryEvent::Records { records, .. } = ev {
                    k.lock().unwrap().extend(records);
                }
            }
        });
        // The first dial was refused; the relay comes up 1.5 s later.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(client.connected_peers().await.is_empty());
        let mut rcfg = DiscoveryConfig::new(relay_key);
        rcfg.listen = vec![listen];
        rcfg.exchange_interval = Duration::from_millis(200);
        let own: RecordProvider = Arc::new(|| vec![b"late-relay".to_vec()]);
        let (relay, _relay_events) = spawn(rcfg, own).await.unwrap();

        timeout(Duration::from_secs(15), async {
            while !known.lock().unwrap().contains(&b"late-relay"[..]) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the client dials its bootstrap peer again and learns its record");
        client.shutdown().await;
        relay.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

/// Where `t` falls in a slot of `every`, in seconds.
fn phase(t: std::time::SystemTime, every: Duration) -> f64 {
    let unix = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    (unix.as_millis() % every.as_millis()) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_fetch_slots_connects_and_reconciles_only_at_them() {
    // Slots of 4 s, fetches between 2.5 s and 3 s into each; links close
    // after 1 s with nothing on them (60 s in a real node).
    let slots = veilnet_discovery::FetchSlots {
        every: Duration::from_secs(4),
        from: Duration::from_millis(2500),
        to: Duration::from_millis(3000),
    };
    let idle = Duration::from_secs(1);
    timeout(Duration::from_secs(40), async {
        let relay = TestNode::start_with(
            b"relay".to_vec(),
            vec![],
            Duration::from_secs(3600),
            true,
            false,
            |cfg| cfg.idle_timeout = idle,
        )
        .await;
        let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
        cfg.client_only = true;
        cfg.bootstrap = vec![relay.addr.clone()];
        cfg.client_fetch = Some(slots);
        cfg.idle_timeout = idle;
        let nothing: RecordProvider = Arc::new(Vec::new);
        let (client, mut events) = spawn(cfg, nothing).await.unwrap();
        // The first fetch comes at once (a client with no directory).
        let first = timeout(Duration::from_secs(5), async {
            loop {
                if let Some(DiscoveryEvent::Records { .. }) = events.recv().await {
                    return;
                }
            }
        })
        .await;
        assert!(first.is_ok(), "no first fetch");
        // Then, for three slots, the relay takes a new record every
        // 200 ms: every exchange brings some, so each shows as an event.
        let started = std::time::Instant::now();
        let (mut fetches, mut connects) = (Vec::new(), 0);
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(12) {
            n += 1;
            relay
                .known
                .lock()
                .unwrap()
                .insert(format!("new-{n}").into_bytes());
            match timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Some(DiscoveryEvent::Records { .. })) => {
                    fetches.push(phase(std::time::SystemTime::now(), slots.every));
                }
                Ok(Some(DiscoveryEvent::PeerConnected { .. })) => connects += 1,
                _ => {}
            }
        }
        // Each fetch in its window (or just after, as the answer comes).
        assert!(
            fetches.len() >= 2,
            "fetches at the slots: {fetches:?} (phases)"
        );
        for p in &fetches {
            assert!(
                (2.4..3.9).contains(p),
                "a fetch outside the window, {p:.2} s into a slot: {fetches:?}"
            );
        }
        // One connection a slot at most (both fetches of a slot use the
        // one relay here), not one every idle timeout.
        assert!(connects <= 4, "{connects} connections in 3 slots");
        drop(client);
        relay.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// A client's store that lists one relay it may dial (as the node's
/// directory lists the relays its descriptors name).
struct Listing {
    records: RecordProvider,
    relay: (libp2p::PeerId, libp2p::Multiaddr),
    /// Whether it lists the relay yet (before, it lists none).
    listed_now: Arc<std::sync::atomic::AtomicBool>,
    /// Whether it says which relays it lists (else it cannot tell).
    tells: bool,
}

impl Listing {
    fn lists(&self) -> bool {
        self.listed_now.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl veilnet_discovery::RecordStore for Listing {
    fn keys(&self) -> Arc<[veilnet_discovery::RecordKey]> {
        self.records.keys()
    }
    fn record(&self, d: &veilnet_discovery::RecordDigest) -> Option<Vec<u8>> {
        self.records.record(d)
    }
    fn unknown(
        &self,
        d: &[veilnet_discovery::RecordDigest],
    ) -> Vec<veilnet_discovery::RecordDigest> {
        self.records.unknown(d)
    }
    fn relays(&self, n: usize) -> Vec<(libp2p::PeerId, libp2p::Multiaddr)> {
        let listed = self.lists().then(|| self.relay.clone());
        listed.into_iter().take(n).collect()
    }
    fn lists_relay(&self, peer: &libp2p::PeerId) -> Option<bool> {
        self.tells.then_some(self.lists() && *peer == self.relay.0)
    }
}

/// Two relays that do not know each other (records `first` and
/// `listed`), and a client with fetch slots 2 s apart that bootstraps from
/// the first.
async fn first_and_listed() -> (TestNode, TestNode, DiscoveryConfig) {
    let first = TestNode::start(b"first".to_vec(), vec![], Duration::from_secs(3600), true).await;
    let listed = TestNode::start(b"listed".to_vec(), vec![], Duration::from_secs(3600), true).await;
    let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
    cfg.client_only = true;
    cfg.bootstrap = vec![first.addr.clone()];
    cfg.client_fetch = Some(veilnet_discovery::FetchSlots {
        every: Duration::from_secs(2),
        from: Duration::from_millis(500),
        to: Duration::from_millis(1500),
    });
    (first, listed, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_loses_its_fetch_relay_turns_to_a_relay_its_directory_lists() {
    // Slots of 2 s; the bootstrap relay, the client's one fetch relay,
    // goes away for good. After 3 failed dials the client forgets it and
    // dials a relay its store lists, which it was never told of
    // otherwise (the two relays do not know each other).
    timeout(Duration::from_secs(60), async {
        let (first, listed, mut cfg) = first_and_listed().await;
        cfg.idle_timeout = Duration::from_secs(1);
        let relay = (listed.peer_id, listed.addr.clone());
        let (client, known, collect) = collecting(cfg, |records| {
            Arc::new(Listing {
                records,
                relay,
                listed_now: Arc::new(true.into()),
                tells: false,
            })
        })
        .await;
        timeout(Duration::from_secs(10), learned(&known, b"first"))
            .await
            .expect("the first fetch, from the bootstrap relay");
        first.stop().await;
        // Three failed fetches (one a slot and two retries 5 s apart),
        // then the listed relay.
        timeout(Duration::from_secs(40), learned(&known, b"listed"))
            .await
            .expect("the client fetches from the relay its store lists");
        client.shutdown().await;
        listed.stop().await;
        collect.await.unwrap();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaves_a_fetch_relay_its_directory_does_not_list_for_one_it_does() {
    // The bootstrap relay serves the directory but is not in it (any key
    // can claim to serve): after the first complete fetch the client
    // drops it and fetches from the relay the directory lists, which it
    // was never told of otherwise. The bootstrap relay stays up.
    timeout(Duration::from_secs(60), async {
        let (first, listed, cfg) = first_and_listed().await;
        // The directory lists no relay until the first fetch is in.
        let listed_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relay = (listed.peer_id, listed.addr.clone());
        let (client, known, collect) = collecting(cfg, |records| {
            Arc::new(Listing {
                records,
                relay,
                listed_now: listed_now.clone(),
                tells: true,
            })
        })
        .await;
        timeout(Duration::from_secs(10), learned(&known, b"first"))
            .await
            .expect("the first fetch, from the bootstrap relay");
        assert_eq!(
            client.fetch_relays().await.first().map(|(p, _)| *p),
            Some(first.peer_id)
        );
        listed_now.store(true, std::sync::atomic::Ordering::SeqCst);
        timeout(Duration::from_secs(20), learned(&known, b"listed"))
            .await
            .expect("the client fetches from the relay its directory lists");
        let now: Vec<_> = client
            .fetch_relays()
            .await
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(now, vec![listed.peer_id], "the unlisted relay is dropped");
        client.shutdown().await;
        first.stop().await;
        listed.stop().await;
        collect.await.unwrap();
    })
    .await
    .expect("test finished in time");
}

type Learned = Arc<Mutex<HashSet<Vec<u8>>>>;

/// Starts a node with `cfg` whose store is what `store` makes of the
/// records it has learned, and collects what it learns.
async fn collecting(
    cfg: DiscoveryConfig,
    store: impl FnOnce(RecordProvider) -> RecordProvider,
) -> (
    veilnet_discovery::DiscoveryHandle,
    Learned,
    tokio::task::JoinHandle<()>,
) {
    let known: Learned = Arc::new(Mutex::new(HashSet::new()));
    let k = known.clone();
    let records: RecordProvider = Arc::new(move || k.lock().unwrap().iter().cloned().collect());
    let (client, mut events) = spawn(cfg, store(records)).await.unwrap();
    let collect = tokio::spawn({
        let known = known.clone();
        async move {
            while let Some(ev) = events.recv().await {
                if let DiscoveryEvent::Records { records, .. } = ev {
                    known.lock().unwrap().extend(records);
                }
            }
        }
    });
    (client, known, collect)
}

/// A client with fetch slots bootstrapping from `bootstrap` and coming
/// back with `fetch_relays`.
async fn returning_client(
    bootstrap: &TestNode,
    fetch_relays: Vec<(libp2p::PeerId, libp2p::Multiaddr)>,
) -> (
    veilnet_discovery::DiscoveryHandle,
    Learned,
    tokio::task::JoinHandle<()>,
) {
    let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
    cfg.client_only = true;
    cfg.bootstrap = vec![bootstrap.addr.clone()];
    cfg.fetch_relays = fetch_relays;
    cfg.client_fetch = Some(veilnet_discovery::FetchSlots {
        every: Duration::from_secs(3600),
        from: Duration::from_secs(600),
        to: Duration::from_secs(1200),
    });
    collecting(cfg, |records| records).await
}

async fn learned(known: &Learned, want: &[u8]) {
    while !known.lock().unwrap().contains(want) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_goes_back_to_its_fetch_relays_and_not_to_its_bootstrap_peers() {
    // Slots an hour apart: what the client learns, it learns at start. It
    // remembers one fetch relay from its last run: it fetches from that
    // one at once and never connects to its bootstrap relay.
    timeout(Duration::from_secs(60), async {
        let bootstrap = TestNode::start(
            b"bootstrap".to_vec(),
            vec![],
            Duration::from_secs(3600),
            true,
        )
        .await;
        let guard =
            TestNode::start(b"guard".to_vec(), vec![], Duration::from_secs(3600), true).await;
        let (client, known, collect) =
            returning_client(&bootstrap, vec![(guard.peer_id, guard.addr.clone())]).await;
        timeout(Duration::from_secs(10), learned(&known, b"guard"))
            .await
            .expect("the client fetches from its remembered fetch relay at start");
        let me = client.local_peer_id();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !bootstrap
                .handle
                .connected_peers()
                .await
                .iter()
                .any(|(p, _)| *p == me),
            "the bootstrap relay saw the returning client"
        );
        assert!(!known.lock().unwrap().contains(&b"bootstrap"[..]));
        let relays = client.fetch_relays().await;
        assert_eq!(relays.first().map(|(p, _)| *p), Some(guard.peer_id));
        client.shutdown().await;
        bootstrap.stop().await;
        guard.stop().await;
        collect.await.unwrap();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_remembered_fetch_relays_are_gone_falls_back_at_once() {
    timeout(Duration::from_secs(60), async {
        let bootstrap = TestNode::start(
            b"bootstrap".to_vec(),
            vec![],
            Duration::from_secs(3600),
            true,
        )
        .await;
        let gone = TestNode::start(b"gone".to_vec(), vec![], Duration::from_secs(3600), true).await;
        let remembered = vec![(gone.peer_id, gone.addr.clone())];
        gone.stop().await;
        let (client, known, collect) = returning_client(&bootstrap, remembered).await;
        // Not at the next slot, an hour away: now.
        timeout(Duration::from_secs(15), learned(&known, b"bootstrap"))
            .await
            .expect("the client falls back to its bootstrap relay");
        client.shutdown().await;
        bootstrap.stop().await;
        collect.await.unwrap();
    })
    .await
    .expect("test finished in time");
}

/// A client's store that says which spans hold recent records (all of
/// them, so every fetch still brings everything) and notes each bound it
/// was asked for.
struct Spans {
    records: RecordProvider,
    asked: Arc<Mutex<Vec<u64>>>,
}

impl veilnet_discovery::RecordStore for Spans {
    fn keys(&self) -> Arc<[veilnet_discovery::RecordKey]> {
        self.records.keys()
    }
    fn record(&self, d: &veilnet_discovery::RecordDigest) -> Option<Vec<u8>> {
        self.records.record(d)
    }
    fn unknown(
        &self,
        d: &[veilnet_discovery::RecordDigest],
    ) -> Vec<veilnet_discovery::RecordDigest> {
        self.records.unknown(d)
    }
    fn spans_since(
        &self,
        since: u64,
    ) -> Option<
        Vec<(
            veilnet_discovery::RecordKey,
            Option<veilnet_discovery::RecordKey>,
        )>,
    > {
        self.asked.lock().unwrap().push(since);
        Some(vec![((0, [0; 32]), None)])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fetches_what_is_new_between_full_fetches() {
    // Slots of 1 s: the first fetch and every sixth complete one after
    // reconcile everything; the others ask the store for the spans since
    // a quarter hour at least an hour before the last complete fetch.
    timeout(Duration::from_secs(60), async {
        let relay =
            TestNode::start(b"relay".to_vec(), vec![], Duration::from_secs(3600), true).await;
        let mut cfg = DiscoveryConfig::new(Keypair::generate_ed25519());
        cfg.client_only = true;
        cfg.bootstrap = vec![relay.addr.clone()];
        cfg.client_fetch = Some(veilnet_discovery::FetchSlots {
            every: Duration::from_secs(1),
            from: Duration::from_millis(300),
            to: Duration::from_millis(700),
        });
        let asked = Arc::new(Mutex::new(Vec::new()));
        let a = asked.clone();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (client, _known, collect) =
            collecting(cfg, |records| Arc::new(Spans { records, asked: a })).await;
        // New records all along, so every fetch brings some.
        for n in 0..80 {
            relay
                .known
                .lock()
                .unwrap()
                .insert(format!("new-{n}").into_bytes());
            tokio::time::sleep(Duration::from_millis(200)).await;
            if asked.lock().unwrap().len() >= 8 {
                break;
            }
        }
        let asked = asked.lock().unwrap().clone();
        assert!(asked.len() >= 8, "{} recent fetches in 16 s", asked.len());
        for since in &asked {
            assert_eq!(since % 900, 0);
            assert!(*since + veilnet_discovery::CLIENT_RECENT_MARGIN <= started + 2);
            assert!(*since + veilnet_discovery::CLIENT_RECENT_MARGIN + 900 >= started);
        }
        drop(client);
        relay.stop().await;
        collect.abort();
    })
    .await
    .expect("test finished in time");
}
