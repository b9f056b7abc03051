//! Errors of the discovery crate.

use std::time::Duration;

use libp2p::Multiaddr;

/// What a caller should do about a [`DiscoveryError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is wrong: fix it, retrying will not help.
    Config,
    /// A local resource (socket, port) was unavailable: retrying later or
    /// with another address may help.
    Io,
}

/// Error starting the discovery node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A configuration value is invalid.
    #[error("invalid discovery config: {0}")]
    InvalidConfig(&'static str),
    /// A bootstrap address does not end with `/p2p/<peer id>`.
    #[error("bootstrap address {0} does not end with /p2p/<peer id>")]
    BootstrapWithoutPeerId(Multiaddr),
    /// Building the libp2p transport failed.
    #[error("building the libp2p transport failed: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The listeners did not report an address in time.
    #[error("listeners did not come up within {0:?}")]
    ListenTimeout(Duration),
}

impl DiscoveryError {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidConfig(_) | Self::BootstrapWithoutPeerId(_) => ErrorKind::Config,
            Self::Transport(_) | Self::Listen { .. } | Self::ListenTimeout(_) => ErrorKind::Io,
        }
    }
}
