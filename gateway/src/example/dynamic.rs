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

/// A stream of messages, as a [`StreamHandler`] receives and returns them.
pub type MessageStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DynamicMessage, Status>> + Send + 'static>>;

/// Answers calls to streaming methods: client, server or bidirectional.
///
/// One shape for all three keeps test backends short: the request is always a
/// stream (of one message for server-streaming methods) and so is the reply
/// (whose first message is the answer of a client-streaming method). The
/// reply stream is pulled only as fast as the client reads, and dropped when
/// the client cancels.
pub trait StreamHandler: Send + Sync + 'static {
    fn call(
        &self,
        method: &MethodDescriptor,
        request: Request<MessageStream>,
    ) -> BoxFuture<Result<Response<MessageStream>, Status>>;
}

impl<F> StreamHandler for F
where
    F: Fn(
            &MethodDescriptor,
            Request<MessageStream>,
        ) -> BoxFuture<Result<Response<MessageStream>, Status>>
        + Send
        + Sync
        + 'static,
{
    fn call(
        &self,
        method: &MethodDescriptor,
        request: Request<MessageStream>,
    ) -> BoxFuture<Result<Response<MessageStream>, Status>> {
        self(method, request)
    }
}

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

/// Serves every unary method of the named services from `pool`, and their
/// streaming methods when given a [`StreamHandler`].
#[derive(Clone)]
pub struct DynamicServer {
    methods: Arc<HashMap<String, MethodDescriptor>>,
    handler: Arc<dyn Handler>,
    streaming: Option<Arc<dyn StreamHandler>>,
    fallback: Option<Fallback>,
    gzip: bool,
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
            streaming: None,
            fallback: None,
            gzip: false,
        }
    }

    /// Answers the streaming methods with `handler` (without one they are
    /// UNIMPLEMENTED).
    pub fn with_streaming(mut self, handler: impl StreamHandler) -> Self {
        self.streaming = Some(Arc::new(handler));
        self
    }

    /// Reads gzip-compressed request messages, and compresses its replies
    /// with gzip for clients that announce it (`grpc-accept-encoding`).
    pub fn with_gzip(mut self) -> Self {
        self.gzip = true;
        self
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
            tokio::spawn(self.clone().serve_connection(stream));
        }
    }

    /// Serves HTTP/2 (gRPC) on one connection the caller accepted: a TCP
    /// stream, or a TLS one (the backend-TLS tests).
    pub async fn serve_connection<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.dispatch(req).await) }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
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
        if self.gzip {
            use tonic::codec::CompressionEncoding::Gzip;
            grpc = grpc.accept_compressed(Gzip).send_compressed(Gzip);
        }
        if method.is_client_streaming() || method.is_server_streaming() {
            let Some(handler) = self.streaming.clone() else {
                return Status::unimplemented(format!(
                    "{} is a streaming method and this server has no streaming handler",
                    method.full_name()
                ))
                .into_http();
            };
            let svc = Streams { method, handler };
            return match (
                svc.method.is_client_streaming(),
                svc.method.is_server_streaming(),
            ) {
                (true, true) => grpc.streaming(svc, req).await,
                (true, false) => grpc.client_streaming(svc, req).await,
                _ => grpc.server_streaming(svc, req).await,
            };
        }
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

/// Adapts a [`StreamHandler`] to tonic's three streaming service traits.
#[derive(Clone)]
struct Streams {
    method: MethodDescriptor,
    handler: Arc<dyn StreamHandler>,
}

impl tonic::server::ServerStreamingService<DynamicMessage> for Streams {
    type Response = DynamicMessage;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<Response<MessageStream>, Status>>;

    fn call(&mut self, request: Request<DynamicMessage>) -> Self::Future {
        let request = request.map(|m| Box::pin(tokio_stream::once(Ok(m))) as MessageStream);
        self.handler.call(&self.method, request)
    }
}

impl tonic::server::ClientStreamingService<DynamicMessage> for Streams {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<Response<DynamicMessage>, Status>>;

    fn call(&mut self, request: Request<tonic::Streaming<DynamicMessage>>) -> Self::Future {
        use tokio_stream::StreamExt as _;
        let request = request.map(|s| Box::pin(s) as MessageStream);
        let reply = self.handler.call(&self.method, request);
        Box::pin(async move {
            let (metadata, mut stream, extensions) = reply.await?.into_parts();
            match stream.next().await {
                Some(Ok(m)) => Ok(Response::from_parts(metadata, m, extensions)),
                Some(Err(status)) => Err(status),
                None => Err(Status::internal("the handler ended without a reply")),
            }
        })
    }
}

impl tonic::server::StreamingService<DynamicMessage> for Streams {
    type Response = DynamicMessage;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<Response<MessageStream>, Status>>;

    fn call(&mut self, request: Request<tonic::Streaming<DynamicMessage>>) -> Self::Future {
        let request = request.map(|s| Box::pin(s) as MessageStream);
        self.handler.call(&self.method, request)
    }
}
