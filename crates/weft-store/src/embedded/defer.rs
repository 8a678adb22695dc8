//! Durable writes made by the thread that wrote, at the end of its burst of work.
//!
//! By default a write wakes the log thread, which writes the queued records and wakes the
//! writers back. A thread that serves many writers in a loop (the etcd API's connection
//! thread, a single-threaded runtime) can instead make the durable write itself once it has
//! handled everything it had read: [`defer_flushes`] marks the thread, the store then leaves
//! its writes queued without waking the log thread and notes which stores have some
//! ([`register`]), and [`flush_deferred`], called before the thread parks
//! (`tokio::runtime::Builder::on_thread_park`) and by the task `defer_flushes` returns (for a
//! thread that stays busy and never parks), writes them. Every request the thread had read
//! joins one durable write, and no other thread has to be woken, scheduled, and wake the
//! writers back: with 64 clients on 2 cores, 14–31 % more puts a second than through the
//! log thread (docs/runs/etcd-api.md, "the connection thread writes its own group").
//!
//! The thread blocks while the disk writes, so it serves nothing else meanwhile, reads
//! included (and when a group is the one that starts a new log because a snapshot is due,
//! while the new log file is created too). A small group does not pay for that: a batch of fewer than `min_batch` records
//! goes to the log thread as any other writer's, and the thread goes on serving (a lock
//! handed from client to client, one write at a time, lost 19–37 % of its hand-offs with
//! every batch written inline, and stayed within noise with batches of 8 or more).

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

use super::wal::Log;

/// A deferring thread's state.
struct Pending {
    /// The logs this thread left records in since its last flush.
    logs: Vec<Arc<Log>>,
    /// Notified at the first of those records: wakes the task `defer_flushes` returned.
    first: Arc<Notify>,
    /// The smallest batch this thread writes itself.
    min_batch: usize,
}

thread_local! {
    /// `None` unless this thread defers its flushes.
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Makes the calling thread write its writes' log records itself, in batches of at least
/// `min_batch` records (smaller ones go to the log thread; see the module docs). Call it on a
/// current-thread tokio runtime built with
/// `.on_thread_park(weft_store::embedded::flush_deferred)`, and spawn the task it returns on
/// that runtime: without it, a thread that never parks would never flush.
pub fn defer_flushes(min_batch: usize) -> impl Future<Output = ()> {
    let first = Arc::new(Notify::new());
    PENDING.with(|p| {
        *p.borrow_mut() = Some(Pending {
            logs: Vec::new(),
            first: first.clone(),
            min_batch: min_batch.max(1),
        })
    });
    async move {
        loop {
            // Woken at the first deferred write: this task is queued behind the tasks
            // ready then, which may add theirs, unless the thread parks (and flushes) first.
            first.notified().await;
            flush_deferred();
        }
    }
}

/// Writes (or hands to the log thread, if fewer than the thread's `min_batch`) the records
/// the calling thread's writes left queued; blocks for the durable write. Does nothing on a
/// thread that does not defer, or when nothing is queued. Writers on the same thread are
/// woken (scheduled) by it.
pub fn flush_deferred() {
    let (logs, min_batch) = PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(p) if !p.logs.is_empty() => (std::mem::take(&mut p.logs), p.min_batch),
        _ => (Vec::new(), 0),
    });
    for log in logs {
        log.flush_from_writer(min_batch);
    }
}

impl Drop for Pending {
    /// The thread is ending: what its writes left queued is written now rather than at the
    /// next writer's flush.
    fn drop(&mut self) {
        for log in std::mem::take(&mut self.logs) {
            log.flush_from_writer(1);
        }
    }
}

/// Whether the calling thread defers its flushes.
pub(crate) fn enabled() -> bool {
    PENDING.with(|p| p.borrow().is_some())
}

/// Notes that the calling thread left records in `log` for [`flush_deferred`].
pub(crate) fn register(log: &Arc<Log>) {
    PENDING.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            if p.logs.is_empty() {
                p.first.notify_one();
            }
            if !p.logs.iter().any(|l| Arc::ptr_eq(l, log)) {
                p.logs.push(log.clone());
            }
        }
    });
}
