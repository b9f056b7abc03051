//! Tests of the data directory: keys and known peers.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use libp2p::{Multiaddr, PeerId};
use veilnet_config::*;
use veilnet_error::{ErrorKind, HasKind};

const NOW: u64 = 1_700_000_000;
const DAY: u64 = 24 * 60 * 60;

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "veilnet-config-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn init_creates_private_files_and_refuses_reinit() {
    let tmp = TempDir::new("init");
    let dir = tmp.path().join("data");
    let report = init_data_dir_at(&dir, NOW).unwrap();
    assert_eq!(report.onion_expires, NOW + ONION_KEY_LIFETIME);
    assert_eq!(report.config_written, Some(dir.join(CONFIG_FILE)));
    assert_eq!(mode(&dir), 0o700);
    for f in [IDENTITY_KEY_FILE, ONION_KEY_FILE, CONFIG_FILE] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // The written config loads, and its data_dir is the directory itself.
    let config = Config::load(&dir.join(CONFIG_FILE)).unwrap();
    assert_eq!(config.data_dir, dir);

    let identity_before = std::fs::read(dir.join(IDENTITY_KEY_FILE)).unwrap();
    let err = init_data_dir_at(&dir, NOW).unwrap_err();
    assert!(
        matches!(err, ConfigError::AlreadyInitialized { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::BadConfig);
    assert_eq!(
        std::fs::read(dir.join(IDENTITY_KEY_FILE)).unwrap(),
        identity_before
    );
}

#[test]
fn init_keeps_existing_config() {
    let tmp = TempDir::new("init-config");
    std::fs::create_dir_all(tmp.path()).unwrap();
    std::fs::write(tmp.path().join(CONFIG_FILE), "# mine\n").unwrap();
    let report = init_data_dir_at(tmp.path(), NOW).unwrap();
    assert_eq!(report.config_written, None);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(CONFIG_FILE)).unwrap(),
        "# mine\n"
    );
}

#[test]
fn keys_round_trip() {
    let tmp = TempDir::new("roundtrip");
    let report = init_data_dir_at(tmp.path(), NOW).unwrap();
    let a = load_keys(tmp.path(), NOW).unwrap();
    let b = load_keys(tmp.path(), NOW + 3600).unwrap();
    assert_eq!(a.peer_id(), report.peer_id);
    assert_eq!(b.peer_id(), report.peer_id);
    assert_eq!(a.onion, b.onion, "a fresh onion key is not rotated");
    assert_eq!(a.onion.expires, report.onion_expires);
    assert!(a.onion.verify(&a.identity.public()));
    assert!(a.previous_onion.is_none());
    // The secret is not in the Debug output.
    let dbg = format!("{a:?}");
    assert!(!dbg.contains(&hex::encode(a.onion.keypair.secret)), "{dbg}");
}

#[test]
fn onion_key_rotates_near_expiry() {
    let tmp = TempDir::new("rotate");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    let first = load_keys(tmp.path(), NOW).unwrap();

    // Two days before expiry: kept.
    let t = first.onion.expires - 2 * DAY;
    assert_eq!(load_keys(tmp.path(), t).unwrap().onion, first.onion);

    // Less than a day before expiry: rotated, old one kept as previous.
    let t = first.onion.expires - DAY / 2;
    let second = load_keys(tmp.path(), t).unwrap();
    assert_ne!(second.onion.keypair.public, first.onion.keypair.public);
    assert_eq!(second.onion.expires, t + ONION_KEY_LIFETIME);
    assert!(verify_onion_key(
        &second.identity.public(),
        &second.onion.keypair.public,
        second.onion.expires,
        &second.onion.signature
    ));
    assert_eq!(second.previous_onion.as_ref(), Some(&first.onion));
    assert_eq!(mode(&tmp.path().join(ONION_KEY_FILE)), 0o600);
    assert_eq!(mode(&tmp.path().join(PREVIOUS_ONION_KEY_FILE)), 0o600);

    // The rotated key was saved.
    let again = load_keys(tmp.path(), t + 60).unwrap();
    assert_eq!(again.onion, second.onion);
    assert_eq!(again.previous_onion.as_ref(), Some(&first.onion));

    // Once the old key has expired, it is dropped.
    let later = load_keys(tmp.path(), first.onion.expires).unwrap();
    assert_eq!(later.onion, second.onion);
    assert!(later.previous_onion.is_none());
    assert!(!tmp.path().join(PREVIOUS_ONION_KEY_FILE).exists());
}

#[test]
fn missing_onion_key_is_generated() {
    let tmp = TempDir::new("missing-onion");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    std::fs::remove_file(tmp.path().join(ONION_KEY_FILE)).unwrap();
    let keys = load_keys(tmp.path(), NOW).unwrap();
    assert!(keys.onion.verify(&keys.identity.public()));
    assert_eq!(mode(&tmp.path().join(ONION_KEY_FILE)), 0o600);
}

#[test]
fn signature_covers_public_key_and_expiry() {
    let tmp = TempDir::new("sig");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    let k = load_keys(tmp.path(), NOW).unwrap();
    let id = k.identity.public();
    let o = &k.onion;
    assert!(verify_onion_key(
        &id,
        &o.keypair.public,
        o.expires,
        &o.signature
    ));
    assert!(!verify_onion_key(
        &id,
        &o.keypair.public,
        o.expires + 1,
        &o.signature
    ));
    let mut other = o.keypair.public;
    other[0] ^= 1;
    assert!(!verify_onion_key(&id, &other, o.expires, &o.signature));
    let stranger = libp2p::identity::Keypair::generate_ed25519().public();
    assert!(!verify_onion_key(
        &stranger,
        &o.keypair.public,
        o.expires,
        &o.signature
    ));
    assert!(!verify_onion_key(
        &id,
        &o.keypair.public,
        o.expires,
        b"short"
    ));

    let msg = onion_key_signing_message(&o.keypair.public, o.expires);
    assert!(msg.starts_with(b"veilnet-onion-key-v1\0"));
    assert_eq!(&msg[21..53], &o.keypair.public);
    assert_eq!(&msg[53..], &o.expires.to_be_bytes());
}

#[test]
fn onion_key_works_for_noise_nk() {
    // The stored key pair must be usable as the responder static key of the
    // circuit handshake.
    let tmp = TempDir::new("noise");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    let k = load_keys(tmp.path(), NOW).unwrap();
    let params: snow::params::NoiseParams = "Noise_NK_25519_AESGCM_SHA256".parse().unwrap();
    let mut init = snow::Builder::new(params.clone())
        .remote_public_key(&k.onion.keypair.public)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut resp = snow::Builder::new(params)
        .local_private_key(&k.onion.keypair.secret)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
    let n = init.write_message(b"hi", &mut a).unwrap();
    let m = resp.read_message(&a[..n], &mut b).unwrap();
    assert_eq!(&b[..m], b"hi");
}

#[test]
fn group_readable_keys_rejected() {
    let tmp = TempDir::new("perms");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    for (file, m) in [(IDENTITY_KEY_FILE, 0o640), (ONION_KEY_FILE, 0o604)] {
        let p = tmp.path().join(file);
        chmod(&p, m);
        let err = load_keys(tmp.path(), NOW).unwrap_err();
        assert!(
            matches!(err, ConfigError::InsecurePermissions { .. }),
            "{file}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::BadConfig, "{file}");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600") && msg.contains(file), "{msg}");
        chmod(&p, 0o600);
    }
    load_keys(tmp.path(), NOW).unwrap();
}

#[test]
fn corrupt_keys_are_errors() {
    let tmp = TempDir::new("corrupt-keys");
    init_data_dir_at(tmp.path(), NOW).unwrap();
    let onion = tmp.path().join(ONION_KEY_FILE);
    let good = std::fs::read_to_string(&onion).unwrap();

    std::fs::write(&onion, "{ not json").unwrap();
    let err = load_keys(tmp.path(), NOW).unwrap_err();
    assert!(matches!(err, ConfigError::Corrupt { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::LocalResource);
    assert!(err.to_string().contains(ONION_KEY_FILE), "{err}");

    // A public key that does not belong to the secret key.
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut v2 = v.clone();
    v2["public"] = serde_json::Value::String("00".repeat(32));
    std::fs::write(&onion, v2.to_string()).unwrap();
    let err = load_keys(tmp.path(), NOW).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    let id = tmp.path().join(IDENTITY_KEY_FILE);
    std::fs::write(&id, b"garbage").unwrap();
    let err = load_keys(tmp.path(), NOW).unwrap_err();
    assert!(matches!(err, ConfigError::Corrupt { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::LocalResource);
    assert!(err.to_string().contains(IDENTITY_KEY_FILE), "{err}");
}

#[test]
fn onion_key_of_other_identity_is_replaced() {
    let a = TempDir::new("other-a");
    let b = TempDir::new("other-b");
    init_data_dir_at(a.path(), NOW).unwrap();
    init_data_dir_at(b.path(), NOW).unwrap();
    std::fs::copy(a.path().join(ONION_KEY_FILE), b.path().join(ONION_KEY_FILE)).unwrap();
    let kb = load_keys(b.path(), NOW).unwrap();
    assert!(kb.onion.verify(&kb.identity.public()));
    assert_ne!(kb.onion, load_keys(a.path(), NOW).unwrap().onion);
}

#[test]
fn load_without_init_is_a_clear_error() {
    let tmp = TempDir::new("noinit");
    let err = load_keys(tmp.path(), NOW).unwrap_err();
    // Run `init` first: the setup is incomplete, the disk is fine.
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::BadConfig);
    assert!(err.to_string().contains(IDENTITY_KEY_FILE), "{err}");
}

fn peer(i: u16) -> (PeerId, Multiaddr) {
    let id = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let addr: Multiaddr = format!("/ip4/10.0.0.1/tcp/{}", 9000 + i).parse().unwrap();
    (id, addr)
}

#[test]
fn peers_round_trip() {
    let tmp = TempDir::new("peers");
    std::fs::create_dir_all(tmp.path()).unwrap();
    assert!(load_peers(tmp.path()).unwrap().is_empty());
    let peers: Vec<_> = (0..5).map(peer).collect();
    save_peers(tmp.path(), &peers).unwrap();
    assert_eq!(load_peers(tmp.path()).unwrap(), peers);
    assert_eq!(mode(&tmp.path().join(PEERS_FILE)), 0o600);
    // Overwrite with a shorter list; no temporary files are left behind.
    save_peers(tmp.path(), &peers[..2]).unwrap();
    assert_eq!(load_peers(tmp.path()).unwrap(), &peers[..2]);
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [PEERS_FILE]);
}

#[test]
fn fetch_relays_round_trip_apart_from_the_known_peers() {
    let tmp = TempDir::new("fetch-relays");
    std::fs::create_dir_all(tmp.path()).unwrap();
    assert!(load_fetch_relays(tmp.path()).unwrap().is_empty());
    let relays: Vec<_> = (0..3).map(peer).collect();
    save_fetch_relays(tmp.path(), &relays).unwrap();
    assert_eq!(load_fetch_relays(tmp.path()).unwrap(), relays);
    assert_eq!(mode(&tmp.path().join(FETCH_RELAYS_FILE)), 0o600);
    assert!(load_peers(tmp.path()).unwrap().is_empty());
    std::fs::write(
        tmp.path().join(FETCH_RELAYS_FILE),
        b"{\"version\": 1, \"peers\": [",
    )
    .unwrap();
    let err = load_fetch_relays(tmp.path()).unwrap_err();
    assert!(err.to_string().contains(FETCH_RELAYS_FILE), "{err}");
}

#[test]
fn peers_are_bounded_and_checked() {
    let tmp = TempDir::new("peers-bound");
    std::fs::create_dir_all(tmp.path()).unwrap();
    let mut peers: Vec<_> = (0..MAX_PEERS as u16 + 10).map(peer).collect();
    // An address naming a different peer is dropped.
    let (liar, _) = peer(0);
    let (other, addr) = peer(1);
    peers.insert(
        0,
        (liar, addr.with(libp2p::multiaddr::Protocol::P2p(other))),
    );
    // An exact duplicate is dropped.
    peers.insert(1, peers[1].clone());
    save_peers(tmp.path(), &peers).unwrap();
    let loaded = load_peers(tmp.path()).unwrap();
    assert_eq!(loaded.len(), MAX_PEERS);
    assert_eq!(loaded[..], peers[2..MAX_PEERS + 2]);
}

#[test]
fn corrupt_peers_file_is_an_error() {
    let tmp = TempDir::new("peers-corrupt");
    std::fs::create_dir_all(tmp.path()).unwrap();
    let path = tmp.path().join(PEERS_FILE);
    for bad in [
        "{ nope",
        "[]",
        r#"{"version": 1, "peers": [{"peer_id": "x", "addr": "/ip4/1.2.3.4/tcp/1"}]}"#,
        r#"{"version": 2, "peers": []}"#,
    ] {
        std::fs::write(&path, bad).unwrap();
        let err = load_peers(tmp.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Corrupt { .. }), "{bad}: {err}");
        assert_eq!(err.kind(), ErrorKind::LocalResource, "{bad}");
        assert!(err.to_string().contains(PEERS_FILE), "{err}");
    }
}

#[test]
fn a_state_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = TempDir::new("fifo");
    std::fs::create_dir_all(dir.path()).unwrap();
    let fifo = dir.path().join("directory-cache.bin");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("no mkfifo here; skipped");
        return;
    }
    let path = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(load_state_bytes(&path, "directory-cache.bin", 1024));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("reading a FIFO must not wait for a writer");
    let e = result.unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // Writing over it replaces it with a regular file.
    save_state_bytes(dir.path(), "directory-cache.bin", b"cache").unwrap();
    assert_eq!(
        load_state_bytes(dir.path(), "directory-cache.bin", 1024).unwrap(),
        Some(b"cache".to_vec())
    );
}
