//! Log files, snapshots, recovery and the flusher thread (group commit).
//!
//! Files in the data dir: `wal-<gen>.log` (records appended since snapshot `<gen>`),
//! `snap-<gen>.snap` (the full state when log `<gen>` was started), `LOCK`.
//! Writers append encoded records to an in-memory queue under the state lock, so log order is
//! apply order; one thread drains the queue, writes, fsyncs once for everything it took
//! (`group`), and only then publishes the new durable sequence number and visible revision.
//! At rotation it starts the next log and hands a copy of the state to the snapshot thread,
//! which writes `snap-<gen>` and then removes the older generations.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::codec;
use super::mvcc::{Batch, Change, Mvcc, Snapshot};
use super::Durability;
use crate::{Result, StoreError};
use weft_log::{block_start, LogFile, LogIo, LogTail};

/// What the flusher has made durable.
#[derive(Clone, Debug, Default)]
pub(crate) struct Durable {
    /// Every record with a sequence number up to this one is durable.
    pub seq: u64,
    /// The store revision reached by those records: what readers and watchers see.
    pub rev: i64,
    /// Set when the flusher hit an I/O error; no write is acknowledged after that.
    pub failed: Option<String>,
}

/// See [`Log::wait`].
pub(crate) enum Wait {
    /// Already durable.
    Durable,
    /// The log failed; nothing more becomes durable.
    Failed(String),
    /// Resolves when durable; errors when the flusher stopped first.
    Pending(oneshot::Receiver<()>),
}

enum Item {
    /// Encoded by the flusher, straight into its write buffer: off the writers' state lock.
    Record { seq: u64, rev: i64, batch: Batch },
    Rotate {
        seq: u64,
        rev: i64,
        gen: u64,
        snapshot: Snapshot,
    },
}

struct SnapSlot {
    job: Option<(u64, Snapshot)>,
    stop: bool,
}

struct Queue {
    items: Vec<Item>,
    seq: u64,
    since_snapshot: u64,
    gen: u64,
    shutdown: bool,
    /// The flusher is blocked on the condvar: only then does an append need to wake it (a
    /// condvar notification is a futex syscall even when nobody waits).
    idle: bool,
}

/// The write-ahead log shared by writers and the flusher thread.
pub(crate) struct Log {
    q: Mutex<Queue>,
    cv: Condvar,
    pub durable: watch::Sender<Durable>,
    /// Writers waiting for their record to be durable, each woken alone when it is (a watch
    /// would wake every waiter on every flush, and most would go back to sleep).
    waiters: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
    snapshot_bytes: u64,
    /// The next snapshot for the snapshot thread; a newer one replaces one not yet started.
    snap_job: Mutex<SnapSlot>,
    snap_cv: Condvar,
    /// The newest snapshot generation the snapshot thread finished, and its error if it failed.
    pub snap_done: watch::Sender<(u64, Option<String>)>,
    pub fsyncs: AtomicU64,
    /// Durable writes made by writers' threads (`Log::flush_from_writer`).
    pub inline_writes: AtomicU64,
    /// The watchers, woken by key when a flush is published.
    pub hub: std::sync::Arc<super::hub::Hub>,
    /// Whether the log file is written with direct I/O (see [`LogFile`]).
    pub direct_io: std::sync::atomic::AtomicBool,
    pub records: AtomicU64,
    /// Bytes on disk besides the current log: the snapshot, plus older logs until the
    /// snapshot that covers them is written.
    snap_bytes: AtomicU64,
    /// Bytes of the current log.
    log_bytes: AtomicU64,
    /// Length of the last snapshot written (or loaded): the log grows to at least this much
    /// before the next one.
    last_snapshot: AtomicU64,
    /// The open log and the flusher's buffers: whoever holds it writes the queue's records
    /// (the log thread, or a thread that flushes its own writes, see [`Log::flush_from_writer`]).
    /// `None` before the log thread starts and after the log failed or stopped.
    writer: Mutex<Option<Flusher>>,
    /// The records made durable, for replicas (`embedded::repl`); set once replication starts.
    pub feed: std::sync::OnceLock<std::sync::Arc<super::repl::Feed>>,
}

/// What writing the log needs, owned by whoever holds [`Log`]'s `writer` lock.
struct Flusher {
    dir: PathBuf,
    file: LogFile,
    mode: Durability,
    buf: Vec<u8>,
    /// Keys changed by the records written since the last publish, with their revisions
    /// (see `Log::publish`).
    changed: Vec<(bytes::Bytes, i64)>,
}

pub(crate) fn wal_name(gen: u64) -> String {
    format!("wal-{gen:020}.log")
}
pub(crate) fn snap_name(gen: u64) -> String {
    format!("snap-{gen:020}.snap")
}
pub(crate) fn parse_gen(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("{what} {}: {e}", path.display()))
}

use weft_log::sync_dir;

/// Result of loading a data dir.
pub(crate) struct Recovered {
    pub state: Mvcc,
    pub gen: u64,
    /// Where the valid data of log `gen` ends: the next record goes there.
    pub end: u64,
    /// The data of log `gen` in the 4 KiB block `end` falls in (what direct I/O writes again).
    pub tail: Vec<u8>,
    /// Bytes of the logs replayed (since the snapshot), as files on disk.
    pub bytes: u64,
    /// Bytes of records in those logs (without the zeros after them).
    pub data: u64,
    /// Bytes of the snapshot loaded (0 without one).
    pub snap_bytes: u64,
}

/// Loads the newest snapshot and replays the logs after it. A torn tail of the last log is
/// truncated; any other damage is an error naming the file and offset.
pub(crate) fn recover(dir: &Path, now: Instant) -> Result<Recovered> {
    let mut snaps = Vec::new();
    let mut wals = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for ent in entries {
        let ent = ent.map_err(|e| io_err("cannot list", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(ent.path());
        } else if let Some(g) = parse_gen(&name, "snap-", ".snap") {
            snaps.push(g);
        } else if let Some(g) = parse_gen(&name, "wal-", ".log") {
            wals.push(g);
        }
    }
    snaps.sort_unstable();
    wals.sort_unstable();
    let gen = snaps.last().copied().unwrap_or(0);
    let mut snap_bytes = 0u64;
    let mut state = match snaps.last() {
        Some(g) => {
            let path = dir.join(snap_name(*g));
            let buf = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
            snap_bytes = buf.len() as u64;
            codec::decode_snapshot(&buf, now).map_err(|reason| StoreError::Corrupt {
                file: path.display().to_string(),
                offset: 0,
                reason,
            })?
        }
        // As etcd: an empty store is at revision 1, the first write makes revision 2.
        None => Mvcc {
            rev: 1,
            ..Default::default()
        },
    };
    let live: Vec<u64> = wals.iter().copied().filter(|g| *g >= gen).collect();
    let mut bytes = 0u64;
    let mut data = 0u64;
    let mut end = 0u64;
    let mut tail = Vec::new();
    for (i, g) in live.iter().enumerate() {
        let path = dir.join(wal_name(*g));
        let buf = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
        let parsed = weft_log::parse_log(&buf, |_, payload| {
            let batch = codec::decode_batch(payload)?;
            state.replay(&batch, now)
        });
        let is_last = i + 1 == live.len();
        match parsed {
            LogTail::Clean { end: e } => {
                bytes += buf.len() as u64;
                data += e;
                end = e;
            }
            LogTail::Torn { offset } if is_last => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err("cannot open", &path, e))?;
                f.set_len(offset)
                    .map_err(|e| io_err("cannot truncate", &path, e))?;
                f.sync_all().map_err(|e| io_err("cannot sync", &path, e))?;
                tracing::warn!(file = %path.display(), offset, "truncated a torn record at the end of the log");
                bytes += offset;
                data += offset;
                end = offset;
            }
            LogTail::Torn { offset } => {
                return Err(StoreError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    reason: "incomplete record in a log that is not the newest".into(),
                })
            }
            LogTail::Corrupt { offset, reason } => {
                return Err(StoreError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    reason,
                })
            }
        }
        if is_last {
            tail = buf[block_start(end)..end as usize].to_vec();
        }
    }
    // Older generations are covered by the snapshot.
    for g in wals.iter().filter(|g| **g < gen) {
        let _ = fs::remove_file(dir.join(wal_name(*g)));
    }
    for g in snaps.iter().filter(|g| **g < gen) {
        let _ = fs::remove_file(dir.join(snap_name(*g)));
    }
    let last_gen = live.last().copied().unwrap_or(gen);
    Ok(Recovered {
        state,
        gen: last_gen,
        end,
        tail,
        bytes,
        data,
        snap_bytes,
    })
}

/// Opens `wal-<gen>` (creating it, durably, if needed) for records from `end` on; `tail` is
/// its data from the start of the block `end` falls in (see [`Recovered::tail`]).
pub(crate) fn open_log(
    dir: &Path,
    gen: u64,
    end: u64,
    tail: Vec<u8>,
    io: LogIo,
) -> Result<LogFile> {
    let path = dir.join(wal_name(gen));
    // A new log takes the spare's blocks if there is one (see `keep_spare`).
    let recycled = end == 0 && fs::rename(dir.join(LOG_SPARE), &path).is_ok();
    let file = LogFile::open(&path, end, tail, io, recycled)
        .map_err(|e| io_err("cannot open", &path, e))?;
    sync_dir(dir).map_err(|e| io_err("cannot sync", dir, e))?;
    Ok(file)
}

impl Log {
    /// `snap_bytes` and `log_bytes` are what recovery found on disk (see [`Recovered`]).
    /// `log_data` is the bytes of records in those logs.
    pub fn new(
        gen: u64,
        rev: i64,
        snapshot_bytes: u64,
        snap_bytes: u64,
        log_bytes: u64,
        log_data: u64,
    ) -> Self {
        let (durable, _) = watch::channel(Durable {
            seq: 0,
            rev,
            failed: None,
        });
        Log {
            q: Mutex::new(Queue {
                items: Vec::new(),
                seq: 0,
                since_snapshot: log_data,
                gen,
                shutdown: false,
                idle: false,
            }),
            cv: Condvar::new(),
            durable,
            waiters: Mutex::new(Vec::new()),
            snapshot_bytes,
            snap_job: Mutex::new(SnapSlot {
                job: None,
                stop: false,
            }),
            snap_cv: Condvar::new(),
            snap_done: watch::channel((gen, None)).0,
            fsyncs: AtomicU64::new(0),
            inline_writes: AtomicU64::new(0),
            hub: Default::default(),
            direct_io: std::sync::atomic::AtomicBool::new(false),
            records: AtomicU64::new(0),
            snap_bytes: AtomicU64::new(snap_bytes),
            log_bytes: AtomicU64::new(log_bytes),
            last_snapshot: AtomicU64::new(snap_bytes),
            writer: Mutex::new(None),
            feed: std::sync::OnceLock::new(),
        }
    }

    /// Queues a batch already applied to `state`; returns its sequence number and whether the
    /// flusher must be woken, by [`Log::wake`] once the state lock is released (the wake-up is
    /// a futex syscall: inside the lock it made concurrent writers queue behind it). Called
    /// with the state lock held so that log order is apply order. Takes a snapshot when the
    /// log is due: once it holds `snapshot_bytes`, or as many bytes as the last snapshot if
    /// that is larger. So snapshots write at most about as many bytes as the log (with a fixed
    /// threshold, a state of N times the threshold would be written again every threshold's
    /// worth of log, N-fold), and recovery replays at most that much log.
    pub fn append(&self, state: &Mvcc, batch: Batch, deferred: bool) -> (u64, bool) {
        let len = codec::record_len(&batch);
        let rev = batch.rev;
        let mut q = self.q.lock().expect("log queue poisoned");
        q.seq += 1;
        let seq = q.seq;
        q.since_snapshot += len as u64;
        q.items.push(Item::Record { seq, rev, batch });
        let due = self
            .snapshot_bytes
            .max(self.last_snapshot.load(Ordering::Relaxed));
        if q.since_snapshot >= due {
            q.since_snapshot = 0;
            q.gen += 1;
            let gen = q.gen;
            let snapshot = state.snapshot();
            q.items.push(Item::Rotate {
                seq,
                rev,
                gen,
                snapshot,
            });
        }
        // Woken once: later appends before the flusher runs see it no longer idle. A deferred
        // record is flushed by its own thread (`flush_from_writer`): the log thread stays asleep, and
        // stays marked idle for the next appender that needs it.
        let wake = !deferred && std::mem::replace(&mut q.idle, false);
        drop(q);
        (seq, wake)
    }

    /// The newest log generation started (or queued to start).
    #[cfg(test)]
    pub fn gen(&self) -> u64 {
        self.q.lock().expect("log queue poisoned").gen
    }

    /// Whether the log thread is waiting for records (see `Queue::idle`).
    #[cfg(test)]
    pub fn idle(&self) -> bool {
        self.q.lock().expect("log queue poisoned").idle
    }

    /// Wakes the flusher after an [`Log::append`] that asked for it.
    pub fn wake(&self) {
        self.cv.notify_one();
    }

    /// The sequence number of the last queued record.
    pub fn last_seq(&self) -> u64 {
        self.q.lock().expect("log queue poisoned").seq
    }

    /// Forces a snapshot now (`Embedded::snapshot`); returns the sequence number it covers and
    /// its generation.
    pub fn snapshot_now(&self, state: &Mvcc) -> (u64, u64) {
        let mut q = self.q.lock().expect("log queue poisoned");
        q.since_snapshot = 0;
        q.gen += 1;
        let gen = q.gen;
        let seq = q.seq;
        q.items.push(Item::Rotate {
            seq,
            rev: state.rev,
            gen,
            snapshot: state.snapshot(),
        });
        drop(q);
        self.cv.notify_one();
        (seq, gen)
    }

    /// Asks the flusher to stop after draining the queue.
    pub fn shutdown(&self) {
        self.q.lock().expect("log queue poisoned").shutdown = true;
        self.cv.notify_one();
    }

    /// Bytes of the data dir's snapshot and logs (the status's `db_size`).
    pub fn disk_bytes(&self) -> u64 {
        self.snap_bytes.load(Ordering::Relaxed) + self.log_bytes.load(Ordering::Relaxed)
    }

    /// What a writer whose record has sequence number `seq` has to wait for.
    pub fn wait(&self, seq: u64) -> Wait {
        let mut w = self.waiters.lock().expect("log waiters poisoned");
        // Read under the waiters lock: `publish` and `fail` update `durable` before they take
        // it, so a waiter registered here is always seen by the next one.
        let d = self.durable.borrow();
        if d.seq >= seq {
            return Wait::Durable;
        }
        if let Some(f) = &d.failed {
            return Wait::Failed(f.clone());
        }
        drop(d);
        let (tx, rx) = oneshot::channel();
        w.push((seq, tx));
        Wait::Pending(rx)
    }

    /// Makes records up to `seq` durable and revision `rev` visible, with the watchers of the
    /// `changed` keys marked at the same time (see `hub`); wakes those watchers, then the
    /// writers. Drains `changed`.
    fn publish(&self, seq: u64, rev: i64, changed: &mut Vec<(bytes::Bytes, i64)>) {
        let watchers = self.hub.publish(changed, || {
            self.durable.send_modify(|d| {
                d.seq = d.seq.max(seq);
                d.rev = d.rev.max(rev);
            });
        });
        changed.clear();
        if let Some(feed) = super::repl::feed_of(self) {
            feed.commit(seq);
        }
        // Watchers first, writers second, as when both waited on `durable`: waking the writers
        // first lost 10 % of the watch fan-out with client and server on the same cores
        // (docs/runs/etcd-api.md, "fewer futex calls on the write path").
        for s in watchers {
            s.notify();
        }
        let mut w = self.waiters.lock().expect("log waiters poisoned");
        let mut i = 0;
        while i < w.len() {
            if w[i].0 <= seq {
                let (_, tx) = w.swap_remove(i);
                let _ = tx.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Drops every waiter's sender: called when the flusher stops, so no writer waits forever.
    fn release(&self) {
        self.waiters.lock().expect("log waiters poisoned").clear();
    }

    fn fail(&self, msg: String) {
        tracing::error!(%msg, "the store stopped accepting writes");
        self.durable.send_modify(|d| d.failed = Some(msg));
        self.release();
    }

    /// The flusher thread's body. Snapshots are written by a second thread, so that the log
    /// keeps being flushed (and writes acknowledged) while a large state is encoded and saved.
    pub fn run(&self, dir: PathBuf, file: LogFile, mode: Durability, delay: std::time::Duration) {
        *self.writer.lock().expect("log writer poisoned") = Some(Flusher {
            dir: dir.clone(),
            file,
            mode,
            buf: Vec::with_capacity(1 << 20),
            changed: Vec::new(),
        });
        std::thread::scope(|scope| {
            let snapshotter = std::thread::Builder::new()
                .name("weft-snapshot".into())
                .spawn_scoped(scope, || self.snapshot_loop(&dir));
            if let Err(e) = snapshotter {
                self.writer.lock().expect("log writer poisoned").take();
                self.fail(format!("cannot start the snapshot thread: {e}"));
                return;
            }
            self.flush_loop(delay);
            self.writer.lock().expect("log writer poisoned").take();
            self.snap_job.lock().expect("snapshot slot poisoned").stop = true;
            self.snap_cv.notify_one();
        });
        self.release();
    }

    /// The snapshot thread's body: writes the newest submitted snapshot, then drops the older
    /// generations it covers. Finishes a pending snapshot before stopping.
    fn snapshot_loop(&self, dir: &Path) {
        loop {
            let (gen, snap) = {
                let mut slot = self.snap_job.lock().expect("snapshot slot poisoned");
                loop {
                    if let Some(job) = slot.job.take() {
                        break job;
                    }
                    if slot.stop {
                        return;
                    }
                    slot = self.snap_cv.wait(slot).expect("snapshot slot poisoned");
                }
            };
            let written = write_snapshot(dir, gen, &snap);
            drop(snap);
            match written {
                Ok(len) => {
                    self.snap_bytes.store(len, Ordering::Relaxed);
                    self.last_snapshot.store(len, Ordering::Relaxed);
                    self.snap_done.send_replace((gen, None));
                }
                Err(e) => {
                    // Nothing is lost: the logs since the last good snapshot are all kept and
                    // replayed on start. The next rotation tries again.
                    let msg = format!("cannot write snapshot {gen}: {e}");
                    tracing::error!(%msg);
                    self.snap_done.send_replace((gen, Some(msg)));
                }
            }
        }
    }

    fn flush_loop(&self, delay: std::time::Duration) {
        let mut last_batch = 0usize;
        loop {
            {
                let mut q = self.q.lock().expect("log queue poisoned");
                while q.items.is_empty() && !q.shutdown {
                    q.idle = true;
                    q = self.cv.wait(q).expect("log queue poisoned");
                    q.idle = false;
                }
                if !delay.is_zero() && !q.shutdown && (last_batch >= 2 || q.items.len() >= 2) {
                    // Concurrent writers: let the ones about to append join this fsync.
                    drop(q);
                    std::thread::sleep(delay);
                    q = self.q.lock().expect("log queue poisoned");
                }
                last_batch = q.items.len();
                if q.items.is_empty() && q.shutdown {
                    return;
                }
            }
            if self.drain().is_none() {
                return;
            }
        }
    }

    /// Called by a thread that defers its flushes (`embedded::defer_flushes`) once it has
    /// nothing else to do: writes the queued records on the calling thread if there are at
    /// least `min_batch` of them (waiting for a flush in progress elsewhere first), or else
    /// wakes the log thread for them if it sleeps.
    pub fn flush_from_writer(&self, min_batch: usize) {
        let mut q = self.q.lock().expect("log queue poisoned");
        if q.items.is_empty() {
            return;
        }
        if q.items.len() < min_batch {
            // A deferred append leaves the log thread marked idle (see `append`).
            if std::mem::replace(&mut q.idle, false) {
                drop(q);
                self.cv.notify_one();
            }
            return;
        }
        drop(q);
        if let Some(n) = self.drain() {
            self.inline_writes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Takes the queue and writes it, then publishes; returns how many durable writes that
    /// took (one per group, one per record in `always` mode, none in `none` mode), or `None`
    /// when the log cannot be written (it failed, or stopped).
    fn drain(&self) -> Option<u64> {
        let mut guard = self.writer.lock().expect("log writer poisoned");
        let w = guard.as_mut()?;
        // Only the writer lock's holder adds to `fsyncs`.
        let before = self.fsyncs.load(Ordering::Relaxed);
        // Taken under the writer lock, so that batches are written in queue order.
        let items = std::mem::take(&mut self.q.lock().expect("log queue poisoned").items);
        if let Err(msg) = self.write_items(w, items) {
            guard.take();
            drop(guard);
            self.fail(msg);
            return None;
        }
        Some(self.fsyncs.load(Ordering::Relaxed) - before)
    }

    fn write_items(&self, w: &mut Flusher, items: Vec<Item>) -> std::result::Result<(), String> {
        let mode = w.mode;
        let mut last: Option<(u64, i64)> = None;
        for item in items {
            match item {
                Item::Record { seq, rev, batch } => {
                    codec::encode_record_into(&batch, &mut w.buf);
                    for c in &batch.changes {
                        w.changed.push(match c {
                            Change::Put { key, .. } | Change::Delete { key } => (key.clone(), rev),
                        });
                    }
                    self.records.fetch_add(1, Ordering::Relaxed);
                    last = Some((seq, rev));
                    if mode == Durability::Always {
                        self.flush(&mut w.file, &mut w.buf, mode)
                            .map_err(|e| format!("cannot write log: {e}"))?;
                        self.publish(seq, rev, &mut w.changed);
                    }
                }
                Item::Rotate {
                    seq,
                    rev,
                    gen,
                    snapshot,
                } => {
                    self.flush(&mut w.file, &mut w.buf, mode)
                        .map_err(|e| format!("cannot write log: {e}"))?;
                    // Records up to `seq` are durable in the old log; later ones go to the
                    // new one while the snapshot thread writes the state as of `seq`.
                    let f = open_log(&w.dir, gen, 0, Vec::new(), w.file.io())
                        .map_err(|e| format!("cannot start log {gen}: {e}"))?;
                    w.file = f;
                    // The old log stays on disk until the snapshot replaces it.
                    let old = self.log_bytes.swap(w.file.size(), Ordering::Relaxed);
                    self.snap_bytes.fetch_add(old, Ordering::Relaxed);
                    self.publish(seq, rev, &mut w.changed);
                    self.snap_job.lock().expect("snapshot slot poisoned").job =
                        Some((gen, snapshot));
                    self.snap_cv.notify_one();
                }
            }
        }
        self.flush(&mut w.file, &mut w.buf, mode)
            .map_err(|e| format!("cannot write log: {e}"))?;
        if let Some((seq, rev)) = last {
            self.publish(seq, rev, &mut w.changed);
        }
        Ok(())
    }

    fn flush(&self, file: &mut LogFile, buf: &mut Vec<u8>, mode: Durability) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (size, direct) = (file.size(), file.direct());
        let written = file.write(buf);
        if file.direct() != direct {
            self.direct_io.store(file.direct(), Ordering::Relaxed);
        }
        written?;
        if let Some(feed) = super::repl::feed_of(self) {
            feed.stage(buf);
        }
        self.log_bytes
            .fetch_add(file.size() - size, Ordering::Relaxed);
        buf.clear();
        if mode != Durability::None {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// An old log kept for the next log to write over (`open_log`), its blocks reading as zeros.
pub(crate) const LOG_SPARE: &str = "log.spare";
/// An old snapshot kept for the next snapshot to write over (`write_snapshot`).
pub(crate) const SNAP_SPARE: &str = "snap.spare";

/// Keeps `old`, a file a new snapshot covers, as the spare `name` if there is none yet;
/// returns whether it did. Freeing a file's blocks is what costs: unlinking or truncating a
/// 64 MiB file took 93 ms on ext4 mounted with `discard` (the journal commit trims the freed
/// blocks), and the log's durable writes waited behind it; taking the spare's blocks costs
/// the next file nothing of the kind (PostgreSQL recycles WAL segments for the same reason).
/// A log spare's blocks are first made to read as zeros without being freed
/// (`FALLOC_FL_ZERO_RANGE`, 7 ms for 64 MiB there), and made durable before the rename, so
/// its old records can never be read as a new log's. Where that is not supported, the file
/// is removed as before.
fn keep_spare(dir: &Path, old: &Path, name: &str) -> bool {
    let spare = dir.join(name);
    if spare.exists() {
        return false;
    }
    if name == LOG_SPARE {
        let zeroed = OpenOptions::new().write(true).open(old).and_then(|f| {
            let len = f.metadata()?.len();
            zero_range(&f, len)?;
            f.sync_all()
        });
        if zeroed.is_err() {
            return false;
        }
    }
    fs::rename(old, spare).is_ok()
}

#[cfg(target_os = "linux")]
fn zero_range(f: &File, len: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    fallocate(
        f,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        0,
        len,
    )?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn zero_range(_: &File, _: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// How much of an old file [`remove_gradually`] frees at a time.
const REMOVE_STEP: u64 = 1 << 20;

/// Removes a file of the data dir, shrinking it a step at a time first. Unlinking a 64 MiB
/// log at once took ext4 84 ms, and the log's own durable writes waited behind that journal
/// transaction: an 85–90 ms stall for every writer at each snapshot (put at 64 clients).
/// Errors are ignored: a leftover file of an older generation is removed at the next snapshot
/// or start.
pub(crate) fn remove_gradually(path: &Path) {
    if let Ok(f) = OpenOptions::new().write(true).open(path) {
        let mut len = f.metadata().map(|m| m.len()).unwrap_or(0);
        while len > REMOVE_STEP {
            len -= REMOVE_STEP;
            if f.set_len(len).is_err() {
                break;
            }
        }
    }
    let _ = fs::remove_file(path);
}

/// How much of a snapshot is written between two syncs.
const SNAPSHOT_SYNC_BYTES: usize = 4 << 20;

/// Writes `snap-<gen>` durably and removes the generations it covers (older snapshots and
/// logs, including ones left over from an interrupted rotation); returns its length. Until it
/// is renamed into place, recovery uses the previous snapshot and replays the older logs too.
///
/// Encoded straight into the file, a piece at a time: encoding into one buffer first took
/// about three times the state's size in transient memory (a growing buffer, then a copy with
/// the header), and freeing such blocks unmaps them, which holds every thread's page faults.
fn write_snapshot(dir: &Path, gen: u64, snapshot: &Snapshot) -> std::io::Result<u64> {
    let tmp = dir.join(format!("{}.tmp", snap_name(gen)));
    // Written over the spare's blocks if there is one (see `keep_spare`).
    let file = match fs::rename(dir.join(SNAP_SPARE), &tmp) {
        Ok(()) => OpenOptions::new().write(true).open(&tmp)?,
        Err(_) => File::create(&tmp)?,
    };
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    // Synced in pieces: a large amount of dirty data flushed at once would hold up the log's
    // own fsyncs (the file system commits its journal for both), stalling acknowledgements.
    let len = codec::write_snapshot(snapshot, &mut f, SNAPSHOT_SYNC_BYTES, |f| {
        f.flush()?;
        f.get_ref().sync_data()
    })?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    // A recycled file may have been longer.
    f.set_len(len)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(snap_name(gen)))?;
    sync_dir(dir)?;
    if let Ok(rd) = fs::read_dir(dir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let old =
                parse_gen(&name, "wal-", ".log").or_else(|| parse_gen(&name, "snap-", ".snap"));
            if old.is_some_and(|g| g < gen) {
                let spare = if name.ends_with(".log") {
                    LOG_SPARE
                } else {
                    SNAP_SPARE
                };
                if !keep_spare(dir, &ent.path(), spare) {
                    remove_gradually(&ent.path());
                }
            }
        }
    }
    Ok(len)
}
