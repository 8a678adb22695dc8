//! Who may call what on the HTTP API: the same users, roles and key permissions as the etcd
//! API (`weft_auth`), so both APIs and the dashboard agree.
//!
//! A call's bearer token is the node's admin token (`--token`: may do everything), or, while
//! auth is enabled, a user's token from `POST /v1/auth/authenticate` (or from the etcd API's
//! Authenticate). Then, by route ([`policy`]):
//!
//! - **open**: `/health`, the dashboard's files, `/v1/auth/authenticate`;
//! - **keys**: KV, watch, leases, locks, elections and services check the keys they touch,
//!   as the etcd API does (a lock or election `name` is the prefix `/weft/lock/<name>/`,
//!   `/weft/election/<name>/`..., read and write; a service's instances are under
//!   `/weft/svc/<service>/`);
//! - **any user**: status, metrics, history, compaction, lease grant and keep-alive, the
//!   gateway and shard views, `/v1/auth/status`;
//! - **root**: everything else (backups, defragmentation, hashes, replication, sagas, the
//!   queue, managing users and roles).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use weft_auth::{Auth, AuthError, Identity, PermKind, Permission};
use weft_store as ws;

use crate::{constant_time_eq, ApiError, AppState, Body};

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Nothing.
    Open,
    /// Any authenticated caller; the handler checks the keys it touches.
    User,
    /// The `root` role.
    Root,
}

/// The policy of `path` (see the module docs).
pub(crate) fn policy(path: &str) -> Policy {
    const USER: &[&str] = &[
        "/metrics",
        "/openapi.json",
        "/v1/status",
        "/v1/history",
        "/v1/kv/range",
        "/v1/kv/put",
        "/v1/kv/delete",
        "/v1/kv/txn",
        "/v1/kv/compact",
        "/v1/watch",
        "/v1/gateways",
        "/v1/gateway/status",
        "/v1/shard/analyze",
        "/v1/auth/status",
    ];
    const USER_PREFIXES: &[&str] = &["/v1/lease/", "/v1/lock/", "/v1/election/", "/v1/svc/"];
    if path == "/health"
        || path == "/ui"
        || path.starts_with("/ui/")
        || path == "/v1/auth/authenticate"
    {
        Policy::Open
    } else if USER.contains(&path) || USER_PREFIXES.iter().any(|p| path.starts_with(p)) {
        Policy::User
    } else {
        Policy::Root
    }
}

/// The caller holding `bearer`: the node's admin token, or a user's token while auth is
/// enabled (without a token, the user its client certificate names, `cert_user`). With
/// neither a node token nor auth, everyone may do everything (loopback only).
pub(crate) fn resolve(
    st: &AppState,
    bearer: Option<&str>,
    cert_user: Option<&str>,
) -> Result<Identity, ApiError> {
    if let (Some(admin), Some(b)) = (&st.token, bearer) {
        if constant_time_eq(b.as_bytes(), admin.as_bytes()) {
            return Ok(Identity::Admin);
        }
    }
    if let (true, None, Some(cn)) = (st.auth.enabled(), bearer, cert_user) {
        return Ok(st.auth.identify_cert(cn)?);
    }
    if st.auth.enabled() {
        return st.auth.identify(bearer).map_err(|e| match e {
            AuthError::UserEmpty | AuthError::InvalidAuthToken => ApiError::Unauthorized,
            other => ApiError::Auth(other),
        });
    }
    match st.token {
        Some(_) => Err(ApiError::Unauthorized),
        None => Ok(Identity::Admin),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    name: String,
    password: String,
}

/// `POST /v1/auth/authenticate`: a token for a user.
pub(crate) async fn authenticate(
    State(st): State<AppState>,
    Body(b): Body<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    let token = st.auth.authenticate(&b.name, &b.password).await?;
    Ok(Json(json!({"token": token})))
}

/// `GET /v1/auth/status`.
pub(crate) async fn status(State(st): State<AppState>) -> Json<Value> {
    Json(json!({"enabled": st.auth.enabled(), "revision": st.auth.revision()}))
}

/// `POST /v1/auth/enable` and `/v1/auth/disable`.
pub(crate) async fn enable(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rev = st.auth.enable().await?;
    Ok(Json(json!({"enabled": true, "revision": rev})))
}

/// `POST /v1/auth/disable`.
pub(crate) async fn disable(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rev = st.auth.disable().await?;
    Ok(Json(json!({"enabled": false, "revision": rev})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum UserOp {
    Add,
    Delete,
    Passwd,
    Grant,
    Revoke,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    op: UserOp,
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

fn need<T>(v: Option<T>, what: &str, op: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::BadRequest(format!("{op} needs a {what}")))
}

/// `POST /v1/auth/user`: add (with a password, or none: no password login), delete, passwd,
/// grant or revoke a role.
pub(crate) async fn user(
    State(st): State<AppState>,
    Body(b): Body<UserBody>,
) -> Result<Json<Value>, ApiError> {
    let a = &st.auth;
    let n = &b.name;
    let rev = match b.op {
        UserOp::Add => a.user_add(n, b.password.as_deref()).await,
        UserOp::Delete => a.user_delete(n).await,
        UserOp::Passwd => {
            let p = need(b.password, "password", "passwd")?;
            a.user_change_password(n, &p).await
        }
        UserOp::Grant => a.user_grant_role(n, &need(b.role, "role", "grant")?).await,
        UserOp::Revoke => {
            a.user_revoke_role(n, &need(b.role, "role", "revoke")?)
                .await
        }
    }?;
    Ok(Json(json!({"revision": rev})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum RoleOp {
    Add,
    Delete,
    Grant,
    Revoke,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PermBody {
    /// read, write or readwrite (grant only).
    #[serde(default)]
    kind: Option<PermKind>,
    key: String,
    /// The end of the range; none: the key alone (or the prefix with `prefix`).
    #[serde(default)]
    range_end: Option<String>,
    /// Every key starting with `key`.
    #[serde(default)]
    prefix: bool,
}

impl PermBody {
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        if self.prefix {
            let r = ws::KeyRange::prefix(self.key.clone());
            return (r.key.to_vec(), r.range_end.to_vec());
        }
        let end = self.range_end.clone().unwrap_or_default();
        (self.key.clone().into_bytes(), end.into_bytes())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    op: RoleOp,
    name: String,
    #[serde(default)]
    permission: Option<PermBody>,
}

/// `POST /v1/auth/role`: add, delete, grant or revoke a permission.
pub(crate) async fn role(
    State(st): State<AppState>,
    Body(b): Body<RoleBody>,
) -> Result<Json<Value>, ApiError> {
    let a = &st.auth;
    let n = &b.name;
    let rev = match b.op {
        RoleOp::Add => a.role_add(n).await,
        RoleOp::Delete => a.role_delete(n).await,
        RoleOp::Grant => {
            let p = need(b.permission, "permission", "grant")?;
            let (key, range_end) = p.range();
            let kind = need(p.kind, "permission kind (read, write, readwrite)", "grant")?;
            let perm = Permission {
                kind,
                key,
                range_end,
            };
            a.role_grant_permission(n, perm).await
        }
        RoleOp::Revoke => {
            let (key, end) = need(b.permission, "permission", "revoke")?.range();
            a.role_revoke_permission(n, &key, &end).await
        }
    }?;
    Ok(Json(json!({"revision": rev})))
}

/// `GET /v1/auth/users`: every user with its roles.
pub(crate) async fn users(State(st): State<AppState>) -> Json<Value> {
    let users: Vec<Value> = st
        .auth
        .user_list()
        .into_iter()
        .map(|u| json!({"roles": st.auth.user_get(&u).unwrap_or_default(), "name": u}))
        .collect();
    Json(json!({ "users": users }))
}

/// `GET /v1/auth/roles`: every role with its permissions (keys as UTF-8, lossy).
pub(crate) async fn roles(State(st): State<AppState>) -> Json<Value> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let roles: Vec<Value> = st
        .auth
        .role_list()
        .into_iter()
        .map(|r| {
            let perms: Vec<Value> = st
                .auth
                .role_get(&r)
                .unwrap_or_default()
                .iter()
                .map(|p| json!({"kind": p.kind, "key": text(&p.key), "range_end": text(&p.range_end)}))
                .collect();
            json!({"name": r, "permissions": perms})
        })
        .collect();
    Json(json!({ "roles": roles }))
}

/// An in-memory auth for a server given none.
pub(crate) fn default_auth() -> Arc<Auth> {
    Arc::new(Auth::in_memory(weft_auth::Options::default()))
}
