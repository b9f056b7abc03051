//! Key ratchet shared by the record layer and the onion layers.
//!
//! A key is retired after a number of uses (records on a link, cells on a
//! layer) or after an age, whichever comes first, and replaced by
//! [`next_key`] of it; the old key is dropped, so a key stolen later does not
//! open what was sealed before the ratchet. The caller passes the time in:
//! nothing here reads a clock.

use std::time::Duration;

use ring::hkdf;

/// HKDF `info` of the ratchet.
const REKEY_LABEL: &[u8] = b"veilnet rekey v1";

/// Hard limit of uses of one AES-256-GCM key, whatever the policy says: a
/// peer that goes past it without a key update loses the channel.
pub const MAX_USES_PER_KEY: u64 = 1 << 32;

/// Fewest uses of one key before a key update: a receiver refuses an update
/// that comes sooner, so a peer cannot make us derive keys on every cell or
/// record (each update costs two HKDF runs and an AES key schedule, several
/// times the cost of sealing a cell). A sender's policy never retires a key
/// sooner, whatever it says.
pub const MIN_USES_PER_KEY: u64 = 16;

/// When a sender retires its current key. Mechanism, not policy: the engine
/// chooses the values (WireGuard rekeys every 2 minutes; TLS 1.3 leaves it to
/// the application through KeyUpdate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Uses of one key (records for a link, cells for an onion layer) after
    /// which it is retired: the use that reaches this number is the last under
    /// the key. Capped at [`MAX_USES_PER_KEY`]. Default `1 << 31`.
    pub max_uses: u64,
    /// Age of a key after which it is retired: the first use at or after this
    /// age since the key started is the last under it. Default 120 s.
    pub max_age: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self {
            max_uses: 1 << 31,
            max_age: Duration::from_secs(120),
        }
    }
}

impl RekeyPolicy {
    /// True when a key used `uses` times (counting this use) and started
    /// `age` ago must be retired after this use: never before
    /// [`MIN_USES_PER_KEY`] uses, always at [`MAX_USES_PER_KEY`].
    #[inline]
    pub fn is_due(&self, uses: u64, age: Duration) -> bool {
        uses >= MIN_USES_PER_KEY
            && (uses >= self.max_uses.min(MAX_USES_PER_KEY) || age >= self.max_age)
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The key that replaces `key`: HKDF-SHA256 (RFC 5869) with an empty salt,
/// `key` as input keying material and `b"veilnet rekey v1"` as info, 32
/// bytes of output.
pub fn next_key(key: &[u8; 32]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key);
    let mut out = [0u8; 32];
    prk.expand(&[REKEY_LABEL], Len32)
        .and_then(|okm| okm.fill(&mut out))
        // 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit.
        .expect("HKDF output length is valid");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_due_by_uses_age_or_the_hard_limit() {
        let p = RekeyPolicy {
            max_uses: 3,
            max_age: Duration::from_secs(10),
        };
        // Never before MIN_USES_PER_KEY uses, whatever the policy says.
        assert!(!p.is_due(3, Duration::ZERO));
        assert!(!p.is_due(MIN_USES_PER_KEY - 1, Duration::from_secs(10)));
        assert!(p.is_due(MIN_USES_PER_KEY, Duration::ZERO));
        let p = RekeyPolicy {
            max_uses: 100,
            max_age: Duration::from_secs(10),
        };
        assert!(!p.is_due(99, Duration::from_secs(9)));
        assert!(p.is_due(100, Duration::ZERO));
        assert!(p.is_due(MIN_USES_PER_KEY, Duration::from_secs(10)));
        let unbounded = RekeyPolicy {
            max_uses: u64::MAX,
            max_age: Duration::MAX,
        };
        assert!(!unbounded.is_due(MAX_USES_PER_KEY - 1, Duration::ZERO));
        assert!(unbounded.is_due(MAX_USES_PER_KEY, Duration::ZERO));
        let d = RekeyPolicy::default();
        assert_eq!((d.max_uses, d.max_age), (1 << 31, Duration::from_secs(120)));
    }

    #[test]
    fn next_key_is_deterministic_and_moves() {
        let k = [0x11; 32];
        assert_eq!(next_key(&k), next_key(&k));
        assert_ne!(next_key(&k), k);
        assert_ne!(next_key(&next_key(&k)), next_key(&k));
    }
}
