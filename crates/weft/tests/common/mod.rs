//! Helpers shared by the process tests: start `weft up`, run CLI commands.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_weft");

pub struct Node {
    pub child: Child,
    pub endpoint: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(dir: &Path) -> Node {
    start_with(&["--data-dir".as_ref(), dir.as_os_str()])
}

/// Starts `weft up --listen 127.0.0.1:0` with extra arguments; waits for its address.
pub fn start_with(args: &[&std::ffi::OsStr]) -> Node {
    start_on("127.0.0.1:0", args)
}

/// Starts `weft up` again on `dir` at the address of `endpoint` (after the last one was
/// killed), as an operator restarting a node would.
pub fn restart(dir: &Path, endpoint: &str) -> Node {
    let addr = endpoint.trim_start_matches("http://");
    start_on(addr, &["--data-dir".as_ref(), dir.as_os_str()])
}

/// A free loopback port (for a node that must keep its address across restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// As [`restart`], with extra arguments.
#[allow(dead_code)]
pub fn restart_with(dir: &Path, endpoint: &str, extra: &[&str]) -> Node {
    let addr = endpoint.trim_start_matches("http://");
    let mut args: Vec<&std::ffi::OsStr> = vec!["--data-dir".as_ref(), dir.as_os_str()];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    start_on(addr, &args)
}

fn start_on(listen: &str, args: &[&std::ffi::OsStr]) -> Node {
    let mut child = Command::new(BIN)
        .args(["up", "--listen", listen])
        .args(args)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft up");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read address");
    let endpoint = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Node { child, endpoint }
}

pub fn weft(args: &[&str], endpoint: &str, stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("WEFT_ENDPOINT", endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weft up` with the etcd API and `args`: the node and the etcd API's URL.
pub fn weft_etcd_with(args: &[&std::ffi::OsStr]) -> (Node, String) {
    weft_etcd_by(Command::new(BIN), args)
}

/// The same, `cmd` running the binary (`BIN` itself, or `taskset ... BIN`).
pub fn weft_etcd_by(mut cmd: Command, args: &[&std::ffi::OsStr]) -> (Node, String) {
    let mut child = cmd
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--etcd-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut l1, mut l2) = (String::new(), String::new());
    out.read_line(&mut l1).unwrap();
    out.read_line(&mut l2).unwrap();
    let url = |l: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap()
            .to_string()
    };
    (
        Node {
            child,
            endpoint: url(&l1),
        },
        url(&l2),
    )
}
