//! The deadline of one request: the route's timeout, shortened by a
//! deadline the client sent. It goes to the backend as `grpc-timeout` and
//! bounds every attempt and every retry wait.

use std::time::Duration;

use http::HeaderMap;

/// `grpc-timeout` as gRPC clients send it (PROTOCOL-HTTP2.md): at most 8
/// digits and a unit, H M S m u n.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `X-Request-Timeout`: a duration as in routes.toml ("500ms", "2s"), or a
/// bare number of seconds ("1.5"), as HTTP headers usually count time.
pub fn parse_request_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && (0.0..=86_400.0).contains(&secs))
            .then(|| Duration::from_secs_f64(secs));
    }
    crate::config::parse_duration(v).ok()
}

// Names made once: a lookup by `&str` parses and hashes the name each time.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
static X_REQUEST_TIMEOUT: http::HeaderName = http::HeaderName::from_static("x-request-timeout");

/// A deadline header the gateway cannot read. Refused with a 400 rather
/// than ignored: a client that sends a deadline counts on it, and a call
/// that silently ran to the route's timeout instead would surprise it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BadTimeout {
    #[error(
        "header grpc-timeout {0:?} is not a gRPC timeout: write 1 to 8 digits and a unit, \
         H (hours), M (minutes), S (seconds), m (milliseconds), u (microseconds) or \
         n (nanoseconds), e.g. \"500m\""
    )]
    Grpc(String),
    #[error(
        "header x-request-timeout {0:?} is not a timeout: write a number of seconds \
         (\"1.5\") or a duration with a unit, ms, s, m or h (\"500ms\"), at most a day"
    )]
    Plain(String),
}

/// The value as the error quotes it: enough to recognise, bounded so a
/// long header does not make a long answer.
fn quoted(v: &http::HeaderValue) -> String {
    let text = String::from_utf8_lossy(v.as_bytes());
    text.chars().take(40).collect()
}

/// The client's own deadline, the smaller of the two headers; an
/// unreadable value is an error (see [`BadTimeout`]).
pub fn client_timeout(headers: &HeaderMap) -> Result<Option<Duration>, BadTimeout> {
    let grpc = match headers.get(&GRPC_TIMEOUT) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(parse_grpc_timeout)
                .ok_or_else(|| BadTimeout::Grpc(quoted(v)))?,
        ),
    };
    let plain = match headers.get(&X_REQUEST_TIMEOUT) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(parse_request_timeout)
                .ok_or_else(|| BadTimeout::Plain(quoted(v)))?,
        ),
    };
    Ok(match (grpc, plain) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The route's timeout, capped by the client's if smaller. Unreadable
/// deadline headers were refused before the call (see `server`), so here
/// they cannot occur; the route's timeout is the safe reading.
pub fn effective(route: Duration, headers: &HeaderMap) -> Duration {
    client_timeout(headers)
        .ok()
        .flatten()
        .map_or(route, |c| c.min(route))
}

/// The message of every 504 for a call that ran out of time: the
/// gateway's own deadline passing, a streaming call's, and a backend
/// answering DEADLINE_EXCEEDED (the deadline it was sent ran out there).
/// One text for the one situation, so clients and log searches need one.
pub fn exceeded_message(backend: &str, deadline: Duration) -> String {
    format!("backend \"{backend}\" did not answer within the deadline of {deadline:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        for bad in [
            "",
            "m",
            "123456789m",
            "1x",
            "-1m",
            "1.5S",
            "soon",
            "100",
            "-5S",
            "99999999999S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_timeout_takes_units_or_seconds() {
        assert_eq!(
            parse_request_timeout("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_request_timeout("1.5"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_request_timeout("soon"), None);
        assert_eq!(parse_request_timeout("-1"), None);
    }

    #[test]
    fn the_smaller_deadline_wins() {
        let route = Duration::from_secs(5);
        let mut h = HeaderMap::new();
        assert_eq!(effective(route, &h), route);
        h.insert("x-request-timeout", "2s".parse().unwrap());
        assert_eq!(effective(route, &h), Duration::from_secs(2));
        h.insert("grpc-timeout", "300m".parse().unwrap());
        assert_eq!(effective(route, &h), Duration::from_millis(300));
        h.insert("grpc-timeout", "60S".parse().unwrap());
        assert_eq!(effective(route, &h), Duration::from_secs(2));
    }

    #[test]
    fn unreadable_deadline_headers_are_errors_naming_the_header() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "soon".parse().unwrap());
        let e = client_timeout(&h).unwrap_err().to_string();
        assert!(
            e.contains("grpc-timeout \"soon\"") && e.contains("8 digits"),
            "{e}"
        );
        let mut h = HeaderMap::new();
        h.insert("x-request-timeout", "-5S".parse().unwrap());
        let e = client_timeout(&h).unwrap_err().to_string();
        assert!(e.contains("x-request-timeout \"-5S\""), "{e}");
        let mut h = HeaderMap::new();
        h.insert("x-request-timeout", "100".parse().unwrap());
        h.insert("grpc-timeout", "99999999S".parse().unwrap());
        assert_eq!(client_timeout(&h).unwrap(), Some(Duration::from_secs(100)));
    }
}
