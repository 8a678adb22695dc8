//! The gateway as processes: inside `weft up`, routed with `weft route`, over an instance
//! registered with `weft svc register`; and `weft gateway` refusing a bad config.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{weft, BIN};

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let addr = addr.trim_start_matches("http://");
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Reads the process's stdout until it has announced `n` `http://` addresses.
fn addresses(out: &mut impl BufRead, n: usize) -> Vec<String> {
    let mut addrs = Vec::new();
    while addrs.len() < n {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "process exited before announcing {n} addresses"
        );
        if let Some(a) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            addrs.push(a.to_string());
        }
    }
    addrs
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gateway_in_the_node_routes_to_registered_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Command::new(BIN)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--gateway-admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap());
    let addrs = addresses(&mut out, 3);
    let _node = Kill(node);
    let (api, gw, admin) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
    // No routes yet.
    let (status, body) = http_get(&gw, "/api/health");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("x-weft-reason: no-route"), "{body}");
    // The node's own HTTP API stands in for a service.
    let reg = Kill(
        Command::new(BIN)
            .args([
                "svc",
                "register",
                "nodeapi",
                "n1",
                api.trim_start_matches("http://"),
                "--ttl",
                "5",
            ])
            .env("WEFT_ENDPOINT", &api)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (code, _, err) = weft(
        &[
            "route",
            "add",
            "bad",
            "--upstream",
            "nodeapi",
            "--prefix",
            "nope",
        ],
        &api,
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("path_prefix") && err.contains("must start with '/'"),
        "{err}"
    );
    let (code, stdout, err) = weft(
        &[
            "route",
            "add",
            "api",
            "--upstream",
            "nodeapi",
            "--prefix",
            "/api",
            "--rewrite",
            "",
        ],
        &api,
        None,
    );
    assert_eq!(code, 0, "{stdout}{err}");
    wait_for("the route and the instance", || {
        http_get(&gw, "/api/health").0 == 200
    });
    let (_, body) = http_get(&gw, "/api/health");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-request-id:"),
        "{body}"
    );
    let (code, list, _) = weft(&["route", "list"], &api, None);
    assert_eq!(code, 0);
    assert!(list.contains("api\tprefix /api\t-> nodeapi"), "{list}");
    let (status, st) = http_get(&admin, "/status");
    assert_eq!(status, 200);
    assert!(
        st.contains("\"name\":\"api\"") && st.contains("\"service\":\"nodeapi\""),
        "{st}"
    );
    // The instance goes away: 503; the route goes away: 404.
    drop(reg);
    let (code, _, _) = weft(&["svc", "deregister", "nodeapi", "n1"], &api, None);
    let _ = code;
    wait_for("the instance to leave", || {
        http_get(&gw, "/api/health").0 == 503
    });
    let (code, _, err) = weft(&["route", "rm", "api"], &api, None);
    assert_eq!(code, 0, "{err}");
    wait_for("the route to leave", || {
        http_get(&gw, "/api/health").0 == 404
    });
    let (code, _, err) = weft(&["route", "rm", "api"], &api, None);
    assert_ne!(code, 0);
    assert!(err.contains("no stored route"), "{err}");
}

#[test]
fn gateway_refuses_a_bad_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[[upstream]]\nname = \"u\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\n\n[[route]]\nname = \"r\"\nupstream = \"v\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["gateway", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gw.toml:5: route[0].upstream: upstream \"v\" is not defined (defined: u)"),
        "{err}"
    );
}

#[test]
fn standalone_gateway_logs_counts_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(&dir.path().join("node"));
    let upstream = node.endpoint.trim_start_matches("http://").to_string();
    let cfg = dir.path().join("gw.toml");
    let write = |path: &str| {
        std::fs::write(
            &cfg,
            format!("[server]\naccess_log = true\n\n[[route]]\nname = \"r\"\npath_prefix = \"{path}\"\nrewrite = \"\"\nupstream = \"node\"\n\n[[upstream]]\nname = \"node\"\nendpoints = [{{ address = \"{upstream}\" }}]\n"),
        )
        .unwrap()
    };
    write("/a");
    let mut gw = Command::new(BIN)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = gw.id();
    let mut out = BufReader::new(gw.stdout.take().unwrap());
    let _gw = Kill(gw);
    let addrs = addresses(&mut out, 2);
    let (gw_addr, admin) = (addrs[0].clone(), addrs[1].clone());
    let (status, body) = http_get(&gw_addr, "/a/health");
    assert_eq!(status, 200, "{body}");
    // The access log line.
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let entry: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(entry["route"], "r");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["path"], "/a/health");
    assert_eq!(entry["endpoint"], upstream);
    assert_eq!(entry["request_id"].as_str().unwrap().len(), 32);
    // Metrics per route, upstream and status class.
    let (_, metrics) = http_get(&admin, "/metrics");
    assert!(
        metrics.contains(
            "weft_gateway_requests_total{route=\"r\",upstream=\"node\",status=\"2xx\"} 1"
        ),
        "{metrics}"
    );
    // SIGHUP applies a changed file (the poller would too, within a second).
    write("/b");
    let rc = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    wait_for("the new route", || http_get(&gw_addr, "/b/health").0 == 200);
    assert_eq!(http_get(&gw_addr, "/a/health").0, 404);
    // A broken file keeps the running configuration.
    std::fs::write(&cfg, "[[route]]\nname = 1\n").unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http_get(&gw_addr, "/b/health").0, 200);
}

/// Two stateless gateways on one etcd: an instance registered in etcd, a route stored in etcd,
/// and a global rate limit counted in etcd, so the limit holds for both gateways together.
#[cfg(feature = "etcd")]
#[test]
fn two_gateways_on_etcd_share_routes_discovery_and_limits() {
    use std::sync::Arc;
    use weft_store::StoreExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(etcd) = rt.block_on(weft_store_etcd::testing::EtcdServer::start_or_skip()) else {
        return;
    };
    // The upstream: a weft node's own HTTP API.
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(&dir.path().join("node"));
    let upstream = node.endpoint.trim_start_matches("http://").to_string();
    let (_session, _reg) = rt.block_on(async {
        let store: Arc<dyn weft_store::Store> = Arc::new(
            weft_store_etcd::EtcdStore::connect(&[etcd.endpoint.as_str()])
                .await
                .unwrap(),
        );
        let session = weft_coord::Session::new(store.clone(), Default::default())
            .await
            .unwrap();
        let reg = weft_coord::Registry::new(store.clone())
            .register(
                &session,
                "nodeapi",
                weft_coord::Instance::new("n1", upstream.clone()),
                None,
            )
            .await
            .unwrap();
        let route = serde_json::json!({
            "name": "api", "path_prefix": "/api", "rewrite": "", "upstream": "nodeapi",
            "rate_limit": {"per_second": 5, "by": "route", "global": true}
        });
        store
            .put_kv("/weft/gateway/routes/api", route.to_string())
            .await
            .unwrap();
        (session, reg)
    });
    let start_gw = || {
        let mut gw = Command::new(BIN)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--etcd-endpoints",
                &etcd.endpoint,
            ])
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(gw.stdout.take().unwrap());
        let addr = addresses(&mut out, 1).remove(0);
        (Kill(gw), addr, out)
    };
    let (_g1, a1, _o1) = start_gw();
    let (_g2, a2, _o2) = start_gw();
    for a in [&a1, &a2] {
        wait_for("route and instance from etcd", || {
            matches!(http_get(a, "/api/health").0, 200 | 429)
        });
    }
    // A fresh wall-clock second (the requests above may have counted in the current one),
    // then 20 requests alternating between the gateways.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(1000 - ms as u64 + 5));
    let mut ok = 0;
    for i in 0..20 {
        let a = if i % 2 == 0 { &a1 } else { &a2 };
        match http_get(a, "/api/health").0 {
            200 => ok += 1,
            429 => {}
            s => panic!("status {s}"),
        }
    }
    assert_eq!(ok, 5, "5 per second across both gateways");
}
