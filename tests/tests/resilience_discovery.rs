//! Resilience where discovery and balancing meet, each scenario under steady
//! load: a backend edited during a Consul outage, the last instance left
//! while ejected, every instance failing its health checks (panic mode),
//! round robin around an ejected instance, Consul restarting empty with a
//! lower index, Consul's failing state after it heals, and starting while
//! Consul is down.
//!
//! The gateway runs as `gateway serve` runs it (the shared load path, the
//! admin listener, `server::run`); Consul is [`ConsulTestServer`]; each
//! instance is a real tonic server in its own runtime. Every test asserts
//! zero failed requests while at least one healthy instance exists, and
//! prints its request and failure counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::consul::ConsulTestServer;
use gateway_tests::fleet::{descriptors_with_health, eventually, TestInstance};
use gateway_tests::running::RunningGateway;
use gateway_tests::{http_client, testing_descriptors, toml_path, write_config};

/// `[server]`, the `echo` backend (`backend` is the rest of its table) and
/// the route GET /v1/echo to it; `more` is appended.
fn config(backend: &str, more: &str) -> String {
    config_in(&testing_descriptors(), backend, more)
}

fn config_in(descriptors: &std::path::Path, backend: &str, more: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
watch = false

[backends.echo]
services = ["testing.v1.Echo"]
timeout = "2s"
connect_timeout = "500ms"
{backend}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
backend = "echo"
{more}"#,
        descriptors = toml_path(descriptors),
    )
}

fn consul_line(consul: &ConsulTestServer, extra: &str) -> String {
    format!(
        "consul = {{ service = \"echo\", address = \"{}\"{extra} }}",
        consul.address()
    )
}

/// The running gateway, and a client for it.
struct Gw {
    run: RunningGateway,
    client: reqwest::Client,
}

impl Gw {
    async fn start(config: &str) -> Gw {
        let path = write_config(config);
        Gw {
            run: RunningGateway::start(&path).await,
            client: http_client(),
        }
    }

    async fn admin(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(self.run.admin_url(path))
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or_default(),
        )
    }

    /// The backend's entry in /admin/backends.
    async fn backend(&self, name: &str) -> serde_json::Value {
        let (_, all) = self.admin("/admin/backends").await;
        all["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no backend {name} in {all}"))
    }

    async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.run.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    /// Writes `config` over the file and reloads through the admin listener.
    async fn reload(&self, config: &str) {
        std::fs::write(self.run.gw.snapshot().config_path.clone(), config).unwrap();
        let resp = self
            .client
            .post(self.run.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 200, "{}", resp.text().await.unwrap());
    }
}

/// The instance's entry among a backend's endpoints in /admin/backends.
fn endpoint<'a>(backend: &'a serde_json::Value, who: &TestInstance) -> &'a serde_json::Value {
    backend["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == who.addr.as_str())
        .unwrap_or_else(|| panic!("{} not in {backend}", who.name))
}

/// One request of a load run: when it started, and the instance that
/// answered or the error.
struct Sample {
    at: Instant,
    result: Result<String, String>,
}

/// Steady load on one path from `workers` concurrent clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(gw: &Gw, path: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, client, url) = (stop.clone(), gw.client.clone(), gw.run.url(path));
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
                                resp.status().as_u16(),
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

    async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|s| s.at);
        Samples(all)
    }
}

struct Samples(Vec<Sample>);

impl Samples {
    fn failed(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| s.result.as_ref().err().map(String::as_str))
            .collect()
    }

    /// Answers per instance among requests started at or after `from`.
    fn by_instance(&self, from: Instant) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.at >= from) {
            if let Ok(name) = &s.result {
                *out.entry(name.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Prints the counts and asserts that none failed.
    fn assert_none_failed(&self, scenario: &str) {
        let failed = self.failed();
        println!(
            "{scenario}: {} requests, {} failed",
            self.0.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{scenario}: {} of {} failed: {:?}",
            failed.len(),
            self.0.len(),
            &failed[..failed.len().min(5)]
        );
    }
}

fn pause(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_consul_backend_during_a_consul_outage_keeps_its_endpoints() {
    let consul = ConsulTestServer::start().await;
    let (a, b, c) = (
        TestInstance::start("a"),
        TestInstance::start("b"),
        TestInstance::start("c"),
    );
    for i in [&a, &b, &c] {
        consul.register("echo", i.instance());
    }
    let outlier = "outlier_detection = { consecutive_failures = 2, base_ejection_time = \"30s\" }";
    let before = config(&format!("{}\n{outlier}", consul_line(&consul, "")), "");
    let gw = Gw::start(&before).await;
    eventually("three endpoints", Duration::from_secs(3), async || {
        gw.backend("echo").await["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
    let load = Load::start(&gw, "/v1/echo", 3);
    pause(300).await;
    // C fails and is ejected (GETs are retried on the others).
    c.fail(true);
    eventually("c is ejected", Duration::from_secs(2), async || {
        endpoint(&gw.backend("echo").await, &c)["health"] == "ejected"
    })
    .await;
    consul.fail_with(500, "No cluster leader");
    eventually("the outage is seen", Duration::from_secs(2), async || {
        gw.backend("echo").await["discovery"]["state"] == "failing (serving last known endpoints)"
    })
    .await;

    // Only the backend's timeout changes: a rebuilt backend, the same source.
    let old = gw.run.gw.snapshot().backends["echo"].clone();
    gw.reload(&before.replace("timeout = \"2s\"", "timeout = \"3s\""))
        .await;
    let reloaded = Instant::now();
    assert!(!Arc::ptr_eq(&old, &gw.run.gw.snapshot().backends["echo"]));
    drop(old);
    pause(800).await;
    let echo = gw.backend("echo").await;
    assert_eq!(echo["timeout_ms"], 3000);
    assert_eq!(
        echo["discovery"]["state"], "failing (serving last known endpoints)",
        "{echo}"
    );
    assert!(
        echo["discovery"]["error"]
            .as_str()
            .unwrap()
            .contains("500: No cluster leader"),
        "{echo}"
    );
    assert_eq!(echo["endpoints"].as_array().unwrap().len(), 3, "{echo}");
    // C's ejection came along with its endpoint.
    assert_eq!(endpoint(&echo, &c)["health"], "ejected", "{echo}");
    assert_eq!(endpoint(&echo, &c)["ejections"], 1, "{echo}");

    // Consul heals; a new instance registered meanwhile is picked up.
    let d = TestInstance::start("d");
    consul.register("echo", d.instance());
    consul.heal();
    eventually("d gets traffic", Duration::from_secs(3), async || {
        d.calls() > 0
    })
    .await;
    pause(200).await;
    let samples = load.finish().await;
    let served = samples.by_instance(reloaded);
    println!("edited during an outage: served after the reload {served:?}");
    samples.assert_none_failed("backend edited during a Consul outage");
    assert!(
        served.contains_key("a") && served.contains_key("b"),
        "{served:?}"
    );
    assert_eq!(gw.backend("echo").await["discovery"]["state"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_instance_left_serves_though_it_was_ejected() {
    let consul = ConsulTestServer::start().await;
    let (a, b, c) = (
        TestInstance::start("a"),
        TestInstance::start("b"),
        TestInstance::start("c"),
    );
    for i in [&a, &b, &c] {
        consul.register("echo", i.instance());
    }
    let outlier = "outlier_detection = { consecutive_failures = 2, base_ejection_time = \"30s\" }";
    let gw = Gw::start(&config(
        &format!("{}\n{outlier}", consul_line(&consul, "")),
        "",
    ))
    .await;
    eventually("three endpoints", Duration::from_secs(3), async || {
        gw.backend("echo").await["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
    let load = Load::start(&gw, "/v1/echo", 3);
    pause(300).await;
    c.fail(true);
    eventually("c is ejected", Duration::from_secs(2), async || {
        endpoint(&gw.backend("echo").await, &c)["health"] == "ejected"
    })
    .await;
    // C recovers, still ejected for 30 s; then the others leave Consul.
    c.fail(false);
    let before = c.calls();
    consul.deregister("echo", "a");
    consul.deregister("echo", "b");
    let removed = Instant::now();
    eventually("one endpoint left", Duration::from_secs(2), async || {
        gw.backend("echo").await["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    pause(800).await;
    let samples = load.finish().await;
    samples.assert_none_failed("last instance left while ejected");
    let after = samples.by_instance(removed + Duration::from_millis(300));
    assert!(after.keys().all(|n| n == "c"), "{after:?}");
    assert!(
        c.calls() > before + 20,
        "c got {} calls",
        c.calls() - before
    );
    // Admin says why: ejected, but in rotation by the cap; not panic.
    let echo = gw.backend("echo").await;
    let ep = endpoint(&echo, &c);
    assert_eq!(ep["health"], "ejected", "{echo}");
    assert_eq!(ep["in_rotation"], true, "{echo}");
    assert_eq!(
        ep["ejection_lifted_by_max_ejection_percent"], true,
        "{echo}"
    );
    assert_eq!(echo["panic"], false, "{echo}");
    assert!(a.last_call().unwrap() < removed + Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_all_failing_health_checks_still_serve_in_panic_mode() {
    let (a, b) = (TestInstance::start("a"), TestInstance::start("b"));
    let backend = format!(
        "endpoints = [\"{}\", \"{}\"]\n\n[backends.echo.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
        a.addr, b.addr
    );
    let gw = Gw::start(&config(&backend, "")).await;
    let load = Load::start(&gw, "/v1/echo", 3);
    pause(300).await;
    // Both say NOT_SERVING (a wrong health service name does this) but serve.
    a.serve_health(false);
    b.serve_health(false);
    eventually(
        "both fail their checks",
        Duration::from_secs(2),
        async || {
            let echo = gw.backend("echo").await;
            echo["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["health"] == "failing_health_checks")
        },
    )
    .await;
    let panicked = Instant::now();
    let echo = gw.backend("echo").await;
    assert_eq!(echo["panic"], true, "{echo}");
    pause(600).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_backend_panic{backend=\"echo\"} 1"),
        "{metrics}"
    );
    let routed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_backend_panic_routed_total{backend=\"echo\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no panic_routed counter in {metrics}"));
    assert!(routed > 10.0, "{routed}");

    // A passes again: out of panic mode, and only A is used.
    a.serve_health(true);
    eventually("panic mode ends", Duration::from_secs(2), async || {
        gw.backend("echo").await["panic"] == false
    })
    .await;
    let recovered = Instant::now();
    pause(400).await;
    let samples = load.finish().await;
    samples.assert_none_failed("every instance failing health checks");
    let during = samples.by_instance(panicked);
    assert!(
        during.contains_key("a") && during.contains_key("b"),
        "{during:?}"
    );
    let after = samples.by_instance(recovered + Duration::from_millis(100));
    assert!(after.keys().all(|n| n == "a"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_an_ejected_instances_share_evenly() {
    let inst: Vec<TestInstance> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| TestInstance::start(n))
        .collect();
    let list: Vec<String> = inst.iter().map(|i| format!("\"{}\"", i.addr)).collect();
    let backend = format!(
        "endpoints = [{}]\noutlier_detection = {{ consecutive_failures = 1, base_ejection_time = \"30s\" }}",
        list.join(", ")
    );
    let gw = Gw::start(&config(&backend, "")).await;
    let load = Load::start(&gw, "/v1/echo", 3);
    pause(200).await;
    inst[1].fail(true);
    eventually("b is ejected", Duration::from_secs(2), async || {
        endpoint(&gw.backend("echo").await, &inst[1])["health"] == "ejected"
    })
    .await;
    let ejected = Instant::now();
    pause(1500).await;
    let samples = load.finish().await;
    samples.assert_none_failed("round robin around an ejected instance");
    let after = samples.by_instance(ejected);
    let total: usize = after.values().sum();
    println!("round robin with b ejected: {after:?}");
    assert!(!after.contains_key("b"), "{after:?}");
    for name in ["a", "c", "d"] {
        let share = after.get(name).copied().unwrap_or(0) as f64 / total as f64;
        // Even is a third each; the bug gave c a half, a and d a quarter.
        assert!(
            (0.29..0.38).contains(&share),
            "{name}: {share:.3} of {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_restarting_empty_with_a_lower_index_is_followed_at_once() {
    let mut consul = ConsulTestServer::start().await;
    let (a, b, c) = (
        TestInstance::start("a"),
        TestInstance::start("b"),
        TestInstance::start("c"),
    );
    consul.register("echo", a.instance());
    consul.register("echo", b.instance());
    // Consul's default wait (5 minutes): a blocking query on the old index
    // would hold everything for that long.
    let gw = Gw::start(&config(&consul_line(&consul, ""), "")).await;
    let load = Load::start(&gw, "/v1/echo", 3);
    eventually("a and b serve", Duration::from_secs(3), async || {
        a.calls() > 0 && b.calls() > 0
    })
    .await;
    let old_index = consul.index();
    // The agent restarts empty; while it is down, A and the new C register
    // again (B, being retired, does not). Its index starts lower.
    consul.stop();
    eventually("the outage is seen", Duration::from_secs(3), async || {
        gw.backend("echo").await["discovery"]["error"].is_string()
    })
    .await;
    consul.forget_all(3);
    consul.register("echo", a.instance());
    consul.register("echo", c.instance());
    assert!(consul.index() < old_index);
    consul.restart().await;
    let back = Instant::now();
    eventually("c gets traffic", Duration::from_secs(3), async || {
        c.calls() > 0
    })
    .await;
    let c_after = back.elapsed();
    pause(500).await;
    let b_last = b.last_call().unwrap().saturating_duration_since(back);
    let samples = load.finish().await;
    println!(
        "Consul restarted empty (index {old_index} -> {}): c served {c_after:?} after, b last served {b_last:?} after",
        consul.index()
    );
    samples.assert_none_failed("Consul restarted empty with a lower index");
    assert!(c_after < Duration::from_secs(2), "{c_after:?}");
    assert!(b_last < Duration::from_secs(2), "{b_last:?}");
    let echo = gw.backend("echo").await;
    assert_eq!(echo["discovery"]["index"], consul.index(), "{echo}");
    assert_eq!(echo["discovery"]["state"], "ok", "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_failing_state_clears_on_its_first_good_answer() {
    let consul = ConsulTestServer::start().await;
    let (a, b) = (TestInstance::start("a"), TestInstance::start("b"));
    consul.register("echo", a.instance());
    consul.register("echo", b.instance());
    let gw = Gw::start(&config(&consul_line(&consul, ", wait = \"60s\""), "")).await;
    let load = Load::start(&gw, "/v1/echo", 3);
    eventually("a and b serve", Duration::from_secs(3), async || {
        a.calls() > 0 && b.calls() > 0
    })
    .await;
    consul.fail_with(500, "No cluster leader");
    eventually("the failure is shown", Duration::from_secs(2), async || {
        gw.backend("echo").await["discovery"]["state"] == "failing (serving last known endpoints)"
    })
    .await;
    pause(800).await;
    consul.heal();
    let healed = Instant::now();
    eventually(
        "the failing state clears",
        Duration::from_secs(3),
        async || {
            let d = &gw.backend("echo").await["discovery"];
            d["state"] == "ok" && d["error"].is_null() && d["failing_for_ms"].is_null()
        },
    )
    .await;
    let cleared = healed.elapsed();
    let (_, ready) = gw.admin("/readyz").await;
    pause(200).await;
    let samples = load.finish().await;
    println!("Consul healed: failing state cleared {cleared:?} later");
    samples.assert_none_failed("Consul answering 500, then healing");
    // Within the backoff after about a second of failures (at most 2 s),
    // not a blocking query's 60 s wait.
    assert!(cleared < Duration::from_millis(2500), "{cleared:?}");
    assert_eq!(ready["discovery_failing"], serde_json::json!([]), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_consul_down_serves_static_backends_and_finds_instances_later() {
    let mut consul = ConsulTestServer::start().await;
    consul.stop();
    let (a, s) = (TestInstance::start("a"), TestInstance::start("s"));
    consul.register("echo", a.instance());
    let more = format!(
        r#"
[backends.fixed]
endpoints = ["{}"]
services = ["grpc.health.v1.Health"]

[[routes]]
method = "GET"
path = "/v2/check"
grpc = "grpc.health.v1.Health/Check"
backend = "fixed"
"#,
        s.addr
    );
    let gw = Gw::start(&config_in(
        &descriptors_with_health(),
        &consul_line(&consul, ""),
        &more,
    ))
    .await;
    let started = Instant::now();
    // Ready: discovery failed (rather than waiting), and the static backend serves.
    eventually("ready", Duration::from_secs(3), async || {
        gw.admin("/readyz").await.0 == 200
    })
    .await;
    let ready_after = started.elapsed();
    let (_, ready) = gw.admin("/readyz").await;
    assert_eq!(ready["discovery_failing"][0]["backend"], "echo", "{ready}");
    let echo = gw.backend("echo").await;
    assert_eq!(
        echo["discovery"]["state"], "failing (no endpoints yet)",
        "{echo}"
    );
    assert!(
        echo["discovery"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Consul"),
        "{echo}"
    );
    let fixed = Load::start(&gw, "/v2/check", 2);
    let discovered = Load::start(&gw, "/v1/echo", 2);
    pause(700).await;
    consul.restart().await;
    let back = Instant::now();
    // Within the watch's backoff, which has grown over the outage.
    eventually("a gets traffic", Duration::from_secs(6), async || {
        a.calls() > 0
    })
    .await;
    let found_after = back.elapsed();
    pause(500).await;
    let fixed = fixed.finish().await;
    let discovered = discovered.finish().await;
    println!(
        "started with Consul down: ready {ready_after:?} after start; instances found {found_after:?} after Consul returned"
    );
    fixed.assert_none_failed("static backend while Consul is down at start");
    // The Consul-backed route fails fast, with the documented answer, until
    // Consul answers; then never again.
    let failed = discovered.failed();
    println!(
        "Consul-backed route while Consul is down at start: {} requests, {} failed as documented",
        discovered.0.len(),
        failed.len()
    );
    for f in &failed {
        let body: serde_json::Value = f
            .strip_prefix("503 ")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_else(|| panic!("not a 503 with a JSON body: {f}"));
        assert_eq!(body["code"], 14, "{f}");
        assert_eq!(body["details"], serde_json::json!([]), "{f}");
        let want = format!(
            "backend \"echo\" has no endpoints yet: cannot reach Consul at {}",
            consul.address()
        );
        assert!(body["message"].as_str().unwrap().starts_with(&want), "{f}");
    }
    let first_ok = discovered.0.iter().position(|s| s.result.is_ok()).unwrap();
    assert!(
        discovered.0[first_ok..].iter().all(|s| s.result.is_ok()),
        "a request failed after the instances were found"
    );
    assert_eq!(gw.backend("echo").await["discovery"]["state"], "ok");
}
