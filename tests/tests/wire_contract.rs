//! The HTTP side of the wire contract: binary metadata both ways, a
//! backend's header metadata on error answers, deadline headers the gateway
//! cannot read, and HEAD on GET routes.

use std::convert::Infallible;
use std::fmt::Write as _;

use gateway::example::{BoxFuture, DynamicServer, MessageStream};
use gateway_tests::{
    echo_config, spawn_backend, streaming, testing_descriptors, testing_pool, TestGateway,
    ECHO_SERVICE,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_reflect::{DynamicMessage, MapKey, MethodDescriptor, Value};
use serde_json::json;
use tonic::metadata::{KeyAndValueRef, MetadataValue};
use tonic::{Code, Request, Response, Status};

/// The bytes 0xfb 0xff: `+/8=` in standard base64, `-_8=` in URL-safe, so
/// the alphabet and the padding both show.
const BLOB: [u8; 2] = [0xfb, 0xff];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An Echo backend that shows binary metadata: `Meta` replies with every
/// request metadata value (binary ones as `hex <decoded> wire <as sent>`)
/// and answers with the binary metadata `x-blob-bin`; `Fail` fails with
/// binary metadata `x-why-bin`.
fn binary_backend() -> DynamicServer {
    DynamicServer::new(
        &testing_pool(),
        &[ECHO_SERVICE],
        |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let method = method.clone();
            Box::pin(async move { binary_handle(&method, &req) }) as BoxFuture<_>
        },
    )
}

fn binary_handle(
    method: &MethodDescriptor,
    req: &Request<DynamicMessage>,
) -> Result<Response<DynamicMessage>, Status> {
    if method.name() == "Fail" {
        let mut status = Status::new(Code::NotFound, "no such blob");
        status
            .metadata_mut()
            .insert_bin("x-why-bin", MetadataValue::from_bytes(&BLOB));
        return Err(status);
    }
    let mut seen = std::collections::BTreeMap::new();
    for kv in req.metadata().iter() {
        let (k, v) = match kv {
            KeyAndValueRef::Ascii(k, v) => {
                (k.as_str(), v.to_str().unwrap_or("<not ascii>").to_owned())
            }
            KeyAndValueRef::Binary(k, v) => (
                k.as_str(),
                format!(
                    "hex {} wire {}",
                    hex(&v.to_bytes().unwrap_or_default()),
                    String::from_utf8_lossy(v.as_encoded_bytes())
                ),
            ),
        };
        seen.insert(MapKey::String(k.to_owned()), Value::String(v));
    }
    let mut reply = DynamicMessage::new(method.output());
    reply.set_field_by_name("metadata", Value::Map(seen.into_iter().collect()));
    let mut resp = Response::new(reply);
    resp.metadata_mut()
        .insert_bin("x-blob-bin", MetadataValue::from_bytes(&BLOB));
    Ok(resp)
}

async fn binary_gateway() -> TestGateway {
    let backend = spawn_backend(binary_backend()).await;
    TestGateway::start_with(&echo_config(""), &backend, &testing_descriptors()).await
}

// ---------------------------------------------------------------------------
// Item: binary metadata
// ---------------------------------------------------------------------------

#[tokio::test]
async fn grpc_metadata_bin_headers_reach_the_backend_as_binary_metadata() {
    let gw = binary_gateway().await;
    // Standard and URL-safe alphabets, padded or not: the same two bytes,
    // sent on in gRPC's spelling (standard, unpadded).
    for sent in ["+/8=", "+/8", "-_8=", "-_8"] {
        let r = gw
            .request(
                "GET",
                "/v1/meta",
                &[
                    ("Grpc-Metadata-Blob-Bin", sent),
                    ("Grpc-Metadata-Plain", "p"),
                ],
                None,
            )
            .await;
        let md = &r.ok()["metadata"];
        assert_eq!(md["blob-bin"], "hex fbff wire +/8", "{sent}: {md}");
        assert_eq!(md["plain"], "p", "{sent}: {md}");
    }
}

#[tokio::test]
async fn a_grpc_metadata_bin_header_that_is_not_base64_is_400_naming_it() {
    let gw = binary_gateway().await;
    for bad in ["not base64!", "+/8==x", "+_8"] {
        let r = gw
            .request("GET", "/v1/meta", &[("Grpc-Metadata-Blob-Bin", bad)], None)
            .await;
        r.assert_error(400, 3, "grpc-metadata-blob-bin");
        assert!(r.message().contains("base64"), "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn binary_backend_metadata_comes_back_as_base64_grpc_metadata_bin_headers() {
    let gw = binary_gateway().await;
    let r = gw.get("/v1/meta").await;
    assert!(r.ok()["metadata"].is_object(), "{}", r.text);
    assert_eq!(r.header("grpc-metadata-x-blob-bin"), "+/8=");

    // On an error too (there the metadata travels in the trailers).
    let r = gw.get("/v1/fail").await;
    r.assert_error(404, 5, "no such blob");
    assert_eq!(r.header("grpc-metadata-x-why-bin"), "+/8=");
}

// ---------------------------------------------------------------------------
// Item: header metadata on error replies
// ---------------------------------------------------------------------------

/// A unary method answered the way grpc-go answers after `SendHeader`:
/// response headers with metadata first, then the failure in the trailers.
/// tonic does that for a server-streaming reply whose stream fails at once,
/// and on the wire a unary reply is no different.
#[derive(Clone)]
struct HeadersThenFailure;

impl tonic::server::ServerStreamingService<DynamicMessage> for HeadersThenFailure {
    type Response = DynamicMessage;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<Response<MessageStream>, Status>>;

    fn call(&mut self, _: Request<DynamicMessage>) -> Self::Future {
        Box::pin(async { Ok(headers_then_failure()) })
    }
}

fn headers_then_failure() -> Response<MessageStream> {
    let mut status = Status::new(Code::FailedPrecondition, "failed after its headers");
    status
        .metadata_mut()
        .insert("x-late", MetadataValue::from_static("trailer"));
    let mut resp = Response::new(Box::pin(tokio_stream::once(Err(status))) as MessageStream);
    resp.metadata_mut()
        .insert("x-early", MetadataValue::from_static("header"));
    resp.metadata_mut()
        .insert_bin("x-early-bin", MetadataValue::from_bytes(&BLOB));
    resp
}

/// Serves every call of `testing.v1.Echo` with [`HeadersThenFailure`].
async fn headers_then_failure_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr").to_string();
    let input = testing_pool()
        .get_message_by_name("testing.v1.FailRequest")
        .expect("FailRequest");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let input = input.clone();
            let svc = hyper::service::service_fn(move |req| {
                let codec = gateway::upstream::DynamicCodec::new(input.clone());
                async move {
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok::<_, Infallible>(grpc.server_streaming(HeadersThenFailure, req).await)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

#[tokio::test]
async fn header_metadata_sent_before_a_unary_failure_comes_back_with_the_error() {
    let backend = headers_then_failure_backend().await;
    let gw = TestGateway::start_with(&echo_config(""), &backend, &testing_descriptors()).await;
    let r = gw.get("/v1/fail").await;
    r.assert_error(400, 9, "failed after its headers");
    assert_eq!(r.header("grpc-metadata-x-early"), "header");
    assert_eq!(r.header("grpc-metadata-x-early-bin"), "+/8=");
    assert_eq!(r.header("grpc-metadata-x-late"), "trailer");
    // Framing headers are not metadata.
    assert_eq!(r.header("grpc-metadata-content-type"), "");
}

#[tokio::test]
async fn header_metadata_sent_before_a_server_stream_fails_comes_back_with_the_error() {
    let server = DynamicServer::new(
        &streaming::pool(),
        &streaming::SERVICES,
        |_: &MethodDescriptor, _: Request<DynamicMessage>| {
            Box::pin(async { Err(Status::unimplemented("streams only")) }) as BoxFuture<_>
        },
    )
    .with_streaming(|_: &MethodDescriptor, _: Request<MessageStream>| {
        Box::pin(async { Ok(headers_then_failure()) }) as BoxFuture<_>
    });
    let backend = spawn_backend(server).await;
    let config = streaming::CONFIG.replace("{extra}", "");
    let gw = TestGateway::start_with(&config, &backend, &streaming::descriptors()).await;
    let r = gw.get("/v1/count?count=3").await;
    r.assert_error(400, 9, "failed after its headers");
    assert_eq!(r.header("grpc-metadata-x-early"), "header");
    assert_eq!(r.header("grpc-metadata-x-early-bin"), "+/8=");
    assert_eq!(r.header("grpc-metadata-x-late"), "trailer");
}

// ---------------------------------------------------------------------------
// Item: deadline headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unreadable_grpc_timeout_is_400_naming_the_header_and_its_syntax() {
    let gw = TestGateway::echo("").await;
    for bad in ["soon", "100", "-5S", "99999999999S", "1.5S"] {
        let r = gw
            .request("GET", "/v1/echo", &[("Grpc-Timeout", bad)], None)
            .await;
        r.assert_error(400, 3, &format!("header grpc-timeout \"{bad}\""));
        assert!(
            r.message().contains("1 to 8 digits and a unit, H (hours)"),
            "{bad}: {}",
            r.text
        );
    }
    // Valid ones still work, and still bound the call.
    let r = gw
        .request(
            "GET",
            "/v1/echo?stringField=a",
            &[("Grpc-Timeout", "99999999S")],
            None,
        )
        .await;
    assert_eq!(r.ok(), &json!({"stringField": "a"}));
    let r = gw
        .request(
            "GET",
            "/v1/sleep?millis=250",
            &[("Grpc-Timeout", "50m")],
            None,
        )
        .await;
    r.assert_error(504, 4, "");
}

#[tokio::test]
async fn an_unreadable_x_request_timeout_is_400_naming_the_header_and_its_syntax() {
    let gw = TestGateway::echo("").await;
    for bad in ["soon", "-5S", "99999999999S", "2d", "86401"] {
        let r = gw
            .request("GET", "/v1/echo", &[("X-Request-Timeout", bad)], None)
            .await;
        r.assert_error(400, 3, &format!("header x-request-timeout \"{bad}\""));
        assert!(
            r.message().contains("a number of seconds"),
            "{bad}: {}",
            r.text
        );
    }
    // A bare number is seconds, as documented; units work too.
    for good in ["100", "1.5", "500ms"] {
        let r = gw
            .request(
                "GET",
                "/v1/echo?stringField=a",
                &[("X-Request-Timeout", good)],
                None,
            )
            .await;
        assert_eq!(r.ok(), &json!({"stringField": "a"}), "{good}");
    }
    let r = gw
        .request(
            "GET",
            "/v1/sleep?millis=250",
            &[("X-Request-Timeout", "50ms")],
            None,
        )
        .await;
    r.assert_error(504, 4, "");
}

#[tokio::test]
async fn deadline_headers_are_checked_on_streaming_routes_too() {
    let (gw, _) = streaming::start("").await;
    let r = gw
        .request(
            "GET",
            "/v1/count?count=1",
            &[("Grpc-Timeout", "soon")],
            None,
        )
        .await;
    r.assert_error(400, 3, "header grpc-timeout");
}

// ---------------------------------------------------------------------------
// Item: HEAD
// ---------------------------------------------------------------------------

/// Headers that differ between any two answers.
const PER_ANSWER: [&str; 3] = ["date", "x-request-id", "traceresponse"];

/// Asserts that `head` has `get`'s status and headers and no body.
#[track_caller]
fn assert_head_matches_get(get: &reqwest::Response, head: &reqwest::Response, body_len: usize) {
    assert_eq!(head.status(), get.status());
    let strip = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| !PER_ANSWER.contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(strip(head), strip(get));
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        body_len.to_string()
    );
}

#[tokio::test]
async fn head_on_a_get_route_answers_as_the_get_without_a_body() {
    let gw = TestGateway::echo("").await;
    for path in ["/v1/single/abc", "/v1/fail?code=5&message=gone"] {
        let get = gw.client.get(gw.url(path)).send().await.unwrap();
        let head = gw.client.head(gw.url(path)).send().await.unwrap();
        let get_status = get.status();
        let get_headers = get.headers().clone();
        let get_body = get.bytes().await.unwrap();
        assert!(!get_body.is_empty(), "{path}");
        assert_eq!(get_headers["content-length"], get_body.len().to_string());
        let expected = if path.starts_with("/v1/single") {
            json!({"stringField": "abc"})
        } else {
            json!({"code": 5, "message": "gone", "details": []})
        };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&get_body).unwrap(),
            expected
        );
        assert_eq!(head.status(), get_status, "{path}");
        let mut head_headers = head.headers().clone();
        let head_body = head.bytes().await.unwrap();
        assert!(head_body.is_empty(), "{path}: {head_body:?}");
        let mut get_headers = get_headers;
        for h in PER_ANSWER {
            get_headers.remove(h);
            head_headers.remove(h);
        }
        assert_eq!(head_headers, get_headers, "{path}");
    }
}

#[tokio::test]
async fn head_answers_carry_no_body_bytes_on_the_wire() {
    let gw = TestGateway::echo("").await;
    let r = gw.raw("HEAD /v1/single/abc HTTP/1.1", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        r#"{"stringField":"abc"}"#.len().to_string()
    );
    assert_eq!(r.header("content-type"), "application/json");
    // Everything after the blank line up to the close: nothing.
    assert_eq!(r.text, "");
    assert_eq!(r.header("transfer-encoding"), "");

    // Over HTTP/2 too, where the server, not the protocol library, must
    // leave the body out.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = h2.get(gw.url("/v1/single/abc")).send().await.unwrap();
    let head = h2.head(gw.url("/v1/single/abc")).send().await.unwrap();
    assert_eq!(head.version(), reqwest::Version::HTTP_2);
    assert_head_matches_get(&get, &head, r#"{"stringField":"abc"}"#.len());
    assert_eq!(get.text().await.unwrap(), r#"{"stringField":"abc"}"#);
    assert_eq!(head.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn head_where_no_get_is_routed_is_405_and_allow_lists_head_beside_get() {
    let gw = TestGateway::echo("").await;
    let head = gw
        .client
        .head(gw.url("/v1/items/abc:activate"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 405);
    assert_eq!(head.headers()["allow"], "POST");
    assert_eq!(head.headers()["content-type"], "application/json");
    // The same answer as any other wrong method, body aside.
    let r = gw
        .request("PATCH", "/v1/items/abc:activate", &[], None)
        .await;
    r.assert_error(
        405,
        12,
        "method PATCH is not allowed on /v1/items/abc:activate; allowed: POST",
    );
    assert_eq!(
        head.headers()["content-length"],
        r.text.replace("PATCH", "HEAD").len().to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let r = gw.delete("/v1/single/abc").await;
    r.assert_error(405, 12, "allowed: GET, HEAD");
    assert_eq!(r.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn head_requests_are_counted_under_method_head() {
    // A route of its own: the metrics registry is shared by the tests of
    // this binary.
    let config = format!(
        "{}\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/head-count/{{string_field}}\"\ngrpc = \"testing.v1.Echo/Echo\"\n",
        echo_config("")
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        let r = gw.request("HEAD", "/v1/head-count/x", &[], None).await;
        assert_eq!((r.status, r.text.as_str()), (200, ""));
    }
    gw.get("/v1/head-count/x").await.ok();
    let text = gateway::telemetry::metrics::handle().render();
    let count = |method: &str| {
        text.lines()
            .filter(|l| l.starts_with("gateway_http_requests_total{"))
            .filter(|l| l.contains("route=\"/v1/head-count/{string_field}\""))
            .filter(|l| l.contains(&format!("method=\"{method}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("HEAD"), 3.0, "{text}");
    assert_eq!(count("GET"), 1.0, "{text}");
}
