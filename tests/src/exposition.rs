//! The Prometheus text format as the Prometheus project's own Python
//! client parser reads it: what the metrics tests check /metrics against.

use std::collections::HashMap;
use std::process::{Command, Stdio};

/// One sample as the reference parser read it.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the exposition with the Prometheus project's own Python client
/// parser (`prometheus_client.parser`), the reference implementation of the
/// text format. (The Rust `prometheus-parse` crate mis-reads legal braces
/// inside label values, which route templates always have.)
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let rows: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&run_parser(SCRIPT, text)).unwrap();
    rows.into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// Each metric family as the reference parser read it: name (without
/// `_total` for counters), type and HELP text (empty when there is none).
pub fn parse_families(text: &str) -> Vec<(String, String, String)> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = [[f.name, f.type, f.documentation] for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(out))
"#;
    serde_json::from_slice(&run_parser(SCRIPT, text)).unwrap()
}

/// Runs `script` with the exposition on stdin; its stdout.
fn run_parser(script: &str, text: &str) -> Vec<u8> {
    ensure_reference_parser();
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        panic!("the reference parser is missing: python3 -m pip install prometheus-client (.ci/run installs it)");
    }
    assert!(
        out.status.success(),
        "not valid Prometheus text format:\n{stderr}\n{text}"
    );
    out.stdout
}

/// Installs the parser from PyPI on first use when it is missing, so the
/// README's test command works on a fresh machine (`.ci/run` installs it too).
fn ensure_reference_parser() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let have = Command::new("python3")
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            eprintln!("installing prometheus-client (the reference text-format parser) with pip");
            let _ = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "prometheus-client",
                ])
                .status();
        }
    });
}

/// Sum of the samples named `name` whose labels include all of `want`.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0
}
