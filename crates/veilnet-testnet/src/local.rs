//! The configuration of one node of a local network on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use veilnet_config::{Config, DirectoryConfig, MeasureConfig};

/// What a node of a local network does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRole {
    /// A relay that is not an exit.
    Relay,
    /// A relay and an exit.
    Exit,
    /// The user's client: neither relay nor exit, publishes nothing.
    Client,
}

impl LocalRole {
    /// The role of node `index` of a network of `relays` relays, the first
    /// `exits` of them exits, and the client last (`index == relays`).
    pub fn of(index: usize, relays: usize, exits: usize) -> LocalRole {
        if index >= relays {
            LocalRole::Client
        } else if index < exits {
            LocalRole::Exit
        } else {
            LocalRole::Relay
        }
    }
}

/// What every node of a local network shares.
#[derive(Debug, Clone)]
pub struct LocalNetwork {
    /// Hops per circuit.
    pub hops: u8,
    /// Danger: let the exits connect to private and loopback addresses.
    pub allow_private_targets: bool,
    /// How long a circuit takes new streams (`max_circuit_dirtiness`).
    pub max_circuit_dirtiness: Duration,
    /// Peer measurement (`[measure]`), e.g.
    /// [`MeasureConfig::test_network`]; `None`: off, every relay used at
    /// its advertised bandwidth at once.
    pub measure: Option<MeasureConfig>,
}

impl Default for LocalNetwork {
    fn default() -> Self {
        let client = Config::default().client;
        Self {
            hops: client.hops,
            allow_private_targets: false,
            max_circuit_dirtiness: Duration::from_secs(client.max_circuit_dirtiness_secs),
            measure: None,
        }
    }
}

impl LocalNetwork {
    /// The data directory of node `index` with `role` under `base`.
    pub fn data_dir(base: &Path, index: usize, role: LocalRole) -> PathBuf {
        match role {
            LocalRole::Client => base.join("client"),
            _ => base.join(format!("node-{index}")),
        }
    }

    /// Where the other nodes bootstrap from: `peer` listening for libp2p on
    /// `p2p` (as bound).
    pub fn bootstrap_addr(p2p: &Multiaddr, peer: PeerId) -> Multiaddr {
        p2p.clone().with(Protocol::P2p(peer))
    }

    /// The configuration of a node with `role` keeping its keys in
    /// `data_dir`, listening on 127.0.0.1 at `p2p_port` (libp2p) and
    /// `link_port` (cell links; 0 for any) and bootstrapping from
    /// `bootstrap`. The client's proxies and control API are off: callers
    /// turn on the ones they use.
    pub fn config(
        &self,
        role: LocalRole,
        data_dir: PathBuf,
        p2p_port: u16,
        link_port: u16,
        bootstrap: Vec<Multiaddr>,
    ) -> Config {
        let mut c = Config {
            data_dir,
            ..Config::default()
        };
        let exit = role == LocalRole::Exit;
        c.node.p2p_listen = vec![Multiaddr::empty()
            .with(Protocol::Ip4([127, 0, 0, 1].into()))
            .with(Protocol::Tcp(p2p_port))];
        c.node.link_listen = SocketAddr::from(([127, 0, 0, 1], link_port));
        c.node.bootstrap = bootstrap;
        c.node.relay = role != LocalRole::Client;
        // Every node of a local network listens on loopback.
        c.node.danger_allow_private_links = true;
        c.client.hops = self.hops;
        // A small network reaches a path-bias verdict sooner.
        c.client.path_bias_min_circuits = 20;
        c.client.max_circuit_dirtiness_secs = self.max_circuit_dirtiness.as_secs().max(1);
        c.client.socks = None;
        c.client.http_proxy = None;
        c.control.listen = None;
        c.measure = self.measure.clone().unwrap_or(MeasureConfig {
            enabled: false,
            required: false,
            ..MeasureConfig::default()
        });
        c.directory = DirectoryConfig::test_network();
        c.exit.enabled = exit;
        c.exit.danger_allow_private_targets = exit && self.allow_private_targets;
        // Exits refuse one-hop circuits; a network that builds only those needs them.
        c.exit.danger_allow_one_hop_exits = exit && self.hops == 1;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_configs() {
        let roles: Vec<LocalRole> = (0..=3).map(|i| LocalRole::of(i, 3, 1)).collect();
        assert_eq!(
            roles,
            [
                LocalRole::Exit,
                LocalRole::Relay,
                LocalRole::Relay,
                LocalRole::Client
            ]
        );
        let net = LocalNetwork {
            hops: 1,
            allow_private_targets: true,
            ..LocalNetwork::default()
        };
        let exit = net.config(LocalRole::Exit, "/x".into(), 0, 0, Vec::new());
        assert!(exit.exit.enabled && exit.exit.danger_allow_one_hop_exits);
        assert!(exit.exit.danger_allow_private_targets);
        exit.validate().unwrap();
        let client = net.config(LocalRole::Client, "/x".into(), 0, 0, Vec::new());
        assert!(!client.node.relay && !client.exit.enabled);
        assert_eq!(client.client.socks, None);
        client.validate().unwrap();
    }
}
