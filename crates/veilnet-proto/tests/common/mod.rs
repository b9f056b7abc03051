//! Shared helpers for the engine tests: in-process nodes on loopback.
#![allow(dead_code, clippy::unwrap_used)]

pub mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, RwLock};

use libp2p_identity::{Keypair, PeerId};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veilnet_cell::TargetAddr;
use veilnet_crypto::circuit::OnionKeypair;
use veilnet_policy::ExitPolicy;
use veilnet_proto::{
    ClientCircuit, Core, CoreConfig, DefaultRelayPolicy, ExitConfig, HopSpec, KnownRelays, Limits,
    LinkTap,
};

/// The directory every test node shares: each node registers itself (they
/// are all relays) with its link address, so exits know the middles that
/// extend to them and relays extend only to listed addresses.
static RELAYS: LazyLock<RwLock<HashMap<PeerId, SocketAddr>>> = LazyLock::new(Default::default);

/// Puts `peer`, listening at `addr`, in the shared directory.
pub fn register_relay(peer: PeerId, addr: SocketAddr) {
    RELAYS.write().unwrap().insert(peer, addr);
}

pub fn known_relays() -> Arc<dyn KnownRelays> {
    Arc::new(|p: &PeerId, at: Option<&SocketAddr>| {
        RELAYS
            .read()
            .unwrap()
            .get(p)
            .is_some_and(|listed| at.is_none_or(|a| a == listed))
    })
}

pub struct Node {
    pub core: Arc<Core>,
    pub spec: HopSpec,
    pub onion: OnionKeypair,
}

/// How a test node is set up.
#[derive(Clone)]
pub struct Opts {
    /// An exit under the default exit policy.
    pub exit: bool,
    /// The exit may reach loopback targets.
    pub allow_private_targets: bool,
    /// The relay may extend circuits to loopback relays.
    pub private_links: bool,
    /// The exit serves one-hop circuits.
    pub one_hop_exits: bool,
    /// The node relays circuits for others (and is in the shared directory).
    pub relay: bool,
    /// Resource limits and key-update policies.
    pub limits: Limits,
    /// Observes every byte the node's links write.
    pub tap: Option<LinkTap>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            exit: false,
            allow_private_targets: false,
            private_links: true,
            one_hop_exits: false,
            relay: true,
            limits: Limits::default(),
            tap: None,
        }
    }
}

pub async fn node(exit: bool, allow_private: bool) -> Node {
    node_with(exit, allow_private, true).await
}

/// A node; `private_links` lets it extend circuits to loopback relays.
pub async fn node_with(exit: bool, allow_private: bool, private_links: bool) -> Node {
    node_opts(Opts {
        exit,
        allow_private_targets: allow_private,
        private_links,
        ..Opts::default()
    })
    .await
}

pub async fn node_opts(opts: Opts) -> Node {
    let identity = Keypair::generate_ed25519();
    let onion = OnionKeypair::generate().unwrap();
    let spec_key = onion.public;
    let onion_copy = onion.clone();
    let mut policy = DefaultRelayPolicy::new(known_relays());
    policy.allow_private_links = opts.private_links;
    policy.exit = opts.exit.then(|| {
        let mut exit = ExitConfig::new(ExitPolicy::default_exit());
        exit.danger_allow_private_targets = opts.allow_private_targets;
        exit.danger_allow_one_hop_exits = opts.one_hop_exits;
        exit
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if opts.relay {
        register_relay(identity.public().to_peer_id(), addr);
    }
    let core = Core::new(CoreConfig {
        identity,
        onion: onion.clone(),
        previous_onion: None,
        relay: opts.relay,
        policy: Arc::new(policy),
        limits: opts.limits,
        tap: opts.tap,
    })
    .unwrap();
    tokio::spawn(core.clone().serve(listener));
    Node {
        onion: onion_copy,
        spec: HopSpec {
            peer: core.peer_id(),
            addr,
            onion_key: spec_key,
            link_key: core.link_key(),
        },
        core,
    }
}

pub async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `data` into `app`, half-closes it and reads everything the other
/// end sends back (an echo answers after the half-close), within `limit`.
pub async fn echo_round_trip(mut app: TcpStream, data: &[u8], limit: Duration) -> Vec<u8> {
    let (mut r, mut w) = app.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = async {
        tokio::time::timeout(limit, r.read_to_end(&mut got))
            .await
            .expect("the echo did not end in time")
            .unwrap();
    };
    tokio::join!(send, recv);
    got
}

/// Opens a stream to `target` and returns the application's end of it.
pub async fn through(circuit: &ClientCircuit, target: TargetAddr) -> TcpStream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (inner, _) = l.accept().await.unwrap();
    let stream = circuit.open_stream(&target).await.unwrap();
    tokio::spawn(stream.run(inner, Vec::new()));
    app
}

/// A client and three relays (the last an exit that may reach loopback),
/// with a circuit built through them.
pub async fn three_hop() -> (Node, [Node; 3], ClientCircuit) {
    let client = node(false, false).await;
    let relays = [
        node(false, false).await,
        node(false, false).await,
        node(true, true).await,
    ];
    let path: Vec<_> = relays.iter().map(|n| n.spec.clone()).collect();
    let circuit = client.core.build_circuit(&path).await.unwrap();
    (client, relays, circuit)
}
