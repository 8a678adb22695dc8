//! The primary's side: one task pair per replica connection (records out, acknowledgements
//! and forwarded writes in), the lag sampler and the hash checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use weft_store::embedded::FeedNext;
use weft_store::Store;

/// A framed record's header: length and checksum.
const RECORD_HEADER: usize = 8;

use crate::tracker::ReplicaState;
use crate::wire::{read_frame, Frame};
use crate::{CheckResult, ReplError, Replication, Role};

/// Records sent in one frame at most (a catch-up from the log files is cut in pieces).
const PIECE: usize = 4 << 20;
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Where a replica's hash (or why it has none) goes.
type HashWaiter = oneshot::Sender<Result<u32, String>>;

/// Hash checks: the replicas' answers being waited for, and the last result per replica.
#[derive(Default)]
pub(crate) struct Checks {
    /// Per connected replica, where to send a hash request.
    asks: Mutex<HashMap<String, mpsc::Sender<Frame>>>,
    waiting: Mutex<HashMap<(String, i64), Vec<HashWaiter>>>,
    last: Mutex<Vec<CheckResult>>,
}

impl Checks {
    pub fn last(&self) -> Vec<CheckResult> {
        self.last.lock().expect("checks").clone()
    }

    fn record(&self, r: CheckResult) {
        let mut last = self.last.lock().expect("checks");
        last.retain(|c| c.replica != r.replica);
        last.push(r);
    }

    fn deliver(&self, name: &str, rev: i64, answer: Result<u32, String>) {
        let key = (name.to_string(), rev);
        if let Some(waiters) = self.waiting.lock().expect("checks").remove(&key) {
            for w in waiters {
                let _ = w.send(answer.clone());
            }
        }
    }
}

/// Hash mismatches since start (a metric).
pub(crate) static MISMATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Replication {
    /// Whether a replica of `epoch` may follow this node; returns this node's epoch. A
    /// replica of a higher epoch follows a newer primary: this one was deposed and steps down.
    pub fn accept_replica(&self, epoch: u64) -> Result<u64, ReplError> {
        if let Some(p) = self.primary_of() {
            return Err(ReplError::NotPrimary(p));
        }
        let mine = self.epoch();
        if epoch > mine {
            self.step_down(&format!(
                "a replica follows epoch {epoch}, this primary's is {mine}"
            ));
            return Err(ReplError::Deposed {
                mine,
                theirs: epoch,
            });
        }
        Ok(mine)
    }

    /// Serves one replica on an upgraded connection: streams every record it lacks from
    /// revision `rev` on, then new ones as they become durable; takes its acknowledgements,
    /// forwarded writes and hashes. Returns when the connection ends.
    pub async fn serve_replica<IO>(self: &Arc<Self>, io: IO, name: String, rev: i64)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        if self.primary_of().is_some() {
            return;
        }
        let (rd, mut wr) = tokio::io::split(io);
        let conn = self.tracker.connect(&name, rev);
        let (tx, rx) = mpsc::channel::<Frame>(1024);
        self.checks
            .asks
            .lock()
            .expect("checks")
            .insert(name.clone(), tx.clone());
        let reader = tokio::spawn(read_loop(self.clone(), rd, name.clone(), conn, tx));
        tracing::info!(replica = %name, revision = rev, "replica connected");
        let r = self.send_loop(&mut wr, &name, conn, rev, rx).await;
        reader.abort();
        self.tracker.disconnect(&name, conn);
        if let Err(e) = r {
            tracing::info!(replica = %name, error = %e, "replica stream ended");
        }
    }

    /// The cursor in the feed from which replica `name` at `rev` is served, after sending
    /// what only the log files still hold.
    async fn start<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        name: &str,
        conn: u64,
        rev: i64,
    ) -> Result<u64, String> {
        if let Some(c) = self.store.feed_from(rev) {
            return Ok(c);
        }
        let head = self.store.feed_head().ok_or("the feed is off")?;
        self.tracker.set_state(name, conn, ReplicaState::CatchingUp);
        let since = self.store.log_since(rev).map_err(|e| e.to_string())?;
        let Some(since) = since else {
            self.tracker
                .set_state(name, conn, ReplicaState::NeedsSnapshot);
            let mut out = BytesMut::new();
            Frame::NeedSnapshot { rev }.encode(&mut out);
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            return Err(format!("replica {name} at revision {rev} needs a snapshot"));
        };
        let pieces = split_records(Bytes::from(since.bytes), PIECE);
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let mut out = BytesMut::with_capacity(p.len() + 32);
            self.tracker.sent(name, conn, p.len());
            Frame::Records {
                epoch: self.epoch(),
                upto_seq: if i + 1 == n { since.upto_seq } else { 0 },
                primary_rev: since.rev,
                bytes: p,
            }
            .encode(&mut out);
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        if n == 0 {
            // Nothing to send, but the replica holds everything up to here.
            let mut out = BytesMut::new();
            Frame::Records {
                epoch: self.epoch(),
                upto_seq: since.upto_seq,
                primary_rev: since.rev,
                bytes: Bytes::new(),
            }
            .encode(&mut out);
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        self.tracker.set_state(name, conn, ReplicaState::Streaming);
        Ok(head)
    }

    async fn send_loop<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        name: &str,
        conn: u64,
        rev: i64,
        mut rx: mpsc::Receiver<Frame>,
    ) -> Result<(), String> {
        let mut cursor = self.start(wr, name, conn, rev).await?;
        let mut feed = self.store.feed_watch().ok_or("the feed is off")?;
        let mut stop = self.stop.subscribe();
        let mut hb = tokio::time::interval(HEARTBEAT);
        let mut out = BytesMut::with_capacity(64 << 10);
        loop {
            loop {
                match self.store.feed_next(cursor) {
                    FeedNext::Chunk(c) => {
                        self.tracker.sent(name, conn, c.bytes.len());
                        Frame::Records {
                            epoch: self.epoch(),
                            upto_seq: c.last_seq,
                            primary_rev: c.last_rev,
                            bytes: c.bytes.clone(),
                        }
                        .encode(&mut out);
                        cursor = c.id + 1;
                        if out.len() >= PIECE {
                            wr.write_all(&out).await.map_err(|e| e.to_string())?;
                            out.clear();
                        }
                    }
                    FeedNext::Pending => break,
                    FeedNext::Lost => {
                        // The replica fell behind the feed: from its acknowledged revision.
                        wr.write_all(&out).await.map_err(|e| e.to_string())?;
                        out.clear();
                        let (_, acked) = self.tracker.acked_of(name);
                        cursor = self.start(wr, name, conn, acked).await?;
                    }
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
            tokio::select! {
                r = feed.changed() => r.map_err(|_| "the store closed")?,
                f = rx.recv() => f.ok_or("the reader ended")?.encode(&mut out),
                _ = hb.tick() => {
                    let d = self.store.durable_point();
                    Frame::Heartbeat { epoch: self.epoch(), seq: d.seq, rev: d.rev, acked: self.tracker.acked_rev() }
                        .encode(&mut out);
                }
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            if *self.role.read().expect("role") != Role::Primary {
                return Err("this node is no longer the primary".into());
            }
        }
    }

    /// Compares this primary's hash at a revision with every connected replica's: at `rev`,
    /// or at the oldest revision they all acknowledged. A mismatch is a metric, an event (a
    /// log line) and an outcome `mismatch` in the result.
    pub async fn check(self: &Arc<Self>, rev: Option<i64>) -> Result<Vec<CheckResult>, ReplError> {
        if let Some(p) = self.primary_of() {
            return Err(ReplError::NotPrimary(p));
        }
        let asks: Vec<(String, mpsc::Sender<Frame>)> = self
            .checks
            .asks
            .lock()
            .expect("checks")
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(n, tx)| (n.clone(), tx.clone()))
            .collect();
        let d = self.store.durable_point();
        let rev = match rev {
            Some(r) => r,
            None => asks
                .iter()
                .map(|(n, _)| self.tracker.acked_of(n).1)
                .min()
                .unwrap_or(d.rev)
                .min(d.rev),
        };
        let mine = Store::hash_kv(&*self.store, rev).await?.hash;
        let mut out = Vec::new();
        for (name, tx) in asks {
            let (otx, orx) = oneshot::channel();
            self.checks
                .waiting
                .lock()
                .expect("checks")
                .entry((name.clone(), rev))
                .or_default()
                .push(otx);
            let _ = tx.send(Frame::HashAsk { rev }).await;
            let answer = match tokio::time::timeout(Duration::from_secs(10), orx).await {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => Err("the replica disconnected".into()),
                Err(_) => Err("no answer within 10 s".into()),
            };
            out.push(self.outcome(name, rev, mine, answer));
        }
        Ok(out)
    }

    fn outcome(
        &self,
        replica: String,
        revision: i64,
        mine: u32,
        answer: Result<u32, String>,
    ) -> CheckResult {
        let r = match answer {
            Ok(h) if h == mine => CheckResult {
                replica,
                revision,
                primary_hash: mine,
                replica_hash: Some(h),
                outcome: "match".into(),
                error: None,
            },
            Ok(h) => {
                MISMATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(%replica, revision, primary = mine, replica_hash = h, "replica hash mismatch: the replica's data differs from the primary's");
                CheckResult {
                    replica,
                    revision,
                    primary_hash: mine,
                    replica_hash: Some(h),
                    outcome: "mismatch".into(),
                    error: None,
                }
            }
            Err(e) => CheckResult {
                replica,
                revision,
                primary_hash: mine,
                replica_hash: None,
                outcome: "error".into(),
                error: Some(e),
            },
        };
        self.checks.record(r.clone());
        r
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    repl: Arc<Replication>,
    mut rd: R,
    name: String,
    conn: u64,
    tx: mpsc::Sender<Frame>,
) {
    loop {
        let f = match read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(replica = %name, error = %e, "bad frame from replica");
                return;
            }
        };
        match f {
            Frame::Ack { seq, rev } => repl.tracker.ack(&name, conn, seq, rev),
            Frame::Forward { id, body } => {
                let (repl, tx) = (repl.clone(), tx.clone());
                tokio::spawn(async move {
                    let outcome = match serde_json::from_slice::<crate::Forwarded>(&body) {
                        Ok(f) => repl.execute(f).await,
                        Err(e) => Err(weft_store::StoreError::InvalidArgument(format!(
                            "malformed forwarded write: {e}"
                        ))),
                    };
                    let body = serde_json::to_vec(&outcome).expect("answers serialize");
                    let _ = tx
                        .send(Frame::Reply {
                            id,
                            body: body.into(),
                        })
                        .await;
                });
            }
            Frame::Hash { rev, hash, error } => {
                let a = if error.is_empty() {
                    Ok(hash)
                } else {
                    Err(error)
                };
                repl.checks.deliver(&name, rev, a);
            }
            other => {
                tracing::warn!(replica = %name, frame = ?other, "unexpected frame from replica");
                return;
            }
        }
    }
}

/// Cuts framed records into pieces of about `max` bytes, at record boundaries.
fn split_records(b: Bytes, max: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while pos + RECORD_HEADER <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().expect("4")) as usize;
        let end = pos + RECORD_HEADER + len;
        if end - start > max && pos > start {
            out.push(b.slice(start..pos));
            start = pos;
        }
        pos = end;
    }
    if start < b.len() {
        out.push(b.slice(start..));
    }
    out
}

/// The primary's background: samples the durable point every 100 ms (lag in seconds) and
/// runs the periodic hash checks. Metrics are computed when `/metrics` is scraped.
pub(crate) async fn background(repl: Weak<Replication>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut last_check = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(r) = repl.upgrade() else { return };
        if r.primary_of().is_some() {
            return;
        }
        let d = r.store.durable_point();
        r.tracker.sample(d.seq, d.rev);
        if let Some(every) = r.cfg.check_every {
            if last_check.elapsed() >= every {
                last_check = tokio::time::Instant::now();
                let r2 = r.clone();
                tokio::spawn(async move {
                    if let Err(e) = r2.check(None).await {
                        tracing::warn!(error = %e, "periodic hash check failed");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_at_their_boundaries() {
        let mut b = Vec::new();
        for n in [10usize, 20, 30] {
            b.extend_from_slice(&(n as u32).to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend(std::iter::repeat_n(1u8, n));
        }
        let b = Bytes::from(b);
        let p = split_records(b.clone(), 30);
        assert_eq!(
            p.iter().map(|x| x.len()).collect::<Vec<_>>(),
            vec![18, 28, 38]
        );
        assert_eq!(split_records(b.clone(), 1000).len(), 1);
        assert!(split_records(Bytes::new(), 10).is_empty());
    }
}
