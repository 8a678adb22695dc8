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

pub async fn start() -> Server {
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
