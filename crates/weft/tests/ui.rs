//! The dashboard in a real browser (headless Chromium, Debian's `chromium`): a node with a
//! key, a lease, a registered service, a held lock, an election and a queue;
//! each page is rendered by the browser (its script run against the node's API) and what it
//! shows is checked; a screenshot per page is saved under `target/ui-screenshots/`. Under
//! `CI=true` a missing browser is a failure.

mod common;

use std::process::Command;

use base64::Engine;
use common::start;
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// The page's text once its script has run.
fn render(browser: &str, url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("run chromium");
    let html = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        html.contains("data-ready=\"1\""),
        "the page never finished rendering: {html}"
    );
    html
}

fn screenshot(browser: &str, url: &str, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.png"));
    let ok = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
        ])
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok && file.exists(), "no screenshot of {name}");
}

async fn post(http: &reqwest::Client, ep: &str, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{ep}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_nodes_state_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipping: chromium is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let http = reqwest::Client::new();
    for n in [1, 2, 3] {
        let v = format!("{{\"replicas\":{n}}}");
        post(
            &http,
            &ep,
            "/v1/kv/put",
            json!({"key": "app/config", "value": v}),
        )
        .await;
    }
    let lease = post(&http, &ep, "/v1/lease/grant", json!({"ttl": 300})).await["id"]
        .as_i64()
        .unwrap();
    post(&http, &ep, "/v1/svc/register", json!({"service": "users", "lease": lease, "instance": {"id": "users-1", "address": "10.0.0.7:8080", "tags": ["blue"]}})).await;
    let holder = post(
        &http,
        &ep,
        "/v1/lock/acquire",
        json!({"name": "billing", "lease": lease}),
    )
    .await;
    assert!(holder.to_string().contains("billing"), "{holder}");
    post(
        &http,
        &ep,
        "/v1/election/campaign",
        json!({"name": "scheduler", "lease": lease, "value": "node-a"}),
    )
    .await;
    post(
        &http,
        &ep,
        "/v1/queue/topic/create",
        json!({"name": "orders", "config": {"partitions": 2}}),
    )
    .await;
    post(&http, &ep, "/v1/queue/publish", json!({"topic": "orders", "messages": [{"key": null, "value": b64("o1")}, {"key": null, "value": b64("o2")}]})).await;
    let checks: &[(&str, &[&str])] = &[
        (
            "overview",
            &["revision", "compact revision", "Writes per second"],
        ),
        ("keys", &["app/config", "keys at revision"]),
        ("leases", &[&lease.to_string()]),
        ("services", &["users", "users-1", "10.0.0.7:8080", "blue"]),
        ("locks", &["billing", "scheduler", "node-a"]),
        ("sagas", &["Sagas"]),
        ("queues", &["orders"]),
        ("replication", &["primary", "loss window"]),
    ];
    for (page, want) in checks {
        let url = format!("{ep}/ui#/{page}");
        let html = render(browser, &url);
        assert!(!html.contains("data-error"), "{page}: {html}");
        for w in *want {
            assert!(html.contains(w), "{page} does not show {w:?}: {html}");
        }
        screenshot(browser, &url, page);
    }
    // A key opened from the address: its value pretty-printed and its history.
    let html = render(
        browser,
        &format!("{ep}/ui#/keys?prefix=app/&key=app/config"),
    );
    assert!(html.contains("History"), "{html}");
    for old in ["\"replicas\": 2", "\"replicas\": 1"] {
        assert!(html.contains(old), "history shows {old}: {html}");
    }
    // The queue page counts the published messages.
    let html = render(browser, &format!("{ep}/ui#/queues"));
    assert!(
        html.contains("<td>2</td><td>2</td>"),
        "partitions and messages: {html}"
    );
}
