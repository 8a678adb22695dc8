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

    /// Runs a write: on the primary, `local` then the wait for replicas; on a replica,
    /// forwarded (or refused by the embedded store when forwarding is off).
    async fn write<T: Send>(
        &self,
        op: Op,
        local: impl Future<Output = Result<T>> + Send,
        rev: impl Fn(&T) -> i64,
        answer: impl Fn(Answer) -> Option<T>,
        logged: bool,
    ) -> Result<T> {
        let role = self.role.read().expect("role").clone();
        match role {
            // A node that stepped down knows no primary to forward to.
            Role::Replica(p) if p.starts_with('(') => Err(StoreError::NotPrimary(p)),
            Role::Replica(_) if self.cfg.forward_writes => {
                let policy = POLICY.try_with(|p| *p).ok();
                let a = self.follower.forward(op, policy).await?;
                let r = a.revision();
                let out = answer(a).ok_or_else(|| mismatch("write"))?;
                // Read your writes: wait (boundedly) until this replica shows it.
                let _ = tokio::time::timeout(self.cfg.read_wait, self.store.wait_visible(r)).await;
                Ok(out)
            }
            _ => {
                let out = local.await?;
                let policy = self.policy();
                if logged && policy.level != crate::Level::Async {
                    let d = self.store.durable_point();
                    self.tracker
                        .confirm(d.seq, rev(&out), policy, d.seq)
                        .await?;
                }
                Ok(out)
            }
        }
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
        let s = &self.0.store;
        let local = s.put(req.clone());
        let ans = |a| match a {
            Answer::Put(r) => Some(r),
            _ => None,
        };
        self.0
            .write(Op::Put(req), local, |r| r.header.revision, ans, true)
            .await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let local = self.0.store.delete(req.clone());
        let ans = |a| match a {
            Answer::Delete(r) => Some(r),
            _ => None,
        };
        self.0
            .write(Op::Delete(req), local, |r| r.header.revision, ans, true)
            .await
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
        let local = self.0.store.txn(req.clone());
        let ans = |a| match a {
            Answer::Txn(r) => Some(r),
            _ => None,
        };
        self.0
            .write(Op::Txn(req), local, |r| r.header.revision, ans, true)
            .await
    }
    async fn compact(&self, revision: i64) -> Result<CompactResponse> {
        let local = self.0.store.compact(revision);
        let ans = |a| match a {
            Answer::Compact(r) => Some(r),
            _ => None,
        };
        self.0
            .write(
                Op::Compact(revision),
                local,
                |r| r.header.revision,
                ans,
                true,
            )
            .await
    }
    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let local = self.0.store.lease_grant(ttl, id);
        let ans = |a| match a {
            Answer::LeaseGrant(r) => Some(r),
            _ => None,
        };
        self.0
            .write(
                Op::LeaseGrant { ttl, id },
                local,
                |r| r.header.revision,
                ans,
                true,
            )
            .await
    }
    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader> {
        let local = self.0.store.lease_revoke(id);
        let ans = |a| match a {
            Answer::Header(r) => Some(r),
            _ => None,
        };
        self.0
            .write(Op::LeaseRevoke(id), local, |r| r.revision, ans, true)
            .await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        // Keep-alives are not logged: nothing for replicas to hold.
        let local = self.0.store.lease_keep_alive(id);
        let ans = |a| match a {
            Answer::KeepAlive(r) => Some(r),
            _ => None,
        };
        self.0
            .write(Op::KeepAlive(id), local, |r| r.header.revision, ans, false)
            .await
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
        let store = self.store();
        let run = async move {
            Ok(match f.op {
                Op::Put(r) => Answer::Put(store.put(r).await?),
                Op::Delete(r) => Answer::Delete(store.delete(r).await?),
                Op::Txn(r) => Answer::Txn(store.txn(r).await?),
                Op::Compact(r) => Answer::Compact(store.compact(r).await?),
                Op::LeaseGrant { ttl, id } => Answer::LeaseGrant(store.lease_grant(ttl, id).await?),
                Op::LeaseRevoke(id) => Answer::Header(store.lease_revoke(id).await?),
                Op::KeepAlive(id) => Answer::KeepAlive(store.lease_keep_alive(id).await?),
            })
        };
        match f.policy {
            Some(p) => with_policy(p, run).await,
            None => run.await,
        }
    }
}
