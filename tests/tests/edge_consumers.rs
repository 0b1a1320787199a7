//! Consumers and API keys end to end: a key in the header or the query
//! names its consumer, a route reading keys where its own `api_keys` says;
//! keys come from digests, a variable or a file; routes accept a JWT, an
//! API key, or either; the backend learns the consumer's name where
//! `forward_claims` allows, never the key, and no log line has a key;
//! rate limits keyed by consumer and a consumer's own quotas (a daily one
//! too) count per consumer; and a broken `[consumers]` section is refused
//! at its line.

use std::path::Path;

use gateway::snapshot::Snapshot;
use gateway_tests::edge::{edge_config, LoggingGateway};
use gateway_tests::{echo_server, spawn_backend, testing_descriptors, testing_pool, TestGateway};

const SECRET_ENV: &str = "GATEWAY_CONSUMERS_TEST_HMAC_SECRET";
const SECRET: &str = "consumer-tests-secret-of-32-bytes-or-more";
const KEY_ENV: &str = "GATEWAY_CONSUMERS_TEST_BETA_KEY";

/// A well-formed digest, for the config checks.
const ACME_DIGEST: &str = "sha256:7d8b0b4c1e7e7e9a4d4fbd1f39f0e8c7ad1b3c6c1fd55c0f1f43e7fa8a9a7e3c";

fn digest(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    format!(
        "sha256:{}",
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The key of consumer `filed`, written to its `key_file` by [`start`].
const FILED_KEY: &str = "filed-key-1";

fn sections(key_file: &Path) -> String {
    format!(
        r#"[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "{SECRET_ENV}"

[api_keys]
query_param = "api_key"

[consumers.acme]
keys = ["{acme}"]

[consumers.beta]
key_env = "{KEY_ENV}"
rate_limits = ["beta_quota"]

[consumers.filed]
key_file = "{key_file}"

[consumers.daily]
keys = ["{daily}"]
rate_limits = ["per_day"]

[rate_limits.policies.per_consumer]
key = "consumer"
rate = 1
per = "1m"
burst = 2

[rate_limits.policies.beta_quota]
key = "ip"
rate = 1
per = "1m"
burst = 1

[rate_limits.policies.per_day]
key = "consumer"
rate = 3
per = "24h"
"#,
        acme = digest("acme-key-1"),
        daily = digest("daily-key-1"),
        key_file = gateway_tests::toml_path(key_file),
    )
}

/// A `key_file` holding [`FILED_KEY`] (with the newline editors add).
fn key_file() -> std::path::PathBuf {
    let path = gateway_tests::temp_dir("api-key").join("filed.key");
    std::fs::write(&path, format!("{FILED_KEY}\n")).unwrap();
    path
}

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/keyed/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["api_key"]
rate_limit = []

[[routes]]
method = "GET"
path = "/v1/either/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["jwt", "api_key"]
rate_limit = []

[[routes]]
method = "GET"
path = "/v1/counted/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["api_key"]
rate_limit = ["per_consumer"]

[[routes]]
method = "GET"
path = "/v1/meta"
grpc = "testing.v1.Echo/Meta"
auth = "required"
credentials = ["api_key"]
rate_limit = []

[[routes]]
method = "GET"
path = "/v1/meta-quiet"
grpc = "testing.v1.Echo/Meta"
auth = "required"
credentials = ["api_key"]
rate_limit = []
forward_claims = ["sub"]

[[routes]]
method = "GET"
path = "/v1/partner/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["api_key"]
rate_limit = []
api_keys = { header = "x-partner-key" }

[[routes]]
method = "GET"
path = "/v1/by-query/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "required"
credentials = ["api_key"]
rate_limit = []
api_keys = { query_param = "key" }
"#;

async fn start() -> TestGateway {
    std::env::set_var(SECRET_ENV, SECRET);
    std::env::set_var(KEY_ENV, "beta-key-1");
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    TestGateway::start_with(
        &edge_config(&sections(&key_file()), ROUTES),
        &backend,
        &testing_descriptors(),
    )
    .await
}

fn token(sub: &str) -> String {
    gateway_tests::edge::hs_bearer(SECRET, sub)
}

#[tokio::test]
async fn a_consumer_is_known_by_its_key_in_the_header_or_the_query() {
    let gw = start().await;
    let r = gw
        .request("GET", "/v1/keyed/a", &[("x-api-key", "acme-key-1")], None)
        .await;
    assert_eq!(r.ok()["stringField"], "a");
    // In the query: taken out before the query is read as fields (an
    // unknown field there would be a 400).
    let r = gw.get("/v1/keyed/b?api_key=beta-key-1").await;
    assert_eq!(r.ok()["stringField"], "b");
    // A wrong key, and none at all.
    gw.request("GET", "/v1/keyed/c", &[("x-api-key", "acme-key-2")], None)
        .await
        .assert_error(401, 16, "API key is not valid");
    let r = gw.get("/v1/keyed/c").await;
    r.assert_error(401, 16, "x-api-key");
    assert_eq!(r.header("www-authenticate"), "ApiKey");
    // A JWT is not what this route takes.
    gw.request(
        "GET",
        "/v1/keyed/c",
        &[("authorization", &token("alice"))],
        None,
    )
    .await
    .assert_error(401, 16, "API key");
}

#[tokio::test]
async fn the_backend_learns_the_consumer_and_never_the_key() {
    let gw = start().await;
    let r = gw
        .request(
            "GET",
            "/v1/meta",
            &[
                ("x-api-key", "acme-key-1"),
                // Made up by the client: replaced by the gateway's statement.
                ("x-consumer", "root"),
                ("grpc-metadata-x-consumer", "root"),
            ],
            None,
        )
        .await;
    let seen = r.ok()["metadata"].clone();
    assert_eq!(seen["x-consumer"], "acme", "{seen}");
    let text = seen.to_string();
    assert!(
        !text.contains("acme-key-1"),
        "the key reached the backend: {text}"
    );
    assert!(
        !text.contains("root"),
        "a forged consumer reached the backend: {text}"
    );
}

#[tokio::test]
async fn a_route_may_take_either_a_token_or_a_key() {
    let gw = start().await;
    let with = |h: &'static str, v: String| (h, v);
    for (h, v) in [
        with("authorization", token("alice")),
        with("x-api-key", "acme-key-1".to_owned()),
    ] {
        let r = gw.request("GET", "/v1/either/x", &[(h, &v)], None).await;
        assert_eq!(r.ok()["stringField"], "x", "{h}");
    }
    gw.get("/v1/either/x").await.assert_error(401, 16, "");
    gw.request(
        "GET",
        "/v1/either/x",
        &[("authorization", "Bearer nope")],
        None,
    )
    .await
    .assert_error(401, 16, "");
    gw.request("GET", "/v1/either/x", &[("x-api-key", "nope")], None)
        .await
        .assert_error(401, 16, "API key is not valid");
}

#[tokio::test]
async fn limits_and_quotas_count_per_consumer() {
    let gw = start().await;
    let acme = [("x-api-key", "acme-key-1")];
    for _ in 0..2 {
        gw.request("GET", "/v1/counted/a", &acme, None).await.ok();
    }
    let r = gw.request("GET", "/v1/counted/a", &acme, None).await;
    r.assert_error(429, 8, "per_consumer");
    // Another consumer from the same address has its own bucket; its own
    // quota (burst 1) counts on top of the route's limit.
    let beta = [("x-api-key", "beta-key-1")];
    let r = gw.request("GET", "/v1/counted/b", &beta, None).await;
    r.ok();
    assert!(
        r.header("ratelimit-policy").contains("\"beta_quota\""),
        "{}",
        r.header("ratelimit-policy")
    );
    gw.request("GET", "/v1/counted/b", &beta, None)
        .await
        .assert_error(429, 8, "beta_quota");
    // The quota follows the consumer to routes without limits of their own.
    gw.request("GET", "/v1/keyed/b", &beta, None)
        .await
        .assert_error(429, 8, "beta_quota");
    gw.request("GET", "/v1/keyed/a", &acme, None).await.ok();
}

#[test]
fn a_broken_consumers_section_is_refused_at_its_lines() {
    std::env::remove_var("GATEWAY_CONSUMERS_TEST_UNSET");
    let sections = format!(
        r#"[consumers.a]
keys = ["{ACME_DIGEST}", "not-a-digest"]

[consumers.b]
key_env = "GATEWAY_CONSUMERS_TEST_UNSET"

[consumers.c]
keys = ["{ACME_DIGEST}"]
rate_limits = ["nowhere"]

[consumers.d]
"#
    );
    let config = edge_config(&sections, ROUTES)
        .replace("{backend}", "127.0.0.1:1")
        .replace(
            "{descriptors}",
            &gateway_tests::toml_path(&testing_descriptors()),
        );
    let path = gateway_tests::write_config(&config);
    let errors = match Snapshot::load(&path) {
        Ok(_) => panic!("a broken [consumers] loaded"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "consumers.a.keys: write a key's digest as \"sha256:",
        "consumers.b.key_env: environment variable GATEWAY_CONSUMERS_TEST_UNSET is not set",
        "consumers.c.keys: this key is also a key of consumer \"a\"",
        "consumers.c.rate_limits: policy \"nowhere\" is not defined",
        "consumers.d: a consumer needs a key",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
    }
    // Every error names its line.
    assert!(
        errors.lines().all(|l| l.contains("routes.toml:")),
        "{errors}"
    );
}

#[tokio::test]
async fn each_route_reads_the_key_where_its_api_keys_says_and_nowhere_else() {
    let gw = start().await;
    // The header route: its own header, not [api_keys]'s header or query.
    let r = gw
        .request(
            "GET",
            "/v1/partner/a",
            &[("x-partner-key", "acme-key-1")],
            None,
        )
        .await;
    assert_eq!(r.ok()["stringField"], "a");
    let r = gw.get("/v1/partner/a?key=acme-key-1").await;
    r.assert_error(
        401,
        16,
        "this route needs an API key (header x-partner-key)",
    );
    assert_eq!(r.header("www-authenticate"), "ApiKey");
    gw.request("GET", "/v1/partner/a", &[("x-api-key", "acme-key-1")], None)
        .await
        .assert_error(401, 16, "header x-partner-key");
    gw.get("/v1/partner/a?api_key=acme-key-1")
        .await
        .assert_error(401, 16, "header x-partner-key");
    // The query route: its own parameter, taken out before the query is
    // read as fields (`key` is no field of the request: a 400 otherwise).
    let r = gw.get("/v1/by-query/b?key=acme-key-1").await;
    assert_eq!(r.ok()["stringField"], "b");
    gw.request(
        "GET",
        "/v1/by-query/b",
        &[("x-partner-key", "acme-key-1")],
        None,
    )
    .await
    .assert_error(401, 16, "this route needs an API key (query parameter key)");
    gw.request(
        "GET",
        "/v1/by-query/b",
        &[("x-api-key", "acme-key-1")],
        None,
    )
    .await
    .assert_error(401, 16, "query parameter key");
    // A wrong key where the route reads is refused like anywhere else.
    gw.get("/v1/by-query/b?key=nope")
        .await
        .assert_error(401, 16, "API key is not valid");
    // Routes without their own keep [api_keys]: header and query.
    let r = gw.get("/v1/keyed/c?api_key=acme-key-1").await;
    assert_eq!(r.ok()["stringField"], "c");
    gw.get("/v1/keyed/c?key=acme-key-1").await.assert_error(
        401,
        16,
        "header x-api-key or query parameter api_key",
    );
}

#[tokio::test]
async fn a_key_read_from_a_key_file_names_its_consumer() {
    let gw = start().await;
    let r = gw
        .request("GET", "/v1/meta", &[("x-api-key", FILED_KEY)], None)
        .await;
    assert_eq!(r.ok()["metadata"]["x-consumer"], "filed", "{}", r.text);
    // The line is the key: the newline after it is not part of it.
    gw.request(
        "GET",
        "/v1/meta",
        &[("x-api-key", &format!("{FILED_KEY}x"))],
        None,
    )
    .await
    .assert_error(401, 16, "API key is not valid");
}

#[tokio::test]
async fn a_daily_quota_refuses_after_its_count_until_the_next_day() {
    let gw = start().await;
    let daily = [("x-api-key", "daily-key-1")];
    for i in 0..3 {
        let r = gw.request("GET", "/v1/keyed/d", &daily, None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
    let r = gw.request("GET", "/v1/keyed/d", &daily, None).await;
    r.assert_error(429, 8, "per_day");
    // 3 a day: the next one in 8 hours, not in seconds.
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!(
        (7 * 3600..=8 * 3600).contains(&retry),
        "Retry-After {retry}s for a quota of 3 per 24h"
    );
    // The quota is the consumer's: another consumer from the same address
    // is not counted in it.
    let r = gw
        .request("GET", "/v1/keyed/d", &[("x-api-key", "acme-key-1")], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn the_consumer_goes_on_only_where_forward_claims_lists_it() {
    let gw = start().await;
    let key = [("x-api-key", "acme-key-1")];
    // Listed by default ([auth] forward_claims is ["sub", "consumer"]).
    let r = gw.request("GET", "/v1/meta", &key, None).await;
    assert_eq!(r.ok()["metadata"]["x-consumer"], "acme", "{}", r.text);
    // forward_claims = ["sub"] leaves it out, and a client's own is
    // still dropped.
    let r = gw
        .request(
            "GET",
            "/v1/meta-quiet",
            &[("x-api-key", "acme-key-1"), ("x-consumer", "root")],
            None,
        )
        .await;
    let seen = r.ok()["metadata"].clone();
    assert!(seen.get("x-consumer").is_none(), "{seen}");
    assert!(!seen.to_string().contains("root"), "{seen}");
}

#[tokio::test]
async fn no_log_line_carries_a_key_even_at_debug_level() {
    std::env::set_var(SECRET_ENV, SECRET);
    std::env::set_var(KEY_ENV, "beta-key-1");
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let sections = format!(
        "[telemetry]\nlog_level = \"debug\"\naccess_log = true\n\n{}",
        sections(&key_file())
    );
    let config = gateway_tests::render_config(
        &edge_config(&sections, ROUTES),
        &backend,
        &testing_descriptors(),
    );
    let gw = LoggingGateway::start(&config).await;
    let client = gateway_tests::http_client();
    // Good keys and wrong ones (a wrong key is often a real key mistyped),
    // in the header, [api_keys]'s query parameter and a route's own, on a
    // route and on a path no route takes.
    let wrong = [
        "wrong-key-secret-1",
        "wrong-key-secret-2",
        "wrong-key-secret-3",
    ];
    let calls = [
        Call::header("/v1/keyed/h", "x-api-key", "acme-key-1", 200),
        Call::query("/v1/keyed/q?api_key=beta-key-1", 200),
        Call::header("/v1/partner/p", "x-partner-key", FILED_KEY, 200),
        Call::query("/v1/by-query/k?key=daily-key-1", 200),
        Call::header("/v1/keyed/w", "x-api-key", wrong[0], 401),
        Call::query("/v1/keyed/w?api_key=wrong-key-secret-2", 401),
        Call::query("/v1/nowhere?api_key=wrong-key-secret-3", 404),
    ];
    let mut ids = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let id = format!("keys-never-logged-{i}");
        let mut req = client.get(gw.url(call.path)).header("x-request-id", &id);
        if let Some((name, value)) = call.header {
            req = req.header(name, value);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            status,
            call.status,
            "{}: {}",
            call.path,
            r.text().await.unwrap()
        );
        ids.push(id);
    }
    let lines = gw.lines_after(ids.last().unwrap()).await;
    // The test could fail: every request was logged, and debug lines too.
    for id in &ids {
        assert!(
            lines.iter().any(|l| l.contains(id.as_str())),
            "no access line for {id}:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "no debug line: the log level did not apply:\n{}",
        lines.join("\n")
    );
    let keys = ["acme-key-1", "beta-key-1", FILED_KEY, "daily-key-1"];
    for key in keys.iter().chain(wrong.iter()) {
        let leaked: Vec<&String> = lines.iter().filter(|l| l.contains(key)).collect();
        assert!(leaked.is_empty(), "the key {key} is logged:\n{leaked:#?}");
    }
}

/// A request of [`no_log_line_carries_a_key_even_at_debug_level`]: its
/// target, the header carrying its key (if not the query) and the status
/// it gets.
struct Call {
    path: &'static str,
    header: Option<(&'static str, &'static str)>,
    status: u16,
}

impl Call {
    fn header(path: &'static str, name: &'static str, key: &'static str, status: u16) -> Call {
        Call {
            path,
            header: Some((name, key)),
            status,
        }
    }

    fn query(path: &'static str, status: u16) -> Call {
        Call {
            path,
            header: None,
            status,
        }
    }
}
