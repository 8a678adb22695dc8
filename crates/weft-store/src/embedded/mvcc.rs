//! The in-memory multi-version index: every key's history since the compaction point, the
//! leases, and a ring of recent events for watchers.
//!
//! Invariants:
//! - `rev` is the revision of the last applied change; it grows by one per batch that changes at
//!   least one key, never otherwise.
//! - Each key's history is sorted by revision, holds at most one entry per revision, and keeps the
//!   newest entry at or below `compact_rev` (unless that entry is a tombstone). Older entries
//!   may linger until the background sweep reaches the key; no read can see them.
//! - A lease's key set is exactly the live keys whose latest entry names that lease.
//! - `recent` holds the events of consecutive revisions ending at `rev`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::{Duration, Instant};

use crate::types::{KeyRange, KeyValue, RANGE_END_ALL};
use crate::watch::{Event, EventType};
use crate::{Result, StoreError};

/// One version of a key; `kv: None` is a tombstone.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub rev: i64,
    pub sub: u32,
    pub kv: Option<Arc<KeyValue>>,
}

/// Entries per shared chunk of a [`History`].
#[cfg(not(test))]
const CHUNK: usize = 256;
/// Small in tests, so that the property tests cross chunk boundaries.
#[cfg(test)]
const CHUNK: usize = 4;

/// One key's history, sorted by revision: full chunks, shared with the snapshots that hold
/// them, then a tail of fewer than `CHUNK` entries. A write to a history that a snapshot
/// shares copies the chunks' pointers and the tail, not every entry: copying whole histories
/// after a snapshot stalled writes for up to 170 ms when 64 keys had 27k revisions each.
/// Only the first chunk may be shorter than `CHUNK` (after a sweep trimmed it); none is
/// empty.
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    chunks: Vec<Arc<[Entry]>>,
    tail: Vec<Entry>,
}

/// Entries taken out of histories by [`Mvcc::sweep`], to be dropped after the state lock is
/// released.
#[derive(Debug, Default)]
pub(crate) struct Garbage {
    chunks: Vec<Arc<[Entry]>>,
    entries: Vec<Entry>,
}

impl History {
    /// Appends an entry (newer than every entry in it).
    pub fn push(&mut self, e: Entry) {
        if self.tail.capacity() == 0 && !self.chunks.is_empty() {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(e);
        if self.tail.len() == CHUNK {
            self.chunks.push(Arc::from(std::mem::take(&mut self.tail)));
        }
    }

    /// The newest entry.
    pub fn last(&self) -> Option<&Entry> {
        self.tail
            .last()
            .or_else(|| self.chunks.last().and_then(|c| c.last()))
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    /// Part `i` of the history: the chunks, then the tail (`i == chunks.len()`).
    fn part(&self, i: usize) -> &[Entry] {
        match self.chunks.get(i) {
            Some(c) => c,
            None => &self.tail,
        }
    }

    /// The parts in order (the last may be empty).
    pub fn parts(&self) -> impl Iterator<Item = &[Entry]> + '_ {
        self.chunks
            .iter()
            .map(|c| &c[..])
            .chain(std::iter::once(&self.tail[..]))
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.parts().flatten()
    }

    /// Where the first entry for which `pred` is false is (`pred` holds for a prefix of the
    /// history): the part and the offset in it.
    fn partition_point(&self, pred: impl Fn(&Entry) -> bool) -> (usize, usize) {
        let part = self
            .chunks
            .partition_point(|c| pred(c.last().expect("chunks are not empty")));
        (part, self.part(part).partition_point(pred))
    }

    /// The entry just before position `(part, off)` (chunks are never empty, so at the start
    /// of a part it is the last of the part before).
    fn before(&self, (part, off): (usize, usize)) -> Option<&Entry> {
        match off.checked_sub(1) {
            Some(i) => self.part(part).get(i),
            None => part.checked_sub(1).and_then(|p| self.chunks[p].last()),
        }
    }

    /// Entries from position `(part, off)` on.
    fn iter_from(&self, (part, off): (usize, usize)) -> impl Iterator<Item = &Entry> + '_ {
        self.parts()
            .skip(part)
            .enumerate()
            .flat_map(move |(i, p)| if i == 0 { &p[off..] } else { p })
    }

    /// How many entries come before position `(part, off)`.
    fn index(&self, (part, off): (usize, usize)) -> usize {
        self.chunks[..part].iter().map(|c| c.len()).sum::<usize>() + off
    }

    /// The entry visible at `rev`.
    fn at(&self, rev: i64) -> Option<&Arc<KeyValue>> {
        if let Some(last) = self.last() {
            if last.rev <= rev {
                return last.kv.as_ref();
            }
        }
        let pos = self.partition_point(|e| e.rev <= rev);
        self.before(pos).and_then(|e| e.kv.as_ref())
    }

    /// Takes out the `n` oldest entries into `garbage`. Chunks shared with a snapshot stay
    /// intact there: a chunk cut in the middle is copied from the cut on.
    fn drop_front(&mut self, mut n: usize, garbage: &mut Garbage) {
        let mut whole = 0;
        while whole < self.chunks.len() && n >= self.chunks[whole].len() {
            n -= self.chunks[whole].len();
            whole += 1;
        }
        garbage.chunks.extend(self.chunks.drain(..whole));
        if n == 0 {
            return;
        }
        match self.chunks.first_mut() {
            Some(c) => {
                let rest: Arc<[Entry]> = Arc::from(&c[n..]);
                garbage.chunks.push(std::mem::replace(c, rest));
            }
            None => garbage
                .entries
                .extend(self.tail.drain(..n.min(self.tail.len()))),
        }
    }
}

/// A live lease.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Bytes>,
}

/// One logged change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put {
        key: Bytes,
        value: Bytes,
        lease: i64,
    },
    Delete {
        key: Bytes,
    },
}

/// Everything one write did, as logged: replaying it on the state it was made on yields the
/// same state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Store revision after the batch.
    pub rev: i64,
    pub grants: Vec<(i64, i64)>,
    pub changes: Vec<Change>,
    pub revokes: Vec<i64>,
    pub compact: Option<i64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
            && self.changes.is_empty()
            && self.revokes.is_empty()
            && self.compact.is_none()
    }
}

/// How many revisions of events the ring keeps for synced watchers.
const RECENT_REVISIONS: usize = 8192;

/// The key index. A persistent (copy-on-write) B-tree, so that a snapshot of the whole state
/// is an O(1) clone under the state lock and is encoded by the snapshot thread, without
/// blocking reads and writes for a time proportional to the state's size. Each history is
/// behind its own `Arc`: a write to a tree node a snapshot shares copies the node, and with
/// histories inline that copied every history in it (64 keys with 45k revisions each: 2.9M
/// entries); now it copies the node's pointers, and the one history written is copied if the
/// snapshot shares it: its chunks' pointers and its tail (see [`History`]).
pub(crate) type Keys = imbl::OrdMap<IndexKey, Arc<History>>;

/// How many leading bytes of a key [`IndexKey`] keeps inline.
const HEAD: usize = 32;

/// A key of the index: its bytes, and their first 32 bytes inline as two big-endian integers
/// (zero-padded), which the tree's binary searches compare first. Each key's bytes are a
/// heap allocation of their own, so comparing bytes is a cache miss per comparison (a lookup
/// makes about 6 per tree level); comparing heads reads the node only. 32 bytes cover the
/// prefixes that keys usually share (`/registry/pods/<namespace>/`, `/weft/svc/<name>/`)
/// and some of what follows; keys that share all 32 fall back to comparing the bytes.
///
/// Orders exactly as the bytes do: where two heads differ, the first differing byte is
/// either in both keys, or a zero of padding against a non-zero byte of the longer key,
/// which the shorter key is then a prefix of up to there. Equal heads compare by bytes.
#[derive(Clone, Debug)]
pub(crate) struct IndexKey {
    head: [u128; 2],
    bytes: Bytes,
}

impl IndexKey {
    pub fn new(bytes: Bytes) -> Self {
        let mut head = [0u8; HEAD];
        let n = bytes.len().min(HEAD);
        head[..n].copy_from_slice(&bytes[..n]);
        let (a, b) = head.split_at(HEAD / 2);
        let word = |s: &[u8]| u128::from_be_bytes(s.try_into().expect("16 bytes"));
        IndexKey {
            head: [word(a), word(b)],
            bytes,
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.head.cmp(&other.head).then_with(|| {
            if self.bytes.len() >= HEAD && other.bytes.len() >= HEAD {
                // Equal heads of full length: the first 32 bytes are equal.
                self.bytes[HEAD..].cmp(&other.bytes[HEAD..])
            } else {
                self.bytes.cmp(&other.bytes)
            }
        })
    }
}

/// A point-in-time copy of what a snapshot file holds; cheap to take (see [`Keys`]).
pub(crate) struct Snapshot {
    pub rev: i64,
    pub compact_rev: i64,
    /// `(id, ttl)` of every live lease, sorted by id.
    pub leases: Vec<(i64, i64)>,
    pub keys: Keys,
}

#[derive(Debug, Default)]
pub(crate) struct Mvcc {
    pub keys: Keys,
    pub rev: i64,
    pub compact_rev: i64,
    pub leases: HashMap<i64, Lease>,
    pub recent: VecDeque<(i64, Arc<[Recorded]>)>,
    pub lease_counter: u64,
    /// Every change to a key that had a history (a put over an entry, a delete), oldest
    /// first, with its revision: what a compaction may shorten. The sweeper takes from the
    /// front up to the compaction point, so compacting costs the changes it covers, not the
    /// size of the state (a walk of every key took 13 % of the CPU at about 18k sagas/s with
    /// compaction every 2 s).
    pub changed: VecDeque<(i64, Bytes)>,
}

/// Start and end bounds of a key range in the index.
type Bounds = (Bound<IndexKey>, Bound<IndexKey>);

/// The bounds of a range of more than one key (`range_end` not empty).
fn range_bounds(range: &KeyRange) -> Option<Bounds> {
    let start = Bound::Included(IndexKey::new(range.key.clone()));
    if &range.range_end[..] == RANGE_END_ALL {
        return Some((start, Bound::Unbounded));
    }
    if range.key >= range.range_end {
        return None;
    }
    Some((
        start,
        Bound::Excluded(IndexKey::new(range.range_end.clone())),
    ))
}

impl Mvcc {
    /// Iterate over the histories of the keys in `range`.
    pub fn histories<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> impl Iterator<Item = (&'a Bytes, &'a History)> + 'a {
        // One key: one lookup (a range walks down the tree twice, for each of its ends, and
        // allocates the two paths).
        let (one, many) = if range.range_end.is_empty() {
            let k = IndexKey::new(range.key.clone());
            (self.keys.get_key_value(&k), None)
        } else {
            (None, range_bounds(range).map(|b| self.keys.range(b)))
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .map(|(k, h)| (k.bytes(), &**h))
    }

    /// Live pairs in `range` at `rev` (`i64::MAX`: the latest applied, including a write
    /// in progress).
    pub fn live_at<'a>(
        &'a self,
        range: &'a KeyRange,
        rev: i64,
    ) -> impl Iterator<Item = &'a Arc<KeyValue>> + 'a {
        self.histories(range).filter_map(move |(_, h)| h.at(rev))
    }

    /// Checks that `rev` (non-zero) can be read given the readable head `head`.
    pub fn check_read_rev(&self, rev: i64, head: i64) -> Result<()> {
        if rev > head {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: head,
            });
        }
        if rev < self.compact_rev {
            return Err(StoreError::Compacted {
                requested: rev,
                compact_revision: self.compact_rev,
            });
        }
        Ok(())
    }

    /// Events of revisions `from..=to` for keys in `range`, in revision order.
    pub fn events(&self, range: &KeyRange, from: i64, to: i64) -> Result<Vec<Event>> {
        if from < self.compact_rev {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: self.compact_rev,
            });
        }
        if from > to {
            return Ok(Vec::new());
        }
        // Synced path: the ring covers `from`.
        if let Some((front, _)) = self.recent.front() {
            if *front <= from {
                let start = (from - front) as usize;
                let mut out = Vec::new();
                for (rev, evs) in self.recent.iter().skip(start) {
                    if *rev > to {
                        break;
                    }
                    out.extend(
                        evs.iter()
                            .filter(|e| range.contains(&e.kv.key))
                            .map(Recorded::to_event),
                    );
                }
                return Ok(out);
            }
        }
        // Unsynced path: rebuild the events from the key histories.
        let mut out: Vec<(i64, u32, Event)> = Vec::new();
        for (key, hist) in self.histories(range) {
            let start = hist.partition_point(|e| e.rev < from);
            let mut prev = hist.before(start);
            for e in hist.iter_from(start) {
                if e.rev > to {
                    break;
                }
                let p = prev.and_then(|p| p.kv.as_deref().cloned());
                out.push((e.rev, e.sub, make_event(key, e, p)));
                prev = Some(e);
            }
        }
        out.sort_by_key(|(r, s, _)| (*r, *s));
        Ok(out.into_iter().map(|(_, _, e)| e).collect())
    }

    /// Compacts at `rev`: reads and watches before it fail from now on. Key histories are
    /// trimmed afterwards by [`Mvcc::sweep`], a slice at a time, so that compacting a large
    /// state does not hold the state lock for long; the entries it has yet to drop are
    /// invisible (every read is at or after `compact_rev`).
    pub fn compact(&mut self, rev: i64) {
        self.compact_rev = rev;
        while self.recent.front().is_some_and(|(r, _)| *r < rev) {
            self.recent.pop_front();
        }
    }

    /// Trims key histories to what compaction at `compact_rev` keeps: the newest entry at or
    /// below it, unless that is a tombstone, and everything after it; keys left empty are
    /// removed. Visits the keys of [`Mvcc::changed`] up to the compaction point, up to
    /// `max_keys` of them, and takes out up to `max_entries` entries (a key with more is
    /// trimmed in part, and the next call starts at it again). Returns whether there is more
    /// to do and the entries taken out, for the caller to free after releasing the state
    /// lock: freeing millions of them took seconds (compaction of 64 keys with 45k revisions
    /// each).
    pub fn sweep(&mut self, max_keys: usize, max_entries: usize) -> (bool, Garbage) {
        let rev = self.compact_rev;
        let keep_from = |hist: &History| {
            let pos = hist.partition_point(|e| e.rev <= rev);
            let idx = hist.index(pos);
            if hist.before(pos).is_some_and(|e| e.kv.is_some()) {
                idx - 1
            } else {
                idx
            }
        };
        let mut budget = max_entries;
        // Only the histories that change are touched, so that nodes shared with a snapshot
        // still being written are not copied needlessly.
        let mut garbage = Garbage::default();
        for _ in 0..max_keys {
            let Some((at, key)) = self.changed.front() else {
                return (false, garbage);
            };
            if *at > rev {
                return (false, garbage);
            }
            if budget == 0 {
                return (true, garbage);
            }
            let ikey = IndexKey::new(key.clone());
            let n = self.keys.get(&ikey).map_or(0, |h| keep_from(h));
            if n > 0 {
                let take = n.min(budget);
                budget -= take;
                if let Some(hist) = self.keys.get_mut(&ikey) {
                    // A snapshot that shares the history keeps its entries: the copy made
                    // here is of the chunks' pointers and the tail.
                    Arc::make_mut(hist).drop_front(take, &mut garbage);
                    if hist.is_empty() {
                        self.keys.remove(&ikey);
                    }
                }
                if take < n {
                    return (true, garbage);
                }
            }
            self.changed.pop_front();
        }
        let more = self.changed.front().is_some_and(|(at, _)| *at <= rev);
        (more, garbage)
    }

    /// Rebuilds [`Mvcc::changed`] from the histories (after loading a snapshot): every entry
    /// of a history that compaction may shorten, by revision.
    pub fn mark_changed(&mut self) {
        let mut changed: Vec<(i64, Bytes)> = self
            .keys
            .iter()
            .filter(|(_, h)| h.len() > 1 || h.last().is_some_and(|e| e.kv.is_none()))
            .flat_map(|(k, h)| h.iter().map(move |e| (e.rev, k.bytes().clone())))
            .collect();
        changed.sort_by_key(|(rev, _)| *rev);
        self.changed = changed.into();
    }

    /// A copy of the state for a snapshot file: O(leases), the key index is shared.
    pub fn snapshot(&self) -> Snapshot {
        let mut leases: Vec<(i64, i64)> = self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect();
        leases.sort_unstable();
        Snapshot {
            rev: self.rev,
            compact_rev: self.compact_rev,
            leases,
            keys: self.keys.clone(),
        }
    }

    /// Digest of the live state at `rev`.
    pub fn hash_at(&self, rev: i64) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for kv in self.live_at(&KeyRange::all(), rev) {
            h.update(&(kv.key.len() as u64).to_le_bytes());
            h.update(&kv.key);
            for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                h.update(&n.to_le_bytes());
            }
            h.update(&(kv.value.len() as u64).to_le_bytes());
            h.update(&kv.value);
        }
        h.finalize()
    }

    /// Picks an unused lease id. Ids stay below 2^53 so that JSON clients (JavaScript numbers)
    /// keep them exact.
    pub fn new_lease_id(&mut self) -> i64 {
        loop {
            self.lease_counter += 1;
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let id = (((millis << 8) ^ self.lease_counter) & ((1u64 << 53) - 1)) as i64;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Earliest lease deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Replays a logged batch.
    pub fn replay(&mut self, batch: &Batch, now: Instant) -> std::result::Result<(), String> {
        let mut w = Writer::new(self, now);
        for (id, ttl) in &batch.grants {
            if *id <= 0 || *ttl <= 0 {
                return Err(format!("lease grant with invalid id {id} or TTL {ttl}"));
            }
            w.grant(*id, *ttl);
        }
        for c in &batch.changes {
            match c {
                Change::Put { key, value, lease } => {
                    if *lease != 0 && !w.m.leases.contains_key(lease) {
                        return Err(format!("put of a key to unknown lease {lease}"));
                    }
                    w.put(key.clone(), value.clone(), *lease);
                }
                Change::Delete { key } => {
                    w.delete_key(key);
                }
            }
        }
        for id in &batch.revokes {
            w.m.leases.remove(id);
            w.batch.revokes.push(*id);
        }
        if let Some(c) = batch.compact {
            w.compact(c);
            // Nothing else runs during recovery: trim every history at once.
            w.m.sweep(usize::MAX, usize::MAX);
        }
        w.finish();
        if self.rev != batch.rev {
            return Err(format!(
                "batch expected revision {} but replay reached {}",
                batch.rev, self.rev
            ));
        }
        Ok(())
    }
}

/// `now + ttl` seconds, saturating far in the future for absurd TTLs read from disk.
pub(crate) fn deadline(now: Instant, ttl: i64) -> Instant {
    let far = Duration::from_secs(100 * 365 * 86400);
    now.checked_add(Duration::from_secs(ttl.max(0) as u64).min(far))
        .unwrap_or(now)
}

fn make_event(key: &Bytes, e: &Entry, prev: Option<KeyValue>) -> Event {
    match &e.kv {
        Some(kv) => Event {
            kind: EventType::Put,
            kv: (**kv).clone(),
            prev_kv: prev,
        },
        None => Event {
            kind: EventType::Delete,
            kv: tombstone(key, e.rev),
            prev_kv: prev,
        },
    }
}

/// What a delete event carries as its key-value: the key and the revision of the delete.
fn tombstone(key: &Bytes, rev: i64) -> KeyValue {
    KeyValue {
        key: key.clone(),
        mod_revision: rev,
        ..Default::default()
    }
}

/// An event as the ring of recent revisions keeps it: its key-value pairs are the ones the key
/// histories hold, shared, so recording an event costs two reference counts, not copies of
/// four `Bytes` handles (each an atomic count of its own) that are dropped again 8192
/// revisions later. A watcher's [`Event`] is made when it is read.
#[derive(Debug)]
pub(crate) struct Recorded {
    kind: EventType,
    kv: Arc<KeyValue>,
    prev: Option<Arc<KeyValue>>,
}

impl Recorded {
    fn to_event(&self) -> Event {
        Event {
            kind: self.kind,
            kv: (*self.kv).clone(),
            prev_kv: self.prev.as_deref().cloned(),
        }
    }
}

/// Applies one write (all its changes at one revision) and records it as a [`Batch`].
/// Callers validate first: a writer method never fails half-way.
pub(crate) struct Writer<'a> {
    pub m: &'a mut Mvcc,
    pub batch: Batch,
    now: Instant,
    events: Vec<Recorded>,
}

impl<'a> Writer<'a> {
    pub fn new(m: &'a mut Mvcc, now: Instant) -> Self {
        Writer {
            m,
            batch: Batch::default(),
            now,
            events: Vec::new(),
        }
    }

    /// The revision this write's changes get.
    pub fn rev(&self) -> i64 {
        self.m.rev + 1
    }

    /// Puts `key`; returns its previous pair (shared with its history: copy it only if the
    /// caller asked for it).
    pub fn put(&mut self, key: Bytes, value: Bytes, lease: i64) -> Option<Arc<KeyValue>> {
        let rev = self.rev();
        let sub = self.batch.changes.len() as u32;
        // One index lookup for a key that exists (imbl's `entry` takes two: `contains_key`,
        // then `get_mut`), a lookup and an insert for a new one.
        let ikey = IndexKey::new(key.clone());
        let hist = self.m.keys.get_mut(&ikey);
        let prev = hist
            .as_ref()
            .and_then(|h| h.last())
            .and_then(|e| e.kv.clone());
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        let kv = Arc::new(KeyValue {
            key: key.clone(),
            create_revision,
            mod_revision: rev,
            version,
            value: value.clone(),
            lease,
        });
        let entry = Entry {
            rev,
            sub,
            kv: Some(kv.clone()),
        };
        match hist {
            // Copies the history only if a snapshot still shares it.
            Some(h) => {
                Arc::make_mut(h).push(entry);
                self.m.changed.push_back((rev, key.clone()));
            }
            None => {
                let mut h = History::default();
                h.push(entry);
                self.m.keys.insert(ikey, Arc::new(h));
            }
        }
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                if let Some(l) = self.m.leases.get_mut(&p.lease) {
                    l.keys.remove(&key);
                }
            }
        }
        if lease != 0 {
            if let Some(l) = self.m.leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        self.events.push(Recorded {
            kind: EventType::Put,
            kv,
            prev: prev.clone(),
        });
        self.batch.changes.push(Change::Put { key, value, lease });
        prev
    }

    /// Deletes one key if live; returns its previous pair.
    pub fn delete_key(&mut self, key: &Bytes) -> Option<KeyValue> {
        let rev = self.rev();
        let sub = self.batch.changes.len() as u32;
        let hist = self.m.keys.get_mut(&IndexKey::new(key.clone()))?;
        let prev = hist.last()?.kv.clone()?;
        Arc::make_mut(hist).push(Entry { rev, sub, kv: None });
        self.m.changed.push_back((rev, key.clone()));
        if prev.lease != 0 {
            if let Some(l) = self.m.leases.get_mut(&prev.lease) {
                l.keys.remove(key);
            }
        }
        self.events.push(Recorded {
            kind: EventType::Delete,
            kv: Arc::new(tombstone(key, rev)),
            prev: Some(prev.clone()),
        });
        self.batch.changes.push(Change::Delete { key: key.clone() });
        Some((*prev).clone())
    }

    /// Deletes every live key in `range`; returns their previous pairs.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<KeyValue> {
        let keys: Vec<Bytes> = self
            .m
            .live_at(range, i64::MAX)
            .map(|kv| kv.key.clone())
            .collect();
        keys.iter().filter_map(|k| self.delete_key(k)).collect()
    }

    pub fn grant(&mut self, id: i64, ttl: i64) {
        let deadline = deadline(self.now, ttl);
        self.m.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.batch.grants.push((id, ttl));
    }

    /// Deletes the lease's keys and the lease. Returns false if it does not exist.
    pub fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.m.leases.get(&id) else {
            return false;
        };
        let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
        for k in &keys {
            self.delete_key(k);
        }
        self.m.leases.remove(&id);
        self.batch.revokes.push(id);
        true
    }

    pub fn compact(&mut self, rev: i64) {
        self.m.compact(rev);
        self.batch.compact = Some(rev);
    }

    /// Ends the write: bumps the revision if a key changed, records events. Returns the batch to
    /// log, or `None` if nothing needs logging.
    pub fn finish(self) -> Option<Batch> {
        let Writer {
            m,
            mut batch,
            events,
            ..
        } = self;
        if !batch.changes.is_empty() {
            m.rev += 1;
            m.recent.push_back((m.rev, events.into()));
            if m.recent.len() > RECENT_REVISIONS {
                m.recent.pop_front();
            }
        }
        batch.rev = m.rev;
        if batch.is_empty() {
            None
        } else {
            Some(batch)
        }
    }
}
