//! What the control API shows, and where it reads it from.

use serde::{Deserialize, Serialize};

/// One node of the directory as the control API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The node's libp2p peer id.
    pub peer_id: String,
    /// Whether the node offers to relay circuits.
    pub relay: bool,
    /// Whether the node offers to be the last hop to the open internet.
    pub exit: bool,
    /// Addresses for the circuit link protocol.
    pub link_addrs: Vec<String>,
    /// libp2p multiaddresses.
    pub p2p_addrs: Vec<String>,
    /// Region the node advertises (self-declared, not verified).
    pub region: String,
    /// The bandwidth the node advertises, bytes per second (its own claim).
    pub advertised_bandwidth: u64,
    /// The bandwidth peers measured (the median over the measurers that
    /// reached it), bytes per second; `None` while no measurer reached it,
    /// or with measurements off.
    pub measured_bandwidth: Option<u64>,
    /// Whether measurers reached it enough to use it; `None` with
    /// measurements off.
    #[serde(default)]
    pub reachable: Option<bool>,
    /// Distinct measurers whose latest observation of it counts.
    #[serde(default)]
    pub measured_by: usize,
    /// Its selection weight (0: never chosen, e.g. over its address
    /// prefix's cap).
    pub weight: u64,
    /// Software version the node advertises.
    pub version: String,
    /// True for the row describing this node itself.
    pub is_self: bool,
}

/// One of this node's circuits as the control API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CircuitView {
    /// Local circuit id.
    pub id: u64,
    /// `"building"`, `"open"`, `"dirty"` or `"closed"`.
    pub state: String,
    /// Seconds since the circuit was launched.
    pub age_secs: f64,
    /// Peer ids of the hops in order, first hop first.
    pub hops: Vec<String>,
    /// Streams currently attached.
    pub streams: usize,
    /// An opaque isolation group label; never the username it derives from.
    pub isolation: Option<String>,
    /// How long building the circuit took, in milliseconds.
    #[serde(default)]
    pub build_ms: f64,
}

/// One of this node's entry guards as the control API shows it, in the
/// order they are tried.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GuardView {
    /// The guard's peer id.
    pub peer_id: String,
    /// One of the primary guards (circuits start at the first reachable one).
    pub primary: bool,
    /// A circuit has been built through it.
    pub confirmed: bool,
    /// The directory lists it as a usable relay.
    pub listed: bool,
    /// Not known to be unreachable.
    pub reachable: bool,
    /// Since when it is unreachable (unix seconds).
    pub unreachable_since: Option<u64>,
    /// Circuits attempted through it (path-bias count, halved now and then).
    pub circuits_attempted: u32,
    /// Of those, circuits built.
    pub circuits_built: u32,
    /// Flagged by path-bias accounting: no longer used as a first hop.
    pub flagged: bool,
}

/// Summary of the running node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusView {
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// Software version of this node.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Nodes currently in the directory.
    pub known_nodes: usize,
    /// Circuits currently open.
    pub open_circuits: usize,
    /// SOCKS listener address, if enabled.
    pub socks: Option<String>,
    /// HTTP proxy listener address, if enabled.
    pub http_proxy: Option<String>,
    /// Measurements of other relays this node made (a relay that
    /// measures; 0 otherwise).
    #[serde(default)]
    pub measurements: u64,
    /// Bytes those measurements carried: measurement traffic, counted
    /// apart from the directory's and the users'.
    #[serde(default)]
    pub measurement_bytes: u64,
}

/// A relay that signed two records that cannot both be true, as the
/// control API shows it: the proof itself, which anyone can check with the
/// relay's public key. Either two descriptors with one sequence number
/// (`kind` "descriptor") or two measurement reports of one period, neither
/// of which extends the other (`kind` "report").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EquivocationView {
    /// The relay's libp2p peer id.
    pub peer_id: String,
    /// What it signed twice: "descriptor" or "report".
    #[serde(default = "descriptor_kind")]
    pub kind: String,
    /// The sequence number it signed twice (descriptors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The measurement period both reports are for (reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When this node saw the second record (unix seconds).
    pub detected: u64,
    /// When the evidence, and the relay's exclusion, end (unix seconds).
    pub expires: u64,
    /// SHA-256 digests of the two signed records (hex), lower first.
    pub digests: Vec<String>,
    /// The two signed descriptors in their wire form (hex), same order
    /// (descriptors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<String>,
    /// The two signed reports in their wire form (hex), same order
    /// (reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<String>,
}

/// [`EquivocationView::kind`] of two descriptors.
pub const EQUIVOCATED_DESCRIPTOR: &str = "descriptor";
/// [`EquivocationView::kind`] of two reports.
pub const EQUIVOCATED_REPORT: &str = "report";

fn descriptor_kind() -> String {
    EQUIVOCATED_DESCRIPTOR.into()
}

/// What the control API reads from the running node.
///
/// Methods are called on the async runtime for every request, so they must
/// return a cheap snapshot without blocking (no I/O, only short-held locks).
pub trait ControlSource: Send + Sync + 'static {
    /// Summary of the node.
    fn status(&self) -> StatusView;
    /// The nodes the directory knows, this node included.
    fn nodes(&self) -> Vec<NodeView>;
    /// This node's circuits.
    fn circuits(&self) -> Vec<CircuitView>;
    /// Relays caught equivocating, with the proof.
    fn equivocations(&self) -> Vec<EquivocationView>;
    /// This node's entry guards, in the order they are tried.
    fn guards(&self) -> Vec<GuardView>;
}

/// Body of every error response from the control API.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    pub(crate) error: String,
}
