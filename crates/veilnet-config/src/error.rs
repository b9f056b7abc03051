//! The error type of this crate.

use std::path::PathBuf;

use veilnet_error::{ErrorKind, HasKind};

/// An error from loading the configuration or the key store.
///
/// Every variant names the file or the option it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Reading or writing a file or directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "reading".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid TOML or does not match the schema
    /// (unknown option, wrong type, unparsable address).
    #[error("{}: {message}", path.as_ref().map_or_else(|| "configuration".to_owned(), |p| p.display().to_string()))]
    Toml {
        /// The configuration file, if the text came from a file.
        path: Option<PathBuf>,
        /// The toml crate's message, including line and column.
        message: String,
    },
    /// An option has a value that parses but is not allowed.
    #[error("invalid value for `{field}`: {reason}")]
    Invalid {
        /// The option, as written in the file, e.g. `client.hops`.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// `init` found an existing identity key and refused to overwrite it.
    #[error("{} already exists; refusing to overwrite an existing identity key", path.display())]
    AlreadyInitialized {
        /// The existing identity key file.
        path: PathBuf,
    },
    /// A key file can be read by group or others.
    #[error(
        "{} has permissions {mode:03o}, readable by others; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key or peers file exists but cannot be decoded.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Key generation or signing failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

/// Every error here is the operator's to act on; none blames a peer.
///
/// * [`Toml`](ConfigError::Toml), [`Invalid`](ConfigError::Invalid),
///   [`InsecurePermissions`](ConfigError::InsecurePermissions) and
///   [`AlreadyInitialized`](ConfigError::AlreadyInitialized) are
///   [`ErrorKind::BadConfig`]: fix the file, the permissions or the command.
/// * [`Io`](ConfigError::Io) is [`ErrorKind::BadConfig`] when the path is
///   wrong (missing, not accessible to us, of the wrong type, on a read-only
///   file system) and [`ErrorKind::LocalResource`] otherwise (a full disk, a
///   failing device).
/// * [`Corrupt`](ConfigError::Corrupt) (a state file of ours that does not
///   decode) and [`KeyGeneration`](ConfigError::KeyGeneration) (no system
///   randomness) are [`ErrorKind::LocalResource`].
///
/// The kind does not tell `init` on an initialized directory from other bad
/// setups: match [`ConfigError::AlreadyInitialized`] for that.
impl HasKind for ConfigError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Io { source, .. } => io_kind(source),
            ConfigError::Toml { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::AlreadyInitialized { .. }
            | ConfigError::InsecurePermissions { .. } => ErrorKind::BadConfig,
            ConfigError::Corrupt { .. } | ConfigError::KeyGeneration(_) => ErrorKind::LocalResource,
        }
    }
}

/// The kind of a failed file operation: a path the operator got wrong, or a
/// machine that failed us.
fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match e.kind() {
        Io::NotFound
        | Io::PermissionDenied
        | Io::AlreadyExists
        | Io::NotADirectory
        | Io::IsADirectory
        | Io::ReadOnlyFilesystem => ErrorKind::BadConfig,
        _ => ErrorKind::LocalResource,
    }
}

impl ConfigError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ConfigError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ConfigError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn io_err(kind: io::ErrorKind) -> ConfigError {
        ConfigError::io("reading", "/var/lib/veilnet/identity.key", kind.into())
    }

    /// One sample of every variant (and of the two sides of `Io`), each with
    /// the kind it must have.
    fn samples() -> Vec<(ConfigError, ErrorKind)> {
        vec![
            (io_err(io::ErrorKind::NotFound), ErrorKind::BadConfig),
            (
                io_err(io::ErrorKind::PermissionDenied),
                ErrorKind::BadConfig,
            ),
            (io_err(io::ErrorKind::NotADirectory), ErrorKind::BadConfig),
            // data_dir names a file
            (io_err(io::ErrorKind::AlreadyExists), ErrorKind::BadConfig),
            (io_err(io::ErrorKind::StorageFull), ErrorKind::LocalResource),
            (io_err(io::ErrorKind::Other), ErrorKind::LocalResource),
            (
                ConfigError::Toml {
                    path: None,
                    message: "unknown field `hopz`".into(),
                },
                ErrorKind::BadConfig,
            ),
            (
                ConfigError::invalid("client.hops", "must be 1..=5"),
                ErrorKind::BadConfig,
            ),
            (
                ConfigError::AlreadyInitialized {
                    path: "/d/identity.key".into(),
                },
                ErrorKind::BadConfig,
            ),
            (
                ConfigError::InsecurePermissions {
                    path: "/d/identity.key".into(),
                    mode: 0o644,
                },
                ErrorKind::BadConfig,
            ),
            (
                ConfigError::corrupt("/d/peers.json", "not JSON"),
                ErrorKind::LocalResource,
            ),
            (
                ConfigError::KeyGeneration("no randomness".into()),
                ErrorKind::LocalResource,
            ),
        ]
    }

    /// Which variant `e` is. No `_` arm: a new variant does not compile
    /// until it gets a sample and a kind here.
    fn variant(e: &ConfigError) -> usize {
        match e {
            ConfigError::Io { .. } => 0,
            ConfigError::Toml { .. } => 1,
            ConfigError::Invalid { .. } => 2,
            ConfigError::AlreadyInitialized { .. } => 3,
            ConfigError::InsecurePermissions { .. } => 4,
            ConfigError::Corrupt { .. } => 5,
            ConfigError::KeyGeneration(_) => 6,
        }
    }

    #[test]
    fn kinds() {
        let samples = samples();
        for (e, want) in &samples {
            assert_eq!(e.kind(), *want, "{e}");
        }
        let mut seen: Vec<usize> = samples.iter().map(|(e, _)| variant(e)).collect();
        seen.dedup();
        assert_eq!(seen, (0..=6).collect::<Vec<_>>(), "a variant has no sample");
    }
}
