//! etcd's JSON gateway on the etcd port, beside gRPC: `POST /v3/kv/range` and the rest, as
//! curl users and HTTP-only clients (Python's `etcd3gw`) call it. Requests are etcd's JSON
//! (keys and values base64, numbers as numbers or strings, field names snake_case or
//! camelCase, enums by name or number); answers use etcd's field names, int64s as strings and
//! omit defaults; errors are `{"error", "message", "code"}` with grpc-gateway's HTTP status.
//! A connection whose first bytes are not the HTTP/2 preface comes here (`serve`).

use std::convert::Infallible;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Map, Value};
use tonic::{Request, Status};

use crate::auth::pb::auth_server::Auth as AuthService;
use crate::*;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Largest request body (etcd's default request limit is 1.5 MiB, in base64 a third more).
const MAX_BODY: usize = 4 << 20;

/// Serves one HTTP/1.1 connection of the JSON gateway.
pub(crate) async fn serve<IO>(stream: IO, api: EtcdApi)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(handle(api, req).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await
    {
        tracing::debug!("etcd JSON gateway connection: {e}");
    }
}

fn full(status: u16, v: Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static response")
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        Ok => 200,
        Cancelled => 408,
        InvalidArgument | OutOfRange => 400,
        DeadlineExceeded => 504,
        NotFound => 404,
        AlreadyExists | Aborted => 409,
        PermissionDenied => 403,
        Unauthenticated => 401,
        ResourceExhausted => 429,
        FailedPrecondition => 412,
        Unimplemented => 501,
        Unavailable => 503,
        _ => 500,
    }
}

fn error(s: Status) -> hyper::Response<Body> {
    let m = s.message().to_string();
    full(
        http_status(s.code()),
        json!({"error": m, "message": m, "code": s.code() as i32}),
    )
}

async fn handle(api: EtcdApi, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    if let Err(s) = api.admit() {
        return error(s);
    }
    if req.method() == hyper::Method::GET && req.uri().path() == "/version" {
        // What clients probe the API path with (etcd3gw: /v3 from 3.4 on).
        let version = PbMaintenanceService::status(&api, Request::new(PbStatusRequest {}))
            .await
            .map(|r| r.into_inner().version)
            .unwrap_or_default();
        // The etcd API version weft speaks, without its own suffix (clients parse numbers).
        let version = version.split('-').next().unwrap_or_default().to_string();
        let cluster = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".") + ".0";
        return full(200, json!({"etcdserver": version, "etcdcluster": cluster}));
    }
    if req.method() != hyper::Method::POST {
        return error(Status::unimplemented(format!(
            "{} {}: etcd's JSON gateway takes POST",
            req.method(),
            req.uri().path()
        )));
    }
    let path = req.uri().path().to_string();
    let ctx = Ctx::of(&api, &req);
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(Status::invalid_argument(format!(
                "request body: {e} (at most {MAX_BODY} bytes)"
            )))
        }
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => {
            return error(Status::invalid_argument(
                "the request body must be a JSON object",
            ))
        }
        Err(e) => return error(Status::invalid_argument(e.to_string())),
    };
    if path == "/v3/watch" {
        return match watch(&api, &ctx, &v).await {
            Ok(r) => r,
            Err(s) => error(s),
        };
    }
    match route(&api, &ctx, &path, &v).await {
        Ok(v) => full(200, v),
        Err(s) => error(s),
    }
}

/// A request's credentials: etcd's gateway takes the token in `Authorization` (bare, or
/// after `Bearer `).
struct Ctx {
    token: Option<String>,
    auth: Arc<weft_auth::Auth>,
    cert_user: Option<Arc<str>>,
}

impl Ctx {
    fn of(api: &EtcdApi, req: &hyper::Request<Incoming>) -> Ctx {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.trim().trim_start_matches("Bearer ").trim().to_owned());
        Ctx {
            token,
            auth: api.auth.clone(),
            cert_user: api.cert_user.clone(),
        }
    }

    fn who(&self) -> Result<weft_auth::Identity, Status> {
        if let (None, Some(cn)) = (&self.token, &self.cert_user) {
            return self.auth.identify_cert(cn).map_err(crate::auth_status);
        }
        self.auth
            .identify(self.token.as_deref())
            .map_err(crate::auth_status)
    }

    /// `m` as a gRPC request carrying the token (or the client certificate's user), for the
    /// services' own checks.
    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        if let Some(cn) = &self.cert_user {
            r.extensions_mut().insert(crate::auth::CertUser(cn.clone()));
        }
        if let Some(v) = self.token.as_deref().and_then(|t| t.parse().ok()) {
            r.metadata_mut().insert("token", v);
        }
        r
    }
}

async fn route(api: &EtcdApi, ctx: &Ctx, path: &str, v: &Value) -> Result<Value, Status> {
    let path = path
        .strip_prefix("/v3beta")
        .map(|p| format!("/v3{p}"))
        .unwrap_or_else(|| path.to_string());
    match path.as_str() {
        "/v3/kv/range" => Ok(range_json(&api.kv_range(&ctx.who()?, range_pb(v)?).await?)),
        "/v3/kv/put" => {
            let r = api.kv_put(&ctx.who()?, put_pb(v)?).await?;
            let mut o = head(&r.header);
            if let Some(kv) = &r.prev_kv {
                o.insert("prev_kv".into(), kv_json(kv));
            }
            Ok(Value::Object(o))
        }
        "/v3/kv/deleterange" => Ok(delete_json(&api.kv_delete(&ctx.who()?, delete_pb(v)?).await?)),
        "/v3/kv/txn" => Ok(txn_json(&api.kv_txn(&ctx.who()?, txn_pb(v)?).await?)),
        "/v3/kv/compaction" => {
            let req = PbCompactionRequest { revision: int(v, "revision")?, physical: flag(v, "physical") };
            let r = PbKvService::compact(api, ctx.req(req)).await?.into_inner();
            Ok(Value::Object(head(&r.header)))
        }
        "/v3/lease/grant" => {
            let req = PbLeaseGrantRequest { ttl: int(v, "TTL")?, id: int(v, "ID")? };
            let r = PbLeaseService::lease_grant(api, ctx.req(req)).await?.into_inner();
            let mut o = head(&r.header);
            put_int(&mut o, "ID", r.id);
            put_int(&mut o, "TTL", r.ttl);
            if !r.error.is_empty() {
                o.insert("error".into(), json!(r.error));
            }
            Ok(Value::Object(o))
        }
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            let req = PbLeaseRevokeRequest { id: int(v, "ID")? };
            let r = PbLeaseService::lease_revoke(api, ctx.req(req)).await?.into_inner();
            Ok(Value::Object(head(&r.header)))
        }
        "/v3/lease/keepalive" => {
            ctx.who()?;
            keepalive(api, int(v, "ID")?).await
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            let req = PbLeaseTimeToLiveRequest { id: int(v, "ID")?, keys: flag(v, "keys") };
            let r = PbLeaseService::lease_time_to_live(api, ctx.req(req)).await?.into_inner();
            let mut o = head(&r.header);
            put_int(&mut o, "ID", r.id);
            put_int(&mut o, "TTL", r.ttl);
            put_int(&mut o, "grantedTTL", r.granted_ttl);
            if !r.keys.is_empty() {
                o.insert("keys".into(), r.keys.iter().map(|k| json!(b64(k))).collect());
            }
            Ok(Value::Object(o))
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            let r = PbLeaseService::lease_leases(api, ctx.req(PbLeaseLeasesRequest {})).await?.into_inner();
            let mut o = head(&r.header);
            if !r.leases.is_empty() {
                o.insert("leases".into(), r.leases.iter().map(|l| json!({"ID": l.id.to_string()})).collect());
            }
            Ok(Value::Object(o))
        }
        "/v3/maintenance/status" => {
            let r = PbMaintenanceService::status(api, ctx.req(PbStatusRequest {})).await?.into_inner();
            let mut o = head(&r.header);
            o.insert("version".into(), json!(r.version));
            put_int(&mut o, "dbSize", r.db_size);
            put_int(&mut o, "leader", r.leader as i64);
            put_int(&mut o, "raftIndex", r.raft_index as i64);
            put_int(&mut o, "raftTerm", r.raft_term as i64);
            put_int(&mut o, "raftAppliedIndex", r.raft_applied_index as i64);
            put_int(&mut o, "dbSizeInUse", r.db_size_in_use);
            Ok(Value::Object(o))
        }
        "/v3/cluster/member/list" => {
            let r = PbClusterService::member_list(api, ctx.req(PbMemberListRequest { linearizable: false }))
                .await?
                .into_inner();
            let mut o = head(&r.header);
            let members = r
                .members
                .iter()
                .map(|m| json!({"ID": m.id.to_string(), "name": m.name, "peerURLs": m.peer_ur_ls, "clientURLs": m.client_ur_ls}))
                .collect();
            o.insert("members".into(), members);
            Ok(Value::Object(o))
        }
        "/v3/auth/authenticate" => {
            let req = auth::pb::AuthenticateRequest { name: str_field(v, "name")?, password: str_field(v, "password")? };
            let r = AuthService::authenticate(api, ctx.req(req)).await?.into_inner();
            let mut o = head(&r.header.map(auth_header));
            o.insert("token".into(), json!(r.token));
            Ok(Value::Object(o))
        }
        "/v3/auth/status" => {
            let r = AuthService::auth_status(api, ctx.req(auth::pb::AuthStatusRequest {})).await?.into_inner();
            let mut o = head(&r.header.map(auth_header));
            o.insert("enabled".into(), json!(r.enabled));
            put_int(&mut o, "authRevision", r.auth_revision as i64);
            Ok(Value::Object(o))
        }
        p if p.starts_with("/v3/auth/") => Err(Status::unimplemented(format!("{p}: manage users and roles with etcdctl or another gRPC client (the JSON gateway serves /v3/auth/authenticate and /v3/auth/status)"))),
        p => Err(Status::not_found(format!(
            "{p}: not served by weft's etcd JSON gateway (served: /v3/kv/{{range,put,deleterange,txn,compaction}}, /v3/watch, /v3/lease/{{grant,revoke,keepalive,timetolive,leases}}, /v3/maintenance/status, /v3/cluster/member/list)"
        ))),
    }
}

/// One keep-alive (etcd's gateway answers the first message of the stream).
async fn keepalive(api: &EtcdApi, id: i64) -> Result<Value, Status> {
    let r = api.store.lease_keep_alive(id).await;
    let mut o = Map::new();
    match r {
        Ok(r) => {
            o.insert("result".into(), {
                let mut x = head(&api.header(r.header.revision));
                put_int(&mut x, "ID", r.id);
                put_int(&mut x, "TTL", r.ttl);
                Value::Object(x)
            });
        }
        Err(ws::StoreError::LeaseNotFound(_)) => {
            // etcd answers an unknown lease with TTL 0 (or -1 in newer versions) on the stream.
            let rev = api.current_revision().await;
            let mut x = head(&api.header(rev));
            put_int(&mut x, "ID", id);
            o.insert("result".into(), Value::Object(x));
        }
        Err(e) => return Err(status(e)),
    }
    Ok(Value::Object(o))
}

/// `POST /v3/watch` with `{"create_request": {...}}`: newline-separated `{"result": ...}`.
async fn watch(api: &EtcdApi, ctx: &Ctx, v: &Value) -> Result<hyper::Response<Body>, Status> {
    let c = field(v, "create_request").ok_or_else(|| {
        Status::invalid_argument("the watch gateway takes {\"create_request\": {...}}")
    })?;
    let filters = field(c, "filters")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| enum_val(f, &["NOPUT", "NODELETE"]))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let (key, end) = (bytes(c, "key")?, bytes(c, "range_end")?);
    api.check(&ctx.who()?, &key, &end, weft_auth::Need::Read)?;
    let wreq = ws::WatchRequest {
        range: range_of(key, end),
        start_revision: int(c, "start_revision")?,
        prev_kv: flag(c, "prev_kv"),
        no_put: filters.contains(&0),
        no_delete: filters.contains(&1),
        progress_notify: flag(c, "progress_notify"),
    };
    let id = int(c, "watch_id")?;
    let rev = api.current_revision().await;
    let stream = api.store.watch(wreq).await.map_err(status)?;
    let (tx, mut rx) = mpsc::channel::<Result<PbWatchResponse, Status>>(128);
    let created = PbWatchResponse {
        header: api.header(rev),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    let _ = tx.send(Ok(created)).await;
    let progress = Arc::new(tokio::sync::Notify::new());
    let task = api
        .rt
        .spawn(forward_watch(api.clone(), id, stream, progress, tx));
    let body = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        std::task::Poll::Ready(Some(Ok(w))) => {
            let line = format!("{}\n", json!({"result": watch_json(&w)}));
            std::task::Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(Bytes::from(line)))))
        }
        std::task::Poll::Ready(Some(Err(s))) => {
            let m = s.message().to_string();
            let line = format!(
                "{}\n",
                json!({"error": {"grpc_code": s.code() as i32, "message": m}})
            );
            std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
        }
        std::task::Poll::Ready(None) => {
            task.abort();
            std::task::Poll::Ready(None)
        }
        std::task::Poll::Pending => std::task::Poll::Pending,
    });
    Ok(hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .expect("static response"))
}

// Requests.

/// A field by its snake_case name or its camelCase one.
/// A string field (empty if absent).
fn str_field(v: &Value, name: &str) -> Result<String, Status> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(name, "a string")),
    }
}

/// The Auth service's header as the KV services' (the JSON is the same).
fn auth_header(h: auth::pb::ResponseHeader) -> PbResponseHeader {
    PbResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name).or_else(|| {
        let mut camel = String::new();
        let mut up = false;
        for c in name.chars() {
            if c == '_' {
                up = true;
            } else if up {
                camel.extend(c.to_uppercase());
                up = false;
            } else {
                camel.push(c);
            }
        }
        v.get(&camel)
    })
}

fn int(v: &Value, name: &str) -> Result<i64, Status> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(name, "an int64")),
        Some(Value::String(s)) => s.parse().map_err(|_| bad(name, "an int64")),
        Some(_) => Err(bad(name, "an int64")),
    }
}

fn flag(v: &Value, name: &str) -> bool {
    field(v, name).and_then(Value::as_bool).unwrap_or(false)
}

fn bytes(v: &Value, name: &str) -> Result<Vec<u8>, Status> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| bad(name, "base64")),
        Some(_) => Err(bad(name, "a base64 string")),
    }
}

fn bad(name: &str, what: &str) -> Status {
    Status::invalid_argument(format!("bad value for field {name:?}: expected {what}"))
}

/// An enum given by name (its index in `names`) or number.
fn enum_val(v: &Value, names: &[&str]) -> Option<i32> {
    match v {
        Value::String(s) => names
            .iter()
            .position(|n| n == s)
            .map(|i| i as i32)
            .or_else(|| s.parse().ok()),
        Value::Number(n) => n.as_i64().map(|n| n as i32),
        _ => None,
    }
}

fn enum_field(v: &Value, name: &str, names: &[&str]) -> Result<i32, Status> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => {
            enum_val(x, names).ok_or_else(|| bad(name, &format!("one of {}", names.join(", "))))
        }
    }
}

fn range_pb(v: &Value) -> Result<PbRangeRequest, Status> {
    Ok(PbRangeRequest {
        key: bytes(v, "key")?,
        range_end: bytes(v, "range_end")?,
        limit: int(v, "limit")?,
        revision: int(v, "revision")?,
        sort_order: enum_field(v, "sort_order", &["NONE", "ASCEND", "DESCEND"])?,
        sort_target: enum_field(
            v,
            "sort_target",
            &["KEY", "VERSION", "CREATE", "MOD", "VALUE"],
        )?,
        serializable: flag(v, "serializable"),
        keys_only: flag(v, "keys_only"),
        count_only: flag(v, "count_only"),
        min_mod_revision: int(v, "min_mod_revision")?,
        max_mod_revision: int(v, "max_mod_revision")?,
        min_create_revision: int(v, "min_create_revision")?,
        max_create_revision: int(v, "max_create_revision")?,
    })
}

fn put_pb(v: &Value) -> Result<PbPutRequest, Status> {
    Ok(PbPutRequest {
        key: bytes(v, "key")?,
        value: bytes(v, "value")?,
        lease: int(v, "lease")?,
        prev_kv: flag(v, "prev_kv"),
        ignore_value: flag(v, "ignore_value"),
        ignore_lease: flag(v, "ignore_lease"),
    })
}

fn delete_pb(v: &Value) -> Result<PbDeleteRequest, Status> {
    Ok(PbDeleteRequest {
        key: bytes(v, "key")?,
        range_end: bytes(v, "range_end")?,
        prev_kv: flag(v, "prev_kv"),
    })
}

fn compare_pb(v: &Value) -> Result<PbCompare, Status> {
    let target = enum_field(v, "target", &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])?;
    let union = match target {
        0 => PbTargetUnion::Version(int(v, "version")?),
        1 => PbTargetUnion::CreateRevision(int(v, "create_revision")?),
        2 => PbTargetUnion::ModRevision(int(v, "mod_revision")?),
        3 => PbTargetUnion::Value(bytes(v, "value")?),
        _ => PbTargetUnion::Lease(int(v, "lease")?),
    };
    Ok(PbCompare {
        result: enum_field(v, "result", &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])?,
        target,
        key: bytes(v, "key")?,
        range_end: bytes(v, "range_end")?,
        target_union: Some(union),
    })
}

fn op_pb(v: &Value) -> Result<PbTxnRequestOp, Status> {
    let request = if let Some(r) = field(v, "request_range") {
        PbTxnOpRequest::RequestRange(range_pb(r)?)
    } else if let Some(p) = field(v, "request_put") {
        PbTxnOpRequest::RequestPut(put_pb(p)?)
    } else if let Some(d) = field(v, "request_delete_range") {
        PbTxnOpRequest::RequestDeleteRange(delete_pb(d)?)
    } else if let Some(t) = field(v, "request_txn") {
        PbTxnOpRequest::RequestTxn(txn_pb(t)?)
    } else {
        return Err(Status::invalid_argument(
            "a txn op needs one of request_range, request_put, request_delete_range, request_txn",
        ));
    };
    Ok(PbTxnRequestOp {
        request: Some(request),
    })
}

fn list<T>(
    v: &Value,
    name: &str,
    f: impl Fn(&Value) -> Result<T, Status>,
) -> Result<Vec<T>, Status> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(f).collect(),
        Some(_) => Err(bad(name, "an array")),
    }
}

fn txn_pb(v: &Value) -> Result<PbTxnRequest, Status> {
    Ok(PbTxnRequest {
        compare: list(v, "compare", compare_pb)?,
        success: list(v, "success", op_pb)?,
        failure: list(v, "failure", op_pb)?,
    })
}

// Answers.

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn put_int(o: &mut Map<String, Value>, name: &str, v: i64) {
    if v != 0 {
        o.insert(name.into(), json!(v.to_string()));
    }
}

fn header_json(h: &PbResponseHeader) -> Value {
    let mut o = Map::new();
    put_int(&mut o, "cluster_id", h.cluster_id as i64);
    put_int(&mut o, "member_id", h.member_id as i64);
    put_int(&mut o, "revision", h.revision);
    put_int(&mut o, "raft_term", h.raft_term as i64);
    Value::Object(o)
}

/// An answer's object, starting with its header.
fn head(h: &Option<PbResponseHeader>) -> Map<String, Value> {
    let mut o = Map::new();
    if let Some(h) = h {
        o.insert("header".into(), header_json(h));
    }
    o
}

fn kv_json(kv: &PbKeyValue) -> Value {
    let mut o = Map::new();
    if !kv.key.is_empty() {
        o.insert("key".into(), json!(b64(&kv.key)));
    }
    put_int(&mut o, "create_revision", kv.create_revision);
    put_int(&mut o, "mod_revision", kv.mod_revision);
    put_int(&mut o, "version", kv.version);
    if !kv.value.is_empty() {
        o.insert("value".into(), json!(b64(&kv.value)));
    }
    put_int(&mut o, "lease", kv.lease);
    Value::Object(o)
}

fn range_json(r: &PbRangeResponse) -> Value {
    let mut o = head(&r.header);
    if !r.kvs.is_empty() {
        o.insert("kvs".into(), r.kvs.iter().map(kv_json).collect());
    }
    if r.more {
        o.insert("more".into(), json!(true));
    }
    put_int(&mut o, "count", r.count);
    Value::Object(o)
}

fn delete_json(r: &PbDeleteResponse) -> Value {
    let mut o = head(&r.header);
    put_int(&mut o, "deleted", r.deleted);
    if !r.prev_kvs.is_empty() {
        o.insert("prev_kvs".into(), r.prev_kvs.iter().map(kv_json).collect());
    }
    Value::Object(o)
}

fn txn_json(r: &PbTxnResponse) -> Value {
    let mut o = head(&r.header);
    if r.succeeded {
        o.insert("succeeded".into(), json!(true));
    }
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(PbTxnOpResponse::ResponseRange(x)) => json!({"response_range": range_json(x)}),
            Some(PbTxnOpResponse::ResponsePut(x)) => {
                let mut p = head(&x.header);
                if let Some(kv) = &x.prev_kv {
                    p.insert("prev_kv".into(), kv_json(kv));
                }
                json!({"response_put": p})
            }
            Some(PbTxnOpResponse::ResponseDeleteRange(x)) => {
                json!({"response_delete_range": delete_json(x)})
            }
            Some(PbTxnOpResponse::ResponseTxn(x)) => json!({"response_txn": txn_json(x)}),
            None => json!({}),
        })
        .collect();
    if !responses.is_empty() {
        o.insert("responses".into(), Value::Array(responses));
    }
    Value::Object(o)
}

fn watch_json(w: &PbWatchResponse) -> Value {
    let mut o = head(&w.header);
    put_int(&mut o, "watch_id", w.watch_id);
    for (name, on) in [("created", w.created), ("canceled", w.canceled)] {
        if on {
            o.insert(name.into(), json!(true));
        }
    }
    put_int(&mut o, "compact_revision", w.compact_revision);
    if !w.cancel_reason.is_empty() {
        o.insert("cancel_reason".into(), json!(w.cancel_reason));
    }
    if !w.events.is_empty() {
        let events = w
            .events
            .iter()
            .map(|e| {
                let mut x = Map::new();
                if e.r#type == 1 {
                    x.insert("type".into(), json!("DELETE"));
                }
                if let Some(kv) = &e.kv {
                    x.insert("kv".into(), kv_json(kv));
                }
                if let Some(kv) = &e.prev_kv {
                    x.insert("prev_kv".into(), kv_json(kv));
                }
                Value::Object(x)
            })
            .collect();
        o.insert("events".into(), events);
    }
    Value::Object(o)
}
