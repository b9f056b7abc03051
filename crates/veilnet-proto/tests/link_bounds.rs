//! What a link's peer cannot make us keep.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::raw::{self, RawLink};
use common::{node_opts, Opts};
use libp2p_identity::Keypair;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use veilnet_crypto::link::LinkHandshake;
use veilnet_proto::{HopSpec, Limits};

/// Completes a link handshake to `hop`, sends the 2-byte header of a
/// one-cell record, and then nothing more (keeping the socket open).
async fn stalled_link(hop: &HopSpec) -> TcpStream {
    let mut s = TcpStream::connect(hop.addr).await.unwrap();
    let id = Keypair::generate_ed25519();
    let hs = LinkHandshake::initiator(&id, &hop.link_key).unwrap();
    raw::handshake(&mut s, hs).await;
    s.write_all(&1u16.to_be_bytes()).await.unwrap(); // "one cell follows"
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_never_finished_does_not_keep_its_link() {
    let relay = node_opts(Opts {
        limits: Limits {
            max_links: 2,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    let _a = stalled_link(&relay.spec).await;
    let _b = stalled_link(&relay.spec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.core.link_count(), 2, "both links are up");

    // Housekeeping closes links that carry no circuit (the first call
    // starts their idle clocks): the readers, halfway through a record,
    // stop, and the links' slots come free.
    relay.core.close_idle_links(Duration::ZERO);
    relay.core.close_idle_links(Duration::ZERO);
    let released = async {
        while relay.core.link_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("closed links are released");

    // An honest peer links again.
    let mut honest = RawLink::connect(&relay.spec).await;
    assert!(honest
        .recv_within(Duration::from_millis(100))
        .await
        .is_none());
    assert_eq!(relay.core.link_count(), 1);
}
