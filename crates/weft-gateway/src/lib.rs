//! weft-gateway: an API gateway (reverse proxy) on hyper 1 + tower pieces from
//! `weft-resilience`, `weft-shard` and `weft-coord`.
//!
//! - Routes ([`config::RouteConfig`]) match host, path (exact, prefix, template), method,
//!   headers and query; they rewrite paths, add and remove headers, and have deadlines,
//!   retries (with a budget), a circuit breaker, auth (API key, basic, JWT), rate limits (local
//!   GCRA or shared through the store) and CORS.
//! - Upstreams are static lists or services discovered in a [`weft_store::Store`] (embedded or
//!   etcd), balanced by weighted round robin, least request (P2C + EWMA), ring hash, Maglev or
//!   random, with active health checks and passive outlier ejection.
//! - Configuration comes from TOML and/or the store ([`config::ROUTE_PREFIX`]) and reloads
//!   without dropping connections; endpoint state (health, EWMA, ejection) and breakers
//!   survive reloads.
//! - Plain HTTP/1.1 client requests are served by weft's own server loop (crate `weft-h1`:
//!   origin-form target, no `Transfer-Encoding`/`Upgrade`/`Expect`, bodies up to 64 KiB,
//!   read whole); everything else (h2c, HTTP/1.0, upgrades, chunked or larger bodies,
//!   malformed input) is handed to hyper's server with the bytes already read. Requests to
//!   HTTP/1.1 upstreams go through `weft-h1`'s pooled client; h2c, streamed request bodies
//!   and upgrades through hyper's. [`serve`] runs on the caller's
//!   runtime; [`serve_threads`] runs one single-threaded runtime per worker thread on the
//!   `SO_REUSEPORT` listeners of [`bind_workers`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let cfg = weft_gateway::Config::from_toml(r#"
//!     [[route]]
//!     name = "api"
//!     path_prefix = "/api"
//!     rewrite = ""
//!     upstream = "backend"
//!
//!     [[upstream]]
//!     name = "backend"
//!     endpoints = [{ address = "127.0.0.1:9000" }]
//! "#, "inline")?;
//! let gw = weft_gateway::Gateway::new(cfg, None)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! weft_gateway::serve(listener, gw, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod lb;
mod load;
pub mod proxy;
pub mod registry;
pub mod route;
mod server;
pub mod template;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::time::Duration;
use weft_resilience::circuit::CircuitBreaker;
use weft_resilience::ratelimit::RateLimiter;
use weft_resilience::retry::RetryBudget;
use weft_store::{Store, StoreExt};

pub use config::Config;
pub use error::{ConfigError, GatewayError, Reason};
pub use server::{
    bind_workers, serve, serve_admin, serve_threads, serve_threads_with, MetricsRender,
    ThreadOptions, WORKER_EVENT_INTERVAL,
};

use crate::auth::Authenticator;
use crate::config::{BreakerConfig, RateLimitConfig, RetryConfig, RouteConfig, UpstreamConfig};
use crate::proxy::{HttpClient, RequestIds, Route};
use crate::upstream::{EndpointRegistry, Upstream};

/// The routing table in force: replaced as a whole on reload.
pub(crate) struct Table {
    pub routes: Vec<Arc<Route>>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub server: config::ServerConfig,
    pub request_id_header: http::HeaderName,
    pub generation: u64,
    /// Store routes that were rejected, with why.
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Persist {
    upstreams: HashMap<String, (UpstreamConfig, Weak<Upstream>)>,
    breakers: HashMap<String, (BreakerConfig, Arc<CircuitBreaker>)>,
    limiters: HashMap<String, (RateLimitConfig, Arc<RateLimiter<String>>)>,
    budgets: HashMap<String, (RetryConfig, Arc<RetryBudget>)>,
    /// Built providers by name: unchanged ones are not rebuilt (no key files re-read, JWT
    /// cache kept).
    auths: HashMap<String, (config::AuthConfig, Arc<Authenticator>)>,
    file: Config,
    store_routes: BTreeMap<String, Result<RouteConfig, String>>,
    generation: u64,
    lease: Option<(u64, i64)>,
}

/// A failure building a part of an already validated configuration (a key file, limiter
/// settings), named by its path.
fn build_error(path: String, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: "config".into(),
        line: None,
        path,
        message,
    }
}

/// The object kept for `name` if it was built from the same settings (its state carries over
/// a reload), else a new one from `build`, kept for the next rebuild.
fn reuse_or_build<C: Clone + PartialEq, T, E>(
    kept: &mut HashMap<String, (C, Arc<T>)>,
    name: &str,
    cfg: &C,
    build: impl FnOnce() -> Result<T, E>,
) -> Result<Arc<T>, E> {
    if let Some((_, built)) = kept.get(name).filter(|(c, _)| c == cfg) {
        return Ok(built.clone());
    }
    let built = Arc::new(build()?);
    kept.insert(name.to_string(), (cfg.clone(), built.clone()));
    Ok(built)
}

/// A gateway: the routing table, endpoint state and upstream clients.
pub struct Gateway {
    table: ArcSwap<Table>,
    registry: Arc<EndpointRegistry>,
    persist: Mutex<Persist>,
    store: Option<Arc<dyn Store>>,
    client_h1: HttpClient,
    client_h2: HttpClient,
    ids: RequestIds,
    access: Option<std::sync::mpsc::SyncSender<String>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway for `cfg`. With a store, upstreams may be discovered services and routes may
    /// also come from the store (call [`Gateway::watch_store_routes`]). Must be called inside a
    /// tokio runtime (health checks and discovery run as tasks).
    pub fn new(cfg: Config, store: Option<Arc<dyn Store>>) -> Result<Arc<Gateway>, GatewayError> {
        // Validated once here (before any thread starts); `apply` does not repeat it.
        cfg.validate("config", store.is_some())?;
        let access = if cfg.server.access_log {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(8192);
            std::thread::Builder::new()
                .name("weft-access-log".into())
                .spawn(move || {
                    use std::io::Write;
                    let mut out = std::io::BufWriter::new(std::io::stdout());
                    while let Ok(line) = rx.recv() {
                        let _ = writeln!(out, "{line}");
                        while let Ok(line) = rx.try_recv() {
                            let _ = writeln!(out, "{line}");
                        }
                        let _ = out.flush();
                    }
                })?;
            Some(tx)
        } else {
            None
        };
        let gw = Arc::new(Gateway {
            table: ArcSwap::from_pointee(Table {
                routes: Vec::new(),
                upstreams: Vec::new(),
                server: cfg.server.clone(),
                request_id_header: http::HeaderName::from_static("x-request-id"),
                generation: 0,
                errors: Vec::new(),
            }),
            registry: Arc::new(EndpointRegistry::new(cfg.server.pool_max_idle_per_host)),
            persist: Mutex::new(Persist::default()),
            client_h1: proxy::build_client(&cfg.server, false),
            client_h2: proxy::build_client(&cfg.server, true),
            store,
            ids: RequestIds::new(),
            access,
        });
        gw.apply(cfg)?;
        Ok(gw)
    }

    /// The store, if any.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Replaces the file configuration and rebuilds the table. Connections and in-flight
    /// requests are untouched; endpoint state, breakers, limiters and retry budgets of
    /// unchanged routes and upstreams carry over. On error the old table stays.
    pub fn reload(&self, cfg: Config) -> Result<(), GatewayError> {
        cfg.validate("config", self.store.is_some())?;
        self.apply(cfg)
    }

    /// Installs an already validated file configuration.
    fn apply(&self, cfg: Config) -> Result<(), GatewayError> {
        let mut p = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut p.file, cfg);
        match self.rebuild(&mut p) {
            Ok(()) => Ok(()),
            Err(e) => {
                p.file = old;
                Err(e)
            }
        }
    }

    fn rebuild(&self, p: &mut Persist) -> Result<(), GatewayError> {
        let cfg = p.file.clone();
        let mut errors = Vec::new();
        let mut route_cfgs: Vec<RouteConfig> = cfg.routes.clone();
        for (name, r) in &p.store_routes {
            match r {
                Err(e) => errors.push(format!("{}{name}: {e}", config::ROUTE_PREFIX)),
                Ok(r) if cfg.routes.iter().any(|f| f.name == r.name) => errors.push(format!(
                    "{}{name}: a route named {:?} is defined in the file, which wins",
                    config::ROUTE_PREFIX,
                    r.name
                )),
                Ok(r) => {
                    match cfg.validate_extra_route(
                        r,
                        &format!("{}{name}", config::ROUTE_PREFIX),
                        self.store.is_some(),
                    ) {
                        Ok(()) => route_cfgs.push(r.clone()),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
        }
        // Upstreams: defined ones, plus implicit discovered services.
        let mut ups_cfg: Vec<UpstreamConfig> = cfg.upstreams.clone();
        for r in &route_cfgs {
            if !ups_cfg.iter().any(|u| u.name == r.upstream) {
                ups_cfg.push(UpstreamConfig {
                    name: r.upstream.clone(),
                    service: Some(r.upstream.clone()),
                    ..Default::default()
                });
            }
        }
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for u in ups_cfg {
            let reuse = p
                .upstreams
                .get(&u.name)
                .filter(|(c, _)| *c == u)
                .and_then(|(_, w)| w.upgrade());
            let up = match reuse {
                Some(up) => up,
                None => {
                    let up = Upstream::new(u.clone(), &self.registry, None, &cfg.server)
                        .map_err(|m| build_error(format!("upstream {:?}", u.name), m))?;
                    if let Some(store) = &self.store {
                        up.follow_service(store.clone(), self.registry.clone());
                    }
                    up.start_health_checks();
                    p.upstreams
                        .insert(u.name.clone(), (u.clone(), Arc::downgrade(&up)));
                    up
                }
            };
            upstreams.insert(u.name.clone(), up);
        }
        let mut auths: HashMap<String, Arc<Authenticator>> = HashMap::new();
        for a in &cfg.auths {
            let built = reuse_or_build(&mut p.auths, &a.name, a, || {
                Authenticator::build(a)
                    .map_err(|(f, m)| build_error(format!("auth {:?}.{f}", a.name), m))
            })?;
            auths.insert(a.name.clone(), built);
        }
        p.auths.retain(|n, _| auths.contains_key(n));
        let mut routes = Vec::new();
        for r in route_cfgs {
            let breaker = r
                .breaker
                .as_ref()
                .map(|b| {
                    reuse_or_build(&mut p.breakers, &r.name, b, || {
                        proxy::build_breaker(&r.name, b)
                            .map_err(|m| build_error(format!("route {:?}.breaker", r.name), m))
                    })
                })
                .transpose()?;
            let limiter = r
                .rate_limit
                .as_ref()
                .filter(|rl| !rl.global)
                .map(|rl| {
                    reuse_or_build(&mut p.limiters, &r.name, rl, || {
                        RateLimiter::new(rl.per_second, rl.burst.unwrap_or(rl.per_second)).map_err(
                            |e| {
                                build_error(format!("route {:?}.rate_limit", r.name), e.to_string())
                            },
                        )
                    })
                })
                .transpose()?;
            let budget = r
                .retry
                .as_ref()
                .filter(|rt| rt.attempts > 1)
                .map(|rt| {
                    reuse_or_build(&mut p.budgets, &r.name, rt, || {
                        RetryBudget::from_f32(
                            Duration::from_secs(10),
                            rt.budget_min_per_sec,
                            rt.budget_ratio,
                        )
                        .map_err(|e| {
                            build_error(format!("route {:?}.retry", r.name), e.to_string())
                        })
                    })
                })
                .transpose()?;
            let up = upstreams[&r.upstream].clone();
            let auth = r.auth.as_ref().map(|a| auths[a].clone());
            routes.push(Arc::new(Route::new(r, up, auth, breaker, limiter, budget)));
        }
        // Most specific first; stable sort keeps declaration order for ties.
        routes.sort_by_key(|r| r.matcher.rank());
        let names: std::collections::HashSet<&str> =
            routes.iter().map(|r| r.name.as_str()).collect();
        p.breakers.retain(|k, _| names.contains(k.as_str()));
        p.limiters.retain(|k, _| names.contains(k.as_str()));
        p.budgets.retain(|k, _| names.contains(k.as_str()));
        p.upstreams.retain(|_, (_, w)| w.strong_count() > 0);
        p.generation += 1;
        for e in &errors {
            tracing::warn!("route rejected: {e}");
        }
        let mut ups: Vec<Arc<Upstream>> = upstreams.into_values().collect();
        ups.sort_by(|a, b| a.name.cmp(&b.name));
        self.table.store(Arc::new(Table {
            routes,
            upstreams: ups,
            request_id_header: http::HeaderName::from_bytes(
                cfg.server.request_id_header.as_bytes(),
            )
            .unwrap_or(http::HeaderName::from_static("x-request-id")),
            server: cfg.server.clone(),
            generation: p.generation,
            errors,
        }));
        tracing::info!(generation = p.generation, "gateway configuration loaded");
        Ok(())
    }

    /// Reads, validates and applies a TOML file (errors name the file and line; the old
    /// configuration stays on error).
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), GatewayError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let cfg = Config::from_toml(&text, &path.display().to_string())?;
        self.reload(cfg)
    }

    /// Polls `path` every `every` and reloads when its content changes (editors that replace
    /// the file are fine). Errors are logged and the running configuration is kept.
    pub fn watch_file(
        self: &Arc<Self>,
        path: std::path::PathBuf,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            loop {
                tokio::time::sleep(every).await;
                let Some(gw) = weak.upgrade() else { return };
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != last {
                    last = now;
                    match gw.reload_file(&path) {
                        Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                        Err(e) => tracing::error!("configuration not reloaded: {e}"),
                    }
                }
            }
        })
    }

    /// Reload generation (1 after the first load).
    pub fn generation(&self) -> u64 {
        self.table.load().generation
    }

    /// Follows routes stored under [`config::ROUTE_PREFIX`]: loads them now and rebuilds the
    /// table on every change (invalid ones are skipped and reported by [`Gateway::status`]).
    pub async fn watch_store_routes(self: &Arc<Self>) -> Result<(), GatewayError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let rev = self.load_store_routes(&store).await?;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut rev = rev;
            loop {
                let mut req = weft_store::WatchRequest::new(weft_store::KeyRange::prefix(
                    config::ROUTE_PREFIX,
                ));
                req.start_revision = rev + 1;
                let mut w = match store.watch(req).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!("route watch failed, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                loop {
                    match w.message().await {
                        Some(Ok(m)) if m.events.is_empty() => continue,
                        Some(Ok(_)) | Some(Err(_)) | None => {}
                    }
                    let Some(gw) = weak.upgrade() else { return };
                    match gw.load_store_routes(&store).await {
                        Ok(r) => rev = r,
                        Err(e) => tracing::warn!("reloading store routes failed: {e}"),
                    }
                    break;
                }
            }
        });
        Ok(())
    }

    async fn load_store_routes(&self, store: &Arc<dyn Store>) -> Result<i64, GatewayError> {
        let r = store.get_prefix(config::ROUTE_PREFIX).await?;
        let mut routes = BTreeMap::new();
        for kv in r.kvs {
            let name = String::from_utf8_lossy(&kv.key[config::ROUTE_PREFIX.len()..]).into_owned();
            let parsed = serde_json::from_slice::<RouteConfig>(&kv.value)
                .map_err(|e| format!("not a route: {e}"))
                .and_then(|rc| {
                    if rc.name != name {
                        Err(format!(
                            "the key names route {name:?} but the value names {:?}",
                            rc.name
                        ))
                    } else {
                        Ok(rc)
                    }
                });
            routes.insert(name, parsed);
        }
        let mut p = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        if p.store_routes != routes || p.generation == 0 {
            p.store_routes = routes;
            self.rebuild(&mut p)?;
        }
        Ok(r.header.revision)
    }

    /// Counts one request in the shared one-second window of (`route`, `key`) in the store:
    /// every gateway on the store shares the count, so limits do not multiply with the number
    /// of instances. Err(Some(wait)) when over, Err(None) when the store fails.
    pub(crate) async fn global_limit(
        &self,
        route: &str,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<(), Option<Duration>> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let window = now.as_secs();
        let lease = {
            let cached = self.persist.lock().unwrap_or_else(|e| e.into_inner()).lease;
            match cached {
                Some((w, id)) if w == window => id,
                _ => {
                    let id = store.lease_grant(3, 0).await.map_err(|_| None)?.id;
                    self.persist.lock().unwrap_or_else(|e| e.into_inner()).lease =
                        Some((window, id));
                    id
                }
            }
        };
        let mut req = weft_store::PutRequest::new(
            format!("/weft/gateway/ratelimit/{route}/{key}/{window}"),
            bytes::Bytes::new(),
        );
        req.lease = lease;
        req.prev_kv = true;
        let r = store.put(req).await.map_err(|_| None)?;
        let count = r.prev_kv.map(|kv| kv.version).unwrap_or(0) + 1;
        if count as u64 <= per_second.max(burst) as u64 {
            Ok(())
        } else {
            Err(Some(
                Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos() as u64),
            ))
        }
    }

    /// JSON status for the admin API: routes, upstreams with endpoint state, breaker states,
    /// rejected store routes.
    pub fn status(&self) -> serde_json::Value {
        let t = self.table.load();
        let now = tokio::time::Instant::now();
        let routes: Vec<_> = t
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "config": r.cfg,
                    "upstream": r.upstream.name,
                    "breaker": r.breaker.as_ref().map(|b| format!("{:?}", b.state()).to_lowercase()),
                    "breaker_stats": r.breaker.as_ref().map(|b| breaker_stats(b)),
                })
            })
            .collect();
        let upstreams: Vec<_> = t
            .upstreams
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "service": u.cfg.service,
                    "balance": u.cfg.balance,
                    "endpoints": u.endpoints().iter().map(|e| e.to_json(now)).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "generation": t.generation,
            "routes": routes,
            "upstreams": upstreams,
            "errors": t.errors,
        })
    }

    /// Stores a route under [`config::ROUTE_PREFIX`] after validating it against the current
    /// file configuration (every gateway watching the store picks it up).
    pub async fn put_route(&self, route: RouteConfig) -> Result<(), GatewayError> {
        let store = self.store.as_ref().ok_or_else(|| ConfigError::Invalid {
            origin: "admin".into(),
            line: None,
            path: "route".into(),
            message: "this gateway has no store; edit the config file instead".into(),
        })?;
        {
            let p = self.persist.lock().unwrap_or_else(|e| e.into_inner());
            if p.file.routes.iter().any(|r| r.name == route.name) {
                return Err(ConfigError::Invalid {
                    origin: "admin".into(),
                    line: None,
                    path: "route.name".into(),
                    message: format!("route {:?} is defined in the config file", route.name),
                }
                .into());
            }
            p.file.validate_extra_route(&route, "route", true)?;
        }
        store
            .put_kv(
                format!("{}{}", config::ROUTE_PREFIX, route.name),
                serde_json::to_vec(&route).expect("serializable"),
            )
            .await?;
        Ok(())
    }

    /// Deletes a stored route; false if there was none.
    pub async fn delete_route(&self, name: &str) -> Result<bool, GatewayError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        Ok(store
            .delete_key(format!("{}{name}", config::ROUTE_PREFIX))
            .await?
            > 0)
    }
}

/// A route breaker's window (what decides its state) and its totals since it was built (the
/// dashboard's rates are differences of two readings).
fn breaker_stats(b: &CircuitBreaker) -> serde_json::Value {
    let w = b.snapshot();
    let t = b.totals();
    serde_json::json!({
        "window": {
            "calls": w.calls,
            "failures": w.failures,
            "slow": w.slow,
            "failure_rate": w.failure_rate(),
            "slow_rate": w.slow_rate(),
        },
        "totals": {
            "success": t.success,
            "failure": t.failure,
            "slow": t.slow,
            "rejected": t.rejected,
        },
    })
}
