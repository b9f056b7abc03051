//! Relays enforce what only an honest client enforced before: the extend
//! budget (RELAY_EARLY), circuits only on links the peer opened, no one-hop
//! exits, and an open command space. Real engines on loopback; the
//! misbehaving peer is a raw link (`common::raw`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::{Answer, FakeRelay, RawLink};
use common::{echo_server, node, node_opts, through, Opts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use veilnet_cell::{
    Cell, CellCommand, DestroyReason, EndReason, RelayMsg, TargetAddr, CELL_LEN, MAX_HOPS,
};
use veilnet_crypto::circuit::{ClientHandshake, OnionKeypair};
use veilnet_crypto::onion::RelayBackward;
use veilnet_proto::ProtoError;

/// Every test gives up after this long rather than hang.
const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_circuits_longer_than_limit() {
    let mut relays = Vec::new();
    for _ in 0..6 {
        relays.push(node(false, false).await);
    }
    let (a, b) = (&relays[0], &relays[1]);
    let run = async {
        // Five hops, four EXTENDs, all in RELAY_EARLY.
        let mut raw = RawLink::connect(&a.spec).await;
        let mut c = raw.create_ok(&a.spec).await;
        for hop in &relays[1..5] {
            let answer = raw.extend(&mut c, &hop.spec, CellCommand::RelayEarly).await;
            assert_eq!(answer, Answer::Grew, "EXTEND to hop {}", c.hops() + 1);
        }
        assert_eq!(c.hops(), MAX_HOPS);
        // A sixth hop: the guard has seen MAX_HOPS - 1 early cells already.
        let answer = raw
            .extend(&mut c, &relays[5].spec, CellCommand::RelayEarly)
            .await;
        assert_eq!(
            answer,
            Answer::Destroyed(DestroyReason::Protocol),
            "a sixth EXTEND must be refused, not EXTENDED"
        );

        // An EXTEND in a plain RELAY cell is refused too, at any length.
        let mut raw = RawLink::connect(&a.spec).await;
        let mut c = raw.create_ok(&a.spec).await;
        let answer = raw.extend(&mut c, &b.spec, CellCommand::Relay).await;
        assert_eq!(answer, Answer::Destroyed(DestroyReason::Protocol));
        // ... and the relay still serves an honest client afterwards.
        let mut c = raw.create_ok(&a.spec).await;
        let answer = raw.extend(&mut c, &b.spec, CellCommand::RelayEarly).await;
        assert_eq!(answer, Answer::Grew);

        // A loop back to the previous hop (A→B→A) is refused by B; the
        // guard passes B's DESTROY on without its reason.
        let answer = raw.extend(&mut c, &a.spec, CellCommand::RelayEarly).await;
        assert_eq!(answer, Answer::Destroyed(DestroyReason::None));
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

/// The answers a fake guard gets to its own CREATEs down its client's link:
/// with the client's real onion key and with a random key, each once with
/// the circuit ids a link's responder picks and once with the initiator bit
/// forged.
async fn creates_down_a_client_link(client: &common::Node) -> Vec<Option<Cell>> {
    let guard = FakeRelay::new().await;
    let core = client.core.clone();
    let spec = guard.spec.clone();
    // The client's CREATE to the guard stays unanswered; the build gives up
    // when the test ends.
    let build = tokio::spawn(async move { core.build_circuit(&[spec]).await });
    let mut link = guard.accept().await;
    let create = link.recv().await.expect("the client sends CREATE");
    assert_eq!(create.command(), Ok(CellCommand::Create));
    assert!(
        create.circ_id().unwrap().from_initiator(),
        "the client opened the link"
    );
    let mut answers = Vec::new();
    for key in [
        client.onion.public,
        OnionKeypair::generate().unwrap().public,
    ] {
        for forged_bit in [false, true] {
            let circ = link.circ_id_with_bit(forged_bit);
            let (_hs, msg) = ClientHandshake::start(&key).unwrap();
            link.send(&Cell::handshake(circ, CellCommand::Create, &msg).unwrap())
                .await;
            answers.push(link.recv_for_within(circ, Duration::from_secs(2)).await);
        }
    }
    build.abort();
    answers
}

fn summary(c: &Option<Cell>) -> Option<(CellCommand, DestroyReason)> {
    c.as_ref()
        .map(|c| (c.command().unwrap(), c.destroy_reason()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_initiated_link_is_refused() {
    let run = async {
        // The client is a relay: it has an onion key a guard could probe.
        let relay_client = node(false, false).await;
        let answers: Vec<_> = creates_down_a_client_link(&relay_client)
            .await
            .iter()
            .map(summary)
            .collect();
        assert!(
            answers
                .iter()
                .all(|a| a.map(|s| s.0) != Some(CellCommand::Created)),
            "CREATED on the client's link reveals that the client is this relay: {answers:?}"
        );
        // Real key or not, forged bit or not: one answer.
        let refused = Some((CellCommand::Destroy, DestroyReason::Protocol));
        assert_eq!(answers, vec![refused; 4], "the answers differ");
        // A client that is not a relay answers exactly the same.
        let pure_client = node_opts(Opts {
            relay: false,
            ..Opts::default()
        })
        .await;
        let answers: Vec<_> = creates_down_a_client_link(&pure_client)
            .await
            .iter()
            .map(summary)
            .collect();
        assert_eq!(answers, vec![refused; 4], "a pure client answers otherwise");
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_without_the_initiator_bit_is_refused() {
    let relay = node(false, false).await;
    let run = async {
        let mut raw = RawLink::connect(&relay.spec).await;
        // Pretend to be the responder of our own link: an id without the bit.
        raw.initiator = false;
        let (answer, _) = raw.create(&relay.spec).await;
        assert_eq!(answer, Answer::Destroyed(DestroyReason::Protocol));
        raw.initiator = true;
        let (answer, _) = raw.create(&relay.spec).await;
        assert_eq!(answer, Answer::Grew);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_early_toward_the_client_closes_the_circuit() {
    let run = async {
        // At a relay: raw client → A → fake relay F; F sends RELAY_EARLY back.
        let a = node(false, false).await;
        let f = FakeRelay::new().await;
        let mut raw = RawLink::connect(&a.spec).await;
        let mut c = raw.create_ok(&a.spec).await;
        let fake = async {
            let mut link = f.accept().await;
            let (circ, back) = f.answer_create(&mut link).await;
            (link, circ, back)
        };
        let (answer, (mut f_link, f_circ, mut back)) =
            tokio::join!(raw.extend(&mut c, &f.spec, CellCommand::RelayEarly), fake);
        assert_eq!(answer, Answer::Grew);
        let cell = early_backward_drop(f_circ, &mut back);
        f_link.send(&cell).await;
        let to_client = raw.recv_for(c.circ).await.map(|c| c.command().unwrap());
        assert_eq!(
            to_client,
            Some(CellCommand::Destroy),
            "A closes the circuit"
        );
        let to_f = f_link.recv_for(f_circ).await.map(|c| c.destroy_reason());
        assert_eq!(to_f, Some(DestroyReason::Protocol));

        // At a client: the real client builds through fake guard G.
        let client = node(false, false).await;
        let g = FakeRelay::new().await;
        let spec = g.spec.clone();
        let core = client.core.clone();
        let build = tokio::spawn(async move { core.build_circuit(&[spec]).await });
        let mut g_link = g.accept().await;
        let (g_circ, mut back) = g.answer_create(&mut g_link).await;
        let circuit = build.await.unwrap().expect("one-hop circuit built");
        let cell = early_backward_drop(g_circ, &mut back);
        g_link.send(&cell).await;
        let reply = g_link.recv_for(g_circ).await.map(|c| c.destroy_reason());
        assert_eq!(
            reply,
            Some(DestroyReason::Protocol),
            "the client destroys it"
        );
        assert!(!circuit.is_open());
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_begin_is_refused_by_default() {
    let run = async {
        let client = node(false, false).await;
        let exit = node(true, true).await;
        let middle = node(false, false).await;
        let echo = echo_server().await;
        let target = TargetAddr::Ip(echo);
        // Straight from the client: refused, although the target is allowed.
        let one_hop = client
            .core
            .build_circuit(std::slice::from_ref(&exit.spec))
            .await
            .unwrap();
        match one_hop.open_stream(&target).await {
            Err(ProtoError::StreamRefused(EndReason::ExitPolicy)) => {}
            other => panic!("expected a one-hop refusal, got {:?}", other.err()),
        }
        assert!(one_hop.is_open(), "a refused stream leaves the circuit up");
        assert_eq!(exit.core.stats.streams_refused.load(Ordering::Relaxed), 1);
        // Through a relay the same exit serves the same target.
        let two_hop = client
            .core
            .build_circuit(&[middle.spec.clone(), exit.spec.clone()])
            .await
            .unwrap();
        let mut app = through(&two_hop, target.clone()).await;
        app.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        app.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        // An exit configured for one-hop circuits (test networks) serves them.
        let open_exit = node_opts(Opts {
            exit: true,
            allow_private_targets: true,
            one_hop_exits: true,
            ..Opts::default()
        })
        .await;
        let one_hop = client
            .core
            .build_circuit(std::slice::from_ref(&open_exit.spec))
            .await
            .unwrap();
        let mut app = through(&one_hop, target).await;
        app.write_all(b"pong").await.unwrap();
        app.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_ignored() {
    let a = node(false, false).await;
    let b = node(false, false).await;
    let run = async {
        let mut raw = RawLink::connect(&a.spec).await;
        let mut c = raw.create_ok(&a.spec).await;
        // A cell command from a future version, on the circuit.
        let mut unknown = vec![0u8; CELL_LEN];
        unknown[..4].copy_from_slice(&c.circ.get().to_be_bytes());
        unknown[4] = 77;
        raw.send_bytes(&unknown).await;
        // A relay message from a future version, properly onion-encrypted.
        let mut cell = Cell::new(c.circ, CellCommand::Relay);
        cell.relay_payload_mut()[0] = 200;
        raw.send_onion(&mut c, cell).await;
        // The circuit is still up: it extends.
        let answer = raw.extend(&mut c, &b.spec, CellCommand::RelayEarly).await;
        assert_eq!(answer, Answer::Grew);
        let stats = &a.core.stats;
        assert_eq!(stats.unknown_cell_commands.load(Ordering::Relaxed), 1);
        assert_eq!(stats.unknown_relay_commands.load(Ordering::Relaxed), 1);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_reasons_are_not_passed_on() {
    // A colluding exit and guard must not get a channel past an honest
    // middle out of DESTROY reasons: the middle passes a DESTROY on, but
    // not why.
    let relays = [
        node(false, false).await,
        node(false, false).await,
        node(true, true).await,
    ];
    let run = async {
        let mut raw = RawLink::connect(&relays[0].spec).await;
        let mut c = raw.create_ok(&relays[0].spec).await;
        for hop in &relays[1..] {
            let answer = raw.extend(&mut c, &hop.spec, CellCommand::RelayEarly).await;
            assert_eq!(answer, Answer::Grew);
        }
        // CONNECTED travels only toward the client: the exit destroys the
        // circuit with DESTROY(Protocol) toward the middle.
        raw.send_relay(&mut c, CellCommand::Relay, &RelayMsg::Connected)
            .await;
        let reply = raw.recv_for(c.circ).await.expect("no DESTROY arrived");
        assert_eq!(reply.command(), Ok(CellCommand::Destroy));
        assert_eq!(reply.destroy_reason(), DestroyReason::None);
        // The exit did refuse it, with its reason, one hop away.
        let refused = relays[2].core.stats.cells_refused.load(Ordering::Relaxed);
        assert!(refused >= 1);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_a_circuit_id_in_use_ends_that_circuit() {
    let relay = node(false, false).await;
    let run = async {
        let mut raw = RawLink::connect(&relay.spec).await;
        let c = raw.create_ok(&relay.spec).await;
        let link = || {
            relay
                .core
                .links()
                .into_iter()
                .find(|l| l.circuit_count() > 0)
        };
        assert!(link().is_some(), "the relay holds the circuit");
        // A second CREATE under the same id: the relay does not answer it
        // with a handshake, and does not keep the first circuit either
        // (its creator just broke it).
        let (_hs, msg) = ClientHandshake::start(&relay.spec.onion_key).unwrap();
        raw.send(&Cell::handshake(c.circ, CellCommand::Create, &msg).unwrap())
            .await;
        let reply = raw.recv_for(c.circ).await.expect("no answer");
        assert_eq!(reply.command(), Ok(CellCommand::Destroy));
        assert_eq!(reply.destroy_reason(), DestroyReason::Protocol);
        assert!(link().is_none(), "the broken circuit is gone");
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
}

/// A DROP that a (fake) relay originates toward the client in a
/// RELAY_EARLY cell, its layer added by `back`.
fn early_backward_drop(circ: veilnet_cell::CircId, back: &mut RelayBackward) -> Cell {
    let mut cell = Cell::new(circ, CellCommand::RelayEarly);
    veilnet_cell::encode_relay(
        cell.relay_payload_mut(),
        veilnet_cell::StreamId(0),
        &RelayMsg::Drop,
    )
    .unwrap();
    back.originate(
        cell.body_mut(),
        CellCommand::RelayEarly,
        std::time::Instant::now(),
    )
    .unwrap();
    cell
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_goes_only_to_an_address_the_relay_publishes() {
    // A client names a known relay but another address: the relay must not
    // connect there (it would be a port scanner or a connect flood for
    // whoever asks).
    let a = node(false, false).await;
    let b = node(false, false).await;
    let bystander = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = async {
        let mut raw = RawLink::connect(&a.spec).await;
        let mut c = raw.create_ok(&a.spec).await;
        let mut elsewhere = b.spec.clone();
        elsewhere.addr = bystander.local_addr().unwrap();
        let answer = raw
            .extend(&mut c, &elsewhere, CellCommand::RelayEarly)
            .await;
        assert_eq!(answer, Answer::Destroyed(DestroyReason::ExtendFailed));
        // At the published address the same relay is reachable.
        let mut c = raw.create_ok(&a.spec).await;
        let answer = raw.extend(&mut c, &b.spec, CellCommand::RelayEarly).await;
        assert_eq!(answer, Answer::Grew);
    };
    timeout(TEST_LIMIT, run).await.expect("test timed out");
    let knocked = timeout(Duration::from_millis(200), bystander.accept()).await;
    assert!(
        knocked.is_err(),
        "the relay connected to an unlisted address"
    );
}
