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
