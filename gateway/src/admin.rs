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
use tonic::Code;

use crate::server::Gateway;
use crate::transcode::RpcStatus;

pub fn app(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/routes", get(routes))
        .route("/admin/backends", get(backends))
        .route("/admin/config", get(config))
        .route("/admin/reload", post(reload))
        .fallback(|| async {
            RpcStatus::new(StatusCode::NOT_FOUND, Code::NotFound, "no such admin endpoint; try /admin/config, /admin/routes, /admin/backends, /healthz, /readyz, POST /admin/reload")
                .into_response()
                .map(axum::body::Body::from)
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

/// Config loaded and listener up, and not draining.
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() {
        Json(json!({"status": "ready", "version": gw.snapshot().version})).into_response()
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
                "grpc": format!("{}/{}", r.grpc_method.parent_service().full_name(), r.grpc_method.name()),
                "backend": r.backend.name,
                "body": match &r.body {
                    crate::transcode::BodyRule::None => Value::Null,
                    crate::transcode::BodyRule::All => "*".into(),
                    crate::transcode::BodyRule::Field(f) => f.name().into(),
                },
                "response_body": r.response_body.as_ref().map(|f| f.name()),
                "timeout_ms": r.timeout.as_millis() as u64,
                // Filled in by the auth and rate-limit layers once they exist.
                "auth": "none",
                "limits": Value::Null,
                "source": r.source.to_string(),
            })
        })
        .collect();
    Json(json!({"version": s.version, "routes": list}))
}

async fn backends(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let list: Vec<Value> = s
        .backends
        .values()
        .map(|b| {
            json!({
                "name": b.name,
                "source": if s.reflection_backends.contains(&b.name) { "static (descriptors from reflection)" } else { "static" },
                "timeout_ms": b.timeout.as_millis() as u64,
                "connect_timeout_ms": b.connect_timeout.as_millis() as u64,
                "endpoints": b.endpoints.iter().map(|e| json!({
                    "address": e.addr,
                    // Static endpoints are not health-checked yet: every one is in rotation.
                    "health": "unknown",
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"backends": list}))
}

async fn config(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.snapshot();
    let last = gw.reload.last.load();
    let last = (**last).as_ref().map(|l| {
        json!({
            "at": rfc3339(l.at),
            "trigger": l.trigger,
            "ok": l.error.is_none(),
            "error": l.error,
        })
    });
    Json(json!({
        "version": s.version,
        "loaded_at": rfc3339(s.loaded_at),
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
        "reloads": {
            "succeeded": gw.reload.succeeded.load(Ordering::Relaxed),
            "failed": gw.reload.failed.load(Ordering::Relaxed),
        },
    }))
}

async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match crate::reload::reload(&gw, "admin").await {
        Ok(version) => Json(json!({"version": version})).into_response(),
        Err(errors) => {
            let mut status = RpcStatus::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                "the new configuration was rejected; the previous one keeps serving",
            );
            status.details = errors
                .0
                .iter()
                .map(|e| {
                    json!({
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{
                            "field": e.field,
                            "description": e.to_string(),
                        }],
                    })
                })
                .collect();
            status.into_response().map(axum::body::Body::from)
        }
    }
}
