//! Automatic failover through a real 3-member etcd cluster: three `weft up --failover-etcd`
//! nodes elect a primary; 64 clients write under semi-sync 1; `kill -9` of the primary; a
//! replica takes over within the lease TTL + 1 s and holds every acknowledged write; the old
//! primary, restarted, comes back as a replica of the new one (its unreplicated tail
//! discarded) and matches it by hash. Run twice: directly, and with every node's HTTP traffic
//! (replication, forwarded writes, clients) through a proxy adding 5 ms each way (`tc netem`
//! is not available in this kernel).
#![cfg(feature = "etcd")]

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, restart_with, Node};
use serde_json::{json, Value};
use weft_store_etcd::testing::EtcdCluster;

const TTL: u64 = 2;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn status(http: &reqwest::Client, ep: &str) -> Option<Value> {
    http.get(format!("{ep}/v1/repl/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn put(http: &reqwest::Client, ep: &str, key: &str) -> (u16, Value) {
    let r = http
        .post(format!("{ep}/v1/kv/put"))
        .timeout(Duration::from_secs(15))
        .json(&json!({"key": b64(key), "value": b64("v")}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn int(v: &Value) -> i64 {
    v.as_str()
        .map_or_else(|| v.as_i64().unwrap(), |s| s.parse().unwrap())
}

struct Member {
    name: String,
    dir: tempfile::TempDir,
    endpoint: String,
    /// How the others and the clients reach it: the endpoint, or a delaying proxy to it.
    advertise: String,
    node: Option<Node>,
}

/// Forwards each connection to `upstream`, holding every chunk `delay` before writing it.
async fn delay_proxy(l: tokio::net::TcpListener, upstream: String, delay: Duration) {
    loop {
        let Ok((c, _)) = l.accept().await else { return };
        let up = upstream.clone();
        tokio::spawn(async move {
            let Ok(s) = tokio::net::TcpStream::connect(&up).await else {
                return;
            };
            let _ = (c.set_nodelay(true), s.set_nodelay(true));
            let (cr, cw) = c.into_split();
            let (sr, sw) = s.into_split();
            tokio::join!(pipe(cr, sw, delay), pipe(sr, cw, delay));
        });
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, b)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

type Acked = Arc<Mutex<HashMap<String, i64>>>;

/// 64 clients writing to `ep` until their first failure (the primary died, stepped down or
/// lost its replicas: not acknowledged); acknowledged writes with their revisions.
fn writers(http: &reqwest::Client, ep: &str) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let tasks = (0..64)
        .map(|c| {
            let (http, ep, acked) = (http.clone(), ep.to_string(), acked.clone());
            tokio::spawn(async move {
                for i in 0..1_000_000 {
                    let key = format!("c{c}/{i}");
                    let (s, v) = put(&http, &ep, &key).await;
                    if s != 200 {
                        return;
                    }
                    acked
                        .lock()
                        .unwrap()
                        .insert(key, int(&v["header"]["revision"]));
                }
            })
        })
        .collect();
    (acked, tasks)
}

/// One test at a time: each runs an etcd cluster, three nodes and 64 clients on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start(m: &mut Member, etcd: &str) {
    let extra = [
        "--failover-etcd",
        etcd,
        "--failover-ttl",
        &TTL.to_string(),
        "--failover-group",
        "t",
        "--repl-name",
        &m.name,
        "--durability",
        "semi-sync=1;timeout=10s",
        "--advertise",
        &m.advertise,
    ];
    m.node = Some(restart_with(m.dir.path(), &m.endpoint, &extra));
}

/// Waits for one primary whose two replicas stream; returns its index.
async fn settled(http: &reqwest::Client, ms: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, m) in ms.iter().enumerate() {
            if m.node.is_none() {
                continue;
            }
            if let Some(s) = status(http, &m.endpoint).await {
                let streaming = s["replicas"].as_array().map_or(0, |r| {
                    r.iter().filter(|x| x["state"] == "streaming").count()
                });
                if s["role"] == "primary"
                    && streaming == ms.iter().filter(|m| m.node.is_some()).count() - 1
                {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no primary with streaming replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_from_a_killed_primary_and_the_old_one_rejoins() {
    let _one = SERIAL.lock().await;
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_5_ms_of_delay_each_way_between_nodes_and_clients() {
    let _one = SERIAL.lock().await;
    scenario(Some(Duration::from_millis(5))).await;
}

async fn scenario(delay: Option<Duration>) {
    let Some(cluster) = EtcdCluster::start_or_skip(3).await else {
        return;
    };
    let etcd = cluster.endpoints.join(",");
    let mut ms = Vec::new();
    for n in ["a", "b", "c"] {
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let advertise = match delay {
            None => endpoint.clone(),
            Some(d) => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", l.local_addr().unwrap());
                tokio::spawn(delay_proxy(
                    l,
                    endpoint.trim_start_matches("http://").to_string(),
                    d,
                ));
                url
            }
        };
        ms.push(Member {
            name: n.to_string(),
            dir: tempfile::tempdir().unwrap(),
            endpoint,
            advertise,
            node: None,
        });
    }
    for m in ms.iter_mut() {
        start(m, &etcd);
    }
    let http = reqwest::Client::new();
    let p = settled(&http, &ms).await;
    let ep = ms[p].advertise.clone();
    // 64 clients write to the primary until it dies.
    let (acked, tasks) = writers(&http, &ep);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut old = ms[p].node.take().unwrap();
    old.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = old.child.wait();
    drop(old);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 500, "too few writes: {}", acked.len());
    // A replica takes over and accepts writes.
    let (n, took) = loop {
        let mut found = None;
        for (i, m) in ms.iter().enumerate() {
            if i == p {
                continue;
            }
            if let Some(s) = status(&http, &m.endpoint).await {
                if s["role"] == "primary" {
                    found = Some(i);
                }
            }
        }
        if let Some(i) = found {
            // semi-sync 1: the write returns once the other replica holds it.
            let (s, v) = put(&http, &ms[i].advertise, "after-failover").await;
            assert_eq!(s, 200, "{v}");
            break (i, killed.elapsed());
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no new primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "failover took {took:?} (lease TTL {TTL} s, delay {delay:?}); {} acknowledged writes",
        acked.len()
    );
    assert!(
        took <= Duration::from_secs(TTL + 1),
        "failover took {took:?}, over the TTL + 1 s"
    );
    // Every acknowledged write is on the new primary at its revision.
    let mut missing = 0;
    for (k, rev) in &acked {
        let r: Value = http
            .post(format!("{}/v1/kv/range", ms[n].endpoint))
            .json(&json!({"key": b64(k)}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["kvs"]
            .as_array()
            .and_then(|k| k.first())
            .map(|kv| int(&kv["mod_revision"]))
            != Some(*rev)
        {
            missing += 1;
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged writes missing",
        acked.len()
    );
    let st = status(&http, &ms[n].endpoint).await.unwrap();
    assert!(int(&st["epoch"]) >= 2, "a new epoch: {st}");
    // The old primary comes back as a replica of the new one.
    start(&mut ms[p], &etcd);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&http, &ms[p].endpoint).await;
        if let Some(s) = &s {
            if s["role"] == "replica"
                && s["follower"]["state"] == "streaming"
                && s["follower"]["primary"] == ms[n].advertise.as_str()
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the old primary did not rejoin: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&http, &ms).await;
    let (code, out, err) = common::weft(&["repl", "check"], &ms[n].endpoint, None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(" match").count(), 2, "{out}");
}
