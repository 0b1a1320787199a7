//! gRPC status <-> HTTP status, and the one error body every answer uses.
//!
//! The table is grpc-gateway's (`runtime.HTTPStatusFromCode`), because that is
//! what REST clients of gRPC services already expect on the wire.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
use tonic::Code;

/// The HTTP status grpc-gateway answers for a gRPC code.
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

/// A `google.rpc.Status` as the gateway sends it: `{"code", "message", "details"}`.
///
/// `details` holds already-rendered JSON values (each an `Any` with `@type`), so
/// gateway errors and decoded backend details share one writer.
#[derive(Debug, Clone)]
pub struct RpcStatus {
    pub http: StatusCode,
    pub code: Code,
    pub message: String,
    pub details: Vec<serde_json::Value>,
}

impl RpcStatus {
    pub fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        RpcStatus {
            http,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A backend's status, with its `grpc-status-details-bin` details decoded
    /// through `pool` (types the pool does not know are kept as base64 `value`).
    pub fn from_grpc(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let mut out = RpcStatus::new(http_status(status.code()), status.code(), status.message());
        if !status.details().is_empty() {
            out.details = decode_details(status.details(), pool);
        }
        out
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct, not json!{}, so the fields keep google.rpc.Status order.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: i32,
            message: &'a str,
            details: &'a [serde_json::Value],
        }
        serde_json::to_vec(&Body {
            code: self.code as i32,
            message: &self.message,
            details: &self.details,
        })
        .expect("strings and JSON values always serialise")
    }

    pub fn into_response(self) -> Response<Bytes> {
        let body = Bytes::from(self.to_json());
        let mut resp = Response::new(body);
        *resp.status_mut() = self.http;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Kept beside the body so the answer can be re-rendered as
        // problem+json when the client asked for it (see [`negotiate`]).
        resp.extensions_mut().insert(self);
        resp
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
        serde_json::to_vec(&Problem {
            // No problem-type registry of our own: about:blank says the HTTP
            // status is the problem type, and `title` is its phrase.
            r#type: "about:blank",
            title: self.http.canonical_reason().unwrap_or("Error"),
            status: self.http.as_u16(),
            detail: &self.message,
            code: self.code as i32,
            details: &self.details,
        })
        .expect("strings and JSON values always serialise")
    }
}

/// The media type of RFC 9457 error documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Whether the client prefers `application/problem+json` to plain JSON
/// errors: it must be named, and come before `application/json` and `*/*`.
pub fn wants_problem(headers: &http::HeaderMap) -> bool {
    for range in super::framing::accept_ranges(headers) {
        match range.as_str() {
            PROBLEM_JSON => return true,
            "application/json" | "*/*" | "application/*" => return false,
            _ => {}
        }
    }
    false
}

/// Re-renders an error answer made by [`RpcStatus::into_response`] as
/// problem+json when `problem` is set; any other answer passes unchanged.
pub fn negotiate<B: From<Bytes>>(problem: bool, resp: Response<B>) -> Response<B> {
    if !problem {
        return resp;
    }
    let Some(status) = resp.extensions().get::<RpcStatus>().cloned() else {
        return resp;
    };
    let (mut parts, _) = resp.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, B::from(Bytes::from(status.to_problem_json())))
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

    #[test]
    fn error_body_has_code_message_details() {
        let s = RpcStatus::new(StatusCode::NOT_FOUND, Code::NotFound, "no route");
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 5, "message": "no route", "details": []})
        );
        let resp = s.into_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn problem_json_is_chosen_by_accept_and_keeps_code_and_details() {
        let mut h = http::HeaderMap::new();
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

        let resp =
            RpcStatus::new(StatusCode::NOT_FOUND, Code::NotFound, "no book 7").into_response();
        let resp = negotiate(true, resp);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "about:blank", "title": "Not Found", "status": 404,
                "detail": "no book 7", "code": 5, "details": []})
        );
    }
}
