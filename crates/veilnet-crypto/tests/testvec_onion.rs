//! Known-answer vectors for the circuit crypto: the hop key derivation, one
//! whole 3-hop cell in each direction, and the first cell after a key update.
//! A change to any of these breaks the wire format: it must be deliberate.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use sha2::{Digest, Sha256};
use veilnet_cell::{CellCommand, BODY_LEN, ONION_HEADER_LEN};
use veilnet_crypto::circuit::HopKeys;
use veilnet_crypto::onion::{relay_layers, ClientLayers, NO_REKEY};
use veilnet_crypto::rekey::MIN_USES_PER_KEY;
use veilnet_crypto::RekeyPolicy;

/// Hop `h`'s keys: derived from fixed Noise split keys.
fn hop_keys(h: u8) -> HopKeys {
    HopKeys::derive(&[0x10 + h; 32], &[0x20 + h; 32])
}

const JUNK_KEY: [u8; 32] = [0x5A; 32];
const R: CellCommand = CellCommand::Relay;

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
    client.encrypt_forward(&mut body, R, now).unwrap();
    assert_eq!(
        summary(&body),
        (
            concat!(
                "b2c62abaac9cf6307e3b61b06512501d002e33bb7a9bac2ee1ce2cc1d360795d",
                "0e676c82175a1a9fc75a3f04a1883d3939c504a1eaacb2ede003971b2279d21e",
                "d1b00e37aa72e5523ed2259aa83fb1f2bc11b0c1a65ef1baa2e2f8a734151e7cbbfb98f460"
            )
            .to_string(),
            "80a300ff025ab92f5e19906393c72c734460e683b8b9a1114958e07ab0ade90c".to_string()
        )
    );
    for r in &mut relays {
        r.decrypt(&mut body, R).unwrap();
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
    relays[2].originate(&mut body, R, now).unwrap();
    relays[1].encrypt(&mut body, R, now).unwrap();
    relays[0].encrypt(&mut body, R, now).unwrap();
    assert_eq!(
        summary(&body),
        (
            concat!(
                "75ecf720edbc99f290e401c355a593ae0042f57e8664d9692f250cf64710ee9f",
                "06890d28ed2b60ec7afd27f6ab29a68095389137f530737c2a6eb2026d830f9b",
                "30a0d5ca7bee0bd08c698076f3ff69f822ed829113171c1319e1f8b9dbc39e528389c8013f"
            )
            .to_string(),
            "18c087711bf6e2a9c8b902cecc3972b93d568c8044bc94d9a7b345aa4f3013d6".to_string()
        )
    );
    client.decrypt_backward(&mut body, R).unwrap();
    assert_eq!(body[ONION_HEADER_LEN..], plain[ONION_HEADER_LEN..]);
}

#[test]
fn testvec_forward_cell_after_key_update() {
    // Every key retires after MIN_USES_PER_KEY cells: the next cell is
    // sealed under the ratcheted keys of all three hops.
    let policy = RekeyPolicy {
        max_uses: MIN_USES_PER_KEY,
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
    for round in 0..=MIN_USES_PER_KEY {
        let mut body = plain.clone();
        client.encrypt_forward(&mut body, R, now).unwrap();
        if round == MIN_USES_PER_KEY {
            assert_eq!(
                summary(&body),
                (
                    concat!(
"dc8894a304cb5182b419e0cd5306eba0001da9f33a248f817193852fc31c7dca",
"d791b81ce98daed3ac8bbc800f93973eec1e78db231501b1dc90e707ea139995",
"775fb49d69bf83deff26a622e97ba76bbac3d900ed28f6e6127c51e90fd19529e403018ce9"
)
                    .to_string(),
                    "23cb242ff29232fc8c10d51423f36963121c37c3de8e9251276c32ddbadf44b0".to_string()
                )
            );
        }
        for r in &mut relays {
            r.decrypt(&mut body, R).unwrap();
        }
        assert_eq!(body[ONION_HEADER_LEN..], plain[ONION_HEADER_LEN..]);
    }
}
