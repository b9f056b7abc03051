//! Fuzz the SOCKS5 server handshake.
//!
//! Checks: no panic; consumed counts are within the input; a NeedMore never
//! consumes; feeding the same bytes in two chunks gives the same outcome as
//! feeding them at once; a parsed request re-encodes and re-parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_socks::socks5::{
    auth_request_bytes, connect_request_bytes, Action, Handshake, Request, SocksError,
};

#[derive(Debug, PartialEq)]
struct Outcome {
    replies: Vec<Vec<u8>>,
    result: Result<Option<Request>, SocksError>,
    consumed: usize,
}

/// Drive a handshake as a caller would: the first `split` bytes arrive first,
/// the rest later.
fn drive(input: &[u8], split: usize) -> Outcome {
    let mut hs = Handshake::new();
    let mut replies = Vec::new();
    let mut consumed = 0;
    let mut available = split.min(input.len());
    loop {
        match hs.feed(&input[consumed..available]) {
            Ok((n, Action::NeedMore)) => {
                assert_eq!(n, 0);
                if available == input.len() {
                    return Outcome { replies, result: Ok(None), consumed };
                }
                available = input.len();
            }
            Ok((n, Action::Reply(r))) => {
                assert!(n > 0 && consumed + n <= available);
                consumed += n;
                replies.push(r);
            }
            Ok((n, Action::Request(req))) => {
                assert!(n > 0 && consumed + n <= available);
                assert_eq!(hs.feed(&[]), Err(SocksError::Finished));
                return Outcome { replies, result: Ok(Some(req)), consumed: consumed + n };
            }
            Err(e) => {
                assert!(hs.is_finished());
                let _ = e.reply();
                let _ = e.to_string();
                return Outcome { replies, result: Err(e), consumed };
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte picks where the input is split; the rest is the stream.
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = drive(input, input.len());
    let chunked = drive(input, usize::from(split));
    assert_eq!(whole, chunked);

    if let Ok(Some(req)) = &whole.result {
        // Round trip: re-encode the request and parse it again.
        let mut again = match &req.credentials {
            Some(c) => {
                let mut v = vec![5, 1, 2];
                v.extend(auth_request_bytes(c).expect("parsed credentials re-encode"));
                v
            }
            None => vec![5, 1, 0],
        };
        again.extend(connect_request_bytes(&req.target).expect("parsed target re-encodes"));
        let re = drive(&again, again.len());
        assert_eq!(re.result.as_ref(), Ok(&Some(req.clone())));
        assert_eq!(re.consumed, again.len());
    }
});
