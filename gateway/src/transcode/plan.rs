//! What transcoding needs, compiled at config load: a [`Plan`] per route
//! and the [`Settings`] every route shares. The route owns its plan and
//! hands it over; transcoding sees nothing else of the route or snapshot.

use prost_reflect::SerializeOptions;
use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor, MethodDescriptor};

use super::fast::FastRoute;
use super::multipart::Bounds;
use super::shape::Shaping;
use super::{BodyRule, DecodeOptions, FieldPath};

/// One route's mapping between HTTP and its gRPC method.
#[derive(Debug)]
pub struct Plan {
    pub grpc_method: MethodDescriptor,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// One field chain per template variable, in template order.
    pub path_fields: Vec<FieldPath>,
    /// Field-number chains set by the path or body; the query may not set them.
    pub bound: Vec<Vec<u32>>,
    pub body: BodyRule,
    pub response_body: Option<FieldDescriptor>,
    /// The direct JSON <-> wire path, where the route allows it.
    pub fast: FastRoute,
    /// Streaming, raw-body, multipart and response shaping options.
    pub shaping: Shaping,
}

impl Plan {
    /// Whether the request is a stream of messages (client or bidirectional).
    pub fn streams_request(&self) -> bool {
        self.grpc_method.is_client_streaming()
    }

    /// Whether the reply is a stream of messages (server or bidirectional).
    pub fn streams_reply(&self) -> bool {
        self.grpc_method.is_server_streaming()
    }
}

/// Transcoding settings every route shares (`[server]` and `[limits]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The snapshot's descriptor pool: error details name their types in it.
    pub pool: DescriptorPool,
    pub decode: DecodeOptions,
    pub encode: SerializeOptions,
    /// `server.max_body_bytes`: a whole body, one NDJSON line, a bidi
    /// request read whole over HTTP/1.1.
    pub max_body_bytes: usize,
    /// `limits.min_body_rate`, bytes per second.
    pub min_body_rate: u64,
    pub multipart: Bounds,
}
