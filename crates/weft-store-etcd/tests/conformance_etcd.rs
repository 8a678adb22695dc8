//! The conformance suite against a real etcd (the Debian `etcd` binary, started per case).

use weft_store_etcd::{testing::EtcdServer, EtcdStore};

async fn fresh() -> Option<(EtcdStore, EtcdServer)> {
    let server = EtcdServer::start_or_skip().await?;
    let store = EtcdStore::connect(&[&server.endpoint])
        .await
        .expect("connect to etcd");
    Some((store, server))
}

weft_store::conformance_tests!(fresh());
