//! The circuit breaker of one backend, and its concurrency limit.
//!
//! Closed: calls pass and their outcomes are counted over a rolling window.
//! When the failure rate (over at least `min_requests` calls) or the
//! failure count crosses its threshold, the breaker opens: calls fail at
//! once with 503 for `open_for`. Then it is half-open: up to
//! `half_open_probes` calls go through; if that many succeed it closes, and
//! any failure opens it again.
//!
//! Failures here are what says the backend is unwell: connect failures,
//! UNAVAILABLE and deadlines that passed, counted once per request after
//! retries (a dead instance that retries hide is the outlier detector's
//! business, not a reason to stop the whole backend).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use super::window::{now_ms, Window};
use super::BackendStats;

/// Counting over 10 s smooths bursts without remembering old incidents for long.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Half the calls failing means the backend as a whole is in trouble.
pub const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// A rate over fewer calls is noise.
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
/// Long enough for a restarting backend to come back, short enough that
/// clients do not notice a long outage after it is over.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(5);
/// A few successes in a row before trusting the backend again.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 3;
/// Envoy's default `max_requests`: beyond it a backend is queueing, and
/// answering 503 at once is better than an unbounded queue.
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSpec {
    pub window: Duration,
    pub failure_rate: f64,
    pub min_requests: u32,
    /// 0: only the rate opens the breaker.
    pub failures: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
    pub max_requests: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            window: DEFAULT_WINDOW,
            failure_rate: DEFAULT_FAILURE_RATE,
            min_requests: DEFAULT_MIN_REQUESTS,
            failures: 0,
            open_for: DEFAULT_OPEN_FOR,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            max_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Lock-free: a state byte, a few counters and a rolling window.
#[derive(Debug)]
pub(crate) struct Breaker {
    spec: BreakerSpec,
    /// `a`: calls, `b`: failed calls.
    window: Window,
    state: AtomicU8,
    opened_at: AtomicU64,
    /// What the window held when it opened, for the 503 message.
    opened_calls: AtomicU64,
    opened_failures: AtomicU64,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
}

/// A call let through; report its outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    Probe,
}

/// The state for /admin/backends.
#[derive(Debug, Clone)]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// While open: how long until probes are let through.
    pub retry_in: Option<Duration>,
    /// Calls and failed calls in the current window.
    pub window_calls: u64,
    pub window_failures: u64,
}

impl Breaker {
    pub(crate) fn new(spec: BreakerSpec) -> Breaker {
        Breaker {
            window: Window::new(spec.window),
            spec,
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            opened_calls: AtomicU64::new(0),
            opened_failures: AtomicU64::new(0),
            probes_in_flight: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
        }
    }

    /// Lets a call through, or says why not (the 503 message, without the
    /// backend's name).
    pub(crate) fn admit(&self, stats: &BackendStats, backend: &str) -> Result<Admission, String> {
        let now = now_ms();
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(Admission::Normal),
                OPEN => {
                    let reopen = self.opened_at.load(Ordering::Acquire)
                        + self.spec.open_for.as_millis() as u64;
                    if now < reopen {
                        return Err(self.open_message(reopen - now));
                    }
                    if self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.probes_in_flight.store(0, Ordering::Release);
                        self.probe_successes.store(0, Ordering::Release);
                        stats.breaker_half_opened.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(backend, "circuit half-open: letting probes through");
                    }
                }
                _ => {
                    let n = self.probes_in_flight.fetch_add(1, Ordering::AcqRel);
                    if n < self.spec.half_open_probes {
                        return Ok(Admission::Probe);
                    }
                    self.release_probe();
                    return Err(format!(
                        "circuit half-open, {} probe calls already in flight",
                        self.spec.half_open_probes
                    ));
                }
            }
        }
    }

    fn open_message(&self, retry_in_ms: u64) -> String {
        let calls = self.opened_calls.load(Ordering::Relaxed);
        let failures = self.opened_failures.load(Ordering::Relaxed);
        let window = fmt_secs(self.window.span());
        let retry = fmt_secs(Duration::from_millis(retry_in_ms).max(Duration::from_millis(1)));
        if calls == 0 {
            format!("circuit open after a failed probe; retrying in {retry}")
        } else if self.spec.failures > 0 && failures >= u64::from(self.spec.failures) {
            format!("circuit open after {failures} errors in {window}; retrying in {retry}")
        } else {
            format!(
                "circuit open after {failures} of {calls} calls failed in {window}; retrying in {retry}"
            )
        }
    }

    fn release_probe(&self) {
        let _ = self
            .probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A probe that ended without an outcome (the client went away).
    pub(crate) fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.release_probe();
        }
    }

    /// The outcome of an admitted call; `backend` names it in logs.
    pub(crate) fn record(
        &self,
        admission: Admission,
        failed: bool,
        stats: &BackendStats,
        backend: &str,
    ) {
        match admission {
            Admission::Probe => {
                self.release_probe();
                if failed {
                    if self
                        .state
                        .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.opened_calls.store(0, Ordering::Relaxed);
                        self.opened_failures.store(0, Ordering::Relaxed);
                        self.opened_at.store(now_ms(), Ordering::Release);
                        stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(backend, "circuit open again: a probe failed");
                    }
                } else {
                    let ok = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                    if ok >= self.spec.half_open_probes
                        && self
                            .state
                            .compare_exchange(
                                HALF_OPEN,
                                CLOSED,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                    {
                        self.window.clear();
                        stats.breaker_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(backend, probes = ok, "circuit closed: probes succeeded");
                    }
                }
            }
            Admission::Normal => {
                self.window.add(1, u64::from(failed));
                if !failed || self.state.load(Ordering::Acquire) != CLOSED {
                    return;
                }
                let (calls, failures) = self.window.sums();
                let by_count = self.spec.failures > 0 && failures >= u64::from(self.spec.failures);
                let by_rate = calls >= u64::from(self.spec.min_requests)
                    && failures as f64 >= calls as f64 * self.spec.failure_rate;
                if (by_count || by_rate)
                    && self
                        .state
                        .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.opened_calls.store(calls, Ordering::Relaxed);
                    self.opened_failures.store(failures, Ordering::Relaxed);
                    self.opened_at.store(now_ms(), Ordering::Release);
                    stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        backend,
                        calls,
                        failures,
                        open_for_ms = self.spec.open_for.as_millis() as u64,
                        "circuit open: calls fail at once until it half-opens"
                    );
                }
            }
        }
    }

    pub(crate) fn status(&self) -> BreakerStatus {
        let (calls, failures) = self.window.sums();
        let state = self.state.load(Ordering::Acquire);
        let retry_in = (state == OPEN).then(|| {
            let reopen =
                self.opened_at.load(Ordering::Acquire) + self.spec.open_for.as_millis() as u64;
            Duration::from_millis(reopen.saturating_sub(now_ms()))
        });
        BreakerStatus {
            state: match state {
                CLOSED => "closed",
                OPEN => "open",
                _ => "half_open",
            },
            retry_in,
            window_calls: calls,
            window_failures: failures,
        }
    }

    pub(crate) fn max_requests(&self) -> u32 {
        self.spec.max_requests
    }
}

/// "10s", "2.5s", "300ms": how operators write durations.
pub(crate) fn fmt_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            window: Duration::from_secs(10),
            failure_rate: 0.5,
            min_requests: 4,
            failures: 0,
            open_for: Duration::from_millis(50),
            half_open_probes: 2,
            max_requests: 10,
        }
    }

    #[test]
    fn opens_on_the_rate_fails_fast_then_probes_and_closes() {
        let b = Breaker::new(spec());
        let stats = BackendStats::default();
        for failed in [false, true, false] {
            let a = b.admit(&stats, "x").unwrap();
            b.record(a, failed, &stats, "x");
        }
        assert_eq!(b.status().state, "closed");
        let a = b.admit(&stats, "x").unwrap();
        b.record(a, true, &stats, "x");
        assert_eq!(b.status().state, "open");
        let msg = b.admit(&stats, "x").unwrap_err();
        assert!(
            msg.starts_with("circuit open after 2 of 4 calls failed in 10s; retrying in "),
            "{msg}"
        );
        std::thread::sleep(Duration::from_millis(60));
        let p1 = b.admit(&stats, "x").unwrap();
        let p2 = b.admit(&stats, "x").unwrap();
        assert_eq!((p1, p2), (Admission::Probe, Admission::Probe));
        assert!(b.admit(&stats, "x").unwrap_err().contains("half-open"));
        b.record(p1, false, &stats, "x");
        b.record(p2, false, &stats, "x");
        assert_eq!(b.status().state, "closed");
        assert_eq!(stats.breaker_opened.load(Ordering::Relaxed), 1);
        assert_eq!(stats.breaker_closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let mut s = spec();
        s.failures = 2;
        let b = Breaker::new(s);
        let stats = BackendStats::default();
        for _ in 0..2 {
            let a = b.admit(&stats, "x").unwrap();
            b.record(a, true, &stats, "x");
        }
        assert!(b
            .admit(&stats, "x")
            .unwrap_err()
            .starts_with("circuit open after 2 errors in 10s"));
        std::thread::sleep(Duration::from_millis(60));
        let p = b.admit(&stats, "x").unwrap();
        b.record(p, true, &stats, "x");
        assert_eq!(b.status().state, "open");
        assert!(b
            .admit(&stats, "x")
            .unwrap_err()
            .contains("after a failed probe"));
    }

    #[test]
    fn durations_print_as_operators_write_them() {
        assert_eq!(fmt_secs(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_secs(Duration::from_millis(2500)), "2.5s");
        assert_eq!(fmt_secs(Duration::from_millis(300)), "300ms");
    }
}
