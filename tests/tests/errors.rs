//! Error answers: gRPC status mapping through a real backend, decoded
//! details, routing errors, limits, unreachable and slow backends, and
//! metadata in both directions.

use std::time::{Duration, Instant};

use gateway_tests::{dead_addr, echo_config, testing_descriptors, TestGateway};
use serde_json::json;

/// grpc-gateway's table: (gRPC code, HTTP status).
const STATUS_TABLE: &[(i32, u16)] = &[
    (1, 499),  // CANCELLED
    (2, 500),  // UNKNOWN
    (3, 400),  // INVALID_ARGUMENT
    (4, 504),  // DEADLINE_EXCEEDED
    (5, 404),  // NOT_FOUND
    (6, 409),  // ALREADY_EXISTS
    (7, 403),  // PERMISSION_DENIED
    (8, 429),  // RESOURCE_EXHAUSTED
    (9, 400),  // FAILED_PRECONDITION
    (10, 409), // ABORTED
    (11, 400), // OUT_OF_RANGE
    (12, 501), // UNIMPLEMENTED
    (13, 500), // INTERNAL
    (14, 503), // UNAVAILABLE
    (15, 500), // DATA_LOSS
    (16, 401), // UNAUTHENTICATED
];

#[tokio::test]
async fn every_backend_grpc_code_maps_to_grpc_gateways_http_status() {
    let gw = TestGateway::echo("").await;
    let mut failures = Vec::new();
    for &(code, http) in STATUS_TABLE {
        let msg = match code {
            // A call out of time has one message whoever noticed it (the
            // backend's own text goes to the debug log).
            4 => "backend \"echo\" did not answer within the deadline of".to_owned(),
            _ => format!("failure number {code}"),
        };
        let r = gw
            .get(&format!(
                "/v1/fail?code={code}&message=failure%20number%20{code}"
            ))
            .await;
        if r.status != http {
            failures.push(format!(
                "code {code}: HTTP {} instead of {http}: {}",
                r.status, r.text
            ));
            continue;
        }
        if let Err(e) = gateway_tests::check_error_body(&r.json, code, &msg) {
            failures.push(format!("code {code}: {e}: {}", r.text));
            continue;
        }
        if r.json["details"] != json!([]) {
            failures.push(format!("code {code}: details should be empty: {}", r.text));
        }
        if !r.header("content-type").starts_with("application/json") {
            failures.push(format!(
                "code {code}: content-type {}",
                r.header("content-type")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn backend_error_message_is_passed_through_unchanged() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/fail?code=9&message=shelf%20%22x%22%20is%20not%20empty%20%E2%9C%93")
        .await;
    r.assert_error(400, 9, "");
    assert_eq!(r.message(), "shelf \"x\" is not empty ✓");
}

#[tokio::test]
async fn status_details_are_decoded_into_typed_json() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/fail?code=3&message=bad%20input&withDetails=true")
        .await;
    r.assert_error(400, 3, "bad input");
    assert_eq!(
        r.json["details"],
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "string_field", "description": "must not be empty"}]
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "TEST_REASON",
                "domain": "testing.v1",
                "metadata": {"k": "v"}
            }
        ]),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn backend_error_metadata_comes_back_as_grpc_metadata_headers() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/fail?code=7&message=no").await;
    r.assert_error(403, 7, "no");
    assert_eq!(r.header("grpc-metadata-x-fail"), "yes");
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Fail");
}

#[tokio::test]
async fn unknown_path_is_404_with_an_error_body() {
    let gw = TestGateway::echo("").await;
    gw.get("/nope").await.assert_error(404, 5, "no route");
    gw.get("/v1").await.assert_error(404, 5, "no route");
    gw.get("/").await.assert_error(404, 5, "no route");
    gw.get("/v1/echo/extra/segments")
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_405_with_allow() {
    let gw = TestGateway::echo("").await;
    let r = gw.delete("/v1/echo").await;
    r.assert_error(405, 12, "DELETE");
    let allow = r.header("allow");
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    // HEAD is served wherever GET is, so the 405 lists it.
    assert_eq!(methods, ["GET", "HEAD", "POST"], "Allow: {allow}");

    let r = gw.get("/v1/items/abc:activate").await;
    r.assert_error(405, 12, "GET");
    assert_eq!(r.header("allow"), "POST");
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    let gw = TestGateway::echo("max_body_bytes = 1024").await;
    let big = json!({"stringField": "x".repeat(2000)});
    gw.post("/v1/echo", &big).await.assert_error(413, 3, "1024");
    // Exactly at the limit is fine.
    let pad = 1024 - r#"{"stringField":""}"#.len();
    let body = format!(r#"{{"stringField":"{}"}}"#, "y".repeat(pad));
    assert_eq!(body.len(), 1024);
    let r = gw.send_raw_json("POST", "/v1/echo", body.as_bytes()).await;
    assert_eq!(r.ok()["stringField"].as_str().map(str::len), Some(pad));
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let gw = TestGateway::echo("max_body_bytes = 1024").await;
    let payload = format!(r#"{{"stringField":"{}"}}"#, "z".repeat(3000));
    let mut body = Vec::new();
    for chunk in payload.as_bytes().chunks(500) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = gw
        .raw(
            "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
            &body,
        )
        .await;
    r.assert_error(413, 3, "1024");
}

#[tokio::test]
async fn chunked_body_under_the_limit_is_accepted() {
    let gw = TestGateway::echo("").await;
    let body = b"5\r\n{\"int\r\nd\r\n32Field\": 77}\r\n0\r\n\r\n";
    let r = gw
        .raw(
            "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
            body,
        )
        .await;
    assert_eq!(r.ok(), &json!({"int32Field": 77}));
}

#[tokio::test]
async fn non_json_content_type_with_a_body_is_415() {
    let gw = TestGateway::echo("").await;
    for ct in [
        "application/xml",
        "text/html",
        "application/octet-stream",
        "application/jsonx",
        "multipart/form-data; boundary=x",
    ] {
        gw.request(
            "POST",
            "/v1/echo",
            &[("content-type", ct)],
            Some(b"{}".to_vec()),
        )
        .await
        .assert_error(415, 3, "application/json");
    }
}

/// text/plain and form bodies are what a cross-site HTML form or a
/// no-preflight `fetch` can send; reading them as JSON lets any web page
/// make a logged-in browser call the API (CSRF).
#[tokio::test]
async fn text_plain_body_is_415() {
    let gw = TestGateway::echo("").await;
    gw.request(
        "POST",
        "/v1/echo",
        &[("content-type", "text/plain")],
        Some(br#"{"int32Field":1}"#.to_vec()),
    )
    .await
    .assert_error(415, 3, "text/plain");
}

#[tokio::test]
async fn form_urlencoded_body_is_415() {
    let gw = TestGateway::echo("").await;
    gw.request(
        "POST",
        "/v1/echo",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(br#"{"int32Field":1}"#.to_vec()),
    )
    .await
    .assert_error(415, 3, "application/x-www-form-urlencoded");
}

#[tokio::test]
async fn body_on_a_route_without_body_is_400() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "GET",
            "/v1/echo",
            &[("content-type", "application/json")],
            Some(br#"{"int32Field":1}"#.to_vec()),
        )
        .await;
    r.assert_error(400, 3, "takes no request body");
}

#[tokio::test]
async fn unreachable_backend_is_503_naming_the_backend() {
    let addr = dead_addr().await;
    let gw = TestGateway::start_with(&echo_config(""), &addr, &testing_descriptors()).await;
    let started = Instant::now();
    let r = gw.get("/v1/echo").await;
    r.assert_error(503, 14, "echo");
    assert!(r.message().contains(&addr), "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // And again: the gateway does not get stuck on the dead endpoint.
    gw.get("/v1/single/x").await.assert_error(503, 14, "echo");
}

#[tokio::test]
async fn slow_backend_is_504_after_the_route_timeout() {
    let gw = TestGateway::echo("").await;
    let started = Instant::now();
    let r = gw.get("/v1/sleep?millis=3000").await;
    let took = started.elapsed();
    r.assert_error(504, 4, "");
    assert!(
        took >= Duration::from_millis(250),
        "answered after {took:?}, before the 300ms deadline"
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}; the route timeout is 300ms"
    );
    // A fast call on the same route is fine.
    let r = gw.get("/v1/sleep?millis=1").await;
    assert_eq!(r.ok(), &json!({}));
}

#[tokio::test]
async fn backend_timeout_applies_when_the_route_has_none() {
    let template = format!(
        "{}\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/sleep-default\"\ngrpc = \"testing.v1.Echo/Sleep\"\n",
        echo_config("").replace("timeout = \"5s\"", "timeout = \"200ms\"")
    );
    let gw = TestGateway::start(&template).await;
    let started = Instant::now();
    let r = gw.get("/v1/sleep-default?millis=3000").await;
    let took = started.elapsed();
    r.assert_error(504, 4, "");
    assert!(
        took >= Duration::from_millis(150),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}; the backend timeout is 200ms"
    );
}

#[tokio::test]
async fn deadline_is_propagated_to_the_backend_as_grpc_timeout() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/meta").await;
    let md = &r.ok()["metadata"];
    let timeout = md["grpc-timeout"].as_str().unwrap_or_default();
    assert!(!timeout.is_empty(), "no grpc-timeout in {md}");
}

#[tokio::test]
async fn grpc_metadata_request_headers_reach_the_backend_without_prefix() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "GET",
            "/v1/meta",
            &[("Grpc-Metadata-Foo", "bar"), ("grpc-metadata-trace", "t1")],
            None,
        )
        .await;
    let md = &r.ok()["metadata"];
    assert_eq!(md["foo"], "bar", "{md}");
    assert_eq!(md["trace"], "t1", "{md}");
    assert!(md.get("grpc-metadata-foo").is_none(), "{md}");
}

#[tokio::test]
async fn forward_headers_reach_the_backend_under_their_own_name() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "GET",
            "/v1/meta",
            &[
                ("X-Request-Id", "req-1"),
                ("X-Route-Header", "route-1"),
                ("X-Not-Forwarded", "secret"),
                ("Authorization", "Bearer t"),
            ],
            None,
        )
        .await;
    let md = &r.ok()["metadata"];
    // Server-wide forward_headers and the route's own.
    assert_eq!(md["x-request-id"], "req-1", "{md}");
    assert_eq!(md["x-route-header"], "route-1", "{md}");
    assert!(md.get("x-not-forwarded").is_none(), "{md}");
    assert!(md.get("authorization").is_none(), "{md}");
}

#[tokio::test]
async fn route_forward_headers_apply_only_to_that_route() {
    // A second route to Meta, without the route-level header list.
    let template = format!(
        "{}\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/meta2\"\ngrpc = \"testing.v1.Echo/Meta\"\n",
        echo_config("")
    );
    let gw = TestGateway::start(&template).await;
    let r = gw
        .request(
            "GET",
            "/v1/meta2",
            &[("X-Route-Header", "r"), ("X-Request-Id", "q")],
            None,
        )
        .await;
    let md = &r.ok()["metadata"];
    assert!(md.get("x-route-header").is_none(), "{md}");
    assert_eq!(md["x-request-id"], "q", "{md}");
}

#[tokio::test]
async fn reserved_headers_are_not_forwarded_as_metadata() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "GET",
            "/v1/meta",
            &[
                ("Grpc-Metadata-Content-Type", "text/evil"),
                ("Grpc-Metadata-Grpc-Status", "0"),
            ],
            None,
        )
        .await;
    let md = &r.ok()["metadata"];
    let ct = md["content-type"].as_str().unwrap_or_default();
    assert!(ct.starts_with("application/grpc"), "{md}");
    assert!(md.get("grpc-status").is_none(), "{md}");
}

#[tokio::test]
async fn backend_response_metadata_comes_back_as_grpc_metadata_headers() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/meta").await;
    r.ok();
    assert_eq!(r.header("grpc-metadata-x-backend"), "yes");
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Meta");
    // gRPC framing headers are not leaked.
    assert_eq!(r.header("grpc-metadata-content-type"), "");
    assert_eq!(r.header("grpc-status"), "");
}

#[tokio::test]
async fn error_after_many_requests_does_not_poison_the_connection() {
    let gw = TestGateway::echo("").await;
    for i in 0..20 {
        if i % 2 == 0 {
            gw.get("/v1/fail?code=5&message=gone")
                .await
                .assert_error(404, 5, "gone");
        } else {
            assert_eq!(
                gw.get(&format!("/v1/int32/{i}")).await.ok(),
                &json!({"int32Field": i})
            );
        }
    }
}

#[tokio::test]
async fn details_of_an_unknown_type_are_kept_as_base64() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/fail?code=10&message=conflict&unknownDetail=true")
        .await;
    r.assert_error(409, 10, "conflict");
    assert_eq!(
        r.json["details"],
        json!([{"@type": "type.googleapis.com/testing.v1.NotInAnyPool", "value": "AQID"}]),
        "{}",
        r.text
    );
}

/// A TCP listener that accepts connections and never says anything.
async fn silent_backend() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A TCP listener that closes every connection as soon as it is accepted.
async fn slamming_backend() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn backend_that_accepts_but_never_answers_is_504_at_the_deadline() {
    let addr = silent_backend().await;
    let template = echo_config("").replace("timeout = \"5s\"", "timeout = \"300ms\"");
    let gw = TestGateway::start_with(&template, &addr, &testing_descriptors()).await;
    let started = Instant::now();
    let r = gw.get("/v1/echo").await;
    let took = started.elapsed();
    r.assert_error(504, 4, "");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn backend_that_closes_connections_is_503() {
    let addr = slamming_backend().await;
    let gw = TestGateway::start_with(&echo_config(""), &addr, &testing_descriptors()).await;
    let started = Instant::now();
    let r = gw.get("/v1/echo").await;
    r.assert_error(503, 14, "");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn gateway_recovers_when_the_backend_comes_up_later() {
    let addr = dead_addr().await;
    let gw = TestGateway::start_with(&echo_config(""), &addr, &testing_descriptors()).await;
    gw.get("/v1/single/x").await.assert_error(503, 14, "echo");
    // Now start the backend on that very address.
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    tokio::spawn(gateway_tests::echo_server(&gateway_tests::testing_pool()).serve(listener));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = gw.get("/v1/single/x").await;
        if r.status == 200 {
            assert_eq!(r.json, json!({"stringField": "x"}));
            break;
        }
        r.assert_error(503, 14, "");
        assert!(
            Instant::now() < deadline,
            "still failing 3s after the backend came up: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn very_long_paths_are_matched_quickly() {
    let gw = TestGateway::echo("").await;
    let started = Instant::now();
    let long = "a/".repeat(3000);
    gw.get(&format!("/v1/wild/{long}tail")).await.ok();
    let r = gw.get(&format!("/v1/multi/{long}end")).await;
    assert_eq!(r.ok()["stringField"].as_str().map(str::len), Some(6003));
    gw.get(&format!("/v1/wild/{long}nottail"))
        .await
        .assert_error(404, 5, "no route");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
