//! The control API server: axum on a bounded listener.

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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::view::{
    CircuitView, ControlSource, EquivocationView, ErrorBody, GuardView, NodeView, StatusView,
};

/// Most control connections served at once; further clients wait in the
/// kernel's accept backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Longest a control connection may stay open, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);

fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.to_owned(),
        }),
    )
        .into_response()
}

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
pub(crate) async fn serve_with_lifetime(
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
        .route("/v1/equivocations", get(get_equivocations))
        .route("/v1/guards", get(get_guards))
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

async fn get_equivocations(State(source): State<SharedSource>) -> Json<Vec<EquivocationView>> {
    Json(source.equivocations())
}

async fn get_guards(State(source): State<SharedSource>) -> Json<Vec<GuardView>> {
    Json(source.guards())
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

#[cfg(test)]
mod tests {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper::{Method, Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::client::{get_json, send, ControlClientError};
    use crate::fixtures::{circuits, equivocations, guards, nodes, status, FakeSource};

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

    /// Sends `method path` with the given headers and returns the answer.
    async fn request(
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Bytes> {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        send(addr, req.body(Empty::new()).unwrap()).await.unwrap()
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
        let e: Vec<EquivocationView> = get_json(addr, "/v1/equivocations").await.unwrap();
        assert_eq!(e, equivocations());
        let g: Vec<GuardView> = get_json(addr, "/v1/guards").await.unwrap();
        assert_eq!(g, guards());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops after shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn responses_are_json_with_content_length() {
        let (addr, _tx, _task) = start().await;
        let host = addr.to_string();
        let r = request(addr, Method::GET, "/v1/status", &[("host", &host)]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert!(r.headers().contains_key(header::CONTENT_LENGTH), "{r:?}");
        let s: StatusView = serde_json::from_slice(r.body()).unwrap();
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
        let host = addr.to_string();
        let r = request(addr, Method::POST, "/v1/status", &[("host", &host)]).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let err: ErrorBody = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(err.error, "method not allowed");
    }

    #[tokio::test]
    async fn browser_style_requests_are_refused() {
        let (addr, _tx, _task) = start().await;
        let get = |headers: Vec<(&'static str, String)>| async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            request(addr, Method::GET, "/v1/circuits", &headers)
                .await
                .status()
        };
        let rebinding = vec![("host", "evil.example:80".to_owned())];
        assert_eq!(get(rebinding).await, StatusCode::FORBIDDEN);
        let cross_origin = vec![
            ("host", addr.to_string()),
            ("origin", "http://evil.example".to_owned()),
        ];
        assert_eq!(get(cross_origin).await, StatusCode::FORBIDDEN);
        let localhost = vec![("host", format!("localhost:{}", addr.port()))];
        assert_eq!(get(localhost).await, StatusCode::OK);
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
}
