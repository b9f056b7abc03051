//! Fuzz measurement reports: the decoder and signature check, and the
//! directory's store and aggregation of what passes.
//!
//! Checks: no panic; `ReportFork::decode` refuses as the peer's fault or
//! accepts a proof that re-encodes to the same bytes; `VerifiedReport::decode` accepts an input only if its
//! signature verifies, and then re-signing the same report with a fixed key
//! gives a record that decodes back to the same report (one encoding per
//! report); every refusal is of kind `PeerMisbehaved`. The input is also
//! read as a report's fields (decoded from raw bytes by the fuzzer) signed
//! with a fixed key: signing fails only for a broken rule, and a signed
//! report decodes back, is stored by a directory that lists its measurer,
//! and aggregates without panicking at several clocks.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use libp2p_identity::{Keypair, PeerId};
use veilnet_dir::{
    Directory, MeasureParams, Observation, Report, ReportError, VerifiedReport,
};
use veilnet_error::{ErrorKind, HasKind};

fn measurer() -> Keypair {
    Keypair::ed25519_from_bytes([0x42u8; 32]).expect("32-byte ed25519 secret")
}

const PARAMS: MeasureParams = MeasureParams {
    period_secs: 60,
    measurers_per_target: 3,
    window_epochs: 4,
    min_measurers: 1,
    ramp_secs: 100,
    required: true,
    max_rate: 20_000_000,
};

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (j, x) in b.iter_mut().enumerate() {
        *x = data.get(i + j).copied().unwrap_or(0);
    }
    u64::from_be_bytes(b)
}

/// A report made of the input's bytes: a publication time and up to 8
/// observations of deterministic peers.
fn report_from(data: &[u8]) -> Report {
    let peers: Vec<PeerId> = targets().iter().map(|k| k.public().to_peer_id()).collect();
    let n = data.first().map_or(0, |b| usize::from(b % 9));
    let observations = (0..n)
        .map(|i| {
            let at = 9 + i * 17;
            Observation {
                target: peers[usize::from(data.get(at).copied().unwrap_or(0)) % peers.len()],
                bandwidth: u64_at(data, at + 1),
                reached: data.get(at + 9).is_some_and(|b| b & 1 == 1),
                since: u64_at(data, at + 9),
            }
        })
        .collect();
    Report {
        measurer: measurer().public().to_peer_id(),
        // Near NOW mostly, so that reports land inside the window.
        published: NOW.wrapping_add(u64_at(data, 1) % 1000).wrapping_sub(500),
        observations,
    }
}

/// A relay's descriptor for `key`, in its own /24.
fn listed(key: &Keypair, i: u8) -> veilnet_dir::SignedDescriptor {
    let public = key.public();
    let d = veilnet_dir::Descriptor {
        peer_id: public.to_peer_id(),
        identity_key: public.encode_protobuf(),
        link_addrs: vec![std::net::SocketAddr::from(([198, 51, i, 1], 9001))],
        p2p_addrs: vec![],
        onion_key: [0x11; 32],
        onion_key_expires: u64::MAX,
        link_key: [0x24; 32],
        roles: veilnet_dir::Roles {
            relay: true,
            exit: false,
        },
        exit_policy: veilnet_policy::ExitPolicy::reject_all(),
        bandwidth: 1_000_000,
        region: "ZZ".into(),
        family: vec![],
        version: "veilnet/fuzz".into(),
        seq: 1,
        published: NOW,
    };
    d.sign(key).expect("a valid descriptor signs")
}

const NOW: u64 = 1_700_000_000;

/// Stores `v` in a directory listing its measurer (if it is ours) and the
/// targets, then weighs and expires at several clocks.
fn store(v: VerifiedReport) {
    let mut empty = Directory::new(PeerId::random());
    empty.use_measurements(Some(PARAMS));
    // Not listed: refused as unknown, never stored.
    assert!(matches!(
        empty.insert_report(v.clone(), NOW),
        Err(ReportError::UnknownMeasurer(_))
    ));
    static LISTED: OnceLock<Directory> = OnceLock::new();
    let mut dir = LISTED
        .get_or_init(|| {
            let mut dir = empty.clone();
            for (i, k) in std::iter::once(measurer()).chain(targets()).enumerate() {
                dir.insert(&listed(&k, i as u8), NOW).expect("listed");
            }
            dir
        })
        .clone();
    let published = v.report.published;
    let digest = v.digest;
    match dir.insert_report(v, NOW) {
        Ok(_) => assert!(dir.holds(&digest)),
        Err(e) => assert!(
            matches!(e, ReportError::UnknownMeasurer(_) | ReportError::OutOfWindow { .. }),
            "{e}"
        ),
    }
    for now in [NOW, published, published.saturating_add(60 * 60), u64::MAX] {
        let w = dir.weights();
        for k in targets() {
            let p = k.public().to_peer_id();
            let _ = (w.get(&p), w.measured(&p));
        }
        dir.expire(now);
    }
}

fn targets() -> Vec<Keypair> {
    static KEYS: OnceLock<Vec<Keypair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0u8..8)
            .map(|i| Keypair::ed25519_from_bytes([i + 1; 32]).expect("secret"))
            .collect()
    })
    .clone()
}

fn check(data: &[u8]) {
    // A fork proof: refused as a peer's fault, or one that re-encodes to
    // exactly these bytes (one encoding per proof).
    match veilnet_dir::ReportFork::decode(data, &PARAMS, 1_700_000_000) {
        Ok(f) => assert_eq!(f.record, data),
        Err(e) => assert_eq!(e.kind(), ErrorKind::PeerMisbehaved, "{e}"),
    }
    match VerifiedReport::decode(data) {
        Ok(v) => {
            assert_eq!(v.record, data);
            store(v);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::PeerMisbehaved, "{e}");
            let _ = e.to_string();
        }
    }
    let report = report_from(data);
    match report.sign(&measurer()) {
        Ok(record) => {
            let v = VerifiedReport::decode(&record).expect("a signed report decodes");
            assert_eq!(v.report, report);
            store(v);
        }
        Err(ReportError::BadContents { .. }) => {}
        Err(e) => panic!("signing failed: {e}"),
    }
}

fuzz_target!(|data: &[u8]| check(data));
