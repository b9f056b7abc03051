//! HTTP/1.x CONNECT request parsing, sans-IO.
//!
//! Keep the bytes read from the client in a buffer and call
//! [`parse_request`] after each read. It returns `Ok(None)` until the request
//! head (ending in an empty line, `\r\n\r\n`) is complete, then the head length
//! and the parsed request. Bytes after the head are early stream data and are
//! not part of the head length. On success send
//! `response_bytes(200, "Connection established")` once the stream is open;
//! on error send `response_bytes(e.status(), ...)` and close.
//!
//! The head is at most [`MAX_HEAD_LEN`] bytes, so the caller's buffer never
//! needs to grow past that before a decision is made.
//!
//! # Example
//!
//! ```
//! use veilnet_socks::http_connect::{parse_request, response_bytes};
//!
//! let buf = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03";
//! assert_eq!(parse_request(&buf[..20]), Ok(None)); // incomplete: read more
//! let Ok(Some((head_len, request))) = parse_request(buf) else { panic!() };
//! assert_eq!(request.target.to_string(), "example.com:443");
//! assert_eq!(&buf[head_len..], b"\x16\x03"); // early stream data
//! let _ok = response_bytes(200, "Connection established");
//! ```

use std::net::{Ipv6Addr, SocketAddr};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::{validate_hostname, AddrError, Credentials, TargetAddr};

/// Maximum length of a request head, including the final `\r\n\r\n`.
pub const MAX_HEAD_LEN: usize = 8 * 1024;

/// Base64 engine for `Proxy-Authorization: Basic`: standard alphabet,
/// padding optional (some clients omit it).
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A complete HTTP CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where the client wants to connect.
    pub target: TargetAddr,
    /// From `Proxy-Authorization: Basic base64(user:pass)`, if present.
    pub credentials: Option<Credentials>,
}

/// Errors parsing an HTTP CONNECT request. [`HttpError::status`] is the status
/// code to answer with before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No complete head within [`MAX_HEAD_LEN`] bytes.
    #[error("request head exceeds {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// A well-formed request with a method other than CONNECT.
    #[error("method {0:?} not allowed (only CONNECT is supported)")]
    MethodNotAllowed(String),
    /// A well-formed HTTP version other than 1.0 or 1.1.
    #[error("unsupported HTTP version {0:?}")]
    UnsupportedVersion(String),
    /// The request does not follow HTTP/1.x syntax.
    #[error("malformed CONNECT request: {0}")]
    Malformed(&'static str),
    /// The request target's host or port is invalid.
    #[error("invalid CONNECT target: {0}")]
    InvalidTarget(#[from] AddrError),
}

impl HttpError {
    /// HTTP status code to answer with: 431, 405, 505 or 400.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::UnsupportedVersion(_) => 505,
            HttpError::Malformed(_) | HttpError::InvalidTarget(_) => 400,
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parse an HTTP/1.x CONNECT request head incrementally.
///
/// `buf` holds everything received so far. Returns `Ok(None)` until
/// `"\r\n\r\n"` is seen, then `Ok(Some((head_len, request)))` where
/// `head_len` counts the head including its final empty line; bytes after
/// it belong to the tunnelled stream.
///
/// Errors are returned as early as they are certain: a method that is not a
/// token or not `CONNECT` is rejected as soon as its terminating space
/// arrives, and a head with no end within [`MAX_HEAD_LEN`] bytes is rejected
/// with [`HttpError::HeadTooLarge`]. A prefix of a valid request never errors.
///
/// Each call rescans `buf`, which costs O(`MAX_HEAD_LEN`) at most.
pub fn parse_request(buf: &[u8]) -> Result<Option<(usize, ConnectRequest)>, HttpError> {
    let window = buf.get(..MAX_HEAD_LEN).unwrap_or(buf);

    // Early method check, so garbage or `GET` fails without waiting for 8 KiB.
    let method_end = window.iter().position(|&b| !is_tchar(b));
    if let Some(end) = method_end {
        if window[end] != b' ' || end == 0 {
            return Err(HttpError::Malformed(
                "request line does not start with a method",
            ));
        }
        check_method(&window[..end])?;
    }

    let Some(end) = find(window, b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD_LEN {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let head_len = end + 4;
    let head = &window[..end];

    let mut lines = split_crlf(head)?.into_iter();

    let request_line = lines
        .next()
        .ok_or(HttpError::Malformed("missing request line"))?;
    let target = parse_request_line(request_line)?;

    let mut credentials = None;
    let mut seen_auth = false;
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(HttpError::Malformed("obsolete header line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::Malformed("header line without ':'"))?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Malformed("invalid header name"));
        }
        if name.eq_ignore_ascii_case(b"proxy-authorization") {
            if seen_auth {
                return Err(HttpError::Malformed("duplicate Proxy-Authorization header"));
            }
            seen_auth = true;
            credentials = Some(parse_basic(value)?);
        }
    }

    Ok(Some((
        head_len,
        ConnectRequest {
            target,
            credentials,
        },
    )))
}

/// Split a head (without its final CRLFCRLF) into lines on CRLF; reject bare
/// CR, bare LF and NUL anywhere (they enable request smuggling tricks).
fn split_crlf(head: &[u8]) -> Result<Vec<&[u8]>, HttpError> {
    let mut out = Vec::new();
    let mut rest = head;
    loop {
        let (line, next) = match find(rest, b"\r\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(HttpError::Malformed("bare CR, LF or NUL in request head"));
        }
        out.push(line);
        match next {
            Some(n) => rest = n,
            None => return Ok(out),
        }
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

fn check_method(method: &[u8]) -> Result<(), HttpError> {
    if method == b"CONNECT" {
        Ok(())
    } else {
        // Only tchars (ASCII) reach here; cap the length kept for messages.
        let shown = &method[..method.len().min(32)];
        Err(HttpError::MethodNotAllowed(
            String::from_utf8_lossy(shown).into_owned(),
        ))
    }
}

/// `CONNECT SP authority SP HTTP/1.x`
fn parse_request_line(line: &[u8]) -> Result<TargetAddr, HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not 'METHOD target version'",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("invalid method"));
    }
    check_method(method)?;
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => {}
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::UnsupportedVersion(
                String::from_utf8_lossy(version).into_owned(),
            ))
        }
        _ => return Err(HttpError::Malformed("invalid HTTP version")),
    }
    parse_authority(target)
}

/// `host:port`, `[v6]:port`; port 1..=65535.
fn parse_authority(target: &[u8]) -> Result<TargetAddr, HttpError> {
    if let Some(rest) = target.strip_prefix(b"[") {
        let close = rest
            .iter()
            .position(|&b| b == b']')
            .ok_or(HttpError::Malformed("unterminated '[' in target"))?;
        let ip: Ipv6Addr = std::str::from_utf8(&rest[..close])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HttpError::Malformed("invalid IPv6 address in target"))?;
        let port = rest[close + 1..]
            .strip_prefix(b":")
            .ok_or(HttpError::Malformed("missing port in target"))?;
        let port = parse_port(port)?;
        return Ok(TargetAddr::ip(SocketAddr::new(ip.into(), port))?);
    }
    let colon = target
        .iter()
        .rposition(|&b| b == b':')
        .ok_or(HttpError::Malformed("missing port in target"))?;
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    if host.contains(&b':') {
        return Err(HttpError::Malformed("IPv6 target must be in brackets"));
    }
    let port = parse_port(port)?;
    validate_hostname(host)?;
    let host = std::str::from_utf8(host).map_err(|_| AddrError::BadHostnameByte(0))?;
    Ok(TargetAddr::domain(host, port)?)
}

fn parse_port(port: &[u8]) -> Result<u16, HttpError> {
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed("port is not a decimal number"));
    }
    let port = port
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    let port = u16::try_from(port).map_err(|_| HttpError::Malformed("port out of range"))?;
    if port == 0 {
        return Err(AddrError::ZeroPort.into());
    }
    Ok(port)
}

/// `Basic base64(user:pass)`; the scheme name is case-insensitive.
fn parse_basic(value: &[u8]) -> Result<Credentials, HttpError> {
    let sp = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(HttpError::Malformed(
            "Proxy-Authorization without credentials",
        ))?;
    if !value[..sp].eq_ignore_ascii_case(b"basic") {
        return Err(HttpError::Malformed(
            "unsupported Proxy-Authorization scheme (only Basic)",
        ));
    }
    let token = trim_ows(&value[sp..]);
    let decoded = BASIC_B64
        .decode(token)
        .map_err(|_| HttpError::Malformed("invalid base64 in Proxy-Authorization"))?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("Basic credentials without ':'"))?;
    Ok(Credentials {
        username: decoded[..colon].to_vec(),
        password: decoded[colon + 1..].to_vec(),
    })
}

/// Encode a response head: `HTTP/1.1 <status> <reason>\r\n...\r\n\r\n`.
///
/// A 2xx status gets no headers (`"HTTP/1.1 200 Connection established\r\n\r\n"`).
/// Other statuses get `Content-Length: 0` and `Connection: close`, and 405
/// also gets `Allow: CONNECT`. A status outside 100..=999 becomes 500, and
/// bytes of `reason` other than printable ASCII and space are dropped, so the
/// response cannot be split.
pub fn response_bytes(status: u16, reason: &str) -> Vec<u8> {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    if !(200..300).contains(&status) {
        if status == 405 {
            out.push_str("Allow: CONNECT\r\n");
        }
        out.push_str("Content-Length: 0\r\nConnection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}
