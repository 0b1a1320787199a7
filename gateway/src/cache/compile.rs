//! `[cache]` and the routes' `cache` and `fallback` keys, checked against
//! the compiled route (its method, its messages, its auth) and compiled
//! into a [`Policy`] and a [`Fallback`]. Every problem names file, line
//! and key.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use prost_reflect::DynamicMessage;
use toml::Spanned;

use super::{Fallback, LazyCounter, Store};
use crate::config::{
    ConfigError, FallbackConfig, LoadedFile, RouteCacheConfig, RouteConfig, DEFAULT_CACHE_MAX_BYTES,
};
use crate::snapshot::Route;

/// Below this a bound holds next to nothing: a typo, not a choice.
const MIN_MAX_BYTES: u64 = 4096;

/// A cached route's rules, compiled.
pub struct Policy {
    /// The snapshot's store, shared by every cached route.
    pub store: Arc<Store>,
    /// The route's number in the file: the first part of its keys.
    pub id: u32,
    /// Served fresh this long.
    pub ttl: Duration,
    /// Kept this long (ttl plus `stale_if_error`).
    pub keep: Duration,
    pub vary: Vec<HeaderName>,
    pub allow_no_cache: bool,
    /// `Cache-Control` (`private` or `public`, and `max-age`) and `Vary`,
    /// made once here.
    pub directives: super::Directives,
    /// Whether entries are kept past their ttl to answer with while the
    /// backend is unavailable.
    pub stale_if_error: bool,
    pub(super) route: metrics::SharedString,
    hits: LazyCounter,
    misses: LazyCounter,
    stale: LazyCounter,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("keep", &self.keep)
            .field("vary", &self.vary)
            .field("directives", &self.directives)
            .finish_non_exhaustive()
    }
}

impl Policy {
    pub fn hit(&self) {
        self.hits
            .increment(|| metrics::counter!(crate::telemetry::metrics::CACHE_HITS, "route" => self.route.clone()));
    }

    pub fn miss(&self) {
        self.misses
            .increment(|| metrics::counter!(crate::telemetry::metrics::CACHE_MISSES, "route" => self.route.clone()));
    }

    /// For /admin/routes.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "ttl_ms": self.ttl.as_millis() as u64,
            "stale_if_error_ms": (self.keep - self.ttl).as_millis() as u64,
            "vary": self.vary.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            "allow_no_cache": self.allow_no_cache,
            "cache_control": self.directives.cache_control.to_str().unwrap_or(""),
        })
    }

    /// Counts and logs a stale answer sent for an unavailable backend.
    pub fn served_stale(&self) {
        super::fallback::record(&self.route, super::Kind::Stale, &self.stale);
    }
}

/// The snapshot's store, when a route caches: `[cache] max_bytes`, checked.
pub fn new_store(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> Option<Arc<Store>> {
    let max = match &file.config.cache.max_bytes {
        Some(m) if *m.get_ref() < MIN_MAX_BYTES => {
            errors.push(file.error(
                m,
                "cache.max_bytes",
                format!(
                    "{} bytes holds next to nothing; write at least {MIN_MAX_BYTES} (default {DEFAULT_CACHE_MAX_BYTES})",
                    m.get_ref()
                ),
            ));
            DEFAULT_CACHE_MAX_BYTES
        }
        Some(m) => *m.get_ref(),
        None => DEFAULT_CACHE_MAX_BYTES,
    };
    let any = file
        .config
        .routes
        .iter()
        .any(|r| r.get_ref().cache.is_some());
    any.then(|| Arc::new(Store::new(max)))
}

/// What a file route's `cache` and `fallback` keys compile to.
#[derive(Default)]
pub struct Compiled {
    pub cache: Option<Arc<Policy>>,
    pub fallback: Option<Arc<Fallback>>,
    pub warnings: Vec<ConfigError>,
}

/// Checks and compiles route `i`'s `cache` and `fallback` against the
/// compiled `route`.
pub fn compile_route(
    file: &LoadedFile,
    i: usize,
    spanned: &Spanned<RouteConfig>,
    route: &Route,
    store: Option<&Arc<Store>>,
    errors: &mut Vec<ConfigError>,
) -> Compiled {
    let r = spanned.get_ref();
    let mut out = Compiled::default();
    if let (Some(c), Some(store)) = (&r.cache, store) {
        out.cache = policy(file, i, c, route, store, errors, &mut out.warnings).map(Arc::new);
    }
    if let Some(f) = &r.fallback {
        out.fallback = fallback(file, i, f, route, errors).map(Arc::new);
    }
    out
}

fn policy(
    file: &LoadedFile,
    i: usize,
    spanned: &Spanned<RouteCacheConfig>,
    route: &Route,
    store: &Arc<Store>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<Policy> {
    let c = spanned.get_ref();
    let at = |k: &str| format!("routes[{i}].cache{k}");
    let plan = &route.plan;
    let before = errors.len();
    if route.method != "GET" || plan.streams_request() || plan.streams_reply() {
        errors.push(file.error(
            spanned,
            at(""),
            format!(
                "only GET routes of unary methods are cached; this is {} {} ({}); remove `cache`",
                route.method,
                route.template,
                kind_of(route)
            ),
        ));
    }
    let ttl = file.duration(&Some(c.ttl.clone()), &at(".ttl"), Duration::ZERO, errors);
    let max_age = file.duration_min(&c.max_age, &at(".max_age"), ttl, true, errors);
    let stale = file.duration_min(
        &c.stale_if_error,
        &at(".stale_if_error"),
        Duration::ZERO,
        true,
        errors,
    );
    let mut vary = Vec::new();
    for (j, v) in c.vary.iter().enumerate() {
        match HeaderName::from_bytes(v.get_ref().trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) if !vary.contains(&h) => vary.push(h),
            Ok(_) => {}
            Err(_) => errors.push(file.error(
                v,
                at(&format!(".vary[{j}]")),
                format!("\"{}\" is not a header name", v.get_ref()),
            )),
        }
    }
    if errors.len() > before {
        return None;
    }
    let auth = &route.edge.auth;
    let checks_credentials =
        auth.mode != crate::edge::jwt::AuthMode::None || auth.client_cert.required;
    if checks_credentials && vary.is_empty() {
        warnings.push(file.error(
            spanned,
            at(".vary"),
            "the route checks credentials but its cache key names no header: every caller is served the same cached answers; add e.g. vary = [\"authorization\"] if answers differ by caller",
        ));
    }
    // Answers of routes that check credentials are the caller's own:
    // never `public`, which would let shared caches hand them to others.
    let scope = if checks_credentials {
        "private"
    } else {
        "public"
    };
    let cache_control = HeaderValue::try_from(format!("{scope}, max-age={}", max_age.as_secs()))
        .expect("ASCII digits and letters");
    let names: Vec<&str> = vary.iter().map(HeaderName::as_str).collect();
    let vary_header = (!names.is_empty())
        .then(|| HeaderValue::try_from(names.join(", ")).expect("header names are valid values"));
    Some(Policy {
        store: store.clone(),
        id: i as u32,
        ttl,
        keep: ttl + stale,
        vary,
        allow_no_cache: c.allow_no_cache,
        directives: super::Directives {
            cache_control,
            vary: vary_header,
        },
        stale_if_error: !stale.is_zero(),
        route: metrics::SharedString::from_shared(route.label.clone()),
        hits: LazyCounter::default(),
        misses: LazyCounter::default(),
        stale: LazyCounter::default(),
    })
}

/// "server streaming", "unary", ... for error messages.
fn kind_of(route: &Route) -> &'static str {
    match (route.plan.streams_request(), route.plan.streams_reply()) {
        (false, false) => "unary",
        (false, true) => "server streaming",
        (true, false) => "client streaming",
        (true, true) => "bidirectional streaming",
    }
}

fn fallback(
    file: &LoadedFile,
    i: usize,
    spanned: &Spanned<FallbackConfig>,
    route: &Route,
    errors: &mut Vec<ConfigError>,
) -> Option<Fallback> {
    let f = spanned.get_ref();
    let at = |k: &str| format!("routes[{i}].fallback{k}");
    let plan = &route.plan;
    let before = errors.len();
    if plan.streams_request() || plan.streams_reply() || plan.shaping.websocket {
        errors.push(file.error(
            spanned,
            at(""),
            format!(
                "only routes of unary methods have a static fallback; {} {} is {}; remove `fallback`",
                route.method,
                route.template,
                kind_of(route)
            ),
        ));
    }
    let status = match &f.status {
        Some(s) => match StatusCode::from_u16(*s.get_ref()) {
            Ok(code)
                if (200..=599).contains(&code.as_u16()) && code != StatusCode::NOT_MODIFIED =>
            {
                Some(code)
            }
            _ => {
                errors.push(file.error(
                    s,
                    at(".status"),
                    format!(
                        "{} is not a status to answer with; write one from 200 to 599 (not 304)",
                        s.get_ref()
                    ),
                ));
                None
            }
        },
        None => None,
    };
    let output = &plan.output;
    let json = match f.body.get_ref() {
        toml::Value::String(text) => {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("is not JSON: {e}"))
        }
        toml::Value::Table(t) => {
            serde_json::to_value(t).map_err(|e| format!("cannot be read as JSON: {e}"))
        }
        other => Err(format!(
            "is a {}; write the reply as a table (`body = {{ ... }}`) or as a JSON string",
            other.type_str()
        )),
    };
    let message = json.and_then(|v| {
        DynamicMessage::deserialize(output.clone(), v).map_err(|e| {
            format!(
                "is not a valid {} (the reply of {}): {e}",
                output.full_name(),
                route.grpc_label
            )
        })
    });
    let raw = match message {
        Ok(m) => Bytes::from(prost::Message::encode_to_vec(&m)),
        Err(m) => {
            errors.push(file.error(&f.body, at(".body"), m));
            return None;
        }
    };
    if errors.len() > before {
        return None;
    }
    Some(Fallback::new(status, raw, &route.label))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::LoadedFile;
    use crate::snapshot::{BuildContext, Snapshot};

    /// The end-to-end tests' Echo backend (nine lines), then `rest`.
    fn build(rest: &str) -> Result<Snapshot, Vec<String>> {
        let descriptors =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
        let head = include_str!("../../../tests/fixtures/echo_backend.toml");
        let text = format!("{head}\n{rest}").replace(
            "{descriptors}",
            &descriptors.display().to_string().replace('\\', "\\\\"),
        );
        let file = LoadedFile::parse(Path::new("r.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        Snapshot::build(&file, BuildContext::default())
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    const GET: &str =
        "[[routes]]\nmethod = \"GET\"\npath = \"/v1/x\"\ngrpc = \"testing.v1.Echo/Echo\"\n";

    #[tokio::test]
    async fn a_policy_keeps_entries_for_ttl_and_stale_if_error_and_says_public() {
        let s = build(&format!(
            "{GET}cache = {{ ttl = \"30s\", max_age = \"10s\", stale_if_error = \"1m\", vary = [\"Accept-Language\", \"accept-language\"] }}\n"
        ))
        .unwrap();
        let p = s.routes[0].cache.as_ref().expect("cached");
        assert_eq!(p.ttl.as_secs(), 30);
        assert_eq!(p.keep.as_secs(), 90);
        assert!(p.stale_if_error && p.allow_no_cache);
        assert_eq!(p.vary, ["accept-language"]);
        assert_eq!(p.directives.cache_control, "public, max-age=10");
        assert_eq!(p.directives.vary.as_ref().unwrap(), "accept-language");
        assert_eq!(
            s.cache.as_ref().unwrap().max_bytes(),
            super::DEFAULT_CACHE_MAX_BYTES
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[tokio::test]
    async fn routes_that_check_credentials_are_private_and_warned_about_without_vary() {
        let s = build(&format!(
            "[consumers.a]\nkeys = [\"sha256:{}\"]\n\n{GET}auth = \"required\"\ncredentials = [\"api_key\"]\ncache = {{ ttl = \"30s\" }}\n",
            "0".repeat(64)
        ))
        .unwrap();
        let p = s.routes[0].cache.as_ref().unwrap();
        assert_eq!(p.directives.cache_control, "private, max-age=30");
        let warnings: Vec<String> = s.warnings.iter().map(ToString::to_string).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("routes[0].cache.vary: the route checks credentials")),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn no_route_caching_means_no_store_and_a_tiny_bound_is_refused() {
        let s = build(GET).unwrap();
        assert!(s.cache.is_none() && s.routes[0].cache.is_none());
        let e = build(&format!(
            "[cache]\nmax_bytes = 100\n\n{GET}cache = {{ ttl = \"1s\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("r.toml:12: cache.max_bytes: 100 bytes holds next to nothing"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_static_fallback_is_checked_against_the_reply_type() {
        let s = build(&format!(
            "{GET}fallback = {{ status = 503, body = {{ stringField = \"x\", inner = {{ name = \"n\" }} }} }}\n"
        ))
        .unwrap();
        assert!(s.routes[0].fallback.is_some());
        let e = build(&format!(
            "{GET}fallback = {{ body = {{ stringField = 1 }} }}\n"
        ))
        .unwrap_err();
        assert!(
            e[0].starts_with(
                "r.toml:15: routes[0].fallback.body: is not a valid testing.v1.Everything"
            ),
            "{e:?}"
        );
        let e = build(&format!("{GET}fallback = {{ body = 3 }}\n")).unwrap_err();
        assert!(
            e[0].contains("is a integer; write the reply as a table"),
            "{e:?}"
        );
    }
}
