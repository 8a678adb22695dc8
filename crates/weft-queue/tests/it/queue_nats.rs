//! The queue conformance suite on NATS JetStream: a `nats-server -js` of its own per case, on
//! a free loopback port with a temporary store dir. Without the binary the cases are skipped,
//! except in CI (`CI=true`), where that is a failure.

use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};
use weft_queue::Queue;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.is_file())
            })
        })
}

async fn start(_name: &str) -> Option<(std::sync::Arc<dyn weft_queue::Queue>, Server)> {
    let Some(bin) = nats_server() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("nats-server is not installed (apt-get install nats-server); CI runs the NATS suite");
        }
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let server = Server { child, _dir: dir };
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match weft_queue::nats::NatsQueue::connect(&url).await {
            Ok(q) => {
                // JetStream answers once the server is fully up.
                if q.topics().await.is_ok() {
                    return Some((std::sync::Arc::new(q), server));
                }
            }
            Err(e) if Instant::now() > deadline => panic!("nats-server did not start: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

weft_queue::queue_tests!(start);
