//! Degraded answers end to end: a backend answering UNAVAILABLE and then
//! an open circuit get the route's static fallback, marked; an instance
//! that went down gets the stale cached answer; with neither, the normal
//! 503; a backend's own error is never degraded; a fallback body that is
//! not the reply type is refused at load, naming its key and line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::example::{BoxFuture, DynamicServer};
use gateway::snapshot::Snapshot;
use gateway_tests::edge::{counting_echo, edge_config};
use gateway_tests::running::KillableBackend;
use gateway_tests::{
    render_config, spawn_backend, testing_descriptors, testing_pool, write_config, TestGateway,
    ECHO_SERVICE,
};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::{Request, Response, Status};

fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gateway::telemetry::metrics::handle().render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn route(method: &str, path: &str, grpc: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nmethod = \"{method}\"\npath = \"{path}\"\ngrpc = \"testing.v1.Echo/{grpc}\"\n{extra}\n"
    )
}

/// Echo, except that `Fail` answers UNAVAILABLE; counts every call.
fn unavailable_fail(calls: Arc<AtomicUsize>) -> DynamicServer {
    DynamicServer::new(
        &testing_pool(),
        &[ECHO_SERVICE],
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let name = method.name().to_owned();
            Box::pin(async move {
                if name == "Fail" {
                    return Err(Status::unavailable("down for the test"));
                }
                Ok(Response::new(req.into_inner()))
            }) as BoxFuture<_>
        },
    )
}

/// `[backends.echo]` with retries off, a breaker that opens after three
/// failures, and quick connects.
fn config(backend_extra: &str, routes: &str) -> String {
    edge_config("", routes).replace(
        "timeout = \"5s\"\n",
        &format!("timeout = \"5s\"\nconnect_timeout = \"500ms\"\nretry = {{ attempts = 1 }}\n{backend_extra}\n"),
    )
}

#[tokio::test]
async fn an_unavailable_backend_and_an_open_circuit_get_the_static_fallback() {
    gateway::telemetry::metrics::handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = spawn_backend(unavailable_fail(calls.clone())).await;
    let routes = format!(
        "{}{}",
        route(
            "GET",
            "/v1/static",
            "Fail",
            "fallback = { body = { stringField = \"from the fallback\", int32Field = 7 } }"
        ),
        route(
            "POST",
            "/v1/static-json",
            "Fail",
            "body = \"*\"\nfallback = { status = 203, body = '{\"tags\": [\"a\"]}' }"
        ),
    );
    let cfg = config(
        "circuit_breaker = { failures = 3, window = \"10s\", open_for = \"60s\" }",
        &routes,
    );
    let gw = TestGateway::start_with(&cfg, &backend, &testing_descriptors()).await;
    let labels = [("route", "/v1/static"), ("kind", "static")];
    let counted = metric("gateway_fallbacks_total", &labels);
    for i in 0..5 {
        let r = gw.get("/v1/static").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        assert_eq!(r.header("gateway-degraded"), "static");
        assert_eq!(r.header("cache-control"), "no-store");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(
            r.json,
            serde_json::json!({"stringField": "from the fallback", "int32Field": 7})
        );
    }
    // Three UNAVAILABLE answers opened the circuit; the last two were not
    // calls at all, and got the fallback too.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(metric("gateway_fallbacks_total", &labels), counted + 5.0);

    // A route without cache: the status and the JSON-string body.
    let r = gw.post("/v1/static-json", &serde_json::json!({})).await;
    assert_eq!(r.status, 203, "{}", r.text);
    assert_eq!(r.header("gateway-degraded"), "static");
    assert_eq!(r.json, serde_json::json!({"tags": ["a"]}));
}

#[tokio::test]
async fn a_down_instance_gets_the_stale_cached_answer() {
    gateway::telemetry::metrics::handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut backend = KillableBackend::start(move || counting_echo(counter.clone()));
    let routes = route(
        "GET",
        "/v1/stale/{string_field}",
        "Echo",
        "cache = { ttl = \"200ms\", stale_if_error = \"1m\" }",
    );
    let gw =
        TestGateway::start_with(&config("", &routes), &backend.addr, &testing_descriptors()).await;
    let fresh = gw.get("/v1/stale/x").await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.header("gateway-degraded"), "");
    backend.kill();
    // Past the ttl: the entry is no longer fresh, only kept.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let labels = [("route", "/v1/stale/{string_field}"), ("kind", "stale")];
    let counted = metric("gateway_fallbacks_total", &labels);
    let stale = gw.get("/v1/stale/x").await;
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert_eq!(stale.text, fresh.text);
    assert_eq!(stale.header("gateway-degraded"), "stale");
    assert_eq!(stale.header("warning"), "110 - \"Response is Stale\"");
    assert_eq!(stale.header("cache-control"), "no-store");
    assert_eq!(stale.header("etag"), fresh.header("etag"));
    assert_eq!(metric("gateway_fallbacks_total", &labels), counted + 1.0);

    // Another request has no entry, and no static fallback: the 503.
    let none = gw.get("/v1/stale/y").await;
    assert_eq!(none.status, 503, "{}", none.text);
    assert_eq!(none.json["code"], 14, "{}", none.text);
    assert_eq!(none.header("gateway-degraded"), "");

    // Back up: fresh answers again, never the stale one.
    backend.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.get("/v1/stale/x").await;
        if r.status == 200 && r.header("gateway-degraded").is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never fresh again: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_backends_own_error_is_not_degraded() {
    let backend = spawn_backend(gateway_tests::echo_server(&testing_pool())).await;
    let routes = route(
        "GET",
        "/v1/own",
        "Fail",
        "fallback = { body = { stringField = \"no\" } }",
    );
    let gw = TestGateway::start_with(&config("", &routes), &backend, &testing_descriptors()).await;
    let r = gw.get("/v1/own?code=5&message=gone").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.header("gateway-degraded"), "");
    assert_eq!(r.json["message"], "gone");
}

#[test]
fn a_fallback_body_that_is_not_the_reply_type_is_refused_naming_its_key() {
    let routes = format!(
        "{}{}{}",
        route(
            "GET",
            "/v1/a",
            "Echo",
            "fallback = { body = { noSuchField = 1 } }"
        ),
        route("GET", "/v1/b", "Echo", "fallback = { body = '{not json' }"),
        route(
            "GET",
            "/v1/c",
            "Echo",
            "fallback = { status = 304, body = { } }"
        ),
    );
    let text = render_config(
        &edge_config("", &routes),
        "127.0.0.1:1",
        &testing_descriptors(),
    );
    let path = write_config(&text);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let want = format!(
        "routes.toml:{}: routes[0].fallback.body: is not a valid testing.v1.Everything (the reply of testing.v1.Echo/Echo)",
        line("noSuchField")
    );
    assert!(errors.contains(&want), "{want}\nnot in\n{errors}");
    assert!(errors.contains("noSuchField"), "{errors}");
    assert!(
        errors.contains(&format!(
            "routes.toml:{}: routes[1].fallback.body: is not JSON",
            line("{not json")
        )),
        "{errors}"
    );
    assert!(
        errors.contains("routes[2].fallback.status: 304 is not a status to answer with"),
        "{errors}"
    );
}
