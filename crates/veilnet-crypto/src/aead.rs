//! Thin helpers over ring's AES-256-GCM with counter nonces.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use thiserror::Error;

/// Errors from the crypto state machines.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// An authentication tag did not verify (tampered, replayed or reordered data).
    #[error("authentication failed at layer {0}")]
    BadTag(usize),
    /// A counter would wrap; the key must not be used again.
    #[error("nonce counter exhausted")]
    CounterExhausted,
    /// The peer went on using one key for this many records (or cells)
    /// without the key update that must come by then.
    #[error("peer used one key {0} times without a key update")]
    KeyUpdateOverdue(u64),
    /// The peer asked for a key update after only this many uses of the
    /// key (fewer than `rekey::MIN_USES_PER_KEY`).
    #[error("peer asked for a key update after only {0} uses")]
    KeyUpdateTooSoon(u64),
    /// A handshake message was malformed or failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A length field is out of range.
    #[error("bad length {0}")]
    BadLength(usize),
    /// The peer's identity proof is invalid.
    #[error("bad identity proof: {0}")]
    BadIdentity(&'static str),
    /// An operation was called in the wrong state.
    #[error("operation out of order: {0}")]
    OutOfOrder(&'static str),
}

impl From<snow::Error> for CryptoError {
    fn from(e: snow::Error) -> Self {
        Self::Handshake(e.to_string())
    }
}

/// An AES-256-GCM key with a strictly increasing 64-bit nonce counter.
pub(crate) struct CounterAead {
    key: LessSafeKey,
    counter: u64,
}

impl CounterAead {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            // A 32-byte key is always valid for AES-256-GCM.
            .expect("AES-256-GCM accepts 32-byte keys");
        Self {
            key: LessSafeKey::new(unbound),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, CryptoError> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(b))
    }

    /// Encrypts in place and returns the tag.
    pub(crate) fn seal(&mut self, aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], CryptoError> {
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
            .map_err(|_| CryptoError::BadLength(buf.len()))?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Verifies and decrypts in place. On failure the counter still advances,
    /// and the caller must discard the data and the whole channel.
    pub(crate) fn open(
        &mut self,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
        layer: usize,
    ) -> Result<(), CryptoError> {
        let nonce = self.next_nonce()?;
        self.key
            .open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| CryptoError::BadTag(layer))
    }

    /// Fills `buf` with keystream for the next counter value (the CTR part of
    /// GCM applied to zeros); the tag is discarded. What
    /// [`CounterKeystream`] computes without the tag (tests compare them).
    #[cfg(test)]
    pub(crate) fn keystream(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        buf.fill(0);
        self.seal(&[], buf).map(|_| ())
    }
}

/// AES-256 in counter mode with a strictly increasing 64-bit message counter:
/// for message `n` the keystream [`CounterAead::seal`] would XOR into
/// plaintext under nonce `n` (GCM's counter blocks start at `nonce || 2`),
/// without computing a tag nobody checks. A key used for this is never used
/// for anything else, so no counter block is ever reused.
///
/// The expanded key (960 bytes for the `aes` crate's run-time-detected
/// cipher) is kept only once a key has been used [`KEEP_EXPANDED_AFTER`]
/// times: an idle circuit's layers hold just the 32-byte key and expand it
/// per message (~190 ns), a busy one expands it once (~30 ns per message).
pub(crate) struct CounterKeystream {
    key: [u8; 32],
    // Encryption round keys only: counter mode never decrypts a block.
    cipher: Option<Box<aes::Aes256Enc>>,
    counter: u64,
}

/// Messages after which a [`CounterKeystream`] keeps its expanded key.
const KEEP_EXPANDED_AFTER: u64 = 32;

impl CounterKeystream {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self {
            key: *key,
            cipher: None,
            counter: 0,
        }
    }

    /// The key.
    pub(crate) fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Fills `buf` with the keystream of the next message: AES-256 of the
    /// counter blocks `nonce(n) || 2`, `nonce(n) || 3`, ..., encrypted a
    /// batch of blocks per call (the `ctr` crate's wrapper costs three
    /// times as much for a cell header's six blocks: 96 against 29 ns here).
    pub(crate) fn keystream(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        use aes::cipher::{BlockEncrypt, KeyInit};
        const BATCH: usize = 8;
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
        if self.cipher.is_none() && n >= KEEP_EXPANDED_AFTER {
            self.cipher = Some(Box::new(aes::Aes256Enc::new(&self.key.into())));
        }
        let expanded;
        let cipher = match &self.cipher {
            Some(c) => &**c,
            None => {
                expanded = aes::Aes256Enc::new(&self.key.into());
                &expanded
            }
        };
        let mut block = [0u8; 16];
        block[4..12].copy_from_slice(&n.to_be_bytes());
        // GCM's first keystream block is counter 2 (counter 1 masks the tag).
        let mut counter: u32 = 2;
        for chunk in buf.chunks_mut(16 * BATCH) {
            let mut blocks = [aes::Block::default(); BATCH];
            let used = chunk.len().div_ceil(16);
            for b in &mut blocks[..used] {
                block[12..].copy_from_slice(&counter.to_be_bytes());
                *b = block.into();
                counter = counter.wrapping_add(1);
            }
            cipher.encrypt_blocks(&mut blocks[..used]);
            for (out, ks) in chunk.chunks_mut(16).zip(&blocks) {
                out.copy_from_slice(&ks[..out.len()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod keystream_tests {
    use super::*;

    #[test]
    fn counter_mode_keystream_is_what_gcm_would_xor_in() {
        let key = [7u8; 32];
        let (mut gcm, mut ctr) = (CounterAead::new(&key), CounterKeystream::new(&key));
        for len in [0, 1, 16, 17, 85, 127, 128, 129, 200, 300] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            gcm.keystream(&mut a).unwrap();
            ctr.keystream(&mut b).unwrap();
            assert_eq!(a, b, "length {len}");
        }
        // Past the point where the expanded key is kept: the same stream.
        for n in 0..2 * KEEP_EXPANDED_AFTER {
            let (mut a, mut b) = ([0u8; 85], [0u8; 85]);
            gcm.keystream(&mut a).unwrap();
            ctr.keystream(&mut b).unwrap();
            assert_eq!(a, b, "message {n}");
        }
        assert!(ctr.cipher.is_some());
    }
}
