//! Fuzz the per-hop circuit handshake (Noise NK), both sides.
//!
//! Checks: no panic from `relay_handshake(fixed onion secret, input)` or
//! `ClientHandshake::finish(input)`; neither accepts a message of the wrong
//! length. With a genuine exchange: the client message XORed with the input
//! is accepted by the relay only if the input changed nothing, and likewise
//! the relay's reply at the client; the unchanged reply gives both sides the
//! same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_crypto::circuit::{relay_handshake, ClientHandshake, CLIENT_MSG_LEN, RELAY_MSG_LEN};
use veilnet_crypto::CryptoError;

/// A fixed onion key pair: Alice's X25519 key from RFC 7748, section 6.1.
const RELAY_SECRET: [u8; 32] = [
    0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45,
    0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a,
];
const RELAY_PUBLIC: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];

/// `msg` with `delta` XORed in (cycled); whether that changed anything.
fn xor(msg: &[u8], delta: &[u8]) -> (Vec<u8>, bool) {
    let mut out = msg.to_vec();
    if delta.is_empty() {
        return (out, false);
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b ^= delta[i % delta.len()];
    }
    let changed = out != msg;
    (out, changed)
}

fn check(data: &[u8]) {
    // Arbitrary input at both sides.
    let r = relay_handshake(&RELAY_SECRET, data);
    if data.len() != CLIENT_MSG_LEN {
        assert_eq!(r.err(), Some(CryptoError::BadLength(data.len())));
    } else if let Err(e) = r {
        let _ = e.to_string();
    }
    let (client, _msg) = ClientHandshake::start(&RELAY_PUBLIC).expect("client starts");
    match client.finish(data) {
        Err(CryptoError::BadLength(n)) => assert!(n == data.len() && n != RELAY_MSG_LEN),
        Err(e) => assert_eq!(data.len(), RELAY_MSG_LEN, "{e}"),
        Ok(_) => panic!("client accepted an arbitrary reply (no relay saw its message)"),
    }

    // A genuine client message, modified by the input.
    let (client, msg) = ClientHandshake::start(&RELAY_PUBLIC).expect("client starts");
    let (tampered, changed) = xor(&msg, data);
    match relay_handshake(&RELAY_SECRET, &tampered) {
        Ok(_) => assert!(!changed, "relay accepted a modified client message"),
        Err(e) => assert!(changed, "relay rejected a genuine client message: {e}"),
    }

    // A genuine reply, modified by the input.
    let (reply, relay_keys) = relay_handshake(&RELAY_SECRET, &msg).expect("genuine message");
    let (tampered, changed) = xor(&reply, data);
    match client.finish(&tampered) {
        Ok(client_keys) => {
            assert!(!changed, "client accepted a modified reply");
            assert!(
                client_keys == relay_keys,
                "the two sides derived different keys"
            );
        }
        Err(e) => assert!(changed, "client rejected a genuine reply: {e}"),
    }
}

fuzz_target!(|data: &[u8]| check(data));
