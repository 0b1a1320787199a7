//! `log_format = "ecs"`: one JSON object per line with the field names of
//! the Elastic Common Schema, so Filebeat or Logstash ship the logs to
//! Elasticsearch without a parsing pipeline (their ndjson input reads each
//! line as the document).
//!
//! Every event gets `@timestamp`, `log.level`, `log.logger` (the target),
//! `message` and `ecs.version`. The access log's fields are renamed to their
//! ECS names (the table below); what ECS has no field for goes under the
//! `gateway.` namespace, as ECS asks of custom fields. Other events keep
//! their own field names. Keys are dotted, which Elasticsearch and
//! Filebeat's `expand_keys` read as nested objects.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The ECS release whose field names these are.
pub const ECS_VERSION: &str = "8.11";

/// The access log's field names to ECS's.
fn access_name(field: &str) -> &str {
    match field {
        "request_id" => "http.request.id",
        "trace_id" => "trace.id",
        "client.ip" => "client.ip",
        "http.method" => "http.request.method",
        "url.path" => "url.path",
        "http.status" => "http.response.status_code",
        "bytes_in" => "http.request.body.bytes",
        "bytes_out" => "http.response.body.bytes",
        "upstream.addr" => "destination.address",
        "jwt.sub" => "user.name",
        "route" => "gateway.route",
        "grpc.method" => "gateway.grpc.method",
        "grpc.code" => "gateway.grpc.code",
        "retries" => "gateway.retries",
        other => other,
    }
}

/// Formats events as ECS JSON lines.
pub struct EcsFormat;

struct Fields<'a> {
    map: &'a mut Map<String, Value>,
    access: bool,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if self.access {
            match name {
                // ECS counts durations in nanoseconds.
                "duration_us" => {
                    let ns = value.as_u64().map(|us| us.saturating_mul(1000));
                    self.map.insert("event.duration".to_owned(), ns.into());
                    return;
                }
                // Empty: the request had none (no upstream, no token).
                _ if value.as_str() == Some("") => return,
                "grpc.code" if value.as_i64() == Some(-1) => return,
                _ => {}
            }
            self.map.insert(access_name(name).to_owned(), value);
        } else {
            self.map.insert(name.to_owned(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for EcsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let access = meta.target() == super::access::TARGET;
        let mut doc = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        doc.insert("@timestamp".to_owned(), timestamp.into());
        doc.insert(
            "log.level".to_owned(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        doc.insert("log.logger".to_owned(), meta.target().into());
        event.record(&mut Fields {
            map: &mut doc,
            access,
        });
        if access {
            doc.insert("event.dataset".to_owned(), "gateway.access".into());
            doc.insert("event.kind".to_owned(), "event".into());
            doc.insert("event.category".to_owned(), Value::from(vec!["web"]));
            let status = doc
                .get("http.response.status_code")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            doc.insert(
                "event.outcome".to_owned(),
                if status >= 500 { "failure" } else { "success" }.into(),
            );
        }
        doc.insert("ecs.version".to_owned(), ECS_VERSION.into());
        writeln!(writer, "{}", Value::Object(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn access_fields_get_their_ecs_names_and_others_keep_theirs() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(EcsFormat)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access",
                request_id = "r1",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                client.ip = "127.0.0.1",
                http.method = "GET",
                url.path = "/v1/shelves/1",
                route = "/v1/shelves/{shelf}",
                http.status = 503u64,
                grpc.code = -1i64,
                upstream.addr = "",
                duration_us = 1500u64,
                jwt.sub = "",
                message = "request"
            );
            tracing::warn!(backend = "users", "discovery failing");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let a = &lines[0];
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["url.path"], "/v1/shelves/1");
        assert_eq!(a["http.response.status_code"], 503);
        assert_eq!(a["event.duration"], 1_500_000);
        assert_eq!(a["trace.id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a["gateway.route"], "/v1/shelves/{shelf}");
        assert_eq!(a["event.outcome"], "failure");
        assert_eq!(a["log.level"], "info");
        assert_eq!(a["message"], "request");
        assert!(a.get("destination.address").is_none() && a.get("gateway.grpc.code").is_none());
        assert!(a["@timestamp"].as_str().unwrap().ends_with('Z'), "{a}");
        let w = &lines[1];
        assert_eq!(w["backend"], "users");
        assert_eq!(w["log.level"], "warn");
        assert_eq!(w["message"], "discovery failing");
        assert_eq!(w["ecs.version"], ECS_VERSION);
        assert!(w.get("event.dataset").is_none());
    }
}
