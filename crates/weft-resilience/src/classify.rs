//! Deciding what counts as a failure.

/// How a call ended, for the breaker's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted as a success.
    Success,
    /// Counted as a failure.
    Failure,
    /// Not counted at all (e.g. a cancelled call, or a result the caller caused).
    Ignore,
}

/// Classifies the result of a call. Closures `Fn(&Result<T, E>) -> Outcome` implement it.
pub trait Classify<T, E>: Send + Sync {
    /// The outcome of one result.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// `Ok` is a success, `Err` (including timeouts from an inner layer) is a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreFailures;

impl<T, E> Classify<T, E> for ErrorsAreFailures {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// For HTTP: errors and 5xx responses are failures; 4xx are the caller's fault, not the
/// server's, and count as successes.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(r) if r.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Send + Sync,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}
