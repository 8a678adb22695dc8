//! Errors of the queue API.

/// Errors of the queue API. [`QueueError::code`] is a stable name for HTTP bodies and CLIs.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// No topic with this name.
    #[error("topic {0:?} not found")]
    UnknownTopic(String),
    /// No group with this name on the topic.
    #[error("topic {topic:?} has no consumer group {group:?}")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// The topic exists with other settings.
    #[error("topic {0:?} already exists with other settings")]
    TopicExists(String),
    /// A bad argument: what was wrong and what is allowed.
    #[error("{0}")]
    Invalid(String),
    /// A message over the topic's `max_message_bytes`.
    #[error("message of {size} bytes is over topic {topic:?}'s limit of {limit} bytes")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The message's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The partition is full and the topic rejects new messages when full.
    #[error("topic {topic:?} partition {partition} is full ({why}); nothing was stored")]
    Full {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Which limit.
        why: String,
    },
    /// The receipt names no message this group is waiting for an ack of: it was acked,
    /// dead-lettered, or removed by retention.
    #[error(
        "receipt {0:?} is not pending in this group (acked, dead-lettered or expired by retention)"
    )]
    NotPending(String),
    /// An offset outside what the partition keeps.
    #[error("offset {offset} is outside partition {partition}'s kept range {start}..{end}")]
    OffsetOutOfRange {
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The oldest kept.
        start: u64,
        /// The next to be written.
        end: u64,
    },
    /// The data on disk is damaged: the file and offset say where.
    #[error("queue data damaged: {0}")]
    Corrupt(String),
    /// The data dir is used by another process.
    #[error("queue data dir {0} is in use by another process")]
    Locked(String),
    /// The disk failed or the log stopped; the message says what.
    #[error("queue storage: {0}")]
    Storage(String),
    /// The backend (NATS) failed or is unreachable.
    #[error("queue backend: {0}")]
    Backend(String),
}

impl QueueError {
    /// Whether repeating the call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Full { .. } | QueueError::Backend(_))
    }

    /// A stable name for the error.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::UnknownTopic(_) => "unknown_topic",
            QueueError::UnknownGroup { .. } => "unknown_group",
            QueueError::TopicExists(_) => "topic_exists",
            QueueError::Invalid(_) => "invalid_argument",
            QueueError::TooLarge { .. } => "too_large",
            QueueError::Full { .. } => "full",
            QueueError::NotPending(_) => "not_pending",
            QueueError::OffsetOutOfRange { .. } => "offset_out_of_range",
            QueueError::Corrupt(_) => "corrupt",
            QueueError::Locked(_) => "locked",
            QueueError::Storage(_) => "storage",
            QueueError::Backend(_) => "backend",
        }
    }
}

/// The queue crate's result type.
pub type Result<T> = std::result::Result<T, QueueError>;
