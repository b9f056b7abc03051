//! Fuzz a relay's forward onion layer.
//!
//! A `RelayForward` is built from fixed `HopKeys`. Checks:
//!
//! * The raw input, of any length, never panics `decrypt` (too short bodies
//!   are `BadLength`).
//! * The input cut into `BODY_LEN` bodies (zero-padded, at most four) is fed
//!   to one relay in order: no panic, and every body fails authentication
//!   unless it is exactly (tag slot and payload) what a `ClientLayers` with
//!   the same keys produces for the decrypted payload at that position: an
//!   `Ok` for anything else would be a forged tag.
//! * Round trip: the input as a payload, wrapped by a client for 1..=5 hops
//!   (first byte), passes every relay and comes out unchanged; the next cell,
//!   with one bit flipped (chosen by the input) in a hop's tag slot or in the
//!   payload, is rejected by exactly the hop that owns the flipped region.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_cell::{BODY_LEN, MAX_HOPS, ONION_HEADER_LEN, TAG_LEN};
use veilnet_crypto::circuit::HopKeys;
use veilnet_crypto::onion::{relay_layers, ClientLayers, RelayForward};
use veilnet_crypto::CryptoError;

const JUNK_KEY: [u8; 32] = [0x5A; 32];

fn keys(hop: usize) -> HopKeys {
    let seed = (hop as u8).wrapping_mul(16).wrapping_add(1);
    HopKeys {
        fwd_data: [seed; 32],
        fwd_mask: [seed.wrapping_add(1); 32],
        bwd_data: [seed.wrapping_add(2); 32],
        bwd_mask: [seed.wrapping_add(3); 32],
    }
}

fn forward(hop: usize) -> RelayForward {
    relay_layers(&keys(hop)).0
}

fn client(hops: usize) -> ClientLayers {
    let mut c = ClientLayers::new(&JUNK_KEY);
    for h in 0..hops {
        c.push_hop(&keys(h)).expect("at most MAX_HOPS hops");
    }
    c
}

fn body_from(bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8; BODY_LEN];
    let n = bytes.len().min(BODY_LEN);
    body[..n].copy_from_slice(&bytes[..n]);
    body
}

/// Feeds `input` to `relay`; `shadow` is a one-hop client whose counters are
/// in step with the relay's. Decryption must fail unless `input` is exactly
/// (tag slot and payload) what the client produces for the plaintext.
fn decrypt_arbitrary(relay: &mut RelayForward, shadow: &mut ClientLayers, input: &[u8]) {
    let mut body = input.to_vec();
    match relay.decrypt(&mut body) {
        Ok(()) => {
            // Only a genuine cell may pass: re-wrap the plaintext.
            let mut genuine = vec![0u8; input.len()];
            genuine[ONION_HEADER_LEN..].copy_from_slice(&body[ONION_HEADER_LEN..]);
            shadow
                .encrypt_forward(&mut genuine)
                .expect("client encrypts");
            assert!(
                genuine[..TAG_LEN] == input[..TAG_LEN]
                    && genuine[ONION_HEADER_LEN..] == input[ONION_HEADER_LEN..],
                "relay accepted a body the client never produced"
            );
        }
        Err(CryptoError::BadLength(n)) => {
            assert!(n == input.len() && n <= ONION_HEADER_LEN, "BadLength({n})");
        }
        Err(e) => {
            assert!(input.len() > ONION_HEADER_LEN);
            assert_eq!(e, CryptoError::BadTag(0));
            // Keep the shadow's counters in step: a failed decrypt still
            // uses a nonce.
            shadow
                .encrypt_forward(&mut vec![0u8; BODY_LEN])
                .expect("client encrypts");
        }
    }
}

/// The raw input, then arbitrary bodies one after the other, to one relay.
fn arbitrary_bodies(data: &[u8]) {
    decrypt_arbitrary(&mut forward(0), &mut client(1), data);

    let mut relay = forward(0);
    let mut shadow = client(1);
    for chunk in data.chunks(BODY_LEN).take(4) {
        decrypt_arbitrary(&mut relay, &mut shadow, &body_from(chunk));
    }
}

/// A genuine cell passes every hop; a tampered one dies at the right hop.
fn round_trip(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let hops = 1 + usize::from(first) % MAX_HOPS;
    let mut c = client(hops);
    let mut relays: Vec<RelayForward> = (0..hops).map(forward).collect();

    let mut body = vec![0u8; BODY_LEN];
    let n = rest.len().min(BODY_LEN - ONION_HEADER_LEN);
    body[ONION_HEADER_LEN..ONION_HEADER_LEN + n].copy_from_slice(&rest[..n]);
    let plain = body[ONION_HEADER_LEN..].to_vec();
    c.encrypt_forward(&mut body).expect("client encrypts");
    for (i, relay) in relays.iter_mut().enumerate() {
        if let Err(e) = relay.decrypt(&mut body) {
            panic!("hop {i} of {hops} rejected a genuine cell: {e}");
        }
    }
    assert_eq!(body[ONION_HEADER_LEN..], plain[..], "payload changed");

    // Second cell: flip one bit in a hop's tag slot or in the payload.
    let pick = rest.get(..4).map_or(0, |b| {
        u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize
    });
    let region = hops * TAG_LEN + (BODY_LEN - ONION_HEADER_LEN);
    let mut pos = (pick >> 3) % region;
    if pos >= hops * TAG_LEN {
        pos = ONION_HEADER_LEN + (pos - hops * TAG_LEN);
    }
    let owner = if pos < ONION_HEADER_LEN {
        pos / TAG_LEN
    } else {
        0
    };
    let mut body = vec![0u8; BODY_LEN];
    body[ONION_HEADER_LEN..].copy_from_slice(&plain);
    c.encrypt_forward(&mut body).expect("client encrypts");
    body[pos] ^= 1 << (pick & 7);
    for (i, relay) in relays.iter_mut().enumerate() {
        let r = relay.decrypt(&mut body);
        if i < owner {
            assert!(r.is_ok(), "hop {i} rejected a flip meant for hop {owner}");
        } else {
            assert_eq!(
                r,
                Err(CryptoError::BadTag(0)),
                "hop {i} accepted a cell with byte {pos} flipped"
            );
            break;
        }
    }
}

fn check(data: &[u8]) {
    arbitrary_bodies(data);
    round_trip(data);
}

fuzz_target!(|data: &[u8]| check(data));
