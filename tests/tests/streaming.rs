//! Streaming over HTTP against a real tonic streaming backend: NDJSON, SSE
//! and array framing, mid-stream errors, cancellation when the client hangs
//! up, backpressure from a slow reader, and client and bidirectional
//! streaming over HTTP/1.1 (chunked) and HTTP/2.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gateway_tests::streaming::{rss_bytes, start, H2Call, RawStream};
use serde_json::{json, Value};

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test]
async fn server_stream_is_ndjson_with_one_result_per_line() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/count?count=3&label=a").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/x-ndjson");
    assert_eq!(
        lines(&r.text),
        vec![
            json!({"result": {"index": 1, "label": "a", "big": "1000000000000"}}),
            json!({"result": {"index": 2, "label": "a", "big": "2000000000000"}}),
            json!({"result": {"index": 3, "label": "a", "big": "3000000000000"}}),
        ]
    );
}

#[tokio::test]
async fn each_message_is_flushed_as_it_arrives() {
    let (gw, _) = start("").await;
    let started = Instant::now();
    let mut s = RawStream::open(
        &gw,
        "GET /v1/count?count=3&intervalMs=400 HTTP/1.1",
        b"",
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    let first = s.read_lines(1).await;
    let first_at = started.elapsed();
    assert_eq!(first.len(), 1, "{first:?}");
    s.read_to_end().await;
    let all_at = started.elapsed();
    assert!(s.complete());
    assert_eq!(lines(&String::from_utf8_lossy(&s.body)).len(), 3);
    // The first tick comes after 400 ms and the last after 1200 ms: the
    // first line must not wait for the rest.
    assert!(
        first_at < Duration::from_millis(900) && all_at >= Duration::from_millis(1100),
        "first line after {first_at:?}, whole stream after {all_at:?}"
    );
}

#[tokio::test]
async fn accept_event_stream_gives_server_sent_events() {
    let (gw, _) = start("").await;
    let r = gw
        .request(
            "GET",
            "/v1/count?count=2",
            &[("accept", "text/event-stream")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "text/event-stream");
    assert_eq!(r.header("cache-control"), "no-cache");
    assert_eq!(
        r.text,
        "data: {\"index\":1,\"big\":\"1000000000000\"}\n\ndata: {\"index\":2,\"big\":\"2000000000000\"}\n\n"
    );
}

#[tokio::test]
async fn route_can_ask_for_a_single_json_array() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/count:array?count=3").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/json");
    let indexes: Vec<i64> = r
        .json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.text))
        .iter()
        .map(|m| m["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3]);
    // An empty stream is an empty array.
    let r = gw.get("/v1/count:array?count=0").await;
    assert_eq!(r.text, "[]");
    // Accept still wins over the route's default.
    let r = gw
        .request(
            "GET",
            "/v1/count:array?count=1",
            &[("accept", "application/x-ndjson")],
            None,
        )
        .await;
    assert_eq!(r.header("content-type"), "application/x-ndjson");
    assert_eq!(lines(&r.text).len(), 1);
}

#[tokio::test]
async fn mid_stream_error_ends_with_an_error_line() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/count?count=5&failAfter=2&failCode=10").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let l = lines(&r.text);
    assert_eq!(l.len(), 3, "{}", r.text);
    assert_eq!(l[1]["result"]["index"], 2);
    assert_eq!(
        l[2],
        json!({"error": {"code": 10, "message": "failed after 2 ticks", "details": []}})
    );

    let r = gw
        .request(
            "GET",
            "/v1/count?count=5&failAfter=1&failCode=10",
            &[("accept", "text/event-stream")],
            None,
        )
        .await;
    assert!(
        r.text.ends_with(
            "event: error\ndata: {\"code\":10,\"message\":\"failed after 1 ticks\",\"details\":[]}\n\n"
        ),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn mid_stream_error_in_an_array_aborts_the_body() {
    let (gw, _) = start("").await;
    let mut s = RawStream::open(
        &gw,
        "GET /v1/count:array?count=5&failAfter=2&failCode=10&intervalMs=100 HTTP/1.1",
        b"",
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    s.read_to_end().await;
    assert!(
        s.body.starts_with(b"[{"),
        "{:?}",
        String::from_utf8_lossy(&s.body)
    );
    // No closing bracket and no final chunk: the client sees a broken answer,
    // not a short but valid array.
    assert!(!s.complete(), "the body should have been cut off");
    assert!(serde_json::from_slice::<Value>(&s.body).is_err());
}

#[tokio::test]
async fn error_before_the_first_message_is_an_ordinary_error_answer() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/count?count=5&failCode=5").await;
    r.assert_error(404, 5, "failed before any tick");
}

#[tokio::test]
async fn client_disconnect_cancels_the_backend_stream() {
    let (gw, probe) = start("").await;
    let mut s = RawStream::open(
        &gw,
        "GET /v1/count?count=100000&intervalMs=10 HTTP/1.1",
        b"",
        None,
    )
    .await;
    let got = s.read_lines(2).await;
    assert!(got.len() >= 2);
    assert_eq!(probe.cancelled.load(Ordering::SeqCst), 0);
    drop(s);
    assert!(
        probe.wait_cancelled(1, Duration::from_secs(3)).await,
        "the backend stream was not cancelled after the client hung up"
    );
    let sent = probe.sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        probe.sent.load(Ordering::SeqCst),
        sent,
        "the backend kept producing"
    );
}

#[tokio::test]
async fn slow_reader_slows_the_backend_instead_of_buffering() {
    const COUNT: u64 = 1500;
    const PAYLOAD: u64 = 32 * 1024;
    let (gw, probe) = start("").await;
    let rss_before = rss_bytes();
    let mut s = RawStream::open(
        &gw,
        &format!("GET /v1/count?count={COUNT}&payloadBytes={PAYLOAD} HTTP/1.1"),
        b"",
        Some(64 * 1024),
    )
    .await;
    assert_eq!(s.status, 200);
    // The client stops reading; give an unbounded pipeline every chance to
    // pull the whole stream (48 MiB) into memory.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = probe.sent_bytes.load(Ordering::SeqCst);
    let rss_stalled = rss_bytes();
    let in_flight = sent.saturating_sub(s.body.len() as u64);
    eprintln!(
        "slow reader: backend produced {} KiB while the client had read {} KiB; RSS {} MiB -> {} MiB",
        sent / 1024,
        s.body.len() / 1024,
        rss_before / (1 << 20),
        rss_stalled / (1 << 20)
    );
    // What can be in flight: the HTTP/2 windows between the backend and the
    // gateway, a few messages in the gateway, and the kernel's socket buffers.
    assert!(
        in_flight < 24 * 1024 * 1024,
        "{} MiB produced but unread: the stream is not backpressured",
        in_flight / (1 << 20)
    );
    assert!(
        probe.sent.load(Ordering::SeqCst) < COUNT,
        "the backend finished while nobody read"
    );
    assert!(
        rss_stalled.saturating_sub(rss_before) < 40 * 1024 * 1024,
        "memory grew by {} MiB while the client stalled",
        rss_stalled.saturating_sub(rss_before) / (1 << 20)
    );
    // Reading again lets the stream run to its end, nothing lost.
    s.read_to_end().await;
    assert!(s.complete());
    let n = s.body.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(n, COUNT);
}

#[tokio::test]
async fn client_stream_over_http1_chunked_sends_one_message_per_line() {
    let (gw, _) = start("").await;
    let chunks: &[&str] = &[
        "{\"value\": 1}\n{\"val",
        "ue\": \"2\"}\n\n",
        "{\"value\": 3}",
    ];
    let mut body = Vec::new();
    for c in chunks {
        body.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = gw
        .raw(
            "POST /v1/sum HTTP/1.1\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked",
            &body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"sum": "6", "count": 3}));
}

#[tokio::test]
async fn client_stream_over_http2() {
    let (gw, _) = start("").await;
    let mut call = H2Call::start(
        &gw,
        "POST",
        "/v1/sum",
        &[("content-type", "application/x-ndjson")],
    )
    .await;
    for v in 1..=4 {
        call.send(&format!("{{\"value\": {v}}}\n")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.finish();
    assert_eq!(call.response().await.status(), 200);
    call.read_lines(0).await;
    let mut all = Vec::new();
    {
        use http_body_util::BodyExt as _;
        let resp = call.response.as_mut().unwrap();
        while let Some(Ok(f)) = resp.body_mut().frame().await {
            if let Ok(d) = f.into_data() {
                all.extend_from_slice(&d);
            }
        }
    }
    let v: Value = serde_json::from_slice(&all).unwrap();
    assert_eq!(v, json!({"sum": "10", "count": 4}));
}

#[tokio::test]
async fn malformed_line_aborts_the_stream_with_400_naming_the_line() {
    let (gw, probe) = start("").await;
    // Over HTTP/2 the first line is already on its way to the backend when
    // the second turns out malformed: the call is cancelled.
    let mut call = H2Call::start(
        &gw,
        "POST",
        "/v1/sum",
        &[("content-type", "application/x-ndjson")],
    )
    .await;
    call.send("{\"value\": 1}\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    call.send("{\"value\": \"x\"}\n").await;
    let status = call.response().await.status();
    assert_eq!(status, 400);
    call.read_lines(1).await;
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body["code"], 3);
    let msg = body["message"].as_str().unwrap();
    assert!(msg.starts_with("line 2 of the request body: "), "{msg}");
    assert!(
        probe.wait_cancelled(1, Duration::from_secs(3)).await,
        "the backend did not see the call cancelled"
    );

    // Over HTTP/1.1 too.
    let r = gw
        .request(
            "POST",
            "/v1/sum",
            &[("content-type", "application/x-ndjson")],
            Some(b"{\"value\": 1}\n\n{\"value\": 2}\n{oops\n".to_vec()),
        )
        .await;
    r.assert_error(400, 3, "line 4 of the request body");
}

#[tokio::test]
async fn client_stream_refuses_non_json_bodies() {
    let (gw, _) = start("").await;
    let r = gw
        .request(
            "POST",
            "/v1/sum",
            &[("content-type", "text/plain")],
            Some(b"{\"value\":1}".to_vec()),
        )
        .await;
    r.assert_error(415, 3, "application/x-ndjson");
}

#[tokio::test]
async fn backend_error_of_a_client_stream_is_mapped() {
    let (gw, _) = start("").await;
    let r = gw
        .request(
            "POST",
            "/v1/sum",
            &[],
            Some(b"{\"value\": 1}\n{\"value\": -5}\n".to_vec()),
        )
        .await;
    r.assert_error(400, 3, "negative number -5");
}

#[tokio::test]
async fn bidi_over_http2_answers_while_the_request_is_still_open() {
    let (gw, _) = start("").await;
    let mut call = H2Call::start(&gw, "POST", "/v1/chat", &[]).await;
    call.send("{\"text\": \"hello\"}\n").await;
    assert_eq!(call.response().await.status(), 200);
    assert!(call.read_lines(1).await, "no reply to the first message");
    // The request is still open: the reply came back before it ended.
    call.send("{\"text\": \"again\"}\n").await;
    assert!(call.read_lines(2).await, "no reply to the second message");
    call.finish();
    assert!(
        !call.read_lines(3).await,
        "the stream should end with the request"
    );
    assert_eq!(
        call.lines(),
        vec![
            json!({"result": {"text": "echo: hello", "seq": 1}}),
            json!({"result": {"text": "echo: again", "seq": 2}}),
        ]
    );
}

#[tokio::test]
async fn bidi_malformed_line_over_http2_is_an_error_line_naming_it() {
    let (gw, probe) = start("").await;
    let mut call = H2Call::start(&gw, "POST", "/v1/chat", &[]).await;
    call.send("{\"text\": \"hello\"}\n").await;
    assert!(call.read_lines(1).await);
    call.send("{\"text\": 7}\n").await;
    call.read_lines(2).await;
    let l = call.lines();
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[1]["error"]["code"], 3);
    let msg = l[1]["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("line 2 of the request body"), "{msg}");
    assert!(probe.wait_cancelled(1, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn bidi_over_http1_answers_after_the_request_ends() {
    let (gw, _) = start("").await;
    let r = gw
        .request(
            "POST",
            "/v1/chat",
            &[("content-type", "application/x-ndjson")],
            Some(b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n".to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seqs: Vec<i64> = lines(&r.text)
        .iter()
        .map(|l| l["result"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // A malformed line is found before the call: a plain 400.
    let r = gw
        .request(
            "POST",
            "/v1/chat",
            &[],
            Some(b"{\"text\": \"a\"}\n[1]\n".to_vec()),
        )
        .await;
    r.assert_error(400, 3, "line 2 of the request body");
    // A failure from the backend mid-stream is an error line.
    let r = gw
        .request(
            "POST",
            "/v1/chat",
            &[],
            Some(b"{\"text\": \"a\"}\n{\"text\": \"fail\"}\n".to_vec()),
        )
        .await;
    let l = lines(&r.text);
    assert_eq!(l.last().unwrap()["error"]["code"], 10, "{}", r.text);
}
