//! The embedded backend: every topic in one commit log in the data dir, one group commit for
//! all of them.
//!
//! ## On disk
//! - `log/<position>.seg`: the commit log, append-only segment files (64 MiB by default) of
//!   framed records (`weft_log`): publishes (one record per batch, each message framed again
//!   so it can be read and checked alone), and every change of a group (ack, nack, delivery
//!   count, dead letter), topic and retention point.
//! - `checkpoint.json`: the state (topics, groups, dead letters, producer ids) as of a log
//!   position, written before old segments are removed; recovery loads it and replays the
//!   log after it, and indexes the messages of every segment kept.
//! - `LOCK`: held while the queue is open; a second process is refused.
//!
//! ## Durability
//! A publish, ack, nack, topic or group change returns only after the write that covers it
//! is durable (`fsync` mode `group`, the default: direct I/O or `fdatasync` once per group of
//! concurrent writes). Consumers and readers see a message only once it is durable, so no
//! one acts on a message a crash could take back. Delivery counts are logged without waiting,
//! and without a group commit of their own: they ride with the next write, or are written
//! within 200 ms (a crash may forget the last deliveries' counts; unacked messages are
//! delivered again either way). Mode `none` writes without syncing: a machine crash (not a process crash)
//! loses the writes of the last seconds.
//!
//! ## Memory
//! The index keeps 40 bytes per stored message (position, length, time, delay, key hash);
//! the messages stay on disk and are read by position, so a topic can be much larger than
//! memory. Recovery reads every kept segment once, sequentially.

mod codec;
mod group;
mod ops;
mod segments;
mod state;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_log::{Committer, LogIo};

pub(crate) use ops::check_topic_config;
#[cfg(feature = "nats")]
pub(crate) use ops::{deliver_at, message_size};
use segments::{SegSink, Segments};
use state::State;

use crate::{QueueError, Result};

/// When publishes and acks are durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Acknowledged after the write that covers them is on disk (one per group of
    /// concurrent writes).
    #[default]
    Group,
    /// Written without syncing: a process crash loses nothing, a machine crash or power
    /// loss loses what the kernel had not written yet.
    None,
}

/// How the embedded queue is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// When writes are durable.
    pub fsync: Fsync,
    /// A new segment starts past this many bytes.
    pub segment_bytes: u64,
    /// Try direct I/O for durable writes (see `weft_log::LogFile`).
    pub direct_io: bool,
    /// How often retention, dedup expiry and segment removal run.
    pub maintenance_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: Fsync::Group,
            segment_bytes: 64 << 20,
            direct_io: true,
            maintenance_every: Duration::from_secs(1),
        }
    }
}

/// The checkpoint file's content.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Records before this log position are in `state`.
    pos: u64,
    state: State,
}

const CHECKPOINT: &str = "checkpoint.json";

pub(crate) struct Inner {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) log: Committer,
    pub(crate) segs: Arc<Segments>,
    /// Bumped whenever messages may have become ready (durable publishes, nacks, acks that
    /// unblock a key, replays).
    pub(crate) changed: watch::Sender<u64>,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.log.shutdown();
        if let Some(h) = self.thread.lock().expect("thread slot poisoned").take() {
            let _ = h.join();
        }
    }
}

/// The embedded, durable queue. Cheap to clone; the log thread stops when the last clone is
/// dropped (after writing what it has).
#[derive(Clone)]
pub struct EmbeddedQueue {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue in `dir`: loads the checkpoint, replays the log,
    /// cuts off a torn tail, and refuses damage with the file and offset, or a dir another
    /// process has open.
    pub async fn open(dir: &Path, opts: Options) -> Result<Self> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, opts))
            .await
            .map_err(|e| QueueError::Storage(format!("open task failed: {e}")))?
    }

    fn open_blocking(dir: &Path, opts: Options) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| QueueError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let (ckpt_pos, mut state) = load_checkpoint(dir)?;
        let io = LogIo {
            sync: opts.fsync == Fsync::Group,
            direct: opts.direct_io,
        };
        let scanned = segments::scan(dir, io, |pos, payload| {
            state.replay(pos, payload, pos >= ckpt_pos)
        })?;
        state.restarted(now_ms());
        let state = Arc::new(Mutex::new(state));
        let (changed, _) = watch::channel(0u64);
        let on_durable = {
            let state = state.clone();
            let changed = changed.clone();
            Box::new(move |end: u64| {
                let any = state.lock().expect("queue state poisoned").durable(end);
                if any {
                    changed.send_modify(|v| *v += 1);
                }
            })
        };
        let sink = SegSink {
            segs: scanned.segs.clone(),
            file: scanned.file,
            base: scanned.base,
            end: scanned.end,
            segment_bytes: opts.segment_bytes.max(4096),
            io,
            on_durable,
            written: Default::default(),
        };
        let (log, thread) =
            Committer::start("weft-queue-log", scanned.end, sink, Duration::ZERO)
                .map_err(|e| QueueError::Storage(format!("cannot start the log thread: {e}")))?;
        let inner = Arc::new(Inner {
            state,
            log,
            segs: scanned.segs,
            changed,
            dir: dir.to_path_buf(),
            thread: Mutex::new(Some(thread)),
            _lock: lock,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(janitor(Arc::downgrade(&inner), opts.maintenance_every));
        }
        Ok(EmbeddedQueue { inner })
    }

    /// Writes what is queued and stops the log thread; later calls fail.
    pub async fn close(&self) {
        self.inner.log.shutdown();
        let h = self
            .inner
            .thread
            .lock()
            .expect("thread slot poisoned")
            .take();
        if let Some(h) = h {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Bytes of log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.segs.disk_bytes()
    }

    /// Durable writes (groups) made since the queue was opened.
    pub fn log_writes(&self) -> u64 {
        self.inner.log.writes()
    }

    /// Runs retention (age), dedup expiry, and removes segments nothing needs any more
    /// (after writing a checkpoint). Runs by itself every `maintenance_every`.
    pub async fn maintain(&self) -> Result<()> {
        let now = now_ms();
        let (end, removable) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            let trims = ops::age_trims(&mut st, now);
            let end = if trims.is_empty() {
                0
            } else {
                self.append(|b| ops::encode_trims(b, &trims))?
            };
            (end, st.min_needed_pos())
        };
        self.wait(end).await?;
        if self.inner.segs.removable_below(removable) == 0 {
            return Ok(());
        }
        // Everything before `pos` is in the checkpoint once it is written.
        let (pos, json) = {
            let mut st = self.inner.state.lock().expect("queue state poisoned");
            for t in st.topics.values_mut() {
                for p in t.parts.iter_mut() {
                    p.end_hint = p.end();
                }
            }
            let pos = self.append(|_| {})?;
            let json = serde_json::to_vec(&CheckpointRef { pos, state: &st })
                .map_err(|e| QueueError::Storage(format!("cannot encode checkpoint: {e}")))?;
            (pos, json)
        };
        self.wait(pos).await?;
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || write_checkpoint(&dir, &json))
            .await
            .map_err(|e| QueueError::Storage(format!("checkpoint task failed: {e}")))??;
        self.inner.segs.remove_below(removable.min(pos));
        Ok(())
    }

    /// Appends records; returns the log position to wait for. Called under the state lock,
    /// so that log order is apply order. The log thread writes them.
    pub(crate) fn append(&self, f: impl FnOnce(&mut Vec<u8>)) -> Result<u64> {
        self.append_at(f).map(|(_, end)| end)
    }

    /// Like [`EmbeddedQueue::append`], for records nobody waits for (a pull's delivery
    /// counts): they ride along with the next group commit instead of costing one of their
    /// own (`weft_log::Committer::append_lazy`).
    pub(crate) fn append_lazy(&self, f: impl FnOnce(&mut Vec<u8>)) -> Result<u64> {
        self.inner
            .log
            .append_lazy(f)
            .map(|(_, end)| end)
            .map_err(|e| QueueError::Storage(e.to_string()))
    }

    /// Like [`EmbeddedQueue::append`], also returning where the records start.
    pub(crate) fn append_at(&self, f: impl FnOnce(&mut Vec<u8>)) -> Result<(u64, u64)> {
        self.inner
            .log
            .append(f)
            .map_err(|e| QueueError::Storage(e.to_string()))
    }

    /// Waits until the log is durable up to `end`.
    pub(crate) async fn wait(&self, end: u64) -> Result<()> {
        self.inner
            .log
            .wait(end)
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))
    }
}

#[derive(Serialize)]
struct CheckpointRef<'a> {
    pos: u64,
    state: &'a State,
}

async fn janitor(inner: std::sync::Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let q = EmbeddedQueue { inner };
        if let Err(e) = q.maintain().await {
            tracing::warn!("queue maintenance: {e}");
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    weft_log::lock_dir(dir).map_err(|e| match e {
        weft_log::DirLockError::Io(m) => QueueError::Storage(m),
        weft_log::DirLockError::InUse(m) => QueueError::Locked(m),
    })
}

fn load_checkpoint(dir: &Path) -> Result<(u64, State)> {
    let path = dir.join(CHECKPOINT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, State::default())),
        Err(e) => {
            return Err(QueueError::Storage(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let ck: Checkpoint = serde_json::from_slice(&bytes)
        .map_err(|e| QueueError::Corrupt(format!("{}: {e}", path.display())))?;
    let mut state = ck.state;
    let topics = std::mem::take(&mut state.topics);
    for (_, t) in topics {
        state.add_topic(t);
    }
    Ok((ck.pos, state))
}

fn write_checkpoint(dir: &Path, json: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    let err =
        |e: std::io::Error| QueueError::Storage(format!("cannot write {}: {e}", tmp.display()));
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(json).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT)).map_err(err)?;
    weft_log::sync_dir(dir).map_err(err)
}
