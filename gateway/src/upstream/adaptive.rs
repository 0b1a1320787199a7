//! The adaptive concurrency limit of one backend (`adaptive_concurrency`):
//! how many calls may wait on it at once, learnt from how long it takes to
//! answer, in the manner of Envoy's adaptive concurrency filter and
//! Netflix's concurrency-limits.
//!
//! A backend that is being asked for more than it can do queues the excess
//! and answers everyone later; its latency is the signal. The limiter
//! admits calls while fewer than the current limit wait for an answer and
//! sheds the rest at once (503 / UNAVAILABLE, `Retry-After`), before they
//! join the queue at the struggling backend. At the end of every sampling
//! window the limit is recomputed from the window's latencies by one of two
//! controllers:
//!
//! - `gradient` (Envoy's gradient controller, Netflix's Gradient2): the
//!   backend's latency without queueing, `min_rtt`, is measured at the
//!   start with the limit pinned at `min_limit`, and again every
//!   `min_rtt_interval`; each window then moves the limit by
//!   `gradient = min_rtt * (1 + tolerance) / sample_rtt` (clamped to
//!   0.5..2) plus a headroom of `sqrt(limit)`, so it falls as soon as the
//!   backend queues and grows back when it stops.
//! - `aimd`: additive increase (`+1` a window) while the window's latency
//!   stays under `latency_threshold`, multiplicative decrease (`x backoff`)
//!   when it goes over or a call timed out or was answered UNAVAILABLE or
//!   RESOURCE_EXHAUSTED (TCP's congestion control, Netflix's AIMD limit).
//!
//! The hot path is lock-free: admitting a call is one `fetch_add` on the
//! in-flight count and one load of the limit; a sample is three relaxed
//! atomics. A small mutex is taken only by the call that closes a window
//! (at most once per `window`), and only with `try_lock`: a call that finds
//! it taken leaves the window to the one holding it. A backend without
//! `adaptive_concurrency` has no limiter at all.
//!
//! What counts: one permit per call, held from admission until the answer
//! (a unary reply, or a stream's response headers: a stream that runs for
//! minutes afterwards is bounded by `circuit_breaker.max_requests`, not
//! here, so long-lived streams do not starve unary calls). Retries run
//! under the call's permit: a retry replaces the attempt that failed, it
//! adds no concurrency at the backend, and it is already bounded by the
//! retry budget; taking a second permit would let one call shed itself.
//! The sample is the latency of the attempt that answered (so a retry's
//! backoff is not mistaken for the backend's slowness); an attempt that
//! timed out counts as a sample of its elapsed time, a lower bound of the
//! backend's latency, so a backend too slow to answer at all still brings
//! the limit down.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::window::now_ms;

/// Envoy's `min_concurrency`: a few calls always go through, enough to
/// measure the backend and to keep it busy while it recovers.
pub const DEFAULT_MIN_LIMIT: u32 = 3;
/// Netflix's initial limit: a modest start that the controller raises
/// within a few windows if the backend keeps up.
pub const DEFAULT_INITIAL_LIMIT: u32 = 20;
/// Envoy's `max_concurrency_limit` default.
pub const DEFAULT_MAX_LIMIT: u32 = 1000;
/// Envoy's examples recompute the limit every 100 ms: several samples per
/// window under load, and a queue that forms is cut within a fraction of a
/// second.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(100);
/// A window's mean over fewer samples is noise: it stays open (past
/// `window`) until this many calls have answered.
pub const DEFAULT_MIN_SAMPLES: u32 = 10;
/// Latency may grow by half over `min_rtt` before the limit falls
/// (Netflix's `rttTolerance` of 1.5): a shared machine varies by tens of
/// percent without any queueing.
pub const DEFAULT_TOLERANCE: f64 = 0.5;
/// Envoy's `min_rtt_calc_params.interval`: the backend's own latency
/// changes (a deploy, a bigger data set) more slowly than this, and each
/// re-measurement sheds down to `min_limit` for a window.
pub const DEFAULT_MIN_RTT_INTERVAL: Duration = Duration::from_secs(60);
/// Netflix's AIMD `backoffRatio`: a tenth less per bad window, so a short
/// burst of timeouts costs little and a lasting one halves the limit in
/// under a second of 100 ms windows.
pub const DEFAULT_BACKOFF: f64 = 0.9;

/// How the limit follows the latency.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    Gradient {
        /// Share of latency growth over `min_rtt` taken as no queueing.
        tolerance: f64,
        /// How often `min_rtt` is measured again.
        min_rtt_interval: Duration,
    },
    Aimd {
        /// A window whose mean latency is above this is a bad one.
        latency_threshold: Duration,
        /// The factor a bad window multiplies the limit by.
        backoff: f64,
    },
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Gradient { .. } => "gradient",
            Algorithm::Aimd { .. } => "aimd",
        }
    }
}

/// `adaptive_concurrency`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveSpec {
    pub algorithm: Algorithm,
    pub initial_limit: u32,
    pub min_limit: u32,
    pub max_limit: u32,
    pub window: Duration,
    pub min_samples: u32,
}

impl Default for AdaptiveSpec {
    fn default() -> Self {
        AdaptiveSpec {
            algorithm: Algorithm::Gradient {
                tolerance: DEFAULT_TOLERANCE,
                min_rtt_interval: DEFAULT_MIN_RTT_INTERVAL,
            },
            initial_limit: DEFAULT_INITIAL_LIMIT,
            min_limit: DEFAULT_MIN_LIMIT,
            max_limit: DEFAULT_MAX_LIMIT,
            window: DEFAULT_WINDOW,
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }
}

/// What one sampling window saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowStats {
    /// Mean latency of the window's samples.
    pub rtt: Duration,
    pub samples: u32,
    /// Timeouts and overload answers (UNAVAILABLE, RESOURCE_EXHAUSTED).
    pub drops: u32,
    /// The most calls in flight at once during the window.
    pub peak_in_flight: u32,
}

/// The controller's state: pure arithmetic over windows and a clock passed
/// in, so tests drive it deterministically.
#[derive(Debug)]
pub(crate) struct Controller {
    spec: AdaptiveSpec,
    /// Fractional, so small steps (AIMD's +1 at a large limit, a gradient
    /// near 1) accumulate instead of rounding away.
    limit: f64,
    /// The backend's latency without queueing (gradient only).
    min_rtt: Option<Duration>,
    /// While measuring `min_rtt`: the limit to go back to.
    probing: Option<f64>,
    /// When (on the caller's clock) `min_rtt` is measured next.
    next_probe: Duration,
}

impl Controller {
    pub(crate) fn new(spec: AdaptiveSpec) -> Controller {
        let initial = f64::from(spec.initial_limit);
        let gradient = matches!(spec.algorithm, Algorithm::Gradient { .. });
        Controller {
            // The gradient controller starts by measuring min_rtt.
            limit: if gradient {
                f64::from(spec.min_limit)
            } else {
                initial
            },
            probing: gradient.then_some(initial),
            min_rtt: None,
            next_probe: Duration::ZERO,
            spec,
        }
    }

    /// The limit in force.
    pub(crate) fn limit(&self) -> u32 {
        self.limit as u32
    }

    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether `min_rtt` is being measured (the limit is pinned at `min_limit`).
    pub(crate) fn probing(&self) -> bool {
        self.probing.is_some()
    }

    /// Folds in a closed window seen at `now`; returns the new limit.
    pub(crate) fn update(&mut self, w: WindowStats, now: Duration) -> u32 {
        let min = f64::from(self.spec.min_limit);
        let max = f64::from(self.spec.max_limit);
        // The backend kept up with fewer calls than half the limit: nothing
        // was learnt about a higher one (Gradient2's app-limited guard), so
        // the limit does not grow past what was asked of it.
        let app_limited = f64::from(w.peak_in_flight) * 2.0 < self.limit;
        match self.spec.algorithm.clone() {
            Algorithm::Gradient {
                tolerance,
                min_rtt_interval,
            } => {
                // No latency seen: nothing to go by (a probe goes on).
                if w.samples == 0 {
                    return self.limit();
                }
                if let Some(resume) = self.probing.take() {
                    self.min_rtt = Some(w.rtt);
                    self.next_probe = now + min_rtt_interval;
                    self.limit = resume.clamp(min, max);
                    return self.limit();
                }
                if now >= self.next_probe {
                    self.probing = Some(self.limit);
                    self.limit = min;
                    return self.limit();
                }
                let Some(min_rtt) = self.min_rtt else {
                    return self.limit();
                };
                // A faster window than ever: the backend got faster.
                let min_rtt = if w.rtt < min_rtt {
                    self.min_rtt = Some(w.rtt);
                    w.rtt
                } else {
                    min_rtt
                };
                let sample = w.rtt.as_secs_f64().max(1e-6);
                let gradient = (min_rtt.as_secs_f64() * (1.0 + tolerance) / sample).clamp(0.5, 2.0);
                let mut next = self.limit * gradient;
                next += next.sqrt();
                if app_limited && next > self.limit {
                    next = self.limit;
                }
                self.limit = next.clamp(min, max);
            }
            Algorithm::Aimd {
                latency_threshold,
                backoff,
            } => {
                if w.drops > 0 || (w.samples > 0 && w.rtt > latency_threshold) {
                    self.limit = (self.limit * backoff).clamp(min, max);
                } else if !app_limited {
                    self.limit = (self.limit + 1.0).clamp(min, max);
                }
            }
        }
        self.limit()
    }
}

/// One backend's limiter: the controller behind atomics.
#[derive(Debug)]
pub(crate) struct Limiter {
    spec: AdaptiveSpec,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// The open window: when it started (`now_ms`), its samples' latency
    /// sum in microseconds and count, drops, and peak in-flight.
    started_ms: AtomicU64,
    sum_us: AtomicU64,
    samples: AtomicU32,
    drops: AtomicU32,
    peak: AtomicU32,
    /// Calls shed since the backend was built.
    pub(crate) shed: AtomicU64,
    /// The controller, touched once per window by the call closing it.
    controller: Mutex<Controller>,
    /// `min_rtt` in microseconds (0: not measured yet), for views.
    min_rtt_us: AtomicU64,
}

/// A call admitted under the limit; its place is given back on drop,
/// however the call ends.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an attempt ended, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered: a latency sample.
    Answered,
    /// Timed out: a sample of at least this long, and a drop.
    TimedOut,
    /// UNAVAILABLE or RESOURCE_EXHAUSTED: a drop (AIMD backs off), no sample.
    Overloaded,
}

/// What /admin/backends and /metrics show of a limiter.
#[derive(Debug, Clone)]
pub struct AdaptiveStatus {
    pub algorithm: &'static str,
    pub limit: u32,
    pub in_flight: u32,
    pub min_limit: u32,
    pub max_limit: u32,
    pub min_rtt: Option<Duration>,
    pub shed: u64,
}

impl Limiter {
    pub(crate) fn new(spec: AdaptiveSpec) -> Limiter {
        let controller = Controller::new(spec.clone());
        Limiter {
            limit: AtomicU32::new(controller.limit()),
            in_flight: AtomicU32::new(0),
            started_ms: AtomicU64::new(now_ms()),
            sum_us: AtomicU64::new(0),
            samples: AtomicU32::new(0),
            drops: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            shed: AtomicU64::new(0),
            controller: Mutex::new(controller),
            min_rtt_us: AtomicU64::new(0),
            spec,
        }
    }

    /// A place under the limit, or the limit in force when there is none.
    pub(crate) fn try_acquire(&self) -> Result<Permit<'_>, u32> {
        let limit = self.limit.load(Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if now > limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(limit);
        }
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        Ok(Permit { limiter: self })
    }

    /// Records how an attempt ended after `elapsed`, and closes the window
    /// when it is due.
    pub(crate) fn record(&self, outcome: Outcome, elapsed: Duration) {
        match outcome {
            Outcome::Answered => {}
            Outcome::TimedOut | Outcome::Overloaded => {
                self.drops.fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome != Outcome::Overloaded {
            let us = elapsed.as_micros().min(u128::from(u32::MAX)) as u64;
            self.sum_us.fetch_add(us, Ordering::Relaxed);
            self.samples.fetch_add(1, Ordering::Relaxed);
        }
        let now = now_ms();
        let started = self.started_ms.load(Ordering::Relaxed);
        if now < started + self.spec.window.as_millis() as u64 {
            return;
        }
        // AIMD backs off on a drop without waiting for samples; the
        // gradient controller goes by latency alone (its timeouts are
        // samples).
        let aimd = matches!(self.spec.algorithm, Algorithm::Aimd { .. });
        let enough = self.samples.load(Ordering::Relaxed) >= self.spec.min_samples
            || (aimd && self.drops.load(Ordering::Relaxed) > 0);
        if enough {
            self.close_window(started, now);
        }
    }

    /// Ends the window that began at `started`, unless another call is
    /// closing it or has already.
    fn close_window(&self, started: u64, now: u64) {
        let Ok(mut controller) = self.controller.try_lock() else {
            return;
        };
        if self
            .started_ms
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let sum_us = self.sum_us.swap(0, Ordering::Relaxed);
        let drops = self.drops.swap(0, Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let peak = self.peak.swap(in_flight, Ordering::Relaxed);
        let stats = WindowStats {
            rtt: Duration::from_micros(sum_us / u64::from(samples.max(1))),
            samples,
            drops,
            peak_in_flight: peak,
        };
        let before = controller.limit();
        let limit = controller.update(stats, Duration::from_millis(now));
        self.limit.store(limit, Ordering::Relaxed);
        if let Some(rtt) = controller.min_rtt() {
            self.min_rtt_us
                .store(rtt.as_micros() as u64, Ordering::Relaxed);
        }
        if limit != before {
            tracing::debug!(
                limit,
                before,
                rtt_us = stats.rtt.as_micros() as u64,
                samples,
                drops,
                probing = controller.probing(),
                "adaptive concurrency limit changed"
            );
        }
    }

    pub(crate) fn status(&self) -> AdaptiveStatus {
        let min_rtt = self.min_rtt_us.load(Ordering::Relaxed);
        AdaptiveStatus {
            algorithm: self.spec.algorithm.name(),
            limit: self.limit.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            min_limit: self.spec.min_limit,
            max_limit: self.spec.max_limit,
            min_rtt: (min_rtt > 0).then(|| Duration::from_micros(min_rtt)),
            shed: self.shed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn window(rtt_ms: u64, peak: u32) -> WindowStats {
        WindowStats {
            rtt: ms(rtt_ms),
            samples: 50,
            drops: 0,
            peak_in_flight: peak,
        }
    }

    fn gradient(initial: u32, min: u32, max: u32) -> Controller {
        Controller::new(AdaptiveSpec {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            ..AdaptiveSpec::default()
        })
    }

    /// Runs the first window (the min_rtt measurement) at `rtt` ms.
    fn measured(c: &mut Controller, rtt: u64, clock: &mut Duration) {
        assert!(c.probing(), "starts by measuring min_rtt");
        assert_eq!(c.limit(), c.spec.min_limit);
        *clock += ms(100);
        c.update(window(rtt, c.spec.min_limit), *clock);
        assert_eq!(c.min_rtt(), Some(ms(rtt)));
        assert!(!c.probing());
    }

    #[test]
    fn gradient_limit_falls_when_latency_rises_and_recovers_when_it_falls() {
        let mut c = gradient(100, 3, 1000);
        let mut clock = Duration::ZERO;
        measured(&mut c, 10, &mut clock);
        assert_eq!(c.limit(), 100);
        // The backend queues: latency four times its own.
        let mut last = c.limit();
        for _ in 0..5 {
            clock += ms(100);
            let now = c.update(window(40, last), clock);
            assert!(now < last, "{now} should be below {last}");
            last = now;
        }
        assert!(last < 20, "{last}");
        // The queue is gone: back to its own latency, the limit grows.
        for _ in 0..10 {
            clock += ms(100);
            let now = c.update(window(10, last), clock);
            assert!(now > last, "{now} should be above {last}");
            last = now;
        }
    }

    #[test]
    fn gradient_holds_within_the_tolerance() {
        let mut c = gradient(50, 3, 1000);
        let mut clock = Duration::ZERO;
        measured(&mut c, 10, &mut clock);
        // 14 ms is within 10 ms * 1.5: gradient above 1, the limit grows.
        clock += ms(100);
        assert!(c.update(window(14, 50), clock) > 50);
        // 30 ms: 10 * 1.5 / 30 = 0.5, halved (plus headroom).
        let before = c.limit();
        clock += ms(100);
        let after = c.update(window(30, before), clock);
        let expected = f64::from(before) * 0.5;
        let expected = (expected + expected.sqrt()) as u32;
        assert_eq!(after, expected);
    }

    #[test]
    fn gradient_stays_within_bounds() {
        let mut c = gradient(20, 5, 40);
        let mut clock = Duration::ZERO;
        measured(&mut c, 10, &mut clock);
        for _ in 0..50 {
            clock += ms(100);
            let l = c.update(window(1000, 40), clock);
            assert!((5..=40).contains(&l), "{l}");
        }
        assert_eq!(c.limit(), 5);
        for _ in 0..50 {
            clock += ms(100);
            let l = c.update(window(1, 40), clock);
            assert!((5..=40).contains(&l), "{l}");
        }
        assert_eq!(c.limit(), 40);
    }

    #[test]
    fn gradient_does_not_grow_while_the_backend_is_barely_used() {
        let mut c = gradient(100, 3, 1000);
        let mut clock = Duration::ZERO;
        measured(&mut c, 10, &mut clock);
        for _ in 0..10 {
            clock += ms(100);
            assert_eq!(c.update(window(10, 5), clock), 100);
        }
    }

    #[test]
    fn gradient_measures_min_rtt_again_after_its_interval() {
        let mut c = gradient(100, 3, 1000);
        let mut clock = Duration::ZERO;
        measured(&mut c, 10, &mut clock);
        clock += DEFAULT_MIN_RTT_INTERVAL;
        // The window that finds the interval over pins the limit to min.
        assert_eq!(c.update(window(10, 100), clock), 3);
        assert!(c.probing());
        // The backend became slower for good: 20 ms is its new own latency.
        clock += ms(100);
        assert_eq!(c.update(window(20, 3), clock), 100);
        assert_eq!(c.min_rtt(), Some(ms(20)));
        // 20 ms is no longer a queue.
        clock += ms(100);
        assert!(c.update(window(20, 100), clock) >= 100);
    }

    #[test]
    fn gradient_ignores_a_window_without_samples() {
        let mut c = gradient(100, 3, 1000);
        let mut clock = Duration::ZERO;
        let empty = WindowStats {
            rtt: Duration::ZERO,
            samples: 0,
            drops: 4,
            peak_in_flight: 3,
        };
        // The min_rtt measurement waits for a window with samples.
        clock += ms(100);
        assert_eq!(c.update(empty, clock), 3);
        assert!(c.probing());
        measured(&mut c, 10, &mut clock);
        clock += ms(100);
        assert_eq!(c.update(empty, clock), 100, "no latency, no change");
    }

    fn aimd(initial: u32) -> Controller {
        Controller::new(AdaptiveSpec {
            algorithm: Algorithm::Aimd {
                latency_threshold: ms(50),
                backoff: 0.5,
            },
            initial_limit: initial,
            min_limit: 2,
            max_limit: 30,
            ..AdaptiveSpec::default()
        })
    }

    #[test]
    fn aimd_adds_one_under_the_threshold_and_backs_off_above_it_or_on_drops() {
        let mut c = aimd(20);
        let t = Duration::ZERO;
        assert!(!c.probing());
        assert_eq!(c.update(window(10, 20), t), 21);
        assert_eq!(c.update(window(10, 21), t), 22);
        assert_eq!(c.update(window(80, 22), t), 11);
        let dropped = WindowStats {
            drops: 1,
            ..window(10, 11)
        };
        assert_eq!(c.update(dropped, t), 5);
        for _ in 0..10 {
            assert!(c.update(window(500, 5), t) >= 2);
        }
        assert_eq!(c.limit(), 2);
        for _ in 0..100 {
            let l = c.limit();
            assert!(c.update(window(10, l), t) <= 30);
        }
        assert_eq!(c.limit(), 30);
    }

    #[test]
    fn limiter_sheds_beyond_the_limit_and_gives_places_back() {
        let l = Limiter::new(AdaptiveSpec {
            algorithm: Algorithm::Aimd {
                latency_threshold: ms(50),
                backoff: 0.5,
            },
            initial_limit: 2,
            min_limit: 1,
            max_limit: 10,
            ..AdaptiveSpec::default()
        });
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert_eq!(l.try_acquire().err(), Some(2));
        assert_eq!(l.status().shed, 1);
        assert_eq!(l.status().in_flight, 2);
        drop(a);
        let _c = l.try_acquire().expect("a place was given back");
        drop(b);
        assert_eq!(l.status().in_flight, 1);
    }

    #[test]
    fn limiter_closes_a_window_once_it_has_lasted_and_has_samples() {
        let l = Limiter::new(AdaptiveSpec {
            algorithm: Algorithm::Aimd {
                latency_threshold: ms(50),
                backoff: 0.5,
            },
            initial_limit: 8,
            min_limit: 1,
            max_limit: 10,
            window: ms(1),
            min_samples: 3,
        });
        std::thread::sleep(ms(5));
        // Two samples are too few, however long the window has lasted.
        l.record(Outcome::Answered, ms(100));
        l.record(Outcome::Answered, ms(100));
        assert_eq!(l.status().limit, 8);
        l.record(Outcome::Answered, ms(100));
        assert_eq!(l.status().limit, 4);
        // A drop closes a window at once (after its time).
        std::thread::sleep(ms(5));
        l.record(Outcome::Overloaded, ms(1));
        assert_eq!(l.status().limit, 2);
    }
}
