//! Observability end to end: Prometheus metrics scraped from the admin
//! listener and read with a real text-format parser, request ids and W3C
//! trace context carried into the backend's gRPC metadata, and the access
//! log of the real binary as JSON lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::exposition::{parse_exposition, value, Sample};
use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, gateway_bin, http_client, spawn_backend, temp_dir, testing_descriptors,
    testing_pool, toml_path,
};
use serde_json::Value as Json;

/// Metrics are one registry per process and tests run in parallel, so each
/// test routes under its own prefix and reads only its own series.
fn config(backend: &str, prefix: &str) -> String {
    format!(
        r#"[server]
descriptors = "{descriptors}"
watch = false
shutdown_delay = "0s"

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/{prefix}/echo/{{string_field}}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/{prefix}/fail"
grpc = "testing.v1.Echo/Fail"

[[routes]]
method = "GET"
path = "/{prefix}/meta"
grpc = "testing.v1.Echo/Meta"
"#,
        descriptors = toml_path(&testing_descriptors()),
    )
}

async fn start(prefix: &str) -> RunningGateway {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir(prefix);
    let path = dir.join("routes.toml");
    std::fs::write(&path, config(&backend, prefix)).unwrap();
    RunningGateway::start(&path).await
}

async fn scrape(gw: &RunningGateway) -> Vec<Sample> {
    let resp = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    parse_exposition(&resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template_status_and_grpc_code() {
    let gw = start("tm1").await;
    let client = http_client();
    for i in 0..3 {
        let r = client
            .get(gw.url(&format!("/tm1/echo/v{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        let r = client
            .get(gw.url("/tm1/fail?code=5&message=gone"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = client
        .get(gw.url("/tm1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let reload = client
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);

    let s = scrape(&gw).await;
    let echo = "/tm1/echo/{string_field}";
    assert_eq!(
        value(
            &s,
            "gateway_http_requests_total",
            &[("route", echo), ("method", "GET"), ("code", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_http_requests_total",
            &[("route", "/tm1/fail"), ("code", "4xx")]
        ),
        2.0
    );
    // The raw path never becomes a label: three distinct paths, one series.
    assert!(s
        .iter()
        .all(|x| x.labels.get("route").map(String::as_str) != Some("/tm1/echo/v0")));
    // The histogram has the gateway's buckets, and its count matches.
    let les: Vec<&str> = s
        .iter()
        .filter(|x| {
            x.name == "gateway_http_request_duration_seconds_bucket"
                && x.labels.get("route").map(String::as_str) == Some(echo)
        })
        .map(|x| x.labels["le"].as_str())
        .collect();
    assert!(
        les.contains(&"0.00025") && les.contains(&"30") && les.contains(&"+Inf"),
        "{les:?}"
    );
    assert_eq!(
        value(
            &s,
            "gateway_http_request_duration_seconds_bucket",
            &[("route", echo), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_http_request_duration_seconds_count",
            &[("route", echo)]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_upstream_requests_total",
            &[
                ("backend", "echo"),
                ("grpc_method", "testing.v1.Echo/Fail"),
                ("grpc_code", "NotFound")
            ]
        ),
        2.0
    );
    assert!(
        value(
            &s,
            "gateway_upstream_requests_total",
            &[("grpc_method", "testing.v1.Echo/Echo"), ("grpc_code", "Ok")]
        ) >= 3.0
    );
    assert!(value(&s, "gateway_config_reloads_total", &[("result", "ok")]) >= 1.0);
    assert!(value(&s, "gateway_build_info", &[]) >= 1.0);
    assert_eq!(
        value(&s, "gateway_backend_endpoints", &[("backend", "echo")]),
        1.0,
        "one static endpoint"
    );
    assert!(s
        .iter()
        .any(|x| x.name == "gateway_http_requests_in_flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_plain_made_otherwise_and_reach_the_backend() {
    let gw = start("tm2").await;
    let client = http_client();
    let meta = |r: &Json| {
        r["metadata"]["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let r = client
        .get(gw.url("/tm2/meta"))
        .header("x-request-id", "order-42_a.b:c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "order-42_a.b:c");
    let body: Json = r.json().await.unwrap();
    assert_eq!(meta(&body), "order-42_a.b:c");

    for bad in ["has space", "quote\"d", &"x".repeat(200)] {
        let r = client
            .get(gw.url("/tm2/meta"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "{id}");
        let body: Json = r.json().await.unwrap();
        assert_eq!(meta(&body), id);
    }

    let r = client.get(gw.url("/tm2/meta")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    // Error answers carry it too.
    let r = client.get(gw.url("/tm2/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"].len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_the_clients_trace_into_the_backend() {
    let gw = start("tm3").await;
    let client = http_client();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client
        .get(gw.url("/tm3/meta"))
        .header("traceparent", parent)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let ours = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    let body: Json = r.json().await.unwrap();
    let seen = body["metadata"]["traceparent"]
        .as_str()
        .expect("backend got a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the backend's parent is the gateway's span, not the client's"
    );
    assert_eq!(
        seen, ours,
        "the span the gateway reports is the one the backend saw as parent"
    );
    assert_eq!(parts[3], "01", "the client's sampling decision is kept");
    assert_eq!(body["metadata"]["tracestate"], "vendor=abc");

    // No (or a malformed) traceparent: the gateway starts a trace.
    let r = client
        .get(gw.url("/tm3/meta"))
        .header("traceparent", "garbage")
        .send()
        .await
        .unwrap();
    let body: Json = r.json().await.unwrap();
    let seen = body["metadata"]["traceparent"].as_str().unwrap();
    assert_ne!(
        seen.split('-').nth(1).unwrap(),
        "00000000000000000000000000000000"
    );
    assert_eq!(seen.len(), 55);
}

/// A gateway of [`config`] with `[telemetry] propagators`.
async fn start_propagating(prefix: &str, propagators: &str) -> RunningGateway {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let path = temp_dir(prefix).join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[telemetry]\npropagators = {propagators}\n",
            config(&backend, prefix)
        ),
    )
    .unwrap();
    RunningGateway::start(&path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_and_jaeger_traces_are_joined_and_handed_on_in_every_listed_format() {
    let gw = start_propagating("tm7", r#"["tracecontext", "b3", "b3multi", "jaeger"]"#).await;
    let client = http_client();
    // A Zipkin client's 64-bit trace, single-header form.
    let r = client
        .get(gw.url("/tm7/meta"))
        .header("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")
        .header("x-b3-flags", "1")
        .send()
        .await
        .unwrap();
    let ours = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    let span = ours.split('-').nth(2).unwrap().to_owned();
    let body: Json = r.json().await.unwrap();
    let md = &body["metadata"];
    let trace = "0000000000000000a3ce929d0e0e4736";
    assert_eq!(md["traceparent"], ours, "{md}");
    assert!(ours.starts_with(&format!("00-{trace}-")), "{ours}");
    assert_ne!(
        span, "00f067aa0ba902b7",
        "the backend's parent is the gateway's span"
    );
    assert!(
        ours.ends_with("-01"),
        "the client's sampling decision is kept: {ours}"
    );
    assert_eq!(md["b3"], format!("{trace}-{span}-1"), "{md}");
    assert_eq!(md["x-b3-traceid"], trace);
    assert_eq!(md["x-b3-spanid"], span.as_str());
    assert_eq!(md["x-b3-sampled"], "1");
    assert_eq!(md["uber-trace-id"], format!("{trace}:{span}:0:01"));
    assert!(
        md.get("x-b3-flags").is_none(),
        "the client's own B3 headers are replaced: {md}"
    );

    // A Jaeger client's trace, URL-encoded, not sampled.
    let r = client
        .get(gw.url("/tm7/meta"))
        .header("uber-trace-id", "5ff2d0b0b1f2a3c4%3A7c3a1e5b%3A0%3A0")
        .send()
        .await
        .unwrap();
    let body: Json = r.json().await.unwrap();
    let tp = body["metadata"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-00000000000000005ff2d0b0b1f2a3c4-"),
        "{tp}"
    );
    assert!(tp.ends_with("-00"), "{tp}");

    // traceparent wins over the others when a client sends both.
    let r = client
        .get(gw.url("/tm7/meta"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")
        .send()
        .await
        .unwrap();
    let body: Json = r.json().await.unwrap();
    assert!(body["metadata"]["x-b3-traceid"]
        .as_str()
        .unwrap()
        .starts_with("4bf92f35"));

    // A malformed one starts a new trace, as a malformed traceparent does.
    let r = client
        .get(gw.url("/tm7/meta"))
        .header("b3", "not-a-trace")
        .send()
        .await
        .unwrap();
    let body: Json = r.json().await.unwrap();
    assert_ne!(body["metadata"]["x-b3-traceid"], "not");
    assert_eq!(body["metadata"]["x-b3-traceid"].as_str().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_propagators_b3_headers_are_neither_read_nor_sent_on() {
    let gw = start_propagating("tm8", r#"["tracecontext"]"#).await;
    let r = http_client()
        .get(gw.url("/tm8/meta"))
        .header("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")
        .header("uber-trace-id", "5ff2d0b0b1f2a3c4:7c3a1e5b:0:1")
        .send()
        .await
        .unwrap();
    let body: Json = r.json().await.unwrap();
    let md = &body["metadata"];
    assert!(
        md.get("b3").is_none() && md.get("uber-trace-id").is_none(),
        "{md}"
    );
    assert!(!md["traceparent"]
        .as_str()
        .unwrap()
        .contains("a3ce929d0e0e4736"));

    let path = temp_dir("tm9").join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[telemetry]\npropagators = [\"tracecontext\", \"xray\"]\n",
            config("127.0.0.1:1", "tm9")
        ),
    )
    .unwrap();
    let err = gateway::snapshot::Snapshot::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("telemetry.propagators[1]") && err.contains("unknown propagator \"xray\""),
        "{err}"
    );
}

/// Runs the binary with `log_format`, sends one GET carrying a token, and
/// returns the access line for it (found by its request id under
/// `id_field`), with the backend's address. The token must appear in no line.
async fn one_access_line(
    prefix: &str,
    log_format: &str,
    id_field: &str,
) -> (HashMap<String, Json>, String) {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir(prefix);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text =
        config(&backend, prefix).replacen(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            1,
        ) + &format!("\n[admin]\nenabled = false\n\n[telemetry]\nlog_format = \"{log_format}\"\n");
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
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let client = http_client();
    let url = format!("http://127.0.0.1:{port}/{prefix}/echo/hello");
    let start = Instant::now();
    let resp = loop {
        if let Ok(r) = client
            .get(&url)
            .header("x-request-id", "log-test-1")
            .header("authorization", "Bearer secret.token.value")
            .send()
            .await
        {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status(), 200);
    let mut access: Option<HashMap<String, Json>> = None;
    let mut all = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        all.push(line.clone());
        assert!(
            !line.contains("secret.token.value"),
            "the token was logged: {line}"
        );
        let Ok(Json::Object(fields)) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if fields.get(id_field).and_then(Json::as_str) == Some("log-test-1") {
            access = Some(fields.into_iter().collect());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let access =
        access.unwrap_or_else(|| panic!("no access line for the request in:\n{}", all.join("\n")));
    (access, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request_without_the_token() {
    let (access, backend) = one_access_line("tm4", "json", "request_id").await;
    assert_eq!(access["target"], "access");
    assert_eq!(access["http.method"], "GET");
    assert_eq!(access["url.path"], "/tm4/echo/hello");
    assert_eq!(access["route"], "/tm4/echo/{string_field}");
    assert_eq!(access["http.status"], 200);
    assert_eq!(access["grpc.method"], "testing.v1.Echo/Echo");
    assert_eq!(access["grpc.code"], 0);
    assert_eq!(access["upstream.addr"], backend.as_str());
    assert_eq!(access["client.ip"], "127.0.0.1");
    assert!(access["duration_us"].as_u64().is_some());
    assert!(access["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(access["retries"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_ecs_form_uses_the_elastic_common_schema_names() {
    let (a, backend) = one_access_line("tm10", "ecs", "http.request.id").await;
    assert_eq!(a["log.logger"], "access");
    assert_eq!(a["log.level"], "info");
    assert_eq!(a["ecs.version"], gateway::telemetry::ecs::ECS_VERSION);
    assert_eq!(a["event.dataset"], "gateway.access");
    assert_eq!(a["event.outcome"], "success");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/tm10/echo/hello");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["client.ip"], "127.0.0.1");
    assert_eq!(a["destination.address"], backend.as_str());
    assert_eq!(a["gateway.route"], "/tm10/echo/{string_field}");
    assert_eq!(a["gateway.grpc.method"], "testing.v1.Echo/Echo");
    assert!(a["http.response.body.bytes"].as_u64().unwrap() > 0);
    let trace = a["trace.id"].as_str().unwrap();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace}"
    );
    // Nanoseconds, as ECS counts event.duration: at least a microsecond.
    assert!(a["event.duration"].as_u64().unwrap() >= 1_000, "{a:?}");
    // RFC 3339 in UTC.
    let ts = a["@timestamp"].as_str().unwrap();
    assert!(
        ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
        "{ts}"
    );
    for old in [
        "http.method",
        "http.status",
        "duration_us",
        "request_id",
        "route",
    ] {
        assert!(!a.contains_key(old), "{old} kept its non-ECS name: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_refusals_are_counted_by_reason_policy_and_result() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir("tm5");
    let text = config(&backend, "tm5")
        + r#"
[[routes]]
method = "GET"
path = "/tm5/private"
grpc = "testing.v1.Echo/Meta"
auth = "required"

[[routes]]
method = "GET"
path = "/tm5/limited"
grpc = "testing.v1.Echo/Meta"
rate_limit = ["tm5_tight"]

[auth.issuers.tm5]
issuer = "tm5"
algorithms = ["HS256"]
hmac_secret_env = "TM5_SECRET_NOT_SET_ANYWHERE_BUT_NEEDED"

[rate_limits.policies.tm5_tight]
key = "route"
rate = 1
per = "1m"
burst = 1

[cors]
allowed_origins = ["http://page.example"]
"#;
    // The issuer's secret comes from the environment.
    std::env::set_var(
        "TM5_SECRET_NOT_SET_ANYWHERE_BUT_NEEDED",
        "0123456789abcdef0123456789abcdef",
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let gw = RunningGateway::start(&path).await;
    let client = http_client();
    let before = scrape(&gw).await;
    let b = |name: &str, labels: &[(&str, &str)]| value(&before, name, labels);
    let (missing0, invalid0) = (
        b(
            "gateway_auth_failures_total",
            &[("reason", "missing_token")],
        ),
        b(
            "gateway_auth_failures_total",
            &[("reason", "invalid_token")],
        ),
    );
    let (granted0, refused0) = (
        b("gateway_cors_preflights_total", &[("result", "granted")]),
        b("gateway_cors_preflights_total", &[("result", "no_route")]),
    );

    assert_eq!(
        client
            .get(gw.url("/tm5/private"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = client
        .get(gw.url("/tm5/private"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        client
            .get(gw.url("/tm5/limited"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(gw.url("/tm5/limited"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    let preflight = |p: &str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url(p))
            .header("origin", "http://page.example")
            .header("access-control-request-method", "GET")
            .send()
    };
    assert_eq!(preflight("/tm5/meta").await.unwrap().status(), 200);
    assert_eq!(preflight("/tm5/unrouted").await.unwrap().status(), 403);

    let after = scrape(&gw).await;
    let a = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    assert_eq!(
        a(
            "gateway_auth_failures_total",
            &[("reason", "missing_token")]
        ) - missing0,
        1.0
    );
    assert_eq!(
        a(
            "gateway_auth_failures_total",
            &[("reason", "invalid_token")]
        ) - invalid0,
        1.0
    );
    assert_eq!(
        a("gateway_rate_limited_total", &[("policy", "tm5_tight")]),
        1.0
    );
    assert_eq!(
        a("gateway_cors_preflights_total", &[("result", "granted")]) - granted0,
        1.0
    );
    assert_eq!(
        a("gateway_cors_preflights_total", &[("result", "no_route")]) - refused0,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_running_process() {
    let gw = start("tm7").await;
    let s = scrape(&gw).await;
    let one = |name: &str| {
        let found: Vec<f64> = s
            .iter()
            .filter(|x| x.name == name)
            .map(|x| x.value)
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0]
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The gateway runs in this test process: its numbers are this process's.
    let start = one("process_start_time_seconds");
    assert!(
        start <= now && start > now - 3600.0,
        "started {start}, now {now}"
    );
    assert!(one("process_cpu_seconds_total") > 0.0);
    let rss = one("process_resident_memory_bytes");
    assert!(rss > 4_000_000.0, "{rss}");
    assert!(one("process_virtual_memory_bytes") >= rss);
    let (open, max) = (one("process_open_fds"), one("process_max_fds"));
    // At least stdio and the two listeners.
    assert!(open >= 5.0 && open <= max, "{open} open of {max}");
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    assert!((open - fds).abs() < 50.0, "{open} reported, {fds} listed");
}
