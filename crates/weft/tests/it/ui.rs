//! The dashboard in a real browser (headless Chromium, Debian's `chromium`).
//!
//! - Every page rendered (`--dump-dom`) for a node with a key, a lease, a registered service,
//!   a held lock, an election and a queue; what each shows is checked.
//! - Clicks through WebDriver (Debian's `chromedriver`): gateways with failing upstreams whose
//!   breakers open (the node's own and, with the `etcd` feature, a standalone `weft gateway`
//!   read through its admin API), a held lock with a waiter, an election with two candidates,
//!   services updated live over the watch, a key edit at a stale revision (refused, shown) and
//!   a fresh one (applied), the sharding form.
//!
//! A screenshot per page is saved under `target/ui-screenshots/`. Under `CI=true` a missing
//! browser or driver is a failure.

use crate::common;

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

/// Chromium (and chromedriver, if `driver`), or `None` to skip the test; under `CI=true` a
/// missing one is a failure.
fn browser_or_skip(driver: bool) -> Option<&'static str> {
    let browser = chromium();
    let has_driver = !driver
        || Command::new("chromedriver")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if browser.is_some() && has_driver {
        return browser;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    );
    eprintln!("skipping: chromium or chromedriver is not installed");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_nodes_state_in_a_real_browser() {
    let Some(browser) = browser_or_skip(false) else {
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
            &[
                "revision",
                "compact revision",
                "Writes, reads and watch events per second",
                "<div class=\"value\" data-field=\"fsync\">group</div>",
                "uptime",
                "watch events",
                "a sample every 2 s",
            ],
        ),
        (
            "keys",
            &["app/config", "keys at revision", "app/ (1)", "/weft/ ("],
        ),
        ("leases", &[&lease.to_string()]),
        ("services", &["users", "users-1", "10.0.0.7:8080", "blue"]),
        ("locks", &["billing", "scheduler", "node-a"]),
        ("sagas", &["Sagas"]),
        ("queues", &["orders"]),
        ("replication", &["primary", "loss window"]),
        ("gateways", &["No gateway is registered"]),
        ("sharding", &["rendezvous", "maglev", "Load per node"]),
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

/// A WebDriver session on Debian's `chromedriver` driving headless Chromium: the few commands
/// the click test needs (W3C WebDriver over HTTP, JSON in and out).
struct Driver {
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver on a free loopback port and opens a session.
    async fn start() -> Driver {
        let port = common::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run chromedriver");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{root}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver never became ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]}}}});
        let r = post(&http, &root, "/session", caps).await;
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"));
        Driver {
            child,
            base: format!("{root}/session/{id}"),
            http,
        }
    }

    /// One command; its `value`, or the WebDriver error.
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let r = req.send().await.map_err(|e| e.to_string())?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].to_string())
        }
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .unwrap();
    }

    /// Runs `script` (a function body) in the page.
    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
        .unwrap()
    }

    /// The element `css` names, waiting up to 10 s for it.
    async fn find(&self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css});
        for _ in 0..100 {
            if let Ok(v) = self.cmd("POST", "/element", Some(body.clone())).await {
                return v[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("find {css}: {v}"))
                    .to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no element {css}: {}", self.page_text().await);
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), None)
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), None)
            .await
            .unwrap();
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap();
    }

    /// Accepts the confirmation the last click opened (waiting up to 5 s for it).
    async fn confirm(&self) {
        for _ in 0..50 {
            if self.cmd("POST", "/alert/accept", None).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no confirmation dialog opened");
    }

    async fn page_text(&self) -> String {
        self.js("return document.getElementById('page').innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits up to `secs` for the text of `css` to contain `want`; returns that text.
    async fn wait_text(&self, css: &str, want: &str, secs: u64) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? (e.value !== undefined && e.tagName === 'TEXTAREA' ? e.value : e.innerText) : ''",
            serde_json::to_string(css).unwrap()
        );
        let mut last = String::new();
        for _ in 0..secs * 10 {
            last = self
                .js(&script)
                .await
                .as_str()
                .unwrap_or_default()
                .to_string();
            if last.contains(want) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{css} never showed {want:?}; it shows {last:?}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.cmd("GET", "/screenshot", None).await.unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

/// A gateway config whose only upstream refuses connections, behind a breaker that opens
/// after 5 failures.
fn failing_gateway_config(dir: &std::path::Path, route: &str) -> std::path::PathBuf {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let path = dir.join(format!("{route}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[[route]]
name = "{route}"
upstream = "billing"
path_prefix = "/"
breaker = {{ failure_rate = 50, window = 10, minimum_calls = 5, open_ms = 60000 }}

[[upstream]]
name = "billing"
endpoints = [{{ address = "{dead}" }}]
outlier = {{ consecutive_failures = 0 }}
"#
        ),
    )
    .unwrap();
    path
}

/// Waits (up to 10 s) until something accepts connections on `addr`.
fn wait_port(addr: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends 10 requests through a gateway: 5 fail at the upstream, then its breaker refuses.
async fn open_breaker(http: &reqwest::Client, gateway: &str) {
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(
            http.get(format!("{gateway}/orders/1"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&codes[5..], [503; 5], "{codes:?}");
}

/// `weft gateway` on the node's etcd API, with an admin API; returns it and its proxy URL.
#[cfg(feature = "etcd")]
fn standalone_gateway(etcd: &str, config: &std::path::Path) -> (common::Node, String) {
    use std::io::BufRead;
    let mut child = Command::new(common::BIN)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--name",
            "edge-1",
            "--threads",
            "1",
            "--etcd-endpoints",
            etcd,
        ])
        .arg("--config")
        .arg(config)
        .env("WEFT_LOG", "warn")
        .env_remove("WEFT_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weft gateway");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    (
        common::Node {
            child,
            endpoint: url.clone(),
        },
        url,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_edit_keys_and_pages_follow_the_store_live() {
    if browser_or_skip(true).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw_port = common::free_port();
    let gw_conf = failing_gateway_config(dir.path(), "orders");
    let data = dir.path().join("data");
    let gw_listen = format!("127.0.0.1:{gw_port}");
    #[allow(unused_mut)] // only extended with the etcd feature
    let mut args: Vec<std::ffi::OsString> = vec![
        "--data-dir".into(),
        data.into(),
        "--gateway-listen".into(),
        gw_listen.clone().into(),
        "--gateway-config".into(),
        gw_conf.clone().into(),
    ];
    #[cfg(feature = "etcd")]
    let etcd = format!("http://127.0.0.1:{}", common::free_port());
    #[cfg(feature = "etcd")]
    args.extend([
        "--etcd-listen".into(),
        etcd.trim_start_matches("http://").into(),
    ]);
    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let node = common::start_with(&argv);
    let ep = node.endpoint.clone();
    let http = reqwest::Client::new();
    // The node announces its HTTP API first; its gateway and etcd API open just after.
    wait_port(&gw_listen);
    #[cfg(feature = "etcd")]
    wait_port(etcd.trim_start_matches("http://"));
    #[cfg(feature = "etcd")]
    let edge_conf = failing_gateway_config(dir.path(), "edge");
    #[cfg(feature = "etcd")]
    let (_edge, edge_url) = standalone_gateway(&etcd, &edge_conf);
    #[cfg(feature = "etcd")]
    open_breaker(&http, &edge_url).await;
    open_breaker(&http, &format!("http://{gw_listen}")).await;

    post(
        &http,
        &ep,
        "/v1/kv/put",
        json!({"key": "app/config", "value": "v1"}),
    )
    .await;
    let grant = |ttl| post(&http, &ep, "/v1/lease/grant", json!({ "ttl": ttl }));
    let a = grant(300).await["id"].as_i64().unwrap();
    let b = grant(300).await["id"].as_i64().unwrap();
    post(
        &http,
        &ep,
        "/v1/lock/acquire",
        json!({"name": "billing", "lease": a}),
    )
    .await;
    post(
        &http,
        &ep,
        "/v1/election/campaign",
        json!({"name": "scheduler", "lease": a, "value": "node-a"}),
    )
    .await;
    // A waiter and a second candidate: their requests stay open until the test ends.
    let (h2, ep2) = (http.clone(), ep.clone());
    let waiter = tokio::spawn(async move {
        let body = json!({"name": "billing", "lease": b, "timeout_ms": 120000});
        let _ = h2
            .post(format!("{ep2}/v1/lock/acquire"))
            .json(&body)
            .send()
            .await;
    });
    let (h3, ep3) = (http.clone(), ep.clone());
    let candidate = tokio::spawn(async move {
        let body =
            json!({"name": "scheduler", "lease": b, "value": "node-b", "timeout_ms": 120000});
        let _ = h3
            .post(format!("{ep3}/v1/election/campaign"))
            .json(&body)
            .send()
            .await;
    });
    post(&http, &ep, "/v1/svc/register", json!({"service": "users", "lease": a, "instance": {"id": "users-1", "address": "10.0.0.7:8080"}})).await;

    let d = Driver::start().await;

    let c = Stage {
        d,
        http: http.clone(),
        ep: ep.clone(),
        gw_listen: gw_listen.clone(),
        a,
        b,
    };
    gateways_page(&c).await;
    locks_page(&c).await;
    services_live(&c).await;
    key_edits(&c).await;
    sharding_page(&c).await;
    saga_page(&c).await;
    queue_page(&c).await;
    lease_revoke(&c).await;
    phone_dark_keyboard(&c).await;

    waiter.abort();
    candidate.abort();
    let _ = c.d.cmd("DELETE", "", None).await;
}

/// A node with a token: the page asks for it once (a dialog, never the address), keeps it for
/// the tab, and sends it with every call, watches included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_asked_once_and_never_put_in_the_address() {
    if browser_or_skip(true).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_with(&[
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--token".as_ref(),
        "s3cret-token".as_ref(),
    ]);
    let ep = node.endpoint.clone();
    let d = Driver::start().await;
    d.goto(&format!("{ep}/ui#/keys")).await;
    d.type_into("#token", "wrong").await;
    d.click("#token-form button").await;
    // A wrong token is asked for again (the dialog opens anew, emptied).
    let mut asked_again = false;
    for _ in 0..50 {
        let v = d
            .js("const d = document.getElementById('token-dialog'); return d.open && document.getElementById('token').value === ''")
            .await;
        if v == true {
            asked_again = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(asked_again, "a wrong token was not asked for again");
    d.type_into("#token", "s3cret-token").await;
    d.click("#token-form button").await;
    d.wait_text("#page", "keys at revision", 10).await;
    d.goto(&format!("{ep}/ui#/services")).await;
    d.find("#page[data-live='1']").await;
    let http = reqwest::Client::new();
    let lease: Value = http
        .post(format!("{ep}/v1/lease/grant"))
        .bearer_auth("s3cret-token")
        .json(&json!({"ttl": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!("{ep}/v1/svc/register"))
        .bearer_auth("s3cret-token")
        .json(&json!({"service": "api", "lease": lease["id"], "instance": {"id": "api-1", "address": "10.0.0.9:80"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    d.wait_text("#page", "api-1", 5).await;
    let url = d.js("return location.href").await;
    assert!(!url.as_str().unwrap().contains("s3cret"), "{url}");
    assert_eq!(
        d.js("return sessionStorage.getItem('weft-token')").await,
        "s3cret-token"
    );
    d.screenshot("token-services").await;
    let _ = d.cmd("DELETE", "", None).await;
}

/// With users enabled, the dialog logs a user in (its token, never its password, kept for
/// the tab) and the pages show what that user's roles allow: a key outside them is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_and_sees_its_permissions() {
    if browser_or_skip(true).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_with(&[
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--token".as_ref(),
        "adm".as_ref(),
    ]);
    let ep = node.endpoint.clone();
    let http = reqwest::Client::new();
    for body in [
        json!({"op": "add", "name": "root", "password": "rootpw"}),
        json!({"op": "grant", "name": "root", "role": "root"}),
        json!({"op": "add", "name": "alice", "password": "alicepw"}),
    ] {
        let r = http
            .post(format!("{ep}/v1/auth/user"))
            .bearer_auth("adm")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{body}");
    }
    let r = http
        .post(format!("{ep}/v1/auth/enable"))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let d = Driver::start().await;
    d.goto(&format!("{ep}/ui#/keys")).await;
    d.type_into("#user", "alice").await;
    d.type_into("#token", "alicepw").await;
    d.click("#token-form button").await;
    // alice has no role: the keys page's range over every key is refused, and says so.
    d.wait_text("#page", "permission_denied", 10).await;
    let kept = d.js("return sessionStorage.getItem('weft-token')").await;
    let kept = kept.as_str().unwrap_or_default().to_owned();
    assert!(kept.starts_with("weft."), "{kept}");
    assert!(!kept.contains("alicepw"));
    // The token the page holds is alice's: the API answers it as alice.
    let r = http
        .get(format!("{ep}/v1/auth/users"))
        .bearer_auth(&kept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    d.screenshot("user-login-keys").await;
    let _ = d.cmd("DELETE", "", None).await;
}

/// What the click test's stages share.
struct Stage {
    d: Driver,
    http: reqwest::Client,
    ep: String,
    gw_listen: String,
    a: i64,
    b: i64,
}

/// The gateways page: the node's own gateway and (with etcd) a standalone one read through its admin API, breakers open, refused calls charted as a rate.
async fn gateways_page(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // Gateways: the node's own and (with etcd) a standalone one read through its admin API.
    d.goto(&format!("{ep}/ui#/gateways")).await;
    d.wait_text("#page", "orders", 10).await;
    d.wait_text("[data-breaker=orders]", "open", 10).await;
    let text = d.wait_text("#page", "0 / 5 / 0 / 5", 10).await;
    assert!(text.contains("inside this node"), "{text}");
    #[cfg(feature = "etcd")]
    {
        let text = d.wait_text("#page", "edge-1", 10).await;
        assert!(text.contains("Gateway edge-1"), "{text}");
        d.wait_text("[data-breaker=edge]", "open", 10).await;
    }
    // Calls refused while the page is open show as a rate on the route's chart.
    for _ in 0..20 {
        let r = http
            .get(format!("http://{gw_listen}/orders/2"))
            .send()
            .await;
        assert_eq!(r.unwrap().status().as_u16(), 503);
    }
    d.wait_text("#page", "0 / 5 / 0 / 25", 10).await;
    let legend = d.wait_text("[data-chart$='/orders']", "rejected", 1).await;
    assert!(!legend.contains("rejected 0.0/s"), "{legend}");
    d.screenshot("click-gateways").await;
}

/// The locks page: the holder, its waiter, the leader and the second candidate.
async fn locks_page(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // Locks: the holder, its waiter, the leader and the second candidate.
    d.goto(&format!("{ep}/ui#/locks")).await;
    let text = d.wait_text("#page", &format!("{b:x}"), 10).await;
    assert!(text.contains(&format!("{a:x}")), "{text}");
    assert!(text.contains("node-a") && text.contains("term"), "{text}");
    d.screenshot("click-locks").await;
}

/// The services page follows the store without polling: a new instance shows up by the watch.
async fn services_live(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // Services follow the store without polling: a new instance shows up by the watch.
    d.goto(&format!("{ep}/ui#/services")).await;
    d.wait_text("#page", "users-1", 10).await;
    for _ in 0..100 {
        if d.js("return document.getElementById('page').getAttribute('data-live')")
            .await
            == "1"
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    post(&http, &ep, "/v1/svc/register", json!({"service": "users", "lease": a, "instance": {"id": "users-2", "address": "10.0.0.8:8080"}})).await;
    d.wait_text("#page", "users-2", 5).await;
}

/// A key edit at a stale revision is refused and shown; a fresh one is applied.
async fn key_edits(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // A key edit at a stale revision is refused and shown; a fresh one is applied.
    d.goto(&format!("{ep}/ui#/keys?prefix=app/&key=app/config"))
        .await;
    d.wait_text("#key-value", "v1", 10).await;
    post(
        &http,
        &ep,
        "/v1/kv/put",
        json!({"key": "app/config", "value": "v2"}),
    )
    .await;
    d.wait_text("#key-stale", "since you opened it", 5).await;
    d.type_into("#key-value", "from-ui-stale").await;
    d.click("#key-save").await;
    d.confirm().await;
    d.wait_text("#key-result", "not written", 5).await;
    d.screenshot("click-keys-stale").await;
    let value = |v: Value| v["kvs"][0]["value"].as_str().unwrap().to_string();
    let now = post(&http, &ep, "/v1/kv/range", json!({"key": "app/config"})).await;
    assert_eq!(value(now), "v2");
    d.click("a[data-key='app/config']").await;
    d.wait_text("#key-value", "v2", 5).await;
    d.type_into("#key-value", "from-ui").await;
    d.click("#key-save").await;
    d.confirm().await;
    d.wait_text("#key-result", "written at revision", 5).await;
    let now = post(&http, &ep, "/v1/kv/range", json!({"key": "app/config"})).await;
    assert_eq!(value(now), "from-ui");
    d.screenshot("click-keys-fresh").await;
}

/// The sharding page: the analysis as charts, with the form driving it.
async fn sharding_page(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // Sharding: the analysis as charts, with the form driving it.
    d.goto(&format!("{ep}/ui#/sharding?nodes=4&keys=4000&add=1"))
        .await;
    d.wait_text("section[data-algo=jump]", "node-3", 20).await;
    d.type_into("input[aria-label=nodes]", "6").await;
    d.click("button.analyze").await;
    d.wait_text("section[data-algo=maglev]", "node-5", 20).await;
    d.screenshot("click-sharding").await;
}

/// A parked saga: the step graph, the timeline, and an operator's abort.
async fn saga_page(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // A saga whose step and compensation both fail is parked; the operator aborts it from its
    // page, and the page shows the step graph and the timeline.
    let dead = "http://127.0.0.1:9/never";
    let call = json!({"http": {"url": dead}});
    let works = json!({"http": {"method": "GET", "url": format!("{ep}/health")}});
    let def = json!({"name": "order", "steps": [
        {"name": "reserve", "action": works, "compensation": call,
         "compensation_retry": {"max_attempts": 1, "backoff_ms": 1}},
        {"name": "charge", "after": ["reserve"], "action": call, "no_compensation": true,
         "retry": {"max_attempts": 1}}]});
    post(
        &http,
        &ep,
        "/v1/saga/submit",
        json!({"definition": def, "id": "saga-1"}),
    )
    .await;
    d.goto(&format!("{ep}/ui#/sagas?state=parked&id=saga-1"))
        .await;
    d.wait_text("#saga-detail", "parked at reserve (compensation)", 20)
        .await;
    d.find("#saga-detail svg.graph g[data-step=charge]").await;
    d.wait_text("#saga-detail", "Timeline", 1).await;
    d.screenshot("click-saga").await;
    d.click("#saga-abort").await;
    d.confirm().await;
    d.wait_text("#saga-result", "abort: done", 5).await;
    let (s, v) = {
        let r = http
            .get(format!("{ep}/v1/saga/get?id=saga-1"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((s, &v["status"]), (200, &json!("aborted")), "{v}");
}

/// A dead letter with its reason, replayed from the queue page.
async fn queue_page(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // A message nacked past its group's max deliveries is a dead letter with its reason;
    // replayed from the queue page, the group gets it again.
    post(
        &http,
        &ep,
        "/v1/queue/topic/create",
        json!({"name": "jobs", "config": {"partitions": 1}}),
    )
    .await;
    post(
        &http,
        &ep,
        "/v1/queue/group/create",
        json!({"topic": "jobs", "group": "workers", "config": {"max_deliveries": 1}}),
    )
    .await;
    post(
        &http,
        &ep,
        "/v1/queue/publish",
        json!({"topic": "jobs", "messages": [{"value": b64("job-1")}]}),
    )
    .await;
    let pull = json!({"topic": "jobs", "group": "workers", "max": 1, "wait_ms": 2000});
    let got = post(&http, &ep, "/v1/queue/pull", pull.clone()).await;
    let receipt = got["messages"][0]["receipt"].clone();
    post(
        &http,
        &ep,
        "/v1/queue/nack",
        json!({"topic": "jobs", "group": "workers", "receipt": receipt, "error": "disk full"}),
    )
    .await;
    d.goto(&format!("{ep}/ui#/queues?topic=jobs")).await;
    let text = d.wait_text("#topic-detail", "disk full", 10).await;
    assert!(text.contains("job-1"), "{text}");
    d.screenshot("click-queue").await;
    d.click("#dlq-replay-all").await;
    d.confirm().await;
    d.wait_text("#dlq-result", "1 replayed", 5).await;
    let again = post(&http, &ep, "/v1/queue/pull", pull).await;
    assert_eq!(again["messages"][0]["value"], b64("job-1"), "{again}");
}

/// Revoking a lease from the leases page.
async fn lease_revoke(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // Leases: revoking the candidate's lease from the page ends its keys.
    d.goto(&format!("{ep}/ui#/leases")).await;
    d.click(&format!("button[data-revoke='{b}']")).await;
    d.confirm().await;
    d.wait_text("#lease-result", "revoked", 5).await;
    let gone = http
        .post(format!("{ep}/v1/lease/ttl"))
        .json(&json!({ "id": b }))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404, "the lease is revoked");
}

/// A phone's width, dark mode and the keyboard.
async fn phone_dark_keyboard(c: &Stage) {
    let d = &c.d;
    let (http, ep, gw_listen) = (c.http.clone(), c.ep.clone(), c.gw_listen.clone());
    let (a, b) = (c.a, c.b);
    let _ = (&http, &ep, &gw_listen, a, b);
    // A phone's width: no page is wider than the screen (wide tables scroll on their own).
    d.cmd(
        "POST",
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    )
    .await
    .unwrap();
    for page in [
        "overview",
        "keys?prefix=app/&key=app/config",
        "leases",
        "services",
        "locks",
        "gateways",
        "sharding",
        "sagas?id=saga-1",
        "queues?topic=jobs",
        "replication",
    ] {
        d.goto(&format!("{ep}/ui#/{page}")).await;
        d.find("#page[data-ready='1']").await;
        let over = d
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await;
        let wide = d
            .js("return [document.documentElement.clientWidth, ...[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 || (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible')).slice(0, 5).map((e) => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))].join(', ')")
            .await;
        assert!(
            over.as_i64().unwrap() <= 0,
            "{page} is {over} px wider than a phone: {wide}"
        );
    }
    d.screenshot("click-phone-sagas").await;
    // Dark: the page follows the system's colour scheme.
    d.cmd(
        "POST",
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
    )
    .await
    .unwrap();
    let bg = d
        .js("return getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(bg, "rgb(22, 22, 24)", "dark background");
    d.screenshot("click-phone-dark").await;

    // By keyboard: from the brand link, Tab goes to Overview, then Keys; Enter opens it.
    d.goto(&format!("{ep}/ui#/overview")).await;
    d.find("#page[data-ready='1']").await;
    d.js("document.querySelector('.brand').focus()").await;
    let keys: Vec<Value> = ["\u{E004}", "\u{E004}", "\u{E007}"]
        .iter()
        .flat_map(|k| {
            [
                json!({"type": "keyDown", "value": k}),
                json!({"type": "keyUp", "value": k}),
            ]
        })
        .collect();
    d.cmd(
        "POST",
        "/actions",
        Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": keys}]})),
    )
    .await
    .unwrap();
    d.wait_text("#page", "keys at revision", 5).await;
    assert_eq!(d.js("return location.hash").await, "#/keys");
}
