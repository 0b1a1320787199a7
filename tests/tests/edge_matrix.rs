//! The bad-input matrix: hostile and malformed requests, each sent as raw
//! bytes on its own connection, each with the status and error it must get.
//! Then normal traffic is still served, and the backend (which counts its
//! calls) saw only the requests meant to reach it.
//!
//! Most refusals carry the JSON error body (`code`). A few are refused by
//! the HTTP/1.1 parser before the gateway sees a request (bare CR in a
//! header, conflicting lengths, bad chunking): those get hyper's plain 400
//! and a closed connection; `code: None` marks them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway_tests::edge::{
    claims, counting_backend, edge_config, keys, now, raw_token, sign_hs256,
};
use gateway_tests::{check_error_body, testing_descriptors, TestGateway};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET_ENV: &str = "GATEWAY_EDGE_MATRIX_HMAC_SECRET";
const SECRET: &str = "matrix-tests-secret-of-at-least-32-bytes";
const ISS: &str = "https://issuer.test";

fn sections(jwks: &str) -> String {
    format!(
        r#"[auth.issuers.main]
issuer = "{ISS}"
audiences = ["gateway-tests"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "{jwks}"

[auth.issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
hmac_secret_env = "{SECRET_ENV}"
"#
    )
}

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/secure"
grpc = "testing.v1.Echo/Echo"
auth = "required"

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"

[[routes]]
method = "GET"
path = "/v1/single/{string_field}"
grpc = "testing.v1.Echo/Echo"
"#;

struct Case {
    what: String,
    request: Vec<u8>,
    status: u16,
    /// The JSON error code; `None` for the parser's bare answers and for successes.
    code: Option<i32>,
    contains: &'static str,
    /// Whether the backend is called.
    reaches_backend: bool,
}

/// A request with Host and `Connection: close`; Content-Length is added
/// for a body unless the headers already frame it.
fn req(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n")
        .into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !body.is_empty() && !framed {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_post(body: &[u8]) -> Vec<u8> {
    req(
        "POST",
        "/v1/echo",
        &[("Content-Type", "application/json")],
        body,
    )
}

fn bearer(token: &str) -> Vec<u8> {
    req(
        "GET",
        "/v1/secure",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
}

fn case(
    what: &str,
    request: Vec<u8>,
    status: u16,
    code: Option<i32>,
    contains: &'static str,
) -> Case {
    Case {
        what: what.into(),
        request,
        status,
        code,
        contains,
        reaches_backend: status == 200,
    }
}

fn cases() -> Vec<Case> {
    let (rsa, ec, _) = keys();
    let good = claims(ISS, "alice");
    let mut c = Vec::new();

    // --- Bad tokens (401, code 16).
    let bad = |what: &str, token: String, contains: &'static str| {
        case(what, bearer(&token), 401, Some(16), contains)
    };
    c.push(case(
        "no token",
        req("GET", "/v1/secure", &[], b""),
        401,
        Some(16),
        "needs a bearer token",
    ));
    c.push(bad(
        "alg none",
        raw_token(&json!({"alg": "none"}), &good, b""),
        "alg \"none\"",
    ));
    c.push(bad(
        "alg None, signed",
        raw_token(&json!({"alg": "None"}), &good, b"sig"),
        "alg \"none\"",
    ));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(rsa.kid.clone());
    let confusion = jsonwebtoken::encode(
        &h,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    c.push(bad(
        "HMAC token against the RSA key (algorithm confusion)",
        confusion,
        "algorithm HS256 is not allowed",
    ));
    let hs_for_rs = sign_hs256(SECRET.as_bytes(), &good);
    c.push(bad(
        "HS256 token claiming the RSA issuer",
        hs_for_rs,
        "not allowed for issuer",
    ));
    c.push(bad(
        "expired",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests", "exp": now() - 600})),
        "expired",
    ));
    c.push(bad(
        "nbf in the future",
        rsa.sign(
            &json!({"iss": ISS, "aud": "gateway-tests", "exp": now() + 9000, "nbf": now() + 3600}),
        ),
        "not valid yet",
    ));
    c.push(bad(
        "wrong issuer",
        rsa.sign(&claims("https://other.test", "a")),
        "not accepted here",
    ));
    c.push(bad(
        "wrong audience",
        rsa.sign(&json!({"iss": ISS, "aud": "x", "exp": now() + 60})),
        "audience",
    ));
    c.push(bad(
        "no exp",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests"})),
        "no \"exp\"",
    ));
    c.push(bad(
        "exp as a string",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests", "exp": "tomorrow"})),
        "exp",
    ));
    c.push(bad(
        "no iss",
        rsa.sign(&json!({"aud": "gateway-tests", "exp": now() + 60})),
        "no \"iss\"",
    ));
    let t = rsa.sign(&good);
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = raw_token(&json!({}), &claims(ISS, "root"), b"");
    parts[1] = forged.split('.').nth(1).unwrap();
    c.push(bad("tampered payload", parts.join("."), "signature"));
    c.push(bad(
        "signature of another token",
        {
            let other = rsa.sign(&claims(ISS, "bob"));
            format!(
                "{}.{}",
                &t[..t.rfind('.').unwrap()],
                other.rsplit('.').next().unwrap()
            )
        },
        "signature",
    ));
    c.push(bad(
        "EC token under the RSA kid",
        {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some(rsa.kid.clone());
            jsonwebtoken::encode(&h, &good, &ec.encoding).unwrap()
        },
        "unknown key id",
    ));
    let mut big = good.clone();
    big["pad"] = json!("p".repeat(9000));
    c.push(bad("oversized token", rsa.sign(&big), "longer than 8192"));
    c.push(bad("two segments", "abc.def".into(), "not a JWT"));
    c.push(bad("five segments (JWE)", "a.b.c.d.e".into(), "JWE"));
    c.push(bad(
        "spaces inside",
        "abc def.ghi.jkl".into(),
        "outside base64url",
    ));
    c.push(bad(
        "header not JSON",
        "bm9wZQ.e30.eA".into(),
        "header is not a JSON object",
    ));
    c.push(bad(
        "payload not JSON",
        format!(
            "{}.bm9wZQ.eA",
            raw_token(&json!({"alg": "RS256"}), &json!({}), b"")
                .split('.')
                .next()
                .unwrap()
        ),
        "payload is not a JSON object",
    ));
    c.push(bad(
        "payload is an array",
        raw_token(&json!({"alg": "RS256"}), &json!([1]), b"x"),
        "payload is not a JSON object",
    ));
    c.push(bad(
        "empty signature",
        format!("{}.", &t[..t.rfind('.').unwrap()]),
        "no signature",
    ));
    c.push(bad(
        "crit header",
        raw_token(&json!({"alg": "RS256", "crit": ["x"]}), &good, b"x"),
        "crit",
    ));
    c.push(case(
        "Basic credentials",
        req(
            "GET",
            "/v1/secure",
            &[("Authorization", "Basic dXNlcjpwYXNz")],
            b"",
        ),
        401,
        Some(16),
        "must be Bearer",
    ));
    c.push(case(
        "Bearer without a token",
        req("GET", "/v1/secure", &[("Authorization", "Bearer ")], b""),
        401,
        Some(16),
        "",
    ));
    c.push(case(
        "two Authorization headers",
        req(
            "GET",
            "/v1/secure",
            &[
                ("Authorization", &format!("Bearer {t}")),
                ("Authorization", &format!("Bearer {t}")),
            ],
            b"",
        ),
        401,
        Some(16),
        "more than one Authorization",
    ));
    c.push(case(
        "non-ASCII Authorization",
        {
            let mut r = req("GET", "/v1/secure", &[], b"");
            let at = r.len() - 2;
            r.splice(
                at..at,
                b"Authorization: Bearer \xc3\xa9t\xc3\xa9\r\n"
                    .iter()
                    .copied(),
            );
            r
        },
        401,
        Some(16),
        "not ASCII",
    ));

    // --- Header injection, CRLF, huge headers.
    c.push(case(
        "bare CR inside a header value",
        {
            let mut r = req("GET", "/v1/echo", &[], b"");
            let at = r.len() - 2;
            r.splice(at..at, b"X-A: a\rInjected: b\r\n".iter().copied());
            r
        },
        400,
        None,
        "",
    ));
    c.push(case(
        "NUL inside a header value",
        {
            let mut r = req("GET", "/v1/echo", &[], b"");
            let at = r.len() - 2;
            r.splice(at..at, b"X-A: a\0b\r\n".iter().copied());
            r
        },
        400,
        None,
        "",
    ));
    c.push(case(
        "obsolete line folding",
        {
            let mut r = req("GET", "/v1/echo", &[], b"");
            let at = r.len() - 2;
            r.splice(at..at, b"X-A: a\r\n folded\r\n".iter().copied());
            r
        },
        400,
        None,
        "",
    ));
    c.push(case(
        "space in a header name",
        {
            let mut r = req("GET", "/v1/echo", &[], b"");
            let at = r.len() - 2;
            r.splice(at..at, b"Bad Name: x\r\n".iter().copied());
            r
        },
        400,
        None,
        "",
    ));
    c.push(case(
        "encoded CRLF in the path stays data",
        req("GET", "/v1/single/a%0D%0ASet-Cookie:%20x=1", &[], b""),
        200,
        None,
        "",
    ));
    let forty_k = "h".repeat(40 * 1024);
    c.push(case(
        "one 40 KiB header",
        req("GET", "/v1/echo", &[("X-Big", &forty_k)], b""),
        431,
        Some(3),
        "limits.max_header_bytes",
    ));
    let many: Vec<(String, String)> = (0..80).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    c.push(case(
        "80 headers (over the default 64)",
        req("GET", "/v1/echo", &many_ref, b""),
        431,
        Some(3),
        "limits.max_headers",
    ));
    let lots: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let lots_ref: Vec<(&str, &str)> = lots.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    c.push(case(
        "150 headers (past the parser's bound of 100)",
        req("GET", "/v1/echo", &lots_ref, b""),
        431,
        None,
        "",
    ));
    let huge = "h".repeat(200 * 1024);
    c.push(case(
        "one 200 KiB header (past the parser's bound)",
        req("GET", "/v1/echo", &[("X-Huge", &huge)], b""),
        431,
        None,
        "",
    ));
    let long = format!("/v1/echo?stringField={}", "u".repeat(9000));
    c.push(case(
        "9 KB URL",
        req("GET", &long, &[], b""),
        414,
        Some(3),
        "limits.max_url_bytes",
    ));
    c.push(case(
        "a forged claim header is dropped, not refused",
        req("GET", "/v1/echo", &[("X-Jwt-Sub", "root")], b""),
        200,
        None,
        "",
    ));

    // --- Paths.
    c.push(case(
        "invalid UTF-8 (escaped) in the path",
        req("GET", "/v1/single/%FF%FE", &[], b""),
        400,
        Some(3),
        "UTF-8",
    ));
    c.push(case(
        "raw invalid UTF-8 in the path",
        req("GET", "/v1/single/a\u{FFFD}", &[], b"")
            .into_iter()
            .map(|b| if b == 0xEF { 0xFF } else { b })
            .collect(),
        400,
        None,
        "",
    ));
    c.push(case(
        "bad percent-escape",
        req("GET", "/v1/single/%G0", &[], b""),
        400,
        Some(3),
        "percent",
    ));
    c.push(case(
        "asterisk-form target",
        req("OPTIONS", "*", &[], b""),
        400,
        Some(3),
        "must start with '/'",
    ));
    c.push(case(
        "dot segments stay data",
        req("GET", "/v1/single/..%2F..%2Fetc%2Fpasswd", &[], b""),
        200,
        None,
        "",
    ));
    c.push(case(
        "unrouted path",
        req("GET", "/admin/config", &[], b""),
        404,
        Some(5),
        "no route",
    ));
    c.push(case(
        "unbound method",
        req("DELETE", "/v1/echo", &[], b""),
        405,
        Some(12),
        "not allowed",
    ));

    // --- JSON bodies.
    c.push(case(
        "invalid UTF-8 inside a JSON string",
        json_post(b"{\"stringField\": \"a\xff\"}"),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "lone surrogate escape",
        json_post(br#"{"stringField": "\ud800"}"#),
        400,
        Some(3),
        "invalid JSON",
    ));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    c.push(case(
        "5000-deep arrays",
        json_post(format!("{{\"valueField\": {deep}}}").as_bytes()),
        400,
        Some(3),
        "nesting is deeper",
    ));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    c.push(case(
        "200-deep objects",
        json_post(format!("{{\"structField\": {deep_obj}}}").as_bytes()),
        400,
        Some(3),
        "nesting is deeper",
    ));
    c.push(case(
        "int32 overflow",
        json_post(br#"{"int32Field": 2147483648}"#),
        400,
        Some(3),
        "int32Field",
    ));
    c.push(case(
        "int64 overflow",
        json_post(br#"{"int64Field": "9223372036854775808"}"#),
        400,
        Some(3),
        "int64Field",
    ));
    c.push(case(
        "negative uint32",
        json_post(br#"{"uint32Field": -1}"#),
        400,
        Some(3),
        "uint32Field",
    ));
    c.push(case(
        "float beyond f32",
        json_post(br#"{"floatField": 1e39}"#),
        400,
        Some(3),
        "floatField",
    ));
    c.push(case(
        "number beyond f64",
        json_post(br#"{"doubleField": 1e400}"#),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "fractional int32",
        json_post(br#"{"int32Field": 1.5}"#),
        400,
        Some(3),
        "int32Field",
    ));
    c.push(case(
        "duplicate key",
        json_post(br#"{"stringField": "a", "stringField": "b"}"#),
        400,
        Some(3),
        "given twice",
    ));
    c.push(case(
        "same field under both names",
        json_post(br#"{"stringField": "a", "string_field": "b"}"#),
        400,
        Some(3),
        "as \"stringField\" and as \"string_field\"",
    ));
    c.push(case(
        "duplicate key in a nested message",
        json_post(br#"{"inner": {"name": "a", "name": "b"}}"#),
        400,
        Some(3),
        "given twice",
    ));
    c.push(case(
        "duplicate key in a map",
        json_post(br#"{"labels": {"k": "a", "k": "b"}}"#),
        400,
        Some(3),
        "key \"k\" is given twice",
    ));
    c.push(case(
        "map keys a_b and aB are two keys",
        json_post(br#"{"labels": {"a_b": "1", "aB": "2"}}"#),
        200,
        None,
        "",
    ));
    c.push(case(
        "duplicate key in a Struct",
        json_post(br#"{"structField": {"x": 1, "x": 2}}"#),
        400,
        Some(3),
        "given twice",
    ));
    c.push(case(
        "trailing garbage",
        json_post(b"{}x"),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "top-level array",
        json_post(b"[1, 2]"),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "comments",
        json_post(b"{/* c */}"),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "NaN literal",
        json_post(br#"{"doubleField": NaN}"#),
        400,
        Some(3),
        "invalid JSON",
    ));
    c.push(case(
        "unknown enum value",
        json_post(br#"{"color": "PURPLE"}"#),
        400,
        Some(3),
        "color",
    ));

    // --- Content types.
    c.push(case(
        "text/plain body",
        req("POST", "/v1/echo", &[("Content-Type", "text/plain")], b"{}"),
        415,
        Some(3),
        "text/plain",
    ));
    c.push(case(
        "form body",
        req(
            "POST",
            "/v1/echo",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"a=1",
        ),
        415,
        Some(3),
        "application/json",
    ));
    c.push(case(
        "multipart body",
        req(
            "POST",
            "/v1/echo",
            &[("Content-Type", "multipart/form-data; boundary=x")],
            b"--x--",
        ),
        415,
        Some(3),
        "application/json",
    ));
    c.push(case(
        "JSON with a charset",
        req(
            "POST",
            "/v1/echo",
            &[("Content-Type", "application/json; charset=utf-8")],
            b"{}",
        ),
        200,
        None,
        "",
    ));

    // --- Framing and smuggling shapes.
    c.push(case(
        "two different Content-Lengths",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", "2"),
                ("Content-Length", "3"),
            ],
            b"{}",
        ),
        400,
        None,
        "",
    ));
    c.push(case(
        "Content-Length not a number",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", "2x"),
            ],
            b"{}",
        ),
        400,
        None,
        "",
    ));
    c.push(case(
        "negative Content-Length",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", "-2"),
            ],
            b"{}",
        ),
        400,
        None,
        "",
    ));
    c.push(case(
        "Transfer-Encoding not ending in chunked",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "gzip"),
            ],
            b"{}",
        ),
        400,
        None,
        "",
    ));
    c.push(case(
        "Transfer-Encoding: xchunked",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "xchunked"),
            ],
            b"{}",
        ),
        400,
        None,
        "",
    ));
    c.push(case(
        "bad chunk size",
        req(
            "POST",
            "/v1/echo",
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "chunked"),
            ],
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        Some(3),
        "reading the request body failed",
    ));
    c.push(case("Transfer-Encoding in HTTP/1.0", b"POST /v1/echo HTTP/1.0\r\nHost: gw.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(), 400, None, ""));
    // CL.TE: the chunked framing wins, the bytes after it are not a second
    // request, and the connection is closed after the answer.
    c.push(case("Content-Length and Transfer-Encoding together (CL.TE smuggling)",
        b"POST /v1/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /v1/secure HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec(),
        200, None, ""));
    c.push(case("TE.CL smuggling shape", 
        b"POST /v1/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /v1/secure HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec(),
        200, None, ""));
    c
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    /// Count of status lines in everything read (a smuggled second request
    /// would show a second answer).
    answers: usize,
}

async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = text[..split].to_ascii_lowercase();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        // One chunk is all the gateway's JSON answers use.
        let t = String::from_utf8_lossy(&body).into_owned();
        if let Some((size, rest)) = t.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            body = rest.as_bytes()[..n.min(rest.len())].to_vec();
        }
    }
    Some(Answer {
        status,
        body,
        answers: text.matches("HTTP/1.1 ").count(),
    })
}

#[tokio::test]
async fn hostile_and_malformed_requests_get_their_expected_answers_and_the_gateway_keeps_serving() {
    std::env::set_var(SECRET_ENV, SECRET);
    let (rsa, ec, ed) = keys();
    let jwks = gateway_tests::edge::Jwks::start(&[rsa, ec, ed], "max-age=300").await;
    let (backend, calls) = counting_backend().await;
    let config = edge_config(&sections(&jwks.url), ROUTES);
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;

    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut expected_calls = 0;
    for c in &cases {
        let Some(a) = send(gw.addr, &c.request).await else {
            failures.push(format!("{}: no HTTP answer", c.what));
            continue;
        };
        if a.status != c.status {
            failures.push(format!(
                "{}: HTTP {} instead of {}: {}",
                c.what,
                a.status,
                c.status,
                String::from_utf8_lossy(&a.body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
            continue;
        }
        if a.answers != 1 {
            failures.push(format!(
                "{}: {} answers on one connection",
                c.what, a.answers
            ));
        }
        if let Some(code) = c.code {
            let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
            if let Err(e) = check_error_body(&json, code, c.contains) {
                failures.push(format!(
                    "{}: {e}: {}",
                    c.what,
                    String::from_utf8_lossy(&a.body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ));
            }
        }
        if c.reaches_backend {
            expected_calls += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        expected_calls,
        "the backend saw requests it should not have"
    );
    // Normal traffic afterwards.
    gw.get("/v1/single/still-serving").await.ok();
    let token = format!("Bearer {}", ed.sign(&claims(ISS, "after")));
    gw.request("GET", "/v1/secure", &[("authorization", &token)], None)
        .await
        .ok();
}
