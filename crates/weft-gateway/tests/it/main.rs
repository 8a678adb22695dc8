//! The gateway through its public interface.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod hostile_h1;
mod proxy;
mod server;
mod store;
mod structure;
mod tls;
