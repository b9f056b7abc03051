//! The per-hop circuit handshake: `Noise_NK_25519_AESGCM_SHA256`.
//!
//! The client knows the relay's onion key (from its signed descriptor) and
//! sends one message; the relay answers with one. Both sides end with the
//! same [`HopKeys`]. Ephemeral-ephemeral DH makes the keys forward secret;
//! the ephemeral-static DH with the onion key authenticates the relay. The
//! relay learns nothing about the client.

use ring::hkdf;

use crate::CryptoError;

const PARAMS: &str = "Noise_NK_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"veilnet-circuit-v1";
/// Cipher suite byte carried in the client's first message: AES-256-GCM layers.
pub const SUITE_AES256GCM: u8 = 1;
/// Length of the client's handshake message.
pub const CLIENT_MSG_LEN: usize = 32 + 1 + 16;
/// Length of the relay's handshake reply.
pub const RELAY_MSG_LEN: usize = 32 + 16;

fn params() -> snow::params::NoiseParams {
    PARAMS
        .parse()
        // A constant, valid Noise protocol name.
        .expect("valid noise params")
}

/// The four keys of one hop: data and header-mask keys in each direction.
#[derive(Clone, PartialEq, Eq)]
pub struct HopKeys {
    /// Client-to-exit direction, payload AEAD.
    pub fwd_data: [u8; 32],
    /// Client-to-exit direction, onion header mask.
    pub fwd_mask: [u8; 32],
    /// Exit-to-client direction, payload AEAD.
    pub bwd_data: [u8; 32],
    /// Exit-to-client direction, onion header mask.
    pub bwd_mask: [u8; 32],
}

impl std::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKeys(..)")
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl HopKeys {
    /// Derives the hop keys from the Noise split keys (initiator-to-responder
    /// and responder-to-initiator): HKDF-SHA256 with salt
    /// `veilnet-onion-keys-v1`, input `i2r | r2i`, info `hop keys`, 128 bytes
    /// cut into forward data, forward mask, backward data, backward mask.
    /// Public for known-answer tests.
    pub fn derive(i2r: &[u8; 32], r2i: &[u8; 32]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"veilnet-onion-keys-v1");
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(i2r);
        ikm[32..].copy_from_slice(r2i);
        let prk = salt.extract(&ikm);
        let mut out = [0u8; 128];
        prk.expand(&[b"hop keys"], Len(128))
            .and_then(|okm| okm.fill(&mut out))
            // 128 bytes is far below HKDF-SHA256's 255 * 32 byte limit.
            .expect("HKDF output length is valid");
        let k = |i: usize| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&out[i * 32..(i + 1) * 32]);
            a
        };
        Self {
            fwd_data: k(0),
            fwd_mask: k(1),
            bwd_data: k(2),
            bwd_mask: k(3),
        }
    }
}

/// An X25519 onion key pair: the key a relay's circuit handshakes answer to.
/// (The key store in `veilnet-config` adds its expiry and identity signature.)
#[derive(Clone, PartialEq, Eq)]
pub struct OnionKeypair {
    /// Secret scalar.
    pub secret: [u8; 32],
    /// Public key, published in the descriptor.
    pub public: [u8; 32],
}

impl std::fmt::Debug for OnionKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKeypair")
            .field("secret", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

impl OnionKeypair {
    /// Generates a fresh key pair.
    pub fn generate() -> Result<Self, CryptoError> {
        let kp = snow::Builder::new(params()).generate_keypair()?;
        let mut secret = [0u8; 32];
        let mut public = [0u8; 32];
        if kp.private.len() != 32 || kp.public.len() != 32 {
            return Err(CryptoError::BadLength(kp.private.len()));
        }
        secret.copy_from_slice(&kp.private);
        public.copy_from_slice(&kp.public);
        Ok(Self { secret, public })
    }

    /// The key pair of `secret`, its public key computed by the DH the
    /// handshake uses.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, CryptoError> {
        Ok(Self {
            public: crate::x25519_public(&secret)?,
            secret,
        })
    }
}

/// The client's side of one hop handshake, waiting for the relay's reply.
pub struct ClientHandshake {
    state: snow::HandshakeState,
}

impl ClientHandshake {
    /// Starts a handshake with the relay whose onion key is `relay_onion_key`;
    /// returns the state and the message to send in CREATE or EXTEND.
    pub fn start(relay_onion_key: &[u8; 32]) -> Result<(Self, Vec<u8>), CryptoError> {
        let mut state = snow::Builder::new(params())
            .prologue(PROLOGUE)?
            .remote_public_key(relay_onion_key)?
            .build_initiator()?;
        let mut msg = vec![0u8; CLIENT_MSG_LEN];
        let n = state.write_message(&[SUITE_AES256GCM], &mut msg)?;
        msg.truncate(n);
        Ok((Self { state }, msg))
    }

    /// Completes the handshake with the relay's reply.
    pub fn finish(mut self, reply: &[u8]) -> Result<HopKeys, CryptoError> {
        if reply.len() != RELAY_MSG_LEN {
            return Err(CryptoError::BadLength(reply.len()));
        }
        let mut payload = [0u8; 64];
        let n = self.state.read_message(reply, &mut payload)?;
        if n != 0 {
            return Err(CryptoError::Handshake("unexpected reply payload".into()));
        }
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        Ok(HopKeys::derive(&i2r, &r2i))
    }
}

/// The relay's side: answers a client's message in one step.
pub fn relay_handshake(
    onion_secret: &[u8; 32],
    client_msg: &[u8],
) -> Result<(Vec<u8>, HopKeys), CryptoError> {
    if client_msg.len() != CLIENT_MSG_LEN {
        return Err(CryptoError::BadLength(client_msg.len()));
    }
    let mut state = snow::Builder::new(params())
        .prologue(PROLOGUE)?
        .local_private_key(onion_secret)?
        .build_responder()?;
    let mut payload = [0u8; 64];
    let n = state.read_message(client_msg, &mut payload)?;
    if n != 1 || payload[0] != SUITE_AES256GCM {
        return Err(CryptoError::Handshake("unsupported cipher suite".into()));
    }
    let mut reply = vec![0u8; RELAY_MSG_LEN];
    let n = state.write_message(&[], &mut reply)?;
    reply.truncate(n);
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok((reply, HopKeys::derive(&i2r, &r2i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_agrees() {
        let relay = OnionKeypair::generate().unwrap();
        let (client, msg) = ClientHandshake::start(&relay.public).unwrap();
        assert_eq!(msg.len(), CLIENT_MSG_LEN);
        let (reply, relay_keys) = relay_handshake(&relay.secret, &msg).unwrap();
        assert_eq!(reply.len(), RELAY_MSG_LEN);
        let client_keys = client.finish(&reply).unwrap();
        assert!(client_keys == relay_keys);
        assert_ne!(client_keys.fwd_data, client_keys.bwd_data);
    }

    #[test]
    fn wrong_onion_key_fails() {
        let relay = OnionKeypair::generate().unwrap();
        let other = OnionKeypair::generate().unwrap();
        let (_client, msg) = ClientHandshake::start(&other.public).unwrap();
        assert!(relay_handshake(&relay.secret, &msg).is_err());
    }

    #[test]
    fn tampered_and_truncated_messages_fail() {
        let relay = OnionKeypair::generate().unwrap();
        let (client, mut msg) = ClientHandshake::start(&relay.public).unwrap();
        for len in 0..msg.len() {
            assert!(relay_handshake(&relay.secret, &msg[..len]).is_err());
        }
        msg[40] ^= 1;
        assert!(relay_handshake(&relay.secret, &msg).is_err());
        let (_c2, msg2) = ClientHandshake::start(&relay.public).unwrap();
        let (mut reply, _) = relay_handshake(&relay.secret, &msg2).unwrap();
        reply[0] ^= 1;
        assert!(client.finish(&reply).is_err());
    }

    #[test]
    fn key_derivation_vector() {
        let keys = HopKeys::derive(&[1u8; 32], &[2u8; 32]);
        // Pinned so that a change to the derivation breaks loudly.
        let all = [keys.fwd_data, keys.fwd_mask, keys.bwd_data, keys.bwd_mask].concat();
        let again = HopKeys::derive(&[1u8; 32], &[2u8; 32]);
        assert!(keys == again);
        assert_eq!(hex::encode(&all[..8]), "7564999cc39face9");
    }
}
