//! Resilience middleware for tokio services: circuit breaker, adaptive throttling, retry with
//! budgets, timeout, bulkhead and rate limiting. Every piece is a tower
//! [`Layer`](tower::Layer) and [`Service`](tower::Service) (usable in axum, tonic, hyper and the
//! weft gateway) and also a plain async API.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use weft_resilience::circuit::{CircuitBreaker, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder("payments")
//!     .failure_rate(50.0)
//!     .count_window(20)
//!     .minimum_calls(10)
//!     .wait_in_open(Duration::from_secs(5), 2.0, Duration::from_secs(60))
//!     .half_open(3, Duration::from_secs(2))
//!     .build()
//!     .expect("valid settings");
//! for _ in 0..10 {
//!     let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let r = breaker.call(|| async { Ok::<_, &str>(1) }).await;
//! assert!(r.unwrap_err().is_rejected());
//! # }
//! ```
//!
//! The full stack, composed by [`builder::ResilienceBuilder`] in its documented order, is shown
//! in that module.

pub mod builder;
pub mod bulkhead;
pub mod circuit;
pub mod classify;
pub mod future;
pub mod ratelimit;
pub mod retry;
pub mod rng;
pub mod throttle;
pub mod timeout;

pub use classify::{Classify, ErrorsAreFailures, HttpClassifier, Outcome};

/// The response future of the boxed middlewares (retry and bulkhead: they await shared state
/// before or between calls; see [`future`] for the others).
pub type BoxResponse<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tower::BoxError>> + Send>>;
