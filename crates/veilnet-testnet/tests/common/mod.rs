//! What the integration tests need of their own process: a panic counter
//! for background tasks, a log capture and polling. (The target and the
//! clients are the crate's own: `veilnet_testnet::{http, socks5}`.)
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

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
            "warn,veilnet=debug,veilnet_node=debug,veilnet_proxy=debug,veilnet_circmgr=debug,veilnet_proto=debug,veilnet_dir=debug,veilnet_socks=debug",
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
