//! Sessions: one lease, kept alive in the background, with a `lost` signal.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use weft_store::{Store, StoreError};

use crate::keepalive::{default_margin, keep_alive, Renewal};
use crate::{CoordError, Result};

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Keepalives did not succeed before the local deadline (last successful keepalive + TTL −
    /// safety margin): the lease may expire any moment, so ownership is given up first.
    Deadline,
    /// The store reports the lease gone (expired or revoked).
    Expired,
    /// The owner closed the session.
    Closed,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::Deadline => "keepalives did not succeed before the local deadline",
            LostReason::Expired => "the lease expired or was revoked",
            LostReason::Closed => "the session was closed",
        })
    }
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Lease TTL in seconds (the store may raise it to its minimum).
    pub ttl: i64,
    /// How long before the TTL runs out the session declares itself lost (default: a tenth of
    /// the TTL, at least 100 ms).
    pub safety_margin: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ttl: 10,
            safety_margin: None,
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    lease: i64,
    ttl: i64,
    /// Whether this process owns the lease (keeps it alive, revokes it at the end).
    owned: bool,
    lost: watch::Sender<Option<LostReason>>,
    stop: watch::Sender<bool>,
}

/// A lease kept alive every TTL/3 by a background task. Every lock, leadership and
/// registration belongs to a session and ends with it. Cloning shares the session; closing or
/// dropping the last clone revokes the lease.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.inner.lease)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Session {
    /// Grants a lease and starts keeping it alive.
    pub async fn new(store: Arc<dyn Store>, opts: SessionOptions) -> Result<Session> {
        if opts.ttl <= 0 {
            return Err(CoordError::InvalidArgument(format!(
                "session TTL {}s must be positive",
                opts.ttl
            )));
        }
        let granted_at = Instant::now();
        let g = store.lease_grant(opts.ttl, 0).await?;
        let ttl = Duration::from_secs(g.ttl as u64);
        let margin = opts.safety_margin.unwrap_or_else(|| default_margin(ttl));
        if margin >= ttl {
            return Err(CoordError::InvalidArgument(format!(
                "safety margin {margin:?} must be shorter than the TTL {ttl:?}"
            )));
        }
        let (lost, _) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            store,
            lease: g.id,
            ttl: g.ttl,
            owned: true,
            lost,
            stop,
        });
        tokio::spawn(keepalive(
            Arc::downgrade(&inner),
            stop_rx,
            granted_at,
            ttl,
            margin,
        ));
        Ok(Session { inner })
    }

    /// A session over a lease that someone else keeps alive (e.g. a client of the node's HTTP
    /// API). It never renews or revokes the lease; operations fail once the lease is gone.
    pub async fn attach(store: Arc<dyn Store>, lease: i64) -> Result<Session> {
        let ttl = store.lease_time_to_live(lease, false).await?;
        let (lost, _) = watch::channel(None);
        let (stop, _) = watch::channel(true);
        Ok(Session {
            inner: Arc::new(Inner {
                store,
                lease,
                ttl: ttl.granted_ttl,
                owned: false,
                lost,
                stop,
            }),
        })
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    /// The granted TTL in seconds.
    pub fn ttl(&self) -> i64 {
        self.inner.ttl
    }

    /// The store this session lives in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Why the session ended, if it has.
    pub fn lost_reason(&self) -> Option<LostReason> {
        *self.inner.lost.borrow()
    }

    /// Resolves when the session is lost (at once if it already is).
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.inner.lost.subscribe();
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.expect("is some"));
        reason.unwrap_or(LostReason::Closed)
    }

    /// Fails if the session is lost.
    pub fn check(&self) -> Result<()> {
        match self.lost_reason() {
            Some(r) => Err(CoordError::SessionLost(r)),
            None => Ok(()),
        }
    }

    /// Stops the keepalives and revokes the lease (deleting everything attached to it).
    pub async fn close(&self) -> Result<()> {
        self.inner.stop.send_replace(true);
        self.inner.lost.send_if_modified(|l| {
            if l.is_none() {
                *l = Some(LostReason::Closed);
                true
            } else {
                false
            }
        });
        match self.inner.store.lease_revoke(self.inner.lease).await {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the keepalives without revoking, as a crashed process would: the lease expires
    /// after its TTL. For tests of failover.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        self.inner.stop.send_replace(true);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if !self.owned || *self.lost.borrow() == Some(LostReason::Closed) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, lease) = (self.store.clone(), self.lease);
            rt.spawn(async move {
                let _ = store.lease_revoke(lease).await;
            });
        }
    }
}

fn mark_lost(inner: &Inner, reason: LostReason) {
    inner.lost.send_if_modified(|l| {
        if l.is_none() {
            *l = Some(reason);
            true
        } else {
            false
        }
    });
}

async fn keepalive(
    inner: std::sync::Weak<Inner>,
    mut stop: watch::Receiver<bool>,
    granted_at: Instant,
    ttl: Duration,
    margin: Duration,
) {
    let renew = || {
        let inner = inner.clone();
        async move {
            let Some(inner) = inner.upgrade() else {
                return Renewal::Failed;
            };
            match inner.store.lease_keep_alive(inner.lease).await {
                Ok(_) => Renewal::Renewed,
                Err(StoreError::LeaseNotFound(_)) => Renewal::Gone,
                Err(e) => {
                    tracing::warn!(lease = inner.lease, error = %e, "keepalive failed; retrying");
                    Renewal::Failed
                }
            }
        }
    };
    let reason = tokio::select! {
        r = keep_alive(ttl, margin, granted_at, renew) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    if let Some(inner) = inner.upgrade() {
        mark_lost(&inner, reason);
    }
}
