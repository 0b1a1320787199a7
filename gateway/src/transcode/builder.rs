//! Request messages built from pieces of a body (an NDJSON line, a chunk
//! of raw bytes, a multipart part) plus the path variables and query, for
//! the streaming and multipart request paths.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap};
use prost_reflect::DynamicMessage;

use super::{httpbody, request, BodyRule, Plan, TranscodeError};

/// Raw request bodies are sent on in messages of at most this size: large
/// enough that per-message overhead is noise, small enough that one message
/// never holds much of an upload.
pub const RAW_CHUNK_BYTES: usize = 64 * 1024;

/// Builds request messages from pieces of the body plus the path and query.
#[derive(Clone)]
pub struct Builder {
    pub(crate) plan: Arc<Plan>,
    pub(crate) vars: Vec<String>,
    pub(crate) query: Option<String>,
    pub(crate) opts: super::DecodeOptions,
}

impl Builder {
    /// Path variables win over the body, as in grpc-gateway.
    pub(crate) fn path_and_query(&self, msg: &mut DynamicMessage) -> Result<(), TranscodeError> {
        for (fields, value) in self.plan.path_fields.iter().zip(&self.vars) {
            request::set_path_field(msg, fields, value)?;
        }
        if let Some(q) = &self.query {
            request::apply_query(msg, q, &self.plan.body, &self.plan.bound, self.opts)?;
        }
        Ok(())
    }

    /// One NDJSON line.
    pub(crate) fn line_message(&self, json: &[u8]) -> Result<DynamicMessage, TranscodeError> {
        let mut msg = request::decode_body(&self.plan.input, &self.plan.body, json, self.opts)?;
        self.path_and_query(&mut msg)?;
        Ok(msg)
    }

    /// Raw bytes into the HttpBody request or body field.
    pub(crate) fn raw_body_message(
        &self,
        content_type: &str,
        data: Bytes,
    ) -> Result<DynamicMessage, TranscodeError> {
        let target = match &self.plan.body {
            BodyRule::Field(f) => Some(f),
            _ => None,
        };
        let mut msg = httpbody::fill_request(&self.plan.input, target, content_type, data);
        if target.is_some() {
            self.path_and_query(&mut msg)?;
        }
        Ok(msg)
    }
}

/// The request's content type, or empty.
pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
