//! Fuzz the relay message decoder.
//!
//! The input is padded with zeros / truncated to `RELAY_PAYLOAD_LEN`. Checks:
//! no panic; the raw input decodes only if it is exactly one payload long;
//! a decoded message re-encodes with `encode_relay` (every decodable message
//! is encodable), the re-encoding zeroes everything after the message and
//! decodes to the same stream id and message (round trip), and encoding that
//! again gives the same bytes (the encoding is canonical); a decoded BEGIN
//! hostname passes `validate_hostname`, the check the SOCKS5 and HTTP
//! CONNECT parsers apply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_cell::{
    decode_relay, encode_relay, validate_hostname, RelayError, RelayMsg, TargetAddr,
    RELAY_DATA_MAX, RELAY_HEADER_LEN, RELAY_PAYLOAD_LEN,
};

fn check(data: &[u8]) {
    if data.len() != RELAY_PAYLOAD_LEN {
        assert_eq!(
            decode_relay(data),
            Err(RelayError::BadPayloadSize(data.len()))
        );
    }

    let mut payload = [0u8; RELAY_PAYLOAD_LEN];
    let n = data.len().min(RELAY_PAYLOAD_LEN);
    payload[..n].copy_from_slice(&data[..n]);

    let (stream, msg) = match decode_relay(&payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(stream.0, u16::from_be_bytes([payload[1], payload[2]]));
    if let RelayMsg::Begin(TargetAddr::Domain(name, _)) = &msg {
        assert_eq!(validate_hostname(name.as_bytes()), Ok(()), "{name:?}");
    }

    // Dirty buffer: encode_relay must overwrite or zero every byte.
    let mut again = [0xA5u8; RELAY_PAYLOAD_LEN];
    if let Err(e) = encode_relay(&mut again, stream, &msg) {
        panic!("decoded message {msg:?} does not re-encode: {e}");
    }
    let len = usize::from(u16::from_be_bytes([again[3], again[4]]));
    assert!(len <= RELAY_DATA_MAX);
    assert_eq!(again[0], payload[0], "command byte changed");
    assert!(
        again[RELAY_HEADER_LEN + len..].iter().all(|&b| b == 0),
        "bytes after the message are not zeroed"
    );

    match decode_relay(&again) {
        Ok((s2, m2)) => {
            assert_eq!(s2, stream);
            assert_eq!(m2, msg, "relay message did not round-trip");
            let mut third = [0x5Au8; RELAY_PAYLOAD_LEN];
            encode_relay(&mut third, s2, &m2).expect("re-decoded message re-encodes");
            assert_eq!(third, again, "encoding is not canonical");
        }
        Err(e) => panic!("re-encoded {msg:?} does not decode: {e}"),
    }
}

fuzz_target!(|data: &[u8]| check(data));
