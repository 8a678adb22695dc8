//! Leader election: campaign, proclaim, resign, observe, with terms.
//!
//! Candidates write `PREFIX/<lease hex>` with their value; the leader is the candidate with the
//! lowest create revision, and that revision is its **term**: strictly increasing across
//! successive leaders, usable as a fencing token. A candidate watches only its predecessor.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use weft_store::{KeyRange, PutRequest, RangeRequest, Store, StoreError, TxnOp, WatchRequest};

use crate::held::HeldKey;
use crate::lock::{check_name, create_key, create_or_adopt_key, wait_turn, Cleanup};
use crate::session::Session;
use crate::{CoordError, Result};

/// Default key prefix of elections.
pub const ELECTION_PREFIX: &str = "/weft/election/";

/// The current leader as observers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's proclaimed value.
    pub value: Bytes,
    /// The leader's term (create revision of its key).
    pub term: i64,
    /// The leader's key.
    pub key: Bytes,
}

/// An election.
#[derive(Clone)]
pub struct Election {
    store: Arc<dyn Store>,
    prefix: Bytes,
    name: String,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .finish()
    }
}

/// Proof of leadership.
#[derive(Debug)]
pub struct Leadership {
    held: HeldKey,
}

async fn current_leader(store: &dyn Store, prefix: &Bytes) -> Result<(Option<Leader>, i64)> {
    let r = store
        .range(RangeRequest::new(KeyRange::prefix(prefix.clone())))
        .await?;
    let leader = r
        .kvs
        .iter()
        .min_by_key(|kv| kv.create_revision)
        .map(|kv| Leader {
            value: kv.value.clone(),
            term: kv.create_revision,
            key: kv.key.clone(),
        });
    Ok((leader, r.header.revision))
}

impl Election {
    /// The election `name` (keys under `/weft/election/<name>/`).
    pub fn new(store: Arc<dyn Store>, name: &str) -> Result<Election> {
        check_name("election", name)?;
        Ok(Election {
            store,
            prefix: Bytes::from(format!("{ELECTION_PREFIX}{name}/")),
            name: name.into(),
        })
    }

    /// An election whose candidates' keys are `prefix` + the lease id in hex (etcd's server
    /// recipes use the election's name followed by `/`). The prefix is not checked.
    pub fn with_prefix(store: Arc<dyn Store>, prefix: Bytes, name: &str) -> Election {
        Election {
            store,
            prefix,
            name: name.into(),
        }
    }

    fn key_of(&self, session: &Session) -> Bytes {
        Bytes::from(
            [
                &self.prefix[..],
                format!("{:x}", session.lease()).as_bytes(),
            ]
            .concat(),
        )
    }

    /// Becomes a candidate with `value` and waits until elected. Cancel-safe: dropping the
    /// future withdraws the candidacy. Fails at once if the session is lost.
    pub async fn campaign(&self, session: &Session, value: impl Into<Bytes>) -> Result<Leadership> {
        session.check()?;
        let key = self.key_of(session);
        let store = session.store();
        let rev = create_key(&**store, &key, value.into(), session.lease(), &self.name).await?;
        self.wait_elected(session, key, rev).await
    }

    /// Campaigns as etcd's `Campaign` call does: if this session is already a candidate (a
    /// retried call), that candidacy is taken over, with its place, and its value set to
    /// `value`.
    pub async fn campaign_or_resume(
        &self,
        session: &Session,
        value: impl Into<Bytes>,
    ) -> Result<Leadership> {
        session.check()?;
        let key = self.key_of(session);
        let value = value.into();
        let store = session.store();
        let (rev, existing) =
            create_or_adopt_key(&**store, &key, value.clone(), session.lease()).await?;
        if existing.is_some_and(|kv| kv.value != value) {
            let held = HeldKey::new(session, key.clone(), rev);
            let put = PutRequest::new(key.clone(), value).lease(session.lease());
            let r = held.txn_if_held(vec![TxnOp::Put(put)]).await;
            held.detach();
            r?;
        }
        self.wait_elected(session, key, rev).await
    }

    async fn wait_elected(&self, session: &Session, key: Bytes, rev: i64) -> Result<Leadership> {
        let mut cleanup = Cleanup {
            store: session.store().clone(),
            key: key.clone(),
            rev,
            armed: true,
        };
        wait_turn(session, &self.prefix, &key, rev, 1).await?;
        cleanup.armed = false;
        Ok(Leadership {
            held: HeldKey::new(session, key, rev),
        })
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        Ok(current_leader(&*self.store, &self.prefix).await?.0)
    }

    /// A stream of leader changes: the current leader first (or `None` if there is none), then
    /// every change of leader or value. It resynchronizes by itself after a compaction and ends
    /// with an error (never silently) if the store fails.
    pub fn observe(&self) -> impl Stream<Item = Result<Option<Leader>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        let (store, prefix) = (self.store.clone(), self.prefix.clone());
        tokio::spawn(async move {
            let mut last: Option<Option<Leader>> = None;
            loop {
                let (leader, rev) = match current_leader(&*store, &prefix).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if last.as_ref() != Some(&leader) {
                    if tx.send(Ok(leader.clone())).await.is_err() {
                        return;
                    }
                    last = Some(leader);
                }
                let mut w = match store
                    .watch(
                        WatchRequest::new(KeyRange::prefix(prefix.clone())).start_revision(rev + 1),
                    )
                    .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        m = w.message() => match m {
                            Some(Ok(_)) => {
                                let leader = match current_leader(&*store, &prefix).await {
                                    Ok((l, _)) => l,
                                    Err(e) => { let _ = tx.send(Err(e)).await; return; }
                                };
                                if last.as_ref() != Some(&leader) {
                                    if tx.send(Ok(leader.clone())).await.is_err() { return; }
                                    last = Some(leader);
                                }
                            }
                            // Resynchronize from the current state.
                            Some(Err(StoreError::Compacted { .. })) | None => break,
                            Some(Err(e)) => { let _ = tx.send(Err(e.into())).await; return; }
                        },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        tokio_stream_from(rx)
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Leadership {
    /// The term: strictly increasing across successive leaders.
    pub fn term(&self) -> i64 {
        self.held.revision()
    }

    /// The leader key.
    pub fn key(&self) -> &Bytes {
        self.held.key()
    }

    /// Publishes a new value, only while still the leader.
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<()> {
        let lease = self.held.session().lease();
        let put = PutRequest::new(self.held.key().clone(), value).lease(lease);
        self.held.txn_if_held(vec![TxnOp::Put(put)]).await?;
        Ok(())
    }

    /// Whether the store still records this leadership.
    pub async fn is_leader(&self) -> Result<bool> {
        self.held.is_held().await
    }

    /// Resolves when leadership is lost (session lost or key deleted).
    pub async fn lost(&self) -> CoordError {
        self.held.lost().await
    }

    /// Keeps the leadership past this value (no resign on drop); returns `(key, term)`.
    pub fn detach(self) -> (Bytes, i64) {
        self.held.detach()
    }

    /// Rebuilds a leadership from [`Leadership::detach`]'s parts. It checks nothing:
    /// [`Leadership::proclaim`] and [`Leadership::resign`] only act while it is still valid.
    pub fn from_parts(session: &Session, key: Bytes, term: i64) -> Leadership {
        Leadership {
            held: HeldKey::new(session, key, term),
        }
    }

    /// Gives up leadership; the next candidate is elected.
    pub async fn resign(self) -> Result<()> {
        self.held.release().await?;
        Ok(())
    }
}
