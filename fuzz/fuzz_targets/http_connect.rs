//! Fuzz the HTTP CONNECT request head parser.
//!
//! Checks: no panic; a parsed head ends in CRLFCRLF within the input and the
//! size limit; the head alone parses the same and its prefixes are
//! incomplete; the target's Display form parses back to the same target;
//! response encoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilnet_socks::http_connect::{parse_request, response_bytes, MAX_HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    let result = parse_request(data);
    match &result {
        Ok(Some((n, req))) => {
            let n = *n;
            assert!(n <= data.len() && n <= MAX_HEAD_LEN);
            assert!(data[..n].ends_with(b"\r\n\r\n"));
            assert_eq!(parse_request(&data[..n]), result);
            assert_eq!(parse_request(&data[..n - 1]), Ok(None));

            let again = format!("CONNECT {} HTTP/1.1\r\n\r\n", req.target);
            match parse_request(again.as_bytes()) {
                Ok(Some((len, re))) => {
                    assert_eq!(len, again.len());
                    assert_eq!(re.target, req.target);
                }
                other => panic!("target {} did not round-trip: {other:?}", req.target),
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEAD_LEN),
        Err(e) => {
            let _ = response_bytes(e.status(), &e.to_string());
        }
    }
    if let Ok(reason) = std::str::from_utf8(data) {
        let status = data.first().map_or(200, |&b| u16::from(b) * 4);
        let resp = response_bytes(status, reason);
        assert!(resp.starts_with(b"HTTP/1.1 ") && resp.ends_with(b"\r\n\r\n"));
        // The reason phrase cannot inject lines: no bare CR or LF, and exactly
        // the status line, the fixed headers and the empty line.
        let crlf = resp.windows(2).filter(|w| w == b"\r\n").count();
        assert_eq!(crlf, resp.iter().filter(|&&b| b == b'\n').count());
        assert_eq!(crlf, resp.iter().filter(|&&b| b == b'\r').count());
        let expected = match status {
            200..=299 => 2,
            405 => 5,
            _ => 4,
        };
        assert_eq!(crlf, expected);
    }
});
