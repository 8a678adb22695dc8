//! etcd's Auth API with etcd-client: users, roles, key-range permissions, tokens, and their
//! enforcement on KV, Txn, Watch, Lease, Lock and Election with etcd's codes and messages.

use crate::common;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LockOptions, Permission,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use tonic::Code;

/// The status of a failed call (panics on success or a non-gRPC error).
fn code<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

async fn user(url: &str, name: &str, password: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_user(name, password);
    Client::connect([url], Some(opts)).await
}

/// root (the root role), alice (readwrite on `app/`, read on `shared`), auth enabled.
async fn setup(s: &common::Server) -> Client {
    setup_at(&s.url).await
}

async fn setup_at(url: &str) -> Client {
    let mut c = Client::connect([url], None).await.unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("app").await.unwrap();
    c.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .unwrap();
    c.role_grant_permission("app", Permission::read("shared"))
        .await
        .unwrap();
    c.user_add("alice", "alicepw", None).await.unwrap();
    c.user_grant_role("alice", "app").await.unwrap();
    c.auth_enable().await.unwrap();
    c
}

#[tokio::test]
async fn without_credentials_calls_are_refused_once_auth_is_enabled() {
    let s = common::start().await;
    let mut anon = setup(&s).await;
    // The same connection: auth changed under it, and the fast path must not serve it.
    assert_eq!(
        code(anon.put("app/x", "v", None).await),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    assert_eq!(code(anon.get("app/x", None).await).0, Code::InvalidArgument);
    assert_eq!(
        code(anon.user_add("eve", "pw", None).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        code(user(&s.url, "alice", "wrong").await.map(|_| ())),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );
    assert_eq!(
        code(user(&s.url, "nobody", "x").await.map(|_| ())).0,
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_users_keys_are_its_roles_ranges() {
    let s = common::start().await;
    setup(&s).await;
    let mut alice = user(&s.url, "alice", "alicepw").await.unwrap();
    alice.put("app/x", "1", None).await.unwrap();
    let got = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    let denied = (
        Code::PermissionDenied,
        "etcdserver: permission denied".into(),
    );
    assert_eq!(code(alice.put("other", "v", None).await), denied);
    assert_eq!(code(alice.put("shared", "v", None).await), denied);
    alice.get("shared", None).await.expect("read on shared");
    // Everything, or a range reaching past the grant.
    assert_eq!(
        code(alice.get("", Some(GetOptions::new().with_all_keys())).await),
        denied
    );
    assert_eq!(
        code(
            alice
                .get("app/", Some(GetOptions::new().with_range("b")))
                .await
        ),
        denied
    );
    assert_eq!(code(alice.delete("other", None).await), denied);
    // A previous value is a read.
    alice
        .put("app/x", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_txn_checks_every_compare_and_both_branches() {
    let s = common::start().await;
    setup(&s).await;
    let mut alice = user(&s.url, "alice", "alicepw").await.unwrap();
    let ok = Txn::new()
        .when([Compare::version("app/a", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("app/a", "1", None)])
        .or_else([TxnOp::get("shared", None)]);
    assert!(alice.txn(ok).await.unwrap().succeeded());
    let bad_compare = Txn::new()
        .when([Compare::version("other", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("app/a", "1", None)]);
    assert_eq!(code(alice.txn(bad_compare).await).0, Code::PermissionDenied);
    // The failure branch is checked even when it would not run.
    let bad_else = Txn::new()
        .when([Compare::version("app/a", CompareOp::Greater, 0)])
        .and_then([TxnOp::get("app/a", None)])
        .or_else([TxnOp::delete("other", None)]);
    assert_eq!(code(alice.txn(bad_else).await).0, Code::PermissionDenied);
    let nested = Txn::new().and_then([TxnOp::txn(
        Txn::new().and_then([TxnOp::put("shared", "x", None)]),
    )]);
    assert_eq!(code(alice.txn(nested).await).0, Code::PermissionDenied);
}

#[tokio::test]
async fn watches_leases_and_locks_are_checked() {
    let s = common::start().await;
    let mut root_anon = setup(&s).await;
    let mut alice = user(&s.url, "alice", "alicepw").await.unwrap();
    let mut root = user(&s.url, "root", "rootpw").await.unwrap();
    // Watch: a range alice cannot read is created and cancelled at once.
    let mut stream = alice.watch("other", None).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.created() && first.canceled(), "{first:?}");
    assert!(first.cancel_reason().contains("permission denied"));
    let mut ok = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let _created = ok.message().await.unwrap().unwrap();
    alice.put("app/w", "v", None).await.unwrap();
    let ev = ok.message().await.unwrap().unwrap();
    assert_eq!(ev.events()[0].event_type(), EventType::Put);
    // Lease: alice may grant; revoking a lease with root's key on it is a write there.
    let lease = alice.lease_grant(60, None).await.unwrap().id();
    root.put("other", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(
        code(alice.lease_revoke(lease).await).0,
        Code::PermissionDenied
    );
    root.lease_revoke(lease).await.unwrap();
    // Lock: under app/ yes, elsewhere no.
    let l = alice.lease_grant(60, None).await.unwrap().id();
    let held = alice
        .lock("app/lk", Some(LockOptions::new().with_lease(l)))
        .await
        .unwrap();
    alice.unlock(held.key()).await.unwrap();
    assert_eq!(
        code(
            alice
                .lock("lk", Some(LockOptions::new().with_lease(l)))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(alice.campaign("el", "me", l).await).0,
        Code::PermissionDenied
    );
    // Admin calls: root only.
    assert_eq!(code(alice.user_list().await).0, Code::PermissionDenied);
    assert_eq!(code(alice.auth_disable().await).0, Code::PermissionDenied);
    assert_eq!(alice.user_get("alice").await.unwrap().roles(), ["app"]);
    assert_eq!(code(alice.user_get("root").await).0, Code::PermissionDenied);
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
    root.auth_disable().await.unwrap();
    root_anon
        .put("other", "free", None)
        .await
        .expect("auth disabled");
}

#[tokio::test]
async fn management_answers_etcds_errors() {
    let s = common::start().await;
    let mut c = common::client(&s).await;
    assert_eq!(
        code(c.auth_enable().await),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist".into()
        )
    );
    c.user_add("root", "pw", None).await.unwrap();
    assert_eq!(
        code(c.auth_enable().await),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role".into()
        )
    );
    assert_eq!(
        code(c.user_add("root", "pw", None).await),
        (
            Code::FailedPrecondition,
            "etcdserver: user name already exists".into()
        )
    );
    assert_eq!(
        code(c.user_grant_role("root", "nope").await),
        (
            Code::FailedPrecondition,
            "etcdserver: role name not found".into()
        )
    );
    assert_eq!(
        code(c.user_get("nope").await),
        (
            Code::FailedPrecondition,
            "etcdserver: user name not found".into()
        )
    );
    c.role_add("r").await.unwrap();
    assert_eq!(
        code(c.role_revoke_permission("r", "k", None).await),
        (
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role".into()
        )
    );
    c.role_grant_permission("r", Permission::write("k").with_from_key())
        .await
        .unwrap();
    let perms = c.role_get("r").await.unwrap();
    assert_eq!(perms.permissions().len(), 1);
    assert_eq!(perms.permissions()[0].key(), b"k");
    assert_eq!(perms.permissions()[0].range_end(), b"\0");
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    let mut root = user(&s.url, "root", "pw").await.unwrap();
    assert_eq!(
        code(root.user_delete("root").await),
        (
            Code::InvalidArgument,
            "etcdserver: invalid auth management".into()
        )
    );
}

/// The outcome of one call, for comparing servers: ok, or the code and message.
fn outcome<T>(r: Result<T, etcd_client::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(etcd_client::Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => format!("other: {e}"),
    }
}

/// The same calls against a real etcd and weft: the same outcomes, code and message.
async fn grpc_outcomes(url: &str) -> Vec<String> {
    let mut anon = setup_at(url).await;
    let mut alice = user(url, "alice", "alicepw").await.unwrap();
    let mut root = user(url, "root", "rootpw").await.unwrap();
    let mut out = vec![
        outcome(anon.put("app/x", "v", None).await),
        outcome(anon.get("app/x", None).await),
        outcome(user(url, "alice", "bad").await),
        outcome(alice.put("app/x", "v", None).await),
        outcome(
            alice
                .get("app/", Some(GetOptions::new().with_prefix()))
                .await,
        ),
        outcome(alice.put("shared", "v", None).await),
        outcome(alice.get("shared", None).await),
        outcome(alice.get("", Some(GetOptions::new().with_all_keys())).await),
        outcome(alice.delete("other", None).await),
        outcome(
            alice
                .txn(
                    Txn::new()
                        .when([Compare::value("other", CompareOp::Equal, "x")])
                        .and_then([TxnOp::put("app/y", "1", None)]),
                )
                .await,
        ),
        outcome(alice.user_list().await),
        outcome(alice.role_add("x").await),
        outcome(alice.user_get("alice").await),
        outcome(root.user_add("alice", "x", None).await),
        outcome(root.user_grant_role("alice", "nope").await),
        outcome(root.user_revoke_role("alice", "nope").await),
        outcome(root.role_revoke_permission("app", "nope", None).await),
        outcome(root.user_delete("root").await),
        outcome(root.role_delete("root").await),
        outcome(root.user_delete("nobody").await),
    ];
    let mut w = alice.watch("other", None).await.unwrap();
    let m = w.message().await.unwrap().unwrap();
    out.push(format!(
        "watch: created {} canceled {}",
        m.created(),
        m.canceled()
    ));
    out.push(outcome(root.auth_disable().await));
    out.push(outcome(anon.put("other", "v", None).await));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_calls_answer_as_etcd_answers_them() {
    let Some(etcd) = weft_store_etcd::testing::EtcdServer::start_or_skip().await else {
        return;
    };
    let s = common::start().await;
    let want = grpc_outcomes(&etcd.endpoint).await;
    let got = grpc_outcomes(&s.url).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "call {i}");
    }
    assert_eq!(got.len(), want.len());
}

#[tokio::test]
async fn the_json_gateway_takes_tokens() {
    let s = common::start().await;
    setup(&s).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, token: Option<&str>| {
        let mut r = http.post(format!("{}{path}", s.url)).json(&body);
        if let Some(t) = token {
            r = r.header("authorization", t);
        }
        async move {
            let r = r.send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let (code, v) = post(
        "/v3/auth/authenticate",
        serde_json::json!({"name": "alice", "password": "alicepw"}),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let put = |k: &str| serde_json::json!({"key": b64(k), "value": b64("v")});
    let (code, v) = post("/v3/kv/put", put("app/x"), Some(&token)).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = post("/v3/kv/put", put("other"), Some(&token)).await;
    assert_eq!(
        (code, v["message"].as_str()),
        (403, Some("etcdserver: permission denied"))
    );
    let (code, v) = post("/v3/kv/put", put("app/x"), None).await;
    assert_eq!(
        (code, v["message"].as_str()),
        (400, Some("etcdserver: user name is empty"))
    );
    let (code, _) = post("/v3/kv/put", put("app/x"), Some("weft.forged")).await;
    assert_eq!(code, 401);
    let (code, v) = post("/v3/auth/status", serde_json::json!({}), Some(&token)).await;
    assert_eq!((code, v["enabled"].as_bool()), (200, Some(true)), "{v}");
    let (code, _) = post(
        "/v3/auth/authenticate",
        serde_json::json!({"name": "alice", "password": "nope"}),
        None,
    )
    .await;
    assert_eq!(code, 400);
}
