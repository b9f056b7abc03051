//! The steady state of the data path allocates nothing per cell: after a
//! warm-up, carrying megabytes through a 3-hop circuit (client, three relays
//! and the exit's target all in this process) makes a negligible number of
//! heap allocations compared with the number of cells.
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::System;
use std::time::Duration;

use common::{echo_server, three_hop, through};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veilnet_cell::{TargetAddr, RELAY_DATA_MAX};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

async fn echo_round(app: &mut tokio::net::TcpStream, chunk: &[u8], total: usize) {
    let mut back = vec![0u8; chunk.len()];
    let mut sent = 0;
    while sent < total {
        app.write_all(chunk).await.unwrap();
        app.read_exact(&mut back).await.unwrap();
        assert_eq!(back, chunk);
        sent += chunk.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_per_cell_allocation_in_steady_state() {
    let (_client, _relays, circuit) = three_hop().await;
    let echo = echo_server().await;
    let mut app = through(&circuit, TargetAddr::Ip(echo)).await;
    let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();

    let run = async {
        echo_round(&mut app, &chunk, 16 << 20).await; // warm up pools and queues
        let region = Region::new(GLOBAL);
        let total = 64 << 20;
        echo_round(&mut app, &chunk, total).await;
        let change = region.change();
        let allocs = change.allocations + change.reallocations;
        // Each byte crosses the circuit twice (there and back).
        let cells = 2 * total / RELAY_DATA_MAX;
        eprintln!("{allocs} allocations for {cells} cells");
        assert!(
            allocs < cells / 20,
            "{allocs} allocations for {cells} cells: the data path allocates per cell"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap();
}
