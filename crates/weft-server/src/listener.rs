//! The API's listeners for `axum::serve`. Both close a connection over the per-client limit
//! at accept (`weft_tls::limit::PerClient`) and set `TCP_NODELAY`.
//! - [`PlainListener`] serves TCP.
//! - [`TlsListener`] accepts TCP connections, runs their handshakes in tasks of their own (a
//!   slow handshake holds up no one else, and is dropped after `weft_tls::HANDSHAKE_TIMEOUT`),
//!   and hands over the finished ones.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_tls::limit::{Limited, PerClient};
use weft_tls::{Acceptor, ServerStream};

/// A TLS connection holding its client's slot.
type TlsConn = Limited<ServerStream<TcpStream>>;

/// TCP, with the per-client limit.
pub struct PlainListener {
    listener: TcpListener,
    per_client: Arc<PerClient>,
}

impl PlainListener {
    /// Serves `listener`, at most `per_client` connections per client address (0: no limit).
    pub fn new(listener: TcpListener, per_client: usize) -> PlainListener {
        PlainListener {
            listener,
            per_client: PerClient::new("api", per_client),
        }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Limited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.per_client.admit(peer.ip()) else {
                continue; // dropped: closed at once
            };
            // No Nagle: a small response (or a replication frame on an upgraded
            // connection) written while an earlier segment is unacknowledged otherwise waits
            // for the peer's delayed ACK, 40 ms on Linux (a 43 ms p99 of sync replication).
            let _ = tcp.set_nodelay(true);
            return (Limited::new(tcp, slot), peer);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Handshakes in flight at once; past that, accepting waits.
const MAX_HANDSHAKES: usize = 1024;

/// See the module docs.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    /// Serves TLS with `tls` on `listener`, at most `per_client` connections per client
    /// address (0: no limit).
    pub fn new(
        listener: TcpListener,
        tls: Arc<Acceptor>,
        per_client: usize,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            tls,
            PerClient::new("api", per_client),
            tx,
        ));
        Ok(TlsListener {
            done,
            local,
            accept_task,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Acceptor>,
    per_client: Arc<PerClient>,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(client) = per_client.admit(peer.ip()) else {
            continue; // dropped: closed at once
        };
        let _ = tcp.set_nodelay(true);
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            match tls.accept(tcp).await {
                Ok(s) => {
                    drop(slot);
                    let _ = tx.send((Limited::new(s, client), peer)).await;
                }
                Err(e) => {
                    metrics::counter!("weft_tls_handshake_failures_total", "listener" => "api")
                        .increment(1);
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept loop ended (it only does when dropped): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A connection's client address, and the common name of its verified client certificate
/// (with client-certificate authentication), for handlers (`ConnectInfo<Peer>`).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client certificate's CN: the user of calls without a token while auth is enabled.
    pub cert_user: Option<Arc<str>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        Peer {
            addr: *s.remote_addr(),
            cert_user: None,
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let conn = s.io().get_ref().get_ref().1;
        Peer {
            addr: *s.remote_addr(),
            cert_user: weft_tls::peer_common_name(conn).map(Arc::from),
        }
    }
}
