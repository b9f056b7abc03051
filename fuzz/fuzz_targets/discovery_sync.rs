//! Fuzz the descriptor reconciliation messages and their processing.
//!
//! Checks: no panic; `SyncMessage::decode` accepts an input only if
//! `encode` gives back exactly that input; answering an accepted message
//! (from a set of 0 to 255 records chosen by the first input byte) gives a
//! message within the limits that decodes back to itself, that wants only
//! digests the message listed and we do not hold, and whose records are
//! ones the message wanted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use veilnet_discovery::sync::{
    self, RangeMode, RecordDigest, RecordKey, RecordStore, SyncLimits, SyncMessage,
};

const LIMITS: SyncLimits = SyncLimits {
    max_records: 64,
    max_record_len: 1024,
    max_message_bytes: 256 * 1024,
};

struct Set {
    records: Vec<(RecordDigest, Vec<u8>)>,
    /// Keys with times 0 to 63 (four records a second).
    sorted: Arc<[RecordKey]>,
}

impl Set {
    fn of(n: u8) -> Self {
        let mut records: Vec<_> = (0..n)
            .map(|i| {
                let r = vec![i; usize::from(i) + 1];
                (sync::digest(&r), r)
            })
            .collect();
        records.sort();
        let mut sorted: Vec<RecordKey> = records
            .iter()
            .map(|(d, r)| (u64::from(r[0] / 4), *d))
            .collect();
        sorted.sort_unstable();
        Set {
            records,
            sorted: sorted.into(),
        }
    }
}

impl RecordStore for Set {
    fn keys(&self) -> Arc<[RecordKey]> {
        self.sorted.clone()
    }
    fn record(&self, d: &RecordDigest) -> Option<Vec<u8>> {
        self.records.iter().find(|(x, _)| x == d).map(|(_, r)| r.clone())
    }
    fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest> {
        digests
            .iter()
            .filter(|d| self.records.binary_search_by(|(x, _)| x.cmp(d)).is_err())
            .copied()
            .collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, wire)) = data.split_first() else {
        return;
    };
    let Ok(msg) = SyncMessage::decode(wire, &LIMITS) else {
        return;
    };
    assert_eq!(msg.encode(), wire, "encoding did not round-trip");
    assert_eq!(msg.encoded_len(), wire.len());
    let set = Set::of(n);
    let answer = sync::process(&set, &msg, &LIMITS);
    let bytes = answer.encode();
    assert!(bytes.len() <= LIMITS.max_message_bytes);
    assert_eq!(SyncMessage::decode(&bytes, &LIMITS).as_ref(), Ok(&answer));
    let listed: Vec<&RecordDigest> = msg
        .ranges
        .iter()
        .filter_map(|r| match &r.mode {
            RangeMode::List { digests, .. } => Some(digests),
            RangeMode::Fingerprint(_) => None,
        })
        .flatten()
        .collect();
    for w in &answer.want {
        assert!(listed.contains(&w) && set.unknown(&[*w]) == vec![*w]);
    }
    for r in &answer.records {
        assert!(msg.want.contains(&sync::digest(r)));
    }
});
