//! Scenarios on gateways configured apart from the main one, each compared
//! with the main gateway's bare small GET in the same rounds:
//!
//! - `full edge RS256` and `full edge ES256`: the small GET with what an
//!   operator turns on at the edge: a required JWT (RS256 or ES256, keys
//!   from a JWKS the bench serves and the gateway caches), a rate limit
//!   keyed by the token's subject that never refuses, CORS (every request
//!   carries an allowed `Origin`) and the access log written (to stderr,
//!   which the bench discards). The target is at most 1.25 times the bare
//!   route's CPU per request.
//! - `small GET 2 workers`: the bare small GET with `server.worker_threads
//!   = 2`, the default on a two-core machine. The target is within 10% of
//!   the one-thread figure.
//!
//! Each round runs the variant, then the main gateway's small GET, then the
//! direct gRPC call, so the ratio is taken per round (same noise) and its
//! median reported.

use std::time::Duration;

use anyhow::Result;
use http::{HeaderName, HeaderValue};
use serde_json::json;

use super::profile::{profiled, Profile, PROFILED_RUN};
use super::{
    gateway_run, grpc_load, median, progress, start_gateway_with_log, write_config, HttpCall,
    Limits, Proc, RunResult, Scenario, Setup,
};

/// The variants' rows, and for each its median ratio to the bare small GET
/// measured in the same rounds.
pub struct Measured {
    pub rows: Vec<(&'static str, RunResult, RunResult)>,
    pub ratios: Vec<(&'static str, f64, f64)>,
    pub profiles: Vec<(&'static str, Profile)>,
}

/// What a variant's gateway adds to the bench config, and how it is called.
struct Variant {
    name: &'static str,
    workers: Option<usize>,
    /// Config appended to the bench routes.toml.
    extra: String,
    /// `RUST_LOG` of the gateway (the access log is target `access`).
    log: &'static str,
    call: HttpCall,
}

/// The edge route of the full-edge variants, and its settings.
fn edge_config(rs_jwks: &str, es_jwks: &str) -> String {
    format!(
        "[auth.issuers.rs]\nissuer = \"https://rs.bench\"\nalgorithms = [\"RS256\"]\njwks_url = \"{rs_jwks}\"\n\n\
         [auth.issuers.es]\nissuer = \"https://es.bench\"\nalgorithms = [\"ES256\"]\njwks_url = \"{es_jwks}\"\n\n\
         [cors]\nallowed_origins = [\"https://app.bench\"]\n\n\
         [rate_limits.policies.edge]\nkey = \"subject\"\nrate = 100000000\n\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/v1/edge/items/{{id}}\"\ngrpc = \"bench.v1.Bench/GetItem\"\n\
         auth = \"required\"\nrate_limit = [\"edge\"]\n\n"
    )
}

/// A bearer token of `iss` for the subject `bench-user`, valid for a day.
fn bearer(key: &gateway_tests::edge::TestKey, iss: &str) -> Result<HeaderValue> {
    let now = gateway_tests::edge::now();
    let token =
        key.sign(&json!({"iss": iss, "sub": "bench-user", "iat": now, "exp": now + 86_400}));
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// Runs the variants `--only` keeps. `main`: the main gateway and its port.
pub async fn run(setup: &Setup<'_>, small_get: &Scenario, main: (&Proc, u16)) -> Result<Measured> {
    let Setup {
        opts,
        bin,
        backend_addr,
        work,
        channel,
        ticks,
        profiler,
    } = *setup;
    let names = ["full edge RS256", "full edge ES256", "small GET 2 workers"];
    let chosen: Vec<&str> = names
        .into_iter()
        .filter(|n| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.split(',').any(|part| n.contains(part)))
        })
        .collect();
    let mut out = Measured {
        rows: Vec::new(),
        ratios: Vec::new(),
        profiles: Vec::new(),
    };
    if chosen.is_empty() {
        return Ok(out);
    }
    let (rsa, ec, _) = gateway_tests::edge::keys();
    let jwks_rs = gateway_tests::edge::Jwks::start(&[rsa], "max-age=3600").await;
    let jwks_es = gateway_tests::edge::Jwks::start(&[ec], "max-age=3600").await;
    let edge_call = |token: HeaderValue| HttpCall {
        method: http::Method::GET,
        path: "/v1/edge/items/12345".into(),
        body: bytes::Bytes::new(),
        content_type: "application/json",
        headers: vec![
            (http::header::AUTHORIZATION, token),
            (
                http::header::ORIGIN,
                HeaderValue::from_static("https://app.bench"),
            ),
            (
                HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("bench"),
            ),
        ],
    };
    let edge = edge_config(&jwks_rs.url, &jwks_es.url);
    let variants = [
        Variant {
            name: "full edge RS256",
            workers: opts.workers,
            extra: edge.clone(),
            log: "warn,access=info",
            call: edge_call(bearer(rsa, "https://rs.bench")?),
        },
        Variant {
            name: "full edge ES256",
            workers: opts.workers,
            extra: edge,
            log: "warn,access=info",
            call: edge_call(bearer(ec, "https://es.bench")?),
        },
        Variant {
            name: "small GET 2 workers",
            workers: Some(2),
            extra: String::new(),
            log: "warn",
            call: small_get.http.clone(),
        },
    ];
    let dur = Duration::from_secs(opts.seconds);
    let warm = Duration::from_millis(500);
    for v in variants.into_iter().filter(|v| chosen.contains(&v.name)) {
        let dir = work.join(v.name.replace(' ', "-"));
        let (config, port, admin) =
            write_config(&dir, backend_addr, 8, v.workers, false, Limits::None)?;
        let mut text = std::fs::read_to_string(&config)?;
        text.push_str(&v.extra);
        std::fs::write(&config, text)?;
        let gw = start_gateway_with_log(bin, &config, admin, v.log).await?;
        eprintln!("{} gateway pid {} ready", v.name, gw.0.id());
        let first = gateway_run(&gw, port, &v.call, warm, None, ticks).await?;
        if first.requests == 0 {
            anyhow::bail!(
                "{}: every warm-up request failed ({} errors): check the variant's config in {}",
                v.name,
                first.errors,
                config.display()
            );
        }
        let (mut runs, mut bare, mut direct, mut ratios) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..opts.rounds {
            eprintln!("{}: round {}/{}", v.name, round + 1, opts.rounds);
            let r = progress(
                "gateway",
                gateway_run(&gw, port, &v.call, dur, None, ticks).await?,
            );
            let b = progress(
                "bare small GET",
                gateway_run(main.0, main.1, &small_get.http, dur, None, ticks).await?,
            );
            if let (Some(x), Some(y)) = (r.gateway_cpu_us_per_req, b.gateway_cpu_us_per_req) {
                ratios.push(x / y);
            }
            runs.push(r);
            bare.push(b);
            direct.push(progress(
                "direct",
                grpc_load(channel.clone(), small_get.grpc.clone(), dur, None).await?,
            ));
        }
        let profile = profiled(profiler, &gw, v.name, async {
            gateway_run(&gw, port, &v.call, PROFILED_RUN, None, ticks).await
        })
        .await?;
        if let Some(p) = profile {
            out.profiles.push((v.name, p));
        }
        ratios.sort_by(f64::total_cmp);
        let bare = median(bare);
        if let Some(ratio) = ratios.get(ratios.len() / 2) {
            out.ratios
                .push((v.name, *ratio, bare.gateway_cpu_us_per_req.unwrap_or(0.0)));
        }
        out.rows.push((v.name, median(runs), median(direct)));
    }
    Ok(out)
}

/// Each variant's CPU per request against the bare small GET's.
pub fn print(measured: &Measured) {
    for (name, ratio, bare) in &measured.ratios {
        let target = if name.starts_with("full edge") {
            1.25
        } else {
            1.10
        };
        println!(
            "{name}: {:.2}x the bare small GET's CPU per request (median of per-round ratios; bare {bare:.1} us), target at most {target:.2}x: {}",
            ratio,
            if *ratio <= target { "met" } else { "missed" }
        );
    }
}
