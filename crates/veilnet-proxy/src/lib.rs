#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;
use veilnet_cell::{EndReason, TargetAddr};
use veilnet_circmgr::{CircuitManager, ConnectError, Isolation};
use veilnet_socks::http_connect;
use veilnet_socks::socks5::{self, Action, ReplyCode};

/// Time a client has to finish its proxy handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Local proxy connections served at once.
const MAX_CLIENTS: usize = 4096;

fn isolation(c: Option<&veilnet_socks::Credentials>) -> Isolation {
    c.map(|c| Isolation::from_credentials(&c.username, &c.password))
        .unwrap_or(Isolation::NONE)
}

/// The SOCKS5 reply code for a failure (RFC 1928 section 6).
pub fn socks_code(e: &ConnectError) -> ReplyCode {
    match e {
        ConnectError::NoExit => ReplyCode::NotAllowedByRuleset,
        ConnectError::Refused(r) => match r {
            EndReason::ExitPolicy => ReplyCode::NotAllowedByRuleset,
            EndReason::ConnectRefused => ReplyCode::ConnectionRefused,
            EndReason::NetUnreachable => ReplyCode::NetworkUnreachable,
            EndReason::HostUnreachable | EndReason::ResolveFailed => ReplyCode::HostUnreachable,
            EndReason::Timeout => ReplyCode::TtlExpired,
            _ => ReplyCode::GeneralFailure,
        },
        ConnectError::NotEnoughRelays(_)
        | ConnectError::NoUsableGuard(_)
        | ConnectError::Circuit(_) => ReplyCode::GeneralFailure,
    }
}

/// The HTTP status for a failure.
pub fn http_status(e: &ConnectError) -> (u16, &'static str) {
    match socks_code(e) {
        ReplyCode::NotAllowedByRuleset => (403, "Forbidden by exit policy"),
        ReplyCode::TtlExpired => (504, "Gateway Timeout"),
        ReplyCode::HostUnreachable | ReplyCode::NetworkUnreachable => (502, "Target unreachable"),
        ReplyCode::ConnectionRefused => (502, "Connection refused by target"),
        _ => (503, "No circuit available"),
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, circuits: Arc<CircuitManager>, serve: F)
where
    F: Fn(TcpStream, Arc<CircuitManager>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("too many proxy clients; refusing one");
            continue;
        };
        let fut = serve(tcp, circuits.clone());
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

/// Serves SOCKS5 clients until the listener fails.
pub async fn serve_socks(listener: TcpListener, circuits: Arc<CircuitManager>) {
    accept_loop(listener, circuits, socks_client).await
}

/// Serves HTTP CONNECT clients until the listener fails.
pub async fn serve_http(listener: TcpListener, circuits: Arc<CircuitManager>) {
    accept_loop(listener, circuits, http_client).await
}

async fn socks_client(mut tcp: TcpStream, circuits: Arc<CircuitManager>) {
    let mut hs = socks5::Handshake::new();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let (used, action) = match hs.feed(&buf) {
                Ok(x) => x,
                Err(e) => {
                    debug!("refusing a SOCKS client: {e}");
                    if let Some(reply) = e.reply() {
                        let _ = tcp.write_all(&reply).await;
                    }
                    return None;
                }
            };
            buf.drain(..used);
            match action {
                Action::NeedMore => {
                    let n = tcp.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > socks5::MAX_MESSAGE_LEN * 2 {
                        return None;
                    }
                }
                Action::Reply(bytes) => tcp.write_all(&bytes).await.ok()?,
                Action::Request(req) => return Some(req),
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(req) = request else { return };
    carry(
        tcp,
        &circuits,
        req.target,
        req.credentials,
        buf,
        |r| match r {
            Ok(()) => socks5::reply_bytes(ReplyCode::Succeeded, None),
            Err(e) => socks5::reply_bytes(socks_code(e), None),
        },
    )
    .await;
}

async fn http_client(mut tcp: TcpStream, circuits: Arc<CircuitManager>) {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            match http_connect::parse_request(&buf) {
                Ok(Some(x)) => return Some(x),
                Ok(None) => {}
                Err(e) => {
                    debug!("refusing an HTTP proxy client: {e}");
                    let _ = tcp
                        .write_all(&http_connect::response_bytes(e.status(), &e.to_string()))
                        .await;
                    return None;
                }
            }
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .ok()
    .flatten();
    let Some((head_len, req)) = request else {
        return;
    };
    buf.drain(..head_len);
    carry(
        tcp,
        &circuits,
        req.target,
        req.credentials,
        buf,
        |r| match r {
            Ok(()) => http_connect::response_bytes(200, "Connection established"),
            Err(e) => {
                let (status, reason) = http_status(e);
                http_connect::response_bytes(status, reason)
            }
        },
    )
    .await;
}

/// Asks for a stream to `target`, answers the client in its protocol's
/// words (`answer`), and on success joins the socket to the stream; `early`
/// is what the client sent after its request.
async fn carry(
    mut tcp: TcpStream,
    circuits: &CircuitManager,
    target: TargetAddr,
    credentials: Option<veilnet_socks::Credentials>,
    early: Vec<u8>,
    answer: impl Fn(Result<(), &ConnectError>) -> Vec<u8>,
) {
    match circuits
        .connect(&target, isolation(credentials.as_ref()))
        .await
    {
        Ok(stream) => {
            if tcp.write_all(&answer(Ok(()))).await.is_ok() {
                stream.run(tcp, early).await;
            }
        }
        Err(e) => {
            debug!("proxy request failed: {e}");
            let _ = tcp.write_all(&answer(Err(&e))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_each_protocols_words() {
        let refused = |r| ConnectError::Refused(r);
        for (e, code, status) in [
            (ConnectError::NoExit, ReplyCode::NotAllowedByRuleset, 403),
            (
                refused(EndReason::ExitPolicy),
                ReplyCode::NotAllowedByRuleset,
                403,
            ),
            (
                refused(EndReason::ConnectRefused),
                ReplyCode::ConnectionRefused,
                502,
            ),
            (
                refused(EndReason::ResolveFailed),
                ReplyCode::HostUnreachable,
                502,
            ),
            (refused(EndReason::Timeout), ReplyCode::TtlExpired, 504),
        ] {
            assert_eq!(socks_code(&e), code, "{e}");
            assert_eq!(http_status(&e).0, status, "{e}");
        }
    }
}
