//! Rate limiting per key with GCRA (the `governor` crate): a steady rate plus a burst, exact
//! and lock-free. The key is derived from each request (a consumer id, a client IP, a route).

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
use tokio::time::Duration;
use tower::{BoxError, Layer, Service};

/// Over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry after {retry_after:?}")]
pub struct RateLimited {
    /// When the next call would be admitted.
    pub retry_after: Duration,
}

/// A per-key GCRA limiter, generic over governor's clock (inject `FakeRelativeClock` in tests).
pub struct RateLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    gcra: Gcra<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: Clock> std::fmt::Debug for RateLimiter<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

fn quota(per_second: u32, burst: u32) -> Result<Quota, crate::circuit::ConfigError> {
    let rate = NonZeroU32::new(per_second).ok_or_else(|| {
        crate::circuit::ConfigError::Invalid("rate must be at least 1 per second".into())
    })?;
    let burst = NonZeroU32::new(burst)
        .ok_or_else(|| crate::circuit::ConfigError::Invalid("burst must be at least 1".into()))?;
    Ok(Quota::per_second(rate).allow_burst(burst))
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_second` sustained, `burst` at once, per key.
    pub fn new(per_second: u32, burst: u32) -> Result<Self, crate::circuit::ConfigError> {
        Self::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> RateLimiter<K, C> {
    /// With an explicit clock.
    pub fn with_clock(
        per_second: u32,
        burst: u32,
        clock: C,
    ) -> Result<Self, crate::circuit::ConfigError> {
        let q = quota(per_second, burst)?;
        Ok(RateLimiter {
            gcra: Gcra::dashmap_with_clock(q, clock.clone()),
            clock,
        })
    }

    /// Admits one call for `key`, or says when to retry.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.gcra.check_key(key).map_err(|not_until| RateLimited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

/// Layer of a [`RateLimiter`]; `key` maps a request to its key.
pub struct RateLimitLayer<K: Hash + Eq + Clone, F> {
    limiter: Arc<RateLimiter<K>>,
    key: F,
}

impl<K: Hash + Eq + Clone, F: Clone> Clone for RateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, F> RateLimitLayer<K, F> {
    /// A layer keyed by `key(&request)`.
    pub fn new(limiter: Arc<RateLimiter<K>>, key: F) -> Self {
        RateLimitLayer { limiter, key }
    }
}

impl<S, K: Hash + Eq + Clone, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimitService<S, K, F>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// A service behind a rate limiter.
pub struct RateLimitService<S, K: Hash + Eq + Clone, F> {
    inner: S,
    limiter: Arc<RateLimiter<K>>,
    key: F,
}

impl<S: Clone, K: Hash + Eq + Clone, F: Clone> Clone for RateLimitService<S, K, F> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, F, Req> Service<Req> for RateLimitService<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = crate::future::Guarded<S::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Err(e) = self.limiter.check(&(self.key)(&req)) {
            return crate::future::Guarded::refused(Box::new(e), ());
        }
        crate::future::Guarded::running(self.inner.call(req), ())
    }
}
