//! Edge security: what every request passes before it is transcoded.
//!
//! The order of checks is fixed (README: Edge security):
//!
//! 1. CORS preflight: answered by [`cors`], never authenticated nor limited.
//! 2. Limits: target length, header count and size, declared body size
//!    ([`limits`]), then the route match (404/405 answers are not limited).
//! 3. Rate limits keyed by IP, header or route ([`ratelimit`]).
//! 4. Authentication and the route's scope and claim policy ([`jwt`]).
//! 5. Rate limits keyed by the JWT subject.
//! 6. Transcoding (body size while reading, JSON depth and duplicate keys).
//!
//! A request refused at any step never reaches a backend.

pub mod client_ip;
mod compile;
pub mod conn;
pub mod cors;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod ratelimit;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{header, Extensions, HeaderMap, HeaderName, HeaderValue};

pub use compile::build;

use crate::error::Error;
use client_ip::{ClientIp, ClientIpPolicy, PeerAddr};
use cors::CorsPolicy;
use jwt::{Auth, AuthError, AuthMode, QueryToken, RouteAuth, TokenSource, Verified};
use limits::Limits;
use ratelimit::{Fields, KeyKind, Policy, RateLimits};

/// The edge part of a snapshot.
#[derive(Debug)]
pub struct Edge {
    pub auth: Auth,
    /// `[cors]`: routes without their own policy use it, and so do answers
    /// no route gives (404, 405).
    pub cors: Option<Arc<CorsPolicy>>,
    /// Whether any CORS policy exists (else the CORS layer steps aside).
    pub cors_configured: bool,
    pub rate_limits: RateLimits,
    pub client_ip: ClientIpPolicy,
    pub limits: Limits,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            auth: Auth {
                max_token_bytes: jwt::DEFAULT_MAX_TOKEN_BYTES,
                ..Default::default()
            },
            cors: None,
            cors_configured: false,
            rate_limits: RateLimits::new(
                Vec::new(),
                false,
                ratelimit::DEFAULT_SWEEP_INTERVAL,
                None,
            ),
            client_ip: ClientIpPolicy::default(),
            limits: Limits::default(),
        }
    }
}

/// The edge's view of one request, put on it by the pipeline's route stage
/// (which loads the snapshot and matches the route once): the edge settings
/// of the snapshot the request keeps, and what the layers need of the route
/// it matched. The edge layers read this and nothing else.
#[derive(Debug, Clone)]
pub struct EdgeContext {
    pub edge: Arc<Edge>,
    /// Whether a route matched (else a 404, 405 or 400 answer is coming).
    pub routed: bool,
    /// The CORS policy that applies: the route's, or `[cors]` for answers
    /// no route gives.
    pub cors: Option<Arc<CorsPolicy>>,
    /// The route streams its request (client or bidirectional streaming):
    /// a large declared body is what it is for.
    pub streams_request: bool,
    /// For a CORS preflight, what the route it asks about allows.
    pub preflight: Option<Preflight>,
}

/// What a CORS preflight asks about: the route serving the method it names
/// on its path.
#[derive(Debug, Clone)]
pub enum Preflight {
    /// No route serves that method on that path.
    NoRoute,
    /// The route's CORS policy, and every method bound to the path.
    Route {
        cors: Option<Arc<CorsPolicy>>,
        bound: Vec<http::Method>,
    },
}

/// A route's edge policy.
#[derive(Debug, Clone, Default)]
pub struct RouteEdge {
    pub auth: RouteAuth,
    pub cors: Option<Arc<CorsPolicy>>,
    pub rate_limits: Vec<Arc<Policy>>,
    /// Stable across reloads (a hash of method and template): keys buckets
    /// of `route`-scoped policies.
    pub route_key: u64,
}

impl RouteEdge {
    /// For /admin/routes: the auth policy.
    pub fn describe_auth(&self, edge: &Edge) -> serde_json::Value {
        let a = &self.auth;
        serde_json::json!({
            "mode": a.mode.as_str(),
            "issuers": match &a.issuers {
                None => edge.auth.issuers.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
                Some(list) => list.iter().filter_map(|i| edge.auth.issuers.get(*i)).map(|i| i.name.clone()).collect(),
            },
            "scopes": a.scopes,
            "claims": a.claims.iter().map(|(k, v)| (k.clone(), serde_json::Value::Array(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "forward_claims": a.forward_claims.iter().map(|(c, h)| serde_json::json!({"claim": c, "metadata": h.as_str().trim_start_matches("grpc-metadata-")})).collect::<Vec<_>>(),
        })
    }

    /// For /admin/routes: rate limits and CORS.
    pub fn describe_limits(&self, edge: &Edge) -> serde_json::Value {
        serde_json::json!({
            "rate_limits": self.rate_limits.iter().map(|p| serde_json::json!({
                "policy": p.def.name,
                "key": p.def.key.to_string(),
                "rate": p.def.rate,
                "per_ms": p.def.per.as_millis() as u64,
                "burst": p.def.burst,
                "scope": if p.def.per_route || p.def.key == KeyKind::Route { "route" } else { "global" },
                "keys": p.len(),
            })).collect::<Vec<_>>(),
            "cors": self.cors.as_ref().map(|c| c.describe()),
            "max_body_bytes": edge.limits.max_body_bytes,
            "max_json_depth": edge.limits.max_json_depth,
            "request_timeout_ms": edge.limits.request_timeout.as_millis() as u64,
        })
    }
}

/// Takes the token query parameter (if `[auth] query_param` is set) out of
/// the request target, into the extensions: it is a credential, not a field
/// of the request message, and must not reach logs or the backend.
pub fn take_query_token(edge: &Edge, parts: &mut http::request::Parts) {
    let Some(name) = &edge.auth.query_param else {
        return;
    };
    let Some(query) = parts.uri.query() else {
        return;
    };
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if key == name {
            let raw = pair.split_once('=').map_or("", |(_, v)| v);
            token = crate::transcode::request::query_decode(raw)
                .ok()
                .map(|t| t.into_owned());
        } else {
            kept.push(pair);
        }
    }
    let Some(token) = token else { return };
    let path = parts.uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut uri = http::uri::Parts::from(parts.uri.clone());
    if let Ok(pq) = http::uri::PathAndQuery::try_from(target) {
        uri.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
            parts.extensions.insert(QueryToken(token));
        }
    }
}

/// The metadata prefix reserved for verified claims: a client cannot send
/// `x-jwt-sub` (or `Grpc-Metadata-X-Jwt-Sub`) and have the backend believe it.
const CLAIM_PREFIX: &str = "x-jwt-";
const CLAIM_METADATA_PREFIX: &str = "grpc-metadata-x-jwt-";

/// Steps 3 to 5 of the order above, for a matched route. On refusal the
/// answer to send is returned. Rate-limit fields for the answer (whatever it
/// is) are written into `out`. On success the verified claims the route
/// forwards are in `headers` as `Grpc-Metadata-X-Jwt-*`, and the
/// [`ClientIp`] and [`Verified`] token are in `extensions`.
pub async fn admit(
    edge: &Edge,
    policy: &RouteEdge,
    headers: &mut HeaderMap,
    extensions: &mut Extensions,
    out: &mut HeaderMap,
) -> Result<(), Error> {
    let peer = extensions
        .get::<PeerAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    let client = edge.client_ip.resolve(peer, headers);
    extensions.insert(ClientIp(client));

    // Claims are ours to state: drop any the client made up.
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with(CLAIM_PREFIX) || k.starts_with(CLAIM_METADATA_PREFIX)
        })
        .cloned()
        .collect();
    for k in forged {
        headers.remove(k);
    }

    let mut fields = Fields::default();
    let result = admit_inner(edge, policy, headers, extensions, client, &mut fields).await;
    fields.write(edge.rate_limits.legacy_headers, out);
    result
}

async fn admit_inner(
    edge: &Edge,
    policy: &RouteEdge,
    headers: &mut HeaderMap,
    extensions: &mut Extensions,
    client: IpAddr,
    fields: &mut Fields,
) -> Result<(), Error> {
    let ip_text = match client_ip::rate_limit_key(client, edge.rate_limits.ipv6_prefix) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    // 3. Limits that need no token.
    for p in policy
        .rate_limits
        .iter()
        .filter(|p| !p.def.key.after_auth())
    {
        let key = match &p.def.key {
            KeyKind::Ip => key_of(edge, p, policy, &[b"ip", &ip_text]),
            KeyKind::Header(h) => match headers.get(h) {
                Some(v) => key_of(edge, p, policy, &[b"h", v.as_bytes()]),
                None => key_of(edge, p, policy, &[b"ip", &ip_text]),
            },
            KeyKind::Route => edge
                .rate_limits
                .hash_key(Some(policy.route_key), &[b"route"]),
            KeyKind::Subject => unreachable!("filtered above"),
        };
        check(p, key, fields)?;
    }

    // 4. Authentication and authorisation (a trace span when exporting).
    // Boxed, and only for routes that check tokens: verification may fetch
    // a key set, and that state inline made every request's future (routes
    // without auth included) 2.5 KiB larger, copied on each move.
    let verified = if policy.auth.mode == AuthMode::None {
        None
    } else {
        let authenticating = authenticate(edge, &policy.auth, headers, extensions);
        Box::pin(crate::telemetry::otel::auth(authenticating)).await?
    };

    // 5. Limits keyed by subject (the IP for anonymous requests).
    for p in policy.rate_limits.iter().filter(|p| p.def.key.after_auth()) {
        let key = match verified.as_ref().and_then(Verified::subject) {
            Some(sub) => key_of(
                edge,
                p,
                policy,
                &[
                    b"sub",
                    verified
                        .as_ref()
                        .map_or("", |v| v.issuer.iss.as_str())
                        .as_bytes(),
                    sub.as_bytes(),
                ],
            ),
            None => key_of(edge, p, policy, &[b"ip", &ip_text]),
        };
        check(p, key, fields)?;
    }
    if let Some(v) = verified {
        extensions.insert(v);
    }
    Ok(())
}

fn key_of(edge: &Edge, p: &Policy, route: &RouteEdge, parts: &[&[u8]]) -> u64 {
    let scope = p.def.per_route.then_some(route.route_key);
    edge.rate_limits.hash_key(scope, parts)
}

fn check(p: &Policy, key: u64, fields: &mut Fields) -> Result<(), Error> {
    let outcome = p.check(key);
    fields.add(p, &outcome);
    if outcome.allowed {
        return Ok(());
    }
    metrics::counter!(crate::telemetry::metrics::RATE_LIMITED, "policy" => p.def.name.clone())
        .increment(1);
    Err(Error::RateLimited {
        message: format!(
            "rate limit \"{}\" exceeded ({} requests per {} ms, burst {}); retry in {} s",
            p.def.name,
            p.def.rate,
            p.def.per.as_millis(),
            p.def.burst,
            outcome.reset_secs
        ),
        retry_after: outcome.reset_secs,
    })
}

async fn authenticate(
    edge: &Edge,
    route: &RouteAuth,
    headers: &mut HeaderMap,
    extensions: &Extensions,
) -> Result<Option<Verified>, Error> {
    if route.mode == AuthMode::None {
        return Ok(None);
    }
    let auth = &edge.auth;
    let refuse = |e: AuthError| {
        let reason = match &e {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden { .. } => "forbidden",
        };
        metrics::counter!(crate::telemetry::metrics::AUTH_FAILURES, "reason" => reason)
            .increment(1);
        let (message, challenge) = (e.message(), e.challenge());
        match e {
            AuthError::Forbidden { .. } => Error::Forbidden { message, challenge },
            _ => Error::Unauthenticated { message, challenge },
        }
    };
    let found = jwt::find_token(auth, headers, extensions.get::<QueryToken>())
        .map_err(refuse)?
        .map(|(t, s)| (t.to_owned(), s));
    // Only the gateway states what token a request carried.
    headers.remove("grpc-metadata-authorization");
    let Some((token, source)) = found else {
        return match route.mode {
            AuthMode::Required => Err(refuse(AuthError::Missing)),
            _ => Ok(None),
        };
    };
    let verified = jwt::verify(auth, route, &token).await.map_err(refuse)?;
    jwt::authorize(route, &verified).map_err(refuse)?;
    // The raw token goes on only when asked, and then in one known place.
    match source {
        TokenSource::Header => {
            headers.remove(header::AUTHORIZATION);
        }
        TokenSource::Cookie => {
            if let Some(name) = &auth.cookie {
                jwt::strip_cookie(headers, name);
            }
        }
        TokenSource::Query => {}
    }
    if auth.forward_token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(HeaderName::from_static("grpc-metadata-authorization"), v);
        }
    }
    for (claim, name) in &route.forward_claims {
        if let Some(v) = verified.claims.get(claim) {
            let value = jwt::claim_metadata(claim, v).map_err(refuse)?;
            headers.insert(name.clone(), value);
        }
    }
    Ok(Some(verified))
}
