//! Consumers and their API keys: `[consumers.NAME]` lists a caller's keys
//! (as SHA-256 digests, or the key itself from an environment variable or
//! a file) and its quotas; `[api_keys]` says where clients present a key.
//!
//! A presented key is hashed and looked up by its digest; the digest found
//! is compared again in constant time, so neither the lookup nor the
//! comparison tells an attacker how close a guess came. Keys are never
//! logged nor forwarded: the header (or query parameter) is removed before
//! the call, and the backend learns only the consumer's name (metadata
//! `x-consumer`).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

use super::ratelimit::{Quotas, RateLimits};
use crate::config::{ConfigError, LoadedFile};

/// The header keys arrive in by default.
pub const DEFAULT_HEADER: &str = "x-api-key";

/// The metadata a consumer's name reaches backends under; a client cannot
/// send it itself (it is dropped, like forged `x-jwt-*`).
pub const CONSUMER_METADATA: HeaderName = HeaderName::from_static("grpc-metadata-x-consumer");

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

/// The consumers of a snapshot, and where keys are read from.
#[derive(Debug)]
pub struct Consumers {
    pub header: HeaderName,
    pub query_param: Option<String>,
    by_digest: HashMap<[u8; 32], Arc<Consumer>>,
}

impl Default for Consumers {
    fn default() -> Self {
        Consumers {
            header: HeaderName::from_static(DEFAULT_HEADER),
            query_param: None,
            by_digest: HashMap::new(),
        }
    }
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
        if let Some(h) = &cfg.api_keys.header {
            match HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                Ok(name) => out.header = name,
                Err(_) => errors.push(file.error(
                    h,
                    "api_keys.header",
                    format!("\"{}\" is not a header name", h.get_ref()),
                )),
            }
        }
        out.query_param = cfg
            .api_keys
            .query_param
            .as_ref()
            .map(|q| q.get_ref().clone());
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
