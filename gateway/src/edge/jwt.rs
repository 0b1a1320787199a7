//! JWT bearer authentication: finding the token, picking its issuer,
//! verifying it with `jsonwebtoken`, and the route's scope and claim policy.
//!
//! What is refused, and why it matters:
//! - `alg: none` and algorithms the issuer is not configured for: the
//!   header's `alg` is never trusted alone.
//! - HMAC tokens against an RSA/EC/Ed key ("algorithm confusion"): keys are
//!   only tried for algorithms of their own family, and secrets only ever
//!   come from the operator's environment, never from a JWKS.
//! - Oversized tokens, before any decoding.
//! - Tokens without `exp`, expired (beyond the leeway), not yet valid
//!   (`nbf`), of another issuer or audience; without `aud` when the issuer
//!   lists audiences; with `exp`, `nbf`, `iat`, `iss` or `aud` of the wrong
//!   JSON type (see `check_registered_claims`).
//!
//! A token verified once is kept in the snapshot's [`TokenCache`] and found
//! there, by its whole text, before any decoding when it comes again.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, KeySet, VerifyKey};
use super::token_cache::TokenCache;

/// Real tokens are well under 2 KB; 8 KB leaves room for fat claims while
/// keeping a hostile header from costing real work.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Clock skew between the issuer and this host that is forgiven on
/// `exp`/`nbf`; a minute is the usual choice (Envoy, Kong).
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(60);
/// Without a kid, each key of the right family is tried; a JWKS of more
/// keys than this must use kids.
const MAX_KEYS_TRIED: usize = 4;

/// A route's authentication policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No token is looked at.
    #[default]
    None,
    /// A token is verified if sent (a bad one is a 401); none is fine.
    Optional,
    /// A valid token is needed.
    Required,
}

impl AuthMode {
    pub fn parse(s: &str) -> Result<AuthMode, String> {
        match s.trim() {
            "none" => Ok(AuthMode::None),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            other => Err(format!(
                "\"{other}\" is not an auth policy; use \"none\", \"optional\" or \"required\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        }
    }
}

/// One trusted issuer.
pub struct Issuer {
    pub name: String,
    /// The `iss` claim value.
    pub iss: String,
    pub algorithms: Vec<Algorithm>,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    /// PEM and HMAC keys.
    pub static_keys: Vec<VerifyKey>,
    pub jwks: Option<Arc<Jwks>>,
    /// One validation per key family in `algorithms` (jsonwebtoken insists
    /// that every algorithm of a validation fits the key).
    validations: Vec<(AlgorithmFamily, Validation)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("iss", &self.iss)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

impl Issuer {
    pub fn new(
        name: String,
        iss: String,
        algorithms: Vec<Algorithm>,
        audiences: Vec<String>,
        leeway_secs: u64,
        static_keys: Vec<VerifyKey>,
        jwks: Option<Arc<Jwks>>,
    ) -> Issuer {
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &algorithms {
            if let Some((_, v)) = validations.iter_mut().find(|(f, _)| *f == alg.family()) {
                v.algorithms.push(*alg);
                continue;
            }
            let mut v = Validation::new(*alg);
            v.leeway = leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&[&iss]);
            // jsonwebtoken passes a token without `aud` unless it is
            // required; `check_registered_claims` refuses it first with a
            // clearer message, this is the second line.
            if audiences.is_empty() {
                v.set_required_spec_claims(&["exp", "iss"]);
                v.validate_aud = false;
            } else {
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_audience(&audiences);
            }
            validations.push((alg.family(), v));
        }
        Issuer {
            name,
            iss,
            algorithms,
            audiences,
            leeway_secs,
            static_keys,
            jwks,
            validations,
        }
    }

    fn validation(&self, family: AlgorithmFamily) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, v)| v)
    }
}

/// What may prove the caller on a route: a JWT, an API key of a
/// `[consumers.NAME]`, a client certificate, or any one of several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub jwt: bool,
    pub api_key: bool,
    /// A client certificate `[server.tls] client_ca` verified.
    pub client_cert: bool,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            jwt: true,
            api_key: false,
            client_cert: false,
        }
    }
}

impl Credentials {
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Credentials, String> {
        let mut out = Credentials {
            jwt: false,
            api_key: false,
            client_cert: false,
        };
        for n in names {
            match n.trim() {
                "jwt" => out.jwt = true,
                "api_key" => out.api_key = true,
                "client_cert" => out.client_cert = true,
                other => {
                    return Err(format!(
                        "\"{other}\" is not a credential; use \"jwt\", \"api_key\", \"client_cert\" or several"
                    ))
                }
            }
        }
        if !out.jwt && !out.api_key && !out.client_cert {
            return Err(
                "name at least one credential: \"jwt\", \"api_key\", \"client_cert\"".to_owned(),
            );
        }
        Ok(out)
    }

    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.jwt {
            out.push("jwt");
        }
        if self.api_key {
            out.push("api_key");
        }
        if self.client_cert {
            out.push("client_cert");
        }
        out
    }
}

/// `[auth]`, compiled.
#[derive(Debug, Default)]
pub struct Auth {
    pub issuers: Vec<Arc<Issuer>>,
    pub default_mode: AuthMode,
    /// `auth.credentials`: what routes without their own accept.
    pub credentials: Credentials,
    pub cookie: Option<String>,
    pub query_param: Option<String>,
    pub max_token_bytes: usize,
    pub forward_claims: Vec<String>,
    pub forward_token: bool,
    /// `auth.forward_client_cert`.
    pub forward_client_cert: Vec<super::client_cert::Part>,
    /// `auth.token_cache`: tokens verified before, owned by the snapshot
    /// so a reload starts with none.
    pub token_cache: TokenCache,
}

/// A route's auth policy, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteAuth {
    pub mode: AuthMode,
    pub credentials: Credentials,
    /// Issuers accepted on this route (indexes into `Auth::issuers`); all when `None`.
    pub issuers: Option<Vec<usize>>,
    pub scopes: Vec<String>,
    /// Claim name and the values any one of which it must have.
    pub claims: Vec<(String, Vec<Value>)>,
    /// Claim name and the `grpc-metadata-x-jwt-<claim>` header that carries it on.
    /// Shared by the routes that forward `[auth]`'s list.
    pub forward_claims: Arc<[(String, HeaderName)]>,
    /// `client_cert`, `client_cert_allow` and `forward_client_cert`.
    pub client_cert: super::client_cert::ClientCertPolicy,
}

/// The metadata key a forwarded claim travels under.
pub fn claim_metadata_key(claim: &str) -> String {
    let mut key = String::from("x-jwt-");
    for c in claim.chars() {
        key.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        });
    }
    key
}

/// A verified token. Cheap to clone (two `Arc`s): the token cache hands
/// out a clone on every hit.
#[derive(Debug, Clone)]
pub struct Verified {
    pub issuer: Arc<Issuer>,
    pub claims: Arc<Map<String, Value>>,
}

impl Verified {
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token on a route that needs one (401, `WWW-Authenticate: Bearer`).
    Missing,
    /// A token that does not verify (401, `error="invalid_token"`).
    Invalid(String),
    /// A valid token without the scope or claim the route needs (403).
    Forbidden {
        message: String,
        scope: Option<String>,
    },
}

impl AuthError {
    fn invalid(msg: impl Into<String>) -> AuthError {
        AuthError::Invalid(msg.into())
    }

    /// The `WWW-Authenticate` value (RFC 6750 section 3).
    pub fn challenge(&self) -> HeaderValue {
        let text = match self {
            AuthError::Missing => "Bearer".to_owned(),
            AuthError::Invalid(m) => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted_safe(m)
            ),
            AuthError::Forbidden { message, scope } => {
                let mut s = format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted_safe(message)
                );
                if let Some(scope) = scope {
                    s.push_str(&format!(", scope=\"{}\"", quoted_safe(scope)));
                }
                s
            }
        };
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => {
                "this route needs a bearer token (Authorization: Bearer <JWT>)".into()
            }
            AuthError::Invalid(m) => format!("invalid token: {m}"),
            AuthError::Forbidden { message, .. } => message.clone(),
        }
    }
}

/// RFC 6750 error_description: visible ASCII without `"` and `\`.
fn quoted_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .take(200)
        .collect()
}

/// Where the token was found: it decides what is stripped before the
/// request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
    Query,
}

/// A token taken out of the query string before routing (the query is
/// transcoded into the message, where `access_token` is no field).
#[derive(Debug, Clone)]
pub struct QueryToken(pub String);

/// Finds the bearer token: the Authorization header, then the cookie, then
/// the query parameter. `Err` for an Authorization header that is there but
/// not a single Bearer credential.
pub fn find_token<'a>(
    auth: &Auth,
    headers: &'a HeaderMap,
    query: Option<&'a QueryToken>,
) -> Result<Option<(&'a str, TokenSource)>, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Err(AuthError::invalid("more than one Authorization header"));
        }
        let text = v
            .to_str()
            .map_err(|_| AuthError::invalid("the Authorization header is not ASCII"))?;
        let (scheme, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::invalid(
                "the Authorization scheme must be Bearer",
            ));
        }
        let token = rest.trim();
        if token.is_empty() {
            return Err(AuthError::invalid("the Authorization header has no token"));
        }
        return Ok(Some((token, TokenSource::Header)));
    }
    if let Some(name) = &auth.cookie {
        if let Some(token) = cookie_value(headers, name) {
            return Ok(Some((token, TokenSource::Cookie)));
        }
    }
    Ok(query.map(|q| (q.0.as_str(), TokenSource::Query)))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Removes the token cookie from the Cookie headers (the other cookies stay).
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::invalid(format!("the {what} is not base64url")))
}

/// Verifies `token` for a route; `issuers` are the ones the route accepts.
/// A token verified before is answered from `auth.token_cache` when that
/// answer still holds, after the length and character checks and before
/// any decoding.
pub async fn verify(auth: &Auth, route: &RouteAuth, token: &str) -> Result<Verified, AuthError> {
    check_text(auth, token)?;
    if let Some(v) = auth.token_cache.get(auth, route, token) {
        return Ok(v);
    }
    let (verified, issuer, generation) = verify_uncached(auth, route, token).await?;
    auth.token_cache
        .insert(token, &verified, issuer, generation);
    Ok(verified)
}

/// The token's length and characters, checked before anything else (the
/// cache lookup included): a hostile header costs a scan and no more.
fn check_text(auth: &Auth, token: &str) -> Result<(), AuthError> {
    if token.len() > auth.max_token_bytes {
        return Err(AuthError::invalid(format!(
            "the token is longer than {} bytes",
            auth.max_token_bytes
        )));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    {
        return Err(AuthError::invalid(
            "the token has characters outside base64url",
        ));
    }
    Ok(())
}

/// The full check: the verified token, the index of its issuer in
/// `auth.issuers` and the JWKS generation its key came from (0 without a
/// JWKS), for the cache.
async fn verify_uncached(
    auth: &Auth,
    route: &RouteAuth,
    token: &str,
) -> Result<(Verified, usize, u64), AuthError> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => {
            return Err(AuthError::invalid(
                "encrypted tokens (JWE) are not accepted",
            ))
        }
        _ => {
            return Err(AuthError::invalid(
                "not a JWT (expected header.payload.signature)",
            ))
        }
    }
    let head: RawHeader = serde_json::from_slice(&b64(parts[0], "header")?)
        .map_err(|_| AuthError::invalid("the header is not a JSON object with \"alg\""))?;
    if head.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::invalid("alg \"none\" is not accepted"));
    }
    if head.crit.is_some() {
        // RFC 7515 4.1.11: extensions this verifier does not understand.
        return Err(AuthError::invalid("the \"crit\" header is not supported"));
    }
    let alg: Algorithm = head
        .alg
        .parse()
        .map_err(|_| AuthError::invalid(format!("algorithm {:?} is not supported", head.alg)))?;
    if parts[2].is_empty() {
        return Err(AuthError::invalid("the token has no signature"));
    }
    // Only to pick the issuer; nothing here is believed before the signature is.
    let payload: Map<String, Value> = serde_json::from_slice(&b64(parts[1], "payload")?)
        .map_err(|_| AuthError::invalid("the payload is not a JSON object"))?;
    let iss = match payload.get("iss") {
        Some(Value::String(iss)) => iss.as_str(),
        Some(_) => return Err(AuthError::invalid("the \"iss\" claim is not a string")),
        None => return Err(AuthError::invalid("the token has no \"iss\" claim")),
    };
    let (index, issuer) = auth
        .issuers
        .iter()
        .enumerate()
        .filter(|(i, _)| route.issuers.as_ref().is_none_or(|list| list.contains(i)))
        .find(|(_, is)| is.iss == iss)
        .ok_or_else(|| AuthError::invalid(format!("issuer {iss:?} is not accepted here")))?;
    if !issuer.algorithms.contains(&alg) {
        return Err(AuthError::invalid(format!(
            "algorithm {alg:?} is not allowed for issuer {:?}",
            issuer.iss
        )));
    }
    check_registered_claims(&payload, issuer)?;
    let validation = issuer
        .validation(alg.family())
        .expect("a validation exists for each allowed family");

    // One load of the key set: the generation the cache records is that
    // of the keys the token is checked against.
    let kid = head.kid.as_deref();
    let mut set = issuer.jwks.as_ref().map(|j| j.keys());
    if candidates(issuer, set.as_deref(), alg, kid)
        .next()
        .is_none()
    {
        // An unknown kid (or keys not loaded yet): perhaps the issuer rotated.
        if let Some(jwks) = &issuer.jwks {
            if jwks.refetch_for_unknown_kid().await {
                set = Some(jwks.keys());
            }
        }
    }
    let generation = set.as_ref().map_or(0, |s| s.generation);
    let mut keys = candidates(issuer, set.as_deref(), alg, kid)
        .take(MAX_KEYS_TRIED)
        .peekable();
    if keys.peek().is_none() {
        return Err(AuthError::invalid(match &head.kid {
            Some(kid) => format!("unknown key id {kid:?}"),
            None => format!("issuer {:?} has no key for {alg:?}", issuer.iss),
        }));
    }
    let mut last = None;
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => {
                let verified = Verified {
                    issuer: issuer.clone(),
                    claims: Arc::new(data.claims),
                };
                return Ok((verified, index, generation));
            }
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
            Err(e) => return Err(AuthError::Invalid(describe(&e, issuer))),
        }
    }
    Err(AuthError::Invalid(match last {
        Some(e) => describe(&e, issuer),
        None => "no key verified the token".into(),
    }))
}

/// The registered claims' JSON types (RFC 7519 section 4.1), checked here
/// because jsonwebtoken lets through what it cannot parse: an `aud` that is
/// absent or a number passes its audience check, `iat` is never read, and a
/// `null` `nbf` counts as absent. Done before the signature is checked: the
/// shape of a claim needs no trust, and a malformed token costs no crypto.
fn check_registered_claims(claims: &Map<String, Value>, issuer: &Issuer) -> Result<(), AuthError> {
    for name in ["exp", "nbf", "iat"] {
        match claims.get(name) {
            None => {}
            // A NumericDate: seconds since 1970, fractions allowed.
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => {}
            Some(_) => {
                return Err(AuthError::invalid(format!(
                    "the \"{name}\" claim is not a NumericDate (a number of seconds since 1970)"
                )))
            }
        }
    }
    if issuer.audiences.is_empty() {
        return Ok(());
    }
    match claims.get("aud") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Ok(())
        }
        Some(_) => Err(AuthError::invalid(
            "the \"aud\" claim is not a string or a list of strings",
        )),
        None => Err(AuthError::invalid(format!(
            "the token has no \"aud\" claim (issuer {:?} needs one)",
            issuer.iss
        ))),
    }
}

/// The keys that may have signed a token of `alg` and `kid`: the issuer's
/// own, then those of its key set `jwks`; borrowed, not copied.
fn candidates<'a>(
    issuer: &'a Issuer,
    jwks: Option<&'a KeySet>,
    alg: Algorithm,
    kid: Option<&'a str>,
) -> impl Iterator<Item = &'a VerifyKey> + 'a {
    let from_jwks = jwks.map(|s| s.keys.as_slice()).unwrap_or(&[]);
    issuer
        .static_keys
        .iter()
        .chain(from_jwks)
        .filter(move |k| k.accepts(alg))
        .filter(move |k| match (kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            // A key without a kid is tried for any token; a token without
            // a kid tries every key of its family.
            _ => true,
        })
}

fn describe(e: &jsonwebtoken::errors::Error, issuer: &Issuer) -> String {
    match e.kind() {
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => format!("the issuer is not {:?}", issuer.iss),
        ErrorKind::InvalidAudience => {
            format!("the audience is not one of {}", issuer.audiences.join(", "))
        }
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no \"{c}\" claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the \"{c}\" claim is malformed"),
        ErrorKind::InvalidAlgorithm => "the algorithm does not fit the key".into(),
        ErrorKind::InvalidToken => "the token is malformed".into(),
        ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "the token is malformed".into()
        }
        other => format!("{other:?}"),
    }
}

/// The route's scope and claim requirements on a verified token.
pub fn authorize(route: &RouteAuth, v: &Verified) -> Result<(), AuthError> {
    if !route.scopes.is_empty() {
        let granted = granted_scopes(&v.claims);
        for want in &route.scopes {
            if !granted.contains(&want.as_str()) {
                return Err(AuthError::Forbidden {
                    message: format!("the token lacks the scope {want:?}"),
                    scope: Some(route.scopes.join(" ")),
                });
            }
        }
    }
    for (name, allowed) in &route.claims {
        let ok = match v.claims.get(name) {
            None => false,
            Some(Value::Array(items)) => items.iter().any(|i| allowed.contains(i)),
            Some(value) => allowed.contains(value),
        };
        if !ok {
            return Err(AuthError::Forbidden {
                message: format!("the token's \"{name}\" claim does not allow this route"),
                scope: None,
            });
        }
    }
    Ok(())
}

/// `scope` (space-separated, RFC 8693) and `scp` (a list or a string).
fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim as one metadata value: strings as they are, lists joined by
/// commas, other values as JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A forwarded claim as a gRPC metadata value. gRPC's ASCII-Value is
/// printable ASCII (0x20-0x7E); a claim outside it (a `sub` with CR/LF, a
/// non-ASCII name) is refused with the token rather than dropped or sent as
/// raw bytes: a route that forwards an identity never reaches its backend
/// without it, nor with one the backend may read differently.
pub fn claim_metadata(name: &str, v: &Value) -> Result<HeaderValue, AuthError> {
    let text = claim_text(v);
    let refuse = |what: &str| {
        AuthError::invalid(format!(
            "the \"{name}\" claim cannot be forwarded as gRPC metadata: it {what}"
        ))
    };
    if let Some(b) = text.bytes().find(|b| !(b' '..=b'~').contains(b)) {
        return Err(refuse(if b.is_ascii() {
            "holds a control character"
        } else {
            "is not ASCII"
        }));
    }
    HeaderValue::try_from(text).map_err(|_| refuse("is not a valid header value"))
}

/// An HS256 token signed with a fixed secret, valid until 2100.
const SELF_CHECK_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzZWxmLWNoZWNrIiwiZXhwIjo0MTAyNDQ0ODAwfQ.FSAD9JczQvf_G1A1SBOHTuW2U3xT6OdCmlM-IbggBPI";

/// Verifies a known token once per process. jsonwebtoken compiles without a
/// crypto backend (or with two) and panics on the first verify; this turns
/// that into a config error at start instead of a crash on a request.
pub fn self_check() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let run = std::panic::catch_unwind(|| {
                let key = DecodingKey::from_secret(b"gateway-jwt-self-check");
                let mut v = Validation::new(Algorithm::HS256);
                v.validate_aud = false;
                jsonwebtoken::decode::<BTreeMap<String, Value>>(SELF_CHECK_TOKEN, &key, &v)
                    .map(|d| d.claims.get("sub").cloned())
            });
            match run {
                Ok(Ok(Some(Value::String(s)))) if s == "self-check" => Ok(()),
                Ok(Ok(other)) => Err(format!("the known token decoded to {other:?}")),
                Ok(Err(e)) => Err(format!("the known token did not verify: {e}")),
                Err(_) => Err(
                    "jsonwebtoken has no usable crypto backend (exactly one of its aws_lc_rs and rust_crypto features must be on)"
                        .into(),
                ),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_backend_self_check_passes() {
        self_check().unwrap();
    }

    const SECRET: &[u8] = b"gateway-jwt-self-check";

    fn hs_issuer() -> Auth {
        let key = hmac_key(None, SECRET);
        Auth {
            issuers: vec![Arc::new(Issuer::new(
                "t".into(),
                "t".into(),
                vec![Algorithm::HS256],
                vec![],
                60,
                vec![key],
                None,
            ))],
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            ..Default::default()
        }
    }

    fn token(header: &str, payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", e(header), e(payload))
    }

    #[tokio::test]
    async fn alg_none_and_unknown_algorithms_are_refused_by_name() {
        let auth = hs_issuer();
        let r = RouteAuth::default();
        let none = token(r#"{"alg":"none"}"#, r#"{"iss":"t"}"#);
        assert_eq!(
            verify(&auth, &r, &none).await.unwrap_err(),
            AuthError::invalid("alg \"none\" is not accepted")
        );
        let weird = token(r#"{"alg":"XS999"}"#, r#"{"iss":"t"}"#);
        assert!(verify(&auth, &r, &weird)
            .await
            .unwrap_err()
            .message()
            .contains("not supported"));
        let rs = token(r#"{"alg":"RS256"}"#, r#"{"iss":"t"}"#);
        assert!(verify(&auth, &r, &rs)
            .await
            .unwrap_err()
            .message()
            .contains("not allowed for issuer"));
    }

    const OTHER_SECRET: &[u8] = b"another-secret-of-at-least-32-bytes";

    fn hmac_key(kid: Option<&str>, secret: &[u8]) -> VerifyKey {
        VerifyKey {
            kid: kid.map(str::to_owned),
            family: AlgorithmFamily::Hmac,
            algorithms: None,
            key: DecodingKey::from_secret(secret),
            origin: "test".into(),
        }
    }

    fn issuer(iss: &str, keys: Vec<VerifyKey>, jwks: Option<Arc<Jwks>>) -> Arc<Issuer> {
        Arc::new(Issuer::new(
            iss.into(),
            iss.into(),
            vec![Algorithm::HS256],
            vec![],
            60,
            keys,
            jwks,
        ))
    }

    fn cached_auth(issuers: Vec<Arc<Issuer>>, max_entries: u64) -> Auth {
        Auth {
            issuers,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            token_cache: TokenCache::new(
                max_entries,
                super::super::token_cache::DEFAULT_MAX_LIFETIME,
            ),
            ..Default::default()
        }
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// An HS256 token of `iss` for `sub`, valid for 10 minutes.
    fn signed(iss: &str, kid: Option<&str>, secret: &[u8], sub: &str) -> String {
        signed_claims(
            kid,
            secret,
            serde_json::json!({"iss": iss, "sub": sub, "exp": unix_now() + 600}),
        )
    }

    fn signed_claims(kid: Option<&str>, secret: &[u8], claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_token_verified_once_is_accepted_again_without_its_signature_checked() {
        let mut auth = cached_auth(vec![issuer("t", vec![hmac_key(None, SECRET)], None)], 100);
        let r = RouteAuth::default();
        let token = signed("t", None, SECRET, "alice");
        let first = verify(&auth, &r, &token).await.unwrap();
        assert_eq!(first.subject(), Some("alice"));
        // The issuer's key changes under the cache: a full check would now
        // fail, a hit does not look at the signature.
        auth.issuers[0] = issuer("t", vec![hmac_key(None, OTHER_SECRET)], None);
        let again = verify(&auth, &r, &token).await.unwrap();
        assert!(Arc::ptr_eq(&first.claims, &again.claims), "not a hit");
        let fresh = signed("t", None, SECRET, "bob");
        assert_eq!(
            verify(&auth, &r, &fresh).await.unwrap_err(),
            AuthError::invalid("the signature does not verify")
        );
    }

    #[tokio::test]
    async fn with_no_entries_every_token_is_verified_in_full() {
        let mut auth = cached_auth(vec![issuer("t", vec![hmac_key(None, SECRET)], None)], 0);
        let r = RouteAuth::default();
        let token = signed("t", None, SECRET, "alice");
        verify(&auth, &r, &token).await.unwrap();
        auth.issuers[0] = issuer("t", vec![hmac_key(None, OTHER_SECRET)], None);
        assert_eq!(
            verify(&auth, &r, &token).await.unwrap_err(),
            AuthError::invalid("the signature does not verify")
        );
        assert!(auth.token_cache.is_empty());
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_on_a_route_that_does_not_accept_its_issuer() {
        let auth = cached_auth(
            vec![
                issuer("t", vec![hmac_key(None, SECRET)], None),
                issuer("u", vec![hmac_key(None, SECRET)], None),
            ],
            100,
        );
        let any = RouteAuth::default();
        let only_u = RouteAuth {
            issuers: Some(vec![1]),
            ..Default::default()
        };
        let token = signed("t", None, SECRET, "alice");
        let first = verify(&auth, &any, &token).await.unwrap();
        assert_eq!(
            verify(&auth, &only_u, &token).await.unwrap_err(),
            AuthError::invalid("issuer \"t\" is not accepted here")
        );
        let again = verify(&auth, &any, &token).await.unwrap();
        assert!(Arc::ptr_eq(&first.claims, &again.claims), "not a hit");
    }

    #[tokio::test]
    async fn a_cached_token_of_a_key_the_jwks_dropped_is_refused_after_the_refresh() {
        let source = super::super::jwks::JwksSource {
            url: "http://127.0.0.1:1/jwks.json".into(),
            min_refresh: std::time::Duration::from_secs(3600),
            max_refresh: std::time::Duration::from_secs(3600),
            refetch_interval: std::time::Duration::from_secs(3600),
            timeout: std::time::Duration::from_secs(1),
        };
        let jwks = Jwks::new(source, None).unwrap();
        let both = || {
            vec![
                hmac_key(Some("a"), SECRET),
                hmac_key(Some("b"), OTHER_SECRET),
            ]
        };
        jwks.publish_for_test(both(), "a and b");
        let auth = cached_auth(vec![issuer("t", vec![], Some(jwks.clone()))], 100);
        let r = RouteAuth::default();
        let token = signed("t", Some("a"), SECRET, "alice");
        let first = verify(&auth, &r, &token).await.unwrap();
        // A refresh bringing the same document changes nothing.
        jwks.publish_for_test(both(), "a and b");
        let again = verify(&auth, &r, &token).await.unwrap();
        assert!(Arc::ptr_eq(&first.claims, &again.claims), "not a hit");
        // The issuer drops key "a": its token goes through the full check.
        jwks.publish_for_test(vec![hmac_key(Some("b"), OTHER_SECRET)], "b only");
        assert_eq!(
            verify(&auth, &r, &token).await.unwrap_err(),
            AuthError::invalid("unknown key id \"a\"")
        );
        let of_b = signed("t", Some("b"), OTHER_SECRET, "bob");
        assert_eq!(
            verify(&auth, &r, &of_b).await.unwrap().subject(),
            Some("bob")
        );
    }

    #[tokio::test]
    async fn a_token_not_valid_yet_is_never_kept() {
        let auth = cached_auth(vec![issuer("t", vec![hmac_key(None, SECRET)], None)], 100);
        let r = RouteAuth::default();
        let now = unix_now();
        let token = signed_claims(
            None,
            SECRET,
            serde_json::json!({"iss": "t", "exp": now + 7200, "nbf": now + 3600}),
        );
        for _ in 0..2 {
            assert_eq!(
                verify(&auth, &r, &token).await.unwrap_err(),
                AuthError::invalid("the token is not valid yet (nbf)")
            );
        }
        assert!(auth.token_cache.is_empty());
    }

    #[test]
    fn challenge_escapes_quotes() {
        let e = AuthError::invalid("bad \"x\"\r\n");
        assert_eq!(
            e.challenge(),
            "Bearer error=\"invalid_token\", error_description=\"bad 'x'??\""
        );
        assert_eq!(AuthError::Missing.challenge(), "Bearer");
    }

    #[test]
    fn token_cookie_is_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; jwt=secret; b=2".parse().unwrap());
        strip_cookie(&mut h, "jwt");
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let route = RouteAuth {
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        };
        let issuer = hs_issuer().issuers[0].clone();
        let with = |claims: Value| Verified {
            issuer: issuer.clone(),
            claims: Arc::new(claims.as_object().unwrap().clone()),
        };
        assert!(authorize(&route, &with(serde_json::json!({"scope": "read write"}))).is_ok());
        assert!(authorize(&route, &with(serde_json::json!({"scp": ["write", "read"]}))).is_ok());
        assert!(matches!(
            authorize(&route, &with(serde_json::json!({"scope": "read"}))),
            Err(AuthError::Forbidden { .. })
        ));
    }
}
