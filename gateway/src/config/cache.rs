//! The response cache and degraded answers in routes.toml: `[cache]` (the
//! gateway-wide bound) and the route keys `cache` and `fallback`. They are
//! checked against the route's method in `cache::compile`, which reports
//! through the same file:line errors as the rest of the file
//! (docs/routes.md, "Caching and fallbacks").

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::reference::DurationText;

/// 32 MiB: room for tens of thousands of typical JSON answers (a few hundred
/// bytes to a few KB each) while staying a small share of a gateway's
/// memory; operators with hot, large answers raise it.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// `[cache]`: what every route's cached answers share.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most bytes cached answers may take, keys, bodies and headers
    /// counted, over all routes; the least recently and least often used
    /// entries are evicted beyond (default 33554432, 32 MiB: tens of
    /// thousands of typical JSON answers, a small share of a gateway's
    /// memory). An answer larger than an eighth of it is not cached, so one
    /// answer cannot flush the rest. At least 4096.
    #[schemars(with = "Option<u64>")]
    pub max_bytes: Option<Spanned<u64>>,
}

/// A route's `cache = { ttl = "30s", vary = ["authorization"] }`: answers
/// of GET routes to unary methods are kept and served again without a
/// backend call.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// How long an answer is served from the cache (e.g. `"30s"`). Entries
    /// are keyed on the route and the request message (equivalent query
    /// strings share one), plus the `vary` headers.
    #[schemars(with = "DurationText")]
    pub ttl: Spanned<String>,
    /// Request headers whose values split the cache key, e.g.
    /// `["authorization"]` so each caller has its own entries, or
    /// `["accept-language"]` (default: none, every caller shares the route's
    /// entries).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub vary: Vec<Spanned<String>>,
    /// `max-age` of the `Cache-Control` answers carry, for clients and
    /// shared caches downstream (default: `ttl`). `"0s"` tells them not to
    /// reuse answers while the gateway still does.
    #[schemars(with = "Option<DurationText>")]
    pub max_age: Option<Spanned<String>>,
    /// Whether a client's `Cache-Control: no-cache`, `no-store` or
    /// `max-age=0` (or `Pragma: no-cache`) skips the cached answer: the
    /// backend is called and the entry refreshed (default true, as RFC 9111
    /// asks; false keeps a client from sending every request through to
    /// the backend).
    #[serde(default = "yes")]
    pub allow_no_cache: bool,
    /// Keep answers this long past `ttl`, never served as fresh, to answer
    /// with when the backend is unavailable (circuit open, no endpoint,
    /// deadline exceeded, UNAVAILABLE after retries): the answer carries
    /// `Gateway-Degraded: stale` and a `Warning` (default: none, entries go
    /// at `ttl`).
    #[schemars(with = "Option<DurationText>")]
    pub stale_if_error: Option<Spanned<String>>,
}

/// A route's `fallback = { status = 200, body = { ... } }`: the answer sent
/// when the backend is unavailable (circuit open, no endpoint, deadline
/// exceeded, UNAVAILABLE after retries) and no stale cached answer is
/// there to send.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// The answer's HTTP status (default: the route's success status, 200
    /// unless `success_status` says otherwise).
    #[schemars(with = "Option<u16>")]
    pub status: Option<Spanned<u16>>,
    /// The reply message, as a TOML table or a JSON string, in the route's
    /// reply type (checked when the config loads); it is sent as the
    /// backend's reply would be (`response_body` applies), with
    /// `Gateway-Degraded: static`.
    #[schemars(with = "super::reference::FallbackBody")]
    pub body: Spanned<toml::Value>,
}

fn yes() -> bool {
    true
}
