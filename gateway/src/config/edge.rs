//! The edge-security sections of routes.toml: `[auth]`, `[cors]`,
//! `[rate_limits]` and `[limits]`, and the route fields that refer to them.
//! They are checked and compiled in `edge::compile`, which reports through
//! the same file:line errors as the rest of the file.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `[auth]`: who may call, proven by a JWT.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token issuers by name; a token is checked against the one whose
    /// `issuer` equals its `iss` claim.
    #[serde(default)]
    pub issuers: BTreeMap<String, Spanned<IssuerConfig>>,
    /// `none`, `optional` or `required`: the policy of routes that do not set `auth`.
    pub default: Option<Spanned<String>>,
    /// Also read the token from this cookie (after the Authorization header).
    pub cookie: Option<Spanned<String>>,
    /// Also read the token from this query parameter (last resort; it is
    /// removed from the query before transcoding).
    pub query_param: Option<Spanned<String>>,
    /// Longer tokens are refused before any parsing (default 8192 bytes).
    pub max_token_bytes: Option<Spanned<usize>>,
    /// Clock skew allowed on `exp` and `nbf` (default 60s).
    pub leeway: Option<Spanned<String>>,
    /// Claims passed to backends as metadata `x-jwt-<claim>` on every route
    /// that does not set `forward_claims` (default `["sub"]`).
    pub forward_claims: Option<Vec<Spanned<String>>>,
    /// Pass the raw token on (the Authorization header, the token cookie).
    /// Off by default: a backend that logs headers would leak credentials.
    #[serde(default)]
    pub forward_token: bool,
}

/// `[auth.issuers.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` claim of this issuer's tokens.
    pub issuer: Spanned<String>,
    /// Accepted `aud` values; a token must name one of them. Empty: `aud`
    /// is not checked (and a token that has one is still accepted).
    #[serde(default)]
    pub audiences: Vec<Spanned<String>>,
    /// Algorithms accepted from this issuer, e.g. `["RS256", "ES256"]`.
    pub algorithms: Vec<Spanned<String>>,
    /// A JWKS document (`https://issuer/.well-known/jwks.json`), fetched at
    /// start and refreshed in the background.
    pub jwks_url: Option<Spanned<String>>,
    /// PEM public keys (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`), relative to routes.toml.
    #[serde(default)]
    pub pem_files: Vec<Spanned<String>>,
    /// Environment variable holding the HMAC secret (HS256/384/512).
    pub hmac_secret_env: Option<Spanned<String>>,
    /// Overrides `auth.leeway` for this issuer.
    pub leeway: Option<Spanned<String>>,
    /// Shortest time between background JWKS refreshes, whatever
    /// Cache-Control says (default 1m).
    pub jwks_min_refresh: Option<Spanned<String>>,
    /// Longest time between background JWKS refreshes (default 1h); also the
    /// refresh time when the answer has no max-age.
    pub jwks_max_refresh: Option<Spanned<String>>,
    /// Tokens with an unknown `kid` refetch the JWKS from a bucket of 3
    /// fetches, refilled one per this interval (default 3s).
    pub jwks_refetch_interval: Option<Spanned<String>>,
    /// Time limit of one JWKS fetch (default 5s).
    pub jwks_timeout: Option<Spanned<String>>,
}

/// `[cors]`, and a route's `cors = { ... }` (its fields replace these).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Set false to turn CORS off (on a route: for that route only).
    pub enabled: Option<bool>,
    /// Exact origins (`https://app.example.com`), patterns with `*` standing
    /// for one or more host labels or a port (`https://*.example.com`,
    /// `http://localhost:*`), or `"*"` for any origin.
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    /// Methods browsers may use cross-origin (default: every method the
    /// route table binds for the path); the preflight answer lists the
    /// methods both allowed here and bound for the path.
    pub allowed_methods: Option<Vec<Spanned<String>>>,
    /// Request headers browsers may send (default: `authorization`,
    /// `content-type`, `traceparent`, `tracestate`, `x-request-id`).
    pub allowed_headers: Option<Vec<Spanned<String>>>,
    /// Response headers scripts may read (default: the rate-limit fields,
    /// `www-authenticate`, `traceresponse`, `x-request-id`).
    pub exposed_headers: Option<Vec<Spanned<String>>>,
    /// Let browsers send cookies and read answers to credentialed requests.
    pub allow_credentials: Option<bool>,
    /// How long browsers may cache a preflight answer (default 10m).
    pub max_age: Option<Spanned<String>>,
}

/// `[rate_limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Named quotas; routes refer to them by name.
    #[serde(default)]
    pub policies: BTreeMap<String, Spanned<RateLimitPolicyConfig>>,
    /// Policies applied to routes that do not set `rate_limit`.
    #[serde(default)]
    pub default: Vec<Spanned<String>>,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` / `Forwarded` header is
    /// believed when finding the client's address.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    pub client_ip_header: Option<Spanned<String>>,
    /// IPv6 clients are counted by this many leading bits of their address
    /// (default 64, 1..=128); IPv4 clients by their whole address.
    pub ipv6_prefix: Option<Spanned<u8>>,
    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    #[serde(default)]
    pub legacy_headers: bool,
    /// Keys kept per policy at most (default 1000000); past it, idle keys
    /// are dropped at once and, if that is not enough, all of them.
    pub max_keys: Option<Spanned<usize>>,
    /// How often idle keys are dropped (default 10s).
    pub sweep_interval: Option<Spanned<String>>,
}

/// `[rate_limits.policies.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    /// What is counted: `ip`, `subject` (the JWT `sub`; the IP when there is
    /// none), `header:<name>` (e.g. an API key), or `route`.
    pub key: Spanned<String>,
    /// Requests allowed per `per`, sustained.
    pub rate: Spanned<u32>,
    /// The period `rate` is counted over (default 1s).
    pub per: Option<Spanned<String>>,
    /// Requests allowed at once after a quiet period (default `rate`).
    pub burst: Option<Spanned<u32>>,
    /// `global` (default): one bucket per key across every route using the
    /// policy; `route`: a bucket per key and route.
    pub scope: Option<Spanned<String>>,
}

/// `[limits]`: bounds on what one client may send and hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query), in bytes (414 beyond).
    pub max_url_bytes: Option<Spanned<usize>>,
    /// Most request headers (431 beyond).
    pub max_headers: Option<Spanned<usize>>,
    /// Largest total of header names and values, in bytes (431 beyond).
    pub max_header_bytes: Option<Spanned<usize>>,
    /// Deepest JSON nesting of a request body (400 beyond).
    pub max_json_depth: Option<Spanned<usize>>,
    /// From the request's arrival to the answer's headers (504 beyond).
    pub request_timeout: Option<Spanned<String>>,
    /// HTTP/1.1: time to receive a request's headers (the connection is closed beyond).
    pub header_read_timeout: Option<Spanned<String>>,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed (HTTP/1.1 and HTTP/2).
    pub idle_timeout: Option<Spanned<String>>,
    /// Open client connections at most; more wait in the listen backlog.
    /// Read at start only.
    pub max_connections: Option<Spanned<usize>>,
    /// HTTP/2 streams in flight per connection.
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Bytes a multipart body may hold before its first boundary (400 beyond).
    pub max_multipart_preamble_bytes: Option<Spanned<usize>>,
    /// Bytes of one multipart part's headers (413 beyond).
    pub max_multipart_part_header_bytes: Option<Spanned<usize>>,
    /// Bytes/s a request body read whole must keep up, after a 5 s grace
    /// (408 and the connection closed below it); 0 turns it off.
    pub min_body_rate: Option<Spanned<u64>>,
}
