//! The node configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use veilnet_cell::MAX_HOPS;
use veilnet_policy::ExitConfig;

use crate::fsutil;
use crate::ConfigError;

/// Largest configuration file `Config::load` reads.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Smallest `bandwidth_rate` other than 0: one link record (32 cells) per
/// second.
pub const MIN_BANDWIDTH_RATE: u64 = 64 * 1024;

/// Text of the default configuration file; see [`Config::default_toml`].
const DEFAULT_TOML: &str = include_str!("default_config.toml");
/// Most primary guards `client.num_guards` may ask for.
const MAX_NUM_GUARDS: usize = 16;
/// Largest `client.path_bias_min_circuits` (half the count at which the
/// circuit manager halves its path-bias counters).
const MAX_PATH_BIAS_MIN_CIRCUITS: u32 = 150;

/// The whole node configuration, as read from `config.toml`.
///
/// Every field has a default; unknown fields are an error. Build one with
/// [`Config::load`] or [`Config::from_toml_str`], which also
/// [validate](Config::validate) it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where keys and state live. After loading, a relative path has been
    /// resolved against the directory of the configuration file.
    pub data_dir: PathBuf,
    /// `[node]`: this node's identity on the network and its listeners.
    pub node: NodeConfig,
    /// `[client]`: the local proxies and how circuits are built for them.
    pub client: ClientConfig,
    /// `[exit]`: whether and where this node lets circuits leave the network
    /// (the engine's own type; its policy rules are parsed on load).
    pub exit: ExitConfig,
    /// `[control]`: the local control API.
    pub control: ControlConfig,
    /// `[measure]`: how relays measure each other, and whether this node
    /// uses only measured relays.
    pub measure: MeasureConfig,
    /// `[directory]`: how often the directory is reconciled, and the slots
    /// at which every node takes its view.
    pub directory: DirectoryConfig,
}

/// The `[directory]` section. The slot and margin are the network's:
/// every node of one network should use the same, or its view differs
/// from the others'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// Milliseconds between two reconciliations (anti-entropy) with a few
    /// peers. New records spread by announcement at once; this only
    /// repairs what an announcement missed.
    pub exchange_interval_ms: u64,
    /// Milliseconds over which records accepted are gathered and announced
    /// together to a few relays.
    pub announce_batch_ms: u64,
    /// Length of a slot, seconds: through a slot, paths are chosen from the
    /// records published `cut_margin_secs` before it began.
    pub cut_every_secs: u64,
    /// How long before a slot's start a record must have been published to
    /// count in it, seconds.
    pub cut_margin_secs: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            exchange_interval_ms: 600_000,
            announce_batch_ms: 10_000,
            cut_every_secs: 3600,
            cut_margin_secs: 300,
        }
    }
}

impl DirectoryConfig {
    /// A test network on one host: reconcile twice a second, announce
    /// every second, every record counts at once.
    pub fn test_network() -> Self {
        DirectoryConfig {
            exchange_interval_ms: 500,
            announce_batch_ms: 1000,
            cut_every_secs: 1,
            cut_margin_secs: 0,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=3_600_000).contains(&self.exchange_interval_ms) {
            return Err(ConfigError::invalid(
                "directory.exchange_interval_ms",
                format!(
                    "{} is not between 50 and 3600000",
                    self.exchange_interval_ms
                ),
            ));
        }
        if !(100..=60_000).contains(&self.announce_batch_ms) {
            return Err(ConfigError::invalid(
                "directory.announce_batch_ms",
                format!("{} is not between 100 and 60000", self.announce_batch_ms),
            ));
        }
        if !(1..=86_400).contains(&self.cut_every_secs) {
            return Err(ConfigError::invalid(
                "directory.cut_every_secs",
                format!("{} is not between 1 and 86400", self.cut_every_secs),
            ));
        }
        if self.cut_margin_secs >= self.cut_every_secs {
            return Err(ConfigError::invalid(
                "directory.cut_margin_secs",
                "must be less than directory.cut_every_secs".to_string(),
            ));
        }
        Ok(())
    }
}

/// The `[measure]` section. The period, measurers, window, minimum and
/// ramp are the network's: every node of one network should use the same
/// (the period decides who measures whom).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasureConfig {
    /// Whether this node (if it is a relay) measures the relays it is
    /// assigned.
    pub enabled: bool,
    /// Whether this node uses only relays that measurers reached, weighed
    /// by what they measured. Off: every relay is used at its advertised
    /// bandwidth (private test networks only).
    pub required: bool,
    /// Length of a measurement period, seconds.
    pub period_secs: u64,
    /// Measurers assigned to each relay per period.
    pub measurers_per_target: u32,
    /// Periods whose reports count (4 to 8; reports are kept for twice
    /// as long, to decide who measures in each).
    pub window_periods: u32,
    /// Distinct measurers that must have reached a relay before it is used.
    pub min_measurers: u32,
    /// Seconds over which a newly measured relay's weight grows to its
    /// measured bandwidth (0: at once).
    pub ramp_secs: u64,
    /// How long one measurement transfers data, milliseconds.
    pub duration_ms: u64,
    /// The most bytes per second one measurement transfers (measurements
    /// run one at a time): a faster relay measures as this fast.
    pub max_rate: u64,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig {
            enabled: true,
            required: true,
            period_secs: 12 * 60 * 60,
            measurers_per_target: 3,
            window_periods: 4,
            min_measurers: 3,
            ramp_secs: 3 * 24 * 60 * 60,
            duration_ms: 10_000,
            max_rate: 20_000_000,
        }
    }
}

impl MeasureConfig {
    /// Short periods for a test network on one host: every relay measured
    /// by about 4 others every 20 s (so that even in a network of a few
    /// relays each gets 2 in most periods) in half-second samples (short
    /// enough that they seldom overlap at one relay), usable after 2
    /// measurers, no ramp.
    pub fn test_network() -> Self {
        MeasureConfig {
            enabled: true,
            required: true,
            period_secs: 20,
            measurers_per_target: 4,
            window_periods: 4,
            min_measurers: 2,
            ramp_secs: 0,
            duration_ms: 500,
            max_rate: 8_000_000,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let range = |field: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    field,
                    format!("{v} is not between {lo} and {hi}"),
                ))
            }
        };
        range(
            "measure.period_secs",
            self.period_secs,
            10,
            7 * 24 * 60 * 60,
        )?;
        range(
            "measure.measurers_per_target",
            u64::from(self.measurers_per_target),
            1,
            16,
        )?;
        // Who measures is decided over the window before each period: a
        // window shorter than 4 periods decides it from too few
        // observations (and 1 would let every key measure).
        range(
            "measure.window_periods",
            u64::from(self.window_periods),
            4,
            8,
        )?;
        range(
            "measure.min_measurers",
            u64::from(self.min_measurers),
            1,
            16,
        )?;
        range("measure.ramp_secs", self.ramp_secs, 0, 30 * 24 * 60 * 60)?;
        range("measure.duration_ms", self.duration_ms, 500, 60_000)?;
        if self.duration_ms * 4 > self.period_secs * 1000 {
            return Err(ConfigError::invalid(
                "measure.duration_ms",
                "must be at most a quarter of measure.period_secs",
            ));
        }
        range(
            "measure.max_rate",
            self.max_rate,
            MIN_BANDWIDTH_RATE,
            u64::MAX,
        )?;
        Ok(())
    }
}

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// libp2p (discovery) listen multiaddrs.
    pub p2p_listen: Vec<Multiaddr>,
    /// The dedicated cell-link TCP listener.
    pub link_listen: SocketAddr,
    /// Link addresses to advertise instead of `link_listen`; empty = use the
    /// listen address.
    pub advertise: Vec<SocketAddr>,
    /// Bootstrap nodes: multiaddrs ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// ISO 3166-1 alpha-2 code, upper case; `ZZ` = unknown.
    pub region: String,
    /// Advertised bandwidth in bytes per second.
    pub bandwidth: u64,
    /// Donated bandwidth as a relay, bytes per second each direction;
    /// 0: no limit.
    pub bandwidth_rate: u64,
    /// Bytes that may pass at once after a quiet period; 0: `bandwidth_rate`.
    pub bandwidth_burst: u64,
    /// Peer ids of other nodes run by the same operator.
    pub family: Vec<PeerId>,
    /// Whether this node relays circuits for others.
    pub relay: bool,
    /// Danger: extend circuits to relays at private, loopback or link-local
    /// addresses (test networks on one host or one LAN only). Off, a client
    /// cannot use this relay to probe its local network.
    pub danger_allow_private_links: bool,
}

/// The `[client]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// SOCKS5 listener; `None` (written `""`) disables it.
    #[serde(with = "opt_addr")]
    pub socks: Option<SocketAddr>,
    /// HTTP CONNECT listener; `None` (written `""`) disables it.
    #[serde(with = "opt_addr")]
    pub http_proxy: Option<SocketAddr>,
    /// Nodes per circuit, `1..=`[`MAX_HOPS`].
    pub hops: u8,
    /// Seconds a circuit takes new streams after its first one.
    pub max_circuit_dirtiness_secs: u64,
    /// Number of primary entry guards: circuits start at the first reachable
    /// one, in order; the others take over while it is unreachable.
    pub num_guards: usize,
    /// Seconds a guard may be missing from the directory, or unreachable
    /// while other guards are reachable, before it is replaced.
    pub guard_replace_after_secs: u64,
    /// Circuits attempted through a guard before path-bias accounting may
    /// flag it (fewer than 30% built: no longer used as a first hop).
    pub path_bias_min_circuits: u32,
    /// Allow `socks` and `http_proxy` on non-loopback addresses.
    pub danger_allow_remote: bool,
}

/// The `[control]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Control API listener; `None` (written `""`) disables it.
    #[serde(with = "opt_addr")]
    pub listen: Option<SocketAddr>,
    /// Allow the control API on a non-loopback address.
    pub danger_allow_remote: bool,
}

impl NodeConfig {
    /// The donated bandwidth limit, if `bandwidth_rate` sets one:
    /// `(rate, burst)` in bytes per second.
    pub fn relay_bandwidth(&self) -> Option<(u64, u64)> {
        (self.bandwidth_rate > 0).then(|| {
            let burst = if self.bandwidth_burst == 0 {
                self.bandwidth_rate
            } else {
                self.bandwidth_burst
            };
            (self.bandwidth_rate, burst)
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("."),
            node: NodeConfig::default(),
            client: ClientConfig::default(),
            exit: ExitConfig::default(),
            control: ControlConfig::default(),
            measure: MeasureConfig::default(),
            directory: DirectoryConfig::default(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            p2p_listen: vec![Multiaddr::empty()
                .with(Protocol::Ip4([0, 0, 0, 0].into()))
                .with(Protocol::Tcp(9200))],
            link_listen: SocketAddr::from(([0, 0, 0, 0], 9201)),
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            region: "ZZ".to_owned(),
            bandwidth: 10_000_000,
            bandwidth_rate: 0,
            bandwidth_burst: 0,
            family: Vec::new(),
            relay: true,
            danger_allow_private_links: false,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            socks: Some(SocketAddr::from(([127, 0, 0, 1], 9050))),
            http_proxy: Some(SocketAddr::from(([127, 0, 0, 1], 8118))),
            hops: 3,
            max_circuit_dirtiness_secs: 600,
            num_guards: 3,
            guard_replace_after_secs: 20 * 24 * 60 * 60,
            path_bias_min_circuits: 150,
            danger_allow_remote: false,
        }
    }
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// A relative `data_dir` is resolved against the directory containing
    /// `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = fsutil::read_bounded(path, MAX_CONFIG_BYTES, false)?.ok_or_else(|| {
            ConfigError::io(
                "reading",
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Toml {
            path: Some(path.to_owned()),
            message: "the file is not valid UTF-8".to_owned(),
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Config::from_toml_str(&text, base).map_err(|e| match e {
            ConfigError::Toml {
                path: None,
                message,
            } => ConfigError::Toml {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text. A relative `data_dir` is
    /// resolved against `base_dir`.
    pub fn from_toml_str(s: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(s).map_err(|e| ConfigError::Toml {
            path: None,
            message: e.to_string(),
        })?;
        if config.data_dir.is_relative() {
            config.data_dir = base_dir.join(&config.data_dir);
        }
        // Drop interior `.` components and trailing slashes ("dir/." -> "dir").
        config.data_dir = config.data_dir.components().collect();
        config.validate()?;
        Ok(config)
    }

    /// The commented default configuration file: every option, set to its
    /// default value and explained. Parses to [`Config::default()`].
    pub fn default_toml() -> &'static str {
        DEFAULT_TOML
    }

    /// Checks the values that the types alone do not.
    ///
    /// Refuses: `client.hops` outside `1..=5`; a region that is not two
    /// upper-case letters; zero bandwidth, guards or dirtiness; more than 16
    /// guards; a zero guard replacement time; a path-bias minimum outside
    /// 1..=150; bootstrap
    /// addresses without `/p2p/<peer id>`; unspecified or port-0 advertise
    /// addresses; non-loopback proxy listeners unless
    /// `client.danger_allow_remote`; a non-loopback control listener unless
    /// `control.danger_allow_remote`; two listeners on the same address.
    /// (Exit policy rules that `veilnet-policy` cannot parse never get this
    /// far: they fail the parse.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.measure.validate()?;
        self.directory.validate()?;
        let c = &self.client;
        if !(1..=MAX_HOPS).contains(&usize::from(c.hops)) {
            return Err(ConfigError::invalid(
                "client.hops",
                format!("{} is not between 1 and {MAX_HOPS}", c.hops),
            ));
        }
        if c.num_guards == 0 {
            return Err(ConfigError::invalid(
                "client.num_guards",
                "must be at least 1",
            ));
        }
        if c.num_guards > MAX_NUM_GUARDS {
            return Err(ConfigError::invalid(
                "client.num_guards",
                format!("{} is more than {MAX_NUM_GUARDS}", c.num_guards),
            ));
        }
        if c.guard_replace_after_secs == 0 {
            return Err(ConfigError::invalid(
                "client.guard_replace_after_secs",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_PATH_BIAS_MIN_CIRCUITS).contains(&c.path_bias_min_circuits) {
            return Err(ConfigError::invalid(
                "client.path_bias_min_circuits",
                format!(
                    "{} is not between 1 and {MAX_PATH_BIAS_MIN_CIRCUITS}",
                    c.path_bias_min_circuits
                ),
            ));
        }
        if c.max_circuit_dirtiness_secs == 0 {
            return Err(ConfigError::invalid(
                "client.max_circuit_dirtiness_secs",
                "must be at least 1",
            ));
        }
        check_loopback("client.socks", c.socks, c.danger_allow_remote)?;
        check_loopback("client.http_proxy", c.http_proxy, c.danger_allow_remote)?;
        check_loopback(
            "control.listen",
            self.control.listen,
            self.control.danger_allow_remote,
        )?;

        let n = &self.node;
        let r = n.region.as_bytes();
        if r.len() != 2 || !r.iter().all(u8::is_ascii_uppercase) {
            return Err(ConfigError::invalid(
                "node.region",
                format!(
                    "{:?} is not a two-letter upper-case ISO 3166-1 code (use \"ZZ\" for unknown)",
                    n.region
                ),
            ));
        }
        if n.bandwidth == 0 {
            return Err(ConfigError::invalid("node.bandwidth", "must be at least 1"));
        }
        if n.bandwidth_rate != 0 && n.bandwidth_rate < MIN_BANDWIDTH_RATE {
            return Err(ConfigError::invalid(
                "node.bandwidth_rate",
                format!("must be 0 (no limit) or at least {MIN_BANDWIDTH_RATE} bytes per second"),
            ));
        }
        if n.bandwidth_burst != 0 && n.bandwidth_burst < n.bandwidth_rate {
            return Err(ConfigError::invalid(
                "node.bandwidth_burst",
                "must be 0 or at least node.bandwidth_rate",
            ));
        }
        for addr in &n.bootstrap {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(ConfigError::invalid(
                    "node.bootstrap",
                    format!("{addr} does not end in /p2p/<peer id>"),
                ));
            }
        }
        for addr in &n.advertise {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(ConfigError::invalid(
                    "node.advertise",
                    format!("{addr} is not an address others can connect to"),
                ));
            }
        }

        let listeners = [
            ("node.link_listen", Some(n.link_listen)),
            ("client.socks", c.socks),
            ("client.http_proxy", c.http_proxy),
            ("control.listen", self.control.listen),
        ];
        for (i, (name_a, a)) in listeners.iter().enumerate() {
            for (name_b, b) in &listeners[i + 1..] {
                if let (Some(a), Some(b)) = (a, b) {
                    if a == b && a.port() != 0 {
                        return Err(ConfigError::invalid(
                            name_b,
                            format!("{b} is already used by `{name_a}`"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Risky but allowed settings, one sentence each, for the daemon to log
    /// at startup. Empty for the default configuration.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.client.hops < 3 {
            w.push(format!(
                "client.hops = {}: circuits shorter than 3 hops are easier to deanonymize",
                self.client.hops
            ));
        }
        if self.exit.danger_allow_private_targets {
            w.push(
                "exit.danger_allow_private_targets is set: this exit will connect to private and loopback addresses"
                    .to_owned(),
            );
        }
        if self.exit.danger_allow_one_hop_exits {
            w.push(
                "exit.danger_allow_one_hop_exits is set: clients can use this exit as a single-hop proxy"
                    .to_owned(),
            );
        }
        let remote = |a: Option<SocketAddr>| a.is_some_and(|a| !a.ip().is_loopback());
        if remote(self.client.socks) || remote(self.client.http_proxy) {
            w.push(
                "a client proxy listens on a non-loopback address: others can use your circuits"
                    .to_owned(),
            );
        }
        if remote(self.control.listen) {
            w.push("the control API listens on a non-loopback address".to_owned());
        }
        w
    }
}

fn check_loopback(
    field: &'static str,
    addr: Option<SocketAddr>,
    allow_remote: bool,
) -> Result<(), ConfigError> {
    match addr {
        Some(a) if !a.ip().is_loopback() && !allow_remote => Err(ConfigError::invalid(
            field,
            format!(
                "{a} is not a loopback address; set `danger_allow_remote = true` in the same section to allow it"
            ),
        )),
        _ => Ok(()),
    }
}

/// Serde helpers for an optional socket address written as a string, with
/// `""` meaning "disabled".
mod opt_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid socket address {s:?}: expected IP:port such as \"127.0.0.1:9050\", or \"\" to disable"
            ))
        })
    }
}
