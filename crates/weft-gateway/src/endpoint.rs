//! One endpoint of an upstream: its address, its pool of idle HTTP/1.1 connections, and its
//! state (requests in flight, EWMA latency, active health, outlier ejection). The balancers
//! (`lb.rs`) pick among endpoints; upstreams (`upstream.rs`) own them.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use crate::config::{parse_authority, HealthCheckConfig, OutlierConfig};

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
    pub(crate) discovered_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Nanoseconds after [`epoch`] until which the endpoint is ejected (0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Idle HTTP/1.1 connections to it (weft's own upstream client, [`weft_h1::client`]).
    pub(crate) pool: Arc<weft_h1::client::Pool>,
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
            pool: weft_h1::client::Pool::new(
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
    /// `peers`: the endpoints of its set (for the share that may be ejected at once). Returns
    /// true if this ejected the endpoint.
    pub(crate) fn record(
        &self,
        failure: bool,
        cfg: &OutlierConfig,
        peers: &[Arc<Endpoint>],
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
        let total = peers.len().max(1);
        let ejected = peers.iter().filter(|e| e.is_ejected(now)).count();
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

    pub(crate) fn record_check(&self, ok: bool, cfg: &HealthCheckConfig) {
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
