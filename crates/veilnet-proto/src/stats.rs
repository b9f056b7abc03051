//! Counters of what the engine did.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the engine did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Relay cells forwarded or processed by this node as a relay.
    pub relay_cells: AtomicU64,
    /// Circuits created through this node (CREATE accepted).
    pub circuits_accepted: AtomicU64,
    /// Cells refused because a check failed (bad tag, malformed).
    pub cells_refused: AtomicU64,
    /// Exit streams opened.
    pub exit_streams: AtomicU64,
    /// Streams joined to this node's own measurement sinks (not counted
    /// in `exit_streams`).
    pub sink_streams: AtomicU64,
    /// BEGINs the policy refused (not an exit, one-hop circuit, ...).
    pub streams_refused: AtomicU64,
    /// Cells with a command this version does not know (ignored).
    pub unknown_cell_commands: AtomicU64,
    /// Relay messages with a command this version does not know (ignored).
    pub unknown_relay_commands: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
