//! The response cache of GET routes, and the degraded answers (fallbacks)
//! sent when a backend is unavailable (docs/routes.md, "Caching and
//! fallbacks").
//!
//! One [`Store`] per snapshot holds every cached route's answers, bounded
//! by `[cache] max_bytes`; a reload builds a new snapshot and so starts
//! with an empty cache (the simplest rule that is always right: a changed
//! route, descriptor or response shaping can change every answer). Each
//! cached route carries its [`Policy`]; routes without one never touch the
//! cache, so their path costs nothing more.
//!
//! An entry is keyed on the route, the request message (canonicalised, so
//! `?a=1&b=2` and `?b=2&a=1` share one) and the route's `vary` headers,
//! and holds the final HTTP answer: status, headers, body and its `ETag`.
//! It is fresh for the route's `ttl`, then kept `stale_if_error` longer,
//! only to answer with when the backend is unavailable.
//!
//! Concurrent misses of one key are coalesced ([`Store::turn`]): one
//! request (the leader) calls the backend, the others wait for its answer,
//! errors included; a leader that goes away (its client left) hands the
//! turn to the next waiter.
//!
//! Why moka: a concurrent cache bounded by weight (bytes, through a
//! weigher) with TinyLFU admission, per-entry lifetimes (`Expiry`, so one
//! store serves routes with different ttls) and an eviction listener for
//! the metric, without a lock readers share. Its own `get_with` coalescing
//! is not used: it would hand out an entry kept past its ttl for
//! `stale_if_error` as if fresh, and it cannot refresh an entry that is
//! present; the in-flight map here does both.

mod compile;
pub mod conditional;
pub mod fallback;
mod respond;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use tokio::sync::watch;

pub use compile::{compile_route, new_store, Compiled, Policy};
pub use fallback::Fallback;
pub use respond::{respond, Directives, Served};

/// Bytes the cached answers take, as the cache weighs them; rendered from
/// the live snapshot's store at each scrape ([`Store::render`]).
pub const BYTES: &str = "gateway_cache_bytes";
/// Answers held; rendered like [`BYTES`].
pub const ENTRIES: &str = "gateway_cache_entries";

/// A key: the route's number in the snapshot, the canonical request
/// message and the `vary` header values, length-prefixed in one buffer so
/// no two different requests share bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Box<[u8]>);

impl Key {
    /// The key of `message` (already canonical) on route `route`, with the
    /// request's [`Varied`] values.
    pub fn new(route: u32, message: &[u8], varied: &[u8]) -> Key {
        let mut out = Vec::with_capacity(8 + message.len() + varied.len());
        out.extend_from_slice(&route.to_le_bytes());
        put_len(&mut out, message.len());
        out.extend_from_slice(message);
        out.extend_from_slice(varied);
        Key(out.into_boxed_slice())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A cached route's `vary` header values as the client sent them, taken by
/// the route stage before the edge layers run: authentication takes the
/// credentials out of the request (`Authorization`, the API-key header),
/// and a key made after that would put every caller in one entry.
#[derive(Debug, Clone)]
pub struct Varied(pub Box<[u8]>);

impl Varied {
    /// Every value of each of `vary` in `headers`, in order, length-prefixed.
    pub fn of(vary: &[HeaderName], headers: &HeaderMap) -> Varied {
        let mut out = Vec::new();
        for name in vary {
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                // Absent differs from present and empty.
                out.push(0);
                continue;
            }
            out.push(1);
            for v in values {
                put_len(&mut out, v.len());
                out.extend_from_slice(v.as_bytes());
            }
            out.push(0xff);
        }
        Varied(out.into_boxed_slice())
    }
}

/// The key's message: the request decoded as `input` and encoded again, so
/// requests that mean the same share an entry: fields in number order
/// whatever the query's order, `?x=01` as `?x=1`, a message field set by
/// several parameters as one. (Map fields with several entries encode in
/// hash order and may split entries: less sharing, never a wrong answer.)
/// Bytes that do not decode (none the transcoder makes) are used as they are.
pub fn canonical(input: &prost_reflect::MessageDescriptor, wire: &Bytes) -> Bytes {
    match prost_reflect::DynamicMessage::decode(input.clone(), wire.as_ref()) {
        Ok(m) => Bytes::from(prost::Message::encode_to_vec(&m)),
        Err(_) => wire.clone(),
    }
}

/// A length as a LEB128 varint.
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A final HTTP answer as kept: what is sent again on a hit.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The answer's headers: content type, the backend's metadata, the
    /// route's response headers.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// A strong validator: a hash of the body ([`conditional::etag`]).
    pub etag: HeaderValue,
    pub stored: Instant,
    /// Served as fresh until `stored + fresh_for`.
    pub fresh_for: Duration,
    /// Kept (for stale-if-error) until `stored + keep_for`.
    pub keep_for: Duration,
}

impl Entry {
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.fresh_for
    }

    /// Whole seconds since the entry was stored (the `Age` header).
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored).as_secs()
    }

    /// What the entry costs the cache: its bytes plus a fixed share for
    /// the structures around them (moka's node, the `Arc`, the map).
    fn weight(&self, key: &Key) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let total = key.len() + self.body.len() + headers + self.etag.len() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// moka's node, its timer-wheel slot, the `Arc<Entry>` and `HeaderMap`'s
/// own table: about this many bytes beyond what the entry holds.
const ENTRY_OVERHEAD: usize = 256;

/// How a shared answer came to be: the backend's, or a degraded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The backend's answer, just fetched.
    Fresh,
    /// A cached answer past its ttl, sent because the backend is
    /// unavailable.
    Stale,
    /// The route's static fallback.
    Static,
}

impl Kind {
    /// The metric label and the `Gateway-Degraded` value.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Fresh => "fresh",
            Kind::Stale => "stale",
            Kind::Static => "static",
        }
    }
}

/// What a leader hands its waiters: the answer (fresh or degraded), or
/// the error every one of them is answered with.
#[derive(Debug, Clone)]
pub enum Shared {
    Answer(Arc<Entry>, Kind),
    /// Not cached: each waiter gets the same error, rendered for it.
    Failed(crate::error::Error),
}

type Flight = watch::Sender<Option<Shared>>;

/// Every cached route's answers in one snapshot, and the calls in flight
/// to fill them.
pub struct Store {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    max_bytes: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// Each entry lives `keep_for` from its last write: its ttl plus the
/// route's `stale_if_error`.
struct KeepFor;

impl moka::Expiry<Key, Arc<Entry>> for KeepFor {
    fn expire_after_create(&self, _: &Key, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep_for)
    }
}

/// A request's part in filling a key: lead the call, or wait for the one
/// in flight.
pub enum Turn<'a> {
    Lead(Leader<'a>),
    Wait(watch::Receiver<Option<Shared>>),
}

/// The request that calls the backend for a key. Dropped without
/// [`Leader::finish`] (its client went away), it leaves the map, and its
/// waiters take another turn.
pub struct Leader<'a> {
    store: &'a Store,
    key: Key,
    flight: Arc<Flight>,
}

impl Leader<'_> {
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Hands `shared` to every waiter.
    pub fn finish(self, shared: Shared) {
        self.flight.send_replace(Some(shared));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = self.store.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

impl Store {
    /// An empty store of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Arc<Entry>| v.weight(k))
            .expire_after(KeepFor)
            .eviction_listener(|_, _, cause| {
                if cause == RemovalCause::Size {
                    metrics::counter!(crate::telemetry::metrics::CACHE_EVICTIONS).increment(1);
                }
            })
            .build();
        Store {
            entries,
            flights: Mutex::new(HashMap::new()),
            max_bytes,
        }
    }

    /// The entry of `key`, fresh or kept for stale-if-error.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    /// Keeps `entry` under `key`, unless it is too large to cache (over an
    /// eighth of the bound: one answer must not flush the rest). Evictions
    /// run at once, so the size stays under the bound between misses
    /// (moka would otherwise let them wait for its next housekeeping).
    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        if u64::from(entry.weight(&key)) > self.max_bytes / 8 {
            return;
        }
        self.entries.insert(key, entry);
        self.entries.run_pending_tasks();
    }

    /// `gateway_cache_bytes` and `gateway_cache_entries`, read at each
    /// scrape from the live snapshot's store: a reload's new, empty store
    /// shows at once, and one whose config was refused never shows.
    pub fn render(&self, out: &mut String) {
        use crate::telemetry::metrics::sample;
        out.push_str("# HELP gateway_cache_bytes Bytes the cached answers take (keys, headers and bodies), at most [cache] max_bytes\n# TYPE gateway_cache_bytes gauge\n");
        sample(out, BYTES, &[], self.entries.weighted_size() as f64);
        out.push_str("# HELP gateway_cache_entries Answers the response cache holds\n# TYPE gateway_cache_entries gauge\n");
        sample(out, ENTRIES, &[], self.entries.entry_count() as f64);
    }

    /// Bytes held, as weighed (after pending evictions ran).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Leads the call for `key`, or waits for the one in flight.
    pub fn turn(&self, key: Key) -> Turn<'_> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = flights.get(&key) {
            return Turn::Wait(f.subscribe());
        }
        let flight = Arc::new(watch::channel(None).0);
        flights.insert(key.clone(), flight.clone());
        Turn::Lead(Leader {
            store: self,
            key,
            flight,
        })
    }
}

/// Waits for a leader's answer; `None` when the leader went away without
/// one (the caller takes another turn).
pub async fn wait(mut rx: watch::Receiver<Option<Shared>>) -> Option<Shared> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

/// The bytes of a body the gateway built whole (a transcoded answer, an
/// error): one frame, ready at once.
pub async fn collect(body: axum::body::Body) -> Bytes {
    use http_body_util::BodyExt as _;
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// A counter registered on first use, so that handles made at load (before
/// the recorder may be installed) are not no-ops forever.
#[derive(Default)]
pub(crate) struct LazyCounter(OnceLock<metrics::Counter>);

impl LazyCounter {
    pub(crate) fn increment(&self, make: impl FnOnce() -> metrics::Counter) {
        self.0.get_or_init(make).increment(1);
    }
}

impl std::fmt::Debug for LazyCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LazyCounter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            etag: conditional::etag(body.as_bytes()),
            stored: Instant::now(),
            fresh_for: ttl,
            keep_for: ttl,
        })
    }

    #[test]
    fn keys_split_on_route_message_and_vary_values() {
        let vary = [HeaderName::from_static("authorization")];
        let mut a = HeaderMap::new();
        a.insert("authorization", HeaderValue::from_static("Bearer a"));
        let mut b = HeaderMap::new();
        b.insert("authorization", HeaderValue::from_static("Bearer b"));
        let none = HeaderMap::new();
        let mut empty = HeaderMap::new();
        empty.insert("authorization", HeaderValue::from_static(""));
        let k = |route, msg: &[u8], h: &HeaderMap| Key::new(route, msg, &Varied::of(&vary, h).0);
        assert_eq!(k(1, b"m", &a), k(1, b"m", &a));
        assert_ne!(k(1, b"m", &a), k(1, b"m", &b));
        assert_ne!(k(1, b"m", &a), k(2, b"m", &a));
        assert_ne!(k(1, b"m", &a), k(1, b"n", &a));
        assert_ne!(k(1, b"m", &none), k(1, b"m", &empty));
        // Without vary, headers do not matter.
        assert_eq!(
            Key::new(1, b"m", &Varied::of(&[], &a).0),
            Key::new(1, b"m", &Varied::of(&[], &b).0)
        );
    }

    #[test]
    fn the_store_stays_under_its_bound_and_refuses_answers_too_large() {
        let store = Store::new(64 * 1024);
        let body = "x".repeat(1000);
        for i in 0..200u32 {
            store.insert(Key::new(i, b"", &[]), entry(&body, Duration::from_secs(60)));
        }
        assert!(store.weighted_size() <= 64 * 1024, "{store:?}");
        assert!(store.entries.entry_count() > 10, "{store:?}");
        let big = "x".repeat(9 * 1024);
        let key = Key::new(999, b"", &[]);
        store.insert(key.clone(), entry(&big, Duration::from_secs(60)));
        assert!(store.get(&key).is_none());
    }

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_get_its_answer() {
        let store = Store::new(1 << 20);
        let key = Key::new(1, b"m", &[]);
        let Turn::Lead(leader) = store.turn(key.clone()) else {
            panic!("the first request leads")
        };
        let Turn::Wait(rx) = store.turn(key.clone()) else {
            panic!("the second request waits")
        };
        let waiter = tokio::spawn(wait(rx));
        leader.finish(Shared::Answer(
            entry("a", Duration::from_secs(1)),
            Kind::Fresh,
        ));
        match waiter.await.unwrap() {
            Some(Shared::Answer(e, Kind::Fresh)) => assert_eq!(e.body, "a"),
            other => panic!("{other:?}"),
        }
        // The flight is over: the next request leads again.
        assert!(matches!(store.turn(key), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn a_leader_that_goes_away_lets_a_waiter_lead() {
        let store = Store::new(1 << 20);
        let key = Key::new(1, b"m", &[]);
        let leader = store.turn(key.clone());
        let Turn::Wait(rx) = store.turn(key.clone()) else {
            panic!("the second request waits")
        };
        drop(leader);
        assert!(wait(rx).await.is_none());
        assert!(matches!(store.turn(key), Turn::Lead(_)));
    }
}
