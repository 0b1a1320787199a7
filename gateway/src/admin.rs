//! The admin listener: liveness, readiness, what is loaded, and reload.
//!
//! It listens on its own address (loopback by default) because it can change
//! what the gateway serves and shows internals no client should see.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use http::StatusCode;
use serde_json::{json, Value};

use crate::error::{Error, FieldViolation};
use crate::state::Gateway;

pub fn app(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/routes", get(routes))
        .route("/admin/backends", get(backends))
        .route("/admin/config", get(config))
        .route("/admin/rate_limits", get(rate_limits))
        .route("/admin/reload", post(reload))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            Error::NotFound("no such admin endpoint; try /admin/config, /admin/routes, /admin/backends, /admin/rate_limits, /healthz, /readyz, POST /admin/reload".to_owned())
                .into_response()
        })
        .with_state(gw)
}

fn rfc3339(t: SystemTime) -> String {
    prost_types::Timestamp::from(t).to_string()
}

/// The process is up and answering; nothing more (a liveness probe must not
/// fail because a backend is down, or Kubernetes restarts a healthy gateway).
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Config loaded and listener up, not draining, and every discovery source
/// has answered or failed once. Readiness waits for a first answer so that
/// a new replica does not take traffic it would refuse with "no endpoints
/// yet"; it does not wait for a source that fails (a registry outage must
/// not keep every replica out of its load balancer, and backends with
/// static endpoints still serve): the failure is listed here and in
/// /admin/backends, and the instances are picked up when it answers.
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let s = gw.snapshot();
    let mut waiting = Vec::new();
    let mut failing = Vec::new();
    for b in s.backends.values() {
        let d = b.endpoints.status();
        if d.error.is_some() {
            failing.push(json!({"backend": b.name, "error": d.error}));
        } else if !d.resolved {
            waiting.push(b.name.clone());
        }
    }
    if gw.is_ready() && waiting.is_empty() {
        Json(json!({"status": "ready", "version": s.version, "discovery_failing": failing}))
            .into_response()
    } else if gw.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "waiting_for_discovery": waiting})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn routes(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let list: Vec<Value> = s
        .routes
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.template.to_string(),
                "grpc": format!("{}/{}", r.plan.grpc_method.parent_service().full_name(), r.plan.grpc_method.name()),
                "backend": r.backend.name,
                "body": match &r.plan.body {
                    crate::transcode::BodyRule::None => Value::Null,
                    crate::transcode::BodyRule::All => "*".into(),
                    crate::transcode::BodyRule::Field(f) => f.name().into(),
                },
                "response_body": r.plan.response_body.as_ref().map(|f| f.name()),
                "timeout_ms": r.timeout.as_millis() as u64,
                // The edge policy: auth mode, issuers, scopes, claims; rate
                // limits (with live key counts), CORS and request limits.
                "auth": r.edge.describe_auth(&s.edge),
                "limits": r.edge.describe_limits(&s.edge),
                "protocols": r.protocol_names(),
                // The response cache and the static fallback (docs/routes.md).
                "cache": r.cache.as_ref().map(|p| p.describe()),
                "fallback": r.fallback.as_ref().map(|f| f.describe()),
                // Whether requests are checked against buf.validate rules
                // (false: no rules, or `validate = false`).
                "validated": r.validator.is_some(),
                "source": r.source.to_string(),
            })
        })
        .collect();
    // Annotation bindings left out because another one took their method
    // and path: beside the routes, where an operator looks for a missing one.
    let warnings: Vec<String> = s.warnings.iter().map(ToString::to_string).collect();
    Json(json!({"version": s.version, "routes": list, "warnings": warnings}))
}

async fn backends(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let list: Vec<Value> = s
        .backends
        .values()
        .map(|b| {
            let st = b.status();
            let d = &st.discovery;
            let kind = d.kind.name();
            json!({
                "name": b.name,
                "source": if s.reflection_backends.contains(&b.name) {
                    format!("{kind} (descriptors from reflection)")
                } else {
                    kind.to_owned()
                },
                "timeout_ms": ms(b.timeout),
                "connect_timeout_ms": ms(b.connect_timeout),
                "discovery": {
                    "kind": kind,
                    "source": d.source,
                    "resolved": d.resolved,
                    // How old the endpoints in force are: time since the
                    // source last confirmed them. Grows while it fails.
                    "endpoints_age_ms": d.age().map(ms),
                    "last_success_at": d.last_success_at.map(rfc3339),
                    "last_change_ago_ms": d.last_change.map(|t| ms(t.elapsed())),
                    "index": d.version,
                    "state": match (d.error.is_some(), d.resolved) {
                        (true, true) => "failing (serving last known endpoints)",
                        (true, false) => "failing (no endpoints yet)",
                        (false, true) => "ok",
                        (false, false) => "waiting for first answer",
                    },
                    "error": d.error,
                    "failing_for_ms": d.failing_since.map(|t| ms(t.elapsed())),
                },
                "load_balancer": st.policy,
                "hash_key": st.hash_key,
                // Every endpoint ejected or failing health checks: calls
                // go to all of them anyway (Envoy's panic mode).
                "panic": st.panic,
                "in_flight": st.in_flight,
                "max_requests": st.max_requests,
                // Null unless `adaptive_concurrency` is configured.
                "adaptive_concurrency": st.adaptive.as_ref().map(|a| json!({
                    "algorithm": a.algorithm,
                    "limit": a.limit,
                    "in_flight": a.in_flight,
                    "min_limit": a.min_limit,
                    "max_limit": a.max_limit,
                    "min_rtt_ms": a.min_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    "shed": a.shed,
                })),
                "circuit_breaker": {
                    "state": st.breaker.state,
                    "retry_in_ms": st.breaker.retry_in.map(ms),
                    "window_calls": st.breaker.window_calls,
                    "window_failures": st.breaker.window_failures,
                },
                "counters": b.stats.snapshot().into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect::<serde_json::Map<String, Value>>(),
                "endpoints": st.endpoints.iter().map(|e| json!({
                    "address": e.address,
                    "label": e.label,
                    "weight": e.weight,
                    "health": e.state,
                    "health_check": e.health_check,
                    "in_rotation": e.in_rotation,
                    "ejection_lifted_by_max_ejection_percent": e.ejection_lifted,
                    "in_flight": e.in_flight,
                    "consecutive_failures": e.consecutive_failures,
                    "ejected_for_ms": e.ejected_for.map(ms),
                    "ejections": e.ejections,
                    "requests": e.requests,
                    "failures": e.failures,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"backends": list}))
}

async fn config(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let status = |l: &crate::state::ReloadStatus| {
        json!({
            "at": rfc3339(l.at),
            "trigger": l.trigger,
            "source": l.source,
            "consul_index": l.consul_index,
            "ok": l.error.is_none(),
            "error": l.error,
        })
    };
    let last = (**gw.reload.last.load()).as_ref().map(status);
    let last_refused = (**gw.reload.last_refused.load()).as_ref().map(status);
    Json(json!({
        "version": s.version,
        "loaded_at": rfc3339(s.loaded_at),
        "hash": s.config_digest,
        "source": s.origin.label(),
        "consul_index": match s.origin {
            crate::config::Origin::Consul { index } => Some(index),
            crate::config::Origin::File => None,
        },
        "config": {
            "path": s.config_path.display().to_string(),
            "fnv1a": format!("{:016x}", s.config_hash),
        },
        "descriptors": s.descriptor_files.iter().map(|f| json!({
            "path": f.path.display().to_string(),
            "kind": format!("{:?}", f.kind),
            "fnv1a": format!("{:016x}", f.content_hash),
        })).collect::<Vec<_>>(),
        "routes": s.routes.len(),
        "last_reload": last,
        "last_refused": last_refused,
        "reloads": {
            "succeeded": gw.reload.succeeded.load(Ordering::Relaxed),
            "failed": gw.reload.failed.load(Ordering::Relaxed),
        },
    }))
}

/// The rate-limit policies (where each keeps its buckets, how many keys it
/// holds here) and the Redis store's state: up or down, its last error and
/// how many decisions fell back, by reason.
async fn rate_limits(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let rl = &s.edge.rate_limits;
    Json(json!({
        "policies": rl.policies.iter().map(|p| json!({
            "policy": p.def.name,
            "store": if p.store.is_some() { "redis" } else { "local" },
            "key": p.def.key.to_string(),
            "rate": p.def.rate,
            "per_ms": p.def.per.as_millis() as u64,
            "burst": p.def.burst,
            "local_keys": p.len(),
        })).collect::<Vec<_>>(),
        "redis": rl.store.as_ref().map(|st| st.describe()),
    }))
}

async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match crate::reload::reload(&gw, "admin").await {
        Ok(version) => Json(json!({"version": version})).into_response(),
        Err(errors) => Error::InvalidFields {
            message: "the new configuration was rejected; the previous one keeps serving"
                .to_owned(),
            violations: errors
                .0
                .iter()
                .map(|e| FieldViolation {
                    field: e.field.clone(),
                    description: e.to_string(),
                })
                .collect(),
        }
        .into_response(),
    }
}

/// Prometheus text format: the recorded metrics, plus per-backend gauges and
/// counters read from the live backends at scrape time (so a backend removed
/// by a reload leaves no stale series behind).
async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    use crate::telemetry::metrics::sample;
    let mut out = crate::telemetry::metrics::handle().render();
    let s = gw.snapshot();
    // Rendered from the snapshot being served, so there is exactly one
    // series and the previous config's hash leaves with it.
    out.push_str("# HELP gateway_config_info Always 1; hash and source of the configuration being served (equal hashes: replicas serve the same config)\n# TYPE gateway_config_info gauge\n");
    sample(
        &mut out,
        "gateway_config_info",
        &[("hash", &s.config_digest), ("source", s.origin.label())],
        1.0,
    );
    out.push_str("# HELP gateway_backend_endpoints Endpoints per backend by health state\n# TYPE gateway_backend_endpoints gauge\n");
    let statuses: Vec<_> = s.backends.values().map(|b| (b, b.status())).collect();
    for (b, st) in &statuses {
        let mut by_state: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
        for e in &st.endpoints {
            *by_state.entry(e.state).or_default() += 1;
        }
        if by_state.is_empty() {
            sample(
                &mut out,
                "gateway_backend_endpoints",
                &[("backend", &b.name), ("state", "none")],
                0.0,
            );
        }
        for (state, n) in by_state {
            sample(
                &mut out,
                "gateway_backend_endpoints",
                &[("backend", &b.name), ("state", state)],
                f64::from(n),
            );
        }
    }
    out.push_str("# HELP gateway_backend_endpoint_list_age_seconds Time since the discovery source last confirmed the endpoints in force\n# TYPE gateway_backend_endpoint_list_age_seconds gauge\n");
    for (b, st) in &statuses {
        if let Some(age) = st.discovery.age() {
            sample(
                &mut out,
                "gateway_backend_endpoint_list_age_seconds",
                &[("backend", &b.name), ("source", st.discovery.kind.name())],
                age.as_secs_f64(),
            );
        }
    }
    out.push_str("# HELP gateway_backend_discovery_failing 1 while the backend's discovery source fails (the last known endpoints keep serving)\n# TYPE gateway_backend_discovery_failing gauge\n");
    for (b, st) in &statuses {
        let failing = if st.discovery.error.is_some() {
            1.0
        } else {
            0.0
        };
        sample(
            &mut out,
            "gateway_backend_discovery_failing",
            &[("backend", &b.name)],
            failing,
        );
    }
    out.push_str("# HELP gateway_backend_panic 1 while no endpoint of the backend is in rotation and calls go to all of them (panic mode)\n# TYPE gateway_backend_panic gauge\n");
    for (b, st) in &statuses {
        sample(
            &mut out,
            "gateway_backend_panic",
            &[("backend", &b.name)],
            if st.panic { 1.0 } else { 0.0 },
        );
    }
    out.push_str("# HELP gateway_circuit_breaker_state 1 for the state each backend's circuit breaker is in\n# TYPE gateway_circuit_breaker_state gauge\n");
    for (b, st) in &statuses {
        for state in ["closed", "open", "half_open"] {
            let v = if st.breaker.state.replace('-', "_") == state {
                1.0
            } else {
                0.0
            };
            sample(
                &mut out,
                "gateway_circuit_breaker_state",
                &[("backend", &b.name), ("state", state)],
                v,
            );
        }
    }
    if let Some(tls) = &s.tls {
        tls.render(&mut out);
    }
    if let Some(store) = &s.edge.rate_limits.store {
        store.render(&mut out);
    }
    if let Some(cache) = &s.cache {
        cache.render(&mut out);
    }
    out.push_str("# HELP gateway_backend_in_flight Calls in flight per backend\n# TYPE gateway_backend_in_flight gauge\n");
    for (b, st) in &statuses {
        sample(
            &mut out,
            "gateway_backend_in_flight",
            &[("backend", &b.name)],
            f64::from(st.in_flight),
        );
    }
    // Only backends with `adaptive_concurrency`: the others have no limit.
    let adaptive: Vec<_> = statuses
        .iter()
        .filter_map(|(b, st)| st.adaptive.as_ref().map(|a| (&b.name, a)))
        .collect();
    if !adaptive.is_empty() {
        out.push_str("# HELP gateway_adaptive_concurrency_limit Calls that may wait for the backend's answer at once, as its adaptive concurrency limit now says\n# TYPE gateway_adaptive_concurrency_limit gauge\n");
        for (name, a) in &adaptive {
            sample(
                &mut out,
                "gateway_adaptive_concurrency_limit",
                &[("backend", name)],
                f64::from(a.limit),
            );
        }
        out.push_str("# HELP gateway_adaptive_concurrency_in_flight Calls waiting for the backend's answer under its adaptive concurrency limit\n# TYPE gateway_adaptive_concurrency_in_flight gauge\n");
        for (name, a) in &adaptive {
            sample(
                &mut out,
                "gateway_adaptive_concurrency_in_flight",
                &[("backend", name)],
                f64::from(a.in_flight),
            );
        }
        out.push_str("# HELP gateway_adaptive_shed_total Calls answered 503 at once because the backend's adaptive concurrency limit was reached\n# TYPE gateway_adaptive_shed_total counter\n");
        for (name, a) in &adaptive {
            sample(
                &mut out,
                "gateway_adaptive_shed_total",
                &[("backend", name)],
                a.shed as f64,
            );
        }
    }
    // Counters kept as atomics by each backend: calls, retries, ejections,
    // breaker transitions, refusals.
    let mut names: Vec<&'static str> = Vec::new();
    for b in s.backends.values() {
        for (k, _) in b.stats.snapshot() {
            if !names.contains(&k) {
                names.push(k);
            }
        }
    }
    for name in names {
        let metric = format!("gateway_backend_{name}_total");
        let help = crate::upstream::BackendStats::help(name);
        out.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} counter\n"
        ));
        for b in s.backends.values() {
            if let Some((_, v)) = b.stats.snapshot().into_iter().find(|(k, _)| *k == name) {
                sample(&mut out, &metric, &[("backend", &b.name)], v as f64);
            }
        }
    }
    out.push_str("# HELP gateway_config_reload_failures_total Reloads rejected since start\n# TYPE gateway_config_reload_failures_total counter\n");
    sample(
        &mut out,
        "gateway_config_reload_failures_total",
        &[],
        gw.reload.failed.load(Ordering::Relaxed) as f64,
    );
    // Read from /proc now, at scrape time: nothing per request.
    crate::telemetry::process::render(&mut out);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
