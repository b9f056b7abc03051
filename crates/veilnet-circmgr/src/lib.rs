#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod guard;
mod isolation;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{debug, info, warn};
use veilnet_cell::{EndReason, TargetAddr};
use veilnet_config::unix_now;
use veilnet_dir::path::{allows_target, is_usable_relay, select_path, PathError, PathRequest};
use veilnet_dir::Directory;
use veilnet_error::{ErrorKind, HasKind};
use veilnet_proto::{ClientCircuit, ClientStream, Core, HopSpec, ProtoError};

use guard::path_bias::{FLAG_BELOW_PERCENT, NOTICE_BELOW_PERCENT, WARN_BELOW_PERCENT};
pub use guard::{GuardParams, GuardView};
use guard::{GuardState, Relay, Verdict};
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
    /// The guard rules (primary guards, replacement, path bias).
    pub guards: GuardParams,
    /// Where the guard state is kept (`guards.json`); `None` keeps it in
    /// memory only.
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
    /// No guard can be the first hop now (all unlisted, flagged, or none
    /// sampled yet); no other relay is ever used instead.
    #[error("{0}")]
    NoUsableGuard(PathError),
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
    guards: Mutex<GuardState>,
    /// Held while writing `guards.json`, so that writes land in the order
    /// their snapshots were taken.
    saving: Mutex<()>,
    pool: Mutex<Vec<Pooled>>,
}

/// Whether a failed build says something about its guard: every failure
/// after the guard's link was open counts (Tor's rule: a guard that kills
/// circuits at a later hop is what path bias is for), except those that are
/// clearly our own (a local limit, a bad request, a bug).
fn counts_against_guard(e: &ProtoError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::LocalResource | ErrorKind::BadConfig | ErrorKind::Bug
    )
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
        let guards = match &config.state_dir {
            Some(dir) => guard::file::load(dir, unix_now()),
            None => GuardState::new(),
        };
        Arc::new(Self {
            core,
            directory,
            config,
            guards: Mutex::new(guards),
            saving: Mutex::new(()),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The sampled guards in the order they are tried, with what is known
    /// of each (read-only, for the control API).
    pub fn guards(&self) -> Vec<GuardView> {
        lock(&self.guards).views(&self.config.guards)
    }

    /// Saves the guard state if it changed and a save is due (`force`: if
    /// anything at all is unsaved).
    fn save_guards(&self, force: bool) {
        let Some(dir) = &self.config.state_dir else {
            return;
        };
        let _saving = lock(&self.saving);
        let snapshot = {
            let mut g = lock(&self.guards);
            if !g.take_save(unix_now(), force) {
                return;
            }
            g.to_saved()
        };
        if let Err(e) = guard::file::save(dir, &snapshot) {
            warn!("cannot save the guards: {e}");
        }
    }

    fn note_link(&self, peer: &PeerId, reached: bool) {
        let changed = lock(&self.guards).note_link(peer, reached, unix_now());
        if changed {
            if reached {
                info!(%peer, "guard reachable again");
            } else {
                info!(%peer, "guard unreachable; trying the next guard");
            }
        }
    }

    fn note_circuit(&self, peer: &PeerId, built: bool) {
        let outcome = {
            let mut g = lock(&self.guards);
            let o = g.note_circuit(peer, built, &self.config.guards, unix_now());
            o.map(|o| {
                let counts = g
                    .sampled()
                    .iter()
                    .find(|x| x.peer == *peer)
                    .map(|x| x.path_bias);
                (o, counts.unwrap_or_default())
            })
        };
        let Some((o, c)) = outcome else { return };
        if o.newly_flagged {
            warn!(
                %peer,
                "guard flagged by path bias: {} of {} circuits built (below {FLAG_BELOW_PERCENT}%); it is no longer used as a first hop",
                c.successes, c.attempts
            );
        } else if o.after > o.before && o.after >= Verdict::Notice {
            let below = if o.after == Verdict::Warn {
                WARN_BELOW_PERCENT
            } else {
                NOTICE_BELOW_PERCENT
            };
            warn!(
                %peer,
                "guard builds few circuits: {} of {} (below {below}%)",
                c.successes, c.attempts
            );
        }
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
    ///
    /// The first hop is always a guard (see [`guard`]). A guard that cannot
    /// be reached is marked so and the next attempt starts at the next
    /// guard; any other failure counts for the guard's path bias and the
    /// next attempt keeps the guard (a new path behind it), as in Tor, so
    /// that failures further along cannot push the client off its guard.
    pub async fn build(
        &self,
        target: Option<&TargetAddr>,
        isolation: Isolation,
    ) -> Result<Arc<ClientCircuit>, ConnectError> {
        let mut last = None;
        let mut unreachable = Vec::new();
        for _ in 0..BUILD_ATTEMPTS {
            let path = match self.choose_path(target, &unreachable) {
                Ok(p) => p,
                Err(e) => match last {
                    // The guards left after an unreachable one: report why
                    // the last attempt failed, not that none is left.
                    Some(last) => return Err(ConnectError::Circuit(last)),
                    None => return Err(e),
                },
            };
            let first = path[0].clone();
            if let Err(e) = self
                .core
                .client_link_to(first.peer, first.addr, &first.link_key)
                .await
            {
                debug!(guard = %first.peer, "cannot reach the guard: {e}");
                self.note_link(&first.peer, false);
                self.save_guards(false);
                unreachable.push(first.peer);
                last = Some(e);
                continue;
            }
            self.note_link(&first.peer, true);
            let built = self.core.build_circuit(&path).await;
            match &built {
                Ok(_) => self.note_circuit(&first.peer, true),
                Err(e) if counts_against_guard(e) => self.note_circuit(&first.peer, false),
                Err(_) => {}
            }
            self.save_guards(false);
            match built {
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

    /// A path for `target` whose first hop is a guard, not one of `skip`.
    fn choose_path(
        &self,
        target: Option<&TargetAddr>,
        skip: &[PeerId],
    ) -> Result<Vec<HopSpec>, ConnectError> {
        let dir = lock(&self.directory);
        let mut rng = rand::thread_rng();
        let own = dir.own();
        let weights = dir.weights();
        let relays: Vec<Relay> = dir
            .iter()
            .filter(|d| d.peer_id != own && is_usable_relay(d))
            .map(|d| Relay {
                peer: d.peer_id,
                weight: weights.get(&d.peer_id),
            })
            .filter(|r| r.weight > 0)
            .collect();
        let (first_hops, down) = {
            let mut g = lock(&self.guards);
            let now = unix_now();
            // Guards are kept for months: none is sampled (or given up as
            // unlisted) from a directory that holds reports of fewer than
            // half the relays, which whoever served them first would
            // weigh. Guards sampled before are used meanwhile.
            if weights.settled() {
                g.update(&relays, &self.config.guards, now, &mut rng);
            } else {
                debug!("measurements not settled yet: not sampling guards");
            }
            let mut hops = g.first_hops(&self.config.guards, now);
            hops.retain(|p| !skip.contains(p));
            // A guard we could not reach is no middle or exit either, unless
            // it is due for a retry as the first hop (then it heads the
            // path, and a failure there is noted as such).
            let down: Vec<PeerId> = g.unreachable().filter(|p| !hops.contains(p)).collect();
            (hops, down)
        };
        let req = PathRequest {
            hops: self.config.hops,
            exit_target: target,
            exclude: &down,
            guards: &first_hops,
        };
        let path = select_path(&dir, &req, &mut rng);
        drop(dir);
        self.save_guards(false);
        let path = path.map_err(|e| match e {
            PathError::NoExitForTarget => ConnectError::NoExit,
            e @ PathError::NoUsableGuard { .. } => ConnectError::NoUsableGuard(e),
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

    /// Closes every circuit and saves whatever guard state is unsaved.
    pub fn close_all(&self) {
        for p in lock(&self.pool).drain(..) {
            p.circuit.close();
        }
        self.save_guards(true);
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use veilnet_proto::{CoreConfig, DefaultRelayPolicy, Limits};

    use super::*;
    use crate::guard::file::GUARDS_FILE;

    fn manager(state_dir: &Path) -> Arc<CircuitManager> {
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let own = identity.public().to_peer_id();
        manager_with(identity, Directory::new(own), Some(state_dir.to_owned()))
    }

    /// A manager for `identity` over `directory`, its guards in
    /// `state_dir` (or in memory).
    fn manager_with(
        identity: libp2p::identity::Keypair,
        directory: Directory,
        state_dir: Option<PathBuf>,
    ) -> Arc<CircuitManager> {
        let no_relays = |_: &PeerId, _: Option<&SocketAddr>| false;
        let core = Core::new(CoreConfig {
            identity,
            onion: veilnet_crypto::circuit::OnionKeypair::generate().unwrap(),
            previous_onion: None,
            relay: false,
            policy: Arc::new(DefaultRelayPolicy::new(Arc::new(no_relays))),
            limits: Limits::default(),
            tap: None,
        })
        .unwrap();
        CircuitManager::new(
            core,
            Arc::new(Mutex::new(directory)),
            CircMgrConfig {
                hops: 3,
                max_dirtiness: Duration::from_secs(600),
                guards: GuardParams::default(),
                state_dir,
            },
        )
    }

    #[tokio::test]
    async fn guards_survive_a_restart_and_a_bad_file_does_not_stop_the_manager() {
        let dir = std::env::temp_dir().join(format!(
            "veilnet-circmgr-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(GUARDS_FILE);
        // the old format: a list of peer ids, kept in order
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        std::fs::write(&file, serde_json::to_vec(&peers).unwrap()).unwrap();
        let m = manager(&dir);
        let seen: Vec<PeerId> = m.guards().iter().map(|g| g.peer).collect();
        assert_eq!(seen, peers);
        // stopping saves the state in the new format, privately
        m.close_all();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // and a restart reads it back
        let m2 = manager(&dir);
        assert_eq!(m2.guards(), m.guards());
        // a truncated file: a fresh guard set, the manager still starts
        std::fs::write(&file, &text[..text.len() / 2]).unwrap();
        assert!(manager(&dir).guards().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Relay `n`'s key (deterministic).
    fn relay_key(n: u8) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes([n + 1; 32]).unwrap()
    }

    /// A signed, verified measurement report by `measurer` at `now` that
    /// reached each of `targets` at 1 MB/s.
    fn reached(
        measurer: &libp2p::identity::Keypair,
        targets: &[PeerId],
        now: u64,
    ) -> veilnet_dir::VerifiedReport {
        let r = veilnet_dir::Report {
            measurer: measurer.public().to_peer_id(),
            published: now,
            observations: targets
                .iter()
                .map(|t| veilnet_dir::Observation {
                    target: *t,
                    bandwidth: 1_000_000,
                    reached: true,
                    since: now - 1000,
                })
                .collect(),
        };
        veilnet_dir::VerifiedReport::decode(&r.sign(measurer).unwrap()).unwrap()
    }

    /// The gate in `choose_path`: while the weights are not settled (with
    /// measurements on, fewer than half the relays counted by address have
    /// a report in the window), building paths samples no guard and gives
    /// none up as unlisted, even though some relays already carry weight;
    /// once enough relays have reported, guards are sampled.
    #[tokio::test]
    async fn no_guard_is_sampled_or_given_up_until_the_weights_settle() {
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let now = unix_now();
        let mut dir = Directory::new(identity.public().to_peer_id());
        dir.use_measurements(Some(veilnet_dir::MeasureParams {
            period_secs: 3600,
            // Every measurer is assigned every relay.
            measurers_per_target: 100,
            window_epochs: 4,
            min_measurers: 2,
            ramp_secs: 0,
            required: true,
            max_rate: 20_000_000,
        }));
        // Ten relays, each in its own /24, all counted by address.
        let keys: Vec<_> = (0..10).map(relay_key).collect();
        let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        for (i, k) in keys.iter().enumerate() {
            let d = veilnet_dir::Descriptor {
                peer_id: ids[i],
                identity_key: k.public().encode_protobuf(),
                link_addrs: vec![SocketAddr::from(([198, 51, i as u8, 1], 9001))],
                p2p_addrs: vec![],
                onion_key: [0x11; 32],
                onion_key_expires: now + 7 * 24 * 3600,
                link_key: [0x24; 32],
                roles: veilnet_dir::Roles {
                    relay: true,
                    exit: true,
                },
                exit_policy: veilnet_policy::ExitPolicy::default_exit(),
                bandwidth: 1_000_000,
                region: "ZZ".into(),
                family: vec![],
                version: "veilnet/test".into(),
                seq: 1,
                published: now,
            };
            dir.insert(&d.sign(k).unwrap(), now).unwrap();
        }
        // Four of ten report, each reaching relays 5..10: those weigh, but
        // four is fewer than half.
        for k in &keys[..4] {
            dir.insert_report(reached(k, &ids[5..], now), now).unwrap();
        }
        let w = dir.weights();
        assert!(!w.settled());
        assert!(ids[5..].iter().all(|p| w.get(p) > 0), "some relays weigh");
        let m = manager_with(identity, dir, None);
        // A guard sampled before (from an old guards file): not listed.
        let old = PeerId::random();
        *lock(&m.guards) = GuardState::from_peers(&[old], now);
        for _ in 0..3 {
            let _ = m.choose_path(None, &[]);
        }
        let views = m.guards();
        assert_eq!(
            views.iter().map(|g| g.peer).collect::<Vec<_>>(),
            vec![old],
            "no guard sampled from unsettled weights"
        );
        assert!(views[0].listed, "nor one given up as unlisted meanwhile");
        assert!(views[0].reachable);
        // A fifth relay reports: five of ten, settled.
        lock(&m.directory)
            .insert_report(reached(&keys[4], &ids[5..], now), now)
            .unwrap();
        assert!(lock(&m.directory).weights().settled());
        let _ = m.choose_path(None, &[]);
        let views = m.guards();
        let sampled: Vec<PeerId> = views.iter().map(|g| g.peer).filter(|p| *p != old).collect();
        assert!(!sampled.is_empty(), "guards are sampled once settled");
        assert!(
            sampled.iter().all(|p| ids[5..].contains(p)),
            "only relays that weigh are sampled"
        );
        assert!(
            views.iter().any(|g| g.peer == old && !g.listed),
            "and the unlisted guard is now marked so"
        );
    }
}
