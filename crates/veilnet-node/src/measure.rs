//! The relay's measurer: each period it measures the relays it is
//! assigned ([`veilnet_dir::measure::assigned`]) and publishes a signed
//! report of what it saw.
//!
//! One measurement of relay `T`: a link to `T`'s listed address under a
//! throwaway identity used for nothing else (`T` reached, or not), a
//! circuit `T → H → us` with a helper `H` drawn by weight, and a stream to
//! a sink in our own node ([`veilnet_proto::Sinks`]) that sends data at up
//! to `max_rate` for `duration_ms`, twice, a random pause apart. What
//! arrives after the first quarter of the time, per second, is a sample
//! (so a bucket's burst does not count); the higher sample is the figure
//! (contention only lowers one). `T` sees a client that builds a circuit and downloads, as any
//! client does; the sink's name is inside our own layer. Not hidden: `T`
//! sees the client's address, which is a relay's.
//!
//! Measurements run one at a time, so their traffic is at most
//! `max_rate`; it is counted in [`MeasureStats`], apart from the
//! directory's. The report goes out once a period (after each measurement
//! in periods under an hour, as test networks use).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::PeerId;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use veilnet_config::{unix_now, MeasureConfig};
use veilnet_dir::measure::assigned;
use veilnet_dir::measure::MAX_REPORT_BYTES;
use veilnet_dir::path::compatible;
use veilnet_dir::{Descriptor, Directory, MeasureParams, Observation, Report, VerifiedReport};
use veilnet_discovery::DiscoveryHandle;
use veilnet_proto::{Core, HopSpec};

use crate::lock;

/// Longest a measurement circuit may take to build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after start the first period's measurements begin (the
/// directory needs a moment to fill).
const FIRST_DELAY: Duration = Duration::from_secs(2);
/// Periods shorter than this publish a report after each measurement;
/// longer ones once per period.
const PUBLISH_EACH_BELOW_SECS: u64 = 60 * 60;
/// Downloads per measurement; the highest counts.
const SAMPLES: usize = 2;
/// Bytes written to the sink at a time.
const CHUNK: usize = 16 * 1024;

/// The network's parameters from the `[measure]` section.
pub(crate) fn params(c: &MeasureConfig) -> MeasureParams {
    MeasureParams {
        period_secs: c.period_secs,
        measurers_per_target: c.measurers_per_target,
        window_epochs: c.window_periods,
        min_measurers: c.min_measurers,
        ramp_secs: c.ramp_secs,
        required: c.required,
        max_rate: c.max_rate,
    }
}

/// What the measurer did, apart from the directory's traffic.
#[derive(Debug, Default)]
pub struct MeasureStats {
    /// Measurements attempted.
    pub measurements: AtomicU64,
    /// Of those, relays not reached.
    pub unreached: AtomicU64,
    /// Bytes received through measurement circuits.
    pub bytes: AtomicU64,
    /// Reports published.
    pub reports: AtomicU64,
}

pub(crate) struct Measurer {
    pub(crate) directory: Arc<Mutex<Directory>>,
    pub(crate) core: Arc<Core>,
    pub(crate) identity: Keypair,
    pub(crate) discovery: DiscoveryHandle,
    pub(crate) config: MeasureConfig,
    pub(crate) stats: Arc<MeasureStats>,
    /// When we first reached each relay (what our reports claim as its
    /// first measurement), for relays still listed.
    pub(crate) first_reached: Mutex<HashMap<PeerId, u64>>,
    /// Where our latest report is kept across restarts
    /// ([`OWN_REPORT_FILE`]), if anywhere.
    pub(crate) state_dir: Option<std::path::PathBuf>,
}

/// Our latest signed report, in the data directory: a restarted measurer
/// continues its period's chain from it, so that it never signs two
/// reports of one period that do not extend each other (which every node
/// would keep as proof against it, [`veilnet_dir::ReportFork`]).
pub(crate) const OWN_REPORT_FILE: &str = "own-report.json";

/// [`OWN_REPORT_FILE`]'s contents.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedReport {
    /// The signed report (hex).
    record: String,
}

/// Whether `observations` add a relay to `held` (what our latest report of
/// the period observed), and so make a report that extends it:
/// `held`'s observations first, then the new relays, at most
/// [`MAX_OBSERVATIONS`](veilnet_dir::measure::MAX_OBSERVATIONS).
fn continue_chain(held: &[Observation], observations: &[Observation]) -> Option<Vec<Observation>> {
    let mut all = held.to_vec();
    for o in observations {
        if all.len() < veilnet_dir::measure::MAX_OBSERVATIONS
            && !all.iter().any(|h| h.target == o.target)
        {
            all.push(*o);
        }
    }
    (all.len() > held.len()).then_some(all)
}

/// How many measurers the directory counts: `n` of the assignment
/// (without measurements in the directory, every relay).
fn measurer_count(dir: &Directory) -> usize {
    match dir.latest_weights().measurers().len() {
        0 => dir.iter().filter(|d| d.roles.relay).count(),
        n => n,
    }
}

fn hop(d: &Descriptor) -> Option<HopSpec> {
    Some(HopSpec {
        peer: d.peer_id,
        addr: *d.link_addrs.first()?,
        onion_key: d.onion_key,
        link_key: d.link_key,
    })
}

impl Measurer {
    fn own(&self) -> PeerId {
        self.identity.public().to_peer_id()
    }

    /// The relays assigned to us in `epoch`, in random order.
    fn assignments(&self, epoch: u64) -> Vec<PeerId> {
        let own = self.own();
        let k = self.config.measurers_per_target;
        let dir = lock(&self.directory);
        // Until we have earned our place (others reached us in an earlier
        // period), our reports would not count: measuring would only cost
        // the targets and us. Who counts is decided from every report held,
        // not only those by the cut: the period's own reports come after.
        let weights = dir.latest_weights();
        let counted = weights.measurers();
        if !counted.is_empty() && !counted.contains(&own) {
            debug!("not measuring this period: not yet a counted measurer");
            return Vec::new();
        }
        let eligible = measurer_count(&dir);
        let private_ok = dir.allows_private_relays();
        // We dial each target's first address: never a private or
        // loopback one a relay lists, unless this is a test network.
        let dialable = |d: &Descriptor| {
            d.link_addrs
                .first()
                .is_some_and(|a| private_ok || !veilnet_policy::is_private_or_special(a.ip()))
        };
        let mut targets: Vec<PeerId> = dir
            .iter()
            .filter(|d| d.roles.relay && d.peer_id != own && dialable(d))
            .map(|d| d.peer_id)
            .filter(|t| assigned(epoch, &own, t, eligible, k, 100))
            .collect();
        // Shuffled before cut to the report's size, so that low peer ids
        // cannot crowd the others out.
        targets.shuffle(&mut rand::thread_rng());
        targets.truncate(veilnet_dir::measure::MAX_OBSERVATIONS);
        targets
    }

    /// Whether `target` is still assigned to us in `epoch` with the
    /// directory as it is now (it was when the period began).
    fn still_assigned(&self, epoch: u64, target: &PeerId) -> bool {
        let n = measurer_count(&lock(&self.directory));
        assigned(
            epoch,
            &self.own(),
            target,
            n,
            self.config.measurers_per_target,
            100,
        )
    }

    /// The hops of a measurement of `target`: it, a helper drawn by weight
    /// (any other relay while none weighs anything), and us.
    fn path(&self, target: &PeerId) -> Option<Vec<HopSpec>> {
        let own = self.own();
        let dir = lock(&self.directory);
        let weights = dir.weights();
        let target_desc = dir.get(target)?;
        let own_desc = dir.get(&own)?;
        let first = hop(target_desc)?;
        let last = hop(own_desc)?;
        // A helper that could share a path with both ends (not the same
        // /16 or family as either).
        let others: Vec<&Descriptor> = dir
            .iter()
            .filter(|d| d.roles.relay && d.peer_id != own && d.peer_id != *target)
            .filter(|d| !d.link_addrs.is_empty())
            .filter(|d| compatible(d, target_desc) && compatible(d, own_desc))
            .collect();
        let weighted: Vec<(&Descriptor, u64)> = others
            .iter()
            .map(|d| (*d, weights.get(&d.peer_id)))
            .filter(|(_, w)| *w > 0)
            .collect();
        let mut rng = rand::thread_rng();
        let helper = if weighted.is_empty() {
            *others.choose(&mut rng)?
        } else {
            weighted.choose_weighted(&mut rng, |(_, w)| *w).ok()?.0
        };
        Some(vec![first, hop(helper)?, last])
    }

    /// Measures `target` once; `None` if the measurement says nothing
    /// about it (our own side or the helper failed).
    async fn measure(&self, target: PeerId) -> Option<Observation> {
        let path = self.path(&target)?;
        self.stats.measurements.fetch_add(1, Ordering::Relaxed);
        let first = &path[0];
        let unreached = Observation {
            target,
            bandwidth: 0,
            reached: false,
            since: 0,
        };
        let link = match self
            .core
            .separate_client_link(first.peer, first.addr, &first.link_key)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                debug!(%target, "measurement: relay not reached: {e}");
                self.stats.unreached.fetch_add(1, Ordering::Relaxed);
                return Some(unreached);
            }
        };
        let result = self.transfer(link.clone(), &path).await;
        link.close();
        let bandwidth = match result {
            Ok(bw) => bw,
            Err(e) => {
                debug!(%target, "measurement inconclusive: {e}");
                return None;
            }
        };
        // Our own first reach of it, never another's claim.
        let since = {
            let mut first = lock(&self.first_reached);
            if first.len() >= veilnet_dir::MAX_NODES && !first.contains_key(&target) {
                // Forget those no longer listed.
                let dir = lock(&self.directory);
                first.retain(|p, _| dir.get(p).is_some());
            }
            *first.entry(target).or_insert_with(unix_now)
        };
        Some(Observation {
            target,
            bandwidth: bandwidth.min(veilnet_dir::measure::MAX_REPORTED_RATE),
            reached: true,
            since,
        })
    }

    /// Builds the circuit over `link`, downloads from our sink
    /// [`SAMPLES`] times at moments a random pause apart, and returns the
    /// highest bandwidth seen: a sample that shared the relay with other
    /// traffic shows less than the relay has, never more.
    async fn transfer(
        &self,
        link: Arc<veilnet_proto::Link>,
        path: &[HopSpec],
    ) -> Result<u64, String> {
        let duration = Duration::from_millis(self.config.duration_ms);
        let circuit = tokio::time::timeout(BUILD_TIMEOUT, self.core.build_circuit_on(link, path))
            .await
            .map_err(|_| "circuit build timed out".to_string())?
            .map_err(|e| format!("circuit: {e}"))?;
        let mut best = 0;
        for i in 0..SAMPLES {
            if i > 0 {
                let pause = duration.mul_f64(rand::thread_rng().gen_range(1.0..3.0));
                tokio::time::sleep(pause).await;
            }
            let sample = self.sample(&circuit, duration).await;
            match sample {
                Ok(bw) => best = best.max(bw),
                Err(e) if i == 0 => {
                    circuit.close();
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        circuit.close();
        Ok(best)
    }

    /// One download from a fresh sink through `circuit`: bytes per second
    /// after the first quarter of `duration` (so that a bucket's burst does
    /// not count), between the first and the last arrival.
    async fn sample(
        &self,
        circuit: &veilnet_proto::ClientCircuit,
        duration: Duration,
    ) -> Result<u64, String> {
        let sink_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("sink listener: {e}"))?;
        let sink_addr = sink_listener
            .local_addr()
            .map_err(|e| format!("sink listener: {e}"))?;
        let sink = self
            .core
            .sinks()
            .register(sink_addr)
            .ok_or("too many sinks")?;
        let stream = circuit
            .open_stream(sink.target())
            .await
            .map_err(|e| format!("stream: {e}"))?;
        // The stream's end at our side is a socket pair on loopback.
        let (app, mut reader) = socket_pair().await?;
        let pump = tokio::spawn(stream.run(app, Vec::new()));
        let accepted = tokio::time::timeout(BUILD_TIMEOUT, sink_listener.accept()).await;
        drop(sink);
        let (mut served, _) = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                pump.abort();
                return Err(format!("sink accept: {e}"));
            }
            Err(_) => {
                pump.abort();
                return Err("the sink was not reached".into());
            }
        };
        let max_rate = self.config.max_rate;
        let writer = tokio::spawn(async move {
            let chunk = vec![0u8; CHUNK];
            let start = Instant::now();
            let mut sent: u64 = 0;
            while start.elapsed() < duration {
                // Paced to max_rate.
                let allowed =
                    (start.elapsed().as_secs_f64() * max_rate as f64) as u64 + CHUNK as u64;
                if sent >= allowed {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                if served.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += CHUNK as u64;
            }
            let _ = served.shutdown().await;
        });
        let start = Instant::now();
        let settle = start + duration / 4;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        // The first and the latest arrival after the settling time, and
        // the bytes received since the first: data comes in bursts (a
        // relay's bucket lets a record through at a time), so the rate is
        // taken between arrivals, not over the whole window.
        let mut first: Option<Instant> = None;
        let mut last = start;
        let mut counted = 0u64;
        let deadline = start + duration;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match tokio::time::timeout(deadline - now, reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    total += n as u64;
                    let at = Instant::now();
                    if at < settle {
                        continue;
                    }
                    if first.is_none() {
                        first = Some(at);
                    } else {
                        counted += n as u64;
                    }
                    last = at;
                }
            }
        }
        writer.abort();
        pump.abort();
        self.stats.bytes.fetch_add(total, Ordering::Relaxed);
        Ok(rate(counted, first, last, duration))
    }

    /// Our held report of `epoch`, if any.
    fn held_report(&self, epoch: u64) -> Option<Report> {
        let own = self.own();
        let dir = lock(&self.directory);
        let m = dir.measurements()?;
        let p = *m.params();
        let held = m
            .reports_of(&own)
            .find(|r| p.epoch(r.published) == epoch)
            .cloned();
        held
    }

    /// Puts our saved report back into the directory, so the period's chain
    /// goes on from it after a restart. Returns the period of a saved report
    /// that could not be put back: nothing is published for that period,
    /// since a report that does not extend the one the network holds would
    /// be taken as a fork.
    fn restore(&self) -> Option<u64> {
        let dir = self.state_dir.as_ref()?;
        let period = params(&self.config);
        let saved: SavedReport = match veilnet_config::load_state(
            dir,
            OWN_REPORT_FILE,
            4 * MAX_REPORT_BYTES as u64,
        ) {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                // Which period it was for is unknown: this one may be.
                warn!("cannot read our saved measurement report, so none is published this period: {e}");
                return Some(period.epoch(unix_now()));
            }
        };
        let verified = hex::decode(&saved.record)
            .map_err(|e| e.to_string())
            .and_then(|b| VerifiedReport::decode(&b).map_err(|e| e.to_string()))
            .and_then(|v| {
                if v.report.measurer == self.own() {
                    Ok(v)
                } else {
                    Err(format!("it is {}'s", v.report.measurer))
                }
            });
        match verified {
            Ok(v) => {
                let epoch = period.epoch(v.report.published);
                let current = epoch == period.epoch(unix_now());
                match lock(&self.directory).insert_report(v, unix_now()) {
                    Ok(_) => None,
                    // One of a past period is of no use now.
                    Err(_) if !current => None,
                    Err(e) => {
                        warn!("our saved measurement report of this period could not be restored, so none is published until the next: {e}");
                        Some(epoch)
                    }
                }
            }
            Err(e) => {
                warn!(
                    "cannot use our saved measurement report {}, so none is published this period: {e}",
                    dir.join(OWN_REPORT_FILE).display()
                );
                Some(period.epoch(unix_now()))
            }
        }
    }

    /// Signs a report of `observations` at `now`, stores it and announces
    /// it. It extends our report of the period held before (observing all
    /// it did, and more), or is not made.
    async fn publish(&self, observations: &[Observation], epoch: u64) {
        // A measurement that ended just after its period is still that
        // period's (its assignment is).
        let period = self.config.period_secs;
        let end = (epoch + 1) * period - 1;
        let held = self.held_report(epoch);
        let Some(observations) = continue_chain(
            held.as_ref().map_or(&[][..], |h| &h.observations),
            observations,
        ) else {
            return;
        };
        let report = Report {
            measurer: self.own(),
            published: unix_now()
                .clamp(epoch * period, end)
                .max(held.map_or(0, |h| h.published)),
            observations,
        };
        let record = match report.sign(&self.identity) {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot sign a measurement report: {e}");
                return;
            }
        };
        let verified = match VerifiedReport::decode(&record) {
            Ok(v) => v,
            Err(e) => {
                warn!("our own measurement report does not verify: {e}");
                return;
            }
        };
        // Saved before anyone sees it: after a restart we go on from it.
        if let Some(dir) = &self.state_dir {
            let saved = SavedReport {
                record: hex::encode(&record),
            };
            if let Err(e) = veilnet_config::save_state(dir, OWN_REPORT_FILE, &saved) {
                warn!("cannot save our measurement report, so it is not published: {e}");
                return;
            }
        }
        let digest = verified.digest;
        let stored = lock(&self.directory).insert_report(verified, report.published);
        match stored {
            Ok(_) => {
                self.stats.reports.fetch_add(1, Ordering::Relaxed);
                self.discovery.announce(vec![digest]).await;
            }
            Err(e) => debug!("our measurement report was not stored: {e}"),
        }
    }

    /// Runs until shutdown.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let p = params(&self.config);
        tokio::select! {
            _ = tokio::time::sleep(FIRST_DELAY) => {}
            _ = shutdown.changed() => return,
        }
        let blocked = self.restore();
        info!(
            period_secs = p.period_secs,
            "measuring the relays assigned to this node each period"
        );
        let duration = Duration::from_millis(self.config.duration_ms);
        loop {
            let started = std::time::SystemTime::now();
            let now = unix_now();
            let epoch = p.epoch(now);
            let targets = self.assignments(epoch);
            // At random moments over what is left of the period (all of it
            // but the last two measurements' time), so measurements of
            // different measurers seldom overlap: a relay measured while it
            // carries another measurement shows less than it has.
            let remaining = ((epoch + 1) * p.period_secs).saturating_sub(now);
            // A node that starts late in a period waits for the next:
            // nodes started together would otherwise crowd their
            // measurements into what is left of it. So does one whose
            // saved report of this period could not be put back.
            if remaining * 2 < p.period_secs || blocked == Some(epoch) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(remaining)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let left = Duration::from_secs(remaining).saturating_sub(duration * 2);

            let mut at: Vec<Duration> = {
                let mut rng = rand::thread_rng();
                targets
                    .iter()
                    .map(|_| left.mul_f64(rng.gen_range(0.0..1.0)))
                    .collect()
            };
            at.sort_unstable();
            let mut observations = Vec::new();
            for (target, at) in targets.into_iter().zip(at) {
                let wait = at.saturating_sub(started.elapsed().unwrap_or_default());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                if p.epoch(unix_now()) != epoch {
                    break;
                }
                // Still ours in today's view of the measurers?
                if !self.still_assigned(epoch, &target) {
                    continue;
                }
                let measured = tokio::select! {
                    m = self.measure(target) => m,
                    _ = shutdown.changed() => return,
                };
                if let Some(o) = measured {
                    observations.push(o);
                    // With short periods (test networks) republished as the
                    // period goes on, so a new network is usable soon (a
                    // later report of the period replaces the earlier
                    // everywhere); with long ones once, when done, so that
                    // every node receives one report per measurer a period.
                    if p.period_secs < PUBLISH_EACH_BELOW_SECS {
                        self.publish(&observations, epoch).await;
                    }
                }
            }
            if p.period_secs >= PUBLISH_EACH_BELOW_SECS && !observations.is_empty() {
                self.publish(&observations, epoch).await;
            }
            let next = (epoch + 1) * p.period_secs;
            let wait = next.saturating_sub(unix_now());
            let jitter = rand::thread_rng().gen_range(0..=p.period_secs / 10);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait + jitter)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Bytes per second from `counted` bytes that arrived after the read at
/// `first` until `last`. With fewer than a tenth of the window between them
/// (the data stalled), the whole window counts instead.
fn rate(counted: u64, first: Option<Instant>, last: Instant, window: Duration) -> u64 {
    let Some(first) = first else { return 0 };
    let span = last.saturating_duration_since(first);
    let span = if span < window / 10 { window } else { span };
    (counted as f64 / span.as_secs_f64().max(0.001)) as u64
}

/// A connected pair of loopback sockets.
async fn socket_pair() -> Result<(TcpStream, TcpStream), String> {
    let l = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("socket pair: {e}"))?;
    let addr: SocketAddr = l.local_addr().map_err(|e| format!("socket pair: {e}"))?;
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    let a = a.map_err(|e| format!("socket pair: {e}"))?;
    let (b, _) = b.map_err(|e| format!("socket pair: {e}"))?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(seed: u8, bandwidth: u64) -> Observation {
        Observation {
            target: Keypair::ed25519_from_bytes([seed; 32])
                .unwrap()
                .public()
                .to_peer_id(),
            bandwidth,
            reached: true,
            since: 1,
        }
    }

    #[test]
    fn a_report_goes_on_from_the_held_one_or_is_not_made() {
        let held = [o(1, 10), o(2, 20)];
        // The held observations stay as they were; only new relays come in.
        assert_eq!(
            continue_chain(&held, &[o(2, 99), o(3, 30)]),
            Some(vec![o(1, 10), o(2, 20), o(3, 30)])
        );
        // Nothing new (a restart measured the same relay again): no
        // report, since it would not extend the held one.
        assert_eq!(continue_chain(&held, &[o(1, 5)]), None);
        assert_eq!(continue_chain(&[], &[]), None);
        // Never past the most a report may hold.
        let full: Vec<Observation> = (0..veilnet_dir::measure::MAX_OBSERVATIONS as u8)
            .map(|i| o(i + 10, 1))
            .collect();
        assert_eq!(continue_chain(&full, &[o(200, 1)]), None);
    }
}
