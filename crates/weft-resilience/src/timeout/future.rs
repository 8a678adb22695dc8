//! The response future of [`super::TimeoutService`]: the inner future raced against a timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Duration, Sleep};
use tower::BoxError;

use super::Elapsed;

pin_project! {
    /// Future of [`super::TimeoutService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        std::task::ready!(this.sleep.poll(cx));
        Poll::Ready(Err(Box::new(Elapsed(*this.after))))
    }
}
