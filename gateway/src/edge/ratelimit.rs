//! Rate limits: GCRA token buckets from `governor`, one keyed limiter per
//! named policy, and the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers, structured-field syntax).
//!
//! Keys are 64-bit hashes (with a per-process random seed, so clients cannot
//! aim for collisions) of the client IP, the JWT subject, a header value or
//! the route: every entry has the same small size whatever the client sends.
//! Memory stays bounded under millions of distinct keys: a background task
//! drops idle buckets (`retain_recent`) every `sweep_interval`, and a policy
//! that still holds more than `max_keys` is reset whole.
//!
//! A policy with `store = "redis"` decides in the shared Redis store
//! ([`super::redis_store`]), with keys every replica derives alike, and
//! keeps its local limiter for when Redis does not answer in time.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::redis_store::{Fallback, RedisStore};

/// Default cap of keys per policy: about 100 MB of buckets in the worst
/// case, far more distinct clients than one gateway replica serves at once.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Idle buckets are dropped this often. A bucket is idle once it has refilled,
/// which for usual quotas is seconds; 10 s keeps the map near the number of
/// clients active in the last few seconds without sweeping constantly.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How many checks pass between two looks at a policy's size (a look
/// visits every shard of the map, so not on every request).
const SIZE_CHECK_EVERY: u64 = 1024;

type Limiter =
    RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

/// What a policy counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Ip,
    /// The JWT `sub`; the client IP for requests without one.
    Subject,
    /// A header's value (an API key); the client IP when it is absent.
    Header(HeaderName),
    /// Every request on the route counts against one bucket.
    Route,
    /// The consumer an API key named, else the JWT `sub`, else the client IP.
    Consumer,
}

impl KeyKind {
    pub fn parse(s: &str) -> Result<KeyKind, String> {
        let s = s.trim();
        match s {
            "ip" => Ok(KeyKind::Ip),
            "subject" => Ok(KeyKind::Subject),
            "route" => Ok(KeyKind::Route),
            "consumer" => Ok(KeyKind::Consumer),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                    .map(KeyKind::Header)
                    .map_err(|_| format!("\"{h}\" is not a header name")),
                None => Err(format!(
                    "\"{s}\" is not a key; use \"ip\", \"subject\", \"consumer\", \"header:<name>\" or \"route\""
                )),
            },
        }
    }

    /// Subject and consumer keys need the caller proven, so they are
    /// checked after authentication.
    pub fn after_auth(&self) -> bool {
        matches!(self, KeyKind::Subject | KeyKind::Consumer)
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Ip => f.write_str("ip"),
            KeyKind::Subject => f.write_str("subject"),
            KeyKind::Header(h) => write!(f, "header:{h}"),
            KeyKind::Route => f.write_str("route"),
            KeyKind::Consumer => f.write_str("consumer"),
        }
    }
}

/// A policy as configured; two equal definitions share state across a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDef {
    pub name: String,
    pub key: KeyKind,
    /// Requests per `per`, sustained.
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    /// One bucket per key and route, rather than per key.
    pub per_route: bool,
    pub max_keys: usize,
    /// Buckets in the `[redis]` store, shared between replicas.
    pub shared: bool,
}

impl PolicyDef {
    /// Time to earn one request back.
    pub fn interval(&self) -> Duration {
        self.per / self.rate.max(1)
    }

    /// The window of the `RateLimit-Policy` item: the time to refill a whole
    /// burst, in which `burst` requests are allowed (whole seconds, at least 1).
    pub fn window_secs(&self) -> u64 {
        ceil_secs(self.interval() * self.burst).max(1)
    }
}

/// An API-key consumer as the limiter counts it: its name keys its
/// quotas, the policies counted for it on every route. Authentication puts
/// it on the request.
#[derive(Debug)]
pub struct Quotas {
    pub consumer: Arc<str>,
    pub policies: Vec<Arc<Policy>>,
}

/// One policy's buckets.
pub struct Policy {
    pub def: PolicyDef,
    /// The shared store, for a policy with `store = "redis"`.
    pub store: Option<Arc<RedisStore>>,
    limiter: ArcSwap<Limiter>,
    checks: AtomicU64,
    resets: AtomicU64,
    sweep_now: Arc<tokio::sync::Notify>,
    /// The `RateLimit-Policy` list item, precomputed.
    policy_item: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("def", &self.def).finish()
    }
}

pub use super::redis_store::Outcome;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Policy {
    pub fn new(def: PolicyDef) -> Policy {
        Policy::with_store(def, None)
    }

    /// A policy deciding in `store` when it has one.
    pub fn with_store(def: PolicyDef, store: Option<Arc<RedisStore>>) -> Policy {
        let policy_item = format!(
            "{};q={};w={}",
            sf_string(&def.name),
            def.burst,
            def.window_secs()
        );
        Policy {
            store,
            limiter: ArcSwap::from_pointee(new_limiter(&def)),
            def,
            checks: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            sweep_now: Arc::new(tokio::sync::Notify::new()),
            policy_item,
        }
    }

    /// Counts one request against `key`.
    pub fn check(&self, key: u64) -> Outcome {
        let limiter = self.limiter.load();
        if self.checks.fetch_add(1, Ordering::Relaxed) % SIZE_CHECK_EVERY == SIZE_CHECK_EVERY - 1
            && limiter.len() > self.def.max_keys
        {
            self.sweep_now.notify_one();
        }
        match limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.def.burst.saturating_sub(remaining);
                Outcome {
                    allowed: true,
                    remaining,
                    reset_secs: ceil_secs(self.def.interval() * used),
                }
            }
            Err(not_until) => {
                // The limiter's own clock, rounded up, at least 1 s: a
                // client that waits Retry-After seconds is then let through.
                let wait = not_until.wait_time_from(limiter.clock().now());
                Outcome {
                    allowed: false,
                    remaining: 0,
                    reset_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.limiter.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times the policy was reset whole for holding more than `max_keys`.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Drops idle buckets; resets the policy if it still holds too many.
    pub fn sweep(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let len = limiter.len();
        if len > self.def.max_keys {
            // Forgetting every bucket lets each client a fresh burst once;
            // the alternative, refusing new clients, would let one flood
            // of spoofed keys lock everyone out.
            self.limiter.store(Arc::new(new_limiter(&self.def)));
            self.resets.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                policy = %self.def.name,
                keys = len,
                max_keys = self.def.max_keys,
                "rate-limit policy held more keys than its cap after dropping idle ones; reset"
            );
        }
    }
}

fn new_limiter(def: &PolicyDef) -> Limiter {
    let burst = NonZeroU32::new(def.burst.max(1)).expect("at least 1");
    let quota = Quota::with_period(def.interval().max(Duration::from_nanos(1)))
        .expect("a positive period")
        .allow_burst(burst);
    RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
}

/// An sf-string: `"name"` with `"` and `\` escaped; other characters that an
/// sf-string cannot hold are dropped (policy names are checked at load).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}

/// Every policy of a snapshot, with the hashing seed and a sweeper task.
pub struct RateLimits {
    pub policies: Vec<Arc<Policy>>,
    pub legacy_headers: bool,
    pub sweep_interval: Duration,
    /// IPv6 clients are keyed by this many leading bits (`ip` keys, and the
    /// address other keys fall back to).
    pub ipv6_prefix: u8,
    /// The `[redis]` store, when a policy uses it.
    pub store: Option<Arc<RedisStore>>,
    seed: std::hash::RandomState,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("policies", &self.policies)
            .finish()
    }
}

impl RateLimits {
    /// `previous` policies with an identical definition (and the same
    /// store) are kept, buckets and all, so a reload does not hand every
    /// client a fresh burst. Shared policies decide in `store`.
    pub fn new(
        defs: Vec<PolicyDef>,
        legacy_headers: bool,
        sweep_interval: Duration,
        previous: Option<&RateLimits>,
        store: Option<Arc<RedisStore>>,
    ) -> RateLimits {
        let policies = defs
            .into_iter()
            .map(|def| {
                let store = store.clone().filter(|_| def.shared);
                let same_store = |old: &Policy| match (&old.store, &store) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                previous
                    .and_then(|p| {
                        p.policies
                            .iter()
                            .find(|old| old.def == def && same_store(old))
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Policy::with_store(def, store)))
            })
            .collect();
        let limits = RateLimits {
            policies,
            legacy_headers,
            sweep_interval,
            ipv6_prefix: super::client_ip::DEFAULT_IPV6_PREFIX,
            store,
            // Kept across reloads, or carried-over buckets would be keyed anew.
            seed: previous.map(|p| p.seed.clone()).unwrap_or_default(),
        };
        limits.spawn_sweepers();
        limits
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.iter().find(|p| p.def.name == name)
    }

    /// A sweeper per policy, holding it weakly: it ends when no snapshot
    /// uses the policy any more. Policies carried over already have one.
    fn spawn_sweepers(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for policy in &self.policies {
            if Arc::strong_count(policy) > 1 {
                continue;
            }
            let weak: Weak<Policy> = Arc::downgrade(policy);
            let wake = policy.sweep_now.clone();
            let every = self.sweep_interval;
            rt.spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        () = wake.notified() => {}
                    }
                    let Some(p) = weak.upgrade() else { return };
                    // Sweeping takes each shard's write lock in turn: off the
                    // async workers, so requests on other shards go on.
                    let _ = tokio::task::spawn_blocking(move || p.sweep()).await;
                }
            });
        }
    }

    /// The hash of a key's text (or address bytes), seeded per process.
    pub fn hash_key(&self, route: Option<u64>, parts: &[&[u8]]) -> u64 {
        let mut h = self.seed.build_hasher();
        route.hash(&mut h);
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        h.finish()
    }
}

/// The rate-limit fields of one answer, collected over the policies checked.
#[derive(Debug, Default)]
pub struct Fields {
    policy: String,
    state: String,
    /// The most constraining outcome, for the legacy headers and Retry-After.
    tightest: Option<(u32, u32, u64)>,
}

impl Fields {
    pub fn add(&mut self, policy: &Policy, outcome: &Outcome) {
        if !self.policy.is_empty() {
            self.policy.push_str(", ");
            self.state.push_str(", ");
        }
        self.policy.push_str(&policy.policy_item);
        let _ = write!(
            self.state,
            "{};r={};t={}",
            sf_string(&policy.def.name),
            outcome.remaining,
            outcome.reset_secs
        );
        let replace = match self.tightest {
            None => true,
            Some((_, remaining, reset)) => {
                outcome.remaining < remaining
                    || (outcome.remaining == remaining && outcome.reset_secs > reset)
            }
        };
        if replace {
            self.tightest = Some((policy.def.burst, outcome.remaining, outcome.reset_secs));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
    }

    /// Writes `RateLimit-Policy`, `RateLimit` and, if asked, the legacy
    /// fields onto an answer. Where a layer below wrote its own (limits
    /// keyed by subject, checked after authentication), these go first in
    /// the lists, and the legacy fields keep the tighter of the two.
    pub fn write(&self, legacy: bool, resp: &mut http::Response<axum::body::Body>) {
        if self.is_empty() {
            return;
        }
        let below = resp.extensions_mut().insert(Written).is_some();
        let out = resp.headers_mut();
        for (name, mine) in [
            ("ratelimit-policy", &self.policy),
            ("ratelimit", &self.state),
        ] {
            let name = HeaderName::from_static(name);
            let value = match out.get(&name).filter(|_| below) {
                Some(theirs) => {
                    HeaderValue::from_bytes(&[mine.as_bytes(), b", ", theirs.as_bytes()].concat())
                }
                None => HeaderValue::from_str(mine),
            };
            if let Ok(v) = value {
                out.insert(name, v);
            }
        }
        let Some((limit, remaining, reset)) = self.tightest.filter(|_| legacy) else {
            return;
        };
        let read = |out: &HeaderMap, name: &str| {
            out.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if below {
            if let (Some(r), Some(t)) = (
                read(out, "x-ratelimit-remaining"),
                read(out, "x-ratelimit-reset"),
            ) {
                if r < u64::from(remaining) || (r == u64::from(remaining) && t >= reset) {
                    return;
                }
            }
        }
        out.insert(HeaderName::from_static("x-ratelimit-limit"), limit.into());
        out.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            remaining.into(),
        );
        out.insert(HeaderName::from_static("x-ratelimit-reset"), reset.into());
    }
}

/// Marks an answer whose rate-limit fields a layer has written.
#[derive(Debug, Clone, Copy)]
struct Written;

/// Which of a route's rate limits a layer checks: those that need no token
/// run before authentication (a flood of bad tokens is limited before it
/// costs a signature check), those keyed by the JWT subject after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    BeforeAuth,
    AfterAuth,
}

/// The fields to write on the answer, whatever it is.
pub struct Report {
    fields: Fields,
    legacy: bool,
}

impl super::layer::Annotate for Report {
    fn annotate(self, resp: &mut http::Response<axum::body::Body>) {
        self.fields.write(self.legacy, resp);
    }
}

impl<S, R> tower::Service<http::Request<axum::body::Body>> for super::layer::Policed<S, Phase, R>
where
    R: super::layer::RouteView,
    S: super::layer::Inner + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        super::layer::OnResponse<S::Future, Option<Report>>,
        super::layer::BoxFut,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let checked = req.extensions().get::<R>().and_then(|view| {
            let edge = &view.context().edge;
            let checked = check_route(edge, view.policy()?, self.policy, &req)?;
            Some((checked, edge.rate_limits.legacy_headers))
        });
        use futures_util::future::Either;
        match checked {
            None => Either::Left(super::layer::OnResponse::inner(self.inner.call(req), None)),
            Some((Checked::Done(fields, Ok(())), legacy)) => {
                Either::Left(super::layer::OnResponse::inner(
                    self.inner.call(req),
                    Some(Report { fields, legacy }),
                ))
            }
            Some((Checked::Done(fields, Err(e)), legacy)) => {
                let mut resp = e.into_response();
                fields.write(legacy, &mut resp);
                Either::Right(super::layer::refuse_after_body(req, resp))
            }
            // Boxed, and only for requests a shared policy counts: the
            // local path keeps its unboxed future.
            Some((Checked::Shared(fields, rest), legacy)) => {
                let mut inner = self.take_inner();
                Either::Right(Box::pin(async move {
                    let (fields, verdict) = decide_shared(fields, rest).await;
                    match verdict {
                        Ok(()) => {
                            let Ok(mut resp) = tower::Service::call(&mut inner, req).await;
                            fields.write(legacy, &mut resp);
                            Ok(resp)
                        }
                        Err(e) => {
                            let mut resp = e.into_response();
                            fields.write(legacy, &mut resp);
                            super::layer::refuse_after_body(req, resp).await
                        }
                    }
                }))
            }
        }
    }
}

/// A route's limits after checking those that need no await.
enum Checked {
    /// Every limit decided (all local), or one refused.
    Done(Fields, Result<(), crate::error::Error>),
    /// The limits from the first shared one on, with their keys, to be
    /// decided in order after awaiting the store.
    Shared(Fields, Vec<Pending>),
}

/// One limit still to decide, keyed for either store (the local key is
/// the fallback's).
struct Pending {
    policy: Arc<Policy>,
    local: u64,
    shared: Option<String>,
}

/// The refusal of `p` for `outcome`, counted.
fn refusal(p: &Policy, outcome: &Outcome) -> crate::error::Error {
    metrics::counter!(crate::telemetry::metrics::RATE_LIMITED, "policy" => p.def.name.clone())
        .increment(1);
    crate::error::Error::RateLimited {
        message: format!(
            "rate limit \"{}\" exceeded ({} requests per {} ms, burst {}); retry in {} s",
            p.def.name,
            p.def.rate,
            p.def.per.as_millis(),
            p.def.burst,
            outcome.reset_secs
        ),
        retry_after: outcome.reset_secs,
    }
}

/// Decides `rest` in order, shared policies in their store, until one
/// refuses. A store that does not answer in time falls back to the
/// policy's local limiter, or refuses with 503 when it fails closed.
async fn decide_shared(
    mut fields: Fields,
    rest: Vec<Pending>,
) -> (Fields, Result<(), crate::error::Error>) {
    for item in rest {
        let p = &item.policy;
        let outcome = match (&p.store, &item.shared) {
            (Some(store), Some(key)) => {
                match store.decide(key, p.def.interval(), p.def.burst).await {
                    Ok(o) => o,
                    Err(why) => {
                        store.count_fallback(&p.def.name, why);
                        if store.settings.fail_closed {
                            let refused = crate::error::Error::Refused {
                            code: tonic::Code::Unavailable,
                            message: format!(
                                "rate limit \"{}\" cannot be checked: its Redis store {} (redis.fail_closed is set)",
                                p.def.name,
                                match why {
                                    Fallback::Timeout => "did not answer in time",
                                    Fallback::Error => "failed",
                                    Fallback::Down => "is down",
                                }
                            ),
                        };
                            return (fields, Err(refused));
                        }
                        p.check(item.local)
                    }
                }
            }
            _ => p.check(item.local),
        };
        fields.add(p, &outcome);
        if !outcome.allowed {
            return (fields, Err(refusal(p, &outcome)));
        }
    }
    (fields, Ok(()))
}

/// The route's limits of `phase`, checked in order until one refuses or
/// one is shared (the rest is then decided by [`decide_shared`]); `None`
/// when the route has none of that phase.
fn check_route<B>(
    edge: &super::Edge,
    route: &super::RouteEdge,
    phase: Phase,
    req: &http::Request<B>,
) -> Option<Checked> {
    use std::net::IpAddr;
    let after = phase == Phase::AfterAuth;
    // After authentication, the consumer's own quotas count too, per it.
    // (Only routes that take API keys can have one: no lookup for the rest.)
    let consumer = if after && route.auth.credentials.api_key {
        req.extensions().get::<Arc<Quotas>>()
    } else {
        None
    };
    let quotas = consumer.map_or(&[][..], |c| &c.policies[..]);
    let mut limits = route
        .rate_limits
        .iter()
        .filter(|p| p.def.key.after_auth() == after)
        .map(|p| (p, false))
        .chain(quotas.iter().map(|p| (p, true)))
        .peekable();
    limits.peek()?;
    let client = req
        .extensions()
        .get::<super::client_ip::ClientIp>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.0);
    let (v4, v6);
    let ip: &[u8] = match super::client_ip::rate_limit_key(client, edge.rate_limits.ipv6_prefix) {
        IpAddr::V4(a) => {
            v4 = a.octets();
            &v4
        }
        IpAddr::V6(a) => {
            v6 = a.octets();
            &v6
        }
    };
    let verified = req.extensions().get::<super::jwt::Verified>();
    let subject = verified.and_then(|v| Some((v.issuer.iss.as_str(), v.subject()?)));
    // The local key, and the shared one for a policy with a store.
    let keyed = |p: &Policy, scope: Option<u64>, parts: &[&[u8]]| {
        (
            edge.rate_limits.hash_key(scope, parts),
            p.store.as_ref().map(|s| s.key(&p.def.name, scope, parts)),
        )
    };
    let keys_of = |p: &Policy, quota: bool| {
        let key_of = |parts: &[&[u8]]| keyed(p, p.def.per_route.then_some(route.route_key), parts);
        match (&p.def.key, consumer) {
            // A quota counts its consumer, whatever the policy's own key.
            (_, Some(c)) if quota => key_of(&[b"consumer", c.consumer.as_bytes()]),
            (KeyKind::Consumer, Some(c)) => key_of(&[b"consumer", c.consumer.as_bytes()]),
            (key, _) => match key {
                KeyKind::Ip => key_of(&[b"ip", ip]),
                KeyKind::Header(h) => match req.headers().get(h) {
                    Some(v) => key_of(&[b"h", v.as_bytes()]),
                    None => key_of(&[b"ip", ip]),
                },
                KeyKind::Route => keyed(p, Some(route.route_key), &[b"route"]),
                // Anonymous requests are counted by address.
                KeyKind::Subject | KeyKind::Consumer => match subject {
                    Some((iss, sub)) => key_of(&[b"sub", iss.as_bytes(), sub.as_bytes()]),
                    None => key_of(&[b"ip", ip]),
                },
            },
        }
    };
    let mut fields = Fields::default();
    while let Some((p, quota)) = limits.next() {
        if p.store.is_some() {
            let rest = std::iter::once((p, quota))
                .chain(limits)
                .map(|(p, quota)| {
                    let (local, shared) = keys_of(p, quota);
                    Pending {
                        policy: p.clone(),
                        local,
                        shared,
                    }
                })
                .collect();
            return Some(Checked::Shared(fields, rest));
        }
        let (key, _) = keys_of(p, quota);
        let outcome = p.check(key);
        fields.add(p, &outcome);
        if !outcome.allowed {
            return Some(Checked::Done(fields, Err(refusal(p, &outcome))));
        }
    }
    Some(Checked::Done(fields, Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(rate: u32, per: Duration, burst: u32, max_keys: usize) -> PolicyDef {
        PolicyDef {
            name: "t".into(),
            key: KeyKind::Ip,
            rate,
            per,
            burst,
            per_route: false,
            max_keys,
            shared: false,
        }
    }

    #[test]
    fn burst_then_refusal_with_retry_after_rounded_up() {
        let p = Policy::new(def(1, Duration::from_secs(10), 3, 100));
        let seen: Vec<Outcome> = (0..4).map(|_| p.check(7)).collect();
        assert!(seen[..3].iter().all(|o| o.allowed));
        assert_eq!(
            seen.iter().map(|o| o.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(!seen[3].allowed);
        // One request is earned back every 10 s.
        assert!((9..=10).contains(&seen[3].reset_secs), "{:?}", seen[3]);
        // Another key has its own bucket.
        assert!(p.check(8).allowed);
    }

    #[test]
    fn fields_use_structured_field_syntax() {
        let p = Policy::new(PolicyDef {
            name: "per-ip".into(),
            ..def(100, Duration::from_secs(60), 20, 100)
        });
        let mut f = Fields::default();
        let o = p.check(1);
        f.add(&p, &o);
        let mut resp = http::Response::new(axum::body::Body::empty());
        f.write(true, &mut resp);
        let h = resp.headers();
        // 20 requests per the 12 s it takes to earn 20 back at 100/min.
        assert_eq!(h["ratelimit-policy"], "\"per-ip\";q=20;w=12");
        assert_eq!(h["ratelimit"], "\"per-ip\";r=19;t=1");
        assert_eq!(h["x-ratelimit-limit"], "20");
        assert_eq!(h["x-ratelimit-remaining"], "19");
    }

    #[test]
    fn fields_of_two_layers_list_the_outer_first_and_keep_the_tighter_legacy_values() {
        let ip = Policy::new(PolicyDef {
            name: "per-ip".into(),
            ..def(100, Duration::from_secs(60), 20, 100)
        });
        let sub = Policy::new(PolicyDef {
            name: "per-sub".into(),
            ..def(10, Duration::from_secs(60), 2, 100)
        });
        let mut resp = http::Response::new(axum::body::Body::empty());
        // A backend's own `ratelimit` header is replaced, not merged.
        resp.headers_mut()
            .insert("ratelimit", HeaderValue::from_static("\"theirs\";r=1;t=1"));
        // The layer after authentication writes first (it is nearer the
        // handler), then the one before it.
        let mut inner = Fields::default();
        inner.add(&sub, &sub.check(1));
        inner.write(true, &mut resp);
        assert_eq!(resp.headers()["ratelimit"], "\"per-sub\";r=1;t=6");
        let mut outer = Fields::default();
        outer.add(&ip, &ip.check(1));
        outer.write(true, &mut resp);
        let h = resp.headers();
        assert_eq!(
            h["ratelimit-policy"],
            "\"per-ip\";q=20;w=12, \"per-sub\";q=2;w=12"
        );
        assert_eq!(h["ratelimit"], "\"per-ip\";r=19;t=1, \"per-sub\";r=1;t=6");
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "1");
    }

    #[test]
    fn sweep_drops_idle_keys_and_resets_past_the_cap() {
        // 1000/s with a burst of 1: a bucket is idle again after 1 ms.
        let p = Policy::new(def(1000, Duration::from_secs(1), 1, 500));
        for k in 0..400u64 {
            p.check(k);
        }
        assert_eq!(p.len(), 400);
        std::thread::sleep(Duration::from_millis(5));
        p.sweep();
        assert_eq!(p.len(), 0, "idle buckets are dropped");
        // Busy buckets (slow refill) past the cap reset the policy.
        let slow = Policy::new(def(1, Duration::from_secs(60), 1, 100));
        for k in 0..300u64 {
            slow.check(k);
        }
        slow.sweep();
        assert_eq!((slow.len(), slow.resets()), (0, 1));
    }

    /// Resident memory of this process, from /proc (Linux only).
    fn rss_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_keys() {
        // 600k distinct keys, never seen twice, against a policy capped at
        // 50k keys whose buckets stay busy for a minute (so retain_recent
        // alone cannot drop them): the cap must hold the map, and memory,
        // down. The sweep runs every 100k keys, as the background task would.
        let p = Policy::new(def(1, Duration::from_secs(60), 5, 50_000));
        let before = rss_bytes();
        let mut peak_len = 0;
        for k in 0..600_000u64 {
            p.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            if k % 100_000 == 99_999 {
                peak_len = peak_len.max(p.len());
                p.sweep();
            }
        }
        let after = rss_bytes();
        assert!(p.len() <= 50_000, "{} keys kept", p.len());
        assert!(peak_len <= 100_000, "peak {peak_len}");
        assert!(p.resets() >= 5);
        if let (Some(b), Some(a)) = (before, after) {
            let grown = a.saturating_sub(b);
            eprintln!(
                "600000 distinct keys, cap 50000: peak {peak_len} keys, RSS grew {} KiB",
                grown / 1024
            );
            // 100k entries of (u64, u64) plus map overhead are a few MB.
            assert!(grown < 64 * 1024 * 1024, "RSS grew by {grown} bytes");
        }
    }
}
