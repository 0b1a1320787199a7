//! Response shaping from routes.toml (success status, headers from reply
//! fields and metadata), problem+json errors chosen by `Accept`, field
//! masks filled from PATCH bodies, and the load-time checks of those keys.

use gateway::snapshot::Snapshot;
use gateway_tests::streaming::{descriptors, start, CONFIG};
use gateway_tests::{remove_temp_parent, toml_path, write_config};
use serde_json::json;

#[tokio::test]
async fn success_status_and_headers_come_from_the_route() {
    let (gw, _) = start("").await;
    let r = gw
        .post("/v1/shelves/s1/books?bookId=b7", &json!({"title": "Dune"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("location"), "/v1/shelves/s1/books/b7");
    assert_eq!(r.header("etag"), "v1");
    assert_eq!(
        r.json,
        json!({"name": "shelves/s1/books/b7", "title": "Dune"})
    );
    // Metadata still goes back as Grpc-Metadata-*, as on every route.
    assert_eq!(r.header("grpc-metadata-x-etag"), "v1");
}

#[tokio::test]
async fn header_is_left_out_when_its_field_is_empty() {
    let (gw, _) = start("").await;
    let r = gw
        .post("/v1/shelves/s1/books", &json!({"title": "Dune"}))
        .await;
    assert_eq!(r.status, 201);
    assert!(!r.headers.contains_key("location"), "{:?}", r.headers);
    assert_eq!(r.header("etag"), "v1");
}

#[tokio::test]
async fn problem_json_is_the_error_format_when_accept_asks_for_it() {
    let (gw, _) = start("").await;
    let accept = [("accept", "application/problem+json")];
    let r = gw.request("GET", "/v1/nowhere", &accept, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(
        r.json,
        json!({"type": "about:blank", "title": "Not Found", "status": 404,
               "detail": "no route for GET /v1/nowhere", "code": 5, "details": []})
    );
    // Backend errors too, and before a stream's first message.
    let r = gw
        .request("GET", "/v1/count?failCode=7", &accept, None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json["detail"], "failed before any tick");
    assert_eq!(r.json["code"], 7);
    // Without the Accept header: google.rpc.Status, as always.
    let r = gw.get("/v1/nowhere").await;
    r.assert_error(404, 5, "no route");
}

#[tokio::test]
async fn patch_fills_update_mask_from_the_body_keys() {
    let (gw, _) = start("").await;
    let r = gw
        .patch(
            "/v1/books/shelves/s/books/b",
            &json!({"title": "New", "details": {"pages": 3, "labels": {"k": "v"}}}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({
            "book": {"name": "shelves/s/books/b", "title": "New", "details": {"pages": 3, "labels": {"k": "v"}}},
            "updateMask": "details.labels,details.pages,title"
        })
    );
}

#[tokio::test]
async fn update_mask_sent_by_the_client_wins() {
    let (gw, _) = start("").await;
    let r = gw
        .patch(
            "/v1/books/shelves/s/books/b?updateMask=title",
            &json!({"title": "New", "author": "X"}),
        )
        .await;
    assert_eq!(r.ok()["updateMask"], "title");
}

fn load_errors(routes: &str) -> String {
    let text = CONFIG
        .replace("{extra}", "")
        .replace("{backend}", "127.0.0.1:1")
        .replace("{descriptors}", &toml_path(&descriptors()))
        + routes;
    let path = write_config(&text);
    let result = Snapshot::load(&path);
    remove_temp_parent(&path);
    match result {
        Ok(_) => panic!("config loaded, but should not have:\n{routes}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_shaping_keys_are_reported_with_their_route() {
    let e = load_errors(
        r#"
[[routes]]
method = "GET"
path = "/v1/bad/a"
grpc = "streaming.v1.Library/GetBook"
success_status = 302
stream_framing = "ndjson"
response_headers = { Location = "/v1/{nope}", Content-Type = "x" }

[[routes]]
method = "POST"
path = "/v1/bad/b"
grpc = "streaming.v1.Streams/Sum"

[[routes]]
method = "GET"
path = "/v1/bad/c"
grpc = "streaming.v1.Streams/Count"
stream_framing = "xml"
response_headers = { X-Index = "{index}" }
"#,
    );
    for needle in [
        "success_status: 302 is not a success status",
        "stream_framing: streaming.v1.Library.GetBook does not stream its replies",
        "response_headers.Location: {nope}: streaming.v1.Book has no field \"nope\"",
        "response_headers.Content-Type: \"content-type\" is set by the gateway itself",
        "streaming.v1.Streams.Sum is client-streaming: set body = \"*\"",
        "stream_framing: \"xml\" is not a stream framing",
        "response_headers.X-Index: a streaming reply has no message",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

#[tokio::test]
async fn openapi_path_may_not_shadow_a_route() {
    let text = CONFIG
        .replace("{extra}", "")
        .replace("{backend}", "127.0.0.1:1")
        .replace("{descriptors}", &toml_path(&descriptors()))
        .replace("path = \"/openapi.json\"", "path = \"/v1/count\"");
    let path = write_config(&text);
    let e = Snapshot::load(&path).unwrap_err().to_string();
    remove_temp_parent(&path);
    assert!(
        e.contains("openapi.path: \"/v1/count\" is also matched by a GET route"),
        "{e}"
    );
}
