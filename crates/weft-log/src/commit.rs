//! Group commit: many writers append records, one thread writes and syncs them together, and
//! each writer is told once the write that covers its record is durable.
//!
//! A writer encodes its records straight into the shared buffer ([`Committer::append`], under
//! the writer's own lock if its log order must be its apply order) and gets the log position
//! its records end at. The log thread takes the whole buffer, hands it to the [`Sink`] (which
//! writes it and makes it durable), then publishes the new durable position: first to the
//! sink's owner ([`Sink::durable`], which makes the records visible), then to every writer
//! waiting for a position up to it ([`Committer::wait`]). A failed write stops the log: every
//! waiter and every later append gets the error, and nothing is reported durable that is not.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// The longest a lazy record ([`Committer::append_lazy`]) waits for a group to carry it.
pub const LAZY_WAIT: Duration = Duration::from_millis(200);

/// Where the log thread writes: one call per group.
pub trait Sink: Send + 'static {
    /// Writes `data` (whole records, starting at log position `at`) and makes them durable
    /// unless the log runs without syncing.
    fn write(&mut self, at: u64, data: &[u8]) -> io::Result<()>;
    /// Called on the log thread after every durable write, before the waiting writers are
    /// woken: everything before log position `end` is durable.
    fn durable(&mut self, end: u64);
}

/// Why a record is not durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// The log failed to write (the message says what and where) and accepts nothing more.
    Failed(String),
    /// The log was shut down before the record was written.
    Stopped,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Failed(m) => write!(f, "the log cannot be written: {m}"),
            CommitError::Stopped => f.write_str("the log was shut down"),
        }
    }
}

impl std::error::Error for CommitError {}

/// What the log thread has made durable.
#[derive(Clone, Debug, Default)]
struct Durable {
    end: u64,
    failed: Option<String>,
}

struct Queue {
    /// Records not yet taken by the log thread, starting at log position `start`.
    buf: Vec<u8>,
    start: u64,
    shutdown: bool,
    /// The log thread waits for records.
    idle: bool,
    /// The buffer holds records someone waits for (not only lazy ones).
    urgent: bool,
    /// Set when the log failed: no more appends.
    failed: Option<String>,
}

struct Inner {
    q: Mutex<Queue>,
    cv: Condvar,
    durable: watch::Sender<Durable>,
    waiters: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
    writes: AtomicU64,
    /// The end of the latest urgent append: every position up to it is in a group the log
    /// thread writes without waiting (see [`Committer::wait`]).
    urgent_end: AtomicU64,
    delay: Duration,
}

/// The handle writers use; cloning it is cheap. The log thread runs until
/// [`Committer::shutdown`] (it drains the queue first) or until every handle is dropped.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
}

impl Committer {
    /// Starts the log thread named `name`, writing to `sink` from log position `end` on.
    /// `delay` (zero for none) is how long the thread waits, when writers are concurrent, for
    /// more records to join a group.
    pub fn start(
        name: &str,
        end: u64,
        sink: impl Sink,
        delay: Duration,
    ) -> io::Result<(Committer, std::thread::JoinHandle<()>)> {
        let inner = Arc::new(Inner {
            q: Mutex::new(Queue {
                buf: Vec::with_capacity(1 << 20),
                start: end,
                shutdown: false,
                idle: false,
                urgent: false,
                failed: None,
            }),
            cv: Condvar::new(),
            durable: watch::channel(Durable { end, failed: None }).0,
            waiters: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
            urgent_end: AtomicU64::new(end),
            delay,
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Err(e) = crate::sched::batch_policy_for_this_thread() {
                    tracing::debug!("log thread keeps the default scheduling policy: {e}");
                }
                run(weak, sink)
            })?;
        Ok((Committer { inner }, handle))
    }

    /// Appends records: `encode` writes them at the end of the buffer it is given (framed,
    /// see [`crate::begin_record`]). Returns their log positions `(start, end)`: `end` is
    /// what to [`Committer::wait`] for. Fails once the log has failed or was shut down.
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(u64, u64), CommitError> {
        self.append_with(encode, true)
    }

    /// Like [`Committer::append`], for records nobody waits for (bookkeeping such as a
    /// delivery count): they do not wake the log thread, but ride along with the next group,
    /// or are written within [`LAZY_WAIT`] when no other record comes. Log order is kept: a
    /// record appended after them is durable only with them. Waiting for their position
    /// makes them urgent.
    pub fn append_lazy(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(u64, u64), CommitError> {
        self.append_with(encode, false)
    }

    fn append_with(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        urgent: bool,
    ) -> Result<(u64, u64), CommitError> {
        let mut q = self.inner.q.lock().expect("log queue poisoned");
        if let Some(f) = &q.failed {
            return Err(CommitError::Failed(f.clone()));
        }
        if q.shutdown {
            return Err(CommitError::Stopped);
        }
        let before = q.buf.len();
        encode(&mut q.buf);
        let start = q.start + before as u64;
        let end = q.start + q.buf.len() as u64;
        let wake = urgent && std::mem::replace(&mut q.idle, false);
        if urgent {
            q.urgent = true;
            self.inner.urgent_end.store(end, Ordering::Relaxed);
        }
        drop(q);
        if wake {
            self.inner.cv.notify_one();
        }
        Ok((start, end))
    }

    /// Makes whatever the buffer holds urgent (someone waits for it).
    fn hurry(&self) {
        let mut q = self.inner.q.lock().expect("log queue poisoned");
        if !q.urgent && !q.buf.is_empty() {
            q.urgent = true;
            if std::mem::replace(&mut q.idle, false) {
                drop(q);
                self.inner.cv.notify_one();
            }
        }
    }

    /// The log position everything before which is durable.
    pub fn durable_end(&self) -> u64 {
        self.inner.durable.borrow().end
    }

    /// How many writes (groups) the log thread has made.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Waits until everything before log position `end` is durable.
    pub async fn wait(&self, end: u64) -> Result<(), CommitError> {
        let rx = {
            let mut w = self.inner.waiters.lock().expect("log waiters poisoned");
            let d = self.inner.durable.borrow();
            if d.end >= end {
                return Ok(());
            }
            if let Some(f) = &d.failed {
                return Err(CommitError::Failed(f.clone()));
            }
            drop(d);
            let (tx, rx) = oneshot::channel();
            w.push((end, tx));
            rx
        };
        // Only a lazy record nothing urgent followed needs waking the log thread for; the
        // usual waiter (its own urgent append) takes no lock here.
        if self.inner.urgent_end.load(Ordering::Relaxed) < end {
            self.hurry();
        }
        match rx.await {
            Ok(()) => Ok(()),
            Err(_) => match &self.inner.durable.borrow().failed {
                Some(f) => Err(CommitError::Failed(f.clone())),
                None => Err(CommitError::Stopped),
            },
        }
    }

    /// Asks the log thread to write what is queued and stop.
    pub fn shutdown(&self) {
        self.inner.q.lock().expect("log queue poisoned").shutdown = true;
        self.inner.cv.notify_one();
    }
}

/// The log thread's body.
fn run(inner: std::sync::Weak<Inner>, mut sink: impl Sink) {
    let mut spare = Vec::with_capacity(1 << 20);
    let mut last_group = 0usize;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let (at, data) = {
            let mut q = me.q.lock().expect("log queue poisoned");
            while (!q.urgent || q.buf.is_empty()) && !q.shutdown {
                q.idle = true;
                // Wake up now and then to notice that every handle is gone, and to write lazy
                // records that nothing else carried.
                let (g, t) = me
                    .cv
                    .wait_timeout(q, LAZY_WAIT)
                    .expect("log queue poisoned");
                q = g;
                q.idle = false;
                if Arc::strong_count(&me) == 1 {
                    return;
                }
                if t.timed_out() && !q.buf.is_empty() {
                    break;
                }
            }
            if !me.delay.is_zero() && !q.shutdown && last_group >= 2 {
                drop(q);
                std::thread::sleep(me.delay);
                q = me.q.lock().expect("log queue poisoned");
            }
            if q.buf.is_empty() && q.shutdown {
                drop(q);
                me.waiters.lock().expect("log waiters poisoned").clear();
                return;
            }
            let at = q.start;
            q.urgent = false;
            q.start += q.buf.len() as u64;
            spare.clear();
            (
                at,
                std::mem::replace(&mut q.buf, std::mem::take(&mut spare)),
            )
        };
        last_group = data.len();
        if let Err(e) = sink.write(at, &data) {
            fail(&me, format!("{e}"));
            return;
        }
        me.writes.fetch_add(1, Ordering::Relaxed);
        let end = at + data.len() as u64;
        sink.durable(end);
        me.durable.send_modify(|d| d.end = end);
        let mut w = me.waiters.lock().expect("log waiters poisoned");
        let mut i = 0;
        while i < w.len() {
            if w[i].0 <= end {
                let (_, tx) = w.swap_remove(i);
                let _ = tx.send(());
            } else {
                i += 1;
            }
        }
        drop(w);
        spare = data;
    }
}

fn fail(inner: &Inner, msg: String) {
    tracing::error!(%msg, "the log stopped accepting writes");
    inner.q.lock().expect("log queue poisoned").failed = Some(msg.clone());
    inner.durable.send_modify(|d| d.failed = Some(msg));
    inner.waiters.lock().expect("log waiters poisoned").clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem {
        data: Arc<Mutex<Vec<u8>>>,
        fail_after: usize,
        seen: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for Mem {
        fn write(&mut self, at: u64, data: &[u8]) -> io::Result<()> {
            let mut d = self.data.lock().unwrap();
            if d.len() + data.len() > self.fail_after {
                return Err(io::Error::other("disk full"));
            }
            assert_eq!(at as usize, d.len(), "groups arrive in order, without gaps");
            d.extend_from_slice(data);
            Ok(())
        }
        fn durable(&mut self, end: u64) {
            self.seen.lock().unwrap().push(end);
        }
    }

    type Shared<T> = Arc<Mutex<Vec<T>>>;

    fn mem(fail_after: usize) -> (Mem, Shared<u8>, Shared<u64>) {
        let data = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Mem {
                data: data.clone(),
                fail_after,
                seen: seen.clone(),
            },
            data,
            seen,
        )
    }

    #[tokio::test]
    async fn concurrent_appends_are_durable_in_order_once_waited_for() {
        let (sink, data, seen) = mem(usize::MAX);
        let (c, h) = Committer::start("t", 0, sink, Duration::ZERO).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (s, e) = c.append(|b| b.extend_from_slice(&[i; 3])).unwrap();
                assert_eq!(e - s, 3);
                c.wait(e).await.unwrap();
                assert!(c.durable_end() >= e);
                s
            }));
        }
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        let d = data.lock().unwrap().clone();
        assert_eq!(d.len(), 64 * 3);
        for s in starts {
            let s = s as usize;
            assert!(
                d[s] == d[s + 1] && d[s] == d[s + 2],
                "a record is not split"
            );
        }
        assert!(c.writes() >= 1 && c.writes() <= 64);
        assert_eq!(*seen.lock().unwrap().last().unwrap(), 192);
        c.shutdown();
        h.join().unwrap();
        assert_eq!(c.append(|b| b.push(1)), Err(CommitError::Stopped));
    }

    #[tokio::test]
    async fn lazy_records_ride_with_the_next_group_or_are_written_within_the_lazy_wait() {
        let (sink, data, _) = mem(usize::MAX);
        let (c, h) = Committer::start("t", 0, sink, Duration::ZERO).unwrap();
        let (_, lazy) = c.append_lazy(|b| b.push(1)).unwrap();
        std::thread::sleep(LAZY_WAIT / 4);
        assert_eq!(
            c.writes(),
            0,
            "a lazy record alone does not wake the log thread"
        );
        assert!(data.lock().unwrap().is_empty());
        let (_, urgent) = c.append(|b| b.push(2)).unwrap();
        c.wait(urgent).await.unwrap();
        assert_eq!(
            *data.lock().unwrap(),
            vec![1, 2],
            "carried by the next group, in order"
        );
        assert_eq!(c.writes(), 1);
        // Alone, a lazy record is written within the lazy wait.
        let t = std::time::Instant::now();
        let (_, lazy2) = c.append_lazy(|b| b.push(3)).unwrap();
        while c.durable_end() < lazy2 {
            assert!(
                t.elapsed() < LAZY_WAIT * 10,
                "the lazy record was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(lazy2 > lazy);
        // Waiting for a lazy record makes it urgent.
        let (_, lazy3) = c.append_lazy(|b| b.push(4)).unwrap();
        let t = std::time::Instant::now();
        c.wait(lazy3).await.unwrap();
        assert!(t.elapsed() < LAZY_WAIT / 2, "waited {:?}", t.elapsed());
        assert_eq!(*data.lock().unwrap(), vec![1, 2, 3, 4]);
        c.shutdown();
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_fails_its_waiters_and_later_appends() {
        let (sink, _, seen) = mem(4);
        let (c, h) = Committer::start("t", 100, sink, Duration::ZERO).unwrap();
        let (_, e) = c.append(|b| b.extend_from_slice(b"0123456789")).unwrap();
        assert_eq!(e, 110, "positions start at the end given");
        let err = c.wait(e).await.unwrap_err();
        assert!(
            matches!(&err, CommitError::Failed(m) if m.contains("disk full")),
            "{err}"
        );
        h.join().unwrap();
        assert!(matches!(
            c.append(|b| b.push(1)),
            Err(CommitError::Failed(_))
        ));
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing was reported durable"
        );
        assert_eq!(c.durable_end(), 100);
    }
}
