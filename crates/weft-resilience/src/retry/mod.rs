//! Retry with exponential backoff and full jitter, a maximum number of attempts, a maximum
//! elapsed time, a retry budget ([`RetryBudget`]: retries may be at most a ratio of requests,
//! plus a floor per second, as in linkerd and Envoy, with exact accounting), and `Retry-After`;
//! only for results the classifier says are safe to retry.

mod budget;

use std::sync::Arc;

pub use budget::RetryBudget;
use std::task::{Context, Poll};

use tokio::time::{Duration, Instant};
use tower::{BoxError, Layer, Service};

use crate::circuit::ConfigError;
use crate::rng::{Random, XorShift};

/// Whether to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Return this result.
    No,
    /// Try again, no sooner than `after` if given (e.g. from `Retry-After`).
    Yes {
        /// Minimum delay asked for by the server.
        after: Option<Duration>,
    },
}

/// Decides whether a request's result may be retried.
pub trait RetryClassify<Req, T, E>: Send + Sync {
    /// The decision for one attempt.
    fn decide(&self, req: &Req, result: &Result<T, E>) -> RetryDecision;
}

impl<Req, T, E, F> RetryClassify<Req, T, E> for F
where
    F: Fn(&Req, &Result<T, E>) -> RetryDecision + Send + Sync,
{
    fn decide(&self, req: &Req, result: &Result<T, E>) -> RetryDecision {
        self(req, result)
    }
}

/// HTTP: retries only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), on
/// connection errors and 502, 503, 504 and 429, honouring `Retry-After` (seconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpRetry;

impl<B, B2, E> RetryClassify<http::Request<B>, http::Response<B2>, E> for HttpRetry {
    fn decide(
        &self,
        req: &http::Request<B>,
        result: &Result<http::Response<B2>, E>,
    ) -> RetryDecision {
        use http::Method;
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if !idempotent {
            return RetryDecision::No;
        }
        match result {
            Err(_) => RetryDecision::Yes { after: None },
            Ok(r) if matches!(r.status().as_u16(), 429 | 502 | 503 | 504) => {
                let after = r
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                RetryDecision::Yes { after }
            }
            Ok(_) => RetryDecision::No,
        }
    }
}

/// Retry settings.
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    max_backoff: Duration,
    max_elapsed: Option<Duration>,
    budget: Option<Arc<RetryBudget>>,
    rng: Arc<dyn Random>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base", &self.base)
            .field("max_backoff", &self.max_backoff)
            .field("max_elapsed", &self.max_elapsed)
            .finish()
    }
}

impl RetryPolicy {
    /// At most `max_attempts` attempts in all (>= 1), backoff `base · 2^n` capped at
    /// `max_backoff`, with full jitter.
    pub fn new(
        max_attempts: u32,
        base: Duration,
        max_backoff: Duration,
    ) -> Result<Self, ConfigError> {
        if max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        if base.is_zero() || max_backoff < base {
            return Err(ConfigError::Invalid(
                "backoff base must be > 0 and <= max_backoff".into(),
            ));
        }
        Ok(RetryPolicy {
            max_attempts,
            base,
            max_backoff,
            max_elapsed: None,
            budget: None,
            rng: Arc::new(XorShift::default()),
        })
    }

    /// Give up when the next attempt would start after `d` since the first.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// A retry budget of this policy: retries at most `retry_ratio` of the requests of the
    /// last `ttl` (e.g. 0.2; exact, see [`RetryBudget`]) plus `min_per_sec` retries per second.
    /// A `ttl` outside 1 s..=60 s or a ratio outside 0..=1000 is a [`ConfigError`].
    pub fn budget(
        mut self,
        ttl: Duration,
        min_per_sec: u32,
        retry_ratio: f32,
    ) -> Result<Self, ConfigError> {
        self.budget = Some(Arc::new(RetryBudget::from_f32(
            ttl,
            min_per_sec,
            retry_ratio,
        )?));
        Ok(self)
    }

    /// A budget shared with other policies (e.g. every route to one upstream).
    pub fn shared_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The random source of the jitter.
    pub fn random(mut self, rng: impl Random + 'static) -> Self {
        self.rng = Arc::new(rng);
        self
    }

    /// Delay before retry number `n` (0-based): uniform in `[0, min(max, base · 2^n)]`.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << n.min(30))
            .min(self.max_backoff);
        cap.mul_f64(self.rng.next_f64())
    }

    /// Runs `f` until it succeeds, the classifier says no, or a limit is reached.
    pub async fn call<F, Fut, T, E, D>(&self, decide: D, mut f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        D: Fn(&Result<T, E>) -> RetryDecision,
    {
        if let Some(b) = &self.budget {
            b.deposit();
        }
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let r = f().await;
            let after = match decide(&r) {
                RetryDecision::No => return r,
                RetryDecision::Yes { after } => after,
            };
            if attempt >= self.max_attempts {
                return r;
            }
            let delay = self.backoff(attempt - 1).max(after.unwrap_or_default());
            if self
                .max_elapsed
                .is_some_and(|m| start.elapsed() + delay > m)
            {
                return r;
            }
            if let Some(b) = &self.budget {
                if !b.withdraw() {
                    tracing::debug!("retry budget exhausted");
                    return r;
                }
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// Layer adding retries (requests must be `Clone`).
pub struct RetryLayer<C> {
    policy: Arc<RetryPolicy>,
    classifier: Arc<C>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        RetryLayer {
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> RetryLayer<C> {
    /// Retries per `policy` where `classifier` allows.
    pub fn new(policy: Arc<RetryPolicy>, classifier: C) -> Self {
        RetryLayer {
            policy,
            classifier: Arc::new(classifier),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service with retries.
pub struct RetryService<S, C> {
    inner: S,
    policy: Arc<RetryPolicy>,
    classifier: Arc<C>,
}

impl<S: Clone, C> Clone for RetryService<S, C> {
    fn clone(&self) -> Self {
        RetryService {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    C: RetryClassify<Req, S::Response, S::Error> + 'static,
    Req: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    // Boxed: attempts loop with backoff sleeps and budget checks in between, a state
    // machine `async` writes best (see `crate::future` for the middlewares with named futures).
    type Future = crate::BoxResponse<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let first = std::mem::replace(&mut self.inner, clone);
        let (policy, classifier, template) = (
            self.policy.clone(),
            self.classifier.clone(),
            self.inner.clone(),
        );
        let attempt_req = req.clone();
        let mut ready = Some(first);
        let attempt = move || {
            let mut svc = ready.take().unwrap_or_else(|| template.clone());
            let req = attempt_req.clone();
            async move {
                futures_ready(&mut svc).await?;
                svc.call(req).await
            }
        };
        Box::pin(async move {
            policy
                .call(|r| classifier.decide(&req, r), attempt)
                .await
                .map_err(Into::into)
        })
    }
}

/// Waits until `svc` is ready.
async fn futures_ready<S: Service<Req>, Req>(svc: &mut S) -> Result<(), S::Error> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await
}
