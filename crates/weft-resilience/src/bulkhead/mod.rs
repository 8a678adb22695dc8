//! Bulkhead: at most N concurrent calls, with an optional bounded wait for a slot; beyond that,
//! calls are rejected at once instead of queueing without bound.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tokio::time::Duration;
use tower::{BoxError, Layer, Service};

/// No slot became free in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {max} concurrent calls")]
pub struct BulkheadFull {
    /// The limit.
    pub max: usize,
}

/// A bulkhead. Share it with `Arc` (or clone the layer).
#[derive(Debug, Clone)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    max: usize,
    max_wait: Duration,
}

impl Bulkhead {
    /// `max` concurrent calls (> 0); wait at most `max_wait` for a slot (zero: never wait).
    pub fn new(max: usize, max_wait: Duration) -> Result<Self, crate::circuit::ConfigError> {
        if max == 0 {
            return Err(crate::circuit::ConfigError::Invalid(
                "a bulkhead needs at least one slot".into(),
            ));
        }
        Ok(Bulkhead {
            slots: Arc::new(Semaphore::new(max)),
            max,
            max_wait,
        })
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, BulkheadFull> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.max_wait.is_zero() {
            return Err(BulkheadFull { max: self.max });
        }
        match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(BulkheadFull { max: self.max }),
        }
    }

    /// Calls free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Runs `f` in a slot.
    pub async fn call<F, Fut, T>(&self, f: F) -> Result<T, BulkheadFull>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let _p = self.permit().await?;
        Ok(f().await)
    }
}

/// Layer of a [`Bulkhead`].
#[derive(Clone, Debug)]
pub struct BulkheadLayer(pub Bulkhead);

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.0.clone(),
        }
    }
}

/// A service behind a bulkhead. Requires a `Clone` inner service (as tower's buffer-free
/// middlewares do); each call takes its slot before it is forwarded.
#[derive(Clone, Debug)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    // Boxed: the call first awaits a permit of the shared bulkhead, a future borrowing it
    // (see `crate::future` for the middlewares with named futures).
    type Future = crate::BoxResponse<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Take the ready service; leave a clone for the next call (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move {
            let _slot = bulkhead
                .permit()
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            inner.call(req).await.map_err(Into::into)
        })
    }
}
