//! The API over TLS: a listener for `axum::serve` that accepts TCP connections, runs their
//! handshakes in tasks of their own (a slow handshake holds up no one else, and is dropped
//! after `weft_tls::HANDSHAKE_TIMEOUT`), and hands over the finished ones.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_tls::{Acceptor, ServerStream};

/// Handshakes in flight at once; past that, accepting waits.
const MAX_HANDSHAKES: usize = 1024;

/// See the module docs.
pub struct TlsListener {
    done: mpsc::Receiver<(ServerStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    /// Serves TLS with `tls` on `listener`.
    pub fn new(listener: TcpListener, tls: Arc<Acceptor>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(listener, tls, tx));
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
    tx: mpsc::Sender<(ServerStream<TcpStream>, SocketAddr)>,
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
        let _ = tcp.set_nodelay(true);
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            match tls.accept(tcp).await {
                Ok(s) => {
                    drop(slot);
                    let _ = tx.send((s, peer)).await;
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
    type Io = ServerStream<TcpStream>;
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
