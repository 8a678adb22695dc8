//! Replication routes: the stream replicas follow (an HTTP upgrade), the catch-up plan,
//! status, hash checks and promotion; and the headers that set a request's durability
//! policy and read requirements.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use weft_repl::{Policy, ReadOpts, ReplError, Replication};

use crate::{ApiError, AppState};

fn repl(st: &AppState) -> Result<Arc<Replication>, ApiError> {
    st.repl.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "this node does not run replication (its store is not the embedded one)".into(),
        )
    })
}

/// An error of replication's own operations.
fn repl_err(e: ReplError) -> Response {
    let (status, code) = match &e {
        ReplError::Store(s) => return ApiError::Store(s.clone()).into_response(),
        ReplError::NotPrimary(_) => (StatusCode::MISDIRECTED_REQUEST, "not_primary"),
        ReplError::Behind { .. } => (StatusCode::CONFLICT, "behind"),
        ReplError::Deposed { .. } => (StatusCode::CONFLICT, "deposed"),
        _ => (StatusCode::CONFLICT, "not_replica"),
    };
    let body = serde_json::json!({"error": {"code": code, "message": e.to_string(), "retryable": e.is_retryable()}});
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    name: String,
    rev: i64,
    #[serde(default)]
    epoch: u64,
}

/// `GET /v1/repl/stream?name=&rev=` with `Upgrade: weft-repl`: the replication protocol
/// (weft_repl::wire) on the upgraded connection.
pub(crate) async fn stream(
    State(st): State<AppState>,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let r = match repl(&st) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => {
            return ApiError::BadRequest(format!(
                "{e}; expected ?name=NAME&rev=REVISION[&epoch=EPOCH]"
            ))
            .into_response()
        }
    };
    let epoch = match r.accept_replica(q.epoch) {
        Ok(e) => e,
        Err(e) => return repl_err(e),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("weft-repl")) {
        return ApiError::BadRequest(
            "this route needs `Upgrade: weft-repl` (weft up --replica-of speaks it)".into(),
        )
        .into_response();
    }
    if q.name.is_empty() || q.name.len() > 128 || q.rev < 1 {
        return ApiError::BadRequest("name must be 1 to 128 bytes and rev >= 1".into())
            .into_response();
    }
    let fork = r.fork();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => {
                r.serve_replica(hyper_util::rt::TokioIo::new(up), q.name, q.rev)
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "replication upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "weft-repl")
        .header("weft-epoch", epoch.to_string())
        .header("weft-fork", fork.to_string())
        .body(axum::body::Body::empty())
        .expect("static response")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanQuery {
    rev: i64,
    #[serde(default)]
    epoch: u64,
}

/// `GET /v1/repl/plan?rev=`: how a replica at `rev` would catch up (`log` or `snapshot`).
pub(crate) async fn plan(State(st): State<AppState>, Query(q): Query<PlanQuery>) -> Response {
    let r = match repl(&st) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match r.plan(q.rev, q.epoch) {
        Ok(p) => Json(weft_repl::Plan {
            from: p,
            epoch: r.epoch(),
            fork: r.fork(),
        })
        .into_response(),
        Err(e) => repl_err(e),
    }
}

/// `GET /v1/repl/status`.
pub(crate) async fn status(State(st): State<AppState>) -> Response {
    match repl(&st) {
        Ok(r) => Json(r.status()).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckBody {
    #[serde(default)]
    revision: Option<i64>,
}

/// `POST /v1/repl/check`: compares hashes with every connected replica; `ok` is false on
/// any mismatch or error.
pub(crate) async fn check(State(st): State<AppState>, body: Option<Json<CheckBody>>) -> Response {
    let r = match repl(&st) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let rev = body.and_then(|b| b.0.revision);
    match r.check(rev).await {
        Ok(results) => {
            let ok = results.iter().all(|c| c.outcome == "match");
            Json(serde_json::json!({ "ok": ok, "results": results })).into_response()
        }
        Err(e) => repl_err(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteBody {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/repl/promote`: makes this replica the primary.
pub(crate) async fn promote(
    State(st): State<AppState>,
    body: Option<Json<PromoteBody>>,
) -> Response {
    let r = match repl(&st) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match r.promote(body.is_some_and(|b| b.0.force)) {
        Ok(p) => Json(p).into_response(),
        Err(e) => repl_err(e),
    }
}

/// Header of a request's durability policy (see [`weft_repl::POLICY_SYNTAX`]).
pub const DURABILITY: &str = "weft-durability";
/// Header: wait until this revision is visible before reading.
pub const MIN_REVISION: &str = "weft-min-revision";
/// Header: wait until this node is at most this stale before reading (e.g. `500ms`).
pub const MAX_STALENESS: &str = "weft-max-staleness";
/// Header: how long a read waits for either.
pub const READ_TIMEOUT: &str = "weft-read-timeout";

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("header {name} is not ASCII")))
        })
        .transpose()
}

fn read_opts(h: &HeaderMap) -> Result<Option<ReadOpts>, ApiError> {
    let dur = |name: &str| -> Result<Option<Duration>, ApiError> {
        header_str(h, name)?
            .map(|v| {
                weft_repl::parse_duration(v)
                    .map_err(|e| ApiError::BadRequest(format!("header {name}: {e}")))
            })
            .transpose()
    };
    let min = header_str(h, MIN_REVISION)?
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|r| *r >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "header {MIN_REVISION} must be a revision >= 0, got {v:?}"
                    ))
                })
        })
        .transpose()?;
    let (stale, timeout) = (dur(MAX_STALENESS)?, dur(READ_TIMEOUT)?);
    if min.is_none() && stale.is_none() && timeout.is_none() {
        return Ok(None);
    }
    Ok(Some(ReadOpts {
        min_revision: min.unwrap_or(0),
        max_staleness: stale,
        timeout,
    }))
}

/// Middleware: runs the request under the policy and read requirements its headers ask for.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let h = req.headers();
    let policy = match header_str(h, DURABILITY) {
        Ok(Some(v)) => match v.parse::<Policy>() {
            Ok(p) => Some(p),
            Err(e) => {
                return ApiError::BadRequest(format!("header {DURABILITY}: {e}")).into_response()
            }
        },
        Ok(None) => None,
        Err(e) => return e.into_response(),
    };
    let read = match read_opts(h) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let fut = next.run(req);
    match (policy, read) {
        (None, None) => fut.await,
        (Some(p), None) => weft_repl::with_policy(p, fut).await,
        (None, Some(r)) => weft_repl::with_read(r, fut).await,
        (Some(p), Some(r)) => weft_repl::with_policy(p, weft_repl::with_read(r, fut)).await,
    }
}
