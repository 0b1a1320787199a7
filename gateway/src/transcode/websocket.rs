//! WebSocket frames and messages (docs/streaming.md, "WebSocket"): each
//! text frame from the client is one JSON request message, transcoded as an
//! NDJSON line is (the route's body rule, path variables and query applied);
//! each reply goes out as one text frame `{"result": ...}`, and the call's
//! end as a last `{"status": google.rpc.Status}` frame. The socket and the
//! call are the pipeline's (`pipeline::websocket`).
//!
//! Frames are wrapped (`result`, `status`) rather than sent bare so that a
//! client can tell the final status from a reply whose fields happen to be
//! `code` and `message` as each frame arrives, without waiting for the
//! close; `result` is the key grpc-gateway's streams and our NDJSON use.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, SerializeOptions};

use super::builder::Builder;
use super::{Plan, Settings, TranscodeError};
use crate::error::Error;

/// The final frame of a call that ended OK.
pub const OK_STATUS_FRAME: &str = r#"{"status":{"code":0,"message":"","details":[]}}"#;

/// A route's frames: requests in, replies out.
pub struct Frames {
    builder: Builder,
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    opts: SerializeOptions,
    /// The route's direct wire -> JSON plan, when it has one.
    fast: Option<Arc<super::wire_json::ReplyPlan>>,
    /// `server.max_body_bytes`: the largest message, each way.
    max_bytes: usize,
}

impl Frames {
    pub fn new(
        settings: &Settings,
        plan: &Arc<Plan>,
        vars: &[Cow<'_, str>],
        query: Option<&str>,
    ) -> Frames {
        Frames {
            builder: Builder {
                plan: plan.clone(),
                vars: vars.iter().map(|v| v.to_string()).collect(),
                query: query.map(str::to_owned),
                opts: settings.decode,
            },
            output: plan.output.clone(),
            response_body: plan.response_body.clone(),
            opts: settings.encode.clone(),
            fast: plan.fast.reply.clone(),
            max_bytes: settings.max_body_bytes,
        }
    }

    /// The largest request message (`server.max_body_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Text frame `n` (1-based) of the client as an encoded request message;
    /// a frame that is not a valid message is a 400 naming it.
    pub fn request(&self, n: u64, text: &str) -> Result<Bytes, Error> {
        self.builder
            .line(text.as_bytes())
            .map_err(|e| Error::BadRequest(format!("frame {n} of the request: {}", e.message)))
    }

    /// One reply, as the text of its frame.
    pub fn reply(&self, raw: &[u8]) -> Result<String, Error> {
        let json = self.json(raw).map_err(|e| Error::BadGateway(e.message))?;
        let mut frame = String::with_capacity(json.len() + 11);
        frame.push_str(r#"{"result":"#);
        // Both renderers write UTF-8 JSON.
        frame.push_str(&String::from_utf8_lossy(&json));
        frame.push('}');
        Ok(frame)
    }

    fn json(&self, raw: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        if let Some(plan) = &self.fast {
            let mut json = Vec::with_capacity(raw.len() * 2 + 16);
            if plan.write(raw, &mut json).is_ok() {
                return Ok(json);
            }
        }
        let msg = DynamicMessage::decode(self.output.clone(), raw).map_err(|e| {
            TranscodeError::new(format!(
                "the backend's reply is not a valid {}: {e}",
                self.output.full_name()
            ))
        })?;
        super::encode_reply(&msg, self.response_body.as_ref(), &self.opts)
    }
}

/// The final frame of a call that failed: the one error type's status.
pub fn status_frame(e: &Error) -> String {
    let status = e.to_json();
    let mut frame = String::with_capacity(status.len() + 11);
    frame.push_str(r#"{"status":"#);
    frame.push_str(&String::from_utf8_lossy(&status));
    frame.push('}');
    frame
}
