//! A key a session holds: a lock, a semaphore permit, a leadership. One type carries the rule
//! all of them share: the key is identified by its create revision (the fencing token or the
//! term), writes made "while held" are conditional on it, and a holder dropped without being
//! detached or given back deletes its key in the background (cancel safety).

use bytes::Bytes;
use weft_store::{Compare, CompareOp, CompareTarget, TxnOp, TxnRequest, TxnResponse};

use crate::lock::{delete_own, ownership_lost, still_owned, Cleanup};
use crate::session::Session;
use crate::{CoordError, Result};

/// A key held by a session, identified by its create revision.
#[derive(Debug)]
pub struct HeldKey {
    session: Session,
    key: Bytes,
    revision: i64,
    /// Detached or given back: nothing to clean up on drop.
    done: bool,
}

impl HeldKey {
    /// Holds `key`, created at `revision`, for `session`.
    pub(crate) fn new(session: &Session, key: Bytes, revision: i64) -> HeldKey {
        HeldKey {
            session: session.clone(),
            key,
            revision,
            done: false,
        }
    }

    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// Its create revision: the fencing token of a lock, the term of a leadership.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The session that holds it.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the store still records the key with this revision and the session is alive.
    pub async fn is_held(&self) -> Result<bool> {
        still_owned(&self.session, &self.key, self.revision).await
    }

    /// Resolves when the key is lost: the session is lost or the key disappears.
    pub async fn lost(&self) -> CoordError {
        ownership_lost(&self.session, &self.key, self.revision).await
    }

    /// Runs `ops` atomically only while the key is held (it exists with this create
    /// revision); fails with [`CoordError::OwnershipLost`] otherwise.
    pub async fn txn_if_held(&self, ops: Vec<TxnOp>) -> Result<TxnResponse> {
        self.session.check()?;
        let t = TxnRequest::new()
            .when([Compare::new(
                self.key.clone(),
                CompareOp::Equal,
                CompareTarget::CreateRevision(self.revision),
            )])
            .and_then(ops);
        let r = self.session.store().txn(t).await?;
        if !r.succeeded {
            return Err(CoordError::OwnershipLost(
                String::from_utf8_lossy(&self.key).into_owned(),
            ));
        }
        Ok(r)
    }

    /// Keeps the key past this value (no delete on drop); returns `(key, revision)`.
    pub fn detach(mut self) -> (Bytes, i64) {
        self.done = true;
        (std::mem::take(&mut self.key), self.revision)
    }

    /// Deletes the key if it is still this one; whether it was.
    pub async fn release(mut self) -> Result<bool> {
        self.done = true;
        delete_own(&**self.session.store(), &self.key, self.revision).await
    }
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        if !self.done {
            let _ = Cleanup {
                store: self.session.store().clone(),
                key: self.key.clone(),
                rev: self.revision,
                armed: true,
            };
        }
    }
}
