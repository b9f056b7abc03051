//! The verified local directory: every descriptor in it passed
//! [`SignedDescriptor::verify`].

use std::collections::BTreeMap;

use libp2p::PeerId;

use crate::descriptor::{is_too_old, Descriptor, DescriptorError, SignedDescriptor};

/// Most nodes a [`Directory`] holds.
pub const MAX_NODES: usize = 10_000;

/// What [`Directory::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inserted {
    /// First descriptor for this peer.
    New,
    /// Replaced an older descriptor (lower `seq`).
    Updated,
    /// Exactly the stored descriptor (same seq, same bytes); nothing changed.
    Unchanged,
}

#[derive(Debug, Clone)]
struct Entry {
    desc: Descriptor,
    signed: SignedDescriptor,
}

/// A bounded store of verified descriptors, one per peer, keyed by peer id.
///
/// Iteration is in peer id order, so path selection with a seeded RNG is
/// reproducible.
#[derive(Debug, Clone)]
pub struct Directory {
    own: PeerId,
    nodes: BTreeMap<PeerId, Entry>,
}

impl Directory {
    /// An empty directory for the node `own`. Path selection never picks
    /// `own`, and `own`'s descriptor is stored even when the directory is
    /// full.
    pub fn new(own: PeerId) -> Self {
        Directory {
            own,
            nodes: BTreeMap::new(),
        }
    }

    /// The local node's peer id.
    pub fn own(&self) -> PeerId {
        self.own
    }

    /// Verify `signed` at time `now` and store it.
    ///
    /// A descriptor with the same seq and the same bytes as the stored one
    /// is [`Inserted::Unchanged`]; a higher seq replaces it
    /// ([`Inserted::Updated`]); a lower-or-equal seq with different bytes is
    /// [`DescriptorError::Replayed`]. When the directory is full, stale
    /// entries are dropped first; if it is still full the descriptor is
    /// refused with [`DescriptorError::DirectoryFull`].
    pub fn insert(
        &mut self,
        signed: &SignedDescriptor,
        now: u64,
    ) -> Result<Inserted, DescriptorError> {
        let desc = signed.verify(now)?;
        let peer = desc.peer_id;
        if let Some(old) = self.nodes.get_mut(&peer) {
            if old.signed == *signed {
                return Ok(Inserted::Unchanged);
            }
            if desc.seq <= old.desc.seq {
                return Err(DescriptorError::Replayed {
                    peer,
                    seq: desc.seq,
                    have: old.desc.seq,
                });
            }
            *old = Entry {
                desc,
                signed: signed.clone(),
            };
            return Ok(Inserted::Updated);
        }
        if self.nodes.len() >= MAX_NODES && peer != self.own {
            self.expire(now);
            if self.nodes.len() >= MAX_NODES {
                return Err(DescriptorError::DirectoryFull {
                    peer,
                    max: MAX_NODES,
                });
            }
        }
        self.nodes.insert(
            peer,
            Entry {
                desc,
                signed: signed.clone(),
            },
        );
        Ok(Inserted::New)
    }

    /// Remove descriptors that are too old or whose onion key has expired at
    /// `now`; returns the removed peers.
    pub fn expire(&mut self, now: u64) -> Vec<PeerId> {
        let mut removed = Vec::new();
        self.nodes.retain(|peer, e| {
            let stale = is_too_old(e.desc.published, now) || e.desc.onion_key_expires <= now;
            if stale {
                removed.push(*peer);
            }
            !stale
        });
        removed
    }

    /// Remove one peer's descriptor; returns it if it was present.
    pub fn remove(&mut self, peer: &PeerId) -> Option<Descriptor> {
        self.nodes.remove(peer).map(|e| e.desc)
    }

    /// The verified descriptor of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&Descriptor> {
        self.nodes.get(peer).map(|e| &e.desc)
    }

    /// The signed form of `peer`'s descriptor, to pass on to others.
    pub fn signed(&self, peer: &PeerId) -> Option<&SignedDescriptor> {
        self.nodes.get(peer).map(|e| &e.signed)
    }

    /// All descriptors, in peer id order.
    pub fn iter(&self) -> impl Iterator<Item = &Descriptor> {
        self.nodes.values().map(|e| &e.desc)
    }

    /// Copies of all signed descriptors, in peer id order.
    pub fn all_signed(&self) -> Vec<SignedDescriptor> {
        self.nodes.values().map(|e| e.signed.clone()).collect()
    }

    /// Number of stored descriptors.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
