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
pub(crate) struct CounterKeystream {
    cipher: aes::Aes256,
    counter: u64,
}

impl CounterKeystream {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        use aes::cipher::KeyInit;
        Self {
            cipher: aes::Aes256::new(key.into()),
            counter: 0,
        }
    }

    /// Fills `buf` with the keystream of the next message.
    pub(crate) fn keystream(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        use aes::cipher::{InnerIvInit, StreamCipher};
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
        let mut iv = [0u8; 16];
        iv[4..12].copy_from_slice(&n.to_be_bytes());
        iv[15] = 2;
        let core = ctr::CtrCore::<aes::Aes256, ctr::flavors::Ctr32BE>::inner_iv_init(
            self.cipher.clone(),
            &iv.into(),
        );
        let mut ctr = ctr::Ctr32BE::<aes::Aes256>::from_core(core);
        buf.fill(0);
        ctr.apply_keystream(buf);
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
        for len in [1, 16, 17, 85, 200] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            gcm.keystream(&mut a).unwrap();
            ctr.keystream(&mut b).unwrap();
            assert_eq!(a, b, "length {len}");
        }
    }
}
