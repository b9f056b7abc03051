//! Layered relay-cell crypto.
//!
//! A relay cell body is `onion header (MAX_HOPS tag slots) | payload`. Each hop
//! has its own AES-256-GCM keys per direction; the payload is encrypted once per
//! hop, and each hop's tag travels in the header.
//!
//! **Forward** (client to exit), at every hop: take the tag from slot 0, verify
//! and decrypt the payload, then shift the header one slot left, XOR a keystream
//! (from the hop's mask key) into the shifted slots and fill the last slot with
//! keystream. The client precomputes the header so that each hop finds its own
//! tag in slot 0.
//!
//! **Backward** (exit to client), at every hop: encrypt the payload, shift the
//! header one slot right, XOR keystream into the shifted slots and put the new
//! tag in slot 0. The client peels the layers in order, verifying every tag.
//!
//! So every hop authenticates its layer (a modified cell dies at the next hop
//! that checks it, and a mark can't ride through), every cell has the same size
//! at every position, header slots look random at every position, and the
//! nonce counters make a replayed or reordered cell fail.

use veilnet_cell::{MAX_HOPS, ONION_HEADER_LEN, TAG_LEN};

use crate::aead::CounterAead;
use crate::circuit::HopKeys;
use crate::CryptoError;

const SHIFT_LEN: usize = ONION_HEADER_LEN - TAG_LEN;

/// One direction of one hop's layer.
struct DirLayer {
    data: CounterAead,
    mask: CounterAead,
}

impl DirLayer {
    fn new(data: &[u8; 32], mask: &[u8; 32]) -> Self {
        Self {
            data: CounterAead::new(data),
            mask: CounterAead::new(mask),
        }
    }

    fn mask(&mut self) -> Result<[u8; ONION_HEADER_LEN], CryptoError> {
        let mut m = [0u8; ONION_HEADER_LEN];
        self.mask.keystream(&mut m)?;
        Ok(m)
    }
}

fn split(body: &mut [u8]) -> Result<(&mut [u8], &mut [u8]), CryptoError> {
    if body.len() <= ONION_HEADER_LEN {
        return Err(CryptoError::BadLength(body.len()));
    }
    Ok(body.split_at_mut(ONION_HEADER_LEN))
}

fn tag_of(header: &[u8]) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&header[..TAG_LEN]);
    t
}

/// A relay's layer for one circuit, forward half: verifies and removes the
/// layer on cells travelling toward the exit.
pub struct RelayForward {
    layer: DirLayer,
}

/// A relay's layer for one circuit, backward half: adds the layer on cells
/// travelling toward the client.
pub struct RelayBackward {
    layer: DirLayer,
}

/// Creates a relay's two layer halves from the hop keys. The halves are
/// independent so that each direction can be processed by its own task.
pub fn relay_layers(keys: &HopKeys) -> (RelayForward, RelayBackward) {
    (
        RelayForward {
            layer: DirLayer::new(&keys.fwd_data, &keys.fwd_mask),
        },
        RelayBackward {
            layer: DirLayer::new(&keys.bwd_data, &keys.bwd_mask),
        },
    )
}

impl RelayForward {
    /// Verifies and removes this hop's layer in place. Afterwards the payload is
    /// either the next hop's ciphertext or, at the last hop, the relay message.
    pub fn decrypt(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        let tag = tag_of(header);
        let mask = self.layer.mask()?;
        self.layer.data.open(&[], payload, &tag, 0)?;
        let mut shifted = [0u8; ONION_HEADER_LEN];
        for i in 0..SHIFT_LEN {
            shifted[i] = header[TAG_LEN + i] ^ mask[i];
        }
        shifted[SHIFT_LEN..].copy_from_slice(&mask[SHIFT_LEN..]);
        header.copy_from_slice(&shifted);
        Ok(())
    }
}

impl RelayBackward {
    /// Adds this hop's layer in place to a cell coming from the next hop.
    pub fn encrypt(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        let mask = self.layer.mask()?;
        let tag = self.layer.data.seal(&[], payload)?;
        let mut shifted = [0u8; ONION_HEADER_LEN];
        shifted[..TAG_LEN].copy_from_slice(&tag);
        for i in 0..SHIFT_LEN {
            shifted[TAG_LEN + i] = header[i] ^ mask[i];
        }
        header.copy_from_slice(&shifted);
        Ok(())
    }

    /// Originates a cell at this hop (it is the last hop): the payload holds a
    /// relay message; the header is overwritten.
    pub fn originate(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        split(body)?.0.fill(0);
        self.encrypt(body)
    }
}

/// The client's layers for every hop of one circuit. While the circuit is
/// being built one task owns both directions; afterwards [`ClientLayers::split`]
/// gives each direction to its own task.
pub struct ClientLayers {
    fwd: ClientForward,
    bwd: ClientBackward,
}

/// The client's forward (toward the exit) half.
pub struct ClientForward {
    layers: Vec<DirLayer>,
    junk: CounterAead,
}

/// The client's backward (toward the client) half.
pub struct ClientBackward {
    layers: Vec<DirLayer>,
}

impl ClientLayers {
    /// No hops yet; `junk_key` must be random and fresh for this circuit (it
    /// fills the unused header slots).
    pub fn new(junk_key: &[u8; 32]) -> Self {
        Self {
            fwd: ClientForward {
                layers: Vec::with_capacity(MAX_HOPS),
                junk: CounterAead::new(junk_key),
            },
            bwd: ClientBackward {
                layers: Vec::with_capacity(MAX_HOPS),
            },
        }
    }

    /// Adds the next hop.
    pub fn push_hop(&mut self, keys: &HopKeys) -> Result<(), CryptoError> {
        if self.fwd.layers.len() >= MAX_HOPS {
            return Err(CryptoError::OutOfOrder("circuit already has MAX_HOPS hops"));
        }
        self.fwd
            .layers
            .push(DirLayer::new(&keys.fwd_data, &keys.fwd_mask));
        self.bwd
            .layers
            .push(DirLayer::new(&keys.bwd_data, &keys.bwd_mask));
        Ok(())
    }

    /// Number of hops.
    pub fn hops(&self) -> usize {
        self.fwd.layers.len()
    }

    /// See [`ClientForward::encrypt`].
    pub fn encrypt_forward(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        self.fwd.encrypt(body)
    }

    /// See [`ClientBackward::decrypt`].
    pub fn decrypt_backward(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        self.bwd.decrypt(body)
    }

    /// Splits into the two directions.
    pub fn split(self) -> (ClientForward, ClientBackward) {
        (self.fwd, self.bwd)
    }
}

impl ClientForward {
    /// Wraps a cell body whose payload holds a relay message for the last hop.
    pub fn encrypt(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        let hops = self.layers.len();
        if hops == 0 {
            return Err(CryptoError::OutOfOrder("no hops"));
        }
        let (header, payload) = split(body)?;
        let mut tags = [[0u8; TAG_LEN]; MAX_HOPS];
        for j in (0..hops).rev() {
            tags[j] = self.layers[j].data.seal(&[], payload)?;
        }
        // What the last hop sees: its tag, then junk.
        let mut slots = [0u8; ONION_HEADER_LEN];
        self.junk.keystream(&mut slots)?;
        slots[..TAG_LEN].copy_from_slice(&tags[hops - 1]);
        // Walk back toward the first hop, undoing each hop's shift-and-mask.
        let mut masks = [[0u8; ONION_HEADER_LEN]; MAX_HOPS];
        for (j, m) in masks.iter_mut().enumerate().take(hops - 1) {
            *m = self.layers[j].mask()?;
        }
        for j in (0..hops - 1).rev() {
            let mut prev = [0u8; ONION_HEADER_LEN];
            prev[..TAG_LEN].copy_from_slice(&tags[j]);
            for i in 0..SHIFT_LEN {
                prev[TAG_LEN + i] = slots[i] ^ masks[j][i];
            }
            slots = prev;
        }
        // The last hop's mask counter must advance like the relay's does.
        self.layers[hops - 1].mask()?;
        header.copy_from_slice(&slots);
        Ok(())
    }
}

impl ClientBackward {
    /// Removes every layer from a cell the last hop originated, verifying each
    /// hop's tag. On success the payload holds the relay message.
    pub fn decrypt(&mut self, body: &mut [u8]) -> Result<(), CryptoError> {
        if self.layers.is_empty() {
            return Err(CryptoError::OutOfOrder("no hops"));
        }
        let (header, payload) = split(body)?;
        let mut slots = [0u8; ONION_HEADER_LEN];
        slots.copy_from_slice(header);
        for (j, layer) in self.layers.iter_mut().enumerate() {
            let tag = tag_of(&slots);
            let mask = layer.mask()?;
            layer.data.open(&[], payload, &tag, j)?;
            let mut next = [0u8; ONION_HEADER_LEN];
            for i in 0..SHIFT_LEN {
                next[i] = slots[TAG_LEN + i] ^ mask[i];
            }
            slots = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veilnet_cell::BODY_LEN;

    fn keys(seed: u8) -> HopKeys {
        HopKeys {
            fwd_data: [seed; 32],
            fwd_mask: [seed.wrapping_add(1); 32],
            bwd_data: [seed.wrapping_add(2); 32],
            bwd_mask: [seed.wrapping_add(3); 32],
        }
    }

    struct Net {
        client: ClientLayers,
        relays: Vec<(RelayForward, RelayBackward)>,
    }

    fn net(hops: usize) -> Net {
        let mut client = ClientLayers::new(&[99; 32]);
        let mut relays = Vec::new();
        for h in 0..hops {
            let k = keys(h as u8 * 10);
            client.push_hop(&k).unwrap();
            relays.push(relay_layers(&k));
        }
        Net { client, relays }
    }

    fn body_with(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BODY_LEN];
        b[ONION_HEADER_LEN..ONION_HEADER_LEN + msg.len()].copy_from_slice(msg);
        b
    }

    #[test]
    fn forward_and_backward_all_lengths() {
        for hops in 1..=MAX_HOPS {
            let mut n = net(hops);
            for round in 0..3u8 {
                let msg = [round, 1, 2, 3, 4, 5];
                let mut b = body_with(&msg);
                n.client.encrypt_forward(&mut b).unwrap();
                for (fwd, _) in n.relays.iter_mut() {
                    assert_ne!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 6], &msg);
                    fwd.decrypt(&mut b).unwrap();
                }
                assert_eq!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 6], &msg);

                let reply = [round, 9, 8, 7];
                let mut b = body_with(&reply);
                let last = n.relays.len() - 1;
                n.relays[last].1.originate(&mut b).unwrap();
                for (_, bwd) in n.relays.iter_mut().rev().skip(1) {
                    bwd.encrypt(&mut b).unwrap();
                }
                n.client.decrypt_backward(&mut b).unwrap();
                assert_eq!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 4], &reply);
            }
        }
    }

    #[test]
    fn any_bit_flip_in_payload_is_caught_by_next_hop() {
        let mut n = net(3);
        let mut b = body_with(b"hello");
        n.client.encrypt_forward(&mut b).unwrap();
        n.relays[0].0.decrypt(&mut b).unwrap();
        // A malicious first hop marks the cell.
        b[ONION_HEADER_LEN + 100] ^= 0x80;
        assert_eq!(n.relays[1].0.decrypt(&mut b), Err(CryptoError::BadTag(0)));
    }

    #[test]
    fn header_tamper_is_caught() {
        let mut n = net(3);
        let mut b = body_with(b"hello");
        n.client.encrypt_forward(&mut b).unwrap();
        b[TAG_LEN * 2] ^= 1; // the exit's tag, as seen by hop 1
        n.relays[0].0.decrypt(&mut b).unwrap();
        n.relays[1].0.decrypt(&mut b).unwrap();
        assert!(n.relays[2].0.decrypt(&mut b).is_err());
    }

    #[test]
    fn replay_is_rejected() {
        let mut n = net(2);
        let mut b = body_with(b"once");
        n.client.encrypt_forward(&mut b).unwrap();
        let copy = b.clone();
        n.relays[0].0.decrypt(&mut b).unwrap();
        let mut again = copy;
        assert!(n.relays[0].0.decrypt(&mut again).is_err());
    }

    #[test]
    fn backward_tamper_detected_at_client() {
        let mut n = net(3);
        let mut b = body_with(b"data");
        n.relays[2].1.originate(&mut b).unwrap();
        n.relays[1].1.encrypt(&mut b).unwrap();
        b[ONION_HEADER_LEN] ^= 1;
        n.relays[0].1.encrypt(&mut b).unwrap();
        assert_eq!(
            n.client.decrypt_backward(&mut b),
            Err(CryptoError::BadTag(1))
        );
    }

    #[test]
    fn plaintext_never_visible_before_last_hop() {
        let mut n = net(3);
        let secret = b"SECRET-PAYLOAD-MARKER";
        let mut b = body_with(secret);
        n.client.encrypt_forward(&mut b).unwrap();
        for (i, (fwd, _)) in n.relays.iter_mut().enumerate() {
            let found = b.windows(secret.len()).any(|w| w == secret);
            assert!(!found, "plaintext visible to hop {i}");
            fwd.decrypt(&mut b).unwrap();
        }
        assert!(b.windows(secret.len()).any(|w| w == secret));
    }
}
