//! The HTTP API end to end over real sockets.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod auth;
mod dashboard;
mod saga;
mod tls;
