//! The weft node's HTTP/JSON API.
//!
//! [`router`] builds the axum app over any `Arc<dyn Store>`; [`run`] serves it on a bound
//! listener until a shutdown future completes (open watch streams are ended so that shutdown
//! never hangs). Every route is described in the OpenAPI document served at `/openapi.json`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! let dir = tempfile::tempdir()?;
//! let store = weft_store::embedded::Embedded::open(dir.path(), Default::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! weft_server::run(listener, Arc::new(store), Default::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_auth::{Identity, Need};
use weft_store::{Store, WatchRequest};

mod access;
pub mod api;
mod coord;
mod error;
pub mod gateways;
pub mod history;
pub mod listener;
mod queue;
pub mod repl;
mod saga;
pub mod shard;

pub use error::ApiError;
pub use gateways::{LocalGateway, GATEWAY_SERVICE};

use api::Encoding;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// The node's admin token: with it a call may do everything. Required on every route but
    /// `/health`, the dashboard's files and `/v1/auth/authenticate`, unless auth is enabled,
    /// when a user's token does too (see [`ServerConfig::auth`]). None, with auth disabled:
    /// no auth, loopback only.
    pub token: Option<String>,
    /// Largest request body, bytes (default 4 MiB: a 1.5 MiB value fits even in base64).
    pub max_body_bytes: usize,
    /// Called before `/metrics` renders, to update metrics (through the `metrics` macros)
    /// that the server cannot read from the [`Store`] trait, such as a backend's own counters.
    pub on_scrape: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The saga orchestrator behind `/v1/saga/*`, started on the first write (none: those
    /// routes answer 503).
    pub saga: Option<Arc<weft_saga::Lazy>>,
    /// The queue behind `/v1/queue/*` (none: those routes answer 503).
    pub queue: Option<Arc<dyn weft_queue::Queue>>,
    /// The node's replication behind `/v1/repl/*` (none: those routes answer 503).
    pub repl: Option<Arc<weft_repl::Replication>>,
    /// A gateway running inside this node, whose status `/v1/gateway/status` reads directly.
    pub local_gateway: Option<gateways::LocalGateway>,
    /// The backend's own counters (reads, watch events, fsyncs), sampled for `/v1/history`.
    pub counters: Option<history::CounterSource>,
    /// Serve HTTPS with this (none: plain HTTP).
    pub tls: Option<Arc<weft_tls::Acceptor>>,
    /// Most connections one client address may hold open (0: no limit); more are closed at
    /// accept and counted in `weft_connections_refused_total{listener="api"}`.
    pub max_conns_per_client: usize,
    /// Most requests a second one client address may send (0: no limit), after a burst of
    /// twice as many; more are answered 429 `rate_limited` and counted in
    /// `weft_requests_limited_total{listener="api"}`. `/health` is not counted.
    pub max_requests_per_client: f64,
    /// How `/v1/gateway/status` reaches a gateway's admin API at an `https://` address (none:
    /// TLS trusting the system's roots).
    pub gateway_tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
    /// Users, roles and permissions, shared with the etcd API (none: kept in memory, auth
    /// disabled until enabled through `/v1/auth/enable`).
    pub auth: Option<Arc<weft_auth::Auth>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("on_scrape", &self.on_scrape.is_some())
            .field("saga", &self.saga.is_some())
            .field("queue", &self.queue.is_some())
            .field("repl", &self.repl.is_some())
            .field("local_gateway", &self.local_gateway)
            .field("counters", &self.counters.is_some())
            .field("tls", &self.tls.as_ref().map(|t| t.files()))
            .field("max_conns_per_client", &self.max_conns_per_client)
            .field("max_requests_per_client", &self.max_requests_per_client)
            .field("gateway_tls", &self.gateway_tls.is_some())
            .field("auth", &self.auth)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_body_bytes: 4 * 1024 * 1024,
            on_scrape: None,
            saga: None,
            queue: None,
            repl: None,
            local_gateway: None,
            counters: None,
            tls: None,
            max_conns_per_client: 0,
            max_requests_per_client: 0.0,
            gateway_tls: None,
            auth: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
    metrics: PrometheusHandle,
    on_scrape: Option<Arc<dyn Fn() + Send + Sync>>,
    saga: Option<Arc<weft_saga::Lazy>>,
    queue: Option<Arc<dyn weft_queue::Queue>>,
    repl: Option<Arc<weft_repl::Replication>>,
    local_gateway: Option<gateways::LocalGateway>,
    gateway_tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
    history: Arc<history::History>,
    auth: Arc<weft_auth::Auth>,
    rate: Arc<weft_tls::limit::Rate>,
}

/// A JSON body whose rejections become [`ApiError`]s.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("request body is too large: {}", rej.body_text()))
    } else {
        ApiError::BadRequest(rej.body_text())
    }
}

/// Prometheus text of every metric recorded in this process (installs the recorder on first
/// use), for processes that serve metrics elsewhere (e.g. the gateway's admin API).
pub fn render_metrics() -> String {
    metrics_handle().render()
}

/// Histogram bucket bounds, in seconds, for every latency histogram weft records.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder now. Metric handles created before it
/// exists record nothing, so call this before building anything that caches handles.
pub fn install_metrics() {
    let _ = metrics_handle();
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Fixed buckets (seconds) rather than summaries: draining a sample into a bucket
            // count is cheap, so the periodic upkeep does not burst (at ~60k requests/s a
            // summary upkeep was a CPU burst every few seconds that showed in the gateway's
            // p99), and bucketed histograms aggregate across instances.
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only weft's own"
                );
            }
            // Histograms keep raw samples until drained; drain them even if nobody scrapes.
            let h = handle.clone();
            let _ = std::thread::Builder::new()
                .name("weft-metrics-upkeep".into())
                .spawn(move || loop {
                    // Often, so that each drain is small.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    h.run_upkeep();
                });
            handle
        })
        .clone()
}

/// Every route, as listed in the OpenAPI document (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/status"),
    ("get", "/v1/snapshot"),
    ("post", "/v1/defragment"),
    ("post", "/v1/kv/range"),
    ("post", "/v1/kv/put"),
    ("post", "/v1/kv/delete"),
    ("post", "/v1/kv/txn"),
    ("post", "/v1/kv/compact"),
    ("post", "/v1/kv/hash"),
    ("get", "/v1/watch"),
    ("post", "/v1/lease/grant"),
    ("post", "/v1/lease/revoke"),
    ("post", "/v1/lease/keepalive"),
    ("post", "/v1/lease/ttl"),
    ("get", "/v1/lease/list"),
    ("post", "/v1/lock/acquire"),
    ("post", "/v1/lock/release"),
    ("post", "/v1/election/campaign"),
    ("post", "/v1/election/proclaim"),
    ("post", "/v1/election/resign"),
    ("get", "/v1/election/leader"),
    ("get", "/v1/election/observe"),
    ("post", "/v1/svc/register"),
    ("post", "/v1/svc/deregister"),
    ("get", "/v1/svc/list"),
    ("get", "/v1/svc/watch"),
    ("post", "/v1/saga/submit"),
    ("get", "/v1/saga/get"),
    ("get", "/v1/saga/list"),
    ("post", "/v1/saga/resume"),
    ("post", "/v1/saga/skip"),
    ("post", "/v1/saga/abort"),
    ("get", "/v1/saga/watch"),
    ("post", "/v1/queue/topic/create"),
    ("post", "/v1/queue/topic/delete"),
    ("get", "/v1/queue/topics"),
    ("get", "/v1/queue/topic"),
    ("post", "/v1/queue/group/create"),
    ("post", "/v1/queue/group/delete"),
    ("post", "/v1/queue/publish"),
    ("post", "/v1/queue/publish/stream"),
    ("post", "/v1/queue/pull"),
    ("post", "/v1/queue/ack"),
    ("post", "/v1/queue/nack"),
    ("post", "/v1/queue/extend"),
    ("get", "/v1/queue/read"),
    ("get", "/v1/queue/consume"),
    ("get", "/v1/queue/dead"),
    ("post", "/v1/queue/dead/replay"),
    ("post", "/v1/queue/dead/purge"),
    ("get", "/ui"),
    ("get", "/ui/app.js"),
    ("get", "/ui/app.css"),
    ("get", "/v1/repl/stream"),
    ("get", "/v1/repl/plan"),
    ("get", "/v1/repl/status"),
    ("post", "/v1/repl/check"),
    ("post", "/v1/repl/promote"),
    ("get", "/v1/gateways"),
    ("get", "/v1/gateway/status"),
    ("get", "/v1/shard/analyze"),
    ("get", "/v1/history"),
    ("post", "/v1/auth/authenticate"),
    ("get", "/v1/auth/status"),
    ("post", "/v1/auth/enable"),
    ("post", "/v1/auth/disable"),
    ("post", "/v1/auth/user"),
    ("post", "/v1/auth/role"),
    ("get", "/v1/auth/users"),
    ("get", "/v1/auth/roles"),
];

/// Builds the router. `shutdown` turning `true` ends open watch streams.
pub fn router(
    store: Arc<dyn Store>,
    cfg: &ServerConfig,
    shutdown: watch::Receiver<bool>,
) -> Router {
    let history = history::History::start(store.clone(), cfg.counters.clone(), shutdown.clone());
    let state = AppState {
        store,
        token: cfg.token.as_deref().map(Arc::from),
        shutdown,
        metrics: metrics_handle(),
        on_scrape: cfg.on_scrape.clone(),
        saga: cfg.saga.clone(),
        queue: cfg.queue.clone(),
        repl: cfg.repl.clone(),
        local_gateway: cfg.local_gateway.clone(),
        gateway_tls: cfg.gateway_tls.clone(),
        history,
        auth: cfg.auth.clone().unwrap_or_else(access::default_auth),
        rate: weft_tls::limit::Rate::new(
            "api",
            cfg.max_requests_per_client,
            2.0 * cfg.max_requests_per_client,
        ),
    };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/status", get(status))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/defragment", post(defragment))
        .route("/v1/kv/range", post(kv_range))
        .route("/v1/kv/put", post(kv_put))
        .route("/v1/kv/delete", post(kv_delete))
        .route("/v1/kv/txn", post(kv_txn))
        .route("/v1/kv/compact", post(kv_compact))
        .route("/v1/kv/hash", post(kv_hash))
        .route("/v1/watch", get(watch_sse))
        .route("/v1/lease/grant", post(lease_grant))
        .route("/v1/lease/revoke", post(lease_revoke))
        .route("/v1/lease/keepalive", post(lease_keepalive))
        .route("/v1/lease/ttl", post(lease_ttl))
        .route("/v1/lease/list", get(lease_list))
        .route("/v1/lock/acquire", post(coord::lock_acquire))
        .route("/v1/lock/release", post(coord::lock_release))
        .route("/v1/election/campaign", post(coord::election_campaign))
        .route("/v1/election/proclaim", post(coord::election_proclaim))
        .route("/v1/election/resign", post(coord::election_resign))
        .route("/v1/election/leader", get(coord::election_leader))
        .route("/v1/election/observe", get(coord::election_observe))
        .route("/v1/svc/register", post(coord::svc_register))
        .route("/v1/svc/deregister", post(coord::svc_deregister))
        .route("/v1/svc/list", get(coord::svc_list))
        .route("/v1/svc/watch", get(coord::svc_watch))
        .route("/v1/saga/submit", post(saga::submit))
        .route("/v1/saga/get", get(saga::get))
        .route("/v1/saga/list", get(saga::list))
        .route("/v1/saga/resume", post(saga::resume))
        .route("/v1/saga/skip", post(saga::skip))
        .route("/v1/saga/abort", post(saga::abort))
        .route("/v1/saga/watch", get(saga::watch))
        .route("/v1/queue/topic/create", post(queue::topic_create))
        .route("/v1/queue/topic/delete", post(queue::topic_delete))
        .route("/v1/queue/topics", get(queue::topics))
        .route("/v1/queue/topic", get(queue::topic_get))
        .route("/v1/queue/group/create", post(queue::group_create))
        .route("/v1/queue/group/delete", post(queue::group_delete))
        .route("/v1/queue/publish", post(queue::publish))
        .route("/v1/queue/publish/stream", post(queue::publish_stream))
        .route("/v1/queue/pull", post(queue::pull))
        .route("/v1/queue/ack", post(queue::ack))
        .route("/v1/queue/nack", post(queue::nack))
        .route("/v1/queue/extend", post(queue::extend))
        .route("/v1/queue/read", get(queue::read))
        .route("/v1/queue/consume", get(queue::consume))
        .route("/v1/queue/dead", get(queue::dead))
        .route("/v1/queue/dead/replay", post(queue::dead_replay))
        .route("/v1/queue/dead/purge", post(queue::dead_purge))
        .route("/ui", get(|| ui("index.html")))
        .route("/ui/app.js", get(|| ui("app.js")))
        .route("/ui/app.css", get(|| ui("app.css")))
        .route("/v1/repl/stream", get(repl::stream))
        .route("/v1/repl/plan", get(repl::plan))
        .route("/v1/repl/status", get(repl::status))
        .route("/v1/repl/check", post(repl::check))
        .route("/v1/repl/promote", post(repl::promote))
        .route("/v1/gateways", get(gateways::list))
        .route("/v1/gateway/status", get(gateways::status))
        .route("/v1/shard/analyze", get(shard::analyze))
        .route("/v1/history", get(history::get))
        .route("/v1/auth/authenticate", post(access::authenticate))
        .route("/v1/auth/status", get(access::status))
        .route("/v1/auth/enable", post(access::enable))
        .route("/v1/auth/disable", post(access::disable))
        .route("/v1/auth/user", post(access::user))
        .route("/v1/auth/role", post(access::role))
        .route("/v1/auth/users", get(access::users))
        .route("/v1/auth/roles", get(access::roles))
        .fallback(not_found)
        .layer(middleware::from_fn(repl::headers))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), rate))
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state)
}

/// The dashboard's files, embedded in the binary (no build step, works offline). They hold no
/// data, so they are served without the token; the page asks for it and sends it with each
/// API call.
async fn ui(name: &'static str) -> Response {
    let (body, kind) = match name {
        "index.html" => (include_str!("ui/index.html"), "text/html; charset=utf-8"),
        "app.js" => (include_str!("ui/app.js"), "text/javascript; charset=utf-8"),
        _ => (include_str!("ui/app.css"), "text/css; charset=utf-8"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "not_found", "message": "no such route; see /openapi.json", "retryable": false}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Listen backlog asked for; the kernel caps it at its maximum (`net.core.somaxconn`), which is
/// what etcd (Go's `net.Listen`) gets too. Used for `weft up`'s HTTP API and etcd API and the
/// gateway's admin API (the gateway's workers listen with 1,024 of their own). The default of
/// std and mio, 128, dropped SYNs in a burst of 2,000 connects, each retried a second later.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` (with `SO_REUSEADDR`) and listens with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the API on `listener` until `shutdown` completes, then drains connections.
pub async fn run(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = router(store, &cfg, rx);
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let per_client = cfg.max_conns_per_client;
    // The client's address reaches the handlers (the per-client request rate).
    let app = app.into_make_service_with_connect_info::<listener::Peer>();
    if let Some(tls) = cfg.tls.clone() {
        let listener = listener::TlsListener::new(listener, tls, per_client)?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
    }
    let listener = listener::PlainListener::new(listener, per_client);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds the caller (`access::resolve`), refuses what its route's policy does not allow it,
/// and hands it to the handler as an `Identity` extension (handlers of key routes check
/// their keys with it).
async fn auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let policy = access::policy(req.uri().path());
    if policy == access::Policy::Open {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cert_user = req
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .and_then(|c| c.0.cert_user.clone());
    let who = match access::resolve(&st, bearer, cert_user.as_deref()) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    if policy == access::Policy::Root && !st.auth.is_admin(&who) {
        return ApiError::Auth(weft_auth::AuthError::PermissionDenied).into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Refuses a request from a client over its request rate (`max_requests_per_client`).
async fn rate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .map(|c| c.0.addr.ip());
    if let Some(ip) = peer.filter(|_| req.uri().path() != "/health") {
        if !st.rate.admit(ip) {
            let msg = format!(
                "over {} requests a second from {ip} (--max-requests-per-client); retry later",
                st.rate.per_second()
            );
            return ApiError::RateLimited(msg).into_response();
        }
    }
    next.run(req).await
}

async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("weft_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("weft_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

async fn health(State(st): State<AppState>) -> Response {
    match st.store.status().await {
        Ok(s) => {
            Json(serde_json::json!({"status": "ok", "revision": s.header.revision})).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics_route(State(st): State<AppState>) -> Response {
    if let Ok(s) = st.store.status().await {
        metrics::gauge!("weft_store_revision").set(s.header.revision as f64);
        metrics::gauge!("weft_store_compact_revision").set(s.compact_revision as f64);
        metrics::gauge!("weft_store_db_size_bytes").set(s.db_size as f64);
    }
    if let Some(f) = &st.on_scrape {
        f();
    }
    if let Some(r) = &st.repl {
        r.export_metrics();
    }
    if let Some(o) = &st.saga {
        if let Ok(counts) = o.reader().counts().await {
            for (status, n) in counts {
                metrics::gauge!("weft_sagas", "status" => status.as_str()).set(n as f64);
            }
        }
    }
    queue::gauges(&st).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct StatusJson {
    header: api::Header,
    compact_revision: i64,
    db_size: i64,
    version: String,
}

async fn status(State(st): State<AppState>) -> Result<Json<StatusJson>, ApiError> {
    let s = st.store.status().await?;
    Ok(Json(StatusJson {
        header: s.header.into(),
        compact_revision: s.compact_revision,
        db_size: s.db_size,
        version: s.version,
    }))
}

/// A backup: the store's state at one revision, streamed (`weft snapshot save`).
async fn snapshot(State(st): State<AppState>) -> Result<Response, ApiError> {
    let b = st.store.backup().await?;
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("weft-revision", b.revision)
        .header("weft-backup-format", b.format.name());
    if let Some(n) = b.size {
        resp = resp.header(header::CONTENT_LENGTH, n);
    }
    // An error part-way ends the body early: the length (or the client's check of the
    // file) shows the backup is incomplete.
    resp.body(axum::body::Body::from_stream(b.chunks))
        .map_err(|e| {
            ApiError::Store(weft_store::StoreError::Storage(format!(
                "cannot build the response: {e}"
            )))
        })
}

async fn defragment(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let h = st.store.defragment().await?;
    Ok(Json(serde_json::json!({ "header": api::Header::from(h) })))
}

async fn kv_range(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<api::RangeBody>,
) -> Result<Json<api::RangeResp>, ApiError> {
    let enc = b.encoding.unwrap_or_default();
    let req = b.to_store(enc)?;
    st.auth.check_range(&who, &req.range, Need::Read)?;
    let r = st.store.range(req).await?;
    Ok(Json(api::range_resp(enc, &r)?))
}

async fn kv_put(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<api::PutBody>,
) -> Result<Json<api::PutResp>, ApiError> {
    let enc = b.encoding.unwrap_or_default();
    let req = b.to_store(enc)?;
    st.auth.check_put(&who, &req)?;
    let r = st.store.put(req).await?;
    Ok(Json(api::put_resp(enc, &r)?))
}

async fn kv_delete(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<api::DeleteBody>,
) -> Result<Json<api::DeleteResp>, ApiError> {
    let enc = b.encoding.unwrap_or_default();
    let req = b.to_store(enc)?;
    st.auth.check_delete(&who, &req)?;
    let r = st.store.delete(req).await?;
    Ok(Json(api::delete_resp(enc, &r)?))
}

async fn kv_txn(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<api::TxnBody>,
) -> Result<Json<api::TxnResp>, ApiError> {
    let enc = b.encoding.unwrap_or_default();
    let req = b.to_store(enc)?;
    st.auth.check_txn(&who, &req)?;
    let r = st.store.txn(req).await?;
    Ok(Json(api::txn_resp(enc, &r)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionBody {
    #[serde(default)]
    revision: i64,
}

async fn kv_compact(
    State(st): State<AppState>,
    Body(b): Body<RevisionBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = st.store.compact(b.revision).await?;
    Ok(Json(
        serde_json::json!({"header": api::Header::from(r.header)}),
    ))
}

async fn kv_hash(
    State(st): State<AppState>,
    Body(b): Body<RevisionBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = st.store.hash_kv(b.revision).await?;
    Ok(Json(serde_json::json!({
        "header": api::Header::from(r.header),
        "hash": r.hash,
        "compact_revision": r.compact_revision,
        "hash_revision": r.hash_revision,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    ttl: i64,
    #[serde(default)]
    id: i64,
}

async fn lease_grant(
    State(st): State<AppState>,
    Body(b): Body<GrantBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = st.store.lease_grant(b.ttl, b.id).await?;
    Ok(Json(
        serde_json::json!({"header": api::Header::from(r.header), "id": r.id, "ttl": r.ttl}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdBody {
    id: i64,
    #[serde(default)]
    keys: bool,
    #[serde(default)]
    encoding: Option<Encoding>,
}

async fn lease_revoke(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<IdBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.auth
        .check_lease_keys(&who, &*st.store, b.id, Need::Write)
        .await?;
    let h = st.store.lease_revoke(b.id).await?;
    Ok(Json(serde_json::json!({"header": api::Header::from(h)})))
}

async fn lease_keepalive(
    State(st): State<AppState>,
    Body(b): Body<IdBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = st.store.lease_keep_alive(b.id).await?;
    Ok(Json(
        serde_json::json!({"header": api::Header::from(r.header), "id": r.id, "ttl": r.ttl}),
    ))
}

async fn lease_ttl(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<IdBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if b.keys {
        st.auth
            .check_lease_keys(&who, &*st.store, b.id, Need::Read)
            .await?;
    }
    let enc = b.encoding.unwrap_or_default();
    let r = st.store.lease_time_to_live(b.id, b.keys).await?;
    let keys = r
        .keys
        .iter()
        .map(|k| enc.encode(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({
        "header": api::Header::from(r.header),
        "id": r.id,
        "ttl": r.ttl,
        "granted_ttl": r.granted_ttl,
        "keys": keys,
    })))
}

async fn lease_list(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = st.store.lease_list().await?;
    Ok(Json(serde_json::json!({"leases": ids})))
}

api::key_selecting! {
/// Query of `GET /v1/watch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    start_revision: i64,
    #[serde(default)]
    prev_kv: bool,
    #[serde(default)]
    no_put: bool,
    #[serde(default)]
    no_delete: bool,
    #[serde(default)]
    progress_notify: bool,
    #[serde(default)]
    encoding: Option<Encoding>,
}
}

async fn watch_sse(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let enc = q.encoding.unwrap_or_default();
    let sel = q.sel();
    let req = WatchRequest {
        range: sel.range(enc)?,
        start_revision: q.start_revision,
        prev_kv: q.prev_kv,
        no_put: q.no_put,
        no_delete: q.no_delete,
        progress_notify: q.progress_notify,
    };
    st.auth.check_range(&who, &req.range, Need::Read)?;
    let stream = st.store.watch(req).await?;
    metrics::gauge!("weft_watchers").increment(1.0);
    struct Gauge;
    impl Drop for Gauge {
        fn drop(&mut self) {
            metrics::gauge!("weft_watchers").decrement(1.0);
        }
    }
    let gauge = Gauge;
    let events = stream.map(move |item| {
        let _ = &gauge;
        match item
            .map_err(ApiError::Store)
            .and_then(|m| api::watch_json(enc, &m))
        {
            Ok(j) if j.events.is_empty() => {
                let data = serde_json::json!({"revision": j.revision}).to_string();
                (SseEvent::default().event("progress").data(data), false)
            }
            Ok(j) => {
                let data = serde_json::to_string(&j).unwrap_or_default();
                (SseEvent::default().event("watch").data(data), false)
            }
            Err(e) => (coord::sse_error(&e), true),
        }
    });
    Ok(coord::sse(&st, events))
}
