//! Saga throughput and latency on the embedded store (fsync group), beside the disk's own
//! rate of single durable writes measured in the same run.
//!
//! `cargo bench -p weft-saga --bench saga` (or `scripts/bench-saga.sh`); `SAGA_BENCH_SECS`
//! sets the seconds per row (default 3). Rows:
//! - `fsync`: one 64-byte append + fdatasync at a time on the same file system;
//! - `local c=N`: 3-step sagas of in-process steps that return at once, N in flight: what the
//!   saga machinery itself costs (latency at c=1 is the overhead over the steps);
//! - `http c=N`: 3-step sagas of HTTP steps against a local axum service.
//!
//! For each: sagas/s, p50 and p99 of submit → committed, store revisions per saga and per step.
//! `SAGA_BENCH_ROWS=local64,http1` runs only those rows; `SAGA_BENCH_ROUNDS` (default 3)
//! rounds interleave the rows, and the median round is shown with every round's rate. Each
//! row's round starts on an empty store; `SAGA_BENCH_SHARED=1` runs them all on one store
//! that keeps every finished saga (what a growing store costs). Experiments: finished sagas
//! kept `SAGA_BENCH_RETENTION_SECS` (default 24 h) and swept every `SAGA_BENCH_SWEEP_SECS`;
//! a snapshot every `SAGA_BENCH_SNAPSHOT_MB` of log (default 64); periodic compaction
//! keeping `SAGA_BENCH_COMPACT_MS` of history (default: the store's, by revisions).

#![allow(missing_docs)]

// As the `weft` binary: the saga path allocates many small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_saga::{Orchestrator, Registry, SagaDef, Status, StepOutcome};
use weft_store::embedded::{Durability, Embedded, Options};
use weft_store::Store;

fn secs() -> Duration {
    let s: f64 = std::env::var("SAGA_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Single durable writes, one at a time.
fn fsync_rate(dir: &std::path::Path, d: Duration) -> (f64, Duration) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(0)
        .open(dir.join("fsync-probe"))
        .unwrap();
    let buf = [7u8; 64];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / t0.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5))
}

fn chain(call: impl Fn(&str) -> Value) -> SagaDef {
    serde_json::from_value(json!({
        "name": "bench",
        "steps": [
            {"name": "a", "action": call("a"), "compensation": call("undo")},
            {"name": "b", "after": ["a"], "action": call("b"), "compensation": call("undo")},
            {"name": "c", "after": ["b"], "action": call("c"), "no_compensation": true}
        ]
    }))
    .unwrap()
}

struct Row {
    sagas_per_s: f64,
    p50: Duration,
    p99: Duration,
    revisions_per_saga: f64,
}

/// `clients` loops submitting and waiting for sagas of `def` for `d`.
async fn run(
    o: &Orchestrator,
    store: &Arc<dyn Store>,
    def: &SagaDef,
    clients: usize,
    d: Duration,
) -> Row {
    let rev0 = store.status().await.unwrap().header.revision;
    let w0 = o.writes();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (o, def) = (o.clone(), def.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while t0.elapsed() < d {
                let t = Instant::now();
                let id = o.submit(def.clone(), Value::Null, None).await.unwrap();
                let r = o.wait(&id, Duration::from_secs(30)).await.unwrap();
                assert_eq!(r.status, Status::Committed);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let el = t0.elapsed().as_secs_f64();
    let revs = store.status().await.unwrap().header.revision - rev0;
    let n = lat.len();
    if std::env::var("SAGA_BENCH_DEBUG").is_ok() {
        eprintln!(
            "task writes per saga: {:.2}",
            (o.writes() - w0) as f64 / n as f64
        );
    }
    Row {
        sagas_per_s: n as f64 / el,
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        revisions_per_saga: revs as f64 / n.max(1) as f64,
    }
}

async fn http_service() -> String {
    let app = axum::Router::new().route(
        "/{step}",
        axum::routing::post(|| async { axum::Json(json!({"ok": true})) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A store and an orchestrator in `dir`.
async fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Orchestrator) {
    let store: Arc<dyn Store> = Arc::new(
        Embedded::open(
            dir,
            Options {
                durability: Durability::Group,
                snapshot_bytes: env_or("SAGA_BENCH_SNAPSHOT_MB", 64u64) << 20,
                auto_compact: match env_or("SAGA_BENCH_COMPACT_MS", 0u64) {
                    0 => Options::default().auto_compact,
                    ms => weft_store::embedded::AutoCompact::Period(Duration::from_millis(ms)),
                },
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let mut reg = Registry::new();
    for s in ["a", "b", "c", "undo"] {
        reg.register(s, |_c| async { StepOutcome::Done(Value::Null) });
    }
    let defaults = weft_saga::Options::default();
    let o = Orchestrator::builder(store.clone())
        .options(weft_saga::Options {
            sweep_interval: Duration::from_secs(env_or("SAGA_BENCH_SWEEP_SECS", 30)),
            // SAGA_BENCH_RETENTION_SECS: how long finished sagas are kept (default: the
            // orchestrator's, 24 h), to see what keeping them costs.
            retention: std::env::var("SAGA_BENCH_RETENTION_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(defaults.retention),
            ..defaults
        })
        .registry(reg)
        .start()
        .await
        .unwrap();
    (store, o)
}

fn main() {
    // As `weft up`: no transparent huge pages (each fresh one is zeroed in one fault on
    // whichever thread touches it first).
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = secs();
        let dir = tempfile::tempdir_in(std::env::var("SAGA_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
        let (rate, p50) = fsync_rate(dir.path(), d);
        println!("| row | sagas/s | p50 | p99 | revisions/saga | revisions/step | vs single fsync |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| fsync (64 B append + fdatasync, one at a time) | {rate:.0} writes/s | {:.3} ms | | | | 1.00x |",
            p50.as_secs_f64() * 1e3
        );
        // SAGA_BENCH_SHARED=1: every round on one store that keeps growing (finished sagas
        // are kept), to see what the store's size costs; by default each row's round starts
        // on an empty store, so that rounds measure the same thing.
        let shared = std::env::var("SAGA_BENCH_SHARED").is_ok_and(|v| v == "1");
        let mut kept: Option<(Arc<dyn Store>, Orchestrator)> = None;
        let local = chain(|n| json!({"local": {"name": n}}));
        let base = http_service().await;
        let http = chain(|n| json!({"http": {"url": format!("{base}/{n}")}}));
        let rounds: usize = env_or("SAGA_BENCH_ROUNDS", 3);
        let rows = [
            ("local", &local, 1),
            ("local", &local, 64),
            ("http", &http, 1),
            ("http", &http, 64),
        ];
        let wanted = |name: &str, clients: usize| {
            let row = format!("{name}{clients}");
            std::env::var("SAGA_BENCH_ROWS").map_or(true, |r| r.split(',').any(|x| x == row))
        };
        // Rounds interleave the rows, so that a slow phase of the machine hits all of them.
        let mut results: Vec<Vec<Row>> = rows.iter().map(|_| Vec::new()).collect();
        let mut n = 0;
        for _ in 0..rounds {
            for (i, (name, def, clients)) in rows.iter().enumerate() {
                if !wanted(name, *clients) {
                    continue;
                }
                n += 1;
                let (store, o) = match &kept {
                    Some(so) => so.clone(),
                    None => open(&dir.path().join(format!("data-{n}"))).await,
                };
                results[i].push(run(&o, &store, def, *clients, d).await);
                if shared {
                    kept = Some((store, o));
                } else {
                    o.shutdown().await;
                    drop(store);
                    let _ = std::fs::remove_dir_all(dir.path().join(format!("data-{n}")));
                }
            }
        }
        for (i, (name, _, clients)) in rows.iter().enumerate() {
            let rs = &mut results[i];
            if rs.is_empty() {
                continue;
            }
            // In the order they ran.
            let all: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.sagas_per_s)).collect();
            rs.sort_by(|a, b| a.sagas_per_s.total_cmp(&b.sagas_per_s));
            let r = &rs[rs.len() / 2];
            println!(
                "| {name} c={clients} | {:.0} (rounds: {}) | {:.3} ms | {:.3} ms | {:.2} | {:.2} | {:.2}x |",
                r.sagas_per_s,
                all.join(", "),
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.revisions_per_saga,
                r.revisions_per_saga / 3.0,
                r.sagas_per_s / rate
            );
            std::io::stdout().flush().unwrap();
        }
        if let Some((_, o)) = kept {
            o.shutdown().await;
        }
    });
}
