//! The performance targets, each reported as met or missed with the figure
//! of this run, so a run answers "where do we stand" by itself. A target
//! whose scenario did not run (`--only`) is left out.

use serde_json::json;

use super::variants::Measured;
use super::RunResult;

/// Figures of the full run besides the scenario table.
#[derive(Default)]
pub struct Extra {
    /// p99 added over direct gRPC at half the gateway's maximum rate.
    pub added_p99_get: Option<f64>,
    pub added_p99_post: Option<f64>,
    /// Resident memory idle with the repository's routes.toml, MiB.
    pub rss_example: Option<f64>,
    /// The same, idle again after serving requests through it.
    pub rss_example_served: Option<f64>,
    /// With 10,000 routes and 1,000 idle keep-alive connections, MiB.
    pub rss_10k_1000: Option<f64>,
}

/// The body size in a `POST <bytes> B` scenario name.
fn post_bytes(name: &str) -> Option<usize> {
    name.strip_prefix("POST ")?.strip_suffix(" B")?.parse().ok()
}

/// One target: what, the figure, the bound, and whether lower is better.
struct Target {
    what: String,
    figure: f64,
    bound: f64,
    unit: &'static str,
    /// At least `bound` (throughput ratio) rather than at most.
    at_least: bool,
}

/// Prints the targets this run measured and returns them for the report.
pub fn targets(
    table: &[(&str, RunResult, RunResult)],
    variants: &Measured,
    extra: &Extra,
) -> serde_json::Value {
    let row = |pred: &dyn Fn(&str) -> bool| {
        table
            .iter()
            .find(|(n, _, _)| pred(n))
            .map(|(_, g, d)| (g, d))
    };
    let cpu = |pred: &dyn Fn(&str) -> bool| row(pred).and_then(|(g, _)| g.gateway_cpu_us_per_req);
    let mut list: Vec<Target> = Vec::new();
    let mut at_most = |what: &str, figure: Option<f64>, bound: f64, unit: &'static str| {
        if let Some(figure) = figure {
            list.push(Target {
                what: what.to_owned(),
                figure,
                bound,
                unit,
                at_least: false,
            });
        }
    };
    for (name, ratio, _) in &variants.ratios {
        let bound = if name.starts_with("full edge") {
            1.25
        } else {
            1.10
        };
        at_most(
            &format!("{name}: CPU per request against the bare small GET"),
            Some(*ratio),
            bound,
            "x",
        );
    }
    let small_get = cpu(&|n| n == "small GET");
    at_most("small GET: CPU per request", small_get, 15.0, "us");
    at_most(
        "POST 1 KiB: CPU per request",
        cpu(&|n| post_bytes(n).is_some_and(|b| b < 4096)),
        22.0,
        "us",
    );
    at_most(
        "POST 64 KiB: CPU per request",
        cpu(&|n| post_bytes(n).is_some_and(|b| b >= 4096)),
        200.0,
        "us",
    );
    at_most(
        "stream of 10 items: CPU per call",
        cpu(&|n| n.starts_with("stream")),
        30.0,
        "us",
    );
    for name in ["gRPC-Web unary", "Connect unary"] {
        let ratio = cpu(&|n| n == name).zip(small_get).map(|(x, y)| x / y);
        at_most(
            &format!("{name}: CPU per request against the REST small GET"),
            ratio,
            1.10,
            "x",
        );
    }
    at_most(
        "resident memory idle, the repository's routes.toml",
        extra.rss_example,
        12.0,
        "MiB",
    );
    at_most(
        "the same, idle again after 600 requests",
        extra.rss_example_served,
        12.0,
        "MiB",
    );
    at_most(
        "resident memory, 10,000 routes and 1,000 idle connections",
        extra.rss_10k_1000,
        64.0,
        "MiB",
    );
    at_most(
        "small GET: p99 added at half load",
        extra.added_p99_get,
        200.0,
        "us",
    );
    at_most(
        "POST 1 KiB: p99 added at half load",
        extra.added_p99_post,
        200.0,
        "us",
    );
    if let Some((g, d)) = row(&|n| n == "small GET") {
        list.push(Target {
            what: "small GET: throughput against direct gRPC".into(),
            figure: g.rps / d.rps,
            bound: 0.80,
            unit: "x",
            at_least: true,
        });
    }
    if list.is_empty() {
        return json!([]);
    }
    println!("\ntargets (this run):");
    let mut out = Vec::new();
    for t in &list {
        let met = if t.at_least {
            t.figure >= t.bound
        } else {
            t.figure <= t.bound
        };
        let (figure, bound) = if t.unit == "x" {
            (format!("{:.2}x", t.figure), format!("{:.2}x", t.bound))
        } else {
            (
                format!("{:.1} {}", t.figure, t.unit),
                format!("{:.0} {}", t.bound, t.unit),
            )
        };
        println!(
            "  {:<7} {:<62} {figure:>10} (target {} {bound})",
            if met { "met" } else { "MISSED" },
            t.what,
            if t.at_least { "at least" } else { "at most" },
        );
        out.push(json!({"target": t.what, "figure": t.figure, "bound": t.bound, "unit": t.unit, "at_least": t.at_least, "met": met}));
    }
    json!(out)
}
