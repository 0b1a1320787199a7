//! Degraded answers: what a route answers while its backend is unavailable
//! (circuit open, no endpoint, too many calls in flight, deadline exceeded,
//! UNAVAILABLE after retries). A stale cached answer comes first (see the
//! route's `cache.stale_if_error`), then the route's static `fallback`;
//! with neither, the backend's error goes out as it would without.
//!
//! Each degraded answer says so (`Gateway-Degraded: stale|static`, and
//! RFC 7234's `Warning: 110` on stale ones), is counted in
//! `gateway_fallbacks_total{route,kind}` and logged at debug level: a
//! warning per request would flood the log exactly when the backend is
//! down; the metric is what to alert on.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use tonic::Code;

use super::{Entry, Kind, LazyCounter};
use crate::telemetry::metrics::FALLBACKS;

use crate::upstream::CallError;

/// A route's static fallback, checked against its reply type at load.
pub struct Fallback {
    /// The configured status; `None`: the route's success status.
    status: Option<StatusCode>,
    /// The reply message's wire bytes.
    raw: Bytes,
    /// The answer, rendered on first use like a backend reply would be
    /// (the transcoding settings are the snapshot's, made after routes).
    rendered: OnceLock<Arc<Entry>>,
    route: metrics::SharedString,
    counter: LazyCounter,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("status", &self.status)
            .field("bytes", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// Whether a failed call means the backend is unavailable, which a
/// degraded answer may stand in for; a backend's own error (NOT_FOUND,
/// INVALID_ARGUMENT, ...) is its answer and goes out as it is.
pub fn unavailable(e: &CallError) -> bool {
    matches!(code(e), Code::Unavailable | Code::DeadlineExceeded)
}

/// The gRPC code a failed call ended with, whether the gateway refused to
/// call or the backend answered.
pub fn code(e: &CallError) -> Code {
    match e {
        CallError::Refused { code, .. } => *code,
        CallError::Upstream { status, .. } => status.code(),
    }
}

/// Counts (in `counter`, registered on first use) and logs one degraded
/// answer of `route`.
pub(crate) fn record(route: &metrics::SharedString, kind: Kind, counter: &LazyCounter) {
    tracing::debug!(
        route = &**route,
        fallback = kind.label(),
        "backend unavailable: answered with a degraded answer"
    );
    counter.increment(
        || metrics::counter!(FALLBACKS, "route" => route.clone(), "kind" => kind.label()),
    );
}

impl Fallback {
    pub(super) fn new(status: Option<StatusCode>, raw: Bytes, route: &Arc<str>) -> Fallback {
        Fallback {
            status,
            raw,
            rendered: OnceLock::new(),
            route: metrics::SharedString::from_shared(route.clone()),
            counter: LazyCounter::default(),
        }
    }

    /// The static answer, as the route's reply would be rendered.
    pub async fn answer(
        &self,
        settings: &crate::transcode::Settings,
        plan: &crate::transcode::Plan,
    ) -> Arc<Entry> {
        if let Some(e) = self.rendered.get() {
            return e.clone();
        }
        let resp = crate::transcode::response::answer(
            settings,
            plan,
            &tonic::metadata::MetadataMap::new(),
            &self.raw,
        );
        let (parts, body) = resp.into_parts();
        let body = super::collect(body).await;
        let entry = Arc::new(Entry {
            status: self.status.unwrap_or(parts.status),
            etag: super::conditional::etag(&body),
            headers: parts.headers,
            body,
            stored: Instant::now(),
            fresh_for: std::time::Duration::ZERO,
            keep_for: std::time::Duration::ZERO,
        });
        self.rendered.get_or_init(|| entry).clone()
    }

    /// For /admin/routes.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status.map(|s| s.as_u16()),
            "bytes": self.raw.len(),
        })
    }

    /// Counts and logs one use.
    pub fn record(&self) {
        record(&self.route, Kind::Static, &self.counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unavailable_backend_is_degraded() {
        let refused = |code| CallError::Refused {
            code,
            message: String::new(),
        };
        let upstream = |code| CallError::Upstream {
            status: tonic::Status::new(code, "x"),
            addr: String::new(),
            attempts: 1,
        };
        assert!(unavailable(&refused(Code::Unavailable)));
        assert!(unavailable(&refused(Code::DeadlineExceeded)));
        assert!(unavailable(&upstream(Code::Unavailable)));
        assert!(unavailable(&upstream(Code::DeadlineExceeded)));
        assert!(!unavailable(&upstream(Code::NotFound)));
        assert!(!unavailable(&upstream(Code::Internal)));
        assert!(!unavailable(&refused(Code::ResourceExhausted)));
    }
}
