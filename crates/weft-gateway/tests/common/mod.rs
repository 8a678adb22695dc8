//! Test upstreams and a client.
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Duration;
use weft_gateway::{Config, Gateway};

/// A test upstream. Paths:
/// - `/status/N` answers N; `/slow/MS` waits MS ms; `/echo` streams the body back;
/// - `/health` answers `health` (settable); `/ws` accepts a WebSocket-style upgrade and echoes;
/// - anything else answers 200 with a JSON of what it saw.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    pub health: Arc<AtomicU32>,
    pub fail: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_with(name, false).await
    }

    pub async fn start_h2(name: &str) -> TestUpstream {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &str, h2: bool) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let health = Arc::new(AtomicU32::new(200));
        let fail = Arc::new(AtomicU32::new(0));
        let (n, h, he, f) = (name.to_string(), hits.clone(), health.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (n, h, he, f) = (n.clone(), h.clone(), he.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h, he, f) = (n.clone(), h.clone(), he.clone(), f.clone());
                        async move { Ok::<_, Infallible>(upstream(req, &n, &h, &he, &f).await) }
                    });
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            hits,
            health,
            fail,
            task,
        }
    }
}

type Body =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

async fn upstream(
    mut req: Request<Incoming>,
    name: &str,
    hits: &AtomicU64,
    health: &AtomicU32,
    fail: &AtomicU32,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let mut r = Response::new(full("health"));
        *r.status_mut() = StatusCode::from_u16(health.load(Ordering::SeqCst) as u16).unwrap();
        return r;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let f = fail.load(Ordering::SeqCst);
    if f != 0 {
        let mut r = Response::new(full(name.to_string()));
        *r.status_mut() = StatusCode::from_u16(f as u16).unwrap();
        return r;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(name.to_string()));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return r;
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/echo" {
        let body = req
            .into_body()
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) });
        return Response::new(body.boxed_unsync());
    }
    if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if io.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return r;
    }
    // Repeated headers are joined with ", " (so tests see every value).
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .keys()
        .map(|k| {
            let all: Vec<&str> = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            (k.to_string(), serde_json::Value::String(all.join(", ")))
        })
        .collect();
    let v = serde_json::json!({
        "server": name,
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::new(full(v.to_string()))
}

/// A running gateway on a free port.
/// A config with one route `r` (plus `route_extra` lines) to one upstream `u` at `upstream`.
pub fn single_route(upstream: SocketAddr, route_extra: &str) -> String {
    format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\n{route_extra}\n[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"{upstream}\" }}]\n"
    )
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gw: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start(toml: &str, store: Option<Arc<dyn weft_store::Store>>) -> TestGateway {
        let cfg = Config::from_toml(toml, "test.toml").unwrap();
        let gw = Gateway::new(cfg, store).unwrap();
        gw.watch_store_routes().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(weft_gateway::serve(listener, gw.clone(), async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            gw,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
    pub fn reason(&self) -> &str {
        self.headers
            .get("x-weft-reason")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap().to_string()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get_h(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, b"").await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], b"").await
}
