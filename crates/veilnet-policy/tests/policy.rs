//! Behaviour tests and vectors for exit policies.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use veilnet_policy::{
    is_private_or_special, Action, AddrPattern, ExitPolicy, PolicyError, PortRange, Rule,
    RuleError, MAX_RULES,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(lines: &[&str]) -> ExitPolicy {
    ExitPolicy::parse_rules(lines).unwrap()
}

/// (input, canonical formatting)
const PARSE_VECTORS: &[(&str, &str)] = &[
    ("accept *:443", "accept *:443"),
    ("reject 10.0.0.0/8:*", "reject 10.0.0.0/8:*"),
    ("accept 1.2.3.4:80-90", "accept 1.2.3.4:80-90"),
    ("reject [fc00::]/7:*", "reject [fc00::]/7:*"),
    ("accept [::1]:22", "accept [::1]:22"),
    ("ACCEPT *:*", "accept *:*"),
    ("  Reject   1.2.3.4/32:0-65535  ", "reject 1.2.3.4:*"),
    ("accept 1.2.3.4:80-80", "accept 1.2.3.4:80"),
    ("accept [::]/0:1-1024", "accept [::]/0:1-1024"),
    ("accept [::1]/128:22", "accept [::1]:22"),
    ("accept *4:80", "accept 0.0.0.0/0:80"),
    ("accept *6:80", "accept [::]/0:80"),
    ("reject [::ffff:10.0.0.0]/104:*", "reject 10.0.0.0/8:*"),
    ("reject [::ffff:1.2.3.4]:25", "reject 1.2.3.4:25"),
    ("accept 0.0.0.0/0:65535", "accept 0.0.0.0/0:65535"),
    ("reject\t[2001:db8::]/32:0", "reject [2001:db8::]/32:0"),
];

#[test]
fn parse_format_vectors() {
    for (input, want) in PARSE_VECTORS {
        let rule: Rule = input.parse().unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(rule.to_string(), *want, "formatting {input:?}");
        // formatting is a fixed point
        let again: Rule = want.parse().unwrap();
        assert_eq!(again, rule);
    }
}

#[test]
fn parsed_structure() {
    let r: Rule = "accept 1.2.3.4:80-90".parse().unwrap();
    assert_eq!(r.action, Action::Accept);
    assert_eq!(r.addr, AddrPattern::Net("1.2.3.4/32".parse().unwrap()));
    assert_eq!(r.ports, PortRange::new(80, 90).unwrap());
    let r: Rule = "reject *:*".parse().unwrap();
    assert_eq!(r.action, Action::Reject);
    assert_eq!(r.addr, AddrPattern::Any);
    assert!(r.ports.is_all());
}

type ErrCheck = fn(&RuleError) -> bool;

#[test]
fn malformed_rules_each_with_its_error() {
    use RuleError::*;
    let cases: &[(&str, ErrCheck)] = &[
        ("", |e| matches!(e, Empty)),
        ("   ", |e| matches!(e, Empty)),
        ("allow *:80", |e| matches!(e, BadAction(a) if a == "allow")),
        ("accept", |e| matches!(e, MissingTarget)),
        (
            "accept *:80 extra",
            |e| matches!(e, TrailingText(t) if t == "extra"),
        ),
        ("accept *", |e| matches!(e, MissingPorts(_))),
        ("accept 1.2.3.4", |e| matches!(e, MissingPorts(_))),
        ("accept [::1]", |e| matches!(e, MissingPorts(_))),
        ("accept [::1]/128", |e| matches!(e, MissingPorts(_))),
        ("accept 1.2.3:80", |e| matches!(e, BadAddress(_))),
        ("accept 256.1.1.1:80", |e| matches!(e, BadAddress(_))),
        ("accept ::1:80", |e| matches!(e, BadAddress(_))),
        ("accept [::1:80", |e| {
            matches!(e, MissingPorts(_) | BadAddress(_))
        }),
        ("accept [1.2.3.4]:80", |e| matches!(e, BadAddress(_))),
        ("accept [::1]x:80", |e| matches!(e, BadAddress(_))),
        ("accept example.com:80", |e| matches!(e, BadAddress(_))),
        ("accept :80", |e| matches!(e, BadAddress(_))),
        ("accept 10.0.0.0/33:80", |e| {
            matches!(e, BadPrefix { max: 32, .. })
        }),
        ("accept 10.0.0.0/:80", |e| matches!(e, BadPrefix { .. })),
        ("accept 10.0.0.0/-1:80", |e| matches!(e, BadPrefix { .. })),
        ("accept 10.0.0.0/+8:80", |e| matches!(e, BadPrefix { .. })),
        ("accept [fc00::]/129:80", |e| {
            matches!(e, BadPrefix { max: 128, .. })
        }),
        ("accept [fc00::]/300:80", |e| matches!(e, BadPrefix { .. })),
        (
            "accept 10.1.0.0/8:*",
            |e| matches!(e, HostBitsSet { suggested, .. } if suggested.to_string() == "10.0.0.0/8"),
        ),
        ("accept [fc01::]/7:*", |e| matches!(e, HostBitsSet { .. })),
        ("accept *:", |e| matches!(e, BadPort(_))),
        ("accept *:65536", |e| matches!(e, BadPort(_))),
        ("accept *:+80", |e| matches!(e, BadPort(_))),
        ("accept *:http", |e| matches!(e, BadPort(_))),
        ("accept *:80-", |e| matches!(e, BadPort(_))),
        ("accept *:-80", |e| matches!(e, BadPort(_))),
        ("accept *:1-2-3", |e| matches!(e, BadPort(_))),
        ("accept *:90-80", |e| {
            matches!(e, ReversedRange { lo: 90, hi: 80 })
        }),
    ];
    for (input, check) in cases {
        let err = input
            .parse::<Rule>()
            .expect_err(&format!("{input:?} must not parse"));
        assert!(check(&err), "{input:?}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    let long = format!("accept *:80 {}", "x".repeat(200));
    assert!(matches!(
        long.parse::<Rule>(),
        Err(RuleError::TooLong { .. })
    ));
}

#[test]
fn policy_error_names_the_rule() {
    let err = ExitPolicy::parse_rules(&["accept *:80", "reject 10.1.0.0/8:*"]).unwrap_err();
    match &err {
        PolicyError::BadRule { index, rule, .. } => {
            assert_eq!(*index, 1);
            assert_eq!(rule, "reject 10.1.0.0/8:*");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("#1"), "{msg}");
    assert!(msg.contains("reject 10.1.0.0/8:*"), "{msg}");
    assert!(msg.contains("host bits"), "{msg}");
    assert!(msg.contains("10.0.0.0/8"), "{msg}");
}

#[test]
fn garbage_never_panics() {
    let pieces = [
        "accept",
        "reject",
        "*",
        ":",
        "[",
        "]",
        "/",
        "-",
        "1",
        "::",
        "255",
        ".",
        " ",
        "é",
        "ffff",
        "\0",
        "65536",
        "99999999999999999999",
    ];
    // every 3-piece combination
    for a in pieces {
        for b in pieces {
            for c in pieces {
                let s = format!("accept {a}{b}{c}");
                let _ = s.parse::<Rule>();
                let s = format!("{a}{b}{c}:{a}");
                let _ = s.parse::<Rule>();
            }
        }
    }
    // long multi-byte text gets clipped without slicing inside a char
    let s = "é".repeat(300);
    let err = ExitPolicy::parse_rules(&[s.as_str()]).unwrap_err();
    assert!(err.to_string().len() < 400);
}

#[test]
fn too_many_rules() {
    let lines = vec!["accept *:80"; MAX_RULES];
    assert_eq!(
        ExitPolicy::parse_rules(&lines).unwrap().rules().len(),
        MAX_RULES
    );
    let lines = vec!["accept *:80"; MAX_RULES + 1];
    assert!(matches!(
        ExitPolicy::parse_rules(&lines),
        Err(PolicyError::TooManyRules { count }) if count == MAX_RULES + 1
    ));
    let rules = vec!["accept *:80".parse::<Rule>().unwrap(); MAX_RULES + 1];
    assert!(ExitPolicy::new(rules).is_err());
}

#[test]
fn first_match_wins() {
    let p = policy(&["reject 1.2.3.4:*", "accept 1.2.3.0/24:80", "reject *:*"]);
    assert!(!p.allows(ip("1.2.3.4"), 80));
    assert!(p.allows(ip("1.2.3.5"), 80));
    assert!(!p.allows(ip("1.2.3.5"), 81));
    assert!(!p.allows(ip("8.8.8.8"), 80));

    let p = policy(&["accept 1.2.3.0/24:80", "reject 1.2.3.4:*"]);
    assert!(p.allows(ip("1.2.3.4"), 80), "earlier accept wins");
    assert!(!p.allows(ip("1.2.3.4"), 81), "no match => reject");
}

#[test]
fn no_match_rejects() {
    let p = ExitPolicy::parse_rules::<&str>(&[]).unwrap();
    assert!(!p.allows(ip("8.8.8.8"), 443));
    assert!(!p.may_allow_port(443));
    let p = policy(&["accept *:443"]);
    assert!(p.allows(ip("8.8.8.8"), 443));
    assert!(p.allows(ip("2001:db8::1"), 443));
    assert!(!p.allows(ip("8.8.8.8"), 80));
}

#[test]
fn port_ranges_inclusive() {
    let p = policy(&["accept *:80-90"]);
    assert!(!p.allows(ip("8.8.8.8"), 79));
    assert!(p.allows(ip("8.8.8.8"), 80));
    assert!(p.allows(ip("8.8.8.8"), 90));
    assert!(!p.allows(ip("8.8.8.8"), 91));
    let p = policy(&["accept *:*"]);
    assert!(p.allows(ip("8.8.8.8"), 0));
    assert!(p.allows(ip("8.8.8.8"), 65535));
}

#[test]
fn ipv6_rules() {
    let p = policy(&[
        "accept [::1]:22",
        "reject [fc00::]/7:*",
        "accept [2001:db8::]/32:*",
    ]);
    assert!(p.allows(ip("::1"), 22));
    assert!(!p.allows(ip("::1"), 23));
    assert!(!p.allows(ip("fd00::1"), 22));
    assert!(p.allows(ip("2001:db8:1::5"), 9999));
    assert!(!p.allows(ip("2001:db9::5"), 9999));
    // v6 rules never match v4 addresses
    assert!(!p.allows(ip("1.2.3.4"), 22));
}

#[test]
fn mapped_addresses_checked_as_ipv4() {
    let p = policy(&["reject 127.0.0.0/8:*", "accept 0.0.0.0/0:*"]);
    assert!(!p.allows(ip("::ffff:127.0.0.1"), 80));
    assert!(p.allows(ip("::ffff:8.8.8.8"), 80));
    // a v6 rule does not catch mapped addresses: they are IPv4
    let p = policy(&["accept [::]/0:*"]);
    assert!(!p.allows(ip("::ffff:8.8.8.8"), 80));
    assert!(p.allows(ip("2001:db8::1"), 80));
    // a rule written in mapped form is stored (and matched) as IPv4
    let p = policy(&["accept [::ffff:8.8.8.0]/120:*"]);
    assert_eq!(p.to_strings(), vec!["accept 8.8.8.0/24:*"]);
    assert!(p.allows(ip("8.8.8.8"), 1));
    assert!(p.allows(ip("::ffff:8.8.8.8"), 1));
}

const PRIVATE: &[&str] = &[
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.255",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.1.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "224.0.0.1",
    "239.255.255.255",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "febf::1",
    "ff02::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:192.168.0.1",
    "::ffff:0.0.0.0",
    "::ffff:255.255.255.255",
    // IPv4-compatible ::0.0.0.2 (0/8), site-local.
    "::2",
    "fec0::1",
];

const PUBLIC: &[&str] = &[
    "1.1.1.1",
    "8.8.8.8",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.1",
    "169.253.255.255",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "223.255.255.255",
    "2001:db8::1",
    "2606:4700::1111",
    "fbff::1",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
];

#[test]
fn default_exit_rejects_private_accepts_public() {
    let p = ExitPolicy::default_exit();
    for a in PRIVATE {
        assert!(is_private_or_special(ip(a)), "{a} must be private/special");
        for port in [0, 22, 80, 443, 65535] {
            assert!(
                !p.allows(ip(a), port),
                "default_exit must reject {a}:{port}"
            );
        }
    }
    for a in PUBLIC {
        assert!(!is_private_or_special(ip(a)), "{a} must be public");
        for port in [0, 22, 24, 26, 80, 443, 465, 587, 65535] {
            assert!(p.allows(ip(a), port), "default_exit must accept {a}:{port}");
        }
    }
    assert_eq!(p.to_strings().last().unwrap(), "accept *:*");
    assert!(p
        .to_strings()
        .contains(&"reject 172.16.0.0/12:*".to_owned()));
    assert!(p.to_strings().contains(&"reject *:25".to_owned()));
    assert!(p.to_strings().contains(&"reject [fe80::]/10:*".to_owned()));
}

#[test]
fn default_exit_rejects_smtp() {
    let p = ExitPolicy::default_exit();
    for a in PUBLIC.iter().chain(PRIVATE) {
        assert!(!p.allows(ip(a), 25), "default_exit must reject {a}:25");
    }
    // A name on port 25 is refused before it is resolved.
    assert!(!p.may_allow_port(25));
    assert!(p.may_allow_port(24) && p.may_allow_port(26));
    // Test networks drop the private rejections, not the SMTP one.
    let p = p.with_private_targets_allowed();
    for a in PUBLIC.iter().chain(PRIVATE) {
        assert!(!p.allows(ip(a), 25), "{a}:25 allowed with private targets");
        assert!(p.allows(ip(a), 26), "{a}:26");
    }
    assert!(!p.may_allow_port(25));
}

#[test]
fn private_targets_allowed() {
    let p = ExitPolicy::default_exit().with_private_targets_allowed();
    assert_eq!(p.to_strings(), vec!["reject *:25", "accept *:*"]);
    for a in PRIVATE.iter().chain(PUBLIC) {
        assert!(p.allows(ip(a), 80), "{a}");
    }
    // custom rules survive; also after a string round trip of the default
    let mut lines = vec![
        "reject 10.0.0.0/8:25".to_owned(),
        "reject 10.0.0.0/9:*".to_owned(),
    ];
    lines.extend(ExitPolicy::default_exit().to_strings());
    let p = ExitPolicy::parse_rules(&lines)
        .unwrap()
        .with_private_targets_allowed();
    assert_eq!(
        p.to_strings(),
        vec![
            "reject 10.0.0.0/8:25",
            "reject 10.0.0.0/9:*",
            "reject *:25",
            "accept *:*"
        ]
    );
    assert!(!p.allows(ip("10.1.1.1"), 80));
    assert!(p.allows(ip("10.200.1.1"), 80));
    assert!(!p.allows(ip("10.200.1.1"), 25));
}

#[test]
fn reject_all() {
    let p = ExitPolicy::reject_all();
    assert_eq!(p.to_strings(), vec!["reject *:*"]);
    for a in PUBLIC {
        assert!(!p.allows(ip(a), 443));
    }
    for port in [0, 80, 443, 65535] {
        assert!(!p.may_allow_port(port));
    }
}

#[test]
fn may_allow_port() {
    let p = ExitPolicy::default_exit();
    assert!(p.may_allow_port(80));
    assert!(p.may_allow_port(0));

    let p = policy(&["reject *:25", "accept *:*"]);
    assert!(!p.may_allow_port(25));
    assert!(p.may_allow_port(26));

    let p = policy(&["accept *:443", "reject *:*"]);
    assert!(p.may_allow_port(443));
    assert!(!p.may_allow_port(80));

    // accept only a network that an earlier rule fully rejects
    let p = policy(&["reject 10.0.0.0/8:*", "accept 10.1.0.0/16:80"]);
    assert!(!p.may_allow_port(80));
    // ... covered by the union of two halves
    let p = policy(&[
        "reject 10.0.0.0/9:80",
        "reject 10.128.0.0/9:*",
        "accept 10.0.0.0/8:80",
    ]);
    assert!(!p.may_allow_port(80));
    assert!(!p.may_allow_port(81), "nothing accepts 81");
    // ... not fully covered
    let p = policy(&["reject 10.0.0.0/9:80", "accept 10.0.0.0/8:80"]);
    assert!(p.may_allow_port(80));
    // all IPv4 rejected, IPv6 still open
    let p = policy(&["reject 0.0.0.0/0:*", "accept *:80"]);
    assert!(p.may_allow_port(80));
    let p = policy(&["reject 0.0.0.0/0:*", "reject [::]/0:*", "accept *:80"]);
    assert!(!p.may_allow_port(80));
    // single host accepted after reject of a different host
    let p = policy(&["reject 1.2.3.4:*", "accept 1.2.3.5:80"]);
    assert!(p.may_allow_port(80));
    let p = policy(&["reject 1.2.3.4:*", "accept 1.2.3.4:80"]);
    assert!(!p.may_allow_port(80));
}

#[test]
fn may_allow_port_consistent_with_allows() {
    // Whenever allows() says yes for some address, may_allow_port must too.
    let policies = [
        ExitPolicy::default_exit(),
        ExitPolicy::reject_all(),
        policy(&["reject *:25", "accept 8.8.8.0/24:*"]),
        policy(&["reject [::]/0:*", "accept 8.8.8.8:53", "reject *:*"]),
    ];
    let addrs = ["8.8.8.8", "10.0.0.1", "2001:db8::1", "::ffff:8.8.8.8"];
    for p in &policies {
        for port in [25, 53, 80] {
            if addrs.iter().any(|a| p.allows(ip(a), port)) {
                assert!(p.may_allow_port(port), "{:?} port {port}", p.to_strings());
            }
        }
    }
}

#[test]
fn round_trip_strings() {
    let inputs: Vec<&str> = PARSE_VECTORS.iter().map(|(i, _)| *i).collect();
    let p = ExitPolicy::parse_rules(&inputs).unwrap();
    let back = ExitPolicy::parse_rules(&p.to_strings()).unwrap();
    assert_eq!(p, back);
    for p in [ExitPolicy::default_exit(), ExitPolicy::reject_all()] {
        assert_eq!(ExitPolicy::parse_rules(&p.to_strings()).unwrap(), p);
    }
}

#[test]
fn serde_json_and_toml() {
    let p = policy(&["reject 10.0.0.0/8:*", "accept [::1]:22", "accept *:443"]);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"["reject 10.0.0.0/8:*","accept [::1]:22","accept *:443"]"#
    );
    let back: ExitPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Cfg {
        exit_policy: ExitPolicy,
    }
    let cfg: Cfg = toml::from_str("exit_policy = [\"ACCEPT *:80\", \"reject *:*\"]\n").unwrap();
    assert_eq!(
        cfg.exit_policy.to_strings(),
        vec!["accept *:80", "reject *:*"]
    );
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<Cfg>(&text).unwrap(), cfg);

    let single: Rule = serde_json::from_str(r#""accept *:80""#).unwrap();
    assert_eq!(serde_json::to_string(&single).unwrap(), r#""accept *:80""#);
}

#[test]
fn serde_errors() {
    let err = serde_json::from_str::<ExitPolicy>(r#"["accept *:80", "accept *:99999"]"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("#1") && err.contains("99999"), "{err}");
    assert!(serde_json::from_str::<ExitPolicy>(r#""accept *:80""#).is_err());
    assert!(serde_json::from_str::<ExitPolicy>(r#"[1, 2]"#).is_err());
    let many: Vec<String> = vec!["accept *:80".into(); MAX_RULES + 1];
    let err = serde_json::from_str::<ExitPolicy>(&serde_json::to_string(&many).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules"), "{err}");
}

#[test]
fn port_range_api() {
    assert!(PortRange::new(5, 4).is_none());
    let r = PortRange::new(4, 5).unwrap();
    assert_eq!((r.lo(), r.hi()), (4, 5));
    assert!(r.contains(4) && r.contains(5) && !r.contains(6));
    assert_eq!(PortRange::single(7).to_string(), "7");
    assert_eq!(PortRange::ALL.to_string(), "*");
}

#[test]
fn ipv6_forms_that_reach_ipv4_are_checked_as_ipv4() {
    // Each of these reaches a private IPv4 address (or a private network)
    // through an IPv6 form: NAT64, local-use NAT64, IPv4-compatible, 6to4,
    // and the deprecated site-local range.
    for s in [
        "64:ff9b::a00:1",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a00:1",
        "::7f00:1",
        "::a00:1",
        "2002:a00:1::1",
        "2002:c0a8:101::1",
        "fec0::1",
    ] {
        assert!(is_private_or_special(ip(s)), "{s} must count as private");
    }
    // Their public counterparts are public, and the policy sees the IPv4
    // address behind them.
    for s in ["64:ff9b::808:808", "2002:808:808::1", "::808:808"] {
        assert!(!is_private_or_special(ip(s)), "{s} is public");
        assert_eq!(veilnet_policy::canonical_ip(ip(s)), ip("8.8.8.8"));
    }
    let p = policy(&["reject 8.8.8.0/24:*", "accept *:*"]);
    assert!(!p.allows(ip("64:ff9b::808:808"), 443));
    assert!(!p.allows(ip("2002:808:808::1"), 443));
    // The unspecified and loopback addresses stay IPv6 (and private).
    assert_eq!(veilnet_policy::canonical_ip(ip("::1")), ip("::1"));
    assert!(is_private_or_special(ip("::")));
}
