//! Resilience: retries on another instance, outlier ejection, the circuit
//! breaker and its concurrency limit, and deadlines; and the load test that
//! the issue's "done when" asks for: steady traffic while instances fail and
//! return, with zero failed requests whenever one healthy instance exists.
//!
//! Backends are real tonic servers, each in its own runtime so a test can
//! kill one outright (every connection dropped at once, as a crash does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::server::Gateway;
use gateway::snapshot::Snapshot;
use gateway_tests::consul::{CheckStatus, ConsulTestServer};
use gateway_tests::fleet::{eventually, TestInstance};
use gateway_tests::{http_client, testing_descriptors, toml_path, write_config};

struct TestGw {
    rest: SocketAddr,
    gw: Arc<Gateway>,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGw {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Answer {
    status: u16,
    body: serde_json::Value,
    took: Duration,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

impl TestGw {
    async fn start(config: &str) -> TestGw {
        let path = write_config(config);
        let snapshot = Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("config does not load:\n{e}\n---\n{config}"));
        let gw = Gateway::new(snapshot);
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest_addr = rest.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway::server::serve(rest, gw.clone(), async move {
            let _ = rx.await;
        }));
        TestGw {
            rest: rest_addr,
            gw,
            client: http_client(),
            stop: Some(tx),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let started = Instant::now();
        let mut rb = self.client.request(
            method.parse().unwrap(),
            format!("http://{}{path}", self.rest),
        );
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            body,
            took: started.elapsed(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], None).await
    }

    fn backend(&self) -> Arc<gateway::upstream::Backend> {
        self.gw.snapshot().backends["echo"].clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.backend()
            .stats
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }
}

/// The test routes; `backend` is the body of `[backends.echo]` after `services`.
fn config(backend: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.echo]
services = ["testing.v1.Echo"]
timeout = "2s"
connect_timeout = "500ms"
{backend}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/sleep"
grpc = "testing.v1.Echo/Sleep"

[[routes]]
method = "GET"
path = "/v1/fail"
grpc = "testing.v1.Echo/Fail"

[[routes]]
method = "POST"
path = "/v1/fail"
grpc = "testing.v1.Echo/Fail"
body = "*"

[[routes]]
method = "POST"
path = "/v1/fail-retried"
grpc = "testing.v1.Echo/Fail"
body = "*"
retry_on = ["unavailable"]
"#,
        descriptors = toml_path(&testing_descriptors()),
    )
}

fn endpoints(instances: &[&TestInstance]) -> String {
    let list: Vec<String> = instances
        .iter()
        .map(|i| format!("\"{}\"", i.addr))
        .collect();
    format!("endpoints = [{}]", list.join(", "))
}

/// One client request of a load run.
struct Sample {
    at: Instant,
    result: Result<String, String>,
}

/// Steady load on GET /v1/echo from `workers` clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(gw: &TestGw, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let client = gw.client.clone();
                let url = format!("http://{}/v1/echo", gw.rest);
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let result = match client.get(&url).send().await {
                            Ok(resp) if resp.status() == 200 => {
                                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                                Ok(body["name"].as_str().unwrap_or("").to_owned())
                            }
                            Ok(resp) => Err(format!(
                                "{} {}",
                                resp.status(),
                                resp.text().await.unwrap_or_default()
                            )),
                            Err(e) => Err(e.to_string()),
                        };
                        out.push(Sample { at, result });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

fn failures(samples: &[Sample]) -> Vec<&str> {
    samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(String::as_str))
        .collect()
}

#[tokio::test]
async fn killed_instance_mid_load_causes_no_client_errors() {
    let a = TestInstance::start("a");
    let mut b = TestInstance::start("b");
    let c = TestInstance::start("c");
    let gw = TestGw::start(&config(&endpoints(&[&a, &b, &c]))).await;
    let load = Load::start(&gw, 6);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed = Instant::now();
    b.kill();
    let backend = gw.backend();
    eventually("b is ejected", Duration::from_secs(2), async || {
        backend
            .status()
            .endpoints
            .iter()
            .any(|e| e.state == "ejected")
    })
    .await;
    let ejected_after = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let samples = load.finish().await;
    let failed = failures(&samples);
    let after_kill = samples.iter().filter(|s| s.at >= killed).count();
    println!(
        "killed instance: ejected {ejected_after:?} after the kill; {} requests ({after_kill} after the kill), {} failed; retries {}, ejections {}",
        samples.len(),
        failed.len(),
        gw.counter("retries"),
        gw.counter("ejections")
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(gw.counter("retries") > 0);
    assert_eq!(gw.counter("ejections"), 1);
    let st = backend.status();
    let b_status = st.endpoints.iter().find(|e| e.address == b.addr).unwrap();
    assert_eq!(b_status.state, "ejected");
}

#[tokio::test]
async fn an_ejected_instance_returns_after_the_ejection_time() {
    let a = TestInstance::start("a");
    let mut b = TestInstance::start("b");
    let extra = "outlier_detection = { consecutive_failures = 2, base_ejection_time = \"300ms\" }";
    let gw = TestGw::start(&config(&format!("{}\n{extra}", endpoints(&[&a, &b])))).await;
    b.kill();
    for _ in 0..6 {
        let r = gw.get("/v1/echo").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(gw.counter("ejections"), 1);
    b.restart();
    let before = b.calls();
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..4 {
        assert_eq!(gw.get("/v1/echo").await.status, 200);
    }
    assert!(b.calls() > before, "b did not come back");
}

#[tokio::test]
async fn circuit_opens_fails_fast_and_recovers() {
    let a = TestInstance::start("a");
    let extra = "retry = { attempts = 1 }\ncircuit_breaker = { failures = 5, window = \"10s\", open_for = \"300ms\", half_open_probes = 2 }";
    let gw = TestGw::start(&config(&format!("{}\n{extra}", endpoints(&[&a])))).await;
    assert_eq!(gw.get("/v1/echo").await.status, 200);
    a.fail(true);
    for _ in 0..5 {
        let r = gw.get("/v1/echo").await;
        assert_eq!(r.status, 503);
        assert!(r.message().contains("down for the test"), "{}", r.body);
    }
    let calls = a.calls();
    let r = gw.get("/v1/echo").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], 14);
    assert!(
        r.message().starts_with(
            "backend \"echo\" is unavailable: circuit open after 5 errors in 10s; retrying in "
        ),
        "{}",
        r.message()
    );
    assert!(r.took < Duration::from_millis(100), "took {:?}", r.took);
    assert_eq!(
        a.calls(),
        calls,
        "an open circuit must not call the backend"
    );
    assert_eq!(gw.backend().status().breaker.state, "open");

    // The backend recovers; after open_for, probes close the circuit.
    a.fail(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        let r = gw.get("/v1/echo").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(gw.backend().status().breaker.state, "closed");
    assert_eq!(gw.counter("breaker_opened"), 1);
    assert_eq!(gw.counter("breaker_closed"), 1);
    assert!(gw.counter("rejected_open") >= 1);
}

#[tokio::test]
async fn deadline_gives_504_on_time() {
    let a = TestInstance::start("a");
    let gw = TestGw::start(&config(&endpoints(&[&a]))).await;
    // The route allows 2 s; the client's own deadline is shorter and wins.
    for (header, value, ms) in [
        ("x-request-timeout", "300ms", 300),
        ("grpc-timeout", "200m", 200),
        ("x-request-timeout", "0.25", 250),
    ] {
        let r = gw
            .send("GET", "/v1/sleep?millis=1500", &[(header, value)], None)
            .await;
        assert_eq!(r.status, 504, "{header}: {}", r.body);
        assert_eq!(r.body["code"], 4);
        let want = Duration::from_millis(ms);
        assert!(
            r.took >= want - Duration::from_millis(30),
            "{header}: answered after {:?}",
            r.took
        );
        assert!(
            r.took < want + Duration::from_millis(400),
            "{header}: answered after {:?}",
            r.took
        );
    }
    // The route's own timeout applies without the headers.
    let r = gw.get("/v1/sleep?millis=2500").await;
    assert_eq!(r.status, 504);
    assert!(
        r.took >= Duration::from_millis(1950) && r.took < Duration::from_millis(2500),
        "{:?}",
        r.took
    );
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    a.fail(true);
    b.fail(true);
    let extra = "retry = { attempts = 10, backoff = \"100ms\", max_backoff = \"1s\" }\noutlier_detection = { consecutive_failures = 0 }";
    let gw = TestGw::start(&config(&format!("{}\n{extra}", endpoints(&[&a, &b])))).await;
    let r = gw
        .send("GET", "/v1/echo", &[("x-request-timeout", "400ms")], None)
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.took < Duration::from_millis(600),
        "retries ran past the deadline: {:?}",
        r.took
    );
    let calls = a.calls() + b.calls();
    assert!((2..10).contains(&calls), "{calls} calls");
}

#[tokio::test]
async fn concurrency_limit_answers_503_beyond_max_requests() {
    let a = TestInstance::start("a");
    let extra = "circuit_breaker = { max_requests = 2 }";
    let gw = Arc::new(TestGw::start(&config(&format!("{}\n{extra}", endpoints(&[&a])))).await);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.get("/v1/sleep?millis=600").await })
        })
        .collect();
    let mut by_status = BTreeMap::new();
    for c in calls {
        let r = c.await.unwrap();
        if r.status == 503 {
            assert!(
                r.message().contains("at its limit of 2 calls in flight"),
                "{}",
                r.body
            );
            assert!(
                r.took < Duration::from_millis(300),
                "a refusal must not queue: {:?}",
                r.took
            );
        }
        *by_status.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(200, 2), (503, 3)]));
    assert_eq!(gw.counter("rejected_overload"), 3);
}

#[tokio::test]
async fn only_routes_safe_to_retry_repeat_a_failed_call() {
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let extra = "outlier_detection = { consecutive_failures = 0 }";
    let gw = TestGw::start(&config(&format!("{}\n{extra}", endpoints(&[&a, &b])))).await;
    let calls = || a.calls() + b.calls();

    let before = calls();
    let r = gw
        .send("POST", "/v1/fail", &[], Some(r#"{"code": 14}"#))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(calls() - before, 1, "POST is not retried by default");

    let before = calls();
    let r = gw.get("/v1/fail?code=14").await;
    assert_eq!(r.status, 503);
    assert_eq!(calls() - before, 3, "GET is retried, up to 3 attempts");

    let before = calls();
    gw.send("POST", "/v1/fail-retried", &[], Some(r#"{"code": 14}"#))
        .await;
    assert_eq!(calls() - before, 3, "retry_on marks the route safe");

    // An answer that is not UNAVAILABLE is the backend's final word.
    let before = calls();
    assert_eq!(gw.get("/v1/fail?code=5").await.status, 404);
    assert_eq!(calls() - before, 1);
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_on_another_even_for_post() {
    let a = TestInstance::start("a");
    let dead = gateway_tests::dead_addr().await;
    let gw = TestGw::start(&config(&format!(
        "endpoints = [\"{dead}\", \"{}\"]",
        a.addr
    )))
    .await;
    for _ in 0..4 {
        // A connect failure never reached the backend: safe on any route.
        let r = gw
            .send("POST", "/v1/fail", &[], Some(r#"{"code": 5}"#))
            .await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
}

/// The issue's "done when": steady load while instances fail and return,
/// scripted. Reports the share of failed requests and the time it took to
/// take a failed instance out of rotation.
#[tokio::test]
async fn load_while_instances_fail_and_return_has_no_failed_requests() {
    let consul = ConsulTestServer::start().await;
    let mut a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let mut c = TestInstance::start("c");
    for i in [&a, &b, &c] {
        consul.register("echo", i.instance());
    }
    let backend_cfg = format!(
        "consul = {{ service = \"echo\", address = \"{}\" }}",
        consul.address()
    );
    let gw = TestGw::start(&config(&backend_cfg)).await;
    eventually("three endpoints", Duration::from_secs(2), async || {
        gw.backend().endpoints.current().len() == 3
    })
    .await;
    let backend = gw.backend();
    let load = Load::start(&gw, 6);
    let step = || tokio::time::sleep(Duration::from_millis(500));
    step().await;

    // 1. A crashes; Consul has not noticed yet: retries and ejection cover it.
    let killed = Instant::now();
    a.kill();
    eventually("a is ejected", Duration::from_secs(2), async || {
        backend
            .status()
            .endpoints
            .iter()
            .any(|e| e.address == a.addr && e.state == "ejected")
    })
    .await;
    let eject_time = killed.elapsed();
    step().await;
    // 2. Consul's check catches up: a turns critical and leaves the set.
    consul.set_status("echo", "a", CheckStatus::Critical);
    step().await;
    // 3. B's check fails while it still runs (draining): removed via Consul.
    let marked = Instant::now();
    consul.set_status("echo", "b", CheckStatus::Critical);
    step().await;
    step().await;
    let b_removed = b.last_call().unwrap().saturating_duration_since(marked);
    // 4. A comes back and passes again; B too.
    a.restart();
    let a_before_return = a.calls();
    consul.set_status("echo", "a", CheckStatus::Passing);
    step().await;
    consul.set_status("echo", "b", CheckStatus::Passing);
    step().await;
    // 5. C crashes and is deregistered at the same moment.
    c.kill();
    consul.deregister("echo", "c");
    step().await;
    step().await;
    let samples = load.finish().await;

    let failed = failures(&samples);
    let share = failed.len() as f64 / samples.len() as f64;
    let mut by_instance: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        if let Ok(n) = &s.result {
            *by_instance.entry(n.clone()).or_default() += 1;
        }
    }
    println!(
        "load while failing: {} requests, {} failed (share {share:.4}); crashed instance ejected after {eject_time:?}; \
         instance marked critical in Consul last served {b_removed:?} after; served by {by_instance:?}; retries {}, ejections {}",
        samples.len(),
        failed.len(),
        gw.counter("retries"),
        gw.counter("ejections"),
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        b_removed < Duration::from_secs(1),
        "b served {b_removed:?} after turning critical"
    );
    assert!(
        eject_time < Duration::from_secs(1),
        "ejection took {eject_time:?}"
    );
    assert!(
        by_instance.get("a").copied().unwrap_or(0) > 0
            && by_instance.get("b").copied().unwrap_or(0) > 0
    );
    // A came back: it served again after its restart.
    assert!(
        a.calls() > a_before_return,
        "a got no traffic after returning"
    );
}
