#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

pub mod http_connect;
pub mod socks5;

/// Maximum length in bytes of a hostname in a [`TargetAddr::Domain`].
pub const MAX_HOSTNAME_LEN: usize = 255;

/// Target of a proxy request.
///
/// Values produced by this crate's parsers are always valid: hostnames pass
/// [`validate_hostname`] and ports are nonzero. Use [`TargetAddr::domain`] or
/// [`TargetAddr::ip`] to build checked values yourself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A hostname (not resolved by this crate) and port.
    Domain(String, u16),
}

impl TargetAddr {
    /// Build a checked hostname target: the name must pass
    /// [`validate_hostname`] and the port must be nonzero.
    ///
    /// A name that is an IPv4 literal (`"192.0.2.1"`) becomes
    /// [`TargetAddr::Ip`], so that IP-based policy cannot be bypassed by
    /// spelling an address as a hostname.
    pub fn domain(name: &str, port: u16) -> Result<Self, AddrError> {
        if port == 0 {
            return Err(AddrError::ZeroPort);
        }
        validate_hostname(name.as_bytes())?;
        if let Ok(v4) = name.parse::<Ipv4Addr>() {
            return Ok(TargetAddr::Ip(SocketAddr::new(v4.into(), port)));
        }
        Ok(TargetAddr::Domain(name.to_owned(), port))
    }

    /// Build a checked IP target: the port must be nonzero.
    pub fn ip(addr: SocketAddr) -> Result<Self, AddrError> {
        if addr.port() == 0 {
            return Err(AddrError::ZeroPort);
        }
        Ok(TargetAddr::Ip(addr))
    }

    /// The target port.
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(sa) => sa.port(),
            TargetAddr::Domain(_, port) => *port,
        }
    }
}

/// Formats as `1.2.3.4:80`, `[2001:db8::1]:443` or `example.com:443`, which is
/// also the HTTP CONNECT authority form.
impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(sa) => write!(f, "{sa}"),
            TargetAddr::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// Why a target address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The hostname was empty.
    #[error("empty hostname")]
    EmptyHostname,
    /// The hostname was longer than [`MAX_HOSTNAME_LEN`] bytes.
    #[error("hostname is {0} bytes long, the limit is {MAX_HOSTNAME_LEN}")]
    HostnameTooLong(usize),
    /// The hostname held a byte other than an ASCII letter, digit, `-`, `.` or `_`.
    #[error("hostname contains forbidden byte {0:#04x}")]
    BadHostnameByte(u8),
    /// The port was 0, which cannot be connected to.
    #[error("port 0 is not a valid target port")]
    ZeroPort,
}

/// Check that `name` is an acceptable hostname: 1 to 255 bytes, each an
/// ASCII letter, digit, `-`, `.` or `_`.
///
/// This is deliberately a character-set check, not full DNS syntax: it keeps
/// control characters, spaces, NUL and non-ASCII out of logs and lookups.
pub fn validate_hostname(name: &[u8]) -> Result<(), AddrError> {
    if name.is_empty() {
        return Err(AddrError::EmptyHostname);
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(AddrError::HostnameTooLong(name.len()));
    }
    match name
        .iter()
        .find(|&&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        Some(&b) => Err(AddrError::BadHostnameByte(b)),
        None => Ok(()),
    }
}

/// Credentials given by the client (RFC 1929 username/password, or HTTP
/// `Proxy-Authorization: Basic`).
///
/// They are never verified; they are used only for stream isolation.
/// `Debug` does not print them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The username, as raw bytes.
    pub username: Vec<u8>,
    /// The password, as raw bytes (may be empty).
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &format_args!("<{} bytes>", self.username.len()))
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_validation() {
        assert_eq!(validate_hostname(b""), Err(AddrError::EmptyHostname));
        assert_eq!(validate_hostname(&[b'a'; 255]), Ok(()));
        assert_eq!(
            validate_hostname(&[b'a'; 256]),
            Err(AddrError::HostnameTooLong(256))
        );
        assert_eq!(
            validate_hostname(b"a\0b"),
            Err(AddrError::BadHostnameByte(0))
        );
        assert_eq!(
            validate_hostname(b"a b"),
            Err(AddrError::BadHostnameByte(b' '))
        );
        assert_eq!(
            validate_hostname(b"a:b"),
            Err(AddrError::BadHostnameByte(b':'))
        );
        assert_eq!(
            validate_hostname("é".as_bytes()),
            Err(AddrError::BadHostnameByte(0xc3))
        );
        assert_eq!(
            validate_hostname(b"xn--bcher-kva.example_1-2.onion"),
            Ok(())
        );
    }

    #[test]
    fn target_constructors_and_display() {
        let t = TargetAddr::domain("example.com", 443).unwrap();
        assert_eq!(t.to_string(), "example.com:443");
        assert_eq!(t.port(), 443);
        assert_eq!(
            TargetAddr::domain("192.0.2.7", 80).unwrap(),
            TargetAddr::Ip("192.0.2.7:80".parse().unwrap())
        );
        assert_eq!(
            TargetAddr::domain("example.com", 0),
            Err(AddrError::ZeroPort)
        );
        assert_eq!(
            TargetAddr::ip("[::1]:0".parse().unwrap()),
            Err(AddrError::ZeroPort)
        );
        let v6 = TargetAddr::ip("[2001:db8::1]:443".parse().unwrap()).unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials {
            username: b"alice".to_vec(),
            password: b"hunter2".to_vec(),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("alice") && !s.contains("hunter2"), "{s}");
        assert!(s.contains("<5 bytes>") && s.contains("<7 bytes>"), "{s}");
    }
}
