//! A misbehaving peer speaking the sync protocol with raw bytes must not
//! crash or wedge the node.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::{collections::HashMap, io, time::Duration};

use common::TestNode;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    identify,
    request_response::{self, Codec, Event, Message, OutboundRequestId, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    StreamProtocol,
};
use tokio::time::timeout;
use veilnet_discovery::sync::{self, Range, RangeMode, SyncLimits, SyncMessage};
use veilnet_discovery::SYNC_PROTOCOL;

/// Sends and receives raw bytes, whatever they are.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(8 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(8 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await
    }
}

#[derive(NetworkBehaviour)]
struct Attacker {
    identify: identify::Behaviour,
    rr: request_response::Behaviour<RawCodec>,
}

fn attacker(key: &libp2p::identity::Keypair, support: ProtocolSupport) -> Attacker {
    Attacker {
        identify: common::veilnet_identify(key),
        rr: request_response::Behaviour::with_codec(
            RawCodec,
            [(StreamProtocol::new(SYNC_PROTOCOL), support)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_records_do_not_crash_the_node() {
    timeout(Duration::from_secs(40), async {
        let victim = TestNode::start(
            b"victim-record".to_vec(),
            vec![],
            Duration::from_millis(300),
            false,
        )
        .await;

        // Identify as a veilnet relay, so the victim opens exchanges with
        // us (it does only with peers that list the sync protocol).
        let mut attacker = common::swarm(|key| attacker(key, ProtocolSupport::Full));
        attacker.dial(victim.addr.clone()).unwrap();

        let oversized = vec![0x42u8; 20 * 1024]; // > 16 KiB default
        let open_with = |records: Vec<Vec<u8>>| SyncMessage {
            ranges: vec![Range {
                lower: veilnet_discovery::sync::KEY_MIN,
                upper: None,
                mode: RangeMode::Fingerprint([0; 16]),
            }],
            records,
            ..SyncMessage::default()
        };
        let mut wrong_version = open_with(vec![]).encode();
        wrong_version[0] = 9;
        let mut huge_count = vec![sync::SYNC_VERSION];
        huge_count.extend_from_slice(&u16::MAX.to_be_bytes());
        let requests: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"\x00\xffnot a sync message{{{".to_vec()),
            ("wrong version", wrong_version),
            ("huge count", huge_count),
            ("over size limit", vec![b'a'; 5 << 20]),
            (
                "oversized record",
                open_with(vec![b"in-a-bad-message".to_vec(), oversized.clone()]).encode(),
            ),
            (
                "good",
                open_with(vec![b"good-from-attacker".to_vec()]).encode(),
            ),
        ];
        let total = requests.len();
        let mut requests = Some(requests);
        let mut labels: HashMap<OutboundRequestId, &str> = HashMap::new();
        let mut outcomes: HashMap<&str, Result<Vec<u8>, String>> = HashMap::new();
        let mut garbage_answers = 0;

        while outcomes.len() < total || garbage_answers == 0 {
            match attacker.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for (label, bytes) in requests.take().unwrap_or_default() {
                        let id = attacker.behaviour_mut().rr.send_request(&peer_id, bytes);
                        labels.insert(id, label);
                    }
                }
                SwarmEvent::Behaviour(AttackerEvent::Rr(Event::Message { message, .. })) => {
                    match message {
                        // The victim gossips to us: answer with garbage.
                        Message::Request { channel, .. } => {
                            let _ = attacker
                                .behaviour_mut()
                                .rr
                                .send_response(channel, b"\xde\xad garbage response".to_vec());
                            garbage_answers += 1;
                        }
                        Message::Response {
                            request_id,
                            response,
                        } => {
                            let label = labels[&request_id];
                            outcomes.insert(label, Ok(response));
                        }
                    }
                }
                SwarmEvent::Behaviour(AttackerEvent::Rr(Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                })) => {
                    let label = labels[&request_id];
                    outcomes.insert(label, Err(error.to_string()));
                }
                _ => {}
            }
        }
        for (label, outcome) in &outcomes {
            match outcome {
                Ok(bytes) => println!("{label}: answered with {} bytes", bytes.len()),
                Err(e) => println!("{label}: failed: {e}"),
            }
        }

        println!(
            "victim's peers after the attack: {:?}, attacker connected: {}",
            victim.handle.connected_peers().await,
            attacker.is_connected(&victim.peer_id)
        );
        // The well-formed message got a proper answer: the victim's one
        // record, listed by digest.
        let answer = outcomes["good"]
            .as_ref()
            .expect("well-formed request answered");
        let limits = SyncLimits {
            max_records: 2048,
            max_record_len: 16 * 1024,
            max_message_bytes: 4 << 20,
        };
        let answer = SyncMessage::decode(answer, &limits).expect("a valid answer");
        assert_eq!(
            answer.ranges[0].mode,
            RangeMode::List {
                digests: vec![sync::digest(b"victim-record")],
                reply: true,
            }
        );
        // Nothing got in: records travel only when asked for, and the
        // victim asked the attacker for nothing (it never listed them).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !victim.knows(b"good-from-attacker"),
            "an unsolicited record was taken"
        );
        assert!(!victim.knows(&oversized));
        assert!(!victim.knows(b"in-a-bad-message"));
        assert_eq!(victim.known_count(), 1, "only its own record");
        // A refused request gets no answer: the stream fails or ends empty.
        for label in [
            "garbage",
            "wrong version",
            "huge count",
            "over size limit",
            "oversized record",
        ] {
            let answered = outcomes[label].as_ref().is_ok_and(|b| !b.is_empty());
            assert!(!answered, "{label} was answered");
        }
        drop(attacker);

        // The victim still works: an honest node exchanges records with it.
        let honest = TestNode::start(
            b"honest-record".to_vec(),
            vec![victim.addr.clone()],
            Duration::from_millis(300),
            false,
        )
        .await;
        timeout(Duration::from_secs(10), async {
            while !(victim.knows(b"honest-record") && honest.knows(b"victim-record")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("victim still gossips after the attack");
        assert!(!victim.handle.listen_addrs().await.is_empty());

        honest.stop().await;
        victim.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// A relay holding 2000 records besides its own (a list of them all is
/// 64 KB: a node lists at most as many digests as it may be asked for at
/// once, 2048 by default).
async fn victim_with_2000_records() -> TestNode {
    let victim = TestNode::start(
        b"victim-record".to_vec(),
        vec![],
        Duration::from_secs(3600),
        true,
    )
    .await;
    victim
        .known
        .lock()
        .unwrap()
        .extend((0..1999u32).map(|i| format!("record-{i}").into_bytes()));
    victim
}

/// Sends `ask` to `victim` `n` times, one after the other; the answers'
/// sizes and the seconds it took.
async fn ask_again_and_again(victim: &TestNode, ask: &[u8], n: usize) -> (Vec<usize>, f64) {
    let mut attacker = common::swarm(|key| attacker(key, ProtocolSupport::Outbound));
    attacker.dial(victim.addr.clone()).unwrap();
    let started = std::time::Instant::now();
    let mut sizes = Vec::new();
    while sizes.len() < n {
        match attacker.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                attacker
                    .behaviour_mut()
                    .rr
                    .send_request(&peer_id, ask.to_vec());
            }
            SwarmEvent::Behaviour(AttackerEvent::Rr(Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            })) => {
                sizes.push(response.len());
                if sizes.len() < n {
                    attacker
                        .behaviour_mut()
                        .rr
                        .send_request(&peer, ask.to_vec());
                }
            }
            SwarmEvent::Behaviour(AttackerEvent::Rr(Event::OutboundFailure { error, .. })) => {
                panic!("a request failed: {error}")
            }
            _ => {}
        }
    }
    (sizes, started.elapsed().as_secs_f64())
}

/// A request about the whole key space.
fn whole(mode: RangeMode) -> Vec<u8> {
    SyncMessage {
        ranges: vec![Range {
            lower: veilnet_discovery::sync::KEY_MIN,
            upper: None,
            mode,
        }],
        ..SyncMessage::default()
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_for_everything_again_and_again_gets_its_budget_and_no_more() {
    use veilnet_discovery::budget::{PER_PEER_BURST, PER_PEER_RATE};
    timeout(Duration::from_secs(60), async {
        let victim = victim_with_2000_records().await;
        // "Here is my (empty) list of everything; send me yours."
        let ask = whole(RangeMode::List {
            digests: Vec::new(),
            reply: true,
        });
        // Without the budget: 250 answers of 64 KB, 16 MB.
        const ASKS: usize = 250;
        let (sizes, elapsed) = ask_again_and_again(&victim, &ask, ASKS).await;
        let total: usize = sizes.iter().sum();
        println!(
            "{ASKS} asks of {} bytes drew {total} bytes in {elapsed:.1} s; first {}, last {}",
            ask.len(),
            sizes[0],
            sizes[ASKS - 1]
        );
        assert!(sizes[0] > 2000 * 32, "the first ask is answered in full");
        let allowed = PER_PEER_BURST as f64 + PER_PEER_RATE as f64 * elapsed + sizes[0] as f64;
        assert!(
            (total as f64) <= allowed,
            "{total} bytes drawn, more than the budget's {allowed:.0}"
        );
        // Past the budget the request is refused: the stream ends with no
        // answer at all (an empty answer would read as "we agree").
        assert_eq!(sizes[ASKS - 1], 0, "past the budget the request is refused");
        victim.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_makes_us_hash_every_key_again_and_again_is_cut_off_too() {
    use veilnet_discovery::budget::{PER_PEER_BURST, PER_PEER_RATE};
    use veilnet_discovery::sync::KEY_COST;
    timeout(Duration::from_secs(60), async {
        let victim = victim_with_2000_records().await;
        // A wrong fingerprint of everything: a small answer (the range split
        // in a few), but every key hashed to make it.
        let ask = whole(RangeMode::Fingerprint([0; 16]));
        // Without charging for the keys read: all 2000 answered (2 MB).
        const ASKS: usize = 2000;
        let (sizes, elapsed) = ask_again_and_again(&victim, &ask, ASKS).await;
        let answered = sizes.iter().filter(|&&n| n > 0).count();
        let per_answer = sizes[0] + 2000 * KEY_COST;
        let allowed = (PER_PEER_BURST as f64 + PER_PEER_RATE as f64 * elapsed) / per_answer as f64;
        println!(
            "{ASKS} fingerprint asks of {} bytes: {answered} answered ({} bytes each) in {elapsed:.1} s, budget for {allowed:.0}",
            ask.len(),
            sizes[0]
        );
        assert!(sizes[0] > 64, "the first is answered");
        assert!(
            answered as f64 <= allowed + 1.0,
            "{answered} answered, more than the budget's {allowed:.0}"
        );
        victim.stop().await;
    })
    .await
    .expect("test finished in time");
}
