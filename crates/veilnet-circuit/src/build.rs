//! The client's side of building a circuit, one hop at a time (telescoping):
//! CREATE to the first hop, then an EXTEND through the circuit for each
//! next hop, always in a RELAY_EARLY cell, each answered by the hop's
//! handshake reply. Cells in, cells out; the caller moves them.

use std::net::SocketAddr;
use std::time::Instant;

use libp2p_identity::PeerId;
use veilnet_cell::{
    decode_relay, encode_relay, Cell, CellCommand, CircId, RelayError, RelayMsg, StreamId, MAX_HOPS,
};
use veilnet_crypto::circuit::ClientHandshake;
use veilnet_crypto::onion::ClientLayers;
use veilnet_crypto::RekeyPolicy;

use crate::error::{CircuitError, PeerMisbehaved};

/// One hop of a path, as the client needs to know it.
#[derive(Debug, Clone)]
pub struct HopSpec {
    /// The relay's identity.
    pub peer: PeerId,
    /// Where its link listener is.
    pub addr: SocketAddr,
    /// Its current onion key.
    pub onion_key: [u8; 32],
    /// Its link key.
    pub link_key: [u8; 32],
}

/// What to do after [`CircuitBuilder::handle`].
#[derive(Debug)]
pub enum Step {
    /// Send this cell to the first hop (an EXTEND for the next hop).
    Send(Cell),
    /// A relay message with this unknown command arrived: ignored (open
    /// command space); keep waiting.
    IgnoredUnknown(u8),
    /// Every hop is built: [`CircuitBuilder::finish`].
    Done,
}

/// A circuit being built.
pub struct CircuitBuilder {
    circ: CircId,
    path: Vec<HopSpec>,
    layers: ClientLayers,
    /// The handshake whose reply we wait for (CREATED, or EXTENDED).
    pending: Option<ClientHandshake>,
}

impl std::fmt::Debug for CircuitBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBuilder")
            .field("circ", &self.circ)
            .field("hops", &self.path.len())
            .field("built", &self.layers.hops())
            .finish()
    }
}

impl CircuitBuilder {
    /// Starts building `path` (first hop first) as circuit `circ` on the
    /// link to the first hop. `junk_key` must be fresh and random (it fills
    /// unused onion header slots); `rekey` says when the client retires each
    /// hop's forward keys. Returns the CREATE cell to send.
    pub fn start(
        circ: CircId,
        path: Vec<HopSpec>,
        junk_key: &[u8; 32],
        rekey: RekeyPolicy,
    ) -> Result<(Self, Cell), CircuitError> {
        let first = path.first().ok_or(CircuitError::Invalid("empty path"))?;
        if path.len() > MAX_HOPS {
            return Err(CircuitError::Invalid("more than MAX_HOPS hops"));
        }
        let (hs, msg) = ClientHandshake::start(&first.onion_key).map_err(CircuitError::Crypto)?;
        let create = Cell::handshake(circ, CellCommand::Create, &msg)
            .map_err(|_| CircuitError::Bug("CREATE handshake too long"))?;
        Ok((
            Self {
                circ,
                path,
                layers: ClientLayers::new(junk_key, rekey),
                pending: Some(hs),
            },
            create,
        ))
    }

    /// Hops built so far.
    pub fn hops_built(&self) -> usize {
        self.layers.hops()
    }

    /// True once every hop of the path is built.
    pub fn is_done(&self) -> bool {
        self.layers.hops() == self.path.len()
    }

    /// Handles a cell that arrived for this circuit: CREATED from the first
    /// hop, then EXTENDED (in a RELAY cell) for each next hop. A DESTROY or
    /// anything unexpected ends the build with an error; the caller then
    /// destroys the circuit.
    pub fn handle(&mut self, cell: &mut Cell, now: Instant) -> Result<Step, CircuitError> {
        let hs = self.pending.take().ok_or(PeerMisbehaved::Unexpected(
            "cell after the circuit was built",
        ))?;
        let cmd = cell.command().map_err(PeerMisbehaved::from)?;
        let reply = match (cmd, self.layers.hops()) {
            (CellCommand::Destroy, _) => {
                return Err(CircuitError::Destroyed(cell.destroy_reason()))
            }
            (CellCommand::Created, 0) => cell.handshake_msg().map_err(PeerMisbehaved::from)?,
            (CellCommand::Relay, n) if n > 0 => {
                self.layers
                    .decrypt_backward(cell.body_mut(), CellCommand::Relay)
                    .map_err(PeerMisbehaved::BadLayer)?;
                match decode_relay(cell.relay_payload()) {
                    Ok((_, RelayMsg::Extended { handshake })) => handshake,
                    Err(RelayError::UnknownCommand(c)) => {
                        self.pending = Some(hs);
                        return Ok(Step::IgnoredUnknown(c));
                    }
                    Err(e) => return Err(PeerMisbehaved::from(e).into()),
                    Ok(_) => {
                        return Err(PeerMisbehaved::Unexpected("message instead of EXTENDED").into())
                    }
                }
            }
            (CellCommand::RelayEarly, _) => return Err(PeerMisbehaved::EarlyCellBackward.into()),
            _ => return Err(PeerMisbehaved::Unexpected("cell while building").into()),
        };
        let keys = hs.finish(reply).map_err(PeerMisbehaved::BadHandshake)?;
        self.layers.push_hop(&keys).map_err(CircuitError::Crypto)?;
        let Some(next) = self.path.get(self.layers.hops()) else {
            return Ok(Step::Done);
        };
        let (hs, msg) = ClientHandshake::start(&next.onion_key).map_err(CircuitError::Crypto)?;
        let mut cell = Cell::new(self.circ, CellCommand::RelayEarly);
        let peer = next.peer.to_bytes();
        encode_relay(
            cell.relay_payload_mut(),
            StreamId(0),
            &RelayMsg::Extend {
                peer_id: &peer,
                addr: next.addr,
                link_key: next.link_key,
                handshake: &msg,
            },
        )
        .map_err(|_| CircuitError::Bug("EXTEND does not fit a cell"))?;
        self.layers
            .encrypt_forward(cell.body_mut(), CellCommand::RelayEarly, now)
            .map_err(CircuitError::Crypto)?;
        self.pending = Some(hs);
        Ok(Step::Send(cell))
    }

    /// The built circuit's onion layers.
    pub fn finish(self) -> Result<ClientLayers, CircuitError> {
        if !self.is_done() {
            return Err(CircuitError::Bug("circuit not built yet"));
        }
        Ok(self.layers)
    }
}
