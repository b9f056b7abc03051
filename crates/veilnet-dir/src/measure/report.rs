//! A measurer's signed report of what it measured in one period.
//!
//! A record, integers big-endian, counts and lengths one byte:
//!
//! ```text
//! tag u8 = b'M' | format u8 = 2 | measurer [32] (raw ed25519 key) | published u64
//! | n u8, (target [32] (raw ed25519 key) | bandwidth u32 | since u32 | reached u8)*
//! | signature [64] (ed25519, over REPORT_CONTEXT || everything before it)
//! ```
//!
//! An observation is 41 bytes (format 1 spent 56: a length-prefixed peer
//! id of 38 bytes and 64-bit figures): relays have ed25519 identities only,
//! a measured rate is far below 4 GiB/s, and unix seconds fit 32 bits until
//! 2106. A report of 3 observations is 230 bytes, not 275; every node
//! receives each one, and a joining node every report of the periods kept.
//!
//! Descriptor records start with a zero byte (the high byte of their body
//! length, always below 2^24), so the first byte tells the two apart
//! ([`is_report`]). The encoding is canonical: [`VerifiedReport::decode`]
//! refuses bytes that [`Report::sign`] would not have written, so one report
//! has one digest. A report's period is its `published` time divided by the
//! network's period length ([`MeasureParams::epoch`](super::MeasureParams::epoch)),
//! so the two cannot disagree. Nothing here reads the clock: the directory
//! checks the time against its own.

use libp2p::identity::{ed25519, Keypair, PublicKey};
use libp2p::PeerId;
use veilnet_error::{ErrorKind, HasKind};

use crate::descriptor::{digest, DescriptorDigest};
use crate::reader::{Reader, Truncated};

/// First byte of a report record.
pub const REPORT_TAG: u8 = b'M';
/// The report format [`Report::sign`] writes.
pub const REPORT_FORMAT: u8 = 2;
/// Prefix of the message a report's signature covers.
pub const REPORT_CONTEXT: &[u8] = b"veilnet measurement report v1\0";
/// Most observations in one report (a measurer is assigned about
/// `measurers_per_target` relays a period; more only in tiny networks).
pub const MAX_OBSERVATIONS: usize = 16;
/// Largest report record: a report of [`MAX_OBSERVATIONS`].
pub const MAX_REPORT_BYTES: usize =
    2 + 32 + 8 + 1 + MAX_OBSERVATIONS * OBSERVATION_BYTES + SIGNATURE_LEN;

/// The highest bandwidth a report can carry (bytes/s, 32 bits): a
/// measurer clamps what it saw to it (figures count only up to
/// [`MeasureParams::max_rate`](super::MeasureParams::max_rate), far below).
pub const MAX_REPORTED_RATE: u64 = u32::MAX as u64;

/// Bytes of one encoded observation.
const OBSERVATION_BYTES: usize = 32 + 4 + 4 + 1;

const SIGNATURE_LEN: usize = 64;

/// Whether `raw` is the canonical encoding of its point: its y below the
/// field's prime p = 2^255 - 19 (little-endian, the top bit being x's
/// sign), and no sign on x = 0 (y = 1 or y = p - 1). ed25519 decoders take
/// the other encodings too, and they name the same point under another
/// key, another peer id.
fn canonical_point(raw: &[u8; 32]) -> bool {
    let top = raw[31] & 0x7f;
    let all_ones = raw[1..31].iter().all(|&b| b == 0xff) && top == 0x7f;
    // y >= p: 2^255 - 19 ..= 2^255 - 1.
    if all_ones && raw[0] >= 0xed {
        return false;
    }
    let negative = raw[31] & 0x80 != 0;
    let y_is_one = raw[0] == 1 && raw[1..31].iter().all(|&b| b == 0) && top == 0;
    let y_is_minus_one = all_ones && raw[0] == 0xec;
    !(negative && (y_is_one || y_is_minus_one))
}

/// The raw ed25519 key of an ed25519 peer id (its identity multihash holds
/// the protobuf-encoded key); `None` for any other kind.
fn raw_key(peer: &PeerId) -> Option<[u8; 32]> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(hash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()?;
    Some(key.to_bytes())
}

/// What a measurer saw of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The relay measured.
    pub target: PeerId,
    /// Bytes per second carried through it (0 if not reached; at most
    /// [`MAX_REPORTED_RATE`]).
    pub bandwidth: u64,
    /// Whether the measurer reached its link address and built a circuit
    /// through it.
    pub reached: bool,
    /// When, as far as the measurer knows, the relay was first measured
    /// (unix seconds, at most `u32::MAX`): what a newcomer's weight ramps
    /// up from.
    pub since: u64,
}

/// One period's observations by one measurer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The measurer's identity.
    pub measurer: PeerId,
    /// When it was signed (unix seconds); its period is this time divided
    /// by the period length. A later report of the same measurer and
    /// period replaces an earlier one: a measurer republishes its report
    /// as the period goes on.
    pub published: u64,
    /// What it saw, one entry per relay, in the order measured.
    pub observations: Vec<Observation>,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not a report in this format.
    #[error("malformed measurement report: {0}")]
    Malformed(String),
    /// The signature does not verify under the measurer's key.
    #[error("measurement report of {0}: bad signature")]
    BadSignature(PeerId),
    /// The signing key is not ed25519 (we never sign otherwise).
    #[error("measurement reports are signed with ed25519 identities only")]
    NotEd25519,
    /// More observations than [`MAX_OBSERVATIONS`], or a relay twice.
    #[error("measurement report of {measurer}: {reason}")]
    BadContents {
        /// The measurer.
        measurer: PeerId,
        /// What is wrong.
        reason: &'static str,
    },
    /// The measurer is not a relay in our directory (it may become one).
    #[error("measurement report of {0}: not a relay we know")]
    UnknownMeasurer(PeerId),
    /// Its epoch is outside the window the directory keeps.
    #[error("measurement report of {measurer} for epoch {epoch}: outside the kept epochs {first}..={last}")]
    OutOfWindow {
        /// The measurer.
        measurer: PeerId,
        /// The report's epoch.
        epoch: u64,
        /// Oldest epoch kept.
        first: u64,
        /// Newest epoch accepted.
        last: u64,
    },
    /// A later report of the same measurer and epoch is held, or this one
    /// does not extend the held one.
    #[error("measurement report of {0}: a later one for this epoch is held, or it does not extend the one held")]
    Superseded(PeerId),
    /// The measurer forked a report ([`crate::measure::ReportFork`]): none
    /// of its reports counts while the proof lasts.
    #[error("measurement report of {measurer} for epoch {epoch}: it forked its report of epoch {fork_epoch}, and its reports are refused while the proof lasts")]
    Forked {
        /// The measurer.
        measurer: PeerId,
        /// The report's epoch.
        epoch: u64,
        /// The epoch of the forked reports.
        fork_epoch: u64,
    },
    /// The directory has measurement turned off.
    #[error("this node does not use measurements")]
    Disabled,
}

impl HasKind for ReportError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReportError::Malformed(_)
            | ReportError::BadSignature(_)
            | ReportError::NotEd25519
            | ReportError::BadContents { .. } => ErrorKind::PeerMisbehaved,
            ReportError::UnknownMeasurer(_)
            | ReportError::OutOfWindow { .. }
            | ReportError::Superseded(_) => ErrorKind::Transient,
            // The measurer is at fault, not the peer that passed it on.
            ReportError::Forked { .. } | ReportError::Disabled => ErrorKind::Refused,
        }
    }
}

/// Whether `record` is a measurement report (else a descriptor).
pub fn is_report(record: &[u8]) -> bool {
    record.first() == Some(&REPORT_TAG)
}

/// The measurer a report record names, read without checking anything
/// else (so a report of a measurer we do not list costs no signature
/// check); `None` if the record is too short or the key is not a point.
pub fn claimed_measurer(record: &[u8]) -> Option<PeerId> {
    let raw = record.get(2..34)?;
    let key = ed25519::PublicKey::try_from_bytes(raw).ok()?;
    Some(PublicKey::from(key).to_peer_id())
}

fn malformed(reason: impl Into<String>) -> ReportError {
    ReportError::Malformed(reason.into())
}

impl Report {
    fn check(&self) -> Result<(), ReportError> {
        let bad = |reason| ReportError::BadContents {
            measurer: self.measurer,
            reason,
        };
        if self.observations.len() > MAX_OBSERVATIONS {
            return Err(bad("more observations than allowed"));
        }
        let mut seen = std::collections::HashSet::new();
        for o in &self.observations {
            if !seen.insert(o.target) {
                return Err(bad("one relay observed twice"));
            }
            if o.target == self.measurer {
                return Err(bad("a measurer cannot observe itself"));
            }
            if !o.reached && o.bandwidth != 0 {
                return Err(bad("bandwidth through a relay it did not reach"));
            }
        }
        Ok(())
    }

    /// Everything the signature covers (the record without it).
    fn body(&self, key: &ed25519::PublicKey) -> Result<Vec<u8>, ReportError> {
        self.check()?;
        let bad = |reason| ReportError::BadContents {
            measurer: self.measurer,
            reason,
        };
        let mut out =
            Vec::with_capacity(43 + self.observations.len() * OBSERVATION_BYTES + SIGNATURE_LEN);
        out.push(REPORT_TAG);
        out.push(REPORT_FORMAT);
        out.extend_from_slice(&key.to_bytes());
        out.extend_from_slice(&self.published.to_be_bytes());
        // Checked above: at most MAX_OBSERVATIONS.
        out.push(self.observations.len() as u8);
        for o in &self.observations {
            let key = raw_key(&o.target)
                .ok_or_else(|| bad("a relay whose identity is not an ed25519 key"))?;
            if !canonical_point(&key) {
                return Err(bad("a relay key not in canonical form"));
            }
            let bandwidth =
                u32::try_from(o.bandwidth).map_err(|_| bad("bandwidth above 4 GiB/s"))?;
            let since =
                u32::try_from(o.since).map_err(|_| bad("a first-measured time past 2106"))?;
            out.extend_from_slice(&key);
            out.extend_from_slice(&bandwidth.to_be_bytes());
            out.extend_from_slice(&since.to_be_bytes());
            out.push(u8::from(o.reached));
        }
        Ok(out)
    }

    /// The signed record of this report. `identity` must be the
    /// measurer's key (an ed25519 key).
    pub fn sign(&self, identity: &Keypair) -> Result<Vec<u8>, ReportError> {
        let key = identity
            .public()
            .try_into_ed25519()
            .map_err(|_| ReportError::NotEd25519)?;
        if PublicKey::from(key.clone()).to_peer_id() != self.measurer {
            return Err(ReportError::BadSignature(self.measurer));
        }
        let mut out = self.body(&key)?;
        let mut msg = REPORT_CONTEXT.to_vec();
        msg.extend_from_slice(&out);
        let sig = identity
            .sign(&msg)
            .map_err(|_| ReportError::BadSignature(self.measurer))?;
        out.extend_from_slice(&sig);
        Ok(out)
    }
}

/// A report whose encoding and signature were checked, with its record
/// bytes and their digest.
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    /// What it says.
    pub report: Report,
    /// The record, as it travels.
    pub record: Vec<u8>,
    /// SHA-256 of the record (the same digest as descriptors').
    pub digest: DescriptorDigest,
}

impl VerifiedReport {
    /// Decodes a report record and checks its signature. Needs no
    /// directory and no clock: call it without holding a lock.
    pub fn decode(record: &[u8]) -> Result<Self, ReportError> {
        if record.len() > MAX_REPORT_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than {MAX_REPORT_BYTES}",
                record.len()
            )));
        }
        let r = &mut Reader(record);
        if r.u8("tag")? != REPORT_TAG {
            return Err(malformed("not a report"));
        }
        let format = r.u8("format")?;
        if format != REPORT_FORMAT {
            return Err(malformed(format!(
                "format {format}, expected {REPORT_FORMAT}"
            )));
        }
        let raw: [u8; 32] = r.array("measurer key")?;
        if !canonical_point(&raw) {
            return Err(malformed("measurer key not in canonical form"));
        }
        let key = ed25519::PublicKey::try_from_bytes(&raw)
            .map_err(|_| malformed("measurer key is not an ed25519 public key"))?;
        let measurer = PublicKey::from(key.clone()).to_peer_id();
        let published = r.u64("published")?;
        let n = usize::from(r.u8("observation count")?);
        if n > MAX_OBSERVATIONS {
            return Err(malformed(format!(
                "{n} observations, more than {MAX_OBSERVATIONS}"
            )));
        }
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let target: [u8; 32] = r.array("target key")?;
            let bandwidth = u64::from(u32::from_be_bytes(r.array("bandwidth")?));
            let since = u64::from(u32::from_be_bytes(r.array("since")?));
            let reached = match r.u8("reached")? {
                0 => false,
                1 => true,
                v => return Err(malformed(format!("reached flag {v}"))),
            };
            fields.push((target, bandwidth, since, reached));
        }
        let signed_len = record.len() - r.0.len();
        let sig: [u8; SIGNATURE_LEN] = r.array("signature")?;
        if !r.0.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the signature",
                r.0.len()
            )));
        }
        // The signature first: until it holds, the rest costs nothing
        // more (one key decompressed, one check).
        let mut msg = REPORT_CONTEXT.to_vec();
        msg.extend_from_slice(&record[..signed_len]);
        if !key.verify(&msg, &sig) {
            return Err(ReportError::BadSignature(measurer));
        }
        // Canonical: fixed-width fields, flags of one value each and keys
        // in canonical form, so one report has one encoding and one digest.
        let mut observations = Vec::with_capacity(n);
        for (raw, bandwidth, since, reached) in fields {
            if !canonical_point(&raw) {
                return Err(malformed("target key not in canonical form"));
            }
            let target = ed25519::PublicKey::try_from_bytes(&raw)
                .map_err(|_| malformed("target key is not an ed25519 public key"))?;
            observations.push(Observation {
                target: PublicKey::from(target).to_peer_id(),
                bandwidth,
                reached,
                since,
            });
        }
        let report = Report {
            measurer,
            published,
            observations,
        };
        report.check()?;
        Ok(VerifiedReport {
            report,
            record: record.to_vec(),
            digest: digest(record),
        })
    }
}

impl From<Truncated> for ReportError {
    fn from(t: Truncated) -> Self {
        malformed(format!(
            "truncated in {}: needs {} bytes, {} left",
            t.what, t.needed, t.have
        ))
    }
}
