#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod circuit;
pub mod link;
pub mod onion;
pub mod rekey;

mod aead;

pub use aead::CryptoError;
pub use rekey::RekeyPolicy;
