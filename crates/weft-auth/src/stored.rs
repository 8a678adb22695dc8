//! Users and roles kept in a store, under one key ([`AUTH_KEY`]): every node serving the same
//! data (a primary and its replicas, nodes sharing an etcd cluster) sees the same users, and a
//! backup carries them.
//!
//! - A change reads the key, applies itself to what it read, and writes it back under a compare
//!   of the key's mod revision (retried if another node changed it meanwhile), so changes made
//!   on several nodes at once are never lost; the write is durable before it is acknowledged.
//! - Each node follows the key with a watch and installs what it reads; a value that does not
//!   parse is logged and ignored (the last good state stays).
//! - The key holds password hashes: while auth is enabled only `root` may read or write it
//!   through the KV APIs, whatever a role grants ([`crate::Auth::check`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use weft_store::{
    Compare, CompareOp, CompareTarget, EventType, KeyRange, PutRequest, RangeRequest, Store, TxnOp,
    TxnRequest, WatchRequest,
};

use crate::{file, Auth, AuthError, Result, State};

/// The key that holds the users, roles and the enabled switch.
pub const AUTH_KEY: &str = "/weft/auth/state";

fn store_err(e: weft_store::StoreError) -> AuthError {
    AuthError::Store(e.to_string())
}

/// The state under [`AUTH_KEY`] and the key's mod revision (0: no key yet), and the store's
/// revision at the read.
pub(crate) async fn load(store: &Arc<dyn Store>) -> Result<(State, i64, i64)> {
    let r = store
        .range(RangeRequest::new(KeyRange::key(AUTH_KEY)))
        .await
        .map_err(store_err)?;
    let rev = r.header.revision;
    match r.kvs.first() {
        None => Ok((State::default(), 0, rev)),
        Some(kv) => Ok((file::parse(&kv.value, AUTH_KEY)?, kv.mod_revision, rev)),
    }
}

/// Writes `next` if the key is still at `mod_rev`: its new mod revision, or `None` if another
/// change came first.
pub(crate) async fn store_if(
    store: &Arc<dyn Store>,
    next: &State,
    mod_rev: i64,
) -> Result<Option<i64>> {
    let bytes = file::to_bytes(next)?;
    let r = store
        .txn(
            TxnRequest::new()
                .when([Compare::new(
                    AUTH_KEY,
                    CompareOp::Equal,
                    CompareTarget::ModRevision(mod_rev),
                )])
                .and_then([TxnOp::Put(PutRequest::new(AUTH_KEY, bytes))]),
        )
        .await
        .map_err(store_err)?;
    Ok(r.succeeded.then_some(r.header.revision))
}

/// Whether `[key, end)` (etcd's range conventions) holds [`AUTH_KEY`].
pub(crate) fn holds_auth_key(key: &[u8], end: &[u8]) -> bool {
    let k = AUTH_KEY.as_bytes();
    match end {
        [] => key == k,
        [0] => key <= k,
        end => key <= k && k < end,
    }
}

/// Follows [`AUTH_KEY`] from revision `from` while `auth` lives, installing each new state.
pub(crate) async fn follow(auth: Weak<Auth>, store: Arc<dyn Store>, mut from: i64) {
    loop {
        let mut w = match store
            .watch(WatchRequest::new(KeyRange::key(AUTH_KEY)).start_revision(from))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the users and roles; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if auth.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        loop {
            let m = tokio::select! {
                m = w.message() => m,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if auth.strong_count() == 0 { return; }
                    continue;
                }
            };
            let Some(a) = auth.upgrade() else { return };
            match m {
                Some(Ok(r)) => {
                    for e in r.events {
                        from = e.kv.mod_revision + 1;
                        apply(&a, e.kind, &e.kv.value, e.kv.mod_revision);
                    }
                }
                Some(Err(e)) => {
                    // Compacted past `from`, or the store is going away: read again, follow on.
                    tracing::warn!(error = %e, "the watch of users and roles ended; reading them again");
                    match load(&store).await {
                        Ok((st, mod_rev, rev)) => {
                            a.install(st, mod_rev);
                            from = rev + 1;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the users and roles"),
                    }
                    break;
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

fn apply(a: &Auth, kind: EventType, value: &[u8], mod_rev: i64) {
    let st = match kind {
        // Deleted through the KV API (root only while auth is enabled): no users, auth off.
        EventType::Delete => State::default(),
        EventType::Put => match file::parse(value, AUTH_KEY) {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(error = %e, "the users and roles in the store do not parse; keeping the last good ones");
                return;
            }
        },
    };
    a.install(st, mod_rev);
}
