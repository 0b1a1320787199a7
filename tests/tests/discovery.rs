//! Backends from Consul: instances follow Consul's health view, the gateway
//! keeps serving through Consul outages, and active health checks combine
//! with Consul's view. Consul is [`ConsulTestServer`]; backends are real
//! tonic servers on loopback, each in its own runtime so a test can kill one
//! outright.

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

/// A gateway (REST and admin listeners) for `config`.
struct TestGw {
    rest: SocketAddr,
    admin: SocketAddr,
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

impl TestGw {
    async fn start(config: &str) -> TestGw {
        let path = write_config(config);
        let snapshot = Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("config does not load:\n{e}\n---\n{config}"));
        let gw = Gateway::new(snapshot);
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (rest_addr, admin_addr) = (rest.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway::server::run(
            rest,
            Some(admin),
            gw.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        TestGw {
            rest: rest_addr,
            admin: admin_addr,
            gw,
            client: http_client(),
            stop: Some(tx),
        }
    }

    /// GET on the REST listener: (status, JSON body).
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(format!("http://{}{path}", self.rest))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Which instance served GET /v1/echo, or the error.
    async fn echo(&self) -> Result<String, (u16, serde_json::Value)> {
        match self.get("/v1/echo").await {
            (200, body) => Ok(body["name"].as_str().unwrap_or("").to_owned()),
            other => Err(other),
        }
    }

    async fn admin_backends(&self) -> serde_json::Value {
        self.client
            .get(format!("http://{}/admin/backends", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn backend(&self) -> Arc<gateway::upstream::Backend> {
        self.gw.snapshot().backends["echo"].clone()
    }
}

/// The Echo routes with a Consul backend; `extra` goes into `[backends.echo]`.
fn consul_config(consul: &ConsulTestServer, consul_extra: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.echo]
consul = {{ service = "echo", address = "{address}"{consul_extra} }}
services = ["testing.v1.Echo"]
timeout = "2s"
connect_timeout = "500ms"
{extra}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/sleep"
grpc = "testing.v1.Echo/Sleep"
"#,
        descriptors = toml_path(&testing_descriptors()),
        address = consul.address(),
    )
}

/// Steady load on GET /v1/echo from `workers` clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Result<String, String>>>>,
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
                        let r = match client.get(&url).send().await {
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
                        out.push(r);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>, BTreeMap<String, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut errors = Vec::new();
        let mut by_instance = BTreeMap::new();
        for t in self.tasks {
            for r in t.await.unwrap() {
                total += 1;
                match r {
                    Ok(name) => *by_instance.entry(name).or_insert(0) += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        (total, errors, by_instance)
    }
}

#[tokio::test]
async fn consul_instances_share_the_traffic() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    consul.register("echo", a.instance());
    // An empty Service.Address means the node's address.
    consul.register("echo", b.instance().node_address_only());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(gw.echo().await.expect("call")).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");

    let admin = gw.admin_backends().await;
    let echo = &admin["backends"][0];
    assert_eq!(echo["source"], "consul");
    assert_eq!(echo["discovery"]["state"], "ok");
    assert_eq!(echo["discovery"]["index"], consul.index());
    assert!(
        echo["discovery"]["endpoints_age_ms"].as_u64().unwrap() < 5_000,
        "{echo}"
    );
    assert_eq!(echo["endpoints"].as_array().unwrap().len(), 2, "{echo}");
    assert_eq!(echo["endpoints"][0]["health"], "healthy");
    assert_eq!(echo["circuit_breaker"]["state"], "closed");
}

#[tokio::test]
async fn critical_instance_leaves_rotation_within_a_second_without_client_errors() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    consul.register("echo", a.instance());
    consul.register("echo", b.instance());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    eventually("both instances serve", Duration::from_secs(3), async || {
        gw.echo().await.is_ok() && a.calls() > 0 && b.calls() > 0
    })
    .await;

    let load = Load::start(&gw, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let marked = Instant::now();
    consul.set_status("echo", "b", CheckStatus::Critical);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let served_after = b.calls();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (total, errors, _) = load.finish().await;

    let removed_after = b.last_call().unwrap().saturating_duration_since(marked);
    println!("critical instance: last request {removed_after:?} after Consul marked it; {total} requests, {} failed", errors.len());
    assert!(
        errors.is_empty(),
        "{} of {total} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(
        removed_after < Duration::from_secs(1),
        "still served {removed_after:?} later"
    );
    assert_eq!(b.calls(), served_after, "b still gets traffic");
}

#[tokio::test]
async fn a_new_instance_joins_and_gets_traffic() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    let b = TestInstance::start("b");
    consul.register("echo", b.instance());
    eventually("b gets traffic", Duration::from_secs(2), async || {
        gw.echo().await.ok().as_deref() == Some("b")
    })
    .await;
}

#[tokio::test]
async fn consul_outage_keeps_the_last_endpoints_then_consul_returns() {
    let mut consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    consul.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(3),
        async || gw.backend().endpoints.status().error.is_some(),
    )
    .await;
    // Traffic goes on with the last known endpoints.
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
    let admin = gw.admin_backends().await;
    let d = &admin["backends"][0]["discovery"];
    assert_eq!(d["state"], "failing (serving last known endpoints)", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("cannot reach Consul"),
        "{d}"
    );
    assert_eq!(
        admin["backends"][0]["endpoints"].as_array().unwrap().len(),
        1
    );
    // The failed queries are counted for Prometheus (one registry per process).
    let exposition = gateway::telemetry::metrics::handle().render();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("gateway_discovery_errors_total{")
                && l.contains("source=\"consul\"")),
        "no discovery error counter in:\n{exposition}"
    );

    // Consul comes back, and changes flow again.
    let b = TestInstance::start("b");
    consul.register("echo", b.instance());
    consul.restart().await;
    eventually(
        "b joins after Consul returns",
        Duration::from_secs(6),
        async || gw.echo().await.ok().as_deref() == Some("b"),
    )
    .await;
    assert!(gw.backend().endpoints.status().error.is_none());
}

#[tokio::test]
async fn all_instances_gone_gives_fast_503s() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    consul.deregister("echo", "a");
    eventually("the pool empties", Duration::from_secs(2), async || {
        gw.backend().endpoints.current().is_empty()
    })
    .await;
    let started = Instant::now();
    let (status, body) = gw.get("/v1/echo").await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 14);
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("backend \"echo\" has no endpoints") && msg.contains("no passing instances"),
        "{msg}"
    );
}

#[tokio::test]
async fn without_an_address_the_agent_of_consul_http_addr_is_asked() {
    // What the Kubernetes manifests rely on: the node's agent, from the
    // downward API, in Consul's own variable, as `host:port` (no scheme).
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let config = write_config(&gateway_tests::binary::without_admin(
        &consul_config(&consul, "", "")
            .replace(&format!(", address = \"{}\"", consul.address()), ""),
    ));
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains("address"));
    let agent = consul.address().trim_start_matches("http://").to_owned();
    let (_child, rest) = gateway_tests::binary::spawn_listening_with_env(
        &["serve", "--config", config.to_str().unwrap()],
        &[("CONSUL_HTTP_ADDR", &agent)],
    )
    .await;
    let client = http_client();
    eventually(
        "a call through the instance Consul lists",
        Duration::from_secs(10),
        async || {
            client
                .get(format!("http://{rest}/v1/echo"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    assert!(
        consul.queries() > 0,
        "the agent of CONSUL_HTTP_ADDR was never asked"
    );
}

#[tokio::test]
async fn consul_down_at_start_fails_fast_naming_the_error() {
    let mut consul = ConsulTestServer::start().await;
    consul.stop();
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    let started = Instant::now();
    let (status, body) = gw.get("/v1/echo").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("no endpoints yet") && msg.contains("cannot reach Consul"),
        "{msg}"
    );
}

#[tokio::test]
async fn acl_token_from_a_file_is_sent_and_a_wrong_one_is_refused() {
    let consul = ConsulTestServer::start_with_token("s3cret").await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());

    let dir = gateway_tests::temp_dir("token");
    std::fs::write(dir.join("good"), "s3cret\n").unwrap();
    std::fs::write(dir.join("bad"), "nope").unwrap();
    let with = |file: &str| format!(", token_file = \"{}\"", toml_path(&dir.join(file)));

    let good = TestGw::start(&consul_config(&consul, &with("good"), "")).await;
    assert_eq!(good.echo().await.unwrap(), "a");

    let bad = TestGw::start(&consul_config(&consul, &with("bad"), "")).await;
    let (status, body) = bad.get("/v1/echo").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("403 ACL not found"),
        "{body}"
    );

    // No token: Consul's anonymous token sees nothing, which is not "no instances".
    let none = TestGw::start(&consul_config(
        &consul,
        ", token_env = \"GATEWAY_TEST_NO_SUCH_TOKEN\"",
        "",
    ))
    .await;
    let (status, body) = none.get("/v1/echo").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("filtered every instance out by ACL"),
        "{body}"
    );
}

#[tokio::test]
async fn tags_and_datacenter_select_instances() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let c = TestInstance::start("c");
    consul.register("echo", a.instance().tags(&["grpc", "v2"]));
    consul.register("echo", b.instance().tags(&["grpc"]));
    consul.register("echo", c.instance().tags(&["grpc", "v2"]).datacenter("dc2"));

    let v2 = TestGw::start(&consul_config(&consul, ", tags = [\"grpc\", \"v2\"]", "")).await;
    for _ in 0..4 {
        assert_eq!(v2.echo().await.unwrap(), "a");
    }
    let dc2 = TestGw::start(&consul_config(&consul, ", datacenter = \"dc2\"", "")).await;
    assert_eq!(dc2.echo().await.unwrap(), "c");
    let nowhere = TestGw::start(&consul_config(&consul, ", datacenter = \"dc9\"", "")).await;
    let (status, body) = nowhere.get("/v1/echo").await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("No path to datacenter"),
        "{body}"
    );
}

#[tokio::test]
async fn weighted_balancing_follows_consul_weights() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    consul.register("echo", a.instance().weight(1));
    consul.register("echo", b.instance().weight(3));
    let gw = TestGw::start(&consul_config(&consul, "", "load_balancer = \"weighted\"")).await;
    let mut seen = BTreeMap::new();
    for _ in 0..80 {
        *seen.entry(gw.echo().await.unwrap()).or_insert(0) += 1;
    }
    let b_share = seen["b"] as f64 / 80.0;
    assert!((0.65..0.85).contains(&b_share), "{seen:?}");
}

#[tokio::test]
async fn index_going_backwards_starts_the_watch_over() {
    let consul = ConsulTestServer::start().await;
    consul.set_max_wait(Duration::from_millis(300));
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let gw = TestGw::start(&consul_config(&consul, "", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    let before = gw.backend().endpoints.status().version.unwrap();
    // As after a snapshot restore: the index drops below what the gateway holds.
    consul.reset_index(3);
    eventually(
        "the lower index is accepted",
        Duration::from_secs(2),
        async || gw.backend().endpoints.status().version == Some(3),
    )
    .await;
    assert!(before > 3);
    let b = TestInstance::start("b");
    consul.register("echo", b.instance());
    eventually(
        "changes after the reset arrive",
        Duration::from_secs(2),
        async || gw.echo().await.ok().as_deref() == Some("b"),
    )
    .await;
}

#[tokio::test]
async fn active_health_checks_take_a_not_serving_instance_out_and_back() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    consul.register("echo", a.instance());
    consul.register("echo", b.instance());
    let extra = "[backends.echo.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let gw = TestGw::start(&consul_config(&consul, "", extra)).await;
    eventually("both serve", Duration::from_secs(2), async || {
        gw.echo().await.is_ok() && a.calls() > 0 && b.calls() > 0
    })
    .await;
    // Consul says passing; the instance itself says NOT_SERVING: it must pass both.
    b.serve_health(false);
    eventually("b fails its checks", Duration::from_secs(2), async || {
        gw.backend()
            .status()
            .endpoints
            .iter()
            .any(|e| e.health_check == "not_serving")
    })
    .await;
    let before = b.calls();
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
    assert_eq!(b.calls(), before);
    let admin = gw.admin_backends().await;
    let eps = admin["backends"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        eps.iter().any(|e| e["health"] == "failing_health_checks"),
        "{eps:?}"
    );

    b.serve_health(true);
    eventually("b is back", Duration::from_secs(2), async || {
        gw.echo().await.ok().as_deref() == Some("b")
    })
    .await;
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_instance() {
    let consul = ConsulTestServer::start().await;
    let instances: Vec<TestInstance> = ["a", "b", "c"]
        .iter()
        .map(|n| TestInstance::start(n))
        .collect();
    for i in &instances {
        consul.register("echo", i.instance());
    }
    let gw = TestGw::start(&consul_config(
        &consul,
        "",
        "load_balancer = \"consistent_hash\"\nhash_key = { header = \"x-user\" }",
    ))
    .await;
    eventually("three endpoints", Duration::from_secs(2), async || {
        gw.backend().endpoints.current().len() == 3
    })
    .await;
    let mut owner = BTreeMap::new();
    for user in 0..30 {
        let mut names = Vec::new();
        for _ in 0..3 {
            let resp = gw
                .client
                .get(format!("http://{}/v1/echo", gw.rest))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = resp.json().await.unwrap();
            names.push(body["name"].as_str().unwrap().to_owned());
        }
        assert!(
            names.iter().all(|n| *n == names[0]),
            "user-{user}: {names:?}"
        );
        owner.insert(user, names[0].clone());
    }
    let used: std::collections::BTreeSet<_> = owner.values().collect();
    assert!(used.len() >= 2, "30 keys all on one instance: {owner:?}");
}

#[tokio::test]
async fn reload_keeps_an_unchanged_consul_backend_and_its_watch() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let config = consul_config(&consul, "", "");
    let gw = TestGw::start(&config).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    let before = gw.backend();
    // Touch the file with a route added: the backend is the same.
    let path = gw.gw.snapshot().config_path.clone();
    std::fs::write(&path, format!("{config}\n[[routes]]\nmethod = \"GET\"\npath = \"/v2/echo\"\ngrpc = \"testing.v1.Echo/Echo\"\n")).unwrap();
    gateway::reload::reload(&gw.gw, "test")
        .await
        .expect("reload");
    assert!(
        Arc::ptr_eq(&before, &gw.backend()),
        "the backend was rebuilt"
    );
    // Changing the backend replaces it, and the old watch stops with it.
    std::fs::write(
        &path,
        config.replace("timeout = \"2s\"", "timeout = \"3s\""),
    )
    .unwrap();
    gateway::reload::reload(&gw.gw, "test")
        .await
        .expect("reload");
    assert!(!Arc::ptr_eq(&before, &gw.backend()));
    drop(before);
    let b = TestInstance::start("b");
    consul.register("echo", b.instance());
    eventually(
        "the new backend watches",
        Duration::from_secs(2),
        async || gw.echo().await.ok().as_deref() == Some("b"),
    )
    .await;
}

#[tokio::test]
async fn consul_config_errors_name_file_line_and_field() {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
consul = {{ service = "", address = "ftp://consul:8501", wait = "20m" }}
services = ["testing.v1.Echo"]
load_balancer = "fastest"

[backends.other]
endpoints = ["127.0.0.1:1"]
consul = {{ service = "other" }}
retry = {{ attempts = 0, retry_on = ["sometimes"] }}

[backends.third]
consul = {{ service = "third", address = "https://consul:8501", ca_file = "no-such-ca.pem" }}

[backends.fourth]
consul = {{ service = "fourth", ca_file = "ca.pem" }}
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&text);
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    for (line, field, words) in [
        (6, "backends.echo.consul.service", "name the Consul service"),
        (6, "backends.echo.consul.address", "is not an agent address"),
        (16, "backends.third.consul.ca_file", "cannot read"),
        (
            19,
            "backends.fourth.consul.ca_file",
            "needs an https:// address",
        ),
        (6, "backends.echo.consul.wait", "10m"),
        (8, "backends.echo.load_balancer", "round_robin"),
        (12, "backends.other.consul", "not both"),
        (13, "backends.other.retry.attempts", "1 to 10"),
        (
            13,
            "backends.other.retry.retry_on",
            "\"sometimes\" is not a gRPC status code",
        ),
    ] {
        let want = format!("{}:{line}: {field}: ", path.display());
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(words)),
            "no `{want}...{words}` in:\n{errors}"
        );
    }
}

#[tokio::test]
async fn removing_an_instance_lets_its_calls_in_flight_finish() {
    let consul = ConsulTestServer::start().await;
    let a = TestInstance::start("a");
    consul.register("echo", a.instance());
    let gw = Arc::new(TestGw::start(&consul_config(&consul, "", "")).await);
    assert_eq!(gw.echo().await.unwrap(), "a");
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("/v1/sleep?millis=600").await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The only instance leaves while its call runs: the call still ends well.
    consul.deregister("echo", "a");
    eventually("the pool empties", Duration::from_secs(2), async || {
        gw.backend().endpoints.current().is_empty()
    })
    .await;
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.get("/v1/echo").await.0, 503);
}

#[tokio::test]
async fn dns_names_are_resolved_into_instances_and_refreshed() {
    let a = TestInstance::start("a");
    let port = a.addr.rsplit_once(':').unwrap().1.to_owned();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
endpoints = ["localhost:{port}"]
dns_refresh = "100ms"
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#,
        toml_path(&testing_descriptors())
    );
    let gw = TestGw::start(&config).await;
    // Before the first answer the name itself is the endpoint.
    assert_eq!(gw.echo().await.unwrap(), "a");
    eventually(
        "the name is resolved to addresses",
        Duration::from_secs(2),
        async || {
            gw.backend()
                .endpoints
                .current()
                .endpoints
                .iter()
                .any(|e| e.addr == format!("127.0.0.1:{port}"))
        },
    )
    .await;
    // localhost may also resolve to ::1, where nothing listens: retries
    // and ejection keep clients from noticing.
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
    let admin = gw.admin_backends().await;
    assert_eq!(admin["backends"][0]["source"], "dns");
    assert_eq!(admin["backends"][0]["discovery"]["state"], "ok");
}

#[tokio::test]
async fn the_documented_consul_example_is_valid_config() {
    let page =
        std::fs::read_to_string(gateway_tests::repo_root().join("docs/operations.md")).unwrap();
    let section = &page[page
        .find("## Backends from Consul")
        .expect("docs/operations.md: section \"Backends from Consul\"")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndescriptors = \"{}\"\n\n{block}",
        toml_path(&gateway_tests::repo_root().join("descriptors"))
    );
    let path = write_config(&text);
    let snapshot = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let b = &snapshot.backends["bookstore"];
    assert!(matches!(
        b.options.discovery,
        gateway::discovery::DiscoverySpec::Consul(_)
    ));
    assert!(b.options.health_check.is_some());
}
