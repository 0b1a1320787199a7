//! HTTP <-> protobuf: request mapping and reply rendering.

mod builder;
pub mod fast;
pub mod fieldmask;
pub mod framing;
pub mod httpbody;
pub mod json;
mod json_int;
pub mod json_wire;
pub mod metadata;
pub mod multipart;
mod plan;
pub mod request;
pub mod response;
pub mod shape;
pub mod stream;
pub mod strict;
pub mod websocket;
mod wire;
pub mod wire_json;

pub use plan::{Plan, Settings};
pub use request::{BodyRule, DecodeOptions, FieldPath};
pub use response::encode_reply;

/// A request the gateway cannot turn into a message: always a 400 naming what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TranscodeError {
    pub message: String,
}

impl TranscodeError {
    pub fn new(message: impl Into<String>) -> Self {
        TranscodeError {
            message: message.into(),
        }
    }
}

/// How far behind `min_body_rate` a body may fall: a few seconds of stall
/// (a retransmission, a radio waking up) are no attack.
pub const BODY_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a whole request body up to `limit` bytes: a declared length over
/// the limit is refused before any byte is read, a longer body as soon as it
/// passes the limit. Shared by unary and raw-body routes.
pub async fn read_limited(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    min_rate: u64,
) -> Result<bytes::Bytes, crate::error::Error> {
    use crate::error::Error;
    use http_body_util::BodyExt as _;
    let too_large = || Error::body_too_large(limit);
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let mut body = body;
    // One frame is the whole body nearly always: kept as is, not copied.
    let mut first: Option<bytes::Bytes> = None;
    let mut more = bytes::BytesMut::new();
    let started = tokio::time::Instant::now();
    let mut received: u64 = 0;
    loop {
        let frame = match min_rate {
            0 => body.frame().await,
            rate => {
                // The body may lag `BODY_RATE_GRACE` behind `rate`, no more.
                let due = started
                    + BODY_RATE_GRACE
                    + std::time::Duration::from_secs_f64(received as f64 / rate as f64);
                match tokio::time::timeout_at(due, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => return Err(Error::BodyTooSlow(rate)),
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
            Some(Err(e)) => {
                return Err(Error::BadRequest(format!(
                    "reading the request body failed: {e}"
                )))
            }
        };
        received += data.len() as u64;
        if received > limit as u64 {
            return Err(too_large());
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            f => {
                if let Some(f) = f {
                    more.extend_from_slice(&f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| more.freeze()))
}

/// Streaming methods over `testing.v1.Everything`, one of each kind, for
/// unit tests of the streaming request paths (the end-to-end service's
/// streaming methods take other types).
#[cfg(test)]
const TEST_STREAMS_PROTO: &str = r#"
syntax = "proto3";
package testing.v1;
import "testing/v1/testing.proto";
service Streams {
  rpc List(Everything) returns (stream Everything);
  rpc Upload(stream Everything) returns (Everything);
  rpc Chat(stream Everything) returns (stream Everything);
}
"#;

/// The end-to-end tests' descriptors (`testing.v1.Everything` has every
/// kind of field), the benchmark's, and [`TEST_STREAMS_PROTO`], for unit
/// tests of the transcoders.
#[cfg(test)]
pub(crate) fn test_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gateway-test-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("testing/v1")).unwrap();
        std::fs::create_dir_all(dir.join("bench/v1")).unwrap();
        std::fs::write(
            dir.join("testing/v1/testing.proto"),
            include_str!("../../../tests/fixtures/descriptors/testing.proto"),
        )
        .unwrap();
        std::fs::write(dir.join("testing/v1/streams.proto"), TEST_STREAMS_PROTO).unwrap();
        std::fs::write(
            dir.join("bench/v1/bench.proto"),
            include_str!("../../../tests/fixtures/bench/bench.proto"),
        )
        .unwrap();
        let loaded = crate::descriptors::load_dir(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        loaded.expect("test descriptors").pool
    })
}

/// The transcoders' property tests: 256 cases, a few seconds each in a
/// debug build on two cores (`PROPTEST_CASES=100000` for a longer hunt).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
