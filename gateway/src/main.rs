//! The `gateway` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::example::{bookstore, signup, DynamicServer};
use gateway::reload::{self, ReloadState};
use gateway::server::{self, Gateway};
use gateway::snapshot::Snapshot;
use prost_reflect::DescriptorPool;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An edge API gateway: REST/JSON to gRPC, routed from routes.toml and
/// google.api.http annotations in descriptors loaded at run time.
#[derive(Parser)]
#[command(name = "gateway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The routes file (used when no subcommand is given: serve).
    #[arg(long, short, default_value = "routes.toml", global = true)]
    config: PathBuf,
    /// Accept a configuration with no route (at start, in `check` and on
    /// reload). Without it such a file is refused: an empty or route-less
    /// routes.toml is far more often a truncated write than intent.
    #[arg(long, global = true)]
    allow_empty: bool,
    #[command(flatten)]
    kv: KvArgs,
}

/// Configuration from Consul KV instead of `--config` (serve, demo, check,
/// routes, openapi). Each flag can also be set by its environment variable,
/// as a Kubernetes manifest would.
#[derive(clap::Args)]
struct KvArgs {
    /// Read routes.toml from this Consul KV key (and watch it) instead of
    /// `--config`. A change is validated like a file change: a bad one is
    /// refused and the last good configuration keeps serving.
    #[arg(long, global = true, env = "GATEWAY_CONSUL_KV", value_name = "KEY")]
    consul_kv: Option<String>,
    /// Every key under this prefix is a descriptor: a .proto source when the
    /// key ends in .proto, otherwise a binary FileDescriptorSet. Replaces
    /// `server.descriptors` of the KV routes.toml.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_CONSUL_KV_DESCRIPTORS",
        value_name = "PREFIX",
        requires = "consul_kv"
    )]
    consul_kv_descriptors: Option<String>,
    /// The Consul agent: `http(s)://host:port`, or `host:port` (http).
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_ADDR",
        default_value = gateway::consul::DEFAULT_ADDRESS,
        value_name = "ADDR"
    )]
    consul_address: String,
    /// A file holding the ACL token, read before every query (so a rotated
    /// token is picked up); without it the token is `CONSUL_HTTP_TOKEN`.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_TOKEN_FILE",
        value_name = "PATH"
    )]
    consul_token_file: Option<PathBuf>,
    /// Where the last good configuration from KV is kept (written whole,
    /// then switched to in one rename). A gateway that cannot reach Consul
    /// at start serves it until Consul answers.
    #[arg(long, global = true, env = "GATEWAY_CONFIG_CACHE", value_name = "DIR")]
    config_cache: Option<PathBuf>,
}

impl KvArgs {
    fn options(&self) -> Option<gateway::consul_kv::KvOptions> {
        let key = self.consul_kv.clone()?;
        Some(gateway::consul_kv::KvOptions {
            address: gateway::consul::normalize_address(&self.consul_address),
            key,
            descriptors: self.consul_kv_descriptors.clone(),
            token: match &self.consul_token_file {
                Some(path) => gateway::consul::TokenSource::File(path.clone()),
                None => {
                    gateway::consul::TokenSource::Env(gateway::consul::DEFAULT_TOKEN_ENV.to_owned())
                }
            },
            cache: self.config_cache.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve REST traffic (the default).
    Serve,
    /// Start the bundled example backends on the loopback endpoints of the
    /// backends their services' routes reach (example.bookstore.v1.Bookstore,
    /// example.signup.v1.Signup), then serve.
    Demo,
    /// Validate routes.toml and the descriptors; print every error and exit 1
    /// if there is any (like `nginx -t`).
    Check,
    /// Print the compiled route table: method, path template, gRPC method,
    /// backend, and where each route came from.
    Routes,
    /// Print the OpenAPI 3.1 document of the routes (what `[openapi] path`
    /// serves), generated from the descriptors and the route table.
    Openapi,
    /// Print the routes.toml reference (markdown): every key with its type,
    /// default and meaning, from the config structs. Reads no config file.
    ConfigReference,
}

/// Writes out the log lines still gathered (`telemetry::log_writer`) when
/// `main` returns, however it returns.
struct FlushLogs;

impl Drop for FlushLogs {
    fn drop(&mut self) {
        gateway::telemetry::log_writer::flush();
    }
}

fn main() -> ExitCode {
    let _flush = FlushLogs;
    let cli = Cli::parse();
    if let Some(Command::ConfigReference) = cli.command {
        print!("{}", gateway::config::reference::markdown());
        return ExitCode::SUCCESS;
    }
    // Log settings come from the config file when it parses; a broken file
    // still gets its errors reported, with the default (text) format. With
    // KV, from the cached copy when there is one (Consul is asked later,
    // inside the runtime).
    let settings_file = match (&cli.kv.consul_kv, &cli.kv.config_cache) {
        (Some(_), Some(cache)) => gateway::consul_kv::KvSource::cached_routes(cache),
        (Some(_), None) => PathBuf::new(),
        (None, _) => cli.config.clone(),
    };
    let (telemetry, workers) = gateway::config::LoadedFile::read(&settings_file)
        .map(|f| {
            let workers = f.config.server.worker_threads.map(|w| *w.get_ref());
            (f.config.telemetry, workers)
        })
        .unwrap_or_default();
    gateway::telemetry::init_logging(&telemetry);
    // One worker: everything on the current-thread scheduler, with no work
    // stealing and no cross-thread wake-ups to pay for. More (the default:
    // one per core): as many serving threads, each with a current-thread
    // runtime of its own (gateway::workers), and this thread's runtime for
    // the accept loop and everything that is not a request. Out of range,
    // the value is ignored here and the config load below reports it
    // (naming the line) and exits.
    let workers = workers
        .filter(|n| (1..=gateway::config::MAX_WORKER_THREADS).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let serving = matches!(cli.command, None | Some(Command::Serve | Command::Demo));
    if serving && workers > 1 {
        if let Err(e) = gateway::workers::start(workers) {
            eprintln!("error: cannot start {workers} worker threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, telemetry)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, telemetry: gateway::config::TelemetryConfig) -> anyhow::Result<ExitCode> {
    // The same path a reload takes, reflection included: what `check`
    // accepts is exactly what `serve` and a reload accept.
    let state = ReloadState::default();
    state.allow_empty.store(cli.allow_empty, Ordering::Relaxed);
    let command = cli.command.unwrap_or(Command::Serve);
    let (kv, loaded) = match cli.kv.options() {
        Some(opts) => {
            let (kv, loaded) =
                start_from_kv(opts, &state, matches!(command, Command::Check)).await?;
            (Some(kv), loaded)
        }
        None => (None, reload::load(&cli.config, None, &state).await),
    };
    let serving = matches!(command, Command::Serve | Command::Demo);
    if let Some(kv) = kv.as_ref().filter(|_| !serving) {
        // The descriptors are compiled by now; nothing else reads the folder.
        kv.source.discard(&kv.start);
    }
    let snapshot = match loaded {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            match &kv {
                Some(kv) => eprintln!(
                    "{} error(s) in {}; fix them and write the key again",
                    errors.0.len(),
                    kv.start.input.name.display(),
                ),
                None => eprintln!(
                    "{} error(s) in {}; fix them and run `gateway check --config {}` again",
                    errors.0.len(),
                    cli.config.display(),
                    cli.config.display()
                ),
            }
            if let Some(kv) = &kv {
                kv.source.discard(&kv.start);
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(kv) = kv.as_ref().filter(|_| serving) {
        kv.source.commit(&kv.start);
    }
    let cli_allow_empty = cli.allow_empty;
    let serve = |snapshot, example| async move {
        let gw = make_gateway(snapshot, cli_allow_empty, kv);
        serve(gw, example, &telemetry).await
    };
    match command {
        Command::Check => {
            for w in &snapshot.warnings {
                eprintln!("warning: {w}");
            }
            // The hash is the one a replica serving this config reports,
            // so a rollout can be checked against it.
            println!(
                "{}: ok ({} routes, {} backends, {} descriptor files{}), hash {}",
                snapshot.config_path.display(),
                snapshot.routes.len(),
                snapshot.backends.len(),
                snapshot.descriptor_files.len(),
                match snapshot.warnings.len() {
                    0 => String::new(),
                    n => format!(", {n} warning(s)"),
                },
                snapshot.config_digest,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes => {
            print!("{}", route_table(&snapshot));
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            let doc = gateway::openapi::document(&snapshot);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        // Handled in main, before any config is read.
        Command::ConfigReference => Ok(ExitCode::SUCCESS),
        Command::Serve => serve(snapshot, None).await,
        Command::Demo => {
            let example = start_example_backends(&snapshot).await?;
            serve(snapshot, Some(example)).await
        }
    }
}

type BuildExample = fn(&DescriptorPool) -> DynamicServer;

/// The bundled example backends `demo` can start: the service each serves
/// and how to build it over the snapshot's descriptors.
const EXAMPLES: &[(&str, BuildExample)] = &[
    (bookstore::SERVICE, bookstore::server),
    (signup::SERVICE, signup::server),
];

/// Binds each example backend whose service a route reaches on every
/// endpoint of that route's backend; returns "service on addresses" lines.
/// A config reaching none of them is an error: `demo` would serve nothing.
async fn start_example_backends(s: &Snapshot) -> anyhow::Result<Vec<String>> {
    let mut started = Vec::new();
    for (service, build) in EXAMPLES {
        let Some(backend) = s.backends.values().find(|b| {
            s.routes.iter().any(|r| {
                Arc::ptr_eq(&r.backend, b)
                    && r.plan.grpc_method.parent_service().full_name() == *service
            })
        }) else {
            continue;
        };
        let mut addrs = Vec::new();
        for ep in &backend.endpoints {
            let listener = tokio::net::TcpListener::bind(&ep.addr).await.with_context(|| {
                format!(
                    "cannot start the example backend on {} (backend \"{}\"); is something else using that port?",
                    ep.addr, backend.name
                )
            })?;
            tokio::spawn(build(&s.pool).serve(listener));
            addrs.push(ep.addr.clone());
        }
        started.push(format!("{service} on {}", addrs.join(", ")));
    }
    if started.is_empty() {
        let names: Vec<&str> = EXAMPLES.iter().map(|(name, _)| *name).collect();
        anyhow::bail!(
            "no route in {} reaches {}; `demo` needs one",
            s.config_path.display(),
            names.join(" or ")
        );
    }
    Ok(started)
}

/// The KV source and the first configuration read from it.
struct KvStart {
    source: Arc<gateway::consul_kv::KvSource>,
    start: gateway::consul_kv::Start,
}

/// Reads the first configuration from Consul KV (or its cache) and builds
/// it. A refused KV value falls back to the cache, when there is one, so a
/// bad write does not stop new replicas from starting; `check` never falls
/// back (it reports on what is in KV now).
async fn start_from_kv(
    opts: gateway::consul_kv::KvOptions,
    state: &ReloadState,
    check: bool,
) -> anyhow::Result<(KvStart, Result<Snapshot, gateway::config::ConfigErrors>)> {
    let address = opts.address.clone();
    let source = Arc::new(gateway::consul_kv::KvSource::new(opts)?);
    let start = source
        .start(!check)
        .await
        .with_context(|| format!("cannot read the configuration from Consul KV at {address}"))?;
    let loaded = build_text(&start.input, state).await;
    if let (Err(errors), false, false) = (&loaded, check, start.from_cache()) {
        if let Some(cached) = source.cached() {
            tracing::error!(errors = %errors, cache = %cached.name.display(), "the configuration in Consul KV is refused; starting from the cached one");
            let cached = Arc::new(cached);
            let from_cache = build_text(&cached, state).await;
            if from_cache.is_ok() {
                let start = gateway::consul_kv::Start::cached(cached);
                return Ok((KvStart { source, start }, from_cache));
            }
        }
    }
    Ok((KvStart { source, start }, loaded))
}

async fn build_text(
    input: &gateway::reload::TextInput,
    state: &ReloadState,
) -> Result<Snapshot, gateway::config::ConfigErrors> {
    reload::load_file(input.parse()?, None, state).await
}

/// Returns to the OS the memory loading the config freed, at start and
/// after each reload. mimalloc keeps freed pages for reuse and gives them
/// back only as the thread that freed them allocates again; a load frees
/// most of what it allocated (the parsed TOML, the descriptors' compiler)
/// on a thread that is then mostly idle, so that memory stayed resident:
/// 40 of the 94 MiB with 10,000 routes. The code a load ran goes too (see
/// [`page_out_code`]). The snapshot is looked at each second, so a reload
/// is followed within one by a release.
async fn release_after_loads(gw: Arc<Gateway>) {
    let mut released = None;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let version = gw.snapshot().version;
        if released != Some(version) {
            released = Some(version);
            release_freed_memory();
            let advised = page_out_code();
            tracing::debug!(
                mib = advised >> 20,
                "after the load: freed memory returned, the binary's code paged out"
            );
        }
    }
}

/// mimalloc's `mi_collect(force)`: every page no allocation uses, returned
/// to the OS now rather than when the allocator next gets round to it.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers and touches only the
    // allocator's own free lists; mimalloc allows it from any thread at any
    // time. It is the process's allocator (`ALLOC` above).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Asks the kernel to drop the binary's resident code and read-only data
/// (`MADV_PAGEOUT`); returns the bytes advised. Starting and loading a
/// config run code serving never does (the CLI, the TOML parser, the
/// descriptor compiler, config checks): the binary's pages were 14 of the
/// 19.4 MiB an idle gateway on the repository's routes.toml held, and 2.9
/// MiB of them stay after this (docs/performance.md). Each page
/// comes back from the file on its next use, so what stays is what serving
/// runs. The pages are clean copies of the file, so nothing is lost; the
/// kernel pages out only what this process alone maps, and only when it may
/// write the file (owner or root), so elsewhere this does nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_out_code() -> usize {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let Some(exe) = exe.to_str() else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in read_only_mappings(&maps, exe) {
        // SAFETY: the range is one whole mapping as the kernel lists it, a
        // read-only mapping of the binary's file. MADV_PAGEOUT changes no
        // content there: the pages are clean and read back from the file on
        // their next use.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc == 0 {
            advised += end - start;
        }
    }
    advised
}

/// The address ranges `/proc/self/maps` lists for read-only mappings of
/// the file at `path`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn read_only_mappings<'a>(
    maps: &'a str,
    path: &'a str,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    maps.lines().filter_map(move |line| {
        // address perms offset dev inode path (the path may hold spaces)
        let mut fields = line.splitn(6, ' ');
        let (range, perms) = (fields.next()?, fields.next()?);
        let mapped = fields.nth(3)?.trim_start();
        if perms.contains('w') || mapped != path {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        Some((
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        ))
    })
}

#[cfg(not(target_os = "linux"))]
fn page_out_code() -> usize {
    0
}

/// The shared state, with the KV watch started when the config is from KV
/// (the file watcher otherwise).
fn make_gateway(s: Snapshot, allow_empty: bool, kv: Option<KvStart>) -> Arc<Gateway> {
    let watch = s.watch;
    let gw = Gateway::new(s);
    gw.reload.allow_empty.store(allow_empty, Ordering::Relaxed);
    match kv {
        Some(kv) => {
            gw.reload
                .input
                .store(Arc::new(Some(kv.start.input.clone())));
            kv.source.clone().spawn_watch(gw.clone(), &kv.start);
        }
        None if watch => reload::spawn_watcher(gw.clone()),
        None => {}
    }
    gw
}

async fn serve(
    gw: Arc<Gateway>,
    example: Option<Vec<String>>,
    telemetry: &gateway::config::TelemetryConfig,
) -> anyhow::Result<ExitCode> {
    let s = gw.snapshot();
    s.log_warnings();
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.listen); another process may hold the port: stop it or change server.listen in {}",
                s.listen,
                s.config_path.display()
            )
        })?;
    let admin = match s.admin_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
            format!(
                "cannot listen on {a} (admin.listen; set admin.enabled = false to run without it)"
            )
        })?),
        None => None,
    };
    let addr = listener.local_addr()?;
    if let Some(redirect) = s.tls.as_ref().and_then(|t| t.redirect_http) {
        let plain = tokio::net::TcpListener::bind(redirect)
            .await
            .with_context(|| format!("cannot listen on {redirect} (server.tls.redirect_http)"))?;
        eprintln!(
            "redirecting http://{redirect} to https on port {}",
            addr.port()
        );
        let port = addr.port();
        tokio::spawn(async move {
            if let Err(e) = gateway::edge::tls::serve_redirect(plain, port).await {
                tracing::error!(error = %e, "the http redirect listener failed");
            }
        });
    }
    let plaintext = match s.tls.as_ref().and_then(|t| t.plaintext_listen) {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (server.tls.plaintext_listen)"))?,
        ),
        None => None,
    };
    let routes = s.routes.len();
    let first_get = s
        .routes
        .iter()
        .find(|r| r.method == "GET" && r.template.variables.is_empty())
        .map(|r| r.template.to_string());
    reload::spawn_sighup(gw.clone());
    if let Some(plain) = &plaintext {
        eprintln!(
            "plaintext (HTTP/1.1, h2c) for internal callers on http://{}",
            plain.local_addr()?
        );
    }
    let scheme = if gw.snapshot().tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("gateway listening on {scheme}://{addr} with {routes} routes");
    if let Some(admin) = &admin {
        eprintln!("admin on http://{}/admin/config", admin.local_addr()?);
    }
    for line in example.iter().flatten() {
        eprintln!("example backend {line}");
    }
    if let Some(path) = first_get {
        eprintln!("try: curl {scheme}://{addr}{path}");
    }
    tokio::spawn(release_after_loads(gw.clone()));
    // Trace export, when configured: set up once (here, inside the runtime
    // its gRPC channel needs), flushed after the drain.
    let traces = gateway::telemetry::otel::init(telemetry).map_err(anyhow::Error::msg)?;
    let served = server::run_with(listener, plaintext, admin, gw, shutdown_signal()).await;
    if let Some(traces) = traces {
        // The flush blocks until the collector answers (or times out).
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    served.context("serving")?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The table `gateway routes` prints.
fn route_table(s: &Snapshot) -> String {
    let mut rows = vec![[
        "METHOD".to_owned(),
        "PATH".to_owned(),
        "GRPC".to_owned(),
        "BACKEND".to_owned(),
        "PROTOCOLS".to_owned(),
        "SOURCE".to_owned(),
    ]];
    for r in &s.routes {
        rows.push([
            r.method.clone(),
            r.template.to_string(),
            format!(
                "{}/{}",
                r.plan.grpc_method.parent_service().full_name(),
                r.plan.grpc_method.name()
            ),
            r.backend.name.clone(),
            r.protocol_names().join(","),
            r.source.to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::read_only_mappings;

    #[test]
    fn only_read_only_mappings_of_the_binary_are_paged_out() {
        let maps = "\
55d8f3a00000-55d8f3b00000 r--p 00000000 fd:01 42    /opt/my gateway/gateway
55d8f3b00000-55d8f4000000 r-xp 00100000 fd:01 42    /opt/my gateway/gateway
55d8f4000000-55d8f4010000 rw-p 00600000 fd:01 42    /opt/my gateway/gateway
55d8f4010000-55d8f4020000 r-xp 00000000 fd:01 43    /opt/my gateway/gateway-old
7f832c0fd000-7f832c2fd000 rw-p 00000000 00:00 0
7f832c900000-7f832cb50000 r-xp 00000000 fd:01 77    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd81433000-7ffd81455000 rw-p 00000000 00:00 0                          [stack]
";
        let ranges: Vec<_> = read_only_mappings(maps, "/opt/my gateway/gateway").collect();
        assert_eq!(
            ranges,
            [
                (0x55d8_f3a0_0000, 0x55d8_f3b0_0000),
                (0x55d8_f3b0_0000, 0x55d8_f400_0000)
            ]
        );
    }
}
