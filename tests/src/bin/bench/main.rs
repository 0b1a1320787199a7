//! The load benchmark: the gateway (release build, its own process) in front
//! of a fast gRPC backend (its own process), against the same backend called
//! directly over gRPC, on the same machine, in alternating runs so machine
//! noise hits both paths alike.
//!
//! ```text
//! cargo run --release -p gateway-tests --bin bench [-- --seconds 5 --rounds 2 --out bench-results.json]
//! ```
//!
//! The gateway runs with `server.worker_threads = 1`: the load client and
//! the backend keep the second core busy, and on this box one thread (the
//! current-thread scheduler) costs the least CPU per request and serves
//! the most requests. `--workers N` sets another count, `--workers 0`
//! leaves the setting out (one worker per core, the gateway's default).
//!
//! To judge one change, keep the old binary and compare both in one run
//! (`--baseline OLD` runs it right after the new one in every round, so the
//! same noise hits both, with the same config, so a binary from before
//! `server.worker_threads` needs `--workers 0`; `--only NAME` keeps the
//! scenarios whose name contains NAME and skips the paced, 10,000-route
//! and memory parts):
//!
//! ```text
//! cp target/release/gateway /tmp/gateway-before   # then make the change
//! cargo run --release -p gateway-tests --bin bench -- --baseline /tmp/gateway-before --only GET
//! ```
//!
//! Per scenario it reports requests per second, p50/p99/p99.9 latency, the
//! gateway's CPU time per request (utime+stime of the gateway process from
//! /proc, divided by requests served), the gateway's peak resident memory,
//! and the gateway/direct throughput ratio; then the p99 added at half the
//! gateway's maximum rate, throughput with 10,000 routes against 10, and
//! resident memory idle and with 1,000 idle keep-alive connections.
//!
//! The HTTPS scenarios run the small GET on a second gateway (same binary
//! and config plus `[server.tls]`, with an ECDSA P-256 certificate made at
//! start that the client trusts): keep-alive HTTP/1.1 and HTTP/2 over TLS
//! 1.3, and a new connection and TLS 1.3 handshake per request, full or
//! resumed from the client's session cache. Their CPU per request (per
//! handshake, for the handshake scenarios) is printed against the plaintext
//! small GET's from the same run.
//!
//! Two scenarios put a rate limit on the small GET, one that never
//! refuses: `limited local` (the process's own buckets) and `limited redis`
//! (`store = "redis"`: one round trip to a redis-server the bench starts on
//! a free port, skipped with a message when redis-server is missing), so
//! the CPU and p99 of a shared decision show against a local one in one
//! run: `--only limited`.
//!
//! `cached GET` is the small GET on a route with `cache` (ttl one hour): every
//! request after the first is a hit, so its CPU per request against the
//! small GET's (the same message, uncached) shows what a hit saves over a
//! transcoded backend call, printed after the table: `--only GET`.
//!
//! `full edge RS256` / `full edge ES256` (JWT from a cached JWKS, a rate
//! limit, CORS and the access log on the small GET) and `small GET 2
//! workers` run on gateways of their own and are compared with the bare
//! small GET round by round (`variants.rs`). The 1 KiB POST is paced at
//! half its maximum rate too, for its p99 added over direct gRPC. Each
//! gateway run records its largest resident memory; the idle memory of the
//! gateway on the repository's own routes.toml is measured apart.
//!
//! After each scenario's rounds, one more run is profiled with `perf`
//! (`profile.rs`: folded stacks in `bench-profiles/`, the top functions
//! printed; `--no-profile` skips it), and the run ends with every
//! performance target it measured, met or missed (`targets.rs`).
//!
//! The load client is in this process: a lean hyper HTTP/1.1 client (one
//! keep-alive connection per worker, no JSON parsing) for the gateway, and a
//! tonic client over one HTTP/2 connection for the direct path, the way gRPC
//! clients (and the gateway itself) talk to a backend.

mod profile;
mod targets;
mod variants;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use gateway::example::{BoxFuture, DynamicServer};
use gateway::upstream::DynamicCodec;
use http_body_util::{BodyExt, Full};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, Value};
use serde_json::json;

use profile::{print_profiles, profile_json, profile_run};
use targets::{targets, Extra};

const BENCH_PROTO: &str = include_str!("../../../fixtures/bench/bench.proto");

/// The POST of `bench.proto` with `buf.validate` rules on most fields (the
/// "POST 1 KiB validated" scenario), beside it in the descriptors folder
/// of this build only: a `--baseline` binary may predate validation.
const VALIDATED_PROTO: &str = r#"syntax = "proto3";
package bench.v1;
import "buf/validate/validate.proto";
import "google/protobuf/timestamp.proto";
import "bench.proto";

service ValidatedBench {
  rpc CreateValidItem(ValidCreateItemRequest) returns (Item);
}

message ValidItem {
  int64 id = 1 [(buf.validate.field).int64.gte = 0];
  string name = 2 [(buf.validate.field).string = {min_len: 1, max_len: 64}];
  string description = 3 [(buf.validate.field).string.max_len = 200];
  int32 quantity = 4 [(buf.validate.field).int32 = {gte: 0, lte: 1000}];
  double price = 5 [(buf.validate.field).double = {gte: 0, finite: true}];
  bool active = 6;
  repeated string tags = 7 [(buf.validate.field).repeated = {max_items: 10, items: {string: {min_len: 1, max_len: 16}}}];
  State state = 8 [(buf.validate.field).enum.defined_only = true];
  google.protobuf.Timestamp created = 9 [(buf.validate.field).required = true];
  map<string, string> labels = 10 [(buf.validate.field).map = {max_pairs: 8, keys: {string: {pattern: "^[a-z]+$"}}}];
}

message ValidCreateItemRequest {
  ValidItem item = 1 [(buf.validate.field).required = true];
  repeated ValidItem extra = 2 [(buf.validate.field).repeated.max_items = 100];
}
"#;

/// Concurrent requests in flight per run: enough to saturate two cores
/// without measuring only queueing.
const CONCURRENCY: usize = 16;

/// Replies per call in the server-streaming scenario.
const STREAMED: i32 = 10;

struct Options {
    seconds: u64,
    rounds: usize,
    out: PathBuf,
    /// Another gateway binary, measured alternately with this build's.
    baseline: Option<PathBuf>,
    /// Only the scenarios whose name contains this; skips the later parts.
    only: Option<String>,
    /// `server.worker_threads` for this build's gateway (`--workers 0`:
    /// leave it out, one per core).
    workers: Option<usize>,
    /// A `perf` profile of each scenario (`--no-profile`: none).
    profile: bool,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("backend") {
        return run_backend();
    }
    let mut opts = Options {
        seconds: 5,
        rounds: 2,
        out: PathBuf::from("bench-results.json"),
        baseline: None,
        only: None,
        workers: Some(1),
        profile: true,
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("flag needs a value");
        match a.as_str() {
            "--seconds" => opts.seconds = val()?.parse()?,
            "--rounds" => opts.rounds = val()?.parse()?,
            "--out" => opts.out = PathBuf::from(val()?),
            "--baseline" => opts.baseline = Some(PathBuf::from(val()?)),
            "--only" => opts.only = Some(val()?.clone()),
            "--workers" => opts.workers = Some(val()?.parse()?).filter(|n| *n > 0),
            "--no-profile" => opts.profile = false,
            "-h" | "--help" => {
                println!(
                    "usage: bench [--seconds N] [--rounds N] [--out FILE] [--baseline GATEWAY_BINARY] [--only NAME[,NAME...]] [--workers N] [--no-profile]"
                );
                return Ok(());
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    // Three processes (client, gateway, backend) share the machine's cores;
    // two workers here keep the client from starving the other two.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_bench(opts))
}

// ---------------------------------------------------------------------------
// The backend process
// ---------------------------------------------------------------------------

fn bench_pool() -> Result<DescriptorPool> {
    let dir = std::env::temp_dir().join(format!("gateway-bench-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.proto"), BENCH_PROTO)?;
    std::fs::write(dir.join("bench_validated.proto"), VALIDATED_PROTO)?;
    let pool = gateway::descriptors::load_dir(&dir)?.pool;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(pool)
}

/// A ~10-field reply, as the issue's small GET asks.
fn sample_item(desc: &MessageDescriptor, id: i64) -> DynamicMessage {
    let json = json!({
        "id": id.to_string(),
        "name": "Widget",
        "description": "A small widget used to measure the gateway",
        "quantity": 42,
        "price": 9.99,
        "active": true,
        "tags": ["blue", "small", "sale"],
        "state": "ACTIVE",
        "created": "2026-11-21T10:00:00Z",
        "labels": {"team": "edge", "tier": "gold"},
    });
    DynamicMessage::deserialize(desc.clone(), json).expect("sample item matches bench.proto")
}

fn run_backend() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = bench_pool()?;
        let item_desc = pool
            .get_message_by_name("bench.v1.Item")
            .context("bench.v1.Item")?;
        let template = Arc::new(sample_item(&item_desc, 0));
        let streamed = template.clone();
        let server = DynamicServer::new(
            &pool,
            &["bench.v1.Bench", "bench.v1.ValidatedBench"],
            move |m: &MethodDescriptor, req: tonic::Request<DynamicMessage>| {
                let reply = if m.name() == "GetItem" {
                    let id = req
                        .get_ref()
                        .get_field_by_name("id")
                        .and_then(|v| v.as_i64())
                        .unwrap_or(0);
                    let mut item = (*template).clone();
                    item.set_field_by_name("id", Value::I64(id));
                    item
                } else {
                    let mut item = DynamicMessage::new(m.output());
                    item.set_field_by_name("id", Value::I64(1));
                    item
                };
                Box::pin(async move { Ok(tonic::Response::new(reply)) }) as BoxFuture<_>
            },
        );
        // ListItems: `count` copies of the sample item, ids 1..=count.
        let server = server.with_streaming(
            move |_: &MethodDescriptor, req: tonic::Request<gateway::example::MessageStream>| {
                let template = streamed.clone();
                Box::pin(async move {
                    use tokio_stream::StreamExt as _;
                    let mut input = req.into_inner();
                    let count = match input.next().await {
                        Some(Ok(m)) => m
                            .get_field_by_name("count")
                            .and_then(|v| v.as_i32())
                            .unwrap_or(0)
                            .clamp(0, 10_000),
                        _ => 0,
                    };
                    let items = (1..=i64::from(count)).map(move |id| {
                        let mut item = (*template).clone();
                        item.set_field_by_name("id", Value::I64(id));
                        Ok(item)
                    });
                    let out: gateway::example::MessageStream = Box::pin(tokio_stream::iter(items));
                    Ok(tonic::Response::new(out))
                }) as BoxFuture<_>
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        server.serve(listener).await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Processes and /proc
// ---------------------------------------------------------------------------

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn build_gateway() -> Result<PathBuf> {
    eprintln!("building the gateway (release)...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "gateway", "--bin", "gateway"])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p gateway failed");
    }
    // A binary just linked is dirty in the page cache until written back,
    // and the kernel pages out no dirty page: the gateway's code would stay
    // resident as it never does from an image. Best effort.
    let _ = Command::new("sync").status();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    Ok(target.join("release/gateway"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime + stime) / ticks)
}

/// A `Vm*` line of /proc/<pid>/status, in MiB.
fn vm(pid: u32, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in /proc/{pid}/status"))?;
    let kb: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kb / 1024.0)
}

fn start_backend() -> Result<(Proc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("backend")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the backend")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("backend said {line:?}"))?
        .to_owned();
    Ok((Proc(child), addr))
}

/// Writes a config with the two benchmark routes plus `filler` more.
/// `workers`: `server.worker_threads`, or `None` to leave it out (the
/// gateway's default; also what a `--baseline` binary from before the
/// setting existed needs: pass `--workers 0`).
fn write_config(
    dir: &Path,
    backend: &str,
    filler: usize,
    workers: Option<usize>,
    expose: bool,
    limits: Limits<'_>,
) -> Result<(PathBuf, u16, u16)> {
    std::fs::create_dir_all(dir.join("descriptors"))?;
    std::fs::write(dir.join("descriptors/bench.proto"), BENCH_PROTO)?;
    let (port, admin) = (free_port()?, free_port()?);
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndescriptors = \"descriptors\"\nwatch = false\nshutdown_delay = \"0s\"\n{}\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [backends.bench]\nendpoints = [\"{backend}\"]\nservices = [\"bench.v1.Bench\"]\n{}\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/v1/items/{{id}}\"\ngrpc = \"bench.v1.Bench/GetItem\"\n\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/v1/items\"\ngrpc = \"bench.v1.Bench/CreateItem\"\nbody = \"*\"\n\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/v1/stream/items\"\ngrpc = \"bench.v1.Bench/ListItems\"\n\n",
        workers
            .map(|n| format!("worker_threads = {n}\n"))
            .unwrap_or_default(),
        if expose {
            "expose = [\"grpc-web\", \"connect\"]\n"
        } else {
            ""
        }
    );
    if expose {
        // This build only (`cache` is newer than a baseline binary).
        cfg.push_str(CACHED_ROUTE);
        validated_routes(dir, &mut cfg)?;
    }
    if let Limits::Local | Limits::Redis(_) = limits {
        // Limits that never refuse: what is measured is the decision.
        cfg.push_str(
            "[rate_limits.policies.bench_local]\nkey = \"ip\"\nrate = 100000000\n\n\
             [[routes]]\nmethod = \"GET\"\npath = \"/v1/limited/local/{id}\"\ngrpc = \"bench.v1.Bench/GetItem\"\nrate_limit = [\"bench_local\"]\n\n",
        );
    }
    if let Limits::Redis(url) = limits {
        cfg.push_str(&format!(
            "[redis]\nurl = \"{url}\"\n\n\
             [rate_limits.policies.bench_redis]\nkey = \"ip\"\nrate = 100000000\nstore = \"redis\"\n\n\
             [[routes]]\nmethod = \"GET\"\npath = \"/v1/limited/redis/{{id}}\"\ngrpc = \"bench.v1.Bench/GetItem\"\nrate_limit = [\"bench_redis\"]\n\n",
        ));
    }
    for i in 0..filler {
        // Distinct shapes, so the trie really holds `filler` more routes.
        cfg.push_str(&format!(
            "[[routes]]\nmethod = \"GET\"\npath = \"/v1/area{}/items{}/{{id}}\"\ngrpc = \"bench.v1.Bench/GetItem\"\n\n",
            i / 100,
            i % 100
        ));
    }
    let path = dir.join("routes.toml");
    std::fs::write(&path, cfg)?;
    Ok((path, port, admin))
}

/// The rate-limited routes a config gets.
#[derive(Clone, Copy)]
enum Limits<'a> {
    /// None (the baseline binary may predate `store`).
    None,
    /// `limited local` only.
    Local,
    /// Both, the shared one on the redis-server at this URL.
    Redis(&'a str),
}

/// A redis-server for the `limited redis` scenario, on a free port,
/// without persistence; `None` (with a message) when it is not installed.
fn start_redis() -> Result<Option<(Proc, String)>> {
    let port = free_port()?;
    let child = match Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping \"limited redis\": redis-server cannot be started ({e}); apt-get install redis-server");
            return Ok(None);
        }
    };
    let proc = Proc(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("redis-server did not listen on {port} in 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((proc, format!("redis://127.0.0.1:{port}/0"))))
}

async fn start_gateway(bin: &Path, config: &Path, admin: u16) -> Result<Proc> {
    start_gateway_with_log(bin, config, admin, "warn").await
}

/// [`start_gateway`] with another `RUST_LOG`. Logs go to the gateway's
/// stderr; `warn,access=info` writes the access log, a line per request,
/// so stderr is then discarded (written, as to a container runtime's pipe,
/// but not kept) instead of shared with the bench's.
async fn start_gateway_with_log(bin: &Path, config: &Path, admin: u16, log: &str) -> Result<Proc> {
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(if log.contains("access=info") {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .context("starting the gateway")?;
    let proc = Proc(child);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let start = Instant::now();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return Ok(proc);
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the gateway did not become ready in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct HttpCall {
    method: http::Method,
    path: String,
    body: Bytes,
    content_type: &'static str,
    /// More request headers (the full edge's token and origin).
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(Clone)]
struct GrpcCall {
    path: http::uri::PathAndQuery,
    message: DynamicMessage,
    reply: MessageDescriptor,
    /// A server-streaming method: the call ends when the last reply is read.
    streaming: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct RunResult {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Gateway runs only.
    gateway_cpu_us_per_req: Option<f64>,
    /// The gateway's largest resident memory seen during the run (sampled
    /// every 100 ms), in MiB. Gateway runs only.
    gateway_rss_mib: Option<f64>,
}

fn summarize(mut lat: Vec<u32>, errors: u64, elapsed: Duration) -> RunResult {
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i])
    };
    RunResult {
        requests: lat.len() as u64,
        errors,
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        gateway_cpu_us_per_req: None,
        gateway_rss_mib: None,
    }
}

/// One load worker's pacing: none in a closed loop, else one call every
/// `CONCURRENCY / rate` seconds, workers staggered across the interval.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Option<f64>, worker: usize) -> Pacer {
        let interval = rate.map(|r| Duration::from_secs_f64(CONCURRENCY as f64 / r));
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(worker as f64 / CONCURRENCY as f64)
        });
        Pacer {
            interval,
            next: Instant::now() + offset,
        }
    }

    async fn wait(&mut self) {
        if let Some(i) = self.interval {
            tokio::time::sleep_until(self.next.into()).await;
            self.next += i;
        }
    }
}

/// The workers' latencies (us) and error counts, summarised as one run.
type Worker = tokio::task::JoinHandle<Result<(Vec<u32>, u64)>>;

async fn gather(tasks: Vec<Worker>, started: Instant) -> Result<RunResult> {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    Ok(summarize(all, errors, started.elapsed()))
}

/// `rate`: None for as fast as possible (closed loop), Some(rps) paced.
async fn http_load(
    port: u16,
    call: HttpCall,
    dur: Duration,
    rate: Option<f64>,
) -> Result<RunResult> {
    let deadline = Instant::now() + dur;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(65536);
            let mut errors = 0u64;
            let mut pacer = Pacer::new(rate, w);
            while Instant::now() < deadline {
                pacer.wait().await;
                // hyper's HTTP/1 client takes a request only once the
                // previous exchange has fully settled.
                send.ready().await?;
                let mut req = http::Request::builder()
                    .method(call.method.clone())
                    .uri(&call.path)
                    .header(http::header::HOST, "bench")
                    .header(http::header::CONTENT_TYPE, call.content_type)
                    .body(Full::new(call.body.clone()))?;
                req.headers_mut().extend(call.headers.iter().cloned());
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let ok = resp.status() == 200;
                resp.into_body().collect().await?;
                if ok {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    gather(tasks, started).await
}

async fn grpc_load(
    channel: tonic::transport::Channel,
    call: GrpcCall,
    dur: Duration,
    rate: Option<f64>,
) -> Result<RunResult> {
    let deadline = Instant::now() + dur;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (call, channel) = (call.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = tonic::client::Grpc::new(channel);
            let mut lat = Vec::with_capacity(65536);
            let mut errors = 0u64;
            let mut pacer = Pacer::new(rate, w);
            while Instant::now() < deadline {
                pacer.wait().await;
                let t = Instant::now();
                client.ready().await?;
                let request = tonic::Request::new(call.message.clone());
                let codec = DynamicCodec::new(call.reply.clone());
                let ok = if call.streaming {
                    match client
                        .server_streaming(request, call.path.clone(), codec)
                        .await
                    {
                        Ok(r) => {
                            let mut replies = r.into_inner();
                            loop {
                                match replies.message().await {
                                    Ok(Some(_)) => {}
                                    Ok(None) => break true,
                                    Err(_) => break false,
                                }
                            }
                        }
                        Err(_) => false,
                    }
                } else {
                    client
                        .unary(request, call.path.clone(), codec)
                        .await
                        .is_ok()
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    gather(tasks, started).await
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

struct Scenario {
    name: &'static str,
    http: HttpCall,
    grpc: GrpcCall,
    /// Over gRPC-Web or Connect (`expose`): not run on a `--baseline`
    /// binary, which may predate them; compared with this build's small
    /// GET instead.
    rpc: bool,
    /// Behind a rate limit (`limited local`, `limited redis`): not run on a
    /// `--baseline` binary either.
    limited: bool,
}

fn scenarios(pool: &DescriptorPool) -> Result<Vec<Scenario>> {
    let item = pool.get_message_by_name("bench.v1.Item").context("Item")?;
    let get_req = pool
        .get_message_by_name("bench.v1.GetItemRequest")
        .context("GetItemRequest")?;
    let create_req = pool
        .get_message_by_name("bench.v1.CreateItemRequest")
        .context("CreateItemRequest")?;
    let mut get_msg = DynamicMessage::new(get_req);
    get_msg.set_field_by_name("id", Value::I64(12345));
    let get_msg2 = get_msg.clone();
    let item2 = item.clone();
    let body_of = |target: usize| -> Result<(Bytes, DynamicMessage)> {
        // Items until the JSON reaches the target size.
        let one = serde_json::to_value(sample_item(&item, 7))?;
        let mut extra = Vec::new();
        let mut json = json!({"item": one, "extra": extra});
        while serde_json::to_vec(&json)?.len() < target {
            extra.push(one.clone());
            json = json!({"item": one, "extra": extra});
        }
        let bytes = serde_json::to_vec(&json)?;
        let msg = DynamicMessage::deserialize(create_req.clone(), json)?;
        Ok((Bytes::from(bytes), msg))
    };
    let mut list_msg = DynamicMessage::new(
        pool.get_message_by_name("bench.v1.ListItemsRequest")
            .context("ListItemsRequest")?,
    );
    list_msg.set_field_by_name("count", Value::I32(STREAMED));
    let (body_1k, msg_1k) = body_of(1024)?;
    let body_1k_json = body_1k.clone();
    // One enveloped GetItemRequest: flags, length, message.
    let grpc_web_body = {
        let msg = prost::Message::encode_to_vec(&get_msg);
        let mut out = vec![0u8];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        Bytes::from(out)
    };
    let (body_64k, msg_64k) = body_of(64 * 1024)?;
    let get_path = http::uri::PathAndQuery::from_static("/bench.v1.Bench/GetItem");
    let create_path = http::uri::PathAndQuery::from_static("/bench.v1.Bench/CreateItem");
    Ok(vec![
        Scenario {
            name: "small GET",
            http: HttpCall {
                method: http::Method::GET,
                path: "/v1/items/12345".into(),
                body: Bytes::new(),
                content_type: "application/json",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: get_path.clone(),
                message: get_msg.clone(),
                reply: item.clone(),
                streaming: false,
            },
            rpc: false,
            limited: false,
        },
        Scenario {
            name: "gRPC-Web unary",
            http: HttpCall {
                method: http::Method::POST,
                path: "/bench.v1.Bench/GetItem".into(),
                body: grpc_web_body,
                content_type: "application/grpc-web+proto",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: get_path.clone(),
                message: get_msg.clone(),
                reply: item.clone(),
                streaming: false,
            },
            rpc: true,
            limited: false,
        },
        Scenario {
            name: "Connect unary",
            http: HttpCall {
                method: http::Method::POST,
                path: "/bench.v1.Bench/GetItem".into(),
                body: Bytes::from_static(br#"{"id":"12345"}"#),
                content_type: "application/json",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: get_path,
                message: get_msg,
                reply: item.clone(),
                streaming: false,
            },
            rpc: true,
            limited: false,
        },
        Scenario {
            name: format_leak(&format!("POST {} B", body_1k.len())),
            http: HttpCall {
                method: http::Method::POST,
                path: "/v1/items".into(),
                body: body_1k,
                content_type: "application/json",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: create_path.clone(),
                message: msg_1k,
                reply: item.clone(),
                streaming: false,
            },
            rpc: false,
            limited: false,
        },
        Scenario {
            name: format_leak(&format!("POST {} B", body_64k.len())),
            http: HttpCall {
                method: http::Method::POST,
                path: "/v1/items".into(),
                body: body_64k,
                content_type: "application/json",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: create_path,
                message: msg_64k,
                reply: item.clone(),
                streaming: false,
            },
            rpc: false,
            limited: false,
        },
        Scenario {
            name: format_leak(&format!("stream {STREAMED} items")),
            http: HttpCall {
                method: http::Method::GET,
                path: format!("/v1/stream/items?count={STREAMED}"),
                body: Bytes::new(),
                content_type: "application/json",
                headers: Vec::new(),
            },
            grpc: GrpcCall {
                path: http::uri::PathAndQuery::from_static("/bench.v1.Bench/ListItems"),
                message: list_msg,
                reply: item,
                streaming: true,
            },
            rpc: false,
            limited: false,
        },
        validated_post(pool, &body_1k_json, true, &item2)?,
        validated_post(pool, &body_1k_json, false, &item2)?,
        limited_get("limited local", "local", &get_msg2, &item2)?,
        limited_get("limited redis", "redis", &get_msg2, &item2)?,
        cached_get(&get_msg2, &item2),
    ])
}

/// The `cached GET` route: the small GET's method, answers kept an hour.
const CACHED_ROUTE: &str = "[[routes]]\nmethod = \"GET\"\npath = \"/v1/cached/items/{id}\"\ngrpc = \"bench.v1.Bench/GetItem\"\ncache = { ttl = \"1h\" }\n\n";

/// The small GET on [`CACHED_ROUTE`]: after the warm-up, every request is a
/// cache hit. `rpc: true` only keeps it off a `--baseline` binary, which
/// may predate `cache`.
fn cached_get(get_msg: &DynamicMessage, item: &MessageDescriptor) -> Scenario {
    Scenario {
        name: "cached GET",
        http: HttpCall {
            method: http::Method::GET,
            path: "/v1/cached/items/12345".into(),
            body: Bytes::new(),
            content_type: "application/json",
            headers: Vec::new(),
        },
        grpc: GrpcCall {
            path: http::uri::PathAndQuery::from_static("/bench.v1.Bench/GetItem"),
            message: get_msg.clone(),
            reply: item.clone(),
            streaming: false,
        },
        rpc: true,
        limited: false,
    }
}

/// A cache hit against the same GET answered by the backend: the gateway's
/// CPU per request and p99 of `cached GET` and `small GET`, same run.
fn print_cache_costs(table: &[(&str, RunResult, RunResult)]) {
    let row = |name: &str| table.iter().find(|(n, _, _)| *n == name).map(|(_, g, _)| g);
    let (Some(hit), Some(miss)) = (row("cached GET"), row("small GET")) else {
        return;
    };
    let cpu = |r: &RunResult| r.gateway_cpu_us_per_req.unwrap_or(0.0);
    println!(
        "cache hit vs backend call: {:.1} vs {:.1} us gateway CPU/req ({:+.1}%), p99 {:.0} vs {:.0} us, {:.0} vs {:.0} req/s",
        cpu(hit),
        cpu(miss),
        (cpu(hit) / cpu(miss).max(f64::MIN_POSITIVE) - 1.0) * 100.0,
        hit.p99_us,
        miss.p99_us,
        hit.rps,
        miss.rps,
    );
}

/// The routes of [`VALIDATED_PROTO`]'s POST: with its rules checked, and
/// the same with `validate = false`, so one run shows what checking costs.
fn validated_routes(dir: &Path, cfg: &mut String) -> Result<()> {
    std::fs::write(
        dir.join("descriptors/bench_validated.proto"),
        VALIDATED_PROTO,
    )?;
    cfg.push_str(
        "[[routes]]\nmethod = \"POST\"\npath = \"/v1/validated/items\"\ngrpc = \"bench.v1.ValidatedBench/CreateValidItem\"\nbackend = \"bench\"\nbody = \"*\"\n\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/v1/unvalidated/items\"\ngrpc = \"bench.v1.ValidatedBench/CreateValidItem\"\nbackend = \"bench\"\nbody = \"*\"\nvalidate = false\n\n",
    );
    Ok(())
}

/// "POST 1 KiB validated" (or "unvalidated"): the 1 KiB POST's body to a
/// method whose request carries `buf.validate` rules. Not run on a
/// `--baseline` binary (flagged like the limited routes), which may
/// predate validation.
fn validated_post(
    pool: &DescriptorPool,
    body: &Bytes,
    validated: bool,
    item: &MessageDescriptor,
) -> Result<Scenario> {
    let req = pool
        .get_message_by_name("bench.v1.ValidCreateItemRequest")
        .context("ValidCreateItemRequest")?;
    let json: serde_json::Value = serde_json::from_slice(body)?;
    let message = DynamicMessage::deserialize(req, json)?;
    Ok(Scenario {
        name: if validated {
            "POST 1 KiB validated"
        } else {
            "POST 1 KiB unvalidated"
        },
        http: HttpCall {
            method: http::Method::POST,
            path: if validated {
                "/v1/validated/items"
            } else {
                "/v1/unvalidated/items"
            }
            .into(),
            body: body.clone(),
            content_type: "application/json",
            headers: Vec::new(),
        },
        grpc: GrpcCall {
            path: http::uri::PathAndQuery::from_static("/bench.v1.ValidatedBench/CreateValidItem"),
            message,
            reply: item.clone(),
            streaming: false,
        },
        rpc: false,
        limited: true,
    })
}

/// The small GET behind a limit that never refuses, decided in `store`.
fn limited_get(
    name: &'static str,
    store: &str,
    get_msg: &DynamicMessage,
    item: &MessageDescriptor,
) -> Result<Scenario> {
    Ok(Scenario {
        name,
        http: HttpCall {
            method: http::Method::GET,
            path: format!("/v1/limited/{store}/12345"),
            body: Bytes::new(),
            content_type: "application/json",
            headers: Vec::new(),
        },
        grpc: GrpcCall {
            path: http::uri::PathAndQuery::from_static("/bench.v1.Bench/GetItem"),
            message: get_msg.clone(),
            reply: item.clone(),
            streaming: false,
        },
        rpc: false,
        limited: true,
    })
}

/// Scenario names live for the whole (short) program.
fn format_leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

async fn gateway_run(
    gw: &Proc,
    port: u16,
    call: &HttpCall,
    dur: Duration,
    rate: Option<f64>,
    ticks: f64,
) -> Result<RunResult> {
    let pid = gw.0.id();
    let rss = RssSampler::start(pid);
    let before = cpu_seconds(pid, ticks)?;
    let mut r = http_load(port, call.clone(), dur, rate).await?;
    let after = cpu_seconds(pid, ticks)?;
    if r.requests > 0 {
        r.gateway_cpu_us_per_req = Some((after - before) * 1e6 / (r.requests + r.errors) as f64);
    }
    r.gateway_rss_mib = rss.stop().await;
    Ok(r)
}

/// The largest `VmRSS` of a process over a run, read every 100 ms: the
/// memory a load holds while it lasts (`VmHWM` is the peak since start, so
/// it cannot tell one scenario from the one before it).
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<f64>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak: Option<f64> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Ok(now) = vm(pid, "VmRSS:") {
                            peak = Some(peak.map_or(now, |p: f64| p.max(now)));
                        }
                    }
                }
            }
            peak
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> Option<f64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

/// Shows one run's result as it finishes (runs take seconds each).
fn progress(what: &str, r: RunResult) -> RunResult {
    match r.gateway_cpu_us_per_req {
        Some(cpu) => eprintln!("  {what}: {:.0} req/s, {cpu:.1} us CPU/req", r.rps),
        None => eprintln!("  {what}: {:.0} req/s", r.rps),
    }
    r
}

/// The CPU per request of the gRPC-Web and Connect scenarios against the
/// REST small GET's, measured in the same run.
fn print_protocol_costs(table: &[(&str, RunResult, RunResult)]) {
    let cpu_of = |name: &str| {
        table
            .iter()
            .find(|(n, _, _)| *n == name)
            .and_then(|(_, g, _)| g.gateway_cpu_us_per_req)
    };
    if let Some(get) = cpu_of("small GET") {
        for name in ["gRPC-Web unary", "Connect unary"] {
            if let Some(cpu) = cpu_of(name) {
                println!(
                    "{name}: {cpu:.1} us CPU/req, {:+.1}% against the REST small GET's {get:.1} us (same run)",
                    (cpu / get - 1.0) * 100.0
                );
            }
        }
    }
}

/// What a shared (Redis) rate-limit decision costs against a local one:
/// the gateway's CPU per request and p99 of both scenarios, same run, and
/// redis-server's own CPU per request.
fn print_limit_costs(
    table: &[(&str, RunResult, RunResult)],
    redis_cpu: Option<f64>,
    store: Option<&serde_json::Value>,
) {
    let row = |name: &str| table.iter().find(|(n, _, _)| *n == name).map(|(_, g, _)| g);
    let (Some(local), Some(redis)) = (row("limited local"), row("limited redis")) else {
        return;
    };
    let cpu = |r: &RunResult| r.gateway_cpu_us_per_req.unwrap_or(0.0);
    println!(
        "rate limit in Redis vs local: {:.1} vs {:.1} us gateway CPU/req ({:+.1} us), p99 {:.0} vs {:.0} us ({:+.0} us), {:.0} vs {:.0} req/s{}",
        cpu(redis),
        cpu(local),
        cpu(redis) - cpu(local),
        redis.p99_us,
        local.p99_us,
        redis.p99_us - local.p99_us,
        redis.rps,
        local.rps,
        redis_cpu.map_or(String::new(), |c| format!("; redis-server {c:.1} us CPU/req")),
    );
    // Decisions that fell back were local ones: the comparison holds only
    // if there are next to none.
    if let Some(s) = store {
        println!(
            "Redis store: {} decisions, fallbacks {}",
            s["decisions"], s["fallbacks"]
        );
    }
}

/// The gateway's Redis store state (`/admin/rate_limits`), if it has one.
async fn store_state(admin: u16) -> Option<serde_json::Value> {
    let client = reqwest::Client::builder().no_proxy().build().ok()?;
    let v: serde_json::Value = client
        .get(format!("http://127.0.0.1:{admin}/admin/rate_limits"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(v["redis"].clone()).filter(|r| !r.is_null())
}

/// Resident memory of the gateway with the repository's own routes.toml
/// and descriptors (the example config a newcomer starts with), on free
/// ports: idle after start, and idle again after serving 600 requests
/// through the example backends (None when they cannot start).
async fn example_rss(bin: &Path, work: &Path) -> Result<(f64, Option<f64>)> {
    let dir = work.join("example");
    std::fs::create_dir_all(&dir)?;
    let (port, admin) = (free_port()?, free_port()?);
    let config = dir.join("routes.toml");
    std::fs::write(&config, example_config(port, admin)?)?;
    let proc = start_gateway(bin, &config, admin)
        .await
        .context("starting the gateway on the repository's routes.toml")?;
    // Start-up work (descriptors, first health checks) settles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = vm(proc.0.id(), "VmRSS:")?;
    eprintln!("the repository's routes.toml: {idle:.1} MiB resident idle");
    let served = match serve_example(bin, &dir, port).await {
        Ok(()) => {
            let rss = vm(proc.0.id(), "VmRSS:")?;
            eprintln!("the repository's routes.toml: {rss:.1} MiB resident after 600 requests");
            Some(rss)
        }
        Err(e) => {
            eprintln!("the repository's routes.toml: not measured after requests: {e:#}");
            None
        }
    };
    Ok((idle, served))
}

/// The repository's routes.toml on these ports.
fn example_config(port: u16, admin: u16) -> Result<String> {
    let root = workspace_root();
    let mut text = std::fs::read_to_string(root.join("routes.toml"))?
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace(
            "descriptors = \"descriptors\"",
            &format!("descriptors = {:?}", root.join("descriptors")),
        );
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    Ok(text)
}

/// Starts the example backends where routes.toml expects them (`gateway
/// demo`, from a copy of the binary: code pages another process maps
/// count in the measured one's RSS too), and sends 600 requests through
/// the gateway on `port`: the shelves, and a book the backend answers 404.
async fn serve_example(bin: &Path, dir: &Path, port: u16) -> Result<()> {
    let copy = dir.join("example-backends");
    std::fs::copy(bin, &copy)?;
    let (demo_port, demo_admin) = (free_port()?, free_port()?);
    let demo_config = dir.join("demo.toml");
    std::fs::write(&demo_config, example_config(demo_port, demo_admin)?)?;
    let demo = Proc(
        Command::new(&copy)
            .args(["demo", "--config"])
            .arg(&demo_config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the example backends")?,
    );
    let client = reqwest::Client::builder().no_proxy().build()?;
    let shelves = format!("http://127.0.0.1:{port}/v1/shelves");
    let start = Instant::now();
    while !client
        .get(&shelves)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the example backends did not answer through the gateway in 30 s (is 127.0.0.1:50051 taken?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = format!("http://127.0.0.1:{port}/v1/shelves/1/books/99");
    for _ in 0..300 {
        client.get(&shelves).send().await?.bytes().await?;
        client.get(&missing).send().await?.bytes().await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(demo);
    Ok(())
}

/// What the scenarios on gateways of their own (HTTPS, the variants)
/// share: the options, the binary, the backend, the work folder, the
/// direct channel, clock ticks and the profiler.
#[derive(Clone, Copy)]
struct Setup<'a> {
    opts: &'a Options,
    bin: &'a Path,
    backend_addr: &'a str,
    work: &'a Path,
    channel: &'a tonic::transport::Channel,
    ticks: f64,
    profiler: &'a profile::Profiler,
}

/// Median of the runs by rps (robust to one noisy run).
fn median(mut runs: Vec<RunResult>) -> RunResult {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[runs.len() / 2].clone()
}

async fn run_bench(opts: Options) -> Result<()> {
    let bin = build_gateway()?;
    let ticks = clock_ticks();
    let dur = Duration::from_secs(opts.seconds);
    let pool = bench_pool()?;
    let selected = |name: &str| {
        opts.only
            .as_ref()
            .is_none_or(|o| o.split(',').any(|part| name.contains(part)))
    };
    let redis = if selected("limited redis") {
        start_redis()?
    } else {
        None
    };
    let scenarios: Vec<Scenario> = scenarios(&pool)?
        .into_iter()
        .filter(|s| s.name != "limited redis" || redis.is_some())
        .collect();
    let (_backend, backend_addr) = start_backend()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend_addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let work = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    // Before any other gateway of this binary runs: the pages of the code
    // another process has mapped count in this one's RSS too, and the
    // kernel will not page out what two processes map.
    let (rss_example, rss_example_served) = match opts.only {
        None => example_rss(&bin, &work).await?,
        Some(_) => (0.0, None),
    };
    let (config, port, admin) = write_config(
        &work.join("small"),
        &backend_addr,
        8,
        opts.workers,
        true,
        match &redis {
            Some((_, url)) => Limits::Redis(url),
            None => Limits::Local,
        },
    )?;
    let gw = start_gateway(&bin, &config, admin).await?;
    let rss_idle = vm(gw.0.id(), "VmRSS:")?;
    eprintln!(
        "gateway pid {} ready, {rss_idle:.1} MiB resident, server.worker_threads = {}",
        gw.0.id(),
        opts.workers
            .map_or("default (one per core)".to_owned(), |n| n.to_string())
    );
    let base = match &opts.baseline {
        Some(path) => {
            let (config, port, admin) = write_config(
                &work.join("baseline"),
                &backend_addr,
                8,
                opts.workers,
                false,
                Limits::None,
            )?;
            let proc = start_gateway(path, &config, admin).await?;
            let rss = vm(proc.0.id(), "VmRSS:")?;
            eprintln!(
                "baseline {} pid {} ready, {rss:.1} MiB resident",
                path.display(),
                proc.0.id()
            );
            Some((proc, port, rss))
        }
        None => None,
    };

    let profiler = profile::Profiler::new(&workspace_root().join("bench-profiles"), opts.profile);
    if let Some(why) = profiler.unavailable() {
        eprintln!("no CPU profiles: {why}");
    }
    let mut profiles = Vec::new();
    let mut table = Vec::new();
    let mut base_table = Vec::new();
    let mut small_get_max = 0.0;
    let mut redis_cpu_per_req = None;
    for s in &scenarios {
        if !selected(s.name) {
            continue;
        }
        let mut gw_runs = Vec::new();
        let mut base_runs = Vec::new();
        let mut direct_runs = Vec::new();
        // Warm both paths (connections, allocator, caches).
        gateway_run(&gw, port, &s.http, Duration::from_millis(500), None, ticks).await?;
        let base = base.as_ref().filter(|_| !s.rpc && !s.limited);
        let redis_cpu = |redis: &Option<(Proc, String)>| match redis {
            Some((p, _)) if s.name == "limited redis" => cpu_seconds(p.0.id(), ticks).ok(),
            _ => None,
        };
        if let Some((b, bport, _)) = base {
            gateway_run(b, *bport, &s.http, Duration::from_millis(500), None, ticks).await?;
        }
        grpc_load(
            channel.clone(),
            s.grpc.clone(),
            Duration::from_millis(500),
            None,
        )
        .await?;
        let redis_before = redis_cpu(&redis);
        for round in 0..opts.rounds {
            eprintln!("{}: round {}/{}", s.name, round + 1, opts.rounds);
            gw_runs.push(progress(
                "gateway",
                gateway_run(&gw, port, &s.http, dur, None, ticks).await?,
            ));
            if let Some((b, bport, _)) = base {
                base_runs.push(progress(
                    "baseline",
                    gateway_run(b, *bport, &s.http, dur, None, ticks).await?,
                ));
            }
            direct_runs.push(progress(
                "direct",
                grpc_load(channel.clone(), s.grpc.clone(), dur, None).await?,
            ));
        }
        if let (Some(before), Some(after)) = (redis_before, redis_cpu(&redis)) {
            let served: u64 = gw_runs.iter().map(|r| r.requests + r.errors).sum();
            redis_cpu_per_req = Some((after - before) * 1e6 / served.max(1) as f64);
        }
        if let Some(p) = profile_run(&profiler, &gw, port, s, ticks).await? {
            profiles.push((s.name, p));
        }
        let (g, d) = (median(gw_runs), median(direct_runs));
        if s.name == "small GET" {
            small_get_max = g.rps;
        }
        if !base_runs.is_empty() {
            base_table.push((s.name, median(base_runs), d.clone()));
        }
        table.push((s.name, g, d));
    }
    let setup = Setup {
        opts: &opts,
        bin: &bin,
        backend_addr: &backend_addr,
        work: &work,
        channel: &channel,
        ticks,
        profiler: &profiler,
    };
    // HTTPS next to the plaintext small GET (this build only: a baseline
    // binary may predate the TLS listener).
    let (https_rows, tls_notes) = match scenarios.iter().find(|s| s.name == "small GET") {
        Some(get) => run_https(&setup, get).await?,
        None => (Vec::new(), Vec::new()),
    };
    table.extend(https_rows);
    let variants = match scenarios.iter().find(|s| s.name == "small GET") {
        Some(get) => variants::run(&setup, get, (&gw, port)).await?,
        None => variants::Measured {
            rows: Vec::new(),
            ratios: Vec::new(),
            profiles: Vec::new(),
        },
    };
    table.extend(variants.rows.iter().cloned());
    profiles.extend(variants.profiles.iter().cloned());
    let store = store_state(admin).await;
    let base_rows = match &base {
        Some((_, _, rss)) => {
            println!("\nbaseline ({rss:.1} MiB resident after start):");
            print_table(&base_table)
        }
        None => Vec::new(),
    };
    drop(base);
    if opts.only.is_some() {
        println!("\nthis build ({rss_idle:.1} MiB resident after start):");
        let rows = print_table(&table);
        print_protocol_costs(&table);
        print_cache_costs(&table);
        print_tls_costs(&table, &tls_notes);
        print_limit_costs(&table, redis_cpu_per_req, store.as_ref());
        variants::print(&variants);
        print_profiles(&profiles, &profiler);
        let targets = targets(&table, &variants, &Extra::default());
        return write_report(
            &opts,
            rows,
            base_rows,
            json!({"profiles": profile_json(&profiles), "targets": targets}),
        );
    }

    // p99 added at half the gateway's maximum rate.
    let half = small_get_max / 2.0;
    eprintln!("small GET paced at {half:.0} req/s on both paths");
    let paced_gw = gateway_run(&gw, port, &scenarios[0].http, dur, Some(half), ticks).await?;
    let paced_direct =
        grpc_load(channel.clone(), scenarios[0].grpc.clone(), dur, Some(half)).await?;
    // The same for the 1 KiB POST.
    let post_1k = scenarios
        .iter()
        .find(|s| s.name.starts_with("POST ") && s.http.body.len() < 4096 && !s.limited);
    let post_1k_max = post_1k.and_then(|p| table.iter().find(|(n, _, _)| *n == p.name));
    let paced_post = match (post_1k, post_1k_max) {
        (Some(p), Some((_, max, _))) => {
            let half = max.rps / 2.0;
            eprintln!("{} paced at {half:.0} req/s on both paths", p.name);
            let g = gateway_run(&gw, port, &p.http, dur, Some(half), ticks).await?;
            let d = grpc_load(channel.clone(), p.grpc.clone(), dur, Some(half)).await?;
            Some((p.name, half, g, d))
        }
        _ => None,
    };
    let peak_small = vm(gw.0.id(), "VmHWM:")?;

    // 10,000 routes against 10 (the gateway above), alternating runs so the
    // same noise hits both; then memory with 1,000 idle keep-alive
    // connections on the large one.
    let (config, port_10k, admin) = write_config(
        &work.join("large"),
        &backend_addr,
        10_000 - 3,
        opts.workers,
        false,
        Limits::None,
    )?;
    let gw_10k = start_gateway(&bin, &config, admin).await?;
    let rss_10k = vm(gw_10k.0.id(), "VmRSS:")?;
    let warm = Duration::from_millis(500);
    let get = &scenarios[0].http;
    gateway_run(&gw_10k, port_10k, get, warm, None, ticks).await?;
    // Short runs in many pairs, and the median of the pairs' ratios: the
    // neighbours' load on a shared machine swings the rate by a quarter
    // within seconds, which a few long runs do not average out.
    let pairs = (opts.rounds * 3).max(6);
    let short = (dur / 2).max(Duration::from_secs(1));
    let mut ten_k = Vec::new();
    let mut ten = Vec::new();
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        eprintln!("10,000 routes vs 10: pair {}/{pairs}", pair + 1);
        let a = progress(
            "10,000 routes",
            gateway_run(&gw_10k, port_10k, get, short, None, ticks).await?,
        );
        let b = progress(
            "10 routes",
            gateway_run(&gw, port, get, short, None, ticks).await?,
        );
        ratios.push(a.rps / b.rps);
        ten_k.push(a);
        ten.push(b);
    }
    ratios.sort_by(f64::total_cmp);
    let ratio_10k = ratios[ratios.len() / 2];
    let (ten_k, ten) = (median(ten_k), median(ten));
    // What serving keeps resident once the load is over: the code paths
    // the scenarios ran (paged back in) and the buffers they left.
    let rss_served = vm(gw.0.id(), "VmRSS:")?;
    drop(gw);
    // The large gateway after its runs, so the connections' own cost shows.
    let rss_10k_served = vm(gw_10k.0.id(), "VmRSS:")?;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port_10k)).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(conn);
        let req = http::Request::get("/v1/items/1")
            .header("host", "bench")
            .body(Full::new(Bytes::new()))?;
        send.send_request(req).await?.into_body().collect().await?;
        idle.push(send);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_10k_1000 = vm(gw_10k.0.id(), "VmRSS:")?;
    drop(idle);
    drop(gw_10k);
    let _ = std::fs::remove_dir_all(&work);

    // The report.
    if !base_rows.is_empty() {
        println!("\nthis build:");
    }
    let rows = print_table(&table);
    let added_p99 = paced_gw.p99_us - paced_direct.p99_us;
    println!();
    println!(
        "small GET at {half:.0} req/s (half the gateway max): gateway p99 {:.0} us, direct p99 {:.0} us, added {:.0} us",
        paced_gw.p99_us, paced_direct.p99_us, added_p99
    );
    if let Some((name, rate, g, d)) = &paced_post {
        println!(
            "{name} at {rate:.0} req/s (half the gateway max): gateway p99 {:.0} us, direct p99 {:.0} us, added {:.0} us",
            g.p99_us,
            d.p99_us,
            g.p99_us - d.p99_us
        );
    }
    print_protocol_costs(&table);
    print_cache_costs(&table);
    print_tls_costs(&table, &tls_notes);
    print_limit_costs(&table, redis_cpu_per_req, store.as_ref());
    println!(
        "small GET with 10,000 routes: {:.0} req/s vs {:.0} with 10 routes (medians); median of {pairs} paired runs {:+.1}%",
        ten_k.rps,
        ten.rps,
        (ratio_10k - 1.0) * 100.0
    );
    println!(
        "gateway resident memory: {rss_idle:.1} MiB after start (10 routes), peak {peak_small:.1} MiB under load, \
         {rss_served:.1} MiB idle after serving every scenario; \
         {rss_10k:.1} MiB with 10,000 routes ({rss_10k_served:.1} after serving), {rss_10k_1000:.1} MiB with 10,000 routes and 1,000 idle keep-alive connections; \
         {rss_example:.1} MiB idle with the repository's routes.toml and descriptors ({} after serving 600 requests)",
        rss_example_served.map_or("not measured".to_owned(), |r| format!("{r:.1} MiB"))
    );
    for (name, r, _) in &table {
        if let Some(rss) = r.gateway_rss_mib.filter(|_| name.starts_with("POST ")) {
            println!("{name}: {rss:.1} MiB resident at most under its load");
        }
    }
    variants::print(&variants);
    print_profiles(&profiles, &profiler);
    let extra_figures = Extra {
        added_p99_get: Some(added_p99),
        added_p99_post: paced_post.as_ref().map(|(_, _, g, d)| g.p99_us - d.p99_us),
        rss_example: Some(rss_example),
        rss_example_served,
        rss_10k_1000: Some(rss_10k_1000),
    };
    let targets = targets(&table, &variants, &extra_figures);
    let extra = json!({
        "targets": targets,
        "profiles": profile_json(&profiles),
        "paced_post_1k": paced_post.as_ref().map(|(_, rate, g, d)| json!({"rate": rate, "gateway": g, "direct": d, "added_p99_us": g.p99_us - d.p99_us})),
        "paced_small_get": {"rate": half, "gateway": paced_gw, "direct": paced_direct, "added_p99_us": added_p99},
        "routes_10k": {"rps_10k": ten_k.rps, "rps_10": ten.rps, "median_pair_ratio": ratio_10k},
        "memory_mib": {"idle_example_config": rss_example, "example_config_after_serving": rss_example_served, "idle_10_routes": rss_idle, "peak_under_load": peak_small, "idle_after_serving_10_routes": rss_served, "idle_10k_routes": rss_10k, "idle_10k_routes_after_serving": rss_10k_served, "routes_10k_conns_1000": rss_10k_1000},
    });
    write_report(&opts, rows, base_rows, extra)
}

/// Writes the run's JSON: its settings and scenario rows, plus `extra`
/// (an object of the full run's other figures; empty with `--only`).
fn write_report(
    opts: &Options,
    rows: Vec<serde_json::Value>,
    base_rows: Vec<serde_json::Value>,
    extra: serde_json::Value,
) -> Result<()> {
    let mut report = json!({
        "unix_time": unix_now(),
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "seconds_per_run": opts.seconds,
        "rounds": opts.rounds,
        "concurrency": CONCURRENCY,
        "worker_threads": opts.workers,
        "scenarios": rows,
        "baseline": base_rows,
    });
    if let (Some(report), serde_json::Value::Object(extra)) = (report.as_object_mut(), extra) {
        report.extend(extra);
    }
    std::fs::write(&opts.out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwritten to {}", opts.out.display());
    Ok(())
}

/// Prints one table (scenario rows, with the direct path beside) and returns
/// its JSON rows.
fn print_table(table: &[(&str, RunResult, RunResult)]) -> Vec<serde_json::Value> {
    println!(
        "{:<21} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>9} {:>8} {:>9}",
        "scenario",
        "gw rps",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "gw cpu/req",
        "direct rps",
        "d p50",
        "d p99",
        "gw/direct"
    );
    let mut rows = Vec::new();
    for (name, g, d) in table {
        let ratio = g.rps / d.rps;
        println!(
            "{:<21} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.1}us {:>11.0} {:>9.0} {:>8.0} {:>8.0}%",
            name,
            g.rps,
            g.p50_us,
            g.p99_us,
            g.p999_us,
            g.gateway_cpu_us_per_req.unwrap_or(0.0),
            d.rps,
            d.p50_us,
            d.p99_us,
            ratio * 100.0
        );
        rows.push(json!({"scenario": name, "gateway": g, "direct": d, "throughput_ratio": ratio}));
    }
    rows
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

// ---------------------------------------------------------------------------
// HTTPS: the same small GET over TLS, and the handshake itself
// ---------------------------------------------------------------------------

/// How an HTTPS scenario's client talks to the gateway's TLS listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    /// One keep-alive HTTP/1.1 connection per worker (ALPN http/1.1).
    H1,
    /// One keep-alive HTTP/2 connection per worker (ALPN h2): the same
    /// connection count as H1, so the difference is the protocol.
    H2,
    /// A new TCP connection and TLS 1.3 handshake for every request (one
    /// HTTP/1.1 request each); `resume`: with the client's session cache,
    /// so handshakes after the first resume with a ticket.
    Handshake { resume: bool },
}

struct HttpsScenario {
    name: &'static str,
    mode: TlsMode,
}

/// Run next to the plaintext small GET, on a second gateway (the same
/// binary and config plus `[server.tls]`).
const HTTPS_SCENARIOS: [HttpsScenario; 4] = [
    HttpsScenario {
        name: "HTTPS small GET h1",
        mode: TlsMode::H1,
    },
    HttpsScenario {
        name: "HTTPS small GET h2",
        mode: TlsMode::H2,
    },
    HttpsScenario {
        name: "TLS handshake",
        mode: TlsMode::Handshake { resume: false },
    },
    HttpsScenario {
        name: "TLS handshake resumed",
        mode: TlsMode::Handshake { resume: true },
    },
];

/// The name the bench certificate carries and the client asks for (SNI).
const BENCH_TLS_NAME: &str = "localhost";

/// The bench client's TLS: TLS 1.3 only, trusting the bench CA, ALPN for
/// the mode, and no session cache unless the mode resumes.
fn https_client_config(ca: &rustls::RootCertStore, mode: TlsMode) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![match mode {
        TlsMode::H2 => b"h2".to_vec(),
        _ => b"http/1.1".to_vec(),
    }];
    if mode == (TlsMode::Handshake { resume: false }) {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

/// An HTTPS scenario's client side: its mode, TLS settings (the session
/// cache, when resuming, lives in them) and what its handshakes did.
struct HttpsClient {
    mode: TlsMode,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<HandshakeSeen>,
}

/// What the handshakes of a run did, for the report.
#[derive(Default)]
struct HandshakeSeen {
    handshakes: std::sync::atomic::AtomicU64,
    resumed: std::sync::atomic::AtomicU64,
    /// The key exchange group of the last handshake (e.g. X25519MLKEM768).
    group: std::sync::Mutex<Option<String>>,
}

impl HandshakeSeen {
    fn record(&self, conn: &rustls::ClientConnection) {
        use std::sync::atomic::Ordering::Relaxed;
        self.handshakes.fetch_add(1, Relaxed);
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumed.fetch_add(1, Relaxed);
        }
        if let Some(g) = conn.negotiated_key_exchange_group() {
            *self.group.lock().expect("group") = Some(format!("{:?}", g.name()));
        }
    }
}

/// A TCP connection to the gateway and a TLS handshake over it.
async fn tls_connect(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    seen: &HandshakeSeen,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(BENCH_TLS_NAME)?;
    let tls = connector.connect(name, tcp).await?;
    seen.record(tls.get_ref().1);
    Ok(tls)
}

/// [`http_load`] over TLS, as `mode` says; closed loop.
async fn https_load(
    port: u16,
    call: HttpCall,
    dur: Duration,
    client: &HttpsClient,
) -> Result<RunResult> {
    let (mode, tls, seen) = (client.mode, &client.tls, &client.seen);
    let deadline = Instant::now() + dur;
    let started = Instant::now();
    let mut tasks: Vec<Worker> = Vec::new();
    for _ in 0..CONCURRENCY {
        let (call, seen) = (call.clone(), seen.clone());
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        tasks.push(tokio::spawn(async move {
            let request = || {
                http::Request::builder()
                    .method(call.method.clone())
                    .uri(match mode {
                        // HTTP/2 takes the authority from the URI.
                        TlsMode::H2 => format!("https://{BENCH_TLS_NAME}:{port}{}", call.path),
                        _ => call.path.clone(),
                    })
                    .header(http::header::HOST, BENCH_TLS_NAME)
                    .header(http::header::CONTENT_TYPE, call.content_type)
                    .body(Full::new(call.body.clone()))
            };
            let mut lat = Vec::with_capacity(65536);
            let mut errors = 0u64;
            let mut timed = |ok: bool, t: Instant| {
                if ok {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            };
            match mode {
                TlsMode::H1 => {
                    let tls = tls_connect(port, &connector, &seen).await?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                            .await?;
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        send.ready().await?;
                        let req = request()?;
                        let t = Instant::now();
                        let resp = send.send_request(req).await?;
                        let ok = resp.status() == 200;
                        resp.into_body().collect().await?;
                        timed(ok, t);
                    }
                }
                TlsMode::H2 => {
                    let tls = tls_connect(port, &connector, &seen).await?;
                    let (mut send, conn) = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(tls),
                    )
                    .await?;
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        send.ready().await?;
                        let req = request()?;
                        let t = Instant::now();
                        let resp = send.send_request(req).await?;
                        let ok = resp.status() == 200;
                        resp.into_body().collect().await?;
                        timed(ok, t);
                    }
                }
                TlsMode::Handshake { .. } => {
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        // Connect, handshake, one request; the client
                        // closes first, so TIME_WAIT stays on its side
                        // (which Linux reuses for loopback).
                        let one = async {
                            let tls = tls_connect(port, &connector, &seen).await?;
                            let (mut send, conn) = hyper::client::conn::http1::handshake(
                                hyper_util::rt::TokioIo::new(tls),
                            )
                            .await?;
                            let conn = tokio::spawn(conn);
                            let resp = send.send_request(request()?).await?;
                            let ok = resp.status() == 200;
                            resp.into_body().collect().await?;
                            drop(send);
                            let _ = conn.await;
                            anyhow::Ok(ok)
                        };
                        let ok = one.await.unwrap_or(false);
                        timed(ok, t);
                    }
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    gather(tasks, started).await
}

/// [`gateway_run`] for an HTTPS scenario.
async fn https_run(
    gw: &Proc,
    port: u16,
    call: &HttpCall,
    dur: Duration,
    client: &HttpsClient,
    ticks: f64,
) -> Result<RunResult> {
    let pid = gw.0.id();
    let before = cpu_seconds(pid, ticks)?;
    let mut r = https_load(port, call.clone(), dur, client).await?;
    let after = cpu_seconds(pid, ticks)?;
    if r.requests > 0 {
        r.gateway_cpu_us_per_req = Some((after - before) * 1e6 / (r.requests + r.errors) as f64);
    }
    Ok(r)
}

/// The HTTPS scenarios `--only` keeps, measured like the others (gateway
/// and direct runs alternating, medians) on a second gateway serving TLS
/// with a certificate made now (ECDSA P-256, rcgen's default) that the
/// client trusts. Returns their table rows and, per handshake scenario, the
/// handshakes made and how many resumed.
async fn run_https(
    setup: &Setup<'_>,
    small_get: &Scenario,
) -> Result<(Vec<(&'static str, RunResult, RunResult)>, Vec<String>)> {
    let Setup {
        opts,
        bin,
        backend_addr,
        work,
        channel,
        ticks,
        ..
    } = *setup;
    let chosen: Vec<&HttpsScenario> = HTTPS_SCENARIOS
        .iter()
        .filter(|s| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.split(',').any(|part| s.name.contains(part)))
        })
        .collect();
    if chosen.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let dir = work.join("https");
    let (config, port, admin) =
        write_config(&dir, backend_addr, 8, opts.workers, false, Limits::None)?;
    let pki = gateway_tests::tls::Pki::new("bench CA");
    let (cert, key) = pki.issue(&[BENCH_TLS_NAME]);
    std::fs::write(dir.join("bench.crt"), cert)?;
    std::fs::write(dir.join("bench.key"), key)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(
        "\n[server.tls]\ncertificates = [{ cert = \"bench.crt\", key = \"bench.key\" }]\n",
    );
    std::fs::write(&config, text)?;
    let gw = start_gateway(bin, &config, admin).await?;
    eprintln!("HTTPS gateway pid {} ready", gw.0.id());
    let roots = pki.roots();
    let dur = Duration::from_secs(opts.seconds);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for s in chosen {
        let mut client = HttpsClient {
            mode: s.mode,
            tls: Arc::new(https_client_config(&roots, s.mode)?),
            seen: Arc::new(HandshakeSeen::default()),
        };
        let call = &small_get.http;
        let warm = Duration::from_millis(500);
        https_run(&gw, port, call, warm, &client, ticks).await?;
        grpc_load(channel.clone(), small_get.grpc.clone(), warm, None).await?;
        // Counted from here; the session cache (in `tls`) stays warm.
        client.seen = Arc::new(HandshakeSeen::default());
        let seen = client.seen.clone();
        let (mut gw_runs, mut direct_runs) = (Vec::new(), Vec::new());
        for round in 0..opts.rounds {
            eprintln!("{}: round {}/{}", s.name, round + 1, opts.rounds);
            gw_runs.push(progress(
                "gateway",
                https_run(&gw, port, call, dur, &client, ticks).await?,
            ));
            direct_runs.push(progress(
                "direct",
                grpc_load(channel.clone(), small_get.grpc.clone(), dur, None).await?,
            ));
        }
        if let TlsMode::Handshake { .. } = s.mode {
            use std::sync::atomic::Ordering::Relaxed;
            notes.push(format!(
                "{}: {} handshakes, {} resumed, key exchange {}",
                s.name,
                seen.handshakes.load(Relaxed),
                seen.resumed.load(Relaxed),
                seen.group
                    .lock()
                    .expect("group")
                    .clone()
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
        rows.push((s.name, median(gw_runs), median(direct_runs)));
    }
    Ok((rows, notes))
}

/// The CPU per request over TLS, and per handshake, against the plaintext
/// small GET's, measured in the same run.
fn print_tls_costs(table: &[(&str, RunResult, RunResult)], notes: &[String]) {
    let cpu_of = |name: &str| {
        table
            .iter()
            .find(|(n, _, _)| *n == name)
            .and_then(|(_, g, _)| g.gateway_cpu_us_per_req)
    };
    let get = cpu_of("small GET");
    for s in &HTTPS_SCENARIOS {
        if let Some(cpu) = cpu_of(s.name) {
            let per = match s.mode {
                TlsMode::Handshake { .. } => "us CPU per handshake (and its one request)",
                _ => "us CPU/req",
            };
            match get {
                Some(get) => println!(
                    "{}: {cpu:.1} {per}, {:+.1} us against the plaintext small GET's {get:.1} us (same run)",
                    s.name,
                    cpu - get
                ),
                None => println!("{}: {cpu:.1} {per}", s.name),
            }
        }
    }
    for n in notes {
        println!("{n}");
    }
}
