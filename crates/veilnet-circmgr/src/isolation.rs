//! Stream isolation: which streams may share a circuit.

use std::hash::{BuildHasher, Hash, Hasher};

/// Which streams may share a circuit: streams with different isolation keys
/// never do. Derived from SOCKS or proxy credentials; [`Isolation::NONE`]
/// without any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isolation(Option<u64>);

impl Isolation {
    /// No credentials.
    pub const NONE: Isolation = Isolation(None);

    /// From proxy credentials (hashed; the credentials are not kept).
    pub fn from_credentials(user: &[u8], pass: &[u8]) -> Self {
        // Keyed per process, so the label shown by the control API says
        // nothing about the credentials.
        static KEY: std::sync::LazyLock<std::collections::hash_map::RandomState> =
            std::sync::LazyLock::new(Default::default);
        let mut h = KEY.build_hasher();
        user.hash(&mut h);
        pass.hash(&mut h);
        Isolation(Some(h.finish()))
    }

    /// An opaque label for people (`None` for [`Isolation::NONE`]): equal
    /// for equal isolation within this process, and nothing about the
    /// credentials it derives from.
    pub fn label(&self) -> Option<String> {
        self.0.map(|h| format!("{:08x}", h >> 32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_credentials_same_isolation() {
        let a = Isolation::from_credentials(b"alice", b"p");
        assert_eq!(a, Isolation::from_credentials(b"alice", b"p"));
        assert_ne!(a, Isolation::from_credentials(b"alice", b"q"));
        assert_ne!(a, Isolation::NONE);
        assert_eq!(Isolation::NONE.label(), None);
        let label = a.label().unwrap();
        assert_eq!(label.len(), 8);
        assert!(!label.contains("alice"));
    }
}
