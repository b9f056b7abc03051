//! Entry guards: the state machine that decides which relays are first hops
//! ([`state`]), the path-bias accounting it uses to stop trusting a guard
//! ([`path_bias`]), and `guards.json`, where both persist ([`mod@file`]).

pub mod file;
pub mod path_bias;
pub mod state;

pub use path_bias::{PathBias, PathBiasParams, Verdict};
pub use state::{GuardParams, GuardState, GuardView, Relay, SavedGuards};
