//! Content codings end to end: compressed request bodies on every body path,
//! a zip bomb refused at the body limit with bounded memory, answers
//! compressed per Accept-Encoding (streams flushed message by message).

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::streaming::{rss_bytes, start, RawStream};
use gateway_tests::{Reply, TestGateway};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 20);
            e.write_all(data).unwrap();
            e.into_inner()
        }
        "zstd" => zstd::stream::encode_all(data, 3).unwrap(),
        other => panic!("no coding {other}"),
    }
}

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map(drop),
        "deflate" => flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .map(drop),
        "br" => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .map(drop),
        "zstd" => zstd::stream::read::Decoder::new(data)
            .unwrap()
            .read_to_end(&mut out)
            .map(drop),
        other => panic!("no coding {other}"),
    }
    .unwrap_or_else(|e| panic!("{coding} answer does not decode: {e}"));
    out
}

/// Raw bytes of an answer (reqwest here has no decompression of its own).
async fn fetch(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = gw.client.request(method, gw.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn compressed_json_bodies_are_read_in_every_coding() {
    let gw = TestGateway::echo("").await;
    let body = serde_json::to_vec(&json!({"stringField": "packed", "int32Field": 7})).unwrap();
    for coding in ["gzip", "br", "zstd", "deflate"] {
        let r = gw
            .request(
                "POST",
                "/v1/echo",
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", coding),
                ],
                Some(encode(coding, &body)),
            )
            .await;
        assert_eq!(r.status, 200, "{coding}: {}", r.text);
        assert_eq!(r.ok()["stringField"], "packed", "{coding}");
        assert_eq!(r.ok()["int32Field"], 7, "{coding}");
    }
}

#[tokio::test]
async fn an_unknown_coding_is_415_and_corrupt_data_is_400() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "POST",
            "/v1/echo",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "compress"),
            ],
            Some(b"{}".to_vec()),
        )
        .await;
    r.assert_error(415, 3, "content encoding \"compress\" is not supported");
    assert_eq!(r.header("accept-encoding"), "gzip, br, zstd, deflate");
    assert!(r.message().contains("gzip, br, zstd"), "{}", r.message());
    let r = gw
        .request(
            "POST",
            "/v1/echo",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Some(b"{\"stringField\": \"not gzip\"}".to_vec()),
        )
        .await;
    r.assert_error(400, 3, "the body is not valid gzip data");
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_at_the_body_limit_without_growing_memory() {
    let gw = TestGateway::echo("").await;
    // 1 GiB of zeros as 1024 gzip members of 1 MiB each (one gzip file, as
    // `cat a.gz b.gz` makes), about 1 MB on the wire, sent as it is made.
    const MEMBERS: usize = 1024;
    let member = encode("gzip", &vec![0u8; 1 << 20]);
    let total = member.len() * MEMBERS;
    assert!(total < 2 << 20, "{total}");
    let warm = gw
        .request(
            "POST",
            "/v1/echo",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Some(encode("gzip", b"{}")),
        )
        .await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    let before = rss_bytes();

    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {total}\r\n\r\n"
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            wr.write_all(head.as_bytes()).await?;
            for _ in 0..MEMBERS {
                wr.write_all(&member).await?;
                sent.fetch_add(member.len(), Ordering::SeqCst);
            }
            std::io::Result::Ok(())
        }
    });
    let mut out = Vec::new();
    let started = Instant::now();
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
            .await
            .expect("an answer within 20s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let reply = Reply::new(
        "POST /v1/echo (gzip bomb)".to_owned(),
        status,
        http::HeaderMap::new(),
        body.as_bytes(),
    );
    reply.assert_error(
        413,
        3,
        "request body is larger than the limit of 4194304 bytes",
    );
    eprintln!(
        "refused after {:?}, {} of {total} compressed bytes sent",
        started.elapsed(),
        sent.load(Ordering::SeqCst)
    );
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} KiB", grown / 1024);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB refusing a zip bomb",
        grown >> 20
    );
}

#[tokio::test]
async fn a_compressed_ndjson_client_stream_is_read_line_by_line() {
    let (gw, _) = start("").await;
    let body = encode(
        "gzip",
        b"{\"value\": 1}\n{\"value\": \"2\"}\n{\"value\": 3}\n",
    );
    let r = gw
        .request(
            "POST",
            "/v1/sum",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "gzip"),
            ],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"sum": "6", "count": 3}));
}

#[tokio::test]
async fn a_large_answer_is_compressed_as_accept_encoding_asks() {
    let gw = TestGateway::echo("").await;
    let big = "compressible ".repeat(1000);
    let req = serde_json::to_vec(&json!({"stringField": big})).unwrap();
    let ct = ("content-type", "application/json");
    let (status, headers, identity) =
        fetch(&gw, "POST", "/v1/echo", &[ct], Some(req.clone())).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    let identity: Value = serde_json::from_slice(&identity).unwrap();
    assert_eq!(identity["stringField"], big);
    for coding in ["gzip", "br", "zstd"] {
        let ae = ("accept-encoding", coding);
        let (status, headers, body) =
            fetch(&gw, "POST", "/v1/echo", &[ct, ae], Some(req.clone())).await;
        assert_eq!(status, 200, "{coding}");
        assert_eq!(headers["content-encoding"], coding);
        assert!(headers["vary"]
            .to_str()
            .unwrap()
            .contains("accept-encoding"));
        assert!(body.len() < big.len() / 4, "{coding}: {} bytes", body.len());
        let decoded: Value = serde_json::from_slice(&decode(coding, &body)).unwrap();
        assert_eq!(decoded, identity, "{coding}");
    }
    // Preference among codings the client rates equally: zstd, br, gzip.
    let ae = ("accept-encoding", "gzip, deflate, br, zstd");
    let (_, headers, _) = fetch(&gw, "POST", "/v1/echo", &[ct, ae], Some(req)).await;
    assert_eq!(headers["content-encoding"], "zstd");
}

#[tokio::test]
async fn small_answers_and_clients_without_accept_encoding_get_identity() {
    let gw = TestGateway::echo("").await;
    let (status, headers, body) = fetch(
        &gw,
        "GET",
        "/v1/echo?stringField=small",
        &[("accept-encoding", "gzip, br, zstd")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["stringField"],
        "small"
    );
    // Errors too are small.
    let (status, headers, _) = fetch(
        &gw,
        "GET",
        "/v1/nowhere",
        &[("accept-encoding", "gzip")],
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn compression_can_be_turned_off_or_limited_to_some_codings() {
    let gw = TestGateway::echo("compression = { enabled = false }").await;
    let big = "x".repeat(5000);
    let req = serde_json::to_vec(&json!({"stringField": big})).unwrap();
    let hs = [
        ("content-type", "application/json"),
        ("accept-encoding", "gzip"),
    ];
    let (_, headers, _) = fetch(&gw, "POST", "/v1/echo", &hs, Some(req.clone())).await;
    assert!(headers.get("content-encoding").is_none());
    let gw = TestGateway::echo("compression = { algorithms = [\"gzip\"], min_bytes = 100 }").await;
    let hs = [
        ("content-type", "application/json"),
        ("accept-encoding", "br, gzip;q=0.5"),
    ];
    let (_, headers, _) = fetch(&gw, "POST", "/v1/echo", &hs, Some(req)).await;
    assert_eq!(headers["content-encoding"], "gzip");
}

#[tokio::test]
async fn a_compressed_ndjson_stream_still_flushes_each_message() {
    let (gw, _) = start("").await;
    let started = Instant::now();
    let mut s = RawStream::open(
        &gw,
        "GET /v1/count?count=3&intervalMs=400 HTTP/1.1\r\nAccept-Encoding: gzip",
        b"",
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-encoding").as_deref(), Some("gzip"));
    // Read until the compressed bytes so far decode to a whole line.
    let first_at = loop {
        let mut d = flate2::write::GzDecoder::new(Vec::new());
        let _ = d.write_all(&s.body);
        let _ = d.flush();
        if d.get_ref().contains(&b'\n') {
            let line = String::from_utf8_lossy(d.get_ref()).into_owned();
            assert!(line.starts_with("{\"result\":{\"index\":1"), "{line}");
            break started.elapsed();
        }
        assert!(
            s.read_some(64 * 1024).await,
            "the stream ended before a line decoded"
        );
    };
    s.read_to_end().await;
    let all_at = started.elapsed();
    assert!(s.complete());
    let text = String::from_utf8(decode("gzip", &s.body)).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        first_at < Duration::from_millis(900) && all_at >= Duration::from_millis(1100),
        "first line after {first_at:?}, whole stream after {all_at:?}"
    );
}

#[tokio::test]
async fn server_sent_events_are_compressed_and_flushed() {
    let (gw, _) = start("").await;
    let mut s = RawStream::open(
        &gw,
        "GET /v1/count?count=2&intervalMs=300 HTTP/1.1\r\nAccept: text/event-stream\r\nAccept-Encoding: br",
        b"",
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-encoding").as_deref(), Some("br"));
    s.read_to_end().await;
    let text = String::from_utf8(decode("br", &s.body)).unwrap();
    assert_eq!(text.matches("data:").count(), 2, "{text}");
}

/// `config` with `compression = "gzip"` on its backend.
fn gzip_backend(config: &str) -> String {
    config.replacen(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\ncompression = \"gzip\"",
        1,
    )
}

#[tokio::test]
async fn a_gzip_backend_gets_compressed_unary_calls_and_its_gzip_replies_decode() {
    let pool = gateway_tests::testing_pool();
    let backend = gateway_tests::spawn_backend(gateway_tests::echo_server(&pool).with_gzip()).await;
    let config = gzip_backend(&gateway_tests::echo_config(""));
    let gw =
        TestGateway::start_with(&config, &backend, &gateway_tests::testing_descriptors()).await;
    // The backend (tonic, gzip on) sees the gateway's announcement...
    let r = gw.get("/v1/meta").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.ok()["metadata"]["grpc-encoding"], "gzip", "{}", r.text);
    assert_eq!(
        r.ok()["metadata"]["grpc-accept-encoding"],
        "gzip",
        "{}",
        r.text
    );
    // ...reads the compressed request, and its compressed reply decodes.
    let big = "compressible ".repeat(2000);
    let r = gw
        .post("/v1/echo", &json!({"stringField": big, "int32Field": 3}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.ok()["stringField"], big);
    assert_eq!(r.ok()["int32Field"], 3);
}

#[tokio::test]
async fn a_gzip_backend_streams_both_ways_compressed() {
    let probe = std::sync::Arc::new(gateway_tests::streaming::Probe::default());
    let backend =
        gateway_tests::spawn_backend(gateway_tests::streaming::server(probe).with_gzip()).await;
    let config = gzip_backend(&gateway_tests::streaming::CONFIG.replace("{extra}", ""));
    let gw =
        TestGateway::start_with(&config, &backend, &gateway_tests::streaming::descriptors()).await;
    // Server streaming: each reply message gzipped by the backend.
    let r = gw.get("/v1/count?count=3&label=z").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text.lines().count(), 3, "{}", r.text);
    assert!(r.text.contains("\"label\":\"z\""), "{}", r.text);
    // Client streaming: each request message gzipped by the gateway.
    let r = gw
        .request(
            "POST",
            "/v1/sum",
            &[("content-type", "application/x-ndjson")],
            Some(b"{\"value\": 1}\n{\"value\": 2}\n{\"value\": 39}\n".to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"sum": "42", "count": 3}));
}

#[tokio::test]
async fn head_answers_keep_the_coding_of_the_get_without_a_body() {
    let gw = TestGateway::echo("").await;
    let path = format!("/v1/echo?stringField={}", "y".repeat(3000));
    let ae = [("accept-encoding", "gzip")];
    let (status, get_headers, body) = fetch(&gw, "GET", &path, &ae, None).await;
    assert_eq!(status, 200);
    assert_eq!(get_headers["content-encoding"], "gzip");
    let json: Value = serde_json::from_slice(&decode("gzip", &body)).unwrap();
    assert_eq!(json["stringField"], "y".repeat(3000));
    let (status, headers, body) = fetch(&gw, "HEAD", &path, &ae, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(body.is_empty());
}
