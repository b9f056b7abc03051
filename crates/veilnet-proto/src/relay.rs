//! What a relay does with cells: CREATE, RELAY forwarding in both directions,
//! EXTEND at the last hop, and DESTROY.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use libp2p_identity::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use veilnet_cell::{
    decode_relay, encode_relay, Cell, CellCommand, CellError, CircId, DestroyReason, RelayError,
    RelayMsg, StreamId,
};
use veilnet_circuit::relay::{Forward, Local, NextHop, RelayHop};
use veilnet_crypto::onion::relay_layers;

use crate::core::Core;
use crate::link::{BackSender, CircEntry, CircuitTx, ClientRx, ForwardHop, Link, LinkHandler};
use crate::stream::{Endpoint, ExitSide};
use crate::ProtoError;
use veilnet_circuit::error::{ErrorKind, HasKind, PeerMisbehaved};
use veilnet_circuit::policy::CreateRequest;

/// The engine takes the cells its links read.
impl LinkHandler for Core {
    fn handle_cell(
        self: &Arc<Self>,
        link: &Arc<Link>,
        cell: Cell,
        now: Instant,
    ) -> impl std::future::Future<Output = ()> + Send {
        Core::handle_cell(self, link, cell, now)
    }

    fn link_closed(self: &Arc<Self>, link: &Arc<Link>) {
        Core::link_closed(self, link);
    }
}

enum Act {
    Forward(Arc<Link>, Cell),
    Backward(Arc<BackSender>, Cell),
    Client(mpsc::Sender<Cell>, Cell),
    ClientLocal(Arc<ClientRx>, Cell),
    /// We are the last hop; the flag says whether the cell came as RELAY_EARLY.
    Local(Arc<BackSender>, Cell, bool),
    /// The peer broke the protocol: destroy the circuit.
    Kill(DestroyReason, PeerMisbehaved),
    Ignore(&'static str),
}

impl Core {
    /// Routes one cell that arrived on `link`.
    /// `now` is the time the cell's backward layer (if any) goes by for its
    /// key age: read once per link record by the caller.
    pub(crate) async fn handle_cell(self: &Arc<Self>, link: &Arc<Link>, cell: Cell, now: Instant) {
        let cmd = match cell.validate().and_then(|_| cell.command()) {
            Ok(c) => c,
            Err(CellError::UnknownCommand(c)) => {
                // Open command space: a newer peer's command is not an error.
                self.count(&self.stats.unknown_cell_commands);
                debug!(link = link.id, "ignoring a cell with unknown command {c}");
                return;
            }
            Err(e) => {
                self.count(&self.stats.cells_refused);
                debug!(link = link.id, "dropping cell: {e}");
                return;
            }
        };
        let Some(circ) = cell.circ_id() else {
            return; // padding
        };
        match cmd {
            CellCommand::Padding => {}
            CellCommand::Create => self.on_create(link, circ, &cell).await,
            CellCommand::Created => self.on_created(link, circ, cell).await,
            CellCommand::Relay => self.on_relay(link, circ, cell, false, now).await,
            CellCommand::RelayEarly => self.on_relay(link, circ, cell, true, now).await,
            CellCommand::Destroy => {
                // A DESTROY we pass on says nothing of why (as in Tor): the
                // reason is for the neighbour it was sent to, so hops that
                // are not adjacent cannot use it as a channel past an honest
                // one. Our own circuits (we are the client) keep it.
                let ours = matches!(
                    link.table().get(&circ),
                    Some(CircEntry::Client(_) | CircEntry::ClientOpen(_))
                );
                let reason = if ours {
                    cell.destroy_reason()
                } else {
                    DestroyReason::None
                };
                self.teardown(link, circ, reason, false)
            }
        }
    }

    async fn on_create(self: &Arc<Self>, link: &Arc<Link>, circ: CircId, cell: &Cell) {
        if link.we_initiated() {
            // Only a link's initiator creates circuits on it. On a link we
            // opened (a client link under a throwaway identity, or a relay
            // link of ours) every CREATE gets this same answer, whatever it
            // holds and whatever our role, before any key is touched: the
            // guard of our client circuits must not learn whether we are a
            // relay or which onion key we hold. DESTROY rather than silence:
            // the peer already knows it talks to veilnet, so silence would
            // hide nothing, and an honest but confused peer learns at once
            // instead of after a timeout.
            self.count(&self.stats.cells_refused);
            debug!(link = link.id, "refusing CREATE on a link we opened");
            link.send_detached(Cell::destroy(circ, DestroyReason::Protocol));
            return;
        }
        if !circ.from_initiator() {
            // The link's initiator (our peer) picks ids with the top bit set.
            self.count(&self.stats.cells_refused);
            debug!(link = link.id, "refusing CREATE without the initiator bit");
            link.send_detached(Cell::destroy(circ, DestroyReason::Protocol));
            return;
        }
        if !self.cfg.relay {
            link.send_detached(Cell::destroy(circ, DestroyReason::ResourceLimit));
            return;
        }
        {
            let table = link.table();
            if table.contains_key(&circ) {
                // Our peer chose an id it already uses: its own circuit
                // under that id is broken now, so it goes (both sides).
                drop(table);
                self.count(&self.stats.cells_refused);
                debug!(link = link.id, "CREATE on a circuit id in use");
                self.teardown(link, circ, DestroyReason::Protocol, true);
                return;
            }
            if table.len() >= self.limits().max_circuits_per_link {
                drop(table);
                link.send_detached(Cell::destroy(circ, DestroyReason::ResourceLimit));
                return;
            }
        }
        if let Err(refusal) = self.cfg.policy.admit_create(&CreateRequest {
            prev_peer: link.peer,
        }) {
            self.count(&self.stats.cells_refused);
            debug!(link = link.id, "refusing CREATE: {refusal}");
            link.send_detached(Cell::destroy(circ, DestroyReason::ResourceLimit));
            return;
        }
        let keys = cell
            .handshake_msg()
            .map_err(ProtoError::from)
            .and_then(|msg| self.onion_handshake(msg).map_err(ProtoError::from));
        let (reply, keys) = match keys {
            Ok(x) => x,
            Err(e) => {
                self.count(&self.stats.cells_refused);
                debug!(link = link.id, "refusing CREATE: {e}");
                link.send_detached(Cell::destroy(circ, DestroyReason::Protocol));
                return;
            }
        };
        let (fwd, bwd) = relay_layers(&keys, self.limits().layer_rekey);
        let back = Arc::new(BackSender {
            layer: std::sync::Mutex::new(bwd),
            link: link.clone(),
            circ,
        });
        {
            let mut table = link.table();
            // Checked before the handshake; the link reader is the only
            // one to insert here, so the id is still free.
            if table.len() >= self.limits().max_circuits_per_link || table.contains_key(&circ) {
                drop(table);
                link.send_detached(Cell::destroy(circ, DestroyReason::ResourceLimit));
                return;
            }
            table.insert(
                circ,
                CircEntry::Forward(Box::new(ForwardHop {
                    hop: RelayHop::new(fwd, link.peer),
                    back,
                })),
            );
        }
        self.count(&self.stats.circuits_accepted);
        match Cell::handshake(circ, CellCommand::Created, &reply) {
            Ok(c) => {
                let _ = link.send(c).await;
            }
            Err(e) => debug!("cannot encode CREATED: {e}"),
        }
    }

    async fn on_created(self: &Arc<Self>, link: &Arc<Link>, circ: CircId, cell: Cell) {
        let client = {
            let mut table = link.table();
            match table.get_mut(&circ) {
                Some(CircEntry::Pending(tx)) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(cell);
                    }
                    return;
                }
                Some(CircEntry::Client(tx)) => tx.clone(),
                _ => {
                    debug!(link = link.id, "unexpected CREATED for {circ}");
                    return;
                }
            }
        };
        let _ = client.send(cell).await;
    }

    /// A RELAY cell, or with `early` a RELAY_EARLY cell: the same but for
    /// the extend budget, counted here and forwarded as it came.
    async fn on_relay(
        self: &Arc<Self>,
        link: &Arc<Link>,
        circ: CircId,
        mut cell: Cell,
        early: bool,
        now: Instant,
    ) {
        let act = {
            let mut table = link.table();
            match table.get_mut(&circ) {
                None => Act::Ignore("RELAY on unknown circuit"),
                // Early cells only travel away from the client (Tor's rule).
                Some(
                    CircEntry::Backward { .. } | CircEntry::Client(_) | CircEntry::ClientOpen(_),
                ) if early => Act::Kill(DestroyReason::Protocol, PeerMisbehaved::EarlyCellBackward),
                Some(CircEntry::Forward(fwd)) => match fwd.hop.handle_relay(&mut cell, early) {
                    Err(e) => Act::Kill(DestroyReason::Protocol, e),
                    // Forwarded with its command: still RELAY_EARLY if it came so.
                    Ok(Forward::Pass(next, next_circ)) => {
                        cell.set_circ_id(next_circ);
                        Act::Forward(next.clone(), cell)
                    }
                    Ok(Forward::Deliver) => Act::Local(fwd.back.clone(), cell, early),
                },
                Some(CircEntry::Backward { back, .. }) => Act::Backward(back.clone(), cell),
                Some(CircEntry::Client(tx)) => Act::Client(tx.clone(), cell),
                Some(CircEntry::ClientOpen(rx)) => match rx.decrypt(&mut cell) {
                    Ok(()) => Act::ClientLocal(rx.clone(), cell),
                    Err(e) => Act::Kill(DestroyReason::Protocol, e),
                },
                Some(CircEntry::Pending(_)) => {
                    Act::Kill(DestroyReason::Protocol, PeerMisbehaved::RelayBeforeCreated)
                }
            }
        };
        match act {
            Act::Forward(next, cell) => {
                self.count(&self.stats.relay_cells);
                if next.send(cell).await.is_err() {
                    self.teardown(link, circ, DestroyReason::LinkFailed, true);
                }
            }
            Act::Backward(back, cell) => {
                self.count(&self.stats.relay_cells);
                if back.forward(cell, now).await.is_err() {
                    self.teardown(link, circ, DestroyReason::LinkFailed, true);
                }
            }
            Act::Client(tx, cell) => {
                let _ = tx.send(cell).await;
            }
            Act::ClientLocal(rx, cell) => match rx.endpoint.handle(cell).await {
                Ok(()) => {}
                Err(ProtoError::Relay(RelayError::UnknownCommand(c))) => {
                    self.unknown_relay_command(link, c)
                }
                Err(e) => {
                    self.count(&self.stats.cells_refused);
                    debug!("destroying our circuit: {e}");
                    self.teardown(link, circ, DestroyReason::Protocol, true);
                }
            },
            Act::Local(back, cell, early) => {
                self.count(&self.stats.relay_cells);
                if let Err(e) = self.on_local(link, circ, back, cell, early).await {
                    // Our policy declining an EXTEND is nobody's fault; the
                    // rest is the peer breaking the protocol.
                    let reason = match &e {
                        ProtoError::Circuit(c) if c.kind() == ErrorKind::Refused => {
                            DestroyReason::ExtendFailed
                        }
                        _ => {
                            self.count(&self.stats.cells_refused);
                            DestroyReason::Protocol
                        }
                    };
                    debug!("destroying a circuit: {e}");
                    self.teardown(link, circ, reason, true);
                }
            }
            Act::Kill(reason, why) => {
                self.count(&self.stats.cells_refused);
                debug!(link = link.id, "destroying a circuit: {why}");
                self.teardown(link, circ, reason, true);
            }
            Act::Ignore(why) => debug!(link = link.id, "{why}"),
        }
    }

    /// A relay cell whose last layer we removed: we are the last hop.
    async fn on_local(
        self: &Arc<Self>,
        link: &Arc<Link>,
        circ: CircId,
        back: Arc<BackSender>,
        cell: Cell,
        early: bool,
    ) -> Result<(), ProtoError> {
        let (sid, msg) = match decode_relay(cell.relay_payload()) {
            Ok(m) => m,
            Err(RelayError::UnknownCommand(c)) => {
                self.unknown_relay_command(link, c);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let local = {
            let mut table = link.table();
            let Some(CircEntry::Forward(fwd)) = table.get_mut(&circ) else {
                return Ok(()); // torn down meanwhile
            };
            match fwd.hop.on_message(sid, &msg, early, &*self.cfg.policy)? {
                Local::Extend {
                    peer,
                    addr,
                    link_key,
                    handshake,
                } => {
                    let core = self.clone();
                    let link = link.clone();
                    let handshake = handshake.to_vec();
                    tokio::spawn(async move {
                        core.extend(link, circ, back, (peer, addr, link_key), handshake)
                            .await;
                    });
                    return Ok(());
                }
                Local::Nothing => return Ok(()),
                Local::Stream => fwd
                    .hop
                    .endpoint_or_insert_with(|| {
                        let exit = ExitSide {
                            policy: self.cfg.policy.clone(),
                            stats: self.stats.clone(),
                            connects: self.exit_connects.clone(),
                            sinks: self.sinks.clone(),
                        };
                        Endpoint::new(
                            CircuitTx::Relay(back.clone()),
                            Some(exit),
                            self.limits().clone(),
                        )
                    })
                    .clone(),
            }
        };
        local.handle(cell).await
    }

    /// A relay message with a command this version does not know: counted
    /// and ignored, so newer peers can add messages (see `RelayCommand`).
    fn unknown_relay_command(&self, link: &Link, command: u8) {
        self.count(&self.stats.unknown_relay_commands);
        debug!(
            link = link.id,
            "ignoring a relay message with unknown command {command}"
        );
    }

    async fn extend(
        self: Arc<Self>,
        prev: Arc<Link>,
        prev_circ: CircId,
        back: Arc<BackSender>,
        (peer, addr, link_key): (PeerId, SocketAddr, [u8; 32]),
        handshake: Vec<u8>,
    ) {
        let result: Result<Vec<u8>, ProtoError> = async {
            let next = self.link_to(peer, addr, &link_key).await?;
            let (tx, rx) = oneshot::channel();
            let next_circ = next.alloc_circuit(
                CircEntry::Pending(Some(tx)),
                self.limits().max_circuits_per_link,
            )?;
            let created = async {
                next.send(Cell::handshake(next_circ, CellCommand::Create, &handshake)?)
                    .await?;
                let cell = tokio::time::timeout(self.limits().connect_timeout, rx)
                    .await
                    .map_err(|_| ProtoError::Timeout("CREATED"))?
                    .map_err(|_| ProtoError::CircuitClosed)?;
                if cell.command()? != CellCommand::Created {
                    return Err(ProtoError::CircuitClosed);
                }
                Ok(cell.handshake_msg()?.to_vec())
            }
            .await;
            let reply = match created {
                Ok(r) => r,
                Err(e) => {
                    next.table().remove(&next_circ);
                    next.send_detached(Cell::destroy(next_circ, DestroyReason::ExtendFailed));
                    return Err(e);
                }
            };
            {
                // Only if the next hop did not destroy the new circuit
                // right after answering CREATED (its entry is then gone).
                let mut table = next.table();
                match table.get(&next_circ) {
                    Some(CircEntry::Pending(_)) => {
                        table.insert(
                            next_circ,
                            CircEntry::Backward {
                                back: back.clone(),
                                prev_circ,
                            },
                        );
                    }
                    _ => return Err(ProtoError::CircuitClosed),
                }
            }
            let mut table = prev.table();
            match table.get_mut(&prev_circ) {
                // Only the very circuit that asked (not a newer one reusing
                // its id) and only if the next link did not die meanwhile.
                Some(CircEntry::Forward(fwd))
                    if Arc::ptr_eq(&fwd.back, &back)
                        && !next.is_closed()
                        && fwd.hop.is_extending() =>
                {
                    fwd.hop.extended(next.clone(), next_circ);
                    Ok(reply)
                }
                _ => {
                    drop(table);
                    next.table().remove(&next_circ);
                    next.send_detached(Cell::destroy(next_circ, DestroyReason::Requested));
                    Err(ProtoError::CircuitClosed)
                }
            }
        }
        .await;
        let sent = match result {
            Ok(reply) => {
                let mut cell = Cell::new(back.circ, CellCommand::Relay);
                match encode_relay(
                    cell.relay_payload_mut(),
                    StreamId(0),
                    &RelayMsg::Extended { handshake: &reply },
                ) {
                    Ok(()) => back.originate(cell, Instant::now()).await,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            debug!("extend failed: {e}");
            // Only the circuit that asked, not a newer one under its id.
            let ours = matches!(prev.table().get(&prev_circ),
                Some(CircEntry::Forward(fwd)) if Arc::ptr_eq(&fwd.back, &back));
            if ours {
                self.teardown(&prev, prev_circ, DestroyReason::ExtendFailed, true);
            }
        }
    }

    /// Removes the circuit `circ` of `link` and propagates DESTROY to the
    /// other side of this node; with `notify_sender` also back on `link`.
    pub(crate) fn teardown(
        self: &Arc<Self>,
        link: &Arc<Link>,
        circ: CircId,
        reason: DestroyReason,
        notify_sender: bool,
    ) {
        let entry = link.table().remove(&circ);
        if notify_sender && entry.is_some() {
            link.send_detached(Cell::destroy(circ, reason));
        }
        match entry {
            Some(CircEntry::Forward(fwd)) => {
                let (next, endpoint) = fwd.hop.into_parts();
                if let NextHop::Link(next, next_circ) = next {
                    next.table().remove(&next_circ);
                    next.send_detached(Cell::destroy(next_circ, reason));
                }
                if let Some(ep) = endpoint {
                    ep.close();
                }
            }
            Some(CircEntry::Backward { back, prev_circ }) => {
                let prev = back.link.clone();
                let mut table = prev.table();
                // Only remove the circuit this backward entry belongs to.
                let ours = matches!(table.get(&prev_circ),
                    Some(CircEntry::Forward(fwd)) if Arc::ptr_eq(&fwd.back, &back));
                let removed = if ours { table.remove(&prev_circ) } else { None };
                drop(table);
                if let Some(CircEntry::Forward(fwd)) = removed {
                    if let Some(ep) = fwd.hop.into_parts().1 {
                        ep.close();
                    }
                    prev.send_detached(Cell::destroy(prev_circ, reason));
                }
            }
            Some(CircEntry::ClientOpen(rx)) => rx.endpoint.close(),
            Some(CircEntry::Client(tx)) => {
                // Tell the circuit's reader why, then let it go.
                let _ = tx.try_send(Cell::destroy(circ, reason));
            }
            Some(CircEntry::Pending(_)) | None => {}
        }
    }
}
