//! Proof that a relay equivocated: two descriptors it signed with the same
//! sequence number and different contents.
//!
//! No honest relay does that (its sequence numbers only increase), and
//! each descriptor carries the relay's signature, so the pair is evidence
//! anyone can check without trusting whoever passed it on. The directory
//! keeps both descriptors and passes both on, so every node that receives
//! the pair finds the same proof, and treats the relay as unusable until
//! neither can be verified any more
//! ([`MAX_DESCRIPTOR_AGE`](crate::MAX_DESCRIPTOR_AGE) after the later was
//! published): the end is set by what the relay signed, not by when a node
//! saw it, so nodes forget it at the same time (up to their clock
//! difference).

use libp2p::PeerId;

use crate::descriptor::{is_too_old, DescriptorDigest, SignedDescriptor, Verified};
use crate::MAX_DESCRIPTOR_AGE;

/// Two descriptors a relay signed with one sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    /// The relay.
    pub peer: PeerId,
    /// The sequence number both carry.
    pub seq: u64,
    /// Both descriptors as signed, the one with the lower digest first.
    pub descriptors: [SignedDescriptor; 2],
    /// Their digests, in the same order.
    pub digests: [DescriptorDigest; 2],
    /// When this node saw the second (unix seconds).
    pub detected: u64,
    /// When the later descriptor becomes too old to verify (unix seconds):
    /// the evidence, and the relay's exclusion, end then, so a relay cannot
    /// shorten its exclusion by backdating one of the two.
    pub expires: u64,
}

impl Equivocation {
    /// The evidence made of two verified descriptors of one relay with the
    /// same sequence number and different digests; `None` if they are not
    /// that.
    pub(crate) fn of(
        a: (&SignedDescriptor, &DescriptorDigest, u64),
        b: &Verified,
        now: u64,
    ) -> Option<Self> {
        let (a_signed, a_digest, a_published) = a;
        let desc = b.descriptor();
        if *a_digest == b.digest {
            return None;
        }
        let (first, second) = if *a_digest < b.digest {
            ((a_signed, a_digest), (&b.signed, &b.digest))
        } else {
            ((&b.signed, &b.digest), (a_signed, a_digest))
        };
        Some(Equivocation {
            peer: desc.peer_id,
            seq: desc.seq,
            descriptors: [first.0.clone(), second.0.clone()],
            digests: [*first.1, *second.1],
            detected: now,
            expires: a_published.max(desc.published) + MAX_DESCRIPTOR_AGE,
        })
    }

    /// Whether the evidence has run out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        is_too_old(self.expires.saturating_sub(MAX_DESCRIPTOR_AGE), now)
    }
}
