//! Micro benchmarks of the request path's pieces: route matching at 10,
//! 1,000 and 10,000 routes; JSON -> protobuf and protobuf -> JSON for small,
//! medium, large and 1 MiB messages, both on the direct path unary calls
//! take (`json_to_wire`, `wire_to_json`) and on the DynamicMessage path the
//! rest take and the direct path falls back to (`json_to_message`,
//! `message_to_json`); headers -> gRPC metadata; a response-cache hit's key
//! (`cache_key`: the request decoded and encoded again, the key built, the
//! entry looked up); a bearer token's check (`jwt`: RS256 and ES256 tokens
//! verified in full, and found again in the verified-token cache).
//!
//! Run: `cargo bench -p gateway --bench hotpath` (add a filter, e.g. `-- match`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::routing::{Lookup, Matcher, Template};
use gateway::transcode::encode_reply;
use gateway::transcode::json_wire::BodyPlan;
use gateway::transcode::request::{decode_body, BodyRule, DecodeOptions};
use gateway::transcode::wire_json::{JsonStyle, ReplyPlan};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::json;

const BENCH_PROTO: &str = include_str!("../../tests/fixtures/bench/bench.proto");

fn pool() -> DescriptorPool {
    let dir = std::env::temp_dir().join(format!("gateway-hotpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bench.proto"), BENCH_PROTO).unwrap();
    let pool = gateway::descriptors::load_dir(&dir).unwrap().pool;
    let _ = std::fs::remove_dir_all(&dir);
    pool
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    for n in [10usize, 1_000, 10_000] {
        let mut m: Matcher<usize> = Matcher::new();
        for i in 0..n {
            let t =
                Template::parse(&format!("/v1/area{}/items{}/{{id}}", i / 100, i % 100)).unwrap();
            m.insert("GET", &t, i).unwrap();
        }
        // A route in the middle of the table, with one variable to decode.
        let path = format!("/v1/area{}/items{}/12345", (n / 2) / 100, (n / 2) % 100);
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| match m.lookup("GET", black_box(path)) {
                Lookup::Found { value, vars } => {
                    black_box((value, vars));
                }
                _ => panic!("route not found"),
            })
        });
    }
    group.finish();
}

/// A request body of about `target` bytes: an item plus copies of it
/// (sized arithmetically: serialising a growing body to measure it would be
/// quadratic and dominate the benchmark's set-up).
fn body(item: &serde_json::Value, target: usize) -> Vec<u8> {
    let one = serde_json::to_vec(item).unwrap().len() + 1;
    let n = target.saturating_sub(one + 20) / one;
    let extra = vec![item.clone(); n];
    serde_json::to_vec(&json!({"item": item, "extra": extra})).unwrap()
}

fn json_both_ways(c: &mut Criterion) {
    let pool = pool();
    let req: MessageDescriptor = pool
        .get_message_by_name("bench.v1.CreateItemRequest")
        .unwrap();
    let item = json!({
        "id": "7", "name": "Widget", "description": "A small widget used to measure the gateway",
        "quantity": 42, "price": 9.99, "active": true, "tags": ["blue", "small", "sale"],
        "state": "ACTIVE", "created": "2026-11-21T10:00:00Z", "labels": {"team": "edge", "tier": "gold"},
    });
    let opts = DecodeOptions::default();
    let ser = SerializeOptions::new();
    let mut decode = c.benchmark_group("json_to_message");
    let sizes = [
        ("small", 300usize),
        ("medium", 4 * 1024),
        ("large", 64 * 1024),
        ("1MiB", 1024 * 1024),
    ];
    for (name, size) in sizes {
        let bytes = body(&item, size);
        decode.throughput(Throughput::Bytes(bytes.len() as u64));
        decode.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            b.iter(|| black_box(decode_body(&req, &BodyRule::All, black_box(bytes), opts).unwrap()))
        });
    }
    decode.finish();
    let mut encode = c.benchmark_group("message_to_json");
    for (name, size) in sizes {
        let bytes = body(&item, size);
        let msg: DynamicMessage = decode_body(&req, &BodyRule::All, &bytes, opts).unwrap();
        encode.throughput(Throughput::Bytes(bytes.len() as u64));
        encode.bench_with_input(BenchmarkId::from_parameter(name), &msg, |b, msg| {
            b.iter(|| black_box(encode_reply(black_box(msg), None, &ser).unwrap()))
        });
    }
    encode.finish();

    let body_plan = BodyPlan::new(&req, opts);
    let mut to_wire = c.benchmark_group("json_to_wire");
    for (name, size) in sizes {
        let bytes = body(&item, size);
        to_wire.throughput(Throughput::Bytes(bytes.len() as u64));
        to_wire.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                body_plan.encode(black_box(bytes), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    to_wire.finish();
    let reply_plan = ReplyPlan::new(&req, JsonStyle::default());
    let mut to_json = c.benchmark_group("wire_to_json");
    for (name, size) in sizes {
        let bytes = body(&item, size);
        let wire = prost::Message::encode_to_vec(
            &decode_body(&req, &BodyRule::All, &bytes, opts).unwrap(),
        );
        // Throughput in JSON bytes, as the other groups count it.
        to_json.throughput(Throughput::Bytes(bytes.len() as u64));
        to_json.bench_with_input(BenchmarkId::from_parameter(name), &wire, |b, wire| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                reply_plan.write(black_box(wire), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    to_json.finish();
}

fn headers_to_metadata(c: &mut Criterion) {
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("x-request-id", "0f8e2a55-8c1e-4e62-a3c1-6b1d0b8c9e11"),
        ("grpc-metadata-tenant", "acme"),
        ("grpc-metadata-trace-tag", "bench"),
        ("authorization", "Bearer abc.def.ghi"),
        ("accept-encoding", "gzip"),
    ] {
        headers.insert(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    let forward = [http::HeaderName::from_static("x-request-id")];
    c.bench_function("headers_to_metadata", |b| {
        b.iter(|| {
            black_box(gateway::transcode::metadata::metadata_from_headers(
                black_box(&headers),
                &forward,
            ))
        })
    });
}

/// What a cache hit costs besides transcoding the request: the message
/// made canonical (decoded and encoded again), the key, the lookup.
fn cache_key(c: &mut Criterion) {
    use gateway::cache::{canonical, Entry, Key, Store, Varied};
    let pool = pool();
    let req = pool.get_message_by_name("bench.v1.GetItemRequest").unwrap();
    let mut msg = DynamicMessage::new(req.clone());
    msg.set_field_by_name("id", prost_reflect::Value::I64(12345));
    let wire = bytes::Bytes::from(prost::Message::encode_to_vec(&msg));
    let store = Store::new(1 << 20);
    let varied = Varied::of(&[], &http::HeaderMap::new());
    let body = bytes::Bytes::from_static(br#"{"id":"12345","name":"item"}"#);
    store.insert(
        Key::new(0, &canonical(&req, &wire), &varied.0),
        std::sync::Arc::new(Entry {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            etag: gateway::cache::conditional::etag(&body),
            body,
            stored: std::time::Instant::now(),
            fresh_for: std::time::Duration::from_secs(3600),
            keep_for: std::time::Duration::from_secs(3600),
        }),
    );
    c.bench_function("cache_key/canonical", |b| {
        b.iter(|| black_box(canonical(&req, black_box(&wire))))
    });
    c.bench_function("cache_key/hit", |b| {
        b.iter(|| {
            let key = Key::new(0, &canonical(&req, black_box(&wire)), &varied.0);
            black_box(store.get(&key).is_some())
        })
    });
}

/// An RS256 or ES256 key pair made here: the token signer, and the JWKS
/// document of its public half.
fn jwt_key(alg: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pem = |der: &[u8]| {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    };
    if alg == "RS256" {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = kp.as_der().unwrap();
        let public = kp.public_key();
        let jwk = json!({"kty": "RSA", "alg": "RS256", "kid": "k",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())});
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem(pkcs8.as_ref()).as_bytes()).unwrap();
        (key, jwk)
    } else {
        let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let pkcs8 = kp.to_pkcs8v1().unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "alg": "ES256", "crv": "P-256", "kid": "k",
            "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem(pkcs8.as_ref()).as_bytes()).unwrap();
        (key, jwk)
    }
}

/// A bearer token's check on a route, as the authentication layer makes
/// it: in full (decoding, issuer, signature, claims), and as a hit of the
/// verified-token cache.
fn jwt(c: &mut Criterion) {
    use futures_util::FutureExt as _;
    use gateway::edge::jwt::{verify, Auth, Issuer, RouteAuth, DEFAULT_MAX_TOKEN_BYTES};
    use gateway::edge::token_cache::{TokenCache, DEFAULT_MAX_LIFETIME};
    let mut group = c.benchmark_group("jwt");
    for name in ["RS256", "ES256"] {
        let (signer, jwk) = jwt_key(name);
        let alg: jsonwebtoken::Algorithm = name.parse().unwrap();
        let keys = gateway::edge::jwks::parse_jwks(json!({ "keys": [jwk] }).to_string().as_bytes())
            .unwrap();
        let auth = |max_entries| Auth {
            issuers: vec![std::sync::Arc::new(Issuer::new(
                "corp".into(),
                "https://login.example.com/".into(),
                vec![alg],
                vec!["bookstore-api".into()],
                60,
                keys.clone(),
                None,
            ))],
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            token_cache: TokenCache::new(max_entries, DEFAULT_MAX_LIFETIME),
            ..Default::default()
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        // A typical access token: a few registered claims, scopes, a tenant.
        let claims = json!({"iss": "https://login.example.com/", "aud": "bookstore-api",
            "sub": "user-1234567890", "exp": exp, "iat": exp - 3600,
            "scope": "shelves.read shelves.write books.read", "tenant": "eu",
            "email": "someone@example.com", "jti": "b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"});
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("k".into());
        let token = jsonwebtoken::encode(&header, &claims, &signer).unwrap();
        let route = RouteAuth::default();
        // Nothing here awaits (no JWKS to fetch): one poll finishes it.
        let check = |auth: &Auth| {
            verify(auth, &route, black_box(&token))
                .now_or_never()
                .expect("no await without a JWKS")
                .expect("the token verifies")
        };
        let uncached = auth(0);
        group.bench_function(BenchmarkId::new("full", name), |b| {
            b.iter(|| black_box(check(&uncached)))
        });
        let cached = auth(10_000);
        check(&cached);
        group.bench_function(BenchmarkId::new("cached", name), |b| {
            b.iter(|| black_box(check(&cached)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    matching,
    json_both_ways,
    headers_to_metadata,
    cache_key,
    jwt
);
criterion_main!(benches);
