//! How a backend's connections are made: its own module, so the client that
//! makes them and the endpoint that holds them both read it without
//! depending on each other.

use std::time::Duration;

/// How connections to a backend's instances are made and what their calls
/// send: part of the connection, so a change makes new endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub connect_timeout: Duration,
    /// `compression` of the backend: request messages compressed, and the
    /// same compression asked for in replies.
    pub compression: Option<crate::encoding::grpc::MessageCompression>,
    /// `tls` of the backend; plaintext (h2c) when absent.
    pub tls: Option<std::sync::Arc<super::tls::BackendTls>>,
}

impl From<Duration> for Dial {
    fn from(connect_timeout: Duration) -> Dial {
        Dial {
            connect_timeout,
            compression: None,
            tls: None,
        }
    }
}
