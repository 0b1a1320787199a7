//! Edge security: what every request passes before it is transcoded.
//!
//! Each policy is a tower layer over routed requests ([`layer`]), reading
//! its own slice of the route stage's result; `pipeline::app` assembles
//! them in this fixed order (docs/edge-security.md):
//!
//! 1. The request timeout ([`limits::RequestTimeout`]), around all the rest.
//! 2. CORS ([`cors`]): preflights answered, never authenticated nor limited.
//! 3. Limits ([`limits`]): target length, header count and size, declared
//!    body size.
//! 4. The client's address, trusted proxies applied ([`client_ip`]).
//! 5. Rate limits keyed by IP, header or route ([`ratelimit`]).
//! 6. Authentication (a JWT, an API key of a consumer, or either) and the
//!    route's scope and claim policy ([`auth`], [`jwt`], [`consumers`]).
//! 7. Rate limits keyed by the JWT subject or the consumer, and the
//!    consumer's quotas.
//!
//! Transcoding then bounds the body while reading it (size, JSON depth,
//! duplicate keys). Route policies (5 to 7) pass requests no route took:
//! those get their 404, 405 or 400 answer. A request refused at any step
//! never reaches a backend.

pub mod auth;
pub mod client_cert;
pub mod client_ip;
mod compile;
pub mod conn;
pub mod consumers;
pub mod cors;
pub mod jwks;
pub mod jwt;
pub mod layer;
pub mod limits;
pub mod overload;
pub mod ratelimit;
pub mod redis_store;
pub mod tls;
pub mod token_cache;

use std::sync::Arc;

pub use compile::build;

use client_ip::ClientIpPolicy;
use cors::CorsPolicy;
use jwt::{Auth, RouteAuth};
use limits::Limits;
use ratelimit::{KeyKind, Policy, RateLimits};

/// The edge part of a snapshot.
#[derive(Debug)]
pub struct Edge {
    pub auth: Auth,
    /// `[consumers]` and `[api_keys]`: callers known by API keys.
    pub consumers: consumers::Consumers,
    /// `[cors]`: routes without their own policy use it, and so do answers
    /// no route gives (404, 405).
    pub cors: Option<Arc<CorsPolicy>>,
    /// Whether any CORS policy exists (else the CORS layer steps aside).
    pub cors_configured: bool,
    pub rate_limits: RateLimits,
    pub client_ip: ClientIpPolicy,
    pub limits: Limits,
    /// `[server] max_in_flight`: the gateway-wide shed.
    pub overload: overload::Overload,
    /// The auth policy of a route that sets none of its own, made once for
    /// every such route.
    pub route_auth: Arc<RouteAuth>,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            auth: Auth {
                max_token_bytes: jwt::DEFAULT_MAX_TOKEN_BYTES,
                ..Default::default()
            },
            consumers: consumers::Consumers::default(),
            cors: None,
            cors_configured: false,
            rate_limits: RateLimits::new(
                Vec::new(),
                false,
                ratelimit::DEFAULT_SWEEP_INTERVAL,
                None,
                None,
            ),
            client_ip: ClientIpPolicy::default(),
            limits: Limits::default(),
            overload: overload::Overload::default(),
            route_auth: Arc::default(),
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
    /// Shared ([`Edge::route_auth`]) by the routes whose policy is
    /// `[auth]`'s: most routes of a large table (issue 24).
    pub auth: Arc<RouteAuth>,
    /// Where the route reads API keys, and whether the consumer goes on.
    pub api_keys: consumers::RouteKeys,
    pub cors: Option<Arc<CorsPolicy>>,
    /// Exact-size: every route holds one.
    pub rate_limits: Box<[Arc<Policy>]>,
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
            "credentials": a.credentials.names(),
            "issuers": match &a.issuers {
                None => edge.auth.issuers.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
                Some(list) => list.iter().filter_map(|i| edge.auth.issuers.get(*i)).map(|i| i.name.clone()).collect(),
            },
            "scopes": a.scopes,
            "claims": a.claims.iter().map(|(k, v)| (k.clone(), serde_json::Value::Array(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "forward_claims": a.forward_claims.iter().map(|(c, h)| serde_json::json!({"claim": c, "metadata": h.as_str().trim_start_matches("grpc-metadata-")}))
                .chain((a.credentials.api_key && self.api_keys.forward_consumer).then(|| serde_json::json!({"claim": consumers::FORWARD_CONSUMER, "metadata": consumers::CONSUMER_METADATA.as_str().trim_start_matches("grpc-metadata-")})))
                .collect::<Vec<_>>(),
            "api_keys": a.credentials.api_key.then(|| self.api_keys.source.describe()),
            "client_cert": {
                "required": a.client_cert.required,
                "allow": a.client_cert.allow.iter().map(client_cert::Pattern::text).collect::<Vec<_>>(),
                "forward": a.client_cert.forward.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            },
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
                "store": if p.store.is_some() { "redis" } else { "local" },
                "keys": p.len(),
            })).collect::<Vec<_>>(),
            "cors": self.cors.as_ref().map(|c| c.describe()),
            "max_body_bytes": edge.limits.max_body_bytes,
            "max_json_depth": edge.limits.max_json_depth,
            "request_timeout_ms": edge.limits.request_timeout.as_millis() as u64,
        })
    }
}
