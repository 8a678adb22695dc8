//! Embedded engine throughput and latency, in process: get, put and txn (compare-and-swap) with
//! 1 and 64 concurrent tasks in each durability mode, watch delivery latency, and get and put
//! of one key among 200k (`index/...`: the cost of the key index, with short keys, long keys
//! that share their first 16 bytes, and keys that share their first 32).
//!
//! `cargo bench -p weft-store --bench embedded` (criterion reports time per operation; the
//! throughput line is operations per second).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_store::embedded::{Durability, Embedded, Options};
use weft_store::*;

const MODES: [(&str, Durability); 3] = [
    ("always", Durability::Always),
    ("group", Durability::Group),
    ("none", Durability::None),
];
const TASKS: [usize; 2] = [1, 64];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(rt: &tokio::runtime::Runtime, mode: Durability) -> (Arc<Embedded>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = rt
        .block_on(Embedded::open(
            dir.path(),
            Options {
                durability: mode,
                ..Default::default()
            },
        ))
        .unwrap();
    (Arc::new(s), dir)
}

/// Runs `iters` operations spread over `tasks` concurrent tasks; returns the wall time.
fn concurrent<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, tasks: usize, op: F) -> Duration
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let start = Instant::now();
        let mut handles = Vec::with_capacity(tasks);
        for t in 0..tasks {
            let op = op.clone();
            let n = iters / tasks as u64 + u64::from((t as u64) < iters % tasks as u64);
            handles.push(tokio::spawn(async move {
                for i in 0..n {
                    op(t, i).await;
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn bench_put(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in MODES {
        let (s, _dir) = open(&rt, mode);
        for tasks in TASKS {
            g.bench_function(BenchmarkId::new(name, tasks), |b| {
                b.iter_custom(|iters| {
                    let s = s.clone();
                    concurrent(&rt, iters, tasks, move |t, i| {
                        let s = s.clone();
                        async move {
                            s.put(PutRequest::new(
                                format!("bench/{t}/{}", i % 1000),
                                vec![b'v'; 128],
                            ))
                            .await
                            .unwrap();
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_get(c: &mut Criterion) {
    let rt = rt();
    let (s, _dir) = open(&rt, Durability::Group);
    rt.block_on(async {
        for i in 0..1000 {
            s.put(PutRequest::new(format!("bench/{i}"), vec![b'v'; 128]))
                .await
                .unwrap();
        }
    });
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    for tasks in TASKS {
        g.bench_function(BenchmarkId::from_parameter(tasks), |b| {
            b.iter_custom(|iters| {
                let s = s.clone();
                concurrent(&rt, iters, tasks, move |t, i| {
                    let s = s.clone();
                    async move {
                        let r = s
                            .range(RangeRequest::new(KeyRange::key(format!(
                                "bench/{}",
                                (t as u64 * 7 + i) % 1000
                            ))))
                            .await
                            .unwrap();
                        assert_eq!(r.kvs.len(), 1);
                    }
                })
            })
        });
    }
    g.finish();
}

fn bench_txn(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("txn_cas");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in MODES {
        let (s, _dir) = open(&rt, mode);
        for tasks in TASKS {
            g.bench_function(BenchmarkId::new(name, tasks), |b| {
                b.iter_custom(|iters| {
                    let s = s.clone();
                    concurrent(&rt, iters, tasks, move |t, _| {
                        let s = s.clone();
                        async move {
                            // Compare-and-swap on the task's own counter key: read, then swap if
                            // unchanged.
                            let key = format!("cas/{t}");
                            let cur = s.get(key.clone()).await.unwrap();
                            let (rev, n) = cur
                                .map(|kv| {
                                    (
                                        kv.mod_revision,
                                        String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap(),
                                    )
                                })
                                .unwrap_or((0, 0));
                            let t = TxnRequest::new()
                                .when([Compare::new(
                                    key.clone(),
                                    CompareOp::Equal,
                                    CompareTarget::ModRevision(rev),
                                )])
                                .and_then([TxnOp::Put(PutRequest::new(key, (n + 1).to_string()))]);
                            assert!(s.txn(t).await.unwrap().succeeded);
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_watch(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("watch_delivery");
    for (name, mode) in [("group", Durability::Group), ("none", Durability::None)] {
        let (s, _dir) = open(&rt, mode);
        let mut w = rt
            .block_on(s.watch(WatchRequest::new(KeyRange::prefix("w/"))))
            .unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    // Time from the write's acknowledgement to the event at the watcher.
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        s.put_kv(format!("w/{}", i % 100), "x").await.unwrap();
                        let acked = Instant::now();
                        let m = w.message().await.unwrap().unwrap();
                        total += acked.elapsed();
                        assert_eq!(m.events.len(), 1);
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

/// Fan-out: `n` watchers of one prefix, each read by its own task (as the etcd API's watch
/// streams are); one put, timed until every watcher has its event. Durability none, so this
/// is the watch machinery's CPU, not the disk's.
fn bench_watch_fanout(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let rt = rt();
    let mut g = c.benchmark_group("watch_fanout");
    for n in [64u64, 1024] {
        let (s, _dir) = open(&rt, Durability::None);
        let got = Arc::new(AtomicU64::new(0));
        let all = Arc::new(tokio::sync::Notify::new());
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let mut w = rt
                    .block_on(s.watch(WatchRequest::new(KeyRange::prefix("f/"))))
                    .unwrap();
                let (got, all) = (got.clone(), all.clone());
                rt.spawn(async move {
                    while let Some(Ok(m)) = w.message().await {
                        let k = m.events.len() as u64;
                        if got.fetch_add(k, Ordering::AcqRel) + k == n {
                            all.notify_one();
                        }
                    }
                })
            })
            .collect();
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        got.store(0, Ordering::Release);
                        let done = all.notified();
                        s.put_kv(format!("f/{}", i % 100), "x").await.unwrap();
                        done.await;
                    }
                    start.elapsed()
                })
            })
        });
        for r in readers {
            r.abort();
        }
    }
    g.finish();
}

/// How a bench names its `i`-th key.
type KeyName = fn(u64) -> String;

fn bench_index(c: &mut Criterion) {
    const KEYS: u64 = 200_000;
    let rt = rt();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    let shapes: [(&str, KeyName); 3] = [
        ("short", |i| format!("bench/{}/{}", i % 64, i / 64)),
        ("long", |i| {
            format!("/registry/pods/ns-{}/pod-{i:08}", i % 50)
        }),
        ("shared32", |i| {
            format!("/registry/pods/kube-system/coredns-{i:08}")
        }),
    ];
    for (shape, key) in shapes {
        let (s, _dir) = open(&rt, Durability::None);
        rt.block_on(async {
            for i in 0..KEYS {
                s.put(PutRequest::new(key(i), vec![b'v'; 16]))
                    .await
                    .unwrap();
            }
        });
        // Keys visited in a scattered order (a multiplicative step modulo KEYS).
        let pick = |n: u64| (n.wrapping_mul(7919) + 13) % KEYS;
        g.bench_function(BenchmarkId::new("get", shape), |b| {
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                let r = rt
                    .block_on(s.range(RangeRequest::new(KeyRange::key(key(pick(n))))))
                    .unwrap();
                assert_eq!(r.kvs.len(), 1);
            })
        });
        g.bench_function(BenchmarkId::new("put", shape), |b| {
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                rt.block_on(s.put(PutRequest::new(key(pick(n)), vec![b'w'; 16])))
                    .unwrap();
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// criterion's macros generate undocumented items.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = config(); targets = bench_put, bench_get, bench_txn, bench_watch, bench_watch_fanout, bench_index }
}
criterion_main!(group::benches);
