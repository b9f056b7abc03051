//! A running node: the protocol engine, discovery, the directory, the circuit
//! manager and the local front-ends, wired together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use veilnet_config::{Config, NodeKeys};
use veilnet_crypto::circuit::OnionKeypair;
use veilnet_dir::{Descriptor, Directory, ErrorKind, Inserted, Roles, SignedDescriptor};
use veilnet_discovery::{DiscoveryConfig, DiscoveryEvent, DiscoveryHandle};
use veilnet_proto::{Core, CoreConfig, DefaultRelayPolicy, ExitConfig, Limits, LinkTap};

use crate::circmgr::CircuitManager;
use crate::control::{self, CircuitView, ControlSource, NodeView, StatusView};
use crate::proxy;
use crate::unix_now;

/// Software version published in descriptors.
pub const VERSION: &str = concat!("veilnet/", env!("CARGO_PKG_VERSION"));

/// How long a descriptor stays valid without being republished is decided by
/// `veilnet-dir`; we republish well before that.
const REPUBLISH_EVERY: Duration = Duration::from_secs(20 * 60);
/// Links that carry no circuit for this long are closed.
const IDLE_LINK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How often the directory is pruned and known peers saved.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// Everything needed to start a node, beyond its config file.
pub struct NodeOptions {
    /// The parsed, validated configuration.
    pub config: Config,
    /// Its keys.
    pub keys: NodeKeys,
    /// How often descriptors are gossiped.
    pub gossip_interval: Duration,
    /// Test hook: sees every byte written on the node's links.
    pub tap: Option<LinkTap>,
    /// Persist known peers and guards in the data directory.
    pub persist: bool,
}

impl NodeOptions {
    /// Options with the defaults for a real node.
    pub fn new(config: Config, keys: NodeKeys) -> Self {
        Self {
            config,
            keys,
            gossip_interval: DiscoveryConfig::DEFAULT_EXCHANGE_INTERVAL,
            tap: None,
            persist: true,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Discovery failed to start.
    #[error("discovery: {0}")]
    Discovery(#[from] veilnet_discovery::DiscoveryError),
    /// Our own descriptor could not be made.
    #[error("descriptor: {0}")]
    Descriptor(#[from] veilnet_dir::DescriptorError),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(#[from] veilnet_config::ConfigError),
    /// The protocol engine could not start.
    #[error("engine: {0}")]
    Engine(#[from] veilnet_proto::ProtoError),
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    /// The node's identity.
    pub peer_id: PeerId,
    /// The engine.
    pub core: Arc<Core>,
    /// The verified directory.
    pub directory: Arc<Mutex<Directory>>,
    /// The circuit manager (client side).
    pub circuits: Arc<CircuitManager>,
    /// The discovery handle.
    pub discovery: DiscoveryHandle,
    /// Where the cell-link listener is.
    pub link_addr: SocketAddr,
    /// Where libp2p listens.
    pub p2p_addrs: Vec<Multiaddr>,
    /// The SOCKS5 proxy's address, if enabled.
    pub socks_addr: Option<SocketAddr>,
    /// The HTTP CONNECT proxy's address, if enabled.
    pub http_addr: Option<SocketAddr>,
    control_addr: OnceLock<SocketAddr>,
    started: Instant,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    data_dir: std::path::PathBuf,
    persist: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

struct OwnDescriptor {
    identity: libp2p::identity::Keypair,
    template: Descriptor,
}

impl OwnDescriptor {
    fn sign_new(&mut self) -> Result<SignedDescriptor, NodeError> {
        let now = unix_now();
        // Sequence numbers come from the clock (milliseconds) so they keep
        // increasing across restarts.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .max(self.template.seq + 1);
        self.template.seq = seq;
        self.template.published = now;
        Ok(self.template.sign(&self.identity)?)
    }
}

impl Node {
    /// Starts a node; returns once every listener is bound and discovery runs.
    pub async fn start(opts: NodeOptions) -> Result<Arc<Node>, NodeError> {
        let NodeOptions {
            config,
            keys,
            gossip_interval,
            tap,
            persist,
        } = opts;
        for w in config.warnings() {
            warn!("{w}");
        }
        let peer_id = keys.identity.public().to_peer_id();
        let exit = if config.exit.enabled {
            let mut exit = ExitConfig::new(config.exit_policy()?);
            exit.allow_private_targets = config.exit.danger_allow_private_targets;
            exit.allow_one_hop_exits = config.exit.danger_allow_one_hop_exits;
            exit.own_addrs = own_addresses(&config);
            Some(exit)
        } else {
            None
        };
        let directory = Arc::new(Mutex::new(Directory::new(peer_id)));
        // The one-hop rule: a circuit whose CREATE came from a peer that is
        // not a relay in our directory came straight from its client.
        let relays = {
            let dir = directory.clone();
            move |peer: &PeerId| lock(&dir).get(peer).is_some_and(|d| d.roles.relay)
        };
        let mut policy = DefaultRelayPolicy::new(Arc::new(relays));
        policy.allow_private_links = config.node.danger_allow_private_links;
        policy.exit = exit.clone();
        let onion = OnionKeypair {
            secret: keys.onion.secret,
            public: keys.onion.public,
        };
        let previous_onion = keys.previous_onion.as_ref().map(|k| OnionKeypair {
            secret: k.secret,
            public: k.public,
        });
        let core = Core::new(CoreConfig {
            identity: keys.identity.clone(),
            onion,
            previous_onion,
            relay: config.node.relay,
            policy: Arc::new(policy),
            limits: Limits::default(),
            tap,
        })?;

        let link_listener = bind("cell links", config.node.link_listen).await?;
        let link_addr = link_listener
            .local_addr()
            .map_err(|source| NodeError::Bind {
                what: "cell links",
                addr: config.node.link_listen,
                source,
            })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(core.clone().serve(link_listener))];

        let advertised: Vec<SocketAddr> = if config.node.advertise.is_empty() {
            if link_addr.ip().is_unspecified() {
                warn!(
                    "node.link_listen is unspecified and node.advertise is empty: \
                     advertising loopback only; set node.advertise to be reachable"
                );
                vec![SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    link_addr.port(),
                )]
            } else {
                vec![link_addr]
            }
        } else {
            config.node.advertise.clone()
        };

        let now = unix_now();
        let template = Descriptor {
            peer_id,
            identity_key: keys.identity.public().encode_protobuf(),
            link_addrs: advertised,
            p2p_addrs: Vec::new(),
            onion_key: keys.onion.public,
            onion_key_expires: keys.onion.expires,
            link_key: core.link_key(),
            roles: Roles {
                relay: config.node.relay,
                exit: exit.is_some(),
            },
            exit_policy: exit
                .as_ref()
                .map(|e| e.policy.clone())
                .unwrap_or_else(veilnet_policy::ExitPolicy::reject_all),
            bandwidth: config.node.bandwidth,
            region: config.node.region.clone(),
            family: config.node.family.clone(),
            version: VERSION.to_string(),
            seq: 0,
            published: now,
        };
        let own = Arc::new(Mutex::new(OwnDescriptor {
            identity: keys.identity.clone(),
            template,
        }));

        let provider_dir = directory.clone();
        let provider: veilnet_discovery::RecordProvider = Arc::new(move || {
            lock(&provider_dir)
                .all_signed()
                .iter()
                .map(SignedDescriptor::to_bytes)
                .collect()
        });
        // Only relays and exits publish a descriptor and take part in
        // discovery under their identity; a pure client uses a throwaway
        // libp2p identity and stays out of every directory.
        let publish = config.node.relay || exit.is_some();
        let p2p_identity = if publish {
            keys.identity.clone()
        } else {
            libp2p::identity::Keypair::generate_ed25519()
        };
        let mut dcfg = DiscoveryConfig::new(p2p_identity);
        dcfg.listen = config.node.p2p_listen.clone();
        dcfg.bootstrap = config.node.bootstrap.clone();
        dcfg.known_peers = if persist {
            veilnet_config::load_peers(&config.data_dir).unwrap_or_else(|e| {
                warn!("ignoring known peers: {e}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        dcfg.exchange_interval = gossip_interval;
        let (discovery, events) = veilnet_discovery::spawn(dcfg, provider).await?;
        let p2p_addrs = discovery.listen_addrs().await;
        {
            let mut own = lock(&own);
            own.template.p2p_addrs = p2p_addrs.iter().take(8).cloned().collect();
            if publish {
                let signed = own.sign_new()?;
                lock(&directory).insert(&signed, unix_now())?;
            }
        }
        tasks.push(tokio::spawn(directory_feed(directory.clone(), events)));

        let circuits = CircuitManager::new(
            core.clone(),
            directory.clone(),
            &config,
            persist.then(|| config.data_dir.clone()),
        );

        let socks_addr = match config.client.socks {
            Some(addr) => {
                let l = bind("SOCKS5 proxy", addr).await?;
                let local = l.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(proxy::serve_socks(l, circuits.clone())));
                Some(local)
            }
            None => None,
        };
        let http_addr = match config.client.http_proxy {
            Some(addr) => {
                let l = bind("HTTP CONNECT proxy", addr).await?;
                let local = l.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(proxy::serve_http(l, circuits.clone())));
                Some(local)
            }
            None => None,
        };

        tasks.push(tokio::spawn(housekeeping(
            Housekeeping {
                directory: directory.clone(),
                own,
                discovery: discovery.clone(),
                circuits: circuits.clone(),
                core: core.clone(),
                key_dir: config.data_dir.clone(),
                publish,
                peers_dir: persist.then(|| config.data_dir.clone()),
            },
            shutdown_rx.clone(),
        )));
        let node = Arc::new(Node {
            peer_id,
            core,
            directory,
            circuits,
            discovery,
            link_addr,
            p2p_addrs,
            socks_addr,
            http_addr,
            control_addr: OnceLock::new(),
            started: Instant::now(),
            shutdown_tx,
            tasks: Mutex::new(tasks),
            data_dir: config.data_dir.clone(),
            persist,
        });
        if let Some(addr) = config.control.listen {
            let source: Arc<dyn ControlSource> = Arc::new(NodeControl(Arc::downgrade(&node)));
            let mut rx = shutdown_rx;
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let (bound, handle) =
                control::serve(addr, source, stop)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "control API",
                        addr,
                        source,
                    })?;
            lock(&node.tasks).push(handle);
            let _ = node.control_addr.set(bound);
        }
        info!(peer = %peer_id, link = %link_addr, "node started");
        Ok(node)
    }

    /// The bound control API address, if the control API is enabled.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr.get().copied()
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Number of nodes in the directory (including this one).
    pub fn known_nodes(&self) -> usize {
        lock(&self.directory).len()
    }

    /// Stops every task of the node and saves its state.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        if self.persist {
            let peers = self.discovery.connected_peers().await;
            if let Err(e) = veilnet_config::save_peers(&self.data_dir, &peers) {
                warn!("cannot save known peers: {e}");
            }
        }
        self.circuits.close_all();
        self.discovery.shutdown().await;
        self.core.close_all_links();
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            t.abort();
        }
    }
}

/// The addresses the configuration says this node is reachable at (its
/// advertised and listen addresses, link and p2p). An exit never connects
/// to the public ones (Tor's ExitPolicyRejectMyAddresses), so a circuit
/// cannot reach services bound to the exit's own host.
fn own_addresses(config: &Config) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = config.node.advertise.iter().map(|a| a.ip()).collect();
    ips.push(config.node.link_listen.ip());
    for addr in &config.node.p2p_listen {
        for proto in addr.iter() {
            match proto {
                libp2p::multiaddr::Protocol::Ip4(ip) => ips.push(ip.into()),
                libp2p::multiaddr::Protocol::Ip6(ip) => ips.push(ip.into()),
                _ => {}
            }
        }
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    ips
}

/// Verifies and stores descriptors arriving from discovery.
async fn directory_feed(
    directory: Arc<Mutex<Directory>>,
    mut events: tokio::sync::mpsc::Receiver<DiscoveryEvent>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            DiscoveryEvent::Records { from, records } => {
                let now = unix_now();
                let mut dir = lock(&directory);
                for raw in records {
                    let result =
                        SignedDescriptor::from_bytes(&raw).and_then(|sd| dir.insert(&sd, now));
                    match result {
                        Ok(Inserted::New) => debug!("learned a new node from {from}"),
                        Ok(_) => {}
                        Err(e) => match e.kind() {
                            ErrorKind::Invalid => {
                                warn!("rejected a descriptor relayed by {from}: {e}")
                            }
                            _ => debug!("ignored a descriptor relayed by {from}: {e}"),
                        },
                    }
                }
            }
            DiscoveryEvent::PeerConnected { peer, .. } => debug!("p2p connected to {peer}"),
            DiscoveryEvent::PeerDisconnected { peer } => debug!("p2p disconnected from {peer}"),
            DiscoveryEvent::Listening(addr) => debug!("p2p listening on {addr}"),
        }
    }
}

struct Housekeeping {
    directory: Arc<Mutex<Directory>>,
    own: Arc<Mutex<OwnDescriptor>>,
    discovery: DiscoveryHandle,
    circuits: Arc<CircuitManager>,
    core: Arc<Core>,
    key_dir: std::path::PathBuf,
    /// Whether we publish a descriptor (relays and exits only).
    publish: bool,
    peers_dir: Option<std::path::PathBuf>,
}

impl Housekeeping {
    /// Rotates the onion key when it is about to expire: the key store makes
    /// and saves the new key, the engine accepts both, and the descriptor
    /// announces the new one. Returns true if the key changed.
    fn rotate_onion_key(&self, now: u64) -> bool {
        let expires = lock(&self.own).template.onion_key_expires;
        if expires > now + veilnet_config::ONION_KEY_ROTATE_BEFORE {
            return false;
        }
        let keys = match veilnet_config::load_keys(&self.key_dir, now) {
            Ok(k) => k,
            Err(e) => {
                warn!("cannot rotate the onion key: {e}");
                return false;
            }
        };
        if keys.onion.public == lock(&self.own).template.onion_key {
            return false;
        }
        let pair = |k: &veilnet_config::OnionKey| OnionKeypair {
            secret: k.secret,
            public: k.public,
        };
        self.core
            .set_onion_keys(pair(&keys.onion), keys.previous_onion.as_ref().map(pair));
        let mut own = lock(&self.own);
        own.template.onion_key = keys.onion.public;
        own.template.onion_key_expires = keys.onion.expires;
        info!("rotated the onion key");
        true
    }
}

async fn housekeeping(hk: Housekeeping, mut shutdown: watch::Receiver<bool>) {
    let mut last_publish = Instant::now();
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut fast = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = fast.tick() => {
                hk.circuits.prune();
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let now = unix_now();
        let idle = hk.core.close_idle_links(IDLE_LINK_TIMEOUT);
        if idle > 0 {
            debug!("closed {idle} idle links");
        }
        let expired = lock(&hk.directory).expire(now);
        if !expired.is_empty() {
            info!("{} stale nodes aged out of the directory", expired.len());
        }
        let rotated = hk.rotate_onion_key(now);
        if hk.publish && (rotated || last_publish.elapsed() >= REPUBLISH_EVERY) {
            let signed = lock(&hk.own).sign_new();
            match signed.map(|s| lock(&hk.directory).insert(&s, now)) {
                Ok(Ok(_)) => {
                    last_publish = Instant::now();
                    hk.discovery.exchange_now().await;
                }
                Ok(Err(e)) => warn!("cannot store our own descriptor: {e}"),
                Err(e) => warn!("cannot sign our descriptor: {e}"),
            }
        }
        if let Some(dir) = &hk.peers_dir {
            let peers = hk.discovery.connected_peers().await;
            if !peers.is_empty() {
                if let Err(e) = veilnet_config::save_peers(dir, &peers) {
                    debug!("cannot save known peers: {e}");
                }
            }
        }
    }
}

/// The control API's view of a node (weak, so the API does not keep the node alive).
struct NodeControl(Weak<Node>);

impl ControlSource for NodeControl {
    fn status(&self) -> StatusView {
        let Some(n) = self.0.upgrade() else {
            return StatusView {
                peer_id: String::new(),
                version: VERSION.to_string(),
                uptime_secs: 0.0,
                known_nodes: 0,
                open_circuits: 0,
                socks: None,
                http_proxy: None,
            };
        };
        StatusView {
            peer_id: n.peer_id.to_string(),
            version: VERSION.to_string(),
            uptime_secs: n.uptime().as_secs_f64(),
            known_nodes: n.known_nodes(),
            open_circuits: n.circuits.open_count(),
            socks: n.socks_addr.map(|a| a.to_string()),
            http_proxy: n.http_addr.map(|a| a.to_string()),
        }
    }

    fn nodes(&self) -> Vec<NodeView> {
        let Some(n) = self.0.upgrade() else {
            return Vec::new();
        };
        let own = n.peer_id;
        let dir = lock(&n.directory);
        dir.iter()
            .map(|d| NodeView {
                peer_id: d.peer_id.to_string(),
                relay: d.roles.relay,
                exit: d.roles.exit,
                link_addrs: d.link_addrs.iter().map(|a| a.to_string()).collect(),
                p2p_addrs: d.p2p_addrs.iter().map(|a| a.to_string()).collect(),
                region: d.region.clone(),
                bandwidth: d.bandwidth,
                version: d.version.clone(),
                is_self: d.peer_id == own,
            })
            .collect()
    }

    fn circuits(&self) -> Vec<CircuitView> {
        self.0
            .upgrade()
            .map(|n| n.circuits.views())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_come_from_the_config() {
        let mut c = Config::default();
        // Wildcard listeners say nothing about our addresses.
        assert!(own_addresses(&c).is_empty());
        c.node.advertise = vec!["198.51.100.7:9201".parse().unwrap()];
        c.node.link_listen = "192.0.2.1:9201".parse().unwrap();
        c.node.p2p_listen = vec![
            "/ip6/2001:db8::7/tcp/9200".parse().unwrap(),
            "/ip4/198.51.100.7/tcp/9200".parse().unwrap(),
        ];
        let want: Vec<IpAddr> = ["192.0.2.1", "198.51.100.7", "2001:db8::7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(own_addresses(&c), want);
    }
}
