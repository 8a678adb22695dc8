//! The queue's backends: the embedded backend's own contract and the conformance suite.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

mod embedded;
#[cfg(feature = "suite")]
mod queue_embedded;
#[cfg(all(feature = "suite", feature = "nats"))]
mod queue_nats;
