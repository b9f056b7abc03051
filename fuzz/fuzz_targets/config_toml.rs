//! Fuzz the node configuration parser.
//!
//! The input (when it is UTF-8) is parsed with
//! `Config::from_toml_str(input, "/tmp")`. Checks: no panic; errors display;
//! an accepted configuration passes `validate`, has an absolute `data_dir`
//! (a relative one is resolved against the base), and `warnings`,
//! the enforced exit policy (and its lookups) never panic; serialising it back
//! to TOML and parsing that gives the same configuration (round trip).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use veilnet_config::Config;
use veilnet_error::HasKind;

const BASE: &str = "/tmp";

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_str(text, Path::new(BASE)) {
        Ok(c) => c,
        Err(e) => {
            let _ = (e.kind(), e.to_string());
            return;
        }
    };

    assert!(config.validate().is_ok(), "accepted config fails validate");
    assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
    let _ = config.warnings();
    let policy = config.exit.enforced_policy();
    for port in [0, 22, 80, 443, 65535] {
        let _ = policy.may_allow_port(port);
        let _ = policy.allows(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)), port);
        let _ = policy.allows(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let _ = policy.allows(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    }
    let _ = policy.to_strings();

    // Round trip through the TOML serialiser.
    let again = match toml::to_string(&config) {
        Ok(s) => s,
        Err(e) => panic!("accepted config does not serialise: {e}"),
    };
    match Config::from_toml_str(&again, Path::new(BASE)) {
        Ok(back) => assert_eq!(back, config, "config did not round-trip:\n{again}"),
        Err(e) => panic!("re-serialised config is refused: {e}\n{again}"),
    }
}

fuzz_target!(|data: &[u8]| check(data));
