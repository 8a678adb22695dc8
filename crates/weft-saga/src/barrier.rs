//! A sub-transaction barrier (dtm's idea) for services whose data lives in a weft store: it
//! makes a step's action and compensation idempotent and safe against reordering.
//!
//! - **Idempotent**: a retried action or compensation (same saga and step) applies once.
//! - **Null compensation**: a compensation that arrives before its action (the action's
//!   request was delayed or lost) is recorded and does nothing.
//! - **Hanging**: an action that arrives after its compensation is refused, so it never takes
//!   effect after it was undone.
//!
//! Each call applies the service's own writes ([`TxnOp`]s) in the same transaction as the
//! barrier record, so "applied once" holds for the data too.
//!
//! ```
//! use std::sync::Arc;
//! use weft_saga::{Barrier, BarrierOutcome};
//! use weft_store::{PutRequest, TxnOp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store: Arc<dyn weft_store::Store> =
//!     Arc::new(weft_store::embedded::Embedded::open(dir.path(), Default::default()).await?);
//! let barrier = Barrier::new(store);
//! let hold = || vec![TxnOp::Put(PutRequest::new("stock/42/held/saga-1", "1"))];
//! assert_eq!(barrier.action("saga-1", "reserve", hold()).await?, BarrierOutcome::Applied);
//! assert_eq!(barrier.action("saga-1", "reserve", hold()).await?, BarrierOutcome::Duplicate);
//! // A compensation that comes first makes the late action a no-op.
//! assert_eq!(barrier.compensate("saga-2", "reserve", vec![]).await?, BarrierOutcome::NullCompensation);
//! assert_eq!(barrier.action("saga-2", "reserve", hold()).await?, BarrierOutcome::Refused);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use weft_store::{
    Compare, CompareOp, CompareTarget, KeyRange, PutRequest, RangeRequest, Store, TxnOp, TxnRequest,
};

use crate::error::Result;

/// Default key prefix of barrier records.
pub const BARRIER_PREFIX: &str = "/weft/barrier/";

/// What a barrier call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierOutcome {
    /// The writes were applied now.
    Applied,
    /// Applied before; nothing done (answer as the first time did).
    Duplicate,
    /// An action after its compensation: refused, nothing done.
    Refused,
    /// A compensation before its action: recorded, nothing to undo.
    NullCompensation,
}

/// Barrier records in one store.
#[derive(Clone)]
pub struct Barrier {
    store: Arc<dyn Store>,
    prefix: String,
}

fn exists(key: &str) -> Compare {
    Compare::new(
        key.to_string(),
        CompareOp::Greater,
        CompareTarget::CreateRevision(0),
    )
}

fn absent(key: &str) -> Compare {
    Compare::new(
        key.to_string(),
        CompareOp::Equal,
        CompareTarget::CreateRevision(0),
    )
}

impl Barrier {
    /// Barrier records under [`BARRIER_PREFIX`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_prefix(store, BARRIER_PREFIX)
    }

    /// Barrier records under `prefix`.
    pub fn with_prefix(store: Arc<dyn Store>, prefix: &str) -> Self {
        Barrier {
            store,
            prefix: prefix.to_string(),
        }
    }

    fn keys(&self, saga: &str, step: &str) -> (String, String) {
        let base = format!("{}{saga}/{step}/", self.prefix);
        (format!("{base}action"), format!("{base}compensation"))
    }

    async fn present(&self, key: &str) -> Result<bool> {
        let r = self
            .store
            .range(RangeRequest::new(KeyRange::key(key.to_string())).count_only())
            .await?;
        Ok(r.count > 0)
    }

    /// Applies `ops` as the action of `saga`/`step`, once, and never after its compensation.
    pub async fn action(&self, saga: &str, step: &str, ops: Vec<TxnOp>) -> Result<BarrierOutcome> {
        let (a, c) = self.keys(saga, step);
        let mut all = vec![TxnOp::Put(PutRequest::new(a.clone(), "1"))];
        all.extend(ops);
        let r = self
            .store
            .txn(
                TxnRequest::new()
                    .when([absent(&a), absent(&c)])
                    .and_then(all),
            )
            .await?;
        if r.succeeded {
            return Ok(BarrierOutcome::Applied);
        }
        Ok(if self.present(&a).await? {
            BarrierOutcome::Duplicate
        } else {
            BarrierOutcome::Refused
        })
    }

    /// Applies `ops` as the compensation of `saga`/`step`, once; if the action never ran, only
    /// records the compensation (so a late action is refused).
    pub async fn compensate(
        &self,
        saga: &str,
        step: &str,
        ops: Vec<TxnOp>,
    ) -> Result<BarrierOutcome> {
        let (a, c) = self.keys(saga, step);
        let mark = TxnOp::Put(PutRequest::new(c.clone(), "1"));
        loop {
            let mut all = vec![mark.clone()];
            all.extend(ops.iter().cloned());
            let r = self
                .store
                .txn(
                    TxnRequest::new()
                        .when([absent(&c), exists(&a)])
                        .and_then(all),
                )
                .await?;
            if r.succeeded {
                return Ok(BarrierOutcome::Applied);
            }
            if self.present(&c).await? {
                return Ok(BarrierOutcome::Duplicate);
            }
            let r = self
                .store
                .txn(
                    TxnRequest::new()
                        .when([absent(&c), absent(&a)])
                        .and_then([mark.clone()]),
                )
                .await?;
            if r.succeeded {
                return Ok(BarrierOutcome::NullCompensation);
            }
            // The action landed in between: compensate it.
        }
    }
}
