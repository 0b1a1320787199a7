//! gzip for gRPC messages (the gRPC compression spec): a backend configured
//! with `compression = "gzip"` gets its request messages compressed, and a
//! reply whose `grpc-encoding` is gzip is decoded, from any backend.

use std::io::{self, Read as _, Write as _};

use serde::{Deserialize, Serialize};

/// How request messages to a backend are compressed (`compression` on a
/// backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageCompression {
    /// gzip, the one compression every gRPC implementation has.
    Gzip,
}

/// The `grpc-encoding` / `grpc-accept-encoding` name.
pub const GZIP: &str = "gzip";

/// `message`, gzip-compressed.
pub fn gzip(message: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(message.len() / 2 + 32),
        flate2::Compression::new(6),
    );
    e.write_all(message)?;
    e.finish()
}

/// A gzip-compressed message, decoded; more than `limit` bytes decoded is
/// an error (a small message must not inflate past the reply limit).
pub fn gunzip(message: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut d = flate2::read::GzDecoder::new(message).take(limit as u64 + 1);
    d.read_to_end(&mut out)
        .map_err(|e| format!("the backend's gzip-compressed message does not decode: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "the backend's compressed message decodes to more than the limit of {limit} bytes"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_a_bomb_stops_at_the_limit() {
        let m = b"hello hello hello".repeat(100);
        assert_eq!(gunzip(&gzip(&m).unwrap(), 1 << 20).unwrap(), m);
        let bomb = gzip(&vec![0u8; 1 << 20]).unwrap();
        assert!(gunzip(&bomb, 1000)
            .unwrap_err()
            .contains("more than the limit"));
        assert!(gunzip(b"nope", 1000)
            .unwrap_err()
            .contains("does not decode"));
    }
}
