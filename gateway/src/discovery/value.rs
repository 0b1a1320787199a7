//! What a key-value registry (etcd's plain layout, ZooKeeper's znodes)
//! stores for one instance, and how it becomes an address. Written by hand,
//! by scripts and by several client libraries, so a few shapes are
//! accepted, each with one meaning:
//!
//! - `host:port` (`[v6]:port` for an IPv6 address), surrounding whitespace
//!   ignored;
//! - JSON `{"host": "...", "port": N}` (a common hand-written shape);
//! - JSON `{"address": "...", "port": N}` (Apache Curator's
//!   `ServiceInstance`; `sslPort` is used when `port` is absent or null);
//! - JSON `{"Addr": "host:port"}` (grpc-go's naming update, also written by
//!   hand for etcd).
//!
//! Anything else is an error naming what was expected, so the caller can
//! skip that one entry with a log line.

use serde::Deserialize;

/// The shapes in the module comment, as one loose JSON object.
#[derive(Deserialize)]
struct Loose {
    host: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    #[serde(rename = "sslPort")]
    ssl_port: Option<u16>,
    #[serde(rename = "Addr")]
    addr: Option<String>,
}

/// Why a value is not an instance: says what was expected.
pub(crate) fn expected() -> &'static str {
    "expected host:port, {\"host\": ..., \"port\": N}, {\"address\": ..., \"port\": N} or {\"Addr\": \"host:port\"}"
}

/// The instance address a value names (see the module comment).
pub(crate) fn parse(value: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| format!("not UTF-8; {}", expected()))?
        .trim();
    if text.starts_with('{') {
        let v: Loose =
            serde_json::from_str(text).map_err(|e| format!("bad JSON ({e}); {}", expected()))?;
        if let Some(addr) = v.addr {
            return host_port(&addr);
        }
        let host = v.address.or(v.host).filter(|h| !h.trim().is_empty());
        return match (host, v.port.or(v.ssl_port)) {
            (Some(h), Some(p)) if p > 0 => Ok(join(h.trim(), p)),
            _ => Err(format!("no host and port; {}", expected())),
        };
    }
    host_port(text)
}

/// A `host:port` checked for shape: a non-empty host and a port 1-65535.
pub(crate) fn host_port(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = || format!("\"{}\" is not host:port; {}", short(text), expected());
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if port == 0 || bare.is_empty() || bare.contains(char::is_whitespace) {
        return Err(bad());
    }
    // An IPv6 address without brackets ("fd00::1:50051") is ambiguous.
    if bare.contains(':') && !host.starts_with('[') {
        return Err(bad());
    }
    Ok(join(bare, port))
}

fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!(
            "[{}]:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        )
    } else {
        format!("{host}:{port}")
    }
}

fn short(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_shape_is_an_address() {
        assert_eq!(parse(b" 10.0.0.1:50051\n").unwrap(), "10.0.0.1:50051");
        assert_eq!(parse(b"[fd00::1]:5").unwrap(), "[fd00::1]:5");
        assert_eq!(parse(b"users.svc:5").unwrap(), "users.svc:5");
        assert_eq!(
            parse(br#"{"host": "10.0.0.2", "port": 7}"#).unwrap(),
            "10.0.0.2:7"
        );
        assert_eq!(
            parse(br#"{"name":"users","id":"x","address":"fd00::2","port":8,"sslPort":null,"payload":null,"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#).unwrap(),
            "[fd00::2]:8"
        );
        assert_eq!(
            parse(br#"{"address": "h", "port": null, "sslPort": 9443}"#).unwrap(),
            "h:9443"
        );
        assert_eq!(
            parse(br#"{"Op":0,"Addr":"10.0.0.3:9","Metadata":null}"#).unwrap(),
            "10.0.0.3:9"
        );
    }

    #[test]
    fn anything_else_says_what_is_expected() {
        for bad in [
            &b""[..],
            b"10.0.0.1",
            b"10.0.0.1:0",
            b"10.0.0.1:99999",
            b":80",
            b"fd00::1:80",
            b"{\"host\": \"a\"}",
            b"{\"port\": 1}",
            b"{not json",
            b"\xff\xfe",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("expected host:port"), "{bad:?}: {e}");
        }
    }
}
