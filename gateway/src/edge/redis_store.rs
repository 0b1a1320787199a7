//! The Redis store of rate-limit policies with `store = "redis"`: one
//! bucket per key shared by every replica, so a limit of N/s means N/s
//! across all of them.
//!
//! One decision is one round trip: `EVALSHA` of a Lua script that runs GCRA
//! atomically in Redis on Redis' own clock (replicas' clocks may disagree)
//! and sets the key's expiry to the moment its bucket is full again; a
//! Redis that lost the script (restart, `SCRIPT FLUSH`) answers NOSCRIPT
//! and the same call goes again as `EVAL`, which caches it anew. Calls go
//! over a small pool of multiplexed connections (redis-rs), each of which
//! pipelines whatever requests are in flight on it.
//!
//! The fallback contract: a decision never waits longer than `timeout`.
//! One that does not come back in time, or fails, is made by the policy's
//! local limiter instead (or refused with 503 when `fail_closed`). After
//! [`FAILURES_TO_DOWN`] failures in a row the store is marked down and no
//! request waits on it any more; a background task reconnects on a backoff
//! and marks it up once Redis answers a `PING` and loads the script.
//! Fallbacks are counted per policy and reason
//! (`gateway_ratelimit_store_fallbacks_total`), the state is the gauge
//! `gateway_ratelimit_store_up` and `/admin/rate_limits`.
//!
//! Keys are the same on every replica: `key_prefix`, the policy name and
//! the hex of the first 128 bits of SHA-256 over the key's parts (each
//! length-prefixed). SHA-256 keeps a client from aiming two of its keys at
//! one bucket (or at another client's) without a seed that every replica
//! would have to share; the policy name keeps policies apart and lets an
//! operator find a policy's keys.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

/// The verdict on one request for one policy, local or shared. Defined here
/// (and re-exported by `ratelimit`) so that the store needs nothing from the
/// policy module that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the bucket is full again (allowed) or until one more
    /// request is allowed (refused).
    pub reset_secs: u64,
}

/// Two multiplexed connections: each pipelines every decision in flight on
/// it, so more add little but sockets; two keep a slow answer on one from
/// holding up all the others.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// More connections than this is a typo.
pub const MAX_POOL_SIZE: usize = 64;
/// A decision on a LAN takes well under a millisecond; 20 ms is the most a
/// request should pay for a store that is slow, after which the local
/// limiter decides.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
pub const DEFAULT_KEY_PREFIX: &str = "gateway:rl:";
/// Failures in a row that mark the store down: one lost answer is noise,
/// three in a row is a Redis that is gone or stuck.
pub const FAILURES_TO_DOWN: u32 = 3;
/// Reconnection attempts while down start this far apart and double up to
/// [`PROBE_MAX`]: a restarted Redis is used again within about a second,
/// and a dead one costs a connection attempt every few seconds.
const PROBE_MIN: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(2);
/// Connecting (and loading the script) takes milliseconds when Redis is up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Decisions in flight per connection at most; more fail at once (and fall
/// back) instead of queueing without bound behind a stuck Redis.
const IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// GCRA in Redis. KEYS[1]: the bucket; ARGV[1]: the emission interval in
/// microseconds (time to earn one request back); ARGV[2]: the burst. The
/// bucket holds its theoretical arrival time (TAT) in microseconds of
/// Redis' clock. Answers {allowed 1|0, remaining, microseconds}: until the
/// bucket is full again when allowed, until one more request is allowed
/// when refused. `replicate_commands` lets Redis 3.2 to 4 write after
/// `TIME` (a no-op since 5). [`gcra`] is the same arithmetic, unit-tested; the
/// end-to-end tests run this script against both.
pub const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
if ttl_ms < 1 then ttl_ms = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((now + interval * burst - new_tat) / interval), new_tat - now}
";

/// What [`SCRIPT`] answers for a bucket holding `tat` (None: no key) at
/// `now`, and the TAT it stores (None when refused): the arithmetic in
/// Rust, to test it where a test can set the clock.
pub fn gcra(
    now: u64,
    tat: Option<u64>,
    interval: u64,
    burst: u64,
) -> ((bool, u64, u64), Option<u64>) {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let allow_at = new_tat.saturating_sub(interval * burst);
    if now < allow_at {
        return ((false, 0, allow_at - now), None);
    }
    let remaining = (now + interval * burst - new_tat) / interval.max(1);
    ((true, remaining, new_tat - now), Some(new_tat))
}

/// `[redis]`, compiled.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The URL as given (it may hold a password: never shown).
    pub url: String,
    pub pool_size: usize,
    pub timeout: Duration,
    pub fail_closed: bool,
    pub key_prefix: String,
}

/// Without the URL, which may hold a password.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("fail_closed", &self.fail_closed)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Why a decision was not made by Redis: the label of the fallback metric
/// (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No answer within `timeout`.
    Timeout,
    /// Redis answered with an error, or the connection broke.
    Error,
    /// The store is marked down: Redis was not asked.
    Down,
}

impl Fallback {
    pub const ALL: [Fallback; 3] = [Fallback::Timeout, Fallback::Error, Fallback::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Error => "error",
            Fallback::Down => "down",
        }
    }
}

#[derive(Debug, Default)]
struct Status {
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    /// When the store last turned up or down.
    changed_at: Option<SystemTime>,
}

/// One Redis store, shared by the policies that use it and kept across
/// reloads that leave `[redis]` unchanged.
pub struct RedisStore {
    pub settings: RedisSettings,
    client: redis::Client,
    conns: Vec<ArcSwapOption<MultiplexedConnection>>,
    next: AtomicUsize,
    up: AtomicBool,
    failures: AtomicU32,
    /// Wakes the prober when the store goes down.
    wake: Arc<tokio::sync::Notify>,
    status: Mutex<Status>,
    fallbacks: [AtomicU64; 3],
    decisions: AtomicU64,
    sha: String,
    /// What the decision's timer is set to: `timeout` less the millisecond
    /// tokio's timer rounds every deadline up by, so that a decision waits
    /// `timeout` at most, not up to a millisecond more.
    wait: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("pool_size", &self.settings.pool_size)
            .field("timeout", &self.settings.timeout)
            .field("up", &self.is_up())
            .finish()
    }
}

impl RedisStore {
    /// Checks the URL (nothing is connected here: a config loads whether
    /// Redis is up or not) and, inside a runtime, starts the task that
    /// connects and reconnects.
    pub fn new(settings: RedisSettings) -> Result<Arc<RedisStore>, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| {
            format!("not a Redis URL ({e}); write e.g. \"redis://127.0.0.1:6379/0\"")
        })?;
        let wait = settings
            .timeout
            .saturating_sub(Duration::from_millis(1))
            .max(Duration::from_micros(500));
        let store = Arc::new(RedisStore {
            conns: (0..settings.pool_size)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            settings,
            client,
            next: AtomicUsize::new(0),
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            status: Mutex::new(Status::default()),
            fallbacks: Default::default(),
            decisions: AtomicU64::new(0),
            sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
            wait,
        });
        store.spawn_prober();
        Ok(store)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The Redis key of a bucket: the same on every replica.
    pub fn key(&self, policy: &str, scope: Option<u64>, parts: &[&[u8]]) -> String {
        use aws_lc_rs::digest::{Context, SHA256};
        let mut ctx = Context::new(&SHA256);
        match scope {
            Some(route) => {
                ctx.update(&[1]);
                ctx.update(&route.to_le_bytes());
            }
            None => ctx.update(&[0]),
        }
        for p in parts {
            ctx.update(&(p.len() as u32).to_le_bytes());
            ctx.update(p);
        }
        let digest = ctx.finish();
        let mut key = String::with_capacity(self.settings.key_prefix.len() + policy.len() + 33);
        key.push_str(&self.settings.key_prefix);
        key.push_str(policy);
        key.push(':');
        for b in &digest.as_ref()[..16] {
            use std::fmt::Write as _;
            let _ = write!(key, "{b:02x}");
        }
        key
    }

    /// One decision by Redis, or why there is none; never longer than
    /// `timeout`.
    pub async fn decide(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Outcome, Fallback> {
        if !self.is_up() {
            return Err(Fallback::Down);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let Some(conn) = self.conns[i].load_full() else {
            return Err(Fallback::Down);
        };
        let mut conn = (*conn).clone();
        let interval_us = (interval.as_micros() as u64).max(1);
        let call = async {
            let answer: redis::RedisResult<(i64, i64, i64)> = redis::cmd("EVALSHA")
                .arg(&self.sha)
                .arg(1)
                .arg(key)
                .arg(interval_us)
                .arg(burst)
                .query_async(&mut conn)
                .await;
            match answer {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    redis::cmd("EVAL")
                        .arg(SCRIPT)
                        .arg(1)
                        .arg(key)
                        .arg(interval_us)
                        .arg(burst)
                        .query_async(&mut conn)
                        .await
                }
                other => other,
            }
        };
        let answer = tokio::time::timeout(self.wait, call).await;
        self.decisions.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(Ok((allowed, remaining, micros))) => {
                self.failures.store(0, Ordering::Relaxed);
                let wait = Duration::from_micros(micros.max(0) as u64);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Ok(Outcome {
                    allowed: allowed == 1,
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                    reset_secs: if allowed == 1 { secs } else { secs.max(1) },
                })
            }
            Ok(Err(e)) => {
                self.failed(&format!("{e}"));
                Err(if e.is_timeout() {
                    Fallback::Timeout
                } else {
                    Fallback::Error
                })
            }
            Err(_) => {
                self.failed(&format!(
                    "no answer within {} ms",
                    self.settings.timeout.as_millis()
                ));
                Err(Fallback::Timeout)
            }
        }
    }

    /// Counts a decision made without Redis.
    pub fn count_fallback(&self, policy: &str, why: Fallback) {
        self.fallbacks[why as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            crate::telemetry::metrics::RATE_LIMIT_STORE_FALLBACKS,
            "policy" => policy.to_owned(),
            "reason" => why.as_str()
        )
        .increment(1);
    }

    fn failed(&self, error: &str) {
        self.note_error(error);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILURES_TO_DOWN && self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error,
                failures = n,
                "rate-limit store is down; deciding locally until Redis answers again"
            );
            self.set_state();
            self.wake.notify_one();
        }
    }

    fn note_error(&self, error: &str) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_error = Some(error.to_owned());
        s.last_error_at = Some(SystemTime::now());
    }

    fn set_state(&self) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed_at = Some(SystemTime::now());
    }

    /// `gateway_ratelimit_store_up`, read at each scrape from the store of
    /// the live snapshot (none without a shared policy: no stale series).
    pub fn render(&self, out: &mut String) {
        use crate::telemetry::metrics::{sample, RATE_LIMIT_STORE_UP};
        out.push_str("# HELP gateway_ratelimit_store_up Whether the Redis rate-limit store answers (1) or is down (0)\n# TYPE gateway_ratelimit_store_up gauge\n");
        sample(
            out,
            RATE_LIMIT_STORE_UP,
            &[],
            if self.is_up() { 1.0 } else { 0.0 },
        );
    }

    /// Connects the whole pool and loads the script.
    async fn connect(&self) -> Result<Vec<MultiplexedConnection>, String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Ours is the decision's timeout; this one only clears
            // answers that never come from the connection's queue.
            .set_response_timeout(Some(self.settings.timeout * 2 + Duration::from_millis(100)))
            .set_concurrency_limit(IN_FLIGHT_PER_CONNECTION);
        let mut conns = Vec::with_capacity(self.conns.len());
        for _ in 0..self.conns.len() {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            conns.push(c.clone());
            if conns.len() == 1 {
                let sha: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(SCRIPT)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                if sha != self.sha {
                    return Err(format!("SCRIPT LOAD answered {sha}, expected {}", self.sha));
                }
            }
        }
        Ok(conns)
    }

    /// The task that connects while the store is down, holding it weakly:
    /// it ends when no snapshot uses the store any more.
    fn spawn_prober(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<RedisStore> = Arc::downgrade(self);
        let wake = self.wake.clone();
        rt.spawn(async move {
            let mut backoff = PROBE_MIN;
            loop {
                let Some(store) = weak.upgrade() else { return };
                if store.is_up() {
                    drop(store);
                    // Woken when a request marks the store down; the
                    // timer only lets the task see that the store is gone.
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    backoff = PROBE_MIN;
                    continue;
                }
                let connected = tokio::time::timeout(CONNECT_TIMEOUT * 2, store.connect()).await;
                match connected {
                    Ok(Ok(conns)) => {
                        for (slot, c) in store.conns.iter().zip(conns) {
                            slot.store(Some(Arc::new(c)));
                        }
                        store.failures.store(0, Ordering::Relaxed);
                        store.up.store(true, Ordering::Relaxed);
                        store.set_state();
                        tracing::info!(
                            pool = store.conns.len(),
                            "rate-limit store is up: Redis answers"
                        );
                        continue;
                    }
                    Ok(Err(e)) => store.note_error(&e),
                    Err(_) => store.note_error("connecting took longer than 2 s"),
                }
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(PROBE_MAX);
            }
        });
    }

    /// For `/admin/rate_limits`.
    pub fn describe(&self) -> serde_json::Value {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let at = |t: Option<SystemTime>| t.map(|t| prost_types::Timestamp::from(t).to_string());
        serde_json::json!({
            "state": if self.is_up() { "up" } else { "down" },
            "last_error": s.last_error,
            "last_error_at": at(s.last_error_at),
            "changed_at": at(s.changed_at),
            "decisions": self.decisions.load(Ordering::Relaxed),
            "fallbacks": Fallback::ALL.iter().map(|f| (f.as_str().to_owned(), serde_json::Value::from(self.fallbacks[*f as usize].load(Ordering::Relaxed)))).collect::<serde_json::Map<_, _>>(),
            "pool_size": self.settings.pool_size,
            "timeout_ms": self.settings.timeout.as_millis() as u64,
            "fail_closed": self.settings.fail_closed,
            "key_prefix": self.settings.key_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    #[test]
    fn gcra_allows_a_burst_then_refuses_until_one_is_earned_back() {
        // 1 request per 100 ms, burst 3, all at t = 0.
        let (i, b) = (100 * MS, 3);
        let mut tat = None;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (answer, stored) = gcra(1_000_000, tat, i, b);
            tat = stored.or(tat);
            seen.push(answer);
        }
        assert_eq!(
            seen,
            [
                (true, 2, 100 * MS),
                (true, 1, 200 * MS),
                (true, 0, 300 * MS),
                (false, 0, 100 * MS)
            ]
        );
        // 100 ms later one more is allowed, and none left.
        assert_eq!(gcra(1_100_000, tat, i, b).0, (true, 0, 300 * MS));
        // A bucket idle for longer than its refill is full again.
        assert_eq!(gcra(2_000_000, tat, i, b).0, (true, 2, 100 * MS));
    }

    #[test]
    fn gcra_sustains_exactly_the_rate() {
        // 10/s, burst 1, asked every 50 ms for 10 s: 100 allowed.
        let (i, b) = (100 * MS, 1);
        let mut tat = None;
        let mut allowed = 0;
        for n in 0..200u64 {
            let ((ok, _, _), stored) = gcra(n * 50 * MS, tat, i, b);
            tat = stored.or(tat);
            allowed += u32::from(ok);
        }
        assert_eq!(allowed, 100);
    }

    fn store() -> Arc<RedisStore> {
        RedisStore::new(RedisSettings {
            url: "redis://127.0.0.1:1/0".into(),
            pool_size: 1,
            timeout: DEFAULT_TIMEOUT,
            fail_closed: false,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
        })
        .unwrap()
    }

    #[test]
    fn keys_are_stable_and_keep_parts_apart() {
        let s = store();
        let k = s.key("per-ip", None, &[b"ip", &[127, 0, 0, 1]]);
        // Pinned: every replica, every build, derives this key.
        assert_eq!(k, s.key("per-ip", None, &[b"ip", &[127, 0, 0, 1]]));
        assert!(k.starts_with("gateway:rl:per-ip:"), "{k}");
        assert_eq!(k.len(), "gateway:rl:per-ip:".len() + 32);
        // Lengths are part of the hash: moving a byte between parts moves the key.
        assert_ne!(
            s.key("p", None, &[b"ab", b"c"]),
            s.key("p", None, &[b"a", b"bc"])
        );
        assert_ne!(s.key("p", Some(1), &[b"a"]), s.key("p", None, &[b"a"]));
        assert_ne!(s.key("p", None, &[b"a"]), s.key("q", None, &[b"a"]));
    }

    #[test]
    fn bad_urls_are_refused_before_any_connection() {
        let bad = |url: &str| {
            RedisStore::new(RedisSettings {
                url: url.into(),
                pool_size: 1,
                timeout: DEFAULT_TIMEOUT,
                fail_closed: false,
                key_prefix: String::new(),
            })
            .unwrap_err()
        };
        assert!(bad("http://127.0.0.1:6379").contains("not a Redis URL"));
        assert!(bad("redis://[::1").contains("not a Redis URL"));
    }

    #[tokio::test]
    async fn an_unreachable_store_is_down_and_answers_at_once() {
        let s = store();
        let started = std::time::Instant::now();
        assert_eq!(
            s.decide("k", Duration::from_millis(10), 1).await,
            Err(Fallback::Down)
        );
        assert!(started.elapsed() < Duration::from_millis(5));
        assert_eq!(s.describe()["state"], "down");
    }
}
