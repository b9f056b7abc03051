//! A relay's state of one circuit it carries, forward half.
//!
//! The relay's backward half is just its onion layer
//! ([`veilnet_crypto::onion::RelayBackward`]): it adds the layer to cells
//! coming from the next hop, or to cells it originates as the last hop. This
//! half removes the layer from cells coming from the client and decides what
//! happens to them: passed to the next hop, or (at the last hop) an EXTEND
//! to carry out or a stream message for the exit side.
//!
//! `N` is the caller's handle to the next hop's link, `E` its handle to the
//! stream endpoint at this hop (when we are the exit side); this module
//! never looks inside either.

use std::net::SocketAddr;

use libp2p_identity::PeerId;
use veilnet_cell::{Cell, CellCommand, CircId, RelayMsg, StreamId, MAX_HOPS};
use veilnet_crypto::onion::RelayForward;

use crate::error::{CircuitError, PeerMisbehaved};
use crate::policy::{ExtendRequest, Refusal, RelayPolicy};

/// RELAY_EARLY cells a circuit may send through a relay: one per EXTEND of
/// the longest circuit, so no circuit grows past [`MAX_HOPS`] hops, whatever
/// its client sends (Tor's proposal 110).
pub const MAX_RELAY_EARLY: u8 = (MAX_HOPS - 1) as u8;

/// Where cells go after this hop.
#[derive(Debug)]
pub enum NextHop<N> {
    /// Nowhere: we are the circuit's last hop.
    None,
    /// We are extending the circuit; no relay cell may arrive meanwhile.
    Extending,
    /// The next hop's link and the circuit's id on it.
    Link(N, CircId),
}

/// What to do with a relay cell whose layer [`RelayHop::handle_relay`] removed.
#[derive(Debug)]
pub enum Forward<'a, N> {
    /// Send it to the next hop, on its link under this circuit id, with the
    /// command it came with (a RELAY_EARLY cell stays one).
    Pass(&'a N, CircId),
    /// We are the last hop: the cell holds a relay message for us; decode it
    /// and ask [`RelayHop::on_message`].
    Deliver,
}

/// What a relay message asks of the last hop.
#[derive(Debug)]
pub enum Local<'m> {
    /// Extend the circuit: link to `peer` at `addr` (its link key is
    /// `link_key`), send it CREATE with `handshake`, and answer EXTENDED
    /// with its reply ([`RelayHop::extended`]), or else destroy the circuit.
    /// The hop is now extending.
    Extend {
        /// The next relay.
        peer: PeerId,
        /// Its link address.
        addr: SocketAddr,
        /// Its link key.
        link_key: [u8; 32],
        /// The client's handshake message for it.
        handshake: &'m [u8],
    },
    /// A stream message for this hop's endpoint (see [`RelayHop::endpoint`]).
    Stream,
    /// Nothing to do (padding).
    Nothing,
}

/// A relay's state of one circuit, forward half.
pub struct RelayHop<N, E> {
    layer: RelayForward,
    /// Who sent us the circuit's CREATE.
    prev_peer: PeerId,
    next: NextHop<N>,
    endpoint: Option<E>,
    /// RELAY_EARLY cells seen (at most [`MAX_RELAY_EARLY`]).
    early: u8,
}

impl<N, E> RelayHop<N, E> {
    /// A circuit `prev_peer` just created through us, with our forward layer.
    pub fn new(layer: RelayForward, prev_peer: PeerId) -> Self {
        Self {
            layer,
            prev_peer,
            next: NextHop::None,
            endpoint: None,
            early: 0,
        }
    }

    /// Who sent us the circuit's CREATE.
    pub fn prev_peer(&self) -> PeerId {
        self.prev_peer
    }

    /// Where cells go after this hop.
    pub fn next(&self) -> &NextHop<N> {
        &self.next
    }

    /// The stream endpoint at this hop, if a stream message created it.
    pub fn endpoint(&self) -> Option<&E> {
        self.endpoint.as_ref()
    }

    /// The stream endpoint at this hop, if a stream message created it.
    pub fn endpoint_mut(&mut self) -> Option<&mut E> {
        self.endpoint.as_mut()
    }

    /// The stream endpoint at this hop, created by `make` on first use.
    pub fn endpoint_or_insert_with(&mut self, make: impl FnOnce() -> E) -> &mut E {
        self.endpoint.get_or_insert_with(make)
    }

    /// Takes the circuit apart on teardown: the next hop and the endpoint.
    pub fn into_parts(self) -> (NextHop<N>, Option<E>) {
        (self.next, self.endpoint)
    }

    /// A RELAY cell (or with `early`, a RELAY_EARLY cell) from the client's
    /// side: counts the extend budget, verifies and removes our layer in
    /// place and says where the cell goes. An error means the circuit must
    /// be destroyed (and our layer refuses every later cell).
    pub fn handle_relay(
        &mut self,
        cell: &mut Cell,
        early: bool,
    ) -> Result<Forward<'_, N>, PeerMisbehaved> {
        if early {
            if self.early >= MAX_RELAY_EARLY {
                return Err(PeerMisbehaved::TooManyEarlyCells(MAX_RELAY_EARLY));
            }
            self.early += 1;
        }
        let command = if early {
            CellCommand::RelayEarly
        } else {
            CellCommand::Relay
        };
        self.layer
            .decrypt(cell.body_mut(), command)
            .map_err(PeerMisbehaved::BadLayer)?;
        match &self.next {
            NextHop::Link(next, circ) => Ok(Forward::Pass(next, *circ)),
            NextHop::None => Ok(Forward::Deliver),
            NextHop::Extending => Err(PeerMisbehaved::RelayWhileExtending),
        }
    }

    /// What the relay message of a cell [`Forward::Deliver`]ed to us asks
    /// for. An EXTEND is checked against the protocol (RELAY_EARLY, stream
    /// 0, no streams yet, not extended yet) and then against `policy`.
    pub fn on_message<'m>(
        &mut self,
        sid: StreamId,
        msg: &RelayMsg<'m>,
        early: bool,
        policy: &dyn RelayPolicy,
    ) -> Result<Local<'m>, CircuitError> {
        match msg {
            RelayMsg::Extend {
                peer_id,
                addr,
                link_key,
                handshake,
            } => {
                if !early {
                    // Every EXTEND spends the extend budget, so relays, not
                    // the client, bound the length of a circuit.
                    return Err(PeerMisbehaved::ExtendNotEarly.into());
                }
                if sid != StreamId(0) {
                    return Err(PeerMisbehaved::ExtendOnStream.into());
                }
                if self.endpoint.is_some() {
                    return Err(PeerMisbehaved::ExtendAfterBegin.into());
                }
                if !matches!(self.next, NextHop::None) {
                    return Err(PeerMisbehaved::ExtendWrongState.into());
                }
                let peer =
                    PeerId::from_bytes(peer_id).map_err(|_| PeerMisbehaved::ExtendBadPeer)?;
                if peer == self.prev_peer {
                    // A loop through us and back (Tor refuses it too).
                    return Err(CircuitError::Refused(Refusal::BackToPrevious));
                }
                policy
                    .admit_extend(&ExtendRequest {
                        prev_peer: self.prev_peer,
                        next_peer: peer,
                        next_addr: *addr,
                    })
                    .map_err(CircuitError::Refused)?;
                self.next = NextHop::Extending;
                Ok(Local::Extend {
                    peer,
                    addr: *addr,
                    link_key: *link_key,
                    handshake,
                })
            }
            RelayMsg::Begin(_) | RelayMsg::Data(_) | RelayMsg::End(_) | RelayMsg::Sendme => {
                Ok(Local::Stream)
            }
            RelayMsg::Drop => Ok(Local::Nothing),
            RelayMsg::Connected | RelayMsg::Extended { .. } => {
                Err(PeerMisbehaved::BackwardOnlyMessage.into())
            }
        }
    }

    /// The extension asked for by [`Local::Extend`] succeeded: cells now go
    /// to `next` under `circ`. False (and nothing changes) if the hop was
    /// not extending, e.g. the circuit was torn down and recreated meanwhile.
    pub fn extended(&mut self, next: N, circ: CircId) -> bool {
        if !matches!(self.next, NextHop::Extending) {
            return false;
        }
        self.next = NextHop::Link(next, circ);
        true
    }

    /// True while an extension is under way.
    pub fn is_extending(&self) -> bool {
        matches!(self.next, NextHop::Extending)
    }
}
