//! Client circuits: built hop by hop (telescoping), then carrying streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use tokio::sync::mpsc;
use tracing::debug;
use veilnet_cell::{Cell, CircId, DestroyReason, TargetAddr};
use veilnet_circuit::{CircuitBuilder, HopSpec, Step};
use veilnet_crypto::onion::ClientLayers;

use crate::core::Core;
use crate::link::{CircEntry, CircuitTx, ClientRx, ClientTx, Link, StreamEndpoint};
use crate::stats::Stats;
use crate::stream::{Endpoint, OpenStream};
use crate::ProtoError;

static NEXT_CIRCUIT: AtomicU64 = AtomicU64::new(1);

/// A snapshot of a circuit for status displays.
#[derive(Debug, Clone)]
pub struct CircuitInfo {
    /// Process-unique id.
    pub id: u64,
    /// The hops, first hop first.
    pub hops: Vec<PeerId>,
    /// Time since it was built.
    pub age: Duration,
    /// Open streams.
    pub streams: usize,
    /// False once destroyed.
    pub open: bool,
    /// How long building it took.
    pub build_time: Duration,
}

/// A built client circuit.
pub struct ClientCircuit {
    id: u64,
    hops: Vec<PeerId>,
    link: Arc<Link>,
    circ: CircId,
    endpoint: Arc<StreamEndpoint>,
    /// Our layers, forward (the endpoint's sender) and backward (the link
    /// reader's), kept here for status figures.
    tx: Arc<ClientTx>,
    rx: Arc<ClientRx>,
    built: Instant,
    build_time: Duration,
    core: Arc<Core>,
}

impl std::fmt::Debug for ClientCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCircuit")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClientCircuit {
    /// Process-unique id of this circuit.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The hops, first hop first.
    pub fn hops(&self) -> &[PeerId] {
        &self.hops
    }

    /// True until the circuit is destroyed.
    pub fn is_open(&self) -> bool {
        !self.endpoint.is_closed() && !self.link.is_closed()
    }

    /// Time since the circuit was built.
    pub fn age(&self) -> Duration {
        self.built.elapsed()
    }

    /// Streams open on it.
    pub fn stream_count(&self) -> usize {
        self.endpoint.stream_count()
    }

    /// Onion-layer key updates so far: the hops' forward keys we retired,
    /// and the backward keys the hops retired (and we followed).
    pub async fn key_updates(&self) -> (u64, u64) {
        let fwd = self
            .tx
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key_updates();
        let bwd = self
            .rx
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key_updates();
        (fwd, bwd)
    }

    /// A snapshot for status displays.
    pub fn info(&self) -> CircuitInfo {
        CircuitInfo {
            id: self.id,
            hops: self.hops.clone(),
            age: self.age(),
            streams: self.stream_count(),
            open: self.is_open(),
            build_time: self.build_time,
        }
    }

    /// Asks the exit to open a stream to `target`; the exit resolves names.
    pub async fn open_stream(&self, target: &TargetAddr) -> Result<ClientStream, ProtoError> {
        let inner = self.endpoint.open(target).await?;
        Ok(ClientStream { inner })
    }

    /// Destroys the circuit along its whole path.
    pub fn close(&self) {
        self.endpoint.close();
        self.core
            .teardown(&self.link, self.circ, DestroyReason::Requested, true);
    }
}

impl Drop for ClientCircuit {
    fn drop(&mut self) {
        if self.is_open() {
            self.close();
        }
    }
}

impl Core {
    /// Builds a circuit through `path` (first hop first), one hop at a time.
    pub async fn build_circuit(
        self: &Arc<Self>,
        path: &[HopSpec],
    ) -> Result<ClientCircuit, ProtoError> {
        let first = path
            .first()
            .ok_or_else(|| ProtoError::Invalid("empty path".into()))?;
        if path.len() > veilnet_cell::MAX_HOPS {
            return Err(ProtoError::Invalid(format!(
                "{} hops is too many",
                path.len()
            )));
        }
        let started = Instant::now();
        let link = self
            .client_link_to(first.peer, first.addr, &first.link_key)
            .await?;
        self.build_circuit_from(link, path, started).await
    }

    /// Like [`Core::build_circuit`], over `link`, a link to the first hop
    /// of `path` that we opened as a client (say, with
    /// [`Core::separate_client_link`]).
    pub async fn build_circuit_on(
        self: &Arc<Self>,
        link: Arc<Link>,
        path: &[HopSpec],
    ) -> Result<ClientCircuit, ProtoError> {
        if path.first().map(|h| h.peer) != Some(link.peer) || !link.is_initiator() {
            return Err(ProtoError::Invalid(
                "the link must be one we opened to the path's first hop".into(),
            ));
        }
        if path.len() > veilnet_cell::MAX_HOPS {
            return Err(ProtoError::Invalid(format!(
                "{} hops is too many",
                path.len()
            )));
        }
        self.build_circuit_from(link, path, Instant::now()).await
    }

    async fn build_circuit_from(
        self: &Arc<Self>,
        link: Arc<Link>,
        path: &[HopSpec],
        started: Instant,
    ) -> Result<ClientCircuit, ProtoError> {
        // Only handshake replies arrive on this channel while building.
        let (tx, mut rx) = mpsc::channel(8);
        let circ =
            link.alloc_circuit(CircEntry::Client(tx), self.limits().max_circuits_per_link)?;
        let built = tokio::time::timeout(
            self.limits().circuit_build_timeout,
            extend_all(
                &link,
                circ,
                &mut rx,
                path,
                self.limits().layer_rekey,
                &self.stats,
            ),
        )
        .await
        .map_err(|_| ProtoError::Timeout("circuit build"))
        .and_then(|r| r);
        let layers = match built {
            Ok(l) => l,
            Err(e) => {
                self.teardown(&link, circ, DestroyReason::Requested, true);
                return Err(e);
            }
        };
        let (fwd, bwd) = layers.split();
        let tx = Arc::new(ClientTx {
            layers: std::sync::Mutex::new(fwd),
            link: link.clone(),
            circ,
        });
        let endpoint = Endpoint::new(CircuitTx::Client(tx.clone()), None, self.limits().clone());
        let rx = Arc::new(ClientRx {
            layers: std::sync::Mutex::new(bwd),
            endpoint: endpoint.clone(),
        });
        // From now on the link reader removes our layers and hands the
        // messages to the streams itself: no extra queue or task per cell.
        let open = {
            let mut table = link.table();
            match table.get_mut(&circ) {
                Some(entry @ CircEntry::Client(_)) => {
                    *entry = CircEntry::ClientOpen(rx.clone());
                    true
                }
                _ => false,
            }
        };
        if !open {
            endpoint.close();
            return Err(ProtoError::CircuitClosed);
        }
        Ok(ClientCircuit {
            id: NEXT_CIRCUIT.fetch_add(1, Ordering::Relaxed),
            hops: path.iter().map(|h| h.peer).collect(),
            link,
            circ,
            endpoint,
            tx,
            rx,
            built: Instant::now(),
            build_time: started.elapsed(),
            core: self.clone(),
        })
    }
}

/// Runs the build state machine over the link: every cell that arrives for
/// the circuit goes in, every cell it asks for goes out.
async fn extend_all(
    link: &Arc<Link>,
    circ: CircId,
    rx: &mut mpsc::Receiver<Cell>,
    path: &[HopSpec],
    rekey: veilnet_crypto::RekeyPolicy,
    stats: &Stats,
) -> Result<ClientLayers, ProtoError> {
    let junk: [u8; 32] = rand::random();
    let (mut builder, create) = CircuitBuilder::start(circ, path.to_vec(), &junk, rekey)?;
    link.send(create).await?;
    loop {
        let mut cell = rx.recv().await.ok_or(ProtoError::CircuitClosed)?;
        match builder.handle(&mut cell, Instant::now())? {
            Step::Send(next) => link.send(next).await?,
            Step::IgnoredUnknown(c) => {
                stats.unknown_relay_commands.fetch_add(1, Ordering::Relaxed);
                debug!("ignoring a relay message with unknown command {c}");
            }
            Step::Done => return Ok(builder.finish()?),
        }
    }
}

/// An open stream on a client circuit, ready to be joined to a socket.
/// Dropping it without [`ClientStream::run`] ends the stream at the exit.
pub struct ClientStream {
    inner: OpenStream<CircuitTx>,
}

impl ClientStream {
    /// Carries bytes between `tcp` and the stream until both directions have
    /// ended. `initial` is sent first (bytes the application sent early).
    pub async fn run(self, tcp: tokio::net::TcpStream, initial: Vec<u8>) {
        self.inner.run(tcp, initial).await;
    }
}
