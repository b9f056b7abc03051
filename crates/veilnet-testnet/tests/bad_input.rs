//! Bad input: every test feeds one kind of malformed or hostile input to a
//! running test network and checks that (a) it is refused with a clear error
//! and (b) the network keeps serving: a normal SOCKS5 download through it
//! still works afterwards (except where the network deliberately cannot reach
//! the local target, see `refused_target_gets_socks_0x02_and_http_403`).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::PeerId;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use veilnet_cell::{Cell, CellCommand, CircId, TargetAddr, CELL_LEN};
use veilnet_circmgr::Isolation;
use veilnet_control::get_json;
use veilnet_crypto::circuit::ClientHandshake;
use veilnet_crypto::link::{LinkHandshake, RecordOpener, RecordSealer, RECORD_HEADER_LEN};
use veilnet_dir::{Descriptor, DescriptorError, Directory, Roles, SignedDescriptor};
use veilnet_error::{ErrorKind, HasKind};
use veilnet_node::Node;
use veilnet_proto::HopSpec;
use veilnet_testnet::socks5;
use veilnet_testnet::{http, Testnet, TestnetOptions};

use common::{assert_no_task_panics, eventually, wait_log};

/// Size of the "a normal user still gets served" download.
const DL: u64 = 256 * 1024;
/// Upper bound for every test.
const TEST_LIMIT: Duration = Duration::from_secs(150);
const SHORT: Duration = Duration::from_secs(10);

async fn start_net(exits: usize, allow_private_targets: bool, http: bool) -> Testnet {
    common::init();
    let opts = TestnetOptions {
        nodes: 5,
        exits,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        http_proxy: http.then(|| "127.0.0.1:0".parse().unwrap()),
        allow_private_targets,
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.expect("start the test network");
    net.wait_ready(Duration::from_secs(45))
        .await
        .expect("test network ready");
    net
}

// ---------------------------------------------------------------------------
// 1. Malformed SOCKS requests
// ---------------------------------------------------------------------------

/// Sends `chunks` to the SOCKS port (optionally half-closing), then reads
/// until the proxy closes the connection. Returns everything it answered.
/// Fails if the proxy does not close within [`SHORT`].
async fn socks_exchange(proxy: SocketAddr, chunks: &[&[u8]], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    for c in chunks {
        s.write_all(c).await.unwrap();
    }
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    let closed = timeout(SHORT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A reset also means "closed"; what was read so far is kept.
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the proxy kept the connection open after {chunks:?} (answered {out:?})"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socks_requests_are_refused() {
    let net = start_net(2, true, false).await;
    let proxy = net.client.socks_addr.unwrap();
    let target = http::target().await.unwrap();
    let run = async {
        // A reply to a request: VER REP RSV ATYP(1) 0.0.0.0:0.
        let reply = |code: u8| vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0];
        let ok_method = [5u8, 0];
        let port = target.port().to_be_bytes();

        // SOCKS4 CONNECT: unsupported version; SOCKS5 has no way to say so, the
        // proxy just closes.
        let socks4 = [4, 1, port[0], port[1], 127, 0, 0, 1, b'u', 0];
        assert_eq!(socks_exchange(proxy, &[&socks4], false).await, b"");
        // Garbage (an HTTP request on the SOCKS port; random bytes).
        let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(socks_exchange(proxy, &[http], false).await, b"");
        let mut junk = [0u8; 200];
        rand::thread_rng().fill_bytes(&mut junk);
        junk[0] = 0xde;
        assert_eq!(socks_exchange(proxy, &[&junk], false).await, b"");
        // Zero methods and no acceptable method: "no acceptable methods" (0xFF).
        assert_eq!(socks_exchange(proxy, &[&[5, 0]], false).await, [5, 0xff]);
        assert_eq!(
            socks_exchange(proxy, &[&[5, 2, 0x80, 0x03]], false).await,
            [5, 0xff]
        );
        // BIND and UDP ASSOCIATE: "command not supported" (0x07).
        for cmd in [2u8, 3] {
            let req = [5, cmd, 0, 1, 127, 0, 0, 1, port[0], port[1]];
            let got = socks_exchange(proxy, &[&[5, 1, 0], &req], false).await;
            assert_eq!(got, [ok_method.to_vec(), reply(7)].concat(), "cmd {cmd}");
        }
        // Unknown address type 0x08: "address type not supported" (0x08).
        let req = [5, 1, 0, 8, 127, 0, 0, 1, port[0], port[1]];
        let got = socks_exchange(proxy, &[&[5, 1, 0], &req], false).await;
        assert_eq!(got, [ok_method.to_vec(), reply(8)].concat());
        // Non-zero reserved byte, empty hostname, port 0: general failure (0x01).
        for req in [
            vec![5, 1, 1, 1, 127, 0, 0, 1, port[0], port[1]],
            vec![5, 1, 0, 3, 0, port[0], port[1]],
            vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 0],
        ] {
            let got = socks_exchange(proxy, &[&[5, 1, 0], &req], false).await;
            assert_eq!(got, [ok_method.to_vec(), reply(1)].concat(), "{req:?}");
        }
        // Truncated greeting / truncated request, then close: no reply beyond
        // the method choice, the proxy closes too.
        assert_eq!(socks_exchange(proxy, &[&[5]], true).await, b"");
        assert_eq!(socks_exchange(proxy, &[&[5, 2, 0]], true).await, b"");
        let got = socks_exchange(proxy, &[&[5, 1, 0], &[5, 1, 0, 1, 127, 0]], true).await;
        assert_eq!(got, ok_method);

        // The refusals are logged with their reason.
        for needle in [
            "refusing a SOCKS client: unsupported SOCKS version 0x04",
            "refusing a SOCKS client: unsupported SOCKS version 0x47",
            "refusing a SOCKS client: client offered zero authentication methods",
            "refusing a SOCKS client: request refused (CommandNotSupported)",
            "refusing a SOCKS client: request refused (AddressTypeNotSupported)",
        ] {
            assert!(wait_log(needle, SHORT).await, "log lacks {needle:?}");
        }

        // Other users are still served, repeatedly.
        http::download(proxy, target, DL, Duration::from_secs(20))
            .await
            .unwrap();
        http::download(proxy, target, DL, Duration::from_secs(20))
            .await
            .unwrap();
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Refused targets
// ---------------------------------------------------------------------------

/// A listener that counts the connections it gets (it must get none).
async fn counting_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, hits)
}

/// A SOCKS5 CONNECT to `target`; returns the reply code.
async fn socks_code(proxy: SocketAddr, target: TargetAddr) -> u8 {
    socks5::connect(proxy, &target, None).await.unwrap().0
}

/// An HTTP CONNECT; returns the status code.
async fn http_connect_status(proxy: SocketAddr, authority: &str) -> u16 {
    http::connect_tunnel(proxy, authority).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_gets_socks_0x02_and_http_403() {
    // Default exit policy: loopback and private targets are refused.
    let net = start_net(2, false, true).await;
    let socks = net.client.socks_addr.unwrap();
    let http = net.client.http_addr.unwrap();
    let (target, hits) = counting_target().await;
    let run = async {
        // Refused when choosing the exit: no exit accepts 127.0.0.1.
        let code = socks_code(socks, TargetAddr::Ip(target)).await;
        assert_eq!(code, 0x02, "SOCKS reply for a loopback target");
        // Other private ranges and IPv6 loopback too (nothing is sent to them).
        for t in ["10.1.2.3:80", "192.168.1.1:443", "169.254.169.254:80"] {
            let code = socks_code(socks, TargetAddr::Ip(t.parse().unwrap())).await;
            assert_eq!(code, 0x02, "SOCKS reply for {t}");
        }
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, target.port()));
        let code = socks_code(socks, TargetAddr::Ip(v6)).await;
        assert_eq!(code, 0x02, "SOCKS reply for [::1]");
        // Refused by the exit itself: "localhost" is resolved by the exit,
        // which must refuse the loopback addresses it resolves to.
        let localhost = TargetAddr::domain("localhost", target.port()).unwrap();
        let code = socks_code(socks, localhost).await;
        assert_eq!(code, 0x02, "SOCKS reply for localhost (exit-side check)");

        // The HTTP CONNECT proxy answers 403 for both.
        let status = http_connect_status(http, &target.to_string()).await;
        assert_eq!(status, 403);
        let status = http_connect_status(http, &format!("localhost:{}", target.port())).await;
        assert_eq!(status, 403);

        // The refusal really happened: the target never saw a connection.
        assert_eq!(hits.load(Ordering::SeqCst), 0, "an exit reached loopback");

        // Still serving: the exits cannot reach any local target by design, so
        // "still serving" here means the client still builds fresh circuits
        // through the network and its proxies still answer every request.
        net.client.circuits.close_all();
        let c = net
            .client
            .circuits
            .build(None, Isolation::NONE)
            .await
            .expect("a fresh circuit after the refusals");
        assert_eq!(c.info().hops.len(), 3);
        let code = socks_code(socks, TargetAddr::Ip(target)).await;
        assert_eq!(code, 0x02);
        let status = http_connect_status(http, &target.to_string()).await;
        assert_eq!(status, 403);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

// ---------------------------------------------------------------------------
// A raw link client: real link handshake, then hand-made records.
// ---------------------------------------------------------------------------

struct RawLink {
    stream: TcpStream,
    sealer: RecordSealer,
    opener: RecordOpener,
    me: PeerId,
}

impl RawLink {
    /// Connects to `relay`'s link port and runs the real link handshake.
    async fn connect(relay: &Node) -> RawLink {
        let identity = Keypair::generate_ed25519();
        let me = identity.public().to_peer_id();
        let mut hs = LinkHandshake::initiator(&identity, &relay.core.link_key()).unwrap();
        let mut stream = TcpStream::connect(relay.link_addr.unwrap()).await.unwrap();
        let mut buf = vec![0u8; veilnet_crypto::link::MAX_HANDSHAKE_MSG];
        timeout(SHORT, async {
            while !hs.is_finished() {
                if hs.wants_write() {
                    let msg = hs.write_message().unwrap();
                    stream.write_all(&msg).await.unwrap();
                } else {
                    let mut prefix = [0u8; 2];
                    stream.read_exact(&mut prefix).await.unwrap();
                    let n = LinkHandshake::frame_len(prefix).unwrap();
                    stream.read_exact(&mut buf[..n]).await.unwrap();
                    hs.read_message(&buf[..n]).unwrap();
                }
            }
        })
        .await
        .expect("link handshake timed out");
        let session = hs.finish().unwrap();
        assert_eq!(session.remote_peer, relay.peer_id, "authenticated relay");
        // Wait until the relay registered the link, so that "the link is gone"
        // checks later mean something.
        assert!(
            eventually(SHORT, || has_link(relay, me)).await,
            "relay never registered our link"
        );
        RawLink {
            stream,
            sealer: session.sealer,
            opener: session.opener,
            me,
        }
    }

    /// A properly sealed record holding `cells`.
    fn seal(&mut self, cells: &[Vec<u8>]) -> Vec<u8> {
        let mut rec = vec![0u8; RECORD_HEADER_LEN];
        for c in cells {
            assert_eq!(c.len(), CELL_LEN);
            rec.extend_from_slice(c);
        }
        rec.extend_from_slice(&[0u8; 16]);
        self.sealer
            .seal(&mut rec, std::time::Instant::now())
            .unwrap();
        rec
    }

    async fn send(&mut self, cells: &[Vec<u8>]) {
        let rec = self.seal(cells);
        self.stream.write_all(&rec).await.unwrap();
    }

    /// Reads records until a cell for `circ` arrives (or `SHORT` passes).
    async fn recv_for(&mut self, circ: CircId) -> Option<Cell> {
        timeout(SHORT, async {
            loop {
                let mut hdr = [0u8; RECORD_HEADER_LEN];
                self.stream.read_exact(&mut hdr).await.ok()?;
                let (n, len) = RecordOpener::parse_header(hdr).ok()?;
                let mut body = vec![0u8; len];
                self.stream.read_exact(&mut body).await.ok()?;
                self.opener.open(hdr, &mut body).ok()?;
                for chunk in body[..n * CELL_LEN].chunks_exact(CELL_LEN) {
                    // Invalid cells (none expected) are skipped.
                    if let Ok(cell) = Cell::decode(chunk) {
                        if cell.circ_id() == Some(circ) {
                            return Some(cell);
                        }
                    }
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Builds a real one-hop circuit with CREATE / CREATED; returns its id.
    async fn create(&mut self, onion_key: &[u8; 32]) -> CircId {
        let circ = CircId::new(rand::random::<u32>() | 0x8000_0000).unwrap();
        let (hs, msg) = ClientHandshake::start(onion_key).unwrap();
        let cell = Cell::handshake(circ, CellCommand::Create, &msg).unwrap();
        self.send(&[cell.as_bytes().to_vec()]).await;
        let reply = self.recv_for(circ).await.expect("no answer to CREATE");
        assert_eq!(reply.command().unwrap(), CellCommand::Created, "{reply:?}");
        hs.finish(reply.handshake_msg().unwrap())
            .expect("CREATED completes the circuit handshake");
        circ
    }
}

fn has_link(node: &Node, peer: PeerId) -> bool {
    node.core.links().iter().any(|l| l.peer == peer)
}

fn onion_key(net: &Testnet, peer: &PeerId) -> [u8; 32] {
    net.client
        .directory
        .lock()
        .unwrap()
        .get(peer)
        .unwrap()
        .onion_key
}

fn raw_cell(circ: u32, command: u8, random_body: bool) -> Vec<u8> {
    let mut c = vec![0u8; CELL_LEN];
    if random_body {
        rand::thread_rng().fill_bytes(&mut c);
    }
    c[..4].copy_from_slice(&circ.to_be_bytes());
    c[4] = command;
    c
}

/// Checks that `relay` (every circuit's exit when the network has one exit)
/// still accepts circuits and carries downloads.
async fn still_serving(net: &Testnet, relay: &Node) {
    let spec = HopSpec {
        peer: relay.peer_id,
        addr: relay.link_addr.unwrap(),
        onion_key: onion_key(net, &relay.peer_id),
        link_key: relay.core.link_key(),
    };
    let one_hop = net
        .client
        .core
        .build_circuit(&[spec])
        .await
        .expect("the attacked relay still accepts circuits");
    one_hop.close();
    // Fresh circuits only: drop the pool built before the attack.
    net.client.circuits.close_all();
    let target = http::target().await.unwrap();
    let proxy = net.client.socks_addr.unwrap();
    http::download(proxy, target, DL, Duration::from_secs(30))
        .await
        .unwrap();
    http::download(proxy, target, DL, Duration::from_secs(30))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// 3. Garbage and truncated cells on a relay's link port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_cells_on_a_link_port() {
    // One exit: every circuit ends at relays[0], the node under attack.
    let net = start_net(1, true, false).await;
    let relay = net.relays[0].clone();
    let run = async {
        let refused_before = relay.core.stats.cells_refused.load(Ordering::Relaxed);

        // (i) 100 random bytes instead of a handshake, then close; and a
        // handshake frame claiming 65535 bytes.
        for first in [None, Some([0xffu8, 0xff])] {
            let mut junk = [0u8; 100];
            rand::thread_rng().fill_bytes(&mut junk);
            if let Some(p) = first {
                junk[..2].copy_from_slice(&p);
            }
            let mut s = TcpStream::connect(relay.link_addr.unwrap()).await.unwrap();
            s.write_all(&junk).await.unwrap();
            // A prober that does not know the link key gets no answer at all.
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = timeout(SHORT, s.read_to_end(&mut rest)).await;
            assert!(
                rest.is_empty(),
                "the relay answered a probe with {} bytes",
                rest.len()
            );
        }
        assert!(
            wait_log("inbound link failed", SHORT).await,
            "the failed handshakes are logged"
        );

        // (ii) Real handshake, then a record header claiming 1 cell followed
        // by only 100 bytes, then close: the relay drops the link.
        let mut link = RawLink::connect(&relay).await;
        let mut rec = link.seal(&[raw_cell(0x8000_0001, 3, true)]);
        rec.truncate(RECORD_HEADER_LEN + 100);
        link.stream.write_all(&rec).await.unwrap();
        link.stream.shutdown().await.unwrap();
        let me = link.me;
        drop(link);
        assert!(
            eventually(SHORT, || !has_link(&relay, me)).await,
            "the relay kept a link whose record was truncated"
        );

        // (iii) A properly sealed record with a RELAY cell for an unknown
        // circuit, a cell with an unknown command byte and a RELAY cell with
        // circuit id 0: all three are dropped, the link survives.
        let stats = &relay.core.stats;
        let unknown_before = stats.unknown_cell_commands.load(Ordering::Relaxed);
        let mut link = RawLink::connect(&relay).await;
        link.send(&[
            raw_cell(0x8000_1234, 3, true),
            raw_cell(0x8000_4321, 0x77, true),
            raw_cell(0, 3, true),
        ])
        .await;
        assert!(wait_log("RELAY on unknown circuit", SHORT).await);
        // An unknown command may be a newer version's: ignored, not refused.
        assert!(wait_log("ignoring a cell with unknown command 119", SHORT).await);
        assert!(wait_log("dropping cell: cell command Relay with circuit id 0", SHORT).await);
        assert!(
            stats.cells_refused.load(Ordering::Relaxed) > refused_before,
            "the malformed cell is counted as refused"
        );
        assert!(
            stats.unknown_cell_commands.load(Ordering::Relaxed) > unknown_before,
            "the unknown command is counted"
        );
        // The same link still works: a real CREATE gets its CREATED.
        let key = onion_key(&net, &relay.peer_id);
        link.create(&key).await;
        assert!(has_link(&relay, link.me));

        // (iv) A sealed record with one flipped ciphertext byte: the record
        // layer refuses it and the relay drops the link.
        let mut link2 = RawLink::connect(&relay).await;
        let mut rec = link2.seal(&[raw_cell(0x8000_0002, 3, true)]);
        rec[100] ^= 0x40;
        link2.stream.write_all(&rec).await.unwrap();
        assert!(
            eventually(SHORT, || !has_link(&relay, link2.me)).await,
            "the relay kept a link after a forged record"
        );
        assert!(wait_log("link failed: crypto: authentication failed", SHORT).await);

        // (v) Record headers claiming 0 and 65535 cells.
        for hdr in [[0u8, 0], [0xff, 0xff]] {
            let mut l = RawLink::connect(&relay).await;
            l.stream.write_all(&hdr).await.unwrap();
            l.stream.write_all(&[0u8; 64]).await.unwrap();
            assert!(
                eventually(SHORT, || !has_link(&relay, l.me)).await,
                "the relay kept a link after record header {hdr:?}"
            );
        }
        assert!(wait_log("link failed: crypto: bad length 0", SHORT).await);
        assert!(wait_log("link failed: crypto: bad length 65535", SHORT).await);

        still_serving(&net, &relay).await;
        drop(link);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. A relay cell with a bad tag
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_cell_with_bad_tag_gets_destroy_protocol() {
    let net = start_net(1, true, false).await;
    let relay = net.relays[0].clone();
    let run = async {
        let key = onion_key(&net, &relay.peer_id);
        let mut link = RawLink::connect(&relay).await;
        let circ = link.create(&key).await;
        let refused_before = relay.core.stats.cells_refused.load(Ordering::Relaxed);

        // A RELAY cell whose body (onion header included) is random: its tag
        // cannot verify.
        link.send(&[raw_cell(circ.get(), CellCommand::Relay as u8, true)])
            .await;
        let reply = link
            .recv_for(circ)
            .await
            .expect("no DESTROY after a bad tag");
        assert_eq!(reply.as_bytes()[4], 4, "command DESTROY: {reply:?}");
        assert_eq!(reply.body()[0], 1, "reason Protocol");
        assert_eq!(
            reply.destroy_reason(),
            veilnet_cell::DestroyReason::Protocol
        );
        assert!(
            wait_log(
                "destroying a circuit: relay cell failed authentication",
                SHORT
            )
            .await
        );
        assert!(relay.core.stats.cells_refused.load(Ordering::Relaxed) > refused_before);

        // Only that circuit died: the link still builds a new one.
        link.create(&key).await;
        assert!(has_link(&relay, link.me));

        still_serving(&net, &relay).await;
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Descriptors with bad signatures
// ---------------------------------------------------------------------------

/// `original` with another bandwidth in its body: still a well-formed
/// descriptor, but no longer the signed one.
fn tamper(original: &SignedDescriptor) -> SignedDescriptor {
    let o = original.verify(veilnet_config::unix_now()).unwrap();
    let mut d = o.clone();
    d.bandwidth = o.bandwidth ^ 0x5555;
    SignedDescriptor {
        body: d.to_body().unwrap(),
        signature: original.signature.clone(),
    }
}

/// A discovery node (a relay to the others: it listens and serves sync)
/// that offers `records`, whatever they are, and bootstraps from `target`:
/// its peer id, its handle, and the task draining its events.
async fn gossip_to(
    target: &Node,
    records: Vec<Vec<u8>>,
) -> (
    PeerId,
    veilnet_discovery::DiscoveryHandle,
    tokio::task::JoinHandle<()>,
) {
    let provider: veilnet_discovery::RecordProvider = Arc::new(move || records.clone());
    let mut cfg = veilnet_discovery::DiscoveryConfig::new(Keypair::generate_ed25519());
    let gossiper = cfg.keypair.public().to_peer_id();
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = target
        .p2p_addrs
        .iter()
        .map(|a| {
            a.clone()
                .with(libp2p::multiaddr::Protocol::P2p(target.peer_id))
        })
        .collect();
    cfg.exchange_interval = Duration::from_millis(500);
    let (handle, mut events) = veilnet_discovery::spawn(cfg, provider).await.unwrap();
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    (gossiper, handle, drain)
}

/// `template` (a real relay's descriptor) rewritten as an exit of
/// `identity`'s, with sequence number `seq`, published `now`, and no libp2p
/// addresses.
fn exit_as(template: &Descriptor, identity: &Keypair, seq: u64, now: u64) -> Descriptor {
    let mut d = template.clone();
    d.peer_id = identity.public().to_peer_id();
    d.identity_key = identity.public().encode_protobuf();
    d.p2p_addrs = Vec::new();
    d.roles = Roles {
        relay: true,
        exit: true,
    };
    d.seq = seq;
    d.published = now;
    d
}

/// A descriptor for `subject`'s identity, signed by `signer`.
fn signed_by(d: &Descriptor, signer: &Keypair) -> SignedDescriptor {
    let body = d.to_body().unwrap();
    let signature = signer
        .sign(&[veilnet_dir::SIGNING_CONTEXT, &body].concat())
        .unwrap();
    SignedDescriptor { body, signature }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_with_bad_signatures_are_refused() {
    let net = start_net(2, true, false).await;
    let run = async {
        let now = veilnet_config::unix_now();
        let victim = net.relays[1].peer_id;
        let (original, template) = {
            let dir = net.client.directory.lock().unwrap();
            (
                dir.signed(&victim).cloned().unwrap(),
                dir.get(&victim).cloned().unwrap(),
            )
        };

        // A tampered body: refused with BadSignature naming the victim.
        let tampered = tamper(&original);
        let err = Directory::new(net.client.peer_id)
            .insert(&tampered, now)
            .unwrap_err();
        assert_eq!(err, DescriptorError::BadSignature { peer: victim });
        assert_eq!(err.kind(), ErrorKind::PeerMisbehaved);
        assert_eq!(
            err.to_string(),
            format!("descriptor of {victim}: bad signature")
        );
        // Also against a directory that holds the genuine one, which stays.
        let mut copy = net.client.directory.lock().unwrap().clone();
        assert_eq!(
            copy.insert(&tampered, now).unwrap_err(),
            DescriptorError::BadSignature { peer: victim }
        );
        assert_eq!(copy.signed(&victim), Some(&original));

        // A forged descriptor: a fresh identity, signed by another key. It
        // claims to be an exit so that accepting it would poison paths.
        let fresh = Keypair::generate_ed25519();
        let forger = Keypair::generate_ed25519();
        let forged_peer = fresh.public().to_peer_id();
        let mut d = exit_as(&template, &fresh, 1, now);
        d.link_addrs = vec!["127.0.0.1:1".parse().unwrap()];
        let forged = signed_by(&d, &forger);
        assert_eq!(
            Directory::new(net.client.peer_id)
                .insert(&forged, now)
                .unwrap_err(),
            DescriptorError::BadSignature { peer: forged_peer }
        );

        // A control record: a valid, self-signed descriptor of a non-relay.
        // It must arrive, which proves the gossip really delivered the batch.
        let honest = Keypair::generate_ed25519();
        let honest_peer = honest.public().to_peer_id();
        let mut h = template.clone();
        h.peer_id = honest_peer;
        h.identity_key = honest.public().encode_protobuf();
        h.link_addrs = Vec::new();
        h.p2p_addrs = Vec::new();
        h.roles = Roles::default();
        h.exit_policy = veilnet_policy::ExitPolicy::reject_all();
        h.seq = 1;
        h.published = now;
        let control = h.sign(&honest).unwrap();

        // Push them into relays[0] over the gossip protocol.
        let target = net.relays[0].clone();
        // Claims a 256-byte body but carries 50 bytes.
        let mut garbage = vec![0u8, 0, 1, 0];
        garbage.extend_from_slice(&[0xa5; 50]);
        let records = vec![
            tampered.to_bytes(),
            forged.to_bytes(),
            garbage,
            control.to_bytes(),
        ];
        let (gossiper, handle, drain) = gossip_to(&target, records).await;

        assert!(
            eventually(Duration::from_secs(20), || target
                .directory
                .lock()
                .unwrap()
                .get(&honest_peer)
                .is_some())
            .await,
            "the gossiped control record never arrived"
        );
        // A few more rounds, so the records spread to every node.
        assert!(
            eventually(Duration::from_secs(20), || net
                .client
                .directory
                .lock()
                .unwrap()
                .get(&honest_peer)
                .is_some())
            .await
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        for n in net.relays.iter().chain(std::iter::once(&net.client)) {
            let dir = n.directory.lock().unwrap();
            assert!(
                dir.get(&forged_peer).is_none(),
                "{} accepted the forged descriptor",
                n.peer_id
            );
            assert_eq!(
                dir.signed(&victim),
                Some(&original),
                "{} holds a changed descriptor of the victim",
                n.peer_id
            );
        }
        // The refusals are logged with their reason and the sender.
        for needle in [
            format!("rejected a descriptor relayed by {gossiper}: descriptor of {victim}: bad signature"),
            format!(
                "rejected a descriptor relayed by {gossiper}: descriptor of {forged_peer}: bad signature"
            ),
            format!("rejected a descriptor relayed by {gossiper}: descriptor truncated"),
        ] {
            assert!(wait_log(&needle, SHORT).await, "log lacks {needle:?}");
        }
        handle.shutdown().await;
        drain.abort();

        let target = http::target().await.unwrap();
        let proxy = net.client.socks_addr.unwrap();
        net.client.circuits.close_all();
        http::download(proxy, target, DL, Duration::from_secs(30))
            .await
            .unwrap();
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_relay_is_shown_and_avoided_by_every_node() {
    common::init();
    let opts = TestnetOptions {
        nodes: 5,
        exits: 2,
        socks: Some("127.0.0.1:0".parse().unwrap()),
        control: Some("127.0.0.1:0".parse().unwrap()),
        allow_private_targets: true,
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.expect("start the test network");
    net.wait_ready(Duration::from_secs(45))
        .await
        .expect("test network ready");
    let run = async {
        let now = veilnet_config::unix_now();
        // A relay (an exit, to make it attractive) that signs two different
        // descriptors with one sequence number.
        let template = {
            let dir = net.client.directory.lock().unwrap();
            dir.get(&net.relays[1].peer_id).cloned().unwrap()
        };
        let rogue = Keypair::generate_ed25519();
        let rogue_peer = rogue.public().to_peer_id();
        let mut d = exit_as(&template, &rogue, 7, now);
        let first = d.sign(&rogue).unwrap();
        d.bandwidth += 1;
        let second = d.sign(&rogue).unwrap();
        let mut digests = [hex::encode(first.digest()), hex::encode(second.digest())];
        digests.sort();

        // It offers both over the sync protocol, to one relay only.
        let target = net.relays[0].clone();
        let records = vec![first.to_bytes(), second.to_bytes()];
        let (_, handle, drain) = gossip_to(&target, records).await;

        // Every node ends up with the proof, whichever copy reached it
        // first, and lists the relay nowhere.
        let all: Vec<&Arc<Node>> = net.relays.iter().chain([&net.client]).collect();
        assert!(
            eventually(Duration::from_secs(30), || all.iter().all(|n| n
                .directory
                .lock()
                .unwrap()
                .equivocations()
                .any(|e| e.peer == rogue_peer)))
            .await,
            "not every node holds the evidence"
        );
        for n in &all {
            let dir = n.directory.lock().unwrap();
            assert!(
                dir.get(&rogue_peer).is_none(),
                "{} lists the rogue",
                n.peer_id
            );
        }

        // The client's control API shows it, with both signed descriptors.
        let control = net.client.control_addr().unwrap();
        let shown: Vec<veilnet_control::EquivocationView> =
            get_json(control, "/v1/equivocations").await.unwrap();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0].peer_id, rogue_peer.to_string());
        assert_eq!(shown[0].seq, Some(7));
        assert_eq!(shown[0].kind, veilnet_control::EQUIVOCATED_DESCRIPTOR);
        assert_eq!(shown[0].digests, digests);
        for hexed in &shown[0].descriptors {
            let sd = SignedDescriptor::from_bytes(&hex::decode(hexed).unwrap()).unwrap();
            assert_eq!(sd.verify(now).unwrap().peer_id, rogue_peer);
        }
        let nodes: Vec<veilnet_control::NodeView> = get_json(control, "/v1/nodes").await.unwrap();
        assert!(nodes.iter().all(|n| n.peer_id != rogue_peer.to_string()));
        handle.shutdown().await;
        drain.abort();

        // Circuits still work, through honest relays only.
        let target = http::target().await.unwrap();
        let proxy = net.client.socks_addr.unwrap();
        http::download(proxy, target, DL, Duration::from_secs(30))
            .await
            .unwrap();
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measurer_that_forks_its_report_is_shown_and_weighs_nothing_on_every_node() {
    common::init();
    let opts = TestnetOptions {
        nodes: 5,
        exits: 2,
        control: Some("127.0.0.1:0".parse().unwrap()),
        // Reports are kept and shown; weights stay the advertised ones, so
        // the rogue would weigh something but for the proof.
        measure: Some(veilnet_config::MeasureConfig {
            required: false,
            ..veilnet_config::MeasureConfig::test_network()
        }),
        ..TestnetOptions::default()
    };
    let net = Testnet::start(opts).await.expect("start the test network");
    net.wait_ready(Duration::from_secs(45))
        .await
        .expect("test network ready");
    let run = async {
        let now = veilnet_config::unix_now();
        // A relay, listed like any other...
        let template = {
            let dir = net.client.directory.lock().unwrap();
            dir.get(&net.relays[1].peer_id).cloned().unwrap()
        };
        let rogue = Keypair::generate_ed25519();
        let rogue_peer = rogue.public().to_peer_id();
        let descriptor = exit_as(&template, &rogue, 7, now).sign(&rogue).unwrap();
        // ...that signs two reports of one period, each observing a relay
        // the other does not.
        let report = |target: PeerId| {
            veilnet_dir::Report {
                measurer: rogue_peer,
                published: now,
                observations: vec![veilnet_dir::Observation {
                    target,
                    bandwidth: 1_000_000,
                    reached: true,
                    since: now,
                }],
            }
            .sign(&rogue)
            .unwrap()
        };
        let (a, b) = (report(net.relays[0].peer_id), report(net.relays[2].peer_id));
        let mut digests = [
            hex::encode(veilnet_discovery::sync::digest(&a)),
            hex::encode(veilnet_discovery::sync::digest(&b)),
        ];
        digests.sort();

        // It offers all three to one relay only.
        let target = net.relays[0].clone();
        let records = vec![descriptor.to_bytes(), a, b];
        let (_, handle, drain) = gossip_to(&target, records).await;

        // Every node ends up with the proof, whichever report reached it
        // first, and gives the rogue no weight.
        let all: Vec<&Arc<Node>> = net.relays.iter().chain([&net.client]).collect();
        assert!(
            eventually(Duration::from_secs(30), || all.iter().all(|n| {
                let dir = n.directory.lock().unwrap();
                let forked = dir
                    .measurements()
                    .is_some_and(|m| m.forks().any(|f| f.measurer == rogue_peer));
                forked && dir.get(&rogue_peer).is_some() && dir.weights().get(&rogue_peer) == 0
            }))
            .await,
            "not every node holds the proof and weighs the rogue at nothing: {:?}",
            all.iter()
                .map(|n| {
                    let dir = n.directory.lock().unwrap();
                    (
                        dir.measurements().map(|m| (m.len(), m.forks().count())),
                        dir.get(&rogue_peer).is_some(),
                        dir.weights().get(&rogue_peer),
                    )
                })
                .collect::<Vec<_>>()
        );
        // An honest relay listed the same way weighs what it advertises.
        assert!(
            net.client
                .directory
                .lock()
                .unwrap()
                .weights()
                .get(&net.relays[1].peer_id)
                > 0
        );

        // The client's control API shows it, with both signed reports.
        let control = net.client.control_addr().unwrap();
        let shown: Vec<veilnet_control::EquivocationView> =
            get_json(control, "/v1/equivocations").await.unwrap();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0].peer_id, rogue_peer.to_string());
        assert_eq!(shown[0].kind, veilnet_control::EQUIVOCATED_REPORT);
        assert_eq!(shown[0].digests, digests);
        for hexed in &shown[0].reports {
            let v = veilnet_dir::VerifiedReport::decode(&hex::decode(hexed).unwrap()).unwrap();
            assert_eq!(v.report.measurer, rogue_peer);
        }
        handle.shutdown().await;
        drain.abort();
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    assert_no_task_panics();
    net.shutdown().await;
}
