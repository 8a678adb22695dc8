//! The store a replicated node serves: the embedded store, with each write waiting for its
//! durability policy (primary) or forwarded to the primary (replica), and reads waiting for a
//! minimum revision or a staleness bound.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weft_store::*;

use crate::forward::{mismatch, Answer, Op};
use crate::{Policy, Replication, Role};

/// What a read asks of a replica (the HTTP API's `weft-min-revision`, `weft-max-staleness`
/// and `weft-read-timeout` headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOpts {
    /// Wait until this revision is visible here (read your writes).
    pub min_revision: i64,
    /// Wait until this replica held everything the primary had no longer than this ago.
    pub max_staleness: Option<Duration>,
    /// How long to wait for either (`None`: the node's default).
    pub timeout: Option<Duration>,
}

tokio::task_local! {
    static POLICY: Policy;
    static READ: ReadOpts;
}

/// Runs `f` with writes under `policy` instead of the node's default.
pub async fn with_policy<F: Future>(policy: Policy, f: F) -> F::Output {
    POLICY.scope(policy, f).await
}

/// Runs `f` with reads under `opts`.
pub async fn with_read<F: Future>(opts: ReadOpts, f: F) -> F::Output {
    READ.scope(opts, f).await
}

pub(crate) struct Replicated(pub Arc<Replication>);

impl Replication {
    fn policy(&self) -> Policy {
        POLICY.try_with(|p| *p).unwrap_or(self.cfg.policy)
    }

    /// Runs a write: on the primary, on the embedded store then the wait for replicas (not
    /// for keep-alives: they are not logged); on a replica, forwarded (or refused by the
    /// embedded store when forwarding is off).
    async fn write(&self, op: Op) -> Result<Answer> {
        let role = self.role.read().expect("role").clone();
        match role {
            // A node that stepped down knows no primary to forward to.
            Role::Replica(p) if p.starts_with('(') => Err(StoreError::NotPrimary(p)),
            Role::Replica(_) if self.cfg.forward_writes => {
                let policy = POLICY.try_with(|p| *p).ok();
                let a = self.follower.forward(op, policy).await?;
                // Read your writes: wait (boundedly) until this replica shows it.
                let wait = self.store.wait_visible(a.revision());
                let _ = tokio::time::timeout(self.cfg.read_wait, wait).await;
                Ok(a)
            }
            _ => {
                let logged = !matches!(op, Op::KeepAlive(_));
                let a = self.local(op).await?;
                let policy = self.policy();
                if logged && policy.level != crate::Level::Async {
                    let d = self.store.durable_point();
                    self.tracker
                        .confirm(d.seq, a.revision(), policy, d.seq)
                        .await?;
                }
                Ok(a)
            }
        }
    }

    /// A write on the embedded store.
    async fn local(&self, op: Op) -> Result<Answer> {
        let s = &self.store;
        Ok(match op {
            Op::Put(r) => Answer::Put(s.put(r).await?),
            Op::Delete(r) => Answer::Delete(s.delete(r).await?),
            Op::Txn(r) => Answer::Txn(s.txn(r).await?),
            Op::Compact(r) => Answer::Compact(s.compact(r).await?),
            Op::LeaseGrant { ttl, id } => Answer::LeaseGrant(s.lease_grant(ttl, id).await?),
            Op::LeaseRevoke(id) => Answer::Header(s.lease_revoke(id).await?),
            Op::KeepAlive(id) => Answer::KeepAlive(s.lease_keep_alive(id).await?),
        })
    }

    /// Waits until a read may run here: `revision` (a read at a revision, on a replica) or
    /// the task's [`ReadOpts`].
    async fn read_gate(&self, revision: i64) -> Result<()> {
        let opts = READ.try_with(|o| *o).unwrap_or_default();
        let replica = self.primary_of();
        let min = match replica {
            Some(_) => opts.min_revision.max(revision),
            None => opts.min_revision,
        };
        let wait = opts.timeout.unwrap_or(self.cfg.read_wait);
        let vis = self.store.durable_point().rev;
        if min > vis {
            let waited = tokio::time::timeout(wait, self.store.wait_visible(min)).await;
            if waited.is_err() {
                let now = self.store.durable_point().rev;
                return Err(StoreError::Unavailable(format!(
                    "revision {min} not reached within {wait:?}: this node is at revision {now}{}",
                    self.follower.behind(replica.as_deref())
                )));
            }
        }
        if let (Some(bound), Some(_)) = (opts.max_staleness, &replica) {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let rev = self.store.durable_point().rev;
                let stale = self.follower.staleness(rev);
                if stale <= bound {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(StoreError::Unavailable(format!(
                        "this replica is {stale:?} stale, over the bound of {bound:?}, after waiting {wait:?}{}",
                        self.follower.behind(replica.as_deref())
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

fn has_writes(ops: &[TxnOp]) -> bool {
    ops.iter().any(|o| !matches!(o, TxnOp::Range(_)))
}

#[async_trait]
impl Store for Replicated {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.0.read_gate(req.revision).await?;
        self.0.store.range(req).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        match self.0.write(Op::Put(req)).await? {
            Answer::Put(r) => Ok(r),
            _ => Err(mismatch("put")),
        }
    }
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        match self.0.write(Op::Delete(req)).await? {
            Answer::Delete(r) => Ok(r),
            _ => Err(mismatch("delete")),
        }
    }
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        if !has_writes(&req.success) && !has_writes(&req.failure) {
            let rev = req
                .success
                .iter()
                .chain(&req.failure)
                .filter_map(|o| match o {
                    TxnOp::Range(r) => Some(r.revision),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            self.0.read_gate(rev).await?;
            return self.0.store.txn(req).await;
        }
        match self.0.write(Op::Txn(req)).await? {
            Answer::Txn(r) => Ok(r),
            _ => Err(mismatch("txn")),
        }
    }
    async fn compact(&self, revision: i64) -> Result<CompactResponse> {
        match self.0.write(Op::Compact(revision)).await? {
            Answer::Compact(r) => Ok(r),
            _ => Err(mismatch("compaction")),
        }
    }
    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        match self.0.write(Op::LeaseGrant { ttl, id }).await? {
            Answer::LeaseGrant(r) => Ok(r),
            _ => Err(mismatch("lease grant")),
        }
    }
    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader> {
        match self.0.write(Op::LeaseRevoke(id)).await? {
            Answer::Header(r) => Ok(r),
            _ => Err(mismatch("lease revoke")),
        }
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        match self.0.write(Op::KeepAlive(id)).await? {
            Answer::KeepAlive(r) => Ok(r),
            _ => Err(mismatch("keep-alive")),
        }
    }
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.0.store.lease_time_to_live(id, keys).await
    }
    async fn lease_list(&self) -> Result<Vec<i64>> {
        self.0.store.lease_list().await
    }
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        self.0.store.watch(req).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        self.0.read_gate(revision).await?;
        self.0.store.hash_kv(revision).await
    }
    async fn status(&self) -> Result<StatusResponse> {
        self.0.store.status().await
    }
    async fn backup(&self) -> Result<Backup> {
        self.0.store.backup().await
    }
    async fn defragment(&self) -> Result<ResponseHeader> {
        self.0.store.defragment().await
    }
    fn limits(&self) -> Limits {
        self.0.store.limits()
    }
    fn thread_flushes(&self) -> Option<ThreadFlushes> {
        self.0.store.thread_flushes()
    }
}

impl Replication {
    /// Runs a write forwarded by a replica, under its policy.
    pub(crate) async fn execute(self: &Arc<Self>, f: crate::Forwarded) -> crate::forward::Outcome {
        match f.policy {
            Some(p) => with_policy(p, self.write(f.op)).await,
            None => self.write(f.op).await,
        }
    }
}
