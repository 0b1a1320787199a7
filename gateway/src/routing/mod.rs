//! Request routing: `google.api.http` path templates, percent-decoding of
//! bound values, and the route table that maps (method, path) to a route.
//!
//! Kept free of HTTP and protobuf types so it can be tested and reasoned
//! about on its own; the transcoder owns the payload type `T`.

pub mod escape;
pub mod matcher;
pub mod template;

pub use escape::{decode, EscapeError};
pub use matcher::{Conflict, Lookup, Matcher, PathError};
pub use template::{Segment, Template, TemplateError, Variable};
