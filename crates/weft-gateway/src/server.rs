//! Accept loops: the proxy listener (HTTP/1.1 and h2c, upgrades, header-read timeout,
//! graceful shutdown) and the admin listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Duration;

use crate::proxy::{full, Body};
use crate::Gateway;

/// Serves the gateway on `listener` until `shutdown` completes, then stops accepting and
/// lets open exchanges finish (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let header_timeout = Duration::from_millis(gw.table.load().server.header_read_timeout_ms);
        let gw = gw.clone();
        let peer = Arc::new(crate::proxy::Remote::new(remote));
        let svc = service_fn(move |req: Request<Incoming>| {
            let (gw, peer) = (gw.clone(), peer.clone());
            // Boxed once here: the request future is a few KiB and would otherwise be copied
            // each time hyper moves it (memmove showed up in perf).
            let fut = Box::pin(gw.handle(req, peer));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("connections still open after 30 s; closing");
        }
    }
    Ok(())
}

/// Renders Prometheus metrics for the admin `/metrics` route.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn err(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        serde_json::json!({"error": code, "message": message.to_string()}),
    )
}

async fn admin(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    metrics: Option<MetricsRender>,
    token: Option<Arc<str>>,
) -> Response<Body> {
    if let Some(t) = &token {
        let ok = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| {
                use subtle::ConstantTimeEq;
                bool::from(v.as_bytes().ct_eq(t.as_bytes()))
            });
        if !ok && req.uri().path() != "/health" {
            return err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            );
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (Method::GET, "/status") => json(StatusCode::OK, gw.status()),
        (Method::GET, "/metrics") => match metrics {
            Some(m) => {
                let mut r = Response::new(full(m()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => err(
                StatusCode::NOT_FOUND,
                "not_found",
                "metrics are served by the node's /metrics",
            ),
        },
        (Method::GET, "/routes") => json(StatusCode::OK, gw.status()["routes"].clone()),
        (m, p) if p.starts_with("/routes/") => {
            let name = &p["/routes/".len()..];
            match m {
                Method::PUT => {
                    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
                        .collect()
                        .await
                    {
                        Ok(b) => b.to_bytes(),
                        Err(e) => return err(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e),
                    };
                    let route: crate::config::RouteConfig = match serde_json::from_slice(&body) {
                        Ok(r) => r,
                        Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_route", e),
                    };
                    if route.name != name {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_route",
                            format!(
                                "the path names route {name:?} but the body names {:?}",
                                route.name
                            ),
                        );
                    }
                    match gw.put_route(route).await {
                        Ok(()) => json(StatusCode::OK, serde_json::json!({"stored": name})),
                        Err(crate::GatewayError::Config(e)) => {
                            err(StatusCode::BAD_REQUEST, "invalid_route", e)
                        }
                        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, "store", e),
                    }
                }
                Method::DELETE => match gw.delete_route(name).await {
                    Ok(true) => json(StatusCode::OK, serde_json::json!({"deleted": name})),
                    Ok(false) => err(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no stored route {name:?}"),
                    ),
                    Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, "store", e),
                },
                _ => err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use PUT or DELETE",
                ),
            }
        }
        (_, p) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {p}"),
        ),
    }
}

/// Serves the admin API: `GET /health`, `GET /status` (routes, endpoints, health, breakers),
/// `GET /routes`, `PUT|DELETE /routes/{name}` (stored routes), `GET /metrics`.
pub async fn serve_admin(
    listener: TcpListener,
    gw: Arc<Gateway>,
    metrics: Option<MetricsRender>,
    token: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let token: Option<Arc<str>> = token.map(Into::into);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut shutdown => return Ok(()),
        };
        let gw = gw.clone();
        let metrics = metrics.clone();
        let token = token.clone();
        let svc = service_fn(move |req| {
            let (gw, metrics, token) = (gw.clone(), metrics.clone(), token.clone());
            async move { Ok::<_, Infallible>(admin(gw, req, metrics, token).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
