//! CORS for browsers, with tower-http's `CorsLayer` built from config.
//!
//! The layer here decides which policy applies (the route's, found in the
//! route table, or `[cors]` for answers no route gives) and hands the request
//! to that policy's `CorsLayer`. Preflights are answered here and never reach
//! the rest of the stack: no authentication, no rate limit, no backend.
//! A preflight is granted only for a path and method the route table binds,
//! and `Access-Control-Allow-Methods` lists the methods bound for the path.
//! Requests from origins the policy does not allow get no CORS headers.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::Either;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use tower::{Layer, Service, ServiceExt as _};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, ExposeHeaders};

use super::layer::{Annotate, BoxFut, Inner, OnResponse, Policed, RouteView};
use super::Preflight;
use crate::error::Error;

/// Browsers cache a preflight answer this long by default: long enough to
/// spare most preflights, short enough that a policy change shows soon
/// (Chromium caps it at 2 h anyway).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// What browsers may send by default besides CORS-safelisted headers: the
/// credentials and body type, and the correlation headers the gateway reads
/// (`x-request-id`, W3C Trace Context), so a traced page is not refused.
pub const DEFAULT_ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "traceparent",
    "tracestate",
    "x-request-id",
];
/// What scripts may read by default besides CORS-safelisted headers: the
/// rate-limit and authentication answers, and the correlation headers the
/// gateway sets on every answer, so a page can report which request failed.
pub const DEFAULT_EXPOSED_HEADERS: &[&str] = &[
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "traceresponse",
    "www-authenticate",
    "x-request-id",
];

/// One origin rule: exact, or with `*` for a leading host label run or the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    Any,
    Exact(String),
    /// The pattern split at its `*`s.
    Pattern(Vec<String>),
}

impl OriginRule {
    pub fn parse(s: &str) -> Result<OriginRule, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(OriginRule::Any);
        }
        let lower = s.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "\"{s}\" is not an origin; write scheme://host[:port], e.g. \"https://app.example.com\""
            ));
        };
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "\"{s}\" is not an origin (no path, not even a trailing '/'); write scheme://host[:port]"
            ));
        }
        if !rest.contains('*') {
            return Ok(OriginRule::Exact(lower));
        }
        if scheme.contains('*') {
            return Err(format!("\"{s}\": the scheme cannot be a pattern"));
        }
        // `*` may stand for whole leading host labels (`*.example.com`) or
        // for the port (`:*`); anything looser is a typo waiting to let an
        // attacker's domain in (`*example.com` matches `evilexample.com`).
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        let host_ok = !host.contains('*')
            || (host.starts_with("*.") && !host[2..].contains('*') && host.len() > 2);
        let port_ok = port.is_none_or(|p| p == "*" || !p.contains('*'));
        if !host_ok || !port_ok {
            return Err(format!(
                "\"{s}\": '*' may only stand for leading host labels (\"https://*.example.com\") or the port (\"http://localhost:*\")"
            ));
        }
        Ok(OriginRule::Pattern(
            lower.split('*').map(str::to_owned).collect(),
        ))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(e) => origin.eq_ignore_ascii_case(e),
            OriginRule::Pattern(pieces) => glob(pieces, &origin.to_ascii_lowercase()),
        }
    }
}

/// Each `*` matches one or more of `[a-z0-9.-]`: never `/`, `:`, `@`, `#`.
fn glob(pieces: &[String], text: &str) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let Some(mut tail) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    for (i, piece) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        // The shortest run that lets the rest match is tried first; runs
        // are short (host labels, ports), so the backtracking is bounded.
        let mut matched = false;
        for (n, c) in tail.char_indices() {
            if !(c.is_ascii_alphanumeric() || c == '.' || c == '-') {
                break;
            }
            let after = &tail[n + c.len_utf8()..];
            if last {
                if after == piece {
                    return true;
                }
            } else if let Some(next) = after.strip_prefix(piece.as_str()) {
                tail = next;
                matched = true;
                break;
            }
        }
        if !matched {
            return false;
        }
    }
    tail.is_empty()
}

/// A CORS policy, compiled.
#[derive(Clone)]
pub struct CorsPolicy {
    pub origins: Vec<OriginRule>,
    /// Methods allowed cross-origin; `None`: whatever the path binds.
    pub methods: Option<Vec<Method>>,
    pub allowed_headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    pub credentials: bool,
    pub max_age: Duration,
    /// The tower-http layer, without methods (set per path at preflight).
    layer: tower_http::cors::CorsLayer,
}

impl std::fmt::Debug for CorsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorsPolicy")
            .field("origins", &self.origins)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Request headers gRPC-Web and Connect clients send, allowed on the routes
/// at `/<package.Service>/<Method>` whatever `[cors]` lists.
pub const RPC_ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "grpc-accept-encoding",
    "grpc-encoding",
];

/// Response headers those clients read, exposed on the same routes.
pub const RPC_EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "connect-content-encoding",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
];

impl CorsPolicy {
    /// This policy with the headers gRPC-Web and Connect clients need
    /// added, so operators need not list them (where a list says `*`, it
    /// stays `*`).
    pub fn for_rpc(&self) -> Result<CorsPolicy, String> {
        let with = |list: &[String], extra: &[&str]| -> Vec<String> {
            let mut out = list.to_vec();
            if !out.iter().any(|h| h == "*") {
                for h in extra {
                    if !out.iter().any(|o| o.eq_ignore_ascii_case(h)) {
                        out.push((*h).to_owned());
                    }
                }
            }
            out
        };
        CorsPolicy::new(
            self.origins.clone(),
            self.methods.clone(),
            with(&self.allowed_headers, RPC_ALLOWED_HEADERS),
            with(&self.exposed_headers, RPC_EXPOSED_HEADERS),
            self.credentials,
            self.max_age,
        )
    }

    /// Checks the combination before tower-http sees it: its layer panics
    /// on combinations such as credentials with a wildcard origin.
    pub fn new(
        origins: Vec<OriginRule>,
        methods: Option<Vec<Method>>,
        allowed_headers: Vec<String>,
        exposed_headers: Vec<String>,
        credentials: bool,
        max_age: Duration,
    ) -> Result<CorsPolicy, String> {
        if origins.is_empty() {
            return Err(
                "allowed_origins is empty; list the origins browsers load the app from".into(),
            );
        }
        let any = origins.contains(&OriginRule::Any);
        if any && origins.len() > 1 {
            return Err("\"*\" allows every origin; list it alone".into());
        }
        if any && credentials {
            return Err(
                "allow_credentials cannot be combined with allowed_origins = [\"*\"] (browsers refuse it); list the origins"
                    .into(),
            );
        }
        let header_names = |list: &[String], what: &str| -> Result<Vec<HeaderName>, String> {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("{what}: \"{h}\" is not a header name"))
                })
                .collect()
        };
        let allow_headers = if allowed_headers.iter().any(|h| h == "*") {
            // Mirroring is what "*" means, and unlike a literal "*" it also
            // works for credentialed requests.
            AllowHeaders::mirror_request()
        } else {
            AllowHeaders::list(header_names(&allowed_headers, "allowed_headers")?)
        };
        if exposed_headers.iter().any(|h| h == "*") && credentials {
            return Err(
                "exposed_headers = [\"*\"] does not work with allow_credentials; list the headers"
                    .into(),
            );
        }
        let expose = if exposed_headers.iter().any(|h| h == "*") {
            ExposeHeaders::any()
        } else {
            ExposeHeaders::list(header_names(&exposed_headers, "exposed_headers")?)
        };
        let allow_origin = if any {
            AllowOrigin::any()
        } else {
            let rules = origins.clone();
            AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin
                    .to_str()
                    .is_ok_and(|o| rules.iter().any(|r| r.matches(o)))
            })
        };
        let mut layer = tower_http::cors::CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_headers(allow_headers)
            .expose_headers(expose)
            .max_age(max_age);
        if credentials {
            layer = layer.allow_credentials(true);
        }
        Ok(CorsPolicy {
            origins,
            methods,
            allowed_headers,
            exposed_headers,
            credentials,
            max_age,
            layer,
        })
    }

    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|r| r.matches(o)))
    }

    /// For /admin/routes.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed_origins": self.origins.iter().map(|o| match o {
                OriginRule::Any => "*".to_owned(),
                OriginRule::Exact(e) => e.clone(),
                OriginRule::Pattern(p) => p.join("*"),
            }).collect::<Vec<_>>(),
            "allowed_methods": self.methods.as_ref().map(|m| m.iter().map(Method::as_str).collect::<Vec<_>>()),
            "allowed_headers": self.allowed_headers,
            "exposed_headers": self.exposed_headers,
            "allow_credentials": self.credentials,
            "max_age_s": self.max_age.as_secs(),
        })
    }
}

/// The policy of the CORS layer. It reads the request's [`EdgeContext`]:
/// the CORS policy that applies and, for a preflight, what the route it
/// asks about allows.
///
/// [`EdgeContext`]: super::EdgeContext
#[derive(Debug, Clone, Copy, Default)]
pub struct Cors;

fn vary_origin(mut r: Response<Body>) -> Response<Body> {
    VaryOrigin.annotate(&mut r);
    r
}

/// The answer depends on the request's `Origin`, whatever it is.
pub struct VaryOrigin;

impl Annotate for VaryOrigin {
    fn annotate(self, r: &mut Response<Body>) {
        r.headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
    }
}

fn refuse(message: String) -> Response<Body> {
    let mut r = Error::CorsRefused(message).into_response();
    r.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    r
}

impl<S, R> Service<Request<Body>> for Policed<S, Cors, R>
where
    R: RouteView,
    S: Inner + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<OnResponse<S::Future, Option<VaryOrigin>>, BoxFut>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(ctx) = req
            .extensions()
            .get::<R>()
            .map(RouteView::context)
            .filter(|ctx| ctx.edge.cors_configured)
        else {
            return Either::Left(OnResponse::inner(self.inner.call(req), None));
        };
        if !req.headers().contains_key(header::ORIGIN) {
            // Not a CORS request; the answer still depends on Origin.
            return Either::Left(OnResponse::inner(self.inner.call(req), Some(VaryOrigin)));
        }
        Either::Right(self.cross_origin(ctx.clone(), req))
    }
}

impl<S, R> Policed<S, Cors, R>
where
    S: Inner + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// A request with `Origin`: a preflight answered here, or a call whose
    /// answer gets the policy's headers.
    fn cross_origin(&mut self, ctx: super::EdgeContext, req: Request<Body>) -> BoxFut {
        let origin = req.headers()[header::ORIGIN].clone();
        let inner = self.take_inner();
        if let Some(preflight) = &ctx.preflight {
            let preflights = |result: &'static str| {
                metrics::counter!(crate::telemetry::metrics::CORS_PREFLIGHTS, "result" => result)
                    .increment(1);
            };
            let wanted = req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let path = req.uri().path();
            let (policy, bound) = match preflight {
                Preflight::Route { cors, bound } => (cors.clone(), bound),
                Preflight::NoRoute => {
                    preflights("no_route");
                    return Box::pin(std::future::ready(Ok(refuse(format!(
                        "CORS preflight refused: no route serves {wanted} {path}"
                    )))));
                }
            };
            let Some(policy) = policy.filter(|p| p.origin_allowed(&origin)) else {
                preflights("origin_refused");
                return Box::pin(std::future::ready(Ok(refuse(format!(
                    "CORS preflight refused: origin {} may not call {wanted} {path}",
                    origin.to_str().unwrap_or("(not text)")
                )))));
            };
            let bound: Vec<Method> = bound
                .iter()
                .filter(|m| {
                    policy
                        .methods
                        .as_ref()
                        .is_none_or(|allow| allow.contains(m))
                })
                .cloned()
                .collect();
            preflights("granted");
            let layer = policy
                .layer
                .clone()
                .allow_methods(AllowMethods::list(bound));
            return Box::pin(layer.layer(inner).oneshot(req));
        }
        match ctx.cors {
            Some(p) if p.origin_allowed(&origin) => {
                Box::pin(p.layer.clone().layer(inner).oneshot(req))
            }
            _ => {
                let fut = inner.oneshot(req);
                Box::pin(async move { fut.await.map(vary_origin) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_labels_and_ports_only() {
        let sub = OriginRule::parse("https://*.example.com").unwrap();
        assert!(sub.matches("https://app.example.com"));
        assert!(sub.matches("https://a.b.example.com"));
        assert!(!sub.matches("https://example.com"));
        assert!(!sub.matches("https://evil.com/.example.com"));
        assert!(!sub.matches("https://evil.com#.example.com"));
        assert!(!sub.matches("http://app.example.com"));
        let port = OriginRule::parse("http://127.0.0.1:*").unwrap();
        assert!(port.matches("http://127.0.0.1:8080"));
        assert!(!port.matches("http://127.0.0.1"));
        assert!(!port.matches("http://127.0.0.1:80@evil.com"));
        assert!(OriginRule::parse("https://*example.com").is_err());
        assert!(OriginRule::parse("https://app.example.com/").is_err());
        assert_eq!(
            OriginRule::parse("HTTPS://App.Example.com").unwrap(),
            OriginRule::Exact("https://app.example.com".into())
        );
    }

    #[test]
    fn credentials_with_any_origin_is_a_config_error_not_a_panic() {
        let e = CorsPolicy::new(
            vec![OriginRule::Any],
            None,
            vec![],
            vec![],
            true,
            DEFAULT_MAX_AGE,
        )
        .unwrap_err();
        assert!(e.contains("allow_credentials"), "{e}");
    }
}
