//! The queue's state in memory: topics, their partitions' indexes, groups and dead letters;
//! and how each log record changes it (the same code on the write path and on replay).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::codec::{self, DResult, Dec};
use super::group::{GPart, Head};
use crate::types::{GroupConfig, TopicConfig};

/// What the index keeps of a stored message (40 bytes; the message itself stays on disk).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    /// Log position of the framed message.
    pub pos: u64,
    pub len: u32,
    pub time_ms: u64,
    pub deliver_at_ms: u64,
    pub key: Option<u64>,
}

/// A partition: its kept offsets `start..end` and their index entries.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Part {
    /// The oldest offset kept; `entries[0]` is this offset.
    pub start: u64,
    /// At a checkpoint: the partition's end (a partition whose messages all lie in removed
    /// segments has no entries to say it).
    pub end_hint: u64,
    #[serde(skip)]
    pub entries: VecDeque<Entry>,
    /// Offsets below this are durable, so consumers and readers may see them.
    #[serde(skip)]
    pub visible: u64,
    #[serde(skip)]
    pub bytes: u64,
}

impl Part {
    pub fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }

    pub fn get(&self, off: u64) -> Option<&Entry> {
        if off < self.start {
            return None;
        }
        self.entries.get((off - self.start) as usize)
    }

    pub fn head(&self, off: u64) -> Option<Head> {
        self.get(off).map(|e| Head {
            deliver_at_ms: e.deliver_at_ms,
            key: e.key,
        })
    }

    /// Adds the entry of offset `off`, which must be the partition's end (a gap means
    /// messages are missing: the partition restarts at `off`).
    pub fn push(&mut self, off: u64, e: Entry) {
        if off < self.end() {
            return;
        }
        if off > self.end() {
            if !self.entries.is_empty() {
                tracing::warn!(
                    off,
                    end = self.end(),
                    "queue partition has a gap in its offsets"
                );
            }
            self.entries.clear();
            self.bytes = 0;
            self.start = off;
        }
        self.bytes += e.len as u64;
        self.entries.push_back(e);
    }

    /// Drops offsets below `start`.
    pub fn trim(&mut self, start: u64) {
        while self.start < start {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= e.len as u64,
                None => {
                    self.start = start;
                    break;
                }
            }
            self.start += 1;
        }
        self.visible = self.visible.max(self.start);
    }

    /// The first offset published at or after `time_ms` (the partition's end if none).
    pub fn offset_at(&self, time_ms: u64) -> u64 {
        let i = self.entries.partition_point(|e| e.time_ms < time_ms);
        self.start + i as u64
    }
}

/// A dead letter: a message a group gave up on. Its body stays where it was written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Dead {
    pub group: String,
    pub partition: u32,
    pub offset: u64,
    pub pos: u64,
    pub len: u32,
    pub time_ms: u64,
    pub deliveries: u32,
    pub reason: String,
    pub error: Option<String>,
}

/// A consumer group.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Group {
    pub config: GroupConfig,
    pub parts: Vec<GPart>,
    #[serde(skip)]
    pub consumers: HashMap<String, u32>,
    #[serde(skip)]
    pub redeliveries: u64,
    #[serde(skip)]
    pub dead: u64,
    /// Partition to start the next pull at (turns).
    #[serde(skip)]
    pub turn: u32,
}

/// A topic.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Topic {
    pub id: u32,
    pub name: String,
    pub config: TopicConfig,
    pub parts: Vec<Part>,
    pub groups: BTreeMap<String, Group>,
    pub dead: BTreeMap<u64, Dead>,
    pub next_dead: u64,
    /// Producer ids seen within the dedup window: id → (partition, offset, time).
    pub dedup: HashMap<String, (u32, u64, u64)>,
    #[serde(skip)]
    pub dedup_order: VecDeque<(u64, String)>,
    /// Partition for the next message without a key (turns).
    #[serde(skip)]
    pub rr: u32,
}

impl Topic {
    pub fn new(id: u32, name: String, config: TopicConfig) -> Self {
        let parts = (0..config.partitions).map(|_| Part::default()).collect();
        Topic {
            id,
            name,
            config,
            parts,
            groups: BTreeMap::new(),
            dead: BTreeMap::new(),
            next_dead: 0,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            rr: 0,
        }
    }

    /// Forgets producer ids older than the window.
    pub fn expire_dedup(&mut self, now_ms: u64) {
        let window = self.config.dedup_window_ms;
        while let Some((t, _)) = self.dedup_order.front() {
            if now_ms.saturating_sub(*t) < window {
                break;
            }
            let (t, id) = self.dedup_order.pop_front().expect("front");
            if self.dedup.get(&id).map(|d| d.2) == Some(t) {
                self.dedup.remove(&id);
            }
        }
    }

    pub fn remember_id(&mut self, id: &str, partition: u32, offset: u64, time_ms: u64) {
        if self.config.dedup_window_ms == 0 {
            return;
        }
        self.dedup
            .insert(id.to_string(), (partition, offset, time_ms));
        self.dedup_order.push_back((time_ms, id.to_string()));
    }

    /// Drops a partition's offsets below `start`, in the partition and in every group.
    pub fn trim(&mut self, partition: u32, start: u64) {
        let Some(p) = self.parts.get_mut(partition as usize) else {
            return;
        };
        p.trim(start);
        for g in self.groups.values_mut() {
            if let Some(gp) = g.parts.get_mut(partition as usize) {
                gp.trim(start);
            }
        }
    }
}

/// Everything the queue knows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    pub topics: BTreeMap<String, Topic>,
    pub next_id: u32,
    #[serde(skip)]
    pub by_id: HashMap<u32, String>,
    /// Messages written but not yet durable: `(log end, topic id, partition, offset)`.
    #[serde(skip)]
    pub pending: VecDeque<(u64, u32, u32, u64)>,
}

impl State {
    pub fn topic_by_id(&mut self, id: u32) -> Option<&mut Topic> {
        let name = self.by_id.get(&id)?;
        self.topics.get_mut(name)
    }

    pub fn add_topic(&mut self, t: Topic) {
        self.next_id = self.next_id.max(t.id + 1);
        self.by_id.insert(t.id, t.name.clone());
        self.topics.insert(t.name.clone(), t);
    }

    /// The lowest log position a kept message or dead letter is at (`u64::MAX` if none):
    /// segments that end before it hold nothing needed once a checkpoint covers them.
    pub fn min_needed_pos(&self) -> u64 {
        let mut min = u64::MAX;
        for t in self.topics.values() {
            for p in &t.parts {
                if let Some(e) = p.entries.front() {
                    min = min.min(e.pos);
                }
            }
            for d in t.dead.values() {
                min = min.min(d.pos);
            }
        }
        min
    }

    /// Makes the messages written before log position `end` visible. Returns whether any
    /// became visible.
    pub fn durable(&mut self, end: u64) -> bool {
        let mut any = false;
        while let Some(&(e, topic, p, off)) = self.pending.front() {
            if e > end {
                break;
            }
            self.pending.pop_front();
            if let Some(t) = self.topic_by_id(topic) {
                if let Some(part) = t.parts.get_mut(p as usize) {
                    part.visible = part.visible.max(off + 1);
                    any = true;
                }
            }
        }
        any
    }

    /// Applies a record read back from the log (recovery). `pos` is its payload's log
    /// position; `control` is false for records a checkpoint already covers (only their
    /// messages are indexed again).
    pub fn replay(&mut self, pos: u64, payload: &[u8], control: bool) -> DResult<()> {
        let mut d = Dec::new(payload);
        let tag = d.u8()?;
        if tag == codec::MESSAGES {
            return self.replay_messages(pos, d);
        }
        if !control {
            return Ok(());
        }
        match tag {
            codec::TOPIC => {
                let id = d.u32()?;
                let name = d.str()?;
                let config: TopicConfig =
                    serde_json::from_str(&d.str()?).map_err(|e| format!("topic config: {e}"))?;
                super::check_topic_config(&config).map_err(|e| format!("topic config: {e}"))?;
                self.add_topic(Topic::new(id, name, config));
            }
            codec::DELETE_TOPIC => {
                let id = d.u32()?;
                if let Some(name) = self.by_id.remove(&id) {
                    self.topics.remove(&name);
                }
            }
            codec::GROUP => {
                let id = d.u32()?;
                let name = d.str()?;
                let config: GroupConfig =
                    serde_json::from_str(&d.str()?).map_err(|e| format!("group config: {e}"))?;
                let n = d.u32()? as usize;
                let mut starts = Vec::new();
                for _ in 0..n.min(payload.len()) {
                    starts.push(d.u64()?);
                }
                if let Some(t) = self.topic_by_id(id) {
                    t.groups.insert(name, new_group(config, &starts));
                }
            }
            codec::DELETE_GROUP => {
                let id = d.u32()?;
                let name = d.str()?;
                if let Some(t) = self.topic_by_id(id) {
                    t.groups.remove(&name);
                }
            }
            _ => self.replay_group_record(tag, &mut d)?,
        }
        Ok(())
    }

    fn replay_group_record(&mut self, tag: u8, d: &mut Dec<'_>) -> DResult<()> {
        let id = d.u32()?;
        match tag {
            codec::TRIM => {
                let p = d.u32()?;
                let start = d.u64()?;
                if let Some(t) = self.topic_by_id(id) {
                    t.trim(p, start);
                }
                return Ok(());
            }
            codec::DEAD_DONE => {
                let seq = d.u64()?;
                if let Some(t) = self.topic_by_id(id) {
                    t.dead.remove(&seq);
                }
                return Ok(());
            }
            _ => {}
        }
        let group = d.str()?;
        let p = d.u32()?;
        let off = d.u64()?;
        let Some(t) = self.topic_by_id(id) else {
            return Ok(());
        };
        let key = t
            .parts
            .get(p as usize)
            .and_then(|x| x.get(off))
            .and_then(|e| e.key);
        let Some(gp) = t
            .groups
            .get_mut(&group)
            .and_then(|g| g.parts.get_mut(p as usize))
        else {
            return Ok(());
        };
        match tag {
            codec::ACK => {
                gp.finish(off, key);
            }
            codec::DELIVER => {
                let n = d.u32()?;
                if !gp.is_done(off) {
                    gp.deliveries.insert(off, n);
                }
            }
            codec::NACK => {
                let due = d.u64()?;
                let err = d.opt_str()?;
                if !gp.is_done(off) {
                    if let Some(old) = gp.timer_of.remove(&off) {
                        gp.timers.remove(&(old, off));
                    }
                    gp.timers.insert((due, off));
                    gp.timer_of.insert(off, due);
                    if let Some(e) = err {
                        gp.errors.insert(off, e);
                    }
                }
            }
            codec::DEAD => {
                gp.finish(off, key);
                let dead: Dead =
                    serde_json::from_str(&d.str()?).map_err(|e| format!("dead letter: {e}"))?;
                let seq = d.u64()?;
                t.dead.insert(seq, dead);
                t.next_dead = t.next_dead.max(seq + 1);
            }
            codec::REQUEUE => {
                gp.reopen(off);
            }
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }

    fn replay_messages(&mut self, pos: u64, mut d: Dec<'_>) -> DResult<()> {
        let id = d.u32()?;
        let n = d.u32()? as usize;
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let at = d.at();
            let len = d.u32()? as usize;
            let _crc = d.u32()?;
            let body = d.take_bytes(len)?;
            let (head, _) = codec::decode_message(body)?;
            items.push((
                pos + at as u64,
                (weft_log::RECORD_HEADER + len) as u32,
                head,
            ));
        }
        d.done()?;
        let Some(t) = self.topic_by_id(id) else {
            return Ok(());
        };
        for (at, len, h) in items {
            if let Some(part) = t.parts.get_mut(h.partition as usize) {
                if h.offset < part.start {
                    continue;
                }
                part.push(
                    h.offset,
                    Entry {
                        pos: at,
                        len,
                        time_ms: h.time_ms,
                        deliver_at_ms: h.deliver_at_ms,
                        key: h.key,
                    },
                );
                part.visible = part.end();
            }
            if let Some(id) = h.id {
                t.remember_id(&id, h.partition, h.offset, h.time_ms);
            }
        }
        Ok(())
    }

    /// After replay: partitions end where their entries (or checkpoint) say, groups start
    /// scanning at their floors, nothing is in flight.
    pub fn restarted(&mut self, now_ms: u64) {
        for t in self.topics.values_mut() {
            for p in t.parts.iter_mut() {
                if p.entries.is_empty() && p.end_hint > p.start {
                    p.start = p.end_hint;
                }
                p.visible = p.end();
            }
            for g in t.groups.values_mut() {
                for gp in g.parts.iter_mut() {
                    gp.restarted();
                }
            }
            let mut order: Vec<(u64, String)> =
                t.dedup.iter().map(|(k, v)| (v.2, k.clone())).collect();
            order.sort();
            t.dedup_order = order.into();
            t.expire_dedup(now_ms);
        }
    }
}

/// A new group starting at `starts` (one offset per partition).
pub(crate) fn new_group(config: GroupConfig, starts: &[u64]) -> Group {
    Group {
        config,
        parts: starts.iter().map(|s| GPart::new(*s)).collect(),
        consumers: HashMap::new(),
        redeliveries: 0,
        dead: 0,
        turn: 0,
    }
}
