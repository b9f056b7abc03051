//! Target addresses: where an exit should connect, and the one hostname check
//! every layer (SOCKS5, HTTP CONNECT, BEGIN messages) applies.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use thiserror::Error;

/// Maximum length in bytes of a hostname in a [`TargetAddr::Domain`].
pub const MAX_HOSTNAME_LEN: usize = 255;

/// Where an exit should connect: an address, or a name the exit resolves.
///
/// Values produced by [`decode_relay`](crate::decode_relay) and by the
/// `veilnet-socks` parsers always hold a hostname that passes
/// [`validate_hostname`], and [`encode_relay`](crate::encode_relay) refuses
/// any other. The parsers also refuse port 0. Use [`TargetAddr::domain`] or
/// [`TargetAddr::ip`] to build checked values yourself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// A literal socket address (IPv4 or IPv6).
    Ip(SocketAddr),
    /// A hostname and port; the exit resolves it (the client never does).
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
            return Ok(Self::Ip(SocketAddr::new(v4.into(), port)));
        }
        Ok(Self::Domain(name.to_owned(), port))
    }

    /// Build a checked IP target: the port must be nonzero.
    pub fn ip(addr: SocketAddr) -> Result<Self, AddrError> {
        if addr.port() == 0 {
            return Err(AddrError::ZeroPort);
        }
        Ok(Self::Ip(addr))
    }

    /// The target port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(sa) => sa.port(),
            Self::Domain(_, port) => *port,
        }
    }
}

/// Formats as `1.2.3.4:80`, `[2001:db8::1]:443` or `example.com:443`, which is
/// also the HTTP CONNECT authority form.
impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(sa) => write!(f, "{sa}"),
            Self::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// Why a target address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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

/// Check that `name` is an acceptable hostname: 1 to [`MAX_HOSTNAME_LEN`]
/// bytes, each an ASCII letter, digit, `-`, `.` or `_`.
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
}
