//! Which watchers a flush concerns.
//!
//! Each watcher registers the key range it watches. When the flusher publishes a flush, it
//! wakes only the watchers whose range holds a key the flush changed (single-key watchers
//! through a map from key to watchers, range watchers by a scan), and records for each the
//! first revision that concerns it. Before, every watcher waited on the store's
//! visible-revision channel, so every flush woke every watcher's task to find, most of the
//! time, nothing for it: with 64 clients contending for one lock (each waiter watching one
//! key), the watcher tasks' wake-ups and event scans were a third of the server's CPU.
//!
//! The protocol (`Log::publish` and the watcher loop in `embedded/mod.rs`): under the hub's
//! lock, the flusher marks the changed keys with their revisions and makes those revisions
//! visible ([`Hub::publish`]), then notifies the marked watchers; under the same lock, a
//! watcher reads the visible revision `vis` and takes the first revision that changed its
//! range since it last asked ([`Registration::take`]). So no change up to `vis` is missing,
//! and none after it is taken early. A watcher scans only from the first revision that
//! concerns it: revisions it was not woken for are never scanned, and their compaction cannot
//! fail it. No wake-up is lost: [`Notify::notify_one`] leaves a permit when the watcher is not
//! waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::types::KeyRange;

/// No change recorded.
const NONE: i64 = i64::MAX;

/// What the hub shares with one watcher.
pub(crate) struct Slot {
    /// The first revision that changed the watcher's range and that it has not taken yet.
    first: AtomicI64,
    notify: Arc<Notify>,
}

impl Slot {
    /// Wakes the watcher (once, however many times it is called before it waits).
    pub fn notify(&self) {
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct Watchers {
    next_id: u64,
    /// Watchers of one key, by key.
    single: HashMap<Bytes, Vec<(u64, Arc<Slot>)>>,
    /// Watchers of a range or prefix.
    ranges: Vec<(u64, KeyRange, Arc<Slot>)>,
}

/// The registry of watchers (see the module docs).
#[derive(Default)]
pub(crate) struct Hub {
    w: Mutex<Watchers>,
}

/// A watcher's registration: its changes and wake-ups, and its removal from the hub when
/// dropped.
pub(crate) struct Registration {
    hub: Arc<Hub>,
    id: u64,
    range: KeyRange,
    slot: Arc<Slot>,
}

impl Registration {
    /// Resolves at the next flush that changed a key in the range (at once if one was
    /// published since the last call returned).
    pub fn changed(&self) -> tokio::sync::futures::OwnedNotified {
        self.slot.notify.clone().notified_owned()
    }

    /// Reads the visible revision with `visible` and returns it with the first revision that
    /// changed the range since the last call (`vis + 1` if none did).
    pub fn take(&self, visible: impl FnOnce() -> i64) -> (i64, i64) {
        let _w = self.hub.w.lock().unwrap_or_else(|e| e.into_inner());
        let vis = visible();
        let first = self.slot.first.swap(NONE, Ordering::SeqCst);
        (vis, first.min(vis + 1))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut w = self.hub.w.lock().unwrap_or_else(|e| e.into_inner());
        if self.range.is_single() {
            if let Some(list) = w.single.get_mut(&self.range.key) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    w.single.remove(&self.range.key);
                }
            }
        } else {
            w.ranges.retain(|(id, _, _)| *id != self.id);
        }
    }
}

impl Hub {
    /// Registers a watcher of `range`. Changes published from now on are recorded for it.
    pub fn register(self: &Arc<Self>, range: KeyRange) -> Registration {
        let slot = Arc::new(Slot {
            first: AtomicI64::new(NONE),
            notify: Arc::new(Notify::new()),
        });
        let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        w.next_id += 1;
        let id = w.next_id;
        if range.is_single() {
            w.single
                .entry(range.key.clone())
                .or_default()
                .push((id, slot.clone()));
        } else {
            w.ranges.push((id, range.clone(), slot.clone()));
        }
        drop(w);
        Registration {
            hub: self.clone(),
            id,
            range,
            slot,
        }
    }

    /// Records the changes `(key, revision)` of a flush for the watchers they concern and, under
    /// the same lock, makes them visible with `publish`; returns those watchers, to be
    /// notified after.
    pub fn publish(&self, changes: &[(Bytes, i64)], publish: impl FnOnce()) -> Vec<Arc<Slot>> {
        let mut woken: Vec<Arc<Slot>> = Vec::new();
        let w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        let mut mark = |slot: &Arc<Slot>, rev: i64| {
            // Only the first change for a watcher matters: it scans everything after it. A
            // watcher marked already (by this flush, or by an earlier one it has not taken
            // yet) has its wake-up already.
            if slot.first.fetch_min(rev, Ordering::SeqCst) == NONE {
                woken.push(slot.clone());
            }
        };
        if !w.single.is_empty() {
            for (k, rev) in changes {
                if let Some(list) = w.single.get(k) {
                    for (_, slot) in list {
                        mark(slot, *rev);
                    }
                }
            }
        }
        if !changes.is_empty() {
            for (_, range, slot) in &w.ranges {
                if let Some((_, rev)) = changes.iter().find(|(k, _)| range.contains(k)) {
                    mark(slot, *rev);
                }
            }
        }
        publish();
        drop(w);
        woken
    }

    /// How many watchers are registered.
    pub fn len(&self) -> usize {
        let w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        w.single.values().map(Vec::len).sum::<usize>() + w.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(r: &Registration) -> bool {
        tokio::time::timeout(Duration::from_millis(50), r.changed())
            .await
            .is_ok()
    }

    fn publish(hub: &Hub, vis: &AtomicI64, changes: &[(&'static str, i64)]) {
        let changes: Vec<(Bytes, i64)> =
            changes.iter().map(|(k, r)| (Bytes::from(*k), *r)).collect();
        let last = changes.iter().map(|(_, r)| *r).max().unwrap_or(0);
        for s in hub.publish(&changes, || {
            vis.fetch_max(last, Ordering::SeqCst);
        }) {
            s.notify();
        }
    }

    #[tokio::test]
    async fn only_the_watchers_of_changed_keys_are_woken_with_their_first_revision() {
        let hub = Arc::new(Hub::default());
        let vis = AtomicI64::new(4);
        let now = || vis.load(Ordering::SeqCst);
        let a = hub.register(KeyRange::key("a"));
        let a2 = hub.register(KeyRange::key("a"));
        let b = hub.register(KeyRange::key("b"));
        let p = hub.register(KeyRange::prefix("x/"));
        let all = hub.register(KeyRange::all());
        publish(&hub, &vis, &[("a", 5), ("x/1", 6), ("a", 7)]);
        assert!(woken(&a).await && woken(&a2).await && woken(&p).await && woken(&all).await);
        assert!(!woken(&b).await, "b did not change");
        assert_eq!(a.take(now), (7, 5));
        assert_eq!(a.take(now), (7, 8), "taken: nothing new up to 7");
        assert_eq!(p.take(now), (7, 6));
        assert_eq!(all.take(now), (7, 5));
        assert_eq!(b.take(now), (7, 8));
        // Two flushes before the wait: one wake-up, and the first of their revisions.
        publish(&hub, &vis, &[("b", 8)]);
        publish(&hub, &vis, &[("b", 9)]);
        assert!(woken(&b).await);
        assert!(
            !woken(&b).await,
            "two flushes before the wait leave one wake-up"
        );
        assert_eq!(b.take(now), (9, 8));
        // a2 had not taken its first change: a later one does not replace it.
        publish(&hub, &vis, &[("a", 10)]);
        assert_eq!(a2.take(now), (10, 5));
        assert_eq!(a.take(now), (10, 10));
        // Dropped registrations leave the hub.
        assert_eq!(hub.len(), 5);
        drop((a, a2, p));
        assert_eq!(hub.len(), 2);
        drop((b, all));
        assert_eq!(hub.len(), 0);
        assert!(hub.w.lock().unwrap().single.is_empty());
    }
}
