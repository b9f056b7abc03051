//! Resource limits: what a peer can make this node hold, per item.

use std::time::Duration;

/// Exit connects in progress per node.
pub(crate) const MAX_EXIT_CONNECTS: usize = 256;

/// Resource limits: each thing a peer can make us hold (a queue, a table,
/// a connection) is bounded by one of these. They bound each item, not yet
/// the total across items (issue #10).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Cells queued for sending on one link.
    pub link_queue: usize,
    /// Circuits on one link.
    pub max_circuits_per_link: usize,
    /// Open streams on one circuit.
    pub max_streams_per_circuit: usize,
    /// Inbound link handshakes in progress at once.
    pub max_pending_handshakes: usize,
    /// Inbound link handshakes in progress from one IP address.
    pub max_pending_handshakes_per_ip: usize,
    /// Time to connect a link or an exit stream.
    pub connect_timeout: Duration,
    /// Time to build a whole circuit.
    pub circuit_build_timeout: Duration,
    /// Time for the exit to answer a stream request.
    pub stream_open_timeout: Duration,
    /// Open links, inbound and outbound together.
    pub max_links: usize,
    /// When a link retires the key of the records it sends (the peer's
    /// opener follows its KEY_UPDATE flag, and refuses a key used for
    /// `2^32` records without one). Default: after `2^31` records or
    /// 120 s, whichever comes first.
    pub link_rekey: veilnet_crypto::RekeyPolicy,
    /// When this node retires the onion-layer keys of the cells it sends:
    /// as a client each hop's forward keys, as a relay its backward keys
    /// (the other end follows the KEY_UPDATE control byte, and refuses keys
    /// used for `2^32` cells without one). Default: after `2^31` cells or
    /// 120 s, whichever comes first.
    pub layer_rekey: veilnet_crypto::RekeyPolicy,
    /// Flow-control windows of the circuits this node ends (as client or
    /// exit): each circuit gets its own copy. Default: 1024 cells per
    /// stream and 2048 per circuit.
    pub flow: veilnet_circuit::FlowParams,
    /// The bandwidth this node donates as a relay: bytes per second read
    /// from and written to relay links, each direction (not the links of
    /// its own client circuits). Default: `None`, no limit.
    pub relay_bandwidth: Option<crate::rate::BandwidthLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            link_queue: 2048,
            max_circuits_per_link: 16_384,
            max_streams_per_circuit: 1024,
            max_pending_handshakes: 128,
            max_pending_handshakes_per_ip: 8,
            connect_timeout: Duration::from_secs(10),
            circuit_build_timeout: Duration::from_secs(20),
            stream_open_timeout: Duration::from_secs(30),
            max_links: 4096,
            link_rekey: veilnet_crypto::RekeyPolicy::default(),
            layer_rekey: veilnet_crypto::RekeyPolicy::default(),
            flow: veilnet_circuit::FlowParams::default(),
            relay_bandwidth: None,
        }
    }
}
