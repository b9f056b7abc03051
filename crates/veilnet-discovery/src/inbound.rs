//! How many inbound connections one network may hold.
//!
//! Any key can dial a relay, so without a bound per source a single host
//! with a few dozen identities takes every one of its connections, and a
//! relay that restarts finds no room for the links it wants. Inbound
//! connections are counted by network ([`NetGroup`]: IPv4 /16, IPv6 /32;
//! loopback and private addresses per peer, so test networks on one
//! machine are not limited) and a network past [`MAX_INBOUND_PER_NETWORK`]
//! is refused, before its handshake when the address already says so.
//! Room for our own dials is kept by the connection limits (inbound at
//! most `MAX_ESTABLISHED - OUTBOUND_RESERVE`, 42 of 50, see `node.rs`).

use std::{
    collections::HashMap,
    convert::Infallible,
    task::{Context, Poll},
};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour,
        THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

use crate::kept::NetGroup;

/// Inbound connections one network may hold at once: a few relays behind
/// one provider's /16 are common, a few dozen are one operator.
pub(crate) const MAX_INBOUND_PER_NETWORK: usize = 4;

/// The count of inbound connections per network (sans-IO; the behaviour
/// below feeds it the swarm's events).
#[derive(Debug, Default)]
pub(crate) struct PerNetwork {
    /// Each open inbound connection's network.
    open: HashMap<ConnectionId, NetGroup>,
    /// Open inbound connections per network.
    count: HashMap<NetGroup, usize>,
}

/// A connection refused because its network holds its share.
#[derive(Debug, thiserror::Error)]
#[error("{0} inbound connections from this network already")]
pub(crate) struct NetworkFull(usize);

impl PerNetwork {
    fn held(&self, group: &NetGroup) -> usize {
        self.count.get(group).copied().unwrap_or(0)
    }

    /// Whether one more connection from `addr` may open.
    pub(crate) fn check(&self, addr: &Multiaddr) -> Result<(), NetworkFull> {
        match NetGroup::network(addr) {
            Some(g) if self.held(&g) >= MAX_INBOUND_PER_NETWORK => Err(NetworkFull(self.held(&g))),
            _ => Ok(()),
        }
    }

    /// Counts an inbound connection from `addr` (one counted per peer is
    /// not counted at all).
    pub(crate) fn opened(&mut self, id: ConnectionId, addr: &Multiaddr) {
        let Some(group) = NetGroup::network(addr) else {
            return;
        };
        if self.open.insert(id, group).is_none() {
            *self.count.entry(group).or_default() += 1;
        }
    }

    pub(crate) fn closed(&mut self, id: ConnectionId) {
        let Some(group) = self.open.remove(&id) else {
            return;
        };
        if let Some(n) = self.count.get_mut(&group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.count.remove(&group);
            }
        }
    }
}

/// The swarm behaviour that enforces [`PerNetwork`] on inbound
/// connections.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    networks: PerNetwork,
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.networks.check(remote).map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.networks.check(remote).map_err(ConnectionDenied::new)?;
        // Counted here, not at the swarm's event: two handshakes that end
        // together must not both pass.
        self.networks.opened(id, remote);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.networks.closed(connection_id);
            }
            // Denied by another behaviour after we counted it.
            FromSwarm::ListenFailure(f) => self.networks.closed(f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_network_holds_a_few_inbound_connections_and_loopback_is_not_limited() {
        let mut n = PerNetwork::default();
        let public = addr("/ip4/203.0.113.7/tcp/1");
        for i in 0..MAX_INBOUND_PER_NETWORK {
            n.check(&public).unwrap();
            n.opened(ConnectionId::new_unchecked(i), &public);
        }
        // The same /16 from another host: refused.
        let neighbour = addr("/ip4/203.0.9.9/tcp/4001");
        assert!(n.check(&neighbour).is_err());
        // Another network is not held back by it.
        n.check(&addr("/ip4/198.51.100.1/tcp/1")).unwrap();
        // One closes (a second close of it changes nothing): room for one.
        n.closed(ConnectionId::new_unchecked(0));
        n.closed(ConnectionId::new_unchecked(0));
        n.check(&neighbour).unwrap();
        n.opened(ConnectionId::new_unchecked(9), &neighbour);
        assert!(n.check(&public).is_err());
        // Loopback and private addresses: never limited.
        for i in 100..200 {
            let a = addr("/ip4/127.0.0.1/tcp/1");
            n.check(&a).unwrap();
            n.opened(ConnectionId::new_unchecked(i), &a);
            n.check(&addr("/ip4/10.1.2.3/tcp/1")).unwrap();
        }
    }

    #[test]
    fn the_behaviour_refuses_a_full_network_before_and_after_its_handshake() {
        let mut b = Behaviour::default();
        let local = addr("/ip4/192.0.2.1/tcp/4001");
        for i in 0..MAX_INBOUND_PER_NETWORK {
            let remote = addr(&format!("/ip4/203.0.113.{i}/tcp/5000"));
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(i), &local, &remote)
                .unwrap();
            b.handle_established_inbound_connection(
                ConnectionId::new_unchecked(i),
                PeerId::random(),
                &local,
                &remote,
            )
            .unwrap();
        }
        let next = addr("/ip4/203.0.200.1/tcp/5000");
        let id = ConnectionId::new_unchecked(99);
        assert!(b
            .handle_pending_inbound_connection(id, &local, &next)
            .is_err());
        assert!(b
            .handle_established_inbound_connection(id, PeerId::random(), &local, &next)
            .is_err());
        // Our own dials are never refused here.
        b.handle_established_outbound_connection(
            id,
            PeerId::random(),
            &next,
            Endpoint::Dialer,
            PortUse::Reuse,
        )
        .unwrap();
    }
}
