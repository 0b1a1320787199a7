//! JSON body to request message, with the strict checks (duplicate keys,
//! a field under both names, depth) on arbitrary bytes, for each body rule.
//! Nothing may panic; a body that decodes must re-encode and decode again
//! to the same JSON.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use gateway::transcode::request::{decode_body, BodyRule, DecodeOptions};
use libfuzzer_sys::fuzz_target;
use prost_reflect::MessageDescriptor;

fn everything() -> &'static MessageDescriptor {
    static D: OnceLock<MessageDescriptor> = OnceLock::new();
    D.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
        gateway::descriptors::load_dir(&dir)
            .expect("testing descriptors")
            .pool
            .get_message_by_name("testing.v1.Everything")
            .expect("Everything")
    })
}

fuzz_target!(|data: &[u8]| {
    let desc = everything();
    let opts = DecodeOptions::default();
    if let Ok(m) = decode_body(desc, &BodyRule::All, data, opts) {
        let json = serde_json::to_vec(&m).expect("serialises");
        let again = decode_body(desc, &BodyRule::All, &json, opts).expect("re-decodes");
        assert_eq!(serde_json::to_vec(&again).expect("serialises"), json);
    }
    for field in ["inner", "tags", "labels", "string_field"] {
        let f = desc.get_field_by_name(field).expect("field");
        let _ = decode_body(desc, &BodyRule::Field(f), data, opts);
    }
});
