//! The saga routes end to end over a real socket: submit, bad definitions, get, list, watch
//! (SSE), operator actions, and 503 without an orchestrator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};
use weft_saga::{Lazy, Orchestrator, Registry, StepOutcome};
use weft_server::{run, ServerConfig};

use crate::common;
use common::send;

struct Node {
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn node(with_sagas: bool, broken: Arc<AtomicBool>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn weft_store::Store> = Arc::new(
        weft_store::embedded::Embedded::open(dir.path(), Default::default())
            .await
            .unwrap(),
    );
    let mut reg = Registry::new();
    reg.register("ok", |_c| async {
        StepOutcome::Done(json!({"done": true}))
    });
    reg.register("declined", |_c| async {
        StepOutcome::Fail("declined".into())
    });
    reg.register("refund", move |_c| {
        let broken = broken.clone();
        async move {
            if broken.load(Ordering::SeqCst) {
                StepOutcome::Retry("refunds are down".into())
            } else {
                StepOutcome::Done(Value::Null)
            }
        }
    });
    let saga = with_sagas.then(|| {
        let s = store.clone();
        Lazy::new(
            store.clone(),
            "weft",
            Box::new(move || Orchestrator::builder(s.clone()).registry(reg.clone())),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = ServerConfig {
        saga,
        ..Default::default()
    };
    tokio::spawn(run(listener, store, cfg, std::future::pending()));
    Node {
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Node {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        send(self.http.get(format!("{}{path}", self.base))).await
    }
    /// The `saga` events of a watch, until it ends.
    async fn watch(&self, id: &str) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/v1/saga/watch?id={id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut body = r.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.split("\n\n")
            .filter(|f| f.contains("event: saga"))
            .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

fn def(pay: &str, refund_retries: u32) -> Value {
    json!({
        "name": "order",
        "steps": [
            {"name": "reserve", "action": {"local": {"name": "ok"}},
             "compensation": {"local": {"name": "refund"}},
             "compensation_retry": {"max_attempts": refund_retries, "backoff_ms": 1, "max_backoff_ms": 2}},
            {"name": "pay", "after": ["reserve"], "action": {"local": {"name": pay}},
             "no_compensation": true}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_through_the_api() {
    let broken = Arc::new(AtomicBool::new(false));
    let n = node(true, broken.clone()).await;
    // A bad definition: 400 naming the step, nothing stored.
    let mut bad = def("ok", 3);
    bad["steps"][1]["after"] = json!(["nope"]);
    let (st, e) = n
        .post("/v1/saga/submit", json!({"definition": bad, "id": "bad1"}))
        .await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_definition");
    assert_eq!(e["error"]["step"], "pay");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown step \"nope\""));
    let (st, e) = n.get("/v1/saga/get?id=bad1").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("saga_not_found"))
    );
    let (st, _) = n
        .post("/v1/saga/submit", json!({"definition": {"name": "x"}}))
        .await;
    assert_eq!(st, 400, "a definition that does not parse");
    // A saga that commits, followed over SSE to the end.
    let (st, r) = n
        .post(
            "/v1/saga/submit",
            json!({"definition": def("ok", 3), "input": {"n": 1}, "id": "s1"}),
        )
        .await;
    assert_eq!((st, r["id"].as_str()), (200, Some("s1")));
    let seen = n.watch("s1").await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "committed");
    assert_eq!(last["steps"]["reserve"]["result"], json!({"done": true}));
    assert_eq!(last["input"], json!({"n": 1}));
    assert_eq!(
        last["timeline"].as_array().unwrap().last().unwrap()["kind"],
        "committed"
    );
    // One that fails and parks because its compensation keeps failing; resumed by an operator.
    broken.store(true, Ordering::SeqCst);
    n.post(
        "/v1/saga/submit",
        json!({"definition": def("declined", 2), "id": "s2"}),
    )
    .await;
    let seen = n.watch("s2").await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "parked");
    assert_eq!(last["parked"]["step"], "reserve");
    assert_eq!(last["parked"]["attempts"], 2);
    let (_, l) = n.get("/v1/saga/list?state=parked").await;
    let ids: Vec<&str> = l["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["s2"]);
    let (st, e) = n.post("/v1/saga/resume", json!({"id": "s1"})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
    let (st, e) = n.post("/v1/saga/skip", json!({"id": "s2"})).await;
    assert_eq!(st, 400, "skip needs a step: {e}");
    broken.store(false, Ordering::SeqCst);
    let (st, _) = n.post("/v1/saga/resume", json!({"id": "s2"})).await;
    assert_eq!(st, 200);
    let last = n.watch("s2").await.pop().unwrap();
    assert_eq!(last["status"], "compensated");
    let kinds: Vec<&str> = last["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"parked") && kinds.contains(&"resumed"),
        "{kinds:?}"
    );
    let (st, e) = n.get("/v1/saga/list?state=nope").await;
    assert_eq!(st, 400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("running, compensating"));
    let (_, all) = n.get("/v1/saga/list").await;
    assert_eq!(all["sagas"].as_array().unwrap().len(), 2);
    let (_, m) = (
        0,
        n.http
            .get(format!("{}/metrics", n.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(m.contains("weft_sagas{status=\"committed\"} 1"), "{m}");
    assert!(m.contains("weft_sagas{status=\"compensated\"} 1"), "{m}");
}

#[tokio::test]
async fn without_an_orchestrator_the_routes_answer_503() {
    let n = node(false, Arc::default()).await;
    let (st, e) = n.get("/v1/saga/list").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
}

/// Until a saga is submitted the orchestrator does not run: reads answer, and the store gets
/// no write and no lease from it (an etcd client comparing revisions sees none).
#[tokio::test]
async fn reading_sagas_starts_nothing() {
    let n = node(true, Arc::default()).await;
    let (_, before) = n.get("/v1/status").await;
    let (st, l) = n.get("/v1/saga/list").await;
    assert_eq!(st, 200);
    assert_eq!(l["sagas"], json!([]));
    let (st, _) = n.get("/v1/saga/get?id=nope").await;
    assert_eq!(st, 404);
    let (_, after) = n.get("/v1/status").await;
    assert!(before["header"]["revision"].is_i64(), "{before}");
    assert_eq!(before["header"]["revision"], after["header"]["revision"]);
    let (_, leases) = n.get("/v1/lease/list").await;
    assert_eq!(leases["leases"], json!([]), "{leases}");
    // The first submission starts it.
    let (st, _) = n
        .post(
            "/v1/saga/submit",
            json!({"definition": def("ok", 3), "id": "first"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(n.watch("first").await.pop().unwrap()["status"], "committed");
}
