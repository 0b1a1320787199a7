//! `[server.compression]`: answers compressed as the client's
//! `Accept-Encoding` asks.

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, LoadedFile};
use crate::encoding::Coding;

/// Answers shorter than this are sent as they are (1 KiB): below about a
/// TCP segment, compressing saves no round trip and costs CPU, and gzip's
/// own framing (18 bytes) eats much of what it saves.
pub const DEFAULT_MIN_BYTES: usize = 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Compress answers for clients that send `Accept-Encoding`. Request
    /// bodies sent with `Content-Encoding` (gzip, br, zstd, deflate) are
    /// read either way.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Answers whose length is known and smaller than this many bytes are
    /// not compressed (default 1024). Streamed answers (NDJSON, SSE) are
    /// compressed whatever their length, each message flushed as it is
    /// written.
    #[serde(default = "default_min_bytes")]
    pub min_bytes: usize,
    /// The codings offered, in the gateway's order of preference among
    /// those the client rates equally: `zstd`, `br`, `gzip`, `deflate`
    /// (default `["zstd", "br", "gzip"]`).
    #[serde(default = "default_algorithms")]
    #[schemars(with = "Vec<Coding>")]
    pub algorithms: Spanned<Vec<Coding>>,
}

fn yes() -> bool {
    true
}

fn default_min_bytes() -> usize {
    DEFAULT_MIN_BYTES
}

/// zstd first: at its default level it compresses about as well as gzip -6
/// at several times the speed; brotli (at the quality used here) next;
/// gzip, which every client has, last.
fn default_algorithms() -> Spanned<Vec<Coding>> {
    Spanned::new(0..0, vec![Coding::Zstd, Coding::Br, Coding::Gzip])
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_bytes: DEFAULT_MIN_BYTES,
            algorithms: default_algorithms(),
        }
    }
}

impl CompressionConfig {
    /// Checks the table; every problem names its line.
    pub fn validate(&self, file: &LoadedFile, errors: &mut Vec<ConfigError>) {
        if self.enabled && self.algorithms.get_ref().is_empty() {
            errors.push(file.error(
                &self.algorithms,
                "server.compression.algorithms",
                "lists no coding; name at least one of zstd, br, gzip, deflate, or set enabled = false",
            ));
        }
    }

    /// What the compression stage reads: `None` when nothing is offered.
    pub fn policy(&self) -> crate::encoding::compress::Policy {
        crate::encoding::compress::Policy {
            offered: if self.enabled {
                self.algorithms.get_ref().clone()
            } else {
                Vec::new()
            },
            min_bytes: self.min_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn errors(text: &str) -> Vec<String> {
        let f = LoadedFile::parse(Path::new("r.toml"), text).unwrap();
        let mut errors = Vec::new();
        f.config.server.compression.validate(&f, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_offer_zstd_br_gzip_above_one_kib() {
        let p = CompressionConfig::default().policy();
        assert_eq!(p.offered, vec![Coding::Zstd, Coding::Br, Coding::Gzip]);
        assert_eq!(p.min_bytes, 1024);
        assert!(errors("").is_empty());
    }

    #[test]
    fn an_empty_list_is_refused_with_its_line_unless_compression_is_off() {
        let e = errors("[server]\n\n[server.compression]\nalgorithms = []\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("r.toml:4") && e[0].contains("server.compression.algorithms"),
            "{e:?}"
        );
        assert!(errors("[server.compression]\nenabled = false\nalgorithms = []\n").is_empty());
    }

    #[test]
    fn an_unknown_coding_is_a_parse_error() {
        let r = LoadedFile::parse(
            Path::new("r.toml"),
            "[server.compression]\nalgorithms = [\"lz4\"]\n",
        );
        let text = match r {
            Ok(_) => panic!("lz4 was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(text.contains("lz4"), "{text}");
    }
}
