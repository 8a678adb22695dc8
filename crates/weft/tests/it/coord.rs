//! Locks, elections and discovery through the CLI as real processes, with `kill -9`, against a
//! node on the embedded store and (feature `etcd`) a node serving etcd.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common;
use common::*;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn spawn_cli(args: &[&str], ep: &str) -> Child {
    Command::new(BIN)
        .args(args)
        .env("WEFT_ENDPOINT", ep)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Kills a process and everything in its process group, as a machine crash would.
fn kill_group(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{}", c.id())])
        .status();
    let _ = c.wait();
}

fn lines(c: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = c.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, pat: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no line with {pat:?} within {limit:?}"));
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(pat) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line with {pat:?} within {limit:?}: {e}"),
        }
    }
}

fn wait_exit(c: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Five `weft lock` processes contend; the first holder is killed with `kill -9` inside its
/// critical section. Every critical section is logged with its fencing token: none overlap,
/// tokens strictly increase, and the others all run once the dead holder's lease expires.
fn lock_exclusion_with_kill_9(ep: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    let section = |sleep: &str| {
        format!("echo start $WEFT_FENCING_TOKEN $(date +%s%N) >> {log}; sleep {sleep}; echo end $WEFT_FENCING_TOKEN $(date +%s%N) >> {log}")
    };
    let first_script = section("5");
    let mut first = spawn_cli(
        &[
            "lock",
            "--ttl",
            "2",
            "crit",
            "--",
            "sh",
            "-c",
            &first_script,
        ],
        ep,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("start")
    {
        assert!(Instant::now() < deadline, "first holder never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = section("0.2");
    let mut others: Vec<Child> = (0..4)
        .map(|_| {
            spawn_cli(
                &["lock", "--ttl", "2", "crit", "--", "sh", "-c", &script],
                ep,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = now_ns();
    kill_group(&mut first);
    for o in &mut others {
        assert_eq!(wait_exit(o, Duration::from_secs(30)), 0, "a waiter failed");
    }
    let text = std::fs::read_to_string(log).unwrap();
    let mut sections: Vec<(i64, u128, u128)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (token, t): (i64, u128) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        match f[0] {
            "start" => sections.push((token, t, killed_at)),
            "end" => sections.iter_mut().find(|s| s.0 == token).unwrap().2 = t,
            other => panic!("bad log line {other}"),
        }
    }
    assert_eq!(sections.len(), 5, "{text}");
    sections.sort_by_key(|s| s.1);
    for w in sections.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "fencing tokens must strictly increase: {sections:?}"
        );
        assert!(w[0].2 <= w[1].1, "critical sections overlap: {sections:?}");
    }
    let handover = (sections[1].1 - killed_at) as f64 / 1e9;
    eprintln!("lock handover after kill -9 of the holder: {handover:.2}s (TTL 2s)");
}

/// Three candidates; the leader is killed with `kill -9`; an observer sees the next leader
/// within the TTL plus one second.
fn election_failover_with_kill_9(ep: &str) {
    let mut a = spawn_cli(&["elect", "--ttl", "2", "main", "node-a"], ep);
    let a_out = lines(&mut a);
    wait_line(&a_out, "elected main: node-a", Duration::from_secs(10));
    let mut b = spawn_cli(&["elect", "--ttl", "2", "main", "node-b"], ep);
    let b_out = lines(&mut b);
    let mut obs = spawn_cli(&["elect", "--observe", "main"], ep);
    let obs_out = lines(&mut obs);
    wait_line(&obs_out, "node-a", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    kill_group(&mut a);
    wait_line(&obs_out, "node-b", Duration::from_secs(10));
    let failover = killed.elapsed();
    wait_line(&b_out, "elected main: node-b", Duration::from_secs(5));
    eprintln!("election failover after kill -9 of the leader: {failover:?} (TTL 2s)");
    assert!(
        failover <= Duration::from_secs(3),
        "failover took {failover:?}"
    );
    // Resigning on SIGTERM hands over at once.
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    assert_eq!(wait_exit(&mut b, Duration::from_secs(10)), 0);
    wait_line(&obs_out, "no leader", Duration::from_secs(5));
    kill_group(&mut obs);
}

/// A registered instance disappears within the TTL after `kill -9` of its process.
fn registration_expires_after_kill_9(ep: &str) {
    let mut r = spawn_cli(
        &[
            "svc",
            "register",
            "--ttl",
            "2",
            "--tag",
            "blue",
            "api",
            "i1",
            "10.0.0.1:80",
        ],
        ep,
    );
    let out = lines(&mut r);
    wait_line(&out, "registered api/i1", Duration::from_secs(10));
    let (_, list, _) = weft(&["svc", "list", "api"], ep, None);
    assert_eq!(list, "i1 10.0.0.1:80 passing [blue]\n");
    let killed = Instant::now();
    kill_group(&mut r);
    loop {
        let (code, list, _) = weft(&["svc", "list", "api"], ep, None);
        assert_eq!(code, 0);
        if list.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "instance still listed {:?} after kill -9",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "instance removed {:?} after kill -9 (TTL 2s)",
        killed.elapsed()
    );
}

#[test]
fn embedded_lock_exclusion_with_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    lock_exclusion_with_kill_9(&node.endpoint);
}

#[test]
fn embedded_election_failover_with_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    election_failover_with_kill_9(&node.endpoint);
}

#[test]
fn embedded_registration_expires_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    registration_expires_after_kill_9(&node.endpoint);
}

#[test]
fn lock_exit_code_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (code, _, _) = weft(
        &["lock", "x", "--", "sh", "-c", "exit 7"],
        &node.endpoint,
        None,
    );
    assert_eq!(code, 7, "the command's exit code is passed through");
    let (code, _, err) = weft(
        &["lock", "x", "--", "/nonexistent/cmd"],
        &node.endpoint,
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot run"), "{err}");
    let (code, _, err) = weft(&["lock", "bad/name", "--", "true"], &node.endpoint, None);
    assert_ne!(code, 0);
    assert!(err.contains("without '/'"), "{err}");
}

/// A CLI process whose stderr goes to a file (read with [`err_of`]).
fn spawn_logged(args: &[&str], ep: &str, err: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(args)
        .env("WEFT_ENDPOINT", ep)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(err).unwrap())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn err_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_for_file(path: &std::path::Path, pat: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(pat)
    {
        assert!(
            Instant::now() < deadline,
            "no {pat:?} in {path:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -9` of the node and a restart within half a second: the holder keeps its lock (its
/// lease survives), its command runs to the end, and the waiter gets the lock after it, with a
/// larger token; nobody reports a loss.
#[test]
fn a_node_restart_is_not_a_lost_lock() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let log = files.path().join("log");
    let section = |sleep: &str| {
        format!(
            "echo start $WEFT_FENCING_TOKEN >> {l}; sleep {sleep}; echo end $WEFT_FENCING_TOKEN >> {l}",
            l = log.display()
        )
    };
    let (holder_err, waiter_err) = (files.path().join("h"), files.path().join("w"));
    let holder_sh = section("3");
    let mut holder = spawn_logged(
        &["lock", "--ttl", "5", "x", "--", "sh", "-c", &holder_sh],
        &ep,
        &holder_err,
    );
    wait_for_file(&log, "start", Duration::from_secs(10));
    let waiter_sh = section("0");
    let mut waiter = spawn_logged(
        &["lock", "--ttl", "5", "x", "--", "sh", "-c", &waiter_sh],
        &ep,
        &waiter_err,
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(node); // kill -9
    std::thread::sleep(Duration::from_millis(300));
    let _node = restart(dir.path(), &ep);
    let h = wait_exit(&mut holder, Duration::from_secs(20));
    let w = wait_exit(&mut waiter, Duration::from_secs(20));
    let (he, we) = (err_of(&holder_err), err_of(&waiter_err));
    assert_eq!(h, 0, "the holder ran to the end: {he}");
    assert_eq!(w, 0, "the waiter got the lock: {we}");
    assert!(!he.contains("lost"), "{he}");
    assert!(
        he.contains("retrying"),
        "the holder said it reconnects: {he}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, i64)> = text
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').unwrap();
            (what, token.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!((lines[0].0, lines[1].0), ("start", "end"), "{text}");
    assert_eq!(
        lines[0].1, lines[1].1,
        "the holder's section is whole: {text}"
    );
    assert!(lines[2].1 > lines[1].1, "the next token is larger: {text}");
}

/// A contender started while the node is down waits for it (saying so), then runs; with
/// `--timeout` it gives up with exit 124.
#[test]
fn a_contender_waits_for_a_node_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    drop(node);
    let t0 = Instant::now();
    let (code, _, err) = weft(&["lock", "--timeout", "1", "y", "--", "true"], &ep, None);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("not acquired within"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let e = files.path().join("e");
    let mut c = spawn_logged(&["lock", "y", "--", "true"], &ep, &e);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        c.try_wait().unwrap().is_none(),
        "still waiting: {}",
        err_of(&e)
    );
    let _node = restart(dir.path(), &ep);
    assert_eq!(
        wait_exit(&mut c, Duration::from_secs(20)),
        0,
        "{}",
        err_of(&e)
    );
    let e = err_of(&e);
    assert!(e.contains("cannot reach") && e.contains("retrying"), "{e}");
    assert!(e.contains("answers again"), "{e}");
}

/// A lost lock kills the command and exits 125 with one message, whatever detected it.
#[test]
fn a_lost_lock_exits_125() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let e = files.path().join("e");
    let mut c = spawn_logged(
        &["lock", "--ttl", "3", "z", "--", "sleep", "30"],
        &node.endpoint,
        &e,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = weft(
            &["kv", "get", "/weft/lock/z/", "--prefix"],
            &node.endpoint,
            None,
        );
        if !out.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, _) = weft(
        &["kv", "del", "/weft/lock/z/", "--prefix"],
        &node.endpoint,
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(wait_exit(&mut c, Duration::from_secs(10)), 125);
    let e = err_of(&e);
    assert!(
        e.contains("weft lock: lock z lost; the command was killed"),
        "{e}"
    );
}

/// The leader and an observer ride out a node restart; the observer's JSON lines are objects
/// (no bare `null`), the leader's JSON carries its value, and the observer reports no change
/// that did not happen.
#[test]
fn leader_and_observer_survive_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let ep = node.endpoint.clone();
    let (oe, le) = (files.path().join("o"), files.path().join("l"));
    let mut obs = spawn_logged(&["elect", "--observe", "--json", "main"], &ep, &oe);
    let obs_out = lines(&mut obs);
    let first: serde_json::Value =
        serde_json::from_str(&wait_line(&obs_out, "{", Duration::from_secs(10))).unwrap();
    assert_eq!(first, serde_json::json!({"name": "main", "leader": null}));
    let mut leader = spawn_logged(
        &["elect", "--json", "--ttl", "3", "main", "node-a"],
        &ep,
        &le,
    );
    let l_out = lines(&mut leader);
    let elected: serde_json::Value =
        serde_json::from_str(&wait_line(&l_out, "{", Duration::from_secs(10))).unwrap();
    assert_eq!(elected["value"], "node-a");
    assert_eq!(elected["name"], "main");
    let term = elected["term"].as_i64().unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(&wait_line(&obs_out, "node-a", Duration::from_secs(10))).unwrap();
    assert_eq!(seen["leader"]["term"], term);
    drop(node);
    std::thread::sleep(Duration::from_millis(300));
    let _node = restart(dir.path(), &ep);
    // Longer than the TTL: the leadership was kept through the restart.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        leader.try_wait().unwrap().is_none(),
        "leader exited: {}",
        err_of(&le)
    );
    assert!(
        obs.try_wait().unwrap().is_none(),
        "observer exited: {}",
        err_of(&oe)
    );
    let (_, now, _) = weft(
        &["kv", "get", "/weft/election/main/", "--prefix"],
        &ep,
        None,
    );
    assert!(now.contains("node-a"), "{now}");
    assert!(obs_out.try_recv().is_err(), "no change was reported");
    let _ = Command::new("kill")
        .args(["-TERM", &leader.id().to_string()])
        .status();
    assert_eq!(wait_exit(&mut leader, Duration::from_secs(10)), 0);
    let gone: serde_json::Value =
        serde_json::from_str(&wait_line(&obs_out, "{", Duration::from_secs(10))).unwrap();
    assert_eq!(gone, serde_json::json!({"name": "main", "leader": null}));
    kill_group(&mut obs);
}

#[cfg(feature = "etcd")]
mod on_etcd {
    use super::*;
    use weft_store_etcd::testing::EtcdServer;

    fn etcd_node() -> Option<(EtcdServer, Node)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(EtcdServer::start_or_skip())?;
        let node = start_with(&["--etcd-endpoints".as_ref(), server.endpoint.as_ref()]);
        Some((server, node))
    }

    #[test]
    fn etcd_lock_exclusion_with_kill_9() {
        let Some((_etcd, node)) = etcd_node() else {
            return;
        };
        lock_exclusion_with_kill_9(&node.endpoint);
    }

    #[test]
    fn etcd_election_failover_with_kill_9() {
        let Some((_etcd, node)) = etcd_node() else {
            return;
        };
        election_failover_with_kill_9(&node.endpoint);
    }

    #[test]
    fn etcd_registration_expires_after_kill_9() {
        let Some((_etcd, node)) = etcd_node() else {
            return;
        };
        registration_expires_after_kill_9(&node.endpoint);
    }
}
