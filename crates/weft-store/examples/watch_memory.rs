//! Memory per open watch on the embedded store: opens `N` single-key watches (default
//! 20000), each read by a task of its own as the etcd API reads them, and prints how much the
//! process's resident set grew per watch.
//!
//! ```sh
//! cargo run --release -p weft-store --example watch_memory -- 20000
//! ```

use weft_store::embedded::{Durability, Embedded, Options};
use weft_store::{KeyRange, Store, StoreExt, WatchRequest};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let store = Embedded::open(
        dir.path(),
        Options {
            durability: Durability::None,
            ..Default::default()
        },
    )
    .await?;
    for i in 0..100 {
        store.put_kv(format!("warm/{i}"), "x").await?;
    }
    let before = rss_kib();
    let mut readers = Vec::new();
    for i in 0..n {
        let mut w = store
            .watch(WatchRequest::new(KeyRange::key(format!("k/{i}"))))
            .await?;
        readers.push(tokio::spawn(async move {
            let _ = w.message().await;
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grew = rss_kib().saturating_sub(before);
    println!(
        "{n} watches: resident set +{grew} KiB, {} bytes per watch",
        grew * 1024 / n.max(1)
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}
