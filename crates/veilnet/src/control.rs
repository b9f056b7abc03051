//! The node's control API: read-only JSON over HTTP/1.1 on a loopback socket,
//! and the `veilnet status` client that renders it for humans.
//!
//! The server ([`serve`]) answers `GET /v1/status`, `GET /v1/nodes` and
//! `GET /v1/circuits` from a [`ControlSource`] snapshot of the running node.
//! Everything else gets a JSON error: 404 for unknown paths, 405 for other
//! methods on known paths. It is read-only on purpose: nothing here can change
//! what the node does.
//!
//! Because the API tells whoever asks which relays our circuits use, it guards
//! against the two ways a web page in a local browser could reach a loopback
//! socket: requests carrying an `Origin` header (browsers add it to
//! cross-origin requests) are refused, and so is any `Host` that is not an IP
//! literal or `localhost`, which defeats DNS rebinding.
//!
//! Connections are bounded ([`MAX_CONNECTIONS`]) and each lives at most
//! [`CONNECTION_LIFETIME`], so a stuck local client can neither exhaust the
//! node nor hold up shutdown for longer than that.
//!
//! The client ([`get_json`]) is a deliberately small HTTP/1.1 GET that only
//! needs to understand our own server's answers (`Content-Length`, chunked, or
//! read-to-close bodies).

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Most control connections served at once; further clients wait in the
/// kernel's accept backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Longest a control connection may stay open, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);

/// How long [`get_json`] waits for the TCP connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`get_json`] waits for the whole exchange once connected.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response (head and body) [`get_json`] accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// One node of the directory as the control API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The node's libp2p peer id.
    pub peer_id: String,
    /// Whether the node offers to relay circuits.
    pub relay: bool,
    /// Whether the node offers to be the last hop to the open internet.
    pub exit: bool,
    /// Addresses for the circuit link protocol.
    pub link_addrs: Vec<String>,
    /// libp2p multiaddresses.
    pub p2p_addrs: Vec<String>,
    /// Region the node advertises (self-declared, not verified).
    pub region: String,
    /// Advertised bandwidth in bytes per second.
    pub bandwidth: u64,
    /// Software version the node advertises.
    pub version: String,
    /// True for the row describing this node itself.
    pub is_self: bool,
}

/// One of this node's circuits as the control API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CircuitView {
    /// Local circuit id.
    pub id: u64,
    /// `"building"`, `"open"`, `"dirty"` or `"closed"`.
    pub state: String,
    /// Seconds since the circuit was launched.
    pub age_secs: f64,
    /// Peer ids of the hops in order, first hop first.
    pub hops: Vec<String>,
    /// Streams currently attached.
    pub streams: usize,
    /// An opaque isolation group label; never the username it derives from.
    pub isolation: Option<String>,
    /// How long building the circuit took, in milliseconds.
    #[serde(default)]
    pub build_ms: f64,
}

/// Summary of the running node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusView {
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// Software version of this node.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Nodes currently in the directory.
    pub known_nodes: usize,
    /// Circuits currently open.
    pub open_circuits: usize,
    /// SOCKS listener address, if enabled.
    pub socks: Option<String>,
    /// HTTP proxy listener address, if enabled.
    pub http_proxy: Option<String>,
}

/// What the control API reads from the running node.
///
/// Methods are called on the async runtime for every request, so they must
/// return a cheap snapshot without blocking (no I/O, only short-held locks).
pub trait ControlSource: Send + Sync + 'static {
    /// Summary of the node.
    fn status(&self) -> StatusView;
    /// The nodes the directory knows, this node included.
    fn nodes(&self) -> Vec<NodeView>;
    /// This node's circuits.
    fn circuits(&self) -> Vec<CircuitView>;
}

/// Body of every error response from the control API.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ErrorBody {
    error: String,
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.to_owned(),
        }),
    )
        .into_response()
}

// ---------------------------------------------------------------- server ---

type SharedSource = Arc<dyn ControlSource>;

/// Serves GET /v1/status, /v1/nodes, /v1/circuits (JSON,
/// `application/json`), a 404 JSON error for other paths and a 405 JSON
/// error for other methods on those paths (`HEAD` is answered like `GET`).
///
/// Binds `addr`; the caller has validated that it is loopback unless the
/// operator set the danger flag. Returns the bound address (so port 0 works)
/// and the server task, which ends once `shutdown` resolves and the open
/// connections have finished (at most [`CONNECTION_LIFETIME`] later).
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn ControlSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with_lifetime(addr, source, shutdown, CONNECTION_LIFETIME).await
}

/// [`serve`] with a chosen connection lifetime (tests use a short one).
async fn serve_with_lifetime(
    addr: SocketAddr,
    source: SharedSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lifetime: Duration,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = LimitedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        lifetime,
    };
    let app = router(source);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "control API server stopped with an error");
        }
    });
    Ok((local, task))
}

fn router(source: SharedSource) -> Router {
    Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/nodes", get(get_nodes))
        .route("/v1/circuits", get(get_circuits))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(local_only))
        .with_state(source)
}

async fn get_status(State(source): State<SharedSource>) -> Json<StatusView> {
    Json(source.status())
}

async fn get_nodes(State(source): State<SharedSource>) -> Json<Vec<NodeView>> {
    Json(source.nodes())
}

async fn get_circuits(State(source): State<SharedSource>) -> Json<Vec<CircuitView>> {
    Json(source.circuits())
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    // axum adds the `Allow` header to this response itself.
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Refuses requests a web browser could have been tricked into sending.
async fn local_only(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return error_response(StatusCode::FORBIDDEN, "cross-origin requests are refused");
    }
    let host_ok = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_acceptable_host);
    if !host_ok {
        return error_response(
            StatusCode::FORBIDDEN,
            "Host must be an IP address or localhost",
        );
    }
    next.run(request).await
}

/// True if a `Host` header value names an IP literal or `localhost`, with an
/// optional port. DNS names are refused so a rebinding attack cannot reach us.
fn is_acceptable_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => match tail.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None if tail.is_empty() => (v6, None),
                None => return false,
            },
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let name_ok = if host.starts_with('[') {
        name.parse::<Ipv6Addr>().is_ok()
    } else {
        name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok()
    };
    port_ok && name_ok
}

/// A listener that keeps at most [`MAX_CONNECTIONS`] connections open.
struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    lifetime: Duration,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        // TcpListener's own `accept` retries (with a pause) on errors.
        let (io, peer) = axum::serve::Listener::accept(&mut self.inner).await;
        let io = LimitedIo {
            io,
            deadline: Box::pin(tokio::time::sleep(self.lifetime)),
            _permit: permit,
        };
        (io, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds a slot of the listener and fails once its
/// lifetime is over.
struct LimitedIo {
    io: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl LimitedIo {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_exceeded() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "control connection exceeded its lifetime",
    )
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_exceeded()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_exceeded()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_exceeded()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_exceeded()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------- client ---

/// Why a request to the control API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlClientError {
    /// Nothing listens at the address.
    #[error(
        "cannot reach the control API at {addr}: connection refused \
         (is the node running with --control {addr}?)"
    )]
    NotRunning {
        /// The address we tried.
        addr: SocketAddr,
    },
    /// The TCP connection was not established within [`CONNECT_TIMEOUT`].
    #[error(
        "timed out connecting to the control API at {addr} \
         (is the node running with --control {addr}?)"
    )]
    ConnectTimeout {
        /// The address we tried.
        addr: SocketAddr,
    },
    /// Any other failure to connect.
    #[error("cannot connect to the control API at {addr}: {source}")]
    Connect {
        /// The address we tried.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The connection failed while sending the request or reading the answer.
    #[error("I/O error talking to the control API at {addr}: {source}")]
    Io {
        /// The address we talked to.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The answer did not complete within [`RESPONSE_TIMEOUT`].
    #[error("the control API at {addr} did not answer within {}s", RESPONSE_TIMEOUT.as_secs())]
    Timeout {
        /// The address we talked to.
        addr: SocketAddr,
    },
    /// The answer exceeded [`MAX_RESPONSE_BYTES`].
    #[error("the control API's answer exceeds {} bytes", MAX_RESPONSE_BYTES)]
    TooLarge,
    /// The answer was not HTTP/1.x as we understand it.
    #[error("malformed HTTP response from the control API: {0}")]
    Malformed(&'static str),
    /// The server answered with a status other than 200.
    #[error("the control API answered HTTP {status} for {path}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The path we asked for.
        path: String,
        /// The server's error message (sanitized), if any.
        message: String,
    },
    /// The body was not the JSON we expected.
    #[error("cannot decode the control API's answer for {path}: {source}")]
    Decode {
        /// The path we asked for.
        path: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The path cannot be sent in a request line.
    #[error("invalid control API path {0:?}: it must start with '/' and be visible ASCII")]
    InvalidPath(String),
}

/// Minimal HTTP/1.1 GET client for our own loopback control API.
///
/// Connects within [`CONNECT_TIMEOUT`], sends a `Connection: close` request,
/// reads the whole answer (at most [`MAX_RESPONSE_BYTES`], within
/// [`RESPONSE_TIMEOUT`]), requires status 200 and decodes the body as `T`.
pub async fn get_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, ControlClientError> {
    let (status, body) = http_get(addr, path).await?;
    if status != 200 {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| sanitize(&e.error, 200))
            .unwrap_or_else(|_| "(no error message)".to_owned());
        return Err(ControlClientError::Status {
            status,
            path: path.to_owned(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|source| ControlClientError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// Fetches status, nodes and circuits from the control API at `addr` and
/// renders them with [`render_status`]: the whole of `veilnet status`.
pub async fn status_report(addr: SocketAddr) -> Result<String, ControlClientError> {
    let status: StatusView = get_json(addr, "/v1/status").await?;
    let nodes: Vec<NodeView> = get_json(addr, "/v1/nodes").await?;
    let circuits: Vec<CircuitView> = get_json(addr, "/v1/circuits").await?;
    Ok(render_status(&status, &nodes, &circuits))
}

/// Sends one GET and returns the status code and the decoded body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), ControlClientError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ControlClientError::InvalidPath(path.to_owned()));
    }
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_elapsed) => return Err(ControlClientError::ConnectTimeout { addr }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ControlClientError::NotRunning { addr })
        }
        Ok(Err(source)) => return Err(ControlClientError::Connect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let cap = u64::try_from(MAX_RESPONSE_BYTES).unwrap_or(u64::MAX);
        (&mut stream).take(cap + 1).read_to_end(&mut raw).await?;
        Ok::<_, io::Error>(raw)
    };
    let raw = match tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await {
        Err(_elapsed) => return Err(ControlClientError::Timeout { addr }),
        Ok(Err(source)) => return Err(ControlClientError::Io { addr, source }),
        Ok(Ok(raw)) => raw,
    };
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(ControlClientError::TooLarge);
    }
    parse_response(&raw)
}

/// Parses a complete HTTP/1.x response (the connection has been read to its
/// end) into its status code and body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ControlClientError> {
    use ControlClientError::Malformed;

    let head_end = find(raw, b"\r\n\r\n").ok_or(Malformed("no end of header"))?;
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| Malformed("header is not UTF-8"))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");

    let status_line = lines.next().ok_or(Malformed("empty response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Malformed("not an HTTP/1.x response"));
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("bad status code"));
    }
    let status: u16 = code.parse().map_err(|_| Malformed("bad status code"))?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(Malformed("bad header line"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|old| old != len) {
                return Err(Malformed("conflicting Content-Length"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(Malformed("unsupported Transfer-Encoding"));
            }
            chunked = true;
        }
    }

    // Transfer-Encoding overrides Content-Length (RFC 9112, 6.3).
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or(Malformed("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body; trailers after the last chunk are ignored.
fn decode_chunked(mut input: &[u8]) -> Result<Vec<u8>, ControlClientError> {
    use ControlClientError::Malformed;

    let mut body = Vec::new();
    loop {
        let line_end = find(input, b"\r\n").ok_or(Malformed("truncated chunk size"))?;
        let line =
            std::str::from_utf8(&input[..line_end]).map_err(|_| Malformed("bad chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        if size_hex.is_empty() || size_hex.len() > 8 {
            return Err(Malformed("bad chunk size"));
        }
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| Malformed("bad chunk size"))?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = input.get(..size).ok_or(Malformed("truncated chunk"))?;
        body.extend_from_slice(data);
        input = input
            .get(size..)
            .and_then(|after| after.strip_prefix(b"\r\n"))
            .ok_or(Malformed("chunk not followed by CRLF"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------- rendering ---

/// Renders the `veilnet status` report: a status header, a table of nodes
/// (short peer id, roles, region, bandwidth, first link address; `*` marks
/// this node) and a table of circuits (id, state, age, streams, isolation
/// group, hops as short ids joined by " → ").
///
/// Strings that other nodes advertise (region, version, addresses) are
/// stripped of control characters and truncated so a hostile descriptor
/// cannot inject terminal escapes or wreck the layout.
pub fn render_status(status: &StatusView, nodes: &[NodeView], circuits: &[CircuitView]) -> String {
    let mut out = String::new();
    let off = || "off".to_owned();
    out.push_str(&format!(
        "veilnet {} — node {}\n",
        sanitize(&status.version, 32),
        sanitize(&status.peer_id, 80)
    ));
    let fields = [
        ("uptime", human_duration(status.uptime_secs)),
        ("known nodes", status.known_nodes.to_string()),
        ("open circuits", status.open_circuits.to_string()),
        (
            "socks",
            status
                .socks
                .as_deref()
                .map_or_else(off, |s| sanitize(s, 64)),
        ),
        (
            "http proxy",
            status
                .http_proxy
                .as_deref()
                .map_or_else(off, |s| sanitize(s, 64)),
        ),
    ];
    for (name, value) in fields {
        out.push_str(&format!("  {name:<14}{value}\n"));
    }

    out.push_str(&format!("\nNodes ({})\n", nodes.len()));
    if nodes.is_empty() {
        out.push_str("  (none known)\n");
    } else {
        let rows = nodes
            .iter()
            .map(|n| {
                let mark = if n.is_self { "*" } else { " " };
                vec![
                    format!("{mark}{}", short_id(&n.peer_id)),
                    roles(n),
                    or_dash(sanitize(&n.region, 16)),
                    human_bandwidth(n.bandwidth),
                    n.link_addrs
                        .first()
                        .map_or_else(|| "-".to_owned(), |a| sanitize(a, 48)),
                ]
            })
            .collect();
        out.push_str(&table(
            &[" PEER", "ROLES", "REGION", "BANDWIDTH", "ADDRESS"],
            rows,
        ));
    }

    out.push_str(&format!("\nCircuits ({})\n", circuits.len()));
    if circuits.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows = circuits
            .iter()
            .map(|c| {
                let hops: Vec<String> = c.hops.iter().map(|h| short_id(h)).collect();
                vec![
                    c.id.to_string(),
                    sanitize(&c.state, 12),
                    human_duration(c.age_secs),
                    c.streams.to_string(),
                    c.isolation
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |i| sanitize(i, 16)),
                    or_dash(hops.join(" → ")),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "STATE", "AGE", "STREAMS", "ISOLATION", "HOPS"],
            rows,
        ));
    }
    out
}

/// Left-aligned columns separated by two spaces, indented by two, with no
/// trailing whitespace.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::from("  ");
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// First 12 characters of a peer id followed by "…" (whole id if shorter).
fn short_id(peer_id: &str) -> String {
    let clean = sanitize(peer_id, usize::MAX);
    if clean.chars().count() <= 12 {
        clean
    } else {
        let mut short: String = clean.chars().take(12).collect();
        short.push('…');
        short
    }
}

fn roles(node: &NodeView) -> String {
    match (node.relay, node.exit) {
        (true, true) => "relay,exit",
        (true, false) => "relay",
        (false, true) => "exit",
        (false, false) => "client",
    }
    .to_owned()
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// Replaces control characters (terminal escapes included) with `?` and
/// truncates to `max` characters, marking the cut with "…".
fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// Bytes per second in decimal units: "950 B/s", "12.5 MB/s".
fn human_bandwidth(bytes_per_sec: u64) -> String {
    const UNITS: [&str; 6] = ["kB/s", "MB/s", "GB/s", "TB/s", "PB/s", "EB/s"];
    if bytes_per_sec < 1000 {
        return format!("{bytes_per_sec} B/s");
    }
    // Precision loss above 2^53 B/s is irrelevant for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes_per_sec as f64 / 1000.0;
    let mut unit = 0;
    // Round first so 999_999 B/s shows as "1.0 MB/s", not "1000.0 kB/s".
    while (value * 10.0).round() >= 10_000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds as "42s", "1m03s", "2h05m07s" or "3d04h"; "-" if not a sane value.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    // Saturating float-to-int cast; sub-second precision is not shown.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = secs as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

// ----------------------------------------------------------------- tests ---

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const PEER_A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const PEER_B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    const PEER_C: &str = "12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";

    struct FakeSource;

    fn status() -> StatusView {
        StatusView {
            peer_id: PEER_A.into(),
            version: "0.1.0".into(),
            uptime_secs: 3723.5,
            known_nodes: 3,
            open_circuits: 1,
            socks: Some("127.0.0.1:9050".into()),
            http_proxy: None,
        }
    }

    fn nodes() -> Vec<NodeView> {
        let node = |peer: &str, relay, exit, bandwidth, is_self| NodeView {
            peer_id: peer.into(),
            relay,
            exit,
            link_addrs: vec!["192.0.2.1:7000".into(), "192.0.2.1:7001".into()],
            p2p_addrs: vec!["/ip4/192.0.2.1/tcp/4001".into()],
            region: "eu".into(),
            bandwidth,
            version: "0.1.0".into(),
            is_self,
        };
        vec![
            node(PEER_A, true, false, 12_500_000, true),
            node(PEER_B, true, true, 999, false),
            node(PEER_C, false, true, 2_000, false),
        ]
    }

    fn circuits() -> Vec<CircuitView> {
        vec![
            CircuitView {
                id: 7,
                state: "open".into(),
                age_secs: 63.2,
                hops: vec![PEER_A.into(), PEER_B.into(), PEER_C.into()],
                streams: 2,
                isolation: Some("iso-3".into()),
                build_ms: 4.5,
            },
            CircuitView {
                id: 8,
                state: "building".into(),
                age_secs: 0.4,
                hops: vec![],
                streams: 0,
                isolation: None,
                build_ms: 0.0,
            },
        ]
    }

    impl ControlSource for FakeSource {
        fn status(&self) -> StatusView {
            status()
        }
        fn nodes(&self) -> Vec<NodeView> {
            nodes()
        }
        fn circuits(&self) -> Vec<CircuitView> {
            circuits()
        }
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// Starts a server; dropping the returned sender shuts it down.
    async fn start() -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        start_with_lifetime(CONNECTION_LIFETIME).await
    }

    async fn start_with_lifetime(
        lifetime: Duration,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let (addr, task) =
            serve_with_lifetime(loopback(), Arc::new(FakeSource), shutdown, lifetime)
                .await
                .unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        (addr, tx, task)
    }

    /// Sends raw bytes and returns the parsed status, the raw head and body.
    async fn raw(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        let head_end = find(&buf, b"\r\n\r\n").unwrap();
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let (status, body) = parse_response(&buf).unwrap();
        (status, head.to_ascii_lowercase(), body)
    }

    #[tokio::test]
    async fn endpoints_return_the_source_views() {
        let (addr, tx, task) = start().await;
        let s: StatusView = get_json(addr, "/v1/status").await.unwrap();
        assert_eq!(s, status());
        let n: Vec<NodeView> = get_json(addr, "/v1/nodes").await.unwrap();
        assert_eq!(n, nodes());
        let c: Vec<CircuitView> = get_json(addr, "/v1/circuits").await.unwrap();
        assert_eq!(c, circuits());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops after shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn responses_are_json_with_content_length() {
        let (addr, _tx, _task) = start().await;
        let req = format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (code, head, body) = raw(addr, &req).await;
        assert_eq!(code, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("content-length:"), "{head}");
        let s: StatusView = serde_json::from_slice(&body).unwrap();
        assert_eq!(s, status());
    }

    #[tokio::test]
    async fn unknown_path_is_a_json_404() {
        let (addr, _tx, _task) = start().await;
        let err = get_json::<serde_json::Value>(addr, "/v1/nope")
            .await
            .unwrap_err();
        match err {
            ControlClientError::Status {
                status, message, ..
            } => {
                assert_eq!(status, 404);
                assert_eq!(message, "not found");
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[tokio::test]
    async fn other_methods_are_a_json_405() {
        let (addr, _tx, _task) = start().await;
        let req = format!(
            "POST /v1/status HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, head, body) = raw(addr, &req).await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get,head"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let err: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(err.error, "method not allowed");
    }

    #[tokio::test]
    async fn browser_style_requests_are_refused() {
        let (addr, _tx, _task) = start().await;
        let rebinding =
            "GET /v1/circuits HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n";
        assert_eq!(raw(addr, rebinding).await.0, 403);
        let cross_origin = format!(
            "GET /v1/circuits HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw(addr, &cross_origin).await.0, 403);
        let localhost = format!(
            "GET /v1/circuits HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        );
        assert_eq!(raw(addr, &localhost).await.0, 200);
    }

    #[tokio::test]
    async fn stalled_client_cannot_hold_up_shutdown() {
        let lifetime = Duration::from_millis(300);
        let (addr, tx, task) = start_with_lifetime(lifetime).await;
        // Half a request, never finished.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /v1/status HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        tokio::time::timeout(lifetime * 10, task)
            .await
            .expect("server stops within the connection lifetime")
            .unwrap();
        let mut rest = Vec::new();
        // The server has closed (or reset) the stalled connection.
        let _ = stalled.read_to_end(&mut rest).await;
    }

    #[test]
    fn host_check() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9051",
            "[::1]:9051",
            "[::1]",
            "LocalHost:1",
        ] {
            assert!(is_acceptable_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1:x",
            "[::1",
            "[::1]x",
            "::1",
            "",
            "127.0.0.1:99999",
        ] {
            assert!(!is_acceptable_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn connection_refused_says_how_to_fix_it() {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = get_json::<StatusView>(addr, "/v1/status")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ControlClientError::NotRunning { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("is the node running with --control {addr}?")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn paths_cannot_inject_headers() {
        let err = get_json::<StatusView>(loopback(), "/v1/status HTTP/1.1\r\nX: y")
            .await
            .unwrap_err();
        assert!(matches!(err, ControlClientError::InvalidPath(_)), "{err}");
    }

    #[tokio::test]
    async fn oversized_response_is_refused() {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..17 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let err = get_json::<StatusView>(addr, "/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(err, ControlClientError::TooLarge), "{err}");
    }

    #[test]
    fn parses_chunked_and_read_to_close_bodies() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        let close = b"HTTP/1.0 200 OK\r\n\r\n[]";
        assert_eq!(parse_response(close).unwrap(), (200, b"[]".to_vec()));
        let sized = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}junk";
        assert_eq!(parse_response(sized).unwrap(), (404, b"{}".to_vec()));
    }

    #[test]
    fn rejects_malformed_responses() {
        let bad: [&[u8]; 8] = [
            b"",
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ];
        for raw in bad {
            assert!(
                matches!(parse_response(raw), Err(ControlClientError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn render_shows_short_ids_arrows_and_units() {
        let out = render_status(&status(), &nodes(), &circuits());
        println!("{out}");
        assert!(out.contains(PEER_A), "status header names this node");
        assert!(out.contains("*12D3KooWAAAA…"));
        assert!(out.contains("12D3KooWAAAA… → 12D3KooWBBBB… → 12D3KooWCCCC…"));
        assert!(out.contains("12.5 MB/s"));
        assert!(out.contains("999 B/s"));
        assert!(out.contains("2.0 kB/s"));
        assert!(out.contains("relay,exit"));
        assert!(out.contains("1m03s"));
        assert!(out.contains("1h02m03s"));
        assert!(out.contains("192.0.2.1:7000"));
        assert!(
            !out.contains("192.0.2.1:7001"),
            "only the first link address"
        );
        assert!(out.contains("off"), "disabled HTTP proxy");
        assert!(out.lines().all(|l| l == l.trim_end()), "no trailing spaces");
    }

    #[test]
    fn render_neutralises_hostile_strings() {
        let mut hostile = nodes();
        hostile[1].region = "\u{1b}[2J\u{1b}]0;pwned\u{7}".into();
        hostile[1].link_addrs = vec!["x".repeat(500)];
        let out = render_status(&status(), &hostile, &[]);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.lines().all(|l| l.chars().count() < 160));
        assert!(out.contains("(none)"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bandwidth(0), "0 B/s");
        assert_eq!(human_bandwidth(1_000), "1.0 kB/s");
        assert_eq!(human_bandwidth(999_999), "1.0 MB/s");
        assert_eq!(human_bandwidth(u64::MAX), "18.4 EB/s");
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(60.0), "1m00s");
        assert_eq!(human_duration(90_061.0), "1d01h");
        assert_eq!(human_duration(f64::NAN), "-");
        assert_eq!(human_duration(-1.0), "-");
        assert_eq!(short_id("short"), "short");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé…");
    }
}
