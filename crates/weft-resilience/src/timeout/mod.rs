//! Timeout: fails a call that takes longer than a deadline (and cancels it).

use std::task::{Context, Poll};

mod future;
pub use future::ResponseFuture;

use tokio::time::Duration;
use tower::{BoxError, Layer, Service};

/// The call ran past its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("call timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Runs `f` with a deadline.
pub async fn timeout<F: std::future::Future>(after: Duration, f: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| Elapsed(after))
}

/// Layer adding a timeout.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer(pub Duration);

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            after: self.0,
        }
    }
}

/// A service with a timeout.
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    after: Duration,
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.after)
    }
}
