//! The store conformance suite, run through etcd's own client (etcd-client → gRPC) against
//! weft's etcd API over the embedded store: every case that passes on a real etcd must pass here.

use std::sync::Arc;

use weft_store::embedded::Embedded;
use weft_store_etcd::EtcdStore;

struct Guard {
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn fresh() -> Option<(EtcdStore, Guard)> {
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
    tokio::spawn(weft_etcd_api::serve(listener, store, cfg, async {
        let _ = rx.await;
    }));
    let client = EtcdStore::connect(&[url])
        .await
        .expect("connect to weft's etcd API");
    Some((
        client,
        Guard {
            _dir: dir,
            _stop: stop,
        },
    ))
}

weft_store::conformance_tests!(fresh());
