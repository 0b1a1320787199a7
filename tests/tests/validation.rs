//! Request validation from `buf.validate` annotations, end to end: a
//! descriptors folder with a protovalidate-annotated service, a real
//! dynamic backend that counts its calls, and REST, server-streaming,
//! Connect and gRPC-Web clients. A violation is a 400 listing every field
//! at fault, and the backend never hears of the request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::example::{BoxFuture, DynamicServer, MessageStream};
use gateway_tests::running::RunningGateway;
use gateway_tests::{http_client, spawn_backend, temp_dir, TestGateway};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use serde_json::{json, Value as Json};
use tonic::{Request, Response};

const SHOP_PROTO: &str = r#"syntax = "proto3";
package shop.v1;
import "buf/validate/validate.proto";
import "google/protobuf/duration.proto";

service Shop {
  rpc CreateOrder(CreateOrderRequest) returns (Order);
  rpc ListOrders(ListOrdersRequest) returns (stream Order);
  rpc ImportLines(stream Line) returns (Order);
}

enum Speed { SPEED_UNSPECIFIED = 0; SLOW = 1; FAST = 2; }

message Address {
  string zip = 1 [(buf.validate.field).string.pattern = "^[0-9]{5}$"];
  string city = 2 [(buf.validate.field).required = true];
}

message Line {
  string sku = 1 [(buf.validate.field).string = {min_len: 3, max_len: 8}];
  uint32 qty = 2 [(buf.validate.field).uint32 = {gt: 0, lte: 10}];
}

message CreateOrderRequest {
  option (buf.validate.message).cel = {
    id: "discount.coupon",
    message: "a discount needs a coupon",
    expression: "this.discount == 0 || this.coupon != ''"
  };
  string shop = 1 [(buf.validate.field).string.prefix = "s-"];
  string email = 2 [(buf.validate.field).string.email = true];
  Address address = 3 [(buf.validate.field).required = true];
  repeated Line lines = 4 [(buf.validate.field).repeated = {min_items: 1, max_items: 3}];
  map<string, string> labels = 5 [(buf.validate.field).map = {
    max_pairs: 2, keys: {string: {min_len: 2}}, values: {string: {max_len: 5}}
  }];
  oneof payment {
    option (buf.validate.oneof).required = true;
    string card = 6;
    string invoice = 7;
  }
  int32 discount = 8 [(buf.validate.field).int32 = {gte: 0, lte: 50}];
  string coupon = 9;
  string note = 10 [(buf.validate.field).cel = {
    id: "note.length",
    expression: "this.size() <= 10 ? '' : 'a note is at most 10 characters'"
  }];
  Speed speed = 11 [(buf.validate.field).enum.defined_only = true];
  double weight = 12 [(buf.validate.field).double = {gte: 0, finite: true}];
  bytes signature = 13 [(buf.validate.field).bytes.max_len = 4];
  bool terms = 14 [(buf.validate.field).bool.const = true];
  google.protobuf.Duration hold = 15 [(buf.validate.field).duration.lte = {seconds: 3600}];
  repeated string tags = 16 [(buf.validate.field).repeated = {unique: true, items: {string: {max_len: 4}}}];
}

message ListOrdersRequest {
  string shop = 1 [(buf.validate.field).string.prefix = "s-"];
  int32 limit = 2 [(buf.validate.field).int32 = {gt: 0, lte: 100}];
}

message Order { string id = 1; }
"#;

const CONFIG: &str = r#"[server]
descriptors = "{descriptors}"

[backends.shop]
endpoints = ["{backend}"]
services = ["shop.v1.Shop"]
expose = ["grpc-web", "connect"]
timeout = "5s"

[[routes]]
method = "POST"
path = "/v1/shops/{shop}/orders"
grpc = "shop.v1.Shop/CreateOrder"
body = "*"

[[routes]]
method = "POST"
path = "/v1/unchecked/{shop}/orders"
grpc = "shop.v1.Shop/CreateOrder"
body = "*"
validate = false

[[routes]]
method = "GET"
path = "/v1/shops/{shop}/orders"
grpc = "shop.v1.Shop/ListOrders"

[[routes]]
method = "POST"
path = "/v1/lines"
grpc = "shop.v1.Shop/ImportLines"
body = "*"

[[routes]]
method = "GET"
path = "/v1/lines/socket"
grpc = "shop.v1.Shop/ImportLines"
body = "*"
websocket = true
"#;

/// The descriptors folder the gateway loads, with `proto` as shop.proto.
fn descriptors(proto: &str) -> PathBuf {
    let dir = temp_dir("validation-descriptors");
    std::fs::write(dir.join("shop.proto"), proto).unwrap();
    dir
}

fn pool(dir: &Path) -> DescriptorPool {
    gateway::descriptors::load_dir(dir).unwrap().pool
}

/// The Shop backend: every call counted, each answered with an Order.
fn shop_server(pool: &DescriptorPool, calls: Arc<AtomicUsize>) -> DynamicServer {
    let unary = calls.clone();
    DynamicServer::new(
        pool,
        &["shop.v1.Shop"],
        move |m: &MethodDescriptor, _req: Request<DynamicMessage>| {
            unary.fetch_add(1, Ordering::SeqCst);
            let mut reply = DynamicMessage::new(m.output());
            reply.set_field_by_name("id", Value::String("o-1".into()));
            Box::pin(async move { Ok(Response::new(reply)) }) as BoxFuture<_>
        },
    )
    .with_streaming(move |m: &MethodDescriptor, req: Request<MessageStream>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut reply = DynamicMessage::new(m.output());
        reply.set_field_by_name("id", Value::String("o-1".into()));
        Box::pin(async move {
            // The whole request first: a client stream the gateway resets
            // ends here with an error, never with a reply.
            use tokio_stream::StreamExt as _;
            let mut input = req.into_inner();
            while let Some(m) = input.next().await {
                m?;
            }
            let stream: MessageStream = Box::pin(tokio_stream::iter(vec![Ok(reply)]));
            Ok(Response::new(stream))
        }) as BoxFuture<_>
    })
}

struct Shop {
    gw: TestGateway,
    calls: Arc<AtomicUsize>,
}

async fn start() -> Shop {
    let dir = descriptors(SHOP_PROTO);
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = spawn_backend(shop_server(&pool(&dir), calls.clone())).await;
    let gw = TestGateway::start_with(CONFIG, &backend, &dir).await;
    Shop { gw, calls }
}

fn good_order() -> Json {
    json!({
        "email": "a@example.com",
        "address": {"zip": "75001", "city": "Paris"},
        "lines": [{"sku": "abc", "qty": 1}],
        "labels": {"ab": "x"},
        "card": "4242",
        "discount": 10,
        "coupon": "TEN",
        "note": "ring twice",
        "speed": "FAST",
        "weight": 1.5,
        "signature": "AQID",
        "terms": true,
        "hold": "60s",
        "tags": ["a", "b"]
    })
}

/// Every field violation of an error body, as `field: description`.
fn violations(body: &Json) -> Vec<String> {
    let details = body["details"].as_array().cloned().unwrap_or_default();
    let bad = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap_or_else(|| panic!("no BadRequest detail in {body}"));
    let mut out: Vec<String> = bad["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}: {}",
                v["field"].as_str().unwrap(),
                v["description"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_valid_request_reaches_the_backend() {
    let shop = start().await;
    let reply = shop.gw.post("/v1/shops/s-1/orders", &good_order()).await;
    assert_eq!(reply.ok()["id"], "o-1");
    assert_eq!(shop.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_violation_is_listed_and_the_backend_is_not_called() {
    let shop = start().await;
    let bad = json!({
        "email": "not-an-email",
        "address": {"zip": "7500"},
        "lines": [{"sku": "abc", "qty": 1}, {"sku": "x", "qty": 0}, {"sku": "abc", "qty": 1}, {"sku": "abc", "qty": 1}],
        "labels": {"k": "far too long", "ab": "x", "cd": "y"},
        "discount": 60,
        "note": "this note is far too long",
        "speed": 7,
        "weight": "Infinity",
        "signature": "AQIDBAU=",
        "terms": false,
        "hold": "7200s",
        "tags": ["a", "a", "toolong"]
    });
    let reply = shop.gw.post("/v1/shops/x-1/orders", &bad).await;
    reply.assert_error(400, 3, "validation rules of shop.v1.CreateOrderRequest");
    let mut want = vec![
        "shop: value does not have prefix `s-`",
        "email: value must be a valid email address",
        "address.zip: value does not match regex pattern `^[0-9]{5}$`",
        "address.city: value is required",
        "lines: value must contain no more than 3 item(s)",
        "lines[1].sku: value length must be at least 3 characters",
        "lines[1].qty: value must be greater than 0 and less than or equal to 10",
        "labels: map must be at most 2 entries",
        "labels[\"k\"]: value length must be at least 2 characters",
        "labels[\"k\"]: value length must be at most 5 characters",
        "payment: exactly one field is required in oneof",
        "discount: value must be greater than or equal to 0 and less than or equal to 50",
        "note: a note is at most 10 characters",
        "speed: value must be one of the defined enum values",
        "weight: value must be finite",
        "signature: value length must be at most 4 bytes",
        "terms: value must equal true",
        "hold: value must be less than or equal to 3600s",
        "tags: repeated value must contain unique items",
        "tags[2]: value length must be at most 4 characters",
        ": a discount needs a coupon",
    ];
    want.sort();
    assert_eq!(violations(&reply.json), want, "{}", reply.text);
    assert_eq!(
        shop.calls.load(Ordering::SeqCst),
        0,
        "the backend was called"
    );
}

#[tokio::test]
async fn nested_messages_are_checked_only_when_set() {
    let shop = start().await;
    let mut order = good_order();
    order.as_object_mut().unwrap().remove("address");
    let reply = shop.gw.post("/v1/shops/s-1/orders", &order).await;
    reply.assert_error(400, 3, "address: value is required");
    assert_eq!(violations(&reply.json), ["address: value is required"]);
    assert_eq!(shop.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn validate_false_leaves_the_rules_to_the_backend() {
    let shop = start().await;
    let reply = shop
        .gw
        .post("/v1/unchecked/x-1/orders", &json!({"email": "nope"}))
        .await;
    assert_eq!(reply.ok()["id"], "o-1");
    assert_eq!(shop.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_backend_with_validate_false_leaves_its_exposed_methods_to_it() {
    let dir = descriptors(SHOP_PROTO);
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = spawn_backend(shop_server(&pool(&dir), calls.clone())).await;
    let config = CONFIG.replace(
        "expose = [\"grpc-web\", \"connect\"]\n",
        "expose = [\"grpc-web\", \"connect\"]\nvalidate = false\n",
    );
    assert_ne!(config, CONFIG);
    let gw = TestGateway::start_with(&config, &backend, &dir).await;
    let connect = gw
        .request(
            "POST",
            "/shop.v1.Shop/CreateOrder",
            &[("content-type", "application/json")],
            Some(br#"{"shop": "x"}"#.to_vec()),
        )
        .await;
    assert_eq!(connect.status, 200, "{}", connect.text);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Its routes.toml routes keep their own setting.
    let rest = gw.post("/v1/shops/x/orders", &json!({})).await;
    assert_eq!(rest.status, 400, "{}", rest.text);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_streaming_requests_are_checked_before_the_call() {
    let shop = start().await;
    let reply = shop.gw.get("/v1/shops/s-1/orders?limit=500").await;
    reply.assert_error(400, 3, "limit: value must be greater than 0");
    assert_eq!(
        violations(&reply.json),
        ["limit: value must be greater than 0 and less than or equal to 100"]
    );
    assert_eq!(shop.calls.load(Ordering::SeqCst), 0);
    let reply = shop.gw.get("/v1/shops/s-1/orders?limit=5").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.text.contains("o-1"), "{}", reply.text);
    assert_eq!(shop.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connect_and_grpc_web_calls_are_checked_too() {
    let shop = start().await;
    // Connect, JSON: the error as Connect writes it, with the detail.
    let bad = json!({"shop": "x", "card": "1"});
    let reply = shop
        .gw
        .request(
            "POST",
            "/shop.v1.Shop/CreateOrder",
            &[
                ("content-type", "application/json"),
                ("connect-protocol-version", "1"),
            ],
            Some(serde_json::to_vec(&bad).unwrap()),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json["code"], "invalid_argument", "{}", reply.text);
    assert!(
        reply.message().contains("shop: value does not have prefix"),
        "{}",
        reply.text
    );
    assert_eq!(reply.json["details"][0]["type"], "google.rpc.BadRequest");

    // gRPC-Web, protobuf: a trailers-only answer with grpc-status 3.
    let pool = pool(&descriptors(SHOP_PROTO));
    let desc = pool
        .get_message_by_name("shop.v1.CreateOrderRequest")
        .unwrap();
    let mut de = serde_json::Deserializer::from_str(r#"{"shop": "x", "invoice": "i"}"#);
    let message =
        prost::Message::encode_to_vec(&DynamicMessage::deserialize(desc, &mut de).unwrap());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let reply = shop
        .gw
        .request(
            "POST",
            "/shop.v1.Shop/CreateOrder",
            &[("content-type", "application/grpc-web+proto")],
            Some(framed),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("grpc-status"), "3", "{:?}", reply.headers);
    assert!(
        reply.header("grpc-message").contains("CreateOrderRequest"),
        "{:?}",
        reply.headers
    );
    assert!(!reply.header("grpc-status-details-bin").is_empty());
    assert_eq!(
        shop.calls.load(Ordering::SeqCst),
        0,
        "the backend was called"
    );
}

#[tokio::test]
async fn refusals_are_counted_per_route() {
    let shop = start().await;
    let reply = shop.gw.post("/v1/shops/x/orders", &json!({})).await;
    assert_eq!(reply.status, 400);
    let text = gateway::telemetry::metrics::handle().render();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("gateway_validation_failures_total")
                && l.contains("route=\"/v1/shops/{shop}/orders\"")
        })
        .unwrap_or_else(|| panic!("no validation failure series in\n{text}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
}

#[tokio::test]
async fn each_message_of_a_client_stream_is_checked() {
    let shop = start().await;
    let ok = shop
        .gw
        .request(
            "POST",
            "/v1/lines",
            &[("content-type", "application/x-ndjson")],
            Some(b"{\"sku\": \"abc\", \"qty\": 1}\n{\"sku\": \"def\", \"qty\": 2}\n".to_vec()),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let bad = shop
        .gw
        .request(
            "POST",
            "/v1/lines",
            &[("content-type", "application/x-ndjson")],
            Some(b"{\"sku\": \"abc\", \"qty\": 1}\n{\"sku\": \"x\", \"qty\": 0}\n".to_vec()),
        )
        .await;
    bad.assert_error(400, 3, "validation rules of shop.v1.Line");
    assert_eq!(
        violations(&bad.json),
        [
            "qty: value must be greater than 0 and less than or equal to 10",
            "sku: value length must be at least 3 characters",
        ]
    );
}

#[tokio::test]
async fn each_websocket_frame_is_checked() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let shop = start().await;
    let url = format!("ws://{}/v1/lines/socket", shop.gw.addr);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for frame in [r#"{"sku": "abc", "qty": 1}"#, r#"{"sku": "x", "qty": 1}"#] {
        ws.send(Message::text(frame)).await.expect("send");
    }
    let status = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = m {
            let v: Json = serde_json::from_str(t.as_str()).expect("JSON frame");
            if v.get("status").is_some() {
                break v["status"].clone();
            }
        }
    };
    assert_eq!(status["code"], 3, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sku: value length must be at least 3 characters"),
        "{status}"
    );
}

/// Polls admin/config until the watcher's last reload failed with an error
/// containing `want`.
async fn wait_for_refusal(gw: &RunningGateway, want: &str) -> String {
    let start = Instant::now();
    loop {
        let cfg: Json = http_client()
            .get(gw.admin_url("/admin/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Json::Null);
        let err = cfg["last_reload"]["error"].as_str().unwrap_or_default();
        if cfg["last_reload"]["ok"] == false && err.contains(want) {
            return err.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broken rules were not refused with {want:?}: {cfg}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_regex_or_cel_in_the_descriptors_is_refused_and_the_old_rules_keep_serving() {
    let dir = temp_dir("validation-reload");
    let descriptors = dir.join("descriptors");
    std::fs::create_dir_all(&descriptors).unwrap();
    std::fs::write(descriptors.join("shop.proto"), SHOP_PROTO).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = spawn_backend(shop_server(&pool(&descriptors), calls.clone())).await;
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        gateway_tests::render_config(CONFIG, &backend, Path::new("descriptors")),
    )
    .unwrap();
    let gw = RunningGateway::start(&config).await;
    let post = |body: Json| {
        let url = gw.url("/v1/shops/s-1/orders");
        async move {
            let resp = http_client().post(url).json(&body).send().await.unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(post(good_order()).await, 200);
    // /admin/routes tells which routes check their requests.
    let routes: Json = http_client()
        .get(gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let validated = |method: &str, path: &str| {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == method && r["path"] == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {routes}"))["validated"]
            .clone()
    };
    assert_eq!(validated("POST", "/v1/shops/{shop}/orders"), true);
    assert_eq!(validated("POST", "/v1/unchecked/{shop}/orders"), false);
    assert_eq!(validated("POST", "/shop.v1.Shop/CreateOrder"), true);

    // A pattern that is not RE2.
    let bad_regex = SHOP_PROTO.replace("^[0-9]{5}$", "^[0-9]{5$(");
    std::fs::write(descriptors.join("shop.proto"), bad_regex).unwrap();
    let err = wait_for_refusal(
        &gw,
        "shop.v1.Address field zip: (buf.validate.field).string.pattern: regex",
    )
    .await;
    assert!(err.contains("shop.proto"), "{err}");
    // The old rules still serve, and still refuse.
    assert_eq!(post(good_order()).await, 200);
    assert_eq!(post(json!({})).await, 400);

    // A CEL expression that does not parse.
    let bad_cel = SHOP_PROTO.replace("this.discount == 0 ||", "this.discount == 0 ||| ");
    std::fs::write(descriptors.join("shop.proto"), bad_cel).unwrap();
    wait_for_refusal(
        &gw,
        "shop.v1.CreateOrderRequest: (buf.validate.message).cel[id \"discount.coupon\"]: expression",
    )
    .await;
    assert_eq!(post(good_order()).await, 200);
}
