//! Adaptive client-side throttling (Google SRE book, "Handling Overload"): instead of a hard
//! open state, reject locally with probability `max(0, (requests − K·accepts) / (requests + 1))`
//! over a sliding time window. With K = 2 a backend that accepts half the traffic sees at most
//! twice what it accepts.

mod layer;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::{Duration, Instant};
use tower::{BoxError, Service};

use crate::circuit::window::TimeWindow;
use crate::classify::{Classify, Outcome};
use crate::rng::{Random, XorShift};

pub use layer::ThrottleLayer;

/// Rejected locally by the throttle.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("throttled locally (rejection probability {probability:.2})")]
pub struct Throttled {
    /// The rejection probability at the time.
    pub probability: f64,
}

/// The throttle. Share it with `Arc`.
pub struct AdaptiveThrottle {
    k: f64,
    window: Mutex<TimeWindow>,
    rng: Box<dyn Random>,
}

impl std::fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("k", &self.k)
            .finish()
    }
}

impl AdaptiveThrottle {
    /// `k` (usually 2.0, must be >= 1) over a `window` (e.g. 2 minutes) of 1-second buckets.
    pub fn new(k: f64, window: Duration) -> Result<Self, crate::circuit::ConfigError> {
        Self::with_random(k, window, XorShift::default())
    }

    /// With an injected random source.
    pub fn with_random(
        k: f64,
        window: Duration,
        rng: impl Random + 'static,
    ) -> Result<Self, crate::circuit::ConfigError> {
        if !(k >= 1.0 && k.is_finite()) {
            return Err(crate::circuit::ConfigError::Invalid(format!(
                "throttle K {k} must be >= 1"
            )));
        }
        let buckets = (window.as_secs() as u32).clamp(1, 600);
        if window.is_zero() {
            return Err(crate::circuit::ConfigError::EmptyWindow(
                "throttle window of zero length",
            ));
        }
        Ok(AdaptiveThrottle {
            k,
            window: Mutex::new(TimeWindow::new(window, buckets, Instant::now())),
            rng: Box::new(rng),
        })
    }

    /// The current rejection probability.
    pub fn probability(&self) -> f64 {
        let s = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(Instant::now());
        let requests = s.calls as f64;
        let accepts = (s.calls - s.failures) as f64;
        ((requests - self.k * accepts) / (requests + 1.0)).max(0.0)
    }

    /// Admits or rejects one request. A rejection counts as a request that was not accepted.
    pub fn admit(&self) -> Result<(), Throttled> {
        let p = self.probability();
        if p > 0.0 && self.rng.next_f64() < p {
            self.record(false);
            return Err(Throttled { probability: p });
        }
        Ok(())
    }

    /// Records whether the backend accepted an admitted request.
    pub fn record(&self, accepted: bool) {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(!accepted, false, Instant::now());
    }

    /// Runs `f` if admitted; `Err` results count as not accepted.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ThrottleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.admit().map_err(ThrottleError::Throttled)?;
        let r = f().await;
        self.record(r.is_ok());
        r.map_err(ThrottleError::Inner)
    }
}

/// Error of [`AdaptiveThrottle::call`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThrottleError<E> {
    /// Rejected locally.
    #[error(transparent)]
    Throttled(Throttled),
    /// The call failed.
    #[error("{0}")]
    Inner(E),
}

/// A service behind an [`AdaptiveThrottle`].
#[derive(Clone, Debug)]
pub struct ThrottleService<S, C> {
    inner: S,
    throttle: Arc<AdaptiveThrottle>,
    classifier: C,
}

impl<S, C, Req> Service<Req> for ThrottleService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = crate::future::Guarded<S::Future, Option<Record<C>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Err(t) = self.throttle.admit() {
            return crate::future::Guarded::refused(Box::new(t), None);
        }
        let record = Record {
            throttle: self.throttle.clone(),
            classifier: self.classifier.clone(),
        };
        crate::future::Guarded::running(self.inner.call(req), Some(record))
    }
}

/// Records an admitted call's outcome in its throttle.
#[derive(Debug)]
pub struct Record<C> {
    throttle: Arc<AdaptiveThrottle>,
    classifier: C,
}

impl<R, E, C: Classify<R, E>> crate::future::Observe<R, E> for Option<Record<C>> {
    fn observe(&mut self, r: &Result<R, E>) {
        if let Some(rec) = self.take() {
            rec.throttle
                .record(rec.classifier.classify(r) != Outcome::Failure);
        }
    }
}
