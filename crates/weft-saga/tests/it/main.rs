//! The saga suite on every backend.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

mod saga_embedded;
mod saga_etcd;
