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
mod unary;
mod window;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::discovery::{self, DiscoverySpec, Source};

pub use balancer::{HashKey, Policy};
pub use breaker::{BreakerSpec, BreakerStatus};
pub use codec::{BytesDecoder, DynamicCodec, RawCodec};
pub use endpoint::{Endpoint, EndpointError};
pub use health::HealthCheckSpec;
pub use outlier::OutlierSpec;
pub use pool::{DiscoveryStatus, EndpointSet, Pool, SourceKind};
pub use retry::{parse_code, RetrySpec, RouteRetry};

use balancer::Balancer;
use breaker::{Admission, Breaker};
use endpoint::{InFlight, HEALTH_NOT_SERVING, HEALTH_SERVING, HEALTH_UNKNOWN};
use retry::{Failure, RetryBudget};
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
    /// What fills `endpoints`, built from `options.discovery`.
    discovery: Box<dyn Source>,
}

/// One request to a backend.
#[derive(Debug)]
pub struct CallRequest<'a> {
    pub path: PathAndQuery,
    /// The request message, encoded.
    pub body: Bytes,
    pub metadata: MetadataMap,
    /// The call's deadline: the route's timeout, or the client's
    /// `grpc-timeout` / `X-Request-Timeout` when smaller. The caller reads
    /// the headers once, where an unreadable one is refused.
    pub timeout: Duration,
    pub retry: RouteRetry<'a>,
    /// The client's request headers (deadline, hash key).
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
}

/// On a successful reply's extensions: which endpoint answered, after how
/// many attempts (for the access log and metrics).
#[derive(Debug, Clone)]
pub struct Attempted {
    pub addr: String,
    pub attempts: u32,
}

/// Why a call produced no reply.
#[derive(Debug)]
pub enum CallError {
    /// The backend answered with an error, the transport to it failed, or
    /// the deadline passed while waiting: `addr` is the last endpoint tried.
    Upstream {
        status: tonic::Status,
        addr: String,
        attempts: u32,
    },
    /// The gateway did not call: circuit open, too many calls in flight, no
    /// endpoint in rotation, or the client's deadline had already passed.
    /// `message` names the backend and the reason.
    Refused { code: Code, message: String },
}

fn refused(code: Code, message: String) -> CallError {
    CallError::Refused { code, message }
}

/// A fallback client address for hashing, when the edge has not settled one:
/// the peer address if the server recorded it (`ConnectInfo`), else the
/// first `X-Forwarded-For` entry, else `X-Real-IP`. Used for balancing only,
/// where a forged header can only choose which instance serves its own request.
pub fn client_ip(headers: &HeaderMap, extensions: &http::Extensions) -> Option<IpAddr> {
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .or_else(|| header("x-real-ip"))
        .and_then(|v| v.trim().parse().ok())
}

/// The breaker's admission, returned unused if the call is dropped midway
/// (the client went away) so a half-open probe slot is not lost.
struct Admitted<'a> {
    backend: &'a Backend,
    admission: Admission,
    done: bool,
}

impl Admitted<'_> {
    fn finish(&mut self, failed: bool) {
        self.done = true;
        let b = self.backend;
        b.breaker.record(self.admission, failed, &b.stats, &b.name);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.backend.breaker.abandon(self.admission);
        }
    }
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
        let inherit = previous.filter(|old| source.same_source(&*old.discovery));
        let initial = source
            .initial()
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|addr| Endpoint::new(addr, None, connect_timeout).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ring = options.policy == Policy::ConsistentHash;
        let mut pool = Pool::new(
            name,
            source.kind(),
            source.describe(),
            initial,
            connect_timeout,
            ring,
        );
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

    /// One request: deadline, concurrency limit, breaker, balancing, and
    /// retries on another endpoint with backoff, within the budget.
    pub async fn call(&self, req: CallRequest<'_>) -> Result<tonic::Response<Bytes>, CallError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let timeout = req.timeout;
        let deadline = tokio::time::Instant::now() + timeout;

        // The limit first: it is the cheapest refusal, and a refused call
        // must not count as a failure in the breaker's window.
        let _in_flight = InFlight::enter(&self.in_flight);
        let limit = self.breaker.max_requests();
        if self.in_flight.load(Ordering::Relaxed) > limit {
            self.stats.rejected_overload.fetch_add(1, Ordering::Relaxed);
            return Err(refused(
                Code::Unavailable,
                format!(
                    "backend \"{}\" is at its limit of {limit} calls in flight; try again shortly",
                    self.name
                ),
            ));
        }
        let admission = match self.breaker.admit(&self.stats, &self.name) {
            Ok(a) => a,
            Err(why) => {
                self.stats.rejected_open.fetch_add(1, Ordering::Relaxed);
                return Err(refused(
                    Code::Unavailable,
                    format!("backend \"{}\" is unavailable: {why}", self.name),
                ));
            }
        };
        let mut admitted = Admitted {
            backend: self,
            admission,
            done: false,
        };
        if timeout.is_zero() {
            self.stats.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
            return Err(refused(
                Code::DeadlineExceeded,
                format!(
                    "the client's deadline had passed before the call to backend \"{}\" started",
                    self.name
                ),
            ));
        }
        // Boxed: only calls before the first discovery answer wait here, and
        // the wait's state inline would enlarge every call's future.
        if !self.endpoints.shared.status.load().resolved
            && !Box::pin(self.endpoints.wait_resolved(deadline)).await
        {
            self.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
            let st = self.endpoints.status();
            let why = match &st.error {
                Some(e) => e.clone(),
                None => format!("still waiting for {}", st.source),
            };
            return Err(refused(
                Code::Unavailable,
                format!("backend \"{}\" has no endpoints yet: {why}", self.name),
            ));
        }
        self.budget.request();

        let key = match (&self.options.policy, &self.options.hash_key) {
            (Policy::ConsistentHash, Some(k)) => k.hash(req.headers, &req.metadata, req.client_ip),
            _ => None,
        };
        let spec = &self.options.retry;
        // Endpoints already tried, for a retry to avoid; filled only when a
        // retry happens, so a call that succeeds first time allocates nothing.
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(tonic::Status, String)> = None;
        let mut attempt = 0u32;
        // Attempts that never reached an instance: they do not count against
        // `attempts` (see `retry`), but are bounded by the number of endpoints.
        let mut unsent = 0u32;
        loop {
            attempt += 1;
            let (picked, known) = {
                let set = self.endpoints.shared.set.load();
                let picked = self
                    .balancer
                    .pick(&set, key, &tried, now_ms())
                    .ok_or_else(|| self.no_endpoint_message());
                (picked, set.len() as u32)
            };
            let ep = match picked {
                Ok(picked) => {
                    self.note_panic(picked.panic);
                    picked.endpoint
                }
                Err(message) => {
                    admitted.finish(last.is_some());
                    return Err(match last {
                        Some((status, addr)) => self.upstream_error(status, addr, attempt - 1),
                        None => {
                            self.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
                            refused(Code::Unavailable, message)
                        }
                    });
                }
            };
            let (failure, status) = match self.attempt(&ep, &req, deadline, attempt).await {
                Ok(mut reply) => {
                    outlier::success(&ep, &self.options.outlier);
                    admitted.finish(false);
                    reply.extensions_mut().insert(Attempted {
                        addr: ep.addr.clone(),
                        attempts: attempt,
                    });
                    return Ok(reply);
                }
                Err(failed) => failed,
            };
            if failure.is_endpoint_failure() {
                outlier::failure(
                    &ep,
                    &self.options.outlier,
                    &self.endpoints.shared,
                    &self.stats,
                );
            } else {
                outlier::success(&ep, &self.options.outlier);
            }
            let code = status.code();
            let status = match failure {
                // One message for every call that ran out of time, whoever noticed.
                Failure::Answered(Code::DeadlineExceeded) => {
                    tracing::debug!(
                        backend = %self.name,
                        upstream.addr = %ep.addr,
                        error = status.message(),
                        "the backend answered DEADLINE_EXCEEDED"
                    );
                    tonic::Status::with_details_and_metadata(
                        Code::DeadlineExceeded,
                        deadline::exceeded_message(&self.name, timeout),
                        status.details().to_vec().into(),
                        status.metadata().clone(),
                    )
                }
                Failure::Answered(_) | Failure::TimedOut => status,
                _ => retry::as_unavailable(status),
            };
            // Never sent: safe on any route and adds no load, so neither
            // `attempts` nor the budget limits it; once per endpoint at most.
            let transparent = failure == Failure::Connect && unsent < known;
            let allowed = transparent
                || (attempt - unsent < spec.attempts && failure.retryable(&req.retry, spec));
            if allowed {
                let wait = if transparent {
                    Duration::ZERO
                } else {
                    retry::backoff(spec, attempt - unsent)
                };
                let in_time = tokio::time::Instant::now() + wait < deadline;
                if in_time && (transparent || self.budget.try_retry()) {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        backend = %self.name,
                        upstream.addr = %ep.addr,
                        grpc.code = ?code,
                        attempt,
                        transparent,
                        wait_ms = wait.as_millis() as u64,
                        "retrying on another endpoint"
                    );
                    unsent += u32::from(failure == Failure::Connect);
                    last = Some((status, ep.addr.clone()));
                    tried.push(Arc::as_ptr(&ep) as usize);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if in_time {
                    self.stats
                        .retries_over_budget
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            admitted.finish(failure.is_endpoint_failure());
            return Err(self.upstream_error(status, ep.addr.clone(), attempt));
        }
    }

    /// One try on `ep`, bounded by the per-try timeout and the deadline; a
    /// failure comes back classified, with the status to show if it is the last.
    async fn attempt(
        &self,
        ep: &Endpoint,
        req: &CallRequest<'_>,
        deadline: tokio::time::Instant,
        attempt: u32,
    ) -> Result<tonic::Response<Bytes>, (Failure, tonic::Status)> {
        ep.state.requests.fetch_add(1, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let per_try = self.options.retry.per_try_timeout;
        let end = per_try.map_or(deadline, |t| deadline.min(now + t));
        // A trace span per attempt (retries are siblings), the backend's parent.
        let span = crate::telemetry::otel::Attempt::start(&req.path, &ep.addr, attempt);
        let outcome = {
            let _ep_in_flight = InFlight::enter(&ep.state.in_flight);
            // The instance is told this try's end, not the call's: it can
            // give up when the gateway does.
            tokio::time::timeout_at(
                end,
                ep.unary_encoded(
                    req.path.clone(),
                    req.body.clone(),
                    span.metadata(&req.metadata),
                    end.saturating_duration_since(now),
                ),
            )
            .await
        };
        span.end(match &outcome {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(e)) => e.status.code(),
            Err(_) => Code::DeadlineExceeded,
        });
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err((Failure::classify(&e.status, e.sent), e.status)),
            Err(_) => {
                let message = match per_try {
                    Some(t) if end < deadline => format!(
                        "backend \"{}\" did not answer within the per-try timeout of {t:?}",
                        self.name
                    ),
                    _ => deadline::exceeded_message(&self.name, req.timeout),
                };
                Err((Failure::TimedOut, tonic::Status::deadline_exceeded(message)))
            }
        }
    }

    /// The error of a call that tried and failed; every DEADLINE_EXCEEDED
    /// answer counts in `deadline_exceeded`, whoever noticed the deadline.
    fn upstream_error(&self, status: tonic::Status, addr: String, attempts: u32) -> CallError {
        if status.code() == Code::DeadlineExceeded {
            self.stats.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
        }
        CallError::Upstream {
            status,
            addr,
            attempts,
        }
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

    /// Counts a panic-mode attempt, and logs entering and leaving panic
    /// mode once each (a relaxed load per call otherwise).
    fn note_panic(&self, panic: bool) {
        if panic {
            self.stats.panic_routed.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_panic.load(Ordering::Relaxed) != panic
            && self.in_panic.swap(panic, Ordering::Relaxed) != panic
        {
            if panic {
                tracing::warn!(backend = %self.name, "no endpoint in rotation (all ejected or failing health checks); sending to all of them (panic mode)");
            } else {
                tracing::info!(backend = %self.name, "endpoints in rotation again; panic mode over");
            }
        }
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

#[cfg(test)]
mod discovery_tests;
