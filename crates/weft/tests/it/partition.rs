//! A network partition, with real processes in network namespaces (root only; under
//! `CI=true` a setup that fails is a test failure): three `weft up --failover-etcd` nodes, each
//! in its own namespace on a bridge with a 3-member etcd cluster; the primary's link is cut.
//! The old primary stops acknowledging writes (a client inside its namespace gets none
//! acknowledged), a replica takes over, and after the link comes back the old primary rejoins
//! as a replica; every acknowledged write is on the final primary at its revision, and no
//! revision was acknowledged for two different writes.
//!
//! A second test drops 5 % of the primary's packets both ways (iptables' `statistic` match in
//! its namespace) while 16 clients write under semi-sync 1: nothing acknowledged is lost and
//! the replicas end identical. Delay (`tc netem`) is not tested: this kernel has no
//! `sch_netem`.
#![cfg(feature = "etcd")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use weft_store_etcd::testing::{etcd_or_skip, EtcdCluster};

const BIN: &str = env!("CARGO_BIN_EXE_weft");
const TOKEN: &str = "partition-test-token";
const TTL: u64 = 2;

/// Sets up the namespaces, or says why not (a failure under `CI=true`).
fn net_or_skip(n: usize) -> Option<Net> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let why = match root {
        false => "not root".to_string(),
        true => match Net::setup(n) {
            Ok(net) => return Some(net),
            Err(e) => e,
        },
    };
    // What can be installed must be (`ip`: iproute2, installed by `cargo xtask test`); what
    // the machine forbids (namespaces without the capability, no root) is said loudly.
    let forbidden =
        !root || why.contains("Operation not permitted") || why.contains("Permission denied");
    assert!(
        !ci || forbidden,
        "CI=true: cannot set up network namespaces: {why}"
    );
    eprintln!("SKIPPED (this machine forbids network namespaces here): {why}");
    None
}

/// Every acknowledged write is on the node at `ep` at its revision, and no revision was
/// acknowledged for two writes.
async fn check_history(http: &reqwest::Client, ep: &str, acked: &[(String, i64)]) {
    let mut by_rev: HashMap<i64, &str> = HashMap::new();
    for (k, rev) in acked {
        if let Some(other) = by_rev.insert(*rev, k) {
            panic!("revision {rev} acknowledged for {other} and {k}");
        }
        let r: Value = http
            .post(format!("{ep}/v1/kv/range"))
            .bearer_auth(TOKEN)
            .json(&json!({"key": b64(k)}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = r["kvs"]
            .as_array()
            .and_then(|k| k.first())
            .map(|kv| int(&kv["mod_revision"]));
        assert_eq!(got, Some(*rev), "acknowledged {k} at {rev}");
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// A bridge with one namespace per node, removed on drop.
struct Net {
    tag: String,
    subnet: String,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn host_veth(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }
    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }
    fn bridge_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Creates the bridge and the namespaces; removes what it made if a step fails.
    fn setup(n: usize) -> Result<Net, String> {
        let net = Net::named();
        // On failure `net` is dropped here, which removes what was made.
        net.build(n).map(|()| net)
    }

    fn named() -> Net {
        // Unique per test in this process (tests run in parallel), and per process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        Net {
            tag: format!("w{}{k}", pid % 10_000),
            subnet: format!("10.{}.{}", 64 + (pid % 64), (pid / 64 * 4 + k) % 250),
        }
    }

    fn build(&self, n: usize) -> Result<(), String> {
        let net = self;
        let br = format!("{}br", net.tag);
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.bridge_ip()),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for i in 0..n {
            let (ns, h, g) = (net.ns(i), net.host_veth(i), format!("{}g{i}", net.tag));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "link", "add", &h, "type", "veth", "peer", "name", &g])?;
            sh(&["ip", "link", "set", &g, "netns", &ns])?;
            sh(&["ip", "link", "set", &h, "master", &br])?;
            sh(&["ip", "link", "set", &h, "up"])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                &g,
            ])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &g, "up"])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn link(&self, i: usize, up: bool) {
        sh(&[
            "ip",
            "link",
            "set",
            &self.host_veth(i),
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = sh(&["ip", "link", "del", &self.host_veth(i)]);
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "link", "del", &format!("{}br", self.tag)]);
    }
}

struct Node {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(net: &Net, i: usize, etcd: &str) -> Node {
    start_ttl(net, i, etcd, TTL)
}

fn start_ttl(net: &Net, i: usize, etcd: &str, ttl: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("{}:2480", net.ip(i));
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns(i),
            BIN,
            "up",
            "--listen",
            &listen,
            "--token",
            TOKEN,
            // Replication between nodes does not speak TLS yet.
            "--insecure-plaintext",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--failover-etcd",
            etcd,
            "--failover-ttl",
            &ttl.to_string(),
            "--repl-name",
            &format!("n{i}"),
        ])
        .args(["--durability", "semi-sync=1;timeout=3s"])
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft up");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line:?}");
    Node {
        child,
        endpoint: format!("http://{listen}"),
        _dir: dir,
    }
}

async fn status(http: &reqwest::Client, ep: &str) -> Option<Value> {
    let r = http
        .get(format!("{ep}/v1/repl/status"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    r.ok()?.json().await.ok()
}

fn int(v: &Value) -> i64 {
    v.as_str()
        .map_or_else(|| v.as_i64().unwrap_or(-1), |s| s.parse().unwrap_or(-1))
}

/// The node that is primary with `replicas` streaming replicas.
async fn primary(
    http: &reqwest::Client,
    nodes: &[Node],
    skip: Option<usize>,
    replicas: usize,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            if let Some(s) = status(http, &n.endpoint).await {
                let streaming = s["replicas"].as_array().map_or(0, |r| {
                    r.iter().filter(|x| x["state"] == "streaming").count()
                });
                if s["role"] == "primary" && streaming >= replicas {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no primary with {replicas} streaming replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Acked = Arc<Mutex<Vec<(String, i64)>>>;

/// Clients writing to `ep` until the first failure; acknowledged writes go to `acked`.
fn writers(
    http: &reqwest::Client,
    ep: &str,
    tag: &str,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|c| {
            let (http, ep, acked, tag) =
                (http.clone(), ep.to_string(), acked.clone(), tag.to_string());
            tokio::spawn(async move {
                for i in 0..1_000_000 {
                    let key = format!("{tag}/{c}/{i}");
                    let r = http
                        .post(format!("{ep}/v1/kv/put"))
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(5))
                        .json(&json!({"key": b64(&key), "value": b64("v")}))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    if r.status() != 200 {
                        return;
                    }
                    let v: Value = r.json().await.unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .push((key, int(&v["header"]["revision"])));
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_stops_acknowledging_and_rejoins_after_healing() {
    let Some(net) = net_or_skip(3) else { return };
    let Some(bin) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start_on(bin, 3, &net.bridge_ip()).await;
    let etcd = cluster.endpoints.join(",");
    let mut nodes: Vec<Node> = (0..3).map(|i| start(&net, i, &etcd)).collect();
    let http = reqwest::Client::new();
    let p = primary(&http, &nodes, None, 2).await;
    let acked: Acked = Arc::default();
    let before = writers(&http, &nodes[p].endpoint, "before", &acked);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Cut the primary off: from etcd, its replicas and these clients.
    net.link(p, false);
    let cut = Instant::now();
    // A client inside the primary's namespace still reaches it: nothing may be acknowledged.
    let mut script = String::new();
    for i in 0..20 {
        let body = json!({"key": b64(&format!("inside/{i}")), "value": b64("v")});
        script.push_str(&format!(
            "curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' -H 'Authorization: Bearer {TOKEN}' -H 'Content-Type: application/json' -d '{body}' {}/v1/kv/put\n",
            nodes[p].endpoint
        ));
    }
    let inside = Command::new("ip")
        .args(["netns", "exec", &net.ns(p), "sh", "-c", &script])
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&inside.stdout).to_string();
    assert!(
        !codes.lines().any(|c| c == "200"),
        "the cut-off primary acknowledged a write: {codes}"
    );
    assert!(
        codes.lines().any(|c| c == "421"),
        "it stepped down (421 not_primary): {codes}"
    );
    for t in before {
        t.await.unwrap();
    }
    // A replica took over.
    let q = primary(&http, &nodes, Some(p), 1).await;
    eprintln!(
        "new primary after {:?}; inside the partition: {}",
        cut.elapsed(),
        codes.replace('\n', " ")
    );
    let after = writers(&http, &nodes[q].endpoint, "after", &acked);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Heal: the old primary comes back as a replica of the new one.
    net.link(p, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(&http, &nodes[p].endpoint).await {
            if s["role"] == "replica"
                && s["follower"]["state"] == "streaming"
                && s["follower"]["primary"] == nodes[q].endpoint.as_str()
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the old primary did not rejoin");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in after {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Histories: every acknowledged write at its revision; no revision acknowledged twice.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too few writes: {}", acked.len());
    check_history(&http, &nodes[q].endpoint, &acked).await;
    let s = status(&http, &nodes[q].endpoint).await.unwrap();
    assert_eq!(
        s["replicas"].as_array().map_or(0, |r| r
            .iter()
            .filter(|x| x["state"] == "streaming")
            .count()),
        2,
        "{s}"
    );
    nodes.clear();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_packet_loss_no_acknowledged_write_is_lost_and_replicas_end_identical() {
    let Some(net) = net_or_skip(3) else { return };
    let Some(bin) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start_on(bin, 3, &net.bridge_ip()).await;
    let etcd = cluster.endpoints.join(",");
    // A longer lease: loss slows keepalives, and this test is about the data path.
    let nodes: Vec<Node> = (0..3).map(|i| start_ttl(&net, i, &etcd, 5)).collect();
    let http = reqwest::Client::new();
    let p = primary(&http, &nodes, None, 2).await;
    let ns = net.ns(p);
    for chain in ["INPUT", "OUTPUT"] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "iptables",
            "-A",
            chain,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.05",
            "-j",
            "DROP",
        ])
        .expect("iptables (apt-get install iptables)");
    }
    let acked: Acked = Arc::default();
    let t = Instant::now();
    let w = writers(&http, &nodes[p].endpoint, "lossy", &acked);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for t in w {
        t.abort();
    }
    let n = acked.lock().unwrap().len();
    eprintln!(
        "{n} writes acknowledged in {:?} under 5 % loss each way",
        t.elapsed()
    );
    sh(&["ip", "netns", "exec", &ns, "iptables", "-F"]).unwrap();
    assert!(n > 50, "too few writes under loss: {n}");
    // The primary may have changed under loss; whoever it is holds everything.
    let q = primary(&http, &nodes, None, 2).await;
    let acked = acked.lock().unwrap().clone();
    check_history(&http, &nodes[q].endpoint, &acked).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c: Value = http
            .post(format!("{}/v1/repl/check", nodes[q].endpoint))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if c["ok"] == true && c["results"].as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cluster);
}
