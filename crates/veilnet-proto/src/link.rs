//! Links: one authenticated, encrypted TCP connection per neighbour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libp2p_identity::PeerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tracing::debug;
use veilnet_cell::{Cell, CircId, CELL_LEN};
use veilnet_crypto::link::{
    LinkHandshake, LinkSession, RecordOpener, RecordSealer, MAX_BATCH, RECORD_HEADER_LEN,
};

use crate::core::Core;
use crate::relay::CircEntry;
use crate::ProtoError;

/// Observes every byte a link writes to its socket (tests use it to prove
/// that no plaintext crosses a link).
pub type LinkTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Time allowed for a link handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A send queue that stays full this long means the peer stopped reading.
const SEND_STALL: Duration = Duration::from_secs(10);
/// A socket write that makes no progress this long means the same.
const WRITE_STALL: Duration = Duration::from_secs(30);

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

    /// Closes the link: both tasks stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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

/// Starts the reader and writer tasks of an authenticated link.
pub(crate) fn start(
    core: &Arc<Core>,
    stream: TcpStream,
    session: LinkSession,
    initiator: bool,
) -> Arc<Link> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(core.limits().link_queue);
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
    sealer.set_rekey_policy(core.limits().link_rekey);
    tokio::spawn(write_loop(link.clone(), wr, rx, sealer, core.tap()));
    tokio::spawn(read_loop(core.clone(), link.clone(), rd, session.opener));
    link
}

async fn write_loop(
    link: Arc<Link>,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Cell>,
    mut sealer: RecordSealer,
    tap: Option<LinkTap>,
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
        // the sealer's key age.
        if let Err(e) = sealer.seal(&mut buf, tokio::time::Instant::now().into_std()) {
            debug!(link = link.id, "cannot seal record: {e}");
            break;
        }
        if let Some(tap) = &tap {
            tap(&buf);
        }
        match tokio::time::timeout(WRITE_STALL, wr.write_all(&buf)).await {
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

async fn read_loop(core: Arc<Core>, link: Arc<Link>, rd: OwnedReadHalf, mut opener: RecordOpener) {
    let mut rd = BufReader::with_capacity(4 * RecordSealer::record_len(MAX_BATCH), rd);
    let mut body = vec![0u8; MAX_BATCH * CELL_LEN + 16];
    let result: Result<(), ProtoError> = async {
        loop {
            let mut hdr = [0u8; RECORD_HEADER_LEN];
            tokio::select! {
                r = rd.read_exact(&mut hdr) => { r?; }
                _ = link.shutdown.notified() => return Ok(()),
            }
            let (n, len) = RecordOpener::parse_header(hdr)?;
            rd.read_exact(&mut body[..len]).await?;
            opener.open(hdr, &mut body[..len])?;
            for chunk in body[..n * CELL_LEN].chunks_exact(CELL_LEN) {
                core.handle_cell(&link, Cell::from_raw(chunk)?).await;
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
    core.link_closed(&link);
}
