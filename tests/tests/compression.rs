//! Content codings end to end: compressed request bodies on every body path,
//! a zip bomb refused at the body limit with bounded memory.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::streaming::{rss_bytes, start};
use gateway_tests::{Reply, TestGateway};
use serde_json::json;
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
