//! The operator's file, `routes.toml`: its schema and the checks that need
//! nothing but the file itself.
//!
//! Checks that need the descriptors (does the method exist, is the path
//! variable a field) live in `snapshot`, which reports through the same
//! [`ConfigError`] so every problem names file, line and field.

mod duration;
mod error;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors, LineIndex};

/// grpc-gateway and Envoy both default to 4 MiB, the gRPC default message size:
/// a larger JSON body could not be sent on as one message anyway.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A backend call that has not answered in 15 s is almost always stuck; routes
/// that need longer say so with `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connecting on a LAN takes milliseconds; a few seconds means the address is wrong.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Kubernetes endpoints controllers and cloud load balancers take a few
/// seconds to stop routing to a pod that turned unready.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(2);
/// Long enough for ordinary unary calls (whose default deadline is 15 s) to finish.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The whole of `routes.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The listener and gateway-wide transcoding behaviour.
    #[serde(default)]
    pub server: ServerConfig,
    /// The operator's listener: health, readiness, route/backend/config views, reload.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Backends by name; routes refer to them by that name.
    #[serde(default)]
    pub backends: BTreeMap<String, Spanned<BackendConfig>>,
    /// Explicit REST routes. They win over `google.api.http` annotations for
    /// the same method and path.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gateway listens for REST traffic.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Folder of descriptor sets and .proto files, relative to routes.toml.
    #[serde(default = "default_descriptors")]
    pub descriptors: Spanned<String>,
    /// Largest request body accepted, in bytes (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Also route every method that carries a `google.api.http` annotation in
    /// a service some backend lists under `services`.
    #[serde(default = "yes")]
    pub routes_from_annotations: bool,
    /// `reject` (default): an unknown JSON field or query parameter is a 400
    /// naming it. `ignore`: drop it silently, as grpc-gateway's
    /// `DiscardUnknown` does.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Write fields that hold their default value (0, "", false, []) in replies.
    #[serde(default)]
    pub emit_defaults: bool,
    /// Write replies with the .proto field names (`page_count`) instead of
    /// lowerCamelCase (`pageCount`). Requests accept both either way.
    #[serde(default)]
    pub proto_field_names: bool,
    /// Request headers copied into gRPC metadata on every route (lowercased).
    /// `Grpc-Metadata-*` headers are always passed on, without the prefix.
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
    /// Reload when routes.toml or the descriptors folder changes on disk.
    #[serde(default = "yes")]
    pub watch: bool,
    /// On SIGTERM, how long to keep accepting after readiness turns false, so
    /// load balancers stop sending before the listener closes.
    pub shutdown_delay: Option<Spanned<String>>,
    /// After the listener closes, how long in-flight requests may run on.
    pub drain_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback by default: the admin API can reload config and shows internals.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// Set to false to run without the admin listener.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            descriptors: default_descriptors(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            routes_from_annotations: true,
            unknown_fields: UnknownFields::default(),
            emit_defaults: false,
            proto_field_names: false,
            forward_headers: Vec::new(),
            watch: true,
            shutdown_delay: None,
            drain_timeout: None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    #[default]
    Reject,
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Static endpoints, `host:port`.
    pub endpoints: Vec<Spanned<String>>,
    /// gRPC services served here, by full name. Annotated methods of these
    /// services are routed to this backend, and routes to them may omit `backend`.
    #[serde(default)]
    pub services: Vec<Spanned<String>>,
    /// Default deadline of calls to this backend, e.g. "15s", "500ms".
    pub timeout: Option<Spanned<String>>,
    /// How long to wait for a TCP connection before answering 503.
    pub connect_timeout: Option<Spanned<String>>,
    /// Also take descriptors from the backend's gRPC server reflection
    /// (grpc.reflection.v1, falling back to v1alpha). Files in the descriptors
    /// folder win on conflict. With no `services`, every service it reports is served.
    #[serde(default)]
    pub reflection: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// HTTP method: GET, POST, PUT, PATCH, DELETE, or a custom one.
    pub method: Spanned<String>,
    /// A google.api.http path template: `/v1/{name=shelves/*}/books/{book}:verb`.
    pub path: Spanned<String>,
    /// `package.Service/Method`.
    pub grpc: Spanned<String>,
    /// A name under `[backends]`; may be omitted when one backend lists the service.
    pub backend: Option<Spanned<String>>,
    /// `"*"` (the whole request message is the body), a top-level field name,
    /// or absent (no body; fields come from the path and query).
    pub body: Option<Spanned<String>>,
    /// A top-level field of the reply to send instead of the whole reply.
    pub response_body: Option<Spanned<String>>,
    /// Deadline for this route, overriding the backend's.
    pub timeout: Option<Spanned<String>>,
    /// Extra request headers copied into gRPC metadata for this route.
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}
fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_owned())
}
fn default_descriptors() -> Spanned<String> {
    Spanned::new(0..0, "descriptors".to_owned())
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn yes() -> bool {
    true
}

/// The parsed file plus what is needed to point at its lines.
#[derive(Debug)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub config: FileConfig,
    pub lines: LineIndex,
    /// FNV-1a 64 of the file's bytes.
    pub hash: u64,
}

impl LoadedFile {
    /// Reads and parses `path`; syntax and schema errors name the line.
    pub fn read(path: &Path) -> Result<LoadedFile, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                path,
                None,
                "",
                format!("cannot read the config file: {e}; pass its path with --config"),
            ))
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<LoadedFile, ConfigErrors> {
        let lines = LineIndex::new(text);
        let config: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| lines.line(s.start));
            ConfigErrors::one(ConfigError::new(path, line, "", e.message().trim()))
        })?;
        Ok(LoadedFile {
            path: path.to_owned(),
            config,
            lines,
            hash: fnv1a(text.as_bytes()),
        })
    }

    /// An error at the position of a spanned value.
    pub fn error<T>(
        &self,
        at: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = at.span();
        let line = (span.end > 0).then(|| self.lines.line(span.start));
        ConfigError::new(&self.path, line, field, message)
    }

    /// The line a spanned value starts on, if it came from the file.
    pub fn line_of<T>(&self, at: &Spanned<T>) -> Option<usize> {
        let span = at.span();
        (span.end > 0).then(|| self.lines.line(span.start))
    }

    /// Resolves a path written in the file relative to the file's folder.
    pub fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_owned();
        }
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_owned())
    }

    /// The listener address, checked.
    pub fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.address(&self.config.server.listen, "server.listen")
    }

    /// The admin listener address, checked.
    pub fn admin_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.address(&self.config.admin.listen, "admin.listen")
    }

    fn address(&self, l: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        l.get_ref().parse().map_err(|_| {
            self.error(
                l,
                field,
                format!(
                    "\"{}\" is not an address; write ip:port, e.g. \"127.0.0.1:8080\"",
                    l.get_ref()
                ),
            )
        })
    }

    /// Parses an optional duration field, pushing an error when it is malformed.
    pub fn duration(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
        errors: &mut Vec<ConfigError>,
    ) -> Duration {
        self.duration_min(value, field, default, false, errors)
    }

    /// As [`Self::duration`]; `allow_zero` for delays where 0 means "none".
    pub fn duration_min(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
        allow_zero: bool,
        errors: &mut Vec<ConfigError>,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if allow_zero || !d.is_zero() => d,
            Ok(_) => {
                errors.push(self.error(v, field, "must be greater than zero"));
                default
            }
            Err(e) => {
                errors.push(self.error(v, field, e));
                default
            }
        }
    }
}

/// Stable across runs and platforms, unlike std's hasher; enough to tell
/// two versions of a file apart in /admin/config.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = LoadedFile::parse(Path::new("r.toml"), "[server]\nlisten = \n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("r.toml:2:"), "{text}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let src = "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n";
        let err = LoadedFile::parse(Path::new("r.toml"), src).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("r.toml:3") && text.contains("lisen"),
            "{text}"
        );
    }

    #[test]
    fn route_fields_keep_their_lines() {
        let src = "[[routes]]\nmethod = \"GET\"\npath = \"/v1/x\"\ngrpc = \"a.B/C\"\n";
        let f = LoadedFile::parse(Path::new("r.toml"), src).unwrap();
        let r = &f.config.routes[0];
        assert_eq!(f.line_of(&r.get_ref().path), Some(3));
        // A route's own span starts at its [[routes]] header.
        assert_eq!(f.line_of(r), Some(1));
    }

    #[test]
    fn defaults_apply_when_server_is_absent() {
        let f = LoadedFile::parse(Path::new("r.toml"), "").unwrap();
        assert_eq!(f.config.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(f.config.server.routes_from_annotations);
        assert_eq!(f.listen().unwrap().port(), 8080);
    }

    #[test]
    fn bad_listen_address_names_field() {
        let f = LoadedFile::parse(Path::new("r.toml"), "[server]\nlisten = \"nope\"\n").unwrap();
        let e = f.listen().unwrap_err().to_string();
        assert!(e.contains("r.toml:2: server.listen:"), "{e}");
    }

    #[test]
    fn descriptors_path_is_relative_to_the_file() {
        let f = LoadedFile::parse(Path::new("/etc/gw/routes.toml"), "").unwrap();
        assert_eq!(
            f.relative("descriptors"),
            PathBuf::from("/etc/gw/descriptors")
        );
        let f = LoadedFile::parse(Path::new("routes.toml"), "").unwrap();
        assert_eq!(f.relative("descriptors"), PathBuf::from("descriptors"));
    }
}
