//! The [`Queue`] operations of the embedded backend. Each one decides and changes the state
//! under the state lock, appends its records in the same critical section, then waits for
//! durability (and reads message bodies) outside it.

use std::collections::HashMap;
use std::time::Duration;

use super::codec::{self, Enc, MsgRec};
use super::group::GPart;
use super::state::{new_group, Dead, Entry, Group, Part, State, Topic};
use super::{now_ms, EmbeddedQueue};
use crate::types::*;
use crate::{check_name, parse_receipt, partition_for, Queue, QueueError, Result};

/// A delivery decided under the lock, its body read after.
struct Out {
    partition: u32,
    offset: u64,
    entry: Entry,
    delivery: u32,
    deadline_ms: u64,
}

/// A planned publish: the results, the retention trims `(partition, new start)`, and the
/// messages to write `(index in the batch, partition, offset)`.
type Plan = (Vec<Published>, Vec<(u32, u64)>, Vec<(usize, u32, u64)>);

/// A record a pull writes besides its deliveries.
enum Note {
    Deliver(u32, u64, u32),
    Dead(u32, u64, Box<Dead>, u64),
}

fn topic<'a>(st: &'a mut State, name: &str) -> Result<&'a mut Topic> {
    st.topics
        .get_mut(name)
        .ok_or_else(|| QueueError::UnknownTopic(name.to_string()))
}

fn group_mut<'a>(t: &'a mut Topic, name: &str) -> Result<&'a mut Group> {
    let topic = t.name.clone();
    t.groups.get_mut(name).ok_or(QueueError::UnknownGroup {
        topic,
        group: name.to_string(),
    })
}

pub(crate) fn check_topic_config(c: &TopicConfig) -> Result<()> {
    if c.partitions == 0 || c.partitions > MAX_PARTITIONS {
        return Err(QueueError::Invalid(format!(
            "partitions must be 1..={MAX_PARTITIONS}, not {}",
            c.partitions
        )));
    }
    if c.max_message_bytes == 0 || c.max_message_bytes > MAX_MESSAGE_LIMIT {
        return Err(QueueError::Invalid(format!(
            "max_message_bytes must be 1..={MAX_MESSAGE_LIMIT}, not {}",
            c.max_message_bytes
        )));
    }
    Ok(())
}

pub(crate) fn message_size(m: &OutMessage) -> u64 {
    let h: usize = m.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (m.value.len()
        + m.key.as_ref().map_or(0, |k| k.len())
        + m.id.as_ref().map_or(0, |i| i.len())
        + h) as u64
}

fn encode_header(b: &mut Vec<u8>, tag: u8, topic: u32, group: &str, p: u32, off: u64) -> usize {
    let start = weft_log::begin_record(b);
    Enc(b).u8(tag).u32(topic).str(group).u32(p).u64(off);
    start
}

/// Encodes a group record (`ACK`, `DELIVER`, `NACK`, `DEAD`, `REQUEUE`) with its extra
/// fields.
fn encode_group_rec(
    b: &mut Vec<u8>,
    tag: u8,
    topic: u32,
    group: &str,
    p: u32,
    off: u64,
    extra: impl FnOnce(&mut Enc<'_>),
) {
    let start = encode_header(b, tag, topic, group, p, off);
    extra(&mut Enc(b));
    weft_log::finish_record(b, start);
}

/// Retention by age: the trims due now, applied to the state.
pub(super) fn age_trims(st: &mut State, now: u64) -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    for t in st.topics.values_mut() {
        t.expire_dedup(now);
        if t.config.max_age_ms == 0 {
            continue;
        }
        let cutoff = now.saturating_sub(t.config.max_age_ms);
        for p in 0..t.parts.len() {
            let part = &t.parts[p];
            let to = part.offset_at(cutoff).min(part.visible);
            if to > part.start {
                t.trim(p as u32, to);
                out.push((t.id, p as u32, to));
            }
        }
    }
    out
}

pub(super) fn encode_trims(b: &mut Vec<u8>, trims: &[(u32, u32, u64)]) {
    for &(topic, p, start) in trims {
        let s = weft_log::begin_record(b);
        Enc(b).u8(codec::TRIM).u32(topic).u32(p).u64(start);
        weft_log::finish_record(b, s);
    }
}

impl EmbeddedQueue {
    fn bump(&self) {
        self.inner.changed.send_modify(|v| *v += 1);
    }

    fn read_message(&self, e: &Entry) -> Result<Message> {
        let buf = self.inner.segs.read_at(e.pos, e.len)?;
        codec::decode_framed(&buf, e.pos)
            .map(|(_, m)| m)
            .map_err(QueueError::Corrupt)
    }

    fn info(t: &Topic, now: u64) -> TopicInfo {
        let partitions = t
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionInfo {
                partition: i as u32,
                start: p.start,
                end: p.visible.max(p.start),
                bytes: p.bytes,
            })
            .collect();
        let groups = t
            .groups
            .iter()
            .map(|(name, g)| group_info(name, g, &t.parts, now))
            .collect();
        TopicInfo {
            name: t.name.clone(),
            config: t.config.clone(),
            partitions,
            groups,
        }
    }

    /// Plans a publish under the lock: offsets, dedup, limits. Returns the results, the
    /// retention trims, and the messages to write with their partitions and offsets.
    fn plan_publish<'m>(t: &mut Topic, msgs: &'m [OutMessage], now: u64) -> Result<Plan> {
        t.expire_dedup(now);
        let n = t.config.partitions;
        let mut added: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut seen: HashMap<&'m str, Published> = HashMap::new();
        let mut results = Vec::with_capacity(msgs.len());
        let mut writes = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            if let Some(id) = m.id.as_deref() {
                if let Some(&(p, o, _)) = t.dedup.get(id) {
                    results.push(Published {
                        partition: p,
                        offset: o,
                        duplicate: true,
                    });
                    continue;
                }
                if let Some(first) = seen.get(id) {
                    results.push(Published {
                        duplicate: true,
                        ..first.clone()
                    });
                    continue;
                }
            }
            let p = match &m.key {
                Some(k) => partition_for(k, n),
                None => {
                    t.rr = (t.rr + 1) % n;
                    t.rr
                }
            };
            let a = added.entry(p).or_insert((0, 0));
            let off = t.parts[p as usize].end() + a.0;
            a.0 += 1;
            a.1 += message_size(m) + 64;
            let r = Published {
                partition: p,
                offset: off,
                duplicate: false,
            };
            if let Some(id) = m.id.as_deref() {
                seen.insert(id, r.clone());
            }
            results.push(r);
            writes.push((i, p, off));
        }
        let trims = Self::room(t, &added)?;
        Ok((results, trims, writes))
    }

    /// Checks the partitions' limits for `added` (count, bytes per partition): refuses, or
    /// returns the trims that make room.
    fn room(t: &Topic, added: &HashMap<u32, (u64, u64)>) -> Result<Vec<(u32, u64)>> {
        let c = &t.config;
        let mut trims = Vec::new();
        for (&p, &(count, bytes)) in added {
            let part = &t.parts[p as usize];
            let over_count =
                c.max_messages > 0 && part.entries.len() as u64 + count > c.max_messages;
            let over_bytes = c.max_bytes > 0 && part.bytes + bytes > c.max_bytes;
            if !over_count && !over_bytes {
                continue;
            }
            if c.full == FullPolicy::Reject {
                let why = if over_count {
                    format!("max_messages {}", c.max_messages)
                } else {
                    format!("max_bytes {}", c.max_bytes)
                };
                return Err(QueueError::Full {
                    topic: t.name.clone(),
                    partition: p,
                    why,
                });
            }
            let mut start = part.start;
            let mut kept = part.entries.len() as u64;
            let mut kept_bytes = part.bytes;
            for e in &part.entries {
                let fits_count = c.max_messages == 0 || kept + count <= c.max_messages;
                let fits_bytes = c.max_bytes == 0 || kept_bytes + bytes <= c.max_bytes;
                if fits_count && fits_bytes {
                    break;
                }
                start += 1;
                kept -= 1;
                kept_bytes -= e.len as u64;
            }
            if c.max_messages > 0 && kept + count > c.max_messages {
                // The batch alone is over the limit: its first messages go too.
                start += kept + count - c.max_messages;
            }
            trims.push((p, start));
        }
        Ok(trims)
    }

    /// Writes a planned publish (its trims, then one `MESSAGES` record for the batch) and
    /// indexes it. Returns the log end to wait for.
    fn write_publish(
        &self,
        st: &mut State,
        name: &str,
        msgs: &[OutMessage],
        trims: &[(u32, u64)],
        writes: &[(usize, u32, u64)],
        now: u64,
    ) -> Result<u64> {
        let t = topic(st, name)?;
        let id = t.id;
        let mut rel = Vec::with_capacity(writes.len());
        let (start, end) = self.append_at(|b| {
            let base = b.len();
            let all: Vec<(u32, u32, u64)> = trims.iter().map(|&(p, s)| (id, p, s)).collect();
            encode_trims(b, &all);
            let rec = weft_log::begin_record(b);
            Enc(b).u8(codec::MESSAGES).u32(id).u32(writes.len() as u32);
            for &(i, p, off) in writes {
                let m = &msgs[i];
                let at = b.len();
                codec::encode_message(
                    &MsgRec {
                        partition: p,
                        offset: off,
                        time_ms: now,
                        deliver_at_ms: deliver_at(m, now),
                        key: m.key.as_deref(),
                        id: m.id.as_deref(),
                        headers: &m.headers,
                        value: &m.value,
                    },
                    b,
                );
                rel.push(((at - base) as u64, (b.len() - at) as u32));
            }
            weft_log::finish_record(b, rec);
        })?;
        let mut pending = Vec::with_capacity(writes.len());
        for (&(i, p, off), &(r, len)) in writes.iter().zip(&rel) {
            let m = &msgs[i];
            t.parts[p as usize].push(
                off,
                Entry {
                    pos: start + r,
                    len,
                    time_ms: now,
                    deliver_at_ms: deliver_at(m, now),
                    key: m.key.as_deref().map(weft_shard::hash),
                },
            );
            if let Some(mid) = m.id.as_deref() {
                t.remember_id(mid, p, off, now);
            }
            pending.push((end, id, p, off));
        }
        for &(p, s) in trims {
            t.trim(p, s);
        }
        st.pending.extend(pending);
        Ok(end)
    }

    /// Decides a pull under the lock: expired deliveries and due timers first, then ready
    /// and new messages, partitions taking turns. Returns the deliveries, the records to
    /// write, and when something changes by itself next.
    fn plan_pull(
        t: &mut Topic,
        group: &str,
        pull: &Pull,
        now: u64,
    ) -> Result<(Vec<Out>, Vec<Note>, Option<u64>)> {
        let g = group_mut(t, group)?;
        let cfg = g.config.clone();
        let Topic {
            parts,
            groups,
            dead,
            next_dead,
            ..
        } = t;
        let g = groups.get_mut(group).expect("checked above");
        let mut notes = Vec::new();
        for (p, gp) in g.parts.iter_mut().enumerate() {
            for (off, f) in gp.expired(now) {
                if let Some(c) = g.consumers.get_mut(&f.consumer) {
                    *c = c.saturating_sub(1);
                }
                gp.errors
                    .entry(off)
                    .or_insert_with(|| "ack wait expired".into());
                let key = parts[p].get(off).and_then(|e| e.key);
                if let Some(d) = fail(gp, &cfg, &parts[p], p as u32, off, key, 0, now, group) {
                    g.dead += 1;
                    notes.push(Note::Dead(p as u32, off, Box::new(d), *next_dead));
                    *next_dead += 1;
                }
            }
            gp.due_timers(now);
        }
        for n in &notes {
            if let Note::Dead(_, _, d, seq) = n {
                dead.insert(*seq, (**d).clone());
            }
        }
        let held = g.consumers.get(&pull.consumer).copied().unwrap_or(0);
        let mut room = pull.max as u64;
        if cfg.max_in_flight > 0 {
            room = room.min((cfg.max_in_flight as u64).saturating_sub(held as u64));
        }
        let mut out = Vec::new();
        let n = g.parts.len();
        let mut idle = 0;
        let mut p = g.turn as usize % n.max(1);
        while (out.len() as u64) < room && idle < n {
            match take_one(&mut g.parts[p], &parts[p], cfg.ordered_by_key, now) {
                Some(off) => {
                    idle = 0;
                    let gp = &mut g.parts[p];
                    let deadline_ms = now + cfg.ack_wait_ms;
                    let delivery = gp.deliver(off, &pull.consumer, deadline_ms);
                    if delivery > 1 {
                        g.redeliveries += 1;
                    }
                    notes.push(Note::Deliver(p as u32, off, delivery));
                    out.push(Out {
                        partition: p as u32,
                        offset: off,
                        entry: *parts[p].get(off).expect("taken offsets are kept"),
                        delivery,
                        deadline_ms,
                    });
                }
                None => idle += 1,
            }
            p = (p + 1) % n;
        }
        g.turn = p as u32;
        *g.consumers.entry(pull.consumer.clone()).or_insert(0) += out.len() as u32;
        let next_due = g.parts.iter().filter_map(GPart::next_due).min();
        Ok((out, notes, next_due))
    }

    fn encode_notes(b: &mut Vec<u8>, topic: u32, group: &str, notes: &[Note]) {
        for n in notes {
            match n {
                Note::Deliver(p, off, count) => {
                    encode_group_rec(b, codec::DELIVER, topic, group, *p, *off, |e| {
                        e.u32(*count);
                    })
                }
                Note::Dead(p, off, d, seq) => {
                    let json = serde_json::to_string(&**d).expect("dead letters encode");
                    encode_group_rec(b, codec::DEAD, topic, group, *p, *off, |e| {
                        e.str(&json).u64(*seq);
                    })
                }
            }
        }
    }

    /// Finds the pending offset a receipt names: `(partition, offset, key)`.
    fn pending(t: &mut Topic, group: &str, receipt: &str) -> Result<(u32, u64, Option<u64>)> {
        let (p, off) = parse_receipt(receipt)?;
        let g = group_mut(t, group)?;
        let not = || QueueError::NotPending(receipt.to_string());
        let gp = g.parts.get(p as usize).ok_or_else(not)?;
        let tracked = gp.inflight.contains_key(&off)
            || gp.ready.contains(&off)
            || gp.timer_of.contains_key(&off);
        if gp.is_done(off) || !tracked {
            return Err(not());
        }
        let key = t.parts[p as usize].get(off).and_then(|e| e.key);
        Ok((p, off, key))
    }

    /// Records an ack under the state lock: the log position to wait for, and whether a
    /// held-back message of the same key became ready.
    fn ack_locked(&self, t: &mut Topic, group: &str, receipt: &str) -> Result<(u64, bool)> {
        let (p, off, key) = Self::pending(t, group, receipt)?;
        let id = t.id;
        let end = self.append(|b| encode_group_rec(b, codec::ACK, id, group, p, off, |_| {}))?;
        let g = t.groups.get_mut(group).expect("checked above");
        let gp = &mut g.parts[p as usize];
        if let Some(f) = gp.inflight.get(&off) {
            if let Some(c) = g.consumers.get_mut(&f.consumer) {
                *c = c.saturating_sub(1);
            }
        }
        let next = gp.finish(off, key);
        if let Some(n) = next {
            let due = t.parts[p as usize].get(n).map_or(0, |e| e.deliver_at_ms);
            gp.schedule(n, due, now_ms());
        }
        Ok((end, next.is_some()))
    }
}

/// The next offset a group part can hand out now, if any.
fn take_one(gp: &mut GPart, part: &Part, ordered: bool, now: u64) -> Option<u64> {
    while let Some(off) = gp.take_ready() {
        if part.get(off).is_some() {
            return Some(off);
        }
    }
    loop {
        match gp.scan_one(part.visible, ordered, now, |o| part.head(o)) {
            Ok(Some(off)) => return Some(off),
            Ok(None) => continue,
            Err(()) => return None,
        }
    }
}

/// A delivery of `off` failed (nacked, or its ack wait ended): due again at `now + delay`,
/// or dead-lettered if it had its deliveries. Returns the dead letter.
#[allow(clippy::too_many_arguments)]
fn fail(
    gp: &mut GPart,
    cfg: &GroupConfig,
    part: &Part,
    p: u32,
    off: u64,
    key: Option<u64>,
    delay_ms: u64,
    now: u64,
    group: &str,
) -> Option<Dead> {
    let deliveries = gp.deliveries.get(&off).copied().unwrap_or(0);
    if cfg.max_deliveries > 0 && deliveries >= cfg.max_deliveries {
        let reason = format!("max deliveries ({}) reached", cfg.max_deliveries);
        return dead_letter(gp, part, p, off, key, group, reason);
    }
    gp.schedule(off, now + delay_ms, now);
    None
}

/// Finishes `off` in the group and returns its dead letter (`None` if retention removed it).
fn dead_letter(
    gp: &mut GPart,
    part: &Part,
    p: u32,
    off: u64,
    key: Option<u64>,
    group: &str,
    reason: String,
) -> Option<Dead> {
    let deliveries = gp.deliveries.get(&off).copied().unwrap_or(0);
    let error = gp.errors.get(&off).cloned();
    let next = gp.finish(off, key);
    if let Some(n) = next {
        if let Some(e) = part.get(n) {
            gp.schedule(n, e.deliver_at_ms, 0);
        }
    }
    let e = part.get(off)?;
    Some(Dead {
        group: group.to_string(),
        partition: p,
        offset: off,
        pos: e.pos,
        len: e.len,
        time_ms: e.time_ms,
        deliveries,
        reason,
        error,
    })
}

/// Where a group starts in a partition.
fn start_offset(p: &Part, at: StartAt) -> u64 {
    match at {
        StartAt::Earliest => p.start,
        StartAt::Latest => p.end(),
        StartAt::Offset(o) => o.clamp(p.start, p.end()),
        StartAt::Time(t) => p.offset_at(t),
    }
}

#[async_trait::async_trait]
impl Queue for EmbeddedQueue {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        check_name("topic", name)?;
        check_topic_config(&config)?;
        let now = now_ms();
        let end = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            if let Some(t) = st.topics.get(name) {
                if t.config != config {
                    return Err(QueueError::TopicExists(name.to_string()));
                }
                return Ok(Self::info(t, now));
            }
            let id = st.next_id;
            let json = serde_json::to_string(&config).expect("configs encode");
            let end = self.append(|b| {
                let s = weft_log::begin_record(b);
                Enc(b).u8(codec::TOPIC).u32(id).str(name).str(&json);
                weft_log::finish_record(b, s);
            })?;
            st.add_topic(Topic::new(id, name.to_string(), config));
            end
        };
        self.wait(end).await?;
        self.describe(name).await
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let end = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let id = topic(&mut st, name)?.id;
            let end = self.append(|b| {
                let s = weft_log::begin_record(b);
                Enc(b).u8(codec::DELETE_TOPIC).u32(id);
                weft_log::finish_record(b, s);
            })?;
            st.topics.remove(name);
            st.by_id.remove(&id);
            end
        };
        self.bump();
        self.wait(end).await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        let now = now_ms();
        let st = self.inner.state.lock().expect("queue state poisoned");
        Ok(st.topics.values().map(|t| Self::info(t, now)).collect())
    }

    async fn describe(&self, name: &str) -> Result<TopicInfo> {
        let now = now_ms();
        let mut st = self.inner.state.lock().expect("queue state poisoned");
        Ok(Self::info(topic(&mut st, name)?, now))
    }

    async fn create_group(&self, name: &str, group: &str, config: GroupConfig) -> Result<()> {
        check_name("group", group)?;
        if config.ack_wait_ms == 0 {
            return Err(QueueError::Invalid("ack_wait_ms must be at least 1".into()));
        }
        let end = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            if let Some(g) = t.groups.get(group) {
                if g.config != config {
                    return Err(QueueError::Invalid(format!(
                        "group {group:?} of topic {name:?} exists with other settings"
                    )));
                }
                return Ok(());
            }
            let starts: Vec<u64> = t
                .parts
                .iter()
                .map(|p| start_offset(p, config.start))
                .collect();
            let json = serde_json::to_string(&config).expect("configs encode");
            let id = t.id;
            let end = self.append(|b| {
                let s = weft_log::begin_record(b);
                let mut e = Enc(b);
                e.u8(codec::GROUP)
                    .u32(id)
                    .str(group)
                    .str(&json)
                    .u32(starts.len() as u32);
                for s in &starts {
                    e.u64(*s);
                }
                weft_log::finish_record(b, s);
            })?;
            t.groups
                .insert(group.to_string(), new_group(config, &starts));
            end
        };
        self.wait(end).await
    }

    async fn delete_group(&self, name: &str, group: &str) -> Result<()> {
        let end = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            group_mut(t, group)?;
            let id = t.id;
            let end = self.append(|b| {
                let s = weft_log::begin_record(b);
                Enc(b).u8(codec::DELETE_GROUP).u32(id).str(group);
                weft_log::finish_record(b, s);
            })?;
            t.groups.remove(group);
            end
        };
        self.wait(end).await
    }

    async fn publish(&self, name: &str, msgs: Vec<OutMessage>) -> Result<Vec<Published>> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let (results, end) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            let limit = t.config.max_message_bytes;
            for m in &msgs {
                let size = message_size(m);
                if size > limit {
                    return Err(QueueError::TooLarge {
                        topic: name.to_string(),
                        size,
                        limit,
                    });
                }
            }
            let (results, trims, writes) = Self::plan_publish(t, &msgs, now)?;
            if writes.is_empty() {
                return Ok(results);
            }
            let end = self.write_publish(&mut st, name, &msgs, &trims, &writes, now)?;
            (results, end)
        };
        self.wait(end).await?;
        Ok(results)
    }

    async fn pull(&self, name: &str, group: &str, pull: Pull) -> Result<Vec<Delivery>> {
        if pull.max == 0 || pull.max > 10_000 {
            return Err(QueueError::Invalid(format!(
                "max must be 1..=10000, not {}",
                pull.max
            )));
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(pull.wait_ms);
        let mut changed = self.inner.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let now = now_ms();
            let (outs, next_due) = {
                let mut st = self.inner.state.lock().expect("queue state poisoned");
                let t = topic(&mut st, name)?;
                let id = t.id;
                let (outs, notes, next_due) = Self::plan_pull(t, group, &pull, now)?;
                if !notes.is_empty() {
                    // Not waited for: a crash may forget the latest delivery counts (the
                    // messages are handed out again, as unacked ones must be).
                    self.append_lazy(|b| Self::encode_notes(b, id, group, &notes))?;
                }
                (outs, next_due)
            };
            if !outs.is_empty() {
                let spans: Vec<(u64, u32)> =
                    outs.iter().map(|o| (o.entry.pos, o.entry.len)).collect();
                let bufs = self.inner.segs.read_many(&spans)?;
                return outs
                    .into_iter()
                    .zip(bufs)
                    .map(|(o, buf)| {
                        let (_, message) =
                            codec::decode_framed(&buf, o.entry.pos).map_err(QueueError::Corrupt)?;
                        Ok(Delivery {
                            message,
                            delivery: o.delivery,
                            receipt: format!("{}-{}-{}", o.partition, o.offset, o.delivery),
                            ack_deadline_ms: o.deadline_ms,
                        })
                    })
                    .collect();
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut sleep = left;
            if let Some(due) = next_due {
                sleep = sleep.min(Duration::from_millis(due.saturating_sub(now_ms()) + 1));
            }
            let _ = tokio::time::timeout(sleep, changed.changed()).await;
        }
    }

    async fn ack(&self, name: &str, group: &str, receipt: &str) -> Result<()> {
        let (end, unblocked) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            self.ack_locked(topic(&mut st, name)?, group, receipt)?
        };
        if unblocked {
            self.bump();
        }
        self.wait(end).await
    }

    async fn ack_many(&self, name: &str, group: &str, receipts: &[String]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(receipts.len());
        let (mut end, mut unblocked) = (None, false);
        {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = match topic(&mut st, name) {
                Ok(t) => t,
                Err(e) => return receipts.iter().map(|_| Err(e.clone())).collect(),
            };
            for r in receipts {
                out.push(self.ack_locked(t, group, r).map(|(e, u)| {
                    end = Some(e);
                    unblocked |= u;
                }));
            }
        }
        if unblocked {
            self.bump();
        }
        if let Some(end) = end {
            if let Err(e) = self.wait(end).await {
                for r in out.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
        }
        out
    }

    async fn nack(
        &self,
        name: &str,
        group: &str,
        receipt: &str,
        delay: Duration,
        error: Option<String>,
        dead: bool,
    ) -> Result<()> {
        let now = now_ms();
        let end = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            let (p, off, key) = Self::pending(t, group, receipt)?;
            let id = t.id;
            let Topic {
                parts,
                groups,
                dead: dl,
                next_dead,
                ..
            } = t;
            let g = groups.get_mut(group).expect("checked above");
            let cfg = g.config.clone();
            let gp = &mut g.parts[p as usize];
            if let Some(f) = gp.inflight.remove(&off) {
                gp.deadlines.remove(&(f.deadline_ms, off));
                if let Some(c) = g.consumers.get_mut(&f.consumer) {
                    *c = c.saturating_sub(1);
                }
            }
            gp.ready.remove(&off);
            if let Some(due) = gp.timer_of.remove(&off) {
                gp.timers.remove(&(due, off));
            }
            if let Some(e) = &error {
                gp.errors.insert(off, e.clone());
            }
            let part = &parts[p as usize];
            let letter = if dead {
                dead_letter(
                    gp,
                    part,
                    p,
                    off,
                    key,
                    group,
                    "rejected by the consumer".into(),
                )
            } else {
                fail(
                    gp,
                    &cfg,
                    part,
                    p,
                    off,
                    key,
                    delay.as_millis() as u64,
                    now,
                    group,
                )
            };
            let done = gp.is_done(off);
            match letter {
                Some(d) => {
                    g.dead += 1;
                    let seq = *next_dead;
                    *next_dead += 1;
                    dl.insert(seq, d.clone());
                    let notes = [Note::Dead(p, off, Box::new(d), seq)];
                    self.append(|b| Self::encode_notes(b, id, group, &notes))?
                }
                None if done => {
                    self.append(|b| encode_group_rec(b, codec::ACK, id, group, p, off, |_| {}))?
                }
                None => {
                    let due = now + delay.as_millis() as u64;
                    self.append(|b| {
                        encode_group_rec(b, codec::NACK, id, group, p, off, |e| {
                            e.u64(due).opt_str(error.as_deref());
                        })
                    })?
                }
            }
        };
        self.bump();
        self.wait(end).await
    }

    async fn extend(&self, name: &str, group: &str, receipt: &str) -> Result<u64> {
        let now = now_ms();
        let mut st = self.inner.state.lock().expect("queue state poisoned");
        let t = topic(&mut st, name)?;
        let topic_name = t.name.clone();
        let g = t.groups.get_mut(group).ok_or(QueueError::UnknownGroup {
            topic: topic_name,
            group: group.to_string(),
        })?;
        let (p, off) = parse_receipt(receipt)?;
        let wait = g.config.ack_wait_ms;
        let gp = g
            .parts
            .get_mut(p as usize)
            .ok_or_else(|| QueueError::NotPending(receipt.to_string()))?;
        let f = gp
            .inflight
            .get_mut(&off)
            .ok_or_else(|| QueueError::NotPending(receipt.to_string()))?;
        let old = f.deadline_ms;
        f.deadline_ms = now + wait;
        let new = f.deadline_ms;
        gp.deadlines.remove(&(old, off));
        gp.deadlines.insert((new, off));
        Ok(new)
    }

    async fn read(
        &self,
        name: &str,
        partition: u32,
        from: StartAt,
        max: u32,
    ) -> Result<Vec<Message>> {
        let entries: Vec<Entry> = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            let part = t.parts.get(partition as usize).ok_or_else(|| {
                QueueError::Invalid(format!(
                    "topic {name:?} has partitions 0..{}, not {partition}",
                    t.parts.len()
                ))
            })?;
            let visible = part.visible.max(part.start);
            let first = match from {
                StartAt::Offset(o) if o < part.start || o > visible => {
                    return Err(QueueError::OffsetOutOfRange {
                        partition,
                        offset: o,
                        start: part.start,
                        end: visible,
                    })
                }
                other => start_offset(part, other).min(visible),
            };
            let last = visible.min(first + max as u64);
            (first..last).filter_map(|o| part.get(o).copied()).collect()
        };
        entries.iter().map(|e| self.read_message(e)).collect()
    }

    async fn dead_letters(&self, name: &str, max: u32) -> Result<Vec<Message>> {
        let list: Vec<(u64, Dead)> = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            t.dead
                .iter()
                .take(max as usize)
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        };
        list.into_iter()
            .map(|(seq, d)| {
                let e = Entry {
                    pos: d.pos,
                    len: d.len,
                    time_ms: d.time_ms,
                    deliver_at_ms: 0,
                    key: None,
                };
                let mut m = self.read_message(&e)?;
                let h = &mut m.headers;
                h.insert("weft-dead-group".into(), d.group.clone());
                h.insert("weft-dead-reason".into(), d.reason.clone());
                h.insert("weft-dead-deliveries".into(), d.deliveries.to_string());
                if let Some(err) = &d.error {
                    h.insert("weft-dead-error".into(), err.clone());
                }
                h.insert("weft-dead-partition".into(), d.partition.to_string());
                h.insert("weft-dead-offset".into(), d.offset.to_string());
                m.offset = seq;
                Ok(m)
            })
            .collect()
    }

    async fn replay_dead(&self, name: &str, offsets: Option<Vec<u64>>) -> Result<u64> {
        let (end, republish, n) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            let id = t.id;
            let seqs: Vec<u64> = match offsets {
                Some(o) => o.into_iter().filter(|s| t.dead.contains_key(s)).collect(),
                None => t.dead.keys().copied().collect(),
            };
            let mut requeue = Vec::new();
            let mut republish = Vec::new();
            for s in &seqs {
                let d = t.dead.remove(s).expect("filtered");
                let kept = t
                    .parts
                    .get(d.partition as usize)
                    .and_then(|p| p.get(d.offset))
                    .is_some();
                match t.groups.get_mut(&d.group) {
                    Some(g) if kept => {
                        g.parts[d.partition as usize].reopen(d.offset);
                        requeue.push((d.group, d.partition, d.offset));
                    }
                    _ => republish.push(d),
                }
            }
            let end = self.append(|b| {
                for (g, p, off) in &requeue {
                    encode_group_rec(b, codec::REQUEUE, id, g, *p, *off, |_| {});
                }
                for s in &seqs {
                    let r = weft_log::begin_record(b);
                    Enc(b).u8(codec::DEAD_DONE).u32(id).u64(*s);
                    weft_log::finish_record(b, r);
                }
            })?;
            (end, republish, seqs.len() as u64)
        };
        self.bump();
        self.wait(end).await?;
        // Messages retention removed (or whose group is gone) go back as new messages.
        let mut msgs = Vec::new();
        for d in republish {
            let e = Entry {
                pos: d.pos,
                len: d.len,
                time_ms: d.time_ms,
                deliver_at_ms: 0,
                key: None,
            };
            let m = self.read_message(&e)?;
            msgs.push(OutMessage {
                key: m.key,
                value: m.value,
                headers: m.headers,
                ..Default::default()
            });
        }
        if !msgs.is_empty() {
            self.publish(name, msgs).await?;
        }
        Ok(n)
    }

    async fn purge_dead(&self, name: &str) -> Result<u64> {
        let (end, n) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let t = topic(&mut st, name)?;
            let id = t.id;
            let seqs: Vec<u64> = t.dead.keys().copied().collect();
            let end = self.append(|b| {
                for s in &seqs {
                    let r = weft_log::begin_record(b);
                    Enc(b).u8(codec::DEAD_DONE).u32(id).u64(*s);
                    weft_log::finish_record(b, r);
                }
            })?;
            t.dead.clear();
            (end, seqs.len() as u64)
        };
        self.wait(end).await?;
        Ok(n)
    }
}

pub(crate) fn deliver_at(m: &OutMessage, now: u64) -> u64 {
    let a = m.deliver_at_ms.unwrap_or(0);
    let b = m.delay_ms.map_or(0, |d| now.saturating_add(d));
    a.max(b)
}

fn group_info(name: &str, g: &Group, parts: &[Part], now: u64) -> GroupInfo {
    let mut info = GroupInfo {
        name: name.to_string(),
        config: g.config.clone(),
        lag: 0,
        in_flight: 0,
        delayed: 0,
        redeliveries: g.redeliveries,
        dead: g.dead,
        oldest_unacked_ms: 0,
    };
    for (gp, p) in g.parts.iter().zip(parts) {
        info.lag += gp.lag(p.start, p.visible);
        info.in_flight += gp.inflight.len() as u64;
        info.delayed += gp.timers.len() as u64;
        if let Some(e) = gp
            .first_unfinished(p.start, p.visible)
            .and_then(|o| p.get(o))
        {
            info.oldest_unacked_ms = info.oldest_unacked_ms.max(now.saturating_sub(e.time_ms));
        }
    }
    info
}
