#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cell;
mod relay;
mod target;

pub use cell::*;
pub use relay::*;
pub use target::*;
