//! The gateway-wide shed: when the gateway itself is saturated, new
//! requests are answered 503 with `Retry-After` at once, from the stage
//! right after routing, instead of each taking its share of a CPU and
//! memory that no longer suffice for any of them.
//!
//! The trigger is `server.max_in_flight`: requests being served across
//! every route and listener, counted here from this stage until the
//! answer's head (the count lives in the edge settings and is handed from
//! each snapshot to the next, so a reload neither resets it nor loses the
//! requests still running on the old one). Admitting a request is one
//! `fetch_add` and its end one `fetch_sub`; without `max_in_flight` this
//! stage counts nothing. What is shed costs a route match and an error
//! answer: no auth, no body read, no backend call. The refused request's
//! body is not waited for (unlike the edge's other refusals): under
//! overload, holding the request to drain a body is exactly the work being
//! shed.
//!
//! Health, readiness, metrics and admin endpoints are on the admin listener
//! and never pass here.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tonic::Code;
use tower::Service;

use super::layer::{Annotate, Inner, OnResponse, Policed, RouteView};
use crate::error::Error;

/// `[server] max_in_flight`, compiled, and the count it bounds.
#[derive(Debug, Clone, Default)]
pub struct Overload {
    /// Requests served at once at most; none when absent.
    pub max_in_flight: Option<usize>,
    /// Requests past this stage and not yet answered (while
    /// `max_in_flight` is set), shared by every snapshot of one gateway.
    pub in_flight: Arc<AtomicUsize>,
}

impl Overload {
    /// `max_in_flight` with the count of `previous`, the snapshot being
    /// replaced, so that requests it is still serving are counted.
    pub fn new(max_in_flight: Option<usize>, previous: Option<&Overload>) -> Overload {
        Overload {
            max_in_flight,
            in_flight: previous.map(|p| p.in_flight.clone()).unwrap_or_default(),
        }
    }
}

/// A request counted in [`Overload::in_flight`], until its answer leaves
/// this stage or it is dropped.
pub struct Counted(Arc<AtomicUsize>);

impl Annotate for Counted {
    fn annotate(self, _: &mut Response<Body>) {}
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The policy of the gateway-wide shed.
#[derive(Debug, Clone, Copy)]
pub struct Shed;

impl<S, R> Service<Request<Body>> for Policed<S, Shed, R>
where
    R: RouteView,
    S: Inner,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = OnResponse<S::Future, Option<Counted>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(overload) = req
            .extensions()
            .get::<R>()
            .map(|v| &v.context().edge.overload)
        else {
            return OnResponse::inner(self.inner.call(req), None);
        };
        let Some(max) = overload.max_in_flight else {
            return OnResponse::inner(self.inner.call(req), None);
        };
        let counter = overload.in_flight.clone();
        let before = counter.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(counter);
        if before >= max {
            drop(counted);
            metrics::counter!(crate::telemetry::metrics::OVERLOAD_SHED, "reason" => "max_in_flight").increment(1);
            return OnResponse::answer(
                Error::Refused {
                    code: Code::Unavailable,
                    message: format!(
                        "the gateway is overloaded: {max} requests are already being served (server.max_in_flight); try again shortly"
                    ),
                }
                .into_response(),
            );
        }
        OnResponse::inner(self.inner.call(req), Some(counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_counting_the_requests_of_the_old_snapshot() {
        let old = Overload::new(Some(10), None);
        old.in_flight.fetch_add(3, Ordering::Relaxed);
        let new = Overload::new(Some(5), Some(&old));
        assert_eq!(new.in_flight.load(Ordering::Relaxed), 3);
        assert_eq!(new.max_in_flight, Some(5));
        let fresh = Overload::new(Some(5), None);
        assert_eq!(fresh.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_counted_request_is_given_back_when_dropped() {
        let o = Overload::new(Some(1), None);
        o.in_flight.fetch_add(1, Ordering::Relaxed);
        let c = Counted(o.in_flight.clone());
        drop(c);
        assert_eq!(o.in_flight.load(Ordering::Relaxed), 0);
    }
}
