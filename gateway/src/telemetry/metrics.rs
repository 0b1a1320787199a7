//! Prometheus metrics: names, the recorder, and the `/metrics` text.
//!
//! Names follow Prometheus conventions: a `gateway_` prefix, base units in
//! the name (`_seconds`, `_bytes`), `_total` on counters.
//!
//! Every label value comes from a fixed set or from the configuration, never
//! from what a client sent, so no client can add series: the route is the
//! configured template (`(none)` when nothing matched), the method is one of
//! the nine standard ones, the route's own configured method or `_OTHER`
//! (OpenTelemetry's HTTP semantic conventions), the status is its class
//! (`1xx`..`5xx`) and the gRPC code one of the 17 names. Backends, gRPC
//! methods and rate-limit policies are names from routes.toml.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "gateway_http_requests_total";
pub const HTTP_DURATION: &str = "gateway_http_request_duration_seconds";
pub const IN_FLIGHT: &str = "gateway_http_requests_in_flight";
pub const UPSTREAM_REQUESTS: &str = "gateway_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "gateway_upstream_request_duration_seconds";
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
/// Requests refused by their `buf.validate` rules, by route template.
pub const VALIDATION_FAILURES: &str = "gateway_validation_failures_total";
/// Response cache hits, by route template.
pub const CACHE_HITS: &str = "gateway_cache_hits_total";
/// Response cache misses (the backend was called, or a waiter joined a
/// call), by route template.
pub const CACHE_MISSES: &str = "gateway_cache_misses_total";
/// Cached answers evicted to stay under `[cache] max_bytes`.
pub const CACHE_EVICTIONS: &str = "gateway_cache_evictions_total";
/// Degraded answers, by route template and kind (`stale`, `static`).
pub const FALLBACKS: &str = "gateway_fallbacks_total";
pub const CORS_PREFLIGHTS: &str = "gateway_cors_preflights_total";
pub const CONFIG_RELOADS: &str = "gateway_config_reloads_total";
pub const CONFIG_VERSION: &str = "gateway_config_version";
pub const BUILD_INFO: &str = "gateway_build_info";
pub const DISCOVERY_ERRORS: &str = "gateway_discovery_errors_total";
/// Requests the gateway-wide shed answered 503 (`server.max_in_flight`),
/// by reason.
pub const OVERLOAD_SHED: &str = "gateway_overload_shed_total";
/// The share of new requests the CPU trigger sheds now (0 to 0.9).
pub const OVERLOAD_SHED_RATIO: &str = "gateway_overload_shed_ratio";
pub const DRAIN_ABORTED: &str = "gateway_http_drain_aborted_total";
/// By the JWKS URL, which only the config names: bounded.
pub const JWKS_FETCH_FAILURES: &str = "gateway_jwks_fetch_failures_total";
/// Bearer tokens served from the verified-token cache (no signature
/// check); no labels: a per-token or per-subject label would let clients
/// add series.
pub const JWT_CACHE_HITS: &str = "gateway_jwt_cache_hits_total";
/// Bearer tokens the verified-token cache could not answer for (verified
/// in full: new, expired from the cache, another key generation, or an
/// issuer the route does not accept).
pub const JWT_CACHE_MISSES: &str = "gateway_jwt_cache_misses_total";
/// Rate-limit decisions made without the Redis store, by policy and reason
/// (`timeout`, `error`, `down`).
pub const RATE_LIMIT_STORE_FALLBACKS: &str = "gateway_ratelimit_store_fallbacks_total";
/// 1 while the Redis rate-limit store answers, 0 while it is down; rendered
/// from the live snapshot at each scrape (`RedisStore::render`).
pub const RATE_LIMIT_STORE_UP: &str = "gateway_ratelimit_store_up";
/// notAfter of each certificate the listener serves, by its first DNS name;
/// rendered from the live snapshot at each scrape (`edge::tls::Tls::render`),
/// so a certificate taken out of the config leaves no stale series.
pub const TLS_CERTIFICATE_EXPIRY: &str = "gateway_tls_certificate_expiry_seconds";

/// From a quarter millisecond (a cached, local answer) to 30 s (past every
/// default deadline), roughly ×2.5 apart.
const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle. A process
/// that already has another recorder (a test binary running several
/// gateways) keeps one shared registry.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("static, non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts (once per process, on the current tokio runtime) the task that
/// folds histogram samples into their buckets. The recorder keeps every
/// sample in a lock-free queue until a scrape or an upkeep drains it; with
/// nobody scraping /metrics that queue grew by about 25 bytes a request
/// (RSS +0.6 MiB/s under the load bench) for as long as the process ran.
/// The exporter's own `install` runs the same upkeep every 5 s; the gateway
/// builds its recorder by hand, so it must too.
pub fn start_upkeep() {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let handle = handle();
    rt.spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status class"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from request to response headers, by route template and method"
    );
    describe_gauge!(IN_FLIGHT, "HTTP requests being served now");
    describe_counter!(
        OVERLOAD_SHED,
        "Requests answered 503 at once because the gateway was saturated, by reason (max_in_flight, cpu)"
    );
    describe_gauge!(
        OVERLOAD_SHED_RATIO,
        "Share of new requests the gateway sheds now because its CPU use is over server.overload.cpu"
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Backend calls, by backend, gRPC method and gRPC code"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Backend call duration including retries, by backend and gRPC method"
    );
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused by authentication or authorization, by reason"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by policy");
    describe_counter!(
        VALIDATION_FAILURES,
        "Requests refused by their buf.validate rules, by route"
    );
    describe_counter!(
        RATE_LIMIT_STORE_FALLBACKS,
        "Rate-limit decisions made without the Redis store (locally, or refused when fail_closed), by policy and reason"
    );
    describe_counter!(
        CORS_PREFLIGHTS,
        "CORS preflight requests answered by the gateway, by result"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads, by result (ok, error) and source (file, consul)"
    );
    describe_gauge!(
        CONFIG_VERSION,
        "Version of the configuration snapshot being served"
    );
    describe_counter!(
        DISCOVERY_ERRORS,
        "Failed discovery queries (Consul, DNS), by backend and source; the last known endpoints keep serving"
    );
    describe_counter!(
        DRAIN_ABORTED,
        "HTTP requests still running when server.drain_timeout passed at shutdown, answered 503 by the gateway, by route template"
    );
    describe_counter!(
        JWKS_FETCH_FAILURES,
        "Failed JWKS fetches, by URL; the cached keys stay in use, and tokens fail with an unknown kid until a fetch succeeds"
    );
    describe_counter!(
        JWT_CACHE_HITS,
        "Bearer tokens accepted from the verified-token cache without a signature check ([auth] token_cache)"
    );
    describe_counter!(
        JWT_CACHE_MISSES,
        "Bearer tokens the verified-token cache could not answer for, verified in full ([auth] token_cache)"
    );
    describe_counter!(
        CACHE_HITS,
        "GET answers served from the response cache, by route template"
    );
    describe_counter!(
        CACHE_MISSES,
        "GET requests to cached routes the cache could not answer (the backend was called, or the request waited for a call in flight), by route template"
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Cached answers evicted to stay under [cache] max_bytes"
    );
    describe_counter!(
        FALLBACKS,
        "Degraded answers sent while a backend was unavailable, by route template and kind (stale: a cached answer past its ttl; static: the route's fallback)"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
}

/// Five values whatever the status: `http::StatusCode` accepts anything up
/// to 999, and what is past 599 counts as a server error.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method label for a request that matched no route with its method.
/// Any token is a legal HTTP method, so one label value per distinct method
/// would let a client add series without end (1,000 made-up 2 KB methods
/// once grew /metrics by 40 MB); OpenTelemetry's HTTP semantic conventions
/// name every method outside the standard set `_OTHER`. Static strings, so
/// labelling allocates nothing.
fn method_label(method: &str) -> metrics::SharedString {
    metrics::SharedString::const_str(known_method(method).unwrap_or(OTHER_METHOD))
}

/// What every method outside [`KNOWN_METHODS`] is counted as.
pub const OTHER_METHOD: &str = "_OTHER";

/// RFC 9110's methods and PATCH (RFC 5789): the set OpenTelemetry's HTTP
/// semantic conventions know by default.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `method` as a static string when it is a standard one.
pub fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().find(|m| **m == method).copied()
}

/// Labels are shared strings (`Arc<str>` made once per route at load), so
/// counting a request clones pointers instead of allocating.
pub fn record_http(route: &Arc<str>, method: &str, status: u16, elapsed: Duration) {
    record_http_labels(
        metrics::SharedString::from_shared(route.clone()),
        method_label(method),
        status,
        elapsed,
    );
}

fn record_http_labels(
    route: metrics::SharedString,
    method: metrics::SharedString,
    status: u16,
    elapsed: Duration,
) {
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "code" => status_class(status))
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
}

pub fn record_upstream(
    backend: &Arc<str>,
    grpc_method: &Arc<str>,
    code: tonic::Code,
    elapsed: Duration,
) {
    let backend = metrics::SharedString::from_shared(backend.clone());
    let grpc_method = metrics::SharedString::from_shared(grpc_method.clone());
    metrics::counter!(UPSTREAM_REQUESTS, "backend" => backend.clone(), "grpc_method" => grpc_method.clone(), "grpc_code" => code_label(code))
        .increment(1);
    metrics::histogram!(UPSTREAM_DURATION, "backend" => backend, "grpc_method" => grpc_method)
        .record(elapsed.as_secs_f64());
}

/// One route's metric handles, registered on its first request and reused
/// after, so counting a request is an atomic add instead of a registry
/// lookup (which builds a label set, hashes it and takes the registry
/// shard's read lock, a lock every request shares). The series are the ones
/// [`record_http`] and [`record_upstream`] write.
pub struct RouteMetrics {
    route: metrics::SharedString,
    /// The route's HTTP method, as its label: the method itself, even a
    /// custom one (`custom` in a `google.api.http` annotation), since
    /// routes.toml and the descriptors bound how many there are. A request
    /// with another method (HEAD on a GET route) takes the uncached path.
    method_label: metrics::SharedString,
    backend: metrics::SharedString,
    grpc_method: metrics::SharedString,
    /// The handles, allocated on the route's first request: they take
    /// about 600 bytes, and most routes of a large table are never called
    /// between two reloads (issue 24: memory per route).
    handles: OnceLock<Box<Handles>>,
}

/// The series of one route, each registered on first use.
#[derive(Default)]
struct Handles {
    http_requests: [OnceLock<metrics::Counter>; 5],
    http_duration: OnceLock<metrics::Histogram>,
    upstream_requests: [OnceLock<metrics::Counter>; 17],
    upstream_duration: OnceLock<metrics::Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("method", &self.method_label)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    pub fn new(route: &Arc<str>, method: &str, backend: &Arc<str>, grpc_method: &Arc<str>) -> Self {
        RouteMetrics {
            route: metrics::SharedString::from_shared(route.clone()),
            method_label: match known_method(method) {
                Some(m) => metrics::SharedString::const_str(m),
                None => metrics::SharedString::from(method.to_owned()),
            },
            backend: metrics::SharedString::from_shared(backend.clone()),
            grpc_method: metrics::SharedString::from_shared(grpc_method.clone()),
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(Box::default)
    }

    /// [`record_http`] for a request this route served.
    pub fn record_http(&self, method: &str, status: u16, elapsed: Duration) {
        if method != &*self.method_label {
            return record_http_labels(self.route.clone(), method_label(method), status, elapsed);
        }
        let class = usize::from(status.clamp(100, 599) / 100 - 1);
        let handles = self.handles();
        handles.http_requests[class]
            .get_or_init(|| {
                metrics::counter!(HTTP_REQUESTS, "route" => self.route.clone(), "method" => self.method_label.clone(), "code" => status_class(status))
            })
            .increment(1);
        handles.http_duration
            .get_or_init(|| {
                metrics::histogram!(HTTP_DURATION, "route" => self.route.clone(), "method" => self.method_label.clone())
            })
            .record(elapsed.as_secs_f64());
    }

    /// [`record_upstream`] for this route's backend call.
    pub fn record_upstream(&self, code: tonic::Code, elapsed: Duration) {
        let handles = self.handles();
        let slot = (code as usize).min(handles.upstream_requests.len() - 1);
        handles.upstream_requests[slot]
            .get_or_init(|| {
                metrics::counter!(UPSTREAM_REQUESTS, "backend" => self.backend.clone(), "grpc_method" => self.grpc_method.clone(), "grpc_code" => code_label(code))
            })
            .increment(1);
        handles.upstream_duration
            .get_or_init(|| {
                metrics::histogram!(UPSTREAM_DURATION, "backend" => self.backend.clone(), "grpc_method" => self.grpc_method.clone())
            })
            .record(elapsed.as_secs_f64());
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// A request cut at the end of a shutdown's drain; `route` is the
/// configured template or `(none)`, as for [`HTTP_REQUESTS`].
pub fn record_drain_aborted(route: &Arc<str>) {
    metrics::counter!(DRAIN_ABORTED, "route" => metrics::SharedString::from_shared(route.clone()))
        .increment(1);
}

/// `source` is `file` or `consul` ([`crate::config::Origin::label`]).
pub fn record_reload(ok: bool, version: u64, source: &'static str) {
    metrics::counter!(CONFIG_RELOADS, "result" => if ok { "ok" } else { "error" }, "source" => source)
        .increment(1);
    if ok {
        metrics::gauge!(CONFIG_VERSION).set(version as f64);
    }
}

/// Appends one sample in the text format, escaping label values.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    use std::fmt::Write as _;
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}
