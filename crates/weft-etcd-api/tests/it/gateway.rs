//! etcd's JSON gateway, side by side: the same requests (curl's way: `POST /v3/...` with JSON
//! bodies, base64 keys) to a real etcd and to weft's etcd port, the answers compared field by
//! field (cluster and member ids, raft terms and lease ids aside); gRPC keeps working on the
//! same port.

use crate::common;

use std::time::Duration;

use serde_json::{json, Value};
use weft_store_etcd::testing::EtcdServer;

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Drops what differs between two servers by nature.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                o.remove(k);
            }
            if let Some(id) = o.get_mut("ID") {
                *id = json!("<id>");
            }
            for x in o.values_mut() {
                normalize(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

async fn call(http: &reqwest::Client, base: &str, path: &str, body: &str) -> (u16, Value) {
    let r = http
        .post(format!("{base}{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let mut v = serde_json::from_str(&text).unwrap_or(Value::Null);
    normalize(&mut v);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_answers_as_etcd_does() {
    let Some(etcd) = EtcdServer::start_or_skip().await else {
        return;
    };
    let weft = common::start().await;
    let http = reqwest::Client::new();
    let (foo, bar) = (b64("foo"), b64("bar"));
    let cases: Vec<(&str, String)> = vec![
        ("/v3/kv/put", json!({"key": foo, "value": bar}).to_string()),
        ("/v3/kv/range", json!({"key": foo}).to_string()),
        ("/v3/kv/put", json!({"key": foo, "value": b64("baz"), "prev_kv": true}).to_string()),
        ("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("z"), "keys_only": true}).to_string()),
        ("/v3/kv/range", json!({"key": foo, "count_only": true, "revision": "2"}).to_string()),
        ("/v3/kv/range", json!({"key": ""}).to_string()),
        ("/v3/kv/range", json!({"key": foo, "revision": 99}).to_string()),
        (
            "/v3/kv/txn",
            json!({
                "compare": [{"key": foo, "result": "EQUAL", "target": "VALUE", "value": b64("baz")}],
                "success": [{"requestRange": {"key": foo}}, {"request_put": {"key": b64("t"), "value": bar}}],
                "failure": [{"requestDeleteRange": {"key": foo}}]
            })
            .to_string(),
        ),
        (
            "/v3/kv/txn",
            json!({
                "compare": [{"key": foo, "result": "NOT_EQUAL", "target": "VERSION", "version": "0"}],
                "success": [{"request_txn": {"success": [{"request_put": {"key": b64("n"), "value": bar}}]}}]
            })
            .to_string(),
        ),
        ("/v3/kv/deleterange", json!({"key": b64("t"), "prev_kv": true}).to_string()),
        ("/v3/kv/deleterange", json!({"key": b64("nothing")}).to_string()),
        ("/v3/lease/grant", json!({"TTL": 30, "ID": 4660}).to_string()),
        ("/v3/kv/put", json!({"key": b64("leased"), "value": bar, "lease": 4660}).to_string()),
        ("/v3/lease/timetolive", json!({"ID": 4660, "keys": true}).to_string()),
        ("/v3/lease/revoke", json!({"ID": 4660}).to_string()),
        ("/v3/lease/revoke", json!({"ID": 4660}).to_string()),
        ("/v3/kv/compaction", json!({"revision": 3}).to_string()),
        ("/v3/kv/range", json!({"key": foo, "revision": 2}).to_string()),
        ("/v3/auth/authenticate", json!({"name": "root", "password": "x"}).to_string()),
        ("/v3/kv/range", "not json".to_string()),
    ];
    for (path, body) in &cases {
        let (es, mut e) = call(&http, &etcd.endpoint, path, body).await;
        let (ws, mut w) = call(&http, &weft.url, path, body).await;
        assert_eq!(ws, es, "{path} {body}: status; etcd {e}, weft {w}");
        if path == &"/v3/kv/range" && body == "not json" {
            // Go's and serde's parse messages differ; the code must not.
            assert_eq!(w["code"], e["code"], "{w} {e}");
            continue;
        }
        for v in [&mut e, &mut w] {
            // etcd 3.4 answers a lease TTL on a revoked lease with -1 or 0 by version.
            if let Some(o) = v.as_object_mut() {
                o.remove("grantedTTL");
            }
        }
        assert_eq!(w, e, "{path} {body}");
    }
    // A watch streams newline-separated results, the created one first.
    for base in [&etcd.endpoint, &weft.url] {
        let body = json!({"create_request": {"key": b64("w")}}).to_string();
        let mut r = http
            .post(format!("{base}/v3/watch"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let put = json!({"key": b64("w"), "value": bar}).to_string();
        call(&http, base, "/v3/kv/put", &put).await;
        let mut text = String::new();
        while text.lines().count() < 2 {
            let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["result"]["created"], true, "{base}: {text}");
        let ev = &lines[1]["result"]["events"][0];
        assert_eq!(ev["kv"]["key"], json!(b64("w")), "{base}: {text}");
        assert_eq!(ev["kv"]["value"], json!(bar), "{base}: {text}");
    }
    // gRPC still works on the same port.
    let mut c = common::client(&weft).await;
    assert_eq!(c.get("foo", None).await.unwrap().kvs()[0].value(), b"baz");
}
