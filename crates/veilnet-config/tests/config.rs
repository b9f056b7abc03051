//! Tests of the configuration file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use veilnet_config::{Config, ConfigError};
use veilnet_error::{ErrorKind, HasKind};

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(s, Path::new("/etc/veilnet"))
}

fn invalid_field(s: &str) -> &'static str {
    match parse(s) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn default_toml_parses_to_default() {
    let c = Config::from_toml_str(Config::default_toml(), Path::new(".")).unwrap();
    assert_eq!(c, Config::default());
    // With a real base directory, only data_dir changes.
    let c = parse(Config::default_toml()).unwrap();
    assert_eq!(
        c,
        Config {
            data_dir: PathBuf::from("/etc/veilnet"),
            ..Config::default()
        }
    );
    assert!(Config::default().warnings().is_empty());
}

#[test]
fn default_toml_documents_every_option() {
    // Every option that serializes must appear, uncommented, in the default file.
    let serialized = toml::to_string(&Config::default()).unwrap();
    let value: toml::Table = serialized.parse().unwrap();
    let text = Config::default_toml();
    for (key, v) in &value {
        match v {
            toml::Value::Table(t) => {
                assert!(text.contains(&format!("[{key}]")), "missing [{key}]");
                for k in t.keys() {
                    assert!(
                        text.lines().any(|l| l.starts_with(&format!("{k} = "))),
                        "missing {key}.{k}"
                    );
                }
            }
            _ => assert!(text.contains(&format!("{key} = ")), "missing {key}"),
        }
    }
}

#[test]
fn empty_file_is_default() {
    let c = Config::from_toml_str("", Path::new(".")).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn serialize_round_trip() {
    let mut c = Config::default();
    c.client.socks = None;
    c.node.family = vec![libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()];
    c.exit.policy =
        veilnet_policy::ExitPolicy::parse_rules(&["accept *:443", "reject *:*"]).unwrap();
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("socks = \"\""), "{text}");
    assert_eq!(Config::from_toml_str(&text, Path::new(".")).unwrap(), c);
}

#[test]
fn relative_data_dir_is_resolved_against_config_dir() {
    let c = parse("data_dir = \"state\"").unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/etc/veilnet/state"));
    let c = parse("data_dir = \"/var/lib/veilnet\"").unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/veilnet"));
}

#[test]
fn unknown_field_is_named() {
    let err = parse("[client]\nhopz = 3\n").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadConfig);
    let msg = err.to_string();
    assert!(msg.contains("hopz"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");

    let err = parse("colour = \"blue\"\n").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn bad_hops() {
    assert_eq!(invalid_field("[client]\nhops = 0"), "client.hops");
    assert_eq!(invalid_field("[client]\nhops = 6"), "client.hops");
    let err = parse("[client]\nhops = 6").unwrap_err().to_string();
    assert!(
        err.contains("client.hops") && err.contains("between 1 and 5"),
        "{err}"
    );
    // Out of the type's range: a TOML error with the position.
    let err = parse("[client]\nhops = -1").unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    for h in 1..=5 {
        parse(&format!("[client]\nhops = {h}")).unwrap();
    }
}

#[test]
fn bad_region() {
    for r in ["zz", "Z", "ZZZ", "Z1", "", "ÄÖ"] {
        assert_eq!(
            invalid_field(&format!("[node]\nregion = \"{r}\"")),
            "node.region",
            "{r}"
        );
    }
    assert_eq!(parse("[node]\nregion = \"DE\"").unwrap().node.region, "DE");
}

#[test]
fn bad_addresses() {
    let err = parse("[client]\nsocks = \"localhost:9050\"").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("localhost:9050") && msg.contains("line 2"),
        "{msg}"
    );

    let err = parse("[node]\nlink_listen = \"0.0.0.0\"").unwrap_err();
    assert!(err.to_string().contains("link_listen"), "{err}");

    let err = parse("[node]\np2p_listen = [\"not a multiaddr\"]").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");

    assert_eq!(
        invalid_field("[node]\nbootstrap = [\"/ip4/1.2.3.4/tcp/9200\"]"),
        "node.bootstrap"
    );
    assert_eq!(
        invalid_field("[node]\nadvertise = [\"0.0.0.0:9201\"]"),
        "node.advertise"
    );
    let err = parse("[node]\nfamily = [\"nope\"]").unwrap_err();
    assert!(err.to_string().contains("family"), "{err}");
}

#[test]
fn empty_string_disables_listener() {
    let c = parse("[client]\nsocks = \"\"\nhttp_proxy = \"\"").unwrap();
    assert_eq!(c.client.socks, None);
    assert_eq!(c.client.http_proxy, None);
    assert_eq!(c.control.listen, None);
    let c = parse("[control]\nlisten = \"127.0.0.1:9052\"").unwrap();
    assert_eq!(c.control.listen, Some("127.0.0.1:9052".parse().unwrap()));
    let c = parse("[client]\nsocks = \"[::1]:9050\"").unwrap();
    assert_eq!(c.client.socks, Some("[::1]:9050".parse().unwrap()));
}

#[test]
fn remote_listeners_need_danger_flag() {
    assert_eq!(
        invalid_field("[client]\nsocks = \"0.0.0.0:9050\""),
        "client.socks"
    );
    assert_eq!(
        invalid_field("[client]\nhttp_proxy = \"192.168.1.2:8118\""),
        "client.http_proxy"
    );
    assert_eq!(
        invalid_field("[control]\nlisten = \"0.0.0.0:9052\""),
        "control.listen"
    );
    let c = parse("[client]\nsocks = \"0.0.0.0:9050\"\ndanger_allow_remote = true").unwrap();
    assert_eq!(c.warnings().len(), 1);
    // The client flag does not open the control API.
    assert_eq!(
        invalid_field("[client]\ndanger_allow_remote = true\n[control]\nlisten = \"0.0.0.0:9052\""),
        "control.listen"
    );
    parse("[control]\nlisten = \"0.0.0.0:9052\"\ndanger_allow_remote = true").unwrap();
}

#[test]
fn duplicate_listeners_rejected() {
    assert_eq!(
        invalid_field("[client]\nhttp_proxy = \"127.0.0.1:9050\""),
        "client.http_proxy"
    );
}

#[test]
fn exit_section() {
    let c = parse("[exit]\nenabled = true\npolicy = [\"accept *:443\"]").unwrap();
    assert!(c.exit.enabled);
    assert_eq!(c.exit.policy.to_strings(), ["accept *:443"]);
    // No rules: the default exit policy (and it is written back as none).
    assert_eq!(
        Config::default().exit.policy,
        veilnet_policy::ExitPolicy::default_exit()
    );
    assert!(toml::to_string(&Config::default())
        .unwrap()
        .contains("policy = []"));
    // The name from the original spec is accepted as an alias.
    let c = parse("[exit]\nallow_private_targets = true").unwrap();
    assert!(c.exit.danger_allow_private_targets);
    assert_eq!(c.warnings().len(), 1);
    // One-hop exits: off by default, a warned danger, and the short name works.
    assert!(!Config::default().exit.danger_allow_one_hop_exits);
    let c = parse("[exit]\nallow_one_hop_exits = true").unwrap();
    assert!(c.exit.danger_allow_one_hop_exits);
    assert_eq!(c.warnings().len(), 1);
    // Bad rules fail the parse, naming the rule.
    for (text, rule) in [
        ("[exit]\npolicy = [\" \"]", "#0"),
        (
            "[exit]\npolicy = [\"accept *:443\", \"allow everything\"]",
            "allow everything",
        ),
    ] {
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Toml { .. }), "{msg}");
        assert!(msg.contains("policy") && msg.contains(rule), "{msg}");
    }
}

#[test]
fn exit_policy_conversion() {
    use std::net::IpAddr;
    use veilnet_policy::ExitPolicy;
    let lan: IpAddr = "192.168.1.1".parse().unwrap();
    let public: IpAddr = "93.184.216.34".parse().unwrap();

    // Not an exit: rejects everything.
    assert_eq!(
        Config::default().exit.enforced_policy(),
        ExitPolicy::reject_all()
    );

    let c = parse("[exit]\nenabled = true").unwrap();
    let p = c.exit.enforced_policy();
    assert_eq!(p, ExitPolicy::default_exit());
    assert!(p.allows(public, 443) && !p.allows(lan, 80));

    let c = parse("[exit]\nenabled = true\ndanger_allow_private_targets = true").unwrap();
    assert!(c.exit.enforced_policy().allows(lan, 80));

    let c = parse("[exit]\nenabled = true\npolicy = [\"accept *:443\"]").unwrap();
    let p = c.exit.enforced_policy();
    assert!(p.allows(public, 443) && !p.allows(public, 80));
}

#[test]
fn other_ranges() {
    assert_eq!(
        invalid_field("[client]\nnum_guards = 0"),
        "client.num_guards"
    );
    assert_eq!(
        invalid_field("[client]\nnum_guards = 17"),
        "client.num_guards"
    );
    assert_eq!(
        invalid_field("[client]\nguard_replace_after_secs = 0"),
        "client.guard_replace_after_secs"
    );
    for n in [0, 151] {
        assert_eq!(
            invalid_field(&format!("[client]\npath_bias_min_circuits = {n}")),
            "client.path_bias_min_circuits"
        );
    }
    let c = parse("[client]\nnum_guards = 16\npath_bias_min_circuits = 150").unwrap();
    assert_eq!(c.client.path_bias_min_circuits, 150);
    assert_eq!(invalid_field("[node]\nbandwidth = 0"), "node.bandwidth");
    assert_eq!(
        invalid_field("[client]\nmax_circuit_dirtiness_secs = 0"),
        "client.max_circuit_dirtiness_secs"
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("veilnet-config-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, "data_dir = \"d\"\n[node]\nbogus = 1\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("bogus"),
        "{err}"
    );

    std::fs::write(&path, "data_dir = \"d\"\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.data_dir, dir.join("d"));

    // A missing file is the operator's to fix, not a failing disk.
    let err = Config::load(&dir.join("missing.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::BadConfig);
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_measurement_window_too_short_to_decide_who_measures_is_refused() {
    assert_eq!(
        invalid_field("[measure]\nwindow_periods = 2\n"),
        "measure.window_periods"
    );
    assert_eq!(
        invalid_field("[measure]\nwindow_periods = 9\n"),
        "measure.window_periods"
    );
    assert!(parse("[measure]\nwindow_periods = 4\n").is_ok());
}

#[test]
fn a_cut_margin_as_long_as_its_slot_or_a_zero_slot_is_refused() {
    assert_eq!(
        invalid_field("[directory]\ncut_every_secs = 60\ncut_margin_secs = 60\n"),
        "directory.cut_margin_secs"
    );
    assert_eq!(
        invalid_field("[directory]\ncut_every_secs = 0\ncut_margin_secs = 0\n"),
        "directory.cut_every_secs"
    );
    assert_eq!(
        invalid_field("[directory]\nexchange_interval_ms = 10\n"),
        "directory.exchange_interval_ms"
    );
    assert_eq!(
        invalid_field("[directory]\nannounce_batch_ms = 0\n"),
        "directory.announce_batch_ms"
    );
    let c = parse("[directory]\ncut_every_secs = 60\ncut_margin_secs = 20\n").unwrap();
    assert_eq!(c.directory.cut_margin_secs, 20);
    assert_eq!(c.directory.exchange_interval_ms, 600_000, "default kept");
}
