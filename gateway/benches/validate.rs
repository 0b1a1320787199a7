//! What `buf.validate` checking adds to a request: a 1 KiB order with
//! rules on most of its fields (strings with lengths, a pattern and an
//! email, ranges, an enum, ten line items with their own rules, a map),
//! checked on its wire bytes (`check_wire`), beside the JSON -> wire
//! transcoding the same request pays (`json_to_wire`); and the same order
//! with one message-level CEL rule, which decodes the message
//! (`check_wire_with_cel`).
//!
//! Run: `cargo bench -p gateway --bench validate`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::transcode::json_wire::BodyPlan;
use gateway::transcode::request::DecodeOptions;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
package bench.v1;
import "buf/validate/validate.proto";

enum Speed { SPEED_UNSPECIFIED = 0; SLOW = 1; FAST = 2; }

message Line {
  string sku = 1 [(buf.validate.field).string = {min_len: 3, max_len: 16}];
  uint32 qty = 2 [(buf.validate.field).uint32 = {gt: 0, lte: 100}];
  string title = 3 [(buf.validate.field).string.max_len = 80];
  int64 price_cents = 4 [(buf.validate.field).int64.gte = 0];
}

message Address {
  string street = 1 [(buf.validate.field).string.min_len = 1];
  string city = 2 [(buf.validate.field).required = true];
  string zip = 3 [(buf.validate.field).string.pattern = "^[0-9]{5}$"];
  string country = 4 [(buf.validate.field).string = {in: ["FR", "DE", "US", "GB"]}];
}

message Order {
  string id = 1 [(buf.validate.field).string.uuid = true];
  string email = 2 [(buf.validate.field).string.email = true];
  Address address = 3 [(buf.validate.field).required = true];
  repeated Line lines = 4 [(buf.validate.field).repeated = {min_items: 1, max_items: 50}];
  map<string, string> labels = 5 [(buf.validate.field).map.max_pairs = 10];
  Speed speed = 6 [(buf.validate.field).enum.defined_only = true];
  string note = 7 [(buf.validate.field).string.max_len = 200];
}

message OrderWithCel {
  option (buf.validate.message).cel = {
    id: "lines", message: "too many lines", expression: "this.lines.size() <= 50"
  };
  string id = 1 [(buf.validate.field).string.uuid = true];
  string email = 2 [(buf.validate.field).string.email = true];
  Address address = 3 [(buf.validate.field).required = true];
  repeated Line lines = 4;
  map<string, string> labels = 5;
  Speed speed = 6;
  string note = 7;
}
"#;

fn pool() -> DescriptorPool {
    let dir = std::env::temp_dir().join(format!("gateway-validate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bench.proto"), PROTO).unwrap();
    let pool = gateway::descriptors::load_dir(&dir).unwrap().pool;
    let _ = std::fs::remove_dir_all(&dir);
    pool
}

/// About 1 KiB of JSON.
fn order() -> Vec<u8> {
    let lines: Vec<_> = (0..10)
        .map(|i| json!({"sku": format!("SKU-{i:04}"), "qty": i + 1, "title": "A useful thing", "priceCents": "1999"}))
        .collect();
    serde_json::to_vec(&json!({
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "email": "buyer@example.com",
        "address": {"street": "1 rue de Rivoli", "city": "Paris", "zip": "75001", "country": "FR"},
        "lines": lines,
        "labels": {"channel": "web", "campaign": "winter"},
        "speed": "FAST",
        "note": "Leave at the door, please."
    }))
    .unwrap()
}

fn validate(c: &mut Criterion) {
    let pool = pool();
    let json = order();
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Bytes(json.len() as u64));
    for (name, message) in [
        ("check_wire", "bench.v1.Order"),
        ("check_wire_with_cel", "bench.v1.OrderWithCel"),
    ] {
        let desc = pool.get_message_by_name(message).unwrap();
        let mut compiler = gateway::validate::Compiler::new(&pool);
        let validator = compiler.validator(&desc).expect("the order has rules");
        let mut de = serde_json::Deserializer::from_slice(&json);
        let wire = DynamicMessage::deserialize(desc.clone(), &mut de)
            .unwrap()
            .encode_to_vec();
        validator.check(&wire).expect("the order is valid");
        group.bench_function(name, |b| {
            b.iter(|| validator.check(black_box(&wire)).is_ok())
        });
        if name == "check_wire" {
            let plan = BodyPlan::new(&desc, DecodeOptions::default());
            let mut out = Vec::new();
            group.bench_function("json_to_wire", |b| {
                b.iter(|| {
                    out.clear();
                    plan.encode(black_box(&json), &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
