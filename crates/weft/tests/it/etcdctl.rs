//! etcdctl (Debian etcd-client, v3.4) against a real etcd and against `weft up --etcd-listen`:
//! one list of commands, normalized outputs compared; and `etcdctl lock` from three processes
//! keeps mutual exclusion on weft.
#![cfg(feature = "etcd")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use common::*;
use weft_store_etcd::testing::EtcdServer;

struct WeftEtcd {
    _node: Node,
    url: String,
    _dir: tempfile::TempDir,
}

fn weft_with_etcd_api() -> WeftEtcd {
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = weft_etcd_on(dir.path());
    WeftEtcd {
        _node: node,
        url,
        _dir: dir,
    }
}

/// `weft up` on `data_dir` with the etcd API: the node and the etcd API's URL.
fn weft_etcd_on(data_dir: &std::path::Path) -> (Node, String) {
    weft_etcd_with(&["--data-dir".as_ref(), data_dir.as_os_str()])
}

/// `weft snapshot restore FILE --data-dir DIR`: exit code, stdout, stderr.
fn weft_restore(file: &std::path::Path, dir: &std::path::Path) -> (i32, String, String) {
    weft(
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        "",
        None,
    )
}

/// A fresh etcd server if etcdctl and etcd are installed (`None`: skip; a failure under
/// `CI=true`).
fn etcdctl_and_etcd() -> Option<EtcdServer> {
    if !etcdctl_available() {
        eprintln!("etcdctl not installed; skipping");
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(EtcdServer::start_or_skip())
}

/// etcdctl with `args` (within 20 s): success and output, as they are. Also for commands on
/// local files (`snapshot status`, `snapshot restore`).
fn etcdctl_local(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "etcdctl"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `etcdctl snapshot restore FILE --data-dir DIR` (etcd's database format only).
fn etcdctl_snapshot_restore(file: &std::path::Path, dir: &std::path::Path) -> (bool, String) {
    etcdctl_local(&[
        "snapshot".as_ref(),
        "restore".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
    ])
}

/// etcdctl against `endpoint`: success and output, as they are.
fn etcdctl_raw(endpoint: &str, args: &[&str]) -> (bool, String) {
    let flag = format!("--endpoints={endpoint}");
    let mut all: Vec<&std::ffi::OsStr> = vec![flag.as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    etcdctl_local(&all)
}

fn etcdctl_available() -> bool {
    let ok = Command::new("etcdctl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("etcdctl is not installed but CI=true: apt-get install etcd-client");
    }
    ok
}

fn etcdctl(
    endpoint: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Option<Duration>,
) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg(format!(
        "{}",
        timeout.unwrap_or(Duration::from_secs(8)).as_secs_f64()
    ))
    .arg("etcdctl")
    .arg(format!("--endpoints={endpoint}"))
    .args(args)
    .env("ETCDCTL_API", "3")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    normalize(&text)
}

/// Lease ids, revisions, remaining TTLs and lock/election key suffixes differ between servers.
fn normalize(s: &str) -> String {
    // The Go client's own retry logs carry random ids; they are not answers.
    let s: String = s
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = String::new();
    for tok in s.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
        let word: String = tok
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let rest = &tok[word.len()..];
        let is_hex = word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit());
        let is_num = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit());
        if is_hex || is_num {
            out.push('#');
        } else {
            out.push_str(&word);
        }
        out.push_str(rest);
    }
    out
}

/// The script: (args, stdin, timeout for commands that hold or follow).
fn script() -> Vec<(Vec<&'static str>, Option<&'static str>, Option<Duration>)> {
    let hold = Some(Duration::from_secs(2));
    vec![
        (vec!["put", "app/a", "1"], None, None),
        (vec!["put", "app/b", "2"], None, None),
        (vec!["put", "app/c", "3"], None, None),
        (vec!["put", "app/a", "10", "--prev-kv"], None, None),
        (vec!["get", "app/a"], None, None),
        (vec!["get", "app/", "--prefix"], None, None),
        (vec!["get", "app/", "--prefix", "--limit=2"], None, None),
        (vec!["get", "app/", "--prefix", "--keys-only"], None, None),
        (
            vec!["get", "app/", "--prefix", "--count-only", "-w", "fields"],
            None,
            None,
        ),
        (vec!["get", "app/a", "--rev=2"], None, None),
        (
            vec![
                "get",
                "app/",
                "--prefix",
                "--sort-by=VALUE",
                "--order=DESCEND",
            ],
            None,
            None,
        ),
        (vec!["get", "app/a", "--rev=9999"], None, None),
        (
            vec!["txn"],
            Some("value(\"app/a\") = \"10\"\n\nput app/t yes\nget app/b\n\nput app/t no\n\n"),
            None,
        ),
        (
            vec!["txn"],
            Some("mod(\"app/a\") > \"9999\"\n\nput app/t yes\n\nget app/c\n\n"),
            None,
        ),
        (
            vec!["watch", "app/", "--prefix", "--rev=1", "--prev-kv"],
            None,
            hold,
        ),
        (vec!["del", "app/b"], None, None),
        (vec!["del", "app/", "--prefix", "--prev-kv"], None, None),
        (vec!["del", "nothing"], None, None),
        (vec!["lease", "grant", "100"], None, None),
        (vec!["lease", "list"], None, None),
        (
            vec!["lease", "timetolive", "123456789", "--keys"],
            None,
            None,
        ),
        (vec!["lease", "revoke", "123456789"], None, None),
        (vec!["lock", "mylock", "echo", "locked"], None, None),
        (vec!["elect", "-l", "myelection"], None, hold),
        // Compaction, and what reading or watching below it looks like.
        (vec!["compaction", "5"], None, None),
        (vec!["get", "app/a", "--rev=4"], None, None),
        (vec!["compaction", "4"], None, None),
        (vec!["watch", "app/", "--prefix", "--rev=2"], None, hold),
        (vec!["get", "app/", "--prefix", "--rev=5"], None, None),
        // Maintenance: the hashes differ (etcd hashes its database's keys), the answers'
        // shape does not.
        (vec!["endpoint", "hashkv"], None, None),
        (vec!["defrag"], None, None),
    ]
}

#[test]
fn etcdctl_sees_the_same_answers_from_weft_and_etcd() {
    let Some(etcd) = etcdctl_and_etcd() else {
        return;
    };
    let weft = weft_with_etcd_api();
    let mut mismatches = Vec::new();
    for (args, stdin, timeout) in script() {
        let a = etcdctl(&etcd.endpoint, &args, stdin, timeout);
        let b = etcdctl(&weft.url, &args, stdin, timeout);
        if a != b {
            mismatches.push(format!(
                "etcdctl {}\n--- etcd:\n{a}--- weft:\n{b}",
                args.join(" ")
            ));
        }
    }
    // Lease lifecycle on a granted id, and compaction, compared after normalization.
    for ep in [&etcd.endpoint, &weft.url] {
        let g = etcdctl(ep, &["lease", "grant", "60"], None, None);
        assert!(g.starts_with("lease # granted with TTL(60s)"), "{ep}: {g}");
    }
    // Maintenance RPCs (endpoint status, alarm list), given URLs and bare host:port. For
    // them etcdctl 3.4 sends the endpoint as given as the HTTP/2 :authority, so a URL is a
    // malformed authority that etcd accepts (vendor/README.md: weft's h2 patch).
    for ep in [&etcd.endpoint, &weft.url] {
        let bare = ep.trim_start_matches("http://");
        for given in [ep.as_str(), bare] {
            let s = etcdctl(given, &["endpoint", "status"], None, None);
            assert!(
                s.starts_with(normalize(given).trim()) && s.contains(", true, false, "),
                "{given}: {s}"
            );
            assert_eq!(
                etcdctl(given, &["alarm", "list"], None, None),
                "",
                "{given}"
            );
        }
    }
    // A snapshot saves alike (the bytes are each server's own format: etcd's database, a
    // weft backup; see `etcdctl_snapshot_save_makes_a_backup_that_weft_restores`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.db");
    let saved: Vec<String> = [&etcd.endpoint, &weft.url]
        .iter()
        .map(|ep| {
            etcdctl(
                ep,
                &["snapshot", "save", path.to_str().unwrap()],
                None,
                None,
            )
        })
        .collect();
    assert!(saved[0].contains("Snapshot saved at"), "{}", saved[0]);
    assert_eq!(saved[0], saved[1]);
    // Member names and peer URLs differ by design; both list one started member.
    for ep in [&etcd.endpoint, &weft.url] {
        let m = etcdctl(ep, &["member", "list"], None, None);
        assert_eq!(m.lines().count(), 1, "{ep}: {m}");
        assert!(m.contains(", started, "), "{ep}: {m}");
    }
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// etcdctl's auth commands, then calls as users: (args, stdin).
fn auth_script() -> Vec<Vec<&'static str>> {
    let (alice, root) = ("--user=alice:alicepw", "--user=root:rootpw");
    vec![
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        vec!["role", "grant-permission", "app", "read", "shared"],
        vec![
            "role",
            "grant-permission",
            "app",
            "write",
            "zz/",
            "--from-key",
        ],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "app"],
        vec!["user", "grant-role", "alice", "nope"],
        vec!["user", "add", "alice:again"],
        // root has no root role yet: etcdctl adds the role and grants it, then enables.
        vec!["auth", "enable"],
        vec!["put", "app/x", "1"],
        vec![alice, "put", "app/x", "1"],
        vec![alice, "put", "other", "1"],
        vec![alice, "put", "shared", "1"],
        vec![alice, "get", "shared"],
        vec![alice, "put", "zz/z", "1"],
        vec![alice, "get", "zz/z"],
        vec![alice, "get", "app/", "--prefix"],
        vec![alice, "get", "", "--from-key"],
        vec![alice, "del", "app/x", "--prev-kv"],
        vec!["--user=alice:wrong", "get", "app/x"],
        vec![alice, "user", "list"],
        vec![alice, "role", "list"],
        vec![alice, "user", "get", "alice"],
        vec![root, "user", "list"],
        vec![root, "role", "list"],
        vec![root, "user", "get", "alice"],
        vec![root, "role", "get", "app"],
        vec![root, "role", "get", "root"],
        vec![root, "role", "revoke-permission", "app", "shared"],
        vec![root, "role", "revoke-permission", "app", "shared"],
        vec![alice, "get", "shared"],
        vec![root, "user", "revoke-role", "alice", "app"],
        vec![alice, "get", "app/x"],
        vec![root, "user", "passwd", "alice", "--interactive=false"],
        vec![root, "user", "delete", "root"],
        vec![root, "role", "delete", "root"],
        vec![root, "auth", "disable"],
        vec!["put", "other", "2"],
        vec!["user", "delete", "alice"],
        vec!["role", "delete", "app"],
        vec!["user", "list"],
    ]
}

#[test]
fn etcdctl_auth_sees_the_same_answers_from_weft_and_etcd() {
    let Some(etcd) = etcdctl_and_etcd() else {
        return;
    };
    let weft = weft_with_etcd_api();
    let mut mismatches = Vec::new();
    for args in auth_script() {
        // `user passwd --interactive=false` reads the new password from stdin.
        let stdin = Some("newpw\n");
        let a = etcdctl(&etcd.endpoint, &args, stdin, None);
        let b = etcdctl(&weft.url, &args, stdin, None);
        if a != b {
            mismatches.push(format!(
                "etcdctl {}\n--- etcd:\n{a}--- weft:\n{b}",
                args.join(" ")
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Users, roles and the enabled switch (kept in the store) survive `kill -9` of the node; the CLI manages them
/// and calls as a user through the HTTP API, etcdctl through the etcd API.
#[test]
fn users_and_roles_outlive_a_killed_node() {
    if !etcdctl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = weft_etcd_on(dir.path());
    let run = |args: &[&str], stdin: &str| weft(args, &node.endpoint, Some(stdin));
    for (args, stdin) in [
        (&["user", "add", "root", "--password", "rootpw"][..], ""),
        (&["user", "grant", "root", "root"][..], ""),
        (&["role", "add", "app"][..], ""),
        (
            &["role", "grant", "app", "readwrite", "app/", "--prefix"][..],
            "",
        ),
        (&["user", "add", "alice"][..], "alicepw\n"),
        (&["user", "grant", "alice", "app"][..], ""),
        (&["auth", "enable"][..], ""),
    ] {
        let (code, out, err) = run(args, stdin);
        assert_eq!(code, 0, "weft {args:?}: {out}{err}");
    }
    drop(node); // kill -9
    let (node, url2) = weft_etcd_on(dir.path());
    let weft_as = |user: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--user", user]);
        weft(&all, &node.endpoint, None)
    };
    let (code, out, err) = weft_as("alice:alicepw", &["kv", "put", "app/k", "v"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = weft_as("alice:alicepw", &["kv", "put", "other", "v"]);
    assert!(code != 0 && err.contains("permission_denied"), "{err}");
    let (code, _, err) = weft_as("alice:bad", &["kv", "get", "app/k"]);
    assert!(code != 0 && err.contains("auth_failed"), "{err}");
    let (code, out, _) = weft_as("root:rootpw", &["auth", "status"]);
    assert!(
        code == 0 && out.contains("Authentication Status: true"),
        "{out}"
    );
    let (code, out, _) = weft_as("root:rootpw", &["user", "list"]);
    assert!(code == 0 && out.contains("alice [\"app\"]"), "{out}");
    // `weft auth login` prints a token that works as --token (alice's permissions with it).
    let (code, token, err) = weft_as("alice:alicepw", &["auth", "login"]);
    assert!(code == 0 && token.starts_with("weft."), "{token}{err}");
    let with_token = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--token", token.trim()]);
        weft(&all, &node.endpoint, None)
    };
    let (code, out, err) = with_token(&["kv", "get", "app/k"]);
    assert_eq!((code, out.trim()), (0, "app/k\nv"), "{err}");
    let (code, _, err) = with_token(&["kv", "get", "other"]);
    assert!(code != 0 && err.contains("permission_denied"), "{err}");
    // The etcd API: the same users, the same answers.
    let got = etcdctl(&url2, &["--user=alice:alicepw", "get", "app/k"], None, None);
    assert_eq!(got, "app/k\nv\n");
    let got = etcdctl(&url2, &["get", "app/k"], None, None);
    assert!(got.contains("user name is empty"), "{got}");
    // The store holds hashes, never the passwords; root alone may read them.
    let (code, out, err) = weft_as("root:rootpw", &["kv", "get", weft_auth::AUTH_KEY]);
    assert!(
        code == 0 && out.contains("$argon2id$") && !out.contains("alicepw"),
        "{out}{err}"
    );
    let (code, _, err) = weft_as("alice:alicepw", &["kv", "get", weft_auth::AUTH_KEY]);
    assert!(code != 0 && err.contains("permission_denied"), "{err}");
}

#[test]
fn etcdctl_lock_from_three_processes_is_mutually_exclusive_on_weft() {
    if !etcdctl_available() {
        eprintln!("etcdctl not installed; skipping");
        return;
    }
    let weft = weft_with_etcd_api();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo start $(date +%s%N) >> {l}; sleep 0.3; echo end $(date +%s%N) >> {l}",
        l = log.display()
    );
    let mut kids: Vec<Child> = (0..3)
        .map(|_| {
            Command::new("etcdctl")
                .arg(format!("--endpoints={}", weft.url))
                .args(["lock", "shared", "--", "sh", "-c", &script])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in &mut kids {
        loop {
            if let Some(st) = k.try_wait().unwrap() {
                assert!(st.success());
                break;
            }
            assert!(Instant::now() < deadline, "etcdctl lock did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut times: Vec<(u128, u128)> = Vec::new();
    let mut open: Option<u128> = None;
    for line in text.lines() {
        let (kind, t) = line.split_once(' ').unwrap();
        let t: u128 = t.parse().unwrap();
        match kind {
            "start" => {
                assert!(open.is_none(), "two holders at once:\n{text}");
                open = Some(t);
            }
            _ => times.push((open.take().expect("end without start"), t)),
        }
    }
    assert_eq!(times.len(), 3, "{text}");
}

/// `etcdctl snapshot save` against weft makes a backup (weft's own snapshot format) that
/// `weft snapshot restore` turns into a data dir serving the same data at the same revision;
/// `etcdctl defrag` works; a damaged backup is refused and creates nothing.
#[test]
fn etcdctl_snapshot_save_makes_a_backup_that_weft_restores() {
    if !etcdctl_available() {
        eprintln!("etcdctl not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, a_url) = weft_etcd_on(&tmp.path().join("a"));
    for (k, v) in [("app/1", "one"), ("app/2", "two"), ("app/3", "three")] {
        let (ok, out) = etcdctl_raw(&a_url, &["put", k, v]);
        assert!(ok, "{out}");
    }
    assert!(etcdctl_raw(&a_url, &["del", "app/2"]).0);
    let (ok, lease) = etcdctl_raw(&a_url, &["lease", "grant", "600"]);
    assert!(ok, "{lease}");
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    assert!(etcdctl_raw(&a_url, &["put", "leased", "x", &format!("--lease={id}")]).0);
    let file = tmp.path().join("backup.db");
    let (ok, out) = etcdctl_raw(&a_url, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "snapshot save: {out}");
    assert!(out.contains("Snapshot saved at"), "{out}");

    let (code, out, err) = weft(&["snapshot", "status", file.to_str().unwrap()], "", None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision"), "{out}");
    let (code, out, err) = weft_restore(&file, &tmp.path().join("b"));
    assert_eq!(code, 0, "restore: {err}");
    assert!(out.contains("restored into"), "{out}");

    let (b, b_url) = weft_etcd_on(&tmp.path().join("b"));
    for args in [
        &["get", "", "--prefix"][..],
        &["get", "app/", "--prefix", "--rev=2"][..],
        &["lease", "timetolive", &id, "--keys"][..],
    ] {
        let (ok_a, from_a) = etcdctl_raw(&a_url, args);
        let (ok_b, from_b) = etcdctl_raw(&b_url, args);
        assert!(ok_a && ok_b, "{args:?}: {from_a} / {from_b}");
        // Lease TTLs count down on both: compare the keys part.
        let cut = |s: &str| s.split("remaining").next().unwrap().to_string();
        let keys = |s: &str| s.split("attached keys").nth(1).map(str::to_string);
        assert_eq!(cut(&from_a), cut(&from_b), "{args:?}");
        assert_eq!(keys(&from_a), keys(&from_b), "{args:?}");
    }
    let rev = |ep: &str| {
        let (_, out, _) = weft(&["status", "--json"], ep, None);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(rev(&a.endpoint), rev(&b.endpoint));

    let (ok, out) = etcdctl_raw(&a_url, &["defrag"]);
    assert!(ok && out.contains("Finished defragmenting"), "{out}");
    let (ok, out) = etcdctl_raw(&a_url, &["get", "app/3"]);
    assert!(ok && out.contains("three"), "{out}");

    // A damaged copy: refused with the reason, and no data dir is made.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = tmp.path().join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    let (code, _, err) = weft_restore(&bad, &tmp.path().join("c"));
    assert_ne!(code, 0);
    assert!(err.contains("not an intact weft backup"), "{err}");
    assert!(!tmp.path().join("c").exists());
    // Restoring over a data dir is refused.
    let (code, _, err) = weft_restore(&file, &tmp.path().join("a"));
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
}

/// A node on an etcd cluster (`--etcd-endpoints`): `weft snapshot save` streams etcd's own
/// database unchanged, which `etcdctl snapshot status` opens and `etcdctl snapshot restore`
/// restores (after checking the SHA-256 etcd appends).
#[test]
fn weft_snapshot_save_on_an_etcd_backend_is_etcds_own_database() {
    let Some(etcd) = etcdctl_and_etcd() else {
        return;
    };
    let (node, url) = weft_etcd_with(&["--etcd-endpoints".as_ref(), etcd.endpoint.as_ref()]);
    for i in 0..20 {
        let (code, _, err) = weft(&["kv", "put", &format!("e/{i}"), "v"], &node.endpoint, None);
        assert_eq!(code, 0, "{err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("etcd.db");
    let (code, out, err) = weft(
        &["snapshot", "save", file.to_str().unwrap(), "--json"],
        &node.endpoint,
        None,
    );
    assert_eq!(code, 0, "{err}");
    let saved: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(saved["format"], "etcd-db");
    let (ok, text) = etcdctl_local(&[
        "snapshot".as_ref(),
        "status".as_ref(),
        file.as_os_str(),
        "-w".as_ref(),
        "json".as_ref(),
    ]);
    assert!(ok, "{text}");
    let status: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    // 20 keys at least (etcd's own keys may add to them), at the revision of the last put.
    assert!(status["totalKey"].as_i64().unwrap() >= 20, "{status}");
    assert!(status["revision"].as_i64().unwrap() >= 21, "{status}");
    let (ok, out) = etcdctl_snapshot_restore(&file, &tmp.path().join("etcd-restored"));
    assert!(ok, "{out}");
    assert!(tmp.path().join("etcd-restored/member/snap/db").exists());
    // Through weft's etcd API too: etcd's stream is passed on as it is, not framed again.
    let via = tmp.path().join("via-weft.db");
    let (ok, out) = etcdctl_raw(&url, &["snapshot", "save", via.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl_snapshot_restore(&via, &tmp.path().join("etcd-restored-2"));
    assert!(ok, "{out}");
    // A weft restore refuses it with the reason.
    let (code, _, err) = weft_restore(&file, &tmp.path().join("data"));
    assert_ne!(code, 0);
    assert!(err.contains("not an intact weft backup"), "{err}");
}

/// Puts from 32 etcd clients through the etcd API, with every group written by the
/// connection thread itself (`--etcd-inline-batch 1`), `kill -9` in the middle, restart:
/// every acknowledged put is there.
#[test]
fn kill_9_during_etcd_api_puts_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--etcd-inline-batch".as_ref(),
        "1".as_ref(),
    ];
    let (mut node, url) = weft_etcd_with(&args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked: Vec<(String, String, i64)> = rt.block_on(async {
        let client = etcd_client::Client::connect([url.as_str()], None)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let mut c = client.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..5000 {
                        let (key, val) = (format!("k/{t}/{i}"), format!("v{i}"));
                        let put = tokio::time::timeout(
                            Duration::from_secs(5),
                            c.put(key.clone(), val.clone(), None),
                        )
                        .await;
                        match put {
                            Ok(Ok(r)) => {
                                acked.push((key, val, r.header().unwrap().revision()));
                            }
                            _ => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        acked
    });
    assert!(
        acked.len() > 100,
        "the load made progress before the kill: {}",
        acked.len()
    );
    let (_node, url) = weft_etcd_with(&args);
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([url.as_str()], None)
            .await
            .unwrap();
        let r = c
            .get("k/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let present: std::collections::HashMap<Vec<u8>, Vec<u8>> = r
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|(k, v, _)| present.get(k.as_bytes()).map(|p| &p[..]) != Some(v.as_bytes()))
            .map(|(k, _, _)| k)
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged puts lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        let max_rev = acked.iter().map(|a| a.2).max().unwrap();
        assert!(r.header().unwrap().revision() >= max_rev);
        eprintln!(
            "{} acknowledged puts, all present after kill -9 ({} keys on disk)",
            acked.len(),
            present.len()
        );
    });
}

/// 64 puts at once through the etcd API, 5 times, then the node's log counters from
/// `/metrics`: (inline writes, durable writes).
fn inline_and_durable_writes(node: &Node, url: &str) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = etcd_client::Client::connect([url], None).await.unwrap();
        for round in 0..5 {
            let puts: Vec<_> = (0..64)
                .map(|i| {
                    let mut c = client.clone();
                    tokio::spawn(async move { c.put(format!("m/{round}/{i}"), "v", None).await })
                })
                .collect();
            for p in puts {
                p.await.unwrap().unwrap();
            }
        }
        let text = reqwest::get(format!("{}/metrics", node.endpoint))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counter = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
                .trim()
                .parse()
                .unwrap()
        };
        (
            counter("weft_log_inline_writes_total"),
            counter("weft_log_durable_writes_total"),
        )
    })
}

/// The connection thread writes its own groups when told to (`--etcd-inline-batch 1`), and
/// by default not on a node confined to one core, where its core would idle while it waits
/// for the disk (with 8, the default on more cores, it would have: tested by hand, 33 durable
/// writes, some inline); `/metrics` counts both kinds of durable writes.
#[test]
fn inline_writes_follow_the_option_and_the_cores() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = weft_etcd_with(&[
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--etcd-inline-batch".as_ref(),
        "1".as_ref(),
    ]);
    let (inline, durable) = inline_and_durable_writes(&node, &url);
    assert!(inline > 0 && inline <= durable, "{inline} of {durable}");
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let mut taskset = Command::new("taskset");
    taskset.args(["-c", "0", BIN]);
    let (node, url) = weft_etcd_by(taskset, &["--data-dir".as_ref(), dir.path().as_os_str()]);
    let (inline, durable) = inline_and_durable_writes(&node, &url);
    assert_eq!(
        inline, 0,
        "no inline writes on one core ({durable} durable writes)"
    );
    assert!(durable > 0);
}

/// The etcd API over TLS: etcdctl with --cacert, and with --cert/--key when the node requires
/// client certificates; without them, or trusting another CA, it is refused.
#[test]
fn etcdctl_over_tls_with_client_certificates() {
    if !etcdctl_available() {
        eprintln!("etcdctl not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = weft_tls::testing::Pki::new(dir.path()).unwrap();
    let other = weft_tls::testing::Pki::named(dir.path(), "other CA", "localhost").unwrap();
    let data = dir.path().join("data");
    let (_node, url) = weft_etcd_with(&[
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--cert-file".as_ref(),
        pki.server_cert.as_os_str(),
        "--key-file".as_ref(),
        pki.server_key.as_os_str(),
        "--client-cert-auth".as_ref(),
        "--trusted-ca-file".as_ref(),
        pki.ca_cert.as_os_str(),
    ]);
    assert!(url.starts_with("https://"), "{url}");
    let url = url.replace("127.0.0.1", "localhost");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let ca = format!("--cacert={}", s(&pki.ca_cert));
    let cert = format!("--cert={}", s(&pki.client_cert));
    let key = format!("--key={}", s(&pki.client_key));
    let short = "--command-timeout=3s";
    let (ok, out) = etcdctl_raw(&url, &[short, &ca, &cert, &key, "put", "tls-key", "v1"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = etcdctl_raw(&url, &[short, &ca, &cert, &key, "get", "tls-key"]);
    assert!(ok && out.contains("v1"), "{out}");
    let (ok, out) = etcdctl_raw(&url, &[short, &ca, "get", "tls-key"]);
    assert!(!ok, "no client certificate, yet: {out}");
    let other_ca = format!("--cacert={}", s(&other.ca_cert));
    let (ok, out) = etcdctl_raw(&url, &[short, &other_ca, &cert, &key, "get", "tls-key"]);
    assert!(!ok, "a server the client does not trust, yet: {out}");
    // With users: a call without a token runs as the user its certificate's CN names
    // (`weft-client`, a user without a password), as etcd does.
    let tls = [short, ca.as_str(), cert.as_str(), key.as_str()];
    let run = |args: &[&str]| {
        let mut all = tls.to_vec();
        all.extend_from_slice(args);
        etcdctl_raw(&url, &all)
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "weft-client", "--no-password"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "weft-client", "app"],
        &["auth", "enable"],
    ] {
        let (ok, out) = run(args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    let (ok, out) = run(&["put", "app/x", "by-cert"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = run(&["put", "tls-key", "v2"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    // A token wins over the certificate.
    let (ok, out) = run(&["--user=root:rootpw", "put", "tls-key", "v2"]);
    assert!(ok && out.contains("OK"), "{out}");
}
