//! Streams: the endpoint shared by the client and the exit, flow control and
//! the pumps between a TCP socket and cells.
//!
//! Flow control is by credit, as in Tor, with the windows of
//! `veilnet-circuit::flow` (parameters per circuit, [`FlowParams`]): a sender
//! may have at most `stream_window` unacknowledged DATA cells per stream and
//! `circ_window` per circuit. The receiver returns credit once cells are
//! *written* to the application socket or discarded (so a slow reader
//! stalls its sender instead of growing our memory). A peer that sends
//! beyond a window, or returns more credit than it was owed, breaks the
//! protocol and loses the circuit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;
use veilnet_cell::{
    decode_relay, encode_data_in_place, encode_relay, Cell, CellCommand, CircId, EndReason,
    RelayMsg, StreamId, TargetAddr, RELAY_DATA_MAX, RELAY_HEADER_LEN,
};
use veilnet_crypto::onion::ClientForward;

use crate::core::{Core, Limits};
use crate::link::Link;
use crate::relay::BackSender;
use crate::ProtoError;
use veilnet_circuit::policy::{BeginRequest, RelayPolicy};
use veilnet_circuit::{CircuitError, FlowParams, PeerMisbehaved, RecvWindow, SendWindow};

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
                let command = cell.command()?;
                let permit = tx.link.reserve().await?;
                tx.layers
                    .encrypt(cell.body_mut(), command, std::time::Instant::now())?;
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

/// What a stream's pumps share with the endpoint: the stream's identity
/// (a newer stream may reuse the id; `Arc::ptr_eq` tells them apart) and
/// the wakeup for send credit.
pub(crate) struct StreamShared {
    credit: Notify,
}

struct StreamEntry {
    to_app: mpsc::Sender<ToApp>,
    shared: Arc<StreamShared>,
    send: SendWindow,
    recv: RecvWindow,
    /// END(Done) arrived: the peer sends nothing more on this stream.
    eof_seen: bool,
    connected: Option<oneshot::Sender<Result<(), EndReason>>>,
    /// Cancels the exit's resolve-and-connect when the stream goes away first.
    cancel: Arc<tokio::sync::Notify>,
}

struct Inner {
    streams: HashMap<StreamId, StreamEntry>,
    next_sid: u16,
    circ_send: SendWindow,
    circ_recv: RecvWindow,
}

/// What the upstream pump may do with its next cell.
enum Credit {
    Taken,
    Wait,
    Gone,
}

/// One end of a circuit that carries streams: the client, or the exit.
pub(crate) struct Endpoint {
    tx: CircuitTx,
    inner: Mutex<Inner>,
    /// Wakes upstream pumps waiting for circuit credit.
    circ_credit: Notify,
    flow: FlowParams,
    closed: AtomicBool,
    /// The node's admission policy at a relay's endpoint (which may be an
    /// exit); `None` at the client, which refuses every BEGIN.
    policy: Option<Arc<dyn RelayPolicy>>,
    limits: Limits,
    core: Option<Arc<Core>>,
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
        let flow = limits.flow;
        Arc::new(Self {
            tx,
            inner: Mutex::new(Inner {
                streams: HashMap::new(),
                next_sid: 1,
                circ_send: flow.circ_send(),
                circ_recv: flow.circ_recv(),
            }),
            circ_credit: Notify::new(),
            flow,
            closed: AtomicBool::new(false),
            policy,
            limits,
            core,
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
        self.circ_credit.notify_waiters();
        let streams: Vec<_> = self.inner().streams.drain().collect();
        for (_, s) in streams {
            s.shared.credit.notify_one();
            s.cancel.notify_one();
            if let Some(c) = s.connected {
                let _ = c.send(Err(EndReason::Destroyed));
            }
            let _ = s.to_app.try_send(ToApp::Reset(EndReason::Destroyed));
        }
    }

    /// Forgets a stream. With `shared`, only if the entry is still the one
    /// those pumps belong to (a newer stream may reuse the id).
    fn remove_stream(&self, sid: StreamId, shared: Option<&Arc<StreamShared>>) {
        let mut inner = self.inner();
        let ours = match (inner.streams.get(&sid), shared) {
            (Some(s), Some(w)) => Arc::ptr_eq(&s.shared, w),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if ours {
            if let Some(s) = inner.streams.remove(&sid) {
                s.shared.credit.notify_one();
                s.cancel.notify_one();
            }
        }
    }

    /// Records `n` DATA cells written out or discarded, of stream `sid`
    /// (still the one `shared` belongs to) or of no stream. Returns how many
    /// stream and circuit SENDMEs are now due.
    fn delivered(&self, stream: Option<(StreamId, &Arc<StreamShared>)>, n: u32) -> (u32, u32) {
        let mut inner = self.inner();
        let circ = inner.circ_recv.delivered(n);
        let stream = stream
            .and_then(|(sid, shared)| {
                inner
                    .streams
                    .get_mut(&sid)
                    .filter(|s| Arc::ptr_eq(&s.shared, shared))
            })
            .map_or(0, |s| s.recv.delivered(n));
        (stream, circ)
    }

    /// Sends the SENDMEs `delivered` said are due.
    async fn send_sendmes(
        &self,
        sid: StreamId,
        (stream, circ): (u32, u32),
    ) -> Result<(), ProtoError> {
        for _ in 0..circ {
            self.send_msg(StreamId(0), &RelayMsg::Sendme).await?;
        }
        for _ in 0..stream {
            self.send_msg(sid, &RelayMsg::Sendme).await?;
        }
        Ok(())
    }

    /// One cell of send credit from both the stream's and the circuit's
    /// window.
    fn try_take_credit(&self, sid: StreamId, shared: &Arc<StreamShared>) -> Credit {
        let mut inner = self.inner();
        let Inner {
            streams, circ_send, ..
        } = &mut *inner;
        match streams
            .get_mut(&sid)
            .filter(|s| Arc::ptr_eq(&s.shared, shared))
        {
            _ if self.is_closed() => Credit::Gone,
            None => Credit::Gone,
            Some(s) if s.send.available() > 0 && circ_send.available() > 0 => {
                s.send.try_take();
                circ_send.try_take();
                Credit::Taken
            }
            Some(_) => Credit::Wait,
        }
    }

    /// Gives back the credit of a cell that was never sent.
    fn refund_credit(&self, sid: StreamId, shared: &Arc<StreamShared>) {
        let mut inner = self.inner();
        inner.circ_send.refund();
        if let Some(s) = inner
            .streams
            .get_mut(&sid)
            .filter(|s| Arc::ptr_eq(&s.shared, shared))
        {
            s.send.refund();
        }
        drop(inner);
        self.circ_credit.notify_waiters();
    }

    /// Waits for one cell of send credit; false once the stream or the
    /// circuit is gone.
    async fn take_credit(&self, sid: StreamId, shared: &Arc<StreamShared>) -> bool {
        loop {
            match self.try_take_credit(sid, shared) {
                Credit::Taken => return true,
                Credit::Gone => return false,
                Credit::Wait => {}
            }
            // Register for both wakeups, then look again: a SENDME that came
            // in between is not missed.
            let circ = self.circ_credit.notified();
            let stream = shared.credit.notified();
            tokio::pin!(circ, stream);
            circ.as_mut().enable();
            stream.as_mut().enable();
            match self.try_take_credit(sid, shared) {
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
            let due = self.delivered(None, n);
            let _ = self.send_sendmes(StreamId(0), due).await;
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
                // The circuit window first: a peer beyond it loses the circuit.
                let to_app = {
                    let mut inner = self.inner();
                    inner.circ_recv.take().map_err(CircuitError::from)?;
                    inner.streams.get_mut(&sid).map(|s| {
                        if s.eof_seen {
                            return Err(PeerMisbehaved::Unexpected("DATA after END"));
                        }
                        s.recv.take().map(|()| s.to_app.clone())
                    })
                };
                let accepted = match to_app {
                    // The stream queue holds a whole stream window, so only
                    // a stream whose pump already ended refuses the cell.
                    Some(Ok(tx)) => tx.try_send(ToApp::Data(cell, len)).is_ok(),
                    Some(Err(e)) => {
                        debug!("resetting a stream: {e}");
                        self.remove_stream(sid, None);
                        self.send_msg(sid, &RelayMsg::End(EndReason::Protocol))
                            .await?;
                        false
                    }
                    // A stream that already ended: drop the data.
                    None => false,
                };
                if !accepted {
                    // Discarded cells still return their circuit credit.
                    let due = self.delivered(None, 1);
                    self.send_sendmes(sid, due).await?;
                }
            }
            RelayMsg::Sendme if sid == StreamId(0) => {
                self.inner().circ_send.put().map_err(CircuitError::from)?;
                self.circ_credit.notify_waiters();
            }
            RelayMsg::Sendme => {
                let mut inner = self.inner();
                if let Some(s) = inner.streams.get_mut(&sid) {
                    s.send.put().map_err(CircuitError::from)?;
                    s.shared.credit.notify_one();
                }
            }
            RelayMsg::End(reason) => {
                let mut inner = self.inner();
                if reason == EndReason::Done {
                    // Once: a repeated END(Done) must not fill the queue.
                    if let Some(s) = inner.streams.get_mut(&sid).filter(|s| !s.eof_seen) {
                        s.eof_seen = true;
                        let _ = s.to_app.try_send(ToApp::Eof);
                    }
                } else if let Some(mut s) = inner.streams.remove(&sid) {
                    s.shared.credit.notify_one();
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
        Arc<StreamShared>,
        Arc<tokio::sync::Notify>,
    ) {
        // Room for a whole stream window and the END after it: the receive
        // window, not the queue, is what refuses a peer that sends too much.
        let (to_app, rx) = mpsc::channel(self.flow.stream_window as usize + 4);
        let shared = Arc::new(StreamShared {
            credit: Notify::new(),
        });
        let cancel = Arc::new(tokio::sync::Notify::new());
        inner.streams.insert(
            sid,
            StreamEntry {
                to_app,
                shared: shared.clone(),
                send: self.flow.stream_send(),
                recv: self.flow.stream_recv(),
                eof_seen: false,
                connected,
                cancel: cancel.clone(),
            },
        );
        (rx, shared, cancel)
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
        let Some((mut rx, shared, cancel)) = opened else {
            return self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
        };
        let permit = self
            .core
            .as_ref()
            .and_then(|c| c.exit_connects.clone().try_acquire_owned().ok());
        let Some(permit) = permit else {
            self.remove_stream(sid, Some(&shared));
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
                        pump(ep, sid, tcp, rx, shared, Vec::new()).await;
                    }
                }
                Err(EndReason::Destroyed) => ep.drain(&mut rx).await,
                Err(reason) => {
                    ep.remove_stream(sid, Some(&shared));
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
        let (sid, mut rx, shared) = {
            let mut inner = self.inner();
            // Under the lock: a close() that ran since the check above has
            // drained the table, and a stream added now would wait in vain.
            if self.is_closed() {
                return Err(ProtoError::CircuitClosed);
            }
            if inner.streams.len() >= self.limits.max_streams_per_circuit {
                return Err(ProtoError::Limit("streams per circuit"));
            }
            let mut sid = StreamId(inner.next_sid);
            while sid.0 == 0 || inner.streams.contains_key(&sid) {
                inner.next_sid = inner.next_sid.wrapping_add(1);
                sid = StreamId(inner.next_sid);
            }
            inner.next_sid = inner.next_sid.wrapping_add(1);
            let (rx, shared, _) = self.new_stream(&mut inner, sid, Some(tx));
            (sid, rx, shared)
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
            self.remove_stream(sid, Some(&shared));
            if !matches!(e, ProtoError::StreamRefused(_) | ProtoError::CircuitClosed) {
                // Tell the exit to give up too, so it frees the stream.
                let _ = self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
            }
            // Whatever arrived meanwhile returns its circuit credit.
            self.drain(&mut rx).await;
            return Err(e);
        }
        Ok(ClientStream {
            open: Some(OpenStream {
                endpoint: self.clone(),
                sid,
                rx,
                shared,
            }),
        })
    }
}

struct OpenStream {
    endpoint: Arc<Endpoint>,
    sid: StreamId,
    rx: mpsc::Receiver<ToApp>,
    shared: Arc<StreamShared>,
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
            pump(s.endpoint, s.sid, tcp, s.rx, s.shared, initial).await;
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let Some(mut s) = self.open.take() else {
            return;
        };
        s.endpoint.remove_stream(s.sid, Some(&s.shared));
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
    shared: Arc<StreamShared>,
    initial: Vec<u8>,
) {
    let _ = tcp.set_nodelay(true);
    let own = shared.clone();
    let (rd, mut wr) = tcp.into_split();
    let up_ep = ep.clone();
    let mut up = tokio::spawn(async move { upstream(up_ep, sid, rd, shared, initial).await });
    let down = downstream(&ep, sid, &own, &mut wr, &mut rx).await;
    if down {
        let _ = (&mut up).await;
    } else {
        up.abort();
    }
    ep.remove_stream(sid, Some(&own));
    ep.drain(&mut rx).await;
}

/// Socket to circuit. Ends the stream's outbound direction with END(Done) on
/// EOF, or resets the stream on a socket error.
async fn upstream(
    ep: Arc<Endpoint>,
    sid: StreamId,
    mut rd: OwnedReadHalf,
    shared: Arc<StreamShared>,
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
                    ep.remove_stream(sid, Some(&shared));
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
            if !ep.take_credit(sid, &shared).await {
                return; // stream or circuit closed
            }
            // Until the cell is queued, the credit is ours to give back:
            // this pump may be aborted while it waits for the link.
            let credit = TakenCredit {
                ep: &ep,
                sid,
                shared: &shared,
            };
            let mut cell = Cell::new(ep.tx.circ(), CellCommand::Relay);
            let payload = cell.relay_payload_mut();
            payload[RELAY_HEADER_LEN..RELAY_HEADER_LEN + chunk.len()].copy_from_slice(chunk);
            if encode_data_in_place(payload, sid, chunk.len()).is_err()
                || ep.tx.send(cell).await.is_err()
            {
                return;
            }
            std::mem::forget(credit);
        }
    }
}

/// One cell of send credit taken for a cell not yet queued: dropped without
/// being forgotten (the send failed, or the pump was aborted while it
/// waited), it gives the credit back, so a circuit never loses credit for a
/// cell its peer never saw.
struct TakenCredit<'a> {
    ep: &'a Endpoint,
    sid: StreamId,
    shared: &'a Arc<StreamShared>,
}

impl Drop for TakenCredit<'_> {
    fn drop(&mut self) {
        self.ep.refund_credit(self.sid, self.shared);
    }
}

/// Circuit to socket. Returns true on an orderly end (END(Done) seen and the
/// socket's write side shut down), false on a reset.
async fn downstream(
    ep: &Endpoint,
    sid: StreamId,
    shared: &Arc<StreamShared>,
    wr: &mut OwnedWriteHalf,
    rx: &mut mpsc::Receiver<ToApp>,
) -> bool {
    let mut out = Vec::with_capacity(IO_BATCH * RELAY_DATA_MAX);
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
            if let Err(e) = written {
                debug!("stream socket write failed: {e}");
                ep.remove_stream(sid, Some(shared));
                let _ = ep.send_msg(sid, &RelayMsg::End(EndReason::Reset)).await;
                // Discarded, these cells still return their circuit credit.
                let due = ep.delivered(None, cells as u32);
                let _ = ep.send_sendmes(sid, due).await;
                return false;
            }
            // Written out: the stream's and the circuit's credit come back.
            let due = ep.delivered(Some((sid, shared)), cells as u32);
            if ep.send_sendmes(sid, due).await.is_err() {
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
