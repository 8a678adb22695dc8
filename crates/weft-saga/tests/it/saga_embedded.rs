//! The saga suite on the embedded store.

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

weft_saga::saga_tests!(fresh());
