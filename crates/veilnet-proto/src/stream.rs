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

use crate::core::{Core, ExitConfig, Limits};
use crate::link::Link;
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
                tx.layers.encrypt(cell.body_mut())?;
                cell.set_circ_id(tx.circ);
                tx.link.send(cell).await
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
}

struct Inner {
    streams: HashMap<StreamId, StreamEntry>,
    next_sid: u16,
    received: usize,
}

/// One end of a circuit that carries streams: the client, or the exit.
pub(crate) struct Endpoint {
    tx: CircuitTx,
    circ_window: Arc<Semaphore>,
    inner: Mutex<Inner>,
    closed: AtomicBool,
    exit: Option<ExitConfig>,
    limits: Limits,
    core: Option<Arc<Core>>,
}

impl Endpoint {
    pub(crate) fn new(
        tx: CircuitTx,
        exit: Option<ExitConfig>,
        limits: Limits,
        core: Option<Arc<Core>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tx,
            circ_window: Arc::new(Semaphore::new(FLOW.circ_window)),
            inner: Mutex::new(Inner {
                streams: HashMap::new(),
                next_sid: 1,
                received: 0,
            }),
            closed: AtomicBool::new(false),
            exit,
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
        self.circ_window.close();
        let streams: Vec<_> = self.inner().streams.drain().collect();
        for (_, s) in streams {
            s.window.close();
            if let Some(c) = s.connected {
                let _ = c.send(Err(EndReason::Destroyed));
            }
            let _ = s.to_app.try_send(ToApp::Reset(EndReason::Destroyed));
        }
    }

    fn remove_stream(&self, sid: StreamId) {
        if let Some(s) = self.inner().streams.remove(&sid) {
            s.window.close();
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
                let (to_app, sendme) = {
                    let mut inner = self.inner();
                    inner.received += 1;
                    let sendme = inner.received >= FLOW.circ_sendme;
                    if sendme {
                        inner.received -= FLOW.circ_sendme;
                    }
                    (inner.streams.get(&sid).map(|s| s.to_app.clone()), sendme)
                };
                if let Some(tx) = to_app {
                    if tx.try_send(ToApp::Data(cell, len)).is_err() {
                        debug!("stream window exceeded; resetting the stream");
                        self.remove_stream(sid);
                        self.send_msg(sid, &RelayMsg::End(EndReason::Protocol))
                            .await?;
                    }
                }
                if sendme {
                    self.send_msg(StreamId(0), &RelayMsg::Sendme).await?;
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
    ) -> (mpsc::Receiver<ToApp>, Arc<Semaphore>) {
        let (to_app, rx) = mpsc::channel(FLOW.stream_window + 4);
        let window = Arc::new(Semaphore::new(FLOW.stream_window));
        inner.streams.insert(
            sid,
            StreamEntry {
                to_app,
                window: window.clone(),
                connected,
            },
        );
        (rx, window)
    }

    /// Exit side: a client asks for a stream.
    async fn begin(self: &Arc<Self>, sid: StreamId, target: TargetAddr) -> Result<(), ProtoError> {
        if sid == StreamId(0) {
            return Err(ProtoError::Protocol("BEGIN on stream 0".into()));
        }
        let Some(exit) = self.exit.clone() else {
            return self
                .send_msg(sid, &RelayMsg::End(EndReason::ExitPolicy))
                .await;
        };
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
        let Some((rx, window)) = opened else {
            return self.send_msg(sid, &RelayMsg::End(EndReason::Misc)).await;
        };
        if let Some(core) = &self.core {
            core.count(&core.stats.exit_streams);
        }
        let ep = self.clone();
        let connect_timeout = self.limits.connect_timeout;
        tokio::spawn(async move {
            match crate::exit::connect(&exit, &target, connect_timeout).await {
                Ok(tcp) => {
                    if ep.send_msg(sid, &RelayMsg::Connected).await.is_ok() {
                        pump(ep, sid, tcp, rx, window, Vec::new()).await;
                    }
                }
                Err(reason) => {
                    ep.remove_stream(sid);
                    let _ = ep.send_msg(sid, &RelayMsg::End(reason)).await;
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
            let (rx, window) = self.new_stream(&mut inner, sid, Some(tx));
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
            self.remove_stream(sid);
            return Err(e);
        }
        Ok(ClientStream {
            endpoint: self.clone(),
            sid,
            rx,
            window,
        })
    }
}

/// An open stream on a client circuit, ready to be joined to a socket.
pub struct ClientStream {
    endpoint: Arc<Endpoint>,
    sid: StreamId,
    rx: mpsc::Receiver<ToApp>,
    window: Arc<Semaphore>,
}

impl ClientStream {
    /// Carries bytes between `tcp` and the stream until both directions have
    /// ended. `initial` is sent first (bytes the application sent early).
    pub async fn run(self, tcp: TcpStream, initial: Vec<u8>) {
        pump(self.endpoint, self.sid, tcp, self.rx, self.window, initial).await;
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
    let (rd, mut wr) = tcp.into_split();
    let up_ep = ep.clone();
    let mut up = tokio::spawn(async move { upstream(up_ep, sid, rd, window, initial).await });
    let down = downstream(&ep, sid, &mut wr, &mut rx).await;
    if down {
        let _ = (&mut up).await;
    } else {
        up.abort();
    }
    ep.remove_stream(sid);
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
                    ep.remove_stream(sid);
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
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                debug!("stream socket write failed: {e}");
                ep.remove_stream(sid);
                let _ = ep.send_msg(sid, &RelayMsg::End(EndReason::Reset)).await;
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
