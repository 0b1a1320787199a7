//! OpenTelemetry traces end to end: real tonic backends that report the
//! `traceparent` they received, and in-process OTLP collectors (the
//! TraceService over gRPC, `/v1/traces` over HTTP) that the gateway exports
//! to, in process and as the `gateway serve` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::otel::{gateway_bin, grpc_collector, http_collector, shared_export, Span};
use gateway_tests::running::RunningGateway;
use gateway_tests::{
    dead_addr, echo_server, http_client, spawn_backend, temp_dir, testing_descriptors,
    testing_pool, toml_path,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value as Json;

fn config(endpoints: &[&str], prefix: &str, extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"[server]
descriptors = "{descriptors}"
watch = false
shutdown_delay = "0s"

[backends.echo]
endpoints = [{endpoints}]
services = ["testing.v1.Echo"]
# The dead endpoint stays in rotation, so retries keep happening.
outlier_detection = {{ consecutive_failures = 0 }}

[[routes]]
method = "GET"
path = "/{prefix}/meta"
grpc = "testing.v1.Echo/Meta"

[[routes]]
method = "GET"
path = "/{prefix}/echo/{{string_field}}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/{prefix}/fail"
grpc = "testing.v1.Echo/Fail"
{extra}"#,
        descriptors = toml_path(&testing_descriptors()),
        endpoints = endpoints.join(", "),
    )
}

/// `traceparent` fields: version, trace id, parent id, flags.
fn fields(tp: &str) -> [String; 4] {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    [0, 1, 2, 3].map(|i| p[i].to_owned())
}

fn one<'a>(spans: &'a [Span], what: &str, f: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} in {spans:#?}");
    found[0]
}

/// What one request through the gateway showed the client and the backend.
struct Seen {
    trace_id: String,
    client_span: String,
    /// The `traceresponse` span id: the gateway's request span.
    ours: String,
    /// The parent id the backend received.
    backend_parent: String,
    backend_flags: String,
}

async fn call_meta(gw: &RunningGateway, path: &str, traceparent: Option<String>) -> Seen {
    let mut req = http_client().get(gw.url(path));
    if let Some(tp) = &traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ours = fields(r.headers()["traceresponse"].to_str().unwrap());
    let body: Json = r.json().await.unwrap();
    let seen = fields(
        body["metadata"]["traceparent"]
            .as_str()
            .expect("backend got a traceparent"),
    );
    assert_eq!(seen[1], ours[1], "the backend is in the gateway's trace");
    Seen {
        trace_id: ours[1].clone(),
        client_span: traceparent
            .map(|t| fields(&t)[2].clone())
            .unwrap_or_default(),
        ours: ours[2].clone(),
        backend_parent: seen[2].clone(),
        backend_flags: seen[3].clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_parent_is_the_attempt_span_and_retries_are_sibling_spans() {
    let export = shared_export();
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dead = dead_addr().await;
    let dir = temp_dir("ot1");
    let path = dir.join("routes.toml");
    std::fs::write(&path, config(&[&dead, &backend], "ot1", "")).unwrap();
    let gw = RunningGateway::start(&path).await;

    // Round robin over a dead and a live endpoint: some requests try the
    // dead one first and are retried on the live one.
    let mut seen = Vec::new();
    for i in 0..4u32 {
        let tp = format!("00-{:032x}-{:016x}-01", 0xabc0_0000 + i, 0x1000 + i);
        let s = call_meta(&gw, "/ot1/meta", Some(tp)).await;
        assert_eq!(
            s.trace_id,
            format!("{:032x}", 0xabc0_0000 + i),
            "the client's trace"
        );
        assert_eq!(
            s.backend_flags, "01",
            "the client's sampling decision is kept"
        );
        assert_ne!(
            s.backend_parent, s.ours,
            "the backend's parent is the attempt, not the request span"
        );
        seen.push(s);
    }
    export.flush().await;
    let ids: Vec<String> = seen.iter().map(|s| s.trace_id.clone()).collect();
    export
        .received
        .wait_until(Duration::from_secs(5), |spans| {
            ids.iter().all(|id| {
                spans
                    .iter()
                    .any(|s| &s.trace_id == id && s.kind == SpanKind::Server)
            })
        })
        .await;

    let mut retried = 0;
    for s in &seen {
        let spans = export.received.trace(&s.trace_id);
        let server = one(&spans, "request span", |x| x.kind == SpanKind::Server);
        assert_eq!(
            server.parent_span_id, s.client_span,
            "continues the client's span"
        );
        assert_eq!(
            server.span_id, s.ours,
            "traceresponse names the request span"
        );
        assert_eq!(server.name, "GET /ot1/meta");
        assert_eq!(server.service, "gateway-under-test");
        assert_eq!(server.attr("http.route"), Some("/ot1/meta"));
        assert_eq!(server.attr("http.response.status_code"), Some("200"));
        assert_eq!(server.attr("rpc.method"), Some("testing.v1.Echo/Meta"));
        assert!(!server.error);

        let mut attempts: Vec<&Span> = spans
            .iter()
            .filter(|x| x.kind == SpanKind::Client)
            .collect();
        attempts.sort_by_key(|a| a.attr("gateway.attempt").map(str::to_owned));
        assert!(!attempts.is_empty() && attempts.len() <= 2, "{attempts:#?}");
        for a in &attempts {
            assert_eq!(
                a.parent_span_id, server.span_id,
                "attempts are siblings under the request"
            );
            assert_eq!(a.name, "testing.v1.Echo/Meta");
            assert_eq!(a.attr("rpc.system"), Some("grpc"));
        }
        let last = attempts.last().unwrap();
        assert_eq!(
            last.span_id, s.backend_parent,
            "the backend's parent is the attempt that reached it"
        );
        assert_eq!(last.attr("rpc.grpc.status_code"), Some("0"));
        assert_eq!(
            last.attr("server.port"),
            Some(backend.rsplit(':').next().unwrap())
        );
        if attempts.len() == 2 {
            retried += 1;
            let first = attempts[0];
            assert!(first.error, "the failed attempt is marked failed");
            assert_eq!(first.attr("rpc.grpc.status_code"), Some("14"));
            assert_eq!(
                first.attr("server.port"),
                Some(dead.rsplit(':').next().unwrap())
            );
            assert_eq!(first.attr("gateway.attempt"), Some("1"));
            assert_eq!(last.attr("gateway.attempt"), Some("2"));
            assert_ne!(first.span_id, last.span_id);
        }
        for name in ["transcode request", "transcode reply"] {
            let t = one(&spans, name, |x| x.name == name);
            assert_eq!(t.parent_span_id, server.span_id);
        }
    }
    assert!(
        retried >= 1,
        "round robin sends some requests to the dead endpoint first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_traces_are_not_exported_and_auth_refusals_show_as_a_failed_auth_span() {
    let export = shared_export();
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    std::env::set_var("OT2_HMAC_SECRET", "0123456789abcdef0123456789abcdef");
    let extra = r#"
[[routes]]
method = "GET"
path = "/ot2/private"
grpc = "testing.v1.Echo/Meta"
auth = "required"

[auth.issuers.ot2]
issuer = "ot2"
algorithms = ["HS256"]
hmac_secret_env = "OT2_HMAC_SECRET"
"#;
    let dir = temp_dir("ot2");
    let path = dir.join("routes.toml");
    std::fs::write(&path, config(&[&backend], "ot2", extra)).unwrap();
    let gw = RunningGateway::start(&path).await;

    // The client said "not sampled": nothing is recorded, and the backend
    // sees the request span as its parent (no attempt span is made).
    let tp = "00-00000000000000000000000000000a2a-00000000000000a1-00";
    let unsampled = call_meta(&gw, "/ot2/meta", Some(tp.to_owned())).await;
    assert_eq!(unsampled.backend_flags, "00");
    assert_eq!(unsampled.backend_parent, unsampled.ours);
    // No traceparent: a new trace, kept at sampling_ratio (0.0 here).
    let fresh = call_meta(&gw, "/ot2/meta", None).await;
    assert_eq!(fresh.backend_flags, "00");

    // A sampled request refused by auth.
    let sampled = "00-00000000000000000000000000000a2b-00000000000000b1-01";
    let r = http_client()
        .get(gw.url("/ot2/private"))
        .header("traceparent", sampled)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    export.flush().await;
    let spans = export
        .received
        .wait_until(Duration::from_secs(5), |spans| {
            spans
                .iter()
                .any(|s| s.trace_id.ends_with("0a2b") && s.kind == SpanKind::Server)
        })
        .await;
    // Spans leave in order: the later, sampled trace arrived, so the
    // earlier unsampled ones would have too.
    for id in [&unsampled.trace_id, &fresh.trace_id] {
        assert!(
            spans.iter().all(|s| &s.trace_id != id),
            "trace {id} was not sampled"
        );
    }
    let trace = export.received.trace("00000000000000000000000000000a2b");
    let server = one(&trace, "request span", |x| x.kind == SpanKind::Server);
    assert_eq!(server.name, "GET /ot2/private");
    assert_eq!(server.attr("http.response.status_code"), Some("401"));
    assert!(
        !server.error,
        "a 4xx is the client's error, not the gateway's"
    );
    let auth = one(&trace, "auth span", |x| x.name == "auth");
    assert_eq!(auth.parent_span_id, server.span_id);
    assert!(auth.error);
    assert_eq!(auth.attr("http.response.status_code"), Some("401"));
    assert!(
        trace.iter().all(|s| s.kind != SpanKind::Client),
        "a refused request calls no backend"
    );
}

/// Runs `gateway serve` exporting to a collector at `collector` over
/// `protocol`, sends three requests, stops it with SIGTERM and returns once
/// it has exited (the exporter flushes on the way out).
async fn serve_and_stop(prefix: &str, protocol: &str, collector: &str) {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let telemetry = format!(
        "\n[admin]\nenabled = false\n\n[telemetry]\notlp_endpoint = \"http://{collector}\"\notlp_protocol = \"{protocol}\"\nservice_name = \"gw-{protocol}\"\n"
    );
    let text = config(&[&backend], prefix, &telemetry).replacen(
        "[server]\n",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        1,
    );
    let dir = temp_dir(prefix);
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(gateway_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let client = http_client();
    let base = format!("http://127.0.0.1:{port}/{prefix}");
    let start = Instant::now();
    let first = loop {
        if let Ok(r) = client.get(format!("{base}/echo/hello")).send().await {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.status(), 200);
    let r = client
        .get(format!("{base}/fail?code=5&message=gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let made_up = reqwest::Method::from_bytes(b"MADEUP").unwrap();
    let r = client
        .request(made_up, format!("{base}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("gateway did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = log.join().unwrap();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("exporting traces over OTLP")),
        "{}",
        log.join("\n")
    );
}

/// The spans of the four requests [`serve_and_stop`] sends.
fn check_served_spans(spans: &[Span], prefix: &str, protocol: &str) {
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|s| s.service == format!("gw-{protocol}")));
    let echo = one(spans, "echo request", |s| {
        s.name == format!("GET /{prefix}/echo/{{string_field}}")
    });
    assert_eq!(
        echo.attr("http.route"),
        Some(format!("/{prefix}/echo/{{string_field}}").as_str())
    );
    assert_eq!(echo.attr("http.response.status_code"), Some("200"));
    assert_eq!(echo.attr("http.request.method"), Some("GET"));
    assert_eq!(echo.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(
        echo.parent_span_id, "",
        "no client traceparent: a root span"
    );
    let attempt = one(spans, "echo attempt", |s| {
        s.kind == SpanKind::Client && s.trace_id == echo.trace_id
    });
    assert_eq!(attempt.parent_span_id, echo.span_id);
    assert_eq!(attempt.name, "testing.v1.Echo/Echo");

    let fail = one(spans, "fail request", |s| {
        s.name == format!("GET /{prefix}/fail")
    });
    assert_eq!(fail.attr("http.response.status_code"), Some("404"));
    assert_eq!(fail.attr("rpc.grpc.status_code"), Some("5"));
    let failed = one(spans, "fail attempt", |s| {
        s.kind == SpanKind::Client && s.trace_id == fail.trace_id
    });
    assert!(failed.error);

    let unrouted = one(spans, "unrouted request", |s| {
        s.kind == SpanKind::Server
            && s.attr("url.path") == Some(format!("/{prefix}/nowhere").as_str())
    });
    assert_eq!(unrouted.name, "GET");
    assert_eq!(unrouted.attr("http.response.status_code"), Some("404"));
    assert_eq!(unrouted.attr("http.route"), None);

    // A made-up method names no span: the HTTP semantic conventions' `HTTP`
    // and `_OTHER`, with the method as sent in its own attribute.
    let other = one(spans, "made-up method request", |s| {
        s.kind == SpanKind::Server
            && s.attr("url.path") == Some(format!("/{prefix}/elsewhere").as_str())
    });
    assert_eq!(other.name, "HTTP");
    assert_eq!(other.attr("http.request.method"), Some("_OTHER"));
    assert_eq!(other.attr("http.request.method_original"), Some("MADEUP"));
    assert_eq!(other.attr("http.response.status_code"), Some("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_over_grpc_with_route_and_status_and_flushes_at_shutdown() {
    let (addr, received) = grpc_collector().await;
    serve_and_stop("ot3", "grpc", &addr).await;
    // The batch delay is 5 s and the process exited at once: what arrived
    // was flushed on the way out.
    let spans = received
        .wait_until(Duration::from_secs(2), |s| {
            s.iter().filter(|x| x.kind == SpanKind::Server).count() >= 4
        })
        .await;
    check_served_spans(&spans, "ot3", "grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_over_http_protobuf() {
    let (addr, received) = http_collector().await;
    serve_and_stop("ot4", "http", &addr).await;
    let spans = received
        .wait_until(Duration::from_secs(2), |s| {
            s.iter().filter(|x| x.kind == SpanKind::Server).count() >= 4
        })
        .await;
    check_served_spans(&spans, "ot4", "http");
}
