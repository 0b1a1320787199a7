//! What an operator sees without reading code: Prometheus metrics, one
//! access-log line per request, request ids, W3C trace context and, when
//! configured, OpenTelemetry traces exported over OTLP.

pub mod access;
pub mod ecs;
pub mod log_writer;
pub mod metrics;
pub mod otel;
pub mod process;
pub mod propagation;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use access::{Access, AccessLayer, RequestContext};

/// Filled in by the request handler and carried on the response's
/// extensions to the access layer, which logs and counts it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The route template (bounded cardinality), not the raw path.
    pub route: Option<Arc<str>>,
    pub grpc_method: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// The matched route's cached metric handles.
    pub metrics: Option<Arc<metrics::RouteMetrics>>,
    pub endpoint: Option<String>,
    pub grpc_code: Option<i32>,
    pub retries: u32,
    /// The JWT subject when the request carried a valid token; never the token.
    pub subject: Option<String>,
    /// The client address after trusted proxies, when the edge settled it.
    pub client: Option<std::net::IpAddr>,
    /// Still running when `server.drain_timeout` passed, and answered 503
    /// by the gateway instead of the backend.
    pub drain_aborted: bool,
}

/// Whether the installed log format is JSON: the access log quotes values
/// only in the text format (JSON quotes them itself). Global like the
/// subscriber it describes.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// Sets up `tracing` output: text on a terminal, JSON lines otherwise (or as
/// configured). RUST_LOG, when set, wins over `log_level`.
pub fn init_logging(cfg: &crate::config::TelemetryConfig) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ecs = cfg.log_format == crate::config::LogFormat::Ecs;
    let json = match cfg.log_format {
        crate::config::LogFormat::Json | crate::config::LogFormat::Ecs => true,
        crate::config::LogFormat::Text => false,
        crate::config::LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colours only on a terminal: escape codes in a log file are noise.
    // Elsewhere lines go out in batches (log_writer): with the access log
    // on, a write per request costs more than the rest of the log line.
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(if terminal {
            BoxMakeWriter::new(std::io::stderr)
        } else {
            BoxMakeWriter::new(log_writer::Batched::start())
        });
    // A second init (tests running several gateways) keeps the first.
    let installed = if ecs {
        builder.event_format(ecs::EcsFormat).try_init()
    } else if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        JSON_LOGS.store(json, Ordering::Relaxed);
    }
}
