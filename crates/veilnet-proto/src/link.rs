//! Links: one authenticated, encrypted TCP connection per neighbour, and
//! what its circuit table holds: the circuits we relay, our own circuits as
//! a client, and the senders that add our layers to their cells.
//!
//! The link's reader hands every cell to a [`LinkHandler`] (the engine);
//! this module knows nothing of what the engine does with it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;
use veilnet_cell::{Cell, CircId, CELL_LEN};
use veilnet_crypto::link::{
    LinkHandshake, LinkSession, RecordOpener, RecordSealer, MAX_BATCH, RECORD_HEADER_LEN,
};

use veilnet_circuit::relay::RelayHop;
use veilnet_circuit::{PeerMisbehaved, Role};
use veilnet_crypto::onion::{ClientBackward, ClientForward, RelayBackward};
use veilnet_crypto::RekeyPolicy;

use crate::rate::RelayBuckets;
use crate::stream::{CircuitSender, Endpoint};
use crate::ProtoError;

/// Where a link's reader takes the cells that arrive, and says it closed.
pub(crate) trait LinkHandler: Send + Sync + 'static {
    /// One cell that arrived on `link`, in order; `now` is read once per
    /// link record (the time the cell's backward layer goes by for its key
    /// age).
    fn handle_cell(
        self: &Arc<Self>,
        link: &Arc<Link>,
        cell: Cell,
        now: Instant,
    ) -> impl Future<Output = ()> + Send;
    /// The link is gone: tear down its circuits.
    fn link_closed(self: &Arc<Self>, link: &Arc<Link>);
}

/// The stream endpoint of a circuit this node ends, as client or last hop.
pub(crate) type StreamEndpoint = Endpoint<CircuitTx>;

/// Observes every byte a link writes to its socket (tests use it to prove
/// that no plaintext crosses a link).
pub type LinkTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Time allowed for a link handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A send queue that stays full this long means the peer stopped reading.
const SEND_STALL: Duration = Duration::from_secs(10);
/// A socket write that makes no progress this long means the same.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Once a record's header has arrived, the rest of it must follow within
/// this time: a peer cannot hold the reader (and the link's slot) with a
/// record it never finishes.
const RECORD_STALL: Duration = Duration::from_secs(30);

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

/// One link to a neighbour.
pub struct Link {
    /// The authenticated neighbour.
    pub peer: PeerId,
    /// Process-unique id of this link.
    pub id: u64,
    initiator: bool,
    tx: mpsc::Sender<Cell>,
    circuits: Mutex<HashMap<CircId, CircEntry>>,
    closed: AtomicBool,
    shutdown: Notify,
    /// Since when the link has carried no circuit (checked by housekeeping).
    idle_since: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Whether we opened this link.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Queues a cell for sending; waits while the queue is full.
    pub async fn send(&self, cell: Cell) -> Result<(), ProtoError> {
        self.reserve().await?.send(cell);
        Ok(())
    }

    /// Waits for room in the send queue. Callers that encrypt with a counter
    /// reserve first and encrypt after, so a cancelled wait never burns a
    /// counter value. A queue that stays full for [`SEND_STALL`] means the
    /// peer stopped reading: the link is closed rather than letting it stall
    /// every other link that forwards into it.
    pub(crate) async fn reserve(&self) -> Result<mpsc::Permit<'_, Cell>, ProtoError> {
        if self.is_closed() {
            return Err(ProtoError::LinkClosed);
        }
        // The common case: room in the queue, and no stall timer armed (its
        // deadline would cost a clock read per cell). The task budget is
        // spent as `reserve` would spend it: without that, a link reader
        // that forwards many cells never yields, the queue grows to
        // thousands of cells and they go cold in the cache before the
        // writer seals them (measured on the in-process testnet: ~100
        // against ~170 MB/s for one stream).
        tokio::task::coop::consume_budget().await;
        match self.tx.try_reserve() {
            Ok(permit) => return Ok(permit),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(ProtoError::LinkClosed),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        match tokio::time::timeout(SEND_STALL, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ProtoError::LinkClosed),
            Err(_) => {
                debug!(link = self.id, "link send queue stalled; closing the link");
                self.close();
                Err(ProtoError::LinkClosed)
            }
        }
    }

    /// Sends a cell from synchronous code without waiting (teardown paths).
    /// Best effort: if the queue is full the cell is dropped; the stalled
    /// link will be closed anyway.
    pub(crate) fn send_detached(&self, cell: Cell) {
        if self.tx.try_send(cell).is_err() {
            debug!(link = self.id, "send queue full; dropping a teardown cell");
        }
    }

    /// True once the link has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the link: both tasks stop, wherever they are waiting.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Wake both tasks if they wait now, and leave a permit for one that
        // is busy; each task calls `close` again as it ends, which leaves a
        // permit for the other.
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, HashMap<CircId, CircEntry>> {
        // A poisoned lock means a panic elsewhere; the table itself is still consistent
        // because every critical section is a single map operation.
        self.circuits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if we opened this link. Only a link's initiator creates
    /// circuits on it; see `Core::on_create`.
    pub(crate) fn we_initiated(&self) -> bool {
        self.initiator
    }

    /// Picks a free circuit id (the link initiator's ids have the top bit set)
    /// and installs `entry` under it.
    pub(crate) fn alloc_circuit(&self, entry: CircEntry, max: usize) -> Result<CircId, ProtoError> {
        let mut table = self.table();
        if table.len() >= max {
            return Err(ProtoError::Limit("circuits per link"));
        }
        loop {
            let raw = rand::random::<u32>() & 0x7fff_ffff;
            let raw = if self.initiator {
                raw | 0x8000_0000
            } else {
                raw
            };
            if let Some(id) = CircId::new(raw) {
                if let std::collections::hash_map::Entry::Vacant(v) = table.entry(id) {
                    v.insert(entry);
                    return Ok(id);
                }
            }
        }
    }

    /// Number of circuits using this link.
    pub fn circuit_count(&self) -> usize {
        self.table().len()
    }

    /// Notes whether the link carries circuits; true once it has carried
    /// none for `limit` (the caller then closes it).
    pub(crate) fn idle_for(&self, limit: Duration) -> bool {
        let empty = self.circuit_count() == 0;
        let mut since = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        match (*since, empty) {
            (_, false) => {
                *since = None;
                false
            }
            (None, true) => {
                *since = Some(std::time::Instant::now());
                false
            }
            (Some(t), true) => t.elapsed() >= limit,
        }
    }
}

/// Runs the link handshake over any byte stream.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: LinkHandshake,
    tap: Option<&LinkTap>,
) -> Result<LinkSession, ProtoError> {
    let mut buf = vec![0u8; veilnet_crypto::link::MAX_HANDSHAKE_MSG];
    while !hs.is_finished() {
        if hs.wants_write() {
            let msg = hs.write_message()?;
            if let Some(tap) = tap {
                tap(&msg);
            }
            stream.write_all(&msg).await?;
        } else {
            let mut prefix = [0u8; 2];
            stream.read_exact(&mut prefix).await?;
            let n = LinkHandshake::frame_len(prefix)?;
            stream.read_exact(&mut buf[..n]).await?;
            hs.read_message(&buf[..n])?;
        }
    }
    Ok(hs.finish()?)
}

/// How a link runs: its send queue, when it rekeys, and the test tap.
pub(crate) struct LinkSettings {
    pub(crate) queue: usize,
    pub(crate) rekey: RekeyPolicy,
    pub(crate) tap: Option<LinkTap>,
    /// The relay's bandwidth buckets, for a link that carries relayed
    /// traffic (`None`: not limited).
    pub(crate) rate: Option<Arc<RelayBuckets>>,
}

/// Starts the reader and writer tasks of an authenticated link; the reader
/// hands its cells to `handler`.
pub(crate) fn start<H: LinkHandler>(
    handler: &Arc<H>,
    stream: TcpStream,
    session: LinkSession,
    initiator: bool,
    settings: LinkSettings,
) -> Arc<Link> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(settings.queue);
    let link = Arc::new(Link {
        peer: session.remote_peer,
        id: NEXT_LINK_ID.fetch_add(1, Ordering::Relaxed),
        initiator,
        tx,
        circuits: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
        shutdown: Notify::new(),
        idle_since: Mutex::new(None),
    });
    let mut sealer = session.sealer;
    sealer.set_rekey_policy(settings.rekey);
    let rate = settings.rate;
    tokio::spawn(write_loop(
        link.clone(),
        wr,
        rx,
        sealer,
        settings.tap,
        rate.clone(),
    ));
    tokio::spawn(read_loop(
        handler.clone(),
        link.clone(),
        rd,
        session.opener,
        rate,
    ));
    link
}

async fn write_loop(
    link: Arc<Link>,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Cell>,
    mut sealer: RecordSealer,
    tap: Option<LinkTap>,
    rate: Option<Arc<RelayBuckets>>,
) {
    let mut buf = Vec::with_capacity(RecordSealer::record_len(MAX_BATCH));
    loop {
        let first = tokio::select! {
            c = rx.recv() => c,
            _ = link.shutdown.notified() => None,
        };
        let Some(first) = first else { break };
        if rx.is_empty() {
            // Let the tasks feeding this link run once before we write, so
            // one record and one syscall carry more cells.
            tokio::task::yield_now().await;
        }
        buf.clear();
        buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        buf.extend_from_slice(first.as_bytes());
        let mut n = 1;
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => {
                    buf.extend_from_slice(c.as_bytes());
                    n += 1;
                }
                Err(_) => break,
            }
        }
        buf.extend_from_slice(&[0u8; 16]);
        // tokio's clock (the real one outside paused-time tests) drives
        // the sealer's key age and the write deadline: one read per record.
        let now = tokio::time::Instant::now();
        if let Err(e) = sealer.seal(&mut buf, now.into_std()) {
            debug!(link = link.id, "cannot seal record: {e}");
            break;
        }
        if let Some(tap) = &tap {
            tap(&buf);
        }
        if let Some(rate) = &rate {
            // Waiting for tokens is not a stalled peer: the deadline
            // starts after.
            rate.write(buf.len()).await;
        }
        let now = tokio::time::Instant::now();
        match tokio::time::timeout_at(now + WRITE_STALL, wr.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(link = link.id, "link write failed: {e}");
                break;
            }
            Err(_) => {
                debug!(link = link.id, "link write stalled; closing the link");
                break;
            }
        }
    }
    link.close();
    let _ = wr.shutdown().await;
}

/// The receiving half of a link socket: records are read straight into one
/// buffer and opened where they lie (no second copy through a `BufReader`);
/// one read often brings several records.
struct RecordReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not yet consumed.
    start: usize,
    end: usize,
}

impl RecordReader {
    fn new(rd: OwnedReadHalf) -> Self {
        Self {
            rd,
            buf: vec![0u8; 4 * RecordSealer::record_len(MAX_BATCH)],
            start: 0,
            end: 0,
        }
    }

    /// Reads until `need` bytes (at most one record) are buffered; false if
    /// the link was shut down meanwhile.
    async fn fill(&mut self, need: usize, link: &Link) -> Result<bool, ProtoError> {
        while self.end - self.start < need {
            if self.buf.len() - self.start < need {
                // What is buffered does not leave room behind it: move it
                // (less than one record) to the front.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = tokio::select! {
                r = self.rd.read(&mut self.buf[self.end..]) => r?,
                _ = link.shutdown.notified() => return Ok(false),
            };
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            self.end += n;
        }
        Ok(true)
    }

    /// Bytes read and not yet consumed.
    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Consumes the next `n` buffered bytes.
    fn take(&mut self, n: usize) -> &mut [u8] {
        let at = self.start;
        self.start += n;
        if self.start == self.end {
            // Nothing left: the next read starts at the front again.
            (self.start, self.end) = (0, 0);
        }
        &mut self.buf[at..at + n]
    }
}

async fn read_loop<H: LinkHandler>(
    handler: Arc<H>,
    link: Arc<Link>,
    rd: OwnedReadHalf,
    mut opener: RecordOpener,
    rate: Option<Arc<RelayBuckets>>,
) {
    let mut reader = RecordReader::new(rd);
    let result: Result<(), ProtoError> = async {
        loop {
            // Every read is cut short by `close` (housekeeping, the link
            // limit, shutdown).
            if link.is_closed() || !reader.fill(RECORD_HEADER_LEN, &link).await? {
                return Ok(());
            }
            let at = reader.start;
            let hdr = [reader.buf[at], reader.buf[at + 1]];
            let (n, len) = RecordOpener::parse_header(hdr)?;
            // Once its header is here, the rest of a record must follow
            // within RECORD_STALL (a timer only when it is not here yet).
            let need = RECORD_HEADER_LEN + len;
            let filled = if reader.buffered() >= need {
                true
            } else {
                tokio::time::timeout(RECORD_STALL, reader.fill(need, &link))
                    .await
                    .map_err(|_| ProtoError::Timeout("rest of a link record"))??
            };
            if !filled {
                return Ok(());
            }
            if let Some(rate) = &rate {
                // Until the bucket has refilled the socket is not read, so
                // the sender's window closes.
                rate.read(need).await;
            }
            let record = &mut reader.take(RECORD_HEADER_LEN + len)[RECORD_HEADER_LEN..];
            opener.open(hdr, record)?;
            // One clock read per record: the time the backward layers of
            // the record's cells go by for their key age.
            let now = Instant::now();
            for chunk in record[..n * CELL_LEN].chunks_exact(CELL_LEN) {
                handler
                    .handle_cell(&link, Cell::from_raw(chunk)?, now)
                    .await;
            }
        }
    }
    .await;
    match result {
        Ok(()) => debug!(link = link.id, "link closed"),
        Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            debug!(link = link.id, "link closed by peer")
        }
        Err(e) => debug!(link = link.id, peer = %link.peer, "link failed: {e}"),
    }
    link.close();
    handler.link_closed(&link);
}

/// What a link knows about one of its circuit ids.
pub(crate) enum CircEntry {
    /// We relay this circuit; cells arriving here travel away from the client.
    Forward(Box<ForwardHop>),
    /// We relay this circuit; cells arriving here (from the next hop) travel
    /// toward the client.
    Backward {
        back: Arc<BackSender>,
        prev_circ: CircId,
    },
    /// We are the client of this circuit, still building it; this link
    /// leads to its first hop.
    Client(mpsc::Sender<Cell>),
    /// We are the client of this built circuit.
    ClientOpen(Arc<ClientRx>),
    /// We sent CREATE while extending a circuit and wait for CREATED.
    Pending(Option<oneshot::Sender<Cell>>),
}

/// A circuit we relay, as the link it came from sees it: the circuit's
/// state machine and the sender of our backward layer.
pub(crate) struct ForwardHop {
    pub(crate) hop: RelayHop<Arc<Link>, Arc<StreamEndpoint>>,
    pub(crate) back: Arc<BackSender>,
}

/// Sends cells toward the client on behalf of one relay hop, adding its layer.
/// The layer is used and the cell queued under one lock, so the layer's
/// counter order is the link's send order; the queue slot is reserved
/// before the lock is taken (no lock is held across a wait).
pub(crate) struct BackSender {
    pub(crate) layer: std::sync::Mutex<RelayBackward>,
    pub(crate) link: Arc<Link>,
    pub(crate) circ: CircId,
}

impl BackSender {
    /// Adds our layer to a cell from the next hop; `now` is the (per link
    /// record) time its key age goes by.
    pub(crate) async fn forward(&self, cell: Cell, now: Instant) -> Result<(), ProtoError> {
        self.send(cell, now, false).await
    }

    /// Adds our layer to a cell we originate (we are the last hop). The
    /// queue slot is reserved before the counter is used, so cancelling this
    /// call can never desynchronise the layer.
    pub(crate) async fn originate(&self, cell: Cell, now: Instant) -> Result<(), ProtoError> {
        self.send(cell, now, true).await
    }

    async fn send(&self, mut cell: Cell, now: Instant, originate: bool) -> Result<(), ProtoError> {
        let command = cell.command()?;
        let permit = self.link.reserve().await?;
        // No await from here on: the permit is used or dropped with the
        // counter untouched.
        let mut layer = self.layer.lock().unwrap_or_else(|e| e.into_inner());
        if originate {
            layer.originate(cell.body_mut(), command, now)?;
        } else {
            layer.encrypt(cell.body_mut(), command, now)?;
        }
        cell.set_circ_id(self.circ);
        permit.send(cell);
        Ok(())
    }
}

/// How an endpoint sends cells into its circuit.
pub(crate) enum CircuitTx {
    /// We are the client: add every hop's layer, send to the first hop.
    Client(Arc<ClientTx>),
    /// We are the last hop: add our layer, send toward the client.
    Relay(Arc<BackSender>),
}

/// The client's sending side of a built circuit: its forward layers and
/// the link to the first hop (the layers are used under the lock only
/// after the queue slot is reserved, as in [`BackSender`]).
pub(crate) struct ClientTx {
    pub(crate) layers: std::sync::Mutex<ClientForward>,
    pub(crate) link: Arc<Link>,
    pub(crate) circ: CircId,
}

impl CircuitSender for CircuitTx {
    fn circ(&self) -> CircId {
        match self {
            Self::Client(tx) => tx.circ,
            Self::Relay(back) => back.circ,
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::Client(_) => Role::Client,
            Self::Relay(_) => Role::Exit,
        }
    }

    fn prev_peer(&self) -> Option<PeerId> {
        match self {
            Self::Client(_) => None,
            Self::Relay(back) => Some(back.link.peer),
        }
    }

    async fn send(&self, mut cell: Cell, now: Instant) -> Result<(), ProtoError> {
        match self {
            Self::Client(tx) => {
                let command = cell.command()?;
                // Reserve first: a cancelled wait must not burn a counter value.
                let permit = tx.link.reserve().await?;
                let mut layers = tx.layers.lock().unwrap_or_else(|e| e.into_inner());
                layers.encrypt(cell.body_mut(), command, now)?;
                cell.set_circ_id(tx.circ);
                permit.send(cell);
                Ok(())
            }
            Self::Relay(back) => back.originate(cell, now).await,
        }
    }
}

/// A built client circuit, as its link reader sees it.
pub(crate) struct ClientRx {
    pub(crate) layers: std::sync::Mutex<ClientBackward>,
    pub(crate) endpoint: Arc<StreamEndpoint>,
}

impl ClientRx {
    /// Removes every layer from an incoming RELAY cell, verifying each tag.
    pub(crate) fn decrypt(&self, cell: &mut Cell) -> Result<(), PeerMisbehaved> {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        let command = cell.command()?;
        layers
            .decrypt(cell.body_mut(), command)
            .map_err(PeerMisbehaved::BadLayer)
    }
}
