//! Replication hooks of the embedded engine (used by `weft-repl`).
//!
//! A primary streams its durable log records to replicas: the newest ones from an in-memory
//! feed of the groups the log thread made durable ([`Embedded::feed_from`]), older ones read
//! back from the log files still in the data dir ([`Embedded::log_since`]). A replica applies
//! them with [`Embedded::apply_records`]: the same records, at the same revisions, logged and
//! made durable by its own log thread.
//!
//! Positions. A record carries the store revision after it; records that change no key (a
//! lease grant, a compaction, the revoke of a lease without keys) carry the current revision,
//! so several records can share one. A replica at revision `r` therefore takes every record
//! after `r` and, again, the no-change records at `r` itself: applying those twice is
//! harmless, because each sets a lease or the compaction point to a value and they come in the
//! same order. Acknowledgements use the primary's sequence numbers instead (one per record,
//! per process), so a write is confirmed only once a replica holds that very record.

use std::collections::VecDeque;
use std::fs;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::wal::{self, Log};
use super::{codec, mvcc, Embedded, Inner};
use crate::{Result, StoreError};
use weft_log::{LogTail, RECORD_HEADER};

/// One group of records the log made durable, as framed on disk.
#[derive(Debug)]
pub struct FeedChunk {
    /// Position of the chunk in the feed (consecutive).
    pub id: u64,
    /// Revision of the first record.
    pub first_rev: i64,
    /// Revision of the last record.
    pub last_rev: i64,
    /// The primary's sequence number of the last record.
    pub last_seq: u64,
    /// The framed records (`len | crc32 | payload` each).
    pub bytes: Bytes,
}

/// What [`Embedded::feed_next`] found.
#[derive(Debug)]
pub enum FeedNext {
    /// The chunk at the cursor.
    Chunk(Arc<FeedChunk>),
    /// Nothing yet: wait on [`Embedded::feed_watch`].
    Pending,
    /// The chunk at the cursor has left the feed (it keeps a bounded number of bytes): start
    /// again from the replica's revision.
    Lost,
}

/// Records read back from the log files ([`Embedded::log_since`]).
#[derive(Debug)]
pub struct LogSince {
    /// The framed records at or after the revision asked for.
    pub bytes: Vec<u8>,
    /// Every record up to this sequence number of the primary is in `bytes` or older than the
    /// revision asked for.
    pub upto_seq: u64,
    /// The revision the records reach.
    pub rev: i64,
}

/// What [`Embedded::apply_records`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The replica's revision after the records.
    pub rev: i64,
    /// Records applied (records already held are skipped).
    pub records: u64,
    /// The local sequence number to wait for ([`Embedded::wait_local`]); 0 when nothing was
    /// logged.
    pub seq: u64,
}

/// The log's durable point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurablePoint {
    /// Records up to this sequence number (of this process) are durable.
    pub seq: u64,
    /// The revision they reach: what reads see.
    pub rev: i64,
}

struct Ring {
    chunks: VecDeque<Arc<FeedChunk>>,
    bytes: usize,
    next_id: u64,
    /// Records at or below this revision may have left the feed (or came before it started).
    evicted_rev: i64,
}

/// The feed of durable records, filled by whoever writes the log (under its writer lock).
pub(crate) struct Feed {
    ring: Mutex<Ring>,
    /// Bytes written by the current group, waiting for the group's publish.
    staged: Mutex<Vec<u8>>,
    tx: watch::Sender<u64>,
    cap: usize,
}

impl Feed {
    fn new(cap: usize, rev: i64) -> Self {
        Feed {
            ring: Mutex::new(Ring {
                chunks: VecDeque::new(),
                bytes: 0,
                next_id: 0,
                evicted_rev: rev,
            }),
            staged: Mutex::new(Vec::new()),
            tx: watch::channel(0).0,
            cap,
        }
    }

    /// Called with the bytes of a durable write, before the log clears its buffer.
    pub(crate) fn stage(&self, buf: &[u8]) {
        self.staged
            .lock()
            .expect("feed poisoned")
            .extend_from_slice(buf);
    }

    /// Called when records up to `seq` are published: what was staged becomes a chunk.
    pub(crate) fn commit(&self, seq: u64) {
        let bytes = std::mem::take(&mut *self.staged.lock().expect("feed poisoned"));
        let Some((first_rev, last_rev)) = record_revs(&bytes) else {
            return;
        };
        let mut r = self.ring.lock().expect("feed poisoned");
        let id = r.next_id;
        r.next_id += 1;
        r.bytes += bytes.len();
        r.chunks.push_back(Arc::new(FeedChunk {
            id,
            first_rev,
            last_rev,
            last_seq: seq,
            bytes: Bytes::from(bytes),
        }));
        while r.bytes > self.cap && r.chunks.len() > 1 {
            let old = r.chunks.pop_front().expect("non-empty");
            r.bytes -= old.bytes.len();
            r.evicted_rev = r.evicted_rev.max(old.last_rev);
        }
        drop(r);
        self.tx.send_replace(id + 1);
    }
}

/// The revisions of the first and the last framed record in `buf`.
fn record_revs(buf: &[u8]) -> Option<(i64, i64)> {
    let mut pos = 0;
    let mut revs = None::<(i64, i64)>;
    while pos + RECORD_HEADER + 9 <= buf.len() {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4")) as usize;
        if len == 0 {
            break;
        }
        let p = pos + RECORD_HEADER;
        let rev = i64::from_le_bytes(buf[p + 1..p + 9].try_into().expect("8"));
        revs = Some((revs.map_or(rev, |r| r.0), rev));
        pos = p + len;
    }
    revs
}

impl Embedded {
    /// Starts the feed of durable records that replicas stream from, keeping up to `cap`
    /// bytes of the newest records in memory. Idempotent.
    pub fn enable_feed(&self, cap: usize) {
        let rev = self.inner.visible();
        let _ = self.inner.log.feed.set(Arc::new(Feed::new(cap, rev)));
    }

    /// A cursor for the feed that yields every record a replica at revision `rev` lacks, or
    /// `None` when the feed no longer (or never did) hold all of them: then the log files
    /// ([`Embedded::log_since`]) or a snapshot must serve first.
    pub fn feed_from(&self, rev: i64) -> Option<u64> {
        let feed = self.inner.log.feed.get()?;
        let r = feed.ring.lock().expect("feed poisoned");
        if rev <= r.evicted_rev {
            return None;
        }
        Some(
            r.chunks
                .iter()
                .find(|c| c.last_rev >= rev)
                .map_or(r.next_id, |c| c.id),
        )
    }

    /// The feed's position after its newest chunk: a cursor that sees only what comes next.
    pub fn feed_head(&self) -> Option<u64> {
        let feed = self.inner.log.feed.get()?;
        let head = feed.ring.lock().expect("feed poisoned").next_id;
        Some(head)
    }

    /// The chunk at `cursor`.
    pub fn feed_next(&self, cursor: u64) -> FeedNext {
        let Some(feed) = self.inner.log.feed.get() else {
            return FeedNext::Lost;
        };
        let r = feed.ring.lock().expect("feed poisoned");
        match r.chunks.front() {
            Some(first) if cursor < first.id => FeedNext::Lost,
            Some(first) => match r.chunks.get((cursor - first.id) as usize) {
                Some(c) => FeedNext::Chunk(c.clone()),
                None => FeedNext::Pending,
            },
            None if cursor < r.next_id => FeedNext::Lost,
            None => FeedNext::Pending,
        }
    }

    /// Changes whenever a chunk is added to the feed (`None` without a feed).
    pub fn feed_watch(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.log.feed.get()?.tx.subscribe())
    }

    /// Reads back from the data dir's log files every durable record a replica at revision
    /// `rev` lacks; `None` when the files no longer hold them all (a snapshot replaced the
    /// older logs): the replica needs a snapshot.
    pub fn log_since(&self, rev: i64) -> Result<Option<LogSince>> {
        // Twice: the snapshot thread may remove a log between the listing and the read.
        match log_since(&self.inner, rev) {
            Err(_) => log_since(&self.inner, rev),
            ok => ok,
        }
    }

    /// The log's durable point now.
    pub fn durable_point(&self) -> DurablePoint {
        let d = self.inner.log.durable.borrow();
        DurablePoint {
            seq: d.seq,
            rev: d.rev,
        }
    }

    /// Waits until revision `rev` is visible (durable here); fails when the store closes or
    /// its log fails first.
    pub async fn wait_visible(&self, rev: i64) -> Result<()> {
        let mut rx = self.inner.log.durable.subscribe();
        let r = rx
            .wait_for(|d| d.rev >= rev || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        match &r.failed {
            Some(f) if r.rev < rev => Err(StoreError::Storage(f.clone())),
            _ => Ok(()),
        }
    }

    /// Applies framed records streamed from the primary, in order, skipping the ones this
    /// store already holds (see the module docs), and queues them on its own log. Returns at
    /// once; [`Embedded::wait_local`] waits for them to be durable. A record that does not
    /// follow this store's state is refused ([`StoreError::Corrupt`], naming the revision):
    /// the replica has diverged from the primary.
    pub fn apply_records(&self, bytes: &[u8]) -> Result<Applied> {
        self.inner.check_writable()?;
        let mut batches = Vec::new();
        let tail = weft_log::parse_log(bytes, |_, payload| {
            batches.push(codec::decode_batch(payload)?);
            Ok(())
        });
        match tail {
            LogTail::Clean { .. } => {}
            LogTail::Torn { offset } => return Err(stream_err(offset, "incomplete record".into())),
            LogTail::Corrupt { offset, reason } => return Err(stream_err(offset, reason)),
        }
        let now = Instant::now();
        let mut out = Applied::default();
        let mut wake = false;
        {
            let mut st = self.inner.state.write().expect("state poisoned");
            for batch in batches {
                let changes = !batch.changes.is_empty();
                if batch.rev < st.rev || (changes && batch.rev <= st.rev) {
                    continue;
                }
                let expected = if changes { st.rev + 1 } else { st.rev };
                if batch.rev != expected {
                    return Err(StoreError::Corrupt {
                        file: "replication stream".into(),
                        offset: 0,
                        reason: format!(
                            "record at revision {} does not follow revision {} (replica diverged)",
                            batch.rev, st.rev
                        ),
                    });
                }
                st.replay(&batch, now)
                    .map_err(|reason| stream_err(0, reason))?;
                let (seq, w) = self.inner.log.append(&st, batch, false);
                wake |= w;
                out.seq = seq;
                out.records += 1;
            }
            out.rev = st.rev;
        }
        if wake {
            self.inner.log.wake();
        }
        Ok(out)
    }

    /// Waits until this store's own log sequence `seq` is durable.
    pub async fn wait_local(&self, seq: u64) -> Result<()> {
        self.inner.wait_durable(seq).await
    }

    /// Makes this store a replica of `primary` (an address for error messages): client writes
    /// are refused with [`StoreError::NotPrimary`], leases do not expire here and automatic
    /// compaction pauses (the primary's records bring both), or, with `None`, a primary again:
    /// every lease's deadline starts over from now (as etcd does on a leader change).
    pub fn set_primary(&self, primary: Option<String>) {
        let was_replica = {
            let mut p = self.inner.primary.write().expect("role poisoned");
            let was = p.is_some();
            *p = primary.clone();
            was
        };
        self.inner
            .replica
            .store(primary.is_some(), Ordering::SeqCst);
        if was_replica && primary.is_none() {
            let now = Instant::now();
            let mut st = self.inner.state.write().expect("state poisoned");
            for l in st.leases.values_mut() {
                l.deadline = mvcc::deadline(now, l.ttl);
            }
            drop(st);
            self.inner.lease_wake.notify_one();
        }
    }

    /// The primary this store follows (`None` on a primary).
    pub fn primary(&self) -> Option<String> {
        self.inner.primary.read().expect("role poisoned").clone()
    }
}

fn stream_err(offset: u64, reason: String) -> StoreError {
    StoreError::Corrupt {
        file: "replication stream".into(),
        offset,
        reason,
    }
}

/// The revision a snapshot file was taken at (its header: 20 bytes, then the revision).
fn snapshot_rev(path: &std::path::Path) -> std::io::Result<i64> {
    use std::io::Read;
    let mut head = [0u8; 28];
    fs::File::open(path)?.read_exact(&mut head)?;
    Ok(i64::from_le_bytes(head[20..28].try_into().expect("8")))
}

fn log_since(inner: &Inner, rev: i64) -> Result<Option<LogSince>> {
    let d = inner.log.durable.borrow().clone();
    let dir = &inner.dir;
    let io = |e: std::io::Error| StoreError::Storage(format!("cannot read {}: {e}", dir.display()));
    let mut snaps = Vec::new();
    let mut wals = Vec::new();
    for ent in fs::read_dir(dir).map_err(io)? {
        let name = ent.map_err(io)?.file_name().to_string_lossy().into_owned();
        if let Some(g) = wal::parse_gen(&name, "snap-", ".snap") {
            snaps.push(g);
        } else if let Some(g) = wal::parse_gen(&name, "wal-", ".log") {
            wals.push(g);
        }
    }
    let base = snaps.iter().max().copied();
    if let Some(g) = base {
        // The logs start at this snapshot: records at its revision may be in a removed log.
        if rev <= snapshot_rev(&dir.join(wal::snap_name(g))).map_err(io)? {
            return Ok(None);
        }
    } else if wals.iter().min().is_some_and(|g| *g > 0) {
        return Ok(None);
    }
    wals.retain(|g| *g >= base.unwrap_or(0));
    wals.sort_unstable();
    let mut out = Vec::new();
    let mut last = rev;
    for g in wals {
        let buf = fs::read(dir.join(wal::wal_name(g))).map_err(io)?;
        // A torn or unfinished end is the log being written now: what follows comes from the
        // feed. Records past the durable point at the start are left to it too.
        weft_log::parse_log(&buf, |off, payload| {
            let r = payload
                .get(1..9)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                .ok_or("short record")?;
            if r >= rev && r <= d.rev {
                let off = off as usize;
                out.extend_from_slice(&buf[off..off + RECORD_HEADER + payload.len()]);
                last = r;
            }
            Ok(())
        });
    }
    Ok(Some(LogSince {
        bytes: out,
        upto_seq: d.seq,
        rev: last,
    }))
}

/// Used by the log: whether a feed wants this group's bytes.
pub(crate) fn feed_of(log: &Log) -> Option<&Feed> {
    log.feed.get().map(|f| &**f)
}
