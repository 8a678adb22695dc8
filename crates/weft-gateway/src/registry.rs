//! A gateway announces itself on its store: an instance of the discovery service
//! [`SERVICE`] whose address is its admin API, kept under a session lease. The node lists
//! every gateway on the store from there (`GET /v1/gateways`) and reads each one's status
//! through its admin API (the dashboard's gateways page). A lost session (the store restarted,
//! a long pause) is replaced and the instance registered again; [`Announcer::stop`] removes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use weft_coord::{Instance, Registry, Session, SessionOptions};
use weft_store::Store;

/// The discovery service gateways register under.
pub const SERVICE: &str = "weft-gateway";

/// What a gateway says about itself.
#[derive(Clone, Debug)]
pub struct Announcement {
    /// Unique among the store's gateways (an instance id: 1 to 256 bytes, no `/`).
    pub id: String,
    /// The proxy listener, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// The admin API (`http://host:port`), if the gateway serves one.
    pub admin: Option<String>,
    /// Runs inside a `weft up` node (its status is the node's to give) rather than alone.
    pub embedded: bool,
}

impl Announcement {
    fn instance(&self) -> Instance {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut metadata = BTreeMap::new();
        metadata.insert("listen".to_string(), self.listen.clone());
        metadata.insert("pid".to_string(), std::process::id().to_string());
        metadata.insert("started_ms".to_string(), started.to_string());
        metadata.insert("embedded".to_string(), self.embedded.to_string());
        let mut i = Instance::new(self.id.clone(), self.admin.clone().unwrap_or_default());
        i.metadata = metadata;
        i.version = env!("CARGO_PKG_VERSION").to_string();
        i
    }
}

/// Keeps an [`Announcement`] registered until stopped.
#[derive(Debug)]
pub struct Announcer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Registers `a` on `store` and keeps it registered, with a lease of `ttl` seconds, until
/// [`Announcer::stop`]. An error that retrying cannot fix (a bad id) is returned; a store that
/// cannot be reached yet is retried every second in the background.
pub async fn announce(
    store: Arc<dyn Store>,
    a: Announcement,
    ttl: i64,
) -> Result<Announcer, weft_coord::CoordError> {
    let first = match register(&store, &a, ttl).await {
        Ok(r) => Some(r),
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, gateway = %a.id, "gateway registration failed; retrying");
            None
        }
        Err(e) => return Err(e),
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut current = first;
        loop {
            if let Some((session, reg)) = current.take() {
                tokio::select! {
                    reason = session.lost() => {
                        tracing::warn!(?reason, gateway = %a.id, "gateway registration lost; registering again");
                        reg.detach();
                    }
                    _ = stopped(&mut stop_rx) => {
                        let _ = reg.deregister().await;
                        let _ = session.close().await;
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped(&mut stop_rx) => return,
            }
            match register(&store, &a, ttl).await {
                Ok(r) => current = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, gateway = %a.id, "gateway registration failed; retrying")
                }
            }
        }
    });
    Ok(Announcer { stop, task })
}

/// Resolves once `rx` reads true (or its sender is gone); holds no guard across an await.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn register(
    store: &Arc<dyn Store>,
    a: &Announcement,
    ttl: i64,
) -> Result<(Session, weft_coord::Registration), weft_coord::CoordError> {
    let session = Session::new(
        store.clone(),
        SessionOptions {
            ttl,
            ..Default::default()
        },
    )
    .await?;
    let reg = Registry::new(store.clone())
        .register(&session, SERVICE, a.instance(), None)
        .await?;
    Ok((session, reg))
}

impl Announcer {
    /// Removes the registration and ends its session.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gateway_is_listed_while_announced_and_gone_after_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            weft_store::embedded::Embedded::open(dir.path(), Default::default())
                .await
                .unwrap(),
        );
        let a = Announcement {
            id: "gw-1".into(),
            listen: "127.0.0.1:8080".into(),
            admin: Some("http://127.0.0.1:9901".into()),
            embedded: false,
        };
        let ann = announce(store.clone(), a, 5).await.unwrap();
        let reg = Registry::new(store.clone());
        let snap = reg.discover(SERVICE).await.unwrap();
        assert_eq!(snap.instances.len(), 1);
        let i = &snap.instances[0];
        assert_eq!(i.id, "gw-1");
        assert_eq!(i.address, "http://127.0.0.1:9901");
        assert_eq!(i.metadata["listen"], "127.0.0.1:8080");
        assert_eq!(i.metadata["embedded"], "false");
        ann.stop().await;
        assert!(reg.discover(SERVICE).await.unwrap().instances.is_empty());
        // A bad id is refused at once.
        let bad = Announcement {
            id: "a/b".into(),
            listen: String::new(),
            admin: None,
            embedded: false,
        };
        assert!(announce(store, bad, 5).await.is_err());
    }
}
