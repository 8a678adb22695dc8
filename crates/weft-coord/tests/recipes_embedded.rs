//! The recipe suite on the embedded store, plus the cache's behaviour when the store goes away.

use std::sync::Arc;
use std::time::Duration;

use weft_coord::{CacheOptions, Instance, Registry, ServiceCache, Session, SessionOptions};
use weft_store::embedded::Embedded;
use weft_store::Store;

async fn fresh() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path(), Default::default())
        .await
        .unwrap();
    Some((Arc::new(store), dir))
}

weft_coord::recipe_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_serves_its_last_view_as_stale_when_the_store_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let emb = Arc::new(
        Embedded::open(dir.path(), Default::default())
            .await
            .unwrap(),
    );
    let store: Arc<dyn Store> = emb.clone();
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
    emb.close();
    let v = tokio::time::timeout(Duration::from_secs(10), cache.changed())
        .await
        .unwrap();
    assert!(v.stale);
    assert_eq!(v.instances.len(), 1, "keeps serving the last snapshot");
}
