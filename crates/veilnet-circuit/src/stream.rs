//! The streams of one circuit end, the client's or the exit's: the stream
//! table, each stream's phase and half-close state, and the flow-control
//! windows of the streams and of the circuit, as plain data.
//!
//! Relay messages go in ([`Streams::handle`], with the stream id and the
//! decoded message), at most one [`Event`] for the caller comes out of each,
//! and the messages this end must send wait in a queue for
//! [`Streams::poll_transmit`]. The caller owns the sockets and the cells;
//! `A` is its per-stream handle to the application side (a queue, a buffer),
//! stored here so that it goes away with the stream: every way a stream
//! ends hands it back exactly once.
//!
//! Flow control is by credit, as in Tor: a sender may have at most the
//! stream window of unacknowledged DATA cells per stream and the circuit
//! window per circuit ([`FlowParams`]). The receiver returns credit once
//! cells are delivered: written to the application or discarded
//! ([`Streams::delivered`]), so a slow reader stalls its sender instead of
//! growing our memory. A peer that sends beyond a window, or returns more
//! credit than it was owed, breaks the protocol and loses the circuit.

use std::collections::{HashMap, VecDeque};

use veilnet_cell::{EndReason, RelayMsg, StreamId, TargetAddr};

use crate::error::{CircuitError, PeerMisbehaved};
use crate::flow::{FlowParams, RecvWindow, SendWindow};

/// Which end of the circuit this table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client: opens streams, receives CONNECTED.
    Client,
    /// The circuit's last hop: receives BEGIN, connects, answers CONNECTED.
    Exit,
}

/// One stream, as the caller names it: the stream id and a generation
/// number, so a handle to a stream that ended never reaches a newer stream
/// that reuses its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    sid: StreamId,
    generation: u64,
}

impl StreamHandle {
    /// The stream's id on the circuit.
    pub fn sid(&self) -> StreamId {
        self.sid
    }
}

/// A relay message this end must send, on stream `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The stream (0 for a circuit SENDME).
    pub sid: StreamId,
    /// What to send.
    pub msg: Outgoing,
}

/// The messages the stream table originates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Open a stream (client).
    Begin(TargetAddr),
    /// The stream is connected (exit).
    Connected,
    /// Flow-control credit.
    Sendme,
    /// The stream ends (in one direction with [`EndReason::Done`]).
    End(EndReason),
}

impl Outgoing {
    /// The relay message to encode.
    pub fn as_msg(&self) -> RelayMsg<'_> {
        match self {
            Self::Begin(target) => RelayMsg::Begin(target.clone()),
            Self::Connected => RelayMsg::Connected,
            Self::Sendme => RelayMsg::Sendme,
            Self::End(reason) => RelayMsg::End(*reason),
        }
    }
}

/// What a relay message means for the caller.
#[derive(Debug)]
pub enum Event<A> {
    /// The DATA cell just handled belongs to this stream's application; its
    /// credit is counted. Once written out, or if it cannot be, call
    /// [`Streams::delivered`].
    Deliver(StreamHandle),
    /// The exit connected the stream (client).
    Connected(StreamHandle),
    /// The peer sends nothing more on this stream (END(Done)); our own
    /// direction may go on.
    PeerFinished(StreamHandle),
    /// The stream is gone: the peer ended it with this reason (or, before
    /// CONNECTED, refused it), or broke the stream protocol and we reset it
    /// ([`EndReason::Protocol`], the END is queued). Here is its
    /// application handle back.
    Ended(StreamHandle, EndReason, A),
    /// Circuit send credit came back: wake every stream waiting for it.
    CircuitCredit,
    /// This stream's send credit came back.
    StreamCredit(StreamHandle),
    /// A BEGIN passed the protocol's checks (exit): ask the admission policy,
    /// then [`Streams::accept`] or [`Streams::refuse`] it.
    Begin(StreamId, TargetAddr),
}

/// What [`Streams::try_take_credit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// One cell of stream and circuit credit is taken: send the cell.
    Taken,
    /// No credit now: wait for [`Event::CircuitCredit`] or
    /// [`Event::StreamCredit`].
    Wait,
    /// The stream or the circuit is gone: stop sending.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client: BEGIN sent, waiting for CONNECTED. Exit: connecting.
    Opening,
    /// Carrying data.
    Open,
}

struct Stream<A> {
    generation: u64,
    phase: Phase,
    send: SendWindow,
    recv: RecvWindow,
    /// END(Done) arrived: the peer sends nothing more.
    peer_done: bool,
    /// We sent END(Done).
    we_done: bool,
    app: A,
}

/// The stream table of one circuit end.
pub struct Streams<A> {
    role: Role,
    flow: FlowParams,
    max_streams: usize,
    streams: HashMap<StreamId, Stream<A>>,
    next_sid: u16,
    next_generation: u64,
    circ_send: SendWindow,
    circ_recv: RecvWindow,
    out: VecDeque<Transmit>,
    closed: bool,
}

impl<A> std::fmt::Debug for Streams<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("role", &self.role)
            .field("streams", &self.streams.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl<A> Streams<A> {
    /// An empty table with the circuit's flow parameters and at most
    /// `max_streams` streams open at once.
    pub fn new(role: Role, flow: FlowParams, max_streams: usize) -> Self {
        Self {
            role,
            flow,
            max_streams,
            streams: HashMap::new(),
            next_sid: 1,
            next_generation: 0,
            circ_send: flow.circ_send(),
            circ_recv: flow.circ_recv(),
            out: VecDeque::new(),
            closed: false,
        }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// True once [`close`](Self::close) ran.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True while the stream `h` names is open.
    pub fn is_live(&self, h: StreamHandle) -> bool {
        self.get(h).is_some()
    }

    /// Every open stream.
    pub fn handles(&self) -> impl Iterator<Item = StreamHandle> + '_ {
        self.streams.iter().map(|(&sid, s)| StreamHandle {
            sid,
            generation: s.generation,
        })
    }

    /// The application handle of stream `h`, if it is still open.
    pub fn app(&self, h: StreamHandle) -> Option<&A> {
        self.get(h).map(|s| &s.app)
    }

    /// The application handle of stream `h`, if it is still open.
    pub fn app_mut(&mut self, h: StreamHandle) -> Option<&mut A> {
        self.get_mut(h).map(|s| &mut s.app)
    }

    /// Circuit send credit left (cells).
    pub fn circuit_credit(&self) -> u32 {
        self.circ_send.available()
    }

    /// DATA cells received on the circuit and not yet acknowledged.
    pub fn circuit_unacked(&self) -> u32 {
        self.circ_recv.outstanding()
    }

    /// Send credit left on stream `h` (0 when it is gone).
    pub fn stream_credit(&self, h: StreamHandle) -> u32 {
        self.get(h).map_or(0, |s| s.send.available())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn get(&self, h: StreamHandle) -> Option<&Stream<A>> {
        self.streams
            .get(&h.sid)
            .filter(|s| s.generation == h.generation)
    }

    fn get_mut(&mut self, h: StreamHandle) -> Option<&mut Stream<A>> {
        self.streams
            .get_mut(&h.sid)
            .filter(|s| s.generation == h.generation)
    }

    fn handle_of(&self, sid: StreamId) -> Option<StreamHandle> {
        self.streams.get(&sid).map(|s| StreamHandle {
            sid,
            generation: s.generation,
        })
    }

    fn send(&mut self, sid: StreamId, msg: Outgoing) {
        self.out.push_back(Transmit { sid, msg });
    }

    fn insert(&mut self, sid: StreamId, phase: Phase, app: A) -> StreamHandle {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.streams.insert(
            sid,
            Stream {
                generation,
                phase,
                send: self.flow.stream_send(),
                recv: self.flow.stream_recv(),
                peer_done: false,
                we_done: false,
                app,
            },
        );
        StreamHandle { sid, generation }
    }

    /// Removes stream `sid`, handing back its application handle.
    fn remove(&mut self, sid: StreamId) -> Option<(StreamHandle, A)> {
        self.streams.remove(&sid).map(|s| {
            let h = StreamHandle {
                sid,
                generation: s.generation,
            };
            (h, s.app)
        })
    }

    /// Client: opens a stream to `target` (queues its BEGIN).
    pub fn open(&mut self, target: TargetAddr, app: A) -> Result<StreamHandle, CircuitError> {
        if self.role != Role::Client {
            return Err(CircuitError::Bug("only the client opens streams"));
        }
        if self.closed {
            return Err(CircuitError::Closed);
        }
        if self.streams.len() >= self.max_streams {
            return Err(CircuitError::Limit("streams per circuit"));
        }
        // Skip 0 (the circuit) and ids in use; the table is never full of
        // all 65,535 ids, since `max_streams` is a u16 limit at most.
        let mut sid = StreamId(self.next_sid);
        while sid.0 == 0 || self.streams.contains_key(&sid) {
            self.next_sid = self.next_sid.wrapping_add(1);
            sid = StreamId(self.next_sid);
        }
        self.next_sid = self.next_sid.wrapping_add(1);
        let h = self.insert(sid, Phase::Opening, app);
        self.send(sid, Outgoing::Begin(target));
        Ok(h)
    }

    /// Exit: admits the BEGIN of [`Event::Begin`]; the stream is connecting
    /// (DATA the client sends meanwhile is kept for it). At the stream limit
    /// it is refused instead (END queued) and `app` comes back.
    pub fn accept(&mut self, sid: StreamId, app: A) -> Result<StreamHandle, A> {
        if self.closed || self.streams.contains_key(&sid) {
            return Err(app);
        }
        if self.streams.len() >= self.max_streams {
            self.send(sid, Outgoing::End(EndReason::Misc));
            return Err(app);
        }
        Ok(self.insert(sid, Phase::Opening, app))
    }

    /// Exit: declines the BEGIN of [`Event::Begin`] (END queued).
    pub fn refuse(&mut self, sid: StreamId, reason: EndReason) {
        if !self.closed {
            self.send(sid, Outgoing::End(reason));
        }
    }

    /// Exit: stream `h` connected to its target (CONNECTED queued). False if
    /// the stream is gone.
    pub fn connected(&mut self, h: StreamHandle) -> bool {
        match self.get_mut(h) {
            Some(s) if s.phase == Phase::Opening => {
                s.phase = Phase::Open;
                self.send(h.sid, Outgoing::Connected);
                true
            }
            _ => false,
        }
    }

    /// Takes one cell of send credit from stream `h` and from the circuit.
    /// At the exit, a stream not yet [`connected`](Self::connected) waits.
    pub fn try_take_credit(&mut self, h: StreamHandle) -> Credit {
        if self.closed {
            return Credit::Gone;
        }
        let circ_send = &mut self.circ_send;
        match self
            .streams
            .get_mut(&h.sid)
            .filter(|s| s.generation == h.generation)
        {
            None => Credit::Gone,
            Some(s) if s.we_done => Credit::Gone,
            // The exit sends nothing before CONNECTED (the client may send
            // optimistic data: the exit keeps it for the stream).
            Some(s) if self.role == Role::Exit && s.phase == Phase::Opening => Credit::Wait,
            Some(s) if s.send.available() > 0 && circ_send.available() > 0 => {
                s.send.try_take();
                circ_send.try_take();
                Credit::Taken
            }
            Some(_) => Credit::Wait,
        }
    }

    /// Gives back the credit of a cell that was taken but never sent. The
    /// circuit's always comes back; the stream's if it is still open.
    pub fn refund_credit(&mut self, h: StreamHandle) {
        self.circ_send.refund();
        if let Some(s) = self.get_mut(h) {
            s.send.refund();
        }
    }

    /// `n` DATA cells of stream `h` (or, with `None`, of no stream still
    /// open) were written out or discarded: queues the SENDMEs now due, for
    /// the circuit and, if it is still open, the stream.
    pub fn delivered(&mut self, h: Option<StreamHandle>, n: u32) {
        let circ = self.circ_recv.delivered(n);
        let stream = match h.and_then(|h| self.get_mut(h)) {
            Some(s) => s.recv.delivered(n),
            None => 0,
        };
        if self.closed {
            return;
        }
        for _ in 0..circ {
            self.send(StreamId(0), Outgoing::Sendme);
        }
        if let Some(h) = h {
            for _ in 0..stream {
                self.send(h.sid, Outgoing::Sendme);
            }
        }
    }

    /// We send nothing more on stream `h` (END(Done) queued). When the peer
    /// has finished too, the stream is gone and its handle comes back.
    pub fn finish(&mut self, h: StreamHandle) -> Option<A> {
        let s = self.get_mut(h).filter(|s| !s.we_done)?;
        s.we_done = true;
        let both = s.peer_done;
        self.send(h.sid, Outgoing::End(EndReason::Done));
        if both {
            self.remove(h.sid).map(|(_, app)| app)
        } else {
            None
        }
    }

    /// Ends stream `h` from our side: forgets it, queues END with `reason`
    /// if given, and hands back its application handle.
    pub fn reset(&mut self, h: StreamHandle, reason: Option<EndReason>) -> Option<A> {
        self.get(h)?;
        let (_, app) = self.remove(h.sid)?;
        if let Some(reason) = reason.filter(|_| !self.closed) {
            self.send(h.sid, Outgoing::End(reason));
        }
        Some(app)
    }

    /// The circuit is gone: every stream ends, and nothing more is sent.
    pub fn close(&mut self) -> Vec<(StreamHandle, A)> {
        self.closed = true;
        self.out.clear();
        let sids: Vec<StreamId> = self.streams.keys().copied().collect();
        sids.into_iter()
            .filter_map(|sid| self.remove(sid))
            .collect()
    }

    /// A stream's protocol broke: reset it, and discard the cell.
    fn reset_for(&mut self, sid: StreamId) -> Option<Event<A>> {
        let (h, app) = self.remove(sid)?;
        self.send(sid, Outgoing::End(EndReason::Protocol));
        Some(Event::Ended(h, EndReason::Protocol, app))
    }

    /// Handles a relay message (all layers removed) on stream `sid`. An
    /// error means the peer broke the circuit protocol: destroy the circuit.
    /// Misbehaviour confined to one stream resets that stream instead.
    pub fn handle(
        &mut self,
        sid: StreamId,
        msg: &RelayMsg<'_>,
    ) -> Result<Option<Event<A>>, PeerMisbehaved> {
        if self.closed {
            return Ok(None);
        }
        match msg {
            RelayMsg::Data(_) => {
                if sid == StreamId(0) {
                    return Err(PeerMisbehaved::Unexpected("DATA on stream 0"));
                }
                // The circuit window first: a peer beyond it loses the circuit.
                self.circ_recv.take()?;
                let role = self.role;
                let Some(s) = self.streams.get_mut(&sid) else {
                    // A stream that already ended: drop the data, return
                    // its circuit credit.
                    self.delivered(None, 1);
                    return Ok(None);
                };
                // DATA after END, DATA before CONNECTED, or beyond the
                // stream's window.
                let broken = s.peer_done
                    || (role == Role::Client && s.phase == Phase::Opening)
                    || s.recv.take().is_err();
                let h = StreamHandle {
                    sid,
                    generation: s.generation,
                };
                if broken {
                    self.delivered(None, 1);
                    return Ok(self.reset_for(sid));
                }
                Ok(Some(Event::Deliver(h)))
            }
            RelayMsg::Sendme if sid == StreamId(0) => {
                self.circ_send.put()?;
                Ok(Some(Event::CircuitCredit))
            }
            RelayMsg::Sendme => match self.streams.get_mut(&sid) {
                // A SENDME for a stream that ended is late, not wrong.
                None => Ok(None),
                Some(s) => {
                    s.send.put()?;
                    Ok(self.handle_of(sid).map(Event::StreamCredit))
                }
            },
            RelayMsg::End(reason) => {
                let Some(s) = self.streams.get_mut(&sid) else {
                    return Ok(None);
                };
                let refused = self.role == Role::Client && s.phase == Phase::Opening;
                if *reason == EndReason::Done && !refused {
                    // Once: a repeated END(Done) means nothing more.
                    if s.peer_done {
                        return Ok(None);
                    }
                    s.peer_done = true;
                    if s.we_done {
                        // Both directions are done: the stream is gone.
                        return Ok(self
                            .remove(sid)
                            .map(|(h, app)| Event::Ended(h, *reason, app)));
                    }
                    return Ok(self.handle_of(sid).map(Event::PeerFinished));
                }
                Ok(self
                    .remove(sid)
                    .map(|(h, app)| Event::Ended(h, *reason, app)))
            }
            RelayMsg::Connected => {
                if self.role == Role::Exit {
                    return Err(PeerMisbehaved::BackwardOnlyMessage);
                }
                match self.streams.get_mut(&sid) {
                    // A stream we gave up on already: late, not wrong.
                    None => Ok(None),
                    Some(s) if s.phase == Phase::Opening => {
                        s.phase = Phase::Open;
                        Ok(self.handle_of(sid).map(Event::Connected))
                    }
                    Some(_) => Err(PeerMisbehaved::Unexpected("CONNECTED twice")),
                }
            }
            RelayMsg::Begin(target) => {
                if self.role == Role::Client {
                    return Err(PeerMisbehaved::Unexpected("BEGIN toward the client"));
                }
                if sid == StreamId(0) {
                    return Err(PeerMisbehaved::Unexpected("BEGIN on stream 0"));
                }
                if self.streams.contains_key(&sid) {
                    return Err(PeerMisbehaved::Unexpected("BEGIN on a stream in use"));
                }
                Ok(Some(Event::Begin(sid, target.clone())))
            }
            RelayMsg::Drop => Ok(None),
            RelayMsg::Extend { .. } | RelayMsg::Extended { .. } => Err(PeerMisbehaved::Unexpected(
                "circuit message on a stream endpoint",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetAddr {
        TargetAddr::Domain("example.org".into(), 443)
    }

    fn small() -> FlowParams {
        FlowParams {
            stream_window: 4,
            stream_sendme: 2,
            circ_window: 6,
            circ_sendme: 3,
        }
    }

    fn drain<A>(s: &mut Streams<A>) -> Vec<Transmit> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn a_reused_id_is_a_new_stream() {
        let mut exit: Streams<u8> = Streams::new(Role::Exit, small(), 8);
        let old = exit.accept(StreamId(5), 1).unwrap();
        assert_eq!(exit.reset(old, None), Some(1));
        let new = exit.accept(StreamId(5), 2).unwrap();
        assert_ne!(old, new);
        assert_eq!(exit.reset(old, Some(EndReason::Misc)), None);
        // Nothing goes back before CONNECTED.
        assert_eq!(exit.try_take_credit(new), Credit::Wait);
        assert!(exit.connected(new));
        assert!(!exit.connected(old));
        assert_eq!(exit.app(new), Some(&2));
        assert_eq!(exit.try_take_credit(old), Credit::Gone);
        assert_eq!(exit.try_take_credit(new), Credit::Taken);
    }

    #[test]
    fn a_stream_violation_resets_only_that_stream() {
        let mut client: Streams<()> = Streams::new(Role::Client, small(), 8);
        let a = client.open(target(), ()).unwrap();
        let b = client.open(target(), ()).unwrap();
        drain(&mut client);
        // DATA before CONNECTED: stream a is reset, b lives on.
        match client.handle(a.sid(), &RelayMsg::Data(b"x")).unwrap() {
            Some(Event::Ended(h, EndReason::Protocol, ())) => assert_eq!(h, a),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            drain(&mut client),
            vec![Transmit {
                sid: a.sid(),
                msg: Outgoing::End(EndReason::Protocol)
            }]
        );
        assert!(client.is_live(b));
        // A circuit-level violation is the caller's to act on.
        assert!(client.handle(StreamId(0), &RelayMsg::Data(b"x")).is_err());
        assert!(client
            .handle(StreamId(9), &RelayMsg::Begin(target()))
            .is_err());
    }

    #[test]
    fn an_end_before_connected_is_a_refusal_even_when_done() {
        let mut client: Streams<()> = Streams::new(Role::Client, small(), 8);
        let a = client.open(target(), ()).unwrap();
        match client
            .handle(a.sid(), &RelayMsg::End(EndReason::Done))
            .unwrap()
        {
            Some(Event::Ended(h, EndReason::Done, ())) => assert_eq!(h, a),
            other => panic!("{other:?}"),
        }
        assert!(client.is_empty());
    }

    #[test]
    fn closing_ends_every_stream_and_silences_the_table() {
        let mut client: Streams<u32> = Streams::new(Role::Client, small(), 8);
        for i in 0..3 {
            client.open(target(), i).unwrap();
        }
        let mut gone: Vec<u32> = client.close().into_iter().map(|(_, a)| a).collect();
        gone.sort_unstable();
        assert_eq!(gone, vec![0, 1, 2]);
        assert!(client.poll_transmit().is_none());
        assert!(matches!(
            client.open(target(), 9),
            Err(CircuitError::Closed)
        ));
    }

    #[test]
    fn the_stream_limit_refuses_with_an_end() {
        let mut exit: Streams<()> = Streams::new(Role::Exit, small(), 1);
        exit.accept(StreamId(1), ()).unwrap();
        assert!(exit.accept(StreamId(2), ()).is_err());
        assert_eq!(
            drain(&mut exit),
            vec![Transmit {
                sid: StreamId(2),
                msg: Outgoing::End(EndReason::Misc)
            }]
        );
        let mut client: Streams<()> = Streams::new(Role::Client, small(), 1);
        client.open(target(), ()).unwrap();
        assert!(matches!(
            client.open(target(), ()),
            Err(CircuitError::Limit(_))
        ));
    }
}
