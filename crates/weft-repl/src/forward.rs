//! Writes a replica forwards to its primary, and the answers, as JSON in `Forward` and
//! `Reply` frames.

use serde::{Deserialize, Serialize};
use weft_store::{
    CompactResponse, DeleteRequest, DeleteResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    PutRequest, PutResponse, ResponseHeader, StoreError, TxnRequest, TxnResponse,
};

use crate::Policy;

/// A write.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Op {
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant { ttl: i64, id: i64 },
    LeaseRevoke(i64),
    KeepAlive(i64),
}

/// A forwarded write with the durability policy it was sent with (`None`: the primary's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forwarded {
    /// The write.
    pub op: Op,
    /// Its policy.
    pub policy: Option<Policy>,
}

/// The answer to a write.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Answer {
    Put(PutResponse),
    Delete(DeleteResponse),
    Txn(TxnResponse),
    Compact(CompactResponse),
    LeaseGrant(LeaseGrantResponse),
    Header(ResponseHeader),
    KeepAlive(LeaseKeepAliveResponse),
}

impl Answer {
    /// The revision the answer reflects.
    pub fn revision(&self) -> i64 {
        match self {
            Answer::Put(r) => r.header.revision,
            Answer::Delete(r) => r.header.revision,
            Answer::Txn(r) => r.header.revision,
            Answer::Compact(r) => r.header.revision,
            Answer::LeaseGrant(r) => r.header.revision,
            Answer::Header(r) => r.revision,
            Answer::KeepAlive(r) => r.header.revision,
        }
    }
}

/// The wire form of an answer.
pub type Outcome = Result<Answer, StoreError>;

/// An answer of the wrong kind: the primary runs another version.
pub(crate) fn mismatch(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the primary answered a forwarded {what} with another kind of answer"
    ))
}
