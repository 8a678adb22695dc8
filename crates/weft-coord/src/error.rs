//! Errors of the coordination recipes.

use weft_store::StoreError;

use crate::session::LostReason;

/// Result alias.
pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// Everything a recipe can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session's lease is gone or could not be renewed in time.
    #[error("session lost: {0}")]
    SessionLost(LostReason),
    /// The lock (or leadership, or registration) key disappeared: ownership is gone.
    #[error("ownership lost: the key {0} no longer exists")]
    OwnershipLost(String),
    /// `try_lock` found the lock held.
    #[error("the lock {0} is held by another owner")]
    WouldBlock(String),
    /// A wait timed out; the waiter's key was removed.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// This session already holds or waits for this lock, semaphore or election.
    #[error("this session already holds or waits for {0}")]
    AlreadyHeld(String),
    /// A name, id or setting is not acceptable, with what is allowed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A stored record could not be decoded.
    #[error("cannot decode {key}: {reason}")]
    Decode {
        /// Key of the record.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

impl CoordError {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            CoordError::Store(e) => e.is_retryable(),
            CoordError::WouldBlock(_) | CoordError::Timeout(_) => true,
            _ => false,
        }
    }
}
