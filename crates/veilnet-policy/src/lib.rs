#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod exit_config;
mod wire;

pub use exit_config::ExitConfig;
pub use wire::PolicyWireError;

/// SMTP, refused by [`ExitPolicy::default_exit`].
const SMTP_PORT: u16 = 25;

/// Maximum number of rules an [`ExitPolicy`] may hold.
pub const MAX_RULES: usize = 256;

/// Maximum length in bytes of one rule's text (after trimming).
///
/// The longest meaningful rule (`reject [ffff:...:ffff]/128:65535-65535`) is
/// well under 80 bytes; the limit just bounds what a peer can make us parse
/// and echo back in error messages.
pub const MAX_RULE_LEN: usize = 128;

/// What a rule does with a matching target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the exit connect to the target.
    Accept,
    /// Refuse the connection.
    Reject,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
        })
    }
}

/// The address half of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrPattern {
    /// `*`: every IPv4 and IPv6 address.
    Any,
    /// One network (a single address is a `/32` or `/128` network).
    ///
    /// Networks are always stored truncated (no host bits set) and networks
    /// inside the IPv4-mapped IPv6 range `::ffff:0:0/96` are stored as the
    /// equivalent IPv4 network, because [`ExitPolicy::allows`] checks mapped
    /// addresses as IPv4.
    Net(IpNet),
}

impl AddrPattern {
    /// Whether `ip` (already canonicalised, see [`canonical_ip`]) is matched.
    fn matches(&self, ip: IpAddr) -> bool {
        match self {
            AddrPattern::Any => true,
            AddrPattern::Net(net) => net.contains(&ip),
        }
    }
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrPattern::Any => f.write_str("*"),
            AddrPattern::Net(IpNet::V4(n)) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            AddrPattern::Net(IpNet::V4(n)) => write!(f, "{}/{}", n.addr(), n.prefix_len()),
            AddrPattern::Net(IpNet::V6(n)) if n.prefix_len() == 128 => write!(f, "[{}]", n.addr()),
            AddrPattern::Net(IpNet::V6(n)) => write!(f, "[{}]/{}", n.addr(), n.prefix_len()),
        }
    }
}

/// An inclusive range of TCP ports, `lo..=hi` with `lo <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// Every port (`*`).
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    /// The range `lo..=hi`; `None` if `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        (lo <= hi).then_some(PortRange { lo, hi })
    }

    /// A range holding exactly one port.
    pub fn single(port: u16) -> Self {
        PortRange { lo: port, hi: port }
    }

    /// Lowest port in the range.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// Highest port in the range.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    /// Whether this is the full range `*`.
    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One line of an exit policy: `accept|reject ADDR:PORTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What to do with a matching target.
    pub action: Action,
    /// Which addresses the rule matches.
    pub addr: AddrPattern,
    /// Which ports the rule matches.
    pub ports: PortRange,
}

impl Rule {
    /// Whether the rule matches this (canonical) address and port.
    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.ports.contains(port) && self.addr.matches(ip)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.action, self.addr, self.ports)
    }
}

/// Why one rule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The rule is empty or only whitespace.
    #[error("empty rule")]
    Empty,
    /// The rule text is longer than [`MAX_RULE_LEN`].
    #[error("rule is {len} bytes long (max {MAX_RULE_LEN})")]
    TooLong {
        /// Length of the offending text.
        len: usize,
    },
    /// The first word is neither `accept` nor `reject`.
    #[error("unknown action {0:?}: expected \"accept\" or \"reject\"")]
    BadAction(String),
    /// There is no `ADDR:PORTS` after the action.
    #[error("missing ADDR:PORTS after the action")]
    MissingTarget,
    /// Something follows `ADDR:PORTS`.
    #[error("unexpected text after ADDR:PORTS: {0:?}")]
    TrailingText(String),
    /// `ADDR:PORTS` has no `:` separating the ports.
    #[error("missing \":PORTS\" in {0:?} (use \":*\" for all ports)")]
    MissingPorts(String),
    /// The address is not `*`, an IPv4 address/network or a bracketed IPv6 one.
    #[error("bad address {0:?}: expected *, 1.2.3.4, 1.2.3.0/24, [::1] or [fc00::]/7")]
    BadAddress(String),
    /// The prefix length after `/` is not a number or too large.
    #[error("bad prefix length {prefix:?} for {addr} (max {max})")]
    BadPrefix {
        /// The address the prefix belongs to.
        addr: IpAddr,
        /// The prefix text as written.
        prefix: String,
        /// The largest prefix length for that address family.
        max: u8,
    },
    /// The network has bits set below its prefix (e.g. `10.1.0.0/8`).
    #[error("network {written} has host bits set; did you mean {suggested}?")]
    HostBitsSet {
        /// The network as written.
        written: IpNet,
        /// The truncated network.
        suggested: IpNet,
    },
    /// A port is not a number in `0..=65535`.
    #[error("bad port {0:?}: expected *, a port (0-65535) or a range like 80-90")]
    BadPort(String),
    /// A port range has `lo > hi`.
    #[error("port range {lo}-{hi} is reversed")]
    ReversedRange {
        /// Lower bound as written.
        lo: u16,
        /// Upper bound as written.
        hi: u16,
    },
}

/// Errors building an [`ExitPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// One rule is malformed. `index` counts from 0.
    #[error("exit policy rule #{index} {rule:?}: {reason}")]
    BadRule {
        /// Position of the rule in the list, from 0.
        index: usize,
        /// The rule text (cut to [`MAX_RULE_LEN`] bytes).
        rule: String,
        /// What is wrong with it.
        #[source]
        reason: RuleError,
    },
    /// The policy has more than [`MAX_RULES`] rules.
    #[error("exit policy has {count} rules (max {MAX_RULES})")]
    TooManyRules {
        /// How many rules were given (or how many were seen before giving up).
        count: usize,
    },
}

/// Cut `s` to at most `max` bytes on a char boundary (for error messages).
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn parse_port(s: &str) -> Result<u16, RuleError> {
    // `u16::from_str` accepts a leading '+'; we do not.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::BadPort(clip(s, 16)));
    }
    s.parse().map_err(|_| RuleError::BadPort(clip(s, 16)))
}

impl FromStr for PortRange {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        if s == "*" {
            return Ok(PortRange::ALL);
        }
        match s.split_once('-') {
            None => Ok(PortRange::single(parse_port(s)?)),
            Some((lo, hi)) => {
                let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
                PortRange::new(lo, hi).ok_or(RuleError::ReversedRange { lo, hi })
            }
        }
    }
}

/// Build a network, rejecting bad prefixes and host bits, and normalising
/// IPv4-mapped IPv6 networks to IPv4.
fn make_net(addr: IpAddr, prefix: Option<&str>) -> Result<IpNet, RuleError> {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let len = match prefix {
        None => max,
        Some(p) => {
            let bad = || RuleError::BadPrefix {
                addr,
                prefix: clip(p, 16),
                max,
            };
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad()),
            }
        }
    };
    let written = IpNet::new(addr, len).map_err(|_| RuleError::BadPrefix {
        addr,
        prefix: len.to_string(),
        max,
    })?;
    let suggested = written.trunc();
    if suggested != written {
        return Err(RuleError::HostBitsSet { written, suggested });
    }
    Ok(normalise_mapped(written))
}

/// `::ffff:a.b.c.d/96+n` becomes `a.b.c.d/n`.
fn normalise_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = n.addr().to_ipv4_mapped() {
                return IpNet::V4(Ipv4Net::new_assert(v4, n.prefix_len() - 96));
            }
        }
    }
    net
}

impl FromStr for AddrPattern {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadAddress(clip(s, 48));
        match s {
            "*" => return Ok(AddrPattern::Any),
            "*4" => return Ok(AddrPattern::Net(IpNet::V4(Ipv4Net::default()))),
            "*6" => return Ok(AddrPattern::Net(IpNet::V6(Ipv6Net::default()))),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| bad())?;
            let prefix = match after {
                "" => None,
                p => Some(p.strip_prefix('/').ok_or_else(bad)?),
            };
            return make_net(IpAddr::V6(ip), prefix).map(AddrPattern::Net);
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        make_net(IpAddr::V4(ip), prefix).map(AddrPattern::Net)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// Parses `accept|reject ADDR:PORTS`; see the crate docs for the syntax.
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RuleError::Empty);
        }
        if s.len() > MAX_RULE_LEN {
            return Err(RuleError::TooLong { len: s.len() });
        }
        let mut words = s.split_whitespace();
        let action = match words.next() {
            Some(w) if w.eq_ignore_ascii_case("accept") => Action::Accept,
            Some(w) if w.eq_ignore_ascii_case("reject") => Action::Reject,
            Some(w) => return Err(RuleError::BadAction(clip(w, 16))),
            None => return Err(RuleError::Empty),
        };
        let target = words.next().ok_or(RuleError::MissingTarget)?;
        if let Some(extra) = words.next() {
            return Err(RuleError::TrailingText(clip(extra, 32)));
        }
        // The port part never contains ':', so split at the last one; this
        // keeps bracketed IPv6 addresses intact.
        let (addr, ports) = target
            .rsplit_once(':')
            .ok_or_else(|| RuleError::MissingPorts(clip(target, 64)))?;
        // "[::1]" alone splits inside the brackets; catch that.
        if addr.starts_with('[') && !addr.contains(']') {
            return Err(RuleError::MissingPorts(clip(target, 64)));
        }
        Ok(Rule {
            action,
            addr: addr.parse()?,
            ports: ports.parse()?,
        })
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The built-in private and special-purpose networks.
///
/// IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64's well-known prefix, 6to4) are covered because addresses are
/// canonicalised (see [`canonical_ip`]) before they are matched.
const PRIVATE_NETS: [IpNet; 17] = [
    v4(0, 0, 0, 0, 8),
    v4(10, 0, 0, 0, 8),
    v4(100, 64, 0, 0, 10),
    v4(127, 0, 0, 0, 8),
    v4(169, 254, 0, 0, 16),
    v4(172, 16, 0, 0, 12),
    v4(192, 168, 0, 0, 16),
    v4(224, 0, 0, 0, 4),
    v4(240, 0, 0, 0, 4),
    v4(255, 255, 255, 255, 32),
    v6(Ipv6Addr::UNSPECIFIED, 128),
    v6(Ipv6Addr::LOCALHOST, 128),
    v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // Site-local (deprecated, still routed inside some networks).
    v6(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on
    // the operator's prefix length, so the whole range is refused.
    v6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// `reject NET:*` for each of [`PRIVATE_NETS`], in order: how the default
/// policy begins (and what its binary form writes as one flag).
pub(crate) fn private_rejections() -> impl ExactSizeIterator<Item = Rule> {
    PRIVATE_NETS.iter().map(|net| Rule {
        action: Action::Reject,
        addr: AddrPattern::Net(*net),
        ports: PortRange::ALL,
    })
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(addr: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(addr, len))
}

/// The address as the policy sees it: an IPv6 address that reaches an IPv4
/// address becomes that IPv4 address, so the private-address, own-address
/// and exit-policy rules see where a connection really goes. These are
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated;
/// `::` and `::1` stay themselves), NAT64's well-known prefix
/// (`64:ff9b::a.b.c.d`, RFC 6052) and 6to4 (`2002:aabb:ccdd::/48`, RFC
/// 3056). Everything else is unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => ip,
        [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => ip,
    }
}

/// Whether `ip` is a private, loopback, link-local, multicast, reserved or
/// otherwise special address an exit must not connect to on a public network.
///
/// Covers `0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16,
/// 224/4, 240/4, 255.255.255.255, ::, ::1, fc00::/7, fe80::/10, fec0::/10,
/// 64:ff9b:1::/48, ff00::/8`, and every IPv6 form of the IPv4 ones that
/// [`canonical_ip`] decodes.
pub fn is_private_or_special(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    PRIVATE_NETS.iter().any(|n| n.contains(&ip))
}

/// An ordered list of rules deciding which targets an exit connects to.
///
/// The first rule matching the target decides; when none matches the target
/// is rejected. Serialises as a list of rule strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
}

impl ExitPolicy {
    /// A policy from already-built rules; fails if there are more than
    /// [`MAX_RULES`].
    pub fn new(rules: Vec<Rule>) -> Result<Self, PolicyError> {
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules { count: rules.len() });
        }
        Ok(ExitPolicy { rules })
    }

    /// Parse rules such as `accept *:443`, `reject 10.0.0.0/8:*`,
    /// `accept 1.2.3.4:80-90`, `reject [fc00::]/7:*`, `accept [::1]:22`.
    ///
    /// The error names the first bad rule (by index and text) and why.
    pub fn parse_rules<S: AsRef<str>>(lines: &[S]) -> Result<Self, PolicyError> {
        if lines.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules { count: lines.len() });
        }
        let rules = lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let line = line.as_ref();
                line.parse::<Rule>().map_err(|reason| PolicyError::BadRule {
                    index,
                    rule: clip(line.trim(), MAX_RULE_LEN),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExitPolicy { rules })
    }

    /// The default exit policy: reject the private and special networks
    /// (see [`is_private_or_special`]) on every port, then `reject *:25`
    /// (SMTP: an open exit on port 25 is a spam relay, so Tor's default
    /// policy refuses it too), then `accept *:*`.
    pub fn default_exit() -> Self {
        let mut rules: Vec<Rule> = private_rejections().collect();
        rules.push(Rule {
            action: Action::Reject,
            addr: AddrPattern::Any,
            ports: PortRange::single(SMTP_PORT),
        });
        rules.push(Rule {
            action: Action::Accept,
            addr: AddrPattern::Any,
            ports: PortRange::ALL,
        });
        ExitPolicy { rules }
    }

    /// A policy that rejects everything (`reject *:*`), for non-exit nodes.
    pub fn reject_all() -> Self {
        ExitPolicy {
            rules: vec![Rule {
                action: Action::Reject,
                addr: AddrPattern::Any,
                ports: PortRange::ALL,
            }],
        }
    }

    /// Drop the built-in private rejections, i.e. every rule that is exactly
    /// `reject NET:*` for one of the built-in private/special networks.
    ///
    /// Meant for test networks (`allow_private_targets`). Rules that only
    /// partly overlap a private network (other ports, other prefixes) stay,
    /// and so does the default policy's `reject *:25`.
    pub fn with_private_targets_allowed(mut self) -> Self {
        self.rules.retain(|r| {
            !(r.action == Action::Reject
                && r.ports.is_all()
                && matches!(r.addr, AddrPattern::Net(n) if PRIVATE_NETS.contains(&n)))
        });
        self
    }

    /// Whether the policy lets the exit connect to `ip:port`.
    ///
    /// First matching rule wins; no match means reject. IPv4-mapped IPv6
    /// addresses are checked as IPv4.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical_ip(ip);
        self.rules
            .iter()
            .find(|r| r.matches(ip, port))
            .is_some_and(|r| r.action == Action::Accept)
    }

    /// Whether some address on `port` could be accepted.
    ///
    /// Used when the target is a domain name not yet resolved: `false` means
    /// no resolution can make the connection acceptable. The exit must still
    /// check the resolved address with [`allows`](Self::allows).
    pub fn may_allow_port(&self, port: u16) -> bool {
        // Networks rejected so far on this port, per family.
        let mut rejected: Vec<IpNet> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.ports.contains(port)) {
            match (rule.action, rule.addr) {
                (Action::Reject, AddrPattern::Any) => return false,
                (Action::Reject, AddrPattern::Net(n)) => rejected.push(n),
                (Action::Accept, AddrPattern::Any) => {
                    let all4 = IpNet::V4(Ipv4Net::default());
                    let all6 = IpNet::V6(Ipv6Net::default());
                    if !covered(all4, &rejected) || !covered(all6, &rejected) {
                        return true;
                    }
                }
                (Action::Accept, AddrPattern::Net(n)) => {
                    if !covered(n, &rejected) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules as strings; [`parse_rules`](Self::parse_rules) turns them
    /// back into an equal policy.
    pub fn to_strings(&self) -> Vec<String> {
        self.rules.iter().map(Rule::to_string).collect()
    }
}

/// Whether `net` lies entirely inside the union of `by`.
///
/// Recurses into halves only while some member of `by` lies strictly inside
/// the current network, so the work is bounded by
/// `by.len() * 128` steps.
fn covered(net: IpNet, by: &[IpNet]) -> bool {
    if by.iter().any(|b| b.contains(&net)) {
        return true;
    }
    if !by.iter().any(|b| net.contains(b)) {
        return false;
    }
    match halves(net) {
        Some((a, b)) => covered(a, by) && covered(b, by),
        None => false,
    }
}

/// The two sub-networks one bit longer than `net`; `None` for a single host.
fn halves(net: IpNet) -> Option<(IpNet, IpNet)> {
    match net {
        IpNet::V4(n) => {
            let len = n.prefix_len();
            if len >= 32 {
                return None;
            }
            let base = u32::from(n.network());
            let bit = 1u32 << (31 - len);
            let a = Ipv4Net::new(Ipv4Addr::from(base), len + 1).ok()?;
            let b = Ipv4Net::new(Ipv4Addr::from(base | bit), len + 1).ok()?;
            Some((IpNet::V4(a), IpNet::V4(b)))
        }
        IpNet::V6(n) => {
            let len = n.prefix_len();
            if len >= 128 {
                return None;
            }
            let base = u128::from(n.network());
            let bit = 1u128 << (127 - len);
            let a = Ipv6Net::new(Ipv6Addr::from(base), len + 1).ok()?;
            let b = Ipv6Net::new(Ipv6Addr::from(base | bit), len + 1).ok()?;
            Some((IpNet::V6(a), IpNet::V6(b)))
        }
    }
}

impl Serialize for ExitPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.rules.iter())
    }
}

impl<'de> Deserialize<'de> for ExitPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PolicyVisitor;

        impl<'de> Visitor<'de> for PolicyVisitor {
            type Value = ExitPolicy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {MAX_RULES} exit policy rule strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExitPolicy, A::Error> {
                let mut rules = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_RULES));
                loop {
                    let index = rules.len();
                    let Some(text) = seq.next_element::<String>()? else {
                        break;
                    };
                    if index >= MAX_RULES {
                        return Err(serde::de::Error::custom(PolicyError::TooManyRules {
                            count: index + 1,
                        }));
                    }
                    let rule = text.parse::<Rule>().map_err(|reason| {
                        serde::de::Error::custom(PolicyError::BadRule {
                            index,
                            rule: clip(text.trim(), MAX_RULE_LEN),
                            reason,
                        })
                    })?;
                    rules.push(rule);
                }
                Ok(ExitPolicy { rules })
            }
        }

        d.deserialize_seq(PolicyVisitor)
    }
}
