//! The HTTP side of the wire contract: binary metadata both ways, a
//! backend's header metadata on error answers, and deadline headers the
//! gateway cannot read.

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

