//! Tagging resistance of the onion layers: whatever byte of a relay cell body
//! a hop modifies, and if it changes the cell's command (RELAY to
//! RELAY_EARLY), the next honest hop (forward) or the client (backward)
//! rejects the cell, and the layer that rejected it refuses everything after.
#![allow(clippy::unwrap_used)]

use std::time::Instant;
use veilnet_cell::{CellCommand, BODY_LEN};
use veilnet_crypto::circuit::HopKeys;

use veilnet_crypto::onion::{relay_layers, ClientLayers, RelayBackward, RelayForward, NO_REKEY};

fn keys(hop: usize) -> HopKeys {
    let s = hop as u8 * 8 + 1;
    HopKeys {
        fwd_data: [s; 32],
        fwd_mask: [s + 1; 32],
        bwd_data: [s + 2; 32],
        bwd_mask: [s + 3; 32],
    }
}

fn now() -> Instant {
    Instant::now()
}

struct Circuit {
    client: ClientLayers,
    relays: Vec<(RelayForward, RelayBackward)>,
}

fn circuit(hops: usize) -> Circuit {
    let mut client = ClientLayers::new(&[0x77; 32], NO_REKEY);
    let mut relays = Vec::new();
    for h in 0..hops {
        client.push_hop(&keys(h)).unwrap();
        relays.push(relay_layers(&keys(h), NO_REKEY));
    }
    Circuit { client, relays }
}

const R: CellCommand = CellCommand::Relay;

/// What the tampering hop changes: one byte of the body (flipping its low
/// bit), or the command the cell travels on with.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    Byte(usize),
    Command,
}

impl Tamper {
    /// Applies the change; returns the command the cell now carries.
    fn apply(self, body: &mut [u8]) -> CellCommand {
        match self {
            Tamper::Byte(i) => {
                body[i] ^= 0x01;
                R
            }
            Tamper::Command => CellCommand::RelayEarly,
        }
    }

    fn all() -> impl Iterator<Item = Tamper> {
        (0..BODY_LEN).map(Tamper::Byte).chain([Tamper::Command])
    }
}

fn message(round: u8) -> Vec<u8> {
    let mut b = vec![0u8; BODY_LEN];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31) ^ round;
    }
    b
}

/// A forward cell from the client, tampered by hop `attacker` after it
/// removed its own layer: the next hop must reject it, and must reject the
/// following (honest) cell too.
fn forward_case(hops: usize, attacker: usize, tamper: Tamper) -> Result<(), String> {
    let mut c = circuit(hops);
    let mut body = message(1);
    c.client.encrypt_forward(&mut body, R, now()).unwrap();
    for h in 0..=attacker {
        c.relays[h].0.decrypt(&mut body, R).unwrap();
    }
    let cmd = tamper.apply(&mut body);
    let next = attacker + 1;
    if c.relays[next].0.decrypt(&mut body, cmd).is_ok() {
        return Err(format!(
            "{hops} hops: hop {attacker} made forward change {tamper:?}, hop {next} accepted it"
        ));
    }
    // Torn down: the next honest cell dies at the same hop.
    let mut body = message(2);
    c.client.encrypt_forward(&mut body, R, now()).unwrap();
    for h in 0..next {
        c.relays[h].0.decrypt(&mut body, R).unwrap();
    }
    if c.relays[next].0.decrypt(&mut body, R).is_ok() {
        return Err(format!(
            "{hops} hops: hop {next} kept accepting after a rejected cell"
        ));
    }
    Ok(())
}

/// A backward cell from the last hop, tampered by hop `attacker` after it
/// added its layer: the client must reject it, and the next cell too.
fn backward_case(hops: usize, attacker: usize, tamper: Tamper) -> Result<(), String> {
    let mut c = circuit(hops);
    let mut body = message(3);
    let last = hops - 1;
    for h in (attacker..=last).rev() {
        if h == last {
            c.relays[h].1.originate(&mut body, R, now()).unwrap();
        } else {
            c.relays[h].1.encrypt(&mut body, R, now()).unwrap();
        }
    }
    // Honest hops after the tamperer pass the command on as it came.
    let cmd = tamper.apply(&mut body);
    for h in (0..attacker).rev() {
        c.relays[h].1.encrypt(&mut body, cmd, now()).unwrap();
    }
    if c.client.decrypt_backward(&mut body, cmd).is_ok() {
        return Err(format!(
            "{hops} hops: hop {attacker} made backward change {tamper:?}, the client accepted it"
        ));
    }
    let mut body = message(4);
    c.relays[last].1.originate(&mut body, R, now()).unwrap();
    for h in (0..last).rev() {
        c.relays[h].1.encrypt(&mut body, R, now()).unwrap();
    }
    if c.client.decrypt_backward(&mut body, R).is_ok() {
        return Err(format!(
            "{hops} hops: the client kept accepting after a rejected cell"
        ));
    }
    Ok(())
}

#[test]
fn onion_any_modified_byte_is_caught() {
    let mut failures = Vec::new();
    for hops in [3, 5] {
        for tamper in Tamper::all() {
            for attacker in 0..hops - 1 {
                if let Err(e) = forward_case(hops, attacker, tamper) {
                    failures.push(e);
                }
            }
            for attacker in 0..hops {
                if let Err(e) = backward_case(hops, attacker, tamper) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} tampered cells got through; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}
