//! Small filesystem helpers: private directories, files created with their
//! final permissions, atomic replacement and bounded reads.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ConfigError;

/// Permission bits for secret files.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Permission bits for the data directory.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with mode 0700. An existing directory
/// is left as it is, with a warning if others can write to it.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ConfigError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| ConfigError::io("creating directory", dir, e))?;
    let meta = std::fs::metadata(dir).map_err(|e| ConfigError::io("inspecting", dir, e))?;
    if !meta.is_dir() {
        return Err(ConfigError::io(
            "creating directory",
            dir,
            std::io::Error::new(IoKind::AlreadyExists, "exists and is not a directory"),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "data directory is writable by group or others; consider `chmod 700`"
        );
    }
    Ok(())
}

/// Creates `path` with `mode` and writes `bytes`, unless it already exists.
/// Returns whether the file was created.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, ConfigError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(ConfigError::io("creating", path, e)),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ConfigError::io("writing", path, e))?;
    Ok(true)
}

/// Replaces `path` atomically: writes a temporary file in the same directory,
/// created with `mode`, syncs it and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| ConfigError::io("creating", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| ConfigError::io("writing", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| ConfigError::io("replacing", path, e))
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable. Not fatal if the platform refuses.
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let nonce: u64 = rand::random();
    path.with_file_name(format!(".{name}.tmp-{}-{nonce:016x}", std::process::id()))
}

/// Reads a file of at most `max_len` bytes. `Ok(None)` if it does not exist.
///
/// With `private`, refuses files that group or others can access: the check
/// is made on the opened file, so it cannot be raced by a rename.
pub(crate) fn read_bounded(
    path: &Path,
    max_len: u64,
    private: bool,
) -> Result<Option<Vec<u8>>, ConfigError> {
    // Not opened unless a regular file: opening a FIFO would wait for a
    // writer (the opened file is checked again below).
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(ConfigError::corrupt(path, "not a regular file")),
        Ok(_) => {}
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError::io("inspecting", path, e)),
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError::io("opening", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| ConfigError::io("inspecting", path, e))?;
    if !meta.is_file() {
        return Err(ConfigError::corrupt(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(ConfigError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > max_len {
        return Err(ConfigError::corrupt(
            path,
            format!("{} bytes, more than the limit of {max_len}", meta.len()),
        ));
    }
    let mut buf = Vec::new();
    // `take` guards against a file that grows after the length check.
    file.take(max_len + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ConfigError::io("reading", path, e))?;
    if buf.len() as u64 > max_len {
        return Err(ConfigError::corrupt(
            path,
            "file grew beyond the size limit",
        ));
    }
    Ok(Some(buf))
}
