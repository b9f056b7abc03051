//! The simulated network: nodes, links with latency, a clock, and an event
//! queue that drives the real reconciliation code
//! ([`sync::open`], [`sync::announce`], [`sync::process`]) between them.
//!
//! One exchange follows `veilnet-discovery`'s node: the initiator sends a
//! request; the responder answers it with `process` (before storing the
//! records the request carried, as the node does); the initiator answers
//! the response with `process` and sends that as the next request unless it
//! is empty or [`MAX_ROUNDS`](veilnet_discovery::sync::MAX_ROUNDS) are done. Every request and every response
//! (even an empty one) is a message with its own latency.

use std::collections::{BinaryHeap, HashSet};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use veilnet_dir::measure::{Observation, Report as MeasureReport};
use veilnet_discovery::announce::{Frame, ANNOUNCE_PROTOCOL};
use veilnet_discovery::sync::{self, AfterRound, SyncLimits, SyncMessage};
use veilnet_discovery::{
    announcement_peers, choose_with_own, DiscoveryConfig, MAX_MESSAGE_BYTES, SYNC_PROTOCOL,
};

use crate::records::{
    log_normal, AddressPlan, Record, RecordId, Records, Relay, EPOCH_UNIX, REPORT_SLOT,
};
use crate::view::{Offer, Store, View};
use crate::{SimConfig, SimError};

/// Microseconds per second.
pub const SEC: u64 = 1_000_000;

/// The limits of a real node with the default configuration (what
/// `veilnet-discovery`'s `wire::limits` makes of
/// [`DiscoveryConfig::DEFAULT_MAX_RECORDS`] and
/// [`DiscoveryConfig::DEFAULT_MAX_RECORD_LEN`]).
pub fn limits() -> SyncLimits {
    let max_records = DiscoveryConfig::DEFAULT_MAX_RECORDS;
    let max_record_len = DiscoveryConfig::DEFAULT_MAX_RECORD_LEN;
    SyncLimits {
        max_records,
        max_record_len,
        max_message_bytes: (max_records * (max_record_len + 4) + sync::MAX_NON_RECORD_BYTES)
            .min(MAX_MESSAGE_BYTES),
    }
}

/// Bytes of a multistream-select negotiation, one direction: the
/// `/multistream/1.0.0\n` header and the protocol line, each with its
/// one-byte varint length (the dialer proposes, the listener echoes).
pub fn multistream_bytes() -> usize {
    let header = "/multistream/1.0.0\n".len() + 1;
    let protocol = SYNC_PROTOCOL.len() + 1 + 1;
    header + protocol
}
/// A yamux frame header.
pub const YAMUX_HEADER: usize = 12;
/// Payload of one yamux data frame (rust-yamux's default split size).
pub const YAMUX_FRAME: usize = 16 * 1024;
/// Noise transport framing per frame: a 2-byte length and a 16-byte tag.
pub const NOISE_FRAME: usize = 2 + 16;

/// The modelled bytes on the wire for one message of `payload` bytes in
/// one direction of a request-response stream: the payload, the
/// multistream-select negotiation, and a yamux header plus Noise framing
/// for each frame (the negotiation, the payload in 16 KiB frames, and the
/// closing FIN), one Noise frame per yamux frame. TCP/IP headers and
/// acknowledgements are not counted. A model, not a capture.
pub fn wire_bytes(payload: usize) -> u64 {
    let frames = 2 + payload.div_ceil(YAMUX_FRAME).max(1);
    (payload + multistream_bytes() + frames * (YAMUX_HEADER + NOISE_FRAME)) as u64
}

/// The modelled bytes on the wire for one announcement frame of `frame`
/// bytes ([`Frame::encoded_len`], its length prefix included) on a
/// long-lived announcement stream: the frame and a yamux header plus Noise
/// framing per 16 KiB (the stream's negotiation is counted once, by
/// [`stream_open_bytes`]).
pub fn frame_bytes(frame: usize) -> u64 {
    let frames = frame.div_ceil(YAMUX_FRAME).max(1);
    (frame + frames * (YAMUX_HEADER + NOISE_FRAME)) as u64
}

/// The modelled bytes of opening an announcement stream, once per link
/// and direction: the negotiation, both ways, in one frame each.
pub fn stream_open_bytes() -> u64 {
    let protocol = ANNOUNCE_PROTOCOL.len() + 1 + 1;
    let header = "/multistream/1.0.0\n".len() + 1;
    (2 * (header + protocol + YAMUX_HEADER + NOISE_FRAME)) as u64
}

/// Bytes each way of setting up a link between two relays, measured on
/// loopback (`ss`, payload bytes) between two veilnet-discovery nodes:
/// multistream negotiation, the Noise XX handshake, yamux, identify both
/// ways, the announcement stream's opening and a first exchange of one
/// small record each (which the model also counts on its own, so a link is
/// over-counted by a few hundred bytes).
pub const RELAY_LINK_SETUP: u64 = 2_400;
/// The same for a client's connection to the relay it fetches from (no
/// announcement stream; a client connects for each fetch).
pub const CLIENT_CONNECT_SETUP: u64 = 2_000;
/// One ping each way: 32 bytes, a yamux header and Noise framing.
pub const PING_BYTES: u64 = (32 + YAMUX_HEADER + NOISE_FRAME) as u64;

/// What an exchange is for (the byte figures are split by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An announcement of newly accepted records.
    Push,
    /// A relay's periodic anti-entropy round.
    Gossip,
    /// A new link's first exchange (a joining relay's bootstrap, or a
    /// replacement link).
    Link,
    /// A client's periodic anti-entropy exchange.
    Client,
}

impl Kind {
    /// Index into per-kind counters.
    pub fn index(self) -> usize {
        match self {
            Kind::Push => 0,
            Kind::Gossip => 1,
            Kind::Link => 2,
            Kind::Client => 3,
        }
    }
    /// Names, by index.
    pub const NAMES: [&'static str; 4] = ["push", "relay_anti_entropy", "new_link", "client"];
}

/// Relays a client stays connected to (the node's `target_peers` for
/// clients).
pub const CLIENT_RELAYS: usize = 3;

/// A simulated node.
#[derive(Debug, Default)]
pub struct Node {
    /// Its relay index, if it is a relay.
    pub relay: Option<u32>,
    /// Whether it runs.
    pub alive: bool,
    /// Its directory.
    pub view: View,
    /// Relays it has a link to (relays only).
    pub neighbours: Vec<u32>,
    /// Those of them it dialed: links of its choosing, where its
    /// announcements go first, as the node's do.
    chosen: Vec<u32>,
    /// Peers it has opened its announcement stream to (with
    /// [`SimConfig::push_stream`]).
    push_streams: Vec<u32>,
    /// Peers it has an anti-entropy exchange open with.
    in_flight: Vec<u32>,
    /// A client's relays (node index, connected since, µs): it keeps
    /// [`CLIENT_RELAYS`], replaces those that left, and fetches from the
    /// one connected longest, as the node does.
    relays_of_client: Vec<(u32, u64)>,
    /// Which of them (by age) its next fetch is with.
    fetch_rank: usize,
    /// Records accepted and not yet announced.
    push_pending: Vec<RecordId>,
    /// The peer all of them came from, if one did (not announced back to).
    push_from: Option<u32>,
    push_scheduled: bool,
    /// Bytes sent and received: before and after warm-up.
    pub bytes: [u64; 2],
    /// Of them, bytes received after warm-up.
    pub received: u64,
    /// When it started and stopped (µs).
    pub born_us: u64,
    /// When it stopped, if it did.
    pub died_us: Option<u64>,
    /// A client's fetches so far, and when the last one began (unix
    /// seconds), for [`SimConfig::client_recent_s`].
    fetches: u32,
    last_fetch_unix: Option<u64>,
}

struct Exchange {
    a: u32,
    b: u32,
    round: usize,
    kind: Kind,
}

enum Ev {
    /// A relay's node (index; a restarted relay runs as a new node, so the
    /// old one's timers end) republishes.
    Publish(u32),
    Gossip(u32),
    Flush(u32),
    Deliver {
        ex: u32,
        to_responder: bool,
        /// Shared: an announcement goes to several peers.
        msg: Rc<SyncMessage>,
        ids: Vec<RecordId>,
    },
    Connect(u32, u32),
    Churn,
    Expire(RecordId),
    /// A measurer (its node's index) publishes its report of a period.
    Report(u32, u64),
    /// A relay that left to restart (its relay index, and the node it ran
    /// as) comes back with the directory it held.
    Rejoin(u32, u32),
    Sample,
}

/// A queue entry in one integer (a heap of 16-byte keys pops faster than
/// one of structs): when (µs, the top 38 bits: 76 hours), a tie-breaking
/// count (58 bits; so equal times keep their order and runs are
/// deterministic), and the event's slot (the low 32 bits).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued(std::cmp::Reverse<u128>);

impl Queued {
    fn new(at: u64, n: u64, slot: u32) -> Self {
        debug_assert!(at < 1 << 38 && n < 1 << 58);
        Queued(std::cmp::Reverse(
            (u128::from(at) << 90) | (u128::from(n) << 32) | u128::from(slot),
        ))
    }
    fn at(&self) -> u64 {
        (self.0 .0 >> 90) as u64
    }
    fn slot(&self) -> u32 {
        self.0 .0 as u32
    }
}

/// Agreement of views at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Agreement {
    /// Simulated hour.
    pub hour: f64,
    /// Fraction of live nodes whose set of relays with a held, unexpired
    /// descriptor equals the most common one.
    pub all: f64,
    /// The same among relays only.
    pub relays: f64,
    /// The same among clients only.
    pub clients: f64,
    /// Fraction of live nodes whose view at the cut (the relays whose
    /// held descriptor was published by it: what paths are chosen from,
    /// [`veilnet_dir::Cut`]) equals the most common one.
    pub cut_all: f64,
    /// The same among relays only.
    pub cut_relays: f64,
    /// The same among clients only.
    pub cut_clients: f64,
    /// Fraction of live nodes holding exactly the most common set of
    /// descriptors (digests).
    pub digests_all: f64,
    /// The same among relays only.
    pub digests_relays: f64,
}

/// Counters of a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    /// Exchanges started, by [`Kind`].
    pub exchanges: [u64; 4],
    /// Modelled wire bytes after warm-up, by [`Kind`].
    pub steady_bytes: [u64; 4],
    /// Modelled bytes after warm-up of setting up connections and of
    /// pings on links, apart from any exchange.
    pub connection_bytes: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Records carried.
    pub records_carried: u64,
    /// Records carried that the receiver already held when they arrived.
    pub records_duplicate: u64,
    /// Records carried that the receiver refused (older than held).
    pub records_refused: u64,
    /// Exchanges that hit `MAX_ROUNDS`.
    pub exchanges_at_max_rounds: u64,
    /// Descriptors published.
    pub published: u64,
    /// Relays that left, and as many joined.
    pub churned: u64,
    /// Events handled.
    pub events: u64,
    /// Of `steady_bytes`, the records' own bytes (the rest is ranges,
    /// digests and framing), by [`Kind`].
    pub steady_record_bytes: [u64; 4],
    /// Of `steady_record_bytes`, those of measurement reports.
    pub steady_report_bytes: [u64; 4],
    /// Measurement reports published (back-dated ones at the start
    /// included).
    pub reports: u64,
    /// Of `records_carried`, measurement reports.
    pub reports_carried: u64,
    /// Reports carried to a node that did not list their measurer yet:
    /// they wait for its descriptor (within the directory's bounds).
    pub reports_unlisted: u64,
    /// Of them, stored once the descriptor came.
    pub reports_waited: u64,
    /// Relays that left to restart (with `restarts`).
    pub restarts: u64,
}

/// The whole simulated network.
pub struct Sim {
    /// Parameters.
    pub cfg: SimConfig,
    /// Every record.
    pub records: Records,
    /// Every relay ever (index = relay id).
    pub relays: Vec<Relay>,
    /// Every node ever.
    pub nodes: Vec<Node>,
    /// Simulated now (µs).
    pub now: u64,
    /// End of the run (µs).
    pub end: u64,
    /// End of warm-up (µs).
    pub warmup: u64,
    /// Hourly samples of agreement.
    pub samples: Vec<Agreement>,
    /// Counters.
    pub counters: Counters,
    /// Live relays (honest and attacker's).
    pub live_relays: u32,
    /// Live nodes.
    pub live_nodes: u32,
    /// For what the nodes choose (peers, latencies).
    rng: StdRng,
    /// For what happens to the network (keys, churn, joiners, publication
    /// times): its own stream, so two runs of one seed that differ only in
    /// protocol settings see the same relays come and go.
    world: StdRng,
    queue: BinaryHeap<Queued>,
    queued: u64,
    /// Events by slot (the heap holds only their keys).
    events: Vec<Option<Ev>>,
    free_events: Vec<u32>,
    exchanges: Vec<Option<Exchange>>,
    free_exchanges: Vec<u32>,
    addresses: AddressPlan,
    limits: SyncLimits,
}

/// Most events one run handles: a bound on the loop, far above what any
/// accepted parameters need.
const MAX_EVENTS: u64 = 50_000_000_000;

impl Sim {
    /// Builds the network as it is at time zero: honest relays (and the
    /// attacker's) each with a descriptor published within the last
    /// republish period, held by every node, and clients.
    pub fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            world: StdRng::seed_from_u64(cfg.seed ^ 0x776f_726c_6400_0000),
            end: (cfg.hours * 3600.0 * SEC as f64) as u64,
            warmup: (cfg.warmup_hours * 3600.0 * SEC as f64) as u64,
            cfg,
            records: Records::default(),
            relays: Vec::new(),
            nodes: Vec::new(),
            now: 0,
            samples: Vec::new(),
            counters: Counters::default(),
            live_relays: 0,
            live_nodes: 0,
            queue: BinaryHeap::new(),
            queued: 0,
            events: Vec::new(),
            free_events: Vec::new(),
            exchanges: Vec::new(),
            free_exchanges: Vec::new(),
            addresses: AddressPlan::default(),
            limits: limits(),
        };
        let clients = (sim.cfg.nodes as f64 * sim.cfg.client_fraction).round() as usize;
        let honest = sim.cfg.nodes - clients;
        if honest < 4 {
            return Err(SimError::BadParameter("fewer than 4 relays".into()));
        }
        let republish = sim.republish_us();
        for _ in 0..honest {
            let exit = sim.rng.gen_bool(sim.cfg.exit_fraction);
            let bw = honest_bandwidth(&mut sim.rng);
            let ip = sim.addresses.address(&mut sim.rng)?;
            let relay = sim.add_relay(ip, bw, bw, exit, false)?;
            let back = sim.rng.gen_range(0..republish);
            sim.publish_initial(relay, back)?;
            if sim.cfg.reports {
                sim.reports_initial(relay)?;
            }
        }
        if sim.cfg.sybils > 0 {
            let honest_total: u64 = sim.relays.iter().map(|r| r.real_bandwidth).sum();
            let real_each = ((honest_total as f64 * sim.cfg.sybil_bandwidth)
                / sim.cfg.sybils as f64)
                .max(1.0) as u64;
            let subnets: Vec<[u8; 3]> = (0..sim.cfg.sybil_subnets)
                .map(|_| sim.addresses.subnet(&mut sim.rng))
                .collect::<Result<_, _>>()?;
            for i in 0..sim.cfg.sybils {
                let [a, b, c] = subnets[i % subnets.len()];
                let host = (i / subnets.len()) % 254 + 1;
                let ip = std::net::Ipv4Addr::new(a, b, c, host as u8);
                let advertised = match sim.cfg.sybil_advertised {
                    0 => real_each,
                    a => a,
                };
                let relay = sim.add_relay(ip, advertised, real_each, true, true)?;
                let back = sim.rng.gen_range(0..republish);
                sim.publish_initial(relay, back)?;
            }
        }
        for _ in 0..clients {
            sim.add_node(None);
        }
        // Everyone starts with the network's current directory.
        let initial: Vec<RecordId> = (0..sim.records.list.len() as u32).collect();
        let now_unix = EPOCH_UNIX;
        for n in 0..sim.nodes.len() {
            for &id in &initial {
                sim.store(n as u32, id, now_unix);
            }
        }
        // Links: each relay dials `degree` random others.
        let relay_nodes: Vec<u32> = sim.relays.iter().map(|r| r.node).collect();
        for &n in &relay_nodes {
            for _ in 0..sim.cfg.degree {
                let peer = relay_nodes[sim.rng.gen_range(0..relay_nodes.len())];
                sim.link(n, peer);
            }
        }
        // Timers, at random phases.
        let relay_interval = sim.secs(sim.cfg.exchange_interval_s);
        for n in 0..sim.nodes.len() as u32 {
            let at = if sim.nodes[n as usize].relay.is_some() {
                sim.rng.gen_range(0..relay_interval.max(1))
            } else {
                sim.next_client_fetch(n, true)
            };
            sim.schedule(at, Ev::Gossip(n));
        }
        if sim.cfg.churn > 0.0 {
            let at = sim.churn_gap();
            sim.schedule(at, Ev::Churn);
        }
        let mut h = 3600 * SEC;
        while h <= sim.end {
            sim.schedule(h, Ev::Sample);
            h += 3600 * SEC;
        }
        Ok(sim)
    }

    fn secs(&self, s: f64) -> u64 {
        (s * SEC as f64) as u64
    }

    /// When a client fetches next (µs): once a slot in the cut's fetch
    /// window ([`veilnet_dir::Cut::fetch_window`], as the node does), or
    /// every `client_interval_s` without one (at a random phase when
    /// `first`).
    fn next_client_fetch(&mut self, n: u32, first: bool) -> u64 {
        let cut = self.cfg.cut();
        let Some(window) = cut.fetch_window() else {
            let every = self.secs(self.cfg.client_interval_s).max(1);
            return self.now
                + if first {
                    self.rng.gen_range(0..every)
                } else {
                    every
                };
        };
        let slots = veilnet_discovery::FetchSlots::new(cut.every_secs, window);
        let now = std::time::Duration::from_micros(EPOCH_UNIX * SEC + self.now);
        let (delay, rank) = slots.next(now, self.rng.gen::<f64>());
        self.nodes[n as usize].fetch_rank = rank;
        self.now + delay.as_micros() as u64
    }

    fn republish_us(&self) -> u64 {
        self.secs(self.cfg.republish_mins * 60.0)
    }

    fn unix(&self) -> u64 {
        EPOCH_UNIX + self.now / SEC
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        if at > self.end {
            // Never handled (descriptor expiry past the end, mostly).
            return;
        }
        self.queued += 1;
        let slot = match self.free_events.pop() {
            Some(i) => {
                self.events[i as usize] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                u32::try_from(self.events.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.queue.push(Queued::new(at, self.queued, slot));
    }

    fn latency(&mut self) -> u64 {
        let ms = self
            .rng
            .gen_range(self.cfg.latency_min_ms..=self.cfg.latency_max_ms);
        ms * 1000 + self.rng.gen_range(0..1000)
    }

    fn add_node(&mut self, relay: Option<u32>) -> u32 {
        let n = self.nodes.len() as u32;
        self.nodes.push(Node {
            relay,
            alive: true,
            born_us: self.now,
            ..Node::default()
        });
        self.live_nodes += 1;
        if relay.is_some() {
            self.live_relays += 1;
        }
        n
    }

    fn add_relay(
        &mut self,
        ip: std::net::Ipv4Addr,
        advertised: u64,
        real: u64,
        exit: bool,
        sybil: bool,
    ) -> Result<u32, SimError> {
        let id = self.relays.len() as u32;
        let node = self.add_node(Some(id));
        let relay = Relay::new(&mut self.world, ip, advertised, real, exit, sybil, node)?;
        self.relays.push(relay);
        Ok(id)
    }

    fn link(&mut self, a: u32, b: u32) {
        if a == b || self.nodes[a as usize].neighbours.contains(&b) {
            return;
        }
        self.nodes[a as usize].neighbours.push(b);
        self.nodes[a as usize].chosen.push(b);
        self.nodes[b as usize].neighbours.push(a);
    }

    /// Signs and records a relay's new descriptor published `back_us`
    /// before now.
    fn new_record(&mut self, relay: u32, back_us: u64) -> Result<RecordId, SimError> {
        let verify_at = self.unix();
        let at_us = (EPOCH_UNIX * SEC + self.now).saturating_sub(back_us);
        let cut = self.cfg.cut();
        let r = &mut self.relays[relay as usize];
        // A listed relay republishes at the cut, as the node does
        // (`OwnDescriptor::published_at`); a new one at its time.
        let at = at_us / SEC;
        let published = if r.template.seq > 0 {
            cut.at(at).max(r.template.published).min(at)
        } else {
            at
        };
        let signed = r.sign_new(published, at_us / 1000, verify_at)?;
        let bytes = signed.to_bytes();
        let digest = signed.digest();
        if self.cfg.check_wire {
            assert_eq!(digest, sync::digest(&bytes), "descriptor digest");
        }
        let rec = Record {
            relay,
            slot: relay,
            seq: r.template.seq,
            published: r.template.published,
            born_us: (back_us == 0).then_some(self.now),
            digest,
            bytes,
            holders_relays: 0,
            holders_all: 0,
            reached_relays_us: None,
            reached_all_us: None,
            expires_unix: Record::descriptor_expiry(r.template.published),
        };
        let id = self.records.add(rec);
        self.counters.published += 1;
        let expire_at = self.records.get(id).expires_unix.saturating_sub(EPOCH_UNIX) * SEC;
        self.schedule(expire_at, Ev::Expire(id));
        Ok(id)
    }

    /// A measurement report by honest relay `relay`, published at
    /// `published` (unix seconds): signed as the node signs it, with
    /// `measurers_per_target` observations of random relays (about what a
    /// measurer is assigned a period). Reports never count towards the
    /// convergence figures (`born_us` is left out).
    fn new_report(&mut self, relay: u32, published: u64) -> Result<RecordId, SimError> {
        let params = self.cfg.measure_params();
        let epoch = params.epoch(published);
        let kept = 2 * u64::from(params.window_epochs);
        let slot_index = u64::from(relay) * kept + epoch % kept;
        let slot = u32::try_from(slot_index)
            .ok()
            .filter(|s| s & REPORT_SLOT == 0)
            .ok_or_else(|| SimError::Setup("too many report slots".into()))?;
        // Distinct relays other than itself (a report names each once).
        let mut targets: Vec<u32> = Vec::new();
        for _ in 0..64 {
            if targets.len() == params.measurers_per_target as usize {
                break;
            }
            let t = self.world.gen_range(0..self.relays.len()) as u32;
            if t != relay && !targets.contains(&t) {
                targets.push(t);
            }
        }
        let observations = targets
            .iter()
            .map(|&t| {
                let t = &self.relays[t as usize];
                Observation {
                    target: t.template.peer_id,
                    bandwidth: t.real_bandwidth.min(params.max_rate),
                    reached: true,
                    since: published.saturating_sub(86_400),
                }
            })
            .collect();
        let r = &self.relays[relay as usize];
        let report = MeasureReport {
            measurer: r.template.peer_id,
            published,
            observations,
        };
        let bytes = report
            .sign(&r.keypair)
            .map_err(|e| SimError::Setup(format!("signing a report: {e}")))?;
        let digest = sync::digest(&bytes);
        // Kept while its period is: until the first period past it that
        // no longer keeps it (as `MeasureParams::first_kept`).
        let expires_unix =
            (epoch + 2 * (u64::from(params.window_epochs) - 1) + 1) * params.period_secs;
        let rec = Record {
            relay,
            slot: REPORT_SLOT | slot,
            seq: epoch,
            published,
            born_us: None,
            digest,
            bytes,
            holders_relays: 0,
            holders_all: 0,
            reached_relays_us: None,
            reached_all_us: None,
            expires_unix,
        };
        let id = self.records.add(rec);
        self.counters.reports += 1;
        let expire_at = expires_unix.saturating_sub(EPOCH_UNIX) * SEC;
        self.schedule(expire_at, Ev::Expire(id));
        Ok(id)
    }

    /// When in period `epoch` a measurer publishes its report (unix
    /// seconds): once its measurements are done, at random moments of the
    /// period, so at the latest of `measurers_per_target` random times.
    fn report_time(&mut self, epoch: u64) -> u64 {
        let params = self.cfg.measure_params();
        let last = (0..params.measurers_per_target.max(1))
            .map(|_| self.world.gen::<f64>())
            .fold(0.0, f64::max);
        epoch * params.period_secs + (last * (params.period_secs - 1) as f64) as u64
    }

    /// Schedules `relay`'s report of period `epoch`.
    fn schedule_report(&mut self, relay: u32, epoch: u64) {
        let at_unix = self.report_time(epoch);
        let at = at_unix.saturating_sub(EPOCH_UNIX) * SEC;
        let n = self.relays[relay as usize].node;
        self.schedule(at.max(self.now), Ev::Report(n, epoch));
    }

    /// The relay node `n` runs, if it still runs.
    fn running_relay(&self, n: u32) -> Option<u32> {
        let node = &self.nodes[n as usize];
        node.relay.filter(|_| node.alive)
    }

    /// The reports an initial relay has published in the periods still
    /// kept at time zero (as if it had been measuring all along), and the
    /// first one still to come.
    fn reports_initial(&mut self, relay: u32) -> Result<(), SimError> {
        let params = self.cfg.measure_params();
        let now = EPOCH_UNIX;
        for epoch in params.first_kept(now)..=params.epoch(now) {
            let at = self.report_time(epoch);
            if at <= now {
                self.new_report(relay, at)?;
            } else {
                let n = self.relays[relay as usize].node;
                self.schedule((at - now) * SEC, Ev::Report(n, epoch));
                return Ok(());
            }
        }
        self.schedule_report(relay, params.epoch(now) + 1);
        Ok(())
    }

    fn on_report(&mut self, n: u32, epoch: u64) {
        let Some(relay) = self.running_relay(n) else {
            return;
        };
        let published = self.unix();
        if let Ok(id) = self.new_report(relay, published) {
            let node = self.relays[relay as usize].node;
            if let Offer::Stored(_) = self.store(node, id, published) {
                self.queue_push(node, id, None);
            }
        }
        self.schedule_report(relay, epoch + 1);
    }

    fn publish_initial(&mut self, relay: u32, back_us: u64) -> Result<(), SimError> {
        self.new_record(relay, back_us)?;
        let next = self.republish_us() - back_us + self.housekeeping_jitter();
        let n = self.relays[relay as usize].node;
        self.schedule(next, Ev::Publish(n));
        Ok(())
    }

    /// The node's housekeeping runs every 30 s, so a republication comes up
    /// to 30 s after its due time.
    fn housekeeping_jitter(&mut self) -> u64 {
        self.world.gen_range(0..30 * SEC)
    }

    fn churn_gap(&mut self) -> u64 {
        let honest = (self.cfg.nodes as f64 * (1.0 - self.cfg.client_fraction)).round();
        let per_sec = self.cfg.churn * honest / 3600.0;
        let u: f64 = self.world.gen_range(f64::MIN_POSITIVE..1.0);
        self.now + ((-u.ln() / per_sec) * SEC as f64) as u64
    }

    /// Stores a record in a node's view, keeping the holder counts and the
    /// convergence times; returns what the view did.
    fn store(&mut self, n: u32, id: RecordId, now_unix: u64) -> Offer {
        let node = &mut self.nodes[n as usize];
        let offer = node.view.offer(&self.records, id, now_unix);
        if let Offer::Stored(old) = offer {
            let is_relay = node.relay.is_some();
            if let Some(o) = old {
                let r = &mut self.records.list[o as usize];
                r.holders_all -= 1;
                r.holders_relays -= u32::from(is_relay);
            }
            let r = &mut self.records.list[id as usize];
            r.holders_all += 1;
            r.holders_relays += u32::from(is_relay);
            if let Some(born) = r.born_us {
                let since = self.now - born;
                if r.reached_relays_us.is_none()
                    && u64::from(r.holders_relays) * 100 >= u64::from(self.live_relays) * 99
                {
                    r.reached_relays_us = Some(since);
                }
                if r.reached_all_us.is_none()
                    && u64::from(r.holders_all) * 100 >= u64::from(self.live_nodes) * 99
                {
                    r.reached_all_us = Some(since);
                }
            }
        }
        offer
    }

    /// Runs to the end.
    pub fn run(&mut self) {
        self.run_until(self.end);
        self.now = self.now.max(self.end);
    }

    /// Runs the events up to `t` (µs; at most the end).
    pub fn run_until(&mut self, t: u64) {
        let t = t.min(self.end);
        while let Some(q) = self.queue.peek() {
            if q.at() > t || self.counters.events >= MAX_EVENTS {
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            self.now = q.at();
            self.counters.events += 1;
            let Some(ev) = self.events[q.slot() as usize].take() else {
                continue;
            };
            self.free_events.push(q.slot());
            match ev {
                Ev::Publish(r) => self.on_publish(r),
                Ev::Gossip(n) => self.on_gossip(n),
                Ev::Flush(n) => self.on_flush(n),
                Ev::Deliver {
                    ex,
                    to_responder,
                    msg,
                    ids,
                } => self.on_deliver(ex, to_responder, msg, ids),
                Ev::Connect(a, b) => self.on_connect(a, b),
                Ev::Churn => self.on_churn(),
                Ev::Expire(id) => self.on_expire(id),
                Ev::Report(n, epoch) => self.on_report(n, epoch),
                Ev::Rejoin(relay, old) => self.rejoin(relay, old),
                Ev::Sample => {
                    let a = self.agreement();
                    self.samples.push(a);
                }
            }
        }
    }

    fn on_publish(&mut self, n: u32) {
        let Some(relay) = self.running_relay(n) else {
            return;
        };
        // Signing cannot fail for a template that signed before.
        let Ok(id) = self.new_record(relay, 0) else {
            return;
        };
        let node = self.relays[relay as usize].node;
        let now_unix = self.unix();
        if let Offer::Stored(_) = self.store(node, id, now_unix) {
            self.queue_push(node, id, None);
        }
        let next = self.now + self.republish_us() + self.housekeeping_jitter();
        self.schedule(next, Ev::Publish(n));
    }

    fn queue_push(&mut self, n: u32, id: RecordId, from: Option<u32>) {
        let node = &mut self.nodes[n as usize];
        if node.relay.is_none() || self.cfg.push_fanout == 0 {
            return;
        }
        node.push_from = if node.push_pending.is_empty() || node.push_from == from {
            from
        } else {
            None
        };
        node.push_pending.push(id);
        if !node.push_scheduled {
            node.push_scheduled = true;
            let at = self.now + self.cfg.push_delay_ms * 1000;
            self.schedule(at, Ev::Flush(n));
        }
    }

    fn on_flush(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.push_scheduled = false;
        if !node.alive {
            return;
        }
        let pending = std::mem::take(&mut node.push_pending);
        let digests: Vec<_> = pending
            .iter()
            .filter(|&&id| node.view.holds(&self.records, id))
            .map(|&id| self.records.get(id).digest)
            .collect();
        if digests.is_empty() {
            return;
        }
        let msg = Rc::new(sync::announce(&digests));
        let from = node.push_from.take();
        // `push_own` on links it chose, the rest on any (the node: one).
        let candidates: Vec<u32> = node
            .neighbours
            .iter()
            .copied()
            .filter(|&p| Some(p) != from)
            .collect();
        let peers = if self.cfg.push_inbound {
            announcement_peers(
                &candidates,
                |p| node.chosen.contains(p),
                |p| !node.chosen.contains(p),
                &mut self.rng,
            )
        } else {
            choose_with_own(
                &candidates,
                |p| node.chosen.contains(p),
                self.cfg.push_own,
                self.cfg.push_fanout,
                &mut self.rng,
            )
        };
        for p in peers {
            self.start(n, p, Kind::Push, Rc::clone(&msg));
        }
    }

    fn on_gossip(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        if !node.alive {
            return;
        }
        let (kind, every, peers) = if node.relay.is_some() {
            let free: Vec<u32> = node
                .neighbours
                .iter()
                .copied()
                .filter(|p| !node.in_flight.contains(p))
                .collect();
            // One on a link it chose, if one is free, as the node.
            let peers = choose_with_own(
                &free,
                |p| node.chosen.contains(p),
                1,
                self.cfg.exchange_peers,
                &mut self.rng,
            );
            // Our pings on every link since the last round.
            let ping = (PING_BYTES as f64 * self.cfg.exchange_interval_s
                / veilnet_discovery::PING_INTERVAL.as_secs_f64()) as u64;
            for p in node.neighbours.clone() {
                self.charge(n, p, ping);
            }
            (Kind::Gossip, self.secs(self.cfg.exchange_interval_s), peers)
        } else {
            let rank = self.nodes[n as usize].fetch_rank;
            let peer = self.client_relay(n, rank);
            let next = self.next_client_fetch(n, false);
            // A client connects for each fetch.
            if let Some(p) = peer {
                self.charge(n, p, CLIENT_CONNECT_SETUP);
            }
            (Kind::Client, next - self.now, peer.into_iter().collect())
        };
        for p in peers {
            self.open_with(n, p, kind);
        }
        self.schedule(self.now + every, Ev::Gossip(n));
    }

    /// The relay client `n` fetches from: of its relays still alive (topped
    /// up to [`CLIENT_RELAYS`] with random live ones), by how long it has
    /// been connected, the `rank`-th (0: the longest).
    fn client_relay(&mut self, n: u32, rank: usize) -> Option<u32> {
        let mut mine = std::mem::take(&mut self.nodes[n as usize].relays_of_client);
        mine.retain(|&(r, _)| self.nodes[r as usize].alive);
        for _ in 0..2 * CLIENT_RELAYS {
            if mine.len() >= CLIENT_RELAYS {
                break;
            }
            if let Some(r) = self.random_live_relay() {
                if !mine.iter().any(|&(m, _)| m == r) {
                    mine.push((r, self.now));
                }
            }
        }
        let mut by_age: Vec<(u64, u32)> = mine.iter().map(|&(r, since)| (since, r)).collect();
        by_age.sort_unstable();
        let pick = by_age
            .get(rank.min(by_age.len().saturating_sub(1)))
            .map(|&(_, r)| r);
        self.nodes[n as usize].relays_of_client = mine;
        pick
    }

    fn random_live_relay(&mut self) -> Option<u32> {
        for _ in 0..1000 {
            let r = &self.relays[self.rng.gen_range(0..self.relays.len())];
            if r.alive {
                return Some(r.node);
            }
        }
        None
    }

    /// Starts an anti-entropy exchange from `a` with `b` (none if one is
    /// open already, as the node allows one per peer).
    fn open_with(&mut self, a: u32, b: u32, kind: Kind) {
        if self.nodes[a as usize].in_flight.contains(&b) {
            return;
        }
        let msg = self.first_message(a, kind);
        self.nodes[a as usize].view.settle();
        self.nodes[a as usize].in_flight.push(b);
        if kind == Kind::Client {
            let node = &mut self.nodes[a as usize];
            node.fetches += 1;
            node.last_fetch_unix = Some(EPOCH_UNIX + self.now / SEC);
        }
        self.start(a, b, kind, Rc::new(msg));
    }

    /// The first message of an exchange of node `n`'s: the fingerprint of
    /// everything, or, for a client with [`SimConfig::client_recent_s`]
    /// between its full fetches, of what was published since its last
    /// fetch began, less that margin.
    fn first_message(&self, n: u32, kind: Kind) -> SyncMessage {
        let node = &self.nodes[n as usize];
        let store = Store::new(&node.view, &self.records);
        let every = self.cfg.client_full_every.max(1);
        match node.last_fetch_unix {
            Some(last)
                if kind == Kind::Client
                    && self.cfg.client_recent_s > 0
                    && node.fetches % every != 0 =>
            {
                // As the node (`veilnet_discovery::recent_since`): the
                // margin before the last fetch, rounded down to a quarter
                // hour.
                let since = last.saturating_sub(self.cfg.client_recent_s);
                let since = since - since % 900;
                sync::open_spans(&store, &veilnet_dir::spans_since(since))
            }
            _ => sync::open(&store),
        }
    }

    fn start(&mut self, a: u32, b: u32, kind: Kind, first: Rc<SyncMessage>) {
        self.counters.exchanges[kind.index()] += 1;
        let ex = Exchange {
            a,
            b,
            round: 1,
            kind,
        };
        let id = match self.free_exchanges.pop() {
            Some(i) => {
                self.exchanges[i as usize] = Some(ex);
                i
            }
            None => {
                self.exchanges.push(Some(ex));
                (self.exchanges.len() - 1) as u32
            }
        };
        self.send(id, true, first, Vec::new());
    }

    fn close(&mut self, ex: u32) {
        if let Some(e) = self.exchanges[ex as usize].take() {
            if e.kind != Kind::Push {
                let a = &mut self.nodes[e.a as usize];
                a.in_flight.retain(|&p| p != e.b);
                if a.relay.is_none() {
                    // A client will not reconcile again for a while.
                    a.view.drop_cache();
                }
            }
            self.free_exchanges.push(ex);
        }
    }

    fn send(&mut self, ex: u32, to_responder: bool, msg: Rc<SyncMessage>, ids: Vec<RecordId>) {
        if !self.count(ex, to_responder, &msg, &ids) {
            return;
        }
        let at = self.now + self.latency();
        self.schedule(
            at,
            Ev::Deliver {
                ex,
                to_responder,
                msg,
                ids,
            },
        );
    }

    /// Counts `each_way` bytes sent by `a` to `b` and as many back, for
    /// both ends, outside any exchange (connection setup, pings).
    fn charge(&mut self, a: u32, b: u32, each_way: u64) {
        let steady = u64::from(self.now >= self.warmup);
        for n in [a, b] {
            let node = &mut self.nodes[n as usize];
            node.bytes[steady as usize] += 2 * each_way;
            node.received += each_way * steady;
        }
        self.counters.connection_bytes += 2 * each_way * steady;
    }

    /// Counts the bytes of a message of exchange `ex` for both ends (false:
    /// the exchange is gone).
    fn count(&mut self, ex: u32, to_responder: bool, msg: &SyncMessage, ids: &[RecordId]) -> bool {
        let Some(e) = &self.exchanges[ex as usize] else {
            return false;
        };
        let (from, to, kind) = if to_responder {
            (e.a, e.b, e.kind)
        } else {
            (e.b, e.a, e.kind)
        };
        let stream = kind == Kind::Push && self.cfg.push_stream;
        // On an announcement stream a message travels as its frame.
        let frame = stream.then(|| Frame::len_of(msg)).flatten();
        debug_assert!(!stream || frame.is_some(), "a push message has a frame");
        if stream && self.cfg.check_wire {
            let f = Frame::from_message(msg).expect("a push message has a frame");
            let wire = f.encode();
            assert_eq!(Some(wire.len()), frame);
            let body = Frame::body_len(wire[..4].try_into().expect("4 bytes"), &self.limits)
                .expect("our frames are within the limits");
            let back = Frame::decode(&wire[4..4 + body], &self.limits).expect("our frames decode");
            assert!(back == f, "a frame survives encoding");
        }
        let payload = if let Some(len) = frame {
            len
        } else if self.cfg.check_wire {
            let wire = msg.encode();
            assert_eq!(wire.len(), msg.encoded_len());
            let back = SyncMessage::decode(&wire, &self.limits).expect("our messages decode");
            assert!(back == *msg, "a message survives encoding");
            for (bytes, id) in msg.records.iter().zip(ids) {
                assert_eq!(sync::digest(bytes), self.records.get(*id).digest);
            }
            wire.len()
        } else {
            msg.encoded_len()
        };
        debug_assert_eq!(msg.records.len(), ids.len());
        let mut bytes = if frame.is_some() {
            frame_bytes(payload)
        } else {
            wire_bytes(payload)
        };
        if stream && !self.nodes[from as usize].push_streams.contains(&to) {
            self.nodes[from as usize].push_streams.push(to);
            bytes += stream_open_bytes();
        }
        let steady = usize::from(self.now >= self.warmup);
        self.nodes[from as usize].bytes[steady] += bytes;
        self.nodes[to as usize].bytes[steady] += bytes;
        self.nodes[to as usize].received += bytes * steady as u64;
        if steady == 1 {
            self.counters.steady_bytes[kind.index()] += bytes;
            self.counters.steady_record_bytes[kind.index()] +=
                msg.records.iter().map(|r| r.len() as u64).sum::<u64>();
            self.counters.steady_report_bytes[kind.index()] += ids
                .iter()
                .map(|&id| self.records.get(id))
                .filter(|r| r.is_report())
                .map(|r| r.bytes.len() as u64)
                .sum::<u64>();
        }
        true
    }

    fn on_deliver(
        &mut self,
        ex: u32,
        to_responder: bool,
        msg: Rc<SyncMessage>,
        ids: Vec<RecordId>,
    ) {
        self.counters.messages += 1;
        let Some(e) = &self.exchanges[ex as usize] else {
            return;
        };
        let (a, b, round) = (e.a, e.b, e.round);
        let (me, peer) = if to_responder { (b, a) } else { (a, b) };
        if !self.nodes[me as usize].alive || !self.nodes[peer as usize].alive {
            self.close(ex);
            return;
        }
        let view = &self.nodes[me as usize].view;
        let store = if self.cfg.dedup_wants {
            Store::dedup(view, &self.records, self.now)
        } else {
            Store::new(view, &self.records)
        };
        let answer = sync::process(&store, &msg, &self.limits);
        let mut served = store.into_served();
        self.nodes[me as usize].view.settle();
        // As the node: what a message asks for is claimed only if the
        // message is sent (not by the initiator's last round).
        let sent =
            to_responder || sync::after_round(round, answer.is_empty()) == AfterRound::Continue;
        if self.cfg.dedup_wants && sent && !answer.want.is_empty() {
            let now = self.now;
            self.nodes[me as usize]
                .view
                .note_asked(&self.records, &answer.want, now);
        }
        // `process` may look a record up and then find the message full.
        served.truncate(answer.records.len());
        self.accept(me, peer, &ids);
        let push = self.exchanges[ex as usize]
            .as_ref()
            .is_some_and(|e| e.kind == Kind::Push);
        if to_responder && push && answer.is_empty() {
            // The empty answer to a push (most of them: the receiver holds
            // what was announced) ends the exchange, and processing it
            // changes nothing (`process` of an empty message is empty):
            // counted, not delivered. A push holds no exchange slot, so
            // nothing waits for its end.
            if self.cfg.check_wire {
                let a = self.exchanges[ex as usize].as_ref().map_or(me, |e| e.a);
                let store = Store::new(&self.nodes[a as usize].view, &self.records);
                assert!(sync::process(&store, &answer, &self.limits).is_empty());
            }
            // On an announcement stream an empty answer is not sent.
            if !self.cfg.push_stream {
                self.count(ex, false, &answer, &served);
                self.counters.messages += 1;
            }
            self.close(ex);
        } else if to_responder {
            self.send(ex, false, Rc::new(answer), served);
        } else {
            match sync::after_round(round, answer.is_empty()) {
                AfterRound::Continue => {
                    if let Some(e) = &mut self.exchanges[ex as usize] {
                        e.round += 1;
                    }
                    self.send(ex, true, Rc::new(answer), served);
                }
                // As the node: MAX_ROUNDS done with work left, start afresh.
                AfterRound::Restart => {
                    self.counters.exchanges_at_max_rounds += 1;
                    let kind = self.exchanges[ex as usize]
                        .as_ref()
                        .map_or(Kind::Gossip, |e| e.kind);
                    let fresh = self.first_message(me, kind);
                    self.nodes[me as usize].view.settle();
                    if let Some(e) = &mut self.exchanges[ex as usize] {
                        e.round += 1;
                    }
                    self.send(ex, true, Rc::new(fresh), Vec::new());
                }
                AfterRound::Stop => {
                    if !answer.is_empty() {
                        self.counters.exchanges_at_max_rounds += 1;
                    }
                    self.close(ex);
                }
            }
        }
    }

    /// Stores what a message carried, as the node's directory feed does,
    /// and queues what was new for announcing.
    fn accept(&mut self, n: u32, from: u32, ids: &[RecordId]) {
        let now_unix = self.unix();
        // Descriptors first, as the node stores a batch, so a report
        // finds its measurer listed.
        let (descriptors, reports): (Vec<RecordId>, Vec<RecordId>) = ids
            .iter()
            .partition(|&&id| !self.records.get(id).is_report());
        self.counters.records_carried += ids.len() as u64;
        self.counters.reports_carried += reports.len() as u64;
        // A report that came before its measurer's descriptor waited for
        // it and is stored with it.
        let mut reports = reports;
        for id in descriptors {
            match self.store(n, id, now_unix) {
                Offer::Stored(_) => {
                    self.queue_push(n, id, Some(from));
                    let relay = self.records.get(id).relay;
                    let taken =
                        self.nodes[n as usize]
                            .view
                            .take_awaiting(&self.records, relay, now_unix);
                    self.counters.reports_waited += taken.len() as u64;
                    reports.extend(taken);
                }
                Offer::Held => self.counters.records_duplicate += 1,
                Offer::Refused | Offer::Unlisted => self.counters.records_refused += 1,
            }
        }
        for id in reports {
            match self.store(n, id, now_unix) {
                Offer::Stored(_) => self.queue_push(n, id, Some(from)),
                Offer::Held => self.counters.records_duplicate += 1,
                Offer::Refused => self.counters.records_refused += 1,
                Offer::Unlisted => {
                    self.counters.reports_unlisted += 1;
                    self.nodes[n as usize]
                        .view
                        .hold_awaiting(&self.records, id, now_unix);
                }
            }
        }
    }

    fn on_connect(&mut self, a: u32, b: u32) {
        if !self.nodes[a as usize].alive || !self.nodes[b as usize].alive {
            return;
        }
        if !self.nodes[a as usize].neighbours.contains(&b) {
            self.charge(a, b, RELAY_LINK_SETUP);
        }
        self.link(a, b);
        // The dialer reconciles at once with a new link, unless it is
        // reconciling already (a joining relay's first links: the first
        // brings the directory, the rest would bring its digests again).
        if self.nodes[a as usize].in_flight.is_empty() {
            self.open_with(a, b, Kind::Link);
        }
    }

    fn on_churn(&mut self) {
        // One honest relay leaves...
        let honest_live: Vec<u32> = (0..self.relays.len() as u32)
            .filter(|&r| {
                let r = &self.relays[r as usize];
                r.alive && !r.sybil
            })
            .collect();
        // With `restarts`, some leave only for a while and come back with
        // the directory they held (its cache); no new relay joins for them.
        // (No draw without restarts: the world stays that of earlier runs.)
        let restart = self.cfg.restarts > 0.0 && self.world.gen_bool(self.cfg.restarts);
        if honest_live.len() > 4 {
            let r = honest_live[self.world.gen_range(0..honest_live.len())];
            let old = self.relays[r as usize].node;
            self.leave(r, restart);
            if restart {
                let mean = self.cfg.restart_mean_mins * 60.0 * SEC as f64;
                let u: f64 = self.world.gen_range(f64::MIN_POSITIVE..1.0);
                let away = ((-u.ln() * mean) as u64).min(24 * 3600 * SEC);
                self.counters.restarts += 1;
                self.schedule(self.now + away, Ev::Rejoin(r, old));
            }
        }
        // ...and a new one joins.
        if !restart {
            if let Err(e) = self.join() {
                eprintln!("a relay could not join: {e}");
            }
        }
        self.counters.churned += 1;
        let next = self.churn_gap();
        self.schedule(next, Ev::Churn);
    }

    /// Relay `relay` stops; with `keep`, its view is kept for its restart
    /// ([`Self::rejoin`]).
    fn leave(&mut self, relay: u32, keep: bool) {
        self.relays[relay as usize].alive = false;
        let n = self.relays[relay as usize].node;
        let node = &mut self.nodes[n as usize];
        node.alive = false;
        node.died_us = Some(self.now);
        let held: Vec<RecordId> = node.view.records().collect();
        let neighbours = std::mem::take(&mut node.neighbours);
        node.chosen.clear();
        node.push_streams.clear();
        if keep {
            node.view.drop_cache();
        } else {
            node.view = View::default();
        }
        node.push_pending.clear();
        for id in held {
            let r = &mut self.records.list[id as usize];
            r.holders_all -= 1;
            r.holders_relays -= 1;
        }
        self.live_nodes -= 1;
        self.live_relays -= 1;
        // Its neighbours drop the link; those that had chosen it find
        // another relay (as the node redials only the links it chose: one
        // that another relay chose to it is that relay's to replace).
        for p in neighbours {
            let had_chosen = self.nodes[p as usize].chosen.contains(&n);
            self.nodes[p as usize].neighbours.retain(|&x| x != n);
            self.nodes[p as usize].chosen.retain(|&x| x != n);
            self.nodes[p as usize].push_streams.retain(|&x| x != n);
            if !had_chosen {
                continue;
            }
            if let Some(q) = self.random_live_relay() {
                let at = self.now + self.latency();
                self.schedule(at, Ev::Connect(p, q));
            }
        }
    }

    fn join(&mut self) -> Result<(), SimError> {
        let exit = self.world.gen_bool(self.cfg.exit_fraction);
        let bw = honest_bandwidth(&mut self.world);
        let ip = self.addresses.address(&mut self.world)?;
        let relay = self.add_relay(ip, bw, bw, exit, false)?;
        self.start_relay(relay)
    }

    /// A relay's node starting: it publishes, schedules its republication
    /// and measurements, links to `degree` live relays and reconciles.
    fn start_relay(&mut self, relay: u32) -> Result<(), SimError> {
        let n = self.relays[relay as usize].node;
        let id = self.new_record(relay, 0)?;
        let now_unix = self.unix();
        self.store(n, id, now_unix);
        // As the node: the first republication comes up to half a period
        // early, at random.
        let republish = self.republish_us();
        let early = self.world.gen_range(0..=republish / 2);
        let next = self.now + republish - early + self.housekeeping_jitter();
        self.schedule(next, Ev::Publish(n));
        // It measures from the next period on (listed at its start).
        if self.cfg.reports {
            let epoch = self.cfg.measure_params().epoch(now_unix);
            self.schedule_report(relay, epoch + 1);
        }
        for _ in 0..self.cfg.degree {
            if let Some(q) = self.random_live_relay() {
                if q != n {
                    let at = self.now + self.latency();
                    self.schedule(at, Ev::Connect(n, q));
                }
            }
        }
        let every = self.secs(self.cfg.exchange_interval_s);
        let at = self.now + self.rng.gen_range(0..every.max(1));
        self.schedule(at, Ev::Gossip(n));
        Ok(())
    }

    /// Relay `relay`, which ran as node `old`, starts again as a new node
    /// with the view `old` held, less what expired meanwhile (as the
    /// node's directory cache is checked at start), and reconciles the
    /// rest with its new links.
    fn rejoin(&mut self, relay: u32, old: u32) {
        if self.relays[relay as usize].alive {
            return;
        }
        let mut view = std::mem::take(&mut self.nodes[old as usize].view);
        let now_unix = self.unix();
        let kept = 2 * self.cfg.measure_window;
        let held: Vec<RecordId> = view.records().collect();
        for id in held {
            let r = self.records.get(id);
            if r.expires_unix <= now_unix && view.held(r.slot) == Some(id) {
                view.expire_record(&self.records, id, self.cfg.reports.then_some(kept));
            }
        }
        let n = self.add_node(Some(relay));
        for id in view.records() {
            let r = &mut self.records.list[id as usize];
            r.holders_all += 1;
            r.holders_relays += 1;
        }
        self.nodes[n as usize].view = view;
        self.relays[relay as usize].node = n;
        self.relays[relay as usize].alive = true;
        if let Err(e) = self.start_relay(relay) {
            eprintln!("a relay could not restart: {e}");
        }
    }

    fn on_expire(&mut self, id: RecordId) {
        if self.records.get(id).holders_all == 0 {
            return;
        }
        let slot = self.records.get(id).slot;
        let kept = 2 * self.cfg.measure_window;
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            if node.alive && node.view.held(slot) == Some(id) {
                let is_relay = u32::from(node.relay.is_some());
                let gone =
                    node.view
                        .expire_record(&self.records, id, self.cfg.reports.then_some(kept));
                for g in gone {
                    let r = &mut self.records.list[g as usize];
                    r.holders_all -= 1;
                    r.holders_relays -= is_relay;
                }
            }
        }
    }

    /// How far live nodes agree right now.
    pub fn agreement(&self) -> Agreement {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive).collect();
        let frac = |pick: &dyn Fn(&Node) -> bool, key: &dyn Fn(&Node) -> u128| -> f64 {
            let mut keys: Vec<u128> = live.iter().filter(|n| pick(n)).map(|n| key(n)).collect();
            if keys.is_empty() {
                return 1.0;
            }
            keys.sort_unstable();
            let mut best = 0;
            let mut i = 0;
            while i < keys.len() {
                let j = keys[i..].partition_point(|k| *k == keys[i]) + i;
                best = best.max(j - i);
                i = j;
            }
            best as f64 / keys.len() as f64
        };
        let all = |_: &Node| true;
        let relays = |n: &Node| n.relay.is_some();
        let clients = |n: &Node| n.relay.is_none();
        let by_relays = |n: &Node| n.view.relays_hash();
        let by_digests = |n: &Node| n.view.records_hash();
        let cut = self.cfg.cut().at(self.unix());
        let by_cut = |n: &Node| {
            n.view
                .descriptors()
                .map(|id| self.records.get(id))
                .filter(|r| r.published <= cut)
                .fold(0u128, |h, r| h ^ crate::view::tag(r.relay, 1))
        };
        Agreement {
            hour: self.now as f64 / (3600.0 * SEC as f64),
            all: frac(&all, &by_relays),
            relays: frac(&relays, &by_relays),
            clients: frac(&clients, &by_relays),
            cut_all: frac(&all, &by_cut),
            cut_relays: frac(&relays, &by_cut),
            cut_clients: frac(&clients, &by_cut),
            digests_all: frac(&all, &by_digests),
            digests_relays: frac(&relays, &by_digests),
        }
    }

    /// A live node holding the most common set of descriptors.
    pub fn majority_node(&self) -> Option<u32> {
        let mut keys: Vec<(u128, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive)
            .map(|(i, n)| (n.view.records_hash(), i as u32))
            .collect();
        keys.sort_unstable();
        let mut best: Option<(usize, u32)> = None;
        let mut i = 0;
        while i < keys.len() {
            let j = keys[i..].partition_point(|k| k.0 == keys[i].0) + i;
            if best.is_none_or(|(len, _)| j - i > len) {
                best = Some((j - i, keys[i].1));
            }
            i = j;
        }
        best.map(|(_, n)| n)
    }

    /// Which relays are the attacker's, by peer id.
    pub fn sybil_peers(&self) -> HashSet<libp2p::PeerId> {
        self.relays
            .iter()
            .filter(|r| r.sybil)
            .map(|r| r.peer_id())
            .collect()
    }
}

/// An honest relay's real (and advertised) bandwidth: log-normal with a
/// median of 2 MB/s and sigma 1.2 (a long tail of fast relays, as in Tor's
/// consensus), at least 10 kB/s.
fn honest_bandwidth(rng: &mut impl Rng) -> u64 {
    log_normal(rng, 2.0e6, 1.2).max(1.0e4) as u64
}
