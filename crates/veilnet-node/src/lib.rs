#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod control;
mod housekeeping;
mod measure;

pub use measure::MeasureStats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use veilnet_circmgr::guard::PathBiasParams;
use veilnet_circmgr::{CircMgrConfig, CircuitManager, GuardParams};
use veilnet_config::{unix_now, Config, NodeKeys};
use veilnet_control::ControlSource;
use veilnet_dir::{Cut, Descriptor, Directory, Roles, SignedDescriptor, MAX_DESCRIPTOR_AGE};
use veilnet_discovery::{DiscoveryConfig, DiscoveryHandle};
use veilnet_proto::{
    BandwidthLimit, Core, CoreConfig, DefaultRelayPolicy, Limits, LinkTap, RelayPolicy,
};

use crate::control::NodeControl;
use crate::housekeeping::{directory_feed, housekeeping, Housekeeping};

/// Software version published in descriptors.
pub const VERSION: &str = concat!("veilnet/", env!("CARGO_PKG_VERSION"));

/// Everything needed to start a node, beyond its config file.
pub struct NodeOptions {
    /// The parsed, validated configuration.
    pub config: Config,
    /// Its keys.
    pub keys: NodeKeys,
    /// How often the directory is reconciled with a few peers (from
    /// `[directory] exchange_interval_ms`).
    pub gossip_interval: Duration,
    /// Test hook: sees every byte written on the node's links.
    pub tap: Option<LinkTap>,
    /// Persist known peers and guards in the data directory.
    pub persist: bool,
    /// Test hook: wraps the node's admission policy (given the node's peer
    /// id), e.g. to make a relay refuse every circuit.
    pub wrap_policy: Option<WrapPolicy>,
}

/// A wrapper around a node's admission policy; see [`NodeOptions::wrap_policy`].
pub type WrapPolicy =
    Arc<dyn Fn(PeerId, Arc<dyn RelayPolicy>) -> Arc<dyn RelayPolicy> + Send + Sync>;

impl NodeOptions {
    /// Options with the defaults for a real node.
    pub fn new(config: Config, keys: NodeKeys) -> Self {
        Self {
            gossip_interval: Duration::from_millis(config.directory.exchange_interval_ms),
            config,
            keys,
            tap: None,
            persist: true,
            wrap_policy: None,
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
    /// Where the cell-link listener is; `None` for a pure client, which
    /// listens for no links.
    pub link_addr: Option<SocketAddr>,
    /// Where libp2p listens (nowhere for a pure client).
    pub p2p_addrs: Vec<Multiaddr>,
    /// The SOCKS5 proxy's address, if enabled.
    pub socks_addr: Option<SocketAddr>,
    /// The HTTP CONNECT proxy's address, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// What this node's measurer did (zero if it measures nothing).
    pub measure_stats: Arc<MeasureStats>,
    control_addr: OnceLock<SocketAddr>,
    started: Instant,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    data_dir: std::path::PathBuf,
    persist: bool,
    /// Whether it keeps a directory cache (a relay that persists).
    caches: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// When a client fetches the directory: twice a slot, once in each half of
/// the window of [`Cut::fetch_window`]; `None` (every exchange interval)
/// without one.
fn client_fetch(cut: Cut) -> Option<veilnet_discovery::FetchSlots> {
    let window = cut.fetch_window()?;
    Some(veilnet_discovery::FetchSlots::new(cut.every_secs, window))
}

/// See [`OwnDescriptor::published_at`]; `last`: the last descriptor's.
fn published_at(cut: Cut, listed: bool, last: u64, now: u64) -> u64 {
    if listed {
        cut.at(now).max(last).min(now)
    } else {
        now
    }
}

/// This node's descriptor: the template it signs a fresh copy of whenever
/// it republishes.
pub(crate) struct OwnDescriptor {
    identity: libp2p::identity::Keypair,
    pub(crate) template: Descriptor,
    /// The network's slots ([`Cut`]).
    cut: Cut,
    /// Whether nodes hold a descriptor of ours: one signed since start, or
    /// (after a restart) one accepted less than [`MAX_DESCRIPTOR_AGE`] ago.
    listed: bool,
}

impl OwnDescriptor {
    /// The `published` time of our next descriptor at `now`: while we are
    /// listed, the current cut (never before the last one), so that a
    /// republication keeps us in every node's view; otherwise `now`, and
    /// we count from the next slot like any newcomer.
    fn published_at(&self, now: u64) -> u64 {
        published_at(self.cut, self.listed, self.template.published, now)
    }

    pub(crate) fn sign_new(&mut self) -> Result<SignedDescriptor, NodeError> {
        let now = unix_now();
        let published = self.published_at(now);
        self.listed = true;
        // Sequence numbers come from the clock (milliseconds) so they keep
        // increasing across restarts.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .max(self.template.seq + 1);
        self.template.seq = seq;
        self.template.published = published;
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
            wrap_policy,
        } = opts;
        for w in config.warnings() {
            warn!("{w}");
        }
        let peer_id = keys.identity.public().to_peer_id();
        let exit = config.exit.enabled.then(|| config.exit.clone());
        let mut dir = Directory::new(peer_id);
        dir.allow_private_relays(config.node.danger_allow_private_links);
        // Reports are kept (and passed on) if this node uses them or makes
        // them.
        let publish = config.node.relay || exit.is_some();
        // A relay that donates less than a measurement's rate would
        // measure everyone at its own limit: it does not measure.
        let capped_below = config
            .node
            .relay_bandwidth()
            .is_some_and(|(rate, _)| rate < config.measure.max_rate);
        let measures = publish && config.node.relay && config.measure.enabled && !capped_below;
        if publish && config.node.relay && config.measure.enabled && capped_below {
            info!(
                "not measuring other relays: node.bandwidth_rate is below measure.max_rate, \
                 so every figure would be this node's own limit"
            );
        }
        // Measurement on in this network: every node keeps the reports
        // (and the proofs against measurers that forked one), clients and
        // relays that do not measure too; they weigh relays by them only
        // when `required` (a measurer's fork takes it out either way).
        if config.measure.required || config.measure.enabled {
            dir.use_measurements(Some(measure::params(&config.measure)));
            // Reports weigh in within 10 s (a quarter period in test
            // networks), not one recomputation each.
            dir.set_reweigh_secs((config.measure.period_secs / 4).min(10));
        }
        let cut = Cut {
            every_secs: config.directory.cut_every_secs,
            margin_secs: config.directory.cut_margin_secs,
        };
        dir.set_cut(cut);
        let directory = Arc::new(Mutex::new(dir));
        // The one-hop rule (a circuit whose CREATE came from a peer that is
        // not a relay in our directory came straight from its client) and
        // the EXTEND rule (only to a relay, at an address it publishes).
        let relays = {
            let dir = directory.clone();
            move |peer: &PeerId, link_addr: Option<&SocketAddr>| {
                lock(&dir).get(peer).is_some_and(|d| {
                    d.roles.relay && link_addr.is_none_or(|a| d.link_addrs.contains(a))
                })
            }
        };
        let mut policy = DefaultRelayPolicy::new(Arc::new(relays));
        policy.allow_private_links = config.node.danger_allow_private_links;
        policy.exit = exit.clone();
        policy.own_addrs = own_addresses(&config);
        let policy: Arc<dyn RelayPolicy> = match &wrap_policy {
            Some(wrap) => wrap(peer_id, Arc::new(policy)),
            None => Arc::new(policy),
        };
        let core = Core::new(CoreConfig {
            identity: keys.identity.clone(),
            onion: keys.onion.keypair.clone(),
            previous_onion: keys.previous_onion.as_ref().map(|k| k.keypair.clone()),
            relay: config.node.relay,
            policy,
            limits: Limits {
                relay_bandwidth: config
                    .node
                    .relay_bandwidth()
                    .map(|(rate, burst)| BandwidthLimit { rate, burst }),
                ..Limits::default()
            },
            tap,
        })?;

        // Only relays and exits publish a descriptor, listen, and take part
        // in discovery under their identity. A pure client opens no
        // listener besides its proxies and control API (so no crawler can
        // list client addresses), uses a throwaway libp2p identity and
        // stays out of every directory and routing table.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let link_addr = if publish {
            let link_listener = bind("cell links", config.node.link_listen).await?;
            let addr = link_listener
                .local_addr()
                .map_err(|source| NodeError::Bind {
                    what: "cell links",
                    addr: config.node.link_listen,
                    source,
                })?;
            tasks.push(tokio::spawn(core.clone().serve(link_listener)));
            Some(addr)
        } else {
            None
        };

        let advertised: Vec<SocketAddr> = match link_addr {
            None => Vec::new(),
            Some(_) if !config.node.advertise.is_empty() => config.node.advertise.clone(),
            Some(link_addr) if link_addr.ip().is_unspecified() => {
                warn!(
                    "node.link_listen is unspecified and node.advertise is empty: \
                     advertising loopback only; set node.advertise to be reachable"
                );
                vec![SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    link_addr.port(),
                )]
            }
            Some(link_addr) => vec![link_addr],
        };

        let now = unix_now();
        let template = Descriptor {
            peer_id,
            identity_key: keys.identity.public().encode_protobuf(),
            link_addrs: advertised,
            p2p_addrs: Vec::new(),
            onion_key: keys.onion.keypair.public,
            onion_key_expires: keys.onion.expires,
            link_key: core.link_key(),
            roles: Roles {
                relay: config.node.relay,
                exit: exit.is_some(),
            },
            exit_policy: config.exit.enforced_policy(),
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
            cut,
            listed: false,
        }));

        let provider: veilnet_discovery::RecordProvider =
            Arc::new(DirectoryRecords(directory.clone()));
        let p2p_identity = if publish {
            keys.identity.clone()
        } else {
            libp2p::identity::Keypair::generate_ed25519()
        };
        let mut dcfg = DiscoveryConfig::new(p2p_identity);
        if publish {
            dcfg.listen = config.node.p2p_listen.clone();
        } else {
            dcfg.client_only = true;
            // A client needs a few relays to fetch the directory from, not
            // a place in the mesh.
            dcfg.target_peers = 3;
            // It fetches once a slot, after the cut and before the slot it
            // counts in begins, so that it has what every relay uses.
            dcfg.client_fetch = client_fetch(cut);
        }
        dcfg.bootstrap = config.node.bootstrap.clone();
        if persist {
            housekeeping::load_seq_marks(&directory, &config.data_dir);
        }
        if persist && publish {
            // What a relay held before a restart: only what changed
            // meanwhile is fetched. Not a pure client: records a relay
            // planted in its directory would be offered in its exchanges
            // after the restart and link its sessions, which its throwaway
            // identities keep apart.
            let (dir, data) = (directory.clone(), config.data_dir.clone());
            let _ =
                tokio::task::spawn_blocking(move || housekeeping::load_cache(&dir, &data, peer_id))
                    .await;
        }
        if persist {
            // Our last descriptor, if still held out there, keeps us listed.
            let mark = lock(&directory).seq_mark(&keys.identity.public().to_peer_id());
            let mut own = lock(&own);
            own.listed = mark.is_some_and(|m| m.at.saturating_add(MAX_DESCRIPTOR_AGE) > now);
            own.template.published = 0;
        }
        dcfg.known_peers = if persist {
            veilnet_config::load_peers(&config.data_dir).unwrap_or_else(|e| {
                warn!("ignoring known peers: {e}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        // A client goes back to the relays it fetched from (its directory
        // guards), not to new ones, after a restart.
        if persist && dcfg.client_only {
            dcfg.fetch_relays =
                veilnet_config::load_fetch_relays(&config.data_dir).unwrap_or_else(|e| {
                    warn!("ignoring the remembered fetch relays: {e}");
                    Vec::new()
                });
        }
        dcfg.exchange_interval = gossip_interval;
        dcfg.announce_every = Duration::from_millis(config.directory.announce_batch_ms);
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
        tasks.push(tokio::spawn(directory_feed(
            directory.clone(),
            discovery.clone(),
            events,
        )));

        let circuits = CircuitManager::new(
            core.clone(),
            directory.clone(),
            CircMgrConfig {
                hops: usize::from(config.client.hops),
                max_dirtiness: Duration::from_secs(config.client.max_circuit_dirtiness_secs),
                guards: GuardParams {
                    primaries: config.client.num_guards,
                    replace_after: config.client.guard_replace_after_secs,
                    path_bias: PathBiasParams {
                        min_circuits: config.client.path_bias_min_circuits,
                    },
                    ..GuardParams::default()
                },
                state_dir: persist.then(|| config.data_dir.clone()),
            },
        );

        let socks_addr = match config.client.socks {
            Some(addr) => {
                let l = bind("SOCKS5 proxy", addr).await?;
                let local = l.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(veilnet_proxy::serve_socks(
                    l,
                    circuits.clone(),
                )));
                Some(local)
            }
            None => None,
        };
        let http_addr = match config.client.http_proxy {
            Some(addr) => {
                let l = bind("HTTP CONNECT proxy", addr).await?;
                let local = l.local_addr().unwrap_or(addr);
                tasks.push(tokio::spawn(veilnet_proxy::serve_http(l, circuits.clone())));
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
        let measure_stats = Arc::new(MeasureStats::default());
        if measures {
            let measurer = measure::Measurer {
                directory: directory.clone(),
                core: core.clone(),
                identity: keys.identity.clone(),
                discovery: discovery.clone(),
                config: config.measure.clone(),
                stats: measure_stats.clone(),
                first_reached: Mutex::new(std::collections::HashMap::new()),
                state_dir: persist.then(|| config.data_dir.clone()),
            };
            tasks.push(tokio::spawn(measurer.run(shutdown_rx.clone())));
        }
        let node = Arc::new(Node {
            peer_id,
            measure_stats,
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
            caches: persist && publish,
        });
        if let Some(addr) = config.control.listen {
            let source: Arc<dyn ControlSource> = Arc::new(NodeControl(Arc::downgrade(&node)));
            let mut rx = shutdown_rx;
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let (bound, handle) =
                veilnet_control::serve(addr, source, stop)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "control API",
                        addr,
                        source,
                    })?;
            lock(&node.tasks).push(handle);
            let _ = node.control_addr.set(bound);
        }
        match link_addr {
            Some(link) => info!(peer = %peer_id, %link, "node started"),
            None => info!("client node started (no listening links)"),
        }
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
            housekeeping::save_seq_marks(&self.directory, &self.data_dir);
            if self.caches {
                housekeeping::save_cache(&self.directory, &self.data_dir, &mut None);
            }
            let peers = self.discovery.connected_peers().await;
            if let Err(e) = veilnet_config::save_peers(&self.data_dir, &peers) {
                warn!("cannot save known peers: {e}");
            }
            housekeeping::save_fetch_relays(&self.discovery, &self.data_dir).await;
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

/// This node's own addresses: the ones the configuration says it is
/// reachable at (its advertised and listen addresses, link and p2p) and,
/// when it listens on a wildcard address, those of its interfaces. A node
/// never extends or connects to the public ones (Tor's
/// ExitPolicyRejectMyAddresses), so a circuit cannot reach services bound
/// to its own host.
fn own_addresses(config: &Config) -> Vec<IpAddr> {
    let mut ips = configured_addresses(config);
    let wildcard = config.node.link_listen.ip().is_unspecified()
        || config.node.p2p_listen.iter().any(|a| {
            a.iter().any(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
                libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
                _ => false,
            })
        });
    if wildcard {
        match if_addrs::get_if_addrs() {
            Ok(ifs) => ips.extend(ifs.iter().map(|i| i.ip())),
            Err(e) => warn!("cannot list this host's interface addresses: {e}"),
        }
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    ips
}

/// The addresses the configuration names for this node.
fn configured_addresses(config: &Config) -> Vec<IpAddr> {
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

/// The directory as discovery reconciles it: descriptors and measurement
/// reports by digest, in the order of the time each carries.
struct DirectoryRecords(Arc<Mutex<Directory>>);

impl veilnet_discovery::RecordStore for DirectoryRecords {
    fn spans_since(
        &self,
        since: u64,
    ) -> Option<
        Vec<(
            veilnet_discovery::RecordKey,
            Option<veilnet_discovery::RecordKey>,
        )>,
    > {
        Some(veilnet_dir::spans_since(since).to_vec())
    }

    fn keys(&self) -> Arc<[veilnet_discovery::RecordKey]> {
        lock(&self.0).keys()
    }

    fn record(&self, digest: &veilnet_discovery::RecordDigest) -> Option<Vec<u8>> {
        lock(&self.0).record(digest)
    }

    fn unknown(
        &self,
        digests: &[veilnet_discovery::RecordDigest],
    ) -> Vec<veilnet_discovery::RecordDigest> {
        let dir = lock(&self.0);
        digests.iter().filter(|d| !dir.knows(d)).copied().collect()
    }
    fn unknown_short(
        &self,
        ids: &[veilnet_discovery::sync::ShortId],
    ) -> Vec<veilnet_discovery::sync::ShortId> {
        let dir = lock(&self.0);
        ids.iter()
            .filter(|id| !dir.knows_prefix(&id[..]))
            .copied()
            .collect()
    }

    fn relays(&self, n: usize) -> Vec<(PeerId, Multiaddr)> {
        use rand::seq::SliceRandom;
        let mut found: Vec<(PeerId, Multiaddr)> = lock(&self.0)
            .iter()
            .filter(|d| veilnet_dir::path::is_usable_relay(d))
            .filter_map(|d| Some((d.peer_id, d.p2p_addrs.first()?.clone())))
            .collect();
        found.shuffle(&mut rand::thread_rng());
        // Distinct networks first (a /16's worth of relays is one
        // operator's as often as not), then any.
        let net = |a: &Multiaddr| {
            a.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.octets()[..2].to_vec()),
                libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.octets()[..4].to_vec()),
                _ => None,
            })
        };
        let mut nets = std::collections::HashSet::new();
        let (mut picked, rest): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(_, a)| net(a).is_none_or(|k| nets.insert(k)));
        picked.truncate(n);
        picked.extend(rest.into_iter().take(n - picked.len()));
        picked
    }

    fn lists_relay(&self, peer: &PeerId) -> Option<bool> {
        Some(
            lock(&self.0)
                .get(peer)
                .is_some_and(veilnet_dir::path::is_usable_relay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_relay_republishes_at_the_cut_and_a_new_one_now() {
        let cut = Cut::PUBLIC;
        let now = 1_700_000_000;
        let at_cut = cut.at(now);
        assert!(at_cut < now);
        assert_eq!(published_at(cut, true, 0, now), at_cut);
        // Never before the last descriptor (which may be after the cut).
        assert_eq!(published_at(cut, true, at_cut + 7, now), at_cut + 7);
        assert_eq!(published_at(cut, false, 0, now), now);
        assert_eq!(published_at(Cut::IMMEDIATE, true, 0, now), now);
    }

    #[test]
    fn clients_fetch_between_the_cut_and_the_next_slot() {
        let f = client_fetch(Cut::PUBLIC).unwrap();
        assert_eq!(f.every, Duration::from_secs(3600));
        // The next slot's cut is 300 s before it: fetch after it.
        assert_eq!(f.from, Duration::from_secs(3360));
        assert_eq!(f.to, Duration::from_secs(3570));
        assert_eq!(client_fetch(Cut::IMMEDIATE), None);
    }

    #[test]
    fn own_addresses_come_from_the_config() {
        let mut c = Config::default();
        // Wildcard listeners say nothing in the configuration, so the
        // interfaces are asked (loopback is always among them).
        assert!(configured_addresses(&c).is_empty());
        assert!(own_addresses(&c).iter().any(|ip| ip.is_loopback()));
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
        assert_eq!(configured_addresses(&c), want);
        assert_eq!(
            own_addresses(&c),
            want,
            "no wildcard: the configuration only"
        );
    }
}
