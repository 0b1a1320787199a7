//! Passive health, after Envoy's outlier detection: an endpoint that fails
//! `consecutive_failures` calls in a row (connect failures, UNAVAILABLE,
//! broken connections) is ejected for `base_ejection_time` times the number
//! of ejections in a row (capped at `max_ejection_time`), and comes back by
//! itself when that time passes. At most `max_ejection_percent` of the
//! endpoints are ejected at once, so a backend-wide failure never ejects
//! everything (the circuit breaker handles that case).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::endpoint::Endpoint;
use super::pool::PoolShared;
use super::window::now_ms;
use super::BackendStats;

/// Envoy's default: five in a row is past bad luck.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Envoy's default base ejection time.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Envoy's default cap.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Half: with two endpoints one may go, and the rest must carry the load.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// 0 turns ejection off.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection_time: DEFAULT_BASE_EJECTION,
            max_ejection_time: DEFAULT_MAX_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

/// The endpoint answered (with any status but UNAVAILABLE).
pub(crate) fn success(ep: &Endpoint, spec: &OutlierSpec) {
    let st = &ep.state;
    if st.consecutive_failures.load(Ordering::Relaxed) != 0 {
        st.consecutive_failures.store(0, Ordering::Relaxed);
    }
    // Forgive past ejections once the endpoint has stayed healthy for as
    // long as its last ejection lasted.
    let streak = st.ejection_streak.load(Ordering::Relaxed);
    if streak > 0 {
        let until = st.ejected_until.load(Ordering::Relaxed);
        let last = ejection_time(spec, streak).as_millis() as u64;
        if now_ms() >= until.saturating_add(last) {
            st.ejection_streak.store(0, Ordering::Relaxed);
        }
    }
}

fn ejection_time(spec: &OutlierSpec, streak: u32) -> Duration {
    spec.base_ejection_time
        .saturating_mul(streak.max(1))
        .min(spec.max_ejection_time)
}

/// The endpoint failed; ejects it when that makes `consecutive_failures`
/// in a row and the share of ejected endpoints allows. True if ejected.
pub(crate) fn failure(
    ep: &Endpoint,
    spec: &OutlierSpec,
    pool: &PoolShared,
    stats: &BackendStats,
) -> bool {
    let st = &ep.state;
    st.failures.fetch_add(1, Ordering::Relaxed);
    let n = st.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if spec.consecutive_failures == 0 || n < spec.consecutive_failures || ep.is_ejected() {
        return false;
    }
    let _one_at_a_time = pool.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
    if ep.is_ejected() {
        return false;
    }
    let set = pool.set.load();
    let ejected = set.endpoints.iter().filter(|e| e.is_ejected()).count();
    let allowed = set.len() * spec.max_ejection_percent as usize / 100;
    if ejected >= allowed {
        tracing::debug!(
            backend = %pool.backend,
            upstream.addr = %ep.addr,
            ejected,
            allowed,
            "endpoint keeps failing but the ejection limit is reached"
        );
        return false;
    }
    let streak = st.ejection_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let time = ejection_time(spec, streak);
    st.ejected_until
        .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
    st.consecutive_failures.store(0, Ordering::Relaxed);
    st.ejections.fetch_add(1, Ordering::Relaxed);
    stats.ejections.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        backend = %pool.backend,
        upstream.addr = %ep.addr,
        failures = n,
        ejected_for_ms = time.as_millis() as u64,
        ejections_in_a_row = streak,
        "endpoint ejected after consecutive failures"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Sink as _, Target};
    use crate::upstream::pool::{Pool, SourceKind};

    fn pool(n: u16) -> Pool {
        let pool = Pool::new(
            "b",
            SourceKind::new("test"),
            "t".into(),
            None,
            Duration::from_secs(1),
            false,
        );
        pool.shared.update(
            (1..=n)
                .map(|p| Target {
                    addr: format!("127.0.0.1:{p}"),
                    weight: 1,
                    label: None,
                })
                .collect(),
            None,
        );
        pool
    }

    #[tokio::test]
    async fn ejects_after_consecutive_failures_and_never_more_than_the_share() {
        let p = pool(4);
        let set = p.current();
        let spec = OutlierSpec {
            consecutive_failures: 3,
            ..Default::default()
        };
        let stats = BackendStats::default();
        let mut ejected = Vec::new();
        for ep in &set.endpoints {
            for _ in 0..3 {
                ejected.push(failure(ep, &spec, &p.shared, &stats));
            }
        }
        let expected = [
            false, false, true, false, false, true, false, false, false, false, false, false,
        ];
        assert_eq!(ejected, expected);
        // Half of four: two ejected, the other two kept despite failing.
        assert_eq!(set.endpoints.iter().filter(|e| e.is_ejected()).count(), 2);
        assert_eq!(stats.ejections.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let p = pool(2);
        let set = p.current();
        let spec = OutlierSpec {
            consecutive_failures: 3,
            ..Default::default()
        };
        let stats = BackendStats::default();
        let ep = &set.endpoints[0];
        failure(ep, &spec, &p.shared, &stats);
        failure(ep, &spec, &p.shared, &stats);
        success(ep, &spec);
        failure(ep, &spec, &p.shared, &stats);
        assert!(!ep.is_ejected());
    }

    #[tokio::test]
    async fn ejection_time_grows_with_repeats_and_the_endpoint_returns() {
        let p = pool(2);
        let set = p.current();
        let spec = OutlierSpec {
            consecutive_failures: 1,
            base_ejection_time: Duration::from_millis(40),
            max_ejection_time: Duration::from_millis(100),
            max_ejection_percent: 50,
        };
        let stats = BackendStats::default();
        let ep = &set.endpoints[0];
        assert!(failure(ep, &spec, &p.shared, &stats));
        let first = ep.state.ejected_until.load(Ordering::Relaxed) - now_ms();
        assert!(first <= 40);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!ep.is_ejected(), "back after the ejection time");
        assert!(failure(ep, &spec, &p.shared, &stats));
        let second = ep.state.ejected_until.load(Ordering::Relaxed) - now_ms();
        assert!(second > 45 && second <= 80, "{second}");
        assert_eq!(ejection_time(&spec, 5), Duration::from_millis(100));
    }
}
