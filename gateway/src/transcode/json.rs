//! The JSON request path: one JSON body (plus path variables and query)
//! into one request message. The fast JSON -> wire path ([`super::fast`])
//! goes first; the `DynamicMessage` reference path ([`super::request`])
//! takes what it declines, under the fallback contract written there.

use std::borrow::Cow;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use prost_reflect::DynamicMessage;

use super::{request, BodyRule, Plan, Settings, TranscodeError};
use crate::error::Error;

/// Reads a JSON request body up to `server.max_body_bytes`, at
/// `limits.min_body_rate`; a declared length over the limit is refused
/// before any byte is read. `route` (method, template) names the route in
/// the refusal of a body it does not take.
pub async fn read_body(
    settings: &Settings,
    plan: &Plan,
    route: (&str, &str),
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Error> {
    let bytes = super::read_limited(
        headers,
        body,
        settings.max_body_bytes,
        settings.min_body_rate,
    )
    .await?;
    if matches!(plan.body, BodyRule::None) {
        // grpc-gateway ignores a body the route does not bind; a stricter
        // answer helps clients that put fields in the wrong place.
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::BadRequest(format!(
                "{} {} takes no request body; send fields in the path or query",
                route.0, route.1
            )));
        }
        return Ok(bytes);
    }
    if !bytes.is_empty() {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ok = ct
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .map(|m| {
                    let m = m.trim().to_ascii_lowercase();
                    // Only JSON. text/plain and form types are what a
                    // browser may send cross-site without a CORS preflight;
                    // reading them as JSON would let any page call the API
                    // with a user's cookies (CSRF).
                    m == "application/json"
                        || (m.starts_with("application/") && m.ends_with("+json"))
                })
                .unwrap_or(false);
            if !ok {
                return Err(Error::UnsupportedMediaType(format!(
                    "content type {:?} is not supported; send application/json",
                    ct.to_str().unwrap_or("(not text)")
                )));
            }
        }
    }
    Ok(bytes)
}

/// The request message for a unary call, encoded: straight from JSON to
/// wire bytes where the route's fast path takes it, else through the
/// `DynamicMessage` reference path ([`message`]), which also words every
/// error.
pub fn encode(
    settings: &Settings,
    plan: &Plan,
    vars: &[Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, TranscodeError> {
    if let Some(wire) = super::fast::encode_request(
        &plan.fast,
        &plan.input,
        &plan.body,
        &plan.path_fields,
        &plan.bound,
        plan.shaping.update_mask.as_ref(),
        vars,
        query,
        body,
        settings.decode,
    ) {
        return Ok(Bytes::from(wire));
    }
    let msg = message(settings, plan, vars, query, body)?;
    Ok(Bytes::from(prost::Message::encode_to_vec(&msg)))
}

/// The request message as a `DynamicMessage`: the body, then the path
/// variables, the query and the update mask.
pub fn message(
    settings: &Settings,
    plan: &Plan,
    vars: &[Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let mut msg = request::decode_body(&plan.input, &plan.body, body, settings.decode)?;
    // Path variables win over the body, as in grpc-gateway.
    for (fields, value) in plan.path_fields.iter().zip(vars) {
        request::set_path_field(&mut msg, fields, value)?;
    }
    if let Some(q) = query {
        request::apply_query(&mut msg, q, &plan.body, &plan.bound, settings.decode)?;
    }
    let mask = (&plan.shaping.update_mask, &plan.body);
    if let (Some(mask), BodyRule::Field(field)) = mask {
        super::fieldmask::fill(&mut msg, mask, field, body);
    }
    Ok(msg)
}
