//! gRPC-Web and the Connect protocol, driven by the Connect project's own
//! clients from npm (connect-node, and connect-web over fetch as in a
//! browser; tests/js/call.mjs), against backends that expose their
//! services with `expose = ["grpc-web", "connect"]`: unary calls, server
//! streams, errors with details, deadlines, metadata, and the edge policies
//! (auth, CORS) applied as on REST routes.

use std::path::PathBuf;
use std::sync::OnceLock;

use gateway_tests::{
    echo_server, repo_root, spawn_backend, streaming, testing_descriptors, testing_pool,
    TestGateway,
};
use prost_reflect::DescriptorPool;
use serde_json::{json, Value};

const ECHO: &str = r#"
[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
routes_from_annotations = false
{extra_server}

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]
timeout = "5s"
expose = ["grpc-web", "connect"]
{extra}
"#;

/// tests/js with its packages installed (`npm ci`, once per test run; CI
/// installs them beforehand).
fn clients() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("tests/js");
        if !dir.join("node_modules/@connectrpc/connect-node").exists() {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .expect("run npm (install Node.js and npm)");
            assert!(status.success(), "npm ci in tests/js failed");
        }
        dir
    })
    .clone()
}

/// Runs `calls` with the Connect clients against `gw`; one result each.
async fn run(gw: &TestGateway, pool: &DescriptorPool, calls: Value) -> Vec<Value> {
    let dir = clients();
    let tmp = tempdir();
    let set = tmp.join("descriptors.binpb");
    std::fs::write(&set, pool.encode_to_vec()).unwrap();
    let spec = tmp.join("spec.json");
    std::fs::write(
        &spec,
        serde_json::to_vec(&json!({
            "baseUrl": gw.url(""),
            "descriptors": set,
            "calls": calls,
        }))
        .unwrap(),
    )
    .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(dir.join("call.mjs"))
        .arg(&spec)
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&tmp);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-rpc-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn echo_gateway(extra_server: &str, extra: &str) -> TestGateway {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let config = ECHO
        .replace("{extra_server}", extra_server)
        .replace("{extra}", extra);
    TestGateway::start_with(&config, &backend, &testing_descriptors()).await
}

const TRANSPORTS: [&str; 5] = [
    "connect",
    "connect-binary",
    "grpc-web",
    "grpc-web-json",
    "web-grpc-web",
];

fn call(transport: &str, method: &str, request: Value) -> Value {
    json!({"transport": transport, "service": "testing.v1.Echo", "method": method, "request": request})
}

#[tokio::test]
async fn typed_clients_call_unary_methods_over_connect_and_grpc_web() {
    let gw = echo_gateway("", "").await;
    let calls: Vec<Value> = TRANSPORTS
        .iter()
        .map(|t| {
            let mut c = call(
                t,
                "Echo",
                json!({"stringField": format!("hello {t}"), "int64Field": "9007199254740993", "tags": ["a", "b"]}),
            );
            c["headers"] = json!({"x-client-note": t});
            c
        })
        .collect();
    let results = run(&gw, &testing_pool(), Value::Array(calls)).await;
    for (t, r) in TRANSPORTS.iter().zip(&results) {
        assert_eq!(r["ok"]["stringField"], format!("hello {t}"), "{t}: {r}");
        assert_eq!(r["ok"]["int64Field"], "9007199254740993", "{t}: {r}");
        assert_eq!(r["ok"]["tags"], json!(["a", "b"]), "{t}: {r}");
        // The backend's header metadata arrives as headers.
        assert_eq!(r["header"]["x-grpc-method"], "Echo", "{t}: {r}");
    }
    // Metadata the client sends reaches the backend under its own name.
    let metas: Vec<Value> = ["connect", "grpc-web"]
        .iter()
        .map(|t| {
            let mut c = call(t, "Meta", json!({}));
            c["headers"] = json!({"x-tenant": "acme"});
            c
        })
        .collect();
    for r in run(&gw, &testing_pool(), Value::Array(metas)).await {
        assert!(r["ok"].to_string().contains("acme"), "{r}");
    }
}

#[tokio::test]
async fn errors_keep_their_code_message_and_details_over_both_protocols() {
    let gw = echo_gateway("", "").await;
    let calls: Vec<Value> = TRANSPORTS
        .iter()
        .map(|t| {
            call(
                t,
                "Fail",
                json!({"code": 5, "message": "no such thing: ünïcode", "withDetails": true}),
            )
        })
        .collect();
    let results = run(&gw, &testing_pool(), Value::Array(calls)).await;
    for (t, r) in TRANSPORTS.iter().zip(&results) {
        assert_eq!(r["error"]["code"], 5, "{t}: {r}");
        assert_eq!(r["error"]["message"], "no such thing: ünïcode", "{t}: {r}");
        assert_eq!(
            r["error"]["details"],
            json!(["google.rpc.BadRequest", "google.rpc.ErrorInfo"]),
            "{t}: {r}"
        );
    }
}

#[tokio::test]
async fn the_clients_deadline_ends_the_call() {
    let gw = echo_gateway("", "").await;
    let calls: Vec<Value> = ["connect", "grpc-web"]
        .iter()
        .map(|t| {
            let mut c = call(t, "Sleep", json!({"millis": 3000}));
            c["timeoutMs"] = json!(300);
            c
        })
        .collect();
    let started = std::time::Instant::now();
    let results = run(&gw, &testing_pool(), Value::Array(calls)).await;
    for r in &results {
        assert_eq!(r["error"]["code"], 4, "{r}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "the calls waited for the backend: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn edge_policies_apply_to_exposed_methods() {
    std::env::set_var(
        "RPC_CLIENTS_TEST_SECRET",
        "a test secret of thirty-two bytes!",
    );
    let gw = echo_gateway(
        "",
        r#"
[auth]
default = "required"

[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "RPC_CLIENTS_TEST_SECRET"

[cors]
allowed_origins = ["https://app.example"]
allowed_headers = ["authorization"]
"#,
    )
    .await;
    let calls: Vec<Value> = ["connect", "grpc-web"]
        .iter()
        .map(|t| call(t, "Echo", json!({"stringField": "x"})))
        .collect();
    for r in run(&gw, &testing_pool(), Value::Array(calls)).await {
        assert_eq!(r["error"]["code"], 16, "{r}");
    }
    // A browser's preflight is answered with the headers the protocols
    // need, though [cors] lists only authorization.
    let r = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/testing.v1.Echo/Echo"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,connect-protocol-version,x-grpc-web,x-user-agent",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in [
        "connect-protocol-version",
        "x-grpc-web",
        "x-user-agent",
        "authorization",
    ] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    // And the answer exposes the status headers gRPC-Web clients read.
    let r = gw
        .client
        .post(gw.url("/testing.v1.Echo/Echo"))
        .header("origin", "https://app.example")
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "gRPC-Web answers errors with 200");
    assert_eq!(r.headers()["grpc-status"], "16");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );
}

#[tokio::test]
async fn server_streams_arrive_over_connect_and_grpc_web() {
    let config = r#"
[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
routes_from_annotations = false

[backends.streams]
endpoints = ["{backend}"]
services = ["streaming.v1.Streams"]
timeout = "5s"
expose = ["grpc-web", "connect"]
"#;
    let probe = std::sync::Arc::new(streaming::Probe::default());
    let backend = spawn_backend(streaming::server(probe)).await;
    let gw = TestGateway::start_with(config, &backend, &streaming::descriptors()).await;
    let count = |t: &str, request: Value| json!({"transport": t, "service": "streaming.v1.Streams", "method": "Count", "request": request});
    let mut calls = Vec::new();
    for t in TRANSPORTS {
        calls.push(count(t, json!({"count": 3, "label": t})));
        calls.push(count(
            t,
            json!({"count": 5, "failAfter": 2, "failCode": 10}),
        ));
    }
    // The client's deadline bounds the whole stream.
    for t in ["connect", "grpc-web"] {
        let mut slow = count(t, json!({"count": 20, "intervalMs": 200}));
        slow["timeoutMs"] = json!(500);
        calls.push(slow);
    }
    let results = run(&gw, &streaming::pool(), Value::Array(calls)).await;
    for slow in &results[2 * TRANSPORTS.len()..] {
        assert_eq!(slow["error"]["code"], 4, "{slow}");
    }
    for (i, t) in TRANSPORTS.iter().enumerate() {
        let ok = &results[2 * i];
        let ticks = ok["ok"].as_array().unwrap_or_else(|| panic!("{t}: {ok}"));
        assert_eq!(ticks.len(), 3, "{t}: {ok}");
        assert!(ticks.iter().all(|tick| tick["label"] == *t), "{t}: {ok}");
        let failed = &results[2 * i + 1];
        assert_eq!(failed["error"]["code"], 10, "{t}: {failed}");
    }
}

#[tokio::test]
async fn grpc_web_text_bodies_are_base64_both_ways() {
    use base64::Engine as _;
    let gw = echo_gateway("", "").await;
    // Everything{string_field (10): "hi"}: tag 0x52, length 2.
    let message = [0x52u8, 2, b'h', b'i'];
    let mut framed = vec![0u8, 0, 0, 0, message.len() as u8];
    framed.extend_from_slice(&message);
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = gw
        .client
        .post(gw.url("/testing.v1.Echo/Echo"))
        .header("content-type", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .body(b64.encode(&framed))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/grpc-web-text+proto"
    );
    let body = b64.decode(r.bytes().await.unwrap()).unwrap();
    // The reply message, then the trailer frame with grpc-status 0.
    assert_eq!(&body[..5 + message.len()], &framed[..]);
    assert_eq!(body[5 + message.len()], 0x80);
    let trailers = String::from_utf8_lossy(&body[5 + message.len() + 5..]).to_string();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn browsers_get_grpc_web_and_connect_answers_compressed() {
    use std::io::Read as _;
    let gw = echo_gateway("[server.compression]\nmin_bytes = 16", "").await;
    // A reply well over the threshold.
    let long = "x".repeat(2000);
    let message = {
        let mut m = vec![0x52u8, 0xd0, 0x0f];
        m.extend_from_slice(long.as_bytes());
        m
    };
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let client = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .build()
        .unwrap();
    let r = client
        .post(gw.url("/testing.v1.Echo/Echo"))
        .header("content-type", "application/grpc-web+proto")
        .header("accept-encoding", "gzip")
        .body(framed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz = r.bytes().await.unwrap();
    assert!(gz.len() < 1000, "{} bytes", gz.len());
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(&body[..framed.len()], &framed[..]);
    // Without Accept-Encoding (Connect's and gRPC-Web's own clients ask for
    // message compression in headers of their own): identity.
    let r = client
        .post(gw.url("/testing.v1.Echo/Echo"))
        .header("content-type", "application/grpc-web+proto")
        .header("grpc-accept-encoding", "gzip")
        .body(framed)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn bad_protocol_input_is_refused_in_the_protocols_own_error_shape() {
    let gw = echo_gateway("", "").await;
    let post = |ct: &'static str, headers: &[(&'static str, &'static str)], body: Vec<u8>| {
        let mut r = gw
            .client
            .post(gw.url("/testing.v1.Echo/Echo"))
            .header("content-type", ct)
            .body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    // Connect: a 400 with Connect's error JSON naming what is wrong.
    for (headers, body, says) in [
        (
            vec![("connect-protocol-version", "2")],
            b"{}".to_vec(),
            "speaks version 1",
        ),
        (
            vec![("connect-timeout-ms", "soon")],
            b"{}".to_vec(),
            "connect-timeout-ms",
        ),
        (vec![], b"{\"stringField\": 7}".to_vec(), "stringField"),
        (vec![], b"{\"noSuchField\": 1}".to_vec(), "noSuchField"),
    ] {
        let r = post("application/json", &headers, body).await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "invalid_argument", "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    // gRPC-Web: HTTP 200 and grpc-status 3 (INVALID_ARGUMENT).
    for (body, says) in [
        (vec![0u8, 0, 0, 0, 9, 1], "envelope says 9 bytes"),
        (vec![1u8, 0, 0, 0, 0], "compressed"),
        (vec![0u8, 0], "one enveloped message"),
    ] {
        let r = post("application/grpc-web+proto", &[], body).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "3");
        let message = r.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert!(message.contains(says), "{message}");
    }
    // A content type neither protocol speaks: 415 naming the ones they do.
    let r = post("text/plain", &[], b"hi".to_vec()).await.unwrap();
    assert_eq!(r.status(), 415);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("application/grpc-web+proto"),
        "{v}"
    );
}

#[tokio::test]
async fn connect_get_serves_methods_without_side_effects_and_is_refused_for_others() {
    // The demo's bookstore marks GetShelf NO_SIDE_EFFECTS.
    let (mut demo, addr) = gateway_tests::binary::spawn_demo().await;
    let client = gateway_tests::http_client();
    let message = "%7B%22shelf%22%3A%221%22%7D";
    let r = client
        .get(format!(
            "http://{addr}/example.bookstore.v1.Bookstore/GetShelf?connect=v1&encoding=json&message={message}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "1", "{body}");
    // The same in base64 protobuf: {shelf: 1} is 08 01.
    let r = client
        .get(format!(
            "http://{addr}/example.bookstore.v1.Bookstore/GetShelf?encoding=proto&base64=1&message=CAE"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/proto");
    // CreateShelf changes state: no GET binding.
    let r = client
        .get(format!(
            "http://{addr}/example.bookstore.v1.Bookstore/CreateShelf?encoding=json&message=%7B%7D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let _ = demo.kill().await;
}
