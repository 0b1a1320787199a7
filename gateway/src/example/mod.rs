//! The bundled example backend and the dynamic gRPC server it runs on.

pub mod bookstore;
pub mod dynamic;

pub use dynamic::{BoxFuture, DynamicServer, Handler, MessageStream, StreamHandler};
