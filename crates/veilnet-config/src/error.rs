//! The error type of this crate.

use std::path::PathBuf;

/// What the caller (usually the operator) should do about a [`ConfigError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration file or a value in it is wrong: fix the file.
    BadConfig,
    /// A file or directory could not be read or written: check the path and
    /// the disk.
    Io,
    /// A key file is readable by group or others: `chmod 600` it.
    InsecurePermissions,
    /// A state file (key or peers file) is corrupt: restore or remove it.
    CorruptFile,
    /// `init` was run on a data directory that already holds an identity.
    AlreadyInitialized,
    /// A bug or an environment problem (no randomness, failed signing).
    Internal,
}

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

impl ConfigError {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Io { .. } => ErrorKind::Io,
            ConfigError::Toml { .. } | ConfigError::Invalid { .. } => ErrorKind::BadConfig,
            ConfigError::AlreadyInitialized { .. } => ErrorKind::AlreadyInitialized,
            ConfigError::InsecurePermissions { .. } => ErrorKind::InsecurePermissions,
            ConfigError::Corrupt { .. } => ErrorKind::CorruptFile,
            ConfigError::KeyGeneration(_) => ErrorKind::Internal,
        }
    }

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
