//! The body types: what the server loop hands its handler ([`RequestBody`]) and what it sends
//! and the client receives ([`Body`]), with their constructors.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Body type of requests sent upstream and responses sent to clients.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// Boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of these bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A request's body as the server loop hands it over.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from hyper's server (the connections the fast loop hands to hyper).
    Incoming(hyper::body::Incoming),
    /// Already read whole (the fast loop reads small bodies before handing the request over).
    Buffered(Bytes),
}
