//! The on-disk key store: the long-term identity key and the rotating onion
//! key.

use std::fmt;
use std::path::{Path, PathBuf};

use libp2p::identity::{KeyType, Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use veilnet_crypto::circuit::OnionKeypair;

use crate::fsutil::{self, PRIVATE_FILE_MODE};
use crate::{Config, ConfigError};

/// File name of the identity key (libp2p protobuf encoding, ed25519).
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// File name of the current onion key (JSON).
pub const ONION_KEY_FILE: &str = "onion.key";
/// File name of the previous onion key, kept until it expires so that
/// clients holding an older descriptor can still finish handshakes.
pub const PREVIOUS_ONION_KEY_FILE: &str = "onion.key.previous";
/// File name of the configuration file `init_data_dir` writes.
pub const CONFIG_FILE: &str = "config.toml";

/// How long a freshly generated onion key is valid, in seconds (28 days).
pub const ONION_KEY_LIFETIME: u64 = 28 * 24 * 60 * 60;
/// An onion key that expires within this many seconds (1 day) is replaced
/// when the keys are loaded.
pub const ONION_KEY_ROTATE_BEFORE: u64 = 24 * 60 * 60;

/// Domain separator of the identity signature over an onion key.
pub const ONION_KEY_SIGNATURE_CONTEXT: &[u8] = b"veilnet-onion-key-v1\0";

/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A medium-term X25519 key for circuit handshakes, as the key store keeps
/// it: the key pair the engine uses, its expiry and the identity's signature.
#[derive(Clone, PartialEq, Eq)]
pub struct OnionKey {
    /// The X25519 key pair.
    pub keypair: OnionKeypair,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// Identity signature over [`onion_key_signing_message`]`(public, expires)`.
    pub signature: Vec<u8>,
}

impl fmt::Debug for OnionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnionKey")
            .field("secret", &"<redacted>")
            .field("public", &hex::encode(self.keypair.public))
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl OnionKey {
    /// Generates a fresh X25519 key pair valid until `expires` and signs it
    /// with `identity`.
    pub fn generate(identity: &Keypair, expires: u64) -> Result<OnionKey, ConfigError> {
        let gen_err = |e: &dyn fmt::Display| ConfigError::KeyGeneration(e.to_string());
        let keypair = OnionKeypair::generate().map_err(|e| gen_err(&e))?;
        let signature = identity
            .sign(&onion_key_signing_message(&keypair.public, expires))
            .map_err(|e| gen_err(&e))?;
        Ok(OnionKey {
            keypair,
            expires,
            signature,
        })
    }

    /// Whether the signature is a valid signature by `identity`.
    pub fn verify(&self, identity: &PublicKey) -> bool {
        verify_onion_key(
            identity,
            &self.keypair.public,
            self.expires,
            &self.signature,
        )
    }

    /// Whether the key has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires <= now
    }
}

/// The bytes the identity key signs for an onion key:
/// `b"veilnet-onion-key-v1\0" || public || expires (big-endian u64)`.
pub fn onion_key_signing_message(public: &[u8; 32], expires: u64) -> Vec<u8> {
    let mut msg = Vec::with_capacity(ONION_KEY_SIGNATURE_CONTEXT.len() + 32 + 8);
    msg.extend_from_slice(ONION_KEY_SIGNATURE_CONTEXT);
    msg.extend_from_slice(public);
    msg.extend_from_slice(&expires.to_be_bytes());
    msg
}

/// Whether `signature` is `identity`'s signature over the onion key
/// `public` with expiry `expires`. Does not check the expiry against a clock.
pub fn verify_onion_key(
    identity: &PublicKey,
    public: &[u8; 32],
    expires: u64,
    signature: &[u8],
) -> bool {
    identity.verify(&onion_key_signing_message(public, expires), signature)
}

/// All keys of a node, as loaded by [`load_keys`].
pub struct NodeKeys {
    /// Long-term ed25519 identity; its public key is the node's `PeerId`.
    pub identity: Keypair,
    /// Current onion key, valid for at least [`ONION_KEY_ROTATE_BEFORE`]
    /// seconds after loading.
    pub onion: OnionKey,
    /// The onion key replaced by the last rotation, while it is unexpired.
    /// Handshakes addressed to it should still be answered.
    pub previous_onion: Option<OnionKey>,
}

impl fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeys")
            .field("peer_id", &self.peer_id())
            .field("onion", &self.onion)
            .field("previous_onion", &self.previous_onion)
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// The node's peer id, derived from the identity key.
    pub fn peer_id(&self) -> PeerId {
        self.identity.public().to_peer_id()
    }
}

/// What [`init_data_dir`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Peer id of the new identity.
    pub peer_id: PeerId,
    /// Expiry of the new onion key, unix seconds.
    pub onion_expires: u64,
    /// Path of `config.toml` if it was written; `None` if one already existed.
    pub config_written: Option<PathBuf>,
}

/// Initializes a data directory using the system clock; see
/// [`init_data_dir_at`].
pub fn init_data_dir(dir: &Path) -> Result<InitReport, ConfigError> {
    init_data_dir_at(dir, unix_now())
}

/// Initializes a data directory: creates `dir` (mode 0700), a new identity
/// key and onion key (mode 0600), and `config.toml` with
/// [`Config::default_toml`] unless one exists.
///
/// Fails with [`ConfigError::AlreadyInitialized`] if `identity.key` exists;
/// existing keys are never overwritten.
pub fn init_data_dir_at(dir: &Path, now: u64) -> Result<InitReport, ConfigError> {
    fsutil::create_private_dir(dir)?;
    let id_path = dir.join(IDENTITY_KEY_FILE);
    if std::fs::symlink_metadata(&id_path).is_ok() {
        return Err(ConfigError::AlreadyInitialized { path: id_path });
    }
    let identity = Keypair::generate_ed25519();
    let onion = OnionKey::generate(&identity, now.saturating_add(ONION_KEY_LIFETIME))?;
    let encoded = identity
        .to_protobuf_encoding()
        .map_err(|e| ConfigError::KeyGeneration(e.to_string()))?;
    // `create_new` also closes the race with a concurrent init.
    if !fsutil::write_new(&id_path, &encoded, PRIVATE_FILE_MODE)? {
        return Err(ConfigError::AlreadyInitialized { path: id_path });
    }
    // Any onion keys left here were signed by another identity.
    save_onion_key(&dir.join(ONION_KEY_FILE), &onion)?;
    remove_if_present(&dir.join(PREVIOUS_ONION_KEY_FILE))?;

    let config_path = dir.join(CONFIG_FILE);
    let config_written = fsutil::write_new(
        &config_path,
        Config::default_toml().as_bytes(),
        PRIVATE_FILE_MODE,
    )?
    .then_some(config_path);
    Ok(InitReport {
        data_dir: dir.to_owned(),
        peer_id: identity.public().to_peer_id(),
        onion_expires: onion.expires,
        config_written,
    })
}

/// Loads the node's keys from `dir` at time `now` (unix seconds).
///
/// If the onion key is missing, not signed by the identity, or expires within
/// [`ONION_KEY_ROTATE_BEFORE`], a new one valid for [`ONION_KEY_LIFETIME`] is
/// generated and saved; the replaced key, if unexpired, is kept as
/// [`NodeKeys::previous_onion`]. Key files that group or others can access
/// are refused with [`ConfigError::InsecurePermissions`].
pub fn load_keys(dir: &Path, now: u64) -> Result<NodeKeys, ConfigError> {
    let id_path = dir.join(IDENTITY_KEY_FILE);
    let bytes = fsutil::read_bounded(&id_path, MAX_KEY_FILE_BYTES, true)?.ok_or_else(|| {
        ConfigError::io(
            "reading",
            &id_path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no identity key; initialize the data directory first",
            ),
        )
    })?;
    let identity = Keypair::from_protobuf_encoding(&bytes)
        .map_err(|e| ConfigError::corrupt(&id_path, e.to_string()))?;
    if identity.key_type() != KeyType::Ed25519 {
        return Err(ConfigError::corrupt(
            &id_path,
            format!("{:?} key, expected ed25519", identity.key_type()),
        ));
    }
    let public = identity.public();

    let onion_path = dir.join(ONION_KEY_FILE);
    let prev_path = dir.join(PREVIOUS_ONION_KEY_FILE);
    let current = read_onion_key(&onion_path)?.filter(|k| {
        let ok = k.verify(&public);
        if !ok {
            tracing::warn!(file = %onion_path.display(), "onion key not signed by this identity; replacing it");
        }
        ok
    });

    let mut previous = match read_onion_key(&prev_path) {
        Ok(k) => k,
        Err(e @ (ConfigError::InsecurePermissions { .. } | ConfigError::Io { .. })) => {
            return Err(e)
        }
        Err(e) => {
            tracing::warn!("ignoring previous onion key: {e}");
            None
        }
    };

    let onion = match current {
        Some(k) if k.expires > now.saturating_add(ONION_KEY_ROTATE_BEFORE) => k,
        old => {
            let new = OnionKey::generate(&identity, now.saturating_add(ONION_KEY_LIFETIME))?;
            if let Some(old) = old.filter(|k| !k.is_expired(now)) {
                save_onion_key(&prev_path, &old)?;
                previous = Some(old);
            }
            save_onion_key(&onion_path, &new)?;
            tracing::info!(expires = new.expires, "generated a new onion key");
            new
        }
    };

    let previous_onion = previous.filter(|k| {
        !k.is_expired(now) && k.keypair.public != onion.keypair.public && k.verify(&public)
    });
    if previous_onion.is_none() {
        remove_if_present(&prev_path)?;
    }
    Ok(NodeKeys {
        identity,
        onion,
        previous_onion,
    })
}

/// On-disk form of an onion key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnionKeyFile {
    version: u32,
    secret: String,
    public: String,
    expires: u64,
    signature: String,
}

fn save_onion_key(path: &Path, key: &OnionKey) -> Result<(), ConfigError> {
    let file = OnionKeyFile {
        version: 1,
        secret: hex::encode(key.keypair.secret),
        public: hex::encode(key.keypair.public),
        expires: key.expires,
        signature: hex::encode(&key.signature),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| ConfigError::KeyGeneration(format!("encoding onion key: {e}")))?;
    fsutil::write_atomic(path, &json, PRIVATE_FILE_MODE)
}

fn read_onion_key(path: &Path) -> Result<Option<OnionKey>, ConfigError> {
    let Some(bytes) = fsutil::read_bounded(path, MAX_KEY_FILE_BYTES, true)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| ConfigError::corrupt(path, reason);
    let file: OnionKeyFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != 1 {
        return Err(corrupt(format!("unsupported version {}", file.version)));
    }
    let key32 = |field: &str, s: &str| -> Result<[u8; 32], ConfigError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| corrupt(format!("`{field}` is not 32 bytes of hex: {e}")))?;
        Ok(out)
    };
    let secret = key32("secret", &file.secret)?;
    let public = key32("public", &file.public)?;
    let keypair = OnionKeypair::from_secret(secret).map_err(|e| corrupt(e.to_string()))?;
    if keypair.public != public {
        return Err(corrupt("`public` does not match `secret`".to_owned()));
    }
    Ok(Some(OnionKey {
        keypair,
        expires: file.expires,
        signature: hex::decode(&file.signature)
            .map_err(|e| corrupt(format!("`signature` is not hex: {e}")))?,
    }))
}

fn remove_if_present(path: &Path) -> Result<(), ConfigError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConfigError::io("removing", path, e)),
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is
/// before 1970): the clock of the key store, and of every caller that
/// passes a `now` to it or to the directory.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
