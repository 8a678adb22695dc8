//! Upstreams and their endpoints: per-endpoint state (in-flight requests, EWMA latency, active
//! health, passive outlier ejection) that survives reloads and discovery changes, the current
//! endpoint set of each upstream (static or discovered), and active health checking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio::time::Duration;
use weft_resilience::rng::{Random, XorShift};

use crate::config::{
    Balance, CheckKind, HealthCheckConfig, Protocol, ServerConfig, UpstreamConfig,
};
use crate::lb::{EndpointSet, HashOn, PickCtx};
use http::HeaderMap;
use tokio::time::Instant;

pub use crate::config::parse_authority;

pub use crate::endpoint::Endpoint;

/// Endpoint state kept across reloads: (upstream, address) → endpoint.
#[derive(Debug)]
pub(crate) struct EndpointRegistry {
    map: Mutex<HashMap<(String, String), Weak<Endpoint>>>,
    /// Idle connections kept per endpoint.
    max_idle: usize,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        EndpointRegistry::new(256)
    }
}

impl EndpointRegistry {
    pub(crate) fn new(max_idle: usize) -> Self {
        EndpointRegistry {
            map: Mutex::default(),
            max_idle,
        }
    }

    pub(crate) fn get(
        &self,
        upstream: &str,
        address: &str,
        weight: u32,
    ) -> Result<Arc<Endpoint>, String> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (upstream.to_string(), address.to_string());
        if let Some(e) = map.get(&key).and_then(Weak::upgrade) {
            e.weight.store(weight.max(1), Ordering::Relaxed);
            return Ok(e);
        }
        let e = Arc::new(Endpoint::new(address, weight, self.max_idle)?);
        map.insert(key, Arc::downgrade(&e));
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        Ok(e)
    }
}

/// One upstream: its configuration, its current endpoint set, and its background tasks.
pub struct Upstream {
    /// Name.
    pub name: String,
    pub(crate) cfg: UpstreamConfig,
    pub(crate) hash_on: Option<HashOn>,
    pub(crate) set: ArcSwap<EndpointSet>,
    pub(crate) rr: AtomicU64,
    pub(crate) rng: Arc<dyn Random>,
    /// The client for an upstream with `tls` (every endpoint over https).
    pub(crate) https: Option<HttpsClient>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A hyper client over TLS (hyper-rustls), for upstreams with `tls`.
pub(crate) type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    weft_h1::body::Body,
>;

/// Builds the https client of an upstream with `tls` (files read now: an error names them).
fn https_client(
    cfg: &UpstreamConfig,
    server: &ServerConfig,
) -> Result<Option<HttpsClient>, String> {
    let Some(t) = &cfg.tls else {
        return Ok(None);
    };
    let h2 = cfg.protocol == Protocol::H2c;
    // hyper-rustls sets ALPN itself (h2 or http/1.1, from enable_http2/enable_http1).
    let alpn: &[&[u8]] = &[];
    let files = weft_tls::ClientFiles {
        ca: t.ca.clone(),
        cert: t.cert.clone(),
        key: t.key.clone(),
    };
    let tls = if t.insecure_skip_verify {
        tracing::warn!(
            upstream = %cfg.name,
            "tls.insecure_skip_verify: the upstream's certificates are NOT verified; anyone on the path can read and change this traffic"
        );
        weft_tls::client_config_unverified(&files, alpn)
    } else {
        weft_tls::client_config(&files, alpn)
    }
    .map_err(|e| format!("tls: {e}"))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(server.connect_timeout_ms)));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let builder = match &t.server_name {
        Some(n) => {
            let name = weft_tls::server_name(n).map_err(|e| format!("tls.server_name: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let conn = if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Ok(Some(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(server.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_only(h2)
            .build(conn),
    ))
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Upstream {
    pub(crate) fn new(
        cfg: UpstreamConfig,
        registry: &EndpointRegistry,
        rng: Option<Arc<dyn Random>>,
        server: &ServerConfig,
    ) -> Result<Arc<Upstream>, String> {
        let https = https_client(&cfg, server)?;
        let mut eps = Vec::new();
        for e in &cfg.endpoints {
            eps.push(registry.get(&cfg.name, &e.address, e.weight)?);
        }
        let set = EndpointSet::build(eps, cfg.balance)?;
        let hash_on = match &cfg.hash_on {
            Some(h) if matches!(cfg.balance, Balance::RingHash | Balance::Maglev) => {
                Some(HashOn::parse(h)?)
            }
            _ => None,
        };
        Ok(Arc::new(Upstream {
            name: cfg.name.clone(),
            cfg,
            hash_on,
            set: ArcSwap::from_pointee(set),
            rr: AtomicU64::new(0),
            rng: rng.unwrap_or_else(|| Arc::new(XorShift::from_time())),
            https,
            tasks: Mutex::new(Vec::new()),
        }))
    }

    pub(crate) fn add_task(&self, t: JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.set.load().endpoints.clone()
    }

    /// Starts following a discovered service (weft-coord's [`weft_coord::ServiceCache`]).
    pub(crate) fn follow_service(
        self: &Arc<Self>,
        store: Arc<dyn weft_store::Store>,
        registry: Arc<EndpointRegistry>,
    ) {
        let Some(service) = self.cfg.service.clone() else {
            return;
        };
        let opts = weft_coord::CacheOptions {
            protection_threshold: self.cfg.protection_percent as f64 / 100.0,
            ..Default::default()
        };
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let reg = weft_coord::Registry::new(store);
            loop {
                let cache = weft_coord::ServiceCache::new(&reg, &service, opts.clone()).await;
                let mut cache = match cache {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%service, "discovery failed, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let mut view = cache.view();
                loop {
                    let Some(up) = weak.upgrade() else { return };
                    up.apply_view(&view, &registry);
                    drop(up);
                    view = cache.changed().await;
                }
            }
        });
        self.add_task(task);
    }

    fn apply_view(&self, view: &weft_coord::CachedView, registry: &EndpointRegistry) {
        let mut eps = Vec::new();
        for inst in &view.instances {
            if !self.cfg.tags.iter().all(|t| inst.tags.contains(t)) {
                continue;
            }
            match registry.get(&self.name, &inst.address, inst.weight) {
                Ok(e) => {
                    e.discovered_healthy.store(
                        inst.health == weft_coord::Health::Passing,
                        Ordering::Relaxed,
                    );
                    eps.push(e)
                }
                Err(m) => {
                    tracing::warn!(upstream = %self.name, instance = %inst.id, "skipping instance: {m}")
                }
            }
        }
        match EndpointSet::build(eps, self.cfg.balance) {
            Ok(set) => {
                tracing::info!(upstream = %self.name, endpoints = set.endpoints.len(), revision = view.revision, stale = view.stale, "discovered endpoints");
                self.set.store(Arc::new(set));
            }
            Err(m) => tracing::warn!(upstream = %self.name, "cannot use discovered endpoints: {m}"),
        }
    }

    /// Starts active health checks, if configured.
    pub(crate) fn start_health_checks(self: &Arc<Self>) {
        let Some(hc) = self.cfg.health_check.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(hc.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                let eps = up.endpoints();
                let https = up.https.clone();
                drop(up);
                let checks = eps.iter().map(|e| {
                    let (hc, https) = (&hc, https.as_ref());
                    async move {
                        let ok = match https {
                            Some(c) if hc.kind == CheckKind::Http => probe_https(c, e, hc).await,
                            _ => probe(e, hc).await,
                        };
                        e.record_check(ok, hc);
                    }
                });
                futures::future::join_all(checks).await;
            }
        });
        self.add_task(task);
    }
}

/// One HTTP check of an https endpoint, through the upstream's own TLS client: 2xx or 3xx
/// within the timeout.
async fn probe_https(c: &HttpsClient, e: &Endpoint, hc: &HealthCheckConfig) -> bool {
    let uri = format!("https://{}{}", e.authority.as_str(), hc.path);
    let Ok(req) = http::Request::get(uri).body(weft_h1::body::empty()) else {
        return false;
    };
    let check = async {
        let resp = c.request(req).await.ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(hc.timeout_ms), check).await,
        Ok(Some(true))
    )
}

/// One active check of one endpoint, with weft-coord's prober (the one registrations use).
pub(crate) async fn probe(e: &Endpoint, hc: &HealthCheckConfig) -> bool {
    let timeout = Duration::from_millis(hc.timeout_ms);
    let interval = Duration::from_millis(hc.interval_ms);
    let addr = e.authority.as_str();
    let check = match hc.kind {
        CheckKind::Tcp => weft_coord::HealthCheck::Tcp {
            addr: addr.to_string(),
            interval,
            timeout,
        },
        CheckKind::Http => weft_coord::HealthCheck::Http {
            url: format!("http://{addr}{}", hc.path),
            interval,
            timeout,
        },
    };
    weft_coord::probe(&check).await
}

// Picking an endpoint: the balancers' data (`lb.rs`) applied to this upstream's state.

impl PickCtx {
    pub(crate) fn new(
        up: &Upstream,
        headers: &HeaderMap,
        path: &str,
        ip: std::net::IpAddr,
    ) -> PickCtx {
        PickCtx {
            hash: up.hash_on.as_ref().and_then(|h| h.hash(headers, path, ip)),
        }
    }
}

impl Upstream {
    /// Picks an endpoint not in `tried`, or None when nothing is usable.
    #[cfg(test)]
    pub(crate) fn pick(
        &self,
        ctx: &PickCtx,
        tried: &[usize],
    ) -> Option<(usize, Arc<Endpoint>, Arc<EndpointSet>)> {
        self.pick_at(ctx, tried, Instant::now())
    }

    /// [`Upstream::pick`] as of `now` (the caller's clock reading, reused).
    pub(crate) fn pick_at(
        &self,
        ctx: &PickCtx,
        tried: &[usize],
        now: Instant,
    ) -> Option<(usize, Arc<Endpoint>, Arc<EndpointSet>)> {
        let set = self.set.load_full();
        let n = set.endpoints.len();
        if n == 0 {
            return None;
        }
        let usable_count = set.endpoints.iter().filter(|e| e.is_usable(now)).count();
        let panic = self.cfg.outlier.panic_threshold_percent > 0
            && usable_count * 100 < n * self.cfg.outlier.panic_threshold_percent as usize;
        if panic {
            metrics::counter!("weft_gateway_panic_total", "upstream" => self.name.clone())
                .increment(1);
        }
        if usable_count == 0 && !panic {
            return None;
        }
        let ok = |i: usize| !tried.contains(&i) && (panic || set.endpoints[i].is_usable(now));
        let idx = match self.cfg.balance {
            Balance::RoundRobin => {
                let s = &set.schedule;
                let start = self.rr.fetch_add(1, Ordering::Relaxed) as usize;
                (0..s.len())
                    .map(|k| s[(start + k) % s.len()] as usize)
                    .find(|&i| ok(i))
            }
            Balance::Random => self.weighted_random(&set, &ok),
            Balance::LeastRequest => {
                let a = self.weighted_random(&set, &ok)?;
                let b = self.weighted_random(&set, &|i| ok(i) && i != a);
                match b {
                    Some(b) if set.endpoints[b].load_score() < set.endpoints[a].load_score() => {
                        Some(b)
                    }
                    _ => Some(a),
                }
            }
            Balance::RingHash | Balance::Maglev => {
                match (ctx.hash, &set.placement) {
                    (Some(h), Some(p)) => {
                        let first = p.0.locate_hash(h);
                        if ok(first) {
                            Some(first)
                        } else {
                            p.0.replicas_hash(h, n).into_iter().find(|&i| ok(i))
                        }
                    }
                    // No hash input: spread randomly.
                    _ => self.weighted_random(&set, &ok),
                }
            }
        }?;
        let e = set.endpoints[idx].clone();
        Some((idx, e, set))
    }

    fn weighted_random(&self, set: &EndpointSet, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = set
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| ok(*i))
            .map(|(_, e)| e.weight.load(Ordering::Relaxed).max(1) as u64)
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = (self.rng.next_f64() * total as f64) as u64;
        for (i, e) in set.endpoints.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let w = e.weight.load(Ordering::Relaxed).max(1) as u64;
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        (0..set.endpoints.len()).rev().find(|&i| ok(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierConfig;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_is_capped_and_decays() {
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            base_ejection_ms: 1_000,
            max_ejection_ms: 3_500,
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
        };
        let reg = EndpointRegistry::default();
        let e = reg.get("u", "127.0.0.1:1", 1).unwrap();
        let set = EndpointSet::build(vec![e.clone()], Balance::RoundRobin).unwrap();
        let eject = |e: &Endpoint| {
            let now = Instant::now();
            assert!(!e.record(true, &cfg, &set.endpoints, now));
            assert!(e.record(true, &cfg, &set.endpoints, now));
        };
        let ejected_ms = |e: &Endpoint| {
            e.to_json(Instant::now())["ejected_for_ms"]
                .as_u64()
                .unwrap()
        };
        eject(&e);
        assert_eq!(ejected_ms(&e), 1_000);
        // While ejected, more failures do not extend it.
        assert!(!e.record(true, &cfg, &set.endpoints, Instant::now()));
        assert!(!e.record(true, &cfg, &set.endpoints, Instant::now()));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(e.is_usable(Instant::now()));
        eject(&e);
        assert_eq!(ejected_ms(&e), 2_000, "second ejection: 2 x base");
        tokio::time::advance(Duration::from_millis(2_001)).await;
        eject(&e);
        assert_eq!(ejected_ms(&e), 3_000, "third: 3 x base");
        // A success long after the ejection ended lowers the multiplier by one step.
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert!(!e.record(false, &cfg, &set.endpoints, Instant::now()));
        eject(&e);
        assert_eq!(
            ejected_ms(&e),
            3_000,
            "after one decay step: 3 x base again, not 4 x"
        );
        tokio::time::advance(Duration::from_millis(3_001)).await;
        eject(&e);
        assert_eq!(ejected_ms(&e), 3_500, "4 x base, capped at max_ejection_ms");
        // The same registry hands out the same state (reloads keep it).
        assert!(Arc::ptr_eq(&e, &reg.get("u", "127.0.0.1:1", 5).unwrap()));
        assert_eq!(e.weight.load(Ordering::Relaxed), 5);
    }
}
