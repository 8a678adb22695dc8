//! `cargo xtask test`: installs what the tests need (as root, with apt-get; otherwise prints
//! the exact command), then runs rustfmt, clippy and every test with all features.

use std::process::{exit, Command};

/// Debian packages the tests need, with a binary that proves each is installed.
const PREREQS: &[(&str, &str)] = &[
    ("protoc", "protobuf-compiler"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("nats-server", "nats-server"),
    // The partition test: network namespaces, veths, a bridge, and a client inside one.
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("iptables", "iptables"),
    // The dashboard's browser tests (headless; clicks through WebDriver).
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(what: &str, cmd: &mut Command) {
    eprintln!("xtask: {what}: {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("xtask: {what} failed ({s})");
            exit(s.code().unwrap_or(1));
        }
        Err(e) => {
            eprintln!("xtask: cannot run {what}: {e}");
            exit(1);
        }
    }
}

/// Whether `python3 -m venv` works (Debian ships it apart, in python3-venv).
fn have_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn install_prereqs() {
    let mut missing: Vec<&str> = PREREQS
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    // The etcd JSON gateway's test runs Python's etcd3gw (from PyPI) in a venv.
    if !have_venv() {
        missing.push("python3-venv");
    }
    if missing.is_empty() {
        return;
    }
    let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        eprintln!(
            "xtask: missing prerequisites: {}\nxtask: install them with:\n    sudo sh -c '{cmd}'",
            missing.join(", ")
        );
        exit(1);
    }
    run(
        "apt-get update",
        Command::new("apt-get").arg("update").arg("-q"),
    );
    run(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs every fuzz target for `secs` seconds on stable (fuzz/src/bin/smoke.rs): a panic or a
/// hang fails the run, its input kept under fuzz/artifacts/.
fn fuzz(secs: &str) {
    run(
        "fuzz smoke",
        cargo().args([
            "run",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--bin",
            "smoke",
            "--",
            secs,
        ]),
    );
}

/// Under CI, once the tests passed: removes the test executables from `target/debug/deps`
/// before the fuzz build, so that the two do not need disk at the same time (a CI machine
/// can be short of it). They are rebuilt by the next test run.
fn free_test_binaries() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("debug/deps");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut freed = 0u64;
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        // Executables named `crate-hash`: not the proc macros (`.so`) or metadata files.
        if e.file_name().to_string_lossy().contains('.') {
            continue;
        }
        if m.is_file()
            && m.permissions().mode() & 0o111 != 0
            && std::fs::remove_file(e.path()).is_ok()
        {
            freed += m.len();
        }
    }
    eprintln!(
        "xtask: removed {} MB of test executables before the fuzz build",
        freed >> 20
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            install_prereqs();
            run("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]));
            run(
                "clippy",
                cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--all-features",
                    "--",
                    "-D",
                    "warnings",
                ]),
            );
            run(
                "rustdoc",
                cargo()
                    .args(["doc", "--workspace", "--all-features", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings"),
            );
            run(
                "tests",
                cargo()
                    .args(["test", "--workspace", "--all-features"])
                    .args(&args[1..]),
            );
            // Only for a full run (`cargo xtask test -- FILTER` runs tests alone).
            if args.len() == 1 {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    free_test_binaries();
                }
                fuzz(&std::env::var("WEFT_FUZZ_SECS").unwrap_or_else(|_| "60".into()));
            }
        }
        Some("fuzz") => fuzz(args.get(1).map_or("60", String::as_str)),
        Some("install-prereqs") => install_prereqs(),
        _ => {
            eprintln!("usage: cargo xtask test [-- test args]   (fmt, clippy, rustdoc, all tests, fuzz smoke)\n       cargo xtask fuzz [SECONDS_PER_TARGET]   (every fuzz target on stable, mutated seeds)\n       cargo xtask install-prereqs");
            exit(2);
        }
    }
}
