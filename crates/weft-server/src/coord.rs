//! Coordination routes: locks (long-poll acquire with fencing tokens), elections (observe as
//! server-sent events) and services.
//!
//! Every lock, candidacy and registration belongs to a lease that the **client** keeps alive
//! (`/v1/lease/keepalive`); the node never renews it. If the client dies, its lease expires
//! and everything it held ends within the TTL.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use weft_coord::{
    release_parts, DiscoveryEvent, Election, Instance, Leader, Leadership, LockGuard, Mutex,
    Registry, Semaphore, Session,
};

use crate::{ApiError, AppState, Body};
use axum::extract::Extension;
use weft_auth::{Identity, Need};
use weft_coord::{ELECTION_PREFIX, LOCK_PREFIX, SEMAPHORE_PREFIX, SERVICE_PREFIX};

/// Read and write.
const RW: &[Need] = &[Need::Read, Need::Write];

/// `Ok` if `who` may `needs` every key of the recipe `name`, the prefix `base` + `name/`.
fn check_recipe(
    st: &AppState,
    who: &Identity,
    base: &str,
    name: &str,
    needs: &[Need],
) -> Result<(), ApiError> {
    let range = weft_store::KeyRange::prefix(format!("{base}{name}/"));
    Ok(st.auth.check_all(who, &range, needs)?)
}

/// `Ok` if `who` may write `key` (releasing, proclaiming, resigning, deregistering).
fn check_key(st: &AppState, who: &Identity, key: &str) -> Result<(), ApiError> {
    let range = weft_store::KeyRange::key(key.to_owned());
    Ok(st.auth.check_range(who, &range, Need::Write)?)
}

/// Longest long-poll a client may ask for.
const MAX_WAIT_MS: u64 = 300_000;

fn wait(ms: Option<u64>) -> Result<Duration, ApiError> {
    let ms = ms.unwrap_or(30_000);
    if ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "timeout_ms {ms} is over the maximum {MAX_WAIT_MS}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn utf8(b: &[u8], what: &str) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| ApiError::BadRequest(format!("{what} is not UTF-8")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireBody {
    name: String,
    lease: i64,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Fail at once if held.
    #[serde(default, rename = "try")]
    try_only: bool,
    /// Semaphore permits (absent: a mutex).
    #[serde(default)]
    permits: Option<usize>,
}

pub(crate) async fn lock_acquire(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<AcquireBody>,
) -> Result<Json<Value>, ApiError> {
    let base = if b.permits.is_some() {
        SEMAPHORE_PREFIX
    } else {
        LOCK_PREFIX
    };
    check_recipe(&st, &who, base, &b.name, RW)?;
    let timeout = wait(b.timeout_ms)?;
    let session = Session::attach(st.store.clone(), b.lease).await?;
    let guard: LockGuard = match b.permits {
        None => {
            let m = Mutex::new(&session, &b.name)?;
            if b.try_only {
                m.try_lock().await?
            } else {
                m.lock_timeout(timeout).await?
            }
        }
        Some(n) => {
            let s = Semaphore::new(&session, &b.name, n)?;
            if b.try_only {
                s.try_acquire().await?
            } else {
                s.acquire_timeout(timeout).await?
            }
        }
    };
    let (key, token) = guard.detach();
    Ok(Json(
        json!({"key": utf8(&key, "key")?, "fencing_token": token}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    key: String,
    fencing_token: i64,
}

pub(crate) async fn lock_release(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<ReleaseBody>,
) -> Result<Json<Value>, ApiError> {
    check_key(&st, &who, &b.key)?;
    let released = release_parts(&*st.store, &Bytes::from(b.key), b.fencing_token).await?;
    Ok(Json(json!({"released": released})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CampaignBody {
    name: String,
    lease: i64,
    value: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

pub(crate) async fn election_campaign(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<CampaignBody>,
) -> Result<Json<Value>, ApiError> {
    check_recipe(&st, &who, ELECTION_PREFIX, &b.name, RW)?;
    let timeout = wait(b.timeout_ms)?;
    let session = Session::attach(st.store.clone(), b.lease).await?;
    let e = Election::new(st.store.clone(), &b.name)?;
    let l = match tokio::time::timeout(timeout, e.campaign(&session, b.value)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(weft_coord::CoordError::Timeout(format!("election {}", b.name)).into())
        }
    };
    let (key, term) = l.detach();
    Ok(Json(json!({"key": utf8(&key, "key")?, "term": term})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeadershipBody {
    key: String,
    term: i64,
    lease: i64,
    #[serde(default)]
    value: Option<String>,
}

pub(crate) async fn election_proclaim(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<LeadershipBody>,
) -> Result<Json<Value>, ApiError> {
    check_key(&st, &who, &b.key)?;
    let value = b
        .value
        .ok_or_else(|| ApiError::BadRequest("proclaim needs a value".into()))?;
    let session = Session::attach(st.store.clone(), b.lease).await?;
    let l = Leadership::from_parts(&session, Bytes::from(b.key), b.term);
    let r = l.proclaim(value).await;
    l.detach();
    r?;
    Ok(Json(json!({})))
}

pub(crate) async fn election_resign(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<LeadershipBody>,
) -> Result<Json<Value>, ApiError> {
    check_key(&st, &who, &b.key)?;
    let session = Session::attach(st.store.clone(), b.lease).await?;
    Leadership::from_parts(&session, Bytes::from(b.key), b.term)
        .resign()
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameQuery {
    name: String,
}

fn leader_json(l: &Option<Leader>) -> Value {
    match l {
        Some(l) => json!({
            "value": String::from_utf8_lossy(&l.value),
            "term": l.term,
            "key": String::from_utf8_lossy(&l.key),
        }),
        None => Value::Null,
    }
}

pub(crate) async fn election_leader(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    q: Result<Query<NameQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    check_recipe(&st, &who, ELECTION_PREFIX, &q.name, &[Need::Read])?;
    let l = Election::new(st.store.clone(), &q.name)?.leader().await?;
    Ok(Json(json!({"leader": leader_json(&l)})))
}

/// Turns `(event, is_last)` items into an SSE response that also ends at node shutdown.
pub(crate) fn sse(
    st: &AppState,
    events: impl Stream<Item = (SseEvent, bool)> + Send + 'static,
) -> Response {
    let mut shutdown = st.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let events = events.take_until(stopped).scan(false, |ended, (ev, last)| {
        if *ended {
            return futures::future::ready(None);
        }
        *ended = last;
        futures::future::ready(Some(Ok::<_, Infallible>(ev)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

pub(crate) fn sse_error(e: &ApiError) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(e.to_json().to_string())
}

pub(crate) async fn election_observe(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    q: Result<Query<NameQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    check_recipe(&st, &who, ELECTION_PREFIX, &q.name, &[Need::Read])?;
    let e = Election::new(st.store.clone(), &q.name)?;
    let events = e.observe().map(|item| match item {
        Ok(l) => (
            SseEvent::default()
                .event("leader")
                .data(leader_json(&l).to_string()),
            false,
        ),
        Err(e) => (sse_error(&e.into()), true),
    });
    Ok(sse(&st, events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    service: String,
    lease: i64,
    instance: Instance,
}

pub(crate) async fn svc_register(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<RegisterBody>,
) -> Result<Json<Value>, ApiError> {
    check_recipe(&st, &who, SERVICE_PREFIX, &b.service, RW)?;
    let session = Session::attach(st.store.clone(), b.lease).await?;
    let r = Registry::new(st.store.clone())
        .register(&session, &b.service, b.instance, None)
        .await?;
    let key = utf8(r.key(), "key")?;
    r.detach();
    Ok(Json(json!({"key": key})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeregisterBody {
    service: String,
    id: String,
}

pub(crate) async fn svc_deregister(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(b): Body<DeregisterBody>,
) -> Result<Json<Value>, ApiError> {
    check_recipe(&st, &who, SERVICE_PREFIX, &b.service, RW)?;
    let found = Registry::new(st.store.clone())
        .deregister(&b.service, &b.id)
        .await?;
    Ok(Json(json!({"deregistered": found})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceQuery {
    service: String,
}

pub(crate) async fn svc_list(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    q: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    check_recipe(&st, &who, SERVICE_PREFIX, &q.service, &[Need::Read])?;
    let s = Registry::new(st.store.clone()).discover(&q.service).await?;
    Ok(Json(
        json!({"revision": s.revision, "instances": s.instances}),
    ))
}

pub(crate) async fn svc_watch(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    q: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    check_recipe(&st, &who, SERVICE_PREFIX, &q.service, &[Need::Read])?;
    let reg = Registry::new(st.store.clone());
    let snap = reg.discover(&q.service).await?;
    let first = SseEvent::default()
        .event("reset")
        .data(json!({"revision": snap.revision, "instances": snap.instances}).to_string());
    let events = reg.watch(&q.service, &snap).map(|item| match item {
        Ok(DiscoveryEvent::Added(i)) => (
            SseEvent::default()
                .event("added")
                .data(json!(i).to_string()),
            false,
        ),
        Ok(DiscoveryEvent::Updated(i)) => (
            SseEvent::default()
                .event("updated")
                .data(json!(i).to_string()),
            false,
        ),
        Ok(DiscoveryEvent::Removed(id)) => (
            SseEvent::default()
                .event("removed")
                .data(json!({"id": id}).to_string()),
            false,
        ),
        Ok(DiscoveryEvent::Reset(s)) => (
            SseEvent::default()
                .event("reset")
                .data(json!({"revision": s.revision, "instances": s.instances}).to_string()),
            false,
        ),
        Err(e) => (sse_error(&e.into()), true),
    });
    Ok(sse(
        &st,
        futures::stream::once(async move { (first, false) }).chain(events),
    ))
}
