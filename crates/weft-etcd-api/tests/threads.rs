//! How connections are spread over the connection threads. Alone in its test binary: it
//! reads the threads' run counts by name from `/proc/self/task`, and other tests' servers
//! in the same process would have threads of the same names.

mod common;

use common::{client, start_with};

/// Accepted connections go to the connection threads in turn: with 4 connections busy on 2
/// threads, each thread runs many times (a thread that served nothing runs once or twice;
/// one serving 200 sequential puts ran 57 to several hundred times here, fewer when its two
/// connections' requests arrive together and are served in one run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_connection_threads() {
    let s = start_with(2).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&s).await);
    }
    let runs = |name: &str| -> u64 {
        // /proc/self/task/TID/schedstat: run time, wait time, timeslices run.
        let mut total = 0;
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = t.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let st = std::fs::read_to_string(dir.join("schedstat")).unwrap();
                total += st
                    .split_whitespace()
                    .nth(2)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        total
    };
    let before = [runs("weft-etcd-0"), runs("weft-etcd-1")];
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..100 {
                c.put(format!("k{i}"), format!("{j}"), None).await.unwrap();
            }
            c
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = [runs("weft-etcd-0"), runs("weft-etcd-1")];
    for i in 0..2 {
        assert!(
            after[i] - before[i] >= 20,
            "thread weft-etcd-{i} ran {} times for 400 puts on 4 connections",
            after[i] - before[i]
        );
    }
    let _ = s.stop.send(());
    s.task.await.unwrap().unwrap();
}
