//! Python's `etcd3gw` (pinned, from PyPI into a venv under `target/`) against a real etcd and
//! against weft's etcd port: the same script (`tests/etcd3gw_check.py`) must pass on both.
//! Without python3 or PyPI the test is skipped, except under `CI=true`, where it fails.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use weft_store_etcd::testing::EtcdServer;

const ETCD3GW: &str = "etcd3gw==2.4.2";

/// A venv with etcd3gw, made once per target dir.
fn venv() -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("etcd3gw-venv");
    let py = dir.join("bin/python");
    if !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status();
        if !ok.map(|s| s.success()).unwrap_or(false) {
            return Err("python3 -m venv failed (apt-get install python3-venv)".into());
        }
    }
    let ok = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", ETCD3GW])
        .status();
    if !ok.map(|s| s.success()).unwrap_or(false) {
        return Err(format!("pip install {ETCD3GW} failed"));
    }
    Ok(py)
}

fn run(py: &PathBuf, url: &str) -> (bool, String) {
    let hp = url.trim_start_matches("http://");
    let (host, port) = hp.rsplit_once(':').unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/etcd3gw_check.py");
    let out = Command::new(py)
        .args([script, host, port])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd3gw_works_against_etcd_and_weft_alike() {
    let py = match venv() {
        Ok(p) => p,
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {e}");
            eprintln!("skipping: {e}");
            return;
        }
    };
    let Some(etcd) = EtcdServer::start_or_skip().await else {
        return;
    };
    let weft = common::start().await;
    for (name, url) in [("etcd", etcd.endpoint.clone()), ("weft", weft.url.clone())] {
        let (py, url) = (py.clone(), url.clone());
        let (ok, out) = tokio::task::spawn_blocking(move || run(&py, &url))
            .await
            .unwrap();
        assert!(ok, "{name}: {out}");
        assert!(out.contains("ok"), "{name}: {out}");
    }
}
