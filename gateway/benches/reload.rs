//! How long a reload takes for a large config: 1,000 routes over 50
//! descriptor files (.proto sources, compiled in-process each time), the
//! same work `POST /admin/reload` and a file change do.
//!
//! Run: `cargo bench -p gateway --bench reload`

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use gateway::reload::{self, ReloadState};

const FILES: usize = 50;
const METHODS_PER_FILE: usize = 20;

fn main() {
    let dir = std::env::temp_dir().join(format!("gateway-reload-bench-{}", std::process::id()));
    let descriptors = dir.join("descriptors");
    std::fs::create_dir_all(&descriptors).expect("temp dir");
    let mut config = String::from(
        "[server]\ndescriptors = \"descriptors\"\nwatch = false\n\n[backends.b]\nendpoints = [\"127.0.0.1:1\"]\n\n",
    );
    for f in 0..FILES {
        let mut proto = format!(
            "syntax = \"proto3\";\npackage bench.s{f};\nimport \"google/protobuf/timestamp.proto\";\n\
             message Item {{ int64 id = 1; string name = 2; repeated string tags = 3; google.protobuf.Timestamp at = 4; Inner inner = 5; }}\n\
             message Inner {{ string a = 1; int32 b = 2; }}\n\
             message Req {{ int64 id = 1; Item item = 2; string filter = 3; }}\n\
             service S{f} {{\n"
        );
        for m in 0..METHODS_PER_FILE {
            writeln!(proto, "  rpc M{m}(Req) returns (Item);").unwrap();
            write!(
                config,
                "[[routes]]\nmethod = \"POST\"\npath = \"/v1/s{f}/m{m}/{{id}}/items/{{item.inner.a}}\"\ngrpc = \"bench.s{f}.S{f}/M{m}\"\nbackend = \"b\"\nbody = \"item\"\n\n"
            )
            .unwrap();
        }
        proto.push_str("}\n");
        std::fs::write(descriptors.join(format!("s{f}.proto")), proto).expect("write proto");
    }
    let path = dir.join("routes.toml");
    std::fs::write(&path, config).expect("write routes.toml");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let state = ReloadState::default();
    let mut times: Vec<Duration> = Vec::new();
    let mut routes = 0;
    for i in 0..11 {
        let start = Instant::now();
        let snap = rt
            .block_on(reload::load(&path, None, &state))
            .unwrap_or_else(|e| panic!("bench config rejected:\n{e}"));
        let took = start.elapsed();
        routes = snap.routes.len();
        // The first run warms the page cache and allocator; it is not counted.
        if i > 0 {
            times.push(took);
        }
    }
    times.sort();
    println!(
        "reload: {routes} routes, {FILES} descriptor files: min {:.1} ms, median {:.1} ms, max {:.1} ms ({} runs)",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
