//! Server side of the SOCKS5 handshake ([RFC 1928]) with username/password
//! subnegotiation ([RFC 1929]), sans-IO.
//!
//! # Usage
//!
//! Keep the bytes read from the client in a buffer and call
//! [`Handshake::feed`] with all of them. It returns how many bytes it
//! consumed (drop exactly those from the front of the buffer) and an
//! [`Action`]:
//!
//! * [`Action::NeedMore`]: nothing was consumed; read more bytes and feed again.
//! * [`Action::Reply`]: send these bytes to the client, then feed the rest of
//!   the buffer again (it may already hold the next message).
//! * [`Action::Request`]: the CONNECT request is complete. Open the stream,
//!   then send [`reply_bytes`]. Bytes left in the buffer are early stream data.
//!
//! On `Err(e)`, send [`SocksError::reply`] if it is `Some`, then close the
//! connection. The handshake is dead after an error or a completed request:
//! further calls return [`SocksError::Finished`].
//!
//! A message is never longer than [`MAX_MESSAGE_LEN`] bytes, so a buffer of
//! that size is enough; the handshake itself keeps no input bytes.
//!
//! # Example
//!
//! ```
//! use veilnet_socks::socks5::{reply_bytes, Action, Handshake, ReplyCode};
//!
//! # fn main() -> Result<(), veilnet_socks::socks5::SocksError> {
//! let mut hs = Handshake::new();
//! // Method selection (no auth), then CONNECT 127.0.0.1:80, then early data.
//! let mut buf = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80, b'h', b'i'];
//! let request = loop {
//!     let (consumed, action) = hs.feed(&buf)?;
//!     buf.drain(..consumed);
//!     match action {
//!         Action::NeedMore => unreachable!("a real caller reads more bytes here"),
//!         Action::Reply(bytes) => assert_eq!(bytes, [5, 0]), // write to client
//!         Action::Request(request) => break request,
//!     }
//! };
//! assert_eq!(request.target.to_string(), "127.0.0.1:80");
//! assert_eq!(buf, b"hi"); // early stream data stays with the caller
//! let _reply = reply_bytes(ReplyCode::Succeeded, None); // once connected
//! # Ok(())
//! # }
//! ```
//!
//! [RFC 1928]: https://www.rfc-editor.org/rfc/rfc1928
//! [RFC 1929]: https://www.rfc-editor.org/rfc/rfc1929

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{validate_hostname, AddrError, Credentials, TargetAddr};

/// SOCKS protocol version handled here.
pub const SOCKS_VERSION: u8 = 5;
/// Version of the RFC 1929 username/password subnegotiation.
pub const AUTH_VERSION: u8 = 1;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USERNAME_PASSWORD: u8 = 0x02;
/// Method selection reply meaning "no acceptable methods".
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;
/// Command: CONNECT, the only one supported.
pub const CMD_CONNECT: u8 = 0x01;
/// Address type: IPv4.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6.
pub const ATYP_IPV6: u8 = 0x04;

/// Longest message a client can send in this handshake: the RFC 1929
/// username/password message (1 + 1 + 255 + 1 + 255 bytes). Method selection
/// is at most 257 bytes and a request at most 262.
pub const MAX_MESSAGE_LEN: usize = 513;

/// What the caller should do after [`Handshake::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The buffered bytes do not hold a complete message yet (0 bytes were
    /// consumed): read more and feed again.
    NeedMore,
    /// Send these bytes to the client, then keep feeding.
    Reply(Vec<u8>),
    /// The CONNECT request is complete. Connect, then send [`reply_bytes`].
    Request(Request),
}

/// A complete SOCKS5 CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where the client wants to connect.
    pub target: TargetAddr,
    /// Username and password, if the client authenticated with RFC 1929.
    pub credentials: Option<Credentials>,
}

/// SOCKS5 reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset (e.g. exit policy).
    NotAllowedByRuleset = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired (also used for timeouts).
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

impl ReplyCode {
    /// The code's value on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Why a request was refused with a SOCKS5 reply (see [`SocksError::Refused`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    /// The command was BIND (2), UDP ASSOCIATE (3) or unknown.
    #[error("unsupported command {0:#04x} (only CONNECT is supported)")]
    UnsupportedCommand(u8),
    /// The address type was not 1, 3 or 4.
    #[error("unsupported address type {0:#04x}")]
    UnsupportedAddressType(u8),
    /// The reserved byte was not 0.
    #[error("reserved byte is {0:#04x}, must be 0")]
    NonZeroReserved(u8),
    /// The target hostname or port was invalid.
    #[error("invalid target: {0}")]
    InvalidTarget(#[from] AddrError),
}

/// Errors of the SOCKS5 handshake. The connection should be closed after
/// sending [`SocksError::reply`] (if any).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// The version byte was not 5 (e.g. 4 for SOCKS4, or not SOCKS at all).
    #[error("unsupported SOCKS version {0:#04x} (only SOCKS5 is supported)")]
    UnsupportedVersion(u8),
    /// The method selection message listed zero methods.
    #[error("client offered zero authentication methods")]
    NoMethods,
    /// The client offered neither "no authentication" nor username/password.
    #[error("client offered no acceptable authentication method (offered {offered:02x?})")]
    NoAcceptableMethod {
        /// The methods the client offered.
        offered: Vec<u8>,
    },
    /// The username/password subnegotiation version was not 1.
    #[error("unsupported username/password subnegotiation version {0:#04x}")]
    UnsupportedAuthVersion(u8),
    /// The username/password message had an empty username (RFC 1929
    /// requires 1 to 255 bytes).
    #[error("empty username in username/password subnegotiation")]
    EmptyUsername,
    /// The request was refused; `reply()` gives the SOCKS5 reply carrying `code`.
    #[error("request refused ({code:?}): {reason}")]
    Refused {
        /// Reply code sent to the client.
        code: ReplyCode,
        /// Why the request was refused.
        reason: RefuseReason,
    },
    /// [`Handshake::feed`] was called after the handshake completed or failed.
    #[error("SOCKS5 handshake already finished")]
    Finished,
}

impl SocksError {
    /// Bytes to send to the client before closing the connection, if the
    /// protocol has a way to say what went wrong at this point.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            SocksError::NoMethods | SocksError::NoAcceptableMethod { .. } => {
                Some(vec![SOCKS_VERSION, METHOD_NO_ACCEPTABLE])
            }
            // RFC 1929: any nonzero status means failure.
            SocksError::UnsupportedAuthVersion(_) | SocksError::EmptyUsername => {
                Some(vec![AUTH_VERSION, 0x01])
            }
            SocksError::Refused { code, .. } => Some(reply_bytes(*code, None)),
            SocksError::UnsupportedVersion(_) | SocksError::Finished => None,
        }
    }
}

fn refuse(code: ReplyCode, reason: RefuseReason) -> SocksError {
    SocksError::Refused { code, reason }
}

#[derive(Debug)]
enum State {
    /// Waiting for the method selection message.
    Methods,
    /// Username/password was selected; waiting for the RFC 1929 message.
    Auth,
    /// Waiting for the request.
    Request(Option<Credentials>),
    /// Request returned, or an error happened.
    Finished,
}

/// Incremental server-side SOCKS5 handshake state machine (RFC 1928 + RFC 1929).
///
/// Server policy: if the client offers username/password (0x02) it is chosen,
/// so the client can pass stream-isolation credentials; otherwise "no
/// authentication" (0x00) if offered; otherwise the handshake fails with
/// [`SocksError::NoAcceptableMethod`]. Any credentials are accepted.
#[derive(Debug)]
pub struct Handshake {
    state: State,
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

impl Handshake {
    /// A handshake waiting for the client's method selection message.
    pub fn new() -> Self {
        Handshake {
            state: State::Methods,
        }
    }

    /// True once a request was returned or an error happened.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Feed the bytes received from the client that have not been consumed
    /// yet. Returns how many bytes were consumed and what to do.
    ///
    /// At most one message is consumed per call. With [`Action::NeedMore`]
    /// the count is 0. After an error the handshake is finished.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Action), SocksError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let (next, result) = match state {
            State::Methods => match parse_methods(input) {
                Ok(None) => (State::Methods, Ok((0, Action::NeedMore))),
                Ok(Some((n, METHOD_USERNAME_PASSWORD))) => (
                    State::Auth,
                    Ok((
                        n,
                        Action::Reply(vec![SOCKS_VERSION, METHOD_USERNAME_PASSWORD]),
                    )),
                ),
                Ok(Some((n, method))) => (
                    State::Request(None),
                    Ok((n, Action::Reply(vec![SOCKS_VERSION, method]))),
                ),
                Err(e) => (State::Finished, Err(e)),
            },
            State::Auth => match parse_auth(input) {
                Ok(None) => (State::Auth, Ok((0, Action::NeedMore))),
                Ok(Some((n, creds))) => (
                    State::Request(Some(creds)),
                    Ok((n, Action::Reply(vec![AUTH_VERSION, 0x00]))),
                ),
                Err(e) => (State::Finished, Err(e)),
            },
            State::Request(credentials) => match parse_request(input) {
                Ok(None) => (State::Request(credentials), Ok((0, Action::NeedMore))),
                Ok(Some((n, target))) => (
                    State::Finished,
                    Ok((
                        n,
                        Action::Request(Request {
                            target,
                            credentials,
                        }),
                    )),
                ),
                Err(e) => (State::Finished, Err(e)),
            },
            State::Finished => (State::Finished, Err(SocksError::Finished)),
        };
        self.state = next;
        result
    }
}

/// Parse the method selection message; returns (length, chosen method).
fn parse_methods(input: &[u8]) -> Result<Option<(usize, u8)>, SocksError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != SOCKS_VERSION {
        return Err(SocksError::UnsupportedVersion(ver));
    }
    let Some(&nmethods) = input.get(1) else {
        return Ok(None);
    };
    if nmethods == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + usize::from(nmethods);
    let Some(methods) = input.get(2..end) else {
        return Ok(None);
    };
    if methods.contains(&METHOD_USERNAME_PASSWORD) {
        Ok(Some((end, METHOD_USERNAME_PASSWORD)))
    } else if methods.contains(&METHOD_NO_AUTH) {
        Ok(Some((end, METHOD_NO_AUTH)))
    } else {
        Err(SocksError::NoAcceptableMethod {
            offered: methods.to_vec(),
        })
    }
}

/// Parse the RFC 1929 username/password message.
fn parse_auth(input: &[u8]) -> Result<Option<(usize, Credentials)>, SocksError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(SocksError::UnsupportedAuthVersion(ver));
    }
    let Some(&ulen) = input.get(1) else {
        return Ok(None);
    };
    if ulen == 0 {
        return Err(SocksError::EmptyUsername);
    }
    let uend = 2 + usize::from(ulen);
    let Some(username) = input.get(2..uend) else {
        return Ok(None);
    };
    let Some(&plen) = input.get(uend) else {
        return Ok(None);
    };
    let pend = uend + 1 + usize::from(plen);
    let Some(password) = input.get(uend + 1..pend) else {
        return Ok(None);
    };
    Ok(Some((
        pend,
        Credentials {
            username: username.to_vec(),
            password: password.to_vec(),
        },
    )))
}

/// Parse the CONNECT request; returns (length, target).
fn parse_request(input: &[u8]) -> Result<Option<(usize, TargetAddr)>, SocksError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != SOCKS_VERSION {
        return Err(SocksError::UnsupportedVersion(ver));
    }
    let Some(&cmd) = input.get(1) else {
        return Ok(None);
    };
    if cmd != CMD_CONNECT {
        return Err(refuse(
            ReplyCode::CommandNotSupported,
            RefuseReason::UnsupportedCommand(cmd),
        ));
    }
    let Some(&rsv) = input.get(2) else {
        return Ok(None);
    };
    if rsv != 0 {
        return Err(refuse(
            ReplyCode::GeneralFailure,
            RefuseReason::NonZeroReserved(rsv),
        ));
    }
    let Some(&atyp) = input.get(3) else {
        return Ok(None);
    };
    let invalid = |e: AddrError| refuse(ReplyCode::GeneralFailure, e.into());
    let (addr_end, addr) = match atyp {
        ATYP_IPV4 => {
            let Some(b) = input.get(4..8).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (8, Addr::Ip(Ipv4Addr::from(b).into()))
        }
        ATYP_IPV6 => {
            let Some(b) = input.get(4..20).and_then(|s| <[u8; 16]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (20, Addr::Ip(Ipv6Addr::from(b).into()))
        }
        ATYP_DOMAIN => {
            let Some(&len) = input.get(4) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(invalid(AddrError::EmptyHostname));
            }
            let end = 5 + usize::from(len);
            let Some(name) = input.get(5..end) else {
                return Ok(None);
            };
            (end, Addr::Domain(name))
        }
        other => {
            return Err(refuse(
                ReplyCode::AddressTypeNotSupported,
                RefuseReason::UnsupportedAddressType(other),
            ))
        }
    };
    let Some(port) = input
        .get(addr_end..addr_end + 2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
    else {
        return Ok(None);
    };
    let target = match addr {
        Addr::Ip(ip) => TargetAddr::ip(SocketAddr::new(ip, port)),
        Addr::Domain(name) => validate_hostname(name)
            .and_then(|()| std::str::from_utf8(name).map_err(|_| AddrError::BadHostnameByte(0)))
            .and_then(|name| TargetAddr::domain(name, port)),
    }
    .map_err(invalid)?;
    Ok(Some((addr_end + 2, target)))
}

enum Addr<'a> {
    Ip(std::net::IpAddr),
    Domain(&'a [u8]),
}

/// Append ATYP, address and port for `target` (the tail of a request or reply).
fn put_addr(out: &mut Vec<u8>, target: &TargetAddr) -> Result<(), AddrError> {
    match target {
        TargetAddr::Ip(SocketAddr::V4(sa)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&sa.ip().octets());
        }
        TargetAddr::Ip(SocketAddr::V6(sa)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&sa.ip().octets());
        }
        TargetAddr::Domain(name, _) => {
            validate_hostname(name.as_bytes())?;
            let len =
                u8::try_from(name.len()).map_err(|_| AddrError::HostnameTooLong(name.len()))?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&target.port().to_be_bytes());
    Ok(())
}

/// Encode a server reply: `VER REP RSV ATYP BND.ADDR BND.PORT`, with
/// BND.ADDR `0.0.0.0:0` unless `bound` is given.
pub fn reply_bytes(code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[SOCKS_VERSION, code.as_u8(), 0x00]);
    match bound {
        SocketAddr::V4(sa) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&sa.ip().octets());
        }
        SocketAddr::V6(sa) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&sa.ip().octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// Encode a client CONNECT request for `target` (the client side; used by
/// tests, fuzzing and anything that speaks SOCKS5 to a veilnet node).
///
/// Fails if a hostname is invalid (see [`validate_hostname`]); the port is
/// encoded as given.
pub fn connect_request_bytes(target: &TargetAddr) -> Result<Vec<u8>, AddrError> {
    let mut out = Vec::with_capacity(7 + crate::MAX_HOSTNAME_LEN);
    out.extend_from_slice(&[SOCKS_VERSION, CMD_CONNECT, 0x00]);
    put_addr(&mut out, target)?;
    Ok(out)
}

/// Encode a client RFC 1929 username/password message. Returns `None` unless
/// the username is 1..=255 bytes and the password 0..=255 bytes.
pub fn auth_request_bytes(credentials: &Credentials) -> Option<Vec<u8>> {
    let ulen = u8::try_from(credentials.username.len()).ok()?;
    let plen = u8::try_from(credentials.password.len()).ok()?;
    if ulen == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(3 + usize::from(ulen) + usize::from(plen));
    out.push(AUTH_VERSION);
    out.push(ulen);
    out.extend_from_slice(&credentials.username);
    out.push(plen);
    out.extend_from_slice(&credentials.password);
    Some(out)
}
