//! The edge-security sections of routes.toml: `[auth]`, `[cors]`,
//! `[rate_limits]` and `[limits]`, and the route fields that refer to them.
//! They are checked and compiled in `edge::compile`, which reports through
//! the same file:line errors as the rest of the file.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::reference::DurationText;

/// `[auth]`: who may call, proven by a JWT.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token issuers by name; a token is checked against the one whose
    /// `issuer` equals its `iss` claim.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, IssuerConfig>")]
    pub issuers: BTreeMap<String, Spanned<IssuerConfig>>,
    /// `none`, `optional` or `required`: the policy of routes that do not set
    /// `auth` (default `none`).
    #[schemars(with = "Option<String>")]
    pub default: Option<Spanned<String>>,
    /// Also read the token from this cookie (after the Authorization header);
    /// no cookie is read when absent.
    #[schemars(with = "Option<String>")]
    pub cookie: Option<Spanned<String>>,
    /// Also read the token from this query parameter (last resort; it is
    /// removed from the query before transcoding); none when absent.
    #[schemars(with = "Option<String>")]
    pub query_param: Option<Spanned<String>>,
    /// Longer tokens, in bytes, are refused before any parsing (default 8192:
    /// real tokens are well under 2 KB; this leaves room for fat claims while
    /// keeping a hostile header from costing real work).
    #[schemars(with = "Option<usize>")]
    pub max_token_bytes: Option<Spanned<usize>>,
    /// Clock skew allowed on `exp` and `nbf` (default 60s, the usual choice
    /// of Envoy and Kong).
    #[schemars(with = "Option<DurationText>")]
    pub leeway: Option<Spanned<String>>,
    /// Claims passed to backends as metadata `x-jwt-<claim>` on every route
    /// that does not set `forward_claims`; `"consumer"` is not a claim but
    /// the name of the consumer whose API key proved the caller, passed as
    /// `x-consumer` (default: `sub`, `consumer`).
    #[schemars(with = "Option<Vec<String>>")]
    pub forward_claims: Option<Vec<Spanned<String>>>,
    /// Pass the raw token on (the Authorization header, the token cookie).
    /// Off by default: a backend that logs headers would leak credentials.
    #[serde(default)]
    pub forward_token: bool,
    /// What proves a caller on routes that do not set `credentials`:
    /// `"jwt"`, `"api_key"` (a key of a `[consumers.NAME]`), `"client_cert"`
    /// (a client certificate `[server.tls] client_ca` verified), or several,
    /// meaning any one (default `["jwt"]`).
    #[schemars(with = "Option<Vec<String>>")]
    pub credentials: Option<Vec<Spanned<String>>>,
    /// Parts of the verified client certificate passed to backends as
    /// metadata on routes that do not set `forward_client_cert`: `"subject"`
    /// (`x-client-cert-subject`, RFC 4514), `"spiffe_id"`
    /// (`x-client-cert-spiffe-id`), `"dns"` and `"uri"` (`x-client-cert-dns`,
    /// `x-client-cert-uri`, names joined by `,`), `"xfcc"` (all of them in
    /// Envoy's `x-forwarded-client-cert` form, with the certificate's
    /// SHA-256 as `Hash`) (default `[]`). Those metadata a client sends
    /// itself are always dropped.
    #[schemars(with = "Option<Vec<String>>")]
    pub forward_client_cert: Option<Vec<Spanned<String>>>,
    /// Tokens verified once are kept and accepted again without a
    /// signature check (RSA and EC checks cost tens of microseconds a
    /// request), while that answer holds: the route accepts their issuer,
    /// they have not expired, and their issuer's JWKS has not changed since
    /// (after a rotation they are checked again). On by default;
    /// `max_entries = 0` turns it off.
    #[schemars(with = "Option<TokenCacheConfig>")]
    pub token_cache: Option<Spanned<TokenCacheConfig>>,
}

/// `[auth] token_cache = { max_entries = 10000, max_lifetime = "5m" }`:
/// the bounds of the verified-token cache (docs/edge-security.md). A
/// reload starts it empty.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// The most tokens kept; a token over 1 KiB counts once per started
    /// KiB; the least used go first (default 10000: every active caller
    /// of a busy gateway, about 20 MB with typical tokens). 0 turns the
    /// cache off: every request's token is verified in full.
    #[schemars(with = "Option<u64>")]
    pub max_entries: Option<Spanned<u64>>,
    /// The longest a token is kept, whatever its `exp` (a token is never
    /// kept past its `exp`) (default 5m: a long-lived token is still
    /// verified again every few minutes, at no real cost).
    #[schemars(with = "Option<DurationText>")]
    pub max_lifetime: Option<Spanned<String>>,
}

/// `[api_keys]`: where clients present the API keys of `[consumers]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The request header carrying the key (default `x-api-key`). It is
    /// removed before the call: keys never reach backends or logs.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// Also read the key from this query parameter (after the header); it
    /// is taken out of the request target before the query is read as
    /// fields. None when absent. A route's `api_keys` replaces both.
    #[schemars(with = "Option<String>")]
    pub query_param: Option<Spanned<String>>,
}

/// A route's `api_keys = { ... }`: where API keys are read on this route,
/// instead of `[api_keys]`. Only the places named here are read, the
/// header first: `{ query_param = "key" }` reads no header.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteApiKeysConfig {
    /// The request header carrying the key on this route; removed before
    /// the call. None when absent.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// The query parameter carrying the key on this route; taken out of the
    /// request target before the query is read as fields. None when absent.
    #[schemars(with = "Option<String>")]
    pub query_param: Option<Spanned<String>>,
}

/// `[consumers.NAME]`: a caller known by its API keys. Its name is what
/// rate limits keyed by `consumer` count, and reaches backends as metadata
/// `x-consumer` where `forward_claims` lists `consumer` (it does by
/// default).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The SHA-256 digests of the consumer's keys, as `sha256:<64 hex
    /// digits>` (`printf %s "$KEY" | sha256sum`): the keys themselves need
    /// not be in the file.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// An environment variable holding one more key, as it is.
    #[schemars(with = "Option<String>")]
    pub key_env: Option<Spanned<String>>,
    /// A file (relative to routes.toml) whose first line is one more key.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
    /// Rate-limit policies (names under `[rate_limits.policies]`) counted
    /// per this consumer on every route it calls, on top of the route's
    /// own: its quotas.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub rate_limits: Vec<Spanned<String>>,
}

/// `[auth.issuers.NAME]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` claim of this issuer's tokens.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    /// Accepted `aud` values; a token must name one of them. Empty: `aud`
    /// is not checked (and a token that has one is still accepted).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub audiences: Vec<Spanned<String>>,
    /// Algorithms accepted from this issuer, e.g. `["RS256", "ES256"]`.
    #[schemars(with = "Vec<String>")]
    pub algorithms: Vec<Spanned<String>>,
    /// A JWKS document (`https://issuer/.well-known/jwks.json`), fetched at
    /// start and refreshed in the background.
    #[schemars(with = "Option<String>")]
    pub jwks_url: Option<Spanned<String>>,
    /// PEM public keys (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`), relative to routes.toml.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub pem_files: Vec<Spanned<String>>,
    /// Environment variable holding the HMAC secret (HS256/384/512), at
    /// least 32 bytes. An issuer has HMAC or public keys, never both.
    #[schemars(with = "Option<String>")]
    pub hmac_secret_env: Option<Spanned<String>>,
    /// Clock skew allowed for this issuer (default: `auth.leeway`).
    #[schemars(with = "Option<DurationText>")]
    pub leeway: Option<Spanned<String>>,
    /// Shortest time between background JWKS refreshes, whatever
    /// Cache-Control says (default 1m: an issuer answering `max-age=0` must
    /// not be fetched on every tick).
    #[schemars(with = "Option<DurationText>")]
    pub jwks_min_refresh: Option<Spanned<String>>,
    /// Longest time between background JWKS refreshes, and the refresh time
    /// when the answer has no max-age (default 1h: a key the issuer revoked
    /// stops working within the hour).
    #[schemars(with = "Option<DurationText>")]
    pub jwks_max_refresh: Option<Spanned<String>>,
    /// Tokens with an unknown `kid` refetch the JWKS from a bucket of 3
    /// fetches, refilled one per this interval (default 3s: a rotation is
    /// picked up within seconds, and a flood of made-up kids costs the issuer
    /// about 20 requests a minute).
    #[schemars(with = "Option<DurationText>")]
    pub jwks_refetch_interval: Option<Spanned<String>>,
    /// Time limit of one JWKS fetch (default 5s: an issuer that has not
    /// answered by then is down, and the cached keys go on).
    #[schemars(with = "Option<DurationText>")]
    pub jwks_timeout: Option<Spanned<String>>,
}

/// `[cors]`, and a route's `cors = { ... }` (its fields replace these).
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Set false to turn CORS off (on a route: for that route only)
    /// (default `true` wherever a `[cors]` table or route `cors` is given).
    pub enabled: Option<bool>,
    /// Exact origins (`https://app.example.com`), patterns with `*` standing
    /// for one or more host labels or a port (`https://*.example.com`,
    /// `http://localhost:*`), or `"*"` for any origin (default: none, no
    /// origin is allowed).
    #[schemars(with = "Option<Vec<String>>")]
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    /// Methods browsers may use cross-origin (default: every method the
    /// route table binds for the path); the preflight answer lists the
    /// methods both allowed here and bound for the path.
    #[schemars(with = "Option<Vec<String>>")]
    pub allowed_methods: Option<Vec<Spanned<String>>>,
    /// Request headers browsers may send besides the CORS-safelisted ones
    /// (default: `authorization`, `content-type`, `traceparent`,
    /// `tracestate`, `x-request-id`: credentials, the body type and the
    /// correlation headers the gateway reads).
    #[schemars(with = "Option<Vec<String>>")]
    pub allowed_headers: Option<Vec<Spanned<String>>>,
    /// Response headers scripts may read besides the CORS-safelisted ones
    /// (default: `ratelimit`, `ratelimit-policy`, `retry-after`,
    /// `traceresponse`, `www-authenticate`, `x-request-id`: the rate-limit
    /// and authentication answers and the correlation headers).
    #[schemars(with = "Option<Vec<String>>")]
    pub exposed_headers: Option<Vec<Spanned<String>>>,
    /// Let browsers send cookies and read answers to credentialed requests
    /// (default `false`). Not with `"*"` among the origins.
    pub allow_credentials: Option<bool>,
    /// How long browsers may cache a preflight answer (default 10m: spares
    /// most preflights, while a policy change still shows soon).
    #[schemars(with = "Option<DurationText>")]
    pub max_age: Option<Spanned<String>>,
}

/// `[rate_limits]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Named quotas; routes and `rate_limits.default` refer to them by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RateLimitPolicyConfig>")]
    pub policies: BTreeMap<String, Spanned<RateLimitPolicyConfig>>,
    /// Policies applied to routes that do not set `rate_limit`; none when empty.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub default: Vec<Spanned<String>>,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` / `Forwarded` header is
    /// believed when finding the client's address; without any, the client
    /// is the TCP peer.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The header trusted proxies name the client in: `x-forwarded-for` or
    /// `forwarded` (RFC 7239) (default `x-forwarded-for`).
    #[schemars(with = "Option<String>")]
    pub client_ip_header: Option<Spanned<String>>,
    /// IPv6 clients are counted by this many leading bits of their address,
    /// 1 to 128; IPv4 clients by their whole address (default 64: the network
    /// one subscriber is given, RFC 6177, inside which a host picks new
    /// privacy addresses at will).
    #[schemars(with = "Option<u8>")]
    pub ipv6_prefix: Option<Spanned<u8>>,
    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset`, besides the
    /// IETF `RateLimit` and `RateLimit-Policy` fields.
    #[serde(default)]
    pub legacy_headers: bool,
    /// Keys kept per policy at most; past it, idle keys are dropped at once
    /// and, if that is not enough, all of them (default 1000000: about 100 MB
    /// of buckets at worst, more distinct clients than one replica serves at once).
    #[schemars(with = "Option<usize>")]
    pub max_keys: Option<Spanned<usize>>,
    /// How often idle keys are dropped (default 10s: keeps the map near the
    /// clients active in the last few seconds without sweeping constantly).
    #[schemars(with = "Option<DurationText>")]
    pub sweep_interval: Option<Spanned<String>>,
}

/// `[rate_limits.policies.NAME]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    /// What is counted: `ip`, `subject` (the JWT `sub`; the IP when there is
    /// none), `header:<name>` (e.g. an API key), or `route`.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// Requests allowed per `per`, sustained. At least 1.
    #[schemars(with = "u32")]
    pub rate: Spanned<u32>,
    /// The period `rate` is counted over (default 1s).
    #[schemars(with = "Option<DurationText>")]
    pub per: Option<Spanned<String>>,
    /// Requests allowed at once after a quiet period (default `rate`).
    #[schemars(with = "Option<u32>")]
    pub burst: Option<Spanned<u32>>,
    /// `global`: one bucket per key across every route using the policy;
    /// `route`: a bucket per key and route (default `global`).
    #[schemars(with = "Option<String>")]
    pub scope: Option<Spanned<String>>,
    /// `local`: buckets in this process, so each replica allows the whole
    /// rate; `redis`: buckets in the `[redis]` store, shared by every
    /// replica, so the rate holds across all of them (default `local`).
    #[schemars(with = "Option<String>")]
    pub store: Option<Spanned<String>>,
}

/// `[redis]`: the store of rate-limit policies with `store = "redis"`
/// (docs/edge-security.md). The gateway starts and serves whether Redis is
/// up or not: while it is down, decisions fall back (see `fail_closed`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db` (or `redis+unix:///path`); plain
    /// TCP, no TLS. One of `url` and `url_env` is needed.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// An environment variable holding the URL (e.g. from a Kubernetes
    /// Secret, when it carries a password); read at each load.
    #[schemars(with = "Option<String>")]
    pub url_env: Option<Spanned<String>>,
    /// Multiplexed connections, 1 to 64; each pipelines every decision in
    /// flight on it (default 2: a slow answer on one does not hold up all).
    #[schemars(with = "Option<usize>")]
    pub pool_size: Option<Spanned<usize>>,
    /// The longest a request waits for a decision; past it the decision
    /// falls back (default 20ms: a decision on a LAN takes well under a
    /// millisecond). At most 10s.
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// While Redis does not answer: `false` decides with the policy's local
    /// limiter (each replica then allows the whole rate); `true` refuses
    /// with 503 UNAVAILABLE (default `false`: an outage of Redis does not
    /// become an outage of the API).
    #[serde(default)]
    pub fail_closed: bool,
    /// Prefix of every key written (default `gateway:rl:`); keys are
    /// `<prefix><policy>:<32 hex digits>`.
    #[schemars(with = "Option<String>")]
    pub key_prefix: Option<Spanned<String>>,
}

/// `[limits]`: bounds on what one client may send and hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query), in bytes (414 beyond)
    /// (default 8192: browsers and proxies commonly cap URLs near 8 KB).
    #[schemars(with = "Option<usize>")]
    pub max_url_bytes: Option<Spanned<usize>>,
    /// Most request headers, as sent (431 beyond) (default 64: browsers send
    /// 10-20, and below 100 hyper keeps its header tables on the stack).
    #[schemars(with = "Option<usize>")]
    pub max_headers: Option<Spanned<usize>>,
    /// Largest total of header names and values, in bytes (431 beyond)
    /// (default 32768, nginx's: room for big cookies and tokens).
    #[schemars(with = "Option<usize>")]
    pub max_header_bytes: Option<Spanned<usize>>,
    /// Deepest JSON nesting of a request body (400 beyond), at most 120
    /// (default 64: real APIs nest a handful of levels).
    #[schemars(with = "Option<usize>")]
    pub max_json_depth: Option<Spanned<usize>>,
    /// From the request's arrival to the answer's headers (504 beyond)
    /// (default 60s: above the default backend deadline, with room for
    /// retries and a slow upload).
    #[schemars(with = "Option<DurationText>")]
    pub request_timeout: Option<Spanned<String>>,
    /// Time to receive a request's headers, from accept or, on a kept-alive
    /// HTTP/1.1 connection, from the previous answer; the connection is
    /// closed beyond (default 10s: slowloris).
    #[schemars(with = "Option<DurationText>")]
    pub header_read_timeout: Option<Spanned<String>>,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed (HTTP/1.1 and HTTP/2) (default 60s: about what browsers
    /// keep idle connections for, and what cloud load balancers expect).
    #[schemars(with = "Option<DurationText>")]
    pub idle_timeout: Option<Spanned<String>>,
    /// Open client connections at most; more wait in the listen backlog.
    /// Read at start only (default 10000: enough for a busy replica).
    #[schemars(with = "Option<usize>")]
    pub max_connections: Option<Spanned<usize>>,
    /// HTTP/2 streams in flight per connection (default 100, hyper's and
    /// most servers').
    #[schemars(with = "Option<u32>")]
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Bytes a multipart body may hold before its first boundary (400
    /// beyond) (default 4096: browsers send none, and anything longer would
    /// be buffered).
    #[schemars(with = "Option<usize>")]
    pub max_multipart_preamble_bytes: Option<Spanned<usize>>,
    /// Bytes of one multipart part's headers (413 beyond) (default 8192: a
    /// Content-Disposition with a long file name fits).
    #[schemars(with = "Option<usize>")]
    pub max_multipart_part_header_bytes: Option<Spanned<usize>>,
    /// Bytes/s a request body read whole must keep up, after a 5 s grace
    /// (408 and the connection closed below it); 0 turns it off.
    /// Client-streaming bodies are exempt (default 1024: a byte-a-second body
    /// would hold its connection for the whole `request_timeout`).
    #[schemars(with = "Option<u64>")]
    pub min_body_rate: Option<Spanned<u64>>,
}
