//! JWT authentication end to end: real RSA, P-256 and Ed25519 keys made in
//! the test, a JWKS served over loopback (rotated mid-test), PEM files and an
//! HMAC secret from the environment; every kind of bad token; route scopes
//! and claims; what reaches the backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_tests::edge::{
    claims, counting_backend, edge_config, keys, now, raw_token, sign_hs256, Jwks, LoggingGateway,
    TestKey,
};
use gateway_tests::{temp_dir, testing_descriptors, toml_path, Reply, TestGateway};
use serde_json::json;

const SECRET_ENV: &str = "GATEWAY_EDGE_TEST_HMAC_SECRET";
const SECRET: &str = "0123456789abcdef0123456789abcdef-edge-tests";

fn sections(jwks_url: &str, pem_path: &str) -> String {
    format!(
        r#"[auth]
leeway = "60s"
cookie = "session"
query_param = "access_token"
forward_claims = ["sub", "email"]

[auth.issuers.main]
issuer = "https://issuer.test"
audiences = ["gateway-tests"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "{jwks_url}"
jwks_min_refresh = "1s"
jwks_refetch_interval = "300ms"

[auth.issuers.pem]
issuer = "https://pem.test"
audiences = ["gateway-tests"]
algorithms = ["ES256"]
pem_files = ["{pem_path}"]

[auth.issuers.hmac]
issuer = "https://hmac.test"
algorithms = ["HS256"]
hmac_secret_env = "{SECRET_ENV}"
"#
    )
}

const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/meta"
grpc = "testing.v1.Echo/Meta"
auth = "required"
forward_headers = ["authorization", "cookie", "x-jwt-sub"]

[[routes]]
method = "GET"
path = "/v1/meta-unforwarded"
grpc = "testing.v1.Echo/Meta"
auth = "required"
forward_claims = []

[[routes]]
method = "GET"
path = "/v1/open-meta"
grpc = "testing.v1.Echo/Meta"
forward_headers = ["x-jwt-sub"]

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
auth = "required"

[[routes]]
method = "GET"
path = "/v1/optional/{string_field}"
grpc = "testing.v1.Echo/Echo"
auth = "optional"

[[routes]]
method = "GET"
path = "/v1/scoped"
grpc = "testing.v1.Echo/Echo"
auth = "required"
scopes = ["books.read", "books.write"]
claims = { tenant = ["a", "b"] }

[[routes]]
method = "GET"
path = "/v1/pem-only"
grpc = "testing.v1.Echo/Echo"
auth = "required"
issuers = ["pem"]
"#;

struct Setup {
    gw: TestGateway,
    jwks: Jwks,
    pem_key: TestKey,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn setup() -> Setup {
    // Safe in edition 2021; every test sets the same value.
    std::env::set_var(SECRET_ENV, SECRET);
    let (rsa, ec, ed) = keys();
    let jwks = Jwks::start(&[rsa, ec, ed], "max-age=300").await;
    let pem_key = TestKey::ec("pem-ec");
    let dir = temp_dir("pem");
    let pem_path = dir.join("issuer.pem");
    std::fs::write(&pem_path, &pem_key.public_pem).unwrap();
    let (backend, calls) = counting_backend().await;
    let config = edge_config(&sections(&jwks.url, &toml_path(&pem_path)), ROUTES);
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    Setup {
        gw,
        jwks,
        pem_key,
        calls,
    }
}

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    gw.request("GET", path, headers, None).await
}

async fn bearer(gw: &TestGateway, path: &str, token: &str) -> Reply {
    let value = format!("Bearer {token}");
    get_with(gw, path, &[("authorization", &value)]).await
}

#[track_caller]
fn assert_invalid_token(r: &Reply, contains: &str) {
    r.assert_error(401, 16, contains);
    let challenge = r.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{}: WWW-Authenticate {challenge:?}",
        r.request
    );
}

const ISS: &str = "https://issuer.test";

#[tokio::test]
async fn rsa_ec_and_ed25519_tokens_from_the_jwks_pass_and_chosen_claims_reach_the_backend() {
    let s = setup().await;
    let (rsa, ec, ed) = keys();
    for key in [rsa, ec, ed] {
        let mut c = claims(ISS, &format!("user-{}", key.kid));
        c["email"] = json!("u@example.com");
        let r = bearer(&s.gw, "/v1/meta", &key.sign(&c)).await;
        let md = &r.ok()["metadata"];
        assert_eq!(md["x-jwt-sub"], json!(format!("user-{}", key.kid)), "{md}");
        assert_eq!(md["x-jwt-email"], json!("u@example.com"));
        // Listed in forward_headers, yet the raw token stays at the edge.
        assert!(md.get("authorization").is_none(), "{md}");
    }
    // A key without a kid in the token is found by trying the issuer's keys.
    let r = bearer(&s.gw, "/v1/echo", &ec.sign_without_kid(&claims(ISS, "x"))).await;
    r.ok();
    assert_eq!(s.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn pem_file_and_hmac_secret_issuers_verify_their_own_tokens() {
    let s = setup().await;
    let pem_token = s.pem_key.sign(&claims("https://pem.test", "p"));
    bearer(&s.gw, "/v1/pem-only", &pem_token).await.ok();
    bearer(&s.gw, "/v1/echo", &pem_token).await.ok();
    // The pem-only route accepts no other issuer.
    let (rsa, _, _) = keys();
    assert_invalid_token(
        &bearer(&s.gw, "/v1/pem-only", &rsa.sign(&claims(ISS, "x"))).await,
        "is not accepted here",
    );
    let hs = sign_hs256(
        SECRET.as_bytes(),
        &json!({"iss": "https://hmac.test", "sub": "h", "exp": now() + 60}),
    );
    bearer(&s.gw, "/v1/echo", &hs).await.ok();
    let wrong = sign_hs256(
        b"another-secret-of-at-least-32-bytes!!",
        &json!({"iss": "https://hmac.test", "sub": "h", "exp": now() + 60}),
    );
    assert_invalid_token(&bearer(&s.gw, "/v1/echo", &wrong).await, "signature");
}

#[tokio::test]
async fn bad_tokens_of_every_kind_are_401_with_an_rfc6750_challenge_and_reach_no_backend() {
    let s = setup().await;
    let (rsa, ec, _) = keys();
    let good = claims(ISS, "alice");
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    cases.push((
        "alg none",
        raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
        "alg \"none\" is not accepted",
    ));
    cases.push((
        "alg NONE with a signature",
        raw_token(&json!({"alg": "NONE"}), &good, b"x"),
        "not accepted",
    ));
    // Algorithm confusion: an HS256 token "signed" with the RSA public key
    // as the HMAC secret, naming the RSA key's kid.
    let mut confusion_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    confusion_header.kid = Some(rsa.kid.clone());
    let confusion = jsonwebtoken::encode(
        &confusion_header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    cases.push((
        "HS256 signed with the RSA public key",
        confusion,
        "algorithm HS256 is not allowed",
    ));
    cases.push((
        "unsupported algorithm",
        raw_token(&json!({"alg": "ES512"}), &good, b"x"),
        "not supported",
    ));
    cases.push((
        "expired",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": now() - 3600})),
        "expired",
    ));
    cases.push((
        "not yet valid",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": now() + 7200, "nbf": now() + 3600})),
        "not valid yet",
    ));
    cases.push((
        "unknown issuer",
        rsa.sign(&claims("https://evil.test", "a")),
        "\"https://evil.test\" is not accepted here",
    ));
    cases.push((
        "wrong audience",
        rsa.sign(&json!({"iss": ISS, "aud": "someone-else", "sub": "a", "exp": now() + 60})),
        "audience",
    ));
    cases.push((
        "no exp",
        rsa.sign(&json!({"iss": ISS, "aud": "gateway-tests", "sub": "a"})),
        "no \"exp\" claim",
    ));
    let mut tampered: Vec<String> = rsa.sign(&good).split('.').map(str::to_owned).collect();
    tampered[1] = raw_token(&json!({}), &claims(ISS, "root"), b"")
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    cases.push(("tampered payload", tampered.join("."), "signature"));
    let impostor = TestKey::ec(&ec.kid); // same kid, another key
    cases.push((
        "signed by another key under a known kid",
        impostor.sign(&good),
        "signature",
    ));
    let mut big = good.clone();
    big["pad"] = json!("x".repeat(9000));
    cases.push(("oversized", rsa.sign(&big), "longer than 8192 bytes"));
    cases.push(("not a JWT", "abc".into(), "not a JWT"));
    cases.push(("JWE", "a.b.c.d.e".into(), "JWE"));
    cases.push(("header not base64", "!!!.e30.x".into(), "outside base64url"));
    cases.push((
        "header not JSON",
        "bm90LWpzb24.e30.eA".into(),
        "header is not a JSON object",
    ));
    cases.push((
        "no signature",
        {
            let t = rsa.sign(&good);
            t[..t.rfind('.').unwrap() + 1].to_owned()
        },
        "no signature",
    ));
    cases.push((
        "crit header",
        raw_token(&json!({"alg": "RS256", "crit": ["exp"]}), &good, b"x"),
        "crit",
    ));
    for (what, token, contains) in &cases {
        let r = bearer(&s.gw, "/v1/echo", token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_invalid_token(&r, contains);
    }
    // No token at all: a bare challenge (RFC 6750 3.1: no error code).
    let r = s.gw.get("/v1/echo").await;
    r.assert_error(401, 16, "needs a bearer token");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    // Not Bearer.
    let r = get_with(&s.gw, "/v1/echo", &[("authorization", "Basic YTpi")]).await;
    assert_invalid_token(&r, "must be Bearer");
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        0,
        "a refused request reached the backend"
    );
    // And a good one still passes.
    bearer(&s.gw, "/v1/echo", &rsa.sign(&good)).await.ok();
}

#[tokio::test]
async fn leeway_forgives_small_clock_skew_only() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let skewed = |exp: i64| json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": exp});
    bearer(&s.gw, "/v1/echo", &rsa.sign(&skewed(now() - 30)))
        .await
        .ok();
    assert_invalid_token(
        &bearer(&s.gw, "/v1/echo", &rsa.sign(&skewed(now() - 120))).await,
        "expired",
    );
    let early = json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": now() + 600, "nbf": now() + 30});
    bearer(&s.gw, "/v1/echo", &rsa.sign(&early)).await.ok();
}

#[tokio::test]
async fn missing_scopes_or_claim_values_are_403_with_insufficient_scope() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let with = |extra: serde_json::Value| {
        let mut c = claims(ISS, "a");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        rsa.sign(&c)
    };
    let r = bearer(
        &s.gw,
        "/v1/scoped",
        &with(json!({"scope": "books.read", "tenant": "a"})),
    )
    .await;
    r.assert_error(403, 7, "lacks the scope \"books.write\"");
    assert!(
        r.header("www-authenticate")
            .contains("error=\"insufficient_scope\"")
            && r.header("www-authenticate")
                .contains("scope=\"books.read books.write\""),
        "{}",
        r.header("www-authenticate")
    );
    let r = bearer(
        &s.gw,
        "/v1/scoped",
        &with(json!({"scope": "books.read books.write", "tenant": "z"})),
    )
    .await;
    r.assert_error(403, 7, "\"tenant\" claim");
    let r = bearer(
        &s.gw,
        "/v1/scoped",
        &with(json!({"scp": ["books.write", "books.read"]})),
    )
    .await;
    r.assert_error(403, 7, "\"tenant\" claim");
    bearer(
        &s.gw,
        "/v1/scoped",
        &with(json!({"scp": ["books.read", "books.write"], "tenant": ["x", "b"]})),
    )
    .await
    .ok();
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn optional_route_serves_anonymous_callers_but_refuses_bad_tokens() {
    let s = setup().await;
    let (_, _, ed) = keys();
    assert_eq!(
        s.gw.get("/v1/optional/anon").await.ok()["stringField"],
        "anon"
    );
    bearer(&s.gw, "/v1/optional/me", &ed.sign(&claims(ISS, "me")))
        .await
        .ok();
    assert_invalid_token(
        &bearer(&s.gw, "/v1/optional/bad", "x.y.z").await,
        "not base64url",
    );
}

#[tokio::test]
async fn token_from_the_cookie_or_query_parameter_is_accepted_and_kept_from_the_backend() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let token = rsa.sign(&claims(ISS, "cookie-user"));
    let cookie = format!("theme=dark; session={token}; lang=en");
    let r = get_with(&s.gw, "/v1/meta", &[("cookie", &cookie)]).await;
    let md = &r.ok()["metadata"];
    assert_eq!(md["x-jwt-sub"], "cookie-user");
    assert_eq!(md["cookie"], "theme=dark; lang=en", "{md}");
    // The query parameter is taken out before transcoding: no "unknown
    // query parameter access_token", and the other parameters still apply.
    let r =
        s.gw.get(&format!("/v1/echo?access_token={token}&stringField=q"))
            .await;
    assert_eq!(r.ok()["stringField"], "q");
}

#[tokio::test]
async fn forged_claim_headers_never_reach_the_backend() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let token = format!("Bearer {}", rsa.sign(&claims(ISS, "alice")));
    let r = get_with(
        &s.gw,
        "/v1/meta",
        &[
            ("authorization", &token),
            ("x-jwt-sub", "root"),
            ("grpc-metadata-x-jwt-email", "root@evil"),
        ],
    )
    .await;
    let md = &r.ok()["metadata"];
    assert_eq!(md["x-jwt-sub"], "alice");
    assert!(md.get("x-jwt-email").is_none(), "{md}");
    // Without authentication, claims are simply absent.
    let r = get_with(
        &s.gw,
        "/v1/open-meta",
        &[("x-jwt-sub", "root"), ("grpc-metadata-x-jwt-sub", "root")],
    )
    .await;
    let md = &r.ok()["metadata"];
    assert!(md.get("x-jwt-sub").is_none(), "{md}");
}

#[tokio::test]
async fn jwks_key_rotation_mid_test_is_followed() {
    let s = setup().await;
    let old = TestKey::rsa("rotating-1");
    let new = TestKey::ed25519("rotating-2");
    s.jwks.publish(&[&old], "max-age=300");
    // The cache does not have "rotating-1" yet: an unknown kid refetches.
    bearer(&s.gw, "/v1/echo", &old.sign(&claims(ISS, "a")))
        .await
        .ok();
    let fetched = s.jwks.fetches();
    // The issuer rotates: only the new key is published.
    s.jwks.publish(&[&new], "max-age=300");
    tokio::time::sleep(Duration::from_millis(350)).await;
    bearer(&s.gw, "/v1/echo", &new.sign(&claims(ISS, "b")))
        .await
        .ok();
    assert_eq!(s.jwks.fetches(), fetched + 1, "one refetch for the new kid");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_invalid_token(
        &bearer(&s.gw, "/v1/echo", &old.sign(&claims(ISS, "c"))).await,
        "unknown key id \"rotating-1\"",
    );
}

/// `gateway_jwt_cache_hits_total` of the gateways in this process.
fn jwt_cache_hits() -> f64 {
    let text = gateway::telemetry::metrics::handle().render();
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_jwt_cache_hits_total "))
        .map_or(0.0, |v| v.trim().parse().expect("a counter value"))
}

/// Sends `token` (of a key just published under `kid`) until it is
/// accepted: the unknown-kid refetch may meet a fetch of the previous
/// document in flight, or an empty refetch bucket, for one interval.
async fn accepted_after_rotation(gw: &TestGateway, token: &str, kid: &str) {
    let published = std::time::Instant::now();
    loop {
        let r = bearer(gw, "/v1/echo", token).await;
        if r.status == 200 {
            return;
        }
        assert_invalid_token(&r, &format!("unknown key id \"{kid}\""));
        assert!(
            published.elapsed() < Duration::from_secs(5),
            "the key {kid:?} is still refused after {:?}",
            published.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cached_token_of_a_key_the_issuer_removed_is_refused_after_the_jwks_rotates() {
    let s = setup().await;
    let old = TestKey::rsa("cached-then-removed");
    let new = TestKey::ed25519("cached-rotation-new");
    s.jwks.publish(&[&old], "max-age=300");
    let token = old.sign(&claims(ISS, "cached"));
    // Accepted, so cached; sent again, it is answered from the token cache.
    accepted_after_rotation(&s.gw, &token, "cached-then-removed").await;
    let hits = jwt_cache_hits();
    bearer(&s.gw, "/v1/echo", &token).await.ok();
    // The registry is the test process's: other tests may add hits, never
    // take one away.
    assert!(jwt_cache_hits() > hits, "the second request was not a hit");
    // The issuer rotates: only the new key is published, and a token of it
    // makes the gateway fetch the new document.
    s.jwks.publish(&[&new], "max-age=300");
    let of_new = new.sign(&claims(ISS, "new"));
    accepted_after_rotation(&s.gw, &of_new, "cached-rotation-new").await;
    // The token accepted (and cached) before is checked again and refused.
    assert_invalid_token(
        &bearer(&s.gw, "/v1/echo", &token).await,
        "unknown key id \"cached-then-removed\"",
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 3, "backend calls");
}

/// A gateway whose issuer uses the JWKS defaults (refetch bucket and
/// interval included), with the keys `jwks` publishes.
async fn default_jwks_gateway(jwks: &Jwks) -> (TestGateway, Arc<AtomicUsize>) {
    let (backend, calls) = counting_backend().await;
    let config = edge_config(
        &format!(
            r#"[auth.issuers.main]
issuer = "{ISS}"
audiences = ["gateway-tests"]
algorithms = ["RS256", "EdDSA"]
jwks_url = "{}"
"#,
            jwks.url
        ),
        r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
auth = "required"
"#,
    );
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    (gw, calls)
}

/// Sends `n` tokens naming made-up kids, 25 at a time; each must be refused
/// as an unknown key. No signing: the kid is looked up before the signature.
async fn flood_of_made_up_kids(gw: &TestGateway, n: usize) {
    let per_worker = n / 25;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..25 {
        let client = gw.client.clone();
        let url = gw.url("/v1/echo");
        workers.spawn(async move {
            for i in 0..per_worker {
                let kid = format!("made-up-{w}-{i}");
                let header = json!({"alg": "RS256", "kid": kid});
                let token = raw_token(&header, &claims(ISS, "x"), b"signature");
                let r = client.get(&url).bearer_auth(token).send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                assert_eq!(status, 401, "{body}");
                assert!(
                    body.contains(&format!("unknown key id \\\"{kid}\\\"")),
                    "{body}"
                );
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn a_flood_of_a_thousand_made_up_kids_costs_the_issuer_a_few_fetches() {
    let (rsa, _, _) = keys();
    let jwks = Jwks::start(&[rsa], "max-age=300").await;
    let (gw, calls) = default_jwks_gateway(&jwks).await;
    // Let the start-up fetch land first.
    bearer(&gw, "/v1/echo", &rsa.sign(&claims(ISS, "warm")))
        .await
        .ok();
    let before = jwks.fetches();
    let started = std::time::Instant::now();
    flood_of_made_up_kids(&gw, 1000).await;
    let took = started.elapsed();
    let during = jwks.fetches() - before;
    // The burst of 3, then one per 3 s interval while the flood lasts.
    let allowed = 3 + took.as_secs() as usize / 3 + 1;
    assert!(
        during <= allowed.min(8),
        "{during} JWKS fetches for 1,000 made-up kids in {took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_real_rotation_right_after_a_kid_flood_is_accepted_within_seconds() {
    let (rsa, _, _) = keys();
    let jwks = Jwks::start(&[rsa], "max-age=300").await;
    let (gw, calls) = default_jwks_gateway(&jwks).await;
    bearer(&gw, "/v1/echo", &rsa.sign(&claims(ISS, "warm")))
        .await
        .ok();
    let before = jwks.fetches();
    flood_of_made_up_kids(&gw, 200).await;
    // The flood used the refetches up (the made-up kids forced fetches).
    assert!(jwks.fetches() > before, "the flood forced no refetch");
    // The issuer rotates to a key the cache has never seen; its clients
    // retry until the gateway takes it.
    let rotated = TestKey::ed25519("rotated-after-flood");
    jwks.publish(&[rsa, &rotated], "max-age=300");
    let token = rotated.sign(&claims(ISS, "after-rotation"));
    let published = std::time::Instant::now();
    loop {
        let r = bearer(&gw, "/v1/echo", &token).await;
        if r.status == 200 {
            break;
        }
        assert_invalid_token(&r, "unknown key id \"rotated-after-flood\"");
        assert!(
            published.elapsed() < Duration::from_secs(5),
            "the rotated key is still refused after {:?}",
            published.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn background_refresh_honours_cache_control_within_the_floor() {
    let (rsa, _, _) = keys();
    let jwks = Jwks::start(&[rsa], "no-store").await;
    let (backend, _) = counting_backend().await;
    let config = edge_config(
        &format!(
            r#"[auth.issuers.main]
issuer = "{ISS}"
algorithms = ["RS256"]
jwks_url = "{}"
jwks_min_refresh = "300ms"
jwks_max_refresh = "10s"
"#,
            jwks.url
        ),
        "",
    );
    let _gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // "no-store" asks for no caching: refreshed at the 300 ms floor, not more.
    let n = jwks.fetches();
    assert!((3..=5).contains(&n), "{n} fetches in 1 s at a 300 ms floor");
    // A long max-age is honoured (up to the 10 s ceiling): no more fetches.
    jwks.publish(&[rsa], "public, max-age=3600");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let settled = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(jwks.fetches(), settled);
}

#[tokio::test]
async fn forward_token_passes_the_verified_token_on_as_authorization_metadata() {
    let (rsa, _, _) = keys();
    let jwks = Jwks::start(&[rsa], "max-age=300").await;
    let (backend, _) = counting_backend().await;
    let config = edge_config(
        &format!(
            r#"[auth]
default = "required"
forward_token = true
forward_claims = []

[auth.issuers.main]
issuer = "{ISS}"
algorithms = ["RS256"]
jwks_url = "{}"
"#,
            jwks.url
        ),
        r#"
[[routes]]
method = "GET"
path = "/v1/meta"
grpc = "testing.v1.Echo/Meta"
"#,
    );
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    let token = rsa.sign(&claims(ISS, "fwd"));
    let r = bearer(&gw, "/v1/meta", &token).await;
    let md = &r.ok()["metadata"];
    assert_eq!(md["authorization"], json!(format!("Bearer {token}")));
    assert!(md.get("x-jwt-sub").is_none(), "{md}");
    // auth.default = "required" applies to routes that say nothing.
    gw.get("/v1/meta")
        .await
        .assert_error(401, 16, "bearer token");
}

#[tokio::test]
async fn bad_auth_config_is_reported_with_file_line_and_field() {
    std::env::remove_var("GATEWAY_EDGE_TEST_UNSET");
    let text = edge_config(
        r#"[auth.issuers.a]
issuer = "x"
algorithms = ["none", "HS256", "RS256"]
hmac_secret_env = "GATEWAY_EDGE_TEST_UNSET"
"#,
        r#"
[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
auth = "sometimes"
scopes = ["a"]
"#,
    );
    let text = gateway_tests::render_config(&text, "127.0.0.1:1", &testing_descriptors());
    let path = gateway_tests::write_config(&text);
    let err = gateway::snapshot::Snapshot::load(&path)
        .unwrap_err()
        .to_string();
    for needle in [
        "auth.issuers.a.algorithms: \"none\" is not an algorithm",
        "algorithm confusion",
        "environment variable GATEWAY_EDGE_TEST_UNSET is not set",
        "routes[0].auth: \"sometimes\" is not an auth policy",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("routes.toml:"), "{err}");
}

/// Signs `payload` as it is with the main issuer's RSA key and checks the
/// token is refused as invalid before any backend is called.
async fn assert_claims_refused(payload: serde_json::Value, contains: &str) {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let r = bearer(&s.gw, "/v1/echo", &rsa.sign(&payload)).await;
    assert_invalid_token(&r, contains);
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        0,
        "{payload}: reached the backend"
    );
}

#[tokio::test]
async fn jwt_without_aud_is_refused_when_the_issuer_lists_audiences() {
    assert_claims_refused(
        json!({"iss": ISS, "sub": "a", "exp": now() + 600}),
        "invalid token: the token has no \"aud\" claim (issuer \"https://issuer.test\" needs one)",
    )
    .await;
    // An issuer without `audiences` checks none (its token has no aud).
    let s = setup().await;
    let hs = sign_hs256(
        SECRET.as_bytes(),
        &json!({"iss": "https://hmac.test", "sub": "h", "exp": now() + 60}),
    );
    bearer(&s.gw, "/v1/echo", &hs).await.ok();
}

#[tokio::test]
async fn jwt_with_an_aud_that_is_not_a_string_or_list_of_strings_is_refused() {
    for aud in [
        json!(42),
        json!(null),
        json!([]),
        json!(["gateway-tests", 1]),
    ] {
        assert_claims_refused(
            json!({"iss": ISS, "aud": aud, "sub": "a", "exp": now() + 600}),
            "invalid token: the \"aud\" claim is not a string or a list of strings",
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_without_iss_is_refused() {
    assert_claims_refused(
        json!({"aud": "gateway-tests", "sub": "a", "exp": now() + 600}),
        "invalid token: the token has no \"iss\" claim",
    )
    .await;
}

#[tokio::test]
async fn jwt_with_an_iss_that_is_not_a_string_is_refused() {
    assert_claims_refused(
        json!({"iss": [ISS], "aud": "gateway-tests", "sub": "a", "exp": now() + 600}),
        "invalid token: the \"iss\" claim is not a string",
    )
    .await;
}

#[tokio::test]
async fn jwt_with_an_exp_that_is_not_a_number_is_refused() {
    for exp in [json!((now() + 600).to_string()), json!(null), json!(-1)] {
        assert_claims_refused(
            json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": exp}),
            "invalid token: the \"exp\" claim is not a NumericDate",
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_with_an_nbf_that_is_not_a_number_is_refused() {
    for nbf in [json!("0"), json!(null), json!({"at": 0})] {
        assert_claims_refused(
            json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": now() + 600, "nbf": nbf}),
            "invalid token: the \"nbf\" claim is not a NumericDate",
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_with_an_iat_that_is_not_a_number_is_refused() {
    for iat in [json!("yesterday"), json!(null), json!(true)] {
        assert_claims_refused(
            json!({"iss": ISS, "aud": "gateway-tests", "sub": "a", "exp": now() + 600, "iat": iat}),
            "invalid token: the \"iat\" claim is not a NumericDate",
        )
        .await;
    }
    // A fractional NumericDate is a number all the same (RFC 7519 section 2).
    let s = setup().await;
    let (rsa, _, _) = keys();
    let mut c = claims(ISS, "a");
    c["iat"] = json!(now() as f64 - 0.5);
    bearer(&s.gw, "/v1/echo", &rsa.sign(&c)).await.ok();
}

#[tokio::test]
async fn jwt_whose_forwarded_sub_has_cr_lf_is_refused_naming_the_claim() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let token = rsa.sign(&claims(ISS, "alice\r\nx-jwt-role: admin"));
    let r = bearer(&s.gw, "/v1/meta", &token).await;
    assert_invalid_token(
        &r,
        "invalid token: the \"sub\" claim cannot be forwarded as gRPC metadata: it holds a control character",
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "reached the backend");
    // A route that forwards no claim has nothing to lose: the token is fine.
    let r = bearer(&s.gw, "/v1/meta-unforwarded", &token).await;
    let md = &r.ok()["metadata"];
    assert!(md.get("x-jwt-sub").is_none(), "{md}");
}

#[tokio::test]
async fn jwt_whose_forwarded_sub_is_not_ascii_is_refused_naming_the_claim() {
    let s = setup().await;
    let (rsa, _, _) = keys();
    let r = bearer(&s.gw, "/v1/meta", &rsa.sign(&claims(ISS, "José"))).await;
    assert_invalid_token(
        &r,
        "invalid token: the \"sub\" claim cannot be forwarded as gRPC metadata: it is not ASCII",
    );
    // Any forwarded claim, not only sub.
    let mut c = claims(ISS, "jose");
    c["email"] = json!("josé@example.com");
    let r = bearer(&s.gw, "/v1/meta", &rsa.sign(&c)).await;
    assert_invalid_token(&r, "the \"email\" claim cannot be forwarded");
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "reached the backend");
    // Claims the route does not forward may hold anything.
    let mut c = claims(ISS, "jose");
    c["name"] = json!("José\n");
    let r = bearer(&s.gw, "/v1/meta", &rsa.sign(&c)).await;
    assert_eq!(r.ok()["metadata"]["x-jwt-sub"], "jose");
}

/// A sub that would write a second access line, with quotes, a `key=value`,
/// CR, an ANSI escape and DEL besides.
const FORGING_SUB: &str = "alice\n2026-01-01T00:00:00.000000Z  INFO access: request request_id=forged http.status=200 jwt.sub=\"root\"\r\u{1b}[2K\u{7f}";

/// Runs the gateway binary with `log_format`, sends one request with a
/// validly signed token whose sub is `FORGING_SUB` and returns the log lines
/// and the request id used.
async fn log_of_a_forging_sub(log_format: &str) -> (Vec<String>, String) {
    let (rsa, _, _) = keys();
    let jwks = Jwks::start(&[rsa], "max-age=300").await;
    let (backend, calls) = counting_backend().await;
    let config = edge_config(
        &format!(
            r#"[telemetry]
log_format = "{log_format}"

[auth.issuers.main]
issuer = "{ISS}"
audiences = ["gateway-tests"]
algorithms = ["RS256"]
jwks_url = "{}"
"#,
            jwks.url
        ),
        r#"
[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
auth = "required"
forward_claims = []
"#,
    );
    let config = gateway_tests::render_config(&config, &backend, &testing_descriptors());
    let gw = LoggingGateway::start(&config).await;
    let request_id = format!("log-injection-{log_format}");
    let r = gateway_tests::http_client()
        .get(gw.url("/v1/echo"))
        .bearer_auth(rsa.sign(&claims(ISS, FORGING_SUB)))
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    (gw.lines_after(&request_id).await, request_id)
}

/// The one line of the request; no other line carries the sub's text.
#[track_caller]
fn only_line_of(lines: &[String], request_id: &str) -> String {
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(request_id)).collect();
    assert_eq!(mine.len(), 1, "lines of the request:\n{}", lines.join("\n"));
    let forged: Vec<&String> = lines.iter().filter(|l| l.contains("forged")).collect();
    assert_eq!(forged, mine, "a forged line:\n{}", lines.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains(['\u{1b}', '\u{7f}', '\r'])),
        "raw control characters in the log:\n{}",
        lines.join("\n")
    );
    mine[0].clone()
}

#[tokio::test]
async fn a_newline_in_a_signed_sub_cannot_forge_a_text_access_log_line() {
    let (lines, request_id) = log_of_a_forging_sub("text").await;
    let line = only_line_of(&lines, &request_id);
    let escaped = r#"jwt.sub="alice\n2026-01-01T00:00:00.000000Z  INFO access: request request_id=forged http.status=200 jwt.sub=\"root\"\r\u{1b}[2K\u{7f}""#;
    assert!(line.contains(escaped), "{line}");
    assert!(
        line.contains(&format!("request_id={request_id} ")),
        "{line}"
    );
}

#[tokio::test]
async fn a_newline_in_a_signed_sub_is_escaped_in_the_json_access_log() {
    let (lines, request_id) = log_of_a_forging_sub("json").await;
    let line = only_line_of(&lines, &request_id);
    let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(fields["request_id"], json!(request_id));
    assert_eq!(
        fields["jwt.sub"],
        json!(
            r#"alice\n2026-01-01T00:00:00.000000Z  INFO access: request request_id=forged http.status=200 jwt.sub="root"\r\u{1b}[2K\u{7f}"#
        ),
        "{line}"
    );
}
