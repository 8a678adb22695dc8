//! The etcd v3 gRPC API over any [`Store`]: KV (Range, Put, DeleteRange, Txn, Compact), Watch,
//! Lease (Grant, Revoke, KeepAlive, TimeToLive, Leases), Maintenance.Status and
//! Cluster.MemberList, so etcd clients (etcdctl, Go clientv3, etcd-client) work against
//! `weft up --etcd-listen ADDR` unchanged. Everything else answers `UNIMPLEMENTED` with a
//! message. Generated server traits come from the `etcd-client` crate (`build-server`), so no
//! proto file is copied here. Errors carry etcd's own messages so clients recognise them.
//!
//! The server speaks HTTP/2 with weft's own connection loop (the `weft-h2` crate), written
//! for gRPC; unary KV calls take its fast path past tonic's per-request layers (`fast.rs`
//! implements `weft_h2::FastPath`), everything else is served by tonic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use weft_store::embedded::{Embedded, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(Embedded::open(dir.path(), Options::default()).await?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let cfg = weft_etcd_api::Config {
//!     client_url: url.clone(), member_id: 1, threads: 1, inline_batch: 8, tls: None,
//!     max_conns_per_client: 1024, limits: Default::default(), auth: None,
//!     max_requests_per_client: 0.0,
//! };
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(weft_etcd_api::serve(listener, store, cfg, async {
//!     let _ = stopped.await;
//! }));
//!
//! // Any etcd client works against it.
//! let mut client = etcd_client::Client::connect([url], None).await?;
//! client.put("greeting", "hello", None).await?;
//! let got = client.get("greeting", None).await?;
//! assert_eq!(got.kvs()[0].value(), b"hello");
//!
//! let _ = stop.send(());
//! server.await??;
//! # Ok(())
//! # }
//! ```

mod auth;
mod fast;
mod gateway;
mod limit;
pub mod recipes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::proto::*;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use weft_store::{self as ws, Store, StoreError};

pub use auth::auth_status;
use weft_auth::Need;
pub use weft_auth::{Auth, Identity};
pub use weft_h2::Limits;

/// Settings of the etcd API.
#[derive(Clone, Debug)]
pub struct Config {
    /// The URL clients use to reach this server (reported by `MemberList`).
    pub client_url: String,
    /// Member and cluster id reported in headers.
    pub member_id: u64,
    /// Threads that serve connections. 0: connections are tasks on the runtime [`serve`] runs
    /// on. N: N dedicated threads, each a single-threaded runtime, take accepted connections in
    /// turn. A connection's calls then run on one thread with no work stealing between
    /// threads: on 2 cores, one such thread costs about a fifth less CPU per put than tasks on
    /// a 2-worker runtime (docs/runs/etcd-api.md, "connection threads, and snapshots that free
    /// nothing").
    pub threads: usize,
    /// Connection threads write their calls' log records themselves, once they have handled
    /// everything they had read, when at least this many are queued; fewer go to the log
    /// thread (when the store offers it: `Store::thread_flushes`). 0: every write goes through the
    /// log thread. Only with `threads` > 0 and the embedded store.
    pub inline_batch: usize,
    /// Serve TLS with this (ALPN `h2` for gRPC, `http/1.1` for the JSON gateway); none:
    /// plain TCP.
    pub tls: Option<Arc<weft_tls::Acceptor>>,
    /// Most connections one client address may hold open (0: no limit); more are closed at
    /// accept and counted in `weft_connections_refused_total{listener="etcd"}`.
    pub max_conns_per_client: usize,
    /// What one HTTP/2 connection may hold: streams, buffered request bytes, PING and
    /// SETTINGS frames a second.
    pub limits: Limits,
    /// Users, roles and permissions (etcd's Auth API), shared with the node's HTTP API; none:
    /// kept in memory while the server runs.
    pub auth: Option<Arc<Auth>>,
    /// Most requests (calls and stream opens) a second one client address may send, after a
    /// burst of twice as many (0: no limit); more are answered `RESOURCE_EXHAUSTED` and
    /// counted in `weft_requests_limited_total{listener="etcd"}`.
    pub max_requests_per_client: f64,
}

/// The etcd API service over a store.
#[derive(Clone)]
pub struct EtcdApi {
    store: Arc<dyn Store>,
    cfg: Config,
    /// Turns true when the server shuts down: open streams then end with `UNAVAILABLE`.
    stopping: watch::Receiver<bool>,
    /// The runtime `serve` was called on: stream tasks (watch, keep-alive) run there.
    rt: tokio::runtime::Handle,
    /// Who may do what (checked on every call while enabled).
    auth: Arc<Auth>,
    /// Requests a second per client address.
    rate: Arc<weft_tls::limit::Rate>,
    /// The connection's client address (none: not a connection's copy).
    peer: Option<std::net::IpAddr>,
    /// The common name of the connection's verified client certificate (with
    /// client-certificate authentication): the user of its calls that carry no token.
    cert_user: Option<Arc<str>>,
}

impl std::fmt::Debug for EtcdApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdApi").field("cfg", &self.cfg).finish()
    }
}

/// How long shutdown waits for unary calls in flight after telling clients to go away (open
/// watch and keep-alive streams are ended at once, see `until_stopped`).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Coalescing of waiting watch events into one response stops at this many events...
const WATCH_BATCH_EVENTS: usize = 256;
/// ...or once keys and values reach this many bytes (clients' default message limit is 4 MiB;
/// a single revision larger than this still goes out whole, as etcd sends it).
const WATCH_BATCH_BYTES: usize = 1 << 20;

/// One watch of a Watch stream: its store events (coalesced with those already waiting) as
/// responses on `tx`, progress notices when asked, and a cancellation that ends it.
async fn forward_watch(
    api: EtcdApi,
    id: i64,
    mut stream: ws::WatchStream,
    progress: Arc<tokio::sync::Notify>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
) {
    // A message read ahead while coalescing that could not join.
    let mut next: Option<Option<ws::Result<ws::WatchResponse>>> = None;
    loop {
        let m = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = stream.message() => m,
                _ = progress.notified() => { stream.request_progress(); continue; }
            },
        };
        let m = match m {
            Some(Ok(mut r)) if !r.events.is_empty() => {
                next = absorb_waiting(&mut stream, &mut r);
                Some(Ok(r))
            }
            m => m,
        };
        let resp = match m {
            Some(Ok(r)) => PbWatchResponse {
                header: api.header(r.revision),
                watch_id: id,
                events: r
                    .events
                    .into_iter()
                    .map(|e| PbEvent {
                        r#type: if e.kind == ws::EventType::Put { 0 } else { 1 },
                        kv: Some(kv(e.kv)),
                        prev_kv: e.prev_kv.map(kv),
                    })
                    .collect(),
                ..Default::default()
            },
            Some(Err(StoreError::Compacted {
                compact_revision, ..
            })) => PbWatchResponse {
                header: api.header(0),
                watch_id: id,
                canceled: true,
                compact_revision,
                cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                ..Default::default()
            },
            Some(Err(e)) => PbWatchResponse {
                header: api.header(0),
                watch_id: id,
                canceled: true,
                cancel_reason: e.to_string(),
                ..Default::default()
            },
            None => return,
        };
        let last = resp.canceled;
        if tx.send(Ok(resp)).await.is_err() || last {
            return;
        }
    }
}

/// The answer to a watch create the caller may not read: created and cancelled at once, as
/// etcd answers it.
fn refused_watch(api: &EtcdApi, id: i64, e: Status) -> PbWatchResponse {
    PbWatchResponse {
        header: api.header(0),
        watch_id: id,
        created: true,
        canceled: true,
        cancel_reason: e.message().to_owned(),
        ..Default::default()
    }
}

/// Appends to `r` (which has events) the events of the responses already waiting in
/// `stream`, as etcd batches them: one message for the client to decode instead of one per
/// revision. Returns a message it read that could not join (a progress notice, an error, the
/// end), to be handled next.
fn absorb_waiting(
    stream: &mut ws::WatchStream,
    r: &mut ws::WatchResponse,
) -> Option<Option<ws::Result<ws::WatchResponse>>> {
    let mut bytes = events_bytes(&r.events);
    while r.events.len() < WATCH_BATCH_EVENTS && bytes < WATCH_BATCH_BYTES {
        match stream.message().now_or_never() {
            Some(Some(Ok(more))) if !more.events.is_empty() => {
                bytes += events_bytes(&more.events);
                r.revision = more.revision;
                r.events.extend(more.events);
            }
            None => return None,
            other => return other,
        }
    }
    None
}

fn events_bytes(events: &[ws::Event]) -> usize {
    events
        .iter()
        .map(|e| {
            let kv = |k: &ws::KeyValue| k.key.len() + k.value.len() + 48;
            kv(&e.kv) + e.prev_kv.as_ref().map_or(0, kv)
        })
        .sum()
}

/// Serves the etcd API (gRPC over cleartext HTTP/2) on `listener` until `shutdown` completes,
/// then sends GOAWAY, ends open watch and keep-alive streams with `UNAVAILABLE`
/// ("etcdserver: server stopped", which clients retry elsewhere), and lets unary calls in
/// flight finish for up to 5 s.
///
/// Connections are served where [`Config::threads`] says: as tasks on the runtime `serve` runs
/// on, or on dedicated single-threaded runtimes. Watch and keep-alive streams' own tasks always
/// run on the runtime `serve` runs on.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let threads = cfg.threads;
    let (stop_streams, stopping) = watch::channel(false);
    let stop_streams = Arc::new(stop_streams);
    let auth = cfg.auth.clone().unwrap_or_else(auth::default_auth);
    let per_second = cfg.max_requests_per_client;
    let api = EtcdApi {
        store,
        cfg,
        stopping,
        rt: tokio::runtime::Handle::current(),
        auth: auth.clone(),
        rate: weft_tls::limit::Rate::new("etcd", per_second, 2.0 * per_second),
        peer: None,
        cert_user: None,
    };
    let recipes = recipes::Recipes::new(api.store.clone(), api.cfg.member_id, auth);
    let routes = tonic::service::Routes::new(PbKvServer::new(api.clone()))
        .add_service(PbWatchServer::new(api.clone()))
        .add_service(PbLeaseServer::new(api.clone()))
        .add_service(PbMaintenanceServer::new(api.clone()))
        .add_service(PbClusterServer::new(api.clone()))
        .add_service(api.auth_server())
        .add_service(recipes.lock_server())
        .add_service(recipes.election_server());
    let conns = Conns {
        api,
        routes,
        stop_streams,
    };
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        workers.push(Worker::spawn(i, conns.clone())?);
    }
    let mut local = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let per_client = weft_tls::limit::PerClient::new("etcd", conns.api.cfg.max_conns_per_client);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("etcd API accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Streams (watch, keepalive) carry small messages: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs add ~40 ms to each exchange.
        let Some(slot) = per_client.admit(peer.ip()) else {
            continue; // dropped: closed at once
        };
        let _ = stream.set_nodelay(true);
        if workers.is_empty() {
            conns.spawn(&mut local, stream, slot);
            continue;
        }
        // The socket leaves this runtime's reactor and joins the worker's.
        match stream.into_std() {
            Ok(s) => {
                let i = next % workers.len();
                next = next.wrapping_add(1);
                if workers[i].conns.send((s, slot)).is_err() {
                    tracing::error!("etcd API connection thread {i} is gone");
                }
            }
            Err(e) => tracing::warn!("etcd API connection dropped: {e}"),
        }
    }
    drop(listener);
    // Connections send GOAWAY and end when their calls are done; streams end at once.
    conns.stop_streams.send_replace(true);
    let mut done = Vec::with_capacity(workers.len());
    for w in workers {
        // The worker sees its channel close, then drains its connections like `drain` below.
        drop(w.conns);
        done.push(w.done);
    }
    drain(local).await;
    for d in done {
        let _ = d.await;
    }
    Ok(())
}

/// What serving a connection needs, wherever it runs.
#[derive(Clone)]
struct Conns {
    api: EtcdApi,
    routes: tonic::service::Routes,
    stop_streams: Arc<watch::Sender<bool>>,
}

impl Conns {
    /// Serves `stream` in `set`; `slot` (its client's connection count) goes back when the
    /// connection ends.
    fn spawn(
        &self,
        set: &mut tokio::task::JoinSet<()>,
        stream: tokio::net::TcpStream,
        slot: weft_tls::limit::Slot,
    ) {
        while set.try_join_next().is_some() {}
        let mut api = self.api.clone();
        api.peer = stream.peer_addr().ok().map(|a| a.ip());
        let routes = self.routes.clone();
        let stop = self.stop_streams.subscribe();
        let tls = self.api.cfg.tls.clone();
        let limits = self.api.cfg.limits;
        set.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                let routes = limit::RateLimited::new(routes, &api);
                return match is_http2(&stream).await {
                    true => {
                        weft_h2::serve_limited(stream, api, fast::call, routes, stop, limits).await
                    }
                    false => gateway::serve(stream, api).await,
                };
            };
            let s = match tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => return tracing::debug!("etcd API TLS handshake failed: {e}"),
            };
            if tls.client_auth() {
                api.cert_user = weft_tls::peer_common_name(s.get_ref().1).map(Arc::from);
            }
            let routes = limit::RateLimited::new(routes, &api);
            // gRPC clients ask for h2 by ALPN; HTTP/1 clients (curl) for http/1.1.
            match s.get_ref().1.alpn_protocol() == Some(b"http/1.1") {
                true => gateway::serve(s, api).await,
                false => weft_h2::serve_limited(s, api, fast::call, routes, stop, limits).await,
            }
        });
    }
}

/// Whether a connection starts with HTTP/2's preface (gRPC), or else HTTP/1 (etcd's JSON
/// gateway): the first three bytes tell (`PRI` against `POS`, `PUT`, `GET`...).
async fn is_http2(stream: &tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 3];
    for _ in 0..200 {
        match stream.peek(&mut b).await {
            Ok(n) if n >= 3 => return &b == b"PRI",
            // Closed, or an error: HTTP/2's handler reports it.
            Ok(0) | Err(_) => return true,
            // A preface split in tiny segments: wait for the rest.
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
    true
}

/// Waits up to [`SHUTDOWN_GRACE`] for connections to end, then aborts the rest.
async fn drain(mut set: tokio::task::JoinSet<()>) {
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
}

/// A connection thread: a single-threaded runtime serving the connections it is handed.
struct Worker {
    conns: mpsc::UnboundedSender<(std::net::TcpStream, weft_tls::limit::Slot)>,
    /// Completes when the thread has drained its connections after `conns` closed.
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Worker {
    fn spawn(i: usize, conns: Conns) -> std::io::Result<Worker> {
        // With `inline_batch`, and a store that offers it, the thread writes its calls' log
        // records itself once it has handled everything it had read, before it parks
        // (`Store::thread_flushes`).
        let flushes = conns
            .api
            .store
            .thread_flushes()
            .filter(|_| conns.api.cfg.inline_batch > 0);
        let mut rt = tokio::runtime::Builder::new_current_thread();
        if let Some(f) = flushes {
            rt.on_thread_park(f.flush);
        }
        let rt = rt.enable_all().build()?;
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(std::net::TcpStream, weft_tls::limit::Slot)>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let inline_batch = conns.api.cfg.inline_batch;
        std::thread::Builder::new()
            .name(format!("weft-etcd-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let flusher = flushes.map(|f| tokio::spawn((f.defer)(inline_batch)));
                    let mut set = tokio::task::JoinSet::new();
                    while let Some((s, slot)) = rx.recv().await {
                        match tokio::net::TcpStream::from_std(s) {
                            Ok(s) => conns.spawn(&mut set, s, slot),
                            Err(e) => tracing::warn!("etcd API connection dropped: {e}"),
                        }
                    }
                    drain(set).await;
                    if let Some(f) = flusher {
                        f.abort();
                    }
                });
                let _ = done_tx.send(());
            })?;
        Ok(Worker { conns: tx, done })
    }
}

/// Maps a store error to the status etcd returns for it, with etcd's message.
pub fn status(e: StoreError) -> Status {
    match e {
        StoreError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        StoreError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        StoreError::LeaseNotFound(_) => Status::not_found("etcdserver: requested lease not found"),
        StoreError::LeaseExists(_) => {
            Status::failed_precondition("etcdserver: lease already exists")
        }
        StoreError::LeaseTtlTooLarge { .. } => {
            Status::out_of_range("etcdserver: too large lease TTL")
        }
        StoreError::TooLarge { .. } => Status::invalid_argument("etcdserver: request is too large"),
        StoreError::TooManyOps { .. } => {
            Status::invalid_argument("etcdserver: too many operations in txn request")
        }
        StoreError::DuplicateKey => {
            Status::invalid_argument("etcdserver: duplicate key given in txn request")
        }
        StoreError::InvalidArgument(m) if m.contains("key is not provided") => {
            Status::invalid_argument("etcdserver: key is not provided")
        }
        StoreError::InvalidArgument(m) => Status::invalid_argument(m),
        StoreError::Unavailable(m) => Status::unavailable(m),
        StoreError::Closed => Status::unavailable("etcdserver: server stopped"),
        StoreError::Unsupported(m) => Status::unimplemented(m),
        // As etcd's "not leader": clients try another endpoint.
        e @ StoreError::NotPrimary(_) => Status::unavailable(e.to_string()),
        e @ StoreError::Unconfirmed { .. } => Status::deadline_exceeded(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by weft's etcd API"))
}

/// UNIMPLEMENTED, saying what to do instead.
fn unsupported(what: &str, instead: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not supported by weft's etcd API: {instead}"
    ))
}

impl EtcdApi {
    /// The store's current revision for response headers (0 if the store cannot say).
    async fn current_revision(&self) -> i64 {
        self.store
            .status()
            .await
            .map(|s| s.header.revision)
            .unwrap_or(0)
    }

    fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.cfg.member_id,
            member_id: self.cfg.member_id,
            revision,
            raft_term: 1,
        })
    }
}

fn kv(k: ws::KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: k.key.to_vec(),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: k.value.to_vec(),
        lease: k.lease,
    }
}

fn range_of(key: Vec<u8>, end: Vec<u8>) -> ws::KeyRange {
    ws::KeyRange {
        key: Bytes::from(key),
        range_end: Bytes::from(end),
    }
}

/// What the store cannot do by itself and this layer applies after the range: etcd's sort
/// (before the limit) and revision filters.
#[derive(Clone, Copy, Debug, Default)]
struct Post {
    order: i32,
    target: i32,
    limit: i64,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl Post {
    /// Whether the store's own limit can be used (key order, no filters).
    fn trivial(&self) -> bool {
        (self.order == 0 || (self.order == 1 && self.target == 0))
            && self.min_mod == 0
            && self.max_mod == 0
            && self.min_create == 0
            && self.max_create == 0
    }
}

fn range_req(r: PbRangeRequest) -> Result<(ws::RangeRequest, Post), Status> {
    let post = Post {
        order: r.sort_order,
        target: r.sort_target,
        limit: r.limit,
        min_mod: r.min_mod_revision,
        max_mod: r.max_mod_revision,
        min_create: r.min_create_revision,
        max_create: r.max_create_revision,
    };
    Ok((
        ws::RangeRequest {
            range: range_of(r.key, r.range_end),
            // Sorting and filtering happen before the limit, as in etcd.
            limit: if post.trivial() { r.limit } else { 0 },
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
        },
        post,
    ))
}

/// Sorts like etcd (order: 0 none, 1 ascend, 2 descend; target: 0 key, 1 version, 2 create,
/// 3 mod, 4 value). Keys come back in key order already.
fn sort(kvs: &mut [ws::KeyValue], order: i32, target: i32) {
    if order == 0 || (order == 1 && target == 0) {
        return;
    }
    kvs.sort_by(|a, b| match target {
        1 => a.version.cmp(&b.version),
        2 => a.create_revision.cmp(&b.create_revision),
        3 => a.mod_revision.cmp(&b.mod_revision),
        4 => a.value.cmp(&b.value),
        _ => a.key.cmp(&b.key),
    });
    if order == 2 {
        kvs.reverse();
    }
}

fn range_resp(api: &EtcdApi, mut r: ws::RangeResponse, p: Post) -> PbRangeResponse {
    if !p.trivial() {
        r.kvs.retain(|kv| {
            (p.min_mod == 0 || kv.mod_revision >= p.min_mod)
                && (p.max_mod == 0 || kv.mod_revision <= p.max_mod)
                && (p.min_create == 0 || kv.create_revision >= p.min_create)
                && (p.max_create == 0 || kv.create_revision <= p.max_create)
        });
        sort(&mut r.kvs, p.order, p.target);
        if p.limit > 0 && r.kvs.len() as i64 > p.limit {
            r.kvs.truncate(p.limit as usize);
            r.more = true;
        }
    }
    PbRangeResponse {
        header: api.header(r.header.revision),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

fn put_req(p: PbPutRequest) -> Result<ws::PutRequest, Status> {
    if p.ignore_value || p.ignore_lease {
        return Err(unsupported("put with ignore_value or ignore_lease", "read the key, then put the value and lease you want in a txn that compares its mod_revision"));
    }
    Ok(ws::PutRequest {
        key: Bytes::from(p.key),
        value: Bytes::from(p.value),
        lease: p.lease,
        prev_kv: p.prev_kv,
    })
}

fn compare(c: PbCompare) -> Result<ws::Compare, Status> {
    let op = match c.result {
        0 => ws::CompareOp::Equal,
        1 => ws::CompareOp::Greater,
        2 => ws::CompareOp::Less,
        3 => ws::CompareOp::NotEqual,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown compare result {other}"
            )))
        }
    };
    let target = match c.target_union {
        Some(PbTargetUnion::Version(v)) => ws::CompareTarget::Version(v),
        Some(PbTargetUnion::CreateRevision(v)) => ws::CompareTarget::CreateRevision(v),
        Some(PbTargetUnion::ModRevision(v)) => ws::CompareTarget::ModRevision(v),
        Some(PbTargetUnion::Value(v)) => ws::CompareTarget::Value(Bytes::from(v)),
        Some(PbTargetUnion::Lease(v)) => ws::CompareTarget::Lease(v),
        None => match c.target {
            0 => ws::CompareTarget::Version(0),
            1 => ws::CompareTarget::CreateRevision(0),
            2 => ws::CompareTarget::ModRevision(0),
            3 => ws::CompareTarget::Value(Bytes::new()),
            _ => ws::CompareTarget::Lease(0),
        },
    };
    Ok(ws::Compare {
        range: range_of(c.key, c.range_end),
        target,
        op,
    })
}

/// What each operation of a branch needs after the store answers: a range's [`Post`], or a
/// nested txn's, per branch.
#[derive(Debug)]
enum OpPost {
    Range(Post),
    Write,
    Txn(Vec<OpPost>, Vec<OpPost>),
}

fn ops(list: Vec<PbTxnRequestOp>) -> Result<(Vec<ws::TxnOp>, Vec<OpPost>), Status> {
    let mut out = Vec::with_capacity(list.len());
    let mut posts = Vec::with_capacity(list.len());
    for op in list {
        out.push(match op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => {
                let (r, post) = range_req(r)?;
                posts.push(OpPost::Range(post));
                ws::TxnOp::Range(r)
            }
            Some(PbTxnOpRequest::RequestPut(p)) => {
                posts.push(OpPost::Write);
                ws::TxnOp::Put(put_req(p)?)
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                posts.push(OpPost::Write);
                ws::TxnOp::Delete(ws::DeleteRequest {
                    range: range_of(d.key, d.range_end),
                    prev_kv: d.prev_kv,
                })
            }
            Some(PbTxnOpRequest::RequestTxn(t)) => {
                let (t, s, f) = txn_req(t)?;
                posts.push(OpPost::Txn(s, f));
                ws::TxnOp::Txn(t)
            }
            None => return Err(Status::invalid_argument("empty request op")),
        });
    }
    Ok((out, posts))
}

/// A txn for the store, with what its branches' ranges need afterwards.
fn txn_req(t: PbTxnRequest) -> Result<(ws::TxnRequest, Vec<OpPost>, Vec<OpPost>), Status> {
    let compare = t
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let (success, s_posts) = ops(t.success)?;
    let (failure, f_posts) = ops(t.failure)?;
    let req = ws::TxnRequest {
        compare,
        success,
        failure,
    };
    Ok((req, s_posts, f_posts))
}

/// The store's txn answer as etcd's, nested txns included.
fn txn_resp(api: &EtcdApi, r: ws::TxnResponse, s: Vec<OpPost>, f: Vec<OpPost>) -> PbTxnResponse {
    let mut posts = if r.succeeded { s } else { f }.into_iter();
    let responses = r
        .responses
        .into_iter()
        .map(|op| PbResponseOp {
            response: Some(match (op, posts.next()) {
                (ws::TxnOpResponse::Range(x), post) => {
                    let post = match post {
                        Some(OpPost::Range(p)) => p,
                        _ => Post::default(),
                    };
                    PbTxnOpResponse::ResponseRange(range_resp(api, x, post))
                }
                (ws::TxnOpResponse::Put(x), _) => PbTxnOpResponse::ResponsePut(PbPutResponse {
                    header: api.header(x.header.revision),
                    prev_kv: x.prev_kv.map(kv),
                }),
                (ws::TxnOpResponse::Delete(x), _) => {
                    PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                        header: api.header(x.header.revision),
                        deleted: x.deleted,
                        prev_kvs: x.prev_kvs.into_iter().map(kv).collect(),
                    })
                }
                (ws::TxnOpResponse::Txn(x), post) => {
                    let (s, f) = match post {
                        Some(OpPost::Txn(s, f)) => (s, f),
                        _ => (Vec::new(), Vec::new()),
                    };
                    let mut t = txn_resp(api, x, s, f);
                    // As etcd: a nested txn's own header carries no revision.
                    t.header = api.header(0);
                    PbTxnOpResponse::ResponseTxn(t)
                }
            }),
        })
        .collect();
    PbTxnResponse {
        header: api.header(r.header.revision),
        succeeded: r.succeeded,
        responses,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A response stream fed by `rx` that ends with `UNAVAILABLE` once the server stops (a watch
/// or keep-alive stream never ends by itself, and would hold shutdown for its whole grace).
fn until_stopped<T: Send + 'static>(
    mut rx: mpsc::Receiver<Result<T, Status>>,
    mut stopping: watch::Receiver<bool>,
) -> BoxStream<T> {
    let mut stopped = Box::pin(async move {
        // A dropped sender means no server owns this service: it never stops.
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut done = false;
    Box::pin(futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(m) = rx.poll_recv(cx) {
            done = m.is_none();
            return Poll::Ready(m);
        }
        if stopped.as_mut().poll(cx).is_ready() {
            done = true;
            return Poll::Ready(Some(Err(Status::unavailable("etcdserver: server stopped"))));
        }
        Poll::Pending
    }))
}

/// The unary KV calls, without tonic's request and response wrappers (and the boxed future
/// of `async_trait`): the fast path calls these, the tonic service delegates to them.
impl EtcdApi {
    pub(crate) async fn kv_range(
        &self,
        who: &Identity,
        req: PbRangeRequest,
    ) -> Result<PbRangeResponse, Status> {
        let (r, post) = range_req(req)?;
        self.auth
            .check_range(who, &r.range, Need::Read)
            .map_err(auth_status)?;
        let resp = self.store.range(r).await.map_err(status)?;
        Ok(range_resp(self, resp, post))
    }

    pub(crate) async fn kv_put(
        &self,
        who: &Identity,
        req: PbPutRequest,
    ) -> Result<PbPutResponse, Status> {
        let req = put_req(req)?;
        self.auth.check_put(who, &req).map_err(auth_status)?;
        let r = self.store.put(req).await.map_err(status)?;
        Ok(PbPutResponse {
            header: self.header(r.header.revision),
            prev_kv: r.prev_kv.map(kv),
        })
    }

    pub(crate) async fn kv_delete(
        &self,
        who: &Identity,
        d: PbDeleteRequest,
    ) -> Result<PbDeleteResponse, Status> {
        let req = ws::DeleteRequest {
            range: range_of(d.key, d.range_end),
            prev_kv: d.prev_kv,
        };
        self.auth.check_delete(who, &req).map_err(auth_status)?;
        let r = self.store.delete(req).await.map_err(status)?;
        Ok(PbDeleteResponse {
            header: self.header(r.header.revision),
            deleted: r.deleted,
            prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
        })
    }

    pub(crate) async fn kv_txn(
        &self,
        who: &Identity,
        t: PbTxnRequest,
    ) -> Result<PbTxnResponse, Status> {
        let (req, s_posts, f_posts) = txn_req(t)?;
        self.auth.check_txn(who, &req).map_err(auth_status)?;
        let r = self.store.txn(req).await.map_err(status)?;
        Ok(txn_resp(self, r, s_posts, f_posts))
    }
}

#[tonic::async_trait]
impl PbKvService for EtcdApi {
    async fn range(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let who = self.caller(&req)?;
        self.kv_range(&who, req.into_inner())
            .await
            .map(Response::new)
    }

    type RangeStreamStream = BoxStream<PbRangeStreamResponse>;
    async fn range_stream(
        &self,
        _req: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unsupported(
            "RangeStream",
            "use Range with a limit, then Range again from the last key",
        ))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let who = self.caller(&req)?;
        self.kv_put(&who, req.into_inner()).await.map(Response::new)
    }

    async fn delete_range(
        &self,
        req: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let who = self.caller(&req)?;
        self.kv_delete(&who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let who = self.caller(&req)?;
        self.kv_txn(&who, req.into_inner()).await.map(Response::new)
    }

    async fn compact(
        &self,
        req: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        self.caller(&req)?;
        let r = self
            .store
            .compact(req.into_inner().revision)
            .await
            .map_err(status)?;
        Ok(Response::new(PbCompactionResponse {
            header: self.header(r.header.revision),
        }))
    }
}

#[tonic::async_trait]
impl PbWatchService for EtcdApi {
    type WatchStream = BoxStream<PbWatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.caller(&req)?;
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<PbWatchResponse, Status>>(128);
        let api = self.clone();
        self.rt.spawn(async move {
            let mut next_id = 0i64;
            let mut controls: std::collections::HashMap<i64, Arc<tokio::sync::Notify>> =
                std::collections::HashMap::new();
            let mut tasks: std::collections::HashMap<i64, tokio::task::JoinHandle<()>> =
                std::collections::HashMap::new();
            loop {
                let msg = tokio::select! {
                    m = input.message() => m,
                    _ = tx.closed() => break,
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // A request that cannot be read (a bad gRPC length prefix, a message that
                    // does not decode) ends the stream with that error, never with success.
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                match msg.request_union {
                    Some(PbWatchRequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 { c.watch_id } else { next_id };
                        next_id = next_id.max(id) + 1;
                        if let Err(e) = api.check(&who, &c.key, &c.range_end, Need::Read) {
                            let _ = tx.send(Ok(refused_watch(&api, id, e))).await;
                            continue;
                        }
                        let wreq = ws::WatchRequest {
                            range: range_of(c.key, c.range_end),
                            start_revision: c.start_revision,
                            prev_kv: c.prev_kv,
                            no_put: c.filters.contains(&0),
                            no_delete: c.filters.contains(&1),
                            progress_notify: c.progress_notify,
                        };
                        let rev = api.current_revision().await;
                        let stream = match api.store.watch(wreq).await {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = tx
                                    .send(Ok(PbWatchResponse {
                                        header: api.header(rev),
                                        watch_id: id,
                                        created: true,
                                        canceled: true,
                                        cancel_reason: e.to_string(),
                                        ..Default::default()
                                    }))
                                    .await;
                                continue;
                            }
                        };
                        let _ = tx
                            .send(Ok(PbWatchResponse {
                                header: api.header(rev),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            }))
                            .await;
                        let progress = Arc::new(tokio::sync::Notify::new());
                        controls.insert(id, progress.clone());
                        tasks.insert(
                            id,
                            api.rt.spawn(forward_watch(
                                api.clone(),
                                id,
                                stream,
                                progress,
                                tx.clone(),
                            )),
                        );
                    }
                    Some(PbWatchRequestUnion::CancelRequest(c)) => {
                        controls.remove(&c.watch_id);
                        if let Some(t) = tasks.remove(&c.watch_id) {
                            t.abort();
                            let rev = api.current_revision().await;
                            let _ = tx
                                .send(Ok(PbWatchResponse {
                                    header: api.header(rev),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                }))
                                .await;
                        }
                    }
                    Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                        for p in controls.values() {
                            p.notify_one();
                        }
                    }
                    None => {}
                }
            }
            for (_, t) in tasks {
                t.abort();
            }
        });
        Ok(Response::new(until_stopped(rx, self.stopping.clone())))
    }
}

#[tonic::async_trait]
impl PbLeaseService for EtcdApi {
    async fn lease_grant(
        &self,
        req: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        self.caller(&req)?;
        let r = req.into_inner();
        let g = self.store.lease_grant(r.ttl, r.id).await.map_err(status)?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: self.header(g.header.revision),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let who = self.caller(&req)?;
        self.auth
            .check_lease_keys(&who, &*self.store, req.get_ref().id, Need::Write)
            .await
            .map_err(auth_status)?;
        let h = self
            .store
            .lease_revoke(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: self.header(h.revision),
        }))
    }

    type LeaseKeepAliveStream = BoxStream<PbLeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.caller(&req)?;
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        self.rt.spawn(async move {
            loop {
                // Also ends when the response stream is gone (the client went away, or the
                // server stopped): the request stream is released with it.
                let m = tokio::select! {
                    m = input.message() => m,
                    _ = tx.closed() => return,
                };
                let Ok(Some(m)) = m else { return };
                let resp = match api.store.lease_keep_alive(m.id).await {
                    Ok(r) => PbLeaseKeepAliveResponse {
                        header: api.header(r.header.revision),
                        id: m.id,
                        ttl: r.ttl,
                    },
                    // etcd answers an unknown lease with TTL 0.
                    Err(StoreError::LeaseNotFound(_)) => PbLeaseKeepAliveResponse {
                        header: api.header(0),
                        id: m.id,
                        ttl: 0,
                    },
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(until_stopped(rx, self.stopping.clone())))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let who = self.caller(&req)?;
        let r = req.into_inner();
        if r.keys {
            self.auth
                .check_lease_keys(&who, &*self.store, r.id, Need::Read)
                .await
                .map_err(auth_status)?;
        }
        match self.store.lease_time_to_live(r.id, r.keys).await {
            Ok(t) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: self.header(t.header.revision),
                id: t.id,
                ttl: t.ttl,
                granted_ttl: t.granted_ttl,
                keys: t.keys.into_iter().map(|k| k.to_vec()).collect(),
            })),
            // etcd answers an unknown lease with TTL -1.
            Err(StoreError::LeaseNotFound(_)) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: self.header(0),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            })),
            Err(e) => Err(status(e)),
        }
    }

    async fn lease_leases(
        &self,
        req: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.caller(&req)?;
        let ids = self.store.lease_list().await.map_err(status)?;
        let rev = self.current_revision().await;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.header(rev),
            leases: ids.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for EtcdApi {
    async fn alarm(
        &self,
        _r: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        Ok(Response::new(PbAlarmResponse {
            header: self.header(0),
            alarms: vec![],
        }))
    }
    async fn status(
        &self,
        _r: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let s = self.store.status().await.map_err(status)?;
        Ok(Response::new(PbStatusResponse {
            header: self.header(s.header.revision),
            version: format!("3.4.0-weft.{}", env!("CARGO_PKG_VERSION")),
            db_size: s.db_size,
            leader: self.cfg.member_id,
            raft_index: s.header.revision as u64,
            raft_term: 1,
            raft_applied_index: s.header.revision as u64,
            db_size_in_use: s.db_size,
            ..Default::default()
        }))
    }
    async fn defragment(
        &self,
        r: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.require_admin(&self.caller(&r)?)?;
        // The embedded store's equivalent: a snapshot now, and the logs it covers dropped.
        let h = self.store.defragment().await.map_err(status)?;
        Ok(Response::new(PbDefragmentResponse {
            header: self.header(h.revision),
        }))
    }
    /// etcd hashes its whole database file; weft has no such file, so this is the hash of
    /// the key-value state at the current revision (what HashKV answers for revision 0):
    /// equal on equal states, different after any write.
    async fn hash(&self, r: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        self.require_admin(&self.caller(&r)?)?;
        let h = self.store.hash_kv(0).await.map_err(status)?;
        Ok(Response::new(PbHashResponse {
            header: self.header(h.header.revision),
            hash: h.hash,
        }))
    }
    async fn hash_kv(
        &self,
        r: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.require_admin(&self.caller(&r)?)?;
        let h = self
            .store
            .hash_kv(r.into_inner().revision)
            .await
            .map_err(status)?;
        Ok(Response::new(PbHashKvResponse {
            header: self.header(h.header.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }
    type SnapshotStream = BoxStream<PbSnapshotResponse>;
    async fn snapshot(
        &self,
        r: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.require_admin(&self.caller(&r)?)?;
        // The store's own backup (a weft snapshot file for the embedded store, which `weft
        // snapshot restore` turns into a data dir), framed as etcd frames its database:
        // zeros up to a multiple of 512 bytes, then the SHA-256 of everything before it.
        // `etcdctl snapshot save` (3.4) refuses a stream whose length is not 512k + 32, and
        // `weft snapshot restore` checks the hash. `etcdctl snapshot restore` expects etcd's
        // database format instead.
        let backup = self.store.backup().await.map_err(status)?;
        // etcd's own stream (weft over an etcd cluster) is framed already.
        let frame = backup.format != weft_store::BackupFormat::EtcdDb;
        let header = self.header(backup.revision);
        let mut remaining = backup.size;
        let mut chunks = backup.chunks;
        let (tx, rx) = mpsc::channel(2);
        self.rt.spawn(async move {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            let mut sent = 0u64;
            loop {
                let next = tokio::select! {
                    n = chunks.next() => n,
                    _ = tx.closed() => return,
                };
                let (msg, last) = match next {
                    Some(Ok(blob)) => {
                        hash.update(&blob);
                        sent += blob.len() as u64;
                        remaining = remaining.map(|r| r.saturating_sub(blob.len() as u64));
                        let msg = PbSnapshotResponse {
                            header,
                            remaining_bytes: remaining.unwrap_or(0),
                            blob: blob.to_vec(),
                            ..Default::default()
                        };
                        (Ok(msg), false)
                    }
                    Some(Err(e)) => (Err(status(e)), true),
                    None if !frame => return,
                    None => {
                        let mut blob = vec![0u8; (sent.next_multiple_of(512) - sent) as usize];
                        hash.update(&blob);
                        blob.extend_from_slice(&std::mem::take(&mut hash).finalize());
                        let msg = PbSnapshotResponse {
                            header,
                            blob,
                            ..Default::default()
                        };
                        (Ok(msg), true)
                    }
                };
                if tx.send(msg).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(until_stopped(rx, self.stopping.clone())))
    }
    async fn move_leader(
        &self,
        _r: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unsupported(
            "MoveLeader",
            "weft is a single member and always the leader",
        ))
    }
    async fn downgrade(
        &self,
        _r: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unsupported(
            "Downgrade",
            "weft has no cluster version to downgrade",
        ))
    }
}

#[tonic::async_trait]
impl PbClusterService for EtcdApi {
    async fn member_add(
        &self,
        _r: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd (weft is a single member)"))
    }
    async fn member_remove(
        &self,
        _r: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove (weft is a single member)"))
    }
    async fn member_update(
        &self,
        _r: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate (weft is a single member)"))
    }
    async fn member_list(
        &self,
        _r: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let rev = self.current_revision().await;
        Ok(Response::new(PbMemberListResponse {
            header: self.header(rev),
            members: vec![PbMember {
                id: self.cfg.member_id,
                name: "weft".into(),
                // No peers to talk to; the member's one URL stands for both, so that tools
                // listing peer URLs see an address (etcd members always have one).
                peer_ur_ls: vec![self.cfg.client_url.clone()],
                client_ur_ls: vec![self.cfg.client_url.clone()],
                is_learner: false,
            }],
        }))
    }
    async fn member_promote(
        &self,
        _r: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote (weft is a single member)"))
    }
}
