//! A lease the CLI keeps alive itself through the node's HTTP API (with the library's one
//! keepalive rule, `weft_coord::keep_alive`), and the retry helpers that let client commands
//! ride out a node restart: transient failures are retried with backoff until a deadline or an
//! interruption, with one notice on stderr per outage.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use weft_coord::{default_margin, keep_alive, LostReason, Renewal};

use crate::client::{api_code, is_transient, Client};

/// Why a retried operation stopped without a result.
#[derive(Debug)]
pub enum Halt {
    /// The caller's deadline passed.
    TimedOut,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// A failure that retrying does not cure.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(e: anyhow::Error) -> Self {
        Halt::Failed(e)
    }
}

/// Set once SIGINT or SIGTERM arrives; clone it freely.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Starts listening for SIGINT and SIGTERM.
    pub fn on_signals() -> Stop {
        let (tx, rx) = watch::channel(false);
        let signal = crate::shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    /// Resolves once a signal arrived.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Sleeps until `deadline` (forever if `None`).
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Backoff between retries, and one notice per outage.
pub struct Retry {
    what: String,
    delay: Duration,
    since: Option<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);

impl Retry {
    /// Retries of `what` (as said on stderr: "weft: {what}: ...").
    pub fn new(what: impl Into<String>) -> Retry {
        Retry {
            what: what.into(),
            delay: FIRST_DELAY,
            since: None,
        }
    }

    /// Notes a transient failure and sleeps the next backoff, unless the deadline or a signal
    /// comes first.
    pub async fn failed(
        &mut self,
        e: &anyhow::Error,
        deadline: Option<Instant>,
        stop: &Stop,
    ) -> Result<(), Halt> {
        if self.since.is_none() {
            eprintln!("weft: {}: {e:#}; retrying", self.what);
            self.since = Some(Instant::now());
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = until(deadline) => Err(Halt::TimedOut),
            _ = stop.wait() => Err(Halt::Interrupted),
        }
    }

    /// Notes a success (and the end of an outage, if there was one).
    pub fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            eprintln!(
                "weft: {}: the node answers again after {:.1}s",
                self.what,
                since.elapsed().as_secs_f64()
            );
        }
        self.delay = FIRST_DELAY;
    }
}

/// Runs `f` until it succeeds, fails for good, the deadline passes or a signal arrives.
pub async fn retrying<T, F, Fut>(
    what: &str,
    deadline: Option<Instant>,
    stop: &Stop,
    mut f: F,
) -> Result<T, Halt>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retry = Retry::new(what);
    loop {
        let r = tokio::select! {
            r = f() => r,
            _ = until(deadline) => return Err(Halt::TimedOut),
            _ = stop.wait() => return Err(Halt::Interrupted),
        };
        match r {
            Ok(v) => {
                retry.ok();
                return Ok(v);
            }
            Err(e) if is_transient(&e) => retry.failed(&e, deadline, stop).await?,
            Err(e) => return Err(Halt::Failed(e)),
        }
    }
}

#[derive(Deserialize)]
struct Granted {
    id: i64,
    ttl: i64,
}

/// A lease this process keeps alive; it counts as lost when the node says it is gone or when
/// no renewal succeeded before the local deadline (last success + TTL − a tenth).
pub struct ClientLease {
    pub id: i64,
    pub ttl: i64,
    lost: watch::Receiver<Option<LostReason>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ClientLease {
    /// Grants a lease of `ttl` seconds and keeps it alive in the background.
    pub async fn grant(c: Arc<Client>, ttl: i64) -> Result<ClientLease> {
        let sent = Instant::now();
        let g: Granted = c.call("/v1/lease/grant", &json!({ "ttl": ttl })).await?;
        let (tx, lost) = watch::channel(None);
        let ttl_d = Duration::from_secs(g.ttl.max(1) as u64);
        let id = g.id;
        let task = tokio::spawn(async move {
            let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let renew = || {
                let (c, warned) = (c.clone(), warned.clone());
                async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    match c.post("/v1/lease/keepalive", &json!({ "id": id })).await {
                        Ok(_) => {
                            if warned.swap(false, Relaxed) {
                                eprintln!("weft: lease {id:x} renewed again");
                            }
                            Renewal::Renewed
                        }
                        Err(e) if api_code(&e) == Some("lease_not_found") => Renewal::Gone,
                        Err(e) => {
                            if !warned.swap(true, Relaxed) {
                                eprintln!("weft: keeping lease {id:x} alive: {e:#}; retrying");
                            }
                            Renewal::Failed
                        }
                    }
                }
            };
            let reason = keep_alive(ttl_d, default_margin(ttl_d), sent, renew).await;
            let _ = tx.send(Some(reason));
        });
        Ok(ClientLease {
            id,
            ttl: g.ttl,
            lost,
            task,
        })
    }

    /// Resolves with the reason once the lease is lost.
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.lost.clone();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.unwrap_or(LostReason::Closed));
        r.unwrap_or(LostReason::Closed)
    }

    /// Whether the lease is already lost.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Revokes the lease, retrying through a node restart for up to one TTL (after that it has
    /// expired anyway, or the node kept it with a fresh TTL and nothing retrying can change).
    /// Renewals go on meanwhile, so whatever it holds stays held until the revoke.
    pub async fn revoke(self, c: &Client, stop: &Stop) {
        let deadline = Some(Instant::now() + Duration::from_secs(self.ttl.max(1) as u64));
        let what = format!("revoking lease {:x}", self.id);
        let id = self.id;
        let r = retrying(&what, deadline, stop, move || async move {
            match c.post("/v1/lease/revoke", &json!({ "id": id })).await {
                Err(e) if api_code(&e) == Some("lease_not_found") => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await;
        if let Err(Halt::Failed(e)) = r {
            eprintln!("weft: {what}: {e:#}");
        }
    }
}
