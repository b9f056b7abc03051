//! What callers should do about a [`CryptoError`].

use veilnet_error::{ErrorKind, HasKind};

use crate::CryptoError;

impl HasKind for CryptoError {
    fn kind(&self) -> ErrorKind {
        match self {
            // What a peer sent failed to verify or broke the key schedule.
            Self::BadTag(_)
            | Self::KeyUpdateOverdue(_)
            | Self::KeyUpdateTooSoon(_)
            | Self::Handshake(_)
            | Self::BadLength(_)
            | Self::BadIdentity(_) => ErrorKind::PeerMisbehaved,
            // A key of ours reached its use limit: build anew.
            Self::CounterExhausted => ErrorKind::LocalResource,
            Self::OutOfOrder(_) => ErrorKind::Bug,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_input_blames_the_peer_and_our_limits_do_not() {
        assert_eq!(CryptoError::BadTag(2).kind(), ErrorKind::PeerMisbehaved);
        assert_eq!(
            CryptoError::KeyUpdateTooSoon(3).kind(),
            ErrorKind::PeerMisbehaved
        );
        assert_eq!(
            CryptoError::CounterExhausted.kind(),
            ErrorKind::LocalResource
        );
        assert_eq!(CryptoError::OutOfOrder("x").kind(), ErrorKind::Bug);
    }
}
