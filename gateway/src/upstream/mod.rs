//! Backends: a set of endpoints, one multiplexed HTTP/2 connection each, and
//! the unary call made over them.

mod codec;
pub mod reflection;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::PathAndQuery;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

pub use codec::DynamicCodec;

/// Replies are buffered whole to become JSON; 64 MiB bounds what one call
/// may make the gateway hold, well above ordinary unary replies.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// One backend instance.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    /// Lazily connected: a backend that is down at start does not stop the
    /// gateway, and its first call gets a clear 503 instead.
    channel: Channel,
}

/// What a backend is made from; a reload keeps the live backend (and its
/// connections) when this has not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDefinition {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// A named group of instances serving the same services.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub definition: BackendDefinition,
    pub endpoints: Vec<Endpoint>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    next: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("endpoint \"{addr}\" is not a valid host:port: {reason}")]
pub struct EndpointError {
    pub addr: String,
    pub reason: String,
}

impl Backend {
    /// Builds the backend; must run inside a tokio runtime (tonic spawns each
    /// channel's worker there).
    pub fn new(name: &str, definition: BackendDefinition) -> Result<Backend, EndpointError> {
        let BackendDefinition {
            timeout,
            connect_timeout,
            ..
        } = definition;
        let endpoints = definition
            .endpoints
            .iter()
            .map(|addr| {
                let bad = |reason: String| EndpointError {
                    addr: addr.clone(),
                    reason,
                };
                if addr.contains("://") || !addr.contains(':') {
                    return Err(bad("write host:port without a scheme".into()));
                }
                let channel = TonicEndpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    // Keep-alives find dead peers that never sent a FIN
                    // (a pulled cable, a crashed VM) before a request does.
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect_lazy();
                Ok(Endpoint {
                    addr: addr.clone(),
                    channel,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Backend {
            name: name.to_owned(),
            definition,
            endpoints,
            timeout,
            connect_timeout,
            next: AtomicUsize::new(0),
        })
    }

    /// Round robin over the endpoints; lock-free.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(i % self.endpoints.len())
    }
}

impl Endpoint {
    /// The endpoint's multiplexed connection, for side calls such as reflection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// One unary call. `timeout` goes out as `grpc-timeout` and also bounds
    /// the wait here, so a backend that ignores deadlines cannot hold the client.
    pub async fn unary(
        &self,
        path: PathAndQuery,
        message: DynamicMessage,
        metadata: MetadataMap,
        reply: MessageDescriptor,
        timeout: Duration,
    ) -> Result<tonic::Response<DynamicMessage>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata;
        request.set_timeout(timeout);
        // The request is already bounded by server.max_body_bytes, so tonic's
        // 4 MiB default would only make a larger configured limit fail late.
        let mut client = tonic::client::Grpc::new(self.channel.clone())
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(MAX_REPLY_BYTES);
        let call = async {
            client.ready().await.map_err(|e| {
                tonic::Status::unavailable(format!("connecting to {}: {e}", self.addr))
            })?;
            client.unary(request, path, DynamicCodec::new(reply)).await
        };
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(self.client_side(status, started.elapsed() >= timeout, timeout)),
            Err(_) => Err(deadline(timeout)),
        }
    }

    /// tonic reports two of its own client-side failures as CANCELLED: its
    /// deadline timer ("Timeout expired", racing ours) and a connection that
    /// broke mid-call (hyper's "operation was canceled"). Neither means the
    /// client closed the request (499); say what really happened. A CANCELLED
    /// sent by the backend itself (any other message) passes through.
    fn client_side(
        &self,
        status: tonic::Status,
        deadline_passed: bool,
        timeout: Duration,
    ) -> tonic::Status {
        let ours = status.code() == tonic::Code::Cancelled
            && (status.message() == "Timeout expired"
                || status.message().starts_with("operation was canceled"));
        if !ours {
            return status;
        }
        if deadline_passed {
            deadline(timeout)
        } else {
            tonic::Status::unavailable(format!(
                "the connection to {} broke during the call ({})",
                self.addr,
                status.message()
            ))
        }
    }
}

fn deadline(timeout: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("no answer within the deadline of {timeout:?}"))
}
