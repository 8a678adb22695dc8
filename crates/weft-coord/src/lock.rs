//! Distributed lock and semaphore with fencing tokens.
//!
//! Each waiter writes one key `PREFIX/<lease hex>` under its session's lease; waiters are
//! ordered by the key's create revision (FIFO). A waiter watches only its closest predecessor
//! (no thundering herd) and holds the lock once no earlier key remains. The fencing token is the
//! create revision of the holder's key: strictly increasing across successive holders, so an
//! external resource that remembers the highest token it has seen can reject a stale holder.
//!
//! **Checking a fencing token in an external resource**: store the highest token accepted so
//! far; accept a write only if its token is `>=` that value, and record it. A holder that lost
//! the lock (paused, partitioned) carries an older token than the next holder, so its late
//! writes are refused. For data in the same store, use [`LockGuard::txn_if_held`], which makes
//! the write conditional on the lock key still existing with the holder's create revision.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Duration;
use weft_store::{
    Compare, CompareOp, CompareTarget, DeleteRequest, EventType, KeyRange, KeyValue, PutRequest,
    RangeRequest, Store, StoreError, TxnOp, TxnRequest, TxnResponse, WatchRequest,
};

use crate::held::HeldKey;
use crate::session::Session;
use crate::{CoordError, Result};

/// Default key prefix of locks.
pub const LOCK_PREFIX: &str = "/weft/lock/";
/// Default key prefix of semaphores.
pub const SEMAPHORE_PREFIX: &str = "/weft/sem/";

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.len() > 256 {
        return Err(CoordError::InvalidArgument(format!(
            "{what} name {name:?} must be 1 to 256 bytes without '/'"
        )));
    }
    Ok(())
}

/// Creates the waiter key if absent; returns its create revision.
pub(crate) async fn create_key(
    store: &dyn Store,
    key: &Bytes,
    value: Bytes,
    lease: i64,
    what: &str,
) -> Result<i64> {
    let t = TxnRequest::new()
        .when([Compare::new(
            key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )])
        .and_then([TxnOp::Put(PutRequest::new(key.clone(), value).lease(lease))]);
    let r = store.txn(t).await?;
    if !r.succeeded {
        return Err(CoordError::AlreadyHeld(what.to_string()));
    }
    Ok(r.header.revision)
}

/// Creates the key if absent, or takes the one this session already has (etcd's recipes do
/// the same: a retried call resumes where the first one stood). Returns its create revision
/// and its value if it existed.
pub(crate) async fn create_or_adopt_key(
    store: &dyn Store,
    key: &Bytes,
    value: Bytes,
    lease: i64,
) -> Result<(i64, Option<KeyValue>)> {
    let t = TxnRequest::new()
        .when([Compare::new(
            key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )])
        .and_then([TxnOp::Put(PutRequest::new(key.clone(), value).lease(lease))])
        .or_else([TxnOp::Range(RangeRequest::new(KeyRange::key(key.clone())))]);
    let r = store.txn(t).await?;
    if r.succeeded {
        return Ok((r.header.revision, None));
    }
    let kv = match r.responses.into_iter().next() {
        Some(weft_store::TxnOpResponse::Range(rr)) => rr.kvs.into_iter().next(),
        _ => None,
    };
    match kv {
        Some(kv) => Ok((kv.create_revision, Some(kv))),
        // Deleted in between: create it again.
        None => Box::pin(create_or_adopt_key(store, key, Bytes::new(), lease)).await,
    }
}

/// How [`acquire`] waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Queue and wait for the turn.
    Wait,
    /// Take it now or fail.
    Try,
    /// Wait, taking over this session's key if it is already queued.
    Resume,
}

/// Deletes `key` only if it still has create revision `rev` (it is ours).
pub(crate) async fn delete_own(store: &dyn Store, key: &Bytes, rev: i64) -> Result<bool> {
    let t = TxnRequest::new()
        .when([Compare::new(
            key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(rev),
        )])
        .and_then([TxnOp::Delete(DeleteRequest::new(KeyRange::key(
            key.clone(),
        )))]);
    Ok(store.txn(t).await?.succeeded)
}

/// Releases a lock (or semaphore permit) from its detached parts: deletes `key` only if it
/// still has create revision `token`. Returns whether it was still held.
pub async fn release_parts(store: &dyn Store, key: &Bytes, token: i64) -> Result<bool> {
    delete_own(store, key, token).await
}

/// Removes a waiter's key if the future that created it is dropped before it finished.
pub(crate) struct Cleanup {
    pub store: Arc<dyn Store>,
    pub key: Bytes,
    pub rev: i64,
    pub armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, key, rev) = (self.store.clone(), self.key.clone(), self.rev);
            rt.spawn(async move {
                let _ = delete_own(&*store, &key, rev).await;
            });
        }
    }
}

fn key_str(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// Waits until fewer than `slots` keys under `prefix` have a create revision below `my_rev`.
/// With one slot it watches only the closest predecessor. Fails at once if our own key
/// disappears or the session is lost.
pub(crate) async fn wait_turn(
    session: &Session,
    prefix: &Bytes,
    my_key: &Bytes,
    my_rev: i64,
    slots: usize,
) -> Result<()> {
    let store = session.store().clone();
    loop {
        session.check()?;
        let r = store
            .range(RangeRequest::new(KeyRange::prefix(prefix.clone())).keys_only())
            .await?;
        match r.kvs.iter().find(|kv| kv.key == *my_key) {
            Some(kv) if kv.create_revision == my_rev => {}
            _ => return Err(CoordError::OwnershipLost(key_str(my_key))),
        }
        let mut earlier: Vec<&KeyValue> = r
            .kvs
            .iter()
            .filter(|kv| kv.create_revision < my_rev)
            .collect();
        if earlier.len() < slots {
            return Ok(());
        }
        earlier.sort_by_key(|kv| kv.create_revision);
        let from = r.header.revision + 1;
        // One slot: watch the closest predecessor. More: any earlier key leaving may free a slot.
        let watched = if slots == 1 {
            KeyRange::key(earlier.last().expect("non-empty").key.clone())
        } else {
            KeyRange::prefix(prefix.clone())
        };
        let mut pred = store
            .watch(WatchRequest {
                no_put: true,
                ..WatchRequest::new(watched).start_revision(from)
            })
            .await?;
        let mut own = store
            .watch(WatchRequest {
                no_put: true,
                ..WatchRequest::new(KeyRange::key(my_key.clone())).start_revision(from)
            })
            .await?;
        tokio::select! {
            m = pred.message() => match m {
                Some(Ok(_)) | Some(Err(StoreError::Compacted { .. })) | None => continue,
                Some(Err(e)) => return Err(e.into()),
            },
            m = own.message() => match m {
                Some(Ok(resp)) if resp.events.iter().any(|e| e.kind == EventType::Delete) => {
                    return Err(CoordError::OwnershipLost(key_str(my_key)));
                }
                Some(Err(e @ StoreError::Unavailable(_))) => return Err(e.into()),
                _ => continue,
            },
            r = session.lost() => return Err(CoordError::SessionLost(r)),
        }
    }
}

/// Whether `key` still exists with create revision `token` and the session is alive.
pub(crate) async fn still_owned(session: &Session, key: &Bytes, token: i64) -> Result<bool> {
    if session.lost_reason().is_some() {
        return Ok(false);
    }
    let r = session
        .store()
        .range(RangeRequest::new(KeyRange::key(key.clone())).keys_only())
        .await?;
    Ok(r.kvs.first().is_some_and(|kv| kv.create_revision == token))
}

/// Resolves when `key` (created at `token`) is deleted or the session is lost.
pub(crate) async fn ownership_lost(session: &Session, key: &Bytes, token: i64) -> CoordError {
    let store = session.store().clone();
    loop {
        let req = WatchRequest {
            no_put: true,
            ..WatchRequest::new(KeyRange::key(key.clone())).start_revision(token)
        };
        let mut w = match store.watch(req).await {
            Ok(w) => w,
            Err(e) => return e.into(),
        };
        loop {
            tokio::select! {
                m = w.message() => match m {
                    Some(Ok(resp)) if resp.events.iter().any(|e| e.kind == EventType::Delete) => {
                        return CoordError::OwnershipLost(key_str(key));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(StoreError::Compacted { .. })) => match still_owned(session, key, token).await {
                        Ok(true) => break,
                        Ok(false) => return CoordError::OwnershipLost(key_str(key)),
                        Err(e) => return e,
                    },
                    Some(Err(e)) => return e.into(),
                    None => return CoordError::Store(StoreError::Closed),
                },
                r = session.lost() => return CoordError::SessionLost(r),
            }
        }
    }
}

/// A distributed mutual-exclusion lock.
#[derive(Clone, Debug)]
pub struct Mutex {
    session: Session,
    prefix: Bytes,
    key: Bytes,
    name: String,
}

/// A distributed semaphore: at most `permits` holders at once, admitted in FIFO order.
#[derive(Clone, Debug)]
pub struct Semaphore {
    session: Session,
    prefix: Bytes,
    key: Bytes,
    name: String,
    permits: usize,
}

/// Proof of holding a lock or a semaphore permit. Dropping it releases (in the background);
/// prefer [`LockGuard::unlock`], which reports errors.
#[derive(Debug)]
pub struct LockGuard {
    held: HeldKey,
}

impl Mutex {
    /// A lock named `name` (keys under `/weft/lock/<name>/`) owned through `session`.
    pub fn new(session: &Session, name: &str) -> Result<Mutex> {
        check_name("lock", name)?;
        Ok(Self::with_prefix(
            session,
            Bytes::from(format!("{LOCK_PREFIX}{name}/")),
            name,
        ))
    }

    /// A lock under an explicit key prefix.
    pub fn with_prefix(session: &Session, prefix: Bytes, name: &str) -> Mutex {
        let key = Bytes::from([&prefix[..], format!("{:x}", session.lease()).as_bytes()].concat());
        Mutex {
            session: session.clone(),
            prefix,
            key,
            name: name.to_string(),
        }
    }

    /// Waits for the lock. Cancel-safe: dropping the future removes the waiter's key. Ends at
    /// once with an error if the waiter's key or lease disappears.
    pub async fn lock(&self) -> Result<LockGuard> {
        acquire(
            &self.session,
            &self.prefix,
            &self.key,
            &self.name,
            1,
            Mode::Wait,
        )
        .await
    }

    /// Waits for the lock as etcd's `Lock` call does: if this session's key is already queued
    /// (a retried call), it is taken over with its place in the queue instead of failing with
    /// [`CoordError::AlreadyHeld`]. Cancel-safe like [`Mutex::lock`].
    pub async fn lock_or_resume(&self) -> Result<LockGuard> {
        acquire(
            &self.session,
            &self.prefix,
            &self.key,
            &self.name,
            1,
            Mode::Resume,
        )
        .await
    }

    /// Takes the lock if it is free now, else fails with [`CoordError::WouldBlock`].
    pub async fn try_lock(&self) -> Result<LockGuard> {
        acquire(
            &self.session,
            &self.prefix,
            &self.key,
            &self.name,
            1,
            Mode::Try,
        )
        .await
    }

    /// Waits at most `timeout`; on timeout the waiter's key is removed.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(r) => r,
            Err(_) => Err(CoordError::Timeout(format!("lock {}", self.name))),
        }
    }

    /// The current holder's key and fencing token, if any.
    pub async fn holder(&self) -> Result<Option<(Bytes, i64)>> {
        let r = self
            .session
            .store()
            .range(RangeRequest::new(KeyRange::prefix(self.prefix.clone())).keys_only())
            .await?;
        Ok(r.kvs
            .iter()
            .min_by_key(|kv| kv.create_revision)
            .map(|kv| (kv.key.clone(), kv.create_revision)))
    }
}

impl Semaphore {
    /// A semaphore named `name` with `permits` holders at most.
    pub fn new(session: &Session, name: &str, permits: usize) -> Result<Semaphore> {
        check_name("semaphore", name)?;
        if permits == 0 {
            return Err(CoordError::InvalidArgument(
                "a semaphore needs at least one permit".into(),
            ));
        }
        let prefix = Bytes::from(format!("{SEMAPHORE_PREFIX}{name}/"));
        let key = Bytes::from([&prefix[..], format!("{:x}", session.lease()).as_bytes()].concat());
        Ok(Semaphore {
            session: session.clone(),
            prefix,
            key,
            name: name.to_string(),
            permits,
        })
    }

    /// Waits for a permit (FIFO). Cancel-safe like [`Mutex::lock`].
    pub async fn acquire(&self) -> Result<LockGuard> {
        acquire(
            &self.session,
            &self.prefix,
            &self.key,
            &self.name,
            self.permits,
            Mode::Wait,
        )
        .await
    }

    /// Takes a permit if one is free now.
    pub async fn try_acquire(&self) -> Result<LockGuard> {
        acquire(
            &self.session,
            &self.prefix,
            &self.key,
            &self.name,
            self.permits,
            Mode::Try,
        )
        .await
    }

    /// Waits at most `timeout`.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(r) => r,
            Err(_) => Err(CoordError::Timeout(format!("semaphore {}", self.name))),
        }
    }
}

async fn acquire(
    session: &Session,
    prefix: &Bytes,
    key: &Bytes,
    name: &str,
    slots: usize,
    mode: Mode,
) -> Result<LockGuard> {
    session.check()?;
    let store = session.store().clone();
    let rev = if mode == Mode::Resume {
        create_or_adopt_key(&*store, key, Bytes::new(), session.lease())
            .await?
            .0
    } else {
        create_key(&*store, key, Bytes::new(), session.lease(), name).await?
    };
    let mut cleanup = Cleanup {
        store: store.clone(),
        key: key.clone(),
        rev,
        armed: true,
    };
    if mode == Mode::Try {
        let r = store
            .range(RangeRequest::new(KeyRange::prefix(prefix.clone())).keys_only())
            .await?;
        let earlier = r.kvs.iter().filter(|kv| kv.create_revision < rev).count();
        if earlier >= slots {
            cleanup.armed = false;
            delete_own(&*store, key, rev).await?;
            return Err(CoordError::WouldBlock(name.to_string()));
        }
    } else {
        wait_turn(session, prefix, key, rev, slots).await?;
    }
    cleanup.armed = false;
    Ok(LockGuard {
        held: HeldKey::new(session, key.clone(), rev),
    })
}

impl LockGuard {
    /// The fencing token: strictly increasing across successive holders.
    pub fn fencing_token(&self) -> i64 {
        self.held.revision()
    }

    /// The holder's key.
    pub fn key(&self) -> &Bytes {
        self.held.key()
    }

    /// Whether the store still records this guard as the holder.
    pub async fn is_held(&self) -> Result<bool> {
        self.held.is_held().await
    }

    /// Resolves when ownership is lost: the session is lost or the key disappears.
    pub async fn lost(&self) -> CoordError {
        self.held.lost().await
    }

    /// Runs `ops` atomically only while this guard still holds the lock (the key exists with
    /// this guard's create revision); fails with [`CoordError::OwnershipLost`] otherwise.
    pub async fn txn_if_held(&self, ops: Vec<TxnOp>) -> Result<TxnResponse> {
        self.held.txn_if_held(ops).await
    }

    /// Keeps the lock held past this guard (no release on drop); returns `(key, token)`.
    /// [`LockGuard::from_parts`] rebuilds the guard, e.g. in a later HTTP request.
    pub fn detach(self) -> (Bytes, i64) {
        self.held.detach()
    }

    /// Rebuilds a guard from [`LockGuard::detach`]'s parts. It checks nothing: use
    /// [`LockGuard::is_held`] or [`LockGuard::txn_if_held`].
    pub fn from_parts(session: &Session, key: Bytes, token: i64) -> LockGuard {
        LockGuard {
            held: HeldKey::new(session, key, token),
        }
    }

    /// Releases the lock.
    pub async fn unlock(self) -> Result<()> {
        self.held.release().await?;
        Ok(())
    }
}
