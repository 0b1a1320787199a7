//! Rate limits shared between replicas through a real `redis-server`: two
//! gateway processes enforce one combined limit; a Redis that dies or
//! freezes costs no request more than `redis.timeout` (decisions fall back
//! to the local limiters, or are refused with 503 when `fail_closed`), and
//! a restarted one is used again; a consumer's quota holds across both;
//! the `RateLimit` fields report the shared bucket; the Lua script agrees
//! with its Rust twin.

use std::time::{Duration, Instant};

use gateway_tests::binary::spawn_listening;
use gateway_tests::redis::{RedisServer, Resp};
use gateway_tests::{
    dead_addr, echo_server, http_client, render_config, spawn_backend, testing_descriptors,
    testing_pool, write_config,
};

/// One test at a time: each runs two gateways and a Redis, and the latency
/// bounds should measure the store, not the other tests' load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACME_KEY: &str = "acme-shared-quota-key";

/// The SHA-1 the gateway calls the script by (EVALSHA).
fn gateway_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| {
        let d = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            gateway::edge::redis_store::SCRIPT.as_bytes(),
        );
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    })
}

fn digest(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The decision timeout of the replicas whose latency is measured: the
/// default.
const TIMEOUT_MS: u64 = 20;
/// The timeout of replicas that count: a loaded test machine can take
/// longer than 20 ms now and then, and a fallback would count locally.
const COUNTING_TIMEOUT_MS: u64 = 500;

/// Two replicas' config: `REDIS_EXTRA` goes into `[redis]`.
const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
watch = false

[admin]
listen = "ADMIN"

[telemetry]
access_log = false

[redis]
url = "REDIS_URL"
timeout = "TIMEOUTms"
REDIS_EXTRA

# The combined limit: 50/s over every replica.
[rate_limits.policies.shared]
key = "route"
rate = 50
burst = 50
store = "redis"

# Never refuses: for latency while Redis is down.
[rate_limits.policies.roomy]
key = "ip"
rate = 100000
store = "redis"

# Four requests a minute per client, counted exactly.
[rate_limits.policies.slow]
key = "ip"
rate = 1
per = "60s"
burst = 4
store = "redis"

# A consumer's quota.
[rate_limits.policies.quota]
key = "consumer"
rate = 1
per = "60s"
burst = 3
store = "redis"

[consumers.acme]
keys = ["ACME_DIGEST"]
rate_limits = ["quota"]

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]
timeout = "5s"

[[routes]]
method = "GET"
path = "/v1/shared/{string_field}"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["shared"]

[[routes]]
method = "GET"
path = "/v1/roomy/{string_field}"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["roomy"]

[[routes]]
method = "GET"
path = "/v1/slow/{string_field}"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["slow"]

[[routes]]
method = "GET"
path = "/v1/keyed/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["api_key"]
rate_limit = []
"#;

/// One gateway process.
struct Replica {
    _child: tokio::process::Child,
    addr: String,
    admin: String,
    client: reqwest::Client,
}

impl Replica {
    async fn start(redis: &RedisServer, backend: &str, redis_extra: &str) -> Replica {
        Replica::start_with(redis, backend, redis_extra, TIMEOUT_MS).await
    }

    async fn start_with(
        redis: &RedisServer,
        backend: &str,
        redis_extra: &str,
        timeout_ms: u64,
    ) -> Replica {
        let admin = dead_addr().await;
        let template = CONFIG
            .replace("REDIS_URL", &redis.url())
            .replace("TIMEOUT", &timeout_ms.to_string())
            .replace("REDIS_EXTRA", redis_extra)
            .replace("ADMIN", &admin)
            .replace("ACME_DIGEST", &digest(ACME_KEY));
        let path = write_config(&render_config(&template, backend, &testing_descriptors()));
        let (child, addr) =
            spawn_listening(&["serve", "--config", path.to_str().expect("utf-8 path")]).await;
        Replica {
            _child: child,
            addr,
            admin,
            client: http_client(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.addr))
    }

    async fn store(&self) -> serde_json::Value {
        let v: serde_json::Value = http_client()
            .get(format!("http://{}/admin/rate_limits", self.admin))
            .send()
            .await
            .expect("admin answers")
            .json()
            .await
            .expect("admin JSON");
        v["redis"].clone()
    }

    /// Waits (10 s at most) until the store is in `state`.
    async fn wait_store(&self, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.store().await;
            if s["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "store of {} not {state} after 10 s: {s}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        http_client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }

    /// The value of the first sample whose line starts with `name` and
    /// holds every one of `labels`.
    async fn sample(&self, name: &str, labels: &[&str]) -> Option<f64> {
        self.metrics().await.lines().find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name && labels.iter().all(|x| series.contains(x)))
                .then(|| value.parse().ok())?
        })
    }
}

async fn pair(redis: &RedisServer, timeout_ms: u64) -> (Replica, Replica) {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let a = Replica::start_with(redis, &backend, "", timeout_ms).await;
    let b = Replica::start_with(redis, &backend, "", timeout_ms).await;
    a.wait_store("up").await;
    b.wait_store("up").await;
    // The first call of each opens its backend connection: not measured.
    a.get("/v1/roomy/warm").await;
    b.get("/v1/roomy/warm").await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforce_one_combined_limit_within_five_percent() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, COUNTING_TIMEOUT_MS).await;
    // 100 requests/s, alternating, against 50/s shared (burst 50), for 4 s.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = Vec::new();
    let started = Instant::now();
    let mut last_sent = started;
    for n in 0..400 {
        tick.tick().await;
        last_sent = Instant::now();
        let r = if n % 2 == 0 { &a } else { &b };
        let url = format!("http://{}/v1/shared/x", r.addr);
        let client = r.client.clone();
        sent.push(tokio::spawn(async move {
            let r = client.get(url).send().await.expect("answer");
            (n % 2, r.status().as_u16())
        }));
    }
    let elapsed = last_sent.duration_since(started).as_secs_f64();
    let mut allowed = [0u32; 2];
    let mut refused = [0u32; 2];
    for s in sent {
        match s.await.unwrap() {
            (i, 200) => allowed[i] += 1,
            (i, 429) => refused[i] += 1,
            (_, other) => panic!("unexpected status {other}"),
        }
    }
    let total = f64::from(allowed[0] + allowed[1]);
    let expected = 50.0 + 50.0 * elapsed;
    let off = (total - expected).abs() / expected;
    eprintln!(
        "allowed {allowed:?}, refused {refused:?} over {elapsed:.2} s: {total} of {expected:.0} expected ({:.1}% off)",
        off * 100.0
    );
    assert!(
        off <= 0.05,
        "replicas allowed {total} in {elapsed:.2} s; one shared 50/s limit allows {expected:.0} (±5%)"
    );
    // Both replicas draw from the bucket. Which of them gets the refusals is
    // a matter of phase: with sends exactly every 10 ms and a token every
    // 20 ms, one replica can catch every new token and the other none.
    assert!(
        allowed.iter().all(|&n| n > 0) && refused[0] + refused[1] > 0,
        "both replicas allow, and the pair refuses: {allowed:?} {refused:?}"
    );
    for r in [&a, &b] {
        let s = r.store().await;
        let fallbacks = &s["fallbacks"];
        assert_eq!(
            (
                &fallbacks["down"],
                &fallbacks["error"],
                &fallbacks["timeout"]
            ),
            (&0.into(), &0.into(), &0.into()),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_fields_report_the_shared_bucket() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, COUNTING_TIMEOUT_MS).await;
    let mut seen = Vec::new();
    for (i, r) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let resp = r.get(&format!("/v1/slow/{i}")).await;
        seen.push((
            resp.status().as_u16(),
            resp.headers()["ratelimit"].to_str().unwrap().to_owned(),
        ));
    }
    let statuses: Vec<u16> = seen.iter().map(|s| s.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429], "{seen:?}");
    // Remaining counts down across the two replicas.
    for (i, r) in ["r=3;", "r=2;", "r=1;", "r=0;", "r=0;"].iter().enumerate() {
        assert!(seen[i].1.starts_with(&format!("\"slow\";{r}")), "{seen:?}");
    }
    // The key is Redis', with the configured prefix and the policy's name.
    let keys = redis.command(&["KEYS", "gateway:rl:slow:*"]);
    assert!(matches!(&keys, Resp::Array(k) if k.len() == 1), "{keys:?}");
    // A Redis that lost the script answers NOSCRIPT; the call is sent
    // again as EVAL and still decided there (locally it would pass).
    assert_eq!(
        redis.command(&["SCRIPT", "FLUSH"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(a.get("/v1/slow/after-flush").await.status(), 429);
    assert_eq!(
        redis.command(&["SCRIPT", "EXISTS", gateway_sha()]),
        Resp::Array(vec![Resp::Int(1)]),
        "EVAL cached the script again"
    );
    let s = a.store().await;
    assert_eq!(s["fallbacks"]["error"], 0, "{s}");
    assert_eq!(s["state"], "up", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_quota_holds_across_replicas() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, COUNTING_TIMEOUT_MS).await;
    let mut statuses = Vec::new();
    let mut last = None;
    for (i, r) in [&a, &b, &a, &b].into_iter().enumerate() {
        let resp = r
            .client
            .get(format!("http://{}/v1/keyed/{i}", r.addr))
            .header("x-api-key", ACME_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        last = Some(resp);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let last = last.unwrap();
    assert!(last.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"quota\";r=0;"));
    let body: serde_json::Value = last.json().await.unwrap();
    assert_eq!(body["code"], 8, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"quota\""),
        "{body}"
    );
}

/// Sends `n` requests alternating between `a` and `b`; each must be 200,
/// and the slowest's time is returned, or the first that took longer than
/// the timeout plus 10 ms.
async fn all_fast(a: &Replica, b: &Replica, n: usize, what: &str) -> Result<Duration, String> {
    let bound = Duration::from_millis(TIMEOUT_MS + 10);
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let r = if i % 2 == 0 { a } else { b };
        let started = Instant::now();
        let resp = r.get(&format!("/v1/roomy/{i}")).await;
        let took = started.elapsed();
        assert_eq!(resp.status(), 200, "{what}: request {i}");
        if took > bound {
            return Err(format!(
                "{what}: request {i} took {took:?}, more than the {TIMEOUT_MS} ms timeout + 10 ms"
            ));
        }
        worst = worst.max(took);
    }
    eprintln!("{what}: slowest request {worst:?}");
    Ok(worst)
}

/// [`all_fast`] once `outage` has started. A wall-clock bound on a shared
/// machine gets a second try (Redis back, up again, the outage again), and
/// fails if both tries miss it.
async fn fast_through(
    redis: &mut RedisServer,
    a: &Replica,
    b: &Replica,
    outage: fn(&mut RedisServer),
    recover: fn(&mut RedisServer),
    what: &str,
) {
    let mut missed = Vec::new();
    for _ in 0..2 {
        outage(redis);
        match all_fast(a, b, 40, what).await {
            Ok(_) => return,
            Err(e) => missed.push(e),
        }
        recover(redis);
        a.wait_store("up").await;
        b.wait_store("up").await;
    }
    panic!("{missed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_within_the_timeout_and_is_used_again_when_back() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis, TIMEOUT_MS).await;
    // Redis up: no bound (a loaded machine is slow either way), only what
    // the bounds below are measured against.
    if let Err(e) = all_fast(&a, &b, 20, "Redis up").await {
        eprintln!("{e}");
    }
    assert_eq!(a.sample("gateway_ratelimit_store_up", &[]).await, Some(1.0));

    // Killed: connections break, and nothing waits on them.
    fast_through(
        &mut redis,
        &a,
        &b,
        RedisServer::stop,
        RedisServer::restart,
        "Redis killed",
    )
    .await;
    a.wait_store("down").await;
    let s = a.store().await;
    assert!(s["last_error"].is_string(), "{s}");
    assert_eq!(a.sample("gateway_ratelimit_store_up", &[]).await, Some(0.0));
    let fell_back = a
        .sample(
            "gateway_ratelimit_store_fallbacks_total",
            &["policy=\"roomy\"", "reason=\"down\""],
        )
        .await
        .unwrap_or(0.0);
    assert!(fell_back >= 1.0, "{}", a.metrics().await);

    // Restarted on the same port: used again, counting shared.
    redis.restart();
    a.wait_store("up").await;
    b.wait_store("up").await;
    assert_eq!(a.sample("gateway_ratelimit_store_up", &[]).await, Some(1.0));
    let mut statuses = Vec::new();
    for (i, r) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        statuses.push(r.get(&format!("/v1/slow/{i}")).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429], "shared after restart");

    // Frozen: connections open, no answers. Requests wait the timeout at
    // most, then none waits once the store is down.
    fast_through(
        &mut redis,
        &a,
        &b,
        |r| r.pause(),
        |r| r.resume(),
        "Redis frozen",
    )
    .await;
    a.wait_store("down").await;
    let timeouts = a
        .sample(
            "gateway_ratelimit_store_fallbacks_total",
            &["policy=\"roomy\"", "reason=\"timeout\""],
        )
        .await
        .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "{}", a.metrics().await);
    redis.resume();
    a.wait_store("up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let a = Replica::start(&redis, &backend, "fail_closed = true").await;
    a.wait_store("up").await;
    assert_eq!(a.get("/v1/roomy/1").await.status(), 200);
    redis.stop();
    let mut statuses = Vec::new();
    let mut body = serde_json::Value::Null;
    for i in 0..5 {
        let started = Instant::now();
        let resp = a.get(&format!("/v1/roomy/{i}")).await;
        assert!(started.elapsed() <= Duration::from_millis(TIMEOUT_MS + 10));
        statuses.push(resp.status().as_u16());
        body = resp.json().await.unwrap();
    }
    assert_eq!(statuses, [503; 5]);
    assert_eq!(body["code"], 14, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("rate limit \"roomy\" cannot be checked"),
        "{body}"
    );
    redis.restart();
    a.wait_store("up").await;
    assert_eq!(a.get("/v1/roomy/9").await.status(), 200);
}

#[test]
fn the_script_in_redis_agrees_with_its_rust_twin() {
    let _serial = SERIAL.blocking_lock();
    use gateway::edge::redis_store::{gcra, SCRIPT};
    let redis = RedisServer::start();
    // 1 request per second, burst 3, five calls within milliseconds.
    let interval = 1_000_000u64;
    let mut tat = None;
    for call in 0..5 {
        let reply = redis.command(&["EVAL", SCRIPT, "1", "k", "1000000", "3"]);
        let Resp::Array(v) = &reply else {
            panic!("{reply:?}")
        };
        let got = (v[0].int() == 1, v[1].int() as u64, v[2].int() as u64);
        // The twin at the same instant (Redis' clock is this machine's).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let (want, stored) = gcra(now, tat, interval, 3);
        tat = stored.or(tat);
        assert_eq!((got.0, got.1), (want.0, want.1), "call {call}: {reply:?}");
        assert!(
            got.2.abs_diff(want.2) < 50_000,
            "call {call}: {got:?} vs {want:?}"
        );
    }
    // The TAT is stored as a plain integer, with its bucket's refill as TTL.
    let Resp::Bulk(Some(stored)) = redis.command(&["GET", "k"]) else {
        panic!("no key")
    };
    assert!(stored.bytes().all(|b| b.is_ascii_digit()), "{stored}");
    let ttl = redis.command(&["PTTL", "k"]).int();
    assert!((2_900..=3_000).contains(&ttl), "PTTL {ttl}");
}

#[test]
fn a_redis_store_without_url_is_refused_naming_the_key() {
    let _serial = SERIAL.blocking_lock();
    let text = "[rate_limits.policies.p]\nkey = \"ip\"\nrate = 5\nstore = \"redis\"\n\n[redis]\ntimeout = \"never\"\n";
    let path = write_config(&render_config(
        &format!("[server]\ndescriptors = \"{{descriptors}}\"\n\n{text}"),
        "127.0.0.1:1",
        &testing_descriptors(),
    ));
    let err = match gateway::snapshot::Snapshot::load(&path) {
        Ok(_) => panic!("a redis store without a URL loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(":9: redis.url: missing"), "{err}");
    assert!(err.contains(":10: redis.timeout: "), "{err}");
}

/// examples/replicas/gateway-{a,b}.toml on free ports, against `redis` and
/// one bookstore backend (started by A, `gateway demo`).
async fn replicas_example(redis: &RedisServer) -> (Replica, Replica) {
    let root = gateway_tests::repo_root();
    let backend = dead_addr().await;
    let mut out = Vec::new();
    for (file, command) in [("gateway-a.toml", "demo"), ("gateway-b.toml", "serve")] {
        let text = std::fs::read_to_string(root.join("examples/replicas").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let admin = dead_addr().await;
        for needle in ["127.0.0.1:6379", "../../descriptors", "127.0.0.1:50053"] {
            assert!(text.contains(needle), "{file} no longer has {needle}");
        }
        let text = text
            .replace("127.0.0.1:6379", &format!("127.0.0.1:{}", redis.port))
            .replace(
                "../../descriptors",
                &gateway_tests::toml_path(&root.join("descriptors")),
            )
            .replace("127.0.0.1:50053", &backend)
            .replace("127.0.0.1:8081", "127.0.0.1:0")
            .replace("127.0.0.1:8082", "127.0.0.1:0")
            .replace("127.0.0.1:9081", &admin)
            .replace("127.0.0.1:9082", &admin);
        let path = write_config(&text);
        // Both files load as they are (the descriptors path aside).
        gateway::snapshot::Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("examples/replicas/{file} does not load:\n{e}"));
        let (child, addr) =
            spawn_listening(&[command, "--config", path.to_str().expect("utf-8 path")]).await;
        out.push(Replica {
            _child: child,
            addr,
            admin,
            client: http_client(),
        });
    }
    let b = out.pop().unwrap();
    let a = out.pop().unwrap();
    a.wait_store("up").await;
    b.wait_store("up").await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_example_shares_its_limits() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (a, b) = replicas_example(&redis).await;
    // The partner's key: its quota counted in Redis.
    let resp = b
        .client
        .get(format!("http://{}/v1/shelves/1/books", b.addr))
        .header("x-api-key", "replicas-demo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let fields = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(fields.contains("\"partner_quota\";r=99;"), "{fields}");
    // 9 of the shared burst of 10 are left (a 10th may refill meanwhile,
    // one per 200 ms); each replica alone would allow all 12.
    let mut allowed = 0;
    let mut last = 0;
    for i in 0..12 {
        let r = if i % 2 == 0 { &a } else { &b };
        last = r.get("/v1/shelves/1").await.status().as_u16();
        allowed += u32::from(last == 200);
    }
    assert!((9..=10).contains(&allowed), "{allowed} of 12 allowed");
    assert_eq!(last, 429);
}
