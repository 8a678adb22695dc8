//! Flushes deferred to the end of a thread's burst of work.
//!
//! By default a write wakes the log thread, which writes the queued records and wakes the
//! writers back. A thread that serves many writers in a loop (the etcd API's connection
//! thread, a single-threaded runtime) can instead flush what it queued itself once it has
//! nothing else to run: [`defer_flushes`] marks the thread, the store then leaves its writes
//! queued and records which stores have some ([`register`]), and [`flush_deferred`], called
//! before the thread parks (`tokio::runtime::Builder::on_thread_park`), writes them. Every
//! request the thread had read joins the same durable write, and no other thread has to be
//! woken, scheduled and wake it back (docs/benchmarks.md, seventeenth run). A thread that
//! stays busy never parks, so [`deferred_flusher`], a task on the same runtime, also flushes
//! once the tasks that were ready at the first deferred write have run.

use std::cell::RefCell;
use std::sync::Arc;

use tokio::sync::Notify;

use super::wal::Log;

/// A deferring thread's state.
struct Pending {
    /// The logs this thread left records in since its last flush.
    logs: Vec<Arc<Log>>,
    /// Notified at the first of those records: wakes [`deferred_flusher`].
    first: Arc<Notify>,
}

thread_local! {
    /// `None` unless this thread defers its flushes.
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Makes the calling thread flush its writes itself, in [`flush_deferred`]. A thread that
/// calls this must run [`deferred_flusher`] on its runtime, and should call
/// [`flush_deferred`] whenever it is about to block: a current-thread tokio runtime built
/// with `.on_thread_park(weft_store::embedded::flush_deferred)`, running
/// `deferred_flusher()` as a task, does both.
pub fn defer_flushes() {
    PENDING.with(|p| {
        p.borrow_mut().get_or_insert_with(|| Pending {
            logs: Vec::new(),
            first: Arc::new(Notify::new()),
        });
    });
}

/// Runs forever on the runtime of a thread that defers its flushes (see [`defer_flushes`]),
/// which must have called `defer_flushes` before: flushes after the first deferred write,
/// once the tasks queued before it have run, unless the thread parked (and flushed) first.
/// Returns at once on a thread that does not defer.
pub async fn deferred_flusher() {
    let Some(first) = PENDING.with(|p| p.borrow().as_ref().map(|p| p.first.clone())) else {
        return;
    };
    loop {
        first.notified().await;
        flush_deferred();
    }
}

/// Writes and publishes the records the calling thread's writes left queued (see
/// [`defer_flushes`]); blocks for the durable write. Does nothing on a thread that does not
/// defer, or when nothing is queued. Waiters on the same thread are woken (scheduled) by it.
pub fn flush_deferred() {
    let logs = PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(p) if !p.logs.is_empty() => std::mem::take(&mut p.logs),
        _ => Vec::new(),
    });
    for log in logs {
        log.flush_now();
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
