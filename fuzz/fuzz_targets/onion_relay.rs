//! Fuzz the onion layers.
//!
//! Layers are built from fixed `HopKeys`. Checks:
//!
//! * The raw input, of any length, never panics a relay's `decrypt` or a
//!   client's backward `decrypt` (too short bodies are `BadLength`).
//! * The input cut into `BODY_LEN` bodies (zero-padded, at most four) is fed
//!   to one relay in order: no panic, and every body fails authentication
//!   unless it is byte for byte what a `ClientLayers` with the same keys
//!   produces for the decrypted payload at that position: an `Ok` for
//!   anything else would be a forged tag.
//! * Round trip: the input as a payload, wrapped by a client for 1..=5 hops
//!   (first byte) whose keys ratchet every 16..=19 cells (second byte), passes
//!   every relay and comes back through every relay unchanged; then one bit
//!   of the body, anywhere (chosen by the input), flipped after hop k: the
//!   next hop rejects it going forward, the client going backward.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use veilnet_cell::{CellCommand, BODY_LEN, MAX_HOPS, ONION_HEADER_LEN};
use veilnet_crypto::circuit::HopKeys;
use veilnet_crypto::onion::{relay_layers, ClientLayers, RelayBackward, RelayForward, NO_REKEY};
use veilnet_crypto::rekey::MIN_USES_PER_KEY;
use veilnet_crypto::{CryptoError, RekeyPolicy};

const JUNK_KEY: [u8; 32] = [0x5A; 32];
const R: CellCommand = CellCommand::Relay;

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
    relay_layers(&keys(hop), NO_REKEY).0
}

fn client(hops: usize, policy: RekeyPolicy) -> ClientLayers {
    let mut c = ClientLayers::new(&JUNK_KEY, policy);
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
/// what the client produces for the plaintext.
fn decrypt_arbitrary(relay: &mut RelayForward, shadow: &mut ClientLayers, input: &[u8]) {
    let now = Instant::now();
    let mut body = input.to_vec();
    match relay.decrypt(&mut body, R) {
        Ok(()) => {
            let mut genuine = vec![0u8; input.len()];
            genuine[ONION_HEADER_LEN..].copy_from_slice(&body[ONION_HEADER_LEN..]);
            shadow
                .encrypt_forward(&mut genuine, R, now)
                .expect("client encrypts");
            assert!(
                genuine == input,
                "relay accepted a body the client never produced"
            );
        }
        Err(CryptoError::BadLength(n)) => {
            assert!(n == input.len() && n <= ONION_HEADER_LEN, "BadLength({n})");
        }
        Err(_) => {
            assert!(input.len() > ONION_HEADER_LEN);
            // The layer is dead now: everything after fails too.
            let mut again = vec![0u8; BODY_LEN];
            shadow
                .encrypt_forward(&mut again, R, now)
                .expect("client encrypts");
            assert!(
                relay.decrypt(&mut again, R).is_err(),
                "a dead layer revived"
            );
        }
    }
}

/// The raw input, then arbitrary bodies one after the other, to one relay,
/// and the raw input to a client as a backward cell.
fn arbitrary_bodies(data: &[u8]) {
    decrypt_arbitrary(&mut forward(0), &mut client(1, NO_REKEY), data);
    let mut body = data.to_vec();
    assert!(client(3, NO_REKEY).decrypt_backward(&mut body, R).is_err());

    let mut relay = forward(0);
    let mut shadow = client(1, NO_REKEY);
    for chunk in data.chunks(BODY_LEN).take(4) {
        decrypt_arbitrary(&mut relay, &mut shadow, &body_from(chunk));
    }
}

/// A genuine cell passes every hop both ways; a tampered one dies at the
/// next hop forward and at the client backward.
fn round_trip(data: &[u8]) {
    let [first, second, rest @ ..] = data else {
        return;
    };
    let now = Instant::now();
    let hops = 1 + usize::from(*first) % MAX_HOPS;
    let policy = RekeyPolicy {
        max_uses: MIN_USES_PER_KEY + u64::from(*second % 4),
        ..NO_REKEY
    };
    let mut c = client(hops, policy);
    let mut fwd: Vec<RelayForward> = (0..hops).map(forward).collect();
    let mut bwd: Vec<RelayBackward> = (0..hops)
        .map(|h| relay_layers(&keys(h), policy).1)
        .collect();

    let mut plain = vec![0u8; BODY_LEN];
    let n = rest.len().min(BODY_LEN - ONION_HEADER_LEN);
    plain[ONION_HEADER_LEN..ONION_HEADER_LEN + n].copy_from_slice(&rest[..n]);
    let pick = rest.get(..4).map_or(0, |b| {
        u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize
    });
    let pos = (pick >> 3) % BODY_LEN;
    let bit = 1u8 << (pick & 7);
    let after = (pick >> 16) % hops;
    // Forward, the tamperer needs a hop after it.
    let after_fwd = (hops > 1).then(|| (pick >> 16) % (hops - 1));

    // Genuine rounds (keys ratchet along), then one tampered forward
    // cell; a fresh circuit for the tampered backward cell.
    // Some inputs run long enough for keys to ratchet twice.
    let genuine = if *second & 0x80 != 0 {
        2 * MIN_USES_PER_KEY as usize + 2
    } else {
        3
    };
    for round in 0..=genuine {
        let mut body = plain.clone();
        c.encrypt_forward(&mut body, R, now)
            .expect("client encrypts");
        for (i, relay) in fwd.iter_mut().enumerate() {
            if round == genuine && after_fwd.map(|a| a + 1) == Some(i) {
                assert!(
                    relay.decrypt(&mut body, R).is_err(),
                    "byte {pos} flipped forward passed hop {i}"
                );
                break;
            }
            if let Err(e) = relay.decrypt(&mut body, R) {
                panic!("hop {i} of {hops} rejected a genuine cell: {e}");
            }
            if round == genuine && after_fwd == Some(i) {
                body[pos] ^= bit;
            }
        }
        if round < genuine {
            assert_eq!(
                body[ONION_HEADER_LEN..],
                plain[ONION_HEADER_LEN..],
                "payload changed"
            );
            let mut back = plain.clone();
            send_back(&mut bwd, &mut back, now, None);
            c.decrypt_backward(&mut back, R)
                .expect("genuine backward cell");
            assert_eq!(
                back[ONION_HEADER_LEN..],
                plain[ONION_HEADER_LEN..],
                "payload changed"
            );
        }
    }

    let mut c = client(hops, policy);
    let mut bwd: Vec<RelayBackward> = (0..hops)
        .map(|h| relay_layers(&keys(h), policy).1)
        .collect();
    let mut back = plain.clone();
    send_back(&mut bwd, &mut back, now, Some((after, pos, bit)));
    assert!(
        c.decrypt_backward(&mut back, R).is_err(),
        "byte {pos} flipped after hop {after} reached the client"
    );
}

/// Carries `body` from the last hop back through every hop (the last
/// originates it); with `tamper = (hop, pos, bit)` that hop flips one bit
/// of what it sends on.
fn send_back(
    bwd: &mut [RelayBackward],
    body: &mut [u8],
    now: Instant,
    tamper: Option<(usize, usize, u8)>,
) {
    let last = bwd.len() - 1;
    for (i, relay) in bwd.iter_mut().enumerate().rev() {
        let r = if i == last {
            relay.originate(body, R, now)
        } else {
            relay.encrypt(body, R, now)
        };
        r.expect("relay encrypts");
        if let Some((_, pos, bit)) = tamper.filter(|t| t.0 == i) {
            body[pos] ^= bit;
        }
    }
}

fn check(data: &[u8]) {
    arbitrary_bodies(data);
    round_trip(data);
}

fuzz_target!(|data: &[u8]| check(data));
