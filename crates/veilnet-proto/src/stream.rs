//! Streams: the endpoint shared by the client and the exit, which drives
//! the stream table of `veilnet-circuit` ([`Streams`]: phases, half-close,
//! flow-control windows) over a circuit, and the pumps between a TCP socket
//! and cells.
//!
//! Flow control is the table's: credit per stream and per circuit
//! ([`FlowParams`]), returned once cells are *written* to the application
//! socket or discarded, so a slow reader stalls its sender instead of
//! growing our memory.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use libp2p_identity::PeerId;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tracing::debug;
use veilnet_cell::{
    decode_relay, encode_data_in_place, encode_relay, Cell, CellCommand, CircId, EndReason,
    RelayMsg, StreamId, TargetAddr, RELAY_DATA_MAX, RELAY_HEADER_LEN,
};

use crate::limits::Limits;
use crate::stats::{count, Stats};
use crate::ProtoError;
use veilnet_circuit::policy::{BeginRequest, RelayPolicy};
use veilnet_circuit::{
    CircuitError, Credit, Event, FlowParams, Role, StreamHandle, Streams, Transmit,
};

/// Cells read or written per socket call.
const IO_BATCH: usize = 32;

/// How an endpoint sends cells into its circuit: adds the layers and queues
/// the cell on the right link. Implemented by the engine's circuit senders
/// (the client's, and a last hop's); this module never sees a link.
pub(crate) trait CircuitSender: Send + Sync + 'static {
    /// The circuit's id on the link the cells go out on.
    fn circ(&self) -> CircId;
    /// Which end of the circuit we are.
    fn role(&self) -> Role;
    /// The neighbour that sent the circuit's CREATE (at a last hop: the one
    /// the admission policy asks about); `None` at the client.
    fn prev_peer(&self) -> Option<PeerId>;
    /// Adds the layers and queues the cell; `now` is the time its layers'
    /// key age goes by (read once per batch of cells by the caller).
    fn send(&self, cell: Cell, now: Instant)
        -> impl Future<Output = Result<(), ProtoError>> + Send;
}

/// What a last hop's endpoint needs to open exit streams.
pub(crate) struct ExitSide {
    /// The node's admission policy (which may make it an exit).
    pub(crate) policy: Arc<dyn RelayPolicy>,
    pub(crate) stats: Arc<Stats>,
    /// Exit connects in progress on this node.
    pub(crate) connects: Arc<Semaphore>,
    /// This node's measurement sinks.
    pub(crate) sinks: Arc<crate::sink::Sinks>,
}

pub(crate) enum ToApp {
    Data(Cell, usize),
    Eof,
    Reset(EndReason),
}

/// What the stream table keeps per stream for its pumps: the way to the
/// application, and the wakeups.
pub(crate) struct StreamIo {
    to_app: mpsc::Sender<ToApp>,
    /// Wakes the upstream pump when stream credit comes back.
    credit: Arc<Notify>,
    /// The client's wait for CONNECTED.
    connected: Option<oneshot::Sender<Result<(), EndReason>>>,
    /// Cancels the exit's resolve-and-connect when the stream goes away first.
    cancel: Arc<Notify>,
}

impl StreamIo {
    /// The stream is gone: wake and tell everything that waits on it.
    fn gone(mut self, reason: EndReason) {
        self.credit.notify_one();
        self.cancel.notify_one();
        if let Some(c) = self.connected.take() {
            let _ = c.send(Err(reason));
        }
        let last = if reason == EndReason::Done {
            ToApp::Eof
        } else {
            ToApp::Reset(reason)
        };
        let _ = self.to_app.try_send(last);
    }
}

/// The pumps' side of one stream.
struct PumpEnd {
    h: StreamHandle,
    rx: mpsc::Receiver<ToApp>,
    credit: Arc<Notify>,
}

/// One end of a circuit that carries streams, the client or the exit: the
/// stream state machine of `veilnet-circuit` driven over this circuit's
/// sender, with a pair of pumps per stream.
pub(crate) struct Endpoint<T> {
    tx: T,
    streams: Mutex<Streams<StreamIo>>,
    /// Wakes upstream pumps waiting for circuit credit.
    circ_credit: Notify,
    flow: FlowParams,
    /// At a last hop, what opening exit streams needs; `None` at the client.
    exit: Option<ExitSide>,
    limits: Limits,
}

impl<T: CircuitSender> Endpoint<T> {
    pub(crate) fn new(tx: T, exit: Option<ExitSide>, limits: Limits) -> Arc<Self> {
        let flow = limits.flow;
        let role = tx.role();
        Arc::new(Self {
            tx,
            streams: Mutex::new(Streams::new(role, flow, limits.max_streams_per_circuit)),
            circ_credit: Notify::new(),
            flow,
            exit,
            limits,
        })
    }

    fn streams(&self) -> MutexGuard<'_, Streams<StreamIo>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the stream table; returns its result and the messages
    /// the table queued meanwhile, to [`flush`](Self::flush) after the lock.
    fn with<R>(&self, f: impl FnOnce(&mut Streams<StreamIo>) -> R) -> (R, Vec<Transmit>) {
        let mut streams = self.streams();
        let r = f(&mut streams);
        (r, std::iter::from_fn(|| streams.poll_transmit()).collect())
    }

    /// Sends what the stream table queued.
    async fn flush(&self, out: Vec<Transmit>) -> Result<(), ProtoError> {
        for t in out {
            self.send_msg(t.sid, &t.msg.as_msg()).await?;
        }
        Ok(())
    }

    /// [`with`](Self::with), then [`flush`](Self::flush).
    async fn act<R>(&self, f: impl FnOnce(&mut Streams<StreamIo>) -> R) -> Result<R, ProtoError> {
        let (r, out) = self.with(f);
        self.flush(out).await?;
        Ok(r)
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams().len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.streams().is_closed()
    }

    /// Closes every stream; the circuit is gone.
    pub(crate) fn close(&self) {
        let gone = self.streams().close();
        self.circ_credit.notify_waiters();
        for (_, io) in gone {
            io.gone(EndReason::Destroyed);
        }
    }

    /// Ends stream `h` from our side, with END(`reason`) if given.
    async fn reset(&self, h: StreamHandle, reason: Option<EndReason>) {
        if let Ok(Some(io)) = self.act(|s| s.reset(h, reason)).await {
            io.credit.notify_one();
            io.cancel.notify_one();
        }
    }

    /// Waits for one cell of send credit; false once the stream or the
    /// circuit is gone.
    async fn take_credit(&self, h: StreamHandle, credit: &Notify) -> bool {
        loop {
            match self.streams().try_take_credit(h) {
                Credit::Taken => return true,
                Credit::Gone => return false,
                Credit::Wait => {}
            }
            // Register for both wakeups, then look again: a SENDME that came
            // in between is not missed.
            let circ = self.circ_credit.notified();
            let stream = credit.notified();
            tokio::pin!(circ, stream);
            circ.as_mut().enable();
            stream.as_mut().enable();
            match self.streams().try_take_credit(h) {
                Credit::Taken => return true,
                Credit::Gone => return false,
                Credit::Wait => {}
            }
            tokio::select! {
                _ = circ => {}
                _ = stream => {}
            }
        }
    }

    /// Gives back the credit of a cell that was never sent.
    fn refund_credit(&self, h: StreamHandle) {
        self.streams().refund_credit(h);
        self.circ_credit.notify_waiters();
    }

    /// Discards what is left in a stream's queue, returning its circuit credit.
    async fn drain(&self, rx: &mut mpsc::Receiver<ToApp>) {
        rx.close();
        let mut n = 0;
        while let Ok(item) = rx.try_recv() {
            if matches!(item, ToApp::Data(..)) {
                n += 1;
            }
        }
        if n > 0 {
            let _ = self.act(|s| s.delivered(None, n)).await;
        }
    }

    async fn send_msg(&self, sid: StreamId, msg: &RelayMsg<'_>) -> Result<(), ProtoError> {
        let mut cell = Cell::new(self.tx.circ(), CellCommand::Relay);
        encode_relay(cell.relay_payload_mut(), sid, msg)?;
        self.tx.send(cell, Instant::now()).await
    }

    /// A new stream's queues: the table's side and the pumps' side.
    fn stream_io(
        &self,
        connected: Option<oneshot::Sender<Result<(), EndReason>>>,
    ) -> (StreamIo, mpsc::Receiver<ToApp>, Arc<Notify>) {
        // Room for a whole stream window and the END after it: the receive
        // window, not the queue, is what refuses a peer that sends too much.
        let (to_app, rx) = mpsc::channel(self.flow.stream_window as usize + 4);
        let credit = Arc::new(Notify::new());
        let io = StreamIo {
            to_app,
            credit: credit.clone(),
            connected,
            cancel: Arc::new(Notify::new()),
        };
        (io, rx, credit)
    }

    /// Handles a relay message (all layers removed) for this endpoint. An
    /// error means the peer broke the protocol: destroy the circuit.
    pub(crate) async fn handle(self: &Arc<Self>, cell: Cell) -> Result<(), ProtoError> {
        let (sid, msg) = decode_relay(cell.relay_payload())?;
        let len = match &msg {
            RelayMsg::Data(d) => d.len(),
            _ => 0,
        };
        let mut begin = None;
        let out = {
            let mut streams = self.streams();
            let event = streams.handle(sid, &msg).map_err(CircuitError::from)?;
            match event {
                None => {}
                Some(Event::Deliver(h)) => {
                    // The stream queue holds a whole stream window, so only
                    // a stream whose pump already ended refuses the cell;
                    // discarded, it still returns its circuit credit.
                    let queued = streams
                        .app(h)
                        .is_some_and(|io| io.to_app.try_send(ToApp::Data(cell, len)).is_ok());
                    if !queued {
                        streams.delivered(None, 1);
                    }
                }
                Some(Event::Connected(h)) => {
                    if let Some(c) = streams.app_mut(h).and_then(|io| io.connected.take()) {
                        let _ = c.send(Ok(()));
                    }
                }
                Some(Event::PeerFinished(h)) => {
                    if let Some(io) = streams.app(h) {
                        let _ = io.to_app.try_send(ToApp::Eof);
                    }
                }
                Some(Event::Ended(h, reason, io)) => {
                    if reason == EndReason::Protocol {
                        debug!("reset stream {:?}: it broke the stream protocol", h.sid());
                    }
                    io.gone(reason);
                }
                Some(Event::CircuitCredit) => self.circ_credit.notify_waiters(),
                Some(Event::StreamCredit(h)) => {
                    if let Some(io) = streams.app(h) {
                        io.credit.notify_one();
                    }
                }
                Some(Event::Begin(sid, target)) => begin = Some((sid, target)),
            }
            std::iter::from_fn(|| streams.poll_transmit()).collect()
        };
        self.flush(out).await?;
        if let Some((sid, target)) = begin {
            self.begin(sid, target).await?;
        }
        Ok(())
    }

    /// Exit side: a client asks for a stream; the admission policy decides.
    async fn begin(self: &Arc<Self>, sid: StreamId, target: TargetAddr) -> Result<(), ProtoError> {
        // The neighbour that sent this circuit's CREATE: the link our
        // layer sends back on.
        let (Some(exit), Some(prev_peer)) = (&self.exit, self.tx.prev_peer()) else {
            return self.act(|s| s.refuse(sid, EndReason::ExitPolicy)).await;
        };
        let policy = exit.policy.clone();
        // One of our own measurement sinks: joined to its local socket,
        // whatever the exit policy (the name is ours, and used up).
        let sink = exit.sinks.claim(&target);
        let admitted = match (&sink, &target) {
            (Some(_), _) => Ok(()),
            // Our names are never looked up, nor anyone's guess at one.
            (None, TargetAddr::Domain(name, _)) if is_reserved_name(name) => {
                Err(veilnet_circuit::policy::Refusal::ExitPolicy)
            }
            (None, _) => policy.admit_begin(&BeginRequest {
                prev_peer,
                target: &target,
            }),
        };
        if let Err(refusal) = admitted {
            debug!("refusing a BEGIN: {refusal}");
            count(&exit.stats.streams_refused);
            return self.act(|s| s.refuse(sid, refusal.end_reason())).await;
        }
        let Ok(permit) = exit.connects.clone().try_acquire_owned() else {
            return self.act(|s| s.refuse(sid, EndReason::Misc)).await;
        };
        let (io, mut rx, credit) = self.stream_io(None);
        let cancel = io.cancel.clone();
        let Ok(h) = self.act(|s| s.accept(sid, io)).await? else {
            return Ok(()); // at the stream limit: END sent
        };
        if sink.is_some() {
            count(&exit.stats.sink_streams);
        } else {
            count(&exit.stats.exit_streams);
        }
        let ep = self.clone();
        // The whole resolve-and-connect stays well inside the client's stream
        // open timeout, so the client hears the real reason.
        let budget = self.limits.connect_timeout * 2;
        let per_addr = self.limits.connect_timeout;
        tokio::spawn(async move {
            let result = tokio::select! {
                r = tokio::time::timeout(budget, async {
                    match sink {
                        Some(local) => TcpStream::connect(local).await.map_err(|_| EndReason::Misc),
                        None => crate::exit::connect(&*policy, prev_peer, &target, per_addr).await,
                    }
                }) => {
                    r.unwrap_or(Err(EndReason::Timeout))
                }
                // The stream or circuit went away first: stop here.
                _ = cancel.notified() => Err(EndReason::Destroyed),
            };
            drop(permit);
            match result {
                Ok(tcp) => {
                    if matches!(ep.act(|s| s.connected(h)).await, Ok(true)) {
                        pump(ep, PumpEnd { h, rx, credit }, tcp, Vec::new()).await;
                    } else {
                        ep.drain(&mut rx).await;
                    }
                }
                Err(EndReason::Destroyed) => ep.drain(&mut rx).await,
                Err(reason) => {
                    ep.reset(h, Some(reason)).await;
                    ep.drain(&mut rx).await;
                }
            }
        });
        Ok(())
    }

    /// Client side: opens a stream to `target` through the circuit.
    pub(crate) async fn open(
        self: &Arc<Self>,
        target: &TargetAddr,
    ) -> Result<OpenStream<T>, ProtoError> {
        let (tx, rx_connected) = oneshot::channel();
        let (io, mut rx, credit) = self.stream_io(Some(tx));
        let (opened, out) = self.with(|s| s.open(target.clone(), io));
        let h = match opened {
            Ok(h) => h,
            Err(CircuitError::Closed) => return Err(ProtoError::CircuitClosed),
            Err(CircuitError::Limit(what)) => return Err(ProtoError::Limit(what)),
            Err(e) => return Err(e.into()),
        };
        let result = async {
            self.flush(out).await?;
            match tokio::time::timeout(self.limits.stream_open_timeout, rx_connected).await {
                Err(_) => Err(ProtoError::Timeout("stream open")),
                Ok(Err(_)) => Err(ProtoError::CircuitClosed),
                Ok(Ok(Err(EndReason::Destroyed))) => Err(ProtoError::CircuitClosed),
                Ok(Ok(Err(reason))) => Err(ProtoError::StreamRefused(reason)),
                Ok(Ok(Ok(()))) => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            // Tell the exit to give up too, so it frees the stream (unless
            // it already ended the stream, or the circuit is gone).
            let end = !matches!(e, ProtoError::StreamRefused(_) | ProtoError::CircuitClosed);
            self.reset(h, end.then_some(EndReason::Misc)).await;
            // Whatever arrived meanwhile returns its circuit credit.
            self.drain(&mut rx).await;
            return Err(e);
        }
        Ok(OpenStream {
            open: Some((self.clone(), PumpEnd { h, rx, credit })),
        })
    }
}

/// An open stream, ready to be joined to a socket. Dropping it without
/// [`OpenStream::run`] ends the stream at the other end.
pub(crate) struct OpenStream<T: CircuitSender> {
    open: Option<(Arc<Endpoint<T>>, PumpEnd)>,
}

impl<T: CircuitSender> OpenStream<T> {
    /// Carries bytes between `tcp` and the stream until both directions have
    /// ended. `initial` is sent first (bytes the application sent early).
    pub(crate) async fn run(mut self, tcp: TcpStream, initial: Vec<u8>) {
        if let Some((ep, end)) = self.open.take() {
            pump(ep, end, tcp, initial).await;
        }
    }
}

impl<T: CircuitSender> Drop for OpenStream<T> {
    fn drop(&mut self) {
        let Some((ep, mut end)) = self.open.take() else {
            return;
        };
        // Once per abandoned stream, not per cell: end it at the exit and
        // return the credit of anything that arrived meanwhile.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                ep.reset(end.h, Some(EndReason::Misc)).await;
                ep.drain(&mut end.rx).await;
            });
        } else {
            ep.streams().reset(end.h, None);
        }
    }
}

/// Joins a TCP socket and a stream: both directions, half-close aware.
async fn pump<T: CircuitSender>(
    ep: Arc<Endpoint<T>>,
    end: PumpEnd,
    tcp: TcpStream,
    initial: Vec<u8>,
) {
    let PumpEnd { h, mut rx, credit } = end;
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
    let up_ep = ep.clone();
    let mut up = tokio::spawn(async move { upstream(up_ep, h, rd, credit, initial).await });
    let down = downstream(&ep, h, &mut wr, &mut rx).await;
    if down {
        let _ = (&mut up).await;
    } else {
        up.abort();
    }
    // Both directions are done (or one broke): forget the stream.
    ep.reset(h, None).await;
    ep.drain(&mut rx).await;
}

/// Whether `name` is under `.veilnet`, which no exit looks up.
fn is_reserved_name(name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n == "veilnet" || n.ends_with(".veilnet")
}

/// Socket to circuit. Ends the stream's outbound direction with END(Done) on
/// EOF, or resets the stream on a socket error.
async fn upstream<T: CircuitSender>(
    ep: Arc<Endpoint<T>>,
    h: StreamHandle,
    mut rd: OwnedReadHalf,
    credit: Arc<Notify>,
    initial: Vec<u8>,
) {
    let sid = h.sid();
    let mut buf = vec![0u8; IO_BATCH * RELAY_DATA_MAX];
    let mut first = Some(initial).filter(|v| !v.is_empty());
    loop {
        let (n, from_initial) = match first.take() {
            Some(v) => {
                let n = v.len().min(buf.len());
                buf[..n].copy_from_slice(&v[..n]);
                (n, true)
            }
            None => match rd.read(&mut buf).await {
                Ok(n) => (n, false),
                Err(e) => {
                    debug!("stream socket read failed: {e}");
                    ep.reset(h, Some(EndReason::Reset)).await;
                    return;
                }
            },
        };
        // One clock read per socket read (up to IO_BATCH cells).
        let now = Instant::now();
        if n == 0 && !from_initial {
            // END(Done); if the peer had finished too, the stream is over.
            let _ = ep.act(|s| s.finish(h)).await;
            return;
        }
        for chunk in buf[..n].chunks(RELAY_DATA_MAX) {
            if !ep.take_credit(h, &credit).await {
                return; // stream or circuit closed
            }
            // Until the cell is queued, the credit is ours to give back:
            // this pump may be aborted while it waits for the link.
            let taken = TakenCredit { ep: &ep, h };
            let mut cell = Cell::new(ep.tx.circ(), CellCommand::Relay);
            let payload = cell.relay_payload_mut();
            payload[RELAY_HEADER_LEN..RELAY_HEADER_LEN + chunk.len()].copy_from_slice(chunk);
            if encode_data_in_place(payload, sid, chunk.len()).is_err()
                || ep.tx.send(cell, now).await.is_err()
            {
                return;
            }
            std::mem::forget(taken);
        }
    }
}

/// One cell of send credit taken for a cell not yet queued: dropped without
/// being forgotten (the send failed, or the pump was aborted while it
/// waited), it gives the credit back, so a circuit never loses credit for a
/// cell its peer never saw.
struct TakenCredit<'a, T: CircuitSender> {
    ep: &'a Endpoint<T>,
    h: StreamHandle,
}

impl<T: CircuitSender> Drop for TakenCredit<'_, T> {
    fn drop(&mut self) {
        self.ep.refund_credit(self.h);
    }
}

/// Circuit to socket. Returns true on an orderly end (END(Done) seen and the
/// socket's write side shut down), false on a reset.
async fn downstream<T: CircuitSender>(
    ep: &Endpoint<T>,
    h: StreamHandle,
    wr: &mut OwnedWriteHalf,
    rx: &mut mpsc::Receiver<ToApp>,
) -> bool {
    let mut out = Vec::with_capacity(IO_BATCH * RELAY_DATA_MAX);
    loop {
        let Some(first) = rx.recv().await else {
            return false;
        };
        out.clear();
        let mut cells = 0u32;
        let mut end = None;
        let mut item = Some(first);
        while let Some(it) = item.take() {
            match it {
                ToApp::Data(cell, len) => {
                    out.extend_from_slice(
                        &cell.relay_payload()[RELAY_HEADER_LEN..RELAY_HEADER_LEN + len],
                    );
                    cells += 1;
                }
                other => {
                    end = Some(other);
                    break;
                }
            }
            if cells < IO_BATCH as u32 {
                item = rx.try_recv().ok();
            }
        }
        if cells > 0 {
            let written = if out.is_empty() {
                Ok(())
            } else {
                wr.write_all(&out).await
            };
            if let Err(e) = written {
                debug!("stream socket write failed: {e}");
                // Discarded, these cells still return their circuit credit.
                let _ = ep
                    .act(|s| {
                        s.reset(h, Some(EndReason::Reset));
                        s.delivered(None, cells);
                    })
                    .await;
                return false;
            }
            // Written out: the stream's and the circuit's credit come back.
            if ep.act(|s| s.delivered(Some(h), cells)).await.is_err() {
                return false;
            }
        }
        match end {
            Some(ToApp::Eof) => {
                let _ = wr.shutdown().await;
                return true;
            }
            Some(ToApp::Reset(reason)) => {
                debug!("stream reset by the other end: {reason:?}");
                return false;
            }
            _ => {}
        }
    }
}
