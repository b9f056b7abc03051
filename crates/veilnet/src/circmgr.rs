//! The circuit manager: chooses paths, builds circuits and pools them.
//!
//! Policy lives here, mechanism in `veilnet-proto`: which relays to use
//! (bandwidth-weighted, diverse, exit policy compatible, persistent guards as
//! first hops), when a circuit is too old for new streams
//! (`max_circuit_dirtiness`), and which streams may share a circuit (stream
//! isolation by SOCKS credentials).

use std::hash::{BuildHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{debug, info};
use veilnet_cell::{EndReason, TargetAddr};
use veilnet_config::Config;
use veilnet_dir::path::{select_path, ExitTarget, GuardSet, PathError, PathRequest};
use veilnet_dir::Directory;
use veilnet_proto::{ClientCircuit, ClientStream, Core, HopSpec, ProtoError};

use crate::control::CircuitView;

/// Attempts to build a circuit for one request before giving up.
const BUILD_ATTEMPTS: usize = 3;
/// New streams go to another circuit once one carries this many.
const MAX_STREAMS_PER_POOLED_CIRCUIT: usize = 512;
/// Circuits kept in the pool at most.
const MAX_POOL: usize = 4096;
const GUARDS_FILE: &str = "guards.json";

/// Which streams may share a circuit: streams with different isolation keys
/// never do. Derived from SOCKS or proxy credentials; `None` without any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isolation(Option<u64>);

impl Isolation {
    /// No credentials.
    pub const NONE: Isolation = Isolation(None);

    /// From proxy credentials (hashed; the credentials are not kept).
    pub fn from_credentials(user: &[u8], pass: &[u8]) -> Self {
        // Keyed per process, so the label shown by the control API says
        // nothing about the credentials.
        static KEY: std::sync::LazyLock<std::collections::hash_map::RandomState> =
            std::sync::LazyLock::new(Default::default);
        let mut h = KEY.build_hasher();
        user.hash(&mut h);
        pass.hash(&mut h);
        Isolation(Some(h.finish()))
    }

    fn label(&self) -> Option<String> {
        self.0.map(|h| format!("{:08x}", h >> 32))
    }
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
    hops: usize,
    dirtiness: Duration,
    guards: Mutex<GuardSet>,
    pool: Mutex<Vec<Pooled>>,
    state_dir: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn exit_target(t: &TargetAddr) -> ExitTarget {
    match t {
        TargetAddr::Ip(a) => ExitTarget::Ip(*a),
        TargetAddr::Domain(_, p) => ExitTarget::Domain(*p),
    }
}

impl CircuitManager {
    /// A manager for the node; guards persist in `state_dir` if given.
    pub fn new(
        core: Arc<Core>,
        directory: Arc<Mutex<Directory>>,
        config: &Config,
        state_dir: Option<PathBuf>,
    ) -> Arc<Self> {
        let n = config.client.num_guards;
        let guards = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(GUARDS_FILE)).ok())
            .and_then(|b| serde_json::from_slice::<Vec<PeerId>>(&b).ok())
            .map(|peers| GuardSet::from_peers(peers, n))
            .unwrap_or_else(|| GuardSet::new(n));
        Arc::new(Self {
            core,
            directory,
            hops: usize::from(config.client.hops),
            dirtiness: Duration::from_secs(config.client.max_circuit_dirtiness_secs),
            guards: Mutex::new(guards),
            pool: Mutex::new(Vec::new()),
            state_dir,
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
                None => self.build(exit_target(target), isolation).await?,
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

    /// A pooled circuit usable for `target` under `isolation`, marked used.
    fn pick(&self, target: &TargetAddr, isolation: Isolation) -> Option<Arc<ClientCircuit>> {
        let want = exit_target(target);
        let dir = lock(&self.directory);
        let mut pool = lock(&self.pool);
        let now = Instant::now();
        let entry = pool.iter_mut().find(|p| {
            p.isolation == isolation
                && p.circuit.is_open()
                && p.circuit.stream_count() < MAX_STREAMS_PER_POOLED_CIRCUIT
                && p.first_used
                    .is_none_or(|t| now.duration_since(t) < self.dirtiness)
                && dir
                    .get(&p.exit)
                    .is_some_and(|d| veilnet_dir::path::allows_target(d, want))
        })?;
        entry.first_used.get_or_insert(now);
        Some(entry.circuit.clone())
    }

    /// Builds a new circuit whose exit accepts `target` and pools it.
    pub async fn build(
        &self,
        target: ExitTarget,
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
                        first_used: (target != ExitTarget::Any).then(Instant::now),
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

    fn choose_path(&self, target: ExitTarget) -> Result<Vec<HopSpec>, ConnectError> {
        let dir = lock(&self.directory);
        let mut rng = rand::thread_rng();
        let guards = {
            let mut g = lock(&self.guards);
            if g.refresh(&dir, &[], &mut rng) {
                self.save_guards(g.guards());
            }
            g.guards().to_vec()
        };
        let req = PathRequest {
            hops: self.hops,
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

    /// Saves the guards atomically with mode 0600: the guard set can
    /// identify a client, so it is as private as the keys.
    fn save_guards(&self, guards: &[PeerId]) {
        let Some(dir) = &self.state_dir else { return };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let json = serde_json::to_vec(guards).map_err(std::io::Error::other)?;
            let tmp = dir.join(format!("{GUARDS_FILE}.tmp"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(GUARDS_FILE))
        };
        if let Err(e) = write() {
            tracing::warn!("cannot save guards: {e}");
        }
    }

    /// Drops closed circuits and closes dirty circuits that carry no stream.
    pub fn prune(&self) {
        let now = Instant::now();
        lock(&self.pool).retain(|p| {
            let dirty = p
                .first_used
                .is_some_and(|t| now.duration_since(t) >= self.dirtiness);
            if dirty && p.circuit.stream_count() == 0 {
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

    /// The pooled circuits, for the control API.
    pub fn views(&self) -> Vec<CircuitView> {
        let now = Instant::now();
        lock(&self.pool)
            .iter()
            .map(|p| {
                let info = p.circuit.info();
                let dirty = p
                    .first_used
                    .is_some_and(|t| now.duration_since(t) >= self.dirtiness);
                CircuitView {
                    id: info.id,
                    state: if !info.open {
                        "closed"
                    } else if dirty {
                        "dirty"
                    } else {
                        "open"
                    }
                    .to_string(),
                    age_secs: info.age.as_secs_f64(),
                    hops: info.hops.iter().map(|h| h.to_string()).collect(),
                    streams: info.streams,
                    isolation: p.isolation.label(),
                    build_ms: info.build_time.as_secs_f64() * 1000.0,
                }
            })
            .collect()
    }

    /// The pooled circuits themselves (tests and the benchmark use them).
    pub fn circuits(&self) -> Vec<Arc<ClientCircuit>> {
        lock(&self.pool).iter().map(|p| p.circuit.clone()).collect()
    }
}
