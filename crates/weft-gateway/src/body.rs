//! The body type the gateway sends and receives, and its constructors. A leaf: the proxy,
//! the HTTP/1.1 client and the server loop all use it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Body type of requests sent upstream and responses sent to clients.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// Boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}
