//! Fuzz the directory cache file (`veilnet_dir::cache`), a state file a
//! node reads at start.
//!
//! Checks: no panic and no allocation beyond the input; the records
//! returned are each within the record bound and together no longer than
//! the input; an undamaged file re-encodes to exactly its bytes (one
//! encoding per list of records), and a damaged one to a file that decodes
//! to the same records without damage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_dir::cache::{decode, encode, MAX_CACHED_RECORD_BYTES};

fn check(data: &[u8]) {
    let (records, damage) = decode(data);
    let total: usize = records.iter().map(Vec::len).sum();
    assert!(total <= data.len());
    assert!(records.iter().all(|r| r.len() <= MAX_CACHED_RECORD_BYTES));
    let again = encode(records.iter().map(Vec::as_slice));
    match damage {
        None => assert_eq!(again, data),
        Some(_) => assert_eq!(decode(&again), (records, None)),
    }
}

fuzz_target!(|data: &[u8]| check(data));
