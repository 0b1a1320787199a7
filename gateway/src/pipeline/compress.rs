//! The compression stage: answers compressed as the client's
//! `Accept-Encoding` asks, under the snapshot's `[server.compression]`
//! (`crate::encoding::compress`). It sits just inside the route stage, so
//! the access log above counts the bytes actually sent and HEAD answers are
//! cut after it; a request without `Accept-Encoding` costs one header
//! lookup.

use axum::body::Body;
use http::{header, Response};

use super::Routed;
use crate::edge::layer::OnResponse;
use crate::encoding::compress::Chosen;

/// Layer of [`Compress`].
#[derive(Clone, Copy)]
pub struct CompressLayer;

impl<S> tower::Layer<S> for CompressLayer {
    type Service = Compress<S>;
    fn layer(&self, inner: S) -> Compress<S> {
        Compress(inner)
    }
}

/// Compresses answers per `Accept-Encoding`.
#[derive(Clone)]
pub struct Compress<S>(S);

impl<S> tower::Service<http::Request<Body>> for Compress<S>
where
    S: crate::edge::layer::Inner,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = OnResponse<S::Future, Option<Chosen>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let chosen = req.headers().get(header::ACCEPT_ENCODING).and_then(|ae| {
            let routed = req.extensions().get::<Routed>()?;
            routed.snap.compression.choose(Some(ae))
        });
        OnResponse::inner(self.0.call(req), chosen)
    }
}

/// The chosen coding is applied when the answer comes back; the impl lives
/// here, with the stage, so that `encoding` knows nothing of the edge layers.
impl crate::edge::layer::Annotate for Chosen {
    fn annotate(self, resp: &mut Response<Body>) {
        self.apply(resp)
    }
}
