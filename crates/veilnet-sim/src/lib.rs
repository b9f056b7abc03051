#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod net;
pub mod records;
pub mod report;
pub mod sybil;
pub mod view;

pub use report::Report;

/// Why a run could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A parameter is out of range.
    #[error("bad parameter: {0}")]
    BadParameter(String),
    /// Building the simulated network failed (keys, descriptors, paths).
    #[error("setting up the simulation: {0}")]
    Setup(String),
}

/// Parameters of a `directory` run. [`Default`] gives the public-network
/// settings this simulator recommends; the comments say where the real
/// node differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimConfig {
    /// Honest nodes, relays and clients together.
    pub nodes: usize,
    /// Fraction of `nodes` that are pure clients.
    pub client_fraction: f64,
    /// Simulated hours.
    pub hours: f64,
    /// Hours at the start left out of the steady-state figures.
    pub warmup_hours: f64,
    /// Fraction of honest relays per hour that leave (and as many new ones
    /// that join).
    pub churn: f64,
    /// Of the relays that leave, the fraction that restart: they come back
    /// after a while (exponential, mean `restart_mean_mins`, at most a day)
    /// with the directory they held, as the node's directory cache keeps
    /// it, instead of a new relay joining.
    pub restarts: f64,
    /// Mean time a restarting relay is away, minutes.
    pub restart_mean_mins: f64,
    /// With a value above 0, a client's fetch reconciles only the records
    /// published since its previous fetch began, less this many seconds
    /// (`sync::open_spans`), except every `client_full_every`-th fetch,
    /// which reconciles everything: the node's
    /// (`veilnet_discovery::CLIENT_RECENT_MARGIN`, `CLIENT_FULL_EVERY`);
    /// 0, every fetch reconciles everything (the node before session 16).
    pub client_recent_s: u64,
    /// See `client_recent_s`.
    pub client_full_every: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Seconds between a relay's anti-entropy rounds (the real node's
    /// default, `DiscoveryConfig::DEFAULT_EXCHANGE_INTERVAL`, is 2 s: a
    /// testnet setting).
    pub exchange_interval_s: f64,
    /// Peers a relay reconciles with per round (the node's
    /// `GOSSIP_FANOUT` is 3).
    pub exchange_peers: usize,
    /// Seconds between a client's anti-entropy exchanges (with one random
    /// relay each).
    pub client_interval_s: f64,
    /// Neighbours a relay announces newly accepted records to.
    pub push_fanout: usize,
    /// How many of those go on links the relay chose itself (the rest on
    /// any link; the node: one).
    pub push_own: usize,
    /// Milliseconds a relay collects newly accepted records before
    /// announcing them in one message (0: at once; the node's default is
    /// `[directory] announce_batch_ms`, 10 s).
    pub push_delay_ms: u64,
    /// Whether a node leaves out of its `want` the records it asked another
    /// peer for less than 10 s ago, as the node does (veilnet-discovery's
    /// one set of wants for all peers); false: it asks every peer that
    /// offers a record it lacks (the node before session 6).
    pub dedup_wants: bool,
    /// Whether announcements travel as frames on one long-lived stream per
    /// link and direction, as the node sends them (`/veilnet/announce`):
    /// no negotiation per message and no empty answer. False: each is a
    /// request-response exchange on a new stream, as the node did before
    /// session 10.
    pub push_stream: bool,
    /// Connections each relay opens to random relays (links are two-way,
    /// so a relay has about twice as many neighbours).
    pub degree: usize,
    /// Minutes between a relay's publications (default: the node's,
    /// `veilnet_dir::REPUBLISH_EVERY`, 18 h).
    pub republish_mins: f64,
    /// Seconds per slot of the cut every node takes its view at
    /// ([`veilnet_dir::Cut`]; default the public network's, 3600).
    pub cut_every_s: u64,
    /// The cut's margin, seconds (default 300).
    pub cut_margin_s: u64,
    /// Shortest one-way message latency (ms).
    pub latency_min_ms: u64,
    /// Longest one-way message latency (ms).
    pub latency_max_ms: u64,
    /// Fraction of honest relays that are exits.
    pub exit_fraction: f64,
    /// Attacker relays (on top of `nodes`).
    pub sybils: usize,
    /// Distinct /24 subnets the attacker's relays are on.
    pub sybil_subnets: usize,
    /// The attacker's real bandwidth as a fraction of the honest relays'.
    pub sybil_bandwidth: f64,
    /// What each attacker relay advertises (bytes/s); 0: its real
    /// bandwidth.
    pub sybil_advertised: u64,
    /// Descriptors the attacker adds at the end of the run, each at an
    /// address it does not hold (a /24 of its own, never reached there),
    /// to measure: they vouch for the attacker's relays and call the
    /// honest ones unreached (see [`sybil`]).
    pub fake_measurers: usize,
    /// Weigh relays by peer measurement for the Sybil figure (modelled at
    /// the end of the run, see [`sybil`]); off: by what they advertise.
    pub measure: bool,
    /// Circuits drawn for the Sybil figure.
    pub circuits: usize,
    /// Circuits per simulated client (each client has its own guard set).
    pub circuits_per_client: usize,
    /// Encode and decode every message and check both sides agree (slow;
    /// for tests).
    pub check_wire: bool,
    /// Announce as the node does ([`veilnet_discovery::announcement_peers`]:
    /// to most of the relays that chose us, and one we chose); false: to
    /// `push_fanout` of all, `push_own` of them on links we chose.
    pub push_inbound: bool,
    /// Honest relays publish measurement reports (one a period each, with
    /// `measurers_per_target` observations), which travel with the
    /// descriptors; the network starts with the reports of the periods
    /// it keeps.
    pub reports: bool,
    /// Seconds per measurement period (the public network's: 43200).
    pub measure_period_s: u64,
    /// Measurement periods whose reports count (reports are kept for
    /// twice as many, less one: the public network's window is 4).
    pub measure_window: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            client_fraction: 0.5,
            hours: 2.0,
            warmup_hours: 1.0,
            churn: 0.05,
            restarts: 0.0,
            restart_mean_mins: 60.0,
            client_recent_s: veilnet_discovery::CLIENT_RECENT_MARGIN,
            client_full_every: veilnet_discovery::CLIENT_FULL_EVERY,
            seed: 1,
            exchange_interval_s: 600.0,
            exchange_peers: 3,
            client_interval_s: 3600.0,
            push_fanout: 6,
            push_own: 1,
            push_delay_ms: 10_000,
            dedup_wants: true,
            push_stream: true,
            degree: 8,
            republish_mins: (veilnet_dir::REPUBLISH_EVERY / 60) as f64,
            cut_every_s: veilnet_dir::Cut::PUBLIC.every_secs,
            cut_margin_s: veilnet_dir::Cut::PUBLIC.margin_secs,
            latency_min_ms: 20,
            latency_max_ms: 200,
            exit_fraction: 1.0,
            sybils: 0,
            sybil_subnets: 10,
            sybil_bandwidth: 0.05,
            sybil_advertised: veilnet_dir::path::MAX_WEIGHT,
            fake_measurers: 0,
            measure: true,
            circuits: 10_000,
            circuits_per_client: 10,
            check_wire: false,
            push_inbound: true,
            reports: true,
            measure_period_s: veilnet_dir::measure::MeasureParams::PUBLIC.period_secs,
            measure_window: veilnet_dir::measure::MeasureParams::PUBLIC.window_epochs,
        }
    }
}

impl SimConfig {
    /// The slots every node takes its view at.
    pub fn cut(&self) -> veilnet_dir::Cut {
        veilnet_dir::Cut {
            every_secs: self.cut_every_s,
            margin_secs: self.cut_margin_s,
        }
    }

    /// The measurement parameters: the public network's, with the period
    /// and window set here.
    pub fn measure_params(&self) -> veilnet_dir::measure::MeasureParams {
        veilnet_dir::measure::MeasureParams {
            period_secs: self.measure_period_s,
            window_epochs: self.measure_window,
            ..veilnet_dir::measure::MeasureParams::PUBLIC
        }
    }

    /// Checks the parameters.
    pub fn check(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::BadParameter(m.into()));
        if self.nodes < 10 || self.nodes > 1_000_000 {
            return bad("--nodes must be 10..=1000000");
        }
        if !(0.0..1.0).contains(&self.client_fraction) {
            return bad("--clients must be in [0, 1)");
        }
        if !(self.hours > 0.0 && self.hours <= 48.0) {
            return bad("--hours must be in (0, 48]");
        }
        if !(self.warmup_hours >= 0.0 && self.warmup_hours < self.hours) {
            return bad("--warmup-hours must be in [0, --hours)");
        }
        if !(0.0..=1.0).contains(&self.restarts) {
            return bad("--restarts must be in [0, 1]");
        }
        if !(self.restart_mean_mins > 0.0 && self.restart_mean_mins <= 24.0 * 60.0) {
            return bad("--restart-mean-mins must be in (0, 1440]");
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return bad("--churn must be in [0, 1]");
        }
        if !(self.exchange_interval_s >= 0.1 && self.client_interval_s >= 0.1) {
            return bad("exchange intervals must be at least 0.1 s");
        }
        if self.republish_mins.is_nan() || self.republish_mins < 1.0 {
            return bad("--republish-mins must be at least 1");
        }
        if !self.cut().is_valid() {
            return bad("--cut-every must be at least 1 and --cut-margin less than it");
        }
        if self.latency_min_ms == 0 || self.latency_max_ms < self.latency_min_ms {
            return bad("latencies must satisfy 0 < min <= max");
        }
        if self.degree == 0 || self.exchange_peers == 0 {
            return bad("--degree and --exchange-peers must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.exit_fraction) || self.exit_fraction == 0.0 {
            return bad("--exit-fraction must be in (0, 1]");
        }
        if self.sybils > 0 {
            if self.sybil_subnets == 0 || self.sybils > self.sybil_subnets * 254 * 64 {
                return bad("--sybil-subnets must be at least 1 and fit the relays");
            }
            if self.sybil_bandwidth.is_nan() || self.sybil_bandwidth <= 0.0 {
                return bad("--sybil-bandwidth must be positive");
            }
        }
        if self.fake_measurers > 0 && (self.sybils == 0 || !self.measure) {
            return bad("--fake-measurers needs --sybils and --measure true");
        }
        if self.fake_measurers > 100_000 {
            return bad("--fake-measurers must be at most 100000");
        }
        if self.measure_period_s < 60 || self.measure_period_s > 7 * 86_400 {
            return bad("--measure-period must be 60..=604800 seconds");
        }
        if !(1..=veilnet_dir::measure::MAX_WINDOW_EPOCHS).contains(&self.measure_window) {
            return bad("--measure-window must be 1..=8");
        }
        if self.circuits_per_client == 0 {
            return bad("--circuits-per-client must be at least 1");
        }
        Ok(())
    }
}

/// Runs the directory simulation.
pub fn run_directory(cfg: &SimConfig) -> Result<Report, SimError> {
    cfg.check()?;
    let started = std::time::Instant::now();
    let mut sim = net::Sim::new(cfg.clone())?;
    sim.run();
    let sybil = sybil::circuits(&sim)?;
    Ok(report::build(&sim, sybil, started.elapsed().as_secs_f64()))
}
