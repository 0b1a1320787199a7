//! The bundled example backends (the bookstore, the validation example's
//! sign-up service) and the dynamic gRPC server they run on.

pub mod bookstore;
pub mod dynamic;
pub mod signup;

pub use dynamic::{BoxFuture, DynamicServer, Handler, MessageStream, StreamHandler};
