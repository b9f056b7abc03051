//! Errors of the protocol engine.

use thiserror::Error;
use veilnet_cell::EndReason;

/// What went wrong in the protocol engine.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// Socket I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A cryptographic check failed.
    #[error("crypto: {0}")]
    Crypto(#[from] veilnet_crypto::CryptoError),
    /// A cell was malformed.
    #[error("bad cell: {0}")]
    Cell(#[from] veilnet_cell::CellError),
    /// A relay message was malformed.
    #[error("bad relay message: {0}")]
    Relay(#[from] veilnet_cell::RelayError),
    /// The link closed.
    #[error("link closed")]
    LinkClosed,
    /// The circuit was destroyed.
    #[error("circuit destroyed")]
    CircuitClosed,
    /// The peer answered with another identity than expected.
    #[error("link peer is {got}, expected {expected}")]
    WrongPeer {
        /// Whom we wanted.
        expected: String,
        /// Who answered.
        got: String,
    },
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A resource limit was hit.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The exit refused or failed to open the stream.
    #[error("stream refused by exit: {0:?}")]
    StreamRefused(EndReason),
    /// The circuit protocol failed; the error says who did what.
    #[error("circuit: {0}")]
    Circuit(#[from] veilnet_circuit::CircuitError),
    /// Bad arguments from the caller.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl veilnet_error::HasKind for ProtoError {
    fn kind(&self) -> veilnet_error::ErrorKind {
        use veilnet_error::ErrorKind;
        match self {
            Self::Io(_) | Self::LinkClosed | Self::CircuitClosed | Self::Timeout(_) => {
                ErrorKind::Transient
            }
            Self::Crypto(e) => e.kind(),
            Self::Cell(_) | Self::Relay(_) => ErrorKind::PeerMisbehaved,
            // The relay at that address is not the one its descriptor names:
            // the descriptor may be out of date, so nobody is blamed yet.
            Self::WrongPeer { .. } => ErrorKind::Transient,
            Self::Limit(_) => ErrorKind::LocalResource,
            Self::StreamRefused(EndReason::ExitPolicy) => ErrorKind::Refused,
            Self::StreamRefused(_) => ErrorKind::Transient,
            Self::Circuit(e) => e.kind(),
            Self::Invalid(_) => ErrorKind::BadConfig,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veilnet_error::{ErrorKind, HasKind};

    #[test]
    fn kinds_follow_whose_fault_it_is() {
        let bad_tag = ProtoError::Crypto(veilnet_crypto::CryptoError::BadTag(1));
        assert_eq!(bad_tag.kind(), ErrorKind::PeerMisbehaved);
        assert_eq!(
            ProtoError::StreamRefused(EndReason::ExitPolicy).kind(),
            ErrorKind::Refused
        );
        assert_eq!(
            ProtoError::StreamRefused(EndReason::Timeout).kind(),
            ErrorKind::Transient
        );
        let window = veilnet_circuit::CircuitError::PeerMisbehaved(
            veilnet_circuit::PeerMisbehaved::WindowExceeded("circuit"),
        );
        assert_eq!(
            ProtoError::Circuit(window).kind(),
            ErrorKind::PeerMisbehaved
        );
        assert_eq!(
            ProtoError::Limit("streams").kind(),
            ErrorKind::LocalResource
        );
    }
}
