//! A deterministic test network: relays and a client in one process, on a
//! simulated clock, over simulated links with per-link latency drawn from a
//! seed. It drives the crate's state machines ([`CircuitBuilder`],
//! [`RelayHop`], [`Streams`]) and the onion crypto exactly as the engine
//! does; the per-link circuit tables and DESTROY propagation here are the
//! test network's own (the engine has its own, over real links). The exit's
//! "targets" are in-process echo services, and the client's applications
//! read at once unless a test holds them back.
#![allow(clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p_identity::{Keypair, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use veilnet_cell::{
    decode_relay, encode_relay, Cell, CellCommand, CircId, DestroyReason, EndReason, RelayMsg,
    StreamId, TargetAddr, RELAY_DATA_MAX,
};
use veilnet_circuit::policy::{
    BeginRequest, ConnectRequest, CreateRequest, ExtendRequest, Refusal, RelayPolicy,
};
use veilnet_circuit::relay::{Forward, Local, NextHop, RelayHop};
use veilnet_circuit::PeerMisbehaved;
use veilnet_circuit::{
    CircuitBuilder, CircuitError, Credit, Event, FlowParams, HopSpec, Role, Step, StreamHandle,
    Streams,
};
use veilnet_crypto::circuit::{relay_handshake, OnionKeypair};
use veilnet_crypto::onion::{relay_layers, ClientBackward, ClientForward, RelayBackward, NO_REKEY};

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

/// When an exit's echo service answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// Each byte as it arrives.
    AtOnce,
    /// Only once the client has finished sending (a server that reads its
    /// whole request first).
    AfterEof,
}

/// The exit side of one stream: an echo service.
struct ExitApp {
    backlog: VecDeque<u8>,
    /// The client sent END(Done).
    peer_done: bool,
    /// Bytes echoed before the client's END(Done) arrived.
    sent_before_eof: usize,
}

/// The client side of one stream: what it sends and what it got.
#[derive(Default)]
struct ClientApp {
    to_send: VecDeque<u8>,
    /// Send END(Done) once `to_send` is empty.
    finish: bool,
    finished: bool,
    received: Vec<u8>,
    /// DATA cells received but not yet read by the application.
    unread: u32,
    connected: bool,
    peer_done: bool,
}

/// The client's built circuit.
struct ClientCirc {
    hops: usize,
    fwd: ClientForward,
    bwd: ClientBackward,
    streams: Streams<ClientApp>,
}

/// What one relay knows about one circuit id on one of its links.
enum Entry {
    /// Cells here travel away from the client.
    Forward {
        hop: Box<RelayHop<LinkId, Streams<ExitApp>>>,
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
    Built(Box<ClientCirc>),
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
    /// Flow parameters of every circuit end.
    flow: FlowParams,
    echo: Echo,
    /// Whether client applications read what arrives at once.
    client_reads: bool,
    /// Client streams that ended: id, reason, and the application's record.
    client_ended: Vec<(StreamId, EndReason, ClientApp)>,
    /// Why the client's circuit failed after it was built, if it did.
    client_error: Option<CircuitError>,
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
            flow: FlowParams::default(),
            echo: Echo::AtOnce,
            client_reads: true,
            client_ended: Vec::new(),
            client_error: None,
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
                    let (fwd, bwd) = b.finish().unwrap().split();
                    self.client = Some(ClientState::Built(Box::new(ClientCirc {
                        hops,
                        fwd,
                        bwd,
                        streams: Streams::new(Role::Client, self.flow, 64),
                    })));
                }
                Err(e) => self.client = Some(ClientState::Failed(e)),
            },
            Some(ClientState::Built(mut c)) => {
                if cmd == CellCommand::Destroy {
                    self.client_destroyed = Some(cell.destroy_reason());
                    for (h, reason_app) in c.streams.close() {
                        self.client_ended
                            .push((h.sid(), EndReason::Destroyed, reason_app));
                    }
                    self.client = Some(ClientState::Built(c));
                    return;
                }
                let result = c
                    .bwd
                    .decrypt(cell.body_mut(), cmd)
                    .map_err(|e| CircuitError::from(PeerMisbehaved::BadLayer(e)))
                    .and_then(|()| self.client_message(&mut c, &cell));
                self.client = Some(ClientState::Built(c));
                match result {
                    Ok(()) => self.client_pump(),
                    Err(e) => {
                        self.client_error = Some(e);
                        self.client_destroy();
                    }
                }
            }
            other => {
                if cmd == CellCommand::Destroy {
                    self.client_destroyed = Some(cell.destroy_reason());
                }
                self.client = other;
            }
        }
    }

    /// A relay message for the client's streams.
    fn client_message(&mut self, c: &mut ClientCirc, cell: &Cell) -> Result<(), CircuitError> {
        let (sid, msg) = decode_relay(cell.relay_payload()).map_err(PeerMisbehaved::from)?;
        match c.streams.handle(sid, &msg)? {
            Some(Event::Deliver(h)) => {
                let RelayMsg::Data(d) = msg else {
                    unreachable!("only DATA is delivered")
                };
                let app = c.streams.app_mut(h).unwrap();
                app.received.extend_from_slice(d);
                app.unread += 1;
                if self.client_reads {
                    let n = std::mem::take(&mut app.unread);
                    c.streams.delivered(Some(h), n);
                }
            }
            Some(Event::Connected(h)) => c.streams.app_mut(h).unwrap().connected = true,
            Some(Event::PeerFinished(h)) => c.streams.app_mut(h).unwrap().peer_done = true,
            Some(Event::Ended(h, reason, app)) => {
                // What the application had not read yet is handed over
                // with the ending; its circuit credit comes back.
                c.streams.delivered(None, app.unread);
                self.client_ended.push((h.sid(), reason, app));
            }
            Some(Event::Begin(..)) => unreachable!("the client refuses BEGIN"),
            Some(Event::CircuitCredit | Event::StreamCredit(_)) | None => {}
        }
        Ok(())
    }

    fn client_circ(&mut self) -> &mut ClientCirc {
        match &mut self.client {
            Some(ClientState::Built(c)) => c,
            _ => panic!("the client's circuit is not built"),
        }
    }

    /// Opens a stream that sends `data` (then END(Done) if `finish`).
    fn client_open(&mut self, data: &[u8], finish: bool) -> StreamHandle {
        let app = ClientApp {
            to_send: data.iter().copied().collect(),
            finish,
            ..ClientApp::default()
        };
        let target = TargetAddr::Domain("echo.test".into(), 7);
        let h = self.client_circ().streams.open(target, app).unwrap();
        self.client_pump();
        h
    }

    /// The client's applications read everything that arrived.
    fn client_read_all(&mut self) {
        let c = self.client_circ();
        let handles: Vec<StreamHandle> = c.streams.handles().collect();
        for h in handles {
            let n = std::mem::take(&mut c.streams.app_mut(h).unwrap().unread);
            c.streams.delivered(Some(h), n);
        }
        self.client_pump();
    }

    /// Sends what the client may: queued messages, then DATA while credit
    /// lasts, then END(Done) where a stream has sent everything.
    fn client_pump(&mut self) {
        let now = self.base + self.now;
        let circ = self.client_circ;
        let Some(ClientState::Built(c)) = &mut self.client else {
            return;
        };
        let mut cells = transmits(&mut c.streams, circ);
        let handles: Vec<StreamHandle> = c.streams.handles().collect();
        for h in handles {
            let connected = c.streams.app(h).is_some_and(|a| a.connected);
            while connected && !c.streams.app(h).unwrap().to_send.is_empty() {
                if c.streams.try_take_credit(h) != Credit::Taken {
                    break;
                }
                let app = c.streams.app_mut(h).unwrap();
                let n = app.to_send.len().min(RELAY_DATA_MAX);
                let chunk: Vec<u8> = app.to_send.drain(..n).collect();
                cells.push(data_cell(circ, h.sid(), &chunk));
            }
            let app = c.streams.app_mut(h).unwrap();
            if connected && app.finish && !app.finished && app.to_send.is_empty() {
                app.finished = true;
                if let Some(app) = c.streams.finish(h) {
                    self.client_ended.push((h.sid(), EndReason::Done, app));
                }
            }
        }
        cells.extend(transmits(&mut c.streams, circ));
        for cell in &mut cells {
            let cmd = cell.command().unwrap();
            c.fwd.encrypt(cell.body_mut(), cmd, now).unwrap();
        }
        let (link, me) = (self.client_link.unwrap(), self.client_id());
        for cell in cells {
            self.send(link, me, circ, cell);
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
            Ok(Local::Stream) => {
                let flow = self.flow;
                let streams = hop.endpoint_or_insert_with(|| Streams::new(Role::Exit, flow, 64));
                let event = match streams.handle(sid, &msg) {
                    Ok(event) => event,
                    Err(_) => {
                        self.teardown(me, link, circ, DestroyReason::Protocol, true);
                        return;
                    }
                };
                match event {
                    // The echo service "connects" at once.
                    Some(Event::Begin(sid, _)) => {
                        let app = ExitApp {
                            backlog: VecDeque::new(),
                            peer_done: false,
                            sent_before_eof: 0,
                        };
                        if let Ok(h) = streams.accept(sid, app) {
                            assert!(streams.connected(h));
                        }
                    }
                    Some(Event::Deliver(h)) => {
                        let RelayMsg::Data(d) = msg else {
                            unreachable!("only DATA is delivered")
                        };
                        streams.app_mut(h).unwrap().backlog.extend(d);
                        // The echo service reads at once.
                        streams.delivered(Some(h), 1);
                    }
                    Some(Event::PeerFinished(h)) => streams.app_mut(h).unwrap().peer_done = true,
                    _ => {}
                }
                self.exit_pump(me, link, circ);
            }
            Ok(Local::Nothing) => {}
            Err(_) => self.teardown(me, link, circ, DestroyReason::Protocol, true),
        }
    }

    /// Relay `me`'s echo services send what they may on circuit `circ`.
    fn exit_pump(&mut self, me: NodeId, link: LinkId, circ: CircId) {
        let now = self.base + self.now;
        let echo = self.echo;
        let Some(Entry::Forward { hop, back }) = self.relays[me].table.get_mut(&(link, circ))
        else {
            return;
        };
        let Some(streams) = hop.endpoint_mut() else {
            return;
        };
        let mut cells = transmits(streams, circ);
        let handles: Vec<StreamHandle> = streams.handles().collect();
        for h in handles {
            let app = streams.app(h).unwrap();
            let answering = echo == Echo::AtOnce || app.peer_done;
            while answering && !streams.app(h).unwrap().backlog.is_empty() {
                if streams.try_take_credit(h) != Credit::Taken {
                    break;
                }
                let app = streams.app_mut(h).unwrap();
                let n = app.backlog.len().min(RELAY_DATA_MAX);
                let chunk: Vec<u8> = app.backlog.drain(..n).collect();
                if !app.peer_done {
                    app.sent_before_eof += n;
                }
                cells.push(data_cell(circ, h.sid(), &chunk));
            }
            let app = streams.app(h).unwrap();
            if app.peer_done && app.backlog.is_empty() {
                // The echo closes its side after the client's.
                streams.finish(h);
            }
        }
        cells.extend(transmits(streams, circ));
        for cell in &mut cells {
            back.originate(cell.body_mut(), CellCommand::Relay, now)
                .unwrap();
        }
        for cell in cells {
            self.send(link, me, circ, cell);
        }
    }

    /// Runs [`exit_pump`](Self::exit_pump) on relay `me`'s circuits.
    fn exit_pump_all(&mut self, me: NodeId) {
        let keys: Vec<(LinkId, CircId)> = self.relays[me].table.keys().copied().collect();
        for (link, circ) in keys {
            self.exit_pump(me, link, circ);
        }
    }

    /// Opens a stream that sends nothing and stays open, and waits for it
    /// to connect.
    fn open_stalled(&mut self) -> StreamHandle {
        let h = self.client_open(b"", false);
        self.run(LIMIT);
        assert!(self.client_circ().streams.app(h).unwrap().connected);
        h
    }

    /// Relay `me`, the exit of the client's circuit, sends a DATA cell on
    /// `sid` whatever its windows say (a sender that ignores flow control).
    fn exit_inject_data(&mut self, me: NodeId, sid: StreamId) {
        let now = self.base + self.now;
        let (&(link, circ), _) = self.relays[me]
            .table
            .iter()
            .find(|(_, e)| matches!(e, Entry::Forward { .. }))
            .unwrap();
        let Some(Entry::Forward { back, .. }) = self.relays[me].table.get_mut(&(link, circ)) else {
            unreachable!()
        };
        let mut cell = data_cell(circ, sid, b"beyond the window");
        back.originate(cell.body_mut(), CellCommand::Relay, now)
            .unwrap();
        self.send(link, me, circ, cell);
    }

    /// The exit's stream table of the client's circuit.
    fn exit_streams(&mut self, me: NodeId) -> Option<&mut Streams<ExitApp>> {
        self.relays[me].table.values_mut().find_map(|e| match e {
            Entry::Forward { hop, .. } => hop.endpoint_mut(),
            _ => None,
        })
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
        match &self.client {
            Some(ClientState::Built(c)) => Some(c.hops),
            _ => None,
        }
    }

    fn circuits_held(&self) -> usize {
        self.relays.iter().map(|r| r.table.len()).sum()
    }
}

/// The messages `streams` queued, as plaintext cells of circuit `circ`.
fn transmits<A>(streams: &mut Streams<A>, circ: CircId) -> Vec<Cell> {
    std::iter::from_fn(|| streams.poll_transmit())
        .map(|t| {
            let mut cell = Cell::new(circ, CellCommand::Relay);
            encode_relay(cell.relay_payload_mut(), t.sid, &t.msg.as_msg()).unwrap();
            cell
        })
        .collect()
}

fn data_cell(circ: CircId, sid: StreamId, data: &[u8]) -> Cell {
    let mut cell = Cell::new(circ, CellCommand::Relay);
    encode_relay(cell.relay_payload_mut(), sid, &RelayMsg::Data(data)).unwrap();
    cell
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

/// Random bytes of a random length in `len`.
fn payload(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.gen_range(len);
    (0..len).map(|_| rng.gen()).collect()
}

/// The client's ended streams, by id.
fn ended_streams(sim: &Sim) -> HashMap<StreamId, (EndReason, &ClientApp)> {
    sim.client_ended
        .iter()
        .map(|(sid, reason, app)| (*sid, (*reason, app)))
        .collect()
}

#[test]
fn sim_stream() {
    for seed in 0..10 {
        // Several streams at once through one circuit, each echoed back
        // byte-exact; every credit comes home and both tables empty.
        let mut sim = Sim::new(seed, 3);
        sim.build(&[0, 1, 2]);
        sim.run(LIMIT);
        let sent: Vec<(StreamHandle, Vec<u8>)> = (0..4)
            .map(|_| {
                let data = payload(&mut sim.rng, 1..300_000);
                (sim.client_open(&data, true), data)
            })
            .collect();
        sim.run(LIMIT);
        let ended = ended_streams(&sim);
        for (h, data) in &sent {
            let (reason, app) = ended.get(&h.sid()).expect("stream ended");
            assert_eq!(*reason, EndReason::Done, "seed {seed}");
            assert!(app.received == *data, "seed {seed}: echo differs");
        }
        // Credit comes back in whole increments: what is still out is less
        // than one increment, at both ends.
        let (window, increment) = (sim.flow.circ_window, sim.flow.circ_sendme);
        let c = sim.client_circ();
        assert!(c.streams.is_empty());
        assert!(
            window - c.streams.circuit_credit() < increment,
            "seed {seed}"
        );
        let exit = sim.exit_streams(2).unwrap();
        assert!(exit.is_empty(), "seed {seed}");
        assert!(window - exit.circuit_credit() < increment, "seed {seed}");
    }
}

#[test]
fn sim_half_close() {
    for seed in 0..10 {
        // The exit's service answers only after the client's END(Done):
        // the direction still open carries the whole answer, and the
        // client's closed direction sends nothing more.
        let mut sim = Sim::new(seed, 3);
        sim.echo = Echo::AfterEof;
        sim.build(&[0, 1, 2]);
        sim.run(LIMIT);
        let request = payload(&mut sim.rng, 1..200_000);
        let h = sim.client_open(&request, true);
        // A second stream that keeps its own direction open.
        let open = sim.client_open(b"still here", false);
        sim.run(LIMIT);
        let ended = ended_streams(&sim);
        let (reason, app) = ended.get(&h.sid()).expect("half-closed stream ended");
        assert_eq!(*reason, EndReason::Done);
        assert!(app.received == request, "seed {seed}");
        assert!(app.finished);
        // The other stream: its request is held by the service (no EOF
        // yet), so nothing came back and it is still open at both ends.
        assert!(!ended.contains_key(&open.sid()));
        assert_eq!(sim.client_circ().streams.try_take_credit(h), Credit::Gone);
        let exit = sim.exit_streams(2).unwrap();
        assert_eq!(exit.len(), 1);
        let exit_h = exit.handles().next().unwrap();
        let exit_app = exit.app(exit_h).unwrap();
        assert_eq!(exit_app.backlog.len(), b"still here".len());
        assert_eq!(exit_app.sent_before_eof, 0);

        // The exit ends its side; a DATA cell after its END(Done) resets
        // that stream, and only that stream.
        let c = sim.client_circ();
        c.streams.app_mut(open).unwrap().finish = true;
        sim.client_pump();
        sim.run(LIMIT);
        let (reason, app) = ended_streams(&sim)[&open.sid()];
        assert_eq!(reason, EndReason::Done);
        assert_eq!(app.received, b"still here");
        let late = sim.client_open(b"x", false);
        sim.run(LIMIT);
        assert!(sim.client_circ().streams.is_live(late));
        let exit_h = sim.exit_streams(2).unwrap().handles().next().unwrap();
        let exit = sim.exit_streams(2).unwrap();
        exit.finish(exit_h);
        sim.exit_pump_all(2);
        sim.run(LIMIT);
        assert!(sim.client_circ().streams.app(late).unwrap().peer_done);
        sim.exit_inject_data(2, late.sid());
        sim.run(LIMIT);
        let (reason, _) = ended_streams(&sim)[&late.sid()];
        assert_eq!(reason, EndReason::Protocol, "seed {seed}");
        assert!(sim.client_error.is_none() && sim.client_destroyed.is_none());
        assert!(
            sim.exit_streams(2).unwrap().is_empty(),
            "the exit heard END"
        );
    }
}

/// A built 3-hop circuit with windows of 8 cells per stream and 12 per
/// circuit, whose client applications do not read until told to.
fn stalled_reader_circuit(seed: u64) -> Sim {
    let mut sim = Sim::new(seed, 3);
    sim.flow = FlowParams {
        stream_window: 8,
        stream_sendme: 4,
        circ_window: 12,
        circ_sendme: 4,
    };
    sim.client_reads = false;
    sim.build(&[0, 1, 2]);
    sim.run(LIMIT);
    sim
}

#[test]
fn sim_window_exhaustion() {
    for seed in 0..10 {
        let mut sim = stalled_reader_circuit(seed);
        // A reader that does not read: the exit stops at the stream window
        // on one stream, at the circuit window across two, and nothing is
        // lost or refused meanwhile.
        // Both longer than the windows.
        let a_data = payload(&mut sim.rng, 40_000..100_000);
        let b_data = payload(&mut sim.rng, 40_000..100_000);
        let a = sim.client_open(&a_data, true);
        sim.run(LIMIT);
        let unread = |sim: &mut Sim, h| sim.client_circ().streams.app(h).unwrap().unread;
        assert_eq!(unread(&mut sim, a), 8, "seed {seed}");
        assert_eq!(sim.exit_streams(2).unwrap().circuit_credit(), 12 - 8);
        let b = sim.client_open(&b_data, true);
        sim.run(LIMIT);
        assert_eq!(unread(&mut sim, a), 8, "seed {seed}");
        assert_eq!(unread(&mut sim, b), 4, "seed {seed}");
        assert_eq!(sim.exit_streams(2).unwrap().circuit_credit(), 0);
        assert!(sim.client_error.is_none());

        // The reader catches up: everything arrives, byte-exact.
        for _ in 0..200 {
            sim.client_read_all();
            sim.run(LIMIT);
        }
        assert!(
            sim.client_error.is_none() && sim.client_destroyed.is_none(),
            "seed {seed}: {:?} {:?}",
            sim.client_error,
            sim.client_destroyed
        );
        let ended = ended_streams(&sim);
        assert!(ended[&a.sid()].1.received == a_data, "seed {seed}");
        assert!(ended[&b.sid()].1.received == b_data, "seed {seed}");

        // A sender that ignores the windows (cells the exit's own windows
        // never counted): one cell beyond a stream's window resets that
        // stream at the client, and only that stream. (The client then
        // returns circuit credit the exit never lent, and the exit rightly
        // ends the circuit: look before that reply gets there.)
        let c = sim.open_stalled();
        let other = sim.open_stalled();
        for _ in 0..8 {
            sim.exit_inject_data(2, c.sid());
        }
        sim.run(LIMIT);
        assert!(sim.client_circ().streams.is_live(c));
        sim.exit_inject_data(2, c.sid());
        let one_way: Duration = sim.links.iter().take(3).map(|l| l.latency).sum();
        sim.run(sim.now + one_way);
        assert_eq!(ended_streams(&sim)[&c.sid()].0, EndReason::Protocol);
        assert!(sim.client_error.is_none() && sim.client_destroyed.is_none());
        assert!(sim.client_circ().streams.is_live(other), "seed {seed}");

        // Beyond the circuit's window, across streams that each stay inside
        // their own: the client destroys the circuit and every hop lets go.
        let mut sim = stalled_reader_circuit(seed);
        let (d, e) = (sim.open_stalled(), sim.open_stalled());
        for i in 0..12 {
            sim.exit_inject_data(2, if i < 8 { d.sid() } else { e.sid() });
        }
        sim.run(LIMIT);
        assert!(sim.client_error.is_none(), "seed {seed}");
        sim.exit_inject_data(2, e.sid());
        sim.run(LIMIT);
        assert!(
            matches!(
                sim.client_error,
                Some(CircuitError::PeerMisbehaved(
                    PeerMisbehaved::WindowExceeded("circuit")
                ))
            ),
            "seed {seed}: {:?}",
            sim.client_error
        );
        assert_eq!(sim.circuits_held(), 0, "seed {seed}");
    }
}
