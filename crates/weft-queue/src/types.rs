//! The queue's data types: topic and group settings, messages in and out, positions and
//! statistics. They are serde types: the node's HTTP API and CLI use them as they are.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a topic does when a publish would go over `max_messages` or `max_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the publish ([`crate::QueueError::Full`], retryable once consumers or retention
    /// make room). Nothing already stored is lost.
    #[default]
    Reject,
    /// Drop the oldest messages of the partition to make room (a consumer that had not read
    /// them never will).
    DropOld,
}

/// A topic's settings. Every limit of 0 means "none".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Partitions (1..=1024). Order is kept per partition; a message's key picks its partition.
    pub partitions: u32,
    /// Messages older than this are removed (milliseconds).
    pub max_age_ms: u64,
    /// Most messages kept per partition.
    pub max_messages: u64,
    /// Most bytes of messages kept per partition.
    pub max_bytes: u64,
    /// What a full partition does.
    pub full: FullPolicy,
    /// How long a producer's message id is remembered (milliseconds): a publish with an id
    /// seen within the window is acknowledged with the first copy's position and not stored.
    pub dedup_window_ms: u64,
    /// Largest message (value, key, headers and id together), in bytes.
    pub max_message_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            max_age_ms: 0,
            max_messages: 0,
            max_bytes: 0,
            full: FullPolicy::Reject,
            dedup_window_ms: 2 * 60 * 1000,
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// Largest number of partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Largest `max_message_bytes` a topic may set.
pub const MAX_MESSAGE_LIMIT: u64 = 64 * 1024 * 1024;

/// Where a new group, or a reader, starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// After the newest message: only messages published from now on.
    Latest,
    /// This offset in every partition (clamped to what is kept).
    Offset(u64),
    /// The first message published at or after this time (Unix milliseconds).
    Time(u64),
}

/// A consumer group's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Where the group starts when it is created.
    pub start: StartAt,
    /// How long a delivered message stays invisible to the group (milliseconds) before it is
    /// handed out again, unless acked, nacked or extended.
    pub ack_wait_ms: u64,
    /// Deliveries of one message before it goes to the dead letters (0: unlimited).
    pub max_deliveries: u32,
    /// Most unacked messages one consumer holds at a time (0: unlimited): pulls return fewer.
    pub max_in_flight: u32,
    /// A key's next message is not handed out while one of its messages is unacked; other
    /// keys are not held up (SQS FIFO message groups).
    pub ordered_by_key: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            start: StartAt::Earliest,
            ack_wait_ms: 30_000,
            max_deliveries: 5,
            max_in_flight: 1000,
            ordered_by_key: false,
        }
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutMessage {
    /// Picks the partition (through `weft_shard::jump` of `weft_shard::hash(key)`), and the
    /// ordering unit of an `ordered_by_key` group. Without a key, partitions take turns.
    #[serde(with = "opt_bytes")]
    pub key: Option<Bytes>,
    /// The payload.
    #[serde(with = "crate::types::bytes_b64")]
    pub value: Bytes,
    /// Application headers.
    pub headers: BTreeMap<String, String>,
    /// The producer's id for this message (deduplication within the topic's window).
    pub id: Option<String>,
    /// Deliver to groups no earlier than this (Unix milliseconds).
    pub deliver_at_ms: Option<u64>,
    /// Deliver to groups no earlier than this long after publishing (milliseconds).
    pub delay_ms: Option<u64>,
}

impl OutMessage {
    /// A message with this value and nothing else.
    pub fn new(value: impl Into<Bytes>) -> Self {
        OutMessage {
            value: value.into(),
            ..Default::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the producer's message id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Delays delivery to groups.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay_ms = Some(d.as_millis() as u64);
        self
    }

    /// Adds a header.
    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.insert(k.into(), v.into());
        self
    }
}

/// Where a published message went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The id was seen within the dedup window: this is the first copy's position, and
    /// nothing was stored.
    pub duplicate: bool,
}

/// A stored message, as readers and consumers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was published (Unix milliseconds).
    pub time_ms: u64,
    /// Its key.
    #[serde(with = "opt_bytes")]
    pub key: Option<Bytes>,
    /// Its payload.
    #[serde(with = "crate::types::bytes_b64")]
    pub value: Bytes,
    /// Its headers (dead letters carry `weft-dead-*` headers: see [`crate::DEAD_HEADERS`]).
    pub headers: BTreeMap<String, String>,
    /// The producer's id.
    pub id: Option<String>,
}

/// A message handed to one consumer of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message.
    #[serde(flatten)]
    pub message: Message,
    /// Which delivery this is (1 for the first).
    pub delivery: u32,
    /// What to pass to ack, nack and extend.
    pub receipt: String,
    /// Until when the group waits for an ack (Unix milliseconds).
    pub ack_deadline_ms: u64,
}

/// A pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pull {
    /// Who pulls (for `max_in_flight` and for the records; any string).
    pub consumer: String,
    /// Most messages to return (1..=10000).
    pub max: u32,
    /// How long to wait for a first message when none is ready (milliseconds).
    pub wait_ms: u64,
}

impl Default for Pull {
    fn default() -> Self {
        Pull {
            consumer: "default".into(),
            max: 1,
            wait_ms: 0,
        }
    }
}

/// One partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Its number.
    pub partition: u32,
    /// The oldest offset kept.
    pub start: u64,
    /// The next offset to be written: `end - start` messages are kept.
    pub end: u64,
    /// Bytes of messages kept.
    pub bytes: u64,
}

/// One consumer group of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: GroupConfig,
    /// Messages kept that the group has not finished (acked or dead-lettered).
    pub lag: u64,
    /// Messages delivered and not yet acked.
    pub in_flight: u64,
    /// Messages waiting for their delay or a nack's delay.
    pub delayed: u64,
    /// Deliveries after the first, since the node started.
    pub redeliveries: u64,
    /// Messages moved to the dead letters, since the node started.
    pub dead: u64,
    /// Age of the oldest unfinished message (milliseconds; 0 when none).
    pub oldest_unacked_ms: u64,
}

/// A topic and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: TopicConfig,
    /// Its partitions.
    pub partitions: Vec<PartitionInfo>,
    /// Its consumer groups.
    pub groups: Vec<GroupInfo>,
}

impl TopicInfo {
    /// Messages kept, over every partition.
    pub fn depth(&self) -> u64 {
        self.partitions.iter().map(|p| p.end - p.start).sum()
    }
}

/// Byte strings as base64 in JSON.
pub(crate) mod bytes_b64 {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// Optional byte strings as base64 in JSON.
pub(crate) mod opt_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => super::bytes_b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::bytes_b64")] Bytes);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}
