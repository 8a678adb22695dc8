//! The floor under the gateway benchmark: the same hyper 1 server and hyper-util pooled client
//! with nothing in between (no routing, balancing, headers or accounting). Comparing it with
//! `weft gateway` in the same wrk run shows what weft's own request path costs.
//!
//! With `fast`, weft's own HTTP/1.1 upstream client (`weft_h1::client`) replaces hyper-util's:
//! that difference is what the gateway gained by switching.
//!
//! ```sh
//! cargo run --release -p weft-gateway --example bare_proxy -- 127.0.0.1:18090 127.0.0.1:18081 [auto] [timer] [fast]
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

// Same allocator as the weft binary, for a fair comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type FastBody = weft_gateway::proxy::Body;

fn bad_gateway() -> hyper::Response<FastBody> {
    let mut r = hyper::Response::new(
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    r
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    // Optional: "auto" (h1 + h2c detection with upgrades, as the gateway serves) and/or
    // "timer" (a header-read timeout), to measure what each costs.
    let rest: Vec<String> = args.collect();
    let auto = rest.iter().any(|a| a == "auto");
    let timer = rest.iter().any(|a| a == "timer");
    // "fast": weft's own HTTP/1 upstream client (weft_h1::client) instead of hyper-util's.
    let fast = rest.iter().any(|a| a == "fast");
    let pool = weft_h1::client::Pool::new(&upstream, 256, std::time::Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(conn);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("bare proxy on http://{listen} -> {upstream}");
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            let (client, upstream, pool) = (client.clone(), upstream.clone(), pool.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let (client, upstream, pool) = (client.clone(), upstream.clone(), pool.clone());
                    async move {
                        if fast {
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str())
                                .unwrap_or("/");
                            let r = pool
                                .send(
                                    std::time::Duration::from_secs(2),
                                    req.method(),
                                    pq,
                                    req.headers(),
                                    Bytes::new(),
                                )
                                .await;
                            let resp = match r {
                                Ok(r) => r.map(|b| {
                                    b.map_err(|e| -> weft_gateway::proxy::BoxError { e })
                                        .boxed_unsync()
                                }),
                                Err(_) => bad_gateway(),
                            };
                            return Ok::<hyper::Response<FastBody>, Infallible>(resp);
                        }
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                        let resp = match client.request(req).await {
                            Ok(r) => r.map(|b| {
                                b.map_err(|e| -> weft_gateway::proxy::BoxError { Box::new(e) })
                                    .boxed_unsync()
                            }),
                            Err(_) => bad_gateway(),
                        };
                        Ok::<hyper::Response<FastBody>, Infallible>(resp)
                    }
                });
                if auto {
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if timer {
                        b.http1()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(10));
                    }
                    let _ = b.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
                } else {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    if timer {
                        b.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(10));
                    }
                    let _ = b.serve_connection(TokioIo::new(s), svc).await;
                }
            });
        }
    })
}
