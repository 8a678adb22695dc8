//! Saga routes: submit, get (record, definition, input, timeline), list by state, operator
//! actions (resume, skip, abort), and a server-sent event stream of a saga's changes.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

use weft_saga::{Lazy, Orchestrator, Reader, SagaDef, Status};
use weft_store::{KeyRange, WatchRequest};

use crate::coord::{sse, sse_error};
use crate::{ApiError, AppState, Body};

fn lazy(st: &AppState) -> Result<&Arc<Lazy>, ApiError> {
    st.saga.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this node runs no saga orchestrator (see weft up --help)".into())
    })
}

/// The orchestrator, started if it was not (routes that write).
async fn orch(st: &AppState) -> Result<&Orchestrator, ApiError> {
    Ok(lazy(st)?.get().await?)
}

/// Reads only (routes that read start nothing).
fn reader(st: &AppState) -> Result<Reader, ApiError> {
    Ok(lazy(st)?.reader().clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBody {
    definition: Value,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    id: Option<String>,
}

pub(crate) async fn submit(
    State(st): State<AppState>,
    Body(b): Body<SubmitBody>,
) -> Result<Json<Value>, ApiError> {
    let o = orch(&st).await?;
    let def: SagaDef = serde_json::from_value(b.definition)
        .map_err(|e| ApiError::BadRequest(format!("definition: {e}")))?;
    let id = o.submit(def, b.input, b.id).await?;
    Ok(Json(json!({ "id": id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdQuery {
    id: String,
}

pub(crate) async fn get(
    State(st): State<AppState>,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let view = reader(&st)?.get(&q.id).await?;
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let status = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("state {s:?} is not one of {}", all.join(", ")))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(0..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} must be within 0..=10000 (0: all)"
        )));
    }
    let sagas = reader(&st)?.list(status, limit).await?;
    let summaries: Vec<Value> = sagas
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "name": r.name, "status": r.status, "created_ms": r.created_ms,
                "updated_ms": r.updated_ms, "reason": r.reason, "parked": r.parked,
            })
        })
        .collect();
    Ok(Json(json!({ "sagas": summaries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    id: String,
    #[serde(default)]
    step: Option<String>,
}

pub(crate) async fn resume(
    State(st): State<AppState>,
    Body(b): Body<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    orch(&st).await?.resume(&b.id).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn skip(
    State(st): State<AppState>,
    Body(b): Body<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    let step = b
        .step
        .ok_or_else(|| ApiError::BadRequest("skip needs the step to mark done".into()))?;
    orch(&st).await?.skip(&b.id, &step).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn abort(
    State(st): State<AppState>,
    Body(b): Body<ActionBody>,
) -> Result<Json<Value>, ApiError> {
    orch(&st).await?.abort(&b.id).await?;
    Ok(Json(json!({})))
}

/// `saga` events: the record (status, steps, parked) now and after every change; the stream
/// ends once the saga is at rest (committed, compensated, parked or aborted).
pub(crate) async fn watch(
    State(st): State<AppState>,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let o = reader(&st)?;
    weft_saga::check_id(&q.id)?;
    // Fails with 404 now rather than inside the stream.
    o.get(&q.id).await?;
    let store = st.store.clone();
    let id = q.id.clone();
    let events = futures::stream::unfold(Some(0i64), move |from| {
        let (o, store, id) = (o.clone(), store.clone(), id.clone());
        async move {
            let from = from?;
            if from > 0 {
                let key = format!("{}s/{id}", weft_saga::PREFIX);
                let w = store
                    .watch(WatchRequest::new(KeyRange::key(key)).start_revision(from))
                    .await;
                match w {
                    Ok(mut w) => {
                        let _ = tokio::time::timeout(Duration::from_secs(60), w.message()).await;
                    }
                    Err(e) => return Some(((sse_error(&e.into()), true), None)),
                }
            }
            // The revision first: a change after it is watched, even one the read below saw.
            let rev = store.status().await.map(|s| s.header.revision).unwrap_or(0);
            let item = match o.get(&id).await {
                Ok(v) => {
                    let at_rest = v.record.status.is_at_rest();
                    let ev = SseEvent::default()
                        .event("saga")
                        .data(serde_json::to_string(&v).unwrap_or_default());
                    ((ev, at_rest), (!at_rest).then_some(rev + 1))
                }
                Err(e) => ((sse_error(&e.into()), true), None),
            };
            Some(item)
        }
    });
    Ok(sse(&st, events))
}
