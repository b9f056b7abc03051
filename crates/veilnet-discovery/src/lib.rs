#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod announce;
pub mod budget;
mod config;
mod error;
mod inbound;
mod kept;
mod node;
mod push;
pub mod sync;
mod wants;
mod wire;

pub use config::{DiscoveryConfig, FetchSlots, RecordProvider};
pub use error::DiscoveryError;
pub use kept::{announcement_peers, choose_with_own};
pub use node::{
    recent_since, spawn, DiscoveryEvent, DiscoveryHandle, CLIENT_FULL_EVERY, CLIENT_RECENT_MARGIN,
};
pub use sync::RecordStore;
pub use sync::{RecordDigest, RecordKey};

/// Protocol version string announced through identify.
pub const IDENTIFY_PROTOCOL: &str = "/veilnet/id/1.0.0";
/// Kademlia protocol name.
pub const KAD_PROTOCOL: &str = "/veilnet/kad/1.0.0";
/// Record reconciliation (request-response) protocol name; its major
/// version follows [`sync::SYNC_VERSION`], so nodes of another version are
/// not taken for relays to reconcile with.
pub const SYNC_PROTOCOL: &str = "/veilnet/sync/3.0.0";
/// Hard upper bound on the encoded size of one gossip message, whatever the config says.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Maximum number of established connections a node keeps.
pub const MAX_ESTABLISHED: u32 = 50;
/// Time between two pings on a connection. A ping keeps no connection
/// open; it measures and, on a link kept for announcements, makes a dead
/// peer's connection fail within a few minutes instead of TCP's hours.
/// libp2p's default (15 s) would cost a relay's 16 kept links about
/// 0.5 MB an hour, more than the directory they carry.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5 * 60);
