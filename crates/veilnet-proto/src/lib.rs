#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod core;
mod error;
mod exit;
mod link;
mod policy;
mod relay;
mod stream;

pub use crate::core::{Core, CoreConfig, Limits, Stats};
pub use crate::policy::{
    BeginRequest, ConnectRequest, CreateRequest, DefaultRelayPolicy, ExitConfig, ExtendRequest,
    KnownRelays, Refusal, RelayPolicy,
};
pub use client::{CircuitInfo, ClientCircuit, HopSpec};
pub use error::ProtoError;
pub use link::{Link, LinkTap};
pub use stream::{ClientStream, FLOW};
