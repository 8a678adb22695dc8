//! weft's HTTP/1.1 protocol code, apart from the gateway's policy: a server loop for plain
//! requests that hands everything else to hyper's server ([`server`]), a pooled upstream
//! client for requests whose body is in memory ([`client`]), and the body types they share
//! ([`body`]). No routing, no auth, no balancing: the gateway implements
//! [`server::Handler`] and keeps a [`client::Pool`] per upstream endpoint.
//!
//! Both halves exist because, on a proxy that is CPU-bound on one core, hyper's dispatcher
//! and hyper-util's pooled client (task hops, channels, boxed futures) were a measurable share
//! of each request; the plain cases are small enough to serve directly (see
//! `docs/benchmarks.md`, "API gateway").
//!
//! ```no_run
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use weft_h1::body::{full, Body, RequestBody};
//! use weft_h1::server::{serve_conn, Handler, Stop};
//!
//! /// Answers every request with its path.
//! struct Hello;
//!
//! impl Handler for Hello {
//!     type Peer = std::net::SocketAddr;
//!     fn header_read_timeout(&self) -> std::time::Duration {
//!         std::time::Duration::from_secs(10)
//!     }
//!     async fn handle(&self, req: Request<RequestBody>, _: &Self::Peer) -> Response<Body> {
//!         Response::new(full(req.uri().path().to_string()))
//!     }
//!     fn peer_addr(peer: &Self::Peer) -> std::net::SocketAddr {
//!         *peer
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (hello, stop) = (Arc::new(Hello), Stop::default());
//! loop {
//!     let (io, peer) = listener.accept().await?;
//!     tokio::spawn(serve_conn(io, hello.clone(), Arc::new(peer), stop.clone()));
//! }
//! # }
//! ```

pub mod body;
pub mod client;
pub mod server;

pub use client::decode_response;
pub use server::{decode_request, Decoded};
