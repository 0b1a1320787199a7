//! Where a backend's instances come from: a fixed list whose DNS names are
//! resolved again periodically ([`dns`]), or Consul's health API
//! ([`consul`]). Providers know nothing about connections or balancing:
//! each hands complete, current lists of addresses to a [`Sink`] (the
//! backend's pool), which swaps them in atomically.
//!
//! Every provider keeps the last list it got when its source fails (the AP
//! choice: a registry outage must not take traffic down) and logs once per
//! change of state, not once per retry.

pub mod consul;
pub mod dns;

use std::time::{Duration, Instant};

/// One instance as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ip:port` (or `host:port`, resolved when connecting).
    pub addr: String,
    /// Relative share of traffic for the `weighted` balancer (at least 1).
    pub weight: u32,
    /// What the registry calls it (Consul: `node/service-id`), for the admin view.
    pub label: Option<String>,
}

/// Receives a provider's results.
pub trait Sink: Send + Sync + 'static {
    /// A complete list of the instances to use now, replacing the previous
    /// one (an empty list is applied: the service really has no instance).
    /// `version` is the registry's index when it has one.
    fn update(&self, targets: Vec<Target>, version: Option<u64>);
    /// The source could not be read; the last list stays in force.
    fn failed(&self, error: String);
}

/// Exponential backoff with jitter for a failing source: `base * 2^(n-1)`
/// capped at `max`, then a random 50-100% of that, so many gateways that
/// lost the same registry do not retry in step.
pub(crate) fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter())
}

/// Uniform-ish in `[0, 1)`, for jitter only: std's `RandomState` is seeded
/// randomly and changes keys on every `new()`, which is all jitter needs.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Logs a source's health once per change: the first failure (and a change
/// in the kind of failure) as a warning, the recovery as info, and the
/// retries in between at debug level only.
#[derive(Debug)]
pub(crate) struct StateLog {
    backend: String,
    source: String,
    failing: Option<(Instant, String)>,
}

impl StateLog {
    pub(crate) fn new(backend: &str, source: String) -> StateLog {
        StateLog {
            backend: backend.to_owned(),
            source,
            failing: None,
        }
    }

    pub(crate) fn ok(&mut self, endpoints: usize) {
        if let Some((since, _)) = self.failing.take() {
            tracing::info!(
                backend = %self.backend,
                source = %self.source,
                endpoints,
                failing_for_ms = since.elapsed().as_millis() as u64,
                "service discovery is answering again"
            );
        }
    }

    /// `kind` groups errors that are the same problem (e.g. "unreachable").
    pub(crate) fn failed(&mut self, kind: &str, error: &str, kept: usize) {
        match &self.failing {
            Some((_, k)) if k == kind => {
                tracing::debug!(backend = %self.backend, source = %self.source, error, "service discovery still failing");
            }
            _ => {
                tracing::warn!(
                    backend = %self.backend,
                    source = %self.source,
                    error,
                    kept_endpoints = kept,
                    "service discovery failed; keeping the last known endpoints"
                );
                let since = self.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                self.failing = Some((since, kind.to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for n in 1..20 {
            let d = backoff(n, base, max);
            let full = base.saturating_mul(1 << (n - 1).min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
        }
    }
}
