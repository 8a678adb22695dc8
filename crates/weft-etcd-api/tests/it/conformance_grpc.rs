//! The store conformance suite, run through etcd's own client (etcd-client → gRPC) against
//! weft's etcd API over the embedded store: every case that passes on a real etcd must pass here.

use crate::common;

use weft_store_etcd::EtcdStore;

async fn fresh() -> Option<(EtcdStore, common::Server)> {
    let server = common::start().await;
    let client = EtcdStore::connect(std::slice::from_ref(&server.url))
        .await
        .expect("connect to weft's etcd API");
    Some((client, server))
}

weft_store::conformance_tests!(fresh());
