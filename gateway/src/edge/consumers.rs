//! Consumers and their API keys: `[consumers.NAME]` lists a caller's keys
//! (as SHA-256 digests, or the key itself from an environment variable or
//! a file) and its quotas; `[api_keys]` says where clients present a key,
//! and a route's `api_keys` where they do on that route.
//!
//! A presented key is hashed and looked up by its digest; the digest found
//! is compared again in constant time, so neither the lookup nor the
//! comparison tells an attacker how close a guess came. Keys are never
//! logged nor forwarded: the header (or query parameter) is removed before
//! the call, and the backend learns only the consumer's name (metadata
//! `x-consumer`), where the route's `forward_claims` lists `consumer`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use toml::Spanned;

use super::ratelimit::{Quotas, RateLimits};
use crate::config::{ConfigError, LoadedFile};

/// The header keys arrive in by default.
pub const DEFAULT_HEADER: &str = "x-api-key";

/// The metadata a consumer's name reaches backends under; a client cannot
/// send it itself (it is dropped, like forged `x-jwt-*`).
pub const CONSUMER_METADATA: HeaderName = HeaderName::from_static("grpc-metadata-x-consumer");

/// The `forward_claims` entry that stands for the consumer's name: a fact
/// about the caller like a claim, travelling under its own metadata
/// (`x-consumer`) so that no token can state it.
pub const FORWARD_CONSUMER: &str = "consumer";

/// A caller known by its API keys.
#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    /// Its quotas: policies counted per this consumer on every route. The
    /// limiter's own type, put on the request beside [`Identified`], so the
    /// limiter needs nothing from this module.
    pub quotas: Arc<Quotas>,
}

/// On a request whose API key named a consumer.
#[derive(Debug, Clone)]
pub struct Identified(pub Arc<Consumer>);

/// Where keys are read: `[api_keys]`, or a route's own `api_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// `None` on a route that reads keys from the query only.
    pub header: Option<HeaderName>,
    /// Taken out of the request target before the query is read as fields.
    pub query_param: Option<String>,
}

impl Default for KeySource {
    fn default() -> Self {
        KeySource {
            header: Some(HeaderName::from_static(DEFAULT_HEADER)),
            query_param: None,
        }
    }
}

/// "header x-api-key or query parameter api_key": where a refused caller
/// should have put its key.
impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.header, &self.query_param) {
            (Some(h), Some(q)) => write!(f, "header {h} or query parameter {q}"),
            (Some(h), None) => write!(f, "header {h}"),
            (None, Some(q)) => write!(f, "query parameter {q}"),
            (None, None) => f.write_str("nowhere"),
        }
    }
}

impl KeySource {
    /// For /admin/routes.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "header": self.header.as_ref().map(HeaderName::as_str),
            "query_param": self.query_param,
        })
    }
}

/// A route's use of API keys, compiled.
#[derive(Debug, Clone)]
pub struct RouteKeys {
    /// Where the route reads keys (shared with `[api_keys]` when the route
    /// does not set its own).
    pub source: Arc<KeySource>,
    /// Whether the consumer's name goes on as `x-consumer` (the route's
    /// `forward_claims` lists `consumer`).
    pub forward_consumer: bool,
}

impl Default for RouteKeys {
    fn default() -> Self {
        RouteKeys {
            source: Arc::default(),
            // As `[auth] forward_claims` does by default.
            forward_consumer: true,
        }
    }
}

/// The consumers of a snapshot, and where keys are read by default.
#[derive(Debug, Default)]
pub struct Consumers {
    /// `[api_keys]`: routes without their own `api_keys` share it.
    pub source: Arc<KeySource>,
    by_digest: HashMap<[u8; 32], Arc<Consumer>>,
}

/// SHA-256 of a key.
fn digest(key: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Consumers {
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The consumer whose key `key` is.
    pub fn identify(&self, key: &[u8]) -> Option<Arc<Consumer>> {
        let presented = digest(key);
        let (stored, consumer) = self.by_digest.get_key_value(&presented)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(stored, &presented).ok()?;
        Some(consumer.clone())
    }

    /// A route's `api_keys` (the table at `at`), checked: it names at
    /// least one place, and a query parameter that is not the token's.
    pub fn route_source(
        &self,
        file: &LoadedFile,
        own: &Spanned<crate::config::RouteApiKeysConfig>,
        at: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Arc<KeySource> {
        let c = own.get_ref();
        let source = KeySource {
            header: c
                .header
                .as_ref()
                .and_then(|h| header_name(file, h, &format!("{at}.header"), errors)),
            query_param: c
                .query_param
                .as_ref()
                .and_then(|q| query_param(file, q, &format!("{at}.query_param"), errors)),
        };
        if c.header.is_none() && c.query_param.is_none() {
            errors.push(file.error(
                own,
                at,
                "name where keys are read here: `header`, `query_param` or both",
            ));
            return self.source.clone();
        }
        if source == *self.source {
            return self.source.clone();
        }
        Arc::new(source)
    }

    /// `[api_keys]` and `[consumers]`, checked: digests well formed, key
    /// files and variables readable, no key shared by two consumers, and
    /// quotas naming defined policies.
    pub fn build(
        file: &LoadedFile,
        rate_limits: &RateLimits,
        errors: &mut Vec<ConfigError>,
    ) -> Consumers {
        let cfg = &file.config;
        let mut out = Consumers::default();
        let mut source = KeySource::default();
        if let Some(h) = &cfg.api_keys.header {
            source.header = header_name(file, h, "api_keys.header", errors).or(source.header);
        }
        source.query_param = cfg
            .api_keys
            .query_param
            .as_ref()
            .and_then(|q| query_param(file, q, "api_keys.query_param", errors));
        out.source = Arc::new(source);
        for (name, spanned) in &cfg.consumers {
            let c = spanned.get_ref();
            let at = |key: &str| format!("consumers.{name}.{key}");
            let mut policies = Vec::new();
            for p in &c.rate_limits {
                match rate_limits.get(p.get_ref()) {
                    Some(policy) => policies.push(policy.clone()),
                    None => errors.push(file.error(
                        p,
                        at("rate_limits"),
                        format!(
                            "policy \"{}\" is not defined; add [rate_limits.policies.{}]",
                            p.get_ref(),
                            p.get_ref()
                        ),
                    )),
                }
            }
            let shared: Arc<str> = Arc::from(name.as_str());
            let consumer = Arc::new(Consumer {
                quotas: Arc::new(Quotas {
                    consumer: shared.clone(),
                    policies,
                }),
                name: shared,
            });
            let mut digests: Vec<(usize, [u8; 32], String)> = Vec::new();
            for k in &c.keys {
                match parse_digest(k.get_ref()) {
                    Ok(d) => digests.push((file.line_of(k).unwrap_or(0), d, at("keys"))),
                    Err(e) => errors.push(file.error(k, at("keys"), e)),
                }
            }
            if let Some(var) = &c.key_env {
                match std::env::var(var.get_ref()) {
                    Ok(key) if !key.trim().is_empty() => digests.push((
                        file.line_of(var).unwrap_or(0),
                        digest(key.trim().as_bytes()),
                        at("key_env"),
                    )),
                    _ => errors.push(file.error(
                        var,
                        at("key_env"),
                        format!(
                            "environment variable {} is not set (or empty); set it to the consumer's key",
                            var.get_ref()
                        ),
                    )),
                }
            }
            if let Some(path) = &c.key_file {
                let full = file.relative(path.get_ref());
                match std::fs::read_to_string(&full) {
                    Ok(text) => match text.lines().next().map(str::trim) {
                        Some(key) if !key.is_empty() => digests.push((
                            file.line_of(path).unwrap_or(0),
                            digest(key.as_bytes()),
                            at("key_file"),
                        )),
                        _ => errors.push(file.error(
                            path,
                            at("key_file"),
                            format!("{} is empty; its first line is the key", full.display()),
                        )),
                    },
                    Err(e) => errors.push(file.error(
                        path,
                        at("key_file"),
                        format!("cannot read {}: {e}", full.display()),
                    )),
                }
            }
            if digests.is_empty()
                && c.keys.is_empty()
                && c.key_env.is_none()
                && c.key_file.is_none()
            {
                errors.push(file.error(
                    spanned,
                    format!("consumers.{name}"),
                    "a consumer needs a key: `keys`, `key_env` or `key_file`",
                ));
            }
            for (_, d, key_at) in digests {
                if let Some(other) = out.by_digest.insert(d, consumer.clone()) {
                    if other.name != consumer.name {
                        errors.push(file.error(
                            spanned,
                            key_at,
                            format!(
                                "this key is also a key of consumer \"{}\"; a key names one consumer",
                                other.name
                            ),
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A header keys may come in.
fn header_name(
    file: &LoadedFile,
    h: &Spanned<String>,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(file.error(h, at, format!("\"{}\" is not a header name", h.get_ref())));
            None
        }
    }
}

/// A query parameter keys may come in: a plain name, matched byte for byte,
/// and not the one `[auth] query_param` takes tokens from (whichever is
/// taken out first would leave the other nothing).
fn query_param(
    file: &LoadedFile,
    q: &Spanned<String>,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let name = super::compile::token_name(file, &Some(q.clone()), at, errors)?;
    let token = file.config.auth.query_param.as_ref();
    if token.is_some_and(|t| t.get_ref().trim() == name) {
        errors.push(file.error(
            q,
            at,
            format!("\"{name}\" is also [auth] query_param, where tokens come; give keys another parameter"),
        ));
        return None;
    }
    Some(name)
}

/// `sha256:<64 hex digits>`.
fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let hex = text.trim().strip_prefix("sha256:").ok_or_else(|| {
        "write a key's digest as \"sha256:<64 hex digits>\" (printf %s \"$KEY\" | sha256sum); \
         a key itself belongs in key_env or key_file"
            .to_owned()
    })?;
    if hex.len() != 64 {
        return Err(format!(
            "a SHA-256 digest is 64 hex digits; this one has {}",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).unwrap_or("");
        out[i] = u8::from_str_radix(text, 16)
            .map_err(|_| format!("\"{text}\" is not a hex byte in the digest"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_in_hex_with_their_prefix() {
        // printf %s test | sha256sum
        let d =
            parse_digest("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
                .unwrap();
        assert_eq!(d, digest(b"test"));
        assert!(parse_digest("9f86d081").unwrap_err().contains("sha256:"));
        assert!(parse_digest("sha256:9f86").unwrap_err().contains("64 hex"));
        assert!(parse_digest(&format!("sha256:{}", "zz".repeat(32)))
            .unwrap_err()
            .contains("hex byte"));
    }

    /// A consumer with the key `test`, `[api_keys]` reading the query too,
    /// and `routes` after them.
    fn compiled(
        routes: &str,
    ) -> (
        crate::config::LoadedFile,
        crate::edge::Edge,
        Vec<crate::edge::RouteEdge>,
        Vec<String>,
    ) {
        let text = format!(
            r#"[auth]
query_param = "access_token"

[api_keys]
query_param = "api_key"

[consumers.acme]
keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
{routes}"#
        );
        let file = crate::config::LoadedFile::parse(
            std::path::Path::new("/etc/gateway/routes.toml"),
            &text,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut errors = Vec::new();
        let edge = crate::edge::build(&file, None, &mut errors);
        let routes = file
            .config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| edge.route(&file, i, r, "GET", "/v1/x", &mut errors))
            .collect();
        let errors = errors.iter().map(ToString::to_string).collect();
        (file, edge, routes, errors)
    }

    const KEYED: &str = "method = \"GET\"\npath = \"/v1/x\"\ngrpc = \"a.B/C\"\nauth = \"required\"\ncredentials = [\"api_key\"]\n";

    #[test]
    fn a_route_reads_keys_where_its_api_keys_says_else_where_api_keys_does() {
        let (_, edge, routes, errors) = compiled(&format!(
            "[[routes]]\n{KEYED}\n[[routes]]\n{KEYED}api_keys = {{ query_param = \"key\" }}\n\n\
             [[routes]]\n{KEYED}api_keys = {{ header = \"X-Partner-Key\" }}\n\n\
             [[routes]]\n{KEYED}api_keys = {{ header = \"x-api-key\", query_param = \"api_key\" }}\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let global = &edge.consumers.source;
        assert_eq!(
            global.to_string(),
            "header x-api-key or query parameter api_key"
        );
        assert!(Arc::ptr_eq(&routes[0].api_keys.source, global));
        assert_eq!(routes[1].api_keys.source.to_string(), "query parameter key");
        assert_eq!(routes[1].api_keys.source.header, None);
        assert_eq!(
            routes[2].api_keys.source.to_string(),
            "header x-partner-key"
        );
        // The same places as [api_keys]: shared, not copied.
        assert!(Arc::ptr_eq(&routes[3].api_keys.source, global));
        let shown = routes[1].describe_auth(&edge);
        assert_eq!(
            shown["api_keys"],
            serde_json::json!({"header": null, "query_param": "key"})
        );
    }

    #[test]
    fn the_consumer_goes_on_where_forward_claims_lists_it() {
        let (_, edge, routes, errors) = compiled(&format!(
            "[[routes]]\n{KEYED}\n[[routes]]\n{KEYED}forward_claims = [\"sub\"]\n\n\
             [[routes]]\n{KEYED}forward_claims = [\"consumer\"]\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        // By default, as before the allow-list named it.
        assert_eq!(edge.auth.forward_claims, ["sub", FORWARD_CONSUMER]);
        assert!(routes[0].api_keys.forward_consumer);
        assert!(!routes[1].api_keys.forward_consumer);
        assert!(routes[2].api_keys.forward_consumer);
        // `consumer` is never read from a token.
        for r in &routes {
            assert!(
                r.auth
                    .forward_claims
                    .iter()
                    .all(|(c, _)| c != FORWARD_CONSUMER),
                "{:?}",
                r.auth.forward_claims
            );
        }
        let metadata = |r: &crate::edge::RouteEdge| -> Vec<String> {
            r.describe_auth(&edge)["forward_claims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["metadata"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(metadata(&routes[0]), ["x-jwt-sub", "x-consumer"]);
        assert_eq!(metadata(&routes[1]), ["x-jwt-sub"]);
        assert_eq!(metadata(&routes[2]), ["x-consumer"]);
    }

    #[test]
    fn route_api_keys_problems_are_named_at_their_lines() {
        let (_, _, _, errors) = compiled(&format!(
            "[[routes]]\n{KEYED}api_keys = {{}}\n\n\
             [[routes]]\n{KEYED}api_keys = {{ header = \"x key\", query_param = \"a&b\" }}\n\n\
             [[routes]]\n{KEYED}api_keys = {{ query_param = \"access_token\" }}\n\n\
             [[routes]]\nmethod = \"GET\"\npath = \"/v1/y\"\ngrpc = \"a.B/C\"\napi_keys = {{ header = \"x-k\" }}\n"
        ));
        let f = "/etc/gateway/routes.toml";
        assert_eq!(
            errors,
            [
                format!("{f}:15: routes[0].api_keys: name where keys are read here: `header`, `query_param` or both"),
                format!("{f}:23: routes[1].api_keys.header: \"x key\" is not a header name"),
                format!("{f}:23: routes[1].api_keys.query_param: \"a&b\" is not a usable name (letters, digits, '-', '_', '.')"),
                format!("{f}:31: routes[2].api_keys.query_param: \"access_token\" is also [auth] query_param, where tokens come; give keys another parameter"),
                format!("{f}:37: routes[3].api_keys: where keys are read matters only where they are taken: add \"api_key\" to credentials (and auth = \"required\" or \"optional\")"),
            ]
        );
    }

    #[test]
    fn a_key_names_its_consumer_and_nothing_else_does() {
        let mut c = Consumers::default();
        let acme = Arc::new(Consumer {
            name: "acme".into(),
            quotas: Arc::new(Quotas {
                consumer: "acme".into(),
                policies: Vec::new(),
            }),
        });
        c.by_digest.insert(digest(b"k-1"), acme);
        assert_eq!(&*c.identify(b"k-1").unwrap().name, "acme");
        assert!(c.identify(b"k-2").is_none());
        assert!(c.identify(b"").is_none());
    }
}
