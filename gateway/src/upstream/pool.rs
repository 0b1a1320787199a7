//! A backend's current endpoints: an immutable [`EndpointSet`] behind an
//! `ArcSwap`, replaced whole when discovery reports a change.
//!
//! Requests load the set without locking and keep their `Arc<Endpoint>`
//! to the end of the call, so a swap never drops a call in flight; an
//! endpoint that left the set closes its connection when its last call
//! finishes. Endpoints present before and after a change are the same
//! objects, keeping their connection and their outlier and health state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::endpoint::{Dial, Endpoint};
use super::rng::stable_hash;
pub use crate::discovery::SourceKind;
use crate::discovery::{Sink, Target};

/// Points per unit of weight on the consistent-hash ring. Ketama's 160
/// keeps each instance's share within a few percent of even.
const RING_POINTS: usize = 160;

/// One immutable view of the endpoints.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Weight of each endpoint (same order), at least 1.
    pub weights: Vec<u32>,
    /// Running sums of `weights`, for the weighted balancer.
    pub(crate) cumulative: Vec<u64>,
    /// `(point, endpoint index)` sorted by point; empty unless the backend
    /// balances by consistent hash.
    pub(crate) ring: Vec<(u64, u32)>,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, weights: Vec<u32>, ring: bool) -> EndpointSet {
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        for w in &weights {
            total += u64::from(*w);
            cumulative.push(total);
        }
        let mut points = Vec::new();
        if ring {
            for (i, (ep, w)) in endpoints.iter().zip(&weights).enumerate() {
                // Weight scales the points, within reason: a weight of
                // 1000 must not build a ring of millions.
                let n = RING_POINTS * (*w).clamp(1, 16) as usize;
                for k in 0..n {
                    let point = stable_hash(format!("{}-{k}", ep.addr).as_bytes());
                    points.push((point, i as u32));
                }
            }
            points.sort_unstable();
        }
        EndpointSet {
            endpoints,
            weights,
            cumulative,
            ring: points,
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// How fresh the endpoints are, for /admin/backends and error messages.
#[derive(Debug, Clone)]
pub struct DiscoveryStatus {
    pub kind: SourceKind,
    /// E.g. `Consul service "users" at http://127.0.0.1:8500`.
    pub source: String,
    /// Whether a first list has been received (always, for static endpoints).
    pub resolved: bool,
    /// When the source last confirmed the list (changed or not).
    pub last_success: Option<Instant>,
    pub last_success_at: Option<SystemTime>,
    /// When the list last changed.
    pub last_change: Option<Instant>,
    /// The registry's index of the list in force (Consul's `X-Consul-Index`).
    pub version: Option<u64>,
    /// The last error, while the source is failing.
    pub error: Option<String>,
    pub failing_since: Option<Instant>,
}

impl DiscoveryStatus {
    /// How old the endpoints in force are: time since the source last confirmed them.
    pub fn age(&self) -> Option<Duration> {
        self.last_success.map(|t| t.elapsed())
    }
}

/// The state shared by the pool, its discovery task and its health checker.
#[derive(Debug)]
pub(crate) struct PoolShared {
    pub(crate) backend: String,
    dial: Dial,
    ring: bool,
    pub(crate) set: ArcSwap<EndpointSet>,
    pub(crate) status: ArcSwap<DiscoveryStatus>,
    /// Bumped on every update or failure: wakes calls waiting for a first
    /// list, and the health checker when endpoints join.
    pub(crate) changed: watch::Sender<u64>,
    /// Taken only to eject (rare), so two ejections cannot both pass the
    /// max-ejection check; never on the request path otherwise.
    pub(crate) eject_lock: Mutex<()>,
}

/// A backend's endpoints and the tasks that keep them current. Dropping the
/// pool (when its backend leaves the configuration) stops those tasks.
#[derive(Debug)]
pub struct Pool {
    pub(crate) shared: Arc<PoolShared>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Iterating a pool yields the endpoints in force now.
impl IntoIterator for &Pool {
    type Item = Arc<Endpoint>;
    type IntoIter = std::vec::IntoIter<Arc<Endpoint>>;

    fn into_iter(self) -> Self::IntoIter {
        self.current().endpoints.clone().into_iter()
    }
}

impl Pool {
    pub(crate) fn new(
        backend: &str,
        kind: SourceKind,
        source: String,
        initial: Option<Vec<Arc<Endpoint>>>,
        dial: impl Into<Dial>,
        ring: bool,
    ) -> Pool {
        let dial = dial.into();
        let resolved = initial.is_some();
        let endpoints = initial.unwrap_or_default();
        let weights = vec![1; endpoints.len()];
        let now = resolved.then(Instant::now);
        let shared = PoolShared {
            backend: backend.to_owned(),
            dial,
            ring,
            set: ArcSwap::from_pointee(EndpointSet::new(endpoints, weights, ring)),
            status: ArcSwap::from_pointee(DiscoveryStatus {
                kind,
                source,
                resolved,
                last_success: now,
                last_success_at: resolved.then(SystemTime::now),
                last_change: now,
                version: None,
                error: None,
                failing_since: None,
            }),
            changed: watch::channel(0).0,
            eject_lock: Mutex::new(()),
        };
        Pool {
            shared: Arc::new(shared),
            tasks: Vec::new(),
        }
    }

    /// Starts from what `previous` knows, the pool of the backend this one
    /// replaces on a reload, when both read the same discovery source: its
    /// endpoints (the same objects, so their connections, ejections and
    /// health go on; new ones if `connect_timeout` or `compression` changed, as
    /// they are part of
    /// the connection) and its discovery status (a source failing now stays
    /// failing). Without this a backend edited during a registry outage
    /// would start empty and refuse every call until the registry answers.
    /// Call before starting the pool's discovery task, so that a fresh
    /// answer is never overwritten by this older one.
    pub(crate) fn inherit(&self, previous: &Pool) {
        let (new, old) = (&self.shared, &previous.shared);
        let set = old.set.load_full();
        let mut endpoints = Vec::with_capacity(set.len());
        let mut weights = Vec::with_capacity(set.len());
        for (ep, w) in set.endpoints.iter().zip(&set.weights) {
            let ep = if new.dial == old.dial {
                Arc::clone(ep)
            } else {
                match Endpoint::new(&ep.addr, ep.label.clone(), new.dial.clone()) {
                    Ok(e) => Arc::new(e),
                    Err(_) => continue,
                }
            };
            endpoints.push(ep);
            weights.push(*w);
        }
        new.set
            .store(Arc::new(EndpointSet::new(endpoints, weights, new.ring)));
        new.status.store(old.status.load_full());
    }

    /// Ties a task (discovery, health checks) to the pool's life.
    pub(crate) fn own(&mut self, task: AbortHandle) {
        self.tasks.push(task);
    }

    /// The endpoints in force now.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.shared.set.load_full()
    }

    pub fn status(&self) -> Arc<DiscoveryStatus> {
        self.shared.status.load_full()
    }

    /// Waits (until `deadline`) for the first list from discovery. False when
    /// the deadline passed or the source failed before giving one: the call
    /// then fails at once with the source's error instead of hanging.
    pub(crate) async fn wait_resolved(&self, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.shared.changed.subscribe();
        loop {
            let status = self.shared.status.load();
            if status.resolved {
                return true;
            }
            if status.error.is_some() {
                return false;
            }
            drop(status);
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }
}

impl PoolShared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl Sink for PoolShared {
    fn update(&self, targets: Vec<Target>, version: Option<u64>) {
        let current = self.set.load_full();
        let unchanged = current.len() == targets.len()
            && current
                .endpoints
                .iter()
                .zip(&current.weights)
                .zip(&targets)
                .all(|((ep, w), t)| ep.addr == t.addr && *w == t.weight);
        let now = Instant::now();
        let mut status = (**self.status.load()).clone();
        let first = !status.resolved;
        status.resolved = true;
        status.last_success = Some(now);
        status.last_success_at = Some(SystemTime::now());
        status.version = version.or(status.version);
        status.error = None;
        status.failing_since = None;
        if !unchanged {
            let known: HashMap<&str, &Arc<Endpoint>> = current
                .endpoints
                .iter()
                .map(|e| (e.addr.as_str(), e))
                .collect();
            let mut endpoints = Vec::with_capacity(targets.len());
            let mut weights = Vec::with_capacity(targets.len());
            let mut added = Vec::new();
            for t in &targets {
                let ep = match known.get(t.addr.as_str()) {
                    Some(ep) => Arc::clone(ep),
                    None => match Endpoint::new(&t.addr, t.label.clone(), self.dial.clone()) {
                        Ok(ep) => {
                            added.push(t.addr.as_str());
                            Arc::new(ep)
                        }
                        Err(e) => {
                            tracing::warn!(backend = %self.backend, error = %e, "discovery returned an unusable address; skipped");
                            continue;
                        }
                    },
                };
                endpoints.push(ep);
                weights.push(t.weight.max(1));
            }
            let removed: Vec<&str> = current
                .endpoints
                .iter()
                .filter(|e| !targets.iter().any(|t| t.addr == e.addr))
                .map(|e| e.addr.as_str())
                .collect();
            tracing::info!(
                backend = %self.backend,
                endpoints = endpoints.len(),
                added = ?added,
                removed = ?removed,
                version,
                "endpoints changed"
            );
            if endpoints.is_empty() && !first {
                tracing::warn!(backend = %self.backend, source = %status.source, "the source lists no instances; calls fail with 503 until one appears");
            }
            self.set
                .store(Arc::new(EndpointSet::new(endpoints, weights, self.ring)));
            status.last_change = Some(now);
        }
        self.status.store(Arc::new(status));
        self.bump();
    }

    fn failed(&self, error: String) {
        // Counted per failed query; logged once per state change elsewhere.
        metrics::counter!(
            crate::telemetry::metrics::DISCOVERY_ERRORS,
            "backend" => self.backend.to_string(),
            "source" => status_kind(&self.status.load())
        )
        .increment(1);
        let mut status = (**self.status.load()).clone();
        status.failing_since = status.failing_since.or(Some(Instant::now()));
        status.error = Some(error);
        self.status.store(Arc::new(status));
        self.bump();
    }
}

fn status_kind(s: &DiscoveryStatus) -> &'static str {
    s.kind.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str) -> Target {
        Target {
            addr: addr.into(),
            weight: 1,
            label: None,
        }
    }

    #[tokio::test]
    async fn update_keeps_endpoint_objects_that_stay() {
        let pool = Pool::new(
            "b",
            SourceKind::new("test"),
            "test".into(),
            None,
            Duration::from_secs(1),
            false,
        );
        pool.shared
            .update(vec![target("127.0.0.1:1"), target("127.0.0.1:2")], Some(3));
        let before = pool.current();
        pool.shared
            .update(vec![target("127.0.0.1:2"), target("127.0.0.1:3")], Some(4));
        let after = pool.current();
        assert!(Arc::ptr_eq(&before.endpoints[1], &after.endpoints[0]));
        assert_eq!(after.endpoints[1].addr, "127.0.0.1:3");
        assert_eq!(pool.status().version, Some(4));
        // An empty list is applied.
        pool.shared.update(Vec::new(), Some(5));
        assert!(pool.current().is_empty());
    }

    #[tokio::test]
    async fn failure_keeps_the_endpoints_and_records_the_error() {
        let pool = Pool::new(
            "b",
            SourceKind::new("test"),
            "test".into(),
            None,
            Duration::from_secs(1),
            false,
        );
        pool.shared.update(vec![target("127.0.0.1:1")], Some(1));
        pool.shared.failed("down".into());
        assert_eq!(pool.current().len(), 1);
        let st = pool.status();
        assert_eq!(st.error.as_deref(), Some("down"));
        assert!(st.failing_since.is_some());
        assert!(st.age().is_some());
    }

    #[tokio::test]
    async fn wait_resolved_returns_at_once_on_a_source_error() {
        let pool = Pool::new(
            "b",
            SourceKind::new("test"),
            "test".into(),
            None,
            Duration::from_secs(1),
            false,
        );
        let shared = pool.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            shared.failed("unreachable".into());
        });
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(!pool.wait_resolved(deadline).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
