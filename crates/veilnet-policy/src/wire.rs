//! The binary form of an exit policy, as descriptors carry it.
//!
//! `count u16 | rule*`, integers big-endian. The count's top bit set
//! means the policy begins with the built-in private rejections (`reject
//! NET:*` for each private and special network, in their fixed order, as
//! the default policy does) before the `count & 0x7fff` rules written:
//! those 17 rules would take 95 of a typical exit descriptor's ~340 bytes.
//! A rule is one flags byte
//! (bit 0: accept, bits 1-2: address kind 0 `*`, 1 IPv4, 2 IPv6; bit 3: all
//! ports; bit 4: a single port; other bits zero), then for a network its
//! prefix length and the prefix's significant bytes (`ceil(len / 8)`), then
//! the ports: none for all ports, `u16` for a single port, `lo u16 | hi u16`
//! for a range. The encoding is canonical: a network with host bits set, an
//! IPv4-mapped IPv6 network, a single port written as a range, or a set
//! reserved bit is refused, and so are the private rejections written out
//! rule by rule, so one policy has exactly one encoding and the descriptor
//! digest names one descriptor.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::{
    normalise_mapped, private_rejections, Action, AddrPattern, ExitPolicy, PortRange, Rule,
    MAX_RULES,
};

const ACCEPT: u8 = 1;
const KIND_SHIFT: u8 = 1;
const KIND_MASK: u8 = 0b11 << KIND_SHIFT;
const ALL_PORTS: u8 = 1 << 3;
const ONE_PORT: u8 = 1 << 4;
const KNOWN: u8 = ACCEPT | KIND_MASK | ALL_PORTS | ONE_PORT;
/// In the rule count: the built-in private rejections come first.
const PRIVATE_FIRST: u16 = 0x8000;
/// The rule count proper.
const COUNT_MASK: u16 = 0x7fff;

/// Why a binary exit policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyWireError {
    /// The bytes end inside the policy.
    #[error("exit policy truncated in {0}")]
    Truncated(&'static str),
    /// More rules than [`MAX_RULES`].
    #[error("exit policy has {0} rules (max {MAX_RULES})")]
    TooManyRules(usize),
    /// Not the one encoding of a valid rule.
    #[error("exit policy rule #{index}: {reason}")]
    BadRule {
        /// Position of the rule, from 0.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ExitPolicy {
    /// Appends the binary form of the policy to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let private = self.starts_with_private_rejections();
        let rest = if private {
            &self.rules[private_rejections().len()..]
        } else {
            &self.rules[..]
        };
        let n = u16::try_from(rest.len())
            .unwrap_or(COUNT_MASK)
            .min(COUNT_MASK);
        let flag = if private { PRIVATE_FIRST } else { 0 };
        out.extend_from_slice(&(n | flag).to_be_bytes());
        for rule in rest.iter().take(usize::from(n)) {
            encode_rule(rule, out);
        }
    }

    /// Whether the rules begin with the built-in private rejections.
    fn starts_with_private_rejections(&self) -> bool {
        self.rules.len() >= private_rejections().len()
            && private_rejections().zip(&self.rules).all(|(p, r)| p == *r)
    }

    /// Reads a policy written by [`encode_into`](Self::encode_into) from the
    /// front of `b`, advancing it.
    pub fn decode_from(b: &mut &[u8]) -> Result<Self, PolicyWireError> {
        let count = u16::from_be_bytes(take(b, 2, "rule count")?.try_into().unwrap_or([0; 2]));
        let private = count & PRIVATE_FIRST != 0;
        let n = usize::from(count & COUNT_MASK);
        let first = if private {
            private_rejections().len()
        } else {
            0
        };
        if first + n > MAX_RULES {
            return Err(PolicyWireError::TooManyRules(first + n));
        }
        let mut rules = Vec::with_capacity(first + n);
        if private {
            rules.extend(private_rejections());
        }
        for index in first..first + n {
            rules.push(decode_rule(b).map_err(|reason| match reason {
                RuleFault::Truncated(what) => PolicyWireError::Truncated(what),
                RuleFault::Bad(reason) => PolicyWireError::BadRule { index, reason },
            })?);
        }
        let policy = ExitPolicy { rules };
        if !private && policy.starts_with_private_rejections() {
            return Err(PolicyWireError::BadRule {
                index: 0,
                reason: "the built-in private rejections written out instead of flagged",
            });
        }
        Ok(policy)
    }
}

fn encode_rule(rule: &Rule, out: &mut Vec<u8>) {
    let mut flags = match rule.action {
        Action::Accept => ACCEPT,
        Action::Reject => 0,
    };
    let net = match rule.addr {
        AddrPattern::Any => None,
        AddrPattern::Net(net) => Some(net),
    };
    flags |= match net {
        None => 0,
        Some(IpNet::V4(_)) => 1 << KIND_SHIFT,
        Some(IpNet::V6(_)) => 2 << KIND_SHIFT,
    };
    if rule.ports.is_all() {
        flags |= ALL_PORTS;
    } else if rule.ports.lo() == rule.ports.hi() {
        flags |= ONE_PORT;
    }
    out.push(flags);
    if let Some(net) = net {
        let len = net.prefix_len();
        out.push(len);
        let bytes = usize::from(len).div_ceil(8);
        match net.addr() {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..bytes]),
        }
    }
    if flags & ALL_PORTS == 0 {
        out.extend_from_slice(&rule.ports.lo().to_be_bytes());
        if flags & ONE_PORT == 0 {
            out.extend_from_slice(&rule.ports.hi().to_be_bytes());
        }
    }
}

enum RuleFault {
    Truncated(&'static str),
    Bad(&'static str),
}

fn decode_rule(b: &mut &[u8]) -> Result<Rule, RuleFault> {
    let flags = take(b, 1, "rule flags").map_err(|_| RuleFault::Truncated("rule flags"))?[0];
    if flags & !KNOWN != 0 {
        return Err(RuleFault::Bad("reserved flag bits set"));
    }
    let action = if flags & ACCEPT != 0 {
        Action::Accept
    } else {
        Action::Reject
    };
    let addr = match (flags & KIND_MASK) >> KIND_SHIFT {
        0 => AddrPattern::Any,
        kind @ (1 | 2) => {
            let max = if kind == 1 { 32 } else { 128 };
            let len =
                take(b, 1, "prefix length").map_err(|_| RuleFault::Truncated("prefix length"))?[0];
            if len > max {
                return Err(RuleFault::Bad("prefix longer than the address"));
            }
            let n = usize::from(len).div_ceil(8);
            let prefix = take(b, n, "prefix").map_err(|_| RuleFault::Truncated("prefix"))?;
            let ip = if kind == 1 {
                let mut o = [0u8; 4];
                o[..n].copy_from_slice(prefix);
                IpAddr::V4(Ipv4Addr::from(o))
            } else {
                let mut o = [0u8; 16];
                o[..n].copy_from_slice(prefix);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let net = IpNet::new(ip, len).map_err(|_| RuleFault::Bad("bad prefix length"))?;
            if net.trunc() != net {
                return Err(RuleFault::Bad("host bits set"));
            }
            if normalise_mapped(net) != net {
                return Err(RuleFault::Bad("IPv4-mapped network not written as IPv4"));
            }
            AddrPattern::Net(net)
        }
        _ => return Err(RuleFault::Bad("unknown address kind")),
    };
    let ports = match (flags & ALL_PORTS != 0, flags & ONE_PORT != 0) {
        (true, true) => return Err(RuleFault::Bad("all ports and one port")),
        (true, false) => PortRange::ALL,
        (false, true) => PortRange::single(port(b)?),
        (false, false) => {
            let (lo, hi) = (port(b)?, port(b)?);
            let range = PortRange::new(lo, hi).ok_or(RuleFault::Bad("reversed port range"))?;
            if lo == hi || range.is_all() {
                return Err(RuleFault::Bad("port range not in its shortest form"));
            }
            range
        }
    };
    Ok(Rule {
        action,
        addr,
        ports,
    })
}

fn port(b: &mut &[u8]) -> Result<u16, RuleFault> {
    let p = take(b, 2, "port").map_err(|_| RuleFault::Truncated("port"))?;
    Ok(u16::from_be_bytes([p[0], p[1]]))
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], PolicyWireError> {
    if b.len() < n {
        return Err(PolicyWireError::Truncated(what));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: &ExitPolicy) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode_into(&mut out);
        let mut b = out.as_slice();
        assert_eq!(&ExitPolicy::decode_from(&mut b).unwrap(), p);
        assert!(b.is_empty());
        out
    }

    #[test]
    fn policies_round_trip_compactly() {
        let p = ExitPolicy::parse_rules(&[
            "reject 10.0.0.0/8:*",
            "reject [fc00::]/7:25",
            "accept 192.0.2.1:80-90",
            "accept *:443",
            "reject *:*",
        ])
        .unwrap();
        let out = round_trip(&p);
        // count, then 3 + 3+2 + 6+4 + 1+2 + 1 bytes.
        assert_eq!(out.len(), 2 + 3 + 5 + 10 + 3 + 1);
        round_trip(&ExitPolicy::default_exit());
        round_trip(&ExitPolicy::reject_all());
        round_trip(&ExitPolicy::new(Vec::new()).unwrap());
        // The default exit policy: the private rejections as one flag, then
        // `reject *:25` and `accept *:*`.
        let default = round_trip(&ExitPolicy::default_exit());
        assert_eq!(default, [0x80, 2, ONE_PORT, 0, 25, ALL_PORTS | ACCEPT]);
        // Without them (test networks) or with them in another order, the
        // rules are written out.
        let open = ExitPolicy::default_exit().with_private_targets_allowed();
        assert_eq!(
            round_trip(&open),
            [0, 2, ONE_PORT, 0, 25, ALL_PORTS | ACCEPT]
        );
        let mut reordered = ExitPolicy::default_exit();
        reordered.rules.swap(0, 1);
        assert!(round_trip(&reordered)[0] & 0x80 == 0);
    }

    /// What the flag stands for, written out: changing the built-in
    /// networks changes what every signed descriptor's flag means, so it
    /// needs a new descriptor format, and this test fails first.
    const PRIVATE_REJECTIONS: &str = concat!(
        "0a08000a080a0a0a64400a087f0a10a9fe0a0cac100a10c0a80a04e00a04f00a20ffffffff",
        "0c80000000000000000000000000000000000c8000000000000000000000000000000001",
        "0c07fc0c0afe800c0afec00c300064ff9b00010c08ff",
    );

    #[test]
    fn the_flag_stands_for_a_fixed_list() {
        let mut out = Vec::new();
        for r in private_rejections() {
            encode_rule(&r, &mut out);
        }
        assert_eq!(hex(&out), PRIVATE_REJECTIONS);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn the_private_rejections_have_one_form_and_count_towards_the_rules() {
        // Written out rule by rule they are refused: one policy, one encoding.
        let mut out = Vec::new();
        let default = ExitPolicy::default_exit();
        out.extend_from_slice(&(default.rules.len() as u16).to_be_bytes());
        for r in &default.rules {
            encode_rule(r, &mut out);
        }
        let mut b = out.as_slice();
        assert!(matches!(
            ExitPolicy::decode_from(&mut b),
            Err(PolicyWireError::BadRule { index: 0, .. })
        ));
        // The flag's 17 rules count towards MAX_RULES.
        let most = (MAX_RULES - private_rejections().len()) as u16;
        let mut over = (PRIVATE_FIRST | (most + 1)).to_be_bytes().to_vec();
        over.extend(std::iter::repeat_n(ALL_PORTS, usize::from(most) + 1));
        let mut b = over.as_slice();
        assert!(matches!(
            ExitPolicy::decode_from(&mut b),
            Err(PolicyWireError::TooManyRules(n)) if n == MAX_RULES + 1
        ));
        let mut full = (PRIVATE_FIRST | most).to_be_bytes().to_vec();
        full.extend(std::iter::repeat_n(ALL_PORTS, usize::from(most)));
        let mut b = full.as_slice();
        assert_eq!(
            ExitPolicy::decode_from(&mut b).unwrap().rules.len(),
            MAX_RULES
        );
    }

    #[test]
    fn every_truncation_and_non_canonical_form_is_refused() {
        let p =
            ExitPolicy::parse_rules(&["accept 192.0.2.0/24:80-90", "reject [2001:db8::]/32:25"])
                .unwrap();
        let out = round_trip(&p);
        for len in 0..out.len() {
            let mut b = &out[..len];
            assert!(
                matches!(
                    ExitPolicy::decode_from(&mut b),
                    Err(PolicyWireError::Truncated(_))
                ),
                "len {len}"
            );
        }
        let bad: &[(&[u8], &str)] = &[
            (&[0, 1, 0x20 | ALL_PORTS], "reserved bit"),
            (&[0, 1, (3 << KIND_SHIFT) | ALL_PORTS], "unknown kind"),
            (
                &[0, 1, (1 << KIND_SHIFT) | ALL_PORTS, 33, 1, 2, 3, 4, 5],
                "prefix too long",
            ),
            (
                &[0, 1, (1 << KIND_SHIFT) | ALL_PORTS, 12, 172, 0x1f],
                "host bits",
            ),
            (
                &[0, 1, (1 << KIND_SHIFT) | ALL_PORTS, 7, 11],
                "host bits below /7",
            ),
            (&[0, 1, ALL_PORTS | ONE_PORT], "both port forms"),
            (&[0, 1, 0, 0, 90, 0, 80], "reversed"),
            (&[0, 1, 0, 0, 80, 0, 80], "range of one port"),
            (&[0, 1, 0, 0, 0, 0xff, 0xff], "range of all ports"),
            (&[0x01, 0x01], "257 rules"),
        ];
        for (bytes, what) in bad {
            let mut b = *bytes;
            assert!(ExitPolicy::decode_from(&mut b).is_err(), "{what} accepted");
        }
        // ::ffff:10.0.0.0/104 must be written as 10.0.0.0/8.
        let mut mapped = vec![0, 1, (2 << KIND_SHIFT) | ALL_PORTS, 104];
        mapped.extend_from_slice(&[0; 10]);
        mapped.extend_from_slice(&[0xff, 0xff, 10]);
        let mut b = mapped.as_slice();
        assert!(ExitPolicy::decode_from(&mut b).is_err());
    }
}
