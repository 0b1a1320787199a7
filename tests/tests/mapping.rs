//! Request mapping: path variables, query parameters, bodies, response
//! bodies, JSON naming, well-known types, server options and annotation routes.
//!
//! The Echo backend replies with the request message, so every reply is
//! exactly the message the gateway built.

use gateway_tests::{TestGateway, ECHO_CONFIG_BODY};
use serde_json::json;

#[tokio::test]
async fn single_segment_variable_binds_its_field() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/hello").await;
    assert_eq!(r.ok(), &json!({"stringField": "hello"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Echo");
}

#[tokio::test]
async fn dotted_variable_sets_nested_message_fields() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/deep/abc").await;
    assert_eq!(r.ok(), &json!({"inner": {"deeper": {"value": "abc"}}}));
}

#[tokio::test]
async fn variable_with_segments_pattern_binds_the_whole_matched_path() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/resources/shelves/12/books/7").await;
    assert_eq!(r.ok(), &json!({"name": "shelves/12/books/7"}));
    // The literal segments must match too.
    gw.get("/v1/resources/racks/12/books/7")
        .await
        .assert_error(404, 5, "no route");
    gw.get("/v1/resources/shelves/12")
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn double_star_variable_binds_any_number_of_segments() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/multi/a/b/c/d").await;
    assert_eq!(r.ok(), &json!({"stringField": "a/b/c/d"}));
    let r = gw.get("/v1/multi/one").await;
    assert_eq!(r.ok(), &json!({"stringField": "one"}));
}

#[tokio::test]
async fn double_star_in_the_middle_matches_several_segments() {
    let gw = TestGateway::echo("").await;
    gw.get("/v1/wild/a/b/c/tail").await.ok();
    gw.get("/v1/wild/a/tail").await.ok();
    gw.get("/v1/wild/a/b/c/nottail")
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn custom_verb_route_matches_only_with_the_verb() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post("/v1/items/abc:activate", &json!({"int32Field": 3}))
        .await;
    assert_eq!(r.ok(), &json!({"stringField": "abc", "int32Field": 3}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "EchoAgain");
    gw.post("/v1/items/abc", &json!({}))
        .await
        .assert_error(404, 5, "no route");
    gw.post("/v1/items/abc:deactivate", &json!({}))
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn percent_2f_in_single_segment_variable_is_decoded() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/a%2Fb").await;
    assert_eq!(r.ok(), &json!({"stringField": "a/b"}));
    let r = gw.get("/v1/single/a%2fb").await;
    assert_eq!(r.ok(), &json!({"stringField": "a/b"}));
}

#[tokio::test]
async fn percent_escapes_in_single_segment_variable_are_decoded() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/caf%C3%A9%20au%20lait%3F%25").await;
    assert_eq!(r.ok(), &json!({"stringField": "café au lait?%"}));
}

#[tokio::test]
async fn plus_in_a_path_is_not_a_space() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/a+b").await;
    assert_eq!(r.ok(), &json!({"stringField": "a+b"}));
}

#[tokio::test]
async fn percent_2f_in_multi_segment_variable_is_kept() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/multi/a%2Fb/c").await;
    assert_eq!(r.ok(), &json!({"stringField": "a%2Fb/c"}));
    let r = gw.get("/v1/resources/shelves/x%2Fy/books/7").await;
    assert_eq!(r.ok(), &json!({"name": "shelves/x%2Fy/books/7"}));
}

#[tokio::test]
async fn other_escapes_in_multi_segment_variable_are_decoded() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/multi/a%20b/%C3%A9").await;
    assert_eq!(r.ok(), &json!({"stringField": "a b/é"}));
}

#[tokio::test]
async fn escaped_slash_does_not_split_segments_for_matching() {
    let gw = TestGateway::echo("").await;
    // One segment "a%2Fb" matches `{string_field}` (one segment) ...
    gw.get("/v1/single/a%2Fb").await.ok();
    // ... while a real slash makes two segments, which does not.
    gw.get("/v1/single/a/b")
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn path_variables_parse_into_their_field_types() {
    let gw = TestGateway::echo("").await;
    let cases = [
        (
            "/v1/int32/-2147483648",
            json!({"int32Field": -2147483648i64}),
        ),
        (
            "/v1/int64/-9223372036854775808",
            json!({"int64Field": "-9223372036854775808"}),
        ),
        (
            "/v1/uint32/4294967295",
            json!({"uint32Field": 4294967295u32}),
        ),
        (
            "/v1/uint64/18446744073709551615",
            json!({"uint64Field": "18446744073709551615"}),
        ),
        ("/v1/bool/true", json!({"boolField": true})),
        ("/v1/color/BLUE", json!({"color": "BLUE"})),
        ("/v1/color/2", json!({"color": "GREEN"})),
        (
            "/v1/timestamp/2024-01-02T03:04:05Z",
            json!({"timestamp": "2024-01-02T03:04:05Z"}),
        ),
        ("/v1/wrapper/42", json!({"int64Wrapper": "42"})),
    ];
    for (path, want) in cases {
        let r = gw.get(path).await;
        assert_eq!(r.ok(), &want, "{path}");
    }
}

#[tokio::test]
async fn path_variable_wins_over_the_same_field_in_the_body() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .put(
            "/v1/echo/from-path",
            &json!({"stringField": "from-body", "int32Field": 1}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"stringField": "from-path", "int32Field": 1})
    );
}

#[tokio::test]
async fn path_variable_inside_the_body_field_is_set_on_the_body_message() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/inner/fromPath",
            &json!({"name": "fromBody", "number": 4}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"inner": {"name": "fromPath", "number": 4}}));
}

#[tokio::test]
async fn query_parameters_of_every_scalar_type() {
    let gw = TestGateway::echo("").await;
    let q = "int32Field=-5&int64Field=9007199254740993&uint32Field=4294967295\
             &uint64Field=18446744073709551615&sint64Field=-9223372036854775808\
             &fixed64Field=18446744073709551615&doubleField=1.5&floatField=2.5\
             &boolField=true&stringField=hello%20w%C3%B6rld%26more&bytesField=aGVsbG8%3D";
    let r = gw.get(&format!("/v1/echo?{q}")).await;
    assert_eq!(
        r.ok(),
        &json!({
            "int32Field": -5,
            "int64Field": "9007199254740993",
            "uint32Field": 4294967295u32,
            "uint64Field": "18446744073709551615",
            "sint64Field": "-9223372036854775808",
            "fixed64Field": "18446744073709551615",
            "doubleField": 1.5,
            "floatField": 2.5,
            "boolField": true,
            "stringField": "hello wörld&more",
            "bytesField": "aGVsbG8=",
        })
    );
}

#[tokio::test]
async fn query_plus_is_a_space() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/echo?stringField=a+b%2Bc").await;
    assert_eq!(r.ok(), &json!({"stringField": "a b+c"}));
}

#[tokio::test]
async fn query_bytes_accept_url_safe_base64() {
    let gw = TestGateway::echo("").await;
    // 0xfb 0xff: standard "+/8=", URL-safe "-_8".
    let r = gw.get("/v1/echo?bytesField=-_8").await;
    assert_eq!(r.ok(), &json!({"bytesField": "+/8="}));
}

#[tokio::test]
async fn query_accepts_original_and_json_field_names() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?int32_field=7&string_field=x&inner.deeper.count=3")
        .await;
    assert_eq!(
        r.ok(),
        &json!({"int32Field": 7, "stringField": "x", "inner": {"deeper": {"count": "3"}}})
    );
}

#[tokio::test]
async fn query_dotted_names_set_nested_fields() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?inner.name=n&inner.deeper.value=v&inner.number=9")
        .await;
    assert_eq!(
        r.ok(),
        &json!({"inner": {"name": "n", "number": 9, "deeper": {"value": "v"}}})
    );
}

#[tokio::test]
async fn repeated_query_keys_append_in_order() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?tags=b&tags=a&tags=b&numbers=1&numbers=-2&numbers=9007199254740993")
        .await;
    assert_eq!(
        r.ok(),
        &json!({"tags": ["b", "a", "b"], "numbers": ["1", "-2", "9007199254740993"]})
    );
}

#[tokio::test]
async fn query_enums_by_name_and_by_number() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?color=GREEN&colors=RED&colors=3&colors=BLUE&colors=0")
        .await;
    assert_eq!(
        r.ok(),
        &json!({"color": "GREEN", "colors": ["RED", "BLUE", "BLUE", "COLOR_UNSPECIFIED"]})
    );
    let r = gw.get("/v1/echo?color=1").await;
    assert_eq!(r.ok(), &json!({"color": "RED"}));
}

#[tokio::test]
async fn query_bools_accept_the_usual_spellings() {
    let gw = TestGateway::echo("").await;
    for (v, want) in [("true", true), ("1", true), ("false", false), ("0", false)] {
        let r = gw.get(&format!("/v1/echo?boolWrapper={v}")).await;
        assert_eq!(r.ok(), &json!({"boolWrapper": want}), "boolWrapper={v}");
    }
}

#[tokio::test]
async fn query_maps_use_bracketed_keys() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?labels[env]=prod&labels[team]=a%20b&codes[404]=not%20found&codes[-1]=neg")
        .await;
    assert_eq!(
        r.ok(),
        &json!({
            "labels": {"env": "prod", "team": "a b"},
            "codes": {"404": "not found", "-1": "neg"}
        })
    );
}

#[tokio::test]
async fn query_map_keys_may_be_percent_encoded_brackets() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/echo?labels%5Benv%5D=prod").await;
    assert_eq!(r.ok(), &json!({"labels": {"env": "prod"}}));
}

#[tokio::test]
async fn query_well_known_types_use_their_json_string_forms() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get(
            "/v1/echo?timestamp=2024-02-29T23:59:59.5%2B01:00&duration=1.5s\
             &fieldMask=int32Field,inner.deeper&int64Wrapper=-9007199254740993\
             &boolWrapper=false&stringWrapper=",
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({
            "timestamp": "2024-02-29T22:59:59.500Z",
            "duration": "1.500s",
            "fieldMask": "int32Field,inner.deeper",
            "int64Wrapper": "-9007199254740993",
            "boolWrapper": false,
            "stringWrapper": "",
        })
    );
}

#[tokio::test]
async fn query_sets_a_oneof_member() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/echo?choiceNumber=12").await;
    assert_eq!(r.ok(), &json!({"choiceNumber": 12}));
}

#[tokio::test]
async fn empty_query_pairs_and_a_bare_question_mark_are_ignored() {
    let gw = TestGateway::echo("").await;
    assert_eq!(gw.get("/v1/echo?").await.ok(), &json!({}));
    assert_eq!(
        gw.get("/v1/echo?&&int32Field=1&").await.ok(),
        &json!({"int32Field": 1})
    );
}

#[tokio::test]
async fn query_fills_fields_next_to_path_variables() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/p?int32Field=4&tags=t").await;
    assert_eq!(
        r.ok(),
        &json!({"stringField": "p", "int32Field": 4, "tags": ["t"]})
    );
}

#[tokio::test]
async fn body_star_maps_the_whole_request_message() {
    let gw = TestGateway::echo("").await;
    let body = json!({
        "int32Field": -1,
        "int64Field": "-9223372036854775808",
        "uint32Field": 1,
        "uint64Field": "18446744073709551615",
        "sint64Field": "-2",
        "fixed64Field": "3",
        "doubleField": 0.25,
        "floatField": -0.5,
        "boolField": true,
        "stringField": "s",
        "bytesField": "AAEC/w==",
        "color": "RED",
        "inner": {"name": "n", "deeper": {"value": "v", "count": "5"}, "number": 6},
        "tags": ["a", "b"],
        "numbers": ["1", "2"],
        "colors": ["GREEN", "BLUE"],
        "labels": {"k": "v"},
        "codes": {"1": "one"},
        "choiceText": "t",
        "items": [{"name": "i1"}, {"name": "i2", "number": 2}],
        "name": "things/1",
    });
    let r = gw.post("/v1/echo", &body).await;
    assert_eq!(r.ok(), &body);
}

#[tokio::test]
async fn body_accepts_original_proto_field_names() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/echo",
            &json!({"int32_field": 1, "string_field": "x", "inner": {"deeper": {"count": 2}}, "choice_number": 3}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"int32Field": 1, "stringField": "x", "inner": {"deeper": {"count": "2"}}, "choiceNumber": 3})
    );
}

#[tokio::test]
async fn body_accepts_numbers_as_strings_and_enums_as_numbers() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/echo",
            &json!({"int32Field": "12", "int64Field": 12, "uint64Field": 1e3, "color": 3, "doubleField": "NaN", "floatField": "-Infinity"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"int32Field": 12, "int64Field": "12", "uint64Field": "1000", "color": "BLUE", "doubleField": "NaN", "floatField": "-Infinity"})
    );
}

#[tokio::test]
async fn json_null_leaves_a_field_unset() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/echo",
            &json!({"int32Field": null, "inner": null, "stringField": "x"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"stringField": "x"}));
}

#[tokio::test]
async fn empty_body_is_an_empty_message() {
    let gw = TestGateway::echo("").await;
    let r = gw.send_raw_json("POST", "/v1/echo", b"").await;
    assert_eq!(r.ok(), &json!({}));
    let r = gw.send_raw_json("POST", "/v1/echo", b"  \n").await;
    assert_eq!(r.ok(), &json!({}));
}

#[tokio::test]
async fn body_without_content_type_is_read_as_json() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .request(
            "POST",
            "/v1/echo",
            &[],
            Some(br#"{"int32Field":5}"#.to_vec()),
        )
        .await;
    assert_eq!(r.ok(), &json!({"int32Field": 5}));
}

#[tokio::test]
async fn json_content_type_with_charset_and_suffix_is_accepted() {
    let gw = TestGateway::echo("").await;
    for ct in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "Application/JSON",
    ] {
        let r = gw
            .request(
                "POST",
                "/v1/echo",
                &[("content-type", ct)],
                Some(br#"{"int32Field":5}"#.to_vec()),
            )
            .await;
        assert_eq!(r.ok(), &json!({"int32Field": 5}), "{ct}");
    }
}

#[tokio::test]
async fn body_field_maps_the_body_to_that_field() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post("/v1/inner", &json!({"name": "x", "deeper": {"value": "y"}}))
        .await;
    assert_eq!(
        r.ok(),
        &json!({"inner": {"name": "x", "deeper": {"value": "y"}}})
    );
}

#[tokio::test]
async fn body_field_route_takes_other_fields_from_the_query() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/inner?stringField=q&int32Field=2",
            &json!({"name": "x"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"inner": {"name": "x"}, "stringField": "q", "int32Field": 2})
    );
}

#[tokio::test]
async fn repeated_body_field_takes_a_json_array() {
    let gw = TestGateway::echo("").await;
    let r = gw.post("/v1/tags", &json!(["x", "y"])).await;
    assert_eq!(r.ok(), &json!({"tags": ["x", "y"]}));
}

#[tokio::test]
async fn response_body_sends_only_that_message_field() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/inner-only?inner.name=n&inner.number=2&stringField=hidden")
        .await;
    assert_eq!(r.ok(), &json!({"name": "n", "number": 2}));
    // Unset: an empty object.
    let r = gw.get("/v1/inner-only").await;
    assert_eq!(r.ok(), &json!({}));
}

#[tokio::test]
async fn response_body_of_a_repeated_field_is_a_json_array() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/tags-only?tags=a&tags=b&stringField=hidden")
        .await;
    assert_eq!(r.ok(), &json!(["a", "b"]));
    let r = gw.get("/v1/tags-only").await;
    assert_eq!(r.ok(), &json!([]));
}

#[tokio::test]
async fn output_uses_lower_camel_case_and_int64_as_strings() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?int64Field=1&uint64Field=2&sint64Field=-3&fixed64Field=4&inner.deeper.count=5&int32Field=6&uint32Field=7")
        .await;
    let body = r.ok();
    assert_eq!(
        body,
        &json!({
            "int64Field": "1", "uint64Field": "2", "sint64Field": "-3", "fixed64Field": "4",
            "inner": {"deeper": {"count": "5"}}, "int32Field": 6, "uint32Field": 7
        })
    );
    assert!(r.text.contains("\"int64Field\":\"1\""), "{}", r.text);
}

#[tokio::test]
async fn bytes_round_trip_as_standard_base64() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post("/v1/echo", &json!({"bytesField": "3q2+7w=="}))
        .await;
    assert_eq!(r.ok(), &json!({"bytesField": "3q2+7w=="}));
    // URL-safe input is accepted too; output is standard.
    let r = gw.post("/v1/echo", &json!({"bytesField": "3q2-7w"})).await;
    assert_eq!(r.ok(), &json!({"bytesField": "3q2+7w=="}));
}

#[tokio::test]
async fn well_known_types_round_trip_through_the_body() {
    let gw = TestGateway::echo("").await;
    let body = json!({
        "timestamp": "1970-01-01T00:00:00.000000001Z",
        "duration": "-0.250s",
        "fieldMask": "int32Field,inner.deeper.value",
        "int64Wrapper": "-5",
        "boolWrapper": false,
        "stringWrapper": "",
        "structField": {"a": 1.5, "b": [true, null, "x"], "c": {"d": {}}},
        "valueField": [1.0, "two", {"three": false}, null],
        "anyField": {"@type": "type.googleapis.com/testing.v1.Inner", "name": "in-any", "number": 3},
    });
    let r = gw.post("/v1/echo", &body).await;
    assert_eq!(r.ok(), &body);
}

#[tokio::test]
async fn any_holding_a_well_known_type_uses_the_value_key() {
    let gw = TestGateway::echo("").await;
    let body = json!({
        "anyField": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"},
        "valueField": "just a string",
    });
    let r = gw.post("/v1/echo", &body).await;
    assert_eq!(r.ok(), &body);
}

#[tokio::test]
async fn value_field_holding_null_round_trips() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post("/v1/echo", &json!({"valueField": {"k": null}}))
        .await;
    assert_eq!(r.ok(), &json!({"valueField": {"k": null}}));
}

#[tokio::test]
async fn emit_defaults_writes_fields_holding_default_values() {
    let gw = TestGateway::echo("emit_defaults = true").await;
    let r = gw.get("/v1/echo?stringField=x").await;
    let body = r.ok();
    assert_eq!(body["stringField"], "x");
    assert_eq!(body["int32Field"], 0);
    assert_eq!(body["int64Field"], "0");
    assert_eq!(body["uint64Field"], "0");
    assert_eq!(body["boolField"], false);
    assert_eq!(body["doubleField"], 0.0);
    assert_eq!(body["bytesField"], "");
    assert_eq!(body["color"], "COLOR_UNSPECIFIED");
    assert_eq!(body["tags"], json!([]));
    assert_eq!(body["labels"], json!({}));
    assert_eq!(body["name"], "");
}

#[tokio::test]
async fn defaults_are_omitted_without_emit_defaults() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .get("/v1/echo?int32Field=0&boolField=false&stringField=&color=COLOR_UNSPECIFIED")
        .await;
    assert_eq!(r.ok(), &json!({}));
}

#[tokio::test]
async fn proto_field_names_option_writes_original_names() {
    let gw = TestGateway::echo("proto_field_names = true").await;
    let r = gw
        .get("/v1/echo?int32Field=1&inner.deeper.count=2&choiceText=c&int64Wrapper=3")
        .await;
    assert_eq!(
        r.ok(),
        &json!({"int32_field": 1, "inner": {"deeper": {"count": "2"}}, "choice_text": "c", "int64_wrapper": "3"})
    );
}

#[tokio::test]
async fn proto_field_names_and_emit_defaults_combine() {
    let gw = TestGateway::echo("proto_field_names = true\nemit_defaults = true").await;
    let body = gw.get("/v1/echo").await.ok().clone();
    assert_eq!(body["int32_field"], 0);
    assert_eq!(body["string_field"], "");
    assert!(body.get("int32Field").is_none(), "{body}");
}

#[tokio::test]
async fn annotation_route_with_custom_verb_is_served() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .post(
            "/v1/things/things/abc:archive",
            &json!({"stringField": "s"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"name": "things/abc", "stringField": "s"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Archive");
}

#[tokio::test]
async fn annotation_additional_bindings_are_served() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/archived/things/xyz?int32Field=1").await;
    assert_eq!(r.ok(), &json!({"name": "things/xyz", "int32Field": 1}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Archive");

    // The second binding maps the body to `inner` and answers with `inner`.
    let r = gw
        .put(
            "/v1/things/things/xyz/archive",
            &json!({"name": "in", "number": 2}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"name": "in", "number": 2}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Archive");
}

#[tokio::test]
async fn annotation_routes_need_the_verb_and_the_pattern() {
    let gw = TestGateway::echo("").await;
    gw.post("/v1/things/things/abc", &json!({}))
        .await
        .assert_error(404, 5, "no route");
    gw.post("/v1/things/other/abc:archive", &json!({}))
        .await
        .assert_error(404, 5, "no route");
}

#[tokio::test]
async fn routes_toml_wins_over_an_annotation_on_the_same_method_and_path() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/annotated/x?inner.name=n").await;
    // routes.toml maps this to EchoAgain without response_body; the
    // annotation (Annotated, response_body "inner") must not be used.
    assert_eq!(r.ok(), &json!({"stringField": "x", "inner": {"name": "n"}}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "EchoAgain");
}

#[tokio::test]
async fn annotation_routes_are_off_when_disabled() {
    let gw = TestGateway::echo("routes_from_annotations = false").await;
    gw.post("/v1/things/things/abc:archive", &json!({}))
        .await
        .assert_error(404, 5, "no route");
    gw.get("/v1/archived/things/abc")
        .await
        .assert_error(404, 5, "no route");
    // Routes from the file still work.
    gw.get("/v1/single/x").await.ok();
}

#[tokio::test]
async fn annotation_route_is_used_when_the_file_has_no_route_there() {
    // The same config without the overriding route: the annotation serves it.
    let template = gateway_tests::echo_config("").replace(
        "path = \"/v1/annotated/{string_field}\"\ngrpc = \"testing.v1.Echo/EchoAgain\"",
        "path = \"/v1/not-annotated/{string_field}\"\ngrpc = \"testing.v1.Echo/EchoAgain\"",
    );
    assert_ne!(template, gateway_tests::echo_config(""));
    let gw = TestGateway::start(&template).await;
    let r = gw.get("/v1/annotated/x?inner.name=n").await;
    assert_eq!(r.ok(), &json!({"name": "n"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Annotated");
}

#[tokio::test]
async fn unknown_fields_ignore_drops_unknown_json_fields_and_query_parameters() {
    let gw = TestGateway::echo("unknown_fields = \"ignore\"").await;
    let r = gw
        .post(
            "/v1/echo",
            &json!({"bogus": {"deep": [1, 2]}, "stringField": "x"}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"stringField": "x"}));
    let r = gw.get("/v1/echo?bogus=1&int32Field=2&inner.bogus=3").await;
    assert_eq!(r.ok(), &json!({"int32Field": 2}));
}

/// docs/routes.md, "Two choices": with `unknown_fields = "ignore"` an enum name the
/// descriptors do not know is dropped from a JSON body like an unknown field
/// (the field keeps its default; a list keeps its other elements), as
/// protojson's DiscardUnknown does. A query or path value is not JSON: there
/// it stays a 400, as in grpc-gateway.
#[tokio::test]
async fn unknown_fields_ignore_drops_unknown_enum_names() {
    let gw = TestGateway::echo("unknown_fields = \"ignore\"").await;
    let r = gw
        .post(
            "/v1/echo",
            &json!({"color": "PURPLE", "colors": ["RED", "PURPLE", "BLUE"], "stringField": "x"}),
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"colors": ["RED", "BLUE"], "stringField": "x"})
    );
    gw.get("/v1/echo?color=PURPLE").await.assert_error(
        400,
        3,
        "query parameter \"color\": \"PURPLE\" is not a value of testing.v1.Color",
    );
    gw.get("/v1/color/PURPLE")
        .await
        .assert_error(400, 3, "PURPLE");
    // A known name still sets the field.
    let r = gw.get("/v1/echo?color=GREEN").await;
    assert_eq!(r.ok(), &json!({"color": "GREEN"}));
}

/// docs/routes.md, "Two choices": a query parameter naming a field the path already
/// binds is refused, in both `unknown_fields` modes (grpc-gateway lets the
/// path value win silently); the field is known, so "ignore" does not apply.
#[tokio::test]
async fn query_setting_a_path_bound_field_is_refused_in_both_modes() {
    for server in ["", "unknown_fields = \"ignore\""] {
        let gw = TestGateway::echo(server).await;
        gw.get("/v1/single/x?stringField=y").await.assert_error(
            400,
            3,
            "query parameter \"stringField\" sets a field that the path or body already binds",
        );
        gw.get("/v1/deep/x?inner.deeper.value=y")
            .await
            .assert_error(400, 3, "already binds");
        // Without the query the path value goes through.
        let r = gw.get("/v1/single/x").await;
        assert_eq!(r.ok(), &json!({"stringField": "x"}));
    }
}

#[tokio::test]
async fn unknown_fields_reject_is_the_default() {
    let gw = TestGateway::echo("").await;
    gw.post("/v1/echo", &json!({"bogus": 1}))
        .await
        .assert_error(400, 3, "bogus");
    gw.get("/v1/echo?bogus=1")
        .await
        .assert_error(400, 3, "bogus");
}

#[tokio::test]
async fn head_and_custom_methods_only_match_their_routes() {
    // A route with a custom HTTP method.
    let template = format!(
        "[server]\n{ECHO_CONFIG_BODY}\n[[routes]]\nmethod = \"PURGE\"\npath = \"/v1/cache/{{string_field}}\"\ngrpc = \"testing.v1.Echo/Echo\"\n"
    );
    let gw = TestGateway::start(&template).await;
    let r = gw.request("PURGE", "/v1/cache/k", &[], None).await;
    assert_eq!(r.ok(), &json!({"stringField": "k"}));
    let r = gw.get("/v1/cache/k").await;
    r.assert_error(405, 12, "PURGE");
}

/// The standard config plus routes that overlap, to check priorities.
fn precedence_config() -> String {
    format!(
        "[server]\n{ECHO_CONFIG_BODY}{}",
        r#"
[[routes]]
method = "GET"
path = "/v1/prec/literal"
grpc = "testing.v1.Echo/EchoAgain"

[[routes]]
method = "GET"
path = "/v1/prec/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "DELETE"
path = "/v1/prec/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/prec/{string_field}/{name=**}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/prec/{string_field}:do"
grpc = "testing.v1.Echo/EchoAgain"
"#
    )
}

#[tokio::test]
async fn literal_segment_wins_over_a_variable() {
    let gw = TestGateway::start(&precedence_config()).await;
    let r = gw.get("/v1/prec/literal").await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "EchoAgain");
    let r = gw.get("/v1/prec/other").await;
    assert_eq!(r.ok(), &json!({"stringField": "other"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Echo");
}

#[tokio::test]
async fn a_lower_priority_route_of_the_right_method_beats_405() {
    let gw = TestGateway::start(&precedence_config()).await;
    // The literal route is GET only; DELETE falls through to the variable.
    let r = gw.delete("/v1/prec/literal").await;
    assert_eq!(r.ok(), &json!({"stringField": "literal"}));
}

#[tokio::test]
async fn single_variable_wins_over_double_star_and_double_star_takes_the_rest() {
    let gw = TestGateway::start(&precedence_config()).await;
    let r = gw.get("/v1/prec/a/b/c").await;
    assert_eq!(r.ok(), &json!({"stringField": "a", "name": "b/c"}));
}

#[tokio::test]
async fn verb_route_and_plain_route_on_the_same_template_are_distinct() {
    let gw = TestGateway::start(&precedence_config()).await;
    let r = gw.get("/v1/prec/x:do").await;
    assert_eq!(r.ok(), &json!({"stringField": "x"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "EchoAgain");
    // An unknown verb is part of the value of the plain route's variable.
    let r = gw.get("/v1/prec/x:other").await;
    assert_eq!(r.ok(), &json!({"stringField": "x:other"}));
    assert_eq!(r.header("grpc-metadata-x-grpc-method"), "Echo");
}

#[tokio::test]
async fn colon_in_a_variable_of_a_route_without_verb_is_kept() {
    let gw = TestGateway::echo("").await;
    let r = gw.get("/v1/single/a:b").await;
    assert_eq!(r.ok(), &json!({"stringField": "a:b"}));
    let r = gw.get("/v1/multi/a/b:c").await;
    assert_eq!(r.ok(), &json!({"stringField": "a/b:c"}));
}

#[tokio::test]
async fn escaped_literal_segments_match_their_decoded_form() {
    let gw = TestGateway::echo("").await;
    assert_eq!(
        gw.get("/v1/%65cho?int32Field=1").await.ok(),
        &json!({"int32Field": 1})
    );
    // An escaped slash is not a separator.
    gw.get("/v1%2Fecho").await.assert_error(404, 5, "no route");
}

#[tokio::test]
async fn trailing_and_doubled_slashes_do_not_match() {
    let gw = TestGateway::echo("").await;
    gw.get("/v1/echo/").await.assert_error(404, 5, "no route");
    gw.get("/v1//echo").await.assert_error(404, 5, "no route");
    gw.get("/v1/single/").await.assert_error(404, 5, "no route");
}

#[tokio::test]
async fn enum_numbers_outside_the_enum_round_trip_as_numbers() {
    let gw = TestGateway::echo("").await;
    assert_eq!(
        gw.get("/v1/echo?color=99").await.ok(),
        &json!({"color": 99})
    );
    assert_eq!(
        gw.post("/v1/echo", &json!({"color": 99})).await.ok(),
        &json!({"color": 99})
    );
}

#[tokio::test]
async fn int64_json_numbers_beyond_2_pow_53_keep_their_precision() {
    let gw = TestGateway::echo("").await;
    let r = gw
        .send_raw_json(
            "POST",
            "/v1/echo",
            br#"{"int64Field": 9007199254740993, "uint64Field": 18446744073709551615}"#,
        )
        .await;
    assert_eq!(
        r.ok(),
        &json!({"int64Field": "9007199254740993", "uint64Field": "18446744073709551615"})
    );
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let gw = TestGateway::echo("").await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client.get(gw.url("/v1/single/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"stringField": "h2"}));
}

/// etcd's published v3 API (tests/fixtures/etcd: built from Debian's
/// golang-etcd-server-dev by build.sh there), whose annotations bind both
/// Maintenance.Hash and Maintenance.HashKV to POST /v3/maintenance/hash.
mod etcd {
    use std::path::PathBuf;

    use gateway::example::{BoxFuture, DynamicServer};
    use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
    use tonic::{Request, Response};

    pub const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
watch = false

[admin]
enabled = false

[backends.etcd]
endpoints = ["{backend}"]
services = ["etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Lease", "etcdserverpb.Cluster", "etcdserverpb.Maintenance", "etcdserverpb.Auth"]
"#;

    pub fn descriptors() -> PathBuf {
        gateway_tests::fixtures_dir().join("etcd/descriptors")
    }

    /// Maintenance: Hash answers hash 111, HashKV hash 222, so a reply tells
    /// which method the gateway called.
    pub async fn backend() -> String {
        let pool = gateway::descriptors::load_dir(&descriptors())
            .expect("the etcd fixture loads")
            .pool;
        let server = DynamicServer::new(
            &pool,
            &["etcdserverpb.Maintenance"],
            |method: &MethodDescriptor, _req: Request<DynamicMessage>| {
                let mut reply = DynamicMessage::new(method.output());
                let hash = if method.name() == "HashKV" { 222 } else { 111 };
                reply.set_field_by_name("hash", Value::U32(hash));
                Box::pin(async move { Ok(Response::new(reply)) }) as BoxFuture<_>
            },
        );
        gateway_tests::spawn_backend(server).await
    }
}

#[tokio::test]
async fn conflicting_annotations_serve_the_first_binding_and_warn() {
    let backend = etcd::backend().await;
    let text = gateway_tests::render_config(etcd::CONFIG, &backend, &etcd::descriptors());
    let path = gateway_tests::write_config(&text);
    let snapshot = gateway::snapshot::Snapshot::load(&path)
        .unwrap_or_else(|e| panic!("a conflict between annotations refused the config:\n{e}"));
    let warnings: Vec<String> = snapshot.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["etcd/etcdserver/etcdserverpb/rpc.proto: etcdserverpb.Maintenance.HashKV (google.api.http): \
          POST /v3/maintenance/hash is also bound by google.api.http on etcdserverpb.Maintenance.Hash \
          (POST /v3/maintenance/hash), which wins (annotations are taken by service full name, then \
          method declaration order); this binding is not served. A [[routes]] entry for this method \
          and path chooses instead"]
    );
    // /admin/routes lists the warning beside the routes.
    let gw = gateway::server::Gateway::new(snapshot);
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_addr = rest.local_addr().unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway::server::run(rest, Some(admin), gw, async {
        let _ = stopped.await;
    }));
    let client = gateway_tests::http_client();
    let v: serde_json::Value = client
        .get(format!("http://{admin_addr}/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["warnings"], json!(warnings), "{v}");
    let hash_routes: Vec<&serde_json::Value> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v3/maintenance/hash")
        .collect();
    assert_eq!(hash_routes.len(), 1, "{hash_routes:?}");
    assert_eq!(hash_routes[0]["grpc"], "etcdserverpb.Maintenance/Hash");
    // The first binding (Hash) serves the path.
    let r = client
        .post(format!("http://{rest_addr}/v3/maintenance/hash"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"hash": 111})
    );
    let _ = stop.send(());
    let _ = running.await;
}

#[tokio::test]
async fn routes_toml_pins_the_choice_between_conflicting_annotations() {
    let backend = etcd::backend().await;
    let template = format!(
        "{}\n[[routes]]\nmethod = \"POST\"\npath = \"/v3/maintenance/hash\"\n\
         grpc = \"etcdserverpb.Maintenance/HashKV\"\nbody = \"*\"\n",
        etcd::CONFIG
    );
    let text = gateway_tests::render_config(&template, &backend, &etcd::descriptors());
    let path = gateway_tests::write_config(&text);
    let snapshot = gateway::snapshot::Snapshot::load(&path).unwrap();
    // Both annotations give way to the file's route: nothing to warn about.
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
    let gw = TestGateway::serve(snapshot, &backend, path).await;
    let r = gw
        .post("/v3/maintenance/hash", &json!({"revision": "7"}))
        .await;
    assert_eq!(r.ok(), &json!({"hash": 222}));
}

/// Routes calling one method with the same bindings share what they
/// compile to (issue 24: memory per route); a route among them that
/// shapes its answer, or binds another field, still answers its own way.
#[tokio::test]
async fn routes_alike_share_a_plan_yet_a_shaped_one_keeps_its_status() {
    let template = format!(
        "[server]\n{ECHO_CONFIG_BODY}{}",
        r#"
[[routes]]
method = "GET"
path = "/v1/alike/a/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/alike/b/{string_field}"
grpc = "testing.v1.Echo/Echo"
success_status = 202

[[routes]]
method = "GET"
path = "/v1/alike/c/{inner.name}"
grpc = "testing.v1.Echo/Echo"
"#
    );
    let gw = TestGateway::start(&template).await;
    let r = gw.get("/v1/alike/a/x").await;
    assert_eq!(r.ok(), &json!({"stringField": "x"}));
    let r = gw.get("/v1/alike/b/y").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json, json!({"stringField": "y"}));
    let r = gw.get("/v1/alike/c/z").await;
    assert_eq!(r.ok(), &json!({"inner": {"name": "z"}}));
    let r = gw.get("/v1/single/w").await;
    assert_eq!(r.ok(), &json!({"stringField": "w"}));
}
