//! CORS at the HTTP level (the browser's view is in browser_cors.rs):
//! preflights answered by the gateway with the methods the route table binds,
//! no grant for unrouted paths or disallowed origins, Vary: Origin, per-route
//! overrides, and preflights neither authenticated nor rate limited.

use std::sync::atomic::Ordering;

use gateway_tests::edge::{counting_backend, edge_config};
use gateway_tests::{testing_descriptors, Reply, TestGateway};

const SECRET_ENV: &str = "GATEWAY_EDGE_CORS_HMAC_SECRET";

const SECTIONS: &str = r#"[cors]
allowed_origins = ["https://app.example.com", "http://127.0.0.1:*"]
allowed_headers = ["authorization", "content-type", "x-custom"]
exposed_headers = ["ratelimit", "x-request-id"]
allow_credentials = true
max_age = "5m"

[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "GATEWAY_EDGE_CORS_HMAC_SECRET"

[rate_limits]
default = ["tight"]

[rate_limits.policies.tight]
key = "ip"
rate = 1
per = "1m"
burst = 1
"#;

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
auth = "required"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"
auth = "required"

[[routes]]
method = "PUT"
path = "/v1/echo/{string_field}"
grpc = "testing.v1.Echo/Echo"
body = "*"

[[routes]]
method = "GET"
path = "/v1/open"
grpc = "testing.v1.Echo/Echo"
rate_limit = []

[[routes]]
method = "GET"
path = "/v1/private"
grpc = "testing.v1.Echo/Echo"
rate_limit = []
cors = { enabled = false }

[[routes]]
method = "GET"
path = "/v1/partner"
grpc = "testing.v1.Echo/Echo"
rate_limit = []
cors = { allowed_origins = ["https://partner.example"], allow_credentials = false }
"#;

async fn start() -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    std::env::set_var(SECRET_ENV, "cors-tests-secret-of-at-least-32-bytes!");
    let (backend, calls) = counting_backend().await;
    let config = edge_config(SECTIONS, ROUTES);
    (
        TestGateway::start_with(&config, &backend, &testing_descriptors()).await,
        calls,
    )
}

async fn preflight(gw: &TestGateway, path: &str, origin: &str, method: &str) -> Reply {
    gw.request(
        "OPTIONS",
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", "x-custom,content-type"),
        ],
        None,
    )
    .await
}

fn cors_headers(r: &Reply) -> Vec<String> {
    r.headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn preflight_is_answered_by_the_gateway_with_the_methods_bound_for_the_path() {
    let (gw, calls) = start().await;
    for _ in 0..5 {
        // Five in a row: a burst-1 rate limit and a required token apply to
        // the route, and neither touches a preflight.
        let r = preflight(&gw, "/v1/echo", "https://app.example.com", "POST").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.header("access-control-allow-origin"),
            "https://app.example.com"
        );
        assert_eq!(r.header("access-control-allow-methods"), "GET,POST");
        assert_eq!(
            r.header("access-control-allow-headers"),
            "authorization,content-type,x-custom"
        );
        assert_eq!(r.header("access-control-allow-credentials"), "true");
        assert_eq!(r.header("access-control-max-age"), "300");
        assert!(r.header("vary").contains("origin"), "{}", r.header("vary"));
        assert_eq!(r.header("ratelimit"), "");
    }
    // PUT is bound on another path: its preflight lists PUT alone.
    let r = preflight(&gw, "/v1/echo/x", "http://127.0.0.1:5173", "PUT").await;
    assert_eq!(r.header("access-control-allow-methods"), "PUT");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "http://127.0.0.1:5173"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a preflight reached the backend"
    );
}

#[tokio::test]
async fn no_grant_for_an_unrouted_path_or_method_or_a_disallowed_origin() {
    let (gw, _) = start().await;
    let r = preflight(&gw, "/v1/nothing-here", "https://app.example.com", "GET").await;
    r.assert_error(403, 7, "no route serves GET /v1/nothing-here");
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    let r = preflight(&gw, "/v1/echo", "https://app.example.com", "DELETE").await;
    r.assert_error(403, 7, "no route serves DELETE /v1/echo");
    assert!(cors_headers(&r).is_empty());
    let r = preflight(&gw, "/v1/echo", "https://evil.example", "GET").await;
    r.assert_error(403, 7, "origin https://evil.example may not call");
    assert!(cors_headers(&r).is_empty());
    // An actual request from that origin is answered, without CORS headers
    // (so the browser hides the answer), and varies by Origin.
    let r = gw
        .request(
            "GET",
            "/v1/open",
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
    r.ok();
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    assert!(r.header("vary").contains("origin"));
}

#[tokio::test]
async fn actual_requests_from_allowed_origins_get_cors_headers_even_on_errors() {
    let (gw, _) = start().await;
    let r = gw
        .request(
            "GET",
            "/v1/open",
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    r.ok();
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(
        r.header("access-control-expose-headers"),
        "ratelimit,x-request-id"
    );
    assert!(r.header("vary").contains("origin"));
    // A 401 is readable by the page, so it can tell the user to log in.
    let r = gw
        .request(
            "GET",
            "/v1/echo",
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    r.assert_error(401, 16, "bearer token");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    // So is a 404.
    let r = gw
        .request(
            "GET",
            "/v1/nope",
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    r.assert_error(404, 5, "no route");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    // Without Origin: no CORS headers, but caches are told the answer varies.
    let r = gw.get("/v1/open").await;
    assert!(cors_headers(&r).is_empty());
    assert!(r.header("vary").contains("origin"));
}

#[tokio::test]
async fn per_route_overrides_replace_the_default_policy() {
    let (gw, _) = start().await;
    let r = gw
        .request(
            "GET",
            "/v1/private",
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    r.ok();
    assert!(cors_headers(&r).is_empty(), "CORS is off for this route");
    let r = preflight(&gw, "/v1/private", "https://app.example.com", "GET").await;
    assert_eq!(r.status, 403);
    assert!(cors_headers(&r).is_empty());

    let r = preflight(&gw, "/v1/partner", "https://partner.example", "GET").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://partner.example"
    );
    // Credentials are off here; the headers list is inherited from [cors].
    assert_eq!(r.header("access-control-allow-credentials"), "");
    assert_eq!(
        r.header("access-control-allow-headers"),
        "authorization,content-type,x-custom"
    );
    let r = preflight(&gw, "/v1/partner", "https://app.example.com", "GET").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn credentials_with_a_wildcard_origin_is_a_config_error_not_a_panic() {
    let text = edge_config(
        "[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n",
        "",
    );
    let text = gateway_tests::render_config(&text, "127.0.0.1:1", &testing_descriptors());
    let path = gateway_tests::write_config(&text);
    let err = gateway::snapshot::Snapshot::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(": cors: allow_credentials cannot be combined"),
        "{err}"
    );
    let text = edge_config("[cors]\nallowed_origins = [\"https://*example.com\"]\n", "");
    let text = gateway_tests::render_config(&text, "127.0.0.1:1", &testing_descriptors());
    let path = gateway_tests::write_config(&text);
    let err = gateway::snapshot::Snapshot::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cors.allowed_origins"), "{err}");
}

/// With only origins configured, the default lists let a traced page send
/// its correlation headers and read the gateway's answers to them.
#[tokio::test]
async fn default_lists_let_pages_send_and_read_request_ids_and_trace_context() {
    let (backend, _) = counting_backend().await;
    let sections = "[cors]\nallowed_origins = [\"https://app.example.com\"]\n";
    let routes =
        "[[routes]]\nmethod = \"GET\"\npath = \"/v1/echo\"\ngrpc = \"testing.v1.Echo/Echo\"\n";
    let config = edge_config(sections, routes);
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    let r = gw
        .request(
            "OPTIONS",
            "/v1/echo",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                (
                    "access-control-request-headers",
                    "traceparent,tracestate,x-request-id",
                ),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "");
    assert_eq!(
        r.header("access-control-allow-headers"),
        "authorization,content-type,traceparent,tracestate,x-request-id"
    );
    let r = gw
        .request(
            "GET",
            "/v1/echo",
            &[
                ("origin", "https://app.example.com"),
                ("x-request-id", "page-42"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            None,
        )
        .await;
    r.ok();
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        "ratelimit,ratelimit-policy,retry-after,traceresponse,www-authenticate,x-request-id"
    );
    // The headers the page may now read are there to read.
    assert_eq!(r.header("x-request-id"), "page-42");
    assert!(
        r.header("traceresponse")
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{}",
        r.header("traceresponse")
    );
}
