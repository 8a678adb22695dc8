//! The HTTP API's users and roles: the node's admin token, users' tokens from
//! /v1/auth/authenticate, key permissions on KV, watch, leases and recipes, root-only routes.

use crate::common;

use std::sync::Arc;

use serde_json::{json, Value};
use weft_server::ServerConfig;

/// A node with admin token `admin`: root, and alice with readwrite on `app/` and on the lock
/// `jobs`; auth enabled. Returns the node and alice's token.
async fn setup() -> (common::Node, String) {
    let cfg = ServerConfig {
        token: Some("admin".into()),
        ..Default::default()
    };
    let n = common::node(cfg).await;
    let a = Some("admin");
    let steps = [
        (
            "/v1/auth/user",
            json!({"op": "add", "name": "root", "password": "rootpw"}),
        ),
        (
            "/v1/auth/user",
            json!({"op": "grant", "name": "root", "role": "root"}),
        ),
        ("/v1/auth/role", json!({"op": "add", "name": "app"})),
        (
            "/v1/auth/role",
            json!({"op": "grant", "name": "app", "permission": {"kind": "readwrite", "key": "app/", "prefix": true}}),
        ),
        (
            "/v1/auth/role",
            json!({"op": "grant", "name": "app", "permission": {"kind": "readwrite", "key": "/weft/lock/jobs/", "prefix": true}}),
        ),
        (
            "/v1/auth/user",
            json!({"op": "add", "name": "alice", "password": "alicepw"}),
        ),
        (
            "/v1/auth/user",
            json!({"op": "grant", "name": "alice", "role": "app"}),
        ),
        ("/v1/auth/enable", json!({})),
    ];
    for (path, body) in steps {
        let (code, v) = n.post_as(path, a, body.clone()).await;
        assert_eq!(code, 200, "{path} {body}: {v}");
    }
    let (code, v) = n
        .post(
            "/v1/auth/authenticate",
            json!({"name": "alice", "password": "alicepw"}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    (n, v["token"].as_str().unwrap().to_owned())
}

fn put(key: &str) -> Value {
    json!({"key": key, "value": "v"})
}

#[tokio::test]
async fn users_get_their_roles_key_ranges() {
    let (n, alice) = setup().await;
    let t = Some(alice.as_str());
    assert_eq!(n.post_as("/v1/kv/put", t, put("app/x")).await.0, 200);
    let (code, v) = n.post_as("/v1/kv/put", t, put("other")).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let range = json!({"key": "app/", "range_end": "app0"});
    assert_eq!(n.post_as("/v1/kv/range", t, range).await.0, 200);
    let all = json!({"key": "", "prefix": true});
    assert_eq!(n.post_as("/v1/kv/range", t, all).await.0, 403);
    let txn = json!({
        "compare": [{"key": "other", "target": "version", "op": "=", "value": 0}],
        "success": [{"put": {"key": "app/y", "value": "1"}}]
    });
    let (code, v) = n.post_as("/v1/kv/txn", t, txn).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(n.get_as("/v1/watch?key=other", t).await.0, 403);
    // Root-only routes, and what any user may see.
    assert_eq!(n.get_as("/v1/auth/users", t).await.0, 403);
    assert_eq!(n.post_as("/v1/defragment", t, json!({})).await.0, 403);
    assert_eq!(n.get_as("/v1/status", t).await.0, 200);
    let (code, v) = n.get_as("/v1/auth/status", t).await;
    assert_eq!((code, v["enabled"].as_bool()), (200, Some(true)));
    // The admin token still does everything; no token, or a forged one, nothing.
    assert_eq!(
        n.post_as("/v1/kv/put", Some("admin"), put("other")).await.0,
        200
    );
    assert_eq!(n.post_as("/v1/kv/put", None, put("app/x")).await.0, 401);
    assert_eq!(
        n.post_as("/v1/kv/put", Some("weft.forged"), put("app/x"))
            .await
            .0,
        401
    );
    assert_eq!(n.get_as("/health", None).await.0, 200);
}

#[tokio::test]
async fn locks_and_leases_follow_the_same_permissions() {
    let (n, alice) = setup().await;
    let t = Some(alice.as_str());
    let (code, v) = n.post_as("/v1/lease/grant", t, json!({"ttl": 30})).await;
    assert_eq!(code, 200, "{v}");
    let lease = v["id"].as_i64().unwrap();
    let (code, v) = n
        .post_as(
            "/v1/lock/acquire",
            t,
            json!({"name": "jobs", "lease": lease}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = n
        .post_as(
            "/v1/lock/acquire",
            t,
            json!({"name": "other", "lease": lease, "try": true}),
        )
        .await;
    assert_eq!(code, 403);
    // Revoking a lease deletes its keys: a write on each. The admin puts a key alice may not
    // write on her lease.
    let mut other = put("admin-only");
    other["lease"] = json!(lease);
    assert_eq!(n.post_as("/v1/kv/put", Some("admin"), other).await.0, 200);
    assert_eq!(
        n.post_as("/v1/lease/revoke", t, json!({"id": lease}))
            .await
            .0,
        403
    );
    assert_eq!(
        n.post_as("/v1/lease/revoke", Some("admin"), json!({"id": lease}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn management_errors_have_codes() {
    let (n, alice) = setup().await;
    let a = Some("admin");
    let cases = [
        (
            json!({"op": "add", "name": "alice", "password": "x"}),
            409,
            "user_exists",
        ),
        (
            json!({"op": "grant", "name": "alice", "role": "nope"}),
            404,
            "role_not_found",
        ),
        (
            json!({"op": "revoke", "name": "alice", "role": "nope"}),
            409,
            "role_not_granted",
        ),
        (
            json!({"op": "delete", "name": "nobody"}),
            404,
            "user_not_found",
        ),
        (json!({"op": "delete", "name": "root"}), 400, "bad_request"),
        (json!({"op": "passwd", "name": "alice"}), 400, "bad_request"),
    ];
    for (body, code, want) in cases {
        let (c, v) = n.post_as("/v1/auth/user", a, body.clone()).await;
        assert_eq!(
            (c, v["error"]["code"].as_str()),
            (code, Some(want)),
            "{body}: {v}"
        );
    }
    let (c, v) = n
        .post(
            "/v1/auth/authenticate",
            json!({"name": "alice", "password": "bad"}),
        )
        .await;
    assert_eq!((c, v["error"]["code"].as_str()), (401, Some("auth_failed")));
    // A new password ends alice's tokens.
    let body = json!({"op": "passwd", "name": "alice", "password": "new"});
    assert_eq!(n.post_as("/v1/auth/user", a, body).await.0, 200);
    assert_eq!(n.get_as("/v1/status", Some(&alice)).await.0, 401);
    let (_, v) = n.get_as("/v1/auth/roles", a).await;
    assert_eq!(v["roles"][0]["name"], "app", "{v}");
    assert_eq!(v["roles"][0]["permissions"][0]["key"], "/weft/lock/jobs/");
    // Disabled: no user tokens; the admin token is needed again for everything.
    assert_eq!(n.post_as("/v1/auth/disable", a, json!({})).await.0, 200);
    assert_eq!(n.post_as("/v1/kv/put", None, put("x")).await.0, 401);
}

#[tokio::test]
async fn the_etcd_api_and_the_http_api_share_users_and_tokens() {
    let auth = Arc::new(weft_auth::Auth::in_memory(Default::default()));
    let n = common::node(ServerConfig {
        auth: Some(auth.clone()),
        ..Default::default()
    })
    .await;
    auth.user_add("root", Some("pw")).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.enable().await.unwrap();
    // A token from the shared store (as the etcd API's Authenticate gives) works here.
    let token = auth.authenticate("root", "pw").await.unwrap();
    assert_eq!(n.post_as("/v1/kv/put", Some(&token), put("k")).await.0, 200);
    assert_eq!(n.post_as("/v1/kv/put", None, put("k")).await.0, 401);
}

#[tokio::test]
async fn a_client_over_its_request_rate_gets_429() {
    let n = common::node(ServerConfig {
        max_requests_per_client: 1.0,
        ..Default::default()
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(n.get_as("/v1/status", None).await);
    }
    let limited: Vec<&(u16, Value)> = codes.iter().filter(|(c, _)| *c == 429).collect();
    // A burst of 2, then 1 a second: at most a few of 20 quick calls pass.
    assert!(limited.len() >= 10, "{codes:?}");
    assert_eq!(limited[0].1["error"]["code"], "rate_limited");
    assert_eq!(limited[0].1["error"]["retryable"], true);
    // Liveness probes are not counted.
    assert_eq!(n.get_as("/health", None).await.0, 200);
}
