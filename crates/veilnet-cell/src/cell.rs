//! Fixed-size cells: the unit a link carries.

use thiserror::Error;

/// Length of every cell on a link, in bytes.
pub const CELL_LEN: usize = 2048;
/// Length of the cell header: circuit id (4) and command (1).
pub const CELL_HEADER_LEN: usize = 5;
/// Length of a cell body.
pub const BODY_LEN: usize = CELL_LEN - CELL_HEADER_LEN;
/// Longest circuit a client may build, and the number of tag slots in the onion header.
pub const MAX_HOPS: usize = 5;
/// Length of one authentication tag (AES-256-GCM).
pub const TAG_LEN: usize = 16;
/// Length of one hop's slot in the onion header: its tag and one control byte.
pub const SLOT_LEN: usize = TAG_LEN + 1;
/// Length of the onion header at the start of a relay cell body: one slot per possible hop.
pub const ONION_HEADER_LEN: usize = MAX_HOPS * SLOT_LEN;
/// Length of the relay payload that follows the onion header.
pub const RELAY_PAYLOAD_LEN: usize = BODY_LEN - ONION_HEADER_LEN;
/// Longest handshake message a CREATE/CREATED cell can hold.
pub const MAX_HANDSHAKE_LEN: usize = 512;

/// A circuit id, local to one link. Zero is never a valid circuit id.
///
/// Only the node that opened a link (its initiator) creates circuits on it,
/// and the ids it picks have [`CircId::INITIATOR_BIT`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircId(u32);

impl CircId {
    /// The top bit: set in every id picked by a link's initiator.
    pub const INITIATOR_BIT: u32 = 0x8000_0000;

    /// Wraps a non-zero id.
    pub fn new(id: u32) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }
    /// The raw value.
    pub fn get(self) -> u32 {
        self.0
    }
    /// Whether the id carries [`CircId::INITIATOR_BIT`].
    pub fn from_initiator(self) -> bool {
        self.0 & Self::INITIATOR_BIT != 0
    }
}

impl std::fmt::Display for CircId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// What a cell asks its receiver to do.
///
/// Command numbers (byte 4 of every cell):
///
/// | value | command |
/// | --- | --- |
/// | 0 | [`Padding`](Self::Padding) |
/// | 1 | [`Create`](Self::Create) |
/// | 2 | [`Created`](Self::Created) |
/// | 3 | [`Relay`](Self::Relay) |
/// | 4 | [`Destroy`](Self::Destroy) |
/// | 5 | [`RelayEarly`](Self::RelayEarly) |
/// | 6..=127 | reserved for future circuit commands |
/// | 128..=255 | reserved for future link-level commands (not tied to a circuit) |
///
/// A receiver ignores a cell whose command it does not know (it counts and
/// logs it), so new commands can be deployed without breaking older nodes.
/// A new command that carries onion-encrypted bytes must only be sent to
/// hops known to understand it: a hop that drops it does not advance its
/// layer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CellCommand {
    /// Ignored by the receiver; cover traffic and keep-alive.
    Padding = 0,
    /// Starts a circuit hop: carries the client's handshake message.
    Create = 1,
    /// Answers CREATE: carries the relay's handshake message.
    Created = 2,
    /// Carries an onion-encrypted relay payload.
    Relay = 3,
    /// Tears the circuit down; body byte 0 is a [`DestroyReason`].
    Destroy = 4,
    /// A [`Relay`](Self::Relay) cell from the client's extend budget (Tor's
    /// RELAY_EARLY, proposal 110): every EXTEND travels in one. Relays
    /// forward it as it came, count it, and destroy a circuit that sends more
    /// than `MAX_HOPS - 1` of them or that sends one toward the client; an
    /// EXTEND in a plain RELAY cell is refused. Otherwise it is handled
    /// exactly like a RELAY cell.
    RelayEarly = 5,
}

impl CellCommand {
    /// Decodes a command byte; `None` for a command this version does not know.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Padding,
            1 => Self::Create,
            2 => Self::Created,
            3 => Self::Relay,
            4 => Self::Destroy,
            5 => Self::RelayEarly,
            _ => return None,
        })
    }

    /// True for the commands that carry an onion-encrypted relay payload
    /// ([`Relay`](Self::Relay) and [`RelayEarly`](Self::RelayEarly)).
    pub fn is_relay(self) -> bool {
        matches!(self, Self::Relay | Self::RelayEarly)
    }
}

/// Why a circuit was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DestroyReason {
    /// No reason given.
    None = 0,
    /// A protocol violation (bad cell, bad tag, ...).
    Protocol = 1,
    /// An internal error.
    Internal = 2,
    /// The client asked for it.
    Requested = 3,
    /// The relay is shutting down or out of resources.
    ResourceLimit = 4,
    /// The link under the circuit failed.
    LinkFailed = 5,
    /// Extending to the next hop failed.
    ExtendFailed = 6,
}

impl DestroyReason {
    /// Decodes a reason; unknown values become [`DestroyReason::None`].
    pub fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::Protocol,
            2 => Self::Internal,
            3 => Self::Requested,
            4 => Self::ResourceLimit,
            5 => Self::LinkFailed,
            6 => Self::ExtendFailed,
            _ => Self::None,
        }
    }
}

/// Errors decoding a cell.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CellError {
    /// The input is not exactly one cell long.
    #[error("cell has {0} bytes, expected {CELL_LEN}")]
    BadLength(usize),
    /// Unknown command byte.
    #[error("unknown cell command {0}")]
    UnknownCommand(u8),
    /// Circuit id zero on a command that needs a circuit.
    #[error("cell command {0:?} with circuit id 0")]
    ZeroCircId(CellCommand),
    /// A handshake field is longer than the cell allows.
    #[error("handshake length {0} exceeds {MAX_HANDSHAKE_LEN}")]
    HandshakeTooLong(usize),
}

/// One cell: exactly [`CELL_LEN`] bytes on the heap, so that moving a cell
/// between tasks and queues moves a pointer, not 2 KiB. Buffers are recycled
/// through a small per-thread pool: in the steady state no cell allocates.
pub struct Cell {
    /// Always exactly `CELL_LEN` bytes long (empty only while being dropped).
    buf: Box<[u8]>,
}

/// Buffers kept per thread for reuse.
const LOCAL_CAP: usize = 256;
/// Buffers kept in the shared pool, for threads that free more cells than
/// they allocate (a link reader allocates, a writer on another thread frees).
const SHARED_CAP: usize = 4096;
/// Buffers moved between a thread's pool and the shared pool at once.
const BATCH: usize = LOCAL_CAP / 2;

thread_local! {
    static LOCAL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}
static SHARED: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

fn shared() -> std::sync::MutexGuard<'static, Vec<Box<[u8]>>> {
    // The pool holds plain buffers; a panic elsewhere cannot leave it inconsistent.
    SHARED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cell-sized buffer with unspecified contents.
fn take_buffer() -> Box<[u8]> {
    let local = LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            if l.is_empty() {
                let mut g = shared();
                let n = g.len().min(BATCH);
                let at = g.len() - n;
                l.extend(g.drain(at..));
            }
            l.pop()
        })
        .ok()
        .flatten();
    local.unwrap_or_else(|| vec![0u8; CELL_LEN].into_boxed_slice())
}

fn recycle(buf: Box<[u8]>) {
    let _ = LOCAL.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.len() >= LOCAL_CAP {
            let mut g = shared();
            let room = SHARED_CAP.saturating_sub(g.len()).min(BATCH);
            let at = l.len() - room;
            g.extend(l.drain(at..));
        }
        if l.len() < LOCAL_CAP {
            l.push(buf);
        }
    });
}

impl Drop for Cell {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() == CELL_LEN {
            recycle(buf);
        }
    }
}

impl Clone for Cell {
    fn clone(&self) -> Self {
        Self::from_bytes_unchecked(&self.buf)
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("circ_id", &self.raw_circ_id())
            .field("command", &self.buf[4])
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// A zeroed cell with the given header.
    pub fn new(circ_id: CircId, command: CellCommand) -> Self {
        let mut buf = take_buffer();
        buf.fill(0);
        buf[..4].copy_from_slice(&circ_id.get().to_be_bytes());
        buf[4] = command as u8;
        Self { buf }
    }

    /// A padding cell (circuit id 0).
    pub fn padding() -> Self {
        let mut buf = take_buffer();
        buf.fill(0);
        buf[4] = CellCommand::Padding as u8;
        Self { buf }
    }

    fn from_bytes_unchecked(bytes: &[u8]) -> Self {
        let mut buf = take_buffer();
        buf.copy_from_slice(bytes);
        Self { buf }
    }

    /// Parses and validates a cell from exactly [`CELL_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CellError> {
        let cell = Self::from_raw(bytes)?;
        cell.validate()?;
        Ok(cell)
    }

    /// Copies exactly [`CELL_LEN`] raw bytes into a cell without validating
    /// the header; call [`Cell::validate`] before use.
    pub fn from_raw(bytes: &[u8]) -> Result<Self, CellError> {
        if bytes.len() != CELL_LEN {
            return Err(CellError::BadLength(bytes.len()));
        }
        Ok(Self::from_bytes_unchecked(bytes))
    }

    /// Checks the header: known command, non-zero circuit id where one is needed.
    pub fn validate(&self) -> Result<(), CellError> {
        let cmd = self.command()?;
        if cmd != CellCommand::Padding && self.raw_circ_id() == 0 {
            return Err(CellError::ZeroCircId(cmd));
        }
        Ok(())
    }

    fn raw_circ_id(&self) -> u32 {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
    }

    /// The circuit id, `None` for padding cells.
    pub fn circ_id(&self) -> Option<CircId> {
        CircId::new(self.raw_circ_id())
    }

    /// Rewrites the circuit id (a relay does this when forwarding to the next link).
    pub fn set_circ_id(&mut self, id: CircId) {
        self.buf[..4].copy_from_slice(&id.get().to_be_bytes());
    }

    /// The command.
    pub fn command(&self) -> Result<CellCommand, CellError> {
        CellCommand::from_u8(self.buf[4]).ok_or(CellError::UnknownCommand(self.buf[4]))
    }

    /// Rewrites the command.
    pub fn set_command(&mut self, cmd: CellCommand) {
        self.buf[4] = cmd as u8;
    }

    /// The body ([`BODY_LEN`] bytes).
    pub fn body(&self) -> &[u8] {
        &self.buf[CELL_HEADER_LEN..]
    }

    /// The body, mutable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf[CELL_HEADER_LEN..]
    }

    /// The whole cell as sent on a link ([`CELL_LEN`] bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The relay payload region of a RELAY cell (after the onion header).
    pub fn relay_payload(&self) -> &[u8] {
        &self.buf[CELL_HEADER_LEN + ONION_HEADER_LEN..]
    }

    /// The relay payload region, mutable.
    pub fn relay_payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[CELL_HEADER_LEN + ONION_HEADER_LEN..]
    }

    /// A CREATE or CREATED cell carrying a handshake message.
    pub fn handshake(circ_id: CircId, command: CellCommand, msg: &[u8]) -> Result<Self, CellError> {
        if msg.len() > MAX_HANDSHAKE_LEN {
            return Err(CellError::HandshakeTooLong(msg.len()));
        }
        let mut cell = Self::new(circ_id, command);
        let body = cell.body_mut();
        body[..2].copy_from_slice(&(msg.len() as u16).to_be_bytes());
        body[2..2 + msg.len()].copy_from_slice(msg);
        Ok(cell)
    }

    /// The handshake message of a CREATE or CREATED cell.
    pub fn handshake_msg(&self) -> Result<&[u8], CellError> {
        let body = self.body();
        let len = u16::from_be_bytes([body[0], body[1]]) as usize;
        if len > MAX_HANDSHAKE_LEN {
            return Err(CellError::HandshakeTooLong(len));
        }
        Ok(&body[2..2 + len])
    }

    /// A DESTROY cell.
    pub fn destroy(circ_id: CircId, reason: DestroyReason) -> Self {
        let mut cell = Self::new(circ_id, CellCommand::Destroy);
        cell.body_mut()[0] = reason as u8;
        cell
    }

    /// The reason of a DESTROY cell.
    pub fn destroy_reason(&self) -> DestroyReason {
        DestroyReason::from_u8(self.body()[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_constants() {
        assert_eq!(BODY_LEN, 2043);
        assert_eq!(RELAY_PAYLOAD_LEN, 1958);
    }

    #[test]
    fn header_vector() {
        let id = CircId::new(0x8000_0001).unwrap();
        let cell = Cell::destroy(id, DestroyReason::Requested);
        assert_eq!(hex::encode(&cell.as_bytes()[..6]), "800000010403");
        let back = Cell::decode(cell.as_bytes()).unwrap();
        assert_eq!(back.circ_id(), Some(id));
        assert_eq!(back.command().unwrap(), CellCommand::Destroy);
        assert_eq!(back.destroy_reason(), DestroyReason::Requested);
    }

    #[test]
    fn command_numbers() {
        for b in 0..=u8::MAX {
            match CellCommand::from_u8(b) {
                Some(c) => {
                    assert!(b <= 5, "{b} is reserved");
                    assert_eq!(c as u8, b);
                }
                None => assert!(b > 5, "{b} is assigned"),
            }
        }
        assert!(CellCommand::Relay.is_relay() && CellCommand::RelayEarly.is_relay());
        assert!(!CellCommand::Create.is_relay());
        let id = CircId::new(0x8000_0002).unwrap();
        assert!(id.from_initiator());
        assert!(!CircId::new(2).unwrap().from_initiator());
        let early = Cell::new(id, CellCommand::RelayEarly);
        assert_eq!(hex::encode(&early.as_bytes()[..5]), "8000000205");
        let back = Cell::decode(early.as_bytes()).unwrap();
        assert_eq!(back.command().unwrap(), CellCommand::RelayEarly);
        let mut raw = early.as_bytes().to_vec();
        raw[4] = 6;
        assert_eq!(
            Cell::decode(&raw).unwrap_err(),
            CellError::UnknownCommand(6)
        );
    }

    #[test]
    fn recycled_buffers_are_cleared() {
        let id = CircId::new(9).unwrap();
        let mut c = Cell::new(id, CellCommand::Relay);
        c.body_mut().fill(0xAB);
        drop(c);
        let fresh = Cell::new(id, CellCommand::Relay);
        assert!(
            fresh.body().iter().all(|b| *b == 0),
            "no stale bytes leak into a new cell"
        );
    }

    #[test]
    fn rejects_bad_cells() {
        assert_eq!(
            Cell::decode(&[0u8; 10]).unwrap_err(),
            CellError::BadLength(10)
        );
        let mut raw = [0u8; CELL_LEN];
        raw[3] = 1;
        raw[4] = 99;
        assert_eq!(
            Cell::decode(&raw).unwrap_err(),
            CellError::UnknownCommand(99)
        );
        raw[3] = 0;
        raw[4] = CellCommand::Relay as u8;
        assert_eq!(
            Cell::decode(&raw).unwrap_err(),
            CellError::ZeroCircId(CellCommand::Relay)
        );
        raw[4] = 0;
        assert!(Cell::decode(&raw).is_ok(), "padding needs no circuit");
    }

    #[test]
    fn handshake_roundtrip_and_limits() {
        let id = CircId::new(7).unwrap();
        let cell = Cell::handshake(id, CellCommand::Create, b"hello").unwrap();
        assert_eq!(cell.handshake_msg().unwrap(), b"hello");
        assert!(Cell::handshake(id, CellCommand::Create, &[0; MAX_HANDSHAKE_LEN + 1]).is_err());
        let mut raw = cell.as_bytes().to_vec();
        raw[5] = 0xff;
        raw[6] = 0xff;
        let bad = Cell::decode(&raw).unwrap();
        assert_eq!(
            bad.handshake_msg().unwrap_err(),
            CellError::HandshakeTooLong(0xffff)
        );
    }
}
