//! The embedded engine: the default [`Store`], durable in a data directory.
//!
//! State lives in memory as a multi-version index (`mvcc`); every write is appended to a
//! checksummed log before it is acknowledged, and the log is periodically replaced by a snapshot.
//! Reads and watches only ever see revisions whose log records are durable, so nothing a client
//! observed can be lost by a crash. See `ARCHITECTURE.md` for the invariants.

mod backup;
mod codec;
mod defer;
mod hub;
mod mvcc;
mod repl;
mod wal;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use async_trait::async_trait;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{watch, Notify};
use tokio::time::{Duration, Instant};

pub use self::backup::{restore, verify_backup, BackupInfo};
pub use self::defer::{defer_flushes, flush_deferred};
use self::mvcc::{Mvcc, Writer};
pub use self::repl::{Applied, DurablePoint, FeedChunk, FeedNext, LogSince};
use self::wal::Log;
use crate::types::*;
use crate::watch::{EventType, WatchControl, WatchRequest, WatchResponse, WatchStream};
use crate::{check_key, check_size, check_txn, Limits, Result, Store, StoreError};

/// When a write is acknowledged relative to `fsync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every write gets its own `fsync` before it is acknowledged.
    Always,
    /// Concurrent writes share one `fsync`; none is acknowledged before the `fsync` that covers
    /// it. As safe as `Always`, much faster under concurrency. The default.
    #[default]
    Group,
    /// Writes reach the OS (they survive a process crash) but are never `fsync`ed: a power loss
    /// or kernel crash can lose acknowledged writes. For development only.
    None,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(Durability::Always),
            "group" => Ok(Durability::Group),
            "none" => Ok(Durability::None),
            other => Err(format!(
                "unknown fsync mode {other:?}; allowed: always, group, none"
            )),
        }
    }
}

/// Automatic compaction policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompact {
    /// Never compact automatically.
    Off,
    /// Keep at least this many revisions of history (checked every 5 s: a compaction costs
    /// the changes it covers, see `Mvcc::changed`, so history is trimmed while it is short).
    Revisions(i64),
    /// Keep at least this much time of history (sampled every tenth of it, as etcd's periodic
    /// mode).
    Period(Duration),
}

/// Settings of the embedded engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// fsync policy.
    pub durability: Durability,
    /// Request limits.
    pub limits: Limits,
    /// Write a snapshot and start a new log once the log holds this many bytes, or as many
    /// bytes as the last snapshot if that is larger (Redis's AOF rewrite rule, at 100 %): a
    /// large state is not rewritten for every small stretch of log, and recovery replays at
    /// most about the state's size of log.
    pub snapshot_bytes: u64,
    /// Interval of progress notifications for watches that ask for them.
    pub progress_interval: Duration,
    /// Automatic compaction.
    pub auto_compact: AutoCompact,
    /// Group commit delay: when writes are arriving concurrently (the last flush or the queue
    /// holds at least two records), the flusher waits this long before taking the queue, so
    /// that one fsync covers more writes (PostgreSQL's `commit_delay`). A lone writer is never
    /// delayed. Zero turns it off.
    pub commit_delay: Duration,
    /// Write the log with direct I/O (`O_DIRECT | O_DSYNC`) where the file system allows it:
    /// one syscall per group commit instead of `write` + `fdatasync`, with a third to a half of
    /// the kernel CPU and 30–60 % less latency per commit on ext4
    /// (docs/runs/etcd-api.md, "direct I/O for the log").
    /// Equally durable. Falls back to `write` + `fdatasync` by itself where direct I/O is
    /// refused (some tmpfs), and is not used with [`Durability::None`]. See
    /// [`Stats::direct_io`].
    pub direct_io: bool,
    /// Run the log thread under `SCHED_BATCH` (Linux): its wake-ups do not preempt the
    /// threads that feed it (see `embedded/sched.rs`); the snapshot thread it starts inherits
    /// the policy. No privilege needed. A thread started under another policy than the
    /// default (`chrt`: real-time, idle) keeps it; false keeps the default policy.
    pub log_thread_batch: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Group,
            limits: Limits::default(),
            snapshot_bytes: 64 * 1024 * 1024,
            progress_interval: Duration::from_secs(600),
            auto_compact: AutoCompact::Revisions(100_000),
            commit_delay: Duration::ZERO,
            log_thread_batch: true,
            direct_io: true,
        }
    }
}

/// Counters of the write path, and the watchers open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Log records written.
    pub records: u64,
    /// Durable flushes made (fewer than records under group commit): `fsync` calls, or writes
    /// that are durable by themselves with direct I/O.
    pub fsyncs: u64,
    /// Whether the log is written with direct I/O ([`Options::direct_io`]).
    pub direct_io: bool,
    /// Of `fsyncs`, the durable writes made by a thread that writes its own records
    /// ([`defer_flushes`]) rather than by the log thread.
    pub inline_writes: u64,
    /// Watchers registered now: one per open [`WatchStream`], until it
    /// is dropped.
    pub watchers: u64,
    /// Range requests served.
    pub reads: u64,
    /// Watch events delivered, summed over watchers.
    pub watch_events: u64,
}

/// The embedded store. Dropping it (or [`Embedded::close`]) flushes the log and releases the
/// data directory.
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<Mvcc>,
    log: Arc<Log>,
    opts: Options,
    dir: PathBuf,
    lock: Mutex<Option<File>>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
    lease_wake: Arc<Notify>,
    /// Wakes the sweeper after a compaction.
    sweep_wake: Arc<Notify>,
    /// The primary this store replicates (see `Embedded::set_primary`).
    primary: RwLock<Option<String>>,
    /// Whether `primary` is set: client writes are refused, leases do not expire here.
    replica: AtomicBool,
    /// Range requests served (see [`Stats::reads`]).
    reads: AtomicU64,
    /// Watch events delivered (see [`Stats::watch_events`]).
    watch_events: AtomicU64,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    weft_log::lock_dir(dir).map_err(|e| match e {
        weft_log::DirLockError::Io(m) => StoreError::Storage(m),
        weft_log::DirLockError::InUse(m) => StoreError::Locked(m),
    })
}

impl Embedded {
    /// Opens (or creates) a store in `dir`, recovering its state. Fails with
    /// [`StoreError::Locked`] if another process uses the directory and with
    /// [`StoreError::Corrupt`] if its files are damaged beyond a torn last record.
    pub async fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock_dir(&dir)?;
        let rec = wal::recover(&dir, Instant::now())?;
        let file = wal::open_log(
            &dir,
            rec.gen,
            rec.end,
            rec.tail,
            weft_log::LogIo {
                sync: opts.durability != Durability::None,
                direct: opts.direct_io,
            },
        )?;
        let log = Arc::new(Log::new(
            rec.gen,
            rec.state.rev,
            opts.snapshot_bytes,
            rec.snap_bytes,
            rec.bytes,
            rec.data,
        ));
        log.direct_io.store(file.direct(), Ordering::Relaxed);
        let (closed_tx, _) = watch::channel(false);
        let flusher = {
            let log = log.clone();
            let dir = dir.clone();
            let mode = opts.durability;
            let delay = opts.commit_delay;
            let batch = opts.log_thread_batch;
            std::thread::Builder::new()
                .name("weft-wal".into())
                .spawn(move || {
                    if batch {
                        if let Err(e) = weft_log::sched::batch_policy_for_this_thread() {
                            tracing::debug!("log thread keeps the default policy: {e}");
                        }
                    }
                    log.run(dir, file, mode, delay)
                })
                .map_err(|e| StoreError::Storage(format!("cannot start log thread: {e}")))?
        };
        let inner = Arc::new(Inner {
            state: RwLock::new(rec.state),
            log,
            opts,
            dir,
            lock: Mutex::new(Some(lock)),
            flusher: Mutex::new(Some(flusher)),
            closed: AtomicBool::new(false),
            closed_tx,
            lease_wake: Arc::new(Notify::new()),
            sweep_wake: Arc::new(Notify::new()),
            primary: RwLock::new(None),
            replica: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            watch_events: AtomicU64::new(0),
        });
        tokio::spawn(sweeper(
            Arc::downgrade(&inner),
            inner.sweep_wake.clone(),
            inner.closed_tx.subscribe(),
        ));
        tokio::spawn(lease_expiry(
            Arc::downgrade(&inner),
            inner.lease_wake.clone(),
            inner.closed_tx.subscribe(),
        ));
        if inner.opts.auto_compact != AutoCompact::Off {
            tokio::spawn(auto_compact(
                Arc::downgrade(&inner),
                inner.closed_tx.subscribe(),
            ));
        }
        Ok(Embedded { inner })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Write-path counters.
    pub fn stats(&self) -> Stats {
        Stats {
            records: self.inner.log.records.load(Ordering::Relaxed),
            fsyncs: self.inner.log.fsyncs.load(Ordering::Relaxed),
            direct_io: self.inner.log.direct_io.load(Ordering::Relaxed),
            inline_writes: self.inner.log.inline_writes.load(Ordering::Relaxed),
            watchers: self.inner.log.hub.len() as u64,
            reads: self.inner.reads.load(Ordering::Relaxed),
            watch_events: self.inner.watch_events.load(Ordering::Relaxed),
        }
    }

    /// Writes a snapshot now and starts a new log (normally done automatically by size).
    /// Returns once the snapshot file is written.
    pub async fn snapshot(&self) -> Result<()> {
        self.inner.snapshot().await
    }

    /// Flushes the log, stops background tasks and watches, and releases the data directory.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    async fn snapshot(&self) -> Result<()> {
        self.check_writable()?;
        let (seq, gen) = {
            let st = self.state.read().expect("state poisoned");
            self.log.snapshot_now(&st)
        };
        self.wait_durable(seq).await?;
        let mut done = self.log.snap_done.subscribe();
        let d = done
            .wait_for(|(g, _)| *g >= gen)
            .await
            .map_err(|_| StoreError::Closed)?;
        match &d.1 {
            Some(e) => Err(StoreError::Storage(e.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.closed_tx.send_replace(true);
        self.log.shutdown();
        if let Some(t) = self.flusher.lock().expect("poisoned").take() {
            let _ = t.join();
        }
        self.lock.lock().expect("poisoned").take();
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if let Some(f) = &self.log.durable.borrow().failed {
            return Err(StoreError::Storage(f.clone()));
        }
        Ok(())
    }

    /// Refuses client writes on a replica.
    fn check_primary(&self) -> Result<()> {
        if self.replica.load(Ordering::Relaxed) {
            let p = self.primary.read().expect("role poisoned").clone();
            return Err(StoreError::NotPrimary(p.unwrap_or_default()));
        }
        Ok(())
    }

    /// The newest revision whose log records are durable: what reads see.
    fn visible(&self) -> i64 {
        self.log.durable.borrow().rev
    }

    async fn wait_durable(&self, seq: u64) -> Result<()> {
        let rx = match self.log.wait(seq) {
            wal::Wait::Durable => return Ok(()),
            wal::Wait::Failed(f) => return Err(StoreError::Storage(f)),
            wal::Wait::Pending(rx) => rx,
        };
        if rx.await.is_ok() {
            return Ok(());
        }
        // The flusher stopped before this record was durable: it failed, or the store closed.
        match &self.log.durable.borrow().failed {
            Some(f) => Err(StoreError::Storage(f.clone())),
            None => Err(StoreError::Closed),
        }
    }

    /// Runs one write: `f` validates, then mutates through the writer; the batch is logged and
    /// the call returns once it is durable. Returns `f`'s output and the revision after.
    async fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<(T, i64)> {
        self.check_writable()?;
        self.check_primary()?;
        let deferred = defer::enabled();
        let (out, rev, seq, wake, logged) = {
            let mut st = self.state.write().expect("state poisoned");
            let mut w = Writer::new(&mut st, Instant::now());
            let out = f(&mut w)?;
            let batch = w.finish();
            let rev = st.rev;
            let (seq, wake, logged) = match batch {
                Some(b) => {
                    let (seq, wake) = self.log.append(&st, b, deferred);
                    (seq, wake, true)
                }
                None => (self.log.last_seq(), false, false),
            };
            (out, rev, seq, wake, logged)
        };
        if wake {
            self.log.wake();
        }
        if deferred && logged {
            defer::register(&self.log);
        }
        self.wait_durable(seq).await?;
        Ok((out, rev))
    }
}

fn do_range(st: &Mvcc, req: &RangeRequest, rev: i64, header_rev: i64) -> RangeResponse {
    let mut kvs = Vec::new();
    let mut count = 0i64;
    for kv in st.live_at(&req.range, rev) {
        count += 1;
        if !req.count_only && (req.limit == 0 || (kvs.len() as i64) < req.limit) {
            let mut kv = (**kv).clone();
            if req.keys_only {
                kv.value = Default::default();
            }
            kvs.push(kv);
        }
    }
    RangeResponse {
        header: ResponseHeader {
            revision: header_rev,
        },
        more: req.limit > 0 && count > req.limit,
        kvs,
        count,
    }
}

fn check_range(req: &RangeRequest) -> Result<()> {
    check_key(&req.range.key)?;
    if req.limit < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "limit {} must be >= 0",
            req.limit
        )));
    }
    if req.revision < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "revision {} must be >= 0",
            req.revision
        )));
    }
    Ok(())
}

fn compare_holds(st: &Mvcc, c: &Compare) -> bool {
    let mut any = false;
    for kv in st.live_at(&c.range, i64::MAX) {
        any = true;
        if !compare_kv(c, kv) {
            return false;
        }
    }
    if any {
        return true;
    }
    // etcd: a value compare on a missing key always fails; others compare against zeroes.
    if matches!(c.target, CompareTarget::Value(_)) {
        return false;
    }
    compare_kv(c, &KeyValue::default())
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering as O;
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value[..].cmp(&v[..]),
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::CreateRevision(n) => kv.create_revision.cmp(n),
        CompareTarget::ModRevision(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
    };
    match c.op {
        CompareOp::Equal => ord == O::Equal,
        CompareOp::NotEqual => ord != O::Equal,
        CompareOp::Less => ord == O::Less,
        CompareOp::Greater => ord == O::Greater,
    }
}

/// Validates the operations a transaction will run (its chosen branches, nested ones
/// included) before anything is applied (etcd's checks: leases exist, no key written twice,
/// readable revisions).
fn check_branch<'a>(st: &Mvcc, ops: impl IntoIterator<Item = &'a TxnOp>) -> Result<()> {
    let mut puts: HashSet<&[u8]> = HashSet::new();
    let mut dels: Vec<&KeyRange> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put(p) => {
                if p.lease != 0 && !st.leases.contains_key(&p.lease) {
                    return Err(StoreError::LeaseNotFound(p.lease));
                }
                if !puts.insert(&p.key[..]) {
                    return Err(StoreError::DuplicateKey);
                }
            }
            TxnOp::Delete(d) => dels.push(&d.range),
            TxnOp::Range(r) => {
                check_range(r)?;
                if r.revision != 0 {
                    st.check_read_rev(r.revision, st.rev)?;
                }
            }
            TxnOp::Txn(_) => {}
        }
    }
    if puts.iter().any(|k| dels.iter().any(|d| d.contains(k))) {
        return Err(StoreError::DuplicateKey);
    }
    Ok(())
}

/// The branch each transaction takes, the outer one first, then the nested ones in order:
/// every compare is evaluated on the state before any operation applies (etcd's
/// `compareToPath`).
fn txn_path(st: &Mvcc, req: &TxnRequest, path: &mut Vec<bool>) {
    let ok = req.compare.iter().all(|c| compare_holds(st, c));
    path.push(ok);
    for op in if ok { &req.success } else { &req.failure } {
        if let TxnOp::Txn(t) = op {
            txn_path(st, t, path);
        }
    }
}

/// The operations `path` chooses, nested ones in place.
fn chosen<'a>(
    req: &'a TxnRequest,
    path: &mut std::slice::Iter<'_, bool>,
    out: &mut Vec<&'a TxnOp>,
) {
    let ok = path.next().copied().unwrap_or(false);
    for op in if ok { &req.success } else { &req.failure } {
        match op {
            TxnOp::Txn(t) => chosen(t, path, out),
            op => out.push(op),
        }
    }
}

/// Runs the branch `path` chooses; returns whether its compares held and one response per
/// operation (headers filled in by `with_header`).
fn run_txn(
    w: &mut Writer<'_>,
    req: &TxnRequest,
    path: &mut std::slice::Iter<'_, bool>,
) -> (bool, Vec<TxnOpResponse>) {
    let ok = path.next().copied().unwrap_or(false);
    let ops = if ok { &req.success } else { &req.failure };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match op {
            TxnOp::Range(r) => {
                let rev = if r.revision == 0 {
                    i64::MAX
                } else {
                    r.revision
                };
                // As etcd: the revision the txn has reached at this read (its writes so far).
                let now = w.m.rev + i64::from(!w.batch.changes.is_empty());
                TxnOpResponse::Range(do_range(w.m, r, rev, now))
            }
            TxnOp::Put(p) => {
                let prev = w.put(p.key.clone(), p.value.clone(), p.lease);
                TxnOpResponse::Put(PutResponse {
                    header: ResponseHeader::default(),
                    prev_kv: prev.filter(|_| p.prev_kv).map(Arc::unwrap_or_clone),
                })
            }
            TxnOp::Delete(d) => {
                let prevs = w.delete_range(&d.range);
                TxnOpResponse::Delete(DeleteResponse {
                    header: ResponseHeader::default(),
                    deleted: prevs.len() as i64,
                    prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
                })
            }
            TxnOp::Txn(t) => {
                let (succeeded, responses) = run_txn(w, t, path);
                TxnOpResponse::Txn(TxnResponse {
                    header: ResponseHeader::default(),
                    succeeded,
                    responses,
                })
            }
        });
    }
    (ok, out)
}

/// The transaction's revision in every response, nested ones included.
/// (A read keeps the revision it was made at.)
fn with_header(r: TxnOpResponse, header: ResponseHeader) -> TxnOpResponse {
    match r {
        TxnOpResponse::Range(x) => TxnOpResponse::Range(x),
        TxnOpResponse::Put(x) => TxnOpResponse::Put(PutResponse { header, ..x }),
        TxnOpResponse::Delete(x) => TxnOpResponse::Delete(DeleteResponse { header, ..x }),
        TxnOpResponse::Txn(x) => TxnOpResponse::Txn(TxnResponse {
            header,
            responses: x
                .responses
                .into_iter()
                .map(|r| with_header(r, header))
                .collect(),
            ..x
        }),
    }
}

struct Ctl {
    progress: Arc<Notify>,
    cancel: Arc<Notify>,
    cancelled: AtomicBool,
}

impl WatchControl for Arc<Ctl> {
    fn request_progress(&self) {
        self.progress.notify_one();
    }
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_one();
    }
}

/// Most revisions packed into one watch response.
const MAX_REVS_PER_RESPONSE: i64 = 1000;

/// One watch of the embedded store, run by whoever reads its [`WatchStream`]: each message
/// is made when it is asked for, in the reader's task (no task or channel per watch; the
/// etcd API's watch streams read it directly).
struct Watcher {
    inner: Arc<Inner>,
    req: WatchRequest,
    /// The next revision to deliver.
    next: i64,
    /// Woken by the flushes that change a key in the range, which also say from which
    /// revision (see `hub`).
    changes: hub::Registration,
    /// Revisions up to `floor`, visible when the watcher started, are all scanned (a watch
    /// can start in the past); after it, only from the first change in the range.
    floor: i64,
    /// `(vis, first)` of the last [`hub::Registration::take`] while revisions up to `vis`
    /// are still to be scanned (a message was returned half-way).
    taken: Option<(i64, i64)>,
    closed: watch::Receiver<bool>,
    ticker: tokio::time::Interval,
    progress_due: bool,
    ctl: Arc<Ctl>,
    // Kept across messages, so that each is registered once, not once per message.
    changed: Pin<Box<OwnedNotified>>,
    cancel: Pin<Box<OwnedNotified>>,
    progress: Pin<Box<OwnedNotified>>,
}

impl Watcher {
    fn new(inner: Arc<Inner>, req: WatchRequest, next: i64, ctl: Arc<Ctl>) -> Self {
        let changes = inner.log.hub.register(req.range.clone());
        let floor = inner.visible();
        let closed = inner.closed_tx.subscribe();
        let period = inner.opts.progress_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        // Ticks are polled only while the stream is read: one notification after a pause,
        // not a burst of the missed ones.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watcher {
            changed: Box::pin(changes.changed()),
            cancel: Box::pin(ctl.cancel.clone().notified_owned()),
            progress: Box::pin(ctl.progress.clone().notified_owned()),
            ticker,
            inner,
            req,
            next,
            changes,
            floor,
            taken: None,
            closed,
            progress_due: false,
            ctl,
        }
    }

    /// The next message: events, a progress notice, an error, or `None` once cancelled or
    /// the store closed. Not called again after `None` or an error: [`WatchStream`] ends
    /// there.
    async fn message(&mut self) -> Option<Result<WatchResponse>> {
        loop {
            if self.ctl.cancelled.load(Ordering::SeqCst) || *self.closed.borrow() {
                return None;
            }
            let (vis, first) = match self.taken.take() {
                Some(t) => t,
                None => self.changes.take(|| self.inner.visible()),
            };
            while self.next <= vis {
                if self.next > self.floor && self.next < first {
                    // Nothing in the range changed in between.
                    self.next = first;
                    continue;
                }
                let upto = vis.min(self.next + MAX_REVS_PER_RESPONSE - 1);
                let evs = self.inner.state.read().expect("state poisoned").events(
                    &self.req.range,
                    self.next,
                    upto,
                );
                let mut evs = match evs {
                    Ok(e) => e,
                    Err(e) => return Some(Err(e)),
                };
                evs.retain(|e| match e.kind {
                    EventType::Put => !self.req.no_put,
                    EventType::Delete => !self.req.no_delete,
                });
                if !self.req.prev_kv {
                    for e in &mut evs {
                        e.prev_kv = None;
                    }
                }
                self.next = upto + 1;
                if !evs.is_empty() {
                    self.inner
                        .watch_events
                        .fetch_add(evs.len() as u64, Ordering::Relaxed);
                    if self.next <= vis {
                        self.taken = Some((vis, first));
                    }
                    return Some(Ok(WatchResponse {
                        revision: vis,
                        events: evs,
                    }));
                }
            }
            // Everything up to `vis` has been delivered: a progress notification can say so.
            if std::mem::take(&mut self.progress_due) {
                return Some(Ok(WatchResponse {
                    revision: vis,
                    events: Vec::new(),
                }));
            }
            let Watcher {
                changes,
                ctl,
                ticker,
                closed,
                req,
                changed,
                cancel,
                progress,
                progress_due,
                ..
            } = self;
            tokio::select! {
                _ = changed.as_mut() => changed.set(changes.changed()),
                _ = progress.as_mut() => {
                    *progress_due = true;
                    progress.set(ctl.progress.clone().notified_owned());
                }
                _ = ticker.tick(), if req.progress_notify => *progress_due = true,
                _ = cancel.as_mut() => return None,
                _ = closed.changed() => return Some(Err(StoreError::Closed)),
            }
        }
    }
}

async fn lease_expiry(inner: Weak<Inner>, wake: Arc<Notify>, mut closed: watch::Receiver<bool>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            // A replica's leases end by the primary's records.
            let replica = inner.replica.load(Ordering::Relaxed);
            let expired = match replica {
                true => Vec::new(),
                false => inner.state.read().expect("state poisoned").expired(now),
            };
            for id in expired {
                match inner.write(|w| Ok(w.revoke(id))).await {
                    Ok(_) => tracing::debug!(lease = id, "lease expired"),
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "cannot expire lease");
                        return;
                    }
                }
            }
            let next = inner.state.read().expect("state poisoned").next_deadline();
            next.filter(|_| !replica)
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            _ = wake.notified() => {}
            _ = closed.changed() => return,
        }
    }
}

/// Keys whose histories the sweeper trims per turn of the state lock: a few hundred
/// microseconds of holding it, where trimming 64k keys at once took ~140 ms.
const SWEEP_KEYS: usize = 256;
/// History entries the sweeper takes out per turn, however few keys hold them: with 64 keys
/// of 45k revisions each in one turn, `weft bench etcd-api --workloads txn` saw a 1.9 s
/// maximum latency across a compaction (0.29 s with this bound).
const SWEEP_ENTRIES: usize = 4096;

/// Trims key histories after each compaction (see `Mvcc::sweep`), a slice of keys per
/// turn of the state lock, yielding in between so that reads and writes interleave.
async fn sweeper(inner: Weak<Inner>, wake: Arc<Notify>, mut closed: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = closed.changed() => return,
        }
        loop {
            let Some(inner) = inner.upgrade() else { return };
            if *closed.borrow() {
                return;
            }
            let (more, garbage) = inner
                .state
                .write()
                .expect("state poisoned")
                .sweep(SWEEP_KEYS, SWEEP_ENTRIES);
            // Freed with the lock released.
            drop(garbage);
            drop(inner);
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

async fn auto_compact(inner: Weak<Inner>, mut closed: watch::Receiver<bool>) {
    let Some(policy) = inner.upgrade().map(|i| i.opts.auto_compact) else {
        return;
    };
    let every = match policy {
        AutoCompact::Off => return,
        AutoCompact::Revisions(_) => Duration::from_secs(5),
        AutoCompact::Period(p) => (p / 10).max(Duration::from_millis(100)),
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = closed.changed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.replica.load(Ordering::Relaxed) {
            continue;
        }
        let (vis, compacted) = (
            inner.visible(),
            inner.state.read().expect("state poisoned").compact_rev,
        );
        let target = match policy {
            AutoCompact::Off => return,
            AutoCompact::Revisions(keep) => vis - keep,
            AutoCompact::Period(p) => {
                let now = Instant::now();
                samples.push_back((now, vis));
                let mut target = 0;
                while let Some((t, r)) = samples.front().copied() {
                    if now.duration_since(t) >= p {
                        target = r;
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                target
            }
        };
        if target > compacted {
            match Store::compact(&EmbeddedRef(inner.clone()), target).await {
                Ok(_) => tracing::info!(revision = target, "auto-compacted"),
                Err(e) => tracing::warn!(error = %e, "auto-compaction failed"),
            }
        }
    }
}

/// The store implementation, shared by [`Embedded`] and internal tasks.
struct EmbeddedRef(Arc<Inner>);

#[async_trait]
impl Store for Embedded {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        EmbeddedRef(self.inner.clone()).range(req).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        EmbeddedRef(self.inner.clone()).put(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        EmbeddedRef(self.inner.clone()).delete(req).await
    }
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        EmbeddedRef(self.inner.clone()).txn(req).await
    }
    async fn compact(&self, revision: i64) -> Result<CompactResponse> {
        EmbeddedRef(self.inner.clone()).compact(revision).await
    }
    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        EmbeddedRef(self.inner.clone()).lease_grant(ttl, id).await
    }
    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader> {
        EmbeddedRef(self.inner.clone()).lease_revoke(id).await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        EmbeddedRef(self.inner.clone()).lease_keep_alive(id).await
    }
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        EmbeddedRef(self.inner.clone())
            .lease_time_to_live(id, keys)
            .await
    }
    async fn lease_list(&self) -> Result<Vec<i64>> {
        EmbeddedRef(self.inner.clone()).lease_list().await
    }
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        EmbeddedRef(self.inner.clone()).watch(req).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        EmbeddedRef(self.inner.clone()).hash_kv(revision).await
    }
    async fn status(&self) -> Result<StatusResponse> {
        EmbeddedRef(self.inner.clone()).status().await
    }
    async fn backup(&self) -> Result<Backup> {
        EmbeddedRef(self.inner.clone()).backup().await
    }
    async fn defragment(&self) -> Result<ResponseHeader> {
        EmbeddedRef(self.inner.clone()).defragment().await
    }
    fn limits(&self) -> Limits {
        self.inner.opts.limits
    }
    fn thread_flushes(&self) -> Option<crate::ThreadFlushes> {
        Some(crate::ThreadFlushes {
            defer: |min_batch| Box::pin(defer_flushes(min_batch)),
            flush: flush_deferred,
        })
    }
}

#[async_trait]
impl Store for EmbeddedRef {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        check_range(&req)?;
        self.0.reads.fetch_add(1, Ordering::Relaxed);
        let vis = self.0.visible();
        let st = self.0.state.read().expect("state poisoned");
        let rev = if req.revision == 0 {
            vis
        } else {
            st.check_read_rev(req.revision, vis)?;
            req.revision
        };
        Ok(do_range(&st, &req, rev, vis))
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        check_key(&req.key)?;
        let limits = self.0.opts.limits;
        check_size(req.key.len() + req.value.len(), &limits)?;
        let PutRequest {
            key,
            value,
            lease,
            prev_kv,
        } = req;
        let (prev, rev) = self
            .0
            .write(|w| {
                if lease != 0 && !w.m.leases.contains_key(&lease) {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                Ok(w.put(key, value, lease))
            })
            .await?;
        Ok(PutResponse {
            header: ResponseHeader { revision: rev },
            prev_kv: prev.filter(|_| prev_kv).map(Arc::unwrap_or_clone),
        })
    }

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        check_key(&req.range.key)?;
        let (prevs, rev) = self.0.write(|w| Ok(w.delete_range(&req.range))).await?;
        Ok(DeleteResponse {
            header: ResponseHeader { revision: rev },
            deleted: prevs.len() as i64,
            prev_kvs: if req.prev_kv { prevs } else { Vec::new() },
        })
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        check_txn(&req, &self.0.opts.limits)?;
        let ((succeeded, responses), rev) = self
            .0
            .write(|w| {
                let mut path = Vec::new();
                txn_path(w.m, &req, &mut path);
                let mut ops = Vec::new();
                chosen(&req, &mut path.iter(), &mut ops);
                check_branch(w.m, ops)?;
                Ok(run_txn(w, &req, &mut path.iter()))
            })
            .await?;
        let header = ResponseHeader { revision: rev };
        let responses = responses
            .into_iter()
            .map(|r| with_header(r, header))
            .collect();
        Ok(TxnResponse {
            header,
            succeeded,
            responses,
        })
    }

    async fn compact(&self, revision: i64) -> Result<CompactResponse> {
        let vis = self.0.visible();
        let ((), rev) = self
            .0
            .write(|w| {
                if revision <= w.m.compact_rev {
                    return Err(StoreError::Compacted {
                        requested: revision,
                        compact_revision: w.m.compact_rev,
                    });
                }
                if revision > vis {
                    return Err(StoreError::FutureRevision {
                        requested: revision,
                        current: vis,
                    });
                }
                w.compact(revision);
                Ok(())
            })
            .await?;
        self.0.sweep_wake.notify_one();
        Ok(CompactResponse {
            header: ResponseHeader { revision: rev },
        })
    }

    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let limits = self.0.opts.limits;
        if ttl > limits.max_lease_ttl {
            return Err(StoreError::LeaseTtlTooLarge {
                ttl,
                max: limits.max_lease_ttl,
            });
        }
        if id < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "lease id {id} must be >= 0 (0 picks one)"
            )));
        }
        let ttl = ttl.max(limits.min_lease_ttl);
        let (id, rev) = self
            .0
            .write(|w| {
                if id != 0 && w.m.leases.contains_key(&id) {
                    return Err(StoreError::LeaseExists(id));
                }
                let id = if id == 0 { w.m.new_lease_id() } else { id };
                w.grant(id, ttl);
                Ok(id)
            })
            .await?;
        self.0.lease_wake.notify_one();
        Ok(LeaseGrantResponse {
            header: ResponseHeader { revision: rev },
            id,
            ttl,
        })
    }

    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader> {
        let ((), rev) = self
            .0
            .write(|w| {
                if w.revoke(id) {
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound(id))
                }
            })
            .await?;
        Ok(ResponseHeader { revision: rev })
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.0.check_writable()?;
        self.0.check_primary()?;
        let now = Instant::now();
        let mut st = self.0.state.write().expect("state poisoned");
        let rev = st.rev;
        match st.leases.get_mut(&id) {
            Some(l) if l.deadline > now => {
                l.deadline = mvcc::deadline(now, l.ttl);
                Ok(LeaseKeepAliveResponse {
                    header: ResponseHeader { revision: rev },
                    id,
                    ttl: l.ttl,
                })
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let vis = self.0.visible();
        let st = self.0.state.read().expect("state poisoned");
        let l = st.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        let remaining = l
            .deadline
            .saturating_duration_since(Instant::now())
            .as_secs() as i64;
        Ok(LeaseTimeToLiveResponse {
            header: ResponseHeader { revision: vis },
            id,
            ttl: remaining,
            granted_ttl: l.ttl,
            keys: if keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    async fn lease_list(&self) -> Result<Vec<i64>> {
        let st = self.0.state.read().expect("state poisoned");
        let mut ids: Vec<i64> = st.leases.keys().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        check_key(&req.range.key)?;
        if req.start_revision < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "start revision {} must be >= 0",
                req.start_revision
            )));
        }
        self.0.check_writable()?;
        let start = if req.start_revision == 0 {
            self.0.visible() + 1
        } else {
            req.start_revision
        };
        let ctl = Arc::new(Ctl {
            progress: Arc::new(Notify::new()),
            cancel: Arc::new(Notify::new()),
            cancelled: AtomicBool::new(false),
        });
        let w = Watcher::new(self.0.clone(), req, start, ctl.clone());
        let source = futures::stream::unfold(w, |mut w| async move {
            let m = w.message().await?;
            Some((m, w))
        });
        Ok(WatchStream::from_stream(source, Box::new(ctl)))
    }

    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        let vis = self.0.visible();
        let st = self.0.state.read().expect("state poisoned");
        let rev = if revision == 0 {
            vis
        } else {
            st.check_read_rev(revision, vis)?;
            revision
        };
        Ok(HashKvResponse {
            header: ResponseHeader { revision: vis },
            hash: st.hash_at(rev),
            compact_revision: st.compact_rev,
            hash_revision: rev,
        })
    }

    async fn status(&self) -> Result<StatusResponse> {
        let vis = self.0.visible();
        let compact_revision = self.0.state.read().expect("state poisoned").compact_rev;
        Ok(StatusResponse {
            header: ResponseHeader { revision: vis },
            compact_revision,
            db_size: self.0.log.disk_bytes() as i64,
            version: format!("weft-embedded {}", env!("CARGO_PKG_VERSION")),
        })
    }

    async fn backup(&self) -> Result<Backup> {
        self.0.check_writable()?;
        // Under the read lock: every write applied so far has a log record at or before
        // `seq`, so once that is durable, so is everything the copy holds.
        let (snap, seq) = {
            let st = self.0.state.read().expect("state poisoned");
            (st.snapshot(), self.0.log.last_seq())
        };
        let revision = snap.rev;
        self.0.wait_durable(seq).await?;
        let dir = self.0.dir.clone();
        let (file, len) = tokio::task::spawn_blocking(move || {
            backup::write_temp(&dir, &snap).map_err(|e| {
                StoreError::Storage(format!("cannot write a backup in {}: {e}", dir.display()))
            })
        })
        .await
        .map_err(|e| StoreError::Storage(format!("backup writer stopped: {e}")))??;
        Ok(Backup {
            format: BackupFormat::Weft,
            revision,
            size: Some(len),
            chunks: backup::chunks(file),
        })
    }

    async fn defragment(&self) -> Result<ResponseHeader> {
        self.0.snapshot().await?;
        Ok(ResponseHeader {
            revision: self.0.visible(),
        })
    }

    fn limits(&self) -> Limits {
        self.0.opts.limits
    }
}

#[cfg(test)]
mod repl_tests;
#[cfg(test)]
mod tests;
