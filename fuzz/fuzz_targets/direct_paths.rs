//! The direct JSON <-> wire paths against the DynamicMessage path they stand
//! in for, on arbitrary bytes. Nothing may panic, and:
//! - a JSON body the direct encoder takes, the reference takes too, and both
//!   mean the same on the wire; a body the reference refuses, the direct
//!   encoder declines;
//! - wire bytes the direct writer renders decode as the message, and render
//!   to the same JSON through prost-reflect.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use gateway::transcode::json_wire::BodyPlan;
use gateway::transcode::request::{decode_body, BodyRule, DecodeOptions};
use gateway::transcode::wire_json::{JsonStyle, ReplyPlan};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};

struct Fixture {
    desc: MessageDescriptor,
    body: BodyPlan,
    reply: ReplyPlan,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
        let desc = gateway::descriptors::load_dir(&dir)
            .expect("testing descriptors")
            .pool
            .get_message_by_name("testing.v1.Everything")
            .expect("Everything");
        Fixture {
            body: BodyPlan::new(&desc, DecodeOptions::default()),
            reply: ReplyPlan::new(&desc, JsonStyle::default()),
            desc,
        }
    })
}

/// What a message means on the wire (set-to-default and unset alike).
fn wire_meaning(desc: &MessageDescriptor, m: &DynamicMessage) -> DynamicMessage {
    DynamicMessage::decode(desc.clone(), m.encode_to_vec().as_slice()).expect("re-decodes")
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let desc = &f.desc;

    let reference = decode_body(desc, &BodyRule::All, data, DecodeOptions::default());
    let mut wire = Vec::new();
    match (f.body.encode(data, &mut wire), &reference) {
        (Ok(()), Ok(want)) => {
            let got = DynamicMessage::decode(desc.clone(), wire.as_slice()).expect("decodes");
            assert_eq!(wire_meaning(desc, &got), wire_meaning(desc, want));
        }
        (Ok(()), Err(e)) => panic!("direct path took a body the reference refuses: {e}"),
        (Err(_), _) => {}
    }

    let mut json = Vec::new();
    if f.reply.write(data, &mut json).is_ok() {
        let msg = DynamicMessage::decode(desc.clone(), data).expect("rendered bytes decode");
        // As the gateway renders it: to text (floats keep their f32 digits),
        // compared as values (map order is free).
        let mut text = Vec::new();
        msg.serialize_with_options(
            &mut serde_json::Serializer::new(&mut text),
            &SerializeOptions::new(),
        )
        .expect("renders");
        let want: serde_json::Value = serde_json::from_slice(&text).expect("valid JSON");
        let got: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(got, want);
    }
});
