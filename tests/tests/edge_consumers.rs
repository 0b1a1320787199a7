//! Consumers and API keys end to end: a key in the header or the query
//! names its consumer; routes accept a JWT, an API key, or either; the
//! backend learns the consumer's name, never the key; rate limits keyed by
//! consumer and a consumer's own quotas count per consumer; and a broken
//! `[consumers]` section is refused at its line.

use gateway::snapshot::Snapshot;
use gateway_tests::edge::edge_config;
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

fn sections() -> String {
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
"#,
        acme = digest("acme-key-1")
    )
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
"#;

async fn start() -> TestGateway {
    std::env::set_var(SECRET_ENV, SECRET);
    std::env::set_var(KEY_ENV, "beta-key-1");
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    TestGateway::start_with(
        &edge_config(&sections(), ROUTES),
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
