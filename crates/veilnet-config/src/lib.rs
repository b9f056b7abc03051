#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod error;
mod fsutil;
mod keys;
mod peers;
mod state;

pub use config::{ClientConfig, Config, ControlConfig, DirectoryConfig, MeasureConfig, NodeConfig};
pub use error::ConfigError;
pub use keys::unix_now;
pub use keys::{
    init_data_dir, init_data_dir_at, load_keys, onion_key_signing_message, verify_onion_key,
    InitReport, NodeKeys, OnionKey, CONFIG_FILE, IDENTITY_KEY_FILE, ONION_KEY_FILE,
    ONION_KEY_LIFETIME, ONION_KEY_ROTATE_BEFORE, ONION_KEY_SIGNATURE_CONTEXT,
    PREVIOUS_ONION_KEY_FILE,
};
pub use peers::{
    load_fetch_relays, load_peers, save_fetch_relays, save_peers, FETCH_RELAYS_FILE, MAX_PEERS,
    PEERS_FILE,
};
pub use state::{load_state, load_state_bytes, save_state, save_state_bytes};
