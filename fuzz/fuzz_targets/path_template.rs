//! The path-template parser and the matcher on arbitrary input: the first
//! line is parsed as a template (and inserted), the rest looked up as
//! request paths against a fixed table. Nothing may panic, and a match's
//! variables must come from the path.
#![no_main]

use std::sync::OnceLock;

use gateway::routing::{Lookup, Matcher, Template};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static Matcher<usize> {
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
            let _ = m.insert("GET", &Template::parse(t).expect("template"), i);
        }
        m
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    if let Some(first) = lines.next() {
        if let Ok(t) = Template::parse(first) {
            let mut m = Matcher::new();
            let _ = m.insert("GET", &t, ());
            let _ = m.lookup("GET", first);
        }
    }
    for path in lines {
        if let Lookup::Found { vars, .. } = table().lookup("GET", path) {
            // Decoding can only shorten or keep text.
            for v in vars {
                assert!(v.len() <= path.len());
            }
        }
        let _ = table().allowed_methods(path);
    }
});
