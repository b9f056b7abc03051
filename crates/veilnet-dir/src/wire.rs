//! The binary body of a descriptor: what a relay signs.
//!
//! Format 3, integers big-endian, counts and lengths one byte (format 2
//! wrote the exit policy's private rejections out rule by rule):
//!
//! ```text
//! format u8 = 3 | identity [32] (raw ed25519 key) | roles u8 (bit 0 relay, bit 1 exit)
//! | link addrs: n u8, (4 [4] port u16 | 6 [16] port u16)*
//! | p2p addrs: n u8, (len u8, multiaddr bytes)*
//! | onion_key [32] | onion_key_expires u64 | link_key [32]
//! | exit policy (veilnet-policy's binary form) | bandwidth u64
//! | region: len u8, bytes | family: n u8, (len u8, peer id bytes)*
//! | version: len u8, UTF-8 | seq u64 | published u64
//! ```
//!
//! The peer id is not sent: it is derived from the identity key, so it
//! cannot disagree with it. The encoding is canonical: [`decode`] refuses
//! bytes that [`encode`] would not produce from what they decode to, so
//! one descriptor has one body and one digest. Limits on counts and sizes
//! are checked afterwards by [`Descriptor::check_fields`], which names the
//! field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libp2p::identity::{ed25519, PublicKey};
use libp2p::{Multiaddr, PeerId};
use veilnet_policy::ExitPolicy;

use crate::descriptor::{Descriptor, DescriptorError, Roles};
use crate::reader::{Reader, Truncated};

/// The body format [`encode`] writes and [`decode`] reads.
pub const BODY_FORMAT: u8 = 3;

const RELAY: u8 = 1;
const EXIT: u8 = 2;

fn malformed(reason: impl Into<String>) -> DescriptorError {
    DescriptorError::Malformed {
        reason: reason.into(),
    }
}

/// The body of `d`, without checking its limits. Fails only if the
/// identity key is not an ed25519 key or a list or string is longer than
/// its one-byte count allows (the limits are far below that).
pub fn encode(d: &Descriptor) -> Result<Vec<u8>, DescriptorError> {
    let key = PublicKey::try_decode_protobuf(&d.identity_key)
        .ok()
        .and_then(|k| k.try_into_ed25519().ok())
        .ok_or(DescriptorError::BadIdentityKey {
            peer: d.peer_id,
            reason: "not an ed25519 key".into(),
        })?;
    let mut out = Vec::with_capacity(320);
    out.push(BODY_FORMAT);
    out.extend_from_slice(&key.to_bytes());
    out.push((u8::from(d.roles.relay) * RELAY) | (u8::from(d.roles.exit) * EXIT));
    count(&mut out, d.link_addrs.len(), "link_addrs")?;
    for a in &d.link_addrs {
        match a.ip() {
            IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    count(&mut out, d.p2p_addrs.len(), "p2p_addrs")?;
    for a in &d.p2p_addrs {
        bytes(&mut out, &a.to_vec(), "p2p_addrs")?;
    }
    out.extend_from_slice(&d.onion_key);
    out.extend_from_slice(&d.onion_key_expires.to_be_bytes());
    out.extend_from_slice(&d.link_key);
    d.exit_policy.encode_into(&mut out);
    out.extend_from_slice(&d.bandwidth.to_be_bytes());
    bytes(&mut out, d.region.as_bytes(), "region")?;
    count(&mut out, d.family.len(), "family")?;
    for p in &d.family {
        bytes(&mut out, &p.to_bytes(), "family")?;
    }
    bytes(&mut out, d.version.as_bytes(), "version")?;
    out.extend_from_slice(&d.seq.to_be_bytes());
    out.extend_from_slice(&d.published.to_be_bytes());
    Ok(out)
}

fn count(out: &mut Vec<u8>, n: usize, field: &'static str) -> Result<(), DescriptorError> {
    let n = u8::try_from(n).map_err(|_| malformed(format!("{field}: {n} entries (max 255)")))?;
    out.push(n);
    Ok(())
}

fn bytes(out: &mut Vec<u8>, b: &[u8], field: &'static str) -> Result<(), DescriptorError> {
    count(out, b.len(), field)?;
    out.extend_from_slice(b);
    Ok(())
}

/// Reads a body written by [`encode`]; refuses anything else.
pub fn decode(body: &[u8]) -> Result<Descriptor, DescriptorError> {
    let r = &mut Reader(body);
    let format = r.u8("format")?;
    if format != BODY_FORMAT {
        return Err(malformed(format!(
            "body format {format}, expected {BODY_FORMAT}"
        )));
    }
    let raw: [u8; 32] = r.array("identity key")?;
    let key = ed25519::PublicKey::try_from_bytes(&raw)
        .map_err(|_| malformed("identity key is not an ed25519 public key"))?;
    let key = PublicKey::from(key);
    let roles = r.u8("roles")?;
    if roles & !(RELAY | EXIT) != 0 {
        return Err(malformed("reserved role bits set"));
    }
    let mut link_addrs = Vec::new();
    for _ in 0..r.u8("link address count")? {
        let ip = match r.u8("link address kind")? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("IPv4 link address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("IPv6 link address")?)),
            k => return Err(malformed(format!("link address kind {k}"))),
        };
        link_addrs.push(SocketAddr::new(ip, r.u16("link port")?));
    }
    let mut p2p_addrs = Vec::new();
    for _ in 0..r.u8("p2p address count")? {
        let b = r.bytes("p2p address")?;
        let a =
            Multiaddr::try_from(b.to_vec()).map_err(|e| malformed(format!("p2p address: {e}")))?;
        p2p_addrs.push(a);
    }
    let onion_key = r.array("onion key")?;
    let onion_key_expires = r.u64("onion key expiry")?;
    let link_key = r.array("link key")?;
    let exit_policy = ExitPolicy::decode_from(&mut r.0).map_err(|e| malformed(e.to_string()))?;
    let bandwidth = r.u64("bandwidth")?;
    let region = string(r, "region")?;
    let mut family = Vec::new();
    for _ in 0..r.u8("family count")? {
        let b = r.bytes("family member")?;
        family.push(PeerId::from_bytes(b).map_err(|e| malformed(format!("family member: {e}")))?);
    }
    let version = string(r, "version")?;
    let seq = r.u64("seq")?;
    let published = r.u64("published")?;
    if !r.0.is_empty() {
        return Err(malformed(format!("{} bytes after the body", r.0.len())));
    }
    let d = Descriptor {
        peer_id: key.to_peer_id(),
        identity_key: key.encode_protobuf(),
        link_addrs,
        p2p_addrs,
        onion_key,
        onion_key_expires,
        link_key,
        roles: Roles {
            relay: roles & RELAY != 0,
            exit: roles & EXIT != 0,
        },
        exit_policy,
        bandwidth,
        region,
        family,
        version,
        seq,
        published,
    };
    if encode(&d)? != body {
        return Err(malformed("not in canonical form"));
    }
    Ok(d)
}

impl From<Truncated> for DescriptorError {
    fn from(t: Truncated) -> Self {
        DescriptorError::Truncated {
            what: t.what,
            needed: t.needed,
            have: t.have,
        }
    }
}

/// A UTF-8 string after a one-byte length.
fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, DescriptorError> {
    let b = r.bytes(what)?;
    String::from_utf8(b.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
}
