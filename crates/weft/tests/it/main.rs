//! The weft binary as real processes.
//!
//! One test binary per crate: each file below was its own binary, and every binary links
//! the whole dependency tree again (disk and link time).

#[path = "../common/mod.rs"]
mod common;

mod coord;
mod etcdctl;
mod failover;
mod gateway;
mod hostile;
mod node;
mod partition;
mod queue;
mod repl;
mod saga;
mod tls;
mod ui;
