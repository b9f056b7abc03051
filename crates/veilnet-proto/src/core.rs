//! The shared state of one node's protocol engine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::debug;
use veilnet_crypto::circuit::OnionKeypair;
use veilnet_crypto::link::{LinkHandshake, LinkKey};

use crate::limits::Limits;
use crate::link::{self, Link, LinkTap, HANDSHAKE_TIMEOUT};
use crate::rate::RelayBuckets;
use crate::stats::Stats;
use crate::ProtoError;
use veilnet_circuit::policy::RelayPolicy;

/// Configuration of the protocol engine.
pub struct CoreConfig {
    /// The node's long-term identity (its libp2p key).
    pub identity: Keypair,
    /// The current onion key.
    pub onion: OnionKeypair,
    /// The previous onion key, still accepted until it expires.
    pub previous_onion: Option<OnionKeypair>,
    /// Whether this node relays circuits for others.
    pub relay: bool,
    /// Which circuits, extensions and streams this node admits, including
    /// whether it is an exit at all (see [`DefaultRelayPolicy`](crate::DefaultRelayPolicy)).
    pub policy: Arc<dyn RelayPolicy>,
    /// Resource limits.
    pub limits: Limits,
    /// Test hook observing all link bytes.
    pub tap: Option<LinkTap>,
}

/// Releases a per-address handshake slot when the handshake ends.
struct IpSlot<'a> {
    core: &'a Core,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut by_ip = self
            .core
            .handshakes_by_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// The settings the engine keeps from its [`CoreConfig`]. The onion keys are
/// not among them: they live only in `Core::onion_keys`, which rotation
/// updates, so no stale copy of a secret stays behind.
pub(crate) struct Settings {
    pub(crate) identity: Keypair,
    pub(crate) relay: bool,
    pub(crate) policy: Arc<dyn RelayPolicy>,
    pub(crate) limits: Limits,
    pub(crate) tap: Option<LinkTap>,
}

/// One node's protocol engine: its links and the circuits on them.
pub struct Core {
    pub(crate) cfg: Settings,
    /// Our link key: initiators must know it to open a link to us.
    link_key: LinkKey,
    /// The onion keys in use: the current one and the previous one, which is
    /// still accepted until it expires (clients may hold an older descriptor).
    onion_keys: std::sync::RwLock<(OnionKeypair, Option<OnionKeypair>)>,
    peer_id: PeerId,
    /// Links we opened to relays under our own identity, by the relay's
    /// identity (reused for EXTEND). Links the peer opened are not here:
    /// only a link's initiator creates circuits on it, so extending over an
    /// inbound link would be refused.
    links: Mutex<HashMap<PeerId, Arc<Link>>>,
    /// Links we opened as a client, under a throwaway identity each, so a
    /// guard cannot tell which node (or relay) its client is.
    client_links: Mutex<HashMap<PeerId, Arc<Link>>>,
    /// Every open link, for the limit and for shutdown.
    all_links: Mutex<HashMap<u64, std::sync::Weak<Link>>>,
    handshakes: Arc<Semaphore>,
    /// Handshakes in progress per source address, so one host cannot take
    /// every handshake slot.
    handshakes_by_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Exit connects in progress (each holds a socket and maybe a DNS thread).
    pub(crate) exit_connects: Arc<Semaphore>,
    /// What the engine did.
    pub stats: Arc<Stats>,
    /// Measurement sinks: streams that end in this node.
    pub(crate) sinks: Arc<crate::sink::Sinks>,
    /// The donated bandwidth's buckets, if limited.
    buckets: Option<Arc<RelayBuckets>>,
}

impl Core {
    /// Creates the engine; nothing runs until [`Core::serve`] or a circuit is built.
    pub fn new(cfg: CoreConfig) -> Result<Arc<Self>, ProtoError> {
        let CoreConfig {
            identity,
            onion,
            previous_onion,
            relay,
            policy,
            limits,
            tap,
        } = cfg;
        let cfg = Settings {
            identity,
            relay,
            policy,
            limits,
            tap,
        };
        cfg.limits
            .flow
            .validate()
            .map_err(|e| ProtoError::Invalid(format!("limits.flow: {e}")))?;
        let link_key = LinkKey::derive(&cfg.identity)?;
        let cfg_buckets = cfg
            .limits
            .relay_bandwidth
            .map(|limit| Arc::new(RelayBuckets::new(limit)));
        Ok(Arc::new(Self {
            link_key,
            peer_id: cfg.identity.public().to_peer_id(),
            onion_keys: std::sync::RwLock::new((onion, previous_onion)),
            handshakes: Arc::new(Semaphore::new(cfg.limits.max_pending_handshakes)),
            handshakes_by_ip: Mutex::new(HashMap::new()),
            exit_connects: Arc::new(Semaphore::new(crate::limits::MAX_EXIT_CONNECTS)),
            cfg,
            links: Mutex::new(HashMap::new()),
            client_links: Mutex::new(HashMap::new()),
            all_links: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            sinks: Arc::default(),
            buckets: cfg_buckets,
        }))
    }

    /// Our link key's public half, for the descriptor.
    pub fn link_key(&self) -> [u8; 32] {
        self.link_key.public
    }

    /// This node's measurement sinks ([`crate::Sinks`]).
    pub fn sinks(&self) -> &Arc<crate::sink::Sinks> {
        &self.sinks
    }

    /// This node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Replaces the onion keys after a rotation; circuits built with the
    /// previous key keep working, and new CREATEs may use either.
    pub fn set_onion_keys(&self, current: OnionKeypair, previous: Option<OnionKeypair>) {
        *self.onion_keys.write().unwrap_or_else(|e| e.into_inner()) = (current, previous);
    }

    /// The current onion public key.
    pub fn onion_public(&self) -> [u8; 32] {
        self.onion_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .public
    }

    /// Answers a circuit handshake with the current onion key, or else the previous one.
    pub(crate) fn onion_handshake(
        &self,
        msg: &[u8],
    ) -> Result<(Vec<u8>, veilnet_crypto::circuit::HopKeys), veilnet_crypto::CryptoError> {
        let keys = self.onion_keys.read().unwrap_or_else(|e| e.into_inner());
        veilnet_crypto::circuit::relay_handshake(&keys.0.secret, msg).or_else(|e| match &keys.1 {
            Some(prev) => veilnet_crypto::circuit::relay_handshake(&prev.secret, msg),
            None => Err(e),
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    pub(crate) fn tap(&self) -> Option<LinkTap> {
        self.cfg.tap.clone()
    }

    /// The open links, inbound and outbound.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.all_links()
            .values()
            .filter_map(|w| w.upgrade())
            .filter(|l| !l.is_closed())
            .collect()
    }

    fn all_links(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::sync::Weak<Link>>> {
        self.all_links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of open links.
    pub fn link_count(&self) -> usize {
        self.all_links().len()
    }

    /// Closes links that have carried no circuit for `limit`; call it
    /// periodically. Returns how many were closed.
    pub fn close_idle_links(&self, limit: Duration) -> usize {
        let links: Vec<_> = self
            .all_links()
            .values()
            .filter_map(|w| w.upgrade())
            .collect();
        let mut closed = 0;
        for l in links {
            if l.idle_for(limit) {
                l.close();
                closed += 1;
            }
        }
        closed
    }

    /// Closes every link (shutdown).
    pub fn close_all_links(&self) {
        let links: Vec<_> = self
            .all_links()
            .values()
            .filter_map(|w| w.upgrade())
            .collect();
        for l in links {
            l.close();
        }
    }

    /// Starts an authenticated link and counts it.
    /// `relayed`: the link carries relayed traffic (every inbound link,
    /// and links we open as a relay), which the donated bandwidth limits;
    /// our own client links do not.
    fn register(
        self: &Arc<Self>,
        stream: TcpStream,
        session: veilnet_crypto::link::LinkSession,
        initiator: bool,
        relayed: bool,
    ) -> Arc<Link> {
        let settings = link::LinkSettings {
            queue: self.limits().link_queue,
            rekey: self.limits().link_rekey,
            tap: self.tap(),
            rate: self.buckets.clone().filter(|_| relayed),
        };
        let link = link::start(self, stream, session, initiator, settings);
        self.all_links().insert(link.id, Arc::downgrade(&link));
        link
    }

    /// Accepts inbound links until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.link_count() >= self.cfg.limits.max_links {
                debug!("link limit reached; dropping a connection");
                continue;
            }
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                debug!("too many link handshakes in progress; dropping a connection");
                continue;
            };
            let ip = from.ip();
            {
                let mut by_ip = self
                    .handshakes_by_ip
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let n = by_ip.entry(ip).or_insert(0);
                if *n >= self.cfg.limits.max_pending_handshakes_per_ip {
                    debug!("too many link handshakes from one address; dropping a connection");
                    continue;
                }
                *n += 1;
            }
            let core = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _slot = IpSlot { core: &core, ip };
                // A failed inbound handshake is usually a scanner that does not
                // know our link key: it gets no answer, and we log quietly.
                if let Err(e) = core.accept_link(stream).await {
                    debug!(%from, "inbound link failed: {e}");
                }
            });
        }
    }

    async fn accept_link(self: &Arc<Self>, mut stream: TcpStream) -> Result<(), ProtoError> {
        let hs = LinkHandshake::responder(&self.cfg.identity, &self.link_key)?;
        let tap = self.tap();
        let session = timeout(
            HANDSHAKE_TIMEOUT,
            link::handshake(&mut stream, hs, tap.as_ref()),
        )
        .await
        .map_err(|_| ProtoError::Timeout("link handshake"))??;
        // Registered (and kept alive by its tasks), but not offered for
        // EXTEND: see the `links` field.
        let link = self.register(stream, session, false, true);
        debug!(peer = %link.peer, "inbound link up");
        Ok(())
    }

    /// Returns the open link to relay `peer`, connecting to `addr` with the
    /// peer's link key if there is none. We authenticate as ourselves.
    pub async fn link_to(
        self: &Arc<Self>,
        peer: PeerId,
        addr: SocketAddr,
        link_key: &[u8; 32],
    ) -> Result<Arc<Link>, ProtoError> {
        self.get_or_connect(&self.links, Some(&self.cfg.identity), peer, addr, link_key)
            .await
    }

    /// Like [`Core::link_to`], for circuits we build as a client: the link
    /// authenticates with a fresh throwaway identity and is never shared
    /// with relayed traffic, so the guard learns nothing about who we are.
    pub async fn client_link_to(
        self: &Arc<Self>,
        peer: PeerId,
        addr: SocketAddr,
        link_key: &[u8; 32],
    ) -> Result<Arc<Link>, ProtoError> {
        self.get_or_connect(&self.client_links, None, peer, addr, link_key)
            .await
    }

    /// The open link in `map` to `peer`, or a new one authenticated as
    /// `identity` (`None`: a throwaway identity, made only when a link is
    /// actually opened).
    async fn get_or_connect(
        self: &Arc<Self>,
        map: &Mutex<HashMap<PeerId, Arc<Link>>>,
        identity: Option<&Keypair>,
        peer: PeerId,
        addr: SocketAddr,
        link_key: &[u8; 32],
    ) -> Result<Arc<Link>, ProtoError> {
        let lock = || map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lock().get(&peer) {
            if !l.is_closed() {
                return Ok(l.clone());
            }
        }
        let link = self.open_link(identity, peer, addr, link_key).await?;
        // Another task may have linked meanwhile; both links work, keep the newest.
        lock().insert(peer, link.clone());
        Ok(link)
    }

    /// A new link to `peer` under a throwaway identity that no other
    /// circuit will use (it is in no map that circuits are given links
    /// from): for a measurement circuit, so that the relay measured cannot
    /// tie it to our other circuits. Close it when done ([`Link::close`]).
    pub async fn separate_client_link(
        self: &Arc<Self>,
        peer: PeerId,
        addr: SocketAddr,
        link_key: &[u8; 32],
    ) -> Result<Arc<Link>, ProtoError> {
        self.open_link(None, peer, addr, link_key).await
    }

    /// Connects and authenticates a link to `peer` as `identity` (`None`:
    /// a throwaway one) and registers it.
    async fn open_link(
        self: &Arc<Self>,
        identity: Option<&Keypair>,
        peer: PeerId,
        addr: SocketAddr,
        link_key: &[u8; 32],
    ) -> Result<Arc<Link>, ProtoError> {
        if peer == self.peer_id {
            return Err(ProtoError::Invalid("cannot link to ourselves".into()));
        }
        if self.link_count() >= self.cfg.limits.max_links {
            return Err(ProtoError::Limit("open links"));
        }
        let identity_is_ours = identity.is_some();
        let throwaway;
        let identity = match identity {
            Some(id) => id,
            None => {
                throwaway = Keypair::generate_ed25519();
                &throwaway
            }
        };
        let connect = async {
            let mut stream = TcpStream::connect(addr).await?;
            let hs = LinkHandshake::initiator(identity, link_key)?;
            let session = link::handshake(&mut stream, hs, self.tap().as_ref()).await?;
            Ok::<_, ProtoError>((stream, session))
        };
        let (stream, session) = timeout(self.cfg.limits.connect_timeout, connect)
            .await
            .map_err(|_| ProtoError::Timeout("link connect"))??;
        if session.remote_peer != peer {
            return Err(ProtoError::WrongPeer {
                expected: peer.to_string(),
                got: session.remote_peer.to_string(),
            });
        }
        let link = self.register(stream, session, true, identity_is_ours);
        debug!(peer = %peer, "outbound link up");
        Ok(link)
    }

    /// Forgets a closed link and tears down its circuits.
    pub(crate) fn link_closed(self: &Arc<Self>, link: &Arc<Link>) {
        for map in [&self.links, &self.client_links] {
            let mut links = map.lock().unwrap_or_else(|e| e.into_inner());
            if links.get(&link.peer).is_some_and(|l| l.id == link.id) {
                links.remove(&link.peer);
            }
        }
        self.all_links().remove(&link.id);
        let circs: Vec<_> = link.table().keys().copied().collect();
        for circ in circs {
            self.teardown(link, circ, veilnet_cell::DestroyReason::LinkFailed, false);
        }
    }

    pub(crate) fn count(&self, c: &AtomicU64) {
        crate::stats::count(c);
    }
}
