//! The WebSocket bridge (docs/streaming.md, "WebSocket"): a GET route with
//! `websocket = true` upgrades, each text frame is one request message,
//! each reply one `{"result": ...}` frame, an empty frame ends the request
//! stream, and a `{"status": ...}` frame and a close end the call. Against
//! the streaming backend (`Streams/Chat`, bidirectional: echoes, "fail",
//! "flood N"; `Streams/Sum`, client streaming), and the demo's ShelfFeed
//! from headless Chromium, running the snippet docs/streaming.md shows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use gateway_tests::edge::{serve_pages, Pages};
use gateway_tests::streaming::{descriptors, server, Probe};
use gateway_tests::{spawn_backend, TestGateway};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const HMAC_SECRET_ENV: &str = "GATEWAY_WS_TEST_HMAC_SECRET";
const HMAC_SECRET: &str = "websocket-test-secret-0123456789abcdef";

/// `{backend}` is a unique name per test: metric series are process-global.
const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
max_body_bytes = 4096

[admin]
enabled = false

[auth]
query_param = "access_token"

[auth.issuers.hmac]
issuer = "https://ws.test"
algorithms = ["HS256"]
hmac_secret_env = "GATEWAY_WS_TEST_HMAC_SECRET"

[rate_limits.policies.one_a_minute]
key = "ip"
rate = 1
per = "1m"
burst = 1

[backends.{name}]
endpoints = ["{backend}"]
services = ["streaming.v1.Streams"]
timeout = "5s"
connect_timeout = "1s"

[[routes]]
method = "GET"
path = "/v1/chat"
grpc = "streaming.v1.Streams/Chat"
body = "*"
websocket = true

[[routes]]
method = "GET"
path = "/v1/chat:cors"
grpc = "streaming.v1.Streams/Chat"
body = "*"
websocket = true
cors = { allowed_origins = ["http://app.test"] }

[[routes]]
method = "GET"
path = "/v1/chat:private"
grpc = "streaming.v1.Streams/Chat"
body = "*"
websocket = true
auth = "required"

[[routes]]
method = "GET"
path = "/v1/chat:limited"
grpc = "streaming.v1.Streams/Chat"
body = "*"
websocket = true
rate_limit = ["one_a_minute"]

[[routes]]
method = "GET"
path = "/v1/sum/{value}"
grpc = "streaming.v1.Streams/Sum"
body = "*"
websocket = true
"#;

async fn start(name: &str) -> (TestGateway, std::sync::Arc<Probe>) {
    start_with(name, "").await
}

/// With `extra` tables after the routes.
async fn start_with(name: &str, extra: &str) -> (TestGateway, std::sync::Arc<Probe>) {
    std::env::set_var(HMAC_SECRET_ENV, HMAC_SECRET);
    let probe = std::sync::Arc::new(Probe::default());
    let backend = spawn_backend(server(probe.clone())).await;
    let config = CONFIG.replace("{name}", name) + extra;
    let gw = TestGateway::start_with(&config, &backend, &descriptors()).await;
    (gw, probe)
}

fn request(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

async fn open(gw: &TestGateway, path: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(request(gw, path, &[]))
        .await
        .unwrap_or_else(|e| panic!("upgrade of {path} failed: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The refused upgrade's status and JSON body.
async fn refused(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match tokio_tungstenite::connect_async(request(gw, path, headers)).await {
        Ok(_) => panic!("the upgrade of {path} was accepted"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
            (resp.status().as_u16(), json)
        }
        Err(e) => panic!("upgrade failed without an answer: {e}"),
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send frame");
}

/// The next data frame, as JSON.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("the socket is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The close frame's code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a close within 10s");
    match m {
        Some(Ok(Message::Close(Some(f)))) => (u16::from(f.code), f.reason.as_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn each_frame_is_answered_before_the_next_is_sent() {
    let (gw, _) = start("ws_interleave").await;
    let mut ws = open(&gw, "/v1/chat").await;
    for (i, word) in ["one", "two", "three"].into_iter().enumerate() {
        send(&mut ws, &json!({"text": word}).to_string()).await;
        assert_eq!(
            recv(&mut ws).await,
            json!({"result": {"text": format!("echo: {word}"), "seq": i + 1}})
        );
    }
    send(&mut ws, "").await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"status": {"code": 0, "message": "", "details": []}})
    );
    assert_eq!(closed(&mut ws).await, (1000, "OK".to_owned()));
}

#[tokio::test]
async fn after_the_half_close_the_remaining_replies_and_the_status_arrive() {
    let (gw, _) = start("ws_half_close").await;
    // Bidirectional: the replies to a message sent just before the
    // half-close still come, then the status.
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "flood 3"}"#).await;
    send(&mut ws, r#"{"text": "last"}"#).await;
    send(&mut ws, "").await;
    for seq in 1..=3 {
        assert_eq!(recv(&mut ws).await["result"]["seq"], seq);
    }
    assert_eq!(
        recv(&mut ws).await,
        json!({"result": {"text": "echo: last", "seq": 2}})
    );
    assert_eq!(recv(&mut ws).await["status"]["code"], 0);
    assert_eq!(closed(&mut ws).await.0, 1000);

    // Client streaming: the one reply comes after the half-close; the path
    // variable is applied to every message, as on NDJSON routes.
    let mut ws = open(&gw, "/v1/sum/5").await;
    send(&mut ws, "{}").await;
    send(&mut ws, r#"{"value": 99}"#).await;
    send(&mut ws, "").await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"result": {"sum": "10", "count": 2}})
    );
    assert_eq!(recv(&mut ws).await["status"]["code"], 0);
    assert_eq!(closed(&mut ws).await.0, 1000);
}

#[tokio::test]
async fn a_backend_error_mid_stream_ends_with_its_status_and_close_1011() {
    let (gw, _) = start("ws_backend_error").await;
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "hello"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: hello");
    send(&mut ws, r#"{"text": "fail"}"#).await;
    let status = recv(&mut ws).await;
    assert_eq!(
        status,
        json!({"status": {"code": 10, "message": "message 2 asked to fail", "details": []}})
    );
    assert_eq!(closed(&mut ws).await, (1011, "ABORTED".to_owned()));

    // Frames the client sends on while the call fails do not hide its status.
    for _ in 0..5 {
        let mut ws = open(&gw, "/v1/chat").await;
        send(&mut ws, r#"{"text": "fail"}"#).await;
        for i in 0..50 {
            if ws
                .send(Message::text(format!(r#"{{"text": "{i}"}}"#)))
                .await
                .is_err()
            {
                break;
            }
        }
        assert_eq!(recv(&mut ws).await["status"]["code"], 10);
        assert_eq!(closed(&mut ws).await.0, 1011);
    }
}

#[tokio::test]
async fn a_malformed_frame_ends_the_call_with_invalid_argument() {
    let (gw, probe) = start("ws_malformed").await;
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "fine"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["seq"], 1);
    send(&mut ws, r#"{"text": "#).await;
    let status = &recv(&mut ws).await["status"];
    assert_eq!(status["code"], 3, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("frame 2 of the request: "), "{message}");
    assert_eq!(closed(&mut ws).await.0, 1007);
    // The backend saw its call reset, not a clean end.
    assert!(probe.wait_cancelled(1, Duration::from_secs(5)).await);

    // A field the message does not have, and a binary frame.
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"nope": 1}"#).await;
    assert_eq!(recv(&mut ws).await["status"]["code"], 3);
    assert_eq!(closed(&mut ws).await.0, 1007);
    let mut ws = open(&gw, "/v1/chat").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut ws).await["status"]["code"], 3);
    assert_eq!(closed(&mut ws).await.0, 1003);
}

#[tokio::test]
async fn a_frame_over_the_body_limit_closes_with_1009() {
    let (gw, _) = start("ws_too_big").await;
    let mut ws = open(&gw, "/v1/chat").await;
    let big = json!({"text": "x".repeat(8192)}).to_string();
    send(&mut ws, &big).await;
    let status = &recv(&mut ws).await["status"];
    assert_eq!(status["code"], 3, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 4096 bytes"),
        "{status}"
    );
    assert_eq!(closed(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_backend_call() {
    let (gw, probe) = start("ws_gone").await;
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "bye"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: bye");
    // No close frame, no end-of-stream frame: the connection just ends.
    drop(ws);
    assert!(
        probe.wait_cancelled(1, Duration::from_secs(5)).await,
        "the backend call outlived the socket"
    );
}

#[tokio::test]
async fn a_slow_reader_holds_the_backend_back() {
    let (gw, probe) = start("ws_slow_reader").await;
    // A small receive buffer, so what the gateway holds shows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request(&gw, "/v1/chat", &[]), stream)
        .await
        .expect("upgrade");
    // 40 000 replies of 1 KiB: far more than the windows and socket
    // buffers between the backend and this client hold.
    const N: u64 = 40_000;
    ws.send(Message::text(format!(r#"{{"text": "flood {N}"}}"#)))
        .await
        .unwrap();
    ws.send(Message::text("")).await.unwrap();
    // Read one, then stop reading for a while.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .to_text()
            .unwrap()
            .len(),
        r#"{"result":{"text":"","seq":1}}"#.len() + 1024
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = probe.sent.load(Ordering::SeqCst);
    eprintln!("replies produced for a client that read one: {produced} of {N}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        probe.sent.load(Ordering::SeqCst),
        produced,
        "the backend kept producing while nobody read"
    );
    // HTTP/2 windows (2 MiB for the stream) and the kernel's socket buffers
    // hold a few thousand; the gateway itself one message at a time.
    assert!(
        produced < N / 4,
        "the backend produced {produced} of {N} replies for a client that read one"
    );
    // Everything arrives once the client reads.
    let mut results = 1u64;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("frames keep coming")
            .expect("open")
            .expect("frame");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if let Some(status) = v.get("status") {
            assert_eq!(status["code"], 0);
            break;
        }
        results += 1;
    }
    assert_eq!(results, N);
    assert_eq!(probe.sent.load(Ordering::SeqCst), N);
}

#[tokio::test]
async fn an_origin_the_cors_policy_does_not_allow_is_refused_403() {
    let (gw, _) = start("ws_origin").await;
    let (status, body) = refused(&gw, "/v1/chat:cors", &[("origin", "http://evil.test")]).await;
    assert_eq!(status, 403);
    assert_eq!(body["code"], 7);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("origin http://evil.test may not open /v1/chat:cors"),
        "{body}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request(
        &gw,
        "/v1/chat:cors",
        &[("origin", "http://app.test")],
    ))
    .await
    .expect("an allowed origin upgrades");
    send(&mut ws, r#"{"text": "hi"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: hi");

    // Without a CORS policy, only the gateway's own origin.
    let (status, _) = refused(&gw, "/v1/chat", &[("origin", "http://app.test")]).await;
    assert_eq!(status, 403);
    let own = format!("http://{}", gw.addr);
    tokio_tungstenite::connect_async(request(&gw, "/v1/chat", &[("origin", &own)]))
        .await
        .expect("the gateway's own origin upgrades");
}

#[tokio::test]
async fn an_upgrade_without_the_required_token_is_refused_401() {
    let (gw, _) = start("ws_auth").await;
    let (status, body) = refused(&gw, "/v1/chat:private", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], 16);
    // Browsers cannot set headers on a WebSocket: the token rides in the query.
    let claims = gateway_tests::edge::claims("https://ws.test", "alice");
    let token = gateway_tests::edge::sign_hs256(HMAC_SECRET.as_bytes(), &claims);
    let mut ws = open(&gw, &format!("/v1/chat:private?access_token={token}")).await;
    send(&mut ws, r#"{"text": "signed"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: signed");
}

#[tokio::test]
async fn upgrades_count_against_the_route_rate_limit() {
    let (gw, _) = start("ws_rate_limit").await;
    let mut ws = open(&gw, "/v1/chat:limited").await;
    send(&mut ws, r#"{"text": "first"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: first");
    let (status, body) = refused(&gw, "/v1/chat:limited", &[]).await;
    assert_eq!(status, 429);
    assert_eq!(body["code"], 8);
}

#[tokio::test]
async fn a_shutdown_ends_open_sockets_with_unavailable_and_1001() {
    let (gw, _) = start("ws_shutdown").await;
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "before"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: before");
    drop(gw);
    let status = &recv(&mut ws).await["status"];
    assert_eq!(status["code"], 14, "{status}");
    assert_eq!(closed(&mut ws).await, (1001, "UNAVAILABLE".to_owned()));
}

#[tokio::test]
async fn an_open_socket_keeps_its_connection_slot() {
    let (gw, _) = start_with("ws_slot", "\n[limits]\nmax_connections = 1\n").await;
    let mut ws = open(&gw, "/v1/chat").await;
    send(&mut ws, r#"{"text": "hold"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: hold");
    // The one slot is the socket's: another connection waits in the backlog.
    let waiting = tokio::time::timeout(Duration::from_millis(500), gw.get("/v1/chat")).await;
    assert!(waiting.is_err(), "a second connection was served");
    send(&mut ws, "").await;
    assert_eq!(recv(&mut ws).await["status"]["code"], 0);
    assert_eq!(closed(&mut ws).await.0, 1000);
    drop(ws);
    assert_eq!(gw.get("/v1/chat").await.status, 400);
}

#[tokio::test]
async fn a_quiet_socket_is_pinged_at_half_the_idle_timeout() {
    let (gw, _) = start_with("ws_ping", "\n[limits]\nidle_timeout = \"1s\"\n").await;
    let mut ws = open(&gw, "/v1/chat").await;
    let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .expect("a frame within 3s")
        .unwrap()
        .unwrap();
    assert!(matches!(m, Message::Ping(_)), "{m:?}");
    // The socket outlives the connection's idle timeout, and still works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&mut ws, r#"{"text": "still here"}"#).await;
    assert_eq!(recv(&mut ws).await["result"]["text"], "echo: still here");
}

#[tokio::test]
async fn a_plain_get_on_a_websocket_route_is_a_400() {
    let (gw, _) = start("ws_plain_get").await;
    gw.get("/v1/chat").await.assert_error(
        400,
        3,
        "/v1/chat is a WebSocket: open it with a GET carrying Upgrade: websocket",
    );
}

#[tokio::test]
async fn websocket_routes_are_checked_at_load_with_their_line() {
    let text = CONFIG
        .replace("{name}", "ws_config")
        .replace("{backend}", "127.0.0.1:1")
        .replace("{descriptors}", &gateway_tests::toml_path(&descriptors()))
        + r#"
[[routes]]
method = "POST"
path = "/v1/chat:post"
grpc = "streaming.v1.Streams/Chat"
body = "*"
websocket = true

[[routes]]
method = "GET"
path = "/v1/count:ws"
grpc = "streaming.v1.Streams/Count"
websocket = true
"#;
    let path = gateway_tests::write_config(&text);
    let err = gateway::snapshot::Snapshot::load(&path)
        .expect_err("the config is refused")
        .to_string();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            // The route's `[[routes]]` header, two lines above its path
            // (1-based: one above the path's 0-based index).
            .map(|i| i - 1)
            .unwrap()
    };
    let post = format!(
        "{}:{}: routes[5].websocket: a WebSocket is opened with a GET",
        path.display(),
        line_of("/v1/chat:post")
    );
    let count = format!(
        "{}:{}: routes[6].websocket: streaming.v1.Streams.Count does not stream its requests",
        path.display(),
        line_of("/v1/count:ws")
    );
    gateway_tests::remove_temp_parent(&path);
    assert!(err.contains(&post), "{post:?} not in:\n{err}");
    assert!(err.contains(&count), "{count:?} not in:\n{err}");
}

/// The demo bookstore behind a gateway with its feed and book routes;
/// `extra` goes before the routes.
async fn bookstore(name: &str, extra: &str) -> TestGateway {
    let pool = gateway_tests::bookstore_pool();
    let backend = spawn_backend(gateway::example::bookstore::server(&pool)).await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{{descriptors}}"

[admin]
enabled = false

{extra}

[backends.{name}]
endpoints = ["{{backend}}"]
services = ["example.bookstore.v1.Bookstore"]

[[routes]]
method = "GET"
path = "/v1/shelves/{{shelf}}/feed"
grpc = "example.bookstore.v1.Bookstore/ShelfFeed"
body = "*"
websocket = true

[[routes]]
method = "POST"
path = "/v1/shelves/{{shelf}}/books"
grpc = "example.bookstore.v1.Bookstore/CreateBook"
body = "book"

[[routes]]
method = "PATCH"
path = "/v1/shelves/{{shelf}}/books/{{book.id}}"
grpc = "example.bookstore.v1.Bookstore/UpdateBook"
body = "book"

[[routes]]
method = "DELETE"
path = "/v1/shelves/{{shelf}}/books/{{book}}"
grpc = "example.bookstore.v1.Bookstore/DeleteBook"
"#
    );
    TestGateway::start_with(
        &config,
        &backend,
        &gateway_tests::repo_root().join("descriptors"),
    )
    .await
}

#[tokio::test]
async fn the_demo_feed_shows_changes_made_through_rest() {
    let gw = bookstore("bookstore_ws_feed", "").await;
    let mut ws = open(&gw, "/v1/shelves/1/feed").await;
    // The feed's own addition: once it is back, the feed is following.
    send(&mut ws, "{}").await;
    send(&mut ws, r#"{"add": {"title": "Kindred"}}"#).await;
    let own = recv(&mut ws).await;
    assert_eq!(own["result"]["kind"], "BOOK_ADDED", "{own}");
    assert_eq!(own["result"]["book"]["title"], "Kindred");

    let created = gw
        .post(
            "/v1/shelves/1/books",
            &json!({"title": "Parable of the Sower"}),
        )
        .await;
    let id = created.ok()["id"].as_str().unwrap().to_owned();
    let event = recv(&mut ws).await;
    assert_eq!(event["result"]["kind"], "BOOK_ADDED", "{event}");
    assert_eq!(event["result"]["book"]["id"], id.as_str());
    // Another shelf's changes are not this feed's.
    gw.post("/v1/shelves/2/books", &json!({"title": "Elsewhere"}))
        .await
        .ok();
    gw.patch(
        &format!("/v1/shelves/1/books/{id}"),
        &json!({"pageCount": 345}),
    )
    .await
    .ok();
    let event = recv(&mut ws).await;
    assert_eq!(event["result"]["kind"], "BOOK_UPDATED", "{event}");
    assert_eq!(event["result"]["book"]["pageCount"], 345);
    gw.delete(&format!("/v1/shelves/1/books/{id}")).await.ok();
    let event = recv(&mut ws).await;
    assert_eq!(event["result"]["kind"], "BOOK_DELETED", "{event}");
    assert_eq!(event["result"]["shelf"], "1");

    send(&mut ws, "").await;
    assert_eq!(recv(&mut ws).await["status"]["code"], 0);
    assert_eq!(closed(&mut ws).await.0, 1000);

    // A shelf that does not exist: the backend's NOT_FOUND, close 1011.
    let mut ws = open(&gw, "/v1/shelves/99/feed").await;
    send(&mut ws, "{}").await;
    let status = &recv(&mut ws).await["status"];
    assert_eq!(status["code"], 5, "{status}");
    assert_eq!(status["message"], "shelf 99 does not exist");
    assert_eq!(closed(&mut ws).await, (1011, "NOT_FOUND".to_owned()));
}

/// The ```js block of docs/streaming.md's WebSocket section.
fn documented_snippet() -> String {
    let text = std::fs::read_to_string(gateway_tests::repo_root().join("docs/streaming.md"))
        .expect("docs/streaming.md");
    let start = text
        .find("```js\n")
        .expect("a ```js block in docs/streaming.md")
        + 6;
    let len = text[start..].find("```").expect("the block ends");
    text[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_runs_the_documented_snippet_against_the_shelf_feed() {
    let Some(chromium) = gateway_tests::browser::chromium() else {
        eprintln!("SKIPPED: GATEWAY_TESTS_SKIP_BROWSER=1");
        return;
    };
    let app = Pages::default();
    let app_base = serve_pages(app.clone()).await;
    let gw = bookstore(
        "bookstore_ws_browser",
        &format!("[cors]\nallowed_origins = [\"{app_base}\"]"),
    )
    .await;
    let snippet = documented_snippet().replace("localhost:8080", &gw.addr.to_string());
    // The snippet logs what it sees; the page posts the log at the close.
    let page = format!(
        r#"<!doctype html><html><body><script>
const seen = [];
console.log = (...args) => {{
  seen.push(args);
  if (args[0] === "closed") fetch("/report", {{method: "POST", body: JSON.stringify(seen)}});
}};
{snippet}
</script></body></html>"#
    );
    app.set("/index.html", "text/html", &[], page.as_bytes());
    let (mut child, profile) =
        gateway_tests::browser::open(&chromium, &format!("{app_base}/index.html"));
    let report = app.wait_post("/report", Duration::from_secs(25)).await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let report: Value =
        serde_json::from_slice(&report.expect("the page reported")).expect("JSON report");
    let seen = report.as_array().unwrap();
    assert_eq!(seen.len(), 3, "{report}");
    assert_eq!(seen[0][0], "event", "{report}");
    let event = &seen[0][1];
    assert_eq!(event["kind"], "BOOK_ADDED", "{report}");
    assert_eq!(event["shelf"], "1");
    assert_eq!(event["book"]["title"], "Kindred");
    assert_eq!(event["book"]["shelfId"], "1");
    assert_eq!(
        seen[1],
        json!(["status", {"code": 0, "message": "", "details": []}])
    );
    assert_eq!(seen[2], json!(["closed", 1000]));
}
