//! Known-answer vectors for the circuit crypto: the hop key derivation, one
//! whole 3-hop cell in each direction, and the first cell after a key update.
//! A change to any of these breaks the wire format: it must be deliberate.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use sha2::{Digest, Sha256};
use veilnet_cell::{BODY_LEN, ONION_HEADER_LEN};
use veilnet_crypto::circuit::HopKeys;
use veilnet_crypto::onion::{relay_layers, ClientLayers, NO_REKEY};
use veilnet_crypto::RekeyPolicy;

/// Hop `h`'s keys: derived from fixed Noise split keys.
fn hop_keys(h: u8) -> HopKeys {
    HopKeys::derive(&[0x10 + h; 32], &[0x20 + h; 32])
}

const JUNK_KEY: [u8; 32] = [0x5A; 32];

/// A fixed relay payload: a recognisable pattern.
fn plaintext() -> Vec<u8> {
    let mut body = vec![0u8; BODY_LEN];
    for (i, b) in body[ONION_HEADER_LEN..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    body
}

fn summary(body: &[u8]) -> (String, String) {
    (
        hex::encode(&body[..ONION_HEADER_LEN + 16]),
        hex::encode(Sha256::digest(body)),
    )
}

#[test]
fn testvec_hop_key_derivation() {
    let k = HopKeys::derive(&[1u8; 32], &[2u8; 32]);
    assert_eq!(
        hex::encode(k.fwd_data),
        "7564999cc39face97354a54d3489aba1ab32bf28ead788f2fc2108b13e7997d1"
    );
    assert_eq!(
        hex::encode(k.fwd_mask),
        "6fcb8b61772ebad1f99d33b29a0afb4281a163119f18e27fd982436be3fd968a"
    );
    assert_eq!(
        hex::encode(k.bwd_data),
        "67749226ec7e56fc3c88a1781ecd1a0208d4b72c893c5eca07ff9c17f9764565"
    );
    assert_eq!(
        hex::encode(k.bwd_mask),
        "5b888333c9da9ddd5ca8717f456146aaeda5c8a147c27dea7d5b08ed00590a69"
    );
}

#[test]
fn testvec_three_hop_forward_cell() {
    let now = Instant::now();
    let mut client = ClientLayers::new(&JUNK_KEY, NO_REKEY);
    let mut relays: Vec<_> = (0..3)
        .map(|h| {
            client.push_hop(&hop_keys(h)).unwrap();
            relay_layers(&hop_keys(h), NO_REKEY).0
        })
        .collect();
    let plain = plaintext();
    let mut body = plain.clone();
    client.encrypt_forward(&mut body, now).unwrap();
    assert_eq!(
        summary(&body),
        (
            concat!(
                "a117ab19c3d10e1ded0792616c66cb6c0007c1c0b61310858f5058b0425600bf",
                "9f67b09843833b16355124e9e67286351ffc04a1eaacb2ede003971b2279d21e",
                "d1b00e37aa72e5523ed2259aa83fb1f2bc11b0c1a65ef1baa2e2f8a734151e7cbbfb98f460"
            )
            .to_string(),
            "6ff70aaf816c76b345af710147fb7ee1f3c1e739ab1d62c225c27880f2bb9971".to_string()
        )
    );
    for r in &mut relays {
        r.decrypt(&mut body).unwrap();
    }
    assert_eq!(body[ONION_HEADER_LEN..], plain[ONION_HEADER_LEN..]);
}

#[test]
fn testvec_three_hop_backward_cell() {
    let now = Instant::now();
    let mut client = ClientLayers::new(&JUNK_KEY, NO_REKEY);
    let mut relays: Vec<_> = (0..3)
        .map(|h| {
            client.push_hop(&hop_keys(h)).unwrap();
            relay_layers(&hop_keys(h), NO_REKEY).1
        })
        .collect();
    let plain = plaintext();
    let mut body = plain.clone();
    relays[2].originate(&mut body, now).unwrap();
    relays[1].encrypt(&mut body, now).unwrap();
    relays[0].encrypt(&mut body, now).unwrap();
    assert_eq!(
        summary(&body),
        (
            concat!(
                "b239afd87e99ed2dfdd64f8f5a8b161800d671c5c607665d5cc3de225cb6446d",
                "2189b418c0623463ea6da62a6fd422d642409137f530737c2a6eb2026d830f9b",
                "30a0d5ca7bee0bd08c698076f3ff69f822ed829113171c1319e1f8b9dbc39e528389c8013f"
            )
            .to_string(),
            "0777b1c020564686bd6a5d4a84bea740c66fba2c235c6ec0aa8f58b14313a5be".to_string()
        )
    );
    client.decrypt_backward(&mut body).unwrap();
    assert_eq!(body[ONION_HEADER_LEN..], plain[ONION_HEADER_LEN..]);
}

#[test]
fn testvec_forward_cell_after_key_update() {
    // Every key retires after one cell: the second cell is sealed under the
    // ratcheted keys of all three hops.
    let policy = RekeyPolicy {
        max_uses: 1,
        ..NO_REKEY
    };
    let now = Instant::now();
    let mut client = ClientLayers::new(&JUNK_KEY, policy);
    let mut relays: Vec<_> = (0..3)
        .map(|h| {
            client.push_hop(&hop_keys(h)).unwrap();
            relay_layers(&hop_keys(h), policy).0
        })
        .collect();
    let plain = plaintext();
    for round in 0..2 {
        let mut body = plain.clone();
        client.encrypt_forward(&mut body, now).unwrap();
        if round == 1 {
            assert_eq!(
                summary(&body),
                (
                    concat!(
                    "8cfa7f39d2dea11f07d62dcabe210202017c55d6620de303e47dcacb5456b2af",
                    "d8900244477d054eab0580619e713470da76791efc3538d763d55066ba6aeb15",
                    "1c75ca69916f116da49f3efe0990a1a8ff6fba145228f6e6127c51e90fd19529e403018ce9"
                )
                    .to_string(),
                    "18aa24ad467761e68d53398a7ff9821121dc00a19cfcaa4a21433aac7075a7f9".to_string()
                )
            );
        }
        for r in &mut relays {
            r.decrypt(&mut body).unwrap();
        }
        assert_eq!(body[ONION_HEADER_LEN..], plain[ONION_HEADER_LEN..]);
    }
}
