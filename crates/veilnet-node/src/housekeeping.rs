//! What a node does in the background: feeding the directory from
//! discovery, and the periodic housekeeping.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use veilnet_circmgr::CircuitManager;
use veilnet_config::unix_now;
use veilnet_dir::{
    DescriptorDigest, DescriptorError, Directory, Inserted, ReportError, ReportInserted,
    SignedDescriptor, VerifiedReport,
};
use veilnet_discovery::{DiscoveryEvent, DiscoveryHandle};
use veilnet_error::{ErrorKind, HasKind};
use veilnet_proto::Core;

use crate::{lock, OwnDescriptor};

/// How often our descriptor is republished when nothing in it changed
/// ([`veilnet_dir::REPUBLISH_EVERY`], where the reasons are; it stays valid
/// for [`veilnet_dir::MAX_DESCRIPTOR_AGE`], two periods). A change (a new
/// onion key) is republished at the next housekeeping tick instead.
const REPUBLISH_EVERY: Duration = Duration::from_secs(veilnet_dir::REPUBLISH_EVERY);
/// The first republication comes this much earlier at most, drawn at random:
/// relays started together (a testnet, a restart after an outage) would
/// otherwise republish together forever, and each wave costs every relay a
/// burst of pushes.
const FIRST_REPUBLISH_JITTER: Duration = Duration::from_secs(veilnet_dir::REPUBLISH_EVERY / 2);
/// Links that carry no circuit for this long are closed.
const IDLE_LINK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How often the directory is pruned and known peers saved.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
/// How often the directory cache and the sequence marks are saved (when
/// they changed; and at shutdown).
const STATE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Records of the cache checked and stored at a time.
const CACHE_BATCH: usize = 2048;

/// Verifies and stores descriptors and measurement reports arriving from
/// discovery, one batch at a
/// time on the blocking pool.
///
/// Work is bounded before the expensive part: a descriptor the directory
/// already holds, or one it refused recently, is recognised by its digest
/// and dropped without parsing or a signature check; the rest are verified
/// without the directory lock, which is taken only to look up digests and
/// to store what passed (or remember what was refused).
///
/// What was stored is announced to a few relays at once (a client's
/// discovery node has none to announce to).
pub(crate) async fn directory_feed(
    directory: Arc<Mutex<Directory>>,
    discovery: DiscoveryHandle,
    mut events: tokio::sync::mpsc::Receiver<DiscoveryEvent>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            DiscoveryEvent::Records { from, records } => {
                // Hashing and signature checks (~50 us each, up to a
                // message's worth) run on the blocking pool, not on a
                // worker that links share.
                let dir = directory.clone();
                match tokio::task::spawn_blocking(move || feed(&dir, from, records)).await {
                    Ok(stored) => discovery.announce(stored).await,
                    Err(e) => warn!("descriptor verification stopped: {e}"),
                }
            }
            DiscoveryEvent::PeerConnected { peer, .. } => debug!("p2p connected to {peer}"),
            DiscoveryEvent::PeerDisconnected { peer } => debug!("p2p disconnected from {peer}"),
            DiscoveryEvent::Listening(addr) => debug!("p2p listening on {addr}"),
        }
    }
}

/// Checks and stores one batch of descriptors `from` sent (see
/// [`directory_feed`]); returns the digests of those stored (new to us).
fn feed(
    directory: &Mutex<Directory>,
    from: libp2p::PeerId,
    records: Vec<Vec<u8>>,
) -> Vec<DescriptorDigest> {
    let now = unix_now();
    // Hashed before the lock is taken; each digest once.
    let mut seen = HashSet::new();
    let hashed: Vec<(DescriptorDigest, Vec<u8>)> = records
        .into_iter()
        .map(|raw| (veilnet_dir::digest(&raw), raw))
        .filter(|(d, _)| seen.insert(*d))
        .collect();
    let (mut reports, descriptors): (Vec<_>, Vec<_>) = {
        let dir = lock(directory);
        hashed
            .into_iter()
            .filter(|(d, _)| !dir.knows(d))
            .partition(|(_, raw)| veilnet_dir::is_report(raw) || veilnet_dir::measure::is_fork(raw))
    };
    // Descriptors first: a report counts only once its measurer is listed
    // (one that came first waits for it in the directory).
    let mut stored = Vec::new();
    for (digest, raw) in descriptors {
        let result = SignedDescriptor::from_bytes(&raw)
            .and_then(|sd| sd.verify_into(now))
            .and_then(|v| {
                let (peer, relay) = (v.descriptor().peer_id, v.descriptor().roles.relay);
                let mut dir = lock(directory);
                let inserted = dir.insert_verified(v, now)?;
                if relay && matches!(inserted, Inserted::New | Inserted::Updated) {
                    reports.extend(dir.take_awaiting(&peer, now));
                }
                Ok(inserted)
            });
        match result {
            Ok(Inserted::New) => {
                debug!("learned a new node from {from}");
                stored.push(digest);
            }
            Ok(Inserted::Updated) => stored.push(digest),
            Ok(Inserted::Equivocated) => {
                // Passed on like any stored descriptor: every node that
                // gets both finds the same proof.
                warn!("a relay signed two descriptors with one sequence number (via {from}); it is excluded while the evidence lasts");
                stored.push(digest);
            }
            Ok(Inserted::Unchanged) => {}
            Err(e) => {
                if remember_refusal(&e) {
                    lock(directory).note_refused(digest);
                }
                match e.kind() {
                    ErrorKind::PeerMisbehaved => {
                        warn!("rejected a descriptor relayed by {from}: {e}")
                    }
                    _ => debug!("ignored a descriptor relayed by {from}: {e}"),
                }
            }
        }
    }
    for (digest, raw) in reports {
        if let Some(d) = feed_report(directory, from, digest, &raw, now) {
            stored.push(d);
        }
    }
    stored
}

/// Checks and stores one measurement report or fork proof (see [`feed`]);
/// returns the digest to announce if it was stored (new to us): its own, or
/// that of the proof it completed.
fn feed_report(
    directory: &Mutex<Directory>,
    from: libp2p::PeerId,
    digest: DescriptorDigest,
    raw: &[u8],
    now: u64,
) -> Option<DescriptorDigest> {
    use veilnet_dir::measure::{is_fork, ReportFork};
    let proof = is_fork(raw);
    // A record of a measurer we do not list costs no signature check (a
    // record that names no key fails to decode below).
    let claimed = if proof {
        ReportFork::claimed_measurer(raw)
    } else {
        veilnet_dir::measure::claimed_measurer(raw)
    };
    let (mut unlisted, params) = {
        let dir = lock(directory);
        (
            claimed.filter(|m| !dir.lists_measurer(m)),
            dir.measurements().map(|m| *m.params()),
        )
    };
    // One of a measurer not listed yet waits for its descriptor (a joining
    // node gets the oldest records first); should the descriptor have come
    // meanwhile, it is stored now.
    if let (Some(m), Some(_)) = (unlisted, params) {
        match lock(directory).hold_awaiting(m, from, digest, raw.to_vec(), now) {
            veilnet_dir::Awaited::Waits => {
                debug!("a measurement record relayed by {from} waits for its measurer {m}");
                return None;
            }
            veilnet_dir::Awaited::Listed => unlisted = None,
            veilnet_dir::Awaited::NotKept => {}
        }
    }
    let result = match (unlisted, params) {
        (Some(m), _) => Err(ReportError::UnknownMeasurer(m)),
        (None, None) => Err(ReportError::Disabled),
        (_, Some(p)) if proof => ReportFork::decode(raw, &p, now)
            .and_then(|f| lock(directory).insert_report_fork(f, now)),
        (_, Some(_)) => {
            VerifiedReport::decode(raw).and_then(|v| lock(directory).insert_report(v, now))
        }
    };
    let fork_of = |dir: &Directory, m: Option<libp2p::PeerId>| {
        dir.measurements()
            .and_then(|ms| ms.forks().find(|f| Some(f.measurer) == m).map(|f| f.digest))
    };
    match result {
        Ok(ReportInserted::New | ReportInserted::Updated) => Some(digest),
        Ok(ReportInserted::Forked) => {
            warn!("a measurer signed two reports of one period that do not extend each other (via {from}); its reports are refused while the proof lasts");
            // What goes on is the proof, whichever record completed it.
            fork_of(&lock(directory), claimed)
        }
        Ok(ReportInserted::Unchanged) => None,
        Err(e) => {
            // A report of a measurer we do not list yet may count once its
            // descriptor arrives, one from a little ahead of our clock
            // once we catch up, and one of a measurer that forked a report
            // once the proof runs out if it is for a later period; any
            // other is refused for good.
            let later = match &e {
                ReportError::UnknownMeasurer(_) => true,
                ReportError::OutOfWindow { epoch, first, .. } => epoch >= first,
                ReportError::Forked {
                    epoch, fork_epoch, ..
                } => epoch > fork_epoch,
                _ => false,
            };
            if !later {
                lock(directory).note_refused(digest);
            }
            match e.kind() {
                ErrorKind::PeerMisbehaved => {
                    warn!("rejected a measurement report relayed by {from}: {e}")
                }
                _ => debug!("ignored a measurement report relayed by {from}: {e}"),
            }
            None
        }
    }
}

/// Whether the same bytes would be refused again later: not for a
/// descriptor from the near future (it becomes valid), one refused only
/// because the directory was full, or one of an equivocating relay (the
/// evidence runs out, on each node by its own clock).
fn remember_refusal(e: &DescriptorError) -> bool {
    !matches!(
        e,
        DescriptorError::FromFuture { .. }
            | DescriptorError::DirectoryFull { .. }
            | DescriptorError::Equivocated { .. }
    )
}

pub(crate) struct Housekeeping {
    pub(crate) directory: Arc<Mutex<Directory>>,
    pub(crate) own: Arc<Mutex<OwnDescriptor>>,
    pub(crate) discovery: DiscoveryHandle,
    pub(crate) circuits: Arc<CircuitManager>,
    pub(crate) core: Arc<Core>,
    pub(crate) key_dir: PathBuf,
    /// Whether we publish a descriptor (relays and exits only).
    pub(crate) publish: bool,
    pub(crate) peers_dir: Option<PathBuf>,
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
        if keys.onion.keypair.public == lock(&self.own).template.onion_key {
            return false;
        }
        self.core.set_onion_keys(
            keys.onion.keypair.clone(),
            keys.previous_onion.map(|k| k.keypair),
        );
        let mut own = lock(&self.own);
        own.template.onion_key = keys.onion.keypair.public;
        own.template.onion_key_expires = keys.onion.expires;
        info!("rotated the onion key");
        true
    }
}

/// How long after start the first republication is due: between
/// `REPUBLISH_EVERY - FIRST_REPUBLISH_JITTER` and `REPUBLISH_EVERY`.
fn first_republish(rng: &mut impl rand::Rng) -> Duration {
    REPUBLISH_EVERY - rng.gen_range(Duration::ZERO..=FIRST_REPUBLISH_JITTER)
}

pub(crate) async fn housekeeping(hk: Housekeeping, mut shutdown: watch::Receiver<bool>) {
    // Our first descriptor was published at start.
    let mut next_publish = Instant::now() + first_republish(&mut rand::thread_rng());
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut fast = tokio::time::interval(Duration::from_secs(1));
    let mut next_cache = Instant::now() + STATE_EVERY;
    let mut next_marks = Instant::now() + STATE_EVERY;
    let mut cached: Option<Arc<[veilnet_dir::RecordKey]>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = fast.tick() => {
                hk.circuits.prune();
                // A new slot's cut may let records held back count.
                lock(&hk.directory).tick(unix_now());
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
        if hk.publish && (rotated || Instant::now() >= next_publish) {
            let signed = lock(&hk.own).sign_new();
            match signed.map(|s| (s.digest(), lock(&hk.directory).insert(&s, now))) {
                Ok((digest, Ok(_))) => {
                    next_publish = Instant::now() + REPUBLISH_EVERY;
                    hk.discovery.announce(vec![digest]).await;
                }
                Ok((_, Err(e))) => warn!("cannot store our own descriptor: {e}"),
                Err(e) => warn!("cannot sign our descriptor: {e}"),
            }
        }
        if let Some(dir) = &hk.peers_dir {
            // The marks change with every descriptor accepted: written
            // every 30 s they came to megabytes a minute at 10,000 nodes.
            if Instant::now() >= next_marks {
                next_marks = Instant::now() + STATE_EVERY;
                save_seq_marks(&hk.directory, dir);
            }
            if hk.publish && Instant::now() >= next_cache {
                next_cache = Instant::now() + STATE_EVERY;
                let (directory, dir) = (hk.directory.clone(), dir.clone());
                let mut last = cached.take();
                cached = tokio::task::spawn_blocking(move || {
                    save_cache(&directory, &dir, &mut last);
                    last
                })
                .await
                .unwrap_or(None);
            }
            let peers = hk.discovery.connected_peers().await;
            if !peers.is_empty() {
                if let Err(e) = veilnet_config::save_peers(dir, &peers) {
                    debug!("cannot save known peers: {e}");
                }
            }
            save_fetch_relays(&hk.discovery, dir).await;
        }
    }
}

/// Saves a client's fetch relays to `dir` (a relay has none; an empty
/// list, before the first fetch, leaves the file as it was).
pub(crate) async fn save_fetch_relays(
    discovery: &veilnet_discovery::DiscoveryHandle,
    dir: &std::path::Path,
) {
    let relays = discovery.fetch_relays().await;
    if relays.is_empty() {
        return;
    }
    if let Err(e) = veilnet_config::save_fetch_relays(dir, &relays) {
        warn!("cannot save the fetch relays: {e}");
    }
}

/// Saves the directory's sequence marks to `dir` if they changed.
pub(crate) fn save_seq_marks(directory: &Mutex<Directory>, dir: &std::path::Path) {
    let Some(marks) = lock(directory).seq_marks() else {
        return;
    };
    if let Err(e) = veilnet_config::save_state(dir, veilnet_dir::SEQ_MARKS_FILE, &marks) {
        warn!("cannot save the directory's sequence numbers: {e}");
    }
}

/// Saves the directory's records to `dir` ([`veilnet_dir::cache`]) if
/// they changed since `last` (the keys saved last time, updated).
pub(crate) fn save_cache(
    directory: &Mutex<Directory>,
    dir: &std::path::Path,
    last: &mut Option<Arc<[veilnet_dir::RecordKey]>>,
) {
    let (keys, bytes) = {
        let d = lock(directory);
        let keys = d.keys();
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &keys)) || keys.is_empty() {
            return;
        }
        // Encoded under the lock (a copy of each record, no more than the
        // file takes); written after.
        (keys, d.cache())
    };
    match veilnet_config::save_state_bytes(dir, veilnet_dir::cache::CACHE_FILE, &bytes) {
        Ok(()) => *last = Some(keys),
        Err(e) => warn!("cannot save the directory cache: {e}"),
    }
}

/// Refills the directory from the cache saved in `dir`, if any: each
/// record is checked as one from a peer would be (stale ones are refused).
/// Returns how many were stored.
pub(crate) fn load_cache(
    directory: &Mutex<Directory>,
    dir: &std::path::Path,
    own: libp2p::PeerId,
) -> usize {
    let path = dir.join(veilnet_dir::cache::CACHE_FILE);
    let bytes = match veilnet_config::load_state_bytes(
        dir,
        veilnet_dir::cache::CACHE_FILE,
        veilnet_dir::cache::MAX_CACHE_BYTES,
    ) {
        Ok(Some(b)) => b,
        Ok(None) => return 0,
        Err(e) => {
            warn!("ignoring the directory cache: {e}");
            return 0;
        }
    };
    let (records, damage) = veilnet_dir::cache::decode(&bytes);
    if let Some(e) = damage {
        warn!(
            "directory cache {}: {e}; using the {} records before it (the rest is fetched from peers)",
            path.display(),
            records.len()
        );
    }
    let offered = records.len();
    let mut records = records.into_iter();
    let mut stored = 0;
    // In batches as from a peer: in cache order, descriptors come first.
    loop {
        let batch: Vec<Vec<u8>> = records.by_ref().take(CACHE_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        stored += feed(directory, own, batch).len();
    }
    info!("restored {stored} of {offered} cached directory records");
    stored
}

/// Restores the sequence marks saved in `dir`, if any.
pub(crate) fn load_seq_marks(directory: &Mutex<Directory>, dir: &std::path::Path) {
    let loaded = veilnet_config::load_state::<veilnet_dir::SeqMarks>(
        dir,
        veilnet_dir::SEQ_MARKS_FILE,
        veilnet_dir::MAX_SEQ_MARKS_FILE_BYTES,
    );
    match loaded {
        Ok(None) => {}
        Ok(Some(marks)) => match lock(directory).restore_seq_marks(marks) {
            Ok(n) => debug!("restored {n} sequence numbers of relays seen before"),
            Err(e) => warn!("ignoring the saved sequence numbers: {e}"),
        },
        Err(e) => warn!("ignoring the saved sequence numbers: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_republication_is_spread_over_the_second_half_of_the_period() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..200).map(|_| first_republish(&mut rng)).collect();
        let earliest = REPUBLISH_EVERY - FIRST_REPUBLISH_JITTER;
        assert!(draws
            .iter()
            .all(|d| (earliest..=REPUBLISH_EVERY).contains(d)));
        // Spread, not one instant: both quarters of the window are used.
        let mid = earliest + FIRST_REPUBLISH_JITTER / 2;
        assert!(draws.iter().any(|d| *d < mid) && draws.iter().any(|d| *d > mid));
        // A republication may be missed without the descriptor expiring.
        assert!(REPUBLISH_EVERY.as_secs() * 2 <= veilnet_dir::MAX_DESCRIPTOR_AGE);
    }

    #[test]
    fn sequence_marks_survive_a_restart_and_a_corrupt_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!(
            "veilnet-seqs-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let own = libp2p::PeerId::random();
        let relay = libp2p::PeerId::random();
        let mark = veilnet_dir::SeqMark {
            peer: relay,
            seq: 42,
            digest: [7; 32],
            at: 1_700_000_000,
        };
        let before = Mutex::new(Directory::new(own));
        let marks = veilnet_dir::SeqMarks {
            version: 1,
            marks: vec![mark],
        };
        lock(&before).restore_seq_marks(marks.clone()).unwrap();
        // Nothing accepted since: restoring is not a change to save.
        save_seq_marks(&before, &dir);
        assert!(!dir.join(veilnet_dir::SEQ_MARKS_FILE).exists());
        veilnet_config::save_state(&dir, veilnet_dir::SEQ_MARKS_FILE, &marks).unwrap();
        let after = Mutex::new(Directory::new(own));
        load_seq_marks(&after, &dir);
        // Loaded: the same mark again is not news.
        assert_eq!(lock(&after).restore_seq_marks(marks.clone()).unwrap(), 0);
        assert_eq!(
            lock(&Mutex::new(Directory::new(own)))
                .restore_seq_marks(marks)
                .unwrap(),
            1
        );
        std::fs::write(dir.join(veilnet_dir::SEQ_MARKS_FILE), b"{not json").unwrap();
        let fresh = Mutex::new(Directory::new(own));
        load_seq_marks(&fresh, &dir);
        assert_eq!(lock(&fresh).len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A joining node gets the oldest records first: a report that comes
    /// before its measurer's descriptor waits (known, so not fetched
    /// again) and is stored, and announced, when the descriptor comes.
    fn key(n: u8) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap()
    }

    /// A relay's descriptor for `k` at `ip`, published a minute ago.
    fn descriptor(k: &libp2p::identity::Keypair, ip: &str) -> veilnet_dir::SignedDescriptor {
        let now = unix_now();
        let public = k.public();
        veilnet_dir::Descriptor {
            peer_id: public.to_peer_id(),
            identity_key: public.encode_protobuf(),
            link_addrs: vec![format!("{ip}:9001").parse().unwrap()],
            p2p_addrs: vec!["/ip4/198.51.100.1/tcp/4001".parse().unwrap()],
            onion_key: [0x11; 32],
            onion_key_expires: now + 7 * 24 * 3600,
            link_key: [0x24; 32],
            roles: veilnet_dir::Roles {
                relay: true,
                exit: false,
            },
            exit_policy: veilnet_policy::ExitPolicy::reject_all(),
            bandwidth: 1_000_000,
            region: "ZZ".into(),
            family: vec![],
            version: "veilnet/0.1.0".into(),
            seq: 1,
            published: now - 60,
        }
        .sign(k)
        .unwrap()
    }

    /// `measurer`'s signed report of one observation of `target`.
    fn report(measurer: &libp2p::identity::Keypair, target: &libp2p::identity::Keypair) -> Vec<u8> {
        let now = unix_now();
        veilnet_dir::Report {
            measurer: measurer.public().to_peer_id(),
            published: now - 30,
            observations: vec![veilnet_dir::Observation {
                target: target.public().to_peer_id(),
                bandwidth: 2_000_000,
                reached: true,
                since: now - 3600,
            }],
        }
        .sign(measurer)
        .unwrap()
    }

    #[test]
    fn the_directory_cache_refills_a_restarted_node_and_damage_costs_only_the_rest() {
        let data = std::env::temp_dir().join(format!(
            "veilnet-cache-{}-{}",
            std::process::id(),
            unix_now()
        ));
        std::fs::create_dir_all(&data).unwrap();
        let fresh = || {
            let d = Directory::new(libp2p::PeerId::random());
            let d = Mutex::new(d);
            lock(&d).use_measurements(Some(veilnet_dir::MeasureParams::PUBLIC));
            d
        };
        let own = libp2p::PeerId::random();
        // Nothing saved yet: nothing restored, no error.
        assert_eq!(load_cache(&fresh(), &data, own), 0);
        let before = fresh();
        let relays: Vec<_> = (1..=4).map(key).collect();
        let mut records: Vec<Vec<u8>> = relays
            .iter()
            .enumerate()
            .map(|(i, k)| descriptor(k, &format!("198.51.{i}.1")).to_bytes())
            .collect();
        // Reports last, as they travel: the cache keeps the same order.
        records.push(report(&relays[0], &relays[1]));
        records.push(report(&relays[1], &relays[2]));
        assert_eq!(feed(&before, own, records.clone()).len(), 6);
        let mut last = None;
        save_cache(&before, &data, &mut last);
        let path = data.join(veilnet_dir::cache::CACHE_FILE);
        let saved = std::fs::read(&path).unwrap();
        // Unchanged since: not written again.
        std::fs::remove_file(&path).unwrap();
        save_cache(&before, &data, &mut last);
        assert!(!path.exists());
        std::fs::write(&path, &saved).unwrap();
        let after = fresh();
        assert_eq!(load_cache(&after, &data, own), 6);
        assert_eq!(lock(&after).keys(), lock(&before).keys());
        // Cut short inside the last report: everything before it is kept.
        std::fs::write(&path, &saved[..saved.len() - 10]).unwrap();
        let cut = fresh();
        assert_eq!(load_cache(&cut, &data, own), 5);
        // Junk, or an edited record: refused as from a peer, never stored.
        std::fs::write(&path, b"not a cache at all").unwrap();
        assert_eq!(load_cache(&fresh(), &data, own), 0);
        let mut edited = saved.clone();
        let at = edited.len() - 100;
        edited[at] ^= 1;
        std::fs::write(&path, &edited).unwrap();
        let forged = fresh();
        assert_eq!(load_cache(&forged, &data, own), 5);
        // The edited one (the last in the file, a report) is not held.
        let last = *lock(&before).keys().last().unwrap();
        assert_eq!(lock(&forged).keys().len(), 5);
        assert!(!lock(&forged).knows(&last.1));
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn a_report_ahead_of_its_measurers_descriptor_waits_for_it() {
        let (measurer, target) = (key(1), key(2));
        let report = report(&measurer, &target);
        let report_digest = veilnet_dir::digest(&report);
        let dir = Mutex::new(Directory::new(libp2p::PeerId::random()));
        lock(&dir).use_measurements(Some(veilnet_dir::MeasureParams::PUBLIC));
        let from = libp2p::PeerId::random();
        assert!(feed(&dir, from, vec![report.clone()]).is_empty());
        assert!(
            lock(&dir).knows(&report_digest),
            "waits, so not fetched again"
        );
        assert!(!lock(&dir).measurements().unwrap().holds(&report_digest));
        assert!(feed(&dir, from, vec![report.clone()]).is_empty());
        // Another relay's descriptor leaves it waiting.
        let other = descriptor(&target, "198.51.100.2");
        assert_eq!(feed(&dir, from, vec![other.to_bytes()]).len(), 1);
        assert_eq!(lock(&dir).awaiting().len(), 1);
        let listed = descriptor(&measurer, "198.51.100.1");
        let stored = feed(&dir, from, vec![listed.to_bytes()]);
        assert_eq!(stored, vec![listed.digest(), report_digest]);
        assert!(lock(&dir).measurements().unwrap().holds(&report_digest));
        assert!(lock(&dir).awaiting().is_empty());
    }
}
