//! Backends: where a call goes and what happens when it fails.
//!
//! A [`Backend`] is a [`Pool`] of endpoints kept current by discovery
//! (static, DNS or Consul), a balancer, outlier ejection, optional active
//! health checks, a circuit breaker with a concurrency limit, and retries
//! bounded by attempts, the deadline and a budget. [`Backend::call`] runs
//! one request through all of it. Nothing on that path takes a lock: the
//! endpoint set is an `ArcSwap` snapshot and every counter is an atomic.

mod balancer;
mod breaker;
mod call;
mod client;
mod codec;
pub mod deadline;
mod endpoint;
pub mod health;
pub mod options;
mod outlier;
mod pool;
pub mod reflection;
mod retry;
mod rng;
mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::consul::{ConsulClient, ConsulSpec};
use crate::discovery::{self, Sink};

pub use balancer::{HashKey, Policy};
pub use breaker::{BreakerSpec, BreakerStatus};
pub use call::{
    client_ip, Attempted, CallError, CallRequest, ReplyStream, StreamReply, StreamRequest,
};
pub use client::{Outgoing, RequestBody};
pub use codec::{BytesDecoder, DynamicCodec, RawCodec};
pub use endpoint::{Endpoint, EndpointError};
pub use health::HealthCheckSpec;
pub use outlier::OutlierSpec;
pub use pool::{DiscoveryStatus, EndpointSet, Pool, SourceKind};
pub use retry::{parse_code, RetrySpec, RouteRetry};

use balancer::Balancer;
use breaker::Breaker;
use endpoint::{HEALTH_NOT_SERVING, HEALTH_SERVING, HEALTH_UNKNOWN};
use retry::RetryBudget;
use window::now_ms;

/// Largest gRPC message accepted from (and sent to) a backend. tonic's
/// default of 4 MiB matches the request body limit, but replies (lists,
/// reports) are often larger; 16 MiB still bounds what one reply can hold
/// in memory.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// What a backend's endpoints are made from; a reload keeps the live
/// backend (and its connections) when this and its [`BackendOptions`]
/// have not changed. With `consul`, `endpoints` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDefinition {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// Discovery, balancing and resilience settings, all with defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendOptions {
    /// Take the endpoints from Consul instead of `endpoints`.
    pub consul: Option<ConsulSpec>,
    /// How often DNS names among `endpoints` are resolved again.
    pub dns_refresh: Duration,
    pub policy: Policy,
    /// Required by [`Policy::ConsistentHash`].
    pub hash_key: Option<HashKey>,
    pub health_check: Option<HealthCheckSpec>,
    pub outlier: OutlierSpec,
    pub retry: RetrySpec,
    pub breaker: BreakerSpec,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            consul: None,
            dns_refresh: discovery::dns::DEFAULT_REFRESH,
            policy: Policy::RoundRobin,
            hash_key: None,
            health_check: None,
            outlier: OutlierSpec::default(),
            retry: RetrySpec::default(),
            breaker: BreakerSpec::default(),
        }
    }
}

/// Counters a metrics layer can read; they only go up.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    /// Retries the budget refused.
    pub retries_over_budget: AtomicU64,
    pub ejections: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub breaker_half_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
    /// Calls refused at once because the breaker was open (or half-open and full).
    pub rejected_open: AtomicU64,
    /// Calls refused because `max_requests` were in flight.
    pub rejected_overload: AtomicU64,
    /// Calls refused because the backend had no endpoint at all.
    pub no_endpoints: AtomicU64,
    /// Attempts sent while no endpoint was in rotation (every one ejected
    /// or failing health checks): panic mode, picking among all of them.
    pub panic_routed: AtomicU64,
    pub deadline_exceeded: AtomicU64,
}

impl BackendStats {
    /// Name and value of every counter, for views and exporters.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", v(&self.requests)),
            ("retries", v(&self.retries)),
            ("retries_over_budget", v(&self.retries_over_budget)),
            ("ejections", v(&self.ejections)),
            ("breaker_opened", v(&self.breaker_opened)),
            ("breaker_half_opened", v(&self.breaker_half_opened)),
            ("breaker_closed", v(&self.breaker_closed)),
            ("rejected_open", v(&self.rejected_open)),
            ("rejected_overload", v(&self.rejected_overload)),
            ("no_endpoints", v(&self.no_endpoints)),
            ("panic_routed", v(&self.panic_routed)),
            ("deadline_exceeded", v(&self.deadline_exceeded)),
        ]
    }

    /// The HELP text of each counter in [`BackendStats::snapshot`], as
    /// /metrics shows it (`gateway_backend_NAME_total`).
    pub fn help(name: &str) -> &'static str {
        match name {
            "requests" => "Calls started on the backend, refused ones included; retries count once",
            "retries" => "Attempts repeated on another endpoint after a retryable failure",
            "retries_over_budget" => {
                "Retries not made because the backend's retry budget was spent"
            }
            "ejections" => "Endpoints taken out of rotation by outlier detection",
            "breaker_opened" => "Times the circuit breaker opened and began refusing calls",
            "breaker_half_opened" => {
                "Times the circuit breaker let probe calls through after its open period"
            }
            "breaker_closed" => "Times the circuit breaker closed again after successful probes",
            "rejected_open" => {
                "Calls refused at once because the circuit breaker was open (or half-open and full)"
            }
            "rejected_overload" => {
                "Calls refused because the backend's max_requests were already in flight"
            }
            "no_endpoints" => {
                "Calls refused because the backend had no endpoint at all (or none yet)"
            }
            "panic_routed" => {
                "Attempts sent while no endpoint was in rotation (panic mode: all endpoints used)"
            }
            "deadline_exceeded" => {
                "Calls answered DEADLINE_EXCEEDED: the deadline or per-try timeout passed, \
                 or the instance answered DEADLINE_EXCEEDED"
            }
            _ => "",
        }
    }
}

/// A named group of instances serving the same services.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub definition: BackendDefinition,
    pub options: BackendOptions,
    /// The endpoints in force; `for ep in &backend.endpoints` lists them.
    pub endpoints: Pool,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub stats: BackendStats,
    balancer: Balancer,
    breaker: Breaker,
    budget: RetryBudget,
    in_flight: AtomicU32,
    /// Whether the last pick was in panic mode, to log entering and leaving it once.
    in_panic: AtomicBool,
}

impl Backend {
    /// A backend with default options; must run inside a tokio runtime
    /// (channels and discovery tasks are spawned there).
    pub fn new(name: &str, definition: BackendDefinition) -> Result<Backend, EndpointError> {
        Self::with_options(name, definition, BackendOptions::default())
    }

    /// Builds the pool and starts what keeps it current: a Consul watch, a
    /// DNS refresher for names among the endpoints, active health checks.
    /// They stop when the backend is dropped.
    pub fn with_options(
        name: &str,
        definition: BackendDefinition,
        options: BackendOptions,
    ) -> Result<Backend, EndpointError> {
        Self::replacing(name, definition, options, None)
    }

    /// [`with_options`](Self::with_options) for a reload that changed the
    /// backend named `name`, `previous`: when its discovery source is the
    /// same, the new backend starts with its endpoints (and their state) and
    /// its discovery status instead of empty. Only a new source starts over.
    pub fn replacing(
        name: &str,
        definition: BackendDefinition,
        options: BackendOptions,
        previous: Option<&Backend>,
    ) -> Result<Backend, EndpointError> {
        let connect_timeout = definition.connect_timeout;
        // Same Consul service, or the same endpoint list (static or DNS).
        let inherit = previous.filter(|old| match (&options.consul, &old.options.consul) {
            (Some(new), Some(old)) => new == old,
            (None, None) => old.definition.endpoints == definition.endpoints,
            _ => false,
        });
        let seed = |pool: &Pool| {
            if let Some(old) = inherit {
                pool.inherit(&old.endpoints);
            }
        };
        let ring = options.policy == Policy::ConsistentHash;
        let mut pool = if let Some(spec) = &options.consul {
            let client = ConsulClient::new(spec.clone()).map_err(|e| EndpointError {
                addr: spec.address.clone(),
                reason: e.to_string(),
            })?;
            let mut pool = Pool::new(
                name,
                SourceKind::Consul,
                spec.describe(),
                None,
                connect_timeout,
                ring,
            );
            seed(&pool);
            let sink: Arc<dyn Sink> = pool.shared.clone();
            let task = tokio::spawn(discovery::consul::watch(client, sink, name.to_owned()));
            pool.own(task.abort_handle());
            pool
        } else {
            // Names start as one endpoint each (resolved when connecting),
            // so calls need not wait for the first DNS answer.
            let initial = definition
                .endpoints
                .iter()
                .map(|addr| Endpoint::new(addr, None, connect_timeout).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let names = definition
                .endpoints
                .iter()
                .any(|e| discovery::dns::is_name(e));
            let (kind, source) = if names {
                (
                    SourceKind::Dns,
                    format!("DNS ({})", definition.endpoints.join(", ")),
                )
            } else {
                (SourceKind::Static, "static endpoints".to_owned())
            };
            let mut pool = Pool::new(name, kind, source, Some(initial), connect_timeout, ring);
            seed(&pool);
            if names {
                let sink: Arc<dyn Sink> = pool.shared.clone();
                let task = tokio::spawn(discovery::dns::watch(
                    definition.endpoints.clone(),
                    options.dns_refresh,
                    sink,
                    name.to_owned(),
                ));
                pool.own(task.abort_handle());
            }
            pool
        };
        if inherit.is_some() && options.health_check.is_none() {
            // Checks are off now: what they last said must not keep an
            // endpoint out of rotation forever.
            for ep in &pool {
                ep.state.health.store(HEALTH_UNKNOWN, Ordering::Relaxed);
            }
        }
        if let Some(spec) = &options.health_check {
            let task = tokio::spawn(health::run(pool.shared.clone(), spec.clone()));
            pool.own(task.abort_handle());
        }
        Ok(Backend {
            name: name.to_owned(),
            timeout: definition.timeout,
            connect_timeout,
            definition,
            stats: BackendStats::default(),
            balancer: Balancer::new(options.policy, options.outlier.max_ejection_percent),
            breaker: Breaker::new(options.breaker.clone()),
            budget: RetryBudget::new(&options.retry),
            in_flight: AtomicU32::new(0),
            in_panic: AtomicBool::new(false),
            endpoints: pool,
            options,
        })
    }

    /// Whether `definition` and `options` describe this backend exactly, so
    /// a reload can keep it (with its connections and discovery watch).
    pub fn same_as(&self, definition: &BackendDefinition, options: &BackendOptions) -> bool {
        self.definition == *definition && self.options == *options
    }

    /// Why a pick found nothing: the set is empty (a non-empty set always
    /// gives an endpoint, in panic mode if need be).
    fn no_endpoint_message(&self) -> String {
        let st = self.endpoints.status();
        let what = match &self.options.consul {
            Some(c) if c.passing_only => "passing instances",
            _ => "instances",
        };
        let mut msg = format!(
            "backend \"{}\" has no endpoints: {} lists no {what}",
            self.name, st.source
        );
        if let Some(e) = &st.error {
            msg.push_str(&format!(" (and is failing now: {e})"));
        }
        msg
    }

    /// Everything /admin/backends shows about this backend.
    pub fn status(&self) -> BackendStatus {
        let set = self.endpoints.current();
        let now = now_ms();
        let checks = self.options.health_check.is_some();
        let rotation =
            balancer::Rotation::new(&set, now, self.options.outlier.max_ejection_percent);
        let endpoints = set
            .endpoints
            .iter()
            .zip(&set.weights)
            .enumerate()
            .map(|(i, (ep, w))| {
                let st = &ep.state;
                let until = st.ejected_until.load(Ordering::Relaxed);
                let health = st.health.load(Ordering::Relaxed);
                EndpointStatus {
                    address: ep.addr.clone(),
                    label: ep.label.clone(),
                    weight: *w,
                    state: if until > now {
                        "ejected"
                    } else if health == HEALTH_NOT_SERVING {
                        "failing_health_checks"
                    } else {
                        "healthy"
                    },
                    health_check: match (checks, health) {
                        (false, _) => "off",
                        (true, HEALTH_SERVING) => "serving",
                        (true, HEALTH_NOT_SERVING) => "not_serving",
                        (true, _) => "unknown",
                    },
                    in_rotation: rotation.contains(i),
                    ejection_lifted: rotation.ejection_lifted(i),
                    in_flight: st.in_flight.load(Ordering::Relaxed),
                    consecutive_failures: st.consecutive_failures.load(Ordering::Relaxed),
                    ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
                    ejections: st.ejections.load(Ordering::Relaxed),
                    requests: st.requests.load(Ordering::Relaxed),
                    failures: st.failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        BackendStatus {
            discovery: self.endpoints.status(),
            policy: self.options.policy.name(),
            hash_key: self.options.hash_key.as_ref().map(HashKey::describe),
            breaker: self.breaker.status(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_requests: self.breaker.max_requests(),
            panic: !set.is_empty() && rotation.is_empty(),
            endpoints,
        }
    }
}

/// A backend's state, for /admin/backends (and a later metrics layer).
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub discovery: Arc<DiscoveryStatus>,
    pub policy: &'static str,
    pub hash_key: Option<String>,
    pub breaker: BreakerStatus,
    pub in_flight: u32,
    pub max_requests: u32,
    /// No endpoint is in rotation: calls go to all of them (panic mode).
    pub panic: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub address: String,
    pub label: Option<String>,
    pub weight: u32,
    /// `healthy`, `ejected` or `failing_health_checks`.
    pub state: &'static str,
    /// `off`, `unknown`, `serving` or `not_serving`.
    pub health_check: &'static str,
    /// Whether the balancer may pick it (outside panic mode).
    pub in_rotation: bool,
    /// Ejected, but in rotation because `max_ejection_percent` of the
    /// current set would be exceeded otherwise.
    pub ejection_lifted: bool,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    pub ejected_for: Option<Duration>,
    pub ejections: u64,
    pub requests: u64,
    pub failures: u64,
}
