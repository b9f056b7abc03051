//! Flow control with tiny windows: every few cells the sender waits for a
//! SENDME, on the stream and on the circuit, and nothing is lost or stuck.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{echo_server, node_opts, through, Opts};
use veilnet_cell::TargetAddr;
use veilnet_proto::{FlowParams, Limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_windows_carry_several_streams_byte_exact() {
    // Both ends of the circuit use the same (tiny) windows.
    let flow = FlowParams {
        stream_window: 8,
        stream_sendme: 2,
        circ_window: 12,
        circ_sendme: 3,
    };
    let opts = |exit: bool| Opts {
        exit,
        allow_private_targets: exit,
        limits: Limits {
            flow,
            ..Limits::default()
        },
        ..Opts::default()
    };
    let client = node_opts(opts(false)).await;
    let relays = [node_opts(opts(false)).await, node_opts(opts(true)).await];
    let path: Vec<_> = relays.iter().map(|n| n.spec.clone()).collect();
    let circuit = client.core.build_circuit(&path).await.unwrap();
    let echo = echo_server().await;

    // Three streams share the circuit's window of 12 cells.
    let mut tasks = Vec::new();
    for k in 0..3u32 {
        let app = through(&circuit, TargetAddr::Ip(echo)).await;
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..600_000u32).map(|i| (i * 31 + k) as u8).collect();
            common::echo_round_trip(app, &data, Duration::from_secs(60)).await == data
        }));
    }
    for t in tasks {
        let same = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a stream got stuck waiting for credit")
            .unwrap();
        assert!(same, "a stream's echo differs from what it sent");
    }
    assert!(circuit.is_open());
}
