//! From a `[backends.<name>]` table to [`BackendOptions`], checking every
//! value and reporting each problem with file, line and key path.

use std::time::Duration;

use http::HeaderName;
use toml::Spanned;
use tonic::Code;

use super::adaptive::{self, Algorithm};
use super::{
    parse_code, AdaptiveSpec, BackendOptions, BreakerSpec, HashKey, HealthCheckSpec, OutlierSpec,
    Policy, RetrySpec,
};
use crate::config::{AdaptiveConcurrencyConfig, BackendConfig, ConfigError, LoadedFile};
use crate::discovery::consul::{self, ConsulSpec, TokenSource};
use crate::discovery::etcd::{self, EtcdSpec};
use crate::discovery::eureka::{self, EurekaSpec};
use crate::discovery::nacos::{self, NacosSpec};
use crate::discovery::zookeeper::{self, ZooKeeperSpec};
use crate::discovery::{dns, DiscoverySpec};

/// Checks a backend's discovery, balancing and resilience settings.
/// Problems go to `errors`; the result then holds defaults in their place.
pub fn backend_options(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<BackendConfig>,
    errors: &mut Vec<ConfigError>,
) -> BackendOptions {
    let b = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.{f}");
    let mut o = BackendOptions {
        discovery: discovery_spec(file, name, spanned, errors),
        ..BackendOptions::default()
    };

    if let Some(lb) = &b.load_balancer {
        match Policy::parse(lb.get_ref().trim()) {
            Some(p) => o.policy = p,
            None => errors.push(file.error(
                lb,
                at("load_balancer"),
                format!(
                    "\"{}\" is not a load balancer; use one of {}",
                    lb.get_ref(),
                    Policy::NAMES
                ),
            )),
        }
    }
    match (&b.hash_key, o.policy) {
        (None, Policy::ConsistentHash) => {
            let msg = "consistent_hash needs a hash_key: { header = \"x-user-id\" }, { claim = \"sub\" } or { client_ip = true }";
            errors.push(match &b.load_balancer {
                Some(lb) => file.error(lb, at("hash_key"), msg),
                None => file.error(spanned, at("hash_key"), msg),
            });
        }
        (Some(k), Policy::ConsistentHash) => o.hash_key = hash_key(file, name, k, errors),
        (Some(k), _) => errors.push(file.error(
            k,
            at("hash_key"),
            "hash_key is only used with load_balancer = \"consistent_hash\"",
        )),
        (None, _) => {}
    }

    if let Some(hc) = &b.health_check {
        let h = hc.get_ref();
        let d = HealthCheckSpec::default();
        let interval = file.duration(
            &h.interval,
            &at("health_check.interval"),
            d.interval,
            errors,
        );
        let timeout = file.duration(&h.timeout, &at("health_check.timeout"), d.timeout, errors);
        if timeout > interval {
            if let Some(t) = &h.timeout {
                errors.push(file.error(
                    t,
                    at("health_check.timeout"),
                    format!("must not be longer than the interval ({interval:?})"),
                ));
            }
        }
        o.health_check = Some(HealthCheckSpec {
            interval,
            timeout,
            service: h.service.clone(),
            healthy_threshold: at_least_one(
                file,
                &h.healthy_threshold,
                &at("health_check.healthy_threshold"),
                d.healthy_threshold,
                errors,
            ),
            unhealthy_threshold: at_least_one(
                file,
                &h.unhealthy_threshold,
                &at("health_check.unhealthy_threshold"),
                d.unhealthy_threshold,
                errors,
            ),
        });
    }

    if let Some(od) = &b.outlier_detection {
        let c = od.get_ref();
        let d = OutlierSpec::default();
        let base = file.duration(
            &c.base_ejection_time,
            &at("outlier_detection.base_ejection_time"),
            d.base_ejection_time,
            errors,
        );
        let max = file.duration(
            &c.max_ejection_time,
            &at("outlier_detection.max_ejection_time"),
            d.max_ejection_time.max(base),
            errors,
        );
        if max < base {
            if let Some(m) = &c.max_ejection_time {
                errors.push(file.error(
                    m,
                    at("outlier_detection.max_ejection_time"),
                    format!("must not be shorter than base_ejection_time ({base:?})"),
                ));
            }
        }
        let percent = match &c.max_ejection_percent {
            Some(p) if *p.get_ref() > 100 => {
                errors.push(file.error(
                    p,
                    at("outlier_detection.max_ejection_percent"),
                    "is a percentage: 0 to 100",
                ));
                d.max_ejection_percent
            }
            Some(p) => *p.get_ref(),
            None => d.max_ejection_percent,
        };
        o.outlier = OutlierSpec {
            consecutive_failures: c
                .consecutive_failures
                .as_ref()
                .map_or(d.consecutive_failures, |v| *v.get_ref()),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: percent,
        };
    }

    if let Some(r) = &b.retry {
        let c = r.get_ref();
        let d = RetrySpec::default();
        let attempts = match &c.attempts {
            Some(a) if !(1..=10).contains(a.get_ref()) => {
                errors.push(file.error(
                    a,
                    at("retry.attempts"),
                    "must be 1 to 10 (1 turns retries off)",
                ));
                d.attempts
            }
            Some(a) => *a.get_ref(),
            None => d.attempts,
        };
        let backoff = file.duration(&c.backoff, &at("retry.backoff"), d.backoff, errors);
        let max_backoff = file.duration(
            &c.max_backoff,
            &at("retry.max_backoff"),
            d.max_backoff.max(backoff),
            errors,
        );
        if max_backoff < backoff {
            if let Some(m) = &c.max_backoff {
                errors.push(file.error(
                    m,
                    at("retry.max_backoff"),
                    format!("must not be shorter than backoff ({backoff:?})"),
                ));
            }
        }
        o.retry = RetrySpec {
            attempts,
            retry_on: match &c.retry_on {
                Some(list) => codes(file, list, &at("retry.retry_on"), errors),
                None => d.retry_on,
            },
            backoff,
            max_backoff,
            budget: share(file, &c.budget, &at("retry.budget"), d.budget, errors),
            min_retries_per_second: c
                .min_retries_per_second
                .as_ref()
                .map_or(d.min_retries_per_second, |v| *v.get_ref()),
            per_try_timeout: c.per_try_timeout.as_ref().map(|_| {
                file.duration(
                    &c.per_try_timeout,
                    &at("retry.per_try_timeout"),
                    Duration::MAX,
                    errors,
                )
            }),
        };
    }

    if let Some(cb) = &b.circuit_breaker {
        let c = cb.get_ref();
        let d = BreakerSpec::default();
        o.breaker = BreakerSpec {
            window: file.duration(&c.window, &at("circuit_breaker.window"), d.window, errors),
            failure_rate: share(
                file,
                &c.failure_rate,
                &at("circuit_breaker.failure_rate"),
                d.failure_rate,
                errors,
            ),
            min_requests: c
                .min_requests
                .as_ref()
                .map_or(d.min_requests, |v| *v.get_ref()),
            failures: c.failures.as_ref().map_or(d.failures, |v| *v.get_ref()),
            open_for: file.duration(
                &c.open_for,
                &at("circuit_breaker.open_for"),
                d.open_for,
                errors,
            ),
            half_open_probes: at_least_one(
                file,
                &c.half_open_probes,
                &at("circuit_breaker.half_open_probes"),
                d.half_open_probes,
                errors,
            ),
            max_requests: at_least_one(
                file,
                &c.max_requests,
                &at("circuit_breaker.max_requests"),
                d.max_requests,
                errors,
            ),
        };
    }
    if let Some(ac) = &b.adaptive_concurrency {
        o.adaptive = Some(adaptive_spec(file, name, ac, errors));
    }
    o
}

/// `adaptive_concurrency`: the algorithm and its own keys (a key of the
/// other algorithm is an error, not silently unused), and limits that nest.
fn adaptive_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<AdaptiveConcurrencyConfig>,
    errors: &mut Vec<ConfigError>,
) -> AdaptiveSpec {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.adaptive_concurrency.{f}");
    let d = AdaptiveSpec::default();
    let algorithm = match c.algorithm.as_ref().map(|a| (a, a.get_ref().trim())) {
        None | Some((_, "gradient")) => gradient(file, c, &at, errors),
        Some((_, "aimd")) => aimd(file, spanned, &at, errors),
        Some((a, other)) => {
            errors.push(file.error(
                a,
                at("algorithm"),
                format!("\"{other}\" is not an algorithm; use \"gradient\" or \"aimd\""),
            ));
            d.algorithm.clone()
        }
    };
    let min_limit = at_least_one(file, &c.min_limit, &at("min_limit"), d.min_limit, errors);
    let max_limit = at_least_one(
        file,
        &c.max_limit,
        &at("max_limit"),
        d.max_limit.max(min_limit),
        errors,
    );
    if let Some(m) = c.max_limit.as_ref().filter(|_| max_limit < min_limit) {
        errors.push(file.error(
            m,
            at("max_limit"),
            format!("must not be below min_limit ({min_limit})"),
        ));
    }
    let max_limit = max_limit.max(min_limit);
    let initial_limit = match &c.initial_limit {
        Some(i) if !(min_limit..=max_limit).contains(i.get_ref()) => {
            errors.push(file.error(
                i,
                at("initial_limit"),
                format!("must be between min_limit ({min_limit}) and max_limit ({max_limit})"),
            ));
            d.initial_limit.clamp(min_limit, max_limit)
        }
        Some(i) => *i.get_ref(),
        None => d.initial_limit.clamp(min_limit, max_limit),
    };
    AdaptiveSpec {
        algorithm,
        initial_limit,
        min_limit,
        max_limit,
        window: file.duration(&c.window, &at("window"), d.window, errors),
        min_samples: at_least_one(
            file,
            &c.min_samples,
            &at("min_samples"),
            d.min_samples,
            errors,
        ),
    }
}

/// `algorithm = "gradient"` and its keys.
fn gradient(
    file: &LoadedFile,
    c: &AdaptiveConcurrencyConfig,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Algorithm {
    foreign_key(
        file,
        &c.latency_threshold,
        at("latency_threshold"),
        "gradient",
        errors,
    );
    foreign_key(file, &c.backoff, at("backoff"), "gradient", errors);
    let tolerance = match &c.tolerance {
        Some(t) if !(t.get_ref().is_finite() && *t.get_ref() >= 0.0) => {
            errors.push(file.error(t, at("tolerance"), "must be 0 or more (0.5: 50% slower)"));
            adaptive::DEFAULT_TOLERANCE
        }
        Some(t) => *t.get_ref(),
        None => adaptive::DEFAULT_TOLERANCE,
    };
    Algorithm::Gradient {
        tolerance,
        min_rtt_interval: file.duration(
            &c.min_rtt_interval,
            &at("min_rtt_interval"),
            adaptive::DEFAULT_MIN_RTT_INTERVAL,
            errors,
        ),
    }
}

/// `algorithm = "aimd"` and its keys; `latency_threshold` has no default
/// (only the operator knows the latency the backend should hold).
fn aimd(
    file: &LoadedFile,
    spanned: &Spanned<AdaptiveConcurrencyConfig>,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Algorithm {
    let c = spanned.get_ref();
    foreign_key(file, &c.tolerance, at("tolerance"), "aimd", errors);
    foreign_key(
        file,
        &c.min_rtt_interval,
        at("min_rtt_interval"),
        "aimd",
        errors,
    );
    if c.latency_threshold.is_none() {
        errors.push(file.error(
            spanned,
            at("latency_threshold"),
            "algorithm = \"aimd\" needs a latency_threshold (e.g. \"250ms\"): the latency above which the limit backs off",
        ));
    }
    let backoff = match &c.backoff {
        Some(b) if !(*b.get_ref() > 0.0 && *b.get_ref() < 1.0) => {
            errors.push(file.error(
                b,
                at("backoff"),
                "must be above 0 and below 1 (0.9: a tenth less)",
            ));
            adaptive::DEFAULT_BACKOFF
        }
        Some(b) => *b.get_ref(),
        None => adaptive::DEFAULT_BACKOFF,
    };
    Algorithm::Aimd {
        latency_threshold: file.duration(
            &c.latency_threshold,
            &at("latency_threshold"),
            Duration::from_secs(1),
            errors,
        ),
        backoff,
    }
}

/// A key of the algorithm other than `ours`, set: an error rather than a
/// setting silently unused.
fn foreign_key<T>(
    file: &LoadedFile,
    value: &Option<Spanned<T>>,
    field: String,
    ours: &str,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(v) = value {
        let theirs = if ours == "gradient" {
            "aimd"
        } else {
            "gradient"
        };
        errors.push(file.error(
            v,
            field,
            format!("is an option of algorithm = \"{theirs}\", not of \"{ours}\""),
        ));
    }
}

/// Where the instances come from: `endpoints` (static, or DNS names
/// resolved again every `dns_refresh`), or a registry's table instead. A
/// new kind of source is one more table checked here.
fn discovery_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<BackendConfig>,
    errors: &mut Vec<ConfigError>,
) -> DiscoverySpec {
    let b = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.{f}");
    // The registries this backend names, with where each is written.
    let registries: Vec<(&str, Spanned<()>)> = [
        ("consul", b.consul.as_ref().map(|c| c.span())),
        ("etcd", b.etcd.as_ref().map(|c| c.span())),
        ("zookeeper", b.zookeeper.as_ref().map(|c| c.span())),
        ("nacos", b.nacos.as_ref().map(|c| c.span())),
        ("eureka", b.eureka.as_ref().map(|c| c.span())),
    ]
    .into_iter()
    .filter_map(|(n, span)| span.map(|s| (n, Spanned::new(s, ()))))
    .collect();
    if registries.is_empty() && b.endpoints.is_empty() {
        errors.push(file.error(
            spanned,
            at("endpoints"),
            "no endpoints; list at least one host:port, or name a Consul service with consul = { service = \"...\" } (or an etcd prefix with etcd = { ... }, a ZooKeeper path with zookeeper = { ... }, a Nacos service with nacos = { ... }, a Eureka app with eureka = { ... })",
        ));
    }
    for (i, (registry, span)) in registries.iter().enumerate() {
        if !b.endpoints.is_empty() {
            errors.push(file.error(
                span,
                at(registry),
                format!("set either endpoints or {registry}, not both"),
            ));
        } else if i > 0 {
            errors.push(file.error(
                span,
                at(registry),
                format!(
                    "set one registry, not both {} and {registry}",
                    registries[0].0
                ),
            ));
        }
    }
    let consul = b
        .consul
        .as_ref()
        .and_then(|c| consul_spec(file, name, c, errors));
    let etcd = b
        .etcd
        .as_ref()
        .and_then(|c| etcd_spec(file, name, c, errors));
    let zookeeper = b
        .zookeeper
        .as_ref()
        .and_then(|c| zookeeper_spec(file, name, c, errors));
    let nacos = b
        .nacos
        .as_ref()
        .and_then(|c| nacos_spec(file, name, c, errors));
    let eureka = b
        .eureka
        .as_ref()
        .and_then(|c| eureka_spec(file, name, c, errors));
    let refresh = file.duration(
        &b.dns_refresh,
        &at("dns_refresh"),
        dns::DEFAULT_REFRESH,
        errors,
    );
    match (consul, etcd, zookeeper, nacos, eureka) {
        (Some(spec), ..) => DiscoverySpec::Consul(spec),
        (None, Some(spec), ..) => DiscoverySpec::Etcd(spec),
        (None, None, Some(spec), ..) => DiscoverySpec::ZooKeeper(spec),
        (None, None, None, Some(spec), _) => DiscoverySpec::Nacos(spec),
        (None, None, None, None, Some(spec)) => DiscoverySpec::Eureka(spec),
        (None, None, None, None, None) => DiscoverySpec::endpoints(
            b.endpoints.iter().map(|e| e.get_ref().clone()).collect(),
            refresh,
        ),
    }
}

/// A registry's `http://` or `https://` address, trimmed of a trailing
/// slash; `None` (with an error naming `example`) when it is not one.
fn registry_url(
    file: &LoadedFile,
    value: &Spanned<String>,
    field: &str,
    example: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let v = value.get_ref().trim().trim_end_matches('/');
    let ok = ["http://", "https://"]
        .iter()
        .any(|s| v.len() > s.len() && v.starts_with(s))
        && reqwest::Url::parse(v).is_ok_and(|u| u.host().is_some() && u.path() == "/");
    if !ok {
        errors.push(file.error(
            value,
            field,
            format!("\"{v}\" is not an address; write e.g. \"{example}\""),
        ));
        return None;
    }
    Some(v.to_owned())
}

/// A PEM file named by `field`, read now so that a missing or empty one is
/// a config error with its line rather than a watch that fails later.
/// `check` says whether the bytes hold what is needed.
fn pem_file(
    file: &LoadedFile,
    value: &Spanned<String>,
    field: &str,
    what: &str,
    check: impl Fn(&[u8]) -> bool,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<u8>> {
    let path = file.relative(value.get_ref());
    match std::fs::read(&path) {
        Ok(pem) if check(&pem) => Some(pem),
        Ok(_) => {
            errors.push(file.error(
                value,
                field,
                format!("{} holds no PEM {what}", path.display()),
            ));
            None
        }
        Err(e) => {
            errors.push(file.error(value, field, format!("cannot read {}: {e}", path.display())));
            None
        }
    }
}

/// A user and the variable holding its password come together or not at all.
fn credentials(
    file: &LoadedFile,
    username: &Option<Spanned<String>>,
    password_env: &Option<Spanned<String>>,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) {
    match (username, password_env) {
        (Some(u), None) => errors.push(file.error(
            u,
            at("password_env"),
            "a username needs password_env, the environment variable holding its password",
        )),
        (None, Some(p)) => errors.push(file.error(
            p,
            at("username"),
            "password_env needs the username it belongs to",
        )),
        (Some(u), Some(p)) => {
            if u.get_ref().trim().is_empty() {
                errors.push(file.error(u, at("username"), "name the user"));
            }
            if p.get_ref().trim().is_empty() {
                errors.push(file.error(p, at("password_env"), "name an environment variable"));
            }
        }
        (None, None) => {}
    }
}

/// A non-empty trimmed name, or an error saying what to write.
fn name_value(
    file: &LoadedFile,
    value: &Spanned<String>,
    field: String,
    hint: &str,
    errors: &mut Vec<ConfigError>,
) -> String {
    let v = value.get_ref().trim();
    if v.is_empty() || v.contains(['&', '?', '#', '/', ' ']) {
        errors.push(file.error(value, field, format!("\"{v}\" is not a name; {hint}")));
    }
    v.to_owned()
}

fn nacos_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::NacosConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<NacosSpec> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.nacos.{f}");
    let before = errors.len();
    if c.servers.is_empty() {
        errors.push(file.error(
            spanned,
            at("servers"),
            "list the Nacos servers, e.g. servers = [\"http://127.0.0.1:8848\"]",
        ));
    }
    let servers: Vec<String> = c
        .servers
        .iter()
        .filter_map(|e| registry_url(file, e, &at("servers"), "http://127.0.0.1:8848", errors))
        .collect();
    let hint = "write the service name as registered, e.g. \"bookstore\"";
    let service = name_value(file, &c.service, at("service"), hint, errors);
    let optional = |v: &Option<Spanned<String>>, key: &str, errors: &mut Vec<ConfigError>| {
        v.as_ref().map(|v| {
            name_value(
                file,
                v,
                at(key),
                &format!("write the {key} as Nacos names it"),
                errors,
            )
        })
    };
    let namespace = optional(&c.namespace, "namespace", errors);
    let group =
        optional(&c.group, "group", errors).unwrap_or_else(|| nacos::DEFAULT_GROUP.to_owned());
    let cluster = optional(&c.cluster, "cluster", errors);
    let refresh = file.duration(&c.refresh, &at("refresh"), nacos::DEFAULT_REFRESH, errors);
    credentials(file, &c.username, &c.password_env, &at, errors);
    (errors.len() == before).then(|| NacosSpec {
        servers,
        service,
        namespace,
        group,
        cluster,
        refresh,
        username: c.username.as_ref().map(|u| u.get_ref().trim().to_owned()),
        password_env: c
            .password_env
            .as_ref()
            .map(|p| p.get_ref().trim().to_owned()),
    })
}

fn eureka_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::EurekaConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<EurekaSpec> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.eureka.{f}");
    let before = errors.len();
    if c.servers.is_empty() {
        errors.push(file.error(
            spanned,
            at("servers"),
            "list the Eureka servers, e.g. servers = [\"http://127.0.0.1:8761/eureka\"]",
        ));
    }
    let mut servers = Vec::new();
    for s in &c.servers {
        // Unlike other registries, Eureka's REST API lives under a path
        // (`/eureka` by default, `/eureka/v2` in Netflix's own deployment).
        let v = s.get_ref().trim().trim_end_matches('/');
        let ok = ["http://", "https://"].iter().any(|p| v.starts_with(p))
            && reqwest::Url::parse(v)
                .is_ok_and(|u| u.host().is_some() && u.query().is_none() && u.fragment().is_none());
        if ok {
            servers.push(v.to_owned());
        } else {
            errors.push(file.error(
                s,
                at("servers"),
                format!("\"{v}\" is not a URL; write e.g. \"http://127.0.0.1:8761/eureka\""),
            ));
        }
    }
    let app = name_value(
        file,
        &c.app,
        at("app"),
        "write the application name as registered, e.g. \"BOOKSTORE\"",
        errors,
    )
    .to_ascii_uppercase();
    let refresh = file.duration(&c.refresh, &at("refresh"), eureka::DEFAULT_REFRESH, errors);
    (errors.len() == before).then_some(EurekaSpec {
        servers,
        app,
        refresh,
    })
}

fn zookeeper_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::ZooKeeperConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<ZooKeeperSpec> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.zookeeper.{f}");
    let before = errors.len();
    if c.servers.is_empty() {
        errors.push(file.error(
            spanned,
            at("servers"),
            "list the ensemble's servers, e.g. servers = [\"127.0.0.1:2181\"]",
        ));
    }
    let mut servers = Vec::new();
    for s in &c.servers {
        let v = s.get_ref().trim();
        let ok = v.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', ',', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            errors.push(file.error(
                s,
                at("servers"),
                format!("\"{v}\" is not host:port; write e.g. \"zk1.internal:2181\""),
            ));
        }
        servers.push(v.to_owned());
    }
    let raw = c.path.get_ref().trim();
    let path = if raw.len() > 1 {
        raw.trim_end_matches('/')
    } else {
        raw
    };
    if !path.starts_with('/') || path == "/" || path.contains("//") {
        errors.push(file.error(
            &c.path,
            at("path"),
            format!(
                "\"{raw}\" is not a znode path; write the parent of the instances' znodes, e.g. \"/services/users\""
            ),
        ));
    }
    let session_timeout = file.duration(
        &c.session_timeout,
        &at("session_timeout"),
        zookeeper::DEFAULT_SESSION_TIMEOUT,
        errors,
    );
    if session_timeout < Duration::from_secs(1) {
        if let Some(t) = &c.session_timeout {
            errors.push(file.error(
                t,
                at("session_timeout"),
                "must be at least 1s (servers raise it to twice their tickTime anyway)",
            ));
        }
    }
    (errors.len() == before).then(|| ZooKeeperSpec {
        servers,
        path: path.to_owned(),
        session_timeout,
    })
}

fn etcd_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::EtcdConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<EtcdSpec> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.etcd.{f}");
    let before = errors.len();
    if c.endpoints.is_empty() {
        errors.push(file.error(
            spanned,
            at("endpoints"),
            "list the cluster's client URLs, e.g. endpoints = [\"http://127.0.0.1:2379\"]",
        ));
    }
    let endpoints: Vec<String> = c
        .endpoints
        .iter()
        .filter_map(|e| registry_url(file, e, &at("endpoints"), "http://127.0.0.1:2379", errors))
        .collect();
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if https && endpoints.iter().any(|e| e.starts_with("http://")) {
        errors.push(file.error(
            &c.endpoints[0],
            at("endpoints"),
            "mix no http:// and https:// endpoints: one cluster speaks one scheme",
        ));
    }
    let mut prefix = c.prefix.get_ref().trim().to_owned();
    if prefix.is_empty() || prefix == "/" {
        errors.push(file.error(
            &c.prefix,
            at("prefix"),
            "name the key prefix the instances are registered under, e.g. \"/services/users/\"",
        ));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let layout = match &c.layout {
        None => etcd::Layout::Plain,
        Some(l) => etcd::Layout::parse(l.get_ref().trim()).unwrap_or_else(|| {
            errors.push(file.error(
                l,
                at("layout"),
                format!(
                    "\"{}\" is not a layout; use {}",
                    l.get_ref(),
                    etcd::Layout::NAMES
                ),
            ));
            etcd::Layout::Plain
        }),
    };
    credentials(file, &c.username, &c.password_env, &at, errors);
    let needs_https = |f: &Spanned<String>, key: &str, errors: &mut Vec<ConfigError>| {
        if !https {
            errors.push(file.error(f, at(key), format!("{key} needs https:// endpoints")));
            return false;
        }
        true
    };
    let ca_pem = c.ca_file.as_ref().and_then(|f| {
        needs_https(f, "ca_file", errors).then(|| {
            pem_file(
                file,
                f,
                &at("ca_file"),
                "certificate",
                |p| reqwest::Certificate::from_pem_bundle(p).is_ok_and(|c| !c.is_empty()),
                errors,
            )
        })?
    });
    let identity_pem = match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => {
            let ok = needs_https(cert, "cert_file", errors);
            let is_pem = |p: &[u8]| String::from_utf8_lossy(p).contains("-----BEGIN ");
            let cert_pem = pem_file(file, cert, &at("cert_file"), "certificate", is_pem, errors);
            let key_pem = pem_file(file, key, &at("key_file"), "private key", is_pem, errors);
            match (ok, cert_pem, key_pem) {
                (true, Some(mut pem), Some(k)) => {
                    pem.push(b'\n');
                    pem.extend_from_slice(&k);
                    if reqwest::Identity::from_pem(&pem).is_err() {
                        errors.push(file.error(
                            cert,
                            at("cert_file"),
                            "the certificate and key_file do not make a client identity (a certificate chain and its private key, PEM)",
                        ));
                    }
                    Some(pem)
                }
                _ => None,
            }
        }
        (Some(f), None) => {
            errors.push(file.error(f, at("key_file"), "cert_file needs its key_file"));
            None
        }
        (None, Some(f)) => {
            errors.push(file.error(f, at("cert_file"), "key_file needs its cert_file"));
            None
        }
        (None, None) => None,
    };
    (errors.len() == before).then(|| EtcdSpec {
        endpoints,
        prefix,
        layout,
        username: c.username.as_ref().map(|u| u.get_ref().trim().to_owned()),
        password_env: c
            .password_env
            .as_ref()
            .map(|p| p.get_ref().trim().to_owned()),
        ca_pem,
        identity_pem,
    })
}

fn consul_spec(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::ConsulConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<ConsulSpec> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("backends.{name}.consul.{f}");
    let before = errors.len();
    let service = c.service.get_ref().trim();
    if service.is_empty() {
        errors.push(file.error(
            &c.service,
            at("service"),
            "name the Consul service to watch",
        ));
    }
    let address = match &c.address {
        None => {
            let v = consul::default_address();
            if reqwest::Url::parse(&v).is_err()
                || !(v.starts_with("http://") || v.starts_with("https://"))
            {
                errors.push(file.error(
                    spanned,
                    format!("backends.{name}.consul"),
                    format!(
                        "{} is \"{v}\", not an agent address; set it to e.g. \"http://127.0.0.1:8500\" or set `address`",
                        consul::ADDRESS_ENV
                    ),
                ));
            }
            v
        }
        Some(a) => {
            let v = a.get_ref().trim().trim_end_matches('/');
            let scheme_len = if v.starts_with("https://") {
                "https://".len()
            } else {
                "http://".len()
            };
            if !(v.starts_with("http://") || v.starts_with("https://"))
                || v.len() <= scheme_len
                || reqwest::Url::parse(v).is_err()
            {
                errors.push(file.error(
                    a,
                    at("address"),
                    format!(
                        "\"{v}\" is not an agent address; write e.g. \"http://127.0.0.1:8500\" or \"https://consul.internal:8501\""
                    ),
                ));
            }
            v.to_owned()
        }
    };
    let wait = file.duration(&c.wait, &at("wait"), consul::DEFAULT_WAIT, errors);
    if wait > consul::MAX_WAIT {
        if let Some(w) = &c.wait {
            errors.push(file.error(
                w,
                at("wait"),
                "Consul caps blocking queries at 10m; use at most \"10m\"",
            ));
        }
    }
    let token = match (&c.token_file, &c.token_env) {
        (Some(f), Some(_)) => {
            errors.push(file.error(f, at("token_file"), "set token_file or token_env, not both"));
            TokenSource::Env(consul::DEFAULT_TOKEN_ENV.to_owned())
        }
        (Some(f), None) => TokenSource::File(file.relative(f.get_ref())),
        (None, Some(e)) => {
            if e.get_ref().trim().is_empty() {
                errors.push(file.error(e, at("token_env"), "name an environment variable"));
            }
            TokenSource::Env(e.get_ref().trim().to_owned())
        }
        (None, None) => TokenSource::Env(consul::DEFAULT_TOKEN_ENV.to_owned()),
    };
    let mut tags = Vec::new();
    for t in &c.tags {
        if t.get_ref().trim().is_empty() {
            errors.push(file.error(t, at("tags"), "an empty tag matches nothing"));
        }
        tags.push(t.get_ref().trim().to_owned());
    }
    let datacenter = match &c.datacenter {
        Some(dc) if dc.get_ref().trim().is_empty() => {
            errors.push(file.error(
                dc,
                at("datacenter"),
                "leave datacenter out to ask about the agent's own",
            ));
            None
        }
        Some(dc) => Some(dc.get_ref().trim().to_owned()),
        None => None,
    };
    // A CA file is read and parsed here, so a bad one is a config error
    // with its line, not a watcher that fails later.
    let ca_pem = match &c.ca_file {
        None => None,
        Some(f) if !address.starts_with("https://") => {
            errors.push(file.error(f, at("ca_file"), "ca_file needs an https:// address"));
            None
        }
        Some(f) => {
            let path = file.relative(f.get_ref());
            match std::fs::read(&path) {
                Ok(pem)
                    if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) =>
                {
                    Some(pem)
                }
                Ok(_) => {
                    errors.push(file.error(
                        f,
                        at("ca_file"),
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(file.error(
                        f,
                        at("ca_file"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
    };
    (errors.len() == before).then(|| ConsulSpec {
        ca_pem,
        address,
        service: service.to_owned(),
        tags,
        datacenter,
        passing_only: c.passing_only,
        token,
        stale: c.stale,
        wait,
    })
}

fn hash_key(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::HashKeyConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<HashKey> {
    let k = spanned.get_ref();
    let at = format!("backends.{name}.hash_key");
    let set =
        usize::from(k.header.is_some()) + usize::from(k.claim.is_some()) + usize::from(k.client_ip);
    if set != 1 {
        errors.push(file.error(
            spanned,
            at,
            "set exactly one of header = \"...\", claim = \"...\" or client_ip = true",
        ));
        return None;
    }
    if let Some(h) = &k.header {
        return match HeaderName::from_bytes(h.get_ref().trim().to_ascii_lowercase().as_bytes()) {
            Ok(name) => Some(HashKey::Header(name)),
            Err(_) => {
                errors.push(file.error(
                    h,
                    format!("{at}.header"),
                    format!("\"{}\" is not a header name", h.get_ref()),
                ));
                None
            }
        };
    }
    if let Some(c) = &k.claim {
        let claim = c.get_ref().trim();
        if claim.is_empty()
            || !claim
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            errors.push(file.error(
                c,
                format!("{at}.claim"),
                format!("\"{claim}\" is not a claim name (letters, digits, _ and -)"),
            ));
            return None;
        }
        return Some(HashKey::claim(claim));
    }
    Some(HashKey::ClientIp)
}

/// gRPC code names, for `retry_on` lists.
fn codes(
    file: &LoadedFile,
    list: &[Spanned<String>],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Code> {
    let mut out = Vec::new();
    for c in list {
        match parse_code(c.get_ref()) {
            Some(code) if !out.contains(&code) => out.push(code),
            Some(_) => {}
            None => errors.push(file.error(
                c,
                field,
                format!(
                    "\"{}\" is not a gRPC status code name; write e.g. \"unavailable\", \"resource_exhausted\", \"aborted\"",
                    c.get_ref()
                ),
            )),
        }
    }
    out
}

/// A route's `retry_on`: `None` when absent (GET routes then retry on the
/// backend's codes), else the codes it lists (`[]`: no retries).
pub fn route_retry_on(
    file: &LoadedFile,
    list: &Option<Vec<Spanned<String>>>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Code>> {
    list.as_ref().map(|l| codes(file, l, field, errors))
}

fn share(
    file: &LoadedFile,
    value: &Option<Spanned<f64>>,
    field: &str,
    default: f64,
    errors: &mut Vec<ConfigError>,
) -> f64 {
    match value {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            errors.push(file.error(v, field, "is a share: 0.0 to 1.0"));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

fn at_least_one(
    file: &LoadedFile,
    value: &Option<Spanned<u32>>,
    field: &str,
    default: u32,
    errors: &mut Vec<ConfigError>,
) -> u32 {
    match value {
        Some(v) if *v.get_ref() == 0 => {
            errors.push(file.error(v, field, "must be at least 1"));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The options of `[backends.b]` with `extra`, and every error as text.
    fn options(extra: &str) -> (BackendOptions, Vec<String>) {
        let src = format!("[backends.b]\nendpoints = [\"127.0.0.1:1\"]\n{extra}\n");
        let f = LoadedFile::parse(Path::new("r.toml"), &src).expect("parses");
        let mut errors = Vec::new();
        let o = backend_options(&f, "b", &f.config.backends["b"], &mut errors);
        (o, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn adaptive_concurrency_is_off_unless_configured_and_takes_defaults() {
        assert_eq!(options("").0.adaptive, None);
        let (o, e) = options("adaptive_concurrency = {}");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.adaptive, Some(AdaptiveSpec::default()));
        let (o, e) = options(
            "adaptive_concurrency = { algorithm = \"aimd\", latency_threshold = \"250ms\", backoff = 0.5, min_limit = 5, initial_limit = 5 }",
        );
        assert!(e.is_empty(), "{e:?}");
        let spec = o.adaptive.expect("on");
        assert_eq!(
            spec.algorithm,
            Algorithm::Aimd {
                latency_threshold: Duration::from_millis(250),
                backoff: 0.5
            }
        );
        assert_eq!((spec.min_limit, spec.initial_limit), (5, 5));
    }

    #[test]
    fn adaptive_concurrency_errors_name_the_key_and_line() {
        let (_, e) = options("adaptive_concurrency = { algorithm = \"vegas\" }");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("r.toml:3: backends.b.adaptive_concurrency.algorithm: \"vegas\" is not an algorithm"),
            "{e:?}"
        );
        let (_, e) =
            options("[backends.b.adaptive_concurrency]\nalgorithm = \"aimd\"\ntolerance = 0.2\n");
        assert!(
            e.iter().any(|m| m.starts_with("r.toml:5: backends.b.adaptive_concurrency.tolerance: is an option of algorithm = \"gradient\"")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("adaptive_concurrency.latency_threshold: algorithm = \"aimd\" needs a latency_threshold")),
            "{e:?}"
        );
        let (_, e) = options("adaptive_concurrency = { latency_threshold = \"1s\" }");
        assert!(
            e[0].contains("latency_threshold: is an option of algorithm = \"aimd\""),
            "{e:?}"
        );
        let (_, e) = options("adaptive_concurrency = { min_limit = 10, max_limit = 5 }");
        assert!(
            e.iter()
                .any(|m| m.contains("max_limit: must not be below min_limit (10)")),
            "{e:?}"
        );
        let (_, e) = options("adaptive_concurrency = { initial_limit = 2000 }");
        assert!(
            e.iter()
                .any(|m| m
                    .contains("initial_limit: must be between min_limit (3) and max_limit (1000)")),
            "{e:?}"
        );
        let (_, e) =
            options("adaptive_concurrency = { min_limit = 0, window = \"0s\", tolerance = -1.0 }");
        assert_eq!(e.len(), 3, "{e:?}");
        let (_, e) = options("adaptive_concurrency = { algorithm = \"aimd\", latency_threshold = \"1s\", backoff = 1.0 }");
        assert!(
            e[0].contains("backoff: must be above 0 and below 1"),
            "{e:?}"
        );
    }
}
