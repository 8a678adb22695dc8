//! Errors of the circuit breaker.

use std::fmt;

use super::State;

/// The breaker refused the call without running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallNotPermitted {
    /// The breaker's state when it refused.
    pub state: State,
}

impl fmt::Display for CallNotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker is {:?}: call not permitted", self.state)
    }
}

impl std::error::Error for CallNotPermitted {}

/// The rejection inside a tower error: `Some` if the breaker refused the call (the error of a
/// [`CircuitBreakerService`](super::CircuitBreakerService) response future, possibly wrapped by
/// outer layers that keep the source chain).
pub fn rejection<'a>(
    err: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'a CallNotPermitted> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<CallNotPermitted>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Whether a tower error is the breaker's refusal ([`CallNotPermitted`]).
///
/// ```
/// use std::sync::Arc;
/// use tower::{Service, ServiceExt};
/// use weft_resilience::circuit::{is_rejected, CircuitBreaker, CircuitBreakerLayer, Manual};
///
/// # tokio_test_block(async {
/// let breaker = Arc::new(CircuitBreaker::builder("db").build().unwrap());
/// breaker.force(Manual::ForcedOpen);
/// let mut svc = tower::ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(breaker))
///     .service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
/// let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
/// assert!(is_rejected(&*err));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub fn is_rejected(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    rejection(err).is_some()
}

/// Whether a tower error is a half-open probe cancelled at its deadline ([`ProbeTimeout`]).
pub fn is_probe_timeout(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<ProbeTimeout>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A half-open probe did not finish within its deadline (counted as a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimeout;

impl fmt::Display for ProbeTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("half-open probe call timed out")
    }
}

impl std::error::Error for ProbeTimeout {}

/// Error of [`CircuitBreaker::call`](super::CircuitBreaker::call).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// Refused without running.
    #[error(transparent)]
    Rejected(CallNotPermitted),
    /// A probe ran past its deadline and was cancelled.
    #[error(transparent)]
    ProbeTimeout(ProbeTimeout),
    /// The call itself failed.
    #[error("{0}")]
    Inner(E),
}

impl<E> Error<E> {
    /// Whether the call was refused (worth retrying elsewhere or later).
    pub fn is_rejected(&self) -> bool {
        matches!(self, Error::Rejected(_))
    }
}

/// Invalid breaker settings, reported when the breaker is built.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A percentage outside `(0, 100]`.
    #[error("{what} must be within (0, 100] percent, got {value}")]
    Threshold {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A window with no calls, no duration or no buckets.
    #[error("the sliding window must not be empty: {0}")]
    EmptyWindow(&'static str),
    /// No probes in half-open state.
    #[error("half-open state needs at least one probe call")]
    ZeroProbes,
    /// Any other bad value.
    #[error("invalid setting: {0}")]
    Invalid(String),
}
