//! Request and connection limits end to end: 414, 431 (count and size),
//! 413 before any byte of the body is read, the whole-request timeout (504),
//! JSON nesting depth, HTTP/1.1 header-read (slowloris) and idle timeouts,
//! HTTP/2 idle timeout, and the connection cap.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gateway_tests::edge::{counting_backend, edge_config};
use gateway_tests::{http_client, testing_descriptors, TestGateway};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

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

[[routes]]
method = "GET"
path = "/v1/sleep"
grpc = "testing.v1.Echo/Sleep"
"#;

async fn start(limits: &str) -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (backend, calls) = counting_backend().await;
    let sections = format!("[limits]\n{limits}\n");
    let config = edge_config(&sections, ROUTES)
        .replace("watch = false", "watch = false\nmax_body_bytes = 1024");
    (
        TestGateway::start_with(&config, &backend, &testing_descriptors()).await,
        calls,
    )
}

#[tokio::test]
async fn long_targets_many_or_big_headers_and_big_declared_bodies_are_refused_with_json() {
    let (gw, calls) = start("max_url_bytes = 200\nmax_headers = 20\nmax_header_bytes = 2048").await;
    let long = format!("/v1/echo?stringField={}", "a".repeat(300));
    gw.get(&long)
        .await
        .assert_error(414, 3, "over the limit of 200 (limits.max_url_bytes)");

    let names: Vec<String> = (0..25).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    gw.request("GET", "/v1/echo", &many, None)
        .await
        .assert_error(431, 3, "limits.max_headers");

    let big = "b".repeat(3000);
    gw.request("GET", "/v1/echo", &[("x-big", &big)], None)
        .await
        .assert_error(431, 3, "limits.max_header_bytes");

    // Declared too large: refused before any byte of the body is read.
    let r = gw
        .raw(
            "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000000",
            b"{}",
        )
        .await;
    r.assert_error(413, 3, "1024 bytes");
    assert_eq!(r.header("connection"), "close");
    // Chunked, so undeclared: counted while reading.
    let chunk = format!("{{\"stringField\": \"{}\"}}", "c".repeat(2000));
    let body = format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    gw.raw(
        "POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        body.as_bytes(),
    )
    .await
    .assert_error(413, 3, "1024 bytes");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    gw.get("/v1/echo?stringField=fine").await.ok();
}

#[tokio::test]
async fn the_whole_request_timeout_is_504() {
    let (gw, _) = start("request_timeout = \"300ms\"").await;
    let started = Instant::now();
    gw.get("/v1/sleep?millis=3000").await.assert_error(
        504,
        4,
        "longer than 300 ms (limits.request_timeout)",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.get("/v1/sleep?millis=10").await.ok();
}

#[tokio::test]
async fn json_nesting_deeper_than_the_limit_is_400() {
    let (gw, calls) = start("max_json_depth = 5").await;
    // valueField (google.protobuf.Value) nests freely: 5 levels pass, 6 do not.
    let five = json!({"valueField": [[[[1]]]]});
    gw.post("/v1/echo", &five).await.ok();
    let six = json!({"valueField": [[[[[1]]]]]});
    gw.post("/v1/echo", &six)
        .await
        .assert_error(400, 3, "deeper than the limit of 5 levels");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn idle_http1_connections_are_closed_after_the_idle_timeout() {
    let (gw, _) = start("idle_timeout = \"300ms\"\nheader_read_timeout = \"5s\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(closed, "the idle keep-alive connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_by_the_header_read_timeout() {
    let (gw, calls) = start("header_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A header line every 100 ms: bytes keep moving, the head never ends.
    let mut closed = false;
    for i in 0..30 {
        if s.write_all(format!("x-slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a slowloris client kept its connection for 3 s");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let (gw, _) = start("idle_timeout = \"300ms\"").await;
    // Requests over HTTP/2 (prior knowledge) are served...
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url("/v1/echo?stringField=h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // ...and an idle HTTP/2 connection is sent GOAWAY and closed.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "the idle HTTP/2 connection stayed open");
    // A GOAWAY frame (type 7) came before the close.
    assert!(
        out.windows(4)
            .any(|w| w[3] == 0x07 && w[0] == 0 && w[1] == 0),
        "no GOAWAY in {out:?}"
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let (gw, _) = start("max_connections = 2").await;
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    // Let the gateway accept both.
    a.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = a.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The third is not served while two are open...
    let third = tokio::spawn({
        let url = gw.url("/v1/echo?stringField=third");
        async move {
            http_client()
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap"
    );
    // ...and is once one closes.
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// A raw request whose head holds exactly `total` headers (`Host` and
/// `Connection`, added by `raw`, among them).
async fn with_headers(gw: &TestGateway, total: usize) -> gateway_tests::Reply {
    let mut head = "GET /v1/echo?stringField=h HTTP/1.1".to_owned();
    for i in 0..total - 2 {
        head.push_str(&format!("\r\nx-h{i}: v"));
    }
    gw.raw(&head, b"").await
}

#[tokio::test]
async fn header_limits_count_the_client_headers_not_the_ones_the_gateway_adds() {
    // The gateway adds x-request-id and traceparent; a client at the limit
    // must still pass.
    let (gw, calls) = start("max_headers = 20\nmax_header_bytes = 2048").await;
    with_headers(&gw, 19).await.ok();
    with_headers(&gw, 20).await.ok();
    with_headers(&gw, 21).await.assert_error(
        431,
        3,
        "the request has 21 headers, over the limit of 20 (limits.max_headers)",
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Bytes: names and values as sent, `Host` and `Connection: close` included.
    let fixed = "host".len() + gw.addr.to_string().len() + "connection".len() + "close".len();
    let fill = |total: usize| {
        let value = "f".repeat(total - fixed - "x-fill".len());
        format!("GET /v1/echo?stringField=b HTTP/1.1\r\nx-fill: {value}")
    };
    gw.raw(&fill(2048), b"").await.ok();
    gw.raw(&fill(2049), b"").await.assert_error(
        431,
        3,
        "the request headers are 2049 bytes, over the limit of 2048 (limits.max_header_bytes)",
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    // hyper's own header timer only starts at the first byte; the idle
    // timeout is far off here, so only the header timeout can close it.
    let (gw, _) = start("header_read_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let (out, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection stayed open for 5 s");
    assert!(out.is_empty(), "{out:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A connection that sends its request in time is served.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_is_408_and_the_connection_closed() {
    let (gw, calls) = start("min_body_rate = 100000").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"stringField\": \"",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Then nothing: 17 bytes in, 1000 promised.
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(closed, "the connection stayed open");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    gateway_tests::check_error_body(
        &json,
        4,
        "the request body is arriving slower than 100000 bytes/s (limits.min_body_rate)",
    )
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // A body sent at once is far above any minimum.
    gw.post("/v1/echo", &json!({"stringField": "quick"}))
        .await
        .ok();
}

#[tokio::test]
async fn an_http2_client_ignoring_the_goaway_ping_is_dropped_after_another_idle_period() {
    let (gw, _) = start("idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Wait for the idle close's GOAWAY (type 7).
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !seen
        .windows(4)
        .any(|w| w[3] == 0x07 && w[0] == 0 && w[1] == 0)
    {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a GOAWAY within 3 s")
            .unwrap();
        assert!(n > 0, "closed before any GOAWAY");
        seen.extend_from_slice(&buf[..n]);
    }
    let goaway = Instant::now();
    // Never acknowledge the gateway's PING, but keep bytes moving with
    // PINGs of our own.
    let (mut rd, mut wr) = s.into_split();
    let pinger = tokio::spawn(async move {
        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";
        while wr.write_all(ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    pinger.abort();
    assert!(
        closed.is_ok(),
        "the connection outlived 5 s of ignored PING"
    );
    let took = goaway.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
}
