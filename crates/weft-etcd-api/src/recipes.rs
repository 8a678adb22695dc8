//! etcd's server-side recipes, `v3lockpb.Lock` and `v3electionpb.Election`, served with
//! weft-coord's recipes on the same store and with etcd's semantics:
//!
//! - **Lock** `name` with a lease waits until held and answers the key `name/<lease hex>`;
//!   ownership is the lease's (the key goes with it). A retried call with the same lease takes
//!   over its key and place. **Unlock** deletes the key.
//! - **Campaign** `name` with a lease and a value waits until elected and answers the leader
//!   key (`name`, key `name/<lease hex>`, `rev` = its create revision, `lease`); a retried call
//!   takes over the candidacy and sets the value. **Proclaim** sets the value while still the
//!   leader (else "election: not leader"), **Leader** answers the leader's key-value (else
//!   "election: no leader"), **Observe** streams it at every change of leader or value, and
//!   **Resign** deletes the key if it is still that leadership.
//!
//! A call cancelled by its client (a dropped request) withdraws its waiter, as etcd's do.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use weft_coord::{CoordError, Election, Leadership, Mutex, Session};
use weft_store::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, RangeRequest, Store, TxnOp,
    TxnRequest,
};

use crate::status;
use weft_auth::Need;

/// The generated messages and services (`proto/`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// Header and key-value as the recipe services send them.
    pub mod weftetcd {
        tonic::include_proto!("weftetcd");
    }
    /// `v3lockpb`.
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    /// `v3electionpb`.
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::v3electionpb::{self as epb, election_server};
use pb::v3lockpb::{self as lpb, lock_server};
use pb::weftetcd::{KeyValue, ResponseHeader};

/// The Lock and Election services over one store.
#[derive(Clone)]
pub struct Recipes {
    store: Arc<dyn Store>,
    member_id: u64,
    auth: Arc<weft_auth::Auth>,
}

/// The election's error when the caller is no longer the leader.
const NOT_LEADER: &str = "election: not leader";
/// The election's error when nobody leads.
const NO_LEADER: &str = "election: no leader";

fn coord_status(e: CoordError) -> Status {
    match e {
        CoordError::Store(e) => status(e),
        CoordError::SessionLost(_) => Status::not_found("etcdserver: requested lease not found"),
        CoordError::OwnershipLost(_) => Status::unknown(NOT_LEADER),
        other => Status::unknown(other.to_string()),
    }
}

fn name_prefix(name: &[u8]) -> Result<(Bytes, String), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    let prefix = Bytes::from([name, b"/"].concat());
    Ok((prefix, String::from_utf8_lossy(name).into_owned()))
}

impl Recipes {
    /// The services on `store`, answering with `member_id` in their headers, for the callers
    /// `auth` allows (see `auth.rs`: what etcd's recipes need through the KV API).
    pub fn new(store: Arc<dyn Store>, member_id: u64, auth: Arc<weft_auth::Auth>) -> Self {
        Recipes {
            store,
            member_id,
            auth,
        }
    }

    /// `Ok` if the caller of `req` may `needs` every key under `prefix` (or the key alone,
    /// with `whole` false).
    fn allow<T>(
        &self,
        req: &Request<T>,
        key: &[u8],
        whole: bool,
        needs: &[Need],
    ) -> Result<(), Status> {
        let who = crate::auth::identify(&self.auth, req)?;
        let key = Bytes::copy_from_slice(key);
        let range = match whole {
            true => KeyRange::prefix(key),
            false => KeyRange::key(key),
        };
        self.auth
            .check_all(&who, &range, needs)
            .map_err(crate::auth_status)
    }

    /// The Lock service, ready for tonic's router.
    pub fn lock_server(&self) -> lock_server::LockServer<Recipes> {
        lock_server::LockServer::new(self.clone())
    }

    /// The Election service, ready for tonic's router.
    pub fn election_server(&self) -> election_server::ElectionServer<Recipes> {
        election_server::ElectionServer::new(self.clone())
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member_id,
            member_id: self.member_id,
            revision,
            raft_term: 1,
        })
    }

    /// The header of a call whose recipe does not hand back the revision it ended at (Lock,
    /// Campaign, Proclaim): the store's current revision, one more read.
    async fn current_header(&self) -> Result<Option<ResponseHeader>, Status> {
        let rev = self.store.status().await.map_err(status)?.header.revision;
        Ok(self.header(rev))
    }

    /// A session over the caller's lease (fails as etcd does if the lease is gone).
    async fn session(&self, lease: i64) -> Result<Session, Status> {
        Session::attach(self.store.clone(), lease)
            .await
            .map_err(coord_status)
    }

    /// The leader's key-value under `prefix` (lowest create revision), if any, and the
    /// revision it was read at.
    async fn leader_kv(&self, prefix: &Bytes) -> Result<(Option<KeyValue>, i64), Status> {
        let r = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(prefix.clone())))
            .await
            .map_err(status)?;
        let rev = r.header.revision;
        let kv = r
            .kvs
            .into_iter()
            .min_by_key(|kv| kv.create_revision)
            .map(|kv| KeyValue {
                key: kv.key.to_vec(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                value: kv.value.to_vec(),
                lease: kv.lease,
            });
        Ok((kv, rev))
    }

    fn leadership(session: &Session, l: &epb::LeaderKey) -> Leadership {
        Leadership::from_parts(session, Bytes::from(l.key.clone()), l.rev)
    }
}

#[tonic::async_trait]
impl lock_server::Lock for Recipes {
    async fn lock(
        &self,
        req: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let (prefix, name) = name_prefix(&req.get_ref().name)?;
        self.allow(&req, &prefix, true, &[Need::Read, Need::Write])?;
        let r = req.into_inner();
        let session = self.session(r.lease).await?;
        let guard = Mutex::with_prefix(&session, prefix, &name)
            .lock_or_resume()
            .await
            .map_err(coord_status)?;
        let (key, _) = guard.detach();
        Ok(Response::new(lpb::LockResponse {
            header: self.current_header().await?,
            key: key.to_vec(),
        }))
    }

    async fn unlock(
        &self,
        req: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        self.allow(&req, &req.get_ref().key, false, &[Need::Write])?;
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let r = self
            .store
            .delete(DeleteRequest::new(KeyRange::key(key)))
            .await
            .map_err(status)?;
        Ok(Response::new(lpb::UnlockResponse {
            header: self.header(r.header.revision),
        }))
    }
}

type Observed = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl election_server::Election for Recipes {
    async fn campaign(
        &self,
        req: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let (prefix, name) = name_prefix(&req.get_ref().name)?;
        self.allow(&req, &prefix, true, &[Need::Read, Need::Write])?;
        let r = req.into_inner();
        let session = self.session(r.lease).await?;
        let l = Election::with_prefix(self.store.clone(), prefix, &name)
            .campaign_or_resume(&session, r.value)
            .await
            .map_err(coord_status)?;
        let (key, rev) = l.detach();
        Ok(Response::new(epb::CampaignResponse {
            header: self.current_header().await?,
            leader: Some(epb::LeaderKey {
                name: r.name,
                key: key.to_vec(),
                rev,
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let key = req.get_ref().leader.as_ref().map(|l| l.key.clone());
        self.allow(&req, &key.unwrap_or_default(), false, &[Need::Write])?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(NOT_LEADER))?;
        let session = self.session(leader.lease).await?;
        let l = Self::leadership(&session, &leader);
        let res = l.proclaim(r.value).await;
        l.detach();
        res.map_err(coord_status)?;
        Ok(Response::new(epb::ProclaimResponse {
            header: self.current_header().await?,
        }))
    }

    async fn leader(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let (prefix, _) = name_prefix(&req.get_ref().name)?;
        self.allow(&req, &prefix, true, &[Need::Read])?;
        let (kv, rev) = self.leader_kv(&prefix).await?;
        let kv = kv.ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(epb::LeaderResponse {
            header: self.header(rev),
            kv: Some(kv),
        }))
    }

    type ObserveStream = Observed;

    async fn observe(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<Observed>, Status> {
        let (prefix, name) = name_prefix(&req.get_ref().name)?;
        self.allow(&req, &prefix, true, &[Need::Read])?;
        let changes = Election::with_prefix(self.store.clone(), prefix.clone(), &name).observe();
        let me = self.clone();
        // Every change of leader or value, as the leader's whole key-value; no event while
        // nobody leads (etcd's Observe waits for a leader).
        let stream = changes.filter_map(move |item| {
            let (me, prefix) = (me.clone(), prefix.clone());
            async move {
                match item {
                    Ok(None) => None,
                    Ok(Some(_)) => match me.leader_kv(&prefix).await {
                        Ok((Some(kv), rev)) => Some(Ok(epb::LeaderResponse {
                            header: me.header(rev),
                            kv: Some(kv),
                        })),
                        Ok((None, _)) => None,
                        Err(e) => Some(Err(e)),
                    },
                    Err(e) => Some(Err(coord_status(e))),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let key = req.get_ref().leader.as_ref().map(|l| l.key.clone());
        self.allow(&req, &key.unwrap_or_default(), false, &[Need::Write])?;
        let leader = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(NOT_LEADER))?;
        // Deletes the key only if it is still this leadership; otherwise nothing (as etcd).
        let t = TxnRequest::new()
            .when([Compare::new(
                leader.key.clone(),
                CompareOp::Equal,
                CompareTarget::CreateRevision(leader.rev),
            )])
            .and_then([TxnOp::Delete(DeleteRequest::new(KeyRange::key(leader.key)))]);
        let r = self.store.txn(t).await.map_err(status)?;
        Ok(Response::new(epb::ResignResponse {
            header: self.header(r.header.revision),
        }))
    }
}
