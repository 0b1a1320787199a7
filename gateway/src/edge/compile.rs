//! `[auth]`, `[cors]`, `[rate_limits]`, `[limits]` and the routes' edge
//! fields, checked and compiled. Every problem is reported with its file,
//! line and key path; nothing here panics on a bad value (tower-http's CORS
//! layer would, so its combinations are checked first).

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use toml::Spanned;

use super::client_cert::{self, ClientCertPolicy};
use super::client_ip::{Cidr, ClientIpPolicy, ForwardedHeader};
use super::consumers::{self, RouteKeys};
use super::cors::{self, CorsPolicy, OriginRule};
use super::jwks::{self, Jwks, JwksSource, VerifyKey};
use super::jwt::{self, Auth, AuthMode, Issuer, RouteAuth};
use super::limits::{self, Limits};
use super::ratelimit::{self, KeyKind, PolicyDef, RateLimits};
use super::redis_store::{self, RedisStore};
use super::token_cache::{self, TokenCache};
use super::{Edge, RouteEdge};
use crate::config::{
    ConfigError, CorsConfig, IssuerConfig, LoadedFile, RateLimitPolicyConfig, RouteConfig,
};

/// Builds the edge part of a snapshot. `previous` lends its JWKS caches and
/// rate-limit buckets to unchanged definitions.
///
/// One step per table, in the order their problems are reported: the JWT
/// self-check, `[auth]`, `[cors]`, `[rate_limits]` (policies, then the
/// client IP policy its keys are counted by) and `[limits]`.
pub fn build(file: &LoadedFile, previous: Option<&Edge>, errors: &mut Vec<ConfigError>) -> Edge {
    jwt_self_check(file, errors);
    let auth = build_auth(file, previous.map(|p| &p.auth), errors);
    let (cors, cors_configured) = build_cors(file, errors);
    let rate_limits = build_rate_limits(file, previous.map(|p| &p.rate_limits), errors);
    let consumers = super::consumers::Consumers::build(file, &rate_limits, errors);
    let client_ip = build_client_ip(file, errors);
    let limits = build_limits(file, errors);
    let overload = build_overload(file, previous.map(|p| &p.overload), errors);
    let route_auth = Arc::new(default_route_auth(&auth));
    Edge {
        route_auth,
        auth,
        consumers,
        cors,
        cors_configured,
        rate_limits,
        client_ip,
        limits,
        overload,
    }
}

/// `[server] max_in_flight` and `[server.overload]`, counting on from
/// `previous`'s count and keeping its CPU sampler when unchanged.
fn build_overload(
    file: &LoadedFile,
    previous: Option<&super::overload::Overload>,
    errors: &mut Vec<ConfigError>,
) -> super::overload::Overload {
    let max = file.config.server.max_in_flight.as_ref().and_then(|m| {
        if *m.get_ref() == 0 {
            errors.push(file.error(
                m,
                "server.max_in_flight",
                "must be at least 1 (leave it out for no limit)",
            ));
            None
        } else {
            Some(*m.get_ref())
        }
    });
    let cpu = file.config.server.overload.as_ref().and_then(|o| {
        let c = o.get_ref().cpu.as_ref()?;
        if *c.get_ref() > 0.0 && *c.get_ref() < 1.0 {
            Some(*c.get_ref())
        } else {
            errors.push(file.error(
                c,
                "server.overload.cpu",
                "is a share of the CPUs: above 0 and below 1 (0.95: 95%)",
            ));
            None
        }
    });
    super::overload::Overload::new(max, previous).with_cpu(cpu, previous)
}

/// The JWT library's own check (it verifies a token it signed), reported
/// under `auth` so a broken crypto backend refuses the config instead of
/// refusing every token at run time.
fn jwt_self_check(file: &LoadedFile, errors: &mut Vec<ConfigError>) {
    if let Err(e) = jwt::self_check() {
        errors.push(ConfigError::new(
            &file.path,
            None,
            "auth",
            format!("JWT self-check failed: {e}"),
        ));
    }
}

/// `[cors]`, the policy of routes without their own, and whether any CORS
/// is configured at all (a route's own `cors` counts): without any, the
/// listener does not answer preflights.
fn build_cors(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> (Option<Arc<CorsPolicy>>, bool) {
    let cfg = &file.config;
    let cors = cfg
        .cors
        .as_ref()
        .and_then(|c| cors_policy(file, c, None, "cors", errors).map(Arc::new));
    let cors_configured = cors.is_some()
        || cfg.routes.iter().any(|r| {
            r.get_ref()
                .cors
                .as_ref()
                .is_some_and(|c| c.get_ref().enabled != Some(false))
        });
    (cors, cors_configured)
}

/// `[rate_limits]`: the named policies with their shared bounds, the IPv6
/// prefix clients are counted by, and the default policies, which must name
/// defined ones. Unchanged policies keep their buckets from `previous`, so a
/// reload does not hand every client a fresh quota.
fn build_rate_limits(
    file: &LoadedFile,
    previous: Option<&RateLimits>,
    errors: &mut Vec<ConfigError>,
) -> RateLimits {
    let rl = &file.config.rate_limits;
    let max_keys = positive(
        file,
        &rl.max_keys,
        "rate_limits.max_keys",
        ratelimit::DEFAULT_MAX_KEYS,
        errors,
    );
    let sweep = file.duration(
        &rl.sweep_interval,
        "rate_limits.sweep_interval",
        ratelimit::DEFAULT_SWEEP_INTERVAL,
        errors,
    );
    let defs: Vec<PolicyDef> = rl
        .policies
        .iter()
        .map(|(name, spanned)| policy_def(file, name, spanned, max_keys, errors))
        .collect();
    let store = build_redis(file, &defs, previous.and_then(|p| p.store.as_ref()), errors);
    let mut rate_limits = RateLimits::new(defs, rl.legacy_headers, sweep, previous, store);
    if let Some(p) = &rl.ipv6_prefix {
        match *p.get_ref() {
            1..=128 => rate_limits.ipv6_prefix = *p.get_ref(),
            _ => errors.push(file.error(
                p,
                "rate_limits.ipv6_prefix",
                "must be 1..=128 (64: one subscriber's network; 128: every address apart)",
            )),
        }
    }
    for d in &rl.default {
        if rate_limits.get(d.get_ref()).is_none() {
            errors.push(unknown_policy(file, d, "rate_limits.default", &rate_limits));
        }
    }
    rate_limits
}

/// `[redis]`, when a policy has `store = "redis"`: the store, or the one
/// of `previous` when the settings did not change (its connections and
/// state carry over a reload). Loading never connects: a config is good
/// whether Redis is up or not.
fn build_redis(
    file: &LoadedFile,
    defs: &[PolicyDef],
    previous: Option<&Arc<RedisStore>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<RedisStore>> {
    let users: Vec<&str> = defs
        .iter()
        .filter(|d| d.shared)
        .map(|d| d.name.as_str())
        .collect();
    let Some(spanned) = &file.config.redis else {
        if let Some(first) = users.first() {
            let at = &file.config.rate_limits.policies[*first];
            errors.push(
                file.error(
                    &at.get_ref()
                        .store
                        .clone()
                        .expect("a shared policy names its store"),
                    format!("rate_limits.policies.{first}.store"),
                    "\"redis\" needs a [redis] table with url or url_env",
                ),
            );
        }
        return None;
    };
    let r = spanned.get_ref();
    let url = match (&r.url, &r.url_env) {
        (Some(u), None) => Some((u.get_ref().clone(), u, "redis.url")),
        (None, Some(var)) => match std::env::var(var.get_ref()) {
            Ok(u) if !u.trim().is_empty() => Some((u, var, "redis.url_env")),
            _ => {
                errors.push(file.error(
                    var,
                    "redis.url_env",
                    format!(
                        "environment variable {} is not set (or empty); set it to the Redis URL",
                        var.get_ref()
                    ),
                ));
                None
            }
        },
        (Some(u), Some(_)) => {
            errors.push(file.error(u, "redis.url", "give url or url_env, not both"));
            None
        }
        (None, None) => {
            if !users.is_empty() {
                errors.push(file.error(
                    spanned,
                    "redis.url",
                    format!(
                        "missing: the Redis URL (or url_env, a variable holding it) is needed by {}",
                        users
                            .iter()
                            .map(|u| format!("rate_limits.policies.{u}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            None
        }
    };
    let pool_size = match &r.pool_size {
        Some(p) if !(1..=redis_store::MAX_POOL_SIZE).contains(p.get_ref()) => {
            errors.push(file.error(
                p,
                "redis.pool_size",
                format!("must be 1..={}", redis_store::MAX_POOL_SIZE),
            ));
            redis_store::DEFAULT_POOL_SIZE
        }
        Some(p) => *p.get_ref(),
        None => redis_store::DEFAULT_POOL_SIZE,
    };
    let timeout = file.duration(
        &r.timeout,
        "redis.timeout",
        redis_store::DEFAULT_TIMEOUT,
        errors,
    );
    if let Some(t) = &r.timeout {
        if timeout > Duration::from_secs(10) {
            errors.push(file.error(
                t,
                "redis.timeout",
                "must be at most 10s (every shared decision may wait this long)",
            ));
        }
    }
    let key_prefix = r.key_prefix.as_ref().map_or_else(
        || redis_store::DEFAULT_KEY_PREFIX.to_owned(),
        |p| p.get_ref().clone(),
    );
    let (url, at, field) = url?;
    if users.is_empty() {
        // Nothing to share: no connections either.
        return None;
    }
    let settings = redis_store::RedisSettings {
        url,
        pool_size,
        timeout,
        fail_closed: r.fail_closed,
        key_prefix,
    };
    if let Some(p) = previous.filter(|p| p.settings == settings) {
        return Some(p.clone());
    }
    match RedisStore::new(settings) {
        Ok(store) => Some(store),
        Err(e) => {
            errors.push(file.error(at, field, e));
            None
        }
    }
}

/// One `[rate_limits.policies.NAME]`. A bad value is reported and replaced
/// by a usable one, so the rest of the config is still checked against a
/// policy of that name.
fn policy_def(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<RateLimitPolicyConfig>,
    max_keys: usize,
    errors: &mut Vec<ConfigError>,
) -> PolicyDef {
    let p = spanned.get_ref();
    let at = |f: &str| format!("rate_limits.policies.{name}.{f}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        errors.push(file.error(
            spanned,
            format!("rate_limits.policies.{name}"),
            "policy names may use letters, digits, '-' and '_' (they appear in the RateLimit-Policy header)",
        ));
    }
    let key = KeyKind::parse(p.key.get_ref())
        .map_err(|e| errors.push(file.error(&p.key, at("key"), e)))
        .unwrap_or(KeyKind::Ip);
    let rate = *p.rate.get_ref();
    if rate == 0 {
        errors.push(file.error(&p.rate, at("rate"), "must be at least 1"));
    }
    let per = file.duration(&p.per, &at("per"), Duration::from_secs(1), errors);
    let burst = match &p.burst {
        Some(b) if *b.get_ref() == 0 => {
            errors.push(file.error(b, at("burst"), "must be at least 1"));
            1
        }
        Some(b) => *b.get_ref(),
        None => rate.max(1),
    };
    let per_route = match p.scope.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "global")) => false,
        Some((_, "route")) => true,
        Some((s, other)) => {
            errors.push(file.error(
                s,
                at("scope"),
                format!("\"{other}\" is not a scope; use \"global\" or \"route\""),
            ));
            false
        }
    };
    let shared = match p.store.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "local")) => false,
        Some((_, "redis")) => true,
        Some((s, other)) => {
            errors.push(file.error(
                s,
                at("store"),
                format!("\"{other}\" is not a store; use \"local\" or \"redis\""),
            ));
            false
        }
    };
    PolicyDef {
        name: name.to_owned(),
        key,
        rate: rate.max(1),
        per,
        burst,
        per_route,
        max_keys,
        shared,
    }
}

/// `rate_limits.trusted_proxies` and `client_ip_header`: whose forwarding
/// header is believed when finding the client address rate limits count by.
fn build_client_ip(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> ClientIpPolicy {
    let rl = &file.config.rate_limits;
    let mut trusted = Vec::new();
    for t in &rl.trusted_proxies {
        match Cidr::parse(t.get_ref()) {
            Ok(c) => trusted.push(c),
            Err(e) => errors.push(file.error(t, "rate_limits.trusted_proxies", e)),
        }
    }
    let header = match rl.client_ip_header.as_ref() {
        None => ForwardedHeader::XForwardedFor,
        Some(h) => match h.get_ref().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                errors.push(file.error(
                    h,
                    "rate_limits.client_ip_header",
                    format!(
                        "\"{other}\" is not supported; use \"x-forwarded-for\" or \"forwarded\""
                    ),
                ));
                ForwardedHeader::XForwardedFor
            }
        },
    };
    ClientIpPolicy { trusted, header }
}

fn unknown_policy(
    file: &LoadedFile,
    at: &Spanned<String>,
    field: &str,
    rl: &RateLimits,
) -> ConfigError {
    let known: Vec<&str> = rl.policies.iter().map(|p| p.def.name.as_str()).collect();
    file.error(
        at,
        field,
        format!(
            "rate-limit policy \"{}\" is not defined (defined: {}); add [rate_limits.policies.{}]",
            at.get_ref(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
            at.get_ref()
        ),
    )
}

/// A count that must be at least 1; the default when it is left out or 0.
fn positive<T: Copy + Default + PartialEq>(
    file: &LoadedFile,
    v: &Option<Spanned<T>>,
    field: &str,
    default: T,
    errors: &mut Vec<ConfigError>,
) -> T {
    match v {
        Some(s) if *s.get_ref() == T::default() => {
            errors.push(file.error(s, field, "must be at least 1"));
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    }
}

/// `limits.max_json_depth`: 1 to 120, since the JSON parser gives up at
/// 128 levels on its own and a deeper limit would never be reached.
fn json_depth(
    file: &LoadedFile,
    v: &Option<Spanned<usize>>,
    default: usize,
    errors: &mut Vec<ConfigError>,
) -> usize {
    let depth = positive(file, v, "limits.max_json_depth", default, errors);
    if let Some(s) = v {
        if *s.get_ref() > 120 {
            errors.push(file.error(
                s,
                "limits.max_json_depth",
                "at most 120 (the JSON parser stops at 128 levels anyway)",
            ));
        }
    }
    depth
}

/// `[limits]`: the bounds on what one connection and one request may hold
/// (sizes, counts, timeouts), each defaulting to [`Limits::default`].
fn build_limits(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> Limits {
    let l = &file.config.limits;
    let d = Limits::default();
    // Every key here lives under `limits.`.
    let count = |v: &Option<Spanned<usize>>, key: &str, default, errors: &mut Vec<ConfigError>| {
        positive(file, v, &format!("limits.{key}"), default, errors)
    };
    let wait = |v: &Option<Spanned<String>>, key: &str, default, errors: &mut Vec<ConfigError>| {
        file.duration(v, &format!("limits.{key}"), default, errors)
    };
    let max_json_depth = json_depth(file, &l.max_json_depth, d.max_json_depth, errors);
    let max_concurrent_streams = positive(
        file,
        &l.max_concurrent_streams,
        "limits.max_concurrent_streams",
        d.max_concurrent_streams,
        errors,
    );
    Limits {
        max_url_bytes: count(&l.max_url_bytes, "max_url_bytes", d.max_url_bytes, errors),
        max_headers: count(&l.max_headers, "max_headers", d.max_headers, errors),
        max_header_bytes: count(
            &l.max_header_bytes,
            "max_header_bytes",
            d.max_header_bytes,
            errors,
        ),
        max_json_depth,
        max_body_bytes: file.config.server.max_body_bytes,
        request_timeout: wait(
            &l.request_timeout,
            "request_timeout",
            limits::DEFAULT_REQUEST_TIMEOUT,
            errors,
        ),
        header_read_timeout: wait(
            &l.header_read_timeout,
            "header_read_timeout",
            limits::DEFAULT_HEADER_READ_TIMEOUT,
            errors,
        ),
        idle_timeout: wait(
            &l.idle_timeout,
            "idle_timeout",
            limits::DEFAULT_IDLE_TIMEOUT,
            errors,
        ),
        max_connections: count(
            &l.max_connections,
            "max_connections",
            d.max_connections,
            errors,
        ),
        max_concurrent_streams,
        max_multipart_preamble_bytes: count(
            &l.max_multipart_preamble_bytes,
            "max_multipart_preamble_bytes",
            d.max_multipart_preamble_bytes,
            errors,
        ),
        max_multipart_part_header_bytes: count(
            &l.max_multipart_part_header_bytes,
            "max_multipart_part_header_bytes",
            d.max_multipart_part_header_bytes,
            errors,
        ),
        min_body_rate: l
            .min_body_rate
            .as_ref()
            .map_or(d.min_body_rate, |r| *r.get_ref()),
    }
}

/// `[auth]`: the default mode, where a token may come from besides the
/// `Authorization` header, the token bounds and forwarded claims, and the
/// issuers. `previous` lends its JWKS caches to unchanged issuers, so a
/// reload does not refetch every key set.
fn build_auth(file: &LoadedFile, previous: Option<&Auth>, errors: &mut Vec<ConfigError>) -> Auth {
    let a = &file.config.auth;
    let default_mode = match &a.default {
        Some(d) => AuthMode::parse(d.get_ref())
            .map_err(|e| errors.push(file.error(d, "auth.default", e)))
            .unwrap_or_default(),
        None => AuthMode::None,
    };
    let credentials = match &a.credentials {
        Some(list) => jwt::Credentials::parse(list.iter().map(|c| c.get_ref().as_str()))
            .map_err(|e| {
                errors.push(file.error(
                    list.first().expect("parse refuses an empty list"),
                    "auth.credentials",
                    e,
                ))
            })
            .unwrap_or_default(),
        None => jwt::Credentials::default(),
    };
    let has_client_ca = client_ca_configured(file);
    if credentials.client_cert && !has_client_ca {
        if let Some(list) = &a.credentials {
            errors.push(file.error(
                list.first().expect("parse refuses an empty list"),
                "auth.credentials",
                NO_CLIENT_CA,
            ));
        }
    }
    let forward_client_cert = client_cert_parts(
        file,
        &a.forward_client_cert,
        "auth.forward_client_cert",
        errors,
    );
    if !forward_client_cert.is_empty() && !has_client_ca {
        if let Some(list) = &a.forward_client_cert {
            errors.push(file.error(
                list.first().expect("a part was parsed"),
                "auth.forward_client_cert",
                NO_CLIENT_CA,
            ));
        }
    }
    if default_mode != AuthMode::None
        && a.issuers.is_empty()
        && !credentials.api_key
        && !credentials.client_cert
    {
        if let Some(d) = &a.default {
            errors.push(file.error(
                d,
                "auth.default",
                "no [auth.issuers.NAME] is defined, so no token could pass",
            ));
        }
    }
    let cookie = token_name(file, &a.cookie, "auth.cookie", errors);
    let query_param = token_name(file, &a.query_param, "auth.query_param", errors);
    let max_token_bytes = match &a.max_token_bytes {
        Some(m) if *m.get_ref() < 64 => {
            errors.push(file.error(m, "auth.max_token_bytes", "must be at least 64"));
            jwt::DEFAULT_MAX_TOKEN_BYTES
        }
        Some(m) => *m.get_ref(),
        None => jwt::DEFAULT_MAX_TOKEN_BYTES,
    };
    let leeway = file.duration_min(&a.leeway, "auth.leeway", jwt::DEFAULT_LEEWAY, true, errors);
    let forward_claims = match &a.forward_claims {
        Some(list) => claim_names(file, list, "auth.forward_claims", errors),
        // The consumer too: an API key's consumer reached backends before
        // it was on this list, and a default list keeps it so.
        None => vec!["sub".to_owned(), consumers::FORWARD_CONSUMER.to_owned()],
    };
    Auth {
        issuers: build_issuers(file, leeway, previous, errors),
        default_mode,
        credentials,
        cookie,
        query_param,
        max_token_bytes,
        forward_claims,
        forward_token: a.forward_token,
        forward_client_cert,
        token_cache: token_cache(file, errors),
    }
}

/// `[auth] token_cache`: a new, empty cache of the configured bounds (on
/// by default; `max_entries = 0` turns it off).
fn token_cache(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> TokenCache {
    let Some(c) = &file.config.auth.token_cache else {
        return TokenCache::new(
            token_cache::DEFAULT_MAX_ENTRIES,
            token_cache::DEFAULT_MAX_LIFETIME,
        );
    };
    let c = c.get_ref();
    let max_entries = c
        .max_entries
        .as_ref()
        .map_or(token_cache::DEFAULT_MAX_ENTRIES, |m| *m.get_ref());
    let max_lifetime = file.duration_min(
        &c.max_lifetime,
        "auth.token_cache.max_lifetime",
        token_cache::DEFAULT_MAX_LIFETIME,
        false,
        errors,
    );
    TokenCache::new(max_entries, max_lifetime)
}

/// Why a route cannot use client certificates without a client CA.
const NO_CLIENT_CA: &str = "client certificates need [server.tls] client_ca: without it the listener asks no client for one";

/// Whether `[server.tls] client_ca` is set (whether it loads is
/// `edge::tls`'s to say).
fn client_ca_configured(file: &LoadedFile) -> bool {
    file.config
        .server
        .tls
        .as_ref()
        .is_some_and(|t| t.get_ref().client_ca.is_some())
}

/// A `forward_client_cert` list, each part known, without repeats.
fn client_cert_parts(
    file: &LoadedFile,
    list: &Option<Vec<Spanned<String>>>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<client_cert::Part> {
    let mut out = Vec::new();
    for p in list.iter().flatten() {
        match client_cert::Part::parse(p.get_ref()) {
            Ok(part) if !out.contains(&part) => out.push(part),
            Ok(_) => {}
            Err(e) => errors.push(file.error(p, field, e)),
        }
    }
    out
}

/// The name of the cookie or query parameter a token may come in: it must
/// be a plain token, since it is matched byte for byte.
pub(super) fn token_name(
    file: &LoadedFile,
    v: &Option<Spanned<String>>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    v.as_ref().and_then(|s| {
        let name = s.get_ref().trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            errors.push(file.error(
                s,
                field,
                format!("\"{name}\" is not a usable name (letters, digits, '-', '_', '.')"),
            ));
            None
        } else {
            Some(name.to_owned())
        }
    })
}

/// Every `[auth.issuers.NAME]` that compiles; two issuers may not share an
/// `iss`, since a token's `iss` picks the one that checks it.
fn build_issuers(
    file: &LoadedFile,
    leeway: Duration,
    previous: Option<&Auth>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Issuer>> {
    let mut issuers: Vec<Arc<Issuer>> = Vec::new();
    for (name, spanned) in &file.config.auth.issuers {
        let table = Table {
            file,
            key: format!("auth.issuers.{name}"),
            spanned,
        };
        if let Some(i) = table.build(name, leeway, previous, errors) {
            if let Some(other) = issuers.iter().find(|o| o.iss == i.iss) {
                errors.push(file.error(
                    &spanned.get_ref().issuer,
                    format!("auth.issuers.{name}.issuer"),
                    format!("issuer \"{}\" is also declared as auth.issuers.{}; a token's iss must pick one", i.iss, other.name),
                ));
            }
            issuers.push(Arc::new(i));
        }
    }
    issuers
}

fn claim_names(
    file: &LoadedFile,
    list: &[Spanned<String>],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let mut out = Vec::new();
    for c in list {
        let name = c.get_ref().trim();
        if name.is_empty() {
            errors.push(file.error(c, field, "a claim name cannot be empty"));
        } else if !out.iter().any(|o: &String| o == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// A table of routes.toml being compiled (an issuer, a route): its values
/// and the key path its problems are reported under.
struct Table<'a, T> {
    file: &'a LoadedFile,
    /// `auth.issuers.NAME`, `routes[3]`.
    key: String,
    spanned: &'a Spanned<T>,
}

impl<T> Table<'_, T> {
    fn get(&self) -> &T {
        self.spanned.get_ref()
    }

    /// The key path of one of the table's fields.
    fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.key)
    }

    /// An error at a value of this table.
    fn error<V>(&self, at: &Spanned<V>, field: &str, msg: impl Into<String>) -> ConfigError {
        self.file.error(at, self.at(field), msg)
    }
}

/// One `[auth.issuers.NAME]`.
impl Table<'_, IssuerConfig> {
    /// The issuer, or `None` when any of its fields is wrong (each reported):
    /// its algorithms, its keys (a shared secret, PEM files or a JWKS, never
    /// both kinds) and its leeway.
    fn build(
        &self,
        name: &str,
        default_leeway: Duration,
        previous: Option<&Auth>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Issuer> {
        let c = self.get();
        let before = errors.len();
        if c.issuer.get_ref().is_empty() {
            errors.push(self.error(&c.issuer, "issuer", "the iss value cannot be empty"));
        }
        let algorithms = self.algorithms(errors);
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let public = algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);
        if hmac && public {
            errors.push(self.error(
                self.spanned,
                "algorithms",
                "an issuer signs either with a shared secret (HS*) or with public keys, not both: a token's alg would choose how it is checked (algorithm confusion)",
            ));
        }
        let mut static_keys: Vec<VerifyKey> = self.hmac_key(hmac, errors).into_iter().collect();
        static_keys.extend(self.pem_keys(public, errors));
        self.check_pem_families(&static_keys, &algorithms, errors);
        let leeway =
            self.file
                .duration_min(&c.leeway, &self.at("leeway"), default_leeway, true, errors);
        let jwks = self.jwks(public, before, previous, errors);
        if public && jwks.is_none() && c.pem_files.is_empty() && c.jwks_url.is_none() {
            errors.push(self.file.error(
                self.spanned,
                self.key.clone(),
                "no keys: set jwks_url or pem_files",
            ));
        }
        if errors.len() != before {
            return None;
        }
        Some(Issuer::new(
            name.to_owned(),
            c.issuer.get_ref().clone(),
            algorithms,
            c.audiences.iter().map(|a| a.get_ref().clone()).collect(),
            leeway.as_secs(),
            static_keys,
            jwks,
        ))
    }

    /// `algorithms`, without repeats; `none` is not an algorithm here, so a
    /// token can never opt out of its signature.
    fn algorithms(&self, errors: &mut Vec<ConfigError>) -> Vec<Algorithm> {
        let c = self.get();
        let mut algorithms = Vec::new();
        for a in &c.algorithms {
            match a.get_ref().trim().parse::<Algorithm>() {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => errors.push(self.error(
                    a,
                    "algorithms",
                    format!("\"{}\" is not an algorithm; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512 (\"none\" is never accepted)", a.get_ref()),
                )),
            }
        }
        if c.algorithms.is_empty() {
            errors.push(self.error(
                self.spanned,
                "algorithms",
                "list the algorithms this issuer signs with, e.g. [\"RS256\"]",
            ));
        }
        algorithms
    }

    /// The shared secret of an HS* issuer, read from `hmac_secret_env` (never
    /// from the file, which is often committed) and at least 32 bytes long.
    fn hmac_key(&self, hmac: bool, errors: &mut Vec<ConfigError>) -> Option<VerifyKey> {
        let Some(env) = &self.get().hmac_secret_env else {
            if hmac {
                errors.push(self.error(
                    self.spanned,
                    "hmac_secret_env",
                    "HS* algorithms need hmac_secret_env",
                ));
            }
            return None;
        };
        if !hmac {
            errors.push(self.error(
                env,
                "hmac_secret_env",
                "an HMAC secret needs an HS256, HS384 or HS512 algorithm",
            ));
        }
        match std::env::var(env.get_ref()) {
            Ok(secret) if secret.len() >= 32 => Some(VerifyKey {
                kid: None,
                family: AlgorithmFamily::Hmac,
                algorithms: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                origin: format!("env {}", env.get_ref()),
            }),
            Ok(secret) => {
                errors.push(self.error(
                    env,
                    "hmac_secret_env",
                    format!("the secret in {} is {} bytes; HMAC secrets must be at least 32 bytes (RFC 7518 3.2)", env.get_ref(), secret.len()),
                ));
                None
            }
            Err(_) => {
                errors.push(self.error(
                    env,
                    "hmac_secret_env",
                    format!("environment variable {} is not set", env.get_ref()),
                ));
                None
            }
        }
    }

    /// The public keys in `pem_files`, each read now (relative to the config
    /// file) so a missing or wrong file refuses the config.
    fn pem_keys(&self, public: bool, errors: &mut Vec<ConfigError>) -> Vec<VerifyKey> {
        let mut keys = Vec::new();
        for p in &self.get().pem_files {
            if !public {
                errors.push(self.error(
                    p,
                    "pem_files",
                    "public keys need an RS*, PS*, ES* or EdDSA algorithm",
                ));
            }
            let path = self.file.relative(p.get_ref());
            match std::fs::read(&path) {
                Ok(bytes) => match pem_key(&bytes) {
                    Some((family, key)) => keys.push(VerifyKey {
                        kid: None,
                        family,
                        algorithms: None,
                        key,
                        origin: path.display().to_string(),
                    }),
                    None => errors.push(self.error(
                        p,
                        "pem_files",
                        format!("{} holds no RSA, EC or Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\")", path.display()),
                    )),
                },
                Err(e) => errors.push(self.error(p, "pem_files", format!("cannot read {}: {e}", path.display()))),
            }
        }
        keys
    }

    /// Every public key must fit one of the listed algorithms, or it could
    /// never verify a token.
    fn check_pem_families(
        &self,
        keys: &[VerifyKey],
        algorithms: &[Algorithm],
        errors: &mut Vec<ConfigError>,
    ) {
        if keys.iter().any(|k| k.family != AlgorithmFamily::Hmac)
            && !keys
                .iter()
                .all(|k| algorithms.iter().any(|a| a.family() == k.family))
        {
            errors.push(self.error(
                self.spanned,
                "pem_files",
                "a key in pem_files fits none of the listed algorithms",
            ));
        }
    }

    /// The JWKS behind `jwks_url`, or `None` without one (its refresh
    /// settings are then reported as misplaced). It is only created when the
    /// issuer has no other problem (`before`: the error count when this
    /// issuer started), and reuses the previous snapshot's cache of the same
    /// source.
    fn jwks(
        &self,
        public: bool,
        before: usize,
        previous: Option<&Auth>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<Jwks>> {
        let c = self.get();
        let Some(url) = &c.jwks_url else {
            for (v, f) in [
                (&c.jwks_min_refresh, "jwks_min_refresh"),
                (&c.jwks_max_refresh, "jwks_max_refresh"),
                (&c.jwks_refetch_interval, "jwks_refetch_interval"),
                (&c.jwks_timeout, "jwks_timeout"),
            ] {
                if let Some(v) = v {
                    errors.push(self.error(v, f, "only applies with jwks_url"));
                }
            }
            return None;
        };
        if !public {
            errors.push(self.error(
                url,
                "jwks_url",
                "a JWKS holds public keys; list an RS*, PS*, ES* or EdDSA algorithm",
            ));
        }
        let u = url.get_ref();
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            errors.push(self.error(url, "jwks_url", format!("\"{u}\" is not an http(s) URL")));
        }
        let source = self.jwks_source(u, errors);
        if errors.len() != before {
            return None;
        }
        let old = previous
            .into_iter()
            .flat_map(|p| p.issuers.iter())
            .filter_map(|i| i.jwks.as_ref())
            .find(|j| j.source == source);
        Jwks::new(source, old)
            .map_err(|e| errors.push(self.error(url, "jwks_url", e)))
            .ok()
    }

    /// Where and how often the JWKS is fetched.
    fn jwks_source(&self, url: &str, errors: &mut Vec<ConfigError>) -> JwksSource {
        let c = self.get();
        let wait =
            |v: &Option<Spanned<String>>, f: &str, default, errors: &mut Vec<ConfigError>| {
                self.file.duration(v, &self.at(f), default, errors)
            };
        let source = JwksSource {
            url: url.to_owned(),
            min_refresh: wait(
                &c.jwks_min_refresh,
                "jwks_min_refresh",
                jwks::DEFAULT_MIN_REFRESH,
                errors,
            ),
            max_refresh: wait(
                &c.jwks_max_refresh,
                "jwks_max_refresh",
                jwks::DEFAULT_MAX_REFRESH,
                errors,
            ),
            refetch_interval: wait(
                &c.jwks_refetch_interval,
                "jwks_refetch_interval",
                jwks::DEFAULT_REFETCH_INTERVAL,
                errors,
            ),
            timeout: wait(
                &c.jwks_timeout,
                "jwks_timeout",
                jwks::DEFAULT_TIMEOUT,
                errors,
            ),
        };
        if source.min_refresh > source.max_refresh {
            errors.push(self.error(
                self.spanned,
                "jwks_min_refresh",
                "is longer than jwks_max_refresh",
            ));
        }
        source
    }
}

/// The key in a PEM file, whichever family it is.
fn pem_key(bytes: &[u8]) -> Option<(AlgorithmFamily, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        return Some((AlgorithmFamily::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        return Some((AlgorithmFamily::Ec, k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        return Some((AlgorithmFamily::Ed, k));
    }
    None
}

/// A CORS policy from `[cors]`, or a route's `cors` over `[cors]`.
fn cors_policy(
    file: &LoadedFile,
    own: &Spanned<CorsConfig>,
    base: Option<&CorsConfig>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<CorsPolicy> {
    let c = own.get_ref();
    if c.enabled == Some(false) {
        return None;
    }
    let pick = |f: fn(&CorsConfig) -> &Option<Vec<Spanned<String>>>| {
        f(c).as_ref().or_else(|| base.and_then(|b| f(b).as_ref()))
    };
    let mut origins = Vec::new();
    for o in pick(|c| &c.allowed_origins)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match OriginRule::parse(o.get_ref()) {
            Ok(r) => origins.push(r),
            Err(e) => errors.push(file.error(o, format!("{field}.allowed_origins"), e)),
        }
    }
    let methods = pick(|c| &c.allowed_methods).map(|list| cors_methods(file, list, field, errors));
    let allowed_headers = cors_header_names(
        file,
        pick(|c| &c.allowed_headers),
        cors::DEFAULT_ALLOWED_HEADERS,
        &format!("{field}.allowed_headers"),
        errors,
    );
    let exposed_headers = cors_header_names(
        file,
        pick(|c| &c.exposed_headers),
        cors::DEFAULT_EXPOSED_HEADERS,
        &format!("{field}.exposed_headers"),
        errors,
    );
    let credentials = c
        .allow_credentials
        .or_else(|| base.and_then(|b| b.allow_credentials))
        .unwrap_or(false);
    let max_age_cfg = c
        .max_age
        .clone()
        .or_else(|| base.and_then(|b| b.max_age.clone()));
    let max_age = file.duration_min(
        &max_age_cfg,
        &format!("{field}.max_age"),
        cors::DEFAULT_MAX_AGE,
        true,
        errors,
    );
    // tower-http panics on some combinations; CorsPolicy::new refuses them.
    CorsPolicy::new(
        origins,
        methods,
        allowed_headers,
        exposed_headers,
        credentials,
        max_age,
    )
    .map_err(|e| errors.push(file.error(own, field, e)))
    .ok()
}

/// `allowed_methods`, upper-cased: browsers send the method as written, and
/// methods are case-sensitive.
fn cors_methods(
    file: &LoadedFile,
    list: &[Spanned<String>],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Method> {
    list.iter()
        .filter_map(|m| {
            let upper = m.get_ref().trim().to_ascii_uppercase();
            Method::from_bytes(upper.as_bytes())
                .map_err(|_| {
                    errors.push(file.error(
                        m,
                        format!("{field}.allowed_methods"),
                        format!("\"{}\" is not an HTTP method", m.get_ref()),
                    ))
                })
                .ok()
        })
        .collect()
}

/// `allowed_headers` or `exposed_headers`, lower-cased (`*` passes as is);
/// `default` when the key is left out.
fn cors_header_names(
    file: &LoadedFile,
    list: Option<&Vec<Spanned<String>>>,
    default: &[&str],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let Some(list) = list else {
        return default.iter().map(|s| (*s).to_owned()).collect();
    };
    list.iter()
        .filter_map(|h| {
            let name = h.get_ref().trim().to_ascii_lowercase();
            if name == "*" || HeaderName::from_bytes(name.as_bytes()).is_ok() {
                Some(name)
            } else {
                errors.push(file.error(
                    h,
                    field,
                    format!("\"{}\" is not a header name", h.get_ref()),
                ));
                None
            }
        })
        .collect()
}

impl Edge {
    /// A route's edge policy from its fields in routes.toml.
    pub fn route(
        &self,
        file: &LoadedFile,
        i: usize,
        spanned: &Spanned<RouteConfig>,
        method: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> RouteEdge {
        let route = Table {
            file,
            key: format!("routes[{i}]"),
            spanned,
        };
        let auth = self.route_auth(&route, errors);
        let api_keys = self.route_keys(&route, &auth, errors);
        let auth = if auth == *self.route_auth {
            self.route_auth.clone()
        } else {
            Arc::new(auth)
        };
        let cors = match &route.get().cors {
            Some(own) => cors_policy(
                file,
                own,
                file.config.cors.as_ref().map(|c| c.get_ref()),
                &route.at("cors"),
                errors,
            )
            .map(Arc::new),
            None => self.cors.clone(),
        };
        RouteEdge {
            auth,
            api_keys,
            cors,
            rate_limits: self.route_rate_limits(&route, errors),
            route_key: route_key(method, path),
        }
    }

    /// The edge policy of a route from a google.api.http annotation: the defaults.
    /// The edge policy of a route a backend exposes to gRPC-Web and Connect
    /// clients: an annotation route's, with `[cors]` widened to the headers
    /// those protocols send and read.
    pub fn rpc_route(&self, file: &LoadedFile, method: &str, path: &str) -> RouteEdge {
        let mut edge = self.annotation_route(file, method, path);
        edge.cors = edge
            .cors
            .and_then(|c| c.for_rpc().ok().map(std::sync::Arc::new));
        edge
    }

    pub fn annotation_route(&self, file: &LoadedFile, method: &str, path: &str) -> RouteEdge {
        RouteEdge {
            auth: self.route_auth.clone(),
            api_keys: RouteKeys {
                source: self.consumers.source.clone(),
                forward_consumer: forwards_consumer(&self.auth.forward_claims),
            },
            cors: self.cors.clone(),
            rate_limits: file
                .config
                .rate_limits
                .default
                .iter()
                .filter_map(|n| self.rate_limits.get(n.get_ref()).cloned())
                .collect(),
            route_key: route_key(method, path),
        }
    }

    /// A route's `auth`, `issuers`, `scopes`, `claims` and `forward_claims`
    /// over `[auth]`: who may call it and which claims travel on.
    fn route_auth(
        &self,
        route: &Table<'_, RouteConfig>,
        errors: &mut Vec<ConfigError>,
    ) -> RouteAuth {
        let r = route.get();
        let credentials = match &r.credentials {
            Some(list) => {
                let parsed = jwt::Credentials::parse(list.iter().map(|c| c.get_ref().as_str()));
                match (parsed, list.first()) {
                    (Ok(c), _) => c,
                    (Err(e), Some(first)) => {
                        errors.push(route.error(first, "credentials", e));
                        self.auth.credentials
                    }
                    (Err(e), None) => {
                        errors.push(route.file.error(route.spanned, route.at("credentials"), e));
                        self.auth.credentials
                    }
                }
            }
            None => self.auth.credentials,
        };
        let mode = self.route_auth_mode(route, credentials, errors);
        if mode != AuthMode::None && credentials.api_key && self.consumers.is_empty() {
            errors.push(route.file.error(
                route.spanned,
                route.at("credentials"),
                "api_key needs consumers: no [consumers.NAME] is defined, so no key could pass",
            ));
        }
        let issuers = r
            .issuers
            .as_ref()
            .map(|list| self.route_issuers(route, list, errors));
        let needs_token = !r.scopes.is_empty() || !r.claims.is_empty();
        if needs_token && mode == AuthMode::None {
            errors.push(route.file.error(
                route.spanned,
                route.at("auth"),
                "scopes and claims need auth = \"required\" (or \"optional\")",
            ));
        }
        let claims = route_claims(route, errors);
        let forward_claims = match &r.forward_claims {
            Some(list) => claim_headers(&claim_names(
                route.file,
                list,
                &route.at("forward_claims"),
                errors,
            )),
            None => self.route_auth.forward_claims.clone(),
        };
        RouteAuth {
            mode,
            credentials,
            issuers,
            scopes: r.scopes.iter().map(|s| s.get_ref().clone()).collect(),
            claims,
            forward_claims,
            client_cert: self.route_client_cert(route, credentials, errors),
        }
    }

    /// The route's `api_keys` over `[api_keys]`, and whether its
    /// `forward_claims` (or `[auth]`'s) passes the consumer on. Where keys
    /// are read matters only to a route that takes them.
    fn route_keys(
        &self,
        route: &Table<'_, RouteConfig>,
        auth: &RouteAuth,
        errors: &mut Vec<ConfigError>,
    ) -> RouteKeys {
        let r = route.get();
        let source = match &r.api_keys {
            Some(own) => {
                if auth.mode == AuthMode::None || !auth.credentials.api_key {
                    errors.push(route.error(
                        own,
                        "api_keys",
                        "where keys are read matters only where they are taken: add \"api_key\" to credentials (and auth = \"required\" or \"optional\")",
                    ));
                }
                self.consumers
                    .route_source(route.file, own, &route.at("api_keys"), errors)
            }
            None => self.consumers.source.clone(),
        };
        let forward_consumer = match &r.forward_claims {
            Some(list) => list
                .iter()
                .any(|c| c.get_ref().trim() == consumers::FORWARD_CONSUMER),
            None => forwards_consumer(&self.auth.forward_claims),
        };
        RouteKeys {
            source,
            forward_consumer,
        }
    }

    /// The route's `client_cert`, `client_cert_allow` and
    /// `forward_client_cert`; each needs `[server.tls] client_ca`.
    fn route_client_cert(
        &self,
        route: &Table<'_, RouteConfig>,
        credentials: jwt::Credentials,
        errors: &mut Vec<ConfigError>,
    ) -> ClientCertPolicy {
        let r = route.get();
        let has_client_ca = client_ca_configured(route.file);
        let required = match &r.client_cert {
            Some(m) => match m.get_ref().trim() {
                "required" => true,
                "none" => false,
                other => {
                    errors.push(route.error(
                        m,
                        "client_cert",
                        format!("\"{other}\" is not a client certificate policy; use \"required\" or \"none\""),
                    ));
                    false
                }
            },
            None => false,
        };
        if required && !has_client_ca {
            if let Some(m) = &r.client_cert {
                errors.push(route.error(m, "client_cert", NO_CLIENT_CA));
            }
        }
        if credentials.client_cert && !has_client_ca {
            if let Some(first) = r.credentials.as_ref().and_then(|l| l.first()) {
                errors.push(route.error(first, "credentials", NO_CLIENT_CA));
            }
        }
        let mut allow = Vec::new();
        for entry in r.client_cert_allow.iter().flatten() {
            match client_cert::Pattern::parse(entry.get_ref()) {
                Ok(p) => allow.push(p),
                Err(e) => errors.push(route.error(entry, "client_cert_allow", e)),
            }
        }
        if let Some(first) = r.client_cert_allow.as_ref().and_then(|l| l.first()) {
            if !has_client_ca {
                errors.push(route.error(first, "client_cert_allow", NO_CLIENT_CA));
            } else if !required && !credentials.client_cert {
                errors.push(route.error(
                    first,
                    "client_cert_allow",
                    "the allow-list applies to a certificate the route uses: add client_cert = \"required\" or credentials = [\"client_cert\", ...]",
                ));
            }
        }
        let forward = match &r.forward_client_cert {
            Some(_) => client_cert_parts(
                route.file,
                &r.forward_client_cert,
                &route.at("forward_client_cert"),
                errors,
            ),
            None => self.auth.forward_client_cert.clone(),
        };
        if !forward.is_empty() && !has_client_ca {
            if let Some(first) = r.forward_client_cert.as_ref().and_then(|l| l.first()) {
                errors.push(route.error(first, "forward_client_cert", NO_CLIENT_CA));
            }
        }
        ClientCertPolicy {
            required,
            allow,
            forward,
        }
    }

    /// The route's `auth`, or `auth.default`; a token cannot be asked for
    /// when no issuer could accept one.
    fn route_auth_mode(
        &self,
        route: &Table<'_, RouteConfig>,
        credentials: jwt::Credentials,
        errors: &mut Vec<ConfigError>,
    ) -> AuthMode {
        let Some(m) = &route.get().auth else {
            return self.auth.default_mode;
        };
        let mode = AuthMode::parse(m.get_ref())
            .map_err(|e| errors.push(route.error(m, "auth", e)))
            .unwrap_or(self.auth.default_mode);
        if mode != AuthMode::None
            && self.auth.issuers.is_empty()
            && !credentials.api_key
            && !credentials.client_cert
        {
            errors.push(route.error(
                m,
                "auth",
                "no [auth.issuers.NAME] is defined, so no token could pass",
            ));
        }
        mode
    }

    /// The route's `issuers`, as indexes into [`Auth::issuers`]; each must
    /// name a defined issuer.
    fn route_issuers(
        &self,
        route: &Table<'_, RouteConfig>,
        list: &[Spanned<String>],
        errors: &mut Vec<ConfigError>,
    ) -> Vec<usize> {
        let issuers = &self.auth.issuers;
        list.iter()
            .filter_map(|n| {
                let found = issuers.iter().position(|i| i.name == *n.get_ref());
                if found.is_none() {
                    errors.push(route.error(
                        n,
                        "issuers",
                        format!(
                            "issuer \"{}\" is not defined (defined: {})",
                            n.get_ref(),
                            issuers
                                .iter()
                                .map(|i| i.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                found
            })
            .collect()
    }

    /// The route's `rate_limit` policies, or `rate_limits.default`, each
    /// once. An unknown default is reported once under `rate_limits.default`,
    /// not again for every route.
    fn route_rate_limits(
        &self,
        route: &Table<'_, RouteConfig>,
        errors: &mut Vec<ConfigError>,
    ) -> Box<[Arc<ratelimit::Policy>]> {
        let r = route.get();
        let names: Vec<&Spanned<String>> = match &r.rate_limit {
            Some(list) => list.iter().collect(),
            None => route.file.config.rate_limits.default.iter().collect(),
        };
        let mut rate_limits: Vec<Arc<ratelimit::Policy>> = Vec::new();
        for n in names {
            match self.rate_limits.get(n.get_ref()) {
                Some(p) if !rate_limits.iter().any(|q| Arc::ptr_eq(q, p)) => {
                    rate_limits.push(p.clone())
                }
                Some(_) => {}
                None if r.rate_limit.is_some() => errors.push(unknown_policy(
                    route.file,
                    n,
                    &route.at("rate_limit"),
                    &self.rate_limits,
                )),
                None => {} // reported once under rate_limits.default
            }
        }
        rate_limits.into_boxed_slice()
    }
}

/// The route's `claims`: each a value or a list of values, any one of which
/// the token's claim must equal.
fn route_claims(
    route: &Table<'_, RouteConfig>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, Vec<serde_json::Value>)> {
    let mut claims = Vec::new();
    for (name, v) in &route.get().claims {
        let values: Vec<serde_json::Value> = match v.get_ref() {
            toml::Value::Array(items) => items.iter().filter_map(toml_scalar).collect(),
            other => toml_scalar(other).into_iter().collect(),
        };
        if values.is_empty() {
            errors.push(route.error(
                v,
                &format!("claims.{name}"),
                "give a string, number or bool, or a list of them",
            ));
        }
        claims.push((name.clone(), values));
    }
    claims
}

/// The auth policy of a route that sets none of its own (and of routes
/// the descriptors make): `[auth]`'s defaults.
fn default_route_auth(auth: &Auth) -> RouteAuth {
    RouteAuth {
        mode: auth.default_mode,
        credentials: auth.credentials,
        issuers: None,
        scopes: Vec::new(),
        claims: Vec::new(),
        forward_claims: claim_headers(&auth.forward_claims),
        client_cert: ClientCertPolicy {
            forward: auth.forward_client_cert.clone(),
            ..ClientCertPolicy::default()
        },
    }
}

/// Each forwarded claim with the `grpc-metadata-x-jwt-<claim>` header it
/// travels in, named once here instead of per request. `consumer` is no
/// claim (a token stating it would pose as a consumer): [`RouteKeys`]
/// carries it.
fn claim_headers(claims: &[String]) -> Arc<[(String, HeaderName)]> {
    claims
        .iter()
        .filter(|c| *c != consumers::FORWARD_CONSUMER)
        .filter_map(|c| {
            let key = format!("grpc-metadata-{}", jwt::claim_metadata_key(c));
            HeaderName::from_bytes(key.as_bytes())
                .ok()
                .map(|h| (c.clone(), h))
        })
        .collect()
}

/// Whether a list of forwarded claims passes the consumer's name on.
fn forwards_consumer(claims: &[String]) -> bool {
    claims.iter().any(|c| c == consumers::FORWARD_CONSUMER)
}

fn toml_scalar(v: &toml::Value) -> Option<serde_json::Value> {
    match v {
        toml::Value::String(s) => Some(s.clone().into()),
        toml::Value::Integer(i) => Some((*i).into()),
        toml::Value::Boolean(b) => Some((*b).into()),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Into::into),
        _ => None,
    }
}

/// FNV-1a of "METHOD template": stable across processes and reloads.
fn route_key(method: &str, path: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    method.hash(&mut h);
    path.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FILE: &str = "/etc/gateway/routes.toml";

    /// `text` as the routes.toml at [`FILE`].
    fn parse(text: &str) -> LoadedFile {
        LoadedFile::parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each error as printed: `file:line: key: message`.
    fn printed(errors: &[ConfigError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn cors_policy_takes_unset_keys_of_a_route_from_the_global_one() {
        let file = parse(
            r#"[cors]
allowed_origins = ["https://app.example"]
allowed_methods = ["get", "Post"]
max_age = "1m"

[[routes]]
method = "GET"
path = "/v1/x"
grpc = "a.B/C"
cors = { allowed_origins = ["https://admin.example"], allow_credentials = true }
"#,
        );
        let global = file.config.cors.as_ref().unwrap();
        let mut errors = Vec::new();
        let policy = cors_policy(&file, global, None, "cors", &mut errors).unwrap();
        assert_eq!(
            policy.origins,
            vec![OriginRule::Exact("https://app.example".into())]
        );
        assert_eq!(policy.methods, Some(vec![Method::GET, Method::POST]));
        assert_eq!(policy.allowed_headers, cors::DEFAULT_ALLOWED_HEADERS);
        assert_eq!(policy.exposed_headers, cors::DEFAULT_EXPOSED_HEADERS);
        assert_eq!(policy.max_age, Duration::from_secs(60));
        assert!(!policy.credentials);

        let own = file.config.routes[0].get_ref().cors.as_ref().unwrap();
        let route = cors_policy(
            &file,
            own,
            Some(global.get_ref()),
            "routes[0].cors",
            &mut errors,
        )
        .unwrap();
        assert_eq!(
            route.origins,
            vec![OriginRule::Exact("https://admin.example".into())]
        );
        assert_eq!(route.methods, policy.methods);
        assert_eq!(route.max_age, Duration::from_secs(60));
        assert!(route.credentials);
        assert!(errors.is_empty(), "{:?}", printed(&errors));
    }

    #[test]
    fn cors_is_configured_by_a_route_alone() {
        let file = parse(
            r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "a.B/C"
cors = { allowed_origins = ["https://app.example"] }
"#,
        );
        let mut errors = Vec::new();
        let (global, configured) = build_cors(&file, &mut errors);
        assert!(global.is_none());
        assert!(configured);
        assert!(errors.is_empty(), "{:?}", printed(&errors));
    }

    #[test]
    fn cors_reports_each_bad_value_at_its_line() {
        let file = parse(
            r#"[cors]
allowed_origins = ["*"]
allowed_methods = ["GET", "NOT A METHOD"]
allowed_headers = ["x ok"]
"#,
        );
        let mut errors = Vec::new();
        let (global, _) = build_cors(&file, &mut errors);
        assert!(global.is_some());
        assert_eq!(
            printed(&errors),
            [
                format!("{FILE}:3: cors.allowed_methods: \"NOT A METHOD\" is not an HTTP method"),
                format!("{FILE}:4: cors.allowed_headers: \"x ok\" is not a header name"),
            ]
        );
    }

    #[test]
    fn rate_limit_policy_compiles_with_its_defaults() {
        let file = parse(
            r#"[rate_limits]
max_keys = 500
default = ["api"]

[rate_limits.policies.api]
key = "header:X-Api-Key"
rate = 10
per = "1m"
scope = "route"
"#,
        );
        let mut errors = Vec::new();
        let rl = build_rate_limits(&file, None, &mut errors);
        assert!(errors.is_empty(), "{:?}", printed(&errors));
        assert_eq!(
            rl.get("api").unwrap().def,
            PolicyDef {
                name: "api".into(),
                key: KeyKind::Header(HeaderName::from_static("x-api-key")),
                rate: 10,
                per: Duration::from_secs(60),
                burst: 10,
                per_route: true,
                max_keys: 500,
                shared: false,
            }
        );
        assert_eq!(rl.ipv6_prefix, super::super::client_ip::DEFAULT_IPV6_PREFIX);
    }

    #[test]
    fn rate_limit_problems_are_reported_in_order_with_usable_fallbacks() {
        let file = parse(
            r#"[rate_limits]
max_keys = 0
ipv6_prefix = 0
default = ["missing"]

[rate_limits.policies.api]
key = "ip"
rate = 0
burst = 0
scope = "everywhere"
"#,
        );
        let mut errors = Vec::new();
        let rl = build_rate_limits(&file, None, &mut errors);
        assert_eq!(
            printed(&errors),
            [
                format!("{FILE}:2: rate_limits.max_keys: must be at least 1"),
                format!("{FILE}:8: rate_limits.policies.api.rate: must be at least 1"),
                format!("{FILE}:9: rate_limits.policies.api.burst: must be at least 1"),
                format!("{FILE}:10: rate_limits.policies.api.scope: \"everywhere\" is not a scope; use \"global\" or \"route\""),
                format!("{FILE}:3: rate_limits.ipv6_prefix: must be 1..=128 (64: one subscriber's network; 128: every address apart)"),
                format!("{FILE}:4: rate_limits.default: rate-limit policy \"missing\" is not defined (defined: api); add [rate_limits.policies.missing]"),
            ]
        );
        let def = &rl.get("api").unwrap().def;
        assert_eq!((def.rate, def.burst, def.per_route), (1, 1, false));
        assert_eq!(def.max_keys, ratelimit::DEFAULT_MAX_KEYS);
    }

    /// Redis settings: each bad value named at its line and key.
    fn redis_errors(text: &str) -> Vec<String> {
        let mut errors = Vec::new();
        build_rate_limits(&parse(text), None, &mut errors);
        printed(&errors)
    }

    const SHARED_POLICY: &str = r#"[rate_limits.policies.shared]
key = "ip"
rate = 10
store = "redis"
"#;

    #[test]
    fn a_redis_store_without_redis_settings_is_named() {
        assert_eq!(
            redis_errors(SHARED_POLICY),
            [format!("{FILE}:4: rate_limits.policies.shared.store: \"redis\" needs a [redis] table with url or url_env")]
        );
        assert_eq!(
            redis_errors(&format!("{SHARED_POLICY}\n[redis]\ntimeout = \"5ms\"\n")),
            [format!("{FILE}:6: redis.url: missing: the Redis URL (or url_env, a variable holding it) is needed by rate_limits.policies.shared")]
        );
        assert_eq!(
            redis_errors("[rate_limits.policies.p]\nkey = \"ip\"\nrate = 1\nstore = \"memcached\"\n"),
            [format!("{FILE}:4: rate_limits.policies.p.store: \"memcached\" is not a store; use \"local\" or \"redis\"")]
        );
    }

    #[test]
    fn bad_redis_url_timeout_and_pool_are_named() {
        let errors = redis_errors(&format!(
            "{SHARED_POLICY}\n[redis]\nurl = \"http://cache:6379\"\ntimeout = \"soon\"\npool_size = 0\n"
        ));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with(&format!("{FILE}:9: redis.pool_size: must be 1..=64")),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with(&format!("{FILE}:8: redis.timeout: ")),
            "{errors:#?}"
        );
        assert!(
            errors[2].starts_with(&format!("{FILE}:7: redis.url: not a Redis URL")),
            "{errors:#?}"
        );
        assert_eq!(
            redis_errors(&format!("{SHARED_POLICY}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"30s\"\n")),
            [format!("{FILE}:8: redis.timeout: must be at most 10s (every shared decision may wait this long)")]
        );
        assert_eq!(
            redis_errors(&format!("{SHARED_POLICY}\n[redis]\nurl_env = \"GATEWAY_TEST_UNSET_REDIS_URL\"\n")),
            [format!("{FILE}:7: redis.url_env: environment variable GATEWAY_TEST_UNSET_REDIS_URL is not set (or empty); set it to the Redis URL")]
        );
    }

    #[tokio::test]
    async fn a_redis_store_loads_without_redis_and_carries_over_a_reload() {
        // Port 1: nothing listens, and loading does not care.
        let text = format!(
            "{SHARED_POLICY}\n[rate_limits.policies.mine]\nkey = \"ip\"\nrate = 5\n\n[redis]\nurl = \"redis://127.0.0.1:1/0\"\n"
        );
        let mut errors = Vec::new();
        let first = build_rate_limits(&parse(&text), None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let store = first.store.clone().expect("a shared policy has the store");
        assert!(first.get("shared").unwrap().store.is_some());
        assert!(first.get("mine").unwrap().store.is_none());
        assert_eq!(store.settings.timeout, redis_store::DEFAULT_TIMEOUT);
        assert_eq!(store.settings.pool_size, redis_store::DEFAULT_POOL_SIZE);
        let again = build_rate_limits(&parse(&text), Some(&first), &mut errors);
        assert!(Arc::ptr_eq(again.store.as_ref().unwrap(), &store));
        assert!(Arc::ptr_eq(
            again.get("shared").unwrap(),
            first.get("shared").unwrap()
        ));
        // A changed store is a new one, and so is the policy using it.
        let changed = build_rate_limits(
            &parse(&text.replace("/0\"", "/1\"")),
            Some(&first),
            &mut errors,
        );
        assert!(!Arc::ptr_eq(changed.store.as_ref().unwrap(), &store));
        assert!(!Arc::ptr_eq(
            changed.get("shared").unwrap(),
            first.get("shared").unwrap()
        ));
        assert!(Arc::ptr_eq(
            changed.get("mine").unwrap(),
            first.get("mine").unwrap()
        ));
        // No shared policy: no store, and no connections.
        let unused = build_rate_limits(
            &parse(&text.replace("store = \"redis\"", "store = \"local\"")),
            None,
            &mut errors,
        );
        assert!(unused.store.is_none() && errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn client_certificate_policies_compile_and_misuses_are_named() {
        let file = parse(
            r#"[auth]
forward_client_cert = ["spiffe_id", "spiffe_id", "issuer"]

[server.tls]
certificates = [{ cert = "c.pem", key = "k.pem" }]
client_ca = "ca.pem"

[[routes]]
method = "GET"
path = "/v1/a"
grpc = "a.B/C"
auth = "required"
credentials = ["client_cert", "jwt"]
client_cert_allow = ["spiffe://example.org/ns/web/*", "CN=web"]

[[routes]]
method = "GET"
path = "/v1/b"
grpc = "a.B/C"
client_cert = "always"
client_cert_allow = ["spiffe://*/web"]
forward_client_cert = []
"#,
        );
        let mut errors = Vec::new();
        let edge = build(&file, None, &mut errors);
        let a = edge.route(
            &file,
            0,
            &file.config.routes[0],
            "GET",
            "/v1/a",
            &mut errors,
        );
        let b = edge.route(
            &file,
            1,
            &file.config.routes[1],
            "GET",
            "/v1/b",
            &mut errors,
        );
        assert_eq!(
            printed(&errors),
            [
                format!("{FILE}:2: auth.forward_client_cert: \"issuer\" is not a part of a client certificate; use \"subject\", \"spiffe_id\", \"dns\", \"uri\" or \"xfcc\""),
                format!("{FILE}:20: routes[1].client_cert: \"always\" is not a client certificate policy; use \"required\" or \"none\""),
                format!("{FILE}:21: routes[1].client_cert_allow: \"spiffe://*/web\": `*` may only end an entry (a prefix, e.g. \"spiffe://example.org/ns/web/*\")"),
                format!("{FILE}:21: routes[1].client_cert_allow: the allow-list applies to a certificate the route uses: add client_cert = \"required\" or credentials = [\"client_cert\", ...]"),
            ]
        );
        assert_eq!(edge.auth.forward_client_cert, [client_cert::Part::SpiffeId]);
        assert!(a.auth.credentials.client_cert && a.auth.credentials.jwt);
        assert!(!a.auth.client_cert.required);
        assert_eq!(a.auth.client_cert.allow.len(), 2);
        assert_eq!(a.auth.client_cert.forward, [client_cert::Part::SpiffeId]);
        assert!(b.auth.client_cert.forward.is_empty());
        assert!(!b.auth.client_cert.active());
    }

    #[test]
    fn client_ip_policy_keeps_good_proxies_and_names_bad_ones() {
        let file = parse(
            r#"[rate_limits]
trusted_proxies = ["10.0.0.0/8", "not-an-ip"]
client_ip_header = "Forwarded"
"#,
        );
        let mut errors = Vec::new();
        let policy = build_client_ip(&file, &mut errors);
        assert_eq!(policy.trusted, vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        assert_eq!(policy.header, ForwardedHeader::Forwarded);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .starts_with(&format!("{FILE}:2: rate_limits.trusted_proxies: ")),
            "{:?}",
            printed(&errors)
        );
    }

    #[test]
    fn overload_settings_are_checked_and_the_count_carries_over() {
        let file = parse("[server]\nmax_in_flight = 0\noverload = { cpu = 1.5 }\n");
        let mut errors = Vec::new();
        let o = build_overload(&file, None, &mut errors);
        assert_eq!(
            printed(&errors),
            [
                format!("{FILE}:2: server.max_in_flight: must be at least 1 (leave it out for no limit)"),
                format!("{FILE}:3: server.overload.cpu: is a share of the CPUs: above 0 and below 1 (0.95: 95%)"),
            ]
        );
        assert_eq!(o.max_in_flight, None);
        assert!(o.cpu.is_none());
        let file = parse("[server]\nmax_in_flight = 100\n");
        let mut errors = Vec::new();
        o.in_flight
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let next = build_overload(&file, Some(&o), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(next.max_in_flight, Some(100));
        assert!(Arc::ptr_eq(&o.in_flight, &next.in_flight));
    }

    #[test]
    fn limits_report_zero_counts_and_too_deep_json_in_order() {
        let file = parse(
            r#"[limits]
max_headers = 0
max_json_depth = 200
max_concurrent_streams = 0
idle_timeout = "0s"
"#,
        );
        let mut errors = Vec::new();
        let limits = build_limits(&file, &mut errors);
        assert_eq!(
            printed(&errors),
            [
                format!("{FILE}:3: limits.max_json_depth: at most 120 (the JSON parser stops at 128 levels anyway)"),
                format!("{FILE}:4: limits.max_concurrent_streams: must be at least 1"),
                format!("{FILE}:2: limits.max_headers: must be at least 1"),
                format!("{FILE}:5: limits.idle_timeout: must be greater than zero"),
            ]
        );
        let d = Limits::default();
        assert_eq!(limits.max_headers, d.max_headers);
        assert_eq!(limits.max_concurrent_streams, d.max_concurrent_streams);
        assert_eq!(limits.idle_timeout, d.idle_timeout);
    }

    #[test]
    fn issuers_compile_and_two_with_one_iss_are_refused() {
        let file = parse(
            r#"[auth]
default = "required"

[auth.issuers.first]
issuer = "https://idp.example"
algorithms = ["RS256", "RS256"]
audiences = ["api"]
jwks_url = "https://idp.example/jwks"

[auth.issuers.second]
issuer = "https://idp.example"
algorithms = ["ES256"]
jwks_url = "https://idp.example/other"
"#,
        );
        let mut errors = Vec::new();
        let auth = build_auth(&file, None, &mut errors);
        assert_eq!(
            printed(&errors),
            [format!("{FILE}:11: auth.issuers.second.issuer: issuer \"https://idp.example\" is also declared as auth.issuers.first; a token's iss must pick one")]
        );
        assert_eq!(auth.default_mode, AuthMode::Required);
        let names: Vec<&str> = auth.issuers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        let first = &auth.issuers[0];
        assert_eq!(first.iss, "https://idp.example");
        assert_eq!(first.algorithms, [Algorithm::RS256]);
        assert_eq!(first.audiences, ["api"]);
        assert!(first.static_keys.is_empty());
        assert_eq!(
            first.jwks.as_ref().map(|j| j.source.url.as_str()),
            Some("https://idp.example/jwks")
        );
        assert_eq!(auth.forward_claims, ["sub", "consumer"]);
    }

    #[test]
    fn the_token_cache_is_on_by_default_off_with_no_entries_and_a_zero_lifetime_is_named() {
        let mut errors = Vec::new();
        let auth = build_auth(&parse(""), None, &mut errors);
        assert!(errors.is_empty(), "{:?}", printed(&errors));
        assert!(auth.token_cache.enabled());
        assert_eq!(
            auth.token_cache.max_lifetime(),
            token_cache::DEFAULT_MAX_LIFETIME
        );
        let off = parse("[auth]\ntoken_cache = { max_entries = 0 }\n");
        assert!(!build_auth(&off, None, &mut errors).token_cache.enabled());
        let short = parse("[auth.token_cache]\nmax_lifetime = \"30s\"\n");
        let auth = build_auth(&short, None, &mut errors);
        assert!(errors.is_empty(), "{:?}", printed(&errors));
        assert_eq!(auth.token_cache.max_lifetime(), Duration::from_secs(30));
        let zero = parse("[auth]\ntoken_cache = { max_entries = 10, max_lifetime = \"0s\" }\n");
        build_auth(&zero, None, &mut errors);
        assert_eq!(
            printed(&errors),
            [format!(
                "{FILE}:2: auth.token_cache.max_lifetime: must be greater than zero"
            )]
        );
    }

    #[test]
    fn an_issuer_with_several_problems_reports_each_and_is_left_out() {
        let file = parse(
            r#"[auth.issuers.mixed]
issuer = ""
algorithms = ["HS256", "RS256", "none"]
jwks_timeout = "5s"
"#,
        );
        let mut errors = Vec::new();
        let auth = build_auth(&file, None, &mut errors);
        assert!(auth.issuers.is_empty());
        let keys: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.issuers.mixed.issuer",
                "auth.issuers.mixed.algorithms",
                "auth.issuers.mixed.algorithms",
                "auth.issuers.mixed.hmac_secret_env",
                "auth.issuers.mixed.jwks_timeout",
                "auth.issuers.mixed",
            ],
            "{:?}",
            printed(&errors)
        );
        let text = printed(&errors);
        assert!(text[1].contains("\"none\" is not an algorithm"), "{text:?}");
        assert!(text[2].contains("algorithm confusion"), "{text:?}");
        assert!(text[4].starts_with(&format!("{FILE}:4: ")), "{text:?}");
        assert!(text[4].ends_with("only applies with jwks_url"), "{text:?}");
        assert!(
            text[5].ends_with("no keys: set jwks_url or pem_files"),
            "{text:?}"
        );
    }
}
