//! Streams: the endpoint shared by the client and the exit, flow control and
//! the pumps between a TCP socket and cells.
//!
//! Flow control is by credit, as in Tor: a sender may have at most
//! `stream_window` unacknowledged DATA cells per stream and `circ_window` per
//! circuit. The receiver returns `stream_sendme` credits once it has *written*
//! that many cells to the application socket (so a slow reader stalls its
//! sender instead of growing our memory) and `circ_window` credits once it has
//! received `circ_sendme` cells. A peer that sends beyond its window breaks
//! the protocol and loses the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;
use veilnet_cell::{
    decode_relay, encode_data_in_place, encode_relay, Cell, CellCommand, CircId, EndReason,
    RelayMsg, StreamId, TargetAddr, RELAY_DATA_MAX, RELAY_HEADER_LEN,
};
use veilnet_crypto::onion::ClientForward;

use crate::core::{Core, Limits};
use crate::link::Link;
use crate::policy::{BeginRequest, RelayPolicy};
use crate::relay::BackSender;
use crate::ProtoError;

/// Flow-control parameters, in cells.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Unacknowledged DATA cells allowed per stream.
    pub stream_window: usize,
    /// Cells acknowledged by one stream SENDME.
    pub stream_sendme: usize,
    /// Unacknowledged DATA cells allowed per circuit.
    pub circ_window: usize,
    /// Cells acknowledged by one circuit SENDME.
    pub circ_sendme: usize,
}

/// The flow-control parameters every node uses.
pub const FLOW: Flow = Flow {
    stream_window: 1024,
    stream_sendme: 128,
    circ_window: 2048,
    circ_sendme: 256,
};

/// Cells read or written per socket call.
const IO_BATCH: usize = 32;

/// How an endpoint sends cells into its circuit.
pub(crate) enum CircuitTx {
    /// We are the client: add every hop's layer, send to the first hop.
    Client(Arc<tokio::sync::Mutex<ClientTx>>, CircId),
    /// We are the last hop: add our layer, send toward the client.
    Relay(Arc<BackSender>),
}

pub(crate) struct ClientTx {
    pub(crate) layers: ClientForward,
    pub(crate) link: Arc<Link>,
    pub(crate) circ: CircId,
}

impl CircuitTx {
    fn circ(&self) -> CircId {
        match self {
            Self::Client(_, circ) => *circ,
            Self::Relay(back) => back.circ,
        }
    }

    pub(crate) async fn send(&self, mut cell: Cell) -> Result<(), ProtoError> {
        match self {
            Self::Client(tx, _) => {
                let mut tx = tx.lock().await;
                let tx = &mut *tx;
                // Reserve first: a cancelled wait must not burn a counter value.
                let permit = tx.link.reserve().await?;
                tx.layers
                    .encrypt(cell.body_mut(), std::time::Instant::now())?;
                cell.set_circ_id(tx.circ);
                permit.send(cell);
                Ok(())
            }
            Self::Relay(back) => back.originate(cell).await,
        }
    }
}

pub(crate) enum ToApp {
    Data(Cell, usize),
    Eof,
    Reset(EndReason),
}

struct StreamEntry {
    to_app: mpsc::Sender<ToApp>,
    window: Arc<Semaphore>,
    connected: Option<oneshot::Sender<Result<(), EndReason>>>,
    /// Cancels the exit's resolve-and-connect when the stream goes away first.
    cancel: Arc<tokio::sync::Notify>,
}

struct Inner {
    streams: HashMap<StreamId, StreamEntry>,
    next_sid: u16,
    /// DATA cells written to sockets since the last circuit SENDME.
    delivered: usize,
}

/// One end of a circuit that carries streams: the client, or the exit.
pub(crate) struct Endpoint {
    tx: CircuitTx,
    circ_window: Arc<Semaphore>,
    inner: Mutex<Inner>,
    closed: AtomicBool,
    /// The node's admission policy at a relay's endpoint (which may be an
    /// exit); `None` at the client, which refuses every BEGIN.
    policy: Option<Arc<dyn RelayPolicy>>,
    limits: Limits,
    core: Option<Arc<Core>>,
    /// DATA cells waiting in stream queues. Circuit credit is returned only
    /// for cells written out (or dropped), so this never exceeds the
    /// circuit window for a peer that follows the protocol.
    queued: std::sync::atomic::AtomicUsize,
}

/// Exit connects in progress per node.
pub(crate) const MAX_EXIT_CONNECTS: usize = 256;

impl Endpoint {
    pub(crate) fn new(
        tx: CircuitTx,
        policy: Option<Arc<dyn RelayPolicy>>,
        limits: Limits,
        core: Option<Arc<Core>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tx,
            circ_window: Arc::new(Semaphore::new(FLOW.circ_window)),
            inner: Mutex::new(Inner {
                streams: HashMap::new(),
                next_sid: 1,
                delivered: 0,
            }),
            closed: AtomicBool::new(false),
            policy,
            limits,
            core,
            queued: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.inner().streams.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes every stream; the circuit is gone.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.circ_window.close();
        let streams: Vec<_> = self.inner().streams.drain().collect();
        for (_, s) in streams {
            s.window.close();
            s.cancel.notify_one();
            if let Some(c) = s.connected {
                let _ = c.send(Err(EndReason::Destroyed));
            }
            let _ = s.to_app.try_send(ToApp::Reset(EndReason::Destroyed));
        }
    }

    /// Forgets a stream. With `window`, only if the entry is still the one
    /// that window belongs to (a newer stream may reuse the id).
    fn remove_stream(&self, sid: StreamId, window: Option<&Arc<Semaphore>>) {
        let mut inner = self.inner();
        let ours = match (inner.streams.get(&sid), window) {
            (Some(s), Some(w)) => Arc::ptr_eq(&s.window, w),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if ours {
            if let Some(s) = inner.streams.remove(&sid) {
                s.window.close();
                s.cancel.notify_one();
            }
        }
    }

    /// Records `n` DATA cells written out or discarded; `queued` says
    /// whether they had been counted in the stream queues. Returns how many
    /// circuit SENDMEs are now due.
    fn delivered(&self, n: usize, queued: bool) -> usize {
        if queued {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    Some(q.saturating_sub(n))
                });
        }
        let mut inner = self.inner();
        inner.delivered += n;
        let due = inner.delivered / FLOW.circ_sendme;
        inner.delivered %= FLOW.circ_sendme;
        due
    }

    async fn send_circuit_sendmes(&self, due: usize) -> Result<(), ProtoError> {
        for _ in 0..due {
            self.send_msg(StreamId(0), &RelayMsg::Sendme).await?;
        }
        Ok(())
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
            let _ = self.send_circuit_sendmes(self.delivered(n, true)).await;
        }
    }

    async fn send_msg(&self, sid: StreamId, msg: &RelayMsg<'_>) -> Result<(), ProtoError> {
        let mut cell = Cell::new(self.tx.circ(), CellCommand::Relay);
        encode_relay(cell.relay_payload_mut(), sid, msg)?;
        self.tx.send(cell).await
    }

    /// Handles a relay message (all layers removed) for this endpoint. An
    /// error means the peer broke the protocol: destroy the circuit.
    pub(crate) async fn handle(self: &Arc<Self>, cell: Cell) -> Result<(), ProtoError> {
        let (sid, msg) = decode_relay(cell.relay_payload())?;
        match msg {
            RelayMsg::Data(d) => {
                let len = d.len();
                if self.queued.load(Ordering::Acquire) >= FLOW.circ_window {
                    return Err(ProtoError::Protocol("circuit window exceeded".into()));
                }
                let to_app = self.inner().streams.get(&sid).map(|s| s.to_app.clone());
                let accepted = match to_app {
                    Some(tx) => match tx.try_send(ToApp::Data(cell, len)) {
                        Ok(()) => {
                            self.queued.fetch_add(1, Ordering::AcqRel);
                            true
                        }
                        Err(_) => {
                            debug!("stream window exceeded; resetting the stream");
                            self.remove_stream(sid, None);
                            self.send_msg(sid, &RelayMsg::End(EndReason::Protocol))
                                .await?;
                            false
                        }
                    },
                    // A stream that already ended: drop the data.
                    None => false,
                };
                if !accepted {
                    // Discarded cells still return their circuit credit.
                    self.send_circuit_sendmes(self.delivered(1, false)).await?;
                }
            }
            RelayMsg::Sendme if sid == StreamId(0) => {
                if self.circ_window.available_permits() + FLOW.circ_sendme > FLOW.circ_window {
                    return Err(ProtoError::Protocol("circuit SENDME beyond window".into()));
                }
                self.circ_window.add_permits(FLOW.circ_sendme);
            }
            RelayMsg::Sendme => {
                let window = self.inner().streams.get(&sid).map(|s| s.window.clone());
                if let Some(w) = window {
                    if w.available_permits() + FLOW.stream_sendme > FLOW.stream_window {
                        return Err(ProtoError::Protocol("stream SENDME beyond window".into()));
                    }
                    w.add_permits(FLOW.stream_sendme);
                }
            }
            RelayMsg::End(reason) => {
                let mut inner = self.inner();
                if reason == EndReason::Done {
                    if let Some(s) = inner.streams.get(&sid) {
                        let _ = s.to_app.try_send(ToApp::Eof);
                    }
                } else if let Some(mut s) = inner.streams.remove(&sid) {
                    s.window.close();
                    s.cancel.notify_one();
                    if let Some(c) = s.connected.take() {
                        let _ = c.send(Err(reason));
                    }
                    let _ = s.to_app.try_send(ToApp::Reset(reason));
                }
            }
            RelayMsg::Connected => {
                let mut inner = self.inner();
                if let Some(c) = inner.streams.get_mut(&sid).and_then(|s| s.connected.take()) {
                    let _ = c.send(Ok(()));
                }
            }
            RelayMsg::Begin(target) => self.begin(sid, target).await?,
            RelayMsg::Drop => {}
            RelayMsg::Extend { .. } | RelayMsg::Extended { .. } => {
                return Err(ProtoError::Protocol(
                    "circuit message on a stream endpoint".into(),
                ))
            }
        }
        Ok(())
    }

    fn new_stream(
        &self,
        inner: &mut Inner,
        sid: StreamId,
        connected: Option<oneshot::Sender<Result<(), EndReason>>>,
    ) -> (
        mpsc::Receiver<ToApp>,
        Arc<Semaphore>,
        Arc<tokio::sync::Notify>,
    ) {
        let (to_app, rx) = mpsc::channel(FLOW.stream_window + 4);
        let window = Arc::new(Semaphore::new(FLOW.stream_window));
        let cancel = Arc::new(tokio::sync::Notify::new());
        inner.streams.insert(
            sid,
            StreamEntry {
                to_app,
                window: window.clone(),
                connected,
                cancel: cancel.clone(),
            },
        );
        (rx, window, cancel)
    }

    /// Exit side: a client asks for a stream.
    async fn begin(self: &Arc<Self>, sid: StreamId, target: TargetAddr) -> Result<(), ProtoError> {
        if sid == StreamId(0) {
            return Err(ProtoError::Protocol("BEGIN on stream 0".into()));
        }
        // The neighbour that sent this circuit's CREATE: the link our
        // layer sends back on.
        let (Some(policy), CircuitTx::Relay(back)) = (self.policy.clone(), &self.tx) else {
            return self
                .send_msg(sid, &RelayMsg::End(EndReason::ExitPolicy))
                .await;
        };
        let prev_peer = back.link.peer;
        let admitted = policy.admit_begin(&BeginRequest {
            prev_peer,
            target: &target,
        });
        if let Err(refusal) = admitted {
            debug!("refusing a BEGIN: {refusal}");
            if let Some(core) = &self.core {
                core.count(&core.stats.streams_refused);
            }
            return self
                .send_msg(sid, &RelayMsg::End(refusal.end_reason()))
                .await;
        }
        let opened = {
            let mut inner = self.inner();
            if inner.streams.contains_key(&sid) {
                return Err(ProtoError::Protocol("BEGIN on a stream in use".into()));
            }
            if inner.streams.len() >= self.limits.max_streams_per_circuit {
                None
            } else {
                Some(self.new_stream(&mut inner, sid, None))
            }
        };
        let Some((mut rx, window, cancel)) = opened else {
            return self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
        };
        let permit = self
            .core
            .as_ref()
            .and_then(|c| c.exit_connects.clone().try_acquire_owned().ok());
        let Some(permit) = permit else {
            self.remove_stream(sid, Some(&window));
            return self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
        };
        if let Some(core) = &self.core {
            core.count(&core.stats.exit_streams);
        }
        let ep = self.clone();
        // The whole resolve-and-connect stays well inside the client's stream
        // open timeout, so the client hears the real reason.
        let budget = self.limits.connect_timeout * 2;
        let per_addr = self.limits.connect_timeout;
        tokio::spawn(async move {
            let result = tokio::select! {
                r = tokio::time::timeout(
                    budget,
                    crate::exit::connect(&*policy, prev_peer, &target, per_addr),
                ) => {
                    r.unwrap_or(Err(EndReason::Timeout))
                }
                // The stream or circuit went away first: stop here.
                _ = cancel.notified() => Err(EndReason::Destroyed),
            };
            drop(permit);
            match result {
                Ok(tcp) => {
                    if ep.send_msg(sid, &RelayMsg::Connected).await.is_ok() {
                        pump(ep, sid, tcp, rx, window, Vec::new()).await;
                    }
                }
                Err(EndReason::Destroyed) => ep.drain(&mut rx).await,
                Err(reason) => {
                    ep.remove_stream(sid, Some(&window));
                    let _ = ep.send_msg(sid, &RelayMsg::End(reason)).await;
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
    ) -> Result<ClientStream, ProtoError> {
        if self.is_closed() {
            return Err(ProtoError::CircuitClosed);
        }
        let (tx, rx_connected) = oneshot::channel();
        let (sid, rx, window) = {
            let mut inner = self.inner();
            if inner.streams.len() >= self.limits.max_streams_per_circuit {
                return Err(ProtoError::Limit("streams per circuit"));
            }
            let mut sid = StreamId(inner.next_sid);
            while sid.0 == 0 || inner.streams.contains_key(&sid) {
                inner.next_sid = inner.next_sid.wrapping_add(1);
                sid = StreamId(inner.next_sid);
            }
            inner.next_sid = inner.next_sid.wrapping_add(1);
            let (rx, window, _) = self.new_stream(&mut inner, sid, Some(tx));
            (sid, rx, window)
        };
        let result = async {
            self.send_msg(sid, &RelayMsg::Begin(target.clone())).await?;
            match tokio::time::timeout(self.limits.stream_open_timeout, rx_connected).await {
                Err(_) => Err(ProtoError::Timeout("stream open")),
                Ok(Err(_)) => Err(ProtoError::CircuitClosed),
                Ok(Ok(Err(reason))) => Err(ProtoError::StreamRefused(reason)),
                Ok(Ok(Ok(()))) => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            self.remove_stream(sid, Some(&window));
            if !matches!(e, ProtoError::StreamRefused(_) | ProtoError::CircuitClosed) {
                // Tell the exit to give up too, so it frees the stream.
                let _ = self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
            }
            return Err(e);
        }
        Ok(ClientStream {
            open: Some(OpenStream {
                endpoint: self.clone(),
                sid,
                rx,
                window,
            }),
        })
    }
}

struct OpenStream {
    endpoint: Arc<Endpoint>,
    sid: StreamId,
    rx: mpsc::Receiver<ToApp>,
    window: Arc<Semaphore>,
}

/// An open stream on a client circuit, ready to be joined to a socket.
/// Dropping it without [`ClientStream::run`] ends the stream at the exit.
pub struct ClientStream {
    open: Option<OpenStream>,
}

impl ClientStream {
    /// Carries bytes between `tcp` and the stream until both directions have
    /// ended. `initial` is sent first (bytes the application sent early).
    pub async fn run(mut self, tcp: TcpStream, initial: Vec<u8>) {
        if let Some(s) = self.open.take() {
            pump(s.endpoint, s.sid, tcp, s.rx, s.window, initial).await;
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let Some(mut s) = self.open.take() else {
            return;
        };
        s.endpoint.remove_stream(s.sid, Some(&s.window));
        // Once per abandoned stream, not per cell: end it at the exit and
        // return the credit of anything that arrived meanwhile.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = s
                    .endpoint
                    .send_msg(s.sid, &RelayMsg::End(EndReason::Misc))
                    .await;
                s.endpoint.drain(&mut s.rx).await;
            });
        }
    }
}

/// Joins a TCP socket and a stream: both directions, half-close aware.
async fn pump(
    ep: Arc<Endpoint>,
    sid: StreamId,
    tcp: TcpStream,
    mut rx: mpsc::Receiver<ToApp>,
    window: Arc<Semaphore>,
    initial: Vec<u8>,
) {
    let _ = tcp.set_nodelay(true);
    let own_window = window.clone();
    let (rd, mut wr) = tcp.into_split();
    let up_ep = ep.clone();
    let mut up = tokio::spawn(async move { upstream(up_ep, sid, rd, window, initial).await });
    let down = downstream(&ep, sid, &own_window, &mut wr, &mut rx).await;
    if down {
        let _ = (&mut up).await;
    } else {
        up.abort();
    }
    ep.remove_stream(sid, Some(&own_window));
    ep.drain(&mut rx).await;
}

/// Socket to circuit. Ends the stream's outbound direction with END(Done) on
/// EOF, or resets the stream on a socket error.
async fn upstream(
    ep: Arc<Endpoint>,
    sid: StreamId,
    mut rd: OwnedReadHalf,
    window: Arc<Semaphore>,
    initial: Vec<u8>,
) {
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
                    ep.remove_stream(sid, Some(&window));
                    let _ = ep.send_msg(sid, &RelayMsg::End(EndReason::Reset)).await;
                    return;
                }
            },
        };
        if n == 0 && !from_initial {
            let _ = ep.send_msg(sid, &RelayMsg::End(EndReason::Done)).await;
            return;
        }
        for chunk in buf[..n].chunks(RELAY_DATA_MAX) {
            let (Ok(w), Ok(c)) = (window.acquire().await, ep.circ_window.acquire().await) else {
                return; // stream or circuit closed
            };
            w.forget();
            c.forget();
            let mut cell = Cell::new(ep.tx.circ(), CellCommand::Relay);
            let payload = cell.relay_payload_mut();
            payload[RELAY_HEADER_LEN..RELAY_HEADER_LEN + chunk.len()].copy_from_slice(chunk);
            if encode_data_in_place(payload, sid, chunk.len()).is_err()
                || ep.tx.send(cell).await.is_err()
            {
                return;
            }
        }
    }
}

/// Circuit to socket. Returns true on an orderly end (END(Done) seen and the
/// socket's write side shut down), false on a reset.
async fn downstream(
    ep: &Endpoint,
    sid: StreamId,
    window: &Arc<Semaphore>,
    wr: &mut OwnedWriteHalf,
    rx: &mut mpsc::Receiver<ToApp>,
) -> bool {
    let mut out = Vec::with_capacity(IO_BATCH * RELAY_DATA_MAX);
    let mut delivered = 0usize;
    loop {
        let Some(first) = rx.recv().await else {
            return false;
        };
        out.clear();
        let mut cells = 0usize;
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
            if cells < IO_BATCH {
                item = rx.try_recv().ok();
            }
        }
        if cells > 0 {
            let written = if out.is_empty() {
                Ok(())
            } else {
                wr.write_all(&out).await
            };
            // Written or discarded, these cells return their circuit credit.
            let due = ep.delivered(cells, true);
            if let Err(e) = written {
                debug!("stream socket write failed: {e}");
                ep.remove_stream(sid, Some(window));
                let _ = ep.send_msg(sid, &RelayMsg::End(EndReason::Reset)).await;
                let _ = ep.send_circuit_sendmes(due).await;
                return false;
            }
            if ep.send_circuit_sendmes(due).await.is_err() {
                return false;
            }
            delivered += cells;
            while delivered >= FLOW.stream_sendme {
                delivered -= FLOW.stream_sendme;
                if ep.send_msg(sid, &RelayMsg::Sendme).await.is_err() {
                    return false;
                }
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
