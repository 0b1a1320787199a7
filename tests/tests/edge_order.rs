//! The order of checks is fixed: CORS preflight, limits, IP rate limit,
//! authentication, subject rate limit, transcoding. Each step is shown to
//! run before the next by a request that fails both, and a backend that
//! counts its calls shows that no refused request reaches it.

use std::sync::atomic::Ordering;

use gateway_tests::edge::{counting_backend, edge_config, now, sign_hs256};
use gateway_tests::{testing_descriptors, Reply, TestGateway};
use serde_json::json;

const SECRET_ENV: &str = "GATEWAY_EDGE_ORDER_HMAC_SECRET";
const SECRET: &str = "order-tests-secret-of-at-least-32-bytes";

const SECTIONS: &str = r#"[cors]
allowed_origins = ["https://app.example.com"]

[limits]
max_headers = 30

[auth]
default = "required"

[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "GATEWAY_EDGE_ORDER_HMAC_SECRET"

[rate_limits]
default = ["per_ip", "per_sub"]
trusted_proxies = ["127.0.0.1"]

[rate_limits.policies.per_ip]
key = "ip"
rate = 1
per = "1m"
burst = 2

[rate_limits.policies.per_sub]
key = "subject"
rate = 1
per = "1m"
burst = 1
"#;

const ROUTES: &str = r#"
[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"
"#;

fn token(sub: &str) -> String {
    format!(
        "Bearer {}",
        sign_hs256(
            SECRET.as_bytes(),
            &json!({"iss": "https://hs.test", "sub": sub, "exp": now() + 60})
        )
    )
}

async fn post(gw: &TestGateway, ip: &str, auth: Option<&str>, extra: usize, body: &str) -> Reply {
    let names: Vec<String> = (0..extra).map(|i| format!("x-extra-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = vec![
        ("x-forwarded-for", ip),
        ("content-type", "application/json"),
    ];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    headers.extend(names.iter().map(|n| (n.as_str(), "v")));
    gw.request("POST", "/v1/echo", &headers, Some(body.as_bytes().to_vec()))
        .await
}

#[tokio::test]
async fn checks_run_in_the_documented_order_and_refusals_never_reach_the_backend() {
    std::env::set_var(SECRET_ENV, SECRET);
    let (backend, calls) = counting_backend().await;
    let config = edge_config(SECTIONS, ROUTES);
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;

    // Use up 203.0.113.1's IP bucket (2) with good requests.
    let alice = token("alice");
    post(&gw, "203.0.113.1", Some(&alice), 0, "{}").await.ok();
    let bob = token("bob");
    post(&gw, "203.0.113.1", Some(&bob), 0, "{}").await.ok();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // 1. CORS preflight before everything: no token, an exhausted bucket,
    //    still granted.
    let r = gw
        .request(
            "OPTIONS",
            "/v1/echo",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("x-forwarded-for", "203.0.113.1"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-methods"), "POST");

    // 2. Limits before the IP rate limit: too many headers is 431, not 429.
    post(&gw, "203.0.113.1", None, 40, "{}")
        .await
        .assert_error(431, 3, "limits.max_headers");

    // 3. The IP rate limit before authentication: 429, not 401.
    let r = post(&gw, "203.0.113.1", None, 0, "{}").await;
    r.assert_error(429, 8, "per_ip");
    assert!(r.header("retry-after").parse::<u64>().is_ok());

    // 4. Authentication before the subject rate limit: a bad token on a
    //    fresh IP is 401, and does not use up anyone's subject bucket.
    post(&gw, "203.0.113.2", Some("Bearer x.y.z"), 0, "{}")
        .await
        .assert_error(401, 16, "");
    let carol = token("carol");
    post(&gw, "203.0.113.2", Some(&carol), 0, "{}").await.ok();

    // 5. The subject rate limit before transcoding: alice (bucket used up)
    //    sending a broken body gets 429, not 400.
    post(&gw, "203.0.113.3", Some(&alice), 0, "{broken")
        .await
        .assert_error(429, 8, "per_sub");

    // 6. Transcoding last: dave, with quota left, gets the 400.
    let dave = token("dave");
    post(&gw, "203.0.113.3", Some(&dave), 0, "{broken")
        .await
        .assert_error(400, 3, "invalid JSON");

    // Only the three good requests reached the backend.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
