//! Replication between real `weft up` processes on loopback: 64 clients writing under
//! semi-sync 1 while the primary is killed with SIGKILL, then `weft promote` of the most
//! advanced replica, which holds every acknowledged write; a replica that starts behind the
//! primary's log (a snapshot first), restarts from its own data dir, serves reads that wait
//! for a revision and forwards writes; `weft repl check` and `weft repl status`.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{start_with, weft, Node};
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
    v.iter().map(|s| s.into()).collect()
}

fn node(dir: &std::path::Path, extra: &[&str]) -> Node {
    let mut args = os(&["--data-dir"]);
    args.push(dir.as_os_str().to_owned());
    args.extend(os(extra));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    start_with(&refs)
}

async fn put(
    http: &reqwest::Client,
    ep: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut r = http
        .post(format!("{ep}/v1/kv/put"))
        .json(&json!({"key": b64(key), "value": b64("v")}));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    match r.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn get(
    http: &reqwest::Client,
    ep: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut r = http
        .post(format!("{ep}/v1/kv/range"))
        .json(&json!({"key": b64(key)}));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn status(http: &reqwest::Client, ep: &str) -> Value {
    http.get(format!("{ep}/v1/repl/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `cond` holds on the node's replication status.
async fn until(
    http: &reqwest::Client,
    ep: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(http, ep).await;
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_semi_sync_primary_loses_no_acknowledged_write() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut p = node(
        dirs[0].path(),
        &[
            "--durability",
            "semi-sync=1;timeout=10s",
            "--repl-name",
            "p",
        ],
    );
    let r1 = node(
        dirs[1].path(),
        &["--replica-of", &p.endpoint, "--repl-name", "r1"],
    );
    let r2 = node(
        dirs[2].path(),
        &["--replica-of", &p.endpoint, "--repl-name", "r2"],
    );
    let http = reqwest::Client::new();
    until(&http, &p.endpoint, "two replicas streaming", |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["state"] == "streaming"))
    })
    .await;
    let (code, out, err) = weft(&["repl", "check"], &p.endpoint, None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(" match").count(), 2, "{out}");
    // 64 clients, each writing its own keys; acknowledged ones are kept with their revision.
    let acked = Arc::new(Mutex::new(HashMap::<String, i64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..64 {
        let (http, ep, acked, stop) = (
            http.clone(),
            p.endpoint.clone(),
            acked.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let key = format!("c{c}/{i}");
                let (s, v) = put(&http, &ep, &key, &[]).await;
                match s {
                    200 => {
                        let rev = v["header"]["revision"].as_str().map_or_else(
                            || v["header"]["revision"].as_i64().unwrap(),
                            |r| r.parse().unwrap(),
                        );
                        acked.lock().unwrap().insert(key, rev);
                    }
                    0 => return, // the primary is gone
                    _ => panic!("write failed before the kill: {s} {v}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.child.kill().unwrap(); // SIGKILL
    let _ = p.child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "too few writes to mean anything: {}",
        acked.len()
    );
    // The most advanced replica becomes the primary.
    let (s1, s2) = (
        status(&http, &r1.endpoint).await,
        status(&http, &r2.endpoint).await,
    );
    let best = if s1["revision"].as_i64() >= s2["revision"].as_i64() {
        &r1
    } else {
        &r2
    };
    let (code, out, err) = weft(&["promote"], &best.endpoint, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("promoted to primary"), "{out}");
    let st = status(&http, &best.endpoint).await;
    assert_eq!(st["role"], "primary");
    let max_acked = acked.values().max().copied().unwrap();
    assert!(
        st["revision"].as_i64().unwrap() >= max_acked,
        "{st} < {max_acked}"
    );
    // Every acknowledged write is there, at its revision.
    let mut missing = Vec::new();
    for (k, rev) in &acked {
        let (s, v) = get(&http, &best.endpoint, k, &[]).await;
        assert_eq!(s, 200, "{v}");
        let mod_rev = v["kvs"][0]["mod_revision"]
            .as_str()
            .map(|r| r.parse::<i64>().unwrap())
            .or_else(|| v["kvs"][0]["mod_revision"].as_i64());
        if mod_rev != Some(*rev) {
            missing.push((k.clone(), *rev, mod_rev));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes missing or different, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // The new primary takes writes.
    let (s, v) = put(&http, &best.endpoint, "after-failover", &[]).await;
    assert_eq!(s, 200, "{v}");
    eprintln!(
        "{} acknowledged writes, all on the promoted replica",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replica_takes_a_snapshot_then_follows_restarts_and_forwards() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A small log: snapshots replace it quickly, so a new replica needs one.
    let p = node(d1.path(), &["--snapshot-bytes", "4096", "--repl-name", "p"]);
    let http = reqwest::Client::new();
    for i in 0..300 {
        let (s, v) = put(&http, &p.endpoint, &format!("k{i}"), &[]).await;
        assert_eq!(s, 200, "{v}");
    }
    let plan: Value = http
        .get(format!("{}/v1/repl/plan?rev=1", p.endpoint))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["from"], "snapshot", "{plan}");
    let mut r = node(
        d2.path(),
        &["--replica-of", &p.endpoint, "--repl-name", "r"],
    );
    until(&http, &p.endpoint, "replica caught up", |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["lag_revisions"] == 0)
    })
    .await;
    let (code, out, err) = weft(&["repl", "check"], &p.endpoint, None);
    assert_eq!(code, 0, "{out}{err}");
    // Users live in the replicated data: one added on the primary is the replica's too.
    let (code, out, err) = weft(
        &["user", "add", "bob", "--password", "pw"],
        &p.endpoint,
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut seen = false;
    for _ in 0..50 {
        let (_, out, _) = weft(&["user", "list"], &r.endpoint, None);
        if out.contains("bob") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the replica never listed the primary's user");
    // Reads on the replica carry the revision; a read may wait for a newer one.
    let (s, v) = get(&http, &r.endpoint, "k299", &[]).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&http, &p.endpoint, "fresh", &[]).await;
    assert_eq!(s, 200);
    let rev = v["header"]["revision"].as_str().map_or_else(
        || v["header"]["revision"].as_i64().unwrap(),
        |r| r.parse().unwrap(),
    );
    let (s, v) = get(
        &http,
        &r.endpoint,
        "fresh",
        &[("weft-min-revision", &rev.to_string())],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["count"]
            .as_str()
            .map(|c| c.to_string())
            .unwrap_or_else(|| v["count"].to_string()),
        "1",
        "{v}"
    );
    let (s, v) = get(
        &http,
        &r.endpoint,
        "x",
        &[
            ("weft-min-revision", &(rev + 1000).to_string()),
            ("weft-read-timeout", "200ms"),
        ],
    )
    .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not reached"),
        "{v}"
    );
    let (s, v) = get(&http, &r.endpoint, "x", &[("weft-max-staleness", "soon")]).await;
    assert_eq!(s, 400, "{v}");
    // A write to the replica goes to the primary, and the replica shows it at once.
    let (s, v) = put(&http, &r.endpoint, "via-replica", &[]).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = get(&http, &r.endpoint, "via-replica", &[]).await;
    assert_eq!(s, 200);
    assert!(v["kvs"].as_array().is_some_and(|k| k.len() == 1), "{v}");
    // A bad durability header is refused with what is allowed.
    let (s, v) = put(&http, &p.endpoint, "x", &[("weft-durability", "quorum")]).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("semi-sync"),
        "{v}"
    );
    // Semi-sync 2 with one replica fails distinctly: durable on the primary, not confirmed.
    let (s, v) = put(
        &http,
        &p.endpoint,
        "two",
        &[("weft-durability", "semi-sync=2;timeout=200ms")],
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "unconfirmed", "{v}");
    let (_, v) = get(&http, &p.endpoint, "two", &[]).await;
    assert!(
        v["kvs"].as_array().is_some_and(|k| k.len() == 1),
        "visible on the primary: {v}"
    );
    // kill -9 of the replica; it resumes from its own data dir, from the log this time.
    r.child.kill().unwrap();
    let _ = r.child.wait();
    for i in 0..20 {
        put(&http, &p.endpoint, &format!("while-down{i}"), &[]).await;
    }
    let addr = r.endpoint.clone();
    drop(r);
    let r = common::restart_with(
        d2.path(),
        &addr,
        &["--replica-of", &p.endpoint, "--repl-name", "r"],
    );
    until(&http, &p.endpoint, "restarted replica caught up", |s| {
        s["replicas"].as_array().is_some_and(|r| {
            r.len() == 1 && r[0]["lag_revisions"] == 0 && r[0]["state"] == "streaming"
        })
    })
    .await;
    let (_, v) = get(&http, &r.endpoint, "while-down19", &[]).await;
    assert!(v["kvs"].as_array().is_some_and(|k| k.len() == 1), "{v}");
    let (code, out, err) = weft(&["repl", "status"], &r.endpoint, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(replica)") && out.contains("streaming"),
        "{out}"
    );
    // With forwarding off, a write names the primary.
    let d3 = tempfile::tempdir().unwrap();
    let r3 = node(
        d3.path(),
        &["--replica-of", &p.endpoint, "--forward-writes", "false"],
    );
    let (s, v) = put(&http, &r3.endpoint, "nope", &[]).await;
    assert_eq!(s, 421, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&p.endpoint),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_left_behind_the_primarys_log_resyncs_by_itself() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ports = [common::free_port(), common::free_port()];
    let pe = format!("http://127.0.0.1:{}", ports[0]);
    let re = format!("http://127.0.0.1:{}", ports[1]);
    let extra = ["--snapshot-bytes", "4096", "--repl-name", "p"];
    let mut p = common::restart_with(d1.path(), &pe, &extra);
    let r = common::restart_with(d2.path(), &re, &["--replica-of", &pe, "--repl-name", "r"]);
    let http = reqwest::Client::new();
    for i in 0..50 {
        put(&http, &pe, &format!("a{i}"), &[]).await;
    }
    until(&http, &pe, "replica caught up", |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["lag_revisions"] == 0)
    })
    .await;
    // The replica is frozen while the primary writes on, snapshots, and restarts: its feed
    // is gone and its log no longer reaches the replica's revision.
    let pid = r.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // 24 MiB: more than the kernel buffers between them hold, so most of it stays behind.
    let big = b64(&"x".repeat(32 << 10));
    for i in 0..768 {
        let r = http
            .post(format!("{pe}/v1/kv/put"))
            .json(&json!({"key": b64(&format!("b{i}")), "value": big}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    p.child.kill().unwrap();
    let _ = p.child.wait();
    drop(p);
    let _p = common::restart_with(d1.path(), &pe, &extra);
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // It finds out, restarts itself (after its first 10 s), takes a snapshot and follows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Refused while it restarts.
        let r = http
            .post(format!("{re}/v1/kv/range"))
            .json(&json!({"key": b64("b767")}))
            .send()
            .await;
        let v: Value = match r {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if v["kvs"].as_array().is_some_and(|k| k.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never resynced: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = weft(&["repl", "check"], &pe, None);
    assert_eq!(code, 0, "{out}{err}");
    drop(r);
}
