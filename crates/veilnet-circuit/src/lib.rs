#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod error;
pub mod flow;
pub mod policy;
pub mod relay;
pub mod stream;

pub use build::{CircuitBuilder, HopSpec, Step};
pub use error::{CircuitError, ErrorKind, PeerMisbehaved};
pub use flow::{FlowParams, RecvWindow, SendWindow};
pub use relay::{Forward, Local, NextHop, RelayHop};
pub use stream::{Credit, Event, Outgoing, Role, StreamHandle, Streams, Transmit};
