//! Per-client limits on a listener:
//!
//! - [`PerClient`]: how many connections one client address may hold open. A connection over
//!   the limit is closed at accept and counted in
//!   `weft_connections_refused_total{listener, reason="per_client_limit"}`.
//! - [`Rate`]: how many requests a second one client address may send (a token bucket per
//!   address). A request over it is refused (HTTP 429, gRPC `RESOURCE_EXHAUSTED`) and counted
//!   in `weft_requests_limited_total{listener}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per client IP on one listener, with a cap.
#[derive(Debug)]
pub struct PerClient {
    listener: &'static str,
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its count goes back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    /// None under no limit: nothing to give back.
    owner: Option<Arc<PerClient>>,
    ip: IpAddr,
}

impl PerClient {
    /// At most `max` connections per client address on `listener` (its name in metrics);
    /// 0: no limit (every connection is admitted, nothing is counted).
    pub fn new(listener: &'static str, max: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            listener,
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for a new connection from `ip`, or `None` when `ip` already holds `max`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.max == 0 {
            return Some(Slot { owner: None, ip });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            drop(open);
            metrics::counter!(
                "weft_connections_refused_total",
                "listener" => self.listener,
                "reason" => "per_client_limit"
            )
            .increment(1);
            tracing::debug!(%ip, listener = self.listener, max = self.max, "connection refused: per-client limit");
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: Some(self.clone()),
            ip,
        })
    }

    /// Connections `ip` holds open.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// A connection that holds its client's [`Slot`] until it is dropped (for servers, such as
/// axum's, that take a stream and nothing else).
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    _slot: Slot,
}

impl<IO> Limited<IO> {
    /// `io`, holding `slot`.
    pub fn new(io: IO, slot: Slot) -> Limited<IO> {
        Limited { io, _slot: slot }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(owner) = &self.owner else { return };
        let mut open = owner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Requests a second per client address on one listener: a token bucket per address,
/// `per_second` refilled, `burst` deep.
#[derive(Debug)]
pub struct Rate {
    listener: &'static str,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

/// Buckets kept before full ones (clients quiet long enough to be back at `burst`) are
/// dropped; a full bucket and a missing one mean the same.
const RATE_BUCKETS: usize = 4096;

impl Rate {
    /// At most `per_second` requests a second from one address on `listener` (its name in
    /// metrics), after a burst of `burst`; `per_second` 0: no limit.
    pub fn new(listener: &'static str, per_second: f64, burst: f64) -> Arc<Rate> {
        Arc::new(Rate {
            listener,
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether there is a limit.
    pub fn limited(&self) -> bool {
        self.per_second > 0.0
    }

    /// Takes a token for a request from `ip`: `true` if it may go on, `false` (counted) if
    /// `ip` is over its rate.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if !self.limited() {
            return true;
        }
        let now = tokio::time::Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if b.len() >= RATE_BUCKETS && !b.contains_key(&ip) {
            let (rate, burst) = (self.per_second, self.burst);
            b.retain(|_, k| k.tokens + now.duration_since(k.at).as_secs_f64() * rate < burst);
        }
        let k = b.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(k.at).as_secs_f64() * self.per_second;
        k.tokens = (k.tokens + refill).min(self.burst);
        k.at = now;
        if k.tokens >= 1.0 {
            k.tokens -= 1.0;
            return true;
        }
        drop(b);
        metrics::counter!("weft_requests_limited_total", "listener" => self.listener).increment(1);
        tracing::debug!(%ip, listener = self.listener, per_second = self.per_second, "request refused: per-client rate");
        false
    }

    /// The limit, requests a second (0: none).
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_its_rate() {
        let r = Rate::new("test", 10.0, 5.0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first: usize = (0..20).filter(|_| r.admit(a)).count();
        assert_eq!(first, 5, "the burst");
        assert!(r.admit(b), "another address has its own bucket");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        let later: usize = (0..20).filter(|_| r.admit(a)).count();
        assert_eq!(later, 5, "half a second at 10/s, capped by the burst");
        let free = Rate::new("test", 0.0, 0.0);
        assert!((0..1000).all(|_| free.admit(a)), "0: no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_clients_are_forgotten_when_the_table_is_full() {
        let r = Rate::new("test", 100.0, 2.0);
        for i in 0..RATE_BUCKETS as u32 {
            assert!(r.admit(IpAddr::from(i.to_be_bytes())));
        }
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(r.admit("192.168.0.1".parse().unwrap()));
        let n = r.buckets.lock().unwrap().len();
        assert!(n < 10, "{n} buckets kept");
    }

    #[test]
    fn a_client_holds_at_most_max_and_gets_slots_back() {
        let pc = PerClient::new("test", 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = pc.admit(a).unwrap();
        let _s2 = pc.admit(a).unwrap();
        assert!(pc.admit(a).is_none(), "a third from the same address");
        let _other = pc.admit(b).expect("another address has its own count");
        drop(s1);
        assert_eq!(pc.open(a), 1);
        let _s3 = pc.admit(a).expect("a slot came back");
        assert!(pc.admit(a).is_none());
        let free = PerClient::new("test", 0);
        let slots: Vec<Slot> = (0..100).map(|_| free.admit(a).unwrap()).collect();
        assert_eq!(
            (slots.len(), free.open(a)),
            (100, 0),
            "0: no limit, nothing counted"
        );
    }
}
