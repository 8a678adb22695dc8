//! Errors of the saga crate.

use std::fmt;

use weft_store::StoreError;

/// A definition that cannot run, with the step it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefError {
    /// The step, if the problem belongs to one.
    pub step: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl DefError {
    pub(crate) fn new(step: Option<&str>, message: String) -> Self {
        DefError {
            step: step.map(str::to_string),
            message,
        }
    }
}

impl fmt::Display for DefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(s) => write!(f, "step {s:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DefError {}

/// Errors of the saga API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The definition is invalid; nothing was stored.
    #[error("invalid saga definition: {0}")]
    Invalid(#[from] DefError),
    /// No saga with this id.
    #[error("saga {0} not found")]
    NotFound(String),
    /// The operation does not apply to the saga's current state.
    #[error("saga {id}: {message}")]
    Conflict {
        /// The saga.
        id: String,
        /// Why (its state, and what is allowed in it).
        message: String,
    },
    /// A bad argument (id, step name, input too large).
    #[error("{0}")]
    InvalidArgument(String),
    /// Another orchestrator took the saga over (this one lost its lease or was fenced).
    #[error("saga {0} is owned by another orchestrator")]
    NotOwner(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A coordination recipe failed (session, lease).
    #[error(transparent)]
    Coord(#[from] weft_coord::CoordError),
    /// A stored record could not be read back.
    #[error("saga {id}: corrupt record: {message}")]
    Corrupt {
        /// The saga.
        id: String,
        /// What failed to decode.
        message: String,
    },
}

impl SagaError {
    /// Whether repeating the call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SagaError::Store(e) => e.is_retryable(),
            SagaError::Coord(_) | SagaError::NotOwner(_) => true,
            _ => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = SagaError> = std::result::Result<T, E>;
