//! The swarm task, its handle and its events.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    time::Duration,
};

use futures::StreamExt;
use libp2p::{
    connection_limits::{self, ConnectionLimits},
    identify, kad,
    multiaddr::Protocol,
    noise, ping,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
        NetworkBehaviour, SwarmEvent,
    },
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, trace, warn};

use crate::{
    announce::{self, Frame},
    budget::AnswerBudget,
    config::{DiscoveryConfig, FetchSlots, RecordProvider},
    error::DiscoveryError,
    inbound,
    kept::{self, announcement_peers, choose_with_own, Kept, NetGroup},
    push::{self, Offered},
    sync::{self, AfterRound, RecordDigest, SyncLimits, SyncMessage, MAX_DIGESTS},
    wants::{Budget, Wants},
    wire::{self, SyncCodec},
    IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_ESTABLISHED, PING_INTERVAL, SYNC_PROTOCOL,
};

/// Capacity of the event channel.
const EVENT_CHANNEL: usize = 256;
/// Capacity of the command channel.
const COMMAND_CHANNEL: usize = 64;
/// Peers contacted per gossip round.
const GOSSIP_FANOUT: usize = 3;
/// How long a client waits before it fetches from its next relay after a
/// failed fetch.
const FETCH_RETRY: Duration = Duration::from_secs(5);
/// Retries a client makes between two scheduled fetches.
const MAX_FETCH_RETRIES: usize = 2;
/// Relays a client with fetch slots fetches from, in turn: the first it
/// reached, remembered for as long as it runs (Tor's directory guards: a
/// client that asked a new relay each time would show itself to every
/// relay in turn).
const FETCH_RELAYS: usize = 3;
/// Dials in a row a fetch relay may fail before the client forgets it (and
/// takes the next relay it reaches in its place; with none left, it dials
/// its bootstrap and remembered peers again).
const FETCH_RELAY_FAILURES: u32 = 3;
/// A client's fetch between full ones reconciles the records published
/// since its last complete fetch began, less this many seconds: a record
/// still spreading then (convergence takes under a minute; a relay may
/// sign one late) is caught by the next fetch.
pub const CLIENT_RECENT_MARGIN: u64 = 3600;
/// Every this many complete fetches a client reconciles everything (what
/// the fetches since their margins missed, and anything else).
pub const CLIENT_FULL_EVERY: u32 = 6;

/// Where a client's fetch between full ones begins, for a last complete
/// fetch that began at `last`: [`CLIENT_RECENT_MARGIN`] before it, rounded
/// down to a quarter hour, so the bound a client sends says no more of
/// when it last fetched than that.
pub fn recent_since(last: u64) -> u64 {
    let since = last.saturating_sub(CLIENT_RECENT_MARGIN);
    since - since % 900
}

/// Now, unix seconds.
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
/// How often late wants are asked of another peer.
const WANTS_CHECK: Duration = Duration::from_secs(1);
/// How often a kept link whose announcement stream failed gets a new one
/// (within the idle timeout, so the link stays).
const KEEP_CHECK: Duration = Duration::from_secs(20);
/// First random walk after start.
const FIRST_WALK: Duration = Duration::from_secs(1);
/// Time between random walks while the node has fewer connections of its
/// own than it wants.
const WALK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest time between random walks while the node wants links and its
/// walks find none it can dial (a network with fewer relays than it
/// wants): the wait doubles from [`WALK_INTERVAL`] after each such walk.
/// A walk asks a couple of dozen peers for their neighbours, dialing
/// those it is not connected to, so a node with the links it wants does
/// not walk at all.
const IDLE_WALK_INTERVAL: Duration = Duration::from_secs(300);
/// Links other relays chose to us that we keep open
/// ([`Kept`]): twice the links we choose, so that on average every
/// relay's choices are kept, and at most a third of the connection limit.
fn kept_inbound(target_peers: usize) -> usize {
    (2 * target_peers).min(MAX_ESTABLISHED as usize / 3)
}
/// Timeout of one record exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent record streams per connection.
const MAX_RECORD_STREAMS: usize = 8;
/// Addresses taken from one identify message.
const MAX_IDENTIFY_ADDRS: usize = 8;
/// Pending connections allowed in each direction.
const MAX_PENDING: u32 = 32;
/// Established connections allowed per peer.
const MAX_PER_PEER: u32 = 2;
/// Connections kept for our own dials, which inbound ones cannot take:
/// the links we choose (`target_peers`, 8 by default; a walk's lookups
/// run only while we have fewer, in the room the missing ones leave).
/// Not more: a test network's first relay is every other node's bootstrap
/// peer, and 40 nodes must fit in its 42.
const OUTBOUND_RESERVE: u32 = 8;
/// First wait before a node with no connections dials its bootstrap and
/// known peers again (they may have started after it, or the network may
/// have been down); the wait doubles after each try up to [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries of the bootstrap peers.
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// How long [`spawn`] waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the discovery node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// The node listens on a new address.
    Listening(Multiaddr),
    /// The first connection to a peer was established; `addr` is the remote
    /// address of that connection.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Remote address of the connection.
        addr: Multiaddr,
    },
    /// The last connection to a peer was closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// Unverified records received from a peer (never empty).
    Records {
        /// The peer that sent them.
        from: PeerId,
        /// The records, as opaque blobs.
        records: Vec<Vec<u8>>,
    },
}

/// Handle to a running discovery node. Cheap to clone; the node stops on
/// [`DiscoveryHandle::shutdown`] or when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct DiscoveryHandle {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<(PeerId, Multiaddr)>>),
    FetchRelays(oneshot::Sender<Vec<(PeerId, Multiaddr)>>),
    ExchangeNow,
    Announce(Vec<RecordDigest>),
    Shutdown(oneshot::Sender<()>),
}

impl DiscoveryHandle {
    /// The node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Addresses the node currently listens on (empty once stopped).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Connected peers with the remote address of one connection each
    /// (empty once stopped).
    pub async fn connected_peers(&self) -> Vec<(PeerId, Multiaddr)> {
        self.ask(Command::ConnectedPeers).await.unwrap_or_default()
    }

    /// A client's fetch relays, in order, with the address it reached each
    /// at: what to remember across a restart
    /// ([`DiscoveryConfig::fetch_relays`]). Empty for a relay and once
    /// stopped.
    pub async fn fetch_relays(&self) -> Vec<(PeerId, Multiaddr)> {
        self.ask(Command::FetchRelays).await.unwrap_or_default()
    }

    /// Triggers an immediate gossip round (e.g. after our descriptor changed).
    pub async fn exchange_now(&self) {
        // A stopped node has nothing to exchange.
        let _ = self.commands.send(Command::ExchangeNow).await;
    }

    /// Pushes records the node has just accepted (its own new descriptor,
    /// or others' after verification) to a few relays at once
    /// ([`sync::announce`]): each asks for those it lacks, so a change
    /// spreads in a few round trips instead of waiting for anti-entropy.
    pub async fn announce(&self, digests: Vec<RecordDigest>) {
        if digests.is_empty() {
            return;
        }
        // A stopped node has nobody to tell.
        let _ = self.commands.send(Command::Announce(digests)).await;
    }

    /// Stops the node and waits until its connections are dropped.
    pub async fn shutdown(&self) {
        // `None`: already stopped.
        let _ = self.ask(Command::Shutdown).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    networks: inbound::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    /// None for a client with fetch slots: it needs no one but its fetch
    /// relays, and a lookup would dial relays that need not know of it.
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    records: request_response::Behaviour<SyncCodec>,
    announce: libp2p_stream::Behaviour,
}

/// Starts a discovery node on the current tokio runtime.
///
/// Returns once every listener reports an address, so
/// [`DiscoveryHandle::listen_addrs`] is immediately useful.
pub async fn spawn(
    cfg: DiscoveryConfig,
    provider: RecordProvider,
) -> Result<(DiscoveryHandle, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
    if cfg.exchange_interval.is_zero() {
        return Err(DiscoveryError::InvalidConfig(
            "exchange_interval must be non-zero",
        ));
    }
    if cfg.announce_every.is_zero() {
        return Err(DiscoveryError::InvalidConfig(
            "announce_every must be non-zero",
        ));
    }
    let mut bootstrap = Vec::with_capacity(cfg.bootstrap.len());
    for addr in &cfg.bootstrap {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => bootstrap.push((peer, addr.clone())),
            _ => return Err(DiscoveryError::BootstrapWithoutPeerId(addr.clone())),
        }
    }
    if cfg.client_only && !cfg.listen.is_empty() {
        return Err(DiscoveryError::InvalidConfig(
            "a client-only discovery node listens on nothing",
        ));
    }
    let limits = wire::limits(cfg.max_records, cfg.max_record_len);
    let mut swarm = build_swarm(&cfg, &limits)?;

    let mut pending_listeners = HashSet::new();
    for addr in &cfg.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| DiscoveryError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        pending_listeners.insert(id);
    }

    let local_peer_id = *swarm.local_peer_id();
    let entry: Vec<(PeerId, Multiaddr)> = bootstrap
        .into_iter()
        .chain(cfg.known_peers.iter().cloned())
        .filter(|(peer, _)| *peer != local_peer_id)
        .collect();
    // A client with fetch slots goes back to the fetch relays it had, and
    // to nobody else while they serve.
    let remembered: Vec<FetchRelay> = if cfg.client_only && cfg.client_fetch.is_some() {
        let mut seen = HashSet::new();
        cfg.fetch_relays
            .iter()
            .filter(|(peer, _)| *peer != local_peer_id && seen.insert(*peer))
            .take(FETCH_RELAYS)
            .map(|(peer, addr)| FetchRelay::new(*peer, addr.clone()))
            .collect()
    } else {
        Vec::new()
    };
    // The first of them we reach are links of our choosing.
    let mut chosen = HashMap::new();
    for (peer, addr) in &entry {
        if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
            kad.add_address(peer, without_p2p(addr));
        }
        if remembered.is_empty()
            && dial(&mut swarm, *peer, vec![addr.clone()])
            && chosen.len() < cfg.target_peers
        {
            chosen.insert(*peer, NetGroup::network(addr));
        }
    }
    for r in &remembered {
        dial(&mut swarm, r.peer, vec![r.addr.clone()]);
    }
    if let Some(Err(e)) = swarm.behaviour_mut().kad.as_mut().map(|k| k.bootstrap()) {
        debug!("kademlia bootstrap not started: {e}");
    }

    let control = swarm.behaviour().announce.new_control();
    let (frames_tx, frames_rx) = mpsc::channel(push::INBOUND_QUEUE);
    // A client announces nothing and is announced nothing: it does not
    // accept the stream, so identify does not list it.
    if !cfg.client_only {
        push::accept(control.clone(), limits, frames_tx)
            .map_err(|_| DiscoveryError::InvalidConfig("announcement protocol registered twice"))?;
    }
    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL);
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL);
    let (ready_tx, ready_rx) = oneshot::channel();
    let node = Node {
        swarm,
        provider,
        limits,
        exchange_interval: cfg.exchange_interval,
        client_fetch: cfg.client_fetch.filter(|_| cfg.client_only),
        announce_every: cfg.announce_every,
        fetch_rank: 0,
        target_peers: cfg.target_peers,
        client_only: cfg.client_only,
        events: events_tx,
        commands: cmd_rx,
        connected: HashMap::new(),
        servers: HashSet::new(),
        in_flight: HashMap::new(),
        wants: Wants::default(),
        push_pending: Vec::new(),
        control,
        frames: frames_rx,
        writers: HashMap::new(),
        offered: HashMap::new(),
        announcers: HashSet::new(),
        kept: Kept::new(cfg.target_peers, kept_inbound(cfg.target_peers)),
        chosen,
        delivered_by: HashMap::new(),
        delivered_before: HashMap::new(),
        answers: AnswerBudget::default(),
        refetch_at: None,
        synced: false,
        fetched_once: false,
        fetch_started: None,
        last_fetch: None,
        fetches: 0,
        fetch_relays: remembered,
        fetch_dialed: None,
        fetch_retries: 0,
        pending_listeners,
        entry,
        ready: Some(ready_tx),
        gossip_started: false,
    };
    tokio::spawn(node.run());

    match tokio::time::timeout(LISTEN_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        // The task ended without answering: it can only do that after a
        // listener error, which it reports; treat a silent end the same.
        Ok(Err(_)) => {
            return Err(DiscoveryError::Listen {
                addr: Multiaddr::empty(),
                reason: "discovery task stopped".into(),
            })
        }
        Err(_) => {
            // Dropping cmd_tx stops the task.
            return Err(DiscoveryError::ListenTimeout(LISTEN_TIMEOUT));
        }
    }
    Ok((
        DiscoveryHandle {
            local_peer_id,
            commands: cmd_tx,
        },
        events_rx,
    ))
}

fn build_swarm(
    cfg: &DiscoveryConfig,
    limits: &SyncLimits,
) -> Result<Swarm<Behaviour>, DiscoveryError> {
    let transport_err = |e: &dyn std::fmt::Display| DiscoveryError::Transport(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();

            let limits_cfg = ConnectionLimits::default()
                .with_max_established(Some(MAX_ESTABLISHED))
                .with_max_established_incoming(Some(MAX_ESTABLISHED - OUTBOUND_RESERVE))
                .with_max_established_per_peer(Some(MAX_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING))
                .with_max_pending_outgoing(Some(MAX_PENDING));

            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version("veilnet".to_owned()),
            );

            let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            // We do not use the DHT's record store: drop inbound PUTs.
            kad_cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            kad_cfg.set_query_timeout(Duration::from_secs(30));
            // No periodic bootstrap of kad's own (every 5 minutes): each
            // is a dozen lookups that dial a few dozen peers, each dial
            // some 7.5 KB of handshakes and identify, which would cost a
            // relay of a large network more than its directory. (Its
            // automatic one runs only while the routing table holds fewer
            // than 20 peers: at start.) We walk only while we want links.
            kad_cfg.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_cfg,
            );
            // A client stays out of every routing table. A relay is a
            // server even on loopback or private addresses, which would
            // otherwise keep it in client mode.
            kad.set_mode(Some(if cfg.client_only {
                kad::Mode::Client
            } else {
                kad::Mode::Server
            }));

            let codec = SyncCodec { limits: *limits };
            // A client asks and never answers: no peer can reconcile with
            // it, so its view is nobody's to read.
            let support = if cfg.client_only {
                ProtocolSupport::Outbound
            } else {
                ProtocolSupport::Full
            };
            let records = request_response::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(SYNC_PROTOCOL), support)],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_RECORD_STREAMS),
            );

            Behaviour {
                limits: connection_limits::Behaviour::new(limits_cfg),
                networks: inbound::Behaviour::default(),
                identify,
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
                kad: Toggle::from(
                    (!(cfg.client_only && cfg.client_fetch.is_some())).then_some(kad),
                ),
                records,
                announce: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
        .build();
    Ok(swarm)
}

/// `wait` give or take a quarter, so that nodes which lost the same peer
/// do not all dial it again at the same moment.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25))
}

/// `addr` without its trailing `/p2p/<peer id>`, if any.
fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Dials `peer` unless connected or dialing it already; false if no dial
/// was started.
fn dial(swarm: &mut Swarm<Behaviour>, peer: PeerId, addrs: Vec<Multiaddr>) -> bool {
    let opts = DialOpts::peer_id(peer)
        .addresses(addrs)
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .build();
    match swarm.dial(opts) {
        Ok(()) => true,
        Err(e) => {
            trace!(%peer, "not dialing: {e}");
            false
        }
    }
}

/// One of a client's fetch relays.
#[derive(Debug, Clone)]
struct FetchRelay {
    peer: PeerId,
    addr: Multiaddr,
    /// Dials that failed since the last that worked.
    failures: u32,
}

impl FetchRelay {
    fn new(peer: PeerId, addr: Multiaddr) -> Self {
        FetchRelay {
            peer,
            addr,
            failures: 0,
        }
    }
}

struct PeerState {
    addr: Multiaddr,
    connections: NonZeroU32,
    /// Whether we opened the first connection (a link of our choosing).
    dialed: bool,
    /// When the first connection came up.
    since: Instant,
}

struct Node {
    swarm: Swarm<Behaviour>,
    provider: RecordProvider,
    limits: SyncLimits,
    exchange_interval: Duration,
    /// A client's fetch slots, in place of `exchange_interval`.
    client_fetch: Option<FetchSlots>,
    /// Records accepted within this window are announced together
    /// ([`DiscoveryConfig::announce_every`]).
    announce_every: Duration,
    /// Which of its relays a client's next fetch is with (by age).
    fetch_rank: usize,
    target_peers: usize,
    /// A client pushes nothing and does not walk the DHT after its first
    /// lookup: it fetches, and tells relays nothing about its view.
    client_only: bool,
    events: mpsc::Sender<DiscoveryEvent>,
    commands: mpsc::Receiver<Command>,
    connected: HashMap<PeerId, PeerState>,
    /// Connected peers whose identify lists the sync protocol (relays; a
    /// client lists it only if it answers, which it does not): the only
    /// peers we open exchanges with after the first.
    servers: HashSet<PeerId>,
    /// Outbound sync requests in flight (the peer and the round of its
    /// exchange): at most one exchange per peer, plus plain wants of
    /// records another peer was late with ([`Node::ask`]).
    in_flight: HashMap<OutboundRequestId, (PeerId, usize)>,
    /// Digests we asked for and have not received, one set for all peers
    /// (a record several peers offer is asked of one at a time): the only
    /// records we take.
    wants: Wants<PeerId>,
    /// Digests accepted since the last announcement (at most
    /// [`MAX_DIGESTS`]; announced every `announce_every`).
    push_pending: Vec<RecordDigest>,
    /// Opens announcement streams.
    control: libp2p_stream::Control,
    /// Frames read from peers' announcement streams ([`push::accept`]).
    frames: mpsc::Receiver<push::Inbound>,
    /// Our announcement stream to each peer we announced to, as the queue
    /// of its writer task.
    writers: HashMap<PeerId, push::Writer>,
    /// What we announced to each peer lately: all it may ask for on the
    /// stream.
    offered: HashMap<PeerId, Offered>,
    /// Connected relays that accept announcement streams.
    announcers: HashSet<PeerId>,
    /// The announcers whose links we keep open.
    kept: Kept,
    /// The links of our choosing, connected or being dialed (at most
    /// `target_peers`): dialed by our walks, at start, or to fetch; not
    /// the dials a Kademlia query makes on its own, which close when
    /// idle.
    /// With the network of the address dialed (`None`: one counted per
    /// peer), so that a dial still pending holds its network.
    chosen: HashMap<PeerId, Option<NetGroup>>,
    /// Who sent each record delivered since the last announcement (at
    /// most what we asked for): an announcement of records that all came
    /// from one peer does not go back to it.
    delivered_by: HashMap<RecordDigest, PeerId>,
    /// The same for the window before.
    delivered_before: HashMap<RecordDigest, PeerId>,
    /// Bytes of answers to reconciliation requests, per network and in all.
    answers: AnswerBudget<NetGroup>,
    /// When a client tries another relay after a failed fetch.
    refetch_at: Option<Instant>,
    /// Whether any exchange of ours was answered yet.
    synced: bool,
    /// Whether an exchange of ours ever completed in this run (never
    /// cleared; `synced` is, when the node is cut off, and a client with
    /// fetch slots is cut off between its fetches).
    fetched_once: bool,
    /// When the client's fetch in progress began (unix seconds), when the
    /// last complete one began, and how many completed: between full
    /// fetches a client reconciles only what was published since
    /// ([`CLIENT_RECENT_MARGIN`], [`CLIENT_FULL_EVERY`]).
    fetch_started: Option<u64>,
    last_fetch: Option<u64>,
    fetches: u32,
    /// A client's fetch relays ([`FETCH_RELAYS`]), first reached first.
    fetch_relays: Vec<FetchRelay>,
    /// The relay a client with fetch slots dialed to fetch from (it
    /// fetches once the link is up).
    fetch_dialed: Option<PeerId>,
    /// Fetches a client has retried since its last scheduled one.
    fetch_retries: usize,
    pending_listeners: HashSet<libp2p::core::transport::ListenerId>,
    /// Bootstrap and known peers: dialled again while we have no
    /// connection at all ([`REDIAL_FIRST`]).
    entry: Vec<(PeerId, Multiaddr)>,
    ready: Option<oneshot::Sender<Result<(), DiscoveryError>>>,
    gossip_started: bool,
}

/// A timer that is never meant to fire (a year).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Node {
    async fn run(mut self) {
        let mut gossip = tokio::time::interval(self.exchange_interval);
        gossip.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A client with fetch slots reconciles at those instead.
        let fetch = tokio::time::sleep(self.next_fetch().unwrap_or(NEVER));
        tokio::pin!(fetch);
        let mut batch = tokio::time::interval(self.announce_every);
        batch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wants_check = tokio::time::interval(WANTS_CHECK);
        wants_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut keep_check = tokio::time::interval(KEEP_CHECK);
        keep_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let walk = tokio::time::sleep(FIRST_WALK);
        tokio::pin!(walk);
        // The wait after the next walk, and our own links when the last
        // one was made.
        let (mut walk_wait, mut walked_with) = (WALK_INTERVAL / 2, 0);
        let mut redial_wait = REDIAL_FIRST;
        let redial = tokio::time::sleep(REDIAL_FIRST);
        tokio::pin!(redial);
        if self.pending_listeners.is_empty() {
            self.signal_ready(Ok(()));
        }

        loop {
            // `biased`: local work (commands, timers) before new peer input.
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::ListenAddrs(tx)) => {
                        let _ = tx.send(self.swarm.listeners().cloned().collect());
                    }
                    Some(Command::ConnectedPeers(tx)) => {
                        let _ = tx.send(
                            self.connected.iter().map(|(p, s)| (*p, s.addr.clone())).collect(),
                        );
                    }
                    Some(Command::FetchRelays(tx)) => {
                        let _ = tx.send(
                            self.fetch_relays.iter().map(|r| (r.peer, r.addr.clone())).collect(),
                        );
                    }
                    Some(Command::ExchangeNow) => {
                        self.gossip_round();
                        gossip.reset();
                    }
                    Some(Command::Announce(digests)) => self.queue_push(digests),
                    Some(Command::Shutdown(tx)) => {
                        debug!("discovery node shutting down");
                        drop(self.swarm);
                        let _ = tx.send(());
                        return;
                    }
                    None => {
                        debug!("all discovery handles dropped; stopping");
                        return;
                    }
                },
                _ = gossip.tick(), if self.gossip_started && self.client_fetch.is_none() => {
                    self.gossip_round();
                }
                () = &mut fetch, if self.gossip_started && self.client_fetch.is_some() => {
                    self.gossip_round();
                    let next = self.next_fetch().unwrap_or(NEVER);
                    fetch.as_mut().reset(Instant::now() + next);
                }
                _ = batch.tick() => self.flush_push(),
                _ = wants_check.tick() => {
                    let asks = self.wants.expire(Instant::now());
                    self.ask(asks);
                    if self.refetch_at.is_some_and(|t| Instant::now() >= t) {
                        self.refetch_at = None;
                        self.gossip_round();
                    }
                }
                _ = keep_check.tick() => self.keep_streams(),
                () = &mut walk, if !self.client_only => {
                    let next = if self.wants_peers() {
                        // Walks that found us no link since the last one
                        // lengthen the wait.
                        let outgoing = self.chosen.len();
                        walk_wait = if outgoing > walked_with {
                            WALK_INTERVAL
                        } else {
                            (walk_wait * 2).min(IDLE_WALK_INTERVAL)
                        };
                        walked_with = outgoing;
                        self.random_walk();
                        walk_wait
                    } else {
                        // Nothing to walk for; look again soon.
                        walked_with = 0;
                        walk_wait = WALK_INTERVAL;
                        WALK_INTERVAL
                    };
                    walk.as_mut().reset(Instant::now() + jittered(next));
                }
                () = &mut redial => {
                    redial_wait = self.redial(redial_wait);
                    redial.as_mut().reset(Instant::now() + jittered(redial_wait));
                }
                ev = self.swarm.select_next_some() => {
                    if self.handle_swarm_event(ev) {
                        // First connection: run the first round right away.
                        self.gossip_round();
                        gossip.reset();
                    }
                }
                // After the swarm's events: a flood of frames cannot hold
                // back connections, identify or reconciliation.
                Some((peer, frame)) = self.frames.recv() => self.handle_frame(peer, frame),
            }
        }
    }

    /// Dials the entry peers again if we have no connection at all, and
    /// returns the next wait: doubled after a try, the first again once
    /// connected (so a node that loses every peer later retries soon).
    fn redial(&mut self, wait: Duration) -> Duration {
        // A client back with its fetch relays and no directory yet tries
        // them again (they failed, or it was offline), with the same
        // backoff; their failures bring in the bootstrap peers.
        if self.connected.is_empty() && self.fetches_on_demand() && !self.fetched_once {
            debug!("no connections: dialling the fetch relays again");
            for r in self.fetch_relays.clone() {
                dial(&mut self.swarm, r.peer, vec![r.addr]);
            }
            return (wait * 2).min(REDIAL_MAX);
        }
        if !self.connected.is_empty() || self.entry.is_empty() || self.fetches_on_demand() {
            return REDIAL_FIRST;
        }
        debug!(
            peers = self.entry.len(),
            "no connections: dialling the bootstrap peers again"
        );
        for (peer, addr) in self.entry.clone() {
            let network = NetGroup::network(&addr);
            if dial(&mut self.swarm, peer, vec![addr]) && self.wants_peers() {
                self.chosen.insert(peer, network);
            }
        }
        (wait * 2).min(REDIAL_MAX)
    }

    fn signal_ready(&mut self, res: Result<(), DiscoveryError>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(res);
        }
    }

    /// Sends a non-blocking event; drops it when the channel is full.
    fn emit(&self, ev: DiscoveryEvent) {
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                debug!("event channel full; dropping {}", event_name(&ev));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn random_walk(&mut self) {
        trace!("random walk");
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            kad.get_closest_peers(PeerId::random());
        }
    }

    /// Whether we hold fewer links of our choosing than `target_peers`.
    fn wants_peers(&self) -> bool {
        self.chosen.len() < self.target_peers
    }

    /// Makes `peer` a link of our choosing if we hold fewer than
    /// `target_peers`: dials it if we are not connected and are below the
    /// connection limit, or, if `adopt`, takes a link we dialed already (a
    /// walk's query's) as one. Each node keeps a few links of its own
    /// choosing and accepts others', so its connections (and their pings,
    /// identify and reconciliation) do not grow with the network. At most
    /// one chosen link per network ([`NetGroup`]): whoever answers our
    /// walks cannot fill them from one. A client that fetches from its
    /// fetch relays chooses no links.
    fn maybe_dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, adopt: bool) {
        if peer == *self.swarm.local_peer_id()
            || self.chosen.contains_key(&peer)
            || !self.wants_peers()
            || self.fetches_on_demand()
        {
            return;
        }
        // Every address it could be reached at counts, not the first only.
        let connected = self.connected.get(&peer).map(|c| &c.addr);
        let candidate: Vec<&Multiaddr> = connected.into_iter().chain(&addrs).collect();
        if kept::network_taken(candidate, self.chosen.values().flatten()) {
            return;
        }
        if let Some(state) = self.connected.get(&peer) {
            if state.dialed && adopt {
                self.chosen.insert(peer, NetGroup::network(&state.addr));
                self.keep(peer);
            }
            return;
        }
        let established = self
            .swarm
            .network_info()
            .connection_counters()
            .num_established();
        if addrs.is_empty() || established >= MAX_ESTABLISHED {
            return;
        }
        let network = addrs.iter().find_map(NetGroup::network);
        if dial(&mut self.swarm, peer, addrs) {
            self.chosen.insert(peer, network);
        }
    }

    /// Keeps the link to `peer`, a connected relay that takes
    /// announcements, open if [`Kept`] admits it (a client keeps none):
    /// opens the announcement stream that holds it, before there is
    /// anything to announce on it, and lets go of a link it evicted.
    fn keep(&mut self, peer: PeerId) {
        if self.client_only || !self.announcers.contains(&peer) {
            return;
        }
        let Some(state) = self.connected.get(&peer) else {
            return;
        };
        let group = NetGroup::of(&state.addr, peer);
        let chose = self.chosen.contains_key(&peer);
        let admit = self.kept.admit(peer, chose, group);
        if let Some(out) = admit.evicted {
            debug!(%peer, evicted = %out, "an inbound link from a busier network is no longer kept");
            // Its stream closes; a new one, if we announce to it, does not
            // hold the link.
            self.writers.remove(&out);
        }
        if admit.kept {
            let _ = self.writer(peer);
        }
    }

    /// Opens again the stream of a kept link whose stream failed (without
    /// it the link closes when idle).
    fn keep_streams(&mut self) {
        let dead: Vec<PeerId> = self
            .kept
            .peers()
            .filter(|p| self.writers.get(p).is_none_or(push::Writer::is_closed))
            .collect();
        for peer in dead {
            let _ = self.writer(peer);
        }
    }

    /// Up to `n` random relays we have no exchange in flight with.
    fn idle_servers(&self, n: usize) -> Vec<PeerId> {
        // One on a link we chose, if one is idle: whatever our own links
        // hold reaches us within a round or two.
        let idle: Vec<PeerId> = self.idle().collect();
        choose_with_own(
            &idle,
            |p| self.kept.is_own(p),
            1,
            n,
            &mut rand::thread_rng(),
        )
    }

    /// The relays we serve with that have no exchange of ours in flight.
    fn idle(&self) -> impl Iterator<Item = PeerId> + '_ {
        let busy: HashSet<PeerId> = self.in_flight.values().map(|(p, _)| *p).collect();
        self.servers
            .iter()
            .copied()
            .filter(move |p| !busy.contains(p))
    }

    /// How long until a client's next fetch ([`FetchSlots`]), if it has
    /// fetch slots; notes which of its relays that fetch is with.
    fn next_fetch(&mut self) -> Option<Duration> {
        let slots = self.client_fetch?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (delay, rank) = slots.next(now, rand::random::<f64>());
        self.fetch_rank = rank;
        self.fetch_retries = 0;
        Some(delay)
    }

    /// The relay a client fetches from: with fetch slots, its fetch relay
    /// of that rank if connected and idle (`None`: dial it); otherwise, of
    /// the relays with no exchange in flight, by how long we have been
    /// connected, the `rank`-th (0: the longest, which has had the longest
    /// to catch up with the network; a relay that just joined may still be
    /// fetching itself), or the newest if there are fewer.
    fn client_server(&self, rank: usize) -> Option<PeerId> {
        if self.fetches_on_demand() {
            // Its fetch relay of that rank, if connected; else one to dial.
            let relay = self
                .fetch_relays
                .get(rank % self.fetch_relays.len().max(1))?;
            return self.idle().any(|p| p == relay.peer).then_some(relay.peer);
        }
        let mut by_age: Vec<(Instant, PeerId)> = self
            .idle()
            .filter_map(|p| self.connected.get(&p).map(|s| (s.since, p)))
            .collect();
        by_age.sort_unstable();
        by_age
            .get(rank.min(by_age.len().saturating_sub(1)))
            .map(|(_, p)| *p)
    }

    /// Whether this is a client that connects to fetch, at its fetch slots
    /// (after its first fetch): it keeps no link open in between (a relay
    /// keeps none open for it) and reconciles only when it fetches.
    fn fetches_on_demand(&self) -> bool {
        self.has_fetch_slots() && !self.fetch_relays.is_empty()
    }

    /// Whether this is a client with fetch slots.
    fn has_fetch_slots(&self) -> bool {
        self.client_only && self.client_fetch.is_some()
    }

    /// Dials the client's fetch relay for this fetch (its rank among them)
    /// to fetch once the link is up; a failed dial counts as a failed
    /// fetch (the next relay is tried soon).
    fn dial_for_fetch(&mut self) {
        let n = self.fetch_relays.len();
        let Some(FetchRelay { peer, addr, .. }) =
            self.fetch_relays.get(self.fetch_rank % n.max(1)).cloned()
        else {
            return;
        };
        if let Some(state) = self.connected.get(&peer) {
            // Connected but busy with an exchange: it fetches with that.
            // Connected a while and no longer serving (identify says so
            // within a second of connecting): that is a failure.
            let settled = state.since.elapsed() > Duration::from_secs(5);
            if settled && !self.servers.contains(&peer) {
                self.fetch_relay_failed(peer);
                self.fetch_failed();
            }
            return;
        }
        debug!(%peer, "dialing a fetch relay");
        if dial(&mut self.swarm, peer, vec![addr]) {
            self.fetch_dialed = Some(peer);
        } else {
            // Being dialed already (its connection comes, and fetches), or
            // not dialable: then it failed.
            if !self.swarm.is_connected(&peer) && self.fetch_dialed != Some(peer) {
                self.fetch_relay_failed(peer);
                self.fetch_failed();
            }
        }
    }

    /// Whether our directory lists relays but not `peer` among them.
    fn unlisted(&self, peer: &PeerId) -> bool {
        self.provider.lists_relay(peer) == Some(false) && !self.provider.relays(1).is_empty()
    }

    /// At a fetch: fetch relays the directory we hold does not list are
    /// dropped (any key can claim to serve it; the first relays a client
    /// meets are its bootstrap peers' choice) and, while there are fewer
    /// than [`FETCH_RELAYS`], relays it lists are taken or dialed, no more
    /// than are missing.
    fn drop_unlisted_fetch_relays(&mut self) {
        let unlisted: Vec<PeerId> = self
            .fetch_relays
            .iter()
            .map(|r| r.peer)
            .filter(|p| self.unlisted(p))
            .collect();
        if !unlisted.is_empty() {
            debug!(
                dropped = unlisted.len(),
                "fetch relays the directory does not list: dropped"
            );
            self.fetch_relays.retain(|r| !unlisted.contains(&r.peer));
        }
        if self.fetch_relays.len() >= FETCH_RELAYS {
            return;
        }
        let mut missing = FETCH_RELAYS - self.fetch_relays.len();
        for (p, addr) in self.provider.relays(FETCH_RELAYS) {
            if missing == 0 {
                break;
            }
            if self.fetch_relays.iter().any(|r| r.peer == p) {
                continue;
            }
            missing -= 1;
            match self.connected.get(&p) {
                // Connected and serving already: taken now (identify,
                // which takes fetch relays, has been and gone).
                Some(state) if state.dialed && self.servers.contains(&p) => {
                    if self.fetch_relays.len() < FETCH_RELAYS {
                        self.fetch_relays
                            .push(FetchRelay::new(p, state.addr.clone()));
                    }
                }
                Some(_) => {}
                None => {
                    dial(&mut self.swarm, p, vec![addr]);
                }
            }
        }
    }

    /// A dial of a fetch relay or an exchange with one failed: after
    /// [`FETCH_RELAY_FAILURES`] in a row it is forgotten, and with none
    /// left the client dials relays from its directory (or, with none
    /// there, its bootstrap peers) and takes the first that serve. Before
    /// its first fetch (a client back with the fetch relays of its last
    /// run), once every fetch relay has failed, it also dials its bootstrap
    /// peers to fetch from, and keeps its fetch relays (it may only be
    /// offline).
    fn fetch_relay_failed(&mut self, peer: PeerId) {
        let Some(r) = self.fetch_relays.iter_mut().find(|r| r.peer == peer) else {
            return;
        };
        r.failures += 1;
        if r.failures < FETCH_RELAY_FAILURES {
            if !self.fetched_once && self.fetch_relays.iter().all(|r| r.failures > 0) {
                debug!("no remembered fetch relay answers: fetching from the bootstrap peers");
                for (p, addr) in self.entry.clone() {
                    dial(&mut self.swarm, p, vec![addr]);
                }
            }
            return;
        }
        debug!(%peer, "forgetting a fetch relay that failed {FETCH_RELAY_FAILURES} times in a row");
        self.fetch_relays.retain(|r| r.peer != peer);
        if self.fetch_relays.is_empty() {
            let mut relays = self.provider.relays(FETCH_RELAYS);
            debug!(
                found = relays.len(),
                "no fetch relay left: dialing relays from the directory"
            );
            if relays.is_empty() {
                relays = self.entry.clone();
            }
            for (p, addr) in relays {
                dial(&mut self.swarm, p, vec![addr]);
            }
        }
    }

    /// A fetch failed (the exchange or the dial): a client tries its next
    /// relay soon, a few times a slot, instead of waiting for the next
    /// slot.
    fn fetch_failed(&mut self) {
        if self.client_only && self.fetch_retries < MAX_FETCH_RETRIES {
            self.fetch_retries += 1;
            self.fetch_rank += 1;
            self.refetch_at = Some(Instant::now() + FETCH_RETRY);
        }
    }

    fn gossip_round(&mut self) {
        self.gossip_started = true;
        // A client reconciles with one relay a round; a relay with a few.
        // At each fetch after its first, a client checks its fetch relays
        // against the directory it holds (the first fetch's records are
        // in it by now).
        if self.has_fetch_slots() && self.fetched_once {
            self.drop_unlisted_fetch_relays();
        }
        let peers: Vec<PeerId> = if self.client_only {
            self.client_server(self.fetch_rank).into_iter().collect()
        } else {
            self.idle_servers(GOSSIP_FANOUT)
        };
        if peers.is_empty() {
            if self.fetches_on_demand() {
                self.dial_for_fetch();
            }
            return;
        }
        let msg = self.fetch_open();
        for peer in peers {
            self.send_sync(peer, msg.clone(), 1);
        }
    }

    /// The first message of a periodic exchange: a relay's covers every
    /// record; a client's, between full fetches, only those published
    /// since its last complete fetch began, less [`CLIENT_RECENT_MARGIN`]
    /// (what changed elsewhere, the records new ones replaced, it settles
    /// by itself; see `sync::open_spans`).
    fn fetch_open(&mut self) -> SyncMessage {
        if !self.client_only {
            return sync::open(&*self.provider);
        }
        self.fetch_started = Some(unix_secs());
        let spans = match self.last_fetch {
            Some(last) if self.fetches % CLIENT_FULL_EVERY != 0 => {
                self.provider.spans_since(recent_since(last))
            }
            _ => None,
        };
        match spans {
            Some(spans) => sync::open_spans(&*self.provider, &spans),
            None => sync::open(&*self.provider),
        }
    }

    /// Queues `digests` for the next announcement (`announce_every`); a full
    /// batch goes at once.
    fn queue_push(&mut self, digests: Vec<RecordDigest>) {
        if self.client_only {
            return;
        }
        for d in digests {
            if self.push_pending.len() >= MAX_DIGESTS {
                self.flush_push();
            }
            self.push_pending.push(d);
        }
    }

    /// Announces the queued digests to the relays
    /// [`announcement_peers`] picks, one frame on each one's announcement
    /// stream.
    fn flush_push(&mut self) {
        // Deliveries of this window and the last (a record is verified and
        // handed back for announcing a little after it arrived).
        let before = std::mem::replace(
            &mut self.delivered_before,
            std::mem::take(&mut self.delivered_by),
        );
        if self.push_pending.is_empty() {
            return;
        }
        let mut digests = std::mem::take(&mut self.push_pending);
        digests.sort_unstable();
        digests.dedup();
        let wire = Frame::Announce(digests.iter().map(announce::short_id).collect()).encode();
        // Not back to the peer that sent them all (it holds them).
        let origin = digests
            .iter()
            .map(|d| self.delivered_before.get(d).or_else(|| before.get(d)))
            .reduce(|a, b| if a == b { a } else { None })
            .flatten()
            .copied();
        // Most of the links others chose to us, and one we chose.
        let candidates: Vec<PeerId> = self
            .announcers
            .iter()
            .copied()
            .filter(|p| Some(*p) != origin)
            .collect();
        let peers = announcement_peers(
            &candidates,
            |p| self.kept.is_own(p),
            |p| self.kept.contains(p) && !self.kept.is_own(p),
            &mut rand::thread_rng(),
        );
        let now = Instant::now();
        for peer in peers {
            self.offered.entry(peer).or_default().add(&digests, now);
            self.send_frame(peer, wire.clone());
        }
    }

    /// Our announcement stream to `peer`, opened if there is none (or the
    /// last one failed); none for a peer that is not a connected relay
    /// taking announcements (opening a stream would dial it).
    fn writer(&mut self, peer: PeerId) -> Option<&push::Writer> {
        if !self.announcers.contains(&peer) || !self.connected.contains_key(&peer) {
            return None;
        }
        let keep = self.kept.contains(&peer);
        // A stream opened before the link was kept does not hold it.
        if self
            .writers
            .get(&peer)
            .is_none_or(|w| w.is_closed() || (keep && !w.keeps_link()))
        {
            let w = push::writer(self.control.clone(), peer, keep);
            self.writers.insert(peer, w);
        }
        self.writers.get(&peer)
    }

    /// Queues an encoded frame on our announcement stream to `peer`. A
    /// full queue drops it: reconciliation carries what it would have.
    fn send_frame(&mut self, peer: PeerId, wire: Vec<u8>) -> bool {
        let sent = self.writer(peer).is_some_and(|w| w.send(wire));
        if !sent {
            debug!(%peer, "announcement frame not sent: no stream or its queue is full");
        }
        sent
    }

    /// Answers a frame from a peer's announcement stream: an announcement
    /// with a want of what we lack (if anything), a want with the records
    /// we announced to it, records by delivering those we asked for.
    fn handle_frame(&mut self, peer: PeerId, frame: Frame) {
        let now = Instant::now();
        let limits = announce::frame_limits(&self.limits);
        match frame {
            Frame::Announce(mut ids) => {
                // Only what we can ask for now is claimed: a want that is
                // not sent would hold the records back from other peers.
                let room = Frame::ids_len(ids.len());
                if !self.writer(peer).is_some_and(|w| w.has_room(room)) {
                    return;
                }
                ids.sort_unstable();
                ids.dedup();
                // Kept under their stand-ins until the records come (we
                // know them by short id only).
                let mut want: Vec<RecordDigest> = self
                    .provider
                    .unknown_short(&ids)
                    .iter()
                    .map(announce::stand_in)
                    .collect();
                let own = self.kept.is_own(&peer);
                self.wants
                    .claim_within(peer, &mut want, now, Budget::ANNOUNCED.on_own(own));
                if !want.is_empty() {
                    let ids = want.iter().map(announce::short_id).collect();
                    self.send_frame(peer, Frame::Want(ids).encode());
                }
            }
            Frame::Want(ids) => {
                let Some(offered) = self.offered.get_mut(&peer) else {
                    return;
                };
                let mut want = offered.resolve(&ids, now);
                // As many records frames as the want needs and the queue
                // takes; what is left stays offered for a later want.
                while !want.is_empty() {
                    let msg = SyncMessage {
                        want: want.clone(),
                        ..SyncMessage::default()
                    };
                    let answer = sync::process(&*self.provider, &msg, &limits);
                    if answer.records.is_empty() {
                        return;
                    }
                    let served: Vec<RecordDigest> =
                        answer.records.iter().map(|r| sync::digest(r)).collect();
                    if !self.send_frame(peer, Frame::Records(answer.records).encode()) {
                        return;
                    }
                    if let Some(o) = self.offered.get_mut(&peer) {
                        o.served(&served);
                    }
                    want.retain(|d| !served.contains(d));
                }
            }
            Frame::Records(records) => self.deliver(peer, records),
        }
    }

    /// Sends plain wants (records asked of another peer after the first
    /// did not deliver): one request each, whatever else is in flight with
    /// the peer, answered without a further round.
    fn ask(&mut self, asks: Vec<(PeerId, Vec<RecordDigest>)>) {
        for (peer, mut want) in asks {
            trace!(%peer, n = want.len(), "asking another peer for late records");
            // Records known by short id only (announced) are asked on the
            // announcement stream: the peer offered them there.
            let (short, full): (Vec<RecordDigest>, Vec<RecordDigest>) =
                want.drain(..).partition(announce::is_stand_in);
            want = full;
            if !short.is_empty() {
                let ids = short.iter().map(announce::short_id).collect();
                self.send_frame(peer, Frame::Want(ids).encode());
            }
            if want.is_empty() {
                continue;
            }
            let msg = SyncMessage {
                want,
                ..SyncMessage::default()
            };
            let id = self.swarm.behaviour_mut().records.send_request(&peer, msg);
            // The last round there is: answered, never followed.
            self.in_flight.insert(id, (peer, usize::MAX));
        }
    }

    /// Sends round `round` of an exchange with `peer`: a new exchange
    /// (round 1) only if none is in flight with it.
    fn send_sync(&mut self, peer: PeerId, msg: SyncMessage, round: usize) {
        if round == 1 && self.in_flight.values().any(|(p, _)| *p == peer) {
            return;
        }
        let id = self.swarm.behaviour_mut().records.send_request(&peer, msg);
        self.in_flight.insert(id, (peer, round));
    }

    /// Hands the records a peer sent (unverified) to the node: only those
    /// we asked for (of it, or of a peer that was late), each once.
    fn deliver(&mut self, from: PeerId, records: Vec<Vec<u8>>) {
        if records.is_empty() {
            return;
        }
        let total = records.len();
        let mut taken = Vec::with_capacity(records.len());
        for r in records {
            let d = sync::digest(&r);
            // Asked for by digest, or by short id (announced).
            let by_digest = self.wants.delivered(&d);
            let by_short = self.wants.delivered(&announce::stand_in_of(&d));
            if by_digest || by_short {
                if !self.client_only {
                    self.delivered_by.insert(d, from);
                }
                taken.push(r);
            }
        }
        let records = taken;
        if records.len() < total {
            debug!(%from, dropped = total - records.len(), "records nobody asked for");
        }
        if !records.is_empty() {
            self.emit(DiscoveryEvent::Records { from, records });
        }
    }

    /// Handles one swarm event; returns true when this was our first
    /// connection ever (so the caller starts the gossip timer).
    fn handle_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) -> bool {
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                debug!(%address, "listening");
                self.emit(DiscoveryEvent::Listening(address));
                self.pending_listeners.remove(&listener_id);
                if self.pending_listeners.is_empty() {
                    self.signal_ready(Ok(()));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Err(e) = &reason {
                    warn!("a listener failed: {e}");
                }
                if self.pending_listeners.remove(&listener_id) {
                    self.signal_ready(Err(DiscoveryError::Listen {
                        addr: addresses
                            .into_iter()
                            .next()
                            .unwrap_or_else(Multiaddr::empty),
                        reason: match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        },
                    }));
                }
            }
            SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                let first_ever = !self.gossip_started;
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, %addr, "peer connected");
                    self.connected.insert(
                        peer_id,
                        PeerState {
                            addr: addr.clone(),
                            connections: num_established,
                            dialed: endpoint.is_dialer(),
                            since: Instant::now(),
                        },
                    );
                    self.emit(DiscoveryEvent::PeerConnected {
                        peer: peer_id,
                        addr,
                    });
                    // Exchange at once with peers we dialed (the dialer
                    // does it, so a new link carries one exchange, not two;
                    // a client only ever dials). A client with fetch slots
                    // that has its directory fetches at those only: with
                    // the relay it dialed for the fetch.
                    let on_demand = self.fetches_on_demand();
                    let for_fetch = self.fetch_dialed == Some(peer_id);
                    if for_fetch {
                        self.fetch_dialed = None;
                    }
                    // A relay that is reconciling already (a joining
                    // relay's first links: the first brings the directory,
                    // the rest would bring all its digests again) leaves
                    // the new link to its rounds and announcements.
                    let busy = !self.client_only && !self.in_flight.is_empty();
                    // A client that has no directory yet fetches from the
                    // first relay it reaches (its remembered fetch relays
                    // are all it dials).
                    let first = !self.fetched_once && self.in_flight.is_empty();
                    if endpoint.is_dialer() && (!on_demand || for_fetch || first) && !busy {
                        let msg = self.fetch_open();
                        self.send_sync(peer_id, msg, 1);
                    }
                    return first_ever;
                } else if let Some(state) = self.connected.get_mut(&peer_id) {
                    state.connections = num_established;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => match NonZeroU32::new(num_established) {
                None => {
                    debug!(peer = %peer_id, "peer disconnected");
                    self.connected.remove(&peer_id);
                    self.servers.remove(&peer_id);
                    self.announcers.remove(&peer_id);
                    self.kept.remove(&peer_id);
                    self.chosen.remove(&peer_id);
                    self.writers.remove(&peer_id);
                    self.offered.remove(&peer_id);
                    let asks = self.wants.peer_gone(peer_id, Instant::now());
                    self.ask(asks);
                    self.emit(DiscoveryEvent::PeerDisconnected { peer: peer_id });
                    if self.connected.is_empty() {
                        // Cut off: the next links bring what we missed.
                        self.synced = false;
                    }
                }
                Some(n) => {
                    if let Some(state) = self.connected.get_mut(&peer_id) {
                        state.connections = n;
                    }
                }
            },
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, "dial failed: {error}");
                if let Some(peer) = peer_id {
                    if !self.connected.contains_key(&peer) {
                        self.chosen.remove(&peer);
                    }
                    if Some(peer) == self.fetch_dialed {
                        self.fetch_dialed = None;
                        self.fetch_relay_failed(peer);
                        self.fetch_failed();
                    } else if !self.fetched_once {
                        // A remembered fetch relay dialed at start (or
                        // again by `redial`).
                        self.fetch_relay_failed(peer);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!("incoming connection failed: {error}");
            }
            SwarmEvent::Behaviour(ev) => self.handle_behaviour_event(ev),
            _ => {}
        }
        false
    }

    fn handle_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Records(ev) => self.handle_records_event(ev),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    debug!(peer = %peer_id, "peer is not a veilnet node; ignoring its addresses");
                    return;
                }
                if info.protocols.contains(&StreamProtocol::new(SYNC_PROTOCOL)) {
                    if let Some(state) = self.connected.get(&peer_id) {
                        self.servers.insert(peer_id);
                        // A client's first relays it dialed that serve the
                        // directory are its fetch relays.
                        if self.has_fetch_slots()
                            && state.dialed
                            && self.fetch_relays.len() < FETCH_RELAYS
                            && !self.fetch_relays.iter().any(|r| r.peer == peer_id)
                            && !self.unlisted(&peer_id)
                        {
                            self.fetch_relays
                                .push(FetchRelay::new(peer_id, state.addr.clone()));
                        }
                    }
                }
                if info.protocols.contains(&push::protocol())
                    && self.connected.contains_key(&peer_id)
                {
                    self.announcers.insert(peer_id);
                    self.keep(peer_id);
                }
                let kad_proto = StreamProtocol::new(KAD_PROTOCOL);
                if !info.protocols.contains(&kad_proto) {
                    return;
                }
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for addr in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                        kad.add_address(&peer_id, without_p2p(&addr));
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                // Not a Kademlia query's own dial: those are not ours to
                // keep (anyone can be in a query's path).
                let addrs = addresses.into_vec();
                self.maybe_dial(peer, addrs, false);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { result, .. }) => {
                let peers = match result {
                    kad::QueryResult::GetClosestPeers(Ok(ok)) => ok.peers,
                    kad::QueryResult::GetClosestPeers(Err(
                        kad::GetClosestPeersError::Timeout { peers, .. },
                    )) => peers,
                    kad::QueryResult::Bootstrap(Err(e)) => {
                        debug!("kademlia bootstrap failed: {e}");
                        return;
                    }
                    _ => return,
                };
                for p in peers {
                    self.maybe_dial(p.peer_id, p.addrs, true);
                }
            }
            _ => {}
        }
    }

    fn handle_records_event(&mut self, ev: request_response::Event<SyncMessage, SyncMessage>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let now = Instant::now();
                // The least it can cost (the keys it makes us read) is
                // checked before any work, the whole cost after. Over
                // budget, the request fails at the peer: an empty answer
                // would read as "we agree".
                let least = sync::answer_cost(&*self.provider, &request, &SyncMessage::default());
                // Budgets by network; a link we chose is not refused by the
                // total that strangers can drain.
                let ours = self.kept.is_own(&peer);
                // (A link we chose has a bucket of its own, not its
                // network's, which strangers in it could drain.)
                let asker = match self.connected.get(&peer) {
                    Some(c) if !ours => NetGroup::of(&c.addr, peer),
                    _ => NetGroup::Peer(peer),
                };
                if !self.answers.allows(asker, least, now, ours) {
                    debug!(%peer, least, "request over the peer's answer budget: refused");
                    drop(channel);
                    return;
                }
                let mut response = sync::process(&*self.provider, &request, &self.limits);
                let cost = sync::answer_cost(&*self.provider, &request, &response);
                self.deliver(peer, request.records);
                if !self.answers.take(asker, cost, now, ours) {
                    debug!(%peer, cost, "answer over the peer's answer budget: refused");
                    drop(channel);
                    return;
                }
                // An exchange another peer started claims from a smaller
                // share than ours (`Budget::ANSWERED`).
                // (Never a digest shaped as an announcement's stand-in: a
                // real one is that by a chance of 2^-192.)
                response.want.retain(|d| !announce::is_stand_in(d));
                self.wants.claim_within(
                    peer,
                    &mut response.want,
                    now,
                    Budget::ANSWERED.on_own(ours),
                );
                if self
                    .swarm
                    .behaviour_mut()
                    .records
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!(%peer, "could not answer a record exchange: stream gone");
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let round = self
                    .in_flight
                    .remove(&request_id)
                    .map_or(usize::MAX, |(_, r)| r);
                if let Some(r) = self.fetch_relays.iter_mut().find(|r| r.peer == peer) {
                    r.failures = 0;
                }
                let mut next = sync::process(&*self.provider, &response, &self.limits);
                self.deliver(peer, response.records);
                match sync::after_round(round, next.is_empty()) {
                    AfterRound::Continue => {
                        // Claimed only when sent: a want we keep to
                        // ourselves would hold the record back from others.
                        next.want.retain(|d| !announce::is_stand_in(d));
                        let own = self.kept.is_own(&peer);
                        self.wants.claim_within(
                            peer,
                            &mut next.want,
                            Instant::now(),
                            Budget::RECONCILE.on_own(own),
                        );
                        if !next.is_empty() {
                            self.send_sync(peer, next, round + 1);
                        }
                    }
                    AfterRound::Restart => {
                        let fresh = sync::open(&*self.provider);
                        self.send_sync(peer, fresh, round + 1);
                    }
                    AfterRound::Stop => {
                        // Complete: an exchange of ours (not a plain want,
                        // not an answer we no longer wait for) that ended
                        // with nothing left, not at the round cap.
                        let complete = round != usize::MAX && next.is_empty();
                        if complete {
                            self.fetched_once = true;
                            if let Some(started) = self.fetch_started.take() {
                                self.last_fetch = Some(started);
                                self.fetches = self.fetches.wrapping_add(1);
                            }
                        }
                        if !self.synced && complete {
                            self.synced = true;
                            // A relay's first complete exchange brought the
                            // directory from one link; one round with others
                            // now (a few fingerprints each when they agree)
                            // brings what that link held back.
                            if !self.client_only {
                                self.gossip_round();
                            }
                        }
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.in_flight.remove(&request_id);
                debug!(%peer, "sync exchange failed: {error}");
                // What we asked of it goes to the next offerer now (it was
                // refused or lost, not late).
                let asks = self.wants.refused(peer, Instant::now());
                self.ask(asks);
                self.fetch_relay_failed(peer);
                self.fetch_failed();
                // A relay whose first exchanges all failed tries again
                // soon (its other links did not reconcile at once), every
                // 5 s until one is answered.
                if !self.client_only && !self.synced && self.in_flight.is_empty() {
                    self.refetch_at.get_or_insert(Instant::now() + FETCH_RETRY);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, "inbound sync exchange failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

fn event_name(ev: &DiscoveryEvent) -> &'static str {
    match ev {
        DiscoveryEvent::Listening(_) => "Listening",
        DiscoveryEvent::PeerConnected { .. } => "PeerConnected",
        DiscoveryEvent::PeerDisconnected { .. } => "PeerDisconnected",
        DiscoveryEvent::Records { .. } => "Records",
    }
}
