//! Automatic failover, Patroni-style: the leader lock lives in an external store (an etcd
//! cluster, through `weft-store-etcd`, or any [`Store`]); weft only moves the data.
//!
//! Every node of a group keeps a session (a lease) in that store and publishes, under it, its
//! name, address, revision and epoch (`/weft/repl/<group>/member/<name>`, every 100 ms). The
//! primary holds `/weft/repl/<group>/leader` under its lease. When the key is gone (the
//! primary's lease expired: it died, or lost the store), the remaining nodes wait `settle` so
//! that their published revisions are final, and only a node holding every revision any live
//! member holds (and every revision it heard the old primary acknowledge under semi-sync)
//! puts the key, if still absent, in one transaction; ties go to the smallest name. The
//! winner is promoted with a new epoch above every member's; the others follow it. A primary
//! whose session is lost steps down at once (writes refused), before its lease can expire
//! in the store, so no two primaries take writes at the same time; one that finds another
//! leader restarts (`on_restart`): `weft up` re-executes itself, and a node holding revisions
//! the new primary lacks resyncs from its snapshot, reporting the revisions it discarded.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use weft_coord::{Session, SessionOptions};
use weft_store::{
    Compare, CompareOp, CompareTarget, PutRequest, Store, StoreExt, TxnOp, TxnRequest,
};

use crate::Replication;

/// Settings of automatic failover.
#[derive(Clone)]
pub struct Failover {
    /// Where the leader lock lives (an etcd cluster).
    pub coord: Arc<dyn Store>,
    /// The group's name: nodes of one group replicate one data set.
    pub group: String,
    /// The session TTL, seconds: how soon a dead primary's lock expires.
    pub ttl: i64,
    /// This node's HTTP address as the others reach it.
    pub url: String,
    /// How long nodes wait after the lock is gone before one takes it.
    pub settle: Duration,
    /// Called when this node must restart to follow another primary (it stepped down).
    pub on_restart: Arc<dyn Fn(String) + Send + Sync>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("group", &self.group)
            .field("ttl", &self.ttl)
            .field("url", &self.url)
            .finish()
    }
}

/// The leader key's value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leader {
    /// The primary's name.
    pub name: String,
    /// Its HTTP address.
    pub url: String,
    /// Its epoch.
    pub epoch: u64,
    /// The revision it started from.
    pub fork: i64,
}

/// A member's published state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    name: String,
    url: String,
    rev: i64,
    epoch: u64,
}

fn leader_key(group: &str) -> String {
    format!("/weft/repl/{group}/leader")
}

fn member_prefix(group: &str) -> String {
    format!("/weft/repl/{group}/member/")
}

/// The group's leader now, if any.
pub async fn leader(coord: &Arc<dyn Store>, group: &str) -> Result<Option<Leader>, String> {
    let kv = coord
        .get(leader_key(group))
        .await
        .map_err(|e| e.to_string())?;
    Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// Runs failover for this node until aborted.
pub async fn run(repl: Arc<Replication>, f: Failover) {
    loop {
        let opts = SessionOptions {
            ttl: f.ttl,
            ..Default::default()
        };
        let session = match Session::new(f.coord.clone(), opts).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "failover: no session in the coordination store; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let why = term(&repl, &f, &session).await;
        if repl.primary_of().is_none() {
            repl.step_down(&format!("lost the leader lock ({why})"));
        }
        tracing::warn!(reason = %why, "failover: session ended");
        let _ = session.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One session's life: publishes this member, follows the leader or takes the lock.
async fn term(repl: &Arc<Replication>, f: &Failover, session: &Session) -> String {
    let mut none_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = session.lost() => return r.to_string(),
        }
        // The store's calls may hang (a partition); the session's loss ends them at once.
        tokio::select! {
            _ = step(repl, f, session, &mut none_since) => {}
            r = session.lost() => return r.to_string(),
        }
    }
}

/// One turn: publish this member, then follow the leader or campaign.
async fn step(
    repl: &Arc<Replication>,
    f: &Failover,
    session: &Session,
    none_since: &mut Option<Instant>,
) {
    if let Err(e) = publish(repl, f, session).await {
        tracing::debug!(error = %e, "failover: cannot publish this member");
        return;
    }
    let l = match leader(&f.coord, &f.group).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "failover: cannot read the leader");
            return;
        }
    };
    match l {
        Some(l) => {
            *none_since = None;
            if l.name != repl.cfg.name {
                obey(repl, f, &l);
            }
        }
        None => {
            let since = *none_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= f.settle {
                match campaign(repl, f, session).await {
                    Ok(true) => *none_since = None,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "failover: campaign failed"),
                }
            }
        }
    }
}

/// Another node leads: follow it (or restart to, after stepping down).
fn obey(repl: &Arc<Replication>, f: &Failover, l: &Leader) {
    match repl.primary_of() {
        None => {
            repl.step_down(&format!(
                "{} holds the leader lock (epoch {})",
                l.name, l.epoch
            ));
            (f.on_restart)(l.url.clone());
        }
        Some(p) if p == l.url => {
            if repl.follower.needs_snapshot() {
                (f.on_restart)(l.url.clone());
            }
        }
        Some(_) => {
            tracing::info!(leader = %l.name, url = %l.url, epoch = l.epoch, "failover: following the leader");
            repl.follow(l.url.clone());
        }
    }
}

async fn publish(repl: &Replication, f: &Failover, session: &Session) -> Result<(), String> {
    let m = Member {
        name: repl.cfg.name.clone(),
        url: f.url.clone(),
        rev: repl.store.durable_point().rev,
        epoch: repl.epoch(),
    };
    let key = format!("{}{}", member_prefix(&f.group), m.name);
    let value = serde_json::to_vec(&m).expect("members serialize");
    f.coord
        .put(PutRequest::new(key, value).lease(session.lease()))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Takes the leader lock if this node may: it holds every revision a live member holds and
/// every acknowledged one it heard of, and is first by name among those at the top.
async fn campaign(
    repl: &Arc<Replication>,
    f: &Failover,
    session: &Session,
) -> Result<bool, String> {
    if repl.follower.needs_snapshot() {
        return Ok(false);
    }
    let members = f
        .coord
        .get_prefix(member_prefix(&f.group))
        .await
        .map_err(|e| e.to_string())?;
    let members: Vec<Member> = members
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let mine = repl.store.durable_point().rev;
    let top = members
        .iter()
        .map(|m| m.rev)
        .max()
        .unwrap_or(mine)
        .max(mine);
    if mine < top || mine < repl.follower.acked_rev() {
        return Ok(false);
    }
    let first = members
        .iter()
        .filter(|m| m.rev == top)
        .map(|m| m.name.as_str())
        .min()
        .unwrap_or(&repl.cfg.name);
    if first < repl.cfg.name.as_str() {
        return Ok(false);
    }
    let epoch = members
        .iter()
        .map(|m| m.epoch)
        .max()
        .unwrap_or(0)
        .max(repl.epoch())
        + 1;
    let me = Leader {
        name: repl.cfg.name.clone(),
        url: f.url.clone(),
        epoch,
        fork: mine,
    };
    let key = leader_key(&f.group);
    let put = PutRequest::new(
        key.clone(),
        serde_json::to_vec(&me).expect("leaders serialize"),
    )
    .lease(session.lease());
    let txn = TxnRequest::new()
        .when([Compare::new(
            key,
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )])
        .and_then([TxnOp::Put(put)]);
    let won = f.coord.txn(txn).await.map_err(|e| e.to_string())?.succeeded;
    if !won {
        return Ok(false);
    }
    let t = Instant::now();
    repl.take_over(epoch, mine).map_err(|e| e.to_string())?;
    tracing::warn!(epoch, revision = mine, took = ?t.elapsed(), "failover: this node took the leader lock and is the primary");
    Ok(true)
}
