//! A throw-away single-member etcd for tests: the Debian `etcd` binary on free loopback ports
//! with a temp data dir, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd test server.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    /// The client URL, `http://127.0.0.1:PORT` (`https://` from [`EtcdServer::start_tls`]).
    pub endpoint: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// Starts one etcd member: its client and peer URLs, the initial cluster, and (for a
/// cluster of several) its token; logs at error level only.
fn spawn_member(
    bin: &std::path::Path,
    name: &str,
    dir: &std::path::Path,
    client: &str,
    peer: &str,
    initial: &str,
    extra: &[&std::ffi::OsStr],
) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(extra);
    cmd.args(["--name", name, "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", initial, "--log-level", "error"]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// The etcd binary, or `None` (said on stderr) when it is missing and `CI` is not `true`;
/// under `CI=true` a missing binary panics: CI must never skip these tests silently.
pub fn etcd_or_skip() -> Option<PathBuf> {
    let bin = etcd_binary();
    if bin.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("etcd is not installed but CI=true: install etcd-server (apt-get install etcd-server)");
        }
        eprintln!("etcd not found (apt-get install etcd-server); skipping etcd-backed test");
    }
    bin
}

impl EtcdServer {
    /// Starts etcd, or returns `None` if it is not installed and `CI` is not `true`.
    /// Under `CI=true` a missing binary panics: CI must never skip these tests silently.
    pub async fn start_or_skip() -> Option<EtcdServer> {
        Some(Self::start(etcd_or_skip()?).await)
    }

    /// Starts etcd from `bin` and waits until it answers.
    pub async fn start(bin: PathBuf) -> EtcdServer {
        Self::start_with(bin, None).await
    }

    /// Starts etcd serving its client URL (`https://127.0.0.1:PORT`) with `cert` and `key`,
    /// requiring client certificates signed by `client_ca` if given (`--client-cert-auth`);
    /// `tls` is how this waits for it to answer.
    pub async fn start_tls(
        bin: PathBuf,
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
        tls: crate::EtcdTls,
    ) -> EtcdServer {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cert-file".into(),
            cert.into(),
            "--key-file".into(),
            key.into(),
        ];
        if let Some(ca) = client_ca {
            args.extend([
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                ca.into(),
            ]);
        }
        Self::start_with(bin, Some((args, tls))).await
    }

    async fn start_with(
        bin: PathBuf,
        tls: Option<(Vec<std::ffi::OsString>, crate::EtcdTls)>,
    ) -> EtcdServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let extra: Vec<&std::ffi::OsStr> = tls
            .as_ref()
            .map(|(a, _)| a.iter().map(|s| s.as_os_str()).collect())
            .unwrap_or_default();
        let client_tls = tls.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("weft-etcd-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        for attempt in 0..5 {
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let initial = format!("weft-test={peer_url}");
            let child = spawn_member(
                &bin,
                "weft-test",
                &dir,
                &endpoint,
                &peer_url,
                &initial,
                &extra,
            );
            let mut server = EtcdServer {
                child,
                dir: dir.clone(),
                endpoint,
            };
            for _ in 0..100 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                let opts = client_tls.options().expect("the test's TLS files");
                if let Ok(mut c) = etcd_client::Client::connect([&server.endpoint], opts).await {
                    if c.status().await.is_ok() {
                        return server;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::warn!(attempt, "etcd did not come up; retrying on other ports");
            let _ = server.child.kill();
            let _ = server.child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            std::mem::forget(server);
        }
        panic!("etcd did not start after 5 attempts");
    }
}

impl EtcdServer {
    /// The etcd process's id (for its memory or CPU in tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away etcd cluster of several members on loopback (raft between them), each with
/// a temp data dir; killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<(Child, PathBuf)>,
    /// The members' client URLs.
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members, or returns `None` if etcd is not installed and `CI` is not `true`
    /// (under `CI=true` a missing binary panics).
    pub async fn start_or_skip(n: usize) -> Option<EtcdCluster> {
        Some(Self::start(etcd_or_skip()?, n).await)
    }

    /// Starts `n` members from `bin` and waits until the cluster has a leader.
    pub async fn start(bin: PathBuf, n: usize) -> EtcdCluster {
        Self::start_on(bin, n, "127.0.0.1").await
    }

    /// As [`EtcdCluster::start`], listening on `host` (an address of a test network).
    pub async fn start_on(bin: PathBuf, n: usize, host: &str) -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let token = format!("weft-{}-{}", std::process::id(), ports[0].0);
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://{host}:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let dir = std::env::temp_dir().join(format!("{token}-m{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            let endpoint = format!("http://{host}:{c}");
            let peer = format!("http://{host}:{p}");
            let name = format!("m{i}");
            let cluster: [&std::ffi::OsStr; 4] = [
                "--initial-cluster-token".as_ref(),
                token.as_ref(),
                "--initial-cluster-state".as_ref(),
                "new".as_ref(),
            ];
            let child = spawn_member(&bin, &name, &dir, &endpoint, &peer, &initial, &cluster);
            members.push((child, dir));
            endpoints.push(endpoint);
        }
        let cluster = EtcdCluster { members, endpoints };
        for _ in 0..200 {
            if let Ok(mut c) = etcd_client::Client::connect(&cluster.endpoints, None).await {
                if c.put("weft-test-ready", "1", None).await.is_ok() {
                    return cluster;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the etcd cluster of {n} members did not elect a leader in 20 s");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (child, dir) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&*dir);
        }
    }
}
