//! Sliding windows of call outcomes: by call count, or by time in buckets.

use tokio::time::{Duration, Instant};

/// Totals over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Calls counted.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl Snapshot {
    /// Failure rate in percent (0 with no calls).
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 * 100.0 / self.calls as f64
        }
    }
    /// Slow-call rate in percent (0 with no calls).
    pub fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f64 * 100.0 / self.calls as f64
        }
    }
}

const FAIL: u8 = 1;
const SLOW: u8 = 2;

/// The last `size` outcomes.
#[derive(Debug, Clone)]
pub struct CountWindow {
    ring: Vec<u8>,
    head: usize,
    len: usize,
    totals: Snapshot,
}

impl CountWindow {
    /// A window of `size` calls (`size > 0`).
    pub fn new(size: u32) -> Self {
        CountWindow {
            ring: vec![0; size as usize],
            head: 0,
            len: 0,
            totals: Snapshot::default(),
        }
    }

    /// Records one call.
    pub fn record(&mut self, failure: bool, slow: bool) {
        let cap = self.ring.len();
        if self.len == cap {
            let old = self.ring[self.head];
            self.totals.calls -= 1;
            self.totals.failures -= u32::from(old & FAIL != 0);
            self.totals.slow -= u32::from(old & SLOW != 0);
        } else {
            self.len += 1;
        }
        self.ring[self.head] = (FAIL * u8::from(failure)) | (SLOW * u8::from(slow));
        self.head = (self.head + 1) % cap;
        self.totals.calls += 1;
        self.totals.failures += u32::from(failure);
        self.totals.slow += u32::from(slow);
    }

    /// Current totals.
    pub fn snapshot(&self) -> Snapshot {
        self.totals
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.head = 0;
        self.len = 0;
        self.totals = Snapshot::default();
    }
}

/// A lock-free count window for the closed-state hot path: each record claims the next slot
/// with one `fetch_add` and adjusts the totals by the difference to the slot's old outcome.
/// Concurrent records never share a slot unless more than `size` are in flight at once.
#[derive(Debug)]
pub struct AtomicCountWindow {
    slots: Box<[std::sync::atomic::AtomicU8]>,
    /// Records ever made (never reset: it doubles as the breaker's total of window calls).
    next: std::sync::atomic::AtomicU64,
    /// `next` at the last reset: the window holds the records after it.
    base: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicI64,
    slow: std::sync::atomic::AtomicI64,
}

impl AtomicCountWindow {
    /// A window of `size` calls (`size > 0`).
    pub fn new(size: u32) -> Self {
        use std::sync::atomic::*;
        AtomicCountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            base: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// Records one call; returns its sequence number and the totals after it.
    #[inline]
    pub fn record(&self, failure: bool, slow: bool) -> (u64, Snapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        let cap = self.slots.len() as u64;
        let i = self.next.fetch_add(1, Relaxed);
        let new = (FAIL * u8::from(failure)) | (SLOW * u8::from(slow));
        // The slot is ours alone (the sequence number is unique) unless more than `size`
        // records are in flight at once, so a plain load and store suffice.
        let slot = &self.slots[(i % cap) as usize];
        let old = slot.load(Relaxed);
        slot.store(new, Relaxed);
        let df = i64::from(new & FAIL) - i64::from(old & FAIL);
        let failures = if df != 0 {
            self.failures.fetch_add(df, Relaxed) + df
        } else {
            self.failures.load(Relaxed)
        };
        let ds = i64::from((new & SLOW) >> 1) - i64::from((old & SLOW) >> 1);
        let slow = if ds != 0 {
            self.slow.fetch_add(ds, Relaxed) + ds
        } else {
            self.slow.load(Relaxed)
        };
        let snap = Snapshot {
            calls: (i + 1).saturating_sub(self.base.load(Relaxed)).min(cap) as u32,
            failures: failures.max(0) as u32,
            slow: slow.max(0) as u32,
        };
        (i, snap)
    }

    /// Records made since the window was built (resets do not clear it).
    pub fn recorded(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Current totals.
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let cap = self.slots.len() as u64;
        Snapshot {
            calls: self
                .next
                .load(Relaxed)
                .saturating_sub(self.base.load(Relaxed))
                .min(cap) as u32,
            failures: self.failures.load(Relaxed).max(0) as u32,
            slow: self.slow.load(Relaxed).max(0) as u32,
        }
    }

    /// Forgets everything (racing records may leave a small error until they leave the window).
    pub fn reset(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for s in self.slots.iter() {
            s.store(0, Relaxed);
        }
        self.base.store(self.next.load(Relaxed), Relaxed);
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    totals: Snapshot,
}

/// Outcomes of the last `window`, in `buckets` buckets (a bucket's calls leave the window
/// together when it is reused).
#[derive(Debug, Clone)]
pub struct TimeWindow {
    origin: Instant,
    bucket_len: Duration,
    buckets: Vec<Bucket>,
    totals: Snapshot,
}

impl TimeWindow {
    /// A window of `window` split into `buckets` (both non-zero).
    pub fn new(window: Duration, buckets: u32, now: Instant) -> Self {
        TimeWindow {
            origin: now,
            bucket_len: window / buckets,
            buckets: vec![Bucket::default(); buckets as usize],
            totals: Snapshot::default(),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_len.as_nanos().max(1))
            as u64
            + 1
    }

    /// Drops buckets that fell out of the window at `now`.
    fn expire(&mut self, now: Instant) {
        let cur = self.epoch(now);
        let n = self.buckets.len() as u64;
        for b in &mut self.buckets {
            if b.epoch != 0 && b.epoch + n <= cur {
                self.totals.calls -= b.totals.calls;
                self.totals.failures -= b.totals.failures;
                self.totals.slow -= b.totals.slow;
                *b = Bucket::default();
            }
        }
    }

    /// Records one call at `now`.
    pub fn record(&mut self, failure: bool, slow: bool, now: Instant) {
        self.expire(now);
        let cur = self.epoch(now);
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(cur % n) as usize];
        if b.epoch != cur {
            // Reused slot: expire() already removed its old totals.
            *b = Bucket {
                epoch: cur,
                totals: Snapshot::default(),
            };
        }
        b.totals.calls += 1;
        b.totals.failures += u32::from(failure);
        b.totals.slow += u32::from(slow);
        self.totals.calls += 1;
        self.totals.failures += u32::from(failure);
        self.totals.slow += u32::from(slow);
    }

    /// Totals at `now`.
    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        self.expire(now);
        self.totals
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
        self.totals = Snapshot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The lock-free count window agrees with the plain one.
        #[test]
        fn atomic_count_window_matches_the_plain_one(size in 1u32..50, calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300)) {
            let mut plain = CountWindow::new(size);
            let atomic = AtomicCountWindow::new(size);
            for (f, s) in calls {
                plain.record(f, s);
                prop_assert_eq!(atomic.record(f, s).1, plain.snapshot());
            }
        }

        /// The count window's totals equal a naive recount of the last `size` outcomes.
        #[test]
        fn count_window_matches_a_naive_model(size in 1u32..50, calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300)) {
            let mut w = CountWindow::new(size);
            for (i, (f, s)) in calls.iter().enumerate() {
                w.record(*f, *s);
                let start = (i + 1).saturating_sub(size as usize);
                let last = &calls[start..=i];
                let want = Snapshot {
                    calls: last.len() as u32,
                    failures: last.iter().filter(|c| c.0).count() as u32,
                    slow: last.iter().filter(|c| c.1).count() as u32,
                };
                prop_assert_eq!(w.snapshot(), want);
            }
        }

        /// The time window's totals equal a recount of the calls in the buckets that overlap
        /// the window.
        #[test]
        fn time_window_matches_a_naive_model(
            buckets in 1u32..10,
            steps in proptest::collection::vec((0u64..400, any::<bool>(), any::<bool>()), 0..200),
        ) {
            let origin = Instant::now();
            let bucket = Duration::from_millis(100);
            let window = bucket * buckets;
            let mut w = TimeWindow::new(window, buckets, origin);
            let mut t = 0u64;
            let mut log: Vec<(u64, bool, bool)> = Vec::new();
            for (dt, f, s) in steps {
                t += dt;
                let now = origin + Duration::from_millis(t);
                w.record(f, s, now);
                log.push((t, f, s));
                let cur = t / bucket.as_millis() as u64;
                let live: Vec<_> = log.iter().filter(|(at, _, _)| at / bucket.as_millis() as u64 + buckets as u64 > cur).collect();
                let want = Snapshot {
                    calls: live.len() as u32,
                    failures: live.iter().filter(|c| c.1).count() as u32,
                    slow: live.iter().filter(|c| c.2).count() as u32,
                };
                prop_assert_eq!(w.snapshot(now), want);
            }
        }
    }
}
