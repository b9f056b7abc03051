//! Fuzz signed node descriptors: framing, verification, the binary body.
//!
//! Checks: no panic anywhere; `SignedDescriptor::from_bytes` accepts an input
//! only if `to_bytes` gives back exactly that input, and its errors are of
//! kind `PeerMisbehaved` without a peer; `verify(now)` never panics, for the
//! framed input and for the raw input taken as a body, at several clocks, and
//! whatever it accepts passes `check_fields` and the time rules. When the input
//! decodes as a descriptor body, it encodes back to exactly the input (one
//! encoding per descriptor) and is re-signed with a fixed identity: signing
//! fails only for a field or size limit, and otherwise the signed descriptor
//! frames round-trip, verifies back to the same descriptor inside the time
//! window, and is `FromFuture` / `Expired` / `OnionKeyExpired` just outside.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_identity::Keypair;
use veilnet_dir::{
    Descriptor, DescriptorError, SignedDescriptor, MAX_CLOCK_SKEW, MAX_DESCRIPTOR_AGE,
};
use veilnet_error::{ErrorKind, HasKind};

/// Clocks to verify arbitrary descriptors at.
const CLOCKS: [u64; 4] = [0, 1_700_000_000, u64::MAX - MAX_CLOCK_SKEW, u64::MAX];

fn identity() -> Keypair {
    Keypair::ed25519_from_bytes([0x42u8; 32]).expect("32-byte ed25519 secret")
}

fn verify_any(sd: &SignedDescriptor) {
    for now in CLOCKS {
        match sd.verify(now) {
            Ok(desc) => {
                assert!(desc.check_fields().is_ok());
                assert!(desc.published <= now.saturating_add(MAX_CLOCK_SKEW));
                assert!(desc.published >= now.saturating_sub(MAX_DESCRIPTOR_AGE));
                assert!(desc.onion_key_expires > now);
            }
            Err(e) => {
                let _ = (e.kind(), e.peer(), e.to_string());
            }
        }
    }
}

/// Verifies `signed` (made from `desc`) at `now` and checks the outcome
/// against the rules, in the order `verify` applies them.
fn verify_at(signed: &SignedDescriptor, desc: &Descriptor, now: u64) {
    let r = signed.verify(now);
    let peer = desc.peer_id;
    let expected = if desc.published > now.saturating_add(MAX_CLOCK_SKEW) {
        Err(DescriptorError::FromFuture {
            peer,
            published: desc.published,
            now,
        })
    } else if desc.published < now.saturating_sub(MAX_DESCRIPTOR_AGE) {
        Err(DescriptorError::Expired {
            peer,
            published: desc.published,
            now,
        })
    } else if desc.onion_key_expires <= now {
        Err(DescriptorError::OnionKeyExpired {
            peer,
            expires: desc.onion_key_expires,
            now,
        })
    } else {
        Ok(desc.clone())
    };
    assert_eq!(r, expected, "verify({now}) of a freshly signed descriptor");
}

fn resign(data: &[u8]) {
    let Ok(mut desc) = veilnet_dir::wire::decode(data) else {
        return;
    };
    assert_eq!(
        veilnet_dir::wire::encode(&desc).as_deref(),
        Ok(data),
        "a body decoded from bytes it would not encode to"
    );
    let key = identity();
    desc.peer_id = key.public().to_peer_id();
    desc.identity_key = key.public().encode_protobuf();
    let signed = match desc.sign(&key) {
        Ok(s) => s,
        Err(e @ DescriptorError::BadField { .. }) => {
            assert!(
                desc.check_fields().is_err(),
                "sign refused good fields: {e}"
            );
            return;
        }
        Err(e @ DescriptorError::TooLarge { .. }) => {
            assert!(desc.check_fields().is_ok(), "{e}");
            return;
        }
        Err(e) => panic!("signing failed: {e}"),
    };
    let bytes = signed.to_bytes();
    assert_eq!(bytes.len(), signed.encoded_len());
    assert_eq!(SignedDescriptor::from_bytes(&bytes), Ok(signed.clone()));

    let p = desc.published;
    let mut clocks = vec![
        p,
        p.saturating_sub(MAX_CLOCK_SKEW),
        p.saturating_add(MAX_DESCRIPTOR_AGE),
        desc.onion_key_expires,
        desc.onion_key_expires.saturating_sub(1),
    ];
    clocks.extend(p.checked_sub(MAX_CLOCK_SKEW + 1));
    clocks.extend(p.checked_add(MAX_DESCRIPTOR_AGE + 1));
    for now in clocks {
        verify_at(&signed, &desc, now);
    }
}

fn check(data: &[u8]) {
    match SignedDescriptor::from_bytes(data) {
        Ok(sd) => {
            assert_eq!(sd.to_bytes(), data, "framing did not round-trip");
            assert_eq!(sd.encoded_len(), data.len());
            verify_any(&sd);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::PeerMisbehaved, "{e}");
            assert_eq!(e.peer(), None);
            let _ = e.to_string();
        }
    }

    // The input as a body, so that it reaches the decoder and the checks.
    let sd = SignedDescriptor {
        body: data.to_vec(),
        signature: vec![0u8; 64],
    };
    verify_any(&sd);

    resign(data);
}

fuzz_target!(|data: &[u8]| check(data));
