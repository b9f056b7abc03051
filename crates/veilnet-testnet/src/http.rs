//! An HTTP target and the clients that fetch from it through the network,
//! both on hyper (axum serves the target).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Path;
use axum::response::Response;
use axum::routing::get as route_get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use veilnet_cell::TargetAddr;

use crate::socks5;

/// What the target repeats for `GET /marker/<n>`: plaintext that must never
/// be seen on a link.
pub const MARKER: &[u8; 32] = b"VEILNET-PLAINTEXT-MARKER-0123456";

/// The pattern of `GET /bytes/<n>`: 1 MiB of xorshift output, repeated.
static BLOCK: LazyLock<Bytes> = LazyLock::new(|| {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
});

static MARKER_BLOCK: LazyLock<Bytes> = LazyLock::new(|| MARKER.repeat(2048).into());

/// The path of `n` pattern bytes.
pub fn bytes_path(n: u64) -> String {
    format!("/bytes/{n}")
}

/// The first `n` bytes of the pattern that `GET /bytes/<n>` serves.
pub fn body(n: usize) -> Vec<u8> {
    BLOCK.iter().copied().cycle().take(n).collect()
}

/// SHA-256 of [`body`]`(n)`, without holding it in memory.
pub fn body_sha256(n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(BLOCK.len() as u64);
        h.update(&BLOCK[..k as usize]);
        left -= k;
    }
    h.finalize().into()
}

/// `n` bytes of `block` repeated, streamed with a `Content-Length`.
fn repeated(block: &'static LazyLock<Bytes>, n: u64) -> Response {
    let block: Bytes = (**block).clone();
    let chunks = futures::stream::unfold(n, move |left| {
        let block = block.clone();
        async move {
            let k = left.min(block.len() as u64);
            (k > 0).then(|| (Ok::<_, Infallible>(block.slice(..k as usize)), left - k))
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(CONTENT_LENGTH, n.into());
    response
}

/// Starts the target on 127.0.0.1: `GET /bytes/<n>` answers [`body`]`(n)`,
/// `GET /marker/<n>` answers `n` bytes of [`MARKER`]s. Runs until the
/// runtime stops.
pub async fn target() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/bytes/{n}",
            route_get(|Path(n): Path<u64>| async move { repeated(&BLOCK, n) }),
        )
        .route(
            "/marker/{n}",
            route_get(|Path(n): Path<u64>| async move { repeated(&MARKER_BLOCK, n) }),
        );
    // Small answers go out at once, as any real server sends them.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, or the SOCKS5 exchange, failed.
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The answer was not 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body was not the one asked for.
    #[error("body of {got} bytes differs from the {want} bytes asked for")]
    Corrupt {
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// The fetch did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// What a GET downloaded.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The status code.
    pub status: u16,
    /// Body bytes.
    pub len: u64,
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// When the response head arrived (time to first byte).
    pub head_at: Instant,
}

/// GETs `path` over `io` (a connection to the target, direct or through a
/// proxy) and hashes the body as it arrives.
pub async fn get<S>(io: S, path: &str) -> Result<Fetched, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    let request = Request::get(path)
        .header(HOST, "target")
        .body(Empty::<Bytes>::new())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fetched = async {
        let response = sender.send_request(request).await?;
        let head_at = Instant::now();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut h = Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                h.update(&data);
                len += data.len() as u64;
            }
        }
        Ok(Fetched {
            status,
            len,
            sha256: h.finalize().into(),
            head_at,
        })
    };
    // The connection is driven in this task, next to the request: no task
    // hop between writing the request and reading the answer.
    tokio::pin!(fetched, connection);
    tokio::select! {
        biased;
        r = &mut fetched => r,
        // The connection ended first (closed or failed): the request
        // finishes with what arrived, or fails.
        _ = &mut connection => fetched.await,
    }
}

/// GETs [`body`]`(n)` from `target` through the SOCKS5 proxy at `proxy` and
/// checks every byte.
pub async fn download_once(
    proxy: SocketAddr,
    target: SocketAddr,
    n: u64,
) -> Result<(), FetchError> {
    let s = socks5::open(proxy, &TargetAddr::Ip(target), None).await?;
    let f = get(s, &bytes_path(n)).await?;
    if f.status != 200 {
        return Err(FetchError::Status(f.status));
    }
    if f.len != n || f.sha256 != body_sha256(n) {
        return Err(FetchError::Corrupt {
            got: f.len,
            want: n,
        });
    }
    Ok(())
}

/// [`download_once`], retried while it fails (circuits may still be
/// building) for up to `limit`; each try has a minute. A corrupt body is not
/// retried.
pub async fn download(
    proxy: SocketAddr,
    target: SocketAddr,
    n: u64,
    limit: Duration,
) -> Result<(), FetchError> {
    const TRY: Duration = Duration::from_secs(60);
    let start = Instant::now();
    loop {
        let err = match tokio::time::timeout(TRY, download_once(proxy, target, n)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e @ FetchError::Corrupt { .. })) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => FetchError::Timeout(TRY),
        };
        if start.elapsed() >= limit {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends CONNECT `authority` to the HTTP proxy at `proxy`. Returns the
/// status, and on 200 the tunnel.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
) -> Result<(u16, Option<TokioIo<Upgraded>>), FetchError> {
    let tcp = TcpStream::connect(proxy).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
    let connection = tokio::spawn(connection.with_upgrades());
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != StatusCode::OK {
        connection.abort();
        return Ok((status.as_u16(), None));
    }
    let tunnel = hyper::upgrade::on(response).await?;
    Ok((status.as_u16(), Some(TokioIo::new(tunnel))))
}
