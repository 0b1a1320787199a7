//! The gateway-wide shed: when the gateway itself is saturated, new
//! requests are answered 503 with `Retry-After` at once, from the stage
//! right after routing, instead of each taking its share of a CPU and
//! memory that no longer suffice for any of them.
//!
//! The trigger is `server.max_in_flight`: requests being served across
//! every route and listener, counted here from this stage until the
//! answer's head (the count lives in the edge settings and is handed from
//! each snapshot to the next, so a reload neither resets it nor loses the
//! requests still running on the old one). Admitting a request is one
//! `fetch_add` and its end one `fetch_sub`; without `max_in_flight` this
//! stage counts nothing. What is shed costs a route match and an error
//! answer: no auth, no body read, no backend call. The refused request's
//! body is not waited for (unlike the edge's other refusals): under
//! overload, holding the request to drain a body is exactly the work being
//! shed.
//!
//! A second, optional trigger is the process's CPU use
//! (`server.overload.cpu`): a background task reads the process's CPU time
//! from /proc every 250 ms; while the share of the available CPUs in use
//! stays above the threshold, the share of new requests shed grows by a
//! tenth each tick (at most 90%, so some requests still measure the
//! backends and keep connections warm), and shrinks by a twentieth each
//! tick below it. The request path reads one atomic (the share) and, only
//! while shedding, takes one ticket from a counter to spread the refusals
//! evenly.
//!
//! Health, readiness, metrics and admin endpoints are on the admin listener
//! and never pass here.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tonic::Code;
use tower::Service;

use super::layer::{Annotate, Inner, OnResponse, Policed, RouteView};
use crate::error::Error;

/// `[server] max_in_flight` and `[server.overload]`, compiled, and the
/// count they bound.
#[derive(Debug, Clone, Default)]
pub struct Overload {
    /// Requests served at once at most; none when absent.
    pub max_in_flight: Option<usize>,
    /// Requests past this stage and not yet answered (while
    /// `max_in_flight` is set), shared by every snapshot of one gateway.
    pub in_flight: Arc<AtomicUsize>,
    /// The CPU trigger, when configured (and a runtime runs its sampler).
    pub cpu: Option<Arc<CpuShed>>,
}

impl Overload {
    /// `max_in_flight` with the count of `previous`, the snapshot being
    /// replaced, so that requests it is still serving are counted.
    pub fn new(max_in_flight: Option<usize>, previous: Option<&Overload>) -> Overload {
        Overload {
            max_in_flight,
            in_flight: previous.map(|p| p.in_flight.clone()).unwrap_or_default(),
            cpu: None,
        }
    }

    /// With the CPU trigger at `threshold`: `previous`'s sampler when it
    /// has the same threshold (a reload does not restart what it learnt),
    /// else a new one, started on the current tokio runtime. Without a
    /// runtime (`gateway check`) nothing is sampled and nothing shed.
    pub fn with_cpu(mut self, threshold: Option<f64>, previous: Option<&Overload>) -> Overload {
        let Some(threshold) = threshold else {
            return self;
        };
        let kept = previous
            .and_then(|p| p.cpu.clone())
            .filter(|c| c.threshold == threshold);
        self.cpu = kept.or_else(|| CpuShed::start(threshold).map(Arc::new));
        self
    }
}

/// How often the CPU time is sampled: often enough to react within a
/// second, rarely enough that /proc's 10 ms ticks still measure it (a tick
/// is 2% of a 250 ms window on two cores).
const CPU_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// Per tick over the threshold, a tenth more of new requests are shed;
/// per tick under it, a twentieth fewer: quick to protect, slower to let
/// the load back so it does not swing straight over again.
const CPU_STEP_UP: u32 = 100;
const CPU_STEP_DOWN: u32 = 50;
/// At most 90% shed, in thousandths: a trickle still flows, so the
/// backends stay measured and connections stay warm.
const CPU_MAX_SHED: u32 = 900;

/// The CPU trigger: the share of new requests to shed, kept by a sampler
/// that stops when the last snapshot holding it is dropped.
#[derive(Debug)]
pub struct CpuShed {
    /// Share of the available CPUs above which requests are shed.
    pub threshold: f64,
    shared: Arc<CpuState>,
    sampler: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
struct CpuState {
    /// Share of new requests shed now, in thousandths.
    shed: AtomicU32,
    /// Requests decided while shedding, to spread the refusals evenly.
    tickets: AtomicU32,
}

impl Drop for CpuShed {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

impl CpuShed {
    fn start(threshold: f64) -> Option<CpuShed> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let shared = Arc::new(CpuState::default());
        let state = shared.clone();
        // The CPUs this process may use (a cgroup's quota included).
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let sampler = rt.spawn(async move {
            let mut every = tokio::time::interval(CPU_TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<(std::time::Instant, f64)> = None;
            loop {
                every.tick().await;
                let Some(cpu) = crate::telemetry::process::cpu_seconds() else {
                    continue;
                };
                let now = std::time::Instant::now();
                if let Some((then, before)) = last {
                    let wall = now.duration_since(then).as_secs_f64() * cpus;
                    let usage = if wall > 0.0 { (cpu - before) / wall } else { 0.0 };
                    let old = state.shed.load(Ordering::Relaxed);
                    let shed = next_cpu_shed(old, usage, threshold);
                    state.shed.store(shed, Ordering::Relaxed);
                    if (old == 0) != (shed == 0) {
                        tracing::warn!(
                            cpu = usage,
                            threshold,
                            shedding = shed > 0,
                            "CPU overload shed (server.overload.cpu) started or ended"
                        );
                    }
                    metrics::gauge!(crate::telemetry::metrics::OVERLOAD_SHED_RATIO, "reason" => "cpu")
                        .set(f64::from(shed) / 1000.0);
                }
                last = Some((now, cpu));
            }
        });
        Some(CpuShed {
            threshold,
            shared,
            sampler: sampler.abort_handle(),
        })
    }

    /// Whether this request is one of the share to shed now.
    fn sheds(&self) -> bool {
        let shed = self.shared.shed.load(Ordering::Relaxed);
        if shed == 0 {
            return false;
        }
        let ticket = self.shared.tickets.fetch_add(1, Ordering::Relaxed);
        spread(ticket) < shed
    }
}

/// The share to shed (thousandths) after a tick that saw `usage` of the
/// CPUs, from `old`.
fn next_cpu_shed(old: u32, usage: f64, threshold: f64) -> u32 {
    if usage > threshold {
        (old + CPU_STEP_UP).min(CPU_MAX_SHED)
    } else {
        old.saturating_sub(CPU_STEP_DOWN)
    }
}

/// Ticket `t`'s place in 0..1000: consecutive tickets land 617 apart
/// (about 1000 / the golden ratio, and prime to 1000, so every 1000
/// tickets take each place once), and shedding the places below `shed`
/// sheds exactly that share, evenly: under a third shed, never two
/// refusals in a row.
fn spread(t: u32) -> u32 {
    (t % 1000) * 617 % 1000
}

/// A request counted in [`Overload::in_flight`], until its answer leaves
/// this stage or it is dropped.
pub struct Counted(Arc<AtomicUsize>);

impl Annotate for Counted {
    fn annotate(self, _: &mut Response<Body>) {}
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The policy of the gateway-wide shed.
#[derive(Debug, Clone, Copy)]
pub struct Shed;

impl<S, R> Service<Request<Body>> for Policed<S, Shed, R>
where
    R: RouteView,
    S: Inner,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = OnResponse<S::Future, Option<Counted>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(overload) = req
            .extensions()
            .get::<R>()
            .map(|v| &v.context().edge.overload)
        else {
            return OnResponse::inner(self.inner.call(req), None);
        };
        if overload.cpu.as_ref().is_some_and(|c| c.sheds()) {
            metrics::counter!(crate::telemetry::metrics::OVERLOAD_SHED, "reason" => "cpu")
                .increment(1);
            return OnResponse::answer(
                Error::Refused {
                    code: Code::Unavailable,
                    message: "the gateway is overloaded: its CPU use is above server.overload.cpu; try again shortly".to_owned(),
                }
                .into_response(),
            );
        }
        let Some(max) = overload.max_in_flight else {
            return OnResponse::inner(self.inner.call(req), None);
        };
        let counter = overload.in_flight.clone();
        let before = counter.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(counter);
        if before >= max {
            drop(counted);
            metrics::counter!(crate::telemetry::metrics::OVERLOAD_SHED, "reason" => "max_in_flight").increment(1);
            return OnResponse::answer(
                Error::Refused {
                    code: Code::Unavailable,
                    message: format!(
                        "the gateway is overloaded: {max} requests are already being served (server.max_in_flight); try again shortly"
                    ),
                }
                .into_response(),
            );
        }
        OnResponse::inner(self.inner.call(req), Some(counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_counting_the_requests_of_the_old_snapshot() {
        let old = Overload::new(Some(10), None);
        old.in_flight.fetch_add(3, Ordering::Relaxed);
        let new = Overload::new(Some(5), Some(&old));
        assert_eq!(new.in_flight.load(Ordering::Relaxed), 3);
        assert_eq!(new.max_in_flight, Some(5));
        let fresh = Overload::new(Some(5), None);
        assert_eq!(fresh.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_cpu_shed_grows_while_over_the_threshold_and_shrinks_under_it() {
        let mut shed = 0;
        let mut seen = Vec::new();
        for _ in 0..12 {
            shed = next_cpu_shed(shed, 0.97, 0.9);
            seen.push(shed);
        }
        assert_eq!(&seen[..3], &[100, 200, 300]);
        assert_eq!(shed, CPU_MAX_SHED, "never everything: {seen:?}");
        shed = next_cpu_shed(shed, 0.9, 0.9);
        assert_eq!(shed, 850, "at the threshold is not over it");
        for _ in 0..30 {
            shed = next_cpu_shed(shed, 0.5, 0.9);
        }
        assert_eq!(shed, 0);
    }

    #[test]
    fn the_cpu_shed_refuses_exactly_its_share_spread_evenly() {
        for share in [0, 1, 100, 333, 900] {
            let shed = (0..1000).filter(|t| spread(*t) < share).count();
            assert_eq!(shed as u32, share);
        }
        // A third shed: never two refusals in a row.
        let refused: Vec<bool> = (0..3000).map(|t| spread(t) < 333).collect();
        assert!(refused.windows(2).all(|w| !(w[0] && w[1])));
    }

    #[tokio::test]
    async fn a_reload_with_the_same_cpu_threshold_keeps_the_sampler() {
        let first = Overload::new(None, None).with_cpu(Some(0.9), None);
        let kept = Overload::new(None, Some(&first)).with_cpu(Some(0.9), Some(&first));
        let a = first.cpu.as_ref().expect("sampling");
        assert!(Arc::ptr_eq(a, kept.cpu.as_ref().expect("kept")));
        let changed = Overload::new(None, Some(&first)).with_cpu(Some(0.8), Some(&first));
        assert!(!Arc::ptr_eq(a, changed.cpu.as_ref().expect("new")));
        let off = Overload::new(None, Some(&first)).with_cpu(None, Some(&first));
        assert!(off.cpu.is_none());
    }

    #[test]
    fn without_a_runtime_nothing_is_sampled() {
        let o = Overload::new(None, None).with_cpu(Some(0.9), None);
        assert!(o.cpu.is_none());
    }

    #[test]
    fn a_counted_request_is_given_back_when_dropped() {
        let o = Overload::new(Some(1), None);
        o.in_flight.fetch_add(1, Ordering::Relaxed);
        let c = Counted(o.in_flight.clone());
        drop(c);
        assert_eq!(o.in_flight.load(Ordering::Relaxed), 0);
    }
}
