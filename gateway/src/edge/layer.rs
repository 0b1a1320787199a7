//! What every edge layer shares: the view of the routed request it reads,
//! and a future that annotates the answer on its way out.
//!
//! A policy is one layer over routed requests: it reads its own slice of
//! the route stage's result through [`RouteView`] (linkerd's `Param`
//! pattern), refuses with a [`crate::error::Error`], or passes the request
//! on and, where it has something to say about any answer (rate-limit
//! fields, the client's address for the access log), says it through
//! [`OnResponse`]. The pipeline assembles the layers in one function.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use http::Response;

use super::{EdgeContext, RouteEdge};

/// The route stage's result as the edge layers see it: `R` in every edge
/// layer is the request extension that implements this.
pub trait RouteView: Send + Sync + 'static {
    /// The edge settings of the snapshot the request keeps, and what the
    /// layers need of the route it matched.
    fn context(&self) -> &EdgeContext;
    /// The matched route's edge policy; `None` when no route matched (a
    /// 404, 405 or 400 answer is coming, and route policies do not apply).
    fn policy(&self) -> Option<&RouteEdge>;
}

/// What an edge layer wraps: requests in, answers out, never an error
/// (refusals are answers).
pub trait Inner:
    tower::Service<http::Request<Body>, Response = Response<Body>, Error = Infallible>
{
}

impl<S> Inner for S where
    S: tower::Service<http::Request<Body>, Response = Response<Body>, Error = Infallible>
{
}

/// The answer a layer gives instead of calling the layers below it.
pub type BoxFut = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Something a layer adds to whatever answer comes back through it.
pub trait Annotate {
    fn annotate(self, resp: &mut Response<Body>);
}

/// Nothing to add.
impl Annotate for () {
    fn annotate(self, _: &mut Response<Body>) {}
}

/// Something, or nothing, to add.
impl<A: Annotate> Annotate for Option<A> {
    fn annotate(self, resp: &mut Response<Body>) {
        if let Some(a) = self {
            a.annotate(resp);
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer with `note` added on its way out, or an
    /// answer the layer made itself. No allocation either way.
    #[project = OnResponseProj]
    pub enum OnResponse<F, A> {
        Inner { #[pin] inner: F, note: Option<A> },
        Answer { resp: Option<Response<Body>> },
    }
}

impl<F, A> OnResponse<F, A> {
    pub fn inner(inner: F, note: A) -> Self {
        OnResponse::Inner {
            inner,
            note: Some(note),
        }
    }

    /// The layer's own answer (a refusal), annotated by the caller already.
    pub fn answer(resp: Response<Body>) -> Self {
        OnResponse::Answer { resp: Some(resp) }
    }
}

impl<F, A> Future for OnResponse<F, A>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
    A: Annotate,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            OnResponseProj::Inner { inner, note } => {
                let Ok(mut resp) = ready!(inner.poll(cx));
                if let Some(note) = note.take() {
                    note.annotate(&mut resp);
                }
                Poll::Ready(Ok(resp))
            }
            OnResponseProj::Answer { resp } => Poll::Ready(Ok(resp
                .take()
                .expect("OnResponse polled after it completed"))),
        }
    }
}

/// The access log's record of the answer, made here if no layer below
/// made it.
pub fn info(resp: &mut Response<Body>) -> &mut crate::telemetry::RequestInfo {
    resp.extensions_mut()
        .get_or_insert_default::<crate::telemetry::RequestInfo>()
}

/// The layer of one edge policy: `P` is the policy's own setting (often a
/// unit type naming it), `R` the route view it reads. A policy is a
/// `Service` impl for [`Policed`]`<S, P, R>`.
pub struct PolicyLayer<P, R> {
    policy: P,
    view: PhantomData<fn() -> R>,
}

impl<P, R> PolicyLayer<P, R> {
    pub fn new(policy: P) -> Self {
        PolicyLayer {
            policy,
            view: PhantomData,
        }
    }
}

impl<S, P: Clone, R> tower::Layer<S> for PolicyLayer<P, R> {
    type Service = Policed<S, P, R>;
    fn layer(&self, inner: S) -> Policed<S, P, R> {
        Policed {
            inner,
            policy: self.policy.clone(),
            view: PhantomData,
        }
    }
}

/// A service below the policy `P`'s layer.
pub struct Policed<S, P, R> {
    pub(super) inner: S,
    pub(super) policy: P,
    view: PhantomData<fn() -> R>,
}

impl<S: Clone, P: Clone, R> Clone for Policed<S, P, R> {
    fn clone(&self) -> Self {
        Policed {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            view: PhantomData,
        }
    }
}

impl<S: Clone, P, R> Policed<S, P, R> {
    /// The inner service, ready, for a call made after an await; a fresh
    /// clone stays behind for the next request (tower's usual swap).
    pub(super) fn take_inner(&mut self) -> S {
        let fresh = self.inner.clone();
        std::mem::replace(&mut self.inner, fresh)
    }
}

/// How much of a refused request's body is read before the refusal is
/// sent, and for how long at most.
const LINGER_BYTES: u64 = 64 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// `refusal`, sent once the refused request's body has arrived (when it is
/// small): a client still writing its body when the answer comes and the
/// connection closes would see a broken pipe instead of the answer (typed
/// clients send the body after the head). Bodies over 64 KiB are not
/// waited for.
pub fn refuse_after_body(req: http::Request<Body>, refusal: Response<Body>) -> BoxFut {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(http::header::TRANSFER_ENCODING);
    if declared.is_none_or(|n| n == 0 || n > LINGER_BYTES) && !chunked {
        return Box::pin(std::future::ready(Ok(refusal)));
    }
    Box::pin(async move {
        use http_body_util::BodyExt as _;
        let mut body = req.into_body();
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        Ok(refusal)
    })
}
