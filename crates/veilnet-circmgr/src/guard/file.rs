//! The guard state on disk: `guards.json` in the node's data directory,
//! replaced atomically (write, fsync, rename) with mode 0600, since the
//! guards can identify a client.
//!
//! Version 1 is [`SavedGuards`]; a file of the old format (a JSON array of
//! peer ids) is read as those guards, sampled and unconfirmed. A file that
//! cannot be read or understood is reported (which file, what is wrong) and
//! replaced by a fresh state: the node still starts.

use std::path::Path;

use libp2p::PeerId;
use veilnet_config::ConfigError;

use super::state::{GuardState, SavedGuards};

/// The file name in the data directory.
pub const GUARDS_FILE: &str = "guards.json";
/// Largest file read: 64 guards take about 20 KiB.
pub const MAX_GUARDS_FILE_BYTES: u64 = 1 << 20;

/// Reads the guard state saved in `dir`. `Ok(None)`: no file.
pub fn read(dir: &Path, now: u64) -> Result<Option<GuardState>, ConfigError> {
    let Some(value) =
        veilnet_config::load_state::<serde_json::Value>(dir, GUARDS_FILE, MAX_GUARDS_FILE_BYTES)?
    else {
        return Ok(None);
    };
    let corrupt = |reason: String| ConfigError::Corrupt {
        path: dir.join(GUARDS_FILE),
        reason,
    };
    match value {
        serde_json::Value::Array(_) => {
            let peers: Vec<PeerId> = serde_json::from_value(value)
                .map_err(|e| corrupt(format!("old-format guard list: {e}")))?;
            Ok(Some(GuardState::from_peers(&peers, now)))
        }
        serde_json::Value::Object(ref o) => {
            match o.get("version").and_then(serde_json::Value::as_u64) {
                Some(v) if v == u64::from(SavedGuards::VERSION) => {}
                Some(v) => {
                    return Err(corrupt(format!(
                        "format version {v}; this node reads version {}",
                        SavedGuards::VERSION
                    )))
                }
                None => return Err(corrupt("no format version".into())),
            }
            let saved: SavedGuards =
                serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
            Ok(Some(GuardState::from_saved(saved)))
        }
        _ => Err(corrupt("neither a guard state nor a list of guards".into())),
    }
}

/// The guard state saved in `dir`; a fresh one if there is none, or, with a
/// warning naming the file and the problem, if it cannot be used.
pub fn load(dir: &Path, now: u64) -> GuardState {
    match read(dir, now) {
        Ok(Some(s)) => s,
        Ok(None) => GuardState::new(),
        Err(e) => {
            tracing::warn!("{e}; starting with a new guard set");
            GuardState::new()
        }
    }
}

/// Saves `state` in `dir`.
pub fn save(dir: &Path, state: &SavedGuards) -> Result<(), ConfigError> {
    veilnet_config::save_state(dir, GUARDS_FILE, state)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::guard::state::Relay;
    use crate::guard::GuardParams;

    const T0: u64 = 1_800_000_000;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!(
                "veilnet-guards-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn saved_state_round_trips_privately() {
        let dir = TempDir::new();
        let p = GuardParams::default();
        let relays: Vec<Relay> = (0..6)
            .map(|_| Relay {
                peer: PeerId::random(),
                weight: 1,
            })
            .collect();
        let mut s = GuardState::new();
        s.update(&relays, &p, T0, &mut StdRng::seed_from_u64(1));
        let first = s.primaries(&p)[0];
        s.note_link(&first, false, T0 + 1);
        s.note_circuit(&s.primaries(&p)[1].clone(), true, &p, T0 + 2);
        save(&dir.0, &s.to_saved()).unwrap();
        let path = dir.0.join(GUARDS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read(&dir.0, T0 + 3).unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.primaries(&p), s.primaries(&p));
        assert_eq!(back.first_hops(&p, T0 + 3), s.first_hops(&p, T0 + 3));
        // no file: a fresh state, no error
        let empty = TempDir::new();
        assert!(read(&empty.0, T0).unwrap().is_none());
        assert_eq!(load(&empty.0, T0), GuardState::new());
    }

    #[test]
    fn the_old_format_keeps_its_guards_in_order() {
        let dir = TempDir::new();
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        std::fs::write(dir.0.join(GUARDS_FILE), serde_json::to_vec(&peers).unwrap()).unwrap();
        let s = read(&dir.0, T0).unwrap().unwrap();
        let sampled: Vec<PeerId> = s.sampled().iter().map(|g| g.peer).collect();
        assert_eq!(sampled, peers);
        let relays: Vec<Relay> = peers
            .iter()
            .map(|&peer| Relay { peer, weight: 1 })
            .collect();
        let mut s = s;
        let p = GuardParams::default();
        s.update(&relays, &p, T0, &mut StdRng::seed_from_u64(2));
        assert_eq!(s.primaries(&p), peers[..3]);
    }

    #[test]
    fn bad_files_are_reported_by_name_and_reason_and_start_fresh() {
        let good = {
            let mut s = GuardState::new();
            let relays = [Relay {
                peer: PeerId::random(),
                weight: 1,
            }];
            s.update(
                &relays,
                &GuardParams::default(),
                T0,
                &mut StdRng::seed_from_u64(3),
            );
            serde_json::to_string(&s.to_saved()).unwrap()
        };
        let cases: Vec<(String, &str)> = vec![
            (good[..good.len() / 2].to_owned(), "EOF"),
            ("garbage\u{0}".to_owned(), "expected"),
            (String::new(), "EOF"),
            ("42".to_owned(), "neither"),
            (r#"{"sampled": []}"#.to_owned(), "no format version"),
            (r#"{"version": 7, "sampled": []}"#.to_owned(), "version 7"),
            (good.replace("\"added_on\"", "\"added\""), "added"),
            (r#"["not a peer id"]"#.to_owned(), "old-format"),
            (
                good.replace("\"attempts\":0", "\"attempts\":-1"),
                "invalid value",
            ),
        ];
        for (text, why) in cases {
            let dir = TempDir::new();
            std::fs::write(dir.0.join(GUARDS_FILE), &text).unwrap();
            let err = read(&dir.0, T0).unwrap_err().to_string();
            assert!(err.contains(GUARDS_FILE), "{err}");
            assert!(err.contains(why), "{text:?}: {err}");
            assert_eq!(load(&dir.0, T0), GuardState::new());
        }
        // too large
        let dir = TempDir::new();
        std::fs::write(
            dir.0.join(GUARDS_FILE),
            vec![b' '; MAX_GUARDS_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let err = read(&dir.0, T0).unwrap_err().to_string();
        assert!(err.contains(GUARDS_FILE) && err.contains("limit"), "{err}");
    }
}
