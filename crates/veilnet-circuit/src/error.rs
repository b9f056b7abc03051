//! Errors that say who did what, and what to do about it.

use thiserror::Error;
use veilnet_crypto::CryptoError;

pub use veilnet_error::{ErrorKind, HasKind};

/// One specific way a peer broke the circuit protocol (in the manner of
/// rustls' `PeerMisbehaved`): each variant names the misbehaviour, so the
/// reputation system can tell a tagging attempt from a buggy peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A relay cell failed its hop's authentication: modified, replayed,
    /// reordered, or sent after the layer died.
    #[error("relay cell failed authentication: {0}")]
    BadLayer(CryptoError),
    /// More RELAY_EARLY cells than the extend budget allows.
    #[error("more than {0} RELAY_EARLY cells on one circuit")]
    TooManyEarlyCells(u8),
    /// A RELAY_EARLY cell travelling toward the client.
    #[error("RELAY_EARLY toward the client")]
    EarlyCellBackward,
    /// An EXTEND in a plain RELAY cell.
    #[error("EXTEND outside a RELAY_EARLY cell")]
    ExtendNotEarly,
    /// An EXTEND on a stream instead of the circuit (stream 0).
    #[error("EXTEND on a stream")]
    ExtendOnStream,
    /// An EXTEND naming a peer id that does not parse.
    #[error("EXTEND with a bad peer id")]
    ExtendBadPeer,
    /// An EXTEND while an extension is already under way or done.
    #[error("EXTEND in the wrong state")]
    ExtendWrongState,
    /// An EXTEND after streams were opened at this hop.
    #[error("EXTEND after BEGIN")]
    ExtendAfterBegin,
    /// A relay cell while this hop was extending the circuit.
    #[error("relay cell while extending")]
    RelayWhileExtending,
    /// A relay cell on a circuit whose CREATE was not answered yet.
    #[error("relay cell before CREATED")]
    RelayBeforeCreated,
    /// A message that only travels toward the client arrived going forward.
    #[error("backward-only relay message sent forward")]
    BackwardOnlyMessage,
    /// A message that makes no sense at this point of the protocol.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    /// A cell or relay message that does not parse.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The peer sent more than the flow-control window allows.
    #[error("{0} window exceeded")]
    WindowExceeded(&'static str),
    /// The peer returned more credit than was outstanding.
    #[error("{0} SENDME beyond the window")]
    SendmeBeyondWindow(&'static str),
    /// The relay's handshake reply did not verify.
    #[error("bad handshake reply: {0}")]
    BadHandshake(CryptoError),
}

/// What went wrong with a circuit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CircuitError {
    /// The peer broke the protocol.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(#[from] PeerMisbehaved),
    /// A hop destroyed the circuit, with this reason.
    #[error("circuit destroyed: {0:?}")]
    Destroyed(veilnet_cell::DestroyReason),
    /// The caller asked for something impossible (an empty or too long path).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// Our own crypto failed (a key or counter limit).
    #[error("crypto: {0}")]
    Crypto(CryptoError),
    /// A local limit was reached.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// Our admission policy declined the request.
    #[error("refused: {0}")]
    Refused(crate::policy::Refusal),
    /// The circuit is closed.
    #[error("circuit closed")]
    Closed,
    /// An operation in a state where it cannot happen: a bug.
    #[error("bug: {0}")]
    Bug(&'static str),
}

impl HasKind for PeerMisbehaved {
    fn kind(&self) -> ErrorKind {
        ErrorKind::PeerMisbehaved
    }
}

impl HasKind for CircuitError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::PeerMisbehaved(_) => ErrorKind::PeerMisbehaved,
            Self::Destroyed(_) | Self::Closed => ErrorKind::Transient,
            Self::Invalid(_) => ErrorKind::BadConfig,
            Self::Crypto(_) | Self::Limit(_) => ErrorKind::LocalResource,
            Self::Refused(_) => ErrorKind::Refused,
            Self::Bug(_) => ErrorKind::Bug,
        }
    }
}

impl From<veilnet_cell::CellError> for PeerMisbehaved {
    fn from(e: veilnet_cell::CellError) -> Self {
        Self::Malformed(e.to_string())
    }
}

impl From<veilnet_cell::RelayError> for PeerMisbehaved {
    fn from(e: veilnet_cell::RelayError) -> Self {
        Self::Malformed(e.to_string())
    }
}
