//! The checks of whole store requests, as etcd makes them: what the etcd API and the HTTP API
//! both call once a request is in the store's terms.
//!
//! - A range (or a watch, or a compare) reads its keys; a put writes its key and, when it
//!   asks for the previous value, reads it; a delete likewise on its range.
//! - A txn checks every compare and every operation of both branches, nested txns included
//!   (the branch that will not run too, as etcd does).

use weft_store as ws;

use crate::{Auth, Identity, Need, Result};

impl Auth {
    /// `Ok` if `who` may `need` every key of `range`.
    pub fn check_range(&self, who: &Identity, range: &ws::KeyRange, need: Need) -> Result<()> {
        self.check(who, &range.key, &range.range_end, need)
    }

    /// `Ok` if `who` may do every one of `needs` on every key of `range`.
    pub fn check_all(&self, who: &Identity, range: &ws::KeyRange, needs: &[Need]) -> Result<()> {
        needs
            .iter()
            .try_for_each(|&n| self.check_range(who, range, n))
    }

    /// A put writes its key, and reads it when it asks for the previous value.
    pub fn check_put(&self, who: &Identity, p: &ws::PutRequest) -> Result<()> {
        let (key, end): (&[u8], &[u8]) = (&p.key, b"");
        self.check(who, key, end, Need::Write)?;
        if p.prev_kv {
            self.check(who, key, end, Need::Read)?;
        }
        Ok(())
    }

    /// A delete writes its range, and reads it when it asks for the previous values.
    pub fn check_delete(&self, who: &Identity, d: &ws::DeleteRequest) -> Result<()> {
        self.check_range(who, &d.range, Need::Write)?;
        if d.prev_kv {
            self.check_range(who, &d.range, Need::Read)?;
        }
        Ok(())
    }

    /// Every compare and every operation of both branches of `t`.
    pub fn check_txn(&self, who: &Identity, t: &ws::TxnRequest) -> Result<()> {
        if matches!(who, Identity::Admin) {
            return Ok(());
        }
        for c in &t.compare {
            self.check_range(who, &c.range, Need::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                ws::TxnOp::Range(r) => self.check_range(who, &r.range, Need::Read)?,
                ws::TxnOp::Put(p) => self.check_put(who, p)?,
                ws::TxnOp::Delete(d) => self.check_delete(who, d)?,
                ws::TxnOp::Txn(t) => self.check_txn(who, t)?,
            }
        }
        Ok(())
    }
}

impl Auth {
    /// `Ok` if `who` may `need` every key attached to lease `id` in `store` (revoking a lease
    /// deletes them; listing them reads them). An unknown lease passes: the call itself
    /// reports it.
    pub async fn check_lease_keys(
        &self,
        who: &Identity,
        store: &dyn ws::Store,
        id: i64,
        need: Need,
    ) -> Result<()> {
        if self.is_admin(who) {
            return Ok(());
        }
        let Ok(t) = store.lease_time_to_live(id, true).await else {
            return Ok(());
        };
        for k in t.keys {
            self.check(who, &k, b"", need)?;
        }
        Ok(())
    }
}
