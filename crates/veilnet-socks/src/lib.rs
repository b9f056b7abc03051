#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt;

pub mod http_connect;
pub mod socks5;

// The target address type, its checked constructors and the hostname check
// are those of `veilnet-cell`: a target parsed here is the target a BEGIN
// message carries, with no conversion.
pub use veilnet_cell::{validate_hostname, AddrError, TargetAddr, MAX_HOSTNAME_LEN};

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
