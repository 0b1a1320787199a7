//! HTTP <-> protobuf: request mapping, reply rendering, and status mapping.

pub mod fieldmask;
pub mod framing;
pub mod httpbody;
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
