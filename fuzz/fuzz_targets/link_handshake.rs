//! Fuzz the link handshake (Noise XX) as the responder, and the record
//! header parser.
//!
//! A responder with a fixed identity is fed the input cut into frames as a
//! peer would send them (`len: u16 | message`, the length checked with
//! `LinkHandshake::frame_len`), answering whenever it is its turn. Checks: no
//! panic; a frame length is accepted only in `1..=MAX_HANDSHAKE_MSG - 2`; after
//! a message is accepted, writing our answer succeeds and is framed correctly;
//! the handshake never finishes (finishing needs the initiator's encrypted
//! identity proof). `RecordOpener::parse_header` on every 2-byte window of the
//! input: accepts exactly `1..=MAX_BATCH` cells with only the KEY_UPDATE bit
//! besides, and sizes the rest correctly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_identity::Keypair;
use veilnet_cell::CELL_LEN;
use veilnet_crypto::link::{
    LinkHandshake, LinkKey, RecordOpener, MAX_BATCH, MAX_HANDSHAKE_MSG, RECORD_KEY_UPDATE,
    RECORD_TAG_LEN,
};

fn identity() -> Keypair {
    Keypair::ed25519_from_bytes([7u8; 32]).expect("32-byte ed25519 secret")
}

fn check_handshake(data: &[u8]) {
    let id = identity();
    let key = LinkKey::derive(&id).expect("ed25519 derives a link key");
    let mut hs = LinkHandshake::responder(&id, &key).expect("responder starts");
    assert!(!hs.wants_write(), "the responder reads first");
    let mut rest = data;
    let mut accepted = 0;
    while let [a, b, tail @ ..] = rest {
        let n = match LinkHandshake::frame_len([*a, *b]) {
            Ok(n) => {
                assert!((1..=MAX_HANDSHAKE_MSG - 2).contains(&n));
                n
            }
            Err(_) => {
                let n = usize::from(u16::from_be_bytes([*a, *b]));
                assert!(n == 0 || n > MAX_HANDSHAKE_MSG - 2);
                break;
            }
        };
        // A short last frame is delivered as is: the reader must cope.
        let (msg, tail) = tail.split_at(n.min(tail.len()));
        rest = tail;
        if hs.read_message(msg).is_err() {
            break;
        }
        accepted += 1;
        if hs.wants_write() {
            match hs.write_message() {
                Ok(out) => {
                    assert!(out.len() > 2 && out.len() <= MAX_HANDSHAKE_MSG);
                    let len = LinkHandshake::frame_len([out[0], out[1]]).expect("own frame");
                    assert_eq!(len + 2, out.len());
                }
                Err(e) => panic!("responder could not answer message {accepted}: {e}"),
            }
        }
        assert!(accepted <= 2);
    }
    assert!(accepted <= 1, "an unauthenticated peer got past message 1");
    assert!(!hs.is_finished());
    assert!(hs.finish().is_err());
}

fn check_record_headers(data: &[u8]) {
    for w in data.windows(2).take(64) {
        let header = [w[0], w[1]];
        let n = usize::from(u16::from_be_bytes(header) & !RECORD_KEY_UPDATE);
        match RecordOpener::parse_header(header) {
            Ok((cells, len)) => {
                assert!((1..=MAX_BATCH).contains(&n));
                assert_eq!(cells, n);
                assert_eq!(len, n * CELL_LEN + RECORD_TAG_LEN);
            }
            Err(_) => assert!(n == 0 || n > MAX_BATCH),
        }
    }
}

fn check(data: &[u8]) {
    check_handshake(data);
    check_record_headers(data);
}

fuzz_target!(|data: &[u8]| check(data));
