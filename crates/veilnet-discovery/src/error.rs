//! Errors of the discovery crate.

use std::time::Duration;

use libp2p::Multiaddr;
use veilnet_error::{ErrorKind, HasKind};

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

/// A configuration that cannot work ([`InvalidConfig`],
/// [`BootstrapWithoutPeerId`]) is [`ErrorKind::BadConfig`]: fix it, a retry
/// will not help. A transport, listener or socket that failed or did not come
/// up in time ([`Transport`], [`Listen`], [`ListenTimeout`]) is
/// [`ErrorKind::LocalResource`]: retrying later or with another address may
/// help. (`Listen` keeps only libp2p's message, so an address no transport
/// supports also counts as a local resource.)
///
/// [`InvalidConfig`]: DiscoveryError::InvalidConfig
/// [`BootstrapWithoutPeerId`]: DiscoveryError::BootstrapWithoutPeerId
/// [`Transport`]: DiscoveryError::Transport
/// [`Listen`]: DiscoveryError::Listen
/// [`ListenTimeout`]: DiscoveryError::ListenTimeout
impl HasKind for DiscoveryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidConfig(_) | Self::BootstrapWithoutPeerId(_) => ErrorKind::BadConfig,
            Self::Transport(_) | Self::Listen { .. } | Self::ListenTimeout(_) => {
                ErrorKind::LocalResource
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample of every variant, each with the kind it must have.
    fn samples() -> Vec<(DiscoveryError, ErrorKind)> {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        vec![
            (
                DiscoveryError::InvalidConfig("exchange_interval must be non-zero"),
                ErrorKind::BadConfig,
            ),
            (
                DiscoveryError::BootstrapWithoutPeerId(addr.clone()),
                ErrorKind::BadConfig,
            ),
            (
                DiscoveryError::Transport("noise".into()),
                ErrorKind::LocalResource,
            ),
            (
                DiscoveryError::Listen {
                    addr,
                    reason: "address in use".into(),
                },
                ErrorKind::LocalResource,
            ),
            (
                DiscoveryError::ListenTimeout(Duration::from_secs(10)),
                ErrorKind::LocalResource,
            ),
        ]
    }

    /// Which variant `e` is. No `_` arm: a new variant does not compile
    /// until it gets a sample and a kind here.
    fn variant(e: &DiscoveryError) -> usize {
        match e {
            DiscoveryError::InvalidConfig(_) => 0,
            DiscoveryError::BootstrapWithoutPeerId(_) => 1,
            DiscoveryError::Transport(_) => 2,
            DiscoveryError::Listen { .. } => 3,
            DiscoveryError::ListenTimeout(_) => 4,
        }
    }

    #[test]
    fn kinds() {
        let samples = samples();
        for (e, want) in &samples {
            assert_eq!(e.kind(), *want, "{e}");
        }
        let seen: Vec<usize> = samples.iter().map(|(e, _)| variant(e)).collect();
        assert_eq!(seen, (0..=4).collect::<Vec<_>>(), "a variant has no sample");
    }
}
