//! Wire format of the record gossip protocol (sans-IO).
//!
//! One JSON object per stream in each direction:
//! `{"records":["<hex>","<hex>",...]}`. Packing picks a random subset of the
//! local records that fits the limits; unpacking drops what does not.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::MAX_MESSAGE_BYTES;

/// A gossip message; used both as request and as response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordsMessage {
    /// Records, lowercase hex encoded.
    pub(crate) records: Vec<String>,
}

/// Size of `{"records":[` plus `]}`.
const ENVELOPE_LEN: usize = 14;

/// Limits applied when packing and unpacking a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Maximum number of records per message.
    pub(crate) max_records: usize,
    /// Maximum length of one decoded record.
    pub(crate) max_record_len: usize,
    /// Maximum length of one encoded message.
    pub(crate) max_message_bytes: usize,
}

impl Limits {
    /// Limits for the given configuration values; the message size is the
    /// size of a full message, capped by [`MAX_MESSAGE_BYTES`].
    pub(crate) fn new(max_records: usize, max_record_len: usize) -> Self {
        let full = max_records
            .saturating_mul(encoded_record_len(max_record_len))
            .saturating_add(ENVELOPE_LEN + 50);
        Self {
            max_records,
            max_record_len,
            max_message_bytes: full.min(MAX_MESSAGE_BYTES),
        }
    }
}

/// Bytes a record of `len` bytes takes in a message: hex, quotes and a comma.
fn encoded_record_len(len: usize) -> usize {
    len.saturating_mul(2).saturating_add(3)
}

/// What [`pack`] or [`unpack`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Records longer than `max_record_len`.
    pub(crate) oversized: usize,
    /// Records that were not valid hex (unpack only).
    pub(crate) malformed: usize,
    /// Records beyond the count or byte budget.
    pub(crate) over_budget: usize,
}

impl Dropped {
    /// Whether anything was dropped.
    pub(crate) fn any(&self) -> bool {
        self.oversized + self.malformed + self.over_budget > 0
    }
}

/// Builds a message from `records`: a random subset (in random order) that
/// fits `limits`, leaving out oversized records.
pub(crate) fn pack<R: rand::Rng + ?Sized>(
    mut records: Vec<Vec<u8>>,
    limits: &Limits,
    rng: &mut R,
) -> (RecordsMessage, Dropped) {
    records.shuffle(rng);
    let mut dropped = Dropped::default();
    let mut size = ENVELOPE_LEN;
    let mut out = Vec::with_capacity(records.len().min(limits.max_records));
    for record in records {
        if record.len() > limits.max_record_len {
            dropped.oversized += 1;
            continue;
        }
        let len = encoded_record_len(record.len());
        if out.len() >= limits.max_records || size.saturating_add(len) > limits.max_message_bytes {
            dropped.over_budget += 1;
            continue;
        }
        size += len;
        out.push(hex::encode(record));
    }
    (RecordsMessage { records: out }, dropped)
}

/// Decodes the records of a received message, dropping those beyond
/// `max_records`, oversized ones and malformed ones.
pub(crate) fn unpack(msg: RecordsMessage, limits: &Limits) -> (Vec<Vec<u8>>, Dropped) {
    let mut dropped = Dropped {
        over_budget: msg.records.len().saturating_sub(limits.max_records),
        ..Dropped::default()
    };
    let mut out = Vec::with_capacity(msg.records.len().min(limits.max_records));
    for rec in msg.records.into_iter().take(limits.max_records) {
        if rec.len() > limits.max_record_len.saturating_mul(2) {
            dropped.oversized += 1;
            continue;
        }
        match hex::decode(&rec) {
            Ok(bytes) => out.push(bytes),
            Err(_) => dropped.malformed += 1,
        }
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    fn limits() -> Limits {
        Limits::new(2048, 16 * 1024)
    }

    #[test]
    fn test_vector_encoding() {
        let msg = RecordsMessage {
            records: vec![hex::encode([0x00, 0xff, 0x10]), hex::encode(b"ab")],
        };
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            r#"{"records":["00ff10","6162"]}"#
        );
        let parsed: RecordsMessage =
            serde_json::from_str(r#"{"records":["00ff10","6162"]}"#).unwrap();
        let (recs, dropped) = unpack(parsed, &limits());
        assert_eq!(recs, vec![vec![0x00, 0xff, 0x10], b"ab".to_vec()]);
        assert!(!dropped.any());
    }

    #[test]
    fn pack_unpack_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        let records: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let (msg, dropped) = pack(records.clone(), &limits(), &mut rng);
        assert!(!dropped.any());
        let (mut got, dropped) = unpack(msg, &limits());
        assert!(!dropped.any());
        got.sort();
        let mut want = records;
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn pack_respects_limits() {
        let mut rng = StdRng::seed_from_u64(1);
        let l = Limits::new(3, 4);
        let records = vec![vec![1; 5], vec![2; 4], vec![3; 4], vec![4; 4], vec![5; 4]];
        let (msg, dropped) = pack(records, &l, &mut rng);
        assert_eq!(msg.records.len(), 3);
        assert_eq!(dropped.oversized, 1);
        assert_eq!(dropped.over_budget, 1);
        let encoded = serde_json::to_vec(&msg).unwrap();
        assert!(encoded.len() <= l.max_message_bytes);

        // The byte budget caps the message even when the count would allow more.
        let big = Limits::new(100_000, 16 * 1024);
        assert_eq!(big.max_message_bytes, MAX_MESSAGE_BYTES);
        let records = vec![vec![9u8; 16 * 1024]; 200];
        let (msg, dropped) = pack(records, &big, &mut rng);
        assert!(dropped.over_budget > 0);
        assert!(serde_json::to_vec(&msg).unwrap().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn unpack_drops_bad_records() {
        let l = Limits::new(3, 2);
        let msg = RecordsMessage {
            records: vec![
                "0102".into(),   // ok
                "010203".into(), // too long
                "zz".into(),     // not hex
                "abc".into(),    // beyond max_records
                "ff".into(),     // beyond max_records
            ],
        };
        let (recs, dropped) = unpack(msg, &l);
        assert_eq!(recs, vec![vec![1, 2]]);
        assert_eq!(dropped.over_budget, 2);
        assert_eq!(dropped.oversized, 1);
        assert_eq!(dropped.malformed, 1);
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        for input in [
            &b"\x00\xff garbage"[..],
            b"{\"records\":5}",
            b"{\"records\":[1,2]}",
            b"[]",
            b"",
        ] {
            assert!(serde_json::from_slice::<RecordsMessage>(input).is_err());
        }
    }
}
