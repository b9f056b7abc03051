//! The one table of records every simulated node shares: each descriptor
//! is signed once, verified once and stored once, and nodes refer to it by
//! index.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use rand::Rng;
use veilnet_dir::{Descriptor, Roles, SignedDescriptor, MAX_DESCRIPTOR_AGE};
use veilnet_discovery::sync::Fingerprint;
use veilnet_discovery::RecordDigest;
use veilnet_policy::ExitPolicy;

use crate::SimError;

/// Unix time (seconds) of simulated time zero.
pub const EPOCH_UNIX: u64 = 1_790_000_000;

/// A record's index in [`Records`].
pub type RecordId = u32;

/// A hasher for keys that are already uniformly random (SHA-256 digests):
/// their first eight bytes.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes (after a length that `write_usize`
        // ignores); fold whatever comes in so any key type still works.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
            if bytes.len() >= 8 {
                break;
            }
        }
    }
    fn write_usize(&mut self, _: usize) {}
    fn write_u32(&mut self, n: u32) {
        // Record ids: spread them over the table.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by digests.
pub type DigestMap<V> = HashMap<RecordDigest, V, BuildHasherDefault<DigestHasher>>;

/// Flag on a [`Record::slot`]: the slot is a measurement report's (its
/// measurer and period), not a relay's descriptor.
pub const REPORT_SLOT: u32 = 1 << 31;

/// One record as it travels: a signed descriptor
/// ([`SignedDescriptor::to_bytes`]) or a measurement report
/// ([`veilnet_dir::measure::Report::sign`]), with what the simulator
/// tracks about it.
#[derive(Debug)]
pub struct Record {
    /// The relay that published it (index in the relay table): for a
    /// report, its measurer.
    pub relay: u32,
    /// Where a view holds it: the relay's index for a descriptor, and
    /// [`REPORT_SLOT`] with the measurer and the period (modulo the
    /// periods kept) for a report. A later record of the same slot
    /// replaces an earlier one.
    pub slot: u32,
    /// Its sequence number (a report's: its period).
    pub seq: u64,
    /// Its `published` field (unix seconds).
    pub published: u64,
    /// Simulated time it was published (µs), `None` for the records the
    /// network already held at time zero.
    pub born_us: Option<u64>,
    /// SHA-256 of `bytes`.
    pub digest: RecordDigest,
    /// The framed signed descriptor.
    pub bytes: Vec<u8>,
    /// Live relays holding it.
    pub holders_relays: u32,
    /// Live nodes (relays and clients) holding it.
    pub holders_all: u32,
    /// When it first reached 99 % of live relays (µs after publication).
    pub reached_relays_us: Option<u64>,
    /// When it first reached 99 % of all live nodes (µs after publication).
    pub reached_all_us: Option<u64>,
    /// Unix second from which the real directory refuses and drops it: a
    /// descriptor's `published + MAX_DESCRIPTOR_AGE + 1`, a report's start
    /// of the first period that no longer keeps its own
    /// ([`veilnet_dir::measure::MeasureParams::first_kept`]).
    pub expires_unix: u64,
}

impl Record {
    /// Whether the real directory's age rule refuses or drops it at `now`
    /// (unix seconds): for a descriptor `published < now -
    /// MAX_DESCRIPTOR_AGE`; for a report, its period is no longer kept.
    pub fn too_old(&self, now_unix: u64) -> bool {
        now_unix >= self.expires_unix
    }

    /// Whether it is a measurement report.
    pub fn is_report(&self) -> bool {
        self.slot & REPORT_SLOT != 0
    }

    /// `expires_unix` of a descriptor published at `published`.
    pub fn descriptor_expiry(published: u64) -> u64 {
        published + MAX_DESCRIPTOR_AGE + 1
    }
}

/// A node's sorted keys and their whole-set fingerprint, shared by all
/// nodes whose views are equal.
#[derive(Debug)]
pub struct Cached {
    /// The sorted keys.
    pub keys: Arc<[veilnet_discovery::RecordKey]>,
    /// [`veilnet_discovery::sync::fingerprint`] of all of them, once asked.
    pub fingerprint: std::sync::OnceLock<Fingerprint>,
    /// Fingerprints of runs of them (by first index and length), as asked:
    /// every node holding this set answers the same splits, so each is
    /// hashed once (at most [`MAX_RANGE_FINGERPRINTS`] kept).
    pub ranges: std::sync::Mutex<HashMap<(u32, u32), Fingerprint>>,
}

/// Range fingerprints kept per shared digest set.
pub const MAX_RANGE_FINGERPRINTS: usize = 1 << 14;

/// All records ever published in a run.
#[derive(Debug, Default)]
pub struct Records {
    /// By [`RecordId`].
    pub list: Vec<Record>,
    /// Digest to id and slot (the slot here too, so a lookup touches one
    /// table).
    pub by_digest: DigestMap<(RecordId, u32)>,
    /// Materialised views by content hash, so equal views share one array.
    pub interned: Mutex<HashMap<u128, Weak<Cached>>>,
}

impl Records {
    /// Adds a record; its digest must be new.
    pub fn add(&mut self, rec: Record) -> RecordId {
        let id = RecordId::try_from(self.list.len()).expect("fewer than 2^31 records in a run");
        self.by_digest.insert(rec.digest, (id, rec.slot));
        self.list.push(rec);
        id
    }

    /// The record with this id.
    pub fn get(&self, id: RecordId) -> &Record {
        &self.list[id as usize]
    }
}

/// A relay: its identity, what it advertises, and its state.
pub struct Relay {
    /// Its identity key.
    pub keypair: Keypair,
    /// The descriptor it signs anew at each publication.
    pub template: Descriptor,
    /// Whether the attacker runs it.
    pub sybil: bool,
    /// What it really carries (bytes/s); `template.bandwidth` is what it
    /// claims.
    pub real_bandwidth: u64,
    /// Its node index.
    pub node: u32,
    /// Whether it still runs.
    pub alive: bool,
}

impl Relay {
    /// A relay with a fresh identity drawn from `rng`, listening on `ip`.
    pub fn new(
        rng: &mut impl Rng,
        ip: Ipv4Addr,
        advertised: u64,
        real_bandwidth: u64,
        exit: bool,
        sybil: bool,
        node: u32,
    ) -> Result<Relay, SimError> {
        let mut secret: [u8; 32] = rng.gen();
        let keypair = Keypair::ed25519_from_bytes(&mut secret)
            .map_err(|e| SimError::Setup(format!("identity key: {e}")))?;
        let public = keypair.public();
        let p2p: Multiaddr = format!("/ip4/{ip}/tcp/4001")
            .parse()
            .map_err(|e| SimError::Setup(format!("p2p address: {e}")))?;
        let template = Descriptor {
            peer_id: public.to_peer_id(),
            identity_key: public.encode_protobuf(),
            link_addrs: vec![SocketAddr::new(IpAddr::V4(ip), 9001)],
            p2p_addrs: vec![p2p],
            onion_key: rng.gen(),
            onion_key_expires: 0,
            link_key: rng.gen(),
            roles: Roles { relay: true, exit },
            exit_policy: if exit {
                ExitPolicy::default_exit()
            } else {
                ExitPolicy::reject_all()
            },
            bandwidth: advertised,
            region: "ZZ".into(),
            family: Vec::new(),
            version: concat!("veilnet/", env!("CARGO_PKG_VERSION")).into(),
            seq: 0,
            published: 0,
        };
        Ok(Relay {
            keypair,
            template,
            sybil,
            real_bandwidth,
            node,
            alive: true,
        })
    }

    /// The relay's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.template.peer_id
    }

    /// Signs a new descriptor published at `now_unix` (seconds) with
    /// `seq_ms` as its sequence number if that is higher than the last (the
    /// node takes milliseconds of the clock, see `OwnDescriptor::sign_new`
    /// in veilnet-node), and verifies it once as every node would.
    pub fn sign_new(
        &mut self,
        now_unix: u64,
        seq_ms: u64,
        verify_at: u64,
    ) -> Result<SignedDescriptor, SimError> {
        self.template.seq = seq_ms.max(self.template.seq + 1);
        self.template.published = now_unix;
        // Onion keys rotate on their own schedule; in a run they stay valid.
        self.template.onion_key_expires = now_unix + 7 * 24 * 3600;
        let signed = self
            .template
            .sign(&self.keypair)
            .map_err(|e| SimError::Setup(format!("signing a descriptor: {e}")))?;
        signed
            .clone()
            .verify_into(verify_at)
            .map_err(|e| SimError::Setup(format!("a fresh descriptor does not verify: {e}")))?;
        Ok(signed)
    }
}

/// Public-looking IPv4 addresses, one per distinct /24: first octets from
/// 1–223 without 0, 10, 100 (shared space), 127, 169, 172, 192 and 198
/// (their private, link-local or benchmark blocks), host part `.1`–`.254`.
#[derive(Debug, Default)]
pub struct AddressPlan {
    used: std::collections::HashSet<[u8; 3]>,
}

impl AddressPlan {
    fn first_octet(rng: &mut impl Rng) -> u8 {
        loop {
            let a: u8 = rng.gen_range(1..=223);
            if ![10, 100, 127, 169, 172, 192, 198].contains(&a) {
                return a;
            }
        }
    }

    /// A new /24 nobody else is in (bounded: the space holds ~13 million).
    pub fn subnet(&mut self, rng: &mut impl Rng) -> Result<[u8; 3], SimError> {
        for _ in 0..1_000_000 {
            let s = [Self::first_octet(rng), rng.gen(), rng.gen()];
            if self.used.insert(s) {
                return Ok(s);
            }
        }
        Err(SimError::Setup("no free /24 left".into()))
    }

    /// An address in a new /24.
    pub fn address(&mut self, rng: &mut impl Rng) -> Result<Ipv4Addr, SimError> {
        let [a, b, c] = self.subnet(rng)?;
        Ok(Ipv4Addr::new(a, b, c, rng.gen_range(1..=254)))
    }
}

/// A log-normal draw: `median * exp(sigma * N(0, 1))` (Box–Muller).
pub fn log_normal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}
