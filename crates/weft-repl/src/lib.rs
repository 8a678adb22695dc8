//! Replication of weft's embedded store: one primary, any number of replicas.
//!
//! The primary streams its durable log records to each replica over one connection (an HTTP
//! upgrade of `GET /v1/repl/stream`, then the frames of [`wire`]); a replica applies them in
//! order at the same revisions, makes them durable with its own fsync, and acknowledges the
//! primary's sequence number back. A replica that connects behind is fed from the primary's
//! log files first, then from its in-memory feed of new records; one behind even those needs
//! a snapshot (`weft up --replica-of` takes one at start).
//!
//! Every write on the primary has a durability [`Policy`]: `async` (acknowledged after the
//! primary's fsync), `semi-sync k` (after k replicas hold it durably) or `sync` (every
//! replica), with a timeout and what then: `block`, `fail` ([`StoreError::Unconfirmed`]: the
//! write is durable and visible on the primary, not confirmed) or `degrade` (run async,
//! visibly, until the replicas catch up). A wait that times out or is cancelled is never
//! reported as a success. As with PostgreSQL's `synchronous_commit`, a write is visible to
//! readers on the primary once it is durable there, while it waits for its replicas.
//!
//! A replica serves reads and watches; a read may ask for a minimum revision or a bound on
//! staleness ([`ReadOpts`]) and waits for it up to a timeout, or fails saying how far behind
//! the replica is. Writes sent to a replica are forwarded to the primary over the same
//! connection (then the replica waits until it shows them: read your writes), or refused with
//! the primary's address ([`StoreError::NotPrimary`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use weft_repl::{Config, Policy, Replication};
//! use weft_store::embedded::{Embedded, Options};
//! use weft_store::StoreExt;
//!
//! let store = Arc::new(Embedded::open("/tmp/primary", Options::default()).await?);
//! let cfg = Config { policy: "semi-sync=1;timeout=1s".parse::<Policy>()?, ..Config::new("p1") };
//! let repl = Replication::primary(store, cfg);
//! // Serve `repl.serve_replica(io, name, rev)` on upgraded connections (weft-server does).
//! let kv = repl.store();
//! kv.put_kv("k", "v").await?; // waits until one replica holds it
//! # Ok(()) }
//! ```

pub mod failover;
mod forward;
mod metrics;

/// The file in the data dir that keeps the epoch and its fork revision.
const EPOCH_FILE: &str = "repl-epoch";

/// The epoch and fork revision kept in data dir `dir` (`(0, 0)` when none is kept): what a
/// node starting on `dir` will follow from, before it opens its store.
pub fn saved_epoch(dir: &std::path::Path) -> (u64, i64) {
    let saved = std::fs::read_to_string(dir.join(EPOCH_FILE)).unwrap_or_default();
    let mut it = saved
        .split_whitespace()
        .map(|x| x.parse::<i64>().unwrap_or(0));
    (it.next().unwrap_or(0).max(0) as u64, it.next().unwrap_or(0))
}

/// Keeps epoch `epoch` (its primary started at revision `fork`) in data dir `dir`, durably
/// (a temp file synced, renamed, the dir synced).
pub fn save_epoch(dir: &std::path::Path, epoch: u64, fork: i64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{epoch} {fork}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(EPOCH_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}
mod policy;
mod primary;
mod replica;
mod store;
mod tracker;
pub mod wire;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_store::embedded::Embedded;
use weft_store::{Store, StoreError};

pub use forward::{Answer, Forwarded, Op};
pub use policy::{parse_duration, Level, OnTimeout, Policy, SYNTAX as POLICY_SYNTAX};
pub use replica::{probe, Plan, Probe};
pub use store::{with_policy, with_read, ReadOpts};
pub use tracker::ReplicaState;

/// Settings of a node's replication.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name (how a primary lists it).
    pub name: String,
    /// The default durability policy of writes on this node when it is primary.
    pub policy: Policy,
    /// How many replicas `sync` waits for (`None`: every replica that connected since start).
    pub sync_replicas: Option<usize>,
    /// Forward writes sent to a replica to the primary (else refuse them with its address).
    pub forward_writes: bool,
    /// Compare hashes with every replica this often (`None`: only on demand).
    pub check_every: Option<Duration>,
    /// Bytes of new records the primary keeps in memory for its replicas.
    pub feed_bytes: usize,
    /// How long a read waits for a minimum revision or a staleness bound by default.
    pub read_wait: Duration,
    /// The primary's API token, sent when a replica connects (`None`: no auth).
    pub token: Option<String>,
    /// TLS to an `https://` primary: its CA, a client certificate (`None`: the system's
    /// roots, no client certificate).
    pub tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
}

impl Config {
    /// Defaults for a node called `name`: async, forwarding on, a check every minute.
    pub fn new(name: impl Into<String>) -> Self {
        Config {
            name: name.into(),
            policy: Policy::default(),
            sync_replicas: None,
            forward_writes: true,
            check_every: Some(Duration::from_secs(60)),
            feed_bytes: 64 << 20,
            read_wait: Duration::from_secs(5),
            token: None,
            tls: None,
        }
    }
}

/// Errors of replication's own operations (promotion, checks).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplError {
    /// The operation needs a replica.
    #[error("this node is not a replica")]
    NotReplica,
    /// The operation needs the primary.
    #[error("this node is a replica of {0}; run it on the primary")]
    NotPrimary(String),
    /// Promotion would lose acknowledged writes.
    #[error("this replica is at revision {have}, behind revision {acked} that the primary acknowledged under a semi-sync or sync policy; promoting it would lose acknowledged writes (use --force to promote anyway)")]
    Behind {
        /// The replica's revision.
        have: i64,
        /// The newest revision acknowledged after waiting for replicas.
        acked: i64,
    },
    /// A replica of a newer epoch reached this primary: it was deposed and stepped down.
    #[error("this primary (epoch {mine}) was deposed: a replica follows epoch {theirs}; it stepped down and takes no more writes")]
    Deposed {
        /// This node's epoch.
        mine: u64,
        /// The replica's.
        theirs: u64,
    },
    /// A store error.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReplError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ReplError::Store(e) if e.is_retryable())
    }
}

/// A node's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Primary,
    Replica(String),
}

/// A node's replication: its role, the primary's tracker of replicas, the replica's follower.
pub struct Replication {
    pub(crate) store: Arc<Embedded>,
    pub(crate) cfg: Config,
    pub(crate) role: RwLock<Role>,
    pub(crate) tracker: tracker::Tracker,
    pub(crate) follower: replica::Follower,
    pub(crate) checks: primary::Checks,
    /// Set at shutdown and at promotion (ends the follow loop).
    pub(crate) stop: watch::Sender<bool>,
    /// This node's epoch: the term of the newest primary it was or followed (kept in
    /// DATA_DIR/repl-epoch). Records from a primary of a lower epoch are refused.
    epoch: std::sync::atomic::AtomicU64,
    /// The revision the primary of `epoch` started from: a node of an older epoch with more
    /// revisions than this holds a tail the new primary does not have.
    fork: std::sync::atomic::AtomicI64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("name", &self.cfg.name)
            .field("role", &*self.role.read().expect("role"))
            .finish()
    }
}

impl Replication {
    fn new(store: Arc<Embedded>, cfg: Config, role: Role) -> Arc<Self> {
        let sync = cfg.sync_replicas;
        let (epoch, fork) = saved_epoch(store.dir());
        Arc::new(Replication {
            epoch: std::sync::atomic::AtomicU64::new(epoch),
            fork: std::sync::atomic::AtomicI64::new(fork),
            store,
            cfg,
            role: RwLock::new(role),
            tracker: tracker::Tracker::new(sync),
            follower: replica::Follower::default(),
            checks: primary::Checks::default(),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// This node as the primary: starts the feed replicas stream from, the lag sampler and
    /// the periodic hash checks.
    pub fn primary(store: Arc<Embedded>, cfg: Config) -> Arc<Self> {
        store.set_primary(None);
        store.enable_feed(cfg.feed_bytes);
        let r = Self::new(store, cfg, Role::Primary);
        r.spawn(primary::background(Arc::downgrade(&r)));
        r
    }

    /// This node as a replica of `primary` (`http://host:port`): follows it until promoted.
    pub fn replica(store: Arc<Embedded>, cfg: Config, primary: String) -> Arc<Self> {
        store.set_primary(Some(primary.clone()));
        let r = Self::new(store, cfg, Role::Replica(primary.clone()));
        r.spawn(replica::follow(r.clone(), primary));
        r
    }

    /// Ends the background tasks (the follow loop, the sampler) before a change of role.
    fn stop_tasks(&self) {
        self.stop.send_replace(true);
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        self.stop.send_replace(false);
    }

    /// Whether this replica's stream ended because it needs a snapshot (it must restart).
    pub fn needs_snapshot(&self) -> bool {
        self.follower.needs_snapshot()
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().expect("tasks").push(tokio::spawn(f));
    }

    /// The store to serve: writes wait for their policy (primary) or go to the primary
    /// (replica); reads honour [`ReadOpts`].
    pub fn store(self: &Arc<Self>) -> Arc<dyn Store> {
        Arc::new(store::Replicated(self.clone()))
    }

    pub(crate) fn cfg_token(&self) -> Option<&str> {
        self.cfg.token.as_deref()
    }

    /// How a replica at `rev` and `epoch` would catch up from this primary
    /// (`GET /v1/repl/plan`): a replica of an older epoch beyond this primary's fork revision
    /// holds revisions this primary does not have, and needs a snapshot.
    pub fn plan(&self, rev: i64, epoch: u64) -> Result<Probe, ReplError> {
        if let Some(p) = self.primary_of() {
            return Err(ReplError::NotPrimary(p));
        }
        if epoch < self.epoch() && rev > self.fork() {
            return Ok(Probe::Snapshot);
        }
        if self.store.feed_from(rev).is_some() {
            return Ok(Probe::Log);
        }
        Ok(match self.store.log_since(rev)? {
            Some(_) => Probe::Log,
            None => Probe::Snapshot,
        })
    }

    /// This node's epoch (see `Frame::Records`): raised by promotion, adopted from a primary.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The revision the primary of this node's epoch started from.
    pub fn fork(&self) -> i64 {
        self.fork.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Raises the epoch to `e`, whose primary started at revision `fork` (durably); lower
    /// epochs are ignored.
    pub(crate) fn raise_epoch(&self, e: u64, fork: i64) -> Result<(), StoreError> {
        let old = self.epoch.fetch_max(e, std::sync::atomic::Ordering::SeqCst);
        if e <= old {
            return Ok(());
        }
        self.fork.store(fork, std::sync::atomic::Ordering::SeqCst);
        let dir = self.store.dir();
        save_epoch(dir, e, fork).map_err(|err| {
            StoreError::Storage(format!("cannot save epoch {e} in {}: {err}", dir.display()))
        })
    }

    /// A node with no primary yet (automatic failover decides: it follows the leader, or
    /// becomes it). Writes are refused until then.
    pub fn standby(store: Arc<Embedded>, cfg: Config) -> Arc<Self> {
        let wait = "(none yet: waiting for the failover group's leader)".to_string();
        store.set_primary(Some(wait.clone()));
        Self::new(store, cfg, Role::Replica(wait))
    }

    /// Becomes the primary at `epoch` (failover took the leader lock for it), starting at
    /// revision `fork`.
    pub(crate) fn take_over(self: &Arc<Self>, epoch: u64, fork: i64) -> Result<(), ReplError> {
        self.raise_epoch(epoch, fork)?;
        self.stop_tasks();
        *self.role.write().expect("role") = Role::Primary;
        self.store.set_primary(None);
        self.store.enable_feed(self.cfg.feed_bytes);
        self.tracker.reset();
        self.spawn(primary::background(Arc::downgrade(self)));
        Ok(())
    }

    /// Makes this node follow `primary` from now on (a replica re-pointed, or a deposed
    /// primary): writes go there, and the stream starts from this node's revision. A node
    /// holding revisions the new primary lacks (beyond its fork) is refused by the stream and
    /// says it needs a snapshot.
    pub fn follow(self: &Arc<Self>, primary: String) {
        self.stop_tasks();
        *self.role.write().expect("role") = Role::Replica(primary.clone());
        self.store.set_primary(Some(primary.clone()));
        self.tracker.reset();
        self.spawn(replica::follow(self.clone(), primary));
    }

    /// Called when a replica of a higher epoch connects to this primary: another node was
    /// promoted; this one stops taking writes (refused with NotPrimary) and stops streaming.
    pub fn step_down(&self, why: &str) {
        if self.primary_of().is_some() {
            return;
        }
        let msg = format!("(none: this node stepped down: {why})");
        tracing::error!(
            reason = why,
            "stepping down: this primary was deposed; it takes no more writes"
        );
        *self.role.write().expect("role") = Role::Replica(msg.clone());
        self.store.set_primary(Some(msg));
        self.tracker.reset();
    }

    /// The embedded store underneath.
    pub fn embedded(&self) -> &Arc<Embedded> {
        &self.store
    }

    /// The primary's address on a replica, `None` on the primary.
    pub fn primary_of(&self) -> Option<String> {
        match &*self.role.read().expect("role") {
            Role::Primary => None,
            Role::Replica(p) => Some(p.clone()),
        }
    }

    /// Stops the background tasks (the follow loop, the sampler, open replica streams end
    /// with the connections).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }

    /// Makes this replica the primary. Refuses, unless `force`, when it is behind the newest
    /// revision the primary acknowledged after waiting for replicas (as far as it heard).
    pub fn promote(self: &Arc<Self>, force: bool) -> Result<Promoted, ReplError> {
        let old = self.primary_of().ok_or(ReplError::NotReplica)?;
        let have = self.store.durable_point().rev;
        let acked = self.follower.acked_rev();
        if have < acked && !force {
            return Err(ReplError::Behind { have, acked });
        }
        self.take_over(self.epoch() + 1, have)?;
        tracing::warn!(revision = have, previous = %old, epoch = self.epoch(), forced = force && have < acked, "promoted to primary");
        Ok(Promoted {
            epoch: self.epoch(),
            revision: have,
            previous_primary: old,
            acked_revision: acked,
            forced: force && have < acked,
        })
    }
}

/// What [`Replication::promote`] did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Promoted {
    /// The new primary's epoch.
    pub epoch: u64,
    /// The revision the new primary starts from.
    pub revision: i64,
    /// The primary it followed.
    pub previous_primary: String,
    /// The newest revision the old primary acknowledged after waiting for replicas, as far
    /// as this node heard.
    pub acked_revision: i64,
    /// Whether it was promoted although behind that revision (writes lost).
    pub forced: bool,
}

/// A replica as the primary sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ReplicaState,
    /// The revision it holds durably.
    pub revision: i64,
    /// Revisions behind the primary.
    pub lag_revisions: i64,
    /// Bytes of records sent and not yet acknowledged.
    pub lag_bytes: u64,
    /// How long ago the primary made durable the oldest record it lacks.
    pub lag_seconds: f64,
    /// The last hash check with it, if any.
    pub last_check: Option<CheckResult>,
}

/// A replica's own view.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct FollowerStatus {
    /// The primary's address.
    pub primary: String,
    /// `streaming`, `connecting`, `needs-snapshot` or `disconnected`.
    pub state: String,
    /// The primary's durable revision, last heard.
    pub primary_revision: i64,
    /// How stale reads here are: time since this replica last held everything the primary
    /// had (milliseconds).
    pub staleness_ms: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// A node's replication status (`GET /v1/repl/status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// This node's name.
    pub name: String,
    /// `primary` or `replica`.
    pub role: String,
    /// The revision this node holds durably (what reads see).
    pub revision: i64,
    /// The node's epoch (the term of the newest primary it was or followed).
    pub epoch: u64,
    /// The node's default durability policy.
    pub policy: String,
    /// Replica count `sync` waits for now.
    pub sync_replicas: usize,
    /// Writes run async after a timeout (degrade), for policies needing this many replicas.
    pub degraded: Option<usize>,
    /// Acknowledged revisions held by fewer than k+1 nodes (k: the default policy's count,
    /// at least 1): what losing the primary now would lose.
    pub loss_window: i64,
    /// The newest revision acknowledged after waiting for replicas.
    pub acked_revision: i64,
    /// The replicas (on a primary).
    pub replicas: Vec<ReplicaStatus>,
    /// This replica's view (on a replica).
    pub follower: Option<FollowerStatus>,
}

/// One replica's hash check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// The replica.
    pub replica: String,
    /// The revision compared.
    pub revision: i64,
    /// The primary's hash.
    pub primary_hash: u32,
    /// The replica's hash (none when it could not answer).
    pub replica_hash: Option<u32>,
    /// `match`, `mismatch` or `error`.
    pub outcome: String,
    /// Why there is no hash.
    pub error: Option<String>,
}

impl Replication {
    /// The status now.
    pub fn status(&self) -> Status {
        let d = self.store.durable_point();
        let role = self.primary_of();
        let k = self.cfg.policy.required(self.tracker.known()).max(1);
        let reps = self.tracker.replicas(d.seq);
        let mut revs: Vec<i64> = reps.iter().map(|r| r.1.acked_rev).collect();
        revs.sort_unstable_by(|a, b| b.cmp(a));
        let kth = revs.get(k - 1).copied().unwrap_or(1);
        let checks = self.checks.last();
        let replicas = reps
            .into_iter()
            .map(|(name, r, lag)| ReplicaStatus {
                last_check: checks.iter().find(|c| c.replica == name).cloned(),
                name,
                state: r.state,
                revision: r.acked_rev,
                lag_revisions: (d.rev - r.acked_rev).max(0),
                lag_bytes: r.sent_bytes.saturating_sub(r.acked_bytes),
                lag_seconds: lag.as_secs_f64(),
            })
            .collect();
        Status {
            name: self.cfg.name.clone(),
            role: if role.is_some() { "replica" } else { "primary" }.into(),
            revision: d.rev,
            epoch: self.epoch(),
            policy: self.cfg.policy.to_string(),
            sync_replicas: self.tracker.known(),
            degraded: self.tracker.degraded(),
            loss_window: if role.is_some() {
                0
            } else {
                (d.rev - kth).max(0)
            },
            acked_revision: self.tracker.acked_rev().max(self.follower.acked_rev()),
            replicas,
            follower: role.map(|p| self.follower.status(p, d.rev)),
        }
    }
}
