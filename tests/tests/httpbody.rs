//! `google.api.HttpBody` in and out, and multipart uploads, against a real
//! backend: raw replies keep their bytes and content type (also streamed),
//! raw requests pass the body and its type in (also streamed to a
//! client-streaming method), and form parts fill bytes and HttpBody fields.

use gateway_tests::streaming::{fnv_hex, multipart_body, start};
use serde_json::json;

#[tokio::test]
async fn httpbody_reply_goes_out_raw_with_its_content_type() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/reports/2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "text/csv");
    assert_eq!(r.text, "id,name\n1,row 1\n2,row 2\n");
}

#[tokio::test]
async fn streamed_httpbody_reply_is_the_raw_bytes_of_every_message() {
    let (gw, _) = start("").await;
    let r = gw.get("/v1/reports/3:stream").await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The first message names the type; the rest only carry data.
    assert_eq!(r.header("content-type"), "text/csv");
    assert_eq!(r.text, "id,name\n1,row 1\n2,row 2\n3,row 3\n");
}

#[tokio::test]
async fn raw_request_body_and_its_content_type_are_passed_in() {
    let (gw, _) = start("").await;
    let png: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let r = gw
        .request(
            "POST",
            "/v1/uploads",
            &[("content-type", "image/png")],
            Some(png.clone()),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"size": "3000", "contentType": "image/png", "messages": 1, "digest": fnv_hex(&png)})
    );
}

#[tokio::test]
async fn raw_body_fills_an_httpbody_field_beside_path_variables() {
    let (gw, _) = start("").await;
    let r = gw
        .request(
            "POST",
            "/v1/files/notes.txt",
            &[("content-type", "text/plain; charset=utf-8")],
            Some(b"hello".to_vec()),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"size": "5", "contentType": "text/plain; charset=utf-8", "name": "notes.txt", "digest": fnv_hex(b"hello")})
    );
}

#[tokio::test]
async fn raw_body_over_the_limit_is_refused_with_413() {
    let (gw, _) = start("max_body_bytes = 1000").await;
    let r = gw
        .request(
            "POST",
            "/v1/uploads",
            &[("content-type", "application/octet-stream")],
            Some(vec![7; 1001]),
        )
        .await;
    r.assert_error(413, 3, "larger than the limit of 1000 bytes");
}

#[tokio::test]
async fn raw_upload_streams_in_chunks_to_a_client_streaming_method() {
    // The body limit does not apply: the upload is never held whole.
    let (gw, _) = start("max_body_bytes = 1000").await;
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let mut body = Vec::new();
    for chunk in data.chunks(100_000) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = gw
        .raw(
            "POST /v1/uploads:stream HTTP/1.1\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked",
            &body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = &r.json;
    assert_eq!(v["size"], json!("1048576"));
    assert_eq!(v["digest"], json!(fnv_hex(&data)));
    assert_eq!(v["contentType"], "application/x-tar");
    assert!(
        v["messages"].as_i64().unwrap() >= 16,
        "64 KiB chunks at most: {v}"
    );
}

#[tokio::test]
async fn declared_large_upload_to_a_client_streaming_route_is_not_refused() {
    // curl -T and -F declare Content-Length; the streaming route reads the
    // body message by message, so the whole-body limit does not apply.
    let (gw, _) = start("max_body_bytes = 1000").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let r = gw
        .request(
            "POST",
            "/v1/uploads:stream",
            &[("content-type", "application/x-tar")],
            Some(data.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["size"], json!("300000"));
    assert_eq!(r.json["digest"], json!(fnv_hex(&data)));
}

#[tokio::test]
async fn multipart_parts_fill_bytes_httpbody_and_scalar_fields() {
    let (gw, _) = start("").await;
    let body = multipart_body(
        "XyZ",
        &[
            ("title", None, None, b"Holiday"),
            ("tags", None, None, b"a"),
            ("tags", None, None, b"b"),
            (
                "data",
                Some("raw.bin"),
                Some("application/octet-stream"),
                &[1, 2, 3, 0, 255],
            ),
            (
                "attachment",
                Some("photo.jpg"),
                Some("image/jpeg"),
                b"JPEGDATA",
            ),
        ],
    );
    let r = gw
        .request(
            "POST",
            "/v1/forms",
            &[("content-type", "multipart/form-data; boundary=XyZ")],
            Some(body),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({
            "size": "13",
            "title": "Holiday",
            "digest": fnv_hex(&[1, 2, 3, 0, 255]),
            "attachmentType": "image/jpeg",
            "tags": ["a", "b"]
        })
    );
}

#[tokio::test]
async fn multipart_upload_streams_file_chunks_to_a_client_streaming_method() {
    let (gw, _) = start("").await;
    let file: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let body = multipart_body(
        "b0undary",
        &[
            ("title", None, None, b"Big"),
            ("data", Some("big.bin"), None, &file),
        ],
    );
    let r = gw
        .request(
            "POST",
            "/v1/forms:stream",
            &[("content-type", "multipart/form-data; boundary=b0undary")],
            Some(body),
        )
        .await;
    let v = r.ok();
    assert_eq!(v["size"], json!("300000"));
    assert_eq!(v["title"], "Big");
    assert_eq!(v["digest"], json!(fnv_hex(&file)));
    assert!(v["messages"].as_i64().unwrap() > 1, "{v}");
}

#[tokio::test]
async fn multipart_part_without_a_field_is_rejected_by_name() {
    let (gw, _) = start("").await;
    let body = multipart_body("q", &[("nope", None, None, b"x")]);
    let r = gw
        .request(
            "POST",
            "/v1/forms",
            &[("content-type", "multipart/form-data; boundary=q")],
            Some(body),
        )
        .await;
    r.assert_error(
        400,
        3,
        "multipart part \"nope\": streaming.v1.FormRequest has no such field",
    );
}

#[tokio::test]
async fn multipart_is_refused_where_the_route_did_not_opt_in() {
    // A browser may send multipart cross-site without a preflight; only
    // routes that ask for it read it.
    let (gw, _) = start("").await;
    let body = multipart_body("q", &[("title", None, None, b"x")]);
    let r = gw
        .request(
            "POST",
            "/v1/shelves/s/books",
            &[("content-type", "multipart/form-data; boundary=q")],
            Some(body),
        )
        .await;
    r.assert_error(415, 3, "send application/json");
}

#[tokio::test]
async fn json_still_works_on_a_multipart_route() {
    let (gw, _) = start("").await;
    let r = gw
        .post("/v1/forms", &json!({"title": "t", "data": "AQID"}))
        .await;
    assert_eq!(r.ok()["title"], "t");
    assert_eq!(r.ok()["size"], "3");
}
