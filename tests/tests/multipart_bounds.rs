//! Multipart framing is bounded: bytes before the first boundary and one
//! part's header block. A client-streaming multipart route used to buffer
//! both without limit (256 MiB sent, 520 MiB more memory, no answer).
//!
//! Memory is this process's RSS. The gateway runs in this process, but the
//! client below sends from one reused 64 KiB buffer, so what grows is the
//! gateway; and this file holds one test, so nothing else runs beside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::streaming::{multipart_body, rss_bytes, start};
use gateway_tests::{Reply, TestGateway};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FLOOD: usize = 64 << 20;

/// Sends a multipart body of `FLOOD` bytes: `prefix`, then `fill` bytes
/// with no boundary among them, while reading the answer. Returns the
/// answer and how much of the body had been sent when it came.
async fn flood(gw: &TestGateway, path: &str, prefix: &[u8], fill: u8) -> (Reply, usize) {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B0und\r\nContent-Length: {FLOOD}\r\n\r\n"
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        let prefix = prefix.to_vec();
        async move {
            wr.write_all(head.as_bytes()).await?;
            wr.write_all(&prefix).await?;
            sent.store(prefix.len(), Ordering::SeqCst);
            let chunk = vec![fill; 64 * 1024];
            while sent.load(Ordering::SeqCst) < FLOOD {
                let n = chunk.len().min(FLOOD - sent.load(Ordering::SeqCst));
                wr.write_all(&chunk[..n]).await?;
                sent.fetch_add(n, Ordering::SeqCst);
            }
            std::io::Result::Ok(())
        }
    });
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let reply = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = rd.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "closed without an answer");
            raw.extend_from_slice(&buf[..n]);
            if let Some(r) = parse(&raw) {
                return r;
            }
        }
    })
    .await
    .expect("an answer within 30 s");
    let at = sent.load(Ordering::SeqCst);
    writer.abort();
    (reply, at)
}

/// A complete answer with a Content-Length, once `raw` holds it.
fn parse(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = http::HeaderMap::new();
    for line in head.split("\r\n").skip(1) {
        let (k, v) = line.split_once(':')?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            v.trim().parse().ok()?,
        );
    }
    let len: usize = headers.get("content-length")?.to_str().ok()?.parse().ok()?;
    let body = raw.get(end + 4..end + 4 + len)?;
    Some(Reply::new("flood".to_owned(), status, headers, body))
}

#[tokio::test]
async fn multipart_framing_that_never_ends_is_refused_early_without_buffering() {
    let (gw, _) = start("").await;
    // Warm up: a real upload, so the baseline includes what any upload costs.
    let file = vec![7u8; 300_000];
    let body = multipart_body(
        "B0und",
        &[
            ("title", None, None, b"t"),
            ("data", Some("f"), None, &file),
        ],
    );
    let r = gw
        .request(
            "POST",
            "/v1/forms:stream",
            &[("content-type", "multipart/form-data; boundary=B0und")],
            Some(body),
        )
        .await;
    assert_eq!(r.ok()["size"], "300000");
    let before = rss_bytes();

    // No boundary at all.
    let started = Instant::now();
    let (r, sent) = flood(&gw, "/v1/forms:stream", b"", b'x').await;
    r.assert_error(
        400,
        3,
        "the multipart body has more than 4096 bytes before its first boundary (limits.max_multipart_preamble_bytes)",
    );
    assert!(sent < FLOOD, "answered only after the whole body was sent");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A part header that never ends.
    let (r, sent) = flood(
        &gw,
        "/v1/forms:stream",
        b"--B0und\r\nContent-Disposition: form-data; name=\"data\"; filename=\"f\"\r\nX-Long: ",
        b'a',
    )
    .await;
    r.assert_error(
        413,
        3,
        "a multipart part's headers are larger than 8192 bytes (limits.max_multipart_part_header_bytes)",
    );
    assert!(sent < FLOOD, "answered only after the whole body was sent");

    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} KiB", grown / 1024);
    assert!(
        grown < 16 << 20,
        "RSS grew by {} MiB while refusing",
        grown >> 20
    );
    // The unary multipart route, bounded by max_body_bytes already, keeps
    // the same framing bounds.
    let mut pre = vec![b'x'; 5000];
    pre.extend(multipart_body("B0und", &[("title", None, None, b"t")]));
    gw.request(
        "POST",
        "/v1/forms",
        &[("content-type", "multipart/form-data; boundary=B0und")],
        Some(pre),
    )
    .await
    .assert_error(400, 3, "before its first boundary");
    // A short preamble is allowed (RFC 2046).
    let mut pre = b"This is a multi-part message in MIME format.\r\n".to_vec();
    pre.extend(multipart_body("B0und", &[("title", None, None, b"t")]));
    let r = gw
        .request(
            "POST",
            "/v1/forms",
            &[("content-type", "multipart/form-data; boundary=B0und")],
            Some(pre),
        )
        .await;
    assert_eq!(r.ok()["title"], "t");

    // Both bounds are configurable.
    let (gw, _) = start(
        "\n[limits]\nmax_multipart_preamble_bytes = 16\nmax_multipart_part_header_bytes = 40",
    )
    .await;
    let mut pre = b"This is a multi-part message in MIME format.\r\n".to_vec();
    pre.extend(multipart_body("B0und", &[("title", None, None, b"t")]));
    gw.request(
        "POST",
        "/v1/forms",
        &[("content-type", "multipart/form-data; boundary=B0und")],
        Some(pre),
    )
    .await
    .assert_error(400, 3, "more than 16 bytes before its first boundary");
    let body = multipart_body(
        "B0und",
        &[("data", Some("a-long-file-name.bin"), None, b"x")],
    );
    gw.request(
        "POST",
        "/v1/forms",
        &[("content-type", "multipart/form-data; boundary=B0und")],
        Some(body),
    )
    .await
    .assert_error(413, 3, "larger than 40 bytes");
}
