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

use super::client_ip::{Cidr, ClientIpPolicy, ForwardedHeader};
use super::cors::{self, CorsPolicy, OriginRule};
use super::jwks::{self, Jwks, JwksSource, VerifyKey};
use super::jwt::{self, Auth, AuthMode, Issuer, RouteAuth};
use super::limits::{self, Limits};
use super::ratelimit::{self, KeyKind, PolicyDef, RateLimits};
use super::{Edge, RouteEdge};
use crate::config::{ConfigError, CorsConfig, LoadedFile, RouteConfig};

/// Builds the edge part of a snapshot. `previous` lends its JWKS caches and
/// rate-limit buckets to unchanged definitions.
pub fn build(file: &LoadedFile, previous: Option<&Edge>, errors: &mut Vec<ConfigError>) -> Edge {
    if let Err(e) = jwt::self_check() {
        errors.push(ConfigError::new(
            &file.path,
            None,
            "auth",
            format!("JWT self-check failed: {e}"),
        ));
    }
    let cfg = &file.config;
    let auth = build_auth(file, previous.map(|p| &p.auth), errors);
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

    let rl = &cfg.rate_limits;
    let max_keys = match &rl.max_keys {
        Some(m) if *m.get_ref() == 0 => {
            errors.push(file.error(m, "rate_limits.max_keys", "must be at least 1"));
            ratelimit::DEFAULT_MAX_KEYS
        }
        Some(m) => *m.get_ref(),
        None => ratelimit::DEFAULT_MAX_KEYS,
    };
    let sweep = file.duration(
        &rl.sweep_interval,
        "rate_limits.sweep_interval",
        ratelimit::DEFAULT_SWEEP_INTERVAL,
        errors,
    );
    let mut defs = Vec::new();
    for (name, spanned) in &rl.policies {
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
        defs.push(PolicyDef {
            name: name.clone(),
            key,
            rate: rate.max(1),
            per,
            burst,
            per_route,
            max_keys,
        });
    }
    let mut rate_limits = RateLimits::new(
        defs,
        rl.legacy_headers,
        sweep,
        previous.map(|p| &p.rate_limits),
    );
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
    let mut trusted = Vec::new();
    for t in &rl.trusted_proxies {
        match Cidr::parse(t.get_ref()) {
            Ok(c) => trusted.push(c),
            Err(e) => errors.push(file.error(t, "rate_limits.trusted_proxies", e)),
        }
    }
    let header = match rl.client_ip_header.as_ref() {
        None => ForwardedHeader::XForwardedFor,
        Some(h) => {
            match h.get_ref().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "forwarded" => ForwardedHeader::Forwarded,
                other => {
                    errors.push(file.error(
                    h,
                    "rate_limits.client_ip_header",
                    format!("\"{other}\" is not supported; use \"x-forwarded-for\" or \"forwarded\""),
                ));
                    ForwardedHeader::XForwardedFor
                }
            }
        }
    };

    let limits = build_limits(file, errors);
    Edge {
        auth,
        cors,
        cors_configured,
        rate_limits,
        client_ip: ClientIpPolicy { trusted, header },
        limits,
    }
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

fn positive(
    file: &LoadedFile,
    v: &Option<Spanned<usize>>,
    field: &str,
    default: usize,
    errors: &mut Vec<ConfigError>,
) -> usize {
    match v {
        Some(s) if *s.get_ref() == 0 => {
            errors.push(file.error(s, field, "must be at least 1"));
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    }
}

fn build_limits(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> Limits {
    let l = &file.config.limits;
    let d = Limits::default();
    let max_json_depth = positive(
        file,
        &l.max_json_depth,
        "limits.max_json_depth",
        d.max_json_depth,
        errors,
    );
    if let Some(s) = &l.max_json_depth {
        if *s.get_ref() > 120 {
            errors.push(file.error(
                s,
                "limits.max_json_depth",
                "at most 120 (the JSON parser stops at 128 levels anyway)",
            ));
        }
    }
    let max_concurrent_streams = match &l.max_concurrent_streams {
        Some(s) if *s.get_ref() == 0 => {
            errors.push(file.error(s, "limits.max_concurrent_streams", "must be at least 1"));
            d.max_concurrent_streams
        }
        Some(s) => *s.get_ref(),
        None => d.max_concurrent_streams,
    };
    Limits {
        max_url_bytes: positive(
            file,
            &l.max_url_bytes,
            "limits.max_url_bytes",
            d.max_url_bytes,
            errors,
        ),
        max_headers: positive(
            file,
            &l.max_headers,
            "limits.max_headers",
            d.max_headers,
            errors,
        ),
        max_header_bytes: positive(
            file,
            &l.max_header_bytes,
            "limits.max_header_bytes",
            d.max_header_bytes,
            errors,
        ),
        max_json_depth,
        max_body_bytes: file.config.server.max_body_bytes,
        request_timeout: file.duration(
            &l.request_timeout,
            "limits.request_timeout",
            limits::DEFAULT_REQUEST_TIMEOUT,
            errors,
        ),
        header_read_timeout: file.duration(
            &l.header_read_timeout,
            "limits.header_read_timeout",
            limits::DEFAULT_HEADER_READ_TIMEOUT,
            errors,
        ),
        idle_timeout: file.duration(
            &l.idle_timeout,
            "limits.idle_timeout",
            limits::DEFAULT_IDLE_TIMEOUT,
            errors,
        ),
        max_connections: positive(
            file,
            &l.max_connections,
            "limits.max_connections",
            d.max_connections,
            errors,
        ),
        max_concurrent_streams,
        max_multipart_preamble_bytes: positive(
            file,
            &l.max_multipart_preamble_bytes,
            "limits.max_multipart_preamble_bytes",
            d.max_multipart_preamble_bytes,
            errors,
        ),
        max_multipart_part_header_bytes: positive(
            file,
            &l.max_multipart_part_header_bytes,
            "limits.max_multipart_part_header_bytes",
            d.max_multipart_part_header_bytes,
            errors,
        ),
        min_body_rate: l
            .min_body_rate
            .as_ref()
            .map_or(d.min_body_rate, |r| *r.get_ref()),
    }
}

fn build_auth(file: &LoadedFile, previous: Option<&Auth>, errors: &mut Vec<ConfigError>) -> Auth {
    let a = &file.config.auth;
    let default_mode = match &a.default {
        Some(d) => AuthMode::parse(d.get_ref())
            .map_err(|e| errors.push(file.error(d, "auth.default", e)))
            .unwrap_or_default(),
        None => AuthMode::None,
    };
    if default_mode != AuthMode::None && a.issuers.is_empty() {
        if let Some(d) = &a.default {
            errors.push(file.error(
                d,
                "auth.default",
                "no [auth.issuers.NAME] is defined, so no token could pass",
            ));
        }
    }
    let token_name = |v: &Option<Spanned<String>>, field: &str, errors: &mut Vec<ConfigError>| {
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
    };
    let cookie = token_name(&a.cookie, "auth.cookie", errors);
    let query_param = token_name(&a.query_param, "auth.query_param", errors);
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
        None => vec!["sub".to_owned()],
    };

    let mut issuers: Vec<Arc<Issuer>> = Vec::new();
    for (name, spanned) in &a.issuers {
        if let Some(i) = build_issuer(file, name, spanned, leeway, previous, errors) {
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
    Auth {
        issuers,
        default_mode,
        cookie,
        query_param,
        max_token_bytes,
        forward_claims,
        forward_token: a.forward_token,
    }
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

fn build_issuer(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<crate::config::IssuerConfig>,
    default_leeway: Duration,
    previous: Option<&Auth>,
    errors: &mut Vec<ConfigError>,
) -> Option<Issuer> {
    let c = spanned.get_ref();
    let at = |f: &str| format!("auth.issuers.{name}.{f}");
    let before = errors.len();
    if c.issuer.get_ref().is_empty() {
        errors.push(file.error(&c.issuer, at("issuer"), "the iss value cannot be empty"));
    }
    let mut algorithms = Vec::new();
    for a in &c.algorithms {
        match a.get_ref().trim().parse::<Algorithm>() {
            Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Ok(_) => {}
            Err(_) => errors.push(file.error(
                a,
                at("algorithms"),
                format!("\"{}\" is not an algorithm; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512 (\"none\" is never accepted)", a.get_ref()),
            )),
        }
    }
    if c.algorithms.is_empty() {
        errors.push(file.error(
            spanned,
            at("algorithms"),
            "list the algorithms this issuer signs with, e.g. [\"RS256\"]",
        ));
    }
    let hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let public = algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac);
    if hmac && public {
        errors.push(file.error(
            spanned,
            at("algorithms"),
            "an issuer signs either with a shared secret (HS*) or with public keys, not both: a token's alg would choose how it is checked (algorithm confusion)",
        ));
    }
    let mut static_keys = Vec::new();
    if let Some(env) = &c.hmac_secret_env {
        if !hmac {
            errors.push(file.error(
                env,
                at("hmac_secret_env"),
                "an HMAC secret needs an HS256, HS384 or HS512 algorithm",
            ));
        }
        match std::env::var(env.get_ref()) {
            Ok(secret) if secret.len() >= 32 => static_keys.push(VerifyKey {
                kid: None,
                family: AlgorithmFamily::Hmac,
                algorithms: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                origin: format!("env {}", env.get_ref()),
            }),
            Ok(secret) => errors.push(file.error(
                env,
                at("hmac_secret_env"),
                format!("the secret in {} is {} bytes; HMAC secrets must be at least 32 bytes (RFC 7518 3.2)", env.get_ref(), secret.len()),
            )),
            Err(_) => errors.push(file.error(
                env,
                at("hmac_secret_env"),
                format!("environment variable {} is not set", env.get_ref()),
            )),
        }
    } else if hmac {
        errors.push(file.error(
            spanned,
            at("hmac_secret_env"),
            "HS* algorithms need hmac_secret_env",
        ));
    }
    for p in &c.pem_files {
        if !public {
            errors.push(file.error(
                p,
                at("pem_files"),
                "public keys need an RS*, PS*, ES* or EdDSA algorithm",
            ));
        }
        let path = file.relative(p.get_ref());
        match std::fs::read(&path) {
            Ok(bytes) => match pem_key(&bytes) {
                Some((family, key)) => static_keys.push(VerifyKey {
                    kid: None,
                    family,
                    algorithms: None,
                    key,
                    origin: path.display().to_string(),
                }),
                None => errors.push(file.error(
                    p,
                    at("pem_files"),
                    format!("{} holds no RSA, EC or Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\")", path.display()),
                )),
            },
            Err(e) => errors.push(file.error(p, at("pem_files"), format!("cannot read {}: {e}", path.display()))),
        }
    }
    if static_keys
        .iter()
        .any(|k| k.family != AlgorithmFamily::Hmac)
        && !static_keys
            .iter()
            .all(|k| algorithms.iter().any(|a| a.family() == k.family))
    {
        errors.push(file.error(
            spanned,
            at("pem_files"),
            "a key in pem_files fits none of the listed algorithms",
        ));
    }
    let leeway = file.duration_min(&c.leeway, &at("leeway"), default_leeway, true, errors);
    let mut jwks = None;
    if let Some(url) = &c.jwks_url {
        if !public {
            errors.push(file.error(
                url,
                at("jwks_url"),
                "a JWKS holds public keys; list an RS*, PS*, ES* or EdDSA algorithm",
            ));
        }
        let u = url.get_ref();
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            errors.push(file.error(
                url,
                at("jwks_url"),
                format!("\"{u}\" is not an http(s) URL"),
            ));
        }
        let source = JwksSource {
            url: u.clone(),
            min_refresh: file.duration(
                &c.jwks_min_refresh,
                &at("jwks_min_refresh"),
                jwks::DEFAULT_MIN_REFRESH,
                errors,
            ),
            max_refresh: file.duration(
                &c.jwks_max_refresh,
                &at("jwks_max_refresh"),
                jwks::DEFAULT_MAX_REFRESH,
                errors,
            ),
            refetch_interval: file.duration(
                &c.jwks_refetch_interval,
                &at("jwks_refetch_interval"),
                jwks::DEFAULT_REFETCH_INTERVAL,
                errors,
            ),
            timeout: file.duration(
                &c.jwks_timeout,
                &at("jwks_timeout"),
                jwks::DEFAULT_TIMEOUT,
                errors,
            ),
        };
        if source.min_refresh > source.max_refresh {
            errors.push(file.error(
                spanned,
                at("jwks_min_refresh"),
                "is longer than jwks_max_refresh",
            ));
        }
        if errors.len() == before {
            let old = previous
                .into_iter()
                .flat_map(|p| p.issuers.iter())
                .filter_map(|i| i.jwks.as_ref())
                .find(|j| j.source == source);
            match Jwks::new(source, old) {
                Ok(j) => jwks = Some(j),
                Err(e) => errors.push(file.error(url, at("jwks_url"), e)),
            }
        }
    } else {
        for (v, f) in [
            (&c.jwks_min_refresh, "jwks_min_refresh"),
            (&c.jwks_max_refresh, "jwks_max_refresh"),
            (&c.jwks_refetch_interval, "jwks_refetch_interval"),
            (&c.jwks_timeout, "jwks_timeout"),
        ] {
            if let Some(v) = v {
                errors.push(file.error(v, at(f), "only applies with jwks_url"));
            }
        }
    }
    if public && jwks.is_none() && c.pem_files.is_empty() && c.jwks_url.is_none() {
        errors.push(file.error(
            spanned,
            format!("auth.issuers.{name}"),
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
    let methods = pick(|c| &c.allowed_methods).map(|list| {
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
            .collect::<Vec<_>>()
    });
    let names = |list: Option<&Vec<Spanned<String>>>,
                 default: &[&str],
                 what: &str,
                 errors: &mut Vec<ConfigError>|
     -> Vec<String> {
        match list {
            None => default.iter().map(|s| (*s).to_owned()).collect(),
            Some(list) => list
                .iter()
                .filter_map(|h| {
                    let name = h.get_ref().trim().to_ascii_lowercase();
                    if name == "*" || HeaderName::from_bytes(name.as_bytes()).is_ok() {
                        Some(name)
                    } else {
                        errors.push(file.error(
                            h,
                            format!("{field}.{what}"),
                            format!("\"{}\" is not a header name", h.get_ref()),
                        ));
                        None
                    }
                })
                .collect(),
        }
    };
    let allowed_headers = names(
        pick(|c| &c.allowed_headers),
        cors::DEFAULT_ALLOWED_HEADERS,
        "allowed_headers",
        errors,
    );
    let exposed_headers = names(
        pick(|c| &c.exposed_headers),
        cors::DEFAULT_EXPOSED_HEADERS,
        "exposed_headers",
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
    match CorsPolicy::new(
        origins,
        methods,
        allowed_headers,
        exposed_headers,
        credentials,
        max_age,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(file.error(own, field, e));
            None
        }
    }
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
        let r = spanned.get_ref();
        let at = |f: &str| format!("routes[{i}].{f}");
        let mode = match &r.auth {
            Some(m) => AuthMode::parse(m.get_ref())
                .map_err(|e| errors.push(file.error(m, at("auth"), e)))
                .unwrap_or(self.auth.default_mode),
            None => self.auth.default_mode,
        };
        if mode != AuthMode::None && self.auth.issuers.is_empty() {
            if let Some(m) = &r.auth {
                errors.push(file.error(
                    m,
                    at("auth"),
                    "no [auth.issuers.NAME] is defined, so no token could pass",
                ));
            }
        }
        let issuers = r.issuers.as_ref().map(|list| {
            list.iter()
                .filter_map(|n| {
                    match self
                        .auth
                        .issuers
                        .iter()
                        .position(|i| i.name == *n.get_ref())
                    {
                        Some(p) => Some(p),
                        None => {
                            errors.push(file.error(
                                n,
                                at("issuers"),
                                format!(
                                        "issuer \"{}\" is not defined (defined: {})",
                                        n.get_ref(),
                                        self.auth
                                            .issuers
                                            .iter()
                                            .map(|i| i.name.as_str())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    ),
                            ));
                            None
                        }
                    }
                })
                .collect()
        });
        let needs_token = !r.scopes.is_empty() || !r.claims.is_empty();
        if needs_token && mode == AuthMode::None {
            errors.push(file.error(
                spanned,
                at("auth"),
                "scopes and claims need auth = \"required\" (or \"optional\")",
            ));
        }
        let mut claims = Vec::new();
        for (name, v) in &r.claims {
            let values: Vec<serde_json::Value> = match v.get_ref() {
                toml::Value::Array(items) => items.iter().filter_map(toml_scalar).collect(),
                other => toml_scalar(other).into_iter().collect(),
            };
            if values.is_empty() {
                errors.push(file.error(
                    v,
                    at(&format!("claims.{name}")),
                    "give a string, number or bool, or a list of them",
                ));
            }
            claims.push((name.clone(), values));
        }
        let forward = match &r.forward_claims {
            Some(list) => claim_names(file, list, &at("forward_claims"), errors),
            None => self.auth.forward_claims.clone(),
        };
        let forward_claims = forward
            .into_iter()
            .filter_map(|c| {
                let key = format!("grpc-metadata-{}", jwt::claim_metadata_key(&c));
                HeaderName::from_bytes(key.as_bytes()).ok().map(|h| (c, h))
            })
            .collect();
        let cors = match &r.cors {
            Some(own) => cors_policy(
                file,
                own,
                file.config.cors.as_ref().map(|c| c.get_ref()),
                &at("cors"),
                errors,
            )
            .map(Arc::new),
            None => self.cors.clone(),
        };
        let names: Vec<&Spanned<String>> = match &r.rate_limit {
            Some(list) => list.iter().collect(),
            None => file.config.rate_limits.default.iter().collect(),
        };
        let mut rate_limits = Vec::new();
        for n in names {
            match self.rate_limits.get(n.get_ref()) {
                Some(p)
                    if !rate_limits
                        .iter()
                        .any(|q: &Arc<ratelimit::Policy>| Arc::ptr_eq(q, p)) =>
                {
                    rate_limits.push(p.clone())
                }
                Some(_) => {}
                None if r.rate_limit.is_some() => errors.push(unknown_policy(
                    file,
                    n,
                    &at("rate_limit"),
                    &self.rate_limits,
                )),
                None => {} // reported once under rate_limits.default
            }
        }
        RouteEdge {
            auth: RouteAuth {
                mode,
                issuers,
                scopes: r.scopes.iter().map(|s| s.get_ref().clone()).collect(),
                claims,
                forward_claims,
            },
            cors,
            rate_limits,
            route_key: route_key(method, path),
        }
    }

    /// The edge policy of a route from a google.api.http annotation: the defaults.
    pub fn annotation_route(&self, file: &LoadedFile, method: &str, path: &str) -> RouteEdge {
        RouteEdge {
            auth: RouteAuth {
                mode: self.auth.default_mode,
                issuers: None,
                scopes: Vec::new(),
                claims: Vec::new(),
                forward_claims: self
                    .auth
                    .forward_claims
                    .iter()
                    .filter_map(|c| {
                        let key = format!("grpc-metadata-{}", jwt::claim_metadata_key(c));
                        HeaderName::from_bytes(key.as_bytes())
                            .ok()
                            .map(|h| (c.clone(), h))
                    })
                    .collect(),
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
