//! Range-based set reconciliation of records by digest (sans-IO): two nodes
//! learn which records one has and the other lacks by exchanging
//! fingerprints of ranges of their sorted record sets, splitting only the
//! ranges that differ (in the manner of Meyer's range-based set
//! reconciliation, as Nostr's negentropy does). Two nodes that hold the same
//! set exchange one fingerprint; each difference costs a few more rounds of
//! small messages, and then exactly the missing records.
//!
//! Records are ordered by [`RecordKey`]: an order the store derives from
//! the record's own bytes (veilnet's directory: its class, descriptors
//! before reports, then the time it carries, its `published`), then its
//! digest. Records are handed over in that order, so a store can put first
//! what the rest depends on. Ordered by digest alone, the hour's few
//! hundred changes to a directory of thousands would fall in nearly every
//! range, and a node that reconciles once an hour would list nearly every
//! digest both ways. Ordered by time, they fall together: what was
//! published since the peers last agreed at the end, and what it replaced
//! where the replaced records were published (relays republish on a fixed
//! schedule, so those fall together too); the ranges in between match at
//! the first fingerprint.
//!
//! Records travel only when asked for (a digest in `want`): a node never
//! receives a record it already holds or has refused before, however often
//! its peers reconcile with it.
//!
//! One exchange: the initiator sends [`open`]; each side answers what it
//! receives with [`process`]; the exchange ends when an answer
//! [`is_empty`](SyncMessage::is_empty) or after [`MAX_ROUNDS`].

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// SHA-256 of a record's bytes: how records are named in reconciliation.
pub type RecordDigest = [u8; 32];

/// Bytes of a [`ShortId`].
pub const SHORT_ID_BYTES: usize = 8;

/// What announcements name a record by ([`crate::announce`]): the first
/// [`SHORT_ID_BYTES`] of its digest.
pub type ShortId = [u8; SHORT_ID_BYTES];

/// The short id of the record with digest `d`.
pub fn short_id(d: &RecordDigest) -> ShortId {
    let mut id = [0; SHORT_ID_BYTES];
    id.copy_from_slice(&d[..SHORT_ID_BYTES]);
    id
}

/// Where a record sits in reconciliation: an order value (mostly the time
/// it carries, unix seconds; veilnet's directory adds a class above the
/// time, see `veilnet_dir::record_key`; 0 from a store that cannot tell)
/// and its digest, compared in that order. The order comes from the
/// record's own bytes, so every honest node gives a record the same key.
pub type RecordKey = (u64, RecordDigest);

/// The smallest [`RecordKey`]: where the whole space begins.
pub const KEY_MIN: RecordKey = (0, [0; 32]);

/// Bytes of an encoded [`RecordKey`]: the order (u64) and the digest.
const KEY_LEN: usize = 8 + 32;

/// Wire format version of [`SyncMessage`] (3: the directory's records
/// ordered by class before time, `veilnet_dir::record_key`, so the same
/// bytes bound other ranges; 2: ranges bounded by [`RecordKey`]s; 1 was
/// bounded by digests).
pub const SYNC_VERSION: u8 = 3;
/// A range with at most this many of our records is answered with their
/// digests instead of being split.
pub const LIST_THRESHOLD: usize = 16;
/// How many parts a differing range is split into.
pub const SPLIT: usize = 16;
/// Most ranges in one message.
pub const MAX_RANGES: usize = 512;
/// Most digests in one message's `want`, and in all its lists together.
pub const MAX_DIGESTS: usize = 4096;
/// Most request-response rounds of one exchange.
pub const MAX_ROUNDS: usize = 12;
/// Times an exchange that stopped at [`MAX_ROUNDS`] with work left starts
/// afresh with the same peer (a node that joins a large network fetches
/// the whole directory in one exchange and its restarts, instead of
/// waiting for the next anti-entropy round).
pub const RESTARTS: usize = 3;

/// What the initiator of an exchange does after processing the answer to
/// its `round` (from 1; [`after_round`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRound {
    /// Send the message `process` returned, as round `round + 1`.
    Continue,
    /// [`MAX_ROUNDS`] are done and work is left: send a fresh [`open`] as
    /// round `round + 1`.
    Restart,
    /// The exchange is over.
    Stop,
}

/// What comes after round `round` when the next message `is_empty`:
/// rounds run in stretches of [`MAX_ROUNDS`], each after the first begun
/// afresh, [`RESTARTS`] times at most.
pub fn after_round(round: usize, is_empty: bool) -> AfterRound {
    if is_empty || round >= MAX_ROUNDS * (1 + RESTARTS) {
        AfterRound::Stop
    } else if round % MAX_ROUNDS != 0 {
        AfterRound::Continue
    } else {
        AfterRound::Restart
    }
}

/// Bytes of a range fingerprint.
const FINGERPRINT_LEN: usize = 16;

/// The most bytes of a message that are not records: its counts,
/// [`MAX_RANGES`] ranges with both bounds written out, and [`MAX_DIGESTS`]
/// listed and as many wanted digests. A message-size limit has this much
/// room on top of its records'.
pub const MAX_NON_RECORD_BYTES: usize =
    1 + 3 * 2 + MAX_RANGES * (1 + 2 * KEY_LEN + 1 + 1 + 2 + FINGERPRINT_LEN) + 2 * MAX_DIGESTS * 32;

/// A fingerprint of the records in a range: SHA-256 over their count and
/// keys, truncated.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// The records a node reconciles with its peers (its own descriptor and
/// the verified others), named by [`RecordDigest`] and ordered by
/// [`RecordKey`]. A discovery node calls it on its swarm task for every
/// exchange step, so it must be cheap and must not block.
pub trait RecordStore: Send + Sync {
    /// The keys of the records this node passes on, sorted ascending, with
    /// no digest twice (read once per message).
    fn keys(&self) -> Arc<[RecordKey]>;
    /// The bytes of the record with this digest, if held.
    fn record(&self, digest: &RecordDigest) -> Option<Vec<u8>>;
    /// Those of `digests` that are worth fetching: neither held nor
    /// refused before (one call per message, so a store behind a lock
    /// takes it once).
    fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest>;
    /// The [`fingerprint`] of `range`, a run of the keys this store's
    /// [`keys`](Self::keys) returned. A store may answer from a cache
    /// (say, the whole set's, kept until the next change) instead of
    /// hashing, as long as the answer is what [`fingerprint`] would give.
    fn fingerprint_of(&self, range: &[RecordKey]) -> Fingerprint {
        fingerprint(range)
    }
    /// Those of `ids` (short ids, as announcements name records) that
    /// match no record held or refused: the ones worth asking for. The
    /// default looks at the held records' [`keys`](Self::keys) only (one
    /// pass over them a call); a store that remembers refused records
    /// should say so here as [`unknown`](Self::unknown) does, or an
    /// announcer could have it fetch a refused record again and again.
    fn unknown_short(&self, ids: &[ShortId]) -> Vec<ShortId> {
        let held: HashSet<ShortId> = self.keys().iter().map(|(_, d)| short_id(d)).collect();
        ids.iter()
            .filter(|id| !held.contains(*id))
            .copied()
            .collect()
    }
    /// The spans of the key space that hold the records published at or
    /// after `since` (unix seconds), for [`open_spans`]; `None` if the
    /// store cannot tell (the default), and exchanges cover everything.
    fn spans_since(&self, since: u64) -> Option<Vec<(RecordKey, Option<RecordKey>)>> {
        let _ = since;
        None
    }
    /// Up to `n` relays the records list, with an address to dial them:
    /// where a client that lost every relay it fetches from turns
    /// (instead of its bootstrap peers, which may be gone or few). Picked
    /// at random, from distinct networks where it can. A store that cannot
    /// tell (the default) lists none.
    fn relays(&self, n: usize) -> Vec<(libp2p::PeerId, libp2p::Multiaddr)> {
        let _ = n;
        Vec::new()
    }
    /// Whether the records list `peer` as a usable relay; `None` if the
    /// store cannot tell (the default). A client whose store lists relays
    /// fetches only from listed ones: any key can claim to serve the
    /// directory.
    fn lists_relay(&self, peer: &libp2p::PeerId) -> Option<bool> {
        let _ = peer;
        None
    }
}

/// What a range of the key space `[lower, upper)` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeMode {
    /// The sender's fingerprint of its records in the range.
    Fingerprint(Fingerprint),
    /// With `reply`: the digests of all the sender's records in the range,
    /// in key order, and the receiver answers with those of its own there
    /// that the sender lacks. Without: digests the sender holds (those the
    /// receiver lacks, in an answer to a list; the new ones, in an
    /// announcement), claiming nothing about the rest of the range.
    List {
        /// The digests.
        digests: Vec<RecordDigest>,
        /// Whether the receiver should answer with its own list.
        reply: bool,
    },
}

/// A range of the key space: `lower` inclusive, `upper` exclusive
/// (`None`: to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Smallest key in the range.
    pub lower: RecordKey,
    /// First key after the range, or `None` for the end of the space.
    pub upper: Option<RecordKey>,
    /// What the sender says about it.
    pub mode: RangeMode,
}

/// One message of an exchange, in either direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncMessage {
    /// Ranges the sender and the receiver may differ in.
    pub ranges: Vec<Range>,
    /// Records the sender asks for.
    pub want: Vec<RecordDigest>,
    /// Records the receiver asked for, as opaque bytes (unverified).
    pub records: Vec<Vec<u8>>,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Another version.
    #[error("sync message version {0}, expected {SYNC_VERSION}")]
    Version(u8),
    /// Ended early.
    #[error("sync message truncated in {0}")]
    Truncated(&'static str),
    /// Bytes after the end.
    #[error("{0} bytes after the end of a sync message")]
    Trailing(usize),
    /// A count above its limit.
    #[error("sync message has {count} {what}, more than {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A record larger than allowed.
    #[error("record of {len} bytes, more than {max}")]
    RecordTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A range that ends before it starts, or an unknown mode.
    #[error("malformed range: {0}")]
    BadRange(&'static str),
}

/// Limits of one message, sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// Most records in one message.
    pub max_records: usize,
    /// Longest record.
    pub max_record_len: usize,
    /// Largest encoded message.
    pub max_message_bytes: usize,
}

impl SyncMessage {
    /// Whether there is nothing to say: the exchange is over.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.want.is_empty() && self.records.is_empty()
    }

    /// The binary encoding:
    /// `version u8 | ranges u16 | range* | wants u16 | digest* | records u16 | (len u32 | bytes)*`;
    /// a range is `bounds u8 | lower key? | upper key? | mode u8 | body`
    /// (a key is `time u64 | digest [32]`; `bounds` bit 0: an upper key
    /// follows, else the range runs to the end; bit 1: no lower key, the
    /// range starts where the previous one ended, as split ranges do),
    /// with body `fingerprint [16]` (mode 1) or `reply u8 | n u16 | digest*`
    /// (mode 2). Integers are big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(SYNC_VERSION);
        put_u16(&mut out, self.ranges.len());
        let mut prev_upper = None;
        for r in &self.ranges {
            let follows = prev_upper == Some(r.lower);
            out.push(u8::from(r.upper.is_some()) | (u8::from(follows) << 1));
            if !follows {
                put_key(&mut out, &r.lower);
            }
            if let Some(u) = &r.upper {
                put_key(&mut out, u);
            }
            prev_upper = r.upper;
            match &r.mode {
                RangeMode::Fingerprint(fp) => {
                    out.push(1);
                    out.extend_from_slice(fp);
                }
                RangeMode::List { digests, reply } => {
                    out.push(2);
                    out.push(u8::from(*reply));
                    put_u16(&mut out, digests.len());
                    for d in digests {
                        out.extend_from_slice(d);
                    }
                }
            }
        }
        put_u16(&mut out, self.want.len());
        for d in &self.want {
            out.extend_from_slice(d);
        }
        put_u16(&mut out, self.records.len());
        for r in &self.records {
            let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    /// Size of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        let mut prev_upper = None;
        let ranges: usize = self
            .ranges
            .iter()
            .map(|r| {
                let follows = prev_upper == Some(r.lower);
                prev_upper = r.upper;
                range_len(r) - if follows { KEY_LEN } else { 0 }
            })
            .sum();
        let records: usize = self.records.iter().map(|r| 4 + r.len()).sum();
        1 + 2 + ranges + 2 + 32 * self.want.len() + 2 + records
    }

    /// Decodes a message, checking every count against `limits` and the
    /// constants of this module before allocating for it.
    pub fn decode(mut b: &[u8], limits: &SyncLimits) -> Result<Self, SyncError> {
        if b.len() > limits.max_message_bytes {
            return Err(SyncError::TooMany {
                what: "bytes",
                count: b.len(),
                max: limits.max_message_bytes,
            });
        }
        let b = &mut b;
        let version = take_u8(b, "version")?;
        if version != SYNC_VERSION {
            return Err(SyncError::Version(version));
        }
        let n = bounded(take_u16(b, "range count")?, MAX_RANGES, "ranges")?;
        let mut ranges = Vec::with_capacity(n);
        let mut listed = 0usize;
        for _ in 0..n {
            let bounds = take_u8(b, "range bounds")?;
            if bounds > 3 {
                return Err(SyncError::BadRange("bounds flags"));
            }
            let lower = if bounds & 2 != 0 {
                match ranges.last() {
                    Some(Range {
                        upper: Some(end), ..
                    }) => *end,
                    _ => return Err(SyncError::BadRange("no previous range to follow")),
                }
            } else {
                let lower = take_key(b, "range lower bound")?;
                // One encoding per message: a range that follows says so.
                if ranges
                    .last()
                    .is_some_and(|r: &Range| r.upper == Some(lower))
                {
                    return Err(SyncError::BadRange(
                        "lower bound written out where it follows",
                    ));
                }
                lower
            };
            let upper = if bounds & 1 != 0 {
                Some(take_key(b, "range upper bound")?)
            } else {
                None
            };
            if upper.is_some_and(|u| u <= lower) {
                return Err(SyncError::BadRange("upper bound not above lower bound"));
            }
            // Ranges ascend and do not overlap, so answering a message
            // touches each of our records at most once.
            if let Some(prev) = ranges.last() {
                let prev: &Range = prev;
                match prev.upper {
                    Some(end) if lower >= end => {}
                    _ => return Err(SyncError::BadRange("ranges overlap or are out of order")),
                }
            }
            let mode = match take_u8(b, "range mode")? {
                1 => {
                    let fp = take(b, FINGERPRINT_LEN, "fingerprint")?;
                    let mut f = [0u8; FINGERPRINT_LEN];
                    f.copy_from_slice(fp);
                    RangeMode::Fingerprint(f)
                }
                2 => {
                    let reply = match take_u8(b, "reply flag")? {
                        0 => false,
                        1 => true,
                        _ => return Err(SyncError::BadRange("reply flag")),
                    };
                    let k = usize::from(take_u16(b, "list length")?);
                    listed += k;
                    bounded(listed, MAX_DIGESTS, "listed digests")?;
                    let mut digests = Vec::with_capacity(k);
                    for _ in 0..k {
                        digests.push(take_digest(b, "listed digest")?);
                    }
                    RangeMode::List { digests, reply }
                }
                _ => return Err(SyncError::BadRange("mode")),
            };
            ranges.push(Range { lower, upper, mode });
        }
        let n = bounded(take_u16(b, "want count")?, MAX_DIGESTS, "wanted digests")?;
        let mut want = Vec::with_capacity(n);
        for _ in 0..n {
            want.push(take_digest(b, "wanted digest")?);
        }
        let n = bounded(take_u16(b, "record count")?, limits.max_records, "records")?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let len = take(b, 4, "record length")?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > limits.max_record_len {
                return Err(SyncError::RecordTooLong {
                    len,
                    max: limits.max_record_len,
                });
            }
            records.push(take(b, len, "record")?.to_vec());
        }
        if !b.is_empty() {
            return Err(SyncError::Trailing(b.len()));
        }
        Ok(SyncMessage {
            ranges,
            want,
            records,
        })
    }
}

/// Encoded bytes of `r` with its lower key written out.
fn range_len(r: &Range) -> usize {
    let upper = if r.upper.is_some() { KEY_LEN } else { 0 };
    let body = match &r.mode {
        RangeMode::Fingerprint(_) => 1 + FINGERPRINT_LEN,
        RangeMode::List { digests, .. } => 1 + 1 + 2 + 32 * digests.len(),
    };
    1 + KEY_LEN + upper + body
}

fn put_key(out: &mut Vec<u8>, key: &RecordKey) {
    out.extend_from_slice(&key.0.to_be_bytes());
    out.extend_from_slice(&key.1);
}

fn take_key(b: &mut &[u8], what: &'static str) -> Result<RecordKey, SyncError> {
    let t = take(b, 8, what)?;
    let time = u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    Ok((time, take_digest(b, what)?))
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

fn bounded<N: Into<usize>>(n: N, max: usize, what: &'static str) -> Result<usize, SyncError> {
    let count = n.into();
    if count > max {
        return Err(SyncError::TooMany { what, count, max });
    }
    Ok(count)
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], SyncError> {
    if b.len() < n {
        return Err(SyncError::Truncated(what));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn take_u8(b: &mut &[u8], what: &'static str) -> Result<u8, SyncError> {
    Ok(take(b, 1, what)?[0])
}

fn take_u16(b: &mut &[u8], what: &'static str) -> Result<u16, SyncError> {
    let x = take(b, 2, what)?;
    Ok(u16::from_be_bytes([x[0], x[1]]))
}

fn take_digest(b: &mut &[u8], what: &'static str) -> Result<RecordDigest, SyncError> {
    let mut d = [0u8; 32];
    d.copy_from_slice(take(b, 32, what)?);
    Ok(d)
}

/// The digest of a record's bytes.
pub fn digest(record: &[u8]) -> RecordDigest {
    Sha256::digest(record).into()
}

/// The fingerprint of `keys` (the records of one range).
pub fn fingerprint(keys: &[RecordKey]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update((keys.len() as u64).to_be_bytes());
    for (time, digest) in keys {
        h.update(time.to_be_bytes());
        h.update(digest);
    }
    let full: [u8; 32] = h.finalize().into();
    let mut f = [0u8; FINGERPRINT_LEN];
    f.copy_from_slice(&full[..FINGERPRINT_LEN]);
    f
}

/// Our keys in `[lower, upper)`.
fn in_range<'a>(
    sorted: &'a [RecordKey],
    lower: &RecordKey,
    upper: Option<&RecordKey>,
) -> &'a [RecordKey] {
    let start = sorted.partition_point(|d| d < lower);
    let end = match upper {
        Some(u) => sorted.partition_point(|d| d < u),
        None => sorted.len(),
    };
    &sorted[start..end.max(start)]
}

/// The first message of an exchange: the fingerprint of everything.
pub fn open(set: &dyn RecordStore) -> SyncMessage {
    SyncMessage {
        ranges: vec![Range {
            lower: KEY_MIN,
            upper: None,
            mode: RangeMode::Fingerprint(set.fingerprint_of(&set.keys())),
        }],
        ..SyncMessage::default()
    }
}

/// The first message of an exchange over the records in `spans` only
/// (each a lower bound and an upper bound, `None` for the end of the key
/// space; in key order, not overlapping): their fingerprints. A client that
/// reconciled everything lately looks only at what was published since:
/// what changed elsewhere in the key space (the records that new ones
/// replaced, which lie wherever the replaced ones were published) it
/// settles by itself (a new record replaces the old one on arrival; expiry
/// goes by time), instead of splitting ranges down to every one of them.
/// The answer stays within the spans, but for the remainder a full answer
/// sends back (from where it stopped to the last span's end).
pub fn open_spans(set: &dyn RecordStore, spans: &[(RecordKey, Option<RecordKey>)]) -> SyncMessage {
    let keys = set.keys();
    SyncMessage {
        ranges: spans
            .iter()
            .map(|(lower, upper)| Range {
                lower: *lower,
                upper: *upper,
                mode: RangeMode::Fingerprint(set.fingerprint_of(in_range(
                    &keys,
                    lower,
                    upper.as_ref(),
                ))),
            })
            .collect(),
        ..SyncMessage::default()
    }
}

/// A push of records the sender has just accepted: one list range naming
/// `digests` (at most [`MAX_DIGESTS`]; the rest are dropped) that asks for
/// no list back and claims nothing about the sender's other records. The
/// receiver's [`process`] asks for those it neither holds nor refused, and
/// the exchange goes on as any other, so a node that already holds a
/// pushed record receives 32 bytes for it, never the record.
pub fn announce(digests: &[RecordDigest]) -> SyncMessage {
    let mut digests = digests[..digests.len().min(MAX_DIGESTS)].to_vec();
    digests.sort_unstable();
    digests.dedup();
    SyncMessage {
        ranges: vec![Range {
            lower: KEY_MIN,
            upper: None,
            mode: RangeMode::List {
                digests,
                reply: false,
            },
        }],
        ..SyncMessage::default()
    }
}

/// What answering `msg` with `answer` costs us, in bytes of an answer
/// budget: the answer's bytes, and [`KEY_COST`] for each of our keys when
/// `msg` made us read them (fingerprints and lists that ask for ours back
/// hash and compare up to all of them, whatever the answer's size).
pub fn answer_cost(set: &dyn RecordStore, msg: &SyncMessage, answer: &SyncMessage) -> usize {
    let scanned = if needs_ours(msg) { set.keys().len() } else { 0 };
    answer
        .encoded_len()
        .saturating_add(scanned.saturating_mul(KEY_COST))
}

/// Budget bytes a key read to answer a message costs (see
/// [`answer_cost`]): a key is 40 bytes hashed or compared.
pub const KEY_COST: usize = 4;

fn needs_ours(msg: &SyncMessage) -> bool {
    msg.ranges
        .iter()
        .any(|r| !matches!(r.mode, RangeMode::List { reply: false, .. }))
}

/// Answers `msg` from our side: ranges whose fingerprints differ are split
/// or listed, lists are compared (what the peer has and we do not know
/// goes into `want`), and the records the peer wants are attached within
/// `limits`. The records `msg` carries are the caller's to check against
/// what it asked for, verify and store.
///
/// The answer stays within [`MAX_RANGES`] ranges and [`MAX_DIGESTS`]
/// listed digests; when they run out, the rest of `msg`'s span goes back as
/// one fingerprint range, so nothing is dropped unseen and a later round
/// carries on where this one stopped.
pub fn process(set: &dyn RecordStore, msg: &SyncMessage, limits: &SyncLimits) -> SyncMessage {
    // Only fingerprints and lists that ask for ours back need our keys: a
    // push or a plain `want` is answered without reading them.
    let ours: Arc<[RecordKey]> = if needs_ours(msg) {
        set.keys()
    } else {
        Arc::new([])
    };
    let ours: &[RecordKey] = &ours;
    let mut reply = SyncMessage::default();
    let mut listed = 0usize;
    // No more digests listed than the peer can ask for in one `want` (it
    // drops the rest, and a listed range is closed for this exchange).
    let max_listed = MAX_DIGESTS.min(limits.max_records.max(LIST_THRESHOLD));
    let mut candidates: Vec<RecordDigest> = Vec::new();
    for range in &msg.ranges {
        let mine = in_range(ours, &range.lower, range.upper.as_ref());
        // A list that asks for ours back names all the peer holds in the
        // range: ours that it lacks are exactly what it needs to hear of.
        let lacking: Vec<RecordDigest> = match &range.mode {
            RangeMode::List {
                digests,
                reply: true,
            } => {
                // Lists come in key order, not digest order: search a
                // sorted copy (at most MAX_DIGESTS digests a message).
                let mut theirs = digests.clone();
                theirs.sort_unstable();
                mine.iter()
                    .map(|(_, d)| *d)
                    .filter(|d| theirs.binary_search(d).is_err())
                    .collect()
            }
            _ => Vec::new(),
        };
        // What this range may add to the answer, at most.
        let (ranges_needed, digests_needed) = match &range.mode {
            // Answered with nothing but `want`.
            RangeMode::List { reply: false, .. } => (0, 0),
            RangeMode::Fingerprint(_) if mine.len() <= LIST_THRESHOLD => (1, mine.len()),
            RangeMode::Fingerprint(_) => (SPLIT, 0),
            RangeMode::List { .. } if lacking.is_empty() => (0, 0),
            // Listed (in this answer, or else from the remainder in a
            // later one); split only if more than one answer can list.
            RangeMode::List { .. } if lacking.len() <= max_listed => (1, lacking.len()),
            RangeMode::List { .. } => (SPLIT, 0),
        };
        // One range is kept for the remainder.
        if reply.ranges.len() + ranges_needed + 1 > MAX_RANGES
            || listed + digests_needed > max_listed
        {
            let upper = msg.ranges.last().and_then(|r| r.upper);
            let rest = in_range(ours, &range.lower, upper.as_ref());
            reply.ranges.push(Range {
                lower: range.lower,
                upper,
                mode: RangeMode::Fingerprint(set.fingerprint_of(rest)),
            });
            break;
        }
        match &range.mode {
            RangeMode::Fingerprint(fp) => {
                if set.fingerprint_of(mine) == *fp {
                    continue;
                }
                listed += list_or_split(set, range, mine, &mut reply.ranges);
            }
            RangeMode::List {
                digests,
                reply: answer,
            } => {
                candidates.extend_from_slice(digests);
                // Ours that the peer lacks: tell it, so it can ask (a list
                // that asks for none back, like an announcement).
                if *answer && !lacking.is_empty() {
                    if digests_needed > 0 {
                        listed += lacking.len();
                        reply.ranges.push(Range {
                            lower: range.lower,
                            upper: range.upper,
                            mode: RangeMode::List {
                                digests: lacking,
                                reply: false,
                            },
                        });
                    } else {
                        split(set, range, mine, &mut reply.ranges);
                    }
                }
            }
        }
    }
    let max_want = MAX_DIGESTS.min(limits.max_records);
    let mut seen = HashSet::new();
    candidates.retain(|d| seen.insert(*d));
    reply.want = set.unknown(&candidates);
    reply.want.truncate(max_want);
    let mut size = reply.encoded_len();
    let mut sent = HashSet::new();
    for d in &msg.want {
        if reply.records.len() >= limits.max_records {
            break;
        }
        if !sent.insert(*d) {
            continue;
        }
        let Some(record) = set.record(d) else {
            continue;
        };
        if record.len() > limits.max_record_len {
            continue;
        }
        if size + 4 + record.len() > limits.max_message_bytes {
            break;
        }
        size += 4 + record.len();
        reply.records.push(record);
    }
    reply
}

/// Describes our records `mine` in `range`: their digests, asking for the
/// peer's that we lack back, if there are at most [`LIST_THRESHOLD`], else
/// [`split`] fingerprints. Returns the digests listed.
fn list_or_split(
    set: &dyn RecordStore,
    range: &Range,
    mine: &[RecordKey],
    out: &mut Vec<Range>,
) -> usize {
    if mine.len() > LIST_THRESHOLD {
        split(set, range, mine, out);
        return 0;
    }
    out.push(Range {
        lower: range.lower,
        upper: range.upper,
        mode: RangeMode::List {
            digests: mine.iter().map(|(_, d)| *d).collect(),
            reply: true,
        },
    });
    mine.len()
}

/// Splits `range` (in which we hold `mine`, more than [`LIST_THRESHOLD`])
/// into [`SPLIT`] parts bounded by our own keys, each with our
/// fingerprint.
fn split(set: &dyn RecordStore, range: &Range, mine: &[RecordKey], out: &mut Vec<Range>) {
    let n = mine.len();
    let mut lower = range.lower;
    for k in 1..=SPLIT {
        let upper = if k == SPLIT {
            range.upper
        } else {
            Some(mine[k * n / SPLIT])
        };
        // Bounds taken from a sorted set never go backwards; equal bounds
        // (an empty part) are skipped.
        if upper.is_some_and(|u| u <= lower) {
            continue;
        }
        let part = in_range(mine, &lower, upper.as_ref());
        out.push(Range {
            lower,
            upper,
            mode: RangeMode::Fingerprint(set.fingerprint_of(part)),
        });
        match upper {
            Some(u) => lower = u,
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_stopped_at_max_rounds_with_work_left_starts_afresh_a_few_times() {
        assert_eq!(after_round(1, false), AfterRound::Continue);
        assert_eq!(after_round(1, true), AfterRound::Stop);
        assert_eq!(after_round(MAX_ROUNDS - 1, false), AfterRound::Continue);
        assert_eq!(after_round(MAX_ROUNDS, false), AfterRound::Restart);
        assert_eq!(after_round(MAX_ROUNDS, true), AfterRound::Stop);
        assert_eq!(after_round(MAX_ROUNDS + 1, false), AfterRound::Continue);
        assert_eq!(
            after_round(RESTARTS * MAX_ROUNDS, false),
            AfterRound::Restart
        );
        assert_eq!(
            after_round((RESTARTS + 1) * MAX_ROUNDS, false),
            AfterRound::Stop
        );
        // A plain want's answer (the node marks it usize::MAX) is never followed.
        assert_eq!(after_round(usize::MAX, false), AfterRound::Stop);
    }
    use std::collections::BTreeMap;

    const LIMITS: SyncLimits = SyncLimits {
        max_records: 2048,
        max_record_len: 16 * 1024,
        max_message_bytes: 4 * 1024 * 1024,
    };

    /// A node's records, by digest, with the time each carries.
    #[derive(Default)]
    struct Set {
        records: BTreeMap<RecordDigest, Vec<u8>>,
        sorted: Arc<[RecordKey]>,
        refused: HashSet<RecordDigest>,
    }

    impl Set {
        fn of(items: impl IntoIterator<Item = u32>) -> Self {
            Self::timed(items.into_iter().map(|i| (i, 0)))
        }

        /// Records `(i, time)`.
        fn timed(items: impl IntoIterator<Item = (u32, u64)>) -> Self {
            let mut s = Set::default();
            for (i, t) in items {
                s.records.insert(digest(&timed(i, t)), timed(i, t));
            }
            s.sort();
            s
        }

        fn add(&mut self, r: Vec<u8>) {
            self.records.insert(digest(&r), r);
            self.sort();
        }

        fn sort(&mut self) {
            let mut keys: Vec<RecordKey> =
                self.records.iter().map(|(d, r)| (time_of(r), *d)).collect();
            keys.sort_unstable();
            self.sorted = keys.into();
        }
    }

    /// A record of descriptor size, carrying time 0.
    fn record(i: u32) -> Vec<u8> {
        timed(i, 0)
    }

    /// A record of descriptor size that carries time `t` (as a descriptor
    /// carries its `published`).
    fn timed(i: u32, t: u64) -> Vec<u8> {
        let mut r = format!("record {i} at {t} ").into_bytes();
        r.resize(600, b'.');
        r
    }

    /// The time a [`timed`] record carries.
    fn time_of(r: &[u8]) -> u64 {
        let text = String::from_utf8_lossy(r);
        text.split(' ')
            .nth(3)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    impl RecordStore for Set {
        fn keys(&self) -> Arc<[RecordKey]> {
            self.sorted.clone()
        }
        fn record(&self, d: &RecordDigest) -> Option<Vec<u8>> {
            self.records.get(d).cloned()
        }
        fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest> {
            digests
                .iter()
                .filter(|d| !self.records.contains_key(*d) && !self.refused.contains(*d))
                .copied()
                .collect()
        }
    }

    /// Runs one exchange from `a`; returns the rounds and the bytes sent
    /// both ways. Received records are stored, except those a set refuses.
    fn exchange(a: &mut Set, b: &mut Set) -> (usize, usize) {
        let first = open(a);
        exchange_from(a, b, first)
    }

    /// [`exchange`] opened by `first` instead of [`open`].
    fn exchange_from(a: &mut Set, b: &mut Set, first: SyncMessage) -> (usize, usize) {
        let mut msg = first;
        let mut bytes = 0;
        for round in 1..=MAX_ROUNDS {
            let wire = msg.encode();
            bytes += wire.len();
            let got = SyncMessage::decode(&wire, &LIMITS).unwrap();
            assert_eq!(got, msg);
            for r in &got.records {
                if !b.refused.contains(&digest(r)) {
                    b.add(r.clone());
                }
            }
            let answer = process(b, &got, &LIMITS);
            let wire = answer.encode();
            bytes += wire.len();
            for r in &answer.records {
                if !a.refused.contains(&digest(r)) {
                    a.add(r.clone());
                }
            }
            if answer.is_empty() {
                return (round, bytes);
            }
            msg = process(a, &answer, &LIMITS);
            if msg.is_empty() {
                return (round, bytes);
            }
        }
        (MAX_ROUNDS, bytes)
    }

    #[test]
    fn equal_sets_cost_one_fingerprint() {
        let (mut a, mut b) = (Set::of(0..5000), Set::of(0..5000));
        let (rounds, bytes) = exchange(&mut a, &mut b);
        assert_eq!(rounds, 1);
        // The fingerprint range one way, an empty answer the other.
        assert!(bytes < 80, "{bytes} bytes");
    }

    #[test]
    fn an_exchange_over_recent_spans_leaves_older_differences_alone() {
        // A client (a) that reconciled everything at time 1000 and a relay
        // (b) that has since dropped 300 records published long before
        // (replaced: their successors are published at 1000..1300) and
        // holds 20 new ones.
        let old: Vec<(u32, u64)> = (0..5000).map(|i| (i, u64::from(i) % 900)).collect();
        let new: Vec<(u32, u64)> = (0..300)
            .map(|i| (10_000 + i, 1000 + u64::from(i)))
            .chain((0..20).map(|i| (20_000 + i, 1400 + u64::from(i))))
            .collect();
        let relay = || {
            Set::timed(
                old.iter()
                    .copied()
                    .filter(|&(i, _)| i % 16 != 0 || i >= 300 * 16)
                    .chain(new.iter().copied()),
            )
        };
        let mut a = Set::timed(old.iter().copied());
        let mut b = relay();
        let first = open_spans(&a, &[((1000, [0; 32]), None)]);
        let (_, recent_bytes) = exchange_from(&mut a, &mut b, first);
        for &(i, t) in &new {
            assert!(a.records.contains_key(&digest(&timed(i, t))), "record {i}");
        }
        // The dropped ones were left alone: not listed, not sent back to
        // the relay (which a full exchange does, at several times the
        // bytes).
        assert!(!b.records.contains_key(&digest(&timed(16, 16))));
        let mut a2 = Set::timed(old.iter().copied());
        let mut b2 = relay();
        let (_, full_bytes) = exchange(&mut a2, &mut b2);
        assert!(b2.records.contains_key(&digest(&timed(16, 16))));
        assert!(
            recent_bytes * 5 < full_bytes * 2,
            "{recent_bytes} bytes over the recent span, {full_bytes} in full"
        );
    }

    #[test]
    fn an_announcement_fetches_only_what_the_receiver_lacks() {
        let mut a = Set::of(0..103);
        let mut b = Set::of((0..100).chain([101, 500]));
        let new: Vec<RecordDigest> = (100..103).map(|i| digest(&record(i))).collect();
        let (rounds, bytes) = exchange_from(&mut a, &mut b, announce(&new));
        // announce, want (100 and 102), the two records, and b's empty answer.
        assert_eq!(rounds, 2);
        for i in 100..103 {
            assert!(b.records.contains_key(&digest(&record(i))), "record {i}");
        }
        // Only the two missing records travelled, and nothing went back to a:
        // an announcement says nothing about the sender's other records.
        assert!(bytes < 2 * 610 + 3 * 32 + 2 * 32 + 64, "{bytes} bytes");
        assert!(!a.records.contains_key(&digest(&record(500))));
    }

    #[test]
    fn differences_in_both_directions_are_all_fetched() {
        for (common, only_a, only_b) in [
            (0, 0, 1),
            (0, 30, 0),
            (5000, 1, 0),
            (5000, 3, 7),
            (2000, 200, 150),
            (10, 0, 0),
        ] {
            let mut a = Set::of((0..common).chain(100_000..100_000 + only_a));
            let mut b = Set::of((0..common).chain(200_000..200_000 + only_b));
            let mut total = 0;
            for _ in 0..3 {
                total += exchange(&mut a, &mut b).1;
                if a.sorted == b.sorted {
                    break;
                }
            }
            assert_eq!(a.sorted, b.sorted, "{common} {only_a} {only_b}");
            assert_eq!(a.sorted.len() as u32, common + only_a + only_b);
            // Records cost their bytes once; the rest is small.
            let records: usize = a.records.values().map(|r| r.len()).sum::<usize>()
                - Set::of(0..common)
                    .records
                    .values()
                    .map(|r| r.len())
                    .sum::<usize>();
            let overhead = total.saturating_sub(records);
            let diff = (only_a + only_b) as usize;
            println!("{common} {only_a} {only_b}: {total} bytes, {overhead} overhead");
            assert!(
                overhead <= 200 + diff * 4000,
                "{common} {only_a} {only_b}: {overhead} bytes of overhead"
            );
        }
    }

    /// Reconciles a client's directory of an hour ago with a relay's now,
    /// as the directory changes: 5000 records published over 36 hours;
    /// since then 300 new ones, 139 republished (those published 12 hours
    /// before: the relay has refused the client's old copies) and 50 of the
    /// oldest expired on both. With `with_times`, records carry their
    /// publication time; without, every key's time is 0 (digest order).
    /// Returns the bytes beyond the records'.
    fn an_hour_later(with_times: bool) -> usize {
        let hour = 3600;
        let now = 36 * hour;
        let t = |i: u32| {
            if with_times {
                u64::from(i) * now / 5000
            } else {
                0
            }
        };
        let republished = |i: u32| (3194..3333).contains(&i);
        let mut client = Set::timed((50..5000).map(|i| (i, t(i))));
        let new = (100_000..100_300).chain((3194..3333).map(|i| i + 200_000));
        let mut relay = Set::timed(
            (50..5000)
                .filter(|&i| !republished(i))
                .map(|i| (i, t(i)))
                .chain(new.map(|i| (i, if with_times { now - 60 } else { 0 }))),
        );
        relay.refused = (3194..3333).map(|i| digest(&timed(i, t(i)))).collect();
        let before: HashSet<RecordDigest> = client.records.keys().copied().collect();
        let mut total = 0;
        for _ in 0..3 {
            let (_, bytes) = exchange(&mut client, &mut relay);
            total += bytes;
            if relay.records.keys().all(|d| client.records.contains_key(d)) {
                break;
            }
        }
        assert!(
            relay.records.keys().all(|d| client.records.contains_key(d)),
            "the client holds all the relay holds"
        );
        assert_eq!(relay.records.len(), 4950 - 139 + 439, "nothing went back");
        let records: usize = client
            .records
            .iter()
            .filter(|(d, _)| !before.contains(*d))
            .map(|(_, r)| r.len())
            .sum();
        total - records
    }

    #[test]
    fn an_hour_of_changes_costs_a_few_ranges_when_records_carry_their_time() {
        let timed = an_hour_later(true);
        let untimed = an_hour_later(false);
        println!("overhead: {timed} bytes with times, {untimed} without");
        // 578 differences: in digest order they fall in nearly every range
        // and most digests are listed both ways; in time order the ranges
        // between the two bands of change match at once.
        assert!(timed * 5 < untimed, "{timed} against {untimed}");
        // Close to the digests that must travel: 439 listed and wanted,
        // 139 listed back (about 33 KB).
        assert!(timed < 578 * 100, "{timed} bytes of overhead");
    }

    #[test]
    fn a_refused_record_is_never_fetched_again() {
        let mut a = Set::of(0..100);
        let mut b = Set::of(0..99);
        let extra = digest(&record(99));
        b.refused.insert(extra);
        for _ in 0..3 {
            let (_, bytes) = exchange(&mut a, &mut b);
            // Lists of the differing range, but never the record itself.
            assert!(bytes < 2000, "{bytes}");
        }
        assert!(!b.records.contains_key(&extra));
    }

    #[test]
    fn answers_stay_within_their_limits() {
        let small = SyncLimits {
            max_records: 3,
            max_record_len: 64,
            max_message_bytes: 300,
        };
        let a = Set::of(0..50);
        let msg = SyncMessage {
            want: a.sorted.iter().map(|(_, d)| *d).collect(),
            ..SyncMessage::default()
        };
        let answer = process(&a, &msg, &small);
        assert!(answer.records.len() <= 3);
        assert!(answer.encoded_len() <= 300);
        assert!(SyncMessage::decode(&answer.encode(), &small).is_ok());
        // Too many records, or too long, or too many bytes: refused.
        let big = process(&a, &msg, &LIMITS);
        assert!(matches!(
            SyncMessage::decode(&big.encode(), &small),
            Err(SyncError::TooMany { .. })
        ));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = SyncMessage {
            ranges: vec![Range {
                lower: (1, [1; 32]),
                upper: Some((1, [2; 32])),
                mode: RangeMode::List {
                    digests: vec![[1; 32]],
                    reply: true,
                },
            }],
            want: vec![[3; 32]],
            records: vec![b"x".to_vec()],
        };
        let wire = good.encode();
        assert_eq!(wire.len(), good.encoded_len());
        assert_eq!(SyncMessage::decode(&wire, &LIMITS).unwrap(), good);
        for cut in 0..wire.len() {
            assert!(
                SyncMessage::decode(&wire[..cut], &LIMITS).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = wire.clone();
        extra.push(0);
        assert_eq!(
            SyncMessage::decode(&extra, &LIMITS),
            Err(SyncError::Trailing(1))
        );
        let mut v = wire.clone();
        v[0] = 1;
        assert_eq!(SyncMessage::decode(&v, &LIMITS), Err(SyncError::Version(1)));
        let mut backwards = good.clone();
        backwards.ranges[0].upper = Some((1, [1; 32]));
        assert!(matches!(
            SyncMessage::decode(&backwards.encode(), &LIMITS),
            Err(SyncError::BadRange(_))
        ));
        // Keys compare by time first: a later digest at an earlier time
        // is below.
        backwards.ranges[0].upper = Some((0, [9; 32]));
        assert!(matches!(
            SyncMessage::decode(&backwards.encode(), &LIMITS),
            Err(SyncError::BadRange(_))
        ));
        // A range that starts where the previous one ended needs one.
        let mut first = good.encode();
        first[3] |= 2;
        assert_eq!(
            SyncMessage::decode(&first, &LIMITS),
            Err(SyncError::BadRange("no previous range to follow"))
        );
        // A count far above the limit is refused before anything is read.
        let mut huge = vec![SYNC_VERSION];
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            SyncMessage::decode(&huge, &LIMITS),
            Err(SyncError::TooMany { .. })
        ));
    }

    #[test]
    fn overlapping_or_unordered_ranges_are_refused() {
        let whole = |fp: u8| Range {
            lower: KEY_MIN,
            upper: None,
            mode: RangeMode::Fingerprint([fp; 16]),
        };
        // The same whole-set range twice would make us hash everything twice.
        let twice = SyncMessage {
            ranges: vec![whole(1), whole(2)],
            ..SyncMessage::default()
        };
        assert!(matches!(
            SyncMessage::decode(&twice.encode(), &LIMITS),
            Err(SyncError::BadRange(_))
        ));
        let part = |lo: u8, hi: u8| Range {
            lower: (u64::from(lo), [lo; 32]),
            upper: Some((u64::from(hi), [hi; 32])),
            mode: RangeMode::Fingerprint([0; 16]),
        };
        for ranges in [vec![part(5, 9), part(1, 3)], vec![part(1, 5), part(4, 9)]] {
            let m = SyncMessage {
                ranges,
                ..SyncMessage::default()
            };
            assert!(SyncMessage::decode(&m.encode(), &LIMITS).is_err());
        }
        let ok = SyncMessage {
            ranges: vec![part(1, 5), part(5, 9), part(9, 10)],
            ..SyncMessage::default()
        };
        assert!(SyncMessage::decode(&ok.encode(), &LIMITS).is_ok());
        // Ranges that follow each other are written without their lower
        // bound, and only so: one encoding per message.
        assert_eq!(ok.encoded_len(), 3 + (1 + 80 + 17) + 2 * (1 + 40 + 17) + 4);
        let gap = SyncMessage {
            ranges: vec![part(1, 5), part(6, 9)],
            ..SyncMessage::default()
        };
        let mut wire = gap.encode();
        // The second range's written lower bound, made equal to the first's
        // upper one.
        wire[3 + 98 + 1..3 + 98 + 1 + 40].copy_from_slice(&{
            let mut k = 5u64.to_be_bytes().to_vec();
            k.extend_from_slice(&[5; 32]);
            k
        });
        assert_eq!(
            SyncMessage::decode(&wire, &LIMITS),
            Err(SyncError::BadRange(
                "lower bound written out where it follows"
            ))
        );
    }

    #[test]
    fn an_answer_over_budget_sends_the_rest_back_as_one_range() {
        // Our 20100 records against a peer that claims to differ in 500
        // disjoint ranges of 40 of them each: splitting them all would take
        // 8000 ranges.
        let ours = Set::of(0..20_100);
        let d = &ours.sorted;
        let ranges: Vec<Range> = (0..500)
            .map(|k| Range {
                lower: d[k * 40],
                upper: Some(d[k * 40 + 40]),
                mode: RangeMode::Fingerprint([0; 16]),
            })
            .collect();
        let msg = SyncMessage {
            ranges,
            ..SyncMessage::default()
        };
        let answer = process(
            &ours,
            &SyncMessage::decode(&msg.encode(), &LIMITS).unwrap(),
            &LIMITS,
        );
        assert!(answer.ranges.len() <= MAX_RANGES);
        assert!(SyncMessage::decode(&answer.encode(), &LIMITS).is_ok());
        // The last range covers everything from the first range not
        // answered to the end of the message's span, with our fingerprint.
        let last = answer.ranges.last().unwrap();
        assert_eq!(last.upper, msg.ranges.last().unwrap().upper);
        let first_unanswered = msg
            .ranges
            .iter()
            .position(|r| r.lower == last.lower)
            .expect("the remainder starts at one of the message's ranges");
        assert!(first_unanswered > 0 && first_unanswered < 500);
        let rest = in_range(d, &last.lower, last.upper.as_ref());
        assert_eq!(last.mode, RangeMode::Fingerprint(fingerprint(rest)));
        // Everything before it was split, nothing skipped.
        assert_eq!(answer.ranges.len() - 1, first_unanswered * SPLIT);
    }

    /// A store that counts how often its keys are read.
    struct Counting<'a>(&'a Set, std::sync::atomic::AtomicUsize);

    impl RecordStore for Counting<'_> {
        fn keys(&self) -> Arc<[RecordKey]> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.keys()
        }
        fn record(&self, d: &RecordDigest) -> Option<Vec<u8>> {
            self.0.record(d)
        }
        fn unknown(&self, digests: &[RecordDigest]) -> Vec<RecordDigest> {
            self.0.unknown(digests)
        }
    }

    #[test]
    fn pushes_and_wants_are_answered_without_reading_our_keys() {
        let b = Set::of(0..100);
        let store = Counting(&b, Default::default());
        let reads = || store.1.load(std::sync::atomic::Ordering::Relaxed);
        let new: Vec<RecordDigest> = (99..102).map(|i| digest(&record(i))).collect();
        let answer = process(&store, &announce(&new), &LIMITS);
        assert_eq!(answer.want.len(), 2);
        let want = SyncMessage {
            want: vec![b.sorted[0].1],
            ..SyncMessage::default()
        };
        assert_eq!(process(&store, &want, &LIMITS).records.len(), 1);
        assert_eq!(reads(), 0);
        // A fingerprint needs them.
        let a = Set::of(0..101);
        process(&store, &open(&a), &LIMITS);
        assert_eq!(reads(), 1);
    }

    #[test]
    fn an_empty_node_fetches_a_large_directory_in_one_exchange() {
        // More records than one message may carry or one want may name:
        // nothing listed is dropped for want of room, so one exchange
        // (with its fresh starts, as the node runs it) fetches them all.
        let mut relay = Set::of(0..10_000);
        let mut client = Set::default();
        let mut msg = open(&client);
        let mut round = 1;
        loop {
            let got = process(&relay, &msg, &LIMITS);
            for r in &got.records {
                client.add(r.clone());
            }
            let next = process(&client, &got, &LIMITS);
            for r in &next.records {
                relay.add(r.clone());
            }
            match after_round(round, next.is_empty()) {
                AfterRound::Continue => msg = next,
                AfterRound::Restart => msg = open(&client),
                AfterRound::Stop => break,
            }
            round += 1;
        }
        assert_eq!(client.records.len(), 10_000, "after {round} rounds");
        assert!(round <= MAX_ROUNDS, "{round} rounds");
    }

    #[test]
    fn a_message_without_records_fits_in_the_room_left_for_them() {
        let key = |i: usize| (i as u64, [0; 32]);
        let mut ranges: Vec<Range> = (0..MAX_RANGES - 1)
            .map(|i| Range {
                lower: key(2 * i),
                upper: Some(key(2 * i + 1)),
                mode: RangeMode::Fingerprint([0; 16]),
            })
            .collect();
        ranges.push(Range {
            lower: key(2 * MAX_RANGES),
            upper: Some(key(2 * MAX_RANGES + 1)),
            mode: RangeMode::List {
                digests: vec![[1; 32]; MAX_DIGESTS],
                reply: true,
            },
        });
        let worst = SyncMessage {
            ranges,
            want: vec![[2; 32]; MAX_DIGESTS],
            records: Vec::new(),
        };
        assert!(worst.encoded_len() <= MAX_NON_RECORD_BYTES);
        assert_eq!(worst.encode().len(), worst.encoded_len());
    }

    #[test]
    fn repeated_wants_get_one_copy() {
        let a = Set::of(0..10);
        let msg = SyncMessage {
            want: vec![a.sorted[3].1; 100],
            ..SyncMessage::default()
        };
        assert_eq!(process(&a, &msg, &LIMITS).records.len(), 1);
    }
}
