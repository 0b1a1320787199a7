//! The handler's path for routes with `cache` (and the degraded answers of
//! every unary route): between transcoding the request and calling the
//! backend, the cache is asked; misses of one key are coalesced into one
//! call; a 2xx answer is kept; an unavailable backend is answered for by
//! a stale entry or the route's static fallback (see `crate::cache`).

use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::Response;
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::cache::{self, Entry, Key, Kind, Policy, Served, Shared, Turn};
use crate::error::Error;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::RequestInfo;
use crate::upstream::CallError;

/// What the backend call of a request needs besides the route.
pub(super) struct Call<'a> {
    pub parts: &'a Parts,
    /// The request message, encoded.
    pub request: Bytes,
    pub metadata: MetadataMap,
    pub timeout: Duration,
}

/// A GET to a route with `cache`: a fresh entry, or the backend's answer
/// (one call for all concurrent misses of the key), or a degraded answer.
pub(super) async fn answer(
    snap: &Snapshot,
    route: &Route,
    policy: &Policy,
    call: Call<'_>,
    info: &mut RequestInfo,
) -> Response<Body> {
    let headers = &call.parts.headers;
    let varied = match call.parts.extensions.get::<cache::Varied>() {
        Some(v) => std::borrow::Cow::Borrowed(&v.0[..]),
        // Unreachable through the pipeline; a request without the route
        // stage's values keys on what is left of its headers.
        None => std::borrow::Cow::Owned(cache::Varied::of(&policy.vary, headers).0.into_vec()),
    };
    let message = cache::canonical(&route.plan.input, &call.request);
    let key = Key::new(policy.id, &message, &varied);
    let now = Instant::now();
    let bypass = policy.allow_no_cache && cache::conditional::client_refuses_cached(headers);
    if !bypass {
        if let Some(e) = policy.store.get(&key).filter(|e| e.is_fresh(now)) {
            policy.hit();
            info.grpc_code = Some(Code::Ok as i32);
            return cache::respond(&e, Some(&policy.directives), headers, Served::Hit, now);
        }
    }
    policy.miss();
    let timeout = call.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut call = Some(call);
    loop {
        match policy.store.turn(key.clone()) {
            Turn::Wait(rx) => {
                // Within the request's own deadline: the leader's may be
                // longer.
                let waited = tokio::time::timeout_at(deadline, cache::wait(rx)).await;
                match waited {
                    Ok(Some(shared)) => {
                        return deliver(route, Some(policy), &shared, headers, info)
                    }
                    // A leader that went away leaves no answer: take a
                    // turn again.
                    Ok(None) => {}
                    Err(_) => {
                        let e =
                            Error::DeadlineExceeded(crate::upstream::deadline::exceeded_message(
                                &route.backend.name,
                                timeout,
                            ));
                        info.grpc_code = Some(e.code() as i32);
                        return e.into_response();
                    }
                }
            }
            Turn::Lead(leader) => {
                let Some(call) = call.take() else {
                    unreachable!("a request leads at most once: it returns after")
                };
                let (shared, own) = fetch(snap, route, Some(policy), call, info, &leader).await;
                // Not shared: the waiters take turns of their own.
                if let Some(shared) = shared {
                    leader.finish(shared);
                }
                return own;
            }
        }
    }
}

/// A waiter's answer from its leader's outcome.
fn deliver(
    route: &Route,
    policy: Option<&Policy>,
    shared: &Shared,
    headers: &http::HeaderMap,
    info: &mut RequestInfo,
) -> Response<Body> {
    let now = Instant::now();
    let cc = policy.map(|p| &p.directives);
    match shared {
        Shared::Answer(e, Kind::Fresh) => {
            info.grpc_code = Some(Code::Ok as i32);
            cache::respond(e, cc, headers, Served::Fetched, now)
        }
        Shared::Answer(e, Kind::Stale) => {
            info.grpc_code = Some(Code::Unavailable as i32);
            if let Some(p) = policy {
                p.served_stale();
            }
            cache::respond(e, cc, headers, Served::Stale, now)
        }
        Shared::Answer(e, Kind::Static) => {
            info.grpc_code = Some(Code::Unavailable as i32);
            if let Some(f) = &route.fallback {
                f.record();
            }
            cache::respond(e, cc, headers, Served::Static, now)
        }
        Shared::Failed(err) => {
            info.grpc_code = Some(err.code() as i32);
            err.clone().into_response()
        }
    }
}

/// The leader's call: its own answer, and what its waiters get (`None`:
/// an answer for the leader alone).
async fn fetch(
    snap: &Snapshot,
    route: &Route,
    policy: Option<&Policy>,
    call: Call<'_>,
    info: &mut RequestInfo,
    leader: &cache::Leader<'_>,
) -> (Option<Shared>, Response<Body>) {
    let parts = call.parts;
    // A deadline the leader's client set shorter than the route's is its
    // own: a call it cut short says nothing to waiters with more time.
    let own_deadline = call.timeout < route.timeout;
    let result = route
        .backend
        .call(crate::upstream::CallRequest {
            path: route.grpc_path.clone(),
            body: call.request,
            metadata: call.metadata,
            timeout: call.timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: super::client_ip(parts),
            metrics: &route.metrics,
        })
        .await;
    super::note_call(info, &result);
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            let cut_short = own_deadline && cache::fallback::code(&e) == Code::DeadlineExceeded;
            let (shared, own) = failed(snap, route, policy, Some(leader.key()), e, parts).await;
            return ((!cut_short).then_some(shared), own);
        }
    };
    let (md, raw, _) = reply.into_parts();
    let transcoding = crate::telemetry::otel::ChildSpan::internal("transcode reply");
    let resp = crate::transcode::response::answer(&snap.transcode, &route.plan, &md, &raw);
    drop(transcoding);
    if !resp.status().is_success() {
        // An answer the gateway could not render: shared, never kept.
        let shared = match resp.extensions().get::<Error>() {
            Some(e) => Shared::Failed(e.clone()),
            None => Shared::Failed(Error::Internal(format!(
                "the answer of {} had status {}",
                route.grpc_label,
                resp.status()
            ))),
        };
        return (Some(shared), resp);
    }
    let (head, body) = resp.into_parts();
    let body = cache::collect(body).await;
    let now = Instant::now();
    let policy_ttl = policy.map_or((Duration::ZERO, Duration::ZERO), |p| (p.ttl, p.keep));
    let entry = std::sync::Arc::new(Entry {
        status: head.status,
        headers: head.headers,
        etag: cache::conditional::etag(&body),
        body,
        stored: now,
        fresh_for: policy_ttl.0,
        keep_for: policy_ttl.1,
    });
    // An answer that sets a cookie is its caller's alone: neither kept,
    // nor handed to the waiters, nor offered to caches downstream.
    if entry.headers.contains_key(http::header::SET_COOKIE) {
        return (
            None,
            cache::respond(&entry, None, &parts.headers, Served::Fetched, now),
        );
    }
    let cc = policy.map(|p| &p.directives);
    let own = cache::respond(&entry, cc, &parts.headers, Served::Fetched, now);
    if let Some(p) = policy {
        p.store.insert(leader.key().clone(), entry.clone());
    }
    (Some(Shared::Answer(entry, Kind::Fresh)), own)
}

/// A failed call: a degraded answer when the backend is unavailable and
/// the route has one (a stale entry first, then the static fallback),
/// else the error.
async fn failed(
    snap: &Snapshot,
    route: &Route,
    policy: Option<&Policy>,
    key: Option<&Key>,
    e: CallError,
    parts: &Parts,
) -> (Shared, Response<Body>) {
    let now = Instant::now();
    if cache::fallback::unavailable(&e) {
        if let (Some(p), Some(key)) = (policy.filter(|p| p.stale_if_error), key) {
            if let Some(stale) = p.store.get(key) {
                p.served_stale();
                let own = cache::respond(
                    &stale,
                    Some(&p.directives),
                    &parts.headers,
                    Served::Stale,
                    now,
                );
                return (Shared::Answer(stale, Kind::Stale), own);
            }
        }
        if let Some(f) = &route.fallback {
            let entry = f.answer(&snap.transcode, &route.plan).await;
            f.record();
            let own = cache::respond(&entry, None, &parts.headers, Served::Static, now);
            return (Shared::Answer(entry, Kind::Static), own);
        }
    }
    let err = super::stream::call_failure(snap, route, e);
    (Shared::Failed(err.clone()), err.into_response())
}

/// A failed call of a route without `cache`: its static fallback when the
/// backend is unavailable, else the error, as [`super::stream::call_error`].
pub(super) async fn degrade(
    snap: &Snapshot,
    route: &Route,
    e: CallError,
    parts: &Parts,
) -> Response<Body> {
    failed(snap, route, None, None, e, parts).await.1
}
