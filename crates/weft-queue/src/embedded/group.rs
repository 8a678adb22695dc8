//! One consumer group's state in one partition: which offsets are finished, in flight,
//! ready, waiting for a time, or held back behind their key. Pure bookkeeping, no I/O.
//!
//! Invariants: every offset below `floor` is finished; `done` holds the finished offsets at or
//! above it; an offset below `next` that is not finished is in exactly one of `inflight`,
//! `ready`, `timers` or a key's `blocked` queue (and, after a restart, offsets in `timers` may
//! also lie at or above `next`: they are skipped by the scan).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A delivery waiting for its ack.
#[derive(Clone, Debug)]
pub(crate) struct Flight {
    pub consumer: String,
    pub deadline_ms: u64,
}

/// What the scan needs to know of a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub deliver_at_ms: u64,
    pub key: Option<u64>,
}

/// A group's bookkeeping for one partition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct GPart {
    pub floor: u64,
    pub done: BTreeSet<u64>,
    /// Delivery counts of unfinished offsets delivered at least once.
    pub deliveries: HashMap<u64, u32>,
    /// Last errors (a nack's, or "ack wait expired").
    pub errors: HashMap<u64, String>,
    /// Offsets waiting for a time (delay, nack delay): `(due_ms, offset)`, and by offset.
    pub timers: BTreeSet<(u64, u64)>,
    pub timer_of: HashMap<u64, u64>,
    #[serde(skip)]
    pub next: u64,
    #[serde(skip)]
    pub ready: BTreeSet<u64>,
    #[serde(skip)]
    pub inflight: BTreeMap<u64, Flight>,
    #[serde(skip)]
    pub deadlines: BTreeSet<(u64, u64)>,
    /// Ordered groups: the key's unfinished head offset, and the offsets queued behind it.
    #[serde(skip)]
    pub busy: HashMap<u64, u64>,
    #[serde(skip)]
    pub blocked: HashMap<u64, VecDeque<u64>>,
}

impl GPart {
    /// A group part starting at `offset`.
    pub fn new(offset: u64) -> Self {
        GPart {
            floor: offset,
            next: offset,
            ..Default::default()
        }
    }

    /// Whether the offset is finished.
    pub fn is_done(&self, off: u64) -> bool {
        off < self.floor || self.done.contains(&off)
    }

    /// Whether an unfinished offset is tracked (in flight, ready or waiting for a time).
    fn tracked(&self, off: u64) -> bool {
        self.inflight.contains_key(&off)
            || self.ready.contains(&off)
            || self.timer_of.contains_key(&off)
    }

    /// Marks an offset finished (acked, dead-lettered, or dropped by retention). In an ordered
    /// group, returns the key's next offset, now its head, for the caller to
    /// [`GPart::schedule`].
    pub fn finish(&mut self, off: u64, key: Option<u64>) -> Option<u64> {
        if let Some(f) = self.inflight.remove(&off) {
            self.deadlines.remove(&(f.deadline_ms, off));
        }
        self.ready.remove(&off);
        if let Some(due) = self.timer_of.remove(&off) {
            self.timers.remove(&(due, off));
        }
        self.deliveries.remove(&off);
        self.errors.remove(&off);
        if off >= self.floor {
            self.done.insert(off);
        }
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        let key = key?;
        if self.busy.get(&key) != Some(&off) {
            return None;
        }
        match self.blocked.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(next) => {
                self.busy.insert(key, next);
                Some(next)
            }
            None => {
                self.busy.remove(&key);
                self.blocked.remove(&key);
                None
            }
        }
    }

    /// Moves the floor up to `start` (retention dropped what is below).
    pub fn trim(&mut self, start: u64) {
        if start <= self.floor {
            return;
        }
        self.floor = start;
        self.done = self.done.split_off(&start);
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.next = self.next.max(self.floor);
        for off in self
            .ready
            .iter()
            .copied()
            .filter(|o| *o < start)
            .collect::<Vec<_>>()
        {
            self.ready.remove(&off);
        }
        let gone: Vec<(u64, u64)> = self
            .timers
            .iter()
            .copied()
            .filter(|t| t.1 < start)
            .collect();
        for t in gone {
            self.timers.remove(&t);
            self.timer_of.remove(&t.1);
        }
        self.deliveries.retain(|o, _| *o >= start);
        self.errors.retain(|o, _| *o >= start);
    }

    /// Puts an unfinished, untracked offset where it belongs: ready, or waiting for its time.
    pub fn schedule(&mut self, off: u64, due_ms: u64, now_ms: u64) {
        if due_ms > now_ms {
            self.timers.insert((due_ms, off));
            self.timer_of.insert(off, due_ms);
        } else {
            self.ready.insert(off);
        }
    }

    /// Looks at the next never-seen offset below `visible`: returns it if it can be handed
    /// out now; otherwise files it (delayed, or blocked behind its key) and returns `None`.
    /// `Err(())` when there is nothing more to scan.
    pub fn scan_one(
        &mut self,
        visible: u64,
        ordered: bool,
        now_ms: u64,
        head: impl Fn(u64) -> Option<Head>,
    ) -> Result<Option<u64>, ()> {
        if self.next >= visible {
            return Err(());
        }
        let off = self.next;
        self.next += 1;
        if self.is_done(off) {
            return Ok(None);
        }
        let Some(h) = head(off) else {
            return Ok(None);
        };
        if ordered {
            if let Some(k) = h.key {
                match self.busy.get(&k) {
                    Some(&b) if b != off => {
                        if !self.tracked(off) {
                            self.blocked.entry(k).or_default().push_back(off);
                        }
                        return Ok(None);
                    }
                    _ => {
                        self.busy.insert(k, off);
                    }
                }
            }
        }
        if self.tracked(off) {
            return Ok(None);
        }
        if h.deliver_at_ms > now_ms {
            self.schedule(off, h.deliver_at_ms, now_ms);
            return Ok(None);
        }
        Ok(Some(off))
    }

    /// Takes the lowest ready offset.
    pub fn take_ready(&mut self) -> Option<u64> {
        self.ready.pop_first()
    }

    /// Moves every timer due by `now_ms` to ready.
    pub fn due_timers(&mut self, now_ms: u64) {
        while let Some(&(due, off)) = self.timers.first() {
            if due > now_ms {
                break;
            }
            self.timers.pop_first();
            self.timer_of.remove(&off);
            self.ready.insert(off);
        }
    }

    /// Removes and returns the deliveries whose ack wait ended by `now_ms`.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(u64, Flight)> {
        let mut out = Vec::new();
        while let Some(&(dl, off)) = self.deadlines.first() {
            if dl > now_ms {
                break;
            }
            self.deadlines.pop_first();
            if let Some(f) = self.inflight.remove(&off) {
                out.push((off, f));
            }
        }
        out
    }

    /// Records a delivery of `off` to `consumer`.
    pub fn deliver(&mut self, off: u64, consumer: &str, deadline_ms: u64) -> u32 {
        let n = self.deliveries.entry(off).or_insert(0);
        *n += 1;
        let delivery = *n;
        self.deadlines.insert((deadline_ms, off));
        self.inflight.insert(
            off,
            Flight {
                consumer: consumer.to_string(),
                deadline_ms,
            },
        );
        delivery
    }

    /// The earliest time something changes by itself (a timer or an ack deadline).
    pub fn next_due(&self) -> Option<u64> {
        let t = self.timers.first().map(|t| t.0);
        let d = self.deadlines.first().map(|d| d.0);
        match (t, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Makes a finished offset unfinished again (a replayed dead letter), ready now.
    pub fn reopen(&mut self, off: u64) {
        if off < self.floor {
            for o in off + 1..self.floor {
                self.done.insert(o);
            }
            self.floor = off;
        } else {
            self.done.remove(&off);
        }
        self.deliveries.remove(&off);
        if off < self.next {
            self.ready.insert(off);
        }
    }

    /// Unfinished offsets in `start..visible`.
    pub fn lag(&self, start: u64, visible: u64) -> u64 {
        let lo = self.floor.max(start);
        if lo >= visible {
            return 0;
        }
        (visible - lo) - self.done.range(lo..visible).count() as u64
    }

    /// The lowest unfinished offset at or above `start`.
    pub fn first_unfinished(&self, start: u64, visible: u64) -> Option<u64> {
        let mut o = self.floor.max(start);
        while o < visible {
            if !self.done.contains(&o) {
                return Some(o);
            }
            o += 1;
        }
        None
    }

    /// After a restart: nothing is in flight or scanned; scanning starts again at the floor.
    pub fn restarted(&mut self) {
        self.next = self.floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: Option<u64>) -> impl Fn(u64) -> Option<Head> {
        move |_| {
            Some(Head {
                deliver_at_ms: 0,
                key,
            })
        }
    }

    #[test]
    fn the_floor_moves_over_finished_offsets_in_any_order() {
        let mut g = GPart::new(0);
        for o in [2, 0, 3] {
            g.finish(o, None);
        }
        assert_eq!(g.floor, 1);
        assert_eq!(g.lag(0, 5), 2);
        g.finish(1, None);
        assert_eq!((g.floor, g.done.len()), (4, 0));
        assert_eq!(g.first_unfinished(0, 5), Some(4));
    }

    #[test]
    fn an_ordered_group_holds_a_key_behind_its_unfinished_head() {
        let mut g = GPart::new(0);
        let k = head(Some(7));
        assert_eq!(g.scan_one(3, true, 0, &k), Ok(Some(0)));
        g.deliver(0, "c", 100);
        assert_eq!(g.scan_one(3, true, 0, &k), Ok(None), "blocked behind 0");
        assert_eq!(
            g.scan_one(3, true, 0, head(Some(8))),
            Ok(Some(2)),
            "another key is not held up"
        );
        assert_eq!(g.scan_one(3, true, 0, &k), Err(()));
        // The head expires: it is the key's head still, and 1 stays blocked.
        let exp = g.expired(100);
        assert_eq!(exp.len(), 1);
        g.schedule(0, 0, 100);
        assert_eq!(g.take_ready(), Some(0));
        assert_eq!(g.finish(0, Some(7)), Some(1), "1 is the key's head now");
        assert_eq!(g.busy.get(&7), Some(&1));
        assert_eq!(g.finish(1, Some(7)), None);
        assert_eq!(g.busy.get(&7), None, "key 7 has nothing unfinished");
    }

    #[test]
    fn reopening_below_the_floor_keeps_the_rest_finished() {
        let mut g = GPart::new(0);
        for o in 0..5 {
            g.next = 5;
            g.finish(o, None);
        }
        g.reopen(2);
        assert_eq!(g.floor, 2);
        assert_eq!(g.lag(0, 5), 1);
        assert_eq!(g.take_ready(), Some(2));
    }

    #[test]
    fn trimming_drops_what_retention_removed() {
        let mut g = GPart::new(0);
        g.next = 10;
        g.schedule(3, 50, 0);
        g.schedule(4, 0, 0);
        g.finish(8, None);
        g.trim(6);
        assert_eq!(g.floor, 6);
        assert!(g.timers.is_empty() && g.ready.is_empty());
        assert_eq!(g.lag(6, 10), 3);
    }
}
