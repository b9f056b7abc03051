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
