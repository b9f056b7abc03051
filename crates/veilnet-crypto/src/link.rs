//! The link between two neighbouring nodes: handshake and record layer.
//!
//! **Handshake**: `Noise_XK_25519_AESGCM_SHA256`. The initiator must already
//! know the responder's *link key* (a static X25519 key derived from the
//! responder's identity and published in its signed descriptor): its first
//! message is an ephemeral key and a tag made with that key. A prober who
//! does not know the link key cannot produce the tag, and the responder never
//! answers it, so a scan learns nothing, not even that veilnet listens there.
//! Nothing on the wire is in the clear but random-looking keys and
//! ciphertext. The responder's reply and the initiator's last message carry,
//! encrypted, each side's libp2p identity public key and a signature binding
//! its Noise static key to that identity; the caller checks the resulting
//! [`PeerId`] against the one it expected.
//!
//! Handshake messages are framed as `len: u16 | message`.
//!
//! **Records**: `header: u16 | AES-256-GCM(n_cells * CELL_LEN bytes) | tag`,
//! the header authenticated as associated data, nonces counting up from 0 in
//! each direction, so a dropped, replayed or reordered record breaks the link.
//! The header is `KEY_UPDATE` ([`RECORD_KEY_UPDATE`], the top bit) `| n_cells`
//! (`1..=MAX_BATCH`, every other bit zero).
//!
//! **Rekeying**: a record with `KEY_UPDATE` is the last sealed under its key;
//! after it both ends of that direction replace the key by
//! [`next_key`](crate::rekey::next_key) of it and restart the nonce counter
//! at 0, dropping the old key. The sender sets the flag as its
//! [`RekeyPolicy`] says (uses or age, the time passed in by the caller); the
//! receiver refuses a key used for [`MAX_USES_PER_KEY`] records without it.

use std::time::Instant;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use veilnet_cell::CELL_LEN;

use crate::aead::CounterAead;
use crate::rekey::{next_key, RekeyPolicy, MAX_USES_PER_KEY, MIN_USES_PER_KEY};
use crate::CryptoError;

const PARAMS: &str = "Noise_XK_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"veilnet-link-v2";
/// Domain of the link key derived from the identity key.
const LINK_KEY_DOMAIN: &[u8] = b"veilnet link static key v1";
const BINDING_CONTEXT: &[u8] = b"veilnet-link-v1 static key:";
/// Longest handshake message we accept.
pub const MAX_HANDSHAKE_MSG: usize = 1024;
/// Most cells in one record.
pub const MAX_BATCH: usize = 32;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 2;
/// Length of a record's tag.
pub const RECORD_TAG_LEN: usize = 16;
/// Header bit: this record is the last under the current key of its
/// direction; both ends ratchet after it.
pub const RECORD_KEY_UPDATE: u16 = 0x8000;

fn params() -> snow::params::NoiseParams {
    PARAMS
        .parse()
        // A constant, valid Noise protocol name.
        .expect("valid noise params")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Write,
    Read,
    Done,
}

/// A node's static link key: derived from its identity, so it needs no
/// storage and no rotation, and published in its descriptor.
#[derive(Clone)]
pub struct LinkKey {
    secret: [u8; 32],
    /// The public half, as published.
    pub public: [u8; 32],
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LinkKey({})",
            self.public
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

impl LinkKey {
    /// Derives the link key of the node with this identity.
    pub fn derive(identity: &Keypair) -> Result<Self, CryptoError> {
        let secret = identity
            .derive_secret(LINK_KEY_DOMAIN)
            .ok_or(CryptoError::BadIdentity(
                "identity key cannot derive secrets",
            ))?;
        Ok(Self {
            public: crate::x25519_public(&secret)?,
            secret,
        })
    }
}

/// A link handshake in progress (either side).
pub struct LinkHandshake {
    state: snow::HandshakeState,
    identity: Keypair,
    static_public: Vec<u8>,
    remote: Option<PublicKey>,
    initiator: bool,
    messages: u8,
}

impl LinkHandshake {
    /// The side that opened the TCP connection, to a responder whose link
    /// key (from its descriptor) is `responder_link_key`. The initiator's own
    /// static key is fresh for every link.
    pub fn initiator(
        identity: &Keypair,
        responder_link_key: &[u8; 32],
    ) -> Result<Self, CryptoError> {
        let static_kp = snow::Builder::new(params()).generate_keypair()?;
        let state = snow::Builder::new(params())
            .prologue(PROLOGUE)?
            .local_private_key(&static_kp.private)?
            .remote_public_key(responder_link_key)?
            .build_initiator()?;
        Ok(Self::with_state(
            state,
            identity,
            static_kp.public.to_vec(),
            true,
        ))
    }

    /// The side that accepted the TCP connection, holding its link key.
    pub fn responder(identity: &Keypair, link_key: &LinkKey) -> Result<Self, CryptoError> {
        let state = snow::Builder::new(params())
            .prologue(PROLOGUE)?
            .local_private_key(&link_key.secret)?
            .build_responder()?;
        Ok(Self::with_state(
            state,
            identity,
            link_key.public.to_vec(),
            false,
        ))
    }

    fn with_state(
        state: snow::HandshakeState,
        identity: &Keypair,
        static_public: Vec<u8>,
        initiator: bool,
    ) -> Self {
        Self {
            state,
            identity: identity.clone(),
            static_public,
            remote: None,
            initiator,
            messages: 0,
        }
    }

    fn step(&self) -> Step {
        if self.state.is_handshake_finished() {
            Step::Done
        } else if self.state.is_my_turn() {
            Step::Write
        } else {
            Step::Read
        }
    }

    /// True when it is our turn to send.
    pub fn wants_write(&self) -> bool {
        self.step() == Step::Write
    }

    /// True when the handshake is complete.
    pub fn is_finished(&self) -> bool {
        self.step() == Step::Done
    }

    /// Produces our next message, framed with its length.
    pub fn write_message(&mut self) -> Result<Vec<u8>, CryptoError> {
        if self.step() != Step::Write {
            return Err(CryptoError::OutOfOrder("not our turn to write"));
        }
        // Message 1 (initiator) carries nothing; messages 2 and 3 carry our identity proof.
        let payload = if self.messages == 0 {
            Vec::new()
        } else {
            self.identity_proof()?
        };
        let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
        let n = self.state.write_message(&payload, &mut buf[2..])?;
        buf.truncate(n + 2);
        buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.messages += 1;
        Ok(buf)
    }

    fn identity_proof(&self) -> Result<Vec<u8>, CryptoError> {
        let key = self.identity.public().encode_protobuf();
        let mut msg = BINDING_CONTEXT.to_vec();
        msg.extend_from_slice(&self.static_public);
        let sig = self
            .identity
            .sign(&msg)
            .map_err(|_| CryptoError::BadIdentity("cannot sign with identity key"))?;
        let mut out = Vec::with_capacity(4 + key.len() + sig.len());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(&key);
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// How many bytes the next frame body has, given its 2-byte length prefix.
    pub fn frame_len(prefix: [u8; 2]) -> Result<usize, CryptoError> {
        let n = u16::from_be_bytes(prefix) as usize;
        if n == 0 || n > MAX_HANDSHAKE_MSG - 2 {
            return Err(CryptoError::BadLength(n));
        }
        Ok(n)
    }

    /// Consumes the peer's next message (without its length prefix).
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), CryptoError> {
        if self.step() != Step::Read {
            return Err(CryptoError::OutOfOrder("not our turn to read"));
        }
        if msg.len() > MAX_HANDSHAKE_MSG {
            return Err(CryptoError::BadLength(msg.len()));
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_MSG];
        let n = self.state.read_message(msg, &mut payload)?;
        self.messages += 1;
        // The responder's message 2 and the initiator's message 3 carry proofs.
        let carries_proof =
            (self.initiator && self.messages == 2) || (!self.initiator && self.messages == 3);
        if carries_proof {
            let remote_static = self
                .state
                .get_remote_static()
                .ok_or(CryptoError::BadIdentity("no remote static key"))?
                .to_vec();
            self.remote = Some(verify_proof(&payload[..n], &remote_static)?);
        } else if n != 0 {
            return Err(CryptoError::Handshake("unexpected payload".into()));
        }
        Ok(())
    }

    /// Completes the handshake: the authenticated remote identity and the record layer.
    pub fn finish(mut self) -> Result<LinkSession, CryptoError> {
        if self.step() != Step::Done {
            return Err(CryptoError::OutOfOrder("handshake not finished"));
        }
        let remote = self
            .remote
            .take()
            .ok_or(CryptoError::BadIdentity("peer sent no identity"))?;
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        let (send, recv) = if self.initiator {
            (i2r, r2i)
        } else {
            (r2i, i2r)
        };
        Ok(LinkSession {
            remote_peer: remote.to_peer_id(),
            remote,
            sealer: RecordSealer::from_key(send),
            opener: RecordOpener::from_key(recv),
        })
    }
}

fn verify_proof(payload: &[u8], remote_static: &[u8]) -> Result<PublicKey, CryptoError> {
    let bad = CryptoError::BadIdentity;
    let take = |b: &[u8], at: usize| -> Result<(usize, usize), CryptoError> {
        let len_bytes = b.get(at..at + 2).ok_or(bad("truncated proof"))?;
        let n = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if b.len() < at + 2 + n {
            return Err(bad("truncated proof"));
        }
        Ok((at + 2, at + 2 + n))
    };
    let (ks, ke) = take(payload, 0)?;
    let (ss, se) = take(payload, ke)?;
    if se != payload.len() {
        return Err(bad("trailing bytes in proof"));
    }
    let key = PublicKey::try_decode_protobuf(&payload[ks..ke])
        .map_err(|_| bad("undecodable identity key"))?;
    let mut msg = BINDING_CONTEXT.to_vec();
    msg.extend_from_slice(remote_static);
    if !key.verify(&msg, &payload[ss..se]) {
        return Err(bad("signature does not bind the static key"));
    }
    Ok(key)
}

/// The result of a link handshake.
pub struct LinkSession {
    /// The authenticated peer.
    pub remote_peer: PeerId,
    /// The peer's identity key.
    pub remote: PublicKey,
    /// Seals records we send.
    pub sealer: RecordSealer,
    /// Opens records we receive.
    pub opener: RecordOpener,
}

/// Seals outgoing records, ratcheting its key as its [`RekeyPolicy`] says
/// (the default one until [`RecordSealer::set_rekey_policy`]).
pub struct RecordSealer {
    key: [u8; 32],
    aead: CounterAead,
    policy: RekeyPolicy,
    /// Records sealed under the current key.
    uses: u64,
    /// When the current key started: the ratchet that made it, or the
    /// first record sealed under the handshake's key.
    started: Option<Instant>,
}

impl RecordSealer {
    /// A sealer on a fixed key, for test vectors and fuzzing only: real
    /// sealers come from [`LinkHandshake::finish`].
    #[doc(hidden)]
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            aead: CounterAead::new(&key),
            key,
            policy: RekeyPolicy::default(),
            uses: 0,
            started: None,
        }
    }

    /// Sets when the sealer retires its key (applies to the current key too).
    pub fn set_rekey_policy(&mut self, policy: RekeyPolicy) {
        self.policy = policy;
    }

    /// Total record length for `n` cells.
    pub fn record_len(n: usize) -> usize {
        RECORD_HEADER_LEN + n * CELL_LEN + RECORD_TAG_LEN
    }

    /// Seals a record in place at time `now`. `record` is `header space | n
    /// cells | tag space`, exactly [`RecordSealer::record_len`]`(n)` bytes with
    /// `1 <= n <= MAX_BATCH`. If the policy says the key is due, the record
    /// carries [`RECORD_KEY_UPDATE`] and the sealer ratchets after it.
    pub fn seal(&mut self, record: &mut [u8], now: Instant) -> Result<(), CryptoError> {
        let body_len = record
            .len()
            .checked_sub(RECORD_HEADER_LEN + RECORD_TAG_LEN)
            .ok_or(CryptoError::BadLength(record.len()))?;
        let n = body_len / CELL_LEN;
        if body_len % CELL_LEN != 0 || n == 0 || n > MAX_BATCH {
            return Err(CryptoError::BadLength(record.len()));
        }
        // At most MAX_USES_PER_KEY: the policy retires the key there.
        let uses = self.uses + 1;
        let started = *self.started.get_or_insert(now);
        let update = self
            .policy
            .is_due(uses, now.saturating_duration_since(started));
        let flag = if update { RECORD_KEY_UPDATE } else { 0 };
        let (header, rest) = record.split_at_mut(RECORD_HEADER_LEN);
        // n <= MAX_BATCH, so it fits the low bits.
        header.copy_from_slice(&(n as u16 | flag).to_be_bytes());
        let (body, tag_space) = rest.split_at_mut(body_len);
        let tag = self.aead.seal(header, body)?;
        tag_space.copy_from_slice(&tag);
        if update {
            self.key = next_key(&self.key);
            self.aead = CounterAead::new(&self.key);
            self.uses = 0;
            self.started = Some(now);
        } else {
            self.uses = uses;
        }
        Ok(())
    }
}

/// Opens incoming records, ratcheting its key after each record that
/// carries [`RECORD_KEY_UPDATE`].
pub struct RecordOpener {
    key: [u8; 32],
    aead: CounterAead,
    /// Records opened (or tried) under the current key.
    uses: u64,
    /// Most records under one key; the last of them must carry the update.
    limit: u64,
}

impl RecordOpener {
    /// An opener on a fixed key, for test vectors and fuzzing only: real
    /// openers come from [`LinkHandshake::finish`].
    #[doc(hidden)]
    pub fn from_key(key: [u8; 32]) -> Self {
        Self::with_limit(key, MAX_USES_PER_KEY)
    }

    pub(crate) fn with_limit(key: [u8; 32], limit: u64) -> Self {
        Self {
            aead: CounterAead::new(&key),
            key,
            uses: 0,
            limit,
        }
    }

    /// Validates a record header; returns the number of cells and how many
    /// bytes follow it (cells and tag).
    pub fn parse_header(header: [u8; RECORD_HEADER_LEN]) -> Result<(usize, usize), CryptoError> {
        let n = usize::from(u16::from_be_bytes(header) & !RECORD_KEY_UPDATE);
        if n == 0 || n > MAX_BATCH {
            return Err(CryptoError::BadLength(n));
        }
        Ok((n, n * CELL_LEN + RECORD_TAG_LEN))
    }

    /// Verifies and decrypts a record body (cells and tag) in place; on success
    /// the first `n * CELL_LEN` bytes are the cells. A record carrying
    /// [`RECORD_KEY_UPDATE`] is opened under the current key, then the key
    /// ratchets. Any error is fatal: the state has moved on and the link
    /// must be closed.
    pub fn open(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        body: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (_, len) = Self::parse_header(header)?;
        if body.len() != len {
            return Err(CryptoError::BadLength(body.len()));
        }
        let update = u16::from_be_bytes(header) & RECORD_KEY_UPDATE != 0;
        self.uses = self.uses.saturating_add(1);
        if self.uses >= self.limit && !update {
            return Err(CryptoError::KeyUpdateOverdue(self.limit));
        }
        if update && self.uses < MIN_USES_PER_KEY {
            // A peer must not make us derive a key for every record.
            return Err(CryptoError::KeyUpdateTooSoon(self.uses));
        }
        let (cells, tag) = body.split_at_mut(len - RECORD_TAG_LEN);
        let mut t = [0u8; RECORD_TAG_LEN];
        t.copy_from_slice(tag);
        self.aead.open(&header, cells, &t, 0)?;
        if update {
            self.key = next_key(&self.key);
            self.aead = CounterAead::new(&self.key);
            self.uses = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(a: &mut LinkHandshake, b: &mut LinkHandshake) {
        while !(a.is_finished() && b.is_finished()) {
            let (w, r) = if a.wants_write() {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            let m = w.write_message().unwrap();
            let n = LinkHandshake::frame_len([m[0], m[1]]).unwrap();
            assert_eq!(n + 2, m.len());
            r.read_message(&m[2..]).unwrap();
        }
    }

    fn pair(ka: &Keypair, kb: &Keypair) -> (LinkHandshake, LinkHandshake) {
        let lk = LinkKey::derive(kb).unwrap();
        (
            LinkHandshake::initiator(ka, &lk.public).unwrap(),
            LinkHandshake::responder(kb, &lk).unwrap(),
        )
    }

    #[test]
    fn link_key_is_derived_deterministically() {
        let k = Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
        let a = LinkKey::derive(&k).unwrap();
        let b = LinkKey::derive(&k).unwrap();
        assert_eq!(a.public, b.public);
        assert_ne!(
            a.public,
            LinkKey::derive(&Keypair::generate_ed25519())
                .unwrap()
                .public
        );
    }

    #[test]
    fn a_prober_without_the_link_key_gets_no_answer() {
        let kb = Keypair::generate_ed25519();
        let lk = LinkKey::derive(&kb).unwrap();
        // The prober guesses a key: its first message does not authenticate.
        let wrong = LinkKey::derive(&Keypair::generate_ed25519()).unwrap();
        let mut prober =
            LinkHandshake::initiator(&Keypair::generate_ed25519(), &wrong.public).unwrap();
        let m1 = prober.write_message().unwrap();
        let mut b = LinkHandshake::responder(&kb, &lk).unwrap();
        assert!(b.read_message(&m1[2..]).is_err());
        // Random bytes of the right length fail the same way.
        let mut b = LinkHandshake::responder(&kb, &lk).unwrap();
        assert!(b.read_message(&[0x5a; 48]).is_err());
    }

    #[test]
    fn handshake_authenticates_both_sides() {
        let ka = Keypair::generate_ed25519();
        let kb = Keypair::generate_ed25519();
        let (mut a, mut b) = pair(&ka, &kb);
        run(&mut a, &mut b);
        let mut sa = a.finish().unwrap();
        let mut sb = b.finish().unwrap();
        assert_eq!(sa.remote_peer, kb.public().to_peer_id());
        assert_eq!(sb.remote_peer, ka.public().to_peer_id());

        for n in [1, 2, MAX_BATCH] {
            let mut rec = vec![0u8; RecordSealer::record_len(n)];
            for (i, b) in rec[2..2 + n * CELL_LEN].iter_mut().enumerate() {
                *b = i as u8;
            }
            let plain = rec.clone();
            sa.sealer.seal(&mut rec, Instant::now()).unwrap();
            assert_ne!(rec[2..10], plain[2..10]);
            let hdr = [rec[0], rec[1]];
            assert_eq!(RecordOpener::parse_header(hdr).unwrap().0, n);
            sb.opener.open(hdr, &mut rec[2..]).unwrap();
            assert_eq!(rec[2..2 + n * CELL_LEN], plain[2..2 + n * CELL_LEN]);
        }
    }

    #[test]
    fn first_message_has_no_identifiers() {
        let ka = Keypair::generate_ed25519();
        let kb = Keypair::generate_ed25519();
        let (mut a, _) = pair(&ka, &kb);
        let m = a.write_message().unwrap();
        assert_eq!(m.len(), 2 + 32 + 16, "only an ephemeral key and a tag");
    }

    #[test]
    fn records_reject_tamper_replay_and_bad_headers() {
        let ka = Keypair::generate_ed25519();
        let kb = Keypair::generate_ed25519();
        let (mut a, mut b) = pair(&ka, &kb);
        run(&mut a, &mut b);
        let mut sa = a.finish().unwrap();
        let mut sb = b.finish().unwrap();
        let mut rec = vec![0u8; RecordSealer::record_len(1)];
        sa.sealer.seal(&mut rec, Instant::now()).unwrap();
        let copy = rec.clone();
        rec[100] ^= 1;
        assert!(sb.opener.open([rec[0], rec[1]], &mut rec[2..]).is_err());
        // After a failure the counter moved on, so even the good copy fails: the link must die.
        let mut again = copy.clone();
        assert!(sb
            .opener
            .open([again[0], again[1]], &mut again[2..])
            .is_err());
        assert!(RecordOpener::parse_header([0, 0]).is_err());
        assert!(RecordOpener::parse_header([0, 33]).is_err());
        // The key-update bit is not part of the count; no other bit may be set.
        assert_eq!(RecordOpener::parse_header([0x80, 1]).unwrap().0, 1);
        assert_eq!(RecordOpener::parse_header([0x80, 32]).unwrap().0, 32);
        assert!(RecordOpener::parse_header([0x80, 0]).is_err());
        assert!(RecordOpener::parse_header([0x80, 33]).is_err());
        assert!(RecordOpener::parse_header([0x40, 1]).is_err());
        assert!(RecordOpener::parse_header([0x01, 1]).is_err());
        assert!(sa.sealer.seal(&mut [0u8; 17], Instant::now()).is_err());
    }

    #[test]
    fn garbage_and_truncated_handshakes_fail_cleanly() {
        let kb = Keypair::generate_ed25519();
        let ka = Keypair::generate_ed25519();
        let (mut a, mut b) = pair(&ka, &kb);
        let m1 = a.write_message().unwrap();
        b.read_message(&m1[2..]).unwrap();
        let m2 = b.write_message().unwrap();
        for cut in 0..m2.len() - 2 {
            let (mut a2, _) = pair(&ka, &kb);
            let _ = a2.write_message().unwrap();
            assert!(a2.read_message(&m2[2..2 + cut]).is_err());
        }
        let (_, mut r) = pair(&ka, &kb);
        assert!(r.read_message(&[0xAB; 31]).is_err());
        assert!(LinkHandshake::frame_len([0xff, 0xff]).is_err());
        assert!(r.finish().is_err());
    }

    #[test]
    fn proof_for_another_static_key_is_rejected() {
        let k = Keypair::generate_ed25519();
        let (hs, _) = pair(&k, &Keypair::generate_ed25519());
        let proof = hs.identity_proof().unwrap();
        assert!(verify_proof(&proof, &hs.static_public).is_ok());
        assert!(verify_proof(&proof, &[0u8; 32]).is_err());
        assert!(verify_proof(&proof[..proof.len() - 1], &hs.static_public).is_err());
    }
    use std::time::Duration;

    const KEY: [u8; 32] = [0x42; 32];

    fn sessions() -> (LinkSession, LinkSession) {
        let ka = Keypair::generate_ed25519();
        let kb = Keypair::generate_ed25519();
        let (mut a, mut b) = pair(&ka, &kb);
        run(&mut a, &mut b);
        (a.finish().unwrap(), b.finish().unwrap())
    }

    fn policy(max_uses: u64, max_age: Duration) -> RekeyPolicy {
        RekeyPolicy { max_uses, max_age }
    }

    /// An unsealed record of `n` cells whose bytes depend on `seq`.
    fn plain(n: usize, seq: u8) -> Vec<u8> {
        let mut rec = vec![0u8; RecordSealer::record_len(n)];
        let end = RECORD_HEADER_LEN + n * CELL_LEN;
        for (i, b) in rec[RECORD_HEADER_LEN..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7) ^ seq;
        }
        rec
    }

    fn cells(rec: &[u8]) -> &[u8] {
        &rec[RECORD_HEADER_LEN..rec.len() - RECORD_TAG_LEN]
    }

    fn is_update(rec: &[u8]) -> bool {
        u16::from_be_bytes([rec[0], rec[1]]) & RECORD_KEY_UPDATE != 0
    }

    fn open(o: &mut RecordOpener, rec: &mut [u8]) -> Result<(), CryptoError> {
        let (hdr, body) = rec.split_at_mut(RECORD_HEADER_LEN);
        o.open([hdr[0], hdr[1]], body)
    }

    fn sealed(s: &mut RecordSealer, seq: u8, now: Instant) -> Vec<u8> {
        let mut rec = plain(1, seq);
        s.seal(&mut rec, now).unwrap();
        rec
    }

    #[test]
    fn records_cross_several_rekeys_by_count() {
        let (mut sa, mut sb) = sessions();
        assert_eq!(sb.opener.limit, MAX_USES_PER_KEY);
        sa.sealer
            .set_rekey_policy(policy(MIN_USES_PER_KEY, Duration::MAX));
        let now = Instant::now();
        let mut updates = Vec::new();
        for seq in 0..50u8 {
            let n = [1, 5, MAX_BATCH][usize::from(seq) % 3];
            let p = plain(n, seq);
            let mut rec = p.clone();
            sa.sealer.seal(&mut rec, now).unwrap();
            assert_ne!(cells(&rec), cells(&p));
            assert_eq!(RecordOpener::parse_header([rec[0], rec[1]]).unwrap().0, n);
            updates.push(is_update(&rec));
            open(&mut sb.opener, &mut rec).unwrap();
            assert_eq!(cells(&rec), cells(&p), "record {seq}");
        }
        let every_16th: Vec<bool> = (1..=50).map(|i| i % MIN_USES_PER_KEY == 0).collect();
        assert_eq!(updates, every_16th);
        // The other direction is independent: still on its first key.
        for seq in 0..4 {
            let mut rec = sealed(&mut sb.sealer, seq, now);
            assert!(!is_update(&rec));
            open(&mut sa.opener, &mut rec).unwrap();
        }
    }

    #[test]
    fn records_rekey_by_age_with_the_time_passed_in() {
        let mut s = RecordSealer::from_key(KEY);
        s.set_rekey_policy(policy(u64::MAX, Duration::from_secs(10)));
        let mut o = RecordOpener::from_key(KEY);
        let t0 = Instant::now();
        let mut seq = 0u8;
        let mut flags = |secs: u64, n: u64| -> Vec<bool> {
            (0..n)
                .map(|_| {
                    seq = seq.wrapping_add(1);
                    let p = plain(2, seq);
                    let mut rec = p.clone();
                    s.seal(&mut rec, t0 + Duration::from_secs(secs)).unwrap();
                    let last = is_update(&rec);
                    open(&mut o, &mut rec).unwrap();
                    assert_eq!(cells(&rec), cells(&p), "record {seq}");
                    last
                })
                .collect()
        };
        let min = MIN_USES_PER_KEY;
        // The first key starts with its first record; the first record at
        // or after 10 s is its last, once it has been used `min` times.
        assert!(flags(0, min - 1).iter().all(|f| !f));
        assert_eq!(flags(9, 1), [false]);
        assert_eq!(flags(10, 1), [true]);
        // The next key started at 10 s: old enough at 30 s, but it retires
        // only at its `min`-th record.
        let second = flags(30, min);
        assert!(second[..(min - 1) as usize].iter().all(|f| !f));
        assert_eq!(second.last(), Some(&true));
        assert_eq!(flags(31, 3), [false; 3]);
        assert_eq!(s.key, next_key(&next_key(&KEY)));
        assert_eq!(o.key, s.key);
    }

    #[test]
    fn a_flipped_key_update_bit_fails_to_open() {
        // The MIN-th record of a key: with max_uses MIN it carries the flag
        // and loses it; with MIN + 1 it gains it.
        for max_uses in [MIN_USES_PER_KEY, MIN_USES_PER_KEY + 1] {
            let mut s = RecordSealer::from_key(KEY);
            s.set_rekey_policy(policy(max_uses, Duration::MAX));
            let mut o = RecordOpener::from_key(KEY);
            let now = Instant::now();
            for i in 0..MIN_USES_PER_KEY - 1 {
                open(&mut o, &mut sealed(&mut s, i as u8, now)).unwrap();
            }
            let mut rec = sealed(&mut s, 0, now);
            assert_eq!(is_update(&rec), max_uses == MIN_USES_PER_KEY);
            rec[0] ^= 0x80;
            // The header still parses: only the tag catches the change.
            assert!(RecordOpener::parse_header([rec[0], rec[1]]).is_ok());
            assert_eq!(open(&mut o, &mut rec), Err(CryptoError::BadTag(0)));
            assert_eq!(o.key, KEY, "a forged flag must not ratchet");
        }
    }

    #[test]
    fn a_key_update_too_soon_is_refused() {
        // A peer that flags its first record: we would derive a key per
        // record for it. Sealed by hand, as our sealer never does this.
        let mut aead = CounterAead::new(&KEY);
        let mut rec = plain(1, 0);
        let header = (1u16 | RECORD_KEY_UPDATE).to_be_bytes();
        rec[..RECORD_HEADER_LEN].copy_from_slice(&header);
        let end = rec.len() - RECORD_TAG_LEN;
        let tag = aead
            .seal(&header, &mut rec[RECORD_HEADER_LEN..end])
            .unwrap();
        rec[end..].copy_from_slice(&tag);
        let mut o = RecordOpener::from_key(KEY);
        assert_eq!(
            open(&mut o, &mut rec),
            Err(CryptoError::KeyUpdateTooSoon(1))
        );
    }

    #[test]
    fn records_from_before_a_rekey_do_not_open_after_it() {
        let mut s = RecordSealer::from_key(KEY);
        let min = MIN_USES_PER_KEY as usize;
        s.set_rekey_policy(policy(MIN_USES_PER_KEY, Duration::MAX));
        let now = Instant::now();
        let recs: Vec<Vec<u8>> = (0..2 * min).map(|i| sealed(&mut s, i as u8, now)).collect();
        let flags: Vec<bool> = recs.iter().map(|r| is_update(r)).collect();
        let expected: Vec<bool> = (1..=2 * min).map(|i| i % min == 0).collect();
        assert_eq!(flags, expected);
        // The sealer dropped the old keys.
        assert_eq!(s.key, next_key(&next_key(&KEY)));
        // Record `min` is the first under the new key, at nonce 0 again: an
        // opener still on the old key at nonce 0 cannot open it.
        let mut stale = RecordOpener::from_key(KEY);
        assert_eq!(
            open(&mut stale, &mut recs[min].clone()),
            Err(CryptoError::BadTag(0))
        );
        // A record from before the rekey, replayed after it, fails.
        for replayed in [0, 1, min - 1] {
            let mut o = RecordOpener::from_key(KEY);
            for r in &recs[..min] {
                open(&mut o, &mut r.clone()).unwrap();
            }
            assert!(open(&mut o, &mut recs[replayed].clone()).is_err());
        }
        // In order, all of them open.
        let mut o = RecordOpener::from_key(KEY);
        for (i, r) in recs.iter().enumerate() {
            let mut r = r.clone();
            open(&mut o, &mut r).unwrap();
            assert_eq!(cells(&r), cells(&plain(1, i as u8)));
        }
    }

    #[test]
    fn an_opener_refuses_a_key_used_past_its_limit() {
        let now = Instant::now();
        const LIMIT: u64 = 20;
        // A peer that never rekeys (within LIMIT records).
        let mut s = RecordSealer::from_key(KEY);
        s.set_rekey_policy(policy(u64::MAX, Duration::MAX));
        let mut o = RecordOpener::with_limit(KEY, LIMIT);
        for i in 0..LIMIT - 1 {
            open(&mut o, &mut sealed(&mut s, i as u8, now)).unwrap();
        }
        // The LIMIT-th record is the last one the key may open: it must
        // carry the update.
        assert_eq!(
            open(&mut o, &mut sealed(&mut s, 0, now)),
            Err(CryptoError::KeyUpdateOverdue(LIMIT))
        );
        assert!(open(&mut o, &mut sealed(&mut s, 1, now)).is_err());
        // A peer that rekeys by then passes the limit many times over.
        let mut s = RecordSealer::from_key(KEY);
        s.set_rekey_policy(policy(LIMIT, Duration::MAX));
        let mut o = RecordOpener::with_limit(KEY, LIMIT);
        for i in 0..5 * LIMIT {
            open(&mut o, &mut sealed(&mut s, i as u8, now)).unwrap();
        }
    }

    #[test]
    fn hard_limit_is_two_to_the_32_records_per_key() {
        assert_eq!(MAX_USES_PER_KEY, 1 << 32);
        let now = Instant::now();
        // Whatever the policy, a sealer retires its key at record 2^32.
        let mut s = RecordSealer::from_key(KEY);
        s.set_rekey_policy(policy(u64::MAX, Duration::MAX));
        s.uses = MAX_USES_PER_KEY - 2;
        assert!(!is_update(&sealed(&mut s, 0, now)));
        assert!(is_update(&sealed(&mut s, 0, now)));
        assert_eq!((s.uses, s.key), (0, next_key(&KEY)));
        // An opener refuses record 2^32 of one key without the update
        // (checked before any decryption).
        let mut o = RecordOpener::from_key(KEY);
        o.uses = MAX_USES_PER_KEY - 1;
        let mut rec = sealed(&mut RecordSealer::from_key(KEY), 0, now);
        assert_eq!(
            open(&mut o, &mut rec),
            Err(CryptoError::KeyUpdateOverdue(MAX_USES_PER_KEY))
        );
    }
}
