//! Everything a request can fail with, and the one place it is rendered.
//!
//! Each variant knows its HTTP status and gRPC code; [`Error::into_response`]
//! writes the one `google.rpc.Status` body (`{"code", "message",
//! "details"}`) and the headers the failure calls for (`Allow`,
//! `Retry-After`, `WWW-Authenticate`, a backend's `Grpc-Metadata-*`), and
//! [`render`] re-writes it in the request's [`Format`] (RFC 9457
//! problem+json when the client asked for that, gRPC-Web trailers, the
//! Connect protocol's error JSON). Streams that fail after their answer began embed
//! [`Error::to_json`] in their framing. No other code builds error answers.
//!
//! The HTTP status of a gRPC code is grpc-gateway's table
//! (`runtime.HTTPStatusFromCode`), because that is what REST clients of gRPC
//! services already expect on the wire.

use std::borrow::Cow;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
use tonic::Code;

/// A request's failure, from the route stage to the backend's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    // Where the request goes.
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The methods the path serves, comma-separated (the `Allow` value).
        allowed: String,
    },
    #[error("bad request path: {0}")]
    BadPath(String),

    // The request's size, shape and pace.
    /// 414: the request target is over `limits.max_url_bytes`.
    #[error("{0}")]
    TargetTooLong(String),
    /// 431: too many headers, or too many bytes of them.
    #[error("{0}")]
    HeadTooLarge(String),
    /// 413: a body, a line or a part over its limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("the request body is arriving slower than {0} bytes/s (limits.min_body_rate)")]
    BodyTooSlow(u64),
    #[error("the request took longer than {0} ms (limits.request_timeout)")]
    RequestTimeout(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 415: a `Content-Encoding` the gateway does not read; the answer's
    /// `Accept-Encoding` lists those it does (RFC 9110 section 15.5.16).
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// A header, path, query or body the gateway cannot read or map.
    #[error("{0}")]
    BadRequest(String),
    /// Like [`Error::BadRequest`], with the fields at fault as a
    /// `google.rpc.BadRequest` detail.
    #[error("{message}")]
    InvalidFields {
        message: String,
        violations: Vec<FieldViolation>,
    },

    // Edge policies.
    #[error("{0}")]
    CorsRefused(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        /// Seconds until the client may try again (`Retry-After`).
        retry_after: u64,
    },
    /// 401, with the `WWW-Authenticate` challenge to send.
    #[error("{message}")]
    Unauthenticated {
        message: String,
        challenge: HeaderValue,
    },
    /// 403: a valid token without the scope or claims the route needs.
    #[error("{message}")]
    Forbidden {
        message: String,
        challenge: HeaderValue,
    },

    // The backend.
    /// The gateway did not call: circuit open, too many calls in flight, no
    /// endpoint in rotation, or the deadline had already passed.
    #[error("{message}")]
    Refused { code: Code, message: String },
    /// The backend's own error status (or a transport failure to it).
    #[error("{}", .0.message)]
    Backend(Box<BackendStatus>),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The backend answered in a way the gateway cannot pass on.
    #[error("{0}")]
    BadGateway(String),

    // The gateway itself.
    #[error("{0}")]
    Internal(String),
    #[error("the gateway is shutting down and the request was still running when server.drain_timeout passed")]
    ShuttingDown,
    /// A resource the gateway serves itself (admin endpoints) is not there.
    #[error("{0}")]
    NotFound(String),
}

/// A backend's error: its code and message, its details decoded to JSON,
/// and the response headers its metadata maps to.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub code: Code,
    pub message: String,
    /// Each an `Any` rendered as proto3 JSON, with `@type`.
    pub details: Vec<serde_json::Value>,
    /// `Grpc-Metadata-*` and the like, sent with the answer.
    pub headers: HeaderMap,
    /// The backend's `grpc-status-details-bin` (an encoded
    /// `google.rpc.Status`), passed on as it is to gRPC-Web and Connect
    /// clients.
    pub details_bin: Bytes,
}

impl BackendStatus {
    /// A backend's status, with its `grpc-status-details-bin` details decoded
    /// through `pool` (types the pool does not know are kept as base64
    /// `value`) and no headers: the caller adds those it sends.
    pub fn from_grpc(status: &tonic::Status, pool: &DescriptorPool) -> BackendStatus {
        BackendStatus {
            code: status.code(),
            message: status.message().to_owned(),
            details: if status.details().is_empty() {
                Vec::new()
            } else {
                decode_details(status.details(), pool)
            },
            headers: HeaderMap::new(),
            details_bin: Bytes::copy_from_slice(status.details()),
        }
    }
}

/// One entry of a `google.rpc.BadRequest` detail.
#[derive(Debug, Clone)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl Error {
    /// 413 for a body over `limit` bytes: one text wherever it is read.
    pub fn body_too_large(limit: usize) -> Error {
        Error::TooLarge(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
    }

    /// A backend's status (see [`BackendStatus::from_grpc`]).
    pub fn from_grpc(status: &tonic::Status, pool: &DescriptorPool) -> Error {
        Error::Backend(Box::new(BackendStatus::from_grpc(status, pool)))
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::NoRoute { .. } | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::BadPath(_) | Error::BadRequest(_) | Error::InvalidFields { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::TargetTooLong(_) => StatusCode::URI_TOO_LONG,
            Error::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            Error::RequestTimeout(_) | Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::UnsupportedMediaType(_) | Error::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Error::CorsRefused(_) | Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Error::Refused { code, .. } => http_status(*code),
            Error::Backend(b) => http_status(b.code),
            Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NoRoute { .. } | Error::NotFound(_) => Code::NotFound,
            Error::MethodNotAllowed { .. } => Code::Unimplemented,
            Error::BadPath(_)
            | Error::BadRequest(_)
            | Error::InvalidFields { .. }
            | Error::TargetTooLong(_)
            | Error::HeadTooLarge(_)
            | Error::TooLarge(_)
            | Error::UnsupportedMediaType(_)
            | Error::UnsupportedEncoding(_) => Code::InvalidArgument,
            Error::BodyTooSlow(_) | Error::RequestTimeout(_) | Error::DeadlineExceeded(_) => {
                Code::DeadlineExceeded
            }
            Error::CorsRefused(_) | Error::Forbidden { .. } => Code::PermissionDenied,
            Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::Refused { code, .. } => *code,
            Error::Backend(b) => b.code,
            Error::BadGateway(_) | Error::Internal(_) => Code::Internal,
            Error::ShuttingDown => Code::Unavailable,
        }
    }

    /// The `details` of the body.
    fn details(&self) -> Cow<'_, [serde_json::Value]> {
        match self {
            Error::Backend(b) => Cow::Borrowed(&b.details),
            Error::InvalidFields { violations, .. } => Cow::Owned(vec![serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": violations.iter().map(|v| serde_json::json!({
                    "field": v.field,
                    "description": v.description,
                })).collect::<Vec<_>>(),
            })]),
            _ => Cow::Borrowed(&[]),
        }
    }

    /// The `google.rpc.Status` body.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct, not json!{}, so the fields keep google.rpc.Status order.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: i32,
            message: &'a str,
            details: &'a [serde_json::Value],
        }
        serde_json::to_vec(&Body {
            code: self.code() as i32,
            message: &self.to_string(),
            details: &self.details(),
        })
        .expect("strings and JSON values always serialise")
    }

    /// The same error as an RFC 9457 problem document. `code` and `details`
    /// are extension members carrying what google.rpc.Status carries.
    pub fn to_problem_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Problem<'a> {
            r#type: &'static str,
            title: &'a str,
            status: u16,
            detail: &'a str,
            code: i32,
            details: &'a [serde_json::Value],
        }
        let http = self.http_status();
        serde_json::to_vec(&Problem {
            // No problem-type registry of our own: about:blank says the HTTP
            // status is the problem type, and `title` is its phrase.
            r#type: "about:blank",
            title: http.canonical_reason().unwrap_or("Error"),
            status: http.as_u16(),
            detail: &self.to_string(),
            code: self.code() as i32,
            details: &self.details(),
        })
        .expect("strings and JSON values always serialise")
    }

    /// The answer: status, the headers this failure calls for, and the
    /// JSON body.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(Body::from(self.to_json()));
        *resp.status_mut() = self.http_status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Error::MethodNotAllowed { allowed, .. } => {
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    headers.insert(header::ALLOW, v);
                }
            }
            Error::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            // The gateway did not call because the backend (or the gateway)
            // is saturated or out of service for now: a concurrency limit,
            // load shed, an open circuit, no endpoint yet. All momentary; a
            // second is the next limiter windows or breaker probe away,
            // and keeps a client from hammering straight back.
            Error::Refused {
                code: Code::Unavailable,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_REFUSED_AFTER));
            }
            Error::UnsupportedEncoding(_) => {
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static(crate::encoding::ACCEPTED),
                );
            }
            Error::Unauthenticated { challenge, .. } | Error::Forbidden { challenge, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            Error::Backend(b) => {
                for (name, value) in &b.headers {
                    headers.append(name, value.clone());
                }
            }
            _ => {}
        }
        // Kept beside the body so the answer can be re-rendered as
        // another format when the request asks for one (see [`render`]).
        resp.extensions_mut().insert(self);
        resp
    }
}

/// `Retry-After` (seconds) of an UNAVAILABLE refusal (see `into_response`).
pub const RETRY_REFUSED_AFTER: u64 = 1;

/// How a request's errors are written: chosen once per request from its
/// protocol and `Accept` (see the pipeline's render stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `google.rpc.Status` as JSON, with the HTTP status of the code.
    #[default]
    Json,
    /// RFC 9457 problem+json.
    Problem,
    /// gRPC-Web: HTTP 200 and the status as trailers in the headers (a
    /// trailers-only answer), with the request's content type.
    GrpcWeb { content_type: &'static str },
    /// The Connect protocol's error JSON, with the HTTP status of the code.
    Connect,
    /// A Connect streaming call: HTTP 200 and the error in the
    /// end-of-stream message.
    ConnectStream { json: bool },
}

/// `google.rpc.Status` as protobuf, for `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusProto {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

impl Error {
    /// The encoded `google.rpc.Status` of this error, when it has details
    /// to carry (a backend's own, or the gateway's field violations).
    fn details_bin(&self) -> Option<Bytes> {
        match self {
            Error::Backend(b) if !b.details_bin.is_empty() => Some(b.details_bin.clone()),
            Error::InvalidFields { violations, .. } => {
                #[derive(Clone, PartialEq, prost::Message)]
                struct Violation {
                    #[prost(string, tag = "1")]
                    field: String,
                    #[prost(string, tag = "2")]
                    description: String,
                }
                #[derive(Clone, PartialEq, prost::Message)]
                struct BadRequest {
                    #[prost(message, repeated, tag = "1")]
                    field_violations: Vec<Violation>,
                }
                let detail = BadRequest {
                    field_violations: violations
                        .iter()
                        .map(|v| Violation {
                            field: v.field.clone(),
                            description: v.description.clone(),
                        })
                        .collect(),
                };
                let status = StatusProto {
                    code: self.code() as i32,
                    message: self.to_string(),
                    details: vec![prost_types::Any {
                        type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                        value: prost::Message::encode_to_vec(&detail),
                    }],
                };
                Some(Bytes::from(prost::Message::encode_to_vec(&status)))
            }
            _ => None,
        }
    }

    /// The status as gRPC trailers: `grpc-status`, `grpc-message`
    /// (percent-encoded, as the gRPC spec says) and, with details,
    /// `grpc-status-details-bin`.
    pub fn grpc_trailers(&self) -> HeaderMap {
        use base64::Engine as _;
        let mut out = HeaderMap::new();
        out.insert("grpc-status", HeaderValue::from(self.code() as i32));
        let message =
            percent_encoding::utf8_percent_encode(&self.to_string(), GRPC_MESSAGE_ESCAPES)
                .to_string();
        if let Ok(v) = HeaderValue::from_str(&message) {
            out.insert("grpc-message", v);
        }
        if let Some(bin) = self.details_bin() {
            let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bin);
            if let Ok(v) = HeaderValue::from_str(&text) {
                out.insert("grpc-status-details-bin", v);
            }
        }
        out
    }

    /// The Connect protocol's error JSON: `{"code": "not_found",
    /// "message": ..., "details": [{"type", "value"}]}`, details as
    /// base64 protobuf `Any` values.
    pub fn to_connect_json(&self) -> Vec<u8> {
        use base64::Engine as _;
        let details: Vec<serde_json::Value> = self
            .details_bin()
            .and_then(|bin| <StatusProto as prost::Message>::decode(bin).ok())
            .map(|s| {
                s.details
                    .iter()
                    .map(|any| {
                        serde_json::json!({
                            "type": any.type_url.rsplit('/').next().unwrap_or(&any.type_url),
                            "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut body = serde_json::json!({
            "code": connect_code(self.code()),
            "message": self.to_string(),
        });
        if !details.is_empty() {
            body["details"] = serde_json::Value::Array(details);
        }
        serde_json::to_vec(&body).expect("JSON values always serialise")
    }
}

/// The characters gRPC's `grpc-message` percent-encodes: everything outside
/// printable ASCII, and `%` itself.
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The Connect protocol's name of a gRPC code.
pub fn connect_code(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status grpc-gateway answers for a gRPC code (the Connect
/// protocol's table is the same since its 2024 revision).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 is nginx's "client closed request"; grpc-gateway uses it too.
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The media type of RFC 9457 error documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Whether the client prefers `application/problem+json` to plain JSON
/// errors: it must be named, and come before `application/json` and `*/*`.
pub fn wants_problem(headers: &HeaderMap) -> bool {
    // Most requests do not name it at all: no parse for them.
    let named = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(PROBLEM_JSON.len())
            .any(|w| w.eq_ignore_ascii_case(PROBLEM_JSON.as_bytes()))
    });
    if !named {
        return false;
    }
    for range in crate::accept::ranges(headers) {
        match range.as_str() {
            PROBLEM_JSON => return true,
            "application/json" | "*/*" | "application/*" => return false,
            _ => {}
        }
    }
    false
}

/// Re-renders an error answer made by [`Error::into_response`] in
/// `format`; any other answer, and any answer in [`Format::Json`], passes
/// unchanged. Headers the failure or a layer added (rate-limit fields,
/// CORS, `Retry-After`) stay.
pub fn render(format: Format, resp: Response<Body>) -> Response<Body> {
    if format == Format::Json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Some(error) = parts.extensions.get::<Error>() else {
        return Response::from_parts(parts, body);
    };
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    let set_type = |headers: &mut HeaderMap, t: &'static str| {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
    };
    let body = match format {
        Format::Json => unreachable!("returned above"),
        Format::Problem => {
            set_type(headers, PROBLEM_JSON);
            Body::from(error.to_problem_json())
        }
        Format::Connect => {
            set_type(headers, "application/json");
            Body::from(error.to_connect_json())
        }
        Format::GrpcWeb { content_type } => {
            parts.status = StatusCode::OK;
            set_type(headers, content_type);
            headers.extend(error.grpc_trailers());
            Body::empty()
        }
        Format::ConnectStream { json } => {
            parts.status = StatusCode::OK;
            set_type(
                headers,
                if json {
                    "application/connect+json"
                } else {
                    "application/connect+proto"
                },
            );
            let end = format!(
                "{{\"error\":{}}}",
                String::from_utf8_lossy(&error.to_connect_json())
            );
            Body::from(envelope(END_STREAM, end.as_bytes()))
        }
    };
    Response::from_parts(parts, body)
}

/// The flag of the Connect streaming envelope that ends a stream.
pub const END_STREAM: u8 = 0x02;

/// One enveloped message (gRPC, gRPC-Web and Connect streaming framing):
/// a flags byte, a big-endian u32 length, the bytes.
pub fn envelope(flags: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// Renders the `details` of an encoded `google.rpc.Status` as proto3 JSON `Any`s.
fn decode_details(bytes: &[u8], pool: &DescriptorPool) -> Vec<serde_json::Value> {
    use base64::Engine as _;
    let Some(status_desc) = pool.get_message_by_name("google.rpc.Status") else {
        return Vec::new();
    };
    let Ok(status) = DynamicMessage::decode(status_desc, bytes) else {
        return Vec::new();
    };
    let Some(details) = status.get_field_by_name("details") else {
        return Vec::new();
    };
    let Some(list) = details.as_list() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| v.as_message())
        .map(|any| {
            let type_url = any
                .get_field_by_name("type_url")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let value = any
                .get_field_by_name("value")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            let known = type_url
                .rsplit('/')
                .next()
                .and_then(|name| any.descriptor().parent_pool().get_message_by_name(name))
                .and_then(|desc| DynamicMessage::decode(desc, value.as_ref()).ok());
            match known.and_then(|m| serde_json::to_value(&m).ok()) {
                Some(serde_json::Value::Object(mut fields)) => {
                    fields.insert("@type".into(), type_url.into());
                    serde_json::Value::Object(fields)
                }
                // Well-known types render as a bare value inside `Any`.
                Some(other) => serde_json::json!({"@type": type_url, "value": other}),
                None => serde_json::json!({
                    "@type": type_url,
                    "value": base64::engine::general_purpose::STANDARD.encode(&value),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn status_table_matches_grpc_gateway() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[tokio::test]
    async fn error_body_has_code_message_details() {
        let e = Error::NoRoute {
            method: "GET".into(),
            path: "/v1/x".into(),
        };
        let resp = e.into_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"code": 5, "message": "no route for GET /v1/x", "details": []})
        );
    }

    #[test]
    fn every_variant_pairs_a_status_with_the_code_grpc_gateway_would() {
        // Where the gateway refuses with a gRPC code a backend could also
        // send, the HTTP status is the one grpc-gateway gives that code.
        let challenge = HeaderValue::from_static("Bearer");
        let mapped = [
            Error::NotFound("x".into()),
            Error::BadRequest("x".into()),
            Error::RequestTimeout(1),
            Error::DeadlineExceeded("x".into()),
            Error::Forbidden {
                message: "x".into(),
                challenge: challenge.clone(),
            },
            Error::Unauthenticated {
                message: "x".into(),
                challenge,
            },
            Error::RateLimited {
                message: "x".into(),
                retry_after: 1,
            },
            Error::Refused {
                code: Code::Unavailable,
                message: "x".into(),
            },
            Error::Internal("x".into()),
            Error::ShuttingDown,
        ];
        for e in mapped {
            assert_eq!(e.http_status(), http_status(e.code()), "{e:?}");
        }
        // The HTTP-specific refusals keep a more precise status.
        assert_eq!(Error::TargetTooLong("x".into()).http_status(), 414);
        assert_eq!(Error::HeadTooLarge("x".into()).http_status(), 431);
        assert_eq!(Error::body_too_large(10).http_status(), 413);
        assert_eq!(Error::BodyTooSlow(10).http_status(), 408);
        assert_eq!(Error::UnsupportedMediaType("x".into()).http_status(), 415);
        assert_eq!(Error::BadGateway("x".into()).http_status(), 502);
    }

    #[tokio::test]
    async fn refusals_carry_the_headers_they_call_for() {
        let resp = Error::MethodNotAllowed {
            method: "PUT".into(),
            path: "/v1/x".into(),
            allowed: "GET, POST".into(),
        }
        .into_response();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST");
        let resp = Error::RateLimited {
            message: "slow down".into(),
            retry_after: 7,
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        let shed = Error::Refused {
            code: Code::Unavailable,
            message: "backend \"b\" is shedding load".into(),
        }
        .into_response();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        let late = Error::Refused {
            code: Code::DeadlineExceeded,
            message: "the client's deadline had passed".into(),
        }
        .into_response();
        assert!(!late.headers().contains_key(header::RETRY_AFTER));
        let resp = Error::Unauthenticated {
            message: "no token".into(),
            challenge: HeaderValue::from_static("Bearer realm=\"api\""),
        }
        .into_response();
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"api\""
        );
        let mut headers = HeaderMap::new();
        headers.insert("grpc-metadata-x-a", HeaderValue::from_static("1"));
        let resp = Error::Backend(Box::new(BackendStatus {
            code: Code::NotFound,
            message: "no book 7".into(),
            details: vec![serde_json::json!({"@type": "t"})],
            headers,
            details_bin: Bytes::new(),
        }))
        .into_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["grpc-metadata-x-a"], "1");
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"code": 5, "message": "no book 7", "details": [{"@type": "t"}]})
        );
    }

    #[tokio::test]
    async fn field_violations_render_as_a_bad_request_detail() {
        let resp = Error::InvalidFields {
            message: "rejected".into(),
            violations: vec![FieldViolation {
                field: "routes[0].path".into(),
                description: "bad template".into(),
            }],
        }
        .into_response();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            body_json(resp).await["details"][0],
            serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "routes[0].path", "description": "bad template"}],
            })
        );
    }

    #[tokio::test]
    async fn grpc_web_and_connect_errors_carry_code_message_and_details() {
        let e = Error::InvalidFields {
            message: "bad request: 100% wrong".into(),
            violations: vec![FieldViolation {
                field: "name".into(),
                description: "required".into(),
            }],
        };
        // gRPC-Web: a trailers-only answer, HTTP 200, the message
        // percent-encoded, the details as base64 google.rpc.Status.
        let resp = render(
            Format::GrpcWeb {
                content_type: "application/grpc-web+proto",
            },
            e.clone().into_response(),
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "3");
        assert_eq!(resp.headers()["grpc-message"], "bad request: 100%25 wrong");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/grpc-web+proto"
        );
        use base64::Engine as _;
        let bin = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(resp.headers()["grpc-status-details-bin"].as_bytes())
            .unwrap();
        let status = <StatusProto as prost::Message>::decode(&bin[..]).unwrap();
        assert_eq!(status.code, 3);
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.BadRequest"
        );
        // Connect: its error JSON, with the HTTP status of the code.
        let resp = render(Format::Connect, e.clone().into_response());
        assert_eq!(resp.status(), 400);
        let v = body_json(resp).await;
        assert_eq!(v["code"], "invalid_argument");
        assert_eq!(v["message"], "bad request: 100% wrong");
        assert_eq!(v["details"][0]["type"], "google.rpc.BadRequest");
        assert!(v["details"][0]["value"].is_string());
        // A Connect stream: HTTP 200 and one end-of-stream envelope.
        let resp = render(Format::ConnectStream { json: true }, e.into_response());
        assert_eq!(resp.status(), 200);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes[0], END_STREAM);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let end: serde_json::Value = serde_json::from_slice(&bytes[5..5 + len]).unwrap();
        assert_eq!(end["error"]["code"], "invalid_argument");
    }

    #[tokio::test]
    async fn problem_json_is_chosen_by_accept_and_keeps_code_and_details() {
        let mut h = HeaderMap::new();
        assert!(!wants_problem(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/problem+json, application/json;q=0.5"),
        );
        assert!(wants_problem(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, application/problem+json"),
        );
        assert!(!wants_problem(&h));

        let resp = Error::NotFound("no book 7".into()).into_response();
        let resp = render(Format::Problem, resp);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"type": "about:blank", "title": "Not Found", "status": 404,
                "detail": "no book 7", "code": 5, "details": []})
        );
        // Answers that are not errors pass unchanged.
        let ok = render(Format::Problem, Response::new(Body::from("{}")));
        assert!(ok.headers().get(header::CONTENT_TYPE).is_none());
    }
}
