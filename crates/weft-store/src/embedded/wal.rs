//! Log files, snapshots, recovery and the flusher thread (group commit).
//!
//! Files in the data dir: `wal-<gen>.log` (records appended since snapshot `<gen>`),
//! `snap-<gen>.snap` (the full state when log `<gen>` was started), `LOCK`.
//! Writers append encoded records to an in-memory queue under the state lock, so log order is
//! apply order; one thread drains the queue, writes, fsyncs once for everything it took
//! (`group`), and only then publishes the new durable sequence number and visible revision.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use super::codec::{self, LogTail};
use super::mvcc::{Batch, Mvcc};
use super::Durability;
use crate::{Result, StoreError};

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

enum Item {
    Record {
        seq: u64,
        rev: i64,
        bytes: Vec<u8>,
    },
    Rotate {
        seq: u64,
        rev: i64,
        gen: u64,
        snapshot: Vec<u8>,
    },
}

struct Queue {
    items: Vec<Item>,
    seq: u64,
    since_snapshot: u64,
    gen: u64,
    shutdown: bool,
}

/// The write-ahead log shared by writers and the flusher thread.
pub(crate) struct Log {
    q: Mutex<Queue>,
    cv: Condvar,
    pub durable: watch::Sender<Durable>,
    snapshot_bytes: u64,
    pub fsyncs: AtomicU64,
    pub records: AtomicU64,
    pub disk_bytes: AtomicU64,
}

fn wal_name(gen: u64) -> String {
    format!("wal-{gen:020}.log")
}
fn snap_name(gen: u64) -> String {
    format!("snap-{gen:020}.snap")
}
fn parse_gen(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Result of loading a data dir.
pub(crate) struct Recovered {
    pub state: Mvcc,
    pub gen: u64,
    pub file: File,
    pub bytes: u64,
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
    let mut state = match snaps.last() {
        Some(g) => {
            let path = dir.join(snap_name(*g));
            let buf = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
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
    for (i, g) in live.iter().enumerate() {
        let path = dir.join(wal_name(*g));
        let buf = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
        let tail = codec::parse_log(&buf, |_, payload| {
            let batch = codec::decode_batch(payload)?;
            state.replay(&batch, now)
        });
        let is_last = i + 1 == live.len();
        match tail {
            LogTail::Clean => bytes += buf.len() as u64,
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
    }
    // Older generations are covered by the snapshot.
    for g in wals.iter().filter(|g| **g < gen) {
        let _ = fs::remove_file(dir.join(wal_name(*g)));
    }
    for g in snaps.iter().filter(|g| **g < gen) {
        let _ = fs::remove_file(dir.join(snap_name(*g)));
    }
    let last_gen = live.last().copied().unwrap_or(gen);
    let path = dir.join(wal_name(last_gen));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err("cannot open", &path, e))?;
    sync_dir(dir).map_err(|e| io_err("cannot sync", dir, e))?;
    Ok(Recovered {
        state,
        gen: last_gen,
        file,
        bytes,
    })
}

impl Log {
    pub fn new(gen: u64, rev: i64, snapshot_bytes: u64, since_snapshot: u64) -> Self {
        let (durable, _) = watch::channel(Durable {
            seq: 0,
            rev,
            failed: None,
        });
        Log {
            q: Mutex::new(Queue {
                items: Vec::new(),
                seq: 0,
                since_snapshot,
                gen,
                shutdown: false,
            }),
            cv: Condvar::new(),
            durable,
            snapshot_bytes,
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
        }
    }

    /// Queues a batch already applied to `state`; returns its sequence number. Called with the
    /// state lock held so that log order is apply order. Takes a snapshot when the log is due.
    pub fn append(&self, state: &Mvcc, batch: &Batch) -> u64 {
        let bytes = codec::encode_record(batch);
        let mut q = self.q.lock().expect("log queue poisoned");
        q.seq += 1;
        let seq = q.seq;
        q.since_snapshot += bytes.len() as u64;
        q.items.push(Item::Record {
            seq,
            rev: batch.rev,
            bytes,
        });
        if q.since_snapshot >= self.snapshot_bytes {
            q.since_snapshot = 0;
            q.gen += 1;
            let gen = q.gen;
            let snapshot = codec::encode_snapshot(state);
            q.items.push(Item::Rotate {
                seq,
                rev: batch.rev,
                gen,
                snapshot,
            });
        }
        drop(q);
        self.cv.notify_one();
        seq
    }

    /// The sequence number of the last queued record.
    pub fn last_seq(&self) -> u64 {
        self.q.lock().expect("log queue poisoned").seq
    }

    /// Forces a snapshot now (used by tests and by `compact`).
    pub fn snapshot_now(&self, state: &Mvcc) -> u64 {
        let mut q = self.q.lock().expect("log queue poisoned");
        q.since_snapshot = 0;
        q.gen += 1;
        let gen = q.gen;
        let seq = q.seq;
        q.items.push(Item::Rotate {
            seq,
            rev: state.rev,
            gen,
            snapshot: codec::encode_snapshot(state),
        });
        drop(q);
        self.cv.notify_one();
        seq
    }

    /// Asks the flusher to stop after draining the queue.
    pub fn shutdown(&self) {
        self.q.lock().expect("log queue poisoned").shutdown = true;
        self.cv.notify_one();
    }

    fn publish(&self, seq: u64, rev: i64) {
        self.durable.send_modify(|d| {
            d.seq = d.seq.max(seq);
            d.rev = d.rev.max(rev);
        });
    }

    fn fail(&self, msg: String) {
        tracing::error!(%msg, "the store stopped accepting writes");
        self.durable.send_modify(|d| d.failed = Some(msg));
    }

    /// The flusher thread's body.
    pub fn run(&self, dir: PathBuf, mut file: File, mode: Durability) {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        loop {
            let items = {
                let mut q = self.q.lock().expect("log queue poisoned");
                while q.items.is_empty() && !q.shutdown {
                    q = self.cv.wait(q).expect("log queue poisoned");
                }
                if q.items.is_empty() {
                    return;
                }
                std::mem::take(&mut q.items)
            };
            let mut last: Option<(u64, i64)> = None;
            for item in items {
                match item {
                    Item::Record { seq, rev, bytes } => {
                        buf.extend_from_slice(&bytes);
                        self.records.fetch_add(1, Ordering::Relaxed);
                        last = Some((seq, rev));
                        if mode == Durability::Always {
                            if let Err(e) = self.flush(&mut file, &mut buf, mode) {
                                return self.fail(format!("cannot write log: {e}"));
                            }
                            self.publish(seq, rev);
                        }
                    }
                    Item::Rotate {
                        seq,
                        rev,
                        gen,
                        snapshot,
                    } => {
                        if let Err(e) = self.flush(&mut file, &mut buf, mode) {
                            return self.fail(format!("cannot write log: {e}"));
                        }
                        match rotate(&dir, gen, &snapshot) {
                            Ok(f) => file = f,
                            Err(e) => return self.fail(format!("cannot write snapshot: {e}")),
                        }
                        self.disk_bytes
                            .store(snapshot.len() as u64, Ordering::Relaxed);
                        self.publish(seq, rev);
                    }
                }
            }
            if let Err(e) = self.flush(&mut file, &mut buf, mode) {
                return self.fail(format!("cannot write log: {e}"));
            }
            if let Some((seq, rev)) = last {
                self.publish(seq, rev);
            }
        }
    }

    fn flush(&self, file: &mut File, buf: &mut Vec<u8>, mode: Durability) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        file.write_all(buf)?;
        self.disk_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.clear();
        if mode != Durability::None {
            file.sync_data()?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Writes `snap-<gen>` durably, starts `wal-<gen>`, and removes the older generation.
fn rotate(dir: &Path, gen: u64, snapshot: &[u8]) -> std::io::Result<File> {
    let tmp = dir.join(format!("{}.tmp", snap_name(gen)));
    let mut f = File::create(&tmp)?;
    f.write_all(snapshot)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(snap_name(gen)))?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(wal_name(gen)))?;
    sync_dir(dir)?;
    if gen > 0 {
        let _ = fs::remove_file(dir.join(wal_name(gen - 1)));
        let _ = fs::remove_file(dir.join(snap_name(gen - 1)));
        // Older generations may be left over from an interrupted rotation.
        if let Ok(rd) = fs::read_dir(dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let old =
                    parse_gen(&name, "wal-", ".log").or_else(|| parse_gen(&name, "snap-", ".snap"));
                if old.is_some_and(|g| g < gen) {
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
    }
    Ok(file)
}
