//! The announcement streams' IO: one writer task per peer we announce to,
//! one reader task per peer that announces to us, and what we announced to
//! whom ([`Offered`]). The frames are [`announce`](crate::announce)'s.
//!
//! Bounds: a writer queues at most [`WRITER_QUEUE`] frames and
//! [`WRITER_BYTES`] bytes (more are dropped: reconciliation carries what a
//! dropped announcement would have); a reader reads one frame at a time, of
//! at most [`announce::frame_limits`]' size and within [`READ_TIMEOUT`] of
//! its first byte, and waits while the node's inbound queue
//! ([`INBOUND_QUEUE`] frames for all peers) is full, so a fast sender is
//! slowed by its own stream's flow control; one inbound stream per peer (a
//! new one replaces the old). No announcement stream keeps a connection
//! open.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, trace};

use crate::announce::{self, short_id, Frame, ShortId, ANNOUNCE_PROTOCOL, LENGTH_BYTES};
use crate::sync::{RecordDigest, SyncLimits, MAX_DIGESTS};

/// Frames queued for one peer's stream.
pub(crate) const WRITER_QUEUE: usize = 16;
/// Bytes queued for one peer's stream, at most (a frame that would go over
/// waits for the next announcement or is left to reconciliation).
pub(crate) const WRITER_BYTES: usize = 512 * 1024;
/// How long one frame may take to arrive once its first byte has.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames read from all peers and not yet handled by the node.
pub(crate) const INBOUND_QUEUE: usize = 16;
/// How long opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one frame may take before the stream is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an announced digest may be asked for by the peer it was
/// announced to.
pub(crate) const OFFER_TTL: Duration = Duration::from_secs(60);
/// Digests remembered as announced to one peer (older ones are forgotten
/// first).
pub(crate) const MAX_OFFERED: usize = 2 * MAX_DIGESTS;

/// A frame read from a peer.
pub(crate) type Inbound = (PeerId, Frame);

/// The protocol, as libp2p names it.
pub(crate) fn protocol() -> StreamProtocol {
    StreamProtocol::new(ANNOUNCE_PROTOCOL)
}

/// Starts the task that accepts announcement streams and a reader for each;
/// frames go to `tx`.
pub(crate) fn accept(
    mut control: libp2p_stream::Control,
    limits: SyncLimits,
    tx: mpsc::Sender<Inbound>,
) -> Result<(), libp2p_stream::AlreadyRegistered> {
    let mut incoming = control.accept(protocol())?;
    tokio::spawn(async move {
        let mut readers: HashMap<PeerId, AbortHandle> = HashMap::new();
        while let Some((peer, stream)) = incoming.next().await {
            trace!(%peer, "announcement stream accepted");
            let task = tokio::spawn(read_frames(peer, stream, limits, tx.clone()));
            if let Some(old) = readers.insert(peer, task.abort_handle()) {
                old.abort();
            }
            if readers.len() > 2 * crate::MAX_ESTABLISHED as usize {
                readers.retain(|_, t| !t.is_finished());
            }
        }
        for t in readers.values() {
            t.abort();
        }
    });
    Ok(())
}

/// Reads frames from `peer`'s stream until it ends or sends a bad frame.
async fn read_frames(
    peer: PeerId,
    mut stream: libp2p::Stream,
    limits: SyncLimits,
    tx: mpsc::Sender<Inbound>,
) {
    // Announcement streams never keep a connection open (see `writer`).
    stream.ignore_for_keep_alive();
    let limits = announce::frame_limits(&limits);
    loop {
        match read_frame(&mut stream, &limits, READ_TIMEOUT).await {
            Ok(Some(frame)) => {
                if tx.send((peer, frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                trace!(%peer, "announcement stream closed");
                return;
            }
            Err(e) => {
                debug!(%peer, "announcement stream dropped: {e}");
                return;
            }
        }
    }
}

/// One frame, or `None` at a clean end of the stream (between frames).
/// Between frames a stream may be quiet for as long as it likes; once a
/// frame has begun, all of it must come within `within`.
async fn read_frame<S: futures::AsyncRead + Unpin>(
    stream: &mut S,
    limits: &SyncLimits,
    within: Duration,
) -> std::io::Result<Option<Frame>> {
    let mut prefix = [0u8; LENGTH_BYTES];
    let n = stream.read(&mut prefix).await?;
    if n == 0 {
        return Ok(None);
    }
    match tokio::time::timeout(within, read_rest(stream, prefix, n, limits)).await {
        Ok(r) => r.map(Some),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The rest of a frame whose first `got` bytes are in `prefix`.
async fn read_rest<S: futures::AsyncRead + Unpin>(
    stream: &mut S,
    mut prefix: [u8; LENGTH_BYTES],
    mut got: usize,
    limits: &SyncLimits,
) -> std::io::Result<Frame> {
    while got < LENGTH_BYTES {
        let n = stream.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let invalid = |e: announce::FrameError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let len = Frame::body_len(prefix, limits).map_err(invalid)?;
    // Grows as bytes arrive: a length prefix alone reserves nothing.
    let mut body = Vec::new();
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Frame::decode(&body, limits).map_err(invalid)
}

/// The queue of a writer task: frames for one peer's stream.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
    /// Whether its stream holds the link open.
    keep: bool,
}

impl Writer {
    /// A writer with no task: the test holds the queue's other end.
    #[cfg(test)]
    fn detached() -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Writer {
                tx,
                queued,
                keep: false,
            },
            rx,
        )
    }

    /// Whether its stream holds the link open ([`crate::kept`]).
    pub(crate) fn keeps_link(&self) -> bool {
        self.keep
    }

    /// Whether the stream is gone (a new writer is needed).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether a frame of `len` bytes fits in the queue now.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        !self.tx.is_closed()
            && self.tx.capacity() > 0
            && self.queued.load(Ordering::Relaxed).saturating_add(len) <= WRITER_BYTES
    }

    /// Queues `wire` if it fits; false if it was dropped.
    pub(crate) fn send(&self, wire: Vec<u8>) -> bool {
        if !self.has_room(wire.len()) {
            return false;
        }
        let len = wire.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(wire).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Starts a writer for `peer`: it opens the stream and writes the frames
/// sent to the returned queue, in order, until the queue is dropped or the
/// stream fails (then the queue reports closed, and the node starts
/// another writer the next time it announces to `peer`). With `keep`, the
/// open stream keeps our side of the connection open ([`crate::kept`] says for
/// which peers).
pub(crate) fn writer(mut control: libp2p_stream::Control, peer: PeerId, keep: bool) -> Writer {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let left = queued.clone();
    tokio::spawn(async move {
        let open = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol())).await;
        let mut stream = match open {
            // Any other link lives as long as it would without the
            // stream (closed after a minute with nothing else on it): a
            // stream that kept every link it touched open would fill a
            // relay's 50 connections, a bootstrap relay's first, and shut
            // joiners out.
            Ok(Ok(mut s)) => {
                if !keep {
                    s.ignore_for_keep_alive();
                }
                s
            }
            Ok(Err(e)) => {
                debug!(%peer, "cannot open an announcement stream: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, "opening an announcement stream timed out");
                return;
            }
        };
        while let Some(frame) = rx.recv().await {
            let len = frame.len();
            let write = async {
                stream.write_all(&frame).await?;
                stream.flush().await
            };
            let written = tokio::time::timeout(WRITE_TIMEOUT, write).await;
            left.fetch_sub(len, Ordering::Relaxed);
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(%peer, "announcement stream failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "announcement stream stalled; closing it");
                    return;
                }
            }
        }
        let _ = stream.close().await;
    });
    Writer { tx, queued, keep }
}

/// The records announced to one peer in the last [`OFFER_TTL`]: the only
/// ones it may ask for on the stream (by short id), each once (an
/// announcement stream serves announcements, not fetches; anything else is
/// asked by reconciliation, which has its own bounds).
#[derive(Debug, Default)]
pub(crate) struct Offered {
    /// When each short id was (last) announced, oldest first; entries
    /// whose record was taken or announced again since stay until they
    /// leave.
    order: VecDeque<(Instant, ShortId)>,
    /// Each announced record by short id: its digest and when, until it
    /// is taken or too old.
    when: HashMap<ShortId, (RecordDigest, Instant)>,
}

impl Offered {
    /// Notes `digests` as announced at `now`.
    pub(crate) fn add(&mut self, digests: &[RecordDigest], now: Instant) {
        self.expire(now);
        for d in digests {
            let id = short_id(d);
            self.when.insert(id, (*d, now));
            self.order.push_back((now, id));
        }
        while self.order.len() > MAX_OFFERED {
            self.pop();
        }
    }

    /// The digests of those of `want` that were announced and not yet
    /// served.
    pub(crate) fn resolve(&mut self, want: &[ShortId], now: Instant) -> Vec<RecordDigest> {
        self.expire(now);
        want.iter()
            .filter_map(|id| self.when.get(id).map(|(d, _)| *d))
            .collect()
    }

    /// Notes `digests` as served: a second want of one is not served.
    pub(crate) fn served(&mut self, digests: &[RecordDigest]) {
        for d in digests {
            self.when.remove(&short_id(d));
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= OFFER_TTL)
        {
            self.pop();
        }
    }

    /// Drops the oldest entry, and its record unless announced again since.
    fn pop(&mut self) {
        if let Some((t, id)) = self.order.pop_front() {
            if self.when.get(&id).is_some_and(|(_, at)| *at == t) {
                self.when.remove(&id);
            }
        }
    }

    /// Records held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.when.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_may_ask_for_what_was_announced_to_it_once_and_not_for_long() {
        let t0 = Instant::now();
        let mut o = Offered::default();
        o.add(&[[1; 32], [2; 32]], t0);
        let want = o.resolve(&[[1; 8], [3; 8]], t0);
        assert_eq!(
            want,
            vec![[1; 32]],
            "only what was announced, by its digest"
        );
        // not served yet (it did not fit): still offered
        let again = o.resolve(&[[1; 8]], t0);
        assert_eq!(again, vec![[1; 32]]);
        o.served(&again);
        assert!(
            o.resolve(&[[1; 8]], t0).is_empty(),
            "each record is served once"
        );
        assert!(
            o.resolve(&[[2; 8]], t0 + OFFER_TTL).is_empty(),
            "not after OFFER_TTL"
        );
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_writer_queues_at_most_its_frames_and_bytes() {
        let (w, rx) = Writer::detached();
        let big = vec![0u8; 100 * 1024];
        let fit = WRITER_BYTES / big.len();
        for _ in 0..fit {
            assert!(w.send(big.clone()));
        }
        assert!(!w.send(big.clone()), "over {WRITER_BYTES} bytes");
        drop(rx);
        assert!(w.is_closed() && !w.send(vec![1]));
        let (w, _rx) = Writer::detached();
        for _ in 0..WRITER_QUEUE {
            assert!(w.send(vec![1]));
        }
        assert!(!w.send(vec![1]), "over {WRITER_QUEUE} frames");
    }

    /// Gives `bytes`, then never anything again (a peer that stops
    /// mid-frame).
    struct Stalls(Vec<u8>);

    impl futures::AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_frame_begun_must_end_in_time_and_a_quiet_stream_may_wait() {
        let limits = SyncLimits {
            max_records: 4,
            max_record_len: 64,
            max_message_bytes: 1024,
        };
        let wait = Duration::from_millis(50);
        // Half a frame, then nothing: given up.
        let frame = Frame::Announce(vec![[7; 8]]).encode();
        let mut half = Stalls(frame[..10].to_vec());
        let err = read_frame(&mut half, &limits, wait).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // A whole frame is read; a stream quiet between frames is waited on.
        let mut whole = Stalls(frame.clone());
        let got = read_frame(&mut whole, &limits, wait).await.unwrap();
        assert_eq!(got, Some(Frame::Announce(vec![[7; 8]])));
        let quiet = tokio::time::timeout(4 * wait, read_frame(&mut whole, &limits, wait)).await;
        assert!(quiet.is_err(), "no frame begun: still waiting");
        // A clean end between frames is the end.
        let mut ended = futures::io::Cursor::new(frame);
        assert!(read_frame(&mut ended, &limits, wait)
            .await
            .unwrap()
            .is_some());
        assert!(read_frame(&mut ended, &limits, wait)
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_offered_set_stays_bounded() {
        let t0 = Instant::now();
        let mut o = Offered::default();
        for i in 0..3 * MAX_OFFERED as u32 {
            let mut d = [0; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            o.add(&[d], t0);
        }
        assert_eq!(o.len(), MAX_OFFERED);
        assert!(o.order.len() <= MAX_OFFERED);
        // the newest are kept
        let mut d = [0; 32];
        d[..4].copy_from_slice(&(3 * MAX_OFFERED as u32 - 1).to_be_bytes());
        assert_eq!(o.resolve(&[short_id(&d)], t0), vec![d]);
    }
}
