//! Micro benchmarks of the request path's pieces: route matching at 10,
//! 1,000 and 10,000 routes; JSON -> protobuf and protobuf -> JSON for small,
//! medium, large and 1 MiB messages, both on the direct path unary calls
//! take (`json_to_wire`, `wire_to_json`) and on the DynamicMessage path the
//! rest take and the direct path falls back to (`json_to_message`,
//! `message_to_json`); headers -> gRPC metadata; a response-cache hit's key
//! (`cache_key`: the request decoded and encoded again, the key built, the
//! entry looked up).
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

criterion_group!(
    benches,
    matching,
    json_both_ways,
    headers_to_metadata,
    cache_key
);
criterion_main!(benches);
