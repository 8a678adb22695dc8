//! Experiment: Put served on h2 with the calls polled inside the connection's task.
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, BytesMut};
use etcd_client::proto::{PbPutRequest, PbPutResponse, PbResponseHeader};
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use weft_store::embedded::{Embedded, Options};
use weft_store::{PutRequest, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/tmp/h2put".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:23792".into());
    let store = Arc::new(Embedded::open(&dir, Options::default()).await?);
    let l = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    loop {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        let store = store.clone();
        tokio::spawn(async move {
            let mut conn = match h2::server::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 20)
                .handshake::<_, bytes::Bytes>(s)
                .await
            {
                Ok(c) => c,
                Err(e) => return eprintln!("handshake: {e}"),
            };
            let mut calls = FuturesUnordered::new();
            let mut open = true;
            futures::future::poll_fn(|cx| {
                loop {
                    while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
                    let mut more = false;
                    while open {
                        match conn.poll_accept(cx) {
                            Poll::Ready(Some(Ok((req, respond)))) => {
                                let store = store.clone();
                                calls.push(Box::pin(async move {
                                    if let Err(e) = unary(store, req, respond).await {
                                        eprintln!("stream: {e}");
                                    }
                                }));
                                more = true;
                            }
                            Poll::Ready(_) => open = false,
                            Poll::Pending => break,
                        }
                    }
                    if !more {
                        break;
                    }
                }
                if !open && calls.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        });
    }
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
    anyhow::ensure!(buf.len() >= 5, "short gRPC frame");
    let p = PbPutRequest::decode(&buf[5..])?;
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
    let len = resp.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    resp.encode(&mut out)?;
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
