//! The routes the dashboard reads beyond the store's: registered gateways and their status
//! (read through each gateway's admin API, with the caller's token forwarded, or directly for
//! a gateway inside the node), and the sharding analysis.

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use weft_server::{LocalGateway, ServerConfig};

use crate::common;
use common::{node, Node};

/// A stand-in admin API: `GET /status` answers a fixed document to the right token only.
async fn fake_admin(token: &'static str) -> String {
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move |h: HeaderMap| async move {
            let ok = h
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == format!("Bearer {token}").as_bytes());
            if ok {
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"routes": [{"name": "orders", "breaker": "open"}]})),
                )
            } else {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "unauthorized"})),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

async fn register(n: &Node, token: &str, id: &str, admin: &str) {
    let (s, lease) = n
        .post_as("/v1/lease/grant", Some(token), json!({"ttl": 60}))
        .await;
    assert_eq!(s, 200, "{lease}");
    let body = json!({"service": "weft-gateway", "lease": lease["id"], "instance": {
        "id": id, "address": admin, "version": "0.1.0",
        "metadata": {"listen": "127.0.0.1:8080", "embedded": "false", "pid": "42"}}});
    let (s, v) = n.post_as("/v1/svc/register", Some(token), body).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn gateways_are_listed_and_read_through_their_admin_api() {
    let local = LocalGateway {
        id: "node-gw".into(),
        status: Arc::new(|| json!({"routes": [], "local": true})),
    };
    let n = node(ServerConfig {
        token: Some("s3cret".into()),
        local_gateway: Some(local),
        ..Default::default()
    })
    .await;
    let t = Some("s3cret");
    register(&n, "s3cret", "gw-a", &fake_admin("s3cret").await).await;
    register(&n, "s3cret", "gw-other-token", &fake_admin("other").await).await;
    register(&n, "s3cret", "gw-no-admin", "").await;
    // An address nobody listens on: bind, take the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    register(&n, "s3cret", "gw-dead", &dead).await;

    let (s, v) = n.get_as("/v1/gateways", t).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-a", "gw-dead", "gw-no-admin", "gw-other-token"]);
    let a = &v["gateways"][0];
    assert_eq!(a["listen"], "127.0.0.1:8080");
    assert_eq!(a["pid"], 42);
    assert_eq!(a["embedded"], false);
    assert_eq!(v["gateways"][2]["admin"], Value::Null);

    let (s, v) = n.get_as("/v1/gateway/status?id=gw-a", t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["routes"][0]["breaker"], "open");
    let (s, v) = n.get_as("/v1/gateway/status?id=node-gw", t).await;
    assert_eq!((s, &v["local"]), (200, &json!(true)), "{v}");
    // The caller's token goes to the gateway; another token there is a 502 saying so.
    let (s, v) = n.get_as("/v1/gateway/status?id=gw-other-token", t).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["code"], "bad_gateway");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("401"),
        "{v}"
    );
    let (s, v) = n.get_as("/v1/gateway/status?id=gw-dead", t).await;
    assert_eq!(s, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{v}"
    );
    let (s, v) = n.get_as("/v1/gateway/status?id=gw-no-admin", t).await;
    assert_eq!(s, 503, "{v}");
    let (s, v) = n.get_as("/v1/gateway/status?id=nope", t).await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");
    let (s, _) = n.get_as("/v1/gateway/status", t).await;
    assert_eq!(s, 400);
    // The node's own token still guards these routes.
    let (s, _) = n.get_as("/v1/gateway/status?id=gw-a", None).await;
    assert_eq!(s, 401);
}

/// A gateway whose admin API serves TLS is read over https, trusting the configured CA; a
/// node that does not trust it answers 502 with the TLS error.
#[tokio::test]
async fn a_gateway_admin_api_over_tls_is_read_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = weft_tls::testing::Pki::new(dir.path()).unwrap();
    let acceptor = weft_tls::Acceptor::load(
        weft_tls::ServerFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        },
        &[b"http/1.1"],
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("https://{}", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(|| async { axum::Json(json!({"routes": [], "over": "tls"})) }),
    );
    let listener = weft_server::listener::TlsListener::new(l, acceptor, 0).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let trust = weft_tls::ClientFiles {
        ca: Some(pki.ca_cert.clone()),
        ..Default::default()
    };
    let cfg = weft_tls::client_config(&trust, &[b"http/1.1"]).unwrap();
    let n = node(ServerConfig {
        gateway_tls: Some(Arc::new(cfg)),
        ..Default::default()
    })
    .await;
    register(&n, "", "gw-tls", &admin).await;
    let (s, v) = n.get_as("/v1/gateway/status?id=gw-tls", None).await;
    assert_eq!((s, &v["over"]), (200, &json!("tls")), "{v}");
    // Without that CA (the system's roots): refused, saying why.
    let n2 = node(ServerConfig::default()).await;
    register(&n2, "", "gw-tls", &admin).await;
    let (s, v) = n2.get_as("/v1/gateway/status?id=gw-tls", None).await;
    assert_eq!(s, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("TLS"),
        "{v}"
    );
}

#[tokio::test]
async fn shard_analysis_compares_algorithms_and_refuses_bad_input() {
    let n = node(ServerConfig::default()).await;
    let (s, v) = n
        .get_as(
            "/v1/shard/analyze?algo=ring,jump&nodes=4&keys=10000&add=1",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a = v["analyses"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["algo"], "ring");
    let loads = a[1]["loads"].as_array().unwrap();
    assert_eq!(loads.len(), 4);
    let total: u64 = loads.iter().map(|l| l["keys"].as_u64().unwrap()).sum();
    assert_eq!(total, 10000);
    // Jump moves about the ideal 1/5 of the keys when a fifth node joins.
    let moved = a[1]["moved"].as_f64().unwrap();
    assert!((0.15..0.25).contains(&moved), "{moved}");
    for (q, want) in [
        ("nodes=0", "nodes 0 is out of range"),
        ("keys=2000000", "keys 2000000 is out of range"),
        ("algo=magic", "unknown algorithm \"magic\""),
        ("nodes=2&weights=1,2,3", "give one weight per node"),
        ("add=1&remove=1", "not both"),
        ("vnodes=0", "vnodes 0 is out of range"),
        ("bogus=1", "unknown field"),
    ] {
        let (s, v) = n.get_as(&format!("/v1/shard/analyze?{q}"), None).await;
        assert_eq!(s, 400, "{q}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{q}: {m}");
    }
}

/// The history is sampled every 2 s with the backend's counters when the node gives them
/// (real time: the node is served over a real socket).
#[tokio::test]
async fn history_keeps_samples_of_the_revision_and_counters() {
    let counters: weft_server::history::CounterSource =
        Arc::new(|| weft_server::history::Counters {
            reads: 7,
            watch_events: 3,
            fsyncs: 2,
        });
    let n = node(ServerConfig {
        counters: Some(counters),
        ..Default::default()
    })
    .await;
    n.post_as("/v1/kv/put", None, json!({"key": "a", "value": "1"}))
        .await;
    // The first sample is taken at once, the second 2 s later (waited for up to 10 s: a
    // loaded machine may run the sampler late).
    let started = std::time::Instant::now();
    let v = loop {
        let (s, v) = n.get_as("/v1/history", None).await;
        assert_eq!(s, 200, "{v}");
        if v["samples"].as_array().unwrap().len() >= 2 {
            break v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "fewer than 2 samples after 10 s: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(v["interval_ms"], 2000);
    let samples = v["samples"].as_array().unwrap();
    // Taken 2 s apart, not faster.
    let gap = samples[1]["at_ms"].as_u64().unwrap() - samples[0]["at_ms"].as_u64().unwrap();
    assert!(gap >= 1900, "samples {gap} ms apart: {v}");
    let last = samples.last().unwrap();
    assert_eq!(last["revision"], 2, "the put's revision: {v}");
    assert_eq!(
        (last["reads"].as_u64(), last["fsyncs"].as_u64()),
        (Some(7), Some(2))
    );
}
