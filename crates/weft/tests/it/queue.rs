//! The message queue through the node, as real processes: the HTTP API and its errors, the
//! streaming publish, the CLI (`consume --exec` acking on exit 0), and `kill -9` of `weft up`
//! during publishing and consuming, 20 times.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{restart, start, weft};
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

async fn post(http: &reqwest::Client, ep: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(format!("{ep}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Creates a topic and a group on it.
async fn setup(http: &reqwest::Client, ep: &str, topic: &str, cfg: Value, group: &str) {
    let (s, v) = post(
        http,
        ep,
        "/v1/queue/topic/create",
        json!({"name": topic, "config": cfg}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(
        http,
        ep,
        "/v1/queue/group/create",
        json!({"topic": topic, "group": group}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let http = reqwest::Client::new();
    let cfg = json!({"partitions": 2, "max_message_bytes": 100});
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/topic/create",
        json!({"name": "orders", "config": cfg}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 2);
    let (s, _) = post(
        &http,
        &ep,
        "/v1/queue/group/create",
        json!({"topic": "orders", "group": "billing"}),
    )
    .await;
    assert_eq!(s, 200);
    let msgs = json!([{"value": b64("a"), "key": b64("k1")}, {"value": b64("b"), "id": "p-1"}]);
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/publish",
        json!({"topic": "orders", "messages": msgs}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["published"].as_array().unwrap().len(), 2);
    // Errors: unknown topic 404, too large 413, bad JSON 400, unknown field 400, bad receipt 409.
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/publish",
        json!({"topic": "nope", "messages": msgs}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_topic")),
        "{v}"
    );
    let big = json!([{"value": b64(&"x".repeat(101))}]);
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/publish",
        json!({"topic": "orders", "messages": big}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/publish",
        json!({"topic": "orders", "messages": [{"valu": "x"}]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/pull",
        json!({"topic": "orders", "group": "billing", "max": 10, "wait_ms": 1000}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got = v["messages"].as_array().unwrap().clone();
    assert_eq!(got.len(), 2);
    let receipts: Vec<Value> = got.iter().map(|m| m["receipt"].clone()).collect();
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/ack",
        json!({"topic": "orders", "group": "billing", "receipts": receipts}),
    )
    .await;
    assert_eq!((s, v["acked"].as_u64()), (200, Some(2)), "{v}");
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/ack",
        json!({"topic": "orders", "group": "billing", "receipts": [receipts[0]]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["errors"][0]["error"]["code"], "not_pending", "{v}");
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/nack",
        json!({"topic": "orders", "group": "billing", "receipt": "zz"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );
    let r = http
        .get(format!(
            "{ep}/v1/queue/read?topic=orders&partition=0&from_offset=99"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The streaming publish: NDJSON in, one ack line per message out, in order.
    let mut body = String::new();
    for i in 0..500 {
        body +=
            &json!({"value": b64(&format!("s{i}")), "key": b64(&format!("{}", i % 7))}).to_string();
        body.push('\n');
    }
    body += "not json\n";
    let r = http
        .post(format!("{ep}/v1/queue/publish/stream?name=orders"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 501);
    assert!(
        lines[..500].iter().all(|l| l["offset"].is_u64()),
        "{}",
        lines[0]
    );
    assert_eq!(lines[500]["error"]["code"], "bad_request");
    let topic: Value = http
        .get(format!("{ep}/v1/queue/topic?name=orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let depth: u64 = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end"].as_u64().unwrap() - p["start"].as_u64().unwrap())
        .sum();
    assert_eq!(depth, 502);
    assert_eq!(topic["groups"][0]["lag"], 500);
    let metrics = http
        .get(format!("{ep}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("weft_queue_lag{topic=\"orders\",group=\"billing\"} 500"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_queue_depth{topic=\"orders\",partition=\"0\"}"));
}

/// The binary forms: a publish stream of frames with keys, a pull answered in delivery
/// frames, and one ack request for the whole batch (with a repeated and a bogus receipt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_publish_and_pull_and_a_batch_ack() {
    use weft_queue::wire;
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (http, ep) = (reqwest::Client::new(), node.endpoint.clone());
    setup(&http, &ep, "bin", json!({"partitions": 3}), "g").await;
    let mut body = Vec::new();
    for i in 0..300u32 {
        let value: Vec<u8> = (0..i % 50).map(|b| (b as u8) ^ (i as u8)).collect();
        wire::publish_frame(Some(format!("k{}", i % 5).as_bytes()), &value, &mut body);
    }
    // A frame cut short at the end is answered with an error after the good ones.
    body.extend_from_slice(&[9, 0, 0, 0, 0]);
    let r = http
        .post(format!("{ep}/v1/queue/publish/stream?name=bin"))
        .header("content-type", wire::BINARY)
        .body(body)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 301, "{text}");
    assert!(lines[300]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("inside a frame"));
    let r = http
        .post(format!("{ep}/v1/queue/pull"))
        .header("accept", wire::BINARY)
        .json(&json!({"topic": "bin", "group": "g", "max": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], wire::BINARY);
    let got = wire::decode_deliveries(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(got.len(), 300);
    let mut seen = HashSet::new();
    for d in &got {
        let m = &d.message;
        let key = String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap();
        let i = lines
            .iter()
            .position(|l| l["partition"] == m.partition && l["offset"] == m.offset)
            .unwrap() as u32;
        assert_eq!(key, format!("k{}", i % 5));
        let want: Vec<u8> = (0..i % 50).map(|b| (b as u8) ^ (i as u8)).collect();
        assert_eq!(m.value.as_ref(), &want[..], "message {i}");
        assert_eq!(d.delivery, 1);
        assert!(seen.insert(d.receipt.clone()));
    }
    let mut receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    receipts.push(receipts[0].clone());
    receipts.push("0-99999-1".into());
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/ack",
        json!({"topic": "bin", "group": "g", "receipts": receipts}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["acked"], 300, "{v}");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "not_pending"),
        "{v}"
    );
    // Acked for good: after a kill -9 and a restart nothing is handed out again.
    drop(node);
    let _node = restart(dir.path(), &ep);
    let (s, v) = post(
        &http,
        &ep,
        "/v1/queue/pull",
        json!({"topic": "bin", "group": "g", "max": 10}),
    )
    .await;
    assert_eq!(
        (s, v["messages"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
}

#[test]
fn the_cli_consumes_with_exec_and_dead_letters_failures() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = &node.endpoint;
    let ok = |args: &[&str], stdin: Option<&str>| {
        let (code, out, err) = weft(args, ep, stdin);
        assert_eq!(code, 0, "weft {args:?}: {out} {err}");
        out
    };
    ok(&["queue", "create", "jobs", "--partitions", "2"], None);
    ok(
        &[
            "queue",
            "group",
            "jobs",
            "workers",
            "--max-deliveries",
            "2",
            "--ack-wait-ms",
            "5000",
        ],
        None,
    );
    ok(
        &["queue", "publish", "jobs"],
        Some("good 1\nbad 2\ngood 3\n"),
    );
    let log = dir.path().join("handled");
    let script = format!(
        "v=$(cat); echo \"$v $WEFT_DELIVERY\" >> {}; case \"$v\" in bad*) echo nope >&2; exit 3;; esac",
        log.display()
    );
    // Two deliveries of the bad one (nacked with a 1 s delay), then it is dead.
    ok(
        &[
            "queue", "consume", "jobs", "--group", "workers", "--exec", &script, "--count", "4",
        ],
        None,
    );
    let handled = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = handled.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["bad 2 1", "bad 2 2", "good 1 1", "good 3 1"]);
    let dlq = ok(&["queue", "dlq", "jobs"], None);
    assert!(dlq.contains("group workers after 2 deliveries"), "{dlq}");
    assert!(dlq.contains("exit status: 3: nope"), "{dlq}");
    let stats = ok(&["queue", "stats", "jobs"], None);
    assert!(stats.contains("group workers: lag 0"), "{stats}");
    assert!(stats.contains("dead 1"), "{stats}");
    assert_eq!(
        ok(&["queue", "dlq", "jobs", "replay"], None).trim(),
        "replayed 1"
    );
    let out = ok(
        &[
            "queue", "consume", "jobs", "--group", "workers", "--count", "1",
        ],
        None,
    );
    assert!(out.contains("bad 2"), "{out}");
    let (code, _, err) = weft(&["queue", "publish", "nope", "x"], ep, None);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}

/// What the clients saw, across every node life.
#[derive(Default)]
struct Seen {
    /// Values whose publish was acknowledged.
    published: HashSet<String>,
    /// Values whose ack was acknowledged, with when.
    acked: HashMap<String, Instant>,
    /// Values whose ack was sent but not answered (the node died): acked or not.
    ack_unknown: HashSet<String>,
    /// Deliveries of a value after its ack was acknowledged.
    after_ack: Vec<String>,
}

impl Seen {
    /// Acknowledged publishes not (yet) known to be acked.
    fn missing(&self) -> Vec<&String> {
        self.published
            .iter()
            .filter(|v| !self.acked.contains_key(*v) && !self.ack_unknown.contains(*v))
            .collect()
    }
}

async fn publisher(
    http: reqwest::Client,
    ep: String,
    id: usize,
    seen: Arc<Mutex<Seen>>,
    stop: Instant,
    cycle: usize,
) {
    let mut i = 0;
    while Instant::now() < stop {
        let vals: Vec<String> = (0..5).map(|j| format!("c{cycle}-p{id}-{i}-{j}")).collect();
        i += 1;
        let msgs: Vec<Value> = vals
            .iter()
            .map(|v| json!({"value": b64(v), "key": b64(v)}))
            .collect();
        let r = http
            .post(format!("{ep}/v1/queue/publish"))
            .json(&json!({"topic": "t", "messages": msgs}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => seen.lock().unwrap().published.extend(vals),
            _ => return,
        }
    }
}

async fn consumer(http: reqwest::Client, ep: String, seen: Arc<Mutex<Seen>>, stop: Instant) {
    while Instant::now() < stop {
        let body = json!({"topic": "t", "group": "g", "consumer": "c", "max": 20, "wait_ms": 50});
        let Ok(r) = http
            .post(format!("{ep}/v1/queue/pull"))
            .json(&body)
            .send()
            .await
        else {
            return;
        };
        let Ok(v) = r.json::<Value>().await else {
            return;
        };
        let Some(msgs) = v["messages"].as_array() else {
            return;
        };
        let mut receipts = Vec::new();
        {
            let mut s = seen.lock().unwrap();
            for m in msgs {
                let val = unb64(&m["value"]);
                if s.acked.contains_key(&val) {
                    s.after_ack.push(val.clone());
                }
                receipts.push((val, m["receipt"].clone()));
            }
        }
        let body = json!({"topic": "t", "group": "g", "receipts": receipts.iter().map(|r| r.1.clone()).collect::<Vec<_>>()});
        let answer = match http
            .post(format!("{ep}/v1/queue/ack"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let mut s = seen.lock().unwrap();
        let Some(v) = answer else {
            s.ack_unknown.extend(receipts.into_iter().map(|r| r.0));
            return;
        };
        assert_eq!(
            v["acked"].as_u64(),
            Some(receipts.len() as u64),
            "every fresh receipt acks: {v}"
        );
        for (val, _) in receipts {
            s.ack_unknown.remove(&val);
            s.acked.insert(val, Instant::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_publish_and_consume_loses_no_acked_message_and_redelivers_no_acked_one() {
    let cycles: usize = std::env::var("WEFT_QUEUE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut node = start(dir.path());
    let ep = node.endpoint.clone();
    setup(&http, &ep, "t", json!({"partitions": 3}), "g").await;
    for cycle in 0..cycles {
        let stop = Instant::now() + Duration::from_millis(400);
        let mut tasks = Vec::new();
        for p in 0..3 {
            tasks.push(tokio::spawn(publisher(
                http.clone(),
                ep.clone(),
                p,
                seen.clone(),
                stop,
                cycle,
            )));
        }
        for _ in 0..2 {
            tasks.push(tokio::spawn(consumer(
                http.clone(),
                ep.clone(),
                seen.clone(),
                stop + Duration::from_secs(5),
            )));
        }
        tokio::time::sleep(Duration::from_millis(250 + (cycle as u64 * 37) % 150)).await;
        drop(node); // kill -9, mid-flight
        for t in tasks {
            t.await.unwrap();
        }
        node = restart(dir.path(), &ep);
    }
    // Drain what is left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = seen.lock().unwrap().missing().len();
        if n == 0 || Instant::now() > deadline {
            break;
        }
        consumer(
            http.clone(),
            ep.clone(),
            seen.clone(),
            Instant::now() + Duration::from_millis(500),
        )
        .await;
    }
    let s = seen.lock().unwrap();
    let lost: Vec<&String> = s.missing().into_iter().take(5).collect();
    eprintln!(
        "{cycles} kill -9 cycles: {} publishes acknowledged, {} acks acknowledged, {} acks cut off by a kill",
        s.published.len(),
        s.acked.len(),
        s.ack_unknown.len()
    );
    assert!(
        s.published.len() > 100 * cycles / 10,
        "the load ran: {}",
        s.published.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged publishes never delivered and acked: {lost:?}"
    );
    assert!(
        s.after_ack.is_empty(),
        "delivered again after an acknowledged ack: {:?}",
        &s.after_ack[..s.after_ack.len().min(5)]
    );
    drop(node);
}

/// `weft up --queue-nats`: the same API and CLI on NATS JetStream (a nats-server of its own).
#[cfg(feature = "nats")]
#[test]
fn the_node_runs_its_queue_on_nats_jetstream() {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs nats-server"
        );
        eprintln!("nats-server not installed: skipped");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let node = common::start_with(&[
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--queue-nats".as_ref(),
        url.as_ref(),
    ]);
    let ep = &node.endpoint;
    let ok = |args: &[&str], stdin: Option<&str>| {
        let (code, out, err) = weft(args, ep, stdin);
        assert_eq!(code, 0, "weft {args:?}: {out} {err}");
        out
    };
    ok(&["queue", "create", "jobs", "--partitions", "2"], None);
    ok(&["queue", "group", "jobs", "w"], None);
    ok(&["queue", "publish", "jobs"], Some("one\ntwo\n"));
    let out = ok(
        &["queue", "consume", "jobs", "--group", "w", "--count", "2"],
        None,
    );
    assert!(out.contains("one") && out.contains("two"), "{out}");
    let stats = ok(&["queue", "stats", "jobs"], None);
    assert!(stats.contains("topic jobs: 2 messages"), "{stats}");
    assert!(stats.contains("group w: lag 0"), "{stats}");
    assert!(!dir.path().join("queue").exists(), "nothing embedded");
    drop(node);
    let _ = nats.kill();
    let _ = nats.wait();
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A topic larger than the node's resident memory: 192 MiB published and read back while the
/// node's RSS grows by less than half of that (measured: 30 → 86 MiB, buffers of 256 KiB
/// messages in flight; messages stay on disk and the index keeps 40 bytes per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_larger_than_the_nodes_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let pid = node.child.id();
    let http = reqwest::Client::new();
    setup(
        &http,
        &ep,
        "big",
        json!({"max_message_bytes": 1 << 20}),
        "g",
    )
    .await;
    let base = rss_kib(pid);
    let value = b64(&"v".repeat(256 * 1024));
    let mut peak = base;
    for i in 0..768 {
        let msgs = json!([{"value": value, "id": format!("m{i}")}]);
        let (s, v) = post(
            &http,
            &ep,
            "/v1/queue/publish",
            json!({"topic": "big", "messages": msgs}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if i % 64 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let mut read = 0u64;
    loop {
        let (s, v) = post(
            &http,
            &ep,
            "/v1/queue/pull",
            json!({"topic": "big", "group": "g", "max": 16}),
        )
        .await;
        assert_eq!(s, 200);
        let msgs = v["messages"].as_array().unwrap();
        if msgs.is_empty() {
            break;
        }
        read += msgs
            .iter()
            .map(|m| unb64(&m["value"]).len() as u64)
            .sum::<u64>();
        let receipts: Vec<Value> = msgs.iter().map(|m| m["receipt"].clone()).collect();
        post(
            &http,
            &ep,
            "/v1/queue/ack",
            json!({"topic": "big", "group": "g", "receipts": receipts}),
        )
        .await;
        peak = peak.max(rss_kib(pid));
    }
    assert_eq!(read, 768 * 256 * 1024, "every byte read back");
    let grew = peak.saturating_sub(base) / 1024;
    eprintln!(
        "192 MiB through the topic; node RSS {} MiB at start, peak {} MiB",
        base / 1024,
        peak / 1024
    );
    assert!(
        grew < 96,
        "the node's RSS grew by {grew} MiB for a 192 MiB topic"
    );
}
