//! Per-client connection limits: how many connections one client address may hold open on a
//! listener. A connection over the limit is closed at accept and counted in
//! `weft_connections_refused_total{listener, reason="per_client_limit"}`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
