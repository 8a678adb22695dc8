//! A weft etcd API on an embedded store in a temp dir, on a free loopback port.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use weft_store::embedded::Embedded;

/// A running server; dropping `stop` (or sending on it) shuts it down.
pub struct Server {
    pub url: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub store: Arc<Embedded>,
    _dir: tempfile::TempDir,
}

/// A server whose connections run on two dedicated threads (as `weft up` serves them).
pub async fn start() -> Server {
    start_with(2).await
}

/// A server with `threads` connection threads (0: connections are tasks on the test's runtime).
pub async fn start_with(threads: usize) -> Server {
    start_limited(threads, 0).await
}

/// A server with `threads` connection threads and at most `per_client` connections per
/// client address (0: no limit).
pub async fn start_limited(threads: usize, per_client: usize) -> Server {
    start_cfg(threads, per_client, Default::default()).await
}

/// A server with `threads` connection threads, a per-client connection limit and HTTP/2
/// `limits`.
pub async fn start_cfg(threads: usize, per_client: usize, limits: weft_etcd_api::Limits) -> Server {
    start_rate(threads, per_client, limits, 0.0).await
}

/// [`start_cfg`] with a per-client request rate.
pub async fn start_rate(
    threads: usize,
    per_client: usize,
    limits: weft_etcd_api::Limits,
    rate: f64,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Embedded::open(dir.path(), Default::default())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = weft_etcd_api::Config {
        client_url: url.clone(),
        member_id: 1,
        threads,
        // Every write made inline by a connection thread, the path `weft up` takes for
        // groups of 8 or more.
        inline_batch: 1,
        tls: None,
        max_conns_per_client: per_client,
        limits,
        auth: None,
        max_requests_per_client: rate,
    };
    let task = tokio::spawn(weft_etcd_api::serve(listener, store.clone(), cfg, async {
        let _ = rx.await;
    }));
    Server {
        url,
        stop,
        task,
        store,
        _dir: dir,
    }
}

/// An etcd-client connected to `s`.
pub async fn client(s: &Server) -> etcd_client::Client {
    etcd_client::Client::connect([s.url.clone()], None)
        .await
        .unwrap()
}

/// An HTTP/2 frame: 9-byte head and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend(name.as_bytes());
    if value.len() < 127 {
        out.push(value.len() as u8);
    } else {
        // 7-bit prefix integer (RFC 7541 5.1).
        out.push(127);
        let mut v = value.len() - 127;
        while v >= 128 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out.extend(value.as_bytes());
}
