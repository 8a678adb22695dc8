//! Coordination recipes on the embedded store and on etcd, side by side in one run: lock
//! acquire+release cycles (uncontended and with 8 contenders), leadership handover on resign,
//! and register / discover latency.
//!
//! `cargo bench -p weft-coord --bench coord` (etcd: the Debian `etcd` binary on the PATH; it is
//! started on free loopback ports with a temp data dir, default fsync).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_coord::{Election, Instance, Mutex, Registry, Session, SessionOptions};
use weft_store::Store;
use weft_store_etcd::testing::EtcdServer;

struct Backends {
    rt: tokio::runtime::Runtime,
    stores: Vec<(&'static str, Arc<dyn Store>)>,
    _dir: tempfile::TempDir,
    _etcd: Option<EtcdServer>,
}

fn backends() -> Backends {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emb = rt
        .block_on(weft_store::embedded::Embedded::open(
            dir.path(),
            Default::default(),
        ))
        .unwrap();
    let mut stores: Vec<(&'static str, Arc<dyn Store>)> = vec![("embedded", Arc::new(emb))];
    let etcd = rt.block_on(EtcdServer::start_or_skip());
    if let Some(server) = &etcd {
        let s = rt
            .block_on(weft_store_etcd::EtcdStore::connect(&[&server.endpoint]))
            .unwrap();
        stores.push(("etcd", Arc::new(s)));
    } else {
        eprintln!("etcd not installed: benchmarking the embedded store only");
    }
    Backends {
        rt,
        stores,
        _dir: dir,
        _etcd: etcd,
    }
}

fn session(rt: &tokio::runtime::Runtime, store: &Arc<dyn Store>) -> Session {
    rt.block_on(Session::new(
        store.clone(),
        SessionOptions {
            ttl: 30,
            ..Default::default()
        },
    ))
    .unwrap()
}

fn bench_lock(c: &mut Criterion) {
    let b = backends();
    let mut g = c.benchmark_group("lock_cycle");
    g.throughput(Throughput::Elements(1));
    for (name, store) in &b.stores {
        let s = session(&b.rt, store);
        let m = Mutex::new(&s, "bench-uncontended").unwrap();
        g.bench_function(BenchmarkId::new("uncontended", name), |bn| {
            bn.iter(|| {
                b.rt.block_on(async {
                    m.lock().await.unwrap().unlock().await.unwrap();
                })
            })
        });
        let sessions: Vec<Session> = (0..8).map(|_| session(&b.rt, store)).collect();
        g.bench_function(BenchmarkId::new("8_contenders", name), |bn| {
            bn.iter_custom(|iters| {
                b.rt.block_on(async {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for (i, s) in sessions.iter().enumerate() {
                        let s = s.clone();
                        let n = iters / 8 + u64::from((i as u64) < iters % 8);
                        tasks.push(tokio::spawn(async move {
                            let m = Mutex::new(&s, "bench-contended").unwrap();
                            for _ in 0..n {
                                m.lock().await.unwrap().unlock().await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn bench_election(c: &mut Criterion) {
    let b = backends();
    let mut g = c.benchmark_group("election_handover_on_resign");
    for (name, store) in &b.stores {
        let e = Election::new(store.clone(), "bench").unwrap();
        let (s1, s2) = (session(&b.rt, store), session(&b.rt, store));
        g.bench_function(*name, |bn| {
            bn.iter_custom(|iters| {
                b.rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let leader = e.campaign(&s1, "a").await.unwrap();
                        let (e2, s2c) = (e.clone(), s2.clone());
                        let next = tokio::spawn(async move { e2.campaign(&s2c, "b").await });
                        // Let the second candidate queue behind the leader.
                        let prefix = weft_store::KeyRange::prefix("/weft/election/bench/");
                        while store
                            .range(weft_store::RangeRequest::new(prefix.clone()).count_only())
                            .await
                            .unwrap()
                            .count
                            < 2
                        {
                            tokio::task::yield_now().await;
                        }
                        let t = Instant::now();
                        leader.resign().await.unwrap();
                        let l2 = next.await.unwrap().unwrap();
                        total += t.elapsed();
                        l2.resign().await.unwrap();
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

fn bench_discovery(c: &mut Criterion) {
    let b = backends();
    let mut g = c.benchmark_group("discovery");
    for (name, store) in &b.stores {
        let s = session(&b.rt, store);
        let reg = Registry::new(store.clone());
        let mut n = 0u64;
        g.bench_function(BenchmarkId::new("register", name), |bn| {
            bn.iter(|| {
                n += 1;
                let r =
                    b.rt.block_on(reg.register(
                        &s,
                        "bench",
                        Instance::new(format!("i{}", n % 50), "10.0.0.1:80"),
                        None,
                    ))
                    .unwrap();
                r.detach();
            })
        });
        g.bench_function(BenchmarkId::new("discover_50", name), |bn| {
            bn.iter(|| {
                let snap = b.rt.block_on(reg.discover("bench")).unwrap();
                assert!(!snap.instances.is_empty());
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
    criterion_group! { name = benches; config = config(); targets = bench_lock, bench_election, bench_discovery }
}
criterion_main!(group::benches);
