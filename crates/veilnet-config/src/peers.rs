//! The list of known peers, `peers.json`, kept across restarts so that a node
//! does not depend on its bootstrap nodes every time it starts; and, in the
//! same form, a client's fetch relays, `fetch-relays.json` (its directory
//! guards: it goes back to them, not to new relays, after a restart).

use std::collections::HashSet;
use std::path::Path;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PRIVATE_FILE_MODE};
use crate::ConfigError;

/// File name of the known-peers list.
pub const PEERS_FILE: &str = "peers.json";
/// File name of a client's fetch relays.
pub const FETCH_RELAYS_FILE: &str = "fetch-relays.json";
/// Most entries saved to or loaded from [`PEERS_FILE`].
pub const MAX_PEERS: usize = 1000;
/// Largest peers file read.
const MAX_PEERS_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    version: u32,
    peers: Vec<PeerEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerEntry {
    peer_id: PeerId,
    addr: Multiaddr,
}

/// Whether `addr` does not name a different peer than `peer`.
fn consistent(peer: &PeerId, addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::P2p(id) => id == *peer,
        _ => true,
    })
}

/// Loads the known peers from `dir/peers.json`; an absent file is an empty
/// list. A file that is not a valid peers list is an error naming it. At most
/// [`MAX_PEERS`] entries are returned; entries whose address names another
/// peer id are skipped.
pub fn load_peers(dir: &Path) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
    load_list(dir, PEERS_FILE)
}

/// Loads a client's fetch relays from `dir/fetch-relays.json`, as
/// [`load_peers`] does.
pub fn load_fetch_relays(dir: &Path) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
    load_list(dir, FETCH_RELAYS_FILE)
}

/// Atomically replaces `dir/fetch-relays.json` (mode 0600), as
/// [`save_peers`] does.
pub fn save_fetch_relays(dir: &Path, relays: &[(PeerId, Multiaddr)]) -> Result<(), ConfigError> {
    save_list(dir, FETCH_RELAYS_FILE, relays)
}

fn load_list(dir: &Path, name: &str) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
    let path = dir.join(name);
    let Some(bytes) = fsutil::read_bounded(&path, MAX_PEERS_FILE_BYTES, false)? else {
        return Ok(Vec::new());
    };
    let file: PeersFile =
        serde_json::from_slice(&bytes).map_err(|e| ConfigError::corrupt(&path, e.to_string()))?;
    if file.version != 1 {
        return Err(ConfigError::corrupt(
            &path,
            format!("unsupported version {}", file.version),
        ));
    }
    if file.peers.len() > MAX_PEERS {
        tracing::warn!(
            file = %path.display(),
            entries = file.peers.len(),
            "peers file has more than {MAX_PEERS} entries; ignoring the rest"
        );
    }
    Ok(file
        .peers
        .into_iter()
        .filter(|e| consistent(&e.peer_id, &e.addr))
        .take(MAX_PEERS)
        .map(|e| (e.peer_id, e.addr))
        .collect())
}

/// Atomically replaces `dir/peers.json` (mode 0600) with `peers`, in order.
///
/// Keeps the first [`MAX_PEERS`] distinct entries; entries whose address
/// names a different peer id are dropped.
pub fn save_peers(dir: &Path, peers: &[(PeerId, Multiaddr)]) -> Result<(), ConfigError> {
    save_list(dir, PEERS_FILE, peers)
}

fn save_list(dir: &Path, name: &str, peers: &[(PeerId, Multiaddr)]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    let entries: Vec<PeerEntry> = peers
        .iter()
        .filter(|(id, addr)| consistent(id, addr) && seen.insert((*id, addr.clone())))
        .take(MAX_PEERS)
        .map(|(id, addr)| PeerEntry {
            peer_id: *id,
            addr: addr.clone(),
        })
        .collect();
    let file = PeersFile {
        version: 1,
        peers: entries,
    };
    let path = dir.join(name);
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| ConfigError::io("encoding", &path, std::io::Error::other(e)))?;
    fsutil::write_atomic(&path, &json, PRIVATE_FILE_MODE)
}
