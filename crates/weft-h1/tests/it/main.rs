//! weft's HTTP/1.1 client and server through their public interface.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

mod client;
mod server;
