//! JWKS: an issuer's published signing keys, fetched at start, cached,
//! refreshed in the background as its Cache-Control allows (within a floor
//! and a ceiling), and refetched early when a token names a key id the cache
//! does not have. Those early fetches come out of a small token bucket
//! (`REFETCH_BURST`, one more per `refetch_interval`): a flood of made-up
//! `kid`s costs the issuer the burst and then one fetch per interval, and a
//! genuine rotation right after such a flood is seen within one interval,
//! since any refetch after the issuer publishes the new key brings it in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// A floor on background refreshes: an issuer answering `max-age=0` (or
/// nothing) must not be fetched on every tick.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
/// A ceiling: even a JWKS cached "for a week" is looked at hourly, so a
/// key the issuer revoked stops working within the hour.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// One unknown-`kid` refetch is earned back per interval. It bounds how long
/// a rotation waits after a flood drained the bucket (3 s, well inside the
/// 5 s a client's retry allows), while a sustained flood costs the issuer
/// 20 small GETs a minute per gateway, which any JWKS endpoint (usually
/// behind a CDN) absorbs. 30 s, the earlier default, refused rotations for
/// half a minute after one made-up kid.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(3);
/// Unknown-`kid` refetches allowed back to back: a rotation may need two
/// (one fetch can race the issuer's publication), and a third leaves one for
/// a real rotation after a single stray kid, without waiting an interval.
/// Small, so a flood of a thousand made-up kids costs a handful of fetches.
pub const REFETCH_BURST: u64 = 3;
/// An issuer that has not answered in 5 s is down; the cached keys go on.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// JWKS documents are a few KB; a megabyte is a broken or hostile answer.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key: from a JWKS, a PEM file or an HMAC secret.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// Algorithms this key may verify (its JWK `alg`, or its curve's).
    pub algorithms: Option<Vec<Algorithm>>,
    pub key: DecodingKey,
    /// Where it came from, for messages: `jwks`, `keys/a.pem`, `env JWT_SECRET`.
    pub origin: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("origin", &self.origin)
            .finish()
    }
}

impl VerifyKey {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family
            && self
                .algorithms
                .as_ref()
                .is_none_or(|list| list.contains(&alg))
    }
}

/// Where and how often to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    pub url: String,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub refetch_interval: Duration,
    pub timeout: Duration,
}

/// The keys as last fetched.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// False until the first successful fetch.
    pub loaded: bool,
    /// One more each time the fetched document differs from the one
    /// before: tokens verified against an older generation are verified
    /// again (the token cache, `super::token_cache`), so a key the issuer
    /// removed stops passing at the first fetch without it. A refresh that
    /// brings the same document keeps the set, and its generation.
    pub generation: u64,
    /// The document these keys came from, to tell a changed one apart.
    document: bytes::Bytes,
}

/// A JWKS cache shared by the snapshots that use the same source.
pub struct Jwks {
    pub source: JwksSource,
    keys: ArcSwap<KeySet>,
    /// Held while fetching: requests that need fresh keys wait for a fetch
    /// in flight instead of starting another.
    fetch_lock: tokio::sync::Mutex<()>,
    epoch: Instant,
    /// The refetch bucket as GCRA keeps it: milliseconds after `epoch` at
    /// which the bucket is full again (0 or the past: full). Only read and
    /// written under `fetch_lock`.
    refetch_full_at: AtomicU64,
    fetches: AtomicU64,
    client: reqwest::Client,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.source.url)
            .field("keys", &self.keys.load().keys.len())
            .finish()
    }
}

impl Jwks {
    /// A cache for `source`, reusing `previous` (keys, and its refresh task)
    /// when the source is unchanged. A new cache starts its refresher, which
    /// fetches at once.
    pub fn new(source: JwksSource, previous: Option<&Arc<Jwks>>) -> Result<Arc<Jwks>, String> {
        if let Some(p) = previous.filter(|p| p.source == source) {
            return Ok(p.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(source.timeout)
            .connect_timeout(source.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        let jwks = Arc::new(Jwks {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
            refetch_full_at: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            client,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresher(Arc::downgrade(&jwks)));
        }
        Ok(jwks)
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// The generation of the keys in use (see [`KeySet::generation`]),
    /// without taking a reference to them: cheap enough for every request.
    pub fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// Fetches made so far (background and forced), for tests and /admin.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Called when a token names a kid the cache lacks. Waits for a fetch
    /// already in flight, or starts one if the refetch bucket has a fetch
    /// left. Returns whether fresh keys may be there.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let guard = match self.fetch_lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                // A fetch is in flight: its result is as fresh as it gets.
                let _wait = self.fetch_lock.lock().await;
                return true;
            }
        };
        if !self.take_refetch() {
            return false;
        }
        let ok = self.fetch_locked().await.is_ok();
        drop(guard);
        ok
    }

    /// Takes one fetch from the refetch bucket (GCRA: the bucket holds
    /// `REFETCH_BURST` fetches, refilled one per `refetch_interval`). Called
    /// with `fetch_lock` held, so the load and store cannot interleave.
    fn take_refetch(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let interval = self.source.refetch_interval.as_millis() as u64;
        let full_at = self.refetch_full_at.load(Ordering::Relaxed).max(now);
        if full_at - now > interval.saturating_mul(REFETCH_BURST - 1) {
            return false;
        }
        self.refetch_full_at
            .store(full_at.saturating_add(interval), Ordering::Relaxed);
        true
    }

    /// One fetch, with the lock held by the caller. Returns the refresh
    /// time the answer asks for.
    async fn fetch_locked(&self) -> Result<Duration, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = fetch(&self.client, &self.source).await;
        match result {
            Ok((keys, document, refresh)) => {
                tracing::debug!(url = %self.source.url, keys = keys.len(), "JWKS fetched");
                self.store(keys, document);
                Ok(refresh)
            }
            Err(e) => {
                metrics::counter!(
                    crate::telemetry::metrics::JWKS_FETCH_FAILURES,
                    "url" => self.source.url.to_string()
                )
                .increment(1);
                tracing::warn!(url = %self.source.url, error = %e, "JWKS fetch failed; the cached keys stay in use");
                Err(e)
            }
        }
    }

    /// Puts `keys` in use as if fetched from `document`, for tests.
    #[cfg(test)]
    pub(crate) fn publish_for_test(&self, keys: Vec<VerifyKey>, document: &'static str) {
        self.store(keys, bytes::Bytes::from_static(document.as_bytes()));
    }

    /// Puts fetched keys in use, as a new generation unless `document` is
    /// the one already in use (then nothing changes: the tokens verified
    /// against it stay cached). Called with `fetch_lock` held, so two
    /// stores cannot both take the same next generation.
    fn store(&self, keys: Vec<VerifyKey>, document: bytes::Bytes) {
        let current = self.keys.load();
        if current.loaded && current.document == document {
            return;
        }
        let generation = current.generation + 1;
        self.keys.store(Arc::new(KeySet {
            keys,
            loaded: true,
            generation,
            document,
        }));
    }
}

/// The background refresh loop; ends when no snapshot holds the cache.
async fn refresher(weak: Weak<Jwks>) {
    loop {
        let Some(jwks) = weak.upgrade() else { return };
        let next = {
            let _guard = jwks.fetch_lock.lock().await;
            match jwks.fetch_locked().await {
                Ok(refresh) => refresh,
                // Retry a failing issuer at the floor, sooner while nothing
                // was ever loaded (every token is refused until then).
                Err(_) if !jwks.keys.load().loaded => {
                    jwks.source.min_refresh.min(Duration::from_secs(5))
                }
                Err(_) => jwks.source.min_refresh,
            }
        };
        drop(jwks);
        tokio::time::sleep(next).await;
    }
}

/// The keys, the document they came from and when to fetch again.
async fn fetch(
    client: &reqwest::Client,
    source: &JwksSource,
) -> Result<(Vec<VerifyKey>, bytes::Bytes, Duration), String> {
    let resp = client
        .get(&source.url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {}: {e}", source.url))?;
    if !resp.status().is_success() {
        return Err(format!("GET {}: HTTP {}", source.url, resp.status()));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(cache_max_age);
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "GET {}: the JWKS is larger than {MAX_JWKS_BYTES} bytes",
            source.url
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("GET {}: {e}", source.url))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "GET {}: the JWKS is larger than {MAX_JWKS_BYTES} bytes",
            source.url
        ));
    }
    let keys = parse_jwks(&body)?;
    let refresh = max_age
        .unwrap_or(source.max_refresh)
        .clamp(source.min_refresh, source.max_refresh);
    Ok((keys, body, refresh))
}

/// `max-age=N` from a Cache-Control value; `no-cache`/`no-store` count as 0.
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut out = None;
    for d in value.split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            out = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

/// The signing keys of a JWKS document. Keys this gateway cannot use
/// (encryption keys, unknown types and curves) are skipped; symmetric
/// (`oct`) keys are always skipped: a secret published in a JWKS is no secret.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut out = Vec::new();
    for k in list {
        match parse_jwk(k) {
            Ok(Some(key)) => out.push(key),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "JWKS key skipped"),
        }
    }
    Ok(out)
}

fn parse_jwk(k: &Value) -> Result<Option<VerifyKey>, String> {
    let s = |name: &str| k.get(name).and_then(Value::as_str);
    if s("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kid = s("kid").map(str::to_owned);
    let alg = match s("alg") {
        Some(a) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("unsupported alg {a:?}"))?,
        ),
        None => None,
    };
    let need = |name: &str| s(name).ok_or_else(|| format!("missing \"{name}\""));
    let (family, key, algorithms) = match s("kty") {
        Some("RSA") => (
            AlgorithmFamily::Rsa,
            DecodingKey::from_rsa_components(need("n")?, need("e")?).map_err(|e| e.to_string())?,
            None,
        ),
        Some("EC") => {
            let curve_alg = match s("crv") {
                Some("P-256") => Algorithm::ES256,
                Some("P-384") => Algorithm::ES384,
                other => return Err(format!("unsupported curve {other:?}")),
            };
            (
                AlgorithmFamily::Ec,
                DecodingKey::from_ec_components(need("x")?, need("y")?)
                    .map_err(|e| e.to_string())?,
                Some(vec![curve_alg]),
            )
        }
        Some("OKP") if s("crv") == Some("Ed25519") => (
            AlgorithmFamily::Ed,
            DecodingKey::from_ed_components(need("x")?).map_err(|e| e.to_string())?,
            None,
        ),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    if let Some(a) = alg {
        if a.family() != family {
            return Err(format!("alg {a:?} does not fit a {family:?} key"));
        }
    }
    Ok(Some(VerifyKey {
        kid,
        family,
        algorithms: alg.map(|a| vec![a]).or(algorithms),
        key,
        origin: "jwks".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            cache_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
    }

    #[test]
    fn unknown_kid_refetches_come_from_a_bucket_of_three() {
        let source = JwksSource {
            url: "http://127.0.0.1:1/jwks.json".into(),
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            refetch_interval: Duration::from_secs(3600),
            timeout: DEFAULT_TIMEOUT,
        };
        // Outside a runtime: no refresher, nothing fetched.
        let jwks = Jwks::new(source, None).unwrap();
        let taken: Vec<bool> = (0..5).map(|_| jwks.take_refetch()).collect();
        assert_eq!(taken, [true, true, true, false, false]);
    }

    #[test]
    fn a_refresh_bringing_the_same_document_keeps_the_key_generation() {
        let source = JwksSource {
            url: "http://127.0.0.1:1/jwks.json".into(),
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        };
        // Outside a runtime: no refresher, nothing fetched.
        let jwks = Jwks::new(source, None).unwrap();
        assert_eq!(jwks.generation(), 0);
        jwks.publish_for_test(Vec::new(), r#"{"keys":[]}"#);
        assert_eq!(jwks.generation(), 1);
        let first = jwks.keys();
        jwks.publish_for_test(Vec::new(), r#"{"keys":[]}"#);
        assert_eq!(jwks.generation(), 1);
        assert!(Arc::ptr_eq(&first, &jwks.keys()), "the set was replaced");
        jwks.publish_for_test(Vec::new(), r#"{"keys": []}"#);
        assert_eq!(jwks.generation(), 2);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let doc = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "e"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "big"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert!(keys[0].accepts(Algorithm::EdDSA));
        assert!(!keys[0].accepts(Algorithm::HS256));
    }
}
