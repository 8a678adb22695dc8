//! The HTTP API end to end over a real socket, on the embedded store.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use weft_server::{ServerConfig, OPENAPI, ROUTES};

use crate::common;
use common::node;

#[tokio::test]
async fn kv_txn_and_encodings() {
    let n = node(ServerConfig::default()).await;
    let (s, put) = n
        .post("/v1/kv/put", json!({"key": "app/a", "value": "1"}))
        .await;
    assert_eq!(s, 200, "{put}");
    let rev = put["header"]["revision"].as_i64().unwrap();
    n.post("/v1/kv/put", json!({"key": "app/b", "value": "2"}))
        .await;
    let (_, r) = n
        .post("/v1/kv/range", json!({"key": "app/", "prefix": true}))
        .await;
    assert_eq!(r["count"], 2);
    assert_eq!(r["kvs"][0]["value"], "1");
    assert_eq!(r["kvs"][0]["mod_revision"], rev);
    let (_, r) = n
        .post(
            "/v1/kv/range",
            json!({"key": "app/", "prefix": true, "limit": 1}),
        )
        .await;
    assert_eq!(
        (r["more"].as_bool(), r["kvs"].as_array().unwrap().len()),
        (Some(true), 1)
    );
    // txn: compare-and-swap.
    let cas = json!({
        "compare": [{"key": "app/a", "target": "value", "op": "=", "value": "1"}],
        "success": [{"put": {"key": "app/a", "value": "10"}}, {"range": {"key": "app/a"}}],
        "failure": [{"range": {"key": "app/a"}}]
    });
    let (s, t) = n.post("/v1/kv/txn", cas.clone()).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["succeeded"], true);
    assert_eq!(t["responses"][1]["range"]["kvs"][0]["value"], "10");
    let (_, t) = n.post("/v1/kv/txn", cas).await;
    assert_eq!(t["succeeded"], false);
    // A txn inside a txn: its compare sees the state before the outer put.
    let nested = json!({
        "success": [
            {"put": {"key": "nest/n", "value": "1"}},
            {"txn": {
                "compare": [{"key": "nest/n", "target": "version", "op": ">", "value": 0}],
                "success": [{"put": {"key": "nest/m", "value": "saw n"}}],
                "failure": [{"put": {"key": "nest/m", "value": "before n"}}, {"range": {"key": "nest/n"}}]
            }}
        ]
    });
    let (s, t) = n.post("/v1/kv/txn", nested).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["responses"][1]["txn"]["succeeded"], false, "{t}");
    assert_eq!(
        t["responses"][1]["txn"]["responses"][1]["range"]["kvs"][0]["value"], "1",
        "{t}"
    );
    // Binary data through base64; asking for it as UTF-8 is a clear error, not mangled data.
    let (s, _) = n
        .post(
            "/v1/kv/put",
            json!({"key": "Ymlu", "value": "//79", "encoding": "base64"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, r) = n
        .post("/v1/kv/range", json!({"key": "Ymlu", "encoding": "base64"}))
        .await;
    assert_eq!(r["kvs"][0]["value"], "//79");
    let (s, e) = n.post("/v1/kv/range", json!({"key": "bin"})).await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("base64"),
        "{e}"
    );
    let (s, d) = n
        .post(
            "/v1/kv/delete",
            json!({"key": "app/", "prefix": true, "prev_kv": true}),
        )
        .await;
    assert_eq!((s, d["deleted"].as_i64()), (200, Some(2)));
    n.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_errors() {
    let n = node(ServerConfig {
        max_body_bytes: 3 * 1024 * 1024,
        ..Default::default()
    })
    .await;
    let (s, e) = n.raw("/v1/kv/put", "{not json").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    let (s, e) = n
        .post("/v1/kv/put", json!({"key": "a", "valeu": "typo"}))
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("valeu"),
        "{e}"
    );
    let (s, e) = n.post("/v1/kv/put", json!({"key": "", "value": "x"})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{e}"
    );
    let (s, e) = n
        .post(
            "/v1/kv/put",
            json!({"key": "a", "value": "%%%", "encoding": "base64"}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = n
        .post(
            "/v1/kv/range",
            json!({"key": "a", "prefix": true, "from_key": true}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let big = "x".repeat(2 * 1024 * 1024);
    let (s, e) = n
        .post("/v1/kv/put", json!({"key": "a", "value": big}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{e}"
    );
    let huge = "x".repeat(4 * 1024 * 1024);
    let (s, _) = n
        .post("/v1/kv/put", json!({"key": "a", "value": huge}))
        .await;
    assert_eq!(s, 413);
    let cmp = json!({"compare": [{"key": "a", "target": "version", "op": "~", "value": 1}]});
    let (s, e) = n.post("/v1/kv/txn", cmp).await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("allowed"),
        "{e}"
    );
    let (s, e) = n
        .post("/v1/kv/range", json!({"key": "a", "revision": 99}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("future_revision")),
        "{e}"
    );
    let r = n
        .http
        .get(format!("{}/v1/nope", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = n
        .http
        .get(format!("{}/v1/watch?key=a&start_revision=abc", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    n.shutdown().await;
}

#[tokio::test]
async fn leases_over_http() {
    let n = node(ServerConfig::default()).await;
    let (s, g) = n.post("/v1/lease/grant", json!({"ttl": 60})).await;
    assert_eq!(s, 200, "{g}");
    let id = g["id"].as_i64().unwrap();
    assert!(
        id > 0 && id < (1i64 << 53),
        "ids are exact in JSON numbers: {id}"
    );
    n.post(
        "/v1/kv/put",
        json!({"key": "svc/x", "value": "1", "lease": id}),
    )
    .await;
    let (_, t) = n
        .post("/v1/lease/ttl", json!({"id": id, "keys": true}))
        .await;
    assert_eq!(
        (t["granted_ttl"].as_i64(), t["keys"][0].as_str()),
        (Some(60), Some("svc/x"))
    );
    let (_, k) = n.post("/v1/lease/keepalive", json!({"id": id})).await;
    assert_eq!(k["ttl"], 60);
    let r: Value = n
        .http
        .get(format!("{}/v1/lease/list", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["leases"].as_array().unwrap().contains(&json!(id)));
    let (s, _) = n.post("/v1/lease/revoke", json!({"id": id})).await;
    assert_eq!(s, 200);
    let (_, r) = n.post("/v1/kv/range", json!({"key": "svc/x"})).await;
    assert_eq!(r["count"], 0);
    let (s, e) = n.post("/v1/lease/keepalive", json!({"id": id})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("lease_not_found")),
        "{e}"
    );
    n.shutdown().await;
}

async fn sse_events(resp: reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("sse event")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let mut ev = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !ev.is_empty() {
                out.push((ev, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn watch_as_server_sent_events_and_shutdown_ends_streams() {
    let n = node(ServerConfig::default()).await;
    let (_, p) = n
        .post("/v1/kv/put", json!({"key": "w/a", "value": "0"}))
        .await;
    let first = p["header"]["revision"].as_i64().unwrap();
    let resp = n
        .http
        .get(format!(
            "{}/v1/watch?key=w/&prefix=true&prev_kv=true&start_revision={first}",
            n.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    n.post("/v1/kv/put", json!({"key": "w/a", "value": "1"}))
        .await;
    n.post("/v1/kv/delete", json!({"key": "w/a"})).await;
    let evs = sse_events(resp, 3).await;
    let all: Vec<&Value> = evs
        .iter()
        .flat_map(|(_, d)| d["events"].as_array().unwrap())
        .collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["kv"]["value"], "0");
    assert_eq!(all[1]["prev_kv"]["value"], "0");
    assert_eq!(all[2]["type"], "DELETE");

    // Compacted start revision: one error event carrying the compact revision.
    let (_, p) = n
        .post("/v1/kv/put", json!({"key": "w/b", "value": "x"}))
        .await;
    let now = p["header"]["revision"].as_i64().unwrap();
    n.post("/v1/kv/compact", json!({"revision": now})).await;
    let resp = n
        .http
        .get(format!(
            "{}/v1/watch?key=w/&prefix=true&start_revision=1",
            n.base
        ))
        .send()
        .await
        .unwrap();
    let evs = sse_events(resp, 1).await;
    assert_eq!(evs[0].0, "error");
    assert_eq!(evs[0].1["error"]["code"], "compacted");
    assert_eq!(evs[0].1["error"]["compact_revision"], now);

    // An open watch does not keep the server from shutting down.
    let _open = n
        .http
        .get(format!("{}/v1/watch?key=w/&prefix=true", n.base))
        .send()
        .await
        .unwrap();
    n.shutdown().await;
}

#[tokio::test]
async fn bearer_token_guards_everything_but_health() {
    let n = node(ServerConfig {
        token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let (s, e) = n
        .post("/v1/kv/put", json!({"key": "a", "value": "1"}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let r = n
        .http
        .post(format!("{}/v1/kv/put", n.base))
        .bearer_auth("wrong")
        .json(&json!({"key": "a", "value": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = n
        .http
        .post(format!("{}/v1/kv/put", n.base))
        .bearer_auth("s3cret")
        .json(&json!({"key": "a", "value": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A backup holds every key: it needs the token too.
    for (method, path) in [("GET", "/v1/snapshot"), ("POST", "/v1/defragment")] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}{path}", n.base);
        let r = n.http.request(m.clone(), &url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let r = n
            .http
            .request(m, &url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        if path == "/v1/snapshot" {
            let rev: i64 = r.headers()["weft-revision"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(rev >= 2, "{rev}");
            assert_eq!(r.headers()["weft-backup-format"], "weft-snapshot-v1");
            let len = r.content_length().unwrap();
            let body = r.bytes().await.unwrap();
            assert_eq!(body.len() as u64, len);
            assert_eq!(&body[..8], b"WEFTSNP1");
        }
    }
    let r = n
        .http
        .get(format!("{}/health", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    n.shutdown().await;
}

#[tokio::test]
async fn openapi_lists_every_route_and_metrics_are_served() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    for (method, path) in ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from openapi.json"
        );
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        ROUTES.len(),
        "openapi.json documents a route that does not exist"
    );
    let n = node(ServerConfig::default()).await;
    let served: Value = n
        .http
        .get(format!("{}/openapi.json", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc);
    n.post("/v1/kv/put", json!({"key": "m", "value": "1"}))
        .await;
    let text = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("weft_http_requests_total"), "{text}");
    assert!(text.contains("weft_store_revision"), "{text}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_http_end_with_the_clients_lease() {
    let n = node(ServerConfig::default()).await;
    let (_, a) = n.post("/v1/lease/grant", json!({"ttl": 2})).await;
    let (_, b) = n.post("/v1/lease/grant", json!({"ttl": 30})).await;
    let (la, lb) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let (s, g) = n
        .post("/v1/lock/acquire", json!({"name": "job", "lease": la}))
        .await;
    assert_eq!(s, 200, "{g}");
    let token = g["fencing_token"].as_i64().unwrap();
    let (s, e) = n
        .post(
            "/v1/lock/acquire",
            json!({"name": "job", "lease": lb, "try": true}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("would_block")),
        "{e}"
    );
    let (s, e) = n
        .post(
            "/v1/lock/acquire",
            json!({"name": "job", "lease": lb, "timeout_ms": 200}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (408, Some("timeout")),
        "{e}"
    );
    let (s, e) = n
        .post("/v1/lock/acquire", json!({"name": "job", "lease": 12345}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("lease_not_found")),
        "{e}"
    );
    // A never keeps its lease alive: the node must not either, so B gets the lock after A's TTL.
    let start = std::time::Instant::now();
    let (s, g2) = n
        .post(
            "/v1/lock/acquire",
            json!({"name": "job", "lease": lb, "timeout_ms": 10000}),
        )
        .await;
    assert_eq!(s, 200, "{g2}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(g2["fencing_token"].as_i64().unwrap() > token);
    let (_, r) = n
        .post(
            "/v1/lock/release",
            json!({"key": g2["key"], "fencing_token": g2["fencing_token"]}),
        )
        .await;
    assert_eq!(r["released"], true);
    let (_, r) = n
        .post(
            "/v1/lock/release",
            json!({"key": g2["key"], "fencing_token": g2["fencing_token"]}),
        )
        .await;
    assert_eq!(r["released"], false);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_and_services_over_http() {
    let n = node(ServerConfig::default()).await;
    let (_, a) = n.post("/v1/lease/grant", json!({"ttl": 30})).await;
    let la = a["id"].as_i64().unwrap();
    let observe = n
        .http
        .get(format!("{}/v1/election/observe?name=main", n.base))
        .send()
        .await
        .unwrap();
    let (s, c) = n
        .post(
            "/v1/election/campaign",
            json!({"name": "main", "lease": la, "value": "node-a"}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let (_, l) = n
        .post(
            "/v1/election/proclaim",
            json!({"key": c["key"], "term": c["term"], "lease": la, "value": "node-a2"}),
        )
        .await;
    assert_eq!(l, json!({}));
    let leader: Value = n
        .http
        .get(format!("{}/v1/election/leader?name=main", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader["leader"]["value"], "node-a2");
    assert_eq!(leader["leader"]["term"], c["term"]);
    let evs = sse_events(observe, 3).await;
    assert_eq!(evs[0].1, Value::Null);
    assert_eq!(evs[2].1["value"], "node-a2");
    let (s, _) = n
        .post(
            "/v1/election/resign",
            json!({"key": c["key"], "term": c["term"], "lease": la}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, e) = n
        .post(
            "/v1/election/proclaim",
            json!({"key": c["key"], "term": c["term"], "lease": la, "value": "x"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("ownership_lost")),
        "{e}"
    );

    let watch = n
        .http
        .get(format!("{}/v1/svc/watch?service=api", n.base))
        .send()
        .await
        .unwrap();
    let inst = json!({"id": "i1", "address": "10.0.0.1:80", "tags": ["blue"]});
    let (s, r) = n
        .post(
            "/v1/svc/register",
            json!({"service": "api", "lease": la, "instance": inst}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let list: Value = n
        .http
        .get(format!("{}/v1/svc/list?service=api", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["instances"][0]["tags"][0], "blue");
    assert_eq!(list["instances"][0]["health"], "passing");
    n.post("/v1/lease/revoke", json!({"id": la})).await;
    let evs = sse_events(watch, 3).await;
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, vec!["reset", "added", "removed"]);
    let (s, e) = n
        .post(
            "/v1/svc/register",
            json!({"service": "a/b", "lease": la, "instance": inst}),
        )
        .await;
    assert!(s == 400 || s == 404, "{s} {e}");
    n.shutdown().await;
}

#[test]
fn latency_histograms_render_as_buckets() {
    weft_server::install_metrics();
    let h = metrics::histogram!("weft_test_latency_seconds");
    h.record(0.003);
    h.record(0.003);
    h.record(7.0);
    let out = weft_server::render_metrics();
    assert!(
        out.contains("weft_test_latency_seconds_bucket{le=\"0.005\"} 2"),
        "{out}"
    );
    assert!(
        out.contains("weft_test_latency_seconds_bucket{le=\"+Inf\"} 3"),
        "{out}"
    );
    assert!(out.contains("weft_test_latency_seconds_count 3"), "{out}");
}

/// A burst of connects larger than the old backlog (128) completes while nobody accepts:
/// the listener's queue holds them (the kernel caps the backlog at `net.core.somaxconn`,
/// 4096 by default).
#[tokio::test]
async fn the_listen_backlog_takes_a_burst_of_connects() {
    let l = weft_server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let n = 500.min(somaxconn.saturating_sub(8));
    assert!(
        n > 200,
        "net.core.somaxconn is {somaxconn}: too small to show anything"
    );
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(800),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        }));
    }
    let mut ok = 0;
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Ok(s)) = t.await.unwrap() {
            ok += 1;
            held.push(s);
        }
    }
    assert_eq!(ok, n, "{} of {n} connects waited for a SYN retry", n - ok);
    drop(l);
}
