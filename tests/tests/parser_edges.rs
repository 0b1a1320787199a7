//! HTTP/1.1 heads that hyper's parser lets through or answers by itself:
//! each gets the gateway's JSON error body, and none reaches a backend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway_tests::edge::{counting_backend, edge_config};
use gateway_tests::{testing_descriptors, Reply, TestGateway};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"
"#;

async fn start() -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (backend, calls) = counting_backend().await;
    let config = edge_config("", ROUTES);
    (
        TestGateway::start_with(&config, &backend, &testing_descriptors()).await,
        calls,
    )
}

/// Writes `request` as is (no Host added) and parses the answer, which
/// must come with a Content-Length and close the connection.
async fn exchange(gw: &TestGateway, request: &[u8]) -> Reply {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The gateway may answer and close before reading everything.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer and the close within 10s")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head:?}"));
    assert_eq!(length, body.len(), "{text:?}");
    Reply::new("raw".to_owned(), status, headers, body.as_bytes())
}

#[tokio::test]
async fn a_target_past_hypers_own_bound_gets_414_with_the_json_body() {
    let (gw, calls) = start().await;
    // Over hyper's 64 KiB target bound, within its head buffer: hyper
    // answers this one itself.
    let request = format!(
        "GET /v1/echo?stringField={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let r = exchange(&gw, request.as_bytes()).await;
    r.assert_error(
        414,
        3,
        "the request target is over the limit of 8192 bytes (limits.max_url_bytes)",
    );
    assert_eq!(r.header("content-type"), "application/json");
    // Far past the head buffer: 431, with the body too.
    let request = format!(
        "GET /v1/echo HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    exchange(&gw, request.as_bytes()).await.assert_error(
        431,
        3,
        "(limits.max_headers, limits.max_header_bytes)",
    );
    // A head hyper cannot parse at all.
    exchange(
        &gw,
        b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
    )
    .await
    .assert_error(400, 3, "not valid HTTP/1.1");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The gateway's own 414, below hyper's bound, is unchanged.
    let long = format!("/v1/echo?stringField={}", "a".repeat(9000));
    gw.get(&long)
        .await
        .assert_error(414, 3, "over the limit of 8192 (limits.max_url_bytes)");
}

#[tokio::test]
async fn an_http11_request_without_exactly_one_host_is_400() {
    let (gw, calls) = start().await;
    exchange(&gw, b"GET /v1/echo HTTP/1.1\r\n\r\n")
        .await
        .assert_error(
            400,
            3,
            "an HTTP/1.1 request must have exactly one Host header (RFC 9112, section 3.2); this one has 0",
        );
    let r = exchange(
        &gw,
        b"GET /v1/echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    r.assert_error(400, 3, "this one has 2");
    assert_eq!(r.header("connection"), "close");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // One Host, or HTTP/1.0 without one, is fine.
    let r = exchange(
        &gw,
        b"GET /v1/echo?stringField=a HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.ok()["stringField"], "a");
    let r = exchange(&gw, b"GET /v1/echo?stringField=b HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.ok()["stringField"], "b");
}

#[tokio::test]
async fn chunked_named_twice_in_transfer_encoding_is_400() {
    let (gw, calls) = start().await;
    let body = b"2\r\n{}\r\n0\r\n\r\n";
    for te in ["chunked, chunked", "chunked,chunked"] {
        let r = gw
            .raw(
                &format!(
                    "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: {te}"
                ),
                body,
            )
            .await;
        r.assert_error(
            400,
            3,
            "Transfer-Encoding names chunked more than once (RFC 9112, section 6.1)",
        );
    }
    // Two header lines, the same coding twice.
    gw.raw(
        "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        body,
    )
    .await
    .assert_error(400, 3, "chunked more than once");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    gw.raw(
        "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        body,
    )
    .await
    .ok();
}
