//! One immutable, validated picture of the configuration: descriptors,
//! compiled routes and backends. Startup, `gateway check` and `gateway routes`
//! all build it through [`Snapshot::load`], so what `check` accepts is exactly
//! what the server runs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::HeaderName;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, SerializeOptions,
};
use toml::Spanned;

use crate::config::{
    BackendConfig, ConfigError, ConfigErrors, LoadedFile, RouteConfig, UnknownFields,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_SHUTDOWN_DELAY, DEFAULT_TIMEOUT,
    MAX_WORKER_THREADS,
};
use crate::descriptors;
use crate::routing::{Matcher, Template};
use crate::transcode::request::is_scalar_like;
use crate::transcode::{BodyRule, DecodeOptions, FieldPath};
use crate::upstream::reflection::Reflected;
use crate::upstream::{Backend, BackendDefinition, BackendOptions};

/// Where a route was declared, for `gateway routes` and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    File {
        /// Shared by every route of the file.
        path: Arc<Path>,
        line: Option<usize>,
    },
    Annotation {
        method: String,
    },
    /// A method a backend exposes at `/<package.Service>/<Method>` to
    /// gRPC-Web and Connect clients (`backends.<name>.expose`).
    Rpc {
        backend: String,
    },
}

/// Which protocols for typed clients a route speaks besides REST/JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protocols {
    pub grpc_web: bool,
    pub connect: bool,
}

impl Protocols {
    pub fn any(self) -> bool {
        self.grpc_web || self.connect
    }

    /// The names routes.toml uses, for `gateway routes` and the admin API.
    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.grpc_web {
            out.push("grpc-web");
        }
        if self.connect {
            out.push("connect");
        }
        out
    }
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSource::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            RouteSource::File { path, line: None } => write!(f, "{}", path.display()),
            RouteSource::Annotation { method } => write!(f, "google.api.http on {method}"),
            RouteSource::Rpc { backend } => write!(f, "backends.{backend}.expose"),
        }
    }
}

impl Route {
    /// The protocols the route speaks, for `gateway routes` and the admin
    /// API: `rest`, or those its backend exposes it over.
    pub fn protocol_names(&self) -> Vec<&'static str> {
        if self.rpc.any() {
            self.rpc.names()
        } else {
            vec!["rest"]
        }
    }
}

/// A route with everything the request path needs already resolved, so no
/// descriptor lookup happens per request.
#[derive(Debug)]
pub struct Route {
    pub method: String,
    pub template: Template,
    /// The template as text, for metric labels and logs (made once here, not per request).
    pub label: Arc<str>,
    /// `package.Service/Method`, likewise.
    pub grpc_label: Arc<str>,
    /// The backend's name, likewise.
    pub backend_label: Arc<str>,
    /// Metric handles for the labels above, registered on first use.
    pub metrics: Arc<crate::telemetry::metrics::RouteMetrics>,
    pub source: RouteSource,
    pub grpc_path: PathAndQuery,
    /// How the route's calls are transcoded (method, messages, bindings,
    /// shaping): all transcoding reads of the route.
    pub plan: Arc<crate::transcode::Plan>,
    pub backend: Arc<Backend>,
    pub timeout: Duration,
    /// Shared with the other routes forwarding the same headers
    /// (`server.forward_headers` alone, usually).
    pub forward_headers: Arc<[HeaderName]>,
    /// The route's own `retry_on` codes; `None`: GET routes retry on the
    /// backend's, other routes only after connect failures.
    pub retry_on: Option<Vec<tonic::Code>>,
    /// Authentication, CORS and rate limits of this route.
    pub edge: crate::edge::RouteEdge,
    /// gRPC-Web and Connect, for the routes at `/<package.Service>/<Method>`
    /// (none for REST routes).
    pub rpc: Protocols,
    /// The route's `cache`: its answers are kept in the snapshot's store.
    /// `None` for routes without one, whose path never looks at the cache.
    pub cache: Option<Arc<crate::cache::Policy>>,
    /// The route's static `fallback`, for an unavailable backend.
    pub fallback: Option<Arc<crate::cache::Fallback>>,
    /// The request message's `buf.validate` rules, compiled; `None` when
    /// it has none or the route has `validate = false`.
    pub validator: Option<Arc<crate::validate::Validator>>,
}

/// The gateway's whole configuration, validated and compiled.
pub struct Snapshot {
    pub config_path: PathBuf,
    /// Counts successful loads in this process; shown by /admin/config.
    pub version: u64,
    pub loaded_at: std::time::SystemTime,
    /// FNV-1a of routes.toml as loaded, to tell what is running.
    pub config_hash: u64,
    /// 16 hex digits over routes.toml and the descriptor files (see
    /// `config_digest`): equal on replicas serving the same configuration,
    /// so operators can watch a rollout converge (/admin/config `hash`,
    /// `gateway_config_info`).
    pub config_digest: String,
    /// Where routes.toml came from (file or Consul KV, with its index).
    pub origin: crate::config::Origin,
    /// The descriptors folder, watched for changes.
    pub descriptors_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub watch: bool,
    pub shutdown_delay: Duration,
    /// `server.worker_threads`, checked; `None`: one per core.
    pub worker_threads: Option<usize>,
    pub drain_timeout: Duration,
    /// Backends whose descriptors come from server reflection.
    pub reflection_backends: Vec<String>,
    /// One access-log line per request (`telemetry.access_log`); read when
    /// the listener starts.
    pub access_log: bool,
    /// `telemetry.propagators`: trace formats besides W3C; read when the
    /// listener starts.
    pub propagators: crate::telemetry::propagation::Propagators,
    pub pool: DescriptorPool,
    pub descriptor_files: Vec<descriptors::SourceFile>,
    pub routes: Vec<Arc<Route>>,
    pub matcher: Matcher<Arc<Route>>,
    pub backends: BTreeMap<String, Arc<Backend>>,
    /// What every route's transcoding shares.
    pub transcode: crate::transcode::Settings,
    /// `[server.compression]`: how answers are compressed.
    pub compression: crate::encoding::compress::Policy,
    /// JWT issuers, CORS, rate limits and request limits.
    /// Shared with each request's edge context.
    pub edge: Arc<crate::edge::Edge>,
    /// `[openapi]`, and the generated document once rendered.
    pub openapi: crate::openapi::settings::Settings,
    /// The response cache of the routes with `cache`, empty at every load
    /// (docs/routes.md); `None` when no route caches.
    pub cache: Option<Arc<crate::cache::Store>>,
    /// `[server.tls]`: the listener's certificates; None serves plaintext.
    pub tls: Option<Arc<crate::edge::tls::Tls>>,
    /// Problems that do not refuse the config (annotations binding a method
    /// and path another annotation already binds, a certificate near its
    /// end): printed by `check`,
    /// logged at start and reload, listed by /admin/routes.
    pub warnings: Vec<ConfigError>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("config_path", &self.config_path)
            .field("routes", &self.routes.len())
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A route as declared, before its names are resolved against the descriptors.
struct RouteSpec<'a> {
    method: String,
    path: String,
    grpc: MethodDescriptor,
    /// None when the backend is missing (already reported): the rest of the
    /// route is still checked so one load reports every problem.
    backend: Option<Arc<Backend>>,
    body: Option<&'a str>,
    response_body: Option<&'a str>,
    timeout: Duration,
    forward_headers: Arc<[HeaderName]>,
    retry_on: Option<Vec<tonic::Code>>,
    shape: crate::transcode::shape::ShapeConfig,
    edge: crate::edge::RouteEdge,
    source: RouteSource,
    /// Whether the request is checked against its `buf.validate` rules.
    validate: bool,
}

/// Inputs a snapshot is built from besides routes.toml and the folder.
#[derive(Default)]
pub struct BuildContext<'a> {
    /// Descriptors fetched by server reflection, per backend name.
    pub reflected: BTreeMap<String, Reflected>,
    /// The snapshot being replaced: unchanged backends are carried over with
    /// their connections.
    pub previous: Option<&'a Snapshot>,
    pub version: u64,
}

impl Snapshot {
    /// Logs each of [`Snapshot::warnings`] once, when the snapshot goes live.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(warning = %w, "configuration warning");
        }
    }

    /// Reads `routes.toml` and the descriptors it names, and checks all of it.
    /// Every problem found is returned, not just the first. Needs a tokio
    /// runtime (backend channels are created here, lazily connected).
    pub fn load(config_path: &Path) -> Result<Snapshot, ConfigErrors> {
        let file = LoadedFile::read(config_path)?;
        build(
            &file,
            BuildContext {
                version: 1,
                ..Default::default()
            },
        )
    }

    /// As [`Snapshot::load`] from an already parsed file, with reflection
    /// results and the previous snapshot: the reload path.
    pub fn build(file: &LoadedFile, ctx: BuildContext<'_>) -> Result<Snapshot, ConfigErrors> {
        build(file, ctx)
    }
}

/// Adds reflected files to the pool. Files of the same name already loaded
/// from the descriptors folder win; a set that would redefine a type under
/// another file name is skipped with a warning.
fn merge_reflected(pool: &mut DescriptorPool, backend: &str, reflected: &Reflected) {
    // A FileDescriptorSet is `repeated FileDescriptorProto file = 1`; framing
    // the raw bytes (instead of going through prost-types) keeps extension
    // options such as google.api.http.
    let mut set = Vec::new();
    for f in &reflected.files {
        set.push(0x0a);
        prost::encoding::encode_varint(f.len() as u64, &mut set);
        set.extend_from_slice(f);
    }
    let mut candidate = pool.clone();
    match candidate.decode_file_descriptor_set(set.as_slice()) {
        Ok(()) => *pool = candidate,
        Err(e) => tracing::warn!(
            backend,
            error = %e,
            "descriptors from server reflection conflict with the descriptors folder; the folder wins and the reflected files are skipped"
        ),
    }
}

/// The descriptors a snapshot is built on.
struct Descriptors {
    /// The descriptors folder, where annotation routes' errors point.
    dir: PathBuf,
    files: Vec<descriptors::SourceFile>,
    /// The folder's files with the backends' reflected files merged in.
    pool: DescriptorPool,
}

/// `[server]`, besides the listener address and the descriptors folder.
struct ServerSettings {
    admin_listen: Option<SocketAddr>,
    shutdown_delay: Duration,
    drain_timeout: Duration,
    worker_threads: Option<usize>,
    /// `server.forward_headers`: forwarded on every route.
    forward_headers: Arc<[HeaderName]>,
    propagators: crate::telemetry::propagation::Propagators,
}

/// The backends, and which of them serves each service.
#[derive(Default)]
struct Backends {
    by_name: BTreeMap<String, Arc<Backend>>,
    /// Service full name -> the name of the backend serving it.
    service_owner: BTreeMap<String, String>,
    /// Backend name -> the protocols its services are exposed over.
    exposed: BTreeMap<String, Protocols>,
}

/// The routes compiled so far.
struct RouteTable {
    compilers: Compilers,
    routes: Vec<Arc<Route>>,
    matcher: Matcher<Arc<Route>>,
    /// Annotation bindings not served; see [`Snapshot::warnings`].
    warnings: Vec<ConfigError>,
}

/// The stages, in the order their problems are reported: the listener, the
/// descriptors (nothing else can be checked without them), `[server]`, the
/// backends, the edge, the routes, `[openapi]` and `[telemetry]`.
fn build(file: &LoadedFile, ctx: BuildContext<'_>) -> Result<Snapshot, ConfigErrors> {
    // Unknown keys first, so they come out in the order of the file's own
    // problems and no typo hides behind another error.
    let mut errors = file.unknown_keys.clone();
    let server = &file.config.server;
    let listen = file.listen().map_err(|e| errors.push(e)).ok();
    let Some(descriptors) = load_descriptors(file, &ctx.reflected, &mut errors) else {
        return Err(ConfigErrors(errors));
    };
    let settings = server_settings(file, &mut errors);
    let mut warnings = Vec::new();
    let tls = crate::edge::tls::build(file, &mut errors, &mut warnings);
    let backends = build_backends(file, &descriptors.pool, &ctx, &mut errors);
    // Before the routes, which refer to its issuers and policies.
    let edge = crate::edge::build(file, ctx.previous.map(|p| &*p.edge), &mut errors);
    let cache = crate::cache::new_store(file, &mut errors);
    let decode = DecodeOptions {
        reject_unknown: server.unknown_fields == UnknownFields::Reject,
        max_depth: edge.limits.max_json_depth,
    };
    let table = RouteInputs {
        file,
        pool: &descriptors.pool,
        descriptors_dir: &descriptors.dir,
        backends: &backends,
        forward_headers: &settings.forward_headers,
        file_path: Arc::from(file.path.as_path()),
        edge: &edge,
        cache: cache.as_ref(),
    }
    .compile(decode, &mut errors);
    let openapi =
        crate::openapi::settings::Settings::from_config(file, &table.matcher, &mut errors);
    file.config.telemetry.validate(file, &mut errors);
    file.config.server.compression.validate(file, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Snapshot {
        config_path: file.path.clone(),
        version: ctx.version,
        loaded_at: std::time::SystemTime::now(),
        config_hash: file.hash,
        config_digest: config_digest(file, &descriptors.dir, &descriptors.files),
        origin: file.origin,
        descriptors_dir: descriptors.dir,
        listen: listen.expect("no errors means the address parsed"),
        admin_listen: settings.admin_listen,
        watch: server.watch,
        shutdown_delay: settings.shutdown_delay,
        drain_timeout: settings.drain_timeout,
        worker_threads: settings.worker_threads,
        access_log: file.config.telemetry.access_log,
        propagators: settings.propagators,
        reflection_backends: reflection_backends(file),
        compression: server.compression.policy(),
        transcode: crate::transcode::Settings {
            pool: descriptors.pool.clone(),
            decode,
            encode: SerializeOptions::new()
                .skip_default_fields(!server.emit_defaults)
                .use_proto_field_name(server.proto_field_names),
            max_body_bytes: server.max_body_bytes,
            min_body_rate: edge.limits.min_body_rate,
            multipart: edge.limits.multipart(),
        },
        pool: descriptors.pool,
        descriptor_files: descriptors.files,
        routes: table.routes,
        matcher: table.matcher,
        backends: backends.by_name,
        openapi,
        cache,
        edge: Arc::new(edge),
        tls,
        warnings: table.warnings.into_iter().chain(warnings).collect(),
    })
}

/// The hash replicas report for the configuration they serve: the first 16
/// hex digits of SHA-256 over routes.toml's SHA-256, then, in sorted path
/// order, each descriptor file's path relative to the descriptors folder
/// and its SHA-256. Relative paths keep it equal across replicas whose
/// folders live in different places (a KV cache per pod); descriptors from
/// server reflection are not configuration and are left out.
fn config_digest(file: &LoadedFile, dir: &Path, files: &[descriptors::SourceFile]) -> String {
    let mut input = Vec::with_capacity(32 + files.len() * 64);
    input.extend_from_slice(&file.sha256);
    for f in files {
        let rel = f.path.strip_prefix(dir).unwrap_or(&f.path);
        input.extend_from_slice(rel.to_string_lossy().as_bytes());
        // Paths hold no NUL, so the framing is unambiguous.
        input.push(0);
        input.extend_from_slice(&f.sha256);
    }
    crate::config::sha256(&input)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The backends whose descriptors come from server reflection.
fn reflection_backends(file: &LoadedFile) -> Vec<String> {
    file.config
        .backends
        .iter()
        .filter(|(_, b)| b.get_ref().reflection)
        .map(|(n, _)| n.clone())
        .collect()
}

/// `server.descriptors`, compiled, with the backends' reflected files merged
/// in. `None` when the folder does not load, with one error per broken file
/// so `check` counts and lists each.
fn load_descriptors(
    file: &LoadedFile,
    reflected: &BTreeMap<String, Reflected>,
    errors: &mut Vec<ConfigError>,
) -> Option<Descriptors> {
    let at = &file.config.server.descriptors;
    let dir = file.relative(at.get_ref());
    let loaded = match descriptors::load_dir(&dir) {
        Ok(l) => l,
        Err(e) => {
            let all = match e {
                descriptors::DescriptorError::Many(v) => v,
                one => vec![one],
            };
            for e in all {
                errors.push(file.error(at, "server.descriptors", e.to_string()));
            }
            return None;
        }
    };
    let mut pool = loaded.pool;
    for (backend, reflected) in reflected {
        merge_reflected(&mut pool, backend, reflected);
    }
    Some(Descriptors {
        dir,
        files: loaded.files,
        pool,
    })
}

/// The admin listener, shutdown timing, worker threads and the headers
/// every route forwards.
fn server_settings(file: &LoadedFile, errors: &mut Vec<ConfigError>) -> ServerSettings {
    let server = &file.config.server;
    let admin_listen = if file.config.admin.enabled {
        file.admin_listen().map_err(|e| errors.push(e)).ok()
    } else {
        None
    };
    let shutdown_delay = file.duration_min(
        &server.shutdown_delay,
        "server.shutdown_delay",
        DEFAULT_SHUTDOWN_DELAY,
        true,
        errors,
    );
    let drain_timeout = file.duration(
        &server.drain_timeout,
        "server.drain_timeout",
        DEFAULT_DRAIN_TIMEOUT,
        errors,
    );
    let worker_threads = server.worker_threads.as_ref().and_then(|v| {
        let n = *v.get_ref();
        if (1..=MAX_WORKER_THREADS).contains(&n) {
            Some(n)
        } else {
            errors.push(file.error(
                v,
                "server.worker_threads",
                format!(
                    "must be between 1 and {MAX_WORKER_THREADS}; leave it out for one per core"
                ),
            ));
            None
        }
    });
    let forward_headers = header_list(
        file,
        &server.forward_headers,
        "server.forward_headers",
        errors,
    );
    let mut propagators = crate::telemetry::propagation::Propagators::default();
    for (i, name) in file
        .config
        .telemetry
        .propagators
        .iter()
        .flatten()
        .enumerate()
    {
        match crate::telemetry::propagation::Propagators::parse([name.get_ref().as_str()]) {
            Ok(p) => {
                propagators.b3 |= p.b3;
                propagators.b3multi |= p.b3multi;
                propagators.jaeger |= p.jaeger;
            }
            Err(e) => errors.push(file.error(name, format!("telemetry.propagators[{i}]"), e)),
        }
    }
    ServerSettings {
        admin_listen,
        shutdown_delay,
        drain_timeout,
        worker_threads,
        forward_headers: forward_headers.into(),
        propagators,
    }
}

/// `[backends.NAME]`: each backend and the services it serves.
fn build_backends(
    file: &LoadedFile,
    pool: &DescriptorPool,
    ctx: &BuildContext<'_>,
    errors: &mut Vec<ConfigError>,
) -> Backends {
    let mut out = Backends::default();
    for (name, spanned) in &file.config.backends {
        // Discovery, balancing and resilience; also reports a backend with
        // neither endpoints nor consul.
        let options = crate::upstream::options::backend_options(file, name, spanned, errors);
        let reflected = ctx.reflected.get(name);
        out.claim_services(file, name, spanned.get_ref(), pool, reflected, errors);
        let protocols = exposed_protocols(file, name, spanned.get_ref(), errors);
        if protocols.any() {
            out.exposed.insert(name.clone(), protocols);
        }
        let previous = ctx.previous.and_then(|p| p.backends.get(name));
        if let Some(backend) = backend(file, name, spanned, options, previous, errors) {
            out.by_name.insert(name.clone(), backend);
        }
    }
    out
}

/// A backend's `expose`, checked.
fn exposed_protocols(
    file: &LoadedFile,
    name: &str,
    b: &BackendConfig,
    errors: &mut Vec<ConfigError>,
) -> Protocols {
    let mut out = Protocols::default();
    for p in &b.expose {
        match p.get_ref().as_str() {
            "grpc-web" => out.grpc_web = true,
            "connect" => out.connect = true,
            other => errors.push(file.error(
                p,
                format!("backends.{name}.expose"),
                format!("\"{other}\" is not a protocol the gateway serves; use \"grpc-web\" or \"connect\""),
            )),
        }
    }
    if out.any() && b.services.is_empty() && !b.reflection {
        errors.push(file.error(
            &b.expose[0],
            format!("backends.{name}.expose"),
            "expose serves the methods of the backend's services: list them in `services`",
        ));
    }
    out
}

impl Backends {
    /// Records backend `name` as the server of its `services`, each of
    /// which must be in the descriptors and served by no other backend. A
    /// reflection backend without a list serves what it says it serves.
    fn claim_services(
        &mut self,
        file: &LoadedFile,
        name: &str,
        b: &BackendConfig,
        pool: &DescriptorPool,
        reflected: Option<&Reflected>,
        errors: &mut Vec<ConfigError>,
    ) {
        let field = format!("backends.{name}.services");
        for svc in &b.services {
            if pool.get_service_by_name(svc.get_ref()).is_none() {
                errors.push(file.error(
                    svc,
                    &field,
                    format!(
                        "service \"{}\" is not in the descriptors (known: {})",
                        svc.get_ref(),
                        known_services(pool)
                    ),
                ));
            } else if let Some(other) = self
                .service_owner
                .insert(svc.get_ref().clone(), name.to_owned())
            {
                errors.push(file.error(
                    svc,
                    &field,
                    format!(
                        "service \"{}\" is already served by backend \"{other}\"",
                        svc.get_ref()
                    ),
                ));
            }
        }
        if b.reflection && b.services.is_empty() {
            for svc in reflected.map(|r| r.services.as_slice()).unwrap_or(&[]) {
                if pool.get_service_by_name(svc).is_some() {
                    self.service_owner
                        .entry(svc.clone())
                        .or_insert_with(|| name.to_owned());
                }
            }
        }
    }
}

/// One backend: its timeouts, endpoints and `options`. `None` when it
/// cannot be created (reported at the endpoint at fault).
fn backend(
    file: &LoadedFile,
    name: &str,
    spanned: &Spanned<BackendConfig>,
    options: BackendOptions,
    previous: Option<&Arc<Backend>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<Backend>> {
    let b = spanned.get_ref();
    let field = |f: &str| format!("backends.{name}.{f}");
    let timeout = file.duration(&b.timeout, &field("timeout"), DEFAULT_TIMEOUT, errors);
    let connect_timeout = file.duration(
        &b.connect_timeout,
        &field("connect_timeout"),
        DEFAULT_CONNECT_TIMEOUT,
        errors,
    );
    let definition = BackendDefinition {
        endpoints: b.endpoints.iter().map(|e| e.get_ref().clone()).collect(),
        timeout,
        connect_timeout,
        compression: b.compression,
        tls: b
            .tls
            .as_ref()
            .and_then(|t| crate::upstream::tls::BackendTls::load(file, name, t, errors)),
    };
    // An unchanged backend keeps its live connections, its discovery
    // watch and its health state across a reload.
    if let Some(old) = previous.filter(|old| old.same_as(&definition, &options)) {
        return Some(old.clone());
    }
    // A changed backend whose discovery source is the same starts with
    // the endpoints (and their state) its predecessor knows.
    match Backend::replacing(name, definition, options, previous.map(|b| &**b)) {
        Ok(backend) => Some(Arc::new(backend)),
        Err(e) => {
            let at = b
                .endpoints
                .iter()
                .find(|s| *s.get_ref() == e.addr)
                .map(|s| file.error(s, field("endpoints"), e.to_string()))
                .unwrap_or_else(|| file.error(spanned, field("endpoints"), e.to_string()));
            errors.push(at);
            None
        }
    }
}

/// What routes are compiled against: the descriptors, the backends, the
/// edge policies and the headers every route forwards.
struct RouteInputs<'a> {
    file: &'a LoadedFile,
    pool: &'a DescriptorPool,
    /// Where annotation routes' errors point.
    descriptors_dir: &'a Path,
    backends: &'a Backends,
    /// `server.forward_headers`.
    forward_headers: &'a Arc<[HeaderName]>,
    /// routes.toml's path, for [`RouteSource::File`].
    file_path: Arc<Path>,
    edge: &'a crate::edge::Edge,
    /// The response cache, when some route has `cache`.
    cache: Option<&'a Arc<crate::cache::Store>>,
}

impl RouteInputs<'_> {
    /// Every route: routes.toml's `[[routes]]` first, then (with
    /// `server.routes_from_annotations`) the google.api.http annotations of
    /// the services the backends serve.
    fn compile(&self, decode: DecodeOptions, errors: &mut Vec<ConfigError>) -> RouteTable {
        let server = &self.file.config.server;
        let mut table = RouteTable {
            compilers: Compilers {
                planner: crate::transcode::fast::Planner::new(
                    decode,
                    crate::transcode::wire_json::JsonStyle {
                        emit_defaults: server.emit_defaults,
                        proto_names: server.proto_field_names,
                    },
                ),
                validators: crate::validate::Compiler::new(self.pool),
                methods: Default::default(),
                backends: Default::default(),
                plans: Default::default(),
            },
            routes: Vec::new(),
            matcher: Matcher::new(),
            warnings: Vec::new(),
        };
        for (i, spanned) in self.file.config.routes.iter().enumerate() {
            self.file_route(&mut table, i, spanned, errors);
        }
        if server.routes_from_annotations {
            self.annotation_routes(&mut table, errors);
        }
        self.rpc_routes(&mut table, errors);
        // A rule that does not compile refuses the descriptors, whichever
        // routes use the message; one the gateway does not check is said.
        let at = |p: crate::validate::Problem| {
            ConfigError::new(&self.descriptors_dir.join(&p.file), None, "", p.text)
        };
        errors.extend(table.compilers.validators.take_errors().into_iter().map(at));
        let unchecked = table
            .compilers
            .validators
            .take_warnings()
            .into_iter()
            .map(|p| {
                let mut w = at(p);
                w.message
                    .push_str(" (the backend still sees the request; check it there)");
                w
            });
        table.warnings.extend(unchecked);
        // The table is only read from here on; what growing it left spare
        // would stay allocated as long as the snapshot serves.
        table.matcher.shrink_to_fit();
        table.routes.shrink_to_fit();
        table
    }

    /// The routes at `/<package.Service>/<Method>` of the services whose
    /// backend exposes them to gRPC-Web or Connect clients: POST for every
    /// unary and server-streaming method, and GET (Connect's cacheable
    /// form) for those marked `idempotency_level = NO_SIDE_EFFECTS`.
    /// Client and bidirectional streams need HTTP/2 end to end, which
    /// browsers do not offer; they are not exposed.
    fn rpc_routes(&self, table: &mut RouteTable, errors: &mut Vec<ConfigError>) {
        for (svc_name, backend_name) in &self.backends.service_owner {
            let (Some(service), Some(backend), Some(protocols)) = (
                self.pool.get_service_by_name(svc_name),
                self.backends.by_name.get(backend_name),
                self.backends.exposed.get(backend_name),
            ) else {
                continue;
            };
            for method in service.methods().filter(|m| !m.is_client_streaming()) {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let mut verbs = vec!["POST"];
                if protocols.connect && no_side_effects(&method) && !method.is_server_streaming() {
                    verbs.push("GET");
                }
                for verb in verbs {
                    let spec = RouteSpec {
                        edge: self.edge.rpc_route(self.file, verb, &path),
                        method: verb.to_owned(),
                        path: path.clone(),
                        grpc: method.clone(),
                        backend: Some(backend.clone()),
                        body: Some("*"),
                        response_body: None,
                        timeout: backend.timeout,
                        forward_headers: self.forward_headers.clone(),
                        retry_on: None,
                        shape: Default::default(),
                        source: RouteSource::Rpc {
                            backend: backend_name.clone(),
                        },
                        validate: self.backend_validates(backend_name),
                    };
                    let name = format!("{} (backends.{backend_name}.expose)", method.full_name());
                    let Some(mut route) = self.compile_generated(spec, &name, table, errors) else {
                        continue;
                    };
                    // GET is Connect's form only.
                    route.rpc = match verb {
                        "GET" => Protocols {
                            grpc_web: false,
                            connect: true,
                        },
                        _ => *protocols,
                    };
                    let route = Arc::new(route);
                    match table
                        .matcher
                        .insert(&route.method, &route.template, route.clone())
                    {
                        Ok(()) => table.routes.push(route),
                        Err(c) => errors.push(ConfigError::new(
                            &self.file.path,
                            None,
                            format!("backends.{backend_name}.expose"),
                            format!(
                                "{} {} is already bound by {} ({} {})",
                                route.method,
                                route.template,
                                c.existing.source,
                                c.existing.method,
                                c.existing.template
                            ),
                        )),
                    }
                }
            }
        }
    }

    /// One `[[routes]]` entry: resolved, given its edge policy, compiled and
    /// added, unless it binds a method and path an earlier route binds.
    fn file_route(
        &self,
        table: &mut RouteTable,
        i: usize,
        spanned: &Spanned<RouteConfig>,
        errors: &mut Vec<ConfigError>,
    ) {
        let file = self.file;
        let Some(mut spec) = self.file_route_spec(i, spanned, errors) else {
            return;
        };
        spec.edge = self
            .edge
            .route(file, i, spanned, &spec.method, &spec.path, errors);
        let compiled = compile(
            spec,
            &mut table.compilers,
            &mut |field: &str, msg: String| {
                errors.push(route_error(file, i, spanned, field, msg));
            },
        );
        let Some(mut route) = compiled else { return };
        let extra = crate::cache::compile_route(file, i, spanned, &route, self.cache, errors);
        route.cache = extra.cache;
        route.fallback = extra.fallback;
        table.warnings.extend(extra.warnings);
        let route = Arc::new(route);
        if let Err(conflict) = table
            .matcher
            .insert(&route.method, &route.template, route.clone())
        {
            errors.push(file.error(
                &spanned.get_ref().path,
                format!("routes[{i}].path"),
                format!(
                    "{} {} collides with the route declared at {} ({} {})",
                    route.method,
                    route.template,
                    conflict.existing.source,
                    conflict.existing.method,
                    conflict.existing.template
                ),
            ));
            return;
        }
        table.routes.push(route);
    }

    /// The backend's `validate`: whether the routes made for its services
    /// (annotations, `expose`) check their requests' rules.
    fn backend_validates(&self, backend: &str) -> bool {
        self.file
            .config
            .backends
            .get(backend)
            .is_none_or(|b| b.get_ref().validate)
    }

    /// The google.api.http bindings of every service a backend serves.
    ///
    /// Services in full-name order (a BTreeMap), methods in declaration
    /// order, a method's main binding before its additional ones: the
    /// order that decides which of two conflicting annotations is served.
    fn annotation_routes(&self, table: &mut RouteTable, errors: &mut Vec<ConfigError>) {
        for (svc_name, backend_name) in &self.backends.service_owner {
            let (Some(service), Some(backend)) = (
                self.pool.get_service_by_name(svc_name),
                self.backends.by_name.get(backend_name),
            ) else {
                continue;
            };
            for method in service.methods() {
                let Some(rule) = descriptors::http_rule(&method) else {
                    continue;
                };
                let mut rules = vec![rule.clone()];
                rules.extend(rule.additional_bindings.iter().cloned());
                for rule in &rules {
                    self.annotation_route(table, &method, rule, backend, errors);
                }
            }
        }
    }

    /// One binding of an annotation, compiled and added. A route in
    /// Compiles a route the descriptors made (an annotation, a backend's
    /// `expose`); its problems name the descriptors folder and `name`,
    /// since no routes.toml line holds it.
    fn compile_generated(
        &self,
        spec: RouteSpec<'_>,
        name: &str,
        table: &mut RouteTable,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Route> {
        compile(
            spec,
            &mut table.compilers,
            &mut |field: &str, msg: String| {
                errors.push(ConfigError::new(
                    self.descriptors_dir,
                    None,
                    format!("{name} {field}"),
                    msg,
                ));
            },
        )
    }

    /// routes.toml for the same method and path wins; an earlier annotation
    /// does too, with a warning.
    fn annotation_route(
        &self,
        table: &mut RouteTable,
        method: &MethodDescriptor,
        rule: &descriptors::HttpRule,
        backend: &Arc<Backend>,
        errors: &mut Vec<ConfigError>,
    ) {
        let http_method = rule.method.to_ascii_uppercase();
        let spec = RouteSpec {
            edge: self
                .edge
                .annotation_route(self.file, &http_method, &rule.path),
            method: http_method,
            path: rule.path.clone(),
            grpc: method.clone(),
            backend: Some(backend.clone()),
            body: Some(rule.body.as_str()).filter(|b| !b.is_empty()),
            response_body: Some(rule.response_body.as_str()).filter(|b| !b.is_empty()),
            timeout: backend.timeout,
            forward_headers: self.forward_headers.clone(),
            retry_on: None,
            shape: Default::default(),
            source: RouteSource::Annotation {
                method: method.full_name().to_owned(),
            },
            validate: self.backend_validates(&backend.name),
        };
        let name = format!("{} (google.api.http)", method.full_name());
        let Some(route) = self.compile_generated(spec, &name, table, errors) else {
            return;
        };
        let route = Arc::new(route);
        match table
            .matcher
            .insert(&route.method, &route.template, route.clone())
        {
            Ok(()) => table.routes.push(route),
            // An explicit route in routes.toml wins over the annotation.
            Err(c) if matches!(c.existing.source, RouteSource::File { .. }) => {
                tracing::debug!(route = %route.template, "annotation overridden by routes.toml");
            }
            // Two annotations: third-party protos have these
            // (etcd binds Hash and HashKV to one path), and
            // refusing the whole config for them would take
            // nothing live. The first binding wins, as in
            // grpc-gateway, in the order this loop runs.
            Err(c) => table.warnings.push(ConfigError::new(
                Path::new(method.parent_file().name()),
                None,
                name,
                format!(
                    "{} {} is also bound by {} ({} {}), which wins (annotations are taken by service full name, then method declaration order); this binding is not served. A [[routes]] entry for this method and path chooses instead",
                    route.method,
                    route.template,
                    c.existing.source,
                    c.existing.method,
                    c.existing.template
                ),
            )),
        }
    }

    /// A `[[routes]]` entry with its names resolved: the HTTP method, the
    /// gRPC method and the backend. `None` without a gRPC method, since
    /// nothing else can be checked then; a missing backend still lets the
    /// template and fields be checked.
    fn file_route_spec<'a>(
        &self,
        i: usize,
        spanned: &'a Spanned<RouteConfig>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<RouteSpec<'a>> {
        let file = self.file;
        let r = spanned.get_ref();
        let at = |f: &str| format!("routes[{i}].{f}");
        let method = r.method.get_ref().trim().to_ascii_uppercase();
        if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
            errors.push(file.error(
                &r.method,
                at("method"),
                format!("\"{}\" is not an HTTP method", r.method.get_ref()),
            ));
        }
        let grpc = resolve_method(self.pool, r.grpc.get_ref())
            .map_err(|m| errors.push(file.error(&r.grpc, at("grpc"), m)))
            .ok();
        let backend = self.route_backend(i, spanned, grpc.as_ref(), errors);
        let backend_timeout = backend
            .as_ref()
            .map(|b| b.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let timeout = file.duration(&r.timeout, &at("timeout"), backend_timeout, errors);
        let own = header_list(file, &r.forward_headers, &at("forward_headers"), errors);
        let forward_headers = if own.iter().all(|h| self.forward_headers.contains(h)) {
            self.forward_headers.clone()
        } else {
            let mut all = self.forward_headers.to_vec();
            all.extend(
                own.into_iter()
                    .filter(|h| !self.forward_headers.contains(h)),
            );
            all.into()
        };
        let retry_on =
            crate::upstream::options::route_retry_on(file, &r.retry_on, &at("retry_on"), errors);
        let shape = route_shape(file, i, r, errors);
        Some(RouteSpec {
            method,
            path: r.path.get_ref().clone(),
            grpc: grpc?,
            backend,
            body: r.body.as_ref().map(|b| b.get_ref().as_str()),
            response_body: r.response_body.as_ref().map(|b| b.get_ref().as_str()),
            timeout,
            forward_headers,
            retry_on,
            shape,
            edge: Default::default(),
            source: RouteSource::File {
                path: self.file_path.clone(),
                line: file.line_of(spanned),
            },
            validate: r.validate,
        })
    }

    /// The route's `backend`, or the backend serving the gRPC method's
    /// service. `None` when there is none (reported) or the method is
    /// unknown (reported already).
    fn route_backend(
        &self,
        i: usize,
        spanned: &Spanned<RouteConfig>,
        grpc: Option<&MethodDescriptor>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<Backend>> {
        let file = self.file;
        let at = format!("routes[{i}].backend");
        let backends = &self.backends.by_name;
        let (name, named_at) = match (&spanned.get_ref().backend, grpc) {
            (Some(b), _) => (b.get_ref().clone(), Some(b)),
            (None, Some(m)) => match self
                .backends
                .service_owner
                .get(m.parent_service().full_name())
            {
                Some(owner) => (owner.clone(), None),
                None => {
                    errors.push(file.error(
                        spanned,
                        at,
                        "no backend: name one, or list the service under a backend's services",
                    ));
                    return None;
                }
            },
            (None, None) => return None,
        };
        if let Some(b) = backends.get(&name) {
            return Some(b.clone());
        }
        let msg = format!(
            "backend \"{name}\" is not defined (defined: {}); add [backends.{name}]",
            backends.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        errors.push(match named_at {
            Some(s) => file.error(s, at, msg),
            None => file.error(spanned, at, msg),
        });
        None
    }
}

/// Where a file route's compile error points: at the value of the key it is
/// about when the route sets it, else at the route's `[[routes]]` header.
fn route_error(
    file: &LoadedFile,
    i: usize,
    spanned: &Spanned<RouteConfig>,
    field: &str,
    msg: String,
) -> ConfigError {
    let r = spanned.get_ref();
    let at = |f: &str| format!("routes[{i}].{f}");
    match field {
        "path" => file.error(&r.path, at("path"), msg),
        "body" => match &r.body {
            Some(b) => file.error(b, at("body"), msg),
            None => file.error(spanned, at("body"), msg),
        },
        "response_body" => match &r.response_body {
            Some(b) => file.error(b, at("response_body"), msg),
            None => file.error(spanned, at("response_body"), msg),
        },
        other => file.error(spanned, at(other), msg),
    }
}

/// The route's response shaping and streaming keys, as written; checked
/// against the method when the route is compiled.
fn route_shape(
    file: &LoadedFile,
    i: usize,
    r: &RouteConfig,
    errors: &mut Vec<ConfigError>,
) -> crate::transcode::shape::ShapeConfig {
    crate::transcode::shape::ShapeConfig {
        success_status: r.success_status.as_ref().map(|s| *s.get_ref()),
        response_headers: r
            .response_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect(),
        stream_framing: r.stream_framing.as_ref().map(|s| s.get_ref().clone()),
        stream_timeout: r.stream_timeout.as_ref().map(|_| {
            let key = format!("routes[{i}].stream_timeout");
            file.duration(&r.stream_timeout, &key, DEFAULT_TIMEOUT, errors)
        }),
        multipart: r.multipart,
        websocket: r.websocket,
    }
}

fn header_list(
    file: &LoadedFile,
    list: &[Spanned<String>],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for h in list {
        match HeaderName::from_bytes(h.get_ref().trim().to_ascii_lowercase().as_bytes()) {
            Ok(name) if !out.contains(&name) => out.push(name),
            Ok(_) => {}
            Err(_) => errors.push(file.error(
                h,
                field,
                format!("\"{}\" is not a header name", h.get_ref()),
            )),
        }
    }
    out
}

fn known_services(pool: &DescriptorPool) -> String {
    let names: Vec<String> = pool
        .services()
        .map(|s| s.full_name().to_owned())
        .filter(|n| !n.starts_with("google."))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `package.Service/Method` (a `.` before the method is accepted too).
fn resolve_method(pool: &DescriptorPool, name: &str) -> Result<MethodDescriptor, String> {
    let name = name.trim().trim_start_matches('/');
    let Some((svc, method)) = name.rsplit_once('/').or_else(|| name.rsplit_once('.')) else {
        return Err(format!(
            "\"{name}\" is not a method; write package.Service/Method"
        ));
    };
    let Some(service) = pool.get_service_by_name(svc) else {
        return Err(format!(
            "service \"{svc}\" is not in the descriptors (known: {})",
            known_services(pool)
        ));
    };
    let Some(m) = service.methods().find(|m| m.name() == method) else {
        let names: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        return Err(format!(
            "service {svc} has no method \"{method}\" (methods: {})",
            names.join(", ")
        ));
    };
    // Streaming methods are served too (transcode::stream); what they need
    // from the route (a body for client streaming) is checked when compiling.
    Ok(m)
}

fn field_names(desc: &MessageDescriptor) -> String {
    let names: Vec<String> = desc.fields().map(|f| f.name().to_owned()).collect();
    if names.is_empty() {
        "it has no fields".into()
    } else {
        format!("fields: {}", names.join(", "))
    }
}

fn top_field(desc: &MessageDescriptor, name: &str) -> Result<FieldDescriptor, String> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
        .ok_or_else(|| {
            format!(
                "field \"{name}\" does not exist on {} ({})",
                desc.full_name(),
                field_names(desc)
            )
        })
}

/// Resolves a path variable's field chain; its leaf must hold a single value.
fn path_field(input: &MessageDescriptor, parts: &[Box<str>]) -> Result<FieldPath, String> {
    let mut desc = input.clone();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let field = top_field(&desc, part)?;
        let last = i + 1 == parts.len();
        if field.is_list() || field.is_map() {
            return Err(format!(
                "field \"{}\" is repeated; a path variable binds a single value",
                parts[..=i].join(".")
            ));
        }
        match field.kind() {
            Kind::Message(m) if !last => desc = m,
            Kind::Message(m) if !is_scalar_like(&m) => {
                return Err(format!(
                    "field \"{}\" is a message ({}); a path variable binds a scalar, an enum or a well-known type with a string form",
                    parts.join("."),
                    m.full_name()
                ))
            }
            _ if !last => {
                return Err(format!(
                    "field \"{}\" is not a message, so \"{}\" cannot be below it",
                    parts[..=i].join("."),
                    parts[i + 1]
                ))
            }
            _ => {}
        }
        out.push(field);
    }
    Ok(out)
}

/// What compiling a route draws on, kept across one load's routes so that
/// what many routes have alike is built once and shared (issue 24: memory
/// per route).
struct Compilers {
    planner: crate::transcode::fast::Planner,
    /// Each request message's `buf.validate` rules, compiled once.
    validators: crate::validate::Compiler,
    /// Per gRPC method's full name: its path and its label.
    methods: std::collections::HashMap<String, (PathAndQuery, Arc<str>)>,
    /// Per backend name: its label.
    backends: std::collections::HashMap<String, Arc<str>>,
    /// The plans of routes that shape nothing, by what makes them: many
    /// routes of a large table call one method with the same bindings.
    plans: std::collections::HashMap<PlanKey, Arc<crate::transcode::Plan>>,
}

/// What a plan follows from when its route sets no shaping key: the HTTP
/// method, the gRPC method's full name, the field numbers the path and
/// body bind (the body's last), how the body binds (0: none, 1: `*`, 2: a
/// field) and the response body's field number.
type PlanKey = (String, String, Vec<Vec<u32>>, u8, Option<u32>);

impl Compilers {
    /// `/package.Service/Method` and its label without the first `/`.
    fn method(&mut self, method: &MethodDescriptor) -> Option<(PathAndQuery, Arc<str>)> {
        if let Some(known) = self.methods.get(method.full_name()) {
            return Some(known.clone());
        }
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let label = Arc::from(path.trim_start_matches('/'));
        let entry = (PathAndQuery::try_from(path.as_str()).ok()?, label);
        self.methods
            .insert(method.full_name().to_owned(), entry.clone());
        Some(entry)
    }

    /// The route's transcoding plan; shared with an earlier route's where
    /// both follow from the same [`PlanKey`].
    fn plan(
        &mut self,
        spec: &RouteSpec<'_>,
        path_fields: Vec<FieldPath>,
        body: BodyRule,
        response_body: Option<FieldDescriptor>,
        shaping: crate::transcode::shape::Shaping,
    ) -> Arc<crate::transcode::Plan> {
        let mut bound = Vec::with_capacity(path_fields.len() + 1);
        bound.extend(
            path_fields
                .iter()
                .map(|p| p.iter().map(FieldDescriptor::number).collect()),
        );
        let body_kind = match &body {
            BodyRule::None => 0,
            BodyRule::All => 1,
            BodyRule::Field(f) => {
                bound.push(vec![f.number()]);
                2
            }
        };
        let key = spec.shape.is_empty().then(|| {
            (
                spec.method.clone(),
                spec.grpc.full_name().to_owned(),
                bound.clone(),
                body_kind,
                response_body.as_ref().map(FieldDescriptor::number),
            )
        });
        if let Some(plan) = key.as_ref().and_then(|k| self.plans.get(k)) {
            return plan.clone();
        }
        let fast = self
            .planner
            .for_route(&spec.grpc, &body, &shaping, response_body.as_ref());
        let plan = Arc::new(crate::transcode::Plan {
            grpc_method: spec.grpc.clone(),
            input: spec.grpc.input(),
            output: spec.grpc.output(),
            path_fields,
            bound,
            body,
            response_body,
            fast,
            shaping,
        });
        if let Some(key) = key {
            self.plans.insert(key, plan.clone());
        }
        plan
    }

    fn backend_label(&mut self, name: &str) -> Arc<str> {
        if let Some(label) = self.backends.get(name) {
            return label.clone();
        }
        let label: Arc<str> = Arc::from(name);
        self.backends.insert(name.to_owned(), label.clone());
        label
    }
}

/// How a request binds to a method's messages, checked.
struct Bindings {
    template: Template,
    /// One field chain per template variable, in template order.
    path_fields: Vec<FieldPath>,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
    shaping: crate::transcode::shape::Shaping,
}

/// Compiles a route. Every problem goes to `err` with the route key it is
/// about; `None` when there was one, or when the backend is missing
/// (already reported).
fn compile(
    spec: RouteSpec<'_>,
    compilers: &mut Compilers,
    err: &mut dyn FnMut(&str, String),
) -> Option<Route> {
    let bindings = bind(&spec, err)?;
    let validator = if spec.validate {
        compilers.validators.validator(&spec.grpc.input())
    } else {
        None
    };
    let mut route = assemble(spec, bindings, compilers)?;
    route.validator = validator;
    Some(route)
}

/// Resolves the route's template, body and response body against the
/// method's messages, and its shaping options against the method.
fn bind(spec: &RouteSpec<'_>, err: &mut dyn FnMut(&str, String)) -> Option<Bindings> {
    let all_ok = std::cell::Cell::new(true);
    let mut fail = |field: &str, msg: String| {
        all_ok.set(false);
        err(field, msg);
    };
    let input = spec.grpc.input();
    let output = spec.grpc.output();
    let (template, path_fields) = path_bindings(&spec.path, &input, &mut fail);
    let body = match spec.body {
        None | Some("") => BodyRule::None,
        Some("*") => BodyRule::All,
        Some(name) => match top_field(&input, name) {
            Ok(f) => BodyRule::Field(f),
            Err(m) => {
                fail("body", m);
                BodyRule::None
            }
        },
    };
    let response_body = match spec.response_body {
        None | Some("") => None,
        Some(name) => match top_field(&output, name) {
            Ok(f) => Some(f),
            Err(m) => {
                fail("response_body", m);
                None
            }
        },
    };
    let shaping = crate::transcode::shape::compile(
        &spec.shape,
        &spec.method,
        &spec.grpc,
        &body,
        response_body.as_ref(),
        &mut fail,
    );
    if !all_ok.get() {
        return None;
    }
    Some(Bindings {
        template: template?,
        path_fields,
        body,
        response_body,
        shaping,
    })
}

/// The path template and the field chain of each of its variables.
fn path_bindings(
    path: &str,
    input: &MessageDescriptor,
    fail: &mut dyn FnMut(&str, String),
) -> (Option<Template>, Vec<FieldPath>) {
    let template = match Template::parse(path) {
        Ok(t) => t,
        Err(e) => {
            fail("path", format!("bad path template \"{path}\": {e}"));
            return (None, Vec::new());
        }
    };
    let mut path_fields = Vec::with_capacity(template.variables.len());
    for var in template.variables.iter() {
        match path_field(input, &var.field_path) {
            Ok(p) => path_fields.push(p),
            Err(m) => fail(
                "path",
                format!("path variable {{{}}}: {m}", var.field_path.join(".")),
            ),
        }
    }
    (Some(template), path_fields)
}

/// The route the request path runs: its bindings plus what is derived once
/// here instead of per request (labels, metric handles, the fast path).
fn assemble(spec: RouteSpec<'_>, b: Bindings, compilers: &mut Compilers) -> Option<Route> {
    let backend = spec.backend.clone()?;
    let (grpc_path, grpc_label) = compilers.method(&spec.grpc)?;
    let label: Arc<str> = Arc::from(b.template.to_string());
    let backend_label = compilers.backend_label(&backend.name);
    let metrics = Arc::new(crate::telemetry::metrics::RouteMetrics::new(
        &label,
        &spec.method,
        &backend_label,
        &grpc_label,
    ));
    let Bindings {
        template,
        path_fields,
        body,
        response_body,
        shaping,
    } = b;
    let plan = compilers.plan(&spec, path_fields, body, response_body, shaping);
    Some(Route {
        method: spec.method,
        label,
        grpc_label,
        backend_label,
        metrics,
        template,
        source: spec.source,
        grpc_path,
        plan,
        backend,
        timeout: spec.timeout,
        forward_headers: spec.forward_headers,
        retry_on: spec.retry_on,
        edge: spec.edge,
        rpc: Protocols::default(),
        cache: None,
        fallback: None,
        validator: None,
    })
}

/// Whether a method is marked `option idempotency_level = NO_SIDE_EFFECTS`
/// (field 34 of MethodOptions), which Connect requires of methods it calls
/// with GET.
fn no_side_effects(method: &MethodDescriptor) -> bool {
    let options = method.options();
    options
        .get_field_by_name("idempotency_level")
        .and_then(|v| v.as_enum_number())
        == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/gateway/routes.toml";

    /// A backend serving the end-to-end tests' `testing.v1.Echo`, no routes
    /// from annotations: nine lines.
    const HEAD: &str = include_str!("../../tests/fixtures/echo_backend.toml");

    #[test]
    fn config_digest_covers_file_and_descriptors_but_not_where_they_live() {
        let file = LoadedFile::parse(Path::new(FILE), "[server]\n").unwrap();
        let source = |dir: &str, name: &str, bytes: &[u8]| descriptors::SourceFile {
            path: Path::new(dir).join(name),
            kind: descriptors::SourceKind::Proto,
            content_hash: 0,
            sha256: crate::config::sha256(bytes),
            proto_files: Vec::new(),
        };
        let here = config_digest(&file, Path::new("/a"), &[source("/a", "x.proto", b"1")]);
        let there = config_digest(&file, Path::new("/b/c"), &[source("/b/c", "x.proto", b"1")]);
        assert_eq!(here, there);
        assert_eq!(here.len(), 16);
        let changed = config_digest(&file, Path::new("/a"), &[source("/a", "x.proto", b"2")]);
        assert_ne!(here, changed);
        let renamed = config_digest(&file, Path::new("/a"), &[source("/a", "y.proto", b"1")]);
        assert_ne!(here, renamed);
        let other = LoadedFile::parse(Path::new(FILE), "[server]\n\n").unwrap();
        let edited = config_digest(&other, Path::new("/a"), &[source("/a", "x.proto", b"1")]);
        assert_ne!(here, edited);
    }

    /// [`HEAD`], a blank line and `rest` (from line 11), as the routes.toml
    /// at [`FILE`].
    fn parse(rest: &str) -> LoadedFile {
        let descriptors =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
        let text = format!("{HEAD}\n{rest}").replace(
            "{descriptors}",
            &descriptors.display().to_string().replace('\\', "\\\\"),
        );
        LoadedFile::parse(Path::new(FILE), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn build_ok(file: &LoadedFile, previous: Option<&Snapshot>) -> Snapshot {
        let ctx = BuildContext {
            previous,
            ..Default::default()
        };
        Snapshot::build(file, ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each error as printed: `file:line: key: message`.
    fn build_err(file: &LoadedFile) -> Vec<String> {
        match Snapshot::build(file, BuildContext::default()) {
            Ok(s) => panic!("built, but should not have: {s:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// The one error building `file` gives.
    fn only_error(file: &LoadedFile) -> String {
        let mut errors = build_err(file);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[tokio::test]
    async fn routes_compile_with_their_names_resolved() {
        let file = parse(
            r#"[[routes]]
method = "get"
path = "/v1/echo/{inner.name}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/again"
grpc = "testing.v1.Echo.EchoAgain"
body = "inner"
timeout = "2s"
forward_headers = ["X-Trace"]
"#,
        );
        let s = build_ok(&file, None);
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.backends.keys().collect::<Vec<_>>(), ["echo"]);

        let get = &s.routes[0];
        assert_eq!(get.method, "GET");
        assert_eq!(&*get.label, "/v1/echo/{inner.name}");
        assert_eq!(get.grpc_path.as_str(), "/testing.v1.Echo/Echo");
        assert_eq!(&*get.grpc_label, "testing.v1.Echo/Echo");
        assert_eq!(&*get.backend_label, "echo");
        assert!(Arc::ptr_eq(&get.backend, &s.backends["echo"]));
        // The backend's timeout, where the route sets none.
        assert_eq!(get.timeout, Duration::from_secs(5));
        let names: Vec<&str> = get.plan.path_fields[0].iter().map(|f| f.name()).collect();
        assert_eq!(names, ["inner", "name"]);
        assert_eq!(get.plan.bound, [vec![13, 1]]);
        assert!(matches!(get.plan.body, BodyRule::None));
        assert_eq!(get.source.to_string(), format!("{FILE}:11"));

        let post = &s.routes[1];
        assert_eq!(post.plan.grpc_method.name(), "EchoAgain");
        assert!(matches!(&post.plan.body, BodyRule::Field(f) if f.name() == "inner"));
        assert_eq!(post.plan.bound, [vec![13]]);
        assert_eq!(post.timeout, Duration::from_secs(2));
        assert_eq!(*post.forward_headers, [HeaderName::from_static("x-trace")]);
        assert_eq!(post.source.to_string(), format!("{FILE}:16"));
        assert!(s.warnings.is_empty());
    }

    /// Every route holds one of each, so growing them grows a large
    /// table by that much per route (issue 24: 10,000 routes in 64 MiB).
    /// A new field that is rarely set belongs behind an `Option<Box<_>>`
    /// or in something routes share.
    #[test]
    fn what_every_route_holds_stays_small() {
        use std::mem::size_of;
        assert!(size_of::<Route>() <= 360, "{}", size_of::<Route>());
        assert!(size_of::<crate::edge::RouteEdge>() <= 56);
        assert!(size_of::<Template>() <= 48);
        // The metric handles stay boxed until the route's first request.
        assert!(size_of::<crate::telemetry::metrics::RouteMetrics>() <= 128);
    }

    /// What routes have alike is built once (issue 24), and only that: a
    /// route shaping its answer, binding other fields or using another
    /// HTTP method gets its own plan.
    #[tokio::test]
    async fn routes_alike_share_their_plan_and_labels_and_no_more() {
        let route = |method: &str, path: &str, extra: &str| {
            format!("[[routes]]\nmethod = \"{method}\"\npath = \"{path}\"\ngrpc = \"testing.v1.Echo/Echo\"\n{extra}\n")
        };
        let file = parse(
            &[
                route("GET", "/v1/a/{inner.name}", ""),
                route("GET", "/v1/b/{inner.name}", ""),
                route("GET", "/v1/c/{inner.name}", "success_status = 202"),
                route("GET", "/v1/d/{string_field}", ""),
                route("DELETE", "/v1/a/{inner.name}", ""),
            ]
            .concat(),
        );
        let s = build_ok(&file, None);
        let r = &s.routes;
        assert_eq!(r.len(), 5);
        assert!(Arc::ptr_eq(&r[0].plan, &r[1].plan));
        assert!(Arc::ptr_eq(&r[0].grpc_label, &r[1].grpc_label));
        assert!(Arc::ptr_eq(&r[0].backend_label, &r[1].backend_label));
        assert!(Arc::ptr_eq(&r[0].edge.auth, &r[1].edge.auth));
        assert!(Arc::ptr_eq(&r[0].forward_headers, &r[1].forward_headers));
        assert_eq!(r[0].plan.shaping.success_status, 200);
        assert_eq!(r[2].plan.shaping.success_status, 202);
        assert_eq!(r[3].plan.bound, [vec![10]]);
        assert_eq!(r[0].plan.bound, [vec![13, 1]]);
        for other in &r[2..] {
            assert!(!Arc::ptr_eq(&r[0].plan, &other.plan), "{}", other.label);
        }
    }

    #[tokio::test]
    async fn route_naming_an_unknown_backend_points_at_its_backend_key() {
        let file = parse(
            r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
backend = "nope"
"#,
        );
        assert_eq!(
            only_error(&file),
            format!("{FILE}:15: routes[0].backend: backend \"nope\" is not defined (defined: echo); add [backends.nope]")
        );
    }

    #[tokio::test]
    async fn route_naming_an_unknown_method_lists_the_service_methods() {
        let file = parse(
            r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Nope"
"#,
        );
        assert_eq!(
            only_error(&file),
            format!("{FILE}:14: routes[0].grpc: service testing.v1.Echo has no method \"Nope\" (methods: Echo, EchoAgain, Archive, Annotated, Fail, Sleep, Meta, EchoIntegers)")
        );
    }

    #[tokio::test]
    async fn route_binding_an_unknown_field_lists_the_message_fields() {
        let file = parse(
            r#"[[routes]]
method = "POST"
path = "/v1/{nope}"
grpc = "testing.v1.Echo/Echo"
body = "book"
"#,
        );
        let errors = build_err(&file);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let path = format!("{FILE}:13: routes[0].path: path variable {{nope}}: field \"nope\" does not exist on testing.v1.Everything (fields: int32_field, ");
        assert!(errors[0].starts_with(&path), "{errors:?}");
        let body = format!("{FILE}:15: routes[0].body: field \"book\" does not exist on testing.v1.Everything (fields: int32_field, ");
        assert!(errors[1].starts_with(&body), "{errors:?}");
    }

    #[tokio::test]
    async fn problems_come_out_stage_by_stage() {
        // The route comes first in the file, but routes are compiled after
        // the edge, whose policies they refer to.
        let file = parse(
            r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Nope"

[limits]
max_headers = 0

[server.nope]
"#,
        );
        let errors = build_err(&file);
        let keys: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            ["server.nope", "limits.max_headers", "routes[0].grpc"],
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn missing_descriptors_stop_the_build_before_later_stages() {
        let file = parse("[limits]\nmax_headers = 0\n");
        let mut file = file;
        file.config.server.descriptors = Spanned::new(
            file.config.server.descriptors.span(),
            "/nonexistent/descriptors".to_owned(),
        );
        let errors = build_err(&file);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!("{FILE}:3: server.descriptors: ")),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn reload_keeps_an_unchanged_backend_and_replaces_a_changed_one() {
        let file = parse("[backends.other]\nendpoints = [\"127.0.0.1:2\"]\n");
        let first = build_ok(&file, None);
        let changed = parse("[backends.other]\nendpoints = [\"127.0.0.1:3\"]\n");
        let second = build_ok(&changed, Some(&first));
        assert!(Arc::ptr_eq(
            &first.backends["echo"],
            &second.backends["echo"]
        ));
        assert!(!Arc::ptr_eq(
            &first.backends["other"],
            &second.backends["other"]
        ));
    }

    #[tokio::test]
    async fn annotation_routes_yield_to_file_routes() {
        let mut file = parse(
            r#"[[routes]]
method = "GET"
path = "/v1/annotated/{string_field}"
grpc = "testing.v1.Echo/EchoAgain"
"#,
        );
        file.config.server.routes_from_annotations = true;
        let s = build_ok(&file, None);
        let bound: Vec<(String, String, String)> = s
            .routes
            .iter()
            .map(|r| {
                (
                    r.method.clone(),
                    r.label.to_string(),
                    r.plan.grpc_method.name().to_owned(),
                )
            })
            .collect();
        let expect = |m: &str, p: &str, g: &str| (m.to_owned(), p.to_owned(), g.to_owned());
        assert_eq!(
            bound,
            [
                expect("GET", "/v1/annotated/{string_field}", "EchoAgain"),
                expect("POST", "/v1/things/{name=things/*}:archive", "Archive"),
                expect("GET", "/v1/archived/{name=things/*}", "Archive"),
                expect("PUT", "/v1/things/{name=things/*}/archive", "Archive"),
            ]
        );
        assert_eq!(
            s.routes[1].source,
            RouteSource::Annotation {
                method: "testing.v1.Echo.Archive".into()
            }
        );
        assert!(s.warnings.is_empty());
    }
}
