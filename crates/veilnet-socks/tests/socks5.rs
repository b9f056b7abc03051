//! SOCKS5 handshake: test vectors, auth flows, pipelining, malformed input
//! and a deterministic random-input test.
#![allow(clippy::unwrap_used)]

use veilnet_socks::socks5::{
    auth_request_bytes, connect_request_bytes, reply_bytes, Action, Handshake, RefuseReason,
    ReplyCode, Request, SocksError, MAX_MESSAGE_LEN,
};
use veilnet_socks::{AddrError, Credentials, TargetAddr};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// What a caller ends up with after driving a handshake over some input.
#[derive(Debug, PartialEq)]
struct Outcome {
    replies: Vec<Vec<u8>>,
    result: Result<Option<Request>, SocksError>,
    consumed: usize,
}

/// Drive a handshake over `input` held in one buffer, as a caller would.
fn drive(input: &[u8]) -> Outcome {
    let mut hs = Handshake::new();
    let mut pos = 0;
    let mut replies = Vec::new();
    loop {
        match hs.feed(&input[pos..]) {
            Ok((n, action)) => {
                assert!(n <= input.len() - pos, "consumed more than given");
                pos += n;
                match action {
                    Action::NeedMore => {
                        assert_eq!(n, 0, "NeedMore must not consume");
                        assert!(!hs.is_finished());
                        return Outcome {
                            replies,
                            result: Ok(None),
                            consumed: pos,
                        };
                    }
                    Action::Reply(r) => {
                        assert!(n > 0, "a reply must consume a message");
                        replies.push(r);
                    }
                    Action::Request(req) => {
                        assert!(hs.is_finished());
                        assert_eq!(hs.feed(&input[pos..]), Err(SocksError::Finished));
                        return Outcome {
                            replies,
                            result: Ok(Some(req)),
                            consumed: pos,
                        };
                    }
                }
            }
            Err(e) => {
                assert!(hs.is_finished());
                assert_eq!(hs.feed(&input[pos..]), Err(SocksError::Finished));
                return Outcome {
                    replies,
                    result: Err(e),
                    consumed: pos,
                };
            }
        }
    }
}

/// Drive a handshake receiving one byte at a time.
fn drive_bytewise(input: &[u8]) -> Outcome {
    let mut hs = Handshake::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0;
    let mut replies = Vec::new();
    for &b in input {
        buf.push(b);
        loop {
            match hs.feed(&buf) {
                Ok((_, Action::NeedMore)) => break,
                Ok((n, Action::Reply(r))) => {
                    buf.drain(..n);
                    consumed += n;
                    replies.push(r);
                }
                Ok((n, Action::Request(req))) => {
                    return Outcome {
                        replies,
                        result: Ok(Some(req)),
                        consumed: consumed + n,
                    };
                }
                Err(e) => {
                    return Outcome {
                        replies,
                        result: Err(e),
                        consumed,
                    }
                }
            }
            assert!(buf.len() <= MAX_MESSAGE_LEN);
        }
    }
    Outcome {
        replies,
        result: Ok(None),
        consumed,
    }
}

fn request(target: &str, creds: Option<(&[u8], &[u8])>) -> Request {
    Request {
        target: match target.parse() {
            Ok(sa) => TargetAddr::Ip(sa),
            Err(_) => {
                let (host, port) = target.rsplit_once(':').unwrap();
                TargetAddr::Domain(host.into(), port.parse().unwrap())
            }
        },
        credentials: creds.map(|(u, p)| Credentials {
            username: u.to_vec(),
            password: p.to_vec(),
        }),
    }
}

/// (transcript, expected replies, expected request)
fn valid_vectors() -> Vec<(Vec<u8>, Vec<Vec<u8>>, Request)> {
    vec![
        // No auth, IPv4 127.0.0.1:80.
        (
            h("050100 050100017f0000010050"),
            vec![h("0500")],
            request("127.0.0.1:80", None),
        ),
        // No auth (offered with GSSAPI), domain example.com:443.
        (
            h("05020100 050100030b6578616d706c652e636f6d01bb"),
            vec![h("0500")],
            request("example.com:443", None),
        ),
        // No auth, IPv6 [2001:db8::1]:443.
        (
            h("050100 05010004 20010db8000000000000000000000001 01bb"),
            vec![h("0500")],
            request("[2001:db8::1]:443", None),
        ),
        // Username/password preferred over no-auth: alice / hunter2.
        (
            h("05020002 0105616c6963650768756e74657232 05010001c00002070016"),
            vec![h("0502"), h("0100")],
            request("192.0.2.7:22", Some((b"alice", b"hunter2"))),
        ),
        // Username/password with empty password, domain target.
        (
            h("050102 01017500 050100030f7777772e6578616d706c652e6f72670050"),
            vec![h("0502"), h("0100")],
            request("www.example.org:80", Some((b"u", b""))),
        ),
        // Binary username, 255-byte username and password.
        (
            [
                h("050102"),
                vec![1, 255],
                vec![0xAB; 255],
                vec![255],
                vec![0x00; 255],
                h("050100017f0000010050"),
            ]
            .concat(),
            vec![h("0502"), h("0100")],
            request("127.0.0.1:80", Some((&[0xAB; 255], &[0x00; 255]))),
        ),
    ]
}

#[test]
fn vectors() {
    for (input, replies, req) in valid_vectors() {
        let out = drive(&input);
        assert_eq!(
            out,
            Outcome {
                replies,
                result: Ok(Some(req)),
                consumed: input.len()
            },
            "input {}",
            hex::encode(&input)
        );
        assert_eq!(drive_bytewise(&input), out);
    }
}

#[test]
fn step_by_step_consumed_counts() {
    let mut hs = Handshake::new();
    assert_eq!(hs.feed(&[]).unwrap(), (0, Action::NeedMore));
    assert_eq!(
        hs.feed(&h("050100")).unwrap(),
        (3, Action::Reply(h("0500")))
    );
    assert_eq!(hs.feed(&h("0501000301")).unwrap(), (0, Action::NeedMore));
    let (n, action) = hs.feed(&h("050100030161 0050")).unwrap();
    assert_eq!(n, 8);
    assert_eq!(action, Action::Request(request("a:80", None)));
}

#[test]
fn pipelined_data_is_not_consumed() {
    let early = b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n";
    for (input, replies, req) in valid_vectors() {
        let full = [input.as_slice(), early].concat();
        let out = drive(&full);
        assert_eq!(
            out,
            Outcome {
                replies,
                result: Ok(Some(req)),
                consumed: input.len()
            }
        );
        assert_eq!(&full[out.consumed..], early);
    }
}

#[test]
fn every_truncation_needs_more() {
    for (input, replies, _) in valid_vectors() {
        for cut in 0..input.len() {
            let out = drive(&input[..cut]);
            assert_eq!(
                out.result,
                Ok(None),
                "cut at {cut} of {}",
                hex::encode(&input)
            );
            assert!(out.replies.len() <= replies.len());
            assert_eq!(out.replies[..], replies[..out.replies.len()]);
            assert_eq!(drive_bytewise(&input[..cut]), out);
        }
    }
}

fn expect_err(input: &[u8], err: SocksError, reply: Option<Vec<u8>>) {
    let out = drive(input);
    assert_eq!(out.result, Err(err.clone()), "input {}", hex::encode(input));
    assert_eq!(err.reply(), reply);
    assert!(!err.to_string().is_empty());
    assert_eq!(drive_bytewise(input).result, Err(err));
}

#[test]
fn wrong_version() {
    // SOCKS4 CONNECT to 127.0.0.1:80.
    expect_err(
        &h("04010050 7f000001 00"),
        SocksError::UnsupportedVersion(4),
        None,
    );
    // An HTTP request sent to the SOCKS port fails on the first byte.
    expect_err(b"G", SocksError::UnsupportedVersion(b'G'), None);
    // Version 4 in the request after a good method negotiation.
    expect_err(
        &h("050100 04010050"),
        SocksError::UnsupportedVersion(4),
        None,
    );
    assert_eq!(
        SocksError::UnsupportedVersion(4).to_string(),
        "unsupported SOCKS version 0x04 (only SOCKS5 is supported)"
    );
}

#[test]
fn method_negotiation_failures() {
    expect_err(&h("0500"), SocksError::NoMethods, Some(h("05ff")));
    // GSSAPI only.
    expect_err(
        &h("050101"),
        SocksError::NoAcceptableMethod { offered: vec![1] },
        Some(h("05ff")),
    );
    expect_err(
        &h("0503010380"),
        SocksError::NoAcceptableMethod {
            offered: vec![1, 3, 0x80],
        },
        Some(h("05ff")),
    );
}

#[test]
fn auth_failures() {
    expect_err(
        &h("050102 05"),
        SocksError::UnsupportedAuthVersion(5),
        Some(h("0101")),
    );
    expect_err(
        &h("050102 0100"),
        SocksError::EmptyUsername,
        Some(h("0101")),
    );
}

fn refused(code: ReplyCode, reason: RefuseReason) -> SocksError {
    SocksError::Refused { code, reason }
}

#[test]
fn request_refusals() {
    // BIND and UDP ASSOCIATE: refused as soon as the command byte arrives.
    expect_err(
        &h("050100 0502"),
        refused(
            ReplyCode::CommandNotSupported,
            RefuseReason::UnsupportedCommand(2),
        ),
        Some(h("05070001000000000000")),
    );
    expect_err(
        &h("050100 05030001 00000000 0000"),
        refused(
            ReplyCode::CommandNotSupported,
            RefuseReason::UnsupportedCommand(3),
        ),
        Some(h("05070001000000000000")),
    );
    // Unknown address type.
    expect_err(
        &h("050100 05010002 00"),
        refused(
            ReplyCode::AddressTypeNotSupported,
            RefuseReason::UnsupportedAddressType(2),
        ),
        Some(h("05080001000000000000")),
    );
    // Reserved byte not 0.
    expect_err(
        &h("050100 050101"),
        refused(ReplyCode::GeneralFailure, RefuseReason::NonZeroReserved(1)),
        Some(h("05010001000000000000")),
    );
    let bad_target = |e| refused(ReplyCode::GeneralFailure, RefuseReason::InvalidTarget(e));
    let gf = Some(h("05010001000000000000"));
    // Empty domain: refused at the length byte.
    expect_err(
        &h("050100 0501000300"),
        bad_target(AddrError::EmptyHostname),
        gf.clone(),
    );
    // Domain with a space, with NUL, non-ASCII.
    expect_err(
        &h("050100 0501000303612062 0050"),
        bad_target(AddrError::BadHostnameByte(b' ')),
        gf.clone(),
    );
    expect_err(
        &h("050100 0501000303610062 0050"),
        bad_target(AddrError::BadHostnameByte(0)),
        gf.clone(),
    );
    expect_err(
        &h("050100 0501000302c3a9 0050"),
        bad_target(AddrError::BadHostnameByte(0xc3)),
        gf.clone(),
    );
    // Port 0, for each address type.
    expect_err(
        &h("050100 05010001 7f000001 0000"),
        bad_target(AddrError::ZeroPort),
        gf.clone(),
    );
    expect_err(
        &h("050100 0501000301610000"),
        bad_target(AddrError::ZeroPort),
        gf.clone(),
    );
    expect_err(
        &h("050100 05010004 00000000000000000000000000000001 0000"),
        bad_target(AddrError::ZeroPort),
        gf,
    );
}

#[test]
fn ipv4_literal_domain_is_normalised() {
    let out = drive(&h("050100 0501000309 3139322e302e322e31 01bb"));
    assert_eq!(out.result, Ok(Some(request("192.0.2.1:443", None))));
}

#[test]
fn feeding_after_finish_errors() {
    let mut hs = Handshake::default();
    assert!(hs.feed(&h("050100")).is_ok());
    assert!(matches!(
        hs.feed(&h("050100017f0000010050")).unwrap().1,
        Action::Request(_)
    ));
    assert_eq!(hs.feed(&h("050100")), Err(SocksError::Finished));
    assert_eq!(SocksError::Finished.reply(), None);

    let mut hs = Handshake::new();
    assert_eq!(hs.feed(&h("0500")), Err(SocksError::NoMethods));
    assert_eq!(hs.feed(&h("050100")), Err(SocksError::Finished));
}

#[test]
fn reply_vectors() {
    assert_eq!(
        reply_bytes(ReplyCode::Succeeded, None),
        h("05000001000000000000")
    );
    assert_eq!(
        reply_bytes(
            ReplyCode::HostUnreachable,
            Some("10.1.2.3:8080".parse().unwrap())
        ),
        h("050400010a0102031f90")
    );
    assert_eq!(
        reply_bytes(
            ReplyCode::Succeeded,
            Some("[2001:db8::2]:443".parse().unwrap())
        ),
        h("0500000420010db800000000000000000000000201bb")
    );
    let codes = [
        ReplyCode::Succeeded,
        ReplyCode::GeneralFailure,
        ReplyCode::NotAllowedByRuleset,
        ReplyCode::NetworkUnreachable,
        ReplyCode::HostUnreachable,
        ReplyCode::ConnectionRefused,
        ReplyCode::TtlExpired,
        ReplyCode::CommandNotSupported,
        ReplyCode::AddressTypeNotSupported,
    ];
    for (i, code) in codes.into_iter().enumerate() {
        assert_eq!(usize::from(code.as_u8()), i);
        assert_eq!(reply_bytes(code, None)[1], code.as_u8());
    }
}

#[test]
fn client_encoders_round_trip() {
    let targets = [
        TargetAddr::Ip("127.0.0.1:80".parse().unwrap()),
        TargetAddr::Ip("[2001:db8::1]:443".parse().unwrap()),
        TargetAddr::Domain("example.com".into(), 443),
        TargetAddr::Domain("a".repeat(255), 65535),
    ];
    let creds = Credentials {
        username: b"iso-1".to_vec(),
        password: b"x".to_vec(),
    };
    for t in targets {
        let req = connect_request_bytes(&t).unwrap();
        let input = [h("050102"), auth_request_bytes(&creds).unwrap(), req].concat();
        let out = drive(&input);
        assert_eq!(
            out.result,
            Ok(Some(Request {
                target: t,
                credentials: Some(creds.clone())
            }))
        );
    }
    assert_eq!(
        connect_request_bytes(&TargetAddr::Domain("a".repeat(256), 1)),
        Err(AddrError::HostnameTooLong(256))
    );
    assert_eq!(
        connect_request_bytes(&TargetAddr::Domain(String::new(), 1)),
        Err(AddrError::EmptyHostname)
    );
    assert_eq!(
        auth_request_bytes(&Credentials {
            username: vec![],
            password: vec![]
        }),
        None
    );
    assert_eq!(
        auth_request_bytes(&Credentials {
            username: vec![1; 256],
            password: vec![]
        }),
        None
    );
}

/// xorshift64*: deterministic, dependency-free.
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
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    let seeds: Vec<Vec<u8>> = valid_vectors().into_iter().map(|v| v.0).collect();
    let mut outcomes = [0usize; 3];
    for i in 0..10_000 {
        let input: Vec<u8> = if i % 2 == 0 {
            // Pure random bytes, biased to start with 5 so parsing goes deep.
            let len = rng.below(600);
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = v.first_mut() {
                if rng.below(2) == 0 {
                    *first = 5;
                }
            }
            v
        } else {
            // A valid transcript with a few mutations.
            let mut v = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 if !v.is_empty() => {
                        let at = rng.below(v.len());
                        v[at] = rng.next() as u8;
                    }
                    1 => {
                        let at = rng.below(v.len() + 1);
                        v.insert(at, rng.next() as u8);
                    }
                    _ => v.truncate(rng.below(v.len() + 1)),
                }
            }
            v
        };
        let out = drive(&input);
        assert!(out.consumed <= input.len());
        assert_eq!(drive_bytewise(&input), out, "input {}", hex::encode(&input));
        outcomes[match out.result {
            Ok(Some(_)) => 0,
            Ok(None) => 1,
            Err(_) => 2,
        }] += 1;
    }
    // The generator really exercises all three outcomes.
    assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
}
