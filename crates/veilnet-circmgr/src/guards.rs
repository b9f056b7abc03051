//! The guard set on disk: `guards.json` in the node's data directory.

use std::path::Path;

use libp2p::PeerId;
use veilnet_dir::GuardSet;

const GUARDS_FILE: &str = "guards.json";

/// The guard set saved in `dir`, or a new one of `n` guards if there is
/// none (or it cannot be read).
pub(crate) fn load(dir: Option<&Path>, n: usize) -> GuardSet {
    dir.and_then(|d| std::fs::read(d.join(GUARDS_FILE)).ok())
        .and_then(|b| serde_json::from_slice::<Vec<PeerId>>(&b).ok())
        .map(|peers| GuardSet::from_peers(peers, n))
        .unwrap_or_else(|| GuardSet::new(n))
}

/// Saves the guards atomically with mode 0600: the guard set can identify
/// a client, so it is as private as the keys.
pub(crate) fn save(dir: &Path, guards: &[PeerId]) {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec(guards).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{GUARDS_FILE}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(GUARDS_FILE))
    };
    if let Err(e) = write() {
        tracing::warn!("cannot save guards: {e}");
    }
}
