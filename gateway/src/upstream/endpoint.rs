//! One backend instance: its lazily connected client and the counters the
//! balancer, outlier detection and health checks read and write (atomics
//! only: many requests touch one endpoint at once).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

pub(crate) use super::client::AttemptError;
use super::client::{Client, RequestBody, Streamed};
use super::window::now_ms;

/// Never checked (or checks are off): in rotation.
pub(crate) const HEALTH_UNKNOWN: u8 = 0;
pub(crate) const HEALTH_SERVING: u8 = 1;
pub(crate) const HEALTH_NOT_SERVING: u8 = 2;

/// One backend instance.
#[derive(Debug)]
pub struct Endpoint {
    /// `ip:port` (or `host:port`, resolved when connecting).
    pub addr: String,
    /// What the registry calls it, e.g. Consul's `node/service-id`.
    pub label: Option<String>,
    /// Every call to the instance (unary, streaming, health checks) on
    /// lazily made HTTP/2 connections, one per worker thread (see
    /// [`Client`] for why). Lazily: an instance that is down does not stop
    /// the gateway, and one that joins costs nothing until it is picked.
    /// The connections close when the endpoint is dropped, i.e. after the
    /// calls still running on a removed instance finish.
    client: Client,
    connect_timeout: Duration,
    /// The backend's TLS, for [`Endpoint::channel`]'s connection too.
    tls: Option<std::sync::Arc<super::tls::BackendTls>>,
    pub(crate) state: EndpointState,
}

/// Counters of one endpoint; relaxed atomics, approximate under races by design.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    pub(crate) in_flight: AtomicU32,
    /// Connect failures and UNAVAILABLE answers since the last success.
    pub(crate) consecutive_failures: AtomicU32,
    /// Ejected until this time (on [`now_ms`]'s clock); 0: never ejected.
    pub(crate) ejected_until: AtomicU64,
    /// Ejections in a row; the next one lasts this many base times.
    pub(crate) ejection_streak: AtomicU32,
    pub(crate) ejections: AtomicU64,
    /// One of the `HEALTH_*` values (active checks).
    pub(crate) health: AtomicU8,
    pub(crate) check_successes: AtomicU32,
    pub(crate) check_failures: AtomicU32,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("endpoint \"{addr}\" is not a valid host:port: {reason}")]
pub struct EndpointError {
    pub addr: String,
    pub reason: String,
}

pub use super::dial::Dial;

impl Endpoint {
    /// Checks the address and creates the (not yet connected) channel; needs
    /// a tokio runtime, where tonic spawns the channel's worker.
    pub(crate) fn new(
        addr: &str,
        label: Option<String>,
        dial: impl Into<Dial>,
    ) -> Result<Endpoint, EndpointError> {
        let dial = dial.into();
        let connect_timeout = dial.connect_timeout;
        let bad = |reason: String| EndpointError {
            addr: addr.to_owned(),
            reason,
        };
        if addr.contains("://") || !addr.contains(':') {
            return Err(bad("write host:port without a scheme".into()));
        }
        let tls = dial.tls.clone();
        let client = Client::new(addr, dial, super::MAX_REPLY_BYTES).map_err(bad)?;
        Ok(Endpoint {
            addr: addr.to_owned(),
            label,
            client,
            connect_timeout,
            tls,
            state: EndpointState::default(),
        })
    }

    /// A connection of its own to the instance, for side calls that are not
    /// traffic (server reflection, at reload): made on demand, closed when
    /// dropped.
    pub fn channel(&self) -> Result<Channel, EndpointError> {
        let endpoint = TonicEndpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| EndpointError {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            return Ok(endpoint.connect_lazy());
        };
        // Over the backend's TLS, as its calls go.
        let addr = self.addr.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (addr, tls) = (addr.clone(), tls.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                let io = tls.connect(&addr, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    pub fn is_ejected(&self) -> bool {
        now_ms() < self.state.ejected_until.load(Ordering::Relaxed)
    }

    /// Whether active checks have taken it out of rotation.
    pub fn failing_checks(&self) -> bool {
        self.state.health.load(Ordering::Relaxed) == HEALTH_NOT_SERVING
    }

    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// One attempt with an already encoded request (retries resend the same
    /// bytes). `deadline` goes out as `grpc-timeout`; the caller bounds the wait.
    pub(crate) async fn unary_encoded(
        &self,
        path: PathAndQuery,
        body: Bytes,
        metadata: MetadataMap,
        deadline: Duration,
    ) -> Result<tonic::Response<Bytes>, AttemptError> {
        self.client.call(path, body, metadata, deadline).await
    }

    /// Opens a streaming call and waits for its response headers.
    pub(crate) async fn stream(
        &self,
        path: PathAndQuery,
        metadata: MetadataMap,
        deadline: Option<Duration>,
        body: &mut RequestBody,
    ) -> Result<Streamed, AttemptError> {
        self.client.stream(path, metadata, deadline, body).await
    }

    /// A unary call over each connection that carries traffic (health checks).
    pub(crate) async fn call_each(
        &self,
        path: PathAndQuery,
        message: Bytes,
        timeout: Duration,
    ) -> Result<tonic::Response<Bytes>, tonic::Status> {
        self.client.call_each(path, message, timeout).await
    }
}

/// Decrements an endpoint's (or backend's) in-flight count when dropped,
/// including when the client goes away mid-call.
pub(crate) struct InFlight<'a>(pub(crate) &'a AtomicU32);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(counter: &'a AtomicU32) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
