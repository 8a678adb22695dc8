//! The response future: records the outcome when the inner future completes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Duration, Sleep};
use tower::BoxError;

use super::{CallNotPermitted, CircuitBreaker, Permit, ProbeTimeout};
use crate::classify::{Classify, Outcome};

pin_project! {
    /// Future of [`super::CircuitBreakerService`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        state: Option<(Arc<CircuitBreaker>, Permit, C)>,
        rejected: Option<CallNotPermitted>,
        deadline: Option<Pin<Box<Sleep>>>,
    }

    impl<F, C> PinnedDrop for ResponseFuture<F, C> {
        fn drop(this: Pin<&mut Self>) {
            // Cancelled before completion: free the permit (a probe's slot).
            if let Some((b, p, _)) = this.project().state.take() {
                b.release(p);
            }
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        inner: F,
        breaker: Arc<CircuitBreaker>,
        permit: Permit,
        classifier: C,
        deadline: Option<Duration>,
    ) -> Self {
        ResponseFuture {
            inner: Some(inner),
            state: Some((breaker, permit, classifier)),
            rejected: None,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    pub(crate) fn rejected(e: CallNotPermitted) -> Self {
        ResponseFuture {
            inner: None,
            state: None,
            rejected: Some(e),
            deadline: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(e) = this.rejected.take() {
            return Poll::Ready(Err(Box::new(e)));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            panic!("ResponseFuture polled after completion");
        };
        match inner.poll(cx) {
            Poll::Ready(result) => {
                if let Some((b, p, c)) = this.state.take() {
                    let outcome = c.classify(&result);
                    b.record(p, outcome);
                }
                this.inner.set(None);
                Poll::Ready(result.map_err(Into::into))
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        if let Some((b, p, _)) = this.state.take() {
                            b.record(p, Outcome::Failure);
                        }
                        this.inner.set(None);
                        return Poll::Ready(Err(Box::new(ProbeTimeout)));
                    }
                }
                Poll::Pending
            }
        }
    }
}
