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

#[cfg(test)]
impl Plan {
    /// A route's plan as config load builds it (default shaping), for unit
    /// tests: `method` by full name in the test pool
    /// (`testing.v1.Streams.List`), `body` as routes.toml writes it (`""`
    /// for none, `"*"`, or a field), and one field path per variable
    /// (`inner.deeper.value`).
    pub(crate) fn for_test(method: &str, body: &str, vars: &[&str]) -> Plan {
        let pool = super::test_pool();
        let (service, name) = method.rsplit_once('.').expect("a method's full name");
        let grpc_method = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .unwrap_or_else(|| panic!("no method {method} in the test pool"));
        let input = grpc_method.input();
        let field = |desc: &MessageDescriptor, name: &str| {
            desc.get_field_by_name(name)
                .unwrap_or_else(|| panic!("{} has no field {name}", desc.full_name()))
        };
        let path_fields: Vec<FieldPath> = vars
            .iter()
            .map(|path| {
                let mut desc = input.clone();
                path.split('.')
                    .map(|name| {
                        let f = field(&desc, name);
                        if let prost_reflect::Kind::Message(m) = f.kind() {
                            desc = m;
                        }
                        f
                    })
                    .collect()
            })
            .collect();
        let body = match body {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            name => BodyRule::Field(field(&input, name)),
        };
        let mut bound: Vec<Vec<u32>> = path_fields
            .iter()
            .map(|p| p.iter().map(FieldDescriptor::number).collect())
            .collect();
        if let BodyRule::Field(f) = &body {
            bound.push(vec![f.number()]);
        }
        let shaping = Shaping::default();
        let mut planner = super::fast::Planner::new(
            DecodeOptions::default(),
            super::wire_json::JsonStyle::default(),
        );
        let fast = planner.for_route(&grpc_method, &body, &shaping, None);
        Plan {
            input,
            output: grpc_method.output(),
            grpc_method,
            path_fields,
            bound,
            body,
            response_body: None,
            fast,
            shaping,
        }
    }
}

#[cfg(test)]
impl Settings {
    /// The defaults of `[server]` and `[limits]`, over the test pool.
    pub(crate) fn for_test() -> Settings {
        Settings {
            pool: super::test_pool().clone(),
            decode: DecodeOptions::default(),
            encode: SerializeOptions::new(),
            max_body_bytes: 1 << 20,
            min_body_rate: 0,
            multipart: super::multipart::Bounds {
                preamble: 1024,
                part_headers: 1024,
            },
        }
    }
}
