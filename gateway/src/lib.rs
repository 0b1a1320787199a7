//! An edge API gateway: REST/JSON in, gRPC out, from descriptors loaded at run time.
//!
//! The request path runs edge -> transcode -> upstream; every piece of
//! configuration it reads lives in one immutable [`snapshot::Snapshot`].

pub mod accept;
pub mod admin;
pub mod cache;
pub mod config;
pub mod consul;
pub mod consul_kv;
pub mod descriptors;
pub mod discovery;
pub mod edge;
pub mod encoding;
pub mod error;
pub mod example;
pub mod openapi;
pub mod pipeline;
pub mod reload;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod transcode;
pub mod upstream;
pub mod validate;
pub mod workers;
