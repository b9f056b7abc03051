#![doc = include_str!("../README.md")]

/// What the caller should do about an error, and whom it blames.
///
/// Pick the kind by who has to act: the caller retrying ([`Transient`]), the
/// reputation system ([`PeerMisbehaved`]), the machine or its operator
/// ([`LocalResource`], [`BadConfig`]), the client choosing another node
/// ([`Refused`]) or a developer ([`Bug`]). Only [`PeerMisbehaved`] counts
/// against a peer.
///
/// [`Transient`]: ErrorKind::Transient
/// [`PeerMisbehaved`]: ErrorKind::PeerMisbehaved
/// [`LocalResource`]: ErrorKind::LocalResource
/// [`BadConfig`]: ErrorKind::BadConfig
/// [`Refused`]: ErrorKind::Refused
/// [`Bug`]: ErrorKind::Bug
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Something failed that may work on a retry or goes away by itself, and
    /// that happens in normal operation: a timeout, a closed link, a circuit
    /// destroyed along the way, a descriptor that has gone out of date (or was
    /// superseded) or is dated ahead of our clock. Nobody is to blame: retry,
    /// or wait for fresher data, and do not count it against the peer.
    Transient,
    /// A remote peer broke the protocol or sent something no honest peer
    /// sends (malformed, forged, over a limit): drop what it sent, and count
    /// it against that peer.
    PeerMisbehaved,
    /// Something of ours failed or ran out: a limit was reached (a full
    /// table, a key or counter limit), a socket or port was unavailable, the
    /// disk or the system's randomness failed, or a state file of ours is
    /// corrupt. No peer is to blame; the node waits for the resource or its
    /// operator repairs it.
    LocalResource,
    /// The configuration, the node's setup (a missing file, a file with
    /// unsafe permissions, a data directory already initialized) or the
    /// caller's request is invalid: fix it; retrying as it is will not help.
    BadConfig,
    /// A request our policy declines (an exit policy, a rule of the
    /// relay's): nobody's fault, and not worth a retry at the same node.
    Refused,
    /// A bug in veilnet: a state that should be impossible, or an operation
    /// that cannot fail failing.
    Bug,
}

/// Anything with an [`ErrorKind`]: implemented by every error type that a
/// caller may have to make a decision on.
pub trait HasKind {
    /// What to do about this error.
    fn kind(&self) -> ErrorKind;
}
