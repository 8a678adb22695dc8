//! The recipe suite on the embedded store, plus the cache's behaviour when the store goes away.

use std::sync::Arc;
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
    weft_coord::suite::cache_goes_stale(store, move || emb.close()).await;
}
