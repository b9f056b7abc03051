#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod http;
mod local;
pub mod ports;
pub mod socks5;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veilnet_circmgr::Isolation;
use veilnet_config::unix_now;
use veilnet_node::{Node, NodeError, NodeOptions, WrapPolicy};
use veilnet_proto::LinkTap;

pub use local::{LocalNetwork, LocalRole};

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
    /// Test hook: wraps every relay's admission policy (see
    /// [`NodeOptions::wrap_policy`]).
    pub wrap_policy: Option<WrapPolicy>,
    /// Test hook: edits relay `i`'s configuration before it starts (e.g.
    /// a bandwidth limit or a false advertised bandwidth on one relay).
    pub relay_config: Option<RelayConfig>,
    /// Peer measurement on every node (see [`LocalNetwork::measure`]);
    /// `None`: off.
    pub measure: Option<veilnet_config::MeasureConfig>,
}

/// See [`TestnetOptions::relay_config`].
pub type RelayConfig = Arc<dyn Fn(usize, &mut veilnet_config::Config) + Send + Sync>;

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
            wrap_policy: None,
            relay_config: None,
            measure: None,
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
        let local = LocalNetwork {
            hops: opts.hops,
            allow_private_targets: opts.allow_private_targets,
            max_circuit_dirtiness: opts.max_circuit_dirtiness,
            measure: opts.measure.clone(),
        };
        let mut relays = Vec::with_capacity(opts.nodes);
        let mut bootstrap = Vec::new();
        for index in 0..=opts.nodes {
            let role = LocalRole::of(index, opts.nodes, opts.exits);
            let dir = LocalNetwork::data_dir(&base, index, role);
            veilnet_config::init_data_dir(&dir)
                .map_err(|source| TestnetError::Config { index, source })?;
            let keys = veilnet_config::load_keys(&dir, unix_now())
                .map_err(|source| TestnetError::Config { index, source })?;
            let mut config = local.config(role, dir, 0, 0, bootstrap.clone());
            let is_client = role == LocalRole::Client;
            if let (false, Some(edit)) = (is_client, &opts.relay_config) {
                edit(index, &mut config);
            }
            if is_client {
                config.client.socks = opts.socks;
                config.client.http_proxy = opts.http_proxy;
                config.control.listen = opts.control;
            }
            let mut nopts = NodeOptions::new(config, keys);
            nopts.gossip_interval = opts.gossip_interval;
            nopts.tap = opts.tap.clone();
            nopts.persist = false;
            if !is_client {
                nopts.wrap_policy = opts.wrap_policy.clone();
            }
            let node = Node::start(nopts)
                .await
                .map_err(|source| TestnetError::Node { index, source })?;
            if index == 0 {
                bootstrap = node
                    .p2p_addrs
                    .iter()
                    .map(|a| LocalNetwork::bootstrap_addr(a, node.peer_id))
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
            match self.client.circuits.build(None, Isolation::NONE).await {
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
