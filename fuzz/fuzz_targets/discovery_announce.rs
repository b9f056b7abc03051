//! Fuzz the announcement stream's frames.
//!
//! Checks: no panic; a frame body is accepted only if re-encoding it gives
//! back exactly its length prefix and that body; a length prefix is
//! accepted only within the frame limits; an accepted frame stands for a
//! sync message (short ids as their stand-in digests) that maps back to
//! the same frame (the empty lists and
//! empty frames aside, which have no message of their own).
#![no_main]

use libfuzzer_sys::fuzz_target;

use veilnet_discovery::announce::{self, Frame, LENGTH_BYTES};
use veilnet_discovery::sync::{self, SyncLimits, SyncMessage};

const LIMITS: SyncLimits = SyncLimits {
    max_records: 64,
    max_record_len: 1024,
    max_message_bytes: 4 * 1024 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let limits = announce::frame_limits(&LIMITS);
    if let Some(prefix) = data.first_chunk::<LENGTH_BYTES>() {
        if let Ok(len) = Frame::body_len(*prefix, &limits) {
            assert!(len <= announce::max_body(&limits));
        }
    }
    let Ok(frame) = Frame::decode(data, &limits) else {
        return;
    };
    let wire = frame.encode();
    assert_eq!(wire.len(), frame.encoded_len());
    assert_eq!(&wire[LENGTH_BYTES..], data, "encoding did not round-trip");
    let prefix = wire.first_chunk::<LENGTH_BYTES>().expect("a prefix");
    assert_eq!(Frame::body_len(*prefix, &limits), Ok(data.len()));
    let empty = match &frame {
        Frame::Announce(d) | Frame::Want(d) => d.is_empty(),
        Frame::Records(r) => r.is_empty(),
    };
    // The sync message a frame stands for (short ids as their stand-in
    // digests) maps back to it; an announcement's come back sorted and
    // without repeats.
    let (msg, expected) = match &frame {
        Frame::Announce(d) => {
            let mut d = d.clone();
            d.sort_unstable();
            d.dedup();
            let full: Vec<_> = d.iter().map(announce::stand_in).collect();
            (sync::announce(&full), Frame::Announce(d))
        }
        Frame::Want(d) => (
            SyncMessage {
                want: d.iter().map(announce::stand_in).collect(),
                ..SyncMessage::default()
            },
            frame.clone(),
        ),
        Frame::Records(r) => (
            SyncMessage {
                records: r.clone(),
                ..SyncMessage::default()
            },
            frame.clone(),
        ),
    };
    if !empty {
        assert_eq!(Frame::len_of(&msg), Some(expected.encoded_len()));
        assert_eq!(Frame::from_message(&msg), Some(expected));
    }
});
