//! HTTP CONNECT parsing: vectors, credentials, pipelining, malformed input
//! and a deterministic random-input test.
#![allow(clippy::unwrap_used)]

use veilnet_socks::http_connect::{
    parse_request, response_bytes, ConnectRequest, HttpError, MAX_HEAD_LEN,
};
use veilnet_socks::{AddrError, Credentials, TargetAddr};

fn ip(s: &str) -> TargetAddr {
    TargetAddr::Ip(s.parse().unwrap())
}

fn dom(s: &str, port: u16) -> TargetAddr {
    TargetAddr::Domain(s.into(), port)
}

fn creds(u: &[u8], p: &[u8]) -> Option<Credentials> {
    Some(Credentials {
        username: u.to_vec(),
        password: p.to_vec(),
    })
}

fn valid_vectors() -> Vec<(&'static [u8], ConnectRequest)> {
    vec![
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            ConnectRequest { target: dom("example.com", 443), credentials: None },
        ),
        (
            b"CONNECT 192.0.2.1:80 HTTP/1.0\r\n\r\n",
            ConnectRequest { target: ip("192.0.2.1:80"), credentials: None },
        ),
        (
            b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\nUser-Agent: curl/8\r\n\r\n",
            ConnectRequest { target: ip("[2001:db8::1]:8443"), credentials: None },
        ),
        (
            b"CONNECT a-b_c.onion:65535 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6aHVudGVyMg==\r\n\r\n",
            ConnectRequest { target: dom("a-b_c.onion", 65535), credentials: creds(b"alice", b"hunter2") },
        ),
        // Case-insensitive header name and scheme, OWS, no padding,
        // password containing ':' ("u:p:q"), empty-valued header.
        (
            b"CONNECT h:1 HTTP/1.1\r\nX-Empty:\r\nproxy-AUTHORIZATION:\t bAsIc dTpwOnE \r\n\r\n",
            ConnectRequest { target: dom("h", 1), credentials: creds(b"u", b"p:q") },
        ),
        // Empty user and password.
        (
            b"CONNECT h:1 HTTP/1.1\r\nProxy-Authorization: Basic Og==\r\n\r\n",
            ConnectRequest { target: dom("h", 1), credentials: creds(b"", b"") },
        ),
    ]
}

#[test]
fn vectors() {
    for (input, expected) in valid_vectors() {
        assert_eq!(
            parse_request(input),
            Ok(Some((input.len(), expected))),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn pipelined_data_is_not_in_head() {
    for (input, expected) in valid_vectors() {
        let full = [input, b"\x16\x03\x01\x02\x00\r\n\r\nmore".as_slice()].concat();
        assert_eq!(parse_request(&full), Ok(Some((input.len(), expected))));
    }
}

#[test]
fn every_truncation_needs_more() {
    for (input, _) in valid_vectors() {
        for cut in 0..input.len() {
            assert_eq!(parse_request(&input[..cut]), Ok(None), "cut {cut}");
        }
    }
}

fn expect_err(input: &[u8], err: HttpError, status: u16) {
    assert_eq!(
        parse_request(input),
        Err(err.clone()),
        "{}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(err.status(), status);
    assert!(!err.to_string().is_empty());
}

#[test]
fn method_not_allowed() {
    let get = || HttpError::MethodNotAllowed("GET".into());
    expect_err(b"GET http://example.com/ HTTP/1.1\r\n\r\n", get(), 405);
    // Detected before the head is complete.
    expect_err(b"GET ", get(), 405);
    // Methods are case-sensitive.
    expect_err(
        b"connect a:1 HTTP/1.1\r\n\r\n",
        HttpError::MethodNotAllowed("connect".into()),
        405,
    );
    // Long methods are cut in the error.
    let long = [vec![b'X'; 100], b" a:1 HTTP/1.1\r\n\r\n".to_vec()].concat();
    expect_err(&long, HttpError::MethodNotAllowed("X".repeat(32)), 405);
}

#[test]
fn malformed_requests() {
    let m = HttpError::Malformed;
    let cases: &[(&[u8], HttpError)] = &[
        // Not HTTP at all (a SOCKS5 greeting) fails on the first byte.
        (b"\x05\x01\x00", m("request line does not start with a method")),
        (b"\r\n\r\n", m("request line does not start with a method")),
        (b" CONNECT a:1 HTTP/1.1\r\n\r\n", m("request line does not start with a method")),
        (b"CONNECT a:1\r\n\r\n", m("request line is not 'METHOD target version'")),
        (b"CONNECT  a:1 HTTP/1.1\r\n\r\n", m("request line is not 'METHOD target version'")),
        (b"CONNECT a:1 HTTP/1.1 x\r\n\r\n", m("request line is not 'METHOD target version'")),
        (b"CONNECT a:1 HTTP/1.1x\r\n\r\n", m("invalid HTTP version")),
        (b"CONNECT a:1 http/1.1\r\n\r\n", m("invalid HTTP version")),
        (b"CONNECT a HTTP/1.1\r\n\r\n", m("missing port in target")),
        (b"CONNECT a: HTTP/1.1\r\n\r\n", m("port is not a decimal number")),
        (b"CONNECT a:+80 HTTP/1.1\r\n\r\n", m("port is not a decimal number")),
        (b"CONNECT a:080080 HTTP/1.1\r\n\r\n", m("port is not a decimal number")),
        (b"CONNECT a:65536 HTTP/1.1\r\n\r\n", m("port out of range")),
        (b"CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n", m("IPv6 target must be in brackets")),
        (b"CONNECT [2001:db8::1]443 HTTP/1.1\r\n\r\n", m("missing port in target")),
        (b"CONNECT [2001:db8::1:443 HTTP/1.1\r\n\r\n", m("unterminated '[' in target")),
        (b"CONNECT [1.2.3.4]:443 HTTP/1.1\r\n\r\n", m("invalid IPv6 address in target")),
        (b"CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n", m("invalid IPv6 address in target")),
        (b"CONNECT a:1 HTTP/1.1\r\nBad\r\n\r\n", m("header line without ':'")),
        (b"CONNECT a:1 HTTP/1.1\r\n: v\r\n\r\n", m("invalid header name")),
        (b"CONNECT a:1 HTTP/1.1\r\nX Y: v\r\n\r\n", m("invalid header name")),
        (b"CONNECT a:1 HTTP/1.1\r\nHost : a\r\n\r\n", m("invalid header name")),
        (b"CONNECT a:1 HTTP/1.1\r\nA: b\r\n c\r\n\r\n", m("obsolete header line folding")),
        (b"CONNECT a:1 HTTP/1.1\r\nA: b\nB: c\r\n\r\n", m("bare CR, LF or NUL in request head")),
        (b"CONNECT a:1 HTTP/1.1\r\nA: b\rB: c\r\n\r\n", m("bare CR, LF or NUL in request head")),
        (b"CONNECT a:1 HTTP/1.1\r\nA: b\0\r\n\r\n", m("bare CR, LF or NUL in request head")),
        (
            b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic Og==\r\nProxy-Authorization: Basic Og==\r\n\r\n",
            m("duplicate Proxy-Authorization header"),
        ),
        (
            b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic\r\n\r\n",
            m("Proxy-Authorization without credentials"),
        ),
        (
            b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Digest abc\r\n\r\n",
            m("unsupported Proxy-Authorization scheme (only Basic)"),
        ),
        (
            b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic !!!!\r\n\r\n",
            m("invalid base64 in Proxy-Authorization"),
        ),
        (
            // base64("alice")
            b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U=\r\n\r\n",
            m("Basic credentials without ':'"),
        ),
    ];
    for (input, err) in cases {
        expect_err(input, err.clone(), 400);
    }
}

#[test]
fn invalid_targets() {
    let t = HttpError::InvalidTarget;
    expect_err(
        b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        t(AddrError::ZeroPort),
        400,
    );
    expect_err(
        b"CONNECT [::1]:0 HTTP/1.1\r\n\r\n",
        t(AddrError::ZeroPort),
        400,
    );
    expect_err(
        b"CONNECT 10.0.0.1:00000 HTTP/1.1\r\n\r\n",
        t(AddrError::ZeroPort),
        400,
    );
    expect_err(
        b"CONNECT :443 HTTP/1.1\r\n\r\n",
        t(AddrError::EmptyHostname),
        400,
    );
    expect_err(
        b"CONNECT exa%6dple.com:443 HTTP/1.1\r\n\r\n",
        t(AddrError::BadHostnameByte(b'%')),
        400,
    );
    expect_err(
        b"CONNECT user@host:443 HTTP/1.1\r\n\r\n",
        t(AddrError::BadHostnameByte(b'@')),
        400,
    );
    let long = format!("CONNECT {}:443 HTTP/1.1\r\n\r\n", "a".repeat(256));
    expect_err(long.as_bytes(), t(AddrError::HostnameTooLong(256)), 400);
}

#[test]
fn unsupported_version() {
    expect_err(
        b"CONNECT a:1 HTTP/2.0\r\n\r\n",
        HttpError::UnsupportedVersion("HTTP/2.0".into()),
        505,
    );
    expect_err(
        b"CONNECT a:1 HTTP/0.9\r\n\r\n",
        HttpError::UnsupportedVersion("HTTP/0.9".into()),
        505,
    );
}

/// A head of exactly `len` bytes, padded with one long header.
fn head_of_len(len: usize) -> Vec<u8> {
    let start = b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: ";
    let end = b"\r\n\r\n";
    let pad = len - start.len() - end.len();
    [start.as_slice(), &vec![b'p'; pad], end].concat()
}

#[test]
fn head_size_limit() {
    let ok = head_of_len(MAX_HEAD_LEN);
    assert_eq!(ok.len(), MAX_HEAD_LEN);
    let parsed = parse_request(&ok).unwrap().unwrap();
    assert_eq!(parsed.0, MAX_HEAD_LEN);
    // Pipelined data after a maximal head is fine.
    let with_data = [ok.as_slice(), b"data"].concat();
    assert_eq!(parse_request(&with_data).unwrap().unwrap().0, MAX_HEAD_LEN);

    let big = head_of_len(MAX_HEAD_LEN + 1);
    // Still waiting while fewer than MAX_HEAD_LEN bytes are buffered.
    assert_eq!(parse_request(&big[..MAX_HEAD_LEN - 1]), Ok(None));
    assert_eq!(
        parse_request(&big[..MAX_HEAD_LEN]),
        Err(HttpError::HeadTooLarge)
    );
    assert_eq!(parse_request(&big), Err(HttpError::HeadTooLarge));
    assert_eq!(HttpError::HeadTooLarge.status(), 431);

    // Many small headers are limited too, and a huge buffer is not scanned past the limit.
    let mut many = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
    while many.len() < 100_000 {
        many.extend_from_slice(b"X: y\r\n");
    }
    assert_eq!(parse_request(&many), Err(HttpError::HeadTooLarge));
}

#[test]
fn response_vectors() {
    assert_eq!(
        response_bytes(200, "Connection established"),
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    );
    assert_eq!(
        response_bytes(405, "Method Not Allowed"),
        b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        response_bytes(502, "Bad Gateway"),
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    // No response splitting through the reason phrase; bad status becomes 500.
    assert_eq!(
        response_bytes(42, "a\r\nSet-Cookie: x\u{7f}é"),
        b"HTTP/1.1 500 aSet-Cookie: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn display_round_trips_through_parser() {
    let targets = [
        ip("127.0.0.1:80"),
        ip("[2001:db8::1]:443"),
        ip("[::ffff:192.0.2.1]:1"),
        dom("example.com", 443),
        dom("x", 65535),
    ];
    for t in targets {
        let req = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n");
        let (_, parsed) = parse_request(req.as_bytes()).unwrap().unwrap();
        assert_eq!(parsed.target, t);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_inputs_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let seeds: Vec<&[u8]> = valid_vectors().into_iter().map(|v| v.0).collect();
    let alphabet = b"CONNECT :[]\r\n.0123456789abcdefHTTP/1Basic=";
    let mut outcomes = [0usize; 3];
    for i in 0..10_000 {
        let input: Vec<u8> = match i % 3 {
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut v = b"CONNECT ".to_vec();
                v.extend((0..rng.below(200)).map(|_| alphabet[rng.below(alphabet.len())]));
                if rng.below(2) == 0 {
                    v.extend_from_slice(b"\r\n\r\n");
                }
                v
            }
            _ => {
                let mut v = seeds[rng.below(seeds.len())].to_vec();
                for _ in 0..=rng.below(4) {
                    match rng.below(3) {
                        0 if !v.is_empty() => {
                            let at = rng.below(v.len());
                            v[at] = alphabet[rng.below(alphabet.len())];
                        }
                        1 => {
                            let at = rng.below(v.len() + 1);
                            v.insert(at, rng.next() as u8);
                        }
                        _ => v.truncate(rng.below(v.len() + 1)),
                    }
                }
                v
            }
        };
        let result = parse_request(&input);
        match &result {
            Ok(Some((n, req))) => {
                assert!(*n <= input.len() && *n <= MAX_HEAD_LEN);
                assert!(input[..*n].ends_with(b"\r\n\r\n"));
                // The head alone parses the same, and no shorter prefix completes.
                assert_eq!(parse_request(&input[..*n]), result);
                assert_eq!(parse_request(&input[..*n - 1]), Ok(None));
                // The target's Display form round-trips.
                let again = format!("CONNECT {} HTTP/1.1\r\n\r\n", req.target);
                let (_, re) = parse_request(again.as_bytes()).unwrap().unwrap();
                assert_eq!(re.target, req.target);
                outcomes[0] += 1;
            }
            Ok(None) => outcomes[1] += 1,
            Err(e) => {
                assert!([400, 405, 431, 505].contains(&e.status()));
                outcomes[2] += 1;
            }
        }
    }
    assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
}
