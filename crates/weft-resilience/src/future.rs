//! The response future of the middlewares that decide before the call and observe after it
//! (rate limit, throttling): refused at once, or the inner future with its error boxed and,
//! when it completes, its outcome shown to a hook. Named, not boxed: no allocation per call.
//! Timeout has its own future (it races a timer); bulkhead and retry stay boxed, since they
//! await shared state (a permit, a backoff) before or between calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

/// What a middleware does with a call's outcome.
pub trait Observe<R, E> {
    /// Called once, with the inner service's result.
    fn observe(&mut self, result: &Result<R, E>);
}

/// No observation.
impl<R, E> Observe<R, E> for () {
    fn observe(&mut self, _: &Result<R, E>) {}
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused { error: Option<BoxError> },
        Running { #[pin] fut: F },
    }
}

pin_project! {
    /// Future of the rate-limit and throttle services.
    pub struct Guarded<F, H> {
        #[pin]
        state: State<F>,
        hook: H,
    }
}

impl<F, H> Guarded<F, H> {
    /// A call refused before it started.
    pub(crate) fn refused(error: BoxError, hook: H) -> Self {
        Guarded {
            state: State::Refused { error: Some(error) },
            hook,
        }
    }

    /// A call running `fut`.
    pub(crate) fn running(fut: F, hook: H) -> Self {
        Guarded {
            state: State::Running { fut },
            hook,
        }
    }
}

impl<F, H, R, E> Future for Guarded<F, H>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    H: Observe<R, E>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            StateProj::Running { fut } => {
                let r = std::task::ready!(fut.poll(cx));
                this.hook.observe(&r);
                Poll::Ready(r.map_err(Into::into))
            }
        }
    }
}
