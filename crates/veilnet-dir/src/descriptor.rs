//! Signed node descriptors: what a node says about itself, and how others
//! check it.

use std::net::SocketAddr;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use veilnet_error::{ErrorKind, HasKind};
use veilnet_policy::ExitPolicy;

/// Domain separation prefix of the signed message: the signature covers
/// `SIGNING_CONTEXT || body`.
pub const SIGNING_CONTEXT: &[u8] = b"veilnet-descriptor-v2\0";
/// Largest accepted framed descriptor ([`SignedDescriptor::to_bytes`]). A
/// typical one is about 300 bytes; every field at its limit (256 IPv6 exit
/// rules, 16 family members, 8 long libp2p addresses) exceeds it.
pub const MAX_DESCRIPTOR_BYTES: usize = 8 * 1024;
/// Largest accepted signature (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;
/// How far in the future `published` may lie (clock skew), in seconds.
pub const MAX_CLOCK_SKEW: u64 = 300;
/// How often a relay republishes its descriptor when nothing in it changed,
/// in seconds (a changed descriptor, e.g. after an onion key rotation, is
/// republished at once). Every publication reaches every relay (a push of
/// its digest to six of them, then the record), so a relay's directory
/// traffic grows with relays ÷ this period. At 5000 relays and 5 % churn an
/// hour, 18 h makes about 280 republications an hour next to 250 new
/// relays' first descriptors (12 h made 420: `veilnet-sim`, BENCHMARKS.md
/// session 12); a longer period saves less and less while churn costs as
/// much. Tor republishes every 18 h too. veilnet-node spreads its first republication at random over
/// the second half of the period, so relays started together do not
/// republish together.
pub const REPUBLISH_EVERY: u64 = 18 * 60 * 60;
/// How old a descriptor may get before it is rejected / aged out, in seconds:
/// two republish periods, so a relay that misses one republication (a
/// long restart, a partition) is not dropped. Expiry is not how dead relays
/// leave the directory in time: the reachability measurement
/// (`veilnet-dir`'s measure module, run by veilnet-node) marks relays that
/// stop answering unusable, so a long lifetime costs memory and a joining
/// node's first download, not failed circuits. Under heavy churn dead
/// descriptors add up: at 5 % of 5000 relays leaving per hour about 6,750
/// of them stay next to the 5000 live ones (each lives on for the rest of
/// its 36 h, some 27 h on average), within [`crate::MAX_NODES`] but more
/// than half of what a joining node downloads.
pub const MAX_DESCRIPTOR_AGE: u64 = 2 * REPUBLISH_EVERY;
/// Most link and most libp2p addresses a descriptor may list (each).
pub const MAX_ADDRS: usize = 8;
/// Most family members a descriptor may declare.
pub const MAX_FAMILY: usize = 16;
/// Longest `version` string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// Framing overhead of [`SignedDescriptor::to_bytes`]: `u32` + `u16` lengths.
const FRAME_OVERHEAD: usize = 4 + 2;

/// What a node offers to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Roles {
    /// Carries circuits as a guard or middle hop.
    pub relay: bool,
    /// Opens connections to the outside world as the last hop.
    pub exit: bool,
}

/// Everything a node publishes about itself. Signed into a
/// [`SignedDescriptor`]; only trust one returned by
/// [`SignedDescriptor::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The node's libp2p identity; must be derived from `identity_key`.
    pub peer_id: PeerId,
    /// Protobuf encoding of the node's libp2p ed25519 public key (hex in JSON).
    #[serde(with = "hex_vec")]
    pub identity_key: Vec<u8>,
    /// Where the node's cell-link listener accepts connections.
    pub link_addrs: Vec<SocketAddr>,
    /// libp2p listen addresses.
    pub p2p_addrs: Vec<Multiaddr>,
    /// X25519 public key for circuit handshakes (hex in JSON).
    #[serde(with = "hex_array")]
    pub onion_key: [u8; 32],
    /// When `onion_key` stops being valid (unix seconds).
    pub onion_key_expires: u64,
    /// X25519 public key a link initiator must know to open a link to this
    /// node (hex in JSON): the link handshake answers nobody else.
    #[serde(with = "hex_array")]
    pub link_key: [u8; 32],
    /// Relay / exit roles.
    pub roles: Roles,
    /// Which targets the node connects to as an exit.
    pub exit_policy: ExitPolicy,
    /// Advertised bandwidth in bytes per second.
    pub bandwidth: u64,
    /// ISO 3166-1 alpha-2 country code, or `ZZ` when unknown.
    pub region: String,
    /// Declared family: nodes run by the same operator. Two nodes are in the
    /// same family only if each lists the other.
    pub family: Vec<PeerId>,
    /// Software version, at most [`MAX_VERSION_LEN`] bytes.
    pub version: String,
    /// Sequence number, strictly increasing with every new descriptor.
    pub seq: u64,
    /// When the descriptor was made (unix seconds).
    pub published: u64,
}

/// SHA-256 of a descriptor's framed bytes ([`SignedDescriptor::to_bytes`]):
/// how a directory recognises a descriptor it already holds, or one it has
/// already refused, before parsing it or checking its signature.
pub type DescriptorDigest = [u8; 32];

/// The [`DescriptorDigest`] of framed descriptor bytes as they arrived.
/// Equal to [`SignedDescriptor::digest`] of what
/// [`SignedDescriptor::from_bytes`] decodes from them (the framing has one
/// encoding).
pub fn digest(raw: &[u8]) -> DescriptorDigest {
    Sha256::digest(raw).into()
}

/// A descriptor whose signature and fields were checked by
/// [`SignedDescriptor::verify_into`], with the signed form and its digest:
/// the only thing [`Directory::insert_verified`](crate::Directory::insert_verified)
/// accepts.
#[derive(Debug, Clone)]
pub struct Verified {
    pub(crate) desc: Descriptor,
    pub(crate) signed: SignedDescriptor,
    pub(crate) digest: DescriptorDigest,
}

impl Verified {
    /// The checked descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// The digest of its signed form.
    pub fn digest(&self) -> &DescriptorDigest {
        &self.digest
    }
}

/// A descriptor body with its signature, as it travels between nodes.
///
/// `body` is the binary encoding of a [`Descriptor`] (format
/// [`BODY_FORMAT`](crate::wire::BODY_FORMAT), see [`crate::wire`]);
/// `signature` is the identity key's signature over
/// [`SIGNING_CONTEXT`]` || body`. In JSON both fields are hex strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedDescriptor {
    /// Binary encoding of the [`Descriptor`] ([`crate::wire`]).
    #[serde(with = "hex_vec")]
    pub body: Vec<u8>,
    /// Signature over [`SIGNING_CONTEXT`]` || body`.
    #[serde(with = "hex_vec")]
    pub signature: Vec<u8>,
}

/// Why a descriptor was not signed, decoded, verified or stored.
///
/// Display messages name the peer (when known) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// The encoded descriptor is larger than allowed.
    #[error("descriptor too large: {len} bytes (max {max})")]
    TooLarge {
        /// Size seen.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The framed bytes end early.
    #[error("descriptor truncated: {what} needs {needed} bytes, {have} left")]
    Truncated {
        /// Which part was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// Bytes follow the signature.
    #[error("descriptor has {extra} trailing bytes")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The signature is longer than any supported signature.
    #[error("descriptor signature is {len} bytes (max {MAX_SIGNATURE_BYTES})")]
    SignatureTooLong {
        /// Size seen.
        len: usize,
    },
    /// The body is not a valid descriptor body (format, framing of a
    /// field, or not canonical).
    #[error("descriptor body is not valid: {reason}")]
    Malformed {
        /// What the decoder found.
        reason: String,
    },
    /// `identity_key` does not decode to an ed25519 libp2p public key.
    #[error("descriptor of {peer}: bad identity key: {reason}")]
    BadIdentityKey {
        /// Claimed peer.
        peer: PeerId,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify.
    #[error("descriptor of {peer}: bad signature")]
    BadSignature {
        /// Claimed peer.
        peer: PeerId,
    },
    /// `published` is too far in the future.
    #[error("descriptor of {peer}: published {published} is more than {MAX_CLOCK_SKEW}s after now ({now})")]
    FromFuture {
        /// Peer.
        peer: PeerId,
        /// Its `published`.
        published: u64,
        /// Our clock.
        now: u64,
    },
    /// `published` is older than [`MAX_DESCRIPTOR_AGE`].
    #[error("descriptor of {peer}: expired (published {published}, now {now}, max age {MAX_DESCRIPTOR_AGE}s)")]
    Expired {
        /// Peer.
        peer: PeerId,
        /// Its `published`.
        published: u64,
        /// Our clock.
        now: u64,
    },
    /// `onion_key_expires` is not after now.
    #[error("descriptor of {peer}: onion key expired at {expires} (now {now})")]
    OnionKeyExpired {
        /// Peer.
        peer: PeerId,
        /// Its `onion_key_expires`.
        expires: u64,
        /// Our clock.
        now: u64,
    },
    /// A field breaks a limit or format rule.
    #[error("descriptor of {peer}: field {field}: {reason}")]
    BadField {
        /// Peer.
        peer: PeerId,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A descriptor with a sequence number not above the stored one, and
    /// different bytes.
    #[error("descriptor of {peer}: replayed or stale seq {seq} (have {have})")]
    Replayed {
        /// Peer.
        peer: PeerId,
        /// Offered sequence number.
        seq: u64,
        /// Stored sequence number.
        have: u64,
    },
    /// The relay signed two descriptors with one sequence number; while
    /// the directory keeps that evidence
    /// ([`Equivocation`](crate::Equivocation)), it takes no other
    /// descriptor of the relay.
    #[error("descriptor of {peer}: refused, the relay equivocated at seq {seq}")]
    Equivocated {
        /// The relay.
        peer: PeerId,
        /// The sequence number it signed twice.
        seq: u64,
    },
    /// The directory holds [`crate::MAX_NODES`] nodes already.
    #[error("directory full ({max} nodes); dropping descriptor of {peer}")]
    DirectoryFull {
        /// Peer that did not fit.
        peer: PeerId,
        /// Limit.
        max: usize,
    },
    /// Signing: the keypair is not the descriptor's identity.
    #[error("cannot sign descriptor of {peer}: keypair does not match peer_id/identity_key")]
    KeyMismatch {
        /// Descriptor's peer.
        peer: PeerId,
    },
    /// Signing or encoding failed locally.
    #[error("cannot sign descriptor: {reason}")]
    Signing {
        /// Why.
        reason: String,
    },
}

/// The kinds are those of a descriptor that came from a peer:
///
/// * one that is malformed, forged or over a limit ([`TooLarge`],
///   [`Truncated`], [`TrailingBytes`], [`SignatureTooLong`], [`Malformed`],
///   [`BadIdentityKey`], [`BadSignature`], [`BadField`])
///   is [`ErrorKind::PeerMisbehaved`], as no honest node sends one;
/// * one that is not valid now ([`Expired`], [`OnionKeyExpired`],
///   [`Replayed`] and [`FromFuture`]) is [`ErrorKind::Transient`]: gossip
///   carries old copies in normal operation and either clock may be wrong,
///   so drop it quietly and do not blame the peer (match [`FromFuture`]
///   itself to watch for a wrong clock of ours);
/// * one of a relay that equivocated ([`Equivocated`]) is
///   [`ErrorKind::Refused`]: the relay is at fault, not the peer that passed
///   its descriptor on;
/// * a full directory ([`DirectoryFull`]) is [`ErrorKind::LocalResource`];
/// * signing with the wrong key ([`KeyMismatch`]) is the caller's mistake,
///   [`ErrorKind::BadConfig`];
/// * a failure to encode or sign ([`Signing`]) is [`ErrorKind::Bug`], as
///   neither fails with an ed25519 key.
///
/// [`Descriptor::sign`] checks our own descriptor with the same rules, so a
/// [`BadField`], [`TooLarge`] or [`SignatureTooLong`] from `sign` says
/// `PeerMisbehaved` about a descriptor that is ours: the caller of `sign`
/// knows better, it is our configuration that is at fault.
///
/// [`TooLarge`]: DescriptorError::TooLarge
/// [`Truncated`]: DescriptorError::Truncated
/// [`TrailingBytes`]: DescriptorError::TrailingBytes
/// [`SignatureTooLong`]: DescriptorError::SignatureTooLong
/// [`Malformed`]: DescriptorError::Malformed
/// [`BadIdentityKey`]: DescriptorError::BadIdentityKey
/// [`BadSignature`]: DescriptorError::BadSignature
/// [`BadField`]: DescriptorError::BadField
/// [`Expired`]: DescriptorError::Expired
/// [`OnionKeyExpired`]: DescriptorError::OnionKeyExpired
/// [`Replayed`]: DescriptorError::Replayed
/// [`FromFuture`]: DescriptorError::FromFuture
/// [`Equivocated`]: DescriptorError::Equivocated
/// [`DirectoryFull`]: DescriptorError::DirectoryFull
/// [`KeyMismatch`]: DescriptorError::KeyMismatch
/// [`Signing`]: DescriptorError::Signing
impl HasKind for DescriptorError {
    fn kind(&self) -> ErrorKind {
        use DescriptorError::*;
        match self {
            TooLarge { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | SignatureTooLong { .. }
            | Malformed { .. }
            | BadIdentityKey { .. }
            | BadSignature { .. }
            | BadField { .. } => ErrorKind::PeerMisbehaved,
            Expired { .. } | OnionKeyExpired { .. } | Replayed { .. } | FromFuture { .. } => {
                ErrorKind::Transient
            }
            Equivocated { .. } => ErrorKind::Refused,
            DirectoryFull { .. } => ErrorKind::LocalResource,
            KeyMismatch { .. } => ErrorKind::BadConfig,
            Signing { .. } => ErrorKind::Bug,
        }
    }
}

impl DescriptorError {
    /// The peer the error is about, when known.
    pub fn peer(&self) -> Option<PeerId> {
        use DescriptorError::*;
        match self {
            BadIdentityKey { peer, .. }
            | BadSignature { peer }
            | FromFuture { peer, .. }
            | Expired { peer, .. }
            | OnionKeyExpired { peer, .. }
            | BadField { peer, .. }
            | Replayed { peer, .. }
            | Equivocated { peer, .. }
            | DirectoryFull { peer, .. }
            | KeyMismatch { peer } => Some(*peer),
            TooLarge { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | SignatureTooLong { .. }
            | Malformed { .. }
            | Signing { .. } => None,
        }
    }
}

impl Descriptor {
    /// Check the field limits and formats (not time, not signature).
    pub fn check_fields(&self) -> Result<(), DescriptorError> {
        let bad = |field: &'static str, reason: String| DescriptorError::BadField {
            peer: self.peer_id,
            field,
            reason,
        };
        if self.link_addrs.len() > MAX_ADDRS {
            return Err(bad(
                "link_addrs",
                format!("{} addresses (max {MAX_ADDRS})", self.link_addrs.len()),
            ));
        }
        if let Some(a) = self
            .link_addrs
            .iter()
            .find(|a| a.port() == 0 || a.ip().is_unspecified())
        {
            return Err(bad(
                "link_addrs",
                format!("{a} is not connectable (unspecified address or port 0)"),
            ));
        }
        if self.p2p_addrs.len() > MAX_ADDRS {
            return Err(bad(
                "p2p_addrs",
                format!("{} addresses (max {MAX_ADDRS})", self.p2p_addrs.len()),
            ));
        }
        if self.family.len() > MAX_FAMILY {
            return Err(bad(
                "family",
                format!("{} members (max {MAX_FAMILY})", self.family.len()),
            ));
        }
        if self.region.len() != 2 || !self.region.bytes().all(|b| b.is_ascii_uppercase()) {
            let shown: String = self.region.chars().take(8).collect();
            return Err(bad(
                "region",
                format!("{shown:?} is not 2 uppercase ASCII letters (use \"ZZ\" if unknown)"),
            ));
        }
        if self.version.len() > MAX_VERSION_LEN {
            return Err(bad(
                "version",
                format!("{} bytes (max {MAX_VERSION_LEN})", self.version.len()),
            ));
        }
        Ok(())
    }

    /// Sign this descriptor with the node's identity keypair.
    ///
    /// Fails if `key` is not the descriptor's identity (`peer_id` and
    /// `identity_key` must both match), if a field breaks a limit, or if the
    /// result would exceed [`MAX_DESCRIPTOR_BYTES`].
    pub fn sign(&self, key: &Keypair) -> Result<SignedDescriptor, DescriptorError> {
        let public = key.public();
        if public.to_peer_id() != self.peer_id || public.encode_protobuf() != self.identity_key {
            return Err(DescriptorError::KeyMismatch { peer: self.peer_id });
        }
        self.check_fields()?;
        let body = self.to_body()?;
        let signature = key
            .sign(&signed_message(&body))
            .map_err(|e| DescriptorError::Signing {
                reason: e.to_string(),
            })?;
        let signed = SignedDescriptor { body, signature };
        signed.check_size()?;
        Ok(signed)
    }
}

impl Descriptor {
    /// The body [`sign`](Self::sign) signs ([`crate::wire`]), without
    /// checking the field limits (so tests and tools can build descriptors
    /// that break them).
    pub fn to_body(&self) -> Result<Vec<u8>, DescriptorError> {
        crate::wire::encode(self)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

impl SignedDescriptor {
    /// Size of [`to_bytes`](Self::to_bytes)'s output.
    pub fn encoded_len(&self) -> usize {
        FRAME_OVERHEAD + self.body.len() + self.signature.len()
    }

    /// The [`DescriptorDigest`] of [`to_bytes`](Self::to_bytes), without
    /// building them.
    pub fn digest(&self) -> DescriptorDigest {
        let body_len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        let sig_len = u16::try_from(self.signature.len()).unwrap_or(u16::MAX);
        let mut h = Sha256::new();
        h.update(body_len.to_be_bytes());
        h.update(&self.body);
        h.update(sig_len.to_be_bytes());
        h.update(&self.signature);
        h.finalize().into()
    }

    /// [`verify`](Self::verify), keeping the signed form and its digest for
    /// the directory. Needs no directory: call it without holding one's lock.
    pub fn verify_into(self, now: u64) -> Result<Verified, DescriptorError> {
        let desc = self.verify(now)?;
        let digest = self.digest();
        Ok(Verified {
            desc,
            signed: self,
            digest,
        })
    }

    fn check_size(&self) -> Result<(), DescriptorError> {
        if self.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(DescriptorError::SignatureTooLong {
                len: self.signature.len(),
            });
        }
        let len = self.encoded_len();
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge {
                len,
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        Ok(())
    }

    /// Compact framing: `u32 BE body length | body | u16 BE signature length | signature`.
    ///
    /// A hand-built descriptor over the size limits encodes to bytes that
    /// [`from_bytes`](Self::from_bytes) rejects (lengths saturate).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        let body_len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        let sig_len = u16::try_from(self.signature.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&sig_len.to_be_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decode [`to_bytes`](Self::to_bytes)'s framing. Checks sizes and
    /// framing only; call [`verify`](Self::verify) before trusting it.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DescriptorError> {
        if b.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge {
                len: b.len(),
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        let mut rest = b;
        let body_len = take(&mut rest, 4, "body length")?;
        let body_len = u32::from_be_bytes([body_len[0], body_len[1], body_len[2], body_len[3]]);
        let body_len = usize::try_from(body_len).unwrap_or(usize::MAX);
        let body = take(&mut rest, body_len, "body")?.to_vec();
        let sig_len = take(&mut rest, 2, "signature length")?;
        let sig_len = usize::from(u16::from_be_bytes([sig_len[0], sig_len[1]]));
        if sig_len > MAX_SIGNATURE_BYTES {
            return Err(DescriptorError::SignatureTooLong { len: sig_len });
        }
        let signature = take(&mut rest, sig_len, "signature")?.to_vec();
        if !rest.is_empty() {
            return Err(DescriptorError::TrailingBytes { extra: rest.len() });
        }
        Ok(SignedDescriptor { body, signature })
    }

    /// Check everything and return the descriptor.
    ///
    /// Checks, in order: size limits; the body decodes ([`crate::wire`]:
    /// canonical, the peer id derived from the ed25519 identity key); field
    /// limits (addresses, family, region, version); the signature; `published` at
    /// most [`MAX_CLOCK_SKEW`] in the future and at most
    /// [`MAX_DESCRIPTOR_AGE`] in the past; `onion_key_expires > now`.
    pub fn verify(&self, now: u64) -> Result<Descriptor, DescriptorError> {
        self.check_size()?;
        let desc = crate::wire::decode(&self.body)?;
        let peer = desc.peer_id;
        desc.check_fields()?;
        // The body carries the raw ed25519 key and the peer id is derived
        // from it, so the two cannot disagree.
        let key = PublicKey::try_decode_protobuf(&desc.identity_key).map_err(|e| {
            DescriptorError::BadIdentityKey {
                peer,
                reason: e.to_string(),
            }
        })?;
        if !key.verify(&signed_message(&self.body), &self.signature) {
            return Err(DescriptorError::BadSignature { peer });
        }
        if desc.published > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(DescriptorError::FromFuture {
                peer,
                published: desc.published,
                now,
            });
        }
        if is_too_old(desc.published, now) {
            return Err(DescriptorError::Expired {
                peer,
                published: desc.published,
                now,
            });
        }
        if desc.onion_key_expires <= now {
            return Err(DescriptorError::OnionKeyExpired {
                peer,
                expires: desc.onion_key_expires,
                now,
            });
        }
        Ok(desc)
    }
}

/// Whether a descriptor published at `published` is too old at `now`.
pub(crate) fn is_too_old(published: u64, now: u64) -> bool {
    published < now.saturating_sub(MAX_DESCRIPTOR_AGE)
}

fn take<'a>(
    rest: &mut &'a [u8],
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], DescriptorError> {
    if rest.len() < n {
        return Err(DescriptorError::Truncated {
            what,
            needed: n,
            have: rest.len(),
        });
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        Keypair::ed25519_from_bytes([7u8; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    /// One sample of every variant, each with the kind it must have.
    fn samples() -> Vec<(DescriptorError, ErrorKind)> {
        use DescriptorError::*;
        let peer = peer();
        let bad = ErrorKind::PeerMisbehaved;
        vec![
            (
                TooLarge {
                    len: 20_000,
                    max: 16_384,
                },
                bad,
            ),
            (
                Truncated {
                    what: "body",
                    needed: 10,
                    have: 3,
                },
                bad,
            ),
            (TrailingBytes { extra: 1 }, bad),
            (SignatureTooLong { len: 600 }, bad),
            (
                Malformed {
                    reason: "expected value".into(),
                },
                bad,
            ),
            (
                BadIdentityKey {
                    peer,
                    reason: "RSA".into(),
                },
                bad,
            ),
            (BadSignature { peer }, bad),
            (
                FromFuture {
                    peer,
                    published: 2_000,
                    now: 1_000,
                },
                ErrorKind::Transient,
            ),
            (
                Expired {
                    peer,
                    published: 1,
                    now: 100_000,
                },
                ErrorKind::Transient,
            ),
            (
                OnionKeyExpired {
                    peer,
                    expires: 10,
                    now: 20,
                },
                ErrorKind::Transient,
            ),
            (
                BadField {
                    peer,
                    field: "region",
                    reason: "not 2 letters".into(),
                },
                bad,
            ),
            (
                Replayed {
                    peer,
                    seq: 4,
                    have: 5,
                },
                ErrorKind::Transient,
            ),
            (
                DirectoryFull {
                    peer,
                    max: crate::MAX_NODES,
                },
                ErrorKind::LocalResource,
            ),
            (KeyMismatch { peer }, ErrorKind::BadConfig),
            (
                Signing {
                    reason: "cannot encode".into(),
                },
                ErrorKind::Bug,
            ),
            (Equivocated { peer, seq: 5 }, ErrorKind::Refused),
        ]
    }

    /// Which variant `e` is. No `_` arm: a new variant does not compile
    /// until it gets a sample and a kind here.
    fn variant(e: &DescriptorError) -> usize {
        use DescriptorError::*;
        match e {
            TooLarge { .. } => 0,
            Truncated { .. } => 1,
            TrailingBytes { .. } => 2,
            SignatureTooLong { .. } => 3,
            Malformed { .. } => 4,
            BadIdentityKey { .. } => 5,
            BadSignature { .. } => 7,
            FromFuture { .. } => 8,
            Expired { .. } => 9,
            OnionKeyExpired { .. } => 10,
            BadField { .. } => 11,
            Replayed { .. } => 12,
            DirectoryFull { .. } => 13,
            KeyMismatch { .. } => 14,
            Signing { .. } => 15,
            Equivocated { .. } => 6,
        }
    }

    #[test]
    fn kinds() {
        let samples = samples();
        for (e, want) in &samples {
            assert_eq!(e.kind(), *want, "{e}");
        }
        let mut seen: Vec<usize> = samples.iter().map(|(e, _)| variant(e)).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..=15).collect::<Vec<_>>(),
            "a variant has no sample"
        );
    }
}
