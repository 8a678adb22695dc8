//! The tower service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::ResponseFuture;
use super::CircuitBreaker;
use crate::classify::Classify;

/// A service guarded by a circuit breaker.
///
/// `poll_ready` only forwards the inner service's readiness: it never rejects, because an error
/// from `poll_ready` tells tower that the service is unusable for good (a `Buffer` or a
/// balancer would drop it), while an open breaker is a passing condition. The refusal happens in
/// `call`: the response future resolves at once, without calling the inner service, to a
/// `BoxError` holding [`CallNotPermitted`](super::CallNotPermitted). Recognise it with
/// [`is_rejected`](super::is_rejected); a half-open probe cut off at its deadline resolves to
/// [`ProbeTimeout`](super::ProbeTimeout) ([`is_probe_timeout`](super::is_probe_timeout)).
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: Arc<CircuitBreaker>, classifier: C) -> Self {
        CircuitBreakerService {
            inner,
            breaker,
            classifier,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => {
                let deadline = permit
                    .is_probe()
                    .then(|| self.breaker.config().probe_timeout);
                ResponseFuture::new(
                    self.inner.call(req),
                    self.breaker.clone(),
                    permit,
                    self.classifier.clone(),
                    deadline,
                )
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
