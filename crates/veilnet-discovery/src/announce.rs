//! Announcements: the frames relays push newly accepted records with, on
//! one long-lived stream per link and direction (`/veilnet/announce`).
//!
//! A request-response exchange per announcement costs a stream's
//! negotiation, its closing and an answer even when the receiver holds
//! everything announced, which it mostly does (each record is announced to
//! a relay by about as many peers as push to it). On a stream that stays
//! open an announcement is one frame and needs no answer:
//!
//! * [`Frame::Announce`]: short ids of records the sender has just
//!   accepted;
//! * [`Frame::Want`]: the receiver's answer, on its own stream back, with
//!   the short ids it lacks (only if it lacks any);
//! * [`Frame::Records`]: the sender's answer to a want, with the records
//!   (only those it announced to that peer: a want is no general fetch).
//!
//! A record is named here by its [`ShortId`], the first 8 bytes of its
//! digest, not the whole 32: each record is announced to a relay by about
//! as many peers as push to it, so the announcements were a third of a
//! relay's directory bytes. Two records whose digests share 8 bytes (only
//! by design: finding a second one costs about 2^64 hashes) look alike
//! here: a relay holding one does not ask for the other, and
//! reconciliation, which names records by their full digests, brings it.
//! Records themselves are checked by their full digest against what was
//! asked for.
//!
//! Wire format, sans-IO: a frame is `length u32 | kind u8 | count u16 |
//! item*`, `length` counting the bytes after it; an item is an 8-byte
//! short id (kinds 1 and 2) or `len u32 | bytes` (kind 3). Integers are
//! big-endian. Anything else (an unknown kind, a count above the limits, a
//! short or long body) is refused and the stream closed: anti-entropy still
//! reconciles with that peer, and nothing else on the link is affected.

pub use crate::sync::{short_id, ShortId, SHORT_ID_BYTES};
use crate::sync::{RecordDigest, SyncLimits, SyncMessage, MAX_DIGESTS};

/// The protocol name; its major version follows [`FRAME_VERSION`].
pub const ANNOUNCE_PROTOCOL: &str = "/veilnet/announce/2.0.0";
/// The version of the frame format (in the protocol name, not the frames):
/// 2 names records by [`ShortId`], 1 by full digest.
pub const FRAME_VERSION: u8 = 2;
/// The digest a want of a short id is kept under until the record comes
/// (the id, then zeros): a record is taken if its digest was asked for or
/// its short id's stand-in was ([`stand_in_of`]).
pub fn stand_in(id: &ShortId) -> RecordDigest {
    let mut d = [0; 32];
    d[..SHORT_ID_BYTES].copy_from_slice(id);
    d
}

/// Whether `d` is a [`stand_in`] (a real digest ends in 24 zero bytes
/// about once in 2^192).
pub fn is_stand_in(d: &RecordDigest) -> bool {
    d[SHORT_ID_BYTES..].iter().all(|b| *b == 0)
}

/// The stand-in of the record with digest `d`.
pub fn stand_in_of(d: &RecordDigest) -> RecordDigest {
    stand_in(&short_id(d))
}
/// Bytes of a frame's length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of a frame's header after its length: kind and count.
pub const HEADER_BYTES: usize = 3;

const KIND_ANNOUNCE: u8 = 1;
const KIND_WANT: u8 = 2;
const KIND_RECORDS: u8 = 3;

/// One frame of an announcement stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Records the sender has just accepted (at most [`MAX_DIGESTS`]).
    Announce(Vec<ShortId>),
    /// Announced records the sender lacks (at most [`MAX_DIGESTS`]).
    Want(Vec<ShortId>),
    /// Records asked for by a want, unverified (within the limits'
    /// record count, record length and message size).
    Records(Vec<Vec<u8>>),
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix says more than the limits allow.
    #[error("announcement frame of {len} bytes, more than {max}")]
    TooLong {
        /// What the prefix said.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body ended early.
    #[error("announcement frame truncated in {0}")]
    Truncated(&'static str),
    /// Bytes after the last item.
    #[error("{0} bytes after the end of an announcement frame")]
    Trailing(usize),
    /// An unknown kind.
    #[error("unknown announcement frame kind {0}")]
    Kind(u8),
    /// A count above its limit.
    #[error("announcement frame has {count} {what}, more than {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A record larger than allowed.
    #[error("announced record of {len} bytes, more than {max}")]
    RecordTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Largest records frame body: a want on the stream is for one batch of
/// announced records, a few dozen at most; what does not fit is left to
/// reconciliation, and a peer's stream cannot make us hold more than this
/// per frame.
pub const MAX_RECORDS_FRAME: usize = 256 * 1024;

/// The limits frames are read and written with: those of the sync
/// protocol, with messages of at most [`MAX_RECORDS_FRAME`] bytes.
pub fn frame_limits(limits: &SyncLimits) -> SyncLimits {
    SyncLimits {
        max_message_bytes: limits.max_message_bytes.min(MAX_RECORDS_FRAME),
        ..*limits
    }
}

/// The largest frame body (after the length prefix) `limits` allow: a
/// records frame as large as a sync message may be, or a full digest list.
pub fn max_body(limits: &SyncLimits) -> usize {
    limits
        .max_message_bytes
        .max(HEADER_BYTES + MAX_DIGESTS * SHORT_ID_BYTES)
}

/// A push message of the sync protocol, borrowed.
enum Shape<'a> {
    Announce(&'a [RecordDigest]),
    Want(&'a [RecordDigest]),
    Records(&'a [Vec<u8>]),
}

impl<'a> Shape<'a> {
    fn of(msg: &'a SyncMessage) -> Option<Self> {
        use crate::sync::{RangeMode, KEY_MIN};
        match (&msg.ranges[..], msg.want.is_empty(), msg.records.is_empty()) {
            ([r], true, true) if r.lower == KEY_MIN && r.upper.is_none() => match &r.mode {
                RangeMode::List {
                    digests,
                    reply: false,
                } if !digests.is_empty() => Some(Shape::Announce(digests)),
                _ => None,
            },
            ([], false, true) => Some(Shape::Want(&msg.want)),
            ([], true, false) => Some(Shape::Records(&msg.records)),
            _ => None,
        }
    }
}

impl Frame {
    /// The frame a push message of the sync protocol is sent as, if it is
    /// one: an announcement ([`sync::announce`](crate::sync::announce)),
    /// a message with only wants, or one with only records (digests
    /// become short ids). Empty messages and all others (fingerprints,
    /// lists that ask for a reply) are not sent on an announcement stream.
    pub fn from_message(msg: &SyncMessage) -> Option<Frame> {
        let ids = |d: &[RecordDigest]| d.iter().map(short_id).collect();
        Some(match Shape::of(msg)? {
            Shape::Announce(d) => Frame::Announce(ids(d)),
            Shape::Want(d) => Frame::Want(ids(d)),
            Shape::Records(r) => Frame::Records(r.to_vec()),
        })
    }

    /// What [`Frame::from_message`]`(msg)` would encode to, in bytes,
    /// without building it.
    pub fn len_of(msg: &SyncMessage) -> Option<usize> {
        Some(match Shape::of(msg)? {
            Shape::Announce(d) | Shape::Want(d) => Self::ids_len(d.len()),
            Shape::Records(r) => Self::records_len(r),
        })
    }

    /// Bytes of an announce or want frame of `count` short ids, length
    /// prefix included.
    pub fn ids_len(count: usize) -> usize {
        LENGTH_BYTES + HEADER_BYTES + count.min(MAX_DIGESTS) * SHORT_ID_BYTES
    }

    /// Bytes of the encoded frame, length prefix included (as
    /// [`encode`](Self::encode) writes it, with its limits).
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Announce(d) | Frame::Want(d) => Self::ids_len(d.len()),
            Frame::Records(r) => Self::records_len(r),
        }
    }

    /// Bytes of a records frame holding `records` (as
    /// [`encode`](Self::encode) writes it: at most `u16::MAX` of them).
    fn records_len(records: &[Vec<u8>]) -> usize {
        LENGTH_BYTES
            + HEADER_BYTES
            + records
                .iter()
                .take(usize::from(u16::MAX))
                .map(|r| 4 + r.len())
                .sum::<usize>()
    }

    /// The frame's bytes, length prefix included. At most [`MAX_DIGESTS`]
    /// digests or `u16::MAX` records are written (the caller's messages
    /// never hold more: [`sync::process`](crate::sync::process) keeps to
    /// them).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&[0; LENGTH_BYTES]);
        match self {
            Frame::Announce(d) | Frame::Want(d) => {
                let d = &d[..d.len().min(MAX_DIGESTS)];
                out.push(if matches!(self, Frame::Announce(_)) {
                    KIND_ANNOUNCE
                } else {
                    KIND_WANT
                });
                out.extend_from_slice(&(d.len() as u16).to_be_bytes());
                for digest in d {
                    out.extend_from_slice(digest);
                }
            }
            Frame::Records(r) => {
                let r = &r[..r.len().min(usize::from(u16::MAX))];
                out.push(KIND_RECORDS);
                out.extend_from_slice(&(r.len() as u16).to_be_bytes());
                for rec in r {
                    out.extend_from_slice(
                        &u32::try_from(rec.len()).unwrap_or(u32::MAX).to_be_bytes(),
                    );
                    out.extend_from_slice(rec);
                }
            }
        }
        let body = u32::try_from(out.len() - LENGTH_BYTES).unwrap_or(u32::MAX);
        out[..LENGTH_BYTES].copy_from_slice(&body.to_be_bytes());
        out
    }

    /// The body length a length prefix announces, checked against
    /// `limits` before any of the body is read.
    pub fn body_len(prefix: [u8; LENGTH_BYTES], limits: &SyncLimits) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        let max = max_body(limits);
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        if len < HEADER_BYTES {
            return Err(FrameError::Truncated("header"));
        }
        Ok(len)
    }

    /// Decodes a frame body (the bytes after the length prefix).
    pub fn decode(body: &[u8], limits: &SyncLimits) -> Result<Frame, FrameError> {
        let max = max_body(limits);
        if body.len() > max {
            return Err(FrameError::TooLong {
                len: body.len(),
                max,
            });
        }
        let Some((&[kind, c0, c1], mut rest)) = body.split_first_chunk::<HEADER_BYTES>() else {
            return Err(FrameError::Truncated("header"));
        };
        let count = usize::from(u16::from_be_bytes([c0, c1]));
        let frame = match kind {
            KIND_ANNOUNCE | KIND_WANT => {
                if count > MAX_DIGESTS {
                    return Err(FrameError::TooMany {
                        what: "short ids",
                        count,
                        max: MAX_DIGESTS,
                    });
                }
                if rest.len() < count * SHORT_ID_BYTES {
                    return Err(FrameError::Truncated("short ids"));
                }
                let mut digests = Vec::with_capacity(count);
                for _ in 0..count {
                    let (d, r) = rest
                        .split_first_chunk::<SHORT_ID_BYTES>()
                        .ok_or(FrameError::Truncated("short ids"))?;
                    digests.push(*d);
                    rest = r;
                }
                if kind == KIND_ANNOUNCE {
                    Frame::Announce(digests)
                } else {
                    Frame::Want(digests)
                }
            }
            KIND_RECORDS => {
                if count > limits.max_records {
                    return Err(FrameError::TooMany {
                        what: "records",
                        count,
                        max: limits.max_records,
                    });
                }
                let mut records = Vec::with_capacity(count.min(rest.len() / 4));
                for _ in 0..count {
                    let (len, r) = rest
                        .split_first_chunk::<4>()
                        .ok_or(FrameError::Truncated("record length"))?;
                    let len = u32::from_be_bytes(*len) as usize;
                    if len > limits.max_record_len {
                        return Err(FrameError::RecordTooLong {
                            len,
                            max: limits.max_record_len,
                        });
                    }
                    if r.len() < len {
                        return Err(FrameError::Truncated("record"));
                    }
                    let (rec, r) = r.split_at(len);
                    records.push(rec.to_vec());
                    rest = r;
                }
                Frame::Records(records)
            }
            other => return Err(FrameError::Kind(other)),
        };
        if !rest.is_empty() {
            return Err(FrameError::Trailing(rest.len()));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{self, Range, RangeMode, KEY_MIN};

    fn limits() -> SyncLimits {
        SyncLimits {
            max_records: 4,
            max_record_len: 16,
            max_message_bytes: 1024,
        }
    }

    fn round_trip(f: &Frame) -> Frame {
        let wire = f.encode();
        assert_eq!(wire.len(), f.encoded_len());
        let prefix: [u8; 4] = wire[..4].try_into().unwrap();
        let len = Frame::body_len(prefix, &limits()).unwrap();
        assert_eq!(len, wire.len() - 4);
        Frame::decode(&wire[4..], &limits()).unwrap()
    }

    #[test]
    fn known_answer_vectors() {
        let a = Frame::Announce(vec![[0xab; 8]]);
        let mut want = vec![0, 0, 0, 11, 1, 0, 1];
        want.extend_from_slice(&[0xab; 8]);
        assert_eq!(a.encode(), want);
        let r = Frame::Records(vec![b"xy".to_vec(), Vec::new()]);
        assert_eq!(
            r.encode(),
            vec![0, 0, 0, 13, 3, 0, 2, 0, 0, 0, 2, b'x', b'y', 0, 0, 0, 0]
        );
        assert_eq!(Frame::Want(Vec::new()).encode(), vec![0, 0, 0, 3, 2, 0, 0]);
    }

    #[test]
    fn frames_round_trip_and_stand_for_their_sync_messages() {
        let (d1, d2, d3) = ([1; 32], [2; 32], [3; 32]);
        for (msg, f) in [
            (
                sync::announce(&[d2, d1]),
                Frame::Announce(vec![[1; 8], [2; 8]]),
            ),
            (
                SyncMessage {
                    want: vec![d3],
                    ..SyncMessage::default()
                },
                Frame::Want(vec![[3; 8]]),
            ),
            (
                SyncMessage {
                    records: vec![b"one".to_vec(), b"two".to_vec()],
                    ..SyncMessage::default()
                },
                Frame::Records(vec![b"one".to_vec(), b"two".to_vec()]),
            ),
        ] {
            assert_eq!(round_trip(&f), f);
            assert_eq!(Frame::len_of(&msg), Some(f.encoded_len()));
            assert_eq!(Frame::from_message(&msg), Some(f));
        }
    }

    #[test]
    fn a_short_id_is_the_digest_s_first_8_bytes_and_its_stand_in_is_no_digest() {
        let d = sync::digest(b"record");
        let id = short_id(&d);
        assert_eq!(id[..], d[..8]);
        let s = stand_in(&id);
        assert_eq!(s, stand_in_of(&d));
        assert!(is_stand_in(&s));
        assert!(!is_stand_in(&d));
        assert_eq!(short_id(&s), id);
    }

    #[test]
    fn only_push_messages_have_a_frame() {
        let empty = SyncMessage::default();
        assert_eq!(Frame::from_message(&empty), None);
        assert_eq!(Frame::from_message(&sync::announce(&[])), None);
        let mixed = SyncMessage {
            want: vec![[1; 32]],
            records: vec![b"r".to_vec()],
            ..SyncMessage::default()
        };
        assert_eq!(Frame::from_message(&mixed), None);
        let asks_back = SyncMessage {
            ranges: vec![Range {
                lower: KEY_MIN,
                upper: None,
                mode: RangeMode::List {
                    digests: vec![[1; 32]],
                    reply: true,
                },
            }],
            ..SyncMessage::default()
        };
        assert_eq!(Frame::from_message(&asks_back), None);
        let fingerprint = SyncMessage {
            ranges: vec![Range {
                lower: KEY_MIN,
                upper: None,
                mode: RangeMode::Fingerprint([0; 16]),
            }],
            ..SyncMessage::default()
        };
        assert_eq!(Frame::from_message(&fingerprint), None);
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        let l = limits();
        let max = max_body(&l);
        assert_eq!(
            Frame::body_len(u32::try_from(max + 1).unwrap().to_be_bytes(), &l),
            Err(FrameError::TooLong { len: max + 1, max })
        );
        assert_eq!(
            Frame::body_len(2u32.to_be_bytes(), &l),
            Err(FrameError::Truncated("header"))
        );
        assert_eq!(Frame::decode(&[9, 0, 0], &l), Err(FrameError::Kind(9)));
        assert_eq!(
            Frame::decode(&[1, 0, 1, 7], &l),
            Err(FrameError::Truncated("short ids"))
        );
        assert_eq!(
            Frame::decode(&[2, 0, 0, 7], &l),
            Err(FrameError::Trailing(1))
        );
        assert!(matches!(
            Frame::decode(&[1, 0xff, 0xff], &l),
            Err(FrameError::TooMany {
                what: "short ids",
                ..
            })
        ));
        assert!(matches!(
            Frame::decode(&[3, 0, 5], &l),
            Err(FrameError::TooMany {
                what: "records",
                ..
            })
        ));
        assert_eq!(
            Frame::decode(&[3, 0, 1, 0, 0, 0, 17], &l),
            Err(FrameError::RecordTooLong { len: 17, max: 16 })
        );
        assert_eq!(
            Frame::decode(&[3, 0, 1, 0, 0, 0, 2, b'x'], &l),
            Err(FrameError::Truncated("record"))
        );
    }
}
