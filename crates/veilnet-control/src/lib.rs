#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod render;
mod server;
mod view;

#[cfg(test)]
mod fixtures;

pub use client::{
    get_json, status_report, ControlClientError, CONNECT_TIMEOUT, MAX_RESPONSE_BYTES,
    RESPONSE_TIMEOUT,
};
pub use render::render_status;
pub use server::{serve, CONNECTION_LIFETIME, MAX_CONNECTIONS};
pub use view::{
    CircuitView, ControlSource, EquivocationView, GuardView, NodeView, StatusView,
    EQUIVOCATED_DESCRIPTOR, EQUIVOCATED_REPORT,
};
