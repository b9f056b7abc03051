//! The client of `veilnet status`: one GET with hyper's HTTP/1.1 client.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::render::{render_status, sanitize};
use crate::view::{CircuitView, ErrorBody, NodeView, StatusView};

/// How long [`get_json`] waits for the TCP connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`get_json`] waits for the whole exchange once connected.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response body [`get_json`] accepts. (hyper bounds the head.)
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

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
    /// The exchange failed: the connection broke, or the answer was not
    /// HTTP/1.x.
    #[error("HTTP error talking to the control API at {addr}: {source}")]
    Http {
        /// The address we talked to.
        addr: SocketAddr,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The answer did not complete within [`RESPONSE_TIMEOUT`].
    #[error("the control API at {addr} did not answer within {}s", RESPONSE_TIMEOUT.as_secs())]
    Timeout {
        /// The address we talked to.
        addr: SocketAddr,
    },
    /// The body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("the control API's answer exceeds {} bytes", MAX_RESPONSE_BYTES)]
    TooLarge,
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
    /// The path is not an origin-form request target (`/` and a path).
    #[error("invalid control API path {0:?}: it must start with '/' and be a valid URI path")]
    InvalidPath(String),
}

/// GETs `path` from the control API at `addr`, requires status 200 and
/// decodes the body as `T`.
///
/// Connects within [`CONNECT_TIMEOUT`], finishes within [`RESPONSE_TIMEOUT`]
/// and reads at most [`MAX_RESPONSE_BYTES`] of body.
pub async fn get_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, ControlClientError> {
    let uri = origin_form(path)?;
    let request = Request::get(uri)
        .header(HOST, addr.to_string())
        .header(ACCEPT, "application/json")
        .body(Empty::new())
        // The URI is checked and both header values are valid.
        .expect("a GET request with a checked URI is valid");
    let response = send(addr, request).await?;
    let status = response.status();
    let body = response.into_body();
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| sanitize(&e.error, 200))
            .unwrap_or_else(|_| "(no error message)".to_owned());
        return Err(ControlClientError::Status {
            status: status.as_u16(),
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

/// `path` as a request target: a URI with a path and no scheme or authority.
fn origin_form(path: &str) -> Result<Uri, ControlClientError> {
    path.parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.authority().is_none() && path.starts_with('/'))
        .ok_or_else(|| ControlClientError::InvalidPath(path.to_owned()))
}

/// Sends one request on a new connection to `addr` and reads the whole
/// answer, within the timeouts and the body bound.
pub(crate) async fn send(
    addr: SocketAddr,
    request: Request<Empty<Bytes>>,
) -> Result<Response<Bytes>, ControlClientError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_elapsed) => return Err(ControlClientError::ConnectTimeout { addr }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ControlClientError::NotRunning { addr })
        }
        Ok(Err(source)) => return Err(ControlClientError::Connect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let http = |source| ControlClientError::Http { addr, source };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    // The connection task drives the socket; it is stopped below whatever
    // happens, so a server that never finishes cannot keep it alive.
    let connection = tokio::spawn(connection);
    let exchange = async {
        let response = sender.send_request(request).await.map_err(http)?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => http(*e),
                // The only other error `Limited` makes is the limit's.
                Err(e) => {
                    debug_assert!(e.is::<LengthLimitError>(), "{e}");
                    ControlClientError::TooLarge
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(head, body))
    };
    let result = tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await;
    connection.abort();
    result.unwrap_or(Err(ControlClientError::Timeout { addr }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// A server that answers one connection, after its first read, with
    /// `head` and then `body` written `times` times, then closes.
    async fn canned(head: &'static [u8], body: &'static [u8], times: usize) -> SocketAddr {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            if s.write_all(head).await.is_err() {
                return;
            }
            for _ in 0..times {
                if s.write_all(body).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    /// A server that answers one request with `response`, then closes.
    async fn answering(response: &'static [u8]) -> SocketAddr {
        canned(response, b"", 0).await
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
        for path in ["/v1/status HTTP/1.1\r\nX: y", "v1/status", "http://x/v1"] {
            let err = get_json::<StatusView>(loopback(), path).await.unwrap_err();
            assert!(matches!(err, ControlClientError::InvalidPath(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn oversized_response_is_refused() {
        static MIB: [u8; 1 << 20] = [b'x'; 1 << 20];
        // No length: the body runs until the server closes, 17 MiB later.
        let addr = canned(b"HTTP/1.1 200 OK\r\n\r\n", &MIB, 17).await;
        let err = get_json::<StatusView>(addr, "/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(err, ControlClientError::TooLarge), "{err}");
    }

    #[tokio::test]
    async fn decodes_chunked_and_read_to_close_bodies() {
        let chunked = answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await;
        let v: serde_json::Value = get_json(chunked, "/").await.unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        let close = answering(b"HTTP/1.0 200 OK\r\n\r\n[]").await;
        let v: Vec<u8> = get_json(close, "/").await.unwrap();
        assert!(v.is_empty());
    }

    #[tokio::test]
    async fn malformed_responses_are_http_errors() {
        for raw in [
            &b"SSH-2.0-x\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        ] {
            let addr = answering(raw).await;
            let err = get_json::<serde_json::Value>(addr, "/").await.unwrap_err();
            assert!(
                matches!(err, ControlClientError::Http { .. }),
                "{}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[tokio::test]
    async fn error_bodies_are_sanitized() {
        let addr = answering(
            b"HTTP/1.1 500 Oops\r\nContent-Length: 30\r\n\r\n{\"error\":\"\\u001b[2Jbad\\u0007\"}",
        )
        .await;
        match get_json::<serde_json::Value>(addr, "/v1/status").await {
            Err(ControlClientError::Status {
                status, message, ..
            }) => {
                assert_eq!(status, 500);
                assert_eq!(message, "?[2Jbad?");
            }
            other => panic!("{other:?}"),
        }
    }
}
