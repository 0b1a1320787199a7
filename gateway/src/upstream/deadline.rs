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

/// The client's own deadline, the smaller of the two headers; unreadable
/// values are ignored (the route's timeout still applies).
pub fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let grpc = headers
        .get(&GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let plain = headers
        .get(&X_REQUEST_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_request_timeout);
    match (grpc, plain) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The route's timeout, capped by the client's if smaller.
pub fn effective(route: Duration, headers: &HeaderMap) -> Duration {
    client_timeout(headers).map_or(route, |c| c.min(route))
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
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S"] {
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
}
