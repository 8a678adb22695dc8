//! The recipe suite on a real etcd, plus the cache's behaviour when etcd dies.

use std::sync::Arc;
use std::time::Duration;

use weft_coord::{CacheOptions, Instance, Registry, ServiceCache, Session, SessionOptions};
use weft_store::Store;
use weft_store_etcd::{testing::EtcdServer, EtcdStore};

async fn fresh() -> Option<(Arc<dyn Store>, EtcdServer)> {
    let server = EtcdServer::start_or_skip().await?;
    let store = EtcdStore::connect(&[&server.endpoint])
        .await
        .expect("connect");
    Some((Arc::new(store), server))
}

weft_coord::recipe_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_serves_its_last_view_as_stale_when_etcd_dies() {
    let Some((store, server)) = fresh().await else {
        return;
    };
    let s = Session::new(
        store.clone(),
        SessionOptions {
            ttl: 30,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let reg = Registry::new(store.clone());
    let _r = reg
        .register(&s, "svc", Instance::new("i1", "h:1"), None)
        .await
        .unwrap();
    let mut cache = ServiceCache::new(&reg, "svc", CacheOptions::default())
        .await
        .unwrap();
    drop(server);
    let v = tokio::time::timeout(Duration::from_secs(30), cache.changed())
        .await
        .unwrap();
    assert!(v.stale);
    assert_eq!(v.instances.len(), 1, "keeps serving the last snapshot");
}
