//! Relay messages: what a relay payload holds once every onion layer is removed.
//!
//! Layout inside the [`RELAY_PAYLOAD_LEN`]-byte payload:
//! `command: u8 | stream_id: u16 | length: u16 | data[length] | zero padding`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::{validate_hostname, AddrError, TargetAddr, RELAY_PAYLOAD_LEN};

/// Length of the relay message header.
pub const RELAY_HEADER_LEN: usize = 5;
/// Most data bytes one relay message can carry.
pub const RELAY_DATA_MAX: usize = RELAY_PAYLOAD_LEN - RELAY_HEADER_LEN;

/// A stream id, local to one circuit. Zero means "the circuit itself".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u16);

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// Orderly end of this direction (TCP FIN): the other direction may go on.
    Done = 1,
    /// Some other failure.
    Misc = 2,
    /// The exit could not resolve the name.
    ResolveFailed = 3,
    /// The target refused the connection.
    ConnectRefused = 4,
    /// The exit's policy refuses this target.
    ExitPolicy = 5,
    /// Connecting timed out.
    Timeout = 6,
    /// The target network is unreachable.
    NetUnreachable = 7,
    /// The target host is unreachable.
    HostUnreachable = 8,
    /// The circuit went away.
    Destroyed = 9,
    /// The peer violated the stream protocol.
    Protocol = 10,
    /// The connection was reset.
    Reset = 11,
}

impl EndReason {
    fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::Done,
            3 => Self::ResolveFailed,
            4 => Self::ConnectRefused,
            5 => Self::ExitPolicy,
            6 => Self::Timeout,
            7 => Self::NetUnreachable,
            8 => Self::HostUnreachable,
            9 => Self::Destroyed,
            10 => Self::Protocol,
            11 => Self::Reset,
            _ => Self::Misc,
        }
    }
}

/// Relay message commands (byte 0 of a relay payload).
///
/// Numbers 1 to 8 are assigned below; 0 is reserved (never assigned, so an
/// all-zero payload is never a message), 9..=127 are reserved for future
/// messages, 128..=255 for experiments between consenting endpoints.
/// [`decode_relay`] returns [`RelayError::UnknownCommand`] for any of them;
/// the engine counts and ignores such a message (it does not destroy the
/// circuit), so new messages can be deployed without breaking older nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayCommand {
    /// Open a stream to a target (client to exit).
    Begin = 1,
    /// The stream is connected (exit to client).
    Connected = 2,
    /// Stream data.
    Data = 3,
    /// The stream ended (see [`EndReason`]).
    End = 4,
    /// Flow-control credit: stream id 0 for the circuit window.
    Sendme = 5,
    /// Extend the circuit by one hop (client to last hop).
    Extend = 6,
    /// The circuit was extended (last hop to client).
    Extended = 7,
    /// Long-range padding: dropped by the receiver.
    Drop = 8,
}

impl RelayCommand {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Begin,
            2 => Self::Connected,
            3 => Self::Data,
            4 => Self::End,
            5 => Self::Sendme,
            6 => Self::Extend,
            7 => Self::Extended,
            8 => Self::Drop,
            _ => return None,
        })
    }
}

/// A decoded relay message, borrowing from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMsg<'a> {
    /// Open a stream.
    Begin(TargetAddr),
    /// Stream connected.
    Connected,
    /// Stream data.
    Data(&'a [u8]),
    /// Stream ended.
    End(EndReason),
    /// Flow-control credit.
    Sendme,
    /// Extend to the relay with this identity, reachable at this link address.
    Extend {
        /// The next hop's peer id (libp2p multihash bytes).
        peer_id: &'a [u8],
        /// The next hop's link address.
        addr: SocketAddr,
        /// The next hop's link key (from its descriptor): without it the next
        /// hop does not answer a link handshake.
        link_key: [u8; 32],
        /// The client's handshake message for the next hop.
        handshake: &'a [u8],
    },
    /// The next hop answered.
    Extended {
        /// The next hop's handshake reply.
        handshake: &'a [u8],
    },
    /// Padding.
    Drop,
}

/// Errors decoding a relay message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RelayError {
    /// Unknown relay command.
    #[error("unknown relay command {0}")]
    UnknownCommand(u8),
    /// The length field exceeds the payload.
    #[error("relay length {0} exceeds {RELAY_DATA_MAX}")]
    BadLength(usize),
    /// The payload buffer has the wrong size.
    #[error("relay payload has {0} bytes, expected {RELAY_PAYLOAD_LEN}")]
    BadPayloadSize(usize),
    /// A field inside the message is malformed.
    #[error("malformed {command:?} message: {what}")]
    Malformed {
        /// Which message.
        command: RelayCommand,
        /// What is wrong.
        what: &'static str,
    },
    /// Data to encode does not fit one message.
    #[error("message body of {0} bytes does not fit in {RELAY_DATA_MAX}")]
    TooLong(usize),
    /// A target to encode holds a hostname that [`validate_hostname`] refuses
    /// (the decoder would refuse it too).
    #[error("invalid target: {0}")]
    InvalidTarget(#[from] AddrError),
}

/// Decodes the message in a relay payload of exactly [`RELAY_PAYLOAD_LEN`] bytes.
pub fn decode_relay(payload: &[u8]) -> Result<(StreamId, RelayMsg<'_>), RelayError> {
    if payload.len() != RELAY_PAYLOAD_LEN {
        return Err(RelayError::BadPayloadSize(payload.len()));
    }
    let command =
        RelayCommand::from_u8(payload[0]).ok_or(RelayError::UnknownCommand(payload[0]))?;
    let stream = StreamId(u16::from_be_bytes([payload[1], payload[2]]));
    let len = u16::from_be_bytes([payload[3], payload[4]]) as usize;
    if len > RELAY_DATA_MAX {
        return Err(RelayError::BadLength(len));
    }
    let body = &payload[RELAY_HEADER_LEN..RELAY_HEADER_LEN + len];
    let malformed = |what| RelayError::Malformed { command, what };
    let msg = match command {
        RelayCommand::Begin => {
            let mut r = Reader(body);
            let target = r.target().ok_or_else(|| malformed("bad target"))?;
            RelayMsg::Begin(target)
        }
        RelayCommand::Connected => RelayMsg::Connected,
        RelayCommand::Data => RelayMsg::Data(body),
        RelayCommand::End => RelayMsg::End(EndReason::from_u8(
            *body.first().ok_or_else(|| malformed("empty"))?,
        )),
        RelayCommand::Sendme => RelayMsg::Sendme,
        RelayCommand::Extend => {
            let mut r = Reader(body);
            let peer_id = r.bytes8().ok_or_else(|| malformed("bad peer id"))?;
            let addr = match r.target() {
                Some(TargetAddr::Ip(a)) => a,
                _ => return Err(malformed("bad address")),
            };
            let link_key: [u8; 32] = r
                .take(32)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| malformed("bad link key"))?;
            let handshake = r.bytes16().ok_or_else(|| malformed("bad handshake"))?;
            RelayMsg::Extend {
                peer_id,
                addr,
                link_key,
                handshake,
            }
        }
        RelayCommand::Extended => {
            let mut r = Reader(body);
            let handshake = r.bytes16().ok_or_else(|| malformed("bad handshake"))?;
            RelayMsg::Extended { handshake }
        }
        RelayCommand::Drop => RelayMsg::Drop,
    };
    Ok((stream, msg))
}

/// Encodes a message into a relay payload of exactly [`RELAY_PAYLOAD_LEN`] bytes.
/// The bytes after the message are zeroed.
pub fn encode_relay(
    payload: &mut [u8],
    stream: StreamId,
    msg: &RelayMsg<'_>,
) -> Result<(), RelayError> {
    if payload.len() != RELAY_PAYLOAD_LEN {
        return Err(RelayError::BadPayloadSize(payload.len()));
    }
    let mut w = Writer {
        buf: &mut payload[RELAY_HEADER_LEN..],
        pos: 0,
    };
    let command = match msg {
        RelayMsg::Begin(t) => {
            w.target(t)?;
            RelayCommand::Begin
        }
        RelayMsg::Connected => RelayCommand::Connected,
        RelayMsg::Data(d) => {
            w.put(d)?;
            RelayCommand::Data
        }
        RelayMsg::End(r) => {
            w.put(&[*r as u8])?;
            RelayCommand::End
        }
        RelayMsg::Sendme => RelayCommand::Sendme,
        RelayMsg::Extend {
            peer_id,
            addr,
            link_key,
            handshake,
        } => {
            let pid_len =
                u8::try_from(peer_id.len()).map_err(|_| RelayError::TooLong(peer_id.len()))?;
            w.put(&[pid_len])?;
            w.put(peer_id)?;
            w.target(&TargetAddr::Ip(*addr))?;
            w.put(link_key)?;
            w.bytes16(handshake)?;
            RelayCommand::Extend
        }
        RelayMsg::Extended { handshake } => {
            w.bytes16(handshake)?;
            RelayCommand::Extended
        }
        RelayMsg::Drop => RelayCommand::Drop,
    };
    let len = w.pos;
    payload[RELAY_HEADER_LEN + len..].fill(0);
    write_header(payload, command, stream, len);
    Ok(())
}

/// Writes a DATA header for `len` bytes already placed at
/// `payload[RELAY_HEADER_LEN..RELAY_HEADER_LEN + len]` (lets the caller read
/// from a socket straight into the cell), and zeroes the rest.
pub fn encode_data_in_place(
    payload: &mut [u8],
    stream: StreamId,
    len: usize,
) -> Result<(), RelayError> {
    if payload.len() != RELAY_PAYLOAD_LEN {
        return Err(RelayError::BadPayloadSize(payload.len()));
    }
    if len > RELAY_DATA_MAX {
        return Err(RelayError::TooLong(len));
    }
    payload[RELAY_HEADER_LEN + len..].fill(0);
    write_header(payload, RelayCommand::Data, stream, len);
    Ok(())
}

fn write_header(payload: &mut [u8], command: RelayCommand, stream: StreamId, len: usize) {
    payload[0] = command as u8;
    payload[1..3].copy_from_slice(&stream.0.to_be_bytes());
    // `len` is at most RELAY_DATA_MAX < 65536.
    payload[3..5].copy_from_slice(&(len as u16).to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn bytes8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// `atyp | addr | port` as in SOCKS5: 1 = IPv4, 3 = domain (u8 length), 4 = IPv6.
    fn target(&mut self) -> Option<TargetAddr> {
        match self.u8()? {
            1 => {
                let b: [u8; 4] = self.take(4)?.try_into().ok()?;
                let port = self.u16()?;
                Some(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(b)),
                    port,
                )))
            }
            3 => {
                let name = self.bytes8()?;
                let port = self.u16()?;
                // The same check as the SOCKS5 and HTTP CONNECT parsers: a
                // BEGIN never carries a name a local client could not send.
                validate_hostname(name).ok()?;
                // Valid hostnames are ASCII, so this never fails.
                let name = std::str::from_utf8(name).ok()?.to_owned();
                Some(TargetAddr::Domain(name, port))
            }
            4 => {
                let b: [u8; 16] = self.take(16)?.try_into().ok()?;
                let port = self.u16()?;
                Some(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(b)),
                    port,
                )))
            }
            _ => None,
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), RelayError> {
        let end = self.pos + b.len();
        if end > RELAY_DATA_MAX {
            return Err(RelayError::TooLong(end));
        }
        self.buf[self.pos..end].copy_from_slice(b);
        self.pos = end;
        Ok(())
    }
    fn bytes16(&mut self, b: &[u8]) -> Result<(), RelayError> {
        let n = u16::try_from(b.len()).map_err(|_| RelayError::TooLong(b.len()))?;
        self.put(&n.to_be_bytes())?;
        self.put(b)
    }
    fn target(&mut self, t: &TargetAddr) -> Result<(), RelayError> {
        match t {
            TargetAddr::Ip(SocketAddr::V4(a)) => {
                self.put(&[1])?;
                self.put(&a.ip().octets())?;
                self.put(&a.port().to_be_bytes())
            }
            TargetAddr::Ip(SocketAddr::V6(a)) => {
                self.put(&[4])?;
                self.put(&a.ip().octets())?;
                self.put(&a.port().to_be_bytes())
            }
            TargetAddr::Domain(name, port) => {
                validate_hostname(name.as_bytes())?;
                // At most MAX_HOSTNAME_LEN (255) once validated.
                let n =
                    u8::try_from(name.len()).map_err(|_| AddrError::HostnameTooLong(name.len()))?;
                self.put(&[3, n])?;
                self.put(name.as_bytes())?;
                self.put(&port.to_be_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(stream: u16, msg: RelayMsg<'_>) {
        let mut p = [0xAAu8; RELAY_PAYLOAD_LEN];
        encode_relay(&mut p, StreamId(stream), &msg).unwrap();
        let (s, back) = decode_relay(&p).unwrap();
        assert_eq!(s, StreamId(stream));
        assert_eq!(back, msg);
    }

    #[test]
    fn roundtrips() {
        roundtrip(
            1,
            RelayMsg::Begin(TargetAddr::Domain("example.com".into(), 443)),
        );
        roundtrip(
            2,
            RelayMsg::Begin(TargetAddr::Ip("10.1.2.3:80".parse().unwrap())),
        );
        roundtrip(
            3,
            RelayMsg::Begin(TargetAddr::Ip("[::1]:8080".parse().unwrap())),
        );
        roundtrip(4, RelayMsg::Connected);
        roundtrip(5, RelayMsg::Data(&[7u8; RELAY_DATA_MAX]));
        roundtrip(6, RelayMsg::End(EndReason::ConnectRefused));
        roundtrip(0, RelayMsg::Sendme);
        roundtrip(
            0,
            RelayMsg::Extend {
                peer_id: &[1, 2, 3],
                addr: "127.0.0.1:9000".parse().unwrap(),
                link_key: [4; 32],
                handshake: &[9; 48],
            },
        );
        roundtrip(
            0,
            RelayMsg::Extended {
                handshake: &[5; 48],
            },
        );
        roundtrip(0, RelayMsg::Drop);
    }

    #[test]
    fn begin_vector() {
        let mut p = [0u8; RELAY_PAYLOAD_LEN];
        let t = TargetAddr::Domain("a.b".into(), 80);
        encode_relay(&mut p, StreamId(0x0102), &RelayMsg::Begin(t)).unwrap();
        assert_eq!(hex::encode(&p[..12]), "01010200070303612e620050");
        assert!(p[12..].iter().all(|b| *b == 0), "padding is zeroed");
    }

    /// A BEGIN whose domain is `name`, encoded by hand (bypassing the encoder).
    fn raw_begin(name: &[u8]) -> [u8; RELAY_PAYLOAD_LEN] {
        let mut p = [0u8; RELAY_PAYLOAD_LEN];
        let body_len = 2 + name.len() + 2;
        p[0] = RelayCommand::Begin as u8;
        p[3..5].copy_from_slice(&(body_len as u16).to_be_bytes());
        p[5] = 3;
        p[6] = name.len() as u8;
        p[7..7 + name.len()].copy_from_slice(name);
        p[7 + name.len()..9 + name.len()].copy_from_slice(&443u16.to_be_bytes());
        p
    }

    #[test]
    fn begin_domains_are_validated() {
        assert_eq!(
            decode_relay(&raw_begin(b"xn--bcher-kva.example_1-2.onion")).unwrap(),
            (
                StreamId(0),
                RelayMsg::Begin(TargetAddr::Domain(
                    "xn--bcher-kva.example_1-2.onion".into(),
                    443
                ))
            )
        );
        let max = "a".repeat(crate::MAX_HOSTNAME_LEN);
        roundtrip(1, RelayMsg::Begin(TargetAddr::Domain(max, 1)));
        // Printable ASCII that `validate_hostname` (and so the SOCKS5 and HTTP
        // CONNECT parsers) refuses, and the bytes it always refused.
        for name in [
            &b"a:b"[..],
            b"a/b",
            b"a%b",
            b"a@b",
            b"a b",
            b"a\0b",
            b"",
            "é".as_bytes(),
        ] {
            assert!(
                matches!(
                    decode_relay(&raw_begin(name)),
                    Err(RelayError::Malformed {
                        command: RelayCommand::Begin,
                        ..
                    })
                ),
                "{name:?} decoded"
            );
            let mut p = [0u8; RELAY_PAYLOAD_LEN];
            let t = TargetAddr::Domain(String::from_utf8(name.to_vec()).unwrap(), 443);
            assert_eq!(
                encode_relay(&mut p, StreamId(1), &RelayMsg::Begin(t)),
                Err(RelayError::InvalidTarget(
                    validate_hostname(name).unwrap_err()
                )),
                "{name:?} encoded"
            );
        }
        let long = TargetAddr::Domain("a".repeat(crate::MAX_HOSTNAME_LEN + 1), 443);
        assert_eq!(
            encode_relay(
                &mut [0u8; RELAY_PAYLOAD_LEN],
                StreamId(1),
                &RelayMsg::Begin(long)
            ),
            Err(RelayError::InvalidTarget(AddrError::HostnameTooLong(256)))
        );
    }

    #[test]
    fn data_in_place() {
        let mut p = [0xFFu8; RELAY_PAYLOAD_LEN];
        p[RELAY_HEADER_LEN..RELAY_HEADER_LEN + 3].copy_from_slice(b"abc");
        encode_data_in_place(&mut p, StreamId(9), 3).unwrap();
        assert_eq!(
            decode_relay(&p).unwrap(),
            (StreamId(9), RelayMsg::Data(b"abc"))
        );
        assert!(encode_data_in_place(&mut p, StreamId(9), RELAY_DATA_MAX + 1).is_err());
    }

    #[test]
    fn malformed() {
        let mut p = [0u8; RELAY_PAYLOAD_LEN];
        p[0] = 200;
        assert_eq!(
            decode_relay(&p).unwrap_err(),
            RelayError::UnknownCommand(200)
        );
        p[0] = RelayCommand::Data as u8;
        p[3..5].copy_from_slice(&((RELAY_DATA_MAX + 1) as u16).to_be_bytes());
        assert_eq!(
            decode_relay(&p).unwrap_err(),
            RelayError::BadLength(RELAY_DATA_MAX + 1)
        );
        // BEGIN with a truncated address.
        p[0] = RelayCommand::Begin as u8;
        p[3..5].copy_from_slice(&3u16.to_be_bytes());
        p[5] = 1;
        assert!(matches!(
            decode_relay(&p).unwrap_err(),
            RelayError::Malformed { .. }
        ));
        // END without a reason.
        p[0] = RelayCommand::End as u8;
        p[3..5].copy_from_slice(&0u16.to_be_bytes());
        assert!(decode_relay(&p).is_err());
        assert_eq!(
            decode_relay(&p[1..]).unwrap_err(),
            RelayError::BadPayloadSize(RELAY_PAYLOAD_LEN - 1)
        );
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut p = [0u8; RELAY_PAYLOAD_LEN];
        for _ in 0..20_000 {
            for b in p.iter_mut().take(64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            p[0] %= 10;
            p[3] %= 8;
            let _ = decode_relay(&p);
        }
    }
}
