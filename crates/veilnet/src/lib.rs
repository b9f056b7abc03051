//! veilnet: a decentralized onion-routing proxy network. Every node is a
//! client (a local SOCKS5 / HTTP CONNECT proxy) and a relay; traffic crosses
//! a circuit of volunteer nodes, each removing one layer of encryption, and
//! leaves through an exit that makes the final connection.
//!
//! This crate assembles the layers below it into a running node (`node`),
//! chooses and pools circuits (`circmgr`), serves the local proxies (`proxy`)
//! and the control API (`control`), and runs local test networks (`testnet`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod circmgr;
pub mod control;
pub mod node;
pub mod proxy;
pub mod testnet;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
