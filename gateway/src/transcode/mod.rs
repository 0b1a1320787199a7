//! HTTP <-> protobuf: request mapping, reply rendering, and status mapping.

pub mod fieldmask;
pub mod framing;
pub mod httpbody;
pub mod json_wire;
pub mod metadata;
pub mod multipart;
pub mod request;
pub mod response;
pub mod shape;
pub mod status;
pub mod stream;
pub mod strict;

pub use request::{BodyRule, DecodeOptions, FieldPath};
pub use response::encode_reply;
pub use status::{http_status, RpcStatus};

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

/// Reads a whole request body up to `limit` bytes: a declared length over
/// the limit is refused before any byte is read, a longer body as soon as it
/// passes the limit. Shared by unary and raw-body routes.
pub async fn read_limited(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, RpcStatus> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        RpcStatus::new(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(RpcStatus::new(
            http::StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            format!("reading the request body failed: {e}"),
        )),
    }
}
