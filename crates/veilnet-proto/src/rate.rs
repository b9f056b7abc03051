//! The bandwidth a relay donates: token buckets on its relay links (Tor's
//! RelayBandwidthRate and RelayBandwidthBurst).
//!
//! One bucket for the bytes read from relay links and one for the bytes
//! written to them, each filling at `rate` bytes per second up to `burst`.
//! A link takes what a record costs and, when the bucket has run dry,
//! waits until it has refilled; its socket buffers then fill and TCP slows
//! the sender. A record is never split: a taker that finds the bucket not
//! empty takes its whole record, which may put the bucket into debt by one
//! record; every other taker waits until the debt is paid and then tries
//! again, so the debt never exceeds one record and the average stays at
//! `rate`.
//! Links the node opens for its own circuits as a client are not counted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A relay's donated bandwidth, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthLimit {
    /// Long-term average, each direction.
    pub rate: u64,
    /// Most bytes that may pass at once after a quiet period.
    pub burst: u64,
}

/// A token bucket (sans-IO: the time is an argument).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Available bytes; negative while takers wait out a debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(limit: BandwidthLimit, now: Instant) -> Self {
        let rate = limit.rate.max(1) as f64;
        let burst = limit.burst.max(1) as f64;
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes at `now` if the bucket is not in debt (it may go
    /// into debt by this one take): `Ok`. Otherwise takes nothing and
    /// returns how long until the debt is paid, to try again then.
    pub(crate) fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens < 0.0 {
            // At least a microsecond, so a caller never spins.
            return Err(
                Duration::from_secs_f64(-self.tokens / self.rate).max(Duration::from_micros(1))
            );
        }
        self.tokens -= n as f64;
        Ok(())
    }
}

/// The read and write buckets a relay's links share.
#[derive(Debug)]
pub(crate) struct RelayBuckets {
    read: Mutex<TokenBucket>,
    write: Mutex<TokenBucket>,
}

impl RelayBuckets {
    pub(crate) fn new(limit: BandwidthLimit) -> Self {
        let now = Instant::now();
        RelayBuckets {
            read: Mutex::new(TokenBucket::new(limit, now)),
            write: Mutex::new(TokenBucket::new(limit, now)),
        }
    }

    /// Waits until `n` more bytes may be read.
    pub(crate) async fn read(&self, n: usize) {
        Self::wait(&self.read, n).await;
    }

    /// Waits until `n` more bytes may be written.
    pub(crate) async fn write(&self, n: usize) {
        Self::wait(&self.write, n).await;
    }

    async fn wait(bucket: &Mutex<TokenBucket>, n: usize) {
        loop {
            let taken = bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(n as u64, Instant::now());
            match taken {
                Ok(()) => return,
                Err(delay) => tokio::time::sleep(delay).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let limit = BandwidthLimit {
            rate: 1_000_000,
            burst: 100_000,
        };
        let mut b = TokenBucket::new(limit, t0);
        // The burst passes at once, and one more record into debt.
        assert_eq!(b.take(100_000, t0), Ok(()));
        assert_eq!(b.take(64_000, t0), Ok(()));
        // Then nobody takes until the 64 KB debt is paid (1 us a byte),
        // however many try: the debt never exceeds one record.
        for _ in 0..100 {
            let wait = b.take(1_000, t0).unwrap_err();
            assert!((wait.as_secs_f64() - 0.064).abs() < 1e-6, "{wait:?}");
        }
        let paid = t0 + Duration::from_millis(64);
        assert_eq!(b.take(1_000, paid), Ok(()));
        // Over 10 s of steady taking, 10 MB pass (plus the burst): the
        // average is the rate.
        let mut b = TokenBucket::new(limit, t0);
        let mut passed = 0u64;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            match b.take(50_000, now) {
                Ok(()) => passed += 50_000,
                Err(wait) => now += wait,
            }
        }
        let expect = 10_000_000 + 100_000;
        assert!(passed.abs_diff(expect) <= 100_000, "{passed} bytes in 10 s");
        // A quiet period refills at most to the burst.
        let later = now + Duration::from_secs(60);
        assert_eq!(b.take(100_000, later), Ok(()));
        assert_eq!(b.take(10_000, later), Ok(()));
        assert!(b.take(10_000, later).is_err());
    }
}
