//! `/v1/gateways` and `/v1/gateway/status`: the gateways registered on this store (each one an
//! instance of the discovery service [`GATEWAY_SERVICE`], whose address is its admin API) and
//! one gateway's status read through its admin API, so the dashboard needs neither the
//! gateways' addresses nor cross-origin calls.
//!
//! The node forwards the caller's `Authorization` header to the gateway's admin API: a gateway
//! started with the same token answers; one with another token answers 401, shown as is.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::Json;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use weft_coord::{Instance, Registry};

use crate::{ApiError, AppState};

/// The discovery service every gateway registers under (`weft_gateway::registry::SERVICE`).
pub const GATEWAY_SERVICE: &str = "weft-gateway";

/// How long the node waits for a gateway's admin API.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest status document read from a gateway.
const MAX_STATUS_BYTES: usize = 8 << 20;

/// A gateway inside this node, whose status the node reads directly.
#[derive(Clone)]
pub struct LocalGateway {
    /// Its registered id.
    pub id: String,
    /// Its status document (what its admin API's `GET /status` answers).
    pub status: Arc<dyn Fn() -> Value + Send + Sync>,
}

impl std::fmt::Debug for LocalGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGateway")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn info(i: &Instance) -> Value {
    let meta = |k: &str| i.metadata.get(k).cloned().unwrap_or_default();
    json!({
        "id": i.id,
        "admin": (!i.address.is_empty()).then(|| i.address.clone()),
        "listen": meta("listen"),
        "embedded": meta("embedded") == "true",
        "pid": meta("pid").parse::<u32>().ok(),
        "started_ms": meta("started_ms").parse::<u64>().ok(),
        "version": i.version,
        "health": i.health,
    })
}

/// `GET /v1/gateways`: every registered gateway.
pub(crate) async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snap = Registry::new(st.store.clone())
        .discover(GATEWAY_SERVICE)
        .await?;
    let gateways: Vec<Value> = snap.instances.iter().map(info).collect();
    Ok(Json(
        json!({"revision": snap.revision, "gateways": gateways}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdQuery {
    id: String,
}

/// `GET /v1/gateway/status?id=ID`: one gateway's routes, upstream endpoints and breakers.
pub(crate) async fn status(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    if let Some(l) = st.local_gateway.as_ref().filter(|l| l.id == q.id) {
        return Ok(Json((l.status)()));
    }
    let snap = Registry::new(st.store.clone())
        .discover(GATEWAY_SERVICE)
        .await?;
    let Some(gw) = snap.instances.iter().find(|i| i.id == q.id) else {
        return Err(ApiError::NotFound(format!(
            "no gateway {:?} is registered on this store; GET /v1/gateways lists them",
            q.id
        )));
    };
    if gw.address.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "gateway {:?} serves no admin API (start it with --admin-listen)",
            q.id
        )));
    }
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let tls = st.gateway_tls.clone();
    let v = tokio::time::timeout(ADMIN_TIMEOUT, fetch_status(&gw.address, auth, tls))
        .await
        .map_err(|_| {
            ApiError::BadGateway(format!(
                "gateway {:?}'s admin API at {} did not answer within {ADMIN_TIMEOUT:?}",
                q.id, gw.address
            ))
        })?
        .map_err(|e| {
            ApiError::BadGateway(format!(
                "gateway {:?}'s admin API at {}: {e}",
                q.id, gw.address
            ))
        })?;
    Ok(Json(v))
}

/// `GET {admin}/status` over one HTTP/1.1 connection (TLS for an `https://` address, with
/// `tls` or the system's roots).
async fn fetch_status(
    admin: &str,
    auth: Option<HeaderValue>,
    tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
) -> Result<Value, String> {
    let (https, rest) = match (
        admin.strip_prefix("https://"),
        admin.strip_prefix("http://"),
    ) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(format!("{admin:?} is not an http:// or https:// address")),
    };
    let authority = rest.trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut send = if https {
        let cfg = match tls {
            Some(c) => c,
            None => system_roots()?,
        };
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let name = weft_tls::server_name(host).map_err(|e| e.to_string())?;
        let s = weft_tls::tokio_rustls::TlsConnector::from(cfg)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        handshake(s).await?
    } else {
        handshake(stream).await?
    };
    let mut req = hyper::Request::get("/status")
        .header(header::HOST, authority)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    if let Some(a) = auth {
        req.headers_mut().insert(header::AUTHORIZATION, a);
    }
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status();
    let body = Limited::new(resp.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !code.is_success() {
        return Err(format!(
            "answered {code}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("answered something that is not JSON: {e}"))
}

/// A TLS client configuration trusting the system's roots, read once.
fn system_roots() -> Result<Arc<weft_tls::rustls::ClientConfig>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<weft_tls::rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            weft_tls::client_config(&Default::default(), &[b"http/1.1"])
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// An HTTP/1.1 client connection over `io`, driven by its own task.
async fn handshake<IO>(
    io: IO,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}
