//! Key updates under load: a stream crosses many link-record and onion-layer
//! key updates and arrives byte-exact.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo_server, node_opts, through, Opts};
use veilnet_cell::TargetAddr;
use veilnet_crypto::link::RECORD_KEY_UPDATE;
use veilnet_crypto::rekey::MIN_USES_PER_KEY;
use veilnet_crypto::RekeyPolicy;
use veilnet_proto::{Limits, LinkTap};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_and_layers_rekey() {
    // Retire every key as soon as the protocol allows (16 cells of a layer,
    // 16 records of a link: receivers refuse sooner updates), or after 50 ms.
    let tiny = |max_uses| RekeyPolicy {
        max_uses,
        max_age: Duration::from_millis(50),
    };
    let limits = Limits {
        link_rekey: tiny(MIN_USES_PER_KEY),
        layer_rekey: tiny(MIN_USES_PER_KEY),
        ..Limits::default()
    };
    // Link records whose header carries the key-update flag (handshake
    // frames are shorter than 0x8000 bytes, so their prefix never has it).
    let link_updates = Arc::new(AtomicU64::new(0));
    let seen = link_updates.clone();
    let tap: LinkTap = Arc::new(move |bytes: &[u8]| {
        if bytes.len() >= 2 && u16::from_be_bytes([bytes[0], bytes[1]]) & RECORD_KEY_UPDATE != 0 {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    let opts = |exit: bool| Opts {
        exit,
        allow_private_targets: exit,
        limits: limits.clone(),
        tap: Some(tap.clone()),
        ..Opts::default()
    };
    let client = node_opts(opts(false)).await;
    let relays = [
        node_opts(opts(false)).await,
        node_opts(opts(false)).await,
        node_opts(opts(true)).await,
    ];
    let path: Vec<_> = relays.iter().map(|n| n.spec.clone()).collect();
    let circuit = client.core.build_circuit(&path).await.unwrap();
    let echo = echo_server().await;

    let app = through(&circuit, TargetAddr::Ip(echo)).await;
    let data: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i * 13 + i / 977) as u8)
        .collect();
    let got = common::echo_round_trip(app, &data, Duration::from_secs(60)).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echo differs from what was sent");

    // About 4100 cells each way: every hop's layer keys moved hundreds of
    // times in both directions, and the link keys dozens of times.
    let (fwd, bwd) = circuit.key_updates().await;
    assert!(fwd >= 3 * 200, "forward layer key updates: {fwd}");
    assert!(bwd >= 3 * 200, "backward layer key updates: {bwd}");
    let links = link_updates.load(Ordering::Relaxed);
    assert!(links >= 24, "link key updates: {links}");
    assert!(circuit.is_open());
}
