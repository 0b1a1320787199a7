//! The whole request path of the small GET, in process: the gateway's axum
//! app called directly (no socket on the client side), a real gRPC call over
//! loopback to an in-process backend, the reply rendered as JSON. With
//! `--stream`, the load bench's server-streaming call instead: `GET
//! /v1/stream/items?count=10`, ten ~10-field replies framed as NDJSON.
//!
//! `cargo bench -p gateway --bench request_path` prints wall time per request
//! (`-- --stream` for the streaming call).
//! `cargo bench -p gateway --bench request_path -- --callgrind` runs itself
//! twice per call under valgrind's callgrind (200 and 1,200 requests),
//! counting only the requests (not start-up, which varies with hash seeds),
//! and prints the instructions per request from the difference, for the
//! small GET and for the streaming call: a count that does not depend on
//! what else the machine is doing, so a regression shows as a number. It
//! counts everything in the process for those requests: the gateway, the
//! tonic client and server, and the (trivial) backend.

use std::process::Command;
use std::time::Instant;

use gateway::example::{BoxFuture, DynamicServer, MessageStream};
use gateway::server::{self, Gateway};
use gateway::snapshot::Snapshot;
use http_body_util::BodyExt as _;
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
use tower::ServiceExt as _;

const BENCH_PROTO: &str = include_str!("../../tests/fixtures/bench/bench.proto");

/// Replies per streaming call: the load bench's `stream 10 items`.
const STREAMED: usize = 10;

/// The call a run repeats.
#[derive(Clone, Copy)]
enum Call {
    /// `GET /v1/items/12345`: one ~10-field reply.
    SmallGet,
    /// `GET /v1/stream/items?count=10`: [`STREAMED`] such replies, as NDJSON.
    Stream,
}

impl Call {
    fn uri(self) -> String {
        match self {
            Call::SmallGet => "/v1/items/12345".to_owned(),
            Call::Stream => format!("/v1/stream/items?count={STREAMED}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Call::SmallGet => "small GET",
            Call::Stream => "10-item stream",
        }
    }

    fn flag(self) -> Option<&'static str> {
        match self {
            Call::SmallGet => None,
            Call::Stream => Some("--stream"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name);
    let requests: usize = flag("--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    if flag("--callgrind").is_some() {
        callgrind(Call::SmallGet);
        callgrind(Call::Stream);
        return;
    }
    let call = if flag("--stream").is_some() {
        Call::Stream
    } else {
        Call::SmallGet
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Set-up and warm-up (connection, caches) outside the measured part.
    let app = rt.block_on(async {
        let app = setup().await;
        run(&app, call, 100).await;
        app
    });
    let start = Instant::now();
    measured(&rt, &app, call, requests);
    let per = start.elapsed() / requests as u32;
    println!(
        "request_path: {} in process, {requests} requests, {per:?} per request (gateway + backend on one thread)",
        call.name()
    );
}

/// The part callgrind counts (`--toggle-collect`): everything the runtime
/// runs while it serves `n` requests, the backend and connection tasks
/// included, and nothing of start-up, whose count varies from run to run
/// with hash seeds.
#[inline(never)]
fn measured(rt: &tokio::runtime::Runtime, app: &server::App, call: Call, n: usize) {
    rt.block_on(run(app, call, n));
}

async fn setup() -> server::App {
    let dir = std::env::temp_dir().join(format!("gateway-request-path-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("descriptors")).unwrap();
    std::fs::write(dir.join("descriptors/bench.proto"), BENCH_PROTO).unwrap();
    let pool = gateway::descriptors::load_dir(&dir.join("descriptors"))
        .unwrap()
        .pool;
    let item = pool.get_message_by_name("bench.v1.Item").unwrap();
    let template = DynamicMessage::deserialize(
        item,
        serde_json::json!({
            "id": "1", "name": "Widget", "description": "A small widget used to measure the gateway",
            "quantity": 42, "price": 9.99, "active": true, "tags": ["blue", "small", "sale"],
            "state": "ACTIVE", "created": "2026-11-21T10:00:00Z", "labels": {"team": "edge", "tier": "gold"},
        }),
    )
    .unwrap();
    let streamed = template.clone();
    let backend = DynamicServer::new(
        &pool,
        &["bench.v1.Bench"],
        move |_m: &MethodDescriptor, req: tonic::Request<DynamicMessage>| {
            let mut reply = template.clone();
            let id = req
                .get_ref()
                .get_field_by_name("id")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            reply.set_field_by_name("id", Value::I64(id));
            Box::pin(async move { Ok(tonic::Response::new(reply)) }) as BoxFuture<_>
        },
    )
    // ListItems: `count` copies of the item, ids 1..=count, as the load
    // bench's backend answers.
    .with_streaming(
        move |_m: &MethodDescriptor, req: tonic::Request<MessageStream>| {
            let template = streamed.clone();
            Box::pin(async move {
                use futures_util::StreamExt as _;
                let mut input = req.into_inner();
                let count = match input.next().await {
                    Some(Ok(m)) => m
                        .get_field_by_name("count")
                        .and_then(|v| v.as_i32())
                        .unwrap_or(0),
                    _ => 0,
                };
                let items = (1..=i64::from(count)).map(move |id| {
                    let mut item = template.clone();
                    item.set_field_by_name("id", Value::I64(id));
                    Ok(item)
                });
                let out: MessageStream = Box::pin(futures_util::stream::iter(items));
                Ok(tonic::Response::new(out))
            }) as BoxFuture<_>
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(backend.serve(listener));
    let config = format!(
        "[server]\ndescriptors = \"descriptors\"\nwatch = false\n[admin]\nenabled = false\n\
         [backends.bench]\nendpoints = [\"{addr}\"]\nservices = [\"bench.v1.Bench\"]\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/v1/items/{{id}}\"\ngrpc = \"bench.v1.Bench/GetItem\"\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/v1/stream/items\"\ngrpc = \"bench.v1.Bench/ListItems\"\n"
    );
    std::fs::write(dir.join("routes.toml"), config).unwrap();
    let snapshot = Snapshot::load(&dir.join("routes.toml")).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::new(snapshot);
    server::app(gw)
}

async fn run(app: &server::App, call: Call, n: usize) {
    let uri = call.uri();
    for _ in 0..n {
        // HTTP/1.1 requires exactly one Host (RFC 9112); hyper's clients
        // always send it.
        let req = http::Request::get(uri.as_str())
            .header(http::header::HOST, "bench.local")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if let Call::Stream = call {
            // Every reply arrived, and the stream ended well.
            let lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
            assert!(lines.clone().all(|l| l.starts_with(b"{\"result\":")));
            assert_eq!(lines.count(), STREAMED);
        }
        std::hint::black_box(body);
    }
}

/// Runs this binary under callgrind with two request counts of `call`; the
/// difference cancels start-up (descriptor compilation, runtime, connection
/// set-up).
fn callgrind(call: Call) {
    let exe = std::env::current_exe().unwrap();
    let count = |n: usize| -> u64 {
        let out_file =
            std::env::temp_dir().join(format!("callgrind-{}-{n}.out", std::process::id()));
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--collect-atstart=no")
            .arg("--toggle-collect=request_path::measured")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&exe)
            .args(["--requests", &n.to_string()])
            .args(call.flag())
            .output()
            .unwrap_or_else(|e| {
                panic!("valgrind did not run ({e}); install it: apt-get install -y valgrind")
            });
        let _ = std::fs::remove_file(&out_file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no instruction count in callgrind's output:\n{stderr}"))
    };
    let (a, b) = (count(200), count(1_200));
    println!(
        "request_path: {} instructions per {} (callgrind; {} for 200 requests, {} for 1,200)",
        (b - a) / 1_000,
        call.name(),
        a,
        b
    );
}
