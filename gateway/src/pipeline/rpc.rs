//! gRPC-Web and the Connect protocol: front ends of the same pipeline for
//! clients generated from the .proto files. A backend's `expose` puts its
//! methods at `/<package.Service>/<Method>` (routes compiled like any other,
//! so the route stage, the edge layers, the upstream service, the metrics
//! and the error type are the REST routes' own); this module reads the
//! protocol's request, makes the call, and writes the protocol's answer.
//! Errors are `crate::error::Error`s like everywhere else; the render stage
//! writes them in the protocol's shape (see [`Protocol::format`]).
//!
//! - gRPC-Web (`application/grpc-web`, `+proto`, and the base64
//!   `application/grpc-web-text` forms): one enveloped request message; the
//!   answer is enveloped messages and a trailer frame (flag 0x80) carrying
//!   `grpc-status`, `grpc-message` and the backend's trailers. Unary and
//!   server streaming.
//! - Connect, version 1: unary over POST (`application/json`,
//!   `application/proto`) and GET (`?message=&encoding=&base64=`, for
//!   methods without side effects), `connect-timeout-ms`, Connect's error
//!   JSON; server streaming with `application/connect+json` /
//!   `+proto` envelopes and the end-of-stream message.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body::Frame;
use tonic::metadata::MetadataMap;

use crate::error::{envelope, Error, Format, END_STREAM};
use crate::snapshot::{Protocols, Route, Snapshot};
use crate::upstream::{CallRequest, RequestBody, StreamRequest};

/// The protocol of a request to a route at `/<package.Service>/<Method>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC-Web: `text` for the base64 form; JSON messages for
    /// `application/grpc-web+json` (what Connect's clients send when asked
    /// not to use protobuf).
    GrpcWeb { text: bool, codec: Codec },
    /// A unary Connect call; `get` for the query-string form.
    Connect { codec: Codec, get: bool },
    /// A server-streaming Connect call.
    ConnectStream { codec: Codec },
}

/// How messages are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

/// The gRPC-Web frame flag of the trailer frame.
const TRAILERS: u8 = 0x80;
/// The frame flag of a compressed message.
const COMPRESSED: u8 = 0x01;

impl Protocol {
    /// The protocol `req` speaks, when its route exposes one and its
    /// content type (or, for Connect's GET, its method) names it. `None`:
    /// a request the route's protocols do not describe.
    pub fn of(req: &http::Request<Body>, rpc: Protocols) -> Option<Protocol> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or("", |v| v.split(';').next().unwrap_or("").trim());
        // Media types are case-insensitive; clients send them in lower case.
        let lower;
        let media = if media.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = media.to_ascii_lowercase();
            lower.as_str()
        } else {
            media
        };
        if rpc.grpc_web {
            match media {
                "application/grpc-web" | "application/grpc-web+proto" => {
                    return Some(Protocol::GrpcWeb {
                        text: false,
                        codec: Codec::Proto,
                    })
                }
                "application/grpc-web+json" => {
                    return Some(Protocol::GrpcWeb {
                        text: false,
                        codec: Codec::Json,
                    })
                }
                "application/grpc-web-text" | "application/grpc-web-text+proto" => {
                    return Some(Protocol::GrpcWeb {
                        text: true,
                        codec: Codec::Proto,
                    })
                }
                _ => {}
            }
        }
        if !rpc.connect {
            return None;
        }
        if req.method() == Method::GET {
            let encoding = query_param(req.uri().query().unwrap_or(""), "encoding");
            return match encoding.as_deref() {
                Some("proto") => Some(Protocol::Connect {
                    codec: Codec::Proto,
                    get: true,
                }),
                _ => Some(Protocol::Connect {
                    codec: Codec::Json,
                    get: true,
                }),
            };
        }
        match media {
            "application/json" => Some(Protocol::Connect {
                codec: Codec::Json,
                get: false,
            }),
            "application/proto" => Some(Protocol::Connect {
                codec: Codec::Proto,
                get: false,
            }),
            "application/connect+json" => Some(Protocol::ConnectStream { codec: Codec::Json }),
            "application/connect+proto" => Some(Protocol::ConnectStream {
                codec: Codec::Proto,
            }),
            _ => None,
        }
    }

    /// The content type of answers (and errors) in this protocol.
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::GrpcWeb { text: true, .. } => "application/grpc-web-text+proto",
            Protocol::GrpcWeb {
                codec: Codec::Json, ..
            } => "application/grpc-web+json",
            Protocol::GrpcWeb { .. } => "application/grpc-web+proto",
            Protocol::Connect {
                codec: Codec::Json, ..
            } => "application/json",
            Protocol::Connect { .. } => "application/proto",
            Protocol::ConnectStream { codec: Codec::Json } => "application/connect+json",
            Protocol::ConnectStream { .. } => "application/connect+proto",
        }
    }

    /// How this protocol's errors are written.
    pub fn format(self) -> Format {
        match self {
            Protocol::GrpcWeb { .. } => Format::GrpcWeb {
                content_type: self.content_type(),
            },
            Protocol::Connect { .. } => Format::Connect,
            Protocol::ConnectStream { codec } => Format::ConnectStream {
                json: codec == Codec::Json,
            },
        }
    }
}

/// A request to an exposed method, answered in its protocol.
pub(super) async fn answer(
    snap: &Snapshot,
    route: &Route,
    protocol: Protocol,
    parts: &Parts,
    body: Body,
) -> Response<Body> {
    match call(snap, route, protocol, parts, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn call(
    snap: &Snapshot,
    route: &Route,
    protocol: Protocol,
    parts: &Parts,
    body: Body,
) -> Result<Response<Body>, Error> {
    if let Some(v) = parts.headers.get("connect-protocol-version") {
        if v.as_bytes() != b"1" {
            return Err(Error::BadRequest(format!(
                "connect-protocol-version {:?} is not supported; this gateway speaks version 1",
                v.to_str().unwrap_or("(not text)")
            )));
        }
    }
    // The method's kind decides which of Connect's forms applies, before
    // any body byte is read.
    match (protocol, route.plan.streams_reply()) {
        (Protocol::Connect { .. }, true) => {
            return Err(Error::BadRequest(format!(
                "{} streams its replies: call it with application/connect+json or application/connect+proto",
                route.grpc_label
            )))
        }
        (Protocol::ConnectStream { .. }, false) => {
            return Err(Error::BadRequest(format!(
                "{} is a unary method: call it with application/json or application/proto",
                route.grpc_label
            )))
        }
        _ => {}
    }
    let client_deadline = client_deadline(&parts.headers)?;
    let timeout = client_deadline.map_or(route.timeout, |c| c.min(route.timeout));
    let metadata = metadata(&parts.headers, &route.forward_headers)?;
    let message = request_message(snap, route, protocol, parts, body).await?;
    super::checks::validate(route, &message)?;
    if route.plan.streams_reply() {
        // The client's deadline bounds the whole stream.
        let bound = client_deadline.or(route.plan.shaping.stream_timeout);
        return stream(
            snap,
            route,
            protocol,
            parts,
            message,
            metadata,
            (timeout, bound),
        )
        .await;
    }
    let reply = route
        .backend
        .call(CallRequest {
            path: route.grpc_path.clone(),
            body: message,
            metadata,
            timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: super::client_ip(parts),
            metrics: &route.metrics,
        })
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return Ok(super::stream::call_error(snap, route, e)),
    };
    let attempted = reply
        .extensions()
        .get::<crate::upstream::Attempted>()
        .cloned();
    let (md, raw, _) = reply.into_parts();
    let mut resp = match protocol {
        Protocol::GrpcWeb { text, codec } => {
            let message = match codec {
                Codec::Proto => raw,
                Codec::Json => Bytes::from(render_json(snap, route, &raw)?),
            };
            let mut out = BytesMut::with_capacity(message.len() + 64);
            out.extend_from_slice(&envelope(0, &message));
            out.extend_from_slice(&envelope(TRAILERS, &trailer_block(&ok_trailers(&md))));
            grpc_web_response(protocol, &md, Body::from(encode_text(text, out.freeze())))
        }
        Protocol::Connect { codec, .. } => {
            let body = match codec {
                Codec::Proto => raw,
                Codec::Json => Bytes::from(render_json(snap, route, &raw)?),
            };
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(match codec {
                    Codec::Json => "application/json",
                    Codec::Proto => "application/proto",
                }),
            );
            // Connect sends header metadata as headers, trailers prefixed.
            copy_metadata(&md, resp.headers_mut(), "");
            resp
        }
        Protocol::ConnectStream { .. } => unreachable!("refused before the call"),
    };
    if let Some(a) = attempted {
        resp.extensions_mut().insert(a);
    }
    Ok(resp)
}

/// The client's deadline, from `connect-timeout-ms` or `grpc-timeout`
/// (the call's is the route's timeout, or this when smaller).
fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let client = match headers.get("connect-timeout-ms") {
        Some(v) => {
            let ms = v
                .to_str()
                .ok()
                .filter(|t| !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::BadRequest(
                        "connect-timeout-ms must be a positive integer of at most 10 digits"
                            .to_owned(),
                    )
                })?;
            Some(Duration::from_millis(ms))
        }
        None => crate::upstream::deadline::client_timeout(headers)
            .map_err(|e| Error::BadRequest(e.to_string()))?,
    };
    Ok(client)
}

/// Headers that are the HTTP hop's, the browser's or the protocols' own:
/// not metadata for the backend.
fn not_metadata(name: &str) -> bool {
    crate::transcode::metadata::reserved(name)
        || name.starts_with("connect-")
        || name.starts_with("sec-")
        || name.starts_with("access-control-")
        || matches!(
            name,
            "accept"
                | "accept-encoding"
                | "accept-language"
                | "content-encoding"
                | "cookie"
                | "origin"
                | "referer"
                | "user-agent"
                | "x-grpc-web"
                | "x-user-agent"
                | "cache-control"
                | "pragma"
                | "priority"
                | "dnt"
                | "authorization"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
                | "if-none-match"
                | "if-modified-since"
        )
}

/// The call's metadata: what REST routes forward (the allow-list and
/// `Grpc-Metadata-*`), plus the headers a typed client sends as metadata,
/// under their own names, as gRPC-Web and Connect define.
fn metadata(headers: &HeaderMap, forward: &[http::HeaderName]) -> Result<MetadataMap, Error> {
    let extra = |name: &http::HeaderName| !not_metadata(name.as_str()) && !forward.contains(name);
    let md = if headers.keys().any(extra) {
        let mut all: Vec<http::HeaderName> = forward.to_vec();
        all.extend(headers.keys().filter(|n| extra(n)).cloned());
        crate::transcode::metadata::request_metadata(headers, &all, &[])
    } else {
        crate::transcode::metadata::request_metadata(headers, forward, &[])
    };
    md.map_err(|e| Error::BadRequest(e.to_string()))
}

/// The encoded request message, read in the protocol's form.
async fn request_message(
    snap: &Snapshot,
    route: &Route,
    protocol: Protocol,
    parts: &Parts,
    body: Body,
) -> Result<Bytes, Error> {
    let settings = &snap.transcode;
    let read = |body| {
        crate::transcode::read_limited(
            &parts.headers,
            body,
            settings.max_body_bytes,
            settings.min_body_rate,
        )
    };
    match protocol {
        Protocol::GrpcWeb { text, codec } => {
            let mut bytes = read(body).await?;
            if text {
                bytes = decode_text(&bytes)?;
            }
            let data = one_message(&bytes, "gRPC-Web")?;
            from_codec(snap, route, codec, &data)
        }
        Protocol::ConnectStream { codec } => {
            let bytes = read(body).await?;
            let data = one_message(&bytes, "Connect streaming")?;
            from_codec(snap, route, codec, &data)
        }
        Protocol::Connect { codec, get: false } => {
            let bytes = read(body).await?;
            from_codec(snap, route, codec, &bytes)
        }
        Protocol::Connect { codec, get: true } => {
            let query = parts.uri.query().unwrap_or("");
            let Some(message) = query_param(query, "message") else {
                return Err(Error::BadRequest(
                    "a Connect GET carries the request in the `message` query parameter".to_owned(),
                ));
            };
            if query_param(query, "compression").is_some_and(|c| c != "identity") {
                return Err(Error::UnsupportedMediaType(
                    "compressed Connect GET messages are not supported; send compression=identity"
                        .to_owned(),
                ));
            }
            let data = if query_param(query, "base64").as_deref() == Some("1") {
                decode_base64(message.as_bytes())?
            } else {
                Bytes::from(message.into_bytes())
            };
            if data.len() > settings.max_body_bytes {
                return Err(Error::body_too_large(settings.max_body_bytes));
            }
            from_codec(snap, route, codec, &data)
        }
    }
}

/// A message in `codec` as protobuf wire bytes.
fn from_codec(snap: &Snapshot, route: &Route, codec: Codec, data: &[u8]) -> Result<Bytes, Error> {
    match codec {
        Codec::Proto => Ok(Bytes::copy_from_slice(data)),
        Codec::Json => {
            crate::transcode::json::encode(&snap.transcode, &route.plan, &[], None, data)
                .map_err(|e| Error::BadRequest(e.message))
        }
    }
}

/// The one message of an enveloped request body.
fn one_message(bytes: &[u8], what: &str) -> Result<Bytes, Error> {
    if bytes.len() < 5 {
        return Err(Error::BadRequest(format!(
            "a {what} request body is one enveloped message (5-byte prefix, then the message); got {} bytes",
            bytes.len()
        )));
    }
    let flags = bytes[0];
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if flags & COMPRESSED != 0 {
        return Err(Error::UnsupportedMediaType(format!(
            "compressed {what} messages are not supported; send them uncompressed"
        )));
    }
    if bytes.len() - 5 != len {
        return Err(Error::BadRequest(format!(
            "the {what} request envelope says {len} bytes but the body holds {}; send exactly one message",
            bytes.len() - 5
        )));
    }
    Ok(Bytes::copy_from_slice(&bytes[5..]))
}

/// A reply message as JSON, as REST routes render it.
fn render_json(snap: &Snapshot, route: &Route, raw: &[u8]) -> Result<Vec<u8>, Error> {
    crate::transcode::response::message_json(&snap.transcode, &route.plan, raw)
        .map_err(|e| Error::BadGateway(e.message))
}

/// A query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            crate::transcode::request::query_decode(v)
                .map(|c| c.into_owned())
                .unwrap_or_default()
        })
    })
}

/// Base64 in either alphabet, padded or not (Connect GET, gRPC-Web text).
fn decode_base64(data: &[u8]) -> Result<Bytes, Error> {
    use base64::Engine as _;
    let trimmed: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            other => other,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&trimmed)
        .map(Bytes::from)
        .map_err(|e| Error::BadRequest(format!("the message is not valid base64: {e}")))
}

/// A `grpc-web-text` body: base64, possibly several padded chunks one
/// after another.
fn decode_text(body: &[u8]) -> Result<Bytes, Error> {
    let mut out = BytesMut::new();
    let mut rest = body;
    while !rest.is_empty() {
        // A chunk ends after its padding.
        let end = rest
            .iter()
            .position(|&b| b == b'=')
            .map(|p| {
                let mut e = p;
                while e < rest.len() && rest[e] == b'=' {
                    e += 1;
                }
                e
            })
            .unwrap_or(rest.len());
        out.extend_from_slice(&decode_base64(&rest[..end])?);
        rest = &rest[end..];
    }
    Ok(out.freeze())
}

fn encode_text(text: bool, data: Bytes) -> Bytes {
    use base64::Engine as _;
    if text {
        Bytes::from(base64::engine::general_purpose::STANDARD.encode(&data))
    } else {
        data
    }
}

/// `grpc-status: 0` and the backend's trailers, for a call that ended OK.
fn ok_trailers(md: &MetadataMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert("grpc-status", HeaderValue::from_static("0"));
    for (name, value) in md.as_ref() {
        if name.as_str().starts_with("grpc-") && name != "grpc-status" {
            out.append(name, value.clone());
        }
    }
    out
}

/// Trailers as the gRPC-Web trailer frame writes them: `name:value\r\n`.
fn trailer_block(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A gRPC-Web answer's head: its content type, and the backend's header
/// metadata as headers.
fn grpc_web_response(protocol: Protocol, md: &MetadataMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.content_type()),
    );
    copy_metadata(md, resp.headers_mut(), "");
    resp
}

/// The backend's metadata as response headers (`prefix` before each
/// name), leaving out what belongs to the hop or to gRPC's framing.
fn copy_metadata(md: &MetadataMap, out: &mut HeaderMap, prefix: &str) {
    for (name, value) in md.as_ref() {
        let n = name.as_str();
        if crate::transcode::metadata::reserved(n) || n == "date" || n == "server" {
            continue;
        }
        if prefix.is_empty() {
            out.append(name, value.clone());
        } else if let Ok(name) = http::HeaderName::from_bytes(format!("{prefix}{n}").as_bytes()) {
            out.append(name, value.clone());
        }
    }
}

/// A server-streaming method: the answer starts with the backend's, and
/// each reply goes out as it arrives, then the status.
async fn stream(
    snap: &Snapshot,
    route: &Route,
    protocol: Protocol,
    parts: &Parts,
    message: Bytes,
    metadata: MetadataMap,
    (timeout, stream_timeout): (Duration, Option<Duration>),
) -> Result<Response<Body>, Error> {
    let opened = route
        .backend
        .stream(StreamRequest {
            path: route.grpc_path.clone(),
            body: RequestBody::One(message),
            metadata,
            timeout,
            stream_timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: super::client_ip(parts),
            metrics: route.metrics.clone(),
        })
        .await;
    let reply = match opened {
        Ok(r) => r,
        Err(e) => return Ok(super::stream::call_error(snap, route, e)),
    };
    let content_type = protocol.content_type();
    let (text, json) = match protocol {
        Protocol::GrpcWeb { text, codec } => (text, codec == Codec::Json),
        Protocol::ConnectStream { codec } => (false, codec == Codec::Json),
        Protocol::Connect { .. } => unreachable!("refused before the call"),
    };
    let body = Framed {
        messages: reply.messages,
        grpc_web: matches!(protocol, Protocol::GrpcWeb { .. }),
        text,
        json: json.then(|| (route.plan.clone(), snap.transcode.clone())),
        pool: snap.transcode.pool.clone(),
        done: false,
    };
    let mut resp = Response::new(Body::new(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    copy_metadata(&reply.metadata, resp.headers_mut(), "");
    resp.extensions_mut().insert(reply.attempted);
    Ok(resp)
}

/// The body of a streamed answer: each reply enveloped, then the end (a
/// gRPC-Web trailer frame, or Connect's end-of-stream message) with the
/// status the stream ended with.
struct Framed {
    messages: crate::upstream::ReplyStream,
    grpc_web: bool,
    text: bool,
    /// For JSON messages: the route's plan and the transcoding settings.
    json: Option<(
        std::sync::Arc<crate::transcode::Plan>,
        crate::transcode::Settings,
    )>,
    pool: prost_reflect::DescriptorPool,
    done: bool,
}

impl Framed {
    fn message(&self, raw: Bytes) -> Result<Bytes, Error> {
        let data = match &self.json {
            None => raw,
            Some((plan, settings)) => Bytes::from(
                crate::transcode::response::message_json(settings, plan, &raw)
                    .map_err(|e| Error::BadGateway(e.message))?,
            ),
        };
        Ok(envelope(0, &data))
    }

    /// The last frame: the status `error` (or OK with `trailers`).
    fn end(&self, error: Option<&Error>, trailers: Option<HeaderMap>) -> Bytes {
        if self.grpc_web {
            let block = match error {
                Some(e) => e.grpc_trailers(),
                None => {
                    let mut t = trailers.unwrap_or_default();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    t
                }
            };
            return envelope(TRAILERS, &trailer_block(&block));
        }
        let end = match error {
            Some(e) => format!(
                "{{\"error\":{}}}",
                String::from_utf8_lossy(&e.to_connect_json())
            ),
            None => "{}".to_owned(),
        };
        envelope(END_STREAM, end.as_bytes())
    }
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let out = match std::task::ready!(this.messages.poll_message(cx)) {
            Some(Ok(raw)) => match this.message(raw) {
                Ok(b) => b,
                Err(e) => {
                    this.done = true;
                    this.end(Some(&e), None)
                }
            },
            Some(Err(status)) => {
                this.done = true;
                this.end(Some(&Error::from_grpc(&status, &this.pool)), None)
            }
            None => {
                this.done = true;
                let trailers = this.messages.trailers();
                this.end(None, trailers)
            }
        };
        Poll::Ready(Some(Ok(Frame::data(encode_text(this.text, out)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, content_type: Option<&str>) -> http::Request<Body> {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_content_type_names_the_protocol_the_route_exposes() {
        let both = Protocols {
            grpc_web: true,
            connect: true,
        };
        let of = |m, ct| Protocol::of(&request(m, "/a.B/C", ct), both);
        assert_eq!(
            of("POST", Some("application/grpc-web+proto")),
            Some(Protocol::GrpcWeb {
                text: false,
                codec: Codec::Proto
            })
        );
        assert_eq!(
            of("POST", Some("application/grpc-web-text")),
            Some(Protocol::GrpcWeb {
                text: true,
                codec: Codec::Proto
            })
        );
        assert_eq!(
            of("POST", Some("application/grpc-web+json")),
            Some(Protocol::GrpcWeb {
                text: false,
                codec: Codec::Json
            })
        );
        assert_eq!(
            of("POST", Some("application/json; charset=utf-8")),
            Some(Protocol::Connect {
                codec: Codec::Json,
                get: false
            })
        );
        assert_eq!(
            of("POST", Some("application/connect+proto")),
            Some(Protocol::ConnectStream {
                codec: Codec::Proto
            })
        );
        assert_eq!(of("POST", Some("text/plain")), None);
        let web_only = Protocols {
            grpc_web: true,
            connect: false,
        };
        assert_eq!(
            Protocol::of(
                &request("POST", "/a.B/C", Some("application/json")),
                web_only
            ),
            None
        );
        assert_eq!(
            Protocol::of(
                &request("GET", "/a.B/C?encoding=proto&message=x", None),
                both
            ),
            Some(Protocol::Connect {
                codec: Codec::Proto,
                get: true
            })
        );
    }

    #[test]
    fn an_enveloped_body_holds_exactly_one_uncompressed_message() {
        let framed = envelope(0, b"abc");
        assert_eq!(one_message(&framed, "x").unwrap(), &b"abc"[..]);
        let mut two = framed.to_vec();
        two.extend_from_slice(&framed);
        assert!(one_message(&two, "x").is_err());
        assert!(one_message(&envelope(COMPRESSED, b"abc"), "x").is_err());
        assert!(one_message(b"\0\0", "x").is_err());
    }

    #[test]
    fn grpc_web_text_may_be_several_padded_chunks() {
        use base64::Engine as _;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let joined = format!("{}{}", b64(b"ab"), b64(b"cde"));
        assert_eq!(decode_text(joined.as_bytes()).unwrap(), &b"abcde"[..]);
        assert!(decode_text(b"!!!!").is_err());
    }
}
