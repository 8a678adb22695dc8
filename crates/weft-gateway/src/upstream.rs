//! Upstreams and their endpoints: per-endpoint state (in-flight requests, EWMA latency, active
//! health, passive outlier ejection) that survives reloads and discovery changes, the current
//! endpoint set of each upstream (static or discovered), and active health checking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};
use weft_resilience::rng::{Random, XorShift};

use crate::config::{Balance, CheckKind, HealthCheckConfig, OutlierConfig, UpstreamConfig};
use crate::lb::{EndpointSet, HashOn};

/// Parses `host:port` (an `http://` prefix and a trailing `/` are accepted).
pub fn parse_authority(addr: &str) -> Result<http::uri::Authority, String> {
    let a = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    if addr.starts_with("https://") {
        return Err(format!(
            "{addr:?}: TLS to upstreams is not supported; use host:port"
        ));
    }
    let auth: http::uri::Authority = a
        .parse()
        .map_err(|_| format!("{addr:?} is not host:port"))?;
    if auth.port_u16().is_none() {
        return Err(format!("{addr:?} needs a port (host:port)"));
    }
    Ok(auth)
}

/// State of one endpoint of one upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// host:port.
    pub address: String,
    pub(crate) authority: http::uri::Authority,
    pub(crate) weight: AtomicU32,
    pub(crate) in_flight: AtomicU32,
    ewma_us: AtomicU64,
    active_healthy: AtomicBool,
    check_streak: AtomicI32,
    discovered_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Nanoseconds after [`epoch`] until which the endpoint is ejected (0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Idle HTTP/1.1 connections to it (weft's own upstream client, [`crate::h1`]).
    pub(crate) pool: Arc<crate::h1::Pool>,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Ejection deadlines are stored as nanoseconds after this base. tokio's Instant wraps
    // std's, and a paused test clock starts at its runtime's creation, which may precede the
    // first call here: put the base well in the past (as far as the monotonic clock allows).
    Instant::from_std(*EPOCH.get_or_init(|| {
        let now = std::time::Instant::now();
        [3600, 60, 1]
            .iter()
            .find_map(|s| now.checked_sub(std::time::Duration::from_secs(*s)))
            .unwrap_or(now)
    }))
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64 + 1
}

impl Endpoint {
    pub(crate) fn new(address: &str, weight: u32, max_idle: usize) -> Result<Endpoint, String> {
        let authority = parse_authority(address)?;
        Ok(Endpoint {
            address: address.to_string(),
            weight: AtomicU32::new(weight.max(1)),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(f64::to_bits(1_000.0)),
            active_healthy: AtomicBool::new(true),
            check_streak: AtomicI32::new(0),
            discovered_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            pool: crate::h1::Pool::new(
                authority.as_str(),
                max_idle,
                std::time::Duration::from_secs(60),
            ),
            authority,
        })
    }

    /// Whether the endpoint may get traffic now (healthy, not ejected).
    pub fn is_usable(&self, now: Instant) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && self.discovered_healthy.load(Ordering::Relaxed)
            && !self.is_ejected(now)
    }

    /// Whether passive outlier detection has ejected it.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let u = self.ejected_until.load(Ordering::Relaxed);
        u != 0 && nanos_since_epoch(now) < u
    }

    /// Active health check verdict.
    pub fn is_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Latency EWMA (microseconds).
    pub fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }

    pub(crate) fn load_score(&self) -> f64 {
        let w = self.weight.load(Ordering::Relaxed).max(1) as f64;
        (self.in_flight.load(Ordering::Relaxed) as f64 + 1.0) * self.ewma_us() / w
    }

    pub(crate) fn observe_latency(&self, d: Duration) {
        let sample = d.as_secs_f64() * 1e6;
        let old = self.ewma_us();
        let new = old + 0.3 * (sample - old);
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Records the outcome of one attempt for outlier ejection. `failure`: connect error or 5xx.
    /// Returns true if this ejected the endpoint.
    pub(crate) fn record(
        &self,
        failure: bool,
        cfg: &OutlierConfig,
        set: &EndpointSet,
        now: Instant,
    ) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !failure {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            // A healthy stretch after an ejection ended lowers the next ejection's length.
            let until = self.ejected_until.load(Ordering::Relaxed);
            if until != 0
                && nanos_since_epoch(now) > until + cfg.base_ejection_ms * 1_000_000
                && self.ejections.load(Ordering::Relaxed) > 0
            {
                self.ejections.fetch_sub(1, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
            }
            return false;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        // Failures of requests that were already on their way when it was ejected do not
        // count towards the next ejection.
        if self.is_ejected(now) {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if cfg.consecutive_failures == 0 || n < cfg.consecutive_failures {
            return false;
        }
        // Cap: at most max_ejection_percent of the set ejected, but one may always be.
        let total = set.endpoints.len().max(1);
        let ejected = set.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let cap = (total * cfg.max_ejection_percent as usize / 100).max(1);
        if ejected >= cap {
            return false;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = cfg
            .base_ejection_ms
            .saturating_mul(times as u64)
            .min(cfg.max_ejection_ms);
        self.ejected_until.store(
            nanos_since_epoch(now + Duration::from_millis(ms)),
            Ordering::Relaxed,
        );
        self.consecutive_failures.store(0, Ordering::Relaxed);
        metrics::counter!("weft_gateway_ejections_total", "endpoint" => self.address.clone())
            .increment(1);
        tracing::warn!(endpoint = %self.address, ms, "endpoint ejected after {n} consecutive failures");
        true
    }

    fn record_check(&self, ok: bool, cfg: &HealthCheckConfig) {
        let streak = self.check_streak.load(Ordering::Relaxed);
        let streak = if ok {
            streak.max(0) + 1
        } else {
            streak.min(0) - 1
        };
        self.check_streak.store(streak, Ordering::Relaxed);
        let healthy = self.active_healthy.load(Ordering::Relaxed);
        if healthy && streak <= -(cfg.unhealthy_threshold as i32) {
            self.active_healthy.store(false, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.address, "endpoint unhealthy (active check)");
        } else if !healthy && streak >= cfg.healthy_threshold as i32 {
            self.active_healthy.store(true, Ordering::Relaxed);
            tracing::info!(endpoint = %self.address, "endpoint healthy again (active check)");
        }
    }

    /// JSON view for the admin API.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let until = self.ejected_until.load(Ordering::Relaxed);
        serde_json::json!({
            "address": self.address,
            "weight": self.weight.load(Ordering::Relaxed),
            "healthy": self.is_healthy(),
            "discovered_healthy": self.discovered_healthy.load(Ordering::Relaxed),
            "ejected": self.is_ejected(now),
            "ejected_for_ms": if self.is_ejected(now) { (until - nanos_since_epoch(now)) / 1_000_000 } else { 0 },
            "ejections": self.ejections.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "ewma_ms": self.ewma_us() / 1000.0,
            "requests": self.requests.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
        })
    }
}

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
    tasks: Mutex<Vec<JoinHandle<()>>>,
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
    ) -> Result<Arc<Upstream>, String> {
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
                drop(up);
                let checks = eps.iter().map(|e| {
                    let hc = &hc;
                    async move {
                        let ok = probe(e, hc).await;
                        e.record_check(ok, hc);
                    }
                });
                futures::future::join_all(checks).await;
            }
        });
        self.add_task(task);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(!e.record(true, &cfg, &set, now));
            assert!(e.record(true, &cfg, &set, now));
        };
        let ejected_ms = |e: &Endpoint| {
            e.to_json(Instant::now())["ejected_for_ms"]
                .as_u64()
                .unwrap()
        };
        eject(&e);
        assert_eq!(ejected_ms(&e), 1_000);
        // While ejected, more failures do not extend it.
        assert!(!e.record(true, &cfg, &set, Instant::now()));
        assert!(!e.record(true, &cfg, &set, Instant::now()));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(e.is_usable(Instant::now()));
        eject(&e);
        assert_eq!(ejected_ms(&e), 2_000, "second ejection: 2 x base");
        tokio::time::advance(Duration::from_millis(2_001)).await;
        eject(&e);
        assert_eq!(ejected_ms(&e), 3_000, "third: 3 x base");
        // A success long after the ejection ended lowers the multiplier by one step.
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert!(!e.record(false, &cfg, &set, Instant::now()));
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
