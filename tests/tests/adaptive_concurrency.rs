//! Load shedding: a backend's adaptive concurrency limit
//! (`adaptive_concurrency`) and the gateway-wide `server.max_in_flight`.
//!
//! The backend of the adaptive test queues like a real one that is asked
//! too much: each call takes `BASE` times the number of calls it is serving
//! at once, so its latency says how deep its queue is. The same load is sent
//! through a route to a backend without the limit and through one with it:
//! with it, the limit falls, the excess is answered 503 at once with
//! `Retry-After`, and the calls let through keep a latency close to the
//! backend's own instead of the queue's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::example::{BoxFuture, DynamicServer};
use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, http_client, spawn_backend, testing_descriptors, testing_pool, toml_path,
    write_config, ECHO_SERVICE,
};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::{Request, Response, Status};

/// The backend's latency per call it serves at once.
const BASE: Duration = Duration::from_millis(5);
/// Clients sending back to back: the unlimited backend then answers in
/// about `BASE * CLIENTS`.
const CLIENTS: usize = 32;

/// A backend whose every call takes `BASE` times the calls in flight.
fn queueing_backend() -> DynamicServer {
    let in_flight = Arc::new(AtomicUsize::new(0));
    DynamicServer::new(
        &testing_pool(),
        &[ECHO_SERVICE],
        move |method: &MethodDescriptor, _req: Request<DynamicMessage>| {
            let output = method.output();
            let in_flight = in_flight.clone();
            Box::pin(async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(BASE * now as u32).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Status>(Response::new(DynamicMessage::new(output)))
            }) as BoxFuture<_>
        },
    )
}

fn config(plain: &str, limited: &str) -> String {
    format!(
        r#"
[server]
descriptors = "{descriptors}"

[backends.plain]
endpoints = ["{plain}"]
timeout = "10s"

[backends.limited]
endpoints = ["{limited}"]
timeout = "10s"
adaptive_concurrency = {{ algorithm = "gradient", initial_limit = 30, min_limit = 2, max_limit = 100, window = "50ms", min_samples = 5 }}

[[routes]]
method = "GET"
path = "/v1/plain"
grpc = "testing.v1.Echo/Sleep"
backend = "plain"

[[routes]]
method = "GET"
path = "/v1/limited"
grpc = "testing.v1.Echo/Sleep"
backend = "limited"
"#,
        descriptors = toml_path(&testing_descriptors()),
    )
}

/// One answer as a client saw it.
struct Seen {
    status: u16,
    took: Duration,
    /// After the warm-up (the limiter measuring and converging).
    measured: bool,
    retry_after: Option<String>,
    message: String,
}

/// `CLIENTS` clients sending GET `url` back to back for `run`; a client
/// that is shed pauses a little (a real one would wait `Retry-After`; this
/// one only keeps the test's own CPU use down).
async fn load(url: String, run: Duration, warm_up: Duration) -> Vec<Seen> {
    let client = http_client();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while start.elapsed() < run {
                    let sent = Instant::now();
                    let resp = client.get(&url).send().await.expect("request");
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    let took = sent.elapsed();
                    seen.push(Seen {
                        status,
                        took,
                        measured: sent.duration_since(start) >= warm_up,
                        retry_after,
                        message: body["message"].as_str().unwrap_or("").to_owned(),
                    });
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// The value of the sample `name{labels}` in a /metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limit_falls_under_load_and_sheds_the_excess_at_once() {
    let plain = spawn_backend(queueing_backend()).await;
    let limited = spawn_backend(queueing_backend()).await;
    let gw = RunningGateway::start(&write_config(&config(&plain, &limited))).await;
    let admin = http_client();

    // The same load without the limit: every call queues at the backend.
    let unlimited = load(
        gw.url("/v1/plain"),
        Duration::from_millis(1200),
        Duration::from_millis(400),
    )
    .await;
    assert!(
        unlimited.iter().all(|s| s.status == 200),
        "the plain backend sheds nothing"
    );
    let unlimited_p50 = percentile(
        unlimited
            .iter()
            .filter(|s| s.measured)
            .map(|s| s.took)
            .collect(),
        0.5,
    );
    // The model: about BASE * CLIENTS once every client waits there.
    assert!(
        unlimited_p50 >= BASE * (CLIENTS as u32) / 2,
        "the backend should queue without the limit: p50 {unlimited_p50:?}"
    );

    let seen = load(
        gw.url("/v1/limited"),
        Duration::from_millis(2500),
        Duration::from_millis(1000),
    )
    .await;
    let metrics = gw.metrics_text().await;
    let limit = metric(
        &metrics,
        "gateway_adaptive_concurrency_limit{backend=\"limited\"}",
    )
    .unwrap_or_else(|| panic!("no limit gauge for the limited backend in:\n{metrics}"));
    assert!(
        metric(
            &metrics,
            "gateway_adaptive_concurrency_limit{backend=\"plain\"}"
        )
        .is_none(),
        "a backend without the limiter has no limit gauge"
    );
    assert!(
        limit < 15.0,
        "the limit should fall well below its initial 30 under this load: {limit}"
    );
    let shed_total =
        metric(&metrics, "gateway_adaptive_shed_total{backend=\"limited\"}").unwrap_or(0.0);

    let admitted: Vec<_> = seen.iter().filter(|s| s.status == 200).collect();
    let shed: Vec<_> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(!admitted.is_empty(), "nothing was admitted");
    assert!(!shed.is_empty(), "nothing was shed under {CLIENTS} clients");
    assert_eq!(
        shed_total as usize,
        shed.len(),
        "every 503 is counted as shed"
    );
    for s in &shed {
        assert_eq!(s.status, 503, "shed with: {}", s.message);
        assert_eq!(s.retry_after.as_deref(), Some("1"), "{}", s.message);
        assert!(
            s.message.contains("backend \"limited\" is shedding load")
                && s.message.contains("adaptive concurrency limit of"),
            "{}",
            s.message
        );
    }
    // Refused at once, not after waiting in a queue.
    let shed_p90 = percentile(shed.iter().map(|s| s.took).collect(), 0.9);
    assert!(
        shed_p90 < unlimited_p50 / 2,
        "shed answers should be immediate: p90 {shed_p90:?}, the queue's p50 {unlimited_p50:?}"
    );
    // The calls let through wait far less than in the queue.
    let admitted_p99 = percentile(
        admitted
            .iter()
            .filter(|s| s.measured)
            .map(|s| s.took)
            .collect(),
        0.99,
    );
    assert!(
        admitted_p99 < unlimited_p50,
        "admitted calls' p99 {admitted_p99:?} should stay below the unlimited p50 {unlimited_p50:?} (limit {limit})"
    );

    eprintln!(
        "unlimited p50 {unlimited_p50:?}; limited: limit {limit}, admitted {} (p99 {admitted_p99:?}), shed {} (p90 {shed_p90:?})",
        admitted.len(),
        shed.len()
    );

    // /admin/backends shows the limiter.
    let backends: serde_json::Value = admin
        .get(gw.admin_url("/admin/backends"))
        .send()
        .await
        .expect("GET /admin/backends")
        .json()
        .await
        .expect("backends JSON");
    let by_name = |name: &str| {
        backends["backends"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no backend {name} in {backends}"))
            .clone()
    };
    let ac = &by_name("limited")["adaptive_concurrency"];
    assert_eq!(ac["algorithm"], "gradient", "{ac}");
    assert!(
        ac["limit"].as_u64().is_some_and(|l| (2..=100).contains(&l)),
        "{ac}"
    );
    assert!(ac["min_rtt_ms"].as_f64().is_some_and(|m| m > 0.0), "{ac}");
    assert_eq!(ac["shed"].as_u64(), Some(shed.len() as u64), "{ac}");
    assert!(by_name("plain")["adaptive_concurrency"].is_null());
}

#[tokio::test]
async fn max_in_flight_sheds_new_requests_while_the_gateway_is_full() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let text = format!(
        r#"
[server]
descriptors = "{descriptors}"
max_in_flight = 3

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/v1/sleep"
grpc = "testing.v1.Echo/Sleep"
"#,
        descriptors = toml_path(&testing_descriptors()),
    );
    let gw = RunningGateway::start(&write_config(&text)).await;
    let client = http_client();

    // Three slow requests fill the gateway.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/v1/sleep?millis=1500"));
            tokio::spawn(
                async move { client.get(url).send().await.expect("slow request").status() },
            )
        })
        .collect();
    let full = async {
        loop {
            let r = client
                .get(gw.url("/v1/sleep?millis=0"))
                .send()
                .await
                .expect("probe");
            if r.status() == 503 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let sent = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(1), full)
        .await
        .expect("no 503 within 1 s while three 1.5 s requests fill max_in_flight = 3");
    assert!(sent.elapsed() < Duration::from_millis(1000));
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.expect("JSON error body");
    assert_eq!(body["code"], 14, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the gateway is overloaded: 3 requests")
                && m.contains("server.max_in_flight")),
        "{body}"
    );
    // A refusal is answered at once.
    let t = Instant::now();
    let again = client
        .get(gw.url("/v1/sleep?millis=0"))
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), 503);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // The admin listener is not limited.
    let health = client
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = gw.metrics_text().await;
    let shed = metric(
        &metrics,
        "gateway_overload_shed_total{reason=\"max_in_flight\"}",
    )
    .unwrap_or_else(|| panic!("no shed counter in:\n{metrics}"));
    assert!(shed >= 2.0, "{shed}");

    // The slow ones were served, and once they are done the gateway serves again.
    for s in slow {
        assert_eq!(s.await.expect("slow task"), 200);
    }
    let after = client
        .get(gw.url("/v1/sleep?millis=0"))
        .send()
        .await
        .expect("request");
    assert_eq!(after.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_overload_sheds_a_share_of_new_requests() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    // 1% of the CPUs: the requests this test sends use more than that.
    let text = format!(
        r#"
[server]
descriptors = "{descriptors}"
overload = {{ cpu = 0.01 }}

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#,
        descriptors = toml_path(&testing_descriptors()),
    );
    let gw = RunningGateway::start(&write_config(&text)).await;
    let client = http_client();
    let started = Instant::now();
    let (mut ok, mut shed) = (0, None);
    while started.elapsed() < Duration::from_secs(5) {
        let r = client
            .get(gw.url("/v1/echo"))
            .send()
            .await
            .expect("request");
        if r.status() == 200 {
            ok += 1;
            continue;
        }
        shed = Some(r);
        break;
    }
    let shed = shed.unwrap_or_else(|| panic!("no request shed within 5 s ({ok} answered)"));
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.expect("JSON error body");
    assert_eq!(body["code"], 14, "{body}");
    assert_eq!(
        body["message"],
        "the gateway is overloaded: its CPU use is above server.overload.cpu; try again shortly"
    );
    // A share, never everything: some requests still pass while shedding.
    let mut answered = 0;
    for _ in 0..50 {
        let r = client
            .get(gw.url("/v1/echo"))
            .send()
            .await
            .expect("request");
        answered += usize::from(r.status() == 200);
    }
    assert!(answered >= 3, "{answered} of 50 answered while shedding");
    let metrics = gw.metrics_text().await;
    let counted = metric(&metrics, "gateway_overload_shed_total{reason=\"cpu\"}")
        .unwrap_or_else(|| panic!("no cpu shed counter in:\n{metrics}"));
    assert!(counted >= 1.0, "{counted}");
}

/// A stream holds its place under the limit until its answer begins, not
/// for as long as it runs: long-lived streams must not starve the backend's
/// other calls.
#[tokio::test]
async fn a_stream_holds_its_place_only_until_its_answer_begins() {
    use gateway_tests::streaming::{self, RawStream};
    let probe = Arc::new(streaming::Probe::default());
    let backend = spawn_backend(streaming::server(probe)).await;
    let config = streaming::CONFIG.replace("{extra}", "").replace(
        "connect_timeout = \"1s\"\n",
        "connect_timeout = \"1s\"\nadaptive_concurrency = { algorithm = \"aimd\", latency_threshold = \"10s\", initial_limit = 2, min_limit = 1, max_limit = 2 }\n",
    );
    assert!(
        config.contains("adaptive_concurrency"),
        "the backend table moved"
    );
    let gw =
        gateway_tests::TestGateway::start_with(&config, &backend, &streaming::descriptors()).await;
    // Four streams of 5 s each, open at once, with a limit of 2.
    let mut open = Vec::new();
    for i in 0..4 {
        let s = RawStream::open(
            &gw,
            "GET /v1/count?count=50&intervalMs=100 HTTP/1.1",
            b"",
            None,
        )
        .await;
        assert_eq!(
            s.status,
            200,
            "stream {i}: {}",
            String::from_utf8_lossy(&s.body)
        );
        open.push(s);
    }
    // Each is still running.
    for s in &mut open {
        assert!(s.read_some(1).await, "a stream ended early");
        assert!(!s.complete());
    }
    // And unary calls still pass beside them.
    let r = gw.get("/v1/count?count=1").await;
    assert_eq!(r.status, 200, "{}", r.text);
}
