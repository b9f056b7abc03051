#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod core;
mod error;
mod exit;
mod link;
mod relay;
mod stream;

pub use crate::core::{Core, CoreConfig, ExitConfig, Limits, Stats};
pub use client::{CircuitInfo, ClientCircuit, HopSpec};
pub use error::ProtoError;
pub use link::{Link, LinkTap};
pub use stream::{ClientStream, FLOW};
