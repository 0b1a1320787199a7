//! Backends: where a call goes and what happens when it fails.
//!
//! A [`Backend`] is a [`Pool`] of endpoints kept current by discovery
//! (static, DNS or Consul), a balancer, outlier ejection, optional active
//! health checks, a circuit breaker with a concurrency limit, and retries
//! bounded by attempts, the deadline and a budget, and optionally an
//! adaptive concurrency limit that sheds what the backend cannot take
//! ([`adaptive`]). [`Backend::call`] runs one request through all of it.
//! Nothing on that path waits for a lock: the endpoint set is an `ArcSwap`
//! snapshot, every counter is an atomic, and the limiter's controller is
//! only `try_lock`ed, once per sampling window.

pub mod adaptive;
mod balancer;
mod breaker;
mod call;
mod client;
mod codec;
pub mod deadline;
pub mod dial;
mod endpoint;
pub mod health;
pub mod options;
mod outlier;
mod pool;
pub mod reflection;
mod retry;
mod rng;
pub mod tls;
mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::{self, DiscoverySpec, Source};

pub use adaptive::{AdaptiveSpec, AdaptiveStatus};
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

use adaptive::Limiter;
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

/// A backend's connection settings and its `endpoints` as configured
/// (empty with a registry; the pool is filled from
/// [`BackendOptions::discovery`]); a reload keeps the live backend (and its
/// connections) when this and its [`BackendOptions`] have not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDefinition {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// `compression`: how request messages are compressed.
    pub compression: Option<crate::encoding::grpc::MessageCompression>,
    /// `tls`: TLS (and mTLS) to the instances; plaintext when absent.
    pub tls: Option<Arc<tls::BackendTls>>,
}

/// Discovery, balancing and resilience settings, all with defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendOptions {
    /// Where the instances come from: the `endpoints` list (static, or DNS
    /// names resolved again every `dns_refresh`) or a registry.
    pub discovery: DiscoverySpec,
    pub policy: Policy,
    /// Required by [`Policy::ConsistentHash`].
    pub hash_key: Option<HashKey>,
    pub health_check: Option<HealthCheckSpec>,
    pub outlier: OutlierSpec,
    pub retry: RetrySpec,
    pub breaker: BreakerSpec,
    /// `adaptive_concurrency`: none by default (the backend pays nothing).
    pub adaptive: Option<AdaptiveSpec>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            discovery: DiscoverySpec::default(),
            policy: Policy::RoundRobin,
            hash_key: None,
            health_check: None,
            outlier: OutlierSpec::default(),
            retry: RetrySpec::default(),
            breaker: BreakerSpec::default(),
            adaptive: None,
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
    /// The adaptive concurrency limit, when configured.
    adaptive: Option<Limiter>,
    /// Whether the last pick was in panic mode, to log entering and leaving it once.
    in_panic: AtomicBool,
    /// What fills `endpoints`, built from `options.discovery`.
    discovery: Box<dyn Source>,
}

impl Backend {
    /// A backend of `definition.endpoints` (static, or DNS names resolved
    /// again every 5 s) with default options; must run inside a tokio
    /// runtime (channels and discovery tasks are spawned there).
    pub fn new(name: &str, definition: BackendDefinition) -> Result<Backend, EndpointError> {
        let discovery = DiscoverySpec::endpoints(
            definition.endpoints.clone(),
            discovery::dns::DEFAULT_REFRESH,
        );
        let options = BackendOptions {
            discovery,
            ..BackendOptions::default()
        };
        Self::with_options(name, definition, options)
    }

    /// Builds the pool and starts what keeps it current: the discovery
    /// source `options.discovery` names, active health checks. They stop
    /// when the backend is dropped.
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
        let source = options.discovery.source().map_err(|e| EndpointError {
            addr: e.address,
            reason: e.reason,
        })?;
        Self::from_source(name, definition, options, source, previous)
    }

    /// [`replacing`](Self::replacing) with the source already built from
    /// `options.discovery` (tests give a fake one).
    fn from_source(
        name: &str,
        definition: BackendDefinition,
        options: BackendOptions,
        source: Box<dyn Source>,
        previous: Option<&Backend>,
    ) -> Result<Backend, EndpointError> {
        let connect_timeout = definition.connect_timeout;
        let dial = endpoint::Dial {
            connect_timeout,
            compression: definition.compression,
            tls: definition.tls.clone(),
        };
        let inherit = previous.filter(|old| source.same_source(&*old.discovery));
        let initial = source
            .initial()
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|addr| Endpoint::new(addr, None, dial.clone()).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ring = options.policy == Policy::ConsistentHash;
        let mut pool = Pool::new(name, source.kind(), source.describe(), initial, dial, ring);
        if let Some(old) = inherit {
            // Before the source starts: its first answer must not be
            // overwritten by this older list.
            pool.inherit(&old.endpoints);
        }
        for task in source.start(name, pool.shared.clone()) {
            pool.own(task);
        }
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
            adaptive: options.adaptive.clone().map(Limiter::new),
            in_panic: AtomicBool::new(false),
            endpoints: pool,
            options,
            discovery: source,
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
        let mut msg = format!(
            "backend \"{}\" has no endpoints: {} lists no {}",
            self.name,
            st.source,
            self.discovery.listed()
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
            adaptive: self.adaptive.as_ref().map(Limiter::status),
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
    /// The adaptive concurrency limit's state, when configured.
    pub adaptive: Option<AdaptiveStatus>,
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

#[cfg(test)]
mod discovery_tests;
