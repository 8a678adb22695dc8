//! What the Put experiments share: the call itself, on the store.

use bytes::Bytes;
use etcd_client::proto::{PbPutRequest, PbPutResponse, PbResponseHeader};
use prost::Message;
use weft_store::embedded::Embedded;
use weft_store::{PutRequest, Store};

/// Decodes a Put's gRPC message (with its 5-byte prefix), puts, and returns the encoded
/// PutResponse (without prefix).
pub async fn put(store: &Embedded, body: &[u8]) -> anyhow::Result<Bytes> {
    anyhow::ensure!(body.len() >= 5, "short gRPC frame");
    let p = PbPutRequest::decode(&body[5..])?;
    let r = store
        .put(PutRequest {
            key: p.key.into(),
            value: p.value.into(),
            lease: p.lease,
            prev_kv: p.prev_kv,
        })
        .await?;
    let resp = PbPutResponse {
        header: Some(PbResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision: r.header.revision,
            raft_term: 1,
        }),
        prev_kv: None,
    };
    Ok(Bytes::from(resp.encode_to_vec()))
}
