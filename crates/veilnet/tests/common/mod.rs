//! Helpers shared by the integration tests: a local HTTP-ish target, a raw
//! SOCKS5 client, a panic counter for background tasks and a log capture.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deterministic, incompressible-looking test bytes.
pub fn body_byte(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 29) as u8 ^ (i >> 13) as u8
}

/// The body the target serves for `GET /<n>`.
pub fn expected_body(n: usize) -> Vec<u8> {
    (0..n).map(body_byte).collect()
}

/// Largest body the target serves.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A tiny HTTP/1.1 server on loopback: `GET /<n>` answers `n` bytes of
/// [`body_byte`] and closes. One request per connection. Never panics.
pub async fn http_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test target");
    let addr = l.local_addr().expect("target address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                    if req.len() > 8192 {
                        return;
                    }
                }
                let line = String::from_utf8_lossy(&req).to_string();
                let n = line
                    .strip_prefix("GET /")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(5)
                    .min(MAX_BODY);
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let body = expected_body(n);
                if s.write_all(&body).await.is_err() {
                    return;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// SOCKS5 no-auth greeting and CONNECT to an IPv4 `target`; returns the
/// reply's code (byte 1) and the stream (positioned after the reply).
pub async fn socks5_connect(
    proxy: SocketAddr,
    target: SocketAddr,
) -> Result<(u8, TcpStream), String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect to the SOCKS port {proxy}: {e}"))?;
    s.write_all(&[5, 1, 0])
        .await
        .map_err(|e| format!("send greeting: {e}"))?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)
        .await
        .map_err(|e| format!("read method choice: {e}"))?;
    if r != [5, 0] {
        return Err(format!("method choice {r:?}, expected [5, 0]"));
    }
    let SocketAddr::V4(t) = target else {
        return Err("IPv4 targets only".into());
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req)
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .await
        .map_err(|e| format!("read CONNECT reply: {e}"))?;
    if reply[0] != 5 || reply[3] != 1 {
        return Err(format!("malformed SOCKS reply {reply:?}"));
    }
    Ok((reply[1], s))
}

/// Downloads `GET /<n>` from `target` through the SOCKS5 proxy; returns the body.
pub async fn socks5_get(
    proxy: SocketAddr,
    target: SocketAddr,
    n: usize,
) -> Result<Vec<u8>, String> {
    let (code, mut s) = socks5_connect(proxy, target).await?;
    if code != 0 {
        return Err(format!("SOCKS reply code {code:#04x}"));
    }
    s.write_all(format!("GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send GET: {e}"))?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .await
        .map_err(|e| format!("read response: {e}"))?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {} bytes", all.len()))?
        + 4;
    Ok(all.split_off(split))
}

/// Downloads `n` bytes through the proxy (retrying while circuits are being
/// built, up to `limit`) and checks every byte.
pub async fn download_ok(proxy: SocketAddr, target: SocketAddr, n: usize, limit: Duration) {
    let start = std::time::Instant::now();
    let expected = expected_body(n);
    loop {
        match tokio::time::timeout(Duration::from_secs(60), socks5_get(proxy, target, n)).await {
            Ok(Ok(body)) => {
                assert_eq!(body.len(), n, "downloaded length");
                assert!(body == expected, "downloaded bytes differ");
                return;
            }
            Ok(Err(e)) if start.elapsed() < limit => {
                eprintln!("download failed ({e}); retrying");
            }
            Err(_) if start.elapsed() < limit => eprintln!("download timed out; retrying"),
            Ok(Err(e)) => panic!("download of {n} bytes failed after {limit:?}: {e}"),
            Err(_) => panic!("download of {n} bytes timed out after {limit:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

static TASK_PANICS: AtomicUsize = AtomicUsize::new(0);
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: keep the most recent 32 MiB.
        if log.len() > 32 * 1024 * 1024 {
            log.drain(..16 * 1024 * 1024);
        }
        log.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a panic hook counting panics on tokio's
/// threads (`tokio-rt-worker`, `tokio-runtime-worker`, the blocking pool: the
/// nodes' background tasks, whose panics tokio would otherwise swallow) and a tracing subscriber capturing veilnet's logs in memory.
pub fn init() {
    INIT.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"))
            {
                TASK_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
        let filter = tracing_subscriber::EnvFilter::new(
            "warn,veilnet=debug,veilnet_proto=debug,veilnet_dir=debug,veilnet_socks=debug",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

/// Panics seen on tokio threads so far (in any test of this process).
pub fn task_panics() -> usize {
    TASK_PANICS.load(Ordering::SeqCst)
}

/// Asserts that no background task panicked.
pub fn assert_no_task_panics() {
    assert_eq!(task_panics(), 0, "a background task panicked (see stderr)");
}

/// True if the captured log contains `needle`.
pub fn log_contains(needle: &str) -> bool {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let n = needle.as_bytes();
    log.windows(n.len()).any(|w| w == n)
}

/// Waits up to `limit` for the captured log to contain `needle`.
pub async fn wait_log(needle: &str, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if log_contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log_contains(needle)
}

/// Polls `cond` every 50 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
