#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod core;
mod error;
mod exit;
mod limits;
mod link;
mod rate;
mod relay;
mod sink;
mod stats;
mod stream;

pub use crate::core::{Core, CoreConfig};
pub use crate::limits::Limits;
pub use crate::rate::BandwidthLimit;
pub use crate::sink::{Sink, Sinks, MAX_SINKS, SINK_SUFFIX};
pub use crate::stats::Stats;
pub use client::ClientStream;
pub use client::{CircuitInfo, ClientCircuit};
pub use error::ProtoError;
pub use link::{Link, LinkTap};
pub use veilnet_circuit::policy::{
    BeginRequest, ConnectRequest, CreateRequest, DefaultRelayPolicy, ExitConfig, ExtendRequest,
    KnownRelays, Refusal, RelayPolicy,
};
pub use veilnet_circuit::{CircuitError, ErrorKind, FlowParams, HopSpec, PeerMisbehaved};
