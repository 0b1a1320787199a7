//! Malformed requests: each must get the right status and an error body
//! naming the problem, and none may hurt the gateway.

use gateway_tests::{check_error_body, TestGateway};
use serde_json::json;

/// One malformed request and what the gateway must answer.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: i32,
    /// A substring of the error message.
    contains: &'static str,
}

fn get(what: &'static str, path: &str, status: u16, contains: &'static str) -> Case {
    Case {
        what,
        method: "GET",
        path: path.to_owned(),
        content_type: None,
        body: Vec::new(),
        status,
        code: if status == 404 { 5 } else { 3 },
        contains,
    }
}

fn post(what: &'static str, path: &str, body: impl Into<Vec<u8>>, contains: &'static str) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.into(),
        status: 400,
        code: 3,
        contains,
    }
}

fn cases() -> Vec<Case> {
    let deep_array = format!("{{\"valueField\": {}", "[".repeat(10_000));
    let deep_closed = format!(
        "{{\"valueField\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_objects = format!(
        "{}{}",
        "{\"structField\": {\"a\": ".repeat(5_000),
        "}".repeat(10_000)
    );
    vec![
        // Broken JSON.
        post(
            "truncated JSON",
            "/v1/echo",
            r#"{"stringField": "abc""#,
            "EOF",
        ),
        post(
            "truncated JSON in a string",
            "/v1/echo",
            r#"{"stringField": "ab"#,
            "EOF",
        ),
        post(
            "trailing garbage",
            "/v1/echo",
            r#"{"stringField": "a"} xyz"#,
            "trailing",
        ),
        post("two JSON documents", "/v1/echo", r#"{} {}"#, "trailing"),
        post(
            "bad escape in a JSON string",
            "/v1/echo",
            r#"{"stringField": "a\qb"}"#,
            "escape",
        ),
        post(
            "lone surrogate escape",
            "/v1/echo",
            r#"{"stringField": "\ud800"}"#,
            "stringField",
        ),
        post(
            "invalid UTF-8 in the body",
            "/v1/echo",
            b"{\"stringField\": \"\xff\xfe\"}".to_vec(),
            "stringField",
        ),
        post(
            "single-quoted JSON",
            "/v1/echo",
            "{'stringField': 'a'}",
            "key must be a string",
        ),
        post(
            "JSON array where an object is expected",
            "/v1/echo",
            "[1, 2]",
            "expected a map",
        ),
        post(
            "JSON string where an object is expected",
            "/v1/echo",
            r#""text""#,
            "expected a map",
        ),
        post("null body", "/v1/echo", "null", "null"),
        post(
            "null body for a message body field",
            "/v1/inner",
            "null",
            "null",
        ),
        post(
            "deeply nested unclosed arrays",
            "/v1/echo",
            deep_array,
            "nesting is deeper than the limit",
        ),
        post(
            "deeply nested closed arrays",
            "/v1/echo",
            deep_closed,
            "nesting is deeper than the limit",
        ),
        post(
            "deeply nested objects",
            "/v1/echo",
            deep_objects,
            "nesting is deeper than the limit",
        ),
        // Wrong JSON types per field kind.
        post(
            "string for int32",
            "/v1/echo",
            r#"{"int32Field": "abc"}"#,
            "int32Field",
        ),
        post(
            "object for string",
            "/v1/echo",
            r#"{"stringField": {}}"#,
            "stringField",
        ),
        post(
            "number for string",
            "/v1/echo",
            r#"{"stringField": 5}"#,
            "stringField",
        ),
        post(
            "number for bool",
            "/v1/echo",
            r#"{"boolField": 1}"#,
            "boolField",
        ),
        post(
            "string for bool",
            "/v1/echo",
            r#"{"boolField": "yes"}"#,
            "boolField",
        ),
        post(
            "string for repeated",
            "/v1/echo",
            r#"{"tags": "a"}"#,
            "tags",
        ),
        post(
            "array for message",
            "/v1/echo",
            r#"{"inner": [1]}"#,
            "inner",
        ),
        post(
            "number for bytes",
            "/v1/echo",
            r#"{"bytesField": 12}"#,
            "bytesField",
        ),
        post(
            "array for map",
            "/v1/echo",
            r#"{"labels": ["a"]}"#,
            "labels",
        ),
        post(
            "number for nested string",
            "/v1/echo",
            r#"{"inner": {"deeper": {"value": 1}}}"#,
            "value",
        ),
        post(
            "NaN for int32",
            "/v1/echo",
            r#"{"int32Field": "NaN"}"#,
            "int32Field",
        ),
        post(
            "float for int32",
            "/v1/echo",
            r#"{"int32Field": 1.5}"#,
            "int32Field",
        ),
        post(
            "float for int64",
            "/v1/echo",
            r#"{"int64Field": "2.5"}"#,
            "int64Field",
        ),
        post(
            "exponent overflowing int64",
            "/v1/echo",
            r#"{"int64Field": 1e20}"#,
            "int64Field",
        ),
        // Out of range.
        post(
            "int32 overflow in the body",
            "/v1/echo",
            r#"{"int32Field": 2147483648}"#,
            "int32Field",
        ),
        post(
            "int32 underflow in the body",
            "/v1/echo",
            r#"{"int32Field": -2147483649}"#,
            "int32Field",
        ),
        post(
            "int64 overflow in the body",
            "/v1/echo",
            r#"{"int64Field": "9223372036854775808"}"#,
            "int64Field",
        ),
        post(
            "uint32 overflow in the body",
            "/v1/echo",
            r#"{"uint32Field": 4294967296}"#,
            "uint32Field",
        ),
        post(
            "negative uint64 in the body",
            "/v1/echo",
            r#"{"uint64Field": -1}"#,
            "uint64Field",
        ),
        post(
            "negative uint32 as a string",
            "/v1/echo",
            r#"{"uint32Field": "-1"}"#,
            "uint32Field",
        ),
        post(
            "float overflow in the body",
            "/v1/echo",
            r#"{"floatField": 1e39}"#,
            "floatField",
        ),
        get(
            "int32 overflow in the path",
            "/v1/int32/2147483648",
            400,
            "out of range for int32",
        ),
        get(
            "int64 overflow in the path",
            "/v1/int64/9223372036854775808",
            400,
            "out of range for int64",
        ),
        get(
            "uint64 overflow in the path",
            "/v1/uint64/18446744073709551616",
            400,
            "out of range for uint64",
        ),
        get(
            "negative uint32 in the path",
            "/v1/uint32/-1",
            400,
            "uint32",
        ),
        get(
            "int32 overflow in the query",
            "/v1/echo?int32Field=99999999999",
            400,
            "out of range for int32",
        ),
        get(
            "int64 overflow in the query",
            "/v1/echo?int64Field=-9223372036854775809",
            400,
            "out of range for int64",
        ),
        get(
            "negative uint64 in the query",
            "/v1/echo?uint64Field=-1",
            400,
            "uint64Field",
        ),
        get(
            "float overflow in the query",
            "/v1/echo?floatField=1e39",
            400,
            "out of range for float",
        ),
        get(
            "NaN for int in the query",
            "/v1/echo?int32Field=NaN",
            400,
            "not a valid int32",
        ),
        get(
            "float for int in the query",
            "/v1/echo?int64Field=1.5",
            400,
            "not a valid int64",
        ),
        get(
            "empty value for int in the query",
            "/v1/echo?int32Field=",
            400,
            "int32Field",
        ),
        get(
            "word for int in the path",
            "/v1/int64/abc",
            400,
            "int64_field",
        ),
        // Enums, bytes, bools and well-known types.
        post(
            "bad enum name in the body",
            "/v1/echo",
            r#"{"color": "PURPLE"}"#,
            "PURPLE",
        ),
        get(
            "bad enum name in the query",
            "/v1/echo?color=PURPLE",
            400,
            "PURPLE",
        ),
        get(
            "bad enum name in the path",
            "/v1/color/PURPLE",
            400,
            "PURPLE",
        ),
        post(
            "bad base64 in the body",
            "/v1/echo",
            r#"{"bytesField": "!!!"}"#,
            "base64",
        ),
        get(
            "bad base64 in the query",
            "/v1/echo?bytesField=%21%21%21",
            400,
            "base64",
        ),
        get(
            "bad bool in the query",
            "/v1/echo?boolField=yes",
            400,
            "not a bool",
        ),
        get("bad bool in the path", "/v1/bool/maybe", 400, "not a bool"),
        post(
            "bad timestamp in the body",
            "/v1/echo",
            r#"{"timestamp": "yesterday"}"#,
            "timestamp",
        ),
        post(
            "timestamp without a zone",
            "/v1/echo",
            r#"{"timestamp": "2024-01-01T00:00:00"}"#,
            "timestamp",
        ),
        get(
            "bad timestamp in the query",
            "/v1/echo?timestamp=2024-13-01T00:00:00Z",
            400,
            "timestamp",
        ),
        get(
            "bad timestamp in the path",
            "/v1/timestamp/tomorrow",
            400,
            "timestamp",
        ),
        post(
            "bad duration in the body",
            "/v1/echo",
            r#"{"duration": "5 minutes"}"#,
            "duration",
        ),
        post(
            "duration without unit",
            "/v1/echo",
            r#"{"duration": "5"}"#,
            "duration",
        ),
        get(
            "bad duration in the query",
            "/v1/echo?duration=5x",
            400,
            "duration",
        ),
        post(
            "bad field mask",
            "/v1/echo",
            r#"{"fieldMask": "a_b"}"#,
            "fieldMask",
        ),
        post(
            "Any without @type",
            "/v1/echo",
            r#"{"anyField": {"name": "x"}}"#,
            "anyField",
        ),
        post(
            "Any of an unknown type",
            "/v1/echo",
            r#"{"anyField": {"@type": "type.googleapis.com/no.Such"}}"#,
            "no.Such",
        ),
        post(
            "two members of a oneof",
            "/v1/echo",
            r#"{"choiceText": "a", "choiceNumber": 1}"#,
            "oneof",
        ),
        // Unknown names.
        post(
            "unknown field",
            "/v1/echo",
            r#"{"stringField": "a", "bogus": 1}"#,
            "bogus",
        ),
        post(
            "unknown nested field",
            "/v1/echo",
            r#"{"inner": {"bogus": 1}}"#,
            "bogus",
        ),
        post(
            "unknown field in a body field",
            "/v1/inner",
            r#"{"bogus": 1}"#,
            "bogus",
        ),
        get("unknown query parameter", "/v1/echo?bogus=1", 400, "bogus"),
        get(
            "unknown nested query parameter",
            "/v1/echo?inner.bogus=1",
            400,
            "inner.bogus",
        ),
        get(
            "query parameter below a scalar",
            "/v1/echo?stringField.x=1",
            400,
            "stringField",
        ),
        get(
            "query parameter naming a message",
            "/v1/echo?inner=x",
            400,
            "inner",
        ),
        get(
            "query parameter naming a map without a key",
            "/v1/echo?labels=x",
            400,
            "labels",
        ),
        get(
            "map key on a non-map query parameter",
            "/v1/echo?tags[x]=y",
            400,
            "not a map",
        ),
        get(
            "map key of the wrong type in the query",
            "/v1/echo?codes[abc]=x",
            400,
            "abc",
        ),
        post(
            "map key of the wrong type in the body",
            "/v1/echo",
            r#"{"codes": {"abc": "x"}}"#,
            "codes",
        ),
        get(
            "unclosed map key in the query",
            "/v1/echo?labels[a=x",
            400,
            "labels[a",
        ),
        // Query parameters that may not be set.
        get(
            "query setting a path-bound field",
            "/v1/single/x?stringField=y",
            400,
            "already binds",
        ),
        get(
            "query setting a path-bound field by its proto name",
            "/v1/single/x?string_field=y",
            400,
            "already binds",
        ),
        get(
            "query setting a field inside a path-bound field",
            "/v1/deep/x?inner.deeper.value=y",
            400,
            "already binds",
        ),
        post(
            "query setting a body-bound field",
            "/v1/inner?inner.name=x",
            "{}",
            "already binds",
        ),
        post(
            "query on a body-star route",
            "/v1/echo?int32Field=1",
            "{}",
            "int32Field",
        ),
        get(
            "non-repeated query key given twice",
            "/v1/echo?stringField=a&stringField=b",
            400,
            "more than once",
        ),
        // Escapes.
        get(
            "bad percent-escape in the path",
            "/v1/single/a%zz",
            400,
            "percent",
        ),
        get(
            "truncated percent-escape in the path",
            "/v1/single/ab%4",
            400,
            "percent",
        ),
        get(
            "bad percent-escape in the query value",
            "/v1/echo?stringField=%zz",
            400,
            "percent",
        ),
        get(
            "bad percent-escape in the query key",
            "/v1/echo?string%zzField=a",
            400,
            "percent",
        ),
        get("invalid UTF-8 in the path", "/v1/single/%FF", 400, "UTF-8"),
        get(
            "invalid UTF-8 in a multi-segment path",
            "/v1/multi/a/%C3",
            400,
            "UTF-8",
        ),
        get(
            "invalid UTF-8 in the query",
            "/v1/echo?stringField=%FF",
            400,
            "UTF-8",
        ),
        // Bodies where none belongs, wrong media types.
        Case {
            what: "body on a GET route",
            method: "GET",
            path: "/v1/echo".into(),
            content_type: Some("application/json"),
            body: br#"{"int32Field": 1}"#.to_vec(),
            status: 400,
            code: 3,
            contains: "no request body",
        },
        Case {
            what: "XML body",
            method: "POST",
            path: "/v1/echo".into(),
            content_type: Some("application/xml"),
            body: b"<int32Field>1</int32Field>".to_vec(),
            status: 415,
            code: 3,
            contains: "application/xml",
        },
        Case {
            what: "octet-stream body",
            method: "POST",
            path: "/v1/echo".into(),
            content_type: Some("application/octet-stream"),
            body: br#"{"int32Field": 1}"#.to_vec(),
            status: 415,
            code: 3,
            contains: "application/json",
        },
        post(
            "scalar where a repeated body field is expected",
            "/v1/tags",
            r#""notalist""#,
            "tags",
        ),
        post(
            "numbers in a repeated string body field",
            "/v1/tags",
            "[1, 2]",
            "tags",
        ),
    ]
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_problem_and_the_gateway_keeps_serving() {
    let gw = TestGateway::echo("max_body_bytes = 2097152").await;
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        let mut headers = Vec::new();
        if let Some(ct) = c.content_type {
            headers.push(("content-type", ct));
        }
        let body = (!c.body.is_empty() || c.method != "GET").then(|| c.body.clone());
        let r = gw.request(c.method, &c.path, &headers, body).await;
        if r.status != c.status {
            failures.push(format!(
                "{}: {} {}: HTTP {} instead of {}: {}",
                c.what,
                c.method,
                c.path_short(),
                r.status,
                c.status,
                r.text
            ));
        } else if let Err(e) = check_error_body(&r.json, c.code, c.contains) {
            failures.push(format!(
                "{}: {} {}: {e}: {}",
                c.what,
                c.method,
                c.path_short(),
                r.text
            ));
        }
    }
    // After all of that, a normal request is still served.
    let r = gw.get("/v1/single/still-here?int32Field=1").await;
    assert_eq!(
        r.ok(),
        &json!({"stringField": "still-here", "int32Field": 1})
    );
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

impl Case {
    fn path_short(&self) -> String {
        self.path.chars().take(80).collect()
    }
}

#[tokio::test]
async fn singular_query_field_given_under_its_json_and_proto_names_is_rejected() {
    let gw = TestGateway::echo("").await;
    // The same field twice is refused whichever of its names each copy uses;
    // otherwise the last one silently wins.
    gw.get("/v1/echo?stringField=a&string_field=b")
        .await
        .assert_error(400, 3, "more than once");
    gw.get("/v1/echo?inner.deeper.value=a&inner.deeper.value=b")
        .await
        .assert_error(400, 3, "more than once");
    gw.get("/v1/echo?int32_field=1&int32Field=1")
        .await
        .assert_error(400, 3, "more than once");
}

#[tokio::test]
async fn one_mib_string_under_the_limit_is_accepted() {
    let gw = TestGateway::echo("max_body_bytes = 2097152").await;
    let big = "é".repeat(512 * 1024); // 1 MiB of UTF-8
    let r = gw.post("/v1/echo", &json!({"stringField": big})).await;
    assert_eq!(r.ok()["stringField"].as_str(), Some(big.as_str()));
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_the_gateway_keeps_serving() {
    let gw = TestGateway::echo("max_body_bytes = 2097152").await;
    let big = "x".repeat(3 * 1024 * 1024);
    gw.post("/v1/echo", &json!({"stringField": big}))
        .await
        .assert_error(413, 3, "2097152");
    gw.get("/v1/single/ok").await.ok();
}

#[tokio::test]
async fn content_length_larger_than_the_body_sent_is_not_accepted_as_complete() {
    let gw = TestGateway::echo("").await;
    // Claims 100 bytes, sends 2 and half-closes: the body is incomplete.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let req = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{}}",
        gw.addr
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "an incomplete body was accepted: {text}"
    );
    gw.get("/v1/single/ok").await.ok();
}

#[tokio::test]
async fn raw_invalid_utf8_bytes_in_the_path_are_rejected() {
    let gw = TestGateway::echo("").await;
    // Not percent-encoded: the bytes go on the wire as they are. hyper may
    // refuse the request line itself (400) or the gateway does; never 200.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut req = b"GET /v1/single/a".to_vec();
    req.extend_from_slice(&[0xff, 0xfe]);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    );
    stream.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    gw.get("/v1/single/ok").await.ok();
}

#[tokio::test]
async fn many_concurrent_malformed_and_valid_requests() {
    let gw = TestGateway::echo("").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = gw.client.clone();
        let base = gw.url("");
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = client
                    .post(format!("{base}/v1/echo"))
                    .header("content-type", "application/json")
                    .body(format!("{{\"int32Field\": {i}"))
                    .send()
                    .await
                    .unwrap();
                (i, r.status().as_u16(), r.text().await.unwrap())
            } else {
                let r = client
                    .get(format!("{base}/v1/int32/{i}"))
                    .send()
                    .await
                    .unwrap();
                (i, r.status().as_u16(), r.text().await.unwrap())
            }
        }));
    }
    for t in tasks {
        let (i, status, text) = t.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(status, 400, "{text}");
        } else {
            assert_eq!(status, 200, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v, json!({"int32Field": i}));
        }
    }
}

#[tokio::test]
async fn query_setting_two_members_of_a_oneof_is_rejected() {
    let gw = TestGateway::echo("").await;
    // The body refuses this ("multiple fields provided for oneof"), and so
    // does grpc-gateway's query parser ("field already set for oneof").
    gw.post("/v1/echo", &json!({"choiceText": "a", "choiceNumber": 1}))
        .await
        .assert_error(400, 3, "oneof");
    gw.get("/v1/echo?choiceText=a&choiceNumber=1")
        .await
        .assert_error(400, 3, "choice");
}

#[tokio::test]
async fn duplicate_json_keys_are_rejected() {
    let gw = TestGateway::echo("").await;
    // proto3 JSON parsers reject a field given twice, also under its two
    // names (conformance tests FieldNameDuplicate*); last-one-wins hides
    // client bugs and lets two parsers of the same body disagree.
    for body in [
        r#"{"stringField": "a", "stringField": "b"}"#,
        r#"{"stringField": "a", "string_field": "b"}"#,
        r#"{"inner": {"name": "a", "name": "b"}}"#,
    ] {
        gw.send_raw_json("POST", "/v1/echo", body.as_bytes())
            .await
            .assert_error(400, 3, "");
    }
}
