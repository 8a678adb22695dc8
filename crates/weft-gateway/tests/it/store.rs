//! The gateway on a store: discovered upstreams, routes kept in the store, shared rate limits,
//! file reloads.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use tokio::time::Duration;
use weft_coord::{Instance, Registry, Session, SessionOptions};
use weft_store::Store;

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = weft_store::embedded::Embedded::open(dir.path(), Default::default())
        .await
        .unwrap();
    (Arc::new(s), dir)
}

fn endpoint_count(gw: &TestGateway) -> usize {
    gw.gw.status()["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .len()
}

async fn register(
    store: &Arc<dyn Store>,
    instance: Instance,
) -> (Session, weft_coord::Registration) {
    let session = Session::new(store.clone(), SessionOptions::default())
        .await
        .unwrap();
    let r = Registry::new(store.clone())
        .register(&session, "users", instance, None)
        .await
        .unwrap();
    (session, r)
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 4 s");
}

#[tokio::test]
async fn discovered_upstreams_follow_registrations() {
    let (store, _dir) = store().await;
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let toml = "[[route]]\nname = \"r\"\nupstream = \"users\"\n\n[[upstream]]\nname = \"users\"\nservice = \"users\"\ntags = [\"v2\"]\n";
    let gw = TestGateway::start(toml, Some(store.clone())).await;
    let r = get(gw.addr, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.reason(), "no-healthy-upstream");
    let mut ia = Instance::new("a", a.addr.to_string());
    ia.tags = vec!["v2".into()];
    let (_sa, ra) = register(&store, ia).await;
    // Wrong tag: never used.
    let (_sb, rb) = register(&store, Instance::new("b", b.addr.to_string())).await;
    until(|| endpoint_count(&gw) == 1).await;
    for _ in 0..5 {
        assert_eq!(get(gw.addr, "/").await.server(), "a");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    ra.deregister().await.unwrap();
    until(|| endpoint_count(&gw) == 0).await;
    assert_eq!(get(gw.addr, "/").await.status, 503);
    drop(rb);
}

#[tokio::test]
async fn routes_in_the_store_are_validated_and_hot_reloaded() {
    let (store, _dir) = store().await;
    let a = TestUpstream::start("a").await;
    let toml = format!(
        "[[upstream]]\nname = \"static\"\nendpoints = [{{ address = \"{}\" }}]\n",
        a.addr
    );
    let gw = TestGateway::start(&toml, Some(store.clone())).await;
    assert_eq!(get(gw.addr, "/new/x").await.status, 404);
    let route: weft_gateway::config::RouteConfig = serde_json::from_value(serde_json::json!({
        "name": "new", "path_prefix": "/new", "rewrite": "", "upstream": "static"
    }))
    .unwrap();
    gw.gw.put_route(route).await.unwrap();
    let addr = gw.addr;
    for _ in 0..200 {
        if get(addr, "/new/x").await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(addr, "/new/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/x");
    // Invalid routes are refused by the API, and skipped with a reason when written directly.
    let bad: weft_gateway::config::RouteConfig = serde_json::from_value(serde_json::json!({
        "name": "bad", "path_prefix": "nope", "upstream": "static"
    }))
    .unwrap();
    let e = gw.gw.put_route(bad).await.unwrap_err().to_string();
    assert!(
        e.contains("route[0].path_prefix") && e.contains("must start with '/'"),
        "{e}"
    );
    use weft_store::StoreExt;
    store
        .put_kv("/weft/gateway/routes/broken", "{\"name\": 1}")
        .await
        .unwrap();
    until(|| gw.gw.status()["errors"].as_array().unwrap().len() == 1).await;
    let err = gw.gw.status()["errors"][0].as_str().unwrap().to_string();
    assert!(
        err.contains("/weft/gateway/routes/broken") && err.contains("not a route"),
        "{err}"
    );
    assert_eq!(
        get(addr, "/new/x").await.status,
        200,
        "good routes keep working"
    );
    assert!(gw.gw.delete_route("new").await.unwrap());
    for _ in 0..200 {
        if get(addr, "/new/x").await.status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/new/x").await.status, 404);
}

#[tokio::test]
async fn global_rate_limits_are_shared_by_gateways() {
    let (store, _dir) = store().await;
    let a = TestUpstream::start("a").await;
    let toml = single_route(
        a.addr,
        "rate_limit = { per_second = 5, by = \"route\", global = true }",
    );
    let g1 = TestGateway::start(&toml, Some(store.clone())).await;
    let g2 = TestGateway::start(&toml, Some(store.clone())).await;
    // Start at the beginning of a wall-clock second so all requests fall in one window.
    loop {
        let sub = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if sub < 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1000 - sub as u64 + 5)).await;
    }
    let mut ok = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let r = get(gw.addr, "/").await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => assert_eq!(r.reason(), "rate-limited"),
            s => panic!("status {s}"),
        }
    }
    assert_eq!(ok, 5, "5 per second in all, not 5 per gateway");
}

#[tokio::test]
async fn config_file_changes_are_applied_and_bad_ones_kept_out() {
    let a = TestUpstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let v1 = format!(
        "[[route]]\nname = \"r\"\npath_prefix = \"/one\"\nrewrite = \"\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"{}\" }}]\n",
        a.addr
    );
    std::fs::write(&path, &v1).unwrap();
    let gw = TestGateway::start(&v1, None).await;
    let _watch = gw.gw.watch_file(path.clone(), Duration::from_millis(50));
    assert_eq!(get(gw.addr, "/one").await.status, 200);
    // Keep a connection busy across the reload: it must not be dropped.
    let addr = gw.addr;
    let slow = tokio::spawn(async move { get(addr, "/one/slow/400").await.status });
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&path, v1.replace("/one", "/two")).unwrap();
    until(|| gw.gw.generation() == 2).await;
    assert_eq!(get(gw.addr, "/two").await.status, 200);
    assert_eq!(get(gw.addr, "/one").await.status, 404);
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the request in flight during the reload completed"
    );
    // A broken file is reported and the running table stays.
    std::fs::write(&path, "[[route]]\nname = \"r\"\nupstream = \"missing\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.gw.generation(), 2);
    assert_eq!(get(gw.addr, "/two").await.status, 200);
    let e = gw.gw.reload_file(&path).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "gw.toml:1: route[0].upstream: upstream \"missing\" is not defined (defined: none)"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn discovery_protection_keeps_the_last_set_when_everything_vanishes() {
    let (store, _dir) = store().await;
    let a = TestUpstream::start("a").await;
    let toml = "[[route]]\nname = \"r\"\nupstream = \"users\"\n\n[[upstream]]\nname = \"users\"\nservice = \"users\"\nprotection_percent = 50\n";
    let gw = TestGateway::start(toml, Some(store.clone())).await;
    let (_s, ra) = register(&store, Instance::new("a", a.addr.to_string())).await;
    until(|| endpoint_count(&gw) == 1).await;
    ra.deregister().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint_count(&gw), 1);
    assert_eq!(get(gw.addr, "/").await.server(), "a");
}

#[tokio::test]
async fn admin_api_manages_stored_routes_behind_a_token() {
    let (store, _dir) = store().await;
    let a = TestUpstream::start("a").await;
    let toml = format!(
        "[[upstream]]\nname = \"static\"\nendpoints = [{{ address = \"{}\" }}]\n",
        a.addr
    );
    let gw = TestGateway::start(&toml, Some(store.clone())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(weft_gateway::serve_admin(
        listener,
        gw.gw.clone(),
        None,
        Some("s3cret".into()),
        None,
        std::future::pending(),
    ));
    let auth = [("authorization", "Bearer s3cret")];
    let route = br#"{"name": "x", "path_prefix": "/x", "rewrite": "", "upstream": "static"}"#;
    assert_eq!(
        send(admin, "PUT", "/routes/x", &[], route).await.status,
        401
    );
    assert_eq!(
        get(admin, "/health").await.status,
        200,
        "health needs no token"
    );
    let r = send(admin, "PUT", "/routes/y", &auth, route).await;
    assert_eq!(r.status, 400, "path and body name differ");
    let r = send(admin, "PUT", "/routes/x", &auth, b"{").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_route");
    let r = send(admin, "PUT", "/routes/x", &auth, route).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let addr = gw.addr;
    for _ in 0..200 {
        if get(addr, "/x/hello").await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/x/hello").await.json()["path"], "/hello");
    let st = get_h(admin, "/status", &auth).await;
    assert_eq!(st.status, 200);
    assert!(st.json()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "x"));
    assert_eq!(
        send(admin, "DELETE", "/routes/x", &auth, b"").await.status,
        200
    );
    assert_eq!(
        send(admin, "DELETE", "/routes/x", &auth, b"").await.status,
        404
    );
    assert_eq!(
        get_h(admin, "/metrics", &auth).await.status,
        404,
        "no renderer given"
    );
}
