//! A raw peer: a real link (the link handshake and records of
//! `veilnet-crypto`, over TCP) whose cells the test writes and reads by
//! hand, so it can play a malicious client or a malicious guard against
//! real engines. Built only from the public sans-IO crates.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use libp2p_identity::{Keypair, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use veilnet_cell::{
    decode_relay, encode_relay, Cell, CellCommand, CircId, DestroyReason, RelayMsg, StreamId,
    CELL_LEN,
};
use veilnet_crypto::circuit::{relay_handshake, ClientHandshake, OnionKeypair};
use veilnet_crypto::link::{
    LinkHandshake, LinkKey, LinkSession, RecordOpener, RecordSealer, MAX_HANDSHAKE_MSG,
    RECORD_HEADER_LEN, RECORD_TAG_LEN,
};
use veilnet_crypto::onion::{relay_layers, ClientLayers, RelayBackward};
use veilnet_crypto::RekeyPolicy;
use veilnet_proto::HopSpec;

/// How long a raw peer waits for any one answer.
pub const WAIT: Duration = Duration::from_secs(5);

/// One end of a link, cell by cell.
pub struct RawLink {
    wr: OwnedWriteHalf,
    sealer: RecordSealer,
    rx: mpsc::Receiver<Cell>,
    /// Cells read while waiting for another circuit's.
    held: VecDeque<Cell>,
    /// The authenticated peer.
    pub peer: PeerId,
    /// Whether we opened the link (our circuit ids carry the initiator bit).
    pub initiator: bool,
}

/// Runs a link handshake over `stream` (panics on failure or after [`WAIT`]).
pub async fn handshake(stream: &mut TcpStream, mut hs: LinkHandshake) -> LinkSession {
    let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
    timeout(WAIT, async {
        while !hs.is_finished() {
            if hs.wants_write() {
                let msg = hs.write_message().unwrap();
                stream.write_all(&msg).await.unwrap();
            } else {
                let mut prefix = [0u8; 2];
                stream.read_exact(&mut prefix).await.unwrap();
                let n = LinkHandshake::frame_len(prefix).unwrap();
                stream.read_exact(&mut buf[..n]).await.unwrap();
                hs.read_message(&buf[..n]).unwrap();
            }
        }
    })
    .await
    .expect("link handshake timed out");
    hs.finish().unwrap()
}

impl RawLink {
    /// Opens a link to `hop` under a throwaway identity, as a client does.
    pub async fn connect(hop: &HopSpec) -> RawLink {
        let identity = Keypair::generate_ed25519();
        let mut stream = timeout(WAIT, TcpStream::connect(hop.addr))
            .await
            .expect("connect timed out")
            .unwrap();
        let hs = LinkHandshake::initiator(&identity, &hop.link_key).unwrap();
        let session = handshake(&mut stream, hs).await;
        assert_eq!(session.remote_peer, hop.peer, "authenticated the relay");
        Self::start(stream, session, true)
    }

    /// Accepts one link on `listener`, as the relay `identity` (whose link
    /// key is derived from it, as a real relay's).
    pub async fn accept(listener: &TcpListener, identity: &Keypair) -> RawLink {
        let (mut stream, _) = timeout(WAIT, listener.accept())
            .await
            .expect("nobody connected")
            .unwrap();
        let key = LinkKey::derive(identity).unwrap();
        let hs = LinkHandshake::responder(identity, &key).unwrap();
        let session = handshake(&mut stream, hs).await;
        Self::start(stream, session, false)
    }

    fn start(stream: TcpStream, session: LinkSession, initiator: bool) -> RawLink {
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(1024);
        let mut opener: RecordOpener = session.opener;
        // A reader task, so a timed-out wait never cuts a record in half.
        tokio::spawn(async move {
            loop {
                let mut hdr = [0u8; RECORD_HEADER_LEN];
                if rd.read_exact(&mut hdr).await.is_err() {
                    return;
                }
                let Ok((n, len)) = RecordOpener::parse_header(hdr) else {
                    return;
                };
                let mut body = vec![0u8; len];
                if rd.read_exact(&mut body).await.is_err() || opener.open(hdr, &mut body).is_err() {
                    return;
                }
                for chunk in body[..n * CELL_LEN].chunks_exact(CELL_LEN) {
                    let cell = Cell::from_raw(chunk).unwrap();
                    if cell.circ_id().is_some() && tx.send(cell).await.is_err() {
                        return;
                    }
                }
            }
        });
        RawLink {
            wr,
            sealer: session.sealer,
            rx,
            held: VecDeque::new(),
            peer: session.remote_peer,
            initiator,
        }
    }

    /// A fresh circuit id with our side's direction bit.
    pub fn circ_id(&self) -> CircId {
        self.circ_id_with_bit(self.initiator)
    }

    /// A fresh circuit id with or without the initiator bit, whichever side
    /// we are (a malicious peer may forge it).
    pub fn circ_id_with_bit(&self, initiator_bit: bool) -> CircId {
        let raw = rand::random::<u32>() & !CircId::INITIATOR_BIT;
        let raw = if initiator_bit {
            raw | CircId::INITIATOR_BIT
        } else {
            raw.max(1)
        };
        CircId::new(raw).unwrap()
    }

    /// Sends one cell in its own record.
    pub async fn send(&mut self, cell: &Cell) {
        self.send_bytes(cell.as_bytes()).await;
    }

    /// Sends exactly `CELL_LEN` raw bytes as one cell (any command byte).
    pub async fn send_bytes(&mut self, cell: &[u8]) {
        assert_eq!(cell.len(), CELL_LEN);
        let mut rec = vec![0u8; RECORD_HEADER_LEN];
        rec.extend_from_slice(cell);
        rec.extend_from_slice(&[0u8; RECORD_TAG_LEN]);
        self.sealer.seal(&mut rec, Instant::now()).unwrap();
        self.wr.write_all(&rec).await.unwrap();
    }

    /// The next cell on any circuit; `None` if none arrives within `wait` or
    /// the link closed.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Cell> {
        if let Some(c) = self.held.pop_front() {
            return Some(c);
        }
        timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// The next cell on any circuit within [`WAIT`].
    pub async fn recv(&mut self) -> Option<Cell> {
        self.recv_within(WAIT).await
    }

    /// The next cell on `circ` within `wait`; cells of other circuits are
    /// kept for later.
    pub async fn recv_for_within(&mut self, circ: CircId, wait: Duration) -> Option<Cell> {
        if let Some(i) = self.held.iter().position(|c| c.circ_id() == Some(circ)) {
            return self.held.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let cell = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()
                .flatten()?;
            if cell.circ_id() == Some(circ) {
                return Some(cell);
            }
            self.held.push_back(cell);
        }
    }

    /// The next cell on `circ` within [`WAIT`].
    pub async fn recv_for(&mut self, circ: CircId) -> Option<Cell> {
        self.recv_for_within(circ, WAIT).await
    }
}

/// What came back for a request on a circuit.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// CREATED, or EXTENDED: the circuit grew by one hop.
    Grew,
    /// DESTROY with this reason.
    Destroyed(DestroyReason),
    /// Some other cell (its command).
    Other(CellCommand),
    /// Nothing within [`WAIT`].
    Nothing,
}

/// A circuit the raw client builds hop by hop.
pub struct RawCircuit {
    /// Its id on the raw link.
    pub circ: CircId,
    /// The client's layers, one per hop.
    pub layers: ClientLayers,
}

impl RawCircuit {
    /// Hops so far.
    pub fn hops(&self) -> usize {
        self.layers.hops()
    }
}

fn destroyed_or_other(cell: &Cell) -> Answer {
    match cell.command() {
        Ok(CellCommand::Destroy) => Answer::Destroyed(cell.destroy_reason()),
        Ok(c) => Answer::Other(c),
        Err(_) => Answer::Other(CellCommand::Padding),
    }
}

impl RawLink {
    /// Sends CREATE to the link's relay `hop` on a fresh circuit.
    pub async fn create(&mut self, hop: &HopSpec) -> (Answer, Option<RawCircuit>) {
        let circ = self.circ_id();
        let (hs, msg) = ClientHandshake::start(&hop.onion_key).unwrap();
        self.send(&Cell::handshake(circ, CellCommand::Create, &msg).unwrap())
            .await;
        let Some(reply) = self.recv_for(circ).await else {
            return (Answer::Nothing, None);
        };
        if reply.command() != Ok(CellCommand::Created) {
            return (destroyed_or_other(&reply), None);
        }
        let keys = hs.finish(reply.handshake_msg().unwrap()).unwrap();
        let mut layers = ClientLayers::new(&rand::random(), RekeyPolicy::default());
        layers.push_hop(&keys).unwrap();
        (Answer::Grew, Some(RawCircuit { circ, layers }))
    }

    /// Like [`RawLink::create`], but the circuit must be built.
    pub async fn create_ok(&mut self, hop: &HopSpec) -> RawCircuit {
        match self.create(hop).await {
            (Answer::Grew, Some(c)) => c,
            (other, _) => panic!("CREATE to {} answered {other:?}", hop.peer),
        }
    }

    /// Sends a relay message through every hop of `c` in a cell with
    /// `command` (RELAY or RELAY_EARLY).
    pub async fn send_relay(
        &mut self,
        c: &mut RawCircuit,
        command: CellCommand,
        msg: &RelayMsg<'_>,
    ) {
        let mut cell = Cell::new(c.circ, command);
        encode_relay(cell.relay_payload_mut(), StreamId(0), msg).unwrap();
        self.send_onion(c, cell).await;
    }

    /// Adds every layer of `c` to `cell` (its payload already written) and sends it.
    pub async fn send_onion(&mut self, c: &mut RawCircuit, mut cell: Cell) {
        let command = cell.command().unwrap();
        c.layers
            .encrypt_forward(cell.body_mut(), command, Instant::now())
            .unwrap();
        self.send(&cell).await;
    }

    /// Asks the last hop of `c` to extend to `hop`, in a cell with `command`.
    pub async fn extend(
        &mut self,
        c: &mut RawCircuit,
        hop: &HopSpec,
        command: CellCommand,
    ) -> Answer {
        let (hs, msg) = ClientHandshake::start(&hop.onion_key).unwrap();
        let peer = hop.peer.to_bytes();
        let extend = RelayMsg::Extend {
            peer_id: &peer,
            addr: hop.addr,
            link_key: hop.link_key,
            handshake: &msg,
        };
        self.send_relay(c, command, &extend).await;
        let Some(mut reply) = self.recv_for(c.circ).await else {
            return Answer::Nothing;
        };
        if reply.command() != Ok(CellCommand::Relay) {
            return destroyed_or_other(&reply);
        }
        c.layers
            .decrypt_backward(reply.body_mut(), CellCommand::Relay)
            .unwrap();
        match decode_relay(reply.relay_payload()).unwrap() {
            (_, RelayMsg::Extended { handshake }) => {
                let keys = hs.finish(handshake).unwrap();
                // Past MAX_HOPS our layers cannot take the hop, but the
                // circuit did grow: say so, the test decides.
                let _ = c.layers.push_hop(&keys);
                Answer::Grew
            }
            (_, other) => panic!("EXTEND answered {other:?}"),
        }
    }
}

/// A fake relay: a listener with a real identity, link key and onion key,
/// whose links the test drives by hand.
pub struct FakeRelay {
    pub identity: Keypair,
    pub onion: OnionKeypair,
    pub listener: TcpListener,
    pub spec: HopSpec,
}

impl FakeRelay {
    pub async fn new() -> FakeRelay {
        let identity = Keypair::generate_ed25519();
        let onion = OnionKeypair::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spec = HopSpec {
            peer: identity.public().to_peer_id(),
            addr: listener.local_addr().unwrap(),
            onion_key: onion.public,
            link_key: LinkKey::derive(&identity).unwrap().public,
        };
        // Real relays extend only to relays in their directory.
        super::register_relay(spec.peer, spec.addr);
        FakeRelay {
            identity,
            onion,
            listener,
            spec,
        }
    }

    /// Accepts the next link.
    pub async fn accept(&self) -> RawLink {
        RawLink::accept(&self.listener, &self.identity).await
    }

    /// Waits for a CREATE on `link` and answers CREATED, as an honest relay
    /// would; returns the circuit id and our backward layer on it.
    pub async fn answer_create(&self, link: &mut RawLink) -> (CircId, RelayBackward) {
        let create = link.recv().await.expect("no CREATE arrived");
        assert_eq!(create.command(), Ok(CellCommand::Create));
        let circ = create.circ_id().unwrap();
        let (reply, keys) = relay_handshake(&self.onion.secret, create.handshake_msg().unwrap())
            .expect("a genuine CREATE");
        link.send(&Cell::handshake(circ, CellCommand::Created, &reply).unwrap())
            .await;
        let (_, back) = relay_layers(&keys, RekeyPolicy::default());
        (circ, back)
    }
}
