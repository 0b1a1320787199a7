//! A gRPC server for services known only from descriptors, built on the same
//! [`DynamicCodec`] the gateway calls with. It serves the bundled example
//! backend and the tests' backends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::{Request, Response, Status};

use crate::upstream::DynamicCodec;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Answers one unary call.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        method: &MethodDescriptor,
        request: Request<DynamicMessage>,
    ) -> BoxFuture<Result<Response<DynamicMessage>, Status>>;
}

impl<F> Handler for F
where
    F: Fn(
            &MethodDescriptor,
            Request<DynamicMessage>,
        ) -> BoxFuture<Result<Response<DynamicMessage>, Status>>
        + Send
        + Sync
        + 'static,
{
    fn call(
        &self,
        method: &MethodDescriptor,
        request: Request<DynamicMessage>,
    ) -> BoxFuture<Result<Response<DynamicMessage>, Status>> {
        self(method, request)
    }
}

/// Any other gRPC service to serve on the same port (e.g. reflection or health).
pub type Fallback = tower::util::BoxCloneSyncService<
    http::Request<hyper::body::Incoming>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Serves every unary method of the named services from `pool`.
#[derive(Clone)]
pub struct DynamicServer {
    methods: Arc<HashMap<String, MethodDescriptor>>,
    handler: Arc<dyn Handler>,
    fallback: Option<Fallback>,
}

impl DynamicServer {
    /// Panics when a service is not in the pool: this is for fixed example and
    /// test setups, where that is a programming error.
    pub fn new(pool: &DescriptorPool, services: &[&str], handler: impl Handler) -> DynamicServer {
        let mut methods = HashMap::new();
        for name in services {
            let svc = pool
                .get_service_by_name(name)
                .unwrap_or_else(|| panic!("service {name} is not in the descriptor pool"));
            for m in svc.methods() {
                methods.insert(format!("/{}/{}", svc.full_name(), m.name()), m);
            }
        }
        DynamicServer {
            methods: Arc::new(methods),
            handler: Arc::new(handler),
            fallback: None,
        }
    }

    /// Sends calls to methods this server does not know to `fallback`.
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Accepts HTTP/2 (gRPC) connections on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.dispatch(req).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn dispatch(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let Some(method) = self.methods.get(req.uri().path()).cloned() else {
            if let Some(fallback) = &self.fallback {
                use tower::ServiceExt as _;
                return match fallback.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
            }
            return Status::unimplemented(format!("no method {}", req.uri().path())).into_http();
        };
        let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(method.input()))
            .max_decoding_message_size(crate::upstream::MAX_REPLY_BYTES)
            .max_encoding_message_size(crate::upstream::MAX_REPLY_BYTES);
        grpc.unary(
            Unary {
                method,
                handler: self.handler.clone(),
            },
            req,
        )
        .await
    }
}

struct Unary {
    method: MethodDescriptor,
    handler: Arc<dyn Handler>,
}

impl tonic::server::UnaryService<DynamicMessage> for Unary {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<Response<DynamicMessage>, Status>>;

    fn call(&mut self, request: Request<DynamicMessage>) -> Self::Future {
        self.handler.call(&self.method, request)
    }
}
