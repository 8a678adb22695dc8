//! The `weft` binary as real processes: durability under `kill -9`, data-dir locking, refusal
//! to start on damage or on an unprotected public address, graceful shutdown, and the CLI.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_write_load_loses_no_acknowledged_write() {
    kill_9_during_a_write_load(&[]).await;
}

/// The same with a snapshot every 64 KiB of log: the kill lands among log rotations onto
/// recycled spare logs, snapshots written over spare snapshots, and spares being zeroed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_amid_snapshots_and_recycled_files_loses_no_acknowledged_write() {
    let (dir, node) = kill_9_during_a_write_load(&["--snapshot-bytes", "65536"]).await;
    // Snapshots keep the logs they cover as spares. Right after a restart the spare may have
    // been taken by the restart's own rotation, so write on (bounded) until a snapshot has left
    // one again.
    let http = reqwest::Client::new();
    let files = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let value = "x".repeat(1024);
    for round in 0..100 {
        if files(dir.path()).iter().any(|f| f == "log.spare") {
            break;
        }
        for i in 0..16 {
            let key = format!("more/{round}/{i}");
            let r = http
                .post(format!("{}/v1/kv/put", node.endpoint))
                .json(&json!({"key": key, "value": value}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = files(dir.path());
    assert!(
        files.iter().any(|f| f == "log.spare"),
        "snapshots ran and left a spare log: {files:?}"
    );
}

/// Writes from 32 clients, `kill -9` in the middle, restart (with `extra` arguments both
/// times): every acknowledged write is there. Returns the data dir and the restarted node.
async fn kill_9_during_a_write_load(extra: &[&str]) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec!["--data-dir".as_ref(), dir.path().as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let mut node = start_with(&args);
    let http = reqwest::Client::new();
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (http, ep, acked) = (http.clone(), node.endpoint.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..2000 {
                let key = format!("k/{t}/{i}");
                let val = format!("v{i}");
                let r = http
                    .post(format!("{ep}/v1/kv/put"))
                    .json(&json!({"key": key, "value": val}))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if !r.status().is_success() {
                    return;
                }
                let Ok(body) = r.json::<Value>().await else {
                    return;
                };
                acked.lock().unwrap().push((
                    key,
                    val,
                    body["header"]["revision"].as_i64().unwrap(),
                ));
            }
        }));
    }
    // Let the load run, then SIGKILL the node in the middle of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load made progress before the kill: {}",
        acked.len()
    );

    let node = start_with(&args);
    let r: Value = http
        .post(format!("{}/v1/kv/range", node.endpoint))
        .json(&json!({"key": "k/", "prefix": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let present: std::collections::HashMap<String, String> = r["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (k, v, _) in &acked {
        if present.get(k) != Some(v) {
            lost.push(k.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let max_rev = acked.iter().map(|a| a.2).max().unwrap();
    assert!(r["header"]["revision"].as_i64().unwrap() >= max_rev);
    eprintln!(
        "{} acknowledged writes, all present after kill -9 ({} keys on disk)",
        acked.len(),
        present.len()
    );
    (dir, node)
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = start(dir.path());
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");
}

#[test]
fn a_public_address_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("WEFT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token"), "{err}");
}

#[test]
fn damaged_data_refuses_to_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = start(dir.path());
        for i in 0..20 {
            let (code, _, err) = weft(
                &["kv", "put", &format!("key{i}"), "some value"],
                &node.endpoint,
                None,
            );
            assert_eq!(code, 0, "{err}");
        }
    }
    let wal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .unwrap();
    let mut buf = std::fs::read(&wal).unwrap();
    let mid = buf.len() / 2;
    buf[mid] ^= 0xff;
    std::fs::write(&wal, &buf).unwrap();
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt data in") && err.contains("wal-") && err.contains("offset"),
        "{err}"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let (code, _, _) = weft(&["kv", "put", "a", "1"], &node.endpoint, None);
    assert_eq!(code, 0);
    let pid = node.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = node.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The data survived the restart.
    let node = start(dir.path());
    let (_, out, _) = weft(&["kv", "get", "a"], &node.endpoint, None);
    assert_eq!(out, "a\n1\n");
}

#[test]
fn cli_round_trip_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.as_str();
    assert_eq!(weft(&["kv", "put", "app/x", "1"], ep, None).1, "OK\n");
    assert_eq!(weft(&["kv", "put", "app/y", "2"], ep, None).1, "OK\n");
    assert_eq!(
        weft(&["kv", "get", "app/", "--prefix"], ep, None).1,
        "app/x\n1\napp/y\n2\n"
    );
    assert_eq!(
        weft(&["kv", "get", "app/", "--prefix", "--count-only"], ep, None).1,
        "2\n"
    );
    let (code, out, _) = weft(&["kv", "get", "app/x", "--json"], ep, None);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kvs"][0]["version"], 1);
    let txn = "value(\"app/x\") = \"1\"\n\nput app/x 10\nget app/x\n\nget app/y\n";
    let (code, out, err) = weft(&["kv", "txn"], ep, Some(txn));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n\napp/x\n10\n");
    let (_, out, _) = weft(&["kv", "txn"], ep, Some(txn));
    assert_eq!(out, "FAILURE\n\napp/y\n2\n");
    let (code, _, err) = weft(&["kv", "txn"], ep, Some("bogus(\"k\") = \"1\"\n"));
    assert_ne!(code, 0);
    assert!(err.contains("allowed"), "{err}");
    // Leases.
    let (code, out, _) = weft(&["lease", "grant", "60"], ep, None);
    assert_eq!(code, 0);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        weft(&["kv", "put", "svc/a", "x", "--lease", &id], ep, None).0,
        0
    );
    let (_, out, _) = weft(&["lease", "ttl", &id, "--keys"], ep, None);
    assert!(out.contains("attached keys(svc/a)"), "{out}");
    assert_eq!(weft(&["lease", "keepalive", &id, "--once"], ep, None).0, 0);
    assert_eq!(weft(&["lease", "revoke", &id], ep, None).0, 0);
    assert_eq!(weft(&["kv", "get", "svc/a"], ep, None).1, "");
    let (code, _, err) = weft(&["lease", "revoke", &id], ep, None);
    assert_eq!(code, 1);
    assert!(err.contains("lease_not_found"), "{err}");
    // Watch replays history and exits after --count events.
    let (code, out, _) = weft(
        &["kv", "watch", "app/x", "--rev", "1", "--count", "2"],
        ep,
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(out, "PUT\napp/x\n1\nPUT\napp/x\n10\n");
    // Deletes and errors.
    assert_eq!(weft(&["kv", "del", "app/", "--prefix"], ep, None).1, "2\n");
    let (code, _, err) = weft(&["kv", "get", "a", "--rev", "9999"], ep, None);
    assert_eq!(code, 1);
    assert!(err.contains("future_revision"), "{err}");
    let (code, _, err) = weft(&["kv", "get", "a"], "http://127.0.0.1:1", None);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn shard_analyze_reports_every_algorithm_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("load.svg");
    let out = Command::new(BIN)
        .args([
            "shard", "analyze", "--nodes", "8", "--keys", "20000", "--add", "1", "--json", "--plot",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let algos: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["algo"].as_str().unwrap())
        .collect();
    assert_eq!(
        algos,
        vec!["ring", "rendezvous", "jump", "maglev", "bounded", "slots"]
    );
    for r in v.as_array().unwrap() {
        let (moved, ideal) = (r["moved"].as_f64().unwrap(), r["ideal"].as_f64().unwrap());
        assert!((ideal - 1.0 / 9.0).abs() < 1e-9);
        assert!(moved < ideal * 1.6, "{r}");
        assert!(r["max_over_mean"].as_f64().unwrap() < 1.5, "{r}");
        assert_eq!(r["loads"].as_array().unwrap().len(), 8);
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.matches("<rect").count() > 6 * 8,
        "one bar per node and algorithm"
    );
    assert_eq!(
        chart.matches(">keys</text>").count(),
        6,
        "a y-axis per panel"
    );
    assert_eq!(
        chart.matches(r#"class="mean""#).count(),
        6,
        "the mean marked"
    );
    assert_eq!(chart.matches(r#"class="max""#).count(), 6, "the max marked");
    assert!(chart.contains("mean over live nodes"), "a legend");
    assert!(
        chart.matches(r#"class="node""#).count() >= 6 * 8,
        "node labels"
    );
    let bad = Command::new(BIN)
        .args(["shard", "analyze", "--algo", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("allowed: ring"));
}

/// The node runs without transparent huge pages (the flag is read back from the kernel);
/// the process that started it keeps them.
#[cfg(target_os = "linux")]
#[test]
fn the_node_runs_without_transparent_huge_pages() {
    let status = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
    };
    let Some(ours) = status(std::process::id()) else {
        eprintln!("this kernel does not report THP_enabled in /proc/PID/status: nothing to check");
        return;
    };
    assert_eq!(ours, "1", "the test process has huge pages allowed");
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (code, _, _) = weft(&["kv", "put", "a", "1"], &node.endpoint, None);
    assert_eq!(code, 0);
    assert_eq!(status(node.child.id()).as_deref(), Some("0"));
}

/// The node's log thread runs under SCHED_BATCH (policy 3, read back from the kernel), and
/// `--log-thread-batch false` keeps the default policy (0).
#[cfg(target_os = "linux")]
#[test]
fn the_log_thread_runs_under_sched_batch_unless_told_not_to() {
    let log_thread_policy = |pid: u32| -> Vec<i64> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                if std::fs::read_to_string(t.join("comm")).ok()?.trim() != "weft-wal" {
                    return None;
                }
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 2..];
                // `rest` starts at field 3; `policy` is field 41.
                rest.split_whitespace().nth(41 - 3)?.parse().ok()
            })
            .collect()
    };
    for (args, want) in [(&[][..], 3), (&["--log-thread-batch", "false"][..], 0)] {
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<&std::ffi::OsStr> = vec!["--data-dir".as_ref(), dir.path().as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let node = start_with(&all);
        let (code, _, _) = weft(&["kv", "put", "a", "1"], &node.endpoint, None);
        assert_eq!(code, 0);
        assert_eq!(
            log_thread_policy(node.child.id()),
            vec![want],
            "args {args:?}"
        );
    }
}

/// `weft snapshot save` takes a backup over the HTTP API while the node serves;
/// `weft snapshot restore` makes a data dir of it that serves the same data at the same
/// revision, and writes after the backup are not in it.
#[test]
fn snapshot_save_and_restore_over_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"));
    for i in 0..50 {
        let (code, _, err) = weft(
            &["kv", "put", &format!("k/{i}"), &format!("v{i}")],
            &a.endpoint,
            None,
        );
        assert_eq!(code, 0, "{err}");
    }
    let status = |ep: &str| {
        let (_, out, _) = weft(&["status", "--json"], ep, None);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
            .as_i64()
            .unwrap()
    };
    let rev = status(&a.endpoint);
    let file = dir.path().join("b.snap");
    let f = file.to_str().unwrap();
    let (code, out, err) = weft(&["snapshot", "save", f, "--json"], &a.endpoint, None);
    assert_eq!(code, 0, "{err}");
    let saved: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(saved["revision"].as_i64(), Some(rev));
    assert_eq!(saved["format"], "weft-snapshot-v1");
    assert_eq!(
        saved["bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    assert!(!dir.path().join("b.snap.part").exists());
    // Not in the backup.
    weft(&["kv", "put", "k/late", "x"], &a.endpoint, None);
    let (code, out, err) = weft(&["snapshot", "status", f], "", None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("revision {rev}")), "{out}");
    let target = dir.path().join("b");
    let (code, _, err) = weft(
        &[
            "snapshot",
            "restore",
            f,
            "--data-dir",
            target.to_str().unwrap(),
        ],
        "",
        None,
    );
    assert_eq!(code, 0, "{err}");
    let b = start(&target);
    assert_eq!(status(&b.endpoint), rev);
    let (_, out, _) = weft(
        &["kv", "get", "k/", "--prefix", "--count-only"],
        &b.endpoint,
        None,
    );
    assert_eq!(out.trim(), "50");
    let (_, out, _) = weft(&["kv", "get", "k/7"], &b.endpoint, None);
    assert_eq!(out, "k/7\nv7\n");
    let (_, out, _) = weft(&["kv", "get", "k/late"], &b.endpoint, None);
    assert_eq!(out, "");
    // The restored node takes writes from there.
    let (code, _, _) = weft(&["kv", "put", "k/new", "1"], &b.endpoint, None);
    assert_eq!(code, 0);
    assert_eq!(status(&b.endpoint), rev + 1);
    // A node that is not there: a clear error and no file left behind.
    drop(a);
    let (code, _, err) = weft(
        &["snapshot", "save", dir.path().join("x").to_str().unwrap()],
        "http://127.0.0.1:9",
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach the weft node"), "{err}");
    assert!(!dir.path().join("x").exists() && !dir.path().join("x.part").exists());
}
