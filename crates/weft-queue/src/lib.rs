//! Durable message queues on the node's own disk, with the semantics people ask Kafka, NATS
//! JetStream, RabbitMQ and SQS for, behind one [`Queue`] trait:
//!
//! - **Topics** with partitions; a message's key picks its partition (`weft_shard::jump` of
//!   `weft_shard::hash`, stable across restarts and languages); order is kept per partition.
//! - **Consumer groups**: each message goes to one consumer of a group; per-message
//!   [ack](Queue::ack), [nack](Queue::nack) (with a delay), an ack wait after which the
//!   message is handed out again, [extend](Queue::extend); optional ordered-per-key delivery
//!   that holds back only the key whose message is unacked.
//! - **Dead letters**: after `max_deliveries`, or on a nack that says so, a message moves to
//!   the topic's dead letters with the reason, the delivery count and the last error; they
//!   can be [listed](Queue::dead_letters), [replayed](Queue::replay_dead) or
//!   [purged](Queue::purge_dead).
//! - **Readers** that replay a partition from an offset or a time ([`Queue::read`]).
//! - **Delay** (deliver at / after), a **dedup window** on the producer's message id,
//!   **retention** by age, count and bytes, and a declared policy for a full partition.
//!
//! The embedded backend ([`embedded::EmbeddedQueue`]) acknowledges a publish, an ack or a
//! nack only once the `fdatasync` (or direct-I/O write) that covers it has returned: one
//! group commit covers every topic (see [`embedded`]).
//!
//! ```
//! use std::time::Duration;
//! use weft_queue::{embedded::EmbeddedQueue, GroupConfig, OutMessage, Pull, Queue, TopicConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let q = EmbeddedQueue::open(dir.path(), Default::default()).await?;
//! q.create_topic("orders", TopicConfig { partitions: 4, ..Default::default() }).await?;
//! q.create_group("orders", "billing", GroupConfig::default()).await?;
//! let at = q.publish("orders", vec![OutMessage::new("order 7").key("customer-1")]).await?;
//! let got = q.pull("orders", "billing", Pull { max: 10, wait_ms: 1000, ..Default::default() }).await?;
//! assert_eq!(got[0].message.value, "order 7");
//! assert_eq!((got[0].message.partition, got[0].message.offset), (at[0].partition, at[0].offset));
//! q.ack("orders", "billing", &got[0].receipt).await?;
//! assert_eq!(q.describe("orders").await?.groups[0].lag, 0);
//! # Ok(()) }
//! ```

pub mod embedded;
mod error;
#[cfg(feature = "nats")]
pub mod nats;
mod types;
pub mod wire;

#[cfg(feature = "suite")]
pub mod suite;

use std::time::Duration;

pub use error::{QueueError, Result};
pub use types::{
    Delivery, FullPolicy, GroupConfig, GroupInfo, Message, OutMessage, PartitionInfo, Published,
    Pull, StartAt, TopicConfig, TopicInfo, MAX_MESSAGE_LIMIT, MAX_PARTITIONS,
};

/// Headers a dead letter carries, beside the original message's own.
pub const DEAD_HEADERS: [&str; 6] = [
    "weft-dead-group",
    "weft-dead-reason",
    "weft-dead-deliveries",
    "weft-dead-error",
    "weft-dead-partition",
    "weft-dead-offset",
];

/// A message queue backend. Every method is cancel-safe in the sense that matters: a call
/// dropped before it returns may or may not have taken effect, and never half.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Creates a topic; creating it again with the same settings is a no-op.
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo>;
    /// Deletes a topic with its messages, groups and dead letters.
    async fn delete_topic(&self, name: &str) -> Result<()>;
    /// Every topic, by name.
    async fn topics(&self) -> Result<Vec<TopicInfo>>;
    /// One topic: partitions, groups and their lag.
    async fn describe(&self, topic: &str) -> Result<TopicInfo>;
    /// Creates a consumer group; creating it again with the same settings is a no-op.
    async fn create_group(&self, topic: &str, group: &str, config: GroupConfig) -> Result<()>;
    /// Deletes a consumer group.
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()>;
    /// Publishes messages; returns once every one is durable, in order. A batch is all or
    /// nothing: one invalid message and nothing is stored.
    async fn publish(&self, topic: &str, messages: Vec<OutMessage>) -> Result<Vec<Published>>;
    /// Hands up to `pull.max` messages to one consumer of the group, waiting up to
    /// `pull.wait_ms` for the first.
    async fn pull(&self, topic: &str, group: &str, pull: Pull) -> Result<Vec<Delivery>>;
    /// Acknowledges a delivery: durable before it returns; the group never hands the message
    /// out again.
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()>;
    /// Acknowledges several deliveries of one group: one answer per receipt, in order, each
    /// as [`Queue::ack`] gives it. A backend may make them durable together (the embedded
    /// one writes them as one log append and waits for one fsync).
    async fn ack_many(&self, topic: &str, group: &str, receipts: &[String]) -> Vec<Result<()>> {
        futures::future::join_all(receipts.iter().map(|r| self.ack(topic, group, r))).await
    }
    /// Gives a delivery back: handed out again after `delay` (or, with `dead`, moved to the
    /// dead letters now). `error` is kept as the message's last error.
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        delay: Duration,
        error: Option<String>,
        dead: bool,
    ) -> Result<()>;
    /// Restarts a delivery's ack wait (the consumer is still working on it); returns the new
    /// deadline (Unix milliseconds).
    async fn extend(&self, topic: &str, group: &str, receipt: &str) -> Result<u64>;
    /// Reads up to `max` messages of a partition from `from`, without any group.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: StartAt,
        max: u32,
    ) -> Result<Vec<Message>>;
    /// The topic's dead letters not yet replayed or purged, oldest first.
    async fn dead_letters(&self, topic: &str, max: u32) -> Result<Vec<Message>>;
    /// Hands dead letters back to the group they died in (all of them, or the ones whose
    /// dead-letter offsets are given); returns how many.
    async fn replay_dead(&self, topic: &str, offsets: Option<Vec<u64>>) -> Result<u64>;
    /// Drops every dead letter of the topic; returns how many.
    async fn purge_dead(&self, topic: &str) -> Result<u64>;
}

/// Checks a topic or group name: 1 to 200 characters of `A-Z a-z 0-9 . _ -`, not starting
/// with `.`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(QueueError::Invalid(format!(
            "bad {what} name {name:?}: use 1 to 200 characters of A-Z a-z 0-9 . _ - (not starting with '.')"
        )));
    }
    Ok(())
}

/// A delivery's receipt, `partition-offset-delivery`: its partition and offset.
pub(crate) fn parse_receipt(r: &str) -> Result<(u32, u64)> {
    let mut it = r.split('-');
    let p = it.next().and_then(|x| x.parse().ok());
    let o = it.next().and_then(|x| x.parse().ok());
    let d = it.next().and_then(|x| x.parse::<u32>().ok());
    match (p, o, d, it.next()) {
        (Some(p), Some(o), Some(_), None) => Ok((p, o)),
        _ => Err(QueueError::Invalid(format!(
            "bad receipt {r:?}: use the receipt of a delivery (partition-offset-delivery)"
        ))),
    }
}

/// The partition a key goes to in a topic of `partitions` partitions.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    weft_shard::jump(weft_shard::hash(key), partitions)
}
