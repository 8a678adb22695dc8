//! Errors returned by every [`Store`](crate::Store) backend.

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
///
/// The variants are shared by all backends, so callers can match on them regardless of where the
/// data lives. [`StoreError::is_retryable`] tells whether trying the same request again can help.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum StoreError {
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (compact revision is {compact_revision})")]
    Compacted {
        /// The revision the caller asked for (0 if not known, e.g. from etcd).
        requested: i64,
        /// The store's compaction point; history at or before it is gone.
        compact_revision: i64,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: i64,
        /// The store's current revision (0 if not known).
        current: i64,
    },
    /// No lease with this id exists (never granted, revoked or expired).
    #[error("lease {0} not found (never granted, revoked or expired)")]
    LeaseNotFound(i64),
    /// A lease with the requested id already exists.
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    /// The requested TTL is larger than the maximum.
    #[error("lease TTL {ttl}s is too large (maximum {max}s)")]
    LeaseTtlTooLarge {
        /// Requested TTL in seconds.
        ttl: i64,
        /// Largest allowed TTL in seconds.
        max: i64,
    },
    /// A key, value or whole request exceeds a documented limit.
    #[error("request too large: {what} is {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        /// What was too large ("request", "key", "value").
        #[cfg_attr(feature = "serde", serde(skip_deserializing, default = "what_default"))]
        what: &'static str,
        /// Its size in bytes (0 if not known, e.g. from etcd).
        size: usize,
        /// The limit in bytes (0 if not known).
        limit: usize,
    },
    /// A transaction has more operations than allowed.
    #[error("too many operations in txn: {ops} (limit {limit})")]
    TooManyOps {
        /// Operations in the largest branch or compare list (0 if not known).
        ops: usize,
        /// The limit (0 if not known).
        limit: usize,
    },
    /// A transaction writes the same key twice in one branch.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A malformed request (empty key, negative limit, ...), with what was wrong.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The watch was cancelled by the store, with the reason.
    #[error("watch cancelled: {0}")]
    WatchCancelled(String),
    /// The backend could not be reached or timed out; the request may or may not have applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store hit an I/O error and stopped accepting writes.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The data directory is damaged; nothing was loaded.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// File that holds the damage.
        file: String,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process already uses this data directory.
    #[error("data dir {0} is locked by another process")]
    Locked(String),
    /// The store has been closed.
    #[error("store is closed")]
    Closed,
    /// This node is a replica: writes go to its primary, at the address given (forwarding is
    /// off, or the primary is not known yet).
    #[error("this node is a read-only replica; send writes to the primary ({0})")]
    NotPrimary(String),
    /// The write is durable on the primary, at `revision`, but fewer replicas than its
    /// durability policy asks for confirmed it in time: it is visible and will not be undone
    /// by the primary, yet a failover before the replicas catch up may lose it.
    #[error("write at revision {revision} is durable on the primary but confirmed by {confirmed} of the {required} replicas its durability policy requires ({why})")]
    Unconfirmed {
        /// The write's revision.
        revision: i64,
        /// Replicas that hold it.
        confirmed: usize,
        /// Replicas the policy asked for.
        required: usize,
        /// Why the wait ended (timed out, cancelled).
        why: String,
    },
    /// The operation is not supported by this backend.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl StoreError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// A stable, machine-readable code for this error (used by the HTTP API).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Compacted { .. } => "compacted",
            StoreError::FutureRevision { .. } => "future_revision",
            StoreError::LeaseNotFound(_) => "lease_not_found",
            StoreError::LeaseExists(_) => "lease_exists",
            StoreError::LeaseTtlTooLarge { .. } => "lease_ttl_too_large",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::TooManyOps { .. } => "too_many_ops",
            StoreError::DuplicateKey => "duplicate_key",
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::WatchCancelled(_) => "watch_cancelled",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Storage(_) => "storage",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Locked(_) => "locked",
            StoreError::Closed => "closed",
            StoreError::Unsupported(_) => "unsupported",
            StoreError::NotPrimary(_) => "not_primary",
            StoreError::Unconfirmed { .. } => "unconfirmed",
        }
    }
}

/// `TooLarge::what` after a round trip through serde (a `&'static str` cannot be read back).
#[cfg(feature = "serde")]
fn what_default() -> &'static str {
    "request"
}
