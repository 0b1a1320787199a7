//! Tokens already verified, kept so a client sending the same JWT again
//! costs a map lookup instead of a signature check (RSA-2048 and P-256
//! verification take tens of microseconds, several times a small request's
//! whole cost). Envoy's `jwt_authn` keeps the same cache (`jwt_cache_config`).
//!
//! What makes serving a token from here exactly as safe as verifying it
//! again: the answer of [`super::jwt::verify`] is a function of the token
//! string, the snapshot's `[auth]`, the route's accepted issuers, the clock
//! and the issuer's keys. The entry is keyed by the whole token (equality
//! on every byte, never a hash alone) and lives in the snapshot's
//! [`super::jwt::Auth`], so a reload starts empty; a hit is taken only
//! when the route accepts the token's issuer, the token has not expired
//! (with the issuer's leeway, as jsonwebtoken counts it), and the issuer's
//! key set is the generation the token verified against (a JWKS refresh
//! that drops a key turns its tokens into misses, verified again and
//! refused). Anything else is a miss, and the full check decides.
//!
//! Only successes are kept, each until its `exp` (the leeway is not added:
//! a token in its grace minute is checked every time), and never longer
//! than `max_lifetime`. A token whose `nbf` is ahead of the clock by more
//! than the leeway fails verification, so it is never kept.
//!
//! Bounded by `max_entries` (moka, TinyLFU admission and LRU eviction, a
//! weigher charging one unit per started KiB of token): nothing a client
//! sends can grow it, and only tokens an issuer signed get in at all.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::jwt::{Auth, RouteAuth, Verified};

/// Enough for every active caller of a busy gateway (each entry is about
/// 2 KB with a typical token: the token, its parsed claims and moka's
/// node), so at most about 20 MB.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Tokens are verified in full again at least this often, whatever their
/// `exp`: a bound on how long one verdict is reused, behind the checks a
/// hit makes, for whatever they do not foresee. A token used for an hour
/// then costs twelve signature checks instead of one per request.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(300);
/// A token counts one entry per started KiB: `max_entries` of the usual
/// sub-kilobyte tokens, fewer fat ones.
const BYTES_PER_ENTRY: usize = 1024;

/// One verified token.
#[derive(Debug)]
struct Entry {
    verified: Verified,
    /// Its index in `Auth::issuers`.
    issuer: usize,
    /// Its `exp` (jsonwebtoken has checked it is a whole number).
    exp: u64,
    /// The issuer's JWKS generation it verified against (0 without a JWKS).
    generation: u64,
    /// How long moka keeps it: to `exp`, at most `max_lifetime`.
    keep_for: Duration,
}

struct KeepFor;

impl moka::Expiry<Arc<str>, Arc<Entry>> for KeepFor {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        v: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep_for)
    }
}

/// The verified tokens of one snapshot's `[auth]`; off when built with
/// no entries (and by default, for an `Auth` built by hand in tests).
#[derive(Default)]
pub struct TokenCache {
    entries: Option<moka::sync::Cache<Arc<str>, Arc<Entry>>>,
    max_lifetime: Duration,
    hits: OnceLock<metrics::Counter>,
    misses: OnceLock<metrics::Counter>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.as_ref().map(|c| c.entry_count()))
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `max_entries` (0: off), each kept at most
    /// `max_lifetime`.
    pub fn new(max_entries: u64, max_lifetime: Duration) -> TokenCache {
        let entries = (max_entries > 0 && !max_lifetime.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .weigher(|token: &Arc<str>, _: &Arc<Entry>| {
                    u32::try_from(token.len().div_ceil(BYTES_PER_ENTRY).max(1)).unwrap_or(u32::MAX)
                })
                .expire_after(KeepFor)
                .build()
        });
        TokenCache {
            entries,
            max_lifetime,
            hits: OnceLock::new(),
            misses: OnceLock::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The longest an entry is kept (`auth.token_cache.max_lifetime`).
    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// The verified token, if `token` was verified before and that answer
    /// still holds on `route` (see the module comment); `None` when the
    /// cache is off or the full check must run. Allocates nothing.
    pub fn get(&self, auth: &Auth, route: &RouteAuth, token: &str) -> Option<Verified> {
        let entries = self.entries.as_ref()?;
        let found = entries
            .get(token)
            .filter(|e| still_valid(auth, route, e, unix_now()));
        // The counters are looked up once per snapshot, not per request.
        use crate::telemetry::metrics::{JWT_CACHE_HITS, JWT_CACHE_MISSES};
        match found {
            Some(e) => {
                let hits = self.hits.get_or_init(|| metrics::counter!(JWT_CACHE_HITS));
                hits.increment(1);
                Some(e.verified.clone())
            }
            None => {
                let misses = self
                    .misses
                    .get_or_init(|| metrics::counter!(JWT_CACHE_MISSES));
                misses.increment(1);
                None
            }
        }
    }

    /// Keeps `verified`, just verified against `generation` of the keys of
    /// issuer `issuer` (an index into `Auth::issuers`), until its `exp`.
    /// A token past its `exp` (passed within the leeway) is not kept.
    pub fn insert(&self, token: &str, verified: &Verified, issuer: usize, generation: u64) {
        let Some(entries) = &self.entries else {
            return;
        };
        let Some(exp) = verified
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
        else {
            return;
        };
        let Some(left) = Duration::from_secs(exp).checked_sub(unix_now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        entries.insert(
            token.into(),
            Arc::new(Entry {
                verified: verified.clone(),
                issuer,
                exp,
                generation,
                keep_for: left.min(self.max_lifetime),
            }),
        );
        // Evictions run now, so the bound holds between inserts (moka
        // would otherwise let them wait for its next housekeeping). Only a
        // miss pays it, after a signature check costing far more.
        entries.run_pending_tasks();
    }

    /// Tokens held (after pending evictions ran), for tests.
    pub fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a kept verdict holds for this request: the route accepts the
/// token's issuer, the token has not expired (`exp`, plus the issuer's
/// leeway, not before now, exactly jsonwebtoken's rule) and the issuer's
/// key set is the one it verified against.
fn still_valid(auth: &Auth, route: &RouteAuth, e: &Entry, now: Duration) -> bool {
    let Some(issuer) = auth.issuers.get(e.issuer) else {
        return false;
    };
    route
        .issuers
        .as_ref()
        .is_none_or(|list| list.contains(&e.issuer))
        && e.exp >= now.as_secs().saturating_sub(issuer.leeway_secs)
        && issuer.jwks.as_ref().map_or(0, |j| j.generation()) == e.generation
}

/// The wall clock, as jsonwebtoken reads it for `exp`.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The verification paths (hits, refusals on hits, rotation) are tested
    // through `jwt::verify` in `super::super::jwt`; these pin the bounds.

    fn verified(exp: u64) -> Verified {
        let issuer = Arc::new(super::super::jwt::Issuer::new(
            "t".into(),
            "t".into(),
            vec![jsonwebtoken::Algorithm::HS256],
            vec![],
            60,
            vec![],
            None,
        ));
        let claims = serde_json::json!({"iss": "t", "exp": exp});
        Verified {
            issuer,
            claims: Arc::new(claims.as_object().unwrap().clone()),
        }
    }

    fn in_an_hour() -> u64 {
        unix_now().as_secs() + 3600
    }

    #[test]
    fn a_hit_honours_exp_with_the_issuers_leeway() {
        let exp = 2_000_000_000;
        let v = verified(exp);
        let auth = Auth {
            issuers: vec![v.issuer.clone()],
            ..Default::default()
        };
        let entry = Entry {
            verified: v,
            issuer: 0,
            exp,
            generation: 0,
            keep_for: DEFAULT_MAX_LIFETIME,
        };
        let route = RouteAuth::default();
        let at = |secs: u64| still_valid(&auth, &route, &entry, Duration::from_secs(secs));
        // The issuer's leeway is 60 s: jsonwebtoken refuses from exp + 61.
        assert!(at(exp - 100));
        assert!(at(exp + 60));
        assert!(!at(exp + 61));
        // Another key generation, or an issuer the route leaves out: no hit.
        let other = Entry {
            generation: 1,
            ..entry
        };
        assert!(!still_valid(
            &auth,
            &route,
            &other,
            Duration::from_secs(exp)
        ));
        let elsewhere = RouteAuth {
            issuers: Some(vec![]),
            ..Default::default()
        };
        let entry = Entry {
            generation: 0,
            ..other
        };
        assert!(!still_valid(
            &auth,
            &elsewhere,
            &entry,
            Duration::from_secs(exp)
        ));
    }

    #[test]
    fn the_bound_holds_however_many_tokens_are_inserted() {
        let cache = TokenCache::new(100, DEFAULT_MAX_LIFETIME);
        let v = verified(in_an_hour());
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), &v, 0, 0);
            assert!(cache.len() <= 100, "{} entries after {i}", cache.len());
        }
        assert!(!cache.is_empty());
    }

    #[test]
    fn a_large_token_counts_one_entry_per_started_kib() {
        let cache = TokenCache::new(4, DEFAULT_MAX_LIFETIME);
        let v = verified(in_an_hour());
        let big = "x".repeat(3 * 1024 + 1);
        cache.insert(&big, &v, 0, 0);
        assert_eq!(cache.entries.as_ref().unwrap().weighted_size(), 4);
    }

    #[test]
    fn zero_entries_turns_the_cache_off() {
        let cache = TokenCache::new(0, DEFAULT_MAX_LIFETIME);
        assert!(!cache.enabled());
        cache.insert("a.b.c", &verified(in_an_hour()), 0, 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_token_past_its_exp_is_not_kept() {
        let cache = TokenCache::new(10, DEFAULT_MAX_LIFETIME);
        // Within the leeway it verified, but its exp has passed.
        cache.insert("a.b.c", &verified(unix_now().as_secs() - 5), 0, 0);
        assert!(cache.is_empty());
        cache.insert("a.b.d", &verified(in_an_hour()), 0, 0);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn entries_live_until_exp_capped_by_max_lifetime() {
        let cache = TokenCache::new(10, Duration::from_secs(60));
        cache.insert("far", &verified(in_an_hour()), 0, 0);
        cache.insert("near", &verified(unix_now().as_secs() + 10), 0, 0);
        let c = cache.entries.as_ref().unwrap();
        assert_eq!(c.get("far").unwrap().keep_for, Duration::from_secs(60));
        let near = c.get("near").unwrap().keep_for;
        assert!(
            near <= Duration::from_secs(10) && near > Duration::from_secs(8),
            "{near:?}"
        );
    }
}
