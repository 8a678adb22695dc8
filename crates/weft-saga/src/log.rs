//! The durable saga log on any [`Store`]: key layout, fenced writes, reads.
//!
//! | key | value |
//! |---|---|
//! | `/weft/saga/d/<id>` | the definition and the input (written once) |
//! | `/weft/saga/s/<id>` | the [`SagaRecord`] (rewritten by every transition) |
//! | `/weft/saga/e/<id>/<seq>` | the timeline [`Event`]s of one transition, from number `seq` |
//! | `/weft/saga/i/<status>/<id>` | the index by status |
//! | `/weft/saga/f/<finished ms>/<id>` | finished sagas by time (what retention sweeps) |
//! | `/weft/saga/o/<id>` | the owning orchestrator, under its session's lease |
//! | `/weft/saga/m/<name>` | an orchestrator, under its session's lease |
//! | `/weft/saga/c/<id>` | an operator's request to the owner (`abort`), deleted when served |
//!
//! Every transition is one transaction: the record, its events and the index move together,
//! and only while the writer still owns the saga (its owner key has the create revision it
//! claimed) and nobody wrote the record since (its mod revision). A fenced-out writer gets
//! [`SagaError::NotOwner`] and stops.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_store::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, PutRequest, RangeRequest, Store,
    TxnOp, TxnRequest,
};

use crate::def::SagaDef;
use crate::error::{Result, SagaError};
use crate::state::{SagaRecord, Status};

/// Root of every saga key.
pub const PREFIX: &str = "/weft/saga/";

pub(crate) fn def_key(id: &str) -> String {
    format!("{PREFIX}d/{id}")
}
pub(crate) fn state_key(id: &str) -> String {
    format!("{PREFIX}s/{id}")
}
pub(crate) fn events_prefix(id: &str) -> String {
    format!("{PREFIX}e/{id}/")
}
pub(crate) fn event_key(id: &str, seq: u64) -> String {
    format!("{PREFIX}e/{id}/{seq:010}")
}
pub(crate) fn index_prefix(st: Status) -> String {
    format!("{PREFIX}i/{}/", st.as_str())
}
pub(crate) fn index_key(st: Status, id: &str) -> String {
    format!("{PREFIX}i/{}/{id}", st.as_str())
}
pub(crate) fn finished_prefix() -> String {
    format!("{PREFIX}f/")
}
pub(crate) fn finished_key(at_ms: u64, id: &str) -> String {
    format!("{PREFIX}f/{at_ms:013}/{id}")
}
pub(crate) fn owner_prefix() -> String {
    format!("{PREFIX}o/")
}
pub(crate) fn owner_key(id: &str) -> String {
    format!("{PREFIX}o/{id}")
}
pub(crate) fn member_prefix() -> String {
    format!("{PREFIX}m/")
}
pub(crate) fn member_key(name: &str) -> String {
    format!("{PREFIX}m/{name}")
}
pub(crate) fn control_prefix() -> String {
    format!("{PREFIX}c/")
}
pub(crate) fn control_key(id: &str) -> String {
    format!("{PREFIX}c/{id}")
}

/// Checks a saga id: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(SagaError::InvalidArgument(format!(
            "saga id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."
        )));
    }
    Ok(())
}

/// A timeline entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// What happened: `submitted`, `started`, `succeeded`, `attempt_failed`, `failed`,
    /// `compensating`, `compensated`, `parked`, `committed`, `resumed`, `skipped`, `aborted`,
    /// `deadline`, `taken_over`.
    pub kind: String,
    /// The step, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The call, if a step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::state::Phase>,
    /// The attempt, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How long the call took, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// An error or a note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event of `kind` now.
    pub fn new(kind: &str, at_ms: u64) -> Self {
        Event {
            at_ms,
            kind: kind.to_string(),
            step: None,
            phase: None,
            attempt: None,
            duration_ms: None,
            detail: None,
        }
    }

    /// With a step and phase.
    pub fn step(mut self, step: &str, phase: crate::state::Phase) -> Self {
        self.step = Some(step.to_string());
        self.phase = Some(phase);
        self
    }

    /// With a detail.
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// What `/weft/saga/d/<id>` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    /// The definition.
    pub def: SagaDef,
    /// The input.
    pub input: Value,
}

/// A saga's record as read, with the revision fences of its next write.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The record.
    pub record: SagaRecord,
    /// The record key's mod revision.
    pub mod_revision: i64,
}

/// The saga log of one store.
#[derive(Clone)]
pub struct Log {
    store: Arc<dyn Store>,
}

fn put(key: String, value: Vec<u8>) -> TxnOp {
    TxnOp::Put(PutRequest::new(key, value))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("saga records serialize")
}

impl Log {
    /// The log in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Log { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Writes a new saga (definition, record, first events, index), owned by `owner` (name and
    /// lease) or left for another orchestrator to claim, in one transaction; its revision (the
    /// owner key's create revision and the record's mod revision), or `None` if the id exists
    /// already.
    pub async fn create(
        &self,
        stored: &Stored,
        record: &SagaRecord,
        events: &[Event],
        owner: Option<(&str, i64)>,
    ) -> Result<Option<i64>> {
        let id = &record.id;
        let mut ops = vec![
            put(def_key(id), to_json(stored)),
            put(state_key(id), to_json(record)),
            put(index_key(record.status, id), Vec::new()),
        ];
        if let Some((owner, lease)) = owner {
            ops.push(TxnOp::Put(
                PutRequest::new(owner_key(id), owner.as_bytes().to_vec()).lease(lease),
            ));
        }
        if !events.is_empty() {
            let first = record.events - events.len() as u64;
            ops.push(put(event_key(id, first), to_json(&events)));
        }
        let r = self
            .store
            .txn(
                TxnRequest::new()
                    .when([Compare::new(
                        def_key(id),
                        CompareOp::Equal,
                        CompareTarget::CreateRevision(0),
                    )])
                    .and_then(ops),
            )
            .await?;
        Ok(r.succeeded.then_some(r.header.revision))
    }

    /// Writes a transition: the new record and its events, moving the index if the status
    /// changed. Fenced by the owner key's create revision (`owner_rev`; 0: the saga must be
    /// unowned) and the record's mod revision. Returns the new mod revision. With `release`,
    /// the owner key is deleted in the same transaction (a parked or finished saga).
    pub async fn commit(
        &self,
        loaded: &Loaded,
        next: &SagaRecord,
        events: &[Event],
        owner_rev: i64,
        release: bool,
    ) -> Result<i64> {
        let id = &next.id;
        let mut ops = vec![put(state_key(id), to_json(next))];
        let prev = loaded.record.status;
        if next.status.is_final() && !prev.is_final() {
            ops.push(put(finished_key(next.updated_ms, id), Vec::new()));
        }
        if prev != next.status {
            ops.push(TxnOp::Delete(DeleteRequest::new(KeyRange::key(index_key(
                prev, id,
            )))));
            ops.push(put(index_key(next.status, id), Vec::new()));
        }
        if !events.is_empty() {
            let first = next.events - events.len() as u64;
            ops.push(put(event_key(id, first), to_json(&events)));
        }
        if release {
            ops.push(TxnOp::Delete(DeleteRequest::new(KeyRange::key(owner_key(
                id,
            )))));
        }
        let r = self
            .store
            .txn(
                TxnRequest::new()
                    .when([
                        Compare::new(
                            owner_key(id),
                            CompareOp::Equal,
                            CompareTarget::CreateRevision(owner_rev),
                        ),
                        Compare::new(
                            state_key(id),
                            CompareOp::Equal,
                            CompareTarget::ModRevision(loaded.mod_revision),
                        ),
                    ])
                    .and_then(ops),
            )
            .await?;
        if !r.succeeded {
            return Err(SagaError::NotOwner(id.clone()));
        }
        Ok(r.header.revision)
    }

    /// Claims an unowned saga for `lease`, if it is still in `status` (when given: a claim
    /// must not take a saga that came to rest meanwhile); the owner key's create revision, or
    /// `None` if someone owns it or its status moved on.
    pub async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease: i64,
        status: Option<Status>,
    ) -> Result<Option<i64>> {
        let mut guards = vec![Compare::new(
            owner_key(id),
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )];
        if let Some(st) = status {
            guards.push(Compare::new(
                index_key(st, id),
                CompareOp::Greater,
                CompareTarget::CreateRevision(0),
            ));
        }
        let r = self
            .store
            .txn(TxnRequest::new().when(guards).and_then([TxnOp::Put(
                PutRequest::new(owner_key(id), owner.as_bytes().to_vec()).lease(lease),
            )]))
            .await?;
        Ok(r.succeeded.then_some(r.header.revision))
    }

    /// Gives a saga up without a transition (an orchestrator shutting down).
    pub async fn release(&self, id: &str, owner_rev: i64) -> Result<()> {
        self.store
            .txn(
                TxnRequest::new()
                    .when([Compare::new(
                        owner_key(id),
                        CompareOp::Equal,
                        CompareTarget::CreateRevision(owner_rev),
                    )])
                    .and_then([TxnOp::Delete(DeleteRequest::new(KeyRange::key(owner_key(
                        id,
                    ))))]),
            )
            .await?;
        Ok(())
    }

    /// The value of one of the saga's keys, decoded, with the key's mod revision.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        key: String,
        what: &str,
    ) -> Result<(T, i64)> {
        let r = self
            .store
            .range(RangeRequest::new(KeyRange::key(key)))
            .await?;
        let kv = r
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| SagaError::NotFound(id.to_string()))?;
        let v = serde_json::from_slice(&kv.value).map_err(|e| SagaError::Corrupt {
            id: id.to_string(),
            message: format!("{what}: {e}"),
        })?;
        Ok((v, kv.mod_revision))
    }

    /// The saga's record.
    pub async fn load(&self, id: &str) -> Result<Loaded> {
        let (record, mod_revision) = self.read(id, state_key(id), "record").await?;
        Ok(Loaded {
            record,
            mod_revision,
        })
    }

    /// The saga's definition and input.
    pub async fn stored(&self, id: &str) -> Result<Stored> {
        Ok(self.read(id, def_key(id), "definition").await?.0)
    }

    /// The saga's timeline.
    pub async fn events(&self, id: &str) -> Result<Vec<Event>> {
        let r = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(events_prefix(id))))
            .await?;
        let mut out = Vec::new();
        for kv in &r.kvs {
            let batch: Vec<Event> =
                serde_json::from_slice(&kv.value).map_err(|e| SagaError::Corrupt {
                    id: id.to_string(),
                    message: format!("events: {e}"),
                })?;
            out.extend(batch);
        }
        Ok(out)
    }

    /// The names below `prefix` (keys without it), in key order, at most `limit` (0: all).
    async fn names_under(&self, prefix: String, limit: i64) -> Result<Vec<String>> {
        let mut req = RangeRequest::new(KeyRange::prefix(prefix.clone())).keys_only();
        req.limit = limit;
        let r = self.store.range(req).await?;
        Ok(r.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect())
    }

    /// Ids with `status`, in id order, at most `limit` (0: all).
    pub async fn ids(&self, status: Status, limit: i64) -> Result<Vec<String>> {
        self.names_under(index_prefix(status), limit).await
    }

    /// How many sagas have `status` (a count, no keys read out).
    pub async fn count(&self, status: Status) -> Result<usize> {
        let req = RangeRequest::new(KeyRange::prefix(index_prefix(status))).count_only();
        Ok(self.store.range(req).await?.count as usize)
    }

    /// Ids with an owner key.
    pub async fn owned(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .names_under(owner_prefix(), 0)
            .await?
            .into_iter()
            .collect())
    }

    /// Deletes every key of a finished saga, and its entry `finished` in the time index.
    pub async fn remove(&self, id: &str, status: Status, finished: &[u8]) -> Result<()> {
        let del = |r: KeyRange| TxnOp::Delete(DeleteRequest::new(r));
        self.store
            .txn(TxnRequest::new().and_then([
                del(KeyRange::key(def_key(id))),
                del(KeyRange::key(state_key(id))),
                del(KeyRange::prefix(events_prefix(id))),
                del(KeyRange::key(index_key(status, id))),
                del(KeyRange::key(Bytes::copy_from_slice(finished))),
            ]))
            .await?;
        Ok(())
    }

    /// Sagas that finished before `cutoff_ms` (oldest first, at most `limit`): each one's id
    /// and its key in the time index.
    pub async fn finished_before(
        &self,
        cutoff_ms: u64,
        limit: i64,
    ) -> Result<Vec<(String, Bytes)>> {
        let mut req = RangeRequest::new(KeyRange::range(
            finished_prefix(),
            format!("{PREFIX}f/{cutoff_ms:013}"),
        ))
        .keys_only();
        req.limit = limit;
        let r = self.store.range(req).await?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| {
                let id = kv.key.rsplit(|b| *b == b'/').next()?;
                Some((String::from_utf8_lossy(id).into_owned(), kv.key))
            })
            .collect())
    }

    /// Asks the owner of a running saga to act (`abort`): a key its orchestrator watches.
    pub async fn request(&self, id: &str, what: &str) -> Result<()> {
        self.store
            .put(PutRequest::new(control_key(id), what.as_bytes().to_vec()))
            .await?;
        Ok(())
    }

    /// Removes a served request.
    pub async fn request_served(&self, id: &str) -> Result<()> {
        self.store
            .delete(DeleteRequest::new(KeyRange::key(control_key(id))))
            .await?;
        Ok(())
    }

    /// The owner key's value and lease.
    pub async fn member_lease(&self, name: &str) -> Result<Option<i64>> {
        let r = self
            .store
            .range(RangeRequest::new(KeyRange::key(member_key(name))))
            .await?;
        Ok(r.kvs.first().map(|kv| kv.lease))
    }

    /// Registers an orchestrator under its lease.
    pub async fn register_member(&self, name: &str, lease: i64) -> Result<()> {
        self.store
            .put(PutRequest::new(member_key(name), Bytes::from(name.to_string())).lease(lease))
            .await?;
        Ok(())
    }

    /// The live orchestrators' names.
    pub async fn members(&self) -> Result<Vec<String>> {
        self.names_under(member_prefix(), 0).await
    }
}
