//! The authentication layer: a route's token check and its scope and claim
//! policy ([`super::jwt`] verifies), before any body byte is read.
//!
//! For every request it takes a token and an API key out of the query
//! (`[auth] query_param`, the route's key `query_param`): credentials, not
//! message fields, that must not reach the backend. For every routed
//! request it drops `x-jwt-*` and `x-consumer` metadata the client made up
//! (those are the gateway's to state). For a route that checks callers it
//! verifies what the route accepts (`credentials`: a JWT, an API key of a
//! `[consumers.NAME]`, or either), forwards what the route asks for, and
//! puts the [`Verified`] token and the [`Identified`] consumer on the
//! request for the layers below (rate limits by subject or consumer, the
//! access log).

use std::convert::Infallible;

use axum::body::Body;
use futures_util::future::Either;
use http::{header, Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response};

use super::client_cert::PeerCert;
use super::consumers::{Identified, KeySource, RouteKeys, CONSUMER_METADATA};
use super::jwt::{self, AuthError, AuthMode, QueryToken, RouteAuth, TokenSource, Verified};
use super::layer::{BoxFut, Policed, RouteView};
use super::Edge;
use crate::error::Error;

/// The policy of the authentication layer (it reads the route's `auth`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Authenticate;

impl<S, R> tower::Service<Request<Body>> for Policed<S, Authenticate, R>
where
    R: RouteView,
    S: super::layer::Inner + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFut>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Credentials in the query leave the target before anything reads
        // it (the access log included).
        let (taken, checks) = match req.extensions().get::<R>() {
            Some(view) => {
                let edge = &view.context().edge;
                let keys = view
                    .policy()
                    .map_or(&edge.consumers.source, |p| &p.api_keys.source);
                let taken = take_credentials(
                    req.uri(),
                    edge.auth.query_param.as_deref(),
                    keys.query_param.as_deref(),
                );
                (
                    taken,
                    view.policy()
                        .map(|p| p.auth.mode != AuthMode::None || p.auth.client_cert.active()),
                )
            }
            None => (None, None),
        };
        if let Some((uri, token, key)) = taken {
            *req.uri_mut() = uri;
            if let Some(t) = token {
                req.extensions_mut().insert(QueryToken(t));
            }
            if let Some(k) = key {
                req.extensions_mut().insert(QueryApiKey(k));
            }
        }
        match checks {
            // No route: a 404, 405 or 400 answer is coming.
            None => return Either::Left(self.inner.call(req)),
            Some(checks) => {
                drop_forged_claims(req.headers_mut());
                if !checks {
                    return Either::Left(self.inner.call(req));
                }
            }
        }
        // Boxed, and only for routes that check tokens: verification may
        // fetch a key set, and that state inline would make every request's
        // future (routes without auth included) larger.
        let mut inner = self.take_inner();
        let (mut parts, body) = req.into_parts();
        Either::Right(Box::pin(async move {
            let verified = {
                let view = parts
                    .extensions
                    .get::<R>()
                    .expect("checked before the call");
                let policy = view.policy().expect("checked before the call");
                let checking = authenticate(
                    &view.context().edge,
                    &policy.auth,
                    &policy.api_keys,
                    &mut parts.headers,
                    &parts.extensions,
                );
                crate::telemetry::otel::auth(checking).await
            };
            match verified {
                Ok(caller) => {
                    if let Some(v) = caller.verified {
                        parts.extensions.insert(v);
                    }
                    if let Some(c) = caller.consumer {
                        parts.extensions.insert(c.0.quotas.clone());
                        parts.extensions.insert(c);
                    }
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(e) => {
                    let req = Request::from_parts(parts, body);
                    super::layer::refuse_after_body(req, e.into_response()).await
                }
            }
        }))
    }
}

/// The metadata prefix reserved for verified claims: a client cannot send
/// `x-jwt-sub` (or `Grpc-Metadata-X-Jwt-Sub`) and have the backend believe it.
const CLAIM_PREFIX: &str = "x-jwt-";
const CLAIM_METADATA_PREFIX: &str = "grpc-metadata-x-jwt-";

/// An API key taken out of the query (the route's key `query_param`).
#[derive(Debug, Clone)]
pub struct QueryApiKey(pub String);

fn drop_forged_claims(headers: &mut HeaderMap) {
    let forged = |k: &HeaderName| {
        let k = k.as_str();
        k.starts_with(CLAIM_PREFIX)
            || k.starts_with(CLAIM_METADATA_PREFIX)
            || k == "x-consumer"
            || k == CONSUMER_METADATA.as_str()
            || super::client_cert::is_forged(k)
    };
    if !headers.keys().any(forged) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|k| forged(k)).cloned().collect();
    for k in names {
        headers.remove(k);
    }
}

/// The target without the token and API-key query parameters (when they
/// are configured and the query has one), and their values; `None` when
/// neither was there.
fn take_credentials(
    uri: &http::Uri,
    token: Option<&str>,
    key: Option<&str>,
) -> Option<(http::Uri, Option<String>, Option<String>)> {
    let (mut rest, mut token_value) = (None, None);
    if let Some((u, t)) = token.and_then(|name| take_query_param(uri, name)) {
        rest = Some(u);
        token_value = Some(t);
    }
    let current = rest.as_ref().unwrap_or(uri);
    let (rest, key_value) = match key.and_then(|name| take_query_param(current, name)) {
        Some((u, k)) => (Some(u), Some(k)),
        None => (rest, None),
    };
    rest.map(|u| (u, token_value, key_value))
}

/// The target without the query parameter `name`, and its value, when the
/// query has it.
fn take_query_param(uri: &http::Uri, name: &str) -> Option<(http::Uri, String)> {
    let query = uri.query()?;
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if key == name {
            let raw = pair.split_once('=').map_or("", |(_, v)| v);
            token = crate::transcode::request::query_decode(raw)
                .ok()
                .map(|t| t.into_owned());
        } else {
            kept.push(pair);
        }
    }
    let token = token?;
    let path = uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = http::uri::Parts::from(uri.clone());
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target).ok()?);
    let uri = http::Uri::from_parts(parts).ok()?;
    Some((uri, token))
}

/// Who the route's check found: a verified token, a consumer, both or
/// neither (an anonymous call on an optional route).
struct Caller {
    verified: Option<Verified>,
    consumer: Option<Identified>,
}

/// The route's token check: `Ok(None)` for an anonymous request the route
/// lets through. On success the claims the route forwards are in `headers`
/// as `Grpc-Metadata-X-Jwt-*`, and the token itself is gone from them
/// unless `[auth] forward_token` says otherwise.
async fn authenticate(
    edge: &Edge,
    route: &RouteAuth,
    keys: &RouteKeys,
    headers: &mut HeaderMap,
    extensions: &Extensions,
) -> Result<Caller, Error> {
    let mut caller = Caller {
        verified: None,
        consumer: None,
    };
    let by_cert = client_cert(route, headers, extensions)?;
    if route.mode == AuthMode::None {
        return Ok(caller);
    }
    if route.credentials.api_key {
        caller.consumer = api_key(edge, keys, headers, extensions)?;
    }
    // The key never goes on, whatever the route accepts.
    if let Some(h) = &keys.source.header {
        headers.remove(h);
    }
    let identified = caller.consumer.is_some() || by_cert;
    if !route.credentials.jwt {
        return match (identified, route.mode) {
            (false, AuthMode::Required) if route.credentials.api_key => Err(refuse_key(
                if route.credentials.client_cert {
                    "this route needs an API key ({where}) or a client certificate"
                } else {
                    "this route needs an API key ({where})"
                },
                &keys.source,
            )),
            (false, AuthMode::Required) => Err(refuse_cert(
                "missing_client_cert",
                "this route needs a client certificate".to_owned(),
                false,
            )),
            _ => Ok(caller),
        };
    }
    caller.verified = jwt_token(edge, route, headers, extensions, identified).await?;
    Ok(caller)
}

/// The route's use of the connection's client certificate: a 401 without
/// one where the route requires it, a 403 for one its allow-list leaves out,
/// the forwarded parts put on the request. True when the certificate proves
/// the caller (`credentials` has `client_cert`).
fn client_cert(
    route: &RouteAuth,
    headers: &mut HeaderMap,
    extensions: &Extensions,
) -> Result<bool, Error> {
    let policy = &route.client_cert;
    let cert = extensions.get::<PeerCert>();
    let proves = route.mode != AuthMode::None && route.credentials.client_cert;
    let uses = policy.required || proves;
    let Some(PeerCert(cert)) = cert else {
        if policy.required {
            return Err(refuse_cert(
                "missing_client_cert",
                "this route needs a client certificate".to_owned(),
                false,
            ));
        }
        return Ok(false);
    };
    if !policy.allows(cert) {
        if uses {
            return Err(refuse_cert(
                "client_cert_not_allowed",
                format!(
                    "the client certificate ({}) is not one this route allows",
                    cert.spiffe_id.as_deref().unwrap_or(&cert.subject)
                ),
                true,
            ));
        }
        return Ok(false);
    }
    policy.forward_into(cert, headers);
    Ok(proves)
}

/// 401 (no certificate) or 403 (one the route does not allow), counted
/// with the other authentication failures under `reason`.
fn refuse_cert(reason: &'static str, message: String, forbidden: bool) -> Error {
    metrics::counter!(crate::telemetry::metrics::AUTH_FAILURES, "reason" => reason).increment(1);
    // No HTTP scheme names TLS client certificates; this one says what is
    // missing to a person reading the answer.
    let challenge = HeaderValue::from_static("ClientCertificate");
    if forbidden {
        Error::Forbidden { message, challenge }
    } else {
        Error::Unauthenticated { message, challenge }
    }
}

/// 401 for a missing or unknown API key; `{where}` in `message` names
/// where the route reads keys. Counted with the token failures.
fn refuse_key(message: &str, source: &KeySource) -> Error {
    metrics::counter!(crate::telemetry::metrics::AUTH_FAILURES, "reason" => "invalid_api_key")
        .increment(1);
    Error::Unauthenticated {
        message: message.replace("{where}", &source.to_string()),
        challenge: HeaderValue::from_static("ApiKey"),
    }
}

/// The consumer whose key the request carries (the route's header, else
/// its query parameter), its name forwarded as `x-consumer` where the
/// route says so; an unknown key is a 401.
fn api_key(
    edge: &Edge,
    keys: &RouteKeys,
    headers: &mut HeaderMap,
    extensions: &Extensions,
) -> Result<Option<Identified>, Error> {
    let in_header = keys.source.header.as_ref().and_then(|h| headers.get(h));
    let presented = match in_header {
        Some(v) => Some(v.as_bytes().to_vec()),
        None => extensions
            .get::<QueryApiKey>()
            .map(|k| k.0.as_bytes().to_vec()),
    };
    let Some(presented) = presented else {
        return Ok(None);
    };
    let Some(consumer) = edge.consumers.identify(&presented) else {
        return Err(refuse_key("the API key is not valid", &keys.source));
    };
    if keys.forward_consumer {
        if let Ok(v) = HeaderValue::from_str(&consumer.name) {
            headers.insert(CONSUMER_METADATA, v);
        }
    }
    Ok(Some(Identified(consumer)))
}

/// The route's token check (the JWT half of [`authenticate`]); a missing
/// token is fine when `identified` (the API key proved the caller).
async fn jwt_token(
    edge: &Edge,
    route: &RouteAuth,
    headers: &mut HeaderMap,
    extensions: &Extensions,
    identified: bool,
) -> Result<Option<Verified>, Error> {
    let auth = &edge.auth;
    let refuse = |e: AuthError| {
        let reason = match &e {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden { .. } => "forbidden",
        };
        metrics::counter!(crate::telemetry::metrics::AUTH_FAILURES, "reason" => reason)
            .increment(1);
        let (message, challenge) = (e.message(), e.challenge());
        match e {
            AuthError::Forbidden { .. } => Error::Forbidden { message, challenge },
            _ => Error::Unauthenticated { message, challenge },
        }
    };
    // The token is read where it is (no copy): the headers change only
    // once it has been checked.
    let found = jwt::find_token(auth, headers, extensions.get::<QueryToken>()).map_err(refuse)?;
    let Some((token, source)) = found else {
        // Only the gateway states what token a request carried.
        headers.remove("grpc-metadata-authorization");
        return match route.mode {
            AuthMode::Required if !identified => Err(refuse(AuthError::Missing)),
            _ => Ok(None),
        };
    };
    let verified = jwt::verify(auth, route, token).await.map_err(refuse)?;
    jwt::authorize(route, &verified).map_err(refuse)?;
    let forwarded = auth
        .forward_token
        .then(|| HeaderValue::from_str(&format!("Bearer {token}")).ok())
        .flatten();
    headers.remove("grpc-metadata-authorization");
    // The raw token goes on only when asked, and then in one known place.
    match source {
        TokenSource::Header => {
            headers.remove(header::AUTHORIZATION);
        }
        TokenSource::Cookie => {
            if let Some(name) = &auth.cookie {
                jwt::strip_cookie(headers, name);
            }
        }
        TokenSource::Query => {}
    }
    if let Some(v) = forwarded {
        headers.insert(HeaderName::from_static("grpc-metadata-authorization"), v);
    }
    for (claim, name) in route.forward_claims.iter() {
        if let Some(v) = verified.claims.get(claim) {
            let value = jwt::claim_metadata(claim, v).map_err(refuse)?;
            headers.insert(name.clone(), value);
        }
    }
    Ok(Some(verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_claim_metadata_is_dropped_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-jwt-sub", HeaderValue::from_static("admin"));
        h.insert("grpc-metadata-x-jwt-role", HeaderValue::from_static("root"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        drop_forged_claims(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-request-id"], "r1");
    }

    #[test]
    fn the_query_token_leaves_the_target_and_the_other_parameters_stay() {
        let uri: http::Uri = "/v1/books?a=1&access_token=t%2B1&b=2".parse().unwrap();
        let (uri, token) = take_query_param(&uri, "access_token").unwrap();
        assert_eq!(uri, "/v1/books?a=1&b=2");
        assert_eq!(token, "t+1");
        let only: http::Uri = "/v1/books?access_token=x".parse().unwrap();
        assert_eq!(
            take_query_param(&only, "access_token").unwrap().0,
            "/v1/books"
        );
        let none: http::Uri = "/v1/books?a=1".parse().unwrap();
        assert!(take_query_param(&none, "access_token").is_none());
        // A token and a key together both leave the target.
        let both: http::Uri = "/v1/books?k=2&a=1&t=3".parse().unwrap();
        let (rest, token, key) = take_credentials(&both, Some("t"), Some("k")).unwrap();
        assert_eq!(rest, "/v1/books?a=1");
        assert_eq!((token.as_deref(), key.as_deref()), (Some("3"), Some("2")));
        let (rest, token, key) = take_credentials(&both, None, Some("k")).unwrap();
        assert_eq!(rest, "/v1/books?a=1&t=3");
        assert_eq!((token, key.as_deref()), (None, Some("2")));
        assert!(take_credentials(&none, Some("t"), Some("k")).is_none());
    }
}
