//! The directory cache: the records a node held, saved in its data
//! directory so that after a restart it reconciles only what changed
//! meanwhile instead of downloading the whole directory again (Tor keeps
//! `cached-consensus` and `cached-microdescs` for the same reason).
//!
//! Nothing in the file is trusted: every record goes through the same
//! checks as a record from a peer (signature, age, the directory's rules),
//! so a stale, edited or foreign cache costs only the checks. The format
//! (sans-IO, big-endian):
//!
//! ```text
//! magic [8] = "VNDCACHE" | version u8 = 1 | count u32 | (len u32 | record)*
//! ```
//!
//! A file cut short (a crash while an older node wrote it in place, a full
//! disk) yields the records before the cut and says where it stopped.

use crate::directory::Directory;

/// File name of the cache in a node's data directory.
pub const CACHE_FILE: &str = "directory-cache.bin";
/// Largest cache file written or read: a full directory of descriptors and
/// its kept reports with room to spare.
pub const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record in a cache (any record the directory takes is smaller).
pub const MAX_CACHED_RECORD_BYTES: usize = 64 * 1024;
/// Smallest record in a cache: no descriptor, report or fork proof is
/// shorter (a report without observations is 107 bytes), so a file of
/// tiny records cannot make millions of allocations.
pub const MIN_CACHED_RECORD_BYTES: usize = 100;

const MAGIC: &[u8; 8] = b"VNDCACHE";
const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 4;

/// Why a cache file could not be read (in whole or part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Not a cache file of this format.
    #[error("not a veilnet directory cache (bad magic or version {0})")]
    NotACache(u8),
    /// Cut short or damaged after `kept` records.
    #[error("damaged after {kept} of {count} records: {reason}")]
    Damaged {
        /// Records read before the damage.
        kept: usize,
        /// Records the header announced.
        count: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Encodes `records` (each [`MIN_CACHED_RECORD_BYTES`] to
/// [`MAX_CACHED_RECORD_BYTES`]; others are left out), stopping before the
/// file would pass [`MAX_CACHE_BYTES`] (the records after are left out: in
/// reconciliation order, the latest reports).
pub fn encode<R: AsRef<[u8]>>(records: impl IntoIterator<Item = R>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for r in records {
        let r = r.as_ref();
        if !(MIN_CACHED_RECORD_BYTES..=MAX_CACHED_RECORD_BYTES).contains(&r.len()) {
            continue;
        }
        if (out.len() + 4 + r.len()) as u64 > MAX_CACHE_BYTES || count == u32::MAX {
            break;
        }
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
        count += 1;
    }
    out[9..HEADER].copy_from_slice(&count.to_be_bytes());
    out
}

/// Decodes a cache file: its records, and the damage found after them, if
/// any (the records before it are still returned).
pub fn decode(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<CacheError>) {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC || bytes[8] != VERSION {
        let version = bytes.get(8).copied().unwrap_or(0);
        return (Vec::new(), Some(CacheError::NotACache(version)));
    }
    let mut count_bytes = [0u8; 4];
    count_bytes.copy_from_slice(&bytes[9..HEADER]);
    let count = u32::from_be_bytes(count_bytes) as usize;
    let mut rest = &bytes[HEADER..];
    // Bounded by the bytes there are, not by what the header claims.
    let mut records = Vec::with_capacity(count.min(rest.len() / (4 + MIN_CACHED_RECORD_BYTES)));
    let damaged = |kept, reason| CacheError::Damaged {
        kept,
        count,
        reason,
    };
    for _ in 0..count {
        if rest.len() < 4 {
            let kept = records.len();
            return (records, Some(damaged(kept, "truncated")));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&rest[..4]);
        let len = u32::from_be_bytes(len) as usize;
        if !(MIN_CACHED_RECORD_BYTES..=MAX_CACHED_RECORD_BYTES).contains(&len) {
            let kept = records.len();
            return (
                records,
                Some(damaged(kept, "a record shorter or longer than any record")),
            );
        }
        if rest.len() < 4 + len {
            let kept = records.len();
            return (records, Some(damaged(kept, "truncated")));
        }
        records.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        let kept = records.len();
        return (records, Some(damaged(kept, "bytes after the last record")));
    }
    (records, None)
}

impl Directory {
    /// The cache file of every record this directory holds (descriptors,
    /// reports and fork proofs) in reconciliation order, descriptors before
    /// the reports that need them ([`crate::record_key`]), up to
    /// [`MAX_CACHE_BYTES`].
    pub fn cache(&self) -> Vec<u8> {
        encode(self.keys().iter().filter_map(|(_, d)| self.record(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_keeps_what_came_before() {
        let records: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let file = encode(records.iter().map(Vec::as_slice));
        assert_eq!(decode(&file), (records.clone(), None));
        // Cut inside the fourth record: the three before it.
        let cut = HEADER + (4 + 100) + (4 + 101) + (4 + 102) + 6;
        let (kept, err) = decode(&file[..cut]);
        assert_eq!(kept, records[..3]);
        assert_eq!(
            err,
            Some(CacheError::Damaged {
                kept: 3,
                count: 5,
                reason: "truncated"
            })
        );
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(decode(&longer).0, records);
        assert!(decode(&longer).1.is_some());
        // A length past the bound is not allocated for.
        let mut huge = file[..HEADER].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge).0.len(), 0);
        assert!(matches!(decode(&huge).1, Some(CacheError::Damaged { .. })));
        assert_eq!(decode(b"{json}").1, Some(CacheError::NotACache(0)));
        let mut other = file.clone();
        other[8] = 2;
        assert_eq!(decode(&other), (Vec::new(), Some(CacheError::NotACache(2))));
    }

    #[test]
    fn records_of_no_possible_size_are_left_out_and_refused() {
        let big = vec![0u8; MAX_CACHED_RECORD_BYTES + 1];
        let tiny = vec![1u8; MIN_CACHED_RECORD_BYTES - 1];
        let fine = vec![2u8; MIN_CACHED_RECORD_BYTES];
        let file = encode([&big, &tiny, &fine]);
        assert_eq!(decode(&file), (vec![fine.clone()], None));
        // A file of tiny records (as one might craft) stops at the first.
        let mut crafted = file[..HEADER].to_vec();
        crafted[9..HEADER].copy_from_slice(&2u32.to_be_bytes());
        crafted.extend_from_slice(&(fine.len() as u32).to_be_bytes());
        crafted.extend_from_slice(&fine);
        crafted.extend_from_slice(&3u32.to_be_bytes());
        crafted.extend_from_slice(&[0; 3]);
        let (kept, err) = decode(&crafted);
        assert_eq!(kept, vec![fine]);
        assert!(matches!(err, Some(CacheError::Damaged { kept: 1, .. })));
    }
}
