//! Descriptor signing, framing, verification and the directory store.
#![allow(clippy::unwrap_used)]

mod common;

use common::{desc, key, sign, NOW};
use libp2p::identity::Keypair;
use veilnet_dir::{
    Descriptor, DescriptorError, Directory, Inserted, SignedDescriptor, MAX_CLOCK_SKEW,
    MAX_DESCRIPTOR_AGE, MAX_DESCRIPTOR_BYTES, SIGNING_CONTEXT,
};
use veilnet_error::{ErrorKind, HasKind};
use veilnet_policy::ExitPolicy;

/// The fixed test-vector descriptor: ed25519 secret key = 32 bytes of 0x01.
fn vector_descriptor() -> (Keypair, Descriptor) {
    let key = Keypair::ed25519_from_bytes([1u8; 32]).unwrap();
    let public = key.public();
    let d = Descriptor {
        peer_id: public.to_peer_id(),
        identity_key: public.encode_protobuf(),
        link_addrs: vec!["203.0.113.7:9001".parse().unwrap()],
        p2p_addrs: vec!["/ip4/203.0.113.7/tcp/4001".parse().unwrap()],
        onion_key: [0x42; 32],
        onion_key_expires: 1_700_604_800,
        link_key: [0x24; 32],
        roles: veilnet_dir::Roles {
            relay: true,
            exit: true,
        },
        exit_policy: ExitPolicy::parse_rules(&["reject 10.0.0.0/8:*", "accept *:443"]).unwrap(),
        bandwidth: 5_000_000,
        region: "DE".into(),
        family: vec![],
        version: "veilnet/0.1.0".into(),
        seq: 7,
        published: 1_700_000_000,
    };
    (key, d)
}

const VECTOR_PEER_ID: &str = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";
/// Checked by hand against the layout in `veilnet_dir::wire`: format 3,
/// the raw key, roles 3, one link address, one libp2p address, the keys and
/// expiry, a two-rule policy (`0a 08 0a`: reject 10/8 on all ports; `11
/// 01bb`: accept port 443), bandwidth, "DE", no family, the version, seq 7
/// and the publication time.
const VECTOR_BODY: &str = concat!(
    "038a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f",
    "5c030104cb0071072329010804cb007107060fa1424242424242424242424242",
    "424242424242424242424242424242424242424200000000655d2b8024242424",
    "2424242424242424242424242424242424242424242424242424242400020a08",
    "0a1101bb00000000004c4b40024445000d7665696c6e65742f302e312e300000",
    "000000000007000000006553f100",
);
const VECTOR_SIGNATURE: &str = concat!(
    "8c252c35d654515e39daa2bd5abcec1caef3f047e179467faf367a4274af2933",
    "df282d45bb66b85ae6aa10f9f809fdb2b9596df99becc3468bb22e39de3e2b08",
);

#[test]
fn test_vector() {
    let (key, d) = vector_descriptor();
    let signed = d.sign(&key).unwrap();
    assert_eq!(d.peer_id.to_string(), VECTOR_PEER_ID);
    assert_eq!(hex::encode(&signed.body), VECTOR_BODY);
    assert_eq!(hex::encode(&signed.signature), VECTOR_SIGNATURE);
    // The layout, field by field (veilnet_dir::wire).
    let b = &signed.body;
    assert_eq!(b[0], veilnet_dir::wire::BODY_FORMAT);
    let raw = key.public().try_into_ed25519().unwrap().to_bytes();
    assert_eq!(&b[1..33], &raw);
    assert_eq!(b[33], 0b11, "relay and exit");
    assert_eq!(
        &b[34..42],
        &[1, 4, 203, 0, 113, 7, 0x23, 0x29],
        "one IPv4 link address"
    );
    assert_eq!(&b[b.len() - 16..b.len() - 8], &7u64.to_be_bytes(), "seq");
    assert_eq!(
        &b[b.len() - 8..],
        &1_700_000_000u64.to_be_bytes(),
        "published"
    );
    // and the committed bytes verify on their own
    let from_vector = SignedDescriptor {
        body: hex::decode(VECTOR_BODY).unwrap(),
        signature: hex::decode(VECTOR_SIGNATURE).unwrap(),
    };
    assert_eq!(from_vector.verify(1_700_000_000).unwrap(), d);
    // framing
    let body_len = from_vector.body.len();
    let bytes = from_vector.to_bytes();
    assert_eq!(&bytes[..4], &(body_len as u32).to_be_bytes());
    assert_eq!(&bytes[4 + body_len..][..2], &[0, 64]);
    assert_eq!(bytes.len(), 4 + body_len + 2 + 64);
}

#[test]
fn a_typical_descriptor_is_about_240_bytes() {
    // An exit with the default policy (private ranges refused, written as
    // one flag), one link address, one libp2p address: what most relays
    // publish. 242 bytes: 64 of signature, 96 of keys.
    let k = key(1);
    let bytes = sign(&desc(&k, "1.2.3.4:9001"), &k).to_bytes();
    println!("{} bytes", bytes.len());
    assert!((200..=300).contains(&bytes.len()), "{} bytes", bytes.len());
}

#[test]
fn signature_covers_context_and_body() {
    let k = key(1);
    let s = sign(&desc(&k, "1.2.3.4:9001"), &k);
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&s.body);
    assert!(k.public().verify(&msg, &s.signature));
    assert!(!k.public().verify(&s.body, &s.signature));
}

#[test]
fn sign_verify_round_trip() {
    let k = key(1);
    let d = desc(&k, "1.2.3.4:9001");
    let s = sign(&d, &k);
    assert_eq!(s.verify(NOW).unwrap(), d);
    let back = SignedDescriptor::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.verify(NOW).unwrap(), d);
    // JSON form of the signed descriptor (for libp2p request-response)
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<SignedDescriptor>(&json).unwrap(), s);
}

#[test]
fn tampered_body_is_bad_signature() {
    let k = key(1);
    let s = sign(&desc(&k, "1.2.3.4:9001"), &k);
    let mut forged = s.verify(NOW).unwrap();
    forged.bandwidth = 9_000_000_000;
    let t = SignedDescriptor {
        body: forged.to_body().unwrap(),
        signature: s.signature.clone(),
    };
    assert_ne!(t.body, s.body);
    let err = t.verify(NOW).unwrap_err();
    assert!(matches!(err, DescriptorError::BadSignature { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::PeerMisbehaved);
    assert!(err
        .to_string()
        .contains(&k.public().to_peer_id().to_string()));

    // flipped signature bit
    let mut t = s.clone();
    t.signature[10] ^= 1;
    assert!(matches!(
        t.verify(NOW),
        Err(DescriptorError::BadSignature { .. })
    ));
    // empty and short signatures
    for len in [0, 1, 63] {
        let mut t = s.clone();
        t.signature.truncate(len);
        assert!(matches!(
            t.verify(NOW),
            Err(DescriptorError::BadSignature { .. })
        ));
    }
}

#[test]
fn wrong_peer_id_for_key() {
    let (k1, k2) = (key(1), key(2));
    let mut d = desc(&k1, "1.2.3.4:9001");
    // claims k2's peer id with k1's key: signing refuses
    d.peer_id = k2.public().to_peer_id();
    let err = d.sign(&k1).unwrap_err();
    assert!(matches!(err, DescriptorError::KeyMismatch { .. }), "{err}");
    // the signer's mistake, not a peer's
    assert_eq!(err.kind(), ErrorKind::BadConfig);
    // A forger cannot claim another peer id: the body carries the key and
    // the peer id is derived from it. Signing k2's descriptor with k1 is a
    // bad signature of k2.
    let d2 = desc(&k2, "1.2.3.4:9001");
    let mut msg = SIGNING_CONTEXT.to_vec();
    let body = d2.to_body().unwrap();
    msg.extend_from_slice(&body);
    let forged = SignedDescriptor {
        signature: k1.sign(&msg).unwrap(),
        body,
    };
    let err = forged.verify(NOW).unwrap_err();
    assert_eq!(
        err,
        DescriptorError::BadSignature {
            peer: k2.public().to_peer_id()
        }
    );
    assert_eq!(err.kind(), ErrorKind::PeerMisbehaved);
    // signing with the wrong keypair
    let d = desc(&k1, "1.2.3.4:9001");
    assert!(matches!(
        d.sign(&k2),
        Err(DescriptorError::KeyMismatch { .. })
    ));
}

#[test]
fn garbage_identity_key() {
    let k = key(1);
    let good = desc(&k, "1.2.3.4:9001").to_body().unwrap();
    // 32 bytes that are not an ed25519 point.
    let not_a_point = (0..=255u8)
        .map(|i| [i; 32])
        .find(|b| libp2p::identity::ed25519::PublicKey::try_from_bytes(b).is_err())
        .unwrap();
    let mut body = good.clone();
    body[1..33].copy_from_slice(&not_a_point);
    let s = SignedDescriptor {
        body,
        signature: vec![0; 64],
    };
    let err = s.verify(NOW).unwrap_err();
    assert!(matches!(err, DescriptorError::Malformed { .. }), "{err}");
    // A protobuf key of another type cannot be signed into a body at all.
    let mut d = desc(&k, "1.2.3.4:9001");
    d.identity_key = vec![1, 2, 3];
    assert!(matches!(
        d.to_body(),
        Err(DescriptorError::BadIdentityKey { .. })
    ));
}

#[test]
fn time_checks() {
    let k = key(1);
    let mut d = desc(&k, "1.2.3.4:9001");

    d.published = NOW + MAX_CLOCK_SKEW;
    assert!(sign(&d, &k).verify(NOW).is_ok(), "skew edge accepted");
    d.published = NOW + MAX_CLOCK_SKEW + 1;
    let err = sign(&d, &k).verify(NOW).unwrap_err();
    assert!(matches!(err, DescriptorError::FromFuture { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);

    d.published = NOW - MAX_DESCRIPTOR_AGE;
    assert!(sign(&d, &k).verify(NOW).is_ok(), "age edge accepted");
    d.published = NOW - MAX_DESCRIPTOR_AGE - 1;
    let err = sign(&d, &k).verify(NOW).unwrap_err();
    assert!(matches!(err, DescriptorError::Expired { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);

    d.published = NOW;
    d.onion_key_expires = NOW;
    let err = sign(&d, &k).verify(NOW).unwrap_err();
    assert!(
        matches!(err, DescriptorError::OnionKeyExpired { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
    d.onion_key_expires = NOW + 1;
    assert!(sign(&d, &k).verify(NOW).is_ok());

    // extreme clocks do not overflow
    d.published = u64::MAX;
    assert!(sign(&d, &k).verify(u64::MAX).is_err()); // onion key expired
    d.published = 0;
    assert!(sign(&d, &k).verify(0).is_ok());
}

type Mutation = Box<dyn Fn(&mut Descriptor)>;

#[test]
fn field_limits() {
    let k = key(1);
    let base = desc(&k, "1.2.3.4:9001");
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "link_addrs",
            Box::new(|d| d.link_addrs = vec!["1.2.3.4:1".parse().unwrap(); 9]),
        ),
        (
            "link_addrs",
            Box::new(|d| d.link_addrs = vec!["0.0.0.0:9001".parse().unwrap()]),
        ),
        (
            "link_addrs",
            Box::new(|d| d.link_addrs = vec!["1.2.3.4:0".parse().unwrap()]),
        ),
        (
            "p2p_addrs",
            Box::new(|d| d.p2p_addrs = vec!["/ip4/1.2.3.4/tcp/1".parse().unwrap(); 9]),
        ),
        (
            "family",
            Box::new(|d| d.family = vec![key(2).public().to_peer_id(); 17]),
        ),
        ("region", Box::new(|d| d.region = "de".into())),
        ("region", Box::new(|d| d.region = "DEU".into())),
        ("region", Box::new(|d| d.region = "".into())),
        ("region", Box::new(|d| d.region = "D1".into())),
        ("region", Box::new(|d| d.region = "ÄÖ".into())),
        ("version", Box::new(|d| d.version = "v".repeat(65))),
    ];
    for (field, mutate) in cases {
        let mut d = base.clone();
        mutate(&mut d);
        // sign refuses ...
        let err = d.sign(&k).unwrap_err();
        assert!(
            matches!(&err, DescriptorError::BadField { field: f, .. } if *f == field),
            "{field}: {err}"
        );
        // ... and verify rejects a hand-made one
        let mut msg = SIGNING_CONTEXT.to_vec();
        let body = d.to_body().unwrap();
        msg.extend_from_slice(&body);
        let s = SignedDescriptor {
            signature: k.sign(&msg).unwrap(),
            body,
        };
        let err = s.verify(NOW).unwrap_err();
        assert!(
            matches!(&err, DescriptorError::BadField { field: f, .. } if *f == field),
            "{field}: {err}"
        );
        assert!(err.to_string().contains(field));
    }
    // the limits themselves are fine
    let mut d = base.clone();
    d.link_addrs = vec!["1.2.3.4:1".parse().unwrap(); 8];
    d.family = vec![key(2).public().to_peer_id(); 16];
    d.version = "v".repeat(64);
    assert!(sign(&d, &k).verify(NOW).is_ok());
}

#[test]
fn malformed_bodies() {
    let k = key(1);
    let d = desc(&k, "1.2.3.4:9001");
    let good = d.to_body().unwrap();
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let mut bad_version = d.clone();
    bad_version.version = "v".into();
    let mut bad_version = bad_version.to_body().unwrap();
    let at = bad_version.len() - 17;
    bad_version[at] = 0xff;
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("format 2", with(0, 2)),
        ("format 4", with(0, 4)),
        ("reserved role bit", with(33, 0b111)),
        ("link address kind 5", with(35, 5)),
        ("trailing byte", trailing),
        ("version not UTF-8", bad_version),
    ];
    // And every truncation of the body: all refused before the signature
    // check.
    let cuts = (0..good.len()).map(|len| ("a truncated body", good[..len].to_vec()));
    for (what, body) in bodies.into_iter().chain(cuts) {
        let len = body.len();
        let s = SignedDescriptor {
            body,
            signature: vec![0; 64],
        };
        let err = s.verify(NOW).unwrap_err();
        assert!(
            matches!(
                err,
                DescriptorError::Malformed { .. } | DescriptorError::Truncated { .. }
            ),
            "{what} ({len} bytes): {err}"
        );
        assert_eq!(err.kind(), ErrorKind::PeerMisbehaved, "{what}");
    }
}

#[test]
fn truncated_at_every_length() {
    let k = key(1);
    let bytes = sign(&desc(&k, "1.2.3.4:9001"), &k).to_bytes();
    for len in 0..bytes.len() {
        let err = SignedDescriptor::from_bytes(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, DescriptorError::Truncated { .. }),
            "len {len}: {err}"
        );
    }
    assert!(SignedDescriptor::from_bytes(&bytes).is_ok());
    // every single-byte corruption: an error or a (differently) verified result, never a panic
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x80;
        if let Ok(s) = SignedDescriptor::from_bytes(&b) {
            assert!(s.verify(NOW).is_err(), "corruption at {i} went unnoticed");
        }
    }
    let mut b = bytes.clone();
    b.push(0);
    assert!(matches!(
        SignedDescriptor::from_bytes(&b),
        Err(DescriptorError::TrailingBytes { extra: 1 })
    ));
}

#[test]
fn oversize() {
    let too_big = vec![0u8; MAX_DESCRIPTOR_BYTES + 1];
    assert!(matches!(
        SignedDescriptor::from_bytes(&too_big),
        Err(DescriptorError::TooLarge { .. })
    ));
    // body length field claims 4 GiB
    let mut b = vec![0xff, 0xff, 0xff, 0xff];
    b.extend_from_slice(&[0; 100]);
    assert!(matches!(
        SignedDescriptor::from_bytes(&b),
        Err(DescriptorError::Truncated { .. })
    ));
    // signature length over the limit
    let mut b = vec![0, 0, 0, 2, b'{', b'}', 0xff, 0xff];
    b.extend_from_slice(&[0; 100]);
    assert!(matches!(
        SignedDescriptor::from_bytes(&b),
        Err(DescriptorError::SignatureTooLong { .. })
    ));
    // a hand-made oversize descriptor is refused by verify and by from_bytes
    let s = SignedDescriptor {
        body: vec![b' '; MAX_DESCRIPTOR_BYTES],
        signature: vec![0; 64],
    };
    assert!(matches!(
        s.verify(NOW),
        Err(DescriptorError::TooLarge { .. })
    ));
    assert!(SignedDescriptor::from_bytes(&s.to_bytes()).is_err());
    // sign refuses to produce one: max out every bounded field
    let k = key(1);
    let mut d = desc(&k, "1.2.3.4:9001");
    let rules: Vec<String> = (0..256)
        .map(|i| format!("reject [2001:db8:{i:x}:ffff:ffff:ffff:ffff:ffff]:10000-20000"))
        .collect();
    d.exit_policy = ExitPolicy::parse_rules(&rules).unwrap();
    d.family = (100..116).map(|i| key(i).public().to_peer_id()).collect();
    let long = format!("/dns4/{}.example/tcp/65535", "a".repeat(200));
    d.p2p_addrs = vec![long.parse().unwrap(); 8];
    d.version = "v".repeat(64);
    let err = d.sign(&k).unwrap_err();
    assert!(matches!(err, DescriptorError::TooLarge { .. }), "{err}");
}

#[test]
fn directory_insert_replay_update() {
    let k = key(1);
    let peer = k.public().to_peer_id();
    let mut dir = Directory::new(key(99).public().to_peer_id());
    let mut d = desc(&k, "1.2.3.4:9001");
    d.seq = 5;
    let s5 = sign(&d, &k);
    assert_eq!(dir.insert(&s5, NOW).unwrap(), Inserted::New);
    assert_eq!(dir.insert(&s5, NOW).unwrap(), Inserted::Unchanged);
    assert_eq!(dir.len(), 1);
    assert_eq!(dir.get(&peer).unwrap().seq, 5);
    assert_eq!(dir.signed(&peer).unwrap(), &s5);

    // same seq, different bytes: the relay equivocated (see
    // `equivocation_is_kept_as_evidence_and_excludes_the_relay`). A
    // directory that saw it takes nothing else from the relay.
    d.bandwidth += 1;
    let other = sign(&d, &k);
    let mut seen = Directory::new(key(98).public().to_peer_id());
    seen.insert(&s5, NOW).unwrap();
    assert_eq!(seen.insert(&other, NOW).unwrap(), Inserted::Equivocated);
    d.seq = 9;
    let err = seen.insert(&sign(&d, &k), NOW).unwrap_err();
    assert!(
        matches!(err, DescriptorError::Equivocated { seq: 5, .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Refused);
    // lower seq: replay
    d.seq = 4;
    let err = dir.insert(&sign(&d, &k), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            DescriptorError::Replayed {
                seq: 4,
                have: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.peer(), Some(peer));
    assert!(err.to_string().contains(&peer.to_string()));
    // higher seq: update
    d.seq = 6;
    let s6 = sign(&d, &k);
    assert_eq!(dir.insert(&s6, NOW + 10).unwrap(), Inserted::Updated);
    assert_eq!(dir.get(&peer).unwrap().seq, 6);
    assert_eq!(dir.all_signed(), vec![s6]);

    // invalid descriptors never get in
    let mut bad = sign(&desc(&key(2), "5.6.7.8:9001"), &key(2));
    bad.signature[0] ^= 1;
    assert!(dir.insert(&bad, NOW).is_err());
    assert_eq!(dir.len(), 1);
}

#[test]
fn equivocation_is_kept_as_evidence_and_excludes_the_relay() {
    let k = key(1);
    let peer = k.public().to_peer_id();
    let mut d = desc(&k, "1.2.3.4:9001");
    d.seq = 5;
    let a = sign(&d, &k);
    d.bandwidth += 1;
    let b = sign(&d, &k);
    let honest = sign(&desc(&key(2), "5.6.7.8:9001"), &key(2));
    let (low, high) = if a.digest() < b.digest() {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };
    // Whichever arrives first, every view ends with the same proof, and
    // the relay is in none of them.
    let mut views = Vec::new();
    for (first, second) in [(&a, &b), (&b, &a)] {
        let mut view = Directory::new(key(98).public().to_peer_id());
        view.insert(&honest, NOW).unwrap();
        assert_eq!(view.insert(first, NOW).unwrap(), Inserted::New);
        assert_eq!(view.insert(second, NOW).unwrap(), Inserted::Equivocated);
        assert_eq!(view.insert(second, NOW).unwrap(), Inserted::Unchanged);
        assert!(
            view.get(&peer).is_none(),
            "an equivocating relay is not listed"
        );
        assert_eq!(view.len(), 1);
        let ev: Vec<_> = view.equivocations().cloned().collect();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].peer, peer);
        assert_eq!(ev[0].seq, 5);
        assert_eq!(ev[0].descriptors, [low.clone(), high.clone()]);
        assert_eq!(ev[0].digests, [low.digest(), high.digest()]);
        // Both descriptors are still passed on, so the proof spreads, and
        // each one checks out on its own.
        for sd in [&low, &high] {
            assert!(view.holds(&sd.digest()));
            assert!(view.keys().iter().any(|k| k.1 == sd.digest()));
            assert_eq!(view.signed_by_digest(&sd.digest()), Some(sd));
            assert_eq!(sd.verify(NOW).unwrap().seq, 5);
        }
        views.push(view.keys());
    }
    assert_eq!(views[0], views[1], "both orders end in the same view");

    // The evidence lasts as long as the later descriptor can be verified
    // (a backdated twin does not shorten it), then every node forgets it
    // alike and the relay may return.
    let mut old = desc(&k, "1.2.3.4:9001");
    old.seq = 5;
    old.published = NOW - 3000;
    let mut view = Directory::new(key(98).public().to_peer_id());
    view.insert(&sign(&old, &k), NOW).unwrap();
    assert_eq!(view.insert(&a, NOW).unwrap(), Inserted::Equivocated);
    assert!(matches!(
        view.insert(&b, NOW),
        Err(DescriptorError::Equivocated { seq: 5, .. })
    ));
    assert_eq!(view.equivocations().count(), 1);
    let expires = view.equivocations().next().unwrap().expires;
    assert_eq!(expires, NOW + MAX_DESCRIPTOR_AGE);
    view.expire(expires);
    assert_eq!(view.equivocations().count(), 1);
    view.expire(expires + 1);
    assert_eq!(view.equivocations().count(), 0);
    assert!(!view.holds(&a.digest()) && !view.holds(&b.digest()));
    let mut later = desc(&k, "1.2.3.4:9001");
    later.seq = 6;
    later.published = expires + 1;
    assert_eq!(
        view.insert(&sign(&later, &k), expires + 1).unwrap(),
        Inserted::New
    );
}

#[test]
fn directory_expire() {
    let mut dir = Directory::new(key(99).public().to_peer_id());
    let (k1, k2, k3) = (key(1), key(2), key(3));
    let mut d1 = desc(&k1, "1.1.1.1:1");
    d1.published = NOW - 1000;
    let mut d2 = desc(&k2, "2.2.2.2:1");
    d2.published = NOW + 200; // within the allowed clock skew
    let mut d3 = desc(&k3, "3.3.3.3:1");
    d3.onion_key_expires = NOW + 60;
    for (d, k) in [(&d1, &k1), (&d2, &k2), (&d3, &k3)] {
        dir.insert(&sign(d, k), NOW).unwrap();
    }
    assert_eq!(dir.len(), 3);
    // Keys run in the order of the times the records carry.
    let times: Vec<u64> = dir.keys().iter().map(|k| k.0).collect();
    assert_eq!(times, vec![NOW - 1000, d3.published, NOW + 200]);
    assert!(dir.expire(NOW).is_empty());
    assert_eq!(dir.expire(NOW + 60), vec![k3.public().to_peer_id()]);
    assert!(dir.expire(NOW - 1000 + MAX_DESCRIPTOR_AGE).is_empty());
    assert_eq!(
        dir.expire(NOW - 1000 + MAX_DESCRIPTOR_AGE + 1),
        vec![k1.public().to_peer_id()]
    );
    assert_eq!(dir.len(), 1);
    assert!(dir.get(&k2.public().to_peer_id()).is_some());
    assert_eq!(dir.iter().count(), 1);
    // a stale descriptor is refused at insert time
    let err = dir.insert(&sign(&d1, &k1), NOW - 1000 + MAX_DESCRIPTOR_AGE + 1);
    assert!(matches!(err, Err(DescriptorError::Expired { .. })));
}

#[test]
fn directory_recognises_held_descriptors_by_digest() {
    let k = key(1);
    let peer = k.public().to_peer_id();
    let mut dir = Directory::new(key(99).public().to_peer_id());
    let mut d = desc(&k, "1.2.3.4:9001");
    let s1 = sign(&d, &k);
    // The digest of the bytes as they travel is the descriptor's digest.
    assert_eq!(veilnet_dir::digest(&s1.to_bytes()), s1.digest());
    assert!(!dir.holds(&s1.digest()));
    let v1 = s1.clone().verify_into(NOW).unwrap();
    assert_eq!(v1.descriptor().peer_id, peer);
    assert_eq!(dir.insert_verified(v1.clone(), NOW).unwrap(), Inserted::New);
    assert!(dir.holds(&s1.digest()));
    assert_eq!(dir.insert_verified(v1, NOW).unwrap(), Inserted::Unchanged);

    // Any change to the signed bytes is a different digest, checked again:
    // holding a descriptor never lets a forgery of it in.
    let mut forged = s1.clone();
    forged.signature[5] ^= 0x40;
    assert_ne!(forged.digest(), s1.digest());
    assert!(!dir.holds(&forged.digest()));
    assert!(matches!(
        dir.insert(&forged, NOW),
        Err(DescriptorError::BadSignature { .. })
    ));
    let mut body = s1.clone();
    body.body.push(b' ');
    assert!(!dir.holds(&body.digest()));
    assert!(dir.insert(&body, NOW).is_err());

    // An update replaces the digest; removal forgets it.
    d.seq += 1;
    let s2 = sign(&d, &k);
    assert_eq!(dir.insert(&s2, NOW).unwrap(), Inserted::Updated);
    assert!(!dir.holds(&s1.digest()) && dir.holds(&s2.digest()));
    // Known, so reconciliation never asks a peer that still has it for it,
    // however much junk peers get refused meanwhile.
    for i in 0..2 * veilnet_dir::REFUSED_REMEMBERED as u32 {
        let mut junk = [0xee; 32];
        junk[..4].copy_from_slice(&i.to_be_bytes());
        dir.note_refused(junk);
    }
    assert!(dir.knows(&s1.digest()));
    // By short id (the first 8 bytes, as announcements name records) too:
    // held, replaced and refused are known; another prefix is not.
    assert!(dir.knows_prefix(&s2.digest()[..8]));
    assert!(dir.knows_prefix(&s1.digest()[..8]));
    let mut refused = [0x5a; 32];
    refused[31] = 1;
    dir.note_refused(refused);
    assert!(dir.knows_prefix(&refused[..8]));
    let mut other = s2.digest();
    other[7] ^= 1;
    assert!(!dir.knows_prefix(&other[..8]));
    // The replaced one is refused as a replay, not taken for "held".
    assert!(matches!(
        dir.insert(&s1, NOW),
        Err(DescriptorError::Replayed { .. })
    ));
    dir.remove(&peer);
    assert!(!dir.holds(&s2.digest()));

    // Expiry forgets the digest too, so a stale copy is refused again.
    let mut old = desc(&key(2), "2.2.2.2:1");
    old.published = NOW - 1000;
    let so = sign(&old, &key(2));
    dir.insert(&so, NOW).unwrap();
    let later = NOW - 1000 + MAX_DESCRIPTOR_AGE + 1;
    dir.expire(later);
    assert!(!dir.holds(&so.digest()));
    assert!(matches!(
        dir.insert(&so, later),
        Err(DescriptorError::Expired { .. })
    ));
}

#[test]
fn an_old_descriptor_stays_refused_after_its_successor_expired_and_after_a_restart() {
    let k = key(1);
    let peer = k.public().to_peer_id();
    let mut d = desc(&k, "1.2.3.4:9001");
    d.seq = 5;
    d.published = NOW;
    let s5 = sign(&d, &k);
    d.seq = 6;
    let s6 = sign(&d, &k);
    let mut dir = Directory::new(key(99).public().to_peer_id());
    dir.insert(&s6, NOW).unwrap();
    // The successor ages out (its onion key expires first, here).
    let later = d.onion_key_expires;
    assert_eq!(dir.expire(later), vec![peer]);
    // s5 would still verify at NOW, but seq 6 was seen: refused.
    assert!(matches!(
        dir.insert(&s5, NOW),
        Err(DescriptorError::Replayed {
            seq: 5,
            have: 6,
            ..
        })
    ));

    // What a node saves, through JSON as on disk, into a fresh directory.
    let marks = dir.seq_marks().expect("changed since the start");
    assert!(dir.seq_marks().is_none(), "nothing new since the last call");
    let json = serde_json::to_vec(&marks).unwrap();
    let restored: veilnet_dir::SeqMarks = serde_json::from_slice(&json).unwrap();
    let mut after = Directory::new(key(99).public().to_peer_id());
    assert_eq!(after.restore_seq_marks(restored).unwrap(), 1);
    assert!(matches!(
        after.insert(&s5, NOW),
        Err(DescriptorError::Replayed {
            seq: 5,
            have: 6,
            ..
        })
    ));
    // The same descriptor again, or a newer one, is welcome.
    assert_eq!(after.insert(&s6, NOW).unwrap(), Inserted::New);
    d.seq = 7;
    assert_eq!(after.insert(&sign(&d, &k), NOW).unwrap(), Inserted::Updated);

    // Another version of the file is refused, not half-read.
    let mut v2 = marks.clone();
    v2.version = 2;
    assert!(Directory::new(peer).restore_seq_marks(v2).is_err());
}
