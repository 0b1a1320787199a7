//! Streaming calls go through the same backend machinery as unary calls:
//! the circuit breaker, the balancer's choice, outlier ejection and the
//! `upstream_*` metrics; and health checks go over the connections that
//! carry the traffic.
//!
//! Instances are real tonic servers on the gateway's dynamic codec, each in
//! its own runtime; the gateway runs as `gateway serve` runs it (watcher,
//! admin listener and all), so /metrics is the real exposition.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::example::{BoxFuture, DynamicServer, MessageStream};
use gateway_tests::exposition::{parse_exposition, value};
use gateway_tests::fleet::{descriptors_with_health, eventually, TestInstance};
use gateway_tests::running::{KillableBackend, RunningGateway};
use gateway_tests::streaming::{descriptors as streaming_descriptors, pool as streaming_pool};
use gateway_tests::{http_client, toml_path, write_config};
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// What a streaming instance saw, and whether it fails.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    failing: AtomicBool,
}

/// A `streaming.v1.Streams` instance: Count sends `count` ticks labelled
/// with the instance's name, Sum adds up its numbers, Chat echoes each
/// message; every call fails with UNAVAILABLE while `failing`.
struct StreamInstance {
    name: String,
    seen: Arc<Seen>,
    backend: KillableBackend,
}

impl StreamInstance {
    fn start(name: &str) -> StreamInstance {
        let seen = Arc::new(Seen::default());
        let backend = KillableBackend::start({
            let (name, seen) = (name.to_owned(), seen.clone());
            move || stream_server(&name, seen.clone())
        });
        StreamInstance {
            name: name.to_owned(),
            seen,
            backend,
        }
    }

    fn addr(&self) -> &str {
        &self.backend.addr
    }

    fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        self.seen.failing.store(failing, Ordering::SeqCst);
    }
}

fn stream_server(name: &str, seen: Arc<Seen>) -> DynamicServer {
    let name = name.to_owned();
    DynamicServer::new(
        &streaming_pool(),
        &["streaming.v1.Streams"],
        |_: &MethodDescriptor, _: Request<DynamicMessage>| {
            Box::pin(async { Err(Status::unimplemented("streams only")) }) as BoxFuture<_>
        },
    )
    .with_streaming(
        move |method: &MethodDescriptor, req: Request<MessageStream>| {
            let (method, name, seen) = (method.clone(), name.clone(), seen.clone());
            Box::pin(async move {
                seen.calls.fetch_add(1, Ordering::SeqCst);
                if seen.failing.load(Ordering::SeqCst) {
                    return Err(Status::unavailable(format!("{name} is down for the test")));
                }
                let mut input = req.into_inner();
                let out = method.output();
                let replies: Vec<Result<DynamicMessage, Status>> = match method.name() {
                    "Count" => {
                        let r = input
                            .next()
                            .await
                            .ok_or_else(|| Status::internal("no request"))??;
                        let count = r
                            .get_field_by_name("count")
                            .and_then(|v| v.as_i32())
                            .unwrap_or(0);
                        (1..=count)
                            .map(|i| {
                                let mut t = DynamicMessage::new(out.clone());
                                t.set_field_by_name("index", Value::I32(i));
                                t.set_field_by_name("label", Value::String(name.clone()));
                                Ok(t)
                            })
                            .collect()
                    }
                    "Sum" => {
                        let mut sum = 0i64;
                        while let Some(m) = input.next().await {
                            sum += m?
                                .get_field_by_name("value")
                                .and_then(|v| v.as_i64())
                                .unwrap_or(0);
                        }
                        let mut t = DynamicMessage::new(out);
                        t.set_field_by_name("sum", Value::I64(sum));
                        vec![Ok(t)]
                    }
                    _ => {
                        let mut all = Vec::new();
                        while let Some(m) = input.next().await {
                            all.push(Ok(m?));
                        }
                        all
                    }
                };
                Ok(Response::new(
                    Box::pin(tokio_stream::iter(replies)) as MessageStream
                ))
            }) as BoxFuture<_>
        },
    )
}

/// A gateway in front of `instances`; `extra` goes in the backend's table.
async fn gateway(instances: &[&StreamInstance], extra: &str) -> RunningGateway {
    gateway_named("streams", instances, extra).await
}

/// [`gateway`] with the backend named `name` (metric series are per
/// process, shared by the tests of this file).
async fn gateway_named(name: &str, instances: &[&StreamInstance], extra: &str) -> RunningGateway {
    let list: Vec<String> = instances
        .iter()
        .map(|i| format!("\"{}\"", i.addr()))
        .collect();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.{name}]
services = ["streaming.v1.Streams"]
endpoints = [{endpoints}]
timeout = "2s"
connect_timeout = "300ms"
{extra}

[[routes]]
method = "GET"
path = "/v1/count"
grpc = "streaming.v1.Streams/Count"

[[routes]]
method = "POST"
path = "/v1/sum"
grpc = "streaming.v1.Streams/Sum"
body = "*"

[[routes]]
method = "POST"
path = "/v1/chat"
grpc = "streaming.v1.Streams/Chat"
body = "*"
"#,
        descriptors = toml_path(&streaming_descriptors()),
        endpoints = list.join(", "),
    );
    RunningGateway::start(&write_config(&config)).await
}

struct Answer {
    status: u16,
    body: String,
    took: Duration,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

async fn send(
    gw: &RunningGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let started = Instant::now();
    let mut rb = http_client().request(method.parse().unwrap(), gw.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if !body.is_empty() {
        rb = rb
            .header("content-type", "application/x-ndjson")
            .body(body.to_owned());
    }
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        body,
        took: started.elapsed(),
    }
}

/// The instance names in a Count stream's lines.
fn labels(a: &Answer) -> Vec<String> {
    a.body
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["result"]["label"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_failing_instance_opens_the_breaker_for_streaming_calls() {
    let a = StreamInstance::start("a");
    let gw = gateway(
        &[&a],
        "retry = { attempts = 1 }\ncircuit_breaker = { failures = 3, window = \"10s\", open_for = \"300ms\", half_open_probes = 1 }",
    )
    .await;
    let ok = send(&gw, "GET", "/v1/count?count=2", &[], "").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(labels(&ok), ["a", "a"]);

    a.fail(true);
    for _ in 0..3 {
        let r = send(&gw, "GET", "/v1/count?count=2", &[], "").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("down for the test"), "{}", r.body);
    }
    // Client streaming counts too: the breaker is the backend's, not the route's.
    let calls = a.calls();
    for (method, path, body) in [
        ("GET", "/v1/count?count=2", ""),
        ("POST", "/v1/sum", "{\"value\":1}\n"),
    ] {
        let r = send(&gw, method, path, &[], body).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(
            message.starts_with("backend \"streams\" is unavailable: circuit open"),
            "{path}: {message}"
        );
        assert!(
            r.took < Duration::from_millis(200),
            "{path} took {:?}",
            r.took
        );
    }
    assert_eq!(
        a.calls(),
        calls,
        "an open circuit must not call the instance"
    );
    let backend = gw.gw.snapshot().backends["streams"].clone();
    assert_eq!(backend.status().breaker.state, "open");

    // The instance recovers; after open_for a probe stream closes the circuit.
    a.fail(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = send(&gw, "GET", "/v1/count?count=3", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(labels(&r).len(), 3);
    assert_eq!(backend.status().breaker.state, "closed");
}

#[tokio::test]
async fn streaming_calls_follow_the_balancer_and_leave_an_ejected_instance() {
    let a = StreamInstance::start("a");
    let b = StreamInstance::start("b");
    let gw = gateway(
        &[&a, &b],
        "load_balancer = \"consistent_hash\"\nhash_key = { header = \"x-user\" }\noutlier_detection = { consecutive_failures = 2, base_ejection_time = \"30s\", max_ejection_percent = 50 }",
    )
    .await;
    // The configured balancer picks for streams: one key, one instance.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let r = send(&gw, "GET", "/v1/count?count=1", &[("x-user", "alice")], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.extend(labels(&r));
    }
    assert_eq!(seen.len(), 1, "one hash key went to {seen:?}");
    let owner = seen.into_iter().next().unwrap();
    let (owner, other) = if owner == a.name { (&a, &b) } else { (&b, &a) };

    // The owner fails: server-streaming GETs are retried on the other
    // instance before their first message, and the owner is ejected.
    owner.fail(true);
    for _ in 0..6 {
        let r = send(&gw, "GET", "/v1/count?count=1", &[("x-user", "alice")], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(labels(&r), std::slice::from_ref(&other.name));
    }
    let backend = gw.gw.snapshot().backends["streams"].clone();
    let status = backend.status();
    let ejected: Vec<_> = status
        .endpoints
        .iter()
        .filter(|e| e.state == "ejected")
        .map(|e| e.address.clone())
        .collect();
    assert_eq!(ejected, [owner.addr().to_owned()], "{:?}", status.endpoints);
    let calls = owner.calls();
    for body in ["{\"value\":2}\n{\"value\":3}\n", ""] {
        let r = if body.is_empty() {
            send(
                &gw,
                "POST",
                "/v1/chat",
                &[("x-user", "alice")],
                "{\"text\":\"hi\"}\n",
            )
            .await
        } else {
            send(&gw, "POST", "/v1/sum", &[("x-user", "alice")], body).await
        };
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(owner.calls(), calls, "an ejected instance gets no streams");
}

#[tokio::test]
async fn streamed_calls_count_in_the_upstream_metrics() {
    let a = StreamInstance::start("a");
    let gw = gateway_named("metered", &[&a], "").await;
    let count = send(&gw, "GET", "/v1/count?count=3", &[], "").await;
    assert_eq!(count.status, 200, "{}", count.body);
    let sum = send(
        &gw,
        "POST",
        "/v1/sum",
        &[],
        "{\"value\":2}\n{\"value\":5}\n",
    )
    .await;
    assert_eq!(sum.status, 200, "{}", sum.body);
    assert_eq!(sum.json()["sum"], "7");
    let chat = send(
        &gw,
        "POST",
        "/v1/chat",
        &[],
        "{\"text\":\"a\"}\n{\"text\":\"b\"}\n",
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    a.fail(true);
    let failed = send(&gw, "GET", "/v1/count?count=1", &[], "").await;
    assert_eq!(failed.status, 503, "{}", failed.body);

    let text = gw.metrics_text().await;
    let s = parse_exposition(&text);
    for (method, code, want) in [
        ("streaming.v1.Streams/Count", "Ok", 1.0),
        ("streaming.v1.Streams/Sum", "Ok", 1.0),
        ("streaming.v1.Streams/Chat", "Ok", 1.0),
        ("streaming.v1.Streams/Count", "Unavailable", 1.0),
    ] {
        assert_eq!(
            value(
                &s,
                "gateway_upstream_requests_total",
                &[
                    ("backend", "metered"),
                    ("grpc_method", method),
                    ("grpc_code", code)
                ]
            ),
            want,
            "{method} {code}"
        );
    }
    assert!(
        value(
            &s,
            "gateway_upstream_request_duration_seconds_count",
            &[
                ("backend", "metered"),
                ("grpc_method", "streaming.v1.Streams/Chat")
            ]
        ) >= 1.0
    );
}

/// A TCP proxy in front of one instance that can freeze the connections
/// that carried traffic (more than `threshold` bytes from the gateway),
/// while still accepting and serving new ones: a broken traffic connection
/// on an instance that is otherwise fine.
struct FreezingProxy {
    addr: String,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start(target: String, threshold: usize) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let freeze = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, freeze.clone(), threshold));
            }
        });
        FreezingProxy { addr, frozen }
    }
}

/// Copies both ways until either side ends, or stops copying (holding both
/// sockets open) once frozen, if this connection carried traffic.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    frozen: Arc<AtomicBool>,
    threshold: usize,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = Arc::new(AtomicUsize::new(0));
    let stuck = {
        let (frozen, up) = (frozen.clone(), up.clone());
        move || frozen.load(Ordering::SeqCst) && up.load(Ordering::SeqCst) > threshold
    };
    let stuck2 = stuck.clone();
    let upward = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            up.fetch_add(n, Ordering::SeqCst);
            while stuck() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downward = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while stuck2() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
    }
}

#[tokio::test]
async fn health_checks_go_over_the_connection_that_carries_traffic() {
    let instance = TestInstance::start("a");
    let proxy = FreezingProxy::start(instance.addr.clone(), 16 * 1024).await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.echo]
services = ["testing.v1.Echo"]
endpoints = ["{addr}"]
timeout = "1s"
connect_timeout = "300ms"

[backends.echo.health_check]
interval = "200ms"
timeout = "150ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#,
        descriptors = toml_path(&descriptors_with_health()),
        addr = proxy.addr,
    );
    let gw = RunningGateway::start(&write_config(&config)).await;
    let client = http_client();
    // Traffic: enough bytes that the connection carrying it stands out
    // from one that would carry only health checks.
    let padding = "p".repeat(2000);
    for _ in 0..20 {
        let r = client
            .get(gw.url(&format!("/v1/echo?string_field={padding}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let backend = gw.gw.snapshot().backends["echo"].clone();
    assert_eq!(backend.status().endpoints[0].health_check, "serving");

    // The traffic connection breaks; the instance still accepts new ones.
    proxy.frozen.store(true, Ordering::SeqCst);
    eventually("the checks to fail", Duration::from_secs(5), async || {
        backend.status().endpoints[0].health_check == "not_serving"
    })
    .await;

    // The failed check retired that connection: traffic and checks go over
    // a new one, and the instance is back in rotation.
    eventually(
        "the instance to pass its checks again",
        Duration::from_secs(5),
        async || backend.status().endpoints[0].health_check == "serving",
    )
    .await;
    let r = client
        .get(gw.url("/v1/echo?string_field=again"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
