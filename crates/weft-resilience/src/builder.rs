//! Composes the middlewares in one documented order.
//!
//! From the outside in:
//!
//! 1. **rate limit** – sheds excess load before any work, once per logical request;
//! 2. **retry** – each attempt goes through everything below, within its budget;
//! 3. **circuit breaker** – sees every attempt, including timeouts, as success or failure;
//! 4. **bulkhead** – only calls the breaker admitted take a concurrency slot;
//! 5. **timeout** – per attempt, innermost, so a slow call becomes a failure the breaker counts.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Service, ServiceExt};
//! use weft_resilience::builder::ResilienceBuilder;
//! use weft_resilience::circuit::CircuitBreaker;
//! use weft_resilience::retry::{RetryDecision, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = Arc::new(CircuitBreaker::builder("backend").build().unwrap());
//! let retry = RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(200)).unwrap();
//! let mut svc = ResilienceBuilder::<u32, u32>::new()
//!     .retry(retry, |_: &u32, r: &Result<u32, tower::BoxError>| {
//!         if r.is_err() { RetryDecision::Yes { after: None } } else { RetryDecision::No }
//!     })
//!     .circuit_breaker(breaker.clone())
//!     .bulkhead(64, Duration::from_millis(50))
//!     .timeout(Duration::from_secs(1))
//!     .service(tower::service_fn(|x: u32| async move { Ok::<_, tower::BoxError>(x * 2) }));
//! assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
//! # }
//! ```

use std::sync::Arc;

use tokio::time::Duration;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::circuit::{CircuitBreaker, CircuitBreakerLayer};
use crate::classify::{Classify, ErrorsAreFailures, Outcome};
use crate::ratelimit::{RateLimitLayer, RateLimiter};
use crate::retry::{RetryClassify, RetryLayer, RetryPolicy};
use crate::timeout::TimeoutLayer;

/// A classifier behind an `Arc`, so the builder can hold any.
pub struct DynClassify<T, E>(Arc<dyn Classify<T, E>>);

impl<T, E> Clone for DynClassify<T, E> {
    fn clone(&self) -> Self {
        DynClassify(self.0.clone())
    }
}

impl<T, E> Classify<T, E> for DynClassify<T, E> {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self.0.classify(result)
    }
}

type KeyFn<Req> = Arc<dyn Fn(&Req) -> String + Send + Sync>;
type RetryCls<Req, Resp> = Arc<dyn RetryClassify<Req, Resp, BoxError>>;

/// Builds a service wrapped in the chosen middlewares (see the module docs for the order).
pub struct ResilienceBuilder<Req, Resp> {
    rate_limit: Option<(Arc<RateLimiter<String>>, KeyFn<Req>)>,
    retry: Option<(Arc<RetryPolicy>, RetryCls<Req, Resp>)>,
    breaker: Option<(Arc<CircuitBreaker>, DynClassify<Resp, BoxError>)>,
    bulkhead: Option<Bulkhead>,
    timeout: Option<Duration>,
}

impl<Req, Resp> Default for ResilienceBuilder<Req, Resp> {
    fn default() -> Self {
        ResilienceBuilder {
            rate_limit: None,
            retry: None,
            breaker: None,
            bulkhead: None,
            timeout: None,
        }
    }
}

struct ArcRetry<Req, Resp>(RetryCls<Req, Resp>);

impl<Req, Resp> RetryClassify<Req, Resp, BoxError> for ArcRetry<Req, Resp> {
    fn decide(&self, req: &Req, result: &Result<Resp, BoxError>) -> crate::retry::RetryDecision {
        self.0.decide(req, result)
    }
}

impl<Req, Resp> ResilienceBuilder<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-key rate limit.
    pub fn rate_limit(
        mut self,
        limiter: Arc<RateLimiter<String>>,
        key: impl Fn(&Req) -> String + Send + Sync + 'static,
    ) -> Self {
        self.rate_limit = Some((limiter, Arc::new(key)));
        self
    }

    /// Retries.
    pub fn retry(
        mut self,
        policy: RetryPolicy,
        classifier: impl RetryClassify<Req, Resp, BoxError> + 'static,
    ) -> Self {
        self.retry = Some((Arc::new(policy), Arc::new(classifier)));
        self
    }

    /// A circuit breaker counting errors as failures.
    pub fn circuit_breaker(self, breaker: Arc<CircuitBreaker>) -> Self {
        self.circuit_breaker_with(breaker, ErrorsAreFailures)
    }

    /// A circuit breaker with a classifier.
    pub fn circuit_breaker_with(
        mut self,
        breaker: Arc<CircuitBreaker>,
        classifier: impl Classify<Resp, BoxError> + 'static,
    ) -> Self {
        self.breaker = Some((breaker, DynClassify(Arc::new(classifier))));
        self
    }

    /// A bulkhead of `max` concurrent calls with a bounded wait.
    ///
    /// # Panics
    /// If `max` is 0.
    pub fn bulkhead(mut self, max: usize, max_wait: Duration) -> Self {
        self.bulkhead =
            Some(Bulkhead::new(max, max_wait).expect("bulkhead needs at least one slot"));
        self
    }

    /// A per-attempt timeout.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Wraps `inner`.
    pub fn service<S>(self, inner: S) -> BoxCloneService<Req, Resp, BoxError>
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + 'static,
    {
        let mut svc = BoxCloneService::new(inner.map_err(Into::into));
        if let Some(t) = self.timeout {
            svc = BoxCloneService::new(TimeoutLayer(t).layer(svc));
        }
        if let Some(b) = self.bulkhead {
            svc = BoxCloneService::new(BulkheadLayer(b).layer(svc));
        }
        if let Some((b, c)) = self.breaker {
            svc = BoxCloneService::new(CircuitBreakerLayer::with_classifier(b, c).layer(svc));
        }
        if let Some((p, c)) = self.retry {
            svc = BoxCloneService::new(RetryLayer::new(p, ArcRetry(c)).layer(svc));
        }
        if let Some((l, k)) = self.rate_limit {
            svc = BoxCloneService::new(RateLimitLayer::new(l, move |r: &Req| k(r)).layer(svc));
        }
        svc
    }
}
