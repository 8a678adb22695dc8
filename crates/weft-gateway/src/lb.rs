//! Load balancing over an upstream's usable endpoints.
//!
//! Every algorithm skips endpoints that are unhealthy (active checks, discovery) or ejected
//! (outlier detection) and endpoints already tried by this request. When fewer than the
//! upstream's `panic_threshold_percent` of endpoints are usable, health is ignored and all
//! endpoints are used (Envoy's panic mode: spreading load over a partly broken set beats
//! overloading the few survivors or refusing everything).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::HeaderMap;
use weft_shard::{Maglev, Node, Placement, Ring};

use crate::config::Balance;
use crate::endpoint::Endpoint;

pub use crate::config::HashOn;

impl HashOn {
    /// The hash of a request, if it carries the value.
    pub fn hash(&self, headers: &HeaderMap, path: &str, ip: std::net::IpAddr) -> Option<u64> {
        match self {
            HashOn::Header(h) => headers.get(h).map(|v| weft_shard::hash(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| weft_shard::hash(v.as_bytes())),
            HashOn::Path => Some(weft_shard::hash(path.as_bytes())),
            HashOn::Ip => Some(weft_shard::hash(ip.to_string().as_bytes())),
        }
    }
}

/// An upstream's endpoints and the lookup structure of its algorithm.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Weighted round-robin schedule (indices, interleaved).
    pub(crate) schedule: Vec<u32>,
    pub(crate) placement: Option<PlacementBox>,
}

pub(crate) struct PlacementBox(pub(crate) Box<dyn Placement>);

impl std::fmt::Debug for PlacementBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl EndpointSet {
    pub(crate) fn build(
        endpoints: Vec<Arc<Endpoint>>,
        balance: Balance,
    ) -> Result<EndpointSet, String> {
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| e.weight.load(Ordering::Relaxed).max(1))
            .collect();
        let schedule = if balance == Balance::RoundRobin {
            interleave(&weights)
        } else {
            Vec::new()
        };
        let placement = if endpoints.is_empty() {
            None
        } else {
            let nodes: Vec<Node> = endpoints
                .iter()
                .zip(&weights)
                .map(|(e, &w)| Node::weighted(e.address.clone(), w))
                .collect();
            match balance {
                Balance::RingHash => Some(PlacementBox(Box::new(
                    Ring::new(&nodes, 160).map_err(|e| e.to_string())?,
                ))),
                Balance::Maglev => Some(PlacementBox(Box::new(
                    Maglev::new(&nodes, None).map_err(|e| e.to_string())?,
                ))),
                _ => None,
            }
        };
        Ok(EndpointSet {
            endpoints,
            schedule,
            placement,
        })
    }
}

/// Smooth weighted round robin (nginx's), unrolled into a schedule of `sum(weights)` slots
/// (capped at 4096 by scaling the weights down).
fn interleave(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let scale = (total as f64 / 4096.0).max(1.0);
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| ((x as f64 / scale).round() as i64).max(1))
        .collect();
    let sum: i64 = w.iter().sum();
    let mut cur = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for i in 0..w.len() {
            cur[i] += w[i];
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= sum;
        out.push(best as u32);
    }
    out
}

/// Request facts a balancer may use.
pub(crate) struct PickCtx {
    /// Hash of the request's `hash_on` value, when the upstream hashes and it is present.
    pub hash: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, UpstreamConfig};
    use crate::upstream::EndpointRegistry;
    use crate::upstream::Upstream;

    fn upstream(balance: Balance, weights: &[u32], hash_on: Option<&str>) -> Arc<Upstream> {
        let cfg = UpstreamConfig {
            name: "u".into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| EndpointConfig {
                    address: format!("127.0.0.1:{}", 1000 + i),
                    weight: w,
                })
                .collect(),
            balance,
            hash_on: hash_on.map(str::to_string),
            ..Default::default()
        };
        Upstream::new(
            cfg,
            &EndpointRegistry::default(),
            Some(Arc::new(weft_resilience::rng::XorShift::seeded(7))),
            &Default::default(),
        )
        .unwrap()
    }

    fn counts(u: &Upstream, n: usize, headers: impl Fn(usize) -> HeaderMap) -> Vec<usize> {
        let mut c = vec![0; u.endpoints().len()];
        for k in 0..n {
            let h = headers(k);
            let ctx = PickCtx::new(u, &h, "/", [127, 0, 0, 1].into());
            c[u.pick(&ctx, &[]).unwrap().0] += 1;
        }
        c
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_interleaved() {
        assert_eq!(interleave(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let u = upstream(Balance::RoundRobin, &[3, 1], None);
        assert_eq!(counts(&u, 400, |_| HeaderMap::new()), vec![300, 100]);
    }

    #[test]
    fn random_follows_weights_and_least_request_divides_by_weight() {
        let u = upstream(Balance::Random, &[1, 3], None);
        let c = counts(&u, 8000, |_| HeaderMap::new());
        let share = c[1] as f64 / 8000.0;
        assert!((0.72..0.78).contains(&share), "{c:?}");
        // Idle and equally fast: the heavier endpoint has the lower score and always wins the
        // pair; once it is loaded 3x more, the other one wins.
        let u = upstream(Balance::LeastRequest, &[1, 3], None);
        assert_eq!(counts(&u, 100, |_| HeaderMap::new()), vec![0, 100]);
        u.endpoints()[1].in_flight.store(3, Ordering::Relaxed);
        assert_eq!(counts(&u, 100, |_| HeaderMap::new()), vec![100, 0]);
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let u = upstream(Balance::LeastRequest, &[1, 1], None);
        u.endpoints()[0].in_flight.store(50, Ordering::Relaxed);
        let c = counts(&u, 1000, |_| HeaderMap::new());
        // Endpoint 0 is only chosen when both draws hit it: never with two distinct draws.
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn hashing_is_sticky_and_skips_tried() {
        for b in [Balance::RingHash, Balance::Maglev] {
            let u = upstream(b, &[1, 1, 1, 1], Some("header:x-user"));
            let mut h = HeaderMap::new();
            h.insert("x-user", "alice".parse().unwrap());
            let ctx = PickCtx::new(&u, &h, "/", [127, 0, 0, 1].into());
            let first = u.pick(&ctx, &[]).unwrap().0;
            for _ in 0..10 {
                assert_eq!(u.pick(&ctx, &[]).unwrap().0, first);
            }
            let second = u.pick(&ctx, &[first]).unwrap().0;
            assert_ne!(second, first);
            // Spread over users.
            let c = counts(&u, 4000, |k| {
                let mut h = HeaderMap::new();
                h.insert("x-user", format!("user{k}").parse().unwrap());
                h
            });
            assert!(c.iter().all(|&x| x > 700), "{b:?}: {c:?}");
        }
    }

    #[test]
    fn hash_sources() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; sid=xyz".parse().unwrap());
        let ip = [10, 0, 0, 1].into();
        assert_eq!(
            HashOn::parse("cookie:sid").unwrap().hash(&h, "/", ip),
            Some(weft_shard::hash(b"xyz"))
        );
        assert_eq!(
            HashOn::parse("cookie:none").unwrap().hash(&h, "/", ip),
            None
        );
        assert_eq!(
            HashOn::parse("path").unwrap().hash(&h, "/p", ip),
            Some(weft_shard::hash(b"/p"))
        );
        assert!(HashOn::parse("body").is_err());
    }
}
