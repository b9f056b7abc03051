#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod circuit;
pub mod link;
pub mod onion;
pub mod rekey;

mod aead;
mod kind;

pub use aead::CryptoError;
pub use rekey::RekeyPolicy;

/// The X25519 public key of `secret`, computed by the DH implementation the
/// Noise handshakes use (link keys and onion keys alike).
fn x25519_public(secret: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let mut dh = snow::resolvers::CryptoResolver::resolve_dh(
        &snow::resolvers::DefaultResolver,
        &snow::params::DHChoice::Curve25519,
    )
    .ok_or(CryptoError::Handshake("no X25519 implementation".into()))?;
    dh.set(secret);
    dh.pubkey()
        .try_into()
        .map_err(|_| CryptoError::BadLength(dh.pubkey().len()))
}
