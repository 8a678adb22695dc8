//! Lookup cost at N = 10, 100, 1000 nodes for each algorithm, side by side with the closest
//! crate: `hashring` (ring, 160 vnodes), `jumphash`, `maglev`, `rendezvous_hash`. Keys are
//! short strings hashed by each library its own way (weft: XXH3-64).
//!
//! `cargo bench -p weft-shard --bench lookup`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weft_shard::{hash, BoundedLoads, Jump, Maglev, Node, Placement, Rendezvous, Ring, Slots};

const SIZES: [usize; 3] = [10, 100, 1000];

fn keys() -> Vec<String> {
    (0..1024).map(|i| format!("user:{i}")).collect()
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::new(format!("node-{i}"))).collect()
}

#[derive(Hash, Clone, PartialEq, Eq, Debug)]
struct VNode {
    node: usize,
    v: usize,
}

fn bench_weft(c: &mut Criterion, group: &str, build: impl Fn(&[Node]) -> Box<dyn Placement>) {
    let ks = keys();
    let mut g = c.benchmark_group(group);
    for n in SIZES {
        let p = build(&nodes(n));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("weft", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(p.locate_hash(hash(ks[i].as_bytes())))
            })
        });
    }
    g.finish();
}

fn ring(c: &mut Criterion) {
    bench_weft(c, "ring_160", |ns| Box::new(Ring::new(ns, 160).unwrap()));
    let ks = keys();
    let mut g = c.benchmark_group("ring_160");
    for n in SIZES {
        let mut r = hashring::HashRing::new();
        for node in 0..n {
            for v in 0..160 {
                r.add(VNode { node, v });
            }
        }
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("hashring", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(r.get(&ks[i]).map(|v| v.node))
            })
        });
    }
    g.finish();
}

fn jump(c: &mut Criterion) {
    bench_weft(c, "jump", |ns| Box::new(Jump::new(ns).unwrap()));
    let ks = keys();
    let h = jumphash::JumpHasher::new();
    let mut g = c.benchmark_group("jump");
    for n in SIZES {
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("jumphash", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(h.slot(&ks[i], n as u32))
            })
        });
    }
    g.finish();
}

fn maglev(c: &mut Criterion) {
    bench_weft(c, "maglev", |ns| Box::new(Maglev::new(ns, None).unwrap()));
    let ks = keys();
    let mut g = c.benchmark_group("maglev");
    for n in SIZES {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        let m = maglev::Maglev::new(names);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("maglev_crate", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(&m[ks[i].as_str()]);
            })
        });
    }
    g.finish();
}

fn rendezvous(c: &mut Criterion) {
    bench_weft(c, "rendezvous", |ns| Box::new(Rendezvous::new(ns).unwrap()));
    let ks = keys();
    let mut g = c.benchmark_group("rendezvous");
    for n in SIZES {
        let mut r = rendezvous_hash::RendezvousNodes::default();
        let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        for name in &names {
            r.insert(name.as_str());
        }
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("rendezvous_hash", n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(r.calc_candidates(&ks[i]).next().copied())
            })
        });
    }
    g.finish();
}

/// The placement alone, with the key's hash computed beforehand.
fn prehashed(c: &mut Criterion) {
    let hs: Vec<u64> = keys().iter().map(|k| hash(k.as_bytes())).collect();
    let mut g = c.benchmark_group("prehashed_1000");
    let ns = nodes(1000);
    let ring = Ring::new(&ns, 160).unwrap();
    let jump = Jump::new(&ns).unwrap();
    let maglev = Maglev::new(&ns, None).unwrap();
    let slots = Slots::new(&ns).unwrap();
    let mut i = 0usize;
    g.bench_function("ring_160", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(ring.locate_hash(hs[i]))
        })
    });
    g.bench_function("jump", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(jump.locate_hash(hs[i]))
        })
    });
    g.bench_function("maglev", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(maglev.locate_hash(hs[i]))
        })
    });
    g.bench_function("slots", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(slots.locate_hash(hs[i]))
        })
    });
    g.bench_function("hash_only", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(hash(b"user:1000"))
        })
    });
    g.finish();
}

fn others(c: &mut Criterion) {
    bench_weft(c, "slots", |ns| Box::new(Slots::new(ns).unwrap()));
    bench_weft(c, "bounded_eps_0.25", |ns| {
        Box::new(BoundedLoads::new(ns, 160, 0.25).unwrap())
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

// criterion's macros generate undocumented items.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = config(); targets = ring, jump, maglev, rendezvous, others, prehashed }
}
criterion_main!(group::benches);
