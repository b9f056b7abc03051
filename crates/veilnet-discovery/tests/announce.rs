//! Announcement streams (`/veilnet/announce`) on loopback: they alone carry
//! a new record to every relay, and a peer that misuses them gets
//! nothing it did not earn and cannot disturb the node.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::TestNode;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{identify, swarm::NetworkBehaviour, StreamProtocol};
use tokio::time::timeout;
use veilnet_discovery::announce::{Frame, ANNOUNCE_PROTOCOL};
use veilnet_discovery::sync;

/// No reconciliation round within a test.
const HOUR: Duration = Duration::from_secs(3600);

fn quiet(cfg: &mut veilnet_discovery::DiscoveryConfig) {
    // One link of its own per node, announcements every 100 ms.
    cfg.target_peers = 1;
    cfg.announce_every = Duration::from_millis(100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_alone_carry_a_new_record_to_every_relay() {
    const N: usize = 6;
    timeout(Duration::from_secs(60), async {
        let nodes = TestNode::chain(N, HOUR, true, quiet).await;
        // Each node's first exchange (the dialer's, on its link to its
        // bootstrap) has run, and nothing is reconciled for an hour.
        timeout(Duration::from_secs(10), async {
            while !(1..N).all(|i| nodes[i].knows(format!("own-{}", i - 1).as_bytes())) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("first exchanges");
        // Identify tells each node which peers take announcements (it
        // runs as a link comes up; a loaded machine may take a while).
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The control: a record the head holds and does not announce
        // reaches nobody (nothing else carries records now) ...
        nodes[0].known.lock().unwrap().insert(b"silent".to_vec());
        // ... and the one it announces reaches every relay, most through
        // others that announce it on.
        nodes[0].publish(b"news from the head").await;
        let started = std::time::Instant::now();
        timeout(Duration::from_secs(15), async {
            while !nodes.iter().all(|n| n.knows(b"news from the head")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            let got: Vec<bool> = nodes
                .iter()
                .map(|n| n.knows(b"news from the head"))
                .collect();
            panic!("the record did not reach every relay by announcements: {got:?}")
        });
        println!("{N} relays have the record after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, n) in nodes.iter().enumerate().skip(1) {
            assert!(
                !n.knows(b"silent"),
                "node {i} reconciled: the test proves nothing"
            );
        }
        for n in nodes {
            n.stop().await;
        }
    })
    .await
    .expect("test finished in time");
}

#[derive(NetworkBehaviour)]
struct Peer {
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// `fut`, or a panic naming `what` if it takes longer than `secs` (each
/// step bounded on its own, so a failure says which one stalled).
async fn within<T>(what: &str, secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress in {secs} s"))
}

async fn write(s: &mut libp2p::Stream, bytes: &[u8]) {
    within("writing a frame", 10, async {
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
    })
    .await
}

async fn open(control: &mut libp2p_stream::Control, peer: libp2p::PeerId) -> libp2p::Stream {
    within(
        "opening a stream",
        10,
        control.open_stream(peer, StreamProtocol::new(ANNOUNCE_PROTOCOL)),
    )
    .await
    .unwrap()
}

/// Reads one frame body (or `None` if the stream ends or `wait` passes).
async fn read(s: &mut libp2p::Stream, wait: Duration) -> Option<Vec<u8>> {
    timeout(wait, async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    })
    .await
    .ok()
    .flatten()
}

/// Whether the stream was closed by the other side within `wait`.
async fn closed(s: &mut libp2p::Stream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(timeout(wait, s.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_only_what_was_announced_to_it_and_bad_frames_close_only_its_stream() {
    timeout(Duration::from_secs(60), async {
        let victim = within(
            "starting the victim",
            10,
            TestNode::start_with(b"victim-own".to_vec(), vec![], HOUR, true, true, quiet),
        )
        .await;
        let limits = sync::SyncLimits {
            max_records: 64,
            max_record_len: 16 * 1024,
            max_message_bytes: 1 << 20,
        };
        let mut peer = common::swarm(|key| Peer {
            identify: common::veilnet_identify(key),
            stream: libp2p_stream::Behaviour::new(),
        });
        let protocol = StreamProtocol::new(ANNOUNCE_PROTOCOL);
        let mut control = peer.behaviour().stream.new_control();
        let mut incoming = control.accept(protocol).unwrap();
        peer.dial(victim.addr.clone()).unwrap();
        tokio::spawn(async move {
            loop {
                peer.select_next_some().await;
            }
        });

        // An announcement draws a want, on the victim's stream back to us,
        // and the records we send then are taken.
        let mut out = open(&mut control, victim.peer_id).await;
        let news = b"from-the-peer".to_vec();
        // The victim opens its stream to us once identify says we take
        // announcements (and keeps it: we chose the link), and answers
        // announcements only from such peers: until then, announce again.
        let (from, mut back) = within("the victim's stream to us", 10, incoming.next())
            .await
            .expect("the victim opens its stream to us");
        assert_eq!(from, victim.peer_id);
        let mut want = None;
        for _ in 0..20 {
            write(
                &mut out,
                &Frame::Announce(vec![sync::short_id(&sync::digest(&news))]).encode(),
            )
            .await;
            want = read(&mut back, Duration::from_millis(500)).await;
            if want.is_some() {
                break;
            }
        }
        let body = want.expect("a want");
        assert_eq!(
            Frame::decode(&body, &limits).unwrap(),
            Frame::Want(vec![sync::short_id(&sync::digest(&news))])
        );
        write(&mut out, &Frame::Records(vec![news.clone()]).encode()).await;
        timeout(Duration::from_secs(10), async {
            while !victim.knows(&news) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the announced record is taken");

        // A want of a record never announced to us is not served, and
        // records nobody asked for are not taken.
        write(
            &mut out,
            &Frame::Want(vec![sync::short_id(&sync::digest(b"victim-own"))]).encode(),
        )
        .await;
        write(
            &mut out,
            &Frame::Records(vec![b"unasked".to_vec()]).encode(),
        )
        .await;
        // (A want repeated for an announcement sent again above may
        // still come; records may not.)
        for _ in 0..50 {
            let Some(body) = read(&mut back, Duration::from_secs(2)).await else {
                break;
            };
            let frame = Frame::decode(&body, &limits).unwrap();
            assert_eq!(
                frame,
                Frame::Want(vec![sync::short_id(&sync::digest(&news))]),
                "nothing served"
            );
        }
        assert!(!victim.knows(b"unasked"));

        // Bad frames close our stream (each time), and a new one works.
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("unknown kind", vec![0, 0, 0, 3, 9, 0, 0]),
            ("length over the limit", u32::MAX.to_be_bytes().to_vec()),
            ("count beyond the body", vec![0, 0, 0, 3, 1, 0, 1]),
            ("short header", vec![0, 0, 0, 1, 1]),
        ];
        for (what, bytes) in bad {
            let mut s = open(&mut control, victim.peer_id).await;
            write(&mut s, &bytes).await;
            assert!(
                closed(&mut s, Duration::from_secs(10)).await,
                "{what}: stream not closed"
            );
        }
        let mut again = open(&mut control, victim.peer_id).await;
        let later = b"later-news".to_vec();
        write(
            &mut again,
            &Frame::Announce(vec![sync::short_id(&sync::digest(&later))]).encode(),
        )
        .await;
        let body = read(&mut back, Duration::from_secs(10))
            .await
            .expect("a want again");
        assert_eq!(
            Frame::decode(&body, &limits).unwrap(),
            Frame::Want(vec![sync::short_id(&sync::digest(&later))]),
            "the victim still answers announcements"
        );
        within("stopping the victim", 10, victim.stop()).await;
    })
    .await
    .expect("test finished in time");
}
