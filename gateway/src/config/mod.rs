//! The operator's file, `routes.toml`: its schema and the checks that need
//! nothing but the file itself.
//!
//! Checks that need the descriptors (does the method exist, is the path
//! variable a field) live in `snapshot`, which reports through the same
//! [`ConfigError`] so every problem names file, line and field.

mod cache;
pub mod compression;
mod duration;
mod edge;
mod error;
mod input;
mod parse;
pub mod reference;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use reference::{ClaimValue, DurationText};

pub use cache::{CacheConfig, FallbackConfig, RouteCacheConfig, DEFAULT_CACHE_MAX_BYTES};
pub use duration::parse_duration;
pub use edge::{
    ApiKeysConfig, AuthConfig, ConsumerConfig, CorsConfig, IssuerConfig, LimitsConfig,
    RateLimitPolicyConfig, RateLimitsConfig, RedisConfig, RouteApiKeysConfig,
};
pub use error::{ConfigError, ConfigErrors, LineIndex};
pub use input::TextInput;

/// grpc-gateway and Envoy both default to 4 MiB, the gRPC default message size:
/// a larger JSON body could not be sent on as one message anyway.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A backend call that has not answered in 15 s is almost always stuck; routes
/// that need longer say so with `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connecting on a LAN takes milliseconds; a few seconds means the address is wrong.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Kubernetes endpoints controllers and cloud load balancers take a few
/// seconds to stop routing to a pod that turned unready.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(2);
/// Long enough for ordinary unary calls (whose default deadline is 15 s) to finish.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// More threads than this is a typo, not a machine.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The whole of `routes.toml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// JWT issuers and the default route policy (docs/edge-security.md).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Cross-origin access for browsers; off when absent (docs/edge-security.md).
    #[schemars(with = "Option<CorsConfig>")]
    pub cors: Option<Spanned<CorsConfig>>,
    /// Named quotas, and the ones routes get by default (docs/edge-security.md).
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// The store that rate-limit policies with `store = "redis"` share
    /// between replicas (docs/edge-security.md).
    #[schemars(with = "Option<RedisConfig>")]
    pub redis: Option<Spanned<RedisConfig>>,
    /// Where API keys are presented (docs/edge-security.md).
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Callers known by API keys, by name (docs/edge-security.md).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ConsumerConfig>")]
    pub consumers: BTreeMap<String, Spanned<ConsumerConfig>>,
    /// Request size, time and connection bounds (docs/edge-security.md).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The listener and gateway-wide transcoding behaviour.
    #[serde(default)]
    pub server: ServerConfig,
    /// The operator's listener: health, readiness, route/backend/config views, reload.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logs, the access log and trace export (docs/observability.md).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Backends by name; routes refer to them by that name. Each lists
    /// `endpoints` or names a `consul` service, an `etcd` prefix or a
    /// `zookeeper` path (docs/operations.md).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, BackendConfig>")]
    pub backends: BTreeMap<String, Spanned<BackendConfig>>,
    /// Explicit REST routes, one `[[routes]]` table each. They win over
    /// `google.api.http` annotations for the same method and path (docs/routes.md).
    #[serde(default)]
    #[schemars(with = "Vec<RouteConfig>")]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// The generated OpenAPI 3.1 document of the routes (docs/streaming.md).
    #[serde(default)]
    pub openapi: OpenApiConfig,
    /// The response cache's bound, shared by the routes with `cache`
    /// (docs/routes.md).
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `[openapi]`: where the generated document is served, and its title.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiConfig {
    /// Serve the document on the REST listener at this path, e.g.
    /// `/openapi.json`; not served when absent. `gateway openapi` prints it either way.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// Serve a documentation page for the document at this path, e.g.
    /// `/docs`; not served when absent.
    #[schemars(with = "Option<String>")]
    pub docs_path: Option<Spanned<String>>,
    /// `info.title` of the document (default `API`).
    pub title: Option<String>,
    /// `info.version` of the document (default `1.0.0`).
    pub version: Option<String>,
    /// `info.description` of the document; none when absent.
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gateway listens for REST traffic, `ip:port`. Loopback by
    /// default, so a gateway started by hand is not exposed by accident.
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Folder of descriptor sets and .proto files, relative to routes.toml.
    #[serde(default = "default_descriptors")]
    #[schemars(with = "String")]
    pub descriptors: Spanned<String>,
    /// Largest request body accepted, in bytes (413 beyond): 4 MiB, the gRPC
    /// default message size (grpc-gateway and Envoy use it too), since a
    /// larger body could not be sent on as one message anyway. Client-streaming
    /// routes are not bound by it.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Also route every method that carries a `google.api.http` annotation in
    /// a service some backend lists under `services`.
    #[serde(default = "yes")]
    pub routes_from_annotations: bool,
    /// `reject` (default): an unknown JSON field or query parameter is a 400
    /// naming it. `ignore`: drop it silently, as grpc-gateway's
    /// `DiscardUnknown` does.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Write fields that hold their default value (0, "", false, []) in
    /// replies; proto3 JSON leaves them out by default.
    #[serde(default)]
    pub emit_defaults: bool,
    /// Write replies with the .proto field names (`page_count`) instead of
    /// lowerCamelCase (`pageCount`). Requests accept both either way.
    #[serde(default)]
    pub proto_field_names: bool,
    /// Request headers copied into gRPC metadata on every route (lowercased).
    /// `Grpc-Metadata-*` headers are always passed on, without the prefix.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub forward_headers: Vec<Spanned<String>>,
    /// Reload when routes.toml or the descriptors folder changes on disk
    /// (docs/operations.md). SIGHUP and `POST /admin/reload` work either way.
    #[serde(default = "yes")]
    pub watch: bool,
    /// On SIGTERM, how long to keep accepting after readiness turns false, so
    /// load balancers stop sending before the listener closes (default 2s:
    /// Kubernetes endpoints controllers and cloud load balancers take a few
    /// seconds to stop routing to a pod that turned unready).
    #[schemars(with = "Option<DurationText>")]
    pub shutdown_delay: Option<Spanned<String>>,
    /// After the listener closes, how long in-flight requests may run on;
    /// those still running then are answered 503 (default 20s: long enough
    /// for ordinary unary calls, whose default deadline is 15s).
    #[schemars(with = "Option<DurationText>")]
    pub drain_timeout: Option<Spanned<String>>,
    /// Threads that serve traffic (default: one per core). Each runs an
    /// event loop of its own and keeps every connection it is handed, with
    /// the backend connections it opened, on that thread (thread per
    /// core); the accept loop, admin listener, discovery and reloads run
    /// on one more thread. `1` runs the whole gateway on one thread: the
    /// least CPU per request when the gateway shares a small machine with
    /// busy neighbours (docs/performance.md). At most 1024. Read at start;
    /// a reload that changes it warns.
    #[schemars(with = "Option<usize>")]
    pub worker_threads: Option<Spanned<usize>>,
    /// Requests served at once across every route; beyond, new requests
    /// are answered 503 with `Retry-After: 1` at once, right after routing
    /// (no auth, no body read, no backend call), so a saturated gateway
    /// keeps serving the requests it has instead of slowing all of them
    /// (docs/operations.md). A request counts until its answer's head is
    /// ready. No limit by default: the right number depends on the machine
    /// and the routes; measure the point where latency turns up and set it
    /// a little below. The admin listener is never limited.
    #[schemars(with = "Option<usize>")]
    pub max_in_flight: Option<Spanned<usize>>,
    /// Shed by the gateway's own CPU use too (docs/operations.md); off
    /// when absent.
    #[schemars(with = "Option<OverloadConfig>")]
    pub overload: Option<Spanned<OverloadConfig>>,
    /// Answers compressed per the client's `Accept-Encoding`
    /// (docs/performance.md).
    #[serde(default)]
    pub compression: compression::CompressionConfig,
    /// TLS on the REST listener (docs/operations.md); plaintext (HTTP/1.1
    /// and h2c) when absent. Turning it on or off takes a restart.
    #[schemars(with = "Option<TlsConfig>")]
    pub tls: Option<Spanned<TlsConfig>>,
}

/// `[server.overload]`: shedding when the gateway's CPU is saturated.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// Share of the CPUs available to the process (a cgroup's quota
    /// included), above 0 and below 1, beyond which new requests are
    /// answered 503 with `Retry-After: 1`: the CPU time is sampled every
    /// 250 ms, and while over this a tenth more of new requests are shed
    /// each time (at most 90%), a twentieth fewer each time under it.
    /// 0.95 leaves the last few percent for the requests already admitted.
    #[schemars(with = "Option<f64>")]
    pub cpu: Option<Spanned<f64>>,
}

/// `[server.tls]`: the listener's certificates. TLS 1.2 and 1.3 only, with
/// rustls's default cipher suites; ALPN offers `h2` and `http/1.1`. The
/// files are watched and re-read on every reload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate and key pairs, chosen by the name the client asks for
    /// (SNI) among each certificate's DNS names, wildcards included; the
    /// first pair serves clients that send no name or an unknown one.
    #[schemars(with = "Vec<TlsCertificateConfig>")]
    pub certificates: Vec<Spanned<TlsCertificateConfig>>,
    /// A plaintext listener, `ip:port` (e.g. `"0.0.0.0:80"`), that answers
    /// every request with a 308 to the same host and path over https on
    /// `server.listen`'s port; none when absent. Read at start.
    #[schemars(with = "Option<String>")]
    pub redirect_http: Option<Spanned<String>>,
    /// PEM bundle of the certificate authorities client certificates must
    /// chain to, relative to routes.toml; the listener then asks clients
    /// for a certificate (mTLS) and verifies it. Watched and re-read on
    /// every reload like the certificates. None: no client certificate is
    /// asked for.
    #[schemars(with = "Option<String>")]
    pub client_ca: Option<Spanned<String>>,
    /// With `client_ca`: `"required"` refuses the handshake of a client
    /// without a valid certificate; `"optional"` asks for one, verifies it
    /// when sent and lets clients without one through, leaving the choice
    /// to each route (`client_cert`, `credentials = ["client_cert"]`)
    /// (default `"required"`: naming a client CA asks for mTLS, and letting
    /// certificate-less clients in must be said).
    #[schemars(with = "Option<String>")]
    pub client_auth: Option<Spanned<String>>,
    /// Time from accept to the end of the TLS handshake, waiting for a
    /// handshake slot included; the connection is closed beyond (default
    /// 10s: a real handshake takes a few round trips, and a client that
    /// stalls in it holds a connection slot no longer than one that sends
    /// no request head, `limits.header_read_timeout`'s default).
    #[schemars(with = "Option<DurationText>")]
    pub handshake_timeout: Option<Spanned<String>>,
    /// TLS handshakes in progress at most; connections beyond wait (inside
    /// `handshake_timeout`) for one to finish. Handshakes are the costly
    /// part of TLS (a signature, key exchange, certificate checks): the cap
    /// keeps a flood of new connections from taking the CPU established
    /// ones need. Read at start (default 256: far more than a few cores
    /// complete at once, so real clients seldom wait).
    #[schemars(with = "Option<usize>")]
    pub max_concurrent_handshakes: Option<Spanned<usize>>,
    /// A second, plaintext listener, `ip:port` (e.g. `"127.0.0.1:8081"`),
    /// serving the same routes over HTTP/1.1 and h2c (prior knowledge) for
    /// internal callers; no client certificate there, so routes that need
    /// one answer 401. None when absent. Read at start.
    #[schemars(with = "Option<String>")]
    pub plaintext_listen: Option<Spanned<String>>,
}

/// One `[[server.tls.certificates]]` pair.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificateConfig {
    /// PEM file with the certificate chain, leaf first, relative to routes.toml.
    #[schemars(with = "String")]
    pub cert: Spanned<String>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1),
    /// relative to routes.toml.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin listener (health, readiness, metrics, `/admin/*`)
    /// listens, `ip:port`. Loopback by default: the admin API can reload
    /// config and shows internals.
    #[serde(default = "default_admin_listen")]
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Set to false to run without the admin listener (and so without
    /// `/metrics`, `/readyz` and `/admin/reload`).
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` (human-readable, the default), `json` (one JSON object per
    /// line, for Loki or any JSON reader), `ecs` (JSON lines with Elastic
    /// Common Schema field names, for ELK), or `auto`: text on a terminal,
    /// JSON otherwise.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Default log level (`error`, `warn`, `info`, `debug`, `trace`) or a full
    /// `RUST_LOG`-style filter; the RUST_LOG environment variable wins.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// One log line per request (target `access`, level INFO); metrics count
    /// either way.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Export OpenTelemetry traces over OTLP to this collector, e.g.
    /// `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP; the
    /// `/v1/traces` path is added when the URL has none). No spans are made
    /// when absent (default: none, no traces). Read at start: changing it
    /// needs a restart.
    #[schemars(with = "Option<String>")]
    pub otlp_endpoint: Option<Spanned<String>>,
    /// `grpc` (OTLP's port 4317; plaintext only) or `http` (protobuf over
    /// HTTP, port 4318; also for `https://` endpoints).
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0). Parent-based:
    /// a client's `traceparent` decides for its own trace (sampled flag set:
    /// recorded; unset: not), whatever this ratio.
    #[schemars(with = "Option<f64>")]
    pub sampling_ratio: Option<Spanned<f64>>,
    /// `service.name` of the exported spans (default `gateway`). Read at start.
    #[schemars(with = "Option<String>")]
    pub service_name: Option<Spanned<String>>,
    /// Trace header formats read from clients and written to backends,
    /// as OpenTelemetry's `OTEL_PROPAGATORS` names them: `tracecontext`
    /// (W3C `traceparent`, always on), `b3` (Zipkin's single `b3` header),
    /// `b3multi` (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`) and `jaeger`
    /// (`uber-trace-id`). A client's trace is continued from the first
    /// format it sent, `traceparent` first; the backend gets the gateway's
    /// span in every listed format (default `["tracecontext"]`). Read at start.
    #[schemars(with = "Option<Vec<String>>")]
    pub propagators: Option<Vec<Spanned<String>>>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::default(),
            log_level: default_log_level(),
            access_log: true,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sampling_ratio: None,
            service_name: None,
            propagators: None,
        }
    }
}

/// How traces travel to the collector.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317).
    #[default]
    Grpc,
    /// OTLP protobuf over HTTP (port 4318).
    Http,
}

impl OtlpProtocol {
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http",
        }
    }
}

impl TelemetryConfig {
    /// Checks the trace export settings; every problem names its line.
    pub fn validate(&self, file: &LoadedFile, errors: &mut Vec<ConfigError>) {
        if let Some(r) = &self.sampling_ratio {
            let v = *r.get_ref();
            if !(0.0..=1.0).contains(&v) {
                errors.push(file.error(
                    r,
                    "telemetry.sampling_ratio",
                    format!(
                        "{v} is not a share; write a number from 0.0 (no new traces) to 1.0 (all)"
                    ),
                ));
            }
        }
        if let Some(name) = &self.service_name {
            if name.get_ref().trim().is_empty() {
                errors.push(file.error(name, "telemetry.service_name", "must not be empty"));
            }
        }
        let Some(endpoint) = &self.otlp_endpoint else {
            return;
        };
        let text = endpoint.get_ref().trim();
        let field = "telemetry.otlp_endpoint";
        let uri = match text.parse::<http::Uri>() {
            Ok(u) if u.authority().is_some() => u,
            _ => {
                errors.push(file.error(
                    endpoint,
                    field,
                    format!("\"{text}\" is not a URL; write e.g. \"http://127.0.0.1:4317\""),
                ));
                return;
            }
        };
        match (uri.scheme_str(), self.otlp_protocol) {
            (Some("http"), _) | (Some("https"), OtlpProtocol::Http) => {}
            (Some("https"), OtlpProtocol::Grpc) => errors.push(file.error(
                endpoint,
                field,
                "the gRPC exporter is built without TLS; send to a collector agent over \
                 http://, or set otlp_protocol = \"http\" for an https:// endpoint",
            )),
            _ => errors.push(file.error(
                endpoint,
                field,
                format!("\"{text}\" must start with http:// or https://"),
            )),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// One JSON object per line with Elastic Common Schema field names
    /// (`@timestamp`, `http.request.method`, `url.path`, ...), for Filebeat
    /// or Logstash without a parsing pipeline.
    Ecs,
}

fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            descriptors: default_descriptors(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            routes_from_annotations: true,
            unknown_fields: UnknownFields::default(),
            emit_defaults: false,
            proto_field_names: false,
            forward_headers: Vec::new(),
            watch: true,
            shutdown_delay: None,
            drain_timeout: None,
            worker_threads: None,
            max_in_flight: None,
            overload: None,
            compression: compression::CompressionConfig::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// A 400 naming the unknown field or parameter.
    #[default]
    Reject,
    /// Dropped silently.
    Ignore,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Static endpoints, `host:port`. An IP address is used as is; a name is
    /// resolved again every `dns_refresh` and each address it returns is an
    /// instance (a Kubernetes headless service). Leave out with `consul`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub endpoints: Vec<Spanned<String>>,
    /// Take the instances from Consul's health API instead of `endpoints`.
    #[schemars(with = "Option<ConsulConfig>")]
    pub consul: Option<Spanned<ConsulConfig>>,
    /// Take the instances from the keys under an etcd prefix instead of
    /// `endpoints`, watched (docs/operations.md).
    #[schemars(with = "Option<EtcdConfig>")]
    pub etcd: Option<Spanned<EtcdConfig>>,
    /// Take the instances from the children of a ZooKeeper znode instead of
    /// `endpoints`, watched (docs/operations.md).
    #[schemars(with = "Option<ZooKeeperConfig>")]
    pub zookeeper: Option<Spanned<ZooKeeperConfig>>,
    /// Take the instances from a Nacos service's instance list instead of
    /// `endpoints`, polled (docs/operations.md).
    #[schemars(with = "Option<NacosConfig>")]
    pub nacos: Option<Spanned<NacosConfig>>,
    /// Take the instances from a Eureka application instead of
    /// `endpoints`, polled with delta fetches (docs/operations.md).
    #[schemars(with = "Option<EurekaConfig>")]
    pub eureka: Option<Spanned<EurekaConfig>>,
    /// How often names in `endpoints` are resolved again (default 5s:
    /// CoreDNS serves Kubernetes records with a 5 s TTL, so asking more often
    /// would only return cached answers).
    #[schemars(with = "Option<DurationText>")]
    pub dns_refresh: Option<Spanned<String>>,
    /// `gzip`: request messages to this backend are gzip-compressed
    /// (`grpc-encoding: gzip`) and gzip is announced for replies
    /// (`grpc-accept-encoding`); worth it for large messages over a
    /// network that costs more than the CPU. Default: none. Compressed
    /// replies are read from any backend whatever this says.
    pub compression: Option<crate::encoding::grpc::MessageCompression>,
    /// TLS to the instances over HTTP/2 (ALPN h2), for calls, streams,
    /// health checks and reflection alike, and mTLS with a client
    /// certificate; plaintext h2c when absent. Instances found through
    /// Consul or DNS use it too.
    #[schemars(with = "Option<BackendTlsConfig>")]
    pub tls: Option<Spanned<BackendTlsConfig>>,
    /// gRPC services served here, by full name. Annotated methods of these
    /// services are routed to this backend, and routes to them may omit `backend`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub services: Vec<Spanned<String>>,
    /// Default deadline of calls to this backend, sent as `grpc-timeout`;
    /// a route's `timeout` overrides it (default 15s: a call that has not
    /// answered by then is almost always stuck; routes that need longer say so).
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// How long to wait for a TCP connection before answering 503 (default
    /// 2s: connecting on a LAN takes milliseconds; seconds mean the address
    /// is wrong or the instance is gone).
    #[schemars(with = "Option<DurationText>")]
    pub connect_timeout: Option<Spanned<String>>,
    /// Also take descriptors from the backend's gRPC server reflection
    /// (grpc.reflection.v1, falling back to v1alpha). Files in the descriptors
    /// folder win on conflict. With no `services`, every service it reports is served.
    #[serde(default)]
    pub reflection: bool,
    /// How calls are spread over the instances (default `round_robin`):
    /// `round_robin`, `random`, `least_request` (power of two choices),
    /// `weighted` (Consul's `Weights`), or `consistent_hash` (with `hash_key`).
    #[schemars(with = "Option<String>")]
    pub load_balancer: Option<Spanned<String>>,
    /// What `consistent_hash` hashes: exactly one of `header`, `claim`,
    /// `client_ip`. Only with `load_balancer = "consistent_hash"`.
    #[schemars(with = "Option<HashKeyConfig>")]
    pub hash_key: Option<Spanned<HashKeyConfig>>,
    /// Active gRPC health checks (grpc.health.v1.Health/Check); off when absent.
    #[schemars(with = "Option<HealthCheckConfig>")]
    pub health_check: Option<Spanned<HealthCheckConfig>>,
    /// Passive health: eject an instance after consecutive failures. On by
    /// default, with the defaults below.
    #[schemars(with = "Option<OutlierConfig>")]
    pub outlier_detection: Option<Spanned<OutlierConfig>>,
    /// Retries of failed calls on another instance. On by default, with the
    /// defaults below.
    #[schemars(with = "Option<RetryConfig>")]
    pub retry: Option<Spanned<RetryConfig>>,
    /// Fail fast while the backend as a whole is failing, and bound
    /// concurrency. On by default, with the defaults below.
    #[schemars(with = "Option<CircuitBreakerConfig>")]
    pub circuit_breaker: Option<Spanned<CircuitBreakerConfig>>,
    /// Learn how many calls the backend can take from its latency, and
    /// answer the rest 503 at once instead of queueing them there
    /// (docs/operations.md, "Adaptive concurrency and overload"). Off when
    /// absent; `adaptive_concurrency = {}` turns it on with the defaults.
    #[schemars(with = "Option<AdaptiveConcurrencyConfig>")]
    pub adaptive_concurrency: Option<Spanned<AdaptiveConcurrencyConfig>>,
    /// Also serve the unary and server-streaming methods of `services` at
    /// `/<package.Service>/<Method>` to clients generated from the same
    /// .proto files: `"grpc-web"` (gRPC-Web, binary and base64 text) and
    /// `"connect"` (the Connect protocol, version 1). The edge policies
    /// apply to these calls as to REST routes: `[auth] default`,
    /// `[rate_limits] default` and `[cors]`. None by default.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub expose: Vec<Spanned<String>>,
    /// Check requests against their `buf.validate` rules on the routes made
    /// for this backend's services: from `google.api.http` annotations and
    /// from `expose` (docs/routes.md, "Validation"). `false` leaves the
    /// rules of those routes to the backend; `[[routes]]` entries have
    /// their own `validate`.
    #[serde(default = "yes")]
    pub validate: bool,
}

/// `[backends.NAME.tls]`. The files are re-read on every reload and watched
/// like routes.toml (a renewed file reloads by itself); a change makes new
/// connections while calls in flight finish on the old ones, and a file that
/// does not load refuses the reload with the old settings kept.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM file of the CA certificates the instances' certificates must
    /// chain to, relative to routes.toml (default: the system's roots).
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// The name the instances' certificates must carry, also sent as SNI,
    /// for every instance however it is found (default: each endpoint's
    /// host, which for an IP address must be in the certificate as an IP
    /// address). Instances from Consul are usually listed by IP and share
    /// one certificate name: set it for them.
    #[schemars(with = "Option<String>")]
    pub server_name: Option<Spanned<String>>,
    /// PEM file of a client certificate chain, for backends that require
    /// one (mTLS); with `key_file`.
    #[schemars(with = "Option<String>")]
    pub cert_file: Option<Spanned<String>>,
    /// PEM file of the client certificate's private key.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
}

/// `consul = { service = "users", tags = ["grpc"], datacenter = "dc1" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// The Consul service name (`/v1/health/service/<service>`).
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// Only instances carrying every one of these tags.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub tags: Vec<Spanned<String>>,
    /// The datacenter to ask about (default: the agent's own).
    #[schemars(with = "Option<String>")]
    pub datacenter: Option<Spanned<String>>,
    /// Only instances whose checks all pass (default). With false, instances
    /// in `warning` are used too (at their `Weights.Warning`); `critical` never are.
    #[serde(default = "yes")]
    pub passing_only: bool,
    /// The agent's HTTP API, `http://` or `https://` (default
    /// `http://127.0.0.1:8500`: the local agent, which every Consul
    /// deployment runs). When absent and the `CONSUL_HTTP_ADDR`
    /// environment variable is set, as Consul's CLI reads it, that agent
    /// is asked instead (`host:port` meaning http).
    #[schemars(with = "Option<String>")]
    pub address: Option<Spanned<String>>,
    /// Environment variable holding the ACL token (default
    /// `CONSUL_HTTP_TOKEN`, the variable Consul's own CLI reads). Unset or
    /// empty: no token is sent.
    #[schemars(with = "Option<String>")]
    pub token_env: Option<Spanned<String>>,
    /// File holding the ACL token; read again before every query, so a
    /// rotated token is picked up. Wins over `token_env`.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<Spanned<String>>,
    /// Allow any Consul server to answer (`?stale`), not just the leader:
    /// spreads load and keeps answering while the cluster has no leader.
    #[serde(default)]
    pub stale: bool,
    /// How long one blocking query may wait for a change, at most 10m, which
    /// Consul caps it at (default 5m, Consul's own: a change still arrives at
    /// once; the wait only bounds how long a quiet service holds the connection).
    #[schemars(with = "Option<DurationText>")]
    pub wait: Option<Spanned<String>>,
    /// With an `https://` address: a PEM file of CA certificates to trust for
    /// the agent, relative to routes.toml (the system roots are trusted too).
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
}

/// `etcd = { endpoints = ["http://127.0.0.1:2379"], prefix = "/services/users/" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The cluster's client URLs, `http://` or `https://` (all one scheme),
    /// tried in turn until one answers.
    #[schemars(with = "Vec<String>")]
    pub endpoints: Vec<Spanned<String>>,
    /// Every key under this prefix is one instance; a `/` is added when it
    /// does not end with one, so `/services/users` does not also match
    /// `/services/users-old/...`.
    #[schemars(with = "String")]
    pub prefix: Spanned<String>,
    /// How the values are written (default `plain`): `plain`, a value per
    /// key that is `host:port`, `{"host": ..., "port": N}`,
    /// `{"address": ..., "port": N}` or `{"Addr": "host:port"}`; or
    /// `grpc-go`, the JSON that grpc-go's etcd naming writes,
    /// `{"Op": 0, "Addr": "host:port", "Metadata": ...}`. A value that does
    /// not fit is skipped with a warning.
    #[schemars(with = "Option<String>")]
    pub layout: Option<Spanned<String>>,
    /// An etcd user to authenticate as (with `password_env`); no
    /// authentication when absent.
    #[schemars(with = "Option<String>")]
    pub username: Option<Spanned<String>>,
    /// Environment variable holding the user's password, read when the
    /// watch starts.
    #[schemars(with = "Option<String>")]
    pub password_env: Option<Spanned<String>>,
    /// With `https://` endpoints: a PEM file of CA certificates to trust,
    /// relative to routes.toml (the system roots are trusted too).
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// With `https://` endpoints: a PEM client certificate chain, for a
    /// cluster started with `--client-cert-auth`; with `key_file`.
    #[schemars(with = "Option<String>")]
    pub cert_file: Option<Spanned<String>>,
    /// The PEM private key of `cert_file`.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
}

/// `zookeeper = { servers = ["127.0.0.1:2181"], path = "/services/users" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperConfig {
    /// The ensemble's servers, `host:port` each.
    #[schemars(with = "Vec<String>")]
    pub servers: Vec<Spanned<String>>,
    /// The znode whose children are the instances (normally ephemeral
    /// znodes), each holding `host:port`, `{"host": ..., "port": N}`,
    /// Curator's `{"address": ..., "port": N, ...}` or `{"Addr": "host:port"}`.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// The gateway's session timeout, negotiated with the servers (default
    /// 10s: ZooKeeper's and Curator's usual value, long enough to ride out a
    /// leader election). After a longer outage a new session is opened and
    /// the path read again.
    #[schemars(with = "Option<DurationText>")]
    pub session_timeout: Option<Spanned<String>>,
}

/// `nacos = { servers = ["http://127.0.0.1:8848"], service = "bookstore" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NacosConfig {
    /// The Nacos servers' HTTP addresses, `http://` or `https://`, tried in
    /// turn until one answers; the open API is under `/nacos/v1/` on each.
    #[schemars(with = "Vec<String>")]
    pub servers: Vec<Spanned<String>>,
    /// The service name the instances are registered under.
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// The namespace ID (default: Nacos' `public` namespace).
    #[schemars(with = "Option<String>")]
    pub namespace: Option<Spanned<String>>,
    /// The service's group (default `DEFAULT_GROUP`, Nacos' own).
    #[schemars(with = "Option<String>")]
    pub group: Option<Spanned<String>>,
    /// Only instances of this cluster (default: every cluster).
    #[schemars(with = "Option<String>")]
    pub cluster: Option<Spanned<String>>,
    /// How often the list is asked for again (default 5s: Nacos' clients
    /// poll, and a gateway behind NAT cannot receive its UDP pushes).
    #[schemars(with = "Option<DurationText>")]
    pub refresh: Option<Spanned<String>>,
    /// A Nacos user to log in as (with `password_env`), for a server with
    /// auth enabled; the access token is renewed before its `tokenTtl`.
    #[schemars(with = "Option<String>")]
    pub username: Option<Spanned<String>>,
    /// Environment variable holding the user's password, read when the
    /// poll starts.
    #[schemars(with = "Option<String>")]
    pub password_env: Option<Spanned<String>>,
}

/// `eureka = { servers = ["http://127.0.0.1:8761/eureka"], app = "BOOKSTORE" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EurekaConfig {
    /// The Eureka servers' REST base URLs, `http://` or `https://`
    /// (usually ending in `/eureka`), tried in turn until one answers.
    #[schemars(with = "Vec<String>")]
    pub servers: Vec<Spanned<String>>,
    /// The application name the instances register under (Eureka upper-cases it).
    #[schemars(with = "String")]
    pub app: Spanned<String>,
    /// How often the registry is asked for changes (default 30s, Eureka's
    /// clients' `registryFetchIntervalSeconds`; its servers refresh their
    /// answers every 30 s anyway).
    #[schemars(with = "Option<DurationText>")]
    pub refresh: Option<Spanned<String>>,
}

/// Exactly one of the three.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashKeyConfig {
    /// A request header, e.g. `x-user-id`.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// A JWT claim, e.g. `sub`.
    #[schemars(with = "Option<String>")]
    pub claim: Option<Spanned<String>>,
    /// The client's IP address.
    #[serde(default)]
    pub client_ip: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Time between checks of each instance (default 5s: a failure is
    /// noticed within seconds, at next to no cost).
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<Spanned<String>>,
    /// How long one check may take, at most `interval` (default 1s: a health
    /// check answers from memory; a second means trouble).
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// The service name sent in HealthCheckRequest; "" (the default) asks
    /// about the whole server.
    #[serde(default)]
    pub service: String,
    /// Successful checks in a row that bring an instance back (default 2).
    /// At least 1.
    #[schemars(with = "Option<u32>")]
    pub healthy_threshold: Option<Spanned<u32>>,
    /// Failed checks in a row that take an instance out (default 3: one lost
    /// packet is not an outage). At least 1.
    #[schemars(with = "Option<u32>")]
    pub unhealthy_threshold: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an instance: connect failures, broken
    /// connections, UNAVAILABLE, and calls that ran out of time (default 5,
    /// Envoy's: five in a row is past bad luck). 0 turns ejection off.
    #[schemars(with = "Option<u32>")]
    pub consecutive_failures: Option<Spanned<u32>>,
    /// First ejection time; the n-th ejection in a row lasts n times this
    /// (default 30s, Envoy's).
    #[schemars(with = "Option<DurationText>")]
    pub base_ejection_time: Option<Spanned<String>>,
    /// Upper bound of one ejection (default 300s, Envoy's).
    #[schemars(with = "Option<DurationText>")]
    pub max_ejection_time: Option<Spanned<String>>,
    /// Never eject more than this percentage of the instances (default 50:
    /// with two instances one may go, and the rest must carry the load).
    #[schemars(with = "Option<u32>")]
    pub max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per request, the first included (default 3: past one bad
    /// instance and one that is just being removed). 1 turns retries off.
    #[schemars(with = "Option<u32>")]
    pub attempts: Option<Spanned<u32>>,
    /// gRPC codes retried on routes that are safe to retry, besides connect
    /// failures (default `["unavailable"]`).
    #[schemars(with = "Option<Vec<String>>")]
    pub retry_on: Option<Vec<Spanned<String>>>,
    /// Backoff before the first retry, doubled each time, with jitter
    /// (default 25ms: soon enough not to add visible latency).
    #[schemars(with = "Option<DurationText>")]
    pub backoff: Option<Spanned<String>>,
    /// Upper bound of one backoff (default 250ms: well below typical deadlines).
    #[schemars(with = "Option<DurationText>")]
    pub max_backoff: Option<Spanned<String>>,
    /// Retries may be at most this share of requests over 10 s (default 0.2,
    /// as Envoy's and Finagle's budgets: a failing backend sees at most 1.2x
    /// its load).
    #[schemars(with = "Option<f64>")]
    pub budget: Option<Spanned<f64>>,
    /// Retries always allowed per second, whatever the budget (default 10: at
    /// low traffic a few retries overload nothing, and they carry requests
    /// past a dying instance).
    #[schemars(with = "Option<u32>")]
    pub min_retries_per_second: Option<Spanned<u32>>,
    /// How long one attempt may take before it is abandoned and, on a route
    /// safe to retry, tried on another instance within the deadline
    /// (default: none, an attempt may take the whole deadline; only the
    /// operator knows how long a call should take).
    #[schemars(with = "Option<DurationText>")]
    pub per_try_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// The window failures are counted over (default 10s: smooths bursts
    /// without remembering old incidents for long).
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    /// Open when this share of calls in the window failed (default 0.5),
    /// and the window holds at least `min_requests` calls.
    #[schemars(with = "Option<f64>")]
    pub failure_rate: Option<Spanned<f64>>,
    /// Calls the window must hold before `failure_rate` is judged (default
    /// 20: a rate over fewer calls is noise).
    #[schemars(with = "Option<u32>")]
    pub min_requests: Option<Spanned<u32>>,
    /// Also open after this many failed calls in the window, whatever the
    /// rate (default 0). 0 turns this check off.
    #[schemars(with = "Option<u32>")]
    pub failures: Option<Spanned<u32>>,
    /// How long to stay open before letting probes through (default 5s: long
    /// enough for a restarting backend to come back).
    #[schemars(with = "Option<DurationText>")]
    pub open_for: Option<Spanned<String>>,
    /// Probes let through while half-open; all must succeed to close (default 3).
    #[schemars(with = "Option<u32>")]
    pub half_open_probes: Option<Spanned<u32>>,
    /// Calls in flight to this backend at most; beyond, 503 at once (default
    /// 1024, Envoy's `max_requests`: beyond it a backend is queueing).
    #[schemars(with = "Option<u32>")]
    pub max_requests: Option<Spanned<u32>>,
}

/// `adaptive_concurrency = { algorithm = "gradient", max_limit = 200 }`:
/// a limit on the calls waiting for this backend's answer, moved every
/// `window` by how its latency changes. Calls beyond it are answered 503
/// (gRPC UNAVAILABLE) with `Retry-After: 1`. A call holds one place until
/// its answer (a stream: its response headers), its retries included.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    /// `gradient` (default; Envoy's gradient controller): the limit follows
    /// `min_rtt * (1 + tolerance) / latency`, where `min_rtt` is the
    /// backend's latency measured at `min_limit` calls. `aimd`: +1 a window
    /// while the latency stays under `latency_threshold`, times `backoff`
    /// when it goes over or a call times out or is answered UNAVAILABLE or
    /// RESOURCE_EXHAUSTED.
    #[schemars(with = "Option<String>")]
    pub algorithm: Option<Spanned<String>>,
    /// The limit to start from (default 20, Netflix's: raised within a few
    /// windows if the backend keeps up). With `gradient`, the very first
    /// window runs at `min_limit` to measure `min_rtt`.
    #[schemars(with = "Option<u32>")]
    pub initial_limit: Option<Spanned<u32>>,
    /// The limit never goes below this (default 3, Envoy's
    /// `min_concurrency`: enough to measure the backend and keep it busy
    /// while it recovers).
    #[schemars(with = "Option<u32>")]
    pub min_limit: Option<Spanned<u32>>,
    /// The limit never goes above this (default 1000, Envoy's).
    #[schemars(with = "Option<u32>")]
    pub max_limit: Option<Spanned<u32>>,
    /// How often the limit is recomputed from the latencies seen since the
    /// last time (default 100ms: several samples per window under load,
    /// and a queue that forms is cut within a fraction of a second).
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    /// A window lasts until this many calls have answered, however long
    /// that takes (default 10: a mean over fewer is noise).
    #[schemars(with = "Option<u32>")]
    pub min_samples: Option<Spanned<u32>>,
    /// `gradient`: how much slower than `min_rtt` the backend may answer
    /// before the limit falls, as a share (default 0.5, Netflix's
    /// tolerance of 1.5: a shared machine varies by tens of percent
    /// without any queueing).
    #[schemars(with = "Option<f64>")]
    pub tolerance: Option<Spanned<f64>>,
    /// `gradient`: how often `min_rtt` is measured again, pinning the limit
    /// at `min_limit` for one window (default 60s, Envoy's: a backend's
    /// own latency changes more slowly, and each measurement sheds).
    #[schemars(with = "Option<DurationText>")]
    pub min_rtt_interval: Option<Spanned<String>>,
    /// `aimd`, required: a window whose mean latency is above this backs
    /// the limit off.
    #[schemars(with = "Option<DurationText>")]
    pub latency_threshold: Option<Spanned<String>>,
    /// `aimd`: the factor a bad window multiplies the limit by, above 0
    /// and below 1 (default 0.9, Netflix's `backoffRatio`).
    #[schemars(with = "Option<f64>")]
    pub backoff: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `none`, `optional` (a token is checked if sent) or `required`
    /// (default: `auth.default`).
    #[schemars(with = "Option<String>")]
    pub auth: Option<Spanned<String>>,
    /// Issuers (names under `[auth.issuers]`) accepted here (default: all).
    #[schemars(with = "Option<Vec<String>>")]
    pub issuers: Option<Vec<Spanned<String>>>,
    /// `"jwt"`, `"api_key"`, `"client_cert"`, or several (any one proves
    /// the caller); default `auth.credentials`.
    #[schemars(with = "Option<Vec<String>>")]
    pub credentials: Option<Vec<Spanned<String>>>,
    /// Scopes the token must all carry (`scope` string or `scp` list); 403 otherwise.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub scopes: Vec<Spanned<String>>,
    /// Claims the token must carry with these values (a string, number or
    /// bool, or a list meaning any of them); 403 otherwise.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ClaimValue>")]
    pub claims: BTreeMap<String, Spanned<toml::Value>>,
    /// Claims passed to the backend as `x-jwt-<claim>` metadata, and
    /// `"consumer"` for the API key's consumer as `x-consumer` (default:
    /// `auth.forward_claims`).
    #[schemars(with = "Option<Vec<String>>")]
    pub forward_claims: Option<Vec<Spanned<String>>>,
    /// Where API keys are read on this route, instead of `[api_keys]`:
    /// `{ header = "x-partner-key" }`, `{ query_param = "key" }`, or both
    /// (the header first). Only the places named are read. Needs
    /// `credentials` with `"api_key"` (default: `[api_keys]`).
    #[schemars(with = "Option<RouteApiKeysConfig>")]
    pub api_keys: Option<Spanned<RouteApiKeysConfig>>,
    /// `"required"`: a verified client certificate (`[server.tls]
    /// client_ca`) is needed on top of whatever `auth` and `credentials`
    /// ask (401 without one); `"none"` leaves it to `credentials` (default
    /// `"none"`).
    #[schemars(with = "Option<String>")]
    pub client_cert: Option<Spanned<String>>,
    /// Client certificates accepted here, whenever one is used (by
    /// `client_cert = "required"` or `credentials = ["client_cert"]`): each
    /// entry is matched against the SPIFFE ID, the URI and DNS names and the
    /// subject (RFC 4514, e.g. `CN=web,O=Example`), exactly or, ending in
    /// `*`, as a prefix (`"spiffe://example.org/ns/web/*"`). Another
    /// certificate gets 403. Default: every certificate the CA verifies.
    #[schemars(with = "Option<Vec<String>>")]
    pub client_cert_allow: Option<Vec<Spanned<String>>>,
    /// Parts of the client certificate passed to the backend as metadata
    /// (default: `auth.forward_client_cert`); see there.
    #[schemars(with = "Option<Vec<String>>")]
    pub forward_client_cert: Option<Vec<Spanned<String>>>,
    /// CORS for this route: keys given here replace those of `[cors]`;
    /// `{ enabled = false }` turns CORS off for the route.
    #[schemars(with = "Option<CorsConfig>")]
    pub cors: Option<Spanned<CorsConfig>>,
    /// Rate-limit policies (names under `[rate_limits.policies]`) applied
    /// here, replacing the default ones (default: `rate_limits.default`);
    /// `[]` for none.
    #[schemars(with = "Option<Vec<String>>")]
    pub rate_limit: Option<Vec<Spanned<String>>>,
    /// HTTP method: GET, POST, PUT, PATCH, DELETE, or a custom one.
    #[schemars(with = "String")]
    pub method: Spanned<String>,
    /// A google.api.http path template: `/v1/{name=shelves/*}/books/{book}:verb`.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// `package.Service/Method`.
    #[schemars(with = "String")]
    pub grpc: Spanned<String>,
    /// A name under `[backends]` (default: the backend whose `services` lists
    /// the route's service).
    #[schemars(with = "Option<String>")]
    pub backend: Option<Spanned<String>>,
    /// `"*"` (the whole request message is the body), a top-level field name,
    /// or absent (no body; fields come from the path and query).
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
    /// A top-level field of the reply to send instead of the whole reply;
    /// the whole reply when absent.
    #[schemars(with = "Option<String>")]
    pub response_body: Option<Spanned<String>>,
    /// Check the request message against its `buf.validate`
    /// (protovalidate) rules before calling the backend: a violation is a
    /// 400 listing every field at fault (docs/routes.md, "Validation").
    /// On by default where the request message carries rules; `false`
    /// leaves them to the backend.
    #[serde(default = "yes")]
    pub validate: bool,
    /// Deadline for this route, sent as `grpc-timeout` (default: the
    /// backend's `timeout`). A client's smaller `grpc-timeout` or
    /// `X-Request-Timeout` wins.
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// Extra request headers copied into gRPC metadata for this route.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub forward_headers: Vec<Spanned<String>>,
    /// Marks the route safe to retry (GET routes are by default) and lists
    /// the gRPC codes retried, e.g. `["unavailable", "resource_exhausted"]`.
    /// `[]` turns retries off. Connect failures are retried on every route:
    /// such a call never reached the backend.
    #[schemars(with = "Option<Vec<String>>")]
    pub retry_on: Option<Vec<Spanned<String>>>,
    /// HTTP status of a successful answer, e.g. 201 for a create (default 200).
    #[schemars(with = "Option<u16>")]
    pub success_status: Option<Spanned<u16>>,
    /// Response headers built from the reply: each value is a template where
    /// `{field.path}` is a reply field and `{metadata:key}` a response
    /// metadata entry, e.g. `{ Location = "/v1/{name}" }`. A header whose
    /// source is empty or absent is left out.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub response_headers: BTreeMap<String, Spanned<String>>,
    /// Server-streaming framing when the client's `Accept` does not choose
    /// one: `ndjson` (grpc-gateway's), `sse`, or `json_array` (Envoy's)
    /// (default `ndjson`).
    #[schemars(with = "Option<String>")]
    pub stream_framing: Option<Spanned<String>>,
    /// Deadline of a whole streaming call, sent as `grpc-timeout` (default:
    /// none, a stream lasts until the backend ends it or the client leaves).
    /// `timeout` still bounds the wait for the backend's first answer.
    #[schemars(with = "Option<DurationText>")]
    pub stream_timeout: Option<Spanned<String>>,
    /// Accept `multipart/form-data`: each part fills the request field of its
    /// name (bytes and google.api.HttpBody fields take the raw part). On a
    /// client-streaming method each part is streamed as messages instead.
    #[serde(default)]
    pub multipart: bool,
    /// Serve the route as a WebSocket (docs/streaming.md): a GET with
    /// `Upgrade: websocket` on a client- or bidirectional-streaming method,
    /// one JSON message per text frame each way and the final status as a
    /// last frame. Needs `method = "GET"`.
    #[serde(default)]
    pub websocket: bool,

    // Caching and degraded answers (docs/routes.md).
    /// Serve this GET route's answers from the gateway's cache for a while:
    /// `{ ttl = "30s", vary = [...], max_age, allow_no_cache,
    /// stale_if_error }`. Only GET routes of unary methods. Answers get an
    /// `ETag` and `Cache-Control` (`private` when the route checks
    /// credentials); `If-None-Match` gets a 304. Off when absent.
    #[schemars(with = "Option<RouteCacheConfig>")]
    pub cache: Option<Spanned<RouteCacheConfig>>,
    /// The answer sent when the backend is unavailable and no stale cached
    /// answer is there: `{ status = 200, body = { ... } }`. Unary methods
    /// only. None when absent: the unavailable backend's 503 or 504.
    #[schemars(with = "Option<FallbackConfig>")]
    pub fallback: Option<Spanned<FallbackConfig>>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}
fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_owned())
}
fn default_descriptors() -> Spanned<String> {
    Spanned::new(0..0, "descriptors".to_owned())
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn yes() -> bool {
    true
}

/// The parsed file plus what is needed to point at its lines.
#[derive(Debug)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub config: FileConfig,
    pub lines: LineIndex,
    /// Unknown keys, each with its line and the nearest known key. The config
    /// was built without them so that the later checks can run; the snapshot
    /// build reports them first among its errors, so a file with any is
    /// still refused.
    pub unknown_keys: Vec<ConfigError>,
    /// FNV-1a 64 of the file's bytes.
    pub hash: u64,
    /// SHA-256 of the file's bytes: the file's share of the config hash
    /// replicas report (see `Snapshot::config_digest`).
    pub sha256: [u8; 32],
    /// The folder relative paths in the file (descriptors, TLS files)
    /// resolve against: the file's own folder; `None` for the current
    /// directory (a bare file name, or text from Consul KV, which has no
    /// folder).
    pub base: Option<PathBuf>,
    /// Where the text came from.
    pub origin: Origin,
}

/// Where a configuration's routes.toml came from; the `source` label of the
/// reload and config-info metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk (`--config`), including the KV cache read at a start
    /// when Consul is unreachable: that is still KV content, so the cache
    /// path sets [`Origin::Consul`] itself.
    File,
    /// A Consul KV value, with the `ModifyIndex` of the key read.
    Consul { index: u64 },
}

impl Origin {
    /// The metric label value: `file` or `consul`.
    pub fn label(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Consul { .. } => "consul",
        }
    }
}

impl LoadedFile {
    /// Reads and parses `path`; syntax and schema errors name the line.
    pub fn read(path: &Path) -> Result<LoadedFile, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                path,
                None,
                "",
                format!("cannot read the config file: {e}; pass its path with --config"),
            ))
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`; fails with every unknown key and wrong value found when
    /// no config can be built, and otherwise keeps the unknown keys in
    /// [`LoadedFile::unknown_keys`].
    pub fn parse(path: &Path, text: &str) -> Result<LoadedFile, ConfigErrors> {
        let lines = LineIndex::new(text);
        let parsed = parse::parse(path, text, &lines);
        let Some(config) = parsed.config else {
            return Err(ConfigErrors(parsed.errors));
        };
        Ok(LoadedFile {
            path: path.to_owned(),
            config,
            lines,
            unknown_keys: parsed.errors,
            hash: fnv1a(text.as_bytes()),
            sha256: sha256(text.as_bytes()),
            base: path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_owned),
            origin: Origin::File,
        })
    }

    /// An error at the position of a spanned value.
    pub fn error<T>(
        &self,
        at: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = at.span();
        let line = (span.end > 0).then(|| self.lines.line(span.start));
        ConfigError::new(&self.path, line, field, message)
    }

    /// The line a spanned value starts on, if it came from the file.
    pub fn line_of<T>(&self, at: &Spanned<T>) -> Option<usize> {
        let span = at.span();
        (span.end > 0).then(|| self.lines.line(span.start))
    }

    /// Resolves a path written in the file against [`LoadedFile::base`].
    pub fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_owned();
        }
        match &self.base {
            Some(d) => d.join(p),
            None => p.to_owned(),
        }
    }

    /// The listener address, checked.
    pub fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.address(&self.config.server.listen, "server.listen")
    }

    /// The admin listener address, checked.
    pub fn admin_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.address(&self.config.admin.listen, "admin.listen")
    }

    pub(crate) fn address(
        &self,
        l: &Spanned<String>,
        field: &str,
    ) -> Result<SocketAddr, ConfigError> {
        l.get_ref().parse().map_err(|_| {
            self.error(
                l,
                field,
                format!(
                    "\"{}\" is not an address; write ip:port, e.g. \"127.0.0.1:8080\"",
                    l.get_ref()
                ),
            )
        })
    }

    /// Parses an optional duration field, pushing an error when it is malformed.
    pub fn duration(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
        errors: &mut Vec<ConfigError>,
    ) -> Duration {
        self.duration_min(value, field, default, false, errors)
    }

    /// As [`Self::duration`]; `allow_zero` for delays where 0 means "none".
    pub fn duration_min(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
        allow_zero: bool,
        errors: &mut Vec<ConfigError>,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if allow_zero || !d.is_zero() => d,
            Ok(_) => {
                errors.push(self.error(v, field, "must be greater than zero"));
                default
            }
            Err(e) => {
                errors.push(self.error(v, field, e));
                default
            }
        }
    }
}

/// SHA-256 of `bytes`, with the crypto provider the project already has.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Stable across runs and platforms, unlike std's hasher; enough to tell
/// two versions of a file apart in /admin/config.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = LoadedFile::parse(Path::new("r.toml"), "[server]\nlisten = \n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("r.toml:2:"), "{text}");
    }

    #[test]
    fn unknown_key_is_kept_with_its_line() {
        let src = "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n";
        let f = LoadedFile::parse(Path::new("r.toml"), src).unwrap();
        let text = ConfigErrors(f.unknown_keys).to_string();
        assert_eq!(
            text,
            "r.toml:3: server.lisen: unknown key \"lisen\"; did you mean \"listen\"?"
        );
    }

    #[test]
    fn route_fields_keep_their_lines() {
        let src = "[[routes]]\nmethod = \"GET\"\npath = \"/v1/x\"\ngrpc = \"a.B/C\"\n";
        let f = LoadedFile::parse(Path::new("r.toml"), src).unwrap();
        let r = &f.config.routes[0];
        assert_eq!(f.line_of(&r.get_ref().path), Some(3));
        // A route's own span starts at its [[routes]] header.
        assert_eq!(f.line_of(r), Some(1));
    }

    #[test]
    fn defaults_apply_when_server_is_absent() {
        let f = LoadedFile::parse(Path::new("r.toml"), "").unwrap();
        assert_eq!(f.config.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(f.config.server.routes_from_annotations);
        assert_eq!(f.listen().unwrap().port(), 8080);
    }

    #[test]
    fn bad_listen_address_names_field() {
        let f = LoadedFile::parse(Path::new("r.toml"), "[server]\nlisten = \"nope\"\n").unwrap();
        let e = f.listen().unwrap_err().to_string();
        assert!(e.contains("r.toml:2: server.listen:"), "{e}");
    }

    #[test]
    fn trace_export_settings_are_checked_with_their_lines() {
        let check = |src: &str| {
            let f = LoadedFile::parse(Path::new("r.toml"), src).unwrap();
            let mut errors = Vec::new();
            f.config.telemetry.validate(&f, &mut errors);
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        assert!(check("").is_empty());
        assert!(check(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25\n"
        )
        .is_empty());
        assert!(check(
            "[telemetry]\notlp_protocol = \"http\"\notlp_endpoint = \"https://otel.example/v1/traces\"\n"
        )
        .is_empty());
        let e = check("[telemetry]\nsampling_ratio = 1.5\n");
        assert!(e[0].contains("r.toml:2: telemetry.sampling_ratio"), "{e:?}");
        let e = check("[telemetry]\n\notlp_endpoint = \"localhost:4317\"\n");
        assert!(e[0].contains("r.toml:3: telemetry.otlp_endpoint"), "{e:?}");
        let e = check("[telemetry]\notlp_endpoint = \"not a url\"\n");
        assert!(e[0].contains("is not a URL"), "{e:?}");
        let e = check("[telemetry]\notlp_endpoint = \"https://otel.example:4317\"\n");
        assert!(e[0].contains("without TLS"), "{e:?}");
        let e = check("[telemetry]\nservice_name = \" \"\n");
        assert!(e[0].contains("telemetry.service_name"), "{e:?}");
        assert!(LoadedFile::parse(
            Path::new("r.toml"),
            "[telemetry]\notlp_protocol = \"udp\"\n"
        )
        .is_err());
    }

    #[test]
    fn descriptors_path_is_relative_to_the_file() {
        let f = LoadedFile::parse(Path::new("/etc/gw/routes.toml"), "").unwrap();
        assert_eq!(
            f.relative("descriptors"),
            PathBuf::from("/etc/gw/descriptors")
        );
        let f = LoadedFile::parse(Path::new("routes.toml"), "").unwrap();
        assert_eq!(f.relative("descriptors"), PathBuf::from("descriptors"));
    }
}
