//! The tower layer.

use std::sync::Arc;

use tower::Layer;

use super::service::CircuitBreakerService;
use super::CircuitBreaker;
use crate::classify::ErrorsAreFailures;

/// Wraps services with a shared [`CircuitBreaker`] and a classifier.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ErrorsAreFailures> {
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer that counts errors as failures.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier: ErrorsAreFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer with a custom classifier (e.g. [`crate::HttpClassifier`]).
    pub fn with_classifier(breaker: Arc<CircuitBreaker>, classifier: C) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}
