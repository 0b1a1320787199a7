//! Property tests (proptest, stable Rust, run in CI) for the two parsers
//! that see raw client input first: the path-template matcher and JSON to
//! message decoding. The same properties run under libFuzzer from `fuzz/`.
//!
//! - Nothing a client sends makes either panic.
//! - Path variables round-trip: any value, percent-encoded into a path,
//!   comes back out of the matcher as it went in.
//! - Any message encodes to JSON that decodes back to the same message.
//! - A field given twice, under either of its names, is always refused.

use std::path::PathBuf;
use std::sync::OnceLock;

use gateway::routing::{Lookup, Matcher, Template};
use gateway::transcode::request::{decode_body, BodyRule, DecodeOptions};
use proptest::prelude::*;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};

fn everything() -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
        gateway::descriptors::load_dir(&dir)
            .expect("testing descriptors")
            .pool
    })
    .get_message_by_name("testing.v1.Everything")
    .expect("Everything")
}

fn matcher() -> &'static Matcher<usize> {
    static M: OnceLock<Matcher<usize>> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = Matcher::new();
        for (i, t) in [
            "/v1/{a}",
            "/v1/{a}/x/{b=**}",
            "/v1/{name=shelves/*/books/*}:publish",
            "/v1/lit/**/tail",
            "/v1/{a}:verb",
            "/v2/{a.b.c}/{d}",
        ]
        .iter()
        .enumerate()
        {
            let t = Template::parse(t).expect("template");
            m.insert("GET", &t, i).map_err(|_| "conflict").unwrap();
        }
        m
    })
}

/// Percent-encodes everything but unreserved characters (and `/` when asked).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn config() -> ProptestConfig {
    // Debug builds on two cores: enough cases to find shallow bugs in a
    // few seconds; the fuzz targets go deeper.
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn template_parsing_never_panics(s in "\\PC{0,40}") {
        let _ = Template::parse(&s);
    }

    #[test]
    fn template_parsing_of_template_like_text_never_panics(
        s in "(/|\\{|\\}|=|\\*|\\*\\*|:|[a-z]|\\.){0,30}"
    ) {
        if let Ok(t) = Template::parse(&s) {
            let mut m = Matcher::new();
            let _ = m.insert("GET", &t, ());
        }
    }

    #[test]
    fn lookup_of_any_path_never_panics(path in "(/|%|[0-9A-Fa-f]|:|\\.|[a-z]|\\PC){0,60}") {
        let _ = matcher().lookup("GET", &path);
        let _ = matcher().allowed_methods(&path);
    }

    #[test]
    fn single_segment_variables_round_trip(value in "\\PC{1,20}") {
        let path = format!("/v1/{}", encode(&value, false));
        match matcher().lookup("GET", &path) {
            Lookup::Found { value: route, vars } => {
                prop_assert_eq!(*route, 0);
                prop_assert_eq!(vars[0].as_ref(), value.as_str());
            }
            other => prop_assert!(false, "{path}: {other:?}"),
        }
    }

    #[test]
    fn multi_segment_variables_keep_their_slashes(
        a in "[a-z0-9]{1,8}",
        segments in proptest::collection::vec("[a-zA-Z0-9 é%]{1,6}", 1..5),
    ) {
        let b = segments.join("/");
        let path = format!("/v1/{a}/x/{}", segments.iter().map(|s| encode(s, false)).collect::<Vec<_>>().join("/"));
        match matcher().lookup("GET", &path) {
            Lookup::Found { value: route, vars } => {
                prop_assert_eq!(*route, 1);
                prop_assert_eq!(vars[0].as_ref(), a.as_str());
                prop_assert_eq!(vars[1].as_ref(), b.as_str());
            }
            other => prop_assert!(false, "{path}: {other:?}"),
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_body(&everything(), &BodyRule::All, &body, DecodeOptions::default());
    }

    #[test]
    fn decoding_json_like_text_never_panics(
        body in "(\\{|\\}|\\[|\\]|:|,|\"|[a-zA-Z_]{1,12}|-?[0-9]{1,25}|\\.|e|true|null| |\\\\u[0-9a-f]{4}){0,60}"
    ) {
        let _ = decode_body(&everything(), &BodyRule::All, body.as_bytes(), DecodeOptions::default());
    }

    #[test]
    fn messages_round_trip_through_json(
        s in "\\PC{0,20}",
        i in any::<i32>(),
        j in any::<i64>(),
        tags in proptest::collection::vec("\\PC{0,8}", 0..4),
        labels in proptest::collection::btree_map("[a-z_]{1,6}", "\\PC{0,6}", 0..4),
        name in "\\PC{0,10}",
    ) {
        let desc = everything();
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("string_field", Value::String(s));
        m.set_field_by_name("int32_field", Value::I32(i));
        m.set_field_by_name("int64_field", Value::I64(j));
        m.set_field_by_name("tags", Value::List(tags.into_iter().map(Value::String).collect()));
        m.set_field_by_name(
            "labels",
            Value::Map(labels.into_iter().map(|(k, v)| (prost_reflect::MapKey::String(k), Value::String(v))).collect()),
        );
        let mut inner = DynamicMessage::new(desc.get_field_by_name("inner").unwrap().kind().as_message().unwrap().clone());
        inner.set_field_by_name("name", Value::String(name));
        m.set_field_by_name("inner", Value::Message(inner));
        let json = serde_json::to_vec(&m).unwrap();
        let back = decode_body(&desc, &BodyRule::All, &json, DecodeOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        // Compared as JSON: explicitly set defaults and unset fields are
        // the same message on the wire.
        prop_assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
    }

    #[test]
    fn a_field_given_twice_is_always_refused(
        first_json in any::<bool>(),
        second_json in any::<bool>(),
        field in prop::sample::select(vec!["string_field", "int32_field", "bool_field", "inner", "tags", "labels", "choice_text"]),
        others in proptest::collection::vec(prop::sample::select(vec!["double_field", "color", "bytes_field"]), 0..3),
    ) {
        let desc = everything();
        let f = desc.get_field_by_name(field).unwrap();
        let value = match field {
            "string_field" | "choice_text" => "\"x\"",
            "int32_field" => "1",
            "bool_field" => "true",
            "inner" => "{}",
            "tags" => "[]",
            _ => "{}",
        };
        let name = |json: bool| if json { f.json_name().to_owned() } else { f.name().to_owned() };
        let mut members: Vec<String> = others
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|o| format!("\"{o}\": null"))
            .collect();
        members.push(format!("\"{}\": {value}", name(first_json)));
        members.push(format!("\"{}\": {value}", name(second_json)));
        let body = format!("{{{}}}", members.join(", "));
        let err = decode_body(&desc, &BodyRule::All, body.as_bytes(), DecodeOptions::default())
            .expect_err(&body);
        prop_assert!(err.message.contains("given twice"), "{}: {}", body, err.message);
    }
}
