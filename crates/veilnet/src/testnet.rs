//! A local test network: N real nodes on loopback plus the user's client,
//! each with its own keys and data directory, talking over real sockets with
//! the same code as `veilnet node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veilnet_config::Config;
use veilnet_dir::path::ExitTarget;
use veilnet_proto::LinkTap;

use crate::circmgr::Isolation;
use crate::node::{Node, NodeError, NodeOptions};
use crate::unix_now;

/// What to start.
#[derive(Clone)]
pub struct TestnetOptions {
    /// Relays to start (besides the client).
    pub nodes: usize,
    /// How many of them are exits.
    pub exits: usize,
    /// Hops per circuit.
    pub hops: u8,
    /// The client's SOCKS5 listener.
    pub socks: Option<SocketAddr>,
    /// The client's HTTP CONNECT listener.
    pub http_proxy: Option<SocketAddr>,
    /// The client's control API listener.
    pub control: Option<SocketAddr>,
    /// Danger: let the exits connect to private and loopback addresses.
    pub allow_private_targets: bool,
    /// Test hook: sees every byte written on any link of any node.
    pub tap: Option<LinkTap>,
    /// Descriptor gossip interval.
    pub gossip_interval: Duration,
    /// How long a circuit takes new streams (`max_circuit_dirtiness`).
    pub max_circuit_dirtiness: Duration,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        Self {
            nodes: 8,
            exits: 2,
            hops: 3,
            socks: Some(SocketAddr::from(([127, 0, 0, 1], 9050))),
            http_proxy: None,
            control: None,
            allow_private_targets: false,
            tap: None,
            gossip_interval: Duration::from_millis(500),
            max_circuit_dirtiness: Duration::from_secs(600),
        }
    }
}

/// Errors starting a test network.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// A node failed to start.
    #[error("starting node {index}: {source}")]
    Node {
        /// Which node (the client is `nodes`).
        index: usize,
        /// Why.
        source: NodeError,
    },
    /// Keys or configs could not be made.
    #[error("preparing node {index}: {source}")]
    Config {
        /// Which node.
        index: usize,
        /// Why.
        source: veilnet_config::ConfigError,
    },
    /// The network did not become ready in time.
    #[error("not ready after {0:?}: {1}")]
    NotReady(Duration, String),
}

/// A running test network.
pub struct Testnet {
    /// The relays.
    pub relays: Vec<Arc<Node>>,
    /// The user's client node (not a relay).
    pub client: Arc<Node>,
    base: PathBuf,
}

fn node_config(
    opts: &TestnetOptions,
    dir: PathBuf,
    bootstrap: Vec<libp2p::Multiaddr>,
    exit: bool,
    client: bool,
) -> Config {
    let mut c = Config {
        data_dir: dir,
        ..Config::default()
    };
    c.node.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0"
        .parse()
        .unwrap_or_else(|_| libp2p::Multiaddr::empty())];
    c.node.link_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.node.bootstrap = bootstrap;
    c.node.relay = !client;
    // Every node of a test network listens on loopback.
    c.node.danger_allow_private_links = true;
    c.client.hops = opts.hops;
    c.client.max_circuit_dirtiness_secs = opts.max_circuit_dirtiness.as_secs();
    c.client.socks = if client { opts.socks } else { None };
    c.client.http_proxy = if client { opts.http_proxy } else { None };
    c.control.listen = if client { opts.control } else { None };
    c.exit.enabled = exit;
    c.exit.danger_allow_private_targets = exit && opts.allow_private_targets;
    // Exits refuse one-hop circuits; a network that builds only those needs them.
    c.exit.danger_allow_one_hop_exits = exit && opts.hops == 1;
    c
}

impl Testnet {
    /// Starts the relays, then the client; does not wait for readiness.
    pub async fn start(opts: TestnetOptions) -> Result<Testnet, TestnetError> {
        if opts.nodes < usize::from(opts.hops) || opts.exits == 0 || opts.exits > opts.nodes {
            return Err(TestnetError::Invalid(format!(
                "need at least {} nodes and 1..={} exits (got {} nodes, {} exits)",
                opts.hops, opts.nodes, opts.nodes, opts.exits
            )));
        }
        let base = std::env::temp_dir().join(format!(
            "veilnet-testnet-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut relays = Vec::with_capacity(opts.nodes);
        let mut bootstrap = Vec::new();
        for index in 0..=opts.nodes {
            let is_client = index == opts.nodes;
            let dir = base.join(if is_client {
                "client".into()
            } else {
                format!("node-{index}")
            });
            veilnet_config::init_data_dir(&dir)
                .map_err(|source| TestnetError::Config { index, source })?;
            let keys = veilnet_config::load_keys(&dir, unix_now())
                .map_err(|source| TestnetError::Config { index, source })?;
            let config = node_config(
                &opts,
                dir,
                bootstrap.clone(),
                !is_client && index < opts.exits,
                is_client,
            );
            let mut nopts = NodeOptions::new(config, keys);
            nopts.gossip_interval = opts.gossip_interval;
            nopts.tap = opts.tap.clone();
            nopts.persist = false;
            let node = Node::start(nopts)
                .await
                .map_err(|source| TestnetError::Node { index, source })?;
            if index == 0 {
                bootstrap = node
                    .p2p_addrs
                    .iter()
                    .map(|a| {
                        a.clone()
                            .with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
                    })
                    .collect();
            }
            if is_client {
                return Ok(Testnet {
                    relays,
                    client: node,
                    base,
                });
            }
            relays.push(node);
        }
        Err(TestnetError::Invalid("no client started".into()))
    }

    /// Waits until the client and every relay know every relay, and the
    /// client has built a circuit. (Exits serve streams only on circuits
    /// whose previous hop is a relay they know.)
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), TestnetError> {
        let start = Instant::now();
        // The client publishes nothing: it knows the relays only.
        let want = self.relays.len();
        let lagging = || {
            std::iter::once(&self.client)
                .chain(&self.relays)
                .map(|n| n.known_nodes())
                .find(|&known| known < want)
        };
        while let Some(known) = lagging() {
            if start.elapsed() > limit {
                return Err(TestnetError::NotReady(
                    limit,
                    format!("a node knows {known} of {want} nodes"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            match self
                .client
                .circuits
                .build(ExitTarget::Any, Isolation::NONE)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > limit => {
                    return Err(TestnetError::NotReady(limit, e.to_string()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stops every node and removes the network's data directories.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        for n in &self.relays {
            n.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
