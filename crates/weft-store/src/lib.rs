//! weft's coordination store.
//!
//! The [`Store`] trait is etcd v3's data model as a Rust trait: keys and values are bytes, one
//! store-wide revision grows by one per write transaction, every key carries `create_revision`,
//! `mod_revision`, `version` and an optional lease; reads can go back to any revision that has not
//! been compacted; watches deliver events in revision order from any such revision.
//!
//! Recipes (locks, elections, discovery, saga state) are written once against `Arc<dyn Store>`
//! and run unchanged on the embedded engine ([`embedded::Embedded`], the default: durable, in a
//! data directory, no other server needed) and on etcd (crate `weft-store-etcd`).
//!
//! ```
//! use weft_store::{embedded::{Embedded, Options}, KeyRange, Store, StoreExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> weft_store::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Embedded::open(dir.path(), Options::default()).await?;
//! let rev = store.put_kv("greeting", "hello").await?.header.revision;
//! let got = store.get("greeting").await?.unwrap();
//! assert_eq!(&got.value[..], b"hello");
//! assert_eq!(got.mod_revision, rev);
//!
//! let mut watch = store.watch(weft_store::WatchRequest::new(KeyRange::prefix("greet"))).await?;
//! store.put_kv("greeting", "again").await?;
//! let msg = watch.message().await.unwrap()?;
//! assert_eq!(&msg.events[0].kv.value[..], b"again");
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

mod error;
mod types;
mod watch;

pub mod embedded;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Result, StoreError};
pub use types::*;
pub use watch::{Event, EventType, WatchControl, WatchRequest, WatchResponse, WatchStream};

/// Limits every backend enforces, with etcd's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request (keys plus values of all its operations), bytes. etcd: 1.5 MiB.
    pub max_request_bytes: usize,
    /// Most operations in one transaction branch or compare list. etcd: 128.
    pub max_txn_ops: usize,
    /// Smallest lease TTL in seconds; shorter requests are raised to it. etcd: 2.
    pub min_lease_ttl: i64,
    /// Largest lease TTL in seconds. etcd: 9,000,000,000.
    pub max_lease_ttl: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            min_lease_ttl: 2,
            max_lease_ttl: 9_000_000_000,
        }
    }
}

/// A coordination store with etcd v3 semantics. Object-safe: use it as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Read keys.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;
    /// Write one key.
    async fn put(&self, req: PutRequest) -> Result<PutResponse>;
    /// Delete keys.
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse>;
    /// Conditional multi-operation transaction, applied atomically at one revision.
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse>;
    /// Discard history before `revision` (reads and watches at or before it then fail).
    async fn compact(&self, revision: i64) -> Result<CompactResponse>;
    /// Grant a lease of `ttl` seconds, with a chosen id (0: the store picks one).
    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse>;
    /// Revoke a lease, deleting its keys in one revision.
    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader>;
    /// Renew a lease to its full TTL.
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse>;
    /// Remaining time of a lease, and optionally its keys.
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse>;
    /// Ids of all live leases.
    async fn lease_list(&self) -> Result<Vec<i64>>;
    /// Watch a key range.
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream>;
    /// A digest of the key-value state at `revision` (0: current), for comparing copies.
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse>;
    /// Current revision, compaction point and size.
    async fn status(&self) -> Result<StatusResponse>;
    /// A consistent copy of the whole store at one revision, as bytes in the backend's own
    /// format (see [`Backup`]): what `weft snapshot save` and `etcdctl snapshot save` write
    /// to a file. Every write in it is durable in the store.
    async fn backup(&self) -> Result<Backup>;
    /// Gives the file system back disk space the store no longer needs: etcd's `Defragment`;
    /// the embedded store writes a snapshot and drops the logs it covers.
    async fn defragment(&self) -> Result<ResponseHeader>;
    /// The limits this store enforces.
    fn limits(&self) -> Limits;
    /// Whether a thread may make its own writes durable, in batches, instead of handing them
    /// to the backend (the embedded store offers it; others answer `None`). Servers that run
    /// many calls per thread use it when offered, and never name a backend.
    fn thread_flushes(&self) -> Option<ThreadFlushes> {
        None
    }
}

/// A backend's capability to let a thread write its own writes' durable records in batches
/// (see [`Store::thread_flushes`]). Build the thread's runtime with
/// `.on_thread_park(flush)` and spawn `defer(min_batch)` on it.
#[derive(Clone, Copy, Debug)]
pub struct ThreadFlushes {
    /// Makes the calling thread keep its writes' records and write them itself, in groups of
    /// at least `min_batch` (smaller groups go to the backend's own writer); the returned
    /// task flushes for a thread that never parks.
    pub defer: fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Writes what the calling thread deferred (on park); blocks for the durable write.
    pub flush: fn(),
}

/// Shorthands on top of [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    /// The latest value of one key.
    async fn get(&self, key: impl Into<Bytes> + Send) -> Result<Option<KeyValue>> {
        let resp = self.range(RangeRequest::new(KeyRange::key(key))).await?;
        Ok(resp.kvs.into_iter().next())
    }
    /// All keys with a prefix, in key order.
    async fn get_prefix(&self, prefix: impl Into<Bytes> + Send) -> Result<RangeResponse> {
        self.range(RangeRequest::new(KeyRange::prefix(prefix)))
            .await
    }
    /// Put a key without options.
    async fn put_kv(
        &self,
        key: impl Into<Bytes> + Send,
        value: impl Into<Bytes> + Send,
    ) -> Result<PutResponse> {
        self.put(PutRequest::new(key, value)).await
    }
    /// Delete one key; returns how many were deleted (0 or 1).
    async fn delete_key(&self, key: impl Into<Bytes> + Send) -> Result<i64> {
        Ok(self
            .delete(DeleteRequest::new(KeyRange::key(key)))
            .await?
            .deleted)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        (**self).range(req).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        (**self).put(req).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        (**self).delete(req).await
    }
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        (**self).txn(req).await
    }
    async fn compact(&self, revision: i64) -> Result<CompactResponse> {
        (**self).compact(revision).await
    }
    async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        (**self).lease_grant(ttl, id).await
    }
    async fn lease_revoke(&self, id: i64) -> Result<ResponseHeader> {
        (**self).lease_revoke(id).await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        (**self).lease_keep_alive(id).await
    }
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        (**self).lease_time_to_live(id, keys).await
    }
    async fn lease_list(&self) -> Result<Vec<i64>> {
        (**self).lease_list().await
    }
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        (**self).watch(req).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        (**self).hash_kv(revision).await
    }
    async fn status(&self) -> Result<StatusResponse> {
        (**self).status().await
    }
    async fn backup(&self) -> Result<Backup> {
        (**self).backup().await
    }
    async fn defragment(&self) -> Result<ResponseHeader> {
        (**self).defragment().await
    }
    fn limits(&self) -> Limits {
        (**self).limits()
    }
    fn thread_flushes(&self) -> Option<ThreadFlushes> {
        (**self).thread_flushes()
    }
}

/// Checks a request's size and shape against `limits` (shared by all backends so that they
/// reject the same requests with the same errors).
pub fn check_txn(req: &TxnRequest, limits: &Limits) -> Result<()> {
    let mut size = 0usize;
    check_txn_level(req, limits, &mut size, 0)?;
    check_size(size, limits)
}

/// How deep transactions may nest.
pub const MAX_TXN_DEPTH: usize = 8;

/// One level of [`check_txn`]: its op counts (each branch and the compares within the limit,
/// as etcd counts them per level), keys, and the bytes it adds to `size`.
fn check_txn_level(
    req: &TxnRequest,
    limits: &Limits,
    size: &mut usize,
    depth: usize,
) -> Result<()> {
    if depth > MAX_TXN_DEPTH {
        return Err(StoreError::InvalidArgument(format!(
            "transactions nest {depth} deep; at most {MAX_TXN_DEPTH} levels are allowed"
        )));
    }
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > limits.max_txn_ops {
        return Err(StoreError::TooManyOps {
            ops,
            limit: limits.max_txn_ops,
        });
    }
    for c in &req.compare {
        *size += c.range.key.len() + c.range.range_end.len();
        if let CompareTarget::Value(v) = &c.target {
            *size += v.len();
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            TxnOp::Put(p) => {
                check_key(&p.key)?;
                *size += p.key.len() + p.value.len();
            }
            TxnOp::Range(r) => {
                check_key(&r.range.key)?;
                *size += r.range.key.len() + r.range.range_end.len();
            }
            TxnOp::Delete(d) => {
                check_key(&d.range.key)?;
                *size += d.range.key.len() + d.range.range_end.len();
            }
            TxnOp::Txn(t) => check_txn_level(t, limits, size, depth + 1)?,
        }
    }
    Ok(())
}

/// Rejects an empty key (etcd: "key is not provided").
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument(
            "key is not provided (keys must not be empty)".into(),
        ));
    }
    Ok(())
}

/// Rejects a request larger than `limits.max_request_bytes`.
pub fn check_size(size: usize, limits: &Limits) -> Result<()> {
    if size > limits.max_request_bytes {
        return Err(StoreError::TooLarge {
            what: "request",
            size,
            limit: limits.max_request_bytes,
        });
    }
    Ok(())
}
