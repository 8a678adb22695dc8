//! What the Put experiments share: the call itself, on the store.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::proto::{PbPutRequest, PbPutResponse, PbResponseHeader};
use prost::Message;
use weft_store::embedded::{Embedded, Options};
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

/// Opens the store in the first argument's directory (else `default_dir`), listens on the
/// second argument's address (else 127.0.0.1:23792), and runs `conn` for each connection.
pub async fn serve<F, Fut>(default_dir: &str, conn: F) -> anyhow::Result<()>
where
    F: Fn(tokio::net::TcpStream, Arc<Embedded>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| default_dir.into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:23792".into());
    let store = Arc::new(Embedded::open(&dir, Options::default()).await?);
    let l = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    loop {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(conn(s, store.clone()));
    }
}
