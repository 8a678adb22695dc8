//! Experiment: the etcd KV Put RPC served straight on the `h2` crate (no hyper, tonic, tower),
//! to measure what the gRPC stack costs per request. Not part of weft.
//!
//! cargo run --release -p weft-etcd-api --example h2_put -- DATA_DIR 127.0.0.1:23792

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use weft_store::embedded::Embedded;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::serve("/tmp/h2put", |s, store| async move {
        let mut conn = match h2::server::handshake(s).await {
            Ok(c) => c,
            Err(e) => return eprintln!("handshake: {e}"),
        };
        while let Some(r) = conn.accept().await {
            let Ok((req, respond)) = r else { return };
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(e) = unary(store, req, respond).await {
                    eprintln!("stream: {e}");
                }
            });
        }
    })
    .await
}

async fn unary(
    store: Arc<Embedded>,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
) -> anyhow::Result<()> {
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let c = chunk?;
        let _ = body.flow_control().release_capacity(c.len());
        buf.extend_from_slice(&c);
    }
    let msg = common::put(&store, &buf).await?;
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    out.put_u32(msg.len() as u32);
    out.put_slice(&msg);
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())?;
    let mut send = respond.send_response(head, false)?;
    send.send_data(out.freeze(), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}
