//! Two edge costs, measured:
//!
//! 1. Rate-limiter memory under millions of distinct keys (every request
//!    from a new address, as a spoofing flood would look), with the
//!    periodic sweep and the key cap doing their work. Resident memory is
//!    read from /proc before and during the run.
//! 2. The strict-JSON check (duplicate keys, a field under both names,
//!    depth) on a 1 KiB body, against plain prost-reflect decoding.
//!
//! Run: `cargo bench -p gateway --bench edge` (release), or in a debug build
//! with `cargo test -p gateway --bench edge`. `EDGE_BENCH_KEYS` sets the key
//! count (default 3000000).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::edge::ratelimit::{KeyKind, Policy, PolicyDef};
use gateway::transcode::request::{decode_body, BodyRule, DecodeOptions};
use prost_reflect::{DeserializeOptions, DynamicMessage};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(f64::NAN, |pages| (pages * 4096) as f64 / (1024.0 * 1024.0))
}

fn limiter_memory(
    what: &str,
    keys: u64,
    max_keys: usize,
    sweep_every: u64,
    rate: u32,
    per: Duration,
) {
    let p = Policy::new(PolicyDef {
        name: "bench".into(),
        key: KeyKind::Ip,
        rate,
        per,
        burst: 1,
        per_route: false,
        max_keys,
        shared: false,
    });
    let start_rss = rss_mib();
    let started = Instant::now();
    let mut peak_rss = start_rss;
    let mut peak_keys = 0;
    for k in 0..keys {
        p.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if k % sweep_every == sweep_every - 1 {
            peak_keys = peak_keys.max(p.len());
            peak_rss = peak_rss.max(rss_mib());
            p.sweep();
        }
    }
    println!(
        "rate limiter, {what}: {keys} distinct keys, cap {max_keys}, sweep every {sweep_every} keys: \
         peak {peak_keys} keys held, {} after the last sweep, {} resets; RSS {start_rss:.1} -> peak {peak_rss:.1} MiB ({:.1} s)",
        p.len(),
        p.resets(),
        started.elapsed().as_secs_f64()
    );
}

fn strict_json_cost() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/descriptors");
    let pool = gateway::descriptors::load_dir(&dir)
        .expect("testing descriptors")
        .pool;
    let desc = pool
        .get_message_by_name("testing.v1.Everything")
        .expect("Everything");
    // About 1 KiB: scalars, a nested message, a list, a map and list of messages.
    let body = serde_json::json!({
        "int32Field": 123456, "int64Field": "1234567890123", "uint32Field": 7,
        "doubleField": 3.25, "boolField": true, "stringField": "a string of some length here",
        "color": "GREEN", "inner": {"name": "inner name", "deeper": {"value": "deep", "count": "42"}, "number": 9},
        "tags": ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"],
        "numbers": ["1", "2", "3", "4", "5"],
        "labels": {"env": "prod", "team": "edge", "region": "eu-west-1", "tier": "gold"},
        "codes": {"1": "one", "2": "two", "3": "three"},
        "timestamp": "2024-05-01T12:00:00Z", "duration": "1.5s",
        "items": [
            {"name": "first item", "number": 1, "deeper": {"value": "x", "count": "1"}},
            {"name": "second item", "number": 2, "deeper": {"value": "y", "count": "2"}},
            {"name": "third item", "number": 3, "deeper": {"value": "z", "count": "3"}}
        ],
        "name": "shelves/1/books/2", "choiceText": "chosen",
        "structField": {"k1": "v1", "k2": 2, "k3": [true, null], "k4": {"nested": "object", "n": 1.5}},
        "stringWrapper": "wrapped", "int64Wrapper": "99", "fieldMask": "a.b,c",
        "colors": ["RED", "BLUE", "GREEN"]
    })
    .to_string();
    let bytes = body.as_bytes();
    let n = 20_000;
    let opts = DeserializeOptions::new();
    // Warm up, then alternate to share any noise from the other core.
    let mut plain = Duration::ZERO;
    let mut strict = Duration::ZERO;
    for round in 0..4 {
        let t = Instant::now();
        for _ in 0..n / 4 {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let m = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &opts).unwrap();
            std::hint::black_box(m);
        }
        if round > 0 {
            plain += t.elapsed();
        }
        let t = Instant::now();
        for _ in 0..n / 4 {
            let m = decode_body(&desc, &BodyRule::All, bytes, DecodeOptions::default()).unwrap();
            std::hint::black_box(m);
        }
        if round > 0 {
            strict += t.elapsed();
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (3 * n / 4) as f64;
    println!(
        "strict JSON on a {}-byte body: plain prost-reflect {:.2} us, with the strict check {:.2} us per decode (+{:.0}%)",
        bytes.len(),
        per(plain),
        per(strict),
        (per(strict) / per(plain) - 1.0) * 100.0
    );
}

fn main() {
    let keys: u64 = std::env::var("EDGE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000);
    println!("baseline RSS {:.1} MiB", rss_mib());
    // Buckets that refill in 1 ms: the periodic sweep (retain_recent)
    // alone keeps the map small.
    limiter_memory(
        "idle buckets",
        keys,
        1_000_000,
        100_000,
        1000,
        Duration::from_secs(1),
    );
    // Buckets busy for a minute (retain_recent can drop none): only the cap
    // bounds the map; memory follows the cap, not the number of keys.
    limiter_memory(
        "busy buckets",
        keys,
        200_000,
        100_000,
        1,
        Duration::from_secs(60),
    );
    // The same without an effective cap, to show what the cap saves.
    limiter_memory(
        "busy buckets, no cap",
        keys,
        usize::MAX,
        100_000,
        1,
        Duration::from_secs(60),
    );
    strict_json_cost();
}
