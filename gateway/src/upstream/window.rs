//! A monotonic millisecond clock and a lock-free rolling window of counters,
//! shared by the circuit breaker and the retry budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process; fits an atomic.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64
}

/// Ten buckets: a failure leaves the window within a tenth of its span,
/// which is precise enough for a breaker or a budget.
const BUCKETS: usize = 10;

/// Two counters (`a`, `b`) summed over the last `span`. Writers touch one
/// bucket with relaxed atomics; a bucket that comes round again is reset by
/// whoever gets there first. A count can be lost in that race, which only
/// makes the window a little forgetful, never wrong by more than one.
#[derive(Debug)]
pub(crate) struct Window {
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice of time the counts belong to, plus one (0: never used).
    epoch: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

impl Window {
    pub(crate) fn new(span: Duration) -> Window {
        Window {
            bucket_ms: (span.as_millis() as u64 / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    pub(crate) fn span(&self) -> Duration {
        Duration::from_millis(self.bucket_ms * BUCKETS as u64)
    }

    fn current(&self, now: u64) -> &Bucket {
        let epoch = now / self.bucket_ms + 1;
        let bucket = &self.buckets[(epoch as usize) % BUCKETS];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        bucket
    }

    pub(crate) fn add(&self, a: u64, b: u64) {
        let bucket = self.current(now_ms());
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// `(a, b)` over the window.
    pub(crate) fn sums(&self) -> (u64, u64) {
        let epoch = now_ms() / self.bucket_ms + 1;
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let mut sums = (0, 0);
        for bucket in &self.buckets {
            let e = bucket.epoch.load(Ordering::Acquire);
            if e >= oldest && e <= epoch {
                sums.0 += bucket.a.load(Ordering::Relaxed);
                sums.1 += bucket.b.load(Ordering::Relaxed);
            }
        }
        sums
    }

    /// Forgets everything (a breaker that closes starts a fresh count).
    pub(crate) fn clear(&self) {
        for bucket in &self.buckets {
            bucket.epoch.store(0, Ordering::Release);
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_clear() {
        let w = Window::new(Duration::from_secs(10));
        for _ in 0..7 {
            w.add(1, 0);
        }
        w.add(0, 3);
        assert_eq!(w.sums(), (7, 3));
        w.clear();
        assert_eq!(w.sums(), (0, 0));
    }

    #[test]
    fn old_counts_leave_the_window() {
        let w = Window::new(Duration::from_millis(100));
        w.add(5, 5);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(w.sums(), (0, 0));
    }
}
