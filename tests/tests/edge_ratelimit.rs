//! Rate limits end to end: keys (client IP behind trusted proxies, JWT
//! subject, API-key header, the route), 429 with Retry-After and the JSON
//! body, the IETF RateLimit-Policy / RateLimit fields on every limited
//! answer, legacy X-RateLimit-* fields, and refused calls never reaching
//! the backend.

use std::sync::atomic::Ordering;

use gateway_tests::edge::{counting_backend, edge_config};
use gateway_tests::{testing_descriptors, Reply, TestGateway};
use serde_json::json;

const SECRET_ENV: &str = "GATEWAY_EDGE_RL_HMAC_SECRET";
const SECRET: &str = "rate-limit-tests-secret-of-32-bytes-or-more";

fn sections(trusted: &str) -> String {
    format!(
        r#"[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "{SECRET_ENV}"

[rate_limits]
default = ["per_ip"]
trusted_proxies = [{trusted}]
legacy_headers = true

[rate_limits.policies.per_ip]
key = "ip"
rate = 1
per = "60s"
burst = 3

[rate_limits.policies.per_key]
key = "header:x-api-key"
rate = 2
per = "1m"
burst = 2

[rate_limits.policies.per_sub]
key = "subject"
rate = 1
per = "1m"
burst = 1

[rate_limits.policies.per_route]
key = "route"
rate = 1
per = "1m"
burst = 2
"#
    )
}

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/keyed/{string_field}"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["per_key"]

[[routes]]
method = "GET"
path = "/v1/sub/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "optional"
rate_limit = ["per_sub"]

[[routes]]
method = "GET"
path = "/v1/both/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "optional"
rate_limit = ["per_ip", "per_sub"]

[[routes]]
method = "GET"
path = "/v1/route-a"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["per_route"]

[[routes]]
method = "GET"
path = "/v1/route-b"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["per_route"]

[[routes]]
method = "GET"
path = "/v1/free"
grpc = "testing.v1.Echo/Echo"
rate_limit = []
"#;

async fn start(trusted: &str) -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    std::env::set_var(SECRET_ENV, SECRET);
    let (backend, calls) = counting_backend().await;
    let config = edge_config(&sections(trusted), ROUTES);
    (
        TestGateway::start_with(&config, &backend, &testing_descriptors()).await,
        calls,
    )
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    gw.request("GET", path, headers, None).await
}

#[tokio::test]
async fn over_the_ip_limit_is_429_with_retry_after_and_every_answer_carries_the_fields() {
    let (gw, calls) = start("\"127.0.0.1\"").await;
    let xff = [("x-forwarded-for", "198.51.100.7")];
    for remaining in [2, 1, 0] {
        let r = get(&gw, "/v1/echo", &xff).await;
        r.ok();
        assert_eq!(r.header("ratelimit-policy"), "\"per_ip\";q=3;w=180");
        let state = r.header("ratelimit");
        assert!(
            state.starts_with(&format!("\"per_ip\";r={remaining};t=")),
            "{state}"
        );
        assert_eq!(r.header("x-ratelimit-limit"), "3");
        assert_eq!(r.header("x-ratelimit-remaining"), remaining.to_string());
    }
    let r = get(&gw, "/v1/echo", &xff).await;
    r.assert_error(429, 8, "rate limit \"per_ip\" exceeded");
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-policy"), "\"per_ip\";q=3;w=180");
    assert_eq!(r.header("ratelimit"), format!("\"per_ip\";r=0;t={retry}"));
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the refused call reached the backend"
    );
    // Another client (per the trusted proxy) has its own bucket; a route
    // with `rate_limit = []` is not limited and carries no fields.
    get(&gw, "/v1/echo", &[("x-forwarded-for", "198.51.100.8")])
        .await
        .ok();
    let r = get(&gw, "/v1/free", &xff).await;
    r.ok();
    assert_eq!(r.header("ratelimit"), "");
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_does_not_pick_the_bucket() {
    let (gw, _) = start("").await;
    for i in 0..3 {
        get(
            &gw,
            "/v1/echo",
            &[("x-forwarded-for", &format!("203.0.113.{i}"))],
        )
        .await
        .ok();
    }
    // Three different claimed addresses, one real client: limited.
    get(&gw, "/v1/echo", &[("x-forwarded-for", "203.0.113.99")])
        .await
        .assert_error(429, 8, "per_ip");
}

#[tokio::test]
async fn header_keys_count_per_api_key() {
    let (gw, calls) = start("").await;
    for _ in 0..2 {
        get(&gw, "/v1/keyed/a", &[("x-api-key", "k1")]).await.ok();
    }
    get(&gw, "/v1/keyed/a", &[("x-api-key", "k1")])
        .await
        .assert_error(429, 8, "per_key");
    get(&gw, "/v1/keyed/a", &[("x-api-key", "k2")]).await.ok();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn token(sub: &str) -> String {
    gateway_tests::edge::hs_bearer(SECRET, sub)
}

#[tokio::test]
async fn limits_before_and_after_authentication_report_together_in_that_order() {
    let (gw, _) = start("").await;
    let r = get(&gw, "/v1/both/x", &[("authorization", &token("alice"))]).await;
    r.ok();
    assert_eq!(
        r.header("ratelimit-policy"),
        "\"per_ip\";q=3;w=180, \"per_sub\";q=1;w=60"
    );
    let state = r.header("ratelimit");
    assert!(
        state.starts_with("\"per_ip\";r=2;t=") && state.contains(", \"per_sub\";r=0;t="),
        "{state}"
    );
    // The legacy fields speak for the tighter of the two.
    assert_eq!(r.header("x-ratelimit-limit"), "1");
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    // A token refused by authentication: the address-keyed limit it
    // passed is still reported, the subject's is not reached.
    let r = get(&gw, "/v1/both/x", &[("authorization", "Bearer nope")]).await;
    r.assert_error(401, 16, "");
    assert_eq!(r.header("ratelimit-policy"), "\"per_ip\";q=3;w=180");
    assert!(r.header("ratelimit").starts_with("\"per_ip\";r=1;"));
}

#[tokio::test]
async fn subject_keys_count_per_verified_subject_after_authentication() {
    let (gw, _) = start("").await;
    let alice = token("alice");
    get(&gw, "/v1/sub/x", &[("authorization", &alice)])
        .await
        .ok();
    let r = get(&gw, "/v1/sub/x", &[("authorization", &alice)]).await;
    r.assert_error(429, 8, "per_sub");
    assert_eq!(r.header("ratelimit-policy"), "\"per_sub\";q=1;w=60");
    // Bob has his own bucket, and so does the anonymous caller (by IP).
    get(&gw, "/v1/sub/x", &[("authorization", &token("bob"))])
        .await
        .ok();
    get(&gw, "/v1/sub/x", &[]).await.ok();
    get(&gw, "/v1/sub/x", &[])
        .await
        .assert_error(429, 8, "per_sub");
    // A bad token is refused by authentication, not counted.
    get(&gw, "/v1/sub/x", &[("authorization", "Bearer nope")])
        .await
        .assert_error(401, 16, "");
}

#[tokio::test]
async fn refusals_by_the_edge_layers_come_as_problem_json_when_asked() {
    let (gw, _) = start("").await;
    let problem = [("accept", "application/problem+json")];
    get(&gw, "/v1/sub/x", &[]).await.ok();
    for (path, headers, status) in [
        // The rate-limit layer after authentication (anonymous: by address)...
        ("/v1/sub/x", &problem[..], 429u16),
        // ...and the authentication layer.
        (
            "/v1/sub/x",
            &[
                ("accept", "application/problem+json"),
                ("authorization", "Bearer nope"),
            ][..],
            401,
        ),
    ] {
        let r = get(&gw, path, headers).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.header("content-type"), "application/problem+json");
        assert_eq!(r.json["status"], status, "{}", r.text);
        assert!(r.json["title"].is_string(), "{}", r.text);
    }
}

#[tokio::test]
async fn route_keys_share_one_bucket_per_route_across_clients() {
    let (gw, _) = start("\"127.0.0.1\"").await;
    get(&gw, "/v1/route-a", &[("x-forwarded-for", "192.0.2.1")])
        .await
        .ok();
    get(&gw, "/v1/route-a", &[("x-forwarded-for", "192.0.2.2")])
        .await
        .ok();
    get(&gw, "/v1/route-a", &[("x-forwarded-for", "192.0.2.3")])
        .await
        .assert_error(429, 8, "per_route");
    // Route B uses the same policy, with a bucket of its own.
    get(&gw, "/v1/route-b", &[]).await.ok();
}

#[tokio::test]
async fn admin_routes_show_each_routes_auth_and_limits() {
    std::env::set_var(SECRET_ENV, SECRET);
    let (backend, _) = counting_backend().await;
    let text = gateway_tests::render_config(
        &edge_config(&sections(""), ROUTES),
        &backend,
        &testing_descriptors(),
    );
    let path = gateway_tests::write_config(&text);
    let snapshot = gateway::snapshot::Snapshot::load(&path).unwrap();
    let gw = gateway::server::Gateway::new(snapshot);
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway::server::run(rest, Some(admin), gw, async {
        let _ = stopped.await;
    }));
    let v: serde_json::Value = gateway_tests::http_client()
        .get(format!("http://{admin_addr}/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = |p: &str| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("no route {p} in {v}"))
    };
    let keyed = route("/v1/keyed/{string_field}");
    assert_eq!(keyed["auth"]["mode"], "none");
    assert_eq!(keyed["limits"]["rate_limits"][0]["policy"], "per_key");
    assert_eq!(keyed["limits"]["rate_limits"][0]["key"], "header:x-api-key");
    let sub = route("/v1/sub/{string_field}");
    assert_eq!(sub["auth"]["mode"], "optional");
    assert_eq!(sub["auth"]["issuers"], json!(["hs"]));
    assert_eq!(sub["auth"]["forward_claims"][0]["metadata"], "x-jwt-sub");
    assert_eq!(route("/v1/free")["limits"]["rate_limits"], json!([]));
    let _ = stop.send(());
    let _ = running.await;
}

const ECHO_ROUTE: &str = r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#;

async fn start_keyed_by_ip(extra: &str) -> TestGateway {
    let (backend, _) = counting_backend().await;
    let sections = format!(
        r#"[rate_limits]
default = ["per_ip"]
trusted_proxies = ["127.0.0.1"]
{extra}

[rate_limits.policies.per_ip]
key = "ip"
rate = 1
per = "1m"
burst = 1
"#
    );
    let config = edge_config(&sections, ECHO_ROUTE);
    TestGateway::start_with(&config, &backend, &testing_descriptors()).await
}

async fn from(gw: &TestGateway, client: &str) -> Reply {
    get(gw, "/v1/echo", &[("x-forwarded-for", client)]).await
}

#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_64_and_ipv4_clients_per_address() {
    let gw = start_keyed_by_ip("").await;
    from(&gw, "2001:db8:1:2::1").await.ok();
    // A new address in the same /64 (a privacy address) is the same client.
    from(&gw, "2001:db8:1:2:aaaa:bbbb:cccc:dddd")
        .await
        .assert_error(429, 8, "rate limit \"per_ip\" exceeded");
    // The next /64 is another client.
    from(&gw, "2001:db8:1:3::1").await.ok();
    // IPv4 addresses are counted whole, neighbours apart.
    from(&gw, "192.0.2.1").await.ok();
    from(&gw, "192.0.2.2").await.ok();
    from(&gw, "192.0.2.1")
        .await
        .assert_error(429, 8, "rate limit \"per_ip\" exceeded");
}

#[tokio::test]
async fn the_ipv6_prefix_of_rate_limit_keys_is_configurable() {
    let gw = start_keyed_by_ip("ipv6_prefix = 128").await;
    from(&gw, "2001:db8:1:2::1").await.ok();
    from(&gw, "2001:db8:1:2::2").await.ok();
    from(&gw, "2001:db8:1:2::1")
        .await
        .assert_error(429, 8, "per_ip");
    let gw = start_keyed_by_ip("ipv6_prefix = 48").await;
    from(&gw, "2001:db8:1:2::1").await.ok();
    from(&gw, "2001:db8:1:ffff::1")
        .await
        .assert_error(429, 8, "per_ip");
}

#[tokio::test]
async fn an_ipv6_prefix_out_of_range_is_a_config_error_at_its_line() {
    let (backend, _) = counting_backend().await;
    let text = gateway_tests::render_config(
        &edge_config("[rate_limits]\nipv6_prefix = 0\n", ECHO_ROUTE),
        &backend,
        &testing_descriptors(),
    );
    let path = gateway_tests::write_config(&text);
    let err = gateway::snapshot::Snapshot::load(&path)
        .expect_err("ipv6_prefix = 0 was accepted")
        .to_string();
    let at = format!(
        "{}:{}: rate_limits.ipv6_prefix: must be 1..=128",
        path.display(),
        gateway_tests::line_of(&text, "ipv6_prefix = 0")
    );
    assert!(err.contains(&at), "{err}");
    gateway_tests::remove_temp_parent(&path);
}
