//! Service discovery: registrations under a session's lease, snapshots, watches that
//! resynchronize by themselves, a client-side cache with staleness and a protection threshold,
//! and active health checks.
//!
//! Layout: `/weft/svc/<service>/<instance id>` holds the instance as JSON, attached to the
//! registering session's lease, so a crashed process's instances vanish within the TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Duration;
use weft_store::{
    DeleteRequest, EventType, KeyRange, KeyValue, PutRequest, RangeRequest, Store, StoreError,
    WatchRequest,
};

use crate::lock::check_name;
use crate::session::Session;
use crate::{CoordError, Result};

/// Default key prefix of services.
pub const SERVICE_PREFIX: &str = "/weft/svc/";

/// Health as last reported by the registering process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving.
    #[default]
    Passing,
    /// Failing its health check.
    Critical,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique id within the service.
    pub id: String,
    /// Where to reach it (host:port or URL).
    pub address: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Tags for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Relative weight for load balancing.
    #[serde(default = "one")]
    pub weight: u32,
    /// Version of the software.
    #[serde(default)]
    pub version: String,
    /// Health.
    #[serde(default)]
    pub health: Health,
}

fn one() -> u32 {
    1
}

impl Instance {
    /// An instance with an id and address, weight 1, passing.
    pub fn new(id: impl Into<String>, address: impl Into<String>) -> Self {
        Instance {
            id: id.into(),
            address: address.into(),
            metadata: BTreeMap::new(),
            tags: Vec::new(),
            weight: 1,
            version: String::new(),
            health: Health::Passing,
        }
    }
}

/// Active health check run by the registering process.
#[derive(Clone, Debug)]
pub enum HealthCheck {
    /// `GET url` must answer 2xx or 3xx within `timeout` (plain `http://` only).
    Http {
        /// The URL.
        url: String,
        /// Time between checks.
        interval: Duration,
        /// Per-check timeout.
        timeout: Duration,
    },
    /// A TCP connect to `addr` must succeed within `timeout`.
    Tcp {
        /// host:port.
        addr: String,
        /// Time between checks.
        interval: Duration,
        /// Per-check timeout.
        timeout: Duration,
    },
}

/// A point-in-time view of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    /// Store revision of the view.
    pub revision: i64,
    /// Instances, by id.
    pub instances: Vec<Instance>,
}

/// A change to a service's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A new instance.
    Added(Instance),
    /// An instance changed (health, metadata, ...).
    Updated(Instance),
    /// An instance left (deregistered or its lease expired).
    Removed(String),
    /// The watch lost history (compaction) and started over from this full snapshot.
    Reset(ServiceSnapshot),
}

/// Registers and finds service instances.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn service_prefix(service: &str) -> Bytes {
    Bytes::from(format!("{SERVICE_PREFIX}{service}/"))
}

fn decode(kv: &KeyValue) -> Result<Instance> {
    serde_json::from_slice(&kv.value).map_err(|e| CoordError::Decode {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        reason: e.to_string(),
    })
}

fn id_of(key: &[u8], prefix: &[u8]) -> String {
    String::from_utf8_lossy(&key[prefix.len().min(key.len())..]).into_owned()
}

/// A live registration. Dropping it or [`Registration::deregister`] removes the instance; the
/// session's end removes it too.
#[derive(Debug)]
pub struct Registration {
    session: Session,
    key: Bytes,
    instance: Arc<tokio::sync::Mutex<Instance>>,
    stop: watch::Sender<bool>,
    done: bool,
}

impl Registry {
    /// A registry on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry { store }
    }

    /// Registers `instance` of `service` under the session's lease, optionally with an active
    /// health check that marks it passing or critical.
    pub async fn register(
        &self,
        session: &Session,
        service: &str,
        instance: Instance,
        check: Option<HealthCheck>,
    ) -> Result<Registration> {
        check_name("service", service)?;
        check_name("instance id", &instance.id)?;
        session.check()?;
        let key = Bytes::from([&service_prefix(service)[..], instance.id.as_bytes()].concat());
        let value = serde_json::to_vec(&instance).expect("instance serializes");
        session
            .store()
            .put(PutRequest::new(key.clone(), value).lease(session.lease()))
            .await?;
        let (stop, stop_rx) = watch::channel(false);
        let instance = Arc::new(tokio::sync::Mutex::new(instance));
        if let Some(check) = check {
            tokio::spawn(run_check(
                session.clone(),
                key.clone(),
                instance.clone(),
                check,
                stop_rx,
            ));
        }
        Ok(Registration {
            session: session.clone(),
            key,
            instance,
            stop,
            done: false,
        })
    }

    /// Removes one instance, whoever registered it. Returns whether it existed.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let key = Bytes::from([&service_prefix(service)[..], id.as_bytes()].concat());
        Ok(self
            .store
            .delete(DeleteRequest::new(KeyRange::key(key)))
            .await?
            .deleted
            > 0)
    }

    /// The instances of `service` now.
    pub async fn discover(&self, service: &str) -> Result<ServiceSnapshot> {
        check_name("service", service)?;
        snapshot(&*self.store, &service_prefix(service)).await
    }

    /// Changes to `service` after `snapshot.revision` (pass the snapshot from
    /// [`Registry::discover`]). After a compaction the stream emits [`DiscoveryEvent::Reset`]
    /// and goes on; it ends with an error only if the store fails.
    pub fn watch(
        &self,
        service: &str,
        from: &ServiceSnapshot,
    ) -> impl Stream<Item = Result<DiscoveryEvent>> + Send + 'static {
        use futures::StreamExt;
        self.watch_batches(service, from).flat_map(|batch| {
            let items: Vec<Result<DiscoveryEvent>> = match batch {
                Ok(evs) => evs.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
    }

    /// Like [`Registry::watch`], but all changes of one store revision come together (e.g. every
    /// instance of a session whose lease expired).
    pub fn watch_batches(
        &self,
        service: &str,
        from: &ServiceSnapshot,
    ) -> impl Stream<Item = Result<Vec<DiscoveryEvent>>> + Send + 'static {
        let (tx, mut rx) = mpsc::channel(64);
        let store = self.store.clone();
        let prefix = service_prefix(service);
        let mut rev = from.revision;
        let mut known: HashMap<String, Instance> = from
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.clone()))
            .collect();
        tokio::spawn(async move {
            loop {
                let req =
                    WatchRequest::new(KeyRange::prefix(prefix.clone())).start_revision(rev + 1);
                let mut w = match store.watch(req).await {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                loop {
                    let m = tokio::select! {
                        m = w.message() => m,
                        _ = tx.closed() => return,
                    };
                    match m {
                        Some(Ok(resp)) => {
                            let mut batch = Vec::with_capacity(resp.events.len());
                            for e in resp.events {
                                rev = rev.max(e.kv.mod_revision);
                                let id = id_of(&e.kv.key, &prefix);
                                match e.kind {
                                    EventType::Delete => {
                                        known.remove(&id);
                                        batch.push(DiscoveryEvent::Removed(id));
                                    }
                                    EventType::Put => match decode(&e.kv) {
                                        Ok(inst) => {
                                            batch.push(match known.insert(id, inst.clone()) {
                                                Some(_) => DiscoveryEvent::Updated(inst),
                                                None => DiscoveryEvent::Added(inst),
                                            })
                                        }
                                        Err(err) => {
                                            tracing::warn!(error = %err, "skipping undecodable instance")
                                        }
                                    },
                                }
                            }
                            if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(StoreError::Compacted { .. })) => {
                            match snapshot(&*store, &prefix).await {
                                Ok(s) => {
                                    rev = s.revision;
                                    known = s
                                        .instances
                                        .iter()
                                        .map(|i| (i.id.clone(), i.clone()))
                                        .collect();
                                    if tx.send(Ok(vec![DiscoveryEvent::Reset(s)])).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            }
                            break;
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        None => {
                            let _ = tx.send(Err(CoordError::Store(StoreError::Closed))).await;
                            return;
                        }
                    }
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

async fn snapshot(store: &dyn Store, prefix: &Bytes) -> Result<ServiceSnapshot> {
    let r = store
        .range(RangeRequest::new(KeyRange::prefix(prefix.clone())))
        .await?;
    let mut instances = Vec::with_capacity(r.kvs.len());
    for kv in &r.kvs {
        match decode(kv) {
            Ok(i) => instances.push(i),
            Err(e) => tracing::warn!(error = %e, "skipping undecodable instance"),
        }
    }
    Ok(ServiceSnapshot {
        revision: r.header.revision,
        instances,
    })
}

impl Registration {
    /// The registered key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// Publishes a new health state.
    pub async fn set_health(&self, health: Health) -> Result<()> {
        let mut inst = self.instance.lock().await;
        inst.health = health;
        publish(&self.session, &self.key, &inst).await
    }

    /// Keeps the instance registered past this value (until its lease ends).
    pub fn detach(mut self) {
        self.done = true;
    }

    /// Removes the instance.
    pub async fn deregister(mut self) -> Result<()> {
        self.done = true;
        self.stop.send_replace(true);
        self.session
            .store()
            .delete(DeleteRequest::new(KeyRange::key(self.key.clone())))
            .await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, key) = (self.session.store().clone(), self.key.clone());
            rt.spawn(async move {
                let _ = store.delete(DeleteRequest::new(KeyRange::key(key))).await;
            });
        }
    }
}

async fn publish(session: &Session, key: &Bytes, inst: &Instance) -> Result<()> {
    session.check()?;
    let value = serde_json::to_vec(inst).expect("instance serializes");
    session
        .store()
        .put(PutRequest::new(key.clone(), value).lease(session.lease()))
        .await?;
    Ok(())
}

/// Runs one health check; true if passing.
pub async fn probe(check: &HealthCheck) -> bool {
    match check {
        HealthCheck::Tcp { addr, timeout, .. } => {
            matches!(
                tokio::time::timeout(*timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        }
        HealthCheck::Http { url, timeout, .. } => {
            matches!(tokio::time::timeout(*timeout, http_get_status(url)).await, Ok(Ok(code)) if (200..400).contains(&code))
        }
    }
}

async fn http_get_status(url: &str) -> std::io::Result<u16> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: weft-health\r\n\r\n").as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("not an HTTP response"))
}

async fn run_check(
    session: Session,
    key: Bytes,
    instance: Arc<tokio::sync::Mutex<Instance>>,
    check: HealthCheck,
    mut stop: watch::Receiver<bool>,
) {
    let interval = match &check {
        HealthCheck::Http { interval, .. } | HealthCheck::Tcp { interval, .. } => *interval,
    };
    loop {
        let health = if probe(&check).await {
            Health::Passing
        } else {
            Health::Critical
        };
        {
            let mut inst = instance.lock().await;
            if inst.health != health {
                inst.health = health;
                if let Err(e) = publish(&session, &key, &inst).await {
                    tracing::warn!(error = %e, "cannot publish health");
                    if session.lost_reason().is_some() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What a [`ServiceCache`] serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedView {
    /// The instances to use.
    pub instances: Vec<Instance>,
    /// Revision of the last update.
    pub revision: i64,
    /// The store is unreachable: this is the last known set.
    pub stale: bool,
    /// Too many instances vanished at once: this is the previous set, kept on purpose.
    pub protected: bool,
}

/// Cache settings.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// If the live set shrinks below this fraction of the served set in one step, keep serving
    /// the served set (0.0 disables protection). Default 0.5.
    pub protection_threshold: f64,
    /// Delay between reconnection attempts while the store is unreachable.
    pub retry: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            protection_threshold: 0.5,
            retry: Duration::from_millis(500),
        }
    }
}

/// A client-side cache of one service, kept fresh by a watch.
#[derive(Debug)]
pub struct ServiceCache {
    view: watch::Receiver<CachedView>,
    _task: tokio::task::JoinHandle<()>,
}

struct CacheState {
    actual: BTreeMap<String, Instance>,
    served: Vec<Instance>,
}

impl ServiceCache {
    /// Starts caching `service`.
    pub async fn new(
        registry: &Registry,
        service: &str,
        opts: CacheOptions,
    ) -> Result<ServiceCache> {
        if !(0.0..=1.0).contains(&opts.protection_threshold) {
            return Err(CoordError::InvalidArgument(format!(
                "protection threshold {} must be within 0.0..=1.0",
                opts.protection_threshold
            )));
        }
        let first = registry.discover(service).await?;
        let (tx, rx) = watch::channel(CachedView {
            instances: first.instances.clone(),
            revision: first.revision,
            ..Default::default()
        });
        let state = Arc::new(RwLock::new(CacheState {
            actual: first
                .instances
                .iter()
                .map(|i| (i.id.clone(), i.clone()))
                .collect(),
            served: first.instances.clone(),
        }));
        let (registry, service) = (registry.clone(), service.to_string());
        let task = tokio::spawn(async move {
            let mut snap = first;
            loop {
                let mut batches = Box::pin(registry.watch_batches(&service, &snap));
                use futures::StreamExt;
                let mut failed = false;
                while let Some(batch) = batches.next().await {
                    let Ok(batch) = batch else {
                        failed = true;
                        break;
                    };
                    let mut st = state.write().expect("cache state poisoned");
                    for ev in batch {
                        match ev {
                            DiscoveryEvent::Added(i) | DiscoveryEvent::Updated(i) => {
                                st.actual.insert(i.id.clone(), i);
                            }
                            DiscoveryEvent::Removed(id) => {
                                st.actual.remove(&id);
                            }
                            DiscoveryEvent::Reset(s) => {
                                st.actual = s
                                    .instances
                                    .iter()
                                    .map(|i| (i.id.clone(), i.clone()))
                                    .collect();
                            }
                        }
                    }
                    let actual: Vec<Instance> = st.actual.values().cloned().collect();
                    let protected = opts.protection_threshold > 0.0
                        && !st.served.is_empty()
                        && (actual.len() as f64)
                            < opts.protection_threshold * st.served.len() as f64;
                    if !protected {
                        st.served = actual;
                    }
                    let served = st.served.clone();
                    drop(st);
                    tx.send_modify(|v| {
                        v.instances = served;
                        v.protected = protected;
                        v.stale = false;
                    });
                }
                if failed || tx.is_closed() {
                    tx.send_modify(|v| v.stale = true);
                }
                if tx.is_closed() {
                    return;
                }
                // Reconnect: a fresh snapshot, then watch again.
                loop {
                    tokio::time::sleep(opts.retry).await;
                    if tx.is_closed() {
                        return;
                    }
                    if let Ok(s) = registry.discover(&service).await {
                        let mut st = state.write().expect("cache state poisoned");
                        st.actual = s
                            .instances
                            .iter()
                            .map(|i| (i.id.clone(), i.clone()))
                            .collect();
                        st.served = s.instances.clone();
                        drop(st);
                        tx.send_modify(|v| {
                            v.instances = s.instances.clone();
                            v.revision = s.revision;
                            v.stale = false;
                            v.protected = false;
                        });
                        snap = s;
                        break;
                    }
                }
            }
        });
        Ok(ServiceCache {
            view: rx,
            _task: task,
        })
    }

    /// The current view.
    pub fn view(&self) -> CachedView {
        self.view.borrow().clone()
    }

    /// Waits for the next change of the view.
    pub async fn changed(&mut self) -> CachedView {
        let _ = self.view.changed().await;
        self.view.borrow_and_update().clone()
    }
}

impl Drop for ServiceCache {
    fn drop(&mut self) {
        self._task.abort();
    }
}
