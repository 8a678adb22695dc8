//! Sagas through the node as real processes: `kill -9` of `weft up` during 200 concurrent
//! HTTP sagas against the example shop's services, then a restart: every saga reaches a final
//! state and the shop's books balance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;
use common::*;

#[path = "../../../weft-saga/examples/shop/service.rs"]
#[allow(dead_code)]
mod shop;

const SAGAS: usize = 200;

#[cfg(feature = "etcd")]
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The example shop (credit limit 1000) on a free loopback port: the shop and its base URL.
fn start_shop(
    rt: &tokio::runtime::Runtime,
    latency: Duration,
    fail_every: u64,
) -> (std::sync::Arc<shop::Shop>, String) {
    let shop = shop::Shop::new(1000, latency, fail_every);
    let base = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = shop::router(shop.clone());
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    });
    (shop, base)
}

async fn submit(http: &reqwest::Client, ep: &str, def: &Value, i: usize) -> reqwest::Result<u16> {
    // Every fourth order is over the credit limit: its payment is declined.
    let amount = if i.is_multiple_of(4) {
        5000
    } else {
        100 + i as u64
    };
    let r = http
        .post(format!("{ep}/v1/saga/submit"))
        .json(&json!({"id": format!("s{i}"), "definition": def, "input": {"qty": 1, "amount": amount}}))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// GET `url`, answered with JSON.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn status(http: &reqwest::Client, ep: &str, id: &str) -> Option<String> {
    let r = http
        .get(format!("{ep}/v1/saga/get?id={id}"))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v["status"].as_str().map(str::to_string)
}

#[test]
fn kill_9_during_200_http_sagas_then_restart_finishes_them_all() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (shop, base) = start_shop(&rt, Duration::from_millis(50), 7);
    let def = shop::order_saga(&base);
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let http = reqwest::Client::new();
    // Submit all 200 at once; kill -9 the node while they run.
    let acked: BTreeMap<usize, bool> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..SAGAS {
            let (http, ep, def) = (http.clone(), ep.clone(), def.clone());
            tasks.push(tokio::spawn(async move {
                (i, matches!(submit(&http, &ep, &def, i).await, Ok(200)))
            }));
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            out.insert(i, ok);
        }
        out
    });
    let in_flight = rt.block_on(async {
        let mut n = 0;
        for st in ["running", "compensating"] {
            let v: Value = get_json(&http, format!("{ep}/v1/saga/list?state={st}&limit=0")).await;
            n += v["sagas"].as_array().map_or(0, Vec::len);
        }
        n
    });
    drop(node); // kill -9
    let acked_n = acked.values().filter(|ok| **ok).count();
    eprintln!("{acked_n} sagas acknowledged, {in_flight} unfinished at kill -9");
    assert!(
        acked_n >= SAGAS / 2,
        "most submissions were acknowledged before the kill"
    );
    assert!(in_flight > 0, "the kill must catch sagas mid-flight");
    let node = restart(dir.path(), &ep);
    let t0 = Instant::now();
    rt.block_on(async {
        // A submission the kill cut off is retried with its id: idempotent.
        for (i, ok) in &acked {
            if !ok {
                assert_eq!(submit(&http, &node.endpoint, &def, *i).await.unwrap(), 200);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut left: Vec<usize> = (0..SAGAS).collect();
        while !left.is_empty() {
            assert!(Instant::now() < deadline, "unfinished after 60 s: {left:?}");
            let mut still = Vec::new();
            for i in left {
                match status(&http, &node.endpoint, &format!("s{i}"))
                    .await
                    .as_deref()
                {
                    Some("committed" | "compensated") => {}
                    Some("running" | "compensating") | None => still.push(i),
                    Some(other) => panic!("saga s{i} is {other}"),
                }
            }
            left = still;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eprintln!(
        "all {SAGAS} sagas final {:?} after the restart",
        t0.elapsed()
    );
    let books = shop.ledger();
    for i in 0..SAGAS {
        let id = format!("s{i}");
        let st = rt.block_on(status(&http, &node.endpoint, &id)).unwrap();
        let want = if i.is_multiple_of(4) {
            "compensated"
        } else {
            "committed"
        };
        if st != want {
            let v: Value = rt.block_on(async {
                get_json(&http, format!("{}/v1/saga/get?id={id}", node.endpoint)).await
            });
            panic!("{id} is {st}, not {want}: {:#}", v["timeline"]);
        }
        assert_eq!(
            shop::outcome(&books, &id),
            Some(st == "committed"),
            "{id} is {st} but the books say otherwise: order {:?}, held {:?}, charged {:?}, shipped {}",
            books.orders.get(&id),
            books.held.get(&id),
            books.charged.get(&id),
            books.shipped.contains(&id)
        );
    }
    let retried = books.calls.values().sum::<u64>();
    eprintln!("the shop served {retried} calls (every 7th answered 503 first)");
}

/// Two nodes share one etcd; the one running the sagas is killed with `kill -9`; the other
/// takes them over when its lease expires and finishes them within the TTL + 1 s.
#[cfg(feature = "etcd")]
#[test]
fn two_orchestrators_on_etcd_take_over_from_a_dead_one() {
    use weft_store_etcd::testing::EtcdServer;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(etcd) = rt.block_on(EtcdServer::start_or_skip()) else {
        return;
    };
    // Slow enough that every saga is mid-flight at the kill.
    let (shop, base) = start_shop(&rt, Duration::from_millis(300), 0);
    let def = shop::order_saga(&base);
    let node = |name: &str| {
        start_with(&[
            "--etcd-endpoints".as_ref(),
            etcd.endpoint.as_ref(),
            "--saga-name".as_ref(),
            name.as_ref(),
            "--saga-ttl".as_ref(),
            "2".as_ref(),
        ])
    };
    let a = node("a");
    let b = node("b");
    let http = reqwest::Client::new();
    let n = 20;
    rt.block_on(async {
        for i in 0..n {
            assert_eq!(submit(&http, &a.endpoint, &def, i).await.unwrap(), 200);
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    drop(a); // kill -9
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..n {
            loop {
                let st = status(&http, &b.endpoint, &format!("s{i}")).await;
                if matches!(st.as_deref(), Some("committed" | "compensated")) {
                    break;
                }
                assert!(Instant::now() < deadline, "s{i} is {st:?} after 30 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let took = killed.elapsed();
    let killed_ms = now_ms() - took.as_millis() as u64;
    // When the other node took each saga over (its timeline says so).
    let mut latest = 0;
    let mut taken = 0;
    rt.block_on(async {
        for i in 0..n {
            let v: Value = get_json(&http, format!("{}/v1/saga/get?id=s{i}", b.endpoint)).await;
            let timeline = v["timeline"].as_array().unwrap();
            let Some(t) = timeline.iter().find(|e| e["kind"] == "taken_over") else {
                // b may claim a new saga as its share before a dies: then nothing is taken
                // over, and b ran it from the start.
                let by_b = timeline.iter().any(|e| {
                    e["kind"] == "claimed" && e["detail"].as_str().unwrap_or("").starts_with("by b")
                });
                assert!(by_b, "s{i} was neither taken over nor claimed by b: {v}");
                continue;
            };
            assert!(t["detail"].as_str().unwrap().starts_with("by b"), "{t}");
            taken += 1;
            latest = latest.max(t["at_ms"].as_u64().unwrap().saturating_sub(killed_ms));
        }
    });
    assert!(taken > 0, "no saga was taken over after the kill");
    eprintln!(
        "{taken} of {n} sagas taken over by the other node at most {latest} ms after kill -9 and finished after {took:?} (TTL 2 s, each step 300 ms)"
    );
    assert!(
        latest <= 3000,
        "taken over {latest} ms after the kill (TTL 2 s + 1 s)"
    );
    let books = shop.ledger();
    for i in 0..n {
        let id = format!("s{i}");
        assert_eq!(
            shop::outcome(&books, &id),
            Some(!i.is_multiple_of(4)),
            "{id}"
        );
    }
}

/// The CLI end to end: `weft saga submit --wait` exits 0 for a committed saga and 1 for a
/// compensated one, `status` shows the steps and the timeline, `list --state` filters, a bad
/// definition is refused with the step named, and an unknown id is an error.
#[test]
fn the_saga_cli() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (shop, base) = start_shop(&rt, Duration::from_millis(0), 0);
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = &node.endpoint;
    let def = dir.path().join("order.json");
    std::fs::write(&def, shop::order_saga(&base).to_string()).unwrap();
    let def = def.to_str().unwrap();
    let (code, out, err) = weft(
        &[
            "saga",
            "submit",
            def,
            "--input",
            r#"{"qty": 1, "amount": 120}"#,
            "--id",
            "ok1",
            "--wait",
        ],
        ep,
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("saga ok1 (order): committed"), "{out}");
    let (code, out, _) = weft(
        &[
            "saga",
            "submit",
            def,
            "--input",
            r#"{"qty": 1, "amount": 5000}"#,
            "--id",
            "no1",
            "--wait",
        ],
        ep,
        None,
    );
    assert_eq!(code, 1, "a compensated saga is not a success: {out}");
    assert!(
        out.contains("compensated") && out.contains("HTTP 402"),
        "{out}"
    );
    let (code, out, _) = weft(&["saga", "status", "no1"], ep, None);
    assert_eq!(code, 0);
    for line in [
        "charge_payment",
        "failed",
        "reserve_stock",
        "compensated",
        "timeline:",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let (_, out, _) = weft(&["saga", "list", "--state", "committed"], ep, None);
    assert_eq!(out.trim(), "ok1 committed order");
    let (code, _, err) = weft(&["saga", "status", "nope"], ep, None);
    assert_eq!(code, 1);
    assert!(err.contains("saga_not_found"), "{err}");
    let (code, _, err) = weft(
        &["saga", "submit", "-"],
        ep,
        Some(
            r#"{"name": "x", "steps": [{"name": "a", "after": ["b"], "action": {"local": {"name": "f"}}, "no_compensation": true}]}"#,
        ),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid_definition") && err.contains(r#"step "a""#),
        "{err}"
    );
    let books = shop.ledger();
    assert_eq!(shop::outcome(&books, "ok1"), Some(true));
    assert_eq!(shop::outcome(&books, "no1"), Some(false));
}
