//! The saga suite on a real etcd (Debian's etcd, started on a free loopback port).

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

weft_saga::saga_tests!(fresh());
