//! A cursor over the bytes of the directory's binary records (descriptors,
//! measurement reports): each read names what it reads, so that a short
//! record says where it ended.

/// A record ended before `what`: it needed `needed` more bytes and had
/// `have`. Each format turns this into its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated {
    pub what: &'static str,
    pub needed: usize,
    pub have: usize,
}

/// The unread rest of a record.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Truncated> {
        if self.0.len() < n {
            return Err(Truncated {
                what,
                needed: n,
                have: self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Truncated> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// Bytes after a one-byte length.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], Truncated> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_record_says_where_it_ended() {
        let mut r = Reader(&[0, 1, 1, 3, 9]);
        assert_eq!(r.u16("a"), Ok(1));
        assert_eq!(r.bytes("b"), Ok(&[3][..]));
        assert_eq!(
            r.u64("c"),
            Err(Truncated {
                what: "c",
                needed: 8,
                have: 1
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.0, &[9]);
    }
}
