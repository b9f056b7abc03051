//! Whole-network tests: a real test network on loopback, used the way a user
//! would (SOCKS5, HTTP CONNECT, the control API).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veilnet_cell::TargetAddr;
use veilnet_control::{get_json, CircuitView, GuardView, NodeView};
use veilnet_testnet::http::{self, MARKER};
use veilnet_testnet::socks5::{self, Credentials};
use veilnet_testnet::{Testnet, TestnetOptions};

const BIG: u64 = 50 * 1024 * 1024;

/// Echoes everything, then closes its side after the client half-closes.
async fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A SOCKS5 stream to `target`, with the credentials of `user` if given.
async fn socks_connect(proxy: SocketAddr, target: SocketAddr, user: Option<&str>) -> TcpStream {
    let credentials = user.map(|user| Credentials { user, pass: "p" });
    socks5::open(proxy, &TargetAddr::Ip(target), credentials)
        .await
        .unwrap()
}

/// GETs `path` over an open tunnel; returns (body length, SHA-256 of body).
async fn get<S>(s: S, path: &str) -> (u64, [u8; 32])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let f = http::get(s, path).await.unwrap();
    assert_eq!(f.status, 200, "GET {path}");
    (f.len, f.sha256)
}

struct Tap {
    scanning: AtomicBool,
    scanned: AtomicU64,
    leaked: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_through_three_hops_and_no_plaintext_on_links() {
    let tap = Arc::new(Tap {
        scanning: AtomicBool::new(false),
        scanned: AtomicU64::new(0),
        leaked: AtomicBool::new(false),
    });
    let t2 = tap.clone();
    let opts = TestnetOptions {
        nodes: 10,
        exits: 2,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        http_proxy: Some("127.0.0.1:0".parse().unwrap()),
        control: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        tap: Some(Arc::new(move |bytes: &[u8]| {
            if t2.scanning.load(Ordering::Relaxed) {
                t2.scanned.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
                    t2.leaked.store(true, Ordering::Relaxed);
                }
            }
        })),
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    net.wait_ready(Duration::from_secs(30)).await.unwrap();
    let target = http::target().await.unwrap();
    let socks = net.client.socks_addr.unwrap();
    let http_proxy = net.client.http_addr.unwrap();
    let control = net.client.control_addr().unwrap();
    let expected = http::body_sha256(BIG);
    let big = http::bytes_path(BIG);

    let run = async {
        let t = Instant::now();
        let (n, sum) = get(socks_connect(socks, target, None).await, &big).await;
        assert_eq!(n, BIG);
        assert_eq!(sum, expected, "SOCKS5 download corrupted");
        eprintln!("50 MiB via SOCKS5 in {:?}", t.elapsed());
        let t = Instant::now();
        let (status, tunnel) = http::connect_tunnel(http_proxy, &target.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200, "HTTP CONNECT");
        let (n, sum) = get(tunnel.unwrap(), &big).await;
        assert_eq!(n, BIG);
        assert_eq!(sum, expected, "HTTP CONNECT download corrupted");
        eprintln!("50 MiB via HTTP CONNECT in {:?}", t.elapsed());

        // The control API shows the circuits: 3 distinct hops, none of them the client.
        let circuits: Vec<CircuitView> = get_json(control, "/v1/circuits").await.unwrap();
        assert!(!circuits.is_empty());
        let me = net.client.peer_id.to_string();
        for c in &circuits {
            assert_eq!(c.hops.len(), 3, "{c:?}");
            let mut h = c.hops.clone();
            h.sort();
            h.dedup();
            assert_eq!(h.len(), 3, "hops must be distinct: {c:?}");
            assert!(!c.hops.contains(&me), "the client is never its own hop");
        }
        let relays: Vec<String> = net.relays.iter().map(|n| n.peer_id.to_string()).collect();
        assert!(circuits
            .iter()
            .all(|c| c.hops.iter().all(|h| relays.contains(h))));
        let nodes: Vec<NodeView> = get_json(control, "/v1/nodes").await.unwrap();
        // The ten relays; the client publishes nothing.
        assert_eq!(nodes.len(), 10);
        assert!(nodes.iter().all(|n| n.peer_id != me));
        assert_eq!(nodes.iter().filter(|n| n.exit).count(), 2);

        // No plaintext on any link: send a marker-filled body both ways.
        tap.scanning.store(true, Ordering::Relaxed);
        let (n, _) = get(socks_connect(socks, target, None).await, "/marker/2000000").await;
        assert_eq!(n, 2_000_000);
        let up = socks_connect(socks, echo_target().await, None).await;
        let (mut r, mut w) = up.into_split();
        let sent: Vec<u8> = MARKER.iter().copied().cycle().take(500_000).collect();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        r.read_to_end(&mut echoed).await.unwrap();
        writer.await.unwrap();
        assert_eq!(
            echoed.len(),
            500_000,
            "echo through the circuit, half-closed"
        );
        tap.scanning.store(false, Ordering::Relaxed);
        let scanned = tap.scanned.load(Ordering::Relaxed);
        assert!(
            scanned > 3 * 2_000_000,
            "the tap must have seen the traffic ({scanned} bytes)"
        );
        assert!(
            !tap.leaked.load(Ordering::Relaxed),
            "plaintext crossed a link"
        );
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .unwrap();
    net.shutdown().await;
}

/// A ready 5-relay network with SOCKS and control ports, and a local target:
/// (network, target, SOCKS address, control address).
async fn small_net(dirtiness: Duration) -> (Testnet, SocketAddr, SocketAddr, SocketAddr) {
    let opts = TestnetOptions {
        nodes: 5,
        exits: 2,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        control: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        max_circuit_dirtiness: dirtiness,
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    net.wait_ready(Duration::from_secs(30)).await.unwrap();
    let target = http::target().await.unwrap();
    let socks = net.client.socks_addr.unwrap();
    let control = net.client.control_addr().unwrap();
    (net, target, socks, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_isolation_by_socks_credentials() {
    let (net, target, socks, control) = small_net(Duration::from_secs(600)).await;
    let run = async {
        let a = socks_connect(socks, target, Some("alice")).await;
        let b = socks_connect(socks, target, Some("bob")).await;
        let c = socks_connect(socks, target, Some("alice")).await;
        let circuits: Vec<CircuitView> = get_json(control, "/v1/circuits").await.unwrap();
        let used: Vec<_> = circuits.iter().filter(|c| c.streams > 0).collect();
        // alice's two streams share one circuit; bob's is on another.
        assert_eq!(used.len(), 2, "{circuits:?}");
        let mut streams: Vec<_> = used.iter().map(|c| c.streams).collect();
        streams.sort();
        assert_eq!(streams, vec![1, 2]);
        assert!(used.iter().all(|c| c.isolation.is_some()));
        assert_ne!(used[0].isolation, used[1].isolation);
        drop((a, b, c));
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_test_networks_still_carry_streams() {
    // Exits refuse one-hop circuits by default; a test network that builds
    // only those turns the refusal off for its exits.
    let opts = TestnetOptions {
        nodes: 2,
        exits: 1,
        hops: 1,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    let run = async {
        net.wait_ready(Duration::from_secs(30)).await.unwrap();
        let echo = echo_target().await;
        let mut s = socks_connect(net.client.socks_addr.unwrap(), echo, None).await;
        s.write_all(b"one hop").await.unwrap();
        let mut back = [0u8; 7];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"one hop");
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_donates_no_more_than_its_bandwidth_rate() {
    // One exit, capped at 128 KiB/s each way with a 128 KiB burst, carries
    // a 768 KiB download: its link writes cannot finish sooner than
    // (768 - 128) / 128 = 5 s, however fast the machine. (A lower bound
    // only: a slow machine makes it slower, never faster.)
    const RATE: u64 = 128 * 1024;
    const LEN: u64 = 768 * 1024;
    let opts = TestnetOptions {
        nodes: 1,
        exits: 1,
        hops: 1,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        relay_config: Some(Arc::new(|_, c: &mut veilnet_config::Config| {
            c.node.bandwidth_rate = RATE;
            c.node.bandwidth_burst = RATE;
        })),
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    let run = async {
        net.wait_ready(Duration::from_secs(30)).await.unwrap();
        let target = http::target().await.unwrap();
        let started = Instant::now();
        http::download(
            net.client.socks_addr.unwrap(),
            target,
            LEN,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let took = started.elapsed();
        eprintln!(
            "{LEN} bytes in {took:?}: {:.0} KiB/s",
            LEN as f64 / 1024.0 / took.as_secs_f64()
        );
        assert!(
            took >= Duration::from_millis(4500),
            "768 KiB through a 128 KiB/s relay in {took:?}"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_know_each_other_within_thirty_seconds() {
    let opts = TestnetOptions {
        nodes: 30,
        exits: 3,
        socks: None,
        gossip_interval: std::time::Duration::from_secs(2),
        ..TestnetOptions::default()
    };
    let start = Instant::now();
    let net = Testnet::start(opts).await.unwrap();
    let all = net.relays.len();
    let need = (all * 95).div_ceil(100);
    loop {
        let worst = net
            .relays
            .iter()
            .chain(std::iter::once(&net.client))
            .map(|n| n.known_nodes())
            .min()
            .unwrap();
        if worst >= need {
            eprintln!(
                "every node knows >= {worst}/{all} nodes after {:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {worst}/{all} known after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_move_to_a_new_circuit_after_max_dirtiness() {
    let (net, target, socks, control) = small_net(Duration::from_secs(1)).await;
    let run = async {
        let used = || async {
            let c: Vec<CircuitView> = get_json(control, "/v1/circuits").await.unwrap();
            c.into_iter()
                .filter(|c| c.streams > 0)
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        let first = socks_connect(socks, target, None).await;
        let a = used().await;
        assert_eq!(a.len(), 1);
        // Within the dirtiness time, a new stream shares the circuit.
        let second = socks_connect(socks, target, None).await;
        assert_eq!(used().await, a);
        drop(second);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // After it, new streams get a new circuit; the old one keeps its stream.
        let third = socks_connect(socks, target, None).await;
        let mut b = used().await;
        b.sort();
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(b.contains(&a[0]));
        drop((first, third));
        // Once its last stream is gone, the dirty circuit is closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c: Vec<CircuitView> = get_json(control, "/v1/circuits").await.unwrap();
            if c.iter().all(|c| c.id != a[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dirty circuit was never closed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap();
    net.shutdown().await;
}

/// A relay's policy that, once `refusing` names the relay, refuses every
/// CREATE from a client (a peer that is none of the network's relays): a
/// guard that kills every circuit at itself. CREATEs from relays (it as a
/// middle or exit) are still served, so only its guard role fails.
struct RefuseAsGuard {
    inner: Arc<dyn veilnet_proto::RelayPolicy>,
    me: libp2p::PeerId,
    refusing: Arc<std::sync::Mutex<Option<libp2p::PeerId>>>,
    relays: Arc<std::sync::Mutex<Vec<libp2p::PeerId>>>,
}

impl veilnet_proto::RelayPolicy for RefuseAsGuard {
    fn admit_create(
        &self,
        req: &veilnet_proto::CreateRequest,
    ) -> Result<(), veilnet_proto::Refusal> {
        let refusing = *self.refusing.lock().unwrap() == Some(self.me);
        if refusing && !self.relays.lock().unwrap().contains(&req.prev_peer) {
            return Err(veilnet_proto::Refusal::Other("test: a failing guard"));
        }
        self.inner.admit_create(req)
    }
    fn admit_extend(
        &self,
        req: &veilnet_proto::ExtendRequest,
    ) -> Result<(), veilnet_proto::Refusal> {
        self.inner.admit_extend(req)
    }
    fn admit_begin(
        &self,
        req: &veilnet_proto::BeginRequest<'_>,
    ) -> Result<(), veilnet_proto::Refusal> {
        self.inner.admit_begin(req)
    }
    fn admit_connect(
        &self,
        req: &veilnet_proto::ConnectRequest<'_>,
    ) -> Result<(), veilnet_proto::Refusal> {
        self.inner.admit_connect(req)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_fails_every_circuit_is_flagged_and_circuits_go_through_other_guards() {
    use veilnet_circmgr::Isolation;
    let refusing = Arc::new(std::sync::Mutex::new(None));
    let relays = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r2, rl2) = (refusing.clone(), relays.clone());
    let opts = TestnetOptions {
        nodes: 6,
        exits: 2,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        control: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        wrap_policy: Some(Arc::new(move |me, inner| {
            Arc::new(RefuseAsGuard {
                inner,
                me,
                refusing: r2.clone(),
                relays: rl2.clone(),
            }) as Arc<dyn veilnet_proto::RelayPolicy>
        })),
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    *relays.lock().unwrap() = net.relays.iter().map(|n| n.peer_id).collect();
    let circuits = net.client.circuits.clone();
    let run = async {
        net.wait_ready(Duration::from_secs(30)).await.unwrap();
        // the first primary guard starts failing every circuit
        let bad = circuits
            .guards()
            .into_iter()
            .find(|g| g.primary)
            .unwrap()
            .peer;
        *refusing.lock().unwrap() = Some(bad);
        let flagged = |peer| {
            circuits
                .guards()
                .iter()
                .any(|g| g.peer == peer && g.flagged)
        };
        let mut failed = 0;
        for _ in 0..40 {
            if flagged(bad) {
                break;
            }
            match circuits.build(None, Isolation::NONE).await {
                Ok(c) => assert_ne!(c.hops()[0], bad, "the failing guard built a circuit"),
                Err(_) => failed += 1,
            }
        }
        assert!(flagged(bad), "not flagged after {failed} failed builds");
        let view = circuits
            .guards()
            .into_iter()
            .find(|g| g.peer == bad)
            .unwrap();
        assert!(!view.primary && view.attempts >= 20 && view.successes * 10 < view.attempts);
        assert!(failed > 0, "the builds through it failed");
        // the control API shows it flagged
        let control = net.client.control_addr().unwrap();
        let shown: Vec<GuardView> = get_json(control, "/v1/guards").await.unwrap();
        let row = shown.iter().find(|g| g.peer_id == bad.to_string()).unwrap();
        assert!(row.flagged && !row.primary && row.circuits_attempted >= 20);
        assert!(shown.iter().any(|g| g.primary && !g.flagged));
        // circuits keep working, through the other guards only
        for _ in 0..10 {
            let c = circuits.build(None, Isolation::NONE).await.unwrap();
            assert_ne!(c.hops()[0], bad);
            assert!(circuits.guards().iter().any(|g| g.peer == c.hops()[0]));
        }
        let echo = echo_target().await;
        let mut s = socks_connect(net.client.socks_addr.unwrap(), echo, None).await;
        s.write_all(b"guards").await.unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"guards");
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_guard_gives_way_to_the_next_guard_and_stays_a_guard() {
    use veilnet_circmgr::Isolation;
    let opts = TestnetOptions {
        nodes: 6,
        exits: 3,
        socks: None,
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.unwrap();
    let circuits = net.client.circuits.clone();
    let run = async {
        net.wait_ready(Duration::from_secs(30)).await.unwrap();
        let primaries: Vec<_> = circuits
            .guards()
            .into_iter()
            .filter(|g| g.primary)
            .map(|g| g.peer)
            .collect();
        assert_eq!(primaries.len(), 3);
        // the first primary guard goes away (its descriptor stays listed)
        let down = net
            .relays
            .iter()
            .find(|n| n.peer_id == primaries[0])
            .unwrap();
        down.shutdown().await;
        let is_down = || {
            circuits
                .guards()
                .iter()
                .any(|g| g.peer == primaries[0] && !g.reachable)
        };
        let mut built = 0;
        for _ in 0..10 {
            // Until the client has tried the stopped relay itself, a path
            // through it (as any hop) can fail. Once it is marked
            // unreachable, no path uses it and every build works: three
            // exits leave the next guard an exit other than itself.
            let known = is_down();
            match circuits.build(None, Isolation::NONE).await {
                Ok(c) => {
                    assert_eq!(
                        c.hops()[0],
                        primaries[1],
                        "the next primary guard, in order"
                    );
                    assert!(
                        !c.hops().contains(&primaries[0]),
                        "no hop is the guard we could not reach"
                    );
                    built += 1;
                }
                Err(e) => assert!(
                    !known,
                    "a build failed after the guard was marked down: {e}"
                ),
            }
        }
        assert!(is_down(), "the stopped guard was never tried");
        assert!(built > 0, "no circuit through the next guard");
        let view = circuits
            .guards()
            .into_iter()
            .find(|g| g.peer == primaries[0])
            .unwrap();
        assert!(!view.reachable && view.unreachable_since.is_some());
        assert!(view.primary, "replaced only after guard_replace_after_secs");
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap();
    net.shutdown().await;
}

/// A relay restarted with nobody to ask (no bootstrap peer, its known
/// peers forgotten) holds the directory it had, from its cache alone: a
/// restart fetches what changed, not everything. Without the cache it
/// would know itself only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_comes_back_with_the_directory_it_held() {
    use veilnet_testnet::{LocalNetwork, LocalRole};
    let net = Testnet::start(TestnetOptions {
        nodes: 3,
        exits: 1,
        ..TestnetOptions::default()
    })
    .await
    .unwrap();
    net.wait_ready(Duration::from_secs(60)).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "veilnet-restart-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    veilnet_config::init_data_dir(&dir).unwrap();
    let bootstrap = net.relays[0]
        .p2p_addrs
        .iter()
        .map(|a| LocalNetwork::bootstrap_addr(a, net.relays[0].peer_id))
        .collect();
    let mut config = LocalNetwork::default().config(LocalRole::Relay, dir.clone(), 0, 0, bootstrap);
    let start = |config: veilnet_config::Config| {
        let keys = veilnet_config::load_keys(&config.data_dir, veilnet_config::unix_now()).unwrap();
        let mut opts = veilnet_node::NodeOptions::new(config, keys);
        opts.gossip_interval = Duration::from_millis(200);
        opts.persist = true;
        veilnet_node::Node::start(opts)
    };
    let node = start(config.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.known_nodes() < 4 {
        assert!(Instant::now() < deadline, "knows {}", node.known_nodes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    assert!(dir.join(veilnet_dir::cache::CACHE_FILE).exists());
    let _ = std::fs::remove_file(dir.join(veilnet_config::PEERS_FILE));
    config.node.bootstrap = Vec::new();
    let again = start(config).await.unwrap();
    assert_eq!(again.known_nodes(), 4, "the three relays and itself");
    again.shutdown().await;
    net.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
