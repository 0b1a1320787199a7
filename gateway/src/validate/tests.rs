//! The validator on real descriptors: each rule kind, paths, presence,
//! ignore, oneofs, CEL, cycles, compile errors.

use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use super::*;

const PROTO: &str = r#"
syntax = "proto3";
package v;
import "buf/validate/validate.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/timestamp.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }

message Address {
  string zip = 1 [(buf.validate.field).string.pattern = "^[0-9]{5}$"];
  string city = 2 [(buf.validate.field).required = true];
}

message Item {
  string name = 1 [(buf.validate.field).string.min_len = 1];
  uint32 qty = 2 [(buf.validate.field).uint32 = {gt: 0, lte: 100}];
}

message Order {
  string id = 1 [(buf.validate.field).string.uuid = true];
  string email = 2 [(buf.validate.field).string.email = true];
  string note = 3 [(buf.validate.field).string = {max_len: 5}, (buf.validate.field).ignore = IGNORE_IF_ZERO_VALUE];
  int32 score = 4 [(buf.validate.field).int32 = {gt: 10, lt: 5}];
  double ratio = 5 [(buf.validate.field).double = {gte: 0, lte: 1, finite: true}];
  sint64 delta = 6 [(buf.validate.field).sint64 = {in: [-1, 0, 1]}];
  fixed32 code = 7 [(buf.validate.field).fixed32 = {not_in: [13]}];
  bool agreed = 8 [(buf.validate.field).bool.const = true];
  Color color = 9 [(buf.validate.field).enum = {defined_only: true, not_in: [0]}];
  bytes token = 10 [(buf.validate.field).bytes = {min_len: 2, prefix: "\x01"}];
  Address address = 11 [(buf.validate.field).required = true];
  repeated Item items = 12 [(buf.validate.field).repeated = {min_items: 1, max_items: 3}];
  repeated string tags = 13 [(buf.validate.field).repeated = {unique: true, items: {string: {max_len: 3}}}];
  map<string, int32> labels = 14 [(buf.validate.field).map = {max_pairs: 2, keys: {string: {min_len: 2}}, values: {int32: {gte: 0}}}];
  optional string nick = 15 [(buf.validate.field).string.min_len = 3];
  oneof contact {
    option (buf.validate.oneof).required = true;
    string phone = 16;
    string fax = 17;
  }
  google.protobuf.Duration ttl = 18 [(buf.validate.field).duration = {gt: {seconds: 0}, lte: {seconds: 60}}];
  google.protobuf.Timestamp due = 19 [(buf.validate.field).timestamp.gt_now = true];
  repeated int64 nums = 20 [(buf.validate.field).repeated.items.int64.lt = 10];
  string host = 21 [(buf.validate.field).string.hostname = true, (buf.validate.field).ignore = IGNORE_IF_ZERO_VALUE];
  string skipped = 22 [(buf.validate.field).string.min_len = 100, (buf.validate.field).ignore = IGNORE_ALWAYS];
}

message Node {
  string name = 1 [(buf.validate.field).string.min_len = 1];
  repeated Node children = 2;
}

message Plain { string name = 1; Plain next = 2; }

message Cel {
  option (buf.validate.message).cel = {
    id: "range",
    message: "min must not exceed max",
    expression: "this.min <= this.max"
  };
  option (buf.validate.message).oneof = {fields: ["a", "b"], required: true};
  int32 min = 1;
  int32 max = 2;
  string name = 3 [(buf.validate.field).cel = {
    id: "name.underscore",
    expression: "this.startsWith('_') ? 'name must not start with _' : ''"
  }];
  repeated string emails = 4 [(buf.validate.field).repeated.items.cel = {
    id: "email", message: "must be an email", expression: "this.isEmail()"
  }];
  string a = 5;
  string b = 6;
}
"#;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn with(files: &[(&str, &str)]) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gateway-validate-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        for (name, text) in files {
            std::fs::write(path.join(name), text).unwrap();
        }
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pool(proto: &str) -> DescriptorPool {
    let dir = TempDir::with(&[("v.proto", proto)]);
    crate::descriptors::load_dir(&dir.0).unwrap().pool
}

fn validator(pool: &DescriptorPool, name: &str) -> Option<Arc<Validator>> {
    let mut c = Compiler::new(pool);
    let v = c.validator(&pool.get_message_by_name(name).unwrap());
    assert!(c.take_errors().is_empty());
    v
}

fn wire(pool: &DescriptorPool, name: &str, json: &str) -> Vec<u8> {
    let desc = pool.get_message_by_name(name).unwrap();
    let mut de = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(desc, &mut de)
        .unwrap()
        .encode_to_vec()
}

/// The violations as `field: description` lines.
fn check(pool: &DescriptorPool, name: &str, json: &str) -> Vec<String> {
    let v = validator(pool, name).expect("the message has rules");
    match v.check(&wire(pool, name, json)) {
        Ok(()) => Vec::new(),
        Err(vs) => vs
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect(),
    }
}

const GOOD_ORDER: &str = r#"{
  "id": "123e4567-e89b-12d3-a456-426614174000",
  "email": "a@example.com",
  "score": 11,
  "ratio": 0.5,
  "delta": "1",
  "code": 7,
  "agreed": true,
  "color": "RED",
  "token": "AQI=",
  "address": {"zip": "12345", "city": "Paris"},
  "items": [{"name": "x", "qty": 1}],
  "tags": ["a", "b"],
  "labels": {"ab": 1},
  "phone": "555",
  "ttl": "30s",
  "due": "2999-01-01T00:00:00Z",
  "nums": ["1", "2"]
}"#;

#[test]
fn a_valid_message_passes() {
    let pool = pool(PROTO);
    assert_eq!(check(&pool, "v.Order", GOOD_ORDER), Vec::<String>::new());
}

#[test]
fn every_violation_is_listed_with_its_path() {
    let pool = pool(PROTO);
    let bad = r#"{
      "id": "nope",
      "email": "not-an-email",
      "note": "too long",
      "score": 7,
      "ratio": 1.5,
      "delta": "5",
      "code": 13,
      "agreed": false,
      "color": 7,
      "token": "Ag==",
      "address": {"zip": "1234"},
      "items": [{"name": "ok", "qty": 1}, {"name": "", "qty": 0}, {"name": "c", "qty": 1}, {"name": "d", "qty": 1}],
      "tags": ["a", "a", "long"],
      "labels": {"k": -1, "ok": 1, "zz": 2},
      "nick": "ab",
      "ttl": "0s",
      "due": "2000-01-01T00:00:00Z",
      "nums": ["1", "20"],
      "host": "bad_host"
    }"#;
    let got = check(&pool, "v.Order", bad);
    let want = [
        "items[1].name: value length must be at least 1 characters",
        "items[1].qty: value must be greater than 0 and less than or equal to 100",
        "tags[2]: value length must be at most 3 characters",
        "labels[\"k\"]: value length must be at least 2 characters",
        "labels[\"k\"]: value must be greater than or equal to 0",
        "nums[1]: value must be less than 10",
        "id: value must be a valid UUID",
        "email: value must be a valid email address",
        "note: value length must be at most 5 characters",
        "score: value must be greater than 10 or less than 5",
        "ratio: value must be greater than or equal to 0 and less than or equal to 1",
        "delta: value must be in list [-1, 0, 1]",
        "code: value must not be in list [13]",
        "agreed: value must equal true",
        "color: value must be one of the defined enum values",
        "token: value does not have prefix 0x01",
        "token: value length must be at least 2 bytes",
        "address.zip: value does not match regex pattern `^[0-9]{5}$`",
        "address.city: value is required",
        "items: value must contain no more than 3 item(s)",
        "tags: repeated value must contain unique items",
        "labels: map must be at most 2 entries",
        "nick: value length must be at least 3 characters",
        "ttl: value must be greater than 0s and less than or equal to 60s",
        "due: value must be greater than now",
        "host: value must be a valid hostname",
        "contact: exactly one field is required in oneof",
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "got {got:#?}");
}

#[test]
fn implicit_fields_left_out_are_checked_as_zero_values() {
    let pool = pool(PROTO);
    // Everything left out: the implicit fields' zero values break their
    // rules, fields with presence only `required`.
    let got = check(&pool, "v.Order", "{}");
    for want in [
        "id: value must be a valid UUID",
        "agreed: value must equal true",
        "color: value must not be in list [0]",
        "address: value is required",
        "items: value must contain at least 1 item(s)",
        "contact: exactly one field is required in oneof",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "{want} missing from {got:#?}"
        );
    }
    // Ignored when zero, unset with presence, or ignored always.
    for field in ["note:", "nick:", "host:", "skipped:", "ttl:", "due:"] {
        assert!(
            !got.iter().any(|g| g.starts_with(field)),
            "{field} in {got:#?}"
        );
    }
}

#[test]
fn recursive_messages_are_checked_at_every_depth() {
    let pool = pool(PROTO);
    let got = check(
        &pool,
        "v.Node",
        r#"{"name": "a", "children": [{"name": "b", "children": [{"name": ""}]}]}"#,
    );
    assert_eq!(
        got,
        ["children[0].children[0].name: value length must be at least 1 characters"]
    );
}

#[test]
fn messages_without_rules_get_no_validator() {
    let pool = pool(PROTO);
    assert!(validator(&pool, "v.Plain").is_none());
    // A pool without validate.proto: no compiler work at all.
    let plain = pool_plain();
    let mut c = Compiler::new(&plain);
    assert!(c
        .validator(&plain.get_message_by_name("p.P").unwrap())
        .is_none());
}

fn pool_plain() -> DescriptorPool {
    let dir = TempDir::with(&[(
        "p.proto",
        "syntax = \"proto3\";\npackage p;\nmessage P { string a = 1; }\n",
    )]);
    crate::descriptors::load_dir(&dir.0).unwrap().pool
}

#[test]
fn cel_rules_at_field_element_and_message_level() {
    let pool = pool(PROTO);
    assert_eq!(
        check(
            &pool,
            "v.Cel",
            r#"{"min": 1, "max": 2, "name": "ok", "emails": ["a@b.c"], "a": "x"}"#
        ),
        Vec::<String>::new()
    );
    let mut got = check(
        &pool,
        "v.Cel",
        r#"{"min": 3, "max": 2, "name": "_x", "emails": ["a@b.c", "nope"], "a": "x", "b": "y"}"#,
    );
    got.sort();
    assert_eq!(
        got,
        [
            ": min must not exceed max",
            ": only one of a, b can be set",
            "emails[1]: must be an email",
            "name: name must not start with _",
        ]
    );
    assert_eq!(
        check(&pool, "v.Cel", r#"{}"#),
        [": one of a, b must be set"]
    );
}

#[test]
fn bad_regex_and_cel_are_errors_naming_message_field_and_rule() {
    let proto = r#"
syntax = "proto3";
package v;
import "buf/validate/validate.proto";
message M {
  string a = 1 [(buf.validate.field).string.pattern = "(unclosed"];
  string b = 2 [(buf.validate.field).cel = {id: "x", expression: "this >"}];
  int32 c = 3 [(buf.validate.field).string.min_len = 1];
}
"#;
    let pool = pool(proto);
    let mut c = Compiler::new(&pool);
    assert!(c
        .validator(&pool.get_message_by_name("v.M").unwrap())
        .is_none());
    let errors: Vec<String> = c.take_errors().into_iter().map(|p| p.text).collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with(
        "v.M field a: (buf.validate.field).string.pattern: regex \"(unclosed\" does not compile"
    ));
    assert!(errors[1].starts_with(
        "v.M field b: (buf.validate.field).cel[id \"x\"]: expression \"this >\" does not compile"
    ));
    assert_eq!(
        errors[2],
        "v.M field c: (buf.validate.field).string: string rules on a field of type int32"
    );
}

#[test]
fn proto_input_with_packed_lists_and_unknown_fields() {
    let pool = pool(PROTO);
    let v = validator(&pool, "v.Order").unwrap();
    let mut bytes = wire(&pool, "v.Order", GOOD_ORDER);
    // An unknown field (number 99, a varint) is skipped.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    assert!(v.check(&bytes).is_ok());
    // Truncated bytes are refused.
    let cut = &bytes[..bytes.len() - 2];
    assert!(v.check(cut).is_err());
}

#[test]
fn violations_are_capped() {
    let pool = pool(PROTO);
    let items: Vec<String> = (0..150).map(|_| "\"toolong\"".to_owned()).collect();
    let json = format!(r#"{{"tags": [{}]}}"#, items.join(","));
    let v = validator(&pool, "v.Order").unwrap();
    let err = v.check(&wire(&pool, "v.Order", &json)).unwrap_err();
    assert_eq!(err.len(), MAX_VIOLATIONS + 1);
    assert!(err[MAX_VIOLATIONS].description.contains("more violations"));
}

#[test]
fn signed_and_fixed_values_and_integer_map_keys_read_from_the_wire() {
    let proto = r#"
syntax = "proto3";
package v;
import "buf/validate/validate.proto";
message M {
  sint32 s = 1 [(buf.validate.field).sint32.gte = -5];
  sfixed64 f = 2 [(buf.validate.field).sfixed64.lt = 0];
  float x = 3 [(buf.validate.field).float = {gt: 0.5}];
  map<int32, string> byId = 4 [(buf.validate.field).map.values.string.min_len = 2];
  repeated int32 odd = 5 [(buf.validate.field).repeated.items = {int32: {in: [1, 3]}, ignore: IGNORE_IF_ZERO_VALUE}];
}
"#;
    let pool = pool(proto);
    assert_eq!(
        check(
            &pool,
            "v.M",
            r#"{"s": -5, "f": "-1", "x": 0.75, "byId": {"-7": "ab"}, "odd": [1, 0, 3]}"#
        ),
        Vec::<String>::new()
    );
    let mut got = check(
        &pool,
        "v.M",
        r#"{"s": -6, "f": "1", "x": 0.25, "byId": {"-7": "a"}, "odd": [2]}"#,
    );
    got.sort();
    assert_eq!(
        got,
        [
            "byId[-7]: value length must be at least 2 characters",
            "f: value must be less than 0",
            "odd[0]: value must be in list [1, 3]",
            "s: value must be greater than or equal to -5",
            "x: value must be greater than 0.5",
        ]
    );
}

#[test]
fn proto2_groups_are_skipped_whole() {
    let pool = pool(PROTO);
    let v = validator(&pool, "v.Node").unwrap();
    // A group (field 9) holding a varint, then name = "" (field 1).
    let bytes = [0x4b, 0x08, 0x01, 0x4c, 0x0a, 0x00];
    let err = v.check(&bytes).unwrap_err();
    assert_eq!(err[0].field, "name");
    // A group never closed is not protobuf.
    assert!(v.check(&[0x4b, 0x08, 0x01]).is_err());
}

#[test]
fn rules_not_checked_here_are_warnings_not_errors() {
    let proto = r#"
syntax = "proto3";
package v;
import "buf/validate/validate.proto";
import "google/protobuf/any.proto";
message M {
  string a = 1 [(buf.validate.field).string.ip_prefix = true];
  google.protobuf.Any b = 2 [(buf.validate.field).any.in = "type.googleapis.com/x"];
  string c = 3 [(buf.validate.field).string.min_len = 1];
  string d = 4 [(buf.validate.field).string.(short) = true];
}
extend buf.validate.StringRules {
  optional bool short = 80048952 [(buf.validate.predefined).cel = {
    id: "short", expression: "this.size() < 5"
  }];
}
"#;
    let pool = pool(proto);
    let mut c = Compiler::new(&pool);
    assert!(c
        .validator(&pool.get_message_by_name("v.M").unwrap())
        .is_some());
    assert!(c.take_errors().is_empty());
    let warnings: Vec<String> = c.take_warnings().into_iter().map(|p| p.text).collect();
    assert_eq!(
        warnings,
        [
            "v.M field a: (buf.validate.field).string.ip_prefix: is not checked by the gateway",
            "v.M field b: (buf.validate.field).any: rules on google.protobuf.Any are not checked by the gateway",
            "v.M field d: (buf.validate.field).string.(v.short): predefined rules are not checked by the gateway",
        ]
    );
}
