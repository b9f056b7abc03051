//! Layered relay-cell crypto, Sphinx-style: every byte of a relay cell body
//! is authenticated by the next hop that processes it.
//!
//! A relay cell body is `onion header | payload`. The header has
//! [`MAX_HOPS`] slots of [`SLOT_LEN`] bytes: a hop's AES-256-GCM tag and one
//! control byte ([`CTL_KEY_UPDATE`]). Each hop has its own keys per
//! direction: a data key (the payload AEAD) and a mask key (a keystream that
//! hides the header from the other hops). Slot 0 always belongs to the hop
//! processing the cell.
//!
//! **Forward** (client to exit), at every hop: the tag in slot 0 verifies the
//! payload *and*, as associated data, the cell's command (RELAY or
//! RELAY_EARLY) and the rest of the header (the control byte and slots 1..):
//! a hop that changes any byte of a cell it passes on, its command included,
//! has it rejected by the next hop. Then the hop decrypts the payload,
//! shifts the header one slot toward the front, XORs its keystream into the
//! shifted slots and fills the freed last slot with keystream (the filler).
//! The client knows every hop's keys, so it computes what each hop will see,
//! fillers included, from the last hop back to the first, and seals each
//! layer over exactly that view (Sphinx's header construction).
//!
//! **Backward** (exit to client), at every hop: the hop seals the payload
//! with the cell's command, its control byte and the whole header it
//! received as associated data, shifts the header one slot toward the back (the last slot drops
//! out), XORs its keystream into the shifted slots and puts its tag in slot
//! 0. The last hop starts from an all-zero header, so everything a hop
//! drops is keystream the client can predict. The client peels the layers in
//! order and verifies each one over the header that hop received, which it
//! rebuilds; a change anywhere is caught by the client.
//!
//! So every cell is the same size everywhere, header slots look random at
//! every position, counter nonces make a replayed or reordered cell fail,
//! and a layer that rejected one cell rejects every cell after it (the
//! circuit is dead). Keys ratchet ([`crate::rekey`]): the sender of a cell
//! sets [`CTL_KEY_UPDATE`] in a hop's control byte when its policy retires
//! that hop's keys; both ends replace them after that cell.

use std::time::{Duration, Instant};

use veilnet_cell::{CellCommand, MAX_HOPS, ONION_HEADER_LEN, SLOT_LEN, TAG_LEN};

use crate::aead::{CounterAead, CounterKeystream};
use crate::circuit::HopKeys;
use crate::rekey::{next_key, RekeyPolicy, MAX_USES_PER_KEY, MIN_USES_PER_KEY};
use crate::CryptoError;

/// Control-byte flag: this cell is the last under this hop's current keys
/// in this direction; both ends ratchet them after it. Other bits are
/// reserved: senders set them to zero and receivers ignore them.
pub const CTL_KEY_UPDATE: u8 = 0x01;

/// Header bytes that move one slot at each hop.
const SHIFT_LEN: usize = ONION_HEADER_LEN - SLOT_LEN;
/// Associated data of a forward layer: the cell command and the header the
/// hop received, but for its tag.
const FWD_AAD_LEN: usize = 1 + ONION_HEADER_LEN - TAG_LEN;
/// Associated data of a backward layer: the cell command, the control byte
/// and the header the hop received.
const BACK_AAD_LEN: usize = 2 + ONION_HEADER_LEN;

/// The forward associated data: `command | view[TAG_LEN..]`.
fn forward_aad(command: CellCommand, view: &Header) -> [u8; FWD_AAD_LEN] {
    let mut aad = [0u8; FWD_AAD_LEN];
    aad[0] = command as u8;
    aad[1..].copy_from_slice(&view[TAG_LEN..]);
    aad
}

type Header = [u8; ONION_HEADER_LEN];

/// One direction of one hop's layer: its two keys, how long they have been
/// in use, and whether a failed check killed it.
struct DirLayer {
    data_key: [u8; 32],
    data: CounterAead,
    mask: CounterKeystream,
    /// Cells processed under the current keys.
    uses: u64,
    /// When the current keys first sealed a cell (the sender's clock).
    since: Option<Instant>,
    /// Key updates so far.
    updates: u64,
    dead: bool,
}

impl DirLayer {
    fn new(data_key: &[u8; 32], mask_key: &[u8; 32]) -> Self {
        Self {
            data_key: *data_key,
            data: CounterAead::new(data_key),
            mask: CounterKeystream::new(mask_key),
            uses: 0,
            since: None,
            updates: 0,
            dead: false,
        }
    }

    fn alive(&self) -> Result<(), CryptoError> {
        if self.dead {
            return Err(CryptoError::OutOfOrder("layer closed after a failed check"));
        }
        Ok(())
    }

    /// This cell's header keystream (every hop computes one per cell).
    fn mask(&mut self) -> Result<Header, CryptoError> {
        let mut m = [0u8; ONION_HEADER_LEN];
        self.mask.keystream(&mut m)?;
        Ok(m)
    }

    /// Whether the sender retires these keys after the cell it is sealing.
    fn due(&mut self, policy: &RekeyPolicy, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        policy.is_due(self.uses + 1, now.saturating_duration_since(since))
    }

    /// Accounts for one processed cell: ratchets if it carried the key
    /// update, and refuses a peer that overran the hard limit.
    fn used(&mut self, key_update: bool) -> Result<(), CryptoError> {
        if key_update && self.uses + 1 < MIN_USES_PER_KEY {
            self.dead = true;
            return Err(CryptoError::KeyUpdateTooSoon(self.uses + 1));
        }
        if key_update {
            self.data_key = next_key(&self.data_key);
            self.data = CounterAead::new(&self.data_key);
            self.mask = CounterKeystream::new(&next_key(self.mask.key()));
            self.uses = 0;
            self.since = None;
            self.updates += 1;
            return Ok(());
        }
        self.uses += 1;
        if self.uses >= MAX_USES_PER_KEY {
            self.dead = true;
            return Err(CryptoError::KeyUpdateOverdue(self.uses));
        }
        Ok(())
    }

    /// Runs `f`; any error kills the layer.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        self.alive()?;
        let r = f(self);
        if r.is_err() {
            self.dead = true;
        }
        r
    }
}

fn split(body: &mut [u8]) -> Result<(&mut [u8], &mut [u8]), CryptoError> {
    if body.len() <= ONION_HEADER_LEN {
        return Err(CryptoError::BadLength(body.len()));
    }
    Ok(body.split_at_mut(ONION_HEADER_LEN))
}

fn header_of(bytes: &[u8]) -> Header {
    let mut h = [0u8; ONION_HEADER_LEN];
    h.copy_from_slice(&bytes[..ONION_HEADER_LEN]);
    h
}

fn tag_of(header: &Header) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&header[..TAG_LEN]);
    t
}

/// What the next hop sees forward: the header shifted one slot toward the
/// front under `mask`, with the filler in the freed last slot.
fn shift_forward(header: &Header, mask: &Header) -> Header {
    let mut out = [0u8; ONION_HEADER_LEN];
    for i in 0..SHIFT_LEN {
        out[i] = header[SLOT_LEN + i] ^ mask[i];
    }
    out[SHIFT_LEN..].copy_from_slice(&mask[SHIFT_LEN..]);
    out
}

/// What a hop sends backward: `slot0`, then the received header shifted one
/// slot toward the back under `mask` (its last slot drops out).
fn shift_backward(slot0: &[u8; SLOT_LEN], header: &Header, mask: &Header) -> Header {
    let mut out = [0u8; ONION_HEADER_LEN];
    out[..SLOT_LEN].copy_from_slice(slot0);
    for i in 0..SHIFT_LEN {
        out[SLOT_LEN + i] = header[i] ^ mask[i];
    }
    out
}

fn slot(tag: &[u8; TAG_LEN], ctl: u8) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[..TAG_LEN].copy_from_slice(tag);
    s[TAG_LEN] = ctl;
    s
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
    policy: RekeyPolicy,
}

/// Creates a relay's two layer halves from the hop keys; `policy` says when
/// the relay retires its backward keys (the client decides for forward).
/// The halves are independent so that each direction can be processed by
/// its own task.
pub fn relay_layers(keys: &HopKeys, policy: RekeyPolicy) -> (RelayForward, RelayBackward) {
    (
        RelayForward {
            layer: DirLayer::new(&keys.fwd_data, &keys.fwd_mask),
        },
        RelayBackward {
            layer: DirLayer::new(&keys.bwd_data, &keys.bwd_mask),
            policy,
        },
    )
}

impl RelayForward {
    /// Verifies and removes this hop's layer in place. Afterwards the payload is
    /// either the next hop's ciphertext or, at the last hop, the relay message.
    /// After an error the layer refuses every further cell.
    /// `command` is the cell's command as it arrived (RELAY or RELAY_EARLY):
    /// it is authenticated too, so no hop can change it undetected.
    pub fn decrypt(&mut self, body: &mut [u8], command: CellCommand) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        self.layer.guard(|layer| {
            let view = header_of(header);
            let mask = layer.mask()?;
            layer
                .data
                .open(&forward_aad(command, &view), payload, &tag_of(&view), 0)?;
            header.copy_from_slice(&shift_forward(&view, &mask));
            layer.used(view[TAG_LEN] & CTL_KEY_UPDATE != 0)
        })
    }
}

impl RelayBackward {
    /// Adds this hop's layer in place to a cell coming from the next hop;
    /// `command` is the cell's command (bound into the layer).
    pub fn encrypt(
        &mut self,
        body: &mut [u8],
        command: CellCommand,
        now: Instant,
    ) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        let policy = self.policy;
        self.layer.guard(|layer| {
            let received = header_of(header);
            let mask = layer.mask()?;
            let ctl = if layer.due(&policy, now) {
                CTL_KEY_UPDATE
            } else {
                0
            };
            let mut aad = [0u8; BACK_AAD_LEN];
            aad[0] = command as u8;
            aad[1] = ctl;
            aad[2..].copy_from_slice(&received);
            let tag = layer.data.seal(&aad, payload)?;
            header.copy_from_slice(&shift_backward(&slot(&tag, ctl), &received, &mask));
            layer.used(ctl != 0)
        })
    }

    /// Originates a cell at this hop (it is the last hop): the payload holds a
    /// relay message; the header is overwritten.
    pub fn originate(
        &mut self,
        body: &mut [u8],
        command: CellCommand,
        now: Instant,
    ) -> Result<(), CryptoError> {
        split(body)?.0.fill(0);
        self.encrypt(body, command, now)
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
    junk: CounterKeystream,
    policy: RekeyPolicy,
}

/// The client's backward (toward the client) half.
pub struct ClientBackward {
    layers: Vec<DirLayer>,
}

impl ClientLayers {
    /// No hops yet; `junk_key` must be random and fresh for this circuit (it
    /// fills the unused header slots); `policy` says when the client retires
    /// each hop's forward keys (each relay decides for its backward keys).
    pub fn new(junk_key: &[u8; 32], policy: RekeyPolicy) -> Self {
        Self {
            fwd: ClientForward {
                layers: Vec::with_capacity(MAX_HOPS),
                junk: CounterKeystream::new(junk_key),
                policy,
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
    pub fn encrypt_forward(
        &mut self,
        body: &mut [u8],
        command: CellCommand,
        now: Instant,
    ) -> Result<(), CryptoError> {
        self.fwd.encrypt(body, command, now)
    }

    /// See [`ClientBackward::decrypt`].
    pub fn decrypt_backward(
        &mut self,
        body: &mut [u8],
        command: CellCommand,
    ) -> Result<(), CryptoError> {
        self.bwd.decrypt(body, command)
    }

    /// Splits into the two directions.
    pub fn split(self) -> (ClientForward, ClientBackward) {
        (self.fwd, self.bwd)
    }
}

/// Runs `f` over a client's layers; any error kills them all (the circuit).
fn guard_all<T>(
    layers: &mut [DirLayer],
    f: impl FnOnce(&mut [DirLayer]) -> Result<T, CryptoError>,
) -> Result<T, CryptoError> {
    if layers.is_empty() {
        return Err(CryptoError::OutOfOrder("no hops"));
    }
    layers.iter().try_for_each(DirLayer::alive)?;
    let r = f(layers);
    if r.is_err() {
        layers.iter_mut().for_each(|l| l.dead = true);
    }
    r
}

/// Key updates over all of a client's layers in one direction.
fn updates(layers: &[DirLayer]) -> u64 {
    layers.iter().map(|l| l.updates).sum()
}

impl ClientForward {
    /// How many times the client has retired a hop's forward keys.
    pub fn key_updates(&self) -> u64 {
        updates(&self.layers)
    }

    /// Wraps a cell body whose payload holds a relay message for the last
    /// hop. `command` is the command the cell travels with (every hop sees
    /// the same one, and each layer authenticates it).
    pub fn encrypt(
        &mut self,
        body: &mut [u8],
        command: CellCommand,
        now: Instant,
    ) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        let Self {
            layers,
            junk,
            policy,
        } = self;
        guard_all(layers, |layers| {
            let hops = layers.len();
            let mut masks = [[0u8; ONION_HEADER_LEN]; MAX_HOPS];
            let mut ctl = [0u8; MAX_HOPS];
            for (j, layer) in layers.iter_mut().enumerate() {
                masks[j] = layer.mask()?;
                if layer.due(policy, now) {
                    ctl[j] = CTL_KEY_UPDATE;
                }
            }
            // The last hop's view: the first hop's view is junk beyond the
            // tag slots; pushing it through the earlier hops' shifts gives
            // the last hop's slots 1.. (junk and fillers).
            let mut view = [0u8; ONION_HEADER_LEN];
            junk.keystream(&mut view)?;
            for mask in &masks[..hops - 1] {
                view = shift_forward(&view, mask);
            }
            // Seal from the last hop back to the first; each layer covers
            // exactly the header its hop will see.
            for j in (0..hops).rev() {
                if j < hops - 1 {
                    let mut prev = [0u8; ONION_HEADER_LEN];
                    for i in 0..SHIFT_LEN {
                        prev[SLOT_LEN + i] = view[i] ^ masks[j][i];
                    }
                    view = prev;
                }
                view[TAG_LEN] = ctl[j];
                let tag = layers[j].data.seal(&forward_aad(command, &view), payload)?;
                view[..TAG_LEN].copy_from_slice(&tag);
            }
            header.copy_from_slice(&view);
            for (layer, c) in layers.iter_mut().zip(ctl) {
                layer.used(c != 0)?;
            }
            Ok(())
        })
    }
}

impl ClientBackward {
    /// How many times the hops have retired their backward keys.
    pub fn key_updates(&self) -> u64 {
        updates(&self.layers)
    }

    /// Removes every layer from a cell the last hop originated, verifying each
    /// hop's tag over the header that hop received. On success the payload
    /// holds the relay message. After an error every layer refuses every
    /// further cell. `command` is the cell's command as it arrived.
    pub fn decrypt(&mut self, body: &mut [u8], command: CellCommand) -> Result<(), CryptoError> {
        let (header, payload) = split(body)?;
        guard_all(&mut self.layers, |layers| {
            let hops = layers.len();
            let mut masks = [[0u8; ONION_HEADER_LEN]; MAX_HOPS];
            for (m, layer) in masks.iter_mut().zip(layers.iter_mut()) {
                *m = layer.mask()?;
            }
            // The slot each hop dropped: keystream only, because the last hop
            // starts from zeros and no tag travels far enough to drop out.
            let mut dropped = [[0u8; SLOT_LEN]; MAX_HOPS];
            let mut received = [0u8; ONION_HEADER_LEN];
            for j in (0..hops).rev() {
                dropped[j].copy_from_slice(&received[SHIFT_LEN..]);
                received = shift_backward(&[0; SLOT_LEN], &received, &masks[j]);
            }
            let mut view = header_of(header);
            let mut ctl = [0u8; MAX_HOPS];
            for (j, layer) in layers.iter_mut().enumerate() {
                ctl[j] = view[TAG_LEN];
                let mut aad = [0u8; BACK_AAD_LEN];
                aad[0] = command as u8;
                aad[1] = ctl[j];
                for i in 0..SHIFT_LEN {
                    aad[2 + i] = view[SLOT_LEN + i] ^ masks[j][i];
                }
                aad[2 + SHIFT_LEN..].copy_from_slice(&dropped[j]);
                layer.data.open(&aad, payload, &tag_of(&view), j)?;
                view = header_of(&aad[2..]);
            }
            // What the last hop started from must be the all-zero header.
            if view != [0u8; ONION_HEADER_LEN] {
                return Err(CryptoError::BadTag(hops - 1));
            }
            for (layer, c) in layers.iter_mut().zip(ctl) {
                layer.used(c & CTL_KEY_UPDATE != 0)?;
            }
            Ok(())
        })
    }
}

/// A policy that never retires keys before the hard limit (tests, vectors).
pub const NO_REKEY: RekeyPolicy = RekeyPolicy {
    max_uses: u64::MAX,
    max_age: Duration::MAX,
};

#[cfg(test)]
mod tests {
    use super::*;
    use veilnet_cell::BODY_LEN;

    const R: CellCommand = CellCommand::Relay;

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

    fn net(hops: usize, policy: RekeyPolicy) -> Net {
        let mut client = ClientLayers::new(&[99; 32], policy);
        let mut relays = Vec::new();
        for h in 0..hops {
            let k = keys(h as u8 * 10);
            client.push_hop(&k).unwrap();
            relays.push(relay_layers(&k, policy));
        }
        Net { client, relays }
    }

    fn body_with(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BODY_LEN];
        b[ONION_HEADER_LEN..ONION_HEADER_LEN + msg.len()].copy_from_slice(msg);
        b
    }

    fn round_trip(n: &mut Net, round: u8, now: Instant) {
        let msg = [round, 1, 2, 3, 4, 5];
        let mut b = body_with(&msg);
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        for (fwd, _) in n.relays.iter_mut() {
            assert_ne!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 6], &msg);
            fwd.decrypt(&mut b, R).unwrap();
        }
        assert_eq!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 6], &msg);

        let reply = [round, 9, 8, 7];
        let mut b = body_with(&reply);
        let last = n.relays.len() - 1;
        n.relays[last].1.originate(&mut b, R, now).unwrap();
        for (_, bwd) in n.relays.iter_mut().rev().skip(1) {
            bwd.encrypt(&mut b, R, now).unwrap();
        }
        n.client.decrypt_backward(&mut b, R).unwrap();
        assert_eq!(&b[ONION_HEADER_LEN..ONION_HEADER_LEN + 4], &reply);
    }

    #[test]
    fn forward_and_backward_all_lengths() {
        let now = Instant::now();
        for hops in 1..=MAX_HOPS {
            let mut n = net(hops, NO_REKEY);
            for round in 0..3u8 {
                round_trip(&mut n, round, now);
            }
        }
    }

    #[test]
    fn keys_ratchet_by_count_and_by_age_in_both_directions() {
        let start = Instant::now();
        let by_count = RekeyPolicy {
            max_uses: 3,
            max_age: Duration::MAX,
        };
        let by_age = RekeyPolicy {
            max_uses: u64::MAX,
            max_age: Duration::from_secs(5),
        };
        for policy in [by_count, by_age] {
            for hops in [1, 3, 5] {
                let mut n = net(hops, policy);
                for round in 0..40u8 {
                    round_trip(&mut n, round, start + Duration::from_secs(round as u64));
                }
                // The keys moved: a fresh layer with the original keys no
                // longer opens what the ratcheted client sends.
                let mut b = body_with(b"after");
                n.client
                    .encrypt_forward(&mut b, R, start + Duration::from_secs(30))
                    .unwrap();
                let (mut stale, _) = relay_layers(&keys(0), NO_REKEY);
                assert!(stale.decrypt(&mut b, R).is_err());
            }
        }
    }

    #[test]
    fn a_flipped_key_update_flag_is_caught() {
        let now = Instant::now();
        let mut n = net(3, NO_REKEY);
        let mut b = body_with(b"x");
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        b[TAG_LEN] ^= CTL_KEY_UPDATE;
        assert_eq!(
            n.relays[0].0.decrypt(&mut b, R),
            Err(CryptoError::BadTag(0))
        );
    }

    #[test]
    fn a_changed_command_is_caught() {
        let now = Instant::now();
        let mut n = net(3, NO_REKEY);
        let mut b = body_with(b"x");
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        n.relays[0].0.decrypt(&mut b, R).unwrap();
        // The guard upgrades the cell to RELAY_EARLY on its way on.
        assert_eq!(
            n.relays[1].0.decrypt(&mut b, CellCommand::RelayEarly),
            Err(CryptoError::BadTag(0))
        );
        let mut b = body_with(b"y");
        n.relays[2].1.originate(&mut b, R, now).unwrap();
        n.relays[1].1.encrypt(&mut b, R, now).unwrap();
        n.relays[0].1.encrypt(&mut b, R, now).unwrap();
        assert!(n
            .client
            .decrypt_backward(&mut b, CellCommand::RelayEarly)
            .is_err());
    }

    #[test]
    fn a_last_hop_that_starts_from_a_chosen_header_is_caught() {
        let now = Instant::now();
        let mut n = net(3, NO_REKEY);
        let mut b = body_with(b"x");
        // The exit seals over a header of its choosing instead of zeros, in
        // the part no hop drops on a 3-hop circuit (the dropped slots are
        // checked by the layers that drop them).
        b[..2 * SLOT_LEN].fill(0xAB);
        n.relays[2].1.encrypt(&mut b, R, now).unwrap();
        n.relays[1].1.encrypt(&mut b, R, now).unwrap();
        n.relays[0].1.encrypt(&mut b, R, now).unwrap();
        assert_eq!(
            n.client.decrypt_backward(&mut b, R),
            Err(CryptoError::BadTag(2))
        );
    }

    #[test]
    fn a_key_update_too_soon_is_refused() {
        // A peer flagging its first cells would make us derive keys per cell.
        let mut layer = DirLayer::new(&[1; 32], &[2; 32]);
        assert_eq!(layer.used(true), Err(CryptoError::KeyUpdateTooSoon(1)));
        assert!(layer.alive().is_err());
        let mut layer = DirLayer::new(&[1; 32], &[2; 32]);
        for _ in 0..MIN_USES_PER_KEY - 1 {
            layer.used(false).unwrap();
        }
        layer.used(true).unwrap();
        assert_eq!(layer.updates, 1);
    }

    #[test]
    fn replay_is_rejected() {
        let now = Instant::now();
        let mut n = net(2, NO_REKEY);
        let mut b = body_with(b"once");
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        let copy = b.clone();
        n.relays[0].0.decrypt(&mut b, R).unwrap();
        let mut again = copy;
        assert!(n.relays[0].0.decrypt(&mut again, R).is_err());
    }

    #[test]
    fn a_dead_layer_refuses_everything() {
        let now = Instant::now();
        let mut n = net(2, NO_REKEY);
        let mut b = body_with(b"x");
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        b[ONION_HEADER_LEN] ^= 1;
        assert!(n.relays[0].0.decrypt(&mut b, R).is_err());
        let mut b = body_with(b"y");
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        assert_eq!(
            n.relays[0].0.decrypt(&mut b, R),
            Err(CryptoError::OutOfOrder("layer closed after a failed check"))
        );
    }

    #[test]
    fn plaintext_never_visible_before_last_hop() {
        let now = Instant::now();
        let mut n = net(3, NO_REKEY);
        let secret = b"SECRET-PAYLOAD-MARKER";
        let mut b = body_with(secret);
        n.client.encrypt_forward(&mut b, R, now).unwrap();
        for (i, (fwd, _)) in n.relays.iter_mut().enumerate() {
            let found = b.windows(secret.len()).any(|w| w == secret);
            assert!(!found, "plaintext visible to hop {i}");
            fwd.decrypt(&mut b, R).unwrap();
        }
        assert!(b.windows(secret.len()).any(|w| w == secret));
    }
}
