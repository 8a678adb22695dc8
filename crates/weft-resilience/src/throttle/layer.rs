//! The tower layer of the adaptive throttle.

use std::sync::Arc;

use tower::Layer;

use super::{AdaptiveThrottle, ThrottleService};
use crate::classify::ErrorsAreFailures;

/// Wraps services with a shared [`AdaptiveThrottle`].
#[derive(Clone, Debug)]
pub struct ThrottleLayer<C = ErrorsAreFailures> {
    throttle: Arc<AdaptiveThrottle>,
    classifier: C,
}

impl ThrottleLayer {
    /// Errors count as not accepted.
    pub fn new(throttle: Arc<AdaptiveThrottle>) -> Self {
        ThrottleLayer {
            throttle,
            classifier: ErrorsAreFailures,
        }
    }
}

impl<C> ThrottleLayer<C> {
    /// A custom classifier: failures count as not accepted.
    pub fn with_classifier(throttle: Arc<AdaptiveThrottle>, classifier: C) -> Self {
        ThrottleLayer {
            throttle,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = ThrottleService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            throttle: self.throttle.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
