//! Several engines on loopback: build circuits, carry streams, refuse bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{echo_server, node, three_hop, through};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use veilnet_cell::{DestroyReason, EndReason, TargetAddr};
use veilnet_crypto::circuit::OnionKeypair;
use veilnet_proto::{CircuitError, ProtoError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_echo_and_half_close() {
    let (_client, relays, circuit) = three_hop().await;
    assert_eq!(circuit.hops().len(), 3);
    let echo = echo_server().await;

    let app = through(&circuit, TargetAddr::Ip(echo)).await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    // Half-closed after the data: the echo still answers.
    let got = common::echo_round_trip(app, &data, Duration::from_secs(30)).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert!(
        relays[2]
            .core
            .stats
            .exit_streams
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_targets_map_to_end_reasons() {
    // Two-hop circuits: exits refuse every stream of a one-hop circuit.
    let client = node(false, false).await;
    let middle = node(false, false).await;
    let strict_exit = node(true, false).await;
    let path = vec![middle.spec.clone(), strict_exit.spec.clone()];
    let circuit = client.core.build_circuit(&path).await.unwrap();
    let echo = echo_server().await;
    // Loopback is refused by the default policy.
    match circuit.open_stream(&TargetAddr::Ip(echo)).await {
        Err(ProtoError::StreamRefused(EndReason::ExitPolicy)) => {}
        other => panic!("expected exit policy refusal, got {:?}", other.err()),
    }
    // A non-exit refuses every stream.
    let relay = node(false, false).await;
    let circuit = client
        .core
        .build_circuit(&[middle.spec.clone(), relay.spec.clone()])
        .await
        .unwrap();
    match circuit.open_stream(&TargetAddr::Ip(echo)).await {
        Err(ProtoError::StreamRefused(EndReason::ExitPolicy)) => {}
        other => panic!("expected refusal, got {:?}", other.err()),
    }
    // A closed port on an exit that allows loopback: connection refused.
    let exit = node(true, true).await;
    let circuit = client
        .core
        .build_circuit(&[middle.spec.clone(), exit.spec.clone()])
        .await
        .unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    match circuit.open_stream(&TargetAddr::Ip(closed)).await {
        Err(ProtoError::StreamRefused(EndReason::ConnectRefused)) => {}
        other => panic!("expected connection refused, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_onion_key_fails_build_cleanly() {
    let client = node(false, false).await;
    let relay = node(false, false).await;
    let mut spec = relay.spec.clone();
    spec.onion_key = OnionKeypair::generate().unwrap().public;
    let err = client.core.build_circuit(&[spec]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::Circuit(CircuitError::Destroyed(DestroyReason::Protocol))
        ),
        "{err}"
    );
    // The relay still serves a correct build afterwards.
    let ok = client
        .core
        .build_circuit(std::slice::from_ref(&relay.spec))
        .await;
    assert!(ok.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_onion_key_keeps_the_previous_one_working() {
    let client = node(false, false).await;
    let relay = node(false, false).await;
    let old = relay.spec.clone();
    let new_key = OnionKeypair::generate().unwrap();
    // Rotate: the relay now answers with the new key and still accepts the old one.
    let old_pair = relay.onion.clone();
    relay
        .core
        .set_onion_keys(new_key.clone(), Some(old_pair.clone()));
    assert_eq!(relay.core.onion_public(), new_key.public);
    assert!(client
        .core
        .build_circuit(std::slice::from_ref(&old))
        .await
        .is_ok());
    let mut fresh = old.clone();
    fresh.onion_key = new_key.public;
    assert!(client
        .core
        .build_circuit(std::slice::from_ref(&fresh))
        .await
        .is_ok());
    // Once the previous key is dropped, handshakes with it fail.
    relay.core.set_onion_keys(new_key, None);
    assert!(client
        .core
        .build_circuit(std::slice::from_ref(&old))
        .await
        .is_err());
}

/// Serves an endless stream of bytes to whoever connects.
async fn firehose() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let buf = vec![0x5au8; 64 * 1024];
                while s.write_all(&buf).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_a_busy_stream_leaves_the_circuit_working() {
    let (_client, _relays, circuit) = common::three_hop().await;
    let hose = firehose().await;
    let echo = echo_server().await;
    let run = async {
        for round in 0..5 {
            // A download in full flow, abandoned by the application.
            let mut big = through(&circuit, TargetAddr::Ip(hose)).await;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            while got < 2_000_000 {
                got += big.read(&mut buf).await.unwrap();
            }
            drop(big);
            // Another stream on the same circuit still works both ways.
            let mut app = through(&circuit, TargetAddr::Ip(echo)).await;
            let msg = format!("round {round}").into_bytes();
            app.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            app.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            assert!(circuit.is_open(), "the circuit survived round {round}");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_never_learns_the_clients_identity() {
    let (client, relays, _circuit) = common::three_hop().await;
    let me = client.core.peer_id();
    // The guard has a link from us, but under a throwaway identity.
    assert!(!relays[0].core.links().is_empty());
    assert!(relays[0].core.links().iter().all(|l| l.peer != me));
    // The relays extended to each other under their real identities.
    assert!(relays[0]
        .core
        .links()
        .iter()
        .any(|l| l.peer == relays[1].core.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_refuse_to_extend_to_private_addresses_by_default() {
    let client = node(false, false).await;
    let strict = common::node_with(false, false, false).await;
    let next = node(true, true).await;
    let path = [strict.spec.clone(), next.spec.clone()];
    let err = client.core.build_circuit(&path).await.unwrap_err();
    // A refusal by policy, not a protocol violation by the client.
    assert!(
        matches!(
            err,
            ProtoError::Circuit(CircuitError::Destroyed(DestroyReason::ExtendFailed))
        ),
        "{err}"
    );
    assert_eq!(
        strict
            .core
            .stats
            .cells_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // A one-hop circuit to the strict relay still works.
    assert!(client
        .core
        .build_circuit(std::slice::from_ref(&strict.spec))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_links_are_closed() {
    let (client, relays, circuit) = common::three_hop().await;
    let limit = Duration::from_millis(200);
    // Links that carry a circuit stay.
    assert_eq!(relays[1].core.close_idle_links(limit), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relays[1].core.close_idle_links(limit), 0);
    circuit.close();
    // Once empty, a link is closed after it stayed empty for the limit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        relays[1].core.close_idle_links(limit);
        client.core.close_idle_links(limit);
        if relays[1].core.link_count() == 0 && client.core.link_count() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle links stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True if the server closed the connection within `wait` (without sending).
async fn closed_soon(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_handshake_slot() {
    let relay = node(false, false).await;
    let from = |ip: [u8; 4]| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
        sock.connect(relay.spec.addr).await.unwrap()
    };
    // Eight silent connections from one address hold its handshake slots.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(from([127, 0, 0, 1]).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = from([127, 0, 0, 1]).await;
    assert!(
        closed_soon(&mut ninth, Duration::from_secs(2)).await,
        "the ninth is refused"
    );
    // Another address still gets a slot (its connection is not closed at once).
    let mut other = from([127, 0, 0, 2]).await;
    assert!(!closed_soon(&mut other, Duration::from_millis(500)).await);
    for s in held.iter_mut() {
        assert!(
            !closed_soon(s, Duration::from_millis(10)).await,
            "held slots stay open"
        );
    }
}
