//! The NATS JetStream backend (feature `nats`): the same [`Queue`] on a NATS server.
//!
//! ## Mapping
//! - A topic of N partitions is N streams `WEFTQ_<topic>-<p>` (subject `weftq.<topic>.<p>`),
//!   so that a partition's offsets are its stream's sequence numbers minus one; its settings
//!   are kept as JSON in stream 0's description. Dead letters go to `WEFTQ_<topic>-dead`.
//! - A group is a durable pull consumer of the same name on every partition stream
//!   (explicit acks, its ack wait, unlimited server-side deliveries: the backend counts them
//!   and dead-letters itself, with the reason, the count and the last error).
//! - A message's key and delay travel in headers (`weft-key`, `weft-deliver-at`); the
//!   producer id is `Nats-Msg-Id`, so JetStream's duplicate window deduplicates (a message with
//!   an id and no key goes to the partition of its id, so a republish meets its first copy).
//!
//! ## Where it differs from the embedded backend
//! - Receipts are valid on the process that pulled (they name the server's reply subjects).
//! - Ordered-per-key groups hold a key's later messages in this process until its head is
//!   acked; a crash of the process hands them out again in stream order after the ack wait.
//! - Delayed messages are naked with the delay when fetched early, which JetStream counts as
//!   a delivery; nack errors and dead-letter counters live in this process.
//! - JetStream acknowledges a publish once its file store has the message, before any fsync
//!   (`sync_interval` is 2 minutes by default): what the embedded backend does not.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;

use crate::types::*;
use crate::{check_name, parse_receipt, partition_for, Queue, QueueError, Result};

const KEY: &str = "weft-key";
const DELIVER_AT: &str = "weft-deliver-at";
const REPLAY_GROUP: &str = "weft-replay-group";
const MSG_ID: &str = "Nats-Msg-Id";

fn backend<E: std::fmt::Display>(e: E) -> QueueError {
    QueueError::Backend(e.to_string())
}

fn now_ms() -> u64 {
    crate::embedded::now_ms()
}

/// A delivery waiting for its ack, by receipt.
#[derive(Clone)]
struct Pending {
    topic: String,
    group: String,
    partition: u32,
    seq: u64,
    reply: async_nats::Subject,
    consumer: String,
    key: Option<u64>,
    delivery: u32,
    message: Message,
}

/// A fetched message not handed out yet (ordered groups).
type Held = Pending;

#[derive(Default)]
struct Ordered {
    busy: HashMap<u64, (u32, u64)>,
    held: HashMap<u64, VecDeque<Held>>,
    ready: VecDeque<Held>,
}

#[derive(Default)]
struct Local {
    receipts: HashMap<String, Pending>,
    ordered: HashMap<(String, String), Ordered>,
    errors: HashMap<(String, String, u32, u64), String>,
    counters: HashMap<(String, String), (u64, u64)>,
    holding: HashMap<(String, String, String), u32>,
    configs: HashMap<String, TopicConfig>,
    groups: HashMap<(String, String), GroupConfig>,
    /// Pull consumers by (topic, group, partition): looked up once, not per pull.
    consumers: HashMap<(String, String, u32), consumer::PullConsumer>,
    rr: HashMap<String, u32>,
}

/// The queue on NATS JetStream.
pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    local: Mutex<Local>,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue").finish()
    }
}

fn enc(name: &str) -> String {
    name.replace('.', "_2E")
}

fn stream_name(topic: &str, p: u32) -> String {
    format!("WEFTQ_{}-{p}", enc(topic))
}

fn dead_stream(topic: &str) -> String {
    format!("WEFTQ_{}-dead", enc(topic))
}

fn subject(topic: &str, p: u32) -> String {
    format!("weftq.{}.{p}", enc(topic))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Option<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .map(Bytes::from)
}

fn header(h: Option<&HeaderMap>, k: &str) -> Option<String> {
    h.and_then(|h| h.get(k)).map(|v| v.as_str().to_string())
}

/// A message as stored, with weft's own headers taken out.
fn to_message(
    partition: u32,
    seq: u64,
    time_ms: u64,
    h: Option<&HeaderMap>,
    payload: Bytes,
) -> Message {
    let mut headers = std::collections::BTreeMap::new();
    if let Some(h) = h {
        for (k, vs) in h.iter() {
            let k: &str = k.as_ref();
            if [KEY, DELIVER_AT, REPLAY_GROUP, MSG_ID].contains(&k) {
                continue;
            }
            if let Some(v) = vs.first() {
                headers.insert(k.to_string(), v.as_str().to_string());
            }
        }
    }
    Message {
        partition,
        offset: seq.saturating_sub(1),
        time_ms,
        key: header(h, KEY).and_then(|k| unb64(&k)),
        value: payload,
        headers,
        id: header(h, MSG_ID),
    }
}

fn dt_ms(t: async_nats::jetstream::message::Info<'_>) -> u64 {
    (t.published.unix_timestamp_nanos() / 1_000_000) as u64
}

impl NatsQueue {
    /// Connects to a NATS server with JetStream enabled.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| QueueError::Backend(format!("cannot connect to NATS at {url}: {e}")))?;
        let js = jetstream::new(client.clone());
        Ok(NatsQueue {
            client,
            js,
            local: Mutex::new(Local::default()),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().expect("nats local state poisoned")
    }

    async fn stream(&self, topic: &str, p: u32) -> Result<stream::Stream> {
        self.js
            .get_stream(stream_name(topic, p))
            .await
            .map_err(|e| {
                if e.to_string().contains("not found") {
                    QueueError::UnknownTopic(topic.to_string())
                } else {
                    backend(e)
                }
            })
    }

    /// The topic's settings (from stream 0's description, cached).
    async fn config(&self, topic: &str) -> Result<TopicConfig> {
        if let Some(c) = self.local().configs.get(topic) {
            return Ok(c.clone());
        }
        let mut s = self.stream(topic, 0).await?;
        let info = s.info().await.map_err(backend)?;
        let cfg: TopicConfig = info
            .config
            .description
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or_else(|| {
                QueueError::Backend(format!("stream {} has no weft settings", info.config.name))
            })?;
        self.local().configs.insert(topic.to_string(), cfg.clone());
        Ok(cfg)
    }

    async fn group_config(&self, topic: &str, group: &str) -> Result<GroupConfig> {
        let k = (topic.to_string(), group.to_string());
        if let Some(c) = self.local().groups.get(&k) {
            return Ok(c.clone());
        }
        let s = self.stream(topic, 0).await?;
        let info = s
            .consumer_info(enc(group))
            .await
            .map_err(|_| QueueError::UnknownGroup {
                topic: topic.to_string(),
                group: group.to_string(),
            })?;
        let cfg: GroupConfig = info
            .config
            .description
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        self.local().groups.insert(k, cfg.clone());
        Ok(cfg)
    }

    fn stream_config(topic: &str, p: u32, c: &TopicConfig) -> stream::Config {
        let limit = |v: u64| if v == 0 { -1 } else { v as i64 };
        stream::Config {
            name: stream_name(topic, p),
            subjects: vec![subject(topic, p)],
            max_age: Duration::from_millis(c.max_age_ms),
            max_messages: limit(c.max_messages),
            max_bytes: limit(c.max_bytes),
            discard: match c.full {
                FullPolicy::Reject => stream::DiscardPolicy::New,
                FullPolicy::DropOld => stream::DiscardPolicy::Old,
            },
            duplicate_window: Duration::from_millis(c.dedup_window_ms.max(1)),
            storage: stream::StorageType::File,
            description: Some(serde_json::to_string(c).expect("configs encode")),
            ..Default::default()
        }
    }

    async fn consumer(&self, topic: &str, group: &str, p: u32) -> Result<consumer::PullConsumer> {
        let k = (topic.to_string(), group.to_string(), p);
        if let Some(c) = self.local().consumers.get(&k) {
            return Ok(c.clone());
        }
        let s = self.stream(topic, p).await?;
        let c: consumer::PullConsumer =
            s.get_consumer(&enc(group))
                .await
                .map_err(|_| QueueError::UnknownGroup {
                    topic: topic.to_string(),
                    group: group.to_string(),
                })?;
        self.local().consumers.insert(k, c.clone());
        Ok(c)
    }

    /// Sends an ack kind on a delivery's reply subject and waits for the server's answer.
    async fn ack_kind(&self, reply: &async_nats::Subject, kind: jetstream::AckKind) -> Result<()> {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.request(reply.clone(), Bytes::from(kind)),
        )
        .await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(backend(format!("ack: {e}"))),
            Err(_) => Err(backend("ack: no answer from the server within 5 s")),
        }
    }

    /// [`Self::take_receipt`], saying `unknown_topic` or `unknown_group` (as the embedded
    /// backend does) when the receipt is not pending because there is no such group.
    async fn take_pending(&self, topic: &str, group: &str, receipt: &str) -> Result<Pending> {
        match self.take_receipt(topic, group, receipt) {
            Err(QueueError::NotPending(r)) => {
                self.group_config(topic, group).await?;
                Err(QueueError::NotPending(r))
            }
            other => other,
        }
    }

    fn take_receipt(&self, topic: &str, group: &str, receipt: &str) -> Result<Pending> {
        parse_receipt(receipt)?;
        let mut l = self.local();
        match l.receipts.get(receipt) {
            Some(p) if p.topic == topic && p.group == group => {}
            _ => return Err(QueueError::NotPending(receipt.to_string())),
        }
        let p = l.receipts.remove(receipt).expect("checked");
        if let Some(n) = l
            .holding
            .get_mut(&(p.topic.clone(), p.group.clone(), p.consumer.clone()))
        {
            *n = n.saturating_sub(1);
        }
        Ok(p)
    }

    /// Moves a delivery to the dead letters and terminates it.
    async fn dead_letter(&self, p: &Pending, reason: String) -> Result<()> {
        let err =
            self.local()
                .errors
                .remove(&(p.topic.clone(), p.group.clone(), p.partition, p.seq));
        let mut h = HeaderMap::new();
        for (k, v) in &p.message.headers {
            h.insert(k.as_str(), v.as_str());
        }
        if let Some(k) = &p.message.key {
            h.insert(KEY, b64(k).as_str());
        }
        h.insert("weft-dead-group", p.group.as_str());
        h.insert("weft-dead-reason", reason.as_str());
        h.insert("weft-dead-deliveries", p.delivery.to_string().as_str());
        if let Some(e) = &err {
            h.insert("weft-dead-error", e.as_str());
        }
        h.insert("weft-dead-partition", p.partition.to_string().as_str());
        h.insert("weft-dead-offset", (p.seq - 1).to_string().as_str());
        let subj = format!("weftq.{}.dead", enc(&p.topic));
        self.js
            .publish_with_headers(subj, h, p.message.value.clone())
            .await
            .map_err(backend)?
            .await
            .map_err(backend)?;
        self.ack_kind(&p.reply, jetstream::AckKind::Term).await?;
        let mut l = self.local();
        l.counters
            .entry((p.topic.clone(), p.group.clone()))
            .or_default()
            .1 += 1;
        Ok(())
    }

    /// Turns a fetched message into a pending delivery, or handles it (delayed, replayed for
    /// another group, over its deliveries, held behind its key). Returns what to hand out.
    async fn admit(
        &self,
        topic: &str,
        group: &str,
        cfg: &GroupConfig,
        p: u32,
        consumer: &str,
        msg: jetstream::Message,
    ) -> Result<Option<Pending>> {
        let info = msg.info().map_err(backend)?;
        let (seq, delivered, time_ms) = (info.stream_sequence, info.delivered as u32, dt_ms(info));
        let h = msg.message.headers.as_ref();
        let Some(reply) = msg.message.reply.clone() else {
            return Ok(None);
        };
        if let Some(g) = header(h, REPLAY_GROUP) {
            if g != group {
                self.ack_kind(&reply, jetstream::AckKind::Ack).await?;
                return Ok(None);
            }
        }
        if let Some(at) = header(h, DELIVER_AT).and_then(|v| v.parse::<u64>().ok()) {
            let now = now_ms();
            if at > now {
                let d = Duration::from_millis(at - now);
                self.ack_kind(&reply, jetstream::AckKind::Nak(Some(d)))
                    .await?;
                return Ok(None);
            }
        }
        let message = to_message(p, seq, time_ms, h, msg.message.payload.clone());
        let pending = Pending {
            topic: topic.to_string(),
            group: group.to_string(),
            partition: p,
            seq,
            reply,
            consumer: consumer.to_string(),
            key: message.key.as_deref().map(weft_shard::hash),
            delivery: delivered,
            message,
        };
        if cfg.max_deliveries > 0 && delivered > cfg.max_deliveries {
            let reason = format!("max deliveries ({}) reached", cfg.max_deliveries);
            let mut last = pending.clone();
            last.delivery = cfg.max_deliveries;
            self.dead_letter(&last, reason).await?;
            return Ok(None);
        }
        if cfg.ordered_by_key {
            if let Some(k) = pending.key {
                let mut l = self.local();
                let o = l
                    .ordered
                    .entry((topic.to_string(), group.to_string()))
                    .or_default();
                match o.busy.get(&k) {
                    Some(&(bp, bs)) if (bp, bs) != (p, seq) => {
                        let q = o.held.entry(k).or_default();
                        match q.iter_mut().find(|x| x.seq == seq) {
                            Some(x) => *x = pending,
                            None => q.push_back(pending),
                        }
                        return Ok(None);
                    }
                    _ => {
                        o.busy.insert(k, (p, seq));
                    }
                }
            }
        }
        Ok(Some(pending))
    }

    /// Registers deliveries under their receipts.
    fn hand_out(&self, got: Vec<Pending>, pull: &Pull, ack_wait_ms: u64) -> Vec<Delivery> {
        let mut l = self.local();
        let deadline = now_ms() + ack_wait_ms;
        let mut out = Vec::with_capacity(got.len());
        for p in got {
            let receipt = format!("{}-{}-{}", p.partition, p.seq - 1, p.delivery);
            if p.delivery > 1 {
                l.counters
                    .entry((p.topic.clone(), p.group.clone()))
                    .or_default()
                    .0 += 1;
            }
            *l.holding
                .entry((p.topic.clone(), p.group.clone(), pull.consumer.clone()))
                .or_default() += 1;
            out.push(Delivery {
                message: p.message.clone(),
                delivery: p.delivery,
                receipt: receipt.clone(),
                ack_deadline_ms: deadline,
            });
            let mut p = p;
            p.consumer = pull.consumer.clone();
            l.receipts.insert(receipt, p);
        }
        out
    }

    /// One pass over the partitions: held messages first, then what the server has now.
    async fn pull_once(
        &self,
        topic: &str,
        group: &str,
        cfg: &GroupConfig,
        n: u32,
        pull: &Pull,
        room: usize,
    ) -> Result<Vec<Pending>> {
        let mut got: Vec<Pending> = {
            let mut l = self.local();
            let o = l
                .ordered
                .entry((topic.to_string(), group.to_string()))
                .or_default();
            let k = room.min(o.ready.len());
            o.ready.drain(..k).collect()
        };
        let start = {
            let mut l = self.local();
            let t = l.rr.entry(format!("{topic}/{group}")).or_default();
            *t = (*t + 1) % n;
            *t
        };
        for i in 0..n {
            if got.len() >= room {
                break;
            }
            let p = (start + i) % n;
            let c = self.consumer(topic, group, p).await?;
            let mut msgs = c
                .fetch()
                .max_messages(room - got.len())
                .messages()
                .await
                .map_err(backend)?;
            while let Some(m) = msgs.next().await {
                let m = m.map_err(backend)?;
                if let Some(d) = self.admit(topic, group, cfg, p, &pull.consumer, m).await? {
                    got.push(d);
                }
            }
        }
        Ok(got)
    }

    async fn group_info(&self, topic: &str, name: &str, n: u32) -> Result<GroupInfo> {
        let config = self.group_config(topic, name).await?;
        let mut info = GroupInfo {
            name: name.to_string(),
            config,
            lag: 0,
            in_flight: 0,
            delayed: 0,
            redeliveries: 0,
            dead: 0,
            oldest_unacked_ms: 0,
        };
        for p in 0..n {
            let s = self.stream(topic, p).await?;
            let ci = s.consumer_info(enc(name)).await.map_err(backend)?;
            info.lag += ci.num_pending + ci.num_ack_pending as u64;
            info.in_flight += ci.num_ack_pending as u64;
        }
        let (r, d) = self
            .local()
            .counters
            .get(&(topic.to_string(), name.to_string()))
            .copied()
            .unwrap_or_default();
        info.redeliveries = r;
        info.dead = d;
        Ok(info)
    }
}

#[async_trait::async_trait]
impl Queue for NatsQueue {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        check_name("topic", name)?;
        crate::embedded::check_topic_config(&config)?;
        match self.config(name).await {
            Ok(c) if c == config => return self.describe(name).await,
            Ok(_) => return Err(QueueError::TopicExists(name.to_string())),
            Err(QueueError::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
        for p in (0..config.partitions).rev() {
            self.js
                .create_stream(Self::stream_config(name, p, &config))
                .await
                .map_err(backend)?;
        }
        let dead = stream::Config {
            name: dead_stream(name),
            subjects: vec![format!("weftq.{}.dead", enc(name))],
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.js.create_stream(dead).await.map_err(backend)?;
        self.describe(name).await
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let cfg = self.config(name).await?;
        for p in 0..cfg.partitions {
            self.js
                .delete_stream(stream_name(name, p))
                .await
                .map_err(backend)?;
        }
        let _ = self.js.delete_stream(dead_stream(name)).await;
        let mut l = self.local();
        l.configs.remove(name);
        l.groups.retain(|k, _| k.0 != name);
        l.consumers.retain(|k, _| k.0 != name);
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        let mut names = self.js.stream_names();
        let mut topics = Vec::new();
        while let Some(n) = names.next().await {
            let n = n.map_err(backend)?;
            if let Some(t) = n.strip_prefix("WEFTQ_").and_then(|t| t.strip_suffix("-0")) {
                topics.push(t.replace("_2E", "."));
            }
        }
        topics.sort();
        let mut out = Vec::new();
        for t in topics {
            out.push(self.describe(&t).await?);
        }
        Ok(out)
    }

    async fn describe(&self, name: &str) -> Result<TopicInfo> {
        let config = self.config(name).await?;
        let mut partitions = Vec::new();
        let mut groups = Vec::new();
        for p in 0..config.partitions {
            let mut s = self.stream(name, p).await?;
            let st = s.info().await.map_err(backend)?.state.clone();
            partitions.push(PartitionInfo {
                partition: p,
                start: st.first_sequence.saturating_sub(1),
                end: st.last_sequence,
                bytes: st.bytes,
            });
            if p == 0 {
                let mut names = s.consumer_names();
                while let Some(n) = names.next().await {
                    groups.push(n.map_err(backend)?.replace("_2E", "."));
                }
            }
        }
        groups.sort();
        let mut gi = Vec::new();
        for g in groups {
            gi.push(self.group_info(name, &g, config.partitions).await?);
        }
        Ok(TopicInfo {
            name: name.to_string(),
            config,
            partitions,
            groups: gi,
        })
    }

    async fn create_group(&self, topic: &str, group: &str, config: GroupConfig) -> Result<()> {
        check_name("group", group)?;
        if config.ack_wait_ms == 0 {
            return Err(QueueError::Invalid("ack_wait_ms must be at least 1".into()));
        }
        let tc = self.config(topic).await?;
        match self.group_config(topic, group).await {
            Ok(c) if c == config => return Ok(()),
            Ok(_) => {
                return Err(QueueError::Invalid(format!(
                    "group {group:?} of topic {topic:?} exists with other settings"
                )))
            }
            Err(_) => {}
        }
        for p in 0..tc.partitions {
            let s = self.stream(topic, p).await?;
            let deliver_policy = match config.start {
                StartAt::Earliest => consumer::DeliverPolicy::All,
                StartAt::Latest => consumer::DeliverPolicy::New,
                StartAt::Offset(o) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: o + 1,
                },
                StartAt::Time(t) => consumer::DeliverPolicy::ByStartTime {
                    start_time: async_nats::datetime::from_nanos(t as i128 * 1_000_000)
                        .map_err(backend)?,
                },
            };
            let c = consumer::pull::Config {
                durable_name: Some(enc(group)),
                description: Some(serde_json::to_string(&config).expect("configs encode")),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(config.ack_wait_ms),
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            };
            s.create_consumer(c).await.map_err(backend)?;
        }
        self.local()
            .groups
            .insert((topic.to_string(), group.to_string()), config);
        Ok(())
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let tc = self.config(topic).await?;
        self.group_config(topic, group).await?;
        for p in 0..tc.partitions {
            let s = self.stream(topic, p).await?;
            s.delete_consumer(&enc(group)).await.map_err(backend)?;
        }
        let mut l = self.local();
        l.groups.remove(&(topic.to_string(), group.to_string()));
        l.consumers
            .retain(|k, _| (k.0.as_str(), k.1.as_str()) != (topic, group));
        Ok(())
    }

    async fn publish(&self, name: &str, msgs: Vec<OutMessage>) -> Result<Vec<Published>> {
        let cfg = self.config(name).await?;
        for m in &msgs {
            let size = crate::embedded::message_size(m);
            if size > cfg.max_message_bytes {
                return Err(QueueError::TooLarge {
                    topic: name.to_string(),
                    size,
                    limit: cfg.max_message_bytes,
                });
            }
        }
        let now = now_ms();
        let mut acks = Vec::with_capacity(msgs.len());
        for m in msgs {
            let p = match (&m.key, &m.id) {
                (Some(k), _) => partition_for(k, cfg.partitions),
                (None, Some(id)) => partition_for(id.as_bytes(), cfg.partitions),
                (None, None) => {
                    let mut l = self.local();
                    let t = l.rr.entry(name.to_string()).or_default();
                    *t = (*t + 1) % cfg.partitions;
                    *t
                }
            };
            let mut h = HeaderMap::new();
            for (k, v) in &m.headers {
                h.insert(k.as_str(), v.as_str());
            }
            if let Some(k) = &m.key {
                h.insert(KEY, b64(k).as_str());
            }
            if let Some(id) = &m.id {
                h.insert(MSG_ID, id.as_str());
            }
            let at = crate::embedded::deliver_at(&m, now);
            if at > now {
                h.insert(DELIVER_AT, at.to_string().as_str());
            }
            let ack = self
                .js
                .publish_with_headers(subject(name, p), h, m.value)
                .await
                .map_err(backend)?;
            acks.push((p, ack));
        }
        let mut out = Vec::with_capacity(acks.len());
        for (p, ack) in acks {
            let a = ack.await.map_err(|e| {
                let s = e.to_string();
                if s.contains("maximum messages") || s.contains("maximum bytes") {
                    QueueError::Full {
                        topic: name.to_string(),
                        partition: p,
                        why: s,
                    }
                } else {
                    backend(s)
                }
            })?;
            out.push(Published {
                partition: p,
                offset: a.sequence - 1,
                duplicate: a.duplicate,
            });
        }
        Ok(out)
    }

    async fn pull(&self, topic: &str, group: &str, pull: Pull) -> Result<Vec<Delivery>> {
        if pull.max == 0 || pull.max > 10_000 {
            return Err(QueueError::Invalid(format!(
                "max must be 1..=10000, not {}",
                pull.max
            )));
        }
        let tc = self.config(topic).await?;
        let cfg = self.group_config(topic, group).await?;
        let until = tokio::time::Instant::now() + Duration::from_millis(pull.wait_ms);
        loop {
            let held = self
                .local()
                .holding
                .get(&(topic.to_string(), group.to_string(), pull.consumer.clone()))
                .copied()
                .unwrap_or(0);
            let mut room = pull.max as usize;
            if cfg.max_in_flight > 0 {
                room = room.min((cfg.max_in_flight as usize).saturating_sub(held as usize));
            }
            let got = if room == 0 {
                Vec::new()
            } else {
                self.pull_once(topic, group, &cfg, tc.partitions, &pull, room)
                    .await?
            };
            if !got.is_empty() {
                return Ok(self.hand_out(got, &pull, cfg.ack_wait_ms));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Vec::new());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        let p = self.take_pending(topic, group, receipt).await?;
        self.ack_kind(&p.reply, jetstream::AckKind::Ack).await?;
        let mut l = self.local();
        l.errors
            .remove(&(p.topic.clone(), p.group.clone(), p.partition, p.seq));
        if let (Some(k), Some(o)) = (
            p.key,
            l.ordered.get_mut(&(topic.to_string(), group.to_string())),
        ) {
            if o.busy.get(&k) == Some(&(p.partition, p.seq)) {
                match o.held.get_mut(&k).and_then(VecDeque::pop_front) {
                    Some(next) => {
                        o.busy.insert(k, (next.partition, next.seq));
                        o.ready.push_back(next);
                    }
                    None => {
                        o.busy.remove(&k);
                        o.held.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        delay: Duration,
        error: Option<String>,
        dead: bool,
    ) -> Result<()> {
        let cfg = self.group_config(topic, group).await?;
        let p = self.take_pending(topic, group, receipt).await?;
        if let Some(e) = error {
            self.local()
                .errors
                .insert((p.topic.clone(), p.group.clone(), p.partition, p.seq), e);
        }
        if dead {
            return self
                .dead_letter(&p, "rejected by the consumer".into())
                .await;
        }
        if cfg.max_deliveries > 0 && p.delivery >= cfg.max_deliveries {
            return self
                .dead_letter(
                    &p,
                    format!("max deliveries ({}) reached", cfg.max_deliveries),
                )
                .await;
        }
        let d = (!delay.is_zero()).then_some(delay);
        self.ack_kind(&p.reply, jetstream::AckKind::Nak(d)).await
    }

    async fn extend(&self, topic: &str, group: &str, receipt: &str) -> Result<u64> {
        parse_receipt(receipt)?;
        let cfg = self.group_config(topic, group).await?;
        let reply = match self.local().receipts.get(receipt) {
            Some(p) if p.topic == topic && p.group == group => p.reply.clone(),
            _ => return Err(QueueError::NotPending(receipt.to_string())),
        };
        self.ack_kind(&reply, jetstream::AckKind::Progress).await?;
        Ok(now_ms() + cfg.ack_wait_ms)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: StartAt,
        max: u32,
    ) -> Result<Vec<Message>> {
        let cfg = self.config(topic).await?;
        if partition >= cfg.partitions {
            return Err(QueueError::Invalid(format!(
                "topic {topic:?} has partitions 0..{}, not {partition}",
                cfg.partitions
            )));
        }
        let mut s = self.stream(topic, partition).await?;
        let st = s.info().await.map_err(backend)?.state.clone();
        let (start, end) = (st.first_sequence.saturating_sub(1), st.last_sequence);
        let policy = match from {
            StartAt::Offset(o) if o < start || o > end => {
                return Err(QueueError::OffsetOutOfRange {
                    partition,
                    offset: o,
                    start,
                    end,
                })
            }
            StartAt::Offset(o) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: o + 1,
            },
            StartAt::Earliest => consumer::DeliverPolicy::All,
            StartAt::Latest => return Ok(Vec::new()),
            StartAt::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(t as i128 * 1_000_000)
                    .map_err(backend)?,
            },
        };
        let c: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                deliver_policy: policy,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        let mut msgs = c
            .fetch()
            .max_messages(max as usize)
            .messages()
            .await
            .map_err(backend)?;
        while let Some(m) = msgs.next().await {
            let m = m.map_err(backend)?;
            let info = m.info().map_err(backend)?;
            let (seq, t) = (info.stream_sequence, dt_ms(info));
            out.push(to_message(
                partition,
                seq,
                t,
                m.message.headers.as_ref(),
                m.message.payload.clone(),
            ));
        }
        let _ = s.delete_consumer(&c.cached_info().name).await;
        Ok(out)
    }

    async fn dead_letters(&self, topic: &str, max: u32) -> Result<Vec<Message>> {
        self.config(topic).await?;
        let mut s = self
            .js
            .get_stream(dead_stream(topic))
            .await
            .map_err(backend)?;
        let st = s.info().await.map_err(backend)?.state.clone();
        let mut out = Vec::new();
        let mut seq = st.first_sequence;
        while seq <= st.last_sequence && out.len() < max as usize {
            if let Ok(m) = s.get_raw_message(seq).await {
                let t = (m.time.unix_timestamp_nanos() / 1_000_000) as u64;
                let mut msg = to_message(0, seq + 1, t, Some(&m.headers), m.payload);
                msg.partition = msg
                    .headers
                    .get("weft-dead-partition")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                out.push(msg);
            }
            seq += 1;
        }
        Ok(out)
    }

    async fn replay_dead(&self, topic: &str, offsets: Option<Vec<u64>>) -> Result<u64> {
        let cfg = self.config(topic).await?;
        let s = self
            .js
            .get_stream(dead_stream(topic))
            .await
            .map_err(backend)?;
        let all = self.dead_letters(topic, u32::MAX).await?;
        let mut n = 0;
        for d in all {
            if offsets.as_ref().is_some_and(|o| !o.contains(&d.offset)) {
                continue;
            }
            let mut h = HeaderMap::new();
            for (k, v) in &d.headers {
                if !k.starts_with("weft-dead-") {
                    h.insert(k.as_str(), v.as_str());
                }
            }
            if let Some(g) = d.headers.get("weft-dead-group") {
                h.insert(REPLAY_GROUP, g.as_str());
            }
            if let Some(k) = &d.key {
                h.insert(KEY, b64(k).as_str());
            }
            let p = d.partition.min(cfg.partitions - 1);
            self.js
                .publish_with_headers(subject(topic, p), h, d.value.clone())
                .await
                .map_err(backend)?
                .await
                .map_err(backend)?;
            s.delete_message(d.offset).await.map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    async fn purge_dead(&self, topic: &str) -> Result<u64> {
        self.config(topic).await?;
        let s = self
            .js
            .get_stream(dead_stream(topic))
            .await
            .map_err(backend)?;
        let r = s.purge().await.map_err(backend)?;
        Ok(r.purged)
    }
}
