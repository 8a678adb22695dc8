//! etcd's API served by weft, through real clients (threads.rs stays apart: it counts the process's threads).
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod conformance_grpc;
mod etcd3gw;
mod gateway;
mod http2;
mod recipes;
mod server;
