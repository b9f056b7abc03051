//! Fuzz the cell decoder.
//!
//! The input is decoded as is (any length other than `CELL_LEN` must give
//! `BadLength`) and again padded with zeros / truncated to `CELL_LEN`, so that
//! most inputs reach the header checks. Checks: no panic; a decoded cell
//! re-encodes (`as_bytes`) to exactly its input and has a known command and a
//! circuit id unless it is padding; `handshake_msg` and `destroy_reason`
//! never panic, a handshake message is at most `MAX_HANDSHAKE_LEN` bytes taken
//! from the body and rebuilds the same message, a known destroy reason
//! rebuilds the same reason, and rebuilt cells carry no stale bytes (cell
//! buffers may be recycled).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_cell::{
    Cell, CellCommand, CellError, DestroyReason, BODY_LEN, CELL_LEN, MAX_HANDSHAKE_LEN,
    RELAY_PAYLOAD_LEN,
};

fn check_cell(bytes: &[u8]) {
    let cell = match Cell::decode(bytes) {
        Ok(cell) => cell,
        Err(CellError::BadLength(n)) => {
            assert_eq!(n, bytes.len());
            assert_ne!(n, CELL_LEN);
            return;
        }
        Err(CellError::UnknownCommand(c)) => {
            assert_eq!(bytes.len(), CELL_LEN);
            assert_eq!(c, bytes[4]);
            // Only the reserved numbers (see `CellCommand`) are unknown.
            assert!(c > CellCommand::RelayEarly as u8);
            assert_eq!(CellCommand::from_u8(c), None);
            return;
        }
        Err(CellError::ZeroCircId(cmd)) => {
            assert_eq!(bytes[..4], [0, 0, 0, 0]);
            assert_ne!(cmd, CellCommand::Padding);
            assert_eq!(cmd as u8, bytes[4]);
            return;
        }
        Err(e @ CellError::HandshakeTooLong(_)) => panic!("decode returned {e:?}"),
    };

    // Round trip: the cell is its bytes.
    assert_eq!(cell.as_bytes(), bytes);
    let raw = Cell::from_raw(cell.as_bytes()).expect("a decoded cell is CELL_LEN bytes");
    assert_eq!(raw.as_bytes(), cell.as_bytes());
    assert_eq!(cell.clone().as_bytes(), bytes);
    assert!(cell.validate().is_ok());
    let command = cell.command().expect("decoded cell has a known command");
    assert_eq!(command as u8, bytes[4]);
    let raw_id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    assert_eq!(cell.circ_id().map_or(0, |id| id.get()), raw_id);
    if command != CellCommand::Padding {
        assert!(cell.circ_id().is_some());
    }
    assert_eq!(cell.body().len(), BODY_LEN);
    assert_eq!(cell.relay_payload().len(), RELAY_PAYLOAD_LEN);
    let _ = format!("{cell:?}");

    // Handshake message: bounded, taken from the body, and rebuildable.
    match cell.handshake_msg() {
        Ok(msg) => {
            assert!(msg.len() <= MAX_HANDSHAKE_LEN);
            let len = usize::from(u16::from_be_bytes([bytes[5], bytes[6]]));
            assert_eq!(msg.len(), len);
            assert_eq!(msg, &cell.body()[2..2 + len]);
            if let Some(id) = cell.circ_id() {
                let again = Cell::handshake(id, command, msg).expect("short message fits");
                assert_eq!(again.handshake_msg(), Ok(msg));
                assert_eq!(again.as_bytes()[..7 + len], bytes[..7 + len]);
                assert!(
                    again.as_bytes()[7 + len..].iter().all(|&b| b == 0),
                    "stale bytes after a rebuilt handshake message"
                );
            }
        }
        Err(CellError::HandshakeTooLong(n)) => assert!(n > MAX_HANDSHAKE_LEN),
        Err(e) => panic!("handshake_msg returned {e:?}"),
    }

    // Destroy reason: total, and a known reason rebuilds.
    let reason = cell.destroy_reason();
    if reason != DestroyReason::None || bytes[5] == 0 {
        assert_eq!(reason as u8, bytes[5]);
    }
    if let Some(id) = cell.circ_id() {
        let rebuilt = Cell::destroy(id, reason);
        assert_eq!(rebuilt.destroy_reason(), reason);
        assert!(
            rebuilt.body()[1..].iter().all(|&b| b == 0),
            "stale bytes in a new DESTROY cell"
        );
    }
}

fn check(data: &[u8]) {
    check_cell(data);
    if data.len() != CELL_LEN {
        let mut buf = [0u8; CELL_LEN];
        let n = data.len().min(CELL_LEN);
        buf[..n].copy_from_slice(&data[..n]);
        check_cell(&buf);
    }
}

fuzz_target!(|data: &[u8]| check(data));
