//! A deterministic test network: relays and a client in one process, on a
//! simulated clock, over simulated links with per-link latency drawn from a
//! seed. It drives the crate's state machines ([`CircuitBuilder`],
//! [`RelayHop`]) and the onion crypto exactly as the engine does; the
//! per-link circuit tables and DESTROY propagation here are the test
//! network's own (the engine has its own, over real links).
#![allow(clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p_identity::{Keypair, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use veilnet_cell::{
    decode_relay, encode_relay, Cell, CellCommand, CircId, DestroyReason, RelayMsg, StreamId,
};
use veilnet_circuit::policy::{
    BeginRequest, ConnectRequest, CreateRequest, ExtendRequest, Refusal, RelayPolicy,
};
use veilnet_circuit::relay::{Forward, Local, NextHop, RelayHop};
use veilnet_circuit::{CircuitBuilder, CircuitError, HopSpec, Step};
use veilnet_crypto::circuit::{relay_handshake, OnionKeypair};
use veilnet_crypto::onion::{relay_layers, RelayBackward, NO_REKEY};

/// Admits everything: the sim tests mechanism, not policy.
struct Open;
impl RelayPolicy for Open {
    fn admit_create(&self, _: &CreateRequest) -> Result<(), Refusal> {
        Ok(())
    }
    fn admit_extend(&self, _: &ExtendRequest) -> Result<(), Refusal> {
        Ok(())
    }
    fn admit_begin(&self, _: &BeginRequest<'_>) -> Result<(), Refusal> {
        Ok(())
    }
    fn admit_connect(&self, _: &ConnectRequest<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}

type NodeId = usize;
type LinkId = usize;

/// What one relay knows about one circuit id on one of its links.
enum Entry {
    /// Cells here travel away from the client.
    Forward {
        hop: Box<RelayHop<LinkId, ()>>,
        back: Box<RelayBackward>,
    },
    /// Cells here come from the next hop; the circuit's forward entry is
    /// `prev` on our side.
    Backward { prev: (LinkId, CircId) },
    /// We sent CREATE here for `prev`, waiting for CREATED.
    Pending { prev: (LinkId, CircId) },
}

struct Relay {
    peer: PeerId,
    onion: OnionKeypair,
    table: HashMap<(LinkId, CircId), Entry>,
    alive: bool,
}

struct Link {
    ends: [NodeId; 2],
    latency: Duration,
    up: bool,
}

struct Delivery {
    at: Duration,
    seq: u64,
    link: LinkId,
    to: NodeId,
    cell: Cell,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The client's one circuit.
enum ClientState {
    Building(Box<CircuitBuilder>),
    Built(usize),
    Failed(#[allow(dead_code)] CircuitError),
}

struct Sim {
    base: Instant,
    now: Duration,
    rng: StdRng,
    relays: Vec<Relay>,
    /// The client is node `relays.len()`.
    links: Vec<Link>,
    queue: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    client_link: Option<LinkId>,
    client_circ: CircId,
    client: Option<ClientState>,
    /// Why the client's circuit died after it was built, if it did.
    client_destroyed: Option<DestroyReason>,
    next_circ: u32,
}

impl Sim {
    fn new(seed: u64, relays: usize) -> Self {
        let relays = (0..relays)
            .map(|_| Relay {
                peer: Keypair::generate_ed25519().public().to_peer_id(),
                onion: OnionKeypair::generate().unwrap(),
                table: HashMap::new(),
                alive: true,
            })
            .collect();
        Self {
            base: Instant::now(),
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            relays,
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            client_link: None,
            client_circ: CircId::new(0x8000_0001).unwrap(),
            client: None,
            client_destroyed: None,
            next_circ: 1,
        }
    }

    fn client_id(&self) -> NodeId {
        self.relays.len()
    }

    fn spec(&self, r: NodeId) -> HopSpec {
        HopSpec {
            peer: self.relays[r].peer,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + r as u16)),
            onion_key: self.relays[r].onion.public,
            link_key: [r as u8; 32],
        }
    }

    fn relay_of(&self, peer: PeerId) -> Option<NodeId> {
        self.relays.iter().position(|r| r.peer == peer)
    }

    fn link(&mut self, a: NodeId, b: NodeId) -> LinkId {
        let latency = Duration::from_micros(self.rng.gen_range(500..20_000));
        self.links.push(Link {
            ends: [a, b],
            latency,
            up: true,
        });
        self.links.len() - 1
    }

    fn other_end(&self, link: LinkId, me: NodeId) -> NodeId {
        let [a, b] = self.links[link].ends;
        if a == me {
            b
        } else {
            a
        }
    }

    fn send(&mut self, link: LinkId, from: NodeId, circ: CircId, mut cell: Cell) {
        if !self.links[link].up {
            return;
        }
        cell.set_circ_id(circ);
        self.seq += 1;
        self.queue.push(Reverse(Delivery {
            at: self.now + self.links[link].latency,
            seq: self.seq,
            link,
            to: self.other_end(link, from),
            cell,
        }));
    }

    /// Starts building `path` (relay indices).
    fn build(&mut self, path: &[NodeId]) {
        let specs = path.iter().map(|&r| self.spec(r)).collect();
        let me = self.client_id();
        let link = self.link(me, path[0]);
        self.client_link = Some(link);
        let junk: [u8; 32] = self.rng.gen();
        let (builder, create) =
            CircuitBuilder::start(self.client_circ, specs, &junk, NO_REKEY).unwrap();
        self.client = Some(ClientState::Building(Box::new(builder)));
        self.send(link, me, self.client_circ, create);
    }

    /// Delivers cells in time order until nothing is in flight or the next
    /// delivery is after `limit` (simulated time since the start).
    fn run(&mut self, limit: Duration) {
        while self.queue.peek().is_some_and(|d| d.0.at <= limit) {
            let Some(Reverse(d)) = self.queue.pop() else {
                break;
            };
            self.now = d.at;
            if !self.links[d.link].up {
                continue;
            }
            if d.to == self.client_id() {
                self.client_cell(d.cell);
            } else if self.relays[d.to].alive {
                self.relay_cell(d.to, d.link, d.cell);
            }
        }
    }

    fn client_cell(&mut self, mut cell: Cell) {
        let now = self.base + self.now;
        let cmd = cell.command().unwrap();
        match self.client.take() {
            Some(ClientState::Building(mut b)) => match b.handle(&mut cell, now) {
                Ok(Step::Send(next)) => {
                    let (link, me, circ) = (
                        self.client_link.unwrap(),
                        self.client_id(),
                        self.client_circ,
                    );
                    self.send(link, me, circ, next);
                    self.client = Some(ClientState::Building(b));
                }
                Ok(Step::IgnoredUnknown(_)) => self.client = Some(ClientState::Building(b)),
                Ok(Step::Done) => {
                    let hops = b.hops_built();
                    b.finish().unwrap();
                    self.client = Some(ClientState::Built(hops));
                }
                Err(e) => self.client = Some(ClientState::Failed(e)),
            },
            other => {
                if cmd == CellCommand::Destroy {
                    self.client_destroyed = Some(cell.destroy_reason());
                }
                self.client = other;
            }
        }
    }

    fn relay_cell(&mut self, me: NodeId, link: LinkId, mut cell: Cell) {
        let circ = cell.circ_id().unwrap();
        let now = self.base + self.now;
        match cell.command().unwrap() {
            CellCommand::Create => {
                let (reply, keys) =
                    relay_handshake(&self.relays[me].onion.secret, cell.handshake_msg().unwrap())
                        .unwrap();
                let (fwd, back) = relay_layers(&keys, NO_REKEY);
                let prev_peer = self.peer_on(link, me);
                self.relays[me].table.insert(
                    (link, circ),
                    Entry::Forward {
                        hop: Box::new(RelayHop::new(fwd, prev_peer)),
                        back: Box::new(back),
                    },
                );
                let created = Cell::handshake(circ, CellCommand::Created, &reply).unwrap();
                self.send(link, me, circ, created);
            }
            CellCommand::Created => {
                let Some(Entry::Pending { prev }) = self.relays[me].table.remove(&(link, circ))
                else {
                    return;
                };
                self.relays[me]
                    .table
                    .insert((link, circ), Entry::Backward { prev });
                let Some(Entry::Forward { hop, back }) = self.relays[me].table.get_mut(&prev)
                else {
                    return;
                };
                assert!(hop.extended(link, circ));
                let mut ext = Cell::new(prev.1, CellCommand::Relay);
                let reply = cell.handshake_msg().unwrap().to_vec();
                encode_relay(
                    ext.relay_payload_mut(),
                    StreamId(0),
                    &RelayMsg::Extended { handshake: &reply },
                )
                .unwrap();
                back.originate(ext.body_mut(), CellCommand::Relay, now)
                    .unwrap();
                self.send(prev.0, me, prev.1, ext);
            }
            cmd @ (CellCommand::Relay | CellCommand::RelayEarly) => {
                let early = cmd == CellCommand::RelayEarly;
                match self.relays[me].table.get_mut(&(link, circ)) {
                    Some(Entry::Forward { hop, .. }) => {
                        let to = match hop.handle_relay(&mut cell, early) {
                            Err(_) => None,
                            Ok(Forward::Pass(&next, next_circ)) => Some(Some((next, next_circ))),
                            Ok(Forward::Deliver) => Some(None),
                        };
                        match to {
                            None => self.teardown(me, link, circ, DestroyReason::Protocol, true),
                            Some(Some((next, next_circ))) => self.send(next, me, next_circ, cell),
                            Some(None) => self.deliver(me, link, circ, cell, early),
                        }
                    }
                    Some(Entry::Backward { prev }) => {
                        let prev = *prev;
                        if early {
                            self.teardown(me, link, circ, DestroyReason::Protocol, true);
                            return;
                        }
                        if let Some(Entry::Forward { back, .. }) =
                            self.relays[me].table.get_mut(&prev)
                        {
                            back.encrypt(cell.body_mut(), CellCommand::Relay, now)
                                .unwrap();
                            self.send(prev.0, me, prev.1, cell);
                        }
                    }
                    _ => {}
                }
            }
            CellCommand::Destroy => self.teardown(me, link, circ, cell.destroy_reason(), false),
            CellCommand::Padding => {}
        }
    }

    /// A relay message for relay `me`, the circuit's last hop.
    fn deliver(&mut self, me: NodeId, link: LinkId, circ: CircId, cell: Cell, early: bool) {
        let (sid, msg) = decode_relay(cell.relay_payload()).unwrap();
        let Some(Entry::Forward { hop, .. }) = self.relays[me].table.get_mut(&(link, circ)) else {
            return;
        };
        match hop.on_message(sid, &msg, early, &Open) {
            Ok(Local::Extend {
                peer, handshake, ..
            }) => {
                let handshake = handshake.to_vec();
                // An unknown or dead relay: the connect fails.
                let Some(next) = self.relay_of(peer).filter(|&n| self.relays[n].alive) else {
                    self.teardown(me, link, circ, DestroyReason::ExtendFailed, true);
                    return;
                };
                let next_link = self.link(me, next);
                let next_circ = CircId::new(0x8000_0000 | self.next_circ).unwrap();
                self.next_circ += 1;
                self.relays[me].table.insert(
                    (next_link, next_circ),
                    Entry::Pending { prev: (link, circ) },
                );
                let create = Cell::handshake(next_circ, CellCommand::Create, &handshake).unwrap();
                self.send(next_link, me, next_circ, create);
            }
            Ok(_) => {}
            Err(_) => self.teardown(me, link, circ, DestroyReason::Protocol, true),
        }
    }

    fn peer_on(&self, link: LinkId, me: NodeId) -> PeerId {
        let other = self.other_end(link, me);
        if other == self.client_id() {
            // The client's link identity is a throwaway one.
            Keypair::generate_ed25519().public().to_peer_id()
        } else {
            self.relays[other].peer
        }
    }

    /// Removes relay `me`'s circuit `circ` on `link` and propagates DESTROY
    /// to the other side; with `notify` also back on `link`.
    fn teardown(
        &mut self,
        me: NodeId,
        link: LinkId,
        circ: CircId,
        reason: DestroyReason,
        notify: bool,
    ) {
        let entry = self.relays[me].table.remove(&(link, circ));
        if entry.is_none() {
            return;
        }
        if notify {
            self.send(link, me, circ, Cell::destroy(circ, reason));
        }
        match entry {
            Some(Entry::Forward { hop, .. }) => {
                if let (NextHop::Link(next, next_circ), _) = hop.into_parts() {
                    self.relays[me].table.remove(&(next, next_circ));
                    self.send(next, me, next_circ, Cell::destroy(next_circ, reason));
                }
            }
            Some(Entry::Backward { prev }) | Some(Entry::Pending { prev })
                if self.relays[me].table.remove(&prev).is_some() =>
            {
                self.send(prev.0, me, prev.1, Cell::destroy(prev.1, reason));
            }
            _ => {}
        }
    }

    /// Relay `r` vanishes: its links go down, and each neighbour tears
    /// down the circuits it had on them.
    fn vanish(&mut self, r: NodeId) {
        self.relays[r].alive = false;
        let dead: Vec<LinkId> = (0..self.links.len())
            .filter(|&l| self.links[l].ends.contains(&r) && self.links[l].up)
            .collect();
        for l in dead {
            self.links[l].up = false;
            let other = self.other_end(l, r);
            if other == self.client_id() {
                self.client_destroyed = Some(DestroyReason::LinkFailed);
                continue;
            }
            let circs: Vec<CircId> = self.relays[other]
                .table
                .keys()
                .filter(|(link, _)| *link == l)
                .map(|&(_, c)| c)
                .collect();
            for c in circs {
                self.teardown(other, l, c, DestroyReason::LinkFailed, false);
            }
        }
    }

    /// The client destroys its circuit.
    fn client_destroy(&mut self) {
        let (link, me, circ) = (
            self.client_link.unwrap(),
            self.client_id(),
            self.client_circ,
        );
        self.send(
            link,
            me,
            circ,
            Cell::destroy(circ, DestroyReason::Requested),
        );
    }

    fn built_hops(&self) -> Option<usize> {
        match self.client {
            Some(ClientState::Built(n)) => Some(n),
            _ => None,
        }
    }

    fn circuits_held(&self) -> usize {
        self.relays.iter().map(|r| r.table.len()).sum()
    }
}

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn sim_build() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, 3);
        sim.build(&[0, 1, 2]);
        sim.run(LIMIT);
        assert_eq!(sim.built_hops(), Some(3), "seed {seed}");
        // Guard: forward entry; middle: forward + backward; exit: forward.
        assert_eq!(sim.relays[0].table.len(), 2, "seed {seed}");
        assert_eq!(sim.relays[1].table.len(), 2, "seed {seed}");
        assert_eq!(sim.relays[2].table.len(), 1, "seed {seed}");
        // The build takes three round trips over the path, no more.
        assert!(sim.now < Duration::from_millis(6 * 3 * 20), "seed {seed}");
    }
}

#[test]
fn sim_extend() {
    for (seed, path) in [(1, vec![0, 1, 2, 3, 4]), (2, vec![0, 1]), (3, vec![4])] {
        let mut sim = Sim::new(seed, 5);
        sim.build(&path);
        sim.run(LIMIT);
        assert_eq!(sim.built_hops(), Some(path.len()), "seed {seed}");
    }
}

#[test]
fn sim_extend_budget_is_enforced_by_relays() {
    // Five hops spent the guard's four RELAY_EARLY cells. Any further RELAY_EARLY cell (the only kind that
    // may carry an EXTEND for a sixth hop) makes the guard destroy the
    // circuit, before it even looks inside. (The engine's test
    // `relay_refuses_circuits_longer_than_limit` sends a real sixth EXTEND.)
    let mut sim = Sim::new(7, 5);
    sim.build(&[0, 1, 2, 3, 4]);
    sim.run(LIMIT);
    assert_eq!(sim.built_hops(), Some(5));
    let held = sim.circuits_held();
    assert!(held > 0);
    let guard_link = sim.client_link.unwrap();
    let circ = sim.client_circ;
    let mut cell = Cell::new(circ, CellCommand::RelayEarly);
    encode_relay(cell.relay_payload_mut(), StreamId(0), &RelayMsg::Drop).unwrap();
    let me = sim.client_id();
    sim.send(guard_link, me, circ, cell);
    sim.run(LIMIT);
    assert_eq!(sim.client_destroyed, Some(DestroyReason::Protocol));
    assert_eq!(sim.circuits_held(), 0, "every hop let go");
}

#[test]
fn sim_destroy_propagation() {
    for seed in 0..10 {
        let mut sim = Sim::new(seed, 4);
        sim.build(&[3, 1, 0, 2]);
        sim.run(LIMIT);
        assert_eq!(sim.built_hops(), Some(4));
        sim.client_destroy();
        sim.run(LIMIT);
        assert_eq!(sim.circuits_held(), 0, "seed {seed}");
    }
}

#[test]
fn sim_a_hop_that_vanishes() {
    for seed in 0..10 {
        // The middle dies after the build: both neighbours let go, and the
        // client hears DESTROY from its guard.
        let mut sim = Sim::new(seed, 3);
        sim.build(&[0, 1, 2]);
        sim.run(LIMIT);
        assert_eq!(sim.built_hops(), Some(3));
        sim.vanish(1);
        sim.run(LIMIT);
        assert_eq!(
            sim.client_destroyed,
            Some(DestroyReason::LinkFailed),
            "seed {seed}"
        );
        assert_eq!(sim.relays[0].table.len() + sim.relays[2].table.len(), 0);

        // The middle dies during the build: the build fails, nothing leaks.
        let mut sim = Sim::new(seed, 3);
        sim.build(&[0, 1, 2]);
        let t = sim.queue.peek().map(|d| d.0.at).unwrap();
        let stop = t + Duration::from_micros(sim.rng.gen_range(0..30_000));
        sim.run(stop);
        sim.vanish(1);
        sim.run(LIMIT);
        // Built or not when the middle died, the client knows it is gone.
        assert!(
            sim.built_hops().is_none() || sim.client_destroyed.is_some(),
            "seed {seed}"
        );
        assert_eq!(
            sim.relays[0].table.len() + sim.relays[2].table.len(),
            0,
            "seed {seed}"
        );
    }
}
