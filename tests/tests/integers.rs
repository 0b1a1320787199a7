//! JSON integers against their field's range: a value outside it, or not a
//! whole number, is refused with a 400 naming the field, in every position
//! (singular, repeated, map value, map key, wrapper) and every form (number,
//! string, with a fraction or an exponent); a value inside it reaches the
//! backend exactly. Nothing is clamped or rounded.

use gateway_tests::{echo_config, TestGateway};
use serde_json::Value;

/// The routes of `testing.v1.Integers`: the whole body, and bodies that are
/// one repeated, map or wrapper field (read through a different path).
const ROUTES: &str = r#"
[[routes]]
method = "POST"
path = "/v1/integers"
grpc = "testing.v1.Echo/EchoIntegers"
body = "*"

[[routes]]
method = "POST"
path = "/v1/integers/int64-list"
grpc = "testing.v1.Echo/EchoIntegers"
body = "int64_list"

[[routes]]
method = "POST"
path = "/v1/integers/uint32-map"
grpc = "testing.v1.Echo/EchoIntegers"
body = "uint32_map"

[[routes]]
method = "POST"
path = "/v1/integers/uint64-wrapper"
grpc = "testing.v1.Echo/EchoIntegers"
body = "uint64_wrapper"
"#;

async fn gateway() -> TestGateway {
    TestGateway::start(&format!("{}{ROUTES}", echo_config(""))).await
}

/// Each integer type: its name (the fields are `<type>_field`, ...) and range.
const TYPES: &[(&str, i128, i128)] = &[
    ("int32", i32::MIN as i128, i32::MAX as i128),
    ("sint32", i32::MIN as i128, i32::MAX as i128),
    ("sfixed32", i32::MIN as i128, i32::MAX as i128),
    ("uint32", 0, u32::MAX as i128),
    ("fixed32", 0, u32::MAX as i128),
    ("int64", i64::MIN as i128, i64::MAX as i128),
    ("sint64", i64::MIN as i128, i64::MAX as i128),
    ("sfixed64", i64::MIN as i128, i64::MAX as i128),
    ("uint64", 0, u64::MAX as i128),
    ("fixed64", 0, u64::MAX as i128),
];

/// `n` as JSON texts a client may send: a number, a string, with `.0`, and
/// in two exponent forms.
fn forms(n: i128) -> Vec<String> {
    let sign = if n < 0 { "-" } else { "" };
    let digits = n.unsigned_abs().to_string();
    vec![
        n.to_string(),
        format!("\"{n}\""),
        format!("{n}.0"),
        format!(
            "{sign}{}.{}e{}",
            &digits[..1],
            &digits[1..],
            digits.len() - 1
        )
        .replace(".e", "e"),
        format!("{sign}0.{digits}e{}", digits.len()),
    ]
}

/// The JSON names of a type's fields in each position, and the body that
/// puts `v` there.
fn placements(ty: &str, v: &str) -> Vec<(String, String)> {
    let camel = |pos: &str| format!("{ty}{pos}");
    vec![
        (camel("Field"), format!(r#"{{"{}": {v}}}"#, camel("Field"))),
        (
            camel("List"),
            format!(r#"{{"{}": [1, {v}]}}"#, camel("List")),
        ),
        (
            camel("Map"),
            format!(r#"{{"{}": {{"a": {v}}}}}"#, camel("Map")),
        ),
    ]
}

/// The wrapper fields of a type, when it has them.
fn wrappers(ty: &str, v: &str) -> Vec<(String, String)> {
    if !matches!(ty, "int32" | "uint32" | "int64" | "uint64") {
        return Vec::new();
    }
    vec![
        (format!("{ty}Wrapper"), format!(r#"{{"{ty}Wrapper": {v}}}"#)),
        (
            format!("{ty}Wrappers"),
            format!(r#"{{"{ty}Wrappers": [{v}]}}"#),
        ),
    ]
}

/// Every mishandled request, described.
async fn refusals(gw: &TestGateway, cases: &[(String, String, String)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (field, body, wanted) in cases {
        let r = gw
            .send_raw_json("POST", "/v1/integers", body.as_bytes())
            .await;
        let message = r.message();
        if r.status != 400
            || gateway_tests::check_error_body(&r.json, 3, wanted).is_err()
            || !message.contains(field.as_str())
        {
            failures.push(format!(
                "{body}: HTTP {} {}: wanted 400 naming {field:?} and saying {wanted:?}",
                r.status, r.text
            ));
        }
    }
    failures
}

#[tokio::test]
async fn json_integers_outside_their_fields_range_are_refused_naming_the_field() {
    let gw = gateway().await;
    let mut cases = Vec::new();
    for &(ty, min, max) in TYPES {
        for n in [min - 1, max + 1] {
            for v in forms(n) {
                let wanted = format!("out of range for {ty}");
                for (field, body) in placements(ty, &v).into_iter().chain(wrappers(ty, &v)) {
                    cases.push((field, body, wanted.clone()));
                }
            }
        }
    }
    // Far out of range, and past what a 64-bit float holds exactly.
    for v in [
        "1e400",
        "-1e400",
        "18446744073709551616",
        "36893488147419103232.0",
    ] {
        cases.push((
            "uint64Field".into(),
            format!(r#"{{"uint64Field": {v}}}"#),
            "out of range for uint64".into(),
        ));
        cases.push((
            "int64Map".into(),
            format!(r#"{{"int64Map": {{"k": {v}}}}}"#),
            "out of range for int64".into(),
        ));
    }
    let failures = refusals(&gw, &cases).await;
    assert!(
        failures.is_empty(),
        "{} of {} out-of-range values were not refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn json_numbers_that_are_not_whole_are_refused_for_integer_fields() {
    let gw = gateway().await;
    let mut cases = Vec::new();
    // The last two round to whole numbers as 64-bit floats.
    for v in [
        "1.5",
        "-0.5",
        "1e-1",
        "1.0000000000000000001",
        "9223372036854775806.5",
    ] {
        for &(ty, _, _) in TYPES {
            for (field, body) in placements(ty, v).into_iter().chain(wrappers(ty, v)) {
                cases.push((field, body, format!("is not a valid {ty}")));
            }
        }
    }
    let failures = refusals(&gw, &cases).await;
    assert!(
        failures.is_empty(),
        "{} of {} fractional values were not refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn map_keys_outside_their_types_range_are_refused_naming_the_field() {
    let gw = gateway().await;
    let mut failures = Vec::new();
    for &(ty, min, max) in TYPES {
        for n in [min - 1, max + 1] {
            let field = format!("{ty}Key");
            let body = format!(r#"{{"{field}": {{"{n}": "x"}}}}"#);
            let r = gw
                .send_raw_json("POST", "/v1/integers", body.as_bytes())
                .await;
            let wanted = format!("out of range for {ty}");
            if r.status != 400 || !r.message().contains(&field) || !r.message().contains(&wanted) {
                failures.push(format!("{body}: HTTP {} {}", r.status, r.text));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn out_of_range_message_names_the_field_the_value_and_the_range() {
    let gw = gateway().await;
    let r = gw
        .send_raw_json(
            "POST",
            "/v1/integers",
            br#"{"int64Field": 9223372036854775808.0}"#,
        )
        .await;
    r.assert_error(400, 3, "int64Field");
    assert_eq!(
        r.message(),
        "invalid JSON body at \"int64Field\": 9223372036854775808.0 is out of range for int64 \
         (-9223372036854775808 to 9223372036854775807) at line 1 column 37"
    );
    // A megabyte of digits is not sent back.
    let long = format!(r#"{{"uint32Field": {}}}"#, "9".repeat(1 << 20));
    let r = gw
        .send_raw_json("POST", "/v1/integers", long.as_bytes())
        .await;
    r.assert_error(400, 3, "uint32Field");
    assert!(r.message().len() < 300, "{}", r.message());
}

/// The echoed value of a field as an exact integer (64-bit values come
/// back as strings, as proto3 JSON writes them).
fn echoed(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
        _ => None,
    }
}

#[tokio::test]
async fn json_integers_at_their_limits_reach_the_backend_exactly() {
    let gw = gateway().await;
    let mut failures = Vec::new();
    for &(ty, min, max) in TYPES {
        // Next to the limits too: as 64-bit floats these round to the limits.
        for n in [min, max, min + 1, max - 1, min + 2, max - 2] {
            for v in forms(n) {
                let field = format!("{ty}Field");
                let body = format!(r#"{{"{field}": {v}}}"#);
                let r = gw
                    .send_raw_json("POST", "/v1/integers", body.as_bytes())
                    .await;
                // A default value is not echoed.
                let got = if r.status == 200 {
                    r.json.get(&field).map_or(Some(0), echoed)
                } else {
                    None
                };
                if got != Some(n) {
                    failures.push(format!("{body}: HTTP {} {}", r.status, r.text));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn whole_body_fields_of_integers_are_range_checked_too() {
    let gw = gateway().await;
    gw.send_raw_json(
        "POST",
        "/v1/integers/int64-list",
        b"[1, 9223372036854775808.0]",
    )
    .await
    .assert_error(400, 3, "out of range for int64");
    gw.send_raw_json("POST", "/v1/integers/uint32-map", br#"{"a": 4294967296}"#)
        .await
        .assert_error(400, 3, "out of range for uint32");
    gw.send_raw_json(
        "POST",
        "/v1/integers/uint64-wrapper",
        b"18446744073709551616",
    )
    .await
    .assert_error(400, 3, "out of range for uint64");
    for (path, body) in [
        ("/v1/integers/int64-list", "[1, 9223372036854775808.0]"),
        ("/v1/integers/uint32-map", r#"{"a": 4294967296}"#),
    ] {
        let r = gw.send_raw_json("POST", path, body.as_bytes()).await;
        let field = path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .replace('-', "_");
        assert!(r.message().contains(&field), "{path}: {}", r.text);
    }
    let r = gw
        .send_raw_json(
            "POST",
            "/v1/integers/int64-list",
            b"[9223372036854775806.0, -1e18]",
        )
        .await;
    assert_eq!(
        r.ok()["int64List"],
        serde_json::json!(["9223372036854775806", "-1000000000000000000"])
    );
}

#[tokio::test]
async fn integers_inside_an_any_are_range_checked_after_its_type() {
    let gw = gateway().await;
    let body =
        |payload: &str| format!(r#"{{"anyField": {{"@type": "type.googleapis.com/{payload}}}}}"#);
    gw.send_raw_json(
        "POST",
        "/v1/echo",
        body(r#"testing.v1.Integers", "int64Field": 9223372036854775808.0"#).as_bytes(),
    )
    .await
    .assert_error(400, 3, "out of range for int64");
    gw.send_raw_json(
        "POST",
        "/v1/echo",
        body(r#"google.protobuf.UInt64Value", "value": 18446744073709551616"#).as_bytes(),
    )
    .await
    .assert_error(400, 3, "out of range for uint64");
    let r = gw
        .send_raw_json(
            "POST",
            "/v1/echo",
            body(r#"testing.v1.Integers", "int64Field": 9223372036854775806.0"#).as_bytes(),
        )
        .await;
    assert_eq!(r.ok()["anyField"]["int64Field"], "9223372036854775806");
}

#[tokio::test]
async fn integers_before_an_anys_type_are_range_checked_too() {
    let gw = gateway().await;
    let body = |members: &str| format!(r#"{{"anyField": {{{members}}}}}"#);
    let integers = r#""@type": "type.googleapis.com/testing.v1.Integers""#;
    // Members before "@type" were kept as untyped floats and clamped.
    for (member, expect) in [
        (
            r#""int64Field": 9223372036854775808.0"#,
            "out of range for int64",
        ),
        (
            r#""uint64Field": 18446744073709551616"#,
            "out of range for uint64",
        ),
        (r#""int32Field": 1.5"#, "not a whole number"),
    ] {
        gw.send_raw_json(
            "POST",
            "/v1/echo",
            body(&format!("{member}, {integers}")).as_bytes(),
        )
        .await
        .assert_error(400, 3, expect);
    }
    let r = gw
        .send_raw_json(
            "POST",
            "/v1/echo",
            body(&format!(
                r#""int64Field": 9223372036854775806, "sint64List": ["-9223372036854775808"], {integers}"#
            ))
            .as_bytes(),
        )
        .await;
    let any = &r.ok()["anyField"];
    assert_eq!(any["int64Field"], "9223372036854775806");
    assert_eq!(any["sint64List"][0], "-9223372036854775808");
    // A wrapper's value before its type, and an Any that is not an object.
    gw.send_raw_json(
        "POST",
        "/v1/echo",
        body(r#""value": 18446744073709551616, "@type": "type.googleapis.com/google.protobuf.UInt64Value""#).as_bytes(),
    )
    .await
    .assert_error(400, 3, "out of range for uint64");
    gw.send_raw_json("POST", "/v1/echo", br#"{"anyField": 5}"#)
        .await
        .assert_error(400, 3, "anyField");
}
