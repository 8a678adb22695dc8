//! The recipe suite on a real etcd, plus the cache's behaviour when etcd dies.

use std::sync::Arc;
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
    weft_coord::suite::cache_goes_stale(store, move || drop(server)).await;
}
