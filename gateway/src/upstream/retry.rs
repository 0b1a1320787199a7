//! Which failures are retried, how long to wait before a retry, and the
//! budget that keeps retries from multiplying the load on a backend that
//! is already failing.
//!
//! A request that provably never reached an instance (the connection
//! failed, the stream was refused, a GOAWAY said it was not processed) is
//! retried on another instance on any route, whatever `attempts` and the
//! budget say, as gRPC's transparent retries are. Anything else is retried
//! only on routes that are safe to repeat: GET routes, and routes with an
//! explicit `retry_on`.

use std::time::Duration;

use tonic::Code;

use super::window::Window;

/// Three tries: a second instance and a third, which gets past one bad
/// instance plus one that is just being removed.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// A first retry soon enough not to add visible latency, ...
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// ... and a cap well below typical deadlines (gRPC's own retry policy
/// examples use a few hundred milliseconds).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Retries at most 20% on top of the requests (Envoy's and Finagle's
/// budgets use 20% too): a failing backend sees at most 1.2x its load.
pub const DEFAULT_BUDGET: f64 = 0.2;
/// Below this many retries per second the budget does not apply: at low
/// traffic a few retries cannot overload anything, and they are what
/// carries requests past a dying instance.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// The budget looks at the last 10 s of traffic.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A backend's retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySpec {
    /// Tries per request, the first included; 1 turns retries off.
    pub attempts: u32,
    /// Codes retried on safe routes (connect failures always are).
    pub retry_on: Vec<Code>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget: f64,
    pub min_retries_per_second: u32,
    /// How long one attempt may take; `None`: the whole deadline. An
    /// attempt cut by it counts against the instance (outlier detection)
    /// and is retried on routes safe to repeat, as Envoy's `per_try_timeout`.
    /// Off by default: only the operator knows how long a call should take.
    pub per_try_timeout: Option<Duration>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: DEFAULT_ATTEMPTS,
            retry_on: vec![Code::Unavailable],
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            budget: DEFAULT_BUDGET,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            per_try_timeout: None,
        }
    }
}

/// What one request may retry on, decided by its route.
#[derive(Debug, Clone, Copy)]
pub enum RouteRetry<'a> {
    /// Safe to retry, on the backend's `retry_on` codes (GET routes).
    BackendCodes,
    /// Safe to retry, on these codes (the route's own `retry_on`).
    Codes(&'a [Code]),
    /// Not safe: only connect failures are retried.
    ConnectFailuresOnly,
}

impl<'a> RouteRetry<'a> {
    /// GET is safe by default; a route's explicit `retry_on` decides otherwise.
    pub fn for_route(method: &str, retry_on: Option<&'a [Code]>) -> RouteRetry<'a> {
        match retry_on {
            Some(codes) => RouteRetry::Codes(codes),
            None if method == "GET" => RouteRetry::BackendCodes,
            None => RouteRetry::ConnectFailuresOnly,
        }
    }

    /// Whether the route may repeat a request that may have been processed
    /// at all: a GET, or a route whose `retry_on` lists any code.
    pub(crate) fn repeatable(&self) -> bool {
        match self {
            RouteRetry::BackendCodes => true,
            RouteRetry::Codes(codes) => !codes.is_empty(),
            RouteRetry::ConnectFailuresOnly => false,
        }
    }

    pub(crate) fn allows(&self, code: Code, spec: &RetrySpec) -> bool {
        match self {
            RouteRetry::BackendCodes => spec.retry_on.contains(&code),
            RouteRetry::Codes(codes) => codes.contains(&code),
            RouteRetry::ConnectFailuresOnly => false,
        }
    }
}

/// The code's name as written in config: `unavailable`, `resource_exhausted`.
pub fn parse_code(name: &str) -> Option<Code> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    Some(match n.as_str() {
        "cancelled" => Code::Cancelled,
        "unknown" => Code::Unknown,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        _ => return None,
    })
}

/// How an attempt failed, as far as balancing and retrying care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request provably never reached the instance's application: no
    /// connection, a refused stream, a stream above a GOAWAY's last id.
    Connect,
    /// No answer within the per-try timeout (or the deadline).
    TimedOut,
    /// UNAVAILABLE from the backend, or the connection broke mid-call
    /// (tonic reports those with the transport error as the source).
    Unavailable,
    /// Any other status the backend answered with: the endpoint is healthy.
    Answered(Code),
}

impl Failure {
    pub(crate) fn classify(status: &tonic::Status, sent: bool) -> Failure {
        if !sent {
            return Failure::Connect;
        }
        // A status the backend sent has no source; one tonic made from a
        // transport error (a reset, a connection closed before the request
        // went out, whatever code tonic gave it) has the error as its source.
        let transport = std::error::Error::source(status).is_some();
        match status.code() {
            Code::Unavailable => Failure::Unavailable,
            _ if transport => Failure::Unavailable,
            code => Failure::Answered(code),
        }
    }

    /// Counts against the endpoint (outlier detection) and the backend
    /// (breaker). A slow answer counts too, the backend's own
    /// DEADLINE_EXCEEDED included: an instance that cannot answer within the
    /// deadline fails its callers as surely as one that is down.
    pub(crate) fn is_endpoint_failure(self) -> bool {
        matches!(
            self,
            Failure::Connect
                | Failure::Unavailable
                | Failure::TimedOut
                | Failure::Answered(Code::DeadlineExceeded)
        )
    }

    pub(crate) fn retryable(self, route: &RouteRetry<'_>, spec: &RetrySpec) -> bool {
        match self {
            Failure::Connect => true,
            Failure::TimedOut => route.repeatable(),
            Failure::Unavailable => route.allows(Code::Unavailable, spec),
            Failure::Answered(code) => route.allows(code, spec),
        }
    }
}

/// A transport failure as the client sees it: UNAVAILABLE (503), whatever
/// code tonic picked, with the source chain ("connection reset") in the message.
pub(crate) fn as_unavailable(status: tonic::Status) -> tonic::Status {
    if status.code() == Code::Unavailable {
        return status;
    }
    let mut msg = status.message().to_owned();
    let mut source = std::error::Error::source(&status);
    while let Some(e) = source {
        let text = e.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = e.source();
    }
    tonic::Status::unavailable(msg)
}

/// The wait before retry number `n` (1-based): `backoff * 2^(n-1)` capped
/// at `max_backoff`, then a random 50-100% of it, so that requests failing
/// together do not retry together.
pub(crate) fn backoff(spec: &RetrySpec, n: u32) -> Duration {
    let exp = spec
        .backoff
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(spec.max_backoff);
    exp.mul_f64(0.5 + 0.5 * super::rng::unit())
}

/// Requests and retries over the last 10 s.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// `a`: requests, `b`: retries.
    window: Window,
    ratio: f64,
    min_per_window: u64,
}

impl RetryBudget {
    pub(crate) fn new(spec: &RetrySpec) -> RetryBudget {
        RetryBudget {
            window: Window::new(BUDGET_WINDOW),
            ratio: spec.budget,
            min_per_window: u64::from(spec.min_retries_per_second) * BUDGET_WINDOW.as_secs(),
        }
    }

    pub(crate) fn request(&self) {
        self.window.add(1, 0);
    }

    /// Takes one retry from the budget if there is one left.
    pub(crate) fn try_retry(&self) -> bool {
        let (requests, retries) = self.window.sums();
        let allowed = ((requests as f64 * self.ratio) as u64).max(self.min_per_window);
        if retries >= allowed {
            return false;
        }
        self.window.add(0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_is_safe_and_an_explicit_list_wins() {
        let spec = RetrySpec::default();
        let get = RouteRetry::for_route("GET", None);
        assert!(Failure::Unavailable.retryable(&get, &spec));
        assert!(!Failure::Answered(Code::NotFound).retryable(&get, &spec));
        let post = RouteRetry::for_route("POST", None);
        assert!(!Failure::Unavailable.retryable(&post, &spec));
        assert!(
            Failure::Connect.retryable(&post, &spec),
            "connect failures are always safe"
        );
        let codes = [Code::ResourceExhausted];
        let listed = RouteRetry::for_route("POST", Some(&codes));
        assert!(Failure::Answered(Code::ResourceExhausted).retryable(&listed, &spec));
        assert!(!Failure::Unavailable.retryable(&listed, &spec));
        let none = RouteRetry::for_route("GET", Some(&[]));
        assert!(!Failure::Unavailable.retryable(&none, &spec));
    }

    #[test]
    fn code_names_parse_in_either_case() {
        assert_eq!(parse_code("unavailable"), Some(Code::Unavailable));
        assert_eq!(
            parse_code("RESOURCE_EXHAUSTED"),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(
            parse_code("resource-exhausted"),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(parse_code("ok"), None);
        assert_eq!(parse_code("nope"), None);
    }

    #[test]
    fn a_server_status_is_an_answer_and_a_broken_connection_is_not() {
        assert_eq!(
            Failure::classify(&tonic::Status::not_found("x"), true),
            Failure::Answered(Code::NotFound)
        );
        assert_eq!(
            Failure::classify(&tonic::Status::unavailable("x"), true),
            Failure::Unavailable
        );
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert_eq!(Failure::classify(&broken, true), Failure::Unavailable);
        let shown = as_unavailable(broken);
        assert_eq!(shown.code(), Code::Unavailable);
        assert!(shown.message().contains("reset"), "{}", shown.message());
        assert_eq!(
            Failure::classify(&tonic::Status::unavailable("x"), false),
            Failure::Connect
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let spec = RetrySpec::default();
        for n in 1..10 {
            let d = backoff(&spec, n);
            let full = (spec.backoff * (1 << (n - 1))).min(spec.max_backoff);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
    }

    #[test]
    fn budget_caps_retries_at_a_share_of_requests_above_the_floor() {
        let spec = RetrySpec {
            budget: 0.2,
            min_retries_per_second: 1,
            ..Default::default()
        };
        let b = RetryBudget::new(&spec);
        for _ in 0..1000 {
            b.request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 200);
        let quiet = RetryBudget::new(&spec);
        quiet.request();
        assert_eq!(
            (0..100).filter(|_| quiet.try_retry()).count(),
            10,
            "the floor: 1/s over 10 s"
        );
    }
}
