#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod guards;
mod isolation;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{debug, info};
use veilnet_cell::{EndReason, TargetAddr};
use veilnet_dir::path::{allows_target, select_path, GuardSet, PathError, PathRequest};
use veilnet_dir::Directory;
use veilnet_proto::{ClientCircuit, ClientStream, Core, HopSpec, ProtoError};

pub use isolation::Isolation;

/// Attempts to build a circuit for one request before giving up.
const BUILD_ATTEMPTS: usize = 3;
/// New streams go to another circuit once one carries this many.
const MAX_STREAMS_PER_POOLED_CIRCUIT: usize = 512;
/// Circuits kept in the pool at most.
const MAX_POOL: usize = 4096;

/// How the manager builds and uses circuits (the node fills it in from the
/// `[client]` section of its configuration).
#[derive(Debug, Clone)]
pub struct CircMgrConfig {
    /// Hops per circuit, `1..=MAX_HOPS`.
    pub hops: usize,
    /// How long after its first stream a circuit takes new streams.
    pub max_dirtiness: Duration,
    /// Number of entry guards.
    pub num_guards: usize,
    /// Where the guard set is kept; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
}

/// Why a connection through the network failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No exit's policy accepts the target.
    #[error("no exit accepts this target")]
    NoExit,
    /// Not enough relays are known yet.
    #[error("not enough relays known: {0}")]
    NotEnoughRelays(PathError),
    /// The exit refused or could not reach the target.
    #[error("the exit could not open the stream: {0:?}")]
    Refused(EndReason),
    /// Circuits could not be built.
    #[error("cannot build a circuit: {0}")]
    Circuit(ProtoError),
}

/// A circuit of the pool as the manager sees it.
#[derive(Clone)]
pub struct PooledCircuit {
    /// The circuit.
    pub circuit: Arc<ClientCircuit>,
    /// Which streams it carries.
    pub isolation: Isolation,
    /// Past `max_dirtiness` since its first stream: it takes no new ones.
    pub dirty: bool,
}

struct Pooled {
    circuit: Arc<ClientCircuit>,
    isolation: Isolation,
    exit: PeerId,
    first_used: Option<Instant>,
}

/// Builds and pools client circuits.
pub struct CircuitManager {
    core: Arc<Core>,
    directory: Arc<Mutex<Directory>>,
    config: CircMgrConfig,
    guards: Mutex<GuardSet>,
    pool: Mutex<Vec<Pooled>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CircuitManager {
    /// A manager that builds circuits with `core` through relays of
    /// `directory`; the guards persist in `config.state_dir` if given.
    pub fn new(
        core: Arc<Core>,
        directory: Arc<Mutex<Directory>>,
        config: CircMgrConfig,
    ) -> Arc<Self> {
        let guards = guards::load(config.state_dir.as_deref(), config.num_guards);
        Arc::new(Self {
            core,
            directory,
            config,
            guards: Mutex::new(guards),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Opens a stream to `target`, on a pooled circuit if a suitable one
    /// exists, otherwise on a new one.
    pub async fn connect(
        &self,
        target: &TargetAddr,
        isolation: Isolation,
    ) -> Result<ClientStream, ConnectError> {
        let mut last = None;
        for _ in 0..BUILD_ATTEMPTS {
            let circuit = match self.pick(target, isolation) {
                Some(c) => c,
                None => self.build(Some(target), isolation).await?,
            };
            match circuit.open_stream(target).await {
                Ok(s) => return Ok(s),
                Err(ProtoError::StreamRefused(reason)) => {
                    return Err(ConnectError::Refused(reason))
                }
                Err(e) => {
                    debug!("stream failed on circuit {}: {e}; retrying", circuit.id());
                    // A slow target or a full circuit is no reason to kill the
                    // other streams; a broken circuit is.
                    if !matches!(e, ProtoError::Timeout(_) | ProtoError::Limit(_)) {
                        circuit.close();
                    }
                    last = Some(e);
                }
            }
        }
        Err(ConnectError::Circuit(
            last.unwrap_or(ProtoError::CircuitClosed),
        ))
    }

    fn is_dirty(&self, p: &Pooled, now: Instant) -> bool {
        p.first_used
            .is_some_and(|t| now.duration_since(t) >= self.config.max_dirtiness)
    }

    /// A pooled circuit usable for `target` under `isolation`, marked used.
    fn pick(&self, target: &TargetAddr, isolation: Isolation) -> Option<Arc<ClientCircuit>> {
        let dir = lock(&self.directory);
        let mut pool = lock(&self.pool);
        let now = Instant::now();
        let entry = pool.iter_mut().find(|p| {
            p.isolation == isolation
                && p.circuit.is_open()
                && p.circuit.stream_count() < MAX_STREAMS_PER_POOLED_CIRCUIT
                && !self.is_dirty(p, now)
                && dir
                    .get(&p.exit)
                    .is_some_and(|d| allows_target(d, Some(target)))
        })?;
        entry.first_used.get_or_insert(now);
        Some(entry.circuit.clone())
    }

    /// Builds a new circuit whose exit accepts `target` (any exit if `None`)
    /// and pools it. A circuit built for a target counts as used from now.
    pub async fn build(
        &self,
        target: Option<&TargetAddr>,
        isolation: Isolation,
    ) -> Result<Arc<ClientCircuit>, ConnectError> {
        let mut last = None;
        for _ in 0..BUILD_ATTEMPTS {
            let path = self.choose_path(target)?;
            match self.core.build_circuit(&path).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    info!(circuit = c.id(), hops = path.len(), "built a circuit");
                    let mut pool = lock(&self.pool);
                    if pool.len() >= MAX_POOL {
                        return Err(ConnectError::Circuit(ProtoError::Limit("circuit pool")));
                    }
                    pool.push(Pooled {
                        circuit: c.clone(),
                        isolation,
                        exit: path[path.len() - 1].peer,
                        first_used: target.is_some().then(Instant::now),
                    });
                    return Ok(c);
                }
                Err(e) => {
                    debug!("circuit build failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(ConnectError::Circuit(
            last.unwrap_or(ProtoError::CircuitClosed),
        ))
    }

    fn choose_path(&self, target: Option<&TargetAddr>) -> Result<Vec<HopSpec>, ConnectError> {
        let dir = lock(&self.directory);
        let mut rng = rand::thread_rng();
        let guards = {
            let mut g = lock(&self.guards);
            if g.refresh(&dir, &[], &mut rng) {
                if let Some(state) = &self.config.state_dir {
                    guards::save(state, g.guards());
                }
            }
            g.guards().to_vec()
        };
        let req = PathRequest {
            hops: self.config.hops,
            exit_target: target,
            exclude: &[],
            guards: &guards,
        };
        let path = select_path(&dir, &req, &mut rng).map_err(|e| match e {
            PathError::NoExitForTarget => ConnectError::NoExit,
            other => ConnectError::NotEnoughRelays(other),
        })?;
        path.into_iter()
            .map(|d| {
                let addr = *d.link_addrs.first().ok_or(ConnectError::NotEnoughRelays(
                    PathError::NotEnoughRelays { needed: 1, have: 0 },
                ))?;
                Ok(HopSpec {
                    peer: d.peer_id,
                    addr,
                    onion_key: d.onion_key,
                    link_key: d.link_key,
                })
            })
            .collect()
    }

    /// Drops closed circuits and closes dirty circuits that carry no stream.
    pub fn prune(&self) {
        let now = Instant::now();
        lock(&self.pool).retain(|p| {
            if self.is_dirty(p, now) && p.circuit.stream_count() == 0 {
                p.circuit.close();
                return false;
            }
            p.circuit.is_open()
        });
    }

    /// Closes every circuit.
    pub fn close_all(&self) {
        for p in lock(&self.pool).drain(..) {
            p.circuit.close();
        }
    }

    /// Open circuits in the pool.
    pub fn open_count(&self) -> usize {
        lock(&self.pool)
            .iter()
            .filter(|p| p.circuit.is_open())
            .count()
    }

    /// The pooled circuits, oldest first.
    pub fn pooled(&self) -> Vec<PooledCircuit> {
        let now = Instant::now();
        lock(&self.pool)
            .iter()
            .map(|p| PooledCircuit {
                circuit: p.circuit.clone(),
                isolation: p.isolation,
                dirty: self.is_dirty(p, now),
            })
            .collect()
    }
}
