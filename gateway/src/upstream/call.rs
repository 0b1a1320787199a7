//! One call through a backend, unary or streaming: the concurrency limit,
//! the circuit breaker, the balancer's pick, outlier detection, the
//! deadline and per-try timeout, and retries on another endpoint with
//! backoff within the budget. Both kinds of call run the same attempt loop
//! ([`Backend::run`]); they differ only in what one attempt is and in when
//! the call is over (a unary call when its reply arrives, a stream when its
//! last message has been read, see [`StreamGuard`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::adaptive;
use super::breaker::Admission;
use super::client::{Messages, RequestBody, Streamed};
use super::endpoint::{Endpoint, InFlight};
use super::retry::{self, Failure};
use super::window::now_ms;
use super::{deadline, outlier, Backend, Policy, RouteRetry};
use crate::telemetry::metrics::RouteMetrics;

/// One request to a backend.
#[derive(Debug)]
pub struct CallRequest<'a> {
    pub path: PathAndQuery,
    /// The request message, encoded.
    pub body: Bytes,
    pub metadata: MetadataMap,
    /// The call's deadline: the route's timeout, or the client's
    /// `grpc-timeout` / `X-Request-Timeout` when smaller. The caller reads
    /// the headers once, where an unreadable one is refused.
    pub timeout: Duration,
    pub retry: RouteRetry<'a>,
    /// The client's request headers (deadline, hash key).
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    /// Where the call's `upstream_*` metrics go.
    pub metrics: &'a RouteMetrics,
}

/// On a successful reply's extensions: which endpoint answered, after how
/// many attempts (for the access log and metrics).
#[derive(Debug, Clone)]
pub struct Attempted {
    pub addr: String,
    pub attempts: u32,
}

/// Why a call produced no reply.
#[derive(Debug)]
pub enum CallError {
    /// The backend answered with an error, the transport to it failed, or
    /// the deadline passed while waiting: `addr` is the last endpoint tried.
    Upstream {
        status: tonic::Status,
        addr: String,
        attempts: u32,
    },
    /// The gateway did not call: circuit open, too many calls in flight, no
    /// endpoint in rotation, or the client's deadline had already passed.
    /// `message` names the backend and the reason.
    Refused { code: Code, message: String },
}

fn refused(code: Code, message: String) -> CallError {
    CallError::Refused { code, message }
}

/// A fallback client address for hashing, when the edge has not settled one:
/// the peer address if the server recorded it (`ConnectInfo`), else the
/// first `X-Forwarded-For` entry, else `X-Real-IP`. Used for balancing only,
/// where a forged header can only choose which instance serves its own request.
pub fn client_ip(headers: &HeaderMap, extensions: &http::Extensions) -> Option<IpAddr> {
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .or_else(|| header("x-real-ip"))
        .and_then(|v| v.trim().parse().ok())
}

/// The breaker's admission, returned unused if the call is dropped midway
/// (the client went away) so a half-open probe slot is not lost.
struct Admitted<'a> {
    backend: &'a Backend,
    admission: Admission,
    done: bool,
}

impl Admitted<'_> {
    fn finish(&mut self, failed: bool) {
        self.done = true;
        let b = self.backend;
        b.breaker.record(self.admission, failed, &b.stats, &b.name);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.backend.breaker.abandon(self.admission);
        }
    }
}

impl Backend {
    /// One unary request: deadline, concurrency limit, breaker, balancing,
    /// and retries on another endpoint with backoff, within the budget.
    pub async fn call(&self, req: CallRequest<'_>) -> Result<tonic::Response<Bytes>, CallError> {
        let started = Instant::now();
        let head = CallHead {
            metadata: &req.metadata,
            timeout: req.timeout,
            retry: &req.retry,
            headers: req.headers,
            client_ip: req.client_ip,
            replayable: true,
        };
        let result = self
            .run(&head, |ep, this_try| self.attempt(ep, &req, this_try))
            .await;
        let result = match result {
            Ok(mut won) => {
                outlier::success(&won.endpoint, &self.options.outlier);
                won.admitted.finish(false);
                let mut reply = won.answer;
                reply.extensions_mut().insert(Attempted {
                    addr: won.endpoint.addr.clone(),
                    attempts: won.attempts,
                });
                Ok(reply)
            }
            Err(e) => Err(e),
        };
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        };
        req.metrics.record_upstream(code, started.elapsed());
        result
    }

    /// One streaming call: the same limit, breaker, balancer, deadline (for
    /// the answer's headers), per-try timeout, outlier detection and
    /// metrics as a unary call. It is retried like one while it has not
    /// started, when its request is one message; a stream of messages read
    /// once is tried again only when it never reached an instance.
    pub async fn stream(
        self: &Arc<Self>,
        req: StreamRequest<'_>,
    ) -> Result<StreamReply, CallError> {
        let started = Instant::now();
        let StreamRequest {
            path,
            body,
            metadata,
            timeout,
            stream_timeout,
            retry,
            headers,
            client_ip,
            metrics,
        } = req;
        let head = CallHead {
            metadata: &metadata,
            timeout,
            retry: &retry,
            headers,
            client_ip,
            replayable: matches!(body, RequestBody::One(_)),
        };
        // Shared by the tries; a lock taken only to hand the body to one.
        let body = std::sync::Mutex::new(body);
        let result = self
            .run(&head, |ep, this_try| {
                self.stream_attempt(ep, &path, &metadata, stream_timeout, &body, this_try)
            })
            .await;
        match result {
            Ok(won) => {
                let Won {
                    answer,
                    endpoint,
                    attempts,
                    mut admitted,
                    in_flight,
                } = won;
                // The stream holds these from here to its end.
                admitted.done = true;
                let guard = StreamGuard::new(
                    self.clone(),
                    endpoint.clone(),
                    admitted.admission,
                    metrics,
                    started,
                );
                drop((admitted, in_flight));
                Ok(StreamReply {
                    metadata: answer.headers,
                    messages: ReplyStream {
                        messages: answer.messages,
                        guard: Some(guard),
                    },
                    attempted: Attempted {
                        addr: endpoint.addr.clone(),
                        attempts,
                    },
                })
            }
            Err(e) => {
                metrics.record_upstream(e.code(), started.elapsed());
                Err(e)
            }
        }
    }

    /// One try of a streaming call: open it on `ep` and wait for the
    /// answer's headers.
    async fn stream_attempt(
        &self,
        ep: Arc<Endpoint>,
        path: &PathAndQuery,
        metadata: &MetadataMap,
        stream_timeout: Option<Duration>,
        body: &std::sync::Mutex<RequestBody>,
        this_try: Try,
    ) -> Result<Streamed, (Failure, tonic::Status)> {
        let mut mine = {
            let mut shared = body.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *shared {
                RequestBody::One(m) => RequestBody::One(m.clone()),
                RequestBody::Many(s) => RequestBody::Many(s.take()),
            }
        };
        let span = crate::telemetry::otel::Attempt::start(path, &ep.addr, this_try.number);
        let outcome = {
            let _ep_in_flight = InFlight::enter(&ep.state.in_flight);
            let open = ep.stream(
                path.clone(),
                span.metadata(metadata),
                stream_timeout,
                &mut mine,
            );
            tokio::time::timeout_at(this_try.end, open).await
        };
        // A stream of messages not taken (the call never opened) goes back
        // for the next try.
        if let RequestBody::Many(Some(s)) = mine {
            let mut shared = body.lock().unwrap_or_else(|p| p.into_inner());
            *shared = RequestBody::Many(Some(s));
        }
        span.end(match &outcome {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(e)) => e.status.code(),
            Err(_) => Code::DeadlineExceeded,
        });
        match outcome {
            Ok(Ok(streamed)) => Ok(streamed),
            Ok(Err(e)) => Err((Failure::classify(&e.status, e.sent), e.status)),
            Err(_) => Err(self.timed_out(&this_try)),
        }
    }

    /// The attempt loop every call runs. `attempt` makes one try on an
    /// endpoint, ending by [`Try::end`] at the latest (it bounds its own
    /// wait, so that its trace span records the timeout); `head.replayable` says
    /// whether a try that may have reached the instance can be repeated.
    /// On success the breaker's admission is still open: the caller closes
    /// it when the call is over.
    async fn run<'s, T, F, Fut>(
        &'s self,
        head: &CallHead<'_>,
        mut attempt: F,
    ) -> Result<Won<'s, T>, CallError>
    where
        F: FnMut(Arc<Endpoint>, Try) -> Fut,
        Fut: std::future::Future<Output = Result<T, (Failure, tonic::Status)>>,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let timeout = head.timeout;
        let deadline = tokio::time::Instant::now() + timeout;

        // The limit first: it is the cheapest refusal, and a refused call
        // must not count as a failure in the breaker's window.
        let in_flight = InFlight::enter(&self.in_flight);
        let limit = self.breaker.max_requests();
        if self.in_flight.load(Ordering::Relaxed) > limit {
            self.stats.rejected_overload.fetch_add(1, Ordering::Relaxed);
            return Err(refused(
                Code::Unavailable,
                format!(
                    "backend \"{}\" is at its limit of {limit} calls in flight; try again shortly",
                    self.name
                ),
            ));
        }
        // Then the adaptive limit: a shed call reaches neither the breaker's
        // window nor the backend. One permit for the whole call, retries
        // included (see `adaptive`); it is given back when this returns,
        // with the answer (a unary reply, a stream's headers) or without.
        let _permit = match &self.adaptive {
            None => None,
            Some(limiter) => match limiter.try_acquire() {
                Ok(permit) => Some(permit),
                Err(limit) => {
                    return Err(refused(
                        Code::Unavailable,
                        format!(
                            "backend \"{}\" is shedding load: its adaptive concurrency limit of {limit} calls waiting for an answer is reached (the backend answers slower than its usual latency); try again shortly",
                            self.name
                        ),
                    ));
                }
            },
        };
        let admission = match self.breaker.admit(&self.stats, &self.name) {
            Ok(a) => a,
            Err(why) => {
                self.stats.rejected_open.fetch_add(1, Ordering::Relaxed);
                return Err(refused(
                    Code::Unavailable,
                    format!("backend \"{}\" is unavailable: {why}", self.name),
                ));
            }
        };
        let mut admitted = Admitted {
            backend: self,
            admission,
            done: false,
        };
        if timeout.is_zero() {
            self.stats.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
            return Err(refused(
                Code::DeadlineExceeded,
                format!(
                    "the client's deadline had passed before the call to backend \"{}\" started",
                    self.name
                ),
            ));
        }
        // Boxed: only calls before the first discovery answer wait here, and
        // the wait's state inline would enlarge every call's future.
        if !self.endpoints.shared.status.load().resolved
            && !Box::pin(self.endpoints.wait_resolved(deadline)).await
        {
            self.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
            let st = self.endpoints.status();
            let why = match &st.error {
                Some(e) => e.clone(),
                None => format!("still waiting for {}", st.source),
            };
            return Err(refused(
                Code::Unavailable,
                format!("backend \"{}\" has no endpoints yet: {why}", self.name),
            ));
        }
        self.budget.request();

        let key = match (&self.options.policy, &self.options.hash_key) {
            (Policy::ConsistentHash, Some(k)) => {
                k.hash(head.headers, head.metadata, head.client_ip)
            }
            _ => None,
        };
        let spec = &self.options.retry;
        // Endpoints already tried, for a retry to avoid; filled only when a
        // retry happens, so a call that succeeds first time allocates nothing.
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(tonic::Status, String)> = None;
        let mut attempt_no = 0u32;
        // Attempts that never reached an instance: they do not count against
        // `attempts` (see `retry`), but are bounded by the number of endpoints.
        let mut unsent = 0u32;
        loop {
            attempt_no += 1;
            let (picked, known) = {
                let set = self.endpoints.shared.set.load();
                let picked = self
                    .balancer
                    .pick(&set, key, &tried, now_ms())
                    .ok_or_else(|| self.no_endpoint_message());
                (picked, set.len() as u32)
            };
            let ep = match picked {
                Ok(picked) => {
                    self.note_panic(picked.panic);
                    picked.endpoint
                }
                Err(message) => {
                    admitted.finish(last.is_some());
                    return Err(match last {
                        Some((status, addr)) => self.upstream_error(status, addr, attempt_no - 1),
                        None => {
                            self.stats.no_endpoints.fetch_add(1, Ordering::Relaxed);
                            refused(Code::Unavailable, message)
                        }
                    });
                }
            };
            ep.state.requests.fetch_add(1, Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            let end = spec
                .per_try_timeout
                .map_or(deadline, |t| deadline.min(now + t));
            let this_try = Try {
                end,
                deadline,
                timeout,
                number: attempt_no,
            };
            // Timed only for a limiter: a backend without one pays nothing.
            let tried_at = self.adaptive.as_ref().map(|l| (l, Instant::now()));
            let outcome = attempt(ep.clone(), this_try).await;
            if let Some((limiter, at)) = tried_at {
                if let Some(seen) = adaptive_outcome(&outcome) {
                    limiter.record(seen, at.elapsed());
                }
            }
            let (failure, status) = match outcome {
                Ok(answer) => {
                    return Ok(Won {
                        answer,
                        endpoint: ep,
                        attempts: attempt_no,
                        admitted,
                        in_flight,
                    })
                }
                Err(failed) => failed,
            };
            if failure.is_endpoint_failure() {
                outlier::failure(
                    &ep,
                    &self.options.outlier,
                    &self.endpoints.shared,
                    &self.stats,
                );
            } else {
                outlier::success(&ep, &self.options.outlier);
            }
            let code = status.code();
            let status = match failure {
                // One message for every call that ran out of time, whoever noticed.
                Failure::Answered(Code::DeadlineExceeded) => {
                    tracing::debug!(
                        backend = %self.name,
                        upstream.addr = %ep.addr,
                        error = status.message(),
                        "the backend answered DEADLINE_EXCEEDED"
                    );
                    tonic::Status::with_details_and_metadata(
                        Code::DeadlineExceeded,
                        deadline::exceeded_message(&self.name, timeout),
                        status.details().to_vec().into(),
                        status.metadata().clone(),
                    )
                }
                Failure::Answered(_) | Failure::TimedOut => status,
                _ => retry::as_unavailable(status),
            };
            // Never sent: safe on any route and adds no load, so neither
            // `attempts` nor the budget limits it; once per endpoint at most.
            let transparent = failure == Failure::Connect && unsent < known;
            let allowed = transparent
                || (head.replayable
                    && attempt_no - unsent < spec.attempts
                    && failure.retryable(head.retry, spec));
            if allowed {
                let wait = if transparent {
                    Duration::ZERO
                } else {
                    retry::backoff(spec, attempt_no - unsent)
                };
                let in_time = tokio::time::Instant::now() + wait < deadline;
                if in_time && (transparent || self.budget.try_retry()) {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        backend = %self.name,
                        upstream.addr = %ep.addr,
                        grpc.code = ?code,
                        attempt = attempt_no,
                        transparent,
                        wait_ms = wait.as_millis() as u64,
                        "retrying on another endpoint"
                    );
                    unsent += u32::from(failure == Failure::Connect);
                    last = Some((status, ep.addr.clone()));
                    tried.push(Arc::as_ptr(&ep) as usize);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if in_time {
                    self.stats
                        .retries_over_budget
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            admitted.finish(failure.is_endpoint_failure());
            return Err(self.upstream_error(status, ep.addr.clone(), attempt_no));
        }
    }

    /// One unary try on `ep`; a failure comes back classified, with the
    /// status to show if it is the last.
    async fn attempt(
        &self,
        ep: Arc<Endpoint>,
        req: &CallRequest<'_>,
        this_try: Try,
    ) -> Result<tonic::Response<Bytes>, (Failure, tonic::Status)> {
        // A trace span per attempt (retries are siblings), the backend's parent.
        let span = crate::telemetry::otel::Attempt::start(&req.path, &ep.addr, this_try.number);
        let outcome = {
            let _ep_in_flight = InFlight::enter(&ep.state.in_flight);
            // The instance is told this try's end, not the call's: it can
            // give up when the gateway does.
            tokio::time::timeout_at(
                this_try.end,
                ep.unary_encoded(
                    req.path.clone(),
                    req.body.clone(),
                    span.metadata(&req.metadata),
                    this_try.remaining(),
                ),
            )
            .await
        };
        span.end(match &outcome {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(e)) => e.status.code(),
            Err(_) => Code::DeadlineExceeded,
        });
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err((Failure::classify(&e.status, e.sent), e.status)),
            Err(_) => Err(self.timed_out(&this_try)),
        }
    }

    /// A try that ran out of time: the per-try timeout or the deadline.
    fn timed_out(&self, this_try: &Try) -> (Failure, tonic::Status) {
        let message = match self.options.retry.per_try_timeout {
            Some(t) if this_try.end < this_try.deadline => format!(
                "backend \"{}\" did not answer within the per-try timeout of {t:?}",
                self.name
            ),
            _ => deadline::exceeded_message(&self.name, this_try.timeout),
        };
        (Failure::TimedOut, tonic::Status::deadline_exceeded(message))
    }

    /// The error of a call that tried and failed; every DEADLINE_EXCEEDED
    /// answer counts in `deadline_exceeded`, whoever noticed the deadline.
    fn upstream_error(&self, status: tonic::Status, addr: String, attempts: u32) -> CallError {
        if status.code() == Code::DeadlineExceeded {
            self.stats.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
        }
        CallError::Upstream {
            status,
            addr,
            attempts,
        }
    }

    /// Counts a panic-mode attempt, and logs entering and leaving panic
    /// mode once each (a relaxed load per call otherwise).
    fn note_panic(&self, panic: bool) {
        if panic {
            self.stats.panic_routed.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_panic.load(Ordering::Relaxed) != panic
            && self.in_panic.swap(panic, Ordering::Relaxed) != panic
        {
            if panic {
                tracing::warn!(backend = %self.name, "no endpoint in rotation (all ejected or failing health checks); sending to all of them (panic mode)");
            } else {
                tracing::info!(backend = %self.name, "endpoints in rotation again; panic mode over");
            }
        }
    }
}

/// How the adaptive limiter sees an attempt: an answer (whatever its
/// code) is a latency sample; a timeout a sample and a drop; the backend
/// saying it is overloaded a drop.
fn adaptive_outcome<T>(outcome: &Result<T, (Failure, tonic::Status)>) -> Option<adaptive::Outcome> {
    match outcome {
        Ok(_) => Some(adaptive::Outcome::Answered),
        Err((failure, _)) => match failure {
            Failure::TimedOut | Failure::Answered(Code::DeadlineExceeded) => {
                Some(adaptive::Outcome::TimedOut)
            }
            Failure::Unavailable | Failure::Answered(Code::ResourceExhausted) => {
                Some(adaptive::Outcome::Overloaded)
            }
            Failure::Answered(_) => Some(adaptive::Outcome::Answered),
            // Never reached the instance: says nothing of its latency.
            Failure::Connect => None,
        },
    }
}

impl CallError {
    /// The gRPC code the client is answered with.
    pub fn code(&self) -> Code {
        match self {
            CallError::Refused { code, .. } => *code,
            CallError::Upstream { status, .. } => status.code(),
        }
    }
}

/// What the attempt loop needs to know of a call, unary or streaming.
struct CallHead<'a> {
    metadata: &'a MetadataMap,
    timeout: Duration,
    retry: &'a RouteRetry<'a>,
    headers: &'a HeaderMap,
    client_ip: Option<IpAddr>,
    /// Whether the request can be sent again after it may have reached an
    /// instance (a stream of messages read once cannot).
    replayable: bool,
}

/// One try of a call.
#[derive(Debug, Clone, Copy)]
struct Try {
    /// When this try gives up: the per-try timeout or the deadline.
    end: tokio::time::Instant,
    /// The call's deadline, and the timeout it came from (for the message).
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// 1 for the first try.
    number: u32,
}

impl Try {
    fn remaining(&self) -> Duration {
        self.end
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// A call that got its answer: the endpoint that gave it, after how many
/// attempts, with the breaker's admission and the backend's in-flight
/// count still held (the caller ends them when the call is over).
struct Won<'a, T> {
    answer: T,
    endpoint: Arc<Endpoint>,
    attempts: u32,
    admitted: Admitted<'a>,
    in_flight: InFlight<'a>,
}

/// One streaming call to a backend: server, client or bidirectional.
pub struct StreamRequest<'a> {
    pub path: PathAndQuery,
    /// One message (server streaming: retried like a unary call), or
    /// messages as they come (sent once; only a call that never reached an
    /// instance is tried again).
    pub body: RequestBody,
    pub metadata: MetadataMap,
    /// How long the backend may take to answer (its response headers);
    /// the stream itself then runs until `stream_timeout`, if any.
    pub timeout: Duration,
    /// Sent as `grpc-timeout`: the whole stream's bound.
    pub stream_timeout: Option<Duration>,
    pub retry: RouteRetry<'a>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    /// Where the call's `upstream_*` metrics go, when the stream ends.
    pub metrics: Arc<RouteMetrics>,
}

/// A streaming call the backend answered.
#[derive(Debug)]
pub struct StreamReply {
    /// The response headers, as metadata.
    pub metadata: MetadataMap,
    pub messages: ReplyStream,
    /// The endpoint that answered, after how many attempts.
    pub attempted: Attempted,
}

/// The reply messages of a streaming call. The call holds its place in the
/// backend (the concurrency limit, the breaker's admission, the endpoint's
/// in-flight count) until the stream ends; its end (OK, or the error that
/// ended it) is what the breaker, outlier detection and the `upstream_*`
/// metrics see. Dropped before its end (the client went away), the call is
/// cancelled at the backend and counts as neither success nor failure.
#[derive(Debug)]
pub struct ReplyStream {
    messages: Messages,
    guard: Option<StreamGuard>,
}

impl ReplyStream {
    /// The next message; `None` after an OK end.
    pub fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, tonic::Status>>> {
        let next = std::task::ready!(self.messages.poll_message(cx));
        match &next {
            Some(Ok(_)) => {}
            Some(Err(status)) => self.finish(Some(status)),
            None => self.finish(None),
        }
        std::task::Poll::Ready(next)
    }

    /// The next message, awaited.
    pub async fn message(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        std::future::poll_fn(|cx| self.poll_message(cx))
            .await
            .transpose()
    }

    /// The trailing metadata of a stream that ended OK.
    pub fn trailers(&mut self) -> Option<HeaderMap> {
        self.messages.trailers()
    }

    fn finish(&mut self, error: Option<&tonic::Status>) {
        if let Some(guard) = self.guard.take() {
            guard.finish(error);
        }
    }
}

impl futures_util::Stream for ReplyStream {
    type Item = Result<Bytes, tonic::Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}

/// What a stream holds in its backend while it runs.
struct StreamGuard {
    backend: Arc<Backend>,
    endpoint: Arc<Endpoint>,
    admission: Admission,
    metrics: Arc<RouteMetrics>,
    started: Instant,
    /// The end was recorded (else the admission is abandoned on drop).
    finished: bool,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("backend", &self.backend.name)
            .field("endpoint", &self.endpoint.addr)
            .finish()
    }
}

impl StreamGuard {
    /// Takes the counts the attempt loop held over to the stream's life.
    fn new(
        backend: Arc<Backend>,
        endpoint: Arc<Endpoint>,
        admission: Admission,
        metrics: Arc<RouteMetrics>,
        started: Instant,
    ) -> StreamGuard {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.state.in_flight.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            backend,
            endpoint,
            admission,
            metrics,
            started,
            finished: false,
        }
    }

    /// The stream ended: OK (`None`) or with `error`.
    fn finish(mut self, error: Option<&tonic::Status>) {
        let b = &self.backend;
        let failure = error.map(|s| Failure::classify(s, true));
        let failed = failure.is_some_and(Failure::is_endpoint_failure);
        if failed {
            outlier::failure(
                &self.endpoint,
                &b.options.outlier,
                &b.endpoints.shared,
                &b.stats,
            );
        } else {
            outlier::success(&self.endpoint, &b.options.outlier);
        }
        b.breaker.record(self.admission, failed, &b.stats, &b.name);
        let code = error.map_or(Code::Ok, tonic::Status::code);
        if code == Code::DeadlineExceeded {
            b.stats.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.record_upstream(code, self.started.elapsed());
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.backend.breaker.abandon(self.admission);
        }
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint
            .state
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}
