//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use libp2p::identity::Keypair;
use veilnet_dir::{Descriptor, Roles, SignedDescriptor};
use veilnet_policy::ExitPolicy;

/// Fixed "now" for all tests.
pub const NOW: u64 = 1_700_000_000;

/// Deterministic keypair number `n`.
pub fn key(n: u32) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    seed[31] = 0x5a;
    Keypair::ed25519_from_bytes(seed).unwrap()
}

/// A valid descriptor for `key` with one link address.
pub fn desc(key: &Keypair, link: &str) -> Descriptor {
    let public = key.public();
    Descriptor {
        peer_id: public.to_peer_id(),
        identity_key: public.encode_protobuf(),
        link_addrs: vec![link.parse::<SocketAddr>().unwrap()],
        p2p_addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        onion_key: [0x11; 32],
        onion_key_expires: NOW + 7 * 24 * 3600,
        link_key: [0x24; 32],
        roles: Roles {
            relay: true,
            exit: true,
        },
        exit_policy: ExitPolicy::default_exit(),
        bandwidth: 1_000_000,
        region: "ZZ".into(),
        family: vec![],
        version: "veilnet/0.1.0".into(),
        seq: 1,
        published: NOW,
    }
}

/// Sign `d` with `key`.
pub fn sign(d: &Descriptor, key: &Keypair) -> SignedDescriptor {
    d.sign(key).unwrap()
}
