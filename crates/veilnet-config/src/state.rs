//! State files in the data directory that other crates define (their type,
//! version and limits): read with a size bound, replaced atomically, mode
//! 0600.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::fsutil::{self, PRIVATE_FILE_MODE};
use crate::ConfigError;

/// Reads the JSON state file `dir/name`, at most `max_bytes` long; `None`
/// if it does not exist. A file that is too long or not valid JSON for `T`
/// is an error naming it.
pub fn load_state<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
    max_bytes: u64,
) -> Result<Option<T>, ConfigError> {
    let path = dir.join(name);
    let Some(bytes) = fsutil::read_bounded(&path, max_bytes, false)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ConfigError::corrupt(&path, e.to_string()))
}

/// Atomically replaces `dir/name` (mode 0600) with `value` as JSON.
pub fn save_state<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), ConfigError> {
    let path = dir.join(name);
    let json = serde_json::to_vec(value)
        .map_err(|e| ConfigError::io("encoding", &path, std::io::Error::other(e)))?;
    fsutil::write_atomic(&path, &json, PRIVATE_FILE_MODE)
}

/// Reads the binary state file `dir/name`, at most `max_bytes` long; `None`
/// if it does not exist. A file that is too long is an error naming it.
pub fn load_state_bytes(
    dir: &Path,
    name: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, ConfigError> {
    fsutil::read_bounded(&dir.join(name), max_bytes, false)
}

/// Atomically replaces `dir/name` (mode 0600) with `bytes`.
pub fn save_state_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ConfigError> {
    fsutil::write_atomic(&dir.join(name), bytes, PRIVATE_FILE_MODE)
}
